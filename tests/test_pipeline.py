"""The per-symbol pipeline without I/O: events in and out, ordering, de-duplication, fetches, missing bars,
long gaps, bounded retries and model swaps."""

from __future__ import annotations

import json

import pytest

from daemon.core.model import Model
from daemon.core.pipeline import (
    CloseRejected,
    FeaturesReset,
    FetchHistory,
    GapBackfilled,
    GapUnfilled,
    HistoryLoaded,
    Pipeline,
    Signal,
    Stage,
)
from daemon.tools.replay import row_candle
from kernels.layout import WINDOW
from tests.support import BAR_MS, sample_rows

L = WINDOW + 19  # the first live bar: REST history before it is enough to warm the model
ROWS = sample_rows(("BTCUSDT",), L + 2 * WINDOW + 60)["BTCUSDT"]


@pytest.fixture
def model(random_artifact):
    """The seeded random student."""
    return Model.load(random_artifact)


def candles(lo: int, hi: int):
    """Real candles lo..hi-1 of BTCUSDT."""
    return [row_candle(r, "BTCUSDT", "5") for r in ROWS[lo:hi]]


def of(events, kind) -> list:
    """The events of one type."""
    return [e for e in events if type(e) is kind]


def close(p: Pipeline, c, recv_ns: int = 0) -> list:
    """Feed one close and return the events it produced."""
    p.receive_close(c, recv_ns)
    return p.events()


def reference(model) -> dict[int, tuple]:
    """Probabilities by start from an uninterrupted cold run over all rows."""
    p = Pipeline("BTCUSDT", "5", model, fetches_history=False)
    out = {}
    for c in candles(0, len(ROWS)):
        out.update({s.start_ms: s.probs for s in of(close(p, c), Signal)})
    return out


def warmed(model, upto: int) -> Pipeline:
    """A pipeline warmed from 'REST' with bars before ``upto``."""
    p = Pipeline("BTCUSDT", "5", model)
    assert p.stage is Stage.WARMUP and p.resync() and not p.resync()
    assert p.events() == [FetchHistory(None, None, model.warmup_bars + 5, 0, "warmup")]
    assert p.awaiting_warmup
    p.receive_history(candles(0, upto))
    ev = p.events()
    assert ev == [HistoryLoaded(upto, ROWS[upto].start_ms, True)]
    assert p.stage is Stage.SERVING and p.fetch is None and not p.awaiting_warmup
    return p


def test_warmup_then_live_closes_match_a_cold_run(model):
    """After warm-up the first live close is signalled, with the same probabilities as an uninterrupted run."""
    ref = reference(model)
    p = warmed(model, L)
    sigs = [s for c in candles(L, L + 5) for s in close(p, c, recv_ns=123)]
    assert [s.start_ms for s in sigs] == [r.start_ms for r in ROWS[L:L + 5]]
    assert all(s.probs == ref[s.start_ms] and not s.backfill and s.recv_ns == 123 and s.late_ms is None
               for s in sigs)


def test_duplicates_and_stale_closes_are_dropped(model):
    """A second close for a start, or a close older than the last, yields nothing and is counted."""
    p = warmed(model, L)
    c0, c1 = candles(L, L + 2)
    assert of(close(p, c0), Signal)
    assert close(p, c0) == [] and close(p, candles(L - 1, L)[0]) == []
    assert [s.start_ms for s in close(p, c1)] == [c1.start_ms] and p.duplicates == 2


def test_gap_asks_for_a_fetch_and_backfills_in_order(model):
    """A later close is held, the missing range is requested, and backfilled bars come first, marked."""
    p = warmed(model, L)
    c0, c1, c2, c3, c4 = candles(L, L + 5)
    close(p, c0)
    assert close(p, c3, recv_ns=5) == [FetchHistory(c1.start_ms, c3.start_ms - 1, 2, 0, "gap")]
    assert close(p, c4) == [] and close(p, c3) == []  # held while the fetch is out
    assert p.held == 2
    p.receive_history([c1, c2])
    ev = p.events()
    sigs = of(ev, Signal)
    assert [(s.start_ms, s.backfill) for s in sigs] == [
        (c1.start_ms, True), (c2.start_ms, True), (c3.start_ms, False), (c4.start_ms, False)]
    assert sigs[2].late_ms is not None and sigs[2].late_ms >= 0 and sigs[0].late_ms is None
    assert of(ev, GapBackfilled) == [GapBackfilled(2, "gap")]
    assert p.fetch is None and p.held == 0 and p.bars_backfilled == 2 and p.gaps_backfilled == 1
    assert p.duplicates == 1


