"""Rendering a bench run: the terminal table, the generated blocks of BENCHMARKS.md, the latency plot.

BENCHMARKS.md is prose written by hand around generated blocks delimited by
``<!-- bench:NAME:begin -->`` / ``<!-- bench:NAME:end -->``. ``write_markdown`` replaces the blocks of
the parts that ran and leaves the rest of the file alone, so the explanations survive a regeneration.
A block missing from the file is appended at the end under its own heading.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .loopback import row_at

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
DEFAULT_PLOT = ROOT / "models" / "bench" / "latency.png"

# Contenders drawn in the latency plot, in legend order.
PLOTTED = (
    "student_step",
    "student_step_dispatcher",
    "student_onnxruntime_iobinding",
    "student_onnxruntime",
    "student_numpy",
    "student_step_alt",
    "teacher_mlps_numpy",
    "teacher_lgbm",
    "teacher_ensemble",
)


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.1f}"
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _table(headers: list[str], rows: list[list], markdown: bool) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    # Numbers right-aligned, text left-aligned.
    out += ["  ".join(c.rjust(w) if isinstance(raw, (int, float)) else c.ljust(w)
                      for raw, c, w in zip(rr, r, widths, strict=True))
            for rr, r in zip(rows, cells, strict=True)]
    return "\n".join(out)


def _stamp(report: dict) -> str:
    m = report["machine"]
    return (
        f"Measured {report['date']} by `{report['command']}` on {m['cpu']} ({m['cores']} cores), "
        f"Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}, onnxruntime {m['onnxruntime'] or 'absent'}, "
        f"lightgbm {m['lightgbm'] or 'absent'}, {m['os']}, load average {m.get('load_avg_1m')} at the start, "
        f"{m.get('load_avg_1m_end', '?')} at the end of the run."
    )


def _results(report: dict, part: str) -> list[dict]:
    return [r for r in report["results"] if r.get("part") == part]


def section_inference(report: dict, markdown: bool) -> str:
    part = report["parts"].get("inference", {})
    rows = _results(report, "inference")
    if not rows:
        return "inference: not run"
    includes = part.get("contenders", {})
    out = []
    if markdown:
        out.append(f"Student: {part['model']['source']} (model id `{part['model']['id']}`, sizes "
                   f"{part['model']['sizes']}, {part['model'].get('kernel', 'generic')} kernel). Bars: {part['bars']}.")
        if part.get("teacher"):
            out.append("")
            out.append(f"Teacher: {part['teacher']['shape']}.")
        out.append("")
    headers = ["name", "p50 us", "p99 us", "p99.9 us", "mean us", "n",
               *(["what one call includes"] if markdown else [])]
    table_rows = [[r["name"], r["p50_us"], r["p99_us"], r.get("p999_us"), r["mean_us"], r["n"]]
                  + ([includes.get(r["name"], "")] if markdown else [])
                  for r in rows]
    out.append(_table(headers, table_rows, markdown))
    batch = (part.get("teacher") or {}).get("batch")
    if batch:
        out.append("")
        if markdown:
            out += ["Batch: every row in one call, inputs precomputed (median of "
                    f"{batch[0]['repeats']} calls after a warm-up call).", ""]
        out.append(_table(["name", "us per bar", "bars/s", "rows", *(["what one call includes"] if markdown else [])],
                          [[r["name"], r["us_per_bar"], r["bars_per_s"], r["rows"]]
                           + ([r["includes"]] if markdown else []) for r in batch], markdown))
    ratios = report.get("ratios", [])
    if ratios:
        out.append("")
        if markdown:
            out.append("Ratios, same run (slower / faster; a target is the speed-up the issue asks for). The "
                       "rounds column is the spread of the p50 ratio over the interleaved rounds (10th to 90th "
                       "percentile): how far drift on the machine moved the comparison.")
            out.append("")
        rr = [[r["name"], r["p50_ratio"], r["p99_ratio"],
               "{:.1f} - {:.1f}".format(*r["p50_ratio_rounds_p10_p90"]) if "p50_ratio_rounds_p10_p90" in r else "-",
               (f">= {r['target']:g}: " + ("met" if r["meets_target"] else "NOT met")) if "target" in r else ""]
              for r in ratios]
        out.append(_table(["ratio", "at p50", "at p99", "p50 ratio, rounds p10 - p90", "target"], rr, markdown))
    targets = part.get("step_targets_us")
    step = next((r for r in rows if r["name"] == "student_step"), None)
    if targets and step:
        verdict = ", ".join(
            f"{k[:3]} {step[k]:.2f} us vs target {v:g} us: {'met' if step[k] <= v else 'NOT met'}"
            for k, v in targets.items()
        )
        out.append("")
        out.append(f"student_step against the foundation issue's targets: {verdict}.")
    return "\n".join(out)


def section_throughput(report: dict, markdown: bool) -> str:
    rows = _results(report, "throughput")
    if not rows:
        return "throughput: not run"
    part = report["parts"].get("throughput", {})
    out = []
    if markdown and part.get("source"):
        out += [f"Input: {part['source']}.", ""]
    out.append(_table(["name", "bars/s", "bars", "seconds", "what it includes"],
                      [[r["name"], r["bars_per_s"], r["n"], r.get("seconds"), r.get("includes", "")] for r in rows],
                      markdown))
    return "\n".join(out)


def _issue_line(v: dict) -> str:
    """The issue's level against its targets, in one sentence."""
    t, met = v["targets"], v["met"]

    def ok(k: str) -> str:
        return "met" if met[k] else "NOT met"

    return (f"The issue's level, {v['symbols']:,} symbols at {v['pushes_per_symbol_per_s']:g} pushes/s each (bar "
            f"{v['bar_s']:g} s, {v['symbols'] * v['pushes_per_symbol_per_s']:,.0f} pushes/s nominal, "
            f"{'kept up' if v['kept_up'] else 'did NOT keep up'}): tick-to-signal p50 {_fmt(v['p50_us'])} us "
            f"(target <= {t['p50_us']:g}: {ok('p50_us')}), p99 {_fmt(v['p99_us'])} us "
            f"(target <= {t['p99_us']:g}: {ok('p99_us')}), daemon CPU "
            f"{_fmt(v['cpu_percent'])}% of one core (target <= {t['cpu_percent']:g}%: {ok('cpu_percent')}).")


