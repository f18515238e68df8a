"""Helpers shared by the tests (not a test module, and the only module tests import helpers from besides
``tests.naive``): real sample data, seeded random students and artifacts, polling with a deadline, an
in-process daemon against the fake Bybit, a ``kdsignal run`` child process, and a stand-in systemd socket."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numba
import numpy as np
import pytest
from aiohttp import web
from hypothesis import strategies as st

from daemon.bench.sinks import ServerProcess, find_binary, free_port, nats_argv, redis_argv
from daemon.core.artifact import save_artifact
from daemon.tools.replay import CsvRow, read_kline_csv
from daemon.training.config import TrainConfig
from daemon.training.data import load_dataset
from daemon.training.dataset import build
from kernels.features import features_batch
from kernels.layout import FEATURE_NAMES, WINDOW, architecture, pack_mlp, pack_student, probs_offset, student_state_size

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
BAR_MS = 300_000
# Where a fake opens its first live bar: the REST history before it (warmup_bars + 5 asked for, WINDOW needed)
# is enough to warm the model, so the first close after start is signalled.
OPEN_INDEX = WINDOW + 19

# For tests that compare compiled code with compiled code or compile ahead of time: under NUMBA_DISABLE_JIT
# (the coverage run) kernels execute as Python, whose libm can differ from LLVM's in the last bit.
needs_jit = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="NUMBA_DISABLE_JIT: nothing is compiled")


# --- data, students, artifacts ---------------------------------------------------------------------------------

def load_csv(path) -> np.ndarray:
    """Rows of start_ms, open, high, low, close, volume as float64 (n, 6)."""
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)


def sample_rows(symbols=("BTCUSDT",), n: int | None = None, interval: str = "5") -> dict[str, list[CsvRow]]:
    """The first ``n`` real candles of each symbol from data/."""
    return {s: read_kline_csv(DATA / f"{s}-{interval}m.csv")[:n] for s in symbols}


def with_gaps(bars: np.ndarray, seed: int) -> np.ndarray:
    """Copy of bars with some zero-volume bars and some missing (NaN / zero / negative price) bars."""
    rng = np.random.default_rng(seed)
    out = bars.copy()
    n = len(out)
    out[rng.choice(n, n // 20, replace=False), 4] = 0.0
    out[rng.choice(n, n // 50, replace=False), 3] = np.nan
    out[rng.choice(n, n // 100, replace=False), 1] = 0.0
    out[rng.choice(n, n // 100, replace=False), 2] = -1.0
    out[rng.choice(n, n // 100, replace=False), 4] = np.inf
    return out


# Hypothesis bars: (open price, close/open move, volume, fault) per bar; ``to_bars`` makes them (n, 5) OHLCV.
prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False)
bar_lists = st.lists(
    st.tuples(
        prices,
        st.floats(min_value=0.9, max_value=1.1),
        st.floats(min_value=0.0, max_value=1e5),
        st.sampled_from([None, None, None, None, "nan", "zero", "inf"]),
    ),
    min_size=1,
    max_size=2 * 101,
)


def to_bars(spec) -> np.ndarray:
    """OHLCV rows (n, 5) from a ``bar_lists`` example, with its faults applied."""
    rows = []
    for price, move, vol, fault in spec:
        c = price * move
        row = [price, max(price, c) * 1.001, min(price, c) * 0.999, c, vol]
        if fault == "nan":
            row[3] = np.nan
        elif fault == "zero":
            row[0] = 0.0
        elif fault == "inf":
            row[4] = np.inf
        rows.append(row)
    return np.array(rows)


# A training config small enough for tests that fit teachers and students on data/ (the lockbox tests).
TINY_TRAIN = TrainConfig(
    n_folds=2, teacher_hidden=((16, 8),), teacher_epochs=2, lgbm_rounds=20, lgbm_min_leaf=50, student_epochs=3,
    seeds=(0, 1), progress=False, num_threads=1, sweep_temperatures=(1.0, 2.0), sweep_alphas=(0.25, 0.5),
    control_lrs=(0.005, 0.01), control_weight_decays=(0.0,), lockbox_days=3, ablations=(), bootstrap_samples=200,
    student_alt_hidden=(),
)


def pooled_samples(cfg: TrainConfig = TINY_TRAIN):
    """The five 5m samples in data/ pooled into one training dataset with ``cfg``."""
    return build(load_dataset([DATA], interval="5"), cfg)


# Two MLP members and LightGBM: every member kind the Teacher class holds, small enough to fit in a second.
TINY_TEACHER = TINY_TRAIN.replace(teacher_hidden=((16, 8), (8,)))


def tiny_teacher(cfg: TrainConfig = TINY_TEACHER, seed: int = 0):
    """(teacher, its input names, 2,000 scoring rows) of a teacher fitted on the samples' first valid rows."""
    from daemon.training.teacher import fit_teacher

    P = pooled_samples(cfg)
    rows = np.flatnonzero(P.valid)
    fit, val, test = rows[:6000], rows[6000:8000], rows[8000:10000]
    t = fit_teacher(P.x_teacher[fit], P.target[fit], P.x_teacher[val], P.target[val], P.y[val], P.to_class, cfg, seed)
    return t, list(P.teacher_names), P.x_teacher[test]