def test_bar_missing_everywhere_is_reported_and_stepped_over(model):
    """A bar neither the stream nor REST has is reported as unfilled, not signalled, and the window moves on."""
    p = warmed(model, L)
    c0, c1, c2, c3 = candles(L, L + 4)
    close(p, c0)
    assert of(close(p, c3), FetchHistory)
    p.receive_history([c2])
    ev = p.events()
    assert of(ev, GapUnfilled) == [GapUnfilled(c1.start_ms, 1)]
    assert [s.start_ms for s in of(ev, Signal)] == [c2.start_ms, c3.start_ms]
    assert p.state.bars_filled == 1 and p.bars_unfilled == 1 and p.next_start_ms == c3.start_ms + BAR_MS


def test_failed_fetch_reports_the_whole_range(model):
    """REST giving up on a gap reports its bars unfilled and releases the held close."""
    p = warmed(model, L)
    close(p, candles(L, L + 1)[0])
    c5 = candles(L + 5, L + 6)[0]
    assert of(close(p, c5), FetchHistory)
    p.history_failed("gave up")
    ev = p.events()
    assert of(ev, GapUnfilled) == [GapUnfilled(ROWS[L + 1].start_ms, 4)]
    assert [s.start_ms for s in of(ev, Signal)] == [c5.start_ms] and p.fetch is None


def test_a_second_hole_needs_another_fetch(model):
    """Held closes beyond a second hole wait for a follow-up fetch instead of being bridged."""
    p = warmed(model, L)
    c = candles(L, L + 6)
    close(p, c[0])
    assert of(close(p, c[2]), FetchHistory)
    assert close(p, c[5]) == []
    p.receive_history([c[1]])
    ev = p.events()
    assert [s.start_ms for s in of(ev, Signal)] == [c[1].start_ms, c[2].start_ms]
    assert of(ev, FetchHistory) == [FetchHistory(c[3].start_ms, c[5].start_ms - 1, 2, 0, "gap")]
    p.receive_history([c[3], c[4]])
    assert [s.start_ms for s in of(p.events(), Signal)] == [c[3].start_ms, c[4].start_ms, c[5].start_ms]


def test_catch_up_without_held_closes(model):
    """A catch-up fetch with nothing held fetches up to now and signals what was missed as backfill."""
    p = warmed(model, L)
    assert p.resync() and not p.resync()
    assert p.events() == [FetchHistory(ROWS[L].start_ms, None, model.warmup_bars + 5, 0, "catch_up")]
    p.receive_history(candles(L - 2, L + 3))
    ev = p.events()
    assert [s.start_ms for s in of(ev, Signal)] == [r.start_ms for r in ROWS[L:L + 3]] and p.duplicates == 2
    assert all(s.backfill for s in of(ev, Signal)) and p.fetch is None


def test_closes_during_warmup_are_held_and_signalled_after_it(model):
    """A close arriving before warm-up finished is held, history stops before it, and it is signalled after."""
    p = Pipeline("BTCUSDT", "5", model)
    assert close(p, candles(L, L + 1)[0], recv_ns=7) == [
        FetchHistory(None, ROWS[L].start_ms - 1, model.warmup_bars + 5, 0, "warmup")]
    p.receive_history(candles(0, L + 1))
    ev = p.events()
    assert of(ev, HistoryLoaded) == [HistoryLoaded(L, ROWS[L].start_ms, True)]
    assert [(s.start_ms, s.backfill, s.recv_ns) for s in of(ev, Signal)] == [(ROWS[L].start_ms, False, 7)]


