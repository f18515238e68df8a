"""The ahead-of-time compiled student step: the JIT kernels' bits, no numba in the process, a clear fallback."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from daemon.core.model import Model
from kernels.aot import AotUnavailable, aot_step, module_name
from kernels.features import features_batch
from kernels.layout import pack_mlp, pack_student, student_state_size
from kernels.student import student_batch, student_step
from tests.conftest import DATA, ROOT, load_csv, random_student
from tests.test_features import with_gaps

# Runs a model in a process of its own and reports what it served with and what it loaded.
PROBE = """
import json, sys
import numpy as np
from daemon.core.model import Model
model = Model.load(sys.argv[1])
state = model.new_state()
for row in np.loadtxt(sys.argv[2], delimiter=",", skiprows=1)[:300, 1:6]:
    state.update(*row)
print(json.dumps({"kernel": model.kernel_note, "probs": state.probs.tolist(),
                  "numba": "numba" in sys.modules, "llvmlite": "llvmlite" in sys.modules}))
"""


def packed_student(seed, sizes, acts, bars) -> np.ndarray:
    """A model vector with random weights and the feature statistics of ``bars``."""
    w, b, a = random_student(seed, sizes, acts)
    feats = features_batch(*bars.T)
    return pack_student(pack_mlp(w, b, a), np.nanmean(feats, 0), np.nanstd(feats, 0), 6.0)


def probe(artifact, env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(artifact), str(DATA / "BTCUSDT-5m.csv")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "sizes,acts",
    [((11, 16, 8, 3), ("relu", "relu", "linear")), ((11, 24, 12, 6, 3), ("relu", "tanh", "relu", "linear"))],
)
def test_aot_equals_generic_jit_bitwise(sizes, acts, tmp_path, monkeypatch):
    """On real candles with gaps, every state slot and return value matches the generic JIT kernel."""
    monkeypatch.setenv("KDSIGNAL_CACHE_DIR", str(tmp_path))
    bars = with_gaps(load_csv(DATA / "SOLUSDT-5m.csv")[:2000, 1:6], 5)
    model = packed_student(3, sizes, acts, bars)
    aot = aot_step(model)
    assert aot.__module__ == module_name(model) and not hasattr(aot, "py_func")  # a compiled builtin, not numba's
    fast = np.zeros(student_state_size(model))
    slow = np.zeros_like(fast)
    served = 0
    for o, h, l, c, v in bars:
        status = aot(fast, model, o, h, l, c, v)
        assert status == student_step(slow, model, o, h, l, c, v)
        np.testing.assert_array_equal(fast, slow)
        served += status >= 0
    assert served > 1500


def test_model_serves_aot_kernel_equal_to_batch(random_artifact, tmp_path, monkeypatch):
    """A loaded model serves through the ahead-of-time kernel, and its probabilities equal the batch form's."""
    monkeypatch.setenv("KDSIGNAL_CACHE_DIR", str(tmp_path / "cache"))
    model = Model.load(random_artifact)
    assert model.kernel_note == "aot"
    bars = load_csv(DATA / "ADAUSDT-5m.csv")[:, 1:6]
    state = model.new_state()
    got = np.full((len(bars), 3), np.nan)
    for t, row in enumerate(bars):
        if state.update(*row) >= 0:
            got[t] = state.probs
    want = np.empty_like(got)
    student_batch(model.vector, features_batch(*bars.T), want)
    np.testing.assert_array_equal(got, want)


def test_serving_process_never_loads_numba(random_artifact, tmp_path):
    """Built once, then a fresh process serves from the cached extension without numba or llvmlite."""
    env = dict(os.environ, KDSIGNAL_CACHE_DIR=str(tmp_path / "cache"))
    first, second = probe(random_artifact, env), probe(random_artifact, env)
    assert first["kernel"] == second["kernel"] == "aot"
    assert not second["numba"] and not second["llvmlite"]
    assert second["probs"] == first["probs"] and abs(sum(first["probs"]) - 1.0) < 1e-12


def test_failed_build_falls_back_to_jit_and_says_why(random_artifact, tmp_path):
    """With no working C compiler the model serves the JIT kernel, names the failure, and gives the same bits."""
    good = probe(random_artifact, dict(os.environ, KDSIGNAL_CACHE_DIR=str(tmp_path / "good")))
    # distutils, which numba.pycc builds with, takes the compiler from $CC.
    bad_env = dict(os.environ, KDSIGNAL_CACHE_DIR=str(tmp_path / "bad"), CC="/bin/false")
    bad = probe(random_artifact, bad_env)
    assert bad["kernel"].startswith("jit (no ahead-of-time kernel: build failed (exit"), bad["kernel"]
    assert bad["numba"] and bad["probs"] == good["probs"]
    assert not list((tmp_path / "bad").glob("*.so")), "a failed build left a module behind"


def test_unloadable_module_is_reported(tmp_path, monkeypatch, btc_5m):
    """A corrupt cached extension raises AotUnavailable naming the file (the model then falls back)."""
    monkeypatch.setenv("KDSIGNAL_CACHE_DIR", str(tmp_path))
    # An architecture no other test loads, so no process has this module imported already.
    other = packed_student(5, (11, 9, 3), ("relu", "linear"), btc_5m[:, 1:6])
    path = tmp_path / f"{module_name(other)}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    path.write_bytes(b"not an ELF file")
    with pytest.raises(AotUnavailable, match=str(path)):
        aot_step(other)


@pytest.mark.slow
def test_concurrent_builds_both_load(random_artifact, tmp_path):
    """Two processes building the same module at once (template instances) both serve it."""
    env = dict(os.environ, KDSIGNAL_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-c", PROBE, str(random_artifact), str(DATA / "BTCUSDT-5m.csv")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert [r["kernel"] for r in results] == ["aot", "aot"] and results[0]["probs"] == results[1]["probs"]
    assert len(list((tmp_path / "cache").glob("*.so"))) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()], "a build directory was left behind"
