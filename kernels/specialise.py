"""The student step specialised to one architecture: the generic kernel with sizes and offsets as constants.

The generic ``kernels.student.student_step`` reads layer sizes from the model vector, so LLVM cannot
unroll its loops. ``make_student_step`` builds the same step from closures whose sizes, offsets and
activations are frozen Python ints (numba compiles a closure's free variables as constants), one per layer,
chained. It does exactly the arithmetic of the generic kernel, in the same order (bias first, then inputs
in order; the same softmax), on the same state layout, so its results are equal bit for bit
(``tests/test_specialise.py``).

The closures are inlined by numba itself (``inline="always"``), not left to LLVM: a call between numba
functions passing arrays costs a reference-count increment and decrement per array, atomics that LLVM does
not remove, and a chain of per-layer calls made the step measurably slower than one body. (``kernels.mlp``
notes that IR inlining once mixed up loop variables of nested helpers; the bit-for-bit tests above cover
every nesting used here.)

The function ``make_student_step`` returns is plain Python, compiled two ways: by numba's JIT
(``specialised_step``) and, ahead of time, by ``numba.pycc`` (``daemon.tools.kernel_build``, what the daemon
serves by default). It holds compiled functions as free variables, which numba's on-disk cache cannot key
stably, so the JIT form compiles once per process.
"""

from __future__ import annotations

import numpy as np

from kernels.features import _push_bar
from kernels.jit import njit
from kernels.layout import (
    ACT_RELU,
    ACT_TANH,
    ALPHA_VOL_FEATURE,
    FEATURE_STATE_SIZE,
    HEAD_ALPHA,
    M_CLIP,
    M_HEADER,
    S_FEATURES,
    STATUS_REJECTED,
    STATUS_WARMING,
    architecture,
    router_size,
)
from kernels.mlp import _softmax
from kernels.student import _alpha_readout, _route

SIGNATURE = "int64(float64[::1], float64[::1], float64, float64, float64, float64, float64)"


def _normalise(f):
    means, inv_std, dst = M_HEADER, M_HEADER + f, FEATURE_STATE_SIZE

    @njit(inline="always")
    def normalise(state, model, b):
        # kernels.student._infer's loop, reading the features from the state and writing the scratch input.
        clip = model[b + M_CLIP]
        for j in range(f):
            z = (state[S_FEATURES + j] - model[b + means + j]) * model[b + inv_std + j]
            if z > clip:
                z = clip
            elif z < -clip:
                z = -clip
            elif z != z:
                z = 0.0
            state[dst + j] = z

    return normalise


def _dense(n_in, n_out, act, w_at, src, dst):
    b_at = w_at + n_out * n_in

    @njit(inline="always")
    def dense(state, model, b):
        # kernels.mlp._mlp_forward's layer: the same sums in the same order.
        for j in range(n_out):
            acc = model[b + b_at + j]
            for i in range(n_in):
                acc += model[b + w_at + j * n_in + i] * state[src + i]
            if act == ACT_RELU:
                acc = acc if acc > 0.0 else 0.0
            elif act == ACT_TANH:
                acc = np.tanh(acc)
            state[dst + j] = acc

    return dense


def _then(first, second):
    @njit(inline="always")
    def both(state, model, b):
        first(state, model, b)
        second(state, model, b)

    return both


def make_student_step(model: np.ndarray):
    """``student_step(state, model, o, h, l, c, v) -> int`` for this model's architecture, not yet compiled.

    Same arguments, results and state layout as ``kernels.student.student_step`` (reference
    ``tests/naive.py::student_reference``); compile it to ``SIGNATURE``. Weights, statistics and clip are
    still read from ``model`` at run time: only the architecture is frozen. A router vector
    (``kernels.layout.pack_router``) gets a step that picks its regime's student per bar
    (``kernels.student._route``); every other read is then offset by that student's position.
    """
    f, sizes, acts, head = architecture(model)
    n_layers = len(sizes) - 1
    width = max(sizes)
    k = sizes[-1]
    # State tail, as kernels.student lays it out: scratch (2W) | outputs (K) | read-out (K).
    scratch = FEATURE_STATE_SIZE
    logits = scratch + 2 * width
    probs = logits + k
    forward = _normalise(f)
    pos = M_HEADER + 2 * f + 2 * n_layers + 2  # the first weight, past the packed MLP's header
    src, dst = scratch, scratch + width
    for layer in range(n_layers):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        out = logits if layer == n_layers - 1 else dst
        forward = _then(forward, _dense(n_in, n_out, acts[layer], pos, src, out))
        pos += n_out * n_in + n_out
        src, dst = dst, src
    tail = pos  # an alpha head's read-out parameters follow the MLP
    vol_at = S_FEATURES + ALPHA_VOL_FEATURE

    # A router picks its regime's student per bar; a frozen False here compiles the plain offset 0.
    routed = router_size(model) > 0

    if head == HEAD_ALPHA:
        def student_step_alpha(state, model, o, h, l, c, v):
            status = _push_bar(state, o, h, l, c, v)
            if status <= 0:
                return STATUS_WARMING if status == 0 else STATUS_REJECTED
            forward(state, model, 0)
            return _alpha_readout(model, tail, state[vol_at], state, logits, k, state, probs)

        return student_step_alpha

    def student_step_fixed(state, model, o, h, l, c, v):
        status = _push_bar(state, o, h, l, c, v)
        if status <= 0:
            return STATUS_WARMING if status == 0 else STATUS_REJECTED
        forward(state, model, _route(model, state, S_FEATURES) if routed else 0)
        _softmax(state, logits, k, 1.0, state, probs)
        best = 0
        for i in range(1, k):
            if state[probs + i] > state[probs + best]:
                best = i
        return best

    return student_step_fixed


_jitted: dict[tuple, object] = {}


def specialised_step(model: np.ndarray):
    """The JIT-compiled entry point of ``make_student_step(model)``, once per architecture and process.

    Called without numba's dispatcher, it skips the per-call type checks: pass only C-contiguous float64
    vectors and floats (``daemon.core.model.SymbolState`` owns such arrays).
    """
    key = (architecture(model), router_size(model))
    if key not in _jitted:
        fn = njit(SIGNATURE)(make_student_step(model))
        # Under NUMBA_DISABLE_JIT njit returns the Python function itself (coverage runs): serve that.
        _jitted[key] = fn.overloads[fn.signatures[0]].entry_point if hasattr(fn, "overloads") else fn
    return _jitted[key]
