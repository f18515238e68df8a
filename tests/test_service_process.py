"""`kdsignal run` as a real process: SIGTERM, SIGHUP reload and log reopen, start-up refusals, layering."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daemon.tools.fake_bybit import FakeBybit
from tests.support import (
    BAR_MS,
    OPEN_INDEX,
    ROOT,
    Proc,
    child_env,
    log_events,
    run_daemon,
    sample_rows,
    wait_settled,
    wait_until,
    write_config,
    write_random_artifact,
)


async def _started(fake, log):
    await wait_until(lambda: fake.subscribed("kline.5.BTCUSDT")
                     and any(e["event"] == "warmup_loaded" for e in log_events(log)), 30, "daemon start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signal_exits_zero_without_a_partial_line(tmp_path, sig):
    """SIGTERM or SIGINT while bars flow ends the process with 0, whole stdout lines and a flushed log."""
    log = tmp_path / "daemon.log"
    write_random_artifact(tmp_path / "a.npz")
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 360), "5", start_index=OPEN_INDEX) as fake:
        proc = await Proc().start(write_config(tmp_path / "c.toml", fake, log_file=log))
        await _started(fake, log)
        first = fake.open_start_ms
        await fake.step(2)
        assert [(await proc.line())["start"] for _ in range(2)] == [first, first + BAR_MS]
        player = asyncio.create_task(fake.play(0.01))
        await wait_until(lambda: fake.open_start_ms > first + 20 * BAR_MS, what="bars flowing")
        rc, rest = await proc.stop(sig)
        player.cancel()
    assert rc == 0
    assert rest == b"" or rest.endswith(b"\n")
    starts = [json.loads(x)["start"] for x in rest.decode().splitlines()]
    assert starts == list(range(first + 2 * BAR_MS, first + (2 + len(starts)) * BAR_MS, BAR_MS))
    events = [e["event"] for e in log_events(log)]
    assert events[-1] == "daemon_stopped" and "latency_summary" in events


def _read_to_eof(fd: int) -> bytes:
    """Everything written to the pipe ``fd`` until its writer closes it (blocking: run in a thread)."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_flat_out_burst_after_the_catch_up_is_signalled_bar_for_bar(tmp_path):
    """Once its subscription catch-up has settled, a daemon whose stdout is read as fast as it writes signals every
    bar of a 1,500-bar burst played flat out, live and in order: no gap, no re-warm."""
    log = tmp_path / "daemon.log"
    write_random_artifact(tmp_path / "a.npz")
    r, w = os.pipe()
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 1600), "5", start_index=OPEN_INDEX) as fake:
        config = write_config(tmp_path / "c.toml", fake, log_file=log)
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon", "run", "--config", str(config),
                                                 stdout=w, stderr=subprocess.DEVNULL, cwd=ROOT, env=child_env())
        os.close(w)
        # A thread reads stdout: the fake's flat-out step holds this event loop, and a reader in it would stall.
        out = asyncio.create_task(asyncio.to_thread(_read_to_eof, r))
        try:
            first = await wait_settled(fake, log)
            await fake.step(1499)
            last = fake.open_start_ms - BAR_MS
            await wait_until(lambda: any(e["event"] == "signal_emitted" and e["start"] == last
                                         for e in log_events(log)), 30, "the last bar signalled")
            p.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(p.wait(), 20)
            lines = [json.loads(x) for x in (await asyncio.wait_for(out, 20)).splitlines()]
        finally:
            if p.returncode is None:
                p.kill()
                await p.wait()
            await out
            os.close(r)
    assert [x["start"] for x in lines] == list(range(first, last + BAR_MS, BAR_MS)) and last - first == 1499 * BAR_MS
    assert not any(x["backfill"] for x in lines) and rc == 0
    events = {e["event"] for e in log_events(log)}
    assert not events & {"features_reset", "gap_unfilled", "gap_backfilled", "signal_dropped"}


async def test_sighup_reopens_the_log_and_reloads_only_a_valid_artifact(tmp_path):
    """SIGHUP reopens the log (logrotate) and swaps the artifact; a broken artifact keeps the old model."""
    log, artifact = tmp_path / "daemon.log", tmp_path / "a.npz"
    old_id = write_random_artifact(artifact, seed=1)
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 60), "5", start_index=OPEN_INDEX) as fake:
        proc = await Proc().start(write_config(tmp_path / "c.toml", fake, artifact=artifact, log_file=log))
        await _started(fake, log)
        await fake.step(1)
        assert (await proc.line())["model"] == old_id
        # logrotate moves the file, then signals; the artifact is broken at that moment.
        log.rename(tmp_path / "daemon.log.1")
        artifact.write_bytes(b"garbage")
        proc.p.send_signal(signal.SIGHUP)
        await wait_until(lambda: any(e["event"] == "model_reload_failed" for e in log_events(log)), 20,
                         "reload failure in the reopened log")
        await fake.step(1)
        assert (await proc.line())["model"] == old_id
        write_random_artifact(tmp_path / "b.npz", seed=2)
        os.replace(tmp_path / "b.npz", artifact)
        new_id = write_random_artifact(tmp_path / "c.npz", seed=2)
        proc.p.send_signal(signal.SIGHUP)
        await wait_until(lambda: any(e["event"] == "model_reloaded" for e in log_events(log)), 20, "reload")
        await fake.step(1)
        line = await proc.line()
        rc, _ = await proc.stop()
    assert line["model"] == new_id != old_id and rc == 0
    rotated = log_events(tmp_path / "daemon.log.1")
    assert rotated[0]["event"] == "daemon_started" and "model_reload_failed" not in [e["event"] for e in rotated]
    assert next(e["event"] for e in log_events(log)) == "log_reopened"
    failed = next(e for e in log_events(log) if e["event"] == "model_reload_failed")
    assert failed["model"] == old_id and failed["level"] == "error"