def save_tiny_teacher(fitted, folder, **kw):
    """Write ``tiny_teacher``'s result to ``folder`` (checked to predict identically on its rows)."""
    from daemon.training.teacher_store import save_teacher

    t, names, x = fitted
    return save_teacher(t, folder, input_names=names, model_id="0123456789abcdef", artifact="default.npz",
                        data={"fit": {"lo_ms": 0, "hi_ms": 1, "rows": 2}}, check_rows=x, **kw)


STUDENT_SIZES = (len(FEATURE_NAMES), 16, 8, 3)


def random_student(seed: int = 0, sizes=STUDENT_SIZES, activations=("relu", "relu", "linear")):
    """Seeded random student weights with output scaled so probabilities are not saturated."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 1 / np.sqrt(sizes[k]), size=(sizes[k + 1], sizes[k])) for k in range(len(sizes) - 1)]
    biases = [rng.normal(0, 0.1, size=sizes[k + 1]) for k in range(len(sizes) - 1)]
    return weights, biases, list(activations)


def packed_student(seed, sizes, acts, bars):
    """(model vector, weights, biases, activations, mean, std) with the feature statistics of ``bars``."""
    w, b, a = random_student(seed, sizes, acts)
    feats = features_batch(*bars.T)
    mean, std = np.nanmean(feats, 0), np.nanstd(feats, 0)
    return pack_student(pack_mlp(w, b, a), mean, std, 6.0), w, b, a, mean, std


def run_both(step, model, bars):
    """Drive ``step`` and the generic kernel side by side, asserting equal states; return the probabilities."""
    from kernels.student import student_step

    fast = np.zeros(student_state_size(model))
    slow = np.zeros_like(fast)
    at = probs_offset(model)
    probs = np.full((len(bars), int(architecture(model)[1][-1])), np.nan)
    for t, (o, h, l, c, v) in enumerate(bars):
        status = step(fast, model, o, h, l, c, v)
        assert status == student_step(slow, model, o, h, l, c, v)
        np.testing.assert_array_equal(fast, slow)
        if status >= 0:
            probs[t] = fast[at : at + probs.shape[1]]
    return probs


def write_random_artifact(path, *, seed: int = 0, interval: str = "5", symbols=("BTCUSDT",), architecture=None,
                          **overrides) -> str:
    """Write a valid artifact with random weights and real normalisation statistics; return its id.

    ``architecture``: (sizes, activations) for ``random_student``; its default when None.
    """
    bars = load_csv(DATA / "BTCUSDT-5m.csv")
    feats = features_batch(*(bars[:, i] for i in range(1, 6)))
    weights, biases, acts = random_student(seed, *(architecture or ()))
    manifest = {
        "normalisation": {"clip": 6.0},
        "distillation": {"temperature": 1.0, "alpha": 1.0},
        "labels": {"note": "random weights for tests"},
        "data": {"symbols": list(symbols), "interval": interval, "start_ms": int(bars[0, 0]),
                 "end_ms": int(bars[-1, 0])},
        "metrics": {},
    }
    manifest.update(overrides)
    return save_artifact(
        path,
        weights=weights,
        biases=biases,
        activations=acts,
        feature_mean=np.nanmean(feats, axis=0),
        feature_std=np.nanstd(feats, axis=0),
        manifest=manifest,
    )


def write_router_artifact(path, *, seed: int = 0, interval: str = "5") -> tuple[str, list[tuple], list[float]]:
    """Write a valid router artifact: six seeded random students, each with the feature statistics of another
    slice of real BTCUSDT 5m bars, edges at the rvol_100 terciles. Returns (id, per-regime (weights, biases,
    activations, mean, std, clip) for ``tests.naive.router_reference``, edges)."""
    from daemon.core.artifact import save_router_artifact

    bars = load_csv(DATA / "BTCUSDT-5m.csv")
    feats = features_batch(*(bars[:, i] for i in range(1, 6)))
    edges = np.nanquantile(feats[:, FEATURE_NAMES.index("rvol_100")], [1 / 3, 2 / 3]).tolist()
    students, ref = [], []
    for g, part in enumerate(np.array_split(feats[WINDOW:], 6)):
        w, b, acts = random_student(seed + g)
        mean, std = part.mean(axis=0), part.std(axis=0)
        students.append((w, b, mean, std))
        ref.append((w, b, acts, mean, std, 6.0))
    manifest = {
        "normalisation": {"clip": 6.0},
        "distillation": {"temperature": 1.0, "alpha": 1.0},
        "labels": {"note": "random weights for tests"},
        "data": {"symbols": ["BTCUSDT"], "interval": interval, "start_ms": int(bars[0, 0]), "end_ms": int(bars[-1, 0])},
        "metrics": {},
    }
    model_id = save_router_artifact(path, students=students, activations=ref[0][2], vol_edges=edges, manifest=manifest)
    return model_id, ref, edges


# --- waiting ---------------------------------------------------------------------------------------------------

async def wait_until(predicate, timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


# --- the daemon in this process --------------------------------------------------------------------------------

class LineSink:
    """A binary stream standing in for stdout: collects whole lines and parses them as JSON."""

    def __init__(self) -> None:
        self.buffer = b""

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.buffer.decode().splitlines()]


def daemon_config(fake, symbols=("BTCUSDT",), artifact="", **sections):
    """A validated config pointing at ``fake`` with short heartbeats and fast backoff."""
    from daemon.core.config import parse_config

    raw = {
        "feed": {"ws_url": fake.ws_url, "rest_url": fake.rest_url, "symbols": list(symbols), "interval": "5",
                 "ping_interval_s": 0.1, "pong_timeout_s": 1.0, "ack_timeout_s": 2.0, "open_timeout_s": 2.0},
        "backoff": {"initial_s": 0.01, "max_s": 0.05},
        "rest": {"max_attempts": 4, "timeout_s": 5},
        "model": {"artifact": str(artifact) or "unused.npz"},
        "log": {"latency_summary_s": 0.2},
    }
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return parse_config(raw, source="<test>")


class InProcessDaemon:
    """Run a Service in this event loop against a fake; ``lines`` are its stdout lines as dicts."""

    def __init__(self, fake, artifact, symbols=("BTCUSDT",), **sections) -> None:
        from daemon.aio.service import Service
        from daemon.core.model import Model

        self.fake = fake
        self.sink = LineSink()
        self.cfg = daemon_config(fake, symbols, artifact, **sections)
        self.service = Service(self.cfg, Model.load(artifact), out=self.sink)

    @property
    def lines(self) -> list[dict]:
        return self.sink.lines

    async def __aenter__(self):
        self.task = asyncio.create_task(self.service.run())
        await self.ready()
        return self

    async def ready(self) -> None:
        """Wait until every served symbol is subscribed and warmed up to the fake's open bar."""
        from daemon.core.parser import kline_topic

        served = [s for s in self.cfg.feed.symbols if s in self.fake.rows and s not in self.fake.faults.refused_symbols]
        # The daemon's own view too: the fake counts a topic subscribed when it sends the ack, before the
        # daemon has read it.
        await wait_until(lambda: all(self.fake.subscribed(kline_topic("5", s)) for s in served)
                         and self.service.feed.stats.subscribed
                         and all(self.service.pipelines[s].next_start_ms == self.fake.open_start_ms
                                 and self.service.pipelines[s].fetch is None for s in served),
                         what="subscription and warm-up")

    async def __aexit__(self, *exc) -> None:
        self.service.stop()
        await asyncio.wait_for(self.task, 10)

    def starts(self, symbol: str) -> list[int]:
        return [x["start"] for x in self.lines if x["symbol"] == symbol]

    async def wait_for_start(self, symbol: str, start_ms: int) -> None:
        """Wait until a signal for (symbol, start_ms) has been written."""
        await wait_until(lambda: start_ms in self.starts(symbol), what=f"signal {symbol} {start_ms}")


