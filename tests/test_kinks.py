"""relu_softmax's ReLU kinks (kernels/kinks.py, ``fastnewton.kinks``): the least-norm Clarke subgradient against
scipy.optimize.lsq_linear, the held step against a dense KKT solve, and solves of a planted problem whose
minimiser puts rows at (Cx)ᵢ = 0 (checked by lsq_linear on the subdifferential and by L around x)."""
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.sparse as sp
from scipy.special import softmax

import fastnewton
import fastnewton.newton as newton_module
from fastnewton import Problem, Status, make_problem, solve, solve_many
from fastnewton.kernels.kinks import (HELD_FULL, MAX_CANDIDATE_ROWS, MAX_CANDIDATES, T_ACTIVE, T_AT_KINK, T_MOVING,
                                      T_NONZERO, T_SLOPE, T_U, TABLE_FIELDS, ZIGZAG_FLIPS, held_rows, held_step,
                                      kink_candidates, least_norm_subgradient, parallel_groups)
from fastnewton.hessian import HessianProduct, NewtonSystem
from fastnewton.kinks import Kinks, kink_text
from fastnewton.newton import run_rounds


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _table(u, slope, active, at_kink, nonzero=None, moving=None):
    count = len(u)
    table = np.zeros((count, TABLE_FIELDS))
    table[:, T_U], table[:, T_SLOPE], table[:, T_ACTIVE], table[:, T_AT_KINK] = u, slope, active, at_kink
    table[:, T_NONZERO] = 1.0 if nonzero is None else nonzero
    table[:, T_MOVING] = 0.0 if moving is None else moving
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
    rows, norm, scaled = _least_norm(g, R, table, scale)
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


def _least_norm(g, R, table, scale):
    """``least_norm_subgradient`` with the candidates' classes of parallel rows formed as the solvers form them."""
    count = R.shape[0]
    group, coefficient = np.empty(count, dtype=np.int64), np.empty(count)
    parallel_groups(R, table, count, group, coefficient)
    return least_norm_subgradient(g, R, table, count, group, coefficient, scale)


def _planar_least_norm(rng, R, theta_range):
    """(rows at the kink, the kernel's scaled norm, lsq_linear's (bvls) optimum) for rows R of d = 3 in the plane
    x₂ = 0, all at the kink, with random slopes, m and column scale, and g = Σ (mₖ − θₖ)aₖRₖ (θ drawn in
    ``theta_range``) plus 1e-3 off the plane: the optimum is not zero."""
    count, d = R.shape
    slope = rng.uniform(0.1, 1.0, count)
    active = rng.integers(0, 2, count).astype(float)
    scale = rng.uniform(0.5, 3.0, d)
    thetas = rng.uniform(*theta_range, count)
    g = R.T @ ((active - thetas) * slope) + 1e-3 * np.array([0.0, 0.0, 1.0]) * rng.standard_normal()
    rows, _, scaled = _least_norm(g, R, _table(np.zeros(count), slope, active, np.ones(count)), scale)
    base = g - R.T @ (active * slope)
    A = (R * slope[:, None]).T / scale[:, None]
    fit = scipy.optimize.lsq_linear(A, -base / scale, bounds=(0.0, 1.0), method="bvls", tol=1e-15)
    return rows, scaled, np.linalg.norm(A @ fit.x + base / scale)


@pytest.mark.parametrize("seed", range(4))
def test_least_norm_subgradient_with_parallel_rows_at_a_small_angle(seed):
    """Two classes of parallel rows (12 multiples of e₀ of both signs, 3 of a row r at ~10° from e₀) in d = 3: the
    problem in θ is singular and coordinate descent alone left ~1e-4 of the distance to the optimum after its 200
    sweeps. The kernel's norm is lsq_linear's (bvls, an exact active-set method) to 1e-9 relative, never below."""
    rng = np.random.default_rng(seed)
    d = 3
    angle = np.deg2rad(rng.uniform(5.0, 15.0))
    r = np.array([np.cos(angle), np.sin(angle), 0.0])
    R = np.vstack([np.outer(rng.choice([-1.0, 1.0], 12) * rng.uniform(0.5, 2.0, 12), np.eye(d)[0]),
                   np.outer([1.0, -2.0, 0.5], r)])
    rows, scaled, reference = _planar_least_norm(rng, R, (0.2, 0.8))
    assert rows == R.shape[0]
    assert reference * (1 - 1e-9) <= scaled <= reference * (1 + 1e-9)


