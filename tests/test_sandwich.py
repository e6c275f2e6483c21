"""The sandwich Cᵀ diag(β) C: kernels/sandwich.py (csr_sandwich_rows, csr_sandwich_many) and the
sandwich / sandwich_rows methods of CSRMatrix and DenseMatrix.

Reference: the NumPy one-liner A.T @ (β[:, None] * A) on the dense float64 copy.
Tolerances: every implementation accumulates in float64 (float32 values convert
exactly), so the bound is naive.assert_within_rounding with np.finfo(np.float64).eps:
each entry sums at most n·(entries per row)² products whose magnitudes add up to
(|A|ᵀ diag(|β|) |A|)[j, l]. The Hessian must be exactly symmetric, so that is
checked bitwise.
"""
import numpy as np
import pytest

import naive
from fastnewton.chunking import sandwich_chunk_rows
from fastnewton.kernels.sandwich import csr_sandwich_rows, partials_shape
from fastnewton.matrix import (
    DENSE_ROW_FRACTION,
    DENSE_ROW_MIN_NNZ,
    DENSE_SANDWICH_BLOCK,
    CSRMatrix,
    DenseMatrix,
    dense_row_block,
)

DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]


def _beta(rng, n):
    """Mixed signs (β is indefinite far from the optimum) with some exact zeros (skipped rows)."""
    beta = rng.standard_normal(n)
    beta[rng.random(n) < 0.2] = 0.0
    return beta


def csr_sandwich(indptr, indices, data, beta, chunk_rows, out):
    """Cᵀ diag(β) C over every row, as CSRMatrix.sandwich calls the kernel (int64 row positions)."""
    n, d = beta.shape[0], out.shape[0]
    csr_sandwich_rows(indptr, indices, data, np.arange(n, dtype=np.int64), beta, chunk_rows,
                      np.empty(partials_shape(n, chunk_rows, d)), out)


def _reference(A, A_abs, beta):
    return A.T @ (beta[:, None] * A), A_abs.T @ (np.abs(beta)[:, None] * A_abs)


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_sandwich_matches_numpy(dtype, index_dtype, chunk_rows, csr_case, random_csr):
    rng = np.random.default_rng(20)
    n, d, per_row = 47, 8, 6
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype,
                                       max_per_row=per_row, **csr_case)
    beta = _beta(rng, n)
    out = np.full((d, d), np.nan)
    csr_sandwich(indptr, indices, data, beta, sandwich_chunk_rows(n, d, n * d) if chunk_rows is None else chunk_rows,
                 out)
    A = naive.to_dense(indptr, indices, data, (n, d))
    A_abs = naive.to_dense(indptr, indices, np.abs(data), (n, d))
    ref, scale = _reference(A, A_abs, beta)
    naive.assert_within_rounding(out, ref, scale, n * per_row ** 2 + n)
    np.testing.assert_array_equal(out, out.T)
    unused = ~np.any(A_abs > 0, axis=0)
    assert np.all(out[unused] == 0.0) and np.all(out[:, unused] == 0.0)


def test_csr_sandwich_duplicates_count_twice_on_the_diagonal():
    """One row storing column 0 twice (values 1 and 2) is the single entry 3: β·9, not β·(1 + 4)."""
    indptr = np.array([0, 2], dtype=np.int32)
    indices = np.array([0, 0], dtype=np.int32)
    data = np.array([1.0, 2.0])
    out = np.empty((1, 1))
    csr_sandwich(indptr, indices, data, np.array([0.5]), 1, out)
    assert out[0, 0] == 4.5


def test_csr_sandwich_matches_outer_product_sum(random_csr):
    """Against naive.sandwich (Σᵢ βᵢ aᵢ aᵢᵀ, one outer product per row) as a second, independent route."""
    rng = np.random.default_rng(21)
    n, d = 30, 5
    indptr, indices, data = random_csr(rng, n, d, duplicates=True, unsorted=True, empty_rows=True)
    beta = _beta(rng, n)
    out = np.empty((d, d))
    csr_sandwich(indptr, indices, data, beta, 4, out)
    A_abs = naive.to_dense(indptr, indices, np.abs(data), (n, d))
    naive.assert_within_rounding(out, naive.sandwich(naive.to_dense(indptr, indices, data, (n, d)), beta),
                                 A_abs.T @ (np.abs(beta)[:, None] * A_abs), n * 36 + n)


