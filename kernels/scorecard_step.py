"""The live scorecard's per-bar update: one closed bar and its prediction in, every rolling score up to date.

``scorecard_step(state, common, start_ms, close, p0, p1, p2)`` takes one closed bar of a symbol (its vector
``state``, the scorecard's ``common`` vector; layouts in ``kernels.scorecard_layout``) and the (sell, hold,
buy) probabilities predicted at it (NaN in ``p0`` when none). It scores the prediction made ``h`` bars ago,
which this close decides: the forward return ``log(close[t+h] / close[t])`` against the hold band
``max(band_k * vol[t] * sqrt(h), round_trip_cost)``, ``vol[t]`` the RMS of the ``vol_window`` one-bar log
returns ending at ``t``, as ``daemon.training.labels.make_labels`` labels training data (a label whose window
touches a missing bar is not scored). The scored prediction enters the symbol's window (and the pooled
one) with its log loss, Brier score (sum over the three classes), decision (argmax, ties to the lower
index, as ``numpy.argmax``), hit and calibration bin; the oldest leaves once the window is full.
Probabilities that are not all finite are not scored (as the offline reference drops them).

Then the degradation rule, for the symbol's window and the pooled one: the mean log loss above
``common[C_LIMIT]`` for ``degraded_after_bars`` consecutive scored bars (judged once the window holds
``C_NEED``) is degraded, a scored bar at or below it ends that. Returns ``CHANGED_SYMBOL | CHANGED_OVERALL``
bits for the states that changed (their mean log loss then in ``S_EVENT_LL`` / ``C_O_EVENT_LL``), else 0.

The reference is ``tests.naive.scorecard_reference`` (checked in ``tests/test_scorecard_step.py``, and through
the live pipeline in ``tests/test_scorecard.py``); the ahead-of-time build is checked against this JIT form
slot for slot (``tests/test_scorecard_step.py``).
"""

from __future__ import annotations

import math

from kernels.jit import njit
from kernels.scorecard_layout import (
    BAR_FIELDS,
    C_AFTER,
    C_BAND_K,
    C_BARS,
    C_COST,
    C_H,
    C_INTERVAL,
    C_LIMIT,
    C_NEED,
    C_O_DEGRADED,
    C_O_EVENT_LL,
    C_O_LL,
    C_O_N,
    C_O_OUTSIDE,
    C_RING,
    C_SQRT_H,
    C_VW,
    C_WINDOW,
    CALIBRATION_BINS,
    CHANGED_OVERALL,
    CHANGED_SYMBOL,
    S_BRIER,
    S_CAL_CONF,
    S_CAL_HIT,
    S_CAL_N,
    S_DEC_HIT,
    S_DEC_N,
    S_DEGRADED,
    S_DUP,
    S_EVENT_LL,
    S_FIRST,
    S_HEAD,
    S_HEADER,
    S_LL,
    S_NEXT,
    S_OUTSIDE,
    S_PREV,
    S_R2SUM,
    S_RUN,
    S_SKEW,
    S_TOTAL,
    WIN_FIELDS,
)

SIGNATURE = "int64(float64[::1], float64[::1], float64, float64, float64, float64, float64)"
_EPS = 1e-15  # log loss clips probabilities here, as daemon.training.evaluate.log_loss does
_INF = math.inf


@njit(cache=True)
def _judge(vec, outside, degraded, event, mean, limit, after):
    # One window's degradation rule on its slots of ``vec``; True when its state changed. Degraded implies
    # outside > 0, so the end of a run needs only that looked at.
    if mean > limit:
        vec[outside] += 1.0
        if vec[outside] >= after and vec[degraded] == 0.0:
            vec[degraded] = 1.0
            vec[event] = mean
            return True
    elif vec[outside] > 0.0:
        vec[outside] = 0.0
        if vec[degraded] != 0.0:
            vec[degraded] = 0.0
            vec[event] = mean
            return True
    return False


