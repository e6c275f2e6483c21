"""relu_softmax's ReLU kinks (kernels/kinks.py, ``fastnewton.kinks``): the least-norm Clarke subgradient against
scipy.optimize.lsq_linear, the held step against a dense KKT solve, and solves of a planted problem whose
minimiser puts rows at (Cx)ᵢ = 0 (checked by lsq_linear on the subdifferential and by L around x)."""
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
from scipy.special import softmax

import fastnewton
import fastnewton.newton as newton_module
from fastnewton import Problem, Status, make_problem, solve, solve_many
from fastnewton.kernels.kinks import (HELD_FULL, MAX_CANDIDATES, NOT_HELD, T_ACTIVE, T_AT_KINK, T_FLIPPED, T_HELD,
                                      T_NONZERO, T_SLOPE, T_U, TABLE_FIELDS, ZIGZAG_FLIPS, held_step,
                                      kink_candidates, least_norm_subgradient)
from fastnewton.hessian import HessianProduct, NewtonSystem
from fastnewton.kinks import Kinks
from fastnewton.newton import run_rounds


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _table(u, slope, active, at_kink, held=None, flipped=None):
    count = len(u)
    table = np.zeros((count, TABLE_FIELDS))
    table[:, T_U], table[:, T_SLOPE], table[:, T_ACTIVE], table[:, T_AT_KINK] = u, slope, active, at_kink
    table[:, T_HELD] = NOT_HELD if held is None else held
    table[:, T_FLIPPED] = 0.0 if flipped is None else flipped
    table[:, T_NONZERO] = 1.0
    return table


@pytest.mark.parametrize("seed", range(6))
def test_least_norm_subgradient_is_lsq_linears(seed):
    """min over θ ∈ [0, 1]^K of ‖D⁻¹(g + Σ (θₖ − mₖ) aₖ Rₖ)‖ (a box-constrained least-squares problem) by scipy's
    lsq_linear: the kernel's norm is that of a feasible θ (never below the optimum) and within 1e-9 of it."""
    rng = np.random.default_rng(seed)
    d, count = 7, 5
    R = rng.standard_normal((count, d))
    slope = rng.uniform(-1.0, 1.0, count)
    active = rng.integers(0, 2, count).astype(float)
    at_kink = np.array([1.0, 1.0, 0.0, 1.0, 0.0])  # rows 2 and 4: candidates off the kink, left out
    scale = rng.uniform(0.5, 3.0, d)
    g = rng.standard_normal(d) * 0.3 + R[[0, 1, 3]].T @ rng.uniform(0.0, 1.0, 3)
    table = _table(np.zeros(count), slope, active, at_kink)
    rows, norm, scaled = least_norm_subgradient(g, R, table, count, scale)
    kinks = np.flatnonzero(at_kink)
    base = g - R[kinks].T @ (active[kinks] * slope[kinks])
    A = (R[kinks] * slope[kinks, None]).T / scale[:, None]
    fit = scipy.optimize.lsq_linear(A, -base / scale, bounds=(0.0, 1.0), tol=1e-14, lsmr_tol="auto")
    best = base + R[kinks].T @ (fit.x * slope[kinks])
    assert rows == 3
    reference = np.linalg.norm(best / scale)
    assert reference - 1e-12 <= scaled <= reference * (1 + 1e-9) + 1e-14
    # The plain norm is that of the same element: between the optimum's and g's (θ = m) when they differ.
    assert norm <= max(np.linalg.norm(g), np.linalg.norm(best)) * (1 + 1e-12)


def _kkt(M, g, R, u):
    """The equality-constrained step by a dense bordered solve: [[M, Rᵀ], [R, 0]] [p; ν] = [−g; −u]."""
    d, k = M.shape[0], R.shape[0]
    system = np.block([[M, R.T], [R, np.zeros((k, k))]])
    solution = np.linalg.solve(system, -np.concatenate([g, u]))
    return solution[:d], solution[d:]


