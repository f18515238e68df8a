"""The loaded student and its per-symbol state: core objects (no I/O beyond reading the artifact and its kernel).

``SymbolState.update`` is the whole per-bar computation, one compiled call: ``kernels.student.student_step``
specialised to the artifact's layer sizes (``kernels.specialise``). With ``kernel="aot"`` (the default) it
is the module ``kdsignal build-kernel`` compiled ahead of time, checked and imported by
``daemon.core.kernel_store``, so serving never loads numba; a missing, stale or unsafe module raises
``KernelUnavailable`` naming the command, and nothing is ever built here. ``kernel="jit"`` compiles the same
specialised step with numba's JIT in this process instead (numba and LLVM then live in it). The live
scorecard's update (``scorecard_kernel``, ``kernels.scorecard_step``) comes the same way, from the same
module or JIT-compiled beside the step. Training,
replay and the live daemon all run these objects, so what was evaluated is what serves.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from daemon.core import kernel_store
from daemon.core.artifact import Artifact, load_artifact
from daemon.core.kernel_store import KernelUnavailable
from kernels.layout import (
    ALPHA_OUTPUTS,
    FEATURE_NAMES,
    FEATURE_STATE_SIZE,
    S_FILLED,
    S_SEEN,
    n_classes,
    pack_router,
    pack_student,
    probs_offset,
    student_state_size,
)


class Model:
    """A validated student ready to serve: the packed model vector plus its manifest."""

    __slots__ = (
        "artifact",
        "vector",
        "id",
        "interval",
        "classes",
        "head",
        "readout",
        "warmup_bars",
        "manifest",
        "step_kernel",
        "scorecard_kernel",
        "kernel_note",
        "_state_size",
        "_probs_at",
    )

    def __init__(self, artifact: Artifact, kernel: str = "aot", kernel_dir=None, *, source=None):
        """``kernel``: "aot" (the module built by ``kdsignal build-kernel``, found in ``kernel_dir`` or
        ``kernel_store.kernel_dir()``'s default) or "jit"; ``source`` names the artifact in messages."""
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.vector = student_vector(artifact)
        self.id: str = artifact.model_id
        self.interval: str = artifact.interval
        self.classes: tuple[str, ...] = tuple(artifact.manifest["classes"])  # validated against kernels.CLASSES
        self.head: str = artifact.head
        # Names of the read-out values an alpha head serves (its line's fields); None for a classifier.
        self.readout: tuple[str, ...] | None = (
            ALPHA_OUTPUTS[n_classes(self.vector) - 1] if self.head == "alpha" else None)
        self.warmup_bars: int = int(artifact.manifest["warmup_bars"])
        self._state_size = student_state_size(self.vector)
        self._probs_at = probs_offset(self.vector)
        # The live scorecard's per-bar update (daemon.core.scorecard) comes from the same place as the step.
        if kernel == "aot":
            module = kernel_store.load_module(self.vector, kernel_store.kernel_dir(kernel_dir), source)
            self.step_kernel = module.student_step
            self.scorecard_kernel = module.scorecard_step
        elif kernel == "jit":
            from kernels.scorecard_step import scorecard_entry  # numba: only when asked for
            from kernels.specialise import specialised_step

            self.step_kernel = specialised_step(self.vector)
            self.scorecard_kernel = scorecard_entry()
        else:
            raise ValueError(f"kernel is {kernel!r}, expected 'aot' or 'jit'")
        self.kernel_note = kernel

    @classmethod
    def load(cls, path, kernel: str = "aot", kernel_dir=None) -> Model:
        """Load and validate an artifact file and its compiled step (never built here).

        Raises ``ArtifactError`` naming the bad field, or its subclass ``KernelUnavailable`` naming the
        ``kdsignal build-kernel`` command when the step is missing, stale or unsafe.
        """
        return cls(load_artifact(path), kernel, kernel_dir, source=path)

    def new_state(self) -> SymbolState:
        """A fresh per-(symbol, interval) state: warms up over ``warmup_bars`` closed bars."""
        return SymbolState(self)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Read-outs (n, K) for a feature matrix (n, F), by the kernels the daemon runs: class probabilities,
        or an alpha head's alpha_bp [, sd_bp]."""
        from kernels.student import student_batch  # numba: training and checks, never the serving path

        feats = np.ascontiguousarray(features, dtype=np.float64)
        out = np.empty((feats.shape[0], n_classes(self.vector)), dtype=np.float64)
        student_batch(self.vector, feats, out)
        return out


def student_vector(artifact: Artifact) -> np.ndarray:
    """The packed model vector the step kernels read, from a validated artifact (a router's: ``pack_router``)."""
    clip = float(artifact.manifest["normalisation"]["clip"])
    n = artifact.regimes
    if n == 1:
        return pack_student(artifact.mlp, artifact.feature_mean, artifact.feature_std, clip, artifact.alpha_readout())
    one, f = len(artifact.mlp) // n, len(artifact.feature_mean) // n
    students = [pack_student(artifact.mlp[i * one : (i + 1) * one], artifact.feature_mean[i * f : (i + 1) * f],
                             artifact.feature_std[i * f : (i + 1) * f], clip) for i in range(n)]
    router = artifact.manifest["router"]
    return pack_router(students, FEATURE_NAMES.index(router["vol_feature"]),
                       FEATURE_NAMES.index(router["trend_feature"]), router["vol_edges"])


class SymbolState:
    """Rolling features and student scratch for one (symbol, interval), in one preallocated vector.

    ``update(o, h, l, c, v) -> int`` advances by one closed bar and runs the student: it returns the
    class index (probabilities, or an alpha head's alpha_bp [, sd_bp], in ``probs``), -1 while warming up,
    or -2 for an invalid bar before any valid one (later invalid bars are filled forward, see
    ``kernels.features``). It is a ``partial`` of the model's compiled step kernel over this state's own
    arrays: no Python frame, no dispatch.
    """

    __slots__ = ("model", "array", "probs", "update")

    def __init__(self, model: Model):
        self.model = model
        # The kernel's entry point does not check its arguments: these arrays are ours, float64, contiguous.
        self.array = np.zeros(model._state_size, dtype=np.float64)
        self.probs = self.array[model._probs_at : model._probs_at + n_classes(model.vector)]
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


__all__ = ["KernelUnavailable", "Model", "SymbolState", "student_vector"]
