"""``fastnewton.plain_problems``: solve_many's plain problems checked and described in bulk.

Independent reference: a ``Problem`` of each (its own checks, facts, matrix and pricing shapes).
"""
import numpy as np
import pytest
import scipy.sparse as sp

import fastnewton
from fastnewton import make_problem
from fastnewton.hessian import PricedShapes
from fastnewton.models import build_model
from fastnewton.plain_problems import PlainProblems


def _batch(seed=0):
    """(items, which are plain): dense and CSR problems (int32 and int64 indices, a long CSR row, rows stored past
    indptr[-1]) among problems that are not plain (float32 C, F-ordered C, COO C, a float32 b, V given)."""
    rng = np.random.default_rng(seed)
    items, plain = [], []
    for i in range(12):
        n, d = int(rng.integers(20, 90)), int(rng.integers(3, 30))
        made = make_problem(n, d, nnz_per_row=min(d, 3), noise=0.05, seed=seed * 100 + i)
        C, b, V = made.C, made.b, None
        kind = i % 6
        if kind == 1:
            C = C.toarray()
        elif kind == 2:
            C = sp.csr_matrix((C.data, C.indices.astype(np.int64), C.indptr.astype(np.int64)), shape=C.shape)
        elif kind == 3:
            C = [C.toarray().astype(np.float32), np.asfortranarray(C.toarray()), C.tocoo()][i % 3]
        elif kind == 4:
            b = b.astype(np.float32)
        elif kind == 5:
            dense = C.toarray()
            dense[0] = 1.0  # a long row: sandwiched by SYRK
            C = sp.csr_matrix(dense)
            C.data = np.append(C.data, np.nan)  # a value past indptr[-1]: not an entry
            C.indices = np.append(C.indices, np.int32(0))
        items.append((C, b, V))
        plain.append(kind not in (3, 4))
    return items, plain


def test_plain_problems_are_described_as_problems_are():
    items, expected = _batch()
    plain = PlainProblems.of(items, [None] * len(items))
    assert plain.index.tolist() == [i for i, is_plain in enumerate(expected) if is_plain]
    problems = [fastnewton.Problem(items[i][0], items[i][1]) for i in plain.index.tolist()]
    model = build_model("softmax")
    for k, problem in enumerate(problems):
        assert plain.facts[k] == problem.facts
        assert (plain.n[k], plain.d[k], plain.nnz[k], plain.csr[k]) == (problem.n, problem.d, problem.matrix.nnz,
                                                                        problem.matrix.format == "csr")
        np.testing.assert_array_equal(plain.b[plain.offsets[k]:plain.offsets[k + 1]], problem.b)
        built = plain.problem(k, "softmax", 0.0, model)
        assert built.facts == problem.facts and built.matrix.format == problem.matrix.format
    shapes = plain.shapes("softmax", 0.0, model)
    reference = PricedShapes.of_problems(problems)
    for field in ("n", "d", "nnz", "dense", "sandwich_pairs", "sandwich_fma"):
        np.testing.assert_array_equal(getattr(shapes, field), getattr(reference, field), err_msg=field)
    assert (shapes.samples_start, shapes.reuses_leverage_scores) == (reference.samples_start,
                                                                     reference.reuses_leverage_scores)
    for got, want in zip(shapes.targets, reference.targets):
        np.testing.assert_array_equal(got, want)


def test_with_none_plain_there_is_no_batch():
    items, _ = _batch()
    assert PlainProblems.of(items, [0.5] * len(items)) is None
    assert PlainProblems.of([(C, b, np.ones((C.shape[0], 2))) for C, b, _ in items], [None] * len(items)) is None


def _with_int64_indices(C):
    """C with int64 indptr and indices (set after construction: SciPy's constructor would downcast them)."""
    C = C.copy()
    C.indices, C.indptr = C.indices.astype(np.int64), C.indptr.astype(np.int64)
    return C


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("edit", ["nan b", "indptr start", "indptr past end", "column d", "column -1", "inf value"])
def test_bad_inputs_are_left_to_problem_or_found_by_the_entries_check(edit, index_dtype):
    """A bad b or indptr is not kept (``Problem`` gives its message); bad CSR entries (a column outside [0, d), a
    non-finite value) are found by ``entries_valid``, as ``Problem`` rejects them; with int32 and int64 indices,
    both read where they lie."""
    made = make_problem(50, 8, nnz_per_row=3, seed=3)
    C, b = made.C.copy(), made.b.copy()
    if index_dtype == np.int64:
        C = _with_int64_indices(C)
    assert C.indices.dtype == index_dtype and C.indptr.dtype == index_dtype
    if edit == "nan b":
        b[4] = np.nan
    elif edit == "indptr start":
        C.indptr[0] = 1
    elif edit == "indptr past end":
        C.indptr[-1] = C.indices.shape[0] + 1
    elif edit == "column d":
        C.indices[-1] = 8
    elif edit == "column -1":
        C.indices[0] = -1
    else:
        C.data[3] = np.inf
    good = (made.C, made.b, None)
    plain = PlainProblems.of([good, (C, b, None), good], [None] * 3)
    with pytest.raises(ValueError):
        fastnewton.Problem(C, b)
    if edit in ("nan b", "indptr start", "indptr past end"):
        assert plain.index.tolist() == [0, 2]
    else:
        assert plain.index.tolist() == [0, 1, 2]
        assert plain.entries_valid(np.arange(3)).tolist() == [True, False, True]


def test_index_arrays_are_read_where_they_lie():
    """A plain CSR C's indptr and indices are not copied: their addresses are the caller's arrays', with their entries'
    size (4 for int32, 8 for int64); a dense C's entries likewise. Both index types give solve_many the same bits."""
    made = make_problem(60, 7, nnz_per_row=2, noise=0.05, seed=4)
    narrow, wide, dense = made.C, _with_int64_indices(made.C), made.C.toarray()
    items = [(narrow, made.b, None), (wide, made.b, None), (dense, made.b, None)]
    plain = PlainProblems.of(items, [None] * 3)
    assert plain.index.tolist() == [0, 1, 2]
    assert plain.index_bytes.tolist() == [4, 8, 8]
    for k, C in enumerate([narrow, wide]):
        assert (plain.indptr_at[k], plain.indices_at[k], plain.values_at[k]) == (
            C.indptr.ctypes.data, C.indices.ctypes.data, C.data.ctypes.data)
    assert plain.values_at[2] == dense.ctypes.data
    batch = fastnewton.solve_many([(narrow, made.b), (wide, made.b)], hessian="exact")
    assert batch.converged.all()
    np.testing.assert_array_equal(batch.x[:, 0], batch.x[:, 1])
    single = fastnewton.solve(narrow, made.b, hessian="exact")
    assert np.linalg.norm(batch.x[:, 0] - single.x) <= 1e-10 * np.linalg.norm(single.x)


def test_addresses_of_gives_each_arrays_first_element():
    """``addresses_of`` as ``ndarray.ctypes.data``: writable, read-only, empty and offset (view) arrays."""
    from fastnewton.plain_problems import addresses_of

    base = np.arange(10.0)
    read_only = np.arange(5, dtype=np.int32)
    read_only.flags.writeable = False
    arrays = [base, base[3:], read_only, np.empty(0), np.empty(0, dtype=np.int64), np.ones((4, 3))]
    assert addresses_of(arrays).tolist() == [array.ctypes.data for array in arrays]
    assert addresses_of([]).tolist() == []
