"""``kdsignal tail``: rows from real log lines, following across rename, recreate and truncation, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from daemon.ops.tail import LogFollower, format_event, format_signal, header, parse_line, start_offset
from tests.support import ROOT, wait_until

START_MS = 1_719_667_500_000  # 2024-06-29 13:25 UTC


def signal_line(i: int, symbol: str = "BTCUSDT", signal: str = "buy", backfill: bool = False) -> str:
    """A signal_emitted record as the daemon's JSON log writes it (one line, no newline)."""
    return json.dumps({
        "symbol": symbol, "interval": "5", "start": START_MS + i * 300_000, "signal": signal,
        "probs": {"buy": 0.41, "hold": 0.33, "sell": 0.26}, "inference_us": 0.612, "model": "ab12",
        "backfill": backfill, "event": "signal_emitted", "level": "info", "timestamp": "2024-06-29T13:30:01Z",
    })


def append(path, *lines: str, newline: bool = True) -> None:
    """Append lines to a file the way the daemon does: whole lines, flushed."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + ("\n" if newline else ""))


def starts(lines: list[str]) -> list[int]:
    """The bar index of each signal line, for comparing what a follower read with what was written."""
    return [(json.loads(s)["start"] - START_MS) // 300_000 for s in lines]


def test_format_signal_plain_row():
    """A signal row shows UTC bar time, symbol, signal, sell/hold/buy probabilities and latency, no escapes."""
    row = format_signal(json.loads(signal_line(0)))
    assert row.split() == ["2024-06-29", "13:25", "BTCUSDT", "buy", "0.260", "0.330", "0.410", "0.61", "us"]
    assert "\x1b" not in row
    assert "\x1b" not in header() and header().split()[:2] == ["BAR", "(UTC)"]
    assert format_signal(json.loads(signal_line(1, backfill=True))).endswith("backfill")


def test_format_signal_colours_signal_and_best_probability():
    """With colour the signal class and the winning probability are wrapped in ANSI codes."""
    row = format_signal(json.loads(signal_line(0, signal="sell")), color=True)
    assert "\x1b[1;31msell" in row
    assert "\x1b[1m0.410" in row  # buy has the highest probability
    assert "\x1b[1m" in header(color=True)


def test_format_tolerates_odd_fields():
    """Missing latency and non-numeric probabilities print as '-' instead of raising."""
    rec = {"symbol": "ETHUSDT", "start": "soon", "signal": "hold", "probs": {"buy": "x"}}
    assert format_signal(rec).split() == ["soon", "ETHUSDT", "hold", "-", "-", "-", "-"]


def test_alpha_lines_are_rows_with_alpha_bp():
    """An alpha model's line (position, alpha_bp [, sd_bp] instead of probs) is a row showing its alpha, not
    dropped; the columns after it stay aligned with a probability row."""
    base = {"symbol": "BTCUSDT", "interval": "5", "start": START_MS, "signal": "buy", "position": 1}
    gauss = format_signal(base | {"alpha_bp": 12.345, "sd_bp": 5.5, "inference_us": 0.61, "backfill": False})
    assert gauss.split() == ["2024-06-29", "13:25", "BTCUSDT", "buy", "alpha", "+12.35bp", "sd", "5.50bp", "0.61",
                             "us"]
    assert gauss.index("0.61 us") == format_signal(json.loads(signal_line(0))).index("0.61 us")
    point = format_signal(base | {"signal": "sell", "position": -1, "alpha_bp": -3.0, "backfill": True})
    assert point.split() == ["2024-06-29", "13:25", "BTCUSDT", "sell", "alpha", "-3.00bp", "-", "backfill"]
    out = run_tail("-", "--no-color", input=json.dumps(base | {"alpha_bp": 1.0}) + "\n")
    assert out.returncode == 0 and "alpha +1.00bp" in out.stdout


def test_format_event_and_parse_line():
    """Non-signal events become one summary line; partial or non-object lines parse to None."""
    rec = parse_line('{"event": "feed_reconnected", "level": "warning", "timestamp": "2024-06-29T13:30:01Z", '
                     '"attempt": 3}')
    assert format_event(rec) == "2024-06-29 13:30:01  warning feed_reconnected attempt=3"
    assert format_event(rec, color=True).startswith("\x1b[33m")
    assert parse_line('{"symbol": "BTC') is None
    assert parse_line("[1, 2]") is None
    assert parse_line("") is None


def test_follower_buffers_partial_line(tmp_path):
    """A line is returned only once its newline has been written."""
    log = tmp_path / "signals.log"
    append(log, signal_line(0))
    f = LogFollower(log)
    assert starts(f.poll()) == [0]
    line = signal_line(1)
    append(log, line[:20], newline=False)
    assert f.poll() == []
    append(log, line[20:])
    assert starts(f.poll()) == [1]
    f.close()


def test_follower_survives_rename_and_late_writes_to_old_file(tmp_path):
    """After logrotate renames the file, lines still written to the old one before SIGHUP are read, in order."""
    log = tmp_path / "signals.log"
    append(log, signal_line(0), signal_line(1))
    f = LogFollower(log)
    assert starts(f.poll()) == [0, 1]
    # The daemon's handle stays on the renamed file until it reopens; emulate it with an open handle.
    writer = open(log, "a", encoding="utf-8")  # noqa: SIM115
    os.rename(log, tmp_path / "signals.log.1")
    log.touch()  # logrotate's "create"
    writer.write(signal_line(2) + "\n")
    writer.flush()
    assert starts(f.poll()) == [2]
    writer.write(signal_line(3) + "\n")
    writer.close()
    append(log, signal_line(4))  # the daemon reopened (SIGHUP) and writes to the new file
    append(log, signal_line(5))
    assert starts(f.poll()) == [3, 4, 5]
    append(log, signal_line(6))
    assert starts(f.poll()) == [6]
    f.close()


def test_follower_handles_missing_file_then_nocreate_rotation(tmp_path):
    """A file that does not exist yet is picked up when it appears; a rotation without 'create' works too."""
    log = tmp_path / "signals.log"
    f = LogFollower(log)
    assert f.poll() == []
    append(log, signal_line(0))
    assert starts(f.poll()) == [0]
    os.rename(log, tmp_path / "signals.log.1")
    assert f.poll() == []
    append(log, signal_line(1))
    assert starts(f.poll()) == [1]
    f.close()


def test_follower_restarts_after_truncation(tmp_path):
    """copytruncate empties the file in place; the follower starts again from the top."""
    log = tmp_path / "signals.log"
    append(log, signal_line(0), signal_line(1))
    f = LogFollower(log)
    assert starts(f.poll()) == [0, 1]
    with open(log, "r+") as fh:
        fh.truncate(0)
    append(log, signal_line(2))
    assert starts(f.poll()) == [2]
    f.close()


def test_start_offset_finds_last_kept_lines(tmp_path):
    """start_offset lands on the n-th last kept line, across block boundaries and with an unfinished last line."""
    log = tmp_path / "signals.log"
    lines = []
    for i in range(50):
        lines.append(signal_line(i))
        lines.append('{"event": "latency_summary", "level": "info"}')
    append(log, *lines)
    append(log, '{"partial', newline=False)

    def keep(line: str) -> bool:
        return '"signal"' in line

    for block in (64, 4096, 1 << 20):
        off = start_offset(log, 3, keep, block=block)
        f = LogFollower(log, off)
        got = [s for s in f.poll() if keep(s)]
        f.close()
        assert starts(got) == [47, 48, 49], block
    assert start_offset(log, None, keep) == 0
    assert start_offset(log, 1000, keep) == 0
    assert start_offset(log, 0, keep) == log.stat().st_size
    assert start_offset(tmp_path / "absent.log", 3, keep) == 0


def run_tail(*args: str, **kw) -> subprocess.CompletedProcess:
    """Run ``kdsignal tail`` in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "daemon", "tail", *args], cwd=kw.pop("cwd", ROOT),
                          capture_output=True, text=True, timeout=60, **kw)


