"""Offline distillation: fetch candles, label them, train a teacher ensemble, distil a tiny student.

Never imported by the running daemon (``kdsignal run`` / ``kdsignal replay``); it pulls in lightgbm,
matplotlib and tqdm, which the service does not need.
"""

import os as _os

# One BLAS thread per process: the pipeline parallelises over processes instead (see pipeline._pool).
# This only takes effect if NumPy is not imported yet, as under `kdsignal train`.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