def test_least_norm_subgradient_with_dependent_classes():
    """3–5 classes of parallel rows (1–4 rows each, both signs) whose directions all lie in one plane of d = 3, the
    gradient off the plane by 1e-3 and the planted weights θ partly outside [0, 1]: the classes' shares are
    dependent (the active set's free block is singular, and takes a ridge). On 40 draws the kernel's norm is
    lsq_linear's (bvls) to 1e-9 relative, never below. Before the ridge, one draw (4 classes) stopped at twice
    the optimum."""
    for seed in range(40):
        rng = np.random.default_rng(seed)
        d = 3
        angles = rng.uniform(0.0, np.pi, 3 + seed % 3)
        R = np.vstack([np.outer(rng.choice([-1.0, 1.0], m) * rng.uniform(0.5, 2.0, m), [np.cos(a), np.sin(a), 0.0])
                       for a, m in zip(angles, rng.integers(1, 5, angles.size))])
        _, scaled, reference = _planar_least_norm(rng, R, (-0.3, 1.3))
        assert reference * (1 - 1e-9) <= scaled <= reference * (1 + 1e-9), seed


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
    alone = np.arange(count), np.ones(count)  # every row its own class
    assert held_step(R, W, table, *alone, member, p0, g, p) == count
    np.testing.assert_allclose(p, p_ref, rtol=1e-10, atol=1e-12 * np.linalg.norm(p_ref))
    # Row 0's share pushed outside [0, a₀]: it leaves, and the step is the bordered solve on the rows kept (the
    # others' multipliers change without it, and one may leave too).
    table[0, T_SLOPE] = 0.5 * abs(nu[0])
    table[0, T_ACTIVE] = 1.0 if nu[0] > 0 else 0.0
    member[:] = True
    kept = held_step(R, W, table, *alone, member, p0, g, p)
    assert not member[0] and kept == member.sum() >= 1
    p_ref, nu = _kkt(M, g, R[member], u[member])
    np.testing.assert_allclose(p, p_ref, rtol=1e-10, atol=1e-12 * np.linalg.norm(p_ref))
    share = table[member, T_ACTIVE] * table[member, T_SLOPE] + nu
    assert np.all((share >= 0) & (share <= table[member, T_SLOPE]))



def test_parallel_rows_are_grouped_into_classes():
    """parallel_groups: each row joins the first earlier row it is a multiple of (within PARALLEL_RTOL), with that
    multiple; empty rows and non-parallel rows stand alone; more than MAX_CANDIDATES classes give −1."""
    rng = np.random.default_rng(0)
    d = 5
    r0, r1 = rng.standard_normal(d), rng.standard_normal(d)
    R = np.array([r0, np.zeros(d), -3.0 * r0, r1, r0 + 1e-3 * r1, 2.0 * r1 + 1e-9 * rng.standard_normal(d)])
    table = _table(np.zeros(6), np.ones(6), np.zeros(6), np.ones(6))
    table[1, T_NONZERO] = 0.0
    group, coefficient = np.empty(6, dtype=np.int64), np.empty(6)
    assert parallel_groups(R, table, 6, group, coefficient) == 4
    assert group.tolist() == [0, 1, 0, 3, 4, 3]
    np.testing.assert_allclose(coefficient, [1.0, 1.0, -3.0, 1.0, 1.0, 2.0], rtol=1e-8)
    many = rng.standard_normal((MAX_CANDIDATES + 1, d))
    table = _table(np.zeros(MAX_CANDIDATES + 1), np.ones(MAX_CANDIDATES + 1), np.zeros(MAX_CANDIDATES + 1),
                   np.ones(MAX_CANDIDATES + 1))
    group, coefficient = np.empty(MAX_CANDIDATES + 1, dtype=np.int64), np.empty(MAX_CANDIDATES + 1)
    assert parallel_groups(many, table, MAX_CANDIDATES + 1, group, coefficient) == -1


