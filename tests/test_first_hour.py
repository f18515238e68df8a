"""The first hour of a new user: ``--version``, a rehearsal whose /healthz is green (``fake-bybit --now``), a busy
port as one line and an exit code, and the packaging files (LICENSE, py.typed)."""

from __future__ import annotations

import socket
import subprocess
import sys
from importlib.metadata import version

import aiohttp

from daemon.core.parser import INTERVAL_MS
from daemon.tools.fake_bybit import EX_UNAVAILABLE, FakeBybit, shift_to_now
from tests.support import OPEN_INDEX, ROOT, InProcessDaemon, sample_rows, wait_until

ROWS = sample_rows(("BTCUSDT",), OPEN_INDEX + 20)


def test_version_flag():
    """``kdsignal --version`` prints the installed version and exits 0."""
    res = subprocess.run([sys.executable, "-m", "daemon", "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"kdsignal {version('kdsignal')}"


def test_busy_port_is_one_line_and_exit_69():
    """fake-bybit on a taken port says so in one line (no traceback) and exits 69 (EX_UNAVAILABLE)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "daemon", "fake-bybit", "--data", "data", "--port", str(port)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == EX_UNAVAILABLE == 69
    assert res.stderr.count("\n") == 1 and "address already in use" in res.stderr and "Traceback" not in res.stderr


def test_shift_to_now_opens_the_current_bar():
    """After the shift the bar at start_index contains now; spacing and prices are unchanged."""
    now_ms = 1_790_000_123_456
    shifted = shift_to_now(ROWS, "5", OPEN_INDEX, now_ms=now_ms)["BTCUSDT"]
    step = INTERVAL_MS["5"]
    assert shifted[OPEN_INDEX].start_ms <= now_ms < shifted[OPEN_INDEX].start_ms + step
    assert [r.start_ms - s.start_ms for r, s in zip(shifted, ROWS["BTCUSDT"], strict=True)] == \
        [shifted[0].start_ms - ROWS["BTCUSDT"][0].start_ms] * len(shifted)
    assert [r[1:] for r in shifted] == [r[1:] for r in ROWS["BTCUSDT"]]


async def healthz(rows, artifact) -> tuple[int, dict]:
    """Run the daemon with /healthz against a fake serving ``rows``; its answer after two closes."""
    async with FakeBybit(rows, "5", start_index=OPEN_INDEX) as fake:
        async with InProcessDaemon(fake, artifact, ("BTCUSDT",), metrics={"enabled": True, "port": 0}) as d:
            await fake.step(2)
            await d.wait_for_start("BTCUSDT", fake.open_start_ms - INTERVAL_MS["5"])
            metrics = d.service.supervision.metrics
            await wait_until(lambda: metrics.port is not None, what="the metrics endpoint")
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{metrics.port}/healthz") as resp:
                return resp.status, await resp.json()


async def test_rehearsal_with_now_is_healthy(random_artifact):
    """Recorded bars shifted to now give a green /healthz; the same bars unshifted are stale (503)."""
    status, body = await healthz(shift_to_now(ROWS, "5", OPEN_INDEX), random_artifact)
    assert status == 200 and body["status"] == "ok", body
    status, body = await healthz(ROWS, random_artifact)
    assert status == 503 and any("no closed candle" in p for p in body["problems"])


def test_license_and_py_typed_ship():
    """The MIT licence is at the root and both packages are marked typed (PEP 561)."""
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "daemon" / "py.typed").exists() and (ROOT / "kernels" / "py.typed").exists()
    assert 'daemon = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


async def test_metrics_has_process_and_tick_to_signal(random_artifact):
    """/metrics carries the process's resident memory and CPU, and one tick-to-signal sample per live line."""
    async with FakeBybit(ROWS, "5", start_index=OPEN_INDEX) as fake:
        async with InProcessDaemon(fake, random_artifact, ("BTCUSDT",)) as d:
            await fake.step(3)
            await d.wait_for_start("BTCUSDT", fake.open_start_ms - INTERVAL_MS["5"])
            text = d.service.supervision.metrics.render().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert values["process_resident_memory_bytes"] > 10e6 and values["process_cpu_seconds_total"] > 0
    assert values["kdsignal_tick_to_signal_seconds_count"] == 3
    assert 0 < values["kdsignal_tick_to_signal_seconds_sum"] < 3.0
