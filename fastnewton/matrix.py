"""The input-matrix seam: the operations the driver needs from C, once per storage format.

The driver never branches on the format again: it calls ``matvec`` (u = Cx),
``rmatmat`` (Cᵀ[q, U] in one pass) and ``sandwich`` (Cᵀ diag(β) C).
"""
import numba
import numpy as np
import scipy.sparse as sp

from .chunking import chunk_rows, sandwich_chunk_rows
from .kernels.csr import csr_matmat, csr_matvec, csr_rmatmat, csr_rmatmat3, csr_rmatvec
from .kernels.dense import dense_matvec, dense_rmatmat
from .kernels.sandwich import csr_sandwich, csr_sandwich_rows
from .kernels.sketch import csr_embed, dense_embed
from .threads import blas_threads, map_single_threaded_blas

# Rows per block of the dense sandwich (and of C Z): bounds the scaled copy to
# DENSE_SANDWICH_BLOCK × d while keeping each SYRK large enough for full BLAS speed.
DENSE_SANDWICH_BLOCK = 8192
# False: the sandwich's SYRKs run one per thread on single-threaded BLAS; True: one after the
# other on multi-threaded BLAS (measured slower on 2 cores; kept for bench/dense_phases.py).
DENSE_SANDWICH_BLAS_THREADS = False


def _sum_in_order(partials, d):
    total = np.zeros((d, d))
    for partial in partials:
        total += partial
    return total


class DenseMatrix:
    """Row-major dense C (float32 or float64); passes in Numba, the sandwich by blocked BLAS SYRK."""

    format = "dense"

    def __init__(self, array):
        self.array = array
        self.n, self.d = array.shape
        self.nnz = self.n * self.d
        self.nbytes = array.nbytes
        self._chunk_rows = chunk_rows(self.n)

    def matvec(self, x):
        out = np.empty(self.n)
        dense_matvec(self.array, x, out)
        return out

    def rmatmat(self, Q):
        Q = np.ascontiguousarray(Q)
        out = np.empty((self.d, Q.shape[1]))
        dense_rmatmat(self.array, Q, self._chunk_rows, out)
        return out

    def _block_slices(self, count):
        return [slice(start, min(count, start + DENSE_SANDWICH_BLOCK))
                for start in range(0, count, DENSE_SANDWICH_BLOCK)]

    def _block(self, part):
        """C's rows in ``part`` as float64 (a view when C is float64)."""
        return self.rows(part)

    def _syrk_sandwich(self, weights, rows=None):
        """Σᵢ wᵢ cᵢcᵢᵀ (over C's rows, or C[rows]) by SYRK: per fixed row block, B₊ᵀB₊ − B₋ᵀB₋ with
        B± the block's rows of positive/negative weight scaled by √|w|; block results summed in block order.

        SYRK forms one triangle, half the flops of a GEMM; splitting the rows by sign keeps each
        product positive semidefinite without doubling the work. The blocks run on the solve's
        threads, each SYRK on one BLAS thread (``map_single_threaded_blas``), so the sum, and its
        bits, do not depend on the thread count. One multi-threaded SYRK per block instead
        (``blas_threads``; bench/dense_phases.py --blas-threads) leaves OpenBLAS's workers spinning
        into the Numba pass that follows (measured, 2 threads, n = 10⁵, d = 256: u = Cx right after
        the sandwich 18.3 ms against 10.0 ms), so it stays a bench toggle.
        """
        d = self.d

        def block_sandwich(part):
            block = self.array[part] if rows is None else self.array[rows[part]]
            w = weights[part]
            root = np.sqrt(np.abs(w))
            out = np.zeros((d, d))
            for sign, kept in ((1.0, w > 0.0), (-1.0, w < 0.0)):
                if kept.any():
                    scaled = np.asarray(block[kept], dtype=np.float64)
                    scaled *= root[kept, None]
                    # NumPy runs scaledᵀ·scaled as a SYRK (one triangle, mirrored: exactly symmetric)
                    # and releases the GIL, so the blocks run in parallel; SciPy's dsyrk wrapper
                    # holds the GIL (measured: 2 threads no faster than 1).
                    if sign > 0:
                        out += scaled.T @ scaled
                    else:
                        out -= scaled.T @ scaled
            return out

        blocks = self._block_slices(weights.shape[0])
        if DENSE_SANDWICH_BLAS_THREADS:
            with blas_threads(numba.get_num_threads()):
                return _sum_in_order(map(block_sandwich, blocks), d)
        return _sum_in_order(map_single_threaded_blas(block_sandwich, blocks), d)

    def sandwich(self, beta):
        return self._syrk_sandwich(beta)

    def sandwich_rows(self, rows, weights):
        """Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]} (the sampled sandwich) by SYRK on the gathered rows."""
        return self._syrk_sandwich(weights, rows)

    def matmat(self, Z):
        """C Z for a thin d × r Z (blocked single-threaded BLAS calls, so float32 C is never copied whole)."""
        out = np.empty((self.n, Z.shape[1]))

        def block_product(part):
            out[part] = self._block(part) @ Z

        for _ in map_single_threaded_blas(block_product, self._block_slices(self.n)):
            pass
        return out

    def embed(self, scaled_signs, s, ptr, member, m):
        out = np.empty((m, self.d))
        dense_embed(self.array, scaled_signs, s, ptr, member, out)
        return out

    def rows(self, index):
        """C[index] as a dense float64 array."""
        return np.asarray(self.array[index], dtype=np.float64)

    def column_squares(self):
        """Σᵢ C[i, j]² for every column j (float64, row blocks summed in order)."""
        out = np.zeros(self.d)
        for part in self._block_slices(self.n):
            block = self._block(part)
            out += np.einsum("ij,ij->j", block, block)
        return out


