"""Dot products and norms whose bits do not depend on the thread count.

BLAS splits long dot products over its threads (OpenBLAS above 10 000 entries), which
changes their rounding with the thread count. Vectors of SMALL entries or more go
through the fixed-chunk Numba reduction instead; shorter ones stay on BLAS, which runs
them on one thread.
"""
import math

import numpy as np

from .chunking import chunk_rows
from .kernels.reduce import chunked_dot

SMALL = 4096


def dot(a, b):
    """Σ a_i b_i."""
    if a.shape[0] < SMALL:
        return float(np.dot(a, b))
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return chunked_dot(a, b, chunk_rows(a.shape[0]))


def norm(a):
    """‖a‖₂."""
    return math.sqrt(dot(a, a))
