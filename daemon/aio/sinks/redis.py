"""Redis Streams sink: ``XADD stream MAXLEN ~ n * line <json>`` per signal line, pipelined per batch.

redis-py's asyncio client, with its own retries switched off: the sink's loop does the reconnecting (with
``[backoff]``), so a failure is counted and shown once instead of hidden inside the client. redis-py
connects (URL, TLS, AUTH, database) and reads the replies; the batch's commands are packed here, once
per batch with the constant part of the command packed at connect time, because redis-py's pipeline packs
every argument of every command in Python and a burst of hundreds of lines would wait for that. An error
reply (a key of another type, an ACL refusal) fails the batch like a lost connection: it is sent again after
the reconnect, and the log says why.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from daemon.aio.sinks.base import Sink
from daemon.core.sinks_config import RedisSinkConfig

__all__ = ["RedisSink", "xadd_head"]


class RedisSink(Sink):
    """Append each line to a Redis stream (field ``line``), trimming it to about ``maxlen`` entries."""

    kind = "redis"

    def __init__(self, cfg: RedisSinkConfig, *, password: str | None = None, **kw) -> None:
        super().__init__(cfg, **kw)
        self._password = password
        self._client: Redis | None = None
        self._conn = None
        self._head = xadd_head(cfg.stream, cfg.maxlen)

    async def connect(self) -> None:
        cfg = self.cfg
        client = Redis.from_url(cfg.url, password=self._password, socket_timeout=cfg.timeout_s,
                                socket_connect_timeout=cfg.timeout_s, retry=Retry(NoBackoff(), 0),
                                client_name="kdsignal")
        self._client = client
        await client.ping()
        self._conn = await client.connection_pool.get_connection()

    async def send(self, lines: list[bytes]) -> int:
        conn, head = self._conn, self._head
        parts = []
        for line in lines:
            payload = line[:-1] if line.endswith(b"\n") else line
            parts += (head, b"$%d\r\n" % len(payload), payload, b"\r\n")
        await conn.send_packed_command(b"".join(parts), check_health=False)
        for _ in lines:  # an error reply raises (redis-py): the batch fails and is sent again after a reconnect
            await conn.read_response(disable_decoding=True)
        return len(lines)

    async def close(self) -> None:
        client, self._client, self._conn = self._client, None, None
        if client is not None:
            await client.aclose()


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def xadd_head(stream: str, maxlen: int) -> bytes:
    """RESP for ``XADD stream [MAXLEN ~ maxlen] * line`` without the value: each line's bulk string follows."""
    args = [b"XADD", stream.encode()]
    if maxlen:
        args += [b"MAXLEN", b"~", str(maxlen).encode()]
    args += [b"*", b"line"]
    return b"*%d\r\n" % (len(args) + 1) + b"".join(_bulk(a) for a in args)
