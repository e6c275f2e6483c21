"""kernels/small_softmax_relu.py's pieces against the Python path they repeat (``Problem`` with the
``softmax_relu`` model, ``fastnewton.hessian.NewtonSystem``, ``fastnewton.active_set``).

The compiled loop must make solve's decisions, so its evaluation, Hessian and one-sided step must agree with
the Python path's to rounding: the passes over C and V share their kernels' sums; the small dense products
(P S Pᵀ, the Woodbury solves) are summed in loops where the Python path calls BLAS, so agreement within
1e-12 relative (against magnitudes of 1) is asked, not equal bits.
"""
import numpy as np
import pytest

from fastnewton import Problem, make_problem
from fastnewton.active_set import MAX_UPDATES, one_sided_gain_ratio, one_sided_step
from fastnewton.hessian import NewtonSystem
from fastnewton.kernels import small_newton
from fastnewton.kernels import small_softmax_relu as kernel
from fastnewton.lifted_start import output_offsets
from fastnewton.models.softmax_relu import SoftmaxRelu

RTOL = 1e-12


def _problem(dense, one_sided=(), seed=0, l2=1e-3, weights=None):
    made = make_problem(150, 9, nnz_per_row=4, model="softmax_relu", m=6, noise=0.05, seed=seed, dense=dense)
    b = made.b.copy()
    b[list(one_sided)] = 0.0
    return Problem(made.C, b, model="softmax_relu", V=made.V, l2=l2, row_weights=weights)


def _matrices(problem):
    empty = np.empty(0, dtype=np.int64)
    matrix = problem.matrix
    if matrix.format == "dense":
        C = (np.ascontiguousarray(matrix.array), empty, empty, np.empty(0), False)
    else:
        C = (np.empty((0, problem.d)), matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64),
             matrix.data, True)
    V = (np.ascontiguousarray(problem.block.V), empty, empty, np.empty(0), False)
    return C, V


def _compiled_evaluation(problem, x):
    """(loss, c, ∇L, y, Q, G) of kernel._evaluate at x for problem's model (offsets and targets its own)."""
    C, V = _matrices(problem)
    model = problem.row_model
    n, d, m = problem.n, problem.d, model.m
    u = np.empty(n)
    small_newton._matvec(C, x, u)
    e, s, rho = np.empty(n), np.empty(n), np.empty(n)
    y, active_residual = np.empty(m), np.empty(m)
    Q, G, grad = np.empty((n, m + 3)), np.empty((d, m + 3)), np.empty(d)
    loss, c = kernel._evaluate(C, V, u, x, model.b, model.output_offset, np.ascontiguousarray(problem.block.w),
                               problem.l2, problem.block.chunk, e, s, y, active_residual, rho, Q, G, grad)
    return loss, c, grad, y, Q, G


def _lifted(problem):
    return problem.with_model(SoftmaxRelu(problem.b, output_offsets(problem, problem.b)), problem.l2)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "csr"])
@pytest.mark.parametrize("lifted", [False, True], ids=["real", "lifted"])
def test_evaluation_and_hessian_match_the_problem(dense, lifted):
    problem = _problem(dense, one_sided=(1,), weights=0.3)
    problem = _lifted(problem) if lifted else problem
    x = np.random.default_rng(1).standard_normal(problem.d) * 0.3
    loss, c, grad, y, Q, G = _compiled_evaluation(problem, x)
    ev = problem.evaluate(x)
    assert loss == pytest.approx(ev.loss, rel=RTOL)
    np.testing.assert_allclose(grad, ev.grad, rtol=0, atol=RTOL * np.linalg.norm(ev.grad))
    np.testing.assert_allclose(y, ev.known["y"], rtol=RTOL)
    np.testing.assert_allclose(G[:, 1:], ev.P, rtol=0, atol=RTOL * np.abs(ev.P).max())
    H = np.empty((problem.d, problem.d))
    C, _ = _matrices(problem)
    kernel._hessian(C, Q, c, G, y, problem.row_model.output_offset, np.ascontiguousarray(problem.block.w),
                    problem.l2, np.empty(problem.n), H, small_newton._sandwich_work(C, problem.n, problem.d))
    expected = problem.hessian_matrix(ev)
    np.testing.assert_allclose(H, expected, rtol=0, atol=RTOL * np.abs(expected).max())
    np.testing.assert_array_equal(H, H.T)


