"""``[cpu]``: which CPUs the daemon and its sink process run on, as Linux CPU lists ("0", "1-3", "0,2-3").

On a small machine the sink process, the servers and the consumers wake up for every burst of closes, and
the daemon's slowest bars are the ones that lose their core to them. A CPU of the daemon's own keeps them
off it (BENCHMARKS.md, "Sinks"). The lists are checked here when the configuration is read; applying them
at start-up is :mod:`daemon.ops.affinity`.
"""

from __future__ import annotations

from daemon.core.errors import ConfigError

__all__ = ["MAX_CPU", "format_cpu_list", "parse_cpu_list", "sink_cpus"]

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
