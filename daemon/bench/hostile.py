"""Hostile input: what a flood of bad frames, a huge replay file and a far-future start cost.

- ``malformed_frames_rss``: a fresh process runs the daemon's frame entry (``Feed._on_message``: parse,
  count, rate-limited log) subscribed to 500 topics, over 1,000,000 malformed frames that each name a new
  topic; its resident memory is sampled every 100,000 frames (VmRSS) and at the end (VmHWM, the peak).
- ``replay_50mb_rss``: ``kdsignal replay`` as a subprocess on a generated CSV of about 50 MB (real
  BTCUSDT rows repeated on consecutive starts), signal lines to /dev/null; its peak resident memory (VmHWM
  at exit), beside the same command on the file's first 300 rows.
- ``frame_cost``: the per-frame time of ``Feed._on_message`` for a far-future start, a start 1 ms off the
  grid, a NaN price, a frame that is not JSON and a frame for an unsubscribed topic, interleaved one call of
  each per round, and the parse of a valid close for reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from .timing import latency_entry

ROOT = Path(__file__).resolve().parents[2]
N_FRAMES = 1_000_000
REPLAY_MB = 50
COST_ROUNDS = 20_000
_START = 1719667500000
_TS = _START + 300_000 + 200
_CLOSE = ('{"topic":"kline.5.%s","ts":%d,"type":"snapshot","data":[{"start":%d,"end":%d,"interval":"5",'
          '"open":"%s","close":"61029.9","high":"61030","low":"61015","volume":"10.798","turnover":"1",'
          '"confirm":true,"timestamp":%d}]}')


def _close(symbol: str, start: int = _START, open_: str = "61030") -> str:
    return _CLOSE % (symbol, _TS, start, start + 299_999, open_, _TS)


def _feed(sink):
    """A feed subscribed to 500 topics (BTCUSDT among them) that logs to ``sink`` and connects nowhere."""
    import structlog

    from daemon.aio.feed import Feed
    from daemon.core.parser import kline_topic

    log = structlog.wrap_logger(structlog.PrintLogger(sink), processors=[structlog.processors.JSONRenderer()])
    topics = [kline_topic("5", f"S{i}USDT") for i in range(499)] + [kline_topic("5", "BTCUSDT")]
    return Feed("ws://127.0.0.1:9/v5/public/linear", topics, lambda frame, recv_ns: None, log=log)


# The measured processes import only what the daemon imports (this package loads numba and friends).
_VMHWM = """
def _status_mb(field):
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")
"""

_FRAMES_CHILD = _VMHWM + """
import json, os, sys
from time import perf_counter_ns
import structlog
from daemon.aio.feed import Feed
from daemon.core.parser import kline_topic

n, template = int(sys.argv[1]), sys.argv[2]
log = structlog.wrap_logger(structlog.PrintLogger(open(os.devnull, "w")),
                            processors=[structlog.processors.JSONRenderer()])
topics = [kline_topic("5", f"S{i}USDT") for i in range(499)] + [kline_topic("5", "BTCUSDT")]
feed = Feed("ws://127.0.0.1:9/v5/public/linear", topics, lambda frame, recv_ns: None, log=log)
on_message = feed._on_message
rss = [round(_status_mb("VmRSS"), 1)]
t0 = perf_counter_ns()
for i in range(n):
    on_message(template.replace("{SYMBOL}", f"N{i}USDT"), 0)
    if (i + 1) % 100_000 == 0:
        rss.append(round(_status_mb("VmRSS"), 1))
wall_ns = perf_counter_ns() - t0
assert feed.stats.malformed == n, feed.stats.malformed
print(json.dumps({"n": n, "rss_start_mb": rss[0], "rss_samples_mb": rss, "rss_end_mb": rss[-1],
                  "rss_peak_mb": round(_status_mb("VmHWM"), 1), "per_frame_us": round(wall_ns / n / 1000.0, 3)}))
"""

# Runs `python -m daemon ARGS...` in this process and reports its peak resident memory at exit (the
# rusage of a child forked from the big bench process would count the bench's pages too).
_PEAK_CHILD = _VMHWM + """
import atexit, runpy, sys
atexit.register(lambda: print(f"VmHWM_MB {_status_mb('VmHWM'):.1f}", file=sys.stderr))
sys.argv = ["daemon", *sys.argv[1:]]
runpy.run_module("daemon", run_name="__main__")
"""


def malformed_frames_rss(n: int = N_FRAMES) -> dict:
    """``n`` malformed frames, each naming a new topic, through the feed's entry in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _FRAMES_CHILD, str(n), _close("{SYMBOL}")], capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"frames child exited {out.returncode}: {out.stderr[-400:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"name": "malformed_frames_rss", **r,
            "includes": f"{n:,} frames naming a new topic each through Feed._on_message (500 subscribed topics), "
                        "fresh process importing only the daemon; RSS sampled every 100,000 frames, peak = VmHWM"}


