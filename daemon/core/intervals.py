"""Bybit kline intervals and their lengths: the one table the parser, the config, the artifact and the tools read.

``"M"`` (calendar months) is a Bybit interval too, but it has no fixed length: neither a gap nor a grid can be
computed for it, so the artifact and the daemon both refuse it.
"""

from __future__ import annotations

__all__ = ["GRID_OFFSET_MS", "INTERVAL_MS", "interval_ms"]

INTERVAL_MS: dict[str, int] = {
    **{str(m): m * 60_000 for m in (1, 3, 5, 15, 30, 60, 120, 240, 360, 720)},
    "D": 86_400_000,
    "W": 7 * 86_400_000,
}

# Where each interval's grid starts, as an offset from the Unix epoch: Bybit's weekly candles open on
# Monday 00:00 UTC and 1970-01-01 was a Thursday. Every other interval divides a day and starts at 00:00.
GRID_OFFSET_MS: dict[str, int] = {"W": 4 * 86_400_000}


def interval_ms(interval: str) -> int:
    """Return the length of one candle of ``interval`` ("1".."720", "D", "W") in milliseconds.

    Raises ``ValueError`` naming the interval and the ones that are served.
    """
    try:
        return INTERVAL_MS[interval]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported interval {interval!r}; expected one of {', '.join(INTERVAL_MS)} "
                         f"(\"M\" has no fixed length)") from None
