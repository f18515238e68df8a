"""The teacher on disk: every member of the final teacher, without pickle, under a manifest checked field by field.

``kdsignal train`` writes the teacher that labelled the lockbox (fitted on every development row, the one
whose soft targets the shipped student learnt last) next to the artifact, in ``<artifact dir>/teacher/``
(``[train] teacher_dir``), so later runs and ``kdsignal bench`` use the real teacher. The folder holds:

- ``manifest.json``: ``format`` ``"kdsignal-teacher"``, ``format_version`` 1, the artifact it belongs to
  (``model_id``, ``artifact``), ``classes``, ``to_class`` (each member output's class), ``inputs``
  (``names``, ``count``: the teacher's feature columns in order), ``ensemble`` (``lgbm_weight`` and each
  member's resulting weight), ``input_transform`` and ``members`` (each with ``name``, ``kind``, ``file``,
  ``bytes``, ``sha256``), ``data`` (the rows the teacher was fitted on);
- ``input_transform.npz``: the MLP members' input map, ``QuantileNormal`` (``knots`` (F, K), ``scores`` (K,))
  or ``Standardizer`` (``mean``, ``std`` (F,), ``clip`` ());
- ``mlp<i>.npz`` (kind ``mlp``): ``w0, b0, w1, b1, ...`` float32, weights ``(out, in)`` as ``nn.MLP`` keeps them;
- ``lgbm.txt`` (kind ``lightgbm``): LightGBM's own text model format, its early-stopped trees only;
- kind ``sequence``: files written and read by ``daemon.training.sequence_net`` (``save_sequence_member`` /
  ``load_sequence_member``); without that module the kind is refused as unknown.

``load_teacher`` treats the folder as hostile: sizes are capped, every file's byte count and sha256 must be
the manifest's before it is parsed, ``.npz`` files are read with ``allow_pickle=False``, shapes must chain
from the input count to the outputs, every number must be finite. Any failure is a ``TeacherStoreError``
naming the file and field. ``save_teacher`` builds the folder beside the target, loads it back, checks that
it predicts what the in-memory teacher predicts, then swaps it in, so a crash leaves the old folder or the new.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.core.kernel_store import file_sha256
from daemon.ops.files import atomic_write, fsync_dir

from . import nn
from .labels import CLASSES
from .teacher import QuantileNormal, Standardizer, Teacher

FORMAT = "kdsignal-teacher"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRANSFORM_FILE = "input_transform.npz"
KINDS = ("lightgbm", "mlp", "sequence")
ACTIVATIONS = ("relu", "tanh", "linear")
# Caps for a hostile folder, far above the default teacher's (a few MB in all).
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 256 << 20
MAX_MEMBERS = 32
MAX_INPUTS = 4096
MAX_LAYERS = 16
MAX_OUTPUTS = 64
MAX_KNOTS = 4097
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class TeacherStoreError(ValueError):
    """The teacher folder is unreadable or inconsistent; the message names the file and field."""


@dataclass
class StoredTeacher:
    """A teacher read back from its folder: the ensemble, its manifest, and members of other kinds."""

    teacher: Teacher
    manifest: dict
    path: Path
    # members of kinds the Teacher class does not hold (sequence), as their loaders return them
    others: dict[str, object] = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``Teacher.predict`` on rows of the manifest's input columns."""
        return self.teacher.predict(x)

    @property
    def input_names(self) -> list[str]:
        return list(self.manifest["inputs"]["names"])

    def file_bytes(self) -> dict[str, int]:
        """Bytes on disk of each file of the folder (the manifest included)."""
        out = {MANIFEST: (self.path / MANIFEST).stat().st_size}
        for entry in [self.manifest["input_transform"], *self.manifest["members"]]:
            for f in _files_of(entry):
                out[f["file"]] = int(f["bytes"])
        return out


# --- writing ------------------------------------------------------------------------------------------