def replay_lines(artifact, symbol: str, rows: list[CsvRow]) -> dict[int, dict]:
    """Signal lines of `kdsignal replay` over ``rows`` of ``symbol``, by start."""
    from daemon.aio.output import SignalWriter
    from daemon.core.model import Model
    from daemon.tools.replay import replay

    sink = LineSink()
    replay(rows, symbol, "5", Model.load(artifact), SignalWriter(sink))
    return {x["start"]: x for x in sink.lines}


async def check_exactly_once(daemon: InProcessDaemon, artifact, first_ms: int, last_ms: int, symbols=None) -> dict:
    """Wait for ``last_ms``; assert each bar first..last is signalled once, equal to replay over the fake's bars;
    return the backfilled starts by symbol. ``symbols``: every symbol the fake serves when None."""
    backfilled = {}
    for symbol in symbols or tuple(daemon.fake.rows):
        await daemon.wait_for_start(symbol, last_ms)
        lines = [x for x in daemon.lines if x["symbol"] == symbol]
        assert [x["start"] for x in lines] == list(range(first_ms, last_ms + 1, BAR_MS))
        reference = replay_lines(artifact, symbol, list(daemon.fake.rows[symbol].values()))
        for x in lines:
            ref = reference[x["start"]]
            assert (x["probs"], x["signal"], x["model"], x["interval"]) == (
                ref["probs"], ref["signal"], ref["model"], ref["interval"])
        backfilled[symbol] = [x["start"] for x in lines if x["backfill"]]
    return backfilled


