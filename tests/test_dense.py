"""kernels/dense.py (dense_matvec, dense_rmatmat, dense_sandwich_vector(s)) and DenseMatrix.matvec / rmatmat / matmat / sandwich
against NumPy one-liners, and the scoped BLAS threads of the sandwich.

Tolerances: the kernels accumulate in float64 for float32 and float64 A alike
(float32 → float64 is exact), so the bounds use np.finfo(np.float64).eps with the
summation bound of naive.assert_within_rounding (~ n_terms·eps·Σ|terms|).
"""
import numpy as np
import pytest
import threadpoolctl
from numba import njit

import naive
from fastnewton import matrix as matrix_module
from fastnewton.chunking import chunk_rows as real_chunk_rows
from fastnewton.kernels.dense import dense_matvec, dense_rmatmat
from fastnewton.kernels.simd import fused_multiply_add
from fastnewton.matrix import DENSE_SANDWICH_BLOCK, DenseMatrix
from fastnewton.threads import blas_threads, single_threaded_blas, thread_limits

DTYPES = [np.float32, np.float64]


def _random_dense(rng, n, d, dtype, zero_rows=False, zero_columns=False):
    A = rng.standard_normal((n, d))
    if zero_rows:
        A[::3] = 0.0
    if zero_columns:
        A[:, 1::3] = 0.0
    return A.astype(dtype)


def _layout(A, layout):
    if layout == "C":
        return np.ascontiguousarray(A)
    if layout == "F":
        return np.asfortranarray(A)
    # every other row and column of a twice-as-large array: non-contiguous in both axes
    big = np.zeros((2 * A.shape[0], 2 * A.shape[1]), dtype=A.dtype)
    big[::2, ::2] = A
    return big[::2, ::2]


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matvec_matches_numpy(dtype, layout):
    rng = np.random.default_rng(10)
    n, d = 41, 9
    A = _layout(_random_dense(rng, n, d, dtype, zero_rows=True, zero_columns=True), layout)
    x = rng.standard_normal(d)
    out = np.full(n, np.nan)
    dense_matvec(A, x, out)
    A64 = A.astype(np.float64)
    naive.assert_within_rounding(out, A64 @ x, np.abs(A64) @ np.abs(x), d)
    assert np.all(out[::3] == 0.0)


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_rows, zero_columns", [(False, False), (True, True)], ids=["full", "zeros"])
def test_dense_rmatmat_matches_numpy(dtype, chunk_rows, zero_rows, zero_columns):
    rng = np.random.default_rng(11)
    n, d, k = 41, 9, 3
    A = _random_dense(rng, n, d, dtype, zero_rows=zero_rows, zero_columns=zero_columns)
    Q = rng.standard_normal((n, k))
    out = np.full((d, k), np.nan)
    dense_rmatmat(A, Q, real_chunk_rows(n) if chunk_rows is None else chunk_rows, out)
    A64 = A.astype(np.float64)
    # n products per entry plus one add per chunk
    naive.assert_within_rounding(out, A64.T @ Q, np.abs(A64).T @ np.abs(Q), 2 * n)
    if zero_columns:
        assert np.all(out[1::3] == 0.0)


def test_dense_kernels_accept_read_only_and_f_ordered_inputs():
    rng = np.random.default_rng(12)
    n, d = 30, 5
    A = rng.standard_normal((n, d))
    A.flags.writeable = False
    x = rng.standard_normal(d)
    x.flags.writeable = False
    Q = np.asfortranarray(rng.standard_normal((n, 4)))
    u = np.empty(n)
    dense_matvec(A, x, u)
    naive.assert_within_rounding(u, A @ x, np.abs(A) @ np.abs(x), d)
    G = np.empty((d, 4))
    dense_rmatmat(A, Q, 4, G)
    naive.assert_within_rounding(G, A.T @ Q, np.abs(A).T @ np.abs(Q), 2 * n)


