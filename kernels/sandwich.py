"""The sparse sandwich Cᵀ diag(β) C of a CSR matrix in O(Σᵢ nnzᵢ²) work."""
import numpy as np
from numba import njit, prange

ONE = np.uintp(1)
TWO = np.uintp(2)


@njit(inline="always")
def _add_pair(acc, width, ja, jb, value):
    """acc[min, max] += value for the pair of columns (ja, jb); twice on the diagonal (a pair of
    duplicate entries stands for both (ja, jb) and (jb, ja)). Selects, not branches: unsorted rows
    and duplicates would mispredict them."""
    acc[min(ja, jb) * width + max(ja, jb)] += value + value if ja == jb else value


@njit(parallel=True, cache=True)
def csr_sandwich_rows(indptr, indices, data, rows, weights, chunk_rows, out):
    """out = Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]}: the sandwich over listed rows (e.g. a sampled D̃).

    Only the upper triangle is accumulated: for each listed row, every pair of stored
    entries a ≤ b adds w·C_ia·C_ib to out[min(j_a, j_b), max(j_a, j_b)] (twice when
    j_a = j_b for a ≠ b, i.e. duplicate entries): O(Σ_t nnz²) work. Fixed chunks of
    ``chunk_rows`` list entries each own a d × d partial, summed in chunk order; then mirrored.

    Entries are taken two at a time (a register tile): each b after the pair updates both
    a's, which halves the loads of (j_b, C_ib) and the inner loops with a data-dependent
    exit. Positions are unsigned (no wraparound tests). Each accumulator slot receives its
    updates in a fixed order. Against the earlier kernel (lower triangle, signed positions,
    one entry at a time; bench/passes.py, one thread): 2.0 → 1.3 ns per pair update on
    10-entry rows at d = 256, and 5.7 → 2.0 on Zipf rows at d = 1024, whose long rows made
    the lower triangle's updates stride down a column of the 8 MB partial.
    """
    n = rows.shape[0]
    d = out.shape[0]
    width = np.uintp(d)
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d * d))
    for c in prange(n_chunks):
        acc = partial[c]
        for t in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            i = rows[t]
            bi = weights[t]
            if bi == 0.0:
                continue
            a = np.uintp(indptr[i])
            end = np.uintp(indptr[i + 1])
            while a + TWO <= end:
                a1 = a + ONE
                j0 = np.uintp(indices[a])
                j1 = np.uintp(indices[a1])
                d0 = data[a]
                d1 = data[a1]
                v0 = bi * d0
                v1 = bi * d1
                acc[j0 * width + j0] += v0 * d0
                _add_pair(acc, width, j0, j1, v0 * d1)
                acc[j1 * width + j1] += v1 * d1
                for b in range(a1 + ONE, end):
                    jb = np.uintp(indices[b])
                    db = data[b]
                    _add_pair(acc, width, j0, jb, v0 * db)
                    _add_pair(acc, width, j1, jb, v1 * db)
                a += TWO
            if a < end:
                ja = np.uintp(indices[a])
                acc[ja * width + ja] += bi * data[a] * data[a]
    for j in prange(d):
        for l in range(j, d):
            total = 0.0
            for c in range(n_chunks):
                total += partial[c, j * d + l]
            out[j, l] = total
            out[l, j] = total


@njit(cache=True)
def csr_sandwich(indptr, indices, data, beta, chunk_rows, out):
    """out = Σ_i β_i C_iᵀ C_i = Cᵀ diag(β) C (d × d, symmetric, β of any sign): every row listed."""
    csr_sandwich_rows(indptr, indices, data, np.arange(beta.shape[0]), beta, chunk_rows, out)


@njit(parallel=True, cache=True)
def csr_sandwich_many(indptr, indices, data, weights, chunk_rows, out):
    """out[t] = Cᵀ diag(weights[:, t]) C for every column t of the n × q ``weights``, in one read of C.

    csr_sandwich_rows over all rows, for q weight vectors at once: the same chunks, pairs and
    register tile, with each update applied to the q problems' accumulators side by side (slot-major
    partials, chunk × d·d × q, the q problems contiguous). Every slot of problem t receives the
    updates of csr_sandwich(weights[:, t]) in the same order, so each out[t] has its bits (a row
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
