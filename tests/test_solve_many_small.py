"""``solve_many(problems)``: many independent small problems in one call.

Independent reference: ``fastnewton.solve`` on each problem alone (its own tests check it against
finite differences and scipy). The compiled loop must give each problem solve's answer: x within
1e-10 relative (the two differ only in rounding — BLAS vs loop order in the sandwich and the
Cholesky, ~1e-16 relative per iteration, which Newton's contraction does not amplify), the same
status, iteration count and message (except where a solve stalls at the rounding floor: there the
stagnation window counts steps whose progress is rounding noise, so it may end a few steps apart,
and its message's ‖∇L‖/g_ref, itself rounding noise, differs).
"""
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import fastnewton
from fastnewton import Status, make_problem, solve, solve_many
from fastnewton.newton import STALL_WINDOW

X_RTOL = 1e-10
# softmax_relu's compiled loop (kernels/small_softmax_relu.py) sums its small dense products (P S Pᵀ, the
# active-set solves, dot products) in loops where solve calls BLAS: x agrees to ~1e-12 relative, and a loss at a
# zero residual (a reachable target: L ~ 1e-25) differs in its own rounding (~1e-28 measured).
RELU_OUTPUT_LOSS_ATOL = 1e-20
# Where softmax_relu's minimiser is a valley (m < d outputs, or a dead one), x beyond X_RTOL is accepted up to this
# factor times the distance by which solve's own x moves when C is given in the other format (dense ↔ CSR: the
# same problem up to rounding). Measured on the problems below: solve_many within 1e-9–6e-7 relative where solve
# itself moved 7e-11–0.8 (the largest ratio 4, a dead-output problem at 2.8e-10 against solve's 7.2e-11).
VALLEY_FACTOR = 100.0


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        return function(*args, **kwargs)


def _mixed(model, count=8, seed=0):
    """Problems of differing shapes, alternately dense and CSR (with float32 and int64-index variants)."""
    rng = np.random.default_rng(seed)
    problems = []
    for i in range(count):
        n, d = int(rng.integers(30, 200)), int(rng.integers(3, 30))
        made = make_problem(n, d, nnz_per_row=min(d, 3), model=model, m=4, noise=0.05, seed=seed * 100 + i)
        C, b = made[0], made[1]
        if i % 4 == 1:
            C = C.toarray()
        elif i % 4 == 2:
            C = C.toarray().astype(np.float32)
        elif i % 4 == 3:
            C = sp.csr_matrix((C.data, C.indices.astype(np.int64), C.indptr.astype(np.int64)), shape=C.shape)
        problems.append((C, b, made.V) if model == "softmax_relu" else (C, b))
    return problems


def _masked(message):
    """The message with ‖∇L‖/g_ref masked: at the rounding floor (a stall) that ratio is rounding noise."""
    return re.sub(r"g_ref = [0-9.e+-]+", "g_ref = …", message)


def _check_same_as_solve(problems, model, result, non_unique=(), **kwargs):
    """Each problem's answer is solve's: status, message, iterations, loss and x within X_RTOL; for the
    problems listed in ``non_unique`` (a minimiser that is not unique, e.g. duplicate columns) Cx instead of
    x: any rounding difference moves x along the valley, which the README states as the exception."""
    x0_each = kwargs.pop("x0_each", None)
    for i, problem in enumerate(problems):
        C, b, V = (*problem, None)[:3]
        x0 = kwargs.get("x0", "auto") if x0_each is None else x0_each[i]
        reference = _quiet(solve, C, b, model, V=V, **{**kwargs, "x0": x0})
        mine = result.problem(i)
        other_format = []

        def solve_other_format():
            # softmax_relu's valleys and long dead-output paths: solve on the other format's copy of C (the same
            # problem up to rounding) is the yardstick of what rounding alone changes. Solved once, when needed.
            if not other_format:
                other = C.toarray() if sp.issparse(C) else sp.csr_matrix(C)
                other_format.append(_quiet(solve, other, b, model, V=V, **{**kwargs, "x0": x0}))
            return other_format[0]
        assert mine["status"] == reference.status, (i, mine["message"], reference.message)
        assert _masked(mine["message"]) == _masked(reference.message), i
        if reference.status == Status.STALLED:
            # At the rounding floor the stagnation window counts steps whose progress is rounding
            # noise, which differs in the last bits between the two loops: it ends within one window.
            assert abs(mine["n_iter"] - reference.n_iter) <= STALL_WINDOW, i
        elif model == "softmax_relu" and mine["n_iter"] != reference.n_iter:
            # A long path (a dead output's ~95 iterations) can end one step apart by rounding alone: on this
            # machine solve's own count moves by one with the format of C, or with b perturbed by 1e-15.
            assert abs(mine["n_iter"] - reference.n_iter) <= abs(solve_other_format().n_iter - reference.n_iter), i
        else:
            assert mine["n_iter"] == reference.n_iter, i
        if i in non_unique:
            mine_u, reference_u = C @ mine["x"], C @ reference.x
            assert np.linalg.norm(mine_u - reference_u) <= X_RTOL * max(np.linalg.norm(reference_u), 1e-300), i
        else:
            scale = max(np.linalg.norm(reference.x), 1e-300)
            error = np.linalg.norm(mine["x"] - reference.x)
            if model == "softmax_relu" and error > X_RTOL * scale:
                # m < d outputs (or a dead one) leave a valley of minimisers, along which any rounding moves x.
                moved = np.linalg.norm(solve_other_format().x - reference.x)
                assert error <= VALLEY_FACTOR * moved, (i, error / scale, moved / scale)
            else:
                assert error <= X_RTOL * scale, i
        # A loss at the rounding floor (an interpolating fit: residuals of n·ε·‖b‖ each at most, so a loss below
        # (n·ε·‖b‖)²) is rounding noise in every digit (a wide relu_softmax problem: 1.5610e-29 against 1.5619e-29).
        floor = (C.shape[0] * np.finfo(np.float64).eps * np.linalg.norm(b)) ** 2
        atol = max(RELU_OUTPUT_LOSS_ATOL if model == "softmax_relu" else 1e-300, floor)
        assert mine["loss"] == pytest.approx(reference.loss, rel=1e-10, abs=atol)
        assert mine["converged"] == reference.converged


@pytest.mark.parametrize("model", ["softmax", "relu_softmax", "softmax_relu"])
def test_same_answers_as_a_loop_of_solve(model):
    problems = _mixed(model)
    result = _quiet(solve_many, problems, model=model)
    assert len(result) == len(problems)
    assert isinstance(result.x, list)  # the d differ
    _check_same_as_solve(problems, model, result)


