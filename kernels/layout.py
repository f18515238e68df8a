"""What the kernels' vectors hold and where, and the NumPy code that packs them. No numba here.

The live daemon runs an ahead-of-time compiled student step (built by ``daemon.tools.kernel_build``) and
needs only these layouts, so it never imports numba or starts LLVM. The kernels that compute into these
layouts are ``kernels.features``, ``kernels.mlp``, ``kernels.student`` and ``kernels.specialise``.

**Feature state** (one float64 vector per (symbol, interval), ``new_feature_state``): a header (bars seen,
ring head, bars filled forward, last close), then four rings of ``WINDOW`` bars (close, volume, one-bar
log return, high-low range over close), each written twice so any window is one contiguous slice, then
the ``N_FEATURES`` features of the newest bar.

**Packed MLP** (``pack_mlp`` writes it, ``unpack_mlp`` reads it back)::

    [0]                 n_layers L
    [1 .. L+1]          sizes d_0 .. d_L (d_0 inputs, d_L logits)
    [L+2 .. 2L+1]       activation code of each layer (ACT_*)
    then, per layer k:  W_k as (d_{k+1}, d_k) row-major, then b_k (d_{k+1})

**Model vector** of a student (``pack_student``), so the per-bar call takes two arrays and five scalars::

    [0] n_features F     [1] clip (|z| bound after normalisation)
    [2] MLP offset       [3] widest layer W (sizes the scratch space)
    [4] head (HEAD_CLASSES or HEAD_ALPHA)
    [5 .. 5+F]           feature means
    [5+F .. 5+2F]        feature 1/std
    [MLP offset ..]      the packed MLP: K outputs
    then, alpha head only: bp per unit, buy above (bp), sell below (bp)   (``ALPHA_TAIL`` values)

A ``classes`` head's K outputs are class logits, read out as softmax probabilities, the step returning
the argmax. An ``alpha`` head's outputs are the predicted forward return over the label's horizon in
units of recent volatility, ``mu = fwd / (rvol_20 * sqrt(h))``, and optionally its log-variance; the read-out
is ``alpha_bp = mu * rvol_20 * bp_per_unit`` (``bp_per_unit = 1e4 * sqrt(h)``) and, with a variance,
``sd_bp = exp(log_var / 2) * rvol_20 * bp_per_unit``; the step returns the decided class: buy when
``alpha_bp > buy_above``, sell when ``alpha_bp < sell_below``, else hold (a NaN is hold).

**Router vector** (``pack_router``): ``R`` students of one architecture (classes head) and the regime
rule that picks one per bar from the bar's own features (``daemon.training.regime``)::

    [0] ROUTER_MARK (-1: a student vector starts with F >= 1)
    [1] R               [2] volatility feature index   [3] trend feature index
    [4], [5]            volatility edges (ascending)
    [6 .. 6+R]          offset of each student vector in this vector
    then the R student vectors, as ``pack_student`` writes them

    regime = 2 * ((vol > edge0) + (vol > edge1)) + (trend > 0)    (a NaN compares False)

and the regime's student runs. A plain student vector is the one-student case and keeps its layout.

**Student state**: a feature state followed by ``2W`` scratch slots, then the K outputs, then the K
read-out values: probabilities, or ``alpha_bp`` [, ``sd_bp``] (``student_state_size``, ``probs_offset``);
for a router, W and K of its students (all the same).
"""

from __future__ import annotations

import itertools

import numpy as np

# ------------------------------------------------------------------ features
FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",
    "ret_5",
    "ret_10",
    "ret_20",
    "rvol_20",
    "relvol_20",
    "vwret_20",
    "hl_range",
    "zclose_20",
    "hl_mean_20",
    "rvol_100",
)
N_FEATURES = len(FEATURE_NAMES)
LOOKBACK = 20  # bars the short-window features average over
LONG_LOOKBACK = 100  # one-bar returns in rvol_100 (a multiple of 4: its sum runs in four lanes)
WINDOW = LONG_LOOKBACK + 1  # closes needed: the 100 one-bar returns reach back 100 bars
# The windows each feature reads, recorded in the artifact so a loader can refuse a mismatch.
FEATURE_PARAMS: dict[str, dict[str, int]] = {
    "ret_1": {"lag": 1},
    "ret_5": {"lag": 5},
    "ret_10": {"lag": 10},
    "ret_20": {"lag": 20},
    "rvol_20": {"window": LOOKBACK},
    "relvol_20": {"window": LOOKBACK},
    "vwret_20": {"window": LOOKBACK},
    "hl_range": {"window": 1},
    "zclose_20": {"window": LOOKBACK},
    "hl_mean_20": {"window": LOOKBACK},
    "rvol_100": {"window": LONG_LOOKBACK},
}

