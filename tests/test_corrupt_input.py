"""Corrupt or unusual inputs never crash the interpreter: every one is a clear error naming the argument.

SciPy checks a sparse matrix's arrays when it is built, not after a user reassigns or edits them;
its compiled conversions and our kernels would then read out of bounds. A crash would kill the
test run, so the hostile cases run in a child process (``_run_isolated``): a segfault or abort
fails the test instead of ending the suite.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnewton
from fastnewton import Problem, make_problem, solve

REPO = pathlib.Path(__file__).resolve().parent.parent
INNER = os.environ.get("FASTNEWTON_INNER_TEST") == "1"
inner_only = pytest.mark.skipif(not INNER, reason="runs in a child process (see _run_isolated)")


def _run_isolated(*test_names, timeout=600):
    """Run tests of this file in a child pytest; a crash (signal) or failure fails the caller."""
    env = dict(os.environ, FASTNEWTON_INNER_TEST="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
                          + [f"{__file__}::{name}" for name in test_names], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"child exited with {done.returncode} (negative: killed by signal)\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------
# Corrupt SciPy sparse arrays (every format)
# ---------------------------------------------------------------------------------------------
N, D = 60, 6
C_BASE, B_BASE, _ = make_problem(N, D, nnz_per_row=3, seed=0)
FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")
BAD_INDICES = (-2**31, -2**20, -1, N, D, N + D, 2**20, 2**30, 2**31 - 1)


def _fresh(fmt):
    if fmt == "bsr":
        return C_BASE.tobsr(blocksize=(2, 2), copy=True)
    return C_BASE.asformat(fmt, copy=True)


def _corrupt(fmt, kind, position, value):
    """A copy of C in ``fmt`` with one raw array corrupted (``kind``)."""
    C = _fresh(fmt)
    if fmt in ("csr", "csc", "bsr"):
        if kind == "short_data":
            C.data = C.data[:max(0, C.data.shape[0] - 1 - position % C.data.shape[0])].copy()
        elif kind == "short_indices":
            C.indices = C.indices[:max(0, C.indices.shape[0] - 1 - position % C.indices.shape[0])].copy()
        elif kind == "bad_index":
            C.indices = C.indices.astype(np.int64)
            C.indices[position % C.indices.shape[0]] = value
        elif kind == "bad_indptr":
            C.indptr = C.indptr.astype(np.int64)
            C.indptr[position % C.indptr.shape[0]] = value
        elif kind == "short_indptr":
            C.indptr = C.indptr[:-1 - position % 3].copy()
        elif kind == "data_2d":
            C.data = np.stack([C.data, C.data], axis=-1)
        elif kind == "float_index":
            C.indices = C.indices.astype(np.float64)
    elif fmt == "coo":
        if kind in ("short_data", "short_indices", "short_indptr"):
            C.data = C.data[:max(0, C.data.shape[0] - 1 - position % C.data.shape[0])].copy()
        elif kind in ("bad_index", "bad_indptr"):
            which = C.row if kind == "bad_index" else C.col
            which = which.astype(np.int64)
            which[position % which.shape[0]] = value
            C.coords = (which, C.col) if kind == "bad_index" else (C.row, which)
        elif kind == "data_2d":
            C.data = np.stack([C.data, C.data], axis=-1)
        elif kind == "float_index":
            C.coords = (C.row.astype(np.float64), C.col)
    elif fmt == "dia":
        if kind in ("bad_index", "bad_indptr"):
            C.offsets = C.offsets.astype(np.int64)
            C.offsets[position % C.offsets.shape[0]] = value
        elif kind in ("short_data", "short_indices", "short_indptr"):
            C.offsets = C.offsets[:-1].copy()
        elif kind == "data_2d":
            C.data = C.data[..., None]
        elif kind == "float_index":
            C.offsets = C.offsets.astype(np.float64)
    elif fmt == "lil":
        row = position % N
        if kind in ("bad_index", "bad_indptr"):
            C.rows[row] = list(C.rows[row]) + [value]
            C.data[row] = list(C.data[row]) + [1.0]
        elif kind in ("short_data", "short_indices", "short_indptr", "data_2d"):
            C.rows[row] = list(C.rows[row]) + [0]
        elif kind == "float_index":
            C.rows[row] = [0.5] * len(C.rows[row])
    elif fmt == "dok":
        # SciPy ≥ 1.13 keeps the entries in ``_dict`` and checks keys in __setitem__; write around it.
        store = C._dict if hasattr(C, "_dict") else C
        if kind in ("bad_index", "bad_indptr", "short_data", "short_indices", "short_indptr"):
            dict.__setitem__(store, (value, 0) if kind == "bad_index" else (0, value), 1.0)
        elif kind == "float_index":
            dict.__setitem__(store, (0.5, 0), 1.0)
    return C


def _exercise(C):
    """Everything that reads C: construction, loss, gradient, Hessian, Hessian-vector product, a short solve."""
    problem = Problem(C, B_BASE)
    x = np.full(D, 0.1)
    values = [problem.loss(x), problem.grad(x), problem.hessian(x), problem.hessp(x, x)]
    res = solve(C, B_BASE, max_iter=2, seed=0)
    values += [res.x, res.loss]
    return values


@inner_only
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS),
       kind=st.sampled_from(("short_data", "short_indices", "bad_index", "bad_indptr", "short_indptr",
                             "data_2d", "float_index")),
       position=st.integers(0, 10**6), value=st.sampled_from(BAD_INDICES))
def test_inner_corrupt_sparse_is_rejected_or_consistent(fmt, kind, position, value):
    C = _corrupt(fmt, kind, position, value)
    try:
        values = _exercise(C)
    except (ValueError, TypeError) as error:
        assert "C" in str(error).split(), str(error)  # the message names the argument
        return
    # Accepted: the corruption left a valid matrix, which must then give finite, consistent values.
    assert all(np.all(np.isfinite(v)) for v in values)


def test_corrupt_sparse_arrays_never_crash():
    """Every SciPy format with corrupted raw arrays (lengths, index ranges, indptr, 2-D data): an error
    naming C or a consistent result, never a segfault (hypothesis, 300 cases, in a child process)."""
    _run_isolated("test_inner_corrupt_sparse_is_rejected_or_consistent", "test_inner_reproducers_name_c")


@inner_only
@pytest.mark.parametrize("fmt", FORMATS)
def test_inner_reproducers_name_c(fmt):
    """The reproducers: index out of range (2**30 and −1) in every format; short data; 2-D data."""
    for value in (2**30, -N if fmt == "dia" else -1):  # a DIA offset of −1 is a valid subdiagonal
        C = _corrupt(fmt, "bad_index", 3, value)
        with pytest.raises(ValueError, match=r"\bC\b.*corrupt"):
            Problem(C, B_BASE)
    if fmt in ("csr", "csc", "bsr", "coo"):
        for kind in ("short_data", "data_2d"):
            with pytest.raises(ValueError, match=r"\bC\b.*corrupt"):
                Problem(_corrupt(fmt, kind, 4, 0), B_BASE)


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_formats_are_still_accepted(fmt):
    reference = solve(C_BASE, B_BASE, seed=0)
    res = solve(_fresh(fmt), B_BASE, seed=0)
    assert res.converged
    np.testing.assert_allclose(res.x, reference.x, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Duplicates: summed once, on a copy; pair work counted in int64
# ---------------------------------------------------------------------------------------------
def test_duplicate_entries_are_summed_once_on_a_copy():
    """One row with 70 000 stored duplicates of a few entries becomes a row of 3 entries; the caller's
    matrix is not modified (so the sandwich's O(nnzᵢ²) work is over the summed row)."""
    n, d, copies = 50, 6, 70_000
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.5)
    dense[0] = 0.0
    dense[0, [1, 3, 4]] = [1.0, -2.0, 0.5]
    base = sp.csr_matrix(dense)
    row0 = np.repeat(np.array([1, 3, 4], dtype=np.int32), copies)
    values0 = np.repeat(np.array([1.0, -2.0, 0.5]) / copies, copies)
    indices = np.concatenate([row0, base.indices[base.indptr[1]:]])
    data = np.concatenate([values0, base.data[base.indptr[1]:]])
    indptr = np.concatenate([[0], base.indptr[1:] - base.indptr[1] + row0.size]).astype(np.int32)
    C = sp.csr_matrix((data, indices, indptr), shape=(n, d))
    before = (C.data.copy(), C.indices.copy(), C.indptr.copy())
    b = np.full(n, 1.0 / n)
    problem = Problem(C, b)
    assert problem.matrix.nnz == base.nnz
    for array, saved in zip((C.data, C.indices, C.indptr), before):
        np.testing.assert_array_equal(array, saved)
    x = rng.standard_normal(d)
    np.testing.assert_allclose(problem.hessian(x), Problem(base, b).hessian(x), rtol=1e-10, atol=1e-14)


