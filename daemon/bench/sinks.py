"""Sinks on loopback: what a Redis and a NATS sink cost the hot path, and how soon a consumer sees each line.

At the issue's level (500 symbols, 10 pushes a second each: ``loopback.ISSUE_LEVEL``) the daemon runs under
the fake Bybit in two series, each variant a fresh daemon process. Shared: every process may run on any
CPU: without sinks; with a Redis Streams sink and a core-NATS sink on a real ``redis-server`` and
``nats-server`` started here on loopback, read by two consumers; the same with nobody reading (the sinks'
own cost, without the consumers' CPU); with both sinks pointing at ports nobody listens on (a dead sink:
every line queued until the queue is full, then dropped and counted); and without sinks once more, so the
run-to-run spread of the figure is on the table beside the differences. Live sinks run again at smaller
bursts of closes (``SMALL_BURSTS``). Own CPU: the same five with ``[cpu] daemon`` set to the first CPU, while
the servers, the exchange stand-in and the consumers start from this process pinned to the others (the sink
process keeps off the daemon's CPU by itself). The CPU each other process used in the window is recorded.

The sinks run in a process of their own (``daemon.aio.sinks.process``): the daemon writes each line to a
pipe right after stdout, and the sink process sends as lines arrive, while the daemon goes on with the
burst.

Tick-to-signal is the daemon's own measurement, as in ``daemon.bench.loopback`` (frame handed over by the
WebSocket client to its line written and flushed). Consumer latency: the driver (this module run as
``python -m daemon.bench.sinks driver ...``) stamps each stdout line with ``time.monotonic_ns`` right after
its flush (before the sinks get it), and two consumers, each a process of its own (``XREAD BLOCK`` on the
stream; a NATS subscription), stamp each line when their client library hands it over, with the same clock
(``CLOCK_MONOTONIC``, one clock for every process of the machine); the difference, per line, is how long
after stdout the line reached a consumer. A Redis reply holding a burst is stamped once, when it is parsed
(redis-py in pure Python: parsing a few hundred entries takes milliseconds on a busy machine, and a
consumer would wait for it too).

Three floors, with no daemon: another process sending stamped lines one at a time straight to the servers,
timed by the same consumers; the same with raw sockets on both sides and no client library; and one line
at a time into a pipe, read by another Python process's event loop (the hop the daemon adds before the
sinks).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from daemon.core.cpus import format_cpu_list
from daemon.ops.affinity import apply_cpu_config

__all__ = ["Consumers", "ServerProcess", "find_binary", "free_port", "nats_argv", "redis_argv", "run"]

DURATION_S = 6.0
# (symbols, bar_s) levels run once more with live sinks, for consumer latency at smaller bursts of closes.
SMALL_BURSTS = ((10, 0.2), (100, 0.2))
# Searched besides $PATH: Debian puts nats-server in /usr/sbin, which is not on every user's PATH.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/bin"])
STREAM, SUBJECT = "kdsignal:signals", "kdsignal.signals"


# ---------------------------------------------------------------------- servers (the tests use these too)
def find_binary(name: str) -> str | None:
    """The path of a server binary, or None."""
    return shutil.which(name, path=_SEARCH)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_argv(exe: str, port: int, workdir: Path) -> list[str]:
    """redis-server on 127.0.0.1:port, keeping nothing on disk."""
    return [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir)]


def nats_argv(exe: str, port: int, workdir: Path, jetstream: bool = True) -> list[str]:
    """nats-server on 127.0.0.1:port, with JetStream storing under ``workdir`` when asked."""
    argv = [exe, "-a", "127.0.0.1", "-p", str(port)]
    return [*argv, "-js", "-sd", str(workdir / "jetstream")] if jetstream else argv


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """A server binary on a fixed loopback port; :meth:`kill` then :meth:`start` again keeps the port."""

    def __init__(self, argv: list[str], port: int, workdir: Path, name: str) -> None:
        self.argv, self.port, self.workdir, self.name = argv, port, Path(workdir), name
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _log(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    def start(self, timeout_s: float = 15.0) -> ServerProcess:
        """Start the server and wait until it accepts connections."""
        self.starts += 1
        with open(self._log(), "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout_s
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self._log().read_text(errors="replace")[-400:]
                self.stop()
                raise RuntimeError(f"{self.name} did not start on port {self.port}: {tail}")
            time.sleep(0.01)
        return self

    def kill(self) -> None:
        """SIGKILL (no shutdown, like a crash) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


