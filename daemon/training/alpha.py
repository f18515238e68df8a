"""``kdsignal train --method alpha``: distil the forward return itself, judged on the lockbox.

Target: ``y = log(close[t+h] / close[t]) / (rvol_20[t] * sqrt(h))``, the forward return in units of recent
volatility (clipped to ``+-alpha_target_clip``), the unit an alpha head serves in (``kernels.layout``).

1. **Split** as ``kdsignal train`` does (``folds.lockbox_split``): the newest ``lockbox_days`` are the
   lockbox, development is every row whose label window plus embargo ends before it, cut into
   ``n_folds + 2`` walk-forward blocks.
2. **Teacher**, out of fold: an ensemble of regressors on the classification teacher's privileged inputs
   (``dataset.build``'s ``x_teacher``): MLPs (``teacher_hidden``) with a mean and a log-variance output
   trained by Gaussian likelihood, and LightGBM with a Huber objective. Its mean blends LightGBM's and the
   MLPs' mean at ``lgbm_weight``; its variance is the MLPs' mean variance plus the spread of the members'
   means. The teacher fitted on blocks ``< j`` labels block ``j``; one fitted on every development row
   labels the lockbox.
3. **Students** (the daemon's 11 features, ``student_hidden``), on rows with an out-of-fold teacher:
   ``huber``: one output, ``alpha * huber(y) + (1 - alpha) * huber(teacher mean)``;
   ``gaussian``: mean and log-variance, ``alpha * NLL(y) + (1 - alpha) * KL(teacher || student)``
   (``alpha_loss``). Each form's control is the same student with ``alpha = 1`` (realised returns alone):
   same rows, seeds, initial weights, batches and budget, with its own tuned optimiser settings (step 4).
4. **Development choices** (the last ``alpha_dev_folds`` development folds, all by default; first seed): the
   ``alpha`` of each form from ``sweep_alphas`` (by the rank IC of the prediction with the realised return), each
   control's own learning rate x weight decay (``control_lrs`` x ``control_weight_decays``, same measure), the
   shipped form (the better distilled form by the same measure), and each model's trading policy per fee case
   (``trading.choose_policy``: thresholds on ``alpha_bp`` from quantiles of its development values).
5. **Lockbox**, read once: every model fitted on all development rows (each seed), scored on the lockbox;
   paired day-block bootstrap intervals (``bootstrap``) of control minus distilled loss; the trading
   read-out at taker and maker cost with the development policies.
6. **Shipped**: the lockbox's distilled student of the chosen form and first seed (so the lockbox figures
   are its own), its served decision being the taker policy re-decided every bar (what the daemon does).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.core import trading as tr
from daemon.core.artifact import save_artifact
from kernels.layout import ALPHA_VOL_FEATURE, bp_per_unit, pack_student
from kernels.student import student_batch

from . import bootstrap as bs
from . import evaluate as ev
from . import methods, nn
from .alpha_loss import gaussian_distil, gaussian_nll, huber, huber_distil
from .config import TrainConfig
from .data import gap_report, load_dataset
from .dataset import Pooled, build, label_params
from .distil import Student
from .folds import lockbox_fold, lockbox_split, split_validation, walk_forward
from .labels import BUY, HOLD
from .policies import _edges, _markets, choose_policies, development_ticks, fee_cases
from .teacher import QuantileNormal, Standardizer

FORMS = ("huber", "gaussian")
N_OUTPUTS = {"huber": 1, "gaussian": 2}
BP = 1e4


def regression_mlp(sizes: list[int], activation: str, rng: np.random.Generator, dtype=np.float64) -> nn.MLP:
    """``nn.MLP.init`` with a zero output layer: training starts from the constant prediction (mean 0,
    log-variance 0: the target's own scale) instead of a random one, which a small or noisy target
    would take many steps to forget."""
    m = nn.MLP.init(sizes, activation, rng, dtype=dtype)
    m.weights[-1][:] = 0.0
    return m


def _log(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[alpha] {msg}", file=sys.stderr, flush=True)


# --- target -------------------------------------------------------------------------------------------------

def vol_unit(P: Pooled, cfg: TrainConfig) -> np.ndarray:
    """``rvol_20 * sqrt(h)`` per row: one unit of the alpha target, as a log return."""
    return P.x_student[:, ALPHA_VOL_FEATURE] * math.sqrt(cfg.horizon_bars)


def alpha_target(P: Pooled, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(target y in volatility units, rows where it exists: valid, finite and with a positive unit)."""
    unit = vol_unit(P, cfg)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = P.fwd / unit
    ok = P.valid & np.isfinite(y) & (unit > 0)
    y = np.where(ok, np.clip(y, -cfg.alpha_target_clip, cfg.alpha_target_clip), np.nan)
    return y, ok


# --- teacher ------------------------------------------------------------------------------------------------

@dataclass
class RegressionTeacher:
    """A fitted regression ensemble; ``predict`` returns the mean and log-variance in target units."""

    scaler: object
    mlps: list[nn.MLP]
    lgbm: object | None
    lgbm_weight: float
    threads: int = 2
    info: list[dict] = field(default_factory=list)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log-variance) per row."""
        xs = self.scaler(x)
        outs = [nn.predict(m, xs).astype(np.float64) for m in self.mlps]
        mus = np.stack([o[:, 0] for o in outs]) if outs else None
        var = np.mean([np.exp(np.clip(o[:, 1], -30, 30)) for o in outs], axis=0) if outs else None
        if mus is not None:
            mu_mlp = mus.mean(axis=0)
            var = var + mus.var(axis=0)
        if self.lgbm is None:
            return mu_mlp, np.log(var)
        mu_l = self.lgbm.predict(x, num_threads=self.threads)
        if mus is None:
            return mu_l, np.zeros(len(x))  # unit variance: the target's scale, nothing learned about it
        w = self.lgbm_weight
        mu = w * mu_l + (1.0 - w) * mu_mlp
        return mu, np.log(var + w * (1.0 - w) * (mu_l - mu_mlp) ** 2)


def fit_regression_teacher(x_fit, y_fit, x_val, y_val, cfg: TrainConfig, seed: int) -> RegressionTeacher:
    """Fit the MLP members (Gaussian likelihood) and LightGBM (Huber) on ``(x_fit, y_fit)``, stopping on the
    validation rows."""
    scaler = QuantileNormal.fit(x_fit) if cfg.teacher_input_transform == "quantile" else Standardizer.fit(x_fit)
    xf, xv = scaler(x_fit), scaler(x_val)
    ones = np.ones(len(y_fit))
    info, mlps = [], []
    for i, hidden in enumerate(cfg.teacher_hidden):
        rng = np.random.default_rng([seed, 2000 + i])
        model = regression_mlp([x_fit.shape[1], *hidden, 2], "relu", rng, dtype=np.float32)

        def loss(z, rows):
            return gaussian_distil(z.astype(np.float64), y_fit[rows], y_fit[rows], y_fit[rows], ones[rows], 1.0)

        def val_fn(z):
            z = z.astype(np.float64)
            return float(gaussian_nll(z[:, 0], z[:, 1], y_val).mean())

        res = nn.fit(model, xf, loss, xv, val_fn, epochs=cfg.teacher_epochs, batch=cfg.teacher_batch,
                     lr=cfg.teacher_lr, patience=cfg.teacher_patience, rng=rng, weight_decay=cfg.teacher_weight_decay)
        mlps.append(res.model)
        info.append({"member": f"mlp{i}", "hidden": list(hidden), "best_epoch": res.best_epoch,
                     "val_nll": round(res.val_history[res.best_epoch], 6)})
    booster = None
    if cfg.teacher_lgbm:
        import lightgbm as lgb

        params = {
            "objective": "huber", "alpha": cfg.alpha_huber_delta, "learning_rate": cfg.lgbm_lr,
            "num_leaves": cfg.lgbm_leaves, "min_data_in_leaf": cfg.lgbm_min_leaf, "feature_fraction": 0.8,
            "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "num_threads": cfg.num_threads,
            "seed": seed, "verbose": -1, "deterministic": True, "force_row_wise": True,
        }
        dfit = lgb.Dataset(x_fit, y_fit, free_raw_data=True)
        dval = lgb.Dataset(x_val, y_val, reference=dfit)
        booster = lgb.train(params, dfit, num_boost_round=cfg.lgbm_rounds, valid_sets=[dval],
                            callbacks=[lgb.early_stopping(30, verbose=False)])
        pv = booster.predict(x_val, num_threads=cfg.num_threads)
        info.append({"member": "lgbm", "best_iteration": int(booster.best_iteration),
                     "val_huber": round(float(huber(pv - y_val, cfg.alpha_huber_delta).mean()), 6)})
    return RegressionTeacher(scaler, mlps, booster, cfg.lgbm_weight if mlps else 1.0, cfg.num_threads, info)


def out_of_fold_teacher(P: Pooled, y: np.ndarray, ok: np.ndarray, cfg: TrainConfig, edges, folds, split,
                        seed: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Teacher mean and log-variance for every development block >= 1 and the lockbox, each out of fold."""
    reach_ms = (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms
    mu = np.full(len(P), np.nan)
    lv = np.full(len(P), np.nan)
    fits = []
    for fold in folds:
        t0 = time.perf_counter()
        train = fold.train & ok
        fit, val = split_validation(P.start_ms, train, cfg.val_frac, reach_ms)
        t = fit_regression_teacher(P.x_teacher[fit], y[fit], P.x_teacher[val], y[val], cfg, seed)
        target = fold.test & ok
        mu[target], lv[target] = t.predict(P.x_teacher[target])
        fits.append({"block": fold.index, "fit_rows": int(fit.sum()), "val_rows": int(val.sum()),
                     "seconds": round(time.perf_counter() - t0, 2), "members": t.info})
        _log(cfg, f"teacher for block {fold.index}: {fits[-1]['seconds']} s")
    return mu, lv, fits


# --- students -----------------------------------------------------------------------------------------------

def _loss_fn(form: str, y, mu_t, lv_t, w, alpha: float, delta: float) -> nn.LossFn:
    if form == "huber":
        return lambda z, rows: huber_distil(np.asarray(z, np.float64), y[rows], mu_t[rows], w[rows], alpha, delta)
    return lambda z, rows: gaussian_distil(np.asarray(z, np.float64), y[rows], mu_t[rows], lv_t[rows], w[rows], alpha)


def realised_loss(form: str, z: np.ndarray, y: np.ndarray, delta: float) -> np.ndarray:
    """Per-row loss on the realised target: Huber of the mean, or Gaussian NLL of (mean, log-variance)."""
    if form == "huber":
        return huber(z[:, 0] - y, delta)
    return gaussian_nll(z[:, 0], z[:, 1], y)


def train_alpha_student(x_fit, y_fit, mu_fit, lv_fit, x_val, y_val, cfg: TrainConfig, seed: int, form: str,
                        alpha: float, lr: float | None = None, weight_decay: float | None = None) -> Student:
    """A student of ``form`` distilled at ``alpha`` (``alpha = 1``: the control), early-stopped on the realised loss;
    ``lr`` and ``weight_decay`` default to the config's student ones."""
    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    s = Student(None, mean, std, cfg.feature_clip)  # type: ignore[arg-type]
    zf, zv = s.normalise(x_fit), s.normalise(x_val)
    rng = np.random.default_rng([seed, 7])  # the initial weights depend on the seed only: distilled and control alike
    s.mlp = regression_mlp([x_fit.shape[1], *cfg.student_hidden, N_OUTPUTS[form]], cfg.student_activation, rng)
    w = np.ones(len(y_fit))
    delta = cfg.alpha_huber_delta

    def val_fn(z):
        return float(realised_loss(form, np.asarray(z, np.float64), y_val, delta).mean())

    res = nn.fit(s.mlp, zf, _loss_fn(form, y_fit, mu_fit, lv_fit, w, alpha, delta), zv, val_fn,
                 epochs=cfg.alpha_student_epochs, batch=cfg.alpha_student_batch,
                 lr=cfg.student_lr if lr is None else lr, patience=cfg.student_patience,
                 rng=np.random.default_rng([seed, 11]),
                 weight_decay=cfg.student_weight_decay if weight_decay is None else weight_decay)
    s.mlp, s.best_epoch, s.epochs_run = res.model, res.best_epoch, res.epochs_run
    return s


def served(s: Student, x: np.ndarray, horizon_bars: int) -> np.ndarray:
    """Read-out (n, K) the daemon would serve: alpha_bp [, sd_bp], through ``kernels.student.student_batch``."""
    vec = pack_student(s.packed(), s.feature_mean, s.feature_std, s.clip,
                       (bp_per_unit(horizon_bars), math.inf, -math.inf))
    out = np.empty((len(x), s.mlp.weights[-1].shape[0]))
    student_batch(vec, np.ascontiguousarray(x, dtype=np.float64), out)
    return out


@dataclass
class Prediction:
    """One model's outputs on the pooled rows (NaN off its test rows)."""

    mu: np.ndarray  # mean, target units
    lv: np.ndarray | None  # log-variance, target units (None: a point model)
    alpha_bp: np.ndarray

    @classmethod
    def empty(cls, n: int, gaussian: bool) -> Prediction:
        return cls(np.full(n, np.nan), np.full(n, np.nan) if gaussian else None, np.full(n, np.nan))

    def put(self, rows: np.ndarray, z: np.ndarray, alpha_bp: np.ndarray) -> None:
        self.mu[rows] = z[:, 0]
        if self.lv is not None:
            self.lv[rows] = z[:, 1]
        self.alpha_bp[rows] = alpha_bp

    def z(self, rows: np.ndarray) -> np.ndarray:
        return np.column_stack([self.mu[rows]] + ([] if self.lv is None else [self.lv[rows]]))


def fit_and_predict(P, y, mu_t, lv_t, train, test, cfg, seed, form, alpha, preds: Prediction, lr=None,
                    weight_decay=None) -> Student:
    """Train one student on ``train`` rows (its own early-stopping tail) and write its predictions on ``test``."""
    reach_ms = (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms
    fit, val = split_validation(P.start_ms, train, cfg.val_frac, reach_ms)
    s = train_alpha_student(P.x_student[fit], y[fit], mu_t[fit], lv_t[fit], P.x_student[val], y[val], cfg, seed,
                            form, alpha, lr, weight_decay)
    preds.put(test, s.logits(P.x_student[test]), served(s, P.x_student[test], cfg.horizon_bars)[:, 0])
    return s


# --- measures -----------------------------------------------------------------------------------------------

def measures(pred: Prediction, rows: np.ndarray, P: Pooled, y: np.ndarray, form: str, delta: float) -> dict:
    """IC, direction AUC, losses and (with a variance) the move AUC of one model on ``rows``."""
    z = pred.z(rows)
    out = {
        "rows": int(rows.sum()),
        "ic": ev.rank_ic(pred.alpha_bp[rows], P.fwd[rows]),
        "ic_units": ev.rank_ic(pred.mu[rows], y[rows]),
        "mse": float(np.mean((z[:, 0] - y[rows]) ** 2)),
        "huber": float(huber(z[:, 0] - y[rows], delta).mean()),
    }
    if np.std(pred.alpha_bp[rows]) == 0:
        # A student early-stopped at its constant start (it never beat it on validation) ranks nothing: IC 0.
        out["ic"] = out["ic_units"] = 0.0
        out["constant"] = True
    moves = rows & (P.y != HOLD)
    out["direction_auc"] = ev.auc(pred.mu[moves], P.y[moves] == BUY)
    if pred.lv is not None:
        out["nll"] = float(gaussian_nll(z[:, 0], z[:, 1], y[rows]).mean())
        out["move_auc"] = ev.auc(pred.lv[rows], P.y[rows] != HOLD)
    out["loss"] = out["nll"] if form == "gaussian" else out["huber"]
    return out


def _row_loss(pred: Prediction, rows, y, form, delta) -> np.ndarray:
    return realised_loss(form, pred.z(rows), y[rows], delta)


# --- trading ------------------------------------------------------------------------------------------------

def trading_readout(P, region, edges: dict[str, np.ndarray], policies: dict, ticks, cfg, bars_per_year) -> dict:
    """Every model traded on ``region`` with its development policy (``policies.choose_policies``: thresholds on
    alpha_bp from quantiles of its development values), plus always-flat and buy-and-hold."""
    markets = _markets(P, region, ticks, cfg)
    out: dict = {}
    for name in [*edges, "always_flat", "buy_and_hold"]:
        out[name] = {}
        for case, fee in fee_cases(cfg).items():
            extra = {}
            if name == "always_flat":
                pos = {m.symbol: np.zeros(len(m.open), dtype=np.int64) for m in markets}
            elif name == "buy_and_hold":
                pos = {m.symbol: np.ones(len(m.open), dtype=np.int64) for m in markets}
            else:
                pol = policies[name][case]
                pos = {s: tr.positions(x, pol["threshold"], pol["hold_bars"])
                       for s, x in _edges(P, region, edges[name]).items()}
                extra = {"threshold_bp": pol["threshold"], "hold_bars": pol["hold_bars"]}
            stats, per, _ = tr.backtest(markets, pos, fee, bars_per_year)
            out[name][case] = {**stats, **extra, "per_symbol": per}
    return out


# --- the run ------------------------------------------------------------------------------------------------

def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _paired(pa: Prediction, pb: Prediction, rows, y, form, delta, blocks, cfg) -> dict:
    """Control minus distilled realised loss (positive: distilled better), paired day-block interval."""
    d = _row_loss(pa, rows, y, form, delta) - _row_loss(pb, rows, y, form, delta)
    return bs.paired_mean(d, blocks, cfg.bootstrap_samples)


def train_alpha(inputs: list[str], out_path: str | Path, cfg: TrainConfig, *, interval: str | None = None,
                config_path: str | None = None) -> dict:
    """Run the whole alpha method; write the artifact, ``<stem>_report.json`` and ``<stem>_report.md``; return the
    report."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_path = Path(out_path)
    series = load_dataset(inputs, interval=interval)
    P = build(series, cfg)
    y, ok = alpha_target(P, cfg)
    split = lockbox_split(P.start_ms, ok, cfg.lockbox_days, P.interval_ms, cfg.horizon_bars, cfg.embargo_bars)
    edges, dev_folds = walk_forward(P.start_ms, split.dev, cfg.n_folds, P.interval_ms, cfg.horizon_bars,
                                    cfg.embargo_bars, end_ms=split.dev_end_ms)
    lock = lockbox_fold(split, P.start_ms, dev_folds[-1].index + 1)
    timings["data_s"] = time.perf_counter() - t_start
    seed0 = cfg.seeds[0]
    bars_per_year = 365.25 * 86_400_000 / P.interval_ms
    ticks = development_ticks(P, split)
    delta = cfg.alpha_huber_delta

    # 2. teacher, out of fold (development blocks >= 1 and the lockbox)
    t0 = time.perf_counter()
    mu_t, lv_t, teacher_fits = out_of_fold_teacher(P, y, ok, cfg, edges, [*dev_folds, lock], split, seed0)
    timings["teachers_s"] = time.perf_counter() - t0
    has_t = np.isfinite(mu_t) & ok
    teacher = Prediction(mu_t, lv_t, mu_t * vol_unit(P, cfg) * BP)
    student_rows = has_t & (P.start_ms >= edges[1])  # rows with an out-of-fold teacher

    # 4. development choices on the last alpha_dev_folds folds (first seed)
    t0 = time.perf_counter()
    student_folds = dev_folds[1:]  # block 1 is the first with an out-of-fold teacher: students test from block 2
    choice_folds = student_folds[-cfg.alpha_dev_folds:] if cfg.alpha_dev_folds else student_folds
    dev_test = np.zeros(len(P), dtype=bool)
    for f in choice_folds:
        dev_test |= f.test & ok
    # the distilled students' alpha at the config's optimiser settings; the control (alpha = 1) tuned on its own
    # over learning rate x weight decay, both by the same measure
    grid = [(a, cfg.student_lr, cfg.student_weight_decay) for a in sorted(set(cfg.sweep_alphas) - {1.0})]
    ctl_grid = [(1.0, lr, wd) for lr in cfg.control_lrs for wd in cfg.control_weight_decays]
    dev_preds = {(form, *g): Prediction.empty(len(P), form == "gaussian") for form in FORMS for g in grid + ctl_grid}
    for f in choice_folds:
        train = f.train & student_rows
        for form, a, lr, wd in dev_preds:
            fit_and_predict(P, y, mu_t, lv_t, train, f.test & ok, cfg, seed0, form, a, dev_preds[(form, a, lr, wd)],
                            lr, wd)
        _log(cfg, f"development fold {f.index}: {len(dev_preds)} students")

    def label(form, a, lr, wd):
        return f"{form}@{a:g}" if a < 1.0 else f"{form}_control@lr{lr:g}/wd{wd:g}"

    dev_scores = {label(*k): measures(p, dev_test, P, y, k[0], delta) for k, p in dev_preds.items()}
    dev_scores["teacher"] = measures(teacher, dev_test, P, y, "gaussian", delta)
    best_alpha = {form: max((g[0] for g in grid), key=lambda a: dev_scores[f"{form}@{a:g}"]["ic"]) for form in FORMS}
    best_ctl = {form: max(ctl_grid, key=lambda g: dev_scores[label(form, *g)]["ic"])[1:] for form in FORMS}
    ship_form = max(FORMS, key=lambda form: dev_scores[f"{form}@{best_alpha[form]:g}"]["ic"])
    dev_edges = {"teacher": teacher.alpha_bp}
    for form in FORMS:
        dev_edges[f"{form}_distilled"] = dev_preds[(form, best_alpha[form], cfg.student_lr,
                                                    cfg.student_weight_decay)].alpha_bp
        dev_edges[f"{form}_control"] = dev_preds[(form, 1.0, *best_ctl[form])].alpha_bp
    policies = choose_policies(P, dev_test, dev_edges, ticks, cfg, bars_per_year)
    timings["development_s"] = time.perf_counter() - t0

    # 5. the lockbox, read once
    t0 = time.perf_counter()
    lock_rows = lock.test & ok
    train = split.dev & student_rows
    lock_preds: dict[tuple, list[Prediction]] = {}
    shipped = None
    for seed in cfg.seeds[: cfg.alpha_lockbox_seeds]:
        for form in FORMS:
            for name, a, lr, wd in (("distilled", best_alpha[form], None, None), ("control", 1.0, *best_ctl[form])):
                p = Prediction.empty(len(P), form == "gaussian")
                s = fit_and_predict(P, y, mu_t, lv_t, train, lock_rows, cfg, seed, form, a, p, lr, wd)
                lock_preds.setdefault((form, name), []).append(p)
                if seed == seed0 and form == ship_form and name == "distilled":
                    shipped = s
        _log(cfg, f"lockbox models, seed {seed}")
    blocks = bs.blocks_of(P.start_ms[lock_rows])  # one-day blocks of the lockbox, all symbols together
    lockbox: dict = {"rows": int(lock_rows.sum()), "days": split.lockbox_days,
                     "teacher": measures(teacher, lock_rows, P, y, "gaussian", delta), "forms": {}}
    lock_edges = {"teacher": teacher.alpha_bp}
    for form in FORMS:
        dist, ctrl = lock_preds[(form, "distilled")], lock_preds[(form, "control")]
        per_seed = {"distilled": [measures(p, lock_rows, P, y, form, delta) for p in dist],
                    "control": [measures(p, lock_rows, P, y, form, delta) for p in ctrl]}
        mean = {k: {m: float(np.nanmean([d[m] for d in v])) for m in v[0] if m != "constant"}
                for k, v in per_seed.items()}
        intervals = [_paired(c, d, lock_rows, y, form, delta, blocks, cfg) for c, d in zip(ctrl, dist, strict=True)]
        # the headline pairs each row's loss averaged over the seeds, so one seed's luck does not decide it
        c_loss = np.mean([_row_loss(c, lock_rows, y, form, delta) for c in ctrl], axis=0)
        d_loss = np.mean([_row_loss(d, lock_rows, y, form, delta) for d in dist], axis=0)
        delta_seeds = bs.paired_mean(c_loss - d_loss, blocks, cfg.bootstrap_samples)
        # gap recovered (Hinton's measure) against the teacher's own loss of this form
        t_loss = _row_loss(Prediction(mu_t, lv_t if form == "gaussian" else None, teacher.alpha_bp), lock_rows, y,
                           form, delta)
        gap = bs.paired_ratio(c_loss - d_loss, c_loss - t_loss, blocks, cfg.bootstrap_samples)
        ic_rows = np.mean([_ic_rows(d, lock_rows, P) - _ic_rows(c, lock_rows, P)
                           for c, d in zip(ctrl, dist, strict=True)], axis=0)
        ic_delta = bs.paired_mean(ic_rows, blocks, cfg.bootstrap_samples)
        lockbox["forms"][form] = {
            "alpha": best_alpha[form], "distilled": mean["distilled"], "control": mean["control"],
            "per_seed": per_seed, "delta_vs_control": delta_seeds, "delta_vs_control_by_seed": intervals,
            "gap_recovered": gap, "ic_contribution_delta": ic_delta,
            "control_lr": best_ctl[form][0], "control_weight_decay": best_ctl[form][1],
            # seeds whose predictions stayed at the constant start; they stay in the means above (IC 0)
            "degenerate": {k: int(sum(bool(d.get("constant")) for d in v)) for k, v in per_seed.items()},
            "teacher_loss": float(t_loss.mean()),
        }
        lock_edges[f"{form}_distilled"] = dist[0].alpha_bp
        lock_edges[f"{form}_control"] = ctrl[0].alpha_bp
    lockbox["trading"] = trading_readout(P, lock_rows, lock_edges, policies, ticks, cfg, bars_per_year)
    timings["lockbox_s"] = time.perf_counter() - t0

    # 6. the shipped artifact: the lockbox's distilled student of the chosen form, first seed
    serve_policy = policies[f"{ship_form}_distilled"]["taker"]["by_hold_bars"]["1"]
    thr = serve_policy["threshold"]
    buy, sell = (None, None) if not math.isfinite(thr) else (round(thr, 6), round(-thr, 6))
    fit_range = {"start_ms": int(P.start_ms[train].min()), "end_ms": int(P.start_ms[train].max())}
    manifest = {
        "head": "alpha",
        "alpha": {
            "horizon_bars": cfg.horizon_bars, "outputs": ["mean", "log_var"][: N_OUTPUTS[ship_form]],
            "unit": "log(close[t+h]/close[t]) / (rvol_20[t] * sqrt(h)); alpha_bp = mean * rvol_20 * sqrt(h) * 1e4",
            "form": ship_form, "distillation_alpha": best_alpha[ship_form], "huber_delta": delta,
            "policy": {"buy_above_bp": buy, "sell_below_bp": sell, "fee_case": "taker",
                       "fee_per_side": cfg.taker_fee_per_side, "hold_bars": 1,
                       "chosen_on": "development test blocks " + ", ".join(str(f.index) for f in choice_folds)
                                    + " (net return after fee and half-spread, re-decided every bar)",
                       "development_net_return_per_symbol": serve_policy["net_return_per_symbol"]},
        },
        "normalisation": {"clip": cfg.feature_clip},
        "distillation": {"temperature": 1.0, "alpha": best_alpha[ship_form]},
        "labels": label_params(cfg).to_dict(),
        "data": {"symbols": P.symbols, "interval": series[0].interval, **fit_range,
                 "fit": fit_range, "lockbox": {"lo_ms": split.lockbox_lo_ms, "hi_ms": split.lockbox_hi_ms}},
        "metrics": {"lockbox": _finite({k: v for k, v in lockbox["forms"][ship_form]["distilled"].items()}),
                    "what": "this model (fitted on development rows), scored once on the lockbox"},
        "method": "alpha",
    }
    model_id = save_artifact(out_path, weights=shipped.mlp.weights, biases=shipped.mlp.biases,
                             activations=shipped.mlp.activations, feature_mean=shipped.feature_mean,
                             feature_std=shipped.feature_std, manifest=manifest)
    timings["total_s"] = time.perf_counter() - t_start
    doc = {
        "model_id": model_id, "artifact": str(out_path),
        "command": "kdsignal train --method alpha --data " + " ".join(map(str, inputs)) + f" --out {out_path}"
                   + (f" --config {config_path}" if config_path else ""),
        "config": cfg.to_dict(), "data": {"files": gap_report(series), "pooled_rows": len(P),
                                          "target_rows": int(ok.sum()), "block_edges_ms": [int(e) for e in edges],
                                          "lockbox": {"lo_ms": split.lockbox_lo_ms, "hi_ms": split.lockbox_hi_ms,
                                                      "days": split.lockbox_days, "rows": int(lock_rows.sum())}},
        "teacher_fits": teacher_fits,
        "methods": {"alpha": {
            "development": {"folds": [f.index for f in choice_folds], "scores": dev_scores, "alpha": best_alpha,
                            "control": {form: {"lr": lr, "weight_decay": wd} for form, (lr, wd) in best_ctl.items()},
                            "shipped_form": ship_form, "policies": policies},
            "lockbox": lockbox,
        }},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    doc["methods"].update({f"alpha_{form}": {"lockbox": method_row(form, lockbox, cfg)} for form in FORMS})
    doc = _finite(doc)
    stem = out_path.with_suffix("")
    Path(f"{stem}_report.json").write_text(json.dumps(doc, indent=1) + "\n")
    Path(f"{stem}_report.md").write_text(render_markdown(doc))
    methods.publish(out_path.parent)
    return doc


def method_row(form: str, lockbox: dict, cfg: TrainConfig) -> dict:
    """The ``alpha_<form>`` row of the methods table from this run's lockbox section."""
    d = lockbox["forms"][form]
    m, c = d["distilled"], d["control"]
    return methods.method_row(
        f"alpha_{form}", target=f"teacher's {'mean' if form == 'huber' else 'mean and variance'} of the forward return "
                                f"(alpha {d['alpha']}, development folds)",
        control=f"realised returns alone, own lr {d['control_lr']} and weight decay {d['control_weight_decay']} "
                "(development folds)",
        loss_name="huber" if form == "huber" else "gaussian_nll", loss=m["loss"], control_loss=c["loss"],
        teacher_loss=d["teacher_loss"], mse=m["mse"], ic=m["ic"], direction_auc=m["direction_auc"],
        delta=d["delta_vs_control"], gap_recovered=d["gap_recovered"], trading=lockbox["trading"][f"{form}_distilled"],
        n=lockbox["rows"], seeds=len(d["per_seed"]["distilled"]),
        degenerate={"student": d["degenerate"]["distilled"], "control": d["degenerate"]["control"]},
        note=f"IC distilled - control {methods.fmt_ci(d['ic_contribution_delta'])}; trading: the development policy's "
             "threshold on alpha_bp")


def _ic_rows(pred: Prediction, rows: np.ndarray, P: Pooled) -> np.ndarray:
    """Per-row contribution to the rank IC (product of centred, scaled ranks): its mean is the IC."""
    from scipy.stats import rankdata

    a, b = rankdata(pred.alpha_bp[rows]), rankdata(P.fwd[rows])
    if a.std() == 0:  # a constant prediction ranks nothing: no contribution (IC 0, see ``measures``)
        return np.zeros(len(a))
    return (a - a.mean()) / a.std() * (b - b.mean()) / b.std()


# --- report -------------------------------------------------------------------------------------------------

def _f(x, nd=4):
    return "n/a" if x is None else f"{x:.{nd}f}"


def _ci(d: dict, nd=4) -> str:
    lo, hi = d["ci95"]
    return f"{_f(d['mean'], nd)} [{_f(lo, nd)}, {_f(hi, nd)}]"


def render_markdown(doc: dict) -> str:
    """The alpha method's report: one comparison table, the intervals, the trading read-out, the verdict."""
    a = doc["methods"]["alpha"]
    lb = a["lockbox"]
    tr_ = lb["trading"]
    lines = [
        "# Alpha distillation: lockbox report", "",
        f"Command: `{doc['command']}`  ",
        f"Artifact `{doc['artifact']}` (model {doc['model_id']}), form **{a['development']['shipped_form']}**. "
        f"Lockbox: {lb['days']} days, {lb['rows']} rows; choices on development folds {a['development']['folds']}. "
        f"Wall time {doc['timings_s']['total_s']} s ({', '.join(f'{k} {v}' for k, v in doc['timings_s'].items())}).",
        "",
        "Target: forward log return over h bars in units of rvol_20 * sqrt(h). IC: rank correlation of alpha_bp "
        "with the realised forward return; direction AUC: sign of the prediction on bars whose label is a move; "
        "loss: Huber (huber form) or Gaussian NLL (gaussian form) on the realised target, lower is better.",
        "",
        "| model | loss | MSE | IC | direction AUC | control - distilled loss, 95% CI (day blocks) | gap recovered | "
        "IC distilled - control, 95% CI | net taker | Sharpe taker | net maker | Sharpe maker | break-even fee bp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    t = lb["teacher"]
    tt = tr_["teacher"]
    lines.append(f"| teacher | {_f(t['nll'])} (NLL) / {_f(t['huber'])} (Huber) | {_f(t['mse'])} | {_f(t['ic'])} | "
                 f"{_f(t['direction_auc'])} | | | | {_f(tt['taker']['net_return'])} | {_f(tt['taker']['sharpe'], 2)} | "
                 f"{_f(tt['maker']['net_return'])} | {_f(tt['maker']['sharpe'], 2)} | "
                 f"{_f(tt['taker']['break_even_fee_bp'], 2)} |")
    for form, d in lb["forms"].items():
        for name in ("distilled", "control"):
            m = d[name]
            r = tr_[f"{form}_{name}"]
            extra = (f"{_ci(d['delta_vs_control'])} ({d['delta_vs_control']['blocks']} blocks) | "
                     f"{_ci(d['gap_recovered'], 2)} | {_ci(d['ic_contribution_delta'])}"
                     ) if name == "distilled" else " | | "
            label = f"{form} {name}" + (f" (alpha {d['alpha']})" if name == "distilled" else
                                        f" (realised only, lr {d.get('control_lr')}, "
                                        f"wd {d.get('control_weight_decay')})")
            deg = d.get("degenerate", {}).get(name)
            if deg:
                label += f", {deg} of {len(d['per_seed'][name])} seeds constant"
            lines.append(f"| {label} | {_f(m['loss'])} | {_f(m['mse'])} | {_f(m['ic'])} | {_f(m['direction_auc'])} | "
                         f"{extra} | {_f(r['taker']['net_return'])} | {_f(r['taker']['sharpe'], 2)} | "
                         f"{_f(r['maker']['net_return'])} | {_f(r['maker']['sharpe'], 2)} | "
                         f"{_f(r['taker']['break_even_fee_bp'], 2)} |")
    for base in ("always_flat", "buy_and_hold"):
        r = tr_[base]
        lines.append(f"| {base.replace('_', ' ')} | | | | | | | | {_f(r['taker']['net_return'])} | "
                     f"{_f(r['taker']['sharpe'], 2)} | {_f(r['maker']['net_return'])} | "
                     f"{_f(r['maker']['sharpe'], 2)} | |")
    lines += ["", "Net return: mean over symbols of each symbol's summed log return over the lockbox, after fee per "
              "side and half a tick of spread, with the threshold on alpha_bp and holding rule chosen on development "
              "blocks for that fee case (`trading`); a model whose development blocks found no profitable threshold "
              "stays flat (net 0, break-even n/a). Break-even fee: fee per side at which that policy's net is zero. "
              "Gap recovered: (control - distilled) / (control - teacher) of the realised loss, meaningless when the "
              "teacher's own loss barely beats the control's. Loss, IC and the intervals: mean over the lockbox seeds "
              "(each row's loss averaged over seeds, then paired by day block; IC difference from per-row "
              "contributions to the rank IC). A student that never beat its constant start on validation keeps it "
              "and scores IC 0; such seeds are counted in the label and kept in the means. Each control (alpha 1) "
              "has its own learning rate and weight decay, chosen on the development folds by the same measure "
              "as the distilled alpha (rank IC).", ""]
    lines += ["## Verdict", "", verdict(doc), ""]
    return "\n".join(lines)


def verdict(doc: dict) -> str:
    """One paragraph: does distillation beat the same student on realised returns, by how much, does it pay."""
    lb = doc["methods"]["alpha"]["lockbox"]
    parts = []
    for form, d in lb["forms"].items():
        ci = d["delta_vs_control"]["ci95"]
        word = bs.verdict([math.nan if v is None else v for v in ci])
        deg = d.get("degenerate", {})
        parts.append(f"{form}: distilled (alpha {d['alpha']}) vs control (own lr {d.get('control_lr')}, wd "
                     f"{d.get('control_weight_decay')}) on the realised loss: {_ci(d['delta_vs_control'])}"
                     f" ({word}); IC {_f(d['distilled']['ic'])} vs {_f(d['control']['ic'])}, difference "
                     f"{_ci(d['ic_contribution_delta'])}; constant seeds {deg.get('distilled', 0)} distilled, "
                     f"{deg.get('control', 0)} control")
    pay = []
    for name, r in lb["trading"].items():
        if name in ("always_flat", "buy_and_hold"):
            continue
        pay.append(f"{name} {_f(r['taker']['net_return'])} taker / {_f(r['maker']['net_return'])} maker")
    return ("On the lockbox, " + "; ".join(parts) + ". Net log return per symbol with the development policy: "
            + ", ".join(pay) + ". A positive net needs the policy to trade at all: a threshold the development "
            "blocks never found profitable stays flat (net 0).")


def run_cli_summary(doc: dict) -> dict:
    """What ``kdsignal train --method alpha`` prints: the lockbox headline of each model."""
    lb = doc["methods"]["alpha"]["lockbox"]
    out = {"model_id": doc["model_id"], "artifact": doc["artifact"], "seconds": doc["timings_s"]["total_s"],
           "shipped_form": doc["methods"]["alpha"]["development"]["shipped_form"],
           "teacher": {k: lb["teacher"][k] for k in ("ic", "direction_auc")}}
    for form, d in lb["forms"].items():
        out[form] = {"alpha": d["alpha"], "distilled_ic": d["distilled"]["ic"], "control_ic": d["control"]["ic"],
                     "delta_vs_control": d["delta_vs_control"]}
    return out
