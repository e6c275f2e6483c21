"""Validation at the public boundary (solve, Problem, make_problem) and input handling.

Every bad input raises ValueError or TypeError whose message names the argument; inputs are
never modified; every SciPy sparse format, index and value dtype, memory layout and
read-only flag gives the same solution as the canonical float64 CSR matrix.
"""
import copy
import warnings

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnewton import Problem, make_problem, solve

N, D, M = 40, 4, 3


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def base_problem():
    """A small valid softmax problem: CSR C (N × D), b (N), and V (N × M), b_V (M) for softmax_relu."""
    C, b, _ = make_problem(N, D, nnz_per_row=3, seed=0)
    V = np.random.default_rng(1).uniform(-0.5, 1.0, (N, M))
    return C, b, V, np.maximum(V.T @ softmax(C @ np.full(D, 0.1)), 0.0)


def word(name):
    """A regex matching ``name`` as a whole word (so 'b' does not match inside 'number')."""
    return rf"(?<![\w]){name}(?![\w])"


def with_nan(array, value=np.nan):
    array = np.array(array, dtype=np.float64, copy=True)
    array.flat[array.size // 2] = value
    return array


# ---------------------------------------------------------------------------------------------
# Bad inputs shared by solve and Problem: (id, keyword overrides, exception, argument named)
# ---------------------------------------------------------------------------------------------
C0, B0, V0, BV0 = base_problem()
C0_DENSE = C0.toarray()


def sparse_with(value):
    C = C0.copy()
    C.data[1] = value
    return C


PROBLEM_CASES = [
    # C: shapes, emptiness, dtypes, non-finite values
    ("C-1d", {"C": C0_DENSE[:, 0]}, ValueError, "C"),
    ("C-3d", {"C": C0_DENSE[None]}, ValueError, "C"),
    ("C-no-rows-dense", {"C": np.zeros((0, D)), "b": np.zeros(0)}, ValueError, "C"),
    ("C-no-cols-dense", {"C": np.zeros((N, 0))}, ValueError, "C"),
    ("C-no-rows-sparse", {"C": sp.csr_matrix((0, D)), "b": np.zeros(0)}, ValueError, "C"),
    ("C-no-cols-sparse", {"C": sp.csr_matrix((N, 0))}, ValueError, "C"),
    ("C-complex-dense", {"C": C0_DENSE.astype(np.complex128)}, TypeError, "C"),
    ("C-complex-sparse", {"C": C0.astype(np.complex128)}, TypeError, "C"),
    ("C-strings", {"C": C0_DENSE.astype(str)}, TypeError, "C"),
    ("C-object", {"C": C0_DENSE.astype(object)}, TypeError, "C"),
    ("C-None", {"C": None}, TypeError, "C"),
    ("C-str", {"C": "matrix"}, TypeError, "C"),
    ("C-nan-dense", {"C": with_nan(C0_DENSE)}, ValueError, "C"),
    ("C-inf-dense", {"C": with_nan(C0_DENSE, np.inf)}, ValueError, "C"),
    ("C-nan-sparse", {"C": sparse_with(np.nan)}, ValueError, "C"),
    ("C-ninf-sparse", {"C": sparse_with(-np.inf)}, ValueError, "C"),
    # b
    ("b-short", {"b": B0[:-1]}, ValueError, "b"),
    ("b-long", {"b": np.append(B0, 0.0)}, ValueError, "b"),
    ("b-2d", {"b": B0[:, None]}, ValueError, "b"),
    ("b-complex", {"b": B0.astype(np.complex128)}, TypeError, "b"),
    ("b-strings", {"b": B0.astype(str)}, TypeError, "b"),
    ("b-None", {"b": None}, TypeError, "b"),
    ("b-sparse", {"b": sp.csr_matrix(B0[None])}, TypeError, "b"),
    ("b-nan", {"b": with_nan(B0)}, ValueError, "b"),
    ("b-inf", {"b": with_nan(B0, np.inf)}, ValueError, "b"),
    # model
    ("model-unknown", {"model": "linear"}, ValueError, "model"),
    ("model-case", {"model": "Softmax"}, ValueError, "model"),
    ("model-None", {"model": None}, ValueError, "model"),
    # V
    ("V-missing", {"model": "softmax_relu", "b": BV0}, ValueError, "V"),
    ("V-for-softmax", {"V": V0}, ValueError, "V"),
    ("V-for-relu_softmax", {"model": "relu_softmax", "V": V0}, ValueError, "V"),
    ("V-rows", {"model": "softmax_relu", "V": V0[:-1], "b": BV0}, ValueError, "V"),
    ("V-1d", {"model": "softmax_relu", "V": V0[:, 0], "b": BV0[:1]}, ValueError, "V"),
    ("V-no-cols", {"model": "softmax_relu", "V": np.zeros((N, 0)), "b": np.zeros(0)}, ValueError, "V"),
    ("V-complex", {"model": "softmax_relu", "V": V0.astype(np.complex128), "b": BV0}, TypeError, "V"),
    ("V-complex-sparse", {"model": "softmax_relu", "V": sp.csr_matrix(V0.astype(np.complex128)), "b": BV0},
     TypeError, "V"),
    ("V-strings", {"model": "softmax_relu", "V": V0.astype(str), "b": BV0}, TypeError, "V"),
    ("V-nan", {"model": "softmax_relu", "V": with_nan(V0), "b": BV0}, ValueError, "V"),
    ("V-inf", {"model": "softmax_relu", "V": with_nan(V0, np.inf), "b": BV0}, ValueError, "V"),
    ("V-nan-sparse", {"model": "softmax_relu", "V": sp.csr_matrix(with_nan(V0)), "b": BV0}, ValueError, "V"),
    ("b-length-for-V", {"model": "softmax_relu", "V": V0, "b": B0}, ValueError, "b"),
    # l2
    ("l2-negative", {"l2": -1e-3}, ValueError, "l2"),
    ("l2-nan", {"l2": np.nan}, ValueError, "l2"),
    ("l2-inf", {"l2": np.inf}, ValueError, "l2"),
    ("l2-str", {"l2": "0.1"}, TypeError, "l2"),
    ("l2-None", {"l2": None}, TypeError, "l2"),
    ("l2-complex", {"l2": 1j}, TypeError, "l2"),
    # row_weights
    ("w-negative-scalar", {"row_weights": -1.0}, ValueError, "row_weights"),
    ("w-nan-scalar", {"row_weights": np.nan}, ValueError, "row_weights"),
    ("w-inf-scalar", {"row_weights": np.inf}, ValueError, "row_weights"),
    ("w-negative-entry", {"row_weights": with_nan(np.ones(N), -1.0)}, ValueError, "row_weights"),
    ("w-nan-entry", {"row_weights": with_nan(np.ones(N))}, ValueError, "row_weights"),
    ("w-inf-entry", {"row_weights": with_nan(np.ones(N), np.inf)}, ValueError, "row_weights"),
    ("w-short", {"row_weights": np.ones(N - 1)}, ValueError, "row_weights"),
    ("w-2d", {"row_weights": np.ones((N, 1))}, ValueError, "row_weights"),
    ("w-complex", {"row_weights": np.ones(N, dtype=np.complex128)}, TypeError, "row_weights"),
    ("w-complex-scalar", {"row_weights": 1j}, TypeError, "row_weights"),
    ("w-str", {"row_weights": "uniform"}, TypeError, "row_weights"),
]


def _arguments(overrides):
    kwargs = {"C": C0, "b": B0, "model": "softmax", "V": None, "l2": 0.0, "row_weights": None}
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize("target", ["solve", "Problem"])
@pytest.mark.parametrize(("overrides", "error", "name"),
                         [case[1:] for case in PROBLEM_CASES], ids=[case[0] for case in PROBLEM_CASES])
def test_bad_problem_input_is_rejected_with_its_name(target, overrides, error, name):
    kwargs = _arguments(overrides)
    C, b = kwargs.pop("C"), kwargs.pop("b")
    function = solve if target == "solve" else Problem
    with pytest.raises(error, match=word(name)):
        function(C, b, **kwargs)


# ---------------------------------------------------------------------------------------------
# Bad inputs of solve's own options
# ---------------------------------------------------------------------------------------------
SOLVE_CASES = [
    ("x0-short", {"x0": np.zeros(D - 1)}, ValueError, "x0"),
    ("x0-2d", {"x0": np.zeros((D, 1))}, ValueError, "x0"),
    ("x0-nan", {"x0": with_nan(np.zeros(D))}, ValueError, "x0"),
    ("x0-inf", {"x0": with_nan(np.zeros(D), -np.inf)}, ValueError, "x0"),
    ("x0-complex", {"x0": np.zeros(D, dtype=np.complex128)}, TypeError, "x0"),
    ("x0-strings", {"x0": np.array(["0"] * D)}, TypeError, "x0"),
    ("x0-unknown-name", {"x0": "random"}, ValueError, "x0"),
    ("x0-None", {"x0": None}, TypeError, "x0"),
    ("hessian-unknown", {"hessian": "newton"}, ValueError, "hessian"),
    ("hessian-None", {"hessian": None}, TypeError, "hessian"),
    ("hessian-int", {"hessian": 2}, TypeError, "hessian"),
    ("tol-zero", {"tol": 0.0}, ValueError, "tol"),
    ("tol-negative", {"tol": -1e-8}, ValueError, "tol"),
    ("tol-nan", {"tol": np.nan}, ValueError, "tol"),
    ("tol-inf", {"tol": np.inf}, ValueError, "tol"),
    ("tol-str", {"tol": "1e-8"}, TypeError, "tol"),
    ("max_iter-negative", {"max_iter": -1}, ValueError, "max_iter"),
    ("max_iter-float", {"max_iter": 10.0}, TypeError, "max_iter"),
    ("max_iter-str", {"max_iter": "10"}, TypeError, "max_iter"),
    ("max_iter-bool", {"max_iter": True}, TypeError, "max_iter"),
    ("eps-zero", {"eps": 0.0}, ValueError, "eps"),
    ("eps-one", {"eps": 1.0}, ValueError, "eps"),
    ("eps-negative", {"eps": -0.5}, ValueError, "eps"),
    ("eps-large", {"eps": 1.5}, ValueError, "eps"),
    ("eps-nan", {"eps": np.nan}, ValueError, "eps"),
    ("eps-str", {"eps": "0.5"}, TypeError, "eps"),
    ("sketch_size-zero", {"sketch_size": 0}, ValueError, "sketch_size"),
    ("sketch_size-float", {"sketch_size": 10.5}, TypeError, "sketch_size"),
    ("n_threads-zero", {"n_threads": 0}, ValueError, "n_threads"),
    ("n_threads-negative", {"n_threads": -1}, ValueError, "n_threads"),
    ("n_threads-float", {"n_threads": 1.5}, TypeError, "n_threads"),
    ("n_threads-str", {"n_threads": "2"}, TypeError, "n_threads"),
    ("seed-str", {"seed": "0"}, TypeError, "seed"),
    ("seed-float", {"seed": 0.5}, TypeError, "seed"),
    ("callback-not-callable", {"callback": 3}, TypeError, "callback"),
]


@pytest.mark.parametrize(("overrides", "error", "name"),
                         [case[1:] for case in SOLVE_CASES], ids=[case[0] for case in SOLVE_CASES])
def test_bad_solve_option_is_rejected_with_its_name(overrides, error, name):
    with pytest.raises(error, match=word(name)):
        solve(C0, B0, **overrides)


def test_too_many_threads_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="n_threads"):
        solve(C0, B0, n_threads=numba.config.NUMBA_NUM_THREADS + 1)


