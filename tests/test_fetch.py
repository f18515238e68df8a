"""kdsignal fetch against a Bybit-like REST stand-in on 127.0.0.1 serving real 1m candles from data/."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from daemon.training.fetch import HEADER, FetchError, fetch, last_start_ms

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "data" / "BTCUSDT-1m.csv"
STEP_MS = 60_000


def _rows() -> list[list[str]]:
    lines = SOURCE.read_text().split()[1:]
    return [line.split(",") for line in lines]


ROWS = _rows()


class Standin:
    """A minimal ``/v5/market/kline``: newest-first lists, start/end/limit, ``time``, scripted faults."""

    def __init__(self, rows: list[list[str]], open_index: int) -> None:
        self.rows = rows
        self.open_index = open_index  # rows[open_index] is the candle still open "now"
        self.faults: list[object] = []  # 429, 500, ("retcode", n)
        self.requests: list[dict] = []

    @property
    def now_ms(self) -> int:
        return int(self.rows[self.open_index][0]) + STEP_MS // 2

    async def kline(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.requests.append(q)
        if self.faults:
            fault = self.faults.pop(0)
            if isinstance(fault, tuple):
                return web.json_response({"retCode": fault[1], "retMsg": "Too many visits!", "result": {},
                                          "time": self.now_ms})
            headers = {"X-Bapi-Limit-Reset-Timestamp": str(self.now_ms + 20)} if fault == 429 else {}
            return web.json_response({"retCode": 10006, "retMsg": "fault"}, status=int(fault), headers=headers)
        limit = int(q.get("limit", 200))
        if not 1 <= limit <= 1000:
            return web.json_response({"retCode": 10001, "retMsg": f"params error: limit {limit}", "result": {}})
        start = int(q["start"]) if "start" in q else None
        end = int(q["end"]) if "end" in q else None
        out = []
        for r in reversed(self.rows[: self.open_index + 1]):  # newest first, the open candle included
            t = int(r[0])
            if end is not None and t > end:
                continue
            if start is not None and t < start:
                break
            out.append([r[0], r[1], r[2], r[3], r[4], r[5], "0"])
            if len(out) >= limit:
                break
        body = {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "symbol": q["symbol"], "list": out},
                "retExtInfo": {}, "time": self.now_ms}
        return web.json_response(body)


@pytest.fixture
async def standin():
    """The stand-in on 127.0.0.1:0 with the 1m sample, bar 1300 open (1300 closed bars before it)."""
    s = Standin(ROWS, open_index=1300)
    app = web.Application()
    app.router.add_get("/v5/market/kline", s.kline)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    s.url = f"http://127.0.0.1:{port}"
    yield s
    await runner.cleanup()


async def _no_sleep(_s: float) -> None:
    return None


def _read(path: Path) -> list[list[str]]:
    lines = path.read_text().split()
    assert lines[0] == HEADER
    return [line.split(",") for line in lines[1:]]


def _same(got: list[list[str]], want: list[list[str]]) -> None:
    assert [int(r[0]) for r in got] == [int(r[0]) for r in want]
    for g, w in zip(got, want, strict=True):
        assert [float(x) for x in g[1:]] == [float(x) for x in w[1:]]


async def test_fetch_pages_and_drops_the_open_candle(standin, tmp_path):
    """A full fetch writes every closed candle once, in order, in pages of 1000, and never the open one."""
    out = tmp_path / "BTCUSDT-1m.csv"
    res = await fetch(base_url=standin.url, symbol="BTCUSDT", interval="1", start_ms=int(ROWS[0][0]),
                      end_ms=int(ROWS[-1][0]), out=out, progress=False, sleep=_no_sleep)
    _same(_read(out), ROWS[:1300])
    assert res["written"] == 1300 and res["missing_bars"] == 0
    assert all(q["limit"] == "1000" for q in standin.requests)
    assert len(standin.requests) == 2


async def test_fetch_retries_rate_limits_server_errors_and_retcodes(standin, tmp_path):
    """429, 500 and a retCode error are retried; the file comes out complete."""
    standin.faults = [429, 500, ("retcode", 10006)]
    out = tmp_path / "x.csv"
    res = await fetch(base_url=standin.url, symbol="BTCUSDT", interval="1", start_ms=int(ROWS[100][0]),
                      end_ms=int(ROWS[399][0]), out=out, progress=False, sleep=_no_sleep)
    _same(_read(out), ROWS[100:400])
    assert res["retries"] == 3


async def test_fetch_resumes_by_appending(standin, tmp_path):
    """Rerunning after a partial download appends only the missing candles, with no duplicates."""
    out = tmp_path / "x.csv"
    start, end = int(ROWS[0][0]), int(ROWS[1250][0])
    await fetch(base_url=standin.url, symbol="BTCUSDT", interval="1", start_ms=start, end_ms=int(ROWS[499][0]),
                out=out, progress=False, sleep=_no_sleep, page_limit=300)
    assert last_start_ms(out) == int(ROWS[499][0])
    standin.requests.clear()
    res = await fetch(base_url=standin.url, symbol="BTCUSDT", interval="1", start_ms=start, end_ms=end, out=out,
                      progress=False, sleep=_no_sleep, page_limit=300)
    _same(_read(out), ROWS[:1251])
    assert res["resumed"] and res["written"] == 751
    assert int(standin.requests[0]["start"]) == int(ROWS[500][0])


async def test_fetch_refuses_to_append_to_a_foreign_file(standin, tmp_path):
    """An existing file with another header is left alone and named in the error."""
    out = tmp_path / "other.csv"
    out.write_text("time,price\n1,2\n")
    with pytest.raises(FetchError, match="header"):
        await fetch(base_url=standin.url, symbol="BTCUSDT", interval="1", start_ms=int(ROWS[0][0]),
                    end_ms=int(ROWS[10][0]), out=out, progress=False, sleep=_no_sleep)
    assert out.read_text() == "time,price\n1,2\n"


async def _fetch_cli(*args: str) -> tuple[int, str, str]:
    """``kdsignal fetch ARGS`` in a subprocess with tqdm made unimportable, as on a service install."""
    import asyncio
    import sys

    code = ("import sys; sys.modules['tqdm'] = None; from daemon.cli import main; "
            f"sys.exit(main(['fetch', *{list(args)!r}]))")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_several_symbols_without_tqdm(standin, tmp_path):
    """One call fetches several symbols into DIR/SYMBOL-{interval}m.csv, with tqdm not installed."""
    rc, out, err = await _fetch_cli("--symbol", "BTCUSDT", "ETHUSDT,SOLUSDT", "--interval", "1",
                                    "--start", ROWS[0][0], "--end", ROWS[99][0], "--out", str(tmp_path / "d"),
                                    "--base-url", standin.url)
    assert rc == 0, err
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        _same(_read(tmp_path / "d" / f"{symbol}-1m.csv"), ROWS[:100])
        assert f"{symbol}-1m.csv: 100 rows written" in out
    assert {q["symbol"] for q in standin.requests} == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}


async def test_cli_says_when_a_range_holds_no_data(standin, tmp_path):
    """A range with no closed candle is named with the symbol, leaves no file, and exits 1."""
    before = int(ROWS[0][0]) - 1000 * STEP_MS
    rc, _out, err = await _fetch_cli("--symbol", "BTCUSDT", "--interval", "1", "--start", str(before),
                                    "--end", str(before + 10 * STEP_MS), "--out", str(tmp_path / "x.csv"),
                                    "--base-url", standin.url)
    assert rc == 1 and "BTCUSDT: no closed candles (interval 1, linear)" in err and "nothing written" in err
    assert not (tmp_path / "x.csv").exists() and "Traceback" not in err


async def test_cli_refuses_one_file_for_several_symbols(standin, tmp_path):
    """Several symbols and a single .csv --out is refused before any request."""
    rc, _, err = await _fetch_cli("--symbol", "BTCUSDT,ETHUSDT", "--interval", "1", "--start", ROWS[0][0],
                                  "--out", str(tmp_path / "x.csv"), "--base-url", standin.url)
    assert rc == 2 and "{symbol}" in err and not standin.requests
