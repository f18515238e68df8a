"""The log as people and machines read it: JSON or console by `[log] format`, journal priorities under systemd.

Each test runs a real child process whose stderr is a pipe, a pseudo-terminal or systemd's journal stream
(``JOURNAL_STREAM`` naming the pipe's device and inode, as systemd sets it) and parses what it wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from daemon.core.config import ConfigError, parse_config
from tests.support import ROOT, child_env, wait_until, write_config, write_random_artifact

# A child that configures logging as told (argv: file, format) and logs one event at each level.
CHILD = textwrap.dedent("""
    import sys, structlog
    from daemon.aio.output import configure_logging
    sink = configure_logging(sys.argv[1], "debug", sys.argv[2])
    log = structlog.get_logger().bind(symbol="BTCUSDT")
    log.debug("debug_fact", n=1)
    log.info("info_fact", n=2)
    log.warning("warning_fact", n=3)
    log.error("error_fact", n=4)
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("exception_fact", n=5)
    log.critical("critical_fact", n=6)
    if sink is not None:
        sink.close()
    """)
EVENTS = ["debug_fact", "info_fact", "warning_fact", "error_fact", "exception_fact", "critical_fact"]
PRIORITY = {"debug_fact": 7, "info_fact": 6, "warning_fact": 4, "error_fact": 3, "exception_fact": 3,
            "critical_fact": 2}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PREFIX = re.compile(r"^<([0-7])>")


def _stream_id(fd: int) -> str:
    """``JOURNAL_STREAM`` for ``fd``: its device and inode, as systemd writes them."""
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def run_child(fmt: str = "auto", file: str = "", *, tty: bool = False, journal: str | None = None,
              code: str = CHILD) -> str:
    """Run ``code`` with stderr on a pipe (or a pseudo-terminal); return what it wrote to stderr.

    ``journal``: ``"match"`` sets JOURNAL_STREAM to stderr's own device:inode, any other string is used as is.
    """
    if tty:
        reader, writer = pty.openpty()
    else:
        reader, writer = os.pipe()
    env = {k: v for k, v in child_env().items() if k != "JOURNAL_STREAM"}
    if journal is not None:
        env["JOURNAL_STREAM"] = _stream_id(writer) if journal == "match" else journal
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, file, fmt], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=writer)
        os.close(writer)
        chunks = []
        while True:
            try:
                chunk = os.read(reader, 1 << 16)
            except OSError:  # a pseudo-terminal's reader gets EIO once the child closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(reader)
    return b"".join(chunks).decode().replace("\r\n", "\n")  # a terminal turns \n into \r\n


def json_events(text: str) -> list[dict]:
    """Every line of ``text`` parsed as one JSON object (a line that is not one fails the test)."""
    return [json.loads(line) for line in text.splitlines()]


def test_auto_is_json_on_a_pipe():
    """With format auto and stderr a pipe, every line is one JSON object with level, timestamp and context."""
    events = json_events(run_child("auto"))
    assert [e["event"] for e in events] == EVENTS
    assert [e["level"] for e in events] == ["debug", "info", "warning", "error", "error", "critical"]
    assert all(e["symbol"] == "BTCUSDT" and e["timestamp"].endswith("Z") for e in events)
    assert "ZeroDivisionError" in events[4]["exception"]


def test_auto_is_the_console_renderer_on_a_terminal():
    """With format auto and stderr a terminal, lines are structlog's coloured console rendering, not JSON."""
    text = run_child("auto", tty=True)
    assert ANSI.search(text), text
    plain = ANSI.sub("", text)
    for event in EVENTS:
        assert event in plain
    assert not any(line.startswith("{") for line in plain.splitlines())
    warning = next(line for line in plain.splitlines() if "warning_fact" in line)
    assert "[warning  ]" in warning and "n=3" in warning and "symbol=BTCUSDT" in warning
    assert "Traceback (most recent call last)" in plain and "ZeroDivisionError" in plain


def test_console_is_forced_on_a_pipe_without_colours():
    """format = "console" renders for a person on a pipe too, without colour escapes."""
    text = run_child("console")
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert any("info_fact" in line and "[info     ]" in line for line in lines)
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_json_is_forced_on_a_terminal():
    """format = "json" gives JSON lines even when stderr is a terminal."""
    assert [e["event"] for e in json_events(run_child("json", tty=True))] == EVENTS


def test_auto_writes_json_to_a_file_even_from_a_terminal(tmp_path):
    """A log file is never a terminal: format auto writes JSON there while stderr is a terminal."""
    log = tmp_path / "d.log"
    assert run_child("auto", str(log), tty=True) == ""
    assert [e["event"] for e in json_events(log.read_text())] == EVENTS


