"""The teacher folder: a round trip predicts exactly what the fitted teacher did; bad or tampered files are refused."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys

import numpy as np
import pytest

from daemon.training.teacher import fit_teacher
from daemon.training.teacher_store import TeacherStoreError, load_teacher, save_teacher
from tests.support import TINY_TEACHER, pooled_samples, save_tiny_teacher, tiny_teacher


@pytest.fixture(scope="module")
def fitted():
    """A small teacher (two MLP members and LightGBM) fitted on the committed samples, and rows to score."""
    return tiny_teacher()


_save = save_tiny_teacher


@pytest.fixture
def folder(fitted, tmp_path):
    """A freshly written teacher folder."""
    _save(fitted, tmp_path / "teacher")
    return tmp_path / "teacher"


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _rewrite(folder, name: str, data: bytes) -> None:
    """Replace a member file and make the manifest's size and hash agree (a consistent forgery)."""
    (folder / name).write_bytes(data)
    man = _manifest(folder)
    for entry in [man["input_transform"], *man["members"]]:
        if entry.get("file") == name:
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(man))


def test_round_trip_predicts_identically(fitted, folder):
    """The loaded teacher's ensemble and every member's probabilities equal the fitted teacher's, bit for bit."""
    t, names, x = fitted
    stored = load_teacher(folder)
    want_p, want_m = t.predict(x)
    got_p, got_m = stored.predict(x)
    assert np.array_equal(want_p, got_p)
    assert set(got_m) == {"mlp0", "mlp1", "lgbm"}
    for k in want_m:
        assert np.array_equal(want_m[k], got_m[k]), k
    man = stored.manifest
    assert man["inputs"]["names"] == list(names) and man["inputs"]["count"] == x.shape[1]
    assert [m["kind"] for m in man["members"]] == ["mlp", "mlp", "lightgbm"]
    assert sum(m["weight"] for m in man["members"]) == pytest.approx(1.0)
    assert man["model_id"] == "0123456789abcdef"
    assert sorted(stored.file_bytes()) == ["input_transform.npz", "lgbm.txt", "manifest.json", "mlp0.npz", "mlp1.npz"]


def test_standard_transform_round_trips(fitted, tmp_path):
    """A teacher whose MLPs read z-scores (``teacher_input_transform = "standard"``) round-trips too."""
    _, names, x = fitted
    P = pooled_samples(TINY_TEACHER)
    rows = np.flatnonzero(P.valid)
    cfg = TINY_TEACHER.replace(teacher_input_transform="standard", teacher_lgbm=False)
    t = fit_teacher(P.x_teacher[rows[:3000]], P.target[rows[:3000]], P.x_teacher[rows[3000:4000]],
                    P.target[rows[3000:4000]], P.y[rows[3000:4000]], P.to_class, cfg, 1)
    save_teacher(t, tmp_path / "t", input_names=names, model_id="m", artifact="a.npz", data={}, check_rows=x)
    stored = load_teacher(tmp_path / "t")
    assert stored.manifest["input_transform"]["kind"] == "standard"
    assert np.array_equal(stored.predict(x)[0], t.predict(x)[0])


def test_no_pickle_in_any_file(folder):
    """Every .npz reads with allow_pickle=False and the rest is JSON or LightGBM text."""
    for path in folder.iterdir():
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                assert all(z[k].dtype != object for k in z.files)
        elif path.name == "manifest.json":
            json.loads(path.read_text())
        else:
            assert path.read_text(encoding="ascii").startswith("tree\n")


def test_changed_byte_is_refused_by_sha(folder):
    """One flipped byte of a same-sized member file is refused, the file named, as a sha256 mismatch."""
    p = folder / "mlp1.npz"
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(TeacherStoreError, match=r"mlp1\.npz: sha256 differs"):
        load_teacher(folder)


def test_truncated_file_is_refused_by_size(folder):
    """A truncated LightGBM file is refused with its name and both sizes."""
    p = folder / "lgbm.txt"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(TeacherStoreError, match=r"lgbm\.txt: 1000 bytes, the manifest says"):
        load_teacher(folder)


def test_consistent_forgeries_are_refused_by_content(folder):
    """Files replaced with a matching hash still fail their checks: NaN weights, a wrong shape, broken trees."""
    with np.load(folder / "mlp0.npz", allow_pickle=False) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["w1"][0, 0] = np.nan
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _rewrite(folder, "mlp0.npz", buf.getvalue())
    with pytest.raises(TeacherStoreError, match=r"mlp0\.npz: w1 holds 1 non-finite"):
        load_teacher(folder)
    arrays["w1"] = arrays["w1"][:, :3].copy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _rewrite(folder, "mlp0.npz", buf.getvalue())
    with pytest.raises(TeacherStoreError, match=r"mlp0\.npz: w1 has shape \(8, 3\)"):
        load_teacher(folder)


