"""Starting points (SPEC §3, ``x0="auto"``): fastnewton.start.starting_point."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import fastnewton
from fastnewton import Problem, Status, make_problem, solve
from fastnewton.start import starting_point

import naive


def planted(model, dense, n=2000, d=20, seed=0, **kwargs):
    out = make_problem(n, d, model=model, seed=seed, dense=dense, **kwargs)
    C, b, x_true = out[:3]
    return C, b, x_true, out.V


# ---------------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_start_is_the_optimum_for_noise_free_b(dense, seed):
    # log b = Cx* − logsumexp(Cx*) holds exactly, so the weighted least-squares fit returns x*
    # up to rounding: n ≫ d random C has no direction v with Cv constant, so x* is unique.
    C, b, x_true, _ = planted("softmax", dense, seed=seed, scale=2.0)
    problem = Problem(C, b)
    x0, description = starting_point(problem, "auto")
    assert "auto" in description
    assert np.linalg.norm(x0 - x_true) <= 1e-8 * np.linalg.norm(x_true)
    # ‖b‖² ≈ 1/n: a loss of 1e-20 is rounding level.
    assert problem.loss(x0) <= 1e-20
    assert np.linalg.norm(problem.grad(x0)) <= 1e-8 * np.linalg.norm(problem.grad(np.zeros(C.shape[1])))


def test_softmax_start_ignores_zero_targets():
    # noise = 1 clips a sixth of b to exactly 0, where log b is undefined: those rows are dropped.
    C, b, _, _ = planted("softmax", False, seed=2, noise=1.0)
    assert np.any(b == 0.0)
    problem = Problem(C, b, l2=1e-8)
    x0, _ = starting_point(problem, "auto")
    assert np.all(np.isfinite(x0))
    assert problem.loss(x0) < problem.loss(np.zeros(C.shape[1]))
    res = solve(C, b, l2=1e-8)
    assert res.converged, res.message


def _weighted_log_fit(C, b, weights):
    """argmin over (x, θ) of Σ wᵢ ((Cx)ᵢ + θ − log bᵢ)², by NumPy's lstsq on the √w-scaled rows of [C, 1]: x."""
    design = np.column_stack([C if isinstance(C, np.ndarray) else C.toarray(), np.ones(len(b))])
    root = np.sqrt(weights)
    return np.linalg.lstsq(design * root[:, None], np.log(b) * root, rcond=None)[0][:-1]


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_softmax_start_is_the_b_squared_weighted_fit_and_beats_b_weights_on_noisy_targets(dense):
    # The start solves min Σ bᵢ² ((Cx)ᵢ + θ − log bᵢ)² (the loss ½‖softmax(Cx) − b‖² to second order
    # in log space). Independent check: NumPy's lstsq; both solve the same well-conditioned d + 1
    # system (n = 3000 ≫ d = 15), measured to agree to ~1e-13.
    ratios = []
    for seed in range(10):
        C, b, _, _ = planted("softmax", dense, n=3000, d=15, seed=seed, noise=0.05)
        problem = Problem(C, b)
        x0, description = starting_point(problem, "auto")
        assert "b²" in description
        expected = _weighted_log_fit(C, b, b * b)
        assert np.linalg.norm(x0 - expected) <= 1e-9 * np.linalg.norm(expected)
        ratios.append(np.linalg.norm(problem.grad(x0)) / np.linalg.norm(problem.grad(_weighted_log_fit(C, b, b))))
    # The b-weighted fit (the cross-entropy's weights) usually starts further from this loss's optimum:
    # measured median ratio of gradient norms 0.15 (CSR) and 0.24 (dense) over these seeds; not on
    # every problem (one CSR seed: 2.6), so the median is what is asserted.
    assert np.median(ratios) < 0.5, ratios


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("scale", [1e-300, 1e300])
@pytest.mark.filterwarnings("ignore:.*probability vector")
@pytest.mark.filterwarnings("error::RuntimeWarning")  # no NumPy overflow warning from the target's norm
def test_softmax_start_does_not_depend_on_the_scale_of_b(dense, scale):
    # The fit's weights are (bᵢ/max b)²: for b ~ 1e-300, bᵢ² underflowed to 0 and the normalised
    # system divided 0 by 0 (a ZeroDivisionError out of solve; hypothesis found it with n = d = 1).
    # Scaling b changes log b by a constant that the intercept absorbs, so the start is the same x
    # up to the fit's rounding (measured ~1e-15 relative; 1e-10 allows the system's conditioning).
    C, b, _, _ = planted("softmax", dense, n=500, d=8, seed=3, noise=0.05)
    x0, _ = starting_point(Problem(C, b), "auto")
    x_scaled, _ = starting_point(Problem(C, b * scale), "auto")
    assert np.linalg.norm(x_scaled - x0) <= 1e-10 * np.linalg.norm(x0)
    batch = fastnewton.solve_many([(C, b * scale)], max_iter=0)
    assert np.linalg.norm(batch.x[:, 0] - x0) <= 1e-10 * np.linalg.norm(x0)


