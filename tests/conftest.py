"""Shared fixtures (helpers live in ``tests/support.py``): real sample candles from data/, artifacts built from
seeded random weights, and the compiled student step those artifacts need, built once per session (the daemon
never builds one)."""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np
import pytest

from daemon.core.artifact import load_artifact
from daemon.core.kernel_store import KERNEL_DIR_ENV
from daemon.tools.fake_bybit import FakeBybit
from tests.support import DATA, OPEN_INDEX, SINK_SYMBOLS, load_csv, redis_server, sample_rows, write_random_artifact


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


@pytest.fixture
def redis(tmp_path):
    """A redis-server on a free loopback port, stopped after the test."""
    server = redis_server(tmp_path)
    server.start()
    yield server
    server.stop()


_SINK_ROWS = sample_rows(SINK_SYMBOLS, OPEN_INDEX + 80)


@pytest.fixture
async def fake():
    """The fake exchange with real BTCUSDT and ETHUSDT bars (the sink tests'; a file needing other bars
    defines its own ``fake``, which wins)."""
    async with FakeBybit(_SINK_ROWS, "5", start_index=OPEN_INDEX) as f:
        yield f
