"""Model size: parameters and bytes of the student (as served) and of the teacher it replaces."""

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


def run(model: Model, artifact_path: Path | None, teacher, want_teacher: bool = True) -> dict:
    """The size part; builds the teacher stand-in when the inference part did not."""
    results = student_size(model, artifact_path)
    if teacher is None and want_teacher:
        from kernels.layout import M_CLIP, M_FEATURES, M_HEADER

        from .teacher_standin import Teacher

        vec = model.vector
        f = int(vec[M_FEATURES])
        teacher = Teacher.build(vec[M_HEADER : M_HEADER + f].copy(), vec[M_HEADER + f : M_HEADER + 2 * f].copy(),
                                float(vec[M_CLIP]))
    if teacher is not None:
        t = teacher.sizes()
        hidden = ", ".join("-".join(str(w) for w in h) for h in teacher.shape.hidden)
        results.append({"name": "teacher_mlps", "params": t["mlp_params"], "bytes": t["mlp_bytes"],
                        "includes": f"{t['mlp_members']} MLP members ({hidden}) on {teacher.shape.n_inputs} inputs, "
                                    "float64"})
        if "lgbm_trees" in t:
            results.append({"name": "teacher_lgbm", "params": t["lgbm_params"], "bytes": t["lgbm_bytes"],
                            "includes": f"{t['lgbm_trees']} trees, {t['lgbm_leaves']:,} leaves (params: leaf values + "
                                        "4 per split); bytes: LightGBM's model text"})
            results.append({"name": "teacher_total", "params": t["mlp_params"] + t["lgbm_params"],
                            "bytes": t["mlp_bytes"] + t["lgbm_bytes"], "includes": "MLP members + LightGBM"})
    return {"results": results}
