"""kernels/prefetch.py: a prefetch is a hint, so every gather that issues it keeps NumPy's values exactly.

The gather of the sampled sandwich (``kernels.dense.signed_scaled_rows``) prefetches the next row when it
is not adjacent; its rows must be, bit for bit, NumPy's ((A[rows] − shift)·factors)·√|w| (the same three
roundings in the same order, then the cast to the buffer's dtype), for scattered, adjacent and repeated rows.
"""
import numpy as np
import pytest
from numba import njit

from fastnewton.kernels.dense import signed_scaled_rows
from fastnewton.kernels.prefetch import prefetch_row


@njit(cache=True)
def _prefetched_copy(A, rows, out):
    for t in range(rows.shape[0]):
        if t + 1 < rows.shape[0]:
            prefetch_row(A, rows[t + 1])
        out[t] = A[rows[t]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 7, 8, 9, 256])
def test_prefetched_rows_are_copied_unchanged(dtype, d):
    """Rows of every width (one cache line or less, not a whole number of lines) and both dtypes."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((500, d)).astype(dtype)
    rows = rng.integers(0, 500, size=120)
    out = np.empty((120, d), dtype=dtype)
    _prefetched_copy(A, rows, out)
    assert np.array_equal(out, A[rows])


def test_prefetch_of_a_non_contiguous_array_is_a_no_op():
    """Only C-contiguous rows are prefetched; any other layout compiles to nothing (no value changes either way)."""
    A = np.random.default_rng(4).standard_normal((50, 12))
    strided = A[:, ::2]
    out = np.empty((10, 6))
    rows = np.arange(0, 50, 5)
    _prefetched_copy(strided, rows, out)
    assert np.array_equal(out, strided[rows])
    assert prefetch_row(A, 3) is None  # the pure-Python form (NUMBA_DISABLE_JIT)


@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["scattered", "adjacent", "repeated"])
def test_gather_of_scaled_rows_is_numpys_bit_for_bit(out_dtype, kind):
    rng = np.random.default_rng(5)
    n, d, count = 4000, 37, 600
    A = rng.standard_normal((n, d))
    rows = {"scattered": np.sort(rng.choice(n, count, replace=False)),
            "adjacent": np.arange(100, 100 + count),
            "repeated": rng.integers(0, 50, size=count)}[kind]
    weights = rng.standard_normal(count)
    weights[::9] = 0.0
    shift, factors = rng.standard_normal(d), rng.uniform(0.5, 2.0, d)
    extra = rng.standard_normal((count, 2))
    out = np.full((count, d + 2), np.nan, dtype=out_dtype)
    positive, negative = signed_scaled_rows(A, rows, extra, weights, shift, factors, out)
    root = np.sqrt(np.abs(weights))[:, None]
    expected = np.hstack([((A[rows] - shift) * factors) * root, extra * root]).astype(out_dtype)
    order = np.concatenate([np.flatnonzero(weights > 0), np.flatnonzero(weights < 0)])
    assert (positive, negative) == (np.sum(weights > 0), np.sum(weights < 0))
    assert np.array_equal(out[:positive + negative], expected[order])
