"""The model artifact: one ``.npz`` file carrying a student from training to the daemon, without pickle.

Arrays (all float64, loaded with ``allow_pickle=False``):

- ``mlp``: the student MLP packed as ``kernels.layout.pack_mlp`` does (sizes, activations, weights, biases);
- ``feature_mean``, ``feature_std``: normalisation statistics of the training features (F,);
- ``manifest``: UTF-8 JSON bytes (uint8), the manifest below.

Manifest (schema_version 1). Keys the loader requires and checks:

==================  ========================================================================
schema_version      1
model_id            content hash (sha256 of arrays + manifest without this key, 16 hex chars)
features            ``{"names": [...], "params": {...}, "window": int}``: must equal what
                    ``kernels.features`` computes (``kernels.layout.WINDOW`` bars)
warmup_bars         closed bars before the first signal (= features.window)
normalisation       ``{"clip": float}``: ``|z|`` bound after standardising
student             ``{"sizes": [F, ..., K], "activations": [...]}``: must match ``mlp``
classes             class order of the logits: ``["sell", "hold", "buy"]``
distillation        ``{"temperature": float, "alpha": float}``
labels              label parameters (horizon, band, fees: free-form, recorded for the reader)
data                ``{"symbols": [...], "interval": "5", "start_ms": int, "end_ms": int}``
metrics             evaluation summary (free-form)
==================  ========================================================================

Optional and checked when present: ``policy``, the decision policy chosen on development data,
``{"cases": {name: {"threshold": number in [0, 1], "hold_bars": int >= 1, ...}}, ...}``.

Optional: ``head``, ``"classes"`` (the default, what artifacts without the key carry: ``student.sizes``
ends in the 3 classes) or ``"alpha"``: the student predicts the forward return, and the manifest then
carries ``alpha``::

    {"horizon_bars": h, "outputs": ["mean"] or ["mean", "log_var"],
     "policy": {"buy_above_bp": number or null, "sell_below_bp": number or null, ...}, ...}

``outputs`` names the MLP's outputs (in units of ``rvol_20 * sqrt(h)``, see ``kernels.layout``); the
policy's thresholds decide the served class from ``alpha_bp`` (null: never on that side), the rest of
the policy records how they were chosen.

Optional: ``router``, a student per market regime (``kernels.layout.pack_router``, written by
``save_router_artifact``)::

    {"regimes": 6, "vol_feature": "rvol_100", "trend_feature": "ret_20", "vol_edges": [lo, hi], ...}

``mlp`` then holds the six students' packed MLPs one after another (each of ``student.sizes``), and
``feature_mean`` / ``feature_std`` their six normalisations (6 x F values); the head is ``classes``. Each
bar is served by the student of its regime ``2 * ((vol > lo) + (vol > hi)) + (trend > 0)``, computed from
the bar's own features in the step kernel. Without the key an artifact is one student, as before.

``save_artifact`` fills ``schema_version``, ``features``, ``warmup_bars``, ``student`` and ``model_id``
itself; ``load_artifact`` refuses a bad file with ``ArtifactError`` naming the field.

The loader treats the file as hostile: its size, the number of zip members, the manifest's size and JSON
nesting depth are capped, and every array's dtype and shape are read from its ``.npy`` header and checked
against what the manifest implies *before* any of its data is decompressed (only exactly that many bytes
are then inflated; a member with more is refused). Once the numbers are read, the student is run in NumPy
on the stored normalisation statistics and on extreme but valid inputs (every feature at ``+clip``, at
``-clip``, alternating), and an interval bound over the whole input box ``[-clip, clip]^F`` must stay
finite: weights that are finite but huge would make the served probabilities NaN, so they are refused.
Every failure is an ``ArtifactError`` (exit 78 at start, the old model kept on reload), never a traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.core.intervals import INTERVAL_MS
from kernels import CLASSES
from kernels.layout import (
    ACTIVATIONS,
    FEATURE_NAMES,
    FEATURE_PARAMS,
    HEADS,
    N_VOL_EDGES,
    ROUTER_REGIMES,
    WINDOW,
    bp_per_unit,
    mlp_size,
    pack_mlp,
    unpack_mlp,
)

SCHEMA_VERSION = 1
ROUTER_VOL, ROUTER_TREND = "rvol_100", "ret_20"  # the features a router's regime is read from
# Caps for a hostile file, far above the shipped model's figures (a few kB, under 1,000 weights).
MAX_FILE_BYTES = 16 << 20
MAX_MEMBERS = 16
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_MLP_VALUES = 1 << 20
MAX_LAYERS = 16
MAX_HORIZON_BARS = 10_000
ALPHA_OUTPUTS = (["mean"], ["mean", "log_var"])
_MAX_NPY_HEADER = 10_000
_MAX_DIRECTORY_BYTES = 64 << 10
# A logit bound beyond this is refused: well inside float64's range, so no rounding can overflow.
MAX_LOGIT_BOUND = 1e300
ARRAYS = ("mlp", "feature_mean", "feature_std", "manifest")
REQUIRED_KEYS = (
    "schema_version",
    "model_id",
    "features",
    "warmup_bars",
    "normalisation",
    "student",
    "classes",
    "distillation",
    "labels",
    "data",
    "metrics",
)


class ArtifactError(ValueError):
    """The artifact is unreadable or inconsistent; the message names the offending field."""


@dataclass(frozen=True)
class Artifact:
    """A validated artifact: packed student MLP, normalisation statistics and manifest."""

    mlp: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    manifest: dict
    path: str

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def interval(self) -> str:
        return self.manifest["data"]["interval"]

    @property
    def head(self) -> str:
        """``"classes"`` or ``"alpha"`` (validated)."""
        return self.manifest.get("head", "classes")

    @property
    def regimes(self) -> int:
        """Students in the artifact: ``kernels.layout.ROUTER_REGIMES`` for a router, else 1 (validated)."""
        return int(self.manifest["router"]["regimes"]) if "router" in self.manifest else 1

    def alpha_readout(self) -> tuple[float, float, float] | None:
        """An alpha head's (bp per unit, buy above bp, sell below bp) for ``kernels.layout.pack_student``."""
        if self.head != "alpha":
            return None
        alpha = self.manifest["alpha"]
        buy, sell = alpha["policy"]["buy_above_bp"], alpha["policy"]["sell_below_bp"]
        return (bp_per_unit(alpha["horizon_bars"]), math.inf if buy is None else float(buy),
                -math.inf if sell is None else float(sell))


