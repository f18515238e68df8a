"""The daemon on loopback: tick-to-signal latency under the fake Bybit at rising rates, and start-up time.

Each level runs two fresh processes on 127.0.0.1: ``kdsignal fake-bybit`` serving ``symbols`` copies of the
real 5m samples (renamed ``X0001BTCUSDT``...) at ``bar_s`` wall seconds per bar with ``updates_per_bar``
unconfirmed pushes before each close, and the daemon (``loopback_driver``: the real ``Service`` built from
a config file). Offered load: ``symbols`` closed candles (signals) per bar the fake really played, and
``updates_per_bar + 1`` pushes per symbol per bar. The fake keeps its rounds of sends on a deadline
schedule, so it plays ``1 / bar_s`` bars a second until it is CPU-bound; the bar rate it really played (read
from its clock over REST at both ends of the daemon's window) is what the table reports as offered.
After the daemon is subscribed and warm it records for ``duration_s``, longer at low rates so that every
level records at least ``MIN_SAMPLES`` signals (at most ``MAX_LEVEL_S``): a p99 of 60 samples is their
maximum, of 1,000 their tenth largest. A level "kept up" when the daemon
wrote at least 90% of the offered signals (the two windows are read in different processes, a bar or two
apart), stayed below 95% of a core and kept its p99 under 100 ms. The daemon stamps a frame when the
WebSocket client hands it over, so a backlog queued in the socket does not show in tick-to-signal; it
shows as signals written falling behind signals offered, and as CPU at 100%. The levels stop at the
first one that did not keep up, or at which the fake could not deliver 10% more than at the previous
level (the fake, not the daemon, was then the limit). Both processes share the machine's cores, as a
colocated exchange gateway would; the fake's own CPU share is reported because at high rates it, a Python
server, can be the bottleneck.

The issue's level is 500 symbols at 10 pushes a second each: with one unconfirmed update and the close per
bar, 0.2 s bars (5,000 pushes/s, 2,500 signals/s). Its targets: tick-to-signal p50 <= 30 us and p99 <= 100 us,
under 25% of one core (``ISSUE_LEVEL``, ``ISSUE_TARGETS``; the report gives the verdict).

Low rates and the p99. At low rates the closes come as one burst per bar, and the first signal of each
burst takes several times as long as the others, in every stage alike (parsing, the numba step, formatting,
the write): the path's code and data have left the CPU caches while the process waited. At few symbols those
first signals are the level's p99; the driver reports them apart (``after_idle``: the first signal after
50 ms without one) beside the steady-state percentiles of the rest, and ``daemon.bench.idle`` shows in one
process, with no event loop or socket, that the cost is the caches and nothing the daemon does. Figures are
in BENCHMARKS.md.

Memory: the daemon's resident set (VmRSS at the end of its window, and its peak, VmHWM) at every level. It
serves the student step ``kdsignal build-kernel`` compiled ahead of time and never imports numba; the
issue's level runs once more with ``[model] kernel = "jit"``, so the daemon serves the same specialised
step through numba's JIT, to show what numba and LLVM cost side by side.

Start-up: ``kdsignal build-kernel`` into an empty kernel directory with an empty ``NUMBA_CACHE_DIR`` (what
a unit's ``ExecStartPre=`` costs on its first start: numba compiling, gcc linking), then the wall time from
spawning ``kdsignal run`` to its ``feed_subscribed`` log event with the kernel built (every later start).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import idle
from .bars import DATA, ROOT

# (symbols, wall seconds per bar): nominal signals/s = symbols / bar_s, pushes/s = that * (UPDATES_PER_BAR + 1).
# 1000 symbols at most keep the fake's CSV loading and the daemon's REST warm-up short.
LEVELS = ((10, 1.0), (100, 0.1), (500, 0.2), (500, 0.1), (500, 0.05), (1000, 0.05), (1000, 0.02), (1000, 0.01))
UPDATES_PER_BAR = 1
# The issue's wording: 500 symbols at 10 pushes a second each, and what it asks of that level.
ISSUE_LEVEL = (500, 0.2)
ISSUE_TARGETS = {"p50_us": 30.0, "p99_us": 100.0, "cpu_percent": 25.0}
START_INDEX = 100
SETTLE_S = 2.0
DURATION_S = 6.0
MIN_SAMPLES = 1000
MAX_LEVEL_S = 120.0
MAX_P99_US = 100_000.0


def level_duration(symbols: int, bar_s: float, duration_s: float = DURATION_S, min_samples: int = MIN_SAMPLES,
                   ) -> float:
    """Seconds to record at a level: ``duration_s``, or long enough for ``min_samples`` signals at the nominal
    rate, whichever is longer, but at most ``MAX_LEVEL_S``."""
    return min(MAX_LEVEL_S, max(duration_s, min_samples * bar_s / symbols))


def missing() -> str | None:
    """None when the service and the fake can run; otherwise what is missing."""
    for module in ("daemon/aio/service.py", "daemon/tools/fake_bybit.py"):
        if not (ROOT / module).exists():
            return f"{module} does not exist yet"
    return None


def make_symbols(directory: Path, n: int, rows: int) -> list[str]:
    """Write ``n`` symbol files (the first ``rows`` rows of the real 5m samples, cycled) into ``directory``."""
    sources = sorted(DATA.glob("*-5m.csv"))
    texts = {}
    for src in sources:
        lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
        texts[src.name.split("-")[0]] = "".join(lines[: rows + 1])
    bases = sorted(texts)
    names = []
    for i in range(n):
        base = bases[i % len(bases)]
        name = f"X{i:04d}{base}"
        (directory / f"{name}-5m.csv").write_text(texts[base], encoding="utf-8")
        names.append(name)
    return names


def write_config(path: Path, ws_url: str, rest_url: str, symbols: list[str], artifact: Path, log_file: Path,
                 kernel: str = "aot") -> None:
    """A daemon configuration pointing at the fake (every other key at its default)."""
    syms = ", ".join(f'"{s}"' for s in symbols)
    path.write_text(
        f'[feed]\nws_url = "{ws_url}"\nrest_url = "{rest_url}"\nsymbols = [{syms}]\ninterval = "5"\n'
        f'subscribe_chunk = 10\n\n[model]\nartifact = "{artifact}"\nkernel = "{kernel}"\n\n'
        f'[log]\nfile = "{log_file}"\nlevel = "info"\nlatency_summary_s = 3600\n',
        encoding="utf-8",
    )


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    """One stdout line of ``proc`` within ``timeout_s`` (the line is small; the process flushes it)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout_s):
            raise TimeoutError(f"no output from {proc.args[3] if len(proc.args) > 3 else proc.args} in {timeout_s} s")
        line = proc.stdout.readline()
    finally:
        sel.close()
    if not line:
        proc.wait(timeout=15)
        raise RuntimeError(f"process exited {proc.returncode}: {_err_tail(proc)}")
    return line


