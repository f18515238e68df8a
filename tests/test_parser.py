"""The Bybit v5 message parser: real captures, every malformation, property tests, and its layering."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.parser import (
    Ack,
    Candle,
    FrameError,
    KlineFrame,
    Pong,
    interval_ms,
    kline_topic,
    parse_frame,
    parse_kline_page,
    topic_table,
)

LINEAR_UPDATE = (
    '{"topic":"kline.1.BTCUSDT","data":[{"start":1719667560000,"end":1719667619999,"interval":"1","open":"61030",'
    '"close":"61029.9","high":"61030","low":"61015","volume":"10.798","turnover":"658980.4245","confirm":false,'
    '"timestamp":1719667601380}],"ts":1719667601380,"type":"snapshot"}'
)
SPOT_CLOSE = (
    '{"type": "snapshot", "topic": "kline.1.BTCUSDC", "data": [{"start": 1788791460000, "end": 1788791519999, '
    '"interval": "1", "open": "79050", "close": "79036.9", "high": "79061.3", "low": "79036.9", "volume": "0.773761", '
    '"turnover": "61165.4975707", "confirm": true, "timestamp": 1788791520154}], "ts": 1788791520154}'
)


def _close(**over) -> dict:
    entry = {"start": 1719667500000, "end": 1719667799999, "interval": "5", "open": "61030", "close": "61029.9",
             "high": "61030", "low": "61015", "volume": "10.798", "turnover": "1", "confirm": True,
             "timestamp": 1719667800200}
    entry.update(over)
    return entry


TS = 1719667800200  # the exchange's clock when the close of _close() is pushed


def _push(*entries, topic="kline.5.BTCUSDT", ts=TS) -> str:
    return json.dumps({"topic": topic, "data": list(entries), "ts": ts, "type": "snapshot"})


def test_linear_update_capture_has_no_closed_candle():
    """A real linear confirm:false push parses to a kline frame with one open update and nothing closed."""
    frame = parse_frame(LINEAR_UPDATE)
    assert isinstance(frame, KlineFrame)
    assert (frame.topic, frame.symbol, frame.interval) == ("kline.1.BTCUSDT", "BTCUSDT", "1")
    assert frame.closed == [] and frame.n_open == 1


def test_spot_close_capture_parses_every_field():
    """The real spot closing push (type first, spaced JSON) yields the closed candle with float OHLCV."""
    frame = parse_frame(SPOT_CLOSE.encode())
    assert isinstance(frame, KlineFrame)
    assert frame.closed == [Candle("BTCUSDC", "1", 1788791460000, 79050.0, 79061.3, 79036.9, 79036.9, 0.773761)]


def test_close_and_next_open_in_one_array():
    """A data array holding a close and the next bar's first update gives one closed candle and one update."""
    frame = parse_frame(_push(_close(), _close(start=1719667800000, confirm=False)))
    assert [c.start_ms for c in frame.closed] == [1719667500000]
    assert frame.n_open == 1


def test_topic_table_gives_the_same_frames_and_is_never_written():
    """A topic table parses subscribed topics as without one, refuses other topics, and never grows."""
    table = topic_table(["kline.5.BTCUSDT"])
    before = dict(table)
    a = parse_frame(_push(_close()), table)
    b = parse_frame(_push(_close()))
    assert a.closed == b.closed and (a.symbol, a.interval) == ("BTCUSDT", "5")
    for i in range(50):
        with pytest.raises(FrameError, match="unsubscribed topic"):
            parse_frame(_push(_close(), topic=f"kline.5.X{i}USDT"), table)
    assert table == before


def test_topic_table_refuses_a_malformed_topic():
    """Building the table from something that is not a kline topic raises FrameError naming it."""
    with pytest.raises(FrameError, match="orderbook"):
        topic_table(["orderbook.50.BTCUSDT"])


@pytest.mark.parametrize(("over", "ts", "words"), [
    ({"start": 1719667500001}, TS, "off the 300000 ms grid"),
    ({"start": 1719667499999}, TS, "off the 300000 ms grid"),
    ({"start": 2**62 - (2**62 % 300_000)}, TS, "after the exchange's clock"),
    ({"start": 1719667500000 * 10 - (1719667500000 * 10 % 300_000)}, TS, "after the exchange's clock"),
    ({"start": 1719667800000 + 600_000}, TS, "after the exchange's clock"),
    ({}, None, "ts of"),
    ({}, "1719667800200", "ts of"),
    ({"start": True}, TS, "start"),
])
def test_start_off_grid_or_after_the_clock_is_malformed(over, ts, words):
    """A start off the interval grid, beyond one interval after the push's ts, or a push without ts is malformed."""
    with pytest.raises(FrameError, match=words):
        parse_frame(_push(_close(**over), ts=ts))
    with pytest.raises(FrameError, match=words):  # open updates are held to the same clock
        parse_frame(_push(_close(confirm=False, **over), ts=ts))


