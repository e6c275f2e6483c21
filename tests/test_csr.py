"""kernels/csr.py (csr_matvec, csr_rmatmat, csr_rmatmat4, csr_rmatvec, csr_matmat, csr_column_squares,
csr_sandwich_vector) and CSRMatrix.matvec / rmatmat / matmat / column_squares / sandwich_vector against NumPy
one-liners.

Tolerances: the kernels accumulate in float64 whatever the storage dtype (float32
values convert to float64 exactly), so every bound uses np.finfo(np.float64).eps
with the summation bound of naive.assert_within_rounding. A kernel that summed in
float32 would miss these bounds by ~1e9×.
"""
import numpy as np
import pytest

import naive
from fastnewton.chunking import chunk_rows as real_chunk_rows
from fastnewton import matrix as matrix_module
from fastnewton.kernels.csr import (csr_column_squares, csr_dense_rows, csr_matmat, csr_matvec, csr_rmatmat, csr_rmatmat4,
                                   csr_rmatvec)
from fastnewton.kernels.reduce import SERIAL_PARTIAL_ENTRIES, sum_chunk_partials, sum_chunk_partials_serial
from fastnewton.matrix import CSRMatrix

DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]


def _dense(indptr, indices, data, d):
    return naive.to_dense(indptr, indices, data, (indptr.shape[0] - 1, d))


def _abs_dense(indptr, indices, data, d):
    return naive.to_dense(indptr, indices, np.abs(data), (indptr.shape[0] - 1, d))


def _max_row_nnz(indptr):
    return int(np.max(np.diff(indptr), initial=0))


def test_random_csr_really_has_the_awkward_cases(random_csr):
    """The structural variants below are not vacuous: duplicates, disorder, empty rows, zero columns exist."""
    rng = np.random.default_rng(0)
    indptr, indices, data = random_csr(rng, 60, 9, empty_rows=True, zero_columns=True,
                                       duplicates=True, unsorted=True)
    rows = [indices[indptr[i]:indptr[i + 1]] for i in range(60)]
    assert any(row.size == 0 for row in rows)
    assert any(np.unique(row).size < row.size for row in rows)
    assert any(np.any(np.diff(row) < 0) for row in rows)
    assert np.setdiff1d(np.arange(9), indices).size > 0


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_matvec_matches_numpy(dtype, index_dtype, csr_case, random_csr):
    rng = np.random.default_rng(1)
    n, d = 57, 9
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, **csr_case)
    x = rng.standard_normal(d)
    out = np.full(n, np.nan)
    csr_matvec(indptr, indices, data, x, out)
    naive.assert_within_rounding(out, _dense(indptr, indices, data, d) @ x,
                                 _abs_dense(indptr, indices, data, d) @ np.abs(x), _max_row_nnz(indptr))
    empty = np.diff(indptr) == 0
    if np.any(empty):
        assert np.all(out[empty] == 0.0)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_matmat_matches_numpy(dtype, index_dtype, csr_case, random_csr):
    rng = np.random.default_rng(11)
    n, d, r = 57, 9, 4
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, **csr_case)
    Z = rng.standard_normal((d, r))
    out = np.full((n, r), np.nan)
    csr_matmat(indptr, indices, data, Z, out)
    naive.assert_within_rounding(out, _dense(indptr, indices, data, d) @ Z,
                                 _abs_dense(indptr, indices, data, d) @ np.abs(Z), _max_row_nnz(indptr))
    empty = np.diff(indptr) == 0
    assert np.all(out[empty] == 0.0)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_csr_matrix_matmat_any_layout(layout, random_csr):
    rng = np.random.default_rng(12)
    n, d, r = 40, 7, 3
    indptr, indices, data = random_csr(rng, n, d, empty_rows=True, duplicates=True, unsorted=True)
    Z = rng.standard_normal((d, 2 * r))
    Z = {"C": np.ascontiguousarray(Z[:, :r]), "F": np.asfortranarray(Z[:, :r]), "strided": Z[:, ::2]}[layout]
    out = CSRMatrix(indptr, indices, data, (n, d)).matmat(Z)
    naive.assert_within_rounding(out, _dense(indptr, indices, data, d) @ Z,
                                 _abs_dense(indptr, indices, data, d) @ np.abs(Z), 6)


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_rmatmat_matches_numpy(dtype, index_dtype, chunk_rows, csr_case, random_csr):
    rng = np.random.default_rng(2)
    n, d, k = 57, 9, 3
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, **csr_case)
    Q = rng.standard_normal((n, k))
    rows_per_chunk = real_chunk_rows(n) if chunk_rows is None else chunk_rows
    out = np.full((d, k), np.nan)
    csr_rmatmat(indptr, indices, data, Q, rows_per_chunk, out)
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    # each out[j, t] sums at most n·(entries per row) products plus one add per chunk
    naive.assert_within_rounding(out, A.T @ Q, A_abs.T @ np.abs(Q), n * _max_row_nnz(indptr) + n)
    zero_columns = ~np.any(A_abs > 0, axis=0)
    assert np.all(out[zero_columns] == 0.0)


