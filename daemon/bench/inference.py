"""Per-bar inference latency: the numba student against NumPy, ONNX Runtime and the persisted teacher.

One sample per call from Python, real BTCUSDT 5m bars from ``data/`` passed as Python floats, every
contender fed the same bars in interleaved rounds (``timing.sample``). ``CONTENDERS`` says what each
one includes; the report quotes it.
"""

from __future__ import annotations

import numpy as np

from daemon.core.model import Model
from kernels.specialise import specialised_step
from kernels.student import student_step

from . import floors
from .bars import sample_bars
from .numpy_student import NumpyStudent
from .onnx_student import OnnxStudent, onnxruntime_available
from .timing import Contender, latency_entry, sample

CONTENDERS: dict[str, str] = {
    "timer_overhead": "two back-to-back perf_counter_ns reads, no call: included in every sample below",
    "python_call_floor": "a Python function with 5 float arguments that returns 0",
    "numba_floor_1_array": "a numba function with 1 array argument that returns 0",
    "numba_floor_2_arrays": "a numba function with 2 array arguments that returns 0",
    "numba_floor_2_arrays_5_floats": "a numba function with student_step's signature (2 arrays + 5 floats) that "
    "returns 0, through numba's dispatcher",
    "numba_entry_floor_2_arrays_5_floats": "the same do-nothing function called through its compiled entry point "
    "(no dispatcher type checks), as a JIT-compiled student is called",
    "student_step": "SymbolState.update(o, h, l, c, v), the daemon's per-bar call: one compiled call doing feature "
    "step, normalisation, student forward, softmax, argmax",
    "student_step_raw": "model.step_kernel(state, vector, o, h, l, c, v) called directly, without the partial that "
    "SymbolState.update wraps it in",
    "student_step_jit": "the same architecture-specialised step compiled by numba's JIT instead of ahead of "
    "time, called through its compiled entry point (what the daemon serves with [model] kernel = \"jit\")",
    "student_step_generic": "the generic kernels.student.student_step called through its compiled entry point "
    "(bench only: training and batch use the generic kernels, serving does not)",
    "student_step_dispatcher": "kernels.student.student_step(state, vector, o, h, l, c, v): the generic kernel "
    "through numba's dispatcher",
    "student_step_alpha": "SymbolState.update of an alpha artifact (models/alpha.npz or --alpha-model): the same "
    "call, its alpha read-out and threshold decision in place of softmax and argmax",
    "student_numpy": "the same student in plain NumPy: ring-buffer feature step, normalisation, matmuls, softmax, "
    "argmax",
    "student_onnxruntime": "numba features_step (compiled entry point), then InferenceSession.run (float64 graph: "
    "standardise, clip, MLP, softmax; 1 thread, sequential), argmax",
    "student_onnxruntime_iobinding": "numba features_step (compiled entry point), then run_with_iobinding with the "
    "input bound in place to the feature slice and the output to a preallocated array, argmax",
    "student_step_alt": "SymbolState.update of the second student size (student_32_16.npz beside the artifact, "
    "or --alt-model): the same call on a wider MLP",
    "teacher_mlps_numpy": "the persisted teacher's MLP members on one precomputed input row: quantile map, each "
    "member in NumPy, softmax, class sums, mean",
    "teacher_lgbm": "the persisted teacher's LightGBM member: Booster.predict on one precomputed input row "
    "(num_threads=1)",
    "teacher_ensemble": "the persisted teacher on one precomputed input row: Teacher.predict, every member and "
    "the blend, as training labels with it (computing its 39-column input is not included)",
}

# (numerator, denominator, target speed-up or None): ratios of p50 (and of p99) from the same run.
RATIOS = (
    ("student_numpy", "student_step", 20.0),
    ("student_onnxruntime", "student_step", None),
    ("student_onnxruntime_iobinding", "student_step", 10.0),
    ("teacher_ensemble", "student_step", 100.0),
    ("teacher_mlps_numpy", "student_step", None),
    ("teacher_lgbm", "student_step", None),
    ("student_step_dispatcher", "student_step", None),
    ("student_step_jit", "student_step_raw", None),
    ("student_step_generic", "student_step_raw", None),
    ("student_step", "student_step_raw", None),
    ("student_step_alpha", "student_step", None),
    ("student_step_alt", "student_step", None),
    ("student_step_dispatcher", "numba_floor_2_arrays_5_floats", None),
)