def test_cli_no_follow_prints_table_without_colour_on_a_pipe(tmp_path):
    """--no-follow prints the header and every signal row, skips other events, and uses no colour on a pipe."""
    log = tmp_path / "signals.log"
    append(log, signal_line(0), '{"event": "feed_connected", "level": "info"}', "garbage", signal_line(1, "ETHUSDT",
                                                                                                      "sell"))
    res = run_tail(str(log), "--no-follow")
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0].startswith("BAR (UTC)") and len(out) == 3
    assert out[1].split()[2:4] == ["BTCUSDT", "buy"] and out[2].split()[2:4] == ["ETHUSDT", "sell"]
    assert "\x1b" not in res.stdout
    coloured = run_tail(str(log), "--no-follow", "--color", "-n", "1")
    assert "\x1b[1;31msell" in coloured.stdout and "BTCUSDT" not in coloured.stdout
    events = run_tail(str(log), "--no-follow", "--events")
    assert "feed_connected" in events.stdout and "garbage" in events.stdout


def test_cli_default_file_from_config(tmp_path):
    """Without FILE, tail reads [log].file from --config (relative to the config's directory)."""
    append(tmp_path / "signals.log", signal_line(0))
    (tmp_path / "kd.toml").write_text('[log]\nfile = "signals.log"\n')
    res = run_tail("--config", str(tmp_path / "kd.toml"), "--no-follow")
    assert res.returncode == 0, res.stderr
    assert "BTCUSDT" in res.stdout
    (tmp_path / "nolog.toml").write_text("[log]\nlevel = \"info\"\n")
    res = run_tail("--config", str(tmp_path / "nolog.toml"), "--no-follow")
    assert res.returncode != 0 and "[log].file" in res.stderr
    missing = run_tail(str(tmp_path / "absent.log"), "--no-follow")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