class CSRMatrix:
    """CSR C with int32/int64 indices and float32/float64 values; every operation is a Numba kernel."""

    format = "csr"

    def __init__(self, indptr, indices, data, shape):
        self.indptr, self.indices, self.data = indptr, indices, data
        self.n, self.d = shape
        self.nnz = int(indptr[-1])
        self.nbytes = indptr.nbytes + indices.nbytes + data.nbytes
        self._chunk_rows = chunk_rows(self.n)
        # Pair counts in int64: nnzᵢ(nnzᵢ + 1)/2 overflows int32 from nnzᵢ = 46 341.
        row_nnz = np.diff(indptr).astype(np.int64)
        self._row_pairs = row_nnz * (row_nnz + 1) // 2
        self._sandwich_chunk_rows = sandwich_chunk_rows(self.n, self.d, int(self._row_pairs.sum()))

    def matvec(self, x):
        out = np.empty(self.n)
        csr_matvec(self.indptr, self.indices, self.data, x, out)
        return out

    def rmatmat(self, Q):
        Q = np.ascontiguousarray(Q)
        k = Q.shape[1]
        out = np.empty((self.d, k))
        if k == 1:
            csr_rmatvec(self.indptr, self.indices, self.data, Q[:, 0], self._chunk_rows, out)
        else:
            kernel = csr_rmatmat3 if k == 3 else csr_rmatmat
            kernel(self.indptr, self.indices, self.data, Q, self._chunk_rows, out)
        return out

    def sandwich(self, beta):
        out = np.empty((self.d, self.d))
        csr_sandwich(self.indptr, self.indices, self.data, beta, self._sandwich_chunk_rows, out)
        return out

    def sandwich_rows(self, rows, weights):
        """Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]} (the sampled sandwich) in O(Σ_t nnz_{rows[t]}²)."""
        out = np.empty((self.d, self.d))
        chunk = sandwich_chunk_rows(rows.shape[0], self.d, int(self._row_pairs[rows].sum()))
        csr_sandwich_rows(self.indptr, self.indices, self.data, rows, weights, chunk, out)
        return out

    def matmat(self, Z):
        """C Z for a thin dense d × r Z (one pass, one thread per row)."""
        out = np.empty((self.n, Z.shape[1]))
        csr_matmat(self.indptr, self.indices, self.data, np.ascontiguousarray(Z), out)
        return out

    def embed(self, scaled_signs, s, ptr, member, m):
        out = np.empty((m, self.d))
        csr_embed(self.indptr, self.indices, self.data, scaled_signs, s, ptr, member, out)
        return out

    def scipy(self):
        """A SciPy CSR view of the same arrays (no copy)."""
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=(self.n, self.d), copy=False)

    def rows(self, index):
        """C[index] as a dense float64 array."""
        return self.scipy()[index].toarray().astype(np.float64, copy=False)

    def column_squares(self):
        """Σᵢ C[i, j]² for every column j (one pass over the stored entries)."""
        values = self.data.astype(np.float64)
        return np.bincount(self.indices, weights=values * values, minlength=self.d)
