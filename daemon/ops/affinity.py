"""Applying ``[cpu]`` at start-up: every CPU named must exist, and the daemon's pin must hold as asked (a
cpuset can narrow it silently), or the start is refused naming the key (the lists: daemon.core.cpus)."""

from __future__ import annotations

import os

from daemon.core.cpus import format_cpu_list, parse_cpu_list, sink_cpus
from daemon.core.errors import ConfigError

__all__ = ["apply_cpu_config", "pin_daemon"]


def _check_exist(where: str, cpus: frozenset[int], machine: frozenset[int]) -> None:
    missing = cpus - machine
    if missing:
        raise ConfigError(f"{where} is {format_cpu_list(cpus)!r}, but this machine has no CPU "
                          f"{format_cpu_list(missing)} (it has {format_cpu_list(machine)})")


def pin_daemon(cpus: frozenset[int]) -> None:
    """Pin the calling thread, and every thread and child it starts later, to ``cpus`` (nothing when empty);
    ``ConfigError`` naming ``[cpu].daemon`` if the kernel refuses or narrows it. Call it before any thread
    starts: threads already running keep their CPUs."""
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        raise ConfigError(f"[cpu].daemon is {format_cpu_list(cpus)!r}, which the kernel refused "
                          f"({exc.strerror or exc}); this process may run on CPUs "
                          f"{format_cpu_list(os.sched_getaffinity(0))}") from None
    got = frozenset(os.sched_getaffinity(0))
    if got != cpus:
        raise ConfigError(f"[cpu].daemon is {format_cpu_list(cpus)!r}, but the kernel lets this process run on "
                          f"CPUs {format_cpu_list(got)} of it only (a cpuset?)")


def apply_cpu_config(daemon: str, sinks: str) -> frozenset[int] | None:
    """Apply ``[cpu]`` at start-up, before threads and children: pin the daemon to ``daemon`` and return the
    sink process's CPUs (:func:`sink_cpus`); ``ConfigError`` naming the key if a list is bad or refused."""
    machine = frozenset(range(os.cpu_count() or 1))
    allowed = frozenset(os.sched_getaffinity(0))
    daemon_cpus = parse_cpu_list("[cpu].daemon", daemon)
    sink_list = parse_cpu_list("[cpu].sinks", sinks)
    _check_exist("[cpu].daemon", daemon_cpus, machine)
    _check_exist("[cpu].sinks", sink_list, machine)
    pin_daemon(daemon_cpus)
    return sink_cpus(daemon_cpus, sink_list, allowed)