STEP_TARGETS_US = {"p50_us": 0.6, "p99_us": 2.0}
ROUND_CALLS = 500  # calls per contender per interleaved round (see timing.sample)


def _round_medians(samples_ns: np.ndarray, round_calls: int) -> np.ndarray:
    """Median of each interleaved round's samples (``timing.sample`` fills rounds in index order)."""
    return np.array([np.median(samples_ns[lo : lo + round_calls]) for lo in range(0, len(samples_ns), round_calls)])


def _ratios(entries: dict[str, dict], samples: dict[str, np.ndarray], round_calls: int) -> list[dict]:
    """p50 and p99 ratios of the whole run, and the spread of the p50 ratio from round to round."""
    out = []
    for num, den, target in RATIOS:
        if num in entries and den in entries:
            a, b = entries[num], entries[den]
            r = {
                "name": f"{num}/{den}",
                "p50_ratio": round(a["p50_us"] / b["p50_us"], 2),
                "p99_ratio": round(a["p99_us"] / b["p99_us"], 2),
            }
            # Rounds ran side by side, so their ratios show how much drift moved the comparison.
            per_round = _round_medians(samples[num], round_calls) / _round_medians(samples[den], round_calls)
            if per_round.size > 1:
                lo, hi = np.percentile(per_round, [10, 90])
                r["p50_ratio_rounds_p10_p90"] = [round(float(lo), 2), round(float(hi), 2)]
            if target is not None:
                r["target"] = target
                r["meets_target"] = r["p50_ratio"] >= target
            out.append(r)
    return out


