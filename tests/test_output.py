"""The output side under hostile conditions: a full or vanished log disk, a stuck or gone stdout reader, NaN."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import os
import signal
import sys

import pytest
import structlog
from structlog.testing import capture_logs

from daemon.aio.output import LogSink, ReopenableFile, SignalWriter, configure_logging, log_sink
from daemon.core.pipeline import Signal
from daemon.tools.fake_bybit import FakeBybit
from tests.support import (
    OPEN_INDEX,
    ROOT,
    Proc,
    child_env,
    sample_rows,
    wait_settled,
    wait_until,
    write_config,
    write_random_artifact,
)

F_SETPIPE_SZ = 1031  # Linux: shrink a pipe so a few lines fill it


def _signal(start_ms: int = 1_700_000_100_000, probs=(0.2, 0.5, 0.3), recv_ns: int = 0) -> Signal:
    """A signal event with the given (buy, hold, sell) probabilities."""
    buy, hold, sell = probs
    return Signal("BTCUSDT", "5", start_ms, "hold", ("sell", "hold", "buy"), (sell, hold, buy), 500, "abc", False,
                  recv_ns)


def _pipe(size: int = 4096) -> tuple[int, int]:
    """A pipe (read fd, write fd) holding at most ``size`` bytes."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, size)
    return r, w


def _read_all(fd: int) -> bytes:
    """Everything a non-blocking read of ``fd`` returns now."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------- log sinks
def test_a_full_disk_is_counted_reported_once_and_never_raises():
    """Writes to /dev/full (ENOSPC) are counted, mark the sink degraded, and give one rate-limited notice."""
    r, w = os.pipe()
    full = os.open("/dev/full", os.O_WRONLY)
    sink = LogSink(full, "/dev/full", notices_fd=w, notice_every_s=3600)
    for _ in range(100):
        assert sink.write('{"event": "x"}\n') == 0
    os.close(w)
    notices = os.read(r, 1 << 16).decode().splitlines()
    assert sink.write_errors == 100 and sink.degraded and sink.last_error.startswith("ENOSPC")
    assert len(notices) == 1 and "/dev/full" in notices[0] and "ENOSPC" in notices[0]
    assert sink.status() == {"path": "/dev/full", "degraded": True, "write_errors": 100,
                             "last_error": sink.last_error}
    good = os.open(os.devnull, os.O_WRONLY)
    os.dup2(good, full)  # the disk has room again (same descriptor, another file)
    assert sink.write('{"event": "y"}\n') == len('{"event": "y"}\n') and not sink.degraded
    for fd in (full, good, r):
        os.close(fd)


def test_failed_reopen_keeps_the_old_handle(tmp_path):
    """When the log's folder is gone at SIGHUP, reopen() returns False and lines keep going to the old file."""
    folder = tmp_path / "logs"
    folder.mkdir()
    sink = ReopenableFile(folder / "d.log")
    sink.write("one\n")
    folder.rename(tmp_path / "moved")
    assert sink.reopen() is False and sink.write_errors == 1 and "ENOENT" in sink.last_error
    sink.write("two\n")
    sink.close()
    assert (tmp_path / "moved" / "d.log").read_text() == "one\ntwo\n"


def test_reopen_follows_a_rotated_file(tmp_path):
    """After logrotate moves the file, reopen() starts a new file under the old name."""
    sink = ReopenableFile(tmp_path / "d.log")
    sink.write("old\n")
    (tmp_path / "d.log").rename(tmp_path / "d.log.1")
    assert sink.reopen() is True
    sink.write("new\n")
    sink.close()
    assert (tmp_path / "d.log").read_text() == "new\n" and (tmp_path / "d.log.1").read_text() == "old\n"


def test_structlog_on_a_full_disk_keeps_going():
    """With the log on /dev/full, logging never raises and log_sink() shows the degraded state."""
    try:
        sink = configure_logging("/dev/full")
        sink.notice_every_s = 3600
        log = structlog.get_logger("t")
        for i in range(10):
            log.info("signal_emitted", i=i)
        status = log_sink().status()
        assert status["degraded"] and status["write_errors"] == 10 and log_sink() is sink
    finally:
        sink.close()
        structlog.reset_defaults()


