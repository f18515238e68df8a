"""The webhook sink against a real aiohttp receiver: every line POSTed once in order, signed, retried, refused."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from tests.support import (
    SINK_SYMBOLS,
    SinkDaemon,
    WebhookReceiver,
    free_port,
    metric_value,
    wait_for,
)


@pytest.fixture
async def receiver():
    """A webhook receiver on a free loopback port."""
    async with WebhookReceiver() as r:
        yield r


async def test_every_line_posted_once_and_signed(receiver, fake, random_artifact, tmp_path, monkeypatch):
    """Each line is one POST in stdout order; its signature is the HMAC-SHA256 of the body under the secret,
    read from a credentials file in $CREDENTIALS_DIRECTORY (systemd's LoadCredential=)."""
    (tmp_path / "hook-key").write_text("k3y-from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    sinks = [{"kind": "webhook", "url": receiver.url, "secret_file": "hook-key"}]
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=sinks) as d:
        await fake.step(4)
        await wait_for(lambda: len(receiver.bodies) == 8, "8 POSTs")
        assert receiver.bodies == d.raw_lines
        for body, headers in zip(receiver.bodies, receiver.headers, strict=True):
            expected = "sha256=" + hmac.new(b"k3y-from-systemd", body, hashlib.sha256).hexdigest()
            assert headers["X-Kdsignal-Signature"] == expected
            assert headers["Content-Type"] == "application/json"


async def test_server_errors_are_retried_and_refusals_skipped(receiver, fake, random_artifact):
    """500 and 429 answers make the same line go again; a 400 skips that line, counted as rejected."""
    receiver.statuses[:] = [500, 429, 200, 400]
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[{"kind": "webhook", "url": receiver.url}]) as d:
        sink = d.sink_named("webhook")
        await fake.step(3)
        await wait_for(lambda: sink.sent + sink.rejected == 6, "6 lines done")
        lines = d.raw_lines
        # Line 1 after two retried failures, line 2 refused for good, lines 3-6 as they come.
        assert receiver.bodies == [lines[0], *lines[2:]]
        assert (sink.sent, sink.rejected, sink.errors, receiver.requests) == (5, 1, 2, 8)
        text = d.service.supervision.metrics.render().decode()
        assert metric_value(text, "kdsignal_sink_rejected_total", sink="webhook", kind="webhook") == 1


async def test_dead_receiver_costs_stdout_nothing(fake, random_artifact):
    """With nobody listening, every line still reaches stdout; the sink queues, then drops and counts."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    sinks = [{"kind": "webhook", "url": url, "queue_size": 2, "timeout_s": 1.0}]
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=sinks) as d:
        sink = d.sink_named("webhook")
        await fake.step(5)
        # The sink process reports a few times a second: wait for the report that has seen all 10 lines.
        await wait_for(lambda: len(d.raw_lines) == 10 and sink.errors >= 1 and sink.dropped == 8,
                       "10 lines on stdout, the sink failing, 8 dropped")
        assert sink.sent == 0 and sink.dropped == 8 and sink.queued == 2 and not sink.up
        d.service.supervision.metrics.set_feed_connected(True)
        ok, body = d.service.supervision.metrics.health()
        assert not ok and body["sinks"]["webhook"]["dropped"] == 8
        assert "ClientConnectorError" in body["sinks"]["webhook"]["last_error"]
