"""`kdsignal retrain` against the fake exchange's REST on loopback, and a model swap that loses no bar."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap

import pytest

from daemon.cli import main
from daemon.ops.files import notify_daemon
from daemon.tools.fake_bybit import FakeBybit, load_dir
from daemon.tools.store import ModelStore
from daemon.training.retrain import RetrainError, load_retrain_config, repair_tail
from tests.support import DATA, OPEN_INDEX, ROOT, child_env, sample_rows, wait_until, write_random_artifact

ENV = child_env()
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
# A small but complete refit: both teacher kinds, two folds, one seed (the pipeline, not its defaults, is tested).
FAST_TRAIN = """
[train]
n_folds = 2
seeds = [0]
teacher_hidden = [[16]]
teacher_epochs = 2
lgbm_rounds = 20
student_epochs = {epochs}
student_lr = {lr}
num_threads = 1
"""


def write_config(path, fake, *, margin=0.05, epochs=5, lr=0.005, extra=""):
    """The one TOML file a deployment uses: [feed] for the exchange, [retrain], [train], [model]."""
    path.write_text(textwrap.dedent(f"""
        [feed]
        rest_url = "{fake.rest_url}"
        symbols = {json.dumps(list(SYMBOLS))}
        [model]
        artifact = "store/current"
        [retrain]
        data_dir = "data"
        store = "store"
        window_days = 8
        holdout_days = 3
        margin = {margin}
        """) + textwrap.dedent(FAST_TRAIN.format(epochs=epochs, lr=lr)) + extra)
    return path


async def run_retrain(config) -> tuple[int, dict | None, str]:
    """`kdsignal retrain --config` as a process (the fake keeps serving in this loop meanwhile)."""
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon", "retrain", "--config", str(config),
                                             cwd=ROOT, env=ENV, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 300)
    return p.returncode, (json.loads(out) if p.returncode == 0 else None), err.decode()


def csv_starts(path) -> list[int]:
    """The start_ms column of a kline CSV."""
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:]]


@pytest.mark.slow
async def test_retrain_promotes_then_refuses_a_worse_refit_with_its_reason(tmp_path, capsys):
    """First run promotes (no deployed model); a crippled refit is refused by the interval; a good one promotes."""
    rows = {s: r for s, r in load_dir(DATA, "5").items() if s in SYMBOLS}
    async with FakeBybit(rows, "5", start_index=3700) as fake:
        cfg = write_config(tmp_path / "kdsignal.toml", fake)
        rc, first, err = await run_retrain(cfg)
        assert rc == 0, err
        assert first["verdict"] == "promoted" and first["deployed"] is None
        assert first["reason"] == "no deployed model; the candidate passed validation"
        store = ModelStore(tmp_path / "store")
        assert store.current_id() == first["candidate"]
        starts = csv_starts(tmp_path / "data" / "BTCUSDT.csv")
        assert starts == list(range(starts[0], starts[0] + 300_000 * len(starts), 300_000))
        assert starts[-1] == fake.closed_starts("BTCUSDT")[-1] and len(starts) == 11 * 288

        await fake.step(60)  # five hours of new bars close on the exchange
        # a refit that barely trains: its student is close to its random start, clearly worse than the deployed one
        write_config(cfg, fake, epochs=1, lr=1e-7)
        rc, second, err = await run_retrain(cfg)
        assert rc == 0, err
        assert second["verdict"] == "refused" and second["deployed"] == first["candidate"]
        assert second["reason"].startswith(f"candidate may be worse than deployed {first['candidate']}")
        assert "95% interval upper end" in second["reason"] and "> margin 0.05" in second["reason"]
        assert store.current_id() == first["candidate"]
        fid = second["teacher_fidelity"]
        assert -1 <= fid["deployed_kappa_vs_teacher"] <= 1 and fid["teacher_log_loss"] > 0
        # resumed: only the new bars were appended, none twice
        new = csv_starts(tmp_path / "data" / "BTCUSDT.csv")
        assert new[: len(starts)] == starts and len(new) == len(starts) + 60 and len(set(new)) == len(new)

        await fake.step(30)
        write_config(cfg, fake, margin=0.5)
        rc, third, err = await run_retrain(cfg)
        assert rc == 0, err
        assert third["verdict"] == "promoted" and third["reason"].startswith("not worse than deployed")
        assert store.current_id() == third["candidate"] != first["candidate"]

    runs = sorted((tmp_path / "store" / "runs").glob("*.json"))
    assert len(runs) == 3  # a report for every run, promoted or not
    assert not list((tmp_path / "store" / "runs").glob("*/window"))  # the window's CSV copies are dropped
    reports = [json.loads(p.read_text()) for p in runs]
    refused = next(r for r in reports if r["gate"]["verdict"] == "refused")
    lo, hi = refused["gate"]["delta_ci95"]
    assert lo <= refused["gate"]["delta_mean"] <= hi and hi > 0.05 and refused["gate"]["blocks"] == 12
    assert refused["scores"]["candidate_log_loss"] > refused["scores"]["deployed_log_loss"]
    assert main(["models", "--store", str(tmp_path / "store"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["model_id"] for m in listed["models"] if m["live"]] == [third["candidate"]]
    assert {m["model_id"] for m in listed["models"]} == {first["candidate"], third["candidate"]}


async def test_retrain_refuses_too_few_held_back_rows_and_bad_config(tmp_path):
    """A gate that cannot judge refuses with the count; bad [retrain] keys and values exit 78 by name."""
    rows = {s: r for s, r in load_dir(DATA, "5").items() if s in SYMBOLS}
    async with FakeBybit(rows, "5", start_index=3700) as fake:
        cfg = write_config(tmp_path / "kdsignal.toml", fake, extra="")
        text = cfg.read_text().replace("margin = 0.05", "margin = 0.05\nmin_holdout_rows = 100000")
        cfg.write_text(text)
        rc, doc, err = await run_retrain(cfg)
        assert rc == 0, err
        assert doc["verdict"] == "refused"
        assert "fewer than [retrain].min_holdout_rows = 100000" in doc["reason"]
        assert ModelStore(tmp_path / "store").current_id() is None
        cfg.write_text(text.replace("margin = 0.05", "margin = -1"))
        rc, _, err = await run_retrain(cfg)
        assert rc == 78 and "[retrain].margin is -1.0" in err
        cfg.write_text(text.replace("margin = 0.05", "margins = 0.05"))
        rc, _, err = await run_retrain(cfg)
        assert rc == 78 and "unknown key in [retrain]: margins" in err
    with pytest.raises(RetrainError, match=r"\[retrain\].window_days"):
        cfg.write_text(text.replace("window_days = 8", "window_days = 0"))
        load_retrain_config(cfg)


async def test_promote_and_rollback_swap_loses_and_repeats_no_bar(tmp_path, capsys):
    """While bars flow, a promotion and a rollback (SIGHUP via the pid file) switch models between bars, none lost."""
    store = ModelStore(tmp_path / "store")
    write_random_artifact(tmp_path / "a.npz", seed=11)
    a = store.add(tmp_path / "a.npz", {})
    store.promote(a, "first")
    b_src = tmp_path / "b.npz"
    b = write_random_artifact(b_src, seed=12)
    log = tmp_path / "daemon.log"
    async with FakeBybit(sample_rows(("BTCUSDT",), OPEN_INDEX + 400), "5", start_index=OPEN_INDEX) as fake:
        cfg = tmp_path / "kdsignal.toml"
        cfg.write_text(textwrap.dedent(f"""
            [feed]
            ws_url = "{fake.ws_url}"
            rest_url = "{fake.rest_url}"
            symbols = ["BTCUSDT"]
            ping_interval_s = 0.2
            pong_timeout_s = 1
            [backoff]
            initial_s = 0.05
            max_s = 0.2
            [model]
            artifact = "store/current"
            pid_file = "run/kdsignal.pid"
            [log]
            file = "{log}"
            [retrain]
            store = "store"
            """))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon", "run", "--config", str(cfg),
                                                    cwd=ROOT, env=ENV, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        lines: list[dict] = []

        async def read() -> None:
            while raw := await proc.stdout.readline():
                lines.append(json.loads(raw))

        reader = asyncio.create_task(read())

        def events() -> list[str]:
            return [json.loads(x)["event"] for x in log.read_text().splitlines()] if log.exists() else []

        try:
            await wait_until(lambda: fake.subscribed("kline.5.BTCUSDT") and "warmup_loaded" in events()
                             and (tmp_path / "run" / "kdsignal.pid").exists(), 30, "daemon start")
            player = asyncio.create_task(fake.play(0.05))
            await wait_until(lambda: len(lines) >= 20, 30, "signals with the first model")
            store.add(b_src, {})
            store.promote(b, "test")
            assert notify_daemon(tmp_path / "run" / "kdsignal.pid").startswith("sent SIGHUP")
            await wait_until(lambda: any(x["model"] == b for x in lines), 30, "signals from the promoted model")
            n_b = len(lines)
            await wait_until(lambda: len(lines) >= n_b + 20, 30, "more signals")
            assert main(["rollback", "--config", str(cfg)]) == 0
            assert f"{b} -> {a}" in capsys.readouterr().out
            await wait_until(lambda: lines[-1]["model"] == a, 30, "signals from the rolled-back model")
            n_a = len(lines)
            await wait_until(lambda: len(lines) >= n_a + 20, 30, "more signals")
            player.cancel()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            await asyncio.wait_for(reader, 10)
    starts = [x["start"] for x in lines]
    assert starts == list(range(starts[0], starts[0] + 300_000 * len(starts), 300_000))  # none lost, none twice
    models = [x["model"] for x in lines]
    switches = [(models[i - 1], models[i]) for i in range(1, len(models)) if models[i] != models[i - 1]]
    assert switches == [(a, b), (b, a)]
    assert events().count("model_reloaded") == 2
    assert not (tmp_path / "run" / "kdsignal.pid").exists()  # removed on a clean stop


def test_repair_tail_cuts_only_a_partial_last_line(tmp_path):
    """A download killed mid-row leaves a partial line; it is cut so fetch resumes after the last whole row."""
    whole = "start_ms,open,high,low,close,volume\n1,1.0,1.0,1.0,1.0,1.0\n2,1.0,1.0,1.0,1.0,1.0\n"
    path = tmp_path / "BTCUSDT.csv"
    path.write_text(whole + "30000")
    assert repair_tail(path) == 5 and path.read_text() == whole
    assert repair_tail(path) == 0 and path.read_text() == whole
    assert repair_tail(tmp_path / "absent.csv") == 0


def test_a_second_retrain_on_the_same_data_folder_is_refused(tmp_path, capsys):
    """While one retrain holds the data folder's lock, another exits 1 naming the lock instead of appending too."""
    from daemon.training.retrain import _RunLock

    cfg = tmp_path / "kdsignal.toml"
    cfg.write_text('[feed]\nrest_url = "http://127.0.0.1:9"\n[retrain]\ndata_dir = "data"\nstore = "store"\n')
    with _RunLock(tmp_path / "data"):
        assert main(["retrain", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "another retrain holds" in err and str(tmp_path / "data" / ".retrain.lock") in err
