"""``kdsignal retrain --config FILE``: keep the served student current, promoting a new one only through a gate.

One run, every step recorded in its report (``<store>/runs/<run_id>.json``, promoted or not):

1. **Fetch** the closed bars since the last run into ``[retrain] data_dir`` (``<SYMBOL>.csv``, resumable:
   ``daemon.training.fetch`` appends page by page and continues after the file's last row). The first run
   reaches back ``window_days + holdout_days`` from the exchange's latest closed bar, so the exchange's
   clock, not this machine's, decides what "recent" is.
2. **Split by time**: the last ``holdout_days`` (all symbols, up to the latest bar every symbol has) are held
   back; the ``window_days`` before them are the rolling training window.
3. **Refit and re-distil** by one call to ``daemon.training.train.train`` on the window (ablations, the
   temperature x alpha sweep and the control's tuning grid off: they explain a model, they do not make
   one). Its own report, lockbox and plots land in ``<store>/runs/<run_id>/``.
4. **Score** the candidate and the deployed model (``<store>/current``) on the held-back days: log loss per
   row on the same labels (the label rule of this ``[train]`` table), and the paired difference
   ``candidate - deployed`` with a 95% interval from a block bootstrap over contiguous time blocks of
   ``block_hours`` (all symbols of a block together, so co-moving symbols are not counted as independent).
5. **Teacher fidelity**: a teacher freshly fitted on the window predicts the held-back days; Cohen's kappa
   between its decisions and the deployed student's (and the candidate's) says how far they drifted apart.
6. **Gate**: promote when the candidate passes the artifact's own validation (and its kernel builds) and
   the interval's upper end of ``candidate - deployed`` is at most ``margin`` nats (not worse beyond the
   margin, with 95% confidence); with no deployed model, validation alone decides. Promotion copies the
   artifact into the store atomically, switches ``current`` and tells the daemon (``[model] pid_file``;
   under systemd the retrain unit's ``ExecStartPost`` reloads it).

Exit codes: 0 after a run that wrote its report (promoted or refused), 78 for a configuration, store or
data-folder problem, 1 when the exchange could not be reached (the report says so; the timer retries
tomorrow, ``Persistent=true`` after downtime).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.core.exitcodes import EXIT_CONFIG, EXIT_CRASH, EXIT_OK
from daemon.tools.store import DEFAULT_STORE

__all__ = [
    "RetrainBusy",
    "RetrainConfig",
    "RetrainError",
    "add_arguments",
    "load_retrain_config",
    "repair_tail",
    "retrain",
    "run_cli",
]

DAY_MS = 86_400_000


class RetrainError(ValueError):
    """A configuration, store or data problem that a rerun cannot fix; the message names it."""


@dataclass(frozen=True)
class RetrainConfig:
    """The ``[retrain]`` table, with paths resolved and the feed's defaults filled in."""

    data_dir: str = "retrain-data"
    store: str = DEFAULT_STORE
    window_days: float = 30.0
    holdout_days: float = 3.0
    margin: float = 0.002  # nats: how much worse than the deployed model a candidate may be (upper 95% bound)
    symbols: tuple[str, ...] = ()  # empty: [feed].symbols
    interval: str = ""  # empty: [feed].interval
    block_hours: float = 6.0  # bootstrap block length
    bootstrap_samples: int = 2000
    min_holdout_rows: int = 200  # fewer scored rows than this: refuse (nothing can be judged)
    seed: int = 0
    # filled from the rest of the file
    rest_url: str = "https://api.bybit.com"
    category: str = "linear"
    pid_file: str = ""
    kernel: str = "aot"  # [model] kernel and kernel_dir: where the daemon looks for the compiled step
    kernel_dir: str = ""
    config_path: str = ""

    @property
    def interval_ms(self) -> int:
        from daemon.core.parser import INTERVAL_MS

        return INTERVAL_MS[self.interval]


_KEYS = {f.name for f in dataclasses.fields(RetrainConfig)} - {"rest_url", "category", "pid_file", "kernel",
                                                                  "kernel_dir", "config_path"}


