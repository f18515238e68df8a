"""Offline distillation: fetch candles, label them, train a teacher ensemble, distil a tiny student.

Never imported by the running daemon (``kdsignal run`` / ``kdsignal replay``); it pulls in lightgbm,
matplotlib and tqdm, which the service does not need (``tests/test_service_process.py`` checks).

Typical use::

    kdsignal fetch --symbol BTCUSDT --interval 5 --start 2025-09-24 --end 2026-07-21 --out data5m/BTCUSDT.csv
    kdsignal train --data data5m --out models/default.npz [--config config.toml] [--set lockbox_days=30]

``train`` writes the artifact (``daemon.core.artifact``), ``report.json``, ``report.md``, ``reliability.png``,
``equity.png``, ``intervals.png`` (and ``sweep.png`` when temperature x alpha is chosen) next to ``--out``.
Every knob lives in the ``[train]`` table of ``config.toml`` (``config.TrainConfig``).

Modules, in pipeline order: ``fetch`` (REST download), ``data`` (CSV reading and checks), ``inputs``
(the daemon's feature kernel plus teacher-only extras), ``labels``, ``dataset`` (pooled table), ``folds``
(the lockbox and purged walk-forward), ``teacher`` (MLPs + LightGBM), ``nn`` (NumPy MLP and Adam),
``distil`` (distillation through ``kernels.mlp.kd_loss_grad``), ``evaluate`` (measures), ``bootstrap``
(paired day-block intervals), ``report``, ``train`` (the command and its protocol); opt-in, with the
``[seq]`` extra (torch): ``sequence``, ``sequence_net``, ``sequence_eval`` (the sequence teacher). The trading read-out
is ``daemon.core.trading``, shared with ``kdsignal backtest``.
"""

import os as _os

# One BLAS thread per process: the pipeline parallelises over processes instead (see train._pool).
# This only takes effect if NumPy is not imported yet, as under `kdsignal train`.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
