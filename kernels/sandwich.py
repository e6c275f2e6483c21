"""The sparse sandwich Cᵀ diag(β) C of a CSR matrix in O(Σᵢ nnzᵢ²) work."""
import numpy as np
from numba import njit, prange

ONE = np.uintp(1)


@njit(parallel=True, cache=True)
def csr_sandwich_rows(indptr, indices, data, rows, weights, chunk_rows, out):
    """out = Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]}: the sandwich over listed rows (e.g. a sampled D̃).

    Only the upper triangle is accumulated: for each listed row, every pair of stored
    entries a ≤ b adds w·C_ia·C_ib to out[min(j_a, j_b), max(j_a, j_b)] (twice when
    j_a = j_b for a ≠ b, i.e. duplicate entries): O(Σ_t nnz²) work. Fixed chunks of
    ``chunk_rows`` list entries each own a d × d partial, summed in chunk order; then mirrored.

    Why this shape (measured, bench/passes.py): the row min(j_a, j_b) of the partial is
    fixed while b runs along a sorted row, so the updates walk one 8·d-byte row of the
    partial instead of striding down a column; min/max and the ×2 are selects, not
    branches (unsorted rows and duplicates would mispredict them); positions are
    unsigned, which drops Numba's negative-index test from every load and store.
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
            end = np.uintp(indptr[i + 1])
            for a in range(np.uintp(indptr[i]), end):
                ja = np.uintp(indices[a])
                va = bi * data[a]
                acc[ja * width + ja] += va * data[a]
                for b in range(a + ONE, end):
                    jb = np.uintp(indices[b])
                    vab = va * data[b]
                    acc[min(ja, jb) * width + max(ja, jb)] += vab + vab if ja == jb else vab
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