# --- the daemon as a child process -----------------------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child ``kdsignal``: this one (read now, so it carries the session's kernel directory)
    with the checkout on ``PYTHONPATH``, plus ``extra``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def kdsignal(*args, env=None, timeout=300):
    """Run ``python -m daemon ARGS`` from the checkout; return the completed process."""
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or dict(os.environ), timeout=timeout, check=False)


def run_daemon(config) -> subprocess.CompletedProcess:
    """Run ``kdsignal run --config CONFIG`` to its end (for start-up refusals); return the completed process."""
    return subprocess.run([sys.executable, "-m", "daemon", "run", "--config", str(config)], capture_output=True,
                          text=True, cwd=ROOT, env=child_env(), timeout=60, check=False)


def write_config(path, fake=None, artifact="a.npz", log_file="", interval="5", extra=""):
    """Write a TOML config for a daemon pointed at ``fake`` (or at closed local ports)."""
    ws = fake.ws_url if fake else "ws://127.0.0.1:9/v5/public/linear"
    rest = fake.rest_url if fake else "http://127.0.0.1:9"
    path.write_text(textwrap.dedent(f"""
        [feed]
        ws_url = "{ws}"
        rest_url = "{rest}"
        symbols = ["BTCUSDT"]
        interval = "{interval}"
        ping_interval_s = 0.2
        pong_timeout_s = 1
        [backoff]
        initial_s = 0.05
        max_s = 0.2
        [rest]
        max_attempts = 2
        [model]
        artifact = "{artifact}"
        [log]
        file = "{log_file}"
        latency_summary_s = 0.5
        [train]
        anything = "is left to the training code"
        """) + extra)
    return path


