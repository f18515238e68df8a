"""The fused per-bar student step: equal to its batch form bit for bit and to the NumPy reference."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from hypothesis import given, settings

from daemon.core.model import Model
from kernels.features import features_batch
from kernels.layout import WINDOW
from tests.naive import student_reference
from tests.support import DATA, ROOT, bar_lists, load_csv, needs_jit, to_bars, with_gaps


def step_all(model: Model, bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    state = model.new_state()
    probs = np.full((len(bars), 3), np.nan)
    cls = np.empty(len(bars), dtype=np.int64)
    for t, (o, h, l, c, v) in enumerate(bars):
        cls[t] = state.update(float(o), float(h), float(l), float(c), float(v))
        if cls[t] >= 0:
            probs[t] = state.probs
    return probs, cls


@needs_jit
def test_step_equals_batch_bitwise(random_artifact):
    """Live per-bar probabilities equal the batch (training) probabilities exactly on real candles."""
    model = Model.load(random_artifact)
    for name in ("BTCUSDT-5m", "SOLUSDT-5m", "BTCUSDT-1m"):
        bars = load_csv(DATA / f"{name}.csv")[:, 1:6]
        probs, cls = step_all(model, bars)
        batch = model.predict_features(features_batch(*bars.T))
        np.testing.assert_array_equal(probs, batch)
        assert (cls[: WINDOW - 1] == -1).all()
        np.testing.assert_array_equal(cls[WINDOW - 1 :], batch[WINDOW - 1 :].argmax(axis=1))


def test_step_matches_numpy_reference(random_artifact, btc_5m):
    """The fused kernel equals standardise-clip-MLP-softmax written in NumPy."""
    model = Model.load(random_artifact)
    art = model.artifact
    from kernels.layout import unpack_mlp

    w, b, acts, _ = unpack_mlp(art.mlp)
    bars = with_gaps(btc_5m[:, 1:6], 4)
    probs, _ = step_all(model, bars)
    feats = features_batch(*bars.T)
    ref = student_reference(w, b, acts, art.feature_mean, art.feature_std, 6.0, feats[WINDOW - 1 :])
    np.testing.assert_allclose(probs[WINDOW - 1 :], ref, rtol=1e-10, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(bar_lists)
def test_property_probabilities_always_finite(spec):
    """Whatever bars arrive (NaN, zero, inf volume), emitted probabilities are finite and sum to one."""
    import tempfile

    from tests.support import write_random_artifact

    global _MODEL
    if "_MODEL" not in globals():
        path = os.path.join(tempfile.mkdtemp(), "m.npz")
        write_random_artifact(path)
        _MODEL = Model.load(path)
    probs, cls = step_all(_MODEL, to_bars(spec))
    emitted = probs[cls >= 0]
    assert np.isfinite(emitted).all()
    np.testing.assert_allclose(emitted.sum(axis=1), 1.0, rtol=1e-12)


def test_extreme_features_are_clipped(random_artifact, btc_5m):
    """A 50% crash bar gives the same probabilities as any input beyond the clip bound."""
    model = Model.load(random_artifact)
    bars = btc_5m[: WINDOW + 40, 1:6].copy()
    a, b = model.new_state(), model.new_state()
    for o, h, l, c, v in bars:
        a.update(o, h, l, c, v)
        b.update(o, h, l, c, v)
    c = bars[-1, 3]
    a.update(c, c, c * 0.5, c * 0.5, 1e9)
    b.update(c, c, c * 0.2, c * 0.2, 1e12)
    assert np.isfinite(a.probs).all() and np.isfinite(b.probs).all()


def test_rebind_keeps_rolling_features(random_artifact, tmp_path, btc_5m):
    """Rebinding a warm state to a reloaded model keeps it warm and matches a fresh run of that model."""
    from tests.support import write_random_artifact

    old = Model.load(random_artifact)
    write_random_artifact(tmp_path / "new.npz", seed=9)
    new = Model.load(tmp_path / "new.npz")
    s_old, s_new = old.new_state(), new.new_state()
    bars = btc_5m[: 2 * WINDOW + 50, 1:6]
    for row in bars[: WINDOW + 20]:
        s_old.update(*row)
        s_new.update(*row)
    s_re = s_old.rebind(new)
    assert s_re.warm
    for row in bars[WINDOW + 20 :]:
        assert s_re.update(*row) == s_new.update(*row)
        np.testing.assert_array_equal(s_re.probs, s_new.probs)


@needs_jit
def test_step_allocates_nothing(random_artifact):
    """A warm per-bar step makes no heap allocation (numba's NRT statistics, 10 bars vs 150 bars).

    The loop runs inside numba so that only the kernel counts: numba wraps each array passed in from
    Python in a fresh meminfo, a cost of the call boundary that the benchmark measures instead.
    """
    code = f"""
import numpy as np
from numba import njit
from numba.core.runtime import rtsys
from daemon.core.model import Model
from kernels.student import student_step

@njit
def run(state, vec, bars):
    for t in range(bars.shape[0]):
        student_step(state, vec, bars[t, 0], bars[t, 1], bars[t, 2], bars[t, 3], bars[t, 4])

m = Model.load({str(random_artifact)!r})
s = m.new_state()
bars = np.ascontiguousarray(np.loadtxt({str(DATA / 'BTCUSDT-5m.csv')!r}, delimiter=',', skiprows=1)[:400, 1:6])
run(s.array, m.vector, bars[:150])
assert s.warm
counts = []
for chunk in (bars[150:160], bars[160:310]):
    before = rtsys.get_allocation_stats().alloc
    run(s.array, m.vector, chunk)
    counts.append(rtsys.get_allocation_stats().alloc - before)
print(counts[1] - counts[0])
"""
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.split() == ["0"], out.stdout + out.stderr


@needs_jit
def test_unchecked_entry_equals_dispatcher(random_artifact, btc_5m):
    """The dispatcher-free entry point used by SymbolState gives the dispatcher's results exactly."""
    from kernels.student import student_step

    model = Model.load(random_artifact)
    fast = model.new_state()
    slow = np.zeros_like(fast.array)
    for o, h, l, c, v in btc_5m[:400, 1:6]:
        assert fast.update(o, h, l, c, v) == student_step(slow, model.vector, o, h, l, c, v)
    np.testing.assert_array_equal(fast.array, slow)
