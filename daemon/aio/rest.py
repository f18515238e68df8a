"""Closed klines from Bybit's REST ``GET /v5/market/kline`` (asyncio layer, aiohttp), for warm-up and gap backfill.

Pages come newest first; the client pages backwards (``end = earliest_start - 1``) until it has what it
asked for or a page adds nothing new. The still-open candle is dropped by comparing ``start + interval`` with
the server's own ``time`` field, so a skewed local clock cannot turn an open candle into a closed one.

HTTP 429, 403, 5xx, network errors, malformed bodies and ``retCode != 0`` (except parameter errors) are retried
with capped exponential backoff and jitter; a rate-limit answer waits at least until
``X-Bapi-Limit-Reset-Timestamp``. After ``max_attempts`` the call raises :class:`RestError`.

A body is read with a size limit (``max_body_bytes``, far above a full 1000-row page): one that declares or
delivers more is abandoned at the limit and retried like any malformed body, so a hostile or broken server
cannot make the client hold more than ``max_concurrent`` bodies of that size. Every row is checked by the
parser against the interval grid and the page's ``time`` (this client's clock when the page has none).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp
import structlog

from daemon.core.config import BackoffConfig
from daemon.core.parser import Candle, FrameError, KlinePage, interval_ms, parse_kline_page

__all__ = ["MAX_BODY_BYTES", "RestClient", "RestError", "read_body"]

# retCodes that will not get better by asking again.
_FATAL_RET_CODES = frozenset({10001, 10003, 10004, 10005})
# Bybit asks for at least ten minutes of silence after an IP ban (HTTP 403).
_IP_BAN_WAIT_S = 600.0
# A 1000-row kline page is about 100 kB; anything near this is not a kline page.
MAX_BODY_BYTES = 4 << 20
_CHUNK_BYTES = 64 << 10


class RestError(RuntimeError):
    """A REST request failed for good (not retryable, or out of attempts)."""


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read a response body of at most ``limit`` bytes; raise :class:`FrameError` as soon as it is larger."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise FrameError(f"REST body declares {declared} bytes, over the {limit} byte limit")
    body = bytearray()
    while chunk := await resp.content.read(_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            raise FrameError(f"REST body is over the {limit} byte limit")
    return bytes(body)


class RestClient:
    """Fetch closed candles for one category from ``base_url``."""

    def __init__(self, base_url: str, category: str, session: aiohttp.ClientSession, *,
                 backoff: BackoffConfig | None = None, max_attempts: int = 8, timeout_s: float = 10.0,
                 page_limit: int = 1000, max_concurrent: int = 8, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000), log=None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.url = base_url.rstrip("/") + "/v5/market/kline"
        self.category = category
        self.session = session
        self.backoff = backoff or BackoffConfig()
        self.max_attempts = max_attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.page_limit = page_limit
        self.max_body_bytes = max_body_bytes
        self._rng = rng
        self._sleep = sleep
        self._wall_ms = wall_ms
        self.log = log or structlog.get_logger("kdsignal.rest")
        # After a reconnect every symbol catches up at once: keep the burst well inside Bybit's IP limit.
        self._slots = asyncio.Semaphore(max_concurrent)
        self.requests = 0
        self.retries = 0

    async def closed_klines(self, symbol: str, interval: str, *, start_ms: int | None = None,
                            end_ms: int | None = None, count: int | None = None) -> list[Candle]:
        """Return closed candles oldest first.

        With ``start_ms``: every closed candle whose start lies in ``[start_ms, end_ms]`` (``end_ms`` None:
        up to now). Without it: the latest ``count`` closed candles ending at ``end_ms`` (or now).
        """
        if start_ms is None and count is None:
            raise ValueError("give start_ms or count")
        step_ms = interval_ms(interval)
        got: dict[int, Candle] = {}
        end = end_ms
        while True:
            want = self.page_limit if count is None else min(self.page_limit, count - len(got) + 1)
            params = {"category": self.category, "symbol": symbol, "interval": interval, "limit": str(want)}
            if start_ms is not None:
                params["start"] = str(start_ms)
            if end is not None:
                params["end"] = str(end)
            page = await self._page(params, symbol, interval)
            now_ms = page.time_ms if page.time_ms is not None else self._wall_ms()
            rows = page.candles
            new = 0
            for c in rows:
                if c.start_ms + step_ms > now_ms:  # the still-open candle
                    continue
                if (start_ms is not None and c.start_ms < start_ms) or (end_ms is not None and c.start_ms > end_ms):
                    continue
                if c.start_ms not in got:
                    got[c.start_ms] = c
                    new += 1
            if not rows or new == 0 or len(rows) < want:
                break
            earliest = rows[0].start_ms
            if (start_ms is not None and earliest <= start_ms) or (count is not None and len(got) >= count):
                break
            end = earliest - 1
        candles = [got[s] for s in sorted(got)]
        return candles if count is None else candles[-count:]

    async def _page(self, params: dict[str, str], symbol: str, interval: str) -> KlinePage:
        delays = self.backoff.delays(self._rng)
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            self.requests += 1
            wait_s = 0.0
            try:
                async with self._slots, self.session.get(self.url, params=params, timeout=self.timeout) as resp:
                    body = await read_body(resp, self.max_body_bytes)
                    status = resp.status
                    reset_ms = resp.headers.get("X-Bapi-Limit-Reset-Timestamp")
                page = None
                if status == 200:
                    page = parse_kline_page(body, symbol, interval, now_ms=self._wall_ms())
                    if page.ret_code == 0:
                        return page
                    if page.ret_code in _FATAL_RET_CODES:
                        raise RestError(f"{symbol} {interval}: retCode {page.ret_code} {page.ret_msg!r}")
                    last = f"retCode {page.ret_code} {page.ret_msg!r}"
                elif status == 429 or status >= 500:
                    last = f"HTTP {status}"
                elif status == 403:
                    last, wait_s = "HTTP 403 (IP rate limit)", _IP_BAN_WAIT_S
                else:
                    raise RestError(f"{symbol} {interval}: HTTP {status} from {self.url}")
                if reset_ms is not None:
                    wait_s = max(wait_s, self._reset_wait_s(reset_ms, body, page))
            except (aiohttp.ClientError, TimeoutError, FrameError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt == self.max_attempts:
                break
            delay_s = max(next(delays), wait_s)
            self.retries += 1
            self.log.warning("rest_retry", symbol=symbol, interval=interval, error=last, attempt=attempt,
                             retry_in_s=round(delay_s, 3))
            await self._sleep(delay_s)
        self.log.error("rest_failed", symbol=symbol, interval=interval, error=last, attempts=self.max_attempts)
        raise RestError(f"{symbol} {interval}: gave up after {self.max_attempts} attempts: {last}")

    def _reset_wait_s(self, reset_ms: str, body: bytes, page: KlinePage | None) -> float:
        # Measure against the server's clock when the body carries it; a skewed local clock must not
        # turn into a ten-minute sleep. Capped at the backoff maximum either way.
        try:
            reset = int(reset_ms)
        except ValueError:
            return 0.0
        now = page.time_ms if page is not None and page.time_ms is not None else None
        if now is None:
            try:
                now = parse_kline_page(body, "", "").time_ms
            except FrameError:
                now = None
        if now is None:
            now = self._wall_ms()
        return min(max(0.0, (reset - now) / 1000.0), self.backoff.max_s)
