"""Serving a compiled step: only a verified module is imported; anything else stops the daemon and replay with 78."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.core import kernel_store
from daemon.core.artifact import load_artifact
from daemon.core.kernel_store import KernelUnavailable
from daemon.core.model import Model, student_vector
from daemon.tools.kernel_build import build_kernel
from kernels.features import features_batch
from kernels.student import student_batch
from tests.support import DATA, ROOT, kdsignal, load_csv, needs_jit, write_random_artifact

pytestmark = needs_jit

# Serves a model in a process of its own and reports what it served with and what it loaded.
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


@pytest.fixture
def own_dir(tmp_path, random_artifact, kernel_dir):
    """A private kernel directory holding a copy of the session's build for ``random_artifact``: (directory, module)."""
    directory = tmp_path / "kernels"
    directory.mkdir()
    source, _ = build_kernel(student_vector(load_artifact(random_artifact)), kernel_dir)  # built already: a check
    name = kernel_store.module_name(kernel_store.identity(student_vector(load_artifact(random_artifact))))
    shutil.copy2(kernel_store.record_path(kernel_dir, name), directory)
    return directory, Path(shutil.copy2(source, directory))


def test_model_serves_the_built_step_equal_to_batch(random_artifact, own_dir):
    """A loaded model serves the module from its directory, and its probabilities equal the batch form's."""
    directory, _path = own_dir
    model = Model.load(random_artifact, kernel_dir=directory)
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


def test_missing_step_names_the_command(random_artifact, tmp_path):
    """With nothing built, loading raises KernelUnavailable naming the build-kernel command for this artifact."""
    command = f"kdsignal build-kernel --artifact {random_artifact} --kernel-dir {tmp_path / 'empty'}"
    with pytest.raises(KernelUnavailable, match=re.escape(command)):
        Model.load(random_artifact, kernel_dir=tmp_path / "empty")


def test_tampered_module_is_refused(random_artifact, own_dir):
    """A module whose bytes no longer match the recorded sha256 is not imported."""
    directory, path = own_dir
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(KernelUnavailable, match="sha256"):
        Model.load(random_artifact, kernel_dir=directory)


@pytest.mark.parametrize("target", ["module", "directory", "record"])
def test_writable_by_others_is_refused(random_artifact, own_dir, target):
    """A module, record or directory its group can write is not trusted, whatever its hash."""
    directory, path = own_dir
    name = kernel_store.module_name(kernel_store.identity(student_vector(load_artifact(random_artifact))))
    victim = {"module": path, "directory": directory, "record": kernel_store.record_path(directory, name)}[target]
    os.chmod(victim, victim.stat().st_mode | 0o020)
    with pytest.raises(KernelUnavailable, match="writable by its group"):
        Model.load(random_artifact, kernel_dir=directory)


def test_record_for_another_build_is_refused(random_artifact, own_dir):
    """A record whose identity differs from what this installation would build (another numba, say) is refused."""
    directory, _path = own_dir
    record_file = next(directory.glob("*.json"))
    record = json.loads(record_file.read_text())
    record["identity"]["numba"] = "0.0.1"
    record_file.write_text(json.dumps(record))
    with pytest.raises(KernelUnavailable, match="another identity"):
        Model.load(random_artifact, kernel_dir=directory)


def test_symlinked_module_is_refused(random_artifact, own_dir, tmp_path):
    """The recorded file must be a regular file in the directory, not a link to one elsewhere."""
    directory, path = own_dir
    elsewhere = tmp_path / "elsewhere.so"
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere)
    with pytest.raises(KernelUnavailable, match="not a regular file"):
        Model.load(random_artifact, kernel_dir=directory)


def test_fresh_process_serving_aot_imports_neither_numba_nor_llvmlite(random_artifact):
    """A fresh process serves the session's built step without numba or llvmlite, and gets the in-process bits."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(random_artifact), str(DATA / "BTCUSDT-5m.csv")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kernel"] == "aot" and not got["numba"] and not got["llvmlite"]
    state = Model.load(random_artifact).new_state()
    for row in load_csv(DATA / "BTCUSDT-5m.csv")[:300, 1:6]:
        state.update(*row)
    assert got["probs"] == state.probs.tolist()


def test_replay_without_a_built_step_exits_78(random_artifact, tmp_path):
    """``kdsignal replay`` with no compiled step exits 78 and names the command, without a traceback."""
    env = dict(os.environ, **{kernel_store.KERNEL_DIR_ENV: str(tmp_path / "empty")})
    out = kdsignal("replay", "--data", str(DATA / "BTCUSDT-5m.csv"), "--symbol", "BTCUSDT",
                   "--artifact", str(random_artifact), env=env, timeout=120)
    assert out.returncode == 78, out.stderr
    assert f"kdsignal build-kernel --artifact {random_artifact}" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_daemon_without_a_built_step_exits_78(tmp_path):
    """``kdsignal run`` for an architecture nobody built exits 78 before connecting, naming the command."""
    artifact = tmp_path / "other.npz"
    write_random_artifact(artifact, architecture=((11, 7, 3), ("relu", "linear")))
    cfg = tmp_path / "kdsignal.toml"
    # Port 9 on loopback: nothing listens there, and the daemon must stop before trying it anyway.
    cfg.write_text(f'[feed]\nws_url = "ws://127.0.0.1:9/ws"\nrest_url = "http://127.0.0.1:9"\nsymbols = ["BTCUSDT"]\n'
                   f'[model]\nartifact = "{artifact}"\nkernel_dir = "kernels"\n')
    out = kdsignal("run", "--config", str(cfg), timeout=120)
    assert out.returncode == 78, out.stderr
    assert "kdsignal build-kernel --artifact" in out.stderr and str(tmp_path / "kernels") in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "kernels").exists()  # the daemon built nothing, not even the directory


def test_daemon_with_jit_kernel_needs_no_build(tmp_path):
    """With [model] kernel = "jit" an architecture nobody built loads as configured, and nothing is written."""
    from daemon.core.config import load_config

    artifact = tmp_path / "other.npz"
    write_random_artifact(artifact, architecture=((11, 7, 3), ("relu", "linear")))
    cfg_file = tmp_path / "kdsignal.toml"
    cfg_file.write_text(f'[model]\nartifact = "{artifact}"\nkernel = "jit"\nkernel_dir = "kernels"\n')
    cfg = load_config(cfg_file)
    model = Model.load(cfg.model.artifact, kernel=cfg.model.kernel, kernel_dir=cfg.model.kernel_dir)
    assert model.kernel_note == "jit" and not (tmp_path / "kernels").exists()