def load_retrain_config(path: str | Path):
    """Read ``[retrain]`` (and ``[feed]``, ``[model]``, ``[train]``) from a TOML file; RetrainError names a bad key."""
    from daemon.core.config import ConfigError, load_config

    from .config import TrainConfig

    path = Path(path)
    try:
        daemon_cfg = load_config(path)
    except ConfigError as e:
        raise RetrainError(str(e)) from None
    raw = daemon_cfg.retrain
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise RetrainError(f"unknown key{'s' if len(unknown) > 1 else ''} in [retrain]: {', '.join(unknown)}")
    defaults = RetrainConfig()
    vals: dict = {}
    for key, value in raw.items():
        d = getattr(defaults, key)
        ok = (isinstance(value, str) if isinstance(d, str) else
              isinstance(value, list) and all(isinstance(v, str) for v in value) if isinstance(d, tuple) else
              isinstance(value, int) and not isinstance(value, bool) if isinstance(d, int) else
              isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise RetrainError(f"[retrain].{key} is {value!r}, expected {type(d).__name__}")
        vals[key] = tuple(value) if isinstance(d, tuple) else (float(value) if isinstance(d, float) else value)
    base = path.resolve().parent
    feed = daemon_cfg.feed
    model = daemon_cfg.model
    cfg = RetrainConfig(**vals, rest_url=feed.rest_url, category=feed.category, pid_file=model.pid_file,
                        kernel=model.kernel, kernel_dir=model.kernel_dir, config_path=str(path))
    cfg = dataclasses.replace(cfg, data_dir=str(base / cfg.data_dir), store=str(base / cfg.store),
                              symbols=cfg.symbols or feed.symbols, interval=cfg.interval or feed.interval)
    for key in ("window_days", "holdout_days", "block_hours", "bootstrap_samples", "min_holdout_rows"):
        if not getattr(cfg, key) > 0:
            raise RetrainError(f"[retrain].{key} is {getattr(cfg, key)!r}, expected a positive number")
    if not math.isfinite(cfg.margin) or cfg.margin < 0:
        raise RetrainError(f"[retrain].margin is {cfg.margin!r}, expected a number >= 0 (nats)")
    from daemon.core.parser import INTERVAL_MS

    if cfg.interval not in INTERVAL_MS:
        raise RetrainError(f"[retrain].interval is {cfg.interval!r}, expected one of {', '.join(INTERVAL_MS)}")
    for s in cfg.symbols:
        if not s.isalnum() or s != s.upper():
            raise RetrainError(f"[retrain].symbols has {s!r}, expected upper-case letters and digits like BTCUSDT")
    try:
        train_cfg = TrainConfig.from_mapping(daemon_cfg.train)
    except ValueError as e:
        raise RetrainError(str(e)) from None
    # ablations, the T x alpha sweep and the control's own tuning grid describe a model; a retrain needs the model
    train_cfg = train_cfg.replace(ablations=(), progress=False, sweep=False, control_lrs=(train_cfg.student_lr,),
                                  control_weight_decays=(train_cfg.student_weight_decay,))
    return cfg, train_cfg


# ---------------------------------------------------------------------- steps
def repair_tail(path: Path) -> int:
    """Cut a partial last line (a download killed mid-write) so the file resumes after its last whole row.

    Returns the bytes removed. Without this, the resume point would be read from a truncated number.
    """
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 4096))
        tail = fh.read()
        if tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n")
        if cut < 0 and size > 4096:
            raise RetrainError(f"{path}: last line longer than 4096 bytes, not a kline CSV")
        keep = size - len(tail) + cut + 1
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return size - keep