# Feature-state layout (float64 vector per (symbol, interval)); see ``new_feature_state``.
S_SEEN = 0  # bars accepted so far
S_HEAD = 1  # ring position of the next write
S_FILLED = 2  # bars filled forward by the missing-bar policy
S_LAST_CLOSE = 3
S_HEADER = 8
S_CLOSE = S_HEADER  # each ring is written twice (at i and i + WINDOW) so any window is one slice
S_VOLUME = S_CLOSE + 2 * WINDOW
S_RET = S_VOLUME + 2 * WINDOW
S_RANGE = S_RET + 2 * WINDOW  # (high - low) / close per bar
S_FEATURES = S_RANGE + 2 * WINDOW
FEATURE_STATE_SIZE = S_FEATURES + N_FEATURES


def new_feature_state(extra: int = 0) -> np.ndarray:
    """Return a zeroed feature state, with ``extra`` trailing slots for callers' scratch space."""
    return np.zeros(FEATURE_STATE_SIZE + extra, dtype=np.float64)


# ------------------------------------------------------------------ packed MLP
ACT_LINEAR = 0
ACT_RELU = 1
ACT_TANH = 2
ACTIVATIONS = {"linear": ACT_LINEAR, "relu": ACT_RELU, "tanh": ACT_TANH}


def pack_mlp(weights, biases, activations) -> np.ndarray:
    """Pack layer weights ``(out, in)``, biases ``(out,)`` and activation names into one float64 vector."""
    if not (len(weights) == len(biases) == len(activations)) or not weights:
        raise ValueError(
            f"need one weight, bias and activation per layer; got {len(weights)}, {len(biases)}, {len(activations)}"
        )
    sizes = [int(np.shape(weights[0])[1])]
    for k, (w, b) in enumerate(zip(weights, biases, strict=True)):
        w = np.asarray(w)
        b = np.asarray(b)
        if w.ndim != 2 or w.shape[1] != sizes[-1]:
            raise ValueError(f"layer {k}: weight shape {w.shape} does not take {sizes[-1]} inputs")
        if b.shape != (w.shape[0],):
            raise ValueError(f"layer {k}: bias shape {b.shape}, expected ({w.shape[0]},)")
        sizes.append(int(w.shape[0]))
    codes = []
    for k, a in enumerate(activations):
        if a not in ACTIVATIONS:
            raise ValueError(f"layer {k}: unknown activation {a!r}; known: {sorted(ACTIVATIONS)}")
        codes.append(ACTIVATIONS[a])
    parts = [np.array([len(weights)], dtype=np.float64), np.array(sizes, np.float64), np.array(codes, np.float64)]
    for w, b in zip(weights, biases, strict=True):
        parts.append(np.asarray(w, dtype=np.float64).ravel())
        parts.append(np.asarray(b, dtype=np.float64).ravel())
    return np.ascontiguousarray(np.concatenate(parts))


def unpack_mlp(packed: np.ndarray, offset: int = 0):
    """Inverse of ``pack_mlp``: return (weights, biases, activation names, end offset)."""
    names = {v: k for k, v in ACTIVATIONS.items()}
    n_layers = int(packed[offset])
    sizes = [int(s) for s in packed[offset + 1 : offset + n_layers + 2]]
    acts = [names[int(a)] for a in packed[offset + n_layers + 2 : offset + 2 * n_layers + 2]]
    pos = offset + 2 * n_layers + 2
    weights, biases = [], []
    for k in range(n_layers):
        n_in, n_out = sizes[k], sizes[k + 1]
        weights.append(packed[pos : pos + n_out * n_in].reshape(n_out, n_in).copy())
        pos += n_out * n_in
        biases.append(packed[pos : pos + n_out].copy())
        pos += n_out
    return weights, biases, acts, pos


def mlp_size(sizes) -> int:
    """Length of the packed vector of an MLP with layer widths ``sizes`` (inputs first)."""
    n_layers = len(sizes) - 1
    return 1 + len(sizes) + n_layers + sum(sizes[k] * sizes[k + 1] + sizes[k + 1] for k in range(n_layers))


