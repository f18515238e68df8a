"""HTTP webhook sink: each signal line POSTed as a JSON body, in order, optionally signed with HMAC-SHA256.

One request per line on a kept-alive aiohttp session. A 2xx answer delivers the line; 408, 429, 5xx and
network errors are retried (the sink goes down and the same line is sent again after a ``[backoff]``
delay); any other answer (a 4xx: the receiver refuses this line for good) is logged and counted in
``rejected``, and the next line goes. With a secret, the header (``X-Kdsignal-Signature`` by default) is
``sha256=`` + the hex HMAC-SHA256 of the body under the secret, as GitHub signs its webhooks.
"""

from __future__ import annotations

import hashlib
import hmac

import aiohttp

from daemon.aio.sinks.base import Sink
from daemon.core.sinks_config import WebhookSinkConfig, redacted

__all__ = ["WebhookSink", "signature"]

_RETRY_STATUSES = frozenset({408, 429})


class WebhookError(RuntimeError):
    """The receiver answered with a status worth retrying."""


def signature(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink(Sink):
    """POST each line to ``url``; sign it when a secret is configured."""

    kind = "webhook"
    one_at_a_time = True  # a line counts as sent only when its own request succeeded
    connect_proves_up = False  # opening a session sends nothing: only an answer shows the receiver is back

    def __init__(self, cfg: WebhookSinkConfig, *, password: str | None = None, **kw) -> None:
        super().__init__(cfg, **kw)
        self._secret = password.encode() if password else None
        self._session: aiohttp.ClientSession | None = None

    async def connect(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "kdsignal"})

    async def send(self, lines: list[bytes]) -> int:
        accepted = 0
        for line in lines:
            body = line.rstrip(b"\n")
            headers = {"Content-Type": "application/json"}
            if self._secret is not None:
                headers[self.cfg.signature_header] = signature(self._secret, body)
            async with self._session.post(self.cfg.url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                status = resp.status
            if 200 <= status < 300:
                accepted += 1
            elif status >= 500 or status in _RETRY_STATUSES:
                raise WebhookError(f"HTTP {status} from {redacted(self.cfg.url)}")
            else:
                self.rejected += 1
                self.log.warning("sink_line_rejected", status=status, rejected_total=self.rejected)
        return accepted

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
