"""`kdsignal replay`: the golden session, determinism, parity with the live path, bad input.

The golden files in tests/golden/ are a recorded session (``session.csv``: WINDOW + 70 real BTCUSDT 5m bars), a fixed
artifact made from seeded random weights (``artifact.npz``) and the signal lines it must produce
(``signals.jsonl``). Regenerate them only deliberately:
``KDSIGNAL_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_replay.py -k golden_replay``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.tools.fake_bybit import FakeBybit
from daemon.core.model import Model
from daemon.aio.output import SignalWriter
from daemon.tools.replay import ReplayError, read_kline_csv, replay
from kernels.layout import WINDOW
from tests.daemon_support import OPEN_INDEX, ROOT, InProcessDaemon, LineSink

GOLDEN = Path(__file__).resolve().parent / "golden"
SESSION, ARTIFACT, SIGNALS = GOLDEN / "session.csv", GOLDEN / "artifact.npz", GOLDEN / "signals.jsonl"
SESSION_BARS = WINDOW + 70  # warm-up, then 71 signalled bars
GOLDEN_SLICE = slice(1000, 1000 + SESSION_BARS)  # rows of data/BTCUSDT-5m.csv recorded as the session


def _regenerate() -> None:
    from tests.conftest import write_random_artifact

    rows = read_kline_csv(ROOT / "data" / "BTCUSDT-5m.csv")[GOLDEN_SLICE]
    SESSION.write_text("start_ms,open,high,low,close,volume\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    write_random_artifact(ARTIFACT, seed=42)
    sink = LineSink()
    replay(read_kline_csv(SESSION), "BTCUSDT", "5", Model.load(ARTIFACT), SignalWriter(sink))
    SIGNALS.write_text("".join(json.dumps(_stable(x)) + "\n" for x in sink.lines))


def _stable(line: dict) -> dict:
    """A line without its timing, the one field that differs from run to run."""
    return {k: v for k, v in line.items() if k != "inference_us"}


def _replayed(path=SESSION, artifact=ARTIFACT) -> list[dict]:
    sink = LineSink()
    replay(read_kline_csv(path), "BTCUSDT", "5", Model.load(artifact), SignalWriter(sink))
    return sink.lines


def test_golden_replay():
    """Replaying the recorded session gives exactly the recorded signals (all but inference_us)."""
    if os.environ.get("KDSIGNAL_REGENERATE_GOLDEN"):
        _regenerate()
    expected = [json.loads(x) for x in SIGNALS.read_text().splitlines()]
    got = _replayed()
    assert [_stable(x) for x in got] == expected
    assert len(expected) == SESSION_BARS - Model.load(ARTIFACT).warmup_bars + 1
    assert all(x["inference_us"] > 0 for x in got)


def test_replay_twice_is_identical():
    """Two replays of the same file produce the same lines."""
    assert [_stable(x) for x in _replayed()] == [_stable(x) for x in _replayed()]


def test_cli_replay_prints_the_same_lines():
    """`kdsignal replay` in a subprocess prints the golden lines, each a whole JSON line."""
    out = subprocess.run([sys.executable, "-m", "daemon", "replay", "--data", str(SESSION), "--symbol", "BTCUSDT",
                          "--interval", "5", "--artifact", str(ARTIFACT)], capture_output=True, cwd=ROOT,
                         check=True)
    text = out.stdout.decode()
    assert text.endswith("\n")
    assert [_stable(json.loads(x)) for x in text.splitlines()] == [
        json.loads(x) for x in SIGNALS.read_text().splitlines()]


async def test_live_through_the_fake_equals_replay():
    """The golden session served by the fake Bybit gives the same signals as replaying the file."""
    rows = read_kline_csv(SESSION)
    expected = {x["start"]: x for x in (json.loads(line) for line in SIGNALS.read_text().splitlines())}
    async with FakeBybit({"BTCUSDT": rows}, "5", start_index=OPEN_INDEX) as fake, \
            InProcessDaemon(fake, ARTIFACT, ("BTCUSDT",)) as d:
        first = fake.open_start_ms
        await fake.step(len(rows) - OPEN_INDEX)
        await d.wait_for_start("BTCUSDT", rows[-1].start_ms)
    live = d.lines
    assert [x["start"] for x in live] == [r.start_ms for r in rows[OPEN_INDEX:]] and live[0]["start"] == first
    for x in live:
        assert _stable(x) == expected[x["start"]]


def test_gap_in_file_is_reported_and_stepped_over(tmp_path):
    """A hole in the CSV is reported once and the bars after it still follow replay's missing-bar policy."""
    lines = SESSION.read_text().splitlines()
    hole = WINDOW + 20  # line of the first missing bar (line 0 is the header): after warm-up
    (tmp_path / "holed.csv").write_text("\n".join(lines[:hole] + lines[hole + 2:]) + "\n")
    reports = []
    sink = LineSink()
    replay(read_kline_csv(tmp_path / "holed.csv"), "BTCUSDT", "5", Model.load(ARTIFACT), SignalWriter(sink),
           lambda first, n: reports.append((first, n)))
    starts = [x["start"] for x in sink.lines]
    missing = [int(lines[hole].split(",")[0]), int(lines[hole + 1].split(",")[0])]
    assert reports == [(missing[0], 2)]
    assert not set(missing) & set(starts) and len(starts) == SESSION_BARS - 2 - WINDOW + 1


@pytest.mark.parametrize("content, words", [
    ("start,open,high,low,close,volume\n", "header"),
    ("start_ms,open,high,low,close,volume\n1,2,3,1,2\n", ":2: 5 fields"),
    ("start_ms,open,high,low,close,volume\nx,1,1,1,1,1\n", ":2: start_ms is 'x'"),
    ("start_ms,open,high,low,close,volume\n1,1,1,1,abc,1\n", ":2: close is 'abc'"),
    ("start_ms,open,high,low,close,volume\n2,1,1,1,1,1\n1,1,1,1,1,1\n", ":3: start_ms 1 does not follow 2"),
])
def test_bad_csv_names_line_and_field(tmp_path, content, words):
    """A malformed CSV raises ReplayError naming the line and the field."""
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ReplayError, match=words):
        read_kline_csv(path)


def test_cli_refuses_an_artifact_of_another_interval(tmp_path):
    """`kdsignal replay --interval 1` with a 5-minute artifact exits 2 naming both intervals."""
    out = subprocess.run([sys.executable, "-m", "daemon", "replay", "--data", str(SESSION), "--symbol", "BTCUSDT",
                          "--interval", "1", "--artifact", str(ARTIFACT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "interval '5'" in out.stderr and "'1'" in out.stderr and out.stdout == ""
