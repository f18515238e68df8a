"""What a running daemon tells its satellites (supervision, metrics, logs): a read-only snapshot and a listener.

The service builds a :class:`ServiceStatus` on request (at a watchdog tick, a scrape, a summary) and calls
a :class:`SignalListener` after each written signal; the satellites never see the service itself, so they
import nothing from ``daemon.aio``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from daemon.core.pipeline import Signal

__all__ = ["ServiceStatus", "SignalListener"]


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """A snapshot of the service's state and running totals (each total read from its one owner)."""

    symbols: tuple[str, ...]
    interval: str
    model_id: str | None
    feed_connected: bool
    feed_subscribed: bool
    warming_up: int          # symbols whose first warm-up fetch is still out
    frames: int              # feed
    malformed: int           # feed
    reconnects: int          # feed
    signals: int             # signal writer: lines written
    signals_by_class: Mapping[str, int] = field(default_factory=dict)  # signal writer
    signals_suppressed: int = 0  # signal writer: lines the decision policy kept back
    duplicates: int = 0      # pipelines
    gaps_backfilled: int = 0
    bars_backfilled: int = 0
    bars_unfilled: int = 0
    resets: int = 0
    held: int = 0            # stream closes waiting for a fetch

    @property
    def ready(self) -> bool:
        """Subscribed, and no symbol waiting for its first warm-up history."""
        return self.feed_subscribed and not self.warming_up

    @property
    def feed_state(self) -> str:
        """"subscribed", "connected" or "disconnected"."""
        return "subscribed" if self.feed_subscribed else ("connected" if self.feed_connected else "disconnected")


class SignalListener(Protocol):
    """Told about each signal after its line is written."""

    def on_signal(self, sig: Signal, tick_to_signal_ns: int = 0) -> None:
        """Take one written signal and, for a live one, its frame-to-line latency (0 otherwise)."""