def _run_transposed(kernel, indptr, indices, data, Q, chunk_rows, d):
    """Call one of the three transposed kernels; csr_rmatvec takes q (length n) and fills d × 1."""
    out = np.full((d, Q.shape[1]), np.nan)
    if kernel is csr_rmatvec:
        kernel(indptr, indices, data, np.ascontiguousarray(Q[:, 0]), chunk_rows, out)
    else:
        kernel(indptr, indices, data, Q, chunk_rows, out)
    return out


SPECIALISED = [pytest.param(csr_rmatmat4, 3, id="rmatmat4-k3"), pytest.param(csr_rmatmat4, 4, id="rmatmat4-k4"), pytest.param(csr_rmatvec, 1, id="rmatvec")]


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, k", SPECIALISED)
def test_specialised_transposed_kernels_match_numpy(kernel, k, dtype, index_dtype, chunk_rows, csr_case,
                                                    random_csr):
    rng = np.random.default_rng(7)
    n, d = 57, 9
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, **csr_case)
    Q = rng.standard_normal((n, k))
    out = _run_transposed(kernel, indptr, indices, data, Q, real_chunk_rows(n) if chunk_rows is None else chunk_rows,
                          d)
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    naive.assert_within_rounding(out, A.T @ Q, A_abs.T @ np.abs(Q), n * _max_row_nnz(indptr) + n)


@pytest.mark.parametrize("chunk_rows", [3, 4096])
@pytest.mark.parametrize("kernel, k", SPECIALISED)
def test_specialised_kernels_give_the_generic_bits(kernel, k, chunk_rows, random_csr):
    """csr_rmatmat4 / csr_rmatvec promise the same sums in the same order as csr_rmatmat: equal bits."""
    rng = np.random.default_rng(8)
    n, d = 9_000, 13
    indptr, indices, data = random_csr(rng, n, d, dtype=np.float32, max_per_row=5, empty_rows=True,
                                       duplicates=True, unsorted=True)
    Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-10, 10, size=(n, 1)))
    generic = _run_transposed(csr_rmatmat, indptr, indices, data, Q, chunk_rows, d)
    special = _run_transposed(kernel, indptr, indices, data, Q, chunk_rows, d)
    np.testing.assert_array_equal(special, generic)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "leading"])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_csr_matrix_rmatmat_every_width_and_layout(k, layout, random_csr):
    """CSRMatrix.rmatmat dispatches k = 1 / 2–4 / other to different kernels and accepts any layout of Q
    ("leading": the first k columns of a wider array, as an evaluation's Q[:, :2])."""
    rng = np.random.default_rng(9)
    n, d = 45, 7
    indptr, indices, data = random_csr(rng, n, d, empty_rows=True, duplicates=True, unsorted=True)
    Q = rng.standard_normal((n, 2 * k))
    Q = {"C": np.ascontiguousarray(Q[:, :k]), "F": np.asfortranarray(Q[:, :k]), "strided": Q[:, ::2],
         "leading": np.ascontiguousarray(Q[:, :k + 1])[:, :k]}[layout]
    assert Q.shape == (n, k)
    Q_before = Q.copy()
    out = CSRMatrix(indptr, indices, data, (n, d)).rmatmat(Q)
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    assert out.shape == (d, k)
    naive.assert_within_rounding(out, A.T @ Q, A_abs.T @ np.abs(Q), 2 * n * 6)
    np.testing.assert_array_equal(Q, Q_before)


