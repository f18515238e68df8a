"""Trading read-out of a sell/hold/buy signal over candles: positions, costs, P&L and its statistics.

No training imports: ``kdsignal train`` uses it for its report, and anything holding a signal file
(the daemon's JSON lines) and the candles can call it (``edge_from_signal_lines``, ``backtest``).

Timing: a decision made at bar t's close is filled at bar t+1's open; a position held on bar t earns
``r[t] = log(open[t+2] / open[t+1])``. Every unit of position change pays the fee per side plus half the
spread (``half_spread[t]``, a fraction of the fill price at ``open[t+1]``); whatever is open at the end is
closed at the last fill. Positions are -1, 0 or +1 of one unit of notional per symbol; returns are log
returns, so a symbol's returns add up over bars and the report's "net return" is their sum.

Decision policy: ``edge = p_buy - p_sell``; long when ``edge > threshold``, short when
``edge < -threshold``, flat otherwise (``threshold >= 1`` never acts on probabilities). With ``hold_bars = 1`` the
decision is re-made every bar; with ``hold_bars = h`` a position, once taken, is kept for h bars before the next
decision (the label's horizon), and renewed without cost if that decision is the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numba
import numpy as np

BP = 1e-4
FEE_CASES_BP = {"taker": 5.5, "maker": 2.0}  # Bybit linear, per side (VIP 0)
NEVER = math.inf  # a threshold no edge exceeds: always flat


def bar_returns(open_: np.ndarray) -> np.ndarray:
    """``r[t] = log(open[t+2] / open[t+1])``: what a position decided at bar t earns (0 for the last two bars)."""
    o = np.asarray(open_, dtype=np.float64)
    r = np.zeros(len(o))
    if len(o) > 2:
        r[:-2] = np.log(o[2:] / o[1:-1])
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def tick_size(prices: np.ndarray) -> float:
    """The price grid of a symbol, inferred as the smallest positive step between distinct traded prices."""
    u = np.unique(np.asarray(prices, dtype=np.float64)[np.isfinite(prices)])
    d = np.diff(u)
    d = d[d > 0]
    if not len(d):
        return 0.0
    # prices are decimal strings read into binary floats: round the steps to 10 significant digits
    m = float(d.min())
    return float(f"{m:.10g}") if m > 0 else 0.0


def half_spread(open_: np.ndarray, tick: float) -> np.ndarray:
    """Half of a one-tick spread as a fraction of the fill price ``open[t+1]`` of a decision at bar t."""
    o = np.asarray(open_, dtype=np.float64)
    fill = np.append(o[1:], o[-1:]) if len(o) else o
    return np.where(fill > 0, 0.5 * tick / fill, 0.0)


@numba.njit(cache=False)
def _positions(edge, threshold, hold_bars, out):
    pos = 0
    lock = 0
    for t in range(len(edge)):
        if lock > 0:
            lock -= 1
            out[t] = pos
            continue
        e = edge[t]
        new = 0
        if e > threshold:
            new = 1
        elif e < -threshold:
            new = -1
        if new != 0 and hold_bars > 1:
            lock = hold_bars - 1
        pos = new
        out[t] = pos


def positions(edge: np.ndarray, threshold: float, hold_bars: int = 1) -> np.ndarray:
    """Positions (int64, -1/0/+1) the threshold policy takes on ``edge`` (NaN edges: flat)."""
    out = np.zeros(len(edge), dtype=np.int64)
    e = np.nan_to_num(np.asarray(edge, dtype=np.float64), nan=0.0)
    _positions(e, float(threshold), int(hold_bars), out)
    return out


@numba.njit(cache=False)
def _trades(pos, net_gross, cost, out):
    # out: [trades, winning trades]; a trade is a run of one non-zero position (a flip starts a new one)
    prev = 0
    pnl = 0.0
    trades = 0
    wins = 0
    for t in range(len(pos)):
        p = pos[t]
        if p != prev:
            if prev != 0:
                pnl -= cost[t] * abs(prev)
                trades += 1
                if pnl > 0:
                    wins += 1
                pnl = 0.0
            if p != 0:
                pnl = -cost[t] * abs(p)
        pnl += net_gross[t]
        prev = p
    if prev != 0:
        pnl -= cost[len(pos) - 1] * abs(prev)
        trades += 1
        if pnl > 0:
            wins += 1
    out[0] = trades
    out[1] = wins


@dataclass
class Run:
    """One symbol's simulated path: per-bar gross and net log return, position units traded, spread paid."""

    start_ms: np.ndarray
    pos: np.ndarray
    gross: np.ndarray
    net: np.ndarray
    units: float
    spread_cost: float
    trades: int
    wins: int


