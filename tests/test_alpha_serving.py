"""Serving an alpha head: the same per-bar kernel call as the classifier, one read-out more, and a decision.

Parity as for the classifier: the specialised step equals the generic step bit for bit, the step equals the
batch kernel, both equal the NumPy reference; replay equals the live daemon through the fake exchange.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.aio.output import SignalWriter
from daemon.core.artifact import ArtifactError, load_artifact
from daemon.core.model import Model, student_vector
from daemon.core.pipeline import Signal
from daemon.tools.fake_bybit import FakeBybit
from daemon.tools.kernel_build import build_kernel
from daemon.tools.replay import read_kline_csv, replay
from kernels.features import features_batch
from kernels.layout import (
    ALPHA_VOL_FEATURE,
    WINDOW,
    architecture,
    bp_per_unit,
    pack_mlp,
    pack_student,
    probs_offset,
    student_state_size,
)
from kernels.specialise import specialised_step
from kernels.student import student_batch, student_step
from tests.naive import alpha_readout_reference, mlp_reference
from tests.support import (
    DATA,
    OPEN_INDEX,
    ROOT,
    InProcessDaemon,
    LineSink,
    load_csv,
    needs_jit,
    random_student,
    with_gaps,
    write_random_artifact,
)

H = 12
ALPHA_ARCHS = [
    ((11, 16, 8, 1), ("relu", "relu", "linear")),
    ((11, 16, 8, 2), ("relu", "relu", "linear")),
]


def alpha_manifest(n_outputs: int, buy=1.0, sell=-1.0) -> dict:
    """The head, alpha and label entries of an alpha artifact's manifest."""
    return {"head": "alpha", "alpha": {"horizon_bars": H, "outputs": ["mean", "log_var"][:n_outputs],
                                       "policy": {"buy_above_bp": buy, "sell_below_bp": sell}},
            "labels": {"horizon_bars": H, "band_k": 0.5, "vol_window": 20, "round_trip_cost": 0.0011}}


def write_alpha_artifact(path, n_outputs=2, seed=3, **policy) -> str:
    """A valid alpha artifact with seeded random weights; return its id."""
    return write_random_artifact(path, seed=seed, architecture=ALPHA_ARCHS[n_outputs - 1],
                                 **alpha_manifest(n_outputs, **policy))


def alpha_vector(seed, sizes, acts, bars, buy=2.0, sell=-2.0):
    """(model vector, weights, biases, activations, mean, std) of an alpha head on ``bars``' statistics."""
    w, b, a = random_student(seed, sizes, acts)
    feats = features_batch(*bars.T)
    mean, std = np.nanmean(feats, 0), np.nanstd(feats, 0)
    vec = pack_student(pack_mlp(w, b, a), mean, std, 6.0, (bp_per_unit(H), buy, sell))
    return vec, w, b, a, mean, std


def reference(w, b, a, mean, std, feats, buy=2.0, sell=-2.0):
    """NumPy read-out and class of an alpha student on raw features."""
    z = np.clip((feats - mean) / std, -6.0, 6.0)
    return alpha_readout_reference(mlp_reference(w, b, a, z), feats[:, ALPHA_VOL_FEATURE], bp_per_unit(H), buy, sell)


