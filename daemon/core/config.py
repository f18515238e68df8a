"""Daemon configuration: TOML in, frozen dataclasses out; every key has a default, unknown keys are refused.

Sections: ``[feed]`` (Bybit endpoints, symbols, heartbeat), ``[backoff]`` (reconnect/retry delays),
``[rest]`` (REST retries and paging), ``[model]`` (artifact path, kernel, pid file), ``[log]`` (log file,
level, format, latency summary period), ``[metrics]`` (parsed here, served by the health/metrics endpoint),
``[scorecard]`` (the live scorecard) and ``[signal]`` (the decision policy, ``daemon.core.policy``). ``[train]``
and ``[retrain]`` tables are accepted and left alone: they belong to the offline code (daemon/training/config.py,
daemon/training/retrain.py).

Relative paths (artifact, log file) are resolved against the directory of the configuration file; an
artifact the file does not name is the shipped ``models/default.npz`` of this checkout.

Everything is checked here, at load, so a bad value is exit 78 with the key named rather than a traceback
at first use: every number finite and inside a stated range (``_RANGES``), URLs with a host, the file
UTF-8 and of a sane size, the log file's folder present. :attr:`MetricsConfig.beyond_loopback` tells the
service to warn when the metrics endpoint would be reachable from other machines.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import random
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from daemon.core.cpus import parse_cpu_list
from daemon.core.errors import ConfigError
from daemon.core.parser import INTERVAL_MS
from daemon.core.policy import EMITS, FROM_ARTIFACT, POLICIES
from daemon.core.sinks_config import SinkConfig, parse_sinks

__all__ = ["LOG_FORMATS", "BackoffConfig", "Config", "ConfigError", "FeedConfig", "LogConfig", "MetricsConfig",
           "ModelConfig", "RestConfig", "ScorecardConfig", "load_config", "parse_config"]

CATEGORIES = ("spot", "linear", "inverse")


@dataclass(frozen=True)
class FeedConfig:
    """Where the klines come from and how the WebSocket is kept alive."""

    ws_url: str = "wss://stream.bybit.com/v5/public/linear"
    rest_url: str = "https://api.bybit.com"
    category: str = "linear"
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    interval: str = "5"
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 10.0
    # Bybit spot refuses a whole subscribe request with more than 10 args; linear has no limit.
    subscribe_chunk: int = 10
    # A subscription not acknowledged within this time counts as a dead connection.
    ack_timeout_s: float = 10.0
    open_timeout_s: float = 10.0

    @property
    def interval_ms(self) -> int:
        """Length of one candle in milliseconds."""
        return INTERVAL_MS[self.interval]


@dataclass(frozen=True)
class BackoffConfig:
    """Capped exponential backoff with jitter, shared by reconnects and REST retries."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    # Each delay is drawn uniformly from [(1 - jitter) * d, d], so many clients do not retry in step.
    jitter: float = 0.5

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Yield an endless sequence of delays in seconds: initial_s, initial_s*factor, ... capped at max_s."""
        rng = rng or random.Random()
        delay = self.initial_s
        while True:
            yield delay * (1.0 - self.jitter * rng.random())
            delay = min(self.max_s, delay * self.factor)


@dataclass(frozen=True)
class RestConfig:
    """REST kline requests: timeouts, retry budget, page size."""

    timeout_s: float = 10.0
    max_attempts: int = 8
    page_limit: int = 1000
    # REST requests in flight at once (a reconnect makes every symbol catch up together).
    max_concurrent: int = 8
    # Extra closed bars fetched at warm-up beyond the model's warm-up length.
    warmup_extra_bars: int = 5


@dataclass(frozen=True)
class ModelConfig:
    """The student artifact to serve, and how its compiled step is found (``daemon.core.kernel_store``)."""

    artifact: str = "models/default.npz"
    # "aot": the module `kdsignal build-kernel` built (the daemon never compiles); "jit": numba in-process.
    kernel: str = "aot"
    kernel_dir: str = ""  # empty: kernel_store.kernel_dir()'s default
    # Where the daemon writes its pid so `kdsignal retrain`/`rollback` can SIGHUP it after a switch
    # (empty: none; under systemd `systemctl reload kdsignal` does that job).
    pid_file: str = ""


@dataclass(frozen=True)
class LogConfig:
    """The structured log (signals also go to stdout): where, how much, and rendered for whom."""

    file: str = ""  # empty: log lines go to stderr (under systemd, the journal, with each line's priority)
    level: str = "info"
    # "json": one JSON object a line (what `kdsignal tail` reads); "console": structlog's console renderer;
    # "auto": console when the log goes to a terminal, JSON otherwise (a file, a pipe, the journal).
    format: str = "auto"
    latency_summary_s: float = 60.0


@dataclass(frozen=True)
class MetricsConfig:
    """Optional health/metrics HTTP endpoint (served by the metrics module)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464

    @property
    def beyond_loopback(self) -> bool:
        """True when the endpoint is enabled and binds more than loopback (``0.0.0.0``, ``""``, ``::``, a
        public address or a host name other than ``localhost``): other machines can then read it."""
        if not self.enabled:
            return False
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # "" (every interface) or a host name
            return True