# ---------------------------------------------------------------------- the daemon side (a child process)
def _child_cpu_rss(pid: int | None) -> tuple[float, float]:
    """(CPU seconds, resident MB) of process ``pid`` (the sink process), NaN when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return float("nan"), float("nan")
    # Fields 14 and 15 of proc(5) (utime, stime) are the 12th and 13th after the command name; rss is the 22nd.
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class StampedOut:
    """stdout stand-in for the driver: writes to a file and, while ``recording``, keeps (flush time, line)."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by the driver
        self.recording = False
        self.stamps: list[tuple[int, bytes]] = []
        self._last = b""

    def write(self, data: bytes) -> int:
        self._last = data
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()
        if self.recording:
            self.stamps.append((time.monotonic_ns(), self._last))


async def _drive(config_path: str, signals_path: str, stamps_path: str, settle_s: float, duration_s: float) -> dict:
    from daemon.aio.output import configure_logging
    from daemon.aio.service import Service
    from daemon.aio.sinks.process import SinkProcess
    from daemon.core.config import load_config
    from daemon.core.model import Model

    from .loopback_driver import KeepAll, _cpu_s, _status_mb, latency_split, until_ready

    cfg = load_config(config_path)
    sink_cpus = apply_cpu_config(cfg.cpu.daemon, cfg.cpu.sinks)  # as `kdsignal run` does
    model = Model.load(cfg.model.artifact, kernel=cfg.model.kernel, kernel_dir=cfg.model.kernel_dir)
    log_file = configure_logging(cfg.log.file, cfg.log.level, cfg.log.format)
    out = StampedOut(signals_path)
    service = Service(cfg, model, out=out, log_file=log_file, sinks=SinkProcess.from_config(cfg, cpus=sink_cpus))
    recorder = KeepAll()
    service.writer.latency = recorder
    task = asyncio.create_task(service.run())
    try:
        await until_ready(service, task, 180.0)
        await asyncio.sleep(settle_s)
        pid = service.sinks.pid if service.sinks else None
        written0, cpu0, t0 = service.writer.written, _cpu_s(), time.perf_counter()
        child0, _ = _child_cpu_rss(pid)
        recorder.recording = out.recording = True
        print(json.dumps({"event": "recording"}), flush=True)
        await asyncio.sleep(duration_s)
        recorder.recording = out.recording = False
        written1, cpu1, t1 = service.writer.written, _cpu_s(), time.perf_counter()
        child1, child_rss_mb = _child_cpu_rss(pid)
        sinks = {s.name: {"sent": s.sent, "dropped": s.dropped, "errors": s.errors, "up": s.up}
                 for s in service.sinks.sinks}
        if service.sinks:
            sinks_process = {"pipe_dropped": service.sinks.pipe_dropped, "restarts": service.sinks.restarts,
                             "cpu_percent": round(100.0 * (child1 - child0) / (t1 - t0), 1),
                             "rss_mb": round(child_rss_mb, 1)}
        result = {"signals": written1 - written0, "live_samples": len(recorder.ns),
                  "signals_per_s": round((written1 - written0) / (t1 - t0), 1),
                  **latency_split(recorder.ns, recorder.done_ns),
                  "cpu_percent": round(100.0 * (cpu1 - cpu0) / (t1 - t0), 1),
                  "rss_mb": round(_status_mb("VmRSS"), 1), "sinks": sinks}
        if service.sinks:
            result["sinks_process"] = sinks_process
    finally:
        service.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), 30.0)
        except TimeoutError:
            # A stop that does not finish: show where every task waits, then give up on it.
            for t in asyncio.all_tasks():
                t.print_stack(file=sys.stderr)
            raise
        out.f.close()
        if log_file is not None:
            log_file.close()
    with open(stamps_path, "w", encoding="utf-8") as f:
        for ns, line in out.stamps:
            f.write(f"{ns}\t{line.decode().rstrip()}\n")
    return result