def test_failed_warmup_is_asked_again_with_growing_attempts(model):
    """A warm-up REST cannot serve is asked again (attempt counting up) until it succeeds; held closes wait."""
    p = Pipeline("BTCUSDT", "5", model)
    p.resync()
    p.events()
    close(p, candles(L, L + 1)[0], recv_ns=1)
    for attempt in (1, 2, 3):
        p.history_failed("down")
        assert p.events() == [FetchHistory(None, ROWS[L].start_ms - 1, model.warmup_bars + 5, attempt, "warmup")]
        assert p.stage is Stage.WARMUP and not p.awaiting_warmup  # readiness does not wait for a retry
    p.receive_history(candles(0, L))
    assert [s.start_ms for s in of(p.events(), Signal)] == [ROWS[L].start_ms]


def test_held_closes_are_bounded(model):
    """However long a warm-up fails, at most a window of closes is held (the oldest come from REST)."""
    p = Pipeline("BTCUSDT", "5", model)
    p.resync()
    n = p.max_gap_bars + 20
    for c in candles(L, L + n):
        p.receive_close(c, 1)
    assert p.held == p.max_gap_bars
    p.receive_history(candles(0, L + n))
    sigs = of(p.events(), Signal)
    assert [s.start_ms for s in sigs] == [r.start_ms for r in ROWS[L + n - p.max_gap_bars:L + n]]


def test_long_gap_resets_and_rewarms_in_one_request(model):
    """A hole longer than the feature window resets the features and asks REST once for a fresh warm-up."""
    ref = reference(model)
    p = warmed(model, L)
    close(p, candles(L, L + 1)[0])
    far = L + 1 + model.warmup_bars + 30
    ev = close(p, candles(far, far + 1)[0], recv_ns=3)
    gap = far - (L + 1)
    assert ev == [FeaturesReset(ROWS[L + 1].start_ms, gap),
                  FetchHistory(None, ROWS[far].start_ms - 1, model.warmup_bars + 5, 0, "reset")]
    assert p.stage is Stage.WARMUP and p.resets == 1
    p.receive_history(candles(far - p.warmup_count, far))
    ev = p.events()
    assert not of(ev, FetchHistory) and of(ev, HistoryLoaded)[0].bars == p.warmup_count
    sig, = of(ev, Signal)
    # The window only reaches back warmup_bars: a fresh warm-up gives the uninterrupted run's result.
    assert sig.start_ms == ROWS[far].start_ms and sig.probs == ref[sig.start_ms] and sig.late_ms is not None