def section_loopback(report: dict, markdown: bool) -> str:
    part = report["parts"].get("loopback", {})
    rows = part.get("levels", [])
    out = []
    if rows:
        out.append(_table(
            ["symbols", "pushes/s per symbol", "pushes/s offered", "pushes/s received", "signals/s nominal",
             "signals/s offered", "signals/s written", "samples", "tick_to_signal p50 us", "p99 us", "max us",
             "daemon CPU %", "RSS MB", "fake CPU %", "kept up"],
            [[r["symbols"], r.get("pushes_per_symbol_per_s"), r["pushes_per_s"], r.get("frames_per_s"),
              r["nominal_signals_per_s"], r["offered_signals_per_s"], r["signals_per_s"], r["live_samples"],
              r["p50_us"], r["p99_us"], r["max_us"], r["cpu_percent"], r["rss_mb"], r["fake_cpu_percent"],
              ("yes" if r["kept_up"] else "no") + (f" (limit: {r['limit']})" if r.get("limit") else "")]
             for r in rows],
            markdown,
        ))
    if part.get("issue_level"):
        out += ["", _issue_line(part["issue_level"])]
    jit = part.get("jit_kernel")
    verdict = part.get("issue_level")
    issue_row = row_at(rows, (verdict["symbols"], verdict["bar_s"])) if verdict else None
    if jit and issue_row:
        if markdown:
            out += ["", "Resident memory at the issue's level, by the kernel the daemon serves (the second run: "
                        "`[model] kernel = \"jit\"`, numba's JIT serving the same specialised step; target "
                        "< 150 MB).", ""]
        else:
            out.append("")
        out.append(_table(
            ["kernel", "numba imported", "RSS MB", "peak RSS MB", "tick_to_signal p50 us", "p99 us", "daemon CPU %"],
            [[r.get("kernel", "?").split(" (")[0], "yes" if r.get("numba_loaded") else "no", r["rss_mb"],
              r.get("rss_peak_mb"), r["p50_us"], r["p99_us"], r["cpu_percent"]] for r in (issue_row, jit)],
            markdown,
        ))
    split = [r for r in rows if r.get("after_idle")]
    if split:
        gap = split[0]["after_idle"]["gap_ms"]
        out += ["", f"The same samples split: those with no other signal in the {gap:g} ms before their frame "
                    f"(the first of a burst after an idle gap) and the rest.", ""] if markdown else [""]
        out.append(_table(
            ["symbols", "signals/s written", f"first after >= {gap:g} ms without one: n", "p50 us", "max us",
             "the rest: n", "p50 us", "p99 us"],
            [[r["symbols"], r["signals_per_s"], r["after_idle"]["n"], r["after_idle"]["p50_us"],
              r["after_idle"]["max_us"], r["rest"]["n"], r["rest"]["p50_us"], r["rest"]["p99_us"]] for r in split],
            markdown,
        ))
    idle = part.get("idle_gap") or {}
    if idle.get("rows"):
        if markdown:
            out += ["", f"One frame through a path in one process (no event loop, no socket), "
                        f"{idle['rounds']} interleaved rounds (`daemon.bench.idle`): the daemon's own code "
                        f"(parse_frame, Pipeline.receive_close with the student, SignalWriter.write to a file) and a "
                        f"trivial path (json.loads, write, flush), right after a frame through the same path "
                        f"and after a pause.", ""]
        else:
            out.append("")
        base = {r["path"]: r["p50_us"] for r in idle["rows"] if r["when"] == "back to back"}
        out.append(_table(
            ["path", "when", "p50 us", "x back to back", "parse p50", "pipeline p50", "write p50", "max us"],
            [[r["path"], r["when"], r["p50_us"], r["p50_us"] / base[r["path"]] if base.get(r["path"]) else None,
              r.get("parse_p50_us"), r.get("pipeline_p50_us"), r.get("write_p50_us"), r["max_us"]]
             for r in idle["rows"]],
            markdown,
        ))
    if part.get("startup"):
        out.append("")
        out.append(_table(["start-up to first subscription", "seconds"],
                          [[k.removesuffix("_s"), v] for k, v in part["startup"].items()], markdown))
    return "\n".join(out) if out else "loopback: not run"