def test_valid_options_are_accepted():
    for options in ({"n_threads": 1}, {"n_threads": np.int64(1)}, {"seed": 3}, {"seed": np.int32(3)},
                    {"seed": np.random.SeedSequence(3)}, {"eps": 0.1}, {"sketch_size": 100},
                    {"hessian": "exact"}, {"hessian": "sketch"}, {"hessian": "pcg", "eps": 0.9}, {"tol": 1e-6}, {"max_iter": np.int64(50)}, {"l2": np.float32(0.5)},
                    {"row_weights": 1e-3}, {"row_weights": np.float64(0)}, {"x0": list(np.zeros(D))}):
        assert solve(C0, B0, **options).converged, options


# ---------------------------------------------------------------------------------------------
# make_problem
# ---------------------------------------------------------------------------------------------
MAKE_PROBLEM_CASES = [
    ("n-zero", {"n": 0}, ValueError, "n"),
    ("n-negative", {"n": -5}, ValueError, "n"),
    ("n-float", {"n": 10.5}, TypeError, "n"),
    ("d-zero", {"d": 0}, ValueError, "d"),
    ("d-str", {"d": "3"}, TypeError, "d"),
    ("nnz_per_row-zero", {"nnz_per_row": 0}, ValueError, "nnz_per_row"),
    ("nnz_per_row-float", {"nnz_per_row": 2.5}, TypeError, "nnz_per_row"),
    ("density-zero", {"density": 0.0}, ValueError, "density"),
    ("density-large", {"density": 1.5}, ValueError, "density"),
    ("density-and-nnz", {"density": 0.5, "nnz_per_row": 2}, ValueError, "density"),
    ("model-unknown", {"model": "relu"}, ValueError, "model"),
    ("m-zero", {"model": "softmax_relu", "m": 0}, ValueError, "m"),
    ("m-float", {"model": "softmax_relu", "m": 2.5}, TypeError, "m"),
    ("scale-negative", {"scale": -1.0}, ValueError, "scale"),
    ("scale-nan", {"scale": np.nan}, ValueError, "scale"),
    ("noise-negative", {"noise": -0.1}, ValueError, "noise"),
    ("noise-inf", {"noise": np.inf}, ValueError, "noise"),
    # checked whether or not they are used: dense C has no nnz_per_row or density, only softmax_relu has m
    ("dense-str", {"dense": "no"}, TypeError, "dense"),
    ("dense-list", {"dense": [1]}, TypeError, "dense"),
    ("m-unused-str", {"m": "x"}, TypeError, "m"),
    ("m-unused-negative", {"m": -5}, ValueError, "m"),
    ("density-with-dense", {"dense": True, "density": 5.0}, ValueError, "density"),
    ("nnz_per_row-with-dense", {"dense": True, "nnz_per_row": 0}, ValueError, "nnz_per_row"),
]
@pytest.mark.parametrize(("overrides", "error", "name"), [case[1:] for case in MAKE_PROBLEM_CASES] + [
    pytest.param({"scale": None}, TypeError, "scale", id="scale-None"),
    pytest.param({"scale": "1"}, TypeError, "scale", id="scale-str"),
    pytest.param({"noise": None}, TypeError, "noise", id="noise-None"),
    pytest.param({"seed": "0"}, TypeError, "seed", id="seed-str"),
], ids=[case[0] for case in MAKE_PROBLEM_CASES] + ["scale-None", "scale-str", "noise-None", "seed-str"])
def test_bad_make_problem_input_is_rejected_with_its_name(overrides, error, name):
    kwargs = {"n": 10, "d": 5}
    kwargs.update(overrides)
    n, d = kwargs.pop("n"), kwargs.pop("d")
    with pytest.raises(error, match=word(name)):
        make_problem(n, d, **kwargs)


