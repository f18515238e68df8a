"""The model artifact: one ``.npz`` file carrying a student from training to the daemon, without pickle.

Arrays (all float64, loaded with ``allow_pickle=False``):

- ``mlp``: the student MLP packed as in ``kernels.mlp`` (sizes, activations, weights, biases);
- ``feature_mean``, ``feature_std``: normalisation statistics of the training features (F,);
- ``manifest``: UTF-8 JSON bytes (uint8), the manifest below.

Manifest (schema_version 1). Keys the loader requires and checks:

==================  ========================================================================
schema_version      1
model_id            content hash (sha256 of arrays + manifest without this key, 16 hex chars)
features            ``{"names": [...], "params": {...}, "window": 21}``: must equal what
                    ``kernels.features`` computes
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

``save_artifact`` fills ``schema_version``, ``features``, ``warmup_bars``, ``student`` and ``model_id``
itself; ``load_artifact`` refuses a bad file with ``ArtifactError`` naming the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import CLASSES
from kernels.layout import ACTIVATIONS, FEATURE_NAMES, FEATURE_PARAMS, WINDOW, mlp_size, pack_mlp, unpack_mlp

SCHEMA_VERSION = 1
BYBIT_INTERVALS = ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M")
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
    sizes = [int(np.shape(weights[0])[1])] + [int(np.shape(w)[0]) for w in weights]
    full = {
        "schema_version": SCHEMA_VERSION,
        "classes": list(CLASSES),
        "metrics": {},
        **manifest,
        "features": features_manifest(),
        "warmup_bars": WINDOW,
        "student": {"sizes": sizes, "activations": list(activations)},
    }
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


def _finite_array(arrays, name: str, shape: tuple) -> np.ndarray:
    a = arrays[name]
    _require(a.dtype == np.float64, f"{name}: dtype {a.dtype}, expected float64")
    _require(a.shape == shape, f"{name}: shape {a.shape}, expected {shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    _require(bad.size == 0, f"{name}: {bad.size} non-finite values (first at index {bad[:1].tolist()})")
    return a


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"artifact {path}: cannot read ({e.strerror or e})") from e
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = [k for k in ARRAYS if k not in npz.files]
            _require(not missing, f"artifact {path}: missing arrays {missing}")
            return {k: npz[k] for k in ARRAYS}
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ArtifactError(f"artifact {path}: not a readable .npz (truncated or corrupt: {e})") from e


def _check_policy(policy) -> None:
    _require(isinstance(policy, dict) and isinstance(policy.get("cases"), dict) and policy["cases"],
             "policy: expected an object with a non-empty \"cases\" object")
    for name, case in policy["cases"].items():
        thr = case.get("threshold") if isinstance(case, dict) else None
        hold = case.get("hold_bars") if isinstance(case, dict) else None
        _require(isinstance(thr, (int, float)) and not isinstance(thr, bool) and math.isfinite(thr) and 0 <= thr <= 1,
                 f"policy.cases.{name}.threshold: {thr!r}, expected a number in [0, 1]")
        _require(isinstance(hold, int) and not isinstance(hold, bool) and hold >= 1,
                 f"policy.cases.{name}.hold_bars: {hold!r}, expected a positive integer")


def load_artifact(path) -> Artifact:
    """Read and validate an artifact; raise ``ArtifactError`` naming the first bad field."""
    path = Path(path)
    arrays = _read_arrays(path)
    try:
        manifest = json.loads(arrays["manifest"].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"manifest: not valid JSON ({e})") from e
    _require(isinstance(manifest, dict), "manifest: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    _require(not missing, f"manifest: missing keys {missing}")
    version = manifest["schema_version"]
    _require(version == SCHEMA_VERSION, f"schema_version: {version!r} is not supported (this code reads {SCHEMA_VERSION})")

    feats = manifest["features"]
    _require(isinstance(feats, dict), "features: not an object")
    names = feats.get("names")
    _require(isinstance(names, list), "features.names: missing or not a list")
    unknown = [n for n in names if n not in FEATURE_NAMES]
    _require(not unknown, f"features.names: {unknown} cannot be computed by this code (it computes {list(FEATURE_NAMES)})")
    _require(
        names == list(FEATURE_NAMES),
        f"features.names: artifact lists {len(names)} features {names}, this code computes {list(FEATURE_NAMES)} in that order",
    )
    for name in names:
        got = feats.get("params", {}).get(name)
        _require(got == FEATURE_PARAMS[name], f"features.params.{name}: {got!r}, this code computes {FEATURE_PARAMS[name]!r}")
    _require(feats.get("window") == WINDOW, f"features.window: {feats.get('window')!r}, this code needs {WINDOW}")
    warmup = manifest["warmup_bars"]
    _require(warmup == WINDOW, f"warmup_bars: {warmup!r}, the features of this code warm up in {WINDOW} bars")

    _require(manifest["classes"] == list(CLASSES), f"classes: {manifest['classes']!r}, expected {list(CLASSES)}")
    student = manifest["student"]
    sizes = student.get("sizes") if isinstance(student, dict) else None
    acts = student.get("activations") if isinstance(student, dict) else None
    _require(
        isinstance(sizes, list) and len(sizes) >= 2 and all(isinstance(s, int) and s > 0 for s in sizes),
        f"student.sizes: {sizes!r}, expected a list of positive integers",
    )
    _require(sizes[0] == len(FEATURE_NAMES), f"student.sizes: takes {sizes[0]} inputs, the artifact has {len(FEATURE_NAMES)} features")
    _require(sizes[-1] == len(CLASSES), f"student.sizes: gives {sizes[-1]} outputs, expected {len(CLASSES)} classes")
    _require(
        isinstance(acts, list) and len(acts) == len(sizes) - 1 and all(a in ACTIVATIONS for a in acts),
        f"student.activations: {acts!r}, expected {len(sizes) - 1} of {sorted(ACTIVATIONS)}",
    )

    mlp = _finite_array(arrays, "mlp", (mlp_size(sizes),))
    packed_sizes = [int(s) for s in mlp[1 : len(sizes) + 1]]
    _require(int(mlp[0]) == len(sizes) - 1 and packed_sizes == sizes, f"mlp: packed layer sizes {packed_sizes} differ from student.sizes {sizes}")
    _, _, packed_acts, _ = unpack_mlp(mlp)
    _require(packed_acts == acts, f"mlp: packed activations {packed_acts} differ from student.activations {acts}")
    f = len(FEATURE_NAMES)
    mean = _finite_array(arrays, "feature_mean", (f,))
    std = _finite_array(arrays, "feature_std", (f,))
    _require(bool(np.all(std > 0)), f"feature_std: must be positive, got minimum {std.min()!r}")

    norm = manifest["normalisation"]
    clip = norm.get("clip") if isinstance(norm, dict) else None
    _require(isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0, f"normalisation.clip: {clip!r}, expected a positive number")
    dist = manifest["distillation"]
    _require(isinstance(dist, dict), "distillation: not an object")
    for key in ("temperature", "alpha"):
        val = dist.get(key)
        _require(isinstance(val, (int, float)) and math.isfinite(val), f"distillation.{key}: {val!r}, expected a number")
    data = manifest["data"]
    _require(isinstance(data, dict), "data: not an object")
    _require(data.get("interval") in BYBIT_INTERVALS, f"data.interval: {data.get('interval')!r}, expected one of {list(BYBIT_INTERVALS)}")
    _require(isinstance(data.get("symbols"), list), f"data.symbols: {data.get('symbols')!r}, expected a list")

    if "policy" in manifest:
        _check_policy(manifest["policy"])

    expected_id = _content_hash(mlp, mean, std, manifest)
    _require(manifest["model_id"] == expected_id, f"model_id: {manifest['model_id']!r} does not match the content hash {expected_id!r} (file altered?)")
    return Artifact(mlp=mlp, feature_mean=mean, feature_std=std, manifest=manifest, path=str(path))