def test_one_sided_step_and_gain_ratio_match_active_set():
    # Outputs with b_j = 0 (terms ½ max(y_j, 0)²): the Woodbury active-set step from the plain Newton step,
    # at a damping μ, and the gain ratio of the refined step, as fastnewton.active_set computes them; some of
    # the six steps are refined.
    assert any([_compare_one_sided(seed) for seed in range(6)])


def _compare_one_sided(seed):
    problem = _problem(seed % 2 == 0, one_sided=(0, 2, 4), seed=seed, l2=0.0)
    x = np.random.default_rng(seed).standard_normal(problem.d)
    loss, c, grad, y, Q, G = _compiled_evaluation(problem, x)
    ev = problem.evaluate(x)
    H = problem.hessian_matrix(ev)
    D = np.sqrt(problem.matrix.column_squares())
    system = NewtonSystem(H, column_scale=D)
    mu = 1e-3
    p = system.solve(ev.grad, mu)
    while p is None:  # H indefinite at x: damped until it factors, as the loop's damping tries do
        mu *= 10.0
        p = system.solve(ev.grad, mu)
    J, y_one = problem.one_sided_outputs(ev)
    step, refined = one_sided_step(system, ev.grad, mu, p, J, y_one)
    L = np.zeros((problem.d, problem.d))
    assert small_newton._cholesky(H / np.outer(D, D), mu, L)
    mine = np.empty(problem.d)
    one_sided = np.array([0, 2, 4], dtype=np.int64)
    assert kernel._one_sided_step(L, D, grad, p, G, one_sided, y, MAX_UPDATES, mine) == refined
    if refined:
        np.testing.assert_allclose(mine, step, rtol=0, atol=1e-10 * np.linalg.norm(step))
        expected = one_sided_gain_ratio(system, ev.grad, J, y_one, 0.5 * step, 1e-3, 0.0)
        assert kernel._one_sided_gain_ratio(H, grad, G, one_sided, y, 0.5 * step, 1e-3, 0.0) == pytest.approx(
            expected, rel=1e-8)
    return refined


def test_simplex_vectors_match_lifted_starts_and_leave_unreachable_duals_to_it():
    # Reachable targets: the compiled dual gives simplex_vector's equation outputs, steps and Σ max(·), λ to
    # rounding (its solves are Cholesky in loops where scipy calls LAPACK); a dead output (V_j < 0, b_j > 0: the
    # dual stops short of its tolerance) is left to simplex_vector itself (None).
    from fastnewton.lifted_start import simplex_vector
    from fastnewton.many_small import _MatrixBook, _simplex_vectors

    problems = [_problem(seed % 2 == 0, one_sided=(1,) if seed == 2 else (), seed=seed) for seed in range(4)]
    made = make_problem(150, 9, nnz_per_row=4, model="softmax_relu", m=6, noise=0.05, seed=9)
    V, b = made.V.copy(), made.b.copy()
    V[:, 2] = -np.abs(V[:, 2]) - 0.1
    problems.append(Problem(made.C, b, model="softmax_relu", V=V))
    vectors = _simplex_vectors(problems, _MatrixBook())
    assert vectors[-1] is None
    for problem, vector in zip(problems[:-1], vectors):
        outputs, lam, total, steps = simplex_vector(problem, problem.b)
        np.testing.assert_array_equal(vector[0], outputs)
        np.testing.assert_allclose(vector[1], lam, rtol=0, atol=1e-10 * np.abs(lam).max())
        assert vector[2] == pytest.approx(total, rel=1e-12)
        assert vector[3] == steps
