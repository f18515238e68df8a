"""`kdsignal run` under a stand-in systemd: sd_notify order, watchdog withheld while stalled, /metrics, logrotate."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.aio.service import run_cli
from daemon.core.exitcodes import EXIT_CONFIG
from daemon.ops.tail import LogFollower
from daemon.tools.fake_bybit import FakeBybit
from tests.support import (
    BAR_MS,
    OPEN_INDEX,
    ROOT,
    InProcessDaemon,
    NotifyReceiver,
    Proc,
    log_events,
    sample_rows,
    wait_until,
    write_config,
    write_random_artifact,
)

WATCHDOG_USEC = 200_000  # a ping every 0.1 s keeps the test short


@pytest.fixture
def receiver():
    """The NOTIFY_SOCKET a stand-in systemd listens on."""
    r = NotifyReceiver()
    yield r
    r.close()


@pytest.fixture
def spawned():
    """Daemon processes a test started; any still running at teardown (a failed test) are killed."""
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for p in procs:
        if p.returncode is None:
            p.kill()


async def spawn(spawned, config, env) -> Proc:
    """Start `kdsignal run --config config` with ``env``; registered for cleanup."""
    proc = Proc()
    proc.p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "run", "--config", str(config), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    spawned.append(proc.p)
    return proc


async def start_daemon(tmp_path, fake, receiver, spawned) -> Proc:
    """Start `kdsignal run` against ``fake`` with NOTIFY_SOCKET/WATCHDOG_USEC set as systemd would."""
    write_random_artifact(tmp_path / "a.npz")
    config = write_config(tmp_path / "c.toml", fake, log_file=tmp_path / "signals.log")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": receiver.env_value,
           "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    return await spawn(spawned, config, env)


def has(msg: dict, key: str) -> bool:
    """True if the sd_notify message sets ``key`` (WATCHDOG, READY, STOPPING)."""
    return msg.get(key) == "1"


def test_service_uses_the_exit_code_the_units_expect(tmp_path, capsys):
    """A bad configuration ends `run` with the exit code RestartPreventExitStatus names, and a message."""
    import argparse

    before = signal.getsignal(signal.SIGHUP)
    assert run_cli(argparse.Namespace(config=str(tmp_path / "missing.toml"))) == EXIT_CONFIG == 78
    assert "missing.toml" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGHUP) is before  # the early handlers are put back


@pytest.mark.slow
async def test_notify_order_ready_watchdog_stall_stopping(tmp_path, receiver, spawned):
    """READY after subscription and warm-up, WATCHDOG while frames flow, none while stalled, STOPPING last."""
    log = tmp_path / "signals.log"
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 160), "5", start_index=OPEN_INDEX) as fake:
        proc = await start_daemon(tmp_path, fake, receiver, spawned)
        await wait_until(lambda: any(has(m, "READY") for m in receiver.drain()), 60, "READY=1")
        assert fake.subscribed("kline.5.BTCUSDT")
        events = [e["event"] for e in log_events(log)]
        assert events.index("warmup_loaded") < events.index("sd_ready")
        await fake.step(2)
        await proc.line(), await proc.line()
        await wait_until(lambda: sum(has(m, "WATCHDOG") for m in receiver.drain()) >= 3, 20, "pings while healthy")

        # A long outage: every connection, old and new, goes half-open (no data, no acks, no pongs).
        fake.faults.stall_new_connections = 10**6
        fake.stall()
        await wait_until(lambda: any(m.get("STATUS", "").startswith("UNHEALTHY") for m in receiver.drain()), 30,
                         "the watchdog to notice the stall")
        # The process is alive and keeps reconnecting, yet pings stay withheld.
        accepted = fake.connections_accepted
        await wait_until(lambda: fake.connections_accepted >= accepted + 2, 30, "two reconnects while stalled")
        msgs = receiver.drain()
        withheld_at = next(i for i, m in enumerate(msgs) if m.get("STATUS", "").startswith("UNHEALTHY"))
        assert not any(has(m, "WATCHDOG") for m in msgs[withheld_at:])
        assert re.search(r"BTCUSDT.*; no frames for \d+ s$", msgs[withheld_at]["STATUS"])

        fake.faults.stall_new_connections = 0
        await wait_until(lambda: any(has(m, "WATCHDOG") for m in receiver.drain()[withheld_at:]), 30,
                         "pings to resume after recovery")
        rc, _ = await proc.stop()
    assert rc == 0
    msgs = receiver.drain()
    assert has(msgs[0], "READY") and sum(has(m, "READY") for m in msgs) == 1
    assert re.match(r"1 symbols \(BTCUSDT\) interval 5; \d+ signals; last inference .*; feed subscribed",
                    msgs[0]["STATUS"])
    assert has(msgs[-1], "STOPPING") and sum(has(m, "STOPPING") for m in msgs) == 1
    assert any(has(m, "WATCHDOG") for m in msgs[1:withheld_at])
    resumed = next(i for i in range(withheld_at, len(msgs)) if has(msgs[i], "WATCHDOG"))
    assert not msgs[resumed]["STATUS"].startswith("UNHEALTHY")
    # Signals seen before the stall show up in a later status line.
    assert any(re.search(r"; [1-9]\d* signals; last inference \d+\.\d\d us", m.get("STATUS", "")) for m in msgs)


async def test_no_notify_socket_means_no_messages_and_metrics_served(tmp_path, receiver, spawned):
    """Outside systemd nothing is sent; with [metrics] enabled /metrics and /healthz answer from the daemon."""
    log = tmp_path / "signals.log"
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 160), "5", start_index=OPEN_INDEX) as fake:
        write_random_artifact(tmp_path / "a.npz")
        config = write_config(tmp_path / "c.toml", fake, log_file=log,
                              extra="[metrics]\nenabled = true\nport = 0\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("NOTIFY_SOCKET", None)
        proc = await spawn(spawned, config, env)
        await wait_until(lambda: any(e["event"] == "metrics_listening" for e in log_events(log))
                         and fake.subscribed("kline.5.BTCUSDT")
                         and any(e["event"] == "warmup_loaded" for e in log_events(log)), 60, "daemon up")
        port = next(e["port"] for e in log_events(log) if e["event"] == "metrics_listening")
        await fake.step(3)
        lines = [await proc.line() for _ in range(3)]
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
            async with http.get("/metrics") as resp:
                families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
            async with http.get("/healthz") as resp:
                health_status, health = resp.status, await resp.json()
        rc, _ = await proc.stop()
    assert rc == 0 and receiver.drain() == []
    by_class = {s.labels["signal"]: s.value for s in families["kdsignal_signals"].samples
                if s.name == "kdsignal_signals_total"}
    assert sum(by_class.values()) == 3
    assert by_class[lines[0]["signal"]] >= 1
    frames = next(s.value for s in families["kdsignal_frames"].samples if s.name == "kdsignal_frames_total")
    assert frames > 0
    count = next(s.value for s in families["kdsignal_inference_seconds"].samples
                 if s.name == "kdsignal_inference_seconds_count")
    assert count == 3
    assert health["feed_connected"] is True and health["model_loaded"] is True
    # The fake's candles are from 2024, so by the wall clock they are old: the endpoint must say so.
    assert health_status == 503 and health["problems"][0].startswith("no closed candle for")


async def test_logrotate_with_sighup_loses_and_splits_no_line(tmp_path, receiver, spawned):
    """Rotating the log three times while bars stream keeps every signal exactly once, each line whole."""
    log = tmp_path / "signals.log"
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 360), "5", start_index=OPEN_INDEX) as fake:
        proc = await start_daemon(tmp_path, fake, receiver, spawned)
        await wait_until(lambda: any(has(m, "READY") for m in receiver.drain()), 60, "READY=1")
        follower = LogFollower(log)
        followed: list[dict] = []
        stdout: list[dict] = []

        def poll() -> None:
            followed.extend(json.loads(line) for line in follower.poll())

        async def stream(n: int) -> None:
            for _ in range(n):
                await fake.step(1)
                stdout.append(await proc.line())

        for round_no in range(1, 4):
            player = asyncio.create_task(stream(15))
            await wait_until(lambda n=15 * round_no - 10: len(stdout) >= n, 30, "bars flowing")
            poll()
            await rotate(tmp_path, log, proc.p.pid)
            poll()
            await player
            await wait_until(lambda: any(e["event"] == "log_reopened" for e in log_events(log)), 20, "reopen")
        await wait_until(lambda: (poll() or True) and sum(e["event"] == "signal_emitted" for e in followed)
                         >= len(stdout), 20, "the follower to catch up")
        rc, _ = await proc.stop()
    assert rc == 0
    follower.close()
    files = [log.with_name(f"signals.log.{n}") for n in (3, 2, 1)] + [log]  # oldest first
    assert sorted(tmp_path.glob("signals.log*")) == sorted(files)
    # Every line of every file parses (a split line would not), and each signal appears exactly once overall.
    logged = [e for f in files for e in log_events(f) if e["event"] == "signal_emitted"]
    starts = [s["start"] for s in stdout]
    assert starts == list(range(starts[0], starts[0] + len(starts) * BAR_MS, BAR_MS))
    assert [e["start"] for e in logged] == starts
    assert [e["start"] for e in followed if e["event"] == "signal_emitted"] == starts
    assert next(e["event"] for e in log_events(log)) == "log_reopened"


async def rotate(tmp_path, log, pid: int) -> None:
    """Rotate like production: the shipped logrotate rule with postrotate signalling the daemon (or by hand)."""
    if shutil.which("logrotate") is None:
        for n in range(3, 0, -1):  # no logrotate on this machine: the same rename-then-HUP by hand
            src = log.with_name(f"signals.log.{n - 1}" if n > 1 else "signals.log")
            if src.exists():
                os.rename(src, log.with_name(f"signals.log.{n}"))
        os.kill(pid, signal.SIGHUP)
        return
    rule = (ROOT / "systemd" / "kdsignal.logrotate").read_text()
    rule = rule.replace("/var/log/kdsignal/*.log /var/log/kdsignal/*/*.log", str(log))
    rule = re.sub(r"systemctl try-reload-or-restart .*", f"kill -HUP {pid}", rule)
    rule = rule.replace("    compress\n", "    nocompress\n")  # so the test can read every rotated file
    conf = tmp_path / "logrotate.conf"
    conf.write_text(rule)
    p = await asyncio.create_subprocess_exec("logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(conf),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await p.communicate()
    assert p.returncode == 0, out.decode()


async def test_in_process_supervision_counts_gaps_signals_and_status(random_artifact):
    """A lost close shows up as one gap of one bar in /metrics' counters, and the status line tracks signals."""
    async with (FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 160), "5", start_index=OPEN_INDEX) as fake,
                InProcessDaemon(fake, random_artifact) as d):
        sup = d.service.supervision
        assert sup.is_ready() and sup.frames_fresh()
        first = fake.open_start_ms
        await fake.step(1)
        fake.lose_next_close()
        await fake.step(2)
        await d.wait_for_start("BTCUSDT", first + 2 * BAR_MS)
        status = sup.status_text()
        got = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(sup.metrics.render().decode()) for s in f.samples}
    assert got[("kdsignal_gaps_backfilled_total", ())] == 1 and got[("kdsignal_bars_backfilled_total", ())] == 1
    assert got[("kdsignal_bars_unfilled_total", ())] == 0
    assert sum(v for (name, _), v in got.items() if name == "kdsignal_signals_total") == 3
    assert got[("kdsignal_inference_seconds_count", ())] == 3
    assert status.startswith("1 symbols (BTCUSDT) interval 5; 3 signals; last inference ")
    assert status.endswith("feed subscribed")
