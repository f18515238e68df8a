"""The artifact: a round trip that preserves the model, and a loader that names what is wrong."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from daemon.core.artifact import ArtifactError, load_artifact, save_artifact
from daemon.core.model import Model
from kernels.layout import FEATURE_NAMES, WINDOW
from tests.support import write_random_artifact, write_router_artifact


def rewrite(src, dst, *, arrays=None, manifest=None, keep_id=True):
    """Copy an artifact changing some arrays or manifest keys (the id is left stale unless recomputed)."""
    with np.load(src, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    m = json.loads(data["manifest"].tobytes())
    if manifest:
        m.update(manifest)
    data["manifest"] = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)
    data.update(arrays or {})
    np.savez(dst, **data)
    return dst


def test_round_trip_preserves_predictions(tmp_path, btc_5m):
    """A saved and reloaded artifact carries its manifest and gives the same probabilities."""
    path = tmp_path / "a.npz"
    model_id = write_random_artifact(path, symbols=("BTCUSDT", "ETHUSDT"))
    art = load_artifact(path)
    assert art.model_id == model_id and len(model_id) == 16
    assert art.manifest["data"]["symbols"] == ["BTCUSDT", "ETHUSDT"] and art.interval == "5"
    assert art.manifest["warmup_bars"] == WINDOW and art.manifest["classes"] == ["sell", "hold", "buy"]
    m1, m2 = Model.load(path), Model(art)
    s1, s2 = m1.new_state(), m2.new_state()
    for row in btc_5m[: WINDOW + 60, 1:6]:
        assert s1.update(*row) == s2.update(*row)
    np.testing.assert_array_equal(s1.probs, s2.probs)


def test_model_id_is_a_content_hash(tmp_path):
    """Different weights give different ids, the same content the same id."""
    a = write_random_artifact(tmp_path / "a.npz", seed=1)
    b = write_random_artifact(tmp_path / "b.npz", seed=1)
    c = write_random_artifact(tmp_path / "c.npz", seed=2)
    assert a == b != c


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(manifest={"schema_version": 99}), "schema_version"),
        (dict(manifest={"features": {"names": ["ret_1", "rsi_14"], "params": {}, "window": 21}}), "features.names"),
        (dict(manifest={"classes": ["buy", "hold", "sell"]}), "classes"),
        (dict(manifest={"warmup_bars": 5}), "warmup_bars"),
        (dict(manifest={"data": {"interval": "7", "symbols": []}}), "data.interval"),
        (dict(manifest={"normalisation": {"clip": -1}}), "normalisation.clip"),
        (dict(manifest={"distillation": {"temperature": "hot", "alpha": 0.5}}), "distillation.temperature"),
        (dict(manifest={"student": {"sizes": [11, 16, 3], "activations": ["relu", "linear"]}}), "mlp"),
        (dict(arrays={"feature_std": np.zeros(9)}), "feature_std"),
        (dict(arrays={"feature_mean": np.zeros(8)}), "feature_mean"),
        (dict(manifest={"labels": {"h": 4}}), "model_id"),
    ],
)
def test_bad_fields_are_named(tmp_path, change, field):
    """Each inconsistent or altered field is refused with an error that names it."""
    good = tmp_path / "good.npz"
    write_random_artifact(good)
    bad = rewrite(good, tmp_path / "bad.npz", **change)
    with pytest.raises(ArtifactError, match=field.replace(".", r"\.")):
        load_artifact(bad)


def test_nan_weight_refused(tmp_path):
    """A NaN in the packed weights is refused, naming the array and index."""
    good = tmp_path / "good.npz"
    write_random_artifact(good)
    mlp = load_artifact(good).mlp.copy()
    mlp[40] = np.nan
    with pytest.raises(ArtifactError, match=r"mlp: 1 non-finite values \(first at index \[40\]\)"):
        load_artifact(rewrite(good, tmp_path / "bad.npz", arrays={"mlp": mlp}))


def test_truncated_file_refused(tmp_path):
    """A truncated file is refused as truncated or corrupt, not with a zipfile traceback."""
    good = tmp_path / "good.npz"
    write_random_artifact(good)
    raw = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_artifact(tmp_path / "cut.npz")


def test_missing_file_and_missing_array(tmp_path):
    """A missing file and a file without the manifest array are both refused clearly."""
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(tmp_path / "nope.npz")
    np.savez(tmp_path / "partial.npz", mlp=np.zeros(3))
    with pytest.raises(ArtifactError, match=r"missing arrays \['feature_mean', 'feature_std', 'manifest'\]"):
        load_artifact(tmp_path / "partial.npz")


def test_pickled_arrays_refused(tmp_path):
    """An object (pickled) array is never unpickled: the loader refuses the file."""
    good = tmp_path / "good.npz"
    write_random_artifact(good)
    buf = io.BytesIO()
    with np.load(good, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    data["mlp"] = np.array([{"evil": 1}], dtype=object)
    np.savez(buf, **data)
    (tmp_path / "pickled.npz").write_bytes(buf.getvalue())
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "pickled.npz")
    assert zipfile.is_zipfile(tmp_path / "pickled.npz")


# ---------------------------------------------------------------------- hostile files
def _members(good) -> dict[str, bytes]:
    """The raw .npy members of an artifact, by array name."""
    with zipfile.ZipFile(good) as zf:
        return {n.removesuffix(".npy"): zf.read(n) for n in zf.namelist()}


def _write_zip(path, members: dict[str, bytes], compress: bool = False):
    """Write ``members`` (name -> .npy bytes) as an .npz, deflated when ``compress``."""
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return path


def _npy_header(dtype: str, shape: tuple) -> bytes:
    """A version 1.0 .npy header claiming ``dtype`` and ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _rehash(good, dst, *, mlp=None, manifest_over=None):
    """Copy an artifact with new weights or manifest keys and a model id that matches (hash valid)."""
    from daemon.core.artifact import _content_hash

    art = load_artifact(good)
    m = dict(art.manifest, **(manifest_over or {}))
    mlp = art.mlp if mlp is None else mlp
    m["model_id"] = _content_hash(mlp, art.feature_mean, art.feature_std, m)
    np.savez(dst, mlp=mlp, feature_mean=art.feature_mean, feature_std=art.feature_std,
             manifest=np.frombuffer(json.dumps(m).encode(), dtype=np.uint8))
    return dst