def _spawn(cmd: list[str], err_path: Path, **kw) -> subprocess.Popen:
    """Start ``cmd`` with stdout piped and stderr to a file (a full stderr pipe would block a chatty child)."""
    with open(err_path, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=kw.pop("stdout", subprocess.PIPE), stderr=err, text=True, cwd=ROOT, **kw)
    proc.err_path = err_path
    return proc


def _err_tail(proc: subprocess.Popen) -> str:
    try:
        return Path(proc.err_path).read_text(encoding="utf-8", errors="replace").strip()[-400:]
    except (AttributeError, OSError):
        return ""


def _stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM (then SIGKILL after 15 s) a process we started, and close our ends of its pipes."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class FakeServer:
    """``kdsignal fake-bybit`` in a subprocess; ``ws_url``/``rest_url`` once it printed them."""

    def __init__(self, data_dir: Path, bar_s: float, updates_per_bar: int = UPDATES_PER_BAR):
        self.proc = _spawn(
            [sys.executable, "-m", "daemon", "fake-bybit", "--data", str(data_dir), "--bar-s", str(bar_s),
             "--updates-per-bar", str(updates_per_bar), "--start-index", str(START_INDEX)],
            data_dir.parent / "fake.err",
        )
        try:
            info = json.loads(_readline(self.proc, 120.0))
        except BaseException:
            _stop(self.proc)
            raise
        self.ws_url, self.rest_url = info["ws_url"], info["rest_url"]

    def close(self) -> None:
        _stop(self.proc)


