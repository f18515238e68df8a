"""Redis Streams sink: ``XADD stream MAXLEN ~ n * line <json>`` per signal line, pipelined per batch.

redis-py's asyncio client, with its own retries switched off: the sink's loop does the reconnecting (with
``[backoff]``), so a failure is counted and shown once instead of hidden inside the client. An error reply
(a key of another type, an ACL refusal) fails the batch like a lost connection: it is sent again after the
reconnect, and the log says why.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from daemon.aio.sinks.base import Sink
from daemon.core.sinks_config import RedisSinkConfig

__all__ = ["RedisSink"]


class RedisSink(Sink):
    """Append each line to a Redis stream (field ``line``), trimming it to about ``maxlen`` entries."""

    kind = "redis"

    def __init__(self, cfg: RedisSinkConfig, *, password: str | None = None, **kw) -> None:
        super().__init__(cfg, **kw)
        self._password = password
        self._client: Redis | None = None
        self._maxlen = cfg.maxlen or None

    async def connect(self) -> None:
        cfg = self.cfg
        client = Redis.from_url(cfg.url, password=self._password, socket_timeout=cfg.timeout_s,
                                socket_connect_timeout=cfg.timeout_s, retry=Retry(NoBackoff(), 0),
                                client_name="kdsignal")
        self._client = client
        await client.ping()

    async def send(self, lines: list[bytes]) -> int:
        pipe = self._client.pipeline(transaction=False)
        stream, maxlen = self.cfg.stream, self._maxlen
        for line in lines:
            pipe.xadd(stream, {"line": line.rstrip(b"\n")}, maxlen=maxlen, approximate=True)
        await pipe.execute()
        return len(lines)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
