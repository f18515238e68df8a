"""The teacher ensemble as it would have to be served per bar, for the student-vs-teacher ratio.

The training pipeline (``daemon.training``) fits one teacher per walk-forward block and keeps none, so
the bench builds a teacher of the same shape as ``daemon.training.config.TrainConfig``'s defaults:

- MLP members 128-64-32, 128-64-32 and 256-128-64 (ReLU), 3 outputs, He-initialised from a fixed seed:
  their latency does not depend on the weight values, so they are not trained here;
- a LightGBM multiclass booster, 400 rounds, ``num_leaves`` 31, trained here on the features of the 5m
  samples in ``data/`` (tree depth does depend on data) against forward-return tertile labels;
- the ensemble: mean of the MLP members' softmax, blended 50/50 with LightGBM's probabilities.

Its input is the student's 9 features. The real teacher also reads ~30 extra columns (long windows,
other symbols' moves, time of day) whose computation is not timed here, so the student-vs-teacher ratio
is a lower bound.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.features import (
    FEATURE_STATE_SIZE,
    S_FEATURES,
    _push_bar,
    features_batch,
    features_step,
    new_feature_state,
)
from kernels.mlp import _mlp_forward, _softmax, mlp_max_width, pack_mlp

from .data import DATA, load_csv
from .floors import entry_point

MEMBER_HIDDEN = ((128, 64, 32), (128, 64, 32), (256, 128, 64))
LGBM_ROUNDS = 400
LGBM_LEAVES = 31
LGBM_WEIGHT = 0.5
HORIZON_BARS = 12

_features_step = entry_point(features_step)  # as in onnx_student: no dispatcher on the alternatives' path

# Packed ensemble layout: [n_members, F, K, clip, width, off_1..off_m, mean(F), inv_std(F), member MLPs...]
E_MEMBERS, E_F, E_K, E_CLIP, E_WIDTH, E_HEADER = 0, 1, 2, 3, 4, 5


def lightgbm_available() -> str | None:
    """None when lightgbm imports; otherwise why not."""
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return "lightgbm is not installed (pip install 'kdsignal[train]')"
    return None


def member_mlps(n_features: int, n_classes: int = 3, seed: int = 0):
    """Weights, biases, activations of each MLP member (He-initialised, seeded)."""
    rng = np.random.default_rng(seed)
    members = []
    for hidden in MEMBER_HIDDEN:
        sizes = [n_features, *hidden, n_classes]
        ws = [rng.standard_normal((sizes[k + 1], sizes[k])) * np.sqrt(2.0 / sizes[k]) for k in range(len(sizes) - 1)]
        bs = [rng.normal(0, 0.01, sizes[k + 1]) for k in range(len(sizes) - 1)]
        members.append((ws, bs, ["relu"] * len(hidden) + ["linear"]))
    return members


def teacher_training_rows() -> tuple[np.ndarray, np.ndarray]:
    """Features (n, F) of every 5m sample in ``data/`` and tertile labels of the 12-bar forward return."""
    xs, fwds = [], []
    for f in sorted(DATA.glob("*-5m.csv")):
        rows = load_csv(f)
        x = features_batch(*(rows[:, i] for i in range(1, 6)))
        c = rows[:, 4]
        fwd = np.full(len(c), np.nan)
        fwd[:-HORIZON_BARS] = np.log(c[HORIZON_BARS:] / c[:-HORIZON_BARS])
        ok = np.all(np.isfinite(x), axis=1) & np.isfinite(fwd)
        xs.append(x[ok])
        fwds.append(fwd[ok])
    x, fwd = np.concatenate(xs), np.concatenate(fwds)
    lo, hi = np.quantile(fwd, [1 / 3, 2 / 3])
    y = np.where(fwd < lo, 0, np.where(fwd > hi, 2, 1))
    return x, y


def train_lgbm(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """A LightGBM multiclass booster of the training config's shape (all rounds kept, no early stop).

    One thread: OpenMP's spinning threads slow to a crawl on a 2-core machine others are using.
    """
    import lightgbm as lgb

    params = {
        "objective": "multiclass", "num_class": 3, "learning_rate": 0.05, "num_leaves": LGBM_LEAVES,
        "min_data_in_leaf": 20, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
        "lambda_l2": 1.0, "num_threads": 1, "seed": seed, "verbose": -1, "deterministic": True,
        "force_row_wise": True,
    }
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=LGBM_ROUNDS)


def pack_ensemble(members, mean: np.ndarray, inv_std: np.ndarray, clip: float) -> np.ndarray:
    """Pack normalisation and every member MLP into one vector for ``teacher_mlps_step``."""
    mlps = [pack_mlp(*m) for m in members]
    f = len(mean)
    k = int(mlps[0][int(mlps[0][0]) + 1])
    width = max(mlp_max_width(p) for p in mlps)
    head = E_HEADER + len(mlps) + 2 * f
    offsets, pos = [], head
    for p in mlps:
        offsets.append(pos)
        pos += len(p)
    return np.concatenate([np.array([len(mlps), f, k, clip, width, *offsets], np.float64), mean, inv_std, *mlps])


def ensemble_state_size(packed: np.ndarray) -> int:
    """Feature state plus the scratch ``teacher_mlps_step`` needs: 2W, logits K, member probs K, mean K."""
    return FEATURE_STATE_SIZE + 2 * int(packed[E_WIDTH]) + 3 * int(packed[E_K])


@njit("int64(float64[::1], float64[::1], float64, float64, float64, float64, float64)", cache=True)
def teacher_mlps_step(state, packed, o, h, l, c, v):
    """Feature step, standardise, every member MLP, softmax each, average: one call, as the student does.

    The mean probabilities land at the end of ``state`` (last K slots). Returns the argmax or -1 warming.
    """
    if _push_bar(state, o, h, l, c, v) <= 0:
        return -1
    m = int(packed[E_MEMBERS])
    f = int(packed[E_F])
    k = int(packed[E_K])
    clip = packed[E_CLIP]
    w2 = 2 * int(packed[E_WIDTH])
    s0 = FEATURE_STATE_SIZE
    li = s0 + w2
    pi = li + k
    mi = pi + k
    mean_at = E_HEADER + m
    for i in range(k):
        state[mi + i] = 0.0
    for j in range(m):
        # _mlp_forward overwrites its scratch, so each member re-standardises into it.
        for q in range(f):
            z = (state[S_FEATURES + q] - packed[mean_at + q]) * packed[mean_at + f + q]
            state[s0 + q] = min(max(z, -clip), clip)
        _mlp_forward(packed, int(packed[E_HEADER + j]), state, s0, state, li)
        _softmax(state, li, k, 1.0, state, pi)
        for i in range(k):
            state[mi + i] += state[pi + i] / m
    best = 0
    for i in range(1, k):
        if state[mi + i] > state[mi + best]:
            best = i
    return best


class Teacher:
    """The ensemble with per-bar entry points for each way of serving it (see the module docstring)."""

    def __init__(self, members, booster, mean: np.ndarray, inv_std: np.ndarray, clip: float):
        self.members = members
        self.booster = booster
        self.mean, self.inv_std, self.clip = mean, inv_std, clip
        self.packed = pack_ensemble(members, mean, inv_std, clip)
        k = int(self.packed[E_K])
        f = len(mean)
        self.state = np.zeros(ensemble_state_size(self.packed))
        self.mlp_probs = self.state[len(self.state) - k :]
        self.x = self.state[S_FEATURES : S_FEATURES + f].reshape(1, f)
        self.fstate = new_feature_state()
        self.fx = self.fstate[S_FEATURES : S_FEATURES + f].reshape(1, f)
        self.np_layers = [[(np.ascontiguousarray(w), b, a == "relu") for w, b, a in zip(*m)] for m in members]
        self.probs = np.zeros(k)

    @classmethod
    def build(cls, mean: np.ndarray, inv_std: np.ndarray, clip: float, seed: int = 0) -> Teacher:
        """Members of the training config's shape; LightGBM trained on the ``data/`` samples."""
        booster = None
        if lightgbm_available() is None:
            x, y = teacher_training_rows()
            booster = train_lgbm(x, y, seed)
        return cls(member_mlps(len(mean), seed=seed), booster, mean, inv_std, clip)

    def _numpy_mlps(self, x: np.ndarray) -> np.ndarray:
        z = np.clip((x - self.mean) * self.inv_std, -self.clip, self.clip)
        total = 0.0
        for layers in self.np_layers:
            a = z
            for w, b, relu in layers:
                a = w @ a + b
                if relu:
                    np.maximum(a, 0.0, out=a)
            e = np.exp(a - a.max())
            total = total + e / e.sum()
        return total / len(self.np_layers)

    def mlps_numba(self, o, h, l, c, v) -> int:
        """Features and all MLP members in one numba call."""
        return teacher_mlps_step(self.state, self.packed, o, h, l, c, v)

    def mlps_numpy(self, o, h, l, c, v) -> int:
        """Numba feature step, then the MLP members in NumPy."""
        if _features_step(self.fstate, o, h, l, c, v) <= 0:
            return -1
        self.probs = self._numpy_mlps(self.fx[0])
        return int(self.probs.argmax())

    def lgbm(self, o, h, l, c, v) -> int:
        """Numba feature step, then LightGBM's own ``predict`` on the one row (single thread)."""
        if _features_step(self.fstate, o, h, l, c, v) <= 0:
            return -1
        self.probs = self.booster.predict(self.fx, num_threads=1)[0]
        return int(self.probs.argmax())

    def ensemble(self, o, h, l, c, v) -> int:
        """The whole teacher per bar, served the fastest way: numba MLPs + LightGBM predict, blended."""
        if teacher_mlps_step(self.state, self.packed, o, h, l, c, v) < 0:
            return -1
        p = self.mlp_probs
        if self.booster is not None:
            p = LGBM_WEIGHT * self.booster.predict(self.x, num_threads=1)[0] + (1.0 - LGBM_WEIGHT) * p
        self.probs = p
        return int(p.argmax())

    def mlps_reference(self, x: np.ndarray) -> np.ndarray:
        """Mean member probabilities for one feature row, by NumPy (the check on ``teacher_mlps_step``)."""
        return self._numpy_mlps(np.asarray(x, dtype=np.float64))

    def sizes(self) -> dict:
        """Parameters and bytes of each part: MLP float64 weights, LightGBM trees (nodes and model text)."""
        mlp_params = sum(w.size + b.size for ws, bs, _ in self.members for w, b in zip(ws, bs))
        out = {"mlp_members": len(self.members), "mlp_params": int(mlp_params), "mlp_bytes": int(mlp_params * 8)}
        if self.booster is not None:
            # The model text has one "num_leaves=" line per tree (dump_model's JSON takes seconds to build).
            text = self.booster.model_to_string()
            leaves = [int(line.split("=", 1)[1]) for line in text.splitlines() if line.startswith("num_leaves=")]
            n_leaves = sum(leaves)
            out.update({
                "lgbm_trees": len(leaves),
                "lgbm_leaves": n_leaves,
                # Each tree: num_leaves leaf values + (num_leaves - 1) splits (feature, threshold, two children).
                "lgbm_params": n_leaves + 4 * (n_leaves - len(leaves)),
                "lgbm_bytes": len(text.encode()),
            })
        return out
