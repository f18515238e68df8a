"""The interval table: one source for the parser, the config and the artifact; "M" refused by all of them."""

from __future__ import annotations

import datetime

import pytest

from daemon.core.artifact import ArtifactError, load_artifact
from daemon.core.config import ConfigError, parse_config
from daemon.core.intervals import GRID_OFFSET_MS, INTERVAL_MS, interval_ms
from tests.support import write_random_artifact


def test_every_interval_has_its_length():
    """Each Bybit interval with a fixed length maps to its milliseconds; the weekly grid starts on a Monday."""
    assert interval_ms("1") == 60_000 and interval_ms("720") == 12 * 3_600_000
    assert interval_ms("D") == 86_400_000 and interval_ms("W") == 7 * 86_400_000
    monday = datetime.datetime.fromtimestamp(GRID_OFFSET_MS["W"] / 1e3, datetime.UTC)
    assert monday.weekday() == 0 and (monday.hour, monday.minute) == (0, 0)
    assert all(INTERVAL_MS[k] % 60_000 == 0 for k in INTERVAL_MS)


@pytest.mark.parametrize("bad", ["M", "2", "", None, 5])
def test_unknown_interval_is_refused_naming_it(bad):
    """An interval outside the table raises ValueError naming it, "M" included (no fixed length)."""
    with pytest.raises(ValueError, match="unsupported interval") as err:
        interval_ms(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("interval", sorted(INTERVAL_MS))
def test_config_and_artifact_accept_the_same_intervals(interval, tmp_path):
    """The daemon's config and the artifact loader both accept every interval of the table."""
    cfg = parse_config({"feed": {"interval": interval}})
    assert cfg.feed.interval_ms == INTERVAL_MS[interval]
    write_random_artifact(tmp_path / "a.npz", interval=interval)
    assert load_artifact(tmp_path / "a.npz").interval == interval


def test_config_and_artifact_both_refuse_months(tmp_path):
    """"M" is refused by the config and by the artifact (already when it is written), each naming the field."""
    with pytest.raises(ConfigError, match=r"\[feed\]\.interval is 'M'"):
        parse_config({"feed": {"interval": "M"}})
    with pytest.raises(ArtifactError, match=r"data\.interval: 'M'"):
        write_random_artifact(tmp_path / "a.npz", interval="M")
    assert not (tmp_path / "a.npz").exists()