def test_mixed_problems_exercise_both_packed_formats():
    """The compiled loop runs CSR problems with few entries per row as CSR and the others as dense rows."""
    from fastnewton.many_small import _Packed, _start_kind
    from fastnewton.problem import Problem

    problems = [Problem(C, b) for C, b in _mixed("softmax")]
    pack = _Packed.of_problems(problems, [_start_kind(problem.row_model.relu, problem.facts, "auto", problem.d)
                                          for problem in problems])
    from fastnewton.kernels.small_newton import L_CSR

    assert set(pack.layout[:, L_CSR]) == {0, 1}


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
@pytest.mark.parametrize("hessian, x0", [("auto", "zeros"), ("lagged", "auto")])
def test_same_answers_with_ridge_row_weights_and_a_start(model, hessian, x0, monkeypatch):
    # Built Problems (row weights) and plain ones, every one compiled.
    problems = _mixed(model, count=6, seed=1)
    weights = [0.5 if i % 2 else None for i in range(len(problems))]
    loops = _newton_loops_in_python(monkeypatch)
    result = _quiet(solve_many, problems, model=model, hessian=hessian, l2=1e-3, row_weights=weights, x0=x0)
    assert not loops
    for i, (C, b) in enumerate(problems):
        keywords = dict(l2=1e-3, row_weights=weights[i], x0=x0)
        reference = _quiet(solve, C, b, model, hessian=hessian, **keywords)
        mine = result.problem(i)
        assert (mine["status"], mine["message"]) == (reference.status, reference.message)
        error = np.linalg.norm(mine["x"] - reference.x)
        tolerance = X_RTOL * max(np.linalg.norm(reference.x), 1e-300)
        if (model, hessian) == ("relu_softmax", "lagged"):
            # A held step puts rows at their ReLU kink, on the side that rounding decides (the compiled loop sums in
            # loops where solve calls BLAS), and ∇L jumps with that side: the path can differ (problem 1: 10
            # iterations against 13, x within 1e-13; problem 3: 21 against 17). Both answers meet the stopping test,
            # which determines x only so far: the compiled x lies within the spread of solve's own answers with
            # exact and lagged (problem 3: 6.4e-10 both).
            spread = np.linalg.norm(_quiet(solve, C, b, model, hessian="exact", **keywords).x - reference.x)
            assert error <= max(tolerance, VALLEY_FACTOR * spread), (i, error, spread)
        else:
            assert mine["n_iter"] == reference.n_iter
            assert error <= tolerance


def test_dead_max_iter_stalled_and_non_finite_problems_match_solve():
    C, b, _ = make_problem(150, 6, nnz_per_row=3, noise=0.05, seed=3)
    big = C * 1e160
    cases = [
        ("relu_softmax", (C, b), dict(x0="zeros")),  # x = 0: the dead stationary point
        ("softmax", (C, b), dict(max_iter=1)),
        ("softmax", (C.toarray(), b), dict(tol=1e-300)),  # unreachable tol: the stagnation window
        ("softmax", (big, b), dict(x0="zeros")),  # overflow: NON_FINITE with the reason
        ("softmax", (C, b), dict(l2=1e300)),
        ("relu_softmax", (C, b), dict(row_weights=1e300)),
    ]
    seen = set()
    for model, problem, kwargs in cases:
        result = _quiet(solve_many, [problem, (C, b)], model=model, **kwargs)
        _check_same_as_solve([problem, (C, b)], model, result, **kwargs)
        seen.add(Status(result.status[0]))
    assert {Status.DEAD_STATIONARY, Status.MAX_ITER, Status.STALLED, Status.NON_FINITE} <= seen


def test_relu_kink_stop_matches_solve():
    # Noisy relu_softmax targets with row weights and a ridge: the optimum puts a row at (Cx)ᵢ = 0, where
    # both loops hold it (kernels/kinks.py) and stop at a kink stationary point (they stalled there before).
    problems = [make_problem(300, 8, nnz_per_row=4, model="relu_softmax", noise=0.1, seed=s)[:2] for s in range(3)]
    kwargs = dict(row_weights=1e-3, l2=1e-4)
    result = _quiet(solve_many, problems, model="relu_softmax", **kwargs)
    _check_same_as_solve(problems, "relu_softmax", result, **kwargs)
    assert all("kink stationary point" in message for message in result.message)
    assert np.all(result.status == Status.CONVERGED)


def test_singular_starts_fall_back_to_the_python_start():
    """A rank-deficient fit (duplicate columns) and relu_softmax's margin LP (n < d) are finished in
    Python, one call per such problem, and still give solve's answers (Cx for the duplicate columns, whose
    minimiser is a valley: on an AVX2 EPYC solve_many's x sat 8.7e-7 along it from solve's, with Cx equal)."""
    C, b, _ = make_problem(80, 6, nnz_per_row=6, noise=0.05, seed=4, dense=True)
    duplicate = np.column_stack([C, C[:, :2]])
    wide, wide_b, _ = make_problem(12, 20, nnz_per_row=5, model="relu_softmax", seed=5)
    for model, problems in (("softmax", [(duplicate, b), (C, b)]), ("relu_softmax", [(wide, wide_b), (C, b)])):
        result = _quiet(solve_many, problems, model=model)
        _check_same_as_solve(problems, model, result, non_unique=(0,))


def test_bad_problem_is_reported_by_index_and_the_others_solve():
    C, b, _ = make_problem(100, 5, nnz_per_row=3, seed=6)
    nan_C = C.toarray()
    nan_C[3, 2] = np.nan
    problems = [(C, b), (nan_C, b), (C, b[:-1]), ("not a matrix", b), (C, b, np.ones((100, 2))), (C, b)]
    result = _quiet(solve_many, problems, model="softmax")
    reference = solve(C, b)
    for i in (0, 5):
        assert result.status[i] == Status.CONVERGED
        np.testing.assert_allclose(result.x[i], reference.x, rtol=1e-10)
    for i in (1, 2, 3, 4):
        assert result.status[i] == Status.INVALID_INPUT and not result.converged[i]
        assert f"problem {i}" in result.message[i]
        assert np.all(np.isnan(result.x[i]))
    assert "finite" in result.message[1] and "b" in result.message[2]


def test_non_finite_entries_of_plain_dense_problems_get_problems_messages():
    """Plain problems (a float64 b, a dense float64 or CSR C) are checked in bulk (one compiled pass over every b,
    a dense C's entries where the compiled solve reads them): a NaN or ±Inf anywhere gives solve's own error text
    (Problem's), with the problem's index, and the others solve."""
    made = make_problem(60, 4, seed=8, dense=True)
    C, b = np.ascontiguousarray(made.C, dtype=np.float64), made.b
    broken = []
    for where, value in [((0, 0), np.nan), ((59, 3), np.inf), ((17, 2), -np.inf)]:
        bad = C.copy()
        bad[where] = value
        broken.append((bad, b))
    for where, value in [(0, np.nan), (59, np.inf)]:
        bad = b.copy()
        bad[where] = value
        broken.append((C, bad))
        broken.append((sp.csr_matrix(C), bad))
    sparse = sp.csr_matrix(C)
    sparse.data[5] = np.nan
    broken.append((sparse, b))
    broken.append((sp.csr_matrix((0, 4)), np.empty(0)))  # no rows
    problems = [(C, b), *broken, (C, b)]
    result = _quiet(solve_many, problems, model="softmax")
    for i, (bad_C, bad_b) in enumerate(broken, start=1):
        with pytest.raises(ValueError) as error:
            solve(bad_C, bad_b)
        assert result.status[i] == Status.INVALID_INPUT
        assert result.message[i].endswith(f"problem {i}: {error.value}")
    reference = solve(C, b)
    for i in (0, len(problems) - 1):
        assert result.status[i] == Status.CONVERGED
        np.testing.assert_allclose(result.x[:, i], reference.x, rtol=X_RTOL)
    last_empty = _quiet(solve_many, [(C, b), broken[-1]], model="softmax")  # the bulk pass ends at an empty b
    assert list(last_empty.status) == [Status.CONVERGED, Status.INVALID_INPUT]
    assert last_empty.message[1] == result.message[len(broken)].replace(f"problem {len(broken)}", "problem 1")