def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _transform_arrays(scaler) -> tuple[str, dict[str, np.ndarray]]:
    if isinstance(scaler, QuantileNormal):
        return "quantile", {"knots": np.stack([np.asarray(k, np.float64) for k in scaler.knots]),
                            "scores": np.asarray(scaler.scores, np.float64)}
    if isinstance(scaler, Standardizer):
        return "standard", {"mean": np.asarray(scaler.mean, np.float64), "std": np.asarray(scaler.std, np.float64),
                            "clip": np.asarray(float(scaler.clip), np.float64)}
    raise TypeError(f"unknown input transform {type(scaler).__name__}")


def _describe(name: str, data: bytes) -> dict:
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def member_weights(teacher: Teacher) -> dict[str, float]:
    """Each member's share of the ensemble probability (``Teacher.predict``'s blend, spelled out)."""
    n = len(teacher.mlps)
    w_lgbm = (teacher.lgbm_weight if n else 1.0) if teacher.lgbm is not None else 0.0
    out = {f"mlp{i}": (1.0 - w_lgbm) / n for i in range(n)}
    if teacher.lgbm is not None:
        out["lgbm"] = w_lgbm
    return out


def save_teacher(teacher: Teacher, folder: str | Path, *, input_names: list[str], model_id: str, artifact: str,
                 data: dict, sequence_members: list[tuple[str, object]] = (), check_rows: np.ndarray | None = None
                 ) -> dict:
    """Write ``teacher`` to ``folder`` (replacing it whole) and return the manifest.

    ``input_names``: the teacher's feature columns in order; ``model_id``/``artifact``: the student artifact
    it belongs to; ``data``: the rows it was fitted on (free-form, JSON). ``sequence_members``: (name, model)
    pairs saved by ``daemon.training.sequence_net.save_sequence_member``. With ``check_rows`` the folder is read
    back and must predict exactly what ``teacher`` predicts on them before it replaces the old one.
    """
    folder = Path(folder)
    n_in = len(input_names)
    if teacher.mlps and int(teacher.mlps[0].weights[0].shape[1]) != n_in:
        raise ValueError(f"teacher MLPs read {teacher.mlps[0].weights[0].shape[1]} inputs, {n_in} names given")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = member_weights(teacher)
        kind, arrays = _transform_arrays(teacher.scaler)
        blob = _npz_bytes(arrays)
        atomic_write(tmp / TRANSFORM_FILE, blob)
        transform = {"kind": kind, **_describe(TRANSFORM_FILE, blob)}
        members = []
        for i, m in enumerate(teacher.mlps):
            name = f"mlp{i}"
            arrs = {}
            for k, (w, b) in enumerate(zip(m.weights, m.biases, strict=True)):
                arrs[f"w{k}"], arrs[f"b{k}"] = np.asarray(w, np.float32), np.asarray(b, np.float32)
            blob = _npz_bytes(arrs)
            atomic_write(tmp / f"{name}.npz", blob)
            sizes = [int(m.weights[0].shape[1])] + [int(w.shape[0]) for w in m.weights]
            members.append({"name": name, "kind": "mlp", **_describe(f"{name}.npz", blob), "sizes": sizes,
                            "activations": list(m.activations), "weight": weights[name]})
        if teacher.lgbm is not None:
            text = teacher.lgbm.model_to_string().encode()  # best iteration's trees when early-stopped
            atomic_write(tmp / "lgbm.txt", text)
            members.append({"name": "lgbm", "kind": "lightgbm", **_describe("lgbm.txt", text),
                            "trees": text.count(b"\nTree="), "outputs": len(teacher.to_class),
                            "weight": weights["lgbm"]})
        for name, model in sequence_members:
            from .sequence_net import save_sequence_member

            entry = dict(save_sequence_member(model, tmp))
            names = [f if isinstance(f, str) else f["file"] for f in entry.get("files") or [entry["file"]]]
            entry["files"] = [{"file": n, "bytes": (tmp / n).stat().st_size, "sha256": file_sha256(tmp / n)}
                              for n in names]
            members.append({**entry, "name": name, "kind": "sequence", "weight": entry.get("weight", 0.0)})
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model_id": model_id, "artifact": artifact,
            "classes": list(CLASSES), "to_class": [int(c) for c in teacher.to_class],
            "inputs": {"names": list(input_names), "count": n_in},
            "ensemble": {"lgbm_weight": float(teacher.lgbm_weight),
                         "rule": "lgbm_weight x LightGBM + (1 - lgbm_weight) x mean of the MLP members, "
                                 "each member's outputs summed into classes by to_class"},
            "input_transform": transform, "members": members, "data": data,
            "info": teacher.info,
        }
        atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        fsync_dir(tmp)
        stored = load_teacher(tmp)
        if check_rows is not None:
            want, got = teacher.predict(check_rows)[0], stored.predict(check_rows)[0]
            if not np.array_equal(want, got):
                raise TeacherStoreError(f"{folder}: the written teacher predicts differently (max difference "
                                        f"{float(np.max(np.abs(want - got))):.3g})")
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# --- reading ------------------------------------------------------------------------------------------