class Proc:
    """A `kdsignal run` subprocess with its stdout read line by line."""

    async def start(self, config):
        self.p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(config), cwd=ROOT, env=child_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return self

    async def line(self) -> dict:
        raw = await asyncio.wait_for(self.p.stdout.readline(), 20)
        assert raw.endswith(b"\n"), raw
        return json.loads(raw)

    async def stop(self, sig=signal.SIGTERM) -> tuple[int, bytes]:
        self.p.send_signal(sig)
        rest = await asyncio.wait_for(self.p.stdout.read(), 20)
        return await asyncio.wait_for(self.p.wait(), 20), rest


def log_events(path) -> list[dict]:
    """Every line of a JSON log file, parsed (a split line would fail here)."""
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def wait_settled(fake, log) -> int:
    """Wait until a daemon process logging to ``log`` has read its subscription ack and has no fetch out; return
    the start of the one bar this plays to find out.

    ``fake.subscribed`` turns true when the fake sends the ack; the daemon asks REST for a catch-up only once it
    has read it (``feed_subscribed``), and holds every close while that fetch is out, so a close it signals
    proves the fetch answered. A flat-out burst played before that races the catch-up: the fake answers REST
    only after ``step`` returns, at a clock a whole burst ahead of the stream the daemon has read, which a real
    exchange cannot do (see ``FakeBybit.step``); the daemon then takes the burst for a gap longer than its
    window and re-warms.
    """
    await wait_until(lambda: any(e["event"] == "feed_subscribed" for e in log_events(log)), 30,
                     "the daemon's feed_subscribed")
    start = fake.open_start_ms
    await fake.step(1)
    await wait_until(lambda: any(e["event"] == "signal_emitted" and e["start"] == start for e in log_events(log)),
                     30, "the signal of the first bar after the catch-up")
    return start


# --- a stand-in systemd ----------------------------------------------------------------------------------------

class NotifyReceiver:
    """The systemd side of ``$NOTIFY_SOCKET``: a bound datagram socket collecting messages as field dicts."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"kdsignal-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
            self._dir = None
        else:
            # sun_path holds at most 107 bytes, and pytest's tmp_path can be longer than that.
            self._dir = tempfile.TemporaryDirectory(prefix="sdn")
            path = str(Path(self._dir.name) / "notify.sock")
            self.sock.bind(path)
            self.env_value = path
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        """Read every queued datagram; return all messages received so far."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def close(self) -> None:
        """Close the socket and remove its directory."""
        self.sock.close()
        if self._dir is not None:
            self._dir.cleanup()


# ---------------------------------------------------------------- sinks: real servers, a webhook receiver
SINK_SYMBOLS = ("BTCUSDT", "ETHUSDT")
SINK_STREAM = "kdsignal:signals"


def redis_sink_table(port: int, **extra) -> dict:
    """A ``[[sink]]`` table for a Redis stream on ``port``."""
    return {"kind": "redis", "url": f"redis://127.0.0.1:{port}/0", "stream": SINK_STREAM, **extra}


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
        from daemon.aio.sinks.process import SinkProcess
        from daemon.core.model import Model
        from daemon.core.sinks_config import parse_sinks

        self.fake = fake
        self.sink = LineSink()
        cfg = daemon_config(fake, symbols, artifact, **sections)
        self.cfg = dataclasses.replace(cfg, sinks=parse_sinks(list(sinks)))
        self.service = Service(self.cfg, Model.load(artifact), out=self.sink,
                               sinks=SinkProcess.from_config(self.cfg, environ=environ))

    @property
    def raw_lines(self) -> list[bytes]:
        """stdout lines without their newline, as written."""
        return self.sink.buffer.split(b"\n")[:-1]

    def sink_named(self, name: str):
        return next(s for s in self.service.sinks.sinks if s.name == name)


async def redis_stream_lines(port: int, stream: str = SINK_STREAM) -> list[bytes]:
    """Every entry's ``line`` field in a Redis stream on 127.0.0.1:port, oldest first."""
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=port)
    try:
        return [fields[b"line"] for _, fields in await client.xrange(stream)]
    finally:
        await client.aclose()


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