def _csr_variants(C):
    """CSR copies of C with int32 and with int64 indices, each also edited in place into a corrupt or unusual
    form (``(matrix, corrupt)``): what the bulk check of plain CSR problems must accept or reject as
    ``as_input_matrix`` does."""
    n, d = C.shape
    variants = []
    for index_type in (np.int32, np.int64):
        def fresh():
            A = sp.csr_matrix(C)
            return sp.csr_matrix((A.data.copy(), A.indices.astype(index_type), A.indptr.astype(index_type)),
                                 shape=A.shape)
        variants.append((fresh(), False))
        for edit in ("nan", "inf", "column d", "column -1", "indptr start", "indptr decreasing", "indptr past end"):
            A = fresh()
            # SciPy's canonical flag formed before the edit and kept (as on a matrix edited after use): the
            # bulk check, not the flag, must catch each edit
            assert A.has_canonical_format
            if edit == "nan":
                A.data[7] = np.nan
            elif edit == "inf":
                A.data[-1] = -np.inf
            elif edit == "column d":
                A.indices[-1] = d
            elif edit == "column -1":
                A.indices[0] = -1
            elif edit == "indptr start":
                A.indptr[0] = 1
            elif edit == "indptr decreasing":
                A.indptr[n // 2] = A.indptr[n // 2 + 1] + 1
            else:
                A.indptr[-1] = A.indices.shape[0] + 1
            variants.append((A, True))
        # A non-finite value stored beyond indptr[-1] is not an entry; duplicates are summed (on a copy).
        A = fresh()
        A.data = np.append(A.data, np.nan)
        A.indices = np.append(A.indices, index_type(0)).astype(index_type)
        variants.append((A, False))
        duplicated = fresh()
        duplicated.indices[1] = duplicated.indices[0]  # row 0's first column twice: not canonical
        variants.append((duplicated, False))
    return variants


@pytest.mark.parametrize("d, pcg_picked", [(6, False), (40, False), (40, True)],
                         ids=["read-as-dense-rows", "read-in-place", "left-to-solve"])
def test_plain_csr_problems_checked_in_bulk_match_problems_checks(d, pcg_picked, monkeypatch):
    """A float64 CSR C with int32 or int64 indices has its indptr checked by one compiled pass over all such
    problems, and its entries where the compiled solve reads them in place (d = 40, 3 entries per row), or
    before it is read as dense rows (d = 6) or left to solve's loop: a corrupt one (a non-finite stored value, a
    column outside [0, d), an indptr that does not start at 0, decreases or runs past the stored entries) gets
    solve's own error text (Problem's) with its index; the others (values past indptr[-1] that are not
    entries, duplicates summed) get solve's answer."""
    import fastnewton.many_small as many_small_module
    left = []
    # auto's choice made pcg (the sketched strategies go to solve's loop; at this size auto picks exact or lagged,
    # both compiled, whatever the rates): solve is asked for pcg by name below.
    model = "softmax"
    if pcg_picked:
        monkeypatch.setattr(many_small_module, "choose_strategies",
                            lambda shapes, eps, sketch_size, default_start: ["pcg"] * len(default_start))
        solve_problem = many_small_module.solve_problem
        monkeypatch.setattr(many_small_module, "solve_problem",
                            lambda *args, **kwargs: left.append(1) or solve_problem(*args, **kwargs))
    made = make_problem(80, d, nnz_per_row=3, seed=9)
    b = made.b
    variants = _csr_variants(made.C)
    problems = [(C, b) for C, _ in variants]
    result = _quiet(solve_many, problems, model=model, seed=0)
    assert len(left) == (sum(not corrupt for _, corrupt in variants) if pcg_picked else 0)
    for i, (C, corrupt) in enumerate(variants):
        if corrupt:
            with pytest.raises(ValueError) as error:
                solve(C, b, model)
            assert result.status[i] == Status.INVALID_INPUT, i
            assert result.message[i].endswith(f"problem {i}: {error.value}"), i
        else:
            reference = _quiet(solve, C, b, model, seed=0, hessian="pcg" if pcg_picked else "auto")
            assert result.status[i] == reference.status == Status.CONVERGED, i
            np.testing.assert_allclose(result.x[:, i], reference.x, rtol=X_RTOL)


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_plain_problems_get_the_bits_of_problems_built_one_by_one(model):
    """Plain problems (float64 b, dense float64 or canonical float64 CSR C, no row weights) are checked and packed in
    bulk, without a Problem each; given zero row weights (``row_weights=0.0``) the same problems each get a
    Problem, whose packed inputs are the same: every output has the same bits (dense, CSR read in place and as
    dense rows, int32 and int64 indices, among float32 problems that are never plain)."""
    rng = np.random.default_rng(12)
    problems = []
    for i in range(10):
        d = int(rng.integers(4, 40))
        made = make_problem(int(rng.integers(30, 200)), d, nnz_per_row=3 if i % 2 else d // 2, model=model,
                            noise=0.05, seed=40 + i)
        C = made.C
        if i % 5 == 1:
            C = C.toarray()
        elif i % 5 == 2:
            C = sp.csr_matrix((C.data, C.indices.astype(np.int64), C.indptr.astype(np.int64)), shape=C.shape)
        elif i % 5 == 3:
            C = C.toarray().astype(np.float32)
        problems.append((C, made.b))
    plain = _quiet(solve_many, problems, model=model)
    built = _quiet(solve_many, problems, model=model, row_weights=0.0)
    for key in ("status", "n_iter", "loss", "grad_norm", "rel_grad_norm", "message"):
        assert list(plain[key]) == list(built[key]), key
    for x, y in zip(plain.x, built.x):
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_csr_rows_stored_unsorted_get_the_bits_of_their_sorted_copy(model):
    """A CSR C whose rows store their (distinct) columns out of order is read row by row, each row gathered sorted
    (the compiled sandwich's other loop, beside the one for rows known sorted): the same bits as the same C stored
    sorted, and solve's answer (1e-10)."""
    made = make_problem(300, 40, nnz_per_row=6, model=model, noise=0.05, seed=3)
    shuffled = made.C.copy()
    for i in range(shuffled.shape[0]):  # each row's entries reversed: no row sorted, no column repeated
        start, stop = shuffled.indptr[i], shuffled.indptr[i + 1]
        shuffled.indices[start:stop] = shuffled.indices[start:stop][::-1].copy()
        shuffled.data[start:stop] = shuffled.data[start:stop][::-1].copy()
    shuffled.has_sorted_indices = False
    assert not fastnewton.Problem(shuffled, made.b, model=model).matrix.rows_increasing
    batch = _quiet(solve_many, [(shuffled, made.b), (made.C, made.b)], model=model)
    assert batch.x[:, 0].tobytes() == batch.x[:, 1].tobytes()
    assert list(batch.n_iter) == [batch.n_iter[1]] * 2
    reference = _quiet(solve, shuffled, made.b, model)
    assert batch.status[0] == reference.status
    assert np.linalg.norm(batch.x[:, 0] - reference.x) <= 1e-10 * np.linalg.norm(reference.x)


def test_malformed_problems_argument_raises():
    C, b, _ = make_problem(50, 4, nnz_per_row=2, seed=7)
    with pytest.raises(ValueError, match="empty"):
        solve_many([])
    with pytest.raises(TypeError, match=r"problems\[1\]"):
        solve_many([(C, b), (C,)])
    with pytest.raises(TypeError, match=r"problems\[0\]"):
        solve_many([C])
    with pytest.raises(ValueError, match="exact or lagged Hessian"):
        solve_many([(C, b)], hessian="sketch")
    with pytest.raises(TypeError, match="callback"):
        solve_many([(C, b)], callback=lambda info: None)
    with pytest.raises(TypeError, match="per problem"):
        solve_many([(C, b)], V=np.ones((50, 2)))
    with pytest.raises(ValueError, match="one entry per problem"):
        solve_many([(C, b)], row_weights=[None, None])
    with pytest.raises(ValueError, match="x0"):
        solve_many([(C, b)], x0="ones")
    with pytest.raises(ValueError, match="tol"):
        solve_many([(C, b)], tol=-1.0)


def test_an_iterator_of_problems_is_read_once_like_a_list():
    problems = _mixed("softmax", count=4)
    listed = _quiet(solve_many, problems)
    for iterator in ((problem for problem in problems), zip(*zip(*problems)), iter(problems)):
        result = _quiet(solve_many, iterator)
        assert np.array_equal(result.status, listed.status)
        assert all(np.array_equal(a, b) for a, b in zip(result.x, listed.x))
    with pytest.raises(TypeError, match="iterator"):
        solve_many(make_problem(50, 4, nnz_per_row=2, seed=7)[0])  # one C without B


def test_same_d_gives_a_d_by_q_array_and_per_problem_x0():
    problems = [make_problem(60 + 10 * i, 5, nnz_per_row=3, noise=0.05, seed=10 + i)[:2] for i in range(4)]
    x0 = [np.full(5, 0.1 * i) for i in range(4)]
    result = _quiet(solve_many, problems, x0=x0)
    assert result.x.shape == (5, 4)
    _check_same_as_solve(problems, "softmax", result, x0_each=x0)


def test_inputs_are_not_mutated_and_read_only_inputs_work():
    problems = _mixed("relu_softmax", count=4, seed=2)
    copies = []
    for C, b in problems:
        if sp.issparse(C):
            C.data.flags.writeable = False
        else:
            C.flags.writeable = False
        b.flags.writeable = False
        copies.append((C.copy(), b.copy()))
    x0 = [np.zeros(C.shape[1]) for C, _ in problems]
    x0_copies = [x.copy() for x in x0]
    _quiet(solve_many, problems, model="relu_softmax", x0=x0)
    for (C, b), (C0, b0) in zip(problems, copies):
        np.testing.assert_array_equal(C.toarray() if sp.issparse(C) else C, C0.toarray() if sp.issparse(C0) else C0)
        np.testing.assert_array_equal(b, b0)
    for x, x_copy in zip(x0, x0_copies):
        np.testing.assert_array_equal(x, x_copy)


def test_repeated_calls_are_bitwise_reproducible():
    problems = _mixed("softmax", count=6, seed=3)
    first = _quiet(solve_many, problems, seed=5)
    second = _quiet(solve_many, problems, seed=5)
    for a, b in zip(first.x, second.x):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.loss, second.loss)


