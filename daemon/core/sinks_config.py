"""``[[sink]]`` tables: where signal lines go besides stdout (Redis Streams, NATS, HTTP webhooks).

Parsed and validated here, without I/O; :mod:`daemon.aio.sinks` runs them. Each table names its ``kind``;
every other key has a default and unknown keys are refused, as in the rest of the configuration.

Secrets never come from the configuration text. A sink that needs one names where it is instead:
``password_env`` / ``secret_env`` (an environment variable) or ``password_file`` / ``secret_file`` (a file;
a relative name is looked up in ``$CREDENTIALS_DIRECTORY``, which systemd's ``LoadCredential=`` sets, and
next to the configuration file otherwise). A URL carrying a password is refused. The secret is read when
the service starts (:func:`read_secret`), so ``kdsignal tail --config`` can read the same file without it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from daemon.core.errors import ConfigError

__all__ = ["KINDS", "NatsSinkConfig", "RedisSinkConfig", "SinkConfig", "WebhookSinkConfig", "parse_sinks",
           "read_secret", "redacted"]


class _Error(ValueError):
    pass


@dataclass(frozen=True)
class SinkConfig:
    """Keys every sink has."""

    kind: str = ""
    # Unique among the sinks; labels its metrics and its /healthz entry. Default: the kind, numbered if repeated.
    name: str = ""
    url: str = ""
    # Lines waiting for this sink; when full, new lines are dropped (and counted) rather than slowing stdout.
    queue_size: int = 10_000
    # Lines sent per round trip at most (a burst of closes goes out in a few requests, not one per line).
    batch_max: int = 256
    # A connect or a send that takes longer counts as a failure: reconnect with [backoff].
    timeout_s: float = 5.0
    # Where the config file lives, for a relative secret file outside $CREDENTIALS_DIRECTORY (set by the parser).
    base_dir: str = ""


@dataclass(frozen=True)
class RedisSinkConfig(SinkConfig):
    """XADD one entry per signal line to ``stream`` (field ``line``), trimmed to about ``maxlen`` entries."""

    url: str = "redis://127.0.0.1:6379/0"
    stream: str = "kdsignal:signals"
    # Approximate trimming (MAXLEN ~): Redis trims whole nodes, cheaply. 0 keeps everything.
    maxlen: int = 100_000
    password_env: str = ""
    password_file: str = ""


@dataclass(frozen=True)
class NatsSinkConfig(SinkConfig):
    """Publish one message per signal line to ``subject``; with ``jetstream`` wait for the stream's ack."""

    url: str = "nats://127.0.0.1:4222"
    subject: str = "kdsignal.signals"
    jetstream: bool = False
    user: str = ""
    password_env: str = ""
    password_file: str = ""


@dataclass(frozen=True)
class WebhookSinkConfig(SinkConfig):
    """POST each signal line as a JSON body; sign it with HMAC-SHA256 when a secret is named."""

    url: str = ""
    secret_env: str = ""
    secret_file: str = ""
    signature_header: str = "X-Kdsignal-Signature"
    timeout_s: float = 10.0


KINDS: dict[str, type[SinkConfig]] = {"redis": RedisSinkConfig, "nats": NatsSinkConfig, "webhook": WebhookSinkConfig}
_SCHEMES = {"redis": ("redis", "rediss", "unix"), "nats": ("nats", "tls"), "webhook": ("http", "https")}


