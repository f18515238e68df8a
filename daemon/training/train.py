"""``kdsignal train``: teacher ensemble, distilled student and control over purged walk-forward folds.

Flow: read and check the CSVs, pool features and labels (``dataset``), fit one teacher per walk-forward
block so every soft target is out of fold (``folds``), train the distilled student and the hard-label
control for every fold and seed, score everything out of sample (``evaluate``), then train the shipped
student on all blocks with soft targets and write the artifact, ``report.json``, ``report.md`` and plots
next to it (``report``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import evaluate as ev
from .config import ABLATIONS, TrainConfig, load_train_config
from .data import gap_report, load_dataset
from .dataset import Pooled, build, label_params
from .folds import split_validation, walk_forward
from .labels import CLASSES
from .distil import Student, recency_weights, train_student
from .teacher import fit_teacher


# overrides that change the labels or the teacher: the table is rebuilt and the teachers refitted
_TEACHER_KEYS = ("teacher_extra_features", "teacher_buckets", "teacher_hidden", "teacher_lgbm", "lgbm_weight",
                 "teacher_input_transform", "horizon_bars", "band_k", "vol_window", "fee_per_side")


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


def _teacher_job(job: tuple[int, int]) -> tuple[int, np.ndarray, dict, dict]:
    k, seed = job
    P, cfg, folds = _SHARED["P"], _worker_cfg(_SHARED["cfg"]), _SHARED["folds"]
    f = folds[k]
    t0 = time.perf_counter()
    reach_ms = (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms
    fit, val = split_validation(P.start_ms, f.train, cfg.val_frac, reach_ms)
    teacher = fit_teacher(P.x_teacher[fit], P.target[fit], P.x_teacher[val], P.target[val], P.y[val],
                          P.to_class, cfg, seed=seed)
    p, mem = teacher.predict(P.x_teacher[f.test])
    info = {"block": f.index, "fit_rows": int(fit.sum()), "val_rows": int(val.sum()),
            "seconds": round(time.perf_counter() - t0, 2), "members": teacher.info}
    return k, p, mem, info


def fit_teachers(P: Pooled, cfg: TrainConfig, folds, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict]]:
    """Fit one teacher per block on everything before it (purged) and predict that block.

    Returns the out-of-fold ensemble probabilities (NaN on rows no teacher labelled), each member's
    probabilities, and per-block fit info. Blocks are fitted in parallel, largest first.
    """
    p_t = np.full((len(P), 3), np.nan)
    members: dict[str, np.ndarray] = {}
    info = {}
    jobs = sorted(((k, seed) for k in range(len(folds))), key=lambda j: -int(folds[j[0]].train.sum()))
    pool = _pool(cfg, P=P, cfg=cfg, folds=folds)
    for k, p, mem, inf in _map(pool, _teacher_job, jobs, cfg, "teachers"):
        f = folds[k]
        p_t[f.test] = p
        for name, v in mem.items():
            members.setdefault(name, np.full((len(P), 3), np.nan))[f.test] = v
        info[k] = inf
    return p_t, members, [info[k] for k in sorted(info)]


def student_rows(P: Pooled, train_mask: np.ndarray, p_teacher: np.ndarray, cfg: TrainConfig):
    """Fit/validation masks and weights for a student trained on ``train_mask`` rows with soft targets."""
    reach_ms = (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms
    rows = train_mask if cfg.student_first_block else train_mask & np.all(np.isfinite(p_teacher), axis=1)
    fit, val = split_validation(P.start_ms, rows, cfg.val_frac, reach_ms)
    w = recency_weights(P.start_ms[fit], cfg.recency_half_life_days)
    return fit, val, w


def _train(P: Pooled, p_t: np.ndarray, fit, val, w, cfg: TrainConfig, seed: int, **kw) -> Student:
    return train_student(P.x_student[fit], P.y[fit], p_t[fit], w, P.x_student[val], P.y[val], cfg, seed, **kw)


def _student_job(job: tuple[int, int, bool]) -> tuple[int, int, dict]:
    k, seed, sweep = job
    P, cfg, folds, p_t = _SHARED["P"], _worker_cfg(_SHARED["cfg"]), _SHARED["folds"], _SHARED["p_t"]
    f = folds[k]
    lo_ms = int(folds[0].test_lo_ms)  # soft targets start at block 1
    train = f.train if cfg.student_first_block else f.train & (P.start_ms >= lo_ms)
    fit, val, w = student_rows(P, train, p_t, cfg)
    xt = P.x_student[f.test]
    s = _train(P, p_t, fit, val, w, cfg, seed)
    c = _train(P, p_t, fit, val, w, cfg, seed, alpha=1.0)
    out = {"fit_rows": int(fit.sum()), "val_rows": int(val.sum()), "student": s.predict_proba(xt),
           "control": c.predict_proba(xt), "epochs": {"student": s.best_epoch, "control": c.best_epoch}, "sweep": {}}
    if sweep:
        for temp in cfg.sweep_temperatures:
            for a in cfg.sweep_alphas:
                if (temp, a) == (cfg.temperature, cfg.alpha):
                    out["sweep"][(temp, a)] = out["student"]
                    continue
                out["sweep"][(temp, a)] = _train(P, p_t, fit, val, w, cfg, seed, temperature=temp,
                                                 alpha=a).predict_proba(xt)
    return k, seed, out


def run_folds(P: Pooled, cfg: TrainConfig, folds, p_t: np.ndarray, sweep: bool) -> list[dict]:
    """Train distilled students and controls per fold and seed (in parallel); return out-of-sample predictions."""
    jobs = [(k, s, sweep and s == cfg.seeds[0]) for k in range(1, len(folds)) for s in cfg.seeds]
    jobs.sort(key=lambda j: (-j[2], -int(folds[j[0]].train.sum())))
    results: dict[int, dict] = {}
    pool = _pool(cfg, P=P, cfg=cfg, folds=folds, p_t=p_t)
    for k, seed, out in _map(pool, _student_job, jobs, cfg, "students"):
        f = folds[k]
        r = results.setdefault(f.index, {"fold": f, "fit_rows": out["fit_rows"], "val_rows": out["val_rows"],
                                         "prior": _prior(P.y[f.train]), "student": {}, "control": {},
                                         "epochs": {}, "sweep": {}})
        r["student"][seed] = out["student"]
        r["control"][seed] = out["control"]
        r["epochs"][seed] = out["epochs"]
        r["sweep"].update(out["sweep"])
    # seeds in config order, whatever order the workers finished in
    ordered = []
    for f in folds[1:]:
        r = results[f.index]
        for kind in ("student", "control", "epochs"):
            r[kind] = {s: r[kind][s] for s in cfg.seeds}
        ordered.append(r)
    return ordered


def summarise(P: Pooled, cfg: TrainConfig, fold_results: list[dict], p_t: np.ndarray,
              members: dict[str, np.ndarray]) -> dict:
    """Pooled and per-fold, per-symbol metrics of teacher, students, controls and the prior."""
    bars_per_year = 365.25 * 86_400_000 / P.interval_ms
    fee = cfg.fee_per_side
    test = np.concatenate([np.flatnonzero(r["fold"].test) for r in fold_results])
    y = P.y[test]
    prior = np.concatenate([np.tile(r["prior"], (int(r["fold"].test.sum()), 1)) for r in fold_results])
    groups = np.concatenate([P.sym[r["fold"].test] * 1000 + r["fold"].index for r in fold_results])
    nr = P.next_ret[test]
    pt = p_t[test]
    base_ll = ev.log_loss(prior, y)

    def pooled(kind: str) -> np.ndarray:
        return np.stack([np.concatenate([r[kind][s] for r in fold_results]) for s in cfg.seeds])

    teacher = ev.classification(pt, y, prior.mean(axis=0), cfg.ece_bins)
    teacher["log_loss"] = ev.log_loss(pt, y)
    teacher["gain_over_baseline"] = base_ll - teacher["log_loss"]
    teacher["trading"] = ev.trading(pt, nr, groups, fee, bars_per_year)
    teacher["members_log_loss"] = {k: ev.log_loss(v[test], y) for k, v in members.items()}
    summary = {"teacher": teacher,
               "baseline": {"log_loss": base_ll, "majority_accuracy": float(np.mean(y == np.argmax(prior, axis=1))),
                            "accuracy": float(np.mean(y == np.argmax(prior, axis=1))), "kind": "class prior of each fold's training rows"}}
    for kind in ("student", "control"):
        ps = pooled(kind)
        per_seed = []
        for p in ps:
            m = ev.classification(p, y, prior.mean(axis=0), cfg.ece_bins)
            m["log_loss"] = ev.log_loss(p, y)
            m["agreement"] = ev.agreement(pt, p)
            m["kl_from_teacher"] = ev.kl(pt, p)
            m["gain_kept"] = ev.gain_kept(base_ll, teacher["log_loss"], m["log_loss"])
            m["trading"] = ev.trading(p, nr, groups, fee, bars_per_year)
            per_seed.append(m)
        keys = ("log_loss", "accuracy", "macro_f1", "ece", "agreement", "kl_from_teacher", "gain_kept")
        agg = {k: float(np.mean([m[k] for m in per_seed])) for k in keys}
        agg["log_loss_seed_sd"] = float(np.std([m["log_loss"] for m in per_seed]))
        agg["trading"] = {k: float(np.mean([m["trading"][k] for m in per_seed])) for k in per_seed[0]["trading"]}
        agg["per_seed"] = [{"seed": s, **{k: m[k] for k in keys}} for s, m in zip(cfg.seeds, per_seed)]
        summary[kind] = agg

    # per fold, per symbol
    per_fold = []
    wins, pairs = 0, 0
    for r in fold_results:
        f = r["fold"]
        idx = np.flatnonzero(f.test)
        yf = P.y[idx]
        ptf = p_t[idx]
        entry = {"fold": f.index, "test_start_ms": f.test_lo_ms, "test_end_ms": f.test_hi_ms,
                 "fit_rows": r["fit_rows"], "val_rows": r["val_rows"], "test_rows": int(len(idx)),
                 "prior": r["prior"].tolist(), "epochs": {str(k): v for k, v in r["epochs"].items()}}
        bl = ev.log_loss(np.tile(r["prior"], (len(yf), 1)), yf)
        entry["baseline"] = {"log_loss": bl, "accuracy": float(np.mean(yf == np.argmax(r["prior"])))}
        entry["teacher"] = {"log_loss": ev.log_loss(ptf, yf), "accuracy": ev.accuracy(ptf, yf)}
        for kind in ("student", "control"):
            lls = [ev.log_loss(r[kind][s], yf) for s in cfg.seeds]
            accs = [ev.accuracy(r[kind][s], yf) for s in cfg.seeds]
            agr = [ev.agreement(ptf, r[kind][s]) for s in cfg.seeds]
            entry[kind] = {"log_loss": float(np.mean(lls)), "accuracy": float(np.mean(accs)),
                           "agreement": float(np.mean(agr)),
                           "gain_kept": ev.gain_kept(bl, entry["teacher"]["log_loss"], float(np.mean(lls)))}
        entry["symbols"] = {}
        for j, sym in enumerate(P.symbols):
            m = P.sym[idx] == j
            if not m.any():
                continue
            ys = yf[m]
            d = {"baseline": ev.log_loss(np.tile(r["prior"], (len(ys), 1)), ys), "teacher": ev.log_loss(ptf[m], ys)}
            for kind in ("student", "control"):
                d[kind] = float(np.mean([ev.log_loss(r[kind][s][m], ys) for s in cfg.seeds]))
            d["distilled_beats_control"] = bool(d["student"] < d["control"])
            wins += int(d["distilled_beats_control"])
            pairs += 1
            entry["symbols"][sym] = d
        per_fold.append(entry)
    summary["student"]["wins_over_control"] = {"wins": wins, "pairs": pairs}
    out = {"summary": summary, "folds": per_fold}

    if fold_results and fold_results[0]["sweep"]:
        grid = []
        y0 = np.concatenate([P.y[r["fold"].test] for r in fold_results])
        ctrl0 = np.concatenate([r["control"][cfg.seeds[0]] for r in fold_results])
        for key in fold_results[0]["sweep"]:
            p = np.concatenate([r["sweep"][key] for r in fold_results])
            ll = ev.log_loss(p, y0)
            grid.append({"temperature": key[0], "alpha": key[1], "log_loss": ll, "accuracy": ev.accuracy(p, y0),
                         "agreement": ev.agreement(pt, p),
                         "gain_kept": ev.gain_kept(base_ll, teacher["log_loss"], ll)})
        out["sweep"] = {"seed": cfg.seeds[0], "control_log_loss": ev.log_loss(ctrl0, y0), "grid": grid}
    out["_reliability"] = {
        "teacher": ev.reliability(pt, y, cfg.ece_bins),
        "student": ev.reliability(pooled("student")[0], y, cfg.ece_bins),
        "control": ev.reliability(pooled("control")[0], y, cfg.ece_bins),
    }
    return out


def _short(P: Pooled, cfg: TrainConfig, fold_results: list[dict], p_t: np.ndarray) -> dict:
    s = summarise(P, cfg, fold_results, p_t, {})["summary"]
    return {"teacher_log_loss": s["teacher"]["log_loss"], "baseline_log_loss": s["baseline"]["log_loss"],
            "student_log_loss": s["student"]["log_loss"], "control_log_loss": s["control"]["log_loss"],
            "gain_kept": s["student"]["gain_kept"], "control_gain_kept": s["control"]["gain_kept"],
            "agreement": s["student"]["agreement"], "wins_over_control": s["student"]["wins_over_control"]}


def run_ablations(series, P: Pooled, cfg: TrainConfig, folds, p_t: np.ndarray, fold_results: list[dict]) -> list[dict]:
    """Re-run the distillation with each option in ``cfg.ablations`` toggled, first seed only."""
    seed = cfg.seeds[0]
    one = cfg.replace(seeds=(seed,))
    first = [{**r, "student": {seed: r["student"][seed]}, "control": {seed: r["control"][seed]}} for r in fold_results]
    rows = [{"name": "default", "description": "the configuration above", **_short(P, one, first, p_t)}]
    for name in _bar(cfg.ablations, cfg, "ablations"):
        over, desc = ABLATIONS[name]
        if all(getattr(cfg, k) == v for k, v in over.items()):
            continue  # already the default
        t0 = time.perf_counter()
        acfg = one.replace(**over)
        aP, ap_t, afolds = P, p_t, folds
        if any(k in over for k in _TEACHER_KEYS):
            aP = build(series, acfg)
            # the same time blocks; rows with a label differ when the label definition does
            _, afolds = walk_forward(aP.start_ms, aP.valid, acfg.n_folds, aP.interval_ms, acfg.horizon_bars,
                                     acfg.embargo_bars)
            ap_t, _, _ = fit_teachers(aP, acfg, afolds, seed=seed)
        res = run_folds(aP, acfg, afolds, ap_t, False)
        rows.append({"name": name, "description": desc, **_short(aP, acfg, res, ap_t),
                     "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def transferable_gain(result: dict) -> dict | None:
    """How much of the teacher's gain a model restricted to the student's inputs reached, and the student's share of that.

    Uses the ``teacher_without_extras`` ablation (same ensemble, only the student's features): its gain over
    the prior bounds what any student can learn from these inputs here; the rest of the teacher's gain comes
    from information the student never sees.
    """
    abl = {a["name"]: a for a in result.get("ablations", [])}
    if "teacher_without_extras" not in abl or "default" not in abl:
        return None
    s = result["summary"]
    base, teacher = s["baseline"]["log_loss"], s["teacher"]["log_loss"]
    plain = abl["teacher_without_extras"]["teacher_log_loss"]
    reach = ev.gain_kept(base, teacher, plain)
    return {"student_features_teacher_log_loss": plain, "reachable_share_of_teacher_gain": reach,
            "student_share_of_reachable": s["student"]["gain_kept"] / reach if reach and reach > 0 else None,
            "control_share_of_reachable": s["control"]["gain_kept"] / reach if reach and reach > 0 else None}


def train(inputs: list[str], out_path: str | Path, cfg: TrainConfig, *, interval: str | None = None,
          sweep: bool | None = None, config_path: str | None = None) -> dict:
    """Run the whole distillation and write the artifact, report.json, report.md and plots; return the report."""
    from daemon.core.artifact import save_artifact

    from . import report

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_path = Path(out_path)
    series = load_dataset(inputs, interval=interval)
    P = build(series, cfg)
    timings["data_s"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    edges, folds = walk_forward(P.start_ms, P.valid, cfg.n_folds, P.interval_ms, cfg.horizon_bars, cfg.embargo_bars)
    p_t, members, teacher_info = fit_teachers(P, cfg, folds, seed=cfg.seeds[0])
    timings["teachers_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fold_results = run_folds(P, cfg, folds, p_t, cfg.sweep if sweep is None else sweep)
    timings["students_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = summarise(P, cfg, fold_results, p_t, members)
    timings["evaluate_s"] = time.perf_counter() - t0

    if cfg.ablations:
        t0 = time.perf_counter()
        result["ablations"] = run_ablations(series, P, cfg, folds, p_t, fold_results)
        result["transferable"] = transferable_gain(result)
        timings["ablations_s"] = time.perf_counter() - t0

    # the shipped student: every block that has out-of-fold soft targets, the newest tail validating
    t0 = time.perf_counter()
    all_rows = P.valid if cfg.student_first_block else P.valid & (P.start_ms >= int(folds[0].test_lo_ms))
    fit, val, w = student_rows(P, all_rows, p_t, cfg)
    final = _train(P, p_t, fit, val, w, cfg, cfg.seeds[0])
    p_val = final.predict_proba(P.x_student[val])
    final_info = {"fit_rows": int(fit.sum()), "val_rows": int(val.sum()), "best_epoch": final.best_epoch,
                  "val_log_loss": ev.log_loss(p_val, P.y[val]), "val_agreement": ev.agreement(p_t[val], p_val),
                  "val_teacher_log_loss": ev.log_loss(p_t[val], P.y[val])}
    timings["final_s"] = time.perf_counter() - t0

    s = result["summary"]
    manifest = {
        "normalisation": {"clip": cfg.feature_clip},
        "distillation": {"temperature": cfg.temperature, "alpha": cfg.alpha,
                         "teacher": {"mlps": [list(h) for h in cfg.teacher_hidden], "lgbm": cfg.teacher_lgbm,
                                     "lgbm_weight": cfg.lgbm_weight, "extra_features": cfg.teacher_extra_features,
                                     "buckets": list(cfg.teacher_buckets)}},
        "labels": {**label_params(cfg).to_dict(), "fee_per_side": cfg.fee_per_side},
        "data": {"symbols": P.symbols, "interval": series[0].interval, "start_ms": int(P.start_ms.min()),
                 "end_ms": int(P.start_ms.max()), "files": [Path(x.path).name for x in series]},
        "metrics": {
            "out_of_sample": {k: {m: s[k][m] for m in ("log_loss", "accuracy")} for k in ("teacher", "student", "control", "baseline")},
            "agreement": s["student"]["agreement"], "gain_kept": s["student"]["gain_kept"],
            "final_validation": final_info,
        },
        "training": {"config": cfg.to_dict(), "seed": cfg.seeds[0]},
    }
    model_id = save_artifact(out_path, weights=final.mlp.weights, biases=final.mlp.biases,
                             activations=final.mlp.activations, feature_mean=final.feature_mean,
                             feature_std=final.feature_std, manifest=manifest)
    timings["total_s"] = time.perf_counter() - t_start
    doc = {
        "model_id": model_id,
        "artifact": out_path.name,
        "command": "kdsignal train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None,
        "config_file": config_path,
        "config": cfg.to_dict(),
        "data": {"files": gap_report(series), "interval": series[0].interval, "pooled_rows": int(len(P)),
                 "valid_rows": int(P.valid.sum()), "class_share": (np.bincount(P.y[P.valid], minlength=3) / P.valid.sum()).tolist(),
                 "block_edges_ms": [int(e) for e in edges]},
        "classes": list(CLASSES),
        "teacher_inputs": {"student": list(P.teacher_names[: P.x_student.shape[1]]),
                           # extras that duplicate a student feature (hl_mean_20, rvol_100 since the kernels
                           # grew them) are still teacher columns but not teacher-only information
                           "extra": [n for n in P.teacher_names[P.x_student.shape[1]:]
                                     if not n.startswith("is_") and n not in P.teacher_names[: P.x_student.shape[1]]]},
        "teacher_fits": teacher_info,
        "final_student": final_info,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        **{k: v for k, v in result.items() if not k.startswith("_")},
    }
    report.write_all(out_path.parent, doc, result["_reliability"], cfg)
    return doc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal train``."""
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR_OR_FILE",
                        help="kline CSVs (start_ms,open,high,low,close,volume) or folders of them")
    parser.add_argument("--out", default=None,
                        help="artifact path; report and plots go next to it (default models/default.npz, "
                             "models/alpha.npz with --method alpha)")
    parser.add_argument("--method", choices=("classes", "alpha"), default=None,
                        help="what is distilled: sell/hold/buy classes, or the forward return (default [train] method)")
    parser.add_argument("--config", default=None, help="TOML file whose [train] table sets the knobs")
    parser.add_argument("--interval", default=None, help="only use files of this bar length (Bybit code, e.g. 5)")
    parser.add_argument("--sweep", action="store_true", default=None,
                        help="train the temperature x alpha grid (first seed) even if [train] sweep = false")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the temperature x alpha grid")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one [train] knob (TOML value syntax), e.g. --set alpha=0.3")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


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
    return cfg


