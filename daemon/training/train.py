"""``kdsignal train``: teacher ensemble, distilled student and fair controls, judged on a lockbox.

The protocol, in order (``report.md`` states it with this run's dates):

1. **Split** (``folds.lockbox_split``): the newest ``lockbox_days`` (default 15% of the span) are the
   lockbox; development is every row whose label window plus embargo ends before it.
2. **Teachers**: one per development block, each fitted on the blocks before it, so every soft target is
   out of fold; one more fitted on all development rows labels the lockbox.
3. **Choices on development folds only** (``develop``, ``choose_policies``): temperature x alpha for the
   distilled student, learning rate x weight decay for the tuned control, and the decision policy's
   thresholds (``trading.choose_policy``). Then every model over every
   seed on the development folds, and each ablation judged by its paired interval there.
4. **Lockbox, touched once**: each model refitted on all development rows (early stopping on their
   newest ``val_frac``) and scored on the lockbox.
5. **Shipped model**: the distilled student (first seed) refitted on every row with a soft target
   (development blocks >= 1 and the lockbox) for the number of epochs step 4 early-stopped at; it has no
   held-out score of its own, and its manifest says so.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from daemon.core import trading as tr

from . import evaluate as ev
from . import methods, regime
from .bootstrap import blocks_of, paired_mean, paired_ratio, verdict
from .config import ABLATIONS, LABEL_ABLATIONS, TrainConfig, load_train_config
from .data import gap_report, load_dataset
from .dataset import Pooled, build, label_params
from .distil import recency_weights, train_student
from .folds import lockbox_fold, lockbox_split, split_validation, walk_forward
from .inputs import STUDENT_FEATURES
from .labels import CLASSES
from .policies import _edges, _markets, choose_policies, development_ticks, fee_cases
from .side_outputs import save_alt_student, save_run_teacher
from .teacher import fit_teacher

# overrides that change the labels or the teacher: the table is rebuilt and the teachers refitted
_TEACHER_KEYS = ("teacher_extra_features", "teacher_buckets", "teacher_hidden", "teacher_lgbm", "lgbm_weight",
                 "teacher_input_transform", "horizon_bars", "band_k", "vol_window", "fee_per_side")
# the models compared with the distilled student, in table order (name, one-line description)
CONTROLS = (
    ("control", "hard labels, same rows, seeds, initial weights and budget"),
    ("control_all_rows", "hard labels on every usable row (also the first block, which has no soft targets)"),
    ("label_smoothing", "the distilled loss (same T, alpha) towards the training class shares instead of the teacher"),
    ("control_tuned", "hard labels with its own learning rate and weight decay, chosen on development folds"),
    ("logistic", "multinomial logistic regression on the student's features"),
    ("volatility", "class frequencies of the training rows in each rvol_20 decile"),
)


def _bar(iterable, cfg: TrainConfig, desc: str, total: int | None = None):
    if not cfg.progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


def _prior(y: np.ndarray) -> np.ndarray:
    c = np.bincount(y, minlength=3).astype(np.float64) + 1.0
    return c / c.sum()


# Worker processes are forked with the pooled table already in memory: jobs carry only indices.
_SHARED: dict = {}


def _pool(run_cfg: TrainConfig, **shared):
    """A fork-based pool of ``cfg.num_threads`` single-threaded workers (None: run in this process).

    One thread per process: OpenBLAS and OpenMP (LightGBM) threads spin while they wait, and two such
    pools fighting over two cores (or over a core another program holds) slow down many times over.
    """
    _SHARED.clear()
    _SHARED.update(shared)
    if run_cfg.num_threads <= 1 or os.name != "posix":
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=run_cfg.num_threads, mp_context=multiprocessing.get_context("fork"))


def _map(pool, fn, jobs: list, cfg: TrainConfig, desc: str):
    """Yield ``fn(job)`` results (in completion order when pooled) under a progress bar."""
    if pool is None:
        for job in _bar(jobs, cfg, desc, total=len(jobs)):
            yield fn(job)
        return
    from concurrent.futures import as_completed

    with pool:
        futures = [pool.submit(fn, job) for job in jobs]
        for fut in _bar(as_completed(futures), cfg, desc, total=len(futures)):
            yield fut.result()


def _worker_cfg(cfg: TrainConfig) -> TrainConfig:
    return cfg.replace(num_threads=1) if cfg.num_threads > 1 else cfg


def _reach_ms(P: Pooled, cfg: TrainConfig) -> int:
    return (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms


def _teacher_job(job: tuple[int, int]) -> tuple[int, np.ndarray, dict, dict, object]:
    k, seed = job
    P, cfg, folds = _SHARED["P"], _worker_cfg(_SHARED["cfg"]), _SHARED["folds"]
    f = folds[k]
    t0 = time.perf_counter()
    fit, val = split_validation(P.start_ms, f.train, cfg.val_frac, _reach_ms(P, cfg))
    teacher = fit_teacher(P.x_teacher[fit], P.target[fit], P.x_teacher[val], P.target[val], P.y[val],
                          P.to_class, cfg, seed=seed)
    p, mem = teacher.predict(P.x_teacher[f.test])
    info = {"block": f.index, "fit_rows": int(fit.sum()), "val_rows": int(val.sum()),
            "seconds": round(time.perf_counter() - t0, 2), "members": teacher.info}
    return k, p, mem, info, teacher if k == _SHARED.get("keep_fold") else None


def fit_teachers(P: Pooled, cfg: TrainConfig, folds, seed: int,
                 keep: dict | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict]]:
    """Fit one teacher per fold on its (purged) training rows and predict its test rows.

    Returns the ensemble probabilities (NaN on rows no teacher labelled), each member's probabilities, and
    per-fold fit info. Folds are fitted in parallel, largest first. With ``keep`` (a dict), the last fold's
    teacher is kept in ``keep["teacher"]`` (the one written to the teacher folder).
    """
    p_t = np.full((len(P), 3), np.nan)
    members: dict[str, np.ndarray] = {}
    info = {}
    jobs = sorted(((k, seed) for k in range(len(folds))), key=lambda j: -int(folds[j[0]].train.sum()))
    pool = _pool(cfg, P=P, cfg=cfg, folds=folds, keep_fold=len(folds) - 1 if keep is not None else None)
    for k, p, mem, inf, teacher in _map(pool, _teacher_job, jobs, cfg, "teachers"):
        if teacher is not None:
            keep["teacher"] = teacher
        f = folds[k]
        p_t[f.test] = p
        for name, v in mem.items():
            members.setdefault(name, np.full((len(P), 3), np.nan))[f.test] = v
        info[k] = inf
    return p_t, members, [info[k] for k in sorted(info)]


@dataclass(frozen=True)
class Variant:
    """One way of training the student: its rows, loss, optimiser settings and config overrides."""

    temperature: float
    alpha: float
    lr: float
    weight_decay: float
    rows: str = "soft"  # "soft": rows with out-of-fold soft targets; "all": every usable row before the test
    prior_teacher: bool = False  # the distillation loss with a "teacher" that only knows the class shares
    hidden: tuple[int, ...] | None = None  # () is logistic regression
    overrides: tuple[tuple[str, object], ...] = field(default=())
    regime: str = "none"  # a daemon/training/regime.py variant: "temperature", "input" or "router"
    regime_params: tuple[tuple[float, float], ...] = ()  # per regime (T, alpha), for "temperature"


def distilled(cfg: TrainConfig, temperature: float, alpha: float, **kw) -> Variant:
    """The distilled student at (T, alpha) with the config's optimiser settings."""
    return Variant(float(temperature), float(alpha), cfg.student_lr, cfg.student_weight_decay, **kw)