# ---------------------------------------------------------------------------------------------
# Inputs are never modified
# ---------------------------------------------------------------------------------------------
def _messy_csr(seed=0, n=300, d=6, dtype=np.float64):
    """CSR with unsorted indices, duplicate entries and explicit zeros (all legal in SciPy)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 6, n)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    indices = rng.integers(0, d, indptr[-1]).astype(np.int32)  # repeats within a row: duplicates
    data = rng.standard_normal(indptr[-1])
    data[::7] = 0.0
    C = sp.csr_matrix((data.astype(dtype), indices, indptr), shape=(n, d))
    assert not C.has_canonical_format
    return C


def _snapshot(value):
    if sp.issparse(value):
        return {name: getattr(value, name).copy() for name in ("data", "indices", "indptr", "row", "col")
                if hasattr(value, name)}
    return copy.deepcopy(value)


def _assert_same(before, after):
    if isinstance(before, dict):
        for name, array in before.items():
            now = getattr(after, name)
            assert np.asarray(now).dtype == np.asarray(array).dtype, name
            assert np.array_equal(now, array), name
    else:
        assert after.dtype == before.dtype and after.shape == before.shape
        assert np.array_equal(after, before)


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
@pytest.mark.parametrize("model", ["softmax", "relu_softmax", "softmax_relu"])
@pytest.mark.parametrize("layout", ["messy-csr", "coo", "dense", "dense-fortran", "csr-float32"])
def test_inputs_are_never_modified(model, layout):
    messy = _messy_csr()
    n, d = messy.shape
    C = {"messy-csr": messy, "coo": messy.tocoo(), "dense": messy.toarray(),
         "dense-fortran": np.asfortranarray(messy.toarray()),
         "csr-float32": _messy_csr(dtype=np.float32)}[layout]
    rng = np.random.default_rng(1)
    x_true = rng.standard_normal(d)
    V = rng.uniform(-0.5, 1.0, (n, 4)) if model == "softmax_relu" else None
    s = softmax(np.asarray(messy @ x_true))
    b = np.maximum(V.T @ s, 0.0) if V is not None else s * (1 + 0.1 * rng.standard_normal(n))
    x0 = 0.1 * rng.standard_normal(d)
    row_weights = rng.uniform(0.0, 1e-6, n)
    inputs = {"C": C, "b": b, "V": V, "x0": x0, "row_weights": row_weights}
    before = {name: _snapshot(value) for name, value in inputs.items() if value is not None}
    for start, hessian in ((x0, "exact"), ("auto", "auto"), ("zeros", "pcg")):
        solve(C, b, model, V=V, x0=start, row_weights=row_weights, l2=1e-6, max_iter=5, hessian=hessian, seed=0)
    problem = Problem(C, b, model, V=V, row_weights=row_weights)
    problem.hessian(x0)
    problem.hessp(x0, x0)
    for name, snapshot in before.items():
        _assert_same(snapshot, inputs[name])
    if sp.issparse(C) and C.format == "csr":
        assert not C.has_canonical_format  # not sorted or summed in place


def _read_only(*arrays):
    for array in arrays:
        array.setflags(write=False)


def test_read_only_inputs_are_accepted():
    C, b, _ = make_problem(300, 6, seed=2, noise=0.05)
    reference = solve(C, b, x0="zeros", row_weights=np.full(300, 1e-7))
    dense = C.toarray()
    frozen_csr = C.copy()
    x0, w = np.zeros(6), np.full(300, 1e-7)
    _read_only(dense, frozen_csr.data, frozen_csr.indices, frozen_csr.indptr, b, x0, w)
    for matrix in (dense, frozen_csr):
        res = solve(matrix, b, x0=x0, row_weights=w)
        assert np.allclose(res.x, reference.x, rtol=1e-10, atol=1e-12 * np.abs(reference.x).max())


# ---------------------------------------------------------------------------------------------
# Every format, dtype and layout gives the canonical answer
# ---------------------------------------------------------------------------------------------
SPARSE_FORMATS = ["coo", "csc", "lil", "dia", "dok", "bsr"]


def _as_format(C, fmt, kind):
    """C (a SciPy CSR) in format ``fmt`` as a *_matrix or *_array."""
    converted = C.asformat(fmt)
    if kind == "array":
        converted = getattr(sp, f"{fmt}_array")(converted)
    else:
        converted = getattr(sp, f"{fmt}_matrix")(converted)
    assert converted.format == fmt
    return converted


def _canonical_problem(seed=3, n=400, d=8):
    C, b, _ = make_problem(n, d, nnz_per_row=4, seed=seed, noise=0.05, scale=2.0)
    return C, b


def _assert_same_solution(res, reference):
    # Different storage changes only the order of floating-point sums (~1e-16 relative per
    # operation); both solves converge quadratically to the same minimiser, so x agrees far
    # better than 1e-10 relative unless the input was misread.
    assert res.converged, res.message
    assert np.linalg.norm(res.x - reference.x) <= 1e-10 * np.linalg.norm(reference.x)


SOLVE_OPTIONS = {"x0": "zeros", "l2": 1e-7}


@pytest.mark.filterwarnings("ignore::scipy.sparse.SparseEfficiencyWarning")  # DIA of a random matrix
@pytest.mark.parametrize("kind", ["matrix", "array"])
@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_every_sparse_format_gives_the_csr_solution(fmt, kind):
    C, b = _canonical_problem()
    reference = solve(C, b, **SOLVE_OPTIONS)
    assert reference.converged
    _assert_same_solution(solve(_as_format(C, fmt, kind), b, **SOLVE_OPTIONS), reference)


def _duplicated(C):
    """Same matrix, every entry stored twice as two halves, rows' entries reversed (unsorted)."""
    coo = C.tocoo()
    half = coo.data / 2
    rows = np.concatenate([coo.row, coo.row])
    cols = np.concatenate([coo.col, coo.col])
    data = np.concatenate([half, coo.data - half])
    order = np.lexsort((-cols, rows))
    indptr = np.searchsorted(rows[order], np.arange(C.shape[0] + 1)).astype(np.int32)
    return sp.csr_matrix((data[order], cols[order].astype(np.int32), indptr), shape=C.shape)