def run(model: Model, model_note: str, n: int = 20_000, *, teacher=None, warmup: int = 500,
        alpha: Model | None = None, alt: Model | None = None, teacher_missing: str | None = None) -> dict:
    """Time every available contender ``n`` times; return entries, ratios, samples and skip notes.

    ``alpha``: an alpha-head model timed beside the classifier (``student_step_alpha``), or None to skip it;
    ``alt``: the second student size (``student_step_alt``); ``teacher``: the persisted teacher
    (``persisted_teacher.BenchTeacher``), or None (or False) with ``teacher_missing`` saying why (None: not
    asked for).
    """
    bars = sample_bars("BTCUSDT")
    skipped: list[dict] = []

    state = model.new_state()
    raw_state = model.new_state()
    disp_state = model.new_state()
    generic_state = model.new_state()
    jit_state = model.new_state()
    floor_state = model.new_state()
    step_kernel = model.step_kernel
    kernel_note = model.kernel_note
    np_student = NumpyStudent(model)
    contenders = [
        Contender("timer_overhead", None, "empty", CONTENDERS["timer_overhead"], group="floor"),
        Contender("python_call_floor", floors.python_noop, "bar", CONTENDERS["python_call_floor"], group="floor"),
        Contender("numba_floor_1_array", floors.floor_1_array, "fixed", CONTENDERS["numba_floor_1_array"],
                  (floor_state.array,), group="floor"),
        Contender("numba_floor_2_arrays", floors.floor_2_arrays, "fixed", CONTENDERS["numba_floor_2_arrays"],
                  (floor_state.array, model.vector), group="floor"),
        Contender("numba_floor_2_arrays_5_floats", floors.floor_2_arrays_5_floats, "args",
                  CONTENDERS["numba_floor_2_arrays_5_floats"], (floor_state.array, model.vector), group="floor"),
        Contender("numba_entry_floor_2_arrays_5_floats", floors.entry_point(floors.floor_2_arrays_5_floats), "args",
                  CONTENDERS["numba_entry_floor_2_arrays_5_floats"], (floor_state.array, model.vector),
                  group="floor"),
        Contender("student_step", state.update, "bar", f"{CONTENDERS['student_step']} ({kernel_note} kernel)"),
        Contender("student_step_raw", step_kernel, "args", f"{CONTENDERS['student_step_raw']} ({kernel_note} kernel)",
                  (raw_state.array, model.vector)),
        Contender("student_step_jit", specialised_step(model.vector), "args", CONTENDERS["student_step_jit"],
                  (jit_state.array, model.vector)),
        Contender("student_step_generic", floors.entry_point(student_step), "args", CONTENDERS["student_step_generic"],
                  (generic_state.array, model.vector)),
        Contender("student_step_dispatcher", student_step, "args", CONTENDERS["student_step_dispatcher"],
                  (disp_state.array, model.vector)),
        Contender("student_numpy", np_student.update, "bar", CONTENDERS["student_numpy"]),
    ]
    if alpha is not None:
        contenders.append(Contender("student_step_alpha", alpha.new_state().update, "bar",
                                    f"{CONTENDERS['student_step_alpha']} ({alpha.kernel_note} kernel, "
                                    f"sizes {alpha.manifest['student']['sizes']})"))
    else:
        skipped.append({"name": "student_step_alpha",
                        "reason": "no alpha artifact (models/alpha.npz or --alpha-model)"})
    if alt is not None:
        sizes = "-".join(str(w) for w in alt.manifest["student"]["sizes"][1:-1])
        contenders.append(Contender("student_step_alt", alt.new_state().update, "bar",
                                    f"{CONTENDERS['student_step_alt']} ({sizes}, {alt.kernel_note} kernel)"))
    else:
        skipped.append({"name": "student_step_alt",
                        "reason": "no second student size (kdsignal train writes student_32_16.npz beside the "
                                  "artifact; or --alt-model)"})
    missing_ort = onnxruntime_available()
    if missing_ort is None:
        ort_student = OnnxStudent(model)
        ort_bound = OnnxStudent(model, ort_student.session)
        contenders += [
            Contender("student_onnxruntime", ort_student.update, "bar", CONTENDERS["student_onnxruntime"]),
            Contender("student_onnxruntime_iobinding", ort_bound.update_bound, "bar",
                      CONTENDERS["student_onnxruntime_iobinding"]),
        ]
    else:
        for name in ("student_onnxruntime", "student_onnxruntime_iobinding"):
            skipped.append({"name": name, "reason": missing_ort})
    teacher_note = None
    if teacher:  # None or False: not timed
        fresh = teacher.with_own_cursor  # each contender owns a cursor so that every one walks all rows
        contenders.append(Contender("teacher_mlps_numpy", fresh().mlps, "bar", CONTENDERS["teacher_mlps_numpy"],
                                    group="teacher"))
        if teacher.teacher.lgbm is not None:
            contenders.append(Contender("teacher_lgbm", fresh().lgbm, "bar", CONTENDERS["teacher_lgbm"],
                                        group="teacher"))
        contenders.append(Contender("teacher_ensemble", fresh().ensemble, "bar", CONTENDERS["teacher_ensemble"],
                                    group="teacher"))
        teacher_note = {"shape": teacher.describe(), "batch": teacher.batch(model)}
    elif teacher_missing:
        for name in ("teacher_mlps_numpy", "teacher_lgbm", "teacher_ensemble"):
            skipped.append({"name": name, "reason": teacher_missing})

    samples = sample(contenders, bars, n, warmup=warmup, round_calls=ROUND_CALLS)
    entries = {c.name: latency_entry(c.name, samples[c.name]) for c in contenders}
    for c in contenders:
        entries[c.name]["group"] = c.group
    return {
        "model": {"source": model_note, "id": model.id, "kernel": kernel_note,
                  "sizes": model.manifest["student"]["sizes"], "activations": model.manifest["student"]["activations"]},
        "bars": "data/BTCUSDT-5m.csv (4,032 real 5m bars, cycled), passed as Python floats",
        "results": list(entries.values()),
        "ratios": _ratios(entries, samples, ROUND_CALLS),
        "contenders": {c.name: c.includes for c in contenders},
        "samples_ns": samples,
        "skipped": skipped,
        "teacher": teacher_note,
        "alt_sizes": alt.manifest["student"]["sizes"][1:-1] if alt is not None else None,
        "step_targets_us": STEP_TARGETS_US,
    }
