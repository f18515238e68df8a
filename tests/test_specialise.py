"""The architecture-specialised student step gives the generic kernel's results bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.core.model import Model
from kernels.features import features_batch
from kernels.layout import (
    FEATURE_NAMES,
    R_OFFSETS,
    ROUTER_REGIMES,
    WINDOW,
    architecture,
    pack_router,
    router_size,
    student_state_size,
)
from kernels.specialise import make_student_step, specialised_step
from tests.naive import regime_reference, router_reference, student_reference
from tests.support import DATA, load_csv, needs_jit, packed_student, run_both, with_gaps

VOL, TREND = FEATURE_NAMES.index("rvol_100"), FEATURE_NAMES.index("ret_20")
ARCHITECTURES = [
    ((11, 16, 8, 3), ("relu", "relu", "linear")),
    ((11, 32, 3), ("tanh", "linear")),
    ((11, 24, 12, 6, 3), ("relu", "tanh", "relu", "linear")),
]


@pytest.mark.parametrize("sizes,acts", ARCHITECTURES)
def test_specialised_equals_generic_bitwise_and_naive(sizes, acts):
    """On real candles with gaps, every state slot and status equals the generic kernel's; probabilities match NumPy."""
    bars = with_gaps(load_csv(DATA / "ETHUSDT-5m.csv")[:2000, 1:6], 7)
    model, w, b, a, mean, std = packed_student(11, sizes, acts, bars)
    probs = run_both(specialised_step(model), model, bars)
    feats = features_batch(*bars.T)
    ref = student_reference(w, b, a, mean, std, 6.0, feats[WINDOW - 1 :])
    assert np.isfinite(probs[WINDOW - 1 :]).all()
    np.testing.assert_allclose(probs[WINDOW - 1 :], ref, rtol=1e-10, atol=1e-14)


def test_specialised_step_is_compiled_once_per_architecture(btc_5m):
    """Two model vectors of one architecture (other weights) share one compiled step; another architecture does not."""
    bars = btc_5m[:, 1:6]
    one = packed_student(1, *ARCHITECTURES[0], bars)[0]
    two = packed_student(2, *ARCHITECTURES[0], bars)[0]
    other = packed_student(1, *ARCHITECTURES[1], bars)[0]
    assert specialised_step(one) is specialised_step(two)
    assert specialised_step(one) is not specialised_step(other)


def test_factory_returns_plain_python(btc_5m):
    """``make_student_step`` returns an uncompiled function that runs as Python (so pycc and njit can take it)."""
    model = packed_student(4, *ARCHITECTURES[0], btc_5m[:, 1:6])[0]
    step = make_student_step(model)
    assert not hasattr(step, "py_func") and step.__closure__
    state = np.zeros(student_state_size(model))
    statuses = [step(state, model, *row) for row in btc_5m[: WINDOW + 1, 1:6]]
    assert statuses[:WINDOW - 1] == [-1] * (WINDOW - 1) and statuses[-1] in (0, 1, 2)


@needs_jit
def test_jit_model_serves_the_specialised_step(random_artifact):
    """``kernel="jit"`` serves the specialised step through numba and gives the ahead-of-time model's bits."""
    jit = Model.load(random_artifact, kernel="jit")
    aot = Model.load(random_artifact)
    assert (jit.kernel_note, aot.kernel_note) == ("jit", "aot")
    assert jit.step_kernel is specialised_step(jit.vector)
    a, b = jit.new_state(), aot.new_state()
    for row in with_gaps(load_csv(DATA / "ADAUSDT-5m.csv")[:, 1:6], 3):
        assert a.update(*row) == b.update(*row)
    assert b.warm
    np.testing.assert_array_equal(a.array, b.array)


def test_unknown_kernel_is_refused(random_artifact):
    """A kernel name other than aot or jit is refused by name."""
    with pytest.raises(ValueError, match="'generic'"):
        Model.load(random_artifact, kernel="generic")


