"""``[cpu]``: which CPUs the daemon and its sink process run on, as Linux CPU lists ("0", "1-3", "0,2-3").

On a small machine the sink process, the servers and the consumers wake up for every burst of closes, and
the daemon's slowest bars are the ones that lose their core to them. A CPU of the daemon's own keeps them
off it (BENCHMARKS.md, "Sinks"). The lists are checked when the configuration is read; at start-up every
CPU named must exist, and the daemon's pin must hold as asked (a cpuset can narrow it silently), or the
start is refused naming the key.
"""

from __future__ import annotations

import os

from daemon.core.errors import ConfigError

__all__ = ["MAX_CPU", "apply_cpu_config", "format_cpu_list", "parse_cpu_list", "pin_daemon", "sink_cpus"]

MAX_CPU = 4095  # the kernel's default NR_CPUS on x86-64 distributions is 8192; no sane list goes past this
_MAX_TEXT = 4096  # every CPU up to MAX_CPU, one by one, is longer: a range says it shorter


def parse_cpu_list(where: str, text: str) -> frozenset[int]:
    """The CPUs of a list like "0", "1-3" or "0,2-3"; empty for ""; ``ConfigError`` naming ``where`` else."""
    text = text.strip()
    if not text:
        return frozenset()
    if len(text) > _MAX_TEXT:
        raise ConfigError(f"{where} is {len(text)} characters long, more than {_MAX_TEXT}: use ranges like \"0-63\"")
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not (low.isascii() and low.isdigit()) or (dash and not (high.isascii() and high.isdigit())):
            raise ConfigError(f"{where} is {text[:200]!r}, expected CPU numbers and ranges like \"0\" or \"1-3,5\"")
        first, last = int(low), int(high) if dash else int(low)
        if first > last or last > MAX_CPU:
            raise ConfigError(f"{where} is {text[:200]!r}: {part.strip()!r} is not a range of CPUs 0..{MAX_CPU}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus) -> str:
    """The shortest CPU list for ``cpus`` ({0, 1, 2, 5} -> "0-2,5")."""
    out, run = [], []
    for cpu in sorted(cpus):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def sink_cpus(daemon: frozenset[int], sinks: frozenset[int], allowed: frozenset[int]) -> frozenset[int] | None:
    """The sink process's CPUs: ``sinks`` when given; else, when the daemon is pinned, the CPUs this process
    may use (``allowed``, before pinning) without the daemon's, so the sinks keep off its core; None (as
    started) when neither is set or no other CPU is left."""
    if sinks:
        return sinks
    rest = allowed - daemon if daemon else frozenset()
    return rest or None


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
