"""The per-symbol pipeline without I/O: ordering, de-duplication, fills, missing bars, model swaps."""

from __future__ import annotations

import json

import pytest

from daemon.core.model import Model
from daemon.core.pipeline import FILL, Pipeline
from daemon.tools.replay import row_candle
from kernels.layout import WINDOW
from tests.daemon_support import sample_rows

L = WINDOW + 19  # the first live bar: REST history before it is enough to warm the model
ROWS = sample_rows(("BTCUSDT",), L + 40)["BTCUSDT"]
BAR_MS = 300_000


@pytest.fixture
def model(random_artifact):
    """The seeded random student."""
    return Model.load(random_artifact)


def candles(lo: int, hi: int):
    """Real candles lo..hi-1 of BTCUSDT."""
    return [row_candle(r, "BTCUSDT", "5") for r in ROWS[lo:hi]]


def reference(model) -> dict[int, dict]:
    """Probabilities by start from an uninterrupted cold run over all rows."""
    p = Pipeline("BTCUSDT", "5", model)
    p.start_cold(ROWS[0].start_ms)
    return {s.start_ms: s.probs for s in (p.on_close(c) for c in candles(0, len(ROWS))) if s is not None}


def warmed(model, upto: int) -> Pipeline:
    """A pipeline warmed from 'REST' with bars before ``upto``."""
    p = Pipeline("BTCUSDT", "5", model)
    assert p.begin_fill() and p.fill_range() == (None, None, model.warmup_bars + 5)
    res = p.apply_fill(candles(0, upto))
    assert res.history == upto and not res.signals and not p.filling
    return p


def test_warmup_then_live_closes_match_a_cold_run(model):
    """After warm-up the first live close is signalled, with the same probabilities as an uninterrupted run."""
    ref = reference(model)
    p = warmed(model, L)
    sigs = [p.on_close(c, recv_ns=123) for c in candles(L, L + 5)]
    assert [s.start_ms for s in sigs] == [r.start_ms for r in ROWS[L:L + 5]]
    assert all(s.probs == ref[s.start_ms] and not s.backfill and s.recv_ns == 123 for s in sigs)


def test_duplicates_and_stale_closes_are_dropped(model):
    """A second close for a start, or a close older than the last, yields nothing and is counted."""
    p = warmed(model, L)
    c0, c1 = candles(L, L + 2)
    assert p.on_close(c0) is not None
    assert p.on_close(c0) is None and p.on_close(candles(L - 1, L)[0]) is None
    assert p.on_close(c1).start_ms == c1.start_ms and p.duplicates == 2


def test_gap_asks_for_a_fill_and_backfills_in_order(model):
    """A later close is held, the missing range is requested, and backfilled bars come first, marked."""
    ref = reference(model)
    p = warmed(model, L)
    c0, c1, c2, c3, c4 = candles(L, L + 5)
    assert p.on_close(c0) is not None
    assert p.on_close(c3) is FILL
    assert p.on_close(c4) is None and p.on_close(c3) is None  # held while the fill is out
    assert p.fill_range() == (c1.start_ms, c3.start_ms - 1, None)
    res = p.apply_fill([c1, c2])
    assert [(s.start_ms, s.backfill) for s in res.signals] == [
        (c1.start_ms, True), (c2.start_ms, True), (c3.start_ms, False), (c4.start_ms, False)]
    assert all(s.probs == ref[s.start_ms] for s in res.signals)
    assert not res.more and not p.filling and res.backfilled == 2 and p.duplicates == 1


def test_bars_rest_lacks_are_reported_and_stepped_over(model):
    """A bar neither the stream nor REST has is reported as unfilled, not signalled, and the window moves on."""
    p = warmed(model, L)
    c0, c1, c2, c3 = candles(L, L + 4)
    p.on_close(c0)
    assert p.on_close(c3) is FILL
    p.fill_range()
    res = p.apply_fill([c2])
    assert res.unfilled == [(c1.start_ms, 1)]
    assert [s.start_ms for s in res.signals] == [c2.start_ms, c3.start_ms]
    assert p.state.bars_filled == 1 and p.unfilled_bars == 1 and p.next_start_ms == c3.start_ms + BAR_MS


