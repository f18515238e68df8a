"""``kdsignal bench``: how fast the student is, measured side by side against what a user would pick instead.

Parts (``--parts``, default all): ``inference`` (per-bar latency of the numba student step against the same
student in NumPy and ONNX Runtime and against the teacher ensemble, plus numba's call floors),
``throughput`` (bars/s of batch replay and of ``kdsignal replay``), ``loopback`` (the daemon under the fake
Bybit), ``sinks`` (the same with Redis and NATS sinks, live and dead, and how soon a consumer sees a
line), ``training`` (pipeline stage wall times from ``models/report.json``), ``size`` (parameters and
bytes), ``hostile`` (memory through a million malformed frames and a 50 MB replay, the cost of a hostile
frame), ``scorecard`` (what the live scorecard adds per bar). ``--json`` prints one JSON object; its
``results`` entries carry ``p50_us``/``p99_us`` (latencies) or ``bars_per_s`` (throughputs). ``--write-md``
regenerates the tables of BENCHMARKS.md and the latency plot.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from .timing import MAX_CPU_LATENCY_US, machine_info, utc_now

PARTS = ("inference", "throughput", "loopback", "sinks", "training", "size", "hostile", "scorecard")


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {','.join(PARTS)}")
    return [p for p in PARTS if p in parts]


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdsignal bench``."""
    parser.add_argument("--parts", type=_parts, default=list(PARTS), metavar="LIST",
                        help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    parser.add_argument("--n", type=_positive, default=20_000,
                        help="timed calls per inference contender (default 20000)")
    parser.add_argument("--model", default=None, metavar="NPZ",
                        help="artifact to benchmark (default models/default.npz, else a random-weight stand-in)")
    parser.add_argument("--alpha-model", default=None, metavar="NPZ",
                        help="alpha artifact timed beside the student (default models/alpha.npz when present)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--write-md", action="store_true",
                        help="regenerate the tables of BENCHMARKS.md (and the plot, at --plot or its default)")
    parser.add_argument("--plot", default=None, metavar="PATH", help="write the latency plot (PNG) here")
    parser.add_argument("--alt-model", default=None, metavar="NPZ",
                        help="second student size timed beside the student (default student_32_16.npz beside the "
                             "artifact when present)")
    parser.add_argument("--teacher", default=None, metavar="DIR",
                        help="persisted teacher folder (default teacher/ beside the artifact, else models/teacher)")
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher contenders (faster)")
    parser.add_argument("--cpu-latency-us", type=_latency_us, default=None, metavar="US",
                        help="hold the kernel's CPU wake-up latency at US microseconds while the bench runs "
                             "(/dev/cpu_dma_latency, as tuned's latency-performance profile does; needs root)")


def _latency_us(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_CPU_LATENCY_US:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of microseconds 0..{MAX_CPU_LATENCY_US}")
    return value


def run_bench(parts: list[str], n: int, *, model_path=None, teacher: bool = True, workdir=None,
              command: str = "kdsignal bench", alpha_path=None, alt_path=None, teacher_dir=None) -> tuple[dict, dict]:
    """Run ``parts``; return (report, samples by contender in ns) where report is what ``--json`` prints."""
    # Here, not at the top: ``loopback_driver`` runs the daemon in a process that imports this package, and
    # these modules import numba, which the daemon itself does not (its resident memory is measured there).
    from . import hostile, inference, loopback, persisted_teacher, scorecard, sinks, sizes, throughput, training
    from .bars import ROOT, bench_model, built_model

    model, model_note, artifact_path = bench_model(model_path, workdir)
    report: dict = {"command": command, "date": utc_now(), "machine": machine_info(), "parts": {}, "results": [],
                    "ratios": [], "skipped": []}
    samples: dict = {}
    teacher_obj, teacher_missing = None, None
    if teacher and ("inference" in parts or "size" in parts):
        teacher_obj, teacher_missing = persisted_teacher.load(
            persisted_teacher.teacher_folder(artifact_path, teacher_dir))

    def add(part: str, out: dict) -> None:
        for r in out.pop("results", []):
            report["results"].append({**r, "part": part})
        for s in out.pop("skipped", []):
            report["skipped"].append({**s, "part": part})
        if part == "inference":  # the student-vs-contender ratios; other parts keep theirs in their own entry
            report["ratios"] += out.pop("ratios", [])
        report["parts"][part] = out

    if "inference" in parts:
        alpha_path = alpha_path or (ROOT / "models" / "alpha.npz")
        alpha = built_model(alpha_path) if Path(alpha_path).exists() else None
        if alt_path is None:
            from daemon.training.config import TrainConfig

            name = TrainConfig().alt_student_name
            alt_path = Path(artifact_path).parent / f"{name}.npz" if name else None
        alt = built_model(alt_path) if alt_path is not None and Path(alt_path).exists() else None
        out = inference.run(model, model_note, n, teacher=teacher_obj, alpha=alpha, alt=alt,
                            teacher_missing=teacher_missing)
        samples = out.pop("samples_ns")
        add("inference", out)
    if "throughput" in parts:
        add("throughput", throughput.run(model, artifact_path))
    if "loopback" in parts:
        add("loopback", loopback.run(artifact_path))
    if "sinks" in parts:
        add("sinks", sinks.run(artifact_path))
    if "training" in parts:
        add("training", training.run())
    if "size" in parts:
        add("size", sizes.run(model, artifact_path, teacher_obj, teacher_missing))
    if "hostile" in parts:
        add("hostile", hostile.run(artifact_path, workdir or tempfile.gettempdir()))
    if "scorecard" in parts:
        add("scorecard", scorecard.run(model))
    report["machine"]["load_avg_1m_end"] = machine_info()["load_avg_1m"]
    return report, samples


def run_cli(args: argparse.Namespace) -> int:
    """Run the chosen parts and print tables or JSON; optionally rewrite BENCHMARKS.md and the plot."""
    from . import markdown as rep

    command = "kdsignal bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "kdsignal bench"
    from .timing import HoldCpuLatency

    hold = None
    if args.cpu_latency_us is not None:
        try:
            hold = HoldCpuLatency(args.cpu_latency_us).__enter__()
        except OSError as e:
            print(f"kdsignal bench: {e}", file=sys.stderr)
            return 2
    try:
        with tempfile.TemporaryDirectory(prefix="kdsignal-bench-") as tmp:
            report, samples = run_bench(args.parts, args.n, model_path=args.model, teacher=not args.no_teacher,
                                        workdir=tmp, command=command.strip(), alpha_path=args.alpha_model,
                                        alt_path=args.alt_model, teacher_dir=args.teacher)
    finally:
        if hold is not None:
            hold.__exit__(None, None, None)
    plot = Path(args.plot) if args.plot else (rep.DEFAULT_PLOT if args.write_md else None)
    if plot is not None and samples:
        m = report["machine"]
        rep.plot_latency(samples, plot, f"Per-bar latency, one call per sample, n={args.n} each, interleaved; "
                                        f"{m['cpu']} ({m['cores']} cores), {report['date']}")
        report["plot"] = str(plot)
    if args.write_md:
        rep.write_markdown(report, plot_path=plot if samples else None)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(rep.render_text(report))
    return 0