def simulate(pos: np.ndarray, r: np.ndarray, fee_per_side: float, half_spread_frac: np.ndarray,
             start_ms: np.ndarray | None = None) -> Run:
    """P&L of ``pos`` over returns ``r`` (see the module docstring for timing and costs)."""
    pos = np.asarray(pos, dtype=np.int64)
    n = len(pos)
    prev = np.concatenate([[0], pos[:-1]])
    change = np.abs(pos - prev).astype(np.float64)
    if n:
        change[-1] += abs(pos[-1])  # closed at the end
    hs = np.asarray(half_spread_frac, dtype=np.float64) * np.ones(n)
    cost = change * (fee_per_side + hs)
    gross = pos * r
    net = gross - cost
    tw = np.zeros(2, dtype=np.int64)
    _trades(pos, gross, fee_per_side + hs, tw)
    st = np.arange(n, dtype=np.int64) if start_ms is None else np.asarray(start_ms, dtype=np.int64)
    return Run(st, pos, gross, net, float(change.sum()), float((change * hs).sum()), int(tw[0]), int(tw[1]))


def _ratio_stats(net: np.ndarray, bars_per_year: float) -> tuple[float, float]:
    if len(net) < 2:
        return 0.0, 0.0
    sd = net.std()
    down = math.sqrt(float(np.mean(np.minimum(net, 0.0) ** 2)))
    k = math.sqrt(bars_per_year)
    sharpe = float(net.mean() / sd * k) if sd > 0 else 0.0
    sortino = float(net.mean() / down * k) if down > 0 else 0.0
    return sharpe, sortino


def max_drawdown(net: np.ndarray) -> float:
    """Worst peak-to-trough fall of the cumulative net log return (starting from 0)."""
    eq = np.concatenate([[0.0], np.cumsum(net)])
    return float(np.max(np.maximum.accumulate(eq) - eq))


def statistics(runs: list[Run], bars_per_year: float) -> dict[str, float]:
    """Read-out of one or more symbols traded side by side with equal notional.

    ``net_return`` / ``gross_return``: mean over symbols of each symbol's summed log return; Sharpe, Sortino
    and max drawdown: of the equal-weight portfolio's per-bar return (mean over symbols trading that bar);
    ``trades``: total round trips; ``hit_rate``: share of trades whose net P&L (with costs) is positive;
    ``turnover``: position units traded per bar and symbol; ``break_even_fee_bp``: the fee per side at
    which the net return would be zero, given the spread paid.
    """
    if not runs:
        return {}
    st = np.concatenate([r.start_ms for r in runs])
    net = np.concatenate([r.net for r in runs])
    keys, inv = np.unique(st, return_inverse=True)
    port = np.bincount(inv, weights=net, minlength=len(keys)) / np.bincount(inv, minlength=len(keys))
    sharpe, sortino = _ratio_stats(port, bars_per_year)
    gross = sum(float(r.gross.sum()) for r in runs)
    units = sum(r.units for r in runs)
    spread = sum(r.spread_cost for r in runs)
    trades = sum(r.trades for r in runs)
    wins = sum(r.wins for r in runs)
    bars = sum(len(r.pos) for r in runs)
    return {
        "net_return": float(np.mean([r.net.sum() for r in runs])),
        "gross_return": float(np.mean([r.gross.sum() for r in runs])),
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": max_drawdown(port),
        "turnover": units / max(bars, 1),
        "in_market": float(sum(int(np.count_nonzero(r.pos)) for r in runs) / max(bars, 1)),
        "trades": int(trades),
        "hit_rate": wins / trades if trades else float("nan"),
        "break_even_fee_bp": (gross - spread) / units / BP if units > 0 else float("nan"),
    }