@pytest.mark.parametrize("seed", range(4))
def test_held_step_holds_one_constraint_per_class_of_parallel_rows(seed):
    """Rows r₀, r₁, 2.5r₀, −0.7r₀, 3r₁ at the kink: as separate constraints they are dependent (the plain step
    stays); as classes the step is the dense bordered solve on [r₀; r₁], every row of a class is held, and a class
    stays while its share Σₖcₖmₖaₖ + ν lies in [Σ_{cₖ<0} cₖaₖ, Σ_{cₖ>0} cₖaₖ] (NumPy), even where no single row's
    box [0, aₖ] holds ν; a class whose share leaves it leaves with all its rows."""
    rng = np.random.default_rng(seed)
    d = 6
    A = rng.standard_normal((d, d))
    M = A @ A.T / d + 0.5 * np.eye(d)
    g = rng.standard_normal(d)
    r0, r1 = rng.standard_normal(d), rng.standard_normal(d)
    R = np.array([r0, r1, 2.5 * r0, -0.7 * r0, 3.0 * r1])
    c = np.array([1.0, 1.0, 2.5, -0.7, 3.0])
    count = 5
    u = np.zeros(count)
    W = np.linalg.solve(M, R.T)
    p0 = -np.linalg.solve(M, g)
    p_ref, nu = _kkt(M, g, R[:2], u[:2])
    classes = np.array([0, 1, 0, 0, 1])
    # Class 0's slopes hold ν₀ only together: each row's box [0, aₖ] (mₖ = 0) is too small for ν₀ alone.
    active = np.zeros(count)
    slope = np.where(classes == 0, 0.6 * abs(nu[0]), 2.0 * abs(nu[1]) + 1.0)
    if nu[0] < 0:
        active[[0, 2]] = 1.0  # m a c summed on the class: ν₀ < 0 is then inside [lo, hi] too
    if nu[1] < 0:
        active[[1, 4]] = 1.0
    table = _table(u, slope, active, np.ones(count))
    share = (c * active * slope)[classes == 0].sum() + nu[0]
    low, high = (c * slope)[(classes == 0) & (c < 0)].sum(), (c * slope)[(classes == 0) & (c > 0)].sum()
    assert low <= share <= high and abs(nu[0]) > slope[0]
    member = np.array([True, True, False, False, False])
    p = np.empty(d)
    # every row its own constraint: all five dependent, or (r₀, r₁ alone) row 0 leaves, its box too small for ν₀
    assert held_step(R, W, table, np.arange(count), np.ones(count), np.ones(count, dtype=np.bool_), p0, g, p) == 0
    alone = member.copy()
    assert held_step(R, W, table, np.arange(count), np.ones(count), alone, p0, g, p) <= 1 and not alone[0]
    group, coefficient = np.empty(count, dtype=np.int64), np.empty(count)
    assert parallel_groups(R, table, count, group, coefficient) == 2
    assert group.tolist() == classes.tolist()
    assert held_step(R, W, table, group, coefficient, member, p0, g, p) == 2
    assert member.all()
    np.testing.assert_allclose(p, p_ref, rtol=1e-10, atol=1e-12 * np.linalg.norm(p_ref))
    # Class 0's slopes shrunk below its share: the class leaves (all three rows), class 1 alone is held.
    table[classes == 0, T_SLOPE] = 0.05 * abs(nu[0])
    table[classes == 0, T_ACTIVE] = 0.0
    p_ref, nu = _kkt(M, g, R[1:2], u[1:2])
    table[classes == 1, T_SLOPE] = 2.0 * abs(nu[0]) + 1.0
    table[classes == 1, T_ACTIVE] = 1.0 if nu[0] < 0 else 0.0
    member = np.array([True, True, False, False, False])
    assert held_step(R, W, table, group, coefficient, member, p0, g, p) == 1
    assert member.tolist() == [False, True, False, False, True]
    np.testing.assert_allclose(p, p_ref, rtol=1e-10, atol=1e-12 * np.linalg.norm(p_ref))


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