def test_journal_lines_carry_sd_daemon_priorities():
    """On the journal's stream every stderr line starts with <N>, N the level's priority, so -p warning works."""
    text = run_child("auto", journal="match")
    lines = text.splitlines()
    assert len(lines) == len(EVENTS)
    seen = []
    for line in lines:
        m = PREFIX.match(line)
        assert m, line
        event = json.loads(line[m.end():])
        assert int(m.group(1)) == PRIORITY[event["event"]]
        seen.append((int(m.group(1)), event["event"]))
    # What `journalctl -p warning` shows: priorities 0..4.
    assert [e for p, e in seen if p <= 4] == ["warning_fact", "error_fact", "exception_fact", "critical_fact"]


def test_every_line_of_a_console_traceback_carries_the_priority():
    """Under the journal, a multi-line console event (a traceback) has the prefix on each line."""
    lines = run_child("console", journal="match").splitlines()
    assert lines and all(PREFIX.match(line) for line in lines), lines
    start = next(i for i, line in enumerate(lines) if "exception_fact" in line)
    end = next(i for i, line in enumerate(lines) if "critical_fact" in line)
    assert end - start > 3 and all(line.startswith("<3>") for line in lines[start:end])


@pytest.mark.parametrize("stream", ["1:2", "garbage", ""])
def test_an_inherited_or_bad_journal_stream_adds_no_prefix(stream):
    """JOURNAL_STREAM naming another stream (inherited by a child), or malformed, leaves lines unprefixed."""
    assert [e["event"] for e in json_events(run_child("auto", journal=stream))] == EVENTS


def test_a_log_file_under_the_journal_is_plain_json_and_its_notices_are_warnings():
    """With a log file, the file holds plain JSON; the failed-write notice on the journal's stderr is <4>."""
    code = textwrap.dedent("""
        import sys, structlog
        from daemon.aio.output import configure_logging
        sink = configure_logging(sys.argv[1], "info", sys.argv[2])
        structlog.get_logger().info("lost_fact")
        """)
    lines = run_child("auto", "/dev/full", journal="match", code=code).splitlines()
    assert len(lines) == 1 and lines[0].startswith("<4>kdsignal: cannot write the log /dev/full"), lines


def test_logging_never_raises_in_any_format_on_a_failing_stderr():
    """With stderr closed, every format under the journal logs without raising (the sink counts the loss)."""
    code = textwrap.dedent("""
        import os, sys, structlog
        from daemon.aio.output import configure_logging, log_sink
        out = os.dup(1)
        for fmt in ("json", "console", "auto"):
            configure_logging("", "info", fmt)
            os.close(2)  # EBADF from now on
            structlog.get_logger().warning("lost_fact")
            os.dup2(out, 2)
            os.write(out, f"{fmt} {log_sink().status()['write_errors']}\\n".encode())
        """)
    r, w = os.pipe()
    env = {**child_env(), "JOURNAL_STREAM": _stream_id(w)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=w, stderr=w, timeout=60)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    assert proc.returncode == 0, out
    assert out.splitlines() == ["json 1", "console 1", "auto 1"]


def test_log_format_is_validated_by_name():
    """[log].format accepts auto, json and console, and refuses anything else naming the key."""
    assert parse_config({}).log.format == "auto"
    for fmt in ("auto", "json", "console"):
        assert parse_config({"log": {"format": fmt}}).log.format == fmt
    with pytest.raises(ConfigError, match=r"\[log\]\.format is 'xml', expected one of auto, json, console"):
        parse_config({"log": {"format": "xml"}})


async def test_the_daemon_under_systemd_writes_priorities_journalctl_can_filter(tmp_path):
    """`kdsignal run` with JOURNAL_STREAM on its stderr: start-up is <6>, a dead exchange gives <4> and <3>."""
    write_random_artifact(tmp_path / "a.npz")
    config = write_config(tmp_path / "c.toml")  # closed local ports: connects fail, REST retries then fails
    r, w = os.pipe()
    env = {**child_env(), "JOURNAL_STREAM": _stream_id(w)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config), cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w)
    os.close(w)
    os.set_blocking(r, False)
    buf = bytearray()

    def events() -> list[tuple[int, dict]]:
        try:
            while chunk := os.read(r, 1 << 16):
                buf.extend(chunk)
        except BlockingIOError:
            pass
        out = []
        for line in bytes(buf).decode().splitlines(keepends=True):
            if line.endswith("\n"):
                m = PREFIX.match(line)
                assert m, line
                out.append((int(m.group(1)), json.loads(line[m.end():])))
        return out

    try:
        await wait_until(lambda: {e["level"] for _, e in events()} >= {"info", "warning", "error"}, 30,
                         "info, warning and error events on stderr")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 20)
    seen = events()
    os.close(r)
    assert rc == 0
    assert seen[0][0] == 6 and seen[0][1]["event"] == "daemon_started"
    for priority, event in seen:
        assert priority == {"debug": 7, "info": 6, "warning": 4, "error": 3}[event["level"]], event
    assert seen[-1][1]["event"] == "daemon_stopped"
