"""sd_notify over a real AF_UNIX datagram socket: address forms, no-op outside systemd, watchdog gating."""

from __future__ import annotations

import asyncio
import os

import pytest

from daemon.ops.sdnotify import Activity, Notifier, Watchdog, parse_notify_address
from tests.support import NotifyReceiver, wait_until


@pytest.fixture
def receiver():
    """A filesystem NOTIFY_SOCKET receiver."""
    r = NotifyReceiver()
    yield r
    r.close()


def test_parse_notify_address_forms():
    """Paths pass through, '@' names become abstract (leading NUL), anything else disables notification."""
    assert parse_notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert parse_notify_address("@abc/def") == b"\0abc/def"
    assert parse_notify_address(None) is None
    assert parse_notify_address("") is None
    assert parse_notify_address("vsock:2:1234") is None
    assert parse_notify_address("relative/path") is None


def test_noop_outside_systemd():
    """Without NOTIFY_SOCKET every call returns False, opens no socket and raises nothing."""
    n = Notifier.from_env({})
    assert not n.enabled and not n.watchdog_enabled and n.watchdog_interval_s is None
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False and n.status("s") is False
    assert n._sock is None and n.sent == 0


def test_messages_reach_filesystem_socket(receiver):
    """ready/status/watchdog/stopping arrive as separate datagrams with the documented fields, in order."""
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value})
    assert n.ready("warming up") and n.status("3 symbols\nsecond line") and n.watchdog() and n.stopping()
    n.close()
    assert receiver.drain() == [
        {"READY": "1", "STATUS": "warming up"},
        {"STATUS": "3 symbols second line"},
        {"WATCHDOG": "1"},
        {"STOPPING": "1"},
    ]
    assert n.sent == 4


def test_messages_reach_abstract_socket():
    """An '@name' NOTIFY_SOCKET reaches a socket bound in the abstract namespace."""
    r = NotifyReceiver(abstract=True)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": r.env_value})
        assert n.ready()
        n.close()
        assert r.drain() == [{"READY": "1"}]
    finally:
        r.close()


def test_reloading_and_extend_timeout_fields(receiver):
    """RELOADING carries a monotonic timestamp and EXTEND_TIMEOUT_USEC is in microseconds."""
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value})
    n.reloading()
    n.extend_timeout(2.5)
    n.close()
    first, second = receiver.drain()
    assert first["RELOADING"] == "1" and int(first["MONOTONIC_USEC"]) > 0
    assert second == {"EXTEND_TIMEOUT_USEC": "2500000"}


def test_missing_socket_is_reported_not_raised(tmp_path):
    """A NOTIFY_SOCKET path nobody listens on makes send() return False instead of raising."""
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        assert n.enabled and n.ready() is False and n.sent == 0
    finally:
        n.close()


def test_watchdog_env_respects_pid():
    """WATCHDOG_USEC counts only when WATCHDOG_PID is unset or names this process."""
    mine = Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_s == 1.5
    other = Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert not other.watchdog_enabled
    junk = Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"})
    assert not junk.watchdog_enabled
    no_socket = Notifier.from_env({"WATCHDOG_USEC": "3000000"})
    assert not no_socket.watchdog_enabled


def test_tick_pings_only_when_healthy_and_marks_status(receiver):
    """A tick pings when healthy; unhealthy ticks send an UNHEALTHY status once and no ping until recovery."""
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "1000000"})
    healthy = [True]
    dog = Watchdog(n, lambda: healthy[0], status=lambda: "BTCUSDT · 3 signals")
    assert dog.tick() is True
    assert dog.tick() is True
    healthy[0] = False
    assert dog.tick() is False
    assert dog.tick() is False
    healthy[0] = True
    assert dog.tick() is True
    n.close()
    assert receiver.drain() == [
        {"WATCHDOG": "1", "STATUS": "BTCUSDT · 3 signals"},
        {"WATCHDOG": "1"},
        {"STATUS": "UNHEALTHY (health check failed); BTCUSDT · 3 signals"},
        {"WATCHDOG": "1", "STATUS": "BTCUSDT · 3 signals"},
    ]
    assert dog.pings == 3


