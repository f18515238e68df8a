"""Write ``report.json``, a readable ``report.md`` and small PNG plots next to the artifact.

Every number in ``report.md`` is read from the report document ``train.train`` builds; nothing is typed in.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path

import numpy as np

from .config import TrainConfig

PLOT_DPI = 72
NAMES = {
    "baseline": "class prior (training rows)",
    "volatility": "volatility-only (class shares per rvol_20 decile)",
    "teacher": "teacher ensemble",
    "student": "**distilled student**",
    "control": "control: hard labels, same rows",
    "control_all_rows": "control: hard labels, every usable row",
    "label_smoothing": "control: label smoothing (distilled loss, class-share teacher)",
    "control_tuned": "control: own tuned lr / weight decay",
    "logistic": "logistic regression (student's features)",
}
TRADERS = ("student", "student_argmax", "teacher", "control", "mean_reversion", "buy_and_hold", "always_flat")


def _iso(ms) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


def _day(ms) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


def _clean(x):
    """Make a value JSON-safe (NaN/inf -> null, numpy -> Python)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else round(float(x), 7)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    return x


def write_all(out_dir: Path, doc: dict, reliability: dict, curves: dict, cfg: TrainConfig) -> dict[str, Path]:
    """Write every report file into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in ("folds.png",):  # plots earlier versions wrote and this one does not
        (out_dir / old).unlink(missing_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md"}
    plots = write_plots(out_dir, doc, reliability, curves)
    doc["plots"] = [p.name for p in plots.values()]
    clean = _clean(doc)
    paths["json"].write_text(json.dumps(clean, indent=1) + "\n")
    paths["md"].write_text(markdown(clean, cfg))
    return {**paths, **plots}


def write_plots(out_dir: Path, doc: dict, reliability: dict, curves: dict) -> dict[str, Path]:
    """Lockbox reliability diagram, lockbox equity curves per symbol, intervals plot, and the T x alpha sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    for kind, color in (("teacher", "tab:blue"), ("student", "tab:green"), ("control", "tab:gray")):
        r = reliability[kind]
        m = [i for i, c in enumerate(r["count"]) if c >= 50]
        ax.plot([r["confidence"][i] for i in m], [r["accuracy"][i] for i in m], "o-", ms=3, color=color,
                label="distilled" if kind == "student" else kind)
    ax.set_xlabel("top-class confidence", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.set_title("lockbox reliability (bins with >= 50 rows)", fontsize=9)
    ax.set_xlim(0.3, 1)
    ax.set_ylim(0.3, 1)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["reliability"] = out_dir / "reliability.png"
    fig.savefig(out["reliability"], dpi=PLOT_DPI)
    plt.close(fig)

    taker = curves.get("taker", {})
    syms = sorted({s for m in taker.values() for s in m})
    if syms:
        fig, axes = plt.subplots(len(syms), 1, figsize=(7, 1.9 * len(syms)), sharex=True, squeeze=False)
        colors = {"student": "tab:green", "student_argmax": "tab:olive", "teacher": "tab:blue", "control": "tab:gray", "mean_reversion": "tab:orange",
                  "buy_and_hold": "tab:red", "always_flat": "k"}
        for ax, sym in zip(axes[:, 0], syms, strict=True):
            for model in TRADERS:
                if sym in taker.get(model, {}):
                    t, eq = taker[model][sym]
                    days = (np.asarray(t) - t[0]) / 86_400_000
                    ax.plot(days, 100 * eq, lw=0.9, color=colors[model],
                            label=model.replace("student_argmax", "distilled, argmax").replace("student", "distilled policy"))
            ax.set_title(f"{sym}: cumulative net log return (%), lockbox, taker fee + half-spread", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.axhline(0, color="k", lw=0.4)
        axes[0, 0].legend(fontsize=6, ncol=3)
        axes[-1, 0].set_xlabel("days into the lockbox", fontsize=8)
        fig.tight_layout()
        out["equity"] = out_dir / "equity.png"
        fig.savefig(out["equity"], dpi=PLOT_DPI)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    rows = []
    for part in ("development", "lockbox"):
        d = doc["summary"][part]["deltas_vs_student"]
        for name in ("control", "control_all_rows", "label_smoothing", "control_tuned", "logistic", "teacher"):
            if name in d:
                rows.append((f"{'lockbox' if part == 'lockbox' else 'dev'}: {name}", d[name]))
    for i, (label, d) in enumerate(rows):
        lo, hi = d["ci95"]
        ax.plot([1000 * lo, 1000 * hi], [i, i], color="tab:green" if "lock" in label else "tab:gray")
        ax.plot([1000 * d["mean"]], [i], "o", ms=3, color="k")
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.set_xlabel("log loss(model) - log loss(distilled), millinats (95% block-bootstrap interval)", fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    out["intervals"] = out_dir / "intervals.png"
    fig.savefig(out["intervals"], dpi=PLOT_DPI)
    plt.close(fig)

    sw = doc["choices"]["sweep"]
    if len(sw) > 1:
        temps = sorted({g["temperature"] for g in sw})
        alphas = sorted({g["alpha"] for g in sw})
        ll = np.full((len(temps), len(alphas)), np.nan)
        for g in sw:
            ll[temps.index(g["temperature"]), alphas.index(g["alpha"])] = g["log_loss"]
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        im = ax.imshow(ll, cmap="viridis_r", aspect="auto")
        for i in range(len(temps)):
            for j in range(len(alphas)):
                ax.text(j, i, f"{ll[i, j]:.4f}", ha="center", va="center", color="w", fontsize=7)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=8)
        ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps], fontsize=8)
        ax.set_xlabel("alpha (weight of hard labels)", fontsize=8)
        ax.set_ylabel("temperature", fontsize=8)
        ax.set_title(f"development log loss (seed {doc['choices']['sweep_seed']})", fontsize=9)
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