def control(cfg: TrainConfig, lr: float | None = None, weight_decay: float | None = None, **kw) -> Variant:
    """A hard-label student (alpha = 1; the temperature is then irrelevant and fixed to 1)."""
    return Variant(1.0, 1.0, cfg.student_lr if lr is None else float(lr),
                   cfg.student_weight_decay if weight_decay is None else float(weight_decay), **kw)


def _student_job(job: tuple[int, int, Variant]) -> tuple[tuple, np.ndarray, dict]:
    k, seed, v = job
    P, folds, p_t = _SHARED["P"], _SHARED["folds"], _SHARED["p_t"]
    cfg = _worker_cfg(_SHARED["cfg"]).replace(**dict(v.overrides))
    f = folds[k]
    first_soft_ms = int(folds[0].test_lo_ms)
    every = v.rows == "all" or cfg.student_first_block
    train = f.train if every else f.train & (P.start_ms >= first_soft_ms)
    rows = train if every else train & np.all(np.isfinite(p_t), axis=1)
    fit, val = split_validation(P.start_ms, rows, cfg.val_frac, _reach_ms(P, cfg))
    w = recency_weights(P.start_ms[fit], cfg.recency_half_life_days)
    pf = p_t[fit]
    if v.prior_teacher:
        pf = np.tile(_prior(P.y[fit]), (len(pf), 1))
    if v.regime != "none":
        p, info = regime.fit_variant(v, P, f, fit, val, pf, w, cfg, seed)
        return job, p, {**info, "fit_rows": int(fit.sum()), "val_rows": int(val.sum())}
    s = train_student(P.x_student[fit], P.y[fit], pf, w, P.x_student[val], P.y[val], cfg, seed,
                      temperature=v.temperature, alpha=v.alpha, hidden=v.hidden, lr=v.lr, weight_decay=v.weight_decay)
    info = {"best_epoch": s.best_epoch, "fit_rows": int(fit.sum()), "val_rows": int(val.sum()),
            "val_lo_ms": int(P.start_ms[val].min()) if val.any() else None,
            "val_hi_ms": int(P.start_ms[val].max()) if val.any() else None}
    return job, s.predict_proba(P.x_student[f.test]), info


def run_jobs(P: Pooled, cfg: TrainConfig, folds, p_t: np.ndarray, jobs: list, cache: dict, desc: str) -> dict:
    """Train every (fold, seed, variant) job not yet in ``cache`` (in parallel); return the cache."""
    todo = sorted({j for j in jobs if j not in cache}, key=lambda j: -int(folds[j[0]].train.sum()))
    if todo:
        pool = _pool(cfg, P=P, cfg=cfg, folds=folds, p_t=p_t)
        for job, p, info in _map(pool, _student_job, todo, cfg, desc):
            cache[job] = (p, info)
    return cache


def _dev_probs(cache: dict, ks: list[int], seed: int, v: Variant) -> np.ndarray:
    return np.concatenate([cache[(k, seed, v)][0] for k in ks])


def predict(P: Pooled, cfg: TrainConfig, folds, p_t: np.ndarray, cache: dict, ks: list[int], variants: dict,
            seeds) -> dict[str, list[np.ndarray]]:
    """Per-seed test probabilities (folds ``ks`` concatenated) of each named variant, trained where not cached."""
    run_jobs(P, cfg, folds, p_t, [(k, s, v) for v in variants.values() for s in seeds for k in ks], cache, "variants")
    return {name: [_dev_probs(cache, ks, s, v) for s in seeds] for name, v in variants.items()}


def volatility_baseline(P: Pooled, train: np.ndarray, test: np.ndarray, bins: int = 10) -> np.ndarray:
    """Class frequencies of the training rows in each ``rvol_20`` decile (deciles of the training rows)."""
    j = list(STUDENT_FEATURES).index("rvol_20")
    xt, xs = P.x_student[train, j], P.x_student[test, j]
    edges = np.quantile(xt, np.linspace(0, 1, bins + 1)[1:-1])
    bt, bs = np.searchsorted(edges, xt), np.searchsorted(edges, xs)
    table = np.ones((bins, 3))
    np.add.at(table, (bt, P.y[train]), 1.0)
    table /= table.sum(axis=1, keepdims=True)
    return table[bs]


