"""Offline distillation: fetch candles, label them, train a teacher ensemble, distil a tiny student.

Never imported by the running daemon (``kdsignal run`` / ``kdsignal replay``); it pulls in lightgbm,
matplotlib and tqdm, which the service does not need.
"""
