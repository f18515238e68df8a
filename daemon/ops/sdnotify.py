"""systemd readiness, watchdog and status notifications (``sd_notify``) without a C library.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``). Outside systemd the
variable is unset and every call here is a cheap no-op, so the daemon calls it unconditionally.

``Watchdog`` pings ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` only while the event loop keeps its schedule
and the caller's health check passes (frames arrived recently), so a wedged process or a feed that stays
dead gets killed and restarted by systemd instead of hanging for days.

Typical use (see daemon/ops/supervision.py)::

    notifier = Notifier.from_env()
    activity = Activity()                      # activity.mark() on every frame
    dog = Watchdog(notifier, lambda: activity.age_s() < stale_after_s, status=status_text)
    ...                                        # subscribe, warm up
    notifier.ready(status_text())
    task = asyncio.create_task(dog.run(), name="watchdog")
    ...
    notifier.stopping()
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

__all__ = ["Activity", "Notifier", "Watchdog", "parse_notify_address"]

log = structlog.get_logger("kdsignal.sdnotify")


def parse_notify_address(value: str | None) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into a ``sendto`` address: ``@name`` is abstract (leading NUL), ``/path`` a file.

    Returns None for an unset, empty or unsupported value (systemd itself only hands out these two forms
    to services; ``vsock:`` addresses are for VMs and not supported here).
    """
    if not value:
        return None
    if value.startswith("@"):
        # Abstract socket names are bytes beginning with NUL; the rest of the name is taken verbatim.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Send ``sd_notify`` messages; a no-op when not started by systemd (``enabled`` is False)."""

    def __init__(self, address: str | bytes | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self.sent = 0  # datagrams delivered; handy in logs and tests

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` as ``sd_watchdog_enabled()`` does."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        address = parse_notify_address(raw)
        if raw and address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw)
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", "") or 0) or None
        except ValueError:
            log.warning("watchdog_usec_invalid", watchdog_usec=env.get("WATCHDOG_USEC"))
        # WATCHDOG_PID names the process the watchdog is meant for; a child that inherited it must not ping.
        pid = env.get("WATCHDOG_PID")
        if usec and pid and pid != str(os.getpid()):
            usec = None
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to talk to."""
        return self.address is not None

    @property
    def watchdog_enabled(self) -> bool:
        """True when systemd expects ``WATCHDOG=1`` pings (``WatchdogSec=`` set for this process)."""
        return self.enabled and self.watchdog_usec is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half of ``WATCHDOG_USEC`` in seconds (the ping period systemd recommends), or None."""
        return self.watchdog_usec / 2e6 if self.watchdog_enabled else None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; return True if delivered. Never raises."""
        if self.address is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a full receive queue; a lost ping beats a stalled daemon.
                self._sock.setblocking(False)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc), fields=[f.split("=", 1)[0] for f in fields])
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``READY=1``), optionally with a status line."""
        return self.send("READY=1", *_status_field(status))

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status``."""
        return self.send(*_status_field(text))

    def watchdog(self) -> bool:
        """Ping the watchdog (``WATCHDOG=1``)."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the daemon is shutting down (``STOPPING=1``)."""
        return self.send("STOPPING=1", *_status_field(status))

    def reloading(self) -> bool:
        """Announce a reload in progress (``RELOADING=1``); follow with :meth:`ready` when done."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start/stop time (``EXTEND_TIMEOUT_USEC``), e.g. while a slow warm-up makes progress."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        """Close the client socket (later sends reopen it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_field(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A status is one line in systemctl; a newline would start a new (bogus) KEY=VALUE field.
    return ("STATUS=" + " ".join(text.split("\n")),)


class Activity:
    """When something last happened (a frame arrived), on the monotonic clock; feeds the watchdog's check."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def mark(self) -> None:
        """Record activity now; cheap enough to call on every frame."""
        self._last = self._clock()

    def age_s(self) -> float:
        """Seconds since the last :meth:`mark` (or since creation)."""
        return self._clock() - self._last


class Watchdog:
    """Ping ``WATCHDOG=1`` while healthy and keep ``STATUS=`` current; run as one named background task.

    Each tick (every ``WATCHDOG_USEC / 2``, or every ``status_interval_s`` when systemd set no watchdog)
    checks two things: the tick itself was not late by more than ``max_lag_s`` (a late tick means the event
    loop was blocked) and ``is_healthy()`` is true. Only then is ``WATCHDOG=1`` sent. On a change of health a
    status line starting with ``UNHEALTHY`` (or the normal one again) goes out in the same datagram, so a
    reader of the socket sees exactly where pings stopped and resumed.
    """

    def __init__(
        self,
        notifier: Notifier,
        is_healthy: Callable[[], bool],
        *,
        status: Callable[[], str] | None = None,
        interval_s: float | None = None,
        status_interval_s: float = 10.0,
        max_lag_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.is_healthy = is_healthy
        self.status_text = status
        self.interval_s = interval_s or notifier.watchdog_interval_s or status_interval_s
        # A tick later than half a period means the loop stalled for a good part of systemd's budget.
        self.max_lag_s = self.interval_s / 2 if max_lag_s is None else max_lag_s
        self._clock = clock
        self._healthy: bool | None = None
        self._last_status = ""
        self.pings = 0

    def tick(self, lag_s: float = 0.0) -> bool:
        """Run one check and send what it calls for; return True if ``WATCHDOG=1`` was sent."""
        reason = ""
        if lag_s > self.max_lag_s:
            reason = f"event loop lagged {lag_s:.1f} s"
        else:
            try:
                ok = bool(self.is_healthy())
            except Exception as exc:  # noqa: BLE001 - a broken check must withhold pings, not kill the watchdog task
                log.error("watchdog_check_failed", error=repr(exc))
                ok = False
            if not ok:
                reason = "health check failed"
        healthy = not reason
        fields: list[str] = []
        if healthy and self.notifier.watchdog_enabled:
            fields.append("WATCHDOG=1")
        text = self._status()
        if not healthy:
            text = f"UNHEALTHY ({reason}); {text}" if text else f"UNHEALTHY ({reason})"
        if text != self._last_status:
            # An empty STATUS= clears an UNHEALTHY line when there is no normal status to replace it.
            fields.append("STATUS=" + " ".join(text.split("\n")))
            self._last_status = text
        if healthy != self._healthy:
            if self._healthy is not None:  # the first tick sets the baseline quietly
                if healthy:
                    log.info("watchdog_resumed")
                else:
                    log.warning("watchdog_withheld", reason=reason)
            self._healthy = healthy
        sent = bool(fields) and self.notifier.send(*fields)
        if sent and fields[0] == "WATCHDOG=1":
            self.pings += 1
            return True
        return False

    def _status(self) -> str:
        if self.status_text is None:
            return ""
        try:
            return self.status_text()
        except Exception as exc:  # noqa: BLE001 - status is cosmetic; never let it stop the pings
            log.error("watchdog_status_failed", error=repr(exc))
            return ""

    async def run(self) -> None:
        """Tick forever at ``interval_s``; returns at once when not under systemd. Cancel to stop."""
        if not self.notifier.enabled:
            return
        period = self.interval_s
        due = self._clock() + period
        while True:
            await asyncio.sleep(max(0.0, due - self._clock()))
            now = self._clock()
            lag_s = now - due
            due = now + period
            self.tick(lag_s)
