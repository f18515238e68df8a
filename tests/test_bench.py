"""``kdsignal bench``: its contenders compute what the student computes, and the command emits its figures.

No timing assertions here: speed is reported by the bench, never tested.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from daemon.bench import markdown as report
from daemon.bench import persisted_teacher
from daemon.bench.numpy_student import NumpyStudent
from daemon.core.model import Model
from kernels.layout import WINDOW
from tests.support import ROOT, save_tiny_teacher, tiny_teacher


def _bars(btc_5m: np.ndarray) -> list[tuple[float, ...]]:
    # Python floats, as the parser hands them to the daemon; a few invalid bars exercise the fill-forward path.
    bars = [tuple(float(x) for x in r[1:6]) for r in btc_5m[:1500]]
    bars[300] = (bars[300][0], bars[300][1], bars[300][2], float("nan"), bars[300][4])
    bars[301] = (bars[301][0], bars[301][1], bars[301][2], bars[301][3], -1.0)
    return bars


def test_numpy_student_equals_numba(random_artifact, btc_5m):
    """The NumPy student gives the numba step's class and probabilities (rtol 1e-9) on every real bar."""
    model = Model.load(random_artifact)
    state, np_student = model.new_state(), NumpyStudent(model)
    compared = 0
    for bar in _bars(btc_5m):
        got, want = np_student.update(*bar), state.update(*bar)
        assert got == want
        if want >= 0:
            np.testing.assert_allclose(np_student.probs, state.probs, rtol=1e-9, atol=0)
            compared += 1
    assert compared == 1500 - (WINDOW - 1)  # every bar once warm


def test_onnx_student_equals_numba(random_artifact, btc_5m):
    """The float64 ONNX export, by plain run and by I/O binding, gives the numba step's probabilities (rtol 1e-9)."""
    pytest.importorskip("onnxruntime")
    from daemon.bench.onnx_student import OnnxStudent

    model = Model.load(random_artifact)
    state = model.new_state()
    plain = OnnxStudent(model)
    bound = OnnxStudent(model, plain.session)
    compared = 0
    for bar in _bars(btc_5m):
        want = state.update(*bar)
        assert plain.update(*bar) == want
        assert bound.update_bound(*bar) == want
        if want >= 0:
            np.testing.assert_allclose(plain.probs[0], state.probs, rtol=1e-9, atol=0)
            np.testing.assert_allclose(bound.bound_probs[0], state.probs, rtol=1e-9, atol=0)
            compared += 1
    assert compared == 1500 - (WINDOW - 1)  # every bar once warm


@pytest.fixture(scope="module")
def persisted(tmp_path_factory):
    """A small teacher fitted on the samples, persisted to a folder as ``kdsignal train`` writes it."""
    folder = tmp_path_factory.mktemp("models") / "teacher"
    save_tiny_teacher(tiny_teacher(), folder)
    return folder


def test_persisted_teacher_per_bar_calls_equal_its_batch_predict(persisted):
    """Each per-bar entry point scores the next input row as ``Teacher.predict`` scores it in batch."""
    bt, why = persisted_teacher.load(persisted)
    assert why is None
    p, members = bt.teacher.predict(bt.rows[:300])
    mlp_mean = np.mean([members["mlp0"], members["mlp1"]], axis=0)
    whole, mlps, lgbm = bt.with_own_cursor(), bt.with_own_cursor(), bt.with_own_cursor()
    for i in range(300):
        # float32 members: a one-row matmul may round differently from a many-row one (BLAS blocking)
        whole.ensemble(0.0, 0.0, 0.0, 0.0, 0.0)
        np.testing.assert_allclose(whole.probs, p[i], rtol=1e-6, atol=0)
        mlps.mlps(0.0, 0.0, 0.0, 0.0, 0.0)
        np.testing.assert_allclose(mlps.probs, mlp_mean[i], rtol=1e-6, atol=0)
        lgbm.lgbm(0.0, 0.0, 0.0, 0.0, 0.0)
        np.testing.assert_allclose(lgbm.probs, members["lgbm"][i], rtol=1e-12, atol=0)
    # the rows are the BTCUSDT sample's warm bars, every teacher column found in the samples
    assert bt.rows.shape[1] == bt.stored.manifest["inputs"]["count"] and "fed as zeros" not in bt.note


