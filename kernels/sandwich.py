"""The sparse sandwich Cᵀ diag(β) C of a CSR matrix in O(Σᵢ nnzᵢ²) work."""
import numpy as np
from numba import njit, prange

from .csr import slice_start_falls
from .softmax import curvature_weight

ONE = np.uintp(1)
TWO = np.uintp(2)
THREE = np.uintp(3)
FOUR = np.uintp(4)
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


@njit(inline="always")
def _strictly_increasing(indices, start, stop):
    """Whether the stored columns indices[start:stop] increase strictly (a sorted row without duplicates)."""
    for k in range(start + ONE, stop):
        if indices[k] <= indices[k - ONE]:
            return False
    return True


@njit(inline="always")
def _sorted_rows(indptr, indices, first, stop):
    """Whether every row in [first, stop) has strictly increasing stored columns (sorted, no duplicates).

    Two flat counting loops instead of one early-exit loop per row: the falls indices[k] ≤ indices[k − 1]
    over all the rows' entries, and those of them at a row's first entry (which compare with the row
    before); the rows are sorted when every fall is one of those. One compare per entry and no
    data-dependent exit: the per-row test it replaces (``_strictly_increasing``) cost the sandwich of
    2·10⁵ rows of 10 at d = 100 ~0.75 of ~4.4 ms in mispredicted loop exits."""
    falls = 0
    for k in range(np.uintp(indptr[first]) + ONE, np.uintp(indptr[stop])):
        falls += indices[k] <= indices[k - ONE]
    return falls == slice_start_falls(indptr, indices, first, stop)


@njit(inline="always")
def _add_row_pairs(columns, values, start, m, bi, acc, stride):
    """acc[j_a·stride + j_b] += bi·v_a·v_b for every pair a ≤ b of the m entries (columns[start + a],
    values[start + a]), whose columns increase strictly: the row's pairs in the upper triangle.

    Entries are taken four at a time (a register tile), then two, then one: each b after the tile
    updates all its a's, which divides the loads of (j_b, v_b) and the inner loops with a
    data-dependent exit by four (10-entry rows: two inner loops per row instead of four; ~10% of
    the sandwich at d = 100 and 256). Every slot (j_a, j_b) gets one update per row, v_a·v_b with
    v_a = bi·v_a, whatever the tile: the bits do not depend on it.
    Positions are unsigned (no wraparound tests); values are widened to float64 as read."""
    a = np.uintp(0)
    while a + FOUR <= m:
        j0 = np.uintp(columns[start + a])
        j1 = np.uintp(columns[start + a + ONE])
        j2 = np.uintp(columns[start + a + TWO])
        j3 = np.uintp(columns[start + a + THREE])
        d0 = np.float64(values[start + a])
        d1 = np.float64(values[start + a + ONE])
        d2 = np.float64(values[start + a + TWO])
        d3 = np.float64(values[start + a + THREE])
        v0 = bi * d0
        v1 = bi * d1
        v2 = bi * d2
        v3 = bi * d3
        row0 = j0 * stride
        row1 = j1 * stride
        row2 = j2 * stride
        row3 = j3 * stride
        acc[row0 + j0] += v0 * d0
        acc[row0 + j1] += v0 * d1
        acc[row0 + j2] += v0 * d2
        acc[row0 + j3] += v0 * d3
        acc[row1 + j1] += v1 * d1
        acc[row1 + j2] += v1 * d2
        acc[row1 + j3] += v1 * d3
        acc[row2 + j2] += v2 * d2
        acc[row2 + j3] += v2 * d3
        acc[row3 + j3] += v3 * d3
        for b in range(a + FOUR, m):
            jb = np.uintp(columns[start + b])
            db = np.float64(values[start + b])
            acc[row0 + jb] += v0 * db
            acc[row1 + jb] += v1 * db
            acc[row2 + jb] += v2 * db
            acc[row3 + jb] += v3 * db
        a += FOUR
    if a + TWO <= m:
        a1 = a + ONE
        j0 = np.uintp(columns[start + a])
        j1 = np.uintp(columns[start + a1])
        d0 = np.float64(values[start + a])
        d1 = np.float64(values[start + a1])
        v0 = bi * d0
        v1 = bi * d1
        row0 = j0 * stride
        row1 = j1 * stride
        acc[row0 + j0] += v0 * d0
        acc[row0 + j1] += v0 * d1
        acc[row1 + j1] += v1 * d1
        if a1 + ONE < m:
            jb = np.uintp(columns[start + a1 + ONE])
            db = np.float64(values[start + a1 + ONE])
            acc[row0 + jb] += v0 * db
            acc[row1 + jb] += v1 * db
        a += TWO
    if a < m:
        ja = np.uintp(columns[start + a])
        da = np.float64(values[start + a])
        acc[ja * stride + ja] += bi * da * da


