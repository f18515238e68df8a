"""NATS sink: one message per signal line on ``subject``; with ``jetstream = true`` each one waits for its ack.

nats-py, with its own reconnecting switched off: the sink's loop reconnects (with ``[backoff]``). Core NATS
publishes are confirmed per batch with a ``flush`` (a PING/PONG after them: the server has read them all).
JetStream publishes carry ``Nats-Msg-Id`` (a hash of the line), so a batch sent again after a failure is
de-duplicated by the server within its duplicate window: exactly once even across reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib

import nats

from daemon.aio.sinks.base import Sink
from daemon.core.sinks_config import NatsSinkConfig

__all__ = ["NatsSink"]


class NatsSink(Sink):
    """Publish each line to a NATS subject, acknowledged by JetStream when configured."""

    kind = "nats"

    def __init__(self, cfg: NatsSinkConfig, *, password: str | None = None, **kw) -> None:
        super().__init__(cfg, **kw)
        self._password = password
        self._nc = None
        self._js = None

    async def connect(self) -> None:
        cfg = self.cfg

        async def _quiet(exc: Exception) -> None:
            # The send that fails reports it (counted, logged once); nats-py would log every one again.
            return None

        opts = {"user": cfg.user, "password": self._password} if cfg.user else {}
        self._nc = await nats.connect(cfg.url, name="kdsignal", allow_reconnect=False,
                                      connect_timeout=max(1, int(cfg.timeout_s)), error_cb=_quiet, **opts)
        self._js = self._nc.jetstream(timeout=cfg.timeout_s) if cfg.jetstream else None

    async def send(self, lines: list[bytes]) -> int:
        nc, subject = self._nc, self.cfg.subject
        if self._js is None:
            for line in lines:
                await nc.publish(subject, line.rstrip(b"\n"))
            await nc.flush(timeout=self.cfg.timeout_s)
            return len(lines)
        js = self._js
        acks = []
        for line in lines:
            payload = line.rstrip(b"\n")
            msg_id = hashlib.blake2b(payload, digest_size=16).hexdigest()
            acks.append(await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}))
        await asyncio.gather(*acks)  # raises the first failed ack (no stream for the subject, timeout, ...)
        return len(lines)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()