@pytest.mark.slow
def test_bench_times_and_sizes_the_persisted_teacher(persisted, random_artifact, tmp_path):
    """The inference and size parts measure the persisted teacher: its rows, batch figures and bytes on disk."""
    from daemon.bench import run_bench

    doc, _ = run_bench(["inference", "size"], 30, model_path=random_artifact, teacher_dir=persisted,
                       workdir=tmp_path, alt_path=random_artifact)
    by = {r["name"]: r for r in doc["results"] if r["part"] == "inference"}
    size = {r["name"]: r for r in doc["results"] if r["part"] == "size"}
    for name in ("teacher_mlps_numpy", "teacher_lgbm", "teacher_ensemble", "student_step_alt"):
        assert by[name]["n"] == 30 and 0 < by[name]["p50_us"] <= by[name]["p99_us"]
    assert not [s for s in doc["skipped"] if s["name"].startswith("teacher")]
    part = doc["parts"]["inference"]
    assert "persisted teacher" in part["teacher"]["shape"] and "0123456789abcdef" in part["teacher"]["shape"]
    batch = {r["name"]: r for r in part["teacher"]["batch"]}
    assert batch["teacher_batch"]["rows"] == batch["student_batch"]["rows"] > 1000
    assert batch["teacher_batch"]["us_per_bar"] > 0 and batch["student_batch"]["bars_per_s"] > 0
    on_disk = sum(p.stat().st_size for p in persisted.iterdir())
    assert size["teacher_total"]["bytes"] == on_disk
    assert size["teacher_lgbm"]["bytes"] == (persisted / "lgbm.txt").stat().st_size
    assert "teacher_batch" in report.section_inference(doc, markdown=True)


def test_bench_says_when_there_is_no_persisted_teacher(random_artifact, tmp_path):
    """Without a teacher folder the teacher rows are reported as not measured, with the reason, and nothing
    else is timed in their place."""
    from daemon.bench import run_bench

    doc, _ = run_bench(["inference", "size"], 20, model_path=random_artifact, teacher_dir=tmp_path / "none",
                       workdir=tmp_path)
    names = {r["name"] for r in doc["results"]}
    assert not {n for n in names if n.startswith("teacher")}
    reasons = {(s["part"], s["name"]): s["reason"] for s in doc["skipped"]}
    for key in (("inference", "teacher_ensemble"), ("inference", "teacher_lgbm"), ("size", "teacher_total")):
        assert "no persisted teacher" in reasons[key]
    assert "no second student size" in reasons[("inference", "student_step_alt")]
    md = tmp_path / "B.md"
    report.write_markdown(doc, md)
    assert "not measured: `teacher_ensemble`: no persisted teacher" in md.read_text()


@pytest.mark.slow
def test_bench_json_inference_emits_named_entries():
    """`kdsignal bench --json --n 200 --parts inference` prints every named latency with positive numbers."""
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "bench", "--json", "--n", "200", "--parts", "inference"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"date", "machine", "command", "results"} <= set(doc)
    assert doc["machine"]["cores"] >= 1
    by_name = {r["name"]: r for r in doc["results"]}
    names = ["student_step", "student_step_raw", "student_numpy", "teacher_ensemble", "numba_floor_1_array",
             "numba_floor_2_arrays", "numba_floor_2_arrays_5_floats"]
    try:
        import onnxruntime  # noqa: F401

        names += ["student_onnxruntime", "student_onnxruntime_iobinding"]
    except ImportError:
        assert {s["name"] for s in doc["skipped"]} >= {"student_onnxruntime", "student_onnxruntime_iobinding"}
    for name in names:
        entry = by_name[name]
        assert entry["n"] == 200
        assert 0 < entry["p50_us"] <= entry["p99_us"], entry
    assert any(r["name"] == "teacher_ensemble/student_step" and r["p50_ratio"] > 0 for r in doc["ratios"])


def test_write_markdown_replaces_blocks_and_keeps_prose(tmp_path):
    """Regenerating BENCHMARKS.md rewrites only the generated blocks of the parts that ran."""
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(
        "# Benchmarks\n\nHand-written prose.\n\n<!-- bench:size:begin -->\nold table\n<!-- bench:size:end -->\n\n"
        "More prose.\n"
    )
    doc = {
        "command": "kdsignal bench --parts size", "date": "2026-01-01T00:00:00Z",
        "machine": {"cpu": "test cpu", "cores": 2, "python": "3.11", "numpy": "2", "numba": "0.6",
                    "onnxruntime": None, "lightgbm": None, "os": "Linux"},
        "parts": {"size": {}},
        "results": [{"name": "student", "params": 323, "bytes": 2824, "part": "size", "includes": "weights"}],
        "ratios": [], "skipped": [],
    }
    assert report.write_markdown(doc, md) == ["size"]
    text = md.read_text()
    assert "old table" not in text
    assert "Hand-written prose." in text and "More prose." in text
    assert "| student | 323 | 2,824 | weights |" in text
    assert "test cpu (2 cores)" in text
    # A part without a block in the file gets one appended under its heading.
    doc["parts"] = {"training": {"stages": [{"stage": "data", "seconds": 1.5}]}}
    report.write_markdown(doc, md)
    text = md.read_text()
    assert "## Training stage wall times" in text and "<!-- bench:training:begin -->" in text
    assert "| data | 1.50 |" in text


