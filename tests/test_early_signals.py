"""Signal handling before the event loop runs: a stop is remembered, a reload dropped, the old handlers put back."""

from __future__ import annotations

import os
import signal

from daemon.ops import early_signals


def test_early_signals_remember_a_stop_and_survive_sighup():
    """Real SIGHUP and SIGTERM sent to this process are caught; restore() puts the previous handlers back."""
    before = {sig: signal.getsignal(sig) for sig in early_signals.EarlySignals.SIGNALS}
    early = early_signals.install()
    try:
        assert early_signals.install() is early
        os.kill(os.getpid(), signal.SIGHUP)
        assert early.reloads_ignored == 1 and not early.stop_requested
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as the event loop leaves it after removing its handler
        early.catch()
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        assert early.reloads_ignored == 2 and early.stop_requested
    finally:
        early.restore()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert early_signals.install() is not early  # a fresh install after a restore
    early_signals.install().restore()