@pytest.mark.parametrize("seed", range(4))
def test_held_rows_are_the_kink_rows_and_the_candidates_the_plain_step_crosses(seed):
    """The working set starts from every non-empty candidate at the kink and every other one whose uᵢ the plain
    step p₀ moves to the other side of 0 (or from 0 to below it), by NumPy's sign test on u + Rp₀; the fallback
    set keeps of the crossing ones only those on their way to the kink (T_MOVING)."""
    rng = np.random.default_rng(seed)
    count, d = 40, 5
    R = rng.standard_normal((count, d))
    R[::7] = 0.0
    u = rng.standard_normal(count) * rng.choice([1e-3, 1.0], count)
    u[::9] = 0.0
    at_kink = (rng.random(count) < 0.2).astype(float)
    nonzero = np.abs(R).max(axis=1) > 0
    moving = rng.random(count) < 0.5
    table = _table(u, np.ones(count), (u > 0).astype(float), at_kink, nonzero.astype(float), moving.astype(float))
    p0 = 1e-2 * rng.standard_normal(d)
    member = np.empty(count, dtype=np.bool_)
    crosses = (u > 0) != (u + R @ p0 > 0)
    for every_crossing in (True, False):
        size = held_rows(R, table, count, p0, member, every_crossing)
        expected = nonzero & ((at_kink != 0) | (crosses & (moving | every_crossing)))
        assert member.tolist() == expected.tolist() and size == expected.sum()
    assert 0 < (crosses & (at_kink == 0) & nonzero & ~moving).sum()  # rows the two sets differ on


def creeping_kink_problem():
    """A noisy relu_softmax problem (n = 144, d = 3, one entry per row) whose minimiser puts 50 rows at one kink:
    every row whose only entry lies in the column j with x*ⱼ = 0. The plain step moves those rows' uᵢ by a fixed
    amount, so the line search cut it short and the rows crept towards 0 from one side (no sign flip): 22–28
    iterations with exact and sketch steps, pcg STALLED."""
    C, b, _ = make_problem(144, 3, nnz_per_row=1, noise=1.0, seed=98, model="relu_softmax")
    return C, b


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg", "lagged"])
def test_rows_creeping_to_a_kink_are_held_there(fmt, hessian):
    """Holding the rows the plain step crosses: every strategy CONVERGED at a kink stationary point in ≤ 16
    iterations, its least-norm Clarke element by lsq_linear (bvls: 50 dependent rows in d = 3) ≤ 10·tol·g_ref
    (×10: NumPy's softmax and sums round differently) over the 50 rows at the kink."""
    C, b = creeping_kink_problem()
    matrix = C if fmt == "csr" else C.toarray()
    tol = 1e-8
    res = _quiet(solve, matrix, b, "relu_softmax", hessian=hessian, tol=tol, seed=0)
    assert res.status == Status.CONVERGED, res.message
    assert "kink stationary point" in res.message
    assert res.n_iter <= 16
    assert res.subgradient_norm <= tol * res.g_ref
    found, norm, _ = _least_norm_clarke(C.toarray(), b, res.x, method="bvls")
    assert found.size == 50
    assert norm <= 10 * tol * res.g_ref


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
    return C, _planted_target(C, x, kinks, np.asarray(thetas)), x, kinks


