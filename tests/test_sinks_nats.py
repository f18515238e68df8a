"""The NATS sink against a real nats-server: core publish and JetStream acks, each stdout line once and in order,
and a crash of the server survived."""

from __future__ import annotations

import nats
import pytest

from tests.support import SINK_SYMBOLS, SinkDaemon, metric_value, nats_server, wait_for

SUBJECT = "kdsignal.signals"


@pytest.fixture
def server(tmp_path):
    """nats-server with JetStream (file storage in tmp_path) on a free loopback port."""
    s = nats_server(tmp_path)
    s.start()
    yield s
    s.stop()


def table(port: int, **extra) -> dict:
    return {"kind": "nats", "url": f"nats://127.0.0.1:{port}", "subject": SUBJECT, **extra}


async def add_stream(port: int) -> None:
    """Create the JetStream stream SIGNALS capturing the subject (file storage, survives a restart)."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        await nc.jetstream().add_stream(name="SIGNALS", subjects=[SUBJECT])
    finally:
        await nc.close()


async def stream_payloads(port: int) -> list[bytes]:
    """Every message stored in SIGNALS, by sequence."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream()
        info = await js.stream_info("SIGNALS")
        return [(await js.get_msg("SIGNALS", seq)).data for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


async def test_core_publish_every_line_once_in_order(server, fake, random_artifact):
    """A plain NATS subscriber receives each stdout line once, as the payload, in stdout order."""
    got: list[bytes] = []
    nc = await nats.connect(f"nats://127.0.0.1:{server.port}")

    async def on_msg(msg):
        got.append(msg.data)

    await nc.subscribe(SUBJECT, cb=on_msg)
    await nc.flush()
    try:
        async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[table(server.port)]) as d:
            sink = d.sink_named("nats")
            await fake.step(6)
            await wait_for(lambda: len(got) == 12 and sink.sent == 12, "12 messages received, 12 reported sent")
            assert got == d.raw_lines and sink.sent == 12 and sink.dropped == 0
            text = d.service.supervision.metrics.render().decode()
            assert metric_value(text, "kdsignal_sink_sent_total", sink="nats", kind="nats") == 12
    finally:
        await nc.close()


async def test_jetstream_acks_every_line(server, fake, random_artifact):
    """With ``jetstream = true`` every line is stored in the stream once, in order (each publish acked)."""
    await add_stream(server.port)
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[table(server.port, jetstream=True)]) as d:
        sink = d.sink_named("nats")
        await fake.step(6)
        await wait_for(lambda: len(d.raw_lines) == 12 and sink.sent == 12, "12 lines acked")
        assert await stream_payloads(server.port) == d.raw_lines


async def test_jetstream_without_a_stream_is_an_error_not_a_loss(server, fake, random_artifact):
    """Publishing to a subject no stream captures keeps the lines queued and the sink down, saying why."""
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=[table(server.port, jetstream=True)]) as d:
        sink = d.sink_named("nats")
        await fake.step(1)
        await wait_for(lambda: sink.errors >= 1 and not sink.up, "the sink reporting the missing stream")
        assert sink.queued == 2 and sink.sent == 0 and "NoStreamResponse" in sink.last_error
        await add_stream(server.port)
        await wait_for(lambda: sink.up and sink.sent == 2, "the queued lines stored once the stream exists")
        assert await stream_payloads(server.port) == d.raw_lines


async def test_server_killed_and_restarted(server, fake, random_artifact):
    """A crashed nats-server: stdout goes on, a full queue drops and counts, and after the restart the
    queued lines and every later one are stored once, in order."""
    await add_stream(server.port)
    sinks = [table(server.port, jetstream=True, queue_size=3, timeout_s=1.0)]
    async with SinkDaemon(fake, random_artifact, SINK_SYMBOLS, sinks=sinks) as d:
        sink = d.sink_named("nats")
        for n in (2, 4):
            await fake.step(1)
            await wait_for(lambda n=n: sink.sent == n, f"{n} lines acked")
        server.kill()
        await fake.step(5)
        await wait_for(lambda: len(d.raw_lines) == 14 and not sink.up, "stdout going on, the sink down")
        assert sink.dropped == 7 and sink.queued == 3
        server.start()  # same port and store directory: the stream and its first 4 messages survive
        await wait_for(lambda: sink.up and sink.queued == 0, "reconnect and the queued lines acked")
        for n in (9, 11, 13):
            await fake.step(1)
            await wait_for(lambda n=n: sink.sent == n, f"{n} lines acked after the restart")
        lines = d.raw_lines
        assert await stream_payloads(server.port) == lines[:4] + lines[4:7] + lines[14:]


async def test_user_and_password_file(tmp_path, fake, random_artifact):
    """A NATS server requiring a user and password is reached with the password read from ``password_file``."""
    s = nats_server(tmp_path, jetstream=False)
    s.argv += ["--user", "kdsignal", "--pass", "n4ts-pw"]
    s.start()
    (tmp_path / "nats-password").write_text("n4ts-pw\n")
    got: list[bytes] = []
    try:
        nc = await nats.connect(f"nats://127.0.0.1:{s.port}", user="kdsignal", password="n4ts-pw")

        async def on_msg(msg):
            got.append(msg.data)

        await nc.subscribe(SUBJECT, cb=on_msg)
        await nc.flush()
        sinks = [table(s.port, user="kdsignal", password_file=str(tmp_path / "nats-password"))]
        async with SinkDaemon(fake, random_artifact, ("BTCUSDT",), sinks=sinks) as d:
            await fake.step(2)
            await wait_for(lambda: len(got) == 2, "2 messages received")
            assert got == d.raw_lines and d.sink_named("nats").errors == 0
        await nc.close()
    finally:
        s.stop()