def _require(cond: bool, message: str) -> None:
    if not cond:
        raise TeacherStoreError(message)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _files_of(entry: dict) -> list[dict]:
    return entry.get("files", [entry])


def _check_file(folder: Path, f: object, where: str) -> Path:
    """A file entry's name, size and sha256 against the file on disk; return its path."""
    _require(isinstance(f, dict), f"{where}: a file entry must be a table")
    name, size, sha = f.get("file"), f.get("bytes"), f.get("sha256")
    _require(isinstance(name, str) and _FILE_NAME.fullmatch(name) is not None and name != MANIFEST,
             f"{where}: file {name!r} is not a plain file name in the folder")
    _require(_int(size) and 0 < size <= MAX_FILE_BYTES, f"{where}: bytes {size!r} out of range")
    _require(isinstance(sha, str) and _SHA256.fullmatch(sha) is not None,
             f"{where}: sha256 {sha!r} is not 64 hex digits")
    path = folder / name
    _require(path.is_file() and not path.is_symlink(), f"{path}: missing (named by {where})")
    real = path.stat().st_size
    _require(real == size, f"{path}: {real} bytes, the manifest says {size} (truncated or replaced)")
    _require(file_sha256(path) == sha, f"{path}: sha256 differs from the manifest's (changed since it was written)")
    return path