@pytest.mark.parametrize("seed", range(4))
def test_held_step_is_the_bordered_solve_and_drops_rows_by_their_multiplier(seed):
    rng = np.random.default_rng(seed)
    d, count = 8, 3
    A = rng.standard_normal((d, d))
    M = A @ A.T / d + 0.5 * np.eye(d)
    g = rng.standard_normal(d)
    R = rng.standard_normal((count, d))
    u = np.zeros(count)  # rows at the kink: the held step is then a descent direction (gᵀp = −pᵀMp)
    W = np.linalg.solve(M, R.T)
    p0 = -np.linalg.solve(M, g)
    p_ref, nu = _kkt(M, g, R, u)
    # slopes and sides that keep every multiplier's share mₖaₖ + νₖ inside [0, aₖ]
    slope = 2.0 * np.abs(nu) + 1.0
    active = (nu < 0).astype(float)
    table = _table(u, slope, active, np.ones(count))
    member = np.ones(count, dtype=np.bool_)
    p = np.empty(d)
    assert held_step(R, W, table, member, p0, g, p) == count
    np.testing.assert_allclose(p, p_ref, rtol=1e-10, atol=1e-12 * np.linalg.norm(p_ref))
    # Row 0's share pushed outside [0, a₀]: it leaves, and the step is the bordered solve on the rows kept (the
    # others' multipliers change without it, and one may leave too).
    table[0, T_SLOPE] = 0.5 * abs(nu[0])
    table[0, T_ACTIVE] = 1.0 if nu[0] > 0 else 0.0
    member[:] = True
    kept = held_step(R, W, table, member, p0, g, p)
    assert not member[0] and kept == member.sum() >= 1
    p_ref, nu = _kkt(M, g, R[member], u[member])
    np.testing.assert_allclose(p, p_ref, rtol=1e-10, atol=1e-12 * np.linalg.norm(p_ref))
    share = table[member, T_ACTIVE] * table[member, T_SLOPE] + nu
    assert np.all((share >= 0) & (share <= table[member, T_SLOPE]))



@pytest.mark.parametrize("seed", range(4))
def test_projected_cg_held_step_is_the_bordered_solve(seed):
    """A CG system's held step (``NewtonSystem.held_solve_rounds``: projected CG on the exact product, preconditioned
    by a perturbed matrix, column-scaled) against the dense KKT solve of (H + μD²): p, ν and pᵀHp to 1e-8 relative
    with the forcing term at 1e-10 (CG on the d − K = 7 dimensional null space then ends in 7 iterations: seen
    ≤ 1.1e-12 over 12 seeds), and C_K p = −u to rounding (the constraint holds at every CG iterate)."""
    rng = np.random.default_rng(seed)
    d, count, mu = 10, 3, 0.02
    A = rng.standard_normal((d, d))
    H = A @ A.T / d + 0.1 * np.eye(d)
    D = np.exp(rng.uniform(-1, 1, d))
    B = A + 0.5 * rng.standard_normal((d, d))
    preconditioner = B @ B.T / d + 0.1 * np.eye(d)  # H̃: a rough approximation of H (κ(H̃⁻¹M) ~ 10–25)
    g = rng.standard_normal(d)
    R = rng.standard_normal((count, d))
    u = 1e-3 * rng.standard_normal(count)
    system = NewtonSystem(preconditioner, hessp=lambda v: H @ v, forcing=1e-10, column_scale=D)
    p, nu, curvature = run_rounds(system.held_solve_rounds(g, mu, R, u), HessianProduct.run)
    p_ref, nu_ref = _kkt(H + mu * np.diag(D * D), g, R, u)
    np.testing.assert_allclose(p, p_ref, rtol=1e-8, atol=1e-10 * np.linalg.norm(p_ref))
    np.testing.assert_allclose(nu, nu_ref, rtol=1e-8, atol=1e-10 * np.linalg.norm(nu_ref))
    np.testing.assert_allclose(R @ p, -u, rtol=0, atol=1e-13 * np.linalg.norm(R) * np.linalg.norm(p) + 1e-15)
    assert curvature == pytest.approx(p @ H @ p, rel=1e-8)
    assert system.info["held_cg_iterations"] >= 1



