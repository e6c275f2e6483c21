"""Passes over a CSR matrix C (n × d): the forward product and the fused transposed product.

All accept int32 or int64 ``indptr``/``indices`` and float32 or float64 ``data``;
accumulation is always in float64. Every position — entry k, column j, accumulator
slot — is an unsigned integer (np.uintp) before it indexes an array: Numba then
drops the negative-index wraparound test (a compare and two conditional moves per
load), which cost the original kernels ~35% of their time on 10-entry rows.
Unsigned arithmetic needs unsigned constants (uint + int promotes to float in Numba),
hence ``ONE`` and ``TWO``.
"""
import numpy as np
from numba import njit, prange

from .reduce import sum_chunk_partials
from .simd import LANES, add_scaled4
from .softmax import curvature_weight

ONE = np.uintp(1)
TWO = np.uintp(2)
THREE = np.uintp(3)
FOUR = np.uintp(LANES)


@njit(cache=True)
def row_dot(indptr, indices, data, x, i):
    """Σ_k data[k]·x[indices[k]] over row i's entries, in storage order."""
    acc = 0.0
    for k in range(np.uintp(indptr[i]), np.uintp(indptr[i + ONE])):
        acc += data[k] * x[np.uintp(indices[k])]
    return acc


@njit(cache=True, inline="always")
def row_pair_dots(indptr, indices, data, x, i):
    """(row_dot of row i, row_dot of row i + 1), the two rows' sums interleaved (two chains of adds in
    flight), each in storage order: the bits of ``row_dot``. Inlined into its callers' IR: as an ordinary
    call (LLVM left it a call returning a tuple) csr_matvec ran 1.09 ms against 0.73 ms written out
    (2·10⁵ × 100, 10 per row, 2 threads)."""
    start = np.uintp(indptr[i])
    middle = np.uintp(indptr[i + ONE])
    end = np.uintp(indptr[i + TWO])
    common = min(middle - start, end - middle)
    first = 0.0
    second = 0.0
    for t in range(common):
        first += data[start + t] * x[np.uintp(indices[start + t])]
        second += data[middle + t] * x[np.uintp(indices[middle + t])]
    for k in range(start + common, middle):
        first += data[k] * x[np.uintp(indices[k])]
    for k in range(middle + common, end):
        second += data[k] * x[np.uintp(indices[k])]
    return first, second