@dataclass(frozen=True)
class ScorecardConfig:
    """The live scorecard (daemon.core.scorecard): rolling window, expected band, degradation rule."""

    enabled: bool = True
    window_bars: int = 2016  # per symbol: a week of 5-minute bars
    # live log loss may exceed the artifact's out-of-sample log loss by this much (nats) before it counts
    band: float = 0.05
    degraded_after_bars: int = 288  # consecutive scored bars outside the band before model_degraded
    period_s: float = 300.0  # period of the `scorecard` log event


@dataclass(frozen=True)
class SignalConfig:
    """The decision policy (``daemon.core.policy``): what a line's ``signal`` says and which lines are written."""

    policy: str = "argmax"  # "argmax" or "threshold" (buy when p_buy - p_sell > threshold, sell below -threshold)
    fee_case: str = "taker"  # which of the artifact's policy cases gives the threshold ("taker" or "maker")
    threshold: float = FROM_ARTIFACT  # a number in [0, 1] overrides the artifact's; unset: the artifact's
    emit: str = "all"  # "all", "actionable" (buy and sell only) or "changes" (a symbol's signal changed)


@dataclass(frozen=True)
class CpuConfig:
    """[cpu]: Linux CPU lists ("0", "1-3"); empty leaves a process where it started (daemon.core.cpus)."""

    daemon: str = ""  # the daemon pins itself here at start-up
    sinks: str = ""  # the sink process; empty with ``daemon`` set: every other CPU the daemon could use


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    feed: FeedConfig = field(default_factory=FeedConfig)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    rest: RestConfig = field(default_factory=RestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    scorecard: ScorecardConfig = field(default_factory=ScorecardConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    cpu: CpuConfig = field(default_factory=CpuConfig)
    # Accepted untouched; validated by the training code, never by the daemon.
    train: dict = field(default_factory=dict)
    retrain: dict = field(default_factory=dict)  # read by daemon/training/retrain.py
    # [[sink]] tables (daemon.core.sinks_config): where signal lines go besides stdout.
    sinks: tuple[SinkConfig, ...] = ()
    source: str = "<defaults>"


_SECTIONS = {"feed": FeedConfig, "backoff": BackoffConfig, "rest": RestConfig, "model": ModelConfig,
             "log": LogConfig, "metrics": MetricsConfig, "scorecard": ScorecardConfig, "signal": SignalConfig,
             "cpu": CpuConfig}
_LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def _coerce(table: str, key: str, value: object, default: object) -> object:
    where = f"[{table}].{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} is {value!r}, expected true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} is {value!r}, expected an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} is {value!r}, expected a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} is {value!r}, expected a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} is {value!r}, expected a list of strings")
        return tuple(value)
    raise AssertionError(f"no coercion for {where}")  # pragma: no cover - a new field type


def _section(table: str, cls: type, raw: object):
    if not isinstance(raw, dict):
        raise ConfigError(f"[{table}] is {type(raw).__name__}, expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} in [{table}]: {', '.join(unknown)}")
    defaults = cls()
    values = {k: _coerce(table, k, v, getattr(defaults, k)) for k, v in raw.items()}
    return cls(**values)


# Inclusive bounds of every number, (low, high); a low bound of 0.0 for a float means "> 0". Wide enough
# for any sane deployment, narrow enough that no value turns into an endless loop or a sleep of years.
_HOUR_S = 3600.0
_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("feed", "ping_interval_s"): (0.0, _HOUR_S),
    ("feed", "pong_timeout_s"): (0.0, _HOUR_S),
    ("feed", "subscribe_chunk"): (1, 1000),
    ("feed", "ack_timeout_s"): (0.0, _HOUR_S),
    ("feed", "open_timeout_s"): (0.0, _HOUR_S),
    ("backoff", "initial_s"): (0.0, _HOUR_S),
    ("backoff", "max_s"): (0.0, _HOUR_S),
    ("backoff", "factor"): (1.0, 100.0),
    ("rest", "timeout_s"): (0.0, _HOUR_S),
    ("rest", "max_attempts"): (1, 100),
    ("rest", "page_limit"): (1, 1000),  # Bybit allows at most 1000
    ("rest", "max_concurrent"): (1, 1000),
    ("rest", "warmup_extra_bars"): (0, 10_000),
    ("log", "latency_summary_s"): (0.0, 86_400.0),
    ("metrics", "port"): (0, 65535),
    ("scorecard", "window_bars"): (1, 1_000_000),
    ("scorecard", "band"): (0.0, 10.0),
    ("scorecard", "degraded_after_bars"): (1, 1_000_000),
    ("scorecard", "period_s"): (0.0, 86_400.0),
}
_MAX_SYMBOLS = 10_000
_MAX_FILE_BYTES = 1 << 20


