"""Memory-bound passes over a dense row-major matrix A (n × d), deterministic in the thread count.

BLAS would split the n-long reductions of Aᵀ Q over threads in a thread-count
dependent way; these kernels use the same fixed row chunks as kernels/csr.py.
"""
import numpy as np
from numba import njit, prange

from .prefetch import prefetch_row
from .reduce import sum_chunk_partials
from .simd import (GRAM_TILE_HEIGHT, GRAM_TILE_WIDTH, LANES, PRODUCT_TILE_HEIGHT, PRODUCT_TILE_WIDTHS,
                   add_product_tile, add_scaled_and_lane_sums4, lane_sums4, weighted_gram_tile)


# Independent partial sums per row: one running sum waits out the add latency at every term
# (IEEE order forbids vectorising it without fastmath), which left the forward pass at half the
# transposed pass's speed (dense 10⁵ × 256, 2 threads: 9.5 ms against 5.7 ms with four sums).
ROW_DOT_LANES = 4


@njit(cache=True)
def row_dot(row, x):
    """Σ_j row[j]·x[j] as four partial sums c_k over j ≡ k (mod 4), each in increasing j, then
    (c₀ + c₁) + (c₂ + c₃): a fixed order, so every pass that sums a row with it has the same bits.
    The four sums run as one 4-wide vector (``lane_sums4``: the scalar loop stayed scalar, as Numba
    leaves the SLP vectoriser off)."""
    full = x.shape[0] - x.shape[0] % ROW_DOT_LANES
    c0, c1, c2, c3 = lane_sums4(row, x, full)
    return row_dot_total(row, x, full, c0, c1, c2, c3)


@njit(cache=True, inline="always")
def row_dot_total(row, x, full, c0, c1, c2, c3):
    """``row_dot`` from its four lane sums over j < full: the last d − full terms added to c₀, c₁, c₂, then
    (c₀ + c₁) + (c₂ + c₃)."""
    d = x.shape[0]
    if full < d:
        c0 += row[full] * x[full]
    if full + 1 < d:
        c1 += row[full + 1] * x[full + 1]
    if full + 2 < d:
        c2 += row[full + 2] * x[full + 2]
    return (c0 + c1) + (c2 + c3)


@njit(cache=True, inline="always")
def add_row_and_row_dot(acc, previous, w, row, x):
    """acc[j] += previous[j]·w for every j, and returns ``row_dot(row, x)``, from one loop along both rows
    (``add_scaled_and_lane_sums4``): the dot's chain of adds runs beside the update's independent ones."""
    d = x.shape[0]
    full = d - d % ROW_DOT_LANES
    c0, c1, c2, c3 = add_scaled_and_lane_sums4(acc, previous, w, row, x, full)
    for j in range(full, d):
        acc[j] += previous[j] * w
    return row_dot_total(row, x, full, c0, c1, c2, c3)


@njit(parallel=True, cache=True)
def dense_matvec(A, x, out):
    """out[i] = Σ_j A[i, j]·x[j] (u = Ax) summed by ``row_dot``; one read of A, one thread per row."""
    n = A.shape[0]
    for i in prange(n):
        out[i] = row_dot(A[i], x)


# The one-load three-column loop of ``chunk_rmatmat`` pays over the general loop where the rows are in cache
# (288 × 48: 14 → 7 µs; there ``tiled_chunk_rmatmat``'s register tiles now run it in 2–3 µs, and the small problems
# take those). Streaming wide rows from memory, the general loop (one column at a time
# over the row, which stays in L1) is faster: dense 10⁵ × 256, k = 3, best of 11, same process: 6.65 → 5.86 ms
# on two threads, 11.45 → 9.62 ms on one; 10⁵·256/d × d at d = 128: 12.6 → 11.1 ms on one thread; at d ≤ 64
# the one-load loop is as fast or faster. So the passes over all of C (``dense_rmatmat``, ``dense_rmatmats``)
# take the one-load loop only up to this width.
ONE_LOAD_MAX_WIDTH = 64


