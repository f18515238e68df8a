"""The artifact: a round trip that preserves the model, and a loader that names what is wrong."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from daemon.core.artifact import ArtifactError, load_artifact
from daemon.core.model import Model
from kernels.layout import WINDOW
from tests.conftest import write_random_artifact


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
