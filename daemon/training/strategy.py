"""``kdsignal train --method strategy``: a student that imitates a trading strategy from the live features alone.

Two teachers, both position paths in {-1, 0, +1} per bar (classes sell / hold / buy, so the student is an
ordinary ``classes`` artifact the daemon serves unchanged), each with hard positions (the raw target) and
soft position probabilities (what is distilled):

- **oracle**: the cost-aware hindsight-optimal path (``oracle_values``: dynamic programming over the bar
  returns a decision earns, ``trading.bar_returns``, paying fee plus half-spread per unit of position
  change): the best any policy could have done. Softened per bar into position probabilities,
  ``softmax(Q(t, p) / tau)`` with ``Q`` the value of taking ``p`` at ``t`` after the oracle's own previous
  position and ``tau = oracle_tau_bp`` basis points. The DP runs separately on each walk-forward block of the
  development span and on the lockbox, so no target of a training row reads a price of a later block.
- **trend**: a rule, multi-timeframe trend following with a volatility filter: long when the 60- and
  240-bar returns are both up, short when both down, flat otherwise or when ``rvol_20 / rvol_500`` exceeds
  ``trend_vol_cap``. Its soft form (``trend_soft``) replaces each of the three tests by a logistic of the
  input's margin in units of ``trend_soft_scale`` development standard deviations. Its inputs are the
  teacher's privileged ones; the student sees only its 11 features.

The protocol is ``kdsignal train``'s (``train.layout``, ``train.run_jobs``), per teacher:

1. **Development choices**, on the last ``strategy_dev_folds`` walk-forward folds, first seed: the distilled
   student's ``alpha`` (T = 1: ``tau`` and ``trend_soft_scale`` already soften the teacher) from
   ``sweep_alphas``, and the control's own learning rate x weight decay (``control_lrs`` x
   ``control_weight_decays``: the same student on the hard positions, tuned on its own), each by its log
   loss of the teacher's positions; then each one's trading policy per fee case (``policies.choose_policies``:
   a threshold on p_buy - p_sell).
2. **Lockbox**, read once: both students over every seed, fitted on all development rows. Reported: log loss
   of the teacher's positions, the paired day-block interval of control minus distilled loss and the gap
   recovered (``bootstrap``), IC and direction AUC against the market, fidelity (Cohen's kappa with the
   teacher's positions, agreement on the teacher's non-flat bars) with day-block intervals, and the trading
   read-out at taker and maker cost: with the development policy (the table's figures), re-decided on the
   argmax every bar (pure imitation), and the strategy's own positions beside them.
3. **Shipped**: the oracle's distilled student of the first seed (the lockbox model, so the lockbox figures
   are its own), with its development taker and maker policies in the manifest.

Rows ``strategy_oracle`` and ``strategy_trend`` of the methods table (``methods``) come from step 2.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from daemon.core import trading as tr
from daemon.core.artifact import save_artifact

from . import bootstrap as bs
from . import evaluate as ev
from . import methods
from .config import TrainConfig
from .data import gap_report, load_dataset
from .dataset import Pooled, build, label_params
from .distil import train_student
from .folds import split_validation
from .labels import BUY, HOLD
from .methods import fmt_ci as ci
from .policies import _edges, _markets, choose_policies, development_ticks, fee_cases

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


def oracle_by_block(P: Pooled, regions: list[np.ndarray], ticks: dict,
                    cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """``oracle_targets`` run separately on each region (walk-forward blocks, the lockbox), merged."""
    y = np.full(len(P), -1, dtype=np.int64)
    p = np.full((len(P), 3), np.nan)
    for region in regions:
        yr, pr = oracle_targets(P, region, ticks, cfg)
        y[region], p[region] = yr[region], pr[region]
    return y, p


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def trend_soft(P: Pooled, cfg: TrainConfig, scale_rows: np.ndarray) -> np.ndarray:
    """The trend rule's soft positions (n, 3): each of its three tests as a logistic of the input's margin.

    ``p_long = calm * up_60 * up_240``, ``p_short = calm * (1 - up_60) * (1 - up_240)``, ``p_flat`` the rest,
    with ``up_k = sigmoid(ret_k / s_k)``, ``calm = sigmoid((trend_vol_cap - ratio) / s_ratio)`` and each ``s``
    ``trend_soft_scale`` standard deviations of that input over ``scale_rows`` (development rows). A row with
    a missing input is flat, as in the hard rule.
    """
    col = {n: i for i, n in enumerate(P.teacher_names)}
    x = P.x_teacher[:, [col["ret_60"], col["ret_240"], col["rvol_ratio_20_500"]]].astype(np.float64)
    sd = np.nanstd(x[scale_rows], axis=0) * cfg.trend_soft_scale
    sd = np.where(sd > 0, sd, 1.0)
    up60, up240 = _sigmoid(x[:, 0] / sd[0]), _sigmoid(x[:, 1] / sd[1])
    calm = _sigmoid((cfg.trend_vol_cap - x[:, 2]) / sd[2])
    long_, short = calm * up60 * up240, calm * (1 - up60) * (1 - up240)
    p = np.column_stack([short, 1.0 - long_ - short, long_])
    p[~np.all(np.isfinite(x), axis=1)] = (0.0, 1.0, 0.0)
    return p


def _kappa(c: np.ndarray) -> np.ndarray:
    # c (..., 3, 3) counts [student, teacher]
    tot = c.sum(axis=(-1, -2))
    po = np.trace(c, axis1=-2, axis2=-1) / tot
    pe = np.sum(c.sum(axis=-1) * c.sum(axis=-2), axis=-1) / tot ** 2
    return (po - pe) / (1.0 - pe)


def _agreement_non_flat(c: np.ndarray) -> np.ndarray:
    return (c[..., 0, 0] + c[..., 2, 2]) / c[..., :, [0, 2]].sum(axis=(-1, -2))


def fidelity_intervals(dist: list[np.ndarray], ctrl: list[np.ndarray], teacher: np.ndarray, blocks: np.ndarray,
                       n_boot: int) -> dict:
    """Kappa and agreement on the teacher's non-flat bars (mean over seeds) of the distilled student, its control
    and their difference, each with a day-block interval (the same resampled days for all)."""
    s = len(dist)
    onehot = [np.eye(9)[p * 3 + teacher] for p in [*dist, *ctrl]]  # per model: confusion cell of every row
    stats = np.concatenate(onehot, axis=1)

    def by_model(fn):
        return lambda b: fn(b.reshape(*b.shape[:-1], 2, s, 3, 3)).mean(axis=-1)  # (..., 2): distilled, control

    out = {}
    for name, fn in (("kappa", _kappa), ("agreement_non_flat", _agreement_non_flat)):
        g = by_model(fn)
        out[name] = {"distilled": bs.block_statistic(stats, blocks, lambda b, g=g: g(b)[..., 0], n_boot),
                     "control": bs.block_statistic(stats, blocks, lambda b, g=g: g(b)[..., 1], n_boot),
                     "distilled_minus_control": bs.block_statistic(
                         stats, blocks, lambda b, g=g: g(b)[..., 0] - g(b)[..., 1], n_boot)}
    return out


def _readout(P, region, pos_full, ticks, cfg, bars_per_year) -> dict:
    markets = _markets(P, region, ticks, cfg)
    out = {}
    for case, fee in fee_cases(cfg).items():
        pos = {s: np.nan_to_num(x, nan=0.0).astype(np.int64) for s, x in _edges(P, region, pos_full).items()}
        stats, _, _ = tr.backtest(markets, pos, fee, bars_per_year)
        out[case] = stats
    return out


def _policy_readout(P, region, edge_full, policy: dict, ticks, cfg, bars_per_year) -> dict:
    markets = _markets(P, region, ticks, cfg)
    out = {}
    for case, fee in fee_cases(cfg).items():
        pol = policy[case]
        pos = {s: tr.positions(x, pol["threshold"], pol["hold_bars"]) for s, x in _edges(P, region, edge_full).items()}
        stats, _, _ = tr.backtest(markets, pos, fee, bars_per_year)
        out[case] = {**stats, "threshold": pol["threshold"], "hold_bars": pol["hold_bars"]}
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


def _log(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[strategy] {msg}", file=sys.stderr, flush=True)


def _full(P: Pooled, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    a = np.full(len(P), np.nan)
    a[idx] = values
    return a


def _market_measures(p: np.ndarray, idx: np.ndarray, P: Pooled, y_teacher: np.ndarray) -> dict:
    """Log loss of the teacher's positions, IC and direction AUC against the market, and whether it is constant."""
    edge = p[:, 2] - p[:, 0]
    moved = P.y[idx] != HOLD
    constant = bool(np.std(edge) < 1e-9)
    return {"log_loss": ev.log_loss(p, y_teacher), "ic": 0.0 if constant else ev.rank_ic(edge, P.fwd[idx]),
            "direction_auc": ev.auc(edge[moved], P.y[idx][moved] == BUY),
            "non_flat_share": float(np.mean(np.argmax(p, axis=1) != HOLD)), "constant": constant}


