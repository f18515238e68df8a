"""The teacher ensemble as it would have to be served per bar, for the student-vs-teacher ratio.

The training pipeline (``daemon.training``) fits one teacher per walk-forward block and keeps none, so
the bench builds a teacher of the same shape (``teacher_shape``): the defaults of
``daemon.training.config.TrainConfig``, overridden by what ``models/report.json`` records for the shipped
model when it exists (its config, the MLP members' input width, LightGBM's early-stopped round count):

- MLP members (128-64-32, 128-64-32, 256-128-64 by default, ReLU), 3 outputs, He-initialised from a fixed
  seed: their latency does not depend on the weight values, so they are not trained here. Inputs beyond
  the student's features (the real teacher's extra columns) are fed as zeros: their computation is not
  timed, only the wider first layer is;
- a LightGBM multiclass booster of the configured rounds and leaves, trained here on the features of the
  5m samples in ``data/`` (tree depth does depend on data) against forward-return tertile labels;
- the ensemble: mean of the MLP members' softmax, blended with LightGBM's probabilities at the configured
  ``lgbm_weight``.

The real teacher's extra features (long windows, other symbols' moves, time of day) are not computed, so
the student-vs-teacher ratio is a lower bound.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from kernels.features import _push_bar, features_batch, features_step
from kernels.layout import FEATURE_STATE_SIZE, S_FEATURES, mlp_max_width, new_feature_state, pack_mlp
from kernels.mlp import _mlp_forward, _softmax

from .bars import DATA, ROOT, load_csv
from .floors import entry_point

REPORT = ROOT / "models" / "report.json"
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


@dataclass(frozen=True)
class TeacherShape:
    """What the bench's teacher is built like, and where that was read from."""

    hidden: tuple[tuple[int, ...], ...] = ((128, 64, 32), (128, 64, 32), (256, 128, 64))
    n_inputs: int = 9
    rounds: int = 400
    leaves: int = 31
    lr: float = 0.05
    lgbm_weight: float = 0.75
    source: str = "bench defaults"

    def describe(self) -> str:
        """One line for reports."""
        members = ", ".join("-".join(str(w) for w in h) for h in self.hidden)
        return (f"MLP members {members} on {self.n_inputs} inputs; LightGBM {self.rounds} rounds x 3 classes, "
                f"{self.leaves} leaves; LightGBM weight {self.lgbm_weight:g} (from {self.source})")


def teacher_shape(report_path: Path = REPORT, n_features: int = 9) -> TeacherShape:
    """The training configuration's teacher shape, refined by the shipped model's training report."""
    kw: dict = {}
    sources = []
    try:
        from daemon.training.config import TrainConfig

        cfg = TrainConfig()
        kw = {"hidden": tuple(tuple(h) for h in cfg.teacher_hidden), "rounds": cfg.lgbm_rounds,
              "leaves": cfg.lgbm_leaves, "lr": cfg.lgbm_lr, "lgbm_weight": cfg.lgbm_weight}
        sources.append("TrainConfig defaults")
    except (ImportError, AttributeError, TypeError):
        sources.append("bench defaults (training config not importable)")
    if report_path.exists():
        try:
            doc = json.loads(report_path.read_text(encoding="utf-8"))
            c = doc.get("config", {})
            if c.get("teacher_hidden"):
                kw["hidden"] = tuple(tuple(int(w) for w in h) for h in c["teacher_hidden"])
            for key, name in (("lgbm_rounds", "rounds"), ("lgbm_leaves", "leaves"), ("lgbm_lr", "lr"),
                              ("lgbm_weight", "lgbm_weight")):
                if key in c:
                    kw[name] = c[key]
            inputs = doc.get("teacher_inputs", {})
            if inputs:
                kw["n_inputs"] = len(inputs.get("student", [])) + len(inputs.get("extra", []))
            iters = [m["best_iteration"] for f in doc.get("teacher_fits", []) for m in f.get("members", [])
                     if m.get("member") == "lgbm" and m.get("best_iteration")]
            if iters:
                kw["rounds"] = int(statistics.median(iters))
            sources.append(f"{report_path.relative_to(ROOT)}" + (" (LightGBM rounds: median early-stopped count)"
                                                                  if iters else ""))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            sources.append(f"{report_path.name} unreadable")
    kw["n_inputs"] = max(int(kw.get("n_inputs", n_features)), n_features)
    return TeacherShape(**kw, source=" + ".join(sources))


