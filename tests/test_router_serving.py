"""A router artifact (a student per regime, ``kernels.layout.pack_router``) served by the same per-bar call: its
compiled step equals the JIT step and the NumPy reference, and the live daemon writes what replay writes."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.core.artifact import load_artifact
from daemon.core.model import Model, student_vector
from daemon.tools.fake_bybit import FakeBybit
from daemon.tools.kernel_build import build_kernel
from daemon.tools.replay import read_kline_csv
from kernels.features import features_batch
from kernels.layout import FEATURE_NAMES, WINDOW, router_size
from tests.naive import regime_reference, router_reference
from tests.support import (
    DATA,
    OPEN_INDEX,
    InProcessDaemon,
    load_csv,
    needs_jit,
    replay_lines,
    write_router_artifact,
)

VOL, TREND = FEATURE_NAMES.index("rvol_100"), FEATURE_NAMES.index("ret_20")


def load_csv_bars() -> np.ndarray:
    """Real SOLUSDT 5m bars (o, h, l, c, v): another symbol than the one the students' statistics come from."""
    return load_csv(DATA / "SOLUSDT-5m.csv")[:, 1:6]


@pytest.fixture(scope="module")
def router(tmp_path_factory, kernel_dir):
    """A router artifact whose compiled step is in the session's kernel directory, with its reference students."""
    path = tmp_path_factory.mktemp("router") / "router.npz"
    _, ref, edges = write_router_artifact(path)
    if not needs_jit.mark.args[0]:
        build_kernel(student_vector(load_artifact(path)), kernel_dir)
    return path, ref, edges


def test_router_artifact_round_trips_and_matches_the_reference(router):
    """Loaded back, a router predicts each row with its regime's student, as the NumPy reference does, and
    every regime occurs on the sample."""
    path, ref, edges = router
    model = Model.load(path, kernel="jit")
    assert router_size(model.vector) == 6 and model.artifact.regimes == 6
    assert model.artifact.manifest["router"]["vol_edges"] == edges
    feats = features_batch(*load_csv_bars().T)[WINDOW - 1 :]
    got = model.predict_features(feats)
    np.testing.assert_allclose(got, router_reference(ref, VOL, TREND, edges, feats), rtol=1e-10, atol=1e-14)
    assert {regime_reference(x[VOL], x[TREND], edges) for x in feats} == set(range(6))


@needs_jit
def test_aot_router_step_equals_jit_and_batch(router):
    """The ahead-of-time router step gives the JIT step's state bit for bit, and the batch form's probabilities."""
    path, _, _ = router
    aot, jit = Model.load(path), Model.load(path, kernel="jit")
    assert aot.kernel_note == "aot"
    bars = load_csv_bars()[:1500]
    a, b = aot.new_state(), jit.new_state()
    probs = np.full((len(bars), 3), np.nan)
    for t, row in enumerate(bars):
        status = a.update(*row)
        assert status == b.update(*row)
        np.testing.assert_array_equal(a.array, b.array)
        if status >= 0:
            probs[t] = a.probs
    batch = jit.predict_features(features_batch(*bars.T))
    np.testing.assert_array_equal(probs[WINDOW - 1 :], batch[WINDOW - 1 :])


@needs_jit
async def test_router_live_through_the_fake_equals_replay(router):
    """The daemon serving a router artifact live writes exactly the lines replay writes."""
    path, _, _ = router
    rows = read_kline_csv(DATA / "BTCUSDT-5m.csv")[: OPEN_INDEX + 30]
    expected = replay_lines(path, "BTCUSDT", rows)
    async with FakeBybit({"BTCUSDT": rows}, "5", start_index=OPEN_INDEX) as fake, \
            InProcessDaemon(fake, path, ("BTCUSDT",)) as d:
        await fake.step(len(rows) - OPEN_INDEX)
        await d.wait_for_start("BTCUSDT", rows[-1].start_ms)
    live = d.lines
    assert len(live) == len(rows) - OPEN_INDEX
    for x in live:
        assert {k: v for k, v in x.items() if k != "inference_us"} == {
            k: v for k, v in expected[x["start"]].items() if k != "inference_us"}
