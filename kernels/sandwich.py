"""The sparse sandwich Cᵀ diag(β) C of a CSR matrix in O(Σᵢ nnzᵢ²) work."""
import numpy as np
from numba import njit, prange

ONE = np.uintp(1)
TWO = np.uintp(2)
# Each chunk's d × d partial has rows ROW_PAD entries longer than d. Unpadded, at d = 256 the
# rows j and j + 2 of the partial lie 4 KiB apart, and the register tile's two updates
# (j0, jb), (j1, jb) then share their low 12 address bits whenever j1 − j0 is even: the CPU
# takes the load of one for a possible alias of the other's pending store and waits. Padding
# by one cache line measured 10% fewer ns per pair update at d = 256 (one thread, 2·10⁵ rows of 10).
ROW_PAD = 8


@njit(inline="always")
def _gather_sorted_row(indptr, indices, data, i, columns, values):
    """Row i's entries into columns[:m], values[:m] (float64) by increasing column, duplicate
    columns summed in storage order; returns m ≤ d.

    An insertion sort: one comparison per entry on an already sorted row (the usual CSR),
    O(nnzᵢ²) at worst, which is the pair work the row costs anyway. Sorted and distinct, the
    pairs a < b of the row all fall in the upper triangle at (j_a, j_b): no min/max and no
    diagonal select per update.
    """
    m = np.uintp(0)
    for k in range(np.uintp(indptr[i]), np.uintp(indptr[i + 1])):
        column = np.uintp(indices[k])
        value = np.float64(data[k])
        position = m
        while position > 0 and columns[position - ONE] > column:
            position -= ONE
        if position > 0 and columns[position - ONE] == column:
            values[position - ONE] += value
            continue
        for q in range(m, position, -1):
            columns[q] = columns[q - 1]
            values[q] = values[q - 1]
        columns[position] = column
        values[position] = value
        m += ONE
    return m


@njit(parallel=True, cache=True)
def csr_sandwich_rows(indptr, indices, data, rows, weights, chunk_rows, out):
    """out = Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]}: the sandwich over listed rows (e.g. a sampled D̃).

    Only the upper triangle is accumulated: each listed row is gathered into a small local
    buffer sorted by column with duplicates summed (``_gather_sorted_row``); then every pair
    of its entries a ≤ b adds w·C_ia·C_ib to out[j_a, j_b]: O(Σ_t nnz²) work. Fixed chunks of
    ``chunk_rows`` list entries each own a d × d partial (rows padded by ROW_PAD), summed in
    chunk order; then mirrored.

    Entries are taken two at a time (a register tile): each b after the pair updates both a's,
    which halves the loads of (j_b, C_ib) and the inner loops with a data-dependent exit.
    Positions are unsigned (no wraparound tests). Each accumulator slot receives its updates
    in a fixed order. The local sorted buffer (instead of reading C in the pair loop and
    ordering each pair by min/max) and the padding took the pair update from 1.32 to 1.18 ns
    on 10-entry rows at d = 256 and from 1.50 to 1.06 ns on the short rows of a Zipf matrix at
    d = 1024 (one thread, bench/sandwich.py against the previous kernel, same run). The
    partial's cache level hardly matters: at d = 32 (an 8 KiB partial, in L1) the same loop
    ran 0.83 ns per pair against 0.97 ns at d = 256 (one thread, 2·10⁵ rows of 10), so
    splitting the columns into L1-sized ranges (which re-reads C once per range) cannot pay.
    """
    n = rows.shape[0]
    d = out.shape[0]
    stride = np.uintp(d + ROW_PAD)
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d * (d + ROW_PAD)))
    for c in prange(n_chunks):
        acc = partial[c]
        columns = np.empty(d, dtype=np.uintp)
        values = np.empty(d)
        for t in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            bi = weights[t]
            if bi == 0.0:
                continue
            m = _gather_sorted_row(indptr, indices, data, rows[t], columns, values)
            a = np.uintp(0)
            while a + TWO <= m:
                a1 = a + ONE
                j0 = columns[a]
                j1 = columns[a1]
                d0 = values[a]
                d1 = values[a1]
                v0 = bi * d0
                v1 = bi * d1
                row0 = j0 * stride
                row1 = j1 * stride
                acc[row0 + j0] += v0 * d0
                acc[row0 + j1] += v0 * d1
                acc[row1 + j1] += v1 * d1
                for b in range(a1 + ONE, m):
                    jb = columns[b]
                    db = values[b]
                    acc[row0 + jb] += v0 * db
                    acc[row1 + jb] += v1 * db
                a += TWO
            if a < m:
                ja = columns[a]
                acc[ja * stride + ja] += bi * values[a] * values[a]
    # Row j of the upper triangle: the chunks' partial rows added in chunk order (contiguous
    # reads; each entry's sum runs over c = 0, 1, … as a loop over c per entry would), then mirrored.
    for j in prange(d):
        for l in range(j, d):
            out[j, l] = 0.0
        for c in range(n_chunks):
            part = partial[c]
            base = j * (d + ROW_PAD)
            for l in range(j, d):
                out[j, l] += part[base + l]
    for j in prange(d):
        for l in range(j + 1, d):
            out[l, j] = out[j, l]