def test_sandwich_pair_count_does_not_overflow_int32():
    """A row with 70 000 distinct entries and int32 indices: nnzᵢ(nnzᵢ + 1)/2 = 2 450 035 000 > 2³¹."""
    d = 70_000
    C = sp.csr_matrix((np.ones(d), np.arange(d, dtype=np.int32), np.array([0, d], dtype=np.int32)),
                      shape=(1, d))
    matrix = Problem(C, np.ones(1)).matrix
    assert matrix.indptr.dtype == np.int32
    assert int(matrix._row_pairs.sum()) == d * (d + 1) // 2


def test_lil_row_with_more_columns_than_values_is_named():
    """SciPy's compiled LIL → COO conversion reads values by the column lists' lengths: a row whose
    column list is longer than its value list read past the values (garbage, found by the
    hypothesis test above as a flaky example). It is now rejected before any conversion."""
    C = _corrupt("lil", "short_data", 7, 0)
    with pytest.raises(ValueError, match=r"\bC\b is a corrupt LIL sparse matrix: row 7 has"):
        Problem(C, B_BASE)


# ---------------------------------------------------------------------------------------------
# Large compressed matrices: their indices are checked by one compiled parallel read
# ---------------------------------------------------------------------------------------------
def _large_csr(fmt="csr"):
    C, b, _ = make_problem(8000, 40, nnz_per_row=10, seed=1)
    return C.asformat(fmt, copy=True), b