@njit(cache=True)
def chunk_rmatmat(A, Q, start, stop, acc, flat, one_load):
    """flat[j·k + t] = Σ_{i ∈ [start, stop)} A[i, j]·Q[i, t]: one row chunk's partial of Aᵀ Q.

    Accumulates in ``acc`` (k × d, overwritten) so the inner loop runs along a row of A
    (contiguous, vectorised), then transposes it into ``flat`` (d·k) once. ``one_load`` (k = 3 or 4): the
    columns updated from one load of each row entry (``ONE_LOAD_MAX_WIDTH``); otherwise four rows at a time
    (``add_four_rows_terms``); either way each acc[t, j] gets the rows' terms in row order, so the bits are the
    same.
    """
    k, d = acc.shape
    acc[:] = 0.0
    if k == 4 and one_load:
        # A fit's two columns beside ∇L(0)'s two (a start's one pass where two ran).
        acc0, acc1, acc2, acc3 = acc[0], acc[1], acc[2], acc[3]
        for i in range(start, stop):
            row = A[i]
            q0, q1, q2, q3 = Q[i, 0], Q[i, 1], Q[i, 2], Q[i, 3]
            for j in range(d):
                r = row[j]
                acc0[j] += r * q0
                acc1[j] += r * q1
                acc2[j] += r * q2
                acc3[j] += r * q3
    elif k == 3 and one_load:
        # The model's three columns updated from one load of each row entry (288 × 48: 14 → 7 µs).
        acc0, acc1, acc2 = acc[0], acc[1], acc[2]
        for i in range(start, stop):
            row = A[i]
            q0, q1, q2 = Q[i, 0], Q[i, 1], Q[i, 2]
            for j in range(d):
                r = row[j]
                acc0[j] += r * q0
                acc1[j] += r * q1
                acc2[j] += r * q2
    else:
        i = start
        while i + 4 <= stop:
            add_four_rows_terms(A, Q, i, acc)
            i += 4
        for i in range(i, stop):
            add_row_terms(A[i], Q, i, acc)
    for j in range(d):
        for t in range(k):
            flat[j * k + t] = acc[t, j]


# Rows that one sweep of ``tiled_chunk_rmatmat`` holds in cache while each run of columns is read from them: 256 rows
# of d ≤ 64 are ≤ 128 KB (L2). Measured, one thread, against ``chunk_rmatmat``'s one-load loops: 288 × 48, k = 3:
# 3.3 → 2.0 µs (64 rows: 2.2, all rows at once: 2.6); 4096 × 64, k = 3: 67.6 → 48.7 µs.
TILE_ROWS = 256


@njit(cache=True)
def tiled_chunk_rmatmat(A, Q, start, stop, acc):
    """acc[t, j] = Σ_{i ∈ [start, stop)} A[i, j]·Q[i, t] (k × d, overwritten): ``chunk_rmatmat``'s partial (transposed),
    by register tiles (``add_product_tile``): per block of TILE_ROWS rows, Q's columns by PRODUCT_TILE_HEIGHT and A's
    by runs of PRODUCT_TILE_WIDTHS, each tile's sums continued in row order from 0.0, so the bits are
    ``chunk_rmatmat``'s. For rows in cache (a small problem's C): each block is read once per run of columns, which
    from memory ran slower than ``chunk_rmatmat`` (dense 10⁵ × 64, k = 3, two threads: 1.4 against 2.7 ms)."""
    k, d = acc.shape
    acc[:] = 0.0
    for block in range(start, stop, TILE_ROWS):
        block_stop = min(stop, block + TILE_ROWS)
        for t0 in range(0, k, PRODUCT_TILE_HEIGHT):
            height = min(PRODUCT_TILE_HEIGHT, k - t0)
            l0 = 0
            for width in PRODUCT_TILE_WIDTHS:
                while l0 + width <= d:
                    add_product_tile(A, Q, block, block_stop, t0, height, l0, width, acc)
                    l0 += width