def test_broken_lightgbm_text_is_refused(folder):
    """LightGBM text cut short, with a cycle in a tree, or with other tree counts is refused before LightGBM
    parses it (its parser aborts the process on some such files), naming lgbm.txt."""
    text = (folder / "lgbm.txt").read_text()
    _rewrite(folder, "lgbm.txt", text[: len(text) // 2].encode())
    with pytest.raises(TeacherStoreError, match=r"lgbm\.txt: tree \d+ has a missing or non-numeric field"):
        load_teacher(folder)
    tree0 = text[text.index("Tree=0\n"):]
    left = tree0[tree0.index("left_child=") : tree0.index("\n", tree0.index("left_child="))]
    kids = left.removeprefix("left_child=").split()
    looped = left.replace(f"left_child={kids[0]}", f"left_child={'0'.rjust(len(kids[0]))}", 1)
    _rewrite(folder, "lgbm.txt", text.replace(left, looped, 1).encode())
    with pytest.raises(TeacherStoreError, match=r"lgbm\.txt: tree 0 is not a tree"):
        load_teacher(folder)
    _rewrite(folder, "lgbm.txt", text.replace("num_tree_per_iteration=3", "num_tree_per_iteration=4").encode())
    with pytest.raises(TeacherStoreError, match=r"lgbm\.txt: 4 outputs per round"):
        load_teacher(folder)
    _rewrite(folder, "lgbm.txt", text.encode())
    man = _manifest(folder)
    man["members"][2]["trees"] += 3
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(TeacherStoreError, match=r"lgbm\.txt: \d+ trees, the manifest says"):
        load_teacher(folder)


def test_pickled_array_is_refused(folder):
    """An object array (which only pickle can read) in a member file is refused, not unpickled."""
    buf = io.BytesIO()
    np.savez(buf, knots=np.array([{"x": 1}], dtype=object), scores=np.arange(3.0))
    _rewrite(folder, "input_transform.npz", buf.getvalue())
    with pytest.raises(TeacherStoreError, match=r"input_transform\.npz: not a readable \.npz without pickle"):
        load_teacher(folder)


def test_unknown_kind_is_refused(folder, monkeypatch):
    """A member kind this reader does not know is refused by name; so is "sequence" without its module."""
    man = _manifest(folder)
    man["members"][2]["kind"] = "xgboost"
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(TeacherStoreError, match=r"member lgbm has unknown kind 'xgboost'"):
        load_teacher(folder)
    man["members"][2]["kind"] = "sequence"
    man["members"][2]["files"] = [{k: man["members"][2][k] for k in ("file", "bytes", "sha256")}]
    (folder / "manifest.json").write_text(json.dumps(man))
    monkeypatch.setitem(sys.modules, "daemon.training.sequence_net", None)  # as without the [seq] extra
    with pytest.raises(TeacherStoreError, match=r"member lgbm has unknown kind 'sequence'"):
        load_teacher(folder)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.update(format_version=2), "format_version 2"),
    (lambda m: m["ensemble"].update(lgbm_weight=float("nan")), "lgbm_weight must be a number"),
    (lambda m: m["members"][0].update(file="../manifest.json"), "not a plain file name"),
    (lambda m: m["members"][1].update(weight=0.5), "weights sum to"),
    (lambda m: m["inputs"].update(count=m["inputs"]["count"] - 1), "inputs.names must be"),
    (lambda m: m.update(to_class=[0, 1, 1]), "to_class"),
    (lambda m: m["members"][0].update(sizes=[5, 16, 8, 3]), "mlp0.npz: member mlp0 reads 5 inputs"),
    (lambda m: m.update(members=[]), "members must be a list"),
])
def test_manifest_fields_are_checked(folder, change, message):
    """Each manifest field is validated and a bad one is named."""
    man = _manifest(folder)
    change(man)
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(TeacherStoreError, match=message):
        load_teacher(folder)


def test_missing_folder_and_garbage_manifest_are_named(tmp_path, folder):
    """No folder, a missing file and a manifest that is not JSON each give a message naming the path."""
    with pytest.raises(TeacherStoreError, match="no teacher folder"):
        load_teacher(tmp_path / "nowhere")
    (folder / "mlp1.npz").unlink()
    with pytest.raises(TeacherStoreError, match=r"mlp1\.npz: missing"):
        load_teacher(folder)
    (folder / "manifest.json").write_bytes(b"[" * 100_000)
    with pytest.raises(TeacherStoreError, match=r"manifest\.json: not JSON"):
        load_teacher(folder)


def test_failed_write_keeps_the_old_folder(fitted, folder):
    """A save that fails part way leaves the previous teacher folder as it was and no temporary folder."""
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    t, names, x = fitted
    with pytest.raises(ValueError, match="inputs"):
        save_teacher(t, folder, input_names=names[:-1], model_id="x", artifact="a.npz", data={}, check_rows=x)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["teacher"]
    shutil.rmtree(folder)
    _save(fitted, folder)
    assert load_teacher(folder).manifest["artifact"] == "default.npz"
