"""Passes over a CSR matrix C (n × d): the forward product and the fused transposed product.

Both accept int32 or int64 ``indptr``/``indices`` and float32 or float64 ``data``;
accumulation is always in float64.
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def csr_matvec(indptr, indices, data, x, out):
    """out[i] = Σ_k data[k]·x[indices[k]] over row i's entries (u = Cx).

    One read of C; each row is summed by one thread in storage order, so the
    result does not depend on the thread count.
    """
    n = out.shape[0]
    for i in prange(n):
        acc = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            acc += data[k] * x[indices[k]]
        out[i] = acc


@njit(parallel=True, cache=True)
def csr_rmatmat(indptr, indices, data, Q, chunk_rows, out):
    """out[j, :] = Σ_i C[i, j]·Q[i, :] (out = Cᵀ Q, Q is n × k row-major).

    One read of C for all k columns (the gradient and P = CᵀU in one pass).
    Rows are split into fixed chunks of ``chunk_rows``; each chunk accumulates a
    d × k partial, and partials are summed in chunk order, so the bits depend on
    n and chunk_rows only, never on the thread count.
    """
    n, k = Q.shape
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d, k))
    for c in prange(n_chunks):
        acc = partial[c]
        stop = min(n, (c + 1) * chunk_rows)
        for i in range(c * chunk_rows, stop):
            qi = Q[i]
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                v = data[p]
                for t in range(k):
                    acc[j, t] += v * qi[t]
    for j in prange(d):
        for t in range(k):
            total = 0.0
            for c in range(n_chunks):
                total += partial[c, j, t]
            out[j, t] = total