@njit(parallel=True, cache=True)
def csr_sandwich_many(indptr, indices, data, weights, chunk_rows, out):
    """out[t] = Cᵀ diag(weights[:, t]) C for every column t of the n × q ``weights``, in one read of C.

    csr_sandwich_rows over all rows, for q weight vectors at once: the same chunks, pairs and
    register tile, with each update applied to the q problems' accumulators side by side (slot-major
    partials, chunk × d·d × q, the q problems contiguous). Every slot of problem t receives the
    updates of csr_sandwich_rows(every row, weights[:, t]) in the same order, so each out[t] has its bits (a row
    with weight 0 adds ±0 to a slot that is never −0, which changes nothing).
    """
    n, q = weights.shape
    d = out.shape[1]
    width = np.uintp(d)
    wq = np.uintp(q)
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d * d * q))
    for c in prange(n_chunks):
        acc = partial[c]
        v0 = np.empty(q)
        v1 = np.empty(q)
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            bi = weights[i]
            weighted = False
            for t in range(q):
                weighted |= bi[t] != 0.0
            if not weighted:
                continue
            a = np.uintp(indptr[i])
            end = np.uintp(indptr[i + 1])
            while a + TWO <= end:
                a1 = a + ONE
                j0 = np.uintp(indices[a])
                j1 = np.uintp(indices[a1])
                d0 = data[a]
                d1 = data[a1]
                for t in range(q):
                    v0[t] = bi[t] * d0
                    v1[t] = bi[t] * d1
                _add_pair_many(acc, width, wq, j0, j0, v0, d0, False)
                _add_pair_many(acc, width, wq, j0, j1, v0, d1, True)
                _add_pair_many(acc, width, wq, j1, j1, v1, d1, False)
                for b in range(a1 + ONE, end):
                    jb = np.uintp(indices[b])
                    db = data[b]
                    _add_pair_many(acc, width, wq, j0, jb, v0, db, True)
                    _add_pair_many(acc, width, wq, j1, jb, v1, db, True)
                a += TWO
            if a < end:
                ja = np.uintp(indices[a])
                da = data[a]
                base = (ja * width + ja) * wq
                for t in range(q):
                    acc[base + np.uintp(t)] += bi[t] * da * da
    for j in prange(d):
        for l in range(j, d):
            base = np.uintp(j * d + l) * wq
            for t in range(q):
                total = 0.0
                for c in range(n_chunks):
                    total += partial[c, base + np.uintp(t)]
                out[t, j, l] = total
                out[t, l, j] = total


@njit(inline="always")
def _add_pair_many(acc, width, wq, ja, jb, v, db, pair):
    """_add_pair for q problems: acc[slot·q + t] += v[t]·db, twice when ``pair`` joins two duplicate
    entries of one column (a diagonal term, ``pair`` False, adds once)."""
    base = (min(ja, jb) * width + max(ja, jb)) * wq
    if pair and ja == jb:
        for t in range(v.shape[0]):
            value = v[t] * db
            acc[base + np.uintp(t)] += value + value
    else:
        for t in range(v.shape[0]):
            acc[base + np.uintp(t)] += v[t] * db
