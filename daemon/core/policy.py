"""The decision policy: what a line's ``signal`` says, and which lines are emitted (core: no I/O).

The ``[signal]`` table chooses it; :func:`resolve` turns that table and the served model into a
:class:`Policy` once (at start and on every reload), so the per-bar work is two comparisons and no lookup.

- ``policy = "argmax"``: ``signal`` is the most probable class of ``probs`` (what the student's step returns).
- ``policy = "threshold"``: with ``edge = p_buy - p_sell``, ``buy`` when ``edge > threshold``, ``sell`` when
  ``edge < -threshold``, else ``hold``: the rule ``daemon.core.trading.positions`` trades with
  ``hold_bars = 1``, so a backtest of the ``probs`` at that threshold is what these lines say. The threshold
  is ``[signal].threshold`` when set, else the artifact manifest's ``policy.cases[fee_case].threshold`` (chosen
  on development data by ``kdsignal train``). A threshold of 1 never acts: ``edge`` cannot exceed it. The
  manifest's ``hold_bars`` is not applied here: each line decides its own bar; holding is the reader's choice
  (``kdsignal backtest --hold``).
- ``emit = "all"``: every signal is written; ``"actionable"``: only ``buy`` and ``sell``; ``"changes"``: only a
  signal that differs from the previous signal of the same (symbol, interval) (the first one always). It
  applies to every output at once: the writer's line is what stdout, the log and every sink get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from daemon.core.errors import ConfigError

__all__ = ["EMITS", "FROM_ARTIFACT", "POLICIES", "Policy", "resolve"]

POLICIES = ("argmax", "threshold")
EMITS = ("all", "actionable", "changes")
FROM_ARTIFACT = -1.0  # [signal].threshold's default: take it from the artifact's manifest

_ALL, _ACTIONABLE, _CHANGES = range(3)


@dataclass(frozen=True, slots=True)
class Policy:
    """A resolved decision policy for one model's classes (see the module docstring)."""

    kind: str          # "argmax" or "threshold"
    threshold: float   # NaN for argmax
    emit: str          # "all", "actionable" or "changes"
    source: str        # where the threshold came from, for the log: "[signal].threshold", "artifact policy.cases.taker"
    buy: int           # class indices in the model's order
    sell: int
    hold: int
    _by_threshold: bool
    _emit_mode: int
    plain: bool        # argmax and every line: nothing to decide, the pipeline skips both calls

    def decide(self, k: int, probs: tuple[float, ...]) -> int:
        """The class index this bar's line says, from the argmax ``k`` and the probabilities ``probs``."""
        if not self._by_threshold:
            return k
        edge = probs[self.buy] - probs[self.sell]
        if edge > self.threshold:
            return self.buy
        if edge < -self.threshold:
            return self.sell
        return self.hold

    def emits(self, k: int, previous: int) -> bool:
        """Whether the line deciding class ``k`` is written; ``previous`` is this series' last decision (-1: none)."""
        mode = self._emit_mode
        if mode == _ALL:
            return True
        if mode == _ACTIONABLE:
            return k != self.hold
        return k != previous

    def describe(self) -> dict:
        """The policy as log fields."""
        out = {"policy": self.kind, "emit": self.emit}
        if self._by_threshold:
            out |= {"threshold": self.threshold, "threshold_from": self.source}
        return out


def argmax(classes: tuple[str, ...], emit: str = "all") -> Policy:
    """The plain policy: the most probable class, every line (or as ``emit`` says)."""
    return _make("argmax", math.nan, emit, "argmax", classes)


def resolve(cfg, model) -> Policy:
    """The policy ``cfg`` (a ``[signal]`` table: policy, fee_case, threshold, emit) asks for, for ``model``.

    Raises :class:`ConfigError` naming what is missing: a threshold policy without ``[signal].threshold``
    needs the artifact's manifest ``policy`` with a case named ``fee_case``.
    """
    classes = tuple(model.classes)
    if cfg.emit not in EMITS:
        raise ConfigError(f"[signal].emit is {cfg.emit!r}, expected one of {', '.join(EMITS)}")
    if cfg.policy == "argmax":
        return argmax(classes, cfg.emit)
    if cfg.policy != "threshold":
        raise ConfigError(f"[signal].policy is {cfg.policy!r}, expected one of {', '.join(POLICIES)}")
    if cfg.threshold != FROM_ARTIFACT:
        return _make("threshold", float(cfg.threshold), cfg.emit, "[signal].threshold", classes)
    manifest_policy = model.manifest.get("policy")
    if manifest_policy is None:
        raise ConfigError(f"[signal].policy is \"threshold\" without [signal].threshold, and artifact {model.id} "
                          f"stores no policy in its manifest: set [signal].threshold")
    cases = manifest_policy["cases"]  # validated by daemon.core.artifact: each case has a threshold in [0, 1]
    if cfg.fee_case not in cases:
        raise ConfigError(f"[signal].fee_case is {cfg.fee_case!r}, the artifact {model.id}'s policy has "
                          f"{', '.join(sorted(cases))}")
    return _make("threshold", float(cases[cfg.fee_case]["threshold"]), cfg.emit,
                 f"artifact policy.cases.{cfg.fee_case}", classes)


def _make(kind: str, threshold: float, emit: str, source: str, classes: tuple[str, ...]) -> Policy:
    missing = [c for c in ("sell", "hold", "buy") if c not in classes]
    if missing:
        raise ConfigError(f"the model's classes {list(classes)} lack {', '.join(missing)}: no policy can decide")
    return Policy(kind, threshold, emit, source, classes.index("buy"), classes.index("sell"), classes.index("hold"),
                  kind == "threshold", EMITS.index(emit), kind == "argmax" and emit == "all")
