"""Offline distillation: fetch candles, label them, train a teacher ensemble, distil a tiny student.

Never imported by the running daemon (``kdsignal run`` / ``kdsignal replay``); it pulls in lightgbm,
matplotlib and tqdm, which the service does not need (``tests/test_daemon_process.py`` checks).

Typical use::

    kdsignal fetch --symbol BTCUSDT --interval 5 --start 2025-09-24 --end 2026-07-21 --out data5m/BTCUSDT.csv
    kdsignal train --data data5m --out models/default.npz [--config config.toml] [--sweep] [--set alpha=0.3]

``train`` writes the artifact (``daemon.core.artifact``), ``report.json``, ``report.md``, ``folds.png``,
``reliability.png`` (and ``sweep.png`` with ``--sweep``) next to ``--out``. Every knob lives in the
``[train]`` table of ``config.toml`` (``config.TrainConfig``).

Modules, in pipeline order: ``fetch`` (REST download), ``data`` (CSV reading and checks), ``features``
(the daemon's feature kernel plus teacher-only extras), ``labels``, ``dataset`` (pooled table), ``folds``
(purged walk-forward), ``teacher`` (MLPs + LightGBM), ``nn`` (NumPy MLP and Adam), ``student``
(distillation through ``kernels.mlp.kd_loss_grad``), ``evaluate``, ``report``, ``pipeline`` (the command).
"""

import os as _os

# One BLAS thread per process: the pipeline parallelises over processes instead (see pipeline._pool).
# This only takes effect if NumPy is not imported yet, as under `kdsignal train`.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
