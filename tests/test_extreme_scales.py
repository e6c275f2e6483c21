"""Valid inputs at the edges of float64's range: C scaled by 1e±150…1e-300, x near 1e160, unusual index types.

A hostile pass found a solve that stopped CONVERGED at its start on C·1e-170 (∇L(0) ~ 3e-172 has Σg² = 0 in
float64, so g_ref was 0 and every point passed the stopping test), a NaN loss at a finite x (½λ‖x‖² with λ = 0
and ‖x‖² overflowing: 0·inf), and SciPy's own error for a CSR C with uint64 indices. Each is checked here against
an independent figure: the norm of a rescaled vector, the loss written out by hand, the solution of the unscaled
problem (C·s with x/s solves the same problem), and the same matrix with int64 indices.
"""
import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import fastnewton
from fastnewton import Status
from fastnewton.reductions import half_ridge, norm

SOFTMAX_MODELS = ("softmax", "relu_softmax")


def small_problem(model="softmax"):
    """A noisy 50 × 3 problem whose optimum is interior (not the planted x; b ≥ 0)."""
    rng = np.random.default_rng(0)
    C = rng.standard_normal((50, 3))
    b = np.exp(C @ np.array([1.0, -1.0, 0.5]))
    b = np.clip(b / b.sum() * (1.0 + 0.1 * rng.standard_normal(50)), 0.0, None)
    return C, b


@pytest.mark.parametrize("scale", [1e-172, 1e-300, 1e-5, 1.0, 1e150])
def test_norm_does_not_underflow(scale):
    # ‖(3, 4)·s‖ = 5s exactly in real arithmetic; float64 gives it to one rounding of the rescaled sum.
    assert norm(np.array([3.0, 4.0]) * scale) == pytest.approx(5.0 * scale, rel=1e-15)
    long = np.full(10_000, 2.0 * scale)  # the chunked (Numba) dot's length
    assert norm(long) == pytest.approx(200.0 * scale, rel=1e-13)


def test_norm_overflow_stays_inf():
    """‖a‖ past float64's range is inf, as before: the stopping tests then end NON_FINITE with their advice to
    rescale (tests/test_termination.py), rather than iterate on a problem whose Hessian overflows."""
    assert math.isinf(norm(np.array([3e200, 4e200])))


def test_norm_keeps_zero_and_non_finite_entries():
    assert norm(np.zeros(4)) == 0.0
    assert norm(np.zeros(0)) == 0.0
    assert math.isinf(norm(np.array([np.inf, 1.0])))
    assert math.isnan(norm(np.array([np.nan, 1e-200])))


def test_norm_in_range_keeps_its_bits():
    """Where Σa² is in range the norm is √Σa² as before (the stopping tests' bits do not move)."""
    a = np.random.default_rng(1).standard_normal(37)
    assert norm(a) == math.sqrt(float(np.dot(a, a)))


@pytest.mark.parametrize("l2, x, expected", [
    (0.0, [1e160, 0.0], 0.0),               # 0·inf would be NaN
    (1e-300, [1e160, 0.0], 0.5e20),         # λ‖x‖² = 1e-300·1e320 = 1e20, although ‖x‖² overflows
    (2.0, [3.0, 4.0], 25.0),
    (1e300, [1e-160, 0.0], 0.5e-20),        # ‖x‖² underflows to 0
])
def test_half_ridge(l2, x, expected):
    assert half_ridge(l2, np.array(x)) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("l2, expected", [(0.0, 0.25), (1e-300, 0.25 + 0.5e20)])
def test_problem_loss_at_a_huge_finite_x_is_finite(l2, expected):
    # C = I, x = (1e160, 0): softmax(Cx) = (1, 0), b = (½, ½): ½((½)² + (½)²) = ¼, plus ½λ‖x‖².
    problem = fastnewton.Problem(np.eye(2), np.array([0.5, 0.5]), l2=l2)
    assert problem.loss(np.array([1e160, 0.0])) == pytest.approx(expected, rel=1e-14)


def test_solve_from_a_huge_finite_start_is_not_non_finite():
    C = np.eye(3)[:, :2].copy()
    res = fastnewton.solve(C, np.array([0.2, 0.3, 0.5]), x0=np.full(2, 1e160))
    assert res.status != Status.NON_FINITE, res.message
    assert np.isfinite(res.loss)