def test_tick_withholds_ping_after_loop_lag(receiver):
    """A tick that ran later than max_lag_s (a blocked event loop) withholds the ping even if healthy."""
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "2000000"})
    dog = Watchdog(n, lambda: True)
    assert dog.interval_s == 1.0 and dog.max_lag_s == 0.5
    assert dog.tick(lag_s=0.01) is True
    assert dog.tick(lag_s=0.9) is False
    n.close()
    msgs = receiver.drain()
    assert msgs == [{"WATCHDOG": "1"}, {"STATUS": "UNHEALTHY (event loop lagged 0.9 s)"}]


def test_broken_health_check_withholds_ping(receiver):
    """An exception in the health check counts as unhealthy and does not escape the tick."""
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "1000000"})

    def boom() -> bool:
        raise RuntimeError("check exploded")

    assert Watchdog(n, boom).tick() is False
    n.close()
    assert receiver.drain() == [{"STATUS": "UNHEALTHY (health check failed)"}]


def test_status_only_without_watchdog(receiver):
    """Under systemd without WatchdogSec the task still keeps STATUS current but never pings."""
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value})
    count = [0]

    def status() -> str:
        count[0] += 1
        return f"{count[0] // 2} signals"

    dog = Watchdog(n, lambda: True, status=status)
    assert dog.interval_s == 10.0
    for _ in range(4):
        dog.tick()
    n.close()
    assert receiver.drain() == [{"STATUS": "0 signals"}, {"STATUS": "1 signals"}, {"STATUS": "2 signals"}]


async def test_run_pings_while_frames_arrive_and_stops_when_stale(receiver):
    """The watchdog task pings at WATCHDOG_USEC/2 while frames are fresh, stops when they go stale, resumes."""
    n = Notifier.from_env({"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "40000"})
    activity = Activity()
    fresh = [True]
    # The frame source is simulated by marking activity; "stale" is decided by the flag so no timing is assumed.
    dog = Watchdog(n, lambda: fresh[0] and activity.age_s() < 60, max_lag_s=60)
    assert dog.interval_s == pytest.approx(0.02)
    task = asyncio.create_task(dog.run(), name="watchdog")
    try:
        await wait_until(lambda: dog.pings >= 3, what="three pings")
        fresh[0] = False
        await wait_until(lambda: any("UNHEALTHY" in m.get("STATUS", "") for m in receiver.drain()), what="withheld")
        pings_when_stale = dog.pings
        fresh[0] = True
        activity.mark()
        await wait_until(lambda: dog.pings >= pings_when_stale + 2, what="resumed pings")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    n.close()
    msgs = receiver.drain()
    stalled_at = next(i for i, m in enumerate(msgs) if "UNHEALTHY" in m.get("STATUS", ""))
    resumed_at = next(i for i, m in enumerate(msgs) if i > stalled_at and "WATCHDOG" in m)
    assert all("WATCHDOG" in m for m in msgs[:stalled_at])
    assert not any("WATCHDOG" in m for m in msgs[stalled_at:resumed_at])
    assert msgs[resumed_at] == {"WATCHDOG": "1", "STATUS": ""}


async def test_run_returns_at_once_outside_systemd():
    """Without NOTIFY_SOCKET the watchdog task finishes immediately instead of idling."""
    await asyncio.wait_for(Watchdog(Notifier.from_env({}), lambda: True).run(), timeout=5)


def test_activity_age_uses_injected_clock():
    """Activity.age_s measures from the last mark on the given clock."""
    now = [100.0]
    a = Activity(clock=lambda: now[0])
    now[0] = 103.5
    assert a.age_s() == 3.5
    a.mark()
    now[0] = 104.0
    assert a.age_s() == 0.5
