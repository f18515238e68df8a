"""The daemon on loopback: tick-to-signal latency under the fake Bybit at rising rates, and start-up time.

Not measured yet: it needs ``daemon.service`` (``kdsignal run``) and ``daemon.fake_bybit`` with the hooks
listed in ``missing_hooks``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def missing_hooks() -> str | None:
    """None when the service and the fake exist; otherwise what is missing."""
    for module in ("daemon.service", "daemon.fake_bybit"):
        if importlib.util.find_spec(module) is None:
            return f"{module.replace('.', '/')}.py does not exist yet"
    return "not implemented yet in the bench (waiting for daemon.service to land)"


def run(artifact_path: Path | None) -> dict:
    """The loopback part; a skip note until the daemon can be driven."""
    return {"levels": [], "skipped": [{"name": "tick_to_signal", "reason": missing_hooks()}]}