def test_softmax_start_on_a_one_by_one_problem_with_a_subnormal_target():
    with pytest.warns(UserWarning, match="probability vector"):
        res = solve(np.array([[1.2573e-4]]), np.array([1e-300]), row_weights=np.array([0.91]), max_iter=0)
    assert np.all(np.isfinite(res.x))


def test_softmax_start_without_positive_target_is_zeros():
    C, _, _, _ = planted("softmax", False, n=200, d=5, seed=3)
    x0, description = starting_point(Problem(C, np.zeros(200)), "auto")
    assert np.array_equal(x0, np.zeros(5))
    assert "zeros" in description


# ---------------------------------------------------------------------------------------------
# relu_softmax
# ---------------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), dense=st.booleans(), scale=st.sampled_from([0.5, 1.0, 3.0]),
       noise=st.sampled_from([0.0, 0.01, 0.2]), d=st.integers(2, 20))
def test_relu_softmax_start_is_never_the_dead_point(seed, dense, scale, noise, d):
    C, b, _, _ = planted("relu_softmax", dense, n=500, d=d, seed=seed, scale=scale, noise=noise)
    if np.all(b == b[0]):  # all rows inactive: every x with Cx ≤ 0 is optimal, dead is fine
        return
    x0, _ = starting_point(Problem(C, b, "relu_softmax"), "auto")
    assert np.all(np.isfinite(x0))
    u0 = C @ x0
    assert np.any(u0 > 0.0), "every ReLU inactive at the start: the dead stationary point"


def _relu_target(u):
    z = np.maximum(u, 0.0)
    e = np.exp(z - z.max())
    return e / e.sum()


def _check_active_rows_fitted(u0, b, active):
    # The active rows' targets are fitted exactly (consistent system); the null-space move
    # must not disturb them beyond rounding of log(b/f) ~ 1e-15·|log(b/f)| ≈ 1e-14.
    floor = b.min()
    assert np.max(np.abs(u0[active] - np.log(b[active] / floor))) <= 1e-9


def test_relu_softmax_start_uses_the_null_space_for_a_unit_margin():
    # n = 25 < d = 30 with 8 active rows: the active rows leave a 22-dimensional null space,
    # enough to push all 17 floor rows to the full margin Cx ≤ −1 (SPEC: τ ≤ 1).
    rng = np.random.default_rng(0)
    n, d, n_active = 25, 30, 8
    C = rng.standard_normal((n, d))
    u = -rng.uniform(0.5, 2.0, n)
    active = np.zeros(n, dtype=bool)
    active[rng.choice(n, n_active, replace=False)] = True
    u[active] = rng.uniform(0.5, 2.0, n_active)
    x = np.linalg.lstsq(C, u, rcond=None)[0]
    b = _relu_target(C @ x)
    x0, description = starting_point(Problem(C, b, "relu_softmax"), "auto")
    assert "null space" in description
    u0 = C @ x0
    _check_active_rows_fitted(u0, b, active)
    # HiGHS meets its constraints to ~1e-9; the floor rows sit at −1 up to that.
    assert np.max(u0[~active]) <= -1.0 + 1e-7
    res = solve(C, b, "relu_softmax")
    assert res.converged and res.loss <= 1e-20