@njit(cache=True)
def add_four_rows_terms(A, Q, i, acc):
    """``add_row_terms`` of rows i, …, i + 3, one after the other into each acc[t, j] held in a register: the same
    terms in the same order (the same bits), a quarter of the loads and stores of acc (softmax_relu's
    Cᵀ Q, 288 × 48 rows, k = 19: ~45 → ~30 µs; k = 2: 19 → 8 µs; one thread)."""
    r0, r1, r2, r3 = A[i], A[i + 1], A[i + 2], A[i + 3]
    for t in range(acc.shape[0]):
        q0, q1, q2, q3 = Q[i, t], Q[i + 1, t], Q[i + 2, t], Q[i + 3, t]
        acc_t = acc[t]
        for j in range(r0.shape[0]):
            total = acc_t[j]
            total += r0[j] * q0
            total += r1[j] * q1
            total += r2[j] * q2
            total += r3[j] * q3
            acc_t[j] = total


@njit(cache=True)
def add_row_terms(row, Q, i, acc):
    """acc[t, j] += row[j]·Q[i, t] for every t and j: row i's terms of Aᵀ Q, one column of Q at a time along
    the row (which stays in L1)."""
    for t in range(acc.shape[0]):
        qt = Q[i, t]
        acc_t = acc[t]
        for j in range(row.shape[0]):
            acc_t[j] += row[j] * qt


@njit(cache=True)
def add_row_squares(row, acc):
    """acc[j] += row[j]² (in float64) for every j: one row's terms of the column squares Σ_i A[i, j]²."""
    for j in range(row.shape[0]):
        value = np.float64(row[j])
        acc[j] += value * value


@njit(parallel=True, cache=True)
def dense_rmatmat(A, Q, chunk_rows, out):
    """out[j, :] = Σ_i A[i, j]·Q[i, :] (out = Aᵀ Q); fixed row chunks (``chunk_rmatmat``), partials
    summed in chunk order."""
    n, k = Q.shape
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    one_load = d <= ONE_LOAD_MAX_WIDTH
    partial = np.zeros((n_chunks, d * k))
    for c in prange(n_chunks):
        chunk_rmatmat(A, Q, c * chunk_rows, min(n, (c + 1) * chunk_rows), np.empty((k, d)), partial[c], one_load)
    sum_chunk_partials(partial, out)


@njit(cache=True)
def sandwich_vector_chunk(A, beta, v, start, stop, forward, acc):
    """forward[i] = row_dot(A[i], v) and acc += Σ_i A[i]·(β_i·forward[i]) over the rows i ∈ [start, stop), in row
    order: one row chunk of ``dense_sandwich_vector`` (and of ``dense_sandwich_vectors``, whose bits are its).
    Row i's dot runs in one loop with row i − 1's update (``add_row_and_row_dot``)."""
    previous = A[start]
    t = row_dot(previous, v)
    forward[start] = t
    w = beta[start] * t
    for i in range(start + 1, stop):
        row = A[i]
        t = add_row_and_row_dot(acc, previous, w, row, v)
        forward[i] = t
        w = beta[i] * t
        previous = row
    for j in range(A.shape[1]):
        acc[j] += previous[j] * w


@njit(parallel=True, cache=True)
def dense_sandwich_vector(A, beta, v, chunk_rows, forward, out):
    """forward = A v and out = Aᵀ(β ⊙ forward) in one read of A: each row is read for its dot
    (``row_dot``) and then, from cache, for its update; per fixed row chunk a partial, summed in chunk
    order. The sums and their order are dense_matvec's and dense_rmatmat's (k = 1), so the bits are
    those of the two passes (a Hessian-vector product of CG at half their memory traffic). Row i's dot
    runs in one loop with row i − 1's update (``add_row_and_row_dot``), the partial still getting its terms
    in row order (dense 10⁵ × 256, 2 threads, best of 25 on a loaded machine: 16.0 → 14.5 ms, median
    19.5 → 17.6 ms, against the rows in pairs, a dot and then the pair's update)."""
    n, d = A.shape
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d))
    for c in prange(n_chunks):
        start = c * chunk_rows
        sandwich_vector_chunk(A, beta, v, start, min(n, start + chunk_rows), forward, partial[c])
    sum_chunk_partials(partial, out.reshape((d, 1)))