@pytest.mark.parametrize("k", [1, 10])
def test_dense_rmatmat_any_width(k):
    rng = np.random.default_rng(13)
    n, d = 25, 4
    A = rng.standard_normal((n, d))
    Q = rng.standard_normal((n, k))
    out = np.empty((d, k))
    dense_rmatmat(A, Q, 6, out)
    naive.assert_within_rounding(out, A.T @ Q, np.abs(A).T @ np.abs(Q), 2 * n)


def test_dense_rmatmat_three_columns_have_the_general_loops_bits():
    """k = 3 (the model's columns) runs its own loop; each column's sum keeps the general loop's
    order, so the bits equal those of the same columns inside a k = 4 product."""
    rng = np.random.default_rng(17)
    n, d = 53, 11
    A = rng.standard_normal((n, d))
    Q = rng.standard_normal((n, 4))
    three, four = np.empty((d, 3)), np.empty((d, 4))
    dense_rmatmat(A, np.ascontiguousarray(Q[:, :3]), 7, three)
    dense_rmatmat(A, Q, 7, four)
    np.testing.assert_array_equal(three, four[:, :3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [3, 4])
def test_one_load_loops_have_the_same_bits_at_every_width(dtype, k, run_with_threads):
    """``chunk_rmatmat``'s one-load three- and four-column loops (small problems; passes over C up to
    ONE_LOAD_MAX_WIDTH columns) and its general loop (wider passes) sum each column in row order:
    the same bits, so ``dense_rmatmat`` on either side of the width rule equals the one-load chunks
    summed in chunk order, with one thread as with two."""
    from fastnewton.kernels.dense import ONE_LOAD_MAX_WIDTH, chunk_rmatmat

    rng = np.random.default_rng(29)
    n, chunk_rows = 61, 8
    for d in (5, ONE_LOAD_MAX_WIDTH, ONE_LOAD_MAX_WIDTH + 1, 131):
        A = rng.standard_normal((n, d)).astype(dtype)
        A[::5] = 0.0
        Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-20, 20, (n, k)))
        acc, flat = np.empty((k, d)), np.empty(k * d)
        expected = np.zeros((d, k))
        for start in range(0, n, chunk_rows):
            chunk_rmatmat(A, Q, start, min(n, start + chunk_rows), acc, flat, True)
            one_load = flat.reshape(d, k).copy()
            chunk_rmatmat(A, Q, start, min(n, start + chunk_rows), acc, flat, False)
            np.testing.assert_array_equal(flat.reshape(d, k), one_load)
            expected += one_load
        for threads in (1, 2):
            out = np.empty((d, k))
            run_with_threads(threads, lambda: dense_rmatmat(A, Q, chunk_rows, out))
            np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled_chunk_rmatmat_has_chunk_rmatmats_bits(dtype):
    """``tiled_chunk_rmatmat`` (register tiles over blocks of TILE_ROWS rows: the small problems' Cᵀ Q) equals
    ``chunk_rmatmat``'s partial bit for bit (each entry's terms in row order from 0.0), for Q of 1 to 19 columns (more
    than one tile's height) and widths that take every run (8-wide, 4-wide, single columns), chunks that span
    several blocks and start inside C, and rows of zeros; acc is overwritten."""
    from fastnewton.kernels.dense import TILE_ROWS, chunk_rmatmat, tiled_chunk_rmatmat

    rng = np.random.default_rng(37)
    n = 2 * TILE_ROWS + 41
    for d in (1, 3, 5, 8, 13, 48, 63, 64, 70):
        A = (rng.standard_normal((n, d)) * np.exp(rng.uniform(-20, 20, (n, d)))).astype(dtype)
        A[::7] = 0.0
        for k in (1, 2, 3, 4, 5, 9, 19):
            Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-20, 20, (n, k)))
            for start, stop in ((0, n), (17, n - 3), (TILE_ROWS, TILE_ROWS + 1)):
                flat = np.empty(d * k)
                chunk_rmatmat(A, Q, start, stop, np.empty((k, d)), flat, False)
                acc = np.full((k, d), np.nan)
                tiled_chunk_rmatmat(A, Q, start, stop, acc)
                np.testing.assert_array_equal(acc.T, flat.reshape(d, k))