def catches(pid: int, sig: int) -> bool:
    """True once process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (sig - 1) & 1)


async def test_sighup_from_the_first_moment_does_not_end_the_process(tmp_path):
    """SIGHUP sent again and again from the moment the process can catch it, through start-up, never kills it."""
    log = tmp_path / "daemon.log"
    write_random_artifact(tmp_path / "a.npz")
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 60), "5", start_index=OPEN_INDEX) as fake:
        proc = await Proc().start(write_config(tmp_path / "c.toml", fake, log_file=log))
        pid = proc.p.pid
        await wait_until(lambda: catches(pid, signal.SIGHUP) or proc.p.returncode is not None, 20, "a SIGHUP handler")
        sent, deadline = 0, time.monotonic() + 30
        while proc.p.returncode is None and not any(e["event"] == "feed_subscribed" for e in log_events(log)):
            assert time.monotonic() < deadline, "the daemon never subscribed under a storm of SIGHUPs"
            proc.p.send_signal(signal.SIGHUP)
            sent += 1
            await asyncio.sleep(0.005)  # the scenario: a storm of SIGHUPs, one every few ms
        assert proc.p.returncode is None and sent > 0
        await _started(fake, log)
        await fake.step(1)
        line = await proc.line()
        rc, _ = await proc.stop()
    assert line["start"] == fake.open_start_ms - BAR_MS and rc == 0


EARLY = """
import importlib.abc, json, signal, sys
seen = {}
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "daemon.aio.service" and not seen:
            seen.update({s.name: signal.getsignal(s) is not signal.SIG_DFL for s in (signal.SIGHUP, signal.SIGTERM)})
        return None
sys.meta_path.insert(0, Spy())
from daemon.cli import main
rc = main(["run", "--config", sys.argv[1]])
print(json.dumps({"rc": rc, "caught_before_import": seen}), file=sys.stderr)
"""


def test_signals_are_caught_before_the_service_is_imported(tmp_path):
    """`kdsignal run` handles SIGHUP and SIGTERM before it imports the service (the slow part of start-up)."""
    out = subprocess.run([sys.executable, "-c", EARLY, str(tmp_path / "missing.toml")], capture_output=True,
                         text=True, cwd=ROOT, env=child_env(), timeout=60)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report == {"rc": 78, "caught_before_import": {"SIGHUP": True, "SIGTERM": True}}


async def test_sigterm_during_startup_exits_zero(tmp_path):
    """SIGTERM while the process is still loading ends it with 0 and no output, not with the signal's status."""
    write_random_artifact(tmp_path / "a.npz")
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 60), "5", start_index=OPEN_INDEX) as fake:
        proc = await Proc().start(write_config(tmp_path / "c.toml", fake))
        await wait_until(lambda: catches(proc.p.pid, signal.SIGTERM), 20, "a SIGTERM handler")
        rc, rest = await proc.stop()
    assert rc == 0 and rest == b""


def test_interval_mismatch_stops_startup(tmp_path):
    """An artifact trained on 5-minute bars refuses a 1-minute feed: exit 78 naming both intervals."""
    write_random_artifact(tmp_path / "a.npz")
    out = run_daemon(write_config(tmp_path / "c.toml", interval="1"))
    assert out.returncode == 78
    assert "interval '5'" in out.stderr and "[feed].interval is '1'" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("extra, words", [
    ('[metrics]\nenabled = true\nport = "x"\n', "[metrics].port is 'x'"),
    ("[feed2]\n", "unknown table"),
])
def test_bad_config_stops_startup(tmp_path, extra, words):
    """A bad configuration exits 78 (do not restart) with a message naming the key."""
    write_random_artifact(tmp_path / "a.npz")
    out = run_daemon(write_config(tmp_path / "c.toml", extra=extra))
    assert out.returncode == 78 and words in out.stderr


def test_missing_artifact_stops_startup(tmp_path):
    """A missing artifact exits 78 naming the file."""
    out = run_daemon(write_config(tmp_path / "c.toml", artifact=str(tmp_path / "none.npz")))
    assert out.returncode == 78 and "none.npz" in out.stderr


LAYERING = """
import os, signal, sys, threading, time, json
from daemon.cli import main
log, config, session, artifact = sys.argv[1:5]

def stop_when_running():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(log) and "feed_disconnected" in open(log).read():
            break
        time.sleep(0.01)  # polling the log, with the deadline above
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=stop_when_running, daemon=True).start()
rc_run = main(["run", "--config", config])
rc_replay = main(["replay", "--data", session, "--symbol", "BTCUSDT", "--artifact", artifact])
banned = ("daemon.training", "lightgbm", "matplotlib", "onnx", "tqdm", "numba", "llvmlite", "scipy")
loaded = sorted(m for m in sys.modules if m.startswith(banned))
print(json.dumps({"rc": [rc_run, rc_replay], "loaded": loaded}), file=sys.stderr)
"""


def test_run_and_replay_load_neither_training_code_nor_numba(tmp_path):
    """A process that ran `kdsignal run` and `kdsignal replay` loaded neither the training code nor numba."""
    write_random_artifact(tmp_path / "a.npz")
    log = tmp_path / "d.log"
    config = write_config(tmp_path / "c.toml", log_file=log)
    golden = ROOT / "tests" / "golden"
    out = subprocess.run([sys.executable, "-c", LAYERING, str(log), str(config), str(golden / "session.csv"),
                          str(golden / "artifact.npz")], capture_output=True, text=True, cwd=ROOT, env=child_env(),
                         timeout=120)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report == {"rc": [0, 0], "loaded": []}