@njit(parallel=True, cache=True)
def dense_sandwich_vectors(A, betas, V, chunk_rows, forward, out):
    """forward[s] = A V[s] and out[s] = Aᵀ(βₛ ⊙ forward[s]) for every s (betas a typed list of length-n arrays,
    V r × d, forward r × n, out r × d): ``dense_sandwich_vector``'s sums in its order (the same chunks, summed in
    chunk order), so each s has its bits. Many problems' Hessian-vector products in one parallel region; the
    threads take runs of consecutive problems of one chunk, so a chunk of A is read from memory once and then
    from cache (at 4096 × 64, one chunk, the problems split over the threads). Against a forward pass for all,
    βₛ ⊙ C vₛ and a transposed pass for all: half the reads of A and no n-vector βₛ ⊙ C vₛ written and read."""
    n, d = A.shape
    r = V.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((r, n_chunks, d))
    for task in prange(n_chunks * r):
        c, s = task // r, task % r
        start = c * chunk_rows
        sandwich_vector_chunk(A, betas[s], V[s], start, min(n, start + chunk_rows), forward[s], partial[s, c])
    for s in range(r):
        sum_chunk_partials(partial[s], out[s].reshape((d, 1)))


@njit(parallel=True, cache=True)
def dense_column_squares(A, chunk_rows, out):
    """out[j] = Σ_i A[i, j]² (float64): per fixed row chunk a partial (the inner loop along a row,
    vectorised), partials summed in chunk order (``sum_chunk_partials``): deterministic in the thread count."""
    n, d = A.shape
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d))
    for c in prange(n_chunks):
        acc = partial[c]
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            add_row_squares(A[i], acc)
    sum_chunk_partials(partial, out.reshape((d, 1)))


@njit(parallel=True, cache=True)
def dense_column_squares_and_rmatmat(A, Q, chunk_rows, squares, out):
    """squares[j] = Σ_i A[i, j]² and out = Aᵀ Q in one read of A, with the bits of ``dense_column_squares``
    and ``dense_rmatmat``: the same row chunks, each row's terms added to both chunk partials while it is in
    L1 (``add_row_squares``, ``add_row_terms``: every partial gets its terms in row order), partials summed
    in chunk order. (A solve's first transposed pass also gives the column squares that check C's entries:
    ``DenseMatrix.check_on_first_pass``.)"""
    n, k = Q.shape
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    square_partial = np.zeros((n_chunks, d))
    partial = np.zeros((n_chunks, d * k))
    for c in prange(n_chunks):
        acc = np.zeros((k, d))
        square_acc = square_partial[c]
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            row = A[i]
            add_row_squares(row, square_acc)
            add_row_terms(row, Q, i, acc)
        flat = partial[c]
        for j in range(d):
            for t in range(k):
                flat[j * k + t] = acc[t, j]
    sum_chunk_partials(square_partial, squares.reshape((d, 1)))
    sum_chunk_partials(partial, out)


@njit(parallel=True, cache=True)
def dense_matvecs(A, X, rows_per_task, out):
    """out[t, :] = A X[:, t] for every column t of X (d × r; out is r × n): out[t, i] = Σ_j A[i, j]·X[j, t]
    summed in ``row_dot``'s order (lane j mod 4, then (c₀ + c₁) + (c₂ + c₃)), so each out[t] has
    dense_matvec(A, X[:, t])'s bits; one read of A for r vectors, rows in tasks of ``rows_per_task``."""
    n, d = A.shape
    r = X.shape[1]
    n_tasks = (n + rows_per_task - 1) // rows_per_task
    for task in prange(n_tasks):
        acc = np.empty((ROW_DOT_LANES, r))
        for i in range(task * rows_per_task, min(n, (task + 1) * rows_per_task)):
            acc[:] = 0.0
            row = A[i]
            for j in range(d):
                a = row[j]
                x = X[j]
                lane = acc[j % ROW_DOT_LANES]
                for t in range(r):
                    lane[t] += a * x[t]
            for t in range(r):
                out[t, i] = (acc[0, t] + acc[1, t]) + (acc[2, t] + acc[3, t])