@njit(parallel=True, cache=True)
def csr_matvec(indptr, indices, data, x, out):
    """out[i] = Σ_k data[k]·x[indices[k]] over row i's entries (u = Cx).

    One read of C; each row is summed by one thread in storage order, so the
    result does not depend on the thread count. (Two interleaved partial sums per
    row ran ~15% faster on 10-entry rows, but the order of u's rounding matters:
    at logits of 10⁴ exp amplifies one ulp of u to a relative 2·10⁻¹² in the
    softmax, and the storage order matches a dense row's dot product.)
    Rows go two at a time, each with its own sum: two chains of adds in flight
    instead of one, ~7% faster on 10-entry rows (bench/passes.py, one thread).
    """
    n = out.shape[0]
    for pair in prange(n // 2):
        i = np.uintp(2 * pair)
        first, second = row_pair_dots(indptr, indices, data, x, i)
        out[i] = first
        out[i + ONE] = second
    if n % 2:
        out[n - 1] = row_dot(indptr, indices, data, x, n - 1)


@njit(parallel=True, cache=True)
def csr_rmatmat(indptr, indices, data, Q, chunk_rows, out):
    """out[j, :] = Σ_i C[i, j]·Q[i, :] (out = Cᵀ Q, Q is n × k row-major, any k).

    One read of C for all k columns (the gradient and P = CᵀU in one pass).
    Rows are split into fixed chunks of ``chunk_rows``; each chunk accumulates a
    d × w partial (w = k rounded up to whole groups of four lanes), and partials are
    summed in chunk order, so the bits depend on n and chunk_rows only, never on the
    thread count. Each entry updates its column four lanes at a time (``add_scaled4``,
    the row's q zero-padded to w): ~25% faster than k scalar updates at k = 10.
    """
    n, k = Q.shape
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    width = (k + LANES - 1) // LANES * LANES
    partial = np.zeros((n_chunks, d * width))
    stride = np.uintp(width)
    for c in prange(n_chunks):
        acc = partial[c]
        qi = np.zeros(width)
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            for t in range(k):
                qi[t] = Q[i, t]
            for p in range(np.uintp(indptr[i]), np.uintp(indptr[i + 1])):
                base = np.uintp(indices[p]) * stride
                v = data[p]
                for g in range(np.uintp(0), stride, FOUR):
                    add_scaled4(acc, base + g, v, qi[g], qi[g + ONE], qi[g + TWO], qi[g + THREE])
    sum_chunk_partials(partial, out)


@njit(parallel=True, cache=True)
def csr_rmatmat4(indptr, indices, data, Q, chunk_rows, out):
    """csr_rmatmat for k = 3 or 4 (the softmax models' [q, U]; a start's fit columns beside ∇L(0)'s): same
    sums, same order, unrolled.

    Each entry's updates are one 4-wide ``add_scaled4`` on a d × 4 partial (at k = 3 the fourth
    lane adds v·0 and is never read): one load, multiply, add and store instead of three or four
    each, ~20% faster on 10-entry rows (bench/passes.py). Entries go two at a time (their
    updates in storage order, so a column repeated within a row still adds in order): one
    loop test per two entries, ~9% faster.
    """
    n = Q.shape[0]
    four = Q.shape[1] == 4
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d * LANES))
    for c in prange(n_chunks):
        acc = partial[c]
        for i in range(np.uintp(c * chunk_rows), np.uintp(min(n, (c + 1) * chunk_rows))):
            add_row_terms4(indptr, indices, data, i, Q[i, 0], Q[i, 1], Q[i, 2], Q[i, 3] if four else 0.0, acc)
    sum_chunk_partials(partial, out)


@njit(cache=True, inline="always")
def add_row_terms4(indptr, indices, data, i, q0, q1, q2, q3, acc):
    """acc[4j + t] += C_ij·q_t for t < 4 over row i's entries (acc: a d × 4 partial, flat), in storage order, two
    entries a loop step (``csr_rmatmat4``'s row; the small problems' transposed pass too)."""
    p = np.uintp(indptr[i])
    end = np.uintp(indptr[i + ONE])
    while p + ONE < end:
        add_scaled4(acc, np.uintp(indices[p]) * FOUR, data[p], q0, q1, q2, q3)
        add_scaled4(acc, np.uintp(indices[p + ONE]) * FOUR, data[p + ONE], q0, q1, q2, q3)
        p += TWO
    if p < end:
        add_scaled4(acc, np.uintp(indices[p]) * FOUR, data[p], q0, q1, q2, q3)


# ``csr_rmatmats`` gathers the problems' columns RMATMATS_ROWS rows at a time into one row-major block.
RMATMATS_ROWS = 256


@njit(parallel=True, cache=True)
def csr_rmatmats(indptr, indices, data, Qs, chunk_rows, out):
    """out[s] = Cᵀ Qs[s] for every s (Qs a typed list of n × k arrays, out s × d × k) in one read of C.

    The problems' columns side by side: row i's Q rows are gathered into one row of s·k values, and
    each stored entry C_ij adds C_ij·(that row) to accumulator row j, contiguous s·k-wide multiply-adds
    (SIMD across problems, where one problem at a time does k scalar updates per entry). Every slot gets
    csr_rmatmat's / csr_rmatmat4's / csr_rmatvec's updates in storage order over the same chunks, summed
    in chunk order, so each out[s] has ``rmatmat(Qs[s])``'s bits. Measured, 2 threads, n = 10⁵, d = 64,
    10 entries per row, 64 problems of k = 3 (best of 5, same run): 29 ms against 64 calls of
    csr_rmatmat3 (now csr_rmatmat4) 44–46 ms; taking the columns in L1-sized strips of 32 (one read of C per strip) ran
    50 ms: the strip's gather and the re-reads of C cost more than the cache misses they save.
    """
    n_sets = len(Qs)
    k = out.shape[2]
    width = n_sets * k
    n = indptr.shape[0] - 1
    d = out.shape[1]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d, width))
    for c in prange(n_chunks):
        acc = partial[c]
        block = np.empty((RMATMATS_ROWS, width))
        stop = min(n, (c + 1) * chunk_rows)
        for rows_start in range(c * chunk_rows, stop, RMATMATS_ROWS):
            rows_stop = min(stop, rows_start + RMATMATS_ROWS)
            for s in range(n_sets):
                Q = Qs[s]
                for r in range(rows_stop - rows_start):
                    for t in range(k):
                        block[r, s * k + t] = Q[rows_start + r, t]
            for r in range(rows_stop - rows_start):
                qi = block[r]
                i = rows_start + r
                for p in range(np.uintp(indptr[i]), np.uintp(indptr[i + 1])):
                    row = acc[np.uintp(indices[p])]
                    v = data[p]
                    for t in range(width):
                        row[t] += v * qi[t]
    # every problem's d × k sums at once (chunk order, as for rmatmat), then each problem's columns apart
    sums = np.empty((d, width))
    sum_chunk_partials(partial.reshape((n_chunks, d * width)), sums)
    for s in range(n_sets):
        out[s] = sums[:, s * k:(s + 1) * k]