def test_csr_sandwich_read_only_inputs(random_csr):
    rng = np.random.default_rng(22)
    n, d = 20, 6
    indptr, indices, data = random_csr(rng, n, d)
    beta = _beta(rng, n)
    for array in (indptr, indices, data, beta):
        array.flags.writeable = False
    out = np.empty((d, d))
    csr_sandwich(indptr, indices, data, beta, 3, out)
    A = naive.to_dense(indptr, indices, data, (n, d))
    ref, scale = _reference(A, np.abs(A), beta)
    naive.assert_within_rounding(out, ref, scale, n * 36 + n)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_matrix_sandwich_with_real_chunking(dtype, index_dtype, random_csr):
    rng = np.random.default_rng(23)
    n, d, per_row = 5_000, 9, 4
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, max_per_row=per_row,
                                       empty_rows=True, duplicates=True, unsorted=True)
    C = CSRMatrix(indptr, indices, data, (n, d))
    assert C._sandwich_chunk_rows < n, "the test must exercise several chunks"
    beta = _beta(rng, n)
    H = C.sandwich(beta)
    A = naive.to_dense(indptr, indices, data, (n, d))
    ref, scale = _reference(A, naive.to_dense(indptr, indices, np.abs(data), (n, d)), beta)
    naive.assert_within_rounding(H, ref, scale, n * per_row ** 2 + n)
    np.testing.assert_array_equal(H, H.T)