def _npz(path: Path, want: dict[str, tuple[tuple, tuple[str, ...]]]) -> dict[str, np.ndarray]:
    """Exactly the arrays ``want`` names, each of its shape (None: any length up to ``MAX_KNOTS``) and one
    of its dtypes, all finite."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = sorted(z.files)
            _require(names == sorted(want), f"{path}: arrays {names}, expected {sorted(want)}")
            out = {}
            for k, (shape, dtypes) in want.items():
                a = z[k]
                _require(a.dtype.name in dtypes, f"{path}: {k} has dtype {a.dtype}, expected {' or '.join(dtypes)}")
                ok = len(a.shape) == len(shape) and all(
                    (1 <= got <= MAX_KNOTS) if w is None else got == w for got, w in zip(a.shape, shape, strict=True))
                _require(ok, f"{path}: {k} has shape {a.shape}, expected {shape}")
                bad = int(np.size(a) - np.isfinite(a).sum())
                _require(bad == 0, f"{path}: {k} holds {bad} non-finite values")
                out[k] = a
    except TeacherStoreError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as e:  # a corrupt zip or .npy header; pickled objects too
        raise TeacherStoreError(f"{path}: not a readable .npz without pickle ({e})") from None
    return out


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    _require(folder.is_dir(), f"{folder}: no teacher folder")
    _require(path.is_file(), f"{path}: missing")
    size = path.stat().st_size
    _require(size <= MAX_MANIFEST_BYTES, f"{path}: {size} bytes, at most {MAX_MANIFEST_BYTES} are read")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TeacherStoreError(f"{path}: not JSON ({str(e)[:200]})") from None
    _require(isinstance(doc, dict), f"{path}: must be a JSON object")
    return doc


def _check_manifest(doc: dict, path: Path) -> None:
    where = str(path)
    _require(doc.get("format") == FORMAT, f"{where}: format {doc.get('format')!r}, expected {FORMAT!r}")
    _require(doc.get("format_version") == FORMAT_VERSION,
             f"{where}: format_version {doc.get('format_version')!r}, this reader knows {FORMAT_VERSION}")
    _require(isinstance(doc.get("model_id"), str) and 0 < len(doc["model_id"]) <= 64,
             f"{where}: model_id {doc.get('model_id')!r} must be a short string")
    _require(doc.get("classes") == list(CLASSES), f"{where}: classes {doc.get('classes')!r}, expected {list(CLASSES)}")
    tc = doc.get("to_class")
    _require(isinstance(tc, list) and 3 <= len(tc) <= MAX_OUTPUTS and all(_int(c) and 0 <= c < 3 for c in tc)
             and set(tc) == {0, 1, 2}, f"{where}: to_class {tc!r} must map outputs onto the 3 classes")
    inputs = doc.get("inputs")
    _require(isinstance(inputs, dict), f"{where}: inputs must be a table")
    names, count = inputs.get("names"), inputs.get("count")
    _require(_int(count) and 1 <= count <= MAX_INPUTS, f"{where}: inputs.count {count!r} out of range")
    # names may repeat: two extras recompute student features (rvol_100, hl_mean_20) from their own code
    _require(isinstance(names, list) and len(names) == count and all(isinstance(n, str) and len(n) <= 100
                                                                     for n in names),
             f"{where}: inputs.names must be {count} strings")
    ens = doc.get("ensemble")
    _require(isinstance(ens, dict) and _number(ens.get("lgbm_weight")) and 0 <= ens["lgbm_weight"] <= 1,
             f"{where}: ensemble.lgbm_weight must be a number in [0, 1]")
    tr = doc.get("input_transform")
    _require(isinstance(tr, dict) and tr.get("kind") in ("quantile", "standard"),
             f"{where}: input_transform.kind must be quantile or standard")
    members = doc.get("members")
    _require(isinstance(members, list) and 1 <= len(members) <= MAX_MEMBERS,
             f"{where}: members must be a list of 1 to {MAX_MEMBERS}")
    seen = set()
    for i, m in enumerate(members):
        _require(isinstance(m, dict), f"{where}: members[{i}] must be a table")
        name, kind = m.get("name"), m.get("kind")
        _require(isinstance(name, str) and _MEMBER_NAME.fullmatch(name) is not None and name not in seen,
                 f"{where}: members[{i}].name {name!r} must be a distinct short identifier")
        seen.add(name)
        _require(kind in KINDS, f"{where}: member {name} has unknown kind {kind!r} (known: {', '.join(KINDS)})")
        _require(_number(m.get("weight")) and 0 <= m["weight"] <= 1,
                 f"{where}: member {name}: weight must be in [0, 1]")
    total = sum(m["weight"] for m in members)
    _require(abs(total - 1.0) < 1e-9, f"{where}: member weights sum to {total!r}, not 1")


def _load_transform(folder: Path, tr: dict, n_in: int):
    path = _check_file(folder, tr, "input_transform")
    if tr["kind"] == "standard":
        a = _npz(path, {"mean": ((n_in,), ("float64",)), "std": ((n_in,), ("float64",)), "clip": ((), ("float64",))})
        _require(bool(np.all(a["std"] > 0)) and float(a["clip"]) > 0, f"{path}: std and clip must be positive")
        return Standardizer(a["mean"], a["std"], float(a["clip"]))
    a = _npz(path, {"knots": ((n_in, None), ("float64",)), "scores": ((None,), ("float64",))})
    n_knots = len(a["scores"])
    _require(n_knots >= 2 and a["knots"].shape[1] == n_knots,
             f"{path}: knots {a['knots'].shape} and scores {a['scores'].shape} disagree (or fewer than 2 knots)")
    _require(bool(np.all(np.diff(a["knots"], axis=1) >= 0)), f"{path}: knots must be non-decreasing in each row")
    _require(bool(np.all(np.diff(a["scores"]) > 0)), f"{path}: scores must be increasing")
    return QuantileNormal(list(a["knots"]), a["scores"])


def _load_mlp(folder: Path, m: dict, n_in: int, n_out: int) -> nn.MLP:
    where = f"member {m['name']}"
    path = _check_file(folder, m, where)
    sizes, acts = m.get("sizes"), m.get("activations")
    _require(isinstance(sizes, list) and 2 <= len(sizes) <= MAX_LAYERS + 1 and all(_int(s) and 1 <= s <= 65536
                                                                                     for s in sizes),
             f"{path}: {where}.sizes {sizes!r} out of range")
    _require(sizes[0] == n_in, f"{path}: {where} reads {sizes[0]} inputs, the manifest lists {n_in}")
    _require(sizes[-1] == n_out, f"{path}: {where} has {sizes[-1]} outputs, to_class has {n_out}")
    _require(isinstance(acts, list) and len(acts) == len(sizes) - 1 and all(a in ACTIVATIONS for a in acts)
             and acts[-1] == "linear", f"{path}: {where}.activations {acts!r} (one per layer, the last linear)")
    want = {}
    for k in range(len(sizes) - 1):
        want[f"w{k}"] = ((sizes[k + 1], sizes[k]), ("float32",))
        want[f"b{k}"] = ((sizes[k + 1],), ("float32",))
    a = _npz(path, want)
    n = len(sizes) - 1
    return nn.MLP([a[f"w{k}"] for k in range(n)], [a[f"b{k}"] for k in range(n)], list(acts))


# Per tree, the arrays LightGBM reads and their lengths (L = num_leaves): its parser stops the process
# (a C++ exception inside an OpenMP loop) on a count it does not expect, so the text is checked here first.
_TREE_ARRAYS = {"split_feature": -1, "split_gain": -1, "threshold": -1, "decision_type": -1, "left_child": -1,
                "right_child": -1, "leaf_value": 0, "leaf_weight": 0, "leaf_count": 0, "internal_value": -1,
                "internal_weight": -1, "internal_count": -1}
_TREE_SCALARS = ("num_leaves", "num_cat", "is_linear", "shrinkage")


def _check_tree(block: str, i: int, n_in: int, where: str) -> None:
    lines = block.strip("\n").split("\n")
    _require(lines[0] == f"Tree={i}", f"{where}: tree {i} does not start with 'Tree={i}'")
    kv = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    _require(len(kv) == len(lines) - 1 and set(kv) <= {*_TREE_ARRAYS, *_TREE_SCALARS},
             f"{where}: tree {i} has lines LightGBM's numeric trees do not")
    try:
        n_leaves, n_cat, linear = int(kv["num_leaves"]), int(kv["num_cat"]), int(kv.get("is_linear", "0"))
        _require(math.isfinite(float(kv["shrinkage"])), f"{where}: tree {i} shrinkage is not finite")
        arrays = {k: np.array(kv[k].split(), dtype=np.float64) for k in _TREE_ARRAYS if k in kv}
    except (KeyError, ValueError):
        raise TeacherStoreError(f"{where}: tree {i} has a missing or non-numeric field") from None
    _require(1 <= n_leaves <= 1 << 17 and n_cat == 0 and linear == 0,
             f"{where}: tree {i}: num_leaves {n_leaves}, num_cat {n_cat}, is_linear {linear} (numeric trees only)")
    need = ["leaf_value"] if n_leaves == 1 else list(_TREE_ARRAYS)
    for k in need:
        _require(k in arrays, f"{where}: tree {i} has no {k}")
    for k, a in arrays.items():
        _require(len(a) == n_leaves + _TREE_ARRAYS[k], f"{where}: tree {i} {k} has {len(a)} values for "
                                                       f"{n_leaves} leaves")
        # LightGBM writes an infinite threshold for a split that sends every value one way
        ok = ~np.isnan(a) if k == "threshold" else np.isfinite(a)
        _require(bool(np.all(ok)), f"{where}: tree {i} {k} holds non-finite values")
    if n_leaves == 1:
        return
    feat, dec = arrays["split_feature"], arrays["decision_type"]
    _require(bool(np.all((feat >= 0) & (feat < n_in) & (feat == np.floor(feat)))),
             f"{where}: tree {i} splits on a feature outside 0..{n_in - 1}")
    _require(bool(np.all((dec >= 0) & (dec < 16) & (dec == np.floor(dec)))) and not np.any(dec.astype(int) & 1),
             f"{where}: tree {i} has a decision type other than a numeric split")
    # every node but the root, and every leaf (stored as ~leaf), is the child of exactly one split: the walk
    # from the root then ends at a leaf on every input
    kids = np.concatenate([arrays["left_child"], arrays["right_child"]])
    _require(bool(np.all(kids == np.floor(kids))), f"{where}: tree {i} has non-integer child indices")
    want = np.concatenate([np.arange(1, n_leaves - 1), -np.arange(1, n_leaves + 1)])
    _require(np.array_equal(np.sort(kids), np.sort(want)), f"{where}: tree {i} is not a tree (children indices)")


def _check_lgbm_text(text: str, n_in: int, n_out: int, where: str) -> int:
    """LightGBM's text model, checked line by line before LightGBM parses it; returns the tree count."""
    _require(text.startswith("tree\n"), f"{where}: not LightGBM's text model format (no 'tree' header)")
    start = text.find("\nTree=0\n")
    _require(start > 0, f"{where}: no trees")
    head = dict(line.split("=", 1) for line in text[:start].split("\n")[1:] if "=" in line)
    try:
        sizes = [int(x) for x in head["tree_sizes"].split()]
        per_round, max_feat = int(head["num_tree_per_iteration"]), int(head["max_feature_idx"])
        n_class, n_names = int(head["num_class"]), len(head["feature_names"].split())
    except (KeyError, ValueError):
        raise TeacherStoreError(f"{where}: header lacks a readable tree_sizes, num_class, num_tree_per_iteration, "
                                "max_feature_idx or feature_names") from None
    _require(n_class == n_out and per_round == n_out, f"{where}: {per_round} outputs per round, to_class has {n_out}")
    _require(max_feat + 1 == n_in and n_names == n_in,
             f"{where}: reads {max_feat + 1} features, the manifest lists {n_in}")
    _require(0 < len(sizes) <= 1 << 16 and len(sizes) % per_round == 0 and min(sizes) > 0,
             f"{where}: tree_sizes lists {len(sizes)} trees, not whole rounds of {per_round}")
    at = start + 1
    for i, size in enumerate(sizes):
        _check_tree(text[at : at + size], i, n_in, where)
        at += size
    _require(text[at:].lstrip("\n").startswith("end of trees"), f"{where}: trees do not end where tree_sizes says")
    return len(sizes)


