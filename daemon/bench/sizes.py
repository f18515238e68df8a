"""Model size: parameters and bytes of the student (as served) and of the persisted teacher it replaces."""

from __future__ import annotations

from pathlib import Path

from daemon.core.model import Model
from kernels.layout import unpack_mlp


def student_size(model: Model, artifact_path: Path | None) -> list[dict]:
    """Entries for the student: weights and biases, the packed model vector, the artifact file."""
    weights, biases, _, _ = unpack_mlp(model.artifact.mlp)
    params = int(sum(w.size + b.size for w, b in zip(weights, biases, strict=True)))
    sizes = "-".join(str(s) for s in model.manifest["student"]["sizes"])
    out = [
        {"name": "student", "params": params, "bytes": int(model.vector.nbytes),
         "includes": f"MLP {sizes} weights + biases; bytes = the packed float64 model vector the step reads "
                     "(normalisation statistics included)"},
    ]
    if artifact_path is not None and Path(artifact_path).exists():
        out.append({"name": "student_artifact", "params": params, "bytes": Path(artifact_path).stat().st_size,
                    "includes": "the .npz artifact file on disk (arrays + JSON manifest)"})
    return out


def run(model: Model, artifact_path: Path | None, teacher, teacher_missing: str | None = None) -> dict:
    """The size part: the student, and the persisted teacher (``persisted_teacher.BenchTeacher``) when there is one."""
    results = student_size(model, artifact_path)
    skipped = []
    if teacher is not None:
        results += teacher.sizes()
    elif teacher_missing:
        skipped.append({"name": "teacher_total", "reason": teacher_missing})
    return {"results": results, "skipped": skipped}
