"""What ``kdsignal train`` writes beside the artifact: the second student size and the final teacher's folder.

- ``student_<sizes>.npz`` (``[train] student_alt_hidden``, 32-16 by default): the same distillation (T, alpha,
  rows, seed, epochs rule) as the shipped student at the other size, so ``kdsignal bench`` can time what the
  wider student costs to serve; its manifest names the artifact it stands beside and carries no decision
  policy (the policy was chosen on the default student's edges).
- ``teacher/`` (``[train] teacher_dir``): the teacher that labelled the lockbox, fitted on every development
  row (``daemon.training.teacher_store``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from .bootstrap import verdict
from .config import TrainConfig
from .dataset import Pooled
from .folds import Fold, split_validation
from .teacher import Teacher
from .teacher_store import load_teacher, save_teacher


def _brief(part: dict, name: str) -> dict:
    m = part[name]
    d = part["deltas_vs_student"][name]
    return {"log_loss": m["log_loss"], "accuracy": m["accuracy"], "seeds": m["seeds"],
            "minus_default": d, "verdict": verdict(d["ci95"], better_when_positive=False)}


def save_alt_student(path: Path, student, manifest: dict, *, name: str, of: str, epochs: int, lock: dict,
                     dev: dict) -> dict:
    """Write the second student size's artifact; return its report entry (sizes, intervals, verdicts).

    ``minus_default``: its row log loss minus the default student's (negative: the other size is better),
    paired bootstrap interval; ``verdict`` says whether the other size helps.
    """
    from daemon.core.artifact import save_artifact

    man = copy.deepcopy(manifest)
    man.pop("policy", None)
    lk, dv = _brief(lock, name), _brief(dev, name)
    man["variant"] = {"name": name, "beside": of,
                      "what": "the same distillation at another student size, for comparison and its serving cost; "
                              "no decision policy (it was chosen on the default student)"}
    man["data"]["fit"]["epochs"] = epochs
    man["metrics"] = {"lockbox": {"what": manifest["metrics"]["lockbox"]["what"], name: lk},
                      "development": {"what": manifest["metrics"]["development"]["what"], name: dv}}
    model_id = save_artifact(path, weights=student.mlp.weights, biases=student.mlp.biases,
                             activations=student.mlp.activations, feature_mean=student.feature_mean,
                             feature_std=student.feature_std, manifest=man)
    sizes = [int(student.mlp.weights[0].shape[1])] + [int(w.shape[0]) for w in student.mlp.weights]
    return {"name": name, "path": str(path), "artifact": Path(path).name, "model_id": model_id, "sizes": sizes,
            "params": int(sum(w.size + b.size for w, b in zip(student.mlp.weights, student.mlp.biases, strict=True))),
            "epochs": epochs, "development": dv, "lockbox": lk}


def save_run_teacher(teacher: Teacher, out_path: Path, cfg: TrainConfig, P: Pooled, fold: Fold, model_id: str,
                     p_t: np.ndarray) -> dict:
    """Write the lockbox fold's teacher to ``<artifact dir>/<teacher_dir>``; return its report entry.

    The folder is read back and must predict, on the lockbox rows, exactly what the run's teacher predicted
    there (``p_t``). All of them in one call, as the run did: the float32 MLP members round differently when
    the same rows come in batches of another size.
    """
    folder = Path(out_path).parent / cfg.teacher_dir
    reach = (cfg.horizon_bars + cfg.embargo_bars) * P.interval_ms
    fit, val = split_validation(P.start_ms, fold.train, cfg.val_frac, reach)
    span = {k: {"lo_ms": int(P.start_ms[m].min()), "hi_ms": int(P.start_ms[m].max()), "rows": int(m.sum())}
            for k, m in (("fit", fit), ("early_stopping", val)) if m.any()}
    data = {"symbols": list(P.symbols), "interval_ms": int(P.interval_ms), **span,
            "what": "bar starts of the rows the teacher was fitted on (every development row, purged before the "
                    "lockbox) and of its early-stopping rows (their newest val_frac); it labelled the lockbox"}
    rows = np.flatnonzero(fold.test)
    save_teacher(teacher, folder, input_names=list(P.teacher_names), model_id=model_id, artifact=Path(out_path).name,
                 data=data, check_rows=P.x_teacher[rows])
    stored = load_teacher(folder)
    got = stored.predict(P.x_teacher[rows])[0]
    files = stored.file_bytes()
    return {"folder": str(folder), "bytes": int(sum(files.values())), "files": files,
            "members": [{"name": m["name"], "kind": m["kind"]} for m in stored.manifest["members"]],
            "checked_rows": len(rows), "identical_to_run": bool(np.array_equal(got, p_t[rows]))}