def test_projected_cg_held_step_at_its_solution_is_the_feasible_point():
    """A gradient wholly along the held row (the reduced residual 0, as at a kink minimum): the step is the feasible
    point, no CG iteration, and ν balances the gradient (Mp + g + Rᵀν = 0)."""
    d = 5
    H = 2.0 * np.eye(d)
    R = np.zeros((1, d))
    R[0, 0] = 1.0
    g = np.zeros(d)
    g[0] = 3.0
    system = NewtonSystem(H, hessp=lambda v: H @ v, forcing=0.1)
    p, nu, curvature = run_rounds(system.held_solve_rounds(g, 0.0, R, np.zeros(1)), HessianProduct.run)
    assert np.array_equal(p, np.zeros(d)) and nu.tolist() == [-3.0] and curvature == 0.0
    assert system.info["held_cg_iterations"] == 0

def test_projected_cg_held_step_rejects_dependent_rows():
    rng = np.random.default_rng(0)
    d = 6
    H = np.eye(d) + 0.1 * np.ones((d, d))
    R = rng.standard_normal((1, d))
    system = NewtonSystem(H, hessp=lambda v: H @ v, forcing=1e-10)
    rows = np.vstack([R, 2.0 * R])
    assert run_rounds(system.held_solve_rounds(np.ones(d), 0.0, rows, np.zeros(2)), HessianProduct.run) is None

def test_candidates_count_sign_flips_in_a_row():
    """A row is listed once its sign has flipped in ZIGZAG_FLIPS steps in a row, or when held, or within
    rtol·max|u| of 0 (exact zeros left out: empty rows); flips restart at 0 after a step without one."""
    n = 6
    held = np.zeros(n, dtype=np.int8)
    held[5] = HELD_FULL
    flips = np.zeros(n, dtype=np.int64)
    index = np.empty(MAX_CANDIDATES, dtype=np.int64)
    signs = [np.array([1.0, 1, 1, 1, 1e-9, 0]), np.array([-1.0, 1, 1, 1, 1e-9, 0]),
             np.array([1.0, 1, 1, 1, 1e-9, 0]), np.array([1.0, -1, 1, 1, 1e-9, 0])]
    listed = []
    for before, after in zip(signs, signs[1:]):
        count = kink_candidates(after, before, held, flips, 1e-6, index)
        listed.append(index[:count].tolist())
    assert ZIGZAG_FLIPS == 2
    assert listed == [[4, 5], [0, 4, 5], [4, 5]]
    assert flips.tolist() == [0, 1, 0, 0, 0, 0]


