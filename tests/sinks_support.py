"""Real Redis and NATS servers on free loopback ports, a webhook receiver, and a daemon with sinks (not a test module).

The servers are the Debian packages' binaries, started by the tests in temporary directories and killed
(SIGKILL, as a crash would) and restarted on the same port when a test asks. Where a binary is missing the
test skips, naming the package; ``.ci/run`` installs both.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from aiohttp import web

from daemon.bench.sinks import ServerProcess, find_binary, free_port, nats_argv, redis_argv
from tests.daemon_support import InProcessDaemon, LineSink, daemon_config, wait_until

def binary(name: str, package: str) -> str:
    """The path of ``name``, or skip the test saying which Debian package provides it."""
    path = find_binary(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package}; .ci/run installs it when it can)")
    return path


def redis_server(tmp_path: Path) -> ServerProcess:
    """redis-server without persistence on a free port (not started)."""
    port = free_port()
    return ServerProcess(redis_argv(binary("redis-server", "redis-server"), port, tmp_path), port, tmp_path, "redis")


def nats_server(tmp_path: Path, jetstream: bool = True) -> ServerProcess:
    """nats-server (with JetStream storing under tmp_path) on a free port (not started)."""
    port = free_port()
    argv = nats_argv(binary("nats-server", "nats-server"), port, tmp_path, jetstream)
    return ServerProcess(argv, port, tmp_path, "nats")


class WebhookReceiver:
    """An aiohttp server on 127.0.0.1:0 that records each POST; ``statuses`` scripts the next answers."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict] = []
        self.statuses: list[int] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
        return web.Response(status=status, text="ok" if status == 200 else "no")

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


class SinkDaemon(InProcessDaemon):
    """:class:`InProcessDaemon` with ``[[sink]]`` tables; ``raw_lines`` are its stdout lines as bytes."""

    def __init__(self, fake, artifact, symbols=("BTCUSDT",), sinks=(), environ=None, **sections) -> None:
        from daemon.aio.service import Service
        from daemon.aio.sinks import SinkSet
        from daemon.core.model import Model
        from daemon.core.sinks_config import parse_sinks

        self.fake = fake
        self.sink = LineSink()
        cfg = daemon_config(fake, symbols, artifact, **sections)
        self.cfg = dataclasses.replace(cfg, sinks=parse_sinks(list(sinks)))
        self.service = Service(self.cfg, Model.load(artifact), out=self.sink,
                               sinks=SinkSet.from_config(self.cfg, environ=environ))

    @property
    def raw_lines(self) -> list[bytes]:
        """stdout lines without their newline, as written."""
        return self.sink.buffer.split(b"\n")[:-1]

    def sink_named(self, name: str):
        return next(s for s in self.service.sinks.sinks if s.name == name)


async def wait_for(predicate, what: str, timeout_s: float = 20.0) -> None:
    """``wait_until`` with a longer default: servers start and reconnect within it."""
    await wait_until(predicate, timeout_s=timeout_s, what=what)


def metric_value(text: str, name: str, **labels) -> float | None:
    """The value of one sample in Prometheus text (None when absent)."""
    want = ",".join(f"{k}=\"{v}\"" for k, v in sorted(labels.items()))  # the exposition sorts labels
    needle = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return None