def _content_hash(mlp: np.ndarray, mean: np.ndarray, std: np.ndarray, manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "model_id"}
    h = hashlib.sha256()
    for a in (mlp, mean, std):
        h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()[:16]


def features_manifest() -> dict:
    """The ``features`` manifest entry describing what ``kernels.features`` computes."""
    return {"names": list(FEATURE_NAMES), "params": FEATURE_PARAMS, "window": WINDOW}


def save_artifact(
    path,
    *,
    weights,
    biases,
    activations,
    feature_mean,
    feature_std,
    manifest: dict,
) -> str:
    """Write a student artifact to ``path`` (atomically) and return its model id.

    ``weights``: per-layer ``(out, in)`` arrays; ``manifest`` supplies ``normalisation``,
    ``distillation``, ``labels``, ``data`` and ``metrics``; the structural keys are filled in here.
    The written file is loaded back and validated before this returns.
    """
    mlp = pack_mlp(weights, biases, activations)
    mean = np.asarray(feature_mean, dtype=np.float64)
    std = np.asarray(feature_std, dtype=np.float64)
    return _write(path, mlp, mean, std, _structural(manifest, weights, activations))


def save_router_artifact(path, *, students, activations, vol_edges, manifest: dict) -> str:
    """Write a router artifact (one classes student per regime, ``kernels.layout.pack_router``); return its id.

    ``students``: ``ROUTER_REGIMES`` tuples ``(weights, biases, feature_mean, feature_std)`` of one
    architecture, in regime order; ``vol_edges``: the two ascending ``rvol_100`` edges. Validated on
    load like any artifact before this returns.
    """
    mlp = np.concatenate([pack_mlp(w, b, activations) for w, b, _, _ in students])
    mean = np.concatenate([np.asarray(m, dtype=np.float64) for _, _, m, _ in students])
    std = np.concatenate([np.asarray(sd, dtype=np.float64) for _, _, _, sd in students])
    full = _structural(manifest, students[0][0], activations)
    full["router"] = {"regimes": len(students), "vol_feature": ROUTER_VOL, "trend_feature": ROUTER_TREND,
                      "vol_edges": [float(e) for e in vol_edges]}
    return _write(path, mlp, mean, std, full)


