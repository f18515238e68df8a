"""The architecture-specialised student step gives the generic kernel's results bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from daemon.core.model import Model
from kernels.features import features_batch
from kernels.layout import pack_mlp, pack_student, student_state_size
from kernels.specialise import generate_source, specialised_step
from kernels.student import student_step
from tests.conftest import DATA, ROOT, load_csv, random_student
from tests.test_features import with_gaps


@pytest.mark.parametrize(
    "sizes,acts",
    [((11, 16, 8, 3), ("relu", "relu", "linear")), ((11, 32, 3), ("tanh", "linear")), ((11, 24, 12, 6, 3), ("relu", "tanh", "relu", "linear"))],
)
def test_specialised_equals_generic_bitwise(sizes, acts, tmp_path, monkeypatch):
    """On real candles with gaps, every state slot and return value matches the generic kernel."""
    monkeypatch.setenv("KDSIGNAL_CACHE_DIR", str(tmp_path))
    w, b, a = random_student(11, sizes, acts)
    bars = with_gaps(load_csv(DATA / "ETHUSDT-5m.csv")[:2000, 1:6], 7)
    feats = features_batch(*bars.T)
    model = pack_student(pack_mlp(w, b, a), np.nanmean(feats, 0), np.nanstd(feats, 0), 6.0)
    fast_fn = specialised_step(model)
    fast = np.zeros(student_state_size(model))
    slow = np.zeros_like(fast)
    for o, h, l, c, v in bars:
        assert fast_fn(fast, model, o, h, l, c, v) == student_step(slow, model, o, h, l, c, v)
        np.testing.assert_array_equal(fast, slow)
    generated = [m for n, m in sys.modules.items() if n.startswith("kdsignal_student_")]
    assert generated and all(os.path.exists(m.__file__) for m in generated)


def test_unwritable_cache_falls_back_to_generic(random_artifact, tmp_path):
    """When the cache directory cannot be created the model says so and serves the generic kernel."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = f"""
import numpy as np
from daemon.core.model import Model
model = Model.load({str(random_artifact)!r})
state = model.new_state()
for row in np.loadtxt({str(DATA / "BTCUSDT-5m.csv")!r}, delimiter=",", skiprows=1)[:150, 1:6]:
    state.update(*row)
print(model.kernel_note.split()[0], state.warm, round(float(state.probs.sum()), 12))
"""
    env = dict(os.environ, KDSIGNAL_CACHE_DIR=str(blocker / "sub"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.split() == ["generic", "True", "1.0"], out.stdout + out.stderr


def test_generated_source_names_its_architecture(random_artifact):
    """The generated module records the sizes it was made for and uses them as literals."""
    model = Model.load(random_artifact)
    src = generate_source(model.vector)
    assert "sizes [11, 16, 8, 3]" in src and "for i in range(16):" in src