def test_loopback_config_is_accepted_by_the_daemon(tmp_path, random_artifact):
    """The config the loopback bench writes for the fake's made-up symbols passes the daemon's own validation."""
    from daemon.bench.loopback import make_symbols, write_config
    from daemon.core.config import load_config

    data = tmp_path / "data"
    data.mkdir()
    names = make_symbols(data, 7, rows=50)
    assert len(set(names)) == 7 and len(list(data.glob("*-5m.csv"))) == 7
    assert (data / f"{names[0]}-5m.csv").read_text().count("\n") == 51  # header + 50 rows
    cfg_path = tmp_path / "config.toml"
    write_config(cfg_path, "ws://127.0.0.1:1/v5/public/linear", "http://127.0.0.1:2", names, random_artifact,
                 tmp_path / "daemon.log")
    cfg = load_config(cfg_path)
    assert cfg.feed.symbols == tuple(names)
    assert cfg.model.artifact == str(random_artifact)


@pytest.mark.slow
def test_loopback_level_measures_the_real_daemon(tmp_path, random_artifact):
    """One small loopback level (fake Bybit + daemon processes) reports live signals with positive latencies."""
    from daemon.bench.loopback import run_level

    row = run_level(tmp_path, random_artifact, symbols=5, bar_s=0.2, duration_s=1.5)
    assert row["live_samples"] > 0 and row["signals"] >= row["live_samples"]
    assert 0 < row["p50_us"] <= row["p99_us"] <= row["max_us"]
    assert row["offered_signals_per_s"] > 0 and row["rss_mb"] > 0
    assert row["malformed"] == 0 and row["reconnects"] == 0
    # 5 symbols, one update and one close each per bar: 10 pushes per bar are received.
    assert row["pushes_per_symbol_per_s"] == 10.0 and row["frames_per_s"] >= row["signals_per_s"] * 1.5
    assert row["after_idle"]["n"] + row["rest"]["n"] == row["live_samples"]
    assert row["kernel"] == "aot" and not row["numba_loaded"] and row["rss_peak_mb"] >= row["rss_mb"]


@pytest.mark.slow
def test_jit_level_serves_with_numba(tmp_path, random_artifact, monkeypatch):
    """The memory comparison's second run really serves the JIT kernel (``[model] kernel = "jit"``)."""
    from daemon.bench import loopback as lb

    monkeypatch.setattr(lb, "DURATION_S", 1.5)
    row = lb.jit_level(tmp_path, random_artifact, 5, 0.2)
    assert row["kernel"] == "jit" and row["numba_loaded"]
    assert row["live_samples"] > 0 and row["malformed"] == 0


@pytest.mark.slow
def test_startup_builds_the_kernel_then_starts_without_building(tmp_path, random_artifact):
    """Start-up times the one-time ``build-kernel`` (empty caches) and then the daemon's start with it built."""
    from daemon.bench.loopback import startup_times

    out = startup_times(tmp_path, random_artifact)
    assert set(out) == {"build_kernel_s", "warm_s"} and out["build_kernel_s"] > 0 and out["warm_s"] > 0
    assert list((tmp_path / "startup" / "numba-cache" / "kdsignal").glob("kdsignal_step_*.json"))


def test_latency_split_sets_apart_the_first_sample_after_an_idle_gap():
    """Samples whose frame came 50 ms or more after the previous sample's are reported apart from the rest."""
    from daemon.bench.loopback_driver import latency_split

    ms = 1_000_000
    arrived = [0, 1 * ms, 2 * ms, 1000 * ms, 1001 * ms, 1002 * ms]  # two bursts of three frames, 1 s apart
    lat = [100_000, 10_000, 12_000, 200_000, 11_000, 13_000]
    out = latency_split(lat, [a + n for a, n in zip(arrived, lat, strict=True)])
    # The window's first sample has no known gap before it and counts with the rest.
    assert out["after_idle"] == {"gap_ms": 50.0, "n": 1, "p50_us": 200.0, "max_us": 200.0}
    assert out["rest"]["n"] == 5 and out["rest"]["p50_us"] == 12.0
    assert out["p50_us"] == 12.5 and out["max_us"] == 200.0
    empty = latency_split([], [])
    assert empty["p99_us"] is None and empty["after_idle"]["n"] == 0 and empty["rest"]["p99_us"] is None


