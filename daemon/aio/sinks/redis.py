"""Redis Streams sink: ``XADD stream MAXLEN ~ n * line <json>`` per signal line, a batch per round trip.

redis-py's asyncio client connects (URL, password, timeouts) and holds one connection for the sink; a batch
goes out as one write of the XADD commands, packed here (the command is the same for every line but the
line itself), and its replies are read back in order (parsed by hiredis when installed, as the lock
file has it). That costs the event loop about half of what redis-py's pipeline does for the same batch.
redis-py's own retries are off: the sink's loop reconnects (with ``[backoff]``), so a failure is counted and
shown once instead of hidden inside the client. An error reply (a key of another type, an ACL refusal)
fails the batch like a lost connection: it is retried after the reconnect, and the log says why.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from daemon.aio.sinks.base import Sink
from daemon.core.sinks_config import RedisSinkConfig

__all__ = ["RedisSink", "xadd_prefix"]


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def xadd_prefix(stream: str, maxlen: int) -> bytes:
    """RESP for ``XADD stream [MAXLEN ~ maxlen] * line``, to be followed by the line as one bulk string."""
    args = [b"XADD", stream.encode()] + ([b"MAXLEN", b"~", str(maxlen).encode()] if maxlen else []) + [b"*", b"line"]
    return b"*%d\r\n" % (len(args) + 1) + b"".join(_bulk(a) for a in args)


class RedisSink(Sink):
    """Append each line to a Redis stream (field ``line``), trimming it to about ``maxlen`` entries."""

    kind = "redis"

    def __init__(self, cfg: RedisSinkConfig, *, password: str | None = None, **kw) -> None:
        super().__init__(cfg, **kw)
        self._password = password
        self._client: Redis | None = None
        self._conn = None
        self._prefix = xadd_prefix(cfg.stream, cfg.maxlen)

    async def connect(self) -> None:
        cfg = self.cfg
        client = Redis.from_url(cfg.url, password=self._password, socket_timeout=cfg.timeout_s,
                                socket_connect_timeout=cfg.timeout_s, retry=Retry(NoBackoff(), 0),
                                client_name="kdsignal")
        self._client = client
        await client.ping()
        self._conn = await client.connection_pool.get_connection()

    async def send(self, lines: list[bytes]) -> int:
        conn, prefix = self._conn, self._prefix
        await conn.send_packed_command(b"".join([prefix + _bulk(line.rstrip(b"\n")) for line in lines]))
        read = conn.read_response
        for _ in lines:
            await read()  # raises on an error reply
        return len(lines)

    async def close(self) -> None:
        client, self._client, self._conn = self._client, None, None
        if client is not None:
            await client.aclose()  # disconnects the connection held by the sink too