@njit
def _entry_sums_fused(A, weights, d):
    """Σᵢ A[i, j]·(wᵢ·A[i, l]) for j ≤ l < d, entry by entry in increasing i by fused multiply-adds (compiled
    ``fused_multiply_add``, itself tested against exact fractions in test_simd.py)."""
    out = np.full((d, d), np.nan)
    for j in range(d):
        for l in range(j, d):
            total = 0.0
            for i in range(A.shape[0]):
                total = fused_multiply_add(A[i, j], weights[i] * A[i, l], total)
            out[j, l] = total
    return out


def test_weighted_gram_upper_has_each_entrys_scalar_sum():
    """``weighted_gram_upper`` (the small problems' dense sandwich, by register tiles): every entry j ≤ l < d is
    Σᵢ A[i, j]·(wᵢ·A[i, l]) summed in increasing i from 0.0 by fused multiply-adds, bit for bit, for every remainder
    of d past whole tiles (those of up to GRAM_REMAINDER_BY_COLUMNS columns formed down their columns and mirrored,
    4-wide ones, the rest 8 wide), d below one tile too; A padded with zeros to ``gram_tiles_width``, weights of both
    signs and 0; rows in one block of GRAM_BLOCK_BYTES and in several (each tile's sums continued from block to
    block: still one pass's bits)."""
    from fastnewton.kernels.dense import GRAM_BLOCK_BYTES, gram_tiles_width, weighted_gram_upper

    rng = np.random.default_rng(41)
    dims = list(range(1, 21)) + [31, 32, 33, 34, 35, 36, 37, 41, 47, 48, 49, 63, 64, 65]
    for n in (0, 37, 3 * GRAM_BLOCK_BYTES // (8 * 64) + 5):
        for d in dims if n < 100 else [1, 5, 12, 33, 48, 59, 64, 65]:
            width = gram_tiles_width(n, d)
            A = np.zeros((n, width))
            A[:, :d] = rng.standard_normal((n, d)) * np.exp(rng.uniform(-20, 20, (n, d)))
            weights = rng.standard_normal(n) * np.exp(rng.uniform(-5, 5, n))
            weights[::6] = 0.0
            out = np.full((width, width), np.nan)
            weighted_gram_upper(A, weights, d, out)
            upper = np.triu_indices(d)
            np.testing.assert_array_equal(out[:d, :d][upper], _entry_sums_fused(A, weights, d)[upper], err_msg=(n, d))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matrix_with_real_chunking(dtype):
    """DenseMatrix with n large enough that its own chunk_rows gives several chunks."""
    rng = np.random.default_rng(14)
    n, d = 10_000, 6
    A = _random_dense(rng, n, d, dtype, zero_rows=True)
    C = DenseMatrix(A)
    assert C._chunk_rows < n, "the test must exercise several chunks"
    assert (C.n, C.d, C.nnz) == (n, d, n * d)
    A64 = A.astype(np.float64)
    x = rng.standard_normal(d)
    naive.assert_within_rounding(C.matvec(x), A64 @ x, np.abs(A64) @ np.abs(x), d)
    Q = rng.standard_normal((n, 3))
    naive.assert_within_rounding(C.rmatmat(Q), A64.T @ Q, np.abs(A64).T @ np.abs(Q), 2 * n)
    np.testing.assert_array_equal(C.rows(np.array([5, 0, 17])), A64[[5, 0, 17]])


@pytest.mark.parametrize("n", [23, DENSE_SANDWICH_BLOCK + 77], ids=["one_block", "two_blocks"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matrix_matmat(dtype, n):
    """C Z by blocked BLAS: float32 blocks are widened to float64 before the product."""
    rng = np.random.default_rng(16)
    d, r = 6, 3
    A = _random_dense(rng, n, d, dtype, zero_rows=True)
    Z = np.asfortranarray(rng.standard_normal((d, r)))
    out = DenseMatrix(A).matmat(Z)
    A64 = A.astype(np.float64)
    naive.assert_within_rounding(out, A64 @ Z, np.abs(A64) @ np.abs(Z), d)
    assert np.all(out[::3] == 0.0)


@pytest.mark.parametrize("chunk_rows", [3, None], ids=["chunk3", "real"])
def test_dense_kernels_bitwise_equal_with_1_and_2_threads(chunk_rows, run_with_threads):
    rng = np.random.default_rng(15)
    n, d, k = 10_000, 8, 3
    A = rng.standard_normal((n, d))
    x = rng.standard_normal(d)
    # widely varying magnitudes so any change of summation order would change the low bits
    Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-10, 10, size=(n, 1)))
    rows_per_chunk = real_chunk_rows(n) if chunk_rows is None else chunk_rows

    def passes():
        u = np.empty(n)
        dense_matvec(A, x, u)
        G = np.empty((d, k))
        dense_rmatmat(A, Q, rows_per_chunk, G)
        return u, G

    u1, G1 = run_with_threads(1, passes)
    u2, G2 = run_with_threads(2, passes)
    np.testing.assert_array_equal(u1, u2)
    np.testing.assert_array_equal(G1, G2)


# ---------------------------------------------------------------------------------------------
# The dense sandwich by SYRK (DenseMatrix.sandwich / sandwich_rows) and its BLAS threads
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_syrk_sandwich_matches_outer_products(dtype):
    """Mixed-sign and zero weights over several row blocks; gathered rows with repeats; exactly symmetric.
    Each entry sums n products (√|w| scaling rounds once more per factor): the naive summation bound."""
    rng = np.random.default_rng(16)
    n, d = 2 * DENSE_SANDWICH_BLOCK + 17, 7
    A = _random_dense(rng, n, d, dtype, zero_rows=True)
    w = rng.standard_normal(n)
    w[::5] = 0.0
    A64 = A.astype(np.float64)
    scale = np.abs(A64).T @ (np.abs(w)[:, None] * np.abs(A64))
    H = DenseMatrix(A).sandwich(w)
    naive.assert_within_rounding(H, A64.T @ (w[:, None] * A64), scale, n + 4)
    assert np.array_equal(H, H.T)
    rows = rng.integers(0, n, size=300)
    weights = rng.standard_normal(300)
    H_rows = DenseMatrix(A).sandwich_rows(rows, weights)
    naive.assert_within_rounding(H_rows, naive.sandwich(A64[rows], weights),
                                 np.abs(A64[rows]).T @ (np.abs(weights)[:, None] * np.abs(A64[rows])), 300 + 4)
    assert np.array_equal(H_rows, H_rows.T)


@pytest.mark.parametrize("count", [0, 1, 5, 8192, 8193, 13127, 100_000, 10**6])
def test_syrk_blocks_are_a_power_of_two_of_near_equal_slices(count):
    """``syrk_parts``: the positions 0..count−1 once each, in order, in 2ᵏ slices of at most the block size
    whose lengths differ by at most one block's rounding (so 2, 4, … threads share them evenly)."""
    parts = matrix_module.syrk_parts(count)
    assert [i for part in parts for i in range(part.start, part.stop)] == list(range(count))
    if count:
        sizes = [part.stop - part.start for part in parts]
        assert len(parts) & (len(parts) - 1) == 0 and max(sizes) <= DENSE_SANDWICH_BLOCK
        assert max(sizes) - min(sizes) <= len(parts)
        assert len(parts) == 1 or max(sizes) > DENSE_SANDWICH_BLOCK // 2


@pytest.mark.parametrize("count, width, blocks", [(4096, 64, 1), (7303, 1026, 2), (100, 1026, 1), (13127, 258, 2),
                                                  (100_000, 1026, 16)])
def test_a_large_syrk_is_split_in_two_for_two_threads(count, width, blocks):
    """A SYRK of at least SYRK_SPLIT_FMA multiply-adds is split in (at least) two near-equal halves even
    within one block (the start's 7303-row sample of dense 10⁴ × 1024 ran on one thread); a small one
    stays whole (a pool of threads costs more than it saves)."""
    parts = matrix_module.syrk_parts(count, width=width)
    assert len(parts) == blocks
    assert (count * width * width / 2 >= matrix_module.SYRK_SPLIT_FMA) == (len(parts) > 1)
    assert [i for part in parts for i in range(part.start, part.stop)] == list(range(count))


@pytest.mark.parametrize("dtype", DTYPES)
def test_syrk_sandwich_with_extra_columns_is_the_augmented_rows_sandwich(dtype, run_with_threads):
    """``blocked_syrk_sandwich(..., extra_columns=E)`` (the sampled start's [cᵢ, 1, tᵢ] rows, gathered by
    the kernel from C itself): Σ_t w_t [c_t, e_t][c_t, e_t]ᵀ, bit for bit the sandwich of the augmented rows
    copied out first (what the start did before), the same bits with one thread as with two, and NumPy's
    to the summation bound. Signed and zero weights, repeated rows, several blocks."""
    rng = np.random.default_rng(18)
    n, d, count = 3000, 9, 2 * 1024 + 37
    A = _random_dense(rng, n, d, dtype, zero_rows=True)
    rows = rng.integers(0, n, size=count)
    weights = rng.standard_normal(count)
    weights[::7] = 0.0
    extra = np.column_stack([np.ones(count), rng.standard_normal(count)])
    matrix = DenseMatrix(A)

    def gathered(part):
        return matrix.gathered(rows[part])

    def sandwich():
        return matrix_module.blocked_syrk_sandwich(gathered, weights, d, block_size=1024, extra_columns=extra)

    augmented = np.column_stack([A[rows].astype(np.float64), extra])
    copied = matrix_module.blocked_syrk_sandwich(lambda part: (augmented, np.arange(part.start, part.stop)),
                                                 weights, d + 2, block_size=1024)
    with thread_limits(2):
        two = run_with_threads(2, sandwich)
    with thread_limits(1):
        one = run_with_threads(1, sandwich)
    assert two.shape == (d + 2, d + 2) and np.array_equal(two, copied) and np.array_equal(one, two)
    naive.assert_within_rounding(two, naive.sandwich(augmented, weights),
                                 np.abs(augmented).T @ (np.abs(weights)[:, None] * np.abs(augmented)), count + 4)


def _blas_threads_now():
    return max(info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas")


def test_blas_threads_is_scoped_and_yields_to_concurrent_solves():
    """Inside a solve (BLAS limited to 1) the scoped context raises BLAS to n threads for its block only;
    with a second solve in the process holding the limit it leaves BLAS at 1."""
    with thread_limits(None):
        assert _blas_threads_now() == 1
        with blas_threads(2):
            assert _blas_threads_now() == 2
        assert _blas_threads_now() == 1
        with single_threaded_blas():  # a concurrent solve's hold
            with blas_threads(2):
                assert _blas_threads_now() == 1


def test_dense_sandwich_with_multithreaded_blas_matches_the_default():
    """The bench-only mode (one multi-threaded SYRK per block) sums the same blocks in the same order;
    OpenBLAS splits each SYRK's d × d output among threads (each entry summed whole by one thread), so
    it agrees to rounding (asserted: the summation bound), not necessarily bit for bit on another BLAS."""
    rng = np.random.default_rng(17)
    n, d = DENSE_SANDWICH_BLOCK + 100, 40
    A = rng.standard_normal((n, d))
    w = rng.standard_normal(n)
    C = DenseMatrix(A)
    with thread_limits(2):
        default = C.sandwich(w)
        try:
            matrix_module.DENSE_SANDWICH_BLAS_THREADS = True
            threaded = C.sandwich(w)
        finally:
            matrix_module.DENSE_SANDWICH_BLAS_THREADS = False
    naive.assert_within_rounding(threaded, default, np.abs(A).T @ (np.abs(w)[:, None] * np.abs(A)), n + 4)


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_squares_match_numpy_and_not_the_thread_count(dtype, chunk_rows, monkeypatch, run_with_threads):
    """DenseMatrix.column_squares (kernels/dense.dense_column_squares): Σᵢ C[i, j]² to the summation
    bound, zero columns exactly 0, and the same bits with one thread as with all (fixed chunks)."""
    if chunk_rows is not None:
        monkeypatch.setattr(matrix_module, "chunk_rows", lambda n: chunk_rows)
    rng = np.random.default_rng(14)
    A = _random_dense(rng, 37, 11, dtype, zero_rows=True, zero_columns=True)
    matrix = DenseMatrix(A)
    squares = matrix.column_squares()
    A64 = A.astype(np.float64)
    naive.assert_within_rounding(squares, (A64 * A64).sum(axis=0), (A64 * A64).sum(axis=0), A.shape[0])
    assert np.all(squares[1::3] == 0.0)
    one = run_with_threads(1, lambda: DenseMatrix(A).column_squares())
    assert np.array_equal(one, run_with_threads(2, lambda: DenseMatrix(A).column_squares()))


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sandwich_vector_is_the_two_passes_bit_for_bit(dtype, chunk_rows, monkeypatch, run_with_threads):
    """DenseMatrix.sandwich_vector (one read of C): (Cᵀ(β ⊙ Cv), Cv) with the bits of matvec then rmatmat,
    NumPy's to the summation bound, and the same bits with one thread as with two."""
    if chunk_rows is not None:
        monkeypatch.setattr(matrix_module, "chunk_rows", lambda n: chunk_rows)
    rng = np.random.default_rng(16)
    n, d = 37, 11
    A = _random_dense(rng, n, d, dtype, zero_rows=True, zero_columns=True)
    beta, v = rng.standard_normal(n) * np.exp(rng.uniform(-5, 5, n)), rng.standard_normal(d)
    matrix = DenseMatrix(A)
    product, forward = run_with_threads(2, lambda: matrix.sandwich_vector(beta, v))
    assert np.array_equal(forward, matrix.matvec(v))
    assert np.array_equal(product, matrix.rmatmat((beta * matrix.matvec(v))[:, None])[:, 0])
    one = run_with_threads(1, lambda: matrix.sandwich_vector(beta, v))
    assert np.array_equal(one[0], product) and np.array_equal(one[1], forward)
    A64 = A.astype(np.float64)
    weighted = (A64.T * beta) @ A64
    naive.assert_within_rounding(product, weighted @ v, np.abs(A64.T * beta) @ np.abs(A64) @ np.abs(v), n + d)


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sandwich_vectors_are_each_problems_sandwich_vector_bit_for_bit(dtype, chunk_rows, monkeypatch,
                                                                        run_with_threads):
    """DenseMatrix.sandwich_vectors (``dense_sandwich_vectors``: many problems' products in one parallel region):
    row s is (Cᵀ(βₛ ⊙ C vₛ), C vₛ) with the bits of ``sandwich_vector(βₛ, vₛ)``, NumPy's to the summation bound,
    and the same bits with one thread as with two."""
    if chunk_rows is not None:
        monkeypatch.setattr(matrix_module, "chunk_rows", lambda n: chunk_rows)
    rng = np.random.default_rng(17)
    n, d, r = 37, 11, 5
    A = _random_dense(rng, n, d, dtype, zero_rows=True, zero_columns=True)
    betas = [rng.standard_normal(n) * np.exp(rng.uniform(-5, 5, n)) for _ in range(r)]
    V = rng.standard_normal((r, d))
    matrix = DenseMatrix(A)

    def products():
        forward = np.empty((r, n))
        return matrix.sandwich_vectors(betas, V, forward), forward

    product, forward = run_with_threads(2, products)
    one_product, one_forward = run_with_threads(1, products)
    assert np.array_equal(one_product, product) and np.array_equal(one_forward, forward)
    A64 = A.astype(np.float64)
    for s in range(r):
        single, single_forward = matrix.sandwich_vector(betas[s], V[s])
        assert np.array_equal(product[s], single) and np.array_equal(forward[s], single_forward)
        naive.assert_within_rounding(forward[s], A64 @ V[s], np.abs(A64) @ np.abs(V[s]), d)
        naive.assert_within_rounding(product[s], (A64.T * betas[s]) @ (A64 @ V[s]),
                                     np.abs(A64.T * betas[s]) @ np.abs(A64) @ np.abs(V[s]), n + d)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_squares_ride_a_transposed_pass_bit_for_bit(dtype, chunk_rows, k, monkeypatch, run_with_threads):
    """DenseMatrix.rmatmat of a C whose entries are checked on its first pass (``check_on_first_pass``: the
    fused kernel ``dense_column_squares_and_rmatmat``) gives CᵀQ with the bits of ``dense_rmatmat`` and keeps
    column squares with those of ``dense_column_squares`` (the same chunk partials, summed in chunk order),
    with one thread as with two (d = 70 > ONE_LOAD_MAX_WIDTH takes the three-column loops' path too)."""
    if chunk_rows is not None:
        monkeypatch.setattr(matrix_module, "chunk_rows", lambda n: chunk_rows)
    rng = np.random.default_rng(31)
    for n, d in ((37, 11), (29, 70)):
        A = _random_dense(rng, n, d, dtype, zero_rows=True, zero_columns=True)
        Q = rng.standard_normal((n, k))
        alone = DenseMatrix(A)
        expected_squares, expected = alone.column_squares(), alone.rmatmat(Q)
        for threads in (1, 2):
            fused = DenseMatrix(A)
            seen = []
            fused.check_on_first_pass(seen.append)
            G = run_with_threads(threads, lambda: fused.rmatmat(Q))
            assert np.array_equal(G, expected)
            assert len(seen) == 1 and np.array_equal(seen[0], expected_squares)
            assert np.array_equal(fused.column_squares(), expected_squares)
            run_with_threads(threads, lambda: fused.rmatmat(Q))
            assert len(seen) == 1  # the check ran once


def test_a_pending_check_runs_before_any_read_of_c_returns():
    """Every DenseMatrix operation that reads C runs a pending entry check first (by the column squares of
    their own pass when no transposed pass formed them), and a failed check stays pending."""
    rng = np.random.default_rng(32)
    A = rng.standard_normal((40, 6))
    x, Q, w = rng.standard_normal(6), rng.standard_normal((40, 2)), rng.standard_normal(40)
    operations = {
        "matvec": lambda m: m.matvec(x), "rmatmat": lambda m: m.rmatmat(Q), "sandwich": lambda m: m.sandwich(w),
        "sandwich_vector": lambda m: m.sandwich_vector(w, x), "matvecs": lambda m: m.matvecs(Q[:6]),
        "rmatmats": lambda m: m.rmatmats([Q, Q, Q]), "sandwiches": lambda m: m.sandwiches([w, w, w]),
        "sandwich_rows": lambda m: m.sandwich_rows(np.arange(5), w[:5]), "row_squares": lambda m: m.row_squares(x * x),
        "row_squares_and_matvec": lambda m: m.row_squares_and_matvec(x * x, x), "rows": lambda m: m.rows(np.arange(3)),
        "gathered": lambda m: m.gathered(np.arange(3)), "matmat": lambda m: m.matmat(Q[:6]),
        "column_squares": lambda m: m.column_squares()}

    def refuse(squares):
        raise ValueError("C must contain only finite values (found NaN or Inf)")

    for name, operation in operations.items():
        matrix = DenseMatrix(A)
        matrix.check_on_first_pass(refuse)
        for _ in range(2):  # a failed check stays pending
            with pytest.raises(ValueError, match="finite"):
                operation(matrix)


def _row_order_reference(A, Q, chunk_rows):
    """Aᵀ Q and the column squares as the dense passes sum them: within each chunk every entry gets its rows'
    terms in row order, one scalar at a time; the chunk partials then added in chunk order."""
    n, d = A.shape
    k = Q.shape[1]
    out, squares = np.zeros((d, k)), np.zeros(d)
    for start in range(0, n, chunk_rows):
        acc, square_acc = np.zeros((d, k)), np.zeros(d)
        for i in range(start, min(n, start + chunk_rows)):
            for j in range(d):
                value = np.float64(A[i, j])
                square_acc[j] += value * value
                for t in range(k):
                    acc[j, t] += value * Q[i, t]
        out += acc
        squares += square_acc
    return out, squares


@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_passes_sum_each_chunk_in_row_order(dtype, run_with_threads):
    """``dense_rmatmat`` and ``dense_column_squares_and_rmatmat``: every partial entry gets its terms in row order,
    so both equal a scalar row-by-row reference bit for bit, at widths on both sides of ONE_LOAD_MAX_WIDTH, for
    k = 1 … 5, with several chunk lengths, on one thread and on two."""
    from fastnewton.kernels.dense import ONE_LOAD_MAX_WIDTH, dense_column_squares_and_rmatmat

    rng = np.random.default_rng(31)
    n = 45
    for d in (3, ONE_LOAD_MAX_WIDTH + 1):
        A = rng.standard_normal((n, d)).astype(dtype)
        A[::7] = 0.0
        for k in (1, 2, 3, 5):
            Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-20, 20, (n, k)))
            for chunk_rows in (5, 8, 19, 64):
                expected, expected_squares = _row_order_reference(A, Q, chunk_rows)
                for threads in (1, 2):
                    out, squares, riding = np.empty((d, k)), np.empty(d), np.empty((d, k))
                    run_with_threads(threads, lambda: dense_rmatmat(A, Q, chunk_rows, out))
                    run_with_threads(threads, lambda: dense_column_squares_and_rmatmat(A, Q, chunk_rows, squares,
                                                                                       riding))
                    np.testing.assert_array_equal(out, expected)
                    np.testing.assert_array_equal(riding, expected)
                    np.testing.assert_array_equal(squares, expected_squares)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matvec_sums_each_row_in_four_lanes(dtype):
    """u = Ax with each row summed as ``row_dot`` states (lane k over j ≡ k mod 4 in increasing j, then
    (c₀ + c₁) + (c₂ + c₃)), bit for bit, at every tail length d mod 4, for contiguous rows (4-wide vector code)
    and rows of a strided view (the scalar loop)."""
    rng = np.random.default_rng(37)
    n = 6
    for d in (1, 2, 3, 4, 5, 6, 7, 256, 259):
        A = (rng.standard_normal((n, 2 * d)) * np.exp(rng.uniform(-30, 30, (n, 2 * d)))).astype(dtype)
        x = rng.standard_normal(d) * np.exp(rng.uniform(-30, 30, d))
        for matrix in (np.ascontiguousarray(A[:, :d]), A[:, ::2]):
            expected = np.empty(n)
            for i in range(n):
                lanes = [0.0] * 4
                for j in range(d):
                    lanes[j % 4] += np.float64(matrix[i, j]) * x[j]
                expected[i] = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
            out = np.empty(n)
            dense_matvec(matrix, x, out)
            np.testing.assert_array_equal(out, expected)
