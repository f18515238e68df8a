"""The sequence teacher's network: a small dilated causal temporal CNN over raw bar windows, in PyTorch (CPU).

The one module besides ``sequence_eval`` that imports torch (the ``[seq]`` extra); nothing the daemon runs
imports it, and the trainer imports it only when ``[train] teacher_sequence`` is on
(``tests/test_layers.py::test_torch_stays_in_the_sequence_teacher``).

Input: windows from ``sequence.windows`` (B, N, C) of raw channels; the network standardises them with
per-channel statistics of its training rows (buffers of the state_dict, so a saved member carries them),
runs residual causal convolutions with dilations 1, 2, 4, ... and reads the last position (the row's bar).
Training: cross-entropy on the teacher's targets, Adam, a random subsample of the training rows each
epoch, early stopping on the validation tail's collapsed log loss, and a wall-clock cap per fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .sequence import windows
from .teacher import collapse, log_loss

STATE_FILE = "sequence.pt"
CLIP = 8.0  # |z| bound on standardised channels, as the teacher's MLP inputs


class TemporalCNN(nn.Module):
    """Residual dilated causal convolutions, then a small head on the last time step."""

    def __init__(self, c_in: int, channels: int, n_targets: int, dilations: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(c_in))
        self.register_buffer("std", torch.ones(c_in))
        self.dilations = tuple(dilations)
        self.inp = nn.Conv1d(c_in, channels, 1)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 2, dilation=d) for d in self.dilations)
        self.head = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, n_targets))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_targets) from raw windows (B, N, C)."""
        z = torch.clamp((x - self.mean) / self.std, -CLIP, CLIP).transpose(1, 2)
        h = torch.relu(self.inp(z))
        for d, conv in zip(self.dilations, self.convs, strict=True):
            # left padding only: position t sees t - d and t, never a later bar
            h = h + torch.relu(conv(nn.functional.pad(h, (d, 0))))
        return self.head(h[:, :, -1])


def dilations_for(n_bars: int) -> tuple[int, ...]:
    """1, 2, 4, ... while the receptive field (1 + sum of dilations) fits in the window."""
    out, d = [], 1
    while 1 + sum(out) + d <= n_bars:
        out.append(d)
        d *= 2
    return tuple(out)


@dataclass
class SequenceMember:
    """A fitted sequence teacher with what it needs to predict: its window length and target -> class map."""

    model: TemporalCNN
    n_bars: int
    to_class: np.ndarray
    info: dict

    def predict(self, bars: np.ndarray, sym: np.ndarray, rows: np.ndarray, batch: int = 4096) -> np.ndarray:
        """Class probabilities (len(rows), 3) of pooled ``rows``."""
        return collapse(predict_targets(self.model, bars, sym, rows, self.n_bars, batch), self.to_class)


def predict_targets(model: TemporalCNN, bars: np.ndarray, sym: np.ndarray, rows: np.ndarray, n_bars: int,
                    batch: int = 4096) -> np.ndarray:
    """Target probabilities (len(rows), n_targets), float64."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            x = torch.from_numpy(windows(bars, sym, rows[i: i + batch], n_bars))
            out.append(torch.softmax(model(x), dim=1).double().numpy())
    n_targets = model.head[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, n_targets))


def fit_sequence(bars: np.ndarray, sym: np.ndarray, fit_rows: np.ndarray, t_fit: np.ndarray, val_rows: np.ndarray,
                 y_val: np.ndarray, to_class: np.ndarray, cfg: TrainConfig, seed: int) -> SequenceMember:
    """Fit on pooled rows ``fit_rows`` (targets ``t_fit``: bucket indices), early-stopping on ``val_rows``.

    Stops after ``sequence_epochs`` epochs, ``sequence_patience`` epochs without a better validation log
    loss, or ``sequence_fit_max_s`` seconds (checked every batch; the epoch then ends early and is scored).
    """
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, cfg.num_threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 77])
    n_targets = len(to_class)
    model = TemporalCNN(bars.shape[1], cfg.sequence_channels, n_targets, dilations_for(cfg.sequence_window_bars))
    own = bars[fit_rows]
    model.mean.copy_(torch.from_numpy(own.mean(axis=0)))
    model.std.copy_(torch.from_numpy(np.maximum(own.std(axis=0), 1e-6)))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.sequence_lr)
    loss_fn = nn.CrossEntropyLoss()
    targets = torch.from_numpy(np.asarray(t_fit, dtype=np.int64))
    best, best_state, best_epoch, history, stale, out_of_time = np.inf, None, 0, [], 0, False
    per_epoch = len(fit_rows) if cfg.sequence_rows_per_epoch <= 0 else min(cfg.sequence_rows_per_epoch, len(fit_rows))
    for epoch in range(cfg.sequence_epochs):
        model.train()
        pick = rng.choice(len(fit_rows), size=per_epoch, replace=False)
        for i in range(0, per_epoch, cfg.sequence_batch):
            b = pick[i: i + cfg.sequence_batch]
            x = torch.from_numpy(windows(bars, sym, fit_rows[b], cfg.sequence_window_bars))
            opt.zero_grad()
            loss = loss_fn(model(x), targets[b])
            loss.backward()
            opt.step()
            if time.perf_counter() - t0 > cfg.sequence_fit_max_s:
                out_of_time = True
                break
        p = collapse(predict_targets(model, bars, sym, val_rows, cfg.sequence_window_bars), to_class)
        history.append(log_loss(p, y_val) if len(val_rows) else float(loss.item()))
        if history[-1] < best - 1e-6:
            best, best_epoch, stale = history[-1], epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if out_of_time or stale > cfg.sequence_patience:
            break
    model.load_state_dict(best_state)
    info = {"member": "sequence", "best_epoch": best_epoch, "epochs_run": len(history), "val_log_loss": best,
            "val_history": history, "rows_per_epoch": per_epoch, "stopped_by_time_cap": out_of_time,
            "seconds": round(time.perf_counter() - t0, 2)}
    return SequenceMember(model, cfg.sequence_window_bars, np.asarray(to_class), info)


def save_sequence_member(member: SequenceMember, directory: str | Path) -> dict:
    """Write the member's state_dict to ``directory/sequence.pt``; return its manifest entry (no pickle needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(member.model.state_dict(), directory / STATE_FILE)
    m = member.model
    return {"kind": "sequence", "file": STATE_FILE,
            "config": {"c_in": int(m.inp.in_channels), "channels": int(m.inp.out_channels),
                       "n_targets": int(m.head[-1].out_features), "dilations": list(m.dilations),
                       "window_bars": int(member.n_bars)},
            "to_class": [int(c) for c in member.to_class], "info": member.info}


def load_sequence_member(directory: str | Path, entry: dict) -> SequenceMember:
    """Rebuild a member from its manifest entry and ``directory/<entry file>`` (``torch.load(weights_only=True)``)."""
    if entry.get("kind") != "sequence":
        raise ValueError(f"manifest entry is of kind {entry.get('kind')!r}, expected 'sequence'")
    c = entry["config"]
    model = TemporalCNN(int(c["c_in"]), int(c["channels"]), int(c["n_targets"]), tuple(int(d) for d in c["dilations"]))
    state = torch.load(Path(directory) / entry["file"], weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    return SequenceMember(model, int(c["window_bars"]), np.asarray(entry["to_class"], dtype=np.int64),
                          dict(entry.get("info", {})))