@pytest.fixture
def good(tmp_path):
    """A valid random-weight artifact."""
    path = tmp_path / "good.npz"
    write_random_artifact(path)
    return path


def test_zip_bomb_member_is_refused_without_inflating_it(tmp_path, good):
    """A member whose header claims 256 MB of zeros, deflated to a small file, is refused from its header alone."""
    import tracemalloc

    members = _members(good)
    bomb = tmp_path / "bomb.npz"
    n = 32 << 20  # float64 values: 256 MB inflated
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("feature_mean", "feature_std", "manifest"):
            zf.writestr(name + ".npy", members[name])
        with zf.open("mlp.npy", "w", force_zip64=True) as out:
            out.write(_npy_header("<f8", (n,)))
            chunk = bytes(1 << 20)
            for _ in range(n * 8 >> 20):
                out.write(chunk)
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match=r"mlp: (shape \(33554432,\)|268435584 bytes declared)"):
            load_artifact(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_member_with_more_data_than_its_header_is_refused(tmp_path, good):
    """A member whose header gives the right shape but whose data runs on (a disguised bomb) is refused."""
    members = _members(good)
    members["mlp"] = members["mlp"] + bytes(4096)
    with pytest.raises(ArtifactError, match="more data than its header"):
        load_artifact(_write_zip(tmp_path / "long.npz", members, compress=True))


def test_header_claiming_1e11_elements_is_refused(tmp_path, good):
    """A .npy header that claims 10^11 values is refused naming the member, not with a MemoryError."""
    members = _members(good)
    members["feature_std"] = _npy_header("<f8", (10**11,)) + bytes(88)
    with pytest.raises(ArtifactError, match=r"feature_std: shape \(100000000000,\)"):
        load_artifact(_write_zip(tmp_path / "huge.npz", members))


@pytest.mark.parametrize(("dtype", "shape", "words"), [
    ("<f4", (11,), "feature_mean: dtype float32, expected float64"),
    (">f8", (11,), "feature_mean: dtype >f8"),
    ("|O", (11,), "feature_mean: dtype object"),
    ("<f8", (11, 1), r"feature_mean: shape \(11, 1\)"),
])
def test_member_dtype_and_shape_are_read_from_the_header(tmp_path, good, dtype, shape, words):
    """A member whose header names another dtype or shape is refused before its data is read."""
    members = _members(good)
    members["feature_mean"] = _npy_header(dtype, shape) + bytes(88)
    with pytest.raises(ArtifactError, match=words):
        load_artifact(_write_zip(tmp_path / "typed.npz", members))


def test_manifest_200k_brackets_deep_is_refused(tmp_path, good):
    """A manifest nested 200,000 brackets deep is refused by its depth, never a RecursionError."""
    members = _members(good)
    text = ("[" * 200_000 + "]" * 200_000).encode()
    members["manifest"] = _npy_header("|u1", (len(text),)) + text
    with pytest.raises(ArtifactError, match="manifest: JSON nested 200000 deep"):
        load_artifact(_write_zip(tmp_path / "deep.npz", members))


def test_brackets_inside_strings_do_not_count_as_depth(tmp_path, good):
    """Brackets inside a JSON string (a free-form label) are not nesting: the artifact loads."""
    path = _rehash(good, tmp_path / "labels.npz", manifest_over={"labels": {"note": "[{" * 5000 + '\\"]'}})
    assert load_artifact(path).manifest["labels"]["note"].startswith("[{[{")


@pytest.mark.parametrize(("over", "words"), [
    ({"features": []}, "features: list, expected an object"),
    ({"student": [11, 16, 3]}, "student: list, expected an object"),
    ({"normalisation": [6.0]}, "normalisation: list, expected an object"),
    ({"distillation": "hot"}, "distillation: str, expected an object"),
    ({"data": []}, "data: list, expected an object"),
    ({"features": {"names": ["ret_1"] * 0, "params": [], "window": 101}}, "features.names"),
    ({"schema_version": [1]}, "schema_version"),
    ({"model_id": {"a": 1}}, "model_id"),
    ({"normalisation": {"clip": True}}, "normalisation.clip"),
    ({"normalisation": {"clip": 1e400}}, "normalisation.clip"),
    ({"student": {"sizes": [11, 10**9, 3], "activations": ["relu", "linear"]}}, "student.sizes"),
    ({"student": {"sizes": [11] + [4] * 40 + [3], "activations": ["relu"] * 41}}, "student.sizes"),
])
def test_a_list_where_a_table_belongs_is_named(tmp_path, good, over, words):
    """Wrong JSON types anywhere in the manifest are refused naming the key, never an AttributeError."""
    members = _members(good)
    m = dict(load_artifact(good).manifest, **over)
    text = json.dumps(m).encode()
    members["manifest"] = _npy_header("|u1", (len(text),)) + text
    with pytest.raises(ArtifactError, match=words):
        load_artifact(_write_zip(tmp_path / "typed.npz", members))


def test_manifest_that_is_not_an_object_is_refused(tmp_path, good):
    """A manifest that is a JSON list, or not JSON at all, is refused naming the manifest."""
    members = _members(good)
    for text, words in ((b"[1, 2]", "manifest: list, expected a JSON object"), (b"\xff{", "manifest: not valid JSON")):
        members["manifest"] = _npy_header("|u1", (len(text),)) + text
        with pytest.raises(ArtifactError, match=words):
            load_artifact(_write_zip(tmp_path / "m.npz", members))


@pytest.mark.parametrize("scale", [1e200, 1e120])
def test_huge_finite_weights_with_a_valid_hash_are_refused(tmp_path, good, scale):
    """Finite weights large enough to overflow the logits are refused by what the student computes."""
    from kernels.layout import unpack_mlp

    mlp = load_artifact(good).mlp.copy()
    _, _, _, end = unpack_mlp(mlp)
    head = 1 + 4 + 3  # n_layers, 4 sizes, 3 activation codes
    mlp[head:end] *= scale
    with pytest.raises(ArtifactError, match="student: "):
        load_artifact(_rehash(good, tmp_path / "huge.npz", mlp=mlp))


def test_large_but_servable_weights_still_load(tmp_path, good):
    """Weights a thousand times larger than trained ones still give finite outputs everywhere: they load."""
    mlp = load_artifact(good).mlp.copy()
    mlp[8:] *= 1e3
    assert load_artifact(_rehash(good, tmp_path / "big.npz", mlp=mlp)).model_id


def test_file_size_and_member_count_are_capped(tmp_path, good):
    """A file over the size cap and a zip with too many members are refused before being parsed."""
    from daemon.core import artifact

    big = tmp_path / "big.npz"
    with open(big, "wb") as f:
        f.truncate(artifact.MAX_FILE_BYTES + 1)
    with pytest.raises(ArtifactError, match="bytes, at most"):
        load_artifact(big)
    members = _members(good)
    members.update({f"extra{i}": b"" for i in range(artifact.MAX_MEMBERS)})
    with pytest.raises(ArtifactError, match="zip members, at most"):
        load_artifact(_write_zip(tmp_path / "many.npz", members))


def test_shipped_model_passes_the_output_check():
    """The shipped default model loads: its outputs are finite over the whole clipped input box."""
    from tests.support import ROOT

    assert load_artifact(ROOT / "models" / "default.npz").model_id


def test_negative_shape_and_oversized_zip_directory_are_refused(tmp_path, good):
    """A manifest header with a negative length, and a zip directory far larger than 16 members need, are refused."""
    members = _members(good)
    members["manifest"] = _npy_header("|u1", (-5,)) + bytes(64)
    with pytest.raises(ArtifactError, match=r"manifest: shape \(-5,\)"):
        load_artifact(_write_zip(tmp_path / "neg.npz", members))
    members = _members(good)
    with zipfile.ZipFile(tmp_path / "wide.npz", "w") as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
        zf.writestr("x" * 60_000, b"")
        zf.writestr("y" * 60_000, b"")
    with pytest.raises(ArtifactError, match="zip directory of"):
        load_artifact(tmp_path / "wide.npz")


def test_artifact_policy_is_validated(tmp_path):
    """A manifest policy with a threshold outside [0, 1] or a non-integer hold is refused, naming the field."""
    from daemon.training import nn

    mlp = nn.MLP.init([len(FEATURE_NAMES), 4, 3], "relu", np.random.default_rng(0))
    f = len(FEATURE_NAMES)
    base = {"normalisation": {"clip": 8.0}, "distillation": {"temperature": 2.0, "alpha": 0.5}, "labels": {},
            "data": {"symbols": ["BTCUSDT"], "interval": "5"}, "metrics": {}}
    good = {"cases": {"taker": {"threshold": 0.3, "hold_bars": 3}}}
    p = tmp_path / "a.npz"
    save_artifact(p, weights=mlp.weights, biases=mlp.biases, activations=mlp.activations,
                  feature_mean=np.zeros(f), feature_std=np.ones(f), manifest={**base, "policy": good})
    assert load_artifact(p).manifest["policy"] == good
    for bad, field in (({"cases": {"taker": {"threshold": 1.5, "hold_bars": 1}}}, "threshold"),
                       ({"cases": {"taker": {"threshold": 0.1, "hold_bars": 0}}}, "hold_bars"),
                       ({"cases": {}}, "policy")):
        with pytest.raises(ArtifactError, match=field):  # save_artifact reads its file back, so it refuses too
            save_artifact(p, weights=mlp.weights, biases=mlp.biases, activations=mlp.activations,
                          feature_mean=np.zeros(f), feature_std=np.ones(f), manifest={**base, "policy": bad})


@pytest.fixture
def router_good(tmp_path):
    """A valid router artifact (six random students)."""
    path = tmp_path / "router.npz"
    write_router_artifact(path)
    return path


@pytest.mark.parametrize(("over", "words"), [
    ({"regimes": 5}, "router.regimes"),
    ({"regimes": 6.0}, "router.regimes"),
    ({"vol_feature": "rvol_20"}, "router.vol_feature"),
    ({"trend_feature": "ret_5"}, "router.trend_feature"),
    ({"vol_edges": [0.002, 0.001]}, "router.vol_edges"),
    ({"vol_edges": [0.001, None]}, "router.vol_edges"),
    ({"vol_edges": [0.001]}, "router.vol_edges"),
    ({"vol_edges": "low"}, "router.vol_edges"),
])
def test_bad_router_fields_are_named(tmp_path, router_good, over, words):
    """Each bad router field is refused by name, even with a matching content hash."""
    from daemon.core.artifact import _content_hash

    art = load_artifact(router_good)
    m = dict(art.manifest, router={**art.manifest["router"], **over})
    m["model_id"] = _content_hash(art.mlp, art.feature_mean, art.feature_std, m)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mlp=art.mlp, feature_mean=art.feature_mean, feature_std=art.feature_std,
             manifest=np.frombuffer(json.dumps(m).encode(), dtype=np.uint8))
    with pytest.raises(ArtifactError, match=words.replace(".", r"\.")):
        load_artifact(bad)