def _nanmean_cols(rows: list[list[float]]) -> list[float]:
    a = np.array(rows, dtype=float)
    n = np.isfinite(a).sum(axis=0)
    return np.where(n > 0, np.nansum(a, axis=0) / np.maximum(n, 1), np.nan).tolist()


# --- evaluation -------------------------------------------------------------------------------------------

def assess(P: Pooled, idx: np.ndarray, models: dict[str, list[np.ndarray]], p_teacher: np.ndarray,
           cfg: TrainConfig) -> dict:
    """Every model's measures on rows ``idx`` (mean over its seeds), and paired intervals against the student.

    ``models`` maps a name to its per-seed probabilities on ``idx``; it must hold "student", "teacher",
    "baseline". Each comparison is the row mean of ``log loss(other) - log loss(student)`` (positive:
    the distilled student is better), with a one-day block bootstrap interval.
    """
    y, fwd = P.y[idx], P.fwd[idx]
    blocks = blocks_of(P.start_ms[idx])
    out: dict = {}
    row_ll: dict[str, np.ndarray] = {}
    for name, per_seed in models.items():
        ms = [ev.signal_measures(p, y, fwd, None if name == "teacher" else p_teacher, cfg.ece_bins) for p in per_seed]
        agg = {}
        for key in ms[0]:
            vals = [m[key] for m in ms]
            agg[key] = _nanmean_cols(vals) if isinstance(vals[0], list) else float(np.mean(vals))
        if len(ms) > 1:
            agg["log_loss_seed_sd"] = float(np.std([m["log_loss"] for m in ms]))
        agg["seeds"] = len(ms)
        out[name] = agg
        row_ll[name] = np.mean([ev.row_log_loss(p, y) for p in per_seed], axis=0)
    n_boot = cfg.bootstrap_samples
    s = row_ll["student"]
    deltas = {name: paired_mean(row_ll[name] - s, blocks, n_boot) for name in row_ll
              if name not in ("student",)}
    out["deltas_vs_student"] = deltas
    if "control" in row_ll:
        out["delta_vs_control"] = deltas["control"]
        gap = paired_ratio(row_ll["control"] - s, row_ll["control"] - row_ll["teacher"], blocks, n_boot)
        out["gap_recovered"] = gap["mean"]
        out["gap_recovered_ci95"] = gap["ci95"]
    out["student_vs_teacher"] = paired_mean(s - row_ll["teacher"], blocks, n_boot)
    out["rows"] = len(idx)
    out["blocks"] = int(blocks.max()) + 1 if len(blocks) else 0
    out["_row_ll"] = row_ll
    return out


def trading_readout(P: Pooled, region: np.ndarray, edges: dict[str, np.ndarray], policies: dict, ticks: dict,
                    cfg: TrainConfig, bars_per_year: float, argmax_full: np.ndarray) -> tuple[dict, dict]:
    """Every model's read-out on ``region`` with its development-chosen policy; returns (read-out, equity curves).

    ``student_argmax`` is the student traded without a threshold (long on buy, short on sell, flat on hold,
    re-decided every bar), for its break-even fee; ``argmax_full`` holds its -1/0/+1 (NaN off the test rows).
    """
    markets = _markets(P, region, ticks, cfg)
    out: dict = {}
    curves: dict = {}
    for model in [*edges, "student_argmax", "always_flat", "buy_and_hold"]:
        out[model] = {}
        for case, fee in fee_cases(cfg).items():
            if model == "always_flat":
                pos = {m.symbol: np.zeros(len(m.open), dtype=np.int64) for m in markets}
                extra = {}
            elif model == "student_argmax":
                e = _edges(P, region, argmax_full)
                pos = {s: np.nan_to_num(x, nan=0.0).astype(np.int64) for s, x in e.items()}
                extra = {}
            elif model == "buy_and_hold":
                pos = {m.symbol: np.ones(len(m.open), dtype=np.int64) for m in markets}
                extra = {}
            else:
                pol = policies[model][case]
                e = _edges(P, region, edges[model])
                pos = {s: tr.positions(x, pol["threshold"], pol["hold_bars"]) for s, x in e.items()}
                extra = {"threshold": pol["threshold"], "hold_bars": pol["hold_bars"], "by_hold_bars": {}}
                for hold, mp in pol["by_hold_bars"].items():
                    p2 = {s: tr.positions(x, mp["threshold"], mp["hold_bars"]) for s, x in e.items()}
                    extra["by_hold_bars"][hold] = {"threshold": mp["threshold"],
                                                   **tr.backtest(markets, p2, fee, bars_per_year)[0]}
            stats, per, runs = tr.backtest(markets, pos, fee, bars_per_year)
            out[model][case] = {**stats, **extra, "per_symbol": per}
            curves.setdefault(case, {})[model] = {m.symbol: (r_.start_ms, np.cumsum(r_.net))
                                                  for m, r_ in zip(markets, runs, strict=True)}
    return out, curves


def layout(P: Pooled, cfg: TrainConfig):
    """The lockbox split, the development block edges, and the folds: development folds, then the lockbox."""
    split = lockbox_split(P.start_ms, P.valid, cfg.lockbox_days, P.interval_ms, cfg.horizon_bars, cfg.embargo_bars)
    edges, dev_folds = walk_forward(P.start_ms, split.dev, cfg.n_folds, P.interval_ms, cfg.horizon_bars,
                                    cfg.embargo_bars, end_ms=split.dev_end_ms)
    return split, edges, [*dev_folds, lockbox_fold(split, P.start_ms, dev_folds[-1].index + 1)]


# --- the run ----------------------------------------------------------------------------------------------

