"""The decision policy (daemon/core/policy.py): hand cases for argmax and thresholds, where the threshold comes
from, the emit modes through the pipeline and the writer, and replay == live with a threshold policy."""

from __future__ import annotations

import math

import pytest

from daemon.aio.output import SignalWriter
from daemon.core.config import ConfigError, SignalConfig, parse_config
from daemon.core.model import Model
from daemon.core.pipeline import Pipeline, Signal
from daemon.core.policy import argmax, resolve
from daemon.tools.fake_bybit import FakeBybit
from daemon.tools.replay import replay
from tests.support import BAR_MS, OPEN_INDEX, InProcessDaemon, LineSink, sample_rows, wait_until, write_random_artifact

CLASSES = ("sell", "hold", "buy")
SELL, HOLD, BUY = range(3)
POLICY = {"kind": "threshold", "edge": "p_buy - p_sell",
          "cases": {"taker": {"threshold": 0.3, "hold_bars": 1}, "maker": {"threshold": 0.1, "hold_bars": 3}}}


@pytest.fixture
def policy_artifact(tmp_path):
    """A random-weight artifact whose manifest carries a policy (taker 0.3, maker 0.1)."""
    path = tmp_path / "policy.npz"
    write_random_artifact(path, policy=POLICY)
    return path


def sig_cfg(**kw) -> SignalConfig:
    """A validated [signal] table."""
    return parse_config({"signal": kw}).signal


def test_argmax_keeps_the_kernel_class():
    """argmax returns the step's class whatever the probabilities say about the edge."""
    p = argmax(CLASSES)
    assert [p.decide(k, (0.1, 0.2, 0.7)) for k in (SELL, HOLD, BUY)] == [SELL, HOLD, BUY]
    assert p.describe() == {"policy": "argmax", "emit": "all"}
    assert p.plain and not argmax(CLASSES, "changes").plain  # the pipeline skips the calls only when plain


def test_threshold_from_the_manifest_by_fee_case(policy_artifact):
    """Without [signal].threshold the fee case picks the manifest's threshold; edges at it hold, beyond it act."""
    model = Model.load(policy_artifact)
    taker = resolve(sig_cfg(policy="threshold"), model)
    maker = resolve(sig_cfg(policy="threshold", fee_case="maker"), model)
    assert (taker.threshold, taker.source) == (0.3, "artifact policy.cases.taker")
    assert (maker.threshold, maker.source) == (0.1, "artifact policy.cases.maker")
    # edge = p_buy - p_sell; the argmax passed in (HOLD here, SELL below) does not matter to a threshold
    cases = [((0.2, 0.3, 0.5), HOLD, HOLD, BUY),      # edge 0.3: not > 0.3 for taker, > 0.1 for maker
             ((0.1, 0.3, 0.6), HOLD, BUY, BUY),       # edge 0.5
             ((0.6, 0.35, 0.05), SELL, SELL, SELL),   # edge -0.55
             ((0.35, 0.4, 0.25), SELL, HOLD, SELL),   # edge -0.1 (float: just below -0.1) for maker
             ((0.4, 0.2, 0.4), BUY, HOLD, HOLD)]      # edge 0: argmax said buy, the policy holds
    for probs, k, want_taker, want_maker in cases:
        edge = probs[BUY] - probs[SELL]
        assert taker.decide(k, probs) == want_taker, probs
        assert maker.decide(k, probs) == (want_maker if edge < -0.1 or edge > 0.1 else HOLD), probs


def test_config_threshold_overrides_the_manifest(policy_artifact):
    """[signal].threshold wins over the artifact's, and 1 never acts (the shipped policy's value)."""
    model = Model.load(policy_artifact)
    p = resolve(sig_cfg(policy="threshold", threshold=0.05), model)
    assert (p.threshold, p.source) == (0.05, "[signal].threshold")
    assert p.decide(HOLD, (0.3, 0.3, 0.4)) == BUY
    never = resolve(sig_cfg(policy="threshold", threshold=1), model)
    assert [never.decide(k, probs) for k, probs in ((BUY, (0.0, 0.0, 1.0)), (SELL, (1.0, 0.0, 0.0)))] == [HOLD, HOLD]


