"""The fake Bybit speaks the v5 shapes the daemon relies on, and its faults do what they say."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from daemon.core.parser import INTERVAL_MS, FrameError, KlineFrame, parse_frame
from daemon.tools.fake_bybit import EX_UNAVAILABLE, GARBAGE_FRAMES, FakeBybit, Faults, shift_to_now
from tests.support import OPEN_INDEX, ROOT, InProcessDaemon, sample_rows, wait_until

START = 30  # bars of REST-only history before the open bar


@pytest.fixture
async def fake():
    """A fake serving 60 real BTCUSDT and ETHUSDT 5m bars, bar 30 open."""
    async with FakeBybit(sample_rows(("BTCUSDT", "ETHUSDT"), 60), "5", start_index=START) as f:
        yield f


async def _rest(fake, **params):
    q = {"category": "linear", "symbol": "BTCUSDT", "interval": "5", **{k: str(v) for k, v in params.items()}}
    async with aiohttp.ClientSession() as s, s.get(fake.rest_url + "/v5/market/kline", params=q) as r:
        return r.status, dict(r.headers), await r.json()


async def _recv_json(ws):
    return json.loads(await ws.recv())


async def test_rest_pages_newest_first_with_the_open_candle(fake):
    """REST lists newest first, its first row is the still-open bar, and limit/end are honoured."""
    status, _, body = await _rest(fake, limit=3)
    assert status == 200 and body["retCode"] == 0 and body["time"] == fake.clock.now_ms()
    starts = [int(r[0]) for r in body["result"]["list"]]
    assert starts[0] == fake.open_start_ms and starts == sorted(starts, reverse=True) and len(starts) == 3
    _, _, body = await _rest(fake, limit=1000, end=fake.open_start_ms - 1)
    assert len(body["result"]["list"]) == START and int(body["result"]["list"][0][0]) < fake.open_start_ms
    _, _, body = await _rest(fake, start=fake.open_start_ms - 2 * 300_000 + 5, limit=1000)
    # The candle holding start.
    assert [int(r[0]) for r in body["result"]["list"]][-1] == fake.open_start_ms - 2 * 300_000


async def test_rest_errors_and_scripted_faults(fake):
    """Unknown symbols get retCode 10001; scripted 429 and 500 come first, in order, then good data."""
    _, _, body = await _rest(fake, symbol="NOPE")
    assert body["retCode"] == 10001
    fake.faults.rest_errors[:] = [429, 500, ("retcode", 10006)]
    status, headers, body = await _rest(fake)
    assert status == 429 and int(headers["X-Bapi-Limit-Reset-Timestamp"]) > body["time"]
    assert (await _rest(fake))[0] == 500
    status, _, body = await _rest(fake)
    assert status == 200 and body["retCode"] == 10006
    status, _, body = await _rest(fake)
    assert status == 200 and body["retCode"] == 0


async def test_subscribe_acks_ping_and_a_bar(fake):
    """Acks echo req_id, refused and repeated topics fail by name, ping gets the linear pong, a bar closes once."""
    async with connect(fake.ws_url) as ws:
        await ws.send(json.dumps({"req_id": "a", "op": "subscribe", "args": ["kline.5.BTCUSDT"]}))
        assert await _recv_json(ws) == {"success": True, "ret_msg": "", "conn_id": "fake-1", "req_id": "a",
                                        "op": "subscribe"}
        await ws.send(json.dumps({"req_id": "b", "op": "subscribe", "args": ["kline.5.BTCUSDT", "kline.5.NOPE"]}))
        ack = await _recv_json(ws)
        assert ack["req_id"] == "b" and not ack["success"]
        assert ack["ret_msg"] == "error:already subscribed,topic:kline.5.BTCUSDT"
        await ws.send(json.dumps({"req_id": "c", "op": "subscribe", "args": ["kline.5.NOPE"]}))
        assert (await _recv_json(ws))["ret_msg"] == "error:handler not found,topic:kline.5.NOPE"
        await ws.send(json.dumps({"req_id": "p1", "op": "ping"}))
        pong = await _recv_json(ws)
        assert pong["ret_msg"] == "pong" and pong["op"] == "ping" and pong["req_id"] == "p1"
        start = fake.open_start_ms
        await fake.step()
        frames = [parse_frame(await ws.recv()) for _ in range(fake.updates_per_bar + 1)]
        assert [len(f.closed) for f in frames] == [0] * fake.updates_per_bar + [1]
        assert frames[-1].closed[0].start_ms == start and fake.open_start_ms == start + 300_000
        assert fake.pings == 1 and fake.closes_sent == {("BTCUSDT", start): 1, ("ETHUSDT", start): 1}


async def _collect_closes(ws, fake, bars: int) -> list[int]:
    """Step ``bars`` bars and return the confirmed starts received, until a sentinel ping comes back."""
    await fake.step(bars)
    await ws.send(json.dumps({"req_id": "end", "op": "ping"}))
    starts = []
    while True:
        try:
            frame = parse_frame(await ws.recv())
        except FrameError:
            continue
        if isinstance(frame, KlineFrame):
            starts += [c.start_ms for c in frame.closed]
        elif getattr(frame, "req_id", None) == "end":
            return starts


async def _subscribed(fake):
    ws = await connect(fake.ws_url)
    await ws.send(json.dumps({"req_id": "s", "op": "subscribe", "args": ["kline.5.BTCUSDT"]}))
    assert (await _recv_json(ws))["success"]
    return ws


async def test_close_frame_is_the_close_push(fake):
    """close_frame gives exactly the close push a subscriber receives for that bar."""
    ws = await _subscribed(fake)
    start = fake.open_start_ms
    await fake.step()
    frames = [await ws.recv() for _ in range(fake.updates_per_bar + 1)]
    assert frames[-1] == fake.close_frame("BTCUSDT", start) and frames[0] != frames[-1]
    await ws.close()


async def test_close_faults(fake):
    """Duplicate closes repeat a start, merged arrays carry the next open, a lost close never arrives."""
    ws = await _subscribed(fake)
    s0 = fake.open_start_ms
    fake.faults.duplicate_close = True
    assert await _collect_closes(ws, fake, 2) == [s0, s0, s0, s0 + 300_000, s0 + 300_000]
    fake.faults.duplicate_close = False
    fake._pending_dup.clear()
    fake.faults.merge_close_open = True
    await fake.step()
    while not (frame := parse_frame(await ws.recv())).closed:
        pass
    assert frame.n_open == 1 and frame.closed[0].start_ms == s0 + 600_000
    fake.faults.merge_close_open = False
    fake.lose_next_close()
    s3 = fake.open_start_ms
    assert await _collect_closes(ws, fake, 2) == [s3 + 300_000]
    await ws.close()


async def test_garbage_frames_are_all_malformed(fake):
    """Every garbage frame the fake sends is rejected by the parser (or names an unsubscribed topic)."""
    ws = await _subscribed(fake)
    await fake.send_raw(GARBAGE_FRAMES)
    for _ in GARBAGE_FRAMES:
        raw = await ws.recv()
        try:
            frame = parse_frame(raw)
        except FrameError:
            continue
        assert isinstance(frame, KlineFrame) and frame.topic == "kline.5.ZZZUSDT"
    await ws.close()


async def test_drop_refuses_then_accepts(fake):
    """A drop cuts the connection, the next attempts get HTTP 503, then connections are accepted again."""
    ws = await _subscribed(fake)
    await fake.drop(refuse_next=2)
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    for _ in range(2):
        with pytest.raises(InvalidStatus, match="503"):
            await connect(fake.ws_url)
    ws = await _subscribed(fake)
    assert fake.connections_refused == 2
    await ws.close()


async def test_stall_answers_nothing(fake):
    """A stalled connection stays open but gets no pong and no data; a new connection works."""
    ws = await _subscribed(fake)
    fake.stall()
    await ws.send(json.dumps({"req_id": "p", "op": "ping"}))
    await fake.step()
    fresh = await _subscribed(fake)
    await fresh.send(json.dumps({"req_id": "p", "op": "ping"}))
    assert (await _recv_json(fresh))["ret_msg"] == "pong"
    assert fake.pings == 1 and fake.live_connections == 2
    await ws.close()
    await fresh.close()


def test_cli_serves_and_stops_on_sigterm(tmp_path):
    """`kdsignal fake-bybit` prints its URLs, plays bars, and exits 0 on SIGTERM."""
    for sym, rows in sample_rows(("BTCUSDT",), 40).items():
        (tmp_path / f"{sym}-5m.csv").write_text(
            "start_ms,open,high,low,close,volume\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "fake-bybit", "--data", str(tmp_path), "--bar-s",
                             "0.05", "--start-index", "10"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        info = json.loads(proc.stdout.readline())
        assert info["ws_url"].startswith("ws://127.0.0.1:") and info["symbols"] == ["BTCUSDT"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()


def test_faults_default_to_none():
    """A fresh fault plan injects nothing."""
    f = Faults()
    assert not (f.garbage_per_bar or f.duplicate_close or f.merge_close_open or f.lose_close_every
                or f.drop_every or f.stall_every or f.refused_symbols or f.rest_errors)


async def test_fake_plays_in_real_time():
    """play(bar_s) advances the clock bar by bar until the data runs out."""
    async with FakeBybit(sample_rows(("BTCUSDT",), 8), "5", start_index=5) as f:
        await f.play(0.004)
        assert not f.has_next_bar()
        await wait_until(lambda: f.open_start_ms == f.starts[-1] + 300_000, 1, "clock at the end")


class _CostlySends(FakeBybit):
    """A fake whose every push costs ``cost_s`` of blocking work, standing in for a round to many symbols."""

    cost_s = 0.005

    def _push(self, topic, data, ts):
        time.sleep(self.cost_s)  # the scenario: each push blocks the loop for its cost
        return super()._push(topic, data, ts)


def _bars_since(fake, start_ms: int) -> float:
    return (fake.open_start_ms - start_ms) / fake.interval_ms


async def _stop(player: asyncio.Task) -> None:
    player.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await player


async def test_play_delivers_its_nominal_bar_rate_when_sends_take_time():
    """Paced by deadline, sends taking half of each round's period do not slow the bars down.

    One symbol and one update per bar: two rounds of one push each per 20 ms bar, so a 10 ms period of
    which 5 ms is the push. A fixed sleep after each round (the old pacing) plays 1.5 s * 1 / 0.03 s = 50
    bars instead of 75; the tolerance leaves room for a busy machine, not for that drift.
    """
    bar_s, window_s = 0.02, 1.5
    async with _CostlySends(sample_rows(("BTCUSDT",), 400), "5", start_index=5, updates_per_bar=1) as f:
        player = asyncio.create_task(f.play(bar_s))
        await asyncio.sleep(0)  # the first round goes out now
        s0, t0 = f.open_start_ms, time.perf_counter()
        await asyncio.sleep(window_s)  # the scenario: the window the bar rate is observed over
        bars, elapsed = _bars_since(f, s0), time.perf_counter() - t0
        await _stop(player)
    nominal = elapsed / bar_s
    assert 0.85 * nominal <= bars <= nominal + 1, (bars, nominal, f.pacer.slips)


async def test_play_gives_up_missed_rounds_instead_of_bursting():
    """After the event loop was held for 15 bars' time, the fake starts its schedule afresh from then.

    It does not send the 30 rounds it missed back to back: in the 60 ms after the hold about 3 bars play.
    """
    bar_s = 0.02
    async with FakeBybit(sample_rows(("BTCUSDT",), 400), "5", start_index=5, updates_per_bar=1) as f:
        start = f.open_start_ms
        player = asyncio.create_task(f.play(bar_s))
        await wait_until(lambda: _bars_since(f, start) >= 3, 10, "the fake playing bars")
        time.sleep(0.3)  # the scenario: nothing runs in the loop meanwhile, 15 bars fall due
        s0 = f.open_start_ms
        await asyncio.sleep(0.06)  # the scenario: the window after the hold in which the bars are counted
        bars = _bars_since(f, s0)
        await _stop(player)
    assert f.pacer.slips >= 1
    assert 1 <= bars <= 6


def test_load_dir_reads_shared_data_layout(tmp_path):
    """A folder of SYMBOL.csv files (the ../shared/data layout) loads, and a wrong interval is refused."""
    from daemon.tools.fake_bybit import load_dir

    src = (ROOT / "data" / "BTCUSDT-5m.csv").read_text().splitlines()
    (tmp_path / "BTCUSDT.csv").write_text("\n".join(src[:50]) + "\n")
    rows = load_dir(tmp_path, "5")
    assert list(rows) == ["BTCUSDT"] and len(rows["BTCUSDT"]) == 49
    with pytest.raises(ValueError, match="300000 ms apart, interval 1 needs 60000"):
        load_dir(tmp_path, "1")


# --- a rehearsal on recorded bars shifted to now (``fake-bybit --now``) ---------------------------------------

ROWS = sample_rows(("BTCUSDT",), OPEN_INDEX + 20)


def test_busy_port_is_one_line_and_exit_69():
    """fake-bybit on a taken port says so in one line (no traceback) and exits 69 (EX_UNAVAILABLE)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "daemon", "fake-bybit", "--data", "data", "--port", str(port)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == EX_UNAVAILABLE == 69
    assert res.stderr.count("\n") == 1 and "address already in use" in res.stderr and "Traceback" not in res.stderr