def _few_active_rows(seed, n=3000, d=30, bias=-2.3):
    """n ≫ d rows, a constant column with a negative weight: only ~1% of the rows are active,
    fewer than d, so the active rows leave a null space and the margin LP runs."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((n, d))
    C[:, 0] = 1.0
    x = rng.standard_normal(d) / np.sqrt(d)
    x[0] = bias
    u = C @ x
    return C, _relu_target(u), u > 0.0


def _largest_margin(C, b, active, cap=1.0):
    """max τ ≤ cap s.t. C_A x = log(b_A / f), C_F x ≤ −τ, by one LP over all rows (no cutting planes)."""
    d = C.shape[1]
    floor_rows = ~active
    solution = linprog(
        np.append(np.zeros(d), -1.0),
        A_ub=np.column_stack([C[floor_rows], np.ones(floor_rows.sum())]), b_ub=np.zeros(floor_rows.sum()),
        A_eq=np.column_stack([C[active], np.zeros(active.sum())]), b_eq=np.log(b[active] / b.min()),
        bounds=[(None, None)] * d + [(None, cap)], method="highs")
    assert solution.status == 0
    return solution.x[-1]


# Active rows / reference margin: seed 0: 10 / 1 (the cap); 13: 22 / 0.32; 17: 23 / 0.24;
# 27: 26 / 0.11; 52: 19 / 0.19; 70: 15 / 1.
@pytest.mark.parametrize("seed", [
    0, 13, 17, 27, 52,
    70])
def test_relu_softmax_floor_margin_is_the_largest_feasible(seed):
    C, b, active = _few_active_rows(seed)
    assert 0 < active.sum() < C.shape[1]
    x0, description = starting_point(Problem(C, b, "relu_softmax"), "auto")
    u0 = C @ x0
    _check_active_rows_fitted(u0, b, active)
    margin = -np.max(u0[~active])
    assert margin > 0.0, "a floor row is wrongly active at the start"
    # HiGHS's feasibility tolerance is ~1e-7 on each LP: the cutting-plane answer may fall
    # short of the one-shot LP by about that, not more.
    assert margin >= _largest_margin(C, b, active) - 1e-6


def test_relu_softmax_start_for_uniform_b_is_zeros_and_optimal():
    C, _, _, _ = planted("relu_softmax", False, n=300, d=5, seed=4)
    b = np.full(300, 1 / 300)
    x0, description = starting_point(Problem(C, b, "relu_softmax"), "auto")
    assert np.array_equal(x0, np.zeros(5))
    assert "uniform" in description
    res = solve(C, b, "relu_softmax")
    # Uniform b is produced by every x with Cx ≤ 0, so x = 0 is a genuine optimum here.
    assert res.status == Status.CONVERGED
    assert res.loss <= 1e-30


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_relu_softmax_start_is_the_optimum_for_noise_free_b(dense):
    # n ≫ d: the active rows alone determine x*, so the least-squares fit is exact.
    C, b, x_true, _ = planted("relu_softmax", dense, seed=5)
    problem = Problem(C, b, "relu_softmax")
    x0, _ = starting_point(problem, "auto")
    assert np.linalg.norm(x0 - x_true) <= 1e-8 * np.linalg.norm(x_true)
    assert problem.loss(x0) <= 1e-20


# ---------------------------------------------------------------------------------------------
# softmax_relu
# ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_relu_start_is_finite_and_solve_converges_from_it(dense, seed):
    C, b, _, V = planted("softmax_relu", dense, seed=seed, m=8)
    problem = Problem(C, b, "softmax_relu", V=V)
    x0, description = starting_point(problem, "auto")
    assert "auto" in description
    assert np.all(np.isfinite(x0))
    res = solve(C, b, "softmax_relu", V=V, x0=x0)
    assert res.converged, res.message
    assert res.loss <= 1e-12 * problem.loss(x0)
    assert np.array_equal(solve(C, b, "softmax_relu", V=V, max_iter=1).x0, x0)


def test_softmax_relu_start_with_inactive_outputs():
    # Outputs with b_j = 0 must end with y_j ≤ 0; make two of them reachable only that way.
    C, b, _, V = planted("softmax_relu", False, seed=6, m=6)
    V, b = V.copy(), b.copy()
    V[:, :2] -= 1.0  # entries in [−1.5, 0]: y_j < 0 at every softmax
    b[:2] = 0.0
    problem = Problem(C, b, "softmax_relu", V=V)
    x0, _ = starting_point(problem, "auto")
    assert np.all(np.isfinite(x0))
    res = solve(C, b, "softmax_relu", V=V)
    assert res.converged, res.message
    assert res.loss <= 1e-12 * problem.loss(x0)


# ---------------------------------------------------------------------------------------------
# The other choices of x0
# ---------------------------------------------------------------------------------------------
def test_zeros_and_given_starts():
    C, b, _, _ = planted("softmax", False, n=200, d=5, seed=7)
    problem = Problem(C, b)
    x0, description = starting_point(problem, "zeros")
    assert np.array_equal(x0, np.zeros(5)) and description == "zeros"
    given_x = np.arange(5.0)
    x0, description = starting_point(problem, given_x)
    assert np.array_equal(x0, given_x) and description == "given"
    x0[:] = -1.0
    assert np.array_equal(given_x, np.arange(5.0))
    x0, _ = starting_point(problem, [0, 1, 2, 3, 4])
    assert x0.dtype == np.float64 and np.array_equal(x0, np.arange(5.0))


def test_unknown_start_name_is_rejected():
    C, b, _, _ = planted("softmax", False, n=200, d=5, seed=7)
    with pytest.raises(ValueError, match="x0"):
        starting_point(Problem(C, b), "random")


# ---------------------------------------------------------------------------------------------
# softmax: the sampled fit of the sketched strategies (fastnewton.start.sampled_normal_system)
# ---------------------------------------------------------------------------------------------
def _sampled_case(seed=0, n=20_000, d=64):
    """Dense noisy softmax, n ≫ s = sample_size(d + 1, 0.5) ≈ 5100 (about 3000 rows kept): the sketched
    strategies sample their start (at d = 30 the sampled fit's two passes and its draw over all rows cost
    about what the sandwich of all rows does)."""
    C, b, _, _ = planted("softmax", True, n=n, d=d, seed=seed, noise=0.1)
    return C, b


def _weighted_residual(C, b, x):
    """min over θ of Σ ωᵢ((Cx)ᵢ + θ − log bᵢ)², ω = b²/Σb² over bᵢ > 0 (θ in closed form)."""
    keep = b > 0
    w, t, u = b[keep] ** 2 / (b[keep] ** 2).sum(), np.log(b[keep]), C[keep] @ x
    theta = np.dot(w, t - u)
    return float(np.dot(w, (u + theta - t) ** 2))


def _exact_weighted_fit(C, b):
    """The fit by NumPy: lstsq of √ω·[C, 1] z = √ω·log b, ω = b²/Σb² (the softmax start's weights),
    independent of fastnewton's normal equations."""
    keep = b > 0
    w = b[keep] ** 2 / (b[keep] ** 2).sum()
    A = np.column_stack([C[keep], np.ones(keep.sum())]) * np.sqrt(w)[:, None]
    z, *_ = np.linalg.lstsq(A, np.sqrt(w) * np.log(b[keep]), rcond=None)
    return z[:-1]


def _sampled_fit(C, b, eps, seed):
    from fastnewton.models.softmax import _targets
    from fastnewton.sketching import LeverageReference, sample_size
    from fastnewton.start import FitSample, log_linear_fit

    problem = Problem(C, b)
    sample = FitSample(LeverageReference(), sample_size(C.shape[1] + 1, eps), np.random.default_rng(seed))
    return log_linear_fit(problem, _targets, problem.facts["max_b"], squared=True, sample=sample), sample


@pytest.mark.parametrize("eps", [0.5, 0.2])
def test_sampled_fit_residual_is_within_the_sketch_factor_of_numpy_lstsq(eps):
    # With M̃ an ε-spectral approximation of M = AᵀΩA (A = [C, 1]), sketch-and-solve gives a weighted
    # residual within (1 + ε)/(1 − ε) of the optimum (3 at ε = 0.5, 1.5 at ε = 0.2). Measured over 20
    # seeds on 3 cases: at most 1.011 at ε = 0.5 (1360–1807 rows kept), 1.001 at 0.2; the bound is the docstring's.
    C, b = _sampled_case()
    best = _weighted_residual(C, b, _exact_weighted_fit(C, b))
    for seed in range(5):
        x, sample = _sampled_fit(C, b, eps, seed)
        assert 0 < sample.kept < C.shape[0] // 2  # a sample, not the exact fit
        ratio = _weighted_residual(C, b, x) / best
        assert 1.0 <= ratio <= (1 + eps) / (1 - eps), (seed, ratio)


def test_exact_start_matches_numpy_lstsq():
    # The exact fit (the reference the sampled one is judged against) is the same weighted least squares.
    C, b = _sampled_case()
    x0, _ = starting_point(Problem(C, b), "auto")
    x = _exact_weighted_fit(C, b)
    assert np.linalg.norm(C @ (x0 - x)) <= 1e-8 * np.linalg.norm(C @ x)


@pytest.mark.parametrize("hessian", ["sketch", "pcg"])
def test_sketched_strategies_start_from_a_sample_and_take_no_more_iterations(hessian):
    # The start must stay as good: from the sampled fit the solve needs as many iterations as from the
    # exact fit (measured: equal on these seeds; one more allowed for the sample's luck).
    for seed in (0, 1):
        C, b = _sampled_case(seed)
        sampled = solve(C, b, hessian=hessian, seed=seed)
        assert "leverage-sampled rows" in sampled.start
        exact_start = starting_point(Problem(C, b), "auto")[0]
        from_exact = solve(C, b, x0=exact_start, hessian=hessian, seed=seed)
        assert sampled.converged and from_exact.converged
        assert sampled.n_iter <= from_exact.n_iter + 1
        assert not np.array_equal(sampled.x0, exact_start)


def test_the_default_dense_solve_reads_c_only_for_the_passes_it_needs(monkeypatch):
    """pcg from x0="auto" on dense C, counted per kernel call (each one read of C): the sampled fit's mean
    once, with ∇L(0) (no pass of its own for the stopping test's g_ref) and C's column squares (the check of
    its entries, kept for the column scale: no pass of their own) in the same pass, the reference's row factors with
    C·D⁻²μ in one read, the first evaluation's forward and gradient passes, then per iteration one read
    per CG step (C·p summed from them: no line-search pass) and the new point's gradient pass (u carried).
    g_ref has the bits of a separate ∇L(0) pass."""
    from fastnewton import matrix as matrix_module

    C, b = _sampled_case()
    calls = {}
    for name in ("dense_column_squares", "dense_column_squares_and_rmatmat", "dense_rmatmat", "dense_matvec", "dense_row_squares",
                 "dense_row_squares_and_matvec", "dense_sandwich_vector"):
        kernel = getattr(matrix_module, name)

        def counted(*args, _kernel=kernel, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _kernel(*args)
        monkeypatch.setattr(matrix_module, name, counted)
    res = solve(C, b, hessian="pcg", seed=0)
    calls = dict(calls)
    assert res.converged and "leverage-sampled rows" in res.start
    assert all(record["preconditioner"] == "start fit" for record in res.history[1:])
    cg_steps = sum(record["cg_iterations"] for record in res.history[1:])
    assert calls == {"dense_column_squares_and_rmatmat": 1, "dense_rmatmat": 1 + res.n_iter,
                     "dense_row_squares_and_matvec": 1, "dense_matvec": 1, "dense_sandwich_vector": cg_steps}
    assert res.g_ref == np.linalg.norm(Problem(C, b).gradient_at_zero())


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_the_exact_fit_of_the_start_gives_g_ref_in_its_own_transposed_pass(model, dense, monkeypatch):
    """x0="auto" with the exact fit (hessian="exact"), dense or CSR C: the fit's transposed pass Cᵀ[ω, ωt] carries
    ∇L(0)'s columns (relu_softmax: the plain softmax's, its reference), so the stopping test's g_ref needs no
    pass of its own: the transposed passes are the fit's, the first evaluation's and one per iteration. g_ref
    has the bits of a separate ∇L(0) pass, and the start and the iterates those of a solve whose fit made its pass
    alone (the fit's sums do not depend on the other columns)."""
    from fastnewton import matrix as matrix_module
    from fastnewton import problem as problem_module

    C, b, _, _ = planted(model, dense, n=3000, d=12, seed=1, noise=0.1)
    separate = solve(C, b, model, hessian="exact", seed=0)
    passes = []
    rmatmat = matrix_module.CSRMatrix.rmatmat if not dense else matrix_module.DenseMatrix.rmatmat
    monkeypatch.setattr(type(Problem(C, b, model).matrix), "rmatmat",
                        lambda self, Q: passes.append(Q.shape[1]) or rmatmat(self, Q))
    res = solve(C, b, model, hessian="exact", seed=0)
    assert res.converged and "sampled" not in res.start
    # [ω, ωt] and the reference's gradient columns in one pass (CSR: the unrolled 4-lane kernel)
    assert len(passes) == 2 + res.n_iter and passes[0] == 2 + 2
    assert res.g_ref == np.linalg.norm(Problem(C, b, model).gradient_at_zero())
    # The fit's pass alone, then ∇L(0) by its own pass: the same start, iterates and g_ref.
    monkeypatch.setattr(problem_module.Problem, "rmatmat_with_gradient_at_zero", lambda self, Q: self.matrix.rmatmat(Q))
    alone = solve(C, b, model, hessian="exact", seed=0)
    for other in (alone, separate):
        assert np.array_equal(other.x0, res.x0) and np.array_equal(other.x, res.x) and other.g_ref == res.g_ref


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_exact_strategy_keeps_the_exact_start():
    C, b = _sampled_case()
    res = solve(C, b, hessian="exact", max_iter=0)
    assert "sampled" not in res.start
    np.testing.assert_array_equal(res.x0, starting_point(Problem(C, b), "auto")[0])


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_sampled_start_is_fixed_by_the_seed():
    C, b = _sampled_case()
    first = solve(C, b, hessian="sketch", seed=7, max_iter=0)
    again = solve(C, b, hessian="sketch", seed=7, max_iter=0)
    other = solve(C, b, hessian="sketch", seed=8, max_iter=0)
    np.testing.assert_array_equal(first.x0, again.x0)
    assert not np.array_equal(first.x0, other.x0)
    # A Generator is used as is: two equal generators give equal starts.
    from_generator = solve(C, b, hessian="sketch", seed=np.random.default_rng(3), max_iter=0)
    np.testing.assert_array_equal(from_generator.x0,
                                  solve(C, b, hessian="sketch", seed=np.random.default_rng(3), max_iter=0).x0)


def test_start_stream_is_not_the_newton_loops():
    from fastnewton.hessian import start_rng

    assert start_rng(5).random() != np.random.default_rng(5).random()
    assert start_rng(5).random() == start_rng(np.random.SeedSequence(5)).random()
    generator = np.random.default_rng(0)
    assert start_rng(generator) is generator


def test_sampled_start_bits_do_not_depend_on_the_thread_count():
    # Blocked single-threaded SYRKs summed in block order, and the reference's chunked row factors:
    # the sampled rows and the start's bits are the same with 1 and 2 threads (n > 8192: several blocks).
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    C, b = _sampled_case(n=40_000)
    one = solve(C, b, hessian="sketch", seed=0, n_threads=1)
    two = solve(C, b, hessian="sketch", seed=0, n_threads=2)
    assert "leverage-sampled rows" in one.start
    np.testing.assert_array_equal(one.x0, two.x0)
    np.testing.assert_array_equal(one.x, two.x)


def test_uncentred_gram_is_the_product_with_the_uncentring_matrix():
    """``uncentred_gram(G, μ)`` (the fit's Gram of rows [cᵢ, 1, tᵢ] from that of the centred rows [cᵢ − μ, 1, tᵢ],
    in O(d²)) against P G Pᵀ with P = [[I, μ, 0], [0, 1, 0], [0, 0, 1]] formed explicitly: each entry within the
    rounding of its sum of up to four products of |entries| (the explicit product sums d + 2 of them per entry,
    most against zeros of P), exactly symmetric, and the Gram of the uncentred rows to rounding."""
    from fastnewton.start import uncentred_gram

    rng = np.random.default_rng(5)
    for d in (1, 6, 33):
        raw = rng.standard_normal((80, d)) * np.exp(rng.uniform(-3, 3, d)) + 2.0
        weights = rng.exponential(size=80)
        mean = rng.standard_normal(d) * 3.0
        centred = np.column_stack([raw - mean, np.ones(80), rng.standard_normal(80)])
        G = centred.T @ (weights[:, None] * centred)
        P = np.eye(d + 2)
        P[:d, d] = mean
        got = uncentred_gram(G, mean)
        magnitude = np.abs(P) @ np.abs(G) @ np.abs(P).T
        naive.assert_within_rounding(got, P @ G @ P.T, magnitude, 4)
        assert np.array_equal(got, got.T)
        uncentred = np.column_stack([raw, centred[:, d:]])
        direct = uncentred.T @ (weights[:, None] * uncentred)
        naive.assert_within_rounding(got, direct, np.abs(uncentred).T @ (weights[:, None] * np.abs(uncentred)), 80 + 8)


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_sampled_fit_refuses_a_sample_its_reference_does_not_certify():
    # Columns sharing one strong common component: squared row lengths of the column-scaled C are far
    # from the leverage scores, the certificate refuses them and the exact fit runs (same bits).
    rng = np.random.default_rng(0)
    n, d = 20_000, 10
    C = rng.standard_normal((n, d)) * 1e-2 + rng.standard_normal((n, 1))
    C[:20] = 10.0 * rng.standard_normal((20, d))
    b = np.exp(C @ rng.standard_normal(d) * 0.1)
    b /= b.sum()
    x, sample = _sampled_fit(C, b, 0.5, 0)
    assert sample.kept == 0
    np.testing.assert_array_equal(x, starting_point(Problem(C, b), "auto")[0])
    assert "sampled" not in solve(C, b, hessian="sketch", seed=0, max_iter=0).start


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_sampled_start_with_a_tiny_sketch_size_or_sparse_targets_stays_finite():
    # sketch_size below d + 1 cannot give a fit: the exact one runs. Targets with most entries 0 (dropped
    # rows) still sample from the others.
    C, b = _sampled_case()
    tiny = solve(C, b, hessian="sketch", sketch_size=3, seed=0, max_iter=0)
    assert "sampled" not in tiny.start and np.all(np.isfinite(tiny.x0))
    sparse_b = np.where(np.arange(b.size) % 7 == 0, b, 0.0)
    sparse_b /= sparse_b.sum()
    res = solve(C, sparse_b, hessian="sketch", seed=0)
    assert np.all(np.isfinite(res.x0)) and res.converged


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_relu_softmax_start_is_not_sampled():
    # Its null-space step needs the exact fit.
    C, b, _, _ = planted("relu_softmax", True, n=20_000, d=10, seed=0)
    res = solve(C, b, "relu_softmax", hessian="sketch", seed=0, max_iter=0)
    assert "sampled" not in res.start


@pytest.mark.parametrize("mean, spread", [(0.0, 0.0), (0.3, 5.0)], ids=["plain", "offset_and_scaled_columns"])
def test_sampled_fit_normal_equations_are_the_float64_ones_to_float32_rounding(mean, spread, monkeypatch):
    """The sampled fit's SYRK runs on centred, column-scaled rows in float32 and is uncentred in float64
    (``uncentred_gram``): its (M̃, r̃), centred on μ and whitened by the column scale, are the float64 sums over
    the same kept rows [cᵢ, 1, tᵢ] with weights ωᵢ/πᵢ within float32 rounding of the centred scaled terms,
    also on columns with offset means and scales e^±5 (the bound is relative to the centred, scaled rows)."""
    import fastnewton.start as start_module

    C, b = _sampled_case(seed=2, d=32)
    rng = np.random.default_rng(3)
    C = (C + mean * rng.standard_normal(C.shape[1])) * np.exp(spread * rng.uniform(-1, 1, C.shape[1]))
    seen = {}
    syrk = start_module.blocked_syrk_sandwich

    def captured(block_source, weights, d, **options):
        seen.update(rows=block_source(slice(0, weights.shape[0]))[1].copy(),
                    weights=weights.copy(), extra=options["extra_columns"].copy(), mean=options["shift"].copy(),
                    scale=1.0 / options["column_factors"])
        return syrk(block_source, weights, d, **options)

    monkeypatch.setattr(start_module, "blocked_syrk_sandwich", captured)
    _, sample = _sampled_fit(C, b, 0.5, seed=0)
    assert sample.kept > 0
    M = sample.normal_matrix
    d = C.shape[1]
    rows = np.column_stack([C[seen["rows"]], seen["extra"]])  # [cᵢ, 1, tᵢ]
    exact = rows.T @ (seen["weights"][:, None] * rows)
    centring = np.eye(d + 2)
    centring[:d, d] = -seen["mean"]
    whiten = np.append(1.0 / seen["scale"], [1.0, 1.0])
    centred_rows = (rows @ centring.T) * whiten
    magnitude = np.abs(centred_rows).T @ (seen["weights"][:, None] * np.abs(centred_rows))
    got = centring[:d + 1, :d + 1] @ M @ centring[:d + 1, :d + 1].T * np.outer(whiten[:d + 1], whiten[:d + 1])
    want = (centring @ exact @ centring.T * np.outer(whiten, whiten))[:d + 1, :d + 1]
    # float32 rounding of each scaled entry (2 per product) and of the sums of the two SYRK blocks, plus
    # float64 rounding of the uncentring and of the check's own centring (|μ|-sized terms, float64 eps).
    naive.assert_within_rounding(got, want, magnitude[:d + 1, :d + 1], rows.shape[0] + 4,
                                 eps=np.finfo(np.float32).eps)


@pytest.mark.parametrize("squared", [False, True])
def test_log_fit_rows_kernels_are_numpys_where_and_log(squared):
    """kernels.softmax.log_fit_rows (parallel, from LOG_FIT_PARALLEL_ROWS rows on) and log_fit_rows_serial:
    weights p or p² and target log p where p > 0, 0 and 0 elsewhere (NaN and negative p dropped, inf kept), as
    NumPy's where and log give them (to the last bit where NumPy's log is the C library's, as on CPUs without
    AVX-512; within an ulp elsewhere), and the two kernels bit for bit the same (the same log per entry)."""
    from fastnewton.kernels.softmax import log_fit_rows, log_fit_rows_serial
    rng = np.random.default_rng(0)
    p = np.exp(rng.uniform(-700, 5, size=5000))
    p[::7] = 0.0
    p[3::11] = -rng.random(p[3::11].shape)
    p[5], p[9], p[13] = np.nan, np.inf, 5e-324
    weights, target = np.empty(p.size), np.empty(p.size)
    log_fit_rows(p, squared, 128, weights, target)
    serial_weights, serial_target = np.empty(p.size), np.empty(p.size)
    log_fit_rows_serial(p, squared, serial_weights, serial_target)
    np.testing.assert_array_equal(serial_weights, weights)
    np.testing.assert_array_equal(serial_target, target)
    positive = p > 0.0
    expected_weights = np.where(positive, p, 0.0)
    expected_weights = expected_weights * expected_weights if squared else expected_weights
    np.testing.assert_array_equal(weights, expected_weights)
    np.testing.assert_allclose(target, np.log(np.where(positive, p, 1.0)), rtol=np.finfo(float).eps, atol=0.0)