def test_router_arrays_must_hold_every_student(tmp_path, router_good, good):
    """A router manifest over one student's arrays, a plain manifest over six students' arrays, a bad fifth
    student, a zero std and an unservable last student are all refused, naming the field."""
    from daemon.core.artifact import _content_hash

    art, plain = load_artifact(router_good), load_artifact(good)

    def write(mlp, mean, std, manifest):
        m = dict(manifest)
        m["model_id"] = _content_hash(mlp, mean, std, m)
        path = tmp_path / "bad.npz"
        np.savez(path, mlp=mlp, feature_mean=mean, feature_std=std,
                 manifest=np.frombuffer(json.dumps(m).encode(), dtype=np.uint8))
        return path

    with pytest.raises(ArtifactError, match="mlp: shape"):
        load_artifact(write(plain.mlp, plain.feature_mean, plain.feature_std,
                            dict(plain.manifest, router=art.manifest["router"])))
    with pytest.raises(ArtifactError, match="mlp: shape"):
        load_artifact(write(art.mlp, art.feature_mean, art.feature_std,
                            {k: v for k, v in art.manifest.items() if k != "router"}))
    one = len(art.mlp) // 6
    mlp = art.mlp.copy()
    mlp[4 * one + 1] = 12  # the fifth student's packed input size
    with pytest.raises(ArtifactError, match=r"mlp \(student 4\): packed layer sizes"):
        load_artifact(write(mlp, art.feature_mean, art.feature_std, art.manifest))
    std = art.feature_std.copy()
    std[3 * 11 + 2] = 0.0
    with pytest.raises(ArtifactError, match="feature_std"):
        load_artifact(write(art.mlp, art.feature_mean, std, art.manifest))
    mlp = art.mlp.copy()
    mlp[5 * one + 8 :] *= 1e200  # the last student's weights (past its 8-value header): finite, not servable
    with pytest.raises(ArtifactError, match="student 5: non-finite output"):
        load_artifact(write(mlp, art.feature_mean, art.feature_std, art.manifest))
