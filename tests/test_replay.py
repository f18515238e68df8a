"""`kdsignal replay`: the golden session, determinism, parity with the live path, bad input.

The golden files in tests/golden/ are a recorded session (``session.csv``: WINDOW + 70 real BTCUSDT 5m bars), a fixed
artifact made from seeded random weights (``artifact.npz``) and the signal lines it must produce
(``signals.jsonl``). Regenerate them only deliberately:
``KDSIGNAL_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_replay.py -k golden_replay``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.aio.output import SignalWriter
from daemon.core.model import Model
from daemon.tools.fake_bybit import FakeBybit
from daemon.tools.replay import ReplayError, iter_kline_csv, read_kline_csv, replay
from kernels.layout import WINDOW
from tests.support import OPEN_INDEX, ROOT, InProcessDaemon, LineSink

GOLDEN = Path(__file__).resolve().parent / "golden"
SESSION, ARTIFACT, SIGNALS = GOLDEN / "session.csv", GOLDEN / "artifact.npz", GOLDEN / "signals.jsonl"
SESSION_BARS = WINDOW + 70  # warm-up, then 71 signalled bars
GOLDEN_SLICE = slice(1000, 1000 + SESSION_BARS)  # rows of data/BTCUSDT-5m.csv recorded as the session


def _regenerate() -> None:
    from tests.support import write_random_artifact

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


# ---------------------------------------------------------------------- hostile files
HEAD = "start_ms,open,high,low,close,volume"


def _session_lines() -> list[str]:
    """The golden session's data lines (no header)."""
    return SESSION.read_text().splitlines()[1:]


def _with_start(line: str, start: int) -> str:
    """A CSV line with another start."""
    return ",".join([str(start), *line.split(",")[1:]])


def _cli(path, *extra) -> subprocess.CompletedProcess:
    """`kdsignal replay` of ``path`` with the golden artifact."""
    return subprocess.run([sys.executable, "-m", "daemon", "replay", "--data", str(path), "--symbol", "BTCUSDT",
                           "--interval", "5", "--artifact", str(ARTIFACT), *extra], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


@pytest.mark.parametrize(("change", "words"), [
    (lambda ls: [*ls[:50], _with_start(ls[50], int(ls[50].split(",")[0]) + 1), *ls[51:]],
     r":52: start_ms \d+ is off the 300000 ms grid of interval 5 \(by 1 ms\)"),
    (lambda ls: [*ls[:50], ls[51], ls[50], *ls[52:]], r":53: start_ms \d+ does not follow"),
    (lambda ls: [*ls[:50], ls[50], ls[50], *ls[51:]], r":53: start_ms (\d+) does not follow \1"),
    (lambda ls: [*ls[:50], _with_start(ls[50], 2 ** 62), *ls[51:]], r":52: start_ms 4611686018427387904 is after"),
    (lambda ls: [*ls[:50], "9" * 400 + ",1,1,1,1,1", *ls[51:]], r":52: start_ms is '9999"),
    (lambda ls: [*ls[:50], "1" * 5000, *ls[51:]], r":52: line longer than 4096 bytes"),
])
def test_off_grid_and_out_of_order_rows_stop_replay_naming_the_line(tmp_path, change, words):
    """Off-grid, out-of-order, repeated, absurd and overlong rows exit 2 with one line naming the line."""
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([HEAD, *change(_session_lines())]) + "\n")
    out = _cli(path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (message,) = [x for x in out.stderr.splitlines() if x.startswith("kdsignal replay:")]
    assert re.search(words, message), message


def test_non_utf8_file_names_the_line(tmp_path):
    """A CSV with a byte that is not UTF-8 is refused naming the line."""
    path = tmp_path / "latin.csv"
    lines = _session_lines()
    path.write_bytes("\n".join([HEAD, *lines[:3]]).encode() + b"\n1,caf\xe9,1,1,1,1\n")
    with pytest.raises(ReplayError, match=":5: not UTF-8"):
        read_kline_csv(path, "5")


def test_bad_prices_are_filled_forward_and_counted(tmp_path):
    """NaN, zero and negative prices, a negative volume and a high below the low are missing bars: replay
    carries on, signals them with finite probabilities (filled forward), and reports the count."""
    lines = _session_lines()
    at = WINDOW + 10

    def bad(line, **over):
        fields = dict(zip(HEAD.split(","), line.split(","), strict=True))
        fields.update(over)
        return ",".join(fields[k] for k in HEAD.split(","))

    lines[at] = bad(lines[at], close="NaN")
    lines[at + 1] = bad(lines[at + 1], open="0")
    lines[at + 2] = bad(lines[at + 2], low="-5")
    lines[at + 3] = bad(lines[at + 3], volume="-1")
    lines[at + 4] = bad(lines[at + 4], high="1", low="2")
    path = tmp_path / "nan.csv"
    path.write_text("\n".join([HEAD, *lines]) + "\n")
    out = _cli(path)
    assert out.returncode == 0, out.stderr
    got = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["start"] for x in got] == [int(x.split(",")[0]) for x in lines[WINDOW - 1:]]
    assert all(math.isfinite(p) for x in got for p in x["probs"].values())
    (event,) = [json.loads(x) for x in out.stderr.splitlines()]
    assert event["event"] == "bars_filled_forward" and event["bars"] == 5
    assert event["first_start_ms"] == int(lines[at].split(",")[0])


def test_a_gap_of_any_length_costs_the_same(tmp_path):
    """A start mistyped x10 (a gap of millions of bars) resets the state at once, the replay finishes, and a
    later stretch of the file warms up again and is signalled."""
    lines = _session_lines()
    typo = int(lines[-1].split(",")[0]) * 10
    typo -= typo % 300_000
    tail = [_with_start(line, typo + i * 300_000) for i, line in enumerate(lines)]
    path = tmp_path / "typo.csv"
    path.write_text("\n".join([HEAD, *lines, *tail]) + "\n")
    out = _cli(path)
    assert out.returncode == 0, out.stderr
    events = [json.loads(x) for x in out.stderr.splitlines()]
    gap_bars = (typo - int(lines[-1].split(",")[0])) // 300_000 - 1
    assert [(e["event"], e["bars"]) for e in events] == [("gap_unfilled", gap_bars), ("features_reset", gap_bars)]
    starts = [json.loads(x)["start"] for x in out.stdout.splitlines()]
    per_part = len(lines) - WINDOW + 1
    assert len(starts) == 2 * per_part and starts[per_part] == typo + (WINDOW - 1) * 300_000


def test_replay_streams_the_file(tmp_path):
    """Replay reads the file as it goes: memory stays flat over 30,000 rows and the rows before a bad line
    are signalled before the error."""
    import tracemalloc

    src = read_kline_csv(ROOT / "data" / "BTCUSDT-5m.csv")
    path = tmp_path / "long.csv"
    with open(path, "w") as f:
        f.write(HEAD + "\n")
        for i in range(30_000):
            r = src[i % len(src)]
            f.write(f"{src[0].start_ms + i * 300_000},{r.open},{r.high},{r.low},{r.close},{r.volume}\n")
        f.write("oops\n")
    model = Model.load(ARTIFACT)
    null = open(os.devnull, "wb")  # noqa: SIM115 - closed in the finally below, after tracemalloc stops
    tracemalloc.start()
    try:
        writer = SignalWriter(null)
        with pytest.raises(ReplayError, match=":30002: 1 fields"):
            replay(iter_kline_csv(path, "5"), "BTCUSDT", "5", model, writer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        null.close()
    assert writer.written == 30_000 - WINDOW + 1
    assert peak < 2 << 20