# ---------------------------------------------------------------------- signal writer
def test_a_nonfinite_probability_is_an_error_event_not_a_line(tmp_path):
    """NaN or inf probabilities never reach stdout: the writer logs signal_nonfinite and counts it."""
    out = tmp_path / "out"
    with open(out, "wb") as stream, capture_logs() as logs:
        writer = SignalWriter(stream, structlog.get_logger())
        writer.write(_signal(probs=(float("nan"), 0.5, 0.5)))
        writer.write(_signal(probs=(0.1, float("inf"), 0.0)))
        writer.write(_signal(probs=(0.2, 0.5, 0.3)))
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["probs"] == {"buy": 0.2, "hold": 0.5, "sell": 0.3}
    assert writer.nonfinite == 2 and writer.written == 1
    assert [e["event"] for e in logs] == ["signal_nonfinite", "signal_nonfinite", "signal_emitted"]
    assert logs[0]["log_level"] == "error" and logs[0]["probs"]["buy"] == "nan"


async def test_a_stuck_reader_never_blocks_the_loop_and_lines_stay_whole():
    """With a reader that stops reading, writes return at once, excess lines are dropped and counted, and what
    was buffered reaches the reader whole once it reads again."""
    r, w = _pipe()
    loop = asyncio.get_running_loop()
    with open(w, "wb", closefd=True) as stream, capture_logs() as logs:
        writer = SignalWriter(stream, structlog.get_logger(), max_pending_bytes=8192)
        assert writer.attach(loop)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)  # the scenario: a task that runs whenever the loop is free

        task = asyncio.create_task(ticker())
        for i in range(2000):
            writer.write(_signal(start_ms=i))
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the ticker run between batches of writes
        assert ticks > 0 and writer.dropped > 0 and writer.pending_bytes <= 8192
        assert writer.written + writer.dropped == 2000
        got = b""
        deadline = loop.time() + 10
        while len(got.splitlines()) < writer.written and loop.time() < deadline:
            got += _read_all(r)
            await asyncio.sleep(0.001)  # polling the pipe, with the deadline above
        task.cancel()
        writer.detach()
        assert os.get_blocking(w)  # the flags are back as they were (a pipe made here: blocking)
    os.close(r)
    starts = [json.loads(x)["start"] for x in got.splitlines()]  # a split line would fail to parse
    assert len(starts) == writer.written and starts == sorted(starts) and starts[0] == 0
    dropped_events = [e for e in logs if e["event"] == "signal_dropped"]
    assert len(dropped_events) == 1 and dropped_events[0]["reason"].startswith("stdout reader too slow")
    assert sum(e["event"] == "signal_emitted" for e in logs) == 2000  # the log keeps every signal


def test_attach_restores_the_fd_flags():
    """attach() sets O_NONBLOCK on the fd and detach() restores the flags it found."""
    r, w = os.pipe()
    loop = asyncio.new_event_loop()
    try:
        with open(w, "wb") as stream:
            writer = SignalWriter(stream)
            assert os.get_blocking(w)
            assert writer.attach(loop)
            assert not os.get_blocking(w)
            writer.detach()
            assert os.get_blocking(w)
    finally:
        loop.close()
        os.close(r)


async def test_a_gone_reader_is_counted_not_raised():
    """When the reader closes its end (EPIPE), lines are dropped and counted and write() never raises."""
    r, w = os.pipe()
    os.close(r)
    with open(w, "wb") as stream, capture_logs() as logs:
        writer = SignalWriter(stream, structlog.get_logger())
        writer.attach(asyncio.get_running_loop())
        for i in range(50):
            writer.write(_signal(start_ms=i))
        writer.detach()
    assert writer.dropped == 50 and writer.written == 0
    assert [e["reason"] for e in logs if e["event"] == "signal_dropped"] == ["stdout failed: Broken pipe"]


def test_unattached_writer_is_plain_and_blocking(tmp_path):
    """Without attach() (replay), the writer writes whole lines to any binary stream, and a broken pipe raises."""
    r, w = os.pipe()
    os.close(r)
    with open(w, "wb") as stream:
        with pytest.raises(BrokenPipeError):
            SignalWriter(stream).write(_signal())
        with pytest.raises(BrokenPipeError):
            stream.close()


