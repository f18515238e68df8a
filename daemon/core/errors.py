"""The configuration error, in a module of its own so every part of the configuration can raise it."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration problem; the message names the table and key."""
