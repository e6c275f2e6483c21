"""Sparse subspace embeddings (OSNAP) of diag(scale)·C, for approximate leverage scores.

The embedding S (m × n) has ``s`` non-zeros ±1/√s per column; row i of C is added,
scaled by ``scale[i]`` and a sign, to the output rows listed for it. The caller
groups the (row, sign) pairs by output row (``bucket_members``), so each output
row is accumulated by one thread in increasing row order: no races, and the bits
do not depend on the thread count.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True)
def bucket_members(buckets, m):
    """Counting sort of the n × s bucket table: (ptr, member) with member[ptr[b]:ptr[b+1]] = flat
    indices t (row t // s, slot t % s) of every entry that lands in output row b, in increasing t."""
    total = buckets.size
    flat = buckets.ravel()
    ptr = np.zeros(m + 1, dtype=np.int64)
    for t in range(total):
        ptr[flat[t] + 1] += 1
    for b in range(m):
        ptr[b + 1] += ptr[b]
    fill = ptr[:-1].copy()
    member = np.empty(total, dtype=np.int64)
    for t in range(total):
        b = flat[t]
        member[fill[b]] = t
        fill[b] += 1
    return ptr, member


@njit(parallel=True, cache=True)
def csr_embed(indptr, indices, data, scaled_signs, s, ptr, member, out):
    """out[b, :] = Σ_{t in bucket b} scaled_signs[t]·C[t // s, :] (out = S·diag(scale)·C, m × d dense).

    ``scaled_signs`` (n·s) holds ±scale[i]/√s for each (row, slot); one read of each row per slot.
    """
    m, d = out.shape
    for b in prange(m):
        acc = out[b]
        for j in range(d):
            acc[j] = 0.0
        for q in range(ptr[b], ptr[b + 1]):
            t = member[q]
            i = t // s
            w = scaled_signs[t]
            for p in range(indptr[i], indptr[i + 1]):
                acc[np.uintp(indices[p])] += w * data[p]


@njit(parallel=True, cache=True)
def dense_embed(A, scaled_signs, s, ptr, member, out):
    """Dense-C twin of ``csr_embed``: out[b, :] = Σ_{t in bucket b} scaled_signs[t]·A[t // s, :]."""
    m, d = out.shape
    for b in prange(m):
        acc = out[b]
        for j in range(d):
            acc[j] = 0.0
        for q in range(ptr[b], ptr[b + 1]):
            t = member[q]
            row = A[t // s]
            w = scaled_signs[t]
            for j in range(d):
                acc[j] += w * row[j]
