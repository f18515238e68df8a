"""Where the live scorecard's vectors keep what (``kernels.scorecard_step`` computes into them). No numba here.

The daemon's scorecard (``daemon.core.scorecard``) owns these vectors and reads its reports from them; the
per-bar update is ``kernels.scorecard_step.scorecard_step``, compiled into the same ahead-of-time module as
the student step, so the daemon needs only this layout.

**Common vector** (one per scorecard, ``COMMON_SIZE``): the label rule and the judging parameters (set by
the owner), then the pooled window's running log loss, its size and its degradation state.

**Symbol vector** (one per symbol, ``symbol_state_size(ring, window)``): a header of ``S_HEADER`` slots
(grid position, runs, running sums and counts of the scored window), then a ring of ``ring`` bars of
``BAR_FIELDS`` values (close, hold band, the three probabilities, the squared one-bar log return), then a
ring of ``window`` scored predictions of ``WIN_FIELDS`` values (log loss, Brier score, decided class's
probability, and a code ``decided class | hit << 2 | calibration bin << 3``), so a prediction leaving the
window takes its share back out of the sums. Counts are float64 (exact below 2**53).
"""

from __future__ import annotations

CALIBRATION_BINS = 10

# common vector: parameters
C_H = 0  # horizon_bars
C_VW = 1  # vol_window
C_BAND_K = 2
C_COST = 3  # round_trip_cost
C_WINDOW = 4  # window_bars
C_LIMIT = 5  # expected log loss + band; NaN: nothing to judge against
C_NEED = 6  # scored bars a window needs before it is judged: min(degraded_after_bars, window_bars)
C_AFTER = 7  # degraded_after_bars
C_INTERVAL = 8  # bar interval, ms
C_SQRT_H = 9
C_RING = 10  # bars in a symbol's bar ring
# common vector: the pooled window
C_O_LL = 11  # running log loss sum
C_O_N = 12  # scored predictions in it
C_O_OUTSIDE = 13  # consecutive scored bars above the limit
C_O_DEGRADED = 14  # 1.0 while degraded
C_O_EVENT_LL = 15  # its mean log loss when its state last changed
C_BARS = 16  # bars taken (every call), so a reader knows whether anything changed since it last read
COMMON_SIZE = 17

# symbol vector header
S_NEXT = 0  # start of the bar expected next (ms); NaN before the first
S_FIRST = 1  # start of the first bar
S_SKEW = 2  # off-grid ms of late bars, so the bar count counts whole intervals
S_DUP = 3  # repeated or older bars ignored
S_RUN = 4  # present bars in a row ending at the previous one
S_HEAD = 5  # bar ring slot written next
S_PREV = 6  # previous close
S_R2SUM = 7  # squared one-bar log returns of the last min(run - 1, vol_window) bars
S_TOTAL = 8  # predictions ever scored
S_LL = 9  # log loss sum over the window
S_OUTSIDE = 10  # consecutive scored bars above the limit
S_DEGRADED = 11  # 1.0 while degraded
S_EVENT_LL = 12  # the window's mean log loss when its state last changed
S_BRIER = 13  # Brier sum over the window
S_DEC_N = 14  # 3 slots: decisions by class (sell, hold, buy)
S_DEC_HIT = 17  # 3 slots: of those, hits
S_CAL_N = 20  # CALIBRATION_BINS slots per calibration figure
S_CAL_CONF = S_CAL_N + CALIBRATION_BINS
S_CAL_HIT = S_CAL_CONF + CALIBRATION_BINS
S_HEADER = S_CAL_HIT + CALIBRATION_BINS

BAR_FIELDS = 6  # close, band, p0, p1, p2, r2
WIN_FIELDS = 4  # log loss, Brier, confidence, code

# bits of scorecard_step's result
CHANGED_SYMBOL = 1
CHANGED_OVERALL = 2


def symbol_state_size(ring: int, window: int) -> int:
    """Length of one symbol's vector: header, bar ring, scored window."""
    return S_HEADER + BAR_FIELDS * ring + WIN_FIELDS * window
