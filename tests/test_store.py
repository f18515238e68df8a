"""The model store: atomic history with a `current` link, `kdsignal models`, `kdsignal rollback`, hostile stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daemon.cli import main
from daemon.core.exitcodes import EXIT_CONFIG
from daemon.ops.files import PidFileError, atomic_write, notify_daemon
from daemon.tools.store import ModelStore, StoreError
from tests.support import write_random_artifact


@pytest.fixture
def store_with_three(tmp_path):
    """A store with three models promoted in order a, b, c (c live)."""
    store = ModelStore(tmp_path / "store")
    ids = []
    for seed in (1, 2, 3):
        src = tmp_path / f"cand{seed}.npz"
        write_random_artifact(src, seed=seed)
        model_id = store.add(src, {"gate": {"verdict": "promoted", "candidate_log_loss": 1.0 + seed / 100}})
        store.promote(model_id, "test")
        ids.append(model_id)
    return store, ids


def test_add_and_promote_write_atomically_and_link_relatively(store_with_three):
    """Promotion leaves <id>.npz, <id>.json, a relative `current` link, a history line each and no temp files."""
    store, ids = store_with_three
    assert os.readlink(store.root / "current") == f"{ids[2]}.npz"
    assert store.current_id() == ids[2]
    names = sorted(p.name for p in store.root.iterdir())
    files = [f"{i}.npz" for i in ids] + [f"{i}.json" for i in ids]
    assert names == sorted([".lock", "current", "history.jsonl", *files])
    events = store.history()
    assert [e["model"] for e in events] == ids and [e["previous"] for e in events] == [None, ids[0], ids[1]]
    assert store.record(ids[0])["gate"]["candidate_log_loss"] == pytest.approx(1.01)


def test_rollback_walks_back_through_promotions(store_with_three):
    """Rollback without an id picks the model promoted before the live one, again and again, then refuses."""
    store, (a, b, c) = store_with_three
    assert store.rollback() == (b, c)
    assert store.rollback() == (a, b)
    with pytest.raises(StoreError, match="no earlier model"):
        store.rollback()
    assert store.rollback(c) == (c, a)
    with pytest.raises(StoreError, match="already current"):
        store.rollback(c)


def test_models_command_lists_gate_scores_and_live_model(store_with_three, capsys):
    """`kdsignal models --json` lists every model with its gate record and marks exactly the live one."""
    store, ids = store_with_three
    assert main(["models", "--store", str(store.root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["model_id"] for m in doc["models"]] == ids
    assert [m["live"] for m in doc["models"]] == [False, False, True]
    assert doc["models"][0]["gate"]["verdict"] == "promoted" and doc["current"] == ids[2]
    assert main(["models", "--store", str(store.root)]) == 0
    table = capsys.readouterr().out
    assert f"* {ids[2]}" in table and "1.0100" in table


def test_rollback_command_reads_config_and_signals_the_daemon(store_with_three, tmp_path, capsys):
    """`kdsignal rollback --config` finds the store and pid file there and SIGHUPs the process the pid file names."""
    store, (_, b, c) = store_with_three
    marker = tmp_path / "hup"
    code = ("import signal, sys, time, pathlib\n"
            "signal.signal(signal.SIGHUP, lambda *_: (pathlib.Path(sys.argv[1]).write_text('hup'), sys.exit(0)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    with subprocess.Popen([sys.executable, "-c", code, str(marker)], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout.readline().strip() == "ready"
            (tmp_path / "daemon.pid").write_text(f"{child.pid}\n")
            cfg = tmp_path / "kdsignal.toml"
            cfg.write_text('[model]\nartifact = "store/current"\npid_file = "daemon.pid"\n[retrain]\nstore = "store"\n')
            assert main(["rollback", "--config", str(cfg)]) == 0
            assert child.wait(timeout=20) == 0
        finally:
            child.kill()
    assert marker.read_text() == "hup"
    assert store.current_id() == b
    assert f"{c} -> {b}" in capsys.readouterr().out


def test_hostile_store_is_named_and_refused(store_with_three, tmp_path, capsys):
    """Junk files are ignored by name; a non-artifact, a renamed artifact, a dangling link exit 78 naming the file."""
    store, (a, b, c) = store_with_three
    (store.root / "notes.txt").write_text("hello")
    assert main(["models", "--store", str(store.root)]) == 0
    assert "notes.txt: not a store file, ignored" in capsys.readouterr().err

    (store.root / "0123456789abcdef.npz").write_bytes(b"not a zip")
    assert main(["models", "--store", str(store.root)]) == EXIT_CONFIG
    assert "0123456789abcdef.npz: not a valid artifact" in capsys.readouterr().out
    assert main(["rollback", "0123456789abcdef", "--store", str(store.root)]) == EXIT_CONFIG
    assert "not a valid artifact" in capsys.readouterr().err
    (store.root / "0123456789abcdef.npz").unlink()

    os.rename(store.root / f"{a}.npz", store.root / "fedcba9876543210.npz")
    with pytest.raises(StoreError, match=f"file name says fedcba9876543210, the manifest says {a}"):
        store.load("fedcba9876543210")
    os.rename(store.root / "fedcba9876543210.npz", store.root / f"{a}.npz")

    (store.root / f"{c}.npz").unlink()
    assert main(["models", "--store", str(store.root)]) == EXIT_CONFIG
    assert "dangling link" in capsys.readouterr().err
    assert main(["rollback", "../etc", "--store", str(store.root)]) == EXIT_CONFIG
    assert "expected 16 lower-case hex digits" in capsys.readouterr().err
    assert main(["models", "--store", str(tmp_path / "nowhere")]) == EXIT_CONFIG
    assert "does not exist" in capsys.readouterr().err
    # a switch repairs the dangling link
    assert main(["rollback", b, "--store", str(store.root)]) == 0
    assert store.current_id() == b


def test_add_refuses_a_non_artifact(tmp_path):
    """Adding a file that fails the artifact's validation raises StoreError and leaves nothing in the store."""
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError, match=r"bad\.npz: not a valid artifact"):
        store.add(bad, {})
    assert not (tmp_path / "store").exists() or [p.name for p in (tmp_path / "store").iterdir()] in ([], [".lock"])


