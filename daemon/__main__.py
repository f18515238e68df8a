"""Allow ``python -m daemon``; the same entry point as the ``kdsignal`` console script."""

import sys

from daemon.cli import main

sys.exit(main())
