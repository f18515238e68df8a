"""The status snapshot the service hands its satellites: readiness and the feed's state read from it alone."""

from __future__ import annotations

import dataclasses

import pytest

from daemon.ops.status import ServiceStatus


def snapshot(**over) -> ServiceStatus:
    """A status with every required field at a neutral value, then ``over``."""
    base = {"symbols": ("BTCUSDT",), "interval": "5", "model_id": "m", "feed_connected": True,
            "feed_subscribed": True, "warming_up": 0, "frames": 0, "malformed": 0, "reconnects": 0, "signals": 0}
    return ServiceStatus(**{**base, **over})


@pytest.mark.parametrize("connected, subscribed, warming, state, ready", [
    (True, True, 0, "subscribed", True),
    (True, True, 1, "subscribed", False),
    (True, False, 0, "connected", False),
    (False, False, 0, "disconnected", False),
])
def test_ready_needs_a_subscription_and_every_symbol_warm(connected, subscribed, warming, state, ready):
    """Ready means subscribed with no symbol waiting for its first history; the feed state names the furthest step."""
    s = snapshot(feed_connected=connected, feed_subscribed=subscribed, warming_up=warming)
    assert (s.feed_state, s.ready) == (state, ready)


def test_snapshot_is_read_only():
    """A satellite cannot change what the service told it."""
    s = snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.signals = 5  # type: ignore[misc]