class _RunLock:
    """One retrain at a time per data folder (a timer run and a manual one would append to the same files)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / ".retrain.lock"

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RetrainBusy(f"another retrain holds {self.path}; try again when it has finished") from None
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


class RetrainBusy(RuntimeError):
    """Another retrain is running on the same data folder."""


async def _fetch_all(cfg: RetrainConfig) -> dict:
    """Bring every symbol's CSV up to the exchange's latest closed bar; return per-symbol fetch results."""
    import aiohttp

    from daemon.aio.rest import RestClient

    from .fetch import fetch, last_start_ms

    out = {}
    data_dir = Path(cfg.data_dir)
    async with aiohttp.ClientSession() as session:
        client = RestClient(cfg.rest_url, cfg.category, session, max_attempts=4)
        for symbol in cfg.symbols:
            latest = await client.closed_klines(symbol, cfg.interval, count=1)
            if not latest:
                raise RetrainError(f"{symbol}: the exchange returned no closed {cfg.interval} bar")
            end_ms = latest[-1].start_ms
            path = data_dir / f"{symbol}.csv"
            repaired = repair_tail(path)
            last = last_start_ms(path)
            start_ms = end_ms - int((cfg.window_days + cfg.holdout_days) * DAY_MS) + cfg.interval_ms
            if last is not None and last >= end_ms:  # nothing closed since the last run
                out[symbol] = {"written": 0, "resumed": True, "requests": 0, "retries": 0, "missing_bars": 0,
                               "last_start_ms": last, "exchange_latest_ms": end_ms}
                continue
            res = await fetch(base_url=cfg.rest_url, symbol=symbol, interval=cfg.interval,
                              start_ms=start_ms if last is None else last + cfg.interval_ms, end_ms=end_ms, out=path,
                              category=cfg.category, progress=False)
            out[symbol] = {**res, "exchange_latest_ms": end_ms, "partial_line_bytes_cut": repaired}
    return out


def _window_files(cfg: RetrainConfig, run_dir: Path):
    """Read the data folder; write the training window's CSVs; return (series over window+holdout, ranges)."""
    from .data import DataError, Series, read_csv

    series: list[Series] = []
    for symbol in cfg.symbols:
        path = Path(cfg.data_dir) / f"{symbol}.csv"
        try:
            s = read_csv(path)
        except (DataError, OSError) as e:
            raise RetrainError(f"{path}: {e}") from None
        if s.interval_ms != cfg.interval_ms:
            raise RetrainError(f"{path}: bars are {s.interval_ms} ms apart, [retrain].interval needs {cfg.interval_ms}")
        series.append(s)
    end_ms = min(int(s.start_ms[-1]) for s in series)  # the latest bar every symbol has
    hold_lo = end_ms - int(cfg.holdout_days * DAY_MS) + cfg.interval_ms
    win_lo = hold_lo - int(cfg.window_days * DAY_MS)
    kept, train_paths = [], []
    win_dir = run_dir / "window"
    win_dir.mkdir(parents=True, exist_ok=True)
    for s in series:
        lo, hi = np.searchsorted(s.start_ms, [win_lo, end_ms + 1])
        full = s.slice(int(lo), int(hi))
        cut = int(np.searchsorted(full.start_ms, hold_lo))
        if cut == 0 or len(full) - cut == 0:
            raise RetrainError(f"{s.symbol}: {cut} bars in the window and {len(full) - cut} held back; "
                               "fetch more history or shorten [retrain] window_days/holdout_days")
        train_part = full.slice(0, cut)
        p = win_dir / f"{s.symbol}.csv"
        cols = [a.tolist() for a in train_part.arrays()]  # Python numbers: repr round-trips exactly
        with open(p, "w", encoding="ascii") as fh:
            fh.write("start_ms,open,high,low,close,volume\n")
            for t, o, h, l, c, v in zip(*cols, strict=True):
                fh.write(f"{int(t)},{float(o)!r},{float(h)!r},{float(l)!r},{float(c)!r},{float(v)!r}\n")
        train_paths.append(str(p))
        kept.append(full)
    ranges = {"window_start_ms": int(win_lo), "holdout_start_ms": int(hold_lo), "end_ms": int(end_ms)}
    return kept, train_paths, ranges


