"""``kdsignal build-kernel``: the compiled step has the generic kernel's bits, a truthful record, and is built once."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from daemon.core import kernel_store
from daemon.tools.kernel_build import BuildError, build_kernel
from kernels.features import features_batch
from kernels.layout import WINDOW
from tests.naive import student_reference
from tests.support import DATA, kdsignal, load_csv, needs_jit, packed_student, run_both, with_gaps

pytestmark = needs_jit

# An architecture no other test builds, so each test here compiles it into a directory of its own.
OTHER = ((11, 9, 3), ("relu", "linear"))


@pytest.mark.parametrize("sizes,acts", [((11, 16, 8, 3), ("relu", "relu", "linear")),
                                        ((11, 24, 12, 6, 3), ("relu", "tanh", "relu", "linear"))])
def test_built_step_equals_generic_bitwise_and_naive(sizes, acts, tmp_path):
    """On real candles with gaps, the ahead-of-time step matches the generic kernel in every slot, and NumPy."""
    bars = with_gaps(load_csv(DATA / "SOLUSDT-5m.csv")[:2000, 1:6], 5)
    model, w, b, a, mean, std = packed_student(3, sizes, acts, bars)
    build_kernel(model, tmp_path)
    step = kernel_store.load_step(model, tmp_path)
    assert not hasattr(step, "py_func") and step.__module__.startswith("kdsignal_step_")  # pycc's builtin, not numba's
    probs = run_both(step, model, bars)
    ref = student_reference(w, b, a, mean, std, 6.0, features_batch(*bars.T)[WINDOW - 1 :])
    assert np.isfinite(probs[WINDOW - 1 :]).all()
    np.testing.assert_allclose(probs[WINDOW - 1 :], ref, rtol=1e-10, atol=1e-14)


def test_record_names_the_module_and_its_hash(tmp_path, btc_5m):
    """The record beside the module holds its sha256 and the identity it was built for; a second build is skipped."""
    model = packed_student(5, *OTHER, btc_5m[:, 1:6])[0]
    path, built = build_kernel(model, tmp_path / "k")
    assert built and path.parent == tmp_path / "k"
    name = kernel_store.module_name(kernel_store.identity(model))
    record = json.loads(kernel_store.record_path(tmp_path / "k", name).read_text())
    assert record["file"] == path.name and record["sha256"] == kernel_store.file_sha256(path)
    assert record["identity"]["architecture"]["sizes"] == [11, 9, 3]
    assert {"numba", "llvmlite", "numpy", "kernels_hash"} <= set(record["identity"])
    assert not stat.S_IMODE(path.stat().st_mode) & 0o022
    assert build_kernel(model, tmp_path / "k") == (path, False)
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted([path.name, f"{name}.json"])
    path.write_bytes(path.read_bytes() + b"\0")  # tampered: the next build replaces it and removes this file
    rebuilt, built = build_kernel(model, tmp_path / "k")
    assert built and sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted([rebuilt.name, f"{name}.json"])


def test_build_refuses_a_directory_others_can_write(tmp_path, btc_5m):
    """Building into a group-writable directory is refused: the daemon would refuse to load from it."""
    model = packed_student(5, *OTHER, btc_5m[:, 1:6])[0]
    (tmp_path / "k").mkdir()
    os.chmod(tmp_path / "k", 0o775)
    with pytest.raises(BuildError, match="writable by its group"):
        build_kernel(model, tmp_path / "k")


def test_cli_builds_from_config_into_its_kernel_dir(tmp_path, random_artifact):
    """``build-kernel --config`` builds the configured step into [model].kernel_dir, then finds it current."""
    cfg = tmp_path / "kdsignal.toml"
    cfg.write_text(f'[model]\nartifact = "{random_artifact}"\nkernel_dir = "kernels"\n')
    first = kdsignal("build-kernel", "--config", str(cfg))
    assert first.returncode == 0, first.stderr
    assert "built" in first.stdout and str(tmp_path / "kernels") in first.stdout
    second = kdsignal("build-kernel", "--config", str(cfg))
    assert second.returncode == 0 and "up to date" in second.stdout


def test_cli_bad_artifact_exits_78(tmp_path):
    """A missing artifact is named, exit 78."""
    out = kdsignal("build-kernel", "--artifact", str(tmp_path / "nope.npz"), "--kernel-dir", str(tmp_path / "k"))
    assert out.returncode == 78 and "nope.npz" in out.stderr and "Traceback" not in out.stderr


def test_failed_compile_leaves_nothing_behind(tmp_path, random_artifact):
    """With no working C compiler the build exits 78 saying so, and leaves no module, record or work directory."""
    env = dict(os.environ, CC="/bin/false")  # distutils, which numba.pycc builds with, takes the compiler from $CC
    # A fresh architecture: the default one may already be in the directory's parent cache.
    out = kdsignal("build-kernel", "--artifact", str(random_artifact), "--kernel-dir", str(tmp_path / "k"), env=env)
    assert out.returncode == 78 and "compiling" in out.stderr and "Traceback" not in out.stderr
    assert list((tmp_path / "k").iterdir()) == []


def test_train_builds_the_kernel_of_the_artifact_it_wrote(tmp_path, monkeypatch):
    """``kdsignal train``'s last step builds the new artifact's step into the kernel directory, so it can be served."""
    from daemon.core.model import Model
    from daemon.training.train import _build_kernel
    from tests.support import write_random_artifact

    monkeypatch.setenv(kernel_store.KERNEL_DIR_ENV, str(tmp_path / "k"))
    artifact = tmp_path / "new.npz"
    write_random_artifact(artifact, architecture=OTHER)
    path = _build_kernel(artifact)
    assert path is not None and os.path.dirname(path) == str(tmp_path / "k")
    assert Model.load(artifact).kernel_note == "aot"


def test_cli_builds_nothing_for_a_jit_config(tmp_path, random_artifact):
    """With [model] kernel = "jit" the configuration needs no compiled step, and build-kernel says so."""
    cfg = tmp_path / "kdsignal.toml"
    cfg.write_text(f'[model]\nartifact = "{random_artifact}"\nkernel = "jit"\nkernel_dir = "kernels"\n')
    out = kdsignal("build-kernel", "--config", str(cfg))
    assert out.returncode == 0 and "nothing to build" in out.stdout and not (tmp_path / "kernels").exists()
