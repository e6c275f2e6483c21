"""The input-matrix seam: the operations the driver needs from C, once per storage format.

The driver never branches on the format again: it calls ``matvec`` (u = Cx),
``rmatmat`` (Cᵀ[q, U] in one pass) and ``sandwich`` (Cᵀ diag(β) C).
"""
import numpy as np
import scipy.sparse as sp

from .chunking import chunk_rows, sandwich_chunk_rows
from .kernels.csr import csr_matvec, csr_rmatmat
from .kernels.dense import dense_matvec, dense_rmatmat
from .kernels.sandwich import csr_sandwich

# Rows per GEMM block of the dense sandwich: bounds the scaled copy to
# DENSE_SANDWICH_BLOCK × d while keeping each GEMM large enough for full BLAS speed.
DENSE_SANDWICH_BLOCK = 8192


class DenseMatrix:
    """Row-major dense C (float32 or float64); passes in Numba, the sandwich by blocked BLAS GEMM."""

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
        out = np.empty((self.d, Q.shape[1]))
        dense_rmatmat(self.array, Q, self._chunk_rows, out)
        return out

    def sandwich(self, beta):
        out = np.zeros((self.d, self.d))
        for start in range(0, self.n, DENSE_SANDWICH_BLOCK):
            block = np.asarray(self.array[start:start + DENSE_SANDWICH_BLOCK], dtype=np.float64)
            out += block.T @ (block * beta[start:start + DENSE_SANDWICH_BLOCK, None])
        # GEMM rounds its two triangles independently; the Hessian must be exactly symmetric.
        return 0.5 * (out + out.T)

    def rows(self, index):
        """C[index] as a dense float64 array."""
        return np.asarray(self.array[index], dtype=np.float64)


class CSRMatrix:
    """CSR C with int32/int64 indices and float32/float64 values; every operation is a Numba kernel."""

    format = "csr"

    def __init__(self, indptr, indices, data, shape):
        self.indptr, self.indices, self.data = indptr, indices, data
        self.n, self.d = shape
        self.nnz = int(indptr[-1])
        self.nbytes = indptr.nbytes + indices.nbytes + data.nbytes
        self._chunk_rows = chunk_rows(self.n)
        self._sandwich_chunk_rows = sandwich_chunk_rows(self.n, self.d)

    def matvec(self, x):
        out = np.empty(self.n)
        csr_matvec(self.indptr, self.indices, self.data, x, out)
        return out

    def rmatmat(self, Q):
        out = np.empty((self.d, Q.shape[1]))
        csr_rmatmat(self.indptr, self.indices, self.data, Q, self._chunk_rows, out)
        return out

    def sandwich(self, beta):
        out = np.empty((self.d, self.d))
        csr_sandwich(self.indptr, self.indices, self.data, beta, self._sandwich_chunk_rows, out)
        return out

    def scipy(self):
        """A SciPy CSR view of the same arrays (no copy)."""
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=(self.n, self.d), copy=False)

    def rows(self, index):
        """C[index] as a dense float64 array."""
        return self.scipy()[index].toarray().astype(np.float64, copy=False)