def section_training(report: dict, markdown: bool) -> str:
    part = report["parts"].get("training", {})
    stages = part.get("stages", [])
    if not stages:
        return "training: not run"
    out = []
    if part.get("source"):
        out += [f"From {part['source']}.", ""] if markdown else [f"from {part['source']}"]
    out.append(_table(["stage", "wall s"], [[s["stage"], s["seconds"]] for s in stages], markdown))
    return "\n".join(out)


def section_size(report: dict, markdown: bool) -> str:
    rows = _results(report, "size")
    if not rows:
        return "size: not run"
    out = _table(["model", "parameters", "bytes", "what is counted"],
                 [[r["name"], r["params"], r["bytes"], r.get("includes", "")] for r in rows], markdown)
    by = {r["name"]: r for r in rows}
    if "student" in by and "teacher_total" in by:
        s, t = by["student"], by["teacher_total"]
        out += (f"\n\nThe teacher has {t['params'] / s['params']:,.0f}x the student's parameters and "
                f"{t['bytes'] / s['bytes']:,.0f}x its bytes.")
    return out


def section_summary(report: dict, markdown: bool) -> str:
    """Headline figures: the student step and how many times slower each alternative is, same run."""
    by = {r["name"]: r for r in _results(report, "inference")}
    ratios = {r["name"]: r for r in report.get("ratios", [])}
    step = by.get("student_step")
    if step is None:
        return "summary: inference not run"
    lines = [f"- **student_step** (the daemon's per-bar call: features + student + softmax): "
             f"p50 **{step['p50_us']:.2f} us**, p99 {step['p99_us']:.2f} us over {step['n']:,} calls."]
    labels = (
        ("student_numpy", "the same student in NumPy"),
        ("student_onnxruntime_iobinding", "ONNX Runtime with I/O binding"),
        ("student_onnxruntime", "ONNX Runtime, plain run()"),
        ("student_step_alt", "the wider student ("
         + "-".join(map(str, (report["parts"]["inference"].get("alt_sizes") or ["?"]))) + ", same step)"),
        ("teacher_ensemble", "the persisted teacher (Teacher.predict on one precomputed input row)"),
    )
    for name, label in labels:
        r = ratios.get(f"{name}/student_step")
        if name in by and r:
            tgt = f" (target >= {r['target']:g}x: {'met' if r['meets_target'] else 'NOT met'})" if "target" in r else ""
            lines.append(f"- {label}: p50 {by[name]['p50_us']:.2f} us, p99 {by[name]['p99_us']:.2f} us: "
                         f"**{r['p50_ratio']:.1f}x** slower at p50, {r['p99_ratio']:.1f}x at p99{tgt}.")
    floor = by.get("numba_floor_2_arrays_5_floats")
    entry = by.get("numba_entry_floor_2_arrays_5_floats")
    if floor and entry:
        lines.append(f"- numba call floor with the step's signature: {floor['p50_us']:.2f} us through the dispatcher, "
                     f"{entry['p50_us']:.2f} us through the compiled entry point (timer: "
                     f"{by['timer_overhead']['p50_us']:.2f} us, included in every figure).")
    levels = report["parts"].get("loopback", {}).get("levels", [])
    kept = [r for r in levels if r["kept_up"]]
    if kept:
        top = max(kept, key=lambda r: r["signals_per_s"])
        fast = [r for r in levels if r["signals_per_s"] >= 5000]
        meets = [r for r in fast if r["kept_up"] and r["p99_us"] < 100]
        lines.append(f"- the daemon on loopback kept up with up to **{top['signals_per_s']:,.0f}** closed-candle "
                     f"signals/s ({top['symbols']:,} symbols; tick-to-signal p50 {top['p50_us']:.1f} us, "
                     f"p99 {top['p99_us']:.1f} us, {top['cpu_percent']:.0f}% of a core"
                     + ("; the fake could not send faster" if top.get("limit") == "fake" else "")
                     + f"); target >= 5,000/s with p99 < 100 us: {'met' if meets else 'NOT met'}"
                     + (f" ({len(meets)} of {len(fast)} levels at >= 5,000/s)" if fast else "") + ".")
    jit_row = report["parts"].get("loopback", {}).get("jit_kernel")
    if levels and jit_row:
        rss = [r["rss_mb"] for r in levels]
        lines.append(f"- the daemon's resident memory: {min(rss):.0f}-{max(rss):.0f} MB over the loopback levels, "
                     f"serving the ahead-of-time kernel without numba ({jit_row['rss_mb']:.0f} MB with the JIT "
                     f"kernel at the issue's level); target < 150 MB: {'met' if max(rss) < 150 else 'NOT met'}.")
    raw, jit, generic = by.get("student_step_raw"), by.get("student_step_jit"), by.get("student_step_generic")
    if entry and raw and jit and generic:
        w_raw, w_jit, w_gen = (r["p50_us"] - entry["p50_us"] for r in (raw, jit, generic))
        lines.append(f"- work inside the step (p50 minus the JIT entry-point floor): {w_raw:.2f} us served "
                     f"({report['parts']['inference']['model']['kernel']} kernel), {w_jit:.2f} us with the "
                     f"specialised kernel through numba's JIT, {w_gen:.2f} us with the generic one.")
    return "\n".join(lines)


