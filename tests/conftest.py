"""Shared fixtures: a thread-count runner and a random CSR builder with the awkward cases switched on."""
import numba
import numpy as np
import pytest


@pytest.fixture
def run_with_threads():
    """``run(k, fn)`` calls ``fn()`` with k Numba threads and restores the previous count in ``finally``."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("thread determinism needs NUMBA_NUM_THREADS >= 2")

    def run(n_threads, fn):
        previous = numba.get_num_threads()
        numba.set_num_threads(n_threads)
        try:
            return fn()
        finally:
            numba.set_num_threads(previous)

    return run


def _random_csr(rng, n, d, *, dtype=np.float64, index_dtype=np.int32, max_per_row=6,
                empty_rows=False, zero_columns=False, duplicates=False, unsorted=False):
    """(indptr, indices, data) of an n × d CSR matrix built entry by entry.

    ``empty_rows``: about a third of the rows store nothing; ``zero_columns``: about a third
    of the columns are never used; ``duplicates``: columns may repeat within a row (they add
    up); ``unsorted``: each row's entries are shuffled.
    """
    columns_allowed = np.arange(d)
    if zero_columns and d > 1:
        keep = rng.random(d) > 1 / 3
        keep[rng.integers(d)] = True
        columns_allowed = np.flatnonzero(keep)
    counts = rng.integers(1, max_per_row + 1, size=n)
    if empty_rows:
        counts[rng.random(n) < 1 / 3] = 0
        counts[0] = 0
    indices = []
    for count in counts:
        if duplicates:
            row = rng.choice(columns_allowed, size=count, replace=True)
        else:
            row = rng.choice(columns_allowed, size=min(count, columns_allowed.size), replace=False)
        row = rng.permutation(row) if unsorted else np.sort(row)
        indices.append(row)
    counts = np.array([row.size for row in indices])
    indptr = np.zeros(n + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    flat = np.concatenate(indices).astype(index_dtype) if n else np.zeros(0, dtype=index_dtype)
    data = rng.standard_normal(flat.size).astype(dtype)
    return indptr, flat, data


@pytest.fixture(autouse=True)
def all_threads_for_small_problems(monkeypatch):
    """``solve`` without n_threads runs a small problem on one thread (``default_thread_count``); the tests'
    problems are small, and the many that compare thread counts (or check the parallel paths) must see
    Numba's threads as the caller set them. The rule itself: tests/test_solver.py."""
    import fastnewton.threads
    monkeypatch.setattr(fastnewton.threads, "SINGLE_THREAD_BELOW_SECONDS", 0.0)


@pytest.fixture
def random_csr():
    return _random_csr


# Structural variants shared by the CSR kernel tests.
CSR_CASES = {
    "plain": {},
    "empty_rows_zero_columns": {"empty_rows": True, "zero_columns": True},
    "duplicates_unsorted": {"duplicates": True, "unsorted": True},
    "everything": {"empty_rows": True, "zero_columns": True, "duplicates": True, "unsorted": True},
}


@pytest.fixture(params=sorted(CSR_CASES))
def csr_case(request):
    """Keyword arguments of ``random_csr`` for one structural variant."""
    return CSR_CASES[request.param]