def partials_shape(n_rows, chunk_rows, d):
    """The shape of ``csr_sandwich_rows``'s ``partial``: one padded d × d partial per chunk of rows."""
    return (n_rows + chunk_rows - 1) // chunk_rows, d * (d + ROW_PAD)


@njit(parallel=True, cache=True)
def csr_sandwich_rows(indptr, indices, data, rows, weights, chunk_rows, partial, out, rows_increasing=False):
    """out = Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]}: the sandwich over listed rows (e.g. a sampled D̃).

    Only the upper triangle is accumulated: every pair of a row's entries a ≤ b, taken by
    increasing column with duplicates summed, adds w·C_ia·C_ib to out[j_a, j_b]
    (``_add_row_pairs``): O(Σ_t nnz²) work. A row whose stored columns already increase strictly
    (canonical CSR; tested for all of a chunk's rows at once when they are consecutive rows of C,
    ``_listed_rows_sorted``, else row by row) is read in place; any other is first gathered into a small local buffer,
    sorted, duplicates summed (``_gather_sorted_row``): the same entries in the same order, so
    the same bits either way. Fixed chunks of ``chunk_rows`` list entries each own a d × d
    partial (rows padded by ROW_PAD), summed in chunk order; then mirrored. Each accumulator
    slot receives its updates in a fixed order.

    Measured (one thread, same run): sorted entries and the padding took the pair update from
    1.32 to 1.18 ns on 10-entry rows at d = 256 and from 1.50 to 1.06 ns on the short rows of a
    Zipf matrix at d = 1024, against reading C in the pair loop with each pair ordered by
    min/max. Copying a sorted row into the buffer cost a third of the time: 2·10⁵ canonical rows
    of 10 took 9.3 ms with the copy against 7.6 ms read in place at d = 256 (14.4 against 11.1
    at d = 1024); the copy alone, 3.5 ms. The partial's cache level hardly matters: at d = 32
    (an 8 KiB partial, in L1) the pair loop ran 0.83 ns per pair against 0.97 ns at d = 256, so
    splitting the columns into L1-sized ranges (which re-reads C once per range) cannot pay.
    What each partial costs does matter: zeroing it in its own task, not all of them up front,
    took 10⁶ rows of 10 at d = 256 from 1.11 to 1.00 ns per pair with 50 chunks; the chunk count
    is ``fastnewton.chunking.sandwich_chunk_rows``'s.

    ``partial`` (``partials_shape``; any values, each task zeroes its own) is the caller's: a
    recycled one costs no page faults, where one allocated here was fresh memory on the Hessians
    that followed a growth of the solver's other arrays (CSR 10⁶ × 256: 2·10³ faults, ~2–3 ms).

    ``rows_increasing``: every row of C is known to have strictly increasing columns (checked when C
    was validated: ``fastnewton.validation.index_facts``), so no chunk tests its rows again (that test
    read the indices once more: ~1 of ~13 ms on one thread at 2·10⁵ rows of 10, d = 100). The same
    rows are read in place either way: the same bits.
    """
    n = rows.shape[0]
    d = out.shape[0]
    stride = np.uintp(d + ROW_PAD)
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    # Each task zeroes its own partial: a streaming write that leaves it in that core's cache for the
    # pair updates (np.zeros of all of them zeroed every partial on one thread, cold for the rest).
    for c in prange(n_chunks):
        acc = partial[c]
        acc[:] = 0.0
        columns = np.empty(d, dtype=np.uintp)
        values = np.empty(d)
        first = c * chunk_rows
        stop = min(n, first + chunk_rows)
        in_place = rows_increasing or _listed_rows_sorted(indptr, indices, rows, first, stop)
        for t in range(first, stop):
            bi = weights[t]
            if bi != 0.0:
                _add_row(indptr, indices, data, rows[t], bi, acc, stride, columns, values, in_place)
    sum_partials(partial, n_chunks, out)


