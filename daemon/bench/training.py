"""Training stage wall times, as ``kdsignal train`` recorded them in ``models/report.json`` (``timings_s``).

The bench does not retrain (that takes far longer than a benchmark run); it reports what the training run
that produced the shipped model measured, and says so when there is no such report yet.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from .bars import ROOT

REPORT = ROOT / "models" / "report.json"


def run(path: Path = REPORT) -> dict:
    """Stage timings from the training report, or a skip note naming what is missing."""
    if not path.exists():
        return {"stages": [], "skipped": [{"name": "training_stages",
                                           "reason": f"pending: {path.relative_to(ROOT)} does not exist yet "
                                                     "(written by `kdsignal train`)"}]}
    doc = json.loads(path.read_text(encoding="utf-8"))
    timings = doc.get("timings_s")
    if not isinstance(timings, dict) or not timings:
        return {"stages": [], "skipped": [{"name": "training_stages",
                                           "reason": f"pending: {path.name} has no timings_s"}]}
    stages = [{"stage": k.removesuffix("_s"), "seconds": float(v)} for k, v in timings.items()]
    results = [{"name": f"train_{s['stage']}", "seconds": s["seconds"]} for s in stages]
    command = doc.get("command") or "kdsignal train"
    source = f"{path.relative_to(ROOT)} (model {doc.get('model_id')}, command `{command}`)"
    data = doc.get("data", {})
    if data.get("pooled_rows"):
        source += f", {data['pooled_rows']:,} pooled rows"
    written = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"stages": stages, "results": results, "source": source, "report_written": written}