def test_csr_matrix_rmatmat_two_leading_columns_of_three_give_their_own_bits(random_csr):
    """Q[:, :2] of an n × 3 Q (an evaluation's gradient columns) runs on Q itself, its third column summed in a
    lane of its own and dropped: the bits of the 2 columns' own pass (a zero-padded copy), whatever the third
    column holds, and Q is not modified."""
    rng = np.random.default_rng(10)
    n, d = 5_000, 11
    indptr, indices, data = random_csr(rng, n, d, max_per_row=6, empty_rows=True, duplicates=True, unsorted=True)
    matrix = CSRMatrix(indptr, indices, data, (n, d))
    Q = rng.standard_normal((n, 3)) * np.exp(rng.uniform(-10, 10, size=(n, 1)))
    Q[::7, 2] = np.inf
    Q_before = Q.copy()
    G = matrix.rmatmat(Q[:, :2])
    np.testing.assert_array_equal(G, matrix.rmatmat(np.array(Q[:, :2])))
    np.testing.assert_array_equal(Q, Q_before)
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    naive.assert_within_rounding(G, A.T @ Q[:, :2], A_abs.T @ np.abs(Q[:, :2]), 2 * n * 6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_side_by_side_is_column_stack(dtype):
    """``side_by_side`` (the transposed passes' Q, copied a column at a time): np.column_stack's values, dtype and
    shape, C-contiguous, from views of any layout; a C-contiguous array alone comes back as it is."""
    from fastnewton.matrix import side_by_side

    rng = np.random.default_rng(11)
    wide = rng.standard_normal((31, 5)).astype(dtype)
    blocks = (wide[:, :2], np.asfortranarray(wide[:, 1:4]), wide[:, ::4])
    got = side_by_side(*blocks)
    expected = np.column_stack(blocks)
    assert got.flags.c_contiguous and got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(side_by_side(wide[:, :2]), wide[:, :2])
    alone = np.ascontiguousarray(wide[:, :3])
    assert side_by_side(alone) is alone


@pytest.mark.parametrize("k", [1, 10])
def test_csr_rmatmat_any_width(k, random_csr):
    """k = 1 (hessp's Cᵀ(β ⊙ Cp)) and k = m + 3 = 10 (softmax_relu's Cᵀ[q, U])."""
    rng = np.random.default_rng(3)
    n, d = 40, 6
    indptr, indices, data = random_csr(rng, n, d, duplicates=True, unsorted=True)
    Q = rng.standard_normal((n, k))
    out = np.empty((d, k))
    csr_rmatmat(indptr, indices, data, Q, 7, out)
    naive.assert_within_rounding(out, _dense(indptr, indices, data, d).T @ Q,
                                 _abs_dense(indptr, indices, data, d).T @ np.abs(Q), 2 * n * 6)


def test_csr_kernels_accept_read_only_and_strided_inputs(random_csr):
    """Read-only C and Q (a CSR handed in by the caller) and a strided x / F-ordered Q work unchanged."""
    rng = np.random.default_rng(4)
    n, d = 30, 8
    indptr, indices, data = random_csr(rng, n, d, empty_rows=True)
    for array in (indptr, indices, data):
        array.flags.writeable = False
    x = rng.standard_normal(2 * d)[::2]
    Q = np.asfortranarray(rng.standard_normal((n, 2)))
    Q.flags.writeable = False
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    u = np.empty(n)
    csr_matvec(indptr, indices, data, x, u)
    naive.assert_within_rounding(u, A @ x, A_abs @ np.abs(x), 6)
    G = np.empty((d, 2))
    csr_rmatmat(indptr, indices, data, Q, 4, G)
    naive.assert_within_rounding(G, A.T @ Q, A_abs.T @ np.abs(Q), 2 * n * 6)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_matrix_with_real_chunking(dtype, index_dtype, random_csr):
    """CSRMatrix with n large enough that its own chunk_rows splits the rows into several chunks."""
    rng = np.random.default_rng(5)
    n, d = 10_000, 7
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, max_per_row=4,
                                       empty_rows=True, duplicates=True, unsorted=True)
    C = CSRMatrix(indptr, indices, data, (n, d))
    assert C._chunk_rows < n, "the test must exercise several chunks"
    assert C.nnz == indices.shape[0]
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    x = rng.standard_normal(d)
    naive.assert_within_rounding(C.matvec(x), A @ x, A_abs @ np.abs(x), 4)
    Q = rng.standard_normal((n, 3))
    naive.assert_within_rounding(C.rmatmat(Q), A.T @ Q, A_abs.T @ np.abs(Q), 5 * n)
    view = C.scipy()
    assert view.shape == (n, d) and np.shares_memory(view.data, data)
    # SciPy sums duplicate entries in the storage dtype: the rounding bound uses that dtype's eps
    naive.assert_within_rounding(view.toarray(), A, A_abs, 4, eps=np.finfo(dtype).eps)


