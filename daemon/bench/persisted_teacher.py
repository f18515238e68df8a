"""The real teacher, as ``kdsignal train`` persisted it (``models/teacher/``), timed per bar and in batch.

The teacher reads more than the student's features: longer windows, time of day, the other symbols' moves
and a symbol indicator (``daemon.training.inputs``). Those extras exist only in batch form, so the bench
computes the teacher's input rows once, with the training code (``daemon.training.dataset.build`` over the
5m samples in ``data/``, all symbols, since the market columns need them), and feeds the rows of BTCUSDT
one per call. A per-bar figure therefore excludes computing the teacher's inputs, which the student's
``student_step`` includes: the student-vs-teacher ratio is a lower bound.

Per bar, each call scores one row through the persisted members exactly as ``Teacher.predict`` does
(``daemon.training.teacher``): the quantile map and MLP members in NumPy, LightGBM's ``Booster.predict``
on one thread, the blend. In batch, ``Teacher.predict`` over every row at once.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from .bars import DATA, ROOT

TEACHER_DIR = ROOT / "models" / "teacher"
BATCH_REPEATS = 5
SYMBOL = "BTCUSDT"


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def teacher_folder(artifact_path: Path | None, explicit: str | Path | None = None) -> Path:
    """``explicit``; else the ``teacher/`` folder beside the benchmarked artifact; else ``models/teacher``."""
    if explicit is not None:
        return Path(explicit)
    if artifact_path is not None and (Path(artifact_path).parent / "teacher" / "manifest.json").exists():
        return Path(artifact_path).parent / "teacher"
    return TEACHER_DIR


def input_rows(names: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """The teacher's input rows (n, len(names)) float32 for the BTCUSDT sample's warm bars, the student's
    features of the same bars (n, F), and a note saying how they were made.

    Columns are matched by name (a repeated name by its occurrence); a column the samples cannot give
    (a symbol indicator of a symbol not in ``data/``) is fed as zeros and named in the note.
    """
    from daemon.training.config import TrainConfig
    from daemon.training.data import load_dataset
    from daemon.training.dataset import build
    from daemon.training.inputs import STUDENT_FEATURES

    extras = any(n not in STUDENT_FEATURES for n in names)
    P = build(load_dataset([DATA], interval="5"), TrainConfig(teacher_extra_features=extras))
    where: dict[str, list[int]] = defaultdict(list)
    for j, n in enumerate(P.teacher_names):
        where[n].append(j)
    seen: Counter = Counter()
    x = np.zeros((len(P), len(names)), dtype=np.float32)
    missing = []
    for j, n in enumerate(names):
        k = seen[n]
        seen[n] += 1
        if k < len(where.get(n, [])):
            x[:, j] = P.x_teacher[:, where[n][k]]
        else:
            missing.append(n)
    sym = P.symbols.index(SYMBOL) if SYMBOL in P.symbols else 0
    keep = (P.sym == sym) & np.all(np.isfinite(P.x_student), axis=1)
    note = (f"{int(keep.sum()):,} warm {P.symbols[sym]} 5m bars of data/, the teacher's {len(names)} input columns "
            "computed in batch by daemon.training.dataset.build (not timed)")
    if missing:
        note += f"; {len(missing)} columns the samples cannot give, fed as zeros: {', '.join(missing)}"
    return x[keep], P.x_student[keep], note


class BenchTeacher:
    """The persisted teacher with one entry point per way of timing it; each contender owns a row cursor."""

    def __init__(self, stored, rows: np.ndarray, x_student: np.ndarray, note: str):
        from daemon.training import nn
        from daemon.training.teacher import collapse

        self.stored, self.teacher = stored, stored.teacher
        self.rows, self.x_student, self.note = rows, x_student, note
        self.n, self.i = len(rows), 0
        self._nn, self._collapse = nn, collapse
        self.probs = np.zeros(3)

    def with_own_cursor(self) -> BenchTeacher:
        """The same members and rows, its own position in them."""
        return BenchTeacher(self.stored, self.rows, self.x_student, self.note)

    def _row(self) -> np.ndarray:
        i = self.i
        self.i = i + 1 if i + 1 < self.n else 0
        return self.rows[i : i + 1]

    def ensemble(self, o, h, l, c, v) -> int:
        """The whole teacher on the next row: ``Teacher.predict`` (every member, blended)."""
        self.probs = self.teacher.predict(self._row())[0][0]
        return int(self.probs.argmax())

    def mlps(self, o, h, l, c, v) -> int:
        """The MLP members on the next row: input transform, each member in NumPy, softmax, class sums, mean."""
        t = self.teacher
        xs = t.scaler(self._row())
        p = np.mean([self._collapse(self._nn.softmax(self._nn.predict(m, xs).astype(np.float64)), t.to_class)
                     for m in t.mlps], axis=0)
        self.probs = p[0]
        return int(self.probs.argmax())

    def lgbm(self, o, h, l, c, v) -> int:
        """LightGBM's ``Booster.predict`` on the next row (one thread), outputs summed into classes."""
        p = self._collapse(self.teacher.lgbm.predict(self._row(), num_threads=1), self.teacher.to_class)
        self.probs = p[0]
        return int(self.probs.argmax())

    def batch(self, model) -> list[dict]:
        """Teacher and student over every row at once (median of ``BATCH_REPEATS`` calls each)."""
        from kernels.layout import M_FEATURES

        f = int(model.vector[M_FEATURES])
        out = []
        for name, call, what in (
            ("teacher_batch", lambda: self.teacher.predict(self.rows),
             "Teacher.predict over all rows at once (every member, LightGBM on one thread), inputs precomputed"),
            ("student_batch", lambda: model.predict_features(self.x_student[:, :f]),
             "the student's kernels.student.student_batch over the same bars' features, precomputed"),
        ):
            call()  # warm: first-call compilation and allocation are not the steady cost
            times = []
            for _ in range(BATCH_REPEATS):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            s = float(np.median(times))
            out.append({"name": name, "rows": self.n, "repeats": BATCH_REPEATS, "seconds": s,
                        "us_per_bar": s / self.n * 1e6, "bars_per_s": self.n / s, "includes": what})
        return out

    def sizes(self) -> list[dict]:
        """Size entries: MLP members, LightGBM trees, and the whole folder on disk."""
        man, files = self.stored.manifest, self.stored.file_bytes()
        mlp_members = [m for m in man["members"] if m["kind"] == "mlp"]
        mlp_params = sum(w.size + b.size for m in self.teacher.mlps for w, b in zip(m.weights, m.biases, strict=True))
        hidden = ", ".join("-".join(str(w) for w in m["sizes"][1:-1]) for m in mlp_members)
        out = []
        if mlp_members:
            out.append({"name": "teacher_mlps", "params": int(mlp_params),
                        "bytes": sum(files[m["file"]] for m in mlp_members) + files[man["input_transform"]["file"]],
                        "includes": f"{len(mlp_members)} MLP members ({hidden}) on {man['inputs']['count']} inputs, "
                                    "float32 .npz on disk, with their input transform's file"})
        lg = next((m for m in man["members"] if m["kind"] == "lightgbm"), None)
        params = int(mlp_params)
        if lg is not None:
            text = (self.stored.path / lg["file"]).read_text(encoding="ascii")
            leaves = [int(line.split("=", 1)[1]) for line in text.splitlines() if line.startswith("num_leaves=")]
            n_leaves = sum(leaves)
            # each tree: num_leaves leaf values + (num_leaves - 1) splits (feature, threshold, two children)
            lg_params = n_leaves + 4 * (n_leaves - len(leaves))
            params += lg_params
            out.append({"name": "teacher_lgbm", "params": lg_params, "bytes": files[lg["file"]],
                        "includes": f"{len(leaves)} trees, {n_leaves:,} leaves (params: leaf values + 4 per split); "
                                    "bytes: LightGBM's model text on disk"})
        out.append({"name": "teacher_total", "params": params, "bytes": sum(files.values()),
                    "includes": f"the whole folder {_shown(self.stored.path)} on disk (manifest included)"})
        return out

    def describe(self) -> str:
        """One line for reports: members, inputs, where it was read from, which artifact it belongs to."""
        man = self.stored.manifest
        members = ", ".join(f"{m['name']} ({m['kind']}" + (f" {'-'.join(map(str, m['sizes'][1:-1]))}"
                                                          if m["kind"] == "mlp" else f" {m.get('trees')} trees")
                            + f", weight {m['weight']:.3g})" for m in man["members"])
        return (f"the persisted teacher {_shown(self.stored.path)} (of model `{man['model_id']}`): {members}; "
                f"{man['inputs']['count']} inputs. Rows: {self.note}")


def load(folder: Path) -> tuple[BenchTeacher | None, str | None]:
    """(the teacher, None), or (None, why there is none to time)."""
    if not (Path(folder) / "manifest.json").exists():
        return None, (f"no persisted teacher at {_shown(folder)} (kdsignal train writes it next to the artifact): "
                      "nothing else is timed in its place")
    from daemon.training.teacher_store import TeacherStoreError, load_teacher

    try:
        stored = load_teacher(folder, threads=1)
    except TeacherStoreError as e:
        return None, f"the persisted teacher is refused: {e}"
    rows, x_student, note = input_rows(stored.input_names)
    return BenchTeacher(stored, rows, x_student, note), None
