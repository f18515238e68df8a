"""Durable file writes and the daemon's pid file (service operations, no asyncio).

``atomic_write`` is how the model store and the pid file change on disk: a temporary file in the same
folder, ``fsync``, ``rename`` over the target, ``fsync`` of the folder, so a crash leaves the old content or
the new, never a mix. The pid file lets ``kdsignal retrain`` and ``kdsignal rollback`` tell a daemon that runs
outside systemd to reload (SIGHUP); under systemd ``systemctl reload kdsignal`` does that job.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

__all__ = ["PidFileError", "atomic_write", "fsync_dir", "notify_daemon", "remove_pid_file", "write_pid_file"]


class PidFileError(ValueError):
    """The pid file cannot be read or names a process this user may not signal; the message names it."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in folder ``path`` durable (the entry itself is data of the folder)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old content or the new, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def write_pid_file(path: str | Path) -> None:
    """Write this process's pid to ``path`` (atomically), for :func:`notify_daemon` to find."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, f"{os.getpid()}\n".encode())


def remove_pid_file(path: str | Path) -> None:
    """Remove ``path`` if it still names this process (a successor may have replaced it)."""
    with contextlib.suppress(OSError):
        if Path(path).read_text(encoding="ascii").strip() == str(os.getpid()):
            Path(path).unlink()


def notify_daemon(pid_file: str | Path | None) -> str:
    """SIGHUP the daemon named by ``pid_file`` so it reloads ``current``; return what was done.

    No pid file configured: nothing is sent (under systemd, ``systemctl reload kdsignal`` does it). A pid
    file that names no running process is reported, not an error: the next start serves ``current`` anyway.
    """
    if not pid_file:
        return "no pid file configured: reload the daemon yourself (systemctl reload kdsignal)"
    path = Path(pid_file)
    try:
        text = path.read_text(encoding="ascii", errors="replace")[:32].strip()
    except FileNotFoundError:
        return f"{path} does not exist: no daemon running, it will serve the new model when it starts"
    except OSError as e:
        raise PidFileError(f"pid file {path}: cannot read ({e.strerror or e})") from None
    if not text.isdigit() or int(text) <= 1:
        raise PidFileError(f"pid file {path}: holds {text!r}, expected a process id")
    pid = int(text)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return f"pid {pid} from {path} is not running: the daemon will serve the new model when it starts"
    except PermissionError:
        raise PidFileError(f"pid file {path}: not allowed to signal pid {pid} (another user's process?)") from None
    return f"sent SIGHUP to pid {pid}"