def test_start_within_one_interval_of_the_clock_is_accepted():
    """A start up to one interval after ts (a skewed exchange clock) still parses."""
    frame = parse_frame(_push(_close(start=1719667800000), ts=1719667800000 - 300_000))
    assert [c.start_ms for c in frame.closed] == [1719667800000]


def test_weekly_grid_starts_on_monday():
    """Weekly candles open on Monday 00:00 UTC: 2024-06-24 is on the grid, the Thursday epoch grid is not."""
    monday = 1719187200000  # 2024-06-24T00:00:00Z
    entry = _close(start=monday, interval="W")
    assert parse_frame(_push(entry, topic="kline.W.BTCUSDT", ts=monday + 7 * 86_400_000)).closed[0].start_ms == monday
    thursday = monday - 4 * 86_400_000 + 7 * 86_400_000  # a multiple of a week since the epoch
    with pytest.raises(FrameError, match="off the"):
        parse_frame(_push(_close(start=thursday, interval="W"), topic="kline.W.BTCUSDT", ts=thursday + 10**9))


@pytest.mark.parametrize("text", [
    '{"success":true,"ret_msg":"pong","conn_id":"x","req_id":"7","op":"ping"}',
    '{"op":"pong","args":["1719667601380"]}',
])
def test_both_pong_forms(text):
    """A pong is recognised by ret_msg == "pong" (spot/linear) or op == "pong" (other sockets)."""
    assert isinstance(parse_frame(text), Pong)


def test_acks_success_already_and_refused():
    """Acks carry req_id; "already subscribed" is flagged and a refused topic is named."""
    ok = parse_frame('{"success":true,"ret_msg":"","conn_id":"c","req_id":"s1","op":"subscribe"}')
    assert isinstance(ok, Ack) and ok.success and ok.req_id == "s1" and ok.refused_topic is None
    dup = parse_frame('{"success":false,"ret_msg":"error:already subscribed,topic:kline.1.BTCUSDT",'
                      '"conn_id":"c","req_id":"s2","op":"subscribe"}')
    assert dup.already_subscribed and not dup.success
    bad = parse_frame('{"success":false,"ret_msg":"error:handler not found,topic:kline.1.NOPE",'
                      '"conn_id":"c","req_id":"s3","op":"subscribe"}')
    assert bad.refused_topic == "kline.1.NOPE" and not bad.already_subscribed
    spot = parse_frame('{"success":false,"ret_msg":"args size >10","conn_id":"c","req_id":"s4","op":"subscribe"}')
    assert spot.refused_topic is None