THREADS_SCRIPT = """
import hashlib, warnings
import numpy as np
warnings.simplefilter("ignore")
import fastnewton
digest = hashlib.sha256()
for model in ("softmax", "relu_softmax", "softmax_relu"):
    problems = []
    for i in range(12):
        made = fastnewton.make_problem(40 + 17 * i, 4 + i % 5, nnz_per_row=3, model=model, noise=0.05, seed=i)
        C, b = made.C if i % 2 else made.C.toarray(), made.b
        problems.append((C, b, made.V) if model == "softmax_relu" else (C, b))
    result = fastnewton.solve_many(problems, model=model)
    for x in result.x:
        digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(result.loss.tobytes())
    digest.update(result.n_iter.tobytes())
print(digest.hexdigest())
"""


def test_thread_count_does_not_change_the_bits():
    digests = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OMP_NUM_THREADS="1")
        run = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr
        digests.append(run.stdout.strip())
    assert digests[0] == digests[1]


def test_batch_warns_once_at_max_iter():
    problems = _mixed("softmax", count=4, seed=4)
    with pytest.warns(fastnewton.ConvergenceWarning, match="problems stopped at max_iter"):
        result = solve_many(problems, max_iter=0)
    assert np.all(result.status == Status.MAX_ITER)


def test_targets_that_are_not_distributions_warn_once_naming_the_problems():
    C, b, _ = make_problem(50, 4, nnz_per_row=2, seed=8)
    with pytest.warns(UserWarning, match=r"problem\(s\) 1: b is not a probability vector") as caught:
        solve_many([(C, b), (C, 3 * b), (C, b)])
    assert len([w for w in caught if "probability vector" in str(w.message)]) == 1


def test_distribution_warning_names_exactly_the_problems_off_the_simplex():
    # Reference: Σb outside 1 ± 0.1 (solve's tolerance) or a negative entry, decided per problem here; the
    # batch screens all targets at once and must name the same problems (sums just inside and just outside).
    C, b, _ = make_problem(60, 4, nnz_per_row=2, seed=11)
    b = b / b.sum()
    negative = b.copy()
    negative[3] = -1e-9
    targets = [b, 1.099 * b, 1.101 * b, 0.901 * b, 0.899 * b, negative, 1.06 * b]
    expected = [i for i, t in enumerate(targets) if abs(t.sum() - 1.0) > 0.1 or (t < 0).any()]
    assert expected == [2, 4, 5]
    with pytest.warns(UserWarning, match=r"problem\(s\) 2, 4, 5: b is not a probability vector"):
        _quiet_convergence(solve_many, [(C, t) for t in targets])