@pytest.mark.parametrize("chunk_rows", [3, None], ids=["chunk3", "real"])
def test_csr_kernels_bitwise_equal_with_1_and_2_threads(chunk_rows, run_with_threads, random_csr):
    rng = np.random.default_rng(6)
    n, d, k = 10_000, 11, 3
    indptr, indices, data = random_csr(rng, n, d, max_per_row=5, empty_rows=True, duplicates=True,
                                       unsorted=True)
    rows_per_chunk = real_chunk_rows(n) if chunk_rows is None else chunk_rows
    x = rng.standard_normal(d)
    # large-magnitude, mixed-sign Q so a change of summation order would change the low bits
    Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-10, 10, size=(n, 1)))

    def passes():
        u = np.empty(n)
        csr_matvec(indptr, indices, data, x, u)
        G = np.empty((d, k))
        csr_rmatmat(indptr, indices, data, Q, rows_per_chunk, G)
        G3 = _run_transposed(csr_rmatmat4, indptr, indices, data, Q, rows_per_chunk, d)
        g1 = _run_transposed(csr_rmatvec, indptr, indices, data, Q[:, :1], rows_per_chunk, d)
        CZ = np.empty((n, k))
        csr_matmat(indptr, indices, data, Q[:d], CZ)
        return u, G, G3, g1, CZ

    one = run_with_threads(1, passes)
    two = run_with_threads(2, passes)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_dense_rows_matches_numpy(dtype, index_dtype, csr_case, random_csr):
    """Listed rows (repeats, any order) as dense float64; duplicate entries add up in float64."""
    rng = np.random.default_rng(13)
    n, d = 57, 9
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, **csr_case)
    rows = rng.integers(0, n, size=40).astype(index_dtype)
    rows[:2] = rows[2]
    out = np.full((rows.shape[0], d), np.nan)
    csr_dense_rows(indptr, indices, data, rows, out)
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    naive.assert_within_rounding(out, A[rows], A_abs[rows], _max_row_nnz(indptr))


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_column_squares_is_numpys_sum_in_storage_order(dtype, index_dtype, csr_case, random_csr):
    """Σ of squared stored entries per column: np.bincount's bits (the same sum, in storage order),
    with no copy of the entries (what CSRMatrix.column_squares did before, with two)."""
    rng = np.random.default_rng(14)
    n, d = 61, 9
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, **csr_case)
    out = np.zeros(d)
    csr_column_squares(indices, data, out)
    values = data.astype(np.float64)
    np.testing.assert_array_equal(out, np.bincount(indices, weights=values * values, minlength=d))
    matrix = CSRMatrix(indptr, indices, data, (n, d))
    np.testing.assert_array_equal(matrix.column_squares(), out)


