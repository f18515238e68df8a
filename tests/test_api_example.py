"""The README's Python API example, run as written: it prints what `kdsignal replay` signals for the same bars."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys

from daemon.aio.output import SignalWriter
from daemon.core.model import Model
from daemon.tools.replay import iter_kline_csv, replay
from tests.support import ROOT, child_env

README = ROOT / "README.md"
DATA = ROOT / "data" / "BTCUSDT-5m.csv"
ARTIFACT = ROOT / "models" / "default.npz"


def readme_example() -> str:
    """The README's ```python block that embeds the model (exactly one must exist)."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    found = [b for b in blocks if "from daemon.core.model import Model" in b]
    assert len(found) == 1, f"{len(found)} README python blocks import Model, expected 1"
    return found[0]


def replayed() -> list[tuple[int, str, dict]]:
    """(start, signal, probs) of every line `kdsignal replay` writes for data/BTCUSDT-5m.csv."""
    out = io.BytesIO()
    replay(iter_kline_csv(DATA, "5"), "BTCUSDT", "5", Model.load(ARTIFACT), SignalWriter(out))
    lines = [json.loads(x) for x in out.getvalue().decode().splitlines()]
    return [(x["start"], x["signal"], x["probs"]) for x in lines]


def test_readme_example_prints_what_replay_signals():
    """The example, run from the checkout, prints one line per replayed signal with the same class and probs."""
    code = readme_example()
    assert '"models/default.npz"' in code and '"data/BTCUSDT-5m.csv"' in code  # what replay() reads below
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    printed = []
    for line in run.stdout.splitlines():
        start, signal, probs = line.split(" ", 2)
        printed.append((int(start), signal, ast.literal_eval(probs)))
    expected = replayed()
    assert len(expected) > 3000  # every bar after warm-up: a real run, not a handful
    assert printed == expected  # dicts compare by value: same floats (repr round-trips), any key order
