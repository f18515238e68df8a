"""The model store: a folder of validated artifacts with history, one of them live through a ``current`` link.

Layout of ``<store>/``::

    <model_id>.npz      an artifact (daemon.core.artifact), named by its own content hash
    <model_id>.json     its record: when it was added, the gate's scores, the retrain report that made it
    current             relative symlink -> <model_id>.npz, switched atomically (the daemon serves it)
    history.jsonl       one line per switch: {"ms", "action": "promote"|"rollback", "model", "previous"}
    runs/               every retrain run's report, promoted or not (written by daemon.training.retrain)
    .lock               flock'd while the store changes, so a retrain and a rollback never interleave

Every write is atomic and durable: a temporary file in the same folder, ``fsync``, ``rename`` over the
target, then ``fsync`` of the folder, so a crash leaves either the old or the new file, never half of one.
The daemon's ``[model] artifact`` points at ``<store>/current``; after a switch the daemon is told to reload
(SIGHUP through its pid file, or ``systemctl reload kdsignal`` under systemd) and swaps models between two
bars, the rolling features carrying over.

Commands: ``kdsignal models`` lists the store (gate scores, which is live); ``kdsignal rollback [MODEL_ID]``
makes an earlier model current (default: the one promoted before the live one); ``kdsignal promote ARTIFACT``
adds a hand-made artifact and makes it current, bypassing the gate (seeding a new store, say). A store that cannot be
trusted (a dangling ``current``, a file that is not an artifact, an id that does not match its content) is
refused with a message naming the file, exit 78.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon.core.artifact import Artifact, ArtifactError, load_artifact
from daemon.core.exitcodes import EXIT_CONFIG, EXIT_OK
from daemon.ops.files import PidFileError, atomic_write, fsync_dir, notify_daemon

__all__ = [
    "ModelStore",
    "StoreError",
    "StoredModel",
    "add_arguments",
    "add_arguments_models",
    "add_arguments_promote",
    "atomic_write",
    "ensure_kernel",
    "notify_daemon",
    "run_cli",
    "run_cli_models",
    "run_cli_promote",
]

DEFAULT_STORE = "models/store"  # relative to the config file, when [retrain].store does not say
CURRENT = "current"
HISTORY = "history.jsonl"
RUNS = "runs"
LOCK = ".lock"
ACTIONS = ("promote", "rollback")
_ID = re.compile(r"^[0-9a-f]{16}$")
_MODEL_FILE = re.compile(r"^([0-9a-f]{16})\.(npz|json)$")
# Records and history lines are small; a larger file is not ours.
_MAX_RECORD_BYTES = 4 << 20
_MAX_HISTORY_BYTES = 16 << 20


class StoreError(ValueError):
    """The store, a file in it, or a request about it is unusable; the message names the file."""


@dataclass
class StoredModel:
    """One model in the store: its artifact (or why it cannot be read) and its record."""

    model_id: str
    path: Path
    record: dict = field(default_factory=dict)
    artifact: Artifact | None = None
    problem: str | None = None

    @property
    def added_ms(self) -> int:
        v = self.record.get("added_ms")
        return v if isinstance(v, int) else 0


class ModelStore:
    """A store folder (see the module docstring); every read is validated, every write atomic."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ reading
    def check_root(self, *, create: bool = False) -> None:
        """Refuse a store path that is not a writable folder (create it when asked)."""
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"store {self.root}: cannot create ({e.strerror or e})") from None
        if not self.root.is_dir():
            raise StoreError(f"store {self.root}: not a folder" if self.root.exists()
                             else f"store {self.root}: does not exist")

    def artifact_path(self, model_id: str) -> Path:
        """Where the artifact of ``model_id`` lives (the id is checked: no path can escape the store)."""
        if not _ID.match(model_id or ""):
            raise StoreError(f"model id {model_id!r}: expected 16 lower-case hex digits")
        return self.root / f"{model_id}.npz"

    def current_id(self) -> str | None:
        """The live model's id, None when there is no ``current`` link; a broken link raises StoreError."""
        link = self.root / CURRENT
        if not link.is_symlink():
            if link.exists():
                raise StoreError(f"store {self.root}: {CURRENT} is a regular file, expected a link to <model_id>.npz")
            return None
        target = os.readlink(link)
        m = _MODEL_FILE.match(target)
        if not m or m.group(2) != "npz":
            raise StoreError(f"store {self.root}: {CURRENT} points at {target!r}, expected <model_id>.npz in the store")
        if not (self.root / target).is_file():
            raise StoreError(f"store {self.root}: {CURRENT} points at {target}, which does not exist (dangling link)")
        return m.group(1)

    def load(self, model_id: str) -> Artifact:
        """Load and validate a stored artifact; its manifest id must match its file name."""
        path = self.artifact_path(model_id)
        if not path.is_file():
            raise StoreError(f"store {self.root}: no model {model_id} ({path.name} missing)")
        try:
            art = load_artifact(path)
        except ArtifactError as e:
            raise StoreError(f"{path}: not a valid artifact: {e}") from None
        if art.model_id != model_id:
            raise StoreError(f"{path}: file name says {model_id}, the manifest says {art.model_id}")
        return art

    def record(self, model_id: str) -> dict:
        """The model's record (``<id>.json``); empty if there is none, StoreError if it is unreadable."""
        path = self.root / f"{model_id}.json"
        if not path.exists():
            return {}
        return _read_json(path)

    def models(self) -> tuple[list[StoredModel], list[str]]:
        """Every stored model, oldest added first, and the names of files that do not belong to a store."""
        found: dict[str, StoredModel] = {}
        junk: list[str] = []
        for p in sorted(self.root.iterdir()):
            name = p.name
            if name in (CURRENT, HISTORY, LOCK, RUNS) or name.startswith("."):
                continue
            m = _MODEL_FILE.match(name)
            if not m or not p.is_file():
                junk.append(name)
                continue
            if m.group(2) == "npz":
                found[m.group(1)] = StoredModel(m.group(1), p)
        for model_id, sm in found.items():
            try:
                sm.artifact = self.load(model_id)
            except StoreError as e:
                sm.problem = str(e)
            try:
                sm.record = self.record(model_id)
            except StoreError as e:
                sm.problem = sm.problem or str(e)
        orphans = []
        for p in self.root.glob("*.json"):
            m = _MODEL_FILE.match(p.name)
            if m and m.group(1) not in found:
                orphans.append(p.name)
        ordered = sorted(found.values(), key=lambda s: (s.added_ms, s.model_id))
        return ordered, junk + [f"{n} (record without an artifact)" for n in sorted(orphans)]

    def history(self) -> list[dict]:
        """The switch history, oldest first; lines that are not valid events are skipped and named."""
        path = self.root / HISTORY
        if not path.exists():
            return []
        if path.stat().st_size > _MAX_HISTORY_BYTES:
            raise StoreError(f"{path}: larger than {_MAX_HISTORY_BYTES} bytes, not a store history")
        events = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                print(f"kdsignal: {path}:{lineno}: not JSON, skipped", file=sys.stderr)
                continue
            if isinstance(ev, dict) and _ID.match(str(ev.get("model", ""))) and ev.get("action") in ACTIONS:
                events.append(ev)
            else:
                print(f"kdsignal: {path}:{lineno}: not a switch event, skipped", file=sys.stderr)
        return events

    def previous_id(self) -> str | None:
        """The model promoted before the live one (what ``rollback`` picks by default)."""
        current = self.current_id()
        promoted = [e["model"] for e in self.history() if e["action"] == "promote"]
        # before the latest promotion of the live model (all of them when it was never promoted)
        before = promoted[: len(promoted) - 1 - promoted[::-1].index(current)] if current in promoted else promoted
        for model_id in reversed(before):
            if model_id != current and (self.root / f"{model_id}.npz").is_file():
                return model_id
        return None

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (one writer at a time across processes)."""
        self.check_root(create=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def add(self, artifact_path: str | Path, record: dict) -> str:
        """Copy a validated artifact into the store (atomically) with its record; return its id."""
        try:
            art = load_artifact(artifact_path)
        except ArtifactError as e:
            raise StoreError(f"{artifact_path}: not a valid artifact: {e}") from None
        data = Path(artifact_path).read_bytes()
        with self.locked():
            dest = self.artifact_path(art.model_id)
            if not dest.exists():
                atomic_write(dest, data)
            self.load(art.model_id)  # what landed on disk is what was validated
            full = {"model_id": art.model_id, "added_ms": _now_ms(), **record}
            atomic_write(self.root / f"{art.model_id}.json", _dumps(full))
        return art.model_id

    def switch(self, model_id: str, action: str, reason: str = "") -> str | None:
        """Make ``model_id`` current (after validating it); append the switch to history; return the old id."""
        with self.locked():
            self.load(model_id)
            try:
                previous = self.current_id()
            except StoreError:
                previous = None  # a broken link is exactly what a switch repairs
            link = self.root / CURRENT
            tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(f"{model_id}.npz", tmp)
            os.replace(tmp, link)
            fsync_dir(self.root)
            event = {"ms": _now_ms(), "action": action, "model": model_id, "previous": previous, "reason": reason}
            with open(self.root / HISTORY, "ab") as f:
                f.write(_dumps(event).replace(b"\n", b"") + b"\n")
                f.flush()
                os.fsync(f.fileno())
        return previous

    def promote(self, model_id: str, reason: str = "") -> str | None:
        """Make a stored model current as the newest promotion."""
        return self.switch(model_id, "promote", reason)

    def rollback(self, model_id: str | None = None, prepare=None) -> tuple[str, str | None]:
        """Make ``model_id`` (default: the one promoted before the live one) current; return (new, old).

        ``prepare(artifact_path)`` runs before the switch (the commands build the kernel there).
        """
        if model_id is not None:
            self.artifact_path(model_id)  # a bad id is named before anything else is looked at
            try:
                current = self.current_id()
            except StoreError:
                current = None  # an explicit id repairs a broken link
        else:
            current = self.current_id()
        target = model_id or self.previous_id()
        if target is None:
            raise StoreError(f"store {self.root}: no earlier model to roll back to")
        if target == current:
            raise StoreError(f"model {target} is already current")
        if prepare is not None:
            prepare(self.load(target).path)
        return target, self.switch(target, "rollback", "requested")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dumps(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode()


def _read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > _MAX_RECORD_BYTES:
            raise StoreError(f"{path}: larger than {_MAX_RECORD_BYTES} bytes, not a model record")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path}: unreadable model record ({e})") from None
    if not isinstance(doc, dict):
        raise StoreError(f"{path}: not a JSON object")
    return doc


# ---------------------------------------------------------------------- command line
@dataclass(frozen=True)
class _Target:
    """What the store commands act on: the store, the daemon to tell, how that daemon loads kernels."""

    store: ModelStore
    pid_file: str = ""
    kernel: str = "aot"
    kernel_dir: str = ""


def ensure_kernel(path: str | Path, kernel: str = "aot", kernel_dir: str = ""):
    """Build the artifact's compiled step where the daemon looks for it, then load it as the daemon will.

    The daemon never compiles (``kdsignal build-kernel`` does, ``daemon.tools.kernel_build``), so a model is
    switched to only once its step is there; returns the loaded model. StoreError says what failed.
    """
    from daemon.core.kernel_store import kernel_dir as default_kernel_dir
    from daemon.core.model import Model, student_vector
    from daemon.tools.kernel_build import BuildError, build_kernel

    try:
        if kernel == "aot":
            build_kernel(student_vector(load_artifact(path)), default_kernel_dir(kernel_dir or None))
        return Model.load(path, kernel=kernel, kernel_dir=kernel_dir or None)
    except ArtifactError as e:
        raise StoreError(f"{path}: not servable: {e}") from None
    except BuildError as e:
        raise StoreError(f"{path}: its kernel cannot be built: {e}") from None


def _target(args: argparse.Namespace) -> _Target:
    """The store, pid file and kernel settings from ``--store``/``--pid-file`` or the config's tables."""
    store, pid_file = args.store, getattr(args, "pid_file", None)
    kernel, kdir = "aot", ""
    if args.config:
        from daemon.core.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            raise StoreError(str(e)) from None
        if pid_file is None:
            pid_file = cfg.model.pid_file
        kernel, kdir = cfg.model.kernel, cfg.model.kernel_dir
        if store is None:
            s = cfg.retrain.get("store", DEFAULT_STORE)
            if not isinstance(s, str) or not s:
                raise StoreError(f"{args.config}: [retrain].store is {s!r}, expected a folder")
            store = str(Path(args.config).resolve().parent / s)
    if store is None:
        raise StoreError("no store: give --store DIR or --config FILE with [retrain].store")
    return _Target(ModelStore(store), pid_file or "", kernel, kdir)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=None, help="the model store folder")
    parser.add_argument("--config", default=None,
                        help="TOML file: [retrain].store names the store, [model].pid_file the daemon to tell")


