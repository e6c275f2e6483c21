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
