"""Per-call latency sampling: contenders interleaved in rounds, warm-up excluded, GC off while timing.

Every sample is one call timed on its own with ``time.perf_counter_ns`` around it, so a sample includes
one timer read (the ``timer_overhead`` entry measures an empty interval). Contenders take
turns in rounds of ``round_calls`` calls, in a fresh random order each round, so that drift on a shared
machine (frequency, noisy neighbours) hits all of them alike and ratios from one run are fair.

The first call of a contender's round runs on caches the previous contender used (LightGBM's megabytes
of trees evict the student's few hundred bytes). With 500-call rounds that is 0.2% of the samples: in the
tail beyond p99, not in it. Shorter rounds would put an interleaving artefact into the p99.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

Bar = tuple[float, float, float, float, float]


@dataclass
class Contender:
    """One thing to time: ``call`` with an argument pattern ``kind`` (see ``_LOOPS``), described for readers.

    ``kind`` "bar": ``call(o, h, l, c, v)``; "args": ``call(*args, o, h, l, c, v)`` with exactly two fixed
    leading arguments (the raw numba student call); "fixed": ``call(*args)`` with 0 to 2 fixed arguments and
    no bar (call floors); "empty": no call at all (the timer's own cost).
    """

    name: str
    call: Callable | None
    kind: str
    includes: str
    args: tuple = ()
    group: str = "student"


# One tight loop per argument pattern: the loop itself must not add unpacking or closures to a sample.
def _loop_bar(c: Contender, bars: Sequence[Bar], out: list, at: int) -> None:
    now = time.perf_counter_ns
    f = c.call
    for o, h, l, cl, v in bars:
        t0 = now()
        f(o, h, l, cl, v)
        t1 = now()
        out[at] = t1 - t0
        at += 1


def _loop_args(c: Contender, bars: Sequence[Bar], out: list, at: int) -> None:
    now = time.perf_counter_ns
    f = c.call
    a, b = c.args
    for o, h, l, cl, v in bars:
        t0 = now()
        f(a, b, o, h, l, cl, v)
        t1 = now()
        out[at] = t1 - t0
        at += 1


def _loop_fixed(c: Contender, bars: Sequence[Bar], out: list, at: int) -> None:
    now = time.perf_counter_ns
    f = c.call
    n_args = len(c.args)
    a = c.args[0] if n_args > 0 else None
    b = c.args[1] if n_args > 1 else None
    for _ in bars:
        if n_args == 0:
            t0 = now()
            f()
            t1 = now()
        elif n_args == 1:
            t0 = now()
            f(a)
            t1 = now()
        else:
            t0 = now()
            f(a, b)
            t1 = now()
        out[at] = t1 - t0
        at += 1


def _loop_empty(c: Contender, bars: Sequence[Bar], out: list, at: int) -> None:
    now = time.perf_counter_ns
    for _ in bars:
        t0 = now()
        t1 = now()
        out[at] = t1 - t0
        at += 1


_LOOPS = {"bar": _loop_bar, "args": _loop_args, "fixed": _loop_fixed, "empty": _loop_empty}


def _feed(c: Contender, bars: Sequence[Bar]) -> None:
    """Run ``c`` over ``bars`` untimed (warm-up: compilation, caches, the features' warm-up window)."""
    scratch = [0] * len(bars)
    _LOOPS[c.kind](c, bars, scratch, 0)


def sample(
    contenders: Sequence[Contender],
    bars: Sequence[Bar],
    n: int,
    *,
    warmup: int = 500,
    round_calls: int = 500,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Return ``name -> n`` per-call latencies in ns, timed in interleaved rounds.

    Each contender sees the same bars in the same order (cycling through ``bars``), after ``warmup``
    untimed calls. The garbage collector is disabled while timing and restored afterwards.
    """
    for c in contenders:
        if c.kind not in _LOOPS:
            raise ValueError(f"contender {c.name}: kind {c.kind!r}, expected one of {sorted(_LOOPS)}")
    m = len(bars)
    if m == 0:
        raise ValueError("no bars to time with")
    stream = list(bars) * (-(-(warmup + n) // m))  # enough cycles for warm-up and n samples
    for c in contenders:
        _feed(c, stream[:warmup])
    out = {c.name: [0] * n for c in contenders}
    gc_was_on = gc.isenabled()
    gc.collect()
    gc.disable()
    rng = random.Random(seed)
    order = list(contenders)
    try:
        for lo in range(0, n, round_calls):
            hi = min(n, lo + round_calls)
            chunk = stream[warmup + lo : warmup + hi]
            # A fresh order each round: no contender always follows the same (cache-thrashing) neighbour.
            rng.shuffle(order)
            for c in order:
                _LOOPS[c.kind](c, chunk, out[c.name], lo)
    finally:
        if gc_was_on:
            gc.enable()
    return {name: np.asarray(v, dtype=np.int64) for name, v in out.items()}


def latency_entry(name: str, samples_ns: np.ndarray) -> dict:
    """The ``results`` entry of a latency: p50/p99 (and mean/min) in microseconds over ``n`` calls."""
    us = samples_ns.astype(np.float64) / 1000.0
    return {
        "name": name,
        "p50_us": round(float(np.percentile(us, 50)), 4),
        "p99_us": round(float(np.percentile(us, 99)), 4),
        "p999_us": round(float(np.percentile(us, 99.9)), 4),
        "mean_us": round(float(us.mean()), 4),
        "min_us": round(float(us.min()), 4),
        "n": int(us.size),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "unknown")


def machine_info() -> dict:
    """CPU model, core count, OS, Python and the versions of the libraries being compared."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "lightgbm": _version("lightgbm"),
        # Other work on a shared machine shows up here; the ratios are fair regardless (interleaved rounds).
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_dma_latency_us": cpu_dma_latency_us(),
    }


CPU_DMA_LATENCY = "/dev/cpu_dma_latency"
MAX_CPU_LATENCY_US = 2_000_000_000  # the kernel's default, which means no limit


def cpu_dma_latency_us() -> int | None:
    """The CPU wake-up latency the kernel is asked to keep (PM QoS, in us), None where it cannot be read.

    Idle CPUs sleep deeper when this is large (the default: no limit), and waking one takes longer, more so
    on a virtual machine. Every process-to-process hop of the sinks pays it.
    """
    try:
        with open(CPU_DMA_LATENCY, "rb") as f:
            raw = f.read(4)
    except OSError:
        return None
    return int.from_bytes(raw, sys.byteorder, signed=True) if len(raw) == 4 else None


class HoldCpuLatency:
    """Ask the kernel for at most ``us`` microseconds of CPU wake-up latency while this is open (PM QoS, as
    tuned's latency-performance profile does; needs write access to /dev/cpu_dma_latency, normally root)."""

    def __init__(self, us: int) -> None:
        self.us, self._fd = us, -1

    def __enter__(self) -> HoldCpuLatency:
        try:
            self._fd = os.open(CPU_DMA_LATENCY, os.O_WRONLY)
            os.write(self._fd, int(self.us).to_bytes(4, sys.byteorder, signed=True))
        except OSError as e:
            if self._fd >= 0:
                os.close(self._fd)
            raise OSError(f"cannot hold {CPU_DMA_LATENCY} at {self.us} us: {e.strerror or e}") from e
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._fd)  # the kernel drops the request with the last close


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
