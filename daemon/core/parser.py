"""Bybit v5 public kline messages, parsed without I/O (core: this module must not import asyncio).

One parser serves the WebSocket stream and the REST ``/v5/market/kline`` pages, so a candle from either
source is the same :class:`Candle` with the same float conversion (live and replay must agree bit for bit).

Every problem with a message raises :class:`FrameError` and nothing else: the feed counts and skips it.
Only confirmed (``confirm: true``) candles are fully validated and converted; unconfirmed updates are
checked for shape and counted, because nothing downstream reads them (this keeps the per-frame path lean).

Time is validated here, at the door: every candle's ``start`` must lie on its interval's grid and no more
than one interval after the exchange's own clock (the push's ``ts``, the REST page's ``time``). A start
from the far future, or a millisecond off the grid, is a malformed frame like any other, so it costs what
one malformed frame costs and never reaches the gap logic downstream.

Topics are looked up in a table of the subscribed topics (:func:`topic_table`) that the caller builds
once: a topic outside it is refused before its data is read, and nothing is ever added to the table, so a
storm of frames naming new topics cannot grow memory.
"""

from __future__ import annotations

import json
import math

from daemon.core import intervals
from daemon.core.intervals import INTERVAL_MS

__all__ = [
    "INTERVAL_MS",
    "Ack",
    "Candle",
    "FrameError",
    "KlineFrame",
    "KlinePage",
    "Pong",
    "grid_offset_ms",
    "interval_ms",
    "kline_topic",
    "parse_frame",
    "parse_kline_page",
    "topic_table",
]

_isfinite = math.isfinite
_loads = json.loads


class FrameError(ValueError):
    """A message that is not a well-formed Bybit v5 kline, ack or pong; the text says what was found."""


def interval_ms(interval: str) -> int:
    """Return the length of one candle of ``interval`` ("1".."720", "D", "W") in milliseconds."""
    try:
        return intervals.interval_ms(interval)
    except ValueError as exc:
        raise FrameError(str(exc)) from None


def grid_offset_ms(interval: str) -> int:
    """Return where the grid of ``interval`` starts: a candle start ``s`` is valid when
    ``(s - grid_offset_ms(i)) % interval_ms(i) == 0``."""
    interval_ms(interval)
    return intervals.GRID_OFFSET_MS.get(interval, 0)


def kline_topic(interval: str, symbol: str) -> str:
    """Return the v5 topic name ``kline.{interval}.{SYMBOL}``."""
    return f"kline.{interval}.{symbol}"


class Candle:
    """One closed candle: start in Unix ms and float OHLCV, as parsed from a push or a REST row."""

    __slots__ = ("symbol", "interval", "start_ms", "open", "high", "low", "close", "volume")

    def __init__(self, symbol: str, interval: str, start_ms: int, open_: float, high: float, low: float,
                 close: float, volume: float) -> None:
        self.symbol = symbol
        self.interval = interval
        self.start_ms = start_ms
        self.open = open_
        self.high = high
        self.low = low
        self.close = close
        self.volume = volume

    def ohlcv(self) -> tuple[float, float, float, float, float]:
        """Return (open, high, low, close, volume)."""
        return (self.open, self.high, self.low, self.close, self.volume)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Candle):
            return NotImplemented
        return (self.symbol, self.interval, self.start_ms, self.ohlcv()) == (
            other.symbol, other.interval, other.start_ms, other.ohlcv())

    def __hash__(self) -> int:
        return hash((self.symbol, self.interval, self.start_ms))

    def __repr__(self) -> str:
        return (f"Candle({self.symbol} {self.interval} start_ms={self.start_ms} o={self.open} h={self.high} "
                f"l={self.low} c={self.close} v={self.volume})")


class KlineFrame:
    """A kline push: its topic and the confirmed candles it carried (often none)."""

    __slots__ = ("topic", "symbol", "interval", "closed", "n_open")

    def __init__(self, topic: str, symbol: str, interval: str, closed: list[Candle], n_open: int) -> None:
        self.topic = topic
        self.symbol = symbol
        self.interval = interval
        self.closed = closed  # confirmed candles in array order
        self.n_open = n_open  # unconfirmed updates in the same push


class Ack:
    """A reply to subscribe/unsubscribe. ``refused_topic`` is the topic a failure names, if any."""

    __slots__ = ("req_id", "op", "success", "ret_msg")

    def __init__(self, req_id: str | None, op: str, success: bool, ret_msg: str) -> None:
        self.req_id = req_id
        self.op = op
        self.success = success
        self.ret_msg = ret_msg

    @property
    def already_subscribed(self) -> bool:
        """True for Bybit's "already subscribed" failure, which leaves the topic subscribed."""
        return "already subscribed" in self.ret_msg

    @property
    def refused_topic(self) -> str | None:
        """Return the topic named by ``...,topic:kline.1.NOPE`` style failures, else None."""
        _, sep, topic = self.ret_msg.rpartition("topic:")
        return topic.strip() or None if sep else None