def test_a_sandwich_with_little_work_per_partial_entry_still_runs_as_two_chunks():
    """Below MIN_PAIRS_PER_PARTIAL_ENTRY pairs per entry of a partial, a sandwich with enough rows and at least
    MIN_PAIRS_PER_PARALLEL_PARTIAL_ENTRY gets two chunks (two threads), not one; one chunk below that or on
    few rows; and the rule reads only (n, d, pair work)."""
    from fastnewton.chunking import MIN_CHUNK_ROWS, MIN_PAIRS_PER_PARALLEL_PARTIAL_ENTRY, MIN_PAIRS_PER_PARTIAL_ENTRY

    n, d = 10**6, 1024
    pairs = 15 * n  # 5 per row: ~14 pairs per partial entry, below MIN_PAIRS_PER_PARTIAL_ENTRY
    assert MIN_PAIRS_PER_PARALLEL_PARTIAL_ENTRY * d * d <= pairs < MIN_PAIRS_PER_PARTIAL_ENTRY * d * d
    assert -(-n // sandwich_chunk_rows(n, d, pairs)) == 2
    assert sandwich_chunk_rows(n, d, MIN_PAIRS_PER_PARALLEL_PARTIAL_ENTRY * d * d - 1) == n
    few = 2 * MIN_CHUNK_ROWS - 1
    assert sandwich_chunk_rows(few, d, pairs) == few


def test_two_chunk_csr_sandwich_matches_numpy_and_is_bitwise_equal_with_1_and_2_threads(run_with_threads,
                                                                                        random_csr):
    """CSRMatrix's own chunking at a shape the two-chunk floor splits (fewer pairs per partial entry than
    MIN_PAIRS_PER_PARTIAL_ENTRY)."""
    rng = np.random.default_rng(29)
    n, d = 20_000, 100
    indptr, indices, data = random_csr(rng, n, d, max_per_row=6, empty_rows=True)
    C = CSRMatrix(indptr, indices, data, (n, d))
    assert -(-n // C._sandwich_chunk_rows) == 2, "the shape must fall under the two-chunk floor"
    beta = _beta(rng, n) * np.exp(rng.uniform(-10, 10, size=n))
    H1 = run_with_threads(1, lambda: C.sandwich(beta))
    H2 = run_with_threads(2, lambda: C.sandwich(beta))
    np.testing.assert_array_equal(H1, H2)
    A = naive.to_dense(indptr, indices, data, (n, d))
    ref, scale = _reference(A, naive.to_dense(indptr, indices, np.abs(data), (n, d)), beta)
    naive.assert_within_rounding(H1, ref, scale, n * 6 ** 2 + n)


@pytest.mark.parametrize("n", [37, 2 * DENSE_SANDWICH_BLOCK + 123], ids=["one_block", "three_blocks"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matrix_sandwich(dtype, n):
    rng = np.random.default_rng(24)
    d = 7
    A = rng.standard_normal((n, d)).astype(dtype)
    A[:, 3] = 0.0
    A[::5] = 0.0
    beta = _beta(rng, n)
    H = DenseMatrix(A).sandwich(beta)
    A64 = A.astype(np.float64)
    ref, scale = _reference(A64, np.abs(A64), beta)
    # GEMM per block, blocks added: n products per entry plus the block sums and the symmetrising average
    naive.assert_within_rounding(H, ref, scale, n + n // DENSE_SANDWICH_BLOCK + 2)
    np.testing.assert_array_equal(H, H.T)
    assert np.all(H[3] == 0.0) and np.all(H[:, 3] == 0.0)


@pytest.mark.parametrize("signs", ["mixed", "all_negative", "all_zero"])
def test_dense_matrix_sandwich_by_sign_bitwise_equal_with_1_and_2_threads(signs, run_with_threads):
    """The rows are split by the sign of β into one buffer per thread: each sign alone, and no rows at all."""
    rng = np.random.default_rng(25)
    n, d = DENSE_SANDWICH_BLOCK + 77, 6
    A = rng.standard_normal((n, d)).astype(np.float32)
    beta = {"mixed": _beta(rng, n), "all_negative": -np.abs(_beta(rng, n)), "all_zero": np.zeros(n)}[signs]
    beta_before = beta.copy()
    H1 = run_with_threads(1, lambda: DenseMatrix(A).sandwich(beta))
    H2 = run_with_threads(2, lambda: DenseMatrix(A).sandwich(beta))
    np.testing.assert_array_equal(H1, H2)
    np.testing.assert_array_equal(beta, beta_before)
    A64 = A.astype(np.float64)
    ref, scale = _reference(A64, np.abs(A64), beta)
    naive.assert_within_rounding(H1, ref, scale, n + 2)
    if signs == "all_zero":
        assert np.all(H1 == 0.0)


def test_sandwich_same_matrix_dense_and_csr(random_csr):
    """The two formats agree on one matrix (the driver must not care which it holds)."""
    rng = np.random.default_rng(25)
    n, d = 300, 6
    indptr, indices, data = random_csr(rng, n, d, max_per_row=4, duplicates=True, unsorted=True)
    A = naive.to_dense(indptr, indices, data, (n, d))
    beta = _beta(rng, n)
    H_csr = CSRMatrix(indptr, indices, data, (n, d)).sandwich(beta)
    H_dense = DenseMatrix(A).sandwich(beta)
    naive.assert_within_rounding(H_csr, H_dense, _reference(np.abs(A), np.abs(A), beta)[1], n * 16 + n)


@pytest.mark.parametrize("chunk_rows", [3, None], ids=["chunk3", "real"])
def test_csr_sandwich_bitwise_equal_with_1_and_2_threads(chunk_rows, run_with_threads, random_csr):
    rng = np.random.default_rng(26)
    n, d = 6_000, 10
    indptr, indices, data = random_csr(rng, n, d, max_per_row=5, empty_rows=True, duplicates=True,
                                       unsorted=True)
    # widely varying magnitudes so any change of summation order would change the low bits
    beta = _beta(rng, n) * np.exp(rng.uniform(-10, 10, size=n))
    rows_per_chunk = sandwich_chunk_rows(n, d, n * d) if chunk_rows is None else chunk_rows

    def sandwich():
        out = np.empty((d, d))
        csr_sandwich(indptr, indices, data, beta, rows_per_chunk, out)
        return out

    H1 = run_with_threads(1, sandwich)
    H2 = run_with_threads(2, sandwich)
    np.testing.assert_array_equal(H1, H2)


# -- the sampled sandwich Σ_t w_t C_{rows[t]}ᵀ C_{rows[t]} ---------------------------------------
def _sample(rng, n, size, index_dtype=np.int64):
    """Row positions with repeats, in no particular order, and weights of both signs with some zeros."""
    rows = rng.integers(0, n, size=size).astype(index_dtype)
    rows[: min(3, size)] = rows[0]
    return rows, _beta(rng, size)


def _sampled_reference(A, A_abs, rows, weights):
    G, G_abs = A[rows], A_abs[rows]
    return G.T @ (weights[:, None] * G), G_abs.T @ (np.abs(weights)[:, None] * G_abs)


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_sandwich_rows_matches_numpy(dtype, index_dtype, chunk_rows, csr_case, random_csr):
    rng = np.random.default_rng(27)
    n, d, per_row, size = 47, 8, 6, 30
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype,
                                       max_per_row=per_row, **csr_case)
    rows, weights = _sample(rng, n, size, index_dtype)
    out = np.full((d, d), np.nan)
    chunk = sandwich_chunk_rows(size, d, size * d) if chunk_rows is None else chunk_rows
    csr_sandwich_rows(indptr, indices, data, rows, weights, chunk, np.empty(partials_shape(size, chunk, d)), out)
    A = naive.to_dense(indptr, indices, data, (n, d))
    ref, scale = _sampled_reference(A, naive.to_dense(indptr, indices, np.abs(data), (n, d)), rows, weights)
    naive.assert_within_rounding(out, ref, scale, size * per_row ** 2 + size)
    np.testing.assert_array_equal(out, out.T)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_sandwich_rows_dense_and_csr(dtype, random_csr):
    rng = np.random.default_rng(29)
    n, d, size = 2_000, 7, 1_500
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, max_per_row=4, empty_rows=True,
                                       duplicates=True, unsorted=True)
    A = naive.to_dense(indptr, indices, data, (n, d))
    A_abs = naive.to_dense(indptr, indices, np.abs(data), (n, d))
    rows, weights = _sample(rng, n, size)
    ref, scale = _sampled_reference(A, A_abs, rows, weights)
    H_csr = CSRMatrix(indptr, indices, data, (n, d)).sandwich_rows(rows, weights)
    naive.assert_within_rounding(H_csr, ref, scale, size * 16 + size)
    np.testing.assert_array_equal(H_csr, H_csr.T)
    # the dense format stores A in the storage dtype (summed duplicates rounded to float32 there),
    # so its reference is built from that rounded copy
    H_dense = DenseMatrix(A.astype(dtype)).sandwich_rows(rows, weights)
    A32 = A.astype(dtype).astype(np.float64)
    ref_dense, scale_dense = _sampled_reference(A32, np.abs(A32), rows, weights)
    naive.assert_within_rounding(H_dense, ref_dense, scale_dense, size + 2)
    np.testing.assert_array_equal(H_dense, H_dense.T)


def test_dense_sandwich_rows_over_several_blocks():
    rng = np.random.default_rng(30)
    n, d = 500, 5
    A = rng.standard_normal((n, d))
    rows, weights = _sample(rng, n, 2 * DENSE_SANDWICH_BLOCK + 5)
    H = DenseMatrix(A).sandwich_rows(rows, weights)
    ref, scale = _sampled_reference(A, np.abs(A), rows, weights)
    naive.assert_within_rounding(H, ref, scale, rows.shape[0] + 5)


def test_csr_sandwich_rows_bitwise_equal_with_1_and_2_threads(run_with_threads, random_csr):
    rng = np.random.default_rng(31)
    n, d, size = 4_000, 10, 5_000
    indptr, indices, data = random_csr(rng, n, d, max_per_row=5, empty_rows=True, duplicates=True,
                                       unsorted=True)
    rows, weights = _sample(rng, n, size)
    weights *= np.exp(rng.uniform(-10, 10, size=size))
    chunk = sandwich_chunk_rows(size, d, size * d)
    assert chunk < size

    def sampled():
        out = np.empty((d, d))
        csr_sandwich_rows(indptr, indices, data, rows, weights, chunk, np.empty(partials_shape(size, chunk, d)), out)
        return out

    np.testing.assert_array_equal(run_with_threads(1, sampled), run_with_threads(2, sampled))


# -- long rows: gathered into dense blocks and sandwiched by GEMM ------------------------------------
def _with_long_rows(random_csr, rng, n_short, n_long, d, long_nnz, dtype=np.float64, index_dtype=np.int32):
    """Short awkward rows (empty, duplicate, unsorted) interleaved with rows of ``long_nnz`` entries
    (columns drawn with replacement: duplicates too), so CSRMatrix splits its sandwich."""
    indptr, indices, data = random_csr(rng, n_short, d, dtype=dtype, index_dtype=index_dtype, max_per_row=6,
                                       empty_rows=True, duplicates=True, unsorted=True)
    rows = [(indices[indptr[i]:indptr[i + 1]], data[indptr[i]:indptr[i + 1]]) for i in range(n_short)]
    for position in np.sort(rng.choice(n_short + n_long, size=n_long, replace=False)):
        columns = rng.integers(0, d, size=long_nnz).astype(index_dtype)
        rows.insert(int(position), (columns, rng.standard_normal(long_nnz).astype(dtype)))
    counts = np.array([row[0].size for row in rows])
    indptr = np.zeros(len(rows) + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    return indptr, np.concatenate([row[0] for row in rows]), np.concatenate([row[1] for row in rows])


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_matrix_sandwich_with_dense_long_rows_matches_numpy(dtype, index_dtype, random_csr):
    rng = np.random.default_rng(32)
    n_short, n_long, d, long_nnz = 300, 12, 80, 90
    indptr, indices, data = _with_long_rows(random_csr, rng, n_short, n_long, d, long_nnz, dtype, index_dtype)
    n = indptr.shape[0] - 1
    C = CSRMatrix(indptr, indices, data, (n, d))
    assert long_nnz >= max(DENSE_ROW_MIN_NNZ, DENSE_ROW_FRACTION * d), "the long rows must take the GEMM path"
    assert C._dense_rows.size == n_long and C._sparse_rows.size == n_short
    beta = _beta(rng, n)
    H = C.sandwich(beta)
    A = naive.to_dense(indptr, indices, data, (n, d))
    ref, scale = _reference(A, naive.to_dense(indptr, indices, np.abs(data), (n, d)), beta)
    # each entry: the sparse rows' pair products plus the GEMM's n-term dot products, then the sum of the two
    naive.assert_within_rounding(H, ref, scale, n * long_nnz ** 2 + n)
    np.testing.assert_array_equal(H, H.T)
    # the sampled sandwich splits the same way (repeated rows, long and short, weights of both signs)
    rows, weights = _sample(rng, n, 200, index_dtype)
    rows[:3] = C._dense_rows[0]
    H_rows = C.sandwich_rows(rows, weights)
    ref_rows, scale_rows = _sampled_reference(A, naive.to_dense(indptr, indices, np.abs(data), (n, d)), rows,
                                              weights)
    naive.assert_within_rounding(H_rows, ref_rows, scale_rows, 200 * long_nnz ** 2 + 200)
    np.testing.assert_array_equal(H_rows, H_rows.T)


def test_csr_matrix_sandwich_with_dense_long_rows_bitwise_equal_with_1_and_2_threads(run_with_threads,
                                                                                      random_csr):
    """Several GEMM blocks (single-threaded BLAS each, summed in block order) plus the sparse part."""
    rng = np.random.default_rng(33)
    n_short, d, long_nnz = 6_000, 70, 66
    n_long = 600
    indptr, indices, data = _with_long_rows(random_csr, rng, n_short, n_long, d, long_nnz)
    n = indptr.shape[0] - 1
    C = CSRMatrix(indptr, indices, data, (n, d))
    assert C._dense_rows.size == n_long > dense_row_block(n_long), "the long rows must fill several GEMM blocks"
    beta = _beta(rng, n) * np.exp(rng.uniform(-10, 10, size=n))
    H1 = run_with_threads(1, lambda: C.sandwich(beta))
    H2 = run_with_threads(2, lambda: C.sandwich(beta))
    np.testing.assert_array_equal(H1, H2)
    np.testing.assert_array_equal(H1, H1.T)
    A = naive.to_dense(indptr, indices, data, (n, d))
    ref, scale = _reference(A, naive.to_dense(indptr, indices, np.abs(data), (n, d)), beta)
    naive.assert_within_rounding(H1, ref, scale, n * long_nnz ** 2 + n)


def test_csr_matrix_without_long_rows_uses_the_sparse_kernel_alone(random_csr):
    """No row reaches the GEMM threshold: the sandwich is exactly the sparse kernel's bits over every row."""
    rng = np.random.default_rng(34)
    n, d = 2_000, 300
    indptr, indices, data = random_csr(rng, n, d, max_per_row=60, duplicates=True, unsorted=True, empty_rows=True)
    C = CSRMatrix(indptr, indices, data, (n, d))
    assert C._dense_rows.size == 0
    beta = _beta(rng, n)
    expected = np.empty((d, d))
    csr_sandwich(indptr, indices, data, beta, C._sandwich_chunk_rows, expected)
    np.testing.assert_array_equal(C.sandwich(beta), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_sandwich_reads_sorted_rows_in_place_with_the_bits_of_the_gathered_rows(dtype, random_csr):
    """A row whose columns increase strictly is read in place, any other is gathered (sorted, duplicates
    summed) first: the same entries in the same order, so shuffling a canonical matrix's rows (every
    row then gathered) changes no bit, and a matrix mixing both kinds (sorted rows, shuffled rows,
    duplicates, empty rows, rows of up to 40 entries at d = 48) matches the dense NumPy sandwich."""
    rng = np.random.default_rng(41)
    n, d = 3_000, 48
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, max_per_row=40, empty_rows=True)
    beta = _beta(rng, n) * np.exp(rng.uniform(-5, 5, size=n))
    chunk = sandwich_chunk_rows(n, d, n * d)
    in_place, gathered = np.empty((d, d)), np.empty((d, d))
    csr_sandwich(indptr, indices, data, beta, chunk, in_place)
    shuffled_indices, shuffled_data = indices.copy(), data.copy()
    for i in range(n):
        order = indptr[i] + rng.permutation(indptr[i + 1] - indptr[i])[::-1]
        shuffled_indices[indptr[i]:indptr[i + 1]] = indices[order]
        shuffled_data[indptr[i]:indptr[i + 1]] = data[order]
    assert np.mean(np.diff(indptr) > 1) > 0.5, "most rows must need the gather once shuffled"
    csr_sandwich(indptr, shuffled_indices, shuffled_data, beta, chunk, gathered)
    np.testing.assert_array_equal(in_place, gathered)

    mixed_indices, mixed_data = indices.copy(), data.copy()
    shuffled_rows = rng.random(n) < 0.5
    for i in np.flatnonzero(shuffled_rows):
        mixed_indices[indptr[i]:indptr[i + 1]] = shuffled_indices[indptr[i]:indptr[i + 1]]
        mixed_data[indptr[i]:indptr[i + 1]] = shuffled_data[indptr[i]:indptr[i + 1]]
    duplicated = np.flatnonzero(np.diff(indptr) >= 2)[::7]
    mixed_indices[indptr[duplicated] + 1] = mixed_indices[indptr[duplicated]]  # a repeated column
    mixed = np.empty((d, d))
    csr_sandwich(indptr, mixed_indices, mixed_data, beta, chunk, mixed)
    A = naive.to_dense(indptr, mixed_indices, mixed_data, (n, d))
    ref, scale = _reference(A, naive.to_dense(indptr, mixed_indices, np.abs(mixed_data), (n, d)), beta)
    naive.assert_within_rounding(mixed, ref, scale, n * 40 ** 2 + n)
    np.testing.assert_array_equal(mixed, mixed.T)



@pytest.mark.parametrize("long_rows", [False, True], ids=["short_rows", "with_long_rows"])
@pytest.mark.parametrize("awkward", [False, True], ids=["canonical", "empty_duplicate_unsorted"])
def test_curvature_sandwich_has_the_bits_of_the_sandwich_of_its_weights(awkward, long_rows, run_with_threads,
                                                                          random_csr):
    """CSRMatrix.curvature_sandwich(Q, c, w, β) with β = Q[:, 2] − c·Q[:, 1] + w formed inside the pair loop
    (kernels/sandwich.py csr_curvature_sandwich; with long rows, in β first, which is then returned
    filled): the bits of sandwich(curvature_weights(Q, c, w)), alike with 1 and 2 threads, exactly
    symmetric, and within rounding of the dense NumPy Aᵀ diag(β) A. Q has 4 columns (softmax_relu's Q is
    wider than 3); a fifth of the βᵢ are exactly 0 (rows skipped)."""
    from fastnewton.kernels.softmax import curvature_weights

    rng = np.random.default_rng(41)
    d = 80 if long_rows else 9
    if long_rows:
        indptr, indices, data = _with_long_rows(random_csr, rng, 3_000, 12, d, 90)
    else:
        indptr, indices, data = random_csr(rng, 5_000, d, max_per_row=6, empty_rows=awkward, duplicates=awkward,
                                           unsorted=awkward)
    n = indptr.shape[0] - 1
    C = CSRMatrix(indptr, indices, data, (n, d))
    assert bool(C._dense_rows.size) == long_rows
    assert long_rows or C._sandwich_chunk_rows < n, "the fused kernel must run several chunks"
    Q = rng.standard_normal((n, 4))
    w = np.abs(rng.standard_normal(n))
    c = 0.37
    zero = rng.random(n) < 0.2
    Q[zero, 1], Q[zero, 2] = 0.0, -w[zero]  # β = −w − c·0 + w = 0 exactly
    beta = np.empty(n)
    curvature_weights(Q, c, w, beta)
    assert np.count_nonzero(beta == 0.0) > 0.1 * n
    expected = C.sandwich(beta)

    def fused():
        return C.curvature_sandwich(Q, c, w, np.empty(n))

    one, two = run_with_threads(1, fused), run_with_threads(2, fused)
    np.testing.assert_array_equal(one, expected)
    np.testing.assert_array_equal(two, expected)
    np.testing.assert_array_equal(one, one.T)
    # No row weights (an empty w, ``models.base.kernel_row_weights``): the bits of an all-zero w.
    unweighted = Q.copy()
    unweighted[zero, 2] = 0.0
    zero_w_beta = np.empty(n)
    curvature_weights(unweighted, c, np.zeros(n), zero_w_beta)
    for threads in (1, 2):
        np.testing.assert_array_equal(
            run_with_threads(threads, lambda: C.curvature_sandwich(unweighted, c, np.zeros(0), np.empty(n))),
            C.sandwich(zero_w_beta))
    A = naive.to_dense(indptr, indices, data, (n, d))
    np.testing.assert_array_equal(beta, Q[:, 2] - c * Q[:, 1] + w)
    ref, scale = _reference(A, np.abs(A), beta)
    naive.assert_within_rounding(one, ref, scale, n * 90 ** 2 if long_rows else n * 36 + n)


def test_a_chunk_is_read_in_place_exactly_when_all_its_rows_increase_strictly(random_csr):
    """kernels/sandwich.py ``_sorted_rows`` (the chunk-wide test that lets the full sandwich read rows in
    place) against the NumPy statement "np.diff of each row's columns > 0", over every range of rows of
    matrices with empty rows, a repeated column, one row out of order, and rows whose first column is
    below or above the previous row's last (a fall at a row's first entry is no fault); and
    ``_listed_rows_sorted``: only consecutive listed rows are tested at once."""
    from numba import njit

    from fastnewton.kernels.sandwich import _listed_rows_sorted, _sorted_rows

    sorted_rows = njit(lambda indptr, indices, first, stop: _sorted_rows(indptr, indices, first, stop))
    listed = njit(lambda indptr, indices, rows, first, stop: _listed_rows_sorted(indptr, indices, rows, first, stop))
    rng = np.random.default_rng(5)
    indptr, indices, _ = random_csr(rng, 40, 12, max_per_row=6, empty_rows=True)
    ascending = np.concatenate([np.arange(indptr[i + 1] - indptr[i]) + 2 * i for i in range(40)])
    cases = {"canonical": indices, "ascending_across_rows": ascending.astype(indices.dtype)}
    long_rows = np.flatnonzero(np.diff(indptr) >= 3)
    repeated, swapped = indices.copy(), indices.copy()
    repeated[indptr[long_rows[2]] + 2] = repeated[indptr[long_rows[2]] + 1]
    first = indptr[long_rows[5]]
    swapped[first], swapped[first + 1] = swapped[first + 1], swapped[first]
    cases.update(repeated=repeated, swapped=swapped)
    for name, columns in cases.items():
        row_ok = np.array([np.all(np.diff(columns[indptr[i]:indptr[i + 1]]) > 0) for i in range(40)])
        for start in range(41):
            for stop in range(start, 41):
                assert sorted_rows(indptr, columns, start, stop) == row_ok[start:stop].all(), (name, start, stop)
        every_row = np.arange(40, dtype=np.int64)
        assert listed(indptr, columns, every_row, 3, 29) == row_ok[3:29].all()
        assert not listed(indptr, columns, every_row[::2].copy(), 0, 10)