# ---------------------------------------------------------------------- consumers (a thread of the bench process)
class Consumers:
    """A Redis stream reader and a NATS subscriber, each a process of its own (``python -m daemon.bench.sinks
    consume KIND PORT``), so neither waits for the other's parsing; :meth:`collect` stops them and fills
    ``got`` with (arrival ns, line) per sink."""

    def __init__(self, redis_port: int | None, nats_port: int | None) -> None:
        self.ports = {"redis": redis_port, "nats": nats_port}
        self.got: dict[str, list[tuple[int, bytes]]] = {"redis": [], "nats": []}
        self.errors: list[str] = []
        self._procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Consumers:
        try:
            for kind, port in self.ports.items():
                self._procs[kind] = subprocess.Popen(
                    [sys.executable, "-m", "daemon.bench.sinks", "consume", kind, str(port)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for kind, proc in self._procs.items():
                ready = _readline_within(proc, 30.0)
                if ready != b"ready\n":
                    err = proc.stderr.read().decode(errors="replace")[-300:] if proc.poll() is not None else ""
                    raise RuntimeError(f"the {kind} consumer did not connect within 30 s: {err}")
        except BaseException:
            self._kill()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values()]

    def collect(self) -> dict[str, list[tuple[int, bytes]]]:
        """Stop the consumers (once) and return what each saw."""
        for kind, proc in list(self._procs.items()):
            try:
                out, _ = proc.communicate(timeout=60)  # closing stdin is its signal to report and exit
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                self.errors.append(f"the {kind} consumer did not stop")
            for row in out.splitlines():
                ns, line = row.split(b"\t", 1)
                self.got[kind].append((int(ns), line))
            del self._procs[kind]
        return self.got

    def __exit__(self, *exc) -> None:
        self._kill()

    def _kill(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self._procs.clear()


def _readline_within(proc: subprocess.Popen, timeout_s: float) -> bytes:
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return box[0] if box else b""


async def _consume(kind: str, port: int) -> list[tuple[int, bytes]]:
    """Read ``kind`` on ``port`` until stdin reaches EOF; (arrival ns, line) per line, stamped on arrival."""
    got: list[tuple[int, bytes]] = []
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stdin() -> None:
        if not os.read(0, 4096):  # EOF: the bench wants the report
            loop.remove_reader(0)
            stop.set()

    loop.add_reader(0, on_stdin)
    if kind == "nats":
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{port}")

        async def on_msg(msg) -> None:
            got.append((time.monotonic_ns(), msg.data))

        await nc.subscribe(SUBJECT, cb=on_msg)
        await nc.flush()
        print("ready", flush=True)
        await stop.wait()
        await nc.close()
        return got
    from redis.asyncio import Redis

    rc = Redis(host="127.0.0.1", port=port)
    await rc.ping()

    async def read() -> None:
        last = "$"  # only what arrives from now on (an earlier variant left its lines in the stream)
        while True:
            reply = await rc.xread({STREAM: last}, block=1000, count=1000)
            now = time.monotonic_ns()
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    got.append((now, fields[b"line"]))
                    last = entry_id

    reader = asyncio.create_task(read())
    print("ready", flush=True)
    await stop.wait()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await rc.aclose()
    return got


def consumer_latency(stamps: dict[bytes, int], got: list[tuple[int, bytes]]) -> dict:
    """Per line the consumer saw: its arrival minus its stdout flush, in µs (p50, p99, max), and coverage."""
    return _summary([ns - stamps[line] for ns, line in got if line in stamps], len(stamps))


def _summary(deltas_ns: list[int], expected: int) -> dict:
    deltas = np.array(deltas_ns, dtype=np.float64) / 1000.0
    if not deltas.size:
        return {"n": 0, "p50_us": None, "p99_us": None, "max_us": None, "seen_fraction": 0.0}
    return {"n": int(deltas.size), "p50_us": round(float(np.percentile(deltas, 50)), 1),
            "p99_us": round(float(np.percentile(deltas, 99)), 1), "max_us": round(float(deltas.max()), 1),
            "seen_fraction": round(deltas.size / max(1, expected), 4)}


_FLOOR_PRODUCER = """
import asyncio, sys, time
import nats
from redis.asyncio import Redis

async def main(redis_port, nats_port, n, gap_s):
    rc = Redis(host="127.0.0.1", port=redis_port)
    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
    for _ in range(n):
        await rc.xadd(STREAM, {"line": str(time.monotonic_ns()).encode()})
        await nc.publish(SUBJECT, str(time.monotonic_ns()).encode())
        await nc.flush()
        await asyncio.sleep(gap_s)
    await nc.close()
    await rc.aclose()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
"""


def floor(redis_port: int, nats_port: int, n: int = 300, gap_s: float = 0.01) -> dict:
    """The machine's own floor: another process sends ``n`` stamped lines straight to Redis and NATS (one at a
    time, like the sinks' smallest batch) and the same consumers time them; no daemon in between."""
    code = f"STREAM, SUBJECT = {STREAM!r}, {SUBJECT!r}\n" + _FLOOR_PRODUCER
    with Consumers(redis_port, nats_port) as consumers:
        subprocess.run([sys.executable, "-c", code, str(redis_port), str(nats_port), str(n), str(gap_s)],
                       check=True, timeout=120, capture_output=True)
        time.sleep(0.5)
        seen = consumers.collect()
    out = {}
    for sink, got in seen.items():
        stamps = {line: int(line) for _, line in got}
        out[sink] = consumer_latency(stamps, list(got))
    return out


_PIPE_READER = """
import asyncio, os, sys, time

async def main():
    loop, got, done = asyncio.get_running_loop(), [], asyncio.Event()
    def on_readable():
        data = os.read(0, 1 << 16)
        now = time.monotonic_ns()
        if not data:
            loop.remove_reader(0)
            done.set()
            return
        got.extend((now, line) for line in data.split(b"\\n") if line)
    os.set_blocking(0, False)
    loop.add_reader(0, on_readable)
    print("ready", flush=True)
    await done.wait()
    sys.stdout.buffer.write(b"".join(b"%d\\t%s\\n" % row for row in got))

asyncio.run(main())
"""


def pipe_hop(n: int = 300, gap_s: float = 0.01) -> dict:
    """One hop of the machine, the one the daemon adds before the sinks: ``n`` stamped lines written one at a
    time into a pipe, read by another Python process's event loop (as the sink process reads them)."""
    proc = subprocess.Popen([sys.executable, "-c", _PIPE_READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        if _readline_within(proc, 30.0) != b"ready\n":
            raise RuntimeError("the pipe reader did not start within 30 s")
        time.sleep(0.1)  # its loop is waiting in epoll now
        fd = proc.stdin.fileno()
        for _ in range(n):
            os.write(fd, b"%d\n" % time.monotonic_ns())
            time.sleep(gap_s)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return _summary([int(ns) - int(line) for ns, line in (row.split(b"\t", 1) for row in out.splitlines())], n)


# The machine without client libraries: raw sockets both sides, each line's stamp found by a plain scan.
_RAW_FLOOR = r"""
import os, re, socket, sys, time
kind, port, n, gap_s, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5].encode()
stamp = re.compile(rb"K(\d{6,})K")


def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)  # every recv gives up after 10 s
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "nats":
        s.recv(65536)  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        until(s, b"PONG\r\n")
    return s


def until(s, mark):
    buf = b""
    while mark not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"{kind} closed the connection")
        buf += chunk


def resp(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


r, w = os.pipe()
pid = os.fork()
if pid == 0:  # the consumer: each stamp's first arrival (a stamp split over two reads counts when whole)
    os.close(r)
    s, seen, tail, last = connect(), {}, b"", b"0-0"  # a fresh key: from its start, nothing is missed
    if kind == "nats":
        s.sendall(b"SUB " + key + b" 1\r\nPING\r\n")
        until(s, b"PONG\r\n")
    os.write(w, b"r")
    try:
        while len(seen) < n:
            if kind == "redis":
                s.sendall(resp(b"XREAD", b"BLOCK", b"5000", b"STREAMS", key, last))
            data = s.recv(1 << 20)
            now = time.monotonic_ns()
            if not data:
                break
            data, tail = tail + data, data[-64:]
            for m in stamp.findall(data):
                seen.setdefault(int(m), now - int(m))
            if kind == "redis":
                ids = re.findall(rb"\r\n(\d+-\d+)\r\n", data)  # in order: the last is the newest whole one
                last = ids[-1] if ids else last
            elif b"PING\r\n" in data:
                s.sendall(b"PONG\r\n")
    except OSError:
        pass
    os.write(w, " ".join(map(str, seen.values())).encode())
    os._exit(0)
os.close(w)
os.read(r, 1)
s = connect()
for _ in range(n):  # the producer
    payload = b"K%dK" % time.monotonic_ns()
    if kind == "redis":
        s.sendall(resp(b"XADD", key, b"*", b"line", payload))
        s.recv(65536)
    else:
        s.sendall(b"PUB %s %d\r\n%s\r\n" % (key, len(payload), payload))
    time.sleep(gap_s)
out = b""
while chunk := os.read(r, 1 << 20):
    out += chunk
os.waitpid(pid, 0)
sys.stdout.write(out.decode())
"""


def raw_floor(redis_port: int, nats_port: int, n: int = 300, gap_s: float = 0.01) -> dict:
    """The machine's floor with no client library at all: raw sockets on both sides, one line at a time."""
    out, fresh = {}, time.time_ns()  # a key nobody wrote before: the consumer reads it from its start
    for kind, port, key in (("redis", redis_port, f"kdsignal:raw-floor-{fresh}"),
                            ("nats", nats_port, f"kdsignal.raw-floor-{fresh}")):
        done = subprocess.run([sys.executable, "-c", _RAW_FLOOR, kind, str(port), str(n), str(gap_s), key],
                              check=True, timeout=120, capture_output=True)
        out[kind] = _summary([int(x) for x in done.stdout.split()], n)
    return out


# ---------------------------------------------------------------------- orchestration (the bench process)
def sink_tables(redis_port: int, nats_port: int) -> str:
    return (f'\n[[sink]]\nkind = "redis"\nurl = "redis://127.0.0.1:{redis_port}/0"\nstream = "{STREAM}"\n'
            f'\n[[sink]]\nkind = "nats"\nurl = "nats://127.0.0.1:{nats_port}"\nsubject = "{SUBJECT}"\n')


def _cpu_ticks(pids: dict[str, list[int]]) -> dict[str, int]:
    """utime + stime ticks of each named group of processes (a process that is gone counts 0)."""
    out = {}
    for name, group in pids.items():
        total = 0
        for pid in group:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        out[name] = total
    return out


def run_variant(workdir: Path, artifact: Path, name: str, sinks_toml: str, symbols: int, bar_s: float,
                duration_s: float, consumers: Consumers | None = None,
                servers: dict[str, int] | None = None) -> dict:
    """One fresh daemon at (symbols, bar_s) with ``sinks_toml`` appended to its configuration; ``servers``
    (name: pid) are the server processes whose CPU share over the recording window is reported beside the
    exchange stand-in's and the consumers'."""
    from .loopback import SETTLE_S, START_INDEX, FakeServer, _readline, _spawn, _stop, make_symbols, write_config

    level_dir = Path(tempfile.mkdtemp(prefix=f"sinks-{name}-", dir=workdir))
    data_dir = level_dir / "data"
    data_dir.mkdir()
    rows = min(4032, START_INDEX + int((40.0 + SETTLE_S + duration_s) / bar_s))
    names = make_symbols(data_dir, symbols, rows)
    fake = FakeServer(data_dir, bar_s)
    driver = None
    try:
        cfg = level_dir / "config.toml"
        write_config(cfg, fake.ws_url, fake.rest_url, names, artifact, level_dir / "daemon.log")
        with open(cfg, "a", encoding="utf-8") as f:
            f.write(sinks_toml)
        stamps_path = level_dir / "stamps.tsv"
        driver = _spawn([sys.executable, "-m", "daemon.bench.sinks", "driver", str(cfg),
                         str(level_dir / "signals.jsonl"), str(stamps_path), str(SETTLE_S), str(duration_s)],
                        level_dir / "driver.err")
        others = {"fake exchange": [fake.proc.pid], **{k: [v] for k, v in (servers or {}).items()}}
        if consumers is not None:
            others["consumers"] = consumers.pids
        _readline(driver, 300.0)  # "recording": the window starts
        ticks0, t0 = _cpu_ticks(others), time.monotonic()
        out = json.loads(_readline(driver, duration_s + 120.0))
        ticks1, t1 = _cpu_ticks(others), time.monotonic()
        driver.wait(timeout=60)
    finally:
        _stop(driver)
        fake.close()
    hz = os.sysconf("SC_CLK_TCK")
    out.update({"variant": name, "symbols": symbols, "bar_s": bar_s,
                # A process that ended inside the window counts 0, not a negative share.
                "others_cpu_percent": {k: round(max(0.0, 100.0 * (ticks1[k] - ticks0[k]) / hz / (t1 - t0)), 1)
                                       for k in others}})
    if consumers is not None:
        time.sleep(1.0)  # lines written at the end of the window are still on their way to the consumers
        stamps = {}
        for row in stamps_path.read_text(encoding="utf-8").splitlines():
            ns, line = row.split("\t", 1)
            stamps[line.encode()] = int(ns)
        out["consumer"] = {k: consumer_latency(stamps, list(v)) for k, v in consumers.collect().items()}
    return out


OWN_CPU = "daemon on a CPU of its own"


def _result_name(text: str) -> str:
    return text.replace("+", "_").replace(", ", "_").replace(" ", "_")


@contextlib.contextmanager
def _servers(workdir: Path, redis_exe: str, nats_exe: str):
    """A fresh ``redis-server`` and core ``nats-server`` on free loopback ports, stopped on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    redis = ServerProcess(redis_argv(redis_exe, port, workdir), port, workdir, "redis")
    port = free_port()
    nats_ = ServerProcess(nats_argv(nats_exe, port, workdir, jetstream=False), port, workdir, "nats")
    try:
        redis.start()
        nats_.start()
        yield redis, nats_
    finally:
        redis.stop()
        nats_.stop()


@contextlib.contextmanager
def _running_on(cpus: set[int]):
    """The calling thread, and every process it starts meanwhile, on ``cpus``; as before afterwards."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _run_plan(plan, workdir: Path, artifact: Path, redis: ServerProcess, nats_: ServerProcess, duration_s: float,
              series: str, rows: list, skipped: list) -> None:
    servers = {"redis-server": redis.proc.pid, "nats-server": nats_.proc.pid}
    for name, tables, consume, (symbols, bar_s) in plan:
        try:
            if consume:
                with Consumers(redis.port, nats_.port) as consumers:
                    row = run_variant(workdir, artifact, name, tables, symbols, bar_s, duration_s, consumers, servers)
            else:
                row = run_variant(workdir, artifact, name, tables, symbols, bar_s, duration_s, servers=servers)
            rows.append({**row, "series": series})
        except (RuntimeError, TimeoutError, ValueError, OSError) as e:
            skipped.append({"name": f"sinks_{name}", "reason": str(e)[:300]})


def run(artifact_path: Path | None, duration_s: float = DURATION_S) -> dict:
    """The sinks part: no sinks, Redis + NATS (read and unread), dead sinks, no sinks again, at the issue's level,
    with every process sharing the machine's CPUs and again with the daemon on a CPU of its own ([cpu]);
    then smaller bursts, and the machine's floors."""
    from .loopback import ISSUE_LEVEL, missing

    why = missing()
    redis_exe, nats_exe = find_binary("redis-server"), find_binary("nats-server")
    if why is None and artifact_path is None:
        why = "no artifact file"
    if why is None and (redis_exe is None or nats_exe is None):
        why = "redis-server or nats-server is not installed (Debian packages of the same names)"
    if why is not None:
        return {"variants": [], "skipped": [{"name": "sinks", "reason": why}]}
    rows, skipped, floor_row = [], [], {}
    artifact = Path(artifact_path)
    allowed = sorted(os.sched_getaffinity(0))

    def core_plan(redis: ServerProcess, nats_: ServerProcess, extra: str = "") -> list:
        live, dead = sink_tables(redis.port, nats_.port), sink_tables(free_port(), free_port())
        # "nobody reading": the sinks' own cost, without the consumers' CPU on the same cores.
        return [("none", extra, False, ISSUE_LEVEL), ("redis+nats", live + extra, True, ISSUE_LEVEL),
                ("redis+nats, nobody reading", live + extra, False, ISSUE_LEVEL),
                ("dead sinks", dead + extra, False, ISSUE_LEVEL), ("none again", extra, False, ISSUE_LEVEL)]

    with tempfile.TemporaryDirectory(prefix="kdsignal-bench-sinks-") as tmp:
        workdir = Path(tmp)
        with _servers(workdir / "shared", redis_exe, nats_exe) as (redis, nats_):
            floor_row = {}
            for kind, measure in (("client library", lambda: floor(redis.port, nats_.port)),
                                  ("raw sockets", lambda: raw_floor(redis.port, nats_.port)),
                                  ("pipe", lambda: {"pipe hop": pipe_hop()})):
                try:
                    floor_row[kind] = measure()
                except (RuntimeError, ValueError, subprocess.SubprocessError, OSError) as e:
                    skipped.append({"name": f"sinks_floor_{kind}", "reason": str(e)[:300]})
            plan = core_plan(redis, nats_)
            # Smaller bursts: how soon a consumer sees a line depends on how many lines a burst holds.
            live = sink_tables(redis.port, nats_.port)
            plan += [(f"redis+nats, {n} symbols", live, True, (n, b)) for n, b in SMALL_BURSTS]
            _run_plan(plan, workdir, artifact, redis, nats_, duration_s, "shared", rows, skipped)
        if len(allowed) < 2:
            skipped.append({"name": f"sinks, {OWN_CPU}", "reason": "a single CPU: nothing to keep off it"})
        else:
            # The daemon pins itself to the first CPU ([cpu] daemon, its sink process then keeps to the others);
            # the servers, the exchange stand-in and the consumers start from here, on the others.
            with _running_on(set(allowed[1:])), _servers(workdir / "own", redis_exe, nats_exe) as (redis, nats_):
                cpu = f'\n[cpu]\ndaemon = "{allowed[0]}"\n'
                plan = [(f"{name}, {OWN_CPU}", tables, consume, level)
                        for name, tables, consume, level in core_plan(redis, nats_, cpu)]
                _run_plan(plan, workdir, artifact, redis, nats_, duration_s, "own CPU", rows, skipped)
    results = []
    for r in rows:
        key = _result_name(r["variant"])
        results.append({"name": f"sinks_tick_to_signal_{key}", "p50_us": r["p50_us"], "p99_us": r["p99_us"],
                        "n": r["live_samples"], "signals_per_s": r["signals_per_s"]})
        for sink, c in (r.get("consumer") or {}).items():
            results.append({"name": f"sinks_consumer_after_stdout_{key}_{sink}", "p50_us": c["p50_us"],
                            "p99_us": c["p99_us"], "n": c["n"]})
    ratios = []
    for series in ("shared", "own CPU"):
        in_series = [r for r in rows if r["series"] == series and r["symbols"] == ISSUE_LEVEL[0]]
        base = next((r for r in in_series if r["variant"].startswith("none")), None)
        if not base or not base["p99_us"]:
            continue
        for r in in_series:
            if r is not base and r["p99_us"]:
                ratios.append({"name": f"sinks p99 {r['variant']} / {base['variant']}",
                               "ratio": round(r["p99_us"] / base["p99_us"], 3)})
    for kind, by_consumer in floor_row.items():
        for consumer, c in by_consumer.items():
            results.append({"name": _result_name(f"sinks_floor_{kind}_{consumer}"), "p50_us": c["p50_us"],
                            "p99_us": c["p99_us"], "n": c["n"]})
    return {"variants": rows, "floor": floor_row, "results": results, "ratios": ratios, "skipped": skipped,
            "settings": {"issue_level": list(ISSUE_LEVEL), "small_bursts": [list(x) for x in SMALL_BURSTS],
                         "duration_s": duration_s, "cpus": format_cpu_list(allowed)}}


def main(argv: list[str]) -> int:
    """``python -m daemon.bench.sinks driver CONFIG SIGNALS STAMPS SETTLE_S DURATION_S``: the daemon side;
    ``... consume redis|nats PORT``: one consumer, reporting ``ns<TAB>line`` rows on stdout once stdin closes."""
    if argv[:1] == ["consume"] and len(argv) == 3 and argv[1] in ("redis", "nats"):
        got = asyncio.run(_consume(argv[1], int(argv[2])))
        sys.stdout.buffer.write(b"".join(b"%d\t%s\n" % (ns, line) for ns, line in got))
        sys.stdout.flush()
        return 0
    if argv[:1] != ["driver"] or len(argv) != 6:
        print("usage: python -m daemon.bench.sinks driver CONFIG SIGNALS STAMPS SETTLE_S DURATION_S", file=sys.stderr)
        return 2
    _, config, signals_path, stamps, settle_s, duration_s = argv
    # A daemon that stops answering leaves the stacks of its threads in driver.err before the bench gives up.
    faulthandler.dump_traceback_later(float(duration_s) + 90.0, exit=False, file=sys.stderr)
    result = asyncio.run(_drive(config, signals_path, stamps, float(settle_s), float(duration_s)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