@pytest.mark.parametrize("n_per_row", [1, 2, 3, 7, 10, 11])
def test_csr_matvec_every_row_length(n_per_row, run_with_threads, random_csr):
    """Rows of odd and even length, empty rows, wide magnitudes: 1 and 2 threads give the same bits."""
    rng = np.random.default_rng(14)
    n, d = 5_000, 13
    counts = np.full(n, n_per_row)
    counts[::7] = 0
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = rng.integers(0, d, size=indptr[-1])
    data = rng.standard_normal(indptr[-1]) * np.exp(rng.uniform(-10, 10, size=indptr[-1]))
    x = rng.standard_normal(d)

    def forward():
        out = np.full(n, np.nan)
        csr_matvec(indptr, indices, data, x, out)
        return out

    one = run_with_threads(1, forward)
    np.testing.assert_array_equal(one, run_with_threads(2, forward))
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    naive.assert_within_rounding(one, A @ x, A_abs @ np.abs(x), n_per_row)
    assert np.all(one[::7] == 0.0)


def _storage_order_rows(indptr, indices, data, x):
    """Σ_k data[k]·x[indices[k]] per row, one Python float add at a time in storage order."""
    out = np.empty(indptr.shape[0] - 1)
    for i in range(out.shape[0]):
        acc = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            acc += float(data[k]) * float(x[indices[k]])
        out[i] = acc
    return out


def _storage_order_transposed(indptr, indices, data, Q, chunk_rows, d):
    """Cᵀ Q as the kernels promise to sum it: each chunk's entries in storage order into its own
    d × k partial, then the partials added in chunk order (plain Python floats)."""
    n, k = Q.shape
    partials = []
    for start in range(0, n, chunk_rows):
        acc = [[0.0] * k for _ in range(d)]
        for i in range(start, min(n, start + chunk_rows)):
            for p in range(indptr[i], indptr[i + 1]):
                for t in range(k):
                    acc[indices[p]][t] += float(data[p]) * float(Q[i, t])
        partials.append(acc)
    out = np.zeros((d, k))
    for j in range(d):
        for t in range(k):
            total = 0.0
            for acc in partials:
                total += acc[j][t]
            out[j, t] = total
    return out


@pytest.mark.parametrize("n", [1, 2, 57, 58])
def test_csr_matvec_sums_each_row_in_storage_order(n, random_csr):
    """Two rows in flight, each with its own sum: the bits of a one-row-at-a-time sum in storage order
    (rows of unequal lengths side by side, empty rows, an odd last row), whatever the magnitudes."""
    rng = np.random.default_rng(15)
    d = 9
    indptr, indices, data = random_csr(rng, n, d, empty_rows=True, duplicates=True, unsorted=True)
    data = data * np.exp(rng.uniform(-20, 20, size=data.shape))
    x = rng.standard_normal(d) * np.exp(rng.uniform(-20, 20, size=d))
    out = np.full(n, np.nan)
    csr_matvec(indptr, indices, data, x, out)
    np.testing.assert_array_equal(out, _storage_order_rows(indptr, indices, data, x))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 10])
@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_kernels_sum_in_chunk_and_storage_order(k, dtype, random_csr):
    """The four-lane updates (partials padded to whole groups of four columns) keep the scalar sums:
    the bits of the plain chunked loop, for widths below, at and past one group of four lanes."""
    rng = np.random.default_rng(16)
    n, d, chunk_rows = 45, 7, 8
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, empty_rows=True, duplicates=True,
                                       unsorted=True)
    Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-20, 20, size=(n, 1)))
    expected = _storage_order_transposed(indptr, indices, data, Q, chunk_rows, d)
    out = np.full((d, k), np.nan)
    csr_rmatmat(indptr, indices, data, Q, chunk_rows, out)
    np.testing.assert_array_equal(out, expected)
    if k == 3:
        np.testing.assert_array_equal(_run_transposed(csr_rmatmat4, indptr, indices, data, Q, chunk_rows, d),
                                      expected)


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sandwich_vector_is_the_two_passes_bit_for_bit(dtype, index_dtype, chunk_rows, csr_case, monkeypatch,
                                                       run_with_threads, random_csr):
    """CSRMatrix.sandwich_vector (``csr_sandwich_vector``, one read of C): (Cᵀ(β ⊙ Cv), Cv) with the bits of
    matvec then rmatmat (chunks of 1 and 3 rows: odd chunks, rows paired across no chunk boundary), the same
    bits with one thread as with two, and NumPy's to the summation bound (each entry sums at most n·(entries
    per row) products plus one add per chunk; the forward pass, a row's entries)."""
    if chunk_rows is not None:
        monkeypatch.setattr(matrix_module, "chunk_rows", lambda n: chunk_rows)
    rng = np.random.default_rng(17)
    n, d = 57, 9
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, **csr_case)
    # large-magnitude, mixed-sign β so a change of summation order would change the low bits
    beta, v = rng.standard_normal(n) * np.exp(rng.uniform(-10, 10, n)), rng.standard_normal(d)
    matrix = CSRMatrix(indptr, indices, data, (n, d))
    product, forward = run_with_threads(2, lambda: matrix.sandwich_vector(beta, v))
    assert product.shape == (d,) and forward.shape == (n,)
    assert np.array_equal(forward, matrix.matvec(v))
    assert np.array_equal(product, matrix.rmatmat((beta * matrix.matvec(v))[:, None])[:, 0])
    one = run_with_threads(1, lambda: matrix.sandwich_vector(beta, v))
    assert np.array_equal(one[0], product) and np.array_equal(one[1], forward)
    A, A_abs = _dense(indptr, indices, data, d), _abs_dense(indptr, indices, data, d)
    naive.assert_within_rounding(forward, A @ v, A_abs @ np.abs(v), _max_row_nnz(indptr))
    naive.assert_within_rounding(product, A.T @ (beta * (A @ v)), A_abs.T @ (np.abs(beta) * (A_abs @ np.abs(v))),
                                 n * _max_row_nnz(indptr) + n + _max_row_nnz(indptr) + 1)