def test_far_future_start_costs_one_request(model):
    """A start 2**40 ms ahead is not stepped over bar by bar: one fetch shows it is beyond REST, and it is dropped."""
    ref = reference(model)
    p = warmed(model, L)
    close(p, candles(L, L + 1)[0])
    future = candles(L + 1, L + 2)[0]
    future.start_ms = ROWS[L].start_ms + (2**40 // BAR_MS) * BAR_MS
    ev = close(p, future)
    assert of(ev, FeaturesReset) and len(of(ev, FetchHistory)) == 1
    p.receive_history(candles(0, L + 1))  # REST ends now: nowhere near the far start
    ev = p.events()
    assert not of(ev, FetchHistory) and not of(ev, GapUnfilled) and len(of(ev, CloseRejected)) == 1
    assert p.stage is Stage.SERVING and p.next_start_ms == ROWS[L + 1].start_ms and p.held == 0
    sig, = of(close(p, candles(L + 1, L + 2)[0]), Signal)  # the real next bar is served as if nothing happened
    assert sig.probs == ref[sig.start_ms]


def test_off_grid_close_is_rejected_not_fetched(model):
    """A close 1 ms off the interval grid is counted and dropped; it never asks REST for anything."""
    p = warmed(model, L)
    c = candles(L, L + 1)[0]
    c.start_ms += 1
    ev = close(p, c)
    assert [type(e) for e in ev] == [CloseRejected] and p.rejected == 1 and p.fetch is None


def test_off_grid_rest_bar_is_rejected(model):
    """A REST bar off the grid is dropped and reported, not stepped to; the bars on the grid go on as usual."""
    p = warmed(model, L)
    c0, c1, c2, c3 = candles(L, L + 4)
    close(p, c0)
    close(p, c3)
    bad = candles(L + 1, L + 2)[0]
    bad.start_ms += 7  # in place of c1
    p.receive_history([bad, c2])
    ev = p.events()
    assert [e.start_ms for e in of(ev, CloseRejected)] == [bad.start_ms]
    assert of(ev, GapUnfilled) == [GapUnfilled(c1.start_ms, 1)]
    assert [s.start_ms for s in of(ev, Signal)] == [c2.start_ms, c3.start_ms]


def test_rest_lag_after_warmup_asks_once_more_then_bridges(model):
    """History ending short of the held close is asked for once more after a backoff; a second miss is bridged."""
    p = Pipeline("BTCUSDT", "5", model)
    close(p, candles(L, L + 1)[0], recv_ns=1)
    p.receive_history(candles(0, L - 2))  # REST lags two bars behind the stream
    ev = p.events()
    assert of(ev, FetchHistory) == [FetchHistory(ROWS[L - 2].start_ms, ROWS[L].start_ms - 1, 2, 1, "gap")]
    p.receive_history([])
    ev = p.events()
    assert of(ev, GapUnfilled) == [GapUnfilled(ROWS[L - 2].start_ms, 2)] and not of(ev, FetchHistory)
    assert [s.start_ms for s in of(ev, Signal)] == [ROWS[L].start_ms]


def test_truncated_catch_up_rewarms_instead_of_backfilling(model):
    """A catch-up that comes back full and still short of the expected bar re-warms on what came."""
    p = warmed(model, L)
    p.resync()
    p.events()
    newest = candles(L + 40, L + 40 + p.warmup_count)
    p.receive_history(newest)
    ev = p.events()
    assert of(ev, FeaturesReset) == [FeaturesReset(ROWS[L].start_ms, 40 + p.warmup_count)] and not of(ev, Signal)
    assert p.next_start_ms == newest[-1].start_ms + BAR_MS and p.state.warm


def test_replay_mode_never_fetches_and_resets_on_a_long_hole(model):
    """Without a history source a short hole is stepped over and a long one restarts cold, both reported."""
    p = Pipeline("BTCUSDT", "5", model, fetches_history=False)
    assert not p.resync()
    far = L + 3 + WINDOW + 10
    events = [e for c in candles(0, L) + candles(L + 2, L + 3) + candles(far, far + 1) for e in close(p, c)]
    assert not of(events, FetchHistory)
    assert of(events, GapUnfilled) == [GapUnfilled(ROWS[L].start_ms, 2), GapUnfilled(ROWS[L + 3].start_ms, WINDOW + 10)]
    assert of(events, FeaturesReset) == [FeaturesReset(ROWS[L + 3].start_ms, WINDOW + 10)]
    assert of(events, Signal)[-1].start_ms == ROWS[L + 2].start_ms  # cold again after the long hole


def test_line_is_exact_json(model):
    """The hand-formatted line is valid JSON with the issue's keys in order, the artifact's classes, exact floats."""
    p = warmed(model, L)
    sig, = close(p, candles(L, L + 1)[0])
    line = sig.to_line()
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = json.loads(line)
    assert list(parsed) == ["symbol", "interval", "start", "signal", "probs", "inference_us", "model", "backfill"]
    assert parsed == sig.fields() and list(parsed["probs"]) == list(model.classes)
    assert parsed["signal"] == max(parsed["probs"], key=parsed["probs"].get)
    late = Signal("BTCUSDT", "5", 0, "hold", ("a", "hold"), (0.25, 0.75), 1000, "ab", False, 9, late_ms=12)
    parsed = json.loads(late.to_line())
    assert parsed["late_ms"] == 12 and parsed["probs"] == {"a": 0.25, "hold": 0.75} and parsed == late.fields()


def test_model_swap_keeps_the_window(model, tmp_path):
    """After set_model the next bar is signalled at once by the new model (features carried over)."""
    from tests.support import write_random_artifact

    write_random_artifact(tmp_path / "b.npz", seed=9)
    other = Model.load(tmp_path / "b.npz")
    p = warmed(model, L)
    p.set_model(other)
    sig, = close(p, candles(L, L + 1)[0])
    expected = reference(other)[ROWS[L].start_ms]
    assert sig.model == other.id and sig.probs == expected
