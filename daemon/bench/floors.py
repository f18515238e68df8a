"""Numba dispatcher call floors: do-nothing kernels with the student step's argument patterns.

They explain the student's figure: ``student_step`` takes two arrays and five floats, and this much of
its time is numba's dispatcher (type checks, unboxing, the Python call itself) before any work. The
daemon calls the compiled entry point instead (``SymbolState.update`` is a ``partial`` of it), which skips
the dispatcher's type resolution; ``entry_point`` gives the same path for the floor.
"""

from __future__ import annotations

from numba import njit


@njit("int64(float64[::1])", cache=True)
def floor_1_array(a):
    """Return 0 (one array argument)."""
    return 0


@njit("int64(float64[::1], float64[::1])", cache=True)
def floor_2_arrays(a, b):
    """Return 0 (two array arguments)."""
    return 0


@njit("int64(float64[::1], float64[::1], float64, float64, float64, float64, float64)", cache=True)
def floor_2_arrays_5_floats(a, b, o, h, l, c, v):
    """Return 0 (two arrays and five floats: ``student_step``'s signature)."""
    return 0


def entry_point(dispatcher):
    """The compiled entry point of a kernel's only signature: callable without the dispatcher's checks."""
    return dispatcher.overloads[dispatcher.signatures[0]].entry_point


def python_noop(o, h, l, c, v):
    """Return 0: the cost of a plain Python call with five arguments."""
    return 0