def _with_explicit_zeros(C):
    coo = C.tocoo()
    extra_rows = np.arange(C.shape[0])
    extra_cols = (extra_rows * 7) % C.shape[1]
    rows = np.concatenate([coo.row, extra_rows])
    cols = np.concatenate([coo.col, extra_cols])
    data = np.concatenate([coo.data, np.zeros(extra_rows.size)])
    result = sp.coo_matrix((data, (rows, cols)), shape=C.shape).tocsr()  # sums into duplicates
    result = sp.csr_matrix((np.append(result.data, 0.0),
                            np.append(result.indices, 0).astype(result.indices.dtype),
                            np.append(result.indptr[:-1], result.indptr[-1] + 1).astype(result.indptr.dtype)),
                           shape=C.shape)  # and one explicit zero at the end of the last row
    return result


def _int64_indices(C):
    C = C.copy()
    C.indices = C.indices.astype(np.int64)
    C.indptr = C.indptr.astype(np.int64)
    return C


def _strided_dense(C):
    big = np.zeros((2 * C.shape[0], 3 * C.shape[1]))
    big[::2, ::3] = C.toarray()
    view = big[::2, ::3]
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    return view


def _uint32_indptr(C):
    C = C.copy()
    C.indptr = C.indptr.astype(np.uint32)  # assigned after construction: SciPy keeps it as it is
    return C


