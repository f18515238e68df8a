"""Write ``report.json``, a readable ``report.md`` and small PNG plots next to the artifact."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np

from kernels.layout import FEATURE_NAMES

from .config import TrainConfig

PLOT_DPI = 72
# log-loss differences smaller than this are not called an effect (seed-to-seed spread is ~0.0002-0.0004)
NOISE_LL = 5e-4


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _clean(x):
    """Make a value JSON-safe (NaN -> null, numpy -> Python)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    return x


def write_all(out_dir: Path, doc: dict, reliability: dict, cfg: TrainConfig) -> dict[str, Path]:
    """Write every report file into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md"}
    plots = write_plots(out_dir, doc, reliability)
    doc["plots"] = [p.name for p in plots.values()]
    paths["json"].write_text(json.dumps(_clean(doc), indent=1, sort_keys=False) + "\n")
    paths["md"].write_text(markdown(doc, cfg))
    return {**paths, **plots}


def write_plots(out_dir: Path, doc: dict, reliability: dict) -> dict[str, Path]:
    """Per-fold log-loss gain, reliability diagram and (when run) the temperature x alpha sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    folds = doc["folds"]
    x = np.arange(len(folds))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    width = 0.27
    for i, (kind, color) in enumerate((("teacher", "tab:blue"), ("student", "tab:green"), ("control", "tab:gray"))):
        gain = [100 * (f["baseline"]["log_loss"] - f[kind]["log_loss"]) / f["baseline"]["log_loss"] for f in folds]
        axes[0].bar(x + (i - 1) * width, gain, width, label="distilled" if kind == "student" else kind, color=color)
        acc = [100 * (f[kind]["accuracy"] - f["baseline"]["accuracy"]) for f in folds]
        axes[1].bar(x + (i - 1) * width, acc, width, label="distilled" if kind == "student" else kind, color=color)
    for ax, title in ((axes[0], "log-loss gain over class prior (%)"),
                      (axes[1], "accuracy minus majority-class accuracy (pp)")):
        ax.set_xticks(x, [f"fold {f['fold']}" for f in folds], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.axhline(0, color="k", lw=0.5)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    out["folds"] = out_dir / "folds.png"
    fig.savefig(out["folds"], dpi=PLOT_DPI)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    for kind, color in (("teacher", "tab:blue"), ("student", "tab:green"), ("control", "tab:gray")):
        r = reliability[kind]
        m = [i for i, c in enumerate(r["count"]) if c >= 50]
        ax.plot([r["confidence"][i] for i in m], [r["accuracy"][i] for i in m], "o-", ms=3, color=color,
                label="distilled" if kind == "student" else kind)
    ax.set_xlabel("top-class confidence", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.set_title("reliability (bins with >= 50 rows)", fontsize=9)
    ax.set_xlim(0.3, 1)
    ax.set_ylim(0.3, 1)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["reliability"] = out_dir / "reliability.png"
    fig.savefig(out["reliability"], dpi=PLOT_DPI)
    plt.close(fig)

    if doc.get("sweep"):
        grid = doc["sweep"]["grid"]
        temps = sorted({g["temperature"] for g in grid})
        alphas = sorted({g["alpha"] for g in grid})
        kept = np.full((len(temps), len(alphas)), np.nan)
        for g in grid:
            kept[temps.index(g["temperature"]), alphas.index(g["alpha"])] = 100 * (g["gain_kept"] if g["gain_kept"] is not None else np.nan)
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        im = ax.imshow(kept, cmap="viridis", aspect="auto")
        for i in range(len(temps)):
            for j in range(len(alphas)):
                ax.text(j, i, f"{kept[i, j]:.0f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=8)
        ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps], fontsize=8)
        ax.set_xlabel("alpha (weight of hard labels)", fontsize=8)
        ax.set_ylabel("temperature", fontsize=8)
        ax.set_title(f"% of teacher's gain kept (seed {doc['sweep']['seed']})", fontsize=9)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        out["sweep"] = out_dir / "sweep.png"
        fig.savefig(out["sweep"], dpi=PLOT_DPI)
        plt.close(fig)
    return out


def _f(x, nd=4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _pct(x, nd=1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{nd}f}%"


def _headline_row(name: str, m: dict, base: dict, vs_teacher: dict | None) -> str:
    gain = (base["log_loss"] - m["log_loss"]) / base["log_loss"]
    cells = [name, _f(m["log_loss"]), _pct(gain, 2), _pct(m["accuracy"]), _f(m["macro_f1"], 3), _f(m["ece"], 3)]
    if vs_teacher is None:
        cells += ["-", "-", "100%"]
    else:
        cells += [_pct(vs_teacher["agreement"]), _f(vs_teacher["kl_from_teacher"], 4), _pct(vs_teacher["gain_kept"], 0)]
    return "| " + " | ".join(cells) + " |"


def findings(doc: dict) -> list[str]:
    """Plain sentences comparing each measured option with the default (all from this run's numbers)."""
    out = []
    abl = doc.get("ablations") or []
    base = next((a for a in abl if a["name"] == "default"), None)
    if base is not None:
        for a in abl:
            if a is base:
                continue
            if abs(a["baseline_log_loss"] - base["baseline_log_loss"]) > 1e-9:
                # other labels: log losses are not comparable, gains over each variant's own prior are
                def g(x, b_=a["baseline_log_loss"]):
                    return (b_ - x) / b_

                out.append(
                    f"- **{a['name']}** ({a['description']}): a different task, so compare gains over its own prior "
                    f"({_f(a['baseline_log_loss'])}): teacher {_pct(g(a['teacher_log_loss']), 2)}, distilled "
                    f"{_pct(g(a['student_log_loss']), 2)}, control {_pct(g(a['control_log_loss']), 2)} (default labels: teacher "
                    f"{_pct((base['baseline_log_loss'] - base['teacher_log_loss']) / base['baseline_log_loss'], 2)}, distilled "
                    f"{_pct((base['baseline_log_loss'] - base['student_log_loss']) / base['baseline_log_loss'], 2)}, control "
                    f"{_pct((base['baseline_log_loss'] - base['control_log_loss']) / base['baseline_log_loss'], 2)}); share of the "
                    f"teacher's gain kept {_pct(a['gain_kept'], 0)} (default {_pct(base['gain_kept'], 0)}), agreement {_pct(a['agreement'])}."
                )
                continue
            dt_ = a["teacher_log_loss"] - base["teacher_log_loss"]
            ds = a["student_log_loss"] - base["student_log_loss"]
            dc = a["control_log_loss"] - base["control_log_loss"]
            verdict = ("helps the distilled student" if ds < -NOISE_LL else "hurts the distilled student" if ds > NOISE_LL
                       else "makes no material difference to the distilled student")
            out.append(
                f"- **{a['name']}** ({a['description']}): teacher log loss {_f(a['teacher_log_loss'])} ({dt_:+.4f} vs default), "
                f"distilled {_f(a['student_log_loss'])} ({ds:+.4f}), control {_f(a['control_log_loss'])} ({dc:+.4f}); "
                f"share of the teacher's gain kept {_pct(a['gain_kept'], 0)} (default {_pct(base['gain_kept'], 0)}), "
                f"agreement {_pct(a['agreement'])}; it {verdict} (differences under {NOISE_LL:g} count as seed noise)."
            )
    tr = doc.get("transferable")
    if tr:
        st = doc["summary"]["student"]
        out.append(
            f"- **What limits the share kept.** The same ensemble given only the student's {len(FEATURE_NAMES)} inputs reaches log loss "
            f"{_f(tr['student_features_teacher_log_loss'])}: {_pct(tr['reachable_share_of_teacher_gain'], 0)} of the full teacher's gain "
            f"is reachable from those inputs at all; the rest comes from what the student never sees (time of day, longer "
            f"windows, other symbols). The distilled student keeps {_pct(st['gain_kept'], 0)} of the teacher's gain, i.e. "
            f"{_pct(tr['student_share_of_reachable'], 0)} of the reachable part (control: {_pct(tr['control_share_of_reachable'], 0)})."
        )
    sw = doc.get("sweep")
    if sw:
        best = min(sw["grid"], key=lambda g: g["log_loss"])
        worst = max(sw["grid"], key=lambda g: g["log_loss"])
        out.append(
            f"- **Temperature x alpha** (seed {sw['seed']}): distilled log loss ranges {_f(best['log_loss'])} (T={best['temperature']:g}, "
            f"alpha={best['alpha']:g}) to {_f(worst['log_loss'])} (T={worst['temperature']:g}, alpha={worst['alpha']:g}); "
            f"the control scores {_f(sw['control_log_loss'])}."
        )
    return out


def markdown(doc: dict, cfg: TrainConfig) -> str:
    """The human-readable report: results first, then method, data and per-fold detail."""
    s = doc["summary"]
    t, st, c, b = s["teacher"], s["student"], s["control"], s["baseline"]
    w = st["wins_over_control"]
    d = doc["data"]
    lines = [
        f"# Distillation report: model `{doc['model_id']}`",
        "",
        f"Interval {d['interval']}, symbols {', '.join(f['symbol'] for f in d['files'])}, "
        f"{_iso(d['files'][0]['first_start_ms'])} to {_iso(d['files'][0]['last_start_ms'])} UTC; "
        f"{doc['timings_s']['total_s']:.0f} s wall time. All numbers are out of sample (purged walk-forward, "
        f"{len(doc['folds'])} test folds, pooled), students averaged over seeds {list(cfg.seeds)}.",
        "",
        "## Headline",
        "",
        "| model | log loss | gain over prior | accuracy | macro-F1 | ECE | agreement with teacher | KL(teacher, model) "
        "| share of teacher's gain kept |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| class prior (baseline) | {_f(b['log_loss'])} | - | {_pct(b['accuracy'])} (majority) | - | - | - | - | - |",
        _headline_row("teacher ensemble", t, b, None),
        _headline_row(f"distilled student {'-'.join(map(str, cfg.student_hidden))} (T={cfg.temperature:g}, "
                      f"alpha={cfg.alpha:g})", st, b, st),
        _headline_row("control (same student, hard labels)", c, b, c),
        "",
        f"Distilled beats control on log loss in **{w['wins']} of {w['pairs']}** (symbol, fold) pairs. "
        f"Seed spread of log loss (sd): distilled {_f(st['log_loss_seed_sd'], 5)}, control {_f(c['log_loss_seed_sd'], 5)}.",
        "",
        "Targets set by the issue: distilled beats control in most pairs "
        f"({'met' if w['wins'] * 2 > w['pairs'] else 'NOT met'}); keeps >= 90% of the teacher's gain "
        f"({'met' if (st['gain_kept'] or 0) >= 0.9 else 'NOT met'}: {_pct(st['gain_kept'], 0)}); agrees with the teacher on >= 90% "
        f"of bars ({'met' if st['agreement'] >= 0.9 else 'NOT met'}: {_pct(st['agreement'])}).",
        "",
    ]
    found = findings(doc)
    if found:
        lines += ["## What was tried and what it did", "", *found, ""]
    lines += [
        "## Trading read-out (after fees)",
        "",
        f"Long on buy, short on sell, flat on hold; decided at a bar's close, filled at the next bar's open, "
        f"re-decided every bar; {cfg.fee_per_side * 100:.3f}% taker fee per side on every position change. "
        "Returns are summed log returns per symbol over all test folds (mean over symbols); Sharpe is annualised "
        "from per-bar net returns; max drawdown is the worst peak-to-trough fall of one symbol's cumulative net log return.",
        "",
        "| model | hit rate | in market | gross return | net return | Sharpe (net) | turnover / bar | max drawdown (log) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in (("teacher", t), ("distilled", st), ("control", c)):
        tr = m["trading"]
        lines.append(f"| {name} | {_pct(tr['hit_rate'])} | {_pct(tr['in_market'])} | {_pct(tr['gross_return'])} | "
                     f"{_pct(tr['net_return'])} | {_f(tr['sharpe'], 2)} | {_f(tr['turnover'], 3)} | {_pct(tr['max_drawdown'])} |")
    lines += [
        "",
        "A 3-bar direction forecast re-traded every bar at taker fees pays the round trip far more often than "
        "its edge covers; a negative net return here says the signal is not a stand-alone strategy at these costs.",
        "",
        "## Per fold",
        "",
        "| fold | test range (UTC) | rows | prior LL | teacher LL | distilled LL | control LL | distilled kept | control kept | agreement |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in doc["folds"]:
        lines.append(
            f"| {f['fold']} | {_iso(f['test_start_ms'])} to {_iso(f['test_end_ms'])} | {f['test_rows']} | {_f(f['baseline']['log_loss'])} | "
            f"{_f(f['teacher']['log_loss'])} | {_f(f['student']['log_loss'])} | {_f(f['control']['log_loss'])} | "
            f"{_pct(f['student']['gain_kept'], 0)} | {_pct(f['control']['gain_kept'], 0)} | {_pct(f['student']['agreement'])} |")
    lines += ["", "Per (symbol, fold): log loss of distilled vs control (mean over seeds); `*` = distilled better.", ""]
    syms = list(doc["folds"][0]["symbols"]) if doc["folds"] else []
    lines += ["| fold | " + " | ".join(syms) + " |", "|---" * (len(syms) + 1) + "|"]
    for f in doc["folds"]:
        cells = []
        for sym in syms:
            e = f["symbols"].get(sym)
            cells.append("-" if e is None else f"{_f(e['student'])} / {_f(e['control'])}{' *' if e['distilled_beats_control'] else ''}")
        lines.append(f"| {f['fold']} | " + " | ".join(cells) + " |")
    if doc.get("ablations"):
        lines += ["", "## Options measured (first seed only, pooled folds)", "",
                  "| variant | teacher LL | distilled LL | control LL | distilled kept | control kept | agreement | distilled wins |",
                  "|---|---|---|---|---|---|---|---|"]
        base_ll = doc["ablations"][0]["baseline_log_loss"]
        for a in doc["ablations"]:
            w = a["wins_over_control"]
            other = " (other labels: prior LL " + _f(a["baseline_log_loss"]) + ", log losses not comparable)" if abs(a["baseline_log_loss"] - base_ll) > 1e-9 else ""
            lines.append(f"| {a['name']}: {a['description']}{other} | {_f(a['teacher_log_loss'])} | {_f(a['student_log_loss'])} | "
                         f"{_f(a['control_log_loss'])} | {_pct(a['gain_kept'], 0)} | {_pct(a['control_gain_kept'], 0)} | "
                         f"{_pct(a['agreement'])} | {w['wins']}/{w['pairs']} |")
    if doc.get("sweep"):
        sw = doc["sweep"]
        lines += ["", f"## Temperature x alpha sweep (seed {sw['seed']}, pooled folds; control log loss {_f(sw['control_log_loss'])})", "",
                  "| T | alpha | log loss | accuracy | agreement | gain kept |", "|---|---|---|---|---|---|"]
        for g in sorted(sw["grid"], key=lambda g: (g["temperature"], g["alpha"])):
            lines.append(f"| {g['temperature']:g} | {g['alpha']:g} | {_f(g['log_loss'])} | {_pct(g['accuracy'])} | {_pct(g['agreement'])} | {_pct(g['gain_kept'], 0)} |")
    lines += ["", "## Teacher members (pooled out-of-sample log loss)", "",
              "| member | log loss |", "|---|---|"]
    for k, v in t["members_log_loss"].items():
        lines.append(f"| {k} | {_f(v)} |")
    lines.append(f"| ensemble | {_f(t['log_loss'])} |")
    fs = doc["final_student"]
    lines += [
        "",
        "## Method",
        "",
        f"- Labels: forward log return over h={cfg.horizon_bars} bars; hold band = max({cfg.band_k:g} x RMS of the last "
        f"{cfg.vol_window} one-bar returns x sqrt(h), round trip {cfg.round_trip_cost * 100:.3f}%). Class shares over all rows: "
        + ", ".join(f"{n} {_pct(v)}" for n, v in zip(doc["classes"], d["class_share"])) + ".",
        f"- Folds: time cut into {cfg.n_folds + 2} equal blocks shared by all symbols. The teacher for block j trains on "
        f"blocks < j (purged: label window + {cfg.embargo_bars}-bar embargo before the block) and labels block j, so every soft "
        "target is out of fold. Fold k tests on block k; its students train on blocks 1..k-1 (the ones with soft targets), "
        f"early-stopping on the newest {cfg.val_frac:.0%} of them (purged again). The baseline is the class prior of each fold's training rows.",
        f"- Teacher: MLPs {', '.join('-'.join(map(str, h)) for h in cfg.teacher_hidden)} (ReLU, Adam, early stopping)"
        + (f" and LightGBM (weight {cfg.lgbm_weight:g} in the probability average)" if cfg.teacher_lgbm else "")
        + f"; inputs: the student's {len(doc['teacher_inputs']['student'])} features"
        + (f" plus {len(doc['teacher_inputs']['extra'])} teacher-only ones ({', '.join(doc['teacher_inputs']['extra'])})" if doc['teacher_inputs']['extra'] else "")
        + (f"; finer targets: return buckets with edges at +-{', +-'.join(f'{e:g}' for e in cfg.teacher_buckets)} bands, collapsed to sell/hold/buy" if cfg.teacher_buckets else "")
        + ".",
        f"- Student: {'-'.join(map(str, cfg.student_hidden))} {cfg.student_activation} MLP on the daemon's own features "
        f"(kernels.features.features_batch), loss alpha*CE + (1-alpha)*T^2*KL from kernels.mlp.kd_loss_grad, Adam "
        f"(lr {cfg.student_lr:g}, batch {cfg.student_batch}), <= {cfg.student_epochs} epochs, patience {cfg.student_patience}"
        + (f", recency half-life {cfg.recency_half_life_days:g} days" if cfg.recency_half_life_days > 0 else "")
        + ". Predictions are scored through kernels.student.student_batch, the code the daemon serves with. The control is the same "
        "call with alpha=1 (same rows, seeds, initial weights, batches, epochs).",
        f"- Shipped artifact: the distilled student (seed {cfg.seeds[0]}) trained on all blocks with soft targets "
        f"({fs['fit_rows']} rows, validated on the newest {fs['val_rows']}: log loss {_f(fs['val_log_loss'])} vs teacher "
        f"{_f(fs['val_teacher_log_loss'])}, agreement {_pct(fs['val_agreement'])}).",
        "",
        "## Data",
        "",
        "| file | rows | range (UTC) | gaps (missing bars) |",
        "|---|---|---|---|",
    ]
    for f in d["files"]:
        lines.append(f"| {f['file']} | {f['rows']} | {_iso(f['first_start_ms'])} to {_iso(f['last_start_ms'])} | {f['gaps']} ({f['missing_bars']}) |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in doc["timings_s"].items()), ""]
    lines += ["Plots: " + ", ".join(f"[{p}]({p})" for p in doc.get("plots", [])), ""]
    return "\n".join(lines)