def _coerce(where: str, value: object, default: object) -> object:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _Error(f"{where} is {value!r}, expected true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Error(f"{where} is {value!r}, expected an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Error(f"{where} is {value!r}, expected a number")
        return float(value)
    if not isinstance(value, str):
        raise _Error(f"{where} is {value!r}, expected a string")
    return value


# Upper bounds of the numeric keys: a queue or batch this large, or a timeout this long, is a typo, not a need.
_LIMITS = {"queue_size": 10_000_000, "batch_max": 10_000, "timeout_s": 300.0}


def redacted(url: str) -> str:
    """``url`` without user info, query or fragment (a webhook token may ride in the query), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _one(i: int, raw: object, base_dir: Path | None) -> SinkConfig:
    if not isinstance(raw, dict):
        raise _Error(f"[[sink]] {i} is {type(raw).__name__}, expected a table")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _Error(f"[[sink]] {i}: kind is {kind!r}, expected one of {', '.join(KINDS)}")
    cls = KINDS[kind]
    where = f"[[sink]] {i} ({kind})"
    allowed = {f.name for f in dataclasses.fields(cls)} - {"base_dir"}
    if kind == "webhook":
        allowed.discard("batch_max")  # one request per line, so there is no batch to size
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _Error(f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(unknown)}")
    defaults = cls()
    values = {k: _coerce(f"{where}.{k}", v, getattr(defaults, k)) for k, v in raw.items()}
    cfg = cls(**values, base_dir=str(base_dir or ""))
    for key, top in _LIMITS.items():
        value = getattr(cfg, key, None)
        if value is None:
            continue
        if not (math.isfinite(value) and 0 < value <= top):
            raise _Error(f"{where}.{key} is {value!r}, expected a positive number <= {top:g}")
    if not cfg.url:
        raise _Error(f"{where}.url is empty")
    if "\0" in cfg.url or any(c.isspace() for c in cfg.url):
        raise _Error(f"{where}.url {cfg.url!r:.80} holds a NUL or a space")
    try:
        parts = urlsplit(cfg.url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise _Error(f"{where}.url {cfg.url!r} is not a URL: {exc}") from None
    if parts.scheme not in _SCHEMES[kind]:
        raise _Error(f"{where}.url is {cfg.url!r}, expected a {' or '.join(s + '://' for s in _SCHEMES[kind])} URL")
    if not parts.hostname and parts.scheme != "unix":
        raise _Error(f"{where}.url is {cfg.url!r}, expected a host")
    if parts.password is not None:
        secret = "secret_env or secret_file" if kind == "webhook" else "password_env or password_file"
        raise _Error(f"{where}.url carries a password; configuration files are not for secrets: name it with {secret}")
    for env_key, file_key in (("password_env", "password_file"), ("secret_env", "secret_file")):
        if getattr(cfg, env_key, "") and getattr(cfg, file_key, ""):
            raise _Error(f"{where} sets both {env_key} and {file_key}; name one place for the secret")
    if isinstance(cfg, RedisSinkConfig):
        if not cfg.stream:
            raise _Error(f"{where}.stream is empty")
        if cfg.maxlen < 0:
            raise _Error(f"{where}.maxlen is {cfg.maxlen}, expected >= 0 (0: no trimming)")
    if isinstance(cfg, NatsSinkConfig):
        tokens = cfg.subject.split(".")
        if not cfg.subject or any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
            raise _Error(f"{where}.subject is {cfg.subject!r}, expected dot-separated tokens without wildcards")
        if (cfg.password_env or cfg.password_file) and not cfg.user:
            raise _Error(f"{where} names a password but no user")
    return cfg


def parse_sinks(raw: object, base_dir: Path | None = None) -> tuple[SinkConfig, ...]:
    """Validate the ``sink`` array of tables; raise ``ConfigError`` naming the table and key."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("sink is a single table, expected [[sink]] tables (an array of tables)")
    try:
        sinks = [_one(i, table, base_dir) for i, table in enumerate(raw, 1)]
    except _Error as exc:
        raise ConfigError(str(exc)) from None
    counts: dict[str, int] = {}
    for s in sinks:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    seen: dict[str, int] = {}
    named = []
    for i, s in enumerate(sinks, 1):
        if not s.name:
            seen[s.kind] = seen.get(s.kind, 0) + 1
            s = dataclasses.replace(s, name=s.kind if counts[s.kind] == 1 else f"{s.kind}-{seen[s.kind]}")
        if not s.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"[[sink]] {i}.name is {s.name!r}, expected letters, digits, - and _")
        named.append(s)
    names = [s.name for s in named]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"[[sink]] names must be unique; {', '.join(dup)} is used twice (set name = ...)")
    return tuple(named)


def read_secret(cfg: SinkConfig, environ: dict | None = None) -> str | None:
    """The sink's password or HMAC key from its environment variable or credentials file; None if it names none.

    Raises ``ConfigError`` when the named variable is unset or the file cannot be read.
    """
    environ = os.environ if environ is None else environ
    env_key, file_key = ("secret_env", "secret_file") if isinstance(cfg, WebhookSinkConfig) else (
        "password_env", "password_file")
    var, file = getattr(cfg, env_key, ""), getattr(cfg, file_key, "")
    where = f"sink {cfg.name} ({cfg.kind})"
    if var:
        value = environ.get(var)
        if not value:
            raise ConfigError(f"{where}: environment variable {var} ({env_key}) is not set or empty")
        return value
    if file:
        path = Path(file)
        if not path.is_absolute():
            creds = environ.get("CREDENTIALS_DIRECTORY")
            path = Path(creds) / file if creds else Path(cfg.base_dir or ".") / file
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {file_key} {path}: {exc.strerror or exc}") from None
        if not value:
            raise ConfigError(f"{where}: {file_key} {path} is empty")
        return value
    return None
