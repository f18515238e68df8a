"""MLP forward, softmax and distillation-loss kernels against NumPy references and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.layout import pack_mlp, unpack_mlp
from kernels.mlp import kd_loss_grad, mlp_forward_batch, softmax_batch
from tests.naive import kd_loss_reference, mlp_reference, softmax_reference
from tests.support import random_student


@pytest.mark.parametrize(
    "sizes,acts",
    [((9, 16, 8, 3), ("relu", "relu", "linear")), ((9, 128, 64, 32, 3), ("tanh", "relu", "tanh", "linear")),
     ((4, 3), ("linear",))],
)
def test_forward_matches_matmul_reference(sizes, acts):
    """The packed forward pass equals a matrix-product MLP for student- and teacher-sized nets."""
    w, b, a = random_student(3, sizes, acts)
    x = np.random.default_rng(1).normal(size=(257, sizes[0]))
    out = np.empty((257, sizes[-1]))
    mlp_forward_batch(pack_mlp(w, b, a), x, out)
    np.testing.assert_allclose(out, mlp_reference(w, b, a, x), rtol=1e-12, atol=1e-12)


def test_pack_unpack_round_trip():
    """Unpacking a packed MLP gives back the same weights, biases and activations."""
    w, b, a = random_student(5)
    w2, b2, a2, end = unpack_mlp(pack_mlp(w, b, a))
    assert a2 == a and end == len(pack_mlp(w, b, a))
    for x, y in zip(w + b, w2 + b2, strict=True):
        np.testing.assert_array_equal(x, y)


def test_pack_rejects_mismatched_layers():
    """A weight that does not chain to the previous layer is refused with the layer named."""
    w, b, a = random_student(0)
    w[1] = w[1][:, :-1]
    with pytest.raises(ValueError, match="layer 1"):
        pack_mlp(w, b, a)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_softmax_matches_reference(temperature):
    """Temperature softmax equals the reference, sums to one, and survives large logits."""
    z = np.random.default_rng(2).normal(scale=30, size=(100, 3))
    z[0] = [1000.0, -1000.0, 999.0]
    out = np.empty_like(z)
    softmax_batch(z, temperature, out)
    np.testing.assert_allclose(out, softmax_reference(z, temperature), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-14)


def kd_inputs(seed=0, n=50):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), rng.normal(scale=2, size=(n, 3)), rng.integers(0, 3, n), rng.uniform(0.1, 2, n)


@pytest.mark.parametrize("temperature,alpha", [(1.0, 1.0), (2.0, 0.5), (4.0, 0.0), (0.7, 0.3)])
def test_kd_loss_matches_reference(temperature, alpha):
    """The kernel's loss equals the Hinton formula evaluated in NumPy."""
    zs, zt, y, w = kd_inputs()
    grad = np.empty_like(zs)
    loss = kd_loss_grad(zs, zt, y, w, temperature, alpha, grad)
    assert loss == pytest.approx(kd_loss_reference(zs, zt, y, w, temperature, alpha), rel=1e-12)


@pytest.mark.parametrize("temperature,alpha", [(1.0, 1.0), (2.0, 0.5), (4.0, 0.0), (0.7, 0.3)])
def test_kd_gradient_matches_finite_differences(temperature, alpha):
    """The analytic gradient with respect to the student logits matches central differences."""
    zs, zt, y, w = kd_inputs(1, n=12)
    grad = np.empty_like(zs)
    kd_loss_grad(zs, zt, y, w, temperature, alpha, grad)
    eps = 1e-6
    numeric = np.empty_like(zs)
    for idx in np.ndindex(zs.shape):
        up, down = zs.copy(), zs.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (kd_loss_reference(up, zt, y, w, temperature, alpha)
                        - kd_loss_reference(down, zt, y, w, temperature, alpha)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)


def test_kd_loss_is_zero_gradient_when_student_equals_teacher_soft_only():
    """With alpha 0 and identical logits, the distillation term and its gradient vanish."""
    zs, _, y, w = kd_inputs(2)
    grad = np.empty_like(zs)
    loss = kd_loss_grad(zs, zs.copy(), y, w, 3.0, 0.0, grad)
    assert abs(loss) < 1e-12 and np.abs(grad).max() < 1e-15