def section_hostile(report: dict, markdown: bool) -> str:
    """The hostile part as tables (terminal or Markdown)."""
    rows = _results(report, "hostile")
    if not rows:
        return "hostile: not run"
    by = {r["name"]: r for r in rows}
    out = []
    if "malformed_frames_rss" in by:
        r = by["malformed_frames_rss"]
        out.append(_table(["frames", "RSS start MB", "RSS end MB", "peak MB", "us per frame", "RSS every 100k"],
                          [[r["n"], r["rss_start_mb"], r["rss_end_mb"], r["rss_peak_mb"], r["per_frame_us"],
                            " ".join(f"{x:.0f}" for x in r["rss_samples_mb"])]], markdown))
    if "replay_50mb_rss" in by:
        r = by["replay_50mb_rss"]
        out.append(_table(["CSV MB", "rows", "peak RSS MB", "peak RSS, 300 rows", "seconds", "bars/s"],
                          [[r["file_mb"], r["rows"], r["rss_peak_mb"], r["rss_peak_300_rows_mb"], r["seconds"],
                            r["bars_per_s"]]], markdown))
    cost = [r for r in rows if r["name"].startswith("frame_")]
    if cost:
        out.append(_table(["frame", "p50 us", "p99 us", "n", "what"],
                          [[r["name"], r["p50_us"], r["p99_us"], r["n"], r["includes"]] for r in cost], markdown))
    return "\n\n".join(out)