def test_failed_fill_reports_the_whole_range(model):
    """When REST gives up, the missing range is reported and the held closes are still signalled."""
    p = warmed(model, L)
    p.on_close(candles(L, L + 1)[0])
    c5 = candles(L + 5, L + 6)[0]
    assert p.on_close(c5) is FILL
    p.fill_range()
    res = p.fill_failed()
    assert res.unfilled == [(ROWS[L + 1].start_ms, 4)] and [s.start_ms for s in res.signals] == [c5.start_ms]


def test_a_second_hole_needs_another_fill(model):
    """Held closes beyond a second hole wait for a follow-up fill instead of being bridged."""
    p = warmed(model, L)
    c = candles(L, L + 6)
    p.on_close(c[0])
    assert p.on_close(c[2]) is FILL
    assert p.on_close(c[5]) is None
    p.fill_range()
    res = p.apply_fill([c[1]])
    assert [s.start_ms for s in res.signals] == [c[1].start_ms, c[2].start_ms] and res.more and p.filling
    assert p.fill_range() == (c[3].start_ms, c[5].start_ms - 1, None)
    res = p.apply_fill([c[3], c[4]])
    assert [s.start_ms for s in res.signals] == [x.start_ms for x in c[3:6]] and not res.more


def test_catch_up_after_reconnect(model):
    """A catch-up fill with nothing held fetches up to now and signals what was missed as backfill."""
    p = warmed(model, L)
    assert p.begin_fill() and not p.begin_fill()
    assert p.fill_range() == (ROWS[L].start_ms, None, None)
    res = p.apply_fill(candles(L - 2, L + 3))
    assert [s.start_ms for s in res.signals] == [r.start_ms for r in ROWS[L:L + 3]] and res.duplicates == 2
    assert all(s.backfill for s in res.signals) and not p.filling


def test_closes_during_warmup_are_held_and_signalled_live(model):
    """A close arriving before warm-up finished is held, history stops before it, and it is signalled live."""
    p = Pipeline("BTCUSDT", "5", model)
    assert p.on_close(candles(L, L + 1)[0], recv_ns=7) is FILL
    assert p.fill_range() == (None, ROWS[L].start_ms - 1, model.warmup_bars + 5)
    res = p.apply_fill(candles(0, L + 1))
    assert res.history == L and [(s.start_ms, s.backfill, s.recv_ns) for s in res.signals] == [
        (ROWS[L].start_ms, False, 7)]


def test_line_is_exact_json(model):
    """The hand-formatted line is valid JSON with the issue's keys in order and exact floats."""
    p = warmed(model, L)
    sig = p.on_close(candles(L, L + 1)[0])
    line = sig.to_line()
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = json.loads(line)
    assert list(parsed) == ["symbol", "interval", "start", "signal", "probs", "inference_us", "model", "backfill"]
    assert parsed == sig.fields() and list(parsed["probs"]) == ["buy", "hold", "sell"]
    assert parsed["signal"] == max(parsed["probs"], key=parsed["probs"].get)


def test_model_swap_keeps_the_window(model, tmp_path):
    """After set_model the next bar is signalled at once by the new model (features carried over)."""
    from tests.conftest import write_random_artifact

    write_random_artifact(tmp_path / "b.npz", seed=9)
    other = Model.load(tmp_path / "b.npz")
    p = warmed(model, L)
    p.set_model(other)
    sig = p.on_close(candles(L, L + 1)[0])
    q = Pipeline("BTCUSDT", "5", other)
    q.start_cold(ROWS[0].start_ms)
    expected = [s for s in (q.on_close(c) for c in candles(0, L + 1)) if s is not None][-1]
    assert sig.model == other.id and sig.probs == expected.probs