@pytest.mark.parametrize("weighted", [False, True], ids=["no_row_weights", "row_weights"])
@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
def test_curvature_sandwich_vector_has_the_bits_of_the_product_with_its_weights(chunk_rows, weighted, csr_case,
                                                                                 monkeypatch, run_with_threads,
                                                                                 random_csr):
    """CSRMatrix.curvature_sandwich_vector(Q, c, w, v), each βᵢ = Q[i, 2] − c·Q[i, 1] + wᵢ formed as its row is
    read: the bits of sandwich_vector(curvature_weights(Q, c, w), v), the product and C·v, alike with 1 and 2
    threads; Q as wide as softmax_relu's (5 columns), w empty (no row weights) or not, a fifth of the βᵢ 0."""
    from fastnewton.kernels.softmax import curvature_weights

    if chunk_rows is not None:
        monkeypatch.setattr(matrix_module, "chunk_rows", lambda n: chunk_rows)
    rng = np.random.default_rng(18)
    n, d = 57, 9
    indptr, indices, data = random_csr(rng, n, d, **csr_case)
    matrix = CSRMatrix(indptr, indices, data, (n, d))
    Q = rng.standard_normal((n, 5)) * np.exp(rng.uniform(-10, 10, (n, 1)))
    w = np.abs(rng.standard_normal(n)) if weighted else np.zeros(0)
    c, v = 0.37, rng.standard_normal(d)
    Q[rng.random(n) < 0.2, 1:3] = 0.0
    beta = np.empty(n)
    curvature_weights(Q, c, w, beta)
    product, forward = matrix.sandwich_vector(beta, v)
    for threads in (1, 2):
        fused = run_with_threads(threads, lambda: matrix.curvature_sandwich_vector(Q, c, w, v))
        assert np.array_equal(fused[0], product) and np.array_equal(fused[1], forward)


@pytest.mark.parametrize("n_chunks, d, k, width", [(49, 100, 3, 4), (64, 256, 3, 4), (7, 5, 1, 1), (64, 1024, 1, 1)])
def test_chunk_partials_sum_in_chunk_order_serially_or_over_the_threads(n_chunks, d, k, width, run_with_threads):
    """sum_chunk_partials adds up to SERIAL_PARTIAL_ENTRIES entries on the calling thread (no parallel region
    to wake for a transposed pass's d × k sums), more over the threads: either way each out[j, t] is
    Σ_c partial[c, j·w + t] in chunk order (a plain loop's bits), padding lanes unread, whatever the thread count."""
    rng = np.random.default_rng(n_chunks + d)
    partial = rng.standard_normal((n_chunks, d * width)) * np.exp(rng.uniform(-20, 20, (n_chunks, d * width)))
    if width > k:
        partial.reshape(n_chunks, d, width)[:, :, k:] = np.nan  # padding: never read
    expected = np.zeros((d, k))
    for c in range(n_chunks):
        expected += partial.reshape(n_chunks, d, width)[c, :, :k]
    serial = np.full((d, k), np.nan)
    sum_chunk_partials_serial(partial, serial)
    assert np.array_equal(serial, expected)
    for threads in (1, 2):
        out = np.full((d, k), np.nan)
        run_with_threads(threads, lambda: sum_chunk_partials(partial, out))
        assert np.array_equal(out, expected)
    assert (n_chunks * d * k <= SERIAL_PARTIAL_ENTRIES) == (d <= 100)  # both branches are exercised


