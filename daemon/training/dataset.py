"""Pool every symbol's rows into one table: student features, teacher features, labels, returns.

Rows are kept in per-symbol time order, symbol after symbol. ``valid`` marks rows that may train or be
scored: a label exists, the student's features have warmed up, and the bar really traded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TrainConfig
from .data import Series, regularize
from .inputs import STUDENT_FEATURES, market_extras, own_extras, student_features
from .labels import LabelParams, bucket_labels, make_labels


@dataclass
class Pooled:
    """The pooled table (one row per bar per symbol)."""

    symbols: list[str]
    interval_ms: int
    sym: np.ndarray  # int symbol index
    start_ms: np.ndarray
    x_student: np.ndarray  # (n, F) the daemon's features
    x_teacher: np.ndarray  # (n, F + E) student features, then (with extras on) extras and symbol one-hot
    teacher_names: list[str]
    y: np.ndarray  # sell/hold/buy, -1 none
    target: np.ndarray  # teacher target: bucket index (== y without finer buckets)
    to_class: np.ndarray  # bucket -> class
    fwd: np.ndarray  # forward log return over h bars
    band: np.ndarray
    next_ret: np.ndarray  # log(open[t+2] / open[t+1]): what a position taken at bar t's signal earns next bar
    valid: np.ndarray
    open: np.ndarray  # the bar's open price (NaN on a missing bar), for the trading read-out

    def __len__(self) -> int:
        return len(self.y)


def label_params(cfg: TrainConfig) -> LabelParams:
    """The label definition a config implies."""
    return LabelParams(cfg.horizon_bars, cfg.band_k, cfg.vol_window, cfg.round_trip_cost)


def build(series: list[Series], cfg: TrainConfig) -> Pooled:
    """Compute features and labels per symbol on its full bar grid, then stack the symbols."""
    lp = label_params(cfg)
    gridded, present = zip(*(regularize(s) for s in series), strict=True)
    gridded, present = list(gridded), list(present)
    mkt, mkt_names = market_extras(gridded) if cfg.teacher_extra_features else ([None] * len(series), [])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("sym", "start", "xs", "xt", "y", "t", "fwd", "band", "nr", "valid", "open")}
    names: list[str] = []
    to_class = None
    for j, (s, pres) in enumerate(zip(gridded, present, strict=True)):
        xs = student_features(s)
        lab = make_labels(s.close, lp, pres)
        tgt, to_class = bucket_labels(lab["fwd"], lab["band"], lab["y"], cfg.teacher_buckets)
        cols, names = [xs], list(STUDENT_FEATURES)
        if cfg.teacher_extra_features:
            own, own_names = own_extras(s)
            cols += [own, mkt[j]]
            names += own_names + mkt_names
        if cfg.teacher_extra_features:
            onehot = np.zeros((len(s), len(series)))
            onehot[:, j] = 1.0
            cols.append(onehot)
            names += [f"is_{x.symbol}" for x in series]
        o = s.open
        nr = np.full(len(s), np.nan)
        if len(s) > 2:
            nr[:-2] = np.log(o[2:] / o[1:-1])
        valid = (lab["y"] >= 0) & np.all(np.isfinite(xs), axis=1) & pres
        for k, v in (("sym", np.full(len(s), j)), ("start", s.start_ms), ("xs", xs), ("xt", np.column_stack(cols)),
                     ("y", lab["y"]), ("t", tgt), ("fwd", lab["fwd"]), ("band", lab["band"]), ("nr", nr),
                     ("valid", valid), ("open", o)):
            parts[k].append(v)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Pooled(
        symbols=[s.symbol for s in series], interval_ms=series[0].interval_ms, sym=cat["sym"],
        start_ms=cat["start"], x_student=cat["xs"], x_teacher=cat["xt"].astype(np.float32), teacher_names=names,
        y=cat["y"], target=cat["t"], to_class=to_class, fwd=cat["fwd"], band=cat["band"],
        next_ret=cat["nr"], valid=cat["valid"], open=cat["open"],
    )