def mlp_max_width(packed: np.ndarray, offset: int = 0) -> int:
    """Widest layer (inputs included) of the packed MLP at ``offset``: sizes its scratch space."""
    n_layers = int(packed[offset])
    return int(max(packed[offset + 1 : offset + n_layers + 2]))


# ------------------------------------------------------------------ student model vector
M_FEATURES = 0
M_CLIP = 1
M_MLP = 2
M_WIDTH = 3
M_HEAD = 4
M_HEADER = 5

HEAD_CLASSES = 0
HEAD_ALPHA = 1
HEADS = {"classes": HEAD_CLASSES, "alpha": HEAD_ALPHA}
ALPHA_TAIL = 3  # bp per unit, buy above (bp), sell below (bp): behind the MLP of an alpha head
ALPHA_OUTPUTS = (("alpha_bp",), ("alpha_bp", "sd_bp"))  # read-out names for 1 or 2 alpha outputs
ALPHA_VOL_FEATURE = FEATURE_NAMES.index("rvol_20")  # the volatility unit of an alpha head
LOG_VAR_BOUND = 60.0  # |log-variance| is clamped here before exp(): no valid weight can overflow sd_bp

STATUS_WARMING = -1
STATUS_REJECTED = -2


def bp_per_unit(horizon_bars: int) -> float:
    """Basis points per unit of an alpha head's output: its unit is ``rvol_20 * sqrt(h)`` of log return."""
    return 1e4 * float(np.sqrt(horizon_bars))


def pack_student(mlp: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float, alpha=None) -> np.ndarray:
    """Pack normalisation statistics and a packed MLP into the model vector ``student_step`` reads.

    ``alpha``: None for a ``classes`` head, else ``(bp_per_unit, buy_above_bp, sell_below_bp)`` for an
    ``alpha`` head (thresholds may be +-inf: never act).
    """
    f = int(mlp[1])
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if mean.shape != (f,) or std.shape != (f,):
        raise ValueError(f"normalisation has shapes {mean.shape}/{std.shape}; the MLP takes {f} features")
    if not np.all(std > 0):
        raise ValueError("feature_std must be positive")
    kind = HEAD_CLASSES if alpha is None else HEAD_ALPHA
    head = np.array([f, clip, M_HEADER + 2 * f, mlp_max_width(mlp), kind], dtype=np.float64)
    tail = np.zeros(0) if alpha is None else np.asarray(alpha, dtype=np.float64)
    if tail.shape not in ((0,), (ALPHA_TAIL,)):
        raise ValueError(f"alpha read-out has {tail.size} values, expected {ALPHA_TAIL}")
    k = int(mlp[1 + int(mlp[0])])
    if alpha is not None and k not in (1, 2):
        raise ValueError(f"an alpha head has 1 or 2 outputs (mean, log-variance); this MLP has {k}")
    return np.ascontiguousarray(np.concatenate([head, mean, 1.0 / std, mlp, tail]))


# ------------------------------------------------------------------ router vector
ROUTER_MARK = -1.0
R_COUNT = 1
R_VOL_FEATURE = 2
R_TREND_FEATURE = 3
R_EDGES = 4
R_OFFSETS = 6
N_VOL_EDGES = 2
ROUTER_REGIMES = 2 * (N_VOL_EDGES + 1)


def pack_router(students: list[np.ndarray], vol_feature: int, trend_feature: int, vol_edges) -> np.ndarray:
    """Pack ``ROUTER_REGIMES`` student vectors (``pack_student``, same architecture, classes head) and the regime
    rule's feature indices and volatility edges into one router vector."""
    if len(students) != ROUTER_REGIMES:
        raise ValueError(f"a router has {ROUTER_REGIMES} students, got {len(students)}")
    archs = {architecture(s) for s in students}
    if len(archs) != 1:
        raise ValueError(f"a router's students share one architecture; got {len(archs)}")
    if next(iter(archs))[3] != HEAD_CLASSES:
        raise ValueError("a router's students have a classes head")
    edges = np.asarray(vol_edges, dtype=np.float64)
    if edges.shape != (N_VOL_EDGES,) or not np.all(np.isfinite(edges)) or edges[0] > edges[1]:
        raise ValueError(f"router volatility edges {edges.tolist()}: expected {N_VOL_EDGES} finite ascending values")
    for name, j in (("volatility", vol_feature), ("trend", trend_feature)):
        if not 0 <= j < N_FEATURES:
            raise ValueError(f"router {name} feature index {j} is not one of the {N_FEATURES} features")
    offsets, at = [], R_OFFSETS + ROUTER_REGIMES
    for s in students:
        offsets.append(at)
        at += len(s)
    head = [ROUTER_MARK, ROUTER_REGIMES, vol_feature, trend_feature, *edges.tolist(), *offsets]
    return np.ascontiguousarray(np.concatenate([np.array(head, dtype=np.float64), *students]))