def member_mlps(n_inputs: int, hidden=TeacherShape.hidden, n_classes: int = 3, seed: int = 0):
    """Weights, biases, activations of each MLP member (He-initialised, seeded)."""
    rng = np.random.default_rng(seed)
    members = []
    for h in hidden:
        sizes = [n_inputs, *h, n_classes]
        ws = [rng.standard_normal((sizes[k + 1], sizes[k])) * np.sqrt(2.0 / sizes[k]) for k in range(len(sizes) - 1)]
        bs = [rng.normal(0, 0.01, sizes[k + 1]) for k in range(len(sizes) - 1)]
        members.append((ws, bs, ["relu"] * len(h) + ["linear"]))
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


def train_lgbm(x: np.ndarray, y: np.ndarray, shape: TeacherShape, seed: int = 0):
    """A LightGBM multiclass booster of the training config's shape (all rounds kept, no early stop).

    One thread: OpenMP's spinning threads slow to a crawl on a 2-core machine others are using.
    """
    import lightgbm as lgb

    params = {
        "objective": "multiclass", "num_class": 3, "learning_rate": shape.lr, "num_leaves": shape.leaves,
        "min_data_in_leaf": 20, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
        "lambda_l2": 1.0, "num_threads": 1, "seed": seed, "verbose": -1, "deterministic": True,
        "force_row_wise": True,
    }
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=shape.rounds)


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
        # _mlp_forward overwrites its scratch, so each member re-standardises into it; inputs past the
        # student's features stand for the real teacher's extra columns (zeros: only their cost is kept).
        off = int(packed[E_HEADER + j])
        for q in range(f):
            z = (state[S_FEATURES + q] - packed[mean_at + q]) * packed[mean_at + f + q]
            state[s0 + q] = min(max(z, -clip), clip)
        for q in range(f, int(packed[off + 1])):
            state[s0 + q] = 0.0
        _mlp_forward(packed, off, state, s0, state, li)
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

    def __init__(self, members, booster, mean: np.ndarray, inv_std: np.ndarray, clip: float,
                 shape: TeacherShape | None = None):
        self.members = members
        self.booster = booster
        self.shape = shape or TeacherShape(n_inputs=int(np.shape(members[0][0][0])[1]))
        self.lgbm_weight = self.shape.lgbm_weight
        self.n_pad = int(np.shape(members[0][0][0])[1]) - len(mean)
        self.mean, self.inv_std, self.clip = mean, inv_std, clip
        self.packed = pack_ensemble(members, mean, inv_std, clip)
        k = int(self.packed[E_K])
        f = len(mean)
        self.state = np.zeros(ensemble_state_size(self.packed))
        self.mlp_probs = self.state[len(self.state) - k :]
        self.x = self.state[S_FEATURES : S_FEATURES + f].reshape(1, f)
        self.fstate = new_feature_state()
        self.fx = self.fstate[S_FEATURES : S_FEATURES + f].reshape(1, f)
        self.np_layers = [[(np.ascontiguousarray(w), b, a == "relu") for w, b, a in zip(*m, strict=True)]
                          for m in members]
        self.probs = np.zeros(k)

    @classmethod
    def build(cls, mean: np.ndarray, inv_std: np.ndarray, clip: float, shape: TeacherShape | None = None,
              seed: int = 0) -> Teacher:
        """Members of the training config's shape; LightGBM trained on the ``data/`` samples."""
        shape = shape or teacher_shape(n_features=len(mean))
        booster = None
        if lightgbm_available() is None:
            x, y = teacher_training_rows()
            booster = train_lgbm(x, y, shape, seed)
        return cls(member_mlps(shape.n_inputs, shape.hidden, seed=seed), booster, mean, inv_std, clip, shape)

    def with_own_state(self) -> Teacher:
        """The same members and trees with fresh per-symbol state (one per benchmark contender)."""
        return Teacher(self.members, self.booster, self.mean, self.inv_std, self.clip, self.shape)

    def _numpy_mlps(self, x: np.ndarray) -> np.ndarray:
        z = np.clip((x - self.mean) * self.inv_std, -self.clip, self.clip)
        if self.n_pad:
            z = np.concatenate([z, np.zeros(self.n_pad)])
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
            w = self.lgbm_weight
            p = w * self.booster.predict(self.x, num_threads=1)[0] + (1.0 - w) * p
        self.probs = p
        return int(p.argmax())

    def mlps_reference(self, x: np.ndarray) -> np.ndarray:
        """Mean member probabilities for one feature row, by NumPy (the check on ``teacher_mlps_step``)."""
        return self._numpy_mlps(np.asarray(x, dtype=np.float64))

    def sizes(self) -> dict:
        """Parameters and bytes of each part: MLP float64 weights, LightGBM trees (nodes and model text)."""
        mlp_params = sum(w.size + b.size for ws, bs, _ in self.members for w, b in zip(ws, bs, strict=True))
        out = {"mlp_members": len(self.members), "mlp_params": int(mlp_params), "mlp_bytes": int(mlp_params * 8),
               "shape": self.shape.describe()}
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