@pytest.mark.parametrize("fmt", ("csr", "csc"))
@pytest.mark.parametrize("value", (-2**31, -1, "bound", 2**31 - 1))
def test_large_matrix_bad_index_gets_numpys_message(fmt, value, monkeypatch):
    """From validation.INDEX_FACTS_ENTRIES stored entries the range check is ``index_facts`` (one parallel
    read, which never indexes by a value it checks): the same ValueError, with the same found range, as
    NumPy's min and max give below it."""
    from fastnewton import validation
    C, b = _large_csr(fmt)
    assert C.nnz >= validation.INDEX_FACTS_ENTRIES
    C.indices[C.nnz // 3] = C.shape[1 if fmt == "csr" else 0] if value == "bound" else value
    with pytest.raises(ValueError, match="is a corrupt sparse matrix") as compiled:
        Problem(C, b)
    monkeypatch.setattr(validation, "INDEX_FACTS_ENTRIES", 2**62)
    with pytest.raises(ValueError) as numpys:
        Problem(C, b)
    assert str(compiled.value) == str(numpys.value)


def test_large_csr_rows_are_trusted_only_when_found_increasing():
    """A canonical CSR is marked ``rows_increasing`` (its sandwiches then skip their own test of the rows); one
    with a row out of order is not, even when SciPy's flag claims the canonical format, and its Hessian is
    the sorted matrix's."""
    C, b = _large_csr()
    assert Problem(C, b).matrix.rows_increasing
    shuffled = C.copy()
    row = shuffled.indices[shuffled.indptr[5]:shuffled.indptr[6]]
    row[:] = row[::-1].copy()
    shuffled.data[shuffled.indptr[5]:shuffled.indptr[6]] = shuffled.data[shuffled.indptr[5]:shuffled.indptr[6]][::-1].copy()
    shuffled.has_canonical_format = True  # a stale flag: SciPy trusts it, the index check does not
    problem = Problem(shuffled, b)
    assert not problem.matrix.rows_increasing
    x = np.random.default_rng(0).standard_normal(C.shape[1]) * 0.1
    np.testing.assert_array_equal(problem.hessian(x), Problem(C, b).hessian(x))