@njit(SIGNATURE, cache=True)
def scorecard_step(state, common, start_ms, close, p0, p1, p2):
    """Take one closed bar (ms start, close) and its prediction into ``state`` and ``common``; see the module."""
    common[C_BARS] += 1.0
    nxt = state[S_NEXT]
    if start_ms != nxt:
        if nxt != nxt:  # the first bar
            state[S_FIRST] = start_ms
        elif start_ms < nxt:
            state[S_DUP] += 1.0
            return 0
        else:
            interval = common[C_INTERVAL]
            missing = (start_ms - nxt) // interval
            if missing > 0.0:
                state[S_RUN] = 0.0
            state[S_SKEW] += (start_ms - nxt) - missing * interval
    state[S_NEXT] = start_ms + common[C_INTERVAL]
    if not 0.0 < close < _INF:  # no close: no label whose window holds this bar is scored
        state[S_RUN] = 0.0
        return 0
    run = int(state[S_RUN])
    prev = state[S_PREV]
    state[S_PREV] = close
    state[S_RUN] = run + 1.0
    ring = int(common[C_RING])
    j = int(state[S_HEAD])
    state[S_HEAD] = j + 1.0 if j < ring - 1 else 0.0
    if run == 0:
        state[S_R2SUM] = 0.0
        return 0
    x = close / prev
    if not 0.0 < x < _INF:  # a return beyond float range (hostile prices): start a new run here
        state[S_RUN] = 1.0
        state[S_R2SUM] = 0.0
        return 0
    r = math.log(x)
    r2 = r * r
    vw = int(common[C_VW])
    at = S_HEADER + BAR_FIELDS * j
    # roll the band's window of squared returns r[t-vw+1..t]: drop r[t-vw] once it is in, add r[t]
    if run > vw:
        old = j - vw
        if old < 0:
            old += ring
        s = state[S_R2SUM] - state[S_HEADER + BAR_FIELDS * old + 5] + r2
    else:
        s = state[S_R2SUM] + r2
    state[S_R2SUM] = s
    state[at + 5] = r2
    if run < vw:
        return 0
    band = common[C_BAND_K] * math.sqrt((s if s > 0.0 else 0.0) / vw) * common[C_SQRT_H]
    if band < common[C_COST]:
        band = common[C_COST]
    state[at] = close
    state[at + 1] = band
    if abs(p0) < _INF and abs(p1) < _INF and abs(p2) < _INF:
        state[at + 2] = p0
        state[at + 3] = p1
        state[at + 4] = p2
    else:
        state[at + 2] = math.nan
    h = int(common[C_H])
    if run < h + vw:
        return 0
    # the prediction made h bars ago is decided by this close
    old = j - h
    if old < 0:
        old += ring
    at = S_HEADER + BAR_FIELDS * old
    q0 = state[at + 2]
    if q0 != q0:
        return 0
    q1 = state[at + 3]
    q2 = state[at + 4]
    b = state[at + 1]
    x = close / state[at]
    fwd = math.log(x) if x > 0.0 else -_INF
    if fwd > b:
        y = 2
        q = q2
    elif fwd < -b:
        y = 0
        q = q0
    else:
        y = 1
        q = q1
    if not _EPS <= q <= 1.0:  # clipped as daemon.training.evaluate.log_loss does
        q = min(max(q, _EPS), 1.0)
    ll = -math.log(q)
    e0 = q0 - (1.0 if y == 0 else 0.0)
    e1 = q1 - (1.0 if y == 1 else 0.0)
    e2 = q2 - (1.0 if y == 2 else 0.0)
    brier = e0 * e0 + e1 * e1 + e2 * e2
    if q0 >= q1 and q0 >= q2:
        dec = 0
        conf = q0
    elif q1 >= q2:
        dec = 1
        conf = q1
    else:
        dec = 2
        conf = q2
    hit = 1 if dec == y else 0
    bn = int(conf * CALIBRATION_BINS)
    if bn >= CALIBRATION_BINS:
        bn = CALIBRATION_BINS - 1
    # into the scored window; the oldest scored prediction leaves it once it is full
    window = int(common[C_WINDOW])
    tot = int(state[S_TOTAL])
    k = tot % window
    w = S_HEADER + BAR_FIELDS * ring + WIN_FIELDS * k
    if tot >= window:
        old_ll = state[w]
        code = int(state[w + 3])
        o_dec, o_hit, o_bin = code & 3, (code >> 2) & 1, code >> 3
        state[S_BRIER] -= state[w + 1]
        state[S_DEC_N + o_dec] -= 1.0
        state[S_DEC_HIT + o_dec] -= o_hit
        state[S_CAL_N + o_bin] -= 1.0
        state[S_CAL_CONF + o_bin] -= state[w + 2]
        state[S_CAL_HIT + o_bin] -= o_hit
        n = window
        lsum = state[S_LL] - old_ll + ll
        common[C_O_LL] += ll - old_ll
    else:
        n = tot + 1
        lsum = state[S_LL] + ll
        common[C_O_LL] += ll
        common[C_O_N] += 1.0
    state[S_LL] = lsum
    state[w] = ll
    state[w + 1] = brier
    state[w + 2] = conf
    state[w + 3] = dec | hit << 2 | bn << 3
    state[S_BRIER] += brier
    state[S_DEC_N + dec] += 1.0
    state[S_DEC_HIT + dec] += hit
    state[S_CAL_N + bn] += 1.0
    state[S_CAL_CONF + bn] += conf
    state[S_CAL_HIT + bn] += hit
    state[S_TOTAL] = tot + 1.0
    limit = common[C_LIMIT]
    if limit != limit:
        return 0
    # the symbol's window, then the pooled one
    changed = 0
    need = common[C_NEED]
    after = common[C_AFTER]
    if n >= need and _judge(state, S_OUTSIDE, S_DEGRADED, S_EVENT_LL, lsum / n, limit, after):
        changed |= CHANGED_SYMBOL
    n_all = common[C_O_N]
    if n_all >= need and _judge(common, C_O_OUTSIDE, C_O_DEGRADED, C_O_EVENT_LL, common[C_O_LL] / n_all, limit,
                                after):
        changed |= CHANGED_OVERALL
    return changed


def scorecard_entry():
    """The JIT-compiled entry point of ``scorecard_step``, called without numba's dispatcher and its per-call
    type checks (pass only C-contiguous float64 vectors and floats); the Python function under NUMBA_DISABLE_JIT."""
    fn = scorecard_step
    return fn.overloads[fn.signatures[0]].entry_point if hasattr(fn, "overloads") else fn