def _quiet_convergence(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        return function(*args, **kwargs)


def test_distribution_warning_points_at_the_caller():
    C, b, _ = make_problem(50, 4, nnz_per_row=2, seed=8)
    with pytest.warns(UserWarning, match="probability vector") as caught:
        solve_many([(C, 3 * b)])
    assert [w.filename for w in caught if "probability vector" in str(w.message)] == [__file__]


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collection_is_paused_during_the_compiled_part_and_restored(monkeypatch, enabled):
    """The cyclic GC is off while the compiled problems are built, solved and read back, and returns to
    the caller's state afterwards, also when the call ends in an exception."""
    import gc

    from fastnewton import many_small

    seen = []
    run = many_small._Packed.run

    def recording_run(self, *args):
        seen.append(gc.isenabled())
        return run(self, *args)

    monkeypatch.setattr(many_small._Packed, "run", recording_run)
    C, b, _ = make_problem(60, 5, seed=3)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        result = solve_many([(C, b), (C, b)])
        assert gc.isenabled() is enabled
        assert seen == [False] and np.all(result.converged)
        # An exception inside the paused part: the distribution warning turned into an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            with pytest.raises(UserWarning, match="probability vector"):
                solve_many([(C, 3 * b)])
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def test_bench_quick_smoke(tmp_path):
    """bench/many_small.py --quick: every case runs, answers agree, CSV/JSON written (no timing checked)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "bench/many_small.py", "--quick", "--no-plot", "--out", str(tmp_path)],
                         cwd=repo, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    import csv

    with open(tmp_path / "many_small.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(row["model"], row["format"]) for row in rows} == {
        (model, fmt) for model in ("softmax", "relu_softmax", "softmax_relu") for fmt in ("dense", "csr")}
    for row in rows:
        assert int(row["answers_differ"]) == 0 and float(row["max_rel_x_difference"]) <= X_RTOL, row
        assert float(row["solve_many_s"]) > 0 and float(row["loop_of_solve_s"]) > 0
        assert row["git_commit"] and row["cpu_model"]
    assert (tmp_path / "many_small.json").exists()


def _priced_off_exact(monkeypatch):
    """Dense sandwiches priced slow: ``auto`` then picks pcg for dense softmax problems, which solve_many leaves to
    solve's loop (the CSR ones stay compiled)."""
    import fastnewton.rates as rates_module
    monkeypatch.setattr(rates_module, "DENSE_SANDWICH_FMA_D32", 1e5)
    monkeypatch.setattr(rates_module, "DENSE_SANDWICH_FMA", 1e5)


def test_problems_left_to_solve_follow_solves_threads_rule(monkeypatch):
    # Problems on a sketched Hessian go to solve one by one: a small one on one thread even when the batch's
    # n_threads is 2 (solve's own rule, ``default_thread_count``), a larger one on the batch's threads.
    import fastnewton.many_small as many_small_module
    import fastnewton.threads as threads_module
    _priced_off_exact(monkeypatch)
    problems = [(C.toarray() if sp.issparse(C) else np.asarray(C, dtype=np.float64), b)
                for C, b in _mixed("softmax", count=3)]
    threads = []
    solve_problem = many_small_module.solve_problem
    monkeypatch.setattr(many_small_module, "solve_problem",
                        lambda *args, n_threads=None, **kwargs: threads.append(n_threads) or solve_problem(
                            *args, n_threads=n_threads, **kwargs))
    monkeypatch.setattr(threads_module, "SINGLE_THREAD_BELOW_SECONDS", 1e9)
    result = _quiet(solve_many, problems, model="softmax", n_threads=2, seed=0)
    assert threads == [1, 1, 1]
    _check_same_as_solve(problems, "softmax", result, seed=0)
    monkeypatch.setattr(threads_module, "SINGLE_THREAD_BELOW_SECONDS", 0.0)
    threads.clear()
    _quiet(solve_many, problems, model="softmax", n_threads=2, seed=0)
    assert threads == [2, 2, 2]


def test_problems_left_to_solve_are_validated_and_priced_once(monkeypatch):
    # softmax_relu problems run solve's staged solve (its Newton loops compiled) on the Problem solve_many built
    # and priced: one Problem and one pricing per problem (not a second of each inside the stages), and solve's
    # answers.
    import fastnewton.hessian as hessian_module
    import fastnewton.problem as problem_module
    problems = _mixed("softmax_relu", count=3)
    built, priced = [], []
    original_init, original_pricing = problem_module.Problem.__init__, hessian_module.many_strategy_seconds

    def counted_init(self, *args, **kwargs):
        built.append(1)
        original_init(self, *args, **kwargs)

    def counted_pricing(shapes, *args, **kwargs):  # strategy_seconds (solve's auto) prices through it too
        priced.append(len(shapes.n))
        return original_pricing(shapes, *args, **kwargs)
    monkeypatch.setattr(problem_module.Problem, "__init__", counted_init)
    monkeypatch.setattr(hessian_module, "many_strategy_seconds", counted_pricing)
    result = _quiet(solve_many, problems, model="softmax_relu")
    assert len(built) == sum(priced) == len(problems)
    monkeypatch.undo()
    _check_same_as_solve(problems, "softmax_relu", result)


@pytest.mark.parametrize("continuation", [True, False])
def test_softmax_relu_from_zeros_passes_continuation_to_solve(continuation):
    # The staged solve from a caller's x0 (continuation=True, the default) or one Newton loop from it:
    # each problem gets what solve gives it with the same keyword.
    problems = _mixed("softmax_relu", count=3)
    result = _quiet(solve_many, problems, model="softmax_relu", x0="zeros", continuation=continuation)
    _check_same_as_solve(problems, "softmax_relu", result, x0="zeros", continuation=continuation)
    with pytest.raises(TypeError, match="continuation"):
        solve_many(problems, model="softmax_relu", continuation="yes")


def test_auto_chooses_per_problem_as_solve_does(monkeypatch):
    # auto prices all problems at once (many_strategy_seconds), each with its own start: with the dense
    # sandwich priced slow, dense problems go to solve's loop on a sketched or lagged Hessian and the CSR
    # ones stay compiled; every problem gets solve's strategy and answer.
    import fastnewton.hessian as hessian_module
    import fastnewton.rates as rates_module
    monkeypatch.setattr(rates_module, "DENSE_SANDWICH_FMA_D32", 1e5)
    monkeypatch.setattr(rates_module, "DENSE_SANDWICH_FMA", 1e5)
    problems = _mixed("softmax", count=8, seed=3)
    x0 = ["auto" if i % 3 else "zeros" for i in range(len(problems))]
    chosen = [hessian_module.choose_strategy(fastnewton.Problem(C, b), 0.5, None, x0[i] == "auto")
              for i, (C, b) in enumerate(problems)]
    assert "exact" in chosen and set(chosen) - {"exact"}
    result = _quiet(solve_many, problems, model="softmax", x0=x0, seed=0)  # seeded: the sketches' draws
    _check_same_as_solve(problems, "softmax", result, x0_each=x0, seed=0)


# -- softmax_relu: the staged solve with its Newton loops compiled (kernels/small_softmax_relu.py) ------------
def _relu_problems(count, seed, dense, noise=0.05):
    """bench/many_small.py's softmax_relu problems: n in 64–512, d in 32–64, m = min(d, 16), planted targets."""
    rng = np.random.default_rng(seed)
    problems = []
    for _ in range(count):
        n, d = int(rng.integers(64, 513)), int(rng.integers(32, 65))
        made = make_problem(n, d, nnz_per_row=8, model="softmax_relu", noise=noise, seed=int(rng.integers(2**31)),
                            dense=dense)
        problems.append((made.C, made.b, made.V))
    return problems


def _newton_loops_in_python(monkeypatch):
    """A list that collects every Newton loop run in Python (``newton_solve``) while the patch holds."""
    import fastnewton.newton as newton_module
    loops, original = [], newton_module.newton_solve
    monkeypatch.setattr(newton_module, "newton_solve", lambda *args, **kwargs: loops.append(1) or original(*args,
                                                                                                           **kwargs))
    return loops


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "csr"])
def test_softmax_relu_staged_solves_match_solve_with_no_newton_loop_in_python(dense, monkeypatch):
    # Reachable (5% noise) and noisy (30%: the unreachable stages, restarts from zeros) targets; every stage's
    # Newton loop runs compiled, the stage logic is solve's own.
    problems = _relu_problems(4, 0, dense) + _relu_problems(3, 1, dense, noise=0.3)
    loops = _newton_loops_in_python(monkeypatch)
    result = _quiet(solve_many, problems, model="softmax_relu")
    assert loops == []
    monkeypatch.undo()
    _check_same_as_solve(problems, "softmax_relu", result)
    assert result.converged.sum() >= 4


def _dead_output(problem, column=2):
    """The problem with V's column ``column`` negative everywhere and b there > 0: that output's ReLU is dead
    at every x (tests/test_solver.py's dead-output case)."""
    C, b, V = problem
    V, b = V.copy(), b.copy()
    V[:, column] = -np.abs(V[:, column]) - 0.1
    b[column] = 0.05
    return C, b, V


def _one_sided_outputs(problem, columns=(0, 3)):
    """The problem with b_j = 0 on ``columns``: terms ½ max(y_j, 0)², the one-sided step of fastnewton.active_set."""
    C, b, V = problem
    b = b.copy()
    b[list(columns)] = 0.0
    return C, b, V


