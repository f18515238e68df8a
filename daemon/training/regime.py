"""Regime-conditional distillation: market regimes from the student's own features, and three ways to use them.

A **regime** is read from one bar's feature vector alone, so the daemon could compute it live: the tercile
of ``rvol_100`` (100-bar realised volatility; edges at the 1/3 and 2/3 quantiles of the *training* rows of
each fold, never of the rows scored) times the sign of ``ret_20`` (the longest return among the features),
six regimes ``2 * tercile + (ret_20 > 0)``. A NaN feature compares False: tercile 0, down.

Variants (``Variant.regime`` in ``daemon.training.train``), each compared with the default distilled student
on the development folds by a paired day-block interval, then scored once on the lockbox:

- ``temperature``: one student, but each training row's loss uses its regime's temperature and alpha, the
  pair whose global-(T, alpha) model had the lowest development log loss on that regime's rows
  (``regime_params``). Serving is unchanged: the artifact is an ordinary student.
- ``input``: the regime, one-hot, appended to the student's input.
- ``router``: one student per regime, each trained on its regime's rows (a regime with fewer than
  ``MIN_REGIME_ROWS`` training rows uses the student trained on all rows).

``[train] regime`` ships ``none``, ``temperature`` (an ordinary student) or ``router`` (a router artifact,
``daemon.core.artifact.save_router_artifact``, served by the same kernel call: ``kernels.layout.pack_router``);
``input`` is evaluated here only (the serving kernel does not append a regime to the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import evaluate as ev
from .bootstrap import blocks_of, paired_mean, verdict
from .config import REGIME_VARIANTS as VARIANTS  # simplest first: the order a tie is broken in
from .distil import train_student
from .inputs import STUDENT_FEATURES

VOL_FEATURE = "rvol_100"
TREND_FEATURE = "ret_20"
N_TERCILES = 3
N_REGIMES = 2 * N_TERCILES
NAMES = tuple(f"{v}_vol_{d}" for v in ("low", "mid", "high") for d in ("down", "up"))
MIN_REGIME_ROWS = 200  # a router regime with fewer training rows falls back to the all-rows student
_VOL_J = list(STUDENT_FEATURES).index(VOL_FEATURE)
_TREND_J = list(STUDENT_FEATURES).index(TREND_FEATURE)


@dataclass(frozen=True)
class Regimes:
    """Thresholds of the regimes: the two tercile edges of ``rvol_100`` on some training rows."""

    vol_edges: tuple[float, float]

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Regime index (n,) int64 of raw student features ``x`` (n, F), in ``NAMES`` order."""
        v, r = x[:, _VOL_J], x[:, _TREND_J]
        tercile = (v > self.vol_edges[0]).astype(np.int64) + (v > self.vol_edges[1])
        return 2 * tercile + (r > 0)

    def to_dict(self) -> dict:
        """The thresholds and what they mean, for the manifest and report."""
        return {"vol_feature": VOL_FEATURE, "vol_edges": list(self.vol_edges), "trend_feature": TREND_FEATURE,
                "names": list(NAMES), "rule": "regime = 2 * (count of vol_edges below rvol_100) + (ret_20 > 0)"}


def fit_regimes(x: np.ndarray, rows: np.ndarray) -> Regimes:
    """Tercile edges of ``rvol_100`` over the training rows ``rows`` (mask or indices) of ``x``."""
    v = x[rows, _VOL_J]
    v = v[np.isfinite(v)]
    if not len(v):
        raise ValueError("no training row has a finite rvol_100: regimes cannot be fitted")
    lo, hi = np.quantile(v, [1 / 3, 2 / 3])
    return Regimes((float(lo), float(hi)))


def fold_regimes(P, fold) -> np.ndarray:
    """Every row's regime under thresholds fitted on ``fold``'s training rows (valid ones)."""
    return fit_regimes(P.x_student, fold.train & P.valid).assign(P.x_student)


def _onehot(r: np.ndarray) -> np.ndarray:
    out = np.zeros((len(r), N_REGIMES))
    out[np.arange(len(r)), r] = 1.0
    return out


