"""Pure numba kernels shared by training and the live daemon: rolling features, MLPs, the student step.

No I/O, no logging, no clock: arrays and scalars in, results written into caller-owned arrays. Importing
this package or ``kernels.layout`` does not import numba; the kernel modules do (through ``kernels.jit``).
"""

import hashlib
from pathlib import Path

CLASSES: tuple[str, ...] = ("sell", "hold", "buy")

# A hash of every kernel source file: names numba's cache directory (``kernels.jit``) and is part of a
# compiled step's identity (``daemon.core.kernel_store``), so a change to any kernel never runs stale code.
KERNELS_HASH = hashlib.sha256(
    b"".join(p.name.encode() + p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))
).hexdigest()[:16]
