"""The sink process: killed, stopped (a full pipe) or orphaned, the daemon signals on and counts what sinks lost."""

from __future__ import annotations

import os
import signal

import pytest

from daemon.aio.sinks.worker import LineReader
from daemon.tools.fake_bybit import FakeBybit
from tests.support import (
    OPEN_INDEX,
    SINK_SYMBOLS,
    Proc,
    SinkDaemon,
    log_events,
    metric_value,
    redis_sink_table,
    redis_stream_lines,
    sample_rows,
    wait_for,
    wait_until,
    write_config,
    write_random_artifact,
)


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (exited, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_line_reader_joins_lines_split_across_reads():
    """Bytes arriving in pieces come out as whole lines with their newline; EOF is reported once read."""
    r, w = os.pipe()
    got, eof = [], []
    reader = LineReader(r, got.append, lambda: eof.append(True))
    try:
        for piece in (b"a\nb", b"c\n", b"d\ne\n"):
            os.write(w, piece)
            reader.on_readable()
        os.close(w)
        w = -1
        reader.on_readable()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert got == [b"a\n", b"bc\n", b"d\n", b"e\n"] and reader.received == 4 and eof == [True]


async def test_killed_sink_process_is_restarted_and_counts_what_it_lost(redis, fake, random_artifact):
    """SIGKILL to the sink process mid-stream: stdout goes on, another process starts, every line is either
    delivered (in order) or counted as dropped, and lines after the restart arrive."""
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[redis_sink_table(redis.port)]) as d:
        sinks, sink = d.service.sinks, d.sink_named("redis")
        await fake.step(2)
        await wait_for(lambda: sink.sent == 4, "4 lines sent")
        first_pid = sinks.pid
        os.kill(first_pid, signal.SIGKILL)
        await fake.step(2)  # written while the process dies or is gone
        await wait_for(lambda: len(d.raw_lines) == 8, "stdout goes on")
        await wait_for(lambda: sinks.restarts == 1 and sinks.pid not in (None, first_pid) and sink.up,
                       "a new sink process, connected")
        await fake.step(2)
        await wait_for(lambda: len(d.raw_lines) == 12 and sink.sent + sink.dropped == 12,
                       "every line delivered or counted")
        got = await redis_stream_lines(redis.port)
        assert len(got) == sink.sent and sink.sent >= 8
        assert got[:4] == d.raw_lines[:4] and got[-4:] == d.raw_lines[-4:]
        assert [x for x in d.raw_lines if x in set(got)] == got  # in stdout order, none twice
        assert gone(first_pid)
        text = d.service.supervision.metrics.render().decode()
        assert metric_value(text, "kdsignal_sink_process_restarts_total") == 1
        assert metric_value(text, "kdsignal_sink_dropped_total", sink="redis", kind="redis") == sink.dropped


async def test_full_pipe_drops_and_counts_stdout_unaffected(redis, fake, random_artifact):
    """A stopped sink process fills its pipe: stdout gets every line, the rest are dropped and counted, and
    once it runs again it delivers what the pipe held, then new lines."""
    d = SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[redis_sink_table(redis.port)])
    d.service.sinks.pipe_bytes = 8192  # a few dozen lines fill it
    async with d:
        sinks, sink = d.service.sinks, d.sink_named("redis")
        await wait_for(lambda: sink.up, "connected")
        pid = sinks.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await fake.step(40)
            await wait_for(lambda: len(d.raw_lines) == 80, "stdout gets every line")
            assert sinks.pipe_dropped > 0 and sinks.written + sinks.pipe_dropped == 80
            assert sink.dropped == sinks.pipe_dropped
        finally:
            os.kill(pid, signal.SIGCONT)
        written = sinks.written
        await wait_for(lambda: sink.sent == written, "what the pipe held delivered")
        await fake.step(1)
        await wait_for(lambda: sink.sent == written + 2, "new lines delivered")
        assert await redis_stream_lines(redis.port) == d.raw_lines[:written] + d.raw_lines[80:]
        assert sinks.restarts == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_no_orphan_after_the_daemon_exits(tmp_path, sig):
    """Whether the daemon stops cleanly or is killed, its sink process does not outlive it."""
    log = tmp_path / "daemon.log"
    write_random_artifact(tmp_path / "a.npz")
    # Nobody listens on port 9: the sink process runs and retries, as with a dead server.
    sink = '\n[[sink]]\nkind = "redis"\nurl = "redis://127.0.0.1:9/0"\n'
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 40), "5", start_index=OPEN_INDEX) as fake:
        proc = await Proc().start(write_config(tmp_path / "c.toml", fake, log_file=log, extra=sink))
        events = ("sink_process_started", "warmup_loaded")
        await wait_until(lambda: fake.subscribed("kline.5.BTCUSDT")
                         and set(events) <= {e["event"] for e in log_events(log)}, 30, "daemon and sink process start")
        child = next(e["pid"] for e in log_events(log) if e["event"] == "sink_process_started")
        with open(f"/proc/{child}/stat", encoding="ascii") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == proc.p.pid  # the daemon's own child
        await fake.step(2)
        assert (await proc.line())["symbol"] == "BTCUSDT"
        rc, _ = await proc.stop(sig)
        assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        await wait_until(lambda: gone(child), 10, "the sink process gone")
    if sig == signal.SIGTERM:
        assert "daemon_stopped" in [e["event"] for e in log_events(log)]


async def test_clean_stop_delivers_what_stdout_got(redis, fake, random_artifact):
    """Stopping right after stdout got its lines: the sink process drains before it exits, nothing is lost."""
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[redis_sink_table(redis.port)]) as d:
        sinks = d.service.sinks
        await fake.step(20)
        await wait_for(lambda: len(d.raw_lines) == 40, "40 lines on stdout")
        pid = sinks.pid
    assert gone(pid) and sinks.pid is None
    assert await redis_stream_lines(redis.port) == d.raw_lines
    assert d.sink_named("redis").sent == 40