def test_loopback_levels_hold_the_issue_level_and_enough_samples():
    """The issue's 500 symbols x 10 pushes/s is a level, and every level records >= MIN_SAMPLES signals (or the cap)."""
    from daemon.bench import loopback as lb

    symbols, bar_s = lb.ISSUE_LEVEL
    assert lb.ISSUE_LEVEL in lb.LEVELS and symbols == 500 and (lb.UPDATES_PER_BAR + 1) / bar_s == 10
    assert lb.level_duration(10, 1.0) == 100.0 and lb.level_duration(500, 0.2) == lb.DURATION_S
    assert lb.level_duration(1, 1.0) == lb.MAX_LEVEL_S
    for symbols, bar_s in lb.LEVELS:
        d = lb.level_duration(symbols, bar_s)
        assert d * symbols / bar_s >= lb.MIN_SAMPLES and d <= lb.MAX_LEVEL_S


def _level_row(symbols: int, bar_s: float, **kw) -> dict:
    row = {"symbols": symbols, "bar_s": bar_s, "pushes_per_symbol_per_s": 2 / bar_s, "pushes_per_s": 4998.0,
           "frames_per_s": 4997.0, "nominal_signals_per_s": symbols / bar_s, "offered_signals_per_s": 2499.0,
           "signals_per_s": 2499.0, "live_samples": 15000, "p50_us": 11.0, "p99_us": 120.0, "max_us": 900.0,
           "cpu_percent": 10.0, "rss_mb": 180.0, "fake_cpu_percent": 6.0, "kept_up": True,
           "after_idle": {"gap_ms": 50.0, "n": 30, "p50_us": 150.0, "max_us": 900.0},
           "rest": {"n": 14970, "p50_us": 10.9, "p99_us": 25.0}}
    return {**row, **kw}


def test_loopback_section_shows_pushes_and_the_issue_verdict():
    """The loopback table has pushes/s columns, and the issue's level is judged against each of its targets."""
    from daemon.bench.loopback import issue_verdict

    row, other = _level_row(500, 0.2), _level_row(100, 0.1, p99_us=50.0)
    verdict = issue_verdict([other, row])
    assert verdict["met"] == {"p50_us": True, "p99_us": False, "cpu_percent": True} and not verdict["all_met"]
    assert issue_verdict([other]) is None
    assert issue_verdict([other, _level_row(500, 0.2, p99_us=99.0)])["all_met"]
    idle = {"rounds": 3, "rows": [
        {"path": "trivial", "when": "back to back", "n": 3, "p50_us": 5.0, "max_us": 6.0},
        {"path": "trivial", "when": "after 250 ms asleep", "n": 3, "p50_us": 100.0, "max_us": 120.0}]}
    doc = {"parts": {"loopback": {"levels": [other, row], "issue_level": verdict, "idle_gap": idle}}}
    text = report.section_loopback(doc, markdown=True)
    assert "| trivial | after 250 ms asleep | 100.0 | 20.00 | - | - | - | 120.0 |" in text
    assert "| symbols | pushes/s per symbol | pushes/s offered | pushes/s received | signals/s nominal |" in text
    assert "| 500 | 10.00 | 4,998 | 4,997 | 2,500 |" in text
    assert "500 symbols at 10 pushes/s each (bar 0.2 s, 5,000 pushes/s nominal, kept up)" in text
    assert "p50 11.00 us (target <= 30: met), p99 120.0 us (target <= 100: NOT met)" in text
    assert "| 500 | 2,499 | 30 | 150.0 | 900.0 | 14,970 | 10.90 | 25.00 |" in text
    assert "Resident memory" not in text  # no JIT run, no memory table
    doc["parts"]["loopback"]["jit_kernel"] = _level_row(500, 0.2, kernel="jit",
                                                          numba_loaded=True, rss_mb=190.0, rss_peak_mb=195.0)
    row.update(kernel="aot", numba_loaded=False, rss_mb=55.0, rss_peak_mb=56.0)
    text = report.section_loopback(doc, markdown=True)
    assert "| aot | no | 55.00 | 56.00 | 11.00 | 120.0 | 10.00 |" in text
    assert "| jit | yes | 190.0 | 195.0 | 11.00 | 120.0 | 10.00 |" in text
    assert "cache warmer" not in text