@njit(parallel=True, cache=True)
def dense_rmatmats(A, Qs, chunk_rows, out):
    """out[s] = Aᵀ Qs[s] for every s (Qs a typed list of n × k arrays, out s × d × k): dense_rmatmat's sums
    in its order (the same chunks, summed in chunk order), so each out[s] has dense_rmatmat(A, Qs[s])'s
    bits. Each chunk of A is read once from memory and then from cache per s: the threads take runs of
    consecutive sets of one chunk (a C of one chunk, n ≤ 4096, still splits over the threads by set)."""
    n, d = A.shape
    n_sets = len(Qs)
    k = out.shape[2]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    one_load = d <= ONE_LOAD_MAX_WIDTH
    partial = np.zeros((n_sets, n_chunks, d * k))
    for task in prange(n_chunks * n_sets):
        c, s = task // n_sets, task % n_sets
        chunk_rmatmat(A, Qs[s], c * chunk_rows, min(n, (c + 1) * chunk_rows), np.empty((k, d)), partial[s, c],
                      one_load)
    for s in range(n_sets):
        sum_chunk_partials(partial[s], out[s])


# Where ``weighted_gram_upper`` takes its tiles, against the two BLAS SYRKs of ``signed_scaled_rows``' copy
# (one thread, this AMD EPYC, AVX-512): 288 × 48, 15 µs against 31–34; 512 × 64, 50 against 87; 16000 × 64, 1.99
# against 2.93 ms; 3000 × 128, 1.24 against 1.35 ms; past that width BLAS's cache blocking wins (1000 × 256: 1.58
# against 1.52 ms). Every tile reads all n rows, so the count of entries is bounded too (measured to 10⁶).
GRAM_TILES_MAX_WIDTH = 128
GRAM_TILES_MAX_ENTRIES = 2**20


@njit(cache=True)
def gram_tiles_width(n, d):
    """The padded width (d rounded up to whole tiles) of A for ``weighted_gram_upper``, or 0 where the two
    SYRKs are the faster way to Aᵀ diag(w) A (``GRAM_TILES_MAX_WIDTH``, ``GRAM_TILES_MAX_ENTRIES``)."""
    width = (d + GRAM_TILE_WIDTH - 1) // GRAM_TILE_WIDTH * GRAM_TILE_WIDTH
    return width if width <= GRAM_TILES_MAX_WIDTH and n * width <= GRAM_TILES_MAX_ENTRIES else 0


# A remainder of at most this many columns past d's last whole tile width is formed by tiles down its columns
# (``weighted_gram_upper``).
GRAM_REMAINDER_BY_COLUMNS = 3

# ``weighted_gram_upper`` takes A in blocks of rows of about this many bytes, each block through every tile while it
# stays in the L1 cache (48 KiB on this machine's Intel Xeon, 32 KiB on the AMD EPYC, beside out's tiles). One pass of
# every tile over all of A read it from L2: 288 × 48, 13.6 → 10.2 µs; 288 × 64, 24.8 → 19.2 (one thread, the Xeon;
# blocks of 16–40 KiB within the runs' noise of each other).
GRAM_BLOCK_BYTES = 24 * 1024