def fit_variant(v, P, fold, fit: np.ndarray, val: np.ndarray, p_fit: np.ndarray, w: np.ndarray, cfg,
                seed: int) -> tuple[np.ndarray, dict]:
    """Train regime variant ``v`` (a ``train.Variant``) on ``fit`` rows and predict ``fold``'s test rows.

    Returns the test probabilities and fit info (the thresholds used).
    """
    reg = fit_regimes(P.x_student, fold.train & P.valid)
    r = reg.assign(P.x_student)
    x = P.x_student
    kw = {"temperature": v.temperature, "alpha": v.alpha, "hidden": v.hidden, "lr": v.lr,
          "weight_decay": v.weight_decay}
    yf, yv = P.y[fit], P.y[val]
    info: dict = {"regimes": reg.to_dict()}
    if v.regime == "temperature":
        s = train_student(x[fit], yf, p_fit, w, x[val], yv, cfg, seed, regime=r[fit],
                          regime_params=v.regime_params, **kw)
        return s.predict_proba(x[fold.test]), {**info, "best_epoch": s.best_epoch}
    if v.regime == "input":
        xa = np.hstack([x, _onehot(r)])
        s = train_student(xa[fit], yf, p_fit, w, xa[val], yv, cfg, seed, **kw)
        return s.predict_proba(xa[fold.test]), {**info, "best_epoch": s.best_epoch}
    if v.regime != "router":
        raise ValueError(f"unknown regime variant {v.regime!r}; known: {', '.join(VARIANTS)}")
    test = np.flatnonzero(fold.test)
    out = np.full((len(test), 3), np.nan)
    rf, rv, rt = r[fit], r[val], r[test]
    fallback = None
    info["fallback_regimes"], info["best_epochs"] = [], {}
    for g in range(N_REGIMES):
        here = rt == g
        if not here.any():
            continue
        mf, mv = rf == g, rv == g
        if mf.sum() >= MIN_REGIME_ROWS and mv.any():
            s = train_student(x[fit][mf], yf[mf], p_fit[mf], w[mf], x[val][mv], yv[mv], cfg, seed, **kw)
        else:
            if fallback is None:
                fallback = train_student(x[fit], yf, p_fit, w, x[val], yv, cfg, seed, **kw)
            s = fallback
            info["fallback_regimes"].append(NAMES[g])
        info["best_epochs"][NAMES[g]] = s.best_epoch
        out[here] = s.predict_proba(x[test[here]])
    return out, info


# --- choices and read-outs ----------------------------------------------------------------------------------

def regimes_on(P, folds, ks: list[int]) -> np.ndarray:
    """Regimes of the test rows of folds ``ks`` (concatenated), each under its own fold's thresholds."""
    return np.concatenate([fold_regimes(P, folds[k])[folds[k].test] for k in ks])