def run_level(workdir: Path, artifact: Path, symbols: int, bar_s: float, duration_s: float = DURATION_S,
              env: dict | None = None, kernel: str = "aot") -> dict:
    """Run one (symbols, bar_s) level; return the daemon's measurement and the fake's CPU share.

    ``env``: the daemon's environment (default: this process's); ``kernel``: its ``[model] kernel``.
    """
    level_dir = Path(tempfile.mkdtemp(prefix=f"level-{symbols}-", dir=workdir))
    data_dir = level_dir / "data"
    data_dir.mkdir()
    # Enough rows for start-up, settling and the measurement at this pace, plus the REST history.
    rows = min(4032, START_INDEX + int((20.0 + SETTLE_S + duration_s) / bar_s))
    names = make_symbols(data_dir, symbols, rows)
    last_start_ms = int((data_dir / f"{names[0]}-5m.csv").read_text().splitlines()[-1].split(",")[0])
    fake = FakeServer(data_dir, bar_s)
    driver = None
    try:
        cfg = level_dir / "config.toml"
        write_config(cfg, fake.ws_url, fake.rest_url, names, artifact, level_dir / "daemon.log", kernel)
        driver = _spawn(
            [sys.executable, "-m", "daemon.bench.loopback_driver", str(cfg), str(level_dir / "signals.jsonl"),
             str(SETTLE_S), str(duration_s)],
            level_dir / "driver.err", env=env,
        )
        _readline(driver, 300.0)  # {"event": "recording"}: the measurement window opens
        ticks0, t0 = _cpu_ticks(fake.proc.pid), time.perf_counter()
        out = json.loads(_readline(driver, duration_s + 120.0))
        fake_cpu = 100.0 * (_cpu_ticks(fake.proc.pid) - ticks0) / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - t0)
        driver.wait(timeout=60)
    finally:
        _stop(driver)
        fake.close()
    # The fake plays 1 / bar_s bars a second until it is CPU-bound; the rate it really offered is read from
    # its clock (the open bar, over REST) around the window.
    offered = symbols * out["fake_bars"] / out["seconds"]
    bar1 = out["fake_bar_start_ms"][1]
    out.update({
        "symbols": symbols,
        "bar_s": bar_s,
        "pushes_per_symbol_per_s": round((UPDATES_PER_BAR + 1) / bar_s, 2),
        "nominal_signals_per_s": round(symbols / bar_s, 1),
        "offered_signals_per_s": round(offered, 1),
        "pushes_per_s": round(offered * (UPDATES_PER_BAR + 1), 1),
        "fake_cpu_percent": round(fake_cpu, 1),
    })
    out["kept_up"] = bool(out["p99_us"] is not None and out["signals_per_s"] >= 0.9 * offered
                          and out["cpu_percent"] < 95.0 and out["p99_us"] <= MAX_P99_US)
    if not out["kept_up"]:
        out["limit"] = "daemon"
    elif bar1 >= last_start_ms:
        out["limit"] = "fake ran out of data"
    return out


def _wait_for_event(log: Path, event: str, proc: subprocess.Popen, timeout_s: float) -> float:
    t0 = time.perf_counter()
    needle = f'"event": "{event}"'
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"kdsignal run exited {proc.returncode}: {_err_tail(proc)}")
        with contextlib.suppress(FileNotFoundError):
            if needle in log.read_text(encoding="utf-8"):
                return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(f"no {event} in {log} within {timeout_s} s")


def startup_times(workdir: Path, artifact: Path) -> dict:
    """Seconds for ``kdsignal build-kernel`` from nothing (empty kernel and numba caches), then from spawning
    ``kdsignal run`` to ``feed_subscribed`` with the kernel built."""
    base = workdir / "startup"
    data_dir = base / "data"
    data_dir.mkdir(parents=True)
    names = make_symbols(data_dir, 5, START_INDEX + 200)
    cache = base / "numba-cache"
    cache.mkdir()
    # The kernel directory follows $NUMBA_CACHE_DIR (daemon.core.kernel_store), as under the systemd unit.
    env = {k: v for k, v in os.environ.items() if k != "KDSIGNAL_KERNEL_DIR"}
    env["NUMBA_CACHE_DIR"] = str(cache)
    fake = FakeServer(data_dir, 1.0)
    out = {}
    try:
        log = base / "warm.log"
        cfg = base / "warm.toml"
        write_config(cfg, fake.ws_url, fake.rest_url, names, artifact, log)
        t0 = time.perf_counter()
        build = subprocess.run([sys.executable, "-m", "daemon", "build-kernel", "--config", str(cfg)], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=600, check=False)
        if build.returncode != 0:
            raise RuntimeError(f"kdsignal build-kernel exited {build.returncode}: {build.stderr.strip()[-300:]}")
        out["build_kernel_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        proc = _spawn([sys.executable, "-m", "daemon", "run", "--config", str(cfg)], base / "warm.err",
                      stdout=subprocess.DEVNULL, env=env)
        try:
            out["warm_s"] = round(_wait_for_event(log, "feed_subscribed", proc, 300.0) - t0, 3)
        finally:
            _stop(proc)
    finally:
        fake.close()
    return out


def jit_level(workdir: Path, artifact: Path, symbols: int, bar_s: float) -> dict:
    """The issue's level once more, with the daemon serving ``[model] kernel = "jit"`` (numba in the process)."""
    return run_level(workdir, artifact, symbols, bar_s, DURATION_S, kernel="jit")


