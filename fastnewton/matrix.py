"""The input-matrix seam: the operations the driver needs from C, once per storage format.

The driver never branches on the format again: it calls ``matvec`` (u = Cx),
``rmatmat`` (Cᵀ[q, U] in one pass) and ``sandwich`` (Cᵀ diag(β) C).
"""
import threading
from itertools import islice

import numba
import numpy as np
import scipy.sparse as sp

from .buffers import Recycler
from .chunking import chunk_rows, sandwich_chunk_rows
from .kernels.csr import (csr_column_squares, csr_dense_rows, csr_row_pairs, csr_matmat, csr_matvec, csr_matvecs, csr_rmatmat,
                          csr_rmatmat4, csr_rmatmats, csr_rmatvec, csr_sandwich_vector)
from .kernels.dense import (dense_column_squares, dense_column_squares_and_rmatmat, dense_matvec, dense_matvecs, dense_rmatmat, dense_rmatmats,
                             dense_sandwich_vector, dense_sandwich_vectors, signed_scaled_rows)
from .kernels.reduce import copy_columns
from .kernels.sandwich import csr_curvature_sandwich, csr_sandwich_many, csr_sandwich_rows, partials_shape
from .kernels.softmax import curvature_weights
from .kernels.sketch import csr_embed, csr_row_squares, dense_embed, dense_row_squares, dense_row_squares_and_matvec
from .threads import blas_threads, map_single_threaded_blas

# Rows per block of the dense sandwich (and of C Z): bounds the scaled copy to
# DENSE_SANDWICH_BLOCK × d while keeping each SYRK large enough for full BLAS speed.
DENSE_SANDWICH_BLOCK = 8192
# False: the sandwich's SYRKs run one per thread on single-threaded BLAS; True: one after the
# other on multi-threaded BLAS (measured slower on 2 cores; kept for bench/dense_phases.py).
DENSE_SANDWICH_BLAS_THREADS = False
# A SYRK of at least this many multiply-adds is split in two (one per thread): on one thread it takes
# ≥ ~10 ms here, past the ~3 ms a pool of threads costs to start (a 4096 × 64 block, 8·10⁶, stays whole).
SYRK_SPLIT_FMA = 6e7


def _array_list(arrays):
    """A Numba typed list of C-contiguous float64 arrays (a kernel reads the problems' arrays in place, no stacked copy)."""
    typed = numba.typed.List()
    for array in arrays:
        typed.append(np.ascontiguousarray(array, dtype=np.float64))
    return typed


def _batched(table, operation, count):
    """Whether ``count`` vectors / problems go to the batched kernel of ``operation`` (``*_BATCHED_FROM``)."""
    return count >= table[operation]


def _matvecs_one_at_a_time(matrix, X, out):
    for t in range(X.shape[1]):
        matrix.matvec(np.ascontiguousarray(X[:, t]), out=out[t])
    return out


def _sandwiches_one_at_a_time(matrix, weights):
    return [matrix.sandwich(np.ascontiguousarray(w, dtype=np.float64)) for w in weights]


def _sum_in_order(partials, d):
    total = np.zeros((d, d))
    for partial in partials:
        total += partial
    return total

# A CSR row with nnz ≥ max(DENSE_ROW_MIN_NNZ, DENSE_ROW_FRACTION·d) stored entries is sandwiched
# densely (gathered with other long rows into row blocks, one SYRK per block): its
# nnz(nnz+1)/2 sparse pair updates then cost more than its d² dense multiply-adds (measured with GEMM). Break-even
# is nnz ≈ d·√(2·t_mac/t_pair); on a 2-core AMD EPYC (one-thread GEMM ~12 GFLOP/s, so
# t_mac ≈ 0.17 ns; t_pair ≈ 1–2 ns at d = 1024) that is 0.3–0.5·d, and the whole sandwich of
# bench/matrices.bag_of_words(2·10⁵, 1024) took 213 / 109 / 108 / 168 ms at fractions
# 0.1 / 0.2 / 0.3 / 0.5. The floor keeps rows of narrow matrices sparse, where a GEMM call's
# overhead dominates.
DENSE_ROW_FRACTION = 0.3
DENSE_ROW_MIN_NNZ = 64
# The long rows of a CSR matrix are few (hundreds to thousands): split them into up to
# DENSE_ROW_BLOCKS near-equal SYRK blocks (so 2+ threads share them), of at least
# DENSE_ROW_MIN_BLOCK rows (a thinner product runs below BLAS speed, and each block's d × d
# partial costs a pass over d² entries to add). A function of the row count only.
DENSE_ROW_BLOCKS = 8
DENSE_ROW_MIN_BLOCK = 256
# ``matvecs``: rows per parallel task (each task keeps r accumulators; rows are independent, so this
# sets only the work per task, never the bits).
MATVECS_ROWS_PER_TASK = 256
# ``CSRMatrix.sandwiches`` sandwiches as many problems per read of C as fit their packed chunk partials
# (``csr_sandwich_many``) in this many bytes; ``rmatmats`` likewise for its d × k chunk partials.
SANDWICH_MANY_BYTES = 64 * 2**20
RMATMATS_BYTES = 64 * 2**20
# The smallest batch that the kernels for many vectors / problems at once take; a smaller batch runs one
# single pass per vector / problem, which gives the same bits (every batched kernel reproduces its single
# kernel's sums). Measured, 2 threads, d = 64, time batched / one at a time (best of 9, one run):
#   CSR n = 10⁵, 10 per row     r = 2     3     4     5     6     8     12    16
#     matvecs                       2.3   1.7   1.35  1.1   0.90  0.49  0.37  0.32
#     rmatmats, k = 1 (CG)          1.4   1.3   0.94  1.0   0.94  0.64  0.58  0.50
#     rmatmats, k = 3 (gradient)    2.2   1.8   1.35  1.5   1.4   1.6   1.04  0.97
#     sandwiches                    1.6   1.3   0.95  1.0   0.94  0.65  0.48  0.41
#   dense n = 4096: at r = 1 and 2 the batched passes took 1.1–3.3× as long, from r = 3 0.5–1.0× (noisy).
# The thin CSR passes lose at small r: r accumulators per row in a loop of unknown length cost more than
# the single kernels' unrolled sums, which the r = 1 CSR batch ran 2.7–4.7× as long as.
# ``sandwiches`` and ``products`` (CG's Hessian-vector products, C·v and Cᵀ(β ⊙ Cv), ``solve_many``'s shared
# passes) are weighed against what ``solve`` makes one at a time: a CSR sandwich or product that forms each βᵢ as
# it reads the row (``curvature_sandwich``, ``curvature_sandwich_vector``: one read of C, no β written first).
# Whole ``solve_many`` calls, CSR n = 10⁵, d = 64, softmax, best of 5 alternating (ms, shared / one at a time):
#   exact,  sandwiches   q = 4: 89 / 71, 6: 118 / 99, 8: 131 / 123 and 128 / 127, 10: 167 / 157, 12: 173 / 183,
#                        16: 245 / 261;
#   lagged, products     q = 4: 85 / 87, 6: 150 / 132 and 129 / 141, 8: 126 / 128 and 132 / 126, 10: 158 / 156,
#                        12: 167 / 172 (no clear side: shared from where the forward pass is, 6).
# Dense C forms its products in one parallel region at any count (``DenseMatrix.sandwich_vectors``).
CSR_BATCHED_FROM = {"matvecs": 6, "rmatvecs": 4, "rmatmats": 12, "sandwiches": 12, "products": 6}
DENSE_BATCHED_FROM = {"matvecs": 3, "rmatvecs": 3, "rmatmats": 3, "sandwiches": 3, "products": 1}