def section_scorecard(report: dict, markdown: bool) -> str:
    """What the live scorecard adds per bar (``daemon.bench.scorecard``): per bar, per read, and the total."""
    rows = _results(report, "scorecard")
    if not rows:
        return "scorecard: not run"
    table = _table(["what", "p50 us", "p99 us", "batch mean us", "batch CPU us", "clock floor p50 us", "calls"],
                   [[r["name"], r["p50_us"], r["p99_us"], r["batch_mean_us"], r.get("cpu_mean_us", "-"),
                     r["clock_floor_p50_us"], r["n"]] for r in rows], markdown)
    by = {r["name"]: r for r in rows}
    if "scorecard_total" not in by:
        return table
    part = report["parts"].get("scorecard", {})
    total, read = by["scorecard_total"], by.get("scorecard_read")
    note = (f"Total per bar, everything the scorecard does (the update of every window's sums in "
            f"`on_bar`, {part.get('kernel', '?')} kernel, and a read every {total['read_every_bars']} bars, "
            f"`report(detail=False)`, what a scrape or the periodic `scorecard` event reads): "
            f"**{total['batch_mean_us']:.2f} us** (batch mean over {part.get('bars', '?'):,} bars of "
            f"{len(part.get('symbols', []))} symbols; {total.get('cpu_mean_us', float('nan')):.2f} us of CPU time, "
            f"which leaves out waits for a core on a shared machine); the issue's bar, under 1 us per bar: "
            f"{'met' if total['batch_mean_us'] < 1.0 else 'NOT met'}.")
    if read:
        note += (f" A read costs {read['p50_us']:.1f} us (p50; the full `report()` {read['full_report_p50_us']:.1f} "
                 f"us) whatever the windows hold, so at other cadences the total is the `on_bar` batch mean "
                 f"plus that over the bars between reads; a read with no bar taken since the last (scrapes "
                 f"usually come more often than bars) returns that one's figures in "
                 f"{read.get('unchanged_p50_us', float('nan')):.2f} us.")
    return table + "\n\n" + note


_FLOORS = {"client library": "floor: another process, no daemon",
           "raw sockets": "floor: raw sockets both sides, no client library",
           "pipe": "floor: a line into a pipe, read by another process"}


def section_sinks(report: dict, markdown: bool) -> str:
    """The sinks table (tick-to-signal by variant, then consumer latency behind stdout)."""
    part = report["parts"].get("sinks", {})
    rows = part.get("variants", [])
    if not rows:
        return "not measured"
    out = [_table(["variant", "symbols", "bar s", "signals/s written", "samples", "tick_to_signal p50 us", "p99 us",
                   "max us", "daemon CPU %", "RSS MB", "sink process CPU % / RSS MB", "sink sent / dropped",
                   "other processes CPU %"],
                  [[r["variant"], r["symbols"], r["bar_s"], r["signals_per_s"], r["live_samples"], r["p50_us"],
                    r["p99_us"], r["max_us"], r["cpu_percent"], r["rss_mb"],
                    (f"{r['sinks_process']['cpu_percent']} / {r['sinks_process']['rss_mb']}"
                     if r.get("sinks_process") else "-"),
                    ", ".join(f"{k} {v['sent']}/{v['dropped']}" for k, v in r.get("sinks", {}).items()) or "-",
                    ", ".join(f"{k} {v}" for k, v in (r.get("others_cpu_percent") or {}).items()) or "-"]
                   for r in rows], markdown)]
    consumer = [(r["variant"], k, c) for r in rows for k, c in (r.get("consumer") or {}).items()]
    consumer += [(_FLOORS.get(kind, kind), k, c)
                 for kind, by_consumer in (part.get("floor") or {}).items() for k, c in by_consumer.items()]
    if consumer:
        out += ["", _table(["variant", "consumer", "lines seen", "share of stdout", "after stdout p50 us", "p99 us",
                            "max us"],
                           [[v, k, c["n"], c["seen_fraction"], c["p50_us"], c["p99_us"], c["max_us"]]
                            for v, k, c in consumer], markdown)]
    if part.get("ratios"):
        out += ["", "p99 against the first no-sink row of the same series: "
                + "; ".join(f"{r['name'].removeprefix('sinks p99 ')} {r['ratio']:.2f}" for r in part["ratios"]) + "."]
    qos = report.get("machine", {}).get("cpu_dma_latency_us")
    out += ["", "CPU wake-up latency asked of the kernel during the run (/dev/cpu_dma_latency): "
            + ("unreadable" if qos is None else "no limit (the default)" if qos >= 2_000_000_000 else f"{qos} us")
            + "."]
    return "\n".join(out)


