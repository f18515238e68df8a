"""The loaded student and its per-symbol state: layer-2 objects (no I/O beyond reading the artifact).

``SymbolState.update`` is the whole per-bar computation, one numba call (``kernels.student.student_step``).
Training, replay and the live daemon all run these objects, so what was evaluated is what serves.
"""

from __future__ import annotations

import numpy as np

from daemon.artifact import Artifact, load_artifact
from kernels import CLASSES
from kernels.features import FEATURE_STATE_SIZE, S_FILLED, S_SEEN
from kernels.student import (
    STATUS_WARMING,
    pack_student,
    probs_offset,
    student_batch,
    student_state_size,
    student_step,
)


class Model:
    """A validated student ready to serve: the packed model vector plus its manifest."""

    __slots__ = ("artifact", "vector", "id", "interval", "classes", "warmup_bars", "manifest", "_state_size", "_probs_at")

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.vector = pack_student(
            artifact.mlp, artifact.feature_mean, artifact.feature_std, float(artifact.manifest["normalisation"]["clip"])
        )
        self.id: str = artifact.model_id
        self.interval: str = artifact.interval
        self.classes: tuple[str, ...] = CLASSES
        self.warmup_bars: int = int(artifact.manifest["warmup_bars"])
        self._state_size = student_state_size(self.vector)
        self._probs_at = probs_offset(self.vector)

    @classmethod
    def load(cls, path) -> Model:
        """Load and validate an artifact file; raises ``ArtifactError`` naming the bad field."""
        return cls(load_artifact(path))

    def new_state(self) -> SymbolState:
        """A fresh per-(symbol, interval) state: warms up over ``warmup_bars`` closed bars."""
        return SymbolState(self)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (n, K) for a feature matrix (n, F), by the kernels the daemon runs."""
        feats = np.ascontiguousarray(features, dtype=np.float64)
        out = np.empty((feats.shape[0], len(self.classes)), dtype=np.float64)
        student_batch(self.vector, feats, out)
        return out


class SymbolState:
    """Rolling features and student scratch for one (symbol, interval), in one preallocated vector."""

    __slots__ = ("model", "array", "probs", "_vector")

    def __init__(self, model: Model, array: np.ndarray | None = None):
        self.model = model
        self._vector = model.vector
        self.array = np.zeros(model._state_size, dtype=np.float64) if array is None else array
        self.probs = self.array[model._probs_at : model._probs_at + len(model.classes)]

    def update(self, o: float, h: float, l: float, c: float, v: float) -> int:
        """Advance by one closed bar and run the student: the class index, or -1 while warming up.

        An invalid bar before any valid one returns -2; later invalid bars are filled forward (see
        ``kernels.features``). ``probs`` holds the probabilities when the result is >= 0.
        """
        return student_step(self.array, self._vector, o, h, l, c, v)

    @property
    def warm(self) -> bool:
        return self.array[S_SEEN] >= self.model.warmup_bars

    @property
    def bars_seen(self) -> int:
        return int(self.array[S_SEEN])

    @property
    def bars_filled(self) -> int:
        """Bars the missing-bar policy filled forward."""
        return int(self.array[S_FILLED])

    def rebind(self, model: Model) -> SymbolState:
        """This symbol's state under another model (SIGHUP reload): rolling features carry over."""
        new = SymbolState(model)
        new.array[:FEATURE_STATE_SIZE] = self.array[:FEATURE_STATE_SIZE]
        return new


__all__ = ["Model", "SymbolState", "STATUS_WARMING"]