def _g_ref(grad_norm, rel_grad_norm):
    """g_ref from a batch result's ‖∇L‖ and ‖∇L‖/g_ref (0 where the ratio is reported as 0: g_ref = 0)."""
    return grad_norm / rel_grad_norm if rel_grad_norm > 0 else 0.0


def solve_all_ways(C, b, model):
    """The first problem's (status, g_ref, x) from solve and both forms of solve_many."""
    single = fastnewton.solve(C, b, model)
    listed = fastnewton.solve_many([(C, b), (C, b)], model=model)
    shared = fastnewton.solve_many(C, np.stack([b, b], axis=1), model=model)
    return [(single.status, single.g_ref, single.x),
            (listed.status[0], _g_ref(listed.grad_norm[0], listed.rel_grad_norm[0]), listed.problem(0)["x"]),
            (shared.status[0], _g_ref(shared.grad_norm[0], shared.rel_grad_norm[0]), shared.problem(0)["x"])]


def target_with_zeros():
    """relu_softmax's 400 × 6 planted problem with its 100 least target entries set to 0 (rows the model's floor
    1/Z cannot reach) and the row of the least of them, which the tests below set to a tiny entry."""
    made = fastnewton.make_problem(400, 6, nnz_per_row=4, model="relu_softmax", noise=1e-2, seed=0)
    b = made.b.copy()
    order = np.argsort(b)
    b[order[:100]] = 0.0
    return made.C, b, order[0]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("entry", [1e-40, 1e-80, 1e-300, 1e-310, 5e-324])
def test_relu_softmax_target_with_a_negligible_entry_is_solved_as_with_a_zero(entry):
    """relu_softmax's start fits log(bᵢ/f) on its active rows with a floor f. With f the least positive entry, one
    entry of 1e-40 among entries ~1e-3 asked for logits ~85 apart and ended at 100 iterations with a loss ~17×
    L(0); 1e-80 and smaller at a dead point (DEAD_STATIONARY, 75–575× L(0)); 1e-310 and 5e-324 made b/f overflow
    (a finite start, but a dead point still). An entry below ε·max b is zero at b's precision: f is the
    least entry above that, the tiny row a floor row like the zeros, and every way of solving gives the solve of
    the target with that entry 0. The loss of the two targets differs by ~entry·s_i, far below its rounding, so
    the same iterates are expected to the bit; 1e-12 relative allows for a last-bit difference in a sum."""
    C, b, row = target_with_zeros()
    reference = fastnewton.solve(C, b, "relu_softmax")
    assert reference.status == Status.CONVERGED
    b[row] = entry
    for status, _, x in solve_all_ways(C, b, "relu_softmax"):
        assert status == Status.CONVERGED
        assert np.linalg.norm(x - reference.x) <= 1e-12 * np.linalg.norm(reference.x)


@pytest.mark.filterwarnings("ignore")
def test_relu_softmax_start_of_a_target_with_an_overflowing_ratio_is_finite():
    """One target entry of 1.7e308: the others are all below ε·max b, so the floor f stays the least positive
    entry, and b/f overflowed in the start's log(b/f): x0 non-finite, NON_FINITE "at the starting point" with x all
    NaN in solve and both forms of solve_many (a hostile sweep). The fit takes log b − log f there: the solves go
    on from a finite start and stop alike, NON_FINITE where the loss overflows, at a finite x."""
    made = fastnewton.make_problem(400, 6, nnz_per_row=4, model="relu_softmax", noise=1e-2, seed=0)
    b = made.b.copy()
    b[0] = 1.7e308
    outcomes = solve_all_ways(made.C, b, "relu_softmax")
    reference_status, _, reference_x = outcomes[0]
    assert reference_status == Status.NON_FINITE
    for status, _, x in outcomes:
        assert status == reference_status and np.all(np.isfinite(x))
        assert np.linalg.norm(x - reference_x) <= 1e-10 * np.linalg.norm(reference_x)