@pytest.mark.parametrize("text, words", [
    ("not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    ("[1, 2]", "list"),
    ('{"hello": 1}', "unrecognised"),
    (_push(_close(open="NaN")), "open"),
    (_push(_close(close="inf")), "close"),
    (_push(_close(low="-1")), "low"),
    (_push(_close(high="0")), "high"),
    (_push(_close(volume="-0.5")), "volume"),
    (_push(_close(volume=None)), "volume"),
    (_push(_close(open="abc")), "open"),
    (_push(_close(start="1719667500000")), "start"),
    (_push(_close(start=True)), "start"),
    (_push(_close(confirm="true")), "confirm"),
    (_push(_close(high="61000", low="61015")), "below low"),
    (_push(_close(interval="1")), "interval"),
    (_push(_close(), topic="orderbook.50.BTCUSDT"), "unknown topic"),
    (_push(_close(), topic="kline.7.BTCUSDT"), "unknown topic"),
    (_push(_close(), topic="kline.5."), "unknown topic"),
    ('{"topic": 5, "data": []}', "topic"),
    ('{"topic": "kline.5.BTCUSDT", "data": {}}', "data"),
    ('{"topic": "kline.5.BTCUSDT", "data": []}', "data"),
    ('{"topic": "kline.5.BTCUSDT", "ts": 1, "data": [3]}', "data element"),
    (_push({k: v for k, v in _close().items() if k != "close"}), "close"),
])
def test_malformed_frames_raise_frame_error_naming_the_problem(text, words):
    """Each malformation raises FrameError whose message names what was wrong."""
    with pytest.raises(FrameError, match=words):
        parse_frame(text)


def test_unconfirmed_updates_are_not_converted():
    """An open update is only shape-checked: its prices are never read (they feed nothing)."""
    frame = parse_frame(_push(_close(confirm=False, open="NaN")))
    assert frame.closed == [] and frame.n_open == 1


def _page(rows, ret_code=0, time_ms=1719668000000):
    return json.dumps({"retCode": ret_code, "retMsg": "OK" if ret_code == 0 else "Too many visits!",
                       "result": {"category": "linear", "symbol": "BTCUSDT", "list": rows},
                       "retExtInfo": {}, "time": time_ms})


def test_rest_page_is_reversed_to_oldest_first():
    """REST rows arrive newest first and come back oldest first with the server time."""
    rows = [["1719667800000", "2", "3", "1", "2.5", "10", "25"], ["1719667500000", "1", "2", "0.5", "2", "5", "9"]]
    page = parse_kline_page(_page(rows), "BTCUSDT", "5")
    assert page.ret_code == 0 and page.time_ms == 1719668000000
    assert [c.start_ms for c in page.candles] == [1719667500000, 1719667800000]
    assert page.candles[1].ohlcv() == (2.0, 3.0, 1.0, 2.5, 10.0)


def test_rest_rows_are_held_to_the_grid_and_the_page_time():
    """A REST row off the grid, or starting more than one interval after the page's time, is malformed."""
    good = ["1719667500000", "1", "2", "0.5", "2", "5", "9"]
    for start, words in (("1719667500007", "off the"), (str(2**62 - 2**62 % 300_000), "after the exchange's clock"),
                         ("1_719_667_500_000", "decimal string"), ("١٢", "decimal string")):
        with pytest.raises(FrameError, match=words):
            parse_kline_page(_page([[start, *good[1:]], good]), "BTCUSDT", "5")
    no_time = json.dumps({"retCode": 0, "result": {"list": [["1719668100000", *good[1:]]]}})
    assert parse_kline_page(no_time, "BTCUSDT", "5").candles[0].start_ms == 1719668100000  # no clock: grid only
    with pytest.raises(FrameError, match="after the exchange's clock"):
        parse_kline_page(no_time, "BTCUSDT", "5", now_ms=1719667500000)


def test_rest_error_page_and_malformed_rows():
    """retCode != 0 yields no candles; a malformed row raises FrameError naming the symbol."""
    page = parse_kline_page(_page([], ret_code=10006), "BTCUSDT", "5")
    assert page.ret_code == 10006 and page.candles == []
    with pytest.raises(FrameError, match="BTCUSDT 5"):
        parse_kline_page(_page([["1719667500000", "x", "1", "1", "1", "1", "1"]]), "BTCUSDT", "5")
    with pytest.raises(FrameError, match=r"result\.list"):
        parse_kline_page('{"retCode":0,"result":{}}', "BTCUSDT", "5")
    with pytest.raises(FrameError, match="retCode"):
        parse_kline_page("{}", "BTCUSDT", "5")


def test_interval_table():
    """Interval lengths are in ms; unknown intervals (and "M") raise FrameError."""
    assert interval_ms("5") == 300_000 and interval_ms("D") == 86_400_000
    assert kline_topic("5", "BTCUSDT") == "kline.5.BTCUSDT"
    with pytest.raises(FrameError, match="unsupported interval"):
        interval_ms("M")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
field_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.lists(
    st.integers(), max_size=2)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_raises_only_frame_error(text):
    """Any text or bytes either parses or raises FrameError, never another exception."""
    with contextlib.suppress(FrameError):
        parse_frame(text)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_only_frame_error(value):
    """Any JSON document either parses or raises FrameError."""
    with contextlib.suppress(FrameError):
        parse_frame(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_close())), field_values, max_size=6))
def test_kline_with_arbitrary_field_values_raises_only_frame_error(over):
    """A kline push whose fields take arbitrary JSON values either parses or raises FrameError."""
    with contextlib.suppress(FrameError):
        parse_frame(_push(_close(**over)))


prices = st.decimals(min_value="0.0001", max_value="1000000", places=4, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(prices, prices, st.decimals(min_value="0", max_value="1e9", places=6, allow_nan=False))
def test_realistic_candle_round_trips(a, b, vol):
    """A push with realistic decimal strings yields floats equal to float(str) of each field."""
    lo, hi = min(a, b), max(a, b)
    entry = _close(open=str(a), close=str(b), high=str(hi), low=str(lo), volume=str(vol))
    (c,) = parse_frame(_push(entry)).closed
    assert c.ohlcv() == (float(str(a)), float(str(hi)), float(str(lo)), float(str(b)), float(str(vol)))
    assert all(math.isfinite(x) for x in c.ohlcv())


def test_parser_does_not_import_asyncio():
    """The parser is in the no-I/O core: importing it in a fresh interpreter loads no asyncio."""
    code = "import sys, daemon.core.parser; print('asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
