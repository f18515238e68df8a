"""``kdsignal train --method strategy``: a student that imitates a trading strategy from the live features alone.

Two teachers, both position paths in {-1, 0, +1} per bar (classes sell / hold / buy, so the student is an
ordinary ``classes`` artifact the daemon serves unchanged):

- **oracle**: the cost-aware hindsight-optimal path (``oracle_values``: dynamic programming over the bar
  returns a decision earns, ``trading.bar_returns``, paying fee plus half-spread per unit of position
  change): the best any policy could have done. Softened per bar into position probabilities,
  ``softmax(Q(t, p) / tau)`` with ``Q`` the value of taking ``p`` at ``t`` after the oracle's own previous
  position and ``tau = oracle_tau_bp`` basis points. The DP runs separately on the development span and on
  the lockbox, so no development target reads a lockbox price.
- **trend**: a rule, multi-timeframe trend following with a volatility filter: long when the 60- and
  240-bar returns are both up, short when both down, flat otherwise or when ``rvol_20 / rvol_500`` exceeds
  ``trend_vol_cap``. Its inputs are the teacher's privileged ones; the student sees only its 11 features.

Students (``distil.train_student``) fit on development rows and are scored once on the lockbox: the oracle's
distilled student (soft targets, ``alpha = 0.5``, T = 1) against its control (the oracle's hard positions,
``alpha = 1``), and the trend rule's imitator (hard positions). Reported: fidelity (Cohen's kappa with the
teacher's positions and agreement on the teacher's non-flat bars) and the trading read-out of each student
(argmax positions, re-decided every bar) beside the strategy's own. The shipped artifact is the oracle's
distilled student.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from daemon.core import trading as tr
from daemon.core.artifact import save_artifact

from . import evaluate as ev
from .config import TrainConfig
from .data import gap_report, load_dataset
from .dataset import Pooled, build, label_params
from .distil import train_student
from .folds import lockbox_split, split_validation
from .policies import _edges, _markets, development_ticks, fee_cases

POSITIONS = np.array([-1, 0, 1])


def oracle_values(r: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backward DP of the best position path; return (path (n,) in -1/0/+1, Q (n, 3)).

    Maximises ``sum_t p[t] * r[t] - cost[t] * |p[t] - p[t-1]|`` from ``p[-1] = 0``, closing at the end at
    ``cost[n-1]`` per unit. ``Q[t, k]`` is the best total from ``t`` on when position ``POSITIONS[k]`` is
    taken at ``t`` after the path's own position at ``t - 1``.
    """
    n = len(r)
    v = np.zeros((n + 1, 3))  # v[t, j]: best from t on, holding POSITIONS[j] before t
    v[n] = -cost[n - 1] * np.abs(POSITIONS) if n else 0.0
    change = np.abs(POSITIONS[None, :] - POSITIONS[:, None])  # [prev, new]
    for t in range(n - 1, -1, -1):
        q = POSITIONS[None, :] * r[t] - cost[t] * change + v[t + 1][None, :]
        v[t] = q.max(axis=1)
    path = np.zeros(n, dtype=np.int64)
    qs = np.zeros((n, 3))
    prev = 1  # index of position 0
    for t in range(n):
        q = POSITIONS * r[t] - cost[t] * change[prev] + v[t + 1]
        qs[t] = q
        prev = int(np.argmax(q))
        path[t] = POSITIONS[prev]
    return path, qs