def run_cli(args: argparse.Namespace) -> int:
    """Entry point of ``kdsignal train``."""
    try:
        cfg = config_from_args(args)
    except (ValueError, OSError) as e:
        print(f"kdsignal train: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.num_threads))
    # LightGBM's OpenMP workers spin while waiting by default; on a busy 2-core box that starves everything
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .data import DataError

    if args.out is None:
        args.out = "models/alpha.npz" if cfg.method == "alpha" else "models/default.npz"
    if cfg.method == "alpha":
        from .alpha import run_cli_summary, train_alpha

        try:
            doc = train_alpha(args.data, args.out, cfg, interval=args.interval, config_path=args.config)
        except DataError as e:
            print(f"kdsignal train: {e}", file=sys.stderr)
            return 2
        print(json.dumps({**run_cli_summary(doc), "kernel": _build_kernel(args.out)}, indent=1))
        return 0
    try:
        doc = train(args.data, args.out, cfg, interval=args.interval, sweep=args.sweep, config_path=args.config)
    except DataError as e:
        print(f"kdsignal train: {e}", file=sys.stderr)
        return 2
    kernel = _build_kernel(args.out)
    s = doc["summary"]
    print(json.dumps({
        "model_id": doc["model_id"], "artifact": str(args.out), "kernel": kernel, "seconds": doc["timings_s"]["total_s"],
        **{k: {m: round(s[k][m], 4) for m in ("log_loss", "accuracy")} for k in ("teacher", "student", "control")},
        "baseline_log_loss": round(s["baseline"]["log_loss"], 4),
        "agreement": round(s["student"]["agreement"], 4), "gain_kept": round(s["student"]["gain_kept"], 3),
        "wins_over_control": s["student"]["wins_over_control"],
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