@njit(parallel=True, cache=True)
def csr_rmatvec(indptr, indices, data, q, chunk_rows, out):
    """out[j] = Σ_i C[i, j]·q[i] (Cᵀq, the Hessian-vector product's pass); out is d × 1.

    Entries two at a time in storage order, as in csr_rmatmat4.
    """
    n = q.shape[0]
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d))
    for c in prange(n_chunks):
        acc = partial[c]
        for i in range(np.uintp(c * chunk_rows), np.uintp(min(n, (c + 1) * chunk_rows))):
            add_row_scaled(indptr, indices, data, i, q[i], acc)
    sum_chunk_partials(partial, out)


@njit(cache=True, inline="always")
def add_row_scaled(indptr, indices, data, i, scale, acc):
    """acc[j] += C[i, j]·scale over row i's entries, two at a time in storage order (csr_rmatvec's and
    csr_sandwich_vector's updates; inlined into their loops)."""
    p = np.uintp(indptr[i])
    end = np.uintp(indptr[i + ONE])
    while p + ONE < end:
        acc[np.uintp(indices[p])] += data[p] * scale
        acc[np.uintp(indices[p + ONE])] += data[p + ONE] * scale
        p += TWO
    if p < end:
        acc[np.uintp(indices[p])] += data[p] * scale


@njit(parallel=True, cache=True)
def csr_sandwich_vector(indptr, indices, data, beta, Q, c, w, v, chunk_rows, forward, out):
    """forward = C v and out = Cᵀ(β ⊙ forward) (d × 1) in one read of C: each row is read for its dot
    (storage order, csr_matvec's sum) and then, from cache, for its update (csr_rmatvec's, on the same
    fixed row chunks, partials summed in chunk order): the bits of the two passes for any thread count,
    at about half their memory traffic (CG's Hessian-vector product; CSR 2·10⁵ × 100, 10 per row, 2
    threads: 1.23 ms against 1.76 ms). Rows go in pairs, their two dots interleaved (two chains of adds
    in flight, as in csr_matvec), then row i's updates before row i + 1's.

    β is ``beta``, or, when ``beta`` is empty, βᵢ = Q[i, 2] − c·Q[i, 1] + wᵢ formed as row i is read
    (``curvature_weight``: the bits of ``curvature_weights``' β, without the pass that writes it; CSR
    2·10⁵ × 100 with caches flushed: that pass ~0.9 ms, reading Q here instead of β ~0.15 ms per product)."""
    n = forward.shape[0]
    d = out.shape[0]
    from_columns = beta.shape[0] == 0
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d))
    for chunk in prange(n_chunks):
        acc = partial[chunk]
        i = np.uintp(chunk * chunk_rows)
        stop = np.uintp(min(n, (chunk + 1) * chunk_rows))
        while i + ONE < stop:
            first, second = row_pair_dots(indptr, indices, data, v, i)
            forward[i] = first
            forward[i + ONE] = second
            add_row_scaled(indptr, indices, data, i, _weight(beta, Q, c, w, from_columns, i) * first, acc)
            add_row_scaled(indptr, indices, data, i + ONE, _weight(beta, Q, c, w, from_columns, i + ONE) * second,
                           acc)
            i += TWO
        if i < stop:
            dot = row_dot(indptr, indices, data, v, i)
            forward[i] = dot
            add_row_scaled(indptr, indices, data, i, _weight(beta, Q, c, w, from_columns, i) * dot, acc)
    sum_chunk_partials(partial, out)