def _router(bars, sizes=ARCHITECTURES[0][0], acts=ARCHITECTURES[0][1]):
    """A router over six random students of one architecture, volatility edges at the rvol_100 terciles of ``bars``."""
    parts = [packed_student(20 + g, sizes, acts, bars) for g in range(ROUTER_REGIMES)]
    feats = features_batch(*bars.T)
    edges = np.nanquantile(feats[:, VOL], [1 / 3, 2 / 3])
    model = pack_router([p[0] for p in parts], VOL, TREND, edges)
    return model, [(*p[1:], 6.0) for p in parts], edges, feats


@pytest.mark.parametrize("sizes,acts", ARCHITECTURES[:2])
def test_router_step_equals_generic_batch_and_naive(sizes, acts):
    """A router's specialised step equals the generic step slot for slot, the batch form bit for bit, and each
    row's regime student in NumPy; every regime serves some bars."""
    from kernels.student import student_batch

    bars = with_gaps(load_csv(DATA / "SOLUSDT-5m.csv")[:3000, 1:6], 5)
    model, students, edges, feats = _router(bars, sizes, acts)
    probs = run_both(specialised_step(model), model, bars)
    batch = np.empty((len(bars), 3))
    student_batch(model, np.ascontiguousarray(feats), batch)
    np.testing.assert_array_equal(probs[WINDOW - 1 :], batch[WINDOW - 1 :])
    ref = router_reference(students, VOL, TREND, edges, feats[WINDOW - 1 :])
    np.testing.assert_allclose(probs[WINDOW - 1 :], ref, rtol=1e-10, atol=1e-14)
    regimes = [regime_reference(x[VOL], x[TREND], edges) for x in feats[WINDOW - 1 :]]
    assert set(regimes) == set(range(ROUTER_REGIMES))
    # not one student in disguise: another regime's student gives other probabilities on these rows
    g = regimes[0]
    other = student_reference(*students[(g + 1) % ROUTER_REGIMES], feats[WINDOW - 1 : WINDOW])
    assert not np.allclose(other, probs[WINDOW - 1 : WINDOW])


def test_router_has_its_own_compiled_step(btc_5m):
    """A router and a plain student of the same architecture do not share a compiled step."""
    bars = btc_5m[:, 1:6]
    plain = packed_student(1, *ARCHITECTURES[0], bars)[0]
    router = _router(bars)[0]
    assert specialised_step(router) is not specialised_step(plain)


def test_router_vectors_are_checked():
    """pack_router refuses a wrong student count, mixed architectures, bad edges and feature indices; architecture()
    refuses a router whose offsets do not fit."""
    bars = load_csv(DATA / "BTCUSDT-5m.csv")[:500, 1:6]
    s = [packed_student(g, *ARCHITECTURES[0], bars)[0] for g in range(ROUTER_REGIMES)]
    other = packed_student(9, *ARCHITECTURES[1], bars)[0]
    with pytest.raises(ValueError, match="6 students"):
        pack_router(s[:3], VOL, TREND, [1e-3, 2e-3])
    with pytest.raises(ValueError, match="architecture"):
        pack_router([*s[:5], other], VOL, TREND, [1e-3, 2e-3])
    for edges in ([2e-3, 1e-3], [np.nan, 1e-3], [1e-3]):
        with pytest.raises(ValueError, match="edges"):
            pack_router(s, VOL, TREND, edges)
    with pytest.raises(ValueError, match="feature index"):
        pack_router(s, 11, TREND, [1e-3, 2e-3])
    good = pack_router(s, VOL, TREND, [1e-3, 2e-3])
    assert architecture(good) == architecture(s[0]) and router_size(good) == ROUTER_REGIMES
    bad = good.copy()
    bad[R_OFFSETS + 2] = bad[R_OFFSETS + 1]
    with pytest.raises(ValueError, match="offsets"):
        architecture(bad)
    with pytest.raises(ValueError, match="does not match its MLP"):
        architecture(good[:-5])