def test_missing_thresholds_are_named(random_artifact, policy_artifact):
    """A threshold policy with no threshold anywhere, or an unknown fee case, is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"stores no policy.*set \[signal\]\.threshold"):
        resolve(sig_cfg(policy="threshold"), Model.load(random_artifact))
    with pytest.raises(ConfigError, match=r"\[signal\]\.fee_case is 'vip'.*maker, taker"):
        resolve(sig_cfg(policy="threshold", fee_case="vip"), Model.load(policy_artifact))
    assert resolve(sig_cfg(policy="threshold", threshold=0.2), Model.load(random_artifact)).threshold == 0.2


@pytest.mark.parametrize(("table", "message"), [
    ({"policy": "max"}, r"\[signal\]\.policy is 'max'"),
    ({"emit": "some"}, r"\[signal\]\.emit is 'some'"),
    ({"threshold": 1.5}, r"\[signal\]\.threshold is 1\.5"),
    ({"threshold": math.nan}, r"\[signal\]\.threshold is nan"),
    ({"fee_case": ""}, r"\[signal\]\.fee_case is ''"),
    ({"thresh": 0.1}, r"unknown key in \[signal\]: thresh"),
])
def test_bad_signal_table_is_refused(table, message):
    """Each bad [signal] key is refused at load with its name."""
    with pytest.raises(ConfigError, match=message):
        parse_config({"signal": table})


class Frozen:
    """A model stand-in whose step returns scripted probabilities: exact edges need exact probabilities, which
    random weights cannot be made to give (the real model runs in the replay == live test below)."""

    classes = CLASSES
    id = "0123456789abcdef"
    warmup_bars = 0
    def __init__(self, script):
        self.script = list(script)
        self.manifest: dict = {}

    def new_state(self):
        return _State(self.script)


class _State:
    warm = True

    def __init__(self, script):
        self.script = iter(script)
        self.probs = None

    def update(self, o, h, low, c, v):
        import numpy as np

        self.probs = np.array(next(self.script))
        return int(self.probs.argmax())

    def rebind(self, model):
        return _State(model.script)


# p_buy - p_sell per bar: 0.5, 0.5, 0.0, -0.5, -0.5, 0.5 -> threshold 0.2: buy buy hold sell sell buy
SCRIPT = [(0.1, 0.3, 0.6), (0.1, 0.3, 0.6), (0.2, 0.6, 0.2), (0.6, 0.3, 0.1), (0.6, 0.3, 0.1), (0.1, 0.3, 0.6)]


def written(emit: str, symbols=("BTCUSDT", "ETHUSDT")) -> list[tuple[str, str]]:
    """Run the scripted bars through one pipeline per symbol (interleaved) and a writer; the lines it wrote."""
    from daemon.core.parser import Candle

    policy = resolve(sig_cfg(policy="threshold", threshold=0.2, emit=emit), Frozen([]))
    pipes = {s: Pipeline(s, "5", Frozen(SCRIPT), fetches_history=False, policy=policy) for s in symbols}
    sink = LineSink()
    writer = SignalWriter(sink)
    for i in range(len(SCRIPT)):
        for s, p in pipes.items():
            p.receive_close(Candle(s, "5", i * BAR_MS, 1.0, 1.0, 1.0, 1.0, 1.0))
            for ev in p.events():
                if type(ev) is Signal:
                    writer.write(ev)
    assert writer.written + writer.suppressed == len(SCRIPT) * len(symbols)
    return [(x["symbol"], x["signal"]) for x in sink.lines]


def test_emit_all_actionable_changes_per_symbol():
    """all writes every bar; actionable only buy/sell; changes the first and every change, per symbol."""
    decisions = ["buy", "buy", "hold", "sell", "sell", "buy"]
    both = lambda ds: [(s, d) for d in ds for s in ("BTCUSDT", "ETHUSDT")]  # noqa: E731 - reads as the table
    assert written("all") == both(decisions)
    assert written("actionable") == both(["buy", "buy", "sell", "sell", "buy"])
    # ETHUSDT's first line is emitted though BTCUSDT just said buy: each series remembers its own last signal
    assert written("changes") == both(["buy", "hold", "sell", "buy"])


def test_line_keeps_probs_and_says_the_decision():
    """The written line's probs are the model's; its signal is the policy's, not the argmax."""
    from daemon.core.parser import Candle

    policy = resolve(sig_cfg(policy="threshold", threshold=0.45), Frozen([]))
    p = Pipeline("BTCUSDT", "5", Frozen([(0.05, 0.5, 0.45)]), fetches_history=False, policy=policy)
    p.receive_close(Candle("BTCUSDT", "5", 0, 1.0, 1.0, 1.0, 1.0, 1.0))
    sink = LineSink()
    SignalWriter(sink).write(p.events()[0])
    line = sink.lines[0]
    assert line["probs"] == {"sell": 0.05, "hold": 0.5, "buy": 0.45}
    assert line["signal"] == "hold"  # argmax says hold too; edge 0.4 < 0.45
    p.set_model(Frozen([(0.05, 0.45, 0.5)]), resolve(sig_cfg(policy="threshold", threshold=0.1), Frozen([])))
    p.receive_close(Candle("BTCUSDT", "5", BAR_MS, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert p.events()[0].signal == "buy"  # the reload's policy serves from the next bar


ROWS = sample_rows(("BTCUSDT", "ETHUSDT"), OPEN_INDEX + 30)


async def test_replay_equals_live_with_a_threshold_policy(tmp_path):
    """Through the fake exchange, a threshold policy with emit=actionable writes exactly replay's actionable lines."""
    artifact = tmp_path / "a.npz"
    write_random_artifact(artifact, policy=POLICY)
    model = Model.load(artifact)
    # A threshold in the middle of this model's edges on these bars, so both holds and actions occur.
    probe = LineSink()
    replay(ROWS["BTCUSDT"], "BTCUSDT", "5", model, SignalWriter(probe))
    edges = sorted(abs(x["probs"]["buy"] - x["probs"]["sell"]) for x in probe.lines[-30:])
    threshold = edges[len(edges) // 2]
    table = {"policy": "threshold", "threshold": threshold, "emit": "actionable"}
    bars = 12
    async with FakeBybit(ROWS, "5", start_index=OPEN_INDEX) as fake, \
            InProcessDaemon(fake, artifact, tuple(ROWS), signal=table) as d:
        first = fake.open_start_ms
        last = first + (bars - 1) * BAR_MS
        await fake.step(bars)
        await wait_until(lambda: all(p.next_start_ms == last + BAR_MS for p in d.service.pipelines.values()),
                         what="every bar processed")
        live = list(d.lines)
        assert d.service.writer.written + d.service.writer.suppressed == bars * len(ROWS)
        # the lines kept back are counted in /metrics (the scrape copies the writer's total in)
        exposition = d.service.supervision.metrics.render().decode()
        assert f"kdsignal_signals_suppressed_total {float(d.service.writer.suppressed)}" in exposition
    policy = resolve(sig_cfg(**table), model)
    for symbol, rows in ROWS.items():
        sink = LineSink()
        replay(rows, symbol, "5", model, SignalWriter(sink), policy=policy)
        want = [(x["start"], x["signal"], x["probs"]) for x in sink.lines if first <= x["start"] <= last]
        got = [(x["start"], x["signal"], x["probs"]) for x in live if x["symbol"] == symbol]
        assert got == want
    # the threshold sits inside the edges seen: some bars acted, some held (and were not written)
    assert 0 < len(live) < bars * len(ROWS)


async def test_reload_takes_the_new_artifacts_threshold_or_keeps_the_old(tmp_path):
    """SIGHUP's reload serves the new manifest's threshold; an artifact without a policy is refused and the old
    model and policy keep serving."""
    from structlog.testing import capture_logs

    artifact = tmp_path / "a.npz"
    write_random_artifact(artifact, policy=POLICY)
    async with FakeBybit(ROWS, "5", start_index=OPEN_INDEX) as fake, \
            InProcessDaemon(fake, artifact, ("BTCUSDT",), signal={"policy": "threshold"}) as d:
        assert (d.service.policy.threshold, d.service.pipelines["BTCUSDT"].policy.threshold) == (0.3, 0.3)
        new = {**POLICY, "cases": {"taker": {"threshold": 0.7, "hold_bars": 1}}}
        write_random_artifact(artifact, seed=3, policy=new)
        assert await d.service.reload() is True
        assert d.service.pipelines["BTCUSDT"].policy.threshold == 0.7
        write_random_artifact(artifact, seed=4)  # no policy in the manifest
        with capture_logs() as logs:
            assert await d.service.reload() is False
        assert "stores no policy" in next(e["error"] for e in logs if e["event"] == "model_reload_failed")
        assert d.service.pipelines["BTCUSDT"].policy.threshold == 0.7


def test_replay_takes_the_config_table_and_flags_override_it(tmp_path, capsys):
    """`kdsignal replay --config` applies its [signal] table; a flag overrides one key; a bad key is exit 78."""
    from daemon.cli import main
    from tests.support import DATA

    csv = str(DATA / "BTCUSDT-5m.csv")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[signal]\npolicy = "threshold"\nthreshold = 0.05\nemit = "actionable"\n')

    def lines(*extra) -> list[dict]:
        assert main(["replay", "--data", csv, "--symbol", "BTCUSDT", *extra]) == 0
        out = [__import__("json").loads(x) for x in capsys.readouterr().out.splitlines()]
        return [{k: v for k, v in x.items() if k != "inference_us"} for x in out]  # the one field that varies

    by_config = lines("--config", str(cfg))
    by_flags = lines("--policy", "threshold", "--threshold", "0.05", "--emit", "actionable")
    assert by_config == by_flags != []
    assert {x["signal"] for x in by_config} == {"buy", "sell"}
    assert all(abs(x["probs"]["buy"] - x["probs"]["sell"]) > 0.05 for x in by_config)
    stricter = lines("--config", str(cfg), "--threshold", "0.08")
    assert 0 < len(stricter) < len(by_config)
    assert main(["replay", "--data", csv, "--symbol", "BTCUSDT", "--config", str(cfg), "--threshold", "2"]) == 78
    assert "[signal].threshold is 2.0" in capsys.readouterr().err
