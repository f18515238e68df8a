"""The sequence teacher in the lockbox protocol: out-of-fold fits, its ensemble weight, its ``methods`` row.

``train.sequence_teacher`` drives it (with the trainer's own student jobs, ``assess`` and trading read-out);
this module holds the parts that are the sequence teacher's own. The fits follow ``train.fit_teachers``
exactly: one per block, trained on that fold's purged rows with the newest ``val_frac`` held out for early
stopping, predicting only the block's test rows; the lockbox block's member is trained on development rows.
torch is imported only when a fit runs, so this module loads without the ``[seq]`` extra.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from . import evaluate as ev
from .bootstrap import paired_mean
from .config import TrainConfig
from .data import Series
from .dataset import Pooled
from .folds import split_validation
from .methods import method_row
from .sequence import CHANNELS, bar_inputs


class SequenceUnavailable(RuntimeError):
    """The sequence teacher was asked for but PyTorch (the ``[seq]`` extra) is not installed."""


def require_torch() -> None:
    """Raise ``SequenceUnavailable`` with the install command when torch cannot be imported."""
    if importlib.util.find_spec("torch") is None:
        raise SequenceUnavailable("the sequence teacher needs PyTorch: pip install -e '.[seq]' "
                                  "(or -r requirements-seq.lock)")


def out_of_fold(series: list[Series], P: Pooled, cfg: TrainConfig, folds, seed: int):
    """Fit one sequence teacher per fold and predict its test rows.

    Returns (class probabilities (n, 3), NaN where no member labels a row; per-block fit info; the last
    fold's member, the one fitted on every development row).
    """
    from .sequence_net import fit_sequence

    bars = bar_inputs(series, P)
    reach_ms = (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms
    p = np.full((len(P), 3), np.nan)
    info, member = [], None
    for f in folds:
        fit, val = split_validation(P.start_ms, f.train, cfg.val_frac, reach_ms)
        fr, vr, test = np.flatnonzero(fit), np.flatnonzero(val), np.flatnonzero(f.test)
        t0 = time.perf_counter()
        member = fit_sequence(bars, P.sym, fr, P.target[fr], vr, P.y[vr], P.to_class, cfg, seed)
        p[test] = member.predict(bars, P.sym, test)
        info.append({"block": f.index, "fit_rows": len(fr), "val_rows": len(vr),
                     "seconds": round(time.perf_counter() - t0, 2), **member.info})
    return p, info, member


def mix(p_t: np.ndarray, p_seq: np.ndarray, weight: float) -> np.ndarray:
    """The ensemble with the sequence teacher as a member of share ``weight``."""
    return (1.0 - weight) * p_t + weight * p_seq


def choose_weight(p_t: np.ndarray, p_seq: np.ndarray, y: np.ndarray, weights) -> tuple[float, list[dict]]:
    """The share of the sequence teacher with the lowest log loss on these (development) rows, and the grid."""
    grid = [{"weight": float(w), "log_loss": ev.log_loss(mix(p_t, p_seq, w), y)} for w in weights]
    return min(grid, key=lambda g: g["log_loss"])["weight"], grid


def _interval(d: dict | None) -> dict:
    if d is None:
        return {"point": None, "lo": None, "hi": None}
    if "ci95" in d:
        return {"point": d["mean"], "lo": d["ci95"][0], "hi": d["ci95"][1]}
    return {"point": d.get("point"), "lo": d.get("lo"), "hi": d.get("hi")}


def methods_row(lock: dict, dev: dict, trading: dict, cfg: TrainConfig, weight: float, weight_grid: list[dict],
                fits: list[dict], timings_s: dict, lock_blocks: np.ndarray) -> dict:
    """The ``methods.sequence_teacher`` row: lockbox measures of the student distilled from the ensemble with the
    sequence member, paired intervals (one-day blocks) against the control and the current ensemble's student."""
    s, ll = lock["student"], lock["_row_ll"]
    gap = {"mean": lock.get("gap_recovered"), "ci95": lock.get("gap_recovered_ci95") or [None, None]}
    by_case = {case: {"net_return": trading["student"][case]["net_return"],
                      "sharpe": trading["student"][case]["sharpe"],
                      "break_even_fee_bp": trading["student"][case].get("break_even_fee_bp")}
               for case in ("taker", "maker")}

    def brief(part: dict) -> dict:
        return {k: {m: part[k][m] for m in ("log_loss", "ic", "direction_auc")} for k in part
                if isinstance(part[k], dict) and "log_loss" in part[k]}

    return {
        "what": "16-8 student distilled (development-chosen T, alpha) from the teacher ensemble with the sequence "
                "teacher added at a development-chosen weight; lockbox, mean over seeds",
        "log_loss": s["log_loss"], "ic": s["ic"], "direction_auc": s["direction_auc"],
        "gap_recovered": _interval(gap),
        "delta_vs_control": _interval(lock.get("delta_vs_control")),
        "delta_vs_current_student": _interval(lock["deltas_vs_student"].get("student_current")),
        "taker": {k: by_case["taker"][k] for k in ("net_return", "sharpe")},
        "maker": {k: by_case["maker"][k] for k in ("net_return", "sharpe")},
        "break_even_fee_bp": trading["student_argmax"]["taker"].get("break_even_fee_bp"),
        "n": int(s["n"]), "seeds": int(s["seeds"]),
        "sequence_weight": weight, "weight_grid": weight_grid,
        "lockbox": brief(lock),
        "development": {**brief(dev), "delta_vs_current_student": _interval(dev["deltas_vs_student"].get(
            "student_current"))},
        # positive: lower log loss than the current teacher ensemble, on the same lockbox rows
        "teacher_with_sequence_vs_current_teacher": _interval(paired_mean(
            ll["teacher_current"] - ll["teacher"], lock_blocks, cfg.bootstrap_samples)),
        "sequence_alone_vs_current_teacher": _interval(paired_mean(
            ll["teacher_current"] - ll["sequence"], lock_blocks, cfg.bootstrap_samples)),
        "inputs": {"channels": list(CHANNELS), "window_bars": cfg.sequence_window_bars},
        "fits": fits,
        "timings_s": timings_s,
    }


def table_row(lock: dict, trading: dict, weight: float) -> dict:
    """The row of the methods table (``methods.method_row``): the student distilled from the ensemble with the
    sequence member against its own control, on the lockbox."""
    s = lock["student"]
    return method_row(
        "sequence_teacher", target=f"ensemble + sequence teacher (weight {weight}) sell/hold/buy probabilities",
        control="hard sell/hold/buy labels, same rows, seeds, initial weights, optimiser and budget",
        loss_name="log_loss", loss=s["log_loss"], control_loss=lock["control"]["log_loss"],
        teacher_loss=lock["teacher"]["log_loss"], ic=s["ic"], direction_auc=s["direction_auc"],
        delta=lock.get("delta_vs_control"), gap_recovered={"mean": lock.get("gap_recovered"),
                                                          "ci95": lock.get("gap_recovered_ci95")},
        trading=trading["student"], n=int(s["n"]), seeds=int(s["seeds"]),
        note="opt-in (--teacher-sequence); against the current ensemble's student: see the report's section")


def _mn(d: dict) -> str:
    if d.get("point") is None:
        return "n/a"
    lo, hi = (("n/a" if x is None else f"{1000 * x:+.2f}") for x in (d["lo"], d["hi"]))
    return f"{1000 * d['point']:+.2f} [{lo}, {hi}]"


def markdown_lines(row: dict) -> list[str]:
    """The report.md section for ``methods.sequence_teacher`` (a JSON-cleaned row)."""
    lk = row["lockbox"]
    lines = ["## Sequence teacher (opt-in: `--teacher-sequence`)", "",
             f"A dilated causal CNN on the last {row['inputs']['window_bars']} bars of "
             f"{', '.join(row['inputs']['channels'])}, fitted out of fold like the ensemble; ensemble share "
             f"{row['sequence_weight']:g} chosen on development folds; distilled into the same student with the same T "
             f"and alpha. Training {row['timings_s']['fits_s']} s for {len(row['fits'])} blocks, "
             f"{row['timings_s']['total_s']} s in all. Lockbox, {row['n']} rows, {row['seeds']} seeds; intervals in "
             "millinats, paired bootstrap over one-day blocks, positive = the sequence variant is better:", "",
             "| model | log loss | IC | direction AUC |", "|---|---|---|---|"]
    for name in ("sequence", "teacher_current", "teacher", "student_current", "student", "student_sequence_alone",
                 "control"):
        if name in lk:
            m = lk[name]
            lines.append(f"| {name} | {m['log_loss']} | {m['ic']} | {m['direction_auc']} |")
    lines += ["",
              f"- student (ensemble + sequence) vs the current student: {_mn(row['delta_vs_current_student'])}; "
              f"on development folds: {_mn(row['development']['delta_vs_current_student'])}",
              f"- teacher with the sequence member vs the current teacher: "
              f"{_mn(row['teacher_with_sequence_vs_current_teacher'])}; the sequence teacher alone: "
              f"{_mn(row['sequence_alone_vs_current_teacher'])}",
              f"- vs the hard-label control: {_mn(row['delta_vs_control'])}; gap recovered "
              f"{row['gap_recovered']['point']} [{row['gap_recovered']['lo']}, {row['gap_recovered']['hi']}]",
              f"- trading (development-chosen policy): taker net {row['taker']['net_return']}, Sharpe "
              f"{row['taker']['sharpe']}; maker net {row['maker']['net_return']}, Sharpe {row['maker']['sharpe']}; "
              f"argmax break-even fee {row['break_even_fee_bp']} bp per side", ""]
    return lines