def _load_lgbm(folder: Path, m: dict, n_in: int, n_out: int):
    where = f"member {m['name']}"
    path = _check_file(folder, m, where)
    try:
        import lightgbm as lgb
    except ImportError:
        raise TeacherStoreError(f"{path}: lightgbm is not installed (pip install 'kdsignal[train]')") from None
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise TeacherStoreError(f"{path}: not LightGBM's text model format (non-ASCII bytes)") from None
    n_trees = _check_lgbm_text(text, n_in, n_out, str(path))
    _require(m.get("trees") == n_trees, f"{path}: {n_trees} trees, the manifest says {m.get('trees')!r}")
    try:
        booster = lgb.Booster(model_str=text)
        n_class, n_feat, n_trees = booster.num_model_per_iteration(), booster.num_feature(), booster.num_trees()
    except lgb.basic.LightGBMError as e:
        raise TeacherStoreError(f"{path}: LightGBM refuses it ({str(e)[:200]})") from None
    _require(n_class == n_out, f"{path}: {n_class} outputs per round, to_class has {n_out}")
    _require(n_feat == n_in, f"{path}: reads {n_feat} features, the manifest lists {n_in}")
    _require(n_trees == m["trees"], f"{path}: LightGBM reads {n_trees} trees, the manifest says {m['trees']}")
    return booster