@njit(inline="always")
def _listed_rows_sorted(indptr, indices, rows, first, stop):
    """Whether rows[first:stop] are consecutive rows r, r + 1, … whose columns all increase strictly
    (``_sorted_rows``): every row of the full sandwich's chunks (rows = 0, 1, …, n − 1); a sample's rows
    are not consecutive and are tested one by one (``_add_row``)."""
    if stop <= first:
        return True
    gaps = 0
    for t in range(first + 1, stop):
        gaps += rows[t] != rows[t - 1] + 1
    return gaps == 0 and _sorted_rows(indptr, indices, rows[first], rows[stop - 1] + 1)


@njit(inline="always")
def _add_stored_row(indptr, indices, data, i, bi, acc, stride):
    """Row i's pairs times bi into acc, read in place: its stored columns are known to increase strictly
    (``_add_row`` with ``sorted_row``, for a loop that has only such rows: kernels/small_newton.py's sandwich of
    one small problem ran its pair updates at half the speed with both of ``_add_row``'s paths inlined in its row
    loop, 8.5 µs against 4.8 µs at 288 rows of 4–8 entries, d = 48, one thread; the parallel sandwiches here,
    measured the same either way, keep ``_add_row``)."""
    start = np.uintp(indptr[i])
    _add_row_pairs(indices, data, start, np.uintp(indptr[i + 1]) - start, bi, acc, stride)


@njit(inline="always")
def _add_row(indptr, indices, data, i, bi, acc, stride, columns, values, sorted_row):
    """Row i's pairs times bi into acc: read in place when its columns increase strictly (``sorted_row``:
    known so, e.g. by ``_sorted_rows`` for its whole chunk; else tested here), else gathered sorted
    (duplicates summed) into ``columns``, ``values`` first (``csr_sandwich_rows``)."""
    if sorted_row or _strictly_increasing(indices, np.uintp(indptr[i]), np.uintp(indptr[i + 1])):
        _add_stored_row(indptr, indices, data, i, bi, acc, stride)
    else:
        m = _gather_sorted_row(indptr, indices, data, i, columns, values)
        _add_row_pairs(columns, values, np.uintp(0), m, bi, acc, stride)


@njit(parallel=True, cache=True)
def csr_curvature_sandwich(indptr, indices, data, Q, c, w, chunk_rows, partial, out, rows_increasing=False):
    """out = Cᵀ diag(β) C over every row, β = Q[:, 2] − c·Q[:, 1] + w (``curvature_weights``), each βᵢ
    formed as its row's pairs need it: ``csr_sandwich_rows`` over rows 0, 1, …, n − 1 with the same
    chunks, so the same bits, without the pass that writes β (CSR 10⁶ × 256: ~1.9 ms of ~30 per
    Hessian on 2 threads; reading Q and w here instead of β costs the compute-bound pair loop little).
    w may be empty (no row weights: ``curvature_weight``); ``rows_increasing`` as for ``csr_sandwich_rows``. (Numba's disk cache keys this kernel on this
    file alone: a change to ``curvature_weight``'s contract must touch this file too, or a stale cached
    copy keeps the old one.)
    """
    n = Q.shape[0]
    d = out.shape[0]
    stride = np.uintp(d + ROW_PAD)
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    for chunk in prange(n_chunks):
        acc = partial[chunk]
        acc[:] = 0.0
        columns = np.empty(d, dtype=np.uintp)
        values = np.empty(d)
        first = chunk * chunk_rows
        stop = min(n, first + chunk_rows)
        in_place = rows_increasing or _sorted_rows(indptr, indices, first, stop)
        for i in range(first, stop):
            bi = curvature_weight(Q, c, w, i)
            if bi != 0.0:
                _add_row(indptr, indices, data, i, bi, acc, stride, columns, values, in_place)
    sum_partials(partial, n_chunks, out)


@njit(parallel=True, cache=True)
def sum_partials(partial, n_chunks, out):
    """out = the sum of the first ``n_chunks`` padded partials' upper triangles, mirrored.

    Row j of the upper triangle: the chunks' partial rows added in chunk order (contiguous
    reads; each entry's sum runs over c = 0, 1, … as a loop over c per entry would), then mirrored
    into column j by the same task (the lower triangle, which no task sums into: one parallel region,
    not two, each of which wakes the sleeping OpenMP worker)."""
    d = out.shape[0]
    for j in prange(d):
        for l in range(j, d):
            out[j, l] = 0.0
        for c in range(n_chunks):
            part = partial[c]
            base = j * (d + ROW_PAD)
            for l in range(j, d):
                out[j, l] += part[base + l]
        for l in range(j + 1, d):
            out[l, j] = out[j, l]