def _check_ranges(cfg: Config) -> None:
    for (table, key), (low, high) in _RANGES.items():
        value = getattr(getattr(cfg, table), key)
        where = f"[{table}].{key}"
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(f"{where} is {value!r}, expected a finite number")
            if (low == 0.0 and not value > 0) or value < low or value > high:
                bound = "> 0" if low == 0.0 else f">= {low:g}"
                raise ConfigError(f"{where} is {value!r}, expected {bound} and <= {high:g}")
        elif not low <= value <= high:
            raise ConfigError(f"{where} is {value!r}, expected {low}..{high}")


def _check_url(where: str, url: str, schemes: tuple[str, ...]) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        raise ConfigError(f"{where} is {url!r}: {exc}") from None
    if parts.scheme not in schemes:
        raise ConfigError(f"{where} is {url!r}, expected a {' or '.join(s + '://' for s in schemes)} URL")
    if not parts.hostname:
        raise ConfigError(f"{where} is {url!r}, which names no host")


def _validate(cfg: Config) -> None:
    feed = cfg.feed
    if feed.category not in CATEGORIES:
        raise ConfigError(f"[feed].category is {feed.category!r}, expected one of {', '.join(CATEGORIES)}")
    if feed.interval not in INTERVAL_MS:
        raise ConfigError(f"[feed].interval is {feed.interval!r}, expected one of {', '.join(INTERVAL_MS)}")
    if not feed.symbols:
        raise ConfigError("[feed].symbols is empty, expected at least one symbol")
    for s in feed.symbols:
        if not s or s != s.upper() or not s.isalnum():
            raise ConfigError(f"[feed].symbols has {s!r}, expected upper-case letters and digits like BTCUSDT")
    if len(set(feed.symbols)) != len(feed.symbols):
        raise ConfigError(f"[feed].symbols lists a symbol twice: {list(feed.symbols)}")
    if len(feed.symbols) > _MAX_SYMBOLS:
        raise ConfigError(f"[feed].symbols lists {len(feed.symbols)} symbols, at most {_MAX_SYMBOLS} are served")
    _check_url("[feed].ws_url", feed.ws_url, ("ws", "wss"))
    _check_url("[feed].rest_url", feed.rest_url, ("http", "https"))
    _check_ranges(cfg)
    if not (math.isfinite(cfg.backoff.jitter) and 0 <= cfg.backoff.jitter < 1):
        raise ConfigError(f"[backoff].jitter is {cfg.backoff.jitter}, expected 0 <= jitter < 1")
    if not cfg.model.artifact:
        raise ConfigError("[model].artifact is empty, expected a path to an artifact")
    if "\0" in cfg.model.artifact or "\0" in cfg.log.file or "\0" in cfg.model.pid_file:
        raise ConfigError("[model].artifact, [model].pid_file or [log].file holds a NUL character")
    if cfg.model.kernel not in ("aot", "jit"):
        raise ConfigError(f"[model].kernel is {cfg.model.kernel!r}, expected \"aot\" or \"jit\"")
    if cfg.log.level not in _LOG_LEVELS:
        raise ConfigError(f"[log].level is {cfg.log.level!r}, expected one of {', '.join(_LOG_LEVELS)}")
    if cfg.log.format not in LOG_FORMATS:
        raise ConfigError(f"[log].format is {cfg.log.format!r}, expected one of {', '.join(LOG_FORMATS)}")
    sig = cfg.signal
    if sig.policy not in POLICIES:
        raise ConfigError(f"[signal].policy is {sig.policy!r}, expected one of {', '.join(POLICIES)}")
    if sig.emit not in EMITS:
        raise ConfigError(f"[signal].emit is {sig.emit!r}, expected one of {', '.join(EMITS)}")
    if sig.threshold != FROM_ARTIFACT and not (math.isfinite(sig.threshold) and 0 <= sig.threshold <= 1):
        raise ConfigError(f"[signal].threshold is {sig.threshold!r}, expected a number from 0 to 1")
    if not sig.fee_case or len(sig.fee_case) > 64:
        raise ConfigError(f"[signal].fee_case is {sig.fee_case!r:.80}, expected a case name like \"taker\"")
    parse_cpu_list("[cpu].daemon", cfg.cpu.daemon)
    parse_cpu_list("[cpu].sinks", cfg.cpu.sinks)