def test_atomic_write_keeps_old_content_when_the_write_fails(tmp_path):
    """A write that cannot complete leaves the previous file intact and no temporary file behind."""
    target = tmp_path / "x.json"
    atomic_write(target, b"old")

    with pytest.raises(TypeError):  # the temporary file is open when the write fails
        atomic_write(target, "new, but not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_notify_daemon_reports_missing_and_refuses_garbage(tmp_path):
    """A missing pid file or a dead pid is reported as such; a pid file holding garbage is refused by name."""
    assert "does not exist" in notify_daemon(tmp_path / "none.pid")
    with subprocess.Popen([sys.executable, "-c", "pass"]) as dead:
        dead.wait()
    (tmp_path / "dead.pid").write_text(str(dead.pid))
    deadline = time.monotonic() + 5
    msg = notify_daemon(tmp_path / "dead.pid")
    while "not running" not in msg and time.monotonic() < deadline:  # pid reuse is possible but vanishingly rare
        msg = notify_daemon(tmp_path / "dead.pid")
    assert "not running" in msg
    (tmp_path / "junk.pid").write_text("rm -rf /")
    with pytest.raises(PidFileError, match="expected a process id"):
        notify_daemon(tmp_path / "junk.pid")
    assert "systemctl reload" in notify_daemon("")
    assert signal.SIGHUP  # the signal the daemon reloads on


def test_promote_command_seeds_a_store_and_refuses_a_non_artifact(tmp_path, capsys):
    """`kdsignal promote` adds a valid artifact and makes it current; a broken file exits 78 and changes nothing."""
    src = tmp_path / "shipped.npz"
    model_id = write_random_artifact(src, seed=5)
    store = tmp_path / "store"
    assert main(["promote", str(src), "--store", str(store)]) == 0
    assert f"current: - -> {model_id}" in capsys.readouterr().out
    assert ModelStore(store).current_id() == model_id
    assert ModelStore(store).record(model_id)["gate"]["verdict"] == "promoted by hand"
    (tmp_path / "bad.npz").write_bytes(b"junk")
    assert main(["promote", str(tmp_path / "bad.npz"), "--store", str(store)]) == EXIT_CONFIG
    assert "bad.npz: not servable" in capsys.readouterr().err
    assert ModelStore(store).current_id() == model_id


def test_promote_builds_the_kernel_where_the_daemon_looks(tmp_path, capsys):
    """The daemon never compiles: `kdsignal promote --config` builds the step into [model] kernel_dir first."""
    from daemon.core.model import Model

    src = tmp_path / "m.npz"
    model_id = write_random_artifact(src, seed=6)
    cfg = tmp_path / "kdsignal.toml"
    cfg.write_text('[model]\nartifact = "store/current"\nkernel_dir = "kernels"\n[retrain]\nstore = "store"\n')
    with pytest.raises(Exception, match="build-kernel"):
        Model.load(src, kernel_dir=tmp_path / "kernels")  # nothing built there yet
    assert main(["promote", str(src), "--config", str(cfg)]) == 0, capsys.readouterr().err
    served = Model.load(tmp_path / "store" / "current", kernel_dir=tmp_path / "kernels")
    assert served.id == model_id and served.kernel_note == "aot"