def _score(series, train_cfg, ranges: dict, candidate, deployed, rcfg: RetrainConfig) -> dict:
    """Held-back log loss of both models, their paired interval, and teacher fidelity."""
    from .bootstrap import blocks_of, paired_mean
    from .dataset import build
    from .evaluate import cohen_kappa, row_log_loss
    from .folds import split_validation
    from .teacher import fit_teacher

    P = build(series, train_cfg)
    hold = P.valid & (P.start_ms >= ranges["holdout_start_ms"])
    y = P.y[hold]
    out: dict = {"holdout_rows": int(hold.sum())}
    p_c = candidate.predict_features(P.x_student[hold])
    ll_c = row_log_loss(p_c, y)
    out["candidate_log_loss"] = float(ll_c.mean()) if ll_c.size else None
    # blocks counted from the first held-back bar, so holdout_days / block_hours of them, all symbols together
    block = blocks_of(P.start_ms[hold] - ranges["holdout_start_ms"], int(rcfg.block_hours * 3_600_000))
    p_d = None
    if deployed is not None:
        p_d = deployed.predict_features(P.x_student[hold])
        ll_d = row_log_loss(p_d, y)
        out["deployed_log_loss"] = float(ll_d.mean()) if ll_d.size else None
        out["delta"] = paired_mean(ll_c - ll_d, block, rcfg.bootstrap_samples, rcfg.seed)
    # teacher fidelity: a teacher fitted on the window (labels purged before the held-back days)
    reach_ms = (train_cfg.horizon_bars + train_cfg.embargo_bars) * P.interval_ms
    rows = P.valid & (P.start_ms + train_cfg.horizon_bars * P.interval_ms < ranges["holdout_start_ms"])
    fit, val = split_validation(P.start_ms, rows, train_cfg.val_frac, reach_ms)
    t0 = time.perf_counter()
    teacher = fit_teacher(P.x_teacher[fit], P.target[fit], P.x_teacher[val], P.target[val], P.y[val], P.to_class,
                          train_cfg, seed=train_cfg.seeds[0])
    p_t, _ = teacher.predict(P.x_teacher[hold])
    dec_t = np.argmax(p_t, axis=1)
    fidelity = {"teacher_log_loss": float(row_log_loss(p_t, y).mean()) if y.size else None,
                "teacher_fit_s": round(time.perf_counter() - t0, 1),
                "candidate_kappa_vs_teacher": cohen_kappa(np.argmax(p_c, axis=1), dec_t)}
    if p_d is not None:
        fidelity["deployed_kappa_vs_teacher"] = cohen_kappa(np.argmax(p_d, axis=1), dec_t)
    out["teacher_fidelity"] = fidelity
    return out


def _gate(scores: dict, rcfg: RetrainConfig, candidate_id: str, deployed_id: str | None, problem: str | None) -> dict:
    """The promotion decision and its reason."""
    gate = {"margin": rcfg.margin, "candidate_log_loss": scores.get("candidate_log_loss"),
            "deployed_log_loss": scores.get("deployed_log_loss"), "deployed": deployed_id}
    if "delta" in scores:
        gate["delta_mean"] = scores["delta"]["mean"]
        gate["delta_ci95"] = scores["delta"]["ci95"]
        gate["blocks"] = scores["delta"]["blocks"]
    if problem:
        return {**gate, "verdict": "refused", "reason": problem}
    if scores.get("holdout_rows", 0) < rcfg.min_holdout_rows:
        return {**gate, "verdict": "refused",
                "reason": f"{scores.get('holdout_rows', 0)} held-back rows, fewer than [retrain].min_holdout_rows "
                          f"= {rcfg.min_holdout_rows}: nothing can be judged"}
    if deployed_id is None:
        return {**gate, "verdict": "promoted", "reason": "no deployed model; the candidate passed validation"}
    if candidate_id == deployed_id:
        return {**gate, "verdict": "refused", "reason": "the candidate is the deployed model (same content hash)"}
    hi = scores["delta"]["ci95"][1]
    if scores["delta"]["blocks"] < 2 or not math.isfinite(hi):
        return {**gate, "verdict": "refused",
                "reason": f"{scores['delta']['blocks']} bootstrap block(s): no interval; lengthen holdout_days or "
                          "shorten block_hours"}
    if hi > rcfg.margin:
        return {**gate, "verdict": "refused",
                "reason": f"candidate may be worse than deployed {deployed_id}: log loss difference "
                          f"{scores['delta']['mean']:+.4f}, 95% interval upper end {hi:+.4f} > margin {rcfg.margin}"}
    return {**gate, "verdict": "promoted",
            "reason": f"not worse than deployed {deployed_id} beyond the margin: difference "
                      f"{scores['delta']['mean']:+.4f}, 95% interval upper end {hi:+.4f} <= {rcfg.margin}"}