def choose_params(sweep_probs: dict[tuple[float, float], np.ndarray], y: np.ndarray, regime: np.ndarray,
                  default: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    """Per regime, the (T, alpha) whose development predictions have the lowest log loss on its rows.

    ``sweep_probs`` maps each (T, alpha) of the sweep to its development predictions (rows aligned with
    ``y`` and ``regime``); a regime with no rows keeps ``default``.
    """
    out = []
    for g in range(N_REGIMES):
        m = regime == g
        if not m.any():
            out.append(default)
            continue
        out.append(min(sweep_probs, key=lambda ta: (ev.log_loss(sweep_probs[ta][m], y[m]), ta != default)))
    return tuple((float(t), float(a)) for t, a in out)


def _mean_row_ll(per_seed: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    return np.mean([ev.row_log_loss(p, y) for p in per_seed], axis=0)


def _measures(per_seed: list[np.ndarray], y: np.ndarray, fwd: np.ndarray) -> dict:
    ms = [ev.signal_measures(p, y, fwd, None) for p in per_seed]
    return {k: float(np.nanmean([m[k] for m in ms])) for k in ("log_loss", "direction_auc", "ic")}


def per_regime(P, idx: np.ndarray, regime: np.ndarray, models: dict[str, list[np.ndarray]], n_boot: int) -> dict:
    """Per regime (and ``all``): rows, each model's log loss / direction AUC / IC (mean over seeds), and
    paired day-block intervals of ``log loss(other) - log loss(student)`` (positive: the student is better;
    the verdict is the other model's: "helps" when the whole interval is negative).

    ``models`` must hold "student"; rows ``idx`` of ``P``, ``regime`` aligned with them.
    """
    y, fwd, start = P.y[idx], P.fwd[idx], P.start_ms[idx]
    ll = {name: _mean_row_ll(ps, y) for name, ps in models.items()}
    out: dict = {}
    for g, name in [*enumerate(NAMES), (-1, "all")]:
        m = np.ones(len(idx), dtype=bool) if g < 0 else regime == g
        part: dict = {"rows": int(m.sum()), "share": float(m.mean()) if len(m) else float("nan")}
        if m.sum() < 2:
            out[name] = part
            continue
        part["class_share"] = (np.bincount(y[m], minlength=3) / m.sum()).tolist()
        blocks = blocks_of(start[m])
        for model, ps in models.items():
            part[model] = _measures([p[m] for p in ps], y[m], fwd[m])
            if model != "student":
                d = paired_mean(ll[model][m] - ll["student"][m], blocks, n_boot)
                # the verdict speaks for the other model: "helps" when its log loss is lower
                part[model]["delta_vs_student"] = {**d, "verdict": verdict(d["ci95"], better_when_positive=False)}
        out[name] = part
    return out


def choose_variant(deltas: dict[str, dict]) -> str:
    """The simplest variant whose development interval against the default student is wholly negative (a lower
    log loss), else "none". ``deltas`` maps a variant to ``paired_mean(ll(variant) - ll(student))``."""
    for name in VARIANTS:
        d = deltas.get(name)
        if d is not None and verdict(d["ci95"], better_when_positive=False) == "helps":
            return name
    return "none"


def interval(d: dict) -> dict:
    """A ``paired_mean`` / ``paired_ratio`` result as the methods table's ``{point, lo, hi}``."""
    return {"point": d["mean"], "lo": d["ci95"][0], "hi": d["ci95"][1]}


# --- the run: development choice, then the lockbox once -----------------------------------------------------

def develop(P, cfg, folds, ch: dict, dev_models: dict, run) -> dict:
    """Per-regime T/alpha, every variant over every seed on the development folds, and the variant chosen there.

    ``ch`` and ``dev_models`` are ``train.develop``'s choices and development predictions; ``run`` is the
    training run's job runner: ``run.variant(T, alpha, **kw)`` makes a ``train.Variant``,
    ``run.predict(ks, {name: variant}, seeds)`` trains (or reuses) them and returns per-seed test probabilities
    on folds ``ks``, ``run.trade`` is ``train.trading_readout``.
    """
    ks = list(range(1, len(folds) - 1))
    idx = np.concatenate([np.flatnonzero(folds[k].test) for k in ks])
    y = P.y[idx]
    r = regimes_on(P, folds, ks)
    seed0 = cfg.seeds[0]
    default = (ch["temperature"], ch["alpha"])
    grid = {(g["temperature"], g["alpha"]): run.variant(g["temperature"], g["alpha"]) for g in ch["sweep"]}
    sweep = {ta: ps[0] for ta, ps in run.predict(ks, grid, (ch["sweep_seed"],)).items()}
    params = choose_params(sweep, y, r, default) if sweep else (default,) * N_REGIMES
    variants = {name: run.variant(*default, regime=name, regime_params=params if name == "temperature" else ())
                for name in cfg.regime_variants}
    preds = run.predict(ks, variants, cfg.seeds)
    models = {"student": dev_models["student"], "control": dev_models["control"], **preds}
    per = per_regime(P, idx, r, models, cfg.bootstrap_samples)
    deltas = {name: per["all"][name]["delta_vs_student"] for name in preds}
    return {"params": {NAMES[g]: {"temperature": t, "alpha": a} for g, (t, a) in enumerate(params)},
            "_params": params, "_variants": variants, "_dev_preds": preds, "_dev_idx": idx,
            "per_regime": per, "delta_vs_student": deltas, "choice": choose_variant(deltas),
            "seeds": list(cfg.seeds), "seed0": seed0, "on": ch["on"]}


def lockbox(P, cfg, folds, dev: dict, lock_models: dict, ticks: dict, dev_region, lock_region, bars_per_year: float,
            run) -> tuple[dict, dict | None]:
    """Score the student, its control and every variant on the lockbox, per regime; return (report part, methods row).

    Nothing read here changes ``dev["choice"]``; ``recommended`` is that choice when its lockbox interval
    against the default student is also wholly below zero (a lower log loss), else "none". ``run`` as in ``develop``.
    """
    from .policies import choose_policies

    L = len(folds) - 1
    idx = np.flatnonzero(folds[L].test)
    reg = fit_regimes(P.x_student, folds[L].train & P.valid)
    r = reg.assign(P.x_student[idx])
    variants = dev["_variants"]
    preds = run.predict([L], variants, cfg.seeds)
    models = {"student": lock_models["student"], "control": lock_models["control"], **preds}
    per = per_regime(P, idx, r, models, cfg.bootstrap_samples)
    supports = {name: per["all"][name]["delta_vs_student"]["verdict"] == "helps" for name in preds}
    choice = dev["choice"]
    part = {
        "regimes": reg.to_dict(),
        "what": "regimes from each fold's training rows; every model vs the default distilled student: paired "
                "one-day block intervals of log loss(model) - log loss(student) (negative: the model is better)",
        "per_regime_temperature_alpha": dev["params"],
        "development": {"per_regime": dev["per_regime"], "delta_vs_student": dev["delta_vs_student"],
                        "on": dev["on"], "seeds": dev["seeds"]},
        "lockbox": {"per_regime": per, "supports": supports},
        "choice_on_development": choice,
        "recommended": choice if choice != "none" and supports.get(choice, False) else "none",
        "shipped": cfg.regime,
        "serving": "temperature changes training only; router ships as a router artifact (a student per regime, "
                   "routed in the step kernel); input is evaluated here, not servable",
    }
    if not preds:
        return part, None
    # the methods row: the development choice, else the variant with the best development mean
    dd = dev["delta_vs_student"]
    name = choice if choice != "none" else min(dd, key=lambda n: dd[n]["mean"])
    row = methods_row(P, cfg, idx, name, models, lock_models["teacher"][0], dev, ticks, dev_region, lock_region,
                      bars_per_year, choose_policies, run.trade)
    return part, row


def _edge_full(n: int, idx: np.ndarray, p: np.ndarray) -> np.ndarray:
    e = np.full(n, np.nan)
    e[idx] = p[:, 2] - p[:, 0]
    return e


def methods_row(P, cfg, idx, name, models, p_teacher, dev, ticks, dev_region, lock_region, bars_per_year,
                choose_policies, trade) -> dict:
    """One row of the methods table for variant ``name`` on the lockbox rows ``idx`` (``trade``:
    ``train.trading_readout``)."""
    from .bootstrap import paired_ratio
    from .methods import method_row

    y, fwd = P.y[idx], P.fwd[idx]
    blocks = blocks_of(P.start_ms[idx])
    m = _measures(models[name], y, fwd)
    ll_v, ll_c = _mean_row_ll(models[name], y), _mean_row_ll(models["control"], y)
    ll_t = ev.row_log_loss(p_teacher, y)
    gap = paired_ratio(ll_c - ll_v, ll_c - ll_t, blocks, cfg.bootstrap_samples)
    dvc = paired_mean(ll_c - ll_v, blocks, cfg.bootstrap_samples)
    dev_edge = {name: _edge_full(len(P), dev["_dev_idx"], dev["_dev_preds"][name][0])}
    policies = choose_policies(P, dev_region, dev_edge, ticks, cfg, bars_per_year)
    lock_edge = {name: _edge_full(len(P), idx, models[name][0])}
    argmax = np.full(len(P), np.nan)
    argmax[idx] = np.argmax(models[name][0], axis=1) - 1
    trade, _ = trade(P, lock_region, lock_edge, policies, ticks, cfg, bars_per_year, argmax)
    return {"lockbox": method_row(
        "regime", target=f"teacher's sell/hold/buy probabilities, regime variant {name!r}",
        control="hard sell/hold/buy labels, same rows, seeds, initial weights, optimiser and budget",
        loss_name="log_loss", loss=m["log_loss"], control_loss=float(ll_c.mean()), teacher_loss=float(ll_t.mean()),
        ic=m["ic"], direction_auc=m["direction_auc"], delta=dvc, gap_recovered=gap, trading=trade[name],
        n=len(idx), seeds=len(models[name]),
        note=f"variant regime_{name}: the development choice, else the best development mean"),
        "variant": f"regime_{name}"}


def final_regimes(P, rows: np.ndarray) -> Regimes:
    """The shipped student's thresholds: from the rows it is fitted on."""
    return fit_regimes(P.x_student, rows)


def final_kwargs(cfg, dev: dict, P, rows: np.ndarray) -> dict:
    """``train_student`` arguments of the shipped student under ``cfg.regime`` (only temperature has any)."""
    if cfg.regime != "temperature":  # a router is fitted by save_router
        return {}
    return {"regime": final_regimes(P, rows).assign(P.x_student[rows]), "regime_params": dev["_params"]}


def markdown(part: dict) -> list[str]:
    """The report's regime section: per-regime read-outs on development folds and the lockbox, and the verdict."""

    def ci(d: dict) -> str:
        lo, hi = d["ci95"]
        return f"{1000 * d['mean']:+.2f} [{1000 * lo:+.2f}, {1000 * hi:+.2f}]"

    edges = part["regimes"]["vol_edges"]
    lines = ["### Regimes (terciles of rvol_100 x sign of ret_20)", "",
             "Thresholds from each fold's training rows "
             f"(lockbox fold: rvol_100 edges {edges[0]:.6g}, {edges[1]:.6g}). "
             "Per regime: rows, the default distilled student's log loss, direction AUC and IC (mean over seeds), "
             "and each other model's log loss minus the student's, millinats with a one-day block 95% interval "
             "(positive: the default student is better).", ""]
    for where in ("development", "lockbox"):
        per = part[where]["per_regime"]
        others = [k for k in per["all"] if isinstance(per["all"][k], dict) and "delta_vs_student" in per["all"][k]]
        head = " | ".join(f"{o} - student" for o in others)
        lines += [f"{where.capitalize()}:", "", f"| regime | rows | student LL | dir. AUC | IC | {head} |",
                  "|---" * (5 + len(others)) + "|"]
        for name, p in per.items():
            if "student" not in p:
                lines.append(f"| {name} | {p['rows']} |" + " n/a |" * (3 + len(others)))
                continue
            s = p["student"]
            lines.append(f"| {name} | {p['rows']} | {s['log_loss']:.4f} | {s['direction_auc']:.3f} | {s['ic']:.3f} | "
                         + " | ".join(ci(p[o]["delta_vs_student"]) for o in others) + " |")
        lines.append("")
    t = part["per_regime_temperature_alpha"]
    lines += ["Per-regime (T, alpha) of the temperature variant: "
              + ", ".join(f"{n} ({v['temperature']:g}, {v['alpha']:g})" for n, v in t.items()) + ".", "",
              f"Chosen on development folds: **{part['choice_on_development']}**; lockbox supports: "
              + ", ".join(f"{n} {'yes' if ok else 'no'}" for n, ok in part["lockbox"]["supports"].items())
              + f"; recommended default: **{part['recommended']}**; this artifact uses: **{part['shipped']}**. "
              + part["serving"] + ".", ""]
    return lines


def save_router(path, P, rows: np.ndarray, p_t: np.ndarray, cfg, seed: int, ch: dict, lock_info: dict,
                epochs: int, manifest: dict) -> str:
    """Fit the shipped router on ``rows`` (a student per regime, thresholds from these rows, each for the epochs
    its regime's lockbox model early-stopped at, else ``epochs``) and write it; return the model id.

    A regime with fewer than ``MIN_REGIME_ROWS`` rows gets the student fitted on all ``rows``.
    """
    from daemon.core.artifact import save_router_artifact

    reg = final_regimes(P, rows)
    r = reg.assign(P.x_student)
    kw = {"temperature": ch["temperature"], "alpha": ch["alpha"]}
    best = lock_info.get("best_epochs", {})
    students, fallback = [], None
    for g in range(N_REGIMES):
        m = rows & (r == g)
        n_ep = max(1, int(best.get(NAMES[g], epochs)))
        if m.sum() >= MIN_REGIME_ROWS:
            s = train_student(P.x_student[m], P.y[m], p_t[m], np.ones(int(m.sum())), P.x_student[:0], P.y[:0], cfg,
                              seed, fixed_epochs=n_ep, **kw)
        else:
            if fallback is None:
                fallback = train_student(P.x_student[rows], P.y[rows], p_t[rows], np.ones(int(rows.sum())),
                                         P.x_student[:0], P.y[:0], cfg, seed, fixed_epochs=epochs, **kw)
            s = fallback
        students.append((s.mlp.weights, s.mlp.biases, s.feature_mean, s.feature_std))
        acts = s.mlp.activations
    return save_router_artifact(path, students=students, activations=acts, vol_edges=reg.vol_edges,
                                manifest=manifest)
