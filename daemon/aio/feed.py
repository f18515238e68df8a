"""The Bybit v5 kline WebSocket client (asyncio layer; the only module of the daemon that imports ``websockets``).

``Feed.run()`` connects forever: on each connection it subscribes every topic in chunks with a ``req_id`` and
checks each ack ("already subscribed" counts as success; a refused topic is reported and the others are
re-requested without it), sends a JSON ping every ``ping_interval_s`` and declares the connection dead when
no pong arrives within ``pong_timeout_s`` (a half-open socket), and reconnects with capped exponential
backoff plus jitter. The keepalive task lives and dies with its connection.

Every received frame is stamped with ``perf_counter_ns()`` on arrival and parsed synchronously; kline frames
carrying confirmed candles go to the ``on_kline(frame, recv_ns)`` callback, malformed frames are counted,
logged and skipped.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from daemon.core.config import BackoffConfig
from daemon.core.parser import Ack, FrameError, KlineFrame, Pong, parse_frame, topic_table

__all__ = ["CallbackError", "Feed", "FeedStats", "default_retryable"]


def default_retryable(exc: BaseException) -> bool:
    """Decide whether a connection error is worth retrying: network trouble yes, bad URLs and bugs no."""
    if isinstance(exc, InvalidURI):
        return False
    return isinstance(exc, (OSError, ConnectionClosed, InvalidHandshake, TimeoutError, EOFError))


@dataclass
class FeedStats:
    """Counters a health endpoint or a test can read."""

    frames: int = 0
    malformed: int = 0
    connects: int = 0
    disconnects: int = 0
    pings_sent: int = 0
    pongs: int = 0
    connected: bool = False
    subscribed: bool = False
    refused_topics: set[str] = field(default_factory=set)


class _Dead(Exception):
    """The connection was declared dead by the client (missed pong, unacked subscription)."""


class CallbackError(RuntimeError):
    """The ``on_kline`` callback failed: a bug or a broken output, never a reason to reconnect."""


class Feed:
    """Keep ``topics`` subscribed on ``url`` and hand confirmed candles to ``on_kline``."""

    def __init__(self, url: str, topics: Sequence[str], on_kline: Callable[[KlineFrame, int], None], *,
                 ping_interval_s: float = 20.0, pong_timeout_s: float = 10.0, ack_timeout_s: float = 10.0,
                 open_timeout_s: float = 10.0, subscribe_chunk: int = 10,
                 backoff: BackoffConfig | None = None, rng: random.Random | None = None,
                 is_retryable: Callable[[BaseException], bool] = default_retryable,
                 on_subscribed: Callable[[], None] | None = None, log=None) -> None:
        self.url = url
        self.topics = tuple(topics)
        self._topic_set = frozenset(self.topics)
        self.on_kline = on_kline
        self.on_subscribed = on_subscribed
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = pong_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.open_timeout_s = open_timeout_s
        self.subscribe_chunk = subscribe_chunk
        self.backoff = backoff or BackoffConfig()
        self._rng = rng
        self.is_retryable = is_retryable
        self.stats = FeedStats()
        self.log = log or structlog.get_logger("kdsignal.feed")
        # The parser's table of the subscribed topics, fixed for the feed's life: other topics are refused.
        self._topic_cache = topic_table(self.topics)
        self._req_ids = 0
        # Per-connection state, reset in _session.
        self._pending: dict[str, tuple[str, ...]] = {}
        self._acks_changed = asyncio.Event()
        self._pong = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._dead_reason: str | None = None

    # ------------------------------------------------------------------ connection loop
    async def run(self) -> None:
        """Connect, subscribe and receive forever; only a non-retryable error (or cancellation) ends it."""
        delays = self.backoff.delays(self._rng)
        while True:
            reason = "closed"
            try:
                async with connect(self.url, ping_interval=None, open_timeout=self.open_timeout_s,
                                   close_timeout=1.0, compression=None, max_queue=1024) as ws:
                    self.stats.connects += 1
                    self.log.info("feed_connected", url=self.url, connects=self.stats.connects)
                    reason = await self._session(ws)
            except _Dead as exc:
                reason = str(exc)
            except Exception as exc:
                if not self.is_retryable(exc):
                    self.log.error("feed_failed", url=self.url, error=repr(exc))
                    raise
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = None
                self.stats.connected = False
            if self.stats.subscribed:  # the last connection worked: start the backoff afresh
                delays = self.backoff.delays(self._rng)
            self.stats.subscribed = False
            self.stats.disconnects += 1
            delay_s = next(delays)
            self.log.warning("feed_disconnected", url=self.url, reason=reason, retry_in_s=round(delay_s, 3),
                             disconnects=self.stats.disconnects)
            await asyncio.sleep(delay_s)

    async def _session(self, ws: ClientConnection) -> str:
        self._ws = ws
        self.stats.connected = True
        self._pending = {}
        self._dead_reason = None
        tasks = [asyncio.create_task(self._keepalive(ws), name="feed-keepalive"),
                 asyncio.create_task(self._subscribe_all(ws), name="feed-subscribe")]
        on_message = self._on_message
        try:
            async for message in ws:
                ack = on_message(message, perf_counter_ns())
                if ack is not None:  # acks are rare; only they need to await (a re-subscribe)
                    await self._on_ack(ws, ack)
            return "server closed the connection"
        except ConnectionClosed:
            if self._dead_reason is not None:
                raise _Dead(self._dead_reason) from None
            raise
        finally:
            # The helpers die with the connection. Collect their outcomes without raising: an exception here
            # would replace a CancelledError on its way out and leave the feed running after shutdown.
            for task in tasks:
                task.cancel()
            for task, outcome in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
                if isinstance(outcome, Exception) and not isinstance(outcome, ConnectionClosed):
                    self.log.error("feed_task_failed", task=task.get_name(), error=repr(outcome))

    def _kill(self, ws: ClientConnection, reason: str) -> None:
        # Abort instead of a close handshake: a half-open peer would never answer it.
        self._dead_reason = reason
        self.log.warning("feed_dead", url=self.url, reason=reason)
        ws.transport.abort()

    # ------------------------------------------------------------------ per frame (hot path)
    def _on_message(self, message: str | bytes, recv_ns: int) -> Ack | None:
        stats = self.stats
        stats.frames += 1
        try:
            frame = parse_frame(message, self._topic_cache)
        except FrameError as exc:
            self._malformed(str(exc))
            return None
        if type(frame) is KlineFrame:
            if frame.topic not in self._topic_set:
                self._malformed(f"unsubscribed topic {frame.topic}")
                return None
            if frame.closed:
                try:
                    self.on_kline(frame, recv_ns)
                except Exception as exc:  # e.g. BrokenPipeError is an OSError, which would look retryable
                    raise CallbackError(f"on_kline failed: {exc!r}") from exc
            return None
        if type(frame) is Pong:
            stats.pongs += 1
            self._pong.set()
            return None
        return frame

    def _malformed(self, reason: str) -> None:
        n = self.stats.malformed = self.stats.malformed + 1
        if n <= 20 or n % 1000 == 0:  # a garbage storm must not flood the log
            self.log.warning("frame_malformed", url=self.url, reason=reason[:200], malformed_total=n)

    # ------------------------------------------------------------------ keepalive
    async def _keepalive(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            self._req_ids += 1
            self._pong.clear()
            await ws.send(json.dumps({"req_id": f"ping-{self._req_ids}", "op": "ping"}))
            self.stats.pings_sent += 1
            try:
                await asyncio.wait_for(self._pong.wait(), self.pong_timeout_s)
            except TimeoutError:
                self._kill(ws, f"no pong within {self.pong_timeout_s} s")
                return

    # ------------------------------------------------------------------ subscriptions
    async def _send_subscribe(self, ws: ClientConnection, topics: Iterable[str]) -> None:
        topics = tuple(topics)
        self._req_ids += 1
        req_id = f"sub-{self._req_ids}"
        self._pending[req_id] = topics
        await ws.send(json.dumps({"req_id": req_id, "op": "subscribe", "args": list(topics)}))

    async def _subscribe_all(self, ws: ClientConnection) -> None:
        topics = self.topics
        for i in range(0, len(topics), self.subscribe_chunk):
            await self._send_subscribe(ws, topics[i:i + self.subscribe_chunk])
        while self._pending:
            self._acks_changed.clear()
            try:
                await asyncio.wait_for(self._acks_changed.wait(), self.ack_timeout_s)
            except TimeoutError:
                self._kill(ws, f"subscription not acknowledged within {self.ack_timeout_s} s")
                return
        refused = self.stats.refused_topics
        self.stats.subscribed = True
        self.log.info("feed_subscribed", url=self.url, topics=len(self.topics) - len(refused),
                      refused=sorted(refused))
        if self.on_subscribed is not None:
            self.on_subscribed()

    async def _on_ack(self, ws: ClientConnection, ack: Ack) -> None:
        topics = self._pending.pop(ack.req_id, None) if ack.req_id is not None else None
        if topics is None:
            self.log.warning("ack_unexpected", url=self.url, req_id=ack.req_id, op=ack.op, ret_msg=ack.ret_msg)
            return
        if ack.success:
            self.stats.refused_topics.difference_update(topics)
        else:
            # An ack names at most one topic: settle that one, and ask again for the rest of the request
            # (a repeat of a topic that did get subscribed answers "already subscribed", i.e. success).
            named = ack.refused_topic
            if named not in topics:
                named = topics[0] if len(topics) == 1 else None
            if named is None:  # a whole request refused without naming a topic: ask for each alone
                for topic in topics:
                    await self._send_subscribe(ws, (topic,))
            else:
                if ack.already_subscribed:
                    self.stats.refused_topics.discard(named)
                else:
                    self.stats.refused_topics.add(named)
                    self.log.error("topic_refused", url=self.url, topic=named, ret_msg=ack.ret_msg)
                rest = [t for t in topics if t != named]
                if rest:
                    await self._send_subscribe(ws, rest)
        self._acks_changed.set()
