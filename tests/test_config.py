"""Daemon configuration: defaults, the shipped config.toml, refusals that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from daemon.core.config import Config, ConfigError, load_config, parse_config
from tests.support import ROOT


def test_shipped_config_equals_the_defaults():
    """The documented config.toml parses to exactly the built-in defaults (paths resolved to its folder)."""
    cfg = load_config(ROOT / "config.toml")
    default = Config()
    assert cfg.feed == default.feed and cfg.backoff == default.backoff and cfg.rest == default.rest
    assert cfg.log == default.log and cfg.metrics == default.metrics
    assert cfg.model.artifact == str(ROOT / "models" / "default.npz")
    assert cfg.feed.interval_ms == 300_000


def test_empty_document_gives_defaults():
    """Every key has a default: an empty file is a valid configuration."""
    cfg = parse_config({})
    assert dataclasses.replace(cfg, source="<defaults>") == Config()


def test_values_are_coerced_and_frozen():
    """Integers are accepted for float keys, lists become tuples, and the result is immutable."""
    cfg = parse_config({"feed": {"symbols": ["SOLUSDT"], "ping_interval_s": 5}, "metrics": {"enabled": True}})
    assert cfg.feed.symbols == ("SOLUSDT",) and cfg.feed.ping_interval_s == 5.0 and cfg.metrics.enabled
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.feed.interval = "1"


@pytest.mark.parametrize("raw, words", [
    ({"feed": {"ws_urll": "x"}}, r"unknown key in \[feed\]: ws_urll"),
    ({"feed": {"a": 1, "b": 2}}, r"unknown keys in \[feed\]: a, b"),
    ({"fead": {}}, "unknown table in <dict>: fead"),
    ({"feed": {"symbols": "BTCUSDT"}}, r"\[feed\].symbols is 'BTCUSDT', expected a list of strings"),
    ({"feed": {"symbols": []}}, r"\[feed\].symbols is empty"),
    ({"feed": {"symbols": ["btcusdt"]}}, r"\[feed\].symbols has 'btcusdt'"),
    ({"feed": {"symbols": ["BTCUSDT", "BTCUSDT"]}}, "twice"),
    ({"feed": {"interval": 5}}, r"\[feed\].interval is 5, expected a string"),
    ({"feed": {"interval": "7"}}, r"\[feed\].interval is '7'"),
    ({"feed": {"interval": "M"}}, r"\[feed\].interval is 'M'"),
    ({"feed": {"category": "option"}}, r"\[feed\].category is 'option'"),
    ({"feed": {"ws_url": "http://x"}}, r"\[feed\].ws_url"),
    ({"feed": {"rest_url": "ws://x"}}, r"\[feed\].rest_url"),
    ({"feed": {"pong_timeout_s": 0}}, r"\[feed\].pong_timeout_s is 0.0"),
    ({"feed": {"ping_interval_s": True}}, r"\[feed\].ping_interval_s is True, expected a number"),
    ({"backoff": {"jitter": 1.5}}, r"\[backoff\].jitter"),
    ({"backoff": {"factor": 0.5}}, r"\[backoff\].factor"),
    ({"rest": {"page_limit": 5000}}, r"\[rest\].page_limit is 5000"),
    ({"rest": {"max_attempts": 1.5}}, r"\[rest\].max_attempts is 1.5, expected an integer"),
    ({"log": {"level": "loud"}}, r"\[log\].level is 'loud'"),
    ({"metrics": {"enabled": "yes"}}, r"\[metrics\].enabled is 'yes', expected true or false"),
    ({"metrics": {"port": 70000}}, r"\[metrics\].port is 70000"),
    ({"model": {"artifact": ""}}, r"\[model\].artifact is empty"),
    ({"feed": 3}, r"\[feed\] is int, expected a table"),
    ({"rest": {"timeout_s": float("inf")}}, r"\[rest\].timeout_s is inf, expected a finite number"),
    ({"feed": {"ping_interval_s": float("nan")}}, r"\[feed\].ping_interval_s is nan, expected a finite number"),
    ({"backoff": {"max_s": 1e12}}, r"\[backoff\].max_s is 1000000000000.0, expected > 0 and <= 3600"),
    ({"backoff": {"jitter": float("nan")}}, r"\[backoff\].jitter"),
    ({"rest": {"max_attempts": 10**18}}, r"\[rest\].max_attempts is 1000000000000000000, expected 1..100"),
    ({"rest": {"max_attempts": 0}}, r"\[rest\].max_attempts is 0, expected 1..100"),
    ({"rest": {"warmup_extra_bars": -1}}, r"\[rest\].warmup_extra_bars"),
    ({"metrics": {"port": -1}}, r"\[metrics\].port is -1"),
    ({"feed": {"ws_url": "ws://"}}, r"\[feed\].ws_url is 'ws://', which names no host"),
    ({"feed": {"ws_url": "wss://:443/v5"}}, r"names no host"),
    ({"feed": {"rest_url": "https://"}}, r"\[feed\].rest_url is 'https://', which names no host"),
    ({"feed": {"ws_url": "ws://127.0.0.1:99999/v5"}}, r"\[feed\].ws_url is .*Port out of range"),
    ({"feed": {"symbols": [f"S{i}" for i in range(10_001)]}}, r"\[feed\].symbols lists 10001 symbols"),
    ({"log": {"file": "a\0b"}}, "NUL"),
    ({"train": 3}, r"\[train\] is int"),
])
def test_bad_values_are_refused_naming_the_key(raw, words):
    """Each bad value raises ConfigError naming the table and key."""
    with pytest.raises(ConfigError, match=words):
        parse_config(raw)


def test_train_table_is_accepted_untouched():
    """A [train] table is kept as-is for the training code; the daemon does not validate it."""
    train = {"anything": {"goes": [1, 2]}, "epochs": "many"}
    assert parse_config({"train": train}).train == train


def test_relative_paths_resolve_against_the_file(tmp_path):
    """Artifact and log paths are relative to the config file, absolute ones are kept."""
    (tmp_path / "c.toml").write_text('[model]\nartifact = "m/a.npz"\n[log]\nfile = "/var/log/k.log"\n')
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.model.artifact == str(tmp_path / "m" / "a.npz") and cfg.log.file == "/var/log/k.log"


def test_missing_and_invalid_files(tmp_path):
    """A missing file and invalid TOML are ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[feed\n")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_default_artifact_is_the_shipped_model_wherever_the_file_is(tmp_path):
    """A config outside the checkout that names no artifact gets the shipped model, a named one its own dir."""
    from daemon.core.config import load_config

    (tmp_path / "a.toml").write_text('[feed]\nsymbols = ["BTCUSDT"]\n')
    assert Path(load_config(tmp_path / "a.toml").model.artifact) == ROOT / "models" / "default.npz"
    (tmp_path / "b.toml").write_text('[model]\nartifact = "m/x.npz"\n')
    assert Path(load_config(tmp_path / "b.toml").model.artifact) == tmp_path / "m" / "x.npz"


def test_non_utf8_huge_and_folder_files_are_refused(tmp_path):
    """A configuration that is not UTF-8, is over 1 MiB, or is a folder is a ConfigError naming the file."""
    (tmp_path / "latin1.toml").write_bytes('[feed]\nsymbols = ["BTCUSDT"] # caf\xe9\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml is not UTF-8"):
        load_config(tmp_path / "latin1.toml")
    (tmp_path / "big.toml").write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(tmp_path / "big.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)
    (tmp_path / "deep.toml").write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.toml"):
        load_config(tmp_path / "deep.toml")


def test_a_log_folder_that_does_not_exist_is_a_config_error(tmp_path):
    """[log].file in a missing folder, or naming a folder, is refused at load with the folder named."""
    (tmp_path / "c.toml").write_text('[log]\nfile = "nowhere/signals.log"\n')
    with pytest.raises(ConfigError, match=r"folder .*nowhere does not exist"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text(f'[log]\nfile = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match="which is a folder"):
        load_config(tmp_path / "d.toml")
    (tmp_path / "e.toml").write_text('[log]\nfile = "signals.log"\n')
    assert load_config(tmp_path / "e.toml").log.file == str(tmp_path / "signals.log")


@pytest.mark.parametrize(("host", "enabled", "beyond"), [
    ("127.0.0.1", True, False), ("127.0.0.2", True, False), ("::1", True, False), ("localhost", True, False),
    ("0.0.0.0", True, True), ("", True, True), ("::", True, True), ("192.168.1.5", True, True),
    ("metrics.example", True, True), ("0.0.0.0", False, False),
])
def test_metrics_beyond_loopback_is_flagged(host, enabled, beyond):
    """An enabled metrics endpoint bound beyond loopback is flagged for the start-up warning."""
    cfg = parse_config({"metrics": {"enabled": enabled, "host": host}})
    assert cfg.metrics.beyond_loopback is beyond