def _load_sequence(folder: Path, m: dict):
    where = f"member {m['name']}"
    try:
        from .sequence_net import load_sequence_member
    except ImportError:
        raise TeacherStoreError(f"{folder / MANIFEST}: {where} has unknown kind 'sequence' "
                                "(daemon.training.sequence_net, which needs the [seq] extra's torch, is not "
                                "available here)") from None
    files = m.get("files")
    _require(isinstance(files, list) and 1 <= len(files) <= 8, f"{folder / MANIFEST}: {where}.files must list 1 to 8")
    for f in files:
        _check_file(folder, f, where)
    return load_sequence_member(folder, m)


def load_teacher(folder: str | Path, *, threads: int = 1) -> StoredTeacher:
    """Read and check the teacher in ``folder``; ``TeacherStoreError`` names what is wrong."""
    folder = Path(folder)
    doc = _read_manifest(folder)
    _check_manifest(doc, folder / MANIFEST)
    n_in = doc["inputs"]["count"]
    to_class = np.asarray(doc["to_class"], dtype=np.int64)
    scaler = _load_transform(folder, doc["input_transform"], n_in)
    mlps, lgbm, others = [], None, {}
    for m in doc["members"]:
        if m["kind"] == "mlp":
            _require(m["name"] == f"mlp{len(mlps)}", f"{folder / MANIFEST}: MLP member {m['name']!r} out of order "
                                                     f"(expected mlp{len(mlps)})")
            mlps.append(_load_mlp(folder, m, n_in, len(to_class)))
        elif m["kind"] == "lightgbm":
            _require(lgbm is None, f"{folder / MANIFEST}: more than one LightGBM member")
            lgbm = _load_lgbm(folder, m, n_in, len(to_class))
        else:
            others[m["name"]] = _load_sequence(folder, m)
    w = float(doc["ensemble"]["lgbm_weight"])
    teacher = Teacher(scaler, mlps, lgbm, to_class, w, list(doc.get("info", [])))
    teacher._threads = threads
    expected = member_weights(teacher)
    for m in doc["members"]:
        if m["name"] in expected:
            _require(abs(m["weight"] - expected[m["name"]]) < 1e-9,
                     f"{folder / MANIFEST}: member {m['name']} weight {m['weight']!r} disagrees with lgbm_weight "
                     f"{w!r} ({expected[m['name']]!r})")
    _require(bool(mlps) or lgbm is not None, f"{folder / MANIFEST}: no MLP or LightGBM member")
    return StoredTeacher(teacher, doc, folder, others)


def default_folder(artifact: str | Path, teacher_dir: str = "teacher") -> Path:
    """Where the teacher of ``artifact`` lives: ``teacher_dir`` relative to the artifact's folder."""
    return Path(artifact).parent / teacher_dir