@pytest.mark.parametrize("sizes,acts", ALPHA_ARCHS)
def test_alpha_step_equals_batch_and_numpy(sizes, acts):
    """On real candles with gaps: specialised step == generic step bit for bit, == batch, == NumPy reference."""
    bars = with_gaps(load_csv(DATA / "ETHUSDT-5m.csv")[:2000, 1:6], 5)
    vec, w, b, a, mean, std = alpha_vector(7, sizes, acts, bars)
    assert architecture(vec)[3] == 1
    k = sizes[-1]
    fast, slow = np.zeros(student_state_size(vec)), np.zeros(student_state_size(vec))
    at = probs_offset(vec)
    step = specialised_step(vec)
    got = np.full((len(bars), k), np.nan)
    classes = np.full(len(bars), -9)
    for t, row in enumerate(bars):
        status = step(fast, vec, *row)
        assert status == student_step(slow, vec, *row)
        np.testing.assert_array_equal(fast, slow)
        classes[t] = status
        if status >= 0:
            got[t] = fast[at : at + k]
    feats = features_batch(*bars.T)
    batch = np.empty((len(bars), k))
    student_batch(vec, np.ascontiguousarray(feats), batch)
    live = slice(WINDOW - 1, None)
    np.testing.assert_array_equal(got[live], batch[live])
    ref, ref_cls = reference(w, b, a, mean, std, feats[live])
    np.testing.assert_allclose(got[live], ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(classes[live], ref_cls)
    assert {0, 1, 2} <= set(classes[live].tolist())  # the thresholds are met on both sides


def test_alpha_decision_never_acts_on_infinite_thresholds():
    """With infinite thresholds (a policy that never trades) every warm bar is hold."""
    bars = load_csv(DATA / "BTCUSDT-5m.csv")[:600, 1:6]
    vec = alpha_vector(2, *ALPHA_ARCHS[1], bars, buy=np.inf, sell=-np.inf)[0]
    state = np.zeros(student_state_size(vec))
    statuses = [student_step(state, vec, *row) for row in bars]
    assert set(statuses[WINDOW - 1 :]) == {1} and set(statuses[: WINDOW - 1]) == {-1}


def test_alpha_artifact_round_trip_and_vector(tmp_path, btc_5m):
    """An alpha artifact loads with its head, its read-out names and its policy in the model vector."""
    path = tmp_path / "alpha.npz"
    write_alpha_artifact(path, buy=3.5, sell=None)
    art = load_artifact(path)
    assert art.head == "alpha" and art.alpha_readout() == (bp_per_unit(H), 3.5, -np.inf)
    model = Model(art, kernel="jit")
    assert model.readout == ("alpha_bp", "sd_bp") and model.classes == ("sell", "hold", "buy")
    assert list(model.vector[-3:]) == [bp_per_unit(H), 3.5, -np.inf]
    assert load_artifact(write_random_artifact_path(tmp_path)).head == "classes"  # old artifacts: classes


def write_random_artifact_path(tmp_path):
    """A classifier artifact without a head key (as every artifact before the alpha head)."""
    path = tmp_path / "classes.npz"
    write_random_artifact(path)
    return path


@pytest.mark.parametrize("change,field", [
    ({"head": "quantiles"}, "head"),
    ({"head": "alpha"}, "alpha: NoneType"),
    ({"alpha": {"horizon_bars": 0, "outputs": ["mean"], "policy": {}}}, "alpha.horizon_bars"),
    ({"alpha": {"horizon_bars": H, "outputs": ["mean"], "policy": {"buy_above_bp": 1, "sell_below_bp": -1}}},
     "alpha.outputs names 1"),
    ({"alpha": {"horizon_bars": H, "outputs": ["mean", "log_var"], "policy": {"buy_above_bp": 1}}},
     "alpha.policy.sell_below_bp"),
    ({"alpha": {"horizon_bars": H, "outputs": ["mean", "log_var"],
                "policy": {"buy_above_bp": 1, "sell_below_bp": 2}}}, "is above buy_above_bp"),
])
def test_alpha_artifact_refused_naming_the_field(tmp_path, change, field):
    """A bad head, alpha table or policy is refused by the loader with a message naming it."""
    overrides = alpha_manifest(2)
    overrides.update(change)
    if change == {"head": "alpha"}:
        overrides.pop("alpha")
    with pytest.raises(ArtifactError, match=field):
        write_random_artifact(tmp_path / "bad.npz", architecture=ALPHA_ARCHS[1], **overrides)


def test_classifier_artifact_with_alpha_sizes_refused(tmp_path):
    """A classes head whose MLP gives 2 outputs is refused: the head decides what the outputs mean."""
    with pytest.raises(ArtifactError, match="expected 3 classes"):
        write_random_artifact(tmp_path / "bad.npz", architecture=ALPHA_ARCHS[1])


def test_alpha_signal_line_is_json_of_its_fields():
    """An alpha line carries position and alpha_bp/sd_bp instead of probs, and parses to ``fields()``."""
    sig = Signal("BTCUSDT", "5", 1_700_000_000_000, "buy", ("sell", "hold", "buy"), (4.25, 31.5), 1234, "abc",
                 False, 0, late_ms=7, readout=("alpha_bp", "sd_bp"))
    line = sig.to_line()
    assert line.endswith("}\n") and json.loads(line) == sig.fields()
    assert list(json.loads(line)) == ["symbol", "interval", "start", "signal", "position", "alpha_bp", "sd_bp",
                                      "inference_us", "model", "backfill", "late_ms"]
    assert json.loads(line)["position"] == 1 and "probs" not in line


@pytest.fixture(scope="module")
def alpha_artifact(tmp_path_factory, kernel_dir):
    """An alpha artifact (mean and log-variance) whose compiled step is in the session's kernel directory."""
    path = tmp_path_factory.mktemp("alpha") / "alpha.npz"
    write_alpha_artifact(path, buy=0.5, sell=-0.5)
    if not needs_jit.mark.args[0]:
        build_kernel(student_vector(load_artifact(path)), kernel_dir)
    return path


@needs_jit
def test_aot_alpha_step_equals_jit(alpha_artifact, btc_5m):
    """The ahead-of-time compiled alpha step gives the JIT step's read-out and classes bit for bit."""
    aot, jit = Model.load(alpha_artifact), Model.load(alpha_artifact, kernel="jit")
    a, b = aot.new_state(), jit.new_state()
    for row in btc_5m[:400, 1:6]:
        assert a.update(*row) == b.update(*row)
        np.testing.assert_array_equal(a.array, b.array)


def _replay_lines(artifact, rows) -> list[dict]:
    sink = LineSink()
    replay(rows, "BTCUSDT", "5", Model.load(artifact, kernel="jit"), SignalWriter(sink))
    return sink.lines


def test_alpha_replay_has_alpha_bp_in_every_line(alpha_artifact):
    """Replaying real candles through an alpha model gives a line per warm bar, each with alpha_bp and a decision."""
    rows = read_kline_csv(DATA / "BTCUSDT-5m.csv")[:400]
    lines = _replay_lines(alpha_artifact, rows)
    assert len(lines) == len(rows) - WINDOW + 1
    assert all(np.isfinite(x["alpha_bp"]) and x["sd_bp"] > 0 and "probs" not in x for x in lines)
    for x in lines:
        want = "buy" if x["alpha_bp"] > 0.5 else "sell" if x["alpha_bp"] < -0.5 else "hold"
        assert x["signal"] == want and x["position"] == {"sell": -1, "hold": 0, "buy": 1}[want]


@needs_jit
async def test_alpha_live_through_the_fake_equals_replay(alpha_artifact):
    """The daemon serving an alpha artifact live (its compiled step) writes the lines replay writes; the
    scorecard scores none of them."""
    rows = read_kline_csv(DATA / "BTCUSDT-5m.csv")[:WINDOW + 100]  # long enough for the scorecard to decide bars
    expected = {x["start"]: x for x in _replay_lines(alpha_artifact, rows)}
    async with FakeBybit({"BTCUSDT": rows}, "5", start_index=OPEN_INDEX) as fake, \
            InProcessDaemon(fake, alpha_artifact, ("BTCUSDT",)) as d:
        await fake.step(len(rows) - OPEN_INDEX)
        await d.wait_for_start("BTCUSDT", rows[-1].start_ms)
        scorecard = d.service.supervision.scorecard.report()
    live = d.lines
    assert len(live) == len(rows) - OPEN_INDEX
    # the live scorecard follows the bars but scores no probabilities: an alpha line has none
    assert scorecard["symbols"]["BTCUSDT"]["bars"] > 0 and scorecard["overall"]["n"] == 0
    for x in live:
        assert {k: v for k, v in x.items() if k != "inference_us"} == {
            k: v for k, v in expected[x["start"]].items() if k != "inference_us"}


@needs_jit
def test_bench_times_the_alpha_step_beside_the_classifier(alpha_artifact, random_artifact):
    """`kdsignal bench`'s inference part times an alpha artifact's step and its ratio to the classifier's step."""
    from daemon.bench import inference

    out = inference.run(Model.load(random_artifact), "test", 50, teacher=False, warmup=10,
                        alpha=Model.load(alpha_artifact))
    names = {r["name"] for r in out["results"]}
    assert "student_step_alpha" in names
    ratio = [r for r in out["ratios"] if r["name"] == "student_step_alpha/student_step"]
    assert len(ratio) == 1 and ratio[0]["p50_ratio"] > 0


def test_shipped_alpha_model_replays_with_alpha_bp_in_every_line():
    """models/alpha.npz, as shipped, replays real candles with a finite alpha_bp and its policy's decision per line."""
    art = load_artifact(ROOT / "models" / "alpha.npz")
    pol = art.manifest["alpha"]["policy"]
    buy = np.inf if pol["buy_above_bp"] is None else pol["buy_above_bp"]
    sell = -np.inf if pol["sell_below_bp"] is None else pol["sell_below_bp"]
    rows = read_kline_csv(DATA / "BTCUSDT-5m.csv")[:600]
    lines = _replay_lines(ROOT / "models" / "alpha.npz", rows)
    assert len(lines) == len(rows) - WINDOW + 1
    assert all(np.isfinite(x["alpha_bp"]) and "probs" not in x for x in lines)
    assert len({x["alpha_bp"] for x in lines}) > 1  # a live prediction, not a constant start
    for x in lines:
        assert x["signal"] == ("buy" if x["alpha_bp"] > buy else "sell" if x["alpha_bp"] < sell else "hold")