@pytest.mark.parametrize("kwargs", [{}, dict(x0="zeros"), dict(l2=1e-6), dict(x0="zeros", continuation=False)],
                         ids=["auto", "zeros", "ridge", "plain"])
def test_softmax_relu_dead_and_one_sided_outputs_match_solve(kwargs):
    # Dead outputs (DEAD_STATIONARY, the dead-output diagnosis), one-sided outputs (the active-set step and its
    # gain ratio), a ridge (the branch probe after the ridge stages) and one plain loop on the real loss.
    base = _relu_problems(4, 2, True) + _relu_problems(2, 3, False)
    problems = [_dead_output(base[0]), _dead_output(base[4]), _one_sided_outputs(base[1]),
                _one_sided_outputs(base[5]), _one_sided_outputs(base[2], columns=(0, 1, 2, 5, 7)), base[3]]
    result = _quiet(solve_many, problems, model="softmax_relu", **kwargs)
    _check_same_as_solve(problems, "softmax_relu", result, **kwargs)
    assert Status.DEAD_STATIONARY in result.status[:2]


def test_softmax_relu_with_row_weights_matches_solve():
    # (Not on the dead-output problems above: with these row weights one of them ends its real-loss phase and its
    # restart from zeros at two points 4e-9 apart whose losses agree to 1e-12, and which is kept is rounding's
    # choice; every Newton loop of its stages agrees with solve's to 2e-15.)
    base = _relu_problems(3, 2, True) + _relu_problems(2, 3, False)
    problems = [_one_sided_outputs(base[1]), _one_sided_outputs(base[4]), base[0], base[2], base[3]]
    kwargs = dict(row_weights=1e-3, l2=1e-4)
    result = _quiet(solve_many, problems, model="softmax_relu", **kwargs)
    _check_same_as_solve(problems, "softmax_relu", result, **kwargs)


def test_softmax_relu_bad_and_overflowing_problems_among_good_ones():
    # A NaN in C and a V of the wrong shape are reported by index; C·1e160 overflows in the first Newton loop,
    # which is then run in Python for its NON_FINITE message; the others solve as solve solves them.
    good = _relu_problems(3, 4, True)
    C, b, V = good[0]
    nan_C = C.copy()
    nan_C[3, 2] = np.nan
    problems = [good[0], (nan_C, b, V), (C, b, V[:, :-1].T), (C * 1e160, b, V), good[1], good[2]]
    result = _quiet(solve_many, problems, model="softmax_relu")
    for i in (1, 2):
        assert result.status[i] == Status.INVALID_INPUT and f"problem {i}" in result.message[i]
    _check_same_as_solve([problems[k] for k in (0, 3, 4, 5)], "softmax_relu",
                         _Picked(result, (0, 3, 4, 5)))
    assert result.status[3] == Status.NON_FINITE


class _Picked:
    """Some problems of a BatchResult, renumbered (for ``_check_same_as_solve``)."""

    def __init__(self, result, indices):
        self.result, self.indices = result, indices

    def problem(self, i):
        return self.result.problem(self.indices[i])


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_max_iter_beyond_int64_is_no_limit(model):
    # solve takes any max_iter ≥ 0; stored as it is in the compiled loop's float64 settings, 2**63 − 1 came back a
    # wrapped int64 and the loop stopped at once (MAX_ITER after 0 iterations)
    C, b, _ = make_problem(300, 8, nnz_per_row=4, model=model, noise=1e-2, seed=0)
    reference = _quiet(solve, C, b, model)
    for max_iter in (np.iinfo(np.int64).max, 2**70):
        result = _quiet(solve_many, [(C, b), (C.toarray(), b)], model=model, max_iter=max_iter)
        assert np.all(result.status == Status.CONVERGED) and np.all(result.n_iter == reference.n_iter), max_iter


@pytest.mark.parametrize("scale", [1e-160, 1e-300])
def test_gradient_norm_where_its_squares_underflow_is_solves(scale):
    # Σg² underflows at these scales: the reported ‖∇L‖ is the rescaled norm, as solve's (it read 0.0, and
    # rel_grad_norm 0.0, on a problem STALLED short of tol). The two loops round differently on these points, so
    # the norms agree to rounding of the stalled iterate (measured 3e-8 relative), not to the bit.
    C, b, _ = make_problem(300, 8, noise=1e-2, seed=0, dense=True)
    reference = _quiet(solve, C * scale, b)
    for result in (_quiet(solve_many, [(C * scale, b)]), _quiet(solve_many, C * scale, b[:, None])):
        assert result.status[0] == reference.status
        assert result.grad_norm[0] == pytest.approx(reference.grad_norm, rel=1e-6)
        assert result.rel_grad_norm[0] == pytest.approx(reference.rel_grad_norm, rel=1e-6)
        assert result.grad_norm[0] > 0.0


def test_rel_grad_norm_without_a_reference_is_nan():
    # A solve stopped by a non-finite value before g_ref was formed has no relative gradient: NaN (it read 0.0,
    # which a test rel_grad_norm <= tol passes as converged), in solve and in both forms of solve_many.
    C, b, _ = make_problem(300, 8, noise=1e-2, seed=0, dense=True)
    single = _quiet(solve, C, b * 1e300)
    assert single.status == Status.NON_FINITE and single.g_ref == 0.0 and np.isnan(single.rel_grad_norm)
    for result in (_quiet(solve_many, [(C, b * 1e300), (C, b)]), _quiet(solve_many, C, np.column_stack([b * 1e300, b]))):
        assert result.status[0] == Status.NON_FINITE and np.isnan(result.rel_grad_norm[0])
        assert result.status[1] == Status.CONVERGED and result.rel_grad_norm[1] <= 1e-8
    # relu_softmax's ∇L(0) overflowing at C·1e160: stopped at x = 0, the dead point, whose gradient is exactly 0
    # (it read 0.0 there, the rule's "zero gradient" case)
    C, b, _ = make_problem(300, 6, nnz_per_row=4, noise=1e-2, seed=0, model="relu_softmax")
    single = _quiet(solve, C * 1e160, b, "relu_softmax")
    assert single.status == Status.NON_FINITE and single.grad_norm == 0.0 and np.isnan(single.rel_grad_norm)
    for result in (_quiet(solve_many, [(C * 1e160, b)], model="relu_softmax"),
                   _quiet(solve_many, C * 1e160, b[:, None], "relu_softmax")):
        assert result.status[0] == Status.NON_FINITE and np.isnan(result.rel_grad_norm[0])


@pytest.mark.parametrize("keyword, error", [
    (dict(x0=None), TypeError), (dict(x0=np.zeros((2, 8))), ValueError), (dict(x0=np.full(8, np.nan)), ValueError),
    (dict(row_weights=-1.0), ValueError), (dict(row_weights=np.nan), ValueError), (dict(row_weights="a"), TypeError),
    (dict(row_weights=np.full(300, -1.0)), ValueError)])
def test_a_keyword_given_once_that_no_problem_can_take_raises_as_in_solve(keyword, error):
    # Given once for all problems, a value whose dtype, dimensions or values are wrong whatever the problem's shape
    # is the call's error, raised as solve raises it (before, every problem came back INVALID_INPUT)
    C, b, _ = make_problem(300, 8, noise=1e-2, seed=0, dense=True)
    name = next(iter(keyword))
    with pytest.raises(error, match=name) as from_solve:
        solve(C, b, **keyword)
    with pytest.raises(error, match=name) as from_many:
        solve_many([(C, b), (C, b)], **keyword)
    assert str(from_many.value) == str(from_solve.value) or keyword == dict(x0=None)
    # a value that fits some problems' shapes and not others' is each problem's check
    short, short_b, _ = make_problem(100, 8, noise=1e-2, seed=1, dense=True)
    result = _quiet(solve_many, [(C, b), (short, short_b)], row_weights=np.zeros(300))
    assert list(result.status) == [Status.CONVERGED, Status.INVALID_INPUT] and "problem 1" in result.message[1]