def test_target_whose_sum_overflows_gets_our_warning_alone():
    """Entries of 1.7e308: Σb overflows. The not-a-distribution warning names Σb = inf; NumPy's own "overflow
    encountered in reduce" (from that sum, and from solve_many's screen of many targets) came first before."""
    made = fastnewton.make_problem(400, 6, nnz_per_row=4, model="softmax", noise=1e-2, seed=0)
    b = made.b.copy()
    b[:3] = 1.7e308
    calls = [lambda: fastnewton.solve(made.C, b, max_iter=1),
             lambda: fastnewton.solve_many(made.C, np.stack([b, made.b], axis=1), max_iter=1),
             lambda: fastnewton.solve_many([(made.C, b)], max_iter=1)]
    for call in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        texts = [str(w.message) for w in caught if not issubclass(w.category, fastnewton.ConvergenceWarning)]
        assert len(texts) == 1 and "not a probability vector (Σb = inf)" in texts[0], texts


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("model", SOFTMAX_MODELS)
@pytest.mark.parametrize("scale", [1e-170, 1e-300])
def test_tiny_scale_is_never_converged_at_its_start(model, scale):
    """∇L(0) of C·s is s·∇L₁(0) (L₁: the unscaled problem's loss, as a function of u = Cx): g_ref must be that, not
    0; the curvature ~s² underflows, so no solve can converge, and none may say it did."""
    C, b = small_problem()
    g_ref_unscaled = fastnewton.solve(C, b, model, max_iter=0).g_ref
    for status, g_ref, x in solve_all_ways(C * scale, b, model):
        assert g_ref == pytest.approx(scale * g_ref_unscaled, rel=1e-12)
        assert status != Status.CONVERGED
        assert np.all(np.isfinite(x))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("model", SOFTMAX_MODELS)
@pytest.mark.parametrize("scale", [1e-160, 1e-150, 1e150, 4e153])
def test_scaled_problem_has_the_unscaled_solution(model, scale):
    """C·s and x/s: the same problem. The solves stop at ‖∇L‖ ≤ 1e-8·g_ref, so x agrees to ~1e-8 relative
    (this well-conditioned 50 × 3 problem); 1e-6 leaves room for the other path's rounding. At 4e153 the
    start's normal equations CᵀΩC overflow (Σᵢ C_ij² > 1.8e308, each product below it) while the Hessians do
    not: relu_softmax had solved the overflowed system to x = 0, its dead point, and stopped DEAD_STATIONARY at
    iteration 0."""
    C, b = small_problem()
    reference = fastnewton.solve(C, b, model)
    assert reference.status == Status.CONVERGED
    for status, g_ref, x in solve_all_ways(C * scale, b, model):
        assert status == Status.CONVERGED
        assert np.linalg.norm(x * scale - reference.x) <= 1e-6 * np.linalg.norm(reference.x)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("model", SOFTMAX_MODELS)
@pytest.mark.parametrize("scale", [1e-100, 1e-14, 1e12, 1e100])
def test_automatic_start_does_not_depend_on_the_scale_of_c(model, scale):
    """The start fits log b on [C, 1] (softmax) or on C (relu_softmax): C·s gives the start x0/s, and the solve its
    iterations. Its Jacobi scaling had floored each column's D_j at √(eps·max M_jj), so that softmax's
    intercept column (unit diagonal) counted as null once C's entries were ~1e12 and C's columns once they were
    ~1e-14: a start off by 2× its norm, 15 and 8 iterations where C took 2 (2000 × 16 CSR, a noisy target).
    1e-10 relative: the scaled fit rounds differently where s is not a power of 2 (measured ≤ 3e-13)."""
    made = fastnewton.make_problem(2000, 16, nnz_per_row=6, model="softmax", noise=1e-2, seed=0)
    C, b = made.C, made.b
    reference = fastnewton.solve(C, b, model)
    scaled = fastnewton.solve(C * scale, b, model)
    listed = fastnewton.solve_many([(C * scale, b)], model=model)
    assert np.linalg.norm(scaled.x0 * scale - reference.x0) <= 1e-10 * np.linalg.norm(reference.x0)
    assert scaled.status == reference.status == Status.CONVERGED and listed.status[0] == Status.CONVERGED
    assert scaled.n_iter == listed.n_iter[0] == reference.n_iter
    assert np.linalg.norm(listed.problem(0)["x"] * scale - reference.x) <= 1e-10 * np.linalg.norm(reference.x)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("scale", [1e80, 1e140])
