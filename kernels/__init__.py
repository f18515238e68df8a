"""Pure numba kernels shared by training and the live daemon: rolling features, MLPs, the student step.

No I/O, no logging, no clock: arrays and scalars in, results written into caller-owned arrays.
"""

CLASSES: tuple[str, ...] = ("sell", "hold", "buy")