def test_model_given_positionally_and_sparse_targets_are_named():
    C, b, _ = make_problem(300, 8, noise=1e-2, seed=0, dense=True)
    with pytest.raises(TypeError, match=r"model='relu_softmax'"):
        solve_many([(C, b)], "relu_softmax")
    with pytest.raises(TypeError, match="sparse"):
        solve_many(C, sp.csr_matrix(np.column_stack([b, b])))


@pytest.mark.parametrize("hessian", ["exact", "auto"])
def test_a_problem_too_large_for_memory_gets_its_status_and_the_others_solve(hessian, monkeypatch):
    # solve raises MemoryError before any work where an iteration cannot fit; in the batch that problem gets
    # INVALID_INPUT with solve's message (the compiled solve failed at its allocation inside the parallel loop,
    # a SystemError that lost every problem's answer; the auto path raised for the batch after solving the others)
    import fastnewton.memory
    C, b, _ = make_problem(300, 8, noise=1e-2, seed=0, dense=True)
    wide = sp.random(50, 3000, density=3 / 3000, format="csr", random_state=0)
    monkeypatch.setattr(fastnewton.memory, "available_bytes", lambda: 2**27)  # 3000 × 3000 matrices need more
    with pytest.raises(MemoryError):
        solve(wide, np.full(50, 1 / 50), hessian=hessian)
    problems = [(C, b), (wide, np.full(50, 1 / 50)), (C.copy(), b)]
    for form in (problems, [(C, b), (wide.toarray(), np.full(50, 1 / 50)), (C.copy(), b)]):
        result = _quiet(solve_many, form, hessian=hessian)
        assert list(result.status) == [Status.CONVERGED, Status.INVALID_INPUT, Status.CONVERGED]
        assert "problem 1" in result.message[1] and "memory" in result.message[1]
        np.testing.assert_array_equal(result.problem(0)["x"], result.problem(2)["x"])


def test_a_memory_error_in_solves_loop_is_that_problems_status(monkeypatch):
    # A problem left to solve's loop that runs out of memory at an allocation gets its status; the others solve.
    import fastnewton.many_small as many_small_module
    _priced_off_exact(monkeypatch)
    problems = [(C.toarray() if sp.issparse(C) else np.asarray(C, dtype=np.float64), b)
                for C, b in _mixed("softmax", count=3)]
    solve_problem = many_small_module.solve_problem
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("Allocation failed")
        return solve_problem(*args, **kwargs)
    monkeypatch.setattr(many_small_module, "solve_problem", second_fails)
    result = _quiet(solve_many, problems, model="softmax", seed=0)
    assert list(result.status == Status.INVALID_INPUT) == [False, True, False]
    assert "problem 1" in result.message[1] and "Allocation failed" in result.message[1]
    assert result.converged[0] and result.converged[2]


# -- lagged: CG on the exact Hessian-vector product, compiled for softmax (kernels/small_newton.py) ----------------
# Softmax problems (make_problem(n, d, nnz_per_row=min(d, 3), noise, scale, seed, dense), x0 = "zeros") on which
# solve's lagged Hessian, from the start, meets every path of its CG (hessian.NewtonSystem): a step of several CG
# iterations, negative curvature on CG's first direction (no step: μ raised) and on a later one (the iterate so
# far), and a preconditioner factored anew at a μ beyond LAGGED_SHIFT_RATIO of the exact iteration's; found by a
# search over seeds for problems whose minimiser is well determined (x moves by ~1e-15 when C is given in the other
# format), where a different rounding cannot move x by more than the promised 1e-10.
LAGGED_CASES = [(175, 6, False, 0.05, 1.5, 132), (187, 22, False, 0.05, 1.0, 166), (127, 9, False, 0.3, 1.0, 187),
                (183, 15, True, 0.3, 1.5, 243), (78, 28, True, 1.0, 1.5, 375), (83, 11, False, 1.0, 1.5, 654)]


def _lagged_paths(monkeypatch):
    """A Counter of the CG paths that solve's lagged systems take while the patch holds (``NewtonSystem``'s
    ``_pcg`` and ``_factor``): "several" (a step of more than one CG iteration), "first" (negative curvature on the
    first direction), "later" (on a later one), "new factor" (a lagged iteration's preconditioner factored anew)."""
    from collections import Counter

    from fastnewton import hessian
    from fastnewton.reductions import norm

    paths = Counter()
    pcg, factor = hessian.NewtonSystem._pcg, hessian.NewtonSystem._factor

    def counted_pcg(self, factor_, g, mu, held=None, u=None):
        solved = yield from pcg(self, factor_, g, mu, held, u)
        if solved is None:
            paths["first"] += 1
        else:
            paths["several"] += solved.iterations > 1
            paths["later"] += (solved.iterations < self.max_cg_iterations
                               and norm(solved.residual) > self.forcing * norm(g))
        return solved

    def counted_factor(self, shift):
        paths["new factor"] += self.hessp is not None and shift not in self.factors
        return factor(self, shift)

    monkeypatch.setattr(hessian.NewtonSystem, "_pcg", counted_pcg)
    monkeypatch.setattr(hessian.NewtonSystem, "_factor", counted_factor)
    return paths


def test_lagged_softmax_runs_compiled_through_every_cg_path_with_solves_answers(monkeypatch):
    problems = [tuple(make_problem(n, d, nnz_per_row=min(d, 3), noise=noise, scale=scale, seed=seed, dense=dense))[:2]
                for n, d, dense, noise, scale, seed in LAGGED_CASES]
    loops = _newton_loops_in_python(monkeypatch)
    result = _quiet(solve_many, problems, hessian="lagged", x0="zeros")
    assert not loops  # every problem compiled: no Newton loop in Python
    paths = _lagged_paths(monkeypatch)
    _check_same_as_solve(problems, "softmax", result, hessian="lagged", x0="zeros")
    assert {"several", "first", "later", "new factor"} <= {path for path, count in paths.items() if count}, paths
    assert np.all(result.converged)


def test_lagged_max_iter_stall_and_non_finite_match_solve():
    C, b, _ = make_problem(150, 6, nnz_per_row=3, noise=0.05, seed=3)
    for problem, kwargs in [((C, b), dict(max_iter=2)), ((C.toarray(), b), dict(tol=1e-300)),
                            ((C * 1e160, b), dict(x0="zeros")), ((C, b), dict(l2=1e300))]:
        result = _quiet(solve_many, [problem, (C, b)], hessian="lagged", **kwargs)
        _check_same_as_solve([problem, (C, b)], "softmax", result, hessian="lagged", **kwargs)


