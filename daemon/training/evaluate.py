"""Out-of-sample metrics of probabilistic sell/hold/buy forecasts, and a trading read-out of the signals.

All functions take probabilities ``p`` (n, 3) in class order sell/hold/buy and labels ``y`` (n,).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-15


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of ``y``."""
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0)))) if len(y) else float("nan")


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float(np.mean(np.argmax(p, axis=1) == y)) if len(y) else float("nan")


def macro_f1(p: np.ndarray, y: np.ndarray, n_classes: int = 3) -> float:
    """Unweighted mean of per-class F1 of the argmax predictions (a class never predicted nor present: 0)."""
    pred = np.argmax(p, axis=1)
    f1s = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s))


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top-class confidence over ``bins`` equal-width bins."""
    conf = p.max(axis=1)
    hit = np.argmax(p, axis=1) == y
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(conf[m].mean() - hit[m].mean())
    return float(total / max(len(y), 1))


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count (the reliability diagram's points)."""
    conf = p.max(axis=1)
    hit = np.argmax(p, axis=1) == y
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    out = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        m = idx == b
        out["confidence"].append(float(conf[m].mean()) if m.any() else float("nan"))
        out["accuracy"].append(float(hit[m].mean()) if m.any() else float("nan"))
        out["count"].append(int(m.sum()))
    return out


def kl(p_teacher: np.ndarray, p_student: np.ndarray) -> float:
    """Mean KL(teacher || student) in nats."""
    pt = np.clip(p_teacher, EPS, 1.0)
    ps = np.clip(p_student, EPS, 1.0)
    return float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))


def agreement(p_a: np.ndarray, p_b: np.ndarray) -> float:
    """Share of rows where both put the most probability on the same class."""
    return float(np.mean(np.argmax(p_a, axis=1) == np.argmax(p_b, axis=1)))


def gain_kept(base: float, teacher: float, student: float) -> float:
    """Share of the teacher's log-loss gain over the baseline that the student keeps (NaN if no gain)."""
    g = base - teacher
    return float((base - student) / g) if g > 0 else float("nan")


def classification(p: np.ndarray, y: np.ndarray, prior: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Accuracy, macro-F1, log loss and ECE of ``p``, with the prior's log loss and majority accuracy."""
    base = np.tile(prior, (len(y), 1))
    return {
        "log_loss": log_loss(p, y),
        "accuracy": accuracy(p, y),
        "macro_f1": macro_f1(p, y),
        "ece": ece(p, y, bins),
        "baseline_log_loss": log_loss(base, y),
        "majority_accuracy": float(np.mean(y == int(np.argmax(prior)))),
        "n": len(y),
    }


def trading(p: np.ndarray, next_ret: np.ndarray, groups: np.ndarray, fee_per_side: float,
            bars_per_year: float) -> dict[str, float]:
    """Trade the signals: long on buy, short on sell, flat on hold, decided at bar t, filled at t+1's open.

    Each position earns ``next_ret[t] = log(open[t+2] / open[t+1])`` and pays ``fee_per_side`` per unit of
    position change (entering, flipping = 2 units, leaving; everything is closed at the end of each group).
    ``groups`` separates independent sequences (one per symbol); rows within a group are consecutive bars.
    Returns hit rate (profitable share of bars in the market), net and gross summed log return per symbol
    (mean over groups), annualised Sharpe of the per-bar net return, turnover (position change per bar)
    and the worst drawdown of any group's cumulative net return.
    """
    pos = np.argmax(p, axis=1).astype(np.int64) - 1  # sell=-1, hold=0, buy=+1
    r = np.nan_to_num(next_ret, nan=0.0)
    pnl_all, gross_all, nets, grosses, dds, turns, hits, active = [], [], [], [], [], [], 0, 0
    for g in np.unique(groups):
        m = groups == g
        ps, rs = pos[m], r[m]
        prev = np.concatenate([[0], ps[:-1]])
        change = np.abs(ps - prev).astype(np.float64)
        change[-1] += abs(ps[-1])  # close at the end
        gross = ps * rs
        net = gross - fee_per_side * change
        pnl_all.append(net)
        gross_all.append(gross)
        nets.append(net.sum())
        grosses.append(gross.sum())
        eq = np.cumsum(net)
        dds.append(float(np.max(np.maximum.accumulate(np.concatenate([[0.0], eq])) - np.concatenate([[0.0], eq]))))
        turns.append(change.sum() / len(ps))
        hits += int(np.sum((ps != 0) & (gross > 0)))
        active += int(np.sum(ps != 0))
    net = np.concatenate(pnl_all) if pnl_all else np.zeros(0)
    sd = net.std()
    return {
        "hit_rate": hits / active if active else float("nan"),
        "in_market": active / max(len(pos), 1),
        "net_return": float(np.mean(nets)) if nets else 0.0,
        "gross_return": float(np.mean(grosses)) if grosses else 0.0,
        "sharpe": float(net.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else 0.0,
        "turnover": float(np.mean(turns)) if turns else 0.0,
        "max_drawdown": float(max(dds)) if dds else 0.0,
    }


def row_log_loss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row negative log-likelihood of ``y``."""
    return -np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))


def cohen_kappa(a: np.ndarray, b: np.ndarray, n_classes: int = 3) -> float:
    """Cohen's kappa between two label vectors (agreement beyond what their class shares give by chance)."""
    if not len(a):
        return float("nan")
    po = float(np.mean(a == b))
    pa = np.bincount(a, minlength=n_classes) / len(a)
    pb = np.bincount(b, minlength=n_classes) / len(b)
    pe = float(np.sum(pa * pb))
    return (po - pe) / (1.0 - pe) if pe < 1.0 else float("nan")


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def rank_ic(score: np.ndarray, target: np.ndarray) -> float:
    """Spearman rank correlation of ``score`` with ``target`` (rows where both are finite)."""
    from scipy.stats import rankdata

    ok = np.isfinite(score) & np.isfinite(target)
    if ok.sum() < 3:
        return float("nan")
    a, b = rankdata(score[ok]), rankdata(target[ok])
    sa, sb = a.std(), b.std()
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb)) if sa > 0 and sb > 0 else float("nan")