def test_softmax_relu_staged_solve_does_not_depend_on_the_scale_of_c(scale):
    """softmax_relu's ridge continuation takes fractions of λmax(∇²L) from a power iteration. Past C·~1e77 the
    iterate p = Hp has Σp² > 1.8e308: p/‖p‖ was p/inf = 0, the estimate 0, and the continuation ran without its
    ridge: another path and another stationary point (x·s 82% from C's x, a loss 2.7× as high). Normalised by
    max|p| first, every form of the solve takes C's path: the same iterations, x·s within 1e-10 of C's x
    (measured ≤ 5e-14)."""
    made = fastnewton.make_problem(3000, 16, nnz_per_row=6, model="softmax_relu", noise=1e-2, seed=1, m=20)
    C, b, V = made.C, made.b, made.V
    reference = fastnewton.solve(C, b, "softmax_relu", V=V)
    assert reference.status == Status.CONVERGED
    single = fastnewton.solve(C * scale, b, "softmax_relu", V=V)
    listed = fastnewton.solve_many([(C * scale, b, V)], model="softmax_relu")
    shared = fastnewton.solve_many(C * scale, b[:, None], model="softmax_relu", V=V)
    assert single.n_iter == listed.n_iter[0] == shared.n_iter[0] == reference.n_iter
    for x in (single.x, listed.problem(0)["x"], shared.problem(0)["x"]):
        assert np.linalg.norm(x * scale - reference.x) <= 1e-10 * np.linalg.norm(reference.x)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("index_type", [np.uint64, np.uint32, np.int16, np.uint8])
def test_sparse_index_types_other_than_int32_and_int64(fmt, index_type):
    dense = np.array([[1.0, 0.0], [0.5, 2.0], [0.0, 1.0]])
    b = np.array([0.2, 0.3, 0.5])
    C = sp.csr_matrix(dense) if fmt == "csr" else sp.csc_matrix(dense)
    C.indptr, C.indices = C.indptr.astype(index_type), C.indices.astype(index_type)
    before = (C.indptr.copy(), C.indices.copy())
    reference = fastnewton.solve(dense, b)
    res = fastnewton.solve(C, b)
    assert res.status == reference.status
    np.testing.assert_allclose(res.x, reference.x, rtol=1e-12)
    assert C.indptr.dtype == index_type and np.array_equal(C.indptr, before[0])  # the caller's matrix untouched
    assert np.array_equal(C.indices, before[1])
    many = fastnewton.solve_many([(C, b)])
    assert many.status[0] == reference.status


def softmax_relu_problems():
    made = fastnewton.make_problem(30, 4, model="softmax_relu", seed=0)
    return made.C, made.b, made.V


@pytest.mark.parametrize("x0", ["short", "nan"])
def test_solve_many_softmax_relu_bad_x0_is_that_problems_status(x0):
    """One problem's bad x0 is its INVALID_INPUT status (naming it and x0), the others still solve."""
    C, b, V = softmax_relu_problems()
    problems = [(C, b, V), (C[:, :2].copy(), b, V)]
    starts = np.zeros(4) if x0 == "short" else [np.zeros(4), np.array([np.nan, 0.0])]
    res = fastnewton.solve_many(problems, model="softmax_relu", x0=starts)
    assert res.status[1] == Status.INVALID_INPUT
    assert "problem 1" in res.message[1] and "x0" in res.message[1]
    alone = fastnewton.solve(C, b, "softmax_relu", V=V, x0=np.zeros(4))
    assert res.status[0] == alone.status
    np.testing.assert_allclose(res.problem(0)["x"], alone.x, rtol=1e-10, atol=0)


def test_solve_many_softmax_relu_accepts_solves_max_iter_beyond_int64():
    C, b, V = softmax_relu_problems()
    res = fastnewton.solve_many([(C, b, V)], model="softmax_relu", max_iter=10**30)
    alone = fastnewton.solve(C, b, "softmax_relu", V=V, max_iter=10**30)
    assert res.status[0] == alone.status and res.n_iter[0] == alone.n_iter