def _ci(d: dict | None, scale: float = 1000.0, nd: int = 2) -> str:
    if not d or d.get("mean") is None:
        return "n/a"
    lo, hi = d["ci95"]
    return f"{scale * d['mean']:+.{nd}f} [{_f(None if lo is None else scale * lo, nd)}, {_f(None if hi is None else scale * hi, nd)}]"


def _excludes_zero(d: dict) -> bool:
    lo, hi = d["ci95"]
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


PLAIN = {"control_all_rows": "the control trained on every usable row", "label_smoothing": "label smoothing",
         "control_tuned": "the control with its own tuned learning rate and weight decay",
         "logistic": "logistic regression"}


def verdict_paragraph(doc: dict, cfg: TrainConfig) -> str:
    """One paragraph: what distillation buys on the lockbox, how sure, and whether it pays at each cost."""
    lk = doc["summary"]["lockbox"]
    sp = doc["split"]["lockbox"]
    d = lk["delta_vs_control"]
    dl = lk["deltas_vs_student"]
    s, c, t = lk["student"]["log_loss"], lk["control"]["log_loss"], lk["teacher"]["log_loss"]
    sure = ("the interval excludes zero" if _excludes_zero(d) else "the interval includes zero, so this is no detectable difference")
    better = "lower (better)" if d["mean"] > 0 else "higher (worse)"
    others = [n for n in PLAIN if n in dl]
    beaten = [PLAIN[n] for n in others if dl[n]["ci95"][0] is not None and dl[n]["ci95"][0] > 0]
    worse = [PLAIN[n] for n in others if dl[n]["ci95"][1] is not None and dl[n]["ci95"][1] < 0]
    tied = [PLAIN[n] for n in others if PLAIN[n] not in beaten and PLAIN[n] not in worse]
    gap = lk.get("gap_recovered")
    gci = lk.get("gap_recovered_ci95") or [None, None]
    trade = lk["trading"]
    parts = [
        f"On the lockbox ({_day(sp['lo_ms'])} to {_day(sp['hi_ms'])}, {sp['days']:g} days, {lk['rows']} rows, "
        f"touched once after every choice), the distilled student's log loss is {_f(s)} against {_f(c)} for the same "
        f"student trained on hard labels (teacher {_f(t)}, class prior {_f(lk['baseline']['log_loss'])}). Distillation "
        f"makes it {better} by {1000 * abs(d['mean']):.2f} millinats, 95% interval [{1000 * d['ci95'][0]:+.2f}, "
        f"{1000 * d['ci95'][1]:+.2f}] (control minus distilled, paired bootstrap over {d['blocks']} one-day blocks): {sure}.",
        f"It closes {_pct(gap, 0)} of the gap between that control and the teacher (interval {_pct(gci[0], 0)} to {_pct(gci[1], 0)}).",
    ]
    if beaten:
        parts.append(f"It is better than {', '.join(beaten)} (intervals exclude zero).")
    if tied:
        parts.append(f"It cannot be told apart from {', '.join(tied)}.")
    if worse:
        parts.append(f"It is worse than {', '.join(worse)}.")
    for case in ("taker", "maker"):
        st = trade["student"][case]
        fee = (cfg.taker_fee_per_side if case == "taker" else cfg.maker_fee_per_side) / 1e-4
        parts.append(
            f"At {case} cost ({fee:g} bp per side plus half a tick), the decision policy chosen on development data "
            + (f"trades {st['trades']} times and nets {_pct(st['net_return'], 2)} per symbol (log return, Sharpe "
               f"{_f(st['sharpe'], 2)})." if st["trades"] > 0 else
               "never trades: no threshold paid on the development blocks, so it stays flat.")
        )
    am = trade.get("student_argmax", {}).get("taker")
    if am:
        parts.append(
            f"Traded on its argmax every bar, it would lose {_pct(-am['net_return'], 2)} per symbol at taker cost "
            f"({_pct(-trade['student_argmax']['maker']['net_return'], 2)} at maker); its break-even fee is "
            f"{_f(am['break_even_fee_bp'], 2)} bp per side" + (", i.e. it loses before any fee." if (am["break_even_fee_bp"] or 0) < 0 else ".")
        )
    bh = trade["buy_and_hold"]["taker"]
    parts.append(f"For scale: buy-and-hold nets {_pct(bh['net_return'], 2)} per symbol over the lockbox, always-flat 0.")
    return " ".join(parts)


