"""``kdsignal backtest``: the trading read-out of ``daemon.core.trading`` over any signal file and its candles.

``--signals FILE.jsonl`` is a file of the daemon's signal lines (``kdsignal replay`` output, or stdout of
``kdsignal run``); ``--replay`` makes that file first from the candles with the artifact and the ``[signal]``
policy of ``--config`` and the flags, exactly as ``kdsignal replay`` would. ``--data`` names one kline CSV per
symbol (``SYMBOL-5m.csv``, as ``kdsignal fetch`` writes them: the symbol is the name up to the first ``-``,
or ``--symbol`` for a single file).

What it prints, one row each, over the bars the signal file and the candles share:

- **as signalled**: long on ``buy``, short on ``sell``, flat on ``hold`` and on a bar without a line (a file
  written with ``emit = "actionable"`` or ``"changes"`` has such bars: it is counted and said);
- **threshold sweep**: the threshold policy re-decided from each line's ``probs`` (``p_buy - p_sell`` against
  each ``--thresholds`` value), so one replay answers "which threshold would have paid". A file of an alpha
  model's lines (``position`` and ``alpha_bp`` in place of ``probs``) has no probabilities to re-decide: it is
  backtested as signalled only, and the read-out says the sweep was left out;
- **buy and hold**, **always flat**: for scale.

Timing, costs and statistics are ``daemon.core.trading``'s (the training report's): decided at the bar's
close, filled at the next open, fee per side (``--fee taker``, ``maker`` or a number of bp) plus half a
spread (half a tick inferred from the prices, or ``--spread-bp``), positions held ``--hold`` bars. The best
row of a sweep is chosen on the same bars it is scored on: in-sample, so optimistic.

Inputs are checked at the door: the signal file is streamed (lines of at most ``MAX_LINE_BYTES``, memory
bounded by the candles, not by the file), and the first malformed line, a repeated (symbol, start) or a line
whose ``start`` is off the candles' grid is an error naming the file and line (exit 2); signal lines that
fall outside the candles are counted; a signal file and candles with no bar in common are an error saying
which spans they cover.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.core import trading
from daemon.core.parser import INTERVAL_MS
from daemon.tools.replay import DEFAULT_ARTIFACT, ReplayError, add_policy_arguments, iter_kline_csv

__all__ = ["BacktestError", "Candles", "SignalFile", "add_arguments", "read_candles", "read_signals", "run_cli",
           "sweep"]

MAX_LINE_BYTES = 65536
DEFAULT_THRESHOLDS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.2, 1.0)
_DECISION = {"buy": 1.0, "sell": -1.0, "hold": 0.0}
_YEAR_MS = 365 * 86_400_000


class BacktestError(ValueError):
    """A backtest input problem; the message names the file and line."""


@dataclass
class Candles:
    """One symbol's candles: start times and open prices (what the read-out trades on)."""

    symbol: str
    path: str
    start_ms: np.ndarray
    open: np.ndarray


@dataclass
class SignalFile:
    """What a signal file says per candle bar: ``edge`` (p_buy - p_sell; an alpha model's ``alpha_bp``) and
    ``decision`` (+1/-1/0), NaN where no line fell on the bar; and how many lines fell outside the candles.
    ``alpha`` is True for a file of an alpha model's lines (no threshold sweep)."""

    edge: dict[str, np.ndarray]
    decision: dict[str, np.ndarray]
    lines: int = 0
    outside: int = 0
    other_symbols: dict[str, int] = field(default_factory=dict)
    span_ms: tuple[int, int] | None = None
    alpha: bool = False


def symbol_of(path: str | Path) -> str:
    """The symbol a kline CSV is named after (``BTCUSDT-5m.csv`` -> ``BTCUSDT``)."""
    return Path(path).name.split("-", 1)[0].split(".", 1)[0].upper()


def read_candles(path: str | Path, symbol: str, interval: str) -> Candles:
    """Stream a kline CSV (``daemon.tools.replay.iter_kline_csv``'s checks) into start times and opens."""
    starts, opens = [], []
    for row in iter_kline_csv(path, interval):
        starts.append(row.start_ms)
        opens.append(float(row.open))
    if len(starts) < 3:
        raise BacktestError(f"{path} holds {len(starts)} candles, a backtest needs at least 3")
    return Candles(symbol, str(path), np.asarray(starts, dtype=np.int64), np.asarray(opens, dtype=np.float64))