SECTIONS = {
    "inference": ("Per-bar inference latency", section_inference),
    "throughput": ("Throughput", section_throughput),
    "loopback": ("The daemon on loopback", section_loopback),
    "sinks": ("Sinks: Redis and NATS beside stdout", section_sinks),
    "training": ("Training stage wall times", section_training),
    "size": ("Model size", section_size),
    "hostile": ("Hostile input", section_hostile),
    "scorecard": ("Live scorecard cost per bar", section_scorecard),
}


SUMMARY = ("Headline", section_summary)


def render_text(report: dict) -> str:
    """The readable terminal report of a run."""
    m = report["machine"]
    out = [f"kdsignal bench  {report['date']}  {m['cpu']} ({m['cores']} cores)  Python {m['python']}  "
           f"numba {m['numba']}  numpy {m['numpy']}  onnxruntime {m['onnxruntime'] or 'absent'}"]
    if "inference" in report["parts"]:
        out += ["", f"== {SUMMARY[0]} ==", SUMMARY[1](report, False).replace("**", "")]
    for name in report["parts"]:
        title, fn = SECTIONS[name]
        out += ["", f"== {title} ==", fn(report, markdown=False)]
    for s in report.get("skipped", []):
        out.append(f"skipped {s['name']}: {s['reason']}")
    return "\n".join(out)


def _block(name: str, body: str) -> str:
    return f"<!-- bench:{name}:begin -->\n{body}\n<!-- bench:{name}:end -->"


def _replace_block(text: str, name: str, body: str, title: str) -> str:
    block = _block(name, body)
    pattern = re.compile(rf"<!-- bench:{name}:begin -->.*?<!-- bench:{name}:end -->", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _m: block, text)
    return text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"


def write_markdown(report: dict, path: Path = BENCHMARKS_MD, plot_path: Path | None = None) -> list[str]:
    """Replace the generated blocks of the parts that ran; return the block names written."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    written = []
    for name in report["parts"]:
        title, fn = SECTIONS[name]
        stamp = _stamp(report)
        if name == "training":
            # Not measured by the bench: copied from the training run's own record.
            stamp = (f"Not measured by the bench: the wall times `kdsignal train` recorded in models/report.json "
                     f"(written {report['parts']['training'].get('report_written', '?')}); copied by "
                     f"`{report['command']}` on {report['date']}.")
        body = [f"_{stamp}_", "", fn(report, markdown=True)]
        if name == "inference":
            summary = [f"_{_stamp(report)}_", "", SUMMARY[1](report, True)]
            if plot_path is not None:
                try:
                    rel = Path(plot_path).resolve().relative_to(path.resolve().parent).as_posix()
                except ValueError:  # a plot outside the repository: link it by its absolute path
                    rel = Path(plot_path).resolve().as_posix()
                summary += ["", f"![Per-call latency distributions, student against its alternatives]({rel})"]
            text = _replace_block(text, "summary", "\n".join(summary), SUMMARY[0])
            written.append("summary")
        skipped = [s for s in report.get("skipped", []) if s.get("part") == name]
        if skipped:
            body += [""] + [f"- not measured: `{s['name']}`: {s['reason']}" for s in skipped]
        text = _replace_block(text, name, "\n".join(body), title)
        written.append(name)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return written


def plot_latency(samples_ns: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Draw the per-call latency distributions (empirical CDFs, log time axis) of the plotted contenders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=110)
    for name in PLOTTED:
        if name not in samples_ns:
            continue
        us = np.sort(samples_ns[name].astype(np.float64) / 1000.0)
        q = np.arange(1, us.size + 1) / us.size
        keep = q <= 0.999  # the last 0.1% are scheduler noise and would squash the plot
        (line,) = ax.step(us[keep], q[keep], where="post", label=name, linewidth=1.4)
        p50, p99 = np.percentile(us, [50, 99])
        ax.plot([p50], [0.5], "o", color=line.get_color(), markersize=4)
        ax.plot([p99], [0.99], "s", color=line.get_color(), markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call from Python (us, log scale)")
    ax.set_ylabel("fraction of calls")
    ax.set_ylim(0, 1.001)
    ax.axhline(0.5, color="0.85", linewidth=0.8, zorder=0)
    ax.axhline(0.99, color="0.85", linewidth=0.8, zorder=0)
    ax.grid(True, which="both", axis="x", color="0.92")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
