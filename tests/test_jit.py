"""numba's on-disk cache never serves kernels compiled from older sources of another kernel file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT

# Builds the ahead-of-time step as `kdsignal build-kernel` does (skipped when up to date), serves it, and runs
# the JIT-compiled specialised step beside it.
PROBE = """
import numpy as np, kernels
from daemon.core.artifact import load_artifact
from daemon.core.kernel_store import kernel_dir
from daemon.core.model import Model, student_vector
from daemon.tools.kernel_build import build_kernel
from kernels.specialise import specialised_step
build_kernel(student_vector(load_artifact({artifact!r})), kernel_dir())
m = Model.load({artifact!r})
s = m.new_state()
jit = specialised_step(m.vector)
sj = np.zeros_like(s.array)
for row in np.loadtxt({csv!r}, delimiter=",", skiprows=1)[:150, 1:6]:
    s.update(*row)
    jit(sj, m.vector, *row)
print(kernels.KERNELS_HASH, repr(float(s.probs[0])), m.kernel_note, repr(float(sj[m._probs_at])))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)  # recompiles every kernel module in a child process: minutes on a loaded 2-core machine
def test_changed_feature_kernel_is_recompiled_everywhere(tmp_path, random_artifact):
    """After features.py changes, the ahead-of-time and the JIT steps run the new feature code, not a cached copy."""
    for name in ("kernels", "daemon"):
        shutil.copytree(ROOT / name, tmp_path / "src" / name,
                        ignore=shutil.ignore_patterns("__pycache__", "training", "bench"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"), NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("KDSIGNAL_KERNEL_DIR", None)  # so the kernel directory is $NUMBA_CACHE_DIR/kdsignal, fresh
    code = PROBE.format(artifact=str(random_artifact), csv=str(ROOT / "data" / "BTCUSDT-5m.csv"))

    def probe():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                             check=True)
        return out.stdout.split()

    first = probe()
    assert probe() == first  # a warm cache gives the same result
    features = tmp_path / "src" / "kernels" / "features.py"
    # Change what a feature computes (hl_range, which every bar uses) without touching student.py.
    text = features.read_text()
    assert "    out[oi + 7] = hl[hi + n]\n" in text
    features.write_text(text.replace("    out[oi + 7] = hl[hi + n]\n", "    out[oi + 7] = 2.0 * hl[hi + n]\n"))
    changed = probe()
    assert changed[1] != first[1], "a cached kernel still ran the old feature code"
    assert changed[0] != first[0] and changed[2] == first[2] == "aot"
    assert changed[3] == changed[1] and first[3] == first[1], "the JIT and ahead-of-time kernels disagree"