def router_size(model: np.ndarray) -> int:
    """Students a router vector routes between; 0 for a plain student vector."""
    return int(model[R_COUNT]) if model[0] == ROUTER_MARK else 0


def first_student(model: np.ndarray) -> int:
    """Offset of the (first) student vector in ``model``: 0 for a plain student."""
    return int(model[R_OFFSETS]) if model[0] == ROUTER_MARK else 0


def router_students(model: np.ndarray) -> list[np.ndarray]:
    """The student vectors of a router (views); a plain student is its only student."""
    n = router_size(model)
    if n == 0:
        return [model]
    ends = [*(int(model[R_OFFSETS + i]) for i in range(1, n)), len(model)]
    return [model[int(model[R_OFFSETS + i]) : ends[i]] for i in range(n)]


def architecture(model: np.ndarray) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
    """(features F, layer sizes d_0..d_L, activation codes, head) of a model vector: what a specialised step freezes.

    A router's is its students' (checked equal, and its header against its length)."""
    if model[0] == ROUTER_MARK:
        n = int(model[R_COUNT])
        if n != ROUTER_REGIMES or len(model) < R_OFFSETS + n:
            raise ValueError(f"router vector with {n} students, expected {ROUTER_REGIMES}")
        offs = [int(model[R_OFFSETS + i]) for i in range(n)]
        if offs[0] != R_OFFSETS + n or any(b <= a for a, b in itertools.pairwise(offs)) \
                or offs[-1] >= len(model):
            raise ValueError(f"router vector student offsets {offs} do not fit its {len(model)} values")
        archs = {architecture(s) for s in router_students(model)}
        if len(archs) != 1:
            raise ValueError("router vector's students differ in architecture")
        return next(iter(archs))
    f = int(model[M_FEATURES])
    off = int(model[M_MLP])
    n_layers = int(model[off])
    sizes = tuple(int(s) for s in model[off + 1 : off + n_layers + 2])
    acts = tuple(int(a) for a in model[off + n_layers + 2 : off + 2 * n_layers + 2])
    if off != M_HEADER + 2 * f or sizes[0] != f or int(model[M_WIDTH]) != max(sizes):
        raise ValueError(f"model vector header (F={f}, MLP at {off}, width {int(model[M_WIDTH])}) "
                         f"does not match its MLP sizes {list(sizes)}")
    head = int(model[M_HEAD])
    end = off + mlp_size(sizes) + (ALPHA_TAIL if head == HEAD_ALPHA else 0)
    if head not in HEADS.values() or len(model) != end:
        raise ValueError(f"model vector head {head} with {len(model)} values does not match its MLP (ends at {end})")
    return f, sizes, acts, head


def alpha_tail_offset(model: np.ndarray) -> int:
    """Where an alpha head's read-out parameters (``ALPHA_TAIL`` values) start in its model vector."""
    return len(model) - ALPHA_TAIL


def n_classes(model: np.ndarray) -> int:
    """Number of MLP outputs of a model vector (class logits, or an alpha head's mean [and log-variance])."""
    b = first_student(model)
    off = b + int(model[b + M_MLP])
    return int(model[off + 1 + int(model[off])])


def student_state_size(model: np.ndarray) -> int:
    """Length of the per-symbol state vector ``student_step`` needs for ``model``."""
    return FEATURE_STATE_SIZE + 2 * int(model[first_student(model) + M_WIDTH]) + 2 * n_classes(model)


def probs_offset(model: np.ndarray) -> int:
    """Where the K read-out values (probabilities, or alpha_bp [, sd_bp]) sit in a student state."""
    return FEATURE_STATE_SIZE + 2 * int(model[first_student(model) + M_WIDTH]) + n_classes(model)