def _write_csv(path: Path, target_bytes: int) -> int:
    from daemon.tools.replay import iter_kline_csv

    src = list(iter_kline_csv(ROOT / "data" / "BTCUSDT-5m.csv", "5"))
    rows = 0
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        head = "start_ms,open,high,low,close,volume\n"
        f.write(head)
        size += len(head)
        start = src[0].start_ms
        while size < target_bytes:
            r = src[rows % len(src)]
            line = f"{start + rows * 300_000},{r.open},{r.high},{r.low},{r.close},{r.volume}\n"
            f.write(line)
            size += len(line)
            rows += 1
    return rows


def _replay_peak_mb(csv: Path, artifact: Path) -> tuple[float, float]:
    """Peak resident MB (VmHWM at exit) and wall seconds of one ``kdsignal replay`` on ``csv``."""
    cmd = [sys.executable, "-c", _PEAK_CHILD, "replay", "--data", str(csv), "--symbol", "BTCUSDT", "--interval", "5",
           "--artifact", str(artifact)]
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=null, stderr=subprocess.PIPE, cwd=ROOT)
        wall = time.perf_counter() - t0
    err = p.stderr.decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"kdsignal replay exited {p.returncode}: {err[-400:]}")
    peak = [float(x.split()[1]) for x in err.splitlines() if x.startswith("VmHWM_MB ")]
    return peak[-1], wall


def replay_rss(artifact: Path, workdir: Path, megabytes: int = REPLAY_MB) -> dict:
    """Peak RSS of ``kdsignal replay`` on a generated ``megabytes`` MB CSV, and on its first 300 rows."""
    big = workdir / "hostile-replay.csv"
    rows = _write_csv(big, megabytes << 20)
    small = workdir / "hostile-replay-300.csv"
    with open(big, encoding="utf-8") as src, open(small, "w", encoding="utf-8") as dst:
        for _ in range(301):
            dst.write(src.readline())
    small_mb, _ = _replay_peak_mb(small, artifact)
    big_mb, wall = _replay_peak_mb(big, artifact)
    return {"name": "replay_50mb_rss", "file_mb": round(big.stat().st_size / 2**20, 1), "rows": rows,
            "rss_peak_mb": round(big_mb, 1), "rss_peak_300_rows_mb": round(small_mb, 1),
            "seconds": round(wall, 2), "bars_per_s": round(rows / wall),
            "includes": "`kdsignal replay` subprocess, lines to /dev/null; peak = its VmHWM at exit; "
                        "beside it the same command on the first 300 rows"}


def frame_cost(rounds: int = COST_ROUNDS) -> list[dict]:
    """Per-frame ns of the feed's entry for each hostile kind, interleaved; a valid close parse for reference."""
    with open(os.devnull, "w") as sink:
        return _frame_cost(_feed(sink), rounds)


def _frame_cost(feed, rounds: int) -> list[dict]:
    from daemon.core.parser import parse_frame
    from daemon.tools.fake_bybit import far_future_start

    kinds = {
        "far_future_start": _close("BTCUSDT", far_future_start(300_000)),
        "off_grid_start": _close("BTCUSDT", _START + 1),
        "nan_price": _close("BTCUSDT", open_="NaN"),
        "not_json": '{"topic":"kline.5.BTCUSDT","ts":1,"data":[{"start":' + "1" * 200,
        "unsubscribed_topic": _close("ZZZUSDT"),
    }
    valid = _close("BTCUSDT")
    table = feed._topic_cache
    samples = {k: np.empty(rounds, dtype=np.int64) for k in [*kinds, "valid_close_parse"]}
    on_message = feed._on_message
    for i in range(rounds):
        for kind, frame in kinds.items():
            t0 = perf_counter_ns()
            on_message(frame, 0)
            samples[kind][i] = perf_counter_ns() - t0
        t0 = perf_counter_ns()
        parse_frame(valid, table)
        samples["valid_close_parse"][i] = perf_counter_ns() - t0
    if feed.stats.malformed != rounds * len(kinds):
        raise RuntimeError(f"{feed.stats.malformed} malformed of {rounds * len(kinds)} hostile frames")
    out = []
    for kind, s in samples.items():
        e = latency_entry(f"frame_{kind}", s)
        e["includes"] = ("parse_frame of a valid close with the topic table (reference)" if kind == "valid_close_parse"
                         else "Feed._on_message: parse, FrameError, count, rate-limited log")
        out.append(e)
    return out


def run(artifact_path: Path, workdir: Path | str) -> dict:
    """The hostile part: results entries and skip notes."""
    results = [malformed_frames_rss()]
    skipped = []
    try:
        results.append(replay_rss(Path(artifact_path), Path(workdir)))
    except RuntimeError as e:
        skipped.append({"name": "replay_50mb_rss", "reason": str(e)})
    results += frame_cost()
    by = {r["name"]: r for r in results}
    ratios = [{"name": "far_future_over_nan_price",
               "value": round(by["frame_far_future_start"]["p50_us"] / by["frame_nan_price"]["p50_us"], 2)}]
    return {"results": results, "skipped": skipped, "ratios": ratios}