@njit(cache=True, inline="always")
def _weight(beta, Q, c, w, from_columns, i):
    """βᵢ of ``csr_sandwich_vector``: beta[i], or ``curvature_weight(Q, c, w, i)`` when ``from_columns``."""
    # i is unsigned here: int64 as every caller passes it (one specialisation of curvature_weight to compile)
    return curvature_weight(Q, c, w, np.int64(i)) if from_columns else beta[i]


@njit(parallel=True, cache=True)
def csr_matmat(indptr, indices, data, Z, out):
    """out[i, :] = Σ_k data[k]·Z[indices[k], :] (out = C Z for a thin dense Z, d × r); one thread per row."""
    n = out.shape[0]
    r = Z.shape[1]
    for i in prange(n):
        acc = out[i]
        for t in range(r):
            acc[t] = 0.0
        for p in range(np.uintp(indptr[i]), np.uintp(indptr[i + 1])):
            v = data[p]
            z = Z[np.uintp(indices[p])]
            for t in range(r):
                acc[t] += v * z[t]


@njit(cache=True)
def csr_column_squares(indices, data, out):
    """out[j] += Σ_k data[k]² over the stored entries k of column j (float64), in storage order.

    One read of the entries and no copy of them (squaring a float64 copy of ``data`` and
    ``np.bincount`` held two arrays of nnz floats, more than an iteration's work at 10 entries per
    row); serial, as ``np.bincount`` sums, so the bits are those of that sum in storage order.
    """
    for k in range(indices.shape[0]):
        value = np.float64(data[k])
        out[np.uintp(indices[k])] += value * value


@njit(cache=True)
def csr_dense_rows(indptr, indices, data, rows, out):
    """out[t, :] = C[rows[t], :] as dense float64 (duplicate entries of a row add up, in float64).

    Serial: it runs inside the blocked GEMM sandwich's worker threads, one block each.
    """
    d = out.shape[1]
    for t in range(rows.shape[0]):
        dense = out[t]
        for j in range(d):
            dense[j] = 0.0
        i = rows[t]
        for p in range(np.uintp(indptr[i]), np.uintp(indptr[i + 1])):
            dense[np.uintp(indices[p])] += data[p]


@njit(parallel=True, cache=True)
def csr_matvecs(indptr, indices, data, X, rows_per_task, out):
    """out[t, :] = C X[:, t] for every column t of X (d × r; out is r × n), each row summed in storage
    order as csr_matvec does, so each out[t] has csr_matvec(X[:, t])'s bits; one read of C for r vectors."""
    n = out.shape[1]
    r = X.shape[1]
    n_tasks = (n + rows_per_task - 1) // rows_per_task
    for task in prange(n_tasks):
        acc = np.empty(r)
        for i in range(task * rows_per_task, min(n, (task + 1) * rows_per_task)):
            for t in range(r):
                acc[t] = 0.0
            for p in range(np.uintp(indptr[i]), np.uintp(indptr[i + 1])):
                v = data[p]
                z = X[np.uintp(indices[p])]
                for t in range(r):
                    acc[t] += v * z[t]
            for t in range(r):
                out[t, i] = acc[t]



# ``indptr_fault``'s answers: the first rule of a compressed matrix's index pointer that fails, or none.
INDPTR_SOUND = 0
INDPTR_UNORDERED = 1
INDPTR_OVERRUNS = 2


