"""The architecture-specialised student step gives the generic kernel's results bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.core.model import Model
from kernels.features import features_batch
from kernels.layout import WINDOW, student_state_size
from kernels.specialise import make_student_step, specialised_step
from tests.naive import student_reference
from tests.support import DATA, load_csv, needs_jit, packed_student, run_both, with_gaps

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