@njit(cache=True)
def weighted_gram_upper(A, weights, d, out):
    """out[j, l] = Σᵢ A[i, j]·(wᵢ·A[i, l]) for j ≤ l < d, each sum in increasing i by fused multiply-adds
    (``kernels.simd.weighted_gram_tile``; weights of any sign; other entries of out are left undefined). A: n × width,
    the matrix's d columns then zeros to a whole number of tiles (``gram_tiles_width``); out: width × width. Serial:
    one small problem per thread.

    The upper triangle by tiles of up to GRAM_TILE_HEIGHT rows × GRAM_TILE_WIDTH columns from the diagonal
    rightwards: no copy of A scaled by √|w| split by sign (``signed_scaled_rows``) and one pass per tile with its
    accumulators in registers, where BLAS's SYRK packs both operands for any shape. Past the last whole tile width
    the tiles are no wider or taller than the columns left: 4 wide for up to 4 of them (half a vector's work), and
    up to GRAM_REMAINDER_BY_COLUMNS of them go the other way, as rows l of out against 8 columns j < l at a time
    (one broadcast and one product per row of A and column l, where an 8-wide tile of them makes eight), then
    mirrored. Every entry keeps its sum and its products (of the same two numbers), so the bits do not depend on
    the tiling. Measured (one thread, 288 rows, d = 32 … 64): 0.96 of the whole-tile time on average; d = 33
    11.2 → 9.6 µs, 34 10.8 → 9.0, 36 10.8 → 9.6, 41 16.4 → 14.3, 49 20.2 → 17.4; remainders of 5–7 as before.
    The rows go in blocks of about GRAM_BLOCK_BYTES, each through every tile (a tile's sums continued from block to
    block, in increasing i: the bits of one pass), so that the tiles read A from L1."""
    full = d - d % GRAM_TILE_WIDTH
    by_columns = 0 < d - full <= GRAM_REMAINDER_BY_COLUMNS
    stop = full if by_columns else d  # the columns of the tiles along rows
    n = A.shape[0]
    block = max(GRAM_BLOCK_BYTES // (8 * A.shape[1]), 1)
    for start in range(0, max(n, 1), block):  # n = 0: one empty block, whose tiles write their zero sums
        end = min(start + block, n)
        for j0 in range(0, stop, GRAM_TILE_HEIGHT):
            height = min(GRAM_TILE_HEIGHT, stop - j0)
            for l0 in range(j0 - j0 % GRAM_TILE_WIDTH, stop, GRAM_TILE_WIDTH):
                width = LANES if stop - l0 <= LANES else GRAM_TILE_WIDTH
                weighted_gram_tile(A, weights, start, end, j0, l0, height, width, False, out)
        if by_columns:
            for l0 in range(full, d, GRAM_TILE_HEIGHT):
                height = min(GRAM_TILE_HEIGHT, d - l0)
                for j0 in range(0, full, GRAM_TILE_WIDTH):
                    weighted_gram_tile(A, weights, start, end, l0, j0, height, GRAM_TILE_WIDTH, True, out)
                weighted_gram_tile(A, weights, start, end, l0, full, height, LANES, False, out)  # j, l ≥ full
    if by_columns:
        for l in range(full, d):
            for j in range(full):
                out[j, l] = out[l, j]


@njit(nogil=True, cache=True)
def signed_scaled_rows(A, rows, extra, weights, shift, column_factors, out):
    """Gather [(A[rows[t]] − shift) ⊙ column_factors, extra[t]]·√|weights[t]| into out split by sign: returns
    (p, q), the counts of positive and negative weights.

    ``extra`` (len(rows) × e, e ≥ 0) appends e columns to each gathered row (a fit's intercept and
    target: its normal equations in the same SYRK, without first copying the rows into an augmented
    array). ``shift`` and ``column_factors`` (length d) centre and scale the rows (a fit's sampled rows,
    gathered into float32 ``out`` for a SYRK at twice the speed: ``fastnewton.start``); with zeros and ones
    each entry is A[i, j]·√|w| exactly. out[:p] holds the rows of positive weight, out[p:p + q] those of
    negative weight, each part in the order of ``rows``; zero weights are dropped. Then
    Σ_t weights[t]·a_t a_tᵀ = out[:p]ᵀ out[:p] − out[p:p+q]ᵀ out[p:p+q]: two SYRKs on
    contiguous blocks, no masked copies (measured, one thread, n = 10⁵, d = 256: 72 ms
    with NumPy boolean masks, about the cost of one plain scaled copy with this kernel).
    Serial and GIL-free: the sandwich runs one row block per Python thread.
    """
    d = A.shape[1]
    e = extra.shape[1]
    p = 0
    for t in range(rows.shape[0]):
        if weights[t] > 0.0:
            p += 1
    positive = 0
    negative = p
    for t in range(rows.shape[0]):
        # Scattered rows (a sample) wait on memory row after row; the next one is fetched while this one is
        # copied (``kernels.prefetch``). Adjacent rows (the full sandwich's) stream without help.
        if t + 1 < rows.shape[0] and rows[t + 1] != rows[t] + 1:
            prefetch_row(A, rows[t + 1])
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
            target[j] = ((row[j] - shift[j]) * column_factors[j]) * root
        for j in range(e):
            target[d + j] = extra[t, j] * root
    return p, negative - p