def distil_teacher(name: str, P: Pooled, y: np.ndarray, p_soft: np.ndarray, folds, split, ticks: dict,
                   cfg: TrainConfig, bars_per_year: float, runner) -> tuple[dict, dict]:
    """Development choices and the lockbox read-out of one teacher; returns (report section, methods row)."""
    run_jobs, distilled, control, dev_probs = runner.run_jobs, runner.distilled, runner.control, runner._dev_probs
    t0 = time.perf_counter()
    scfg = cfg.replace(student_first_block=True)  # soft targets exist on every development row, block 0 too
    Pt = dataclasses.replace(P, y=y)
    L = len(folds) - 1
    n_dev = cfg.strategy_dev_folds or L
    ks = list(range(max(0, L - n_dev), L))
    s0 = cfg.seeds[0]
    grid = [distilled(scfg, 1.0, a) for a in cfg.sweep_alphas]
    ctl_grid = [control(scfg, lr, wd) for lr in cfg.control_lrs for wd in cfg.control_weight_decays]
    cache: dict = {}
    run_jobs(Pt, scfg, folds, p_soft, [(k, s0, v) for k in ks for v in [*grid, *ctl_grid]], cache, f"{name} choices")
    dev_idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    yd = y[dev_idx]
    sweep = [{"alpha": v.alpha, "log_loss": ev.log_loss(dev_probs(cache, ks, s0, v), yd)} for v in grid]
    ctl = [{"lr": v.lr, "weight_decay": v.weight_decay, "log_loss": ev.log_loss(dev_probs(cache, ks, s0, v), yd)}
           for v in ctl_grid]
    best, best_ctl = min(sweep, key=lambda g: g["log_loss"]), min(ctl, key=lambda g: g["log_loss"])
    v_dist = distilled(scfg, 1.0, best["alpha"])
    v_ctl = control(scfg, best_ctl["lr"], best_ctl["weight_decay"])
    dev_region = np.zeros(len(P), dtype=bool)
    dev_region[dev_idx] = True
    dev_edges = {k: _full(P, dev_idx, (lambda q: q[:, 2] - q[:, 0])(dev_probs(cache, ks, s0, v)))
                 for k, v in (("distilled", v_dist), ("control", v_ctl))}
    policies = choose_policies(P, dev_region, dev_edges, ticks, cfg, bars_per_year)
    development = {"folds": [folds[k].index for k in ks], "rows": len(dev_idx), "seed": s0, "alpha_sweep": sweep,
                   "control_grid": ctl, "alpha": best["alpha"], "control_lr": best_ctl["lr"],
                   "control_weight_decay": best_ctl["weight_decay"], "policies": policies,
                   "seconds": round(time.perf_counter() - t0, 1)}
    _log(cfg, f"{name}: development choices in {development['seconds']} s: alpha {best['alpha']}, control lr "
              f"{best_ctl['lr']} wd {best_ctl['weight_decay']}")

    # the lockbox, read once
    t0 = time.perf_counter()
    run_jobs(Pt, scfg, folds, p_soft, [(L, s, v) for s in cfg.seeds for v in (v_dist, v_ctl)], cache, f"{name} lockbox")
    idx = np.flatnonzero(folds[L].test)
    yl = y[idx]
    dist = [cache[(L, s, v_dist)][0] for s in cfg.seeds]
    ctrl = [cache[(L, s, v_ctl)][0] for s in cfg.seeds]
    blocks = bs.blocks_of(P.start_ms[idx])
    nb = cfg.bootstrap_samples
    d_ll = np.mean([ev.row_log_loss(p, yl) for p in dist], axis=0)
    c_ll = np.mean([ev.row_log_loss(p, yl) for p in ctrl], axis=0)
    t_ll = ev.row_log_loss(p_soft[idx], yl)
    per_seed = {"distilled": [_market_measures(p, idx, P, yl) for p in dist],
                "control": [_market_measures(p, idx, P, yl) for p in ctrl]}
    mean = {k: {m: float(np.mean([d[m] for d in v])) for m in v[0] if m != "constant"} for k, v in per_seed.items()}
    degenerate = {k: int(sum(d["constant"] for d in v)) for k, v in per_seed.items()}
    delta = bs.paired_mean(c_ll - d_ll, blocks, nb)
    gap = bs.paired_ratio(c_ll - d_ll, c_ll - t_ll, blocks, nb)
    fid = fidelity_intervals([np.argmax(p, axis=1) for p in dist], [np.argmax(p, axis=1) for p in ctrl], yl,
                             blocks, nb)
    region = np.zeros(len(P), dtype=bool)
    region[idx] = True
    trading = {}
    for k, probs in (("distilled", dist), ("control", ctrl)):
        trading[k] = _policy_readout(P, region, _full(P, idx, probs[0][:, 2] - probs[0][:, 0]), policies[k],
                                     ticks, cfg, bars_per_year)
        trading[f"{k}_argmax"] = _readout(P, region, _full(P, idx, np.argmax(probs[0], axis=1) - 1.0), ticks, cfg,
                                          bars_per_year)
    trading["strategy"] = _readout(P, region, _full(P, idx, yl - 1.0), ticks, cfg, bars_per_year)
    trading["buy_and_hold"] = _readout(P, region, _full(P, idx, np.ones(len(idx))), ticks, cfg, bars_per_year)
    lockbox = {"rows": len(idx), "blocks": int(blocks.max()) + 1, "teacher_log_loss": float(t_ll.mean()),
               "distilled": mean["distilled"], "control": mean["control"], "per_seed": per_seed,
               "degenerate": degenerate, "delta_vs_control": delta, "gap_recovered": gap,
               "fidelity": {**fid, "per_seed": {k: [fidelity(np.argmax(p, axis=1), yl) for p in v]
                                                for k, v in (("distilled", dist), ("control", ctrl))}},
               "trading": trading, "seconds": round(time.perf_counter() - t0, 1)}
    _log(cfg, f"{name}: lockbox in {lockbox['seconds']} s")
    target = {"oracle": f"oracle positions softened at tau {cfg.oracle_tau_bp} bp",
              "trend": f"trend rule's soft positions (scale {cfg.trend_soft_scale} sd)"}[name]
    row = methods.method_row(
        f"strategy_{name}", target=f"{target}, alpha {best['alpha']} (development folds)",
        control=f"the strategy's hard positions, own lr {best_ctl['lr']} and weight decay "
                f"{best_ctl['weight_decay']} (development folds)",
        loss_name="log_loss", loss=mean["distilled"]["log_loss"], control_loss=mean["control"]["log_loss"],
        teacher_loss=float(t_ll.mean()), ic=mean["distilled"]["ic"], direction_auc=mean["distilled"]["direction_auc"],
        delta=delta, gap_recovered=gap, trading=trading["distilled"], n=len(idx), seeds=len(cfg.seeds),
        degenerate={"student": degenerate["distilled"], "control": degenerate["control"]},
        note=f"kappa {fid['kappa']['distilled']['mean']:.3f} vs control {fid['kappa']['control']['mean']:.3f}; "
             f"strategy's own net taker {trading['strategy']['taker']['net_return']:.4f}")
    return {"development": development, "lockbox": lockbox, "variants": {"distilled": v_dist, "control": v_ctl},
            "_p0": dist[0]}, row