def _structural(manifest: dict, weights, activations) -> dict:
    # The keys every writer fills in itself around the caller's manifest (the caller's cannot override them).
    sizes = [int(np.shape(weights[0])[1])] + [int(np.shape(w)[0]) for w in weights]
    return {
        "schema_version": SCHEMA_VERSION,
        "classes": list(CLASSES),
        "metrics": {},
        **manifest,
        "features": features_manifest(),
        "warmup_bars": WINDOW,
        "student": {"sizes": sizes, "activations": list(activations)},
    }


def _write(path, mlp: np.ndarray, mean: np.ndarray, std: np.ndarray, full: dict) -> str:
    full["model_id"] = _content_hash(mlp, mean, std, full)
    manifest_bytes = np.frombuffer(json.dumps(full, sort_keys=True, indent=1).encode(), dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, mlp=mlp, feature_mean=mean, feature_std=std, manifest=manifest_bytes)
    load_artifact(tmp)
    os.replace(tmp, path)
    return full["model_id"]


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ArtifactError(message)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_values(a: np.ndarray, name: str) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(a))
    _require(bad.size == 0, f"{name}: {bad.size} non-finite values (first at index {bad[:1].tolist()})")
    return a


def _zip_members(raw: bytes, path: Path) -> None:
    # The member count from the end-of-central-directory record, before zipfile builds an object per member.
    at = raw.rfind(b"PK\x05\x06", max(0, len(raw) - 65_557))
    _require(at >= 0 and len(raw) >= at + 22,
             f"artifact {path}: not a readable .npz (truncated or corrupt: no zip directory)")
    count = int.from_bytes(raw[at + 10 : at + 12], "little")
    _require(count <= MAX_MEMBERS, f"artifact {path}: {count} zip members, at most {MAX_MEMBERS} are read")
    # zipfile parses the whole central directory whatever the count says: its size is capped too.
    directory = int.from_bytes(raw[at + 12 : at + 16], "little")
    _require(directory <= _MAX_DIRECTORY_BYTES,
             f"artifact {path}: a zip directory of {directory} bytes, at most {_MAX_DIRECTORY_BYTES} are read")


