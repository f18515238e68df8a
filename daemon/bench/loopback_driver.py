"""Run the real daemon (``daemon.aio.service.Service``) for one loopback level and print what it measured.

``python -m daemon.bench.loopback_driver CONFIG SIGNALS_FILE SETTLE_S DURATION_S`` builds the service from a
configuration file exactly as ``kdsignal run`` does (same ``Service``, same logging to the configured file,
signal lines to ``SIGNALS_FILE``), waits until the feed is subscribed and every symbol's warm-up fetch has
finished, lets it settle, then records for ``DURATION_S`` seconds:

- tick-to-signal latency of every live signal: the service's own measurement (``perf_counter_ns`` when the
  frame arrived to just after its line was written and flushed), collected by swapping the writer's
  ``latency`` recorder (public attribute, duck-typed ``add``/``take``) for one that keeps every sample;
- which of those signals came after an idle gap (no live signal for ``IDLE_GAP_MS`` before it: the first of a
  burst at a low rate) and the latencies of those and of the rest apart, since on a shared VM the first
  after an idle gap runs with cold caches (see ``daemon.bench.loopback``);
- signals written and WebSocket frames received, CPU seconds (user + system) of this process, RSS at the end;
- the bars the fake played in the same window, from its clock (the open bar over its REST endpoint, read
  in a worker thread so the event loop keeps serving frames).

It prints one JSON object on stdout and stops the service. Run by ``daemon.bench.loopback`` in a
subprocess so the daemon has a process of its own, as in production.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
import urllib.request

import numpy as np

IDLE_GAP_MS = 50.0  # a live signal with no other one this long before it comes after an idle gap


class KeepAll:
    """A stand-in for ``daemon.aio.output.LatencyStats`` that keeps every sample while ``recording``.

    Each sample is kept with the clock read when it was added (after the line was written), so the frame's
    arrival, ``done - ns``, and the gap since the previous signal can be worked out afterwards.
    """

    def __init__(self) -> None:
        self.ns: list[int] = []
        self.done_ns: list[int] = []
        self.total = 0
        self.recording = False

    def add(self, ns: int) -> None:
        self.total += 1
        if self.recording:
            self.ns.append(ns)
            self.done_ns.append(time.perf_counter_ns())

    def take(self) -> dict | None:
        return None


def open_bar_start_ms(rest_url: str, symbol: str) -> int:
    """The fake's currently open bar, asked through its REST kline endpoint (newest row first)."""
    url = f"{rest_url}/v5/market/kline?category=linear&symbol={symbol}&interval=5&limit=1"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    return int(body["result"]["list"][0][0])


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in MB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _us(ns: np.ndarray, q: float | None) -> float | None:
    """Percentile ``q`` (None: the maximum) of ``ns`` in microseconds, rounded; None when empty."""
    if not ns.size:
        return None
    return round(float(np.percentile(ns, q) if q is not None else ns.max()) / 1000, 2)


def latency_split(ns: list[int], done_ns: list[int], idle_gap_ms: float = IDLE_GAP_MS) -> dict:
    """p50/p99/max of all samples, and apart for those that came after an idle gap and for the rest.

    A sample came after an idle gap when the previous sample's frame arrived ``idle_gap_ms`` or more before
    its own (samples are added in the order their frames arrived; the window's first counts with the rest).
    """
    lat = np.asarray(ns, dtype=np.float64)
    arrived = np.asarray(done_ns, dtype=np.float64) - lat
    after_idle = np.zeros(lat.size, dtype=bool)
    after_idle[1:] = np.diff(arrived) >= idle_gap_ms * 1e6
    cold, warm = lat[after_idle], lat[~after_idle]
    return {
        "p50_us": _us(lat, 50), "p99_us": _us(lat, 99), "max_us": _us(lat, None),
        "after_idle": {"gap_ms": idle_gap_ms, "n": int(cold.size), "p50_us": _us(cold, 50), "max_us": _us(cold, None)},
        "rest": {"n": int(warm.size), "p50_us": _us(warm, 50), "p99_us": _us(warm, 99)},
    }


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def until_ready(service, task: asyncio.Task, timeout_s: float) -> None:
    """Wait until the service is subscribed and every symbol warm; raise if it stops or takes too long."""
    from daemon.core.pipeline import Stage

    deadline = time.perf_counter() + timeout_s
    while not (service.feed.stats.subscribed and all(p.stage is Stage.SERVING and p.fetch is None
                                                      for p in service.pipelines.values())):
        if task.done() or time.perf_counter() > deadline:
            raise RuntimeError(f"the daemon did not get subscribed and warm within {timeout_s:g} s")
        await asyncio.sleep(0.005)


async def measure(config_path: str, signals_path: str, settle_s: float, duration_s: float) -> dict:
    from daemon.aio.output import configure_logging
    from daemon.aio.service import Service
    from daemon.core.config import load_config
    from daemon.core.model import Model

    t_start = time.perf_counter()
    cfg = load_config(config_path)
    model = Model.load(cfg.model.artifact, kernel=cfg.model.kernel, kernel_dir=cfg.model.kernel_dir)
    log_file = configure_logging(cfg.log.file, cfg.log.level)
    out = open(signals_path, "wb")  # noqa: SIM115 - closed below, after the service stopped
    service = Service(cfg, model, out=out, log_file=log_file)
    recorder = KeepAll()
    service.writer.latency = recorder
    task = asyncio.create_task(service.run())
    result: dict = {}
    try:
        await until_ready(service, task, 120.0)
        result["ready_s"] = round(time.perf_counter() - t_start, 3)
        await asyncio.sleep(settle_s)
        probe = (cfg.feed.rest_url, cfg.feed.symbols[0])
        bar0 = await asyncio.to_thread(open_bar_start_ms, *probe)
        written0, frames0, cpu0, t0 = service.writer.written, service.feed.stats.frames, _cpu_s(), time.perf_counter()
        recorder.recording = True
        print(json.dumps({"event": "recording"}), flush=True)
        await asyncio.sleep(duration_s)
        recorder.recording = False
        written1, frames1, cpu1, t1 = service.writer.written, service.feed.stats.frames, _cpu_s(), time.perf_counter()
        bar1 = await asyncio.to_thread(open_bar_start_ms, *probe)
        wall = t1 - t0
        result.update({
            "signals": written1 - written0,
            "live_samples": len(recorder.ns),
            "seconds": round(wall, 3),
            "signals_per_s": round((written1 - written0) / wall, 1),
            "frames_per_s": round((frames1 - frames0) / wall, 1),
            # Bars the fake played in the same window (its clock, over REST, read from a worker thread).
            "fake_bars": (bar1 - bar0) / cfg.feed.interval_ms,
            "fake_bar_start_ms": [bar0, bar1],
            **latency_split(recorder.ns, recorder.done_ns),
            "cpu_percent": round(100.0 * (cpu1 - cpu0) / wall, 1),
            "rss_mb": round(_status_mb("VmRSS"), 1),
            "rss_peak_mb": round(_status_mb("VmHWM"), 1),
            "kernel": model.kernel_note,
            "numba_loaded": "numba" in sys.modules,
            "frames": service.feed.stats.frames,
            "malformed": service.feed.stats.malformed,
            "reconnects": max(0, service.feed.stats.connects - 1),
        })
    finally:
        service.stop()
        await task
        out.close()
        if log_file is not None:
            log_file.close()
    return result


def main(argv: list[str]) -> int:
    config_path, signals_path, settle_s, duration_s = argv[0], argv[1], float(argv[2]), float(argv[3])
    result = asyncio.run(measure(config_path, signals_path, settle_s, duration_s))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
