"""``[[sink]]`` tables: validated at the door, secrets only from the environment or a credentials file."""

from __future__ import annotations

import argparse
import tomllib

import pytest

from daemon.core.config import ConfigError, load_config, parse_config
from daemon.core.sinks_config import NatsSinkConfig, RedisSinkConfig, WebhookSinkConfig, read_secret, redacted

CONTRACT = """
[[sink]]
kind = "redis"
url = "redis://127.0.0.1:6379/0"
stream = "kdsignal:signals"
[[sink]]
kind = "nats"
url = "nats://127.0.0.1:4222"
subject = "kdsignal.signals"
[[sink]]
kind = "webhook"
url = "https://example.invalid/hook"
"""


def test_the_issue_contract_parses(tmp_path):
    """The three tables of the issue's Contract give one sink each, named by kind, with defaults elsewhere."""
    path = tmp_path / "k.toml"
    path.write_text(CONTRACT)
    redis, nats, hook = load_config(path).sinks
    assert isinstance(redis, RedisSinkConfig) and redis.stream == "kdsignal:signals" and redis.name == "redis"
    assert isinstance(nats, NatsSinkConfig) and nats.subject == "kdsignal.signals" and not nats.jetstream
    assert isinstance(hook, WebhookSinkConfig) and hook.url == "https://example.invalid/hook"
    assert load_config(path).sinks[0].queue_size == 10_000


def test_repeated_kinds_are_numbered():
    """Two sinks of one kind get distinct names (redis-1, redis-2) unless named."""
    cfg = parse_config({"sink": [{"kind": "redis"}, {"kind": "redis"}, {"kind": "nats", "name": "bus"}]})
    assert [s.name for s in cfg.sinks] == ["redis-1", "redis-2", "bus"]


@pytest.mark.parametrize("tables, message", [
    ({"kind": "redis"}, "expected [[sink]] tables"),
    ([{"kind": "kafka"}], "kind is 'kafka'"),
    ([{"kind": "redis", "passwd": "x"}], "unknown key in [[sink]] 1 (redis): passwd"),
    ([{"kind": "redis", "url": "redis://:hunter2@127.0.0.1:6379/0"}], "url carries a password"),
    ([{"kind": "nats", "url": "nats://u:hunter2@127.0.0.1:4222"}], "url carries a password"),
    ([{"kind": "webhook", "url": "https://u:hunter2@example.invalid/h"}], "secret_env or secret_file"),
    ([{"kind": "webhook"}], "url is empty"),
    ([{"kind": "webhook", "url": "ftp://example.invalid/h"}], "expected a http:// or https:// URL"),
    ([{"kind": "redis", "queue_size": 0}], "queue_size is 0"),
    ([{"kind": "redis", "maxlen": -1}], "maxlen is -1"),
    ([{"kind": "nats", "subject": "kdsignal.>"}], "without wildcards"),
    ([{"kind": "nats", "password_env": "P"}], "names a password but no user"),
    ([{"kind": "redis", "password_env": "P", "password_file": "f"}], "name one place for the secret"),
    ([{"kind": "redis", "name": "a b"}], "expected letters, digits"),
    ([{"kind": "redis", "name": "x"}, {"kind": "nats", "name": "x"}], "x is used twice"),
    ([{"kind": "redis", "timeout_s": "5"}], "expected a number"),
])
def test_bad_tables_are_refused(tables, message):
    """Every bad value is refused with a message naming the table and the key."""
    with pytest.raises(ConfigError) as err:
        parse_config({"sink": tables})
    assert message in str(err.value)


def test_secret_from_environment_and_files(tmp_path):
    """A secret comes from the named variable, or a file: absolute, in $CREDENTIALS_DIRECTORY, or by the config."""
    env_cfg = parse_config({"sink": [{"kind": "redis", "password_env": "PW"}]}).sinks[0]
    assert read_secret(env_cfg, {"PW": "from-env"}) == "from-env"
    with pytest.raises(ConfigError, match="environment variable PW"):
        read_secret(env_cfg, {})
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "hook").write_text("from-credentials\n")
    (tmp_path / "hook").write_text("beside-the-config\n")
    file_cfg = parse_config({"sink": [{"kind": "webhook", "url": "http://127.0.0.1:1/", "secret_file": "hook"}]},
                            base_dir=tmp_path).sinks[0]
    assert read_secret(file_cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == "from-credentials"
    assert read_secret(file_cfg, {}) == "beside-the-config"
    with pytest.raises(ConfigError, match="cannot read secret_file"):
        read_secret(file_cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path / "nowhere")})
    assert read_secret(parse_config({"sink": [{"kind": "redis"}]}).sinks[0], {}) is None


def test_secret_is_not_in_the_config_repr():
    """The parsed configuration holds where the secret is, never the secret itself."""
    cfg = parse_config({"sink": [{"kind": "redis", "password_env": "KDSIGNAL_REDIS_PASSWORD"}]})
    assert "KDSIGNAL_REDIS_PASSWORD" in repr(cfg) and not hasattr(cfg.sinks[0], "password")


@pytest.mark.parametrize("table, message", [
    ('kind = "redis"\nurl = "redis://:pw@127.0.0.1:6379/0"', "url carries a password"),
    ('kind = "redis"\npassword_env = "KDSIGNAL_TEST_UNSET_VAR"', "KDSIGNAL_TEST_UNSET_VAR"),
])
def test_run_exits_78_naming_the_problem(tmp_path, capsys, monkeypatch, table, message):
    """``kdsignal run`` refuses a password in a URL, or a secret it cannot read, with exit 78 and one line."""
    from daemon.aio.service import run_cli
    from daemon.core.exitcodes import EXIT_CONFIG

    monkeypatch.delenv("KDSIGNAL_TEST_UNSET_VAR", raising=False)
    path = tmp_path / "k.toml"
    path.write_text(f"[[sink]]\n{table}\n")
    assert run_cli(argparse.Namespace(config=str(path))) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("kdsignal run: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("table, needle", [
    ('kind = "nats"\nurl = "nats://127.0.0.1:4222"\nsubject = "s"\ntimeout_s = inf', "timeout_s"),
    ('kind = "redis"\nurl = "redis://127.0.0.1:6379/0"\nqueue_size = 100000000000000000000', "queue_size"),
    ('kind = "redis"\nurl = "redis:///0"', "expected a host"),
    ('kind = "webhook"\nurl = "http://127.0.0.1/ho ok"', "NUL or a space"),
])
def test_out_of_range_numbers_and_hostless_urls_are_refused(table, needle):
    """Non-finite or absurd sink numbers and a URL without a host are configuration errors naming the key."""
    with pytest.raises(ConfigError, match=needle):
        parse_config(tomllib.loads(f"[[sink]]\n{table}\n"))


def test_logged_url_drops_user_info_and_query():
    """A webhook token in the query or a user name never reaches the log."""
    assert redacted("https://u@example.invalid:8443/hook?token=hunter2#x") == "https://example.invalid:8443/hook"
    assert redacted("redis://[::1]:6379/0") == "redis://[::1]:6379/0"