def precision_recall(p: np.ndarray, y: np.ndarray, n_classes: int = 3) -> dict[str, list[float]]:
    """Per-class precision and recall of the argmax predictions (NaN where a class is never predicted/present)."""
    pred = np.argmax(p, axis=1)
    prec, rec = [], []
    for c in range(n_classes):
        tp = int(np.sum((pred == c) & (y == c)))
        npred, ntrue = int(np.sum(pred == c)), int(np.sum(y == c))
        prec.append(tp / npred if npred else float("nan"))
        rec.append(tp / ntrue if ntrue else float("nan"))
    return {"precision": prec, "recall": rec}


def signal_measures(p: np.ndarray, y: np.ndarray, fwd: np.ndarray, p_teacher: np.ndarray | None,
                    bins: int = 10) -> dict:
    """Measures that answering "hold" every bar cannot score on (sell/hold/buy = 0/1/2).

    ``move_auc``: 1 - p_hold ranking moves above holds; ``direction_auc``: p_buy - p_sell ranking buys above
    sells among bars that moved; ``ic``: rank correlation of p_buy - p_sell with the forward return;
    with a teacher: Cohen's kappa of the argmax decisions and agreement on bars where the teacher does not
    say hold.
    """
    edge = p[:, 2] - p[:, 0]
    moved = y != 1
    out = {
        "log_loss": log_loss(p, y), "accuracy": accuracy(p, y), "macro_f1": macro_f1(p, y), "ece": ece(p, y, bins),
        "move_auc": auc(1.0 - p[:, 1], moved),
        "direction_auc": auc(edge[moved], y[moved] == 2),
        "ic": rank_ic(edge, fwd),
        **precision_recall(p, y),
        "n": len(y),
    }
    if p_teacher is not None:
        a, b = np.argmax(p_teacher, axis=1), np.argmax(p, axis=1)
        act = a != 1
        out["kappa_vs_teacher"] = cohen_kappa(a, b)
        out["agreement"] = float(np.mean(a == b)) if len(a) else float("nan")
        out["agreement_teacher_acts"] = float(np.mean(a[act] == b[act])) if act.any() else float("nan")
        out["teacher_act_share"] = float(np.mean(act)) if len(a) else float("nan")
    return out
