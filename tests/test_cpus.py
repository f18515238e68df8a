"""[cpu]: CPU lists checked at the door, the daemon pinned at start-up, its sink process kept off its CPUs."""

from __future__ import annotations

import argparse
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.core.config import ConfigError, parse_config
from daemon.core.cpus import MAX_CPU, format_cpu_list, parse_cpu_list, sink_cpus
from daemon.ops.affinity import apply_cpu_config
from daemon.tools.fake_bybit import FakeBybit
from tests.support import (
    OPEN_INDEX,
    Proc,
    log_events,
    sample_rows,
    wait_settled,
    wait_until,
    write_config,
    write_random_artifact,
)


def threads_cpus(pid: int) -> set[str]:
    """The distinct ``Cpus_allowed_list`` of every thread of ``pid``."""
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status", encoding="ascii") as f:
            out |= {line.split(":", 1)[1].strip() for line in f if line.startswith("Cpus_allowed_list:")}
    return out


def test_cpu_lists_parse_like_the_kernels():
    assert parse_cpu_list("k", "") == frozenset() == parse_cpu_list("k", "  ")
    assert parse_cpu_list("k", "0") == {0}
    assert parse_cpu_list("k", "0,2-3, 5") == {0, 2, 3, 5}
    assert parse_cpu_list("k", f"{MAX_CPU}") == {MAX_CPU}


@pytest.mark.parametrize("text", ["-1", "1-", "a", "3-1", "0,,1", "0,", str(MAX_CPU + 1), "\u00b2", "1 - 2",
                                  "0x1", "1;2", ",".join(["0"] * 3000)])
def test_a_bad_cpu_list_is_refused_naming_the_key(text):
    with pytest.raises(ConfigError, match=r"^\[cpu\]\.daemon is "):
        parse_cpu_list("[cpu].daemon", text)


def test_a_list_too_long_says_so():
    with pytest.raises(ConfigError, match="characters long"):
        parse_cpu_list("[cpu].daemon", ",".join(["0"] * 3000))
    assert parse_cpu_list("k", ",".join(map(str, range(0, 1024, 2)))) == set(range(0, 1024, 2))


@pytest.mark.parametrize("daemon, sinks, needle", [
    (f"0,{MAX_CPU}", "", "[cpu].daemon is '0,4095', but this machine has no CPU 4095"),
    (f"0-{MAX_CPU}", "", "[cpu].daemon is '0-4095', but this machine has no CPU"),
    ("", f"{MAX_CPU}", "[cpu].sinks is '4095', but this machine has no CPU 4095"),
])
def test_cpus_the_machine_lacks_are_refused_before_pinning(daemon, sinks, needle):
    """Even where the kernel would take the CPUs it has and drop the others, the start is refused."""
    before = os.sched_getaffinity(0)
    with pytest.raises(ConfigError) as err:
        apply_cpu_config(daemon, sinks)
    assert str(err.value).startswith(needle)
    assert os.sched_getaffinity(0) == before


@given(st.frozensets(st.integers(0, MAX_CPU), max_size=40))
def test_format_and_parse_round_trip(cpus):
    assert parse_cpu_list("k", format_cpu_list(cpus)) == cpus


def test_the_sink_process_keeps_off_the_daemons_cpus_by_default():
    allowed = frozenset({0, 1, 2, 3})
    assert sink_cpus(frozenset({0}), frozenset(), allowed) == {1, 2, 3}
    assert sink_cpus(frozenset({0}), frozenset({3}), allowed) == {3}  # told: as told
    assert sink_cpus(frozenset(), frozenset({2}), allowed) == {2}
    assert sink_cpus(frozenset(), frozenset(), allowed) is None  # nothing set: where it starts
    assert sink_cpus(frozenset({0}), frozenset(), frozenset({0})) is None  # no other CPU: shares the daemon's


def test_the_cpu_table_in_the_configuration():
    cfg = parse_config({"cpu": {"daemon": "0", "sinks": "1-3"}})
    assert (cfg.cpu.daemon, cfg.cpu.sinks) == ("0", "1-3")
    with pytest.raises(ConfigError, match=r"unknown key in \[cpu\]: sink$"):
        parse_config({"cpu": {"sink": "1"}})
    with pytest.raises(ConfigError, match=r"^\[cpu\]\.sinks is '1-x'"):
        parse_config({"cpu": {"sinks": "1-x"}})
    with pytest.raises(ConfigError, match=r"^\[cpu\]\.daemon is 0, expected a string"):
        parse_config({"cpu": {"daemon": 0}})


def test_run_refuses_a_cpu_the_machine_lacks(tmp_path, capsys):
    """A CPU this machine does not have: exit 78 and one line naming [cpu].daemon, before anything starts."""
    from daemon.aio.service import run_cli
    from daemon.core.exitcodes import EXIT_CONFIG

    before = os.sched_getaffinity(0)
    path = tmp_path / "k.toml"
    path.write_text(f'[cpu]\ndaemon = "{MAX_CPU}"\n')
    assert run_cli(argparse.Namespace(config=str(path))) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("kdsignal run: [cpu].daemon is '4095', but this machine has no CPU 4095")
    assert err.count("\n") == 1
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin the daemon and its sinks apart")
async def test_the_daemon_and_its_sink_process_run_where_configured(tmp_path):
    """[cpu] daemon = the first CPU: the daemon runs there, its sink process on the others, and it says so."""
    cpus = sorted(os.sched_getaffinity(0))
    log = tmp_path / "daemon.log"
    write_random_artifact(tmp_path / "a.npz")
    extra = f'\n[cpu]\ndaemon = "{cpus[0]}"\n\n[[sink]]\nkind = "redis"\nurl = "redis://127.0.0.1:9/0"\n'
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 40), "5", start_index=OPEN_INDEX) as fake:
        proc = await Proc().start(write_config(tmp_path / "c.toml", fake, log_file=log, extra=extra))
        try:
            started = {"sink_process_started", "daemon_started"}
            await wait_until(lambda: started <= {e["event"] for e in log_events(log)}, 30, "daemon and sinks start")
            events = {e["event"]: e for e in log_events(log)}
            child = events["sink_process_started"]["pid"]
            rest = format_cpu_list(cpus[1:])
            assert (events["daemon_started"]["cpus"], events["daemon_started"]["sink_cpus"]) == (str(cpus[0]), rest)
            # Every thread of each: the daemon pinned itself before starting any, the sink process was moved
            # by the daemon as it started, before its interpreter could start one.
            assert threads_cpus(proc.p.pid) == {str(cpus[0])}
            assert threads_cpus(child) == {rest}
            first = await wait_settled(fake, log)  # and it signals as ever
            assert (await proc.line())["start"] == first
        finally:
            await proc.stop()
