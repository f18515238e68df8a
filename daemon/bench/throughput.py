"""Throughput: bars per second through the batch kernels (history replay) and through ``kdsignal replay``.

``replay_batch`` is what a backtest or a warm-up from history costs: ``kernels.features.features_batch``
then ``daemon.core.model.Model.predict_features`` over every 5m file, timed per file and summed (best of
``repeats`` passes, after one untimed pass that loads the compiled kernels). ``replay_cli`` runs
``kdsignal replay`` as a subprocess on one file and divides its rows by the wall time, start-up included
(the per-process cost a user of the command pays); ``replay_cli_steady`` subtracts the wall time of the
same command on the file's first 30 bars, leaving the per-bar rate of a running replay.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemon.core.model import Model
from kernels.features import features_batch

from .bars import ROOT, load_csv, replay_files


def replay_batch(model: Model, files: list[Path], repeats: int = 3) -> dict:
    """Bars/s of features_batch + predict_features over ``files`` (CSV parsing excluded)."""
    cols = []
    for f in files:
        rows = load_csv(f)
        cols.append(tuple(rows[:, i].copy() for i in range(1, 6)))
    n = sum(len(c[0]) for c in cols)
    model.predict_features(features_batch(*cols[0]))  # load compiled kernels outside the timing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for o, h, l, c, v in cols:
            model.predict_features(features_batch(o, h, l, c, v))
        best = min(best, time.perf_counter() - t0)
    return {
        "name": "replay_batch",
        "bars_per_s": round(n / best),
        "n": n,
        "seconds": round(best, 4),
        "includes": f"features_batch + Model.predict_features over {len(files)} files, arrays in memory "
        f"(best of {repeats})",
    }


def _time_replay(model_path: Path, csv: Path, symbol: str) -> tuple[float, int]:
    """Wall seconds of one ``kdsignal replay`` subprocess on ``csv`` and the signal lines it wrote."""
    cmd = [sys.executable, "-m", "daemon", "replay", "--data", str(csv), "--symbol", symbol, "--interval", "5",
           "--artifact", str(model_path)]
    with tempfile.TemporaryDirectory(prefix="kdsignal-bench-replay-") as tmp:
        out = Path(tmp) / "signals.jsonl"
        with open(out, "wb") as sink:
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.PIPE, cwd=ROOT)
            wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"kdsignal replay exited {proc.returncode}: {tail}")
        with open(out, "rb") as f:
            lines = sum(1 for _ in f)
    return wall, lines


def replay_cli(model_path: Path, csv: Path, symbol: str, workdir: Path) -> list[dict]:
    """Bars/s of ``kdsignal replay`` end to end, and per bar once started (a 30-bar run subtracted)."""
    text = csv.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = len(text) - 1
    short = workdir / f"short-{csv.name}"
    short.write_text("".join(text[:31]), encoding="utf-8")
    start_s, _ = _time_replay(model_path, short, symbol)
    wall, lines = _time_replay(model_path, csv, symbol)
    return [
        {
            "name": "replay_cli",
            "bars_per_s": round(rows / wall),
            "n": rows,
            "seconds": round(wall, 3),
            "includes": f"`kdsignal replay` subprocess on {csv.name}: interpreter start-up, CSV parsing, the per-bar "
            f"pipeline, {lines:,} signal lines written to a file",
        },
        {
            "name": "replay_cli_steady",
            "bars_per_s": round((rows - 30) / max(wall - start_s, 1e-9)),
            "n": rows - 30,
            "seconds": round(wall - start_s, 3),
            "includes": f"the same, minus a 30-bar run of the same command ({start_s:.2f} s: start-up, imports, "
            "model load): the per-bar rate once running",
        },
    ]


def run(model: Model, model_path: Path | None) -> dict:
    """The throughput part: entries and skip notes."""
    files, source = replay_files()
    results = [replay_batch(model, files)]
    skipped = []
    if model_path is None:
        skipped.append({"name": "replay_cli", "reason": "no artifact file to hand to the subprocess"})
    else:
        try:
            with tempfile.TemporaryDirectory(prefix="kdsignal-bench-replay-") as tmp:
                results += replay_cli(model_path, files[0], files[0].name.split(".")[0].split("-")[0], Path(tmp))
        except RuntimeError as e:
            skipped.append({"name": "replay_cli", "reason": str(e)})
    return {"results": results, "skipped": skipped, "source": f"{len(files)} 5m files in {source}"}