def _bad(where: str, what: str) -> BacktestError:
    return BacktestError(f"{where}: {what}")


def _probability(where: str, probs: dict, name: str) -> float:
    v = probs.get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise _bad(where, f"probs.{name} is {v!r:.40}, expected a probability")
    return float(v)


def _alpha_edge(where: str, d: dict, sig: str) -> float:
    pos, alpha = d.get("position"), d.get("alpha_bp")
    if isinstance(pos, bool) or not isinstance(pos, int) or pos != _DECISION[sig]:
        raise _bad(where, f"position is {pos!r:.40}, expected {int(_DECISION[sig])} for signal {sig}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise _bad(where, f"alpha_bp is {alpha!r:.40}, expected a number")
    return float(alpha)


def read_signals(path: str | Path, candles: dict[str, Candles], name: str | None = None) -> SignalFile:
    """Stream the signal lines of ``path`` onto the candles' bars (see the module docstring for the checks).
    ``name`` is what messages call the file (default: ``path``)."""
    path = Path(path)
    name = name or str(path)
    edge = {s: np.full(len(c.start_ms), np.nan) for s, c in candles.items()}
    decision = {s: np.full(len(c.start_ms), np.nan) for s, c in candles.items()}
    out = SignalFile(edge, decision)
    lo = hi = None
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the loop's errors need the line number
    except FileNotFoundError:
        raise BacktestError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise BacktestError(f"{path} is a folder, expected a file of signal lines") from None
    with f:
        lineno = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            where = f"{name}:{lineno}"
            if len(raw) > MAX_LINE_BYTES:
                raise _bad(where, f"line longer than {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
            except (ValueError, RecursionError):
                raise _bad(where, f"not a JSON signal line: {raw[:60]!r}") from None
            if not isinstance(d, dict) or "event" in d:
                raise _bad(where, "not a signal line (a log line or another JSON value); pass the signals' stdout")
            sym, start, probs, sig = d.get("symbol"), d.get("start"), d.get("probs"), d.get("signal")
            if not isinstance(sym, str) or not sym.isalnum():
                raise _bad(where, f"symbol is {sym!r:.40}, expected a symbol like BTCUSDT")
            if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= 2**62:
                raise _bad(where, f"start is {start!r:.40}, expected Unix milliseconds")
            alpha = probs is None and "position" in d and "alpha_bp" in d
            if not alpha and not isinstance(probs, dict):
                raise _bad(where, f"probs is {probs!r:.40}, expected an object (or an alpha model's position "
                                  "and alpha_bp)")
            if sig not in _DECISION:
                raise _bad(where, f"signal is {sig!r:.40}, expected buy, hold or sell")
            if out.lines and alpha != out.alpha:
                raise _bad(where, "an alpha model's line among probability lines (or the other way round): "
                                  "one model's lines per file")
            out.alpha = alpha
            if alpha:
                e = _alpha_edge(where, d, sig)
            else:
                e = _probability(where, probs, "buy") - _probability(where, probs, "sell")
            out.lines += 1
            lo = start if lo is None else min(lo, start)
            hi = start if hi is None else max(hi, start)
            c = candles.get(sym)
            if c is None:
                out.other_symbols[sym] = out.other_symbols.get(sym, 0) + 1
                continue
            i = int(np.searchsorted(c.start_ms, start))
            if i == len(c.start_ms) or c.start_ms[i] != start:
                if c.start_ms[0] <= start <= c.start_ms[-1]:
                    raise _bad(where, f"start {start} is not a bar of {c.path} (a hole in the candles, or "
                                      "another interval)")
                out.outside += 1
                continue
            if not math.isnan(edge[sym][i]):
                raise _bad(where, f"a second line for {sym} {start}")
            edge[sym][i] = e
            decision[sym][i] = _DECISION[sig]
    if out.lines == 0:
        raise BacktestError(f"{name} holds no signal lines")
    out.span_ms = (lo, hi)
    if not any(np.isfinite(e).any() for e in edge.values()):
        spans = "; ".join(f"{s} {c.start_ms[0]}..{c.start_ms[-1]}" for s, c in candles.items())
        raise BacktestError(f"no signal line of {name} ({', '.join(sorted(set(out.other_symbols) | set(candles)))}"
                            f", starts {lo}..{hi}) falls on a candle of the data ({spans}): nothing to backtest")
    return out


def _row(name: str, stats: dict) -> dict:
    return {"name": name, **stats}


def sweep(candles: dict[str, Candles], signals: SignalFile, *, fee_bp: float, hold_bars: int,
          thresholds, spread_bp: float | None, interval: str) -> list[dict]:
    """The read-out rows: as signalled, each threshold, buy and hold, always flat (statistics of
    ``daemon.core.trading.statistics``, over the bars from each symbol's first to last signal line and the two
    opens that fill and close the last one)."""
    bars_per_year = _YEAR_MS / INTERVAL_MS[interval]
    fee = fee_bp * trading.BP
    markets, edges, decided = [], {}, {}
    for s, c in candles.items():
        have = np.flatnonzero(np.isfinite(signals.edge[s]))
        if not len(have):
            continue
        # The bars from the first to the last line, plus the two opens after it that fill and close the last
        # decision (flat there: nothing was signalled).
        a, b = int(have[0]), min(len(c.start_ms), int(have[-1]) + 3)
        markets.append(trading.Market(s, c.start_ms[a:b], c.open[a:b], spread_bp=spread_bp))
        edges[s] = signals.edge[s][a:b]
        decided[s] = signals.decision[s][a:b]

    def run(name: str, pos: dict) -> dict:
        stats, _, runs = trading.backtest(markets, pos, fee, bars_per_year)
        return _row(name, stats) | {"_runs": runs}

    rows = [run("as signalled", {s: trading.positions(d, 0.5, hold_bars) for s, d in decided.items()})]
    for thr in () if signals.alpha else thresholds:  # an alpha file has no probabilities to re-decide
        rows.append(run(f"threshold {thr:g}", {s: trading.positions(e, thr, hold_bars) for s, e in edges.items()})
                    | {"threshold": float(thr)})
    rows.append(run("buy and hold", {m.symbol: np.ones(len(m.open), dtype=np.int64) for m in markets}))
    rows.append(run("always flat", {m.symbol: np.zeros(len(m.open), dtype=np.int64) for m in markets}))
    return rows


def _fmt(v, pct=False, digits=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.{digits}f}%" if pct else f"{v:.{digits}f}"


def render(rows: list[dict], head: list[str]) -> str:
    """The rows as a plain-text table under the ``head`` lines."""
    cols = ("row", "net return", "gross", "Sharpe", "Sortino", "max DD", "trades", "hit rate", "in market",
            "break-even bp/side")
    body = [[r["name"], _fmt(r.get("net_return"), True), _fmt(r.get("gross_return"), True), _fmt(r.get("sharpe")),
             _fmt(r.get("sortino")), _fmt(r.get("max_drawdown"), True), str(r.get("trades", 0)),
             _fmt(r.get("hit_rate"), True, 1), _fmt(r.get("in_market"), True, 1),
             _fmt(r.get("break_even_fee_bp"))] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]

    def fmt(cells) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([*head, fmt(cols), *(fmt(b) for b in body)]) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
    """Equity curves (cumulative net log return of the equal-weight portfolio) of the as-signalled row, the best
    threshold row and buy and hold, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [r for r in rows if "threshold" in r]
    best = max(swept, key=lambda r: r.get("net_return", -math.inf)) if swept else None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for r in (rows[0], *([best] if best else []), next(r for r in rows if r["name"] == "buy and hold")):
        runs = r["_runs"]
        st = np.concatenate([x.start_ms for x in runs])
        net = np.concatenate([x.net for x in runs])
        keys, inv = np.unique(st, return_inverse=True)
        port = np.bincount(inv, weights=net, minlength=len(keys)) / np.bincount(inv, minlength=len(keys))
        label = f"{r['name']} (best here: in-sample)" if r is best else r["name"]
        ax.plot(keys.astype("datetime64[ms]"), 100 * np.cumsum(port), label=label, lw=1)
    ax.set_ylabel("cumulative net log return, %")
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fee_bp(text: str) -> float:
    if text in trading.FEE_CASES_BP:
        return trading.FEE_CASES_BP[text]
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not taker, maker or a number of bp") from None
    if not (math.isfinite(v) and 0 <= v <= 1000):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0..1000 bp per side")
    return v


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not out or len(out) > 100 or not all(math.isfinite(x) and 0 <= x <= 1 for x in out):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 1..100 thresholds, each from 0 to 1")
    return out


def _spread_bp(text: str) -> float:
    if text in trading.FEE_CASES_BP:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of bp")
    return _fee_bp(text)


def _hold(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of bars, 1..10000")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the backtest options."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--signals", help="a file of signal lines (kdsignal replay or run stdout)")
    src.add_argument("--replay", action="store_true",
                     help="make the signal lines first from --data with --artifact and the [signal] policy")
    parser.add_argument("--data", required=True, nargs="+", help="kline CSV(s), one per symbol (SYMBOL-5m.csv)")
    parser.add_argument("--symbol", help="the symbol of a single --data file (default: its name up to '-')")
    parser.add_argument("--interval", default="5", help="kline interval of the data (default 5)")
    parser.add_argument("--artifact", default=str(DEFAULT_ARTIFACT), help="student artifact for --replay")
    parser.add_argument("--fee", type=_fee_bp, default=trading.FEE_CASES_BP["taker"], metavar="taker|maker|BP",
                        help="fee per side: taker (5.5 bp), maker (2 bp) or a number of bp (default taker)")
    parser.add_argument("--spread-bp", type=_spread_bp, default=None,
                        help="half-spread paid per side, bp (default: half a tick inferred from the prices)")
    parser.add_argument("--hold", type=_hold, default=1, help="bars a position is kept once taken (default 1)")
    parser.add_argument("--thresholds", type=_thresholds, default=DEFAULT_THRESHOLDS,
                        help="p_buy - p_sell thresholds to sweep, comma-separated "
                             f"(default {','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS)})")
    parser.add_argument("--plot", metavar="FILE.png", help="write the equity curves here (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object instead")
    add_policy_arguments(parser)


def _replay_to(path: Path, candles: dict[str, Candles], args: argparse.Namespace) -> None:
    from daemon.aio.output import SignalWriter
    from daemon.core.model import Model
    from daemon.tools.replay import policy_from_args, replay

    model = Model.load(args.artifact)
    if str(model.interval) != args.interval:
        raise BacktestError(f"artifact {args.artifact} is for interval {model.interval!r}, "
                            f"--interval is {args.interval!r}")
    policy = policy_from_args(args, model)
    with open(path, "wb") as f:
        for s, c in candles.items():
            replay(iter_kline_csv(c.path, args.interval), s, args.interval, model, SignalWriter(f), policy=policy)


def run_cli(args: argparse.Namespace) -> int:
    """Back-test a signal file (or a fresh replay) against its candles and print the read-out."""
    from daemon.core.artifact import ArtifactError
    from daemon.core.errors import ConfigError
    from daemon.core.exitcodes import EXIT_CONFIG
    from daemon.core.model import KernelUnavailable

    def fail(exc: BaseException, code: int = 2) -> int:
        print(f"kdsignal backtest: {exc}", file=sys.stderr)
        return code

    if args.plot:
        target = Path(args.plot)
        if args.plot.endswith(("/", os.sep)) or target.is_dir():
            return fail(f"--plot {args.plot} is a folder: name the picture, e.g. {target / 'equity.png'}")
        if target.suffix.lower() != ".png":
            return fail(f"--plot {args.plot}: expected a FILE.png (the picture is a PNG)")
        if not target.parent.is_dir():
            return fail(f"--plot {args.plot}: folder {target.parent} does not exist")
        try:
            import matplotlib  # noqa: F401 - only whether it is there
        except ImportError:
            return fail("--plot needs matplotlib, which is in the train extra: pip install 'kdsignal[train]' "
                        "(or leave out --plot)")
    try:
        if args.interval not in INTERVAL_MS:
            raise BacktestError(f"--interval {args.interval!r} is not one of {', '.join(INTERVAL_MS)}")
        if args.symbol and len(args.data) > 1:
            raise BacktestError("--symbol names the symbol of a single --data file; name several files SYMBOL-...")
        candles: dict[str, Candles] = {}
        for p in args.data:
            sym = args.symbol or symbol_of(p)
            if not sym.isalnum():
                raise BacktestError(f"cannot tell the symbol of {p} from its name: pass --symbol")
            if sym in candles:
                raise BacktestError(f"two --data files for {sym}: {candles[sym].path} and {p}")
            candles[sym] = read_candles(p, sym, args.interval)
        with tempfile.TemporaryDirectory(prefix="kdsignal-backtest-") as tmp:
            signals_path = Path(args.signals) if args.signals else Path(tmp) / "signals.jsonl"
            if args.replay:
                _replay_to(signals_path, candles, args)
            source = args.signals or f"the replay of {args.artifact} over {', '.join(args.data)}"
            signals = read_signals(signals_path, candles, source)
        rows = sweep(candles, signals, fee_bp=args.fee, hold_bars=args.hold, thresholds=args.thresholds,
                     spread_bp=args.spread_bp, interval=args.interval)
    except (KernelUnavailable, ConfigError) as exc:
        return fail(exc, EXIT_CONFIG)
    except (BacktestError, ReplayError, ArtifactError, OSError) as exc:
        return fail(exc)
    covered = {s: int(np.isfinite(e).sum()) for s, e in signals.edge.items()}
    spans = {s: int(np.flatnonzero(np.isfinite(e))[-1] - np.flatnonzero(np.isfinite(e))[0] + 1)
             for s, e in signals.edge.items() if covered[s]}
    gaps = sum(spans.values()) - sum(covered.values())
    spread = f"{args.spread_bp:g} bp" if args.spread_bp is not None else "half a tick"
    head = [f"signals: {source}; candles: {', '.join(c.path for c in candles.values())}",
            f"bars backtested: {sum(spans.values())} ({', '.join(f'{s} {n}' for s, n in spans.items())}); "
            f"fee {args.fee:g} bp/side + {spread} spread; positions held {args.hold} bar(s)"]
    if gaps:
        head.append(f"{gaps} bar(s) inside the span have no signal line (an emit = actionable/changes file, or "
                    "warm-up after a reset): flat there")
    if signals.outside or signals.other_symbols:
        others = ", ".join(f"{s} {n}" for s, n in sorted(signals.other_symbols.items()))
        head.append(f"lines not backtested: {signals.outside} outside the candles' span"
                    + (f"; for symbols without --data: {others}" if others else ""))
    if signals.alpha:
        head.append("threshold sweep left out: an alpha model's lines (alpha_bp, no probs); backtested as "
                    "signalled (its position)")
    head.append("net return: summed log return per symbol, averaged over symbols; Sharpe, Sortino and max DD of "
                "the equal-weight portfolio; the best threshold is chosen on these same bars (in-sample)")
    public = [{k: v for k, v in r.items() if k != "_runs"} for r in rows]
    if args.json:
        print(json.dumps({"rows": _json_safe(public), "bars": spans, "bars_without_line": gaps, "fee_bp": args.fee,
                          "spread_bp": args.spread_bp, "hold_bars": args.hold}))
    else:
        sys.stdout.write(render(public, head))
    sys.stdout.flush()
    if args.plot:
        try:
            plot(rows, args.plot, f"{', '.join(candles)}: fee {args.fee:g} bp/side + {spread}, hold {args.hold}")
        except OSError as exc:
            return fail(f"cannot write {args.plot}: {exc.strerror or exc}")
        print(f"equity curves: {os.path.abspath(args.plot)}", file=sys.stderr)
    return 0


def _json_safe(rows: list[dict]) -> list[dict]:
    # NaN (no trades: no hit rate) is not JSON: null
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