class Pong:
    """A reply to the JSON ping (``ret_msg == "pong"`` on spot/linear, ``op == "pong"`` elsewhere)."""

    __slots__ = ("req_id",)

    def __init__(self, req_id: str | None) -> None:
        self.req_id = req_id


def _number(entry: dict, key: str, allow_zero: bool) -> float:
    raw = entry[key]
    if type(raw) not in (str, int, float):
        raise FrameError(f"{key} is {type(raw).__name__}, expected a decimal string")
    try:
        value = float(raw)
    except ValueError:
        raise FrameError(f"{key} is {raw!r:.40}, expected a decimal string") from None
    if not (_isfinite(value) and (value > 0.0 or (allow_zero and value == 0.0))):
        what = "non-negative volume" if allow_zero else "positive price"
        raise FrameError(f"{key} is {raw!r:.40}, expected a finite {what}")
    return value


def _start(raw: object, step_ms: int, offset_ms: int, clock_ms: int | None) -> int:
    # The whole time check of a candle: an integer, on the interval grid, at most one interval after the
    # exchange's clock (a far-future start would otherwise look like a gap of millions of bars).
    if type(raw) is not int or raw < 0:
        raise FrameError(f"start is {raw!r:.40}, expected a non-negative integer of Unix ms")
    if (raw - offset_ms) % step_ms:
        raise FrameError(f"start {raw} is off the {step_ms} ms grid (by {(raw - offset_ms) % step_ms} ms)")
    if clock_ms is not None and raw > clock_ms + step_ms:
        raise FrameError(f"start {raw} is {raw - clock_ms} ms after the exchange's clock {clock_ms}")
    return raw


def _candle(symbol: str, interval: str, start_ms: int, entry) -> Candle:
    # One conversion routine for WebSocket dicts and REST rows (rows are mapped to the same keys first).
    o = _number(entry, "open", False)
    h = _number(entry, "high", False)
    lo = _number(entry, "low", False)
    c = _number(entry, "close", False)
    v = _number(entry, "volume", True)
    if h < lo:
        raise FrameError(f"high {h} is below low {lo}")
    return Candle(symbol, interval, start_ms, o, h, lo, c, v)


def _parse_topic(topic: object) -> tuple[str, str, int, int]:
    if type(topic) is not str:
        raise FrameError(f"topic is {type(topic).__name__}, expected a string")
    kind, _, rest = topic.partition(".")
    interval, _, symbol = rest.partition(".")
    if kind != "kline" or not symbol or interval not in INTERVAL_MS:
        raise FrameError(f"unknown topic {topic[:80]!r}")
    return interval, symbol, INTERVAL_MS[interval], intervals.GRID_OFFSET_MS.get(interval, 0)


def topic_table(topics) -> dict[str, tuple[str, str, int, int]]:
    """Return the lookup table :func:`parse_frame` takes: each subscribed kline topic, parsed once.

    Raises :class:`FrameError` for a topic that is not ``kline.{interval}.{SYMBOL}``.
    """
    return {t: _parse_topic(t) for t in topics}


def _parse_kline(msg: dict, topic: object, topics: dict | None) -> KlineFrame:
    if topics is None:
        parsed = _parse_topic(topic)
    else:
        parsed = topics.get(topic) if type(topic) is str else None
        if parsed is None:
            raise FrameError(f"unsubscribed topic {str(topic)[:80]!r}")
    interval, symbol, step_ms, offset_ms = parsed
    data = msg.get("data")
    if type(data) is not list or not data:
        raise FrameError(f"data of {topic} is {type(data).__name__}, expected a non-empty array")
    ts = msg.get("ts")
    if type(ts) is not int:
        raise FrameError(f"ts of {topic} is {ts!r:.40}, expected the exchange's time in Unix ms")
    closed: list[Candle] = []
    n_open = 0
    for entry in data:
        if type(entry) is not dict:
            raise FrameError(f"data element of {topic} is {type(entry).__name__}, expected an object")
        confirm = entry.get("confirm")
        if confirm is True:
            if entry.get("interval", interval) != interval:
                raise FrameError(f"interval {entry.get('interval')!r:.20} inside topic {topic}")
            closed.append(_candle(symbol, interval, _start(entry.get("start"), step_ms, offset_ms, ts), entry))
        elif confirm is False:
            _start(entry.get("start"), step_ms, offset_ms, ts)
            n_open += 1
        else:
            raise FrameError(f"confirm is {confirm!r:.20}, expected true or false")
    return KlineFrame(topic, symbol, interval, closed, n_open)


