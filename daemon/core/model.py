"""The loaded student and its per-symbol state: layer-2 objects (no I/O beyond reading the artifact).

``SymbolState.update`` is the whole per-bar computation, one compiled call: ``kernels.student.student_step``
specialised to the artifact's layer sizes (``kernels.specialise``) and compiled ahead of time by numba
(``kernels.aot``), so serving never loads numba. Where that build cannot be had (no C compiler, say), the
same specialised source runs through numba's JIT, and ``kernel_note`` says so. Training, replay and the
live daemon all run these objects, so what was evaluated is what serves.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from daemon.core.artifact import Artifact, load_artifact
from kernels.aot import AotUnavailable, aot_step
from kernels.layout import FEATURE_STATE_SIZE, S_FILLED, S_SEEN, pack_student, probs_offset, student_state_size


class Model:
    """A validated student ready to serve: the packed model vector plus its manifest."""

    __slots__ = (
        "artifact",
        "vector",
        "id",
        "interval",
        "classes",
        "warmup_bars",
        "manifest",
        "step_kernel",
        "kernel_note",
        "_state_size",
        "_probs_at",
    )

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.vector = pack_student(
            artifact.mlp, artifact.feature_mean, artifact.feature_std, float(artifact.manifest["normalisation"]["clip"])
        )
        self.id: str = artifact.model_id
        self.interval: str = artifact.interval
        self.classes: tuple[str, ...] = tuple(artifact.manifest["classes"])  # validated against kernels.CLASSES
        self.warmup_bars: int = int(artifact.manifest["warmup_bars"])
        self._state_size = student_state_size(self.vector)
        self._probs_at = probs_offset(self.vector)
        self.step_kernel, self.kernel_note = _step_kernel(self.vector)

    @classmethod
    def load(cls, path) -> Model:
        """Load and validate an artifact file; raises ``ArtifactError`` naming the bad field."""
        return cls(load_artifact(path))

    def new_state(self) -> SymbolState:
        """A fresh per-(symbol, interval) state: warms up over ``warmup_bars`` closed bars."""
        return SymbolState(self)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (n, K) for a feature matrix (n, F), by the kernels the daemon runs."""
        from kernels.student import student_batch  # numba: training and checks, never the serving path

        feats = np.ascontiguousarray(features, dtype=np.float64)
        out = np.empty((feats.shape[0], len(self.classes)), dtype=np.float64)
        student_batch(self.vector, feats, out)
        return out


def _step_kernel(vector: np.ndarray):
    """The per-bar kernel for this architecture and a note naming which one it is.

    Ahead-of-time compiled first; else the same specialised source through numba's JIT (numba and LLVM
    then live in this process: about 120 MB more); else, when no generated module can be written, the
    generic JIT kernel. All three give the same bits (``tests/test_aot.py``, ``tests/test_specialise.py``).
    """
    try:
        return aot_step(vector), "aot"
    except AotUnavailable as e:
        why = f"no ahead-of-time kernel: {e}"
    from kernels.specialise import cache_dir, specialised_step

    try:
        return specialised_step(vector), f"jit ({why})"
    except OSError as e:
        from kernels.student import student_step_unchecked

        return student_step_unchecked, f"generic jit (cannot write {cache_dir()}: {e.strerror or e})"


class SymbolState:
    """Rolling features and student scratch for one (symbol, interval), in one preallocated vector.

    ``update(o, h, l, c, v) -> int`` advances by one closed bar and runs the student: it returns the
    class index (probabilities in ``probs``), -1 while warming up, or -2 for an invalid bar before any
    valid one (later invalid bars are filled forward, see ``kernels.features``). It is a ``partial`` of
    the model's compiled step kernel over this state's own arrays: no Python frame, no dispatch.
    """

    __slots__ = ("model", "array", "probs", "update")

    def __init__(self, model: Model):
        self.model = model
        # The kernel's entry point does not check its arguments: these arrays are ours, float64, contiguous.
        self.array = np.zeros(model._state_size, dtype=np.float64)
        self.probs = self.array[model._probs_at : model._probs_at + len(model.classes)]
        self.update = partial(model.step_kernel, self.array, model.vector)

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


__all__ = ["Model", "SymbolState"]
