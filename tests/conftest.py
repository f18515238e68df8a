"""Shared fixtures: real sample candles from data/, artifacts built from seeded random weights, and the
compiled student step those artifacts need, built once per session (the daemon never builds one)."""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np
import pytest

from daemon.core.artifact import load_artifact, save_artifact
from daemon.core.kernel_store import KERNEL_DIR_ENV
from kernels.features import features_batch
from kernels.layout import FEATURE_NAMES

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


# For tests that compare compiled code with compiled code or compile ahead of time: under NUMBA_DISABLE_JIT
# (the coverage run) kernels execute as Python, whose libm can differ from LLVM's in the last bit.
needs_jit = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="NUMBA_DISABLE_JIT: nothing is compiled")


def load_csv(path) -> np.ndarray:
    """Rows of start_ms, open, high, low, close, volume as float64 (n, 6)."""
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)


def random_student(seed: int = 0, sizes=(len(FEATURE_NAMES), 16, 8, 3), activations=("relu", "relu", "linear")):
    """Seeded random student weights with output scaled so probabilities are not saturated."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 1 / np.sqrt(sizes[k]), size=(sizes[k + 1], sizes[k])) for k in range(len(sizes) - 1)]
    biases = [rng.normal(0, 0.1, size=sizes[k + 1]) for k in range(len(sizes) - 1)]
    return weights, biases, list(activations)


def write_random_artifact(path, *, seed: int = 0, interval: str = "5", symbols=("BTCUSDT",), architecture=None,
                          **overrides) -> str:
    """Write a valid artifact with random weights and real normalisation statistics; return its id.

    ``architecture``: (sizes, activations) for ``random_student``; its default when None.
    """
    bars = load_csv(DATA / "BTCUSDT-5m.csv")
    feats = features_batch(*(bars[:, i] for i in range(1, 6)))
    weights, biases, acts = random_student(seed, *(architecture or ()))
    manifest = {
        "normalisation": {"clip": 6.0},
        "distillation": {"temperature": 1.0, "alpha": 1.0},
        "labels": {"note": "random weights for tests"},
        "data": {"symbols": list(symbols), "interval": interval, "start_ms": int(bars[0, 0]), "end_ms": int(bars[-1, 0])},
        "metrics": {},
    }
    manifest.update(overrides)
    return save_artifact(
        path,
        weights=weights,
        biases=biases,
        activations=acts,
        feature_mean=np.nanmean(feats, axis=0),
        feature_std=np.nanstd(feats, axis=0),
        manifest=manifest,
    )


@pytest.fixture(scope="session")
def btc_5m() -> np.ndarray:
    """Two weeks of real BTCUSDT 5m candles (n, 6)."""
    return load_csv(DATA / "BTCUSDT-5m.csv")


@pytest.fixture
def random_artifact(tmp_path) -> Path:
    """Path of a valid artifact with seeded random weights, interval "5"."""
    path = tmp_path / "random.npz"
    write_random_artifact(path)
    return path


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # Set before any test module is imported, so environments copied at import time (for daemons run as
    # subprocesses) carry it too. pytest's cache directory keeps it across runs; the build is skipped
    # when a verified module is already there.
    cache = getattr(config, "cache", None)
    if cache is not None:
        directory = cache.mkdir("kdsignal-kernels")
    else:
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="kdsignal-kernels-"))
    config.stash[_KERNEL_DIR] = (directory, os.environ.get(KERNEL_DIR_ENV))
    os.environ[KERNEL_DIR_ENV] = str(directory)


def pytest_unconfigure(config):
    directory, before = config.stash.get(_KERNEL_DIR, (None, None))
    if directory is not None:
        if before is None:
            os.environ.pop(KERNEL_DIR_ENV, None)
        else:
            os.environ[KERNEL_DIR_ENV] = before


_KERNEL_DIR = pytest.StashKey[tuple]()


@pytest.fixture(scope="session", autouse=True)
def kernel_dir(request, tmp_path_factory) -> Path:
    """The kernel directory of this run (``$KDSIGNAL_KERNEL_DIR``, set in ``pytest_configure``) with the
    step for the test artifacts' architecture built once; a test that needs another architecture builds
    it into a directory of its own."""
    from daemon.core.model import student_vector
    from daemon.tools.kernel_build import build_kernel

    directory = request.config.stash[_KERNEL_DIR][0]
    if not numba.config.DISABLE_JIT:  # pycc cannot compile then; a module an earlier run built still serves
        artifact = tmp_path_factory.mktemp("kernel-artifact") / "default-architecture.npz"
        write_random_artifact(artifact)
        build_kernel(student_vector(load_artifact(artifact)), directory)
    return directory