def _planted_target(C, x, kinks, thetas):
    """b making x a kink stationary point with the rows ``kinks`` at the kink and their Clarke weights ``thetas``
    (the construction in ``planted_kink_problem``'s docstring)."""
    u = C @ x
    active = u > 1e-12
    active[kinks] = False
    inactive = ~active
    inactive[kinks] = False
    s = softmax(np.maximum(u, 0.0))
    slope = 0.3 * s[kinks] ** 2
    y = np.zeros(C.shape[0])
    y[kinks] = slope / s[kinks]
    y[active] = np.linalg.lstsq((C[active] * s[active, None]).T, -(thetas * slope) @ C[kinks], rcond=None)[0]
    y[inactive] = -(s[~inactive] @ y[~inactive]) / s[inactive].sum()
    return s - y


def _least_norm_clarke(C, b, x, at_kink_rtol=1e-9, method="trf"):
    """The least-norm element of relu_softmax's Clarke subdifferential at x, independently: NumPy's softmax
    and the rows with |uᵢ| ≤ rtol·max|u| as the kink rows, lsq_linear over their θ ∈ [0, 1] (``method``: "bvls",
    the exact active-set method, where the kink rows are dependent and trf's LSMR stops early)."""
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
    fit = scipy.optimize.lsq_linear(A, -base, bounds=(0.0, 1.0), method=method, tol=1e-14, lsmr_tol="auto")
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

def assert_solve_many_agrees_at_kinks(problems, stop):
    """solve_many's compiled loop takes solve's kink steps and stop on each of ``problems``: CONVERGED with ``stop``
    in its message, the same status, message and iterations, and x within 1e-10 (relative)."""
    result = _quiet(solve_many, problems, model="relu_softmax")
    for i, (matrix, target) in enumerate(problems):
        reference = _quiet(solve, matrix, target, "relu_softmax")
        mine = result.problem(i)
        assert reference.status == Status.CONVERGED and stop in reference.message
        assert (mine["status"], mine["message"], mine["n_iter"]) == (reference.status, reference.message,
                                                                    reference.n_iter)
        assert np.linalg.norm(mine["x"] - reference.x) <= 1e-10 * np.linalg.norm(reference.x)


def test_planted_kink_problem_solve_many_agrees():
    """solve_many's compiled loop takes the same kink steps and stop: status, message, iterations, x (1e-10)."""
    C, b, x_star, _ = planted_kink_problem()
    assert_solve_many_agrees_at_kinks([(C, b), (sp.csr_matrix(C), b), planted_kink_problem(seed=3)[:2]],
                                      "kink stationary point")


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


