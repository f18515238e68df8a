"""numba, configured for the kernels: every kernel module takes ``njit`` from here.

numba's on-disk cache checks only the source file that defines a function, not the files whose functions it
inlined: after ``features.py`` changed, a cached ``student.student_step`` would still run the old feature
code. So the cache lives in a directory named after a hash of every kernel source file: any change to any
kernel starts a fresh cache (``tests/test_jit.py`` guards this). The base directory is numba's own
``CACHE_DIR`` setting (``$NUMBA_CACHE_DIR``, as the systemd unit sets it), else ``~/.cache/kdsignal/numba``.
It is set here, before any kernel is decorated, because numba fixes a function's cache location then.
"""

from pathlib import Path

import numba

from kernels import KERNELS_HASH

_base = numba.config.CACHE_DIR or str(Path.home() / ".cache" / "kdsignal" / "numba")
numba.config.CACHE_DIR = str(Path(_base) / f"kernels-{KERNELS_HASH}")

njit = numba.njit