def test_idle_gap_part_times_both_paths(tmp_path, random_artifact):
    """The idle-gap measurement times the daemon's path (which writes real signal lines) and the trivial one."""
    from daemon.bench import idle

    out = idle.run(random_artifact, tmp_path, pause_s=0.005, rounds=3)
    rows = {(r["path"], r["when"]): r for r in out["rows"]}
    assert {p for p, _ in rows} == {"daemon", "trivial"} and len(rows) == 7
    assert all(r["n"] == 3 and 0 < r["p50_us"] <= r["max_us"] for r in rows.values())
    b2b = rows[("daemon", "back to back")]
    assert min(b2b["parse_p50_us"], b2b["pipeline_p50_us"], b2b["write_p50_us"]) > 0
    lines = [json.loads(x) for x in (tmp_path / "idle-signals.jsonl").read_text().splitlines()]
    starts = [x["start"] for x in lines]
    assert {x["symbol"] for x in lines} == {"BTCUSDT"} and starts == sorted(set(starts))
    assert len(lines) >= 50 + 5 * 3  # the warm-up frames, then per round: 2 back to back, 3 after a pause


def test_summary_states_memory_against_the_bar():
    """The headline block gives the daemon's memory range and the JIT kernel's, judged against 150 MB."""
    step = {"part": "inference", "name": "student_step", "p50_us": 0.4, "p99_us": 0.6, "n": 100}
    levels = [_level_row(10, 1.0, rss_mb=55.3), _level_row(500, 0.2, rss_mb=61.3)]
    doc = {"parts": {"inference": {}, "loopback": {"levels": levels, "jit_kernel": _level_row(500, 0.2, rss_mb=191.7)}},
           "results": [step], "ratios": []}
    text = report.section_summary(doc, markdown=True)
    assert ("- the daemon's resident memory: 55-61 MB over the loopback levels, serving the ahead-of-time kernel "
            "without numba (192 MB with the JIT kernel at the issue's level); target < 150 MB: met.") in text
    levels.append(_level_row(1000, 0.01, rss_mb=151.0))
    assert "target < 150 MB: NOT met" in report.section_summary(doc, markdown=True)


def test_hostile_part_measures_memory_and_frame_costs(tmp_path):
    """The hostile part's pieces run on small inputs: flat memory figures, every hostile frame counted."""
    from daemon.bench import hostile

    frames = hostile.malformed_frames_rss(3000)
    assert frames["n"] == 3000 and 0 < frames["rss_start_mb"] <= frames["rss_peak_mb"]
    costs = {e["name"]: e for e in hostile.frame_cost(300)}
    assert set(costs) == {"frame_far_future_start", "frame_off_grid_start", "frame_nan_price", "frame_not_json",
                          "frame_unsubscribed_topic", "frame_valid_close_parse"}
    assert all(e["n"] == 300 and e["p50_us"] > 0 for e in costs.values())
    replay = hostile.replay_rss(ROOT / "tests" / "golden" / "artifact.npz", tmp_path, megabytes=1)
    assert replay["rows"] > 10_000 and replay["rss_peak_mb"] > 0
    report_data = {"results": [{**frames, "part": "hostile"}, {**replay, "part": "hostile"},
                               *({**e, "part": "hostile"} for e in costs.values())]}
    text = report.section_hostile(report_data, markdown=True)
    assert "frame_far_future_start" in text and "| CSV MB |" in text


def test_scorecard_part_measures_the_update_a_read_and_the_total(random_artifact):
    """The scorecard part times the served update, a report and the total, and its section states the total."""
    from daemon.bench import scorecard

    part = scorecard.run(Model.load(random_artifact), rounds=1)
    rows = {r["name"]: r for r in part.pop("results")}
    assert set(rows) == {"scorecard_on_bar", "scorecard_read", "scorecard_total"}
    assert rows["scorecard_on_bar"]["n"] == part["bars"] and rows["scorecard_on_bar"]["scored"] > 0
    assert rows["scorecard_read"]["n"] == scorecard.REPORTS
    assert rows["scorecard_total"]["n"] == part["bars"] // scorecard.READ_EVERY and part["kernel"] == "aot"
    doc = {"parts": {"scorecard": part}, "results": [{**r, "part": "scorecard"} for r in rows.values()]}
    text = report.section_scorecard(doc, markdown=True)
    total = rows["scorecard_total"]["batch_mean_us"]
    assert f"a read every {scorecard.READ_EVERY} bars" in text and f"**{total:.2f} us**" in text
    assert ("under 1 us per bar: met." if total < 1.0 else "under 1 us per bar: NOT met.") in text