def _model_table(part: dict, teacher_first: bool = True) -> list[str]:
    lines = ["| model | log loss | vs distilled, millinats [95% CI] | kappa vs teacher | agreement where teacher acts "
             "| hold-vs-move AUC | direction AUC | rank IC | ECE |",
             "|---|---|---|---|---|---|---|---|---|"]
    sizes = [n for n in part if re.fullmatch(r"student(_\d+)+", n)]  # the second student size (student_32_16)
    order = ["baseline", "volatility", "teacher", "student", *sizes, "control", "control_all_rows", "label_smoothing",
             "control_tuned", "logistic"]
    for name in order:
        if name not in part:
            continue
        m = part[name]
        delta = "-" if name == "student" else _ci(part["deltas_vs_student"].get(name))
        label = NAMES.get(name) or f"distilled student, {name.removeprefix('student_').replace('_', '-')}"
        lines.append(f"| {label} | {_f(m['log_loss'])} | {delta} | {_f(m.get('kappa_vs_teacher'), 3)} | "
                     f"{_pct(m.get('agreement_teacher_acts'))} | {_f(m['move_auc'], 3)} | {_f(m['direction_auc'], 3)} | "
                     f"{_f(m['ic'], 4)} | {_f(m['ece'], 3)} |")
    return lines


