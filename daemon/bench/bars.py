"""What the benchmarks run on: real candles from ``data/`` (or ``../shared/data``) and the student to serve.

The student is the shipped ``models/default.npz`` when it exists; otherwise an artifact of the shipped
architecture (F-16-8-3, ReLU, F the kernels' feature count) with seeded random weights and the real
normalisation statistics of the sample data, written to a temporary directory. Latency does not depend on the
weight values (no branch in
the forward pass depends on them except ReLU's, which costs the same either way), and the report says
which one was used.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from daemon.core.artifact import load_artifact, save_artifact
from daemon.core.model import Model
from kernels.features import features_batch
from kernels.layout import FEATURE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
SHARED_5M = ROOT.parent / "shared" / "data" / "bybit-linear-5m"
SHIPPED_MODEL = ROOT / "models" / "default.npz"
STUDENT_SIZES = (len(FEATURE_NAMES), 16, 8, 3)
STUDENT_ACTIVATIONS = ("relu", "relu", "linear")


def load_csv(path) -> np.ndarray:
    """Rows ``start_ms, open, high, low, close, volume`` of a kline CSV as float64 (n, 6)."""
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)


def sample_bars(symbol: str = "BTCUSDT") -> list[tuple[float, float, float, float, float]]:
    """The 5m sample of ``symbol`` from ``data/`` as Python-float tuples (o, h, l, c, v), as the parser gives them."""
    rows = load_csv(DATA / f"{symbol}-5m.csv")
    return [tuple(float(x) for x in r[1:6]) for r in rows]


def sample_features() -> tuple[np.ndarray, list[str]]:
    """Feature rows (warm-up dropped) of every 5m sample in ``data/`` stacked, and the files they came from."""
    files = sorted(DATA.glob("*-5m.csv"))
    parts = []
    for f in files:
        rows = load_csv(f)
        x = features_batch(*(rows[:, i] for i in range(1, 6)))
        parts.append(x[np.all(np.isfinite(x), axis=1)])
    return np.concatenate(parts), [f.name for f in files]


def replay_files() -> tuple[list[Path], str]:
    """The 5m CSVs for throughput runs: the full ``../shared`` set when present, else the ``data/`` samples."""
    if SHARED_5M.is_dir():
        files = sorted(SHARED_5M.glob("*.csv"))
        if files:
            return files, "../shared/data/bybit-linear-5m"
    return sorted(DATA.glob("*-5m.csv")), "data/"


def random_student_artifact(path, seed: int = 0) -> str:
    """Write an artifact of the shipped student shape with seeded random weights; return its model id."""
    rng = np.random.default_rng(seed)
    sizes = STUDENT_SIZES
    weights = [rng.normal(0, 1 / np.sqrt(sizes[k]), size=(sizes[k + 1], sizes[k])) for k in range(len(sizes) - 1)]
    biases = [rng.normal(0, 0.1, size=sizes[k + 1]) for k in range(len(sizes) - 1)]
    feats, files = sample_features()
    bars = load_csv(DATA / "BTCUSDT-5m.csv")
    manifest = {
        "normalisation": {"clip": 6.0},
        "distillation": {"temperature": 1.0, "alpha": 1.0},
        "labels": {"note": "random weights: benchmark stand-in until a trained model ships"},
        "data": {"symbols": [f.split("-")[0] for f in files], "interval": "5",
                 "start_ms": int(bars[0, 0]), "end_ms": int(bars[-1, 0])},
        "metrics": {},
    }
    return save_artifact(path, weights=weights, biases=biases, activations=list(STUDENT_ACTIVATIONS),
                         feature_mean=feats.mean(axis=0), feature_std=feats.std(axis=0), manifest=manifest)


def bench_model(path: str | Path | None = None, workdir: str | Path | None = None) -> tuple[Model, str, Path]:
    """The student to benchmark, a note saying where it came from, and its artifact file.

    ``path`` given: that artifact. Otherwise the shipped model, or a random-weight stand-in of its shape
    written into ``workdir`` (a fresh temporary directory, left for the caller to remove, when None).
    """
    if path is not None:
        return built_model(path), f"artifact {path}", Path(path)
    if SHIPPED_MODEL.exists():
        return built_model(SHIPPED_MODEL), f"shipped model {SHIPPED_MODEL.relative_to(ROOT)}", SHIPPED_MODEL
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="kdsignal-bench-"))
    p = workdir / "random-student.npz"
    random_student_artifact(p)
    sizes = "-".join(str(s) for s in STUDENT_SIZES)
    return built_model(p), f"random-weight stand-in of the shipped shape {sizes} (no models/default.npz yet)", p


def built_model(path: str | Path) -> Model:
    """``Model.load(path)`` serving the ahead-of-time step, built first into the default kernel directory
    when it is not there yet (the bench, like ``kdsignal build-kernel``, may compile; the daemon never does)."""
    from daemon.core.kernel_store import kernel_dir
    from daemon.core.model import student_vector
    from daemon.tools.kernel_build import build_kernel

    build_kernel(student_vector(load_artifact(path)), kernel_dir())
    return Model.load(path)