async def test_cli_follows_across_rotation(tmp_path):
    """A running ``kdsignal tail`` shows rows written before and after a rename-and-recreate rotation."""
    log = tmp_path / "signals.log"
    append(log, *(signal_line(i) for i in range(15)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "tail", str(log), "--poll-s", "0.02", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    rows: list[str] = []

    async def reader() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            rows.append(raw.decode().rstrip("\n"))

    task = asyncio.create_task(reader())
    try:
        await wait_until(lambda: len(rows) >= 11, what="header and the last 10 rows")
        assert rows[0].startswith("BAR (UTC)")
        assert [r.split()[1] for r in rows[1:]] == [f"{13 + (i * 5 + 25) // 60}:{(i * 5 + 25) % 60:02d}"
                                                    for i in range(5, 15)]
        os.rename(log, tmp_path / "signals.log.1")
        append(log, signal_line(15), signal_line(16))
        await wait_until(lambda: len(rows) >= 13, what="rows from the new file")
        assert [r.split()[1] for r in rows[11:]] == ["14:40", "14:45"]
    finally:
        proc.terminate()
        await proc.wait()
        await task
    assert proc.returncode in (0, -15)


@pytest.mark.parametrize("flag", ["--color", "--color=always"])
def test_cli_colour_flag_forms(tmp_path, flag):
    """Both '--color' and '--color=always' force colour on a pipe."""
    log = tmp_path / "signals.log"
    append(log, signal_line(0))
    res = run_tail(str(log), "--no-follow", flag)
    assert "\x1b[1;32mbuy" in res.stdout


def test_replay_piped_into_tail_dash():
    """``kdsignal replay ... | kdsignal tail -`` prints one row per replayed line, in order."""
    replay = subprocess.Popen([sys.executable, "-m", "daemon", "replay", "--data", "tests/golden/session.csv",
                               "--symbol", "BTCUSDT", "--artifact", "tests/golden/artifact.npz"],
                              cwd=ROOT, stdout=subprocess.PIPE)
    try:
        res = subprocess.run([sys.executable, "-m", "daemon", "tail", "-"], cwd=ROOT, stdin=replay.stdout,
                             capture_output=True, text=True, timeout=120)
    finally:
        replay.stdout.close()
        assert replay.wait(timeout=60) == 0
    assert res.returncode == 0, res.stderr
    golden = [json.loads(x) for x in (ROOT / "tests/golden/signals.jsonl").read_text().splitlines()]
    rows = res.stdout.splitlines()
    assert rows[0].startswith("BAR (UTC)") and len(rows) == 1 + len(golden)
    assert [r.split()[3] for r in rows[1:]] == [g["signal"] for g in golden]
    last = run_tail("-", "-n", "2", input="\n".join(json.dumps(g) for g in golden) + "\n")
    assert [r.split()[3] for r in last.stdout.splitlines()[1:]] == [g["signal"] for g in golden[-2:]]


async def test_tail_dash_prints_each_row_as_its_line_arrives():
    """On a pipe that stays open, a row is printed as soon as its line is written, not at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "tail", "-", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        header_row = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert header_row.startswith(b"BAR (UTC)")
        proc.stdin.write((signal_line(0, "ETHUSDT", "sell") + "\n").encode())
        await proc.stdin.drain()
        row = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert row.split()[2:4] == [b"ETHUSDT", b"sell"]
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