# ---------------------------------------------------------------------- the daemon process
async def test_daemon_with_its_log_on_dev_full_keeps_signalling_and_exits_cleanly(tmp_path):
    """A daemon whose log is /dev/full prints every signal on stdout, notes the failure on stderr, exits 0."""
    write_random_artifact(tmp_path / "a.npz")
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 60), "5", start_index=OPEN_INDEX) as fake:
        proc = await Proc().start(write_config(tmp_path / "c.toml", fake, log_file="/dev/full"))
        await wait_until(lambda: fake.subscribed("kline.5.BTCUSDT") and len(fake.rest_requests) > 0, 30,
                         "daemon start")
        first = fake.open_start_ms
        starts = []
        for _ in range(3):
            await fake.step(1)
            starts.append((await proc.line())["start"])
        rc, _rest = await proc.stop()
        stderr = (await proc.p.stderr.read()).decode()
    assert starts == [first, first + 300_000, first + 600_000] and rc == 0
    assert "cannot write the log /dev/full" in stderr and "ENOSPC" in stderr
    assert "Traceback" not in stderr


async def test_daemon_whose_stdout_reader_stops_keeps_pinging_and_stops_on_sigterm(tmp_path):
    """With nobody reading stdout, the daemon keeps answering its keepalive and exits 0 on SIGTERM."""
    log = tmp_path / "d.log"
    write_random_artifact(tmp_path / "a.npz")
    gc.collect()  # a file object of an earlier test, finalised later, would close a reused fd number: our pipe's
    r, w = _pipe(4096)
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 1600), "5", start_index=OPEN_INDEX) as fake:
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config",
            str(write_config(tmp_path / "c.toml", fake, log_file=log)),
            stdout=w, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=child_env())
        os.close(w)
        try:
            # Settled first: a burst that races the daemon's subscription catch-up is a gap, not a stuck reader.
            first = await wait_settled(fake, log)
            await fake.step(1499)  # flat out: far more lines than the pipe and the writer's buffer hold
            last = fake.open_start_ms - 300_000
            await wait_until(lambda: f'"start": {last},' in log.read_text(), 30, "the last bar logged")
            await wait_until(lambda: "signal_dropped" in log.read_text(), 30, "dropped lines")
            pings = fake.pings
            await wait_until(lambda: fake.pings > pings + 2, 20, "pings while stdout is stuck")
            p.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(p.wait(), 20)
        finally:
            if p.returncode is None:
                p.kill()
                await p.wait()
            os.close(r)
    events = [json.loads(x) for x in log.read_text().splitlines()]
    starts = [e["start"] for e in events if e["event"] == "signal_emitted"]
    assert starts == list(range(first, last + 1, 300_000))  # every bar signalled once: no gap, no reset
    assert rc == 0 and events[-1]["event"] == "daemon_stopped" and any(e["event"] == "signal_dropped" for e in events)


async def test_daemon_keeps_its_log_when_sighup_cannot_reopen_it_and_still_reloads(tmp_path):
    """When the log's folder is gone at SIGHUP, the daemon keeps writing to the old file, logs
    log_reopen_failed there, still reloads the artifact, and keeps signalling."""
    folder = tmp_path / "logs"
    folder.mkdir()
    write_random_artifact(tmp_path / "a.npz", seed=1)
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 60), "5", start_index=OPEN_INDEX) as fake:
        proc = await Proc().start(write_config(tmp_path / "c.toml", fake, artifact=tmp_path / "a.npz",
                                               log_file=folder / "d.log"))
        await wait_until(lambda: fake.subscribed("kline.5.BTCUSDT") and (folder / "d.log").exists()
                         and "warmup_loaded" in (folder / "d.log").read_text(), 30, "daemon start")
        await fake.step(1)
        await proc.line()
        folder.rename(tmp_path / "moved")
        new_id = write_random_artifact(tmp_path / "a.npz", seed=2)
        proc.p.send_signal(signal.SIGHUP)
        moved = tmp_path / "moved" / "d.log"
        await wait_until(lambda: "model_reloaded" in moved.read_text(), 30, "reload logged in the old file")
        await fake.step(1)
        line = await proc.line()
        rc, _ = await proc.stop()
    events = [json.loads(x) for x in moved.read_text().splitlines()]
    failed = next(e for e in events if e["event"] == "log_reopen_failed")
    assert "ENOENT" in failed["error"] and line["model"] == new_id and rc == 0
    assert events[-1]["event"] == "daemon_stopped" and not folder.exists()


def test_a_missing_log_folder_exits_78(tmp_path):
    """A log file in a folder that does not exist stops start-up with exit 78 naming the folder."""
    from tests.support import run_daemon

    write_random_artifact(tmp_path / "a.npz")
    out = run_daemon(write_config(tmp_path / "c.toml", log_file=tmp_path / "nowhere" / "d.log"))
    assert out.returncode == 78 and "nowhere does not exist" in out.stderr and "Traceback" not in out.stderr