def train_strategy(inputs: list[str], out_path: str | Path, cfg: TrainConfig, runner, *, interval: str | None = None,
                   config_path: str | None = None) -> dict:
    """Run both strategy teachers; write the oracle student's artifact and ``<stem>_report.json``/``.md``.

    ``runner`` is ``daemon.training.train`` (its ``layout``, ``run_jobs``, ``distilled``, ``control`` and
    ``_dev_probs``), passed in because ``train`` imports this module to dispatch ``--method strategy``.
    """
    t_start = time.perf_counter()
    out_path = Path(out_path)
    series = load_dataset(inputs, interval=interval)
    P = build(series, cfg)
    split, edges, folds = runner.layout(P, cfg)
    ticks = development_ticks(P, split)
    bars_per_year = 365.25 * 86_400_000 / P.interval_ms
    dev_blocks = [split.dev & (P.start_ms >= lo) & (P.start_ms < hi) for lo, hi in itertools.pairwise(edges)]
    y_oracle, p_oracle = oracle_by_block(P, [*dev_blocks, split.lockbox], ticks, cfg)
    y_trend = trend_positions(P, cfg)
    p_trend = trend_soft(P, cfg, split.dev)
    teachers = {"oracle": (y_oracle, p_oracle), "trend": (y_trend, p_trend)}
    sections, rows = {}, {}
    for name, (yy, pp) in teachers.items():
        sections[name], rows[name] = distil_teacher(name, P, yy, pp, folds, split, ticks, cfg, bars_per_year, runner)

    # the shipped artifact: the oracle's distilled lockbox model of the first seed, refitted here as run_jobs fitted it
    t0 = time.perf_counter()
    s0 = cfg.seeds[0]
    v = sections["oracle"].pop("variants")["distilled"]
    p0 = sections["oracle"].pop("_p0")
    for k in ("variants", "_p0"):
        sections["trend"].pop(k)
    fit, val = split_validation(P.start_ms, folds[-1].train, cfg.val_frac,
                                (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms)
    shipped = train_student(P.x_student[fit], y_oracle[fit], p_oracle[fit], np.ones(int(fit.sum())),
                            P.x_student[val], y_oracle[val], cfg.replace(student_first_block=True), s0,
                            temperature=v.temperature, alpha=v.alpha, lr=v.lr, weight_decay=v.weight_decay)
    lock_idx = np.flatnonzero(folds[-1].test)
    p_ship = shipped.predict_proba(P.x_student[lock_idx])
    same = bool(np.allclose(p_ship, p0, atol=1e-9))  # the manifest's lockbox figures are this model's own
    pol = sections["oracle"]["development"]["policies"]["distilled"]
    policy = {
        "kind": "threshold", "edge": "p_buy - p_sell", "default_case": "taker",
        "rule": "buy when edge > threshold, sell when edge < -threshold, else hold; keep a position hold_bars bars; "
                "a threshold of 1.0 never acts",
        "cases": {case: {"threshold": min(float(pol[case]["threshold"]), 1.0), "hold_bars": int(pol[case]["hold_bars"]),
                         "fee_per_side": fee, "development_net_return_per_symbol": pol[case]["net_return_per_symbol"]}
                  for case, fee in fee_cases(cfg).items()},
        "chosen_on": "development test blocks " + ", ".join(map(str, sections["oracle"]["development"]["folds"])),
    }
    fit_range = {"start_ms": int(P.start_ms[fit].min()), "end_ms": int(P.start_ms[fit].max())}
    manifest = {
        "method": "strategy",
        "normalisation": {"clip": cfg.feature_clip},
        "distillation": {"temperature": v.temperature, "alpha": v.alpha},
        "labels": {**label_params(cfg).to_dict(), "teacher": "cost-aware hindsight-optimal positions (oracle DP), "
                   f"softened at tau {cfg.oracle_tau_bp} bp; classes are positions sell=-1, hold=0, buy=+1"},
        "data": {"symbols": P.symbols, "interval": series[0].interval, **fit_range,
                 "lockbox": {"lo_ms": split.lockbox_lo_ms, "hi_ms": split.lockbox_hi_ms}},
        "metrics": _clean({"lockbox": {**sections["oracle"]["lockbox"]["per_seed"]["distilled"][0],
                                       **fidelity(np.argmax(p_ship, axis=1), y_oracle[lock_idx])},
                           "what": "this model (fitted on development rows), scored once on the lockbox"}),
        "policy": policy,
    }
    model_id = save_artifact(out_path, weights=shipped.mlp.weights, biases=shipped.mlp.biases,
                             activations=shipped.mlp.activations, feature_mean=shipped.feature_mean,
                             feature_std=shipped.feature_std, manifest=manifest)
    seconds = time.perf_counter() - t_start
    doc = _clean({
        "model_id": model_id, "artifact": str(out_path),
        "command": "kdsignal train --method strategy --data " + " ".join(map(str, inputs)) + f" --out {out_path}"
                   + (f" --config {config_path}" if config_path else ""),
        "config": cfg.to_dict(),
        "data": {"files": gap_report(series),
                 "lockbox": {"lo_ms": split.lockbox_lo_ms, "hi_ms": split.lockbox_hi_ms, "days": split.lockbox_days,
                             "rows": int(split.lockbox.sum())}},
        "shipped": {"teacher": "oracle", "seed": s0, "alpha": v.alpha, "same_as_lockbox_model": same,
                    "seconds": round(time.perf_counter() - t0, 1)},
        "methods": {"strategy": sections, **{f"strategy_{k}": {"lockbox": r} for k, r in rows.items()}},
        "seconds": seconds,
    })
    stem = out_path.with_suffix("")
    Path(f"{stem}_report.json").write_text(json.dumps(doc, indent=1) + "\n")
    Path(f"{stem}_report.md").write_text(render_markdown(doc))
    methods.publish(out_path.parent)
    return doc


def render_markdown(doc: dict) -> str:
    """Per teacher: development choices, the lockbox comparison with intervals, fidelity, trading; then a verdict."""
    secs = doc["methods"]["strategy"]

    def f(x, nd=4):
        return "n/a" if x is None else f"{x:.{nd}f}"

    lines = ["# Strategy distillation: lockbox report", "", f"Command: `{doc['command']}`  ",
             f"Artifact `{doc['artifact']}` (model {doc['model_id']}: the oracle's distilled student, seed "
             f"{doc['shipped']['seed']}, the lockbox model itself: {doc['shipped']['same_as_lockbox_model']}); lockbox "
             f"{doc['data']['lockbox']['days']} days, {doc['data']['lockbox']['rows']} rows; wall time "
             f"{f(doc['seconds'], 1)} s.", ""]
    for name, sec in secs.items():
        dev, lb = sec["development"], sec["lockbox"]
        fid = lb["fidelity"]
        lines += [f"## Teacher: {name}", "",
                  f"Development folds {dev['folds']} ({dev['rows']} rows, seed {dev['seed']}, {dev['seconds']} s): "
                  f"distilled alpha {dev['alpha']} of " + ", ".join(f"{g['alpha']:g}: {f(g['log_loss'])}"
                                                                   for g in dev["alpha_sweep"])
                  + f"; control lr {dev['control_lr']}, weight decay {dev['control_weight_decay']} of "
                  + ", ".join(f"{g['lr']:g}/{g['weight_decay']:g}: {f(g['log_loss'])}" for g in dev["control_grid"])
                  + " (log loss of the teacher's positions).", "",
                  "| model | log loss of the positions | IC | direction AUC | kappa, 95% CI | agreement on non-flat "
                  "bars, 95% CI | non-flat share | degenerate seeds |", "|---|---|---|---|---|---|---|---|"]
        for k in ("distilled", "control"):
            m = lb[k]
            lines.append(f"| {k} | {f(m['log_loss'])} | {f(m['ic'])} | {f(m['direction_auc'])} | "
                         f"{ci(fid['kappa'][k])} | {ci(fid['agreement_non_flat'][k])} | {f(m['non_flat_share'])} | "
                         f"{lb['degenerate'][k]} of {len(lb['per_seed'][k])} |")
        lines.append(f"| teacher | {f(lb['teacher_log_loss'])} | | | | | | |")
        lines += ["", f"Control - distilled log loss: {ci(lb['delta_vs_control'], 5)} ({lb['blocks']} day blocks, "
                  f"{bs.verdict([math.nan if x is None else x for x in lb['delta_vs_control']['ci95']])}); gap "
                  f"recovered {ci(lb['gap_recovered'], 2)}; kappa distilled - control "
                  f"{ci(fid['kappa']['distilled_minus_control'])}, agreement on non-flat bars distilled - control "
                  f"{ci(fid['agreement_non_flat']['distilled_minus_control'])}.", "",
                  "| trading (first seed) | net taker | Sharpe taker | trades taker | net maker | Sharpe maker | "
                  "trades maker | break-even round trip bp |", "|---|---|---|---|---|---|---|---|"]
        for k, label in (("distilled", "distilled, development policy"), ("control", "control, development policy"),
                         ("distilled_argmax", "distilled, argmax every bar"),
                         ("control_argmax", "control, argmax every bar"), ("strategy", f"the {name} strategy itself"),
                         ("buy_and_hold", "buy and hold")):
            t, mk = lb["trading"][k]["taker"], lb["trading"][k]["maker"]
            be = t.get("break_even_fee_bp")
            lines.append(f"| {label} | {f(t['net_return'])} | {f(t['sharpe'], 2)} | {t['trades']} | "
                         f"{f(mk['net_return'])} | {f(mk['sharpe'], 2)} | {mk['trades']} | "
                         f"{f(None if be is None else 2 * be, 2)} |")
        lines.append("")
    lines += ["Log loss: of the teacher's hard positions (sell/hold/buy = -1/0/+1), mean over seeds; the interval "
              "pairs each row's seed-averaged loss and resamples one-day blocks. Fidelity: of the argmax positions, "
              "mean over seeds, same blocks. IC and direction AUC: p_buy - p_sell against the forward return and the "
              "sell/hold/buy labels, as for every method. Trading: net log return per symbol after fee and half a "
              "tick; the development policy is a threshold on p_buy - p_sell chosen on the development folds for "
              "that fee case (net 0: it never trades). The oracle strategy's own row is hindsight, unreachable by "
              "any policy: the ceiling.", "", "## Verdict", "", verdict(doc), ""]
    return "\n".join(lines)


def verdict(doc: dict) -> str:
    """Per teacher: does distillation beat the same student on the raw positions, by how much, does it pay."""
    parts = []
    for name, sec in doc["methods"]["strategy"].items():
        lb = sec["lockbox"]
        d = lb["delta_vs_control"]
        word = bs.verdict([math.nan if x is None else x for x in d["ci95"]])
        t, m = lb["trading"]["distilled"]["taker"], lb["trading"]["distilled"]["maker"]
        pays = "pays" if (t["net_return"] or 0) > 0 else "does not pay"
        parts.append(f"{name}: distilled vs control (own tuned lr) on the log loss of the positions "
                     f"{ci(d, 5)} ({word}), kappa {ci(lb['fidelity']['kappa']['distilled'], 3)} vs "
                     f"{ci(lb['fidelity']['kappa']['control'], 3)}; with its development policy the distilled "
                     f"student nets {t['net_return']:.4f} at taker and {m['net_return']:.4f} at maker "
                     f"({pays} at taker), "
                     f"against the strategy's own {lb['trading']['strategy']['taker']['net_return']:.4f}")
    return "On the lockbox, " + "; ".join(parts) + "."
