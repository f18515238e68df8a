"""Pure numba kernels shared by training and the live daemon: rolling features, MLPs, the student step.

No I/O, no logging, no clock: arrays and scalars in, results written into caller-owned arrays.

numba's on-disk cache checks only the source file that defines a function, not the files whose functions it
inlined: after ``features.py`` changed, a cached ``student.student_step`` would still run the old feature
code. So the cache lives in a directory named after a hash of every kernel source file: any change to any
kernel starts a fresh cache (``tests/test_kernel_cache.py`` guards this). The base directory is
``$NUMBA_CACHE_DIR`` (as the systemd unit sets it), else ``~/.cache/kdsignal/numba``.
"""

import hashlib
import os
from pathlib import Path

import numba

CLASSES: tuple[str, ...] = ("sell", "hold", "buy")

KERNELS_HASH = hashlib.sha256(
    b"".join(p.name.encode() + p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))
).hexdigest()[:16]

_base = os.environ.get("NUMBA_CACHE_DIR") or str(Path.home() / ".cache" / "kdsignal" / "numba")
numba.config.CACHE_DIR = str(Path(_base) / f"kernels-{KERNELS_HASH}")