def _index_facts_reference(indptr, indices, per_chunk):
    """compressed_index_facts by Python loops: per chunk of slices, (min, max, falls within a slice)."""
    slices = indptr.shape[0] - 1
    rows = []
    for first in range(0, max(slices, 1), per_chunk):
        stop = min(slices, first + per_chunk)
        entries = indices[indptr[first]:indptr[stop]].astype(np.int64)
        falls = sum(int(indices[k] <= indices[k - 1]) for i in range(first, stop)
                    for k in range(indptr[i] + 1, indptr[i + 1]))
        rows.append((entries.min() if entries.size else np.iinfo(np.int64).max,
                     entries.max() if entries.size else -1, falls))
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("per_chunk", [1, 7, 1000])
def test_compressed_index_facts_match_python_loops(index_dtype, per_chunk, csr_case, random_csr):
    """Per chunk of rows: the least and largest column and the count of entries not above the one before in
    their row (0 exactly when every row's columns increase strictly), for sorted, unsorted, duplicated and
    empty rows; a negative column is its least."""
    from fastnewton.kernels.csr import compressed_index_facts
    rng = np.random.default_rng(3)
    indptr, indices, _ = random_csr(rng, 40, 12, index_dtype=index_dtype, **csr_case)
    if indices.size:
        indices[rng.integers(indices.size)] = -5
    chunks = -(-(indptr.shape[0] - 1) // per_chunk)
    out = np.empty((chunks, 3), dtype=np.int64)
    compressed_index_facts(indptr, indices, per_chunk, out)
    np.testing.assert_array_equal(out, _index_facts_reference(indptr, indices, per_chunk))


def test_index_facts_tell_increasing_rows(random_csr, csr_case):
    """validation.index_facts: (min, max) as NumPy's, and rows strictly increasing exactly when every row's
    np.diff is positive, which is SciPy's canonical format (sorted, no duplicates)."""
    import scipy.sparse as sp
    from fastnewton.validation import index_facts
    indptr, indices, data = random_csr(np.random.default_rng(4), 300, 20, **csr_case)
    least, largest, increasing = index_facts(indptr, indices)
    assert (least, largest) == (int(indices.min()), int(indices.max()))
    assert increasing == all((np.diff(indices[indptr[i]:indptr[i + 1]]) > 0).all() for i in range(300))
    assert increasing == sp.csr_matrix((data, indices, indptr), shape=(300, 20)).has_canonical_format
    assert increasing == (not csr_case.get("unsorted") and not csr_case.get("duplicates"))


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_csr_row_pairs_match_numpy(index_dtype, random_csr):
    """csr_row_pairs: nnzᵢ(nnzᵢ + 1)/2 per row, their sum, their sum over rows below the threshold, and the
    count of rows at or above it."""
    from fastnewton.kernels.csr import csr_row_pairs
    rng = np.random.default_rng(5)
    indptr, _, _ = random_csr(rng, 50, 30, max_per_row=20, index_dtype=index_dtype, empty_rows=True)
    counts = np.diff(indptr).astype(np.int64)
    pairs = np.empty(50, dtype=np.int64)
    total, short, long_rows = csr_row_pairs(indptr, 10.0, pairs)
    np.testing.assert_array_equal(pairs, counts * (counts + 1) // 2)
    assert (total, short, long_rows) == (pairs.sum(), pairs[counts < 10].sum(), np.count_nonzero(counts >= 10))