@dataclass
class Market:
    """One symbol's candles as the read-out needs them."""

    symbol: str
    start_ms: np.ndarray
    open: np.ndarray
    tick: float | None = None  # None: inferred from the prices (``tick_size``)
    spread_bp: float | None = None  # a fixed half-spread in bp instead of half a tick

    def returns(self) -> np.ndarray:
        """``bar_returns`` of the open prices."""
        return bar_returns(self.open)

    def half_spread(self) -> np.ndarray:
        """Per-decision half-spread (fraction of price)."""
        if self.spread_bp is not None:
            return np.full(len(self.open), self.spread_bp * BP)
        tick = tick_size(self.open) if self.tick is None else self.tick
        return half_spread(self.open, tick)


def backtest(markets: list[Market], pos_by_symbol: dict[str, np.ndarray], fee_per_side: float,
             bars_per_year: float) -> tuple[dict[str, float], dict[str, dict[str, float]], list[Run]]:
    """Trade given positions per symbol; return (all symbols' statistics, per symbol statistics, runs)."""
    runs, per = [], {}
    for m in markets:
        if m.symbol not in pos_by_symbol:
            continue
        run = simulate(pos_by_symbol[m.symbol], m.returns(), fee_per_side, m.half_spread(), m.start_ms)
        runs.append(run)
        per[m.symbol] = statistics([run], bars_per_year)
    return statistics(runs, bars_per_year), per, runs


def choose_policy(markets: list[Market], edge_by_symbol: dict[str, np.ndarray], fee_per_side: float,
                  thresholds: list[float], hold_options: tuple[int, ...], bars_per_year: float) -> dict:
    """The threshold and holding rule with the highest net return (sum over symbols) on these candles.

    Meant for development data only: the result is then applied, unchanged, to later data. Ties go to the
    higher threshold (fewer trades), so a signal that never pays chooses ``NEVER`` (always flat).
    """
    best = {"threshold": NEVER, "hold_bars": int(hold_options[0]), "net_return": 0.0}
    for hold in hold_options:
        for thr in sorted(set(float(t) for t in thresholds), reverse=True):
            pos = {s: positions(e, thr, hold) for s, e in edge_by_symbol.items()}
            stats, _, _ = backtest(markets, pos, fee_per_side, bars_per_year)
            net = stats["net_return"] * len(pos)
            if net > best["net_return"] + 1e-12:
                best = {"threshold": thr, "hold_bars": int(hold), "net_return": net}
    best["net_return_per_symbol"] = best.pop("net_return") / max(len(edge_by_symbol), 1)
    return best


MAX_LINE_BYTES = 65536


def edge_from_signal_lines(lines, start_ms_by_symbol: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """``p_buy - p_sell`` per symbol aligned to the candles' ``start_ms`` from the daemon's JSON signal lines.

    Bars without a line get NaN (flat). Returns (edges, number of lines skipped as malformed or unknown).
    """
    edges = {s: np.full(len(t), np.nan) for s, t in start_ms_by_symbol.items()}
    index = {s: {int(v): i for i, v in enumerate(t)} for s, t in start_ms_by_symbol.items()}
    bad = 0
    for line in lines:
        if len(line) > MAX_LINE_BYTES:
            bad += 1
            continue
        try:
            d = json.loads(line)
            sym, start, probs = d["symbol"], int(d["start"]), d["probs"]
            e = float(probs["buy"]) - float(probs["sell"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        i = index.get(sym, {}).get(start)
        if i is None or not math.isfinite(e):
            bad += 1
            continue
        edges[sym][i] = e
    return edges, bad