def develop(P: Pooled, cfg: TrainConfig, folds, p_t: np.ndarray, cache: dict, timings: dict) -> dict:
    """Every choice, made on the development folds (``folds[1:-1]``; the last fold is the lockbox, unread here)."""
    seed0 = cfg.seeds[0]
    ks = list(range(1, len(folds) - 1))
    idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    y = P.y[idx]
    t0 = time.perf_counter()
    grid = [(t, a) for t in cfg.sweep_temperatures for a in cfg.sweep_alphas] if cfg.sweep else \
        [(cfg.temperature, cfg.alpha)]
    ctl_grid = [(lr, wd) for lr in cfg.control_lrs for wd in cfg.control_weight_decays]
    jobs = [(k, seed0, distilled(cfg, t, a)) for k in ks for t, a in grid]
    jobs += [(k, seed0, control(cfg, lr, wd)) for k in ks for lr, wd in ctl_grid]
    run_jobs(P, cfg, folds, p_t, jobs, cache, "choices")
    sweep = [{"temperature": t, "alpha": a,
              "log_loss": ev.log_loss(_dev_probs(cache, ks, seed0, distilled(cfg, t, a)), y)}
             for t, a in grid]
    best = min(sweep, key=lambda g: g["log_loss"])
    ctl = [{"lr": lr, "weight_decay": wd,
            "log_loss": ev.log_loss(_dev_probs(cache, ks, seed0, control(cfg, lr, wd)), y)}
           for lr, wd in ctl_grid]
    best_ctl = min(ctl, key=lambda g: g["log_loss"])
    timings["choices_s"] = time.perf_counter() - t0
    return {"temperature": best["temperature"], "alpha": best["alpha"], "sweep": sweep, "sweep_seed": seed0,
            "control_lr": best_ctl["lr"], "control_weight_decay": best_ctl["weight_decay"], "control_grid": ctl,
            "on": "development folds " + ", ".join(str(folds[k].index) for k in ks)}


def model_variants(cfg: TrainConfig, ch: dict) -> dict[str, Variant]:
    """The student, the second student size and the trained controls, as chosen on development folds."""
    alt = cfg.alt_student_name
    return {
        "student": distilled(cfg, ch["temperature"], ch["alpha"]),
        **({alt: distilled(cfg, ch["temperature"], ch["alpha"], hidden=tuple(cfg.student_alt_hidden))} if alt else {}),
        "control": control(cfg),
        "control_all_rows": control(cfg, rows="all"),
        "label_smoothing": distilled(cfg, ch["temperature"], ch["alpha"], prior_teacher=True),
        "control_tuned": control(cfg, ch["control_lr"], ch["control_weight_decay"]),
        "logistic": control(cfg, hidden=()),
    }


def _seeds_for(name: str, cfg: TrainConfig) -> tuple[int, ...]:
    return cfg.seeds[:1] if name == "logistic" else cfg.seeds  # convex: one seed


def models_on(P: Pooled, cfg: TrainConfig, folds, ks: list[int], p_t: np.ndarray, cache: dict,
              variants: dict[str, Variant]) -> dict[str, list[np.ndarray]]:
    """Per-seed predictions of every model on folds ``ks`` (concatenated), with teacher and baselines."""
    jobs = [(k, s, v) for name, v in variants.items() for s in _seeds_for(name, cfg) for k in ks]
    run_jobs(P, cfg, folds, p_t, jobs, cache, "models")
    out = {name: [_dev_probs(cache, ks, s, v) for s in _seeds_for(name, cfg)] for name, v in variants.items()}
    idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    out["teacher"] = [p_t[idx]]
    out["baseline"] = [np.concatenate([np.tile(_prior(P.y[folds[k].train]), (int(folds[k].test.sum()), 1))
                                       for k in ks])]
    out["volatility"] = [np.concatenate([volatility_baseline(P, folds[k].train, folds[k].test) for k in ks])]
    return out


def run_ablations(series, P: Pooled, cfg: TrainConfig, folds, p_t: np.ndarray, cache: dict, ch: dict,
                  dev_models: dict, split) -> list[dict]:
    """Each option in ``cfg.ablations`` over every seed on the development folds, judged by its paired interval."""
    ks = list(range(1, len(folds) - 1))
    idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    blocks = blocks_of(P.start_ms[idx])
    base_ll = np.mean([ev.row_log_loss(p, P.y[idx]) for p in dev_models["student"]], axis=0)
    rows = []
    for name in cfg.ablations:
        over, desc = ABLATIONS[name]
        if all(getattr(cfg, k) == v for k, v in over.items()):
            continue  # already the default
        t0 = time.perf_counter()
        acfg = cfg.replace(**over)
        v = distilled(cfg, ch["temperature"], ch["alpha"], overrides=tuple(sorted(over.items())))
        if any(k in over for k in _TEACHER_KEYS):
            aP = build(series, acfg)
            asplit = lockbox_split(aP.start_ms, aP.valid, cfg.lockbox_days, aP.interval_ms, acfg.horizon_bars,
                                   acfg.embargo_bars)
            _, afolds = walk_forward(aP.start_ms, asplit.dev, acfg.n_folds, aP.interval_ms, acfg.horizon_bars,
                                     acfg.embargo_bars, end_ms=asplit.dev_end_ms)
            afolds = [*afolds, lockbox_fold(asplit, aP.start_ms, afolds[-1].index + 1)]
            ap_t, _, _ = fit_teachers(aP, acfg, afolds[:-1], seed=cfg.seeds[0])
            acache: dict = {}
            v = distilled(cfg, ch["temperature"], ch["alpha"])
            run_jobs(aP, acfg, afolds, ap_t, [(k, s, v) for k in ks for s in cfg.seeds], acache, name)
            preds = [_dev_probs(acache, ks, s, v) for s in cfg.seeds]
            aidx = np.concatenate([np.flatnonzero(afolds[k].test) for k in ks])
            teacher_ll = ev.log_loss(ap_t[aidx], aP.y[aidx])
        else:
            aP, aidx = P, idx
            run_jobs(P, cfg, folds, p_t, [(k, s, v) for k in ks for s in cfg.seeds], cache, name)
            preds = [_dev_probs(cache, ks, s, v) for s in cfg.seeds]
            teacher_ll = ev.log_loss(p_t[idx], P.y[idx])
        row = {"name": name, "description": desc, "seeds": len(cfg.seeds), "teacher_log_loss": teacher_ll,
               "student_log_loss": float(np.mean([ev.log_loss(p, aP.y[aidx]) for p in preds])),
               "seconds": round(time.perf_counter() - t0, 1)}
        if name in LABEL_ABLATIONS or len(aidx) != len(idx) or not np.array_equal(aP.y[aidx], P.y[idx]):
            row["baseline_log_loss"] = ev.log_loss(
                np.concatenate([np.tile(_prior(aP.y[afolds[k].train]), (int(afolds[k].test.sum()), 1)) for k in ks]),
                aP.y[aidx]) if aP is not P else None
            row["verdict"] = "other labels: log losses not comparable row for row"
        else:
            a_ll = np.mean([ev.row_log_loss(p, P.y[idx]) for p in preds], axis=0)
            d = paired_mean(base_ll - a_ll, blocks, cfg.bootstrap_samples)  # positive: the option helps
            row["delta_vs_default"] = d
            row["verdict"] = verdict(d["ci95"])
        rows.append(row)
    return rows


