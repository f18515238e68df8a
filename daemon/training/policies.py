"""Trading policies shared by every training method: markets, per-symbol edges, fee cases, and the threshold
each model trades at, chosen on development bars only (``trading.choose_policy``)."""

from __future__ import annotations

import numpy as np

from daemon.core import trading as tr

from .config import TrainConfig
from .dataset import Pooled


def _markets(P: Pooled, region: np.ndarray, ticks: dict[str, float], cfg: TrainConfig) -> list[tr.Market]:
    out = []
    for j, sym in enumerate(P.symbols):
        m = region & (P.sym == j)
        if m.any():
            out.append(tr.Market(sym, P.start_ms[m], P.open[m], tick=ticks[sym],
                                 spread_bp=None if cfg.half_spread_bp < 0 else cfg.half_spread_bp))
    return out


def _edges(P: Pooled, region: np.ndarray, edge_full: np.ndarray) -> dict[str, np.ndarray]:
    return {sym: edge_full[region & (P.sym == j)] for j, sym in enumerate(P.symbols) if (region & (P.sym == j)).any()}


def fee_cases(cfg: TrainConfig) -> dict[str, float]:
    """Fee per side of each cost case."""
    return {"taker": cfg.taker_fee_per_side, "maker": cfg.maker_fee_per_side}


def choose_policies(P: Pooled, dev_region: np.ndarray, edges: dict[str, np.ndarray], ticks: dict, cfg: TrainConfig,
                    bars_per_year: float) -> dict:
    """Per model and fee case, the threshold for each holding rule and the better rule, on development bars only."""
    markets = _markets(P, dev_region, ticks, cfg)
    out: dict = {}
    for model, e_full in edges.items():
        e = _edges(P, dev_region, e_full)
        if model == "mean_reversion":
            cands = list(cfg.mean_reversion_z)
        else:
            a = np.abs(np.concatenate(list(e.values())))
            a = a[np.isfinite(a)]
            cands = [float(np.quantile(a, q)) for q in cfg.policy_quantiles] if len(a) else []
        out[model] = {}
        for case, fee in fee_cases(cfg).items():
            modes = {}
            for hold in (1, cfg.horizon_bars):
                modes[str(hold)] = tr.choose_policy(markets, e, fee, cands, (hold,), bars_per_year)
            best = max(modes.values(), key=lambda m: m["net_return_per_symbol"])
            out[model][case] = {**best, "by_hold_bars": modes}
    return out


def development_ticks(P: Pooled, split) -> dict[str, float]:
    """Each symbol's price grid, from development bars only: nothing about the lockbox informs a choice."""
    return {sym: tr.tick_size(P.open[(P.sym == j) & (P.start_ms < split.dev_end_ms)])
            for j, sym in enumerate(P.symbols)}