def planted_kink_problem(n=60, d=6, thetas=(0.3, 0.6), seed=0):
    """(C, b, x*, kink rows): relu_softmax with a minimiser x* that puts len(thetas) rows at (Cx*)ᵢ = 0.

    Rows k < K are made orthogonal to x*. With s = softmax(ReLU(Cx*)) and b = s − y, aᵢ = sᵢ(rᵢ − c) = sᵢyᵢ when
    Σ sᵢyᵢ = 0 (then c = 0); the kink rows get aₖ = 0.3·sₖ² > 0 (so bₖ = 0.7·sₖ > 0 and L rises from the kink on
    both sides), the active rows the least-norm y with Σ_active sᵢyᵢCᵢ = −Σ_k θₖaₖCₖ, the inactive rows the
    common value that makes Σ sᵢyᵢ = 0: then 0 = Σ θᵢaᵢCᵢ is the Clarke element with θₖ = thetas ∈ (0, 1)."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((n, d))
    x = rng.standard_normal(d)
    kinks = np.arange(len(thetas))
    C[kinks] -= np.outer(C[kinks] @ x, x) / (x @ x)
    u = C @ x
    active = u > 1e-12
    inactive = ~active
    inactive[kinks] = False
    s = softmax(np.maximum(u, 0.0))
    slope = 0.3 * s[kinks] ** 2
    y = np.zeros(n)
    y[kinks] = slope / s[kinks]
    y[active] = np.linalg.lstsq((C[active] * s[active, None]).T, -(np.asarray(thetas) * slope) @ C[kinks],
                                rcond=None)[0]
    y[inactive] = -(s[~inactive] @ y[~inactive]) / s[inactive].sum()
    return C, s - y, x, kinks


def _least_norm_clarke(C, b, x, at_kink_rtol=1e-9):
    """The least-norm element of relu_softmax's Clarke subdifferential at x, independently: NumPy's softmax
    and the rows with |uᵢ| ≤ rtol·max|u| as the kink rows, lsq_linear over their θ ∈ [0, 1]."""
    u = C @ x
    kinks = np.flatnonzero(np.abs(u) <= at_kink_rtol * np.abs(u).max())
    z = np.maximum(u, 0.0)
    s = softmax(z)
    r = s - b
    a = s * r - (s @ r) * s
    theta = (u > 0).astype(float)
    theta[kinks] = 0.0
    base = C.T @ (a * theta)
    A = (C[kinks] * a[kinks, None]).T
    fit = scipy.optimize.lsq_linear(A, -base, bounds=(0.0, 1.0), tol=1e-14, lsmr_tol="auto")
    return kinks, np.linalg.norm(base + A @ fit.x), fit.x


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("start", ["auto", "near"])
def test_planted_kink_minimum_is_converged_to(fmt, start):
    """Before, both starts ended STALLED at the kink (51 and 29 iterations, ‖∇L‖/g_ref ~ 1e-4). Now CONVERGED at
    a kink stationary point, at x* (1e-8 relative), its least-norm Clarke element by lsq_linear ≤ tol·g_ref
    (×10: NumPy's softmax and sums round differently), the θ found inside (0, 1), and no nearby point lower."""
    C, b, x_star, kinks = planted_kink_problem()
    rng = np.random.default_rng(1)
    x0 = "auto" if start == "auto" else x_star + 1e-2 * rng.standard_normal(x_star.size)
    matrix = sp.csr_matrix(C) if fmt == "csr" else C
    tol = 1e-8
    res = _quiet(solve, matrix, b, "relu_softmax", x0=x0, tol=tol)
    assert res.status == Status.CONVERGED, res.message
    assert "kink stationary point: 2 row(s)" in res.message
    assert res.n_iter <= 15
    assert res.subgradient_norm <= tol * res.g_ref
    assert np.linalg.norm(res.x - x_star) <= 1e-8 * np.linalg.norm(x_star)
    found, norm, theta = _least_norm_clarke(C, b, res.x)
    assert found.tolist() == kinks.tolist()
    assert norm <= 10 * tol * res.g_ref
    np.testing.assert_allclose(theta, [0.3, 0.6], atol=1e-4)
    problem = Problem(C, b, model="relu_softmax")
    loss = problem.loss(res.x)
    for _ in range(50):
        step = rng.standard_normal(x_star.size)
        assert problem.loss(res.x + 1e-4 * step / np.linalg.norm(step)) >= loss



@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("hessian", ["pcg", "lagged"])
def test_planted_kink_minimum_with_cg_steps(fmt, hessian):
    """CG systems hold the kink rows too (projected CG): CONVERGED at the kink stationary point x* (1e-8 relative),
    its lsq_linear Clarke element ≤ 10·tol·g_ref. Before, these ended STALLED at the kink (the plain CG step
    zig-zags across it)."""
    C, b, x_star, kinks = planted_kink_problem()
    matrix = sp.csr_matrix(C) if fmt == "csr" else C
    tol = 1e-8
    res = _quiet(solve, matrix, b, "relu_softmax", hessian=hessian, tol=tol, seed=0)
    assert res.status == Status.CONVERGED, res.message
    assert "kink stationary point: 2 row(s)" in res.message
    assert np.linalg.norm(res.x - x_star) <= 1e-8 * np.linalg.norm(x_star)
    found, norm, _ = _least_norm_clarke(C, b, res.x)
    assert found.tolist() == kinks.tolist() and norm <= 10 * tol * res.g_ref
    assert any("held_cg_iterations" in record for record in res.history)


@pytest.mark.parametrize("hessian", ["pcg", "lagged"])
def test_cg_kink_steps_in_solve_many_targets_are_solves(hessian):
    """One C, many targets: a column whose CG steps hold kink rows takes solve's steps (shared passes answer the
    projected CG's products too): status, iterations and x (1e-10) of ``solve`` with the same strategy."""
    C, b, _, _ = planted_kink_problem()
    other = planted_kink_problem(thetas=(0.5,), seed=0)[1]
    B = np.column_stack([b, other])
    result = _quiet(solve_many, C, B, model="relu_softmax", hessian=hessian, seed=0)
    for j in range(B.shape[1]):
        reference = _quiet(solve, C, B[:, j], "relu_softmax", hessian=hessian, seed=0)
        # column 0 stops at its two kink rows after held CG steps; column 1 converges without a kink
        assert any("held_cg_iterations" in record for record in reference.history) == (j == 0)
        mine = result.problem(j)
        assert (mine["status"], mine["n_iter"]) == (reference.status, reference.n_iter)
        assert np.linalg.norm(mine["x"] - reference.x) <= 1e-10 * np.linalg.norm(reference.x)

def test_planted_kink_problem_solve_many_agrees():
    """solve_many's compiled loop takes the same kink steps and stop: status, message, iterations, x (1e-10)."""
    C, b, x_star, _ = planted_kink_problem()
    problems = [(C, b), (sp.csr_matrix(C), b), planted_kink_problem(seed=3)[:2]]
    result = _quiet(solve_many, problems, model="relu_softmax")
    for i, (matrix, target) in enumerate(problems):
        reference = _quiet(solve, matrix, target, "relu_softmax")
        mine = result.problem(i)
        assert reference.status == Status.CONVERGED and "kink stationary point" in reference.message
        assert (mine["status"], mine["message"], mine["n_iter"]) == (reference.status, reference.message,
                                                                    reference.n_iter)
        assert np.linalg.norm(mine["x"] - reference.x) <= 1e-10 * np.linalg.norm(reference.x)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_a_problem_without_kinks_takes_its_path_bit_for_bit(fmt, monkeypatch):
    """A planted noiseless problem (no row at a kink on the way or at the end): the same x, bits and iterations,
    as the loop without the kink machinery (``Kinks.at`` returning None: the loop as it was before it)."""
    C, b, _ = make_problem(400, 12, nnz_per_row=4, model="relu_softmax", seed=4)
    matrix = C.toarray() if fmt == "dense" else C
    res = _quiet(solve, matrix, b, "relu_softmax", x0=np.full(12, 0.05), tol=1e-10)
    monkeypatch.setattr(newton_module.Kinks, "at", classmethod(lambda cls, *args: None))
    plain = _quiet(solve, matrix, b, "relu_softmax", x0=np.full(12, 0.05), tol=1e-10)
    assert res.status == plain.status == Status.CONVERGED
    assert res.n_iter == plain.n_iter and res.n_iter > 3
    assert np.array_equal(res.x, plain.x)
    assert "kink" not in res.message


def test_kinks_are_found_only_for_relu_softmax():
    C, b, _ = make_problem(50, 4, nnz_per_row=3, model="softmax", seed=0)
    problem = Problem(C, b, model="softmax")
    ev = problem.evaluate(np.ones(4))
    assert Kinks.at(problem, ev, problem.kink_states(ev), 1e-6) is None
    assert fastnewton.Problem(C, b, model="relu_softmax").relu_rows(np.array([2, 0])).shape == (2, 4)