VARIANTS = {
    "unsorted-duplicates": _duplicated,
    "uint32-indptr": _uint32_indptr,
    "explicit-zeros": _with_explicit_zeros,
    "int64-indices": _int64_indices,
    "mixed-index-dtypes": lambda C: sp.csr_matrix((C.data, C.indices.astype(np.int64), C.indptr),
                                                  shape=C.shape),
    "non-contiguous-data": lambda C: sp.csr_matrix((np.repeat(C.data, 2)[::2], C.indices, C.indptr),
                                                   shape=C.shape),
    "dense-C-order": lambda C: C.toarray(),
    "dense-F-order": lambda C: np.asfortranarray(C.toarray()),
    "dense-strided": _strided_dense,
    "dense-list": lambda C: C.toarray().tolist(),
    "dense-read-only": lambda C: _frozen(C.toarray()),
    "csr-read-only": lambda C: _frozen_csr(C),
}


def _frozen(array):
    array.setflags(write=False)
    return array


def _frozen_csr(C):
    C = C.copy()
    _read_only(C.data, C.indices, C.indptr)
    return C


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_storage_variants_give_the_csr_solution(variant):
    C, b = _canonical_problem()
    reference = solve(C, b, **SOLVE_OPTIONS)
    _assert_same_solution(solve(VARIANTS[variant](C), b, **SOLVE_OPTIONS), reference)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint64])
@pytest.mark.parametrize("fault, message", [("decreasing", "start at 0 and never decrease"),
                                            ("overrunning", "exceeds")])
def test_a_corrupt_indptr_of_any_integer_type_is_rejected_naming_c(dtype, fault, message):
    """The index pointer's rule (kernels/csr.py ``indptr_fault``, which reads int32 and int64) holds for the
    other integer types too: they are checked as int64."""
    C = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [4.0, 0.0, 5.0]]))
    indptr = C.indptr.astype(dtype)
    if fault == "decreasing":
        indptr[2] = indptr[1] - 1
    else:
        indptr[-1] = indptr[-1] + 1
    C.indptr = indptr
    with pytest.raises(ValueError, match=f"C is a corrupt sparse matrix.*{message}"):
        solve(C, np.full(3, 1.0 / 3.0))


@pytest.mark.parametrize("layout", ["csr", "csr-int64", "coo", "dense", "dense-F-order"])
def test_float32_values_match_the_rounded_float64_matrix(layout):
    C, b = _canonical_problem()
    C32 = C.astype(np.float32)
    reference = solve(C32.astype(np.float64), b, **SOLVE_OPTIONS)
    C_in = {"csr": C32, "csr-int64": _int64_indices(C32), "coo": C32.tocoo(), "dense": C32.toarray(),
            "dense-F-order": np.asfortranarray(C32.toarray())}[layout]
    assert C_in.dtype == np.float32
    _assert_same_solution(solve(C_in, b, **SOLVE_OPTIONS), reference)


def test_vectors_in_any_dtype_and_layout_are_accepted():
    C, b = _canonical_problem()
    n, d = C.shape
    w = np.linspace(0.0, 1e-7, n)
    x0 = np.linspace(-0.1, 0.1, d)
    reference = solve(C, b, x0=x0, row_weights=w)
    strided_b = np.zeros(2 * n)
    strided_b[::2] = b
    strided_w = np.zeros(3 * n)
    strided_w[::3] = w
    res = solve(C, strided_b[::2], x0=list(x0), row_weights=strided_w[::3])
    assert np.array_equal(res.x, reference.x)
    res32 = solve(C, b.astype(np.float32), x0=x0.astype(np.float32))
    reference32 = solve(C, b.astype(np.float32).astype(np.float64), x0=x0.astype(np.float32).astype(np.float64))
    assert np.array_equal(res32.x, reference32.x)


