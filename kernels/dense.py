"""Memory-bound passes over a dense row-major matrix A (n × d), deterministic in the thread count.

BLAS would split the n-long reductions of Aᵀ Q over threads in a thread-count
dependent way; these kernels use the same fixed row chunks as kernels/csr.py.
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def dense_matvec(A, x, out):
    """out[i] = Σ_j A[i, j]·x[j] (u = Ax); one read of A, one thread per row."""
    n, d = A.shape
    for i in prange(n):
        acc = 0.0
        row = A[i]
        for j in range(d):
            acc += row[j] * x[j]
        out[i] = acc


@njit(parallel=True, cache=True)
def dense_rmatmat(A, Q, chunk_rows, out):
    """out[j, :] = Σ_i A[i, j]·Q[i, :] (out = Aᵀ Q); fixed row chunks, partials summed in chunk order."""
    n, k = Q.shape
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d, k))
    for c in prange(n_chunks):
        acc = partial[c]
        stop = min(n, (c + 1) * chunk_rows)
        for i in range(c * chunk_rows, stop):
            qi = Q[i]
            row = A[i]
            for j in range(d):
                v = row[j]
                for t in range(k):
                    acc[j, t] += v * qi[t]
    for j in prange(d):
        for t in range(k):
            total = 0.0
            for c in range(n_chunks):
                total += partial[c, j, t]
            out[j, t] = total