def train(inputs: list[str], out_path: str | Path, cfg: TrainConfig, *, interval: str | None = None,
          sweep: bool | None = None, config_path: str | None = None) -> dict:
    """Run the whole protocol and write the artifact, report.json, report.md and plots; return the report."""
    from daemon.core.artifact import save_artifact

    from . import report

    if sweep is not None:
        cfg = cfg.replace(sweep=sweep)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_path = Path(out_path)
    series = load_dataset(inputs, interval=interval)
    P = build(series, cfg)
    bars_per_year = 365.25 * 86_400_000 / P.interval_ms
    split, edges, folds = layout(P, cfg)
    L = len(folds) - 1
    ks = list(range(1, L))
    timings["data_s"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    kept: dict = {}
    p_t, members, teacher_info = fit_teachers(P, cfg, folds, seed=cfg.seeds[0], keep=kept)
    timings["teachers_s"] = time.perf_counter() - t0

    cache: dict = {}
    ch = develop(P, cfg, folds, p_t, cache, timings)
    variants = model_variants(cfg, ch)

    t0 = time.perf_counter()
    dev_models = models_on(P, cfg, folds, ks, p_t, cache, variants)
    dev_idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    dev = assess(P, dev_idx, dev_models, p_t[dev_idx], cfg)
    timings["development_models_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ablations = run_ablations(series, P, cfg, folds, p_t, cache, ch, dev_models, split) if cfg.ablations else []
    timings["ablations_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run = SimpleNamespace(variant=functools.partial(distilled, cfg), trade=trading_readout,
                          predict=functools.partial(predict, P, cfg, folds, p_t, cache))
    reg_dev = regime.develop(P, cfg, folds, ch, dev_models, run)
    timings["regime_development_s"] = time.perf_counter() - t0

    # decision policies: chosen on the development test blocks (first seed), before the lockbox is read
    t0 = time.perf_counter()
    ticks = development_ticks(P, split)
    zj = list(STUDENT_FEATURES).index("zclose_20")

    def edge_full(p_rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        e = np.full(len(P), np.nan)
        e[idx] = p_rows[:, 2] - p_rows[:, 0]
        return e

    def argmax_full(p_rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        a = np.full(len(P), np.nan)
        a[idx] = np.argmax(p_rows, axis=1) - 1
        return a

    s0 = cfg.seeds[0]
    dev_region = np.zeros(len(P), dtype=bool)
    dev_region[np.flatnonzero((P.start_ms >= folds[1].test_lo_ms) & (P.start_ms < split.dev_end_ms))] = True
    dev_edges = {"student": edge_full(dev_models["student"][0], dev_idx),
                 "teacher": edge_full(p_t[dev_idx], dev_idx),
                 "control": edge_full(dev_models["control"][0], dev_idx),
                 "mean_reversion": -P.x_student[:, zj]}
    policies = choose_policies(P, dev_region, dev_edges, ticks, cfg, bars_per_year)
    dev["trading"], _ = trading_readout(P, dev_region, dev_edges, policies, ticks, cfg, bars_per_year,
                                        argmax_full(dev_models["student"][0], dev_idx))
    timings["policy_s"] = time.perf_counter() - t0

    # the lockbox, read once: every choice above is fixed
    t0 = time.perf_counter()
    lock_models = models_on(P, cfg, folds, [L], p_t, cache, variants)
    lock_idx = np.flatnonzero(folds[L].test)
    lock = assess(P, lock_idx, lock_models, p_t[lock_idx], cfg)
    lock_region = P.start_ms >= split.lockbox_lo_ms
    lock_edges = {"student": edge_full(lock_models["student"][0], lock_idx),
                  "teacher": edge_full(p_t[lock_idx], lock_idx),
                  "control": edge_full(lock_models["control"][0], lock_idx),
                  "mean_reversion": -P.x_student[:, zj]}
    lock["trading"], curves = trading_readout(P, lock_region, lock_edges, policies, ticks, cfg, bars_per_year,
                                              argmax_full(lock_models["student"][0], lock_idx))
    timings["lockbox_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reg_doc, reg_row = regime.lockbox(P, cfg, folds, reg_dev, lock_models, ticks, dev_region, lock_region,
                                      bars_per_year, run)
    timings["regime_lockbox_s"] = time.perf_counter() - t0

    # the shipped student: every row with a soft target, for the epochs the lockbox model early-stopped at
    t0 = time.perf_counter()
    lock_info = cache[(L, s0, variants["student"])][1]
    epochs = max(1, int(lock_info["best_epoch"]))
    rows = P.valid & (P.start_ms >= int(folds[0].test_lo_ms)) & np.all(np.isfinite(p_t), axis=1)

    def refit(v: Variant, n_epochs: int, **kw):
        return train_student(P.x_student[rows], P.y[rows], p_t[rows], np.ones(int(rows.sum())), P.x_student[:0],
                             P.y[:0], cfg, s0, temperature=v.temperature, alpha=v.alpha, hidden=v.hidden,
                             fixed_epochs=n_epochs, **kw)

    final = refit(variants["student"], epochs, **regime.final_kwargs(cfg, reg_dev, P, rows))
    timings["final_s"] = time.perf_counter() - t0
    method_rows = {}
    if cfg.teacher_sequence:
        t0 = time.perf_counter()
        method_rows["sequence_teacher"] = sequence_teacher(series, P, cfg, folds, split, p_t, ch, dev_models,
                                                           lock_models, ticks, bars_per_year)
        timings["sequence_teacher_s"] = time.perf_counter() - t0
    final_info = {"fit_rows": int(rows.sum()), "fit_lo_ms": int(P.start_ms[rows].min()),
                  "fit_hi_ms": int(P.start_ms[rows].max()), "epochs": epochs, "seed": s0,
                  "early_stopping": {"lo_ms": lock_info["val_lo_ms"], "hi_ms": lock_info["val_hi_ms"],
                                     "rows": lock_info["val_rows"],
                                     "what": "newest val_frac of the development rows; the lockbox model stopped here"}}

    pol = policies["student"]
    policy = {
        "kind": "threshold", "edge": "p_buy - p_sell", "default_case": "taker",
        "rule": "buy when edge > threshold, sell when edge < -threshold, else hold; keep a position hold_bars bars; "
                "a threshold of 1.0 never acts",
        "cases": {case: {"threshold": min(float(pol[case]["threshold"]), 1.0), "hold_bars": int(pol[case]["hold_bars"]),
                         "fee_per_side": fee,
                         "development_net_return_per_symbol": pol[case]["net_return_per_symbol"]}
                  for case, fee in fee_cases(cfg).items()},
        "chosen_on": f"development test blocks {folds[1].index}..{folds[L - 1].index}, "
                     "first seed's walk-forward predictions",
    }

    def brief(a: dict) -> dict:
        return {k: {m: a[k][m] for m in ("log_loss", "accuracy", "direction_auc", "move_auc", "ic")}
                for k in ("teacher", "student", "control", "baseline")}

    manifest = {
        "normalisation": {"clip": cfg.feature_clip},
        "distillation": {"temperature": ch["temperature"], "alpha": ch["alpha"],
                         "teacher": {"mlps": [list(h) for h in cfg.teacher_hidden], "lgbm": cfg.teacher_lgbm,
                                     "lgbm_weight": cfg.lgbm_weight, "extra_features": cfg.teacher_extra_features,
                                     "buckets": list(cfg.teacher_buckets)}},
        "labels": {**label_params(cfg).to_dict(), "fee_per_side": cfg.fee_per_side},
        "data": {"symbols": P.symbols, "interval": series[0].interval, "start_ms": final_info["fit_lo_ms"],
                 "end_ms": final_info["fit_hi_ms"], "files": [Path(x.path).name for x in series],
                 "what": "start_ms..end_ms: the rows this artifact was fitted on (bar starts)",
                 "fit": {"lo_ms": final_info["fit_lo_ms"], "hi_ms": final_info["fit_hi_ms"],
                         "rows": final_info["fit_rows"], "epochs": epochs},
                 "early_stopping": final_info["early_stopping"],
                 "lockbox": {"lo_ms": split.lockbox_lo_ms, "hi_ms": split.lockbox_hi_ms, "days": split.lockbox_days},
                 "development": {"lo_ms": split.dev_lo_ms, "hi_ms": split.dev_end_ms}},
        "metrics": {
            "lockbox": {"what": "the same configuration fitted on development rows only, mean over seeds "
                                f"{list(cfg.seeds)}, scored once on the lockbox; this artifact is that model refitted "
                                "with the lockbox included, so it has no held-out score of its own", **brief(lock),
                        "delta_vs_control": lock.get("delta_vs_control"), "gap_recovered": lock.get("gap_recovered")},
            "development": {"what": "walk-forward test blocks of the development span, mean over seeds", **brief(dev)},
        },
        "policy": policy,
        "training": {"config": cfg.to_dict(), "seed": s0, "choices": {k: ch[k] for k in (
            "temperature", "alpha", "control_lr", "control_weight_decay")}},
    }
    if cfg.regime != "none":
        manifest["distillation"]["regime"] = {
            "variant": cfg.regime, **regime.final_regimes(P, rows).to_dict(), "temperature_alpha": reg_dev["params"],
            "what": "thresholds from the rows this artifact was fitted on; metrics describe the default student, "
                    "this variant's own lockbox read-out is report.json's regime section"}
    if cfg.regime == "router":
        model_id = regime.save_router(out_path, P, rows, p_t, cfg, s0, ch,
                                      cache[(L, s0, reg_dev["_variants"]["router"])][1], epochs, manifest)
    else:
        model_id = save_artifact(out_path, weights=final.mlp.weights, biases=final.mlp.biases,
                                 activations=final.mlp.activations, feature_mean=final.feature_mean,
                                 feature_std=final.feature_std, manifest=manifest)
    alt = cfg.alt_student_name
    side = {}
    if alt:
        t0 = time.perf_counter()
        a_epochs = max(1, int(cache[(L, s0, variants[alt])][1]["best_epoch"]))
        side["alt_student"] = save_alt_student(out_path.parent / f"{alt}.npz", refit(variants[alt], a_epochs), manifest,
                                               name=alt, of=model_id, epochs=a_epochs, lock=lock, dev=dev)
        timings["alt_student_s"] = time.perf_counter() - t0
    if cfg.teacher_dir and kept.get("teacher") is not None:
        t0 = time.perf_counter()
        side["teacher_store"] = save_run_teacher(kept["teacher"], out_path, cfg, P, folds[L], model_id, p_t)
        timings["teacher_store_s"] = time.perf_counter() - t0

    reliability = {k: ev.reliability(lock_models[k][0], P.y[lock_idx], cfg.ece_bins)
                   for k in ("teacher", "student", "control")}
    n_extra = P.x_teacher.shape[1] - P.x_student.shape[1]
    # extras that recompute a student feature (rvol_100, hl_mean_20) are teacher columns, not teacher-only inputs
    cols = [n for n in P.teacher_names[P.x_student.shape[1]:] if not n.startswith("is_")]
    extras = [n for n in cols if n not in STUDENT_FEATURES]
    doc = {
        "model_id": model_id,
        "artifact": out_path.name,
        "command": "kdsignal train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None,
        "config_file": config_path,
        "config": cfg.to_dict(),
        "data": {"files": gap_report(series), "interval": series[0].interval, "pooled_rows": len(P),
                 "valid_rows": int(P.valid.sum()),
                 "class_share": (np.bincount(P.y[P.valid], minlength=3) / P.valid.sum()).tolist(),
                 "ticks": ticks},
        "split": {"development": {"lo_ms": split.dev_lo_ms, "hi_ms": split.dev_end_ms, "rows": int(split.dev.sum()),
                                  "block_edges_ms": [int(e) for e in edges],
                                  "test_blocks": [{"block": folds[k].index, "lo_ms": folds[k].test_lo_ms,
                                                   "hi_ms": folds[k].test_hi_ms, "rows": int(folds[k].test.sum())}
                                                  for k in ks]},
                  "lockbox": {"lo_ms": split.lockbox_lo_ms, "hi_ms": split.lockbox_hi_ms, "days": split.lockbox_days,
                              "rows": int(split.lockbox.sum())},
                  "purge_bars": cfg.horizon_bars + cfg.embargo_bars},
        "classes": list(CLASSES),
        "teacher_inputs": {"student": list(STUDENT_FEATURES), "extra": extras,
                           "duplicates_of_student_features": [n for n in cols if n in STUDENT_FEATURES],
                           "symbol_indicators": n_extra - len(cols), "columns": int(P.x_teacher.shape[1])},
        "teacher_fits": teacher_info,
        "choices": ch,
        "policy": policy,
        "summary": {"lockbox": {k: v for k, v in lock.items() if not k.startswith("_")},
                    "development": {k: v for k, v in dev.items() if not k.startswith("_")}},
        "teacher_members_development_log_loss": {k: ev.log_loss(v[dev_idx], P.y[dev_idx]) for k, v in members.items()},
        "ablations": ablations,
        "regime": reg_doc,
        "methods": {"regime": reg_row, **method_rows},
        "final_student": final_info,
        **side,
        "timings_s": {},
    }
    timings["total_s"] = time.perf_counter() - t_start
    t0 = time.perf_counter()
    doc["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    doc.setdefault("methods", {})["classes"] = {"lockbox": methods.classes_row(doc)}  # its row of the methods table
    report.write_all(out_path.parent, doc, reliability, curves, cfg)
    methods.publish(out_path.parent, report_md=out_path.parent / "report.md")
    doc["timings_s"]["report_s"] = round(time.perf_counter() - t0, 1)
    return doc


def sequence_teacher(series, P: Pooled, cfg: TrainConfig, folds, split, p_t: np.ndarray, ch: dict, dev_models: dict,
                     lock_models: dict, ticks: dict, bars_per_year: float) -> dict:
    """The opt-in sequence teacher (``sequence_eval``): fitted out of fold like the ensemble, added to it at a
    development-chosen weight, distilled into the same student and read once on the lockbox."""
    from . import sequence_eval as se

    t0 = time.perf_counter()
    L = len(folds) - 1
    ks = list(range(1, L))
    p_seq, fits, _ = se.out_of_fold(series, P, cfg, folds, seed=cfg.seeds[0])
    fits_s = time.perf_counter() - t0
    dev_idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    weight, grid = se.choose_weight(p_t[dev_idx], p_seq[dev_idx], P.y[dev_idx], cfg.sequence_weights)
    p_mix = se.mix(p_t, p_seq, weight)
    v = distilled(cfg, ch["temperature"], ch["alpha"])
    caches: dict[str, dict] = {"mix": {}, "alone": {}}
    for name, p_teacher in (("mix", p_mix), ("alone", p_seq)):
        run_jobs(P, cfg, folds, p_teacher, [(k, s, v) for k in [*ks, L] for s in cfg.seeds], caches[name],
                 f"sequence students ({name})")
    parts, students = {}, {}
    for part, kk, models in (("development", ks, dev_models), ("lockbox", [L], lock_models)):
        idx = np.concatenate([np.flatnonzero(folds[k].test) for k in kk])
        students[part] = [_dev_probs(caches["mix"], kk, s, v) for s in cfg.seeds]
        parts[part] = assess(P, idx, {
            "student": students[part], "teacher": [p_mix[idx]], "baseline": models["baseline"],
            "control": models["control"], "student_current": models["student"], "teacher_current": models["teacher"],
            "sequence": [p_seq[idx]],
            "student_sequence_alone": [_dev_probs(caches["alone"], kk, s, v) for s in cfg.seeds],
        }, p_mix[idx], cfg)
    lock_idx = np.flatnonzero(folds[L].test)
    full = {}
    for part, idx in (("development", dev_idx), ("lockbox", lock_idx)):
        full[part] = np.full(len(P), np.nan)
        full[part][idx] = students[part][0][:, 2] - students[part][0][:, 0]
    dev_region = (P.start_ms >= folds[1].test_lo_ms) & (P.start_ms < split.dev_end_ms)
    policies = choose_policies(P, dev_region, {"student": full["development"]}, ticks, cfg, bars_per_year)
    argmax = np.full(len(P), np.nan)
    argmax[lock_idx] = np.argmax(students["lockbox"][0], axis=1) - 1
    trading, _ = trading_readout(P, P.start_ms >= split.lockbox_lo_ms, {"student": full["lockbox"]}, policies, ticks,
                                 cfg, bars_per_year, argmax)
    timings = {"fits_s": round(fits_s, 1), "total_s": round(time.perf_counter() - t0, 1)}
    detail = se.methods_row(parts["lockbox"], parts["development"], trading, cfg, weight, grid, fits, timings,
                            blocks_of(P.start_ms[lock_idx]))
    return {"lockbox": se.table_row(parts["lockbox"], trading, weight), "detail": detail}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal train``."""
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR_OR_FILE",
                        help="kline CSVs (start_ms,open,high,low,close,volume) or folders of them")
    parser.add_argument("--out", default=None,
                        help="artifact path; report and plots go next to it (default models/default.npz, "
                             "models/alpha.npz with --method alpha)")
    parser.add_argument("--method", choices=("classes", "alpha", "strategy"), default=None,
                        help="what is distilled: sell/hold/buy classes, the forward return, or a trading strategy's "
                             "positions (default [train] method)")
    parser.add_argument("--config", default=None, help="TOML file whose [train] table sets the knobs")
    parser.add_argument("--interval", default=None, help="only use files of this bar length (Bybit code, e.g. 5)")
    parser.add_argument("--sweep", action="store_true", default=None,
                        help="choose temperature x alpha on the development folds even if [train] sweep = false")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="use [train] temperature and alpha as they are")
    parser.add_argument("--regime", choices=("none", "temperature", "input", "router"), default=None,
                        help="regime variant of the shipped student (default [train] regime): temperature "
                             "(per-regime T and alpha), router (a student per regime); input is only evaluated "
                             "(see [train] regime_variants)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one [train] knob (TOML value syntax), e.g. --set lockbox_days=30")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--teacher-sequence", action="store_true",
                        help="also fit the sequence teacher (needs the [seq] extra) and report it under "
                             "methods.sequence_teacher (as [train] teacher_sequence = true)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file's [train] table with ``--set`` overrides applied."""
    import tomllib

    cfg = load_train_config(args.config)
    if args.set:
        table = cfg.to_dict()
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            table[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        cfg = TrainConfig.from_mapping(table)
    if args.no_progress:
        cfg = cfg.replace(progress=False)
    if args.method:
        cfg = cfg.replace(method=args.method)
    if getattr(args, "teacher_sequence", False):
        cfg = cfg.replace(teacher_sequence=True)
    if getattr(args, "regime", None):
        cfg = cfg.replace(regime=args.regime)
    return cfg


def run_cli(args: argparse.Namespace) -> int:
    """Entry point of ``kdsignal train``."""
    try:
        cfg = config_from_args(args)
    except (ValueError, OSError) as e:
        print(f"kdsignal train: {e}", file=sys.stderr)
        return 2
    if cfg.teacher_sequence:
        from .sequence_eval import SequenceUnavailable, require_torch

        try:
            require_torch()
        except SequenceUnavailable as e:
            print(f"kdsignal train: {e}", file=sys.stderr)
            return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.num_threads))
    # LightGBM's OpenMP workers spin while waiting by default; on a busy 2-core box that starves everything
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .data import DataError

    if args.out is None:
        default = {"alpha": "models/alpha.npz", "strategy": "models/strategy.npz"}
        args.out = default.get(cfg.method, "models/default.npz")
    if cfg.method == "alpha":
        from .alpha import run_cli_summary, train_alpha

        try:
            doc = train_alpha(args.data, args.out, cfg, interval=args.interval, config_path=args.config)
        except DataError as e:
            print(f"kdsignal train: {e}", file=sys.stderr)
            return 2
        print(json.dumps({**run_cli_summary(doc), "kernel": _build_kernel(args.out)}, indent=1))
        return 0
    if cfg.method == "strategy":
        from .strategy import train_strategy

        try:
            doc = train_strategy(args.data, args.out, cfg, sys.modules[__name__], interval=args.interval,
                                 config_path=args.config)
        except DataError as e:
            print(f"kdsignal train: {e}", file=sys.stderr)
            return 2
        print(json.dumps({"model_id": doc["model_id"], "artifact": doc["artifact"], "seconds": doc["seconds"],
                          "kernel": _build_kernel(args.out)}, indent=1))
        return 0
    try:
        doc = train(args.data, args.out, cfg, interval=args.interval, sweep=args.sweep, config_path=args.config)
    except (DataError, ValueError) as e:
        print(f"kdsignal train: {e}", file=sys.stderr)
        return 2
    kernel = _build_kernel(args.out)
    if doc.get("alt_student"):
        _build_kernel(doc["alt_student"]["path"])
    lk = doc["summary"]["lockbox"]
    print(json.dumps({
        "model_id": doc["model_id"], "artifact": str(args.out), "kernel": kernel,
        "seconds": doc["timings_s"]["total_s"],
        "lockbox": {k: round(lk[k]["log_loss"], 4) for k in ("baseline", "teacher", "student", "control")},
        "delta_vs_control": {"mean": round(lk["delta_vs_control"]["mean"], 5),
                             "ci95": [round(x, 5) for x in lk["delta_vs_control"]["ci95"]],
                             "blocks": lk["delta_vs_control"]["blocks"]},
        "gap_recovered": None if lk["gap_recovered"] is None or not np.isfinite(lk["gap_recovered"])
        else round(lk["gap_recovered"], 3),
        "regime": {k: doc["regime"][k] for k in ("choice_on_development", "recommended", "shipped")},
    }, indent=1))
    return 0


def _build_kernel(artifact) -> str | None:
    """Build the new artifact's compiled step (as ``kdsignal build-kernel`` would) so the daemon can serve it.

    A failed build (no C compiler here, say) is reported, not fatal: the artifact is good, and the machine
    that serves it builds the step with ``kdsignal build-kernel`` (the systemd unit's ExecStartPre).
    """
    from daemon.core.artifact import load_artifact
    from daemon.core.kernel_store import kernel_dir
    from daemon.core.model import student_vector
    from daemon.tools.kernel_build import BuildError, build_kernel

    try:
        return str(build_kernel(student_vector(load_artifact(artifact)), kernel_dir())[0])
    except BuildError as e:
        print(f"kdsignal train: the artifact is written but its kernel is not built: {e}; "
              f"run `kdsignal build-kernel --artifact {artifact}` where a C compiler is available", file=sys.stderr)
        return None