def soften(q: np.ndarray, tau: float) -> np.ndarray:
    """Position probabilities (n, 3) ``softmax(Q / tau)``."""
    z = (q - q.max(axis=1, keepdims=True)) / tau
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def oracle_targets(P: Pooled, region: np.ndarray, ticks: dict, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Oracle positions (class 0/1/2, -1 off ``region``) and soft targets (NaN off it), per symbol on ``region``."""
    y = np.full(len(P), -1, dtype=np.int64)
    p = np.full((len(P), 3), np.nan)
    for j, sym in enumerate(P.symbols):
        rows = np.flatnonzero(region & (P.sym == j))
        if len(rows) < 3:
            continue
        m = tr.Market(sym, P.start_ms[rows], P.open[rows], tick=ticks[sym],
                      spread_bp=None if cfg.half_spread_bp < 0 else cfg.half_spread_bp)
        path, q = oracle_values(m.returns(), cfg.taker_fee_per_side + m.half_spread())
        y[rows] = path + 1
        p[rows] = soften(q, cfg.oracle_tau_bp * 1e-4)
    return y, p


def trend_positions(P: Pooled, cfg: TrainConfig) -> np.ndarray:
    """The trend rule's position class (0/1/2) at every row, from the teacher's privileged inputs."""
    col = {n: i for i, n in enumerate(P.teacher_names)}
    if not {"ret_60", "ret_240", "rvol_ratio_20_500"} <= set(col):
        raise ValueError("the trend teacher needs teacher_extra_features = true (ret_60, ret_240, rvol_ratio_20_500)")
    x = P.x_teacher.astype(np.float64)
    r60, r240, vr = x[:, col["ret_60"]], x[:, col["ret_240"]], x[:, col["rvol_ratio_20_500"]]
    calm = np.nan_to_num(vr, nan=np.inf) <= cfg.trend_vol_cap
    pos = np.where(calm & (r60 > 0) & (r240 > 0), 1, np.where(calm & (r60 < 0) & (r240 < 0), -1, 0))
    return pos + 1


def fidelity(student: np.ndarray, teacher: np.ndarray) -> dict:
    """Kappa and agreement of two class vectors, overall and on the teacher's non-flat bars."""
    moving = teacher != 1
    return {"kappa": ev.cohen_kappa(student, teacher), "agreement": float(np.mean(student == teacher)),
            "agreement_non_flat": float(np.mean(student[moving] == teacher[moving])) if moving.any() else math.nan,
            "teacher_non_flat_share": float(moving.mean()), "student_non_flat_share": float(np.mean(student != 1))}


def _readout(P, region, pos_full, ticks, cfg, bars_per_year) -> dict:
    markets = _markets(P, region, ticks, cfg)
    out = {}
    for case, fee in fee_cases(cfg).items():
        pos = {s: x.astype(np.int64) for s, x in _edges(P, region, pos_full).items()}
        stats, _, _ = tr.backtest(markets, pos, fee, bars_per_year)
        out[case] = stats
    return out


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def train_strategy(inputs: list[str], out_path: str | Path, cfg: TrainConfig, *, interval: str | None = None,
                   config_path: str | None = None) -> dict:
    """Run both strategy teachers; write the oracle student's artifact and ``<stem>_report.json``/``.md``."""
    t_start = time.perf_counter()
    out_path = Path(out_path)
    series = load_dataset(inputs, interval=interval)
    P = build(series, cfg)
    split = lockbox_split(P.start_ms, P.valid, cfg.lockbox_days, P.interval_ms, cfg.horizon_bars, cfg.embargo_bars)
    ticks = development_ticks(P, split)
    bars_per_year = 365.25 * 86_400_000 / P.interval_ms
    reach_ms = (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms
    lock = split.lockbox
    y_dev, p_dev = oracle_targets(P, split.dev, ticks, cfg)
    y_lock, _ = oracle_targets(P, lock, ticks, cfg)
    y_oracle = np.where(lock, y_lock, y_dev)
    y_trend = trend_positions(P, cfg)
    fit, val = split_validation(P.start_ms, split.dev, cfg.val_frac, reach_ms)
    w = np.ones(int(fit.sum()))
    seed = cfg.seeds[0]
    models = {
        "oracle_distilled": (y_oracle, p_dev, 0.5),
        "oracle_control": (y_oracle, p_dev, 1.0),
        "trend_imitator": (y_trend, np.eye(3)[y_trend], 1.0),
    }
    students, results = {}, {}
    x_lock = P.x_student[lock]
    for name, (yy, pp, a) in models.items():
        s = train_student(P.x_student[fit], yy[fit], pp[fit], w, P.x_student[val], yy[val], cfg, seed,
                          temperature=1.0, alpha=a)
        students[name] = s
        pred = np.argmax(s.predict_proba(x_lock), axis=1)
        full = np.full(len(P), np.nan)
        full[lock] = pred - 1
        results[name] = {"fidelity": fidelity(pred, yy[lock]), "alpha": a,
                         "trading": _readout(P, lock, full, ticks, cfg, bars_per_year)}
    for name, yy in (("oracle", y_oracle), ("trend", y_trend)):
        full = np.where(lock, yy - 1, np.nan).astype(np.float64)
        results[f"{name}_strategy"] = {"trading": _readout(P, lock, full, ticks, cfg, bars_per_year)}
    shipped = students["oracle_distilled"]
    manifest = {
        "method": "strategy",
        "normalisation": {"clip": cfg.feature_clip},
        "distillation": {"temperature": 1.0, "alpha": 0.5},
        "labels": {**label_params(cfg).to_dict(), "teacher": "cost-aware hindsight-optimal positions (oracle DP), "
                   f"softened at tau {cfg.oracle_tau_bp} bp; classes are positions sell=-1, hold=0, buy=+1"},
        "data": {"symbols": P.symbols, "interval": series[0].interval,
                 "start_ms": int(P.start_ms[fit].min()), "end_ms": int(P.start_ms[fit].max()),
                 "lockbox": {"lo_ms": split.lockbox_lo_ms, "hi_ms": split.lockbox_hi_ms}},
        "metrics": _clean({"lockbox": results["oracle_distilled"]["fidelity"]}),
    }
    model_id = save_artifact(out_path, weights=shipped.mlp.weights, biases=shipped.mlp.biases,
                             activations=shipped.mlp.activations, feature_mean=shipped.feature_mean,
                             feature_std=shipped.feature_std, manifest=manifest)
    doc = _clean({
        "model_id": model_id, "artifact": str(out_path),
        "command": "kdsignal train --method strategy --data " + " ".join(map(str, inputs)) + f" --out {out_path}"
                   + (f" --config {config_path}" if config_path else ""),
        "data": {"files": gap_report(series), "lockbox": {"lo_ms": split.lockbox_lo_ms, "hi_ms": split.lockbox_hi_ms,
                                                          "days": split.lockbox_days, "rows": int(lock.sum())}},
        "methods": {"strategy": {"lockbox": results}},
        "seconds": time.perf_counter() - t_start,
    })
    stem = out_path.with_suffix("")
    Path(f"{stem}_report.json").write_text(json.dumps(doc, indent=1) + "\n")
    Path(f"{stem}_report.md").write_text(render_markdown(doc))
    return doc


def render_markdown(doc: dict) -> str:
    """Fidelity and trading read-out of each student beside its strategy's own."""
    res = doc["methods"]["strategy"]["lockbox"]

    def f(x, nd=4):
        return "n/a" if x is None else f"{x:.{nd}f}"

    lines = ["# Strategy distillation: lockbox report", "", f"Command: `{doc['command']}`  ",
             f"Artifact `{doc['artifact']}` (model {doc['model_id']}); lockbox {doc['data']['lockbox']['days']} days; "
             f"wall time {f(doc['seconds'], 1)} s.", "",
             "| model | kappa | agreement | agreement on teacher's non-flat bars | non-flat share | net taker | "
             "Sharpe taker | net maker | Sharpe maker | trades (taker) | break-even fee bp |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        fi = r.get("fidelity", {})
        t, m = r["trading"]["taker"], r["trading"]["maker"]
        lines.append(f"| {name.replace('_', ' ')} | {f(fi.get('kappa'))} | {f(fi.get('agreement'))} | "
                     f"{f(fi.get('agreement_non_flat'))} | {f(fi.get('student_non_flat_share'))} | "
                     f"{f(t['net_return'])} | {f(t['sharpe'], 2)} | {f(m['net_return'])} | {f(m['sharpe'], 2)} | "
                     f"{t['trades']} | {f(t['break_even_fee_bp'], 2)} |")
    lines += ["", "Students trade their argmax position, re-decided every bar, at taker (and maker) fee plus half a "
              "tick; the oracle strategy's own row is hindsight, unreachable by any policy, shown as the ceiling.", ""]
    return "\n".join(lines)
