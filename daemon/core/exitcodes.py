"""Process exit codes that tell a supervisor (systemd) what happened.

The unit files key on them: ``Restart=on-failure`` retries a crash (1) but ``RestartPreventExitStatus=78``
stops a bad configuration from being retried forever, since restarting cannot fix a typo.
"""

from __future__ import annotations

__all__ = ["EXIT_CONFIG", "EXIT_CRASH", "EXIT_OK"]

EXIT_OK = 0
"""Clean stop (SIGTERM/SIGINT handled, logs flushed)."""

EXIT_CRASH = 1
"""Unexpected failure: worth a restart."""

EXIT_CONFIG = 78
"""Bad configuration or artifact (sysexits.h ``EX_CONFIG``): a restart would fail the same way."""