_CHECKOUT = Path(__file__).resolve().parents[2]


def parse_config(raw: dict, base_dir: Path | None = None, source: str = "<dict>") -> Config:
    """Build a validated :class:`Config` from a parsed TOML document; relative paths join ``base_dir``."""
    unknown = sorted(set(raw) - set(_SECTIONS) - {"train", "retrain", "sink"})
    if unknown:
        raise ConfigError(f"unknown table{'s' if len(unknown) > 1 else ''} in {source}: {', '.join(unknown)}")
    sections = {name: _section(name, cls, raw[name]) for name, cls in _SECTIONS.items() if name in raw}
    train = raw.get("train", {})
    if not isinstance(train, dict):
        raise ConfigError(f"[train] is {type(train).__name__}, expected a table")
    retrain = raw.get("retrain", {})
    if not isinstance(retrain, dict):
        raise ConfigError(f"[retrain] is {type(retrain).__name__}, expected a table")
    cfg = Config(**sections, train=train, retrain=retrain, sinks=parse_sinks(raw.get("sink"), base_dir),
                 source=source)
    if base_dir is not None:
        model = cfg.model
        if not Path(model.artifact).is_absolute():
            # The default names the model shipped beside this code, wherever the config file lives.
            named = isinstance(raw.get("model"), dict) and "artifact" in raw["model"]
            model = dataclasses.replace(model, artifact=str((base_dir if named else _CHECKOUT) / model.artifact))
        if model.kernel_dir and not Path(model.kernel_dir).is_absolute():
            model = dataclasses.replace(model, kernel_dir=str(base_dir / model.kernel_dir))
        if model.pid_file and not Path(model.pid_file).is_absolute():
            model = dataclasses.replace(model, pid_file=str(base_dir / model.pid_file))
        log = cfg.log
        if log.file and not Path(log.file).is_absolute():
            log = dataclasses.replace(log, file=str(base_dir / log.file))
        cfg = dataclasses.replace(cfg, model=model, log=log)
    _validate(cfg)
    return cfg


def _check_log_folder(cfg: Config) -> None:
    # The daemon appends to the log file; a missing folder would otherwise surface as a traceback at start.
    if not cfg.log.file:
        return
    file = Path(cfg.log.file)
    if not file.parent.is_dir():
        raise ConfigError(f"[log].file is {cfg.log.file!r}, but its folder {file.parent} does not exist")
    if file.is_dir():
        raise ConfigError(f"[log].file is {cfg.log.file!r}, which is a folder")


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file; raises :class:`ConfigError` naming the problem.

    Besides :func:`parse_config`'s checks: the file must be UTF-8 and at most 1 MiB, and the log file's
    folder must exist.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(f"configuration file {path} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses into nested arrays
        raise ConfigError(f"{path} is not valid TOML: nested too deeply") from None
    cfg = parse_config(raw, base_dir=path.resolve().parent, source=str(path))
    _check_log_folder(cfg)
    return cfg