def retrain(rcfg: RetrainConfig, train_cfg, *, fetch_data: bool = True) -> dict:
    """Run one retrain (see the module docstring) and return its report; the report is written in every case."""
    from daemon.ops.files import atomic_write, notify_daemon
    from daemon.tools.store import ModelStore, StoreError, ensure_kernel

    from .train import train

    store = ModelStore(rcfg.store)
    try:
        store.check_root(create=True)
        deployed_id = store.current_id()
    except StoreError as e:
        raise RetrainError(str(e)) from None
    started = time.time()
    run_id = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
    run_dir = Path(rcfg.store) / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"run_id": run_id, "started_ms": int(started * 1000), "config": rcfg.config_path,
                    "retrain": {k: v for k, v in dataclasses.asdict(rcfg).items() if k != "config_path"},
                    "deployed": deployed_id, "timings_s": {}}
    timings = report["timings_s"]

    def write() -> None:
        report["finished_ms"] = int(time.time() * 1000)
        atomic_write(Path(rcfg.store) / "runs" / f"{run_id}.json",
                     (json.dumps(_clean(report), indent=1) + "\n").encode())

    try:
        if fetch_data:
            t0 = time.perf_counter()
            report["fetch"] = asyncio.run(_fetch_all(rcfg))
            timings["fetch"] = round(time.perf_counter() - t0, 1)
        series, train_paths, ranges = _window_files(rcfg, run_dir)
        report["ranges"] = ranges
        t0 = time.perf_counter()
        cand_path = run_dir / "candidate.npz"
        doc = train(train_paths, cand_path, train_cfg, interval=rcfg.interval, sweep=False)
        timings["train"] = round(time.perf_counter() - t0, 1)
        shutil.rmtree(run_dir / "window")  # a copy of data_dir's rows within `ranges`: a day's disk, kept for nothing
        report["candidate"] = doc["model_id"]
        report["train_report"] = str(run_dir / "report.json")
        problem = None
        try:  # validated as the daemon will load it, its compiled step built where the daemon looks
            candidate = ensure_kernel(cand_path, rcfg.kernel, rcfg.kernel_dir)
        except StoreError as e:
            problem, candidate = f"candidate fails validation: {e}", None
        if candidate is not None and candidate.interval != rcfg.interval:
            problem = f"candidate is for interval {candidate.interval!r}, [retrain].interval is {rcfg.interval!r}"
        deployed = None
        if deployed_id is not None:
            deployed = ensure_kernel(store.load(deployed_id).path, rcfg.kernel, rcfg.kernel_dir)
        t0 = time.perf_counter()
        scores = _score(series, train_cfg, ranges, candidate, deployed, rcfg) if candidate is not None else {}
        timings["score"] = round(time.perf_counter() - t0, 1)
        report["scores"] = scores
        gate = _gate(scores, rcfg, doc["model_id"], deployed_id, problem)
        report["gate"] = gate
        if gate["verdict"] == "promoted":
            store.add(cand_path, {"gate": gate, "run": run_id, "ranges": ranges,
                                  "teacher_fidelity": scores.get("teacher_fidelity")})
            store.promote(doc["model_id"], gate["reason"])
            report["notify"] = notify_daemon(rcfg.pid_file)
    except Exception as e:
        report["error"] = f"{type(e).__name__}: {e}"
        write()
        raise
    timings["total"] = round(time.time() - started, 1)
    write()
    return report


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal retrain``."""
    parser.add_argument("--config", required=True, help="TOML file with [retrain] (and [feed], [model], [train])")
    parser.add_argument("--no-fetch", action="store_true", help="use the data folder as it is (no exchange access)")


def run_cli(args: argparse.Namespace) -> int:
    """Entry point of ``kdsignal retrain``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from daemon.aio.rest import RestError
    from daemon.ops.files import PidFileError
    from daemon.tools.store import StoreError

    from .data import DataError
    from .fetch import FetchError

    try:
        rcfg, train_cfg = load_retrain_config(args.config)
        os.environ.setdefault("OMP_NUM_THREADS", str(train_cfg.num_threads))
        with _RunLock(Path(rcfg.data_dir)):
            report = retrain(rcfg, train_cfg, fetch_data=not args.no_fetch)
    except (RetrainError, StoreError, PidFileError, DataError, FetchError, tomllib.TOMLDecodeError, OSError) as e:
        print(f"kdsignal retrain: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (RestError, ConnectionError, TimeoutError) as e:
        print(f"kdsignal retrain: the exchange could not be reached: {e}", file=sys.stderr)
        return EXIT_CRASH
    except RetrainBusy as e:
        print(f"kdsignal retrain: {e}", file=sys.stderr)
        return EXIT_CRASH
    gate = report["gate"]
    print(json.dumps({"run": report["run_id"], "candidate": report.get("candidate"), "deployed": report["deployed"],
                      "verdict": gate["verdict"], "reason": gate["reason"],
                      "teacher_fidelity": report.get("scores", {}).get("teacher_fidelity"),
                      "notify": report.get("notify"), "seconds": report["timings_s"].get("total")}, indent=1))
    return EXIT_OK