def row_at(rows: list[dict], level: tuple[int, float]) -> dict | None:
    """The row of ``level`` (symbols, bar_s), or None when that level did not run."""
    return next((r for r in rows if (r["symbols"], r["bar_s"]) == tuple(level)), None)


def _rerun(rows: list[dict], level: tuple[int, float], name: str, skipped: list[dict], run) -> dict | None:
    """``run()``, a second run of ``level`` with one thing changed, when the level itself ran; a failure is
    recorded in ``skipped`` under ``name``."""
    if row_at(rows, level) is None:
        return None
    try:
        return run()
    except (RuntimeError, TimeoutError, ValueError, OSError) as e:
        skipped.append({"name": name, "reason": str(e)[:300]})
        return None


def issue_verdict(rows: list[dict]) -> dict | None:
    """The row of ``ISSUE_LEVEL`` against ``ISSUE_TARGETS``; None when that level did not run."""
    row = row_at(rows, ISSUE_LEVEL)
    if row is None:
        return None
    met = {k: row[k] is not None and row[k] <= v for k, v in ISSUE_TARGETS.items()}
    return {"symbols": row["symbols"], "bar_s": row["bar_s"], "pushes_per_symbol_per_s": row["pushes_per_symbol_per_s"],
            "kept_up": row["kept_up"], "targets": ISSUE_TARGETS, "met": met,
            "all_met": all(met.values()) and row["kept_up"],
            **{k: row[k] for k in ISSUE_TARGETS}}


def run(artifact_path: Path | None, levels=LEVELS, duration_s: float = DURATION_S) -> dict:
    """The loopback part: one row per level until the daemon cannot keep up, the idle-gap measurement of
    ``daemon.bench.idle`` and the start-up times."""
    why = missing()
    if why is not None or artifact_path is None:
        return {"levels": [], "skipped": [{"name": "tick_to_signal", "reason": why or "no artifact file"}]}
    results, skipped, rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="kdsignal-bench-loopback-") as tmp:
        workdir = Path(tmp)
        for symbols, bar_s in levels:
            try:
                row = run_level(workdir, Path(artifact_path), symbols, bar_s,
                                level_duration(symbols, bar_s, duration_s))
            except (RuntimeError, TimeoutError, ValueError, OSError) as e:
                skipped.append({"name": f"tick_to_signal@{symbols}x{bar_s}", "reason": str(e)[:300]})
                break
            if "limit" not in row and rows and row["offered_signals_per_s"] < 1.1 * rows[-1]["offered_signals_per_s"]:
                # The fake could not send faster than at the previous level: no higher level loads the daemon more.
                row["limit"] = "fake"
            rows.append(row)
            if "limit" in row:
                break
        jit_row = _rerun(rows, ISSUE_LEVEL, "jit_kernel", skipped, lambda: jit_level(
            workdir, Path(artifact_path), *ISSUE_LEVEL))
        try:
            idle_gap = idle.run(Path(artifact_path), workdir)
        except (OSError, ValueError) as e:
            idle_gap = {}
            skipped.append({"name": "idle_gap", "reason": str(e)[:300]})
        try:
            startup = startup_times(workdir, Path(artifact_path))
        except (RuntimeError, TimeoutError, OSError) as e:
            startup = {}
            skipped.append({"name": "startup", "reason": str(e)[:300]})
    kept = [r for r in rows if r["kept_up"]]
    if kept:
        # The headline entry: the highest offered rate the daemon kept up with.
        best = kept[-1]
        results.append({"name": "tick_to_signal", "p50_us": best["p50_us"], "p99_us": best["p99_us"],
                        "n": best["live_samples"], "signals_per_s": best["signals_per_s"],
                        "symbols": best["symbols"]})
        for r in rows:
            # Named by the level's settings, which stay the same from run to run (the rates do not).
            results.append({"name": f"tick_to_signal_{r['symbols']}sym_bar{r['bar_s']:g}s",
                            "p50_us": r["p50_us"], "p99_us": r["p99_us"], "n": r["live_samples"],
                            "signals_per_s": r["signals_per_s"]})
    for k, v in startup.items():
        results.append({"name": f"startup_{k.removesuffix('_s')}", "seconds": v})
    return {"levels": rows, "issue_level": issue_verdict(rows), "jit_kernel": jit_row,
            "idle_gap": idle_gap,
            "startup": startup,
            "results": results, "skipped": skipped,
            "settings": {"updates_per_bar": UPDATES_PER_BAR, "settle_s": SETTLE_S, "duration_s": duration_s,
                         "min_samples": MIN_SAMPLES, "max_level_s": MAX_LEVEL_S}}
