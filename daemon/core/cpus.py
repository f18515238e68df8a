"""``[cpu]``: which CPUs the daemon and its sink process run on, as Linux CPU lists ("0", "1-3", "0,2-3").

On a small machine the sink process, the servers and the consumers wake up for every burst of closes, and
the daemon's slowest bars are the ones that lose their core to them. A core of the daemon's own keeps them
off it (BENCHMARKS.md, "Sinks"). The lists are checked when the configuration is read; whether the CPUs
exist and may be used is known only when the daemon pins itself at start-up, which refuses to start, naming
the key, if the kernel says no.
"""

from __future__ import annotations

import os

from daemon.core.errors import ConfigError

__all__ = ["MAX_CPU", "apply_cpu_config", "format_cpu_list", "parse_cpu_list", "pin_daemon", "sink_cpus"]

MAX_CPU = 4095  # the kernel's default NR_CPUS on x86-64 distributions is 8192; no sane list goes past this
_MAX_TEXT = 256


def parse_cpu_list(where: str, text: str) -> frozenset[int]:
    """The CPUs of a list like "0", "1-3" or "0,2-3"; empty for ""; ``ConfigError`` naming ``where`` else."""
    text = text.strip()
    if not text:
        return frozenset()
    bad = ConfigError(f"{where} is {text[:_MAX_TEXT]!r}, expected CPU numbers and ranges like \"0\" or \"1-3,5\"")
    if len(text) > _MAX_TEXT:
        raise bad
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or not low.isascii() or not high.isascii():
            raise bad
        first, last = int(low), int(high) if dash else int(low)
        if first > last or last > MAX_CPU:
            raise ConfigError(f"{where} is {text!r}: {part.strip()!r} is not a range of CPUs 0..{MAX_CPU}")
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


def pin_daemon(cpus: frozenset[int]) -> None:
    """Pin this process to ``cpus`` (nothing when empty); ``ConfigError`` naming ``[cpu].daemon`` if refused."""
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        have = format_cpu_list(os.sched_getaffinity(0))
        raise ConfigError(f"[cpu].daemon is {format_cpu_list(cpus)!r}, which the kernel refused "
                          f"({exc.strerror or exc}); this process may run on CPUs {have}") from None


def apply_cpu_config(daemon: str, sinks: str) -> frozenset[int] | None:
    """Apply ``[cpu]`` at start-up, before threads and children: pin this process to ``daemon`` and return the
    sink process's CPUs (:func:`sink_cpus`); ``ConfigError`` naming the key if a list is bad or refused."""
    allowed = frozenset(os.sched_getaffinity(0))
    daemon_cpus = parse_cpu_list("[cpu].daemon", daemon)
    pin_daemon(daemon_cpus)
    return sink_cpus(daemon_cpus, parse_cpu_list("[cpu].sinks", sinks), allowed)
