"""Catch SIGTERM, SIGINT and SIGHUP from the first moment of ``kdsignal run``, before anything slow, and again
while it shuts down.

Importing the service and loading the artifact take a noticeable fraction of a second; a SIGHUP in that time
(logrotate, ``systemctl reload``) would otherwise end the process with the default action (status 129, which
systemd counts as a clean exit and does not restart). Until the event loop installs its own handlers (and
again after it removed them) a stop is remembered (the service stops as soon as it runs) and a reload is
dropped (the artifact is being loaded anyway, or the process is ending). Standard library only, so it can be
installed before the heavy imports.
"""

from __future__ import annotations

import signal

__all__ = ["EarlySignals", "install"]

_installed: EarlySignals | None = None


class EarlySignals:
    """Remember stop requests until :meth:`restore`; ignore reload requests."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.stop_requested = False
        self.reloads_ignored = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self.reloads_ignored += 1
        else:
            self.stop_requested = True

    def catch(self) -> None:
        """Take the signals back after the event loop dropped its handlers (shutdown is a slow moment too)."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back (after the event loop has removed its own)."""
        global _installed
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if _installed is self:
            _installed = None


def install() -> EarlySignals:
    """Install the early handlers once per process and return them (a second call returns the same)."""
    global _installed
    if _installed is None:
        _installed = EarlySignals()
    return _installed
