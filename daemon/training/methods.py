"""One comparison table of every distillation method, each judged on its own lockbox against its own control.

**One source per row.** Each method's run writes its row into its own report, under
``methods.<name>.lockbox`` of ``<stem>_report.json`` (``report.json`` for ``kdsignal train``'s classes run).
The combined table is derived, never stored as data: every run calls ``write_table(folder)``, which reads
every sibling ``*report.json`` in the output folder and rewrites ``methods.md`` there; the classes run also
appends the same table to its ``report.md``. A report written before rows existed (a classes
``report.json`` with only its ``summary``) still gives its row through ``classes_row``.

**Adding a row.** A method run inside ``kdsignal train`` puts ``doc["methods"][name] = {"lockbox":
method_row(name, ...)}`` into the report before ``report.write_all`` (``train.py`` adds ``classes`` beside it);
a method with its own report file writes the row there and calls ``publish(folder)`` after writing it.

**The row schema** (``method_row`` builds it; every key is present, ``None`` where a method has no figure;
all figures are on the method's lockbox, students as the mean over ``seeds`` seeds):

================  ==================================================================================
key               meaning
================  ==================================================================================
``schema``        ``ROW_SCHEMA``, so readers can tell a row from other ``lockbox`` content
``method``        row name: ``classes``, ``alpha_huber``, ``alpha_gaussian``, ``strategy_oracle``, ...
``target``        what the student is fitted to (one line)
``control``       the student's own control: the same student on the raw target (one line)
``loss_name``     ``log_loss`` (classes, strategy: of the raw target), ``huber`` or ``gaussian_nll`` (alpha)
``loss``          the distilled student's loss
``control_loss``  the control's loss
``teacher_loss``  the teacher's loss on the same target (the gap's far end)
``mse``           mean squared error of the predicted mean (alpha rows; ``None`` elsewhere)
``ic``            rank correlation of the student's edge (p_buy - p_sell, or alpha_bp) with the forward return
``direction_auc`` the edge ranking up-moves above down-moves, on bars whose sell/hold/buy label is a move
``delta``         control loss minus student loss per row, mean and 95% interval over one-day blocks
                  (``{"mean", "ci95": [lo, hi], "blocks"}``; positive: distillation better)
``gap_recovered`` (control - student) / (control - teacher) of the loss, same blocks, same shape as ``delta``
``verdict``       ``bootstrap.verdict`` of ``delta``: helps / hurts / no detectable difference
``trading``       ``{"taker": {...}, "maker": {...}}``: ``net_return`` (mean over symbols of the summed net
                  log return), ``sharpe`` (annualised), ``trades``, ``break_even_round_trip_bp`` (twice the
                  fee per side at which the net return is 0; ``None`` when the policy never trades), each
                  with the decision policy chosen on development folds for that fee case
``n``             lockbox rows scored; ``seeds``: student seeds; ``degenerate``: ``{"student": k, "control": k}``
                  seeds whose predictions were constant (kept in the means)
``note``          anything a reader must know to read the row
================  ==================================================================================
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .bootstrap import verdict

ROW_SCHEMA = 1
TABLE_FILE = "methods.md"
# table order; rows of other names follow alphabetically
ORDER = ("classes", "alpha_huber", "alpha_gaussian", "strategy_oracle", "strategy_trend", "sequence_teacher",
         "regime")
CASES = ("taker", "maker")


def _num(x) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _interval(d: dict | None) -> dict | None:
    if not d:
        return None
    lo, hi = (d.get("ci95") or [None, None])[:2]
    return {"mean": _num(d.get("mean")), "ci95": [_num(lo), _num(hi)], "blocks": int(d.get("blocks") or 0)}


def _trade(stats: dict | None) -> dict:
    stats = stats or {}
    be = _num(stats.get("break_even_fee_bp"))
    return {"net_return": _num(stats.get("net_return")), "sharpe": _num(stats.get("sharpe")),
            "trades": int(stats.get("trades") or 0), "break_even_round_trip_bp": None if be is None else 2 * be}


def method_row(name: str, *, target: str, control: str, loss_name: str, loss, control_loss, ic, direction_auc,
               delta: dict, gap_recovered: dict | None, trading: dict, n: int, seeds: int, teacher_loss=None,
               mse=None, degenerate: dict | None = None, note: str = "") -> dict:
    """One row of the table (the module docstring defines every key).

    ``delta`` and ``gap_recovered`` are ``bootstrap.paired_mean`` / ``paired_ratio`` results; ``trading``
    maps ``taker`` and ``maker`` to ``trading.backtest`` statistics of the student under its development
    policy for that fee case.
    """
    d = _interval(delta)
    ci = d["ci95"] if d else [None, None]
    return {
        "schema": ROW_SCHEMA, "method": name, "target": target, "control": control, "loss_name": loss_name,
        "loss": _num(loss), "control_loss": _num(control_loss), "teacher_loss": _num(teacher_loss), "mse": _num(mse),
        "ic": _num(ic), "direction_auc": _num(direction_auc), "delta": d, "gap_recovered": _interval(gap_recovered),
        "verdict": verdict([math.nan if v is None else v for v in ci]),
        "trading": {case: _trade(trading.get(case)) for case in CASES},
        "n": int(n), "seeds": int(seeds), "degenerate": dict(degenerate or {}), "note": note,
    }


def is_row(x) -> bool:
    """Whether ``x`` is a row of this schema."""
    return isinstance(x, dict) and x.get("schema") == ROW_SCHEMA and isinstance(x.get("method"), str)


def classes_row(doc: dict) -> dict | None:
    """The ``classes`` row from a ``kdsignal train`` report (its ``summary.lockbox``); None if it has none."""
    lk = (doc.get("summary") or {}).get("lockbox") or {}
    st, ctl, te = lk.get("student"), lk.get("control"), lk.get("teacher")
    if not (st and ctl and te and lk.get("delta_vs_control")):
        return None
    gap = {"mean": lk.get("gap_recovered"), "ci95": lk.get("gap_recovered_ci95") or [None, None],
           "blocks": lk["delta_vs_control"].get("blocks", 0)}
    ch = doc.get("choices") or {}
    return method_row(
        "classes", target=f"teacher's sell/hold/buy probabilities (T={ch.get('temperature')}, "
                          f"alpha={ch.get('alpha')}, chosen on development folds)",
        control="hard sell/hold/buy labels, same rows, seeds, initial weights, optimiser and budget",
        loss_name="log_loss", loss=st.get("log_loss"), control_loss=ctl.get("log_loss"),
        teacher_loss=te.get("log_loss"), ic=st.get("ic"), direction_auc=st.get("direction_auc"),
        delta=lk["delta_vs_control"], gap_recovered=gap, trading=(lk.get("trading") or {}).get("student") or {},
        n=int(lk.get("rows") or st.get("n") or 0), seeds=int(st.get("seeds") or 1),
        note="trading: the development policy's threshold on p_buy - p_sell")


def collect(folder: str | Path) -> tuple[list[dict], list[str]]:
    """Every row in the ``*report.json`` files of ``folder``, in table order, and notes on what was skipped."""
    rows: dict[str, dict] = {}
    where: dict[str, str] = {}
    notes: list[str] = []
    # the classes run's own report.json first: another run's report repeats a classes row of its own
    for path in sorted(Path(folder).glob("*report.json"), key=lambda p: (p.name != "report.json", p.name)):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            notes.append(f"{path.name}: not read ({type(e).__name__})")
            continue
        if not isinstance(doc, dict):
            notes.append(f"{path.name}: not a report object")
            continue
        found = {}
        methods = doc.get("methods") if isinstance(doc.get("methods"), dict) else {}
        for name, m in methods.items():
            if isinstance(m, dict) and is_row(m.get("lockbox")):
                found[name] = m["lockbox"]
        if "classes" not in found and "summary" in doc:
            row = classes_row(doc)
            if row is not None:
                found["classes"] = row
        for name, row in found.items():
            if name in rows:
                notes.append(f"row {name!r} in both {where[name]} and {path.name}: kept {where[name]}'s")
                continue
            rows[name], where[name] = row, path.name
    rank = {n: i for i, n in enumerate(ORDER)}
    ordered = sorted(rows, key=lambda n: (rank.get(n, len(ORDER)), n))
    return [{**rows[n], "source": where[n]} for n in ordered], notes


def _f(x, nd=4) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def fmt_ci(d: dict | None, nd: int = 4) -> str:
    """``mean [lo, hi]`` of a ``bootstrap`` result, ``n/a`` for a missing one."""
    if not d or d.get("mean") is None:
        return "n/a"
    lo, hi = d["ci95"]
    return f"{_f(d['mean'], nd)} [{_f(lo, nd)}, {_f(hi, nd)}]"


def render_table(rows: list[dict], notes: list[str] = ()) -> str:
    """The markdown table of ``rows`` with a legend."""
    lines = ["| method | loss | student | control | IC | direction AUC | control - student loss, 95% CI | "
             "gap recovered, 95% CI | verdict | net taker | Sharpe taker | net maker | Sharpe maker | "
             "break-even round trip bp | n | seeds | degenerate seeds (student/control) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, m = r["trading"]["taker"], r["trading"]["maker"]
        deg = r.get("degenerate") or {}
        deg_s = f"{deg.get('student')}/{deg.get('control')}" if deg else "n/a"
        lines.append(
            f"| {r['method']} | {r['loss_name']} | {_f(r['loss'])} | {_f(r['control_loss'])} | {_f(r['ic'])} | "
            f"{_f(r['direction_auc'])} | {fmt_ci(r['delta'])} | {fmt_ci(r['gap_recovered'], 2)} | {r['verdict']} | "
            f"{_f(t['net_return'])} | {_f(t['sharpe'], 2)} | {_f(m['net_return'])} | {_f(m['sharpe'], 2)} | "
            f"{_f(t['break_even_round_trip_bp'], 2)} | {r['n']} | {r['seeds']} | {deg_s} |")
    lines += ["", "Each row is one method on its own lockbox (from the report named in Sources), against its own "
              "control: the same student fitted to the raw target. Loss: of the raw target (log loss of the "
              "sell/hold/buy label or of the strategy's position; Huber or Gaussian NLL of the realised return in "
              "volatility units), lower is better, mean over seeds. Control - student: per-row loss difference "
              "(seed-averaged), 95% interval from a bootstrap over one-day blocks; positive means distillation "
              "beats the same student on the raw target. Gap recovered: (control - student) / (control - teacher). "
              "Net return: mean over symbols of the summed log return after fee and half a tick of spread, with "
              "the threshold chosen on development folds for that fee case (0: the policy never trades). "
              "Break-even: round-trip fee (2 x per side) at which the taker policy's net is 0. Degenerate: seeds "
              "whose predictions were constant; they stay in the means.", "", "Sources: "
              + ", ".join(f"{r['method']}: `{r['source']}`" + (f" ({r['note']})" if r.get("note") else "")
                          for r in rows)]
    lines += [f"Skipped: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_table(folder: str | Path) -> list[dict]:
    """Rebuild ``methods.md`` in ``folder`` from its sibling reports; return the rows."""
    rows, notes = collect(folder)
    text = "# Distillation methods on the lockbox\n\n" + (render_table(rows, notes) if rows else
                                                          "No method reports in this folder yet.\n")
    (Path(folder) / TABLE_FILE).write_text(text)
    return rows


def append_to_report(md_path: str | Path, rows: list[dict]) -> None:
    """Append the combined table to a report's markdown (the classes run's ``report.md``)."""
    with open(md_path, "a") as fh:
        fh.write("\n## Every method on its lockbox\n\n(Rebuilt by each run in `" + TABLE_FILE
                 + "`; this copy is as of this run.)\n\n" + render_table(rows))


def publish(folder: str | Path, report_md: str | Path | None = None) -> list[dict]:
    """What every run calls last: rebuild ``methods.md``, and append the table to ``report_md`` if given."""
    rows = write_table(folder)
    if report_md is not None and rows:
        append_to_report(report_md, rows)
    return rows