# ``csr_sandwich_many`` gives each task the problems of one block of at most MANY_BLOCK (the q-wide
# updates' accumulator row, MANY_BLOCK × 8 bytes per pair slot, stays in L1) and gathers their
# weights MANY_ROWS rows at a time from the per-problem vectors.
MANY_BLOCK = 64
MANY_ROWS = 256


@njit(parallel=True, cache=True)
def csr_sandwich_many(indptr, indices, data, weights, chunk_rows, out):
    """out[t] = Cᵀ diag(weights[t]) C for every problem t (``weights`` a typed list of q length-n vectors,
    ``out`` q × d × d): one read of C per block of problems, each with ``csr_sandwich_rows``' bits.

    For each row i (sorted by column, duplicates summed: ``_gather_sorted_row``, the entries
    ``csr_sandwich_rows`` takes) and each entry a, the block's weighted values β_t[i]·C_ia are formed once,
    and for each pair a ≤ b, β_t[i]·C_ia·C_ib added to the packed upper-triangle slot (j_a, j_b) of all the
    block's problems: contiguous q-wide multiply-adds (a Khatri–Rao product), where one problem at a time
    does one scattered update per pair. Each slot gets ``csr_sandwich_rows``' products (β·C_ia first, then
    ·C_ib) in row order over the same chunks of ``chunk_rows`` rows, summed in chunk order from 0, so each
    problem's result has ``csr_sandwich_rows``' bits (a row a problem weights 0 adds ±0, which leaves every
    partial sum, never −0, as it is), whatever the thread count, the block or the problems solved with it.
    Measured, 2 threads, n = 10⁵, d = 64, 10 entries per row, q = 64: 66–75 ms against 64 calls of
    ``csr_sandwich_rows`` 158–164 ms (3 runs, same process).
    """
    q = len(weights)
    n = indptr.shape[0] - 1
    d = out.shape[1]
    offset = np.empty(d, dtype=np.uintp)
    for j in range(d):
        # slot(j, l) = offset[j] + l for l ≥ j, row-major over the upper triangle
        offset[j] = np.uintp(j * d - j * (j - 1) // 2 - j)
    slots = d * (d + 1) // 2
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    n_blocks = (q + MANY_BLOCK - 1) // MANY_BLOCK
    block = min(q, MANY_BLOCK)
    # Each task zeroes its own partial (as ``csr_sandwich_rows``): in that core's cache for the updates.
    partial = np.empty((n_chunks, n_blocks, slots * block))
    for task in prange(n_chunks * n_blocks):
        c = task // n_blocks
        first = (task % n_blocks) * block
        width = min(q, first + block) - first
        wq = np.uintp(block)
        acc = partial[c, task % n_blocks]
        acc[:] = 0.0
        columns = np.empty(d, dtype=np.uintp)
        values = np.empty(d)
        beta = np.empty((MANY_ROWS, block))
        weighted_a = np.empty(block)
        stop = min(n, (c + 1) * chunk_rows)
        for rows_start in range(c * chunk_rows, stop, MANY_ROWS):
            rows_stop = min(stop, rows_start + MANY_ROWS)
            for t in range(width):
                w = weights[first + t]
                for r in range(rows_stop - rows_start):
                    beta[r, t] = w[rows_start + r]
            for r in range(rows_stop - rows_start):
                bi = beta[r]
                weighted = False
                for t in range(width):
                    weighted |= bi[t] != 0.0
                if not weighted:
                    continue
                m = _gather_sorted_row(indptr, indices, data, rows_start + r, columns, values)
                for a in range(m):
                    va = values[a]
                    for t in range(width):
                        weighted_a[t] = bi[t] * va
                    row = offset[columns[a]]
                    for b in range(a, m):
                        vb = values[b]
                        base = (row + columns[b]) * wq
                        for t in range(width):
                            acc[base + np.uintp(t)] += weighted_a[t] * vb
    for j in prange(d):
        for l in range(j, d):
            slot = np.uintp(offset[j] + l)
            for t in range(q):
                position = slot * np.uintp(block) + np.uintp(t % block)
                total = 0.0
                for c in range(n_chunks):
                    total += partial[c, t // block, position]
                out[t, j, l] = total
                out[t, l, j] = total