@njit(cache=True)
def indptr_fault(indptr, indices_length, data_length):
    """Which rule a compressed sparse matrix's index pointer breaks, the first that fails of: it starts at 0
    and never decreases (else INDPTR_UNORDERED), and its last entry, the stored count, lies within both the
    indices (``indices_length``) and the values (``data_length``; else INDPTR_OVERRUNS); INDPTR_SOUND when
    none. The entries indptr covers are then safe to read. (Its length, major + 1, is the caller's to check.)"""
    if indptr[0] != 0:
        return INDPTR_UNORDERED
    falls = 0
    for i in range(indptr.shape[0] - 1):
        falls += indptr[i + 1] < indptr[i]  # no early exit: the loop vectorises
    if falls:
        return INDPTR_UNORDERED
    stored = indptr[indptr.shape[0] - 1]
    if stored > indices_length or stored > data_length:
        return INDPTR_OVERRUNS
    return INDPTR_SOUND


@njit(inline="always")
def slice_start_falls(indptr, indices, first, stop):
    """The falls indices[k] ≤ indices[k − 1] at the first entry k of each non-empty slice of [first, stop),
    except at the range's first stored entry: comparisons with the slice before, which a count of falls over
    all of the range's entries includes and a test of each slice's order must take off."""
    low = np.uintp(indptr[first])
    falls = 0
    for i in range(first, stop):
        start = np.uintp(indptr[i])
        if low < start < np.uintp(indptr[i + 1]):
            falls += indices[start] <= indices[start - ONE]
    return falls


@njit(parallel=True, cache=True)
def compressed_index_facts(indptr, indices, slices_per_chunk, out):
    """The checks of a compressed sparse matrix's indices (CSR: slice s is row s) in one parallel read:
    out[c] = (least index, largest index, falls) over the entries of chunk c, the slices
    [c·slices_per_chunk, (c + 1)·slices_per_chunk), where falls counts the entries k with
    indices[k] ≤ indices[k − 1] in the same slice (0 for all chunks: every slice strictly increasing, i.e.
    sorted without duplicates, SciPy's canonical format). An empty chunk gives (2⁶³ − 1, −1, 0).

    indptr must be checked first (from 0, non-decreasing, within indices): entries are read by it.
    Falls are counted over all of a chunk's entries, then those at a slice's first entry (which compare
    with the slice before) taken off (``slice_start_falls``): one compare per entry and no exit per slice
    (as ``_sorted_rows`` of kernels/sandwich.py). Chunks are fixed and min/max/count are exact: the same
    result on any thread count.
    """
    n = indptr.shape[0] - 1
    n_chunks = out.shape[0]
    for c in prange(n_chunks):
        first = min(n, c * slices_per_chunk)
        stop = min(n, first + slices_per_chunk)
        low = np.uintp(indptr[first])
        high = np.uintp(indptr[stop])
        least = np.int64(9223372036854775807)
        largest = np.int64(-1)
        falls = np.int64(0)
        if low < high:
            least = np.int64(indices[low])
            largest = least
            for k in range(low + ONE, high):
                value = np.int64(indices[k])
                least = min(least, value)
                largest = max(largest, value)
                falls += indices[k] <= indices[k - ONE]
            falls -= slice_start_falls(indptr, indices, first, stop)
        out[c, 0] = least
        out[c, 1] = largest
        out[c, 2] = falls


@njit(cache=True)
def csr_row_pairs(indptr, dense_from, row_pairs):
    """row_pairs[i] = nnzᵢ(nnzᵢ + 1)/2, nnzᵢ = indptr[i + 1] − indptr[i] (the pair updates of row i's
    sandwich, int64); returns (Σᵢ row_pairs[i], the same over the rows with nnzᵢ < dense_from, the count of
    rows with nnzᵢ ≥ dense_from): the sandwich's work, that of its sparse part, and its long rows (sandwiched
    by SYRK), in one serial read of indptr (NumPy's passes and their temporaries took ~1 ms at n = 2·10⁵)."""
    short_pairs = np.int64(0)
    long_pairs = np.int64(0)
    long_rows = np.int64(0)
    for i in range(row_pairs.shape[0]):
        count = np.int64(indptr[i + 1]) - np.int64(indptr[i])
        pairs = (count * (count + 1)) >> 1
        row_pairs[i] = pairs
        if count >= dense_from:
            long_rows += 1
            long_pairs += pairs
        else:
            short_pairs += pairs
    return short_pairs + long_pairs, short_pairs, long_rows