@pytest.mark.filterwarnings("ignore::scipy.sparse.SparseEfficiencyWarning")
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(30, 200),
    d=st.integers(1, 6),
    density=st.floats(0.2, 0.9),
    fmt=st.sampled_from(SPARSE_FORMATS + ["csr", "dense"]),
    kind=st.sampled_from(["matrix", "array"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    index_dtype=st.sampled_from([np.int32, np.int64]),
)
def test_random_inputs_in_any_format_give_the_canonical_solution(seed, n, d, density, fmt, kind, dtype,
                                                                 index_dtype):
    rng = np.random.default_rng(seed)
    C = sp.random(n, d, density=density, format="csr", random_state=rng, dtype=np.float64,
                  data_rvs=rng.standard_normal).astype(dtype)
    x_true = rng.standard_normal(d)
    b = softmax(np.asarray(C.astype(np.float64) @ x_true))
    # tol = 1e-12: formats round their passes differently (dense vs CSR kernels), so the two
    # solves stop at different iterates within tol; at the default 1e-8 x differed by ~1e-9
    # (d = 1, n = 30). One more quadratic step puts both at the optimum to rounding.
    options = {"x0": "zeros", "l2": 1e-6, "tol": 1e-12}
    reference = solve(C.astype(np.float64), b, **options)
    if fmt == "dense":
        C_in = C.toarray()
    else:
        C_in = _as_format(C, fmt, kind) if fmt != "csr" else C
        if fmt == "csr" and index_dtype == np.int64:
            C_in = _int64_indices(C)
    res = solve(C_in, b, **options)
    assert res.status == reference.status
    scale = max(np.linalg.norm(reference.x), 1e-300)
    assert np.linalg.norm(res.x - reference.x) <= 1e-10 * scale


# ---------------------------------------------------------------------------------------------
# Masked arrays, extension arrays, copies, extreme option values, memory (hostile-user round 2)
# ---------------------------------------------------------------------------------------------
def _masked(array, masked=True):
    mask = np.zeros(np.shape(array), dtype=bool)
    if masked:
        mask.flat[0] = True
    return np.ma.MaskedArray(np.asarray(array, dtype=np.float64), mask=mask)


MASKED_CASES = {
    "C": lambda: dict(C=_masked(C0_DENSE)),
    "b": lambda: dict(b=_masked(B0)),
    "row_weights": lambda: dict(row_weights=_masked(np.ones(N))),
    "V": lambda: dict(model="softmax_relu", V=_masked(V0), b=BV0),
}


@pytest.mark.parametrize("name", sorted(MASKED_CASES))
def test_masked_entries_are_rejected_naming_the_argument(name):
    """The mask was silently ignored (the values under it were used)."""
    with pytest.raises(ValueError, match=word(name) + ".*masked"):
        Problem(**_arguments(MASKED_CASES[name]()))


def test_masked_x0_is_rejected_and_an_unmasked_masked_array_is_its_data():
    with pytest.raises(ValueError, match=word("x0") + ".*masked"):
        solve(C0, B0, x0=_masked(np.zeros(D)))
    plain = Problem(C0, B0).loss(np.full(D, 0.2))
    assert Problem(_masked(C0_DENSE, masked=False), _masked(B0, masked=False)).loss(np.full(D, 0.2)) == \
        pytest.approx(plain, rel=1e-14)


class _ExtensionArray:
    """What NumPy sees of a pandas ``Float64`` Series: an object array, plus pandas' ``to_numpy``."""

    def __init__(self, values, missing=()):
        self.values = np.asarray(values, dtype=np.float64)
        self.missing = set(missing)

    def __array__(self, dtype=None, copy=None):
        out = np.array([None if i in self.missing else float(v) for i, v in enumerate(self.values)], dtype=object)
        return out if dtype is None else out.astype(dtype)

    def __len__(self):
        return self.values.shape[0]

    def to_numpy(self, dtype=None, na_value=None):
        out = self.values.astype(dtype or np.float64, copy=True)
        out[list(self.missing)] = na_value
        return out


def test_extension_float_arrays_are_converted():
    """pandas Float64 (no NA) was rejected as "dtype object"; it is converted, and NA is named as non-finite."""
    reference = Problem(C0, B0, row_weights=np.full(N, 0.1)).loss(np.full(D, 0.2))
    problem = Problem(C0, _ExtensionArray(B0), row_weights=_ExtensionArray(np.full(N, 0.1)))
    assert problem.loss(np.full(D, 0.2)) == reference
    with pytest.raises(ValueError, match=word("b") + ".*finite"):
        Problem(C0, _ExtensionArray(B0, missing=[3]))


def test_pandas_float64_series_is_converted():
    pd = pytest.importorskip("pandas")
    reference = Problem(C0, B0).loss(np.full(D, 0.2))
    assert Problem(C0, pd.Series(B0, dtype="Float64")).loss(np.full(D, 0.2)) == reference
    with pytest.raises(ValueError, match=word("b")):
        Problem(C0, pd.Series(np.where(np.arange(N) == 3, np.nan, B0), dtype="Float64").astype("Float64"))


def test_problem_copies_b_v_and_row_weights():
    """Editing b after p.grad(x) gave a stale p.loss(x); b, V and w are now the Problem's own copies."""
    x = np.full(D, 0.3)
    for model, arguments in (("softmax", dict(b=B0.copy(), row_weights=np.full(N, 0.2))),
                             ("softmax_relu", dict(b=BV0.copy(), V=V0.copy(), row_weights=np.full(N, 0.2)))):
        problem = Problem(C0, model=model, **arguments)
        loss, grad = problem.loss(x), problem.grad(x)
        for value in arguments.values():
            value *= 3.0  # the caller edits every array in place
        problem._last = problem._last_forward = None  # even without the cache the values are the old ones
        assert problem.loss(x) == loss
        np.testing.assert_array_equal(problem.grad(x), grad)


def test_editing_c_in_place_has_the_documented_behaviour():
    """C is not copied: the cached point keeps its old loss and gradient, any other point and
    clear_cache() read the new C."""
    C = C0.copy()
    problem = Problem(C, B0)
    x, other = np.full(D, 0.3), np.full(D, -0.2)
    loss, grad = problem.loss(x), problem.grad(x)
    C.data *= 2.0
    assert problem.loss(x) == loss
    np.testing.assert_array_equal(problem.grad(x), grad)
    fresh = Problem(C.copy(), B0)
    assert problem.loss(other) == fresh.loss(other)
    problem.clear_cache()
    assert problem.loss(x) == fresh.loss(x)
    np.testing.assert_array_equal(problem.grad(x), fresh.grad(x))


@pytest.mark.parametrize("eps", [1e-300, 1e-160, 1e-12])
def test_tiny_eps_keeps_every_row_instead_of_overflowing(eps):
    """eps = 1e-300 raised ZeroDivisionError/OverflowError in sample_size; a tiny ε now means "sample every row"."""
    from fastnewton.sketching import MAX_SAMPLE_SIZE, sample_size

    assert sample_size(D, eps) == MAX_SAMPLE_SIZE  # beyond every n: all rows kept (πᵢ = 1)
    res = solve(C0, B0, hessian="sketch", eps=eps, seed=0)
    exact = solve(C0, B0, hessian="exact", seed=0)
    assert res.converged
    np.testing.assert_allclose(res.x, exact.x, rtol=1e-6, atol=1e-8)


def test_overflowing_v_is_rejected_naming_v(capfd):
    """V·1e300 raised LinAlgError from the start (and LAPACK printed on stderr)."""
    with pytest.raises(ValueError, match=word("V") + ".*too large"):
        solve(C0, BV0, "softmax_relu", V=V0 * 1e300)
    assert capfd.readouterr().err == ""
    assert Problem(C0, BV0, "softmax_relu", V=V0 * 1e100).loss(np.zeros(D)) >= 0  # large but usable


def test_make_problem_with_overflowing_scale_is_named():
    # seeded: with a random x_true, 17 of 3000 draws had no logit past float64's range (this test failed once)
    with pytest.raises(ValueError, match=word("scale")):
        make_problem(2000, 8, nnz_per_row=4, scale=1e308, seed=0)
    C, b, _ = make_problem(2000, 8, nnz_per_row=4, scale=1e150)
    assert np.all(np.isfinite(b))


def test_iteration_too_large_for_memory_raises_before_allocating(monkeypatch):
    import fastnewton.memory

    monkeypatch.setattr(fastnewton.memory, "available_bytes", lambda: 2000)  # bytes; the iteration needs ~6 kB
    solve(C0, B0)  # a need this small is not checked (CHECKED_FROM_BYTES)
    monkeypatch.setattr(fastnewton.memory, "CHECKED_FROM_BYTES", 0)
    with pytest.raises(MemoryError, match=f"n = {N} rows"):
        solve(C0, B0)


def test_cli_too_large_for_memory_is_an_up_front_error(monkeypatch, capsys):
    """The CLI at n = 10⁸ under a memory limit ended in Numba's "Allocation failed" seconds later."""
    import fastnewton.memory
    from fastnewton.__main__ import main

    monkeypatch.setattr(fastnewton.memory, "available_bytes", lambda: 8 * 2**30)
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--n", "100000000"])
    assert stop.value.code == 2
    assert "memory" in capsys.readouterr().err


def test_available_memory_honours_the_address_space_limit():
    import subprocess
    import sys

    code = ("import resource; from fastnewton.memory import available_bytes; "
            "resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.RLIM_INFINITY)); "
            "print(available_bytes() <= 6 * 2**30)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "csr"])
def test_finite_entries_whose_sum_overflows_are_accepted_and_a_nan_among_them_is_not(dense):
    # The finiteness check clears an array by its sum; finite entries near the float64 maximum
    # overflow that sum and must fall through to the entrywise test, which accepts them.
    big = np.full((4, 3), 1.5e308)
    Problem(big if dense else sp.csr_matrix(big), np.full(4, 0.25))
    big[2, 1] = np.nan
    with pytest.raises(ValueError, match="C must contain only finite values"):
        Problem(big if dense else sp.csr_matrix(big), np.full(4, 0.25))
    with pytest.raises(ValueError, match="b must contain only finite values"):
        Problem(np.ones((2, 2)), np.array([np.inf, -np.inf]))


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "csr"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e200], ids=["nan", "inf", "-inf", "square-overflows"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_large_c_is_checked_by_its_kept_column_squares(bad, dtype, dense):
    """From COLUMN_SQUARES_CHECK_ENTRIES entries C (dense or CSR) is checked by its column squares (the solve's
    column scale needs them; one pass kept by the matrix): a NaN or Inf entry still raises a ValueError
    naming C, finite entries whose squares overflow (1e200² = inf) still pass, and the squares the check
    formed are the ones the Problem's column norms use (no second pass)."""
    from fastnewton.validation import COLUMN_SQUARES_CHECK_ENTRIES

    if dtype == np.float32 and np.isfinite(bad):
        pytest.skip("float32 has no finite value whose float64 square overflows")
    d = 64
    n = COLUMN_SQUARES_CHECK_ENTRIES // d
    C = np.random.default_rng(3).standard_normal((n, d)).astype(dtype)
    if not dense:
        C = sp.csr_matrix(C)  # every entry stored: nnz = n·d
        assert C.nnz >= COLUMN_SQUARES_CHECK_ENTRIES
    b = np.full(n, 1.0 / n)
    problem = Problem(C, b)
    squares = problem.matrix.column_squares()
    assert squares is problem.matrix.column_squares() and not squares.flags.writeable
    dense_c = C if dense else C.toarray()
    np.testing.assert_allclose(squares, (dense_c.astype(np.float64) ** 2).sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(problem.column_norms(), np.sqrt(squares))
    C[n // 2, d // 3] = bad
    if np.isfinite(bad):
        with np.errstate(over="ignore"):
            assert not np.isfinite(Problem(C, b).matrix.column_squares()).all()
    else:
        with pytest.raises(ValueError, match="C must contain only finite values"):
            Problem(C, b)
    # clear_cache (after C is edited in place) forms the squares again.
    problem.clear_cache()
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(problem.matrix.column_squares()[d // 3])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_solve_checks_a_large_dense_c_on_its_first_pass(bad):
    """``solve`` checks a large dense C's entries by the column squares of its first pass over C (no pass of
    their own), with Problem's message, whatever the start and strategy; finite entries whose squares
    overflow still pass (the entrywise check)."""
    rng = np.random.default_rng(5)
    n, d = 2**13, 40  # ≥ COLUMN_SQUARES_CHECK_ENTRIES entries
    C = rng.standard_normal((n, d))
    b = np.full(n, 1.0 / n)
    C[n // 2, 7] = bad
    for x0, hessian in (("auto", "pcg"), ("auto", "exact"), ("zeros", "auto"), (np.zeros(d), "lagged")):
        with pytest.raises(ValueError, match="C must contain only finite values"):
            solve(C, b, x0=x0, hessian=hessian, max_iter=3)
    C[n // 2, 7] = 1e200
    res = solve(C, b, max_iter=1)
    assert res.n_iter <= 1


@pytest.mark.parametrize("scale, error", [("x", TypeError), ([1.0, 2.0], TypeError), (0.0, ValueError),
                                          (np.nan, ValueError), (-1.0, ValueError), (True, TypeError)])
def test_scaled_problem_names_a_bad_scale(scale, error):
    problem = Problem(np.eye(2), np.array([0.5, 0.5]))
    with pytest.raises(error, match="scale must be a finite number > 0"):
        problem.scaled(scale)


def test_scaled_problem_divides_by_the_given_scale():
    problem = Problem(np.eye(2), np.array([0.5, 0.5]))
    x = np.array([0.3, -0.1])
    scaled = problem.scaled(np.float64(2.0))
    assert scaled.loss(x) == problem.loss(x) / 2.0
    np.testing.assert_array_equal(scaled.grad(x), problem.grad(x) / 2.0)


@pytest.mark.parametrize("factor", [1e-160, 1e-300])
def test_scaled_problem_takes_solves_g_ref_where_its_squares_underflow(factor):
    # ‖∇L(0)‖ ~1e-162: np.linalg.norm read 0 ("scale must be > 0 (is ∇L(0) = 0?)") where solve converges
    C, b, _ = make_problem(50, 4, seed=0)
    assert Problem(C * factor, b).scaled().scale == solve(C * factor, b).g_ref > 0


def test_scaled_problem_says_when_the_reference_overflows():
    C, b, _ = make_problem(50, 4, seed=0)
    with pytest.raises(ValueError, match="overflows float64"):
        Problem(C * 1e200, b).scaled()


@pytest.mark.parametrize("method", ["loss", "grad", "loss_and_grad", "hessian", "hessp"])
def test_problem_methods_warn_where_the_result_at_x_is_not_finite(method):
    # A finite x whose C·x overflows: NaN came back unannounced (solve stops there with NON_FINITE)
    problem = Problem(np.array([[1.0], [2.0]]), np.array([0.5, 0.5]))
    arguments = (np.array([1e308]),) + ((np.ones(1),) if method == "hessp" else ())
    with pytest.warns(RuntimeWarning, match=f"Problem.{method}: the result at this x is not finite"):
        getattr(problem, method)(*arguments)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(problem, method)(*((np.array([0.3]),) + arguments[1:]))


def test_on_off_options_callbacks_and_a_zero_d_row_weight():
    # From a hostile sweep: verbose="no" printed the table and an array raised NumPy's "truth value … ambiguous";
    # a callback of the wrong arity failed after the first iteration with its own TypeError, not naming callback;
    # a callback editing its record (a shallow copy) changed the history; row_weights=np.array(1e-3) was refused
    # where l2=np.array(1e-3) is taken.
    import fastnewton

    C, b, _ = make_problem(300, 6, nnz_per_row=4, noise=1e-2, seed=0)
    for keyword, value in (("verbose", "no"), ("verbose", np.array([1, 2])), ("progress", np.array([1, 2]))):
        with pytest.raises(TypeError, match=f"{keyword} must be True or False"):
            solve(C, b, **{keyword: value})
    with pytest.raises(TypeError, match="verbose must be True or False"):
        fastnewton.solve_many(C, np.column_stack([b, b]), verbose="no")
    assert solve(C, b, verbose=0).converged  # an integer is taken as its truth value, None as off
    assert solve(C, b, verbose=None, progress=None).converged
    for callback in (lambda: None, lambda record, extra: None):
        with pytest.raises(TypeError, match=r"callback must take one argument .* signature \("):
            solve(C, b, callback=callback)
    assert solve(C, b, callback=lambda *records: None).converged
    assert solve(C, b, callback=lambda *, intermediate_result: None).converged

    def edits(record):
        record["seconds"]["forward"] = -1.0
        record["loss"] = -1.0

    edited = solve(C, b, callback=edits)
    assert all(record["seconds"].get("forward", 0.0) >= 0.0 and record["loss"] >= 0.0 for record in edited.history)
    np.testing.assert_array_equal(solve(C, b, row_weights=np.array(1e-3)).x, solve(C, b, row_weights=1e-3).x)
    with pytest.raises(TypeError, match="row_weights must be a number"):
        solve(C, b, row_weights=np.array(True))