def test_lagged_preconditioner_picks_solves_factor_and_shift():
    """kernels/small_newton.py's ``_preconditioner`` against ``NewtonSystem._preconditioner`` of a lagged system on an
    indefinite scaled matrix (its factors shared with the exact system that formed them): for each μ of a sequence
    (÷10 twice from the exact iteration's μ, the ratio 100 up to rounding; moves beyond it; μ where the matrix has no
    factor, shifted further), the same factor (by its shift) and the same factors formed, in the same order."""
    from fastnewton.hessian import LAGGED_SHIFT_RATIO, NewtonSystem
    from fastnewton.kernels import small_newton as kernel
    from fastnewton.many_small import _settings

    rng = np.random.default_rng(4)
    d = 6
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    matrix = (Q * np.array([-1e-6, 1e-3, 0.1, 1.0, 2.0, 3.0])) @ Q.T  # one small negative eigenvalue
    matrix = (matrix + matrix.T) / 2
    python = NewtonSystem(matrix)
    python._factor(0.2)  # the exact iteration's μ (its factor: a store of one)
    lagged = python.preconditioning(lambda v: matrix @ v, 0.1, {})
    assert lagged.reuse_shift_ratio == LAGGED_SHIFT_RATIO
    settings = _settings(1e-8, 100)
    store, stored = kernel._factor_store(d), 0
    store, stored = kernel._factor_at(matrix, 0.2, store, stored)[1:]
    scale = lagged.scale
    for mu in [0.2 / 10 / 10, 0.2 / 10 / 10 / 10, 1e-9, 0.0, 50.0, 1e-9]:
        factor = lagged._preconditioner(mu)
        k, store, stored = kernel._preconditioner(matrix, mu, scale, settings, store, stored)
        shifts = list(lagged.factors)
        assert list(store[0][:stored]) == shifts, mu
        chosen = next(shift for shift, held in lagged.factors.items() if held is factor)
        assert store[0][k] == chosen, mu
        U = np.triu(store[2][k])  # its upper triangle (the rest is not written)
        np.testing.assert_allclose(U.T @ U, matrix + chosen * np.eye(d), atol=1e-12)
    assert len(lagged.factors) >= 4 and any(value is None for value in lagged.factors.values())


# -- lagged relu_softmax: CG steps with rows at their ReLU kink held by projected CG (fastnewton.kinks) -------------
# relu_softmax problems (make_problem(n, d, nnz_per_row=min(d, 8), noise, scale, seed, dense), x0 = "auto") on which
# solve's lagged CG steps hold kink rows (``NewtonSystem.held_solve_rounds``): held steps of several projected CG
# iterations and working sets updated by their multipliers (``update_working_set``); found by a search over seeds
# (150 random shapes, 65 with a held CG step) for problems whose answer does not move with rounding (solve on the
# other format of C within 1e-13), so that the compiled loop's other sums do not put held rows on the other side
# of their kink (which can change the path: the README's exception, tested in the mixed problems above).
LAGGED_RELU_CASES = [(101, 35, False, 0.2, 1.0, 601), (187, 36, False, 0.02, 1.5, 21), (128, 28, True, 0.05, 1.0, 36),
                     (110, 32, True, 0.02, 1.5, 806), (86, 24, True, 0.2, 1.5, 285), (140, 28, False, 0.02, 1.5, 399)]


def _held_paths(monkeypatch):
    """A Counter of what solve's lagged steps do with kink rows while the patch holds: "held" (a projected CG solve
    gave a step), "several" (of more than one CG iteration), "update" (the working set changed by its multipliers)."""
    from collections import Counter

    from fastnewton import hessian, kinks

    paths = Counter()
    pcg, update = hessian.NewtonSystem._pcg, kinks.update_working_set

    def counted_pcg(self, factor, g, mu, held=None, u=None):
        solved = yield from pcg(self, factor, g, mu, held, u)
        if held is not None and solved is not None:
            paths["held"] += 1
            paths["several"] += solved.iterations > 1
        return solved

    def counted_update(*args):
        changed = update(*args)
        paths["update"] += bool(changed)
        return changed

    monkeypatch.setattr(hessian.NewtonSystem, "_pcg", counted_pcg)
    monkeypatch.setattr(kinks, "update_working_set", counted_update)
    return paths


def test_lagged_relu_softmax_holds_kink_rows_by_projected_cg_compiled_with_solves_answers(monkeypatch):
    problems = [tuple(make_problem(n, d, nnz_per_row=min(d, 8), model="relu_softmax", noise=noise, scale=scale,
                                   seed=seed, dense=dense))[:2]
                for n, d, dense, noise, scale, seed in LAGGED_RELU_CASES]
    loops = _newton_loops_in_python(monkeypatch)
    result = _quiet(solve_many, problems, model="relu_softmax", hessian="lagged")
    assert not loops  # every problem compiled
    paths = _held_paths(monkeypatch)
    _check_same_as_solve(problems, "relu_softmax", result, hessian="lagged")
    assert {"held", "several", "update"} <= {path for path, count in paths.items() if count}, paths
    assert np.all(result.converged)


def test_held_rows_constraint_and_projection_match_held_rows():
    """kernels/small_newton.py's ``_held_rows_system`` and ``_project`` against ``hessian.HeldRows`` (of, project) on a
    random preconditioner and rows: the same Â, Y = P⁻¹Âᵀ, S = ÂY, projection, multipliers and reduced residual to
    rounding (1e-12 relative: d = 12 sums in another order), and dependent rows refused by both."""
    import scipy.linalg

    from fastnewton.hessian import HeldRows
    from fastnewton.kernels import small_newton as kernel

    rng = np.random.default_rng(5)
    d, K = 12, 3
    B = rng.standard_normal((2 * d, d))
    M = B.T @ B + 0.1 * np.eye(d)
    U = np.empty((d, d))
    assert kernel._cholesky(M, 0.0, U)
    factor = scipy.linalg.cho_factor(M)
    R = rng.standard_normal((5, d))
    column_scale = rng.uniform(0.5, 2.0, d)
    rows = np.array([0, 2, 4])
    A, Y, S = np.empty((K, d)), np.empty((d, K)), np.empty((K, K))
    assert kernel._held_rows_system(U, R, rows, column_scale, A, Y, S)
    held = HeldRows.of(factor, R[rows] / column_scale)
    for mine, theirs in [(A, held.A), (Y, held.Y), (S, held.S)]:
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12 * np.abs(theirs).max())
    r = rng.standard_normal(d)
    z, nu, reduced = np.empty(d), np.empty(K), np.empty(d)
    kernel._project(U, A, Y, S, r, z, nu, reduced)
    for mine, theirs in zip((z, nu, reduced), held.project(factor, r)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12 * np.abs(theirs).max())
    np.testing.assert_allclose(A @ z, 0.0, atol=1e-12 * np.abs(z).max())  # z lies on Âz = 0
    R[2] = 3.0 * R[0]  # rows 0 and 2 parallel: dependent
    assert not kernel._held_rows_system(U, R, rows, column_scale, A, Y, S)
    assert HeldRows.of(factor, R[rows] / column_scale) is None


def test_lagged_relu_softmax_max_iter_stall_dead_and_non_finite_match_solve():
    C, b, _ = make_problem(150, 12, nnz_per_row=8, model="relu_softmax", noise=0.05, seed=3)
    for problem, kwargs in [((C, b), dict(max_iter=2)), ((C.toarray(), b), dict(tol=1e-300)),
                            ((C * 1e160, b), dict()), ((C, b), dict(l2=1e300)), ((C, b), dict(x0="zeros")),
                            ((C, b), dict(l2=1e-3, row_weights=0.5))]:
        result = _quiet(solve_many, [problem, (C, b)], model="relu_softmax", hessian="lagged", **kwargs)
        _check_same_as_solve([problem, (C, b)], "relu_softmax", result, hessian="lagged", **kwargs)