def sandwiched_densely(row_nnz, d):
    """Whether a CSR row of ``row_nnz`` stored entries is sandwiched by SYRK (True) or by pair updates."""
    return row_nnz >= dense_row_threshold(d)


def dense_row_threshold(d):
    """The stored entries from which a CSR row of d columns is sandwiched by SYRK (``sandwiched_densely``), as a
    float (one compiled type for ``csr_row_pairs``)."""
    return float(max(DENSE_ROW_MIN_NNZ, DENSE_ROW_FRACTION * d))


def estimated_sandwich_work(n, d, nnz, dense):
    """``sandwich_work`` of a matrix known only by its shape and nnz (e.g. held by Dask), as if its rows were equal."""
    per_row = nnz / n
    if dense or sandwiched_densely(per_row, d):
        return 0.0, n * d * d / 2
    return n * per_row * (per_row + 1) / 2, 0.0


def dense_row_block(count):
    """Rows per SYRK block for ``count`` long CSR rows."""
    return min(DENSE_SANDWICH_BLOCK, max(DENSE_ROW_MIN_BLOCK, -(-count // DENSE_ROW_BLOCKS)))


def blocked_syrk_sandwich(block_source, weights, d, block_size=DENSE_SANDWICH_BLOCK, with_absolute=False,
                          extra_columns=None, shift=None, column_factors=None, dtype=np.float64):
    """Σ_t weights[t]·r_t r_tᵀ over rows handed out in fixed blocks: ``block_source(part)`` gives
    (A, rows) with the rows at positions ``part`` (a slice of at most ``block_size`` positions in
    weights' order: ``syrk_parts``) being A[rows]. ``extra_columns`` (len(weights) × e): r_t is
    A's row with extra_columns[t] appended, and the sum is (d + e) × (d + e).

    Per block B₊ᵀB₊ − B₋ᵀB₋, with B± the block's rows of positive/negative weight scaled by √|w|
    (gathered by ``signed_scaled_rows`` into one reused buffer per thread): SYRK forms one
    triangle, half the flops of a GEMM, and splitting the rows by sign keeps each product
    positive semidefinite without doubling the work. The blocks run on the solve's threads,
    each SYRK on one BLAS thread (``map_single_threaded_blas``), summed in block order, so the
    sum, and its bits, do not depend on the thread count. One multi-threaded SYRK per block
    instead (``blas_threads``; bench/dense_phases.py --blas-threads) is no faster on 2 cores and
    leaves OpenBLAS's workers spinning into the Numba pass that follows (measured, 2 threads,
    n = 10⁵, d = 256: u = Cx right after the sandwich 18.3 ms against 10.0 ms), so it stays a
    bench toggle.

    ``with_absolute``: returns (Σ_t w_t r_t r_tᵀ, Σ_t |w_t| r_t r_tᵀ), the second as B₊ᵀB₊ + B₋ᵀB₋ from
    the same two SYRKs (the first with the bits it has alone).

    ``shift`` and ``column_factors`` (length d; default zeros and ones): the rows' first d entries are
    (A[i] − shift) ⊙ column_factors (``signed_scaled_rows``). ``dtype``: of the scaled rows and so of the
    SYRKs (float32: twice the speed; each block's product is summed in float64).
    """
    return blocked_syrk_sandwiches(block_source, [weights], d, block_size, with_absolute, extra_columns, shift,
                                   column_factors, dtype)[0]


def syrk_parts(count, block_size=DENSE_SANDWICH_BLOCK, width=0):
    """The SYRK blocks of ``blocked_syrk_sandwich`` over ``count`` rows of ``width`` columns: a power of two
    of near-equal slices of at most ``block_size`` rows, and at least two when one SYRK would be at least
    SYRK_SPLIT_FMA multiply-adds. A function of ``count`` and ``width`` only (so the sum's bits are the
    same for any thread count) that splits evenly over 1, 2, 4, … threads: in blocks of exactly
    ``block_size`` the start's sampled fit (13.1k rows, dense 10⁵ × 256) ran one SYRK of 8192 rows on
    one thread while the other finished its 4935, and a sample of 7303 rows of dense 10⁴ × 1024 ran as
    one SYRK on one thread (0.19 s; two halves on two threads 0.09 s)."""
    if count <= 0:
        return []
    blocks = 2 if count * width * width / 2 >= SYRK_SPLIT_FMA else 1
    while blocks * block_size < count:
        blocks *= 2
    size = -(-count // blocks)
    return [slice(start, min(count, start + size)) for start in range(0, count, size)]


def blocked_syrk_sandwiches(block_source, weight_vectors, d, block_size=DENSE_SANDWICH_BLOCK, with_absolute=False,
                            extra_columns=None, shift=None, column_factors=None, dtype=np.float64):
    """``blocked_syrk_sandwich`` for several weight vectors over the same rows: one list of (vector, block)
    SYRKs on one pool of threads (starting a pool costs ~3 ms, as much as a 4096 × 64 SYRK), each
    vector's blocks summed in block order, so each sum has ``blocked_syrk_sandwich``'s bits (with
    ``with_absolute``, each sum is a pair (signed, absolute))."""
    buffers = threading.local()
    count = weight_vectors[0].shape[0] if weight_vectors else 0
    extra_columns = np.empty((count, 0)) if extra_columns is None else np.ascontiguousarray(extra_columns,
                                                                                             dtype=np.float64)
    width = d + extra_columns.shape[1]
    shift = np.zeros(d) if shift is None else np.ascontiguousarray(shift, dtype=np.float64)
    column_factors = np.ones(d) if column_factors is None else np.ascontiguousarray(column_factors, dtype=np.float64)

    def block_sandwich(item):
        weights, part = item
        A, rows = block_source(part)
        w = np.ascontiguousarray(weights[part], dtype=np.float64)
        scaled = getattr(buffers, "scaled", None)
        if scaled is None or scaled.shape[0] < rows.shape[0]:
            scaled = buffers.scaled = np.empty((block_size, width), dtype=dtype)
        positive, negative = signed_scaled_rows(A, rows, extra_columns[part], w, shift, column_factors, scaled)
        out = np.zeros((width, width))
        absolute = np.zeros((width, width)) if with_absolute else None
        # NumPy runs Bᵀ·B of a C-ordered B as a SYRK (one triangle, mirrored: exactly symmetric)
        # and releases the GIL, so the blocks run in parallel; SciPy's dsyrk wrapper holds the
        # GIL (measured: 2 threads no faster than 1).
        if positive:
            block = scaled[:positive]
            gram = block.T @ block
            out += gram
            if with_absolute:
                absolute += gram
        if negative:
            block = scaled[positive:positive + negative]
            gram = block.T @ block
            out -= gram
            if with_absolute:
                absolute += gram
        return (out, absolute) if with_absolute else out

    parts = syrk_parts(count, block_size, width)
    items = [(weights, part) for weights in weight_vectors for part in parts]

    def sums(partials):
        if not with_absolute:
            return [_sum_in_order(islice(partials, len(parts)), width) for _ in weight_vectors]
        out = []
        for _ in weight_vectors:
            pairs = list(islice(partials, len(parts)))
            out.append((_sum_in_order((pair[0] for pair in pairs), width),
                        _sum_in_order((pair[1] for pair in pairs), width)))
        return out

    if DENSE_SANDWICH_BLAS_THREADS:
        with blas_threads(numba.get_num_threads()):
            return sums(map(block_sandwich, items))
    return sums(map_single_threaded_blas(block_sandwich, items))


def column_means(matrix):
    """C's column mean Cᵀ1/n (one transposed pass, kept on the matrix until its ``clear_cache``: the problems
    ``solve_many`` makes for the targets of one C share it; read-only)."""
    if matrix._column_means is None:
        means = matrix.rmatmat(np.full((matrix.n, 1), 1.0 / max(matrix.n, 1)))[:, 0]
        means.flags.writeable = False
        matrix._column_means = means
    return matrix._column_means


class DenseMatrix:
    """Row-major dense C (float32 or float64); passes in Numba, the sandwich by blocked BLAS SYRK."""

    format = "dense"

    def __init__(self, array):
        # Row-major always: the kernels read rows, and one layout means one compiled specialisation
        # (an F-ordered array, e.g. from np.column_stack, would compile every dense kernel again).
        self.array = array = np.ascontiguousarray(array)
        self.n, self.d = array.shape
        self.nnz = self.n * self.d
        self.nbytes = array.nbytes
        self._chunk_rows = chunk_rows(self.n)
        self._column_squares = None
        self._column_means = None
        self._pending_check = None

    def check_on_first_pass(self, check):
        """Run ``check(column squares)`` (which raises on bad entries) before any result read from C is
        returned, with the squares formed by C's first transposed pass when that comes first
        (``rmatmat``: one read of C less than a pass of their own, ~6 ms at 10⁵ × 256), else by their own
        pass. ``fastnewton.solve`` checks C so (``fastnewton.validation.as_input_matrix``)."""
        self._pending_check = check

    def _checked(self):
        """The pending check of C's entries, run now (by the column squares) if it is still pending."""
        if self._pending_check is not None:
            self.column_squares()

    def _run_pending_check(self):
        check = self._pending_check
        if check is not None:
            check(self._column_squares)  # raises on a NaN or Inf entry: the check stays pending
            self._pending_check = None

    def matvec(self, x, out=None):
        """u = Cx (into ``out``, a length-n float64 array, when given)."""
        self._checked()
        out = np.empty(self.n) if out is None else out
        dense_matvec(self.array, x, out)
        return out

    def rmatmat(self, Q):
        Q = side_by_side(Q)
        out = np.empty((self.d, Q.shape[1]))
        if self._pending_check is not None and self._column_squares is None:
            squares = np.empty(self.d)
            dense_column_squares_and_rmatmat(self.array, Q, self._chunk_rows, squares, out)
            self._keep_column_squares(squares)
            self._run_pending_check()
            return out
        self._checked()
        dense_rmatmat(self.array, Q, self._chunk_rows, out)
        return out

    def sandwich_vector(self, beta, v):
        """(Cᵀ(β ⊙ Cv), Cv) in one read of C, with the bits of ``rmatmat`` after ``matvec``."""
        self._checked()
        forward = np.empty(self.n)
        out = np.empty(self.d)
        dense_sandwich_vector(self.array, beta, v, self._chunk_rows, forward, out)
        return out, forward

    def sandwich_vectors(self, weights, V, forward):
        """[Cᵀ(βₛ ⊙ C vₛ)] (r × d) for the r weight vectors ``weights`` and the rows vₛ of V (r × d), C vₛ written
        into forward[s] (r × n): each s ``sandwich_vector(βₛ, vₛ)``, bit for bit, in one parallel region."""
        self._checked()
        out = np.empty((V.shape[0], self.d))
        dense_sandwich_vectors(self.array, _array_list(weights), np.ascontiguousarray(V), self._chunk_rows, forward, out)
        return out

    def matvecs(self, X, out=None):
        """(C X)ᵀ (r × n) for a d × r X: row t is ``matvec(X[:, t])``, bit for bit (one read of C for r vectors);
        written into ``out`` (C-contiguous r × n) when given."""
        self._checked()
        out = np.empty((X.shape[1], self.n)) if out is None else out
        if not self.batches("matvecs", X.shape[1]):
            return _matvecs_one_at_a_time(self, X, out)
        dense_matvecs(self.array, np.ascontiguousarray(X), MATVECS_ROWS_PER_TASK, out)
        return out

    def rmatmats(self, Qs):
        """[Cᵀ Q for Q in Qs] (s × d × k) for n × k arrays Qs: each ``rmatmat(Q)``, bit for bit, in one read of C."""
        self._checked()
        if not self.batches("rmatvecs" if Qs[0].shape[1] == 1 else "rmatmats", len(Qs)):
            return [self.rmatmat(Q) for Q in Qs]
        out = np.empty((len(Qs), self.d, Qs[0].shape[1]))
        dense_rmatmats(self.array, _array_list(Qs), self._chunk_rows, out)
        return out

    def _block_slices(self, count):
        return [slice(start, min(count, start + DENSE_SANDWICH_BLOCK))
                for start in range(0, count, DENSE_SANDWICH_BLOCK)]

    def _block(self, part):
        """C's rows in ``part`` as float64 (a view when C is float64)."""
        return self.rows(part)

    def _syrk_sandwich(self, weights, rows=None, with_absolute=False, shift=None, column_scale=None):
        """Σᵢ wᵢ cᵢcᵢᵀ over C's rows, or C[rows], by ``blocked_syrk_sandwich`` (``shift`` μ: of the rows cᵢ − μ;
        ``column_scale``: in float32, ``sandwich_rows_and_absolute``)."""
        self._checked()
        def block_source(part):
            if rows is None:
                return self.array, np.arange(part.start, part.stop)
            return self.array, rows[part]

        if column_scale is None:
            return blocked_syrk_sandwich(block_source, weights, self.d, with_absolute=with_absolute, shift=shift)
        # Rows scaled by D⁻¹ and weights by their largest magnitude: the float32 entries are then of order one
        # or less whatever C's and β's scales (no overflow, and underflow only where a term is ~1e-38 of the
        # largest), and each entry's rounding is relative, as in float64 (~6e-8 instead of ~1e-16).
        top = float(np.max(np.abs(weights))) if weights.size else 0.0
        if not 0.0 < top < np.inf:
            top = 1.0
        column_scale = np.ascontiguousarray(column_scale, dtype=np.float64)
        sums = blocked_syrk_sandwich(block_source, weights / top, self.d, with_absolute=with_absolute, shift=shift,
                                     column_factors=1.0 / column_scale, dtype=np.float32)
        back = top * np.outer(column_scale, column_scale)  # symmetric to the bit: the sums stay exactly symmetric
        return tuple(part * back for part in sums) if with_absolute else sums * back

    def sandwich(self, beta):
        return self._syrk_sandwich(beta)

    def curvature_sandwich(self, Q, c, w, beta):
        """``sandwich(β)`` for β = Q[:, 2] − c·Q[:, 1] + w (``curvature_weights``), formed first in ``beta``
        (a length-n work array)."""
        curvature_weights(Q, c, w, beta)
        return self.sandwich(beta)

    def batches(self, operation, count):
        """Whether ``count`` vectors / problems of ``operation`` go to its kernel for many at once (``*_BATCHED_FROM``)."""
        return _batched(DENSE_BATCHED_FROM, operation, count)

    def sandwiches(self, weights):
        """[Cᵀ diag(w) C for w in weights] (length-n vectors), each with ``sandwich``'s bits (one pool of SYRKs)."""
        if not self.batches("sandwiches", len(weights)):
            return _sandwiches_one_at_a_time(self, weights)
        self._checked()
        return blocked_syrk_sandwiches(lambda part: (self.array, np.arange(part.start, part.stop)),
                                       [np.ascontiguousarray(w, dtype=np.float64) for w in weights], self.d)

    def sandwich_work(self):
        """(sparse pair updates, dense SYRK multiply-adds) of the full sandwich: every row by SYRK."""
        return 0.0, self.n * self.d * self.d / 2

    def sandwich_rows(self, rows, weights, shift=None):
        """Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]} (the sampled sandwich) by SYRK on the gathered rows
        (``shift`` μ: of the rows C_{rows[t]} − μ, centred by the SYRK's gather, ``signed_scaled_rows``)."""
        return self._syrk_sandwich(weights, rows, shift=shift)

    def sandwich_rows_and_absolute(self, rows, weights, shift=None, column_scale=None):
        """(``sandwich_rows(rows, weights, shift)``, the same with |weights|): one gather and two SYRKs per block,
        the rows of each sign summed apart already.

        ``column_scale`` D (length d, positive): the SYRKs run in float32 (twice float64's multiply-adds per
        second) on the gathered rows scaled by D⁻¹ (and the weights by their largest magnitude), each block's
        product summed in float64 and scaled back; entries then round to ~1e-7 of the terms they sum instead
        of ~1e-16, for the sketched Hessian, whose sample errs by ε (``fastnewton.sketching.LeverageReference``
        says when that is safe)."""
        return self._syrk_sandwich(weights, rows, with_absolute=True, shift=shift, column_scale=column_scale)

    def row_squares(self, column_weights):
        """Σⱼ C[i, j]²·column_weights[j] for every row i (one pass)."""
        self._checked()
        out = np.empty(self.n)
        dense_row_squares(self.array, np.ascontiguousarray(column_weights, dtype=np.float64), out)
        return out

    def row_squares_and_matvec(self, column_weights, x):
        """(``row_squares(column_weights)``, ``matvec(x)``), bit for bit, in one read of C."""
        self._checked()
        squares, product = np.empty(self.n), np.empty(self.n)
        dense_row_squares_and_matvec(self.array, np.ascontiguousarray(column_weights, dtype=np.float64), x,
                                     squares, product)
        return squares, product

    def gathered(self, index):
        """(A, positions) with A[positions] = C[index]: C's own array and ``index`` (the SYRK gathers the
        rows itself, ``blocked_syrk_sandwich``)."""
        self._checked()
        return self.array, index

    def matmat(self, Z):
        """C Z for a thin d × r Z (blocked single-threaded BLAS calls, so float32 C is never copied whole)."""
        self._checked()
        out = np.empty((self.n, Z.shape[1]))

        def block_product(part):
            out[part] = self._block(part) @ Z

        for _ in map_single_threaded_blas(block_product, self._block_slices(self.n)):
            pass
        return out

    def embed(self, scaled_signs, s, ptr, member, m):
        self._checked()
        out = np.empty((m, self.d))
        dense_embed(self.array, scaled_signs, s, ptr, member, out)
        return out

    def rows(self, index):
        """C[index] as a dense float64 array."""
        self._checked()
        return np.asarray(self.array[index], dtype=np.float64)

    def column_squares(self):
        """Σᵢ C[i, j]² for every column j (float64, read-only; fixed row chunks summed in order, in parallel:
        the blocked single-threaded einsum took 0.15 s on 10⁶ × 512, two passes' worth). Formed once and
        kept: validation checks C's entries by them (``fastnewton.validation.as_input_matrix``) and the
        solve's column scale is their square root; ``clear_cache`` forgets them (after C is edited in place)."""
        if self._column_squares is None:
            out = np.empty(self.d)
            dense_column_squares(self.array, self._chunk_rows, out)
            self._keep_column_squares(out)
        self._run_pending_check()
        return self._column_squares

    def _keep_column_squares(self, squares):
        squares.flags.writeable = False
        self._column_squares = squares

    def clear_cache(self):
        """Forget the column squares (C was edited in place)."""
        self._column_squares = None
        self._column_means = None


# ``csr_sandwich_vector``'s unused inputs: its β given (no columns Q), or its β formed from Q (no β).
_NO_COLUMNS = np.zeros((0, 3))
_NO_WEIGHTS = np.zeros(0)


def side_by_side(*blocks):
    """The n × kᵢ arrays ``blocks`` side by side as one C-contiguous n × Σkᵢ array (``np.column_stack``; the
    only one as it is when it is C-contiguous already), copied a column at a time: NumPy copies rows of a
    few entries slowly (n = 2·10⁵: an n × 2 view copied whole 2.4 ms, column by column 0.5 ms; two
    n × 2 arrays by np.column_stack 4.5 ms, column by column 1.3 ms)."""
    if len(blocks) == 1 and blocks[0].flags.c_contiguous:
        return blocks[0]
    n = blocks[0].shape[0]
    out = np.empty((n, sum(block.shape[1] for block in blocks)), dtype=np.result_type(*blocks))
    t = 0
    for block in blocks:
        if n >= COPY_COLUMNS_ROWS and block.dtype == out.dtype == np.float64:
            # the start's fit columns beside ∇L(0)'s, n = 2·10⁵ × 4: ~1.6 ms column by column, ~0.3 ms here
            copy_columns(block, t, chunk_rows(n), out)
            t += block.shape[1]
            continue
        for j in range(block.shape[1]):
            out[:, t] = block[:, j]
            t += 1
    return out


# From this many rows ``side_by_side`` copies float64 blocks by ``copy_columns`` (all threads, row by row); below
# it a kernel's launch costs more than NumPy's column copies (solve_many's small problems).
COPY_COLUMNS_ROWS = 2**14


def _with_third_column(Q):
    """An n × 3 array whose first two columns are the n × 2 Q: the array Q is the leading columns of when it is
    one (an evaluation's Q[:, :2]: its third column is summed in a lane of its own and dropped, at no cost), else
    a copy with a zero third column."""
    whole = Q.base
    if (isinstance(whole, np.ndarray) and whole.shape == (Q.shape[0], 3) and whole.dtype == np.float64
            and Q.dtype == np.float64 and whole.flags.c_contiguous and Q.strides == whole.strides
            and Q.__array_interface__["data"][0] == whole.__array_interface__["data"][0]):
        return whole
    return side_by_side(Q, np.zeros((Q.shape[0], 1)))


def _shifted_sandwich(out, kept, weights, shift):
    """Σ_t w_t (c_t − μ)(c_t − μ)ᵀ from ``out`` = Σ_t w_t c_t c_tᵀ (changed in place) and the kept rows c_t (sparse):
    out − μaᵀ − aμᵀ + (Σw)μμᵀ with a = Σ_t w_t c_t."""
    weighted = np.asarray(kept.T @ weights, dtype=np.float64)
    cross = np.outer(shift, weighted)
    out -= cross + cross.T  # summed first: exactly symmetric, as the sandwich is
    out += float(np.sum(weights)) * np.outer(shift, shift)
    return out


class CSRMatrix:
    """CSR C with int32/int64 indices and float32/float64 values; every operation is a Numba kernel."""

    format = "csr"

    def __init__(self, indptr, indices, data, shape, rows_increasing=False):
        """``rows_increasing``: every row's columns are known to increase strictly (checked by validation:
        ``fastnewton.validation.index_facts``); the sandwich kernels then read every row in place without
        testing it (else they test each chunk's rows, and sort the rows that are not)."""
        self.indptr, self.indices, self.data = indptr, indices, data
        self.rows_increasing = bool(rows_increasing)
        self.n, self.d = shape
        self.nnz = int(indptr[-1])
        self.nbytes = indptr.nbytes + indices.nbytes + data.nbytes
        self._chunk_rows = chunk_rows(self.n)
        # Pair counts in int64: nnzᵢ(nnzᵢ + 1)/2 overflows int32 from nnzᵢ = 46 341.
        self._row_pairs = np.empty(self.n, dtype=np.int64)
        pairs, short_pairs, long_rows = csr_row_pairs(indptr, dense_row_threshold(self.d), self._row_pairs)
        self._sandwich_chunk_rows = sandwich_chunk_rows(self.n, self.d, int(pairs))
        self._sparse_pairs = int(short_pairs)
        # With no long row (the usual case) the short rows are all rows, an arange, and no row is marked long.
        self._dense_row = None if long_rows == 0 else sandwiched_densely(np.diff(indptr), self.d)
        self._dense_rows = np.zeros(0, dtype=np.int64) if long_rows == 0 else self._dense_row.nonzero()[0]
        self._sparse_rows = np.arange(self.n) if long_rows == 0 else (~self._dense_row).nonzero()[0]
        # The full sandwich's per-chunk partials, kept from one Hessian to the next.
        self._partials = Recycler()
        self._column_squares = None
        self._column_means = None
        self._sandwich_work = None

    def matvec(self, x, out=None):
        """u = Cx (into ``out``, a length-n float64 array, when given)."""
        out = np.empty(self.n) if out is None else out
        csr_matvec(self.indptr, self.indices, self.data, x, out)
        return out

    def sandwich_vector(self, beta, v):
        """(Cᵀ(β ⊙ Cv), Cv) in one read of C (``csr_sandwich_vector``), with the bits of ``rmatmat`` after ``matvec``."""
        return self._sandwich_vector(beta, _NO_COLUMNS, 0.0, _NO_WEIGHTS, v)

    def curvature_sandwich_vector(self, Q, c, w, v):
        """``sandwich_vector(β, v)`` for β = Q[:, 2] − c·Q[:, 1] + w (``curvature_weights``), bit for bit, each βᵢ
        formed as its row is read: no pass writes β (a ``lagged`` iteration's first CG product needs no β first)."""
        return self._sandwich_vector(_NO_WEIGHTS, Q, c, w, v)

    def _sandwich_vector(self, beta, Q, c, w, v):
        forward = np.empty(self.n)
        out = np.empty((self.d, 1))
        csr_sandwich_vector(self.indptr, self.indices, self.data, beta, Q, c, w, v, self._chunk_rows, forward, out)
        return out[:, 0], forward

    def matvecs(self, X, out=None):
        """(C X)ᵀ (r × n) for a d × r X: row t is ``matvec(X[:, t])``, bit for bit (one read of C for r vectors);
        written into ``out`` (C-contiguous r × n) when given."""
        out = np.empty((X.shape[1], self.n)) if out is None else out
        if not self.batches("matvecs", X.shape[1]):
            return _matvecs_one_at_a_time(self, X, out)
        csr_matvecs(self.indptr, self.indices, self.data, np.ascontiguousarray(X), MATVECS_ROWS_PER_TASK, out)
        return out

    def rmatmats(self, Qs):
        """[Cᵀ Q for Q in Qs] for n × k arrays Qs (the same k): each ``rmatmat(Q)``, bit for bit, with one read of C
        per group of problems (``csr_rmatmats``: the problems' columns side by side, SIMD across problems)."""
        k = Qs[0].shape[1]
        if not self.batches("rmatvecs" if k == 1 else "rmatmats", len(Qs)):
            return [self.rmatmat(Q) for Q in Qs]
        n_chunks = -(-self.n // self._chunk_rows)
        group = max(1, RMATMATS_BYTES // (8 * n_chunks * self.d * k))
        out = []
        for start in range(0, len(Qs), group):
            part = Qs[start:start + group]
            G = np.empty((len(part), self.d, k))
            csr_rmatmats(self.indptr, self.indices, self.data, _array_list(part), self._chunk_rows, G)
            out.extend(G)
        return out

    def rmatmat(self, Q):
        k = Q.shape[1]
        if k == 1:
            out = np.empty((self.d, 1))
            csr_rmatvec(self.indptr, self.indices, self.data, np.ascontiguousarray(Q[:, 0]), self._chunk_rows, out)
            return out
        if k > 4:
            out = np.empty((self.d, k))
            csr_rmatmat(self.indptr, self.indices, self.data, side_by_side(Q), self._chunk_rows, out)
            return out
        # k = 2 (the gradient's columns alone, P = CᵀU) runs on the unrolled 4-lane kernel with a third
        # column: the same sums in the same order (the same bits), no slower (n = 10⁶, d = 200,
        # 10 entries per row: 32 ms against 36 ms for the generic kernel at k = 2), and one kernel
        # less to compile on a first solve. k = 4 (a start's fit columns beside ∇L(0)'s) fills its fourth lane.
        if k == 2:
            Q = _with_third_column(Q)
        out = np.empty((self.d, max(k, 3)))
        csr_rmatmat4(self.indptr, self.indices, self.data, side_by_side(Q), self._chunk_rows, out)
        return out if k > 2 else np.ascontiguousarray(out[:, :2])

    def sandwich(self, beta):
        """Cᵀ diag(β) C: short rows by sparse pair updates, long rows (if any) by SYRK."""
        if self._dense_rows.size == 0:
            # Every row listed, on the kernel the sampled sandwich uses (int64 row positions, as
            # ``sampled_sandwich`` passes): one compiled specialisation serves both. With no long rows
            # the kept list of short rows is every row (not a new np.arange(n) per call).
            return self._sparse_sandwich(self._sparse_rows, beta, self._sandwich_chunk_rows, keep_partials=True)
        return self._split_sandwich(self._sparse_rows, beta[self._sparse_rows],
                                    self._dense_rows, beta[self._dense_rows], keep_partials=True)

    def curvature_sandwich(self, Q, c, w, beta):
        """``sandwich(β)`` for β = Q[:, 2] − c·Q[:, 1] + w (``curvature_weights``), bit for bit: when every
        row is short, each βᵢ is formed inside the pair loop (``csr_curvature_sandwich``: no pass writes
        β, and ``beta``, a length-n work array, is not touched); else β is formed first in ``beta``."""
        if self._dense_rows.size:
            curvature_weights(Q, c, w, beta)
            return self.sandwich(beta)
        out = np.empty((self.d, self.d))
        partial = self._partials.empty(partials_shape(self.n, self._sandwich_chunk_rows, self.d))
        csr_curvature_sandwich(self.indptr, self.indices, self.data, Q, c, w, self._sandwich_chunk_rows, partial, out,
                               self.rows_increasing)
        return out

    def batches(self, operation, count):
        """Whether ``count`` vectors / problems of ``operation`` go to its kernel for many at once (``*_BATCHED_FROM``;
        ``sandwiches`` only when every row is short)."""
        if operation == "sandwiches" and self._dense_rows.size:
            return False
        return _batched(CSR_BATCHED_FROM, operation, count)

    def sandwiches(self, weights):
        """[Cᵀ diag(w) C for w in weights] (length-n vectors): when every row is short, one read of C per
        group of problems, q-wide updates (``csr_sandwich_many``: each with ``sandwich(w)``'s bits, on its row
        chunks), else one at a time."""
        if not self.batches("sandwiches", len(weights)):
            return _sandwiches_one_at_a_time(self, weights)
        n_chunks = -(-self.n // self._sandwich_chunk_rows)
        group = max(1, SANDWICH_MANY_BYTES // (8 * n_chunks * (self.d * (self.d + 1) // 2)))
        out = []
        for start in range(0, len(weights), group):
            part = weights[start:start + group]
            sums = np.empty((len(part), self.d, self.d))
            csr_sandwich_many(self.indptr, self.indices, self.data, _array_list(part), self._sandwich_chunk_rows,
                              sums)
            out.extend(sums)
        return out

    def sandwich_work(self):
        """(sparse pair updates, dense SYRK multiply-adds) of the full sandwich, split like ``sandwich``
        (formed once: ``solve`` prices its thread count and its strategy by it, ~0.2 ms each at n = 2·10⁵)."""
        if self._sandwich_work is None:
            self._sandwich_work = float(self._sparse_pairs), self._dense_rows.size * self.d * self.d / 2
        return self._sandwich_work

    def sandwich_rows(self, rows, weights, shift=None):
        """Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]} (the sampled sandwich), split like ``sandwich``.

        ``shift`` μ: of the rows C_{rows[t]} − μ, as Σ w c cᵀ − μaᵀ − aμᵀ + (Σw)μμᵀ with a = Σ_t w_t C_{rows[t]}
        (a sparse product over the kept rows: centring them would densify them)."""
        out = self._uncentred_sandwich_rows(rows, weights)
        return out if shift is None else _shifted_sandwich(out, self.scipy()[rows], weights, shift)

    def sandwich_rows_and_absolute(self, rows, weights, shift=None):
        """(``sandwich_rows(rows, weights, shift)``, the same with |weights|): two sampled sandwiches (the pair
        updates take each weight as it comes, so the second costs as much as the first), the kept rows gathered
        once for both shifts."""
        absolute_weights = np.abs(weights)
        signed = self._uncentred_sandwich_rows(rows, weights)
        absolute = self._uncentred_sandwich_rows(rows, absolute_weights)
        if shift is None:
            return signed, absolute
        kept = self.scipy()[rows]
        return (_shifted_sandwich(signed, kept, weights, shift),
                _shifted_sandwich(absolute, kept, absolute_weights, shift))

    def _uncentred_sandwich_rows(self, rows, weights):
        if self._dense_row is None:
            return self._sparse_sandwich(rows, weights)
        dense = self._dense_row[rows]
        if not dense.any():
            return self._sparse_sandwich(rows, weights)
        return self._split_sandwich(rows[~dense], weights[~dense], rows[dense], weights[dense])

    def row_squares(self, column_weights):
        """Σⱼ C[i, j]²·column_weights[j] for every row i (one pass over the stored entries)."""
        out = np.empty(self.n)
        csr_row_squares(self.indptr, self.indices, self.data, np.ascontiguousarray(column_weights, dtype=np.float64),
                        out)
        return out

    def row_squares_and_matvec(self, column_weights, x):
        """(``row_squares(column_weights)``, ``matvec(x)``): two passes (no fused CSR kernel is written)."""
        return self.row_squares(column_weights), self.matvec(x)

    def gathered(self, index):
        """(A, positions) with A[positions] = C[index]: the rows densified (``rows``)."""
        return self.rows(index), np.arange(index.shape[0])

    def _sparse_sandwich(self, rows, weights, chunk=None, keep_partials=False):
        """Σ_t weights[t]·C_{rows[t]}ᵀ C_{rows[t]} by sparse pair updates, O(Σ_t nnz_{rows[t]}²), in chunks
        of ``chunk`` rows (default: ``sandwich_chunk_rows`` of these rows).

        ``keep_partials``: the full sandwich (the same rows every Hessian) keeps its per-chunk partials
        from one Hessian to the next (``fastnewton.buffers``: fresh ones cost their page faults again);
        a sampled one allocates its own."""
        out = np.empty((self.d, self.d))
        if chunk is None:
            chunk = sandwich_chunk_rows(rows.shape[0], self.d, int(self._row_pairs[rows].sum()))
        shape = partials_shape(rows.shape[0], chunk, self.d)
        partial = self._partials.empty(shape) if keep_partials else np.empty(shape)
        csr_sandwich_rows(self.indptr, self.indices, self.data, rows, weights, chunk, partial, out, self.rows_increasing)
        return out

    def _split_sandwich(self, sparse_rows, sparse_weights, dense_rows, dense_weights, keep_partials=False):
        """The sparse sandwich of the short rows plus the blocked SYRK sandwich of the long ones
        (``keep_partials``: as ``_sparse_sandwich``'s).

        Both parts are exactly symmetric, so their sum is; both are summed in a fixed order.
        """
        out = self._sparse_sandwich(sparse_rows, sparse_weights, keep_partials=keep_partials)
        def block_source(part):
            block = self._dense_rows_block(dense_rows[part])
            return block, np.arange(block.shape[0])

        out += blocked_syrk_sandwich(block_source, dense_weights, self.d, dense_row_block(dense_rows.shape[0]))
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
        """Σᵢ C[i, j]² for every column j (one pass over the stored entries, no copy of them; read-only).
        Formed once and kept, as ``DenseMatrix.column_squares``: validation checks C's entries by them and
        the solve's column scale is their square root; ``clear_cache`` forgets them."""
        if self._column_squares is None:
            out = np.zeros(self.d)
            csr_column_squares(self.indices, self.data, out)
            out.flags.writeable = False
            self._column_squares = out
        return self._column_squares

    def clear_cache(self):
        """Forget the column squares (C was edited in place; ``DenseMatrix.clear_cache``)."""
        self._column_squares = None
        self._column_means = None

    def _dense_rows_block(self, rows):
        """C[rows] (an array of row positions) as dense float64, duplicates summed in float64."""
        out = np.empty((rows.shape[0], self.d))
        csr_dense_rows(self.indptr, self.indices, self.data, rows, out)
        return out
