"""The ``[train]`` section of ``config.toml``: every knob of the offline distillation run.

``TrainConfig`` is frozen and rejects unknown keys (with the key named), so a typo in ``config.toml``
fails loudly instead of silently training with a default. Sub-tables are not used: every knob is a flat
key, so the table in ``config.toml`` reads like this dataclass.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAKER_FEE = 0.00055  # Bybit linear taker fee, one side
MAKER_FEE = 0.0002  # Bybit linear maker fee, one side


# name -> (config overrides, one-line description); each is re-run with the first seed only
ABLATIONS: dict[str, tuple[dict, str]] = {
    "teacher_without_extras": ({"teacher_extra_features": False},
                               "teacher sees only the student's features (no longer windows, time of day, other "
                               "symbols, symbol id)"),
    "teacher_finer_targets": ({"teacher_buckets": (2.0,)},
                              "teacher predicts 5 return buckets (edges at 1 and 2 bands), collapsed to 3 classes"),
    "recency_weighting": ({"recency_half_life_days": 60.0}, "student rows weighted by recency, half-life 60 days"),
    "label_band_vol_100": ({"vol_window": 100},
                           "labels' hold band scaled by 100-bar volatility (the student's rvol_100) instead of 20-bar"),
    "student_first_block": ({"student_first_block": True},
                            "students also train on block 0 (no teacher there: hard labels only, for both)"),
    "student_32_16": ({"student_hidden": (32, 16)}, "a wider student, 32-16 (same budget)"),
}
# ablations that change the labels: their log losses are not comparable row for row with the default's
LABEL_ABLATIONS = ("label_band_vol_100",)
REGIME_VARIANTS = ("temperature", "input", "router")  # daemon/training/regime.py, simplest first


@dataclass(frozen=True)
class TrainConfig:
    """All parameters of ``kdsignal train``; defaults are the shipped model's configuration."""

    # --- labels
    horizon_bars: int = 3  # h: forward return from close t to close t+h
    band_k: float = 0.5  # hold band = max(band_k * vol * sqrt(h), round-trip cost)
    # bars of 1-bar log returns the band's volatility is measured over; 20 = the student's own rvol_20, so the
    # served model can see the band it is asked to predict against (see the label_band_vol_100 ablation)
    vol_window: int = 20
    fee_per_side: float = TAKER_FEE
    # --- lockbox: the newest span, purged from development, scored once after every choice is made
    lockbox_days: float = 0.0  # 0: 15% of the data's span, in whole days
    # --- folds over the development span (walk-forward: block 0 teaches only, block 1 gives the first soft targets)
    n_folds: int = 5
    embargo_bars: int = 12  # gap on top of the h-bar purge between any training row and a test block
    val_frac: float = 0.15  # tail of each training window held out for early stopping
    # --- teacher
    teacher_hidden: tuple[tuple[int, ...], ...] = ((128, 64, 32), (128, 64, 32), (256, 128, 64))
    teacher_epochs: int = 12
    teacher_batch: int = 1024
    teacher_lr: float = 1e-3
    teacher_weight_decay: float = 1e-5
    teacher_patience: int = 2
    teacher_input_transform: str = "quantile"  # MLP members' inputs: "standard" (z-score) or "quantile" (Gaussianised)
    teacher_lgbm: bool = True
    lgbm_rounds: int = 400
    lgbm_leaves: int = 31
    lgbm_lr: float = 0.05
    lgbm_min_leaf: int = 400
    lgbm_weight: float = 0.7  # share of the ensemble probability given to LightGBM (rest: MLP mean)
    teacher_extra_features: bool = True  # longer windows, time of day, other symbols' moves, symbol id
    teacher_buckets: tuple[float, ...] = ()  # extra bucket edges in band units (e.g. 2.0): finer targets
    # --- sequence teacher (opt-in, the [seq] extra: daemon/training/sequence*.py): a temporal CNN on raw bar windows
    teacher_sequence: bool = False
    sequence_window_bars: int = 64  # bars of OHLCV (symbol and market) each row's window holds, ending at its bar
    sequence_channels: int = 16
    sequence_epochs: int = 6
    sequence_rows_per_epoch: int = 60000  # random training rows per epoch (0: all)
    sequence_batch: int = 256
    sequence_lr: float = 0.002
    sequence_patience: int = 1
    sequence_fit_max_s: float = 90.0  # wall-clock cap on each fold's fit (the run fits one per block)
    sequence_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # its ensemble share, chosen on dev
    # --- student
    student_hidden: tuple[int, ...] = (16, 8)
    student_activation: str = "relu"
    feature_clip: float = 8.0  # |z| bound after normalisation, as the serving kernel applies it
    temperature: float = 2.0
    alpha: float = 0.5
    student_epochs: int = 60
    student_batch: int = 256
    student_lr: float = 5e-3
    student_weight_decay: float = 0.0
    student_patience: int = 8
    student_plateau_patience: int = 0  # halve the learning rate after this many epochs without gain (0: never)
    # also train on block 0, which no out-of-fold teacher labels: hard labels only there (student and control)
    student_first_block: bool = False
    recency_half_life_days: float = 0.0  # 0 = uniform sample weights
    # a second student size, distilled with the same choices, judged against student_hidden by paired intervals
    # (development and lockbox) and written as student_<sizes>.npz next to the artifact; () for none
    student_alt_hidden: tuple[int, ...] = (32, 16)
    seeds: tuple[int, ...] = (0, 1, 2)
    # --- choices made on the development folds (first seed): T x alpha, and the control's own lr x weight decay
    sweep: bool = True  # false: use temperature/alpha above as they are
    # the chapter's range; alpha (the hard labels' weight) 0, pure soft targets, is left out: never chosen before
    sweep_temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 20.0)
    sweep_alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
    control_lrs: tuple[float, ...] = (0.002, 0.005, 0.01)
    control_weight_decays: tuple[float, ...] = (0.0, 0.001)
    # variants re-run over every seed on the development folds, judged by their paired interval (ABLATIONS)
    ablations: tuple[str, ...] = ("teacher_without_extras", "recency_weighting", "student_first_block")
    # --- regimes (daemon/training/regime.py): the variant the shipped student uses ("none", "temperature" or
    # "router"; "input" is evaluated but the serving kernel cannot run it), and the variants evaluated
    regime: str = "none"
    regime_variants: tuple[str, ...] = ("temperature", "input", "router")
    # --- evaluation / output
    teacher_dir: str = "teacher"  # the final teacher's folder, relative to the artifact's ("": not written)
    ece_bins: int = 10
    bootstrap_samples: int = 2000  # paired block bootstrap, one-day blocks
    # trading read-out: fee cases per side and half-spread (< 0: half of one tick, inferred from prices)
    taker_fee_per_side: float = TAKER_FEE
    maker_fee_per_side: float = MAKER_FEE
    half_spread_bp: float = -1.0
    policy_quantiles: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)  # of |p_buy - p_sell|
    mean_reversion_z: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0)  # |zclose_20| thresholds tried
    num_threads: int = 2
    progress: bool = True
    # --- method: "classes" (sell/hold/buy), "alpha" (the forward return, daemon/training/alpha.py) or "strategy"
    method: str = "classes"
    alpha_target_clip: float = 10.0  # |target| bound, in units of rvol_20 * sqrt(h)
    alpha_huber_delta: float = 1.0  # Huber's quadratic zone, same units
    alpha_student_epochs: int = 40
    alpha_student_batch: int = 512
    alpha_dev_folds: int = 0  # the newest development folds the alpha method's choices are made on (0: all)
    alpha_lockbox_seeds: int = 3  # seeds of the lockbox models: the first this many of seeds
    # --- method "strategy" (daemon/training/strategy.py)
    oracle_tau_bp: float = 5.0  # softening of the oracle's action values into position probabilities
    trend_vol_cap: float = 1.5  # the trend rule stays flat when rvol_20 / rvol_500 exceeds this
    trend_soft_scale: float = 0.25  # the trend rule's soft form: margins in units of this many standard deviations
    strategy_dev_folds: int = 2  # the newest development folds its choices are made on (0: all)

    def __post_init__(self) -> None:
        checks = [
            ("horizon_bars", self.horizon_bars >= 1),
            ("band_k", self.band_k >= 0),
            ("vol_window", self.vol_window >= 2),
            ("fee_per_side", 0 <= self.fee_per_side < 0.01),
            ("n_folds", self.n_folds >= 1),
            ("method", self.method in ("classes", "alpha", "strategy")),
            ("oracle_tau_bp", self.oracle_tau_bp > 0),
            ("trend_vol_cap", self.trend_vol_cap > 0),
            ("trend_soft_scale", self.trend_soft_scale > 0),
            ("strategy_dev_folds", 0 <= self.strategy_dev_folds <= self.n_folds + 1),
            ("alpha_target_clip", self.alpha_target_clip > 0),
            ("alpha_huber_delta", self.alpha_huber_delta > 0),
            ("alpha_student_epochs", self.alpha_student_epochs >= 1),
            ("alpha_student_batch", self.alpha_student_batch >= 2),
            ("alpha_dev_folds", 0 <= self.alpha_dev_folds < self.n_folds),
            ("alpha_lockbox_seeds", self.alpha_lockbox_seeds >= 1),
            ("lockbox_days", self.lockbox_days >= 0),
            ("student_weight_decay", self.student_weight_decay >= 0),
            ("bootstrap_samples", self.bootstrap_samples >= 100),
            ("policy_quantiles", all(0 < q < 1 for q in self.policy_quantiles)),
            ("control_lrs", len(self.control_lrs) >= 1 and min(self.control_lrs) > 0),
            ("embargo_bars", self.embargo_bars >= 0),
            ("val_frac", 0 < self.val_frac < 0.5),
            ("temperature", self.temperature > 0),
            ("alpha", 0 <= self.alpha <= 1),
            ("student_hidden", len(self.student_hidden) >= 1 and min(self.student_hidden) >= 1),
            ("student_alt_hidden", all(w >= 1 for w in self.student_alt_hidden)),
            ("teacher_dir", "/" not in self.teacher_dir.strip("/") and self.teacher_dir not in (".", "..")),
            ("sweep_temperatures", len(self.sweep_temperatures) >= 1 and min(self.sweep_temperatures) > 0),
            ("sweep_alphas", len(self.sweep_alphas) >= 1 and all(0 <= a <= 1 for a in self.sweep_alphas)),
            ("student_activation", self.student_activation in ("relu", "tanh")),
            ("teacher_input_transform", self.teacher_input_transform in ("standard", "quantile")),
            ("seeds", len(self.seeds) >= 1),
            ("lgbm_weight", 0 <= self.lgbm_weight <= 1),
            ("sequence_window_bars", 2 <= self.sequence_window_bars <= 4096),
            ("sequence_channels", 1 <= self.sequence_channels <= 1024),
            ("sequence_epochs", self.sequence_epochs >= 1),
            ("sequence_rows_per_epoch", self.sequence_rows_per_epoch >= 0),
            ("sequence_batch", self.sequence_batch >= 2),
            ("sequence_lr", self.sequence_lr > 0),
            ("sequence_patience", self.sequence_patience >= 0),
            ("sequence_fit_max_s", self.sequence_fit_max_s > 0),
            ("sequence_weights", len(self.sequence_weights) >= 1 and all(0 <= w <= 1 for w in self.sequence_weights)),
            ("teacher_buckets", all(b > 1 for b in self.teacher_buckets)),
            ("ablations", all(a in ABLATIONS for a in self.ablations)),
            ("regime_variants", all(v in REGIME_VARIANTS for v in self.regime_variants)),
        ]
        if self.regime == "input":
            raise ValueError("[train] regime = 'input' cannot ship: the serving kernel does not append a regime to "
                             "the student's input; list it in regime_variants to evaluate it")
        if self.regime not in ("none", "temperature", "router"):
            raise ValueError(f"[train] regime = {self.regime!r}: expected none, temperature or router")
        if self.regime != "none" and self.regime not in self.regime_variants:
            raise ValueError(f"[train] regime = {self.regime!r} is not in regime_variants: a variant is evaluated "
                             "before it ships")
        for name, ok in checks:
            if not ok:
                raise ValueError(f"[train] {name} = {getattr(self, name)!r} is out of range")

    @property
    def round_trip_cost(self) -> float:
        """Cost of entering and leaving a position with taker orders (a fraction of notional)."""
        return 2.0 * self.fee_per_side

    @property
    def alt_student_name(self) -> str | None:
        """The second student size's model and artifact name (``student_32_16``), or None when there is none."""
        alt = tuple(self.student_alt_hidden)
        return "student_" + "_".join(map(str, alt)) if alt and alt != tuple(self.student_hidden) else None

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with ``changes`` applied (validated like the original)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the knobs as plain TOML/JSON-friendly values."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_mapping(cls, table: dict[str, Any]) -> TrainConfig:
        """Build from a ``[train]`` table; unknown keys and wrong types raise ``ValueError`` naming the key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        defaults = cls()
        for key, value in table.items():
            if key not in known:
                raise ValueError(f"[train] has unknown key {key!r}")
            default = getattr(defaults, key)
            kwargs[key] = _coerce(key, value, default)
        return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"[train] {key} must be true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"[train] {key} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"[train] {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"[train] {key} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ValueError(f"[train] {key} must be a list, got {value!r}")
        if key == "teacher_hidden":
            if not all(isinstance(x, list) and all(isinstance(i, int) for i in x) for x in value):
                raise ValueError(f"[train] {key} must be a list of integer lists, got {value!r}")
            return tuple(tuple(x) for x in value)
        if key in ("ablations", "regime_variants"):
            if not all(isinstance(i, str) for i in value):
                raise ValueError(f"[train] {key} must be a list of strings, got {value!r}")
            return tuple(value)
        if key in ("student_hidden", "student_alt_hidden", "seeds"):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
                raise ValueError(f"[train] {key} must be a list of integers, got {value!r}")
            return tuple(value)
        if not all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in value):
            raise ValueError(f"[train] {key} must be a list of numbers, got {value!r}")
        return tuple(float(i) for i in value)
    raise ValueError(f"[train] {key}: unsupported value {value!r}")


def load_train_config(path: str | Path | None) -> TrainConfig:
    """Read the ``[train]`` table of a TOML file (defaults when ``path`` is None or has no such table)."""
    if path is None:
        return TrainConfig()
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    table = doc.get("train", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [train] must be a table")
    return TrainConfig.from_mapping(table)