def parse_frame(text: str | bytes, topics: dict | None = None) -> KlineFrame | Ack | Pong:
    """Parse one WebSocket message into a :class:`KlineFrame`, :class:`Ack` or :class:`Pong`.

    ``topics`` (from :func:`topic_table`, built once by the caller) holds the subscribed topics: a kline
    push for any other topic is refused without reading its data, and the table is never written to.
    Without it every topic is parsed afresh. Raises :class:`FrameError` for anything else: not JSON, wrong
    types, non-finite prices, unknown topics, starts off the interval grid or after the exchange's clock.
    """
    try:
        msg = _loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FrameError(f"not JSON: {str(exc)[:80]}") from None
    if type(msg) is not dict:
        raise FrameError(f"message is {type(msg).__name__}, expected an object")
    topic = msg.get("topic")
    if topic is not None:
        try:
            return _parse_kline(msg, topic, topics)
        except FrameError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise FrameError(f"bad kline in {str(topic)[:60]}: {type(exc).__name__}: {str(exc)[:80]}") from None
    op = msg.get("op")
    ret_msg = msg.get("ret_msg", "")
    req_id = msg.get("req_id")
    if req_id is not None and type(req_id) is not str:
        req_id = str(req_id) if type(req_id) is int else None
    if op == "pong" or ret_msg == "pong":
        return Pong(req_id)
    if type(op) is str and type(ret_msg) is str and type(msg.get("success")) is bool:
        return Ack(req_id, op, msg["success"], ret_msg)
    raise FrameError(f"unrecognised message with keys {sorted(map(str, msg))[:8]}")


class KlinePage:
    """One decoded REST kline page: retCode/retMsg, the server's time, and its rows oldest first."""

    __slots__ = ("ret_code", "ret_msg", "time_ms", "candles")

    def __init__(self, ret_code: int, ret_msg: str, time_ms: int | None, candles: list[Candle]) -> None:
        self.ret_code = ret_code
        self.ret_msg = ret_msg
        self.time_ms = time_ms
        self.candles = candles


_ROW_KEYS = ("start", "open", "high", "low", "close", "volume")


def _row_start(raw: object) -> int:
    # REST sends starts as decimal strings; int() alone would also take "1_000", " 12" or "١٢".
    if type(raw) is str and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        return int(raw)
    if type(raw) is int:
        return raw
    raise FrameError(f"start is {raw!r:.40}, expected a decimal string of Unix ms")


def parse_kline_page(body: str | bytes | dict, symbol: str, interval: str,
                     now_ms: int | None = None) -> KlinePage:
    """Decode a ``/v5/market/kline`` response body. Rows are returned oldest first, open candle included.

    Each start is checked against the interval grid and the page's ``time`` (``now_ms``, the caller's
    clock, when the page has none). A non-zero retCode yields a page with no candles (the caller decides
    whether to retry). Raises :class:`FrameError` naming the field for anything malformed.
    """
    try:
        msg = body if isinstance(body, dict) else _loads(body)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"REST body is not JSON: {str(exc)[:80]}") from None
    if type(msg) is not dict:
        raise FrameError(f"REST body is {type(msg).__name__}, expected an object")
    ret_code = msg.get("retCode")
    if type(ret_code) is not int:
        raise FrameError(f"retCode is {ret_code!r}, expected an integer")
    ret_msg = msg.get("retMsg", "")
    time_ms = msg.get("time")
    if type(time_ms) is not int:
        time_ms = None
    if ret_code != 0:
        return KlinePage(ret_code, str(ret_msg), time_ms, [])
    result = msg.get("result")
    rows = result.get("list") if type(result) is dict else None
    if type(rows) is not list:
        raise FrameError("result.list is missing or not an array")
    candles: list[Candle] = []
    clock_ms = time_ms if time_ms is not None else now_ms
    try:
        step_ms = interval_ms(interval)
        offset_ms = intervals.GRID_OFFSET_MS.get(interval, 0)
        for i, row in enumerate(rows):
            if type(row) is not list or len(row) < 6:
                raise FrameError(f"result.list[{i}] is {row!r:.80}, "
                                 "expected [start, open, high, low, close, volume, ...]")
            entry = dict(zip(_ROW_KEYS, row, strict=False))  # Bybit may append fields (turnover)
            start_ms = _start(_row_start(entry["start"]), step_ms, offset_ms, clock_ms)
            candles.append(_candle(symbol, interval, start_ms, entry))
    except FrameError as exc:
        raise FrameError(f"REST {symbol} {interval}: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise FrameError(f"REST {symbol} {interval}: bad row: {str(exc)[:80]}") from None
    candles.reverse()  # Bybit lists newest first
    return KlinePage(0, str(ret_msg), time_ms, candles)
