"""Sparse subspace embeddings (OSNAP) of diag(scale)·C, for approximate leverage scores.

The embedding S (m × n) has ``s`` non-zeros ±1/√s per column; row i of C is added,
scaled by ``scale[i]`` and a sign, to the output rows listed for it. The caller
groups the (row, sign) pairs by output row (``bucket_members``), so each output
row is accumulated by one thread in increasing row order: no races, and the bits
do not depend on the thread count.
"""
import numpy as np
from numba import njit, prange

from .simd import lane_square_sums4_and_sums4


@njit(cache=True)
def bucket_members(buckets, m, rows_per_block=0):
    """Counting sort of the n × s bucket table by (row block, output row).

    Returns (ptr, member): member[ptr[k·m + b] : ptr[k·m + b + 1]] are the flat indices
    t (row t // s, slot t % s) of the entries of row block k (rows_per_block rows; 0 means
    one block) that land in output row b, in increasing t. Over the blocks in order, each
    output row therefore sees its rows in increasing order: the summation order, and so
    the bits, do not depend on the blocking.
    """
    n, s = buckets.shape
    block = max(1, n) if rows_per_block <= 0 else rows_per_block
    n_blocks = max(1, (n + block - 1) // block)
    total = n * s
    flat = buckets.ravel()
    ptr = np.zeros(n_blocks * m + 1, dtype=np.int64)
    for t in range(total):
        ptr[(t // s) // block * m + flat[t] + 1] += 1
    for key in range(n_blocks * m):
        ptr[key + 1] += ptr[key]
    fill = ptr[:-1].copy()
    member = np.empty(total, dtype=np.int64)
    for t in range(total):
        key = (t // s) // block * m + flat[t]
        member[fill[key]] = t
        fill[key] += 1
    return ptr, member


@njit(parallel=True, cache=True)
def csr_embed(indptr, indices, data, scaled_signs, s, ptr, member, out):
    """out[b, :] = Σ_{t in bucket b} scaled_signs[t]·C[t // s, :] (out = S·diag(scale)·C, m × d dense).

    ``scaled_signs`` (n·s) holds ±scale[i]/√s for each (row, slot). Row blocks (see
    ``bucket_members``) are processed one after the other, all output rows in parallel
    within a block, so the rows a block revisits (s times, in random bucket order) come
    from cache instead of memory.
    """
    m, d = out.shape
    n_blocks = (ptr.shape[0] - 1) // m
    out[:, :] = 0.0
    for k in range(n_blocks):
        for b in prange(m):
            acc = out[b]
            for q in range(ptr[k * m + b], ptr[k * m + b + 1]):
                t = member[q]
                i = t // s
                w = scaled_signs[t]
                for p in range(indptr[i], indptr[i + 1]):
                    acc[np.uintp(indices[p])] += w * data[p]


@njit(parallel=True, cache=True)
def dense_embed(A, scaled_signs, s, ptr, member, out):
    """Dense-C twin of ``csr_embed``: out[b, :] = Σ_{t in bucket b} scaled_signs[t]·A[t // s, :]."""
    m, d = out.shape
    n_blocks = (ptr.shape[0] - 1) // m
    out[:, :] = 0.0
    for k in range(n_blocks):
        for b in prange(m):
            acc = out[b]
            for q in range(ptr[k * m + b], ptr[k * m + b + 1]):
                t = member[q]
                row = A[t // s]
                w = scaled_signs[t]
                for j in range(d):
                    acc[j] += w * row[j]


@njit(cache=True)
def row_square_sum(row, column_weights):
    """Σⱼ row[j]²·column_weights[j] (float64) in four partial sums over j ≡ k (mod 4), then
    (c₀ + c₁) + (c₂ + c₃) (one running sum waited out the add latency at every term, as in
    ``kernels.dense.row_dot``: dense 10⁶ × 512, 0.21 s, twice a pass)."""
    d = row.shape[0]
    full = d - d % 4
    c0 = c1 = c2 = c3 = 0.0
    for j in range(0, full, 4):
        v0, v1, v2, v3 = np.float64(row[j]), np.float64(row[j + 1]), np.float64(row[j + 2]), np.float64(row[j + 3])
        c0 += v0 * v0 * column_weights[j]
        c1 += v1 * v1 * column_weights[j + 1]
        c2 += v2 * v2 * column_weights[j + 2]
        c3 += v3 * v3 * column_weights[j + 3]
    for j in range(full, d):
        value = np.float64(row[j])
        if j - full == 0:
            c0 += value * value * column_weights[j]
        elif j - full == 1:
            c1 += value * value * column_weights[j]
        else:
            c2 += value * value * column_weights[j]
    return (c0 + c1) + (c2 + c3)


@njit(parallel=True, cache=True)
def dense_row_squares(A, column_weights, out):
    """out[i] = Σⱼ A[i, j]²·column_weights[j] for every row i (``row_square_sum``): one read of A."""
    for i in prange(A.shape[0]):
        out[i] = row_square_sum(A[i], column_weights)


@njit(cache=True, inline="always")
def row_square_sum_and_dot(row, column_weights, x):
    """(``row_square_sum(row, column_weights)``, ``row_dot(row, x)``) from one sweep along the row: each
    sum's four partial sums in its function's order, so each has that function's bits (tested), as two
    4-wide vectors side by side (``lane_square_sums4_and_sums4``). One after the other, each waited out its
    own adds' latency (dense 10⁵ × 256: 16.1 → 11.3 ms on one thread, 8.4 → 6.0 ms on two). Inlined into the pass (``inline="always"``): the
    function's share of a row is a few hundred cycles, and a call per row would count each row view's
    references in and out."""
    d = x.shape[0]
    full = d - d % 4
    s0, s1, s2, s3, c0, c1, c2, c3 = lane_square_sums4_and_sums4(row, column_weights, x, full)
    for j in range(full, d):
        value = np.float64(row[j])
        if j - full == 0:
            s0 += value * value * column_weights[j]
            c0 += row[j] * x[j]
        elif j - full == 1:
            s1 += value * value * column_weights[j]
            c1 += row[j] * x[j]
        else:
            s2 += value * value * column_weights[j]
            c2 += row[j] * x[j]
    return (s0 + s1) + (s2 + s3), (c0 + c1) + (c2 + c3)


@njit(parallel=True, cache=True)
def dense_row_squares_and_matvec(A, column_weights, x, squares, product):
    """squares[i] = Σⱼ A[i, j]²·column_weights[j] (``row_square_sum``) and product[i] = Σⱼ A[i, j]·x[j]
    (``row_dot``) in one read of A (``row_square_sum_and_dot``), with the bits of ``dense_row_squares`` and
    ``dense_matvec``."""
    for i in prange(A.shape[0]):
        squares[i], product[i] = row_square_sum_and_dot(A[i], column_weights, x)


@njit(parallel=True, cache=True)
def csr_row_squares(indptr, indices, data, column_weights, out):
    """out[i] = Σ_p data[p]²·column_weights[indices[p]] over row i's stored entries: Σⱼ C[i, j]²·w[j]
    when no column is stored twice in a row (validated input has its duplicates summed)."""
    n = indptr.shape[0] - 1
    for i in prange(n):
        total = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            value = np.float64(data[p])
            total += value * value * column_weights[np.uintp(indices[p])]
        out[i] = total


@njit(cache=True)
def expected_poisson_sizes(b, starts, stops, divisors, sizes, out):
    """For each target p, t = b[starts[p]:stops[p]] / divisors[p]: out[p, k] = Σᵢ min(1, sizes[p, k]·tᵢ²/Σt²),
    the expected number of rows a Poisson sample keeps when row i is drawn with probability
    πᵢ = min(1, sizes[p, k]·tᵢ²/Σt²) (many targets concatenated in b, or one: starts = [0], stops = [n]).
    Serial (``expected_poisson_size``, target by target), so the bits do not depend on the thread count."""
    for p in range(starts.shape[0]):
        expected_poisson_size(b[starts[p]:stops[p]], divisors[p], sizes[p], out[p])


@njit(parallel=True, cache=True)
def expected_poisson_sizes_parallel(b, starts, stops, divisors, sizes, out):
    """``expected_poisson_sizes``, one task per target: each target's sums are ``expected_poisson_size``'s,
    serial, so the bits are the serial kernel's on any thread count (many targets: ``solve_many`` prices a
    thousand small problems in ~1.5 ms on two threads instead of ~3 ms)."""
    for p in prange(starts.shape[0]):
        expected_poisson_size(b[starts[p]:stops[p]], divisors[p], sizes[p], out[p])


@njit(cache=True)
def expected_poisson_size(t, divisor, sizes, out):
    """out[k] = Σᵢ min(1, sizes[k]·sᵢ²/Σs²) for s = t / divisor (``expected_poisson_sizes``).

    Written as sizes[k] − Σᵢ max(0, sizes[k]·sᵢ²/Σs² − 1) (the uncapped πᵢ sum to sizes[k] over all rows; only
    the capped rows subtract anything), each sum in increasing i. Branch-free, three sizes per read of s (the
    sums of ``expected_poisson_sizes``' callers: the sketch's, the preconditioner's and the start's sample): a
    test per row and size mispredicted on most rows of the small targets of solve_many, whose sizes exceed n
    (1000 targets, n 64–512: 3.0 → 0.9 ms on one thread; the same sums, so the same bits). The divisor rescales a
    target whose squares would under- or overflow (1.0: s is t, to the bit). Σs² must be positive and finite."""
    if divisor != 1.0:
        t = t / divisor  # rare (b ~ 1e±300): the division stays out of the common case's loops
    total = 0.0
    for i in range(t.shape[0]):
        total += t[i] * t[i]
    for first in range(0, sizes.shape[0], 3):
        # Up to three sizes per read of s; a missing one gets factor 0, whose terms max(0, −1) are 0.
        f0 = sizes[first] / total
        f1 = sizes[first + 1] / total if first + 1 < sizes.shape[0] else 0.0
        f2 = sizes[first + 2] / total if first + 2 < sizes.shape[0] else 0.0
        e0 = sizes[first]
        e1 = sizes[first + 1] if first + 1 < sizes.shape[0] else 0.0
        e2 = sizes[first + 2] if first + 2 < sizes.shape[0] else 0.0
        for i in range(t.shape[0]):
            square = t[i] * t[i]
            e0 -= max(f0 * square - 1.0, 0.0)
            e1 -= max(f1 * square - 1.0, 0.0)
            e2 -= max(f2 * square - 1.0, 0.0)
        out[first] = e0
        if first + 1 < sizes.shape[0]:
            out[first + 1] = e1
        if first + 2 < sizes.shape[0]:
            out[first + 2] = e2
