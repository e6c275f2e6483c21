"""The sparse sandwich Cᵀ diag(β) C of a CSR matrix in O(Σᵢ nnzᵢ²) work."""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def csr_sandwich_rows(indptr, indices, data, rows, weights, chunk_rows, out):
    """out = Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]}: the sandwich over listed rows (e.g. a sampled D̃).

    Only the lower triangle is accumulated: for each listed row, every pair of stored
    entries a ≤ b adds w·C_ia·C_ib to out[max(j_a, j_b), min(j_a, j_b)] (twice when
    j_a = j_b for a ≠ b, i.e. duplicate entries): O(Σ_t nnz²) work. Fixed chunks of
    ``chunk_rows`` list entries each own a d × d partial, summed in chunk order; then mirrored.
    """
    n = rows.shape[0]
    d = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    partial = np.zeros((n_chunks, d, d))
    for c in prange(n_chunks):
        acc = partial[c]
        for t in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            i = rows[t]
            bi = weights[t]
            if bi == 0.0:
                continue
            start = indptr[i]
            end = indptr[i + 1]
            for a in range(start, end):
                ja = indices[a]
                va = bi * data[a]
                acc[ja, ja] += va * data[a]
                for b in range(a + 1, end):
                    jb = indices[b]
                    vab = va * data[b]
                    if ja > jb:
                        acc[ja, jb] += vab
                    elif jb > ja:
                        acc[jb, ja] += vab
                    else:
                        acc[ja, ja] += 2.0 * vab
    for j in prange(d):
        for l in range(j + 1):
            total = 0.0
            for c in range(n_chunks):
                total += partial[c, j, l]
            out[j, l] = total
            out[l, j] = total


@njit(cache=True)
def csr_sandwich(indptr, indices, data, beta, chunk_rows, out):
    """out = Σ_i β_i C_iᵀ C_i = Cᵀ diag(β) C (d × d, symmetric, β of any sign): every row listed."""
    csr_sandwich_rows(indptr, indices, data, np.arange(beta.shape[0]), beta, chunk_rows, out)