def planted_shared_kink_problem(n=80, d=6, column_rows=12, multiples=(1.0, -2.0, 0.5), seed=0):
    """(C, b, x*, kink rows): relu_softmax whose minimiser x* puts column_rows + len(multiples) rows at (Cx*)ᵢ = 0 on
    two geometric kinks: rows whose only entry lies in column 0 (x*₀ = 0; entries of both signs) and multiples of one
    row r ⟂ x*. Planted as ``planted_kink_problem`` with every kink row's θₖ drawn in [0.2, 0.8]."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((n, d))
    x = rng.standard_normal(d)
    x[0] = 0.0
    kinks = np.arange(column_rows + len(multiples))
    C[:column_rows] = 0.0
    C[:column_rows, 0] = rng.choice([-1.0, 1.0], column_rows) * rng.uniform(0.5, 2.0, column_rows)
    r = rng.standard_normal(d)
    r -= (r @ x) / (x @ x) * x
    C[column_rows:kinks.size] = np.outer(multiples, r)
    thetas = rng.uniform(0.2, 0.8, kinks.size)
    return C, _planted_target(C, x, kinks, thetas), x, kinks


def _face_minimiser(C, b, kinks, x0):
    """The minimiser of L on the kink face {x : C_K x = 0} near x0, by scipy.optimize.minimize (BFGS) over
    x = N z (N: an orthonormal basis of C_K's null space), with NumPy's loss and gradient (the kink rows' θ do
    not enter: C_K N = 0)."""
    N = scipy.linalg.null_space(C[kinks])

    def loss_and_grad(z):
        u = C @ (N @ z)
        s = softmax(np.maximum(u, 0.0))
        r = s - b
        a = s * r - (s @ r) * s
        return 0.5 * r @ r, N.T @ (C.T @ (a * (u > 0)))

    fit = scipy.optimize.minimize(loss_and_grad, N.T @ x0, jac=True, method="BFGS", options={"gtol": 1e-13})
    return N @ fit.x


# planted_shared_kink_problem's shapes: d = 6, and d = 3, where the two kinks' rows span a plane at a small angle
# (coordinate descent alone on the least-norm problem stopped at ~6e-5·g_ref there, and every strategy STALLED).
SHARED_KINK_SHAPES = {"d6": dict(), "d3": dict(n=72, d=3, seed=1)}


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg", "lagged"])
@pytest.mark.parametrize("shape", SHARED_KINK_SHAPES)
def test_many_rows_at_one_kink_converge(fmt, hessian, shape):
    """15 rows at two geometric kinks (12 supported on column 0 with x*₀ = 0, 3 parallel multiples of one row):
    before, every strategy ended STALLED (d = 6: 31–35 iterations, x 2e-6 from x*: the held step rejected the
    dependent rows; d = 3: 14–26 iterations at x*, the least-norm test short of the optimum). Now CONVERGED at a
    kink stationary point of 15 rows, the lsq_linear least-norm Clarke element over all 15 θₖ ≤ 10·tol·g_ref, x
    within 1e-7 (relative) of scipy's minimiser on the kink face, no nearby point lower."""
    C, b, x_star, kinks = planted_shared_kink_problem(**SHARED_KINK_SHAPES[shape])
    matrix = sp.csr_matrix(C) if fmt == "csr" else C
    tol = 1e-8
    res = _quiet(solve, matrix, b, "relu_softmax", hessian=hessian, tol=tol, seed=0)
    assert res.status == Status.CONVERGED, res.message
    assert "kink stationary point: 15 row(s)" in res.message
    assert res.subgradient_norm <= tol * res.g_ref
    found, norm, _ = _least_norm_clarke(C, b, res.x, method="bvls")
    assert found.tolist() == kinks.tolist()
    assert norm <= 10 * tol * res.g_ref
    rng = np.random.default_rng(2)
    reference = _face_minimiser(C, b, kinks, x_star + 1e-2 * rng.standard_normal(x_star.size))
    assert np.linalg.norm(res.x - reference) <= 1e-7 * np.linalg.norm(reference)
    problem = Problem(C, b, model="relu_softmax")
    loss = problem.loss(res.x)
    for _ in range(50):
        step = rng.standard_normal(x_star.size)
        assert problem.loss(res.x + 1e-4 * step / np.linalg.norm(step)) >= loss


def test_creeping_kink_problem_solve_many_agrees():
    """solve_many's compiled loop holds the creeping rows as solve does: status, iterations and x (1e-10), both at a
    kink stationary point. The count of rows at the kink may differ by a row: x*ⱼ = 0 in the kink's column is
    reached to rounding (|xⱼ| ~ 1e-16 in solve, 1e-19 in solve_many), and a row whose only entry lies there is at the
    kink to rounding only when the last step held it or uᵢ is exactly 0."""
    C, b = creeping_kink_problem()
    problems = [(C.toarray(), b), (C, b)]
    result = _quiet(solve_many, problems, model="relu_softmax")
    for i, (matrix, target) in enumerate(problems):
        reference = _quiet(solve, matrix, target, "relu_softmax")
        mine = result.problem(i)
        assert reference.status == mine["status"] == Status.CONVERGED
        assert "kink stationary point" in reference.message and "kink stationary point" in mine["message"]
        assert mine["n_iter"] == reference.n_iter
        assert np.linalg.norm(mine["x"] - reference.x) <= 1e-10 * np.linalg.norm(reference.x)


def test_many_rows_at_one_kink_solve_many_agrees():
    """solve_many's compiled loop on the shared-kink problems (dense and CSR, three shapes): solve's status, message,
    iterations and x (1e-10)."""
    problems = []
    for shape in (dict(seed=0), dict(seed=2), SHARED_KINK_SHAPES["d3"]):
        C, b, _, _ = planted_shared_kink_problem(**shape)
        problems += [(C, b), (sp.csr_matrix(C), b)]
    assert_solve_many_agrees_at_kinks(problems, "kink stationary point: 15 row(s)")


def test_more_rows_at_a_kink_than_the_step_reads_are_said_so():
    """Past MAX_CANDIDATE_ROWS rows near the kink the plain step is taken, and a stall says so."""
    text = kink_text("row(s) with (Cx)ᵢ", MAX_CANDIDATE_ROWS + 1, 0, True)
    assert f"more rows than the step that holds rows at the kink reads ({MAX_CANDIDATE_ROWS})" in text
    assert "more rows" not in kink_text("row(s) with (Cx)ᵢ", MAX_CANDIDATE_ROWS, 0, True)
    assert "more rows" not in kink_text("outputs", MAX_CANDIDATE_ROWS + 1, 0)


def pinned_kink_problem():
    """relu_softmax on 89 rows of d = 3 drawn from 3 directions (multiples of both signs, some rows and entries zero,
    C scaled by ~10²): at its minimiser 48 rows in 2 classes sit at the kink, and near it the plain step also crosses
    4 rows of a third class, whose direction with the other two spans every column: holding all three pins x, so
    the bordered step is refused. Held from every crossing row alone, exact steps STALLED there after 21
    iterations (a hostile-input fuzz, seed 78)."""
    rng = np.random.default_rng(78)
    n, d = int(rng.integers(5, 120)), int(rng.integers(1, 7))
    directions = rng.standard_normal((int(rng.integers(1, 6)), d))
    C = directions[rng.integers(0, directions.shape[0], n)] * rng.choice([-2.0, -1.0, 0.5, 1.0, 3.0], n)[:, None]
    C[rng.random(n) < 0.1] = 0.0
    C = np.where(rng.random((n, d)) < 0.3, 0.0, C) * 10.0 ** rng.uniform(-3, 3)
    b = rng.random(n) ** 3
    b[rng.random(n) < 0.2] = 0.0
    return C, b / b.sum()


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("hessian", ["exact", "pcg"])
def test_rows_that_would_pin_x_fall_back_to_the_moving_rows(fmt, hessian):
    """When holding every crossing row fails, the step starts again from the rows at the kink and the moving ones:
    CONVERGED at a kink stationary point, its least-norm Clarke element by lsq_linear (bvls) ≤ 10·tol·g_ref; so does
    solve_many's compiled loop. (Its path is not solve's on this problem: 27 iterations against 13–14, x 1e-8–2e-7
    apart; on the previous rule it STALLED where solve converged, x 3.6 apart: the two loops' sums round
    differently and this problem's degenerate directions amplify it.)"""
    C, b = pinned_kink_problem()
    matrix = sp.csr_matrix(C) if fmt == "csr" else C
    tol = 1e-8
    res = _quiet(solve, matrix, b, "relu_softmax", hessian=hessian, tol=tol, seed=0)
    assert res.status == Status.CONVERGED and "kink stationary point" in res.message, res.message
    _, norm, _ = _least_norm_clarke(C, b, res.x, method="bvls")
    assert norm <= 10 * tol * res.g_ref
    if hessian == "exact":
        mine = _quiet(solve_many, [(matrix, b)], model="relu_softmax").problem(0)
        assert mine["status"] == Status.CONVERGED and "kink stationary point" in mine["message"]
        _, norm, _ = _least_norm_clarke(C, b, mine["x"], method="bvls")
        assert norm <= 10 * tol * res.g_ref