def add_arguments_models(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal models``."""
    _common(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal rollback``."""
    parser.add_argument("model_id", nargs="?", default=None,
                        help="the model to make current (default: the one promoted before the live one)")
    _common(parser)
    parser.add_argument("--pid-file", default=None, help="SIGHUP the daemon whose pid this file holds")


def add_arguments_promote(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal promote``."""
    parser.add_argument("artifact", help="the artifact to add to the store and make current")
    _common(parser)
    parser.add_argument("--pid-file", default=None, help="SIGHUP the daemon whose pid this file holds")


def run_cli_promote(args: argparse.Namespace) -> int:
    """``kdsignal promote ARTIFACT``: put a hand-made artifact into the store and make it current (no gate)."""
    try:
        t = _target(args)
        ensure_kernel(args.artifact, t.kernel, t.kernel_dir)
        model_id = t.store.add(args.artifact, {"gate": {"verdict": "promoted by hand", "source": str(args.artifact)}})
        old = t.store.promote(model_id, f"kdsignal promote {args.artifact}")
        note = notify_daemon(t.pid_file)
    except (StoreError, PidFileError) as e:
        print(f"kdsignal promote: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"current: {old or '-'} -> {model_id}; {note}")
    return EXIT_OK


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000)) if ms else "-"


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _rows(store: ModelStore) -> tuple[list[dict], list[str], str | None, str | None]:
    models, junk = store.models()
    try:
        current, broken = store.current_id(), None
    except StoreError as e:
        current, broken = None, str(e)
    rows = []
    for sm in models:
        gate = sm.record.get("gate", {}) if isinstance(sm.record.get("gate"), dict) else {}
        data = sm.artifact.manifest.get("data", {}) if sm.artifact else {}
        rows.append({"model_id": sm.model_id, "live": sm.model_id == current, "added_ms": sm.added_ms,
                     "interval": data.get("interval"), "symbols": data.get("symbols"),
                     "data_end_ms": data.get("end_ms"), "gate": gate, "problem": sm.problem})
    return rows, junk, current, broken


def run_cli_models(args: argparse.Namespace) -> int:
    """``kdsignal models``: the stored models, their gate scores and which is live."""
    try:
        store = _target(args).store
        store.check_root()
        rows, junk, current, broken = _rows(store)
    except StoreError as e:
        print(f"kdsignal models: {e}", file=sys.stderr)
        return EXIT_CONFIG
    for name in junk:
        print(f"kdsignal models: {store.root / name}: not a store file, ignored", file=sys.stderr)
    if broken:
        print(f"kdsignal models: {broken}", file=sys.stderr)
    if args.json:
        print(json.dumps({"store": str(store.root), "current": current, "models": rows}, indent=1))
    else:
        print(f"{'':2}{'model_id':16}  {'added (UTC)':16}  {'itv':>3}  {'candidate':>9}  {'deployed':>9}  "
              f"{'delta ci95':>19}  verdict")
        for r in rows:
            g = r["gate"]
            ci = g.get("delta_ci95")
            ci_text = f"[{ci[0]:+.4f},{ci[1]:+.4f}]" if isinstance(ci, list) and len(ci) == 2 else "-"
            verdict = r["problem"] or g.get("verdict", "-")
            print(f"{'*' if r['live'] else ' ':2}{r['model_id']:16}  {_iso(r['added_ms']):16}  "
                  f"{r['interval'] or '-'!s:>3}  {_fmt(g.get('candidate_log_loss')):>9}  "
                  f"{_fmt(g.get('deployed_log_loss')):>9}  {ci_text:>19}  {verdict}")
        if not rows:
            print("  (no models)")
    return EXIT_CONFIG if broken or any(r["problem"] for r in rows) else EXIT_OK


def run_cli(args: argparse.Namespace) -> int:
    """``kdsignal rollback [MODEL_ID]``: make an earlier model current and tell the daemon."""
    try:
        t = _target(args)
        t.store.check_root()
        new, old = t.store.rollback(args.model_id, prepare=lambda path: ensure_kernel(path, t.kernel, t.kernel_dir))
        note = notify_daemon(t.pid_file)
    except (StoreError, PidFileError) as e:
        print(f"kdsignal rollback: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"current: {old or '-'} -> {new}; {note}")
    return EXIT_OK