def _npy(zf: zipfile.ZipFile, name: str, dtype: np.dtype, length: int | None, cap: int) -> np.ndarray:
    """Read member ``name``.npy: its header must say 1-D ``dtype`` of ``length`` values (any length up to
    ``cap`` when None) before any data is inflated; then exactly that many bytes are, and anything after
    them refuses the member."""
    info = zf.getinfo(name + ".npy")
    _require(info.file_size <= cap * dtype.itemsize + _MAX_NPY_HEADER,
             f"{name}: {info.file_size} bytes declared, at most {cap} values are read")
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, got = np.lib.format.read_array_header_1_0(fp, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, _, got = np.lib.format.read_array_header_2_0(fp, max_header_size=_MAX_NPY_HEADER)
        else:
            raise ArtifactError(f"{name}: .npy format version {version} is not read")
        _require(got == dtype and not got.hasobject, f"{name}: dtype {got}, expected {dtype}")
        size = math.prod(shape)
        want = f"({length},)" if length is not None else f"at most {cap} values"
        _require(len(shape) == 1 and 0 <= size <= cap, f"{name}: shape {shape} ({size} values), expected {want}")
        _require(length is None or shape == (length,), f"{name}: shape {shape}, expected {want}")
        nbytes = size * dtype.itemsize
        data = fp.read(nbytes)
        _require(len(data) == nbytes, f"{name}: {len(data)} bytes of data, its header promises {nbytes} (truncated)")
        _require(fp.read(1) == b"", f"{name}: more data than its header's shape {shape} (a padded or bomb member)")
    return np.frombuffer(data, dtype=dtype).copy()


def _json_depth(text: bytes) -> int:
    # Depth of [ and { outside strings, in O(n) without recursion (json.loads recurses per level).
    bare = np.frombuffer(re.sub(rb'"(?:[^"\\]|\\.)*"', b"", text), dtype=np.uint8)
    if bare.size == 0:
        return 0
    step = np.isin(bare, (0x5B, 0x7B)).astype(np.int64) - np.isin(bare, (0x5D, 0x7D))
    return int(np.cumsum(step).max())


def _table(parent: dict, key: str, where: str | None = None) -> dict:
    value = parent.get(key)
    _require(isinstance(value, dict), f"{where or key}: {type(value).__name__}, expected an object")
    return value


def _check_policy(policy) -> None:
    _require(isinstance(policy, dict) and isinstance(policy.get("cases"), dict) and policy["cases"],
             "policy: expected an object with a non-empty \"cases\" object")
    for name, case in policy["cases"].items():
        _require(isinstance(name, str) and len(name) <= 64,
                 f"policy.cases: a case name {name!r:.40}, expected a short string")
        thr = case.get("threshold") if isinstance(case, dict) else None
        hold = case.get("hold_bars") if isinstance(case, dict) else None
        _require(isinstance(thr, (int, float)) and not isinstance(thr, bool) and math.isfinite(thr) and 0 <= thr <= 1,
                 f"policy.cases.{name}.threshold: {thr!r:.40}, expected a number in [0, 1]")
        _require(isinstance(hold, int) and not isinstance(hold, bool) and hold >= 1,
                 f"policy.cases.{name}.hold_bars: {hold!r:.40}, expected a positive integer")


def _check_manifest(manifest: object) -> tuple[list[int], list[str], float]:
    """Validate the manifest's structure; return the student's sizes, activations and clip."""
    _require(isinstance(manifest, dict), f"manifest: {type(manifest).__name__}, expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    _require(not missing, f"manifest: missing keys {missing}")
    version = manifest["schema_version"]
    _require(type(version) is int and version == SCHEMA_VERSION,
             f"schema_version: {version!r:.40} is not supported (this code reads {SCHEMA_VERSION})")
    _require(isinstance(manifest["model_id"], str), f"model_id: {manifest['model_id']!r:.40}, expected a string")

    feats = _table(manifest, "features")
    names = feats.get("names")
    _require(isinstance(names, list) and all(isinstance(n, str) for n in names),
             "features.names: missing or not a list of strings")
    unknown = [n for n in names if n not in FEATURE_NAMES]
    _require(not unknown,
             f"features.names: {unknown[:20]} cannot be computed by this code (it computes {list(FEATURE_NAMES)})")
    _require(
        names == list(FEATURE_NAMES),
        f"features.names: artifact lists {len(names)} features {names[:20]}, "
        f"this code computes {list(FEATURE_NAMES)} in that order",
    )
    params = _table(feats, "params", "features.params")
    for name in names:
        got = params.get(name)
        _require(got == FEATURE_PARAMS[name],
                 f"features.params.{name}: {got!r:.80}, this code computes {FEATURE_PARAMS[name]!r}")
    _require(feats.get("window") == WINDOW, f"features.window: {feats.get('window')!r:.40}, this code needs {WINDOW}")
    warmup = manifest["warmup_bars"]
    _require(warmup == WINDOW and not isinstance(warmup, bool),
             f"warmup_bars: {warmup!r:.40}, the features of this code warm up in {WINDOW} bars")

    _require(manifest["classes"] == list(CLASSES), f"classes: {manifest['classes']!r:.80}, expected {list(CLASSES)}")
    student = _table(manifest, "student")
    sizes = student.get("sizes")
    acts = student.get("activations")
    _require(
        isinstance(sizes, list) and 2 <= len(sizes) <= MAX_LAYERS + 1
        and all(type(s) is int and 0 < s <= MAX_MLP_VALUES for s in sizes),
        f"student.sizes: {sizes!r:.80}, expected 2 to {MAX_LAYERS + 1} positive integers",
    )
    _require(sizes[0] == len(FEATURE_NAMES),
             f"student.sizes: takes {sizes[0]} inputs, the artifact has {len(FEATURE_NAMES)} features")
    head = manifest.get("head", "classes")
    _require(head in HEADS, f"head: {head!r:.40}, expected one of {list(HEADS)}")
    if head == "classes":
        _require(sizes[-1] == len(CLASSES),
                 f"student.sizes: gives {sizes[-1]} outputs, expected {len(CLASSES)} classes")
    else:
        _check_alpha(_table(manifest, "alpha"), sizes[-1])
    _require(mlp_size(sizes) <= MAX_MLP_VALUES,
             f"student.sizes: {sizes} need {mlp_size(sizes)} packed values, at most {MAX_MLP_VALUES} are read")
    _require(
        isinstance(acts, list) and len(acts) == len(sizes) - 1
        and all(isinstance(a, str) and a in ACTIVATIONS for a in acts),
        f"student.activations: {acts!r:.80}, expected {len(sizes) - 1} of {sorted(ACTIVATIONS)}",
    )

    norm = _table(manifest, "normalisation")
    clip = norm.get("clip")
    _require(_number(clip) and clip > 0, f"normalisation.clip: {clip!r:.40}, expected a positive number")
    dist = _table(manifest, "distillation")
    for key in ("temperature", "alpha"):
        val = dist.get(key)
        _require(_number(val), f"distillation.{key}: {val!r:.40}, expected a number")
    data = _table(manifest, "data")
    interval = data.get("interval")
    _require(isinstance(interval, str) and interval in INTERVAL_MS,
             f"data.interval: {interval!r:.40}, expected one of {list(INTERVAL_MS)}")
    _require(isinstance(data.get("symbols"), list), f"data.symbols: {data.get('symbols')!r:.80}, expected a list")
    return sizes, acts, float(clip)


def _check_router(manifest: dict) -> int:
    """Validate the optional ``router`` entry; return the number of students (1 without it)."""
    if "router" not in manifest:
        return 1
    r = _table(manifest, "router")
    _require(r.get("regimes") == ROUTER_REGIMES and type(r.get("regimes")) is int,
             f"router.regimes: {r.get('regimes')!r:.40}, expected {ROUTER_REGIMES}")
    _require(r.get("vol_feature") == ROUTER_VOL, f"router.vol_feature: {r.get('vol_feature')!r:.40}, "
             f"this code routes on {ROUTER_VOL!r}")
    _require(r.get("trend_feature") == ROUTER_TREND, f"router.trend_feature: {r.get('trend_feature')!r:.40}, "
             f"this code routes on {ROUTER_TREND!r}")
    edges = r.get("vol_edges")
    _require(isinstance(edges, list) and len(edges) == N_VOL_EDGES and all(_number(e) for e in edges)
             and edges[0] <= edges[1],
             f"router.vol_edges: {edges!r:.80}, expected {N_VOL_EDGES} finite numbers in ascending order")
    _require(manifest.get("head", "classes") == "classes",
             f"router: head {manifest.get('head')!r:.40}, a router serves the classes head only")
    return ROUTER_REGIMES


def _check_alpha(alpha: dict, n_outputs: int) -> None:
    h = alpha.get("horizon_bars")
    _require(type(h) is int and 1 <= h <= MAX_HORIZON_BARS,
             f"alpha.horizon_bars: {h!r:.40}, expected an integer in [1, {MAX_HORIZON_BARS}]")
    outputs = alpha.get("outputs")
    _require(outputs in ALPHA_OUTPUTS, f"alpha.outputs: {outputs!r:.80}, expected one of {list(ALPHA_OUTPUTS)}")
    _require(n_outputs == len(outputs), f"student.sizes: gives {n_outputs} outputs, alpha.outputs names {len(outputs)}")
    policy = _table(alpha, "policy", "alpha.policy")
    for key in ("buy_above_bp", "sell_below_bp"):
        _require(key in policy and (policy[key] is None or _number(policy[key])),
                 f"alpha.policy.{key}: {policy.get(key)!r:.40}, expected a number or null (never)")
    buy, sell = policy["buy_above_bp"], policy["sell_below_bp"]
    _require(buy is None or sell is None or sell <= buy,
             f"alpha.policy: sell_below_bp {sell!r} is above buy_above_bp {buy!r}")


def _check_packed(mlp: np.ndarray, sizes: list[int], acts: list[str], name: str) -> None:
    packed_sizes = [int(s) for s in mlp[1 : len(sizes) + 1]]
    _require(int(mlp[0]) == len(sizes) - 1 and packed_sizes == sizes,
             f"{name}: packed layer sizes {packed_sizes} differ from student.sizes {sizes}")
    codes = mlp[len(sizes) + 1 : 2 * len(sizes)]
    _require(bool(np.all(np.isin(codes, list(ACTIVATIONS.values())))),
             f"{name}: packed activation codes {codes.tolist()} are not all known")
    _, _, packed_acts, _ = unpack_mlp(mlp)
    _require(packed_acts == acts, f"{name}: packed activations {packed_acts} differ from student.activations {acts}")


def _forward(weights, biases, acts, z: np.ndarray) -> np.ndarray:
    # The student's logits for standardised inputs z (n, F), in plain NumPy (the kernels' arithmetic).
    h = z
    for w, b, act in zip(weights, biases, acts, strict=True):
        h = h @ w.T + b
        if act == "relu":
            h = np.maximum(h, 0.0)
        elif act == "tanh":
            h = np.tanh(h)
    return h


def _check_outputs(mlp: np.ndarray, clip: float, name: str = "student") -> None:
    """Refuse a student that can give a non-finite output for some valid input."""
    weights, biases, acts, _ = unpack_mlp(mlp)
    f = weights[0].shape[1]
    alternating = np.where(np.arange(f) % 2 == 0, clip, -clip)
    probes = {
        "the stored feature means": np.zeros(f),
        "every feature at +clip": np.full(f, clip),
        "every feature at -clip": np.full(f, -clip),
        "features alternating +clip/-clip": alternating,
        "features alternating -clip/+clip": -alternating,
    }
    with np.errstate(all="ignore"):
        logits = _forward(weights, biases, acts, np.stack(list(probes.values())))
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        for i, what in enumerate(probes):
            _require(bool(np.all(np.isfinite(logits[i])) and np.all(np.isfinite(probs[i]))),
                     f"{name}: non-finite output for {what} (logits {logits[i].tolist()})")
        # Interval bound over the whole box: |a_k+1| <= |W_k| |a_k| + |b_k|; tanh caps at 1. This also
        # bounds every partial sum the kernel forms, so no valid input can overflow a layer.
        bound = np.full(f, clip)
        for w, b, act in zip(weights, biases, acts, strict=True):
            bound = np.abs(w) @ bound + np.abs(b)
            if act == "tanh":
                bound = np.minimum(bound, 1.0)
            top = float(np.max(bound))
            _require(math.isfinite(top) and top <= MAX_LOGIT_BOUND,
                     f"{name}: weights too large: a layer's output can reach {top:.3g} for inputs within "
                     f"+-clip ({clip:g}); at most {MAX_LOGIT_BOUND:g} is served")


def _load(path: Path) -> Artifact:
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise ArtifactError(f"artifact {path}: cannot read ({e.strerror or e})") from e
    _require(size <= MAX_FILE_BYTES, f"artifact {path}: {size} bytes, at most {MAX_FILE_BYTES} are read")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(size + 1)  # + 1: a file that grew since stat() is noticed
    except OSError as e:
        raise ArtifactError(f"artifact {path}: cannot read ({e.strerror or e})") from e
    _require(len(raw) <= size, f"artifact {path}: grew while being read (being written?)")
    _zip_members(raw, path)
    f = len(FEATURE_NAMES)
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            present = {n.removesuffix(".npy") for n in zf.namelist()}
            missing = [k for k in ARRAYS if k not in present]
            _require(not missing, f"artifact {path}: missing arrays {missing}")
            text = _npy(zf, "manifest", np.dtype(np.uint8), None, MAX_MANIFEST_BYTES).tobytes()
            depth = _json_depth(text)
            _require(depth <= MAX_JSON_DEPTH, f"manifest: JSON nested {depth} deep, at most {MAX_JSON_DEPTH}")
            try:
                manifest = json.loads(text.decode())
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise ArtifactError(f"manifest: not valid JSON ({str(e)[:120]})") from e
            sizes, acts, clip = _check_manifest(manifest)
            n = _check_router(manifest)
            f64 = np.dtype("<f8")
            _require(n * mlp_size(sizes) <= MAX_MLP_VALUES,
                     f"router: {n} students of sizes {sizes} need {n * mlp_size(sizes)} packed values, "
                     f"at most {MAX_MLP_VALUES} are read")
            mlp = _check_values(_npy(zf, "mlp", f64, n * mlp_size(sizes), MAX_MLP_VALUES), "mlp")
            mean = _check_values(_npy(zf, "feature_mean", f64, n * f, n * f), "feature_mean")
            std = _check_values(_npy(zf, "feature_std", f64, n * f, n * f), "feature_std")
    except ArtifactError:
        raise
    # RuntimeError: an encrypted member; NotImplementedError: its compression.
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
            NotImplementedError, RuntimeError) as e:
        raise ArtifactError(f"artifact {path}: not a readable .npz (truncated or corrupt: {str(e)[:160]})") from e

    one = mlp_size(sizes)
    for i in range(n):
        _check_packed(mlp[i * one : (i + 1) * one], sizes, acts, f"mlp (student {i})" if n > 1 else "mlp")
    _require(bool(np.all(std > 0)), f"feature_std: must be positive, got minimum {std.min()!r}")
    _require(bool(np.all(np.isfinite(1.0 / std))), f"feature_std: minimum {std.min()!r} is too small to invert")

    if "policy" in manifest:
        _check_policy(manifest["policy"])

    expected_id = _content_hash(mlp, mean, std, manifest)
    _require(manifest["model_id"] == expected_id,
             f"model_id: {manifest['model_id']!r:.40} does not match the content hash {expected_id!r} (file altered?)")
    for i in range(n):
        _check_outputs(mlp[i * one : (i + 1) * one], clip, f"student {i}" if n > 1 else "student")
    return Artifact(mlp=mlp, feature_mean=mean, feature_std=std, manifest=manifest, path=str(path))


def load_artifact(path) -> Artifact:
    """Read and validate an artifact; raise ``ArtifactError`` naming the first bad field, and nothing else."""
    path = Path(path)
    try:
        with np.errstate(all="ignore"):
            return _load(path)
    except ArtifactError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            MemoryError) as e:  # a check this loader lacks: still a refusal naming the file, never a traceback
        raise ArtifactError(f"artifact {path}: malformed ({type(e).__name__}: {str(e)[:160]})") from e
