"""The passes over C for many problems at once (``matvecs``, ``rmatmats``, ``sandwiches``; used by
``solve_many``): equal to plain NumPy to rounding, and each bit for bit the single-problem pass, whichever
problems are passed together (the CSR sandwich of many problems too: its products and chunks are
``csr_sandwich_rows``')."""
import numpy as np
import pytest
import scipy.sparse as sp

from fastnewton import matrix as matrix_module
from fastnewton.validation import as_input_matrix

# Sums of ≤ 10⁴ products of O(1) values: a few hundred eps relative to the sum of |terms|.
RTOL = 1e-11


def matrices(rng, n=5000, d=80):
    """CSR with empty rows and a long row, the same as float32 values with int64 indices, and dense."""
    rows = rng.integers(0, n // 2, size=6 * n)  # the second half of the rows stays empty
    rows[: n // 3] = 0  # a long first row (all d columns: sandwiched densely)
    columns = rng.integers(0, d, size=rows.shape[0])
    csr = sp.csr_matrix((rng.standard_normal(rows.shape[0]), (rows, columns)), shape=(n, d))
    float32 = csr.astype(np.float32)
    float32.indices = float32.indices.astype(np.int64)
    float32.indptr = float32.indptr.astype(np.int64)
    # Rows of ≤ 9 entries (none sandwiched densely: the kernel for many problems at once), unsorted.
    counts = rng.integers(0, 10, size=n)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate([rng.permutation(d)[:c] for c in counts])
    short = sp.csr_matrix((rng.standard_normal(indptr[-1]), indices, indptr), shape=(n, d))
    return {"csr": csr, "csr float32 int64": float32, "csr short rows": short, "dense": rng.standard_normal((n, d))}


def assert_close(value, reference, magnitude):
    """|value − reference| ≤ RTOL·(the same sum of |terms|), entrywise."""
    assert np.all(np.abs(value - reference) <= RTOL * magnitude), np.max(np.abs(value - reference) / magnitude)


@pytest.fixture(params=["csr", "csr float32 int64", "csr short rows", "dense"])
def case(request, batched_from):
    rng = np.random.default_rng(0)
    C = matrices(rng)[request.param]
    return as_input_matrix(C), (C.toarray() if sp.issparse(C) else C).astype(np.float64), rng


@pytest.fixture(params=["always", "as shipped"], autouse=True)
def batched_from(request, monkeypatch):
    """Every batch on the batched kernels (their bits are what these tests check), then with the shipped
    thresholds (below them one single pass per vector / problem: the same bits by construction)."""
    if request.param == "always":
        for table in ("CSR_BATCHED_FROM", "DENSE_BATCHED_FROM"):
            monkeypatch.setattr(matrix_module, table, dict.fromkeys(getattr(matrix_module, table), 1))
    return request.param


def test_matvecs_is_matvec_per_column(case):
    matrix, dense, rng = case
    X = rng.standard_normal((dense.shape[1], 7))
    U = matrix.matvecs(X)
    assert U.shape == (7, dense.shape[0])
    for t in range(7):
        assert np.array_equal(U[t], matrix.matvec(np.ascontiguousarray(X[:, t])))
    assert_close(U.T, dense @ X, np.abs(dense) @ np.abs(X))


def test_rmatmats_is_rmatmat_per_set(case):
    matrix, dense, rng = case
    Qs = [rng.standard_normal((dense.shape[0], 3)) for _ in range(4)]
    for Q, G in zip(Qs, matrix.rmatmats(Qs)):
        assert np.array_equal(G, matrix.rmatmat(Q))
        assert_close(G, dense.T @ Q, np.abs(dense.T) @ np.abs(Q))


@pytest.mark.parametrize("group_bytes", [None, 1])
def test_sandwiches_are_sandwich_per_column(case, group_bytes, monkeypatch):
    matrix, dense, rng = case
    if group_bytes is not None:  # one problem per read of C
        monkeypatch.setattr(matrix_module, "SANDWICH_MANY_BYTES", group_bytes)
    W = rng.standard_normal((dense.shape[0], 5))
    W[::3, 1] = 0.0  # rows skipped by one problem only
    W[::7] = 0.0  # rows skipped by all
    sandwiches = matrix.sandwiches([W[:, t] for t in range(5)])
    assert len(sandwiches) == 5
    for t, H in enumerate(sandwiches):
        single = matrix.sandwich(np.ascontiguousarray(W[:, t]))
        magnitude = np.abs(dense.T) @ (np.abs(W[:, t, None]) * np.abs(dense))
        assert np.array_equal(H, single)
        assert_close(H, dense.T @ (W[:, t, None] * dense), magnitude)
        assert np.array_equal(H, H.T)


def test_the_csr_sandwich_of_a_problem_has_the_same_bits_whatever_is_sandwiched_with_it(monkeypatch):
    # More problems than one block of csr_sandwich_many, and n spanning several of its row chunks.
    rng = np.random.default_rng(1)
    n, d = 9000, 12
    counts = rng.integers(0, 6, size=n)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate([rng.permutation(d)[:c] for c in counts])
    C = sp.csr_matrix((rng.standard_normal(indptr[-1]), indices, indptr), shape=(n, d))
    matrix = as_input_matrix(C)
    weights = [rng.standard_normal(n) for _ in range(70)]
    together = matrix.sandwiches(weights)
    assert all(np.array_equal(H, matrix.sandwich(w)) for H, w in zip(together, weights))
    assert all(np.array_equal(H, matrix.sandwiches([w])[0]) for H, w in zip(together[::23], weights[::23]))
    monkeypatch.setattr(matrix_module, "SANDWICH_MANY_BYTES", 1)
    assert all(np.array_equal(H, G) for H, G in zip(together, matrix.sandwiches(weights)))
    dense = C.toarray()
    for H, w in zip(together[::10], weights[::10]):
        magnitude = np.abs(dense.T) @ (np.abs(w[:, None]) * np.abs(dense))
        assert_close(H, dense.T @ (w[:, None] * dense), magnitude)


@pytest.mark.parametrize("group_bytes", [None, 1])
def test_rmatmats_groups_give_the_same_bits(case, group_bytes, monkeypatch):
    matrix, dense, rng = case
    if group_bytes is not None:
        monkeypatch.setattr(matrix_module, "RMATMATS_BYTES", group_bytes)
    for k in (1, 2, 5):
        Qs = [rng.standard_normal((dense.shape[0], k)) for _ in range(3)]
        for Q, G in zip(Qs, matrix.rmatmats(Qs)):
            assert G.shape == (dense.shape[1], k) and np.array_equal(G, matrix.rmatmat(Q))


def test_the_short_row_case_takes_the_kernel_for_many_problems():
    # Long rows are sandwiched densely, one problem at a time; only short rows reach csr_sandwich_many.
    short = as_input_matrix(matrices(np.random.default_rng(0))["csr short rows"])
    assert short._dense_rows.size == 0
    assert as_input_matrix(matrices(np.random.default_rng(0))["csr"])._dense_rows.size > 0



@pytest.mark.parametrize("name", ["csr short rows", "dense"])
def test_small_batches_make_single_passes_and_large_ones_the_batched_kernel(name, batched_from, monkeypatch):
    """Below ``*_BATCHED_FROM`` (measured: the batched kernels lose there) one single pass per vector /
    problem, from it on the batched kernel, once; each answer is the single pass's bits either way."""
    if batched_from == "always":
        pytest.skip("the shipped thresholds only")
    rng = np.random.default_rng(3)
    matrix = as_input_matrix(matrices(rng)[name])
    table = matrix_module.DENSE_BATCHED_FROM if name == "dense" else matrix_module.CSR_BATCHED_FROM
    batched = {"matvecs": "dense_matvecs", "rmatvecs": "dense_rmatmats", "rmatmats": "dense_rmatmats",
               "sandwiches": "blocked_syrk_sandwiches"} if name == "dense" else {
        "matvecs": "csr_matvecs", "rmatvecs": "csr_rmatmats", "rmatmats": "csr_rmatmats",
        "sandwiches": "csr_sandwich_many"}
    calls = []
    for kernel in set(batched.values()):
        original = getattr(matrix_module, kernel)

        def spy(*args, _original=original, _kernel=kernel):
            # a single dense sandwich is blocked_syrk_sandwiches of one weight vector: not a batch
            if _kernel != "blocked_syrk_sandwiches" or len(args[1]) > 1:
                calls.append(_kernel)
            return _original(*args)
        monkeypatch.setattr(matrix_module, kernel, spy)
    n, d = matrix.n, matrix.d
    for operation, kernel in batched.items():
        for count in (table[operation] - 1, table[operation]):
            calls.clear()
            if operation == "matvecs":
                X = rng.standard_normal((d, count))
                got = list(matrix.matvecs(X))
                singles = [matrix.matvec(np.ascontiguousarray(X[:, t])) for t in range(count)]
            elif operation == "sandwiches":
                weights = [rng.standard_normal(n) for _ in range(count)]
                got = matrix.sandwiches(weights)
                singles = [matrix.sandwich(w) for w in weights]
            else:
                Qs = [rng.standard_normal((n, 1 if operation == "rmatvecs" else 3)) for _ in range(count)]
                got = list(matrix.rmatmats(Qs))
                singles = [matrix.rmatmat(Q) for Q in Qs]
            assert calls == ([kernel] if count == table[operation] else []), (operation, count)
            assert len(got) == count and all(np.array_equal(a, b) for a, b in zip(got, singles))


def test_dense_rmatmats_of_a_one_chunk_c_splits_by_set_with_rmatmats_bits(batched_from):
    # n ≤ 4096: one row chunk, so the threads take the sets (``dense_rmatmats``); any thread count, the same bits.
    import numba
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((1000, 13))
    matrix = as_input_matrix(dense)
    Qs = [rng.standard_normal((1000, k)) for k in (1, 1, 1, 1, 1)] if batched_from == "always" else \
        [rng.standard_normal((1000, 3)) for _ in range(5)]
    caller = numba.get_num_threads()
    outputs = []
    try:
        for threads in sorted({1, caller}):
            numba.set_num_threads(threads)
            outputs.append([np.array(G) for G in matrix.rmatmats(Qs)])
    finally:
        numba.set_num_threads(caller)
    for G in outputs:
        for Q, G_s in zip(Qs, G):
            assert np.array_equal(G_s, matrix.rmatmat(Q))
            assert_close(G_s, dense.T @ Q, np.abs(dense.T) @ np.abs(Q))
