"""kernels/small_newton.py's one-thread linear algebra against kernels/dense.py and NumPy.

The compiled loop must make solve's decisions, so its pass u = Cx must have dense_matvec's bits (every
row summed in storage order; the kernel sums four rows side by side), and its Cholesky must agree with
LAPACK's to rounding: ‖L − L_np‖ ≤ 64·d·eps·‖L_np‖ for the well-conditioned matrices here (the
factor's backward error is O(d·eps); cond ≤ ~10 keeps the forward error within a small multiple).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit, prange

from fastnewton.kernels import small_newton as kernel
from fastnewton.kernels.atomic import fetch_add, next_taken
from fastnewton.kernels.dense import dense_matvec


@pytest.mark.parametrize("d", [3, 13, 14, 15, 16])
@pytest.mark.parametrize("n", [1, 3, 4, 9, 64])
def test_matvec_has_dense_matvecs_bits(n, d):
    # d mod 4 = 0 … 3: every tail of row_dot's four lanes, in the four-row sums and in the single rows after them
    rng = np.random.default_rng(n)
    A = rng.standard_normal((n, d))
    x = rng.standard_normal(d)
    empty = np.empty(0, dtype=np.int64)
    mine, reference = np.empty(n), np.empty(n)
    kernel._matvec((A, empty, empty, np.empty(0), False), x, mine)
    dense_matvec(A, x, reference)
    np.testing.assert_array_equal(mine, reference)


def test_csr_passes_have_solves_bits():
    """A CSR C's u = Cx (rows by pairs) and Cᵀ Q (k ≤ 4: 4-wide updates on a d × 4 partial; wider Q entry by entry)
    have the bits of solve's passes (``csr_matvec``; ``csr_rmatmat4`` for k = 3, 4 and ``csr_rmatmat`` otherwise,
    over the same row chunks): rows of 0 to 5 entries (every pair and two-entry tail), an odd row count, a column
    repeated within a row, values over 40 orders of magnitude."""
    import scipy.sparse as sp

    from fastnewton.kernels.csr import csr_matvec, csr_rmatmat, csr_rmatmat4

    rng = np.random.default_rng(53)
    n, d, chunk_rows = 41, 9, 8
    counts = rng.integers(0, 6, n)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = rng.integers(0, d, indptr[-1]).astype(np.int64)
    data = rng.standard_normal(indptr[-1]) * np.exp(rng.uniform(-20, 20, indptr[-1]))
    C = sp.csr_matrix((data, indices, indptr), shape=(n, d))
    matrix = (np.empty((0, d)), indptr, indices, data, True)
    x = rng.standard_normal(d) * np.exp(rng.uniform(-20, 20, d))
    mine, reference = np.empty(n), np.empty(n)
    kernel._matvec(matrix, x, mine)
    csr_matvec(C.indptr, C.indices, C.data, x, reference)
    np.testing.assert_array_equal(mine, reference)
    for k in (1, 2, 3, 4, 5, 19):
        Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-20, 20, (n, k)))
        mine, reference = np.empty((d, k)), np.empty((d, k))
        kernel._rmatmat(matrix, Q, chunk_rows, mine)
        (csr_rmatmat4 if k in (3, 4) else csr_rmatmat)(C.indptr, C.indices, C.data, Q, chunk_rows, reference)
        np.testing.assert_array_equal(mine, reference)


@pytest.mark.parametrize("d", [1, 2, 5, 8, 11])
def test_cholesky_matches_numpy_and_fails_on_an_indefinite_matrix(d):
    rng = np.random.default_rng(d)
    X = rng.standard_normal((4 * d, d))
    A = X.T @ X + d * np.eye(d)
    U = np.zeros((d, d))
    assert kernel._cholesky(A, 0.5, U)
    expected = np.linalg.cholesky(A + 0.5 * np.eye(d))
    eps = np.finfo(np.float64).eps
    assert np.linalg.norm(np.triu(U).T - expected) <= 64 * d * eps * np.linalg.norm(expected)
    rhs = rng.standard_normal(d)
    out = np.empty(d)
    kernel._cholesky_solve(U, rhs, out)
    np.testing.assert_allclose(out, np.linalg.solve(A + 0.5 * np.eye(d), rhs), rtol=1e-10, atol=1e-12)
    indefinite = A.copy()
    indefinite[d - 1, d - 1] = -1.0
    assert not kernel._cholesky(indefinite, 0.0, U)


@pytest.mark.parametrize("d", [1, 2, 7, 48, 61])
def test_cholesky_has_the_bits_of_entry_by_entry_sums(d):
    # Reference: the textbook Cholesky–Crout loops in plain Python, each entry's sum over k in increasing
    # order, then the two triangular sweeps row by row; the kernel forms a column at a time: the same bits.
    rng = np.random.default_rng(d)
    X = rng.standard_normal((2 * d, d))
    A = X.T @ X
    A[np.triu_indices(d, 1)] = np.nan  # only the lower triangle is read
    shift = 0.25
    L = np.zeros((d, d))
    for j in range(d):
        s = A[j, j] + shift
        for k in range(j):
            s -= L[j, k] * L[j, k]
        L[j, j] = np.sqrt(s)
        for i in range(j + 1, d):
            t = A[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / L[j, j]
    U = np.zeros((d, d))
    assert kernel._cholesky(A, shift, U)
    np.testing.assert_array_equal(np.triu(U), L.T)
    rhs = rng.standard_normal(d)
    y = np.empty(d)
    for i in range(d):
        t = rhs[i]
        for k in range(i):
            t -= L[i, k] * y[k]
        y[i] = t / L[i, i]
    expected = np.empty(d)
    for i in range(d - 1, -1, -1):
        t = y[i]
        for k in range(i + 1, d):
            t -= L[k, i] * expected[k]
        expected[i] = t / L[i, i]
    out = np.empty(d)
    kernel._cholesky_solve(U, rhs, out)
    np.testing.assert_array_equal(out, expected)


def test_atomic_counter_hands_out_every_number_once_across_threads():
    # Reference: the numbers 0 … count − 1, each taken by exactly one task (a lost update would hand one
    # out twice, to two tasks), however many tasks race for them.
    count = 20_000
    by_lane = _take_all(count, 4)
    np.testing.assert_array_equal(by_lane.sum(axis=0), np.ones(count))


@njit(parallel=True)
def _take_all(count, lanes):
    counter = np.zeros(1, dtype=np.int64)
    by_lane = np.zeros((lanes, count), dtype=np.int64)
    for lane in prange(lanes):
        while True:
            position = fetch_add(counter, 1)
            if position >= count:
                break
            by_lane[lane, position] += 1
    return by_lane


def test_next_taken_hands_out_every_item_of_the_order_once_then_minus_one():
    # Reference: a permutation of 0 … count − 1 as the order; each item is taken by exactly one task, and a
    # task asking after the last item gets -1 (every task asks once more than its share: lanes extra calls).
    count, lanes = 5_000, 4
    order = np.random.default_rng(3).permutation(count).astype(np.int64)
    by_lane, ends = _take_in_order(order, lanes)
    np.testing.assert_array_equal(by_lane.sum(axis=0), np.ones(count))
    np.testing.assert_array_equal(ends, np.full(lanes, -1))


@njit(parallel=True)
def _take_in_order(order, lanes):
    counter = np.zeros(1, dtype=np.int64)
    by_lane = np.zeros((lanes, order.shape[0]), dtype=np.int64)
    ends = np.zeros(lanes, dtype=np.int64)
    for lane in prange(lanes):
        while True:
            item = next_taken(counter, order)
            if item < 0:
                ends[lane] = item
                break
            by_lane[lane, item] += 1
    return by_lane, ends


CACHED_SCRIPT = """
import warnings
from numba.core.errors import NumbaWarning
import fastnewton
from fastnewton.kernels import small_newton, small_softmax_relu
warnings.filterwarnings("error", category=NumbaWarning)  # as "Cannot cache compiled function ..."
for model in ("softmax", "relu_softmax", "softmax_relu"):
    made = [fastnewton.make_problem(80, 6, model=model, noise=0.05, seed=seed) for seed in range(2)]
    fastnewton.solve_many([(p.C, p.b, p.V) if model == "softmax_relu" else (p.C, p.b) for p in made], model=model)
for loops in (small_newton.solve_small_problems, small_softmax_relu.solve_relu_loops):
    print(sum(loops.stats.cache_hits.values()), sum(loops.stats.cache_misses.values()))
"""


def test_the_compiled_newton_loops_load_from_the_disk_cache():
    # newton_loop is inlined into each model's loop with the model's functions: passed to a compiled (not
    # inlined) function as values, they would make Numba refuse to cache its callers ("dynamic globals").
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)  # a coverage run disables the JIT: there would be no cache to read
    for _ in range(2):  # the first run may compile (and write the cache), the second must only load
        run = subprocess.run([sys.executable, "-c", CACHED_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "0", "1", "0"], run.stdout