def _trading_table(trade: dict) -> list[str]:
    lines = ["| model | cost | policy (threshold / hold bars) | net return (log, per symbol) | Sharpe | Sortino "
             "| max drawdown | trades | hit rate | turnover / bar | break-even fee (bp/side) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in TRADERS:
        if model not in trade:
            continue
        for case in ("taker", "maker"):
            m = trade[model][case]
            thr = m.get("threshold")
            pol = "-" if thr is None and "hold_bars" not in m else (
                "never acts" if thr is None or (thr >= 1.0 and model != "mean_reversion") else f"{thr:.3g} / {m['hold_bars']}")
            lines.append(f"| {model.replace('student_argmax', 'distilled, argmax every bar').replace('student', 'distilled')} | {case} | {pol} | {_pct(m['net_return'], 2)} | "
                         f"{_f(m['sharpe'], 2)} | {_f(m['sortino'], 2)} | {_pct(m['max_drawdown'], 2)} | {m['trades']} | "
                         f"{_pct(m['hit_rate'])} | {_f(m['turnover'], 4)} | {_f(m['break_even_fee_bp'], 2)} |")
    return lines


def _sweep_table(ch: dict) -> list[str]:
    temps = sorted({g["temperature"] for g in ch["sweep"]})
    alphas = sorted({g["alpha"] for g in ch["sweep"]})
    ll = {(g["temperature"], g["alpha"]): g["log_loss"] for g in ch["sweep"]}
    best = (ch["temperature"], ch["alpha"])
    lines = ["", "Development log loss, T (rows) x alpha (columns), chosen cell in bold:", "",
             "| T | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |", "|---" * (len(alphas) + 1) + "|"]
    for t in temps:
        cells = [(f"**{_f(ll.get((t, a)))}**" if (t, a) == best else _f(ll.get((t, a)))) for a in alphas]
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def size_lines(doc: dict, cfg: TrainConfig) -> list[str]:
    """The student size the artifact has, and what the other size did on development folds and the lockbox."""
    alt = doc.get("alt_student")
    if not alt:
        return []
    dv, lk = alt["development"], alt["lockbox"]
    size = "-".join(map(str, cfg.student_hidden))
    other = "-".join(map(str, alt["sizes"][1:-1]))
    why = (f"the development folds favour {other}: set `student_hidden = {alt['sizes'][1:-1]}` to ship it"
           if dv["verdict"] == "helps" else
           f"{size} stays, since the development folds do not favour {other}, which costs more to serve")
    return [f"- Student size: the artifact is {size} (`student_hidden`). {other} (`{alt['artifact']}`, same T, alpha, rows and "
            f"epoch rule) minus {size}, millinats (negative: {other} better): development {_ci(dv['minus_default'])} "
            f"({dv['verdict']}), lockbox {_ci(lk['minus_default'])} ({lk['verdict']}). The development interval "
            f"decides: {why}. Serving cost of each: BENCHMARKS.md (`student_step`, `student_step_alt`)."]


def teacher_store_lines(doc: dict) -> list[str]:
    """Where the final teacher was written, its size, and whether it reads back to the run's predictions."""
    ts = doc.get("teacher_store")
    if not ts:
        return []
    members = ", ".join(f"{m['name']} ({m['kind']})" for m in ts["members"])
    same = "identical" if ts["identical_to_run"] else "NOT identical"
    return [f"Teacher written to `{Path(ts['folder']).name}/` ({ts['bytes'] / 1e6:.2f} MB: {members}); read back, its "
            f"predictions on {ts['checked_rows']} lockbox rows are {same} to the run's.", ""]


def markdown(doc: dict, cfg: TrainConfig) -> str:
    """The human-readable report: the verdict on the lockbox first, then how it was reached."""
    lk, dv = doc["summary"]["lockbox"], doc["summary"]["development"]
    ch = doc["choices"]
    sp = doc["split"]
    cmd = doc.get("command") or "kdsignal train --data ../shared/data/bybit-linear-5m --out models/default.npz"
    lines = [
        f"# Distillation report: model `{doc['model_id']}`",
        "",
        "## Verdict (lockbox)",
        "",
        verdict_paragraph(doc, cfg),
        "",
        f"Reproduce every figure here: `{cmd}` (writes this file, `report.json` and the plots; "
        f"{doc['timings_s']['total_s']:.0f} s on this 2-core machine).",
        "",
        f"## Lockbox: {_day(sp['lockbox']['lo_ms'])} to {_day(sp['lockbox']['hi_ms'])} ({sp['lockbox']['rows']} rows, "
        f"{lk['blocks']} one-day blocks)",
        "",
        f"Students and trained controls: mean over seeds {list(cfg.seeds)} (logistic regression: first seed), each fitted "
        "on all development rows. Differences are log loss(model) - log loss(distilled) per row, averaged; positive "
        "= the distilled student is better; interval: paired bootstrap over one-day blocks (all symbols together), "
        f"{cfg.bootstrap_samples} resamples.",
        "",
        *_model_table(lk),
        "",
        f"Distilled vs teacher: {_ci(lk['student_vs_teacher'])} millinats (distilled minus teacher). Gap recovered "
        f"(control - distilled) / (control - teacher): {_pct(lk['gap_recovered'], 0)}, interval "
        f"{_pct((lk.get('gap_recovered_ci95') or [None])[0], 0)} to {_pct((lk.get('gap_recovered_ci95') or [None, None])[1], 0)}. "
        f"The teacher says hold on {_pct(None if lk['student'].get('teacher_act_share') is None else 1 - lk['student']['teacher_act_share'])} of lockbox bars, "
        "which is why plain agreement is not shown: kappa and agreement where the teacher acts are.",
        "",
        "Per-class precision / recall (sell, hold, buy) of the argmax: distilled "
        + ", ".join(f"{_pct(p, 0)}/{_pct(r, 0)}" for p, r in zip(lk["student"]["precision"], lk["student"]["recall"], strict=True))
        + "; control " + ", ".join(f"{_pct(p, 0)}/{_pct(r, 0)}" for p, r in zip(lk["control"]["precision"], lk["control"]["recall"], strict=True))
        + "; teacher " + ", ".join(f"{_pct(p, 0)}/{_pct(r, 0)}" for p, r in zip(lk["teacher"]["precision"], lk["teacher"]["recall"], strict=True))
        + ".",
        "",
        "### Trading on the lockbox",
        "",
        f"Decided at a bar's close, filled at the next open; costs per side: fee ({cfg.taker_fee_per_side * 1e4:g} bp taker, "
        f"{cfg.maker_fee_per_side * 1e4:g} bp maker) plus half a tick of spread (ticks inferred from the prices: "
        + ", ".join(f"{k} {v:g}" for k, v in doc["data"]["ticks"].items())
        + "). Policy: act when p_buy - p_sell clears a threshold; the threshold and whether to re-decide every bar "
        f"or hold {cfg.horizon_bars} bars (the label horizon) were chosen on the development blocks for each model and "
        "cost, then applied unchanged. Mean reversion: long below -z, short above +z on zclose_20 (z chosen the same way). "
        "Net return: each symbol's summed net log return over the lockbox, averaged over symbols; Sharpe, Sortino "
        "(annualised) and max drawdown: of the equal-weight portfolio of the symbols; break-even: the fee per side "
        "at which the net return would be zero.",
        "",
        *_trading_table(lk["trading"]),
        "",
        "Per symbol, distilled student (net log return taker / maker, trades taker): "
        + "; ".join(f"{sym} {_pct(v['net_return'], 2)} / {_pct(lk['trading']['student']['maker']['per_symbol'][sym]['net_return'], 2)}, "
                    f"{v['trades']}" for sym, v in lk["trading"]["student"]["taker"]["per_symbol"].items())
        + ". Buy-and-hold: "
        + "; ".join(f"{sym} {_pct(v['net_return'], 2)}" for sym, v in lk["trading"]["buy_and_hold"]["taker"]["per_symbol"].items())
        + ". Equity curves: [equity.png](equity.png).",
        "",
        f"## Development: walk-forward test blocks {', '.join(str(b['block']) for b in sp['development']['test_blocks'])} "
        f"({_day(sp['development']['test_blocks'][0]['lo_ms'])} to {_day(sp['development']['hi_ms'])}, {dv['rows']} rows, "
        f"{dv['blocks']} one-day blocks)",
        "",
        "Every choice below was made here; these figures are therefore optimistic for the chosen settings (the "
        "lockbox above is not).",
        "",
        *_model_table(dv),
        "",
        f"Gap recovered: {_pct(dv.get('gap_recovered'), 0)} (interval {_pct((dv.get('gap_recovered_ci95') or [None])[0], 0)} "
        f"to {_pct((dv.get('gap_recovered_ci95') or [None, None])[1], 0)}).",
        "",
        "### Choices",
        "",
        f"- Temperature x alpha (seed {ch['sweep_seed']}, pooled development log loss): chosen T={ch['temperature']:g}, "
        f"alpha={ch['alpha']:g} (grid below and [sweep.png](sweep.png); {doc['timings_s'].get('choices_s', 0):.0f} s "
        "with the control's grid).",
        f"- Tuned control (lr x weight decay): chosen lr={ch['control_lr']:g}, weight decay={ch['control_weight_decay']:g}. "
        "Grid: " + ", ".join(f"{g['lr']:g}/{g['weight_decay']:g} {_f(g['log_loss'])}" for g in ch["control_grid"])
        + ". Epochs: early stopping on each fit's own newest development rows.",
        f"- Label smoothing control: the distilled loss with the same T={ch['temperature']:g} and alpha={ch['alpha']:g}, its "
        "soft target being the training rows' class shares on every bar instead of the teacher: the same pull away "
        "from one-hot labels without the teacher's per-bar knowledge (is the gain just regularisation?).",
        *size_lines(doc, cfg),
        "- Decision policy of the shipped student (stored in the artifact manifest as `policy`): "
        + "; ".join(f"{case}: threshold {min(v['threshold'], 1.0):.3g}" + (" (never acts)" if v["threshold"] >= 1.0 else "")
                    + f", hold {v['hold_bars']} bar(s), development net {_pct(v['development_net_return_per_symbol'], 2)} per symbol"
                    for case, v in doc["policy"]["cases"].items()) + ".",
        "",
        *_sweep_table(ch),
        "### Trading on the development blocks (policies chosen on these same bars: in-sample for the policy)",
        "",
        *_trading_table(dv["trading"]),
        "",
    ]
    if doc.get("ablations"):
        lines += ["### Ablations (development folds, every seed, judged by the paired interval)", "",
                  "| option | teacher LL | distilled LL | default minus option, millinats [95% CI] | verdict | seconds |",
                  "|---|---|---|---|---|---|"]
        for a in doc["ablations"]:
            lines.append(f"| {a['name']}: {a['description']} | {_f(a['teacher_log_loss'])} | {_f(a['student_log_loss'])} | "
                         f"{_ci(a.get('delta_vs_default'))} | {a['verdict']} | {a['seconds']} |")
        lines += ["", f"Default distilled LL on the same rows: {_f(dv['student']['log_loss'])}. "
                  "Positive: the option lowers the log loss. None of these is adopted automatically; the config is as shipped.", ""]
    if doc.get("regime"):
        from .regime import markdown as regime_markdown

        lines += regime_markdown(doc["regime"])
    fs = doc["final_student"]
    ti = doc["teacher_inputs"]
    lines += [
        "## Method",
        "",
        f"- Labels: forward log return over h={cfg.horizon_bars} bars; hold band = max({cfg.band_k:g} x RMS of the last "
        f"{cfg.vol_window} one-bar returns x sqrt(h), round trip {2 * cfg.fee_per_side * 100:.3f}%). Class shares over all rows: "
        + ", ".join(f"{n} {_pct(v)}" for n, v in zip(doc["classes"], doc["data"]["class_share"], strict=True)) + ".",
        f"- Split: lockbox = the newest {sp['lockbox']['days']:g} days ({_iso(sp['lockbox']['lo_ms'])} to "
        f"{_iso(sp['lockbox']['hi_ms'])} UTC). Development = rows whose label window plus a {cfg.embargo_bars}-bar embargo ends "
        f"before it ({sp['purge_bars']} bars purged), cut into {cfg.n_folds + 2} equal blocks. The teacher for block j fits "
        "on blocks < j (purged) and labels block j; a teacher fitted on all development rows labels the lockbox. "
        f"Students of block k fit on blocks 1..k-1 (those with soft targets), early-stopping on their newest {cfg.val_frac:.0%}.",
        f"- Teacher: MLPs {', '.join('-'.join(map(str, h)) for h in cfg.teacher_hidden)}"
        + (f" and LightGBM (weight {cfg.lgbm_weight:g})" if cfg.teacher_lgbm else "")
        + f"; {ti['columns']} input columns: the student's {len(ti['student'])} features, {len(ti['extra'])} teacher-only ones ("
        + ", ".join(ti["extra"]) + ")"
        + (f", {len(ti['duplicates_of_student_features'])} recomputations of student features ("
           + ", ".join(ti["duplicates_of_student_features"]) + ")" if ti["duplicates_of_student_features"] else "")
        + f" and {ti['symbol_indicators']} symbol indicators.",
        f"- Student: {'-'.join(map(str, cfg.student_hidden))} {cfg.student_activation} MLP on the daemon's features, loss "
        "alpha*CE + (1-alpha)*T^2*KL (kernels.mlp.kd_loss_grad), Adam "
        f"(lr {cfg.student_lr:g}, batch {cfg.student_batch}), <= {cfg.student_epochs} epochs, patience {cfg.student_patience}; "
        "scored through kernels.student.student_batch, the code the daemon serves with.",
        f"- Shipped artifact: the distilled student (seed {fs['seed']}, T={ch['temperature']:g}, alpha={ch['alpha']:g}) refitted "
        f"on {fs['fit_rows']} rows, {_iso(fs['fit_lo_ms'])} to {_iso(fs['fit_hi_ms'])} UTC (development blocks >= 1 and the lockbox, "
        f"soft targets out of fold), for {fs['epochs']} epochs: the epoch the lockbox model early-stopped at on "
        f"{_iso(fs['early_stopping']['lo_ms'])} to {_iso(fs['early_stopping']['hi_ms'])}. It has no held-out score; the "
        "lockbox figures are those of the same configuration fitted without the lockbox.",
        "",
        "## Data and cost",
        "",
        "| file | rows | range (UTC) | gaps (missing bars) |",
        "|---|---|---|---|",
    ]
    for f in doc["data"]["files"]:
        lines.append(f"| {f['file']} | {f['rows']} | {_iso(f['first_start_ms'])} to {_iso(f['last_start_ms'])} | {f['gaps']} ({f['missing_bars']}) |")
    lines += ["", "Wall time per part (s): " + ", ".join(f"{k.removesuffix('_s')} {v}" for k, v in doc["timings_s"].items()), "",
              "Teacher members, development log loss: "
              + ", ".join(f"{k} {_f(v)}" for k, v in doc["teacher_members_development_log_loss"].items()) + ".", "",
              *teacher_store_lines(doc),
              "Plots: " + ", ".join(f"[{p}]({p})" for p in doc.get("plots", [])), ""]
    if "sequence_teacher" in doc.get("methods", {}):
        from .sequence_eval import markdown_lines

        lines += markdown_lines(doc["methods"]["sequence_teacher"]["detail"])
    return "\n".join(lines)