def test_shift_to_now_opens_the_current_bar():
    """After the shift the bar at start_index contains now; spacing and prices are unchanged."""
    now_ms = 1_790_000_123_456
    shifted = shift_to_now(ROWS, "5", OPEN_INDEX, now_ms=now_ms)["BTCUSDT"]
    step = INTERVAL_MS["5"]
    assert shifted[OPEN_INDEX].start_ms <= now_ms < shifted[OPEN_INDEX].start_ms + step
    assert [r.start_ms - s.start_ms for r, s in zip(shifted, ROWS["BTCUSDT"], strict=True)] == \
        [shifted[0].start_ms - ROWS["BTCUSDT"][0].start_ms] * len(shifted)
    assert [r[1:] for r in shifted] == [r[1:] for r in ROWS["BTCUSDT"]]


async def healthz(rows, artifact) -> tuple[int, dict]:
    """Run the daemon with /healthz against a fake serving ``rows``; its answer after two closes."""
    async with FakeBybit(rows, "5", start_index=OPEN_INDEX) as fake, \
            InProcessDaemon(fake, artifact, ("BTCUSDT",), metrics={"enabled": True, "port": 0}) as d:
        await fake.step(2)
        await d.wait_for_start("BTCUSDT", fake.open_start_ms - INTERVAL_MS["5"])
        metrics = d.service.supervision.metrics
        await wait_until(lambda: metrics.port is not None, what="the metrics endpoint")
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{metrics.port}/healthz") as resp:
            return resp.status, await resp.json()


async def test_rehearsal_with_now_is_healthy(random_artifact):
    """Recorded bars shifted to now give a green /healthz; the same bars unshifted are stale (503)."""
    status, body = await healthz(shift_to_now(ROWS, "5", OPEN_INDEX), random_artifact)
    assert status == 200 and body["status"] == "ok", body
    status, body = await healthz(ROWS, random_artifact)
    assert status == 503 and any("no closed candle" in p for p in body["problems"])
