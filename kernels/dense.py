"""Memory-bound passes over a dense row-major matrix A (n × d), deterministic in the thread count.

BLAS would split the n-long reductions of Aᵀ Q over threads in a thread-count
dependent way; these kernels use the same fixed row chunks as kernels/csr.py.
"""
import numpy as np
from numba import njit, prange

from .reduce import sum_chunk_partials


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


@njit(cache=True)
def chunk_rmatmat(A, Q, start, stop, acc, flat):
    """flat[j·k + t] = Σ_{i ∈ [start, stop)} A[i, j]·Q[i, t]: one row chunk's partial of Aᵀ Q.

    Accumulates in ``acc`` (k × d, overwritten) so the inner loop runs along a row of A
    (contiguous, vectorised), then transposes it into ``flat`` (d·k) once.
    """
    k, d = acc.shape
    acc[:] = 0.0
    if k == 3:
        # The model's three columns updated from one load of each row entry (288 × 48: 14 → 7 µs); each
        # acc[t, j] still gets the rows' terms in row order, so the bits are the general loop's.
        acc0, acc1, acc2 = acc[0], acc[1], acc[2]
        for i in range(start, stop):
            row = A[i]
            q0, q1, q2 = Q[i, 0], Q[i, 1], Q[i, 2]
            for j in range(d):
                r = row[j]
                acc0[j] += r * q0
                acc1[j] += r * q1
                acc2[j] += r * q2
        for j in range(d):
            for t in range(k):
                flat[j * k + t] = acc[t, j]
        return
    for i in range(start, stop):
        row = A[i]
        for t in range(k):
            qt = Q[i, t]
            acc_t = acc[t]
            for j in range(d):
                acc_t[j] += row[j] * qt
    for j in range(d):
        for t in range(k):
            flat[j * k + t] = acc[t, j]


@njit(parallel=True, cache=True)
def dense_rmatmat(A, Q, chunk_rows, out):
    """out[j, :] = Σ_i A[i, j]·Q[i, :] (out = Aᵀ Q); fixed row chunks (``chunk_rmatmat``), partials
    summed in chunk order."""
    n, k = Q.shape
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d * k))
    for c in prange(n_chunks):
        chunk_rmatmat(A, Q, c * chunk_rows, min(n, (c + 1) * chunk_rows), np.empty((k, d)), partial[c])
    sum_chunk_partials(partial, out)


@njit(parallel=True, cache=True)
def dense_matvecs(A, X, rows_per_task, out):
    """out[t, :] = A X[:, t] for every column t of X (d × r; out is r × n): out[t, i] = Σ_j A[i, j]·X[j, t]
    summed over j in dense_matvec's order, so each out[t] has dense_matvec(A, X[:, t])'s bits; one read
    of A for r vectors, rows in tasks of ``rows_per_task``."""
    n, d = A.shape
    r = X.shape[1]
    n_tasks = (n + rows_per_task - 1) // rows_per_task
    for task in prange(n_tasks):
        acc = np.empty(r)
        for i in range(task * rows_per_task, min(n, (task + 1) * rows_per_task)):
            for t in range(r):
                acc[t] = 0.0
            row = A[i]
            for j in range(d):
                a = row[j]
                x = X[j]
                for t in range(r):
                    acc[t] += a * x[t]
            for t in range(r):
                out[t, i] = acc[t]


@njit(parallel=True, cache=True)
def dense_rmatmats(A, Qs, chunk_rows, out):
    """out[s] = Aᵀ Qs[s] for every s (Qs a typed list of n × k arrays, out s × d × k): dense_rmatmat's sums
    in its order (the same chunks, summed in chunk order), so each out[s] has dense_rmatmat(A, Qs[s])'s
    bits. Each chunk of A is read once from memory and then from cache per s."""
    n, d = A.shape
    n_sets = len(Qs)
    k = out.shape[2]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_sets, n_chunks, d * k))
    for c in prange(n_chunks):
        acc = np.empty((k, d))
        for s in range(n_sets):
            chunk_rmatmat(A, Qs[s], c * chunk_rows, min(n, (c + 1) * chunk_rows), acc, partial[s, c])
    for s in range(n_sets):
        sum_chunk_partials(partial[s], out[s])


@njit(nogil=True, cache=True)
def signed_scaled_rows(A, rows, weights, out):
    """Gather A[rows[t]]·√|weights[t]| into out split by sign: returns p, the count of positive weights.

    out[:p] holds the rows of positive weight, out[p:p + q] those of negative weight (q of
    them), each part in the order of ``rows``; zero weights are dropped. Then
    Σ_t weights[t]·a_t a_tᵀ = out[:p]ᵀ out[:p] − out[p:p+q]ᵀ out[p:p+q]: two SYRKs on
    contiguous blocks, no masked copies (measured, one thread, n = 10⁵, d = 256: 72 ms
    with NumPy boolean masks, about the cost of one plain scaled copy with this kernel).
    Serial and GIL-free: the sandwich runs one row block per Python thread.
    """
    d = A.shape[1]
    p = 0
    for t in range(rows.shape[0]):
        if weights[t] > 0.0:
            p += 1
    positive = 0
    negative = p
    for t in range(rows.shape[0]):
        w = weights[t]
        if w == 0.0:
            continue
        if w > 0.0:
            target = out[positive]
            positive += 1
        else:
            target = out[negative]
            negative += 1
        root = np.sqrt(abs(w))
        row = A[rows[t]]
        for j in range(d):
            target[j] = row[j] * root
    return p, negative - p
