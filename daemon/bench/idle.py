"""Why the first signal after an idle gap is slow: the daemon's frame-to-line path run in one process
(no event loop, no socket) right after itself, and after a pause.

The loopback levels show that at a low rate the p99 is the first signal of each burst of closes: it takes
several times as long as the others, in every stage alike (parsing, the numba step, formatting, the
write). This part asks whether anything in the daemon's process causes that, by timing one frame through

- ``daemon``: the daemon's own code, ``parse_frame`` -> ``Pipeline.receive_close`` (the shipped student) ->
  ``SignalWriter.write`` to a file (no structlog call, which the daemon makes after its measurement anyway);
- ``trivial``: ``json.loads`` of the same frame, then write its bytes and flush: no model, no pipeline,

each in four situations, in interleaved rounds: right after a frame through the same path; after
``pause_s`` asleep (``time.sleep``: the core idles); after ``pause_s`` spinning on the clock (the core stays
busy and awake, only other code runs); and (``daemon`` only) after ``pause_s`` asleep followed by one frame
through the same code on a scratch pipeline writing to ``/dev/null`` just before the timed one.

If the pause is slow both asleep and spinning, and a run of the same code just before brings the stages
back to their back-to-back times, then what costs the time is that the path's code and data are no longer
in the CPU caches (on a shared VM other work evicts them within milliseconds), not the core waking up, the
event loop, the garbage collector or anything else the process does.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from daemon.aio.output import SignalWriter
from daemon.core.model import Model
from daemon.core.parser import kline_topic, parse_frame, topic_table
from daemon.core.pipeline import Pipeline
from daemon.tools.fake_bybit import FakeBybit
from daemon.tools.replay import read_kline_csv

from .bars import DATA

SYMBOL = "BTCUSDT"
PAUSE_S = 0.25
ROUNDS = 30


class _DaemonPath:
    """One symbol's frames through the daemon's parse -> pipeline -> writer, one bar per call."""

    def __init__(self, frames: list[str], start_ms: int, model: Model, out) -> None:
        self.frames = frames
        self.pipeline = Pipeline(SYMBOL, "5", model, fetches_history=False)
        self.writer = SignalWriter(out)
        self.cache = topic_table([kline_topic("5", SYMBOL)])
        self.i = 0
        while not self.pipeline.state.warm:
            self.run()

    def run(self) -> tuple[int, int, int, int]:
        """One frame; return (total, parse, pipeline, write) in ns."""
        frame = self.frames[self.i]
        self.i += 1
        t0 = perf_counter_ns()
        kline = parse_frame(frame, self.cache)
        t1 = perf_counter_ns()
        pipeline = self.pipeline
        pipeline.receive_close(kline.closed[0], t0)
        events = pipeline.events()
        t2 = perf_counter_ns()
        for sig in events:  # only signals: the file has no holes
            self.writer.write(sig)
        t3 = perf_counter_ns()
        return t3 - t0, t1 - t0, t2 - t1, t3 - t2


class _TrivialPath:
    """The same frames decoded with ``json.loads`` and written back out, nothing else."""

    def __init__(self, frames: list[str], out) -> None:
        self.frames = [f.encode() for f in frames]
        self.out = out
        self.i = 0

    def run(self) -> tuple[int]:
        frame = self.frames[self.i]
        self.i += 1
        t0 = perf_counter_ns()
        json.loads(frame)
        self.out.write(frame + b"\n")
        self.out.flush()
        return (perf_counter_ns() - t0,)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run(artifact_path: Path, workdir: Path, pause_s: float = PAUSE_S, rounds: int = ROUNDS) -> dict:
    """Time both paths back to back and after a pause; return one row per (path, situation)."""
    rows = read_kline_csv(DATA / f"{SYMBOL}-5m.csv")
    fake = FakeBybit({SYMBOL: rows}, "5", start_index=1)
    frames = [fake.close_frame(SYMBOL, r.start_ms) for r in rows]
    model = Model.load(artifact_path)
    with open(workdir / "idle-signals.jsonl", "wb") as out, open(workdir / "idle-trivial.jsonl", "wb") as out2, \
            open(os.devnull, "wb") as null:
        daemon = _DaemonPath(frames, rows[0].start_ms, model, out)
        scratch = _DaemonPath(frames, rows[0].start_ms, model, null)
        trivial = _TrivialPath(frames, out2)
        for _ in range(50):  # warm both paths before the first round
            daemon.run(), trivial.run()
        pause = f"{pause_s * 1000:g} ms"
        cases = []
        for name, path in (("daemon", daemon), ("trivial", trivial)):
            cases += [(name, "back to back", path.run, path.run),
                      (name, f"after {pause} asleep", path.run, lambda: time.sleep(pause_s)),
                      (name, f"after {pause} spinning", path.run, lambda: _spin(pause_s))]
        cases.append(("daemon", f"after {pause} asleep, then the same code once on scratch state",
                      daemon.run, lambda: (time.sleep(pause_s), scratch.run())))
        samples: dict[tuple[str, str], list] = {(c[0], c[1]): [] for c in cases}
        for _ in range(rounds):
            for name, when, call, before in cases:
                before()
                samples[(name, when)].append(call())
    out_rows = []
    for (name, when), xs in samples.items():
        a = np.asarray(xs, dtype=np.float64) / 1000.0
        row = {"path": name, "when": when, "n": len(xs), "p50_us": round(float(np.median(a[:, 0])), 2),
               "max_us": round(float(a[:, 0].max()), 2)}
        if a.shape[1] == 4:
            row.update({f"{stage}_p50_us": round(float(np.median(a[:, k])), 2)
                        for k, stage in enumerate(("parse", "pipeline", "write"), start=1)})
        out_rows.append(row)
    return {"pause_s": pause_s, "rounds": rounds, "rows": out_rows}
