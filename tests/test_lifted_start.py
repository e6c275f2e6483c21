"""softmax_relu's automatic start (``fastnewton.lifted_start``): the simplex vector, the lifted
surrogate's derivatives, the staged solve, and the random attention-like families of bench/families.py.
"""
import importlib.util
import pathlib
import warnings

import numpy as np
import pytest
import scipy.optimize

import fastnewton
from fastnewton import Problem, solve
from fastnewton.lifted_start import (RIDGE_FRACTIONS, SIMPLEX_FLOOR, WARM_START_LOSS, WARM_START_MAX_ITER,
                                     largest_eigenvalue, output_offsets, simplex_vector, simplex_weights)
from fastnewton.models import SoftmaxRelu

import naive

REPO = pathlib.Path(__file__).resolve().parent.parent


def _families():
    spec = importlib.util.spec_from_file_location("bench_families", REPO / "bench" / "families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


families = _families()


def _bench_module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


valley = _bench_module("valley")


def _dead_prone(seed=0, n=60, d=5, m=4):
    """A small problem whose column 0 of V is negative everywhere while b_0 > 0 (dead in the real model)."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((n, d))
    V = rng.uniform(-1.0, 1.0, (n, m))
    V[:, 0] = -np.abs(V[:, 0]) - 0.1
    b = rng.uniform(0.1, 0.5, m)
    return C, b, V


def _lifted(problem, offsets, ridge):
    """The evaluator of the lifted surrogate, as ``fastnewton.lifted_start.lifted_solve`` builds it."""
    return problem.with_model(SoftmaxRelu(problem.b, offsets), problem.l2 + ridge)


# -- the lifted surrogate ------------------------------------------------------------------------------
def test_zero_offset_surrogate_is_the_real_problem():
    C, b, V = _dead_prone()
    problem = Problem(C, b, "softmax_relu", V=V, l2=0.3)
    surrogate = _lifted(problem, np.zeros(V.shape[1]), 0.0)
    x = np.random.default_rng(1).standard_normal(C.shape[1])
    assert surrogate.loss(x) == problem.loss(x)
    assert np.array_equal(surrogate.grad(x), problem.grad(x))
    assert np.array_equal(surrogate.hessian(x), problem.hessian(x))


def test_surrogate_loss_replaces_the_relu_of_active_outputs_by_the_identity():
    C, b, V = _dead_prone()
    b[1] = 0.0  # an inactive output keeps its ReLU
    problem = Problem(C, b, "softmax_relu", V=V)
    offsets = output_offsets(problem, b)
    assert offsets[1] == 0.0 and np.all(offsets[b > 0] > -V[:, b > 0].min(axis=0))
    ridge = 0.25
    surrogate = _lifted(problem, offsets, ridge)
    rng = np.random.default_rng(2)
    for _ in range(5):
        x = rng.standard_normal(C.shape[1]) * 2
        y = V.T @ naive.softmax(C @ x)
        assert y[0] < 0.0  # dead in the real model, alive in the surrogate
        expected = 0.5 * np.sum(np.where(b > 0, y - b, np.maximum(y, 0.0)) ** 2) + 0.5 * ridge * x @ x
        assert surrogate.loss(x) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_surrogate_derivatives_match_central_differences(weighted):
    C, b, V = _dead_prone(seed=3)
    row_weights = np.random.default_rng(4).uniform(0, 0.1, C.shape[0]) if weighted else None
    problem = Problem(C, b, "softmax_relu", V=V, l2=1e-3, row_weights=row_weights)
    surrogate = _lifted(problem, output_offsets(problem, b), 0.05)
    x = np.random.default_rng(5).standard_normal(C.shape[1])
    d = x.size
    h = 1e-5
    fd_grad = np.array([(surrogate.loss(x + h * e) - surrogate.loss(x - h * e)) / (2 * h) for e in np.eye(d)])
    fd_hess = np.array([(surrogate.grad(x + h * e) - surrogate.grad(x - h * e)) / (2 * h) for e in np.eye(d)])
    grad, hess = surrogate.grad(x), surrogate.hessian(x)
    # Central differences: O(h²) truncation (~1e-10 here) plus rounding eps·|L|/h ~ 1e-11.
    np.testing.assert_allclose(grad, fd_grad, rtol=0, atol=1e-7 * np.abs(grad).max())
    np.testing.assert_allclose(hess, fd_hess, rtol=0, atol=1e-7 * np.abs(hess).max())
    p = np.random.default_rng(6).standard_normal(d)
    np.testing.assert_allclose(surrogate.hessp(x, p), hess @ p, rtol=1e-10, atol=1e-14)
    # The real model's output 0 is dead here: its derivative vanishes, the surrogate's does not.
    assert not np.allclose(grad - 0.05 * x, problem.grad(x) - 1e-3 * x)


# -- stage 1: the simplex vector ------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(6))
def test_simplex_vector_meets_its_constraints_on_reachable_targets(index):
    case = families.make_case("softmax_relu", 7, index, n_range=(50, 600), d_range=(8, 24), sparse=False)
    problem = Problem(case.C, case.b, "softmax_relu", V=case.V)
    active_outputs, lam, total, _ = simplex_vector(problem, case.b)
    s = simplex_weights(problem.block, (problem.n, active_outputs, lam, total))
    assert s.min() >= SIMPLEX_FLOOR / problem.n * (1 - 1e-12) / total
    assert s.sum() == pytest.approx(1.0, rel=1e-12)
    y = case.V.T @ s
    positive = case.b > 0
    scale = np.abs(case.V).max()
    # b is reachable (b = ReLU(Vᵀ softmax(C x_true))), so the penalised problem's constraints
    # hold to its ε (1e-12 of AᵀA's diagonal) times |λ|: far below 1e-8 of V's scale.
    np.testing.assert_allclose(y[positive], case.b[positive], rtol=0, atol=1e-8 * scale)
    assert np.all(y[~positive] <= 1e-8 * scale)


def test_a_dual_trial_reads_the_figures_of_the_full_partials_and_the_kept_matrix_is_dropped():
    # The line search's trials form Aᵀs and ‖s − 1/n‖² only, with the bits of the full partials (the
    # accepted point's, which add AᵀDA and Vᵀs); A = [V_E, 1] is kept on the block while the dual runs, then
    # dropped (its n × (|E| + 1) copy of V's columns would otherwise outlive the start).
    from fastnewton.lifted_start import simplex_objective_partials, simplex_partials

    case = families.make_case("softmax_relu", 0, 204, noise=0.05, n_range=(300, 900), d_range=(16, 40))
    problem = Problem(case.C, case.b, "softmax_relu", V=case.V)
    E = np.flatnonzero(case.b > 0)
    lam = np.random.default_rng(3).standard_normal(E.size + 1) * 1e-3
    full = simplex_partials(problem.block, problem.n, E, lam)
    trial = simplex_objective_partials(problem.block, problem.n, E, lam)
    assert set(trial) == {"Ats", "distance"}
    assert np.array_equal(trial["Ats"], full["Ats"]) and trial["distance"] == full["distance"]
    assert problem.block.simplex_matrix is not None  # kept between the dual's calls
    simplex_vector(problem, case.b)
    assert problem.block.simplex_matrix is None


def _planted(*args, **kwargs):
    """(C, b, V) of a planted softmax_relu problem."""
    planted = fastnewton.make_problem(*args, **kwargs)
    return planted.C, planted.b, planted.V


# -- the staged solve --------------------------------------------------------------------------------------
def test_history_marks_every_phase_and_counts_every_iteration():
    C, b, V = _planted(2000, 12, model="softmax_relu", m=6, seed=4)
    seen = []
    res = solve(C, b, "softmax_relu", V=V, callback=lambda info: seen.append((info["iter"], info["phase"])))
    assert res.converged, res.message
    assert len(res.history) == res.n_iter + 1
    assert [record["iter"] for record in res.history] == list(range(res.n_iter + 1))
    phases = [record["phase"] for record in res.history]
    # The real stage often needs no iteration: the surrogate's minimiser is the real one here.
    assert phases[0].startswith("surrogate") and phases[-1] in ("surrogate", "real")
    assert set(phases) <= {f"surrogate l2+{fraction:g}·λmax" for fraction in RIDGE_FRACTIONS} | {"surrogate", "real"}
    assert [record["phase"] for record in res.history[1:]] == [phase for _, phase in seen]
    assert [i for i, _ in seen] == list(range(1, res.n_iter + 1))
    assert "lifted surrogate" in res.start
    times = [record["time"] for record in res.history]
    assert times == sorted(times)


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_max_iter_bounds_all_phases_together():
    C, b, V = _planted(2000, 12, model="softmax_relu", m=6, seed=4)
    for max_iter in (0, 1, 5):
        for x0 in ("auto", "zeros"):
            res = solve(C, b, "softmax_relu", V=V, max_iter=max_iter, x0=x0)
            assert res.n_iter <= max_iter
    assert np.array_equal(solve(C, b, "softmax_relu", V=V, max_iter=0).x0,
                          solve(C, b, "softmax_relu", V=V, max_iter=3).x0)


def test_dead_output_problem_is_solved_from_the_auto_start_and_from_zeros():
    # Found by bench/families.py: from zeros plain Newton kills an output (b_j > 0, y_j ≤ 0) and stops
    # at a dead stationary point; the lifted surrogate cannot kill it, from the auto start or from zeros.
    # (Case 6, used before, now converges from zeros too, since the damping's doubling raise; case 10
    # dies with either rule.)
    case = families.make_case("softmax_relu", 0, 10)  # n = 496, d = 14, m = 15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = solve(case.C, case.b, "softmax_relu", V=case.V, x0="zeros", continuation=False)
    assert plain.status == fastnewton.Status.DEAD_STATIONARY
    assert "phase" not in plain.history[-1]  # one Newton loop, no stages
    for x0 in ("auto", "zeros"):
        res = solve(case.C, case.b, "softmax_relu", V=case.V, x0=x0)
        assert res.converged, (x0, res.message)
        assert families.relative_residual(case, res.x) <= 1e-6


# -- the families -------------------------------------------------------------------------------------------
def _solved_fraction(model, count, seed, **kwargs):
    solved = 0
    for case in families.family(model, count, seed, n_range=(50, 400), d_range=(8, 24), **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = solve(case.C, case.b, model, V=case.V)
        solved += families.relative_residual(case, res.x) <= 1e-6
    return solved / count


def test_small_softmax_relu_family_is_solved():
    # bench/families_solve.py measures 98 % on the full family; 24 small problems: at least 22.
    assert _solved_fraction("softmax_relu", 24, seed=11) >= 22 / 24


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_small_softmax_families_are_solved(model):
    assert _solved_fraction(model, 8, seed=12) == 1.0


def test_noisy_targets_reach_the_best_loss_found():
    # b perturbed by 5 % noise: the default solve is compared with plain Newton (continuation=False)
    # from x0="zeros" and three random starts. The continuation's misfit tells that these b are not
    # reachable, so the real loss runs from the surrogate's end and from zeros, and the lower loss is
    # kept: measured, it reaches the best loss on 7 of the 8 (it fell short on 3 when the surrogate stages spent the budget first).
    # On softmax_relu-13-4 one random start (since the damping's doubling raise) ends at another,
    # lower stationary point (L = 0.015349, an output dead) than every other start and the default
    # (0.016344, the same as before that change): non-convex luck, so one shortfall within 10 % is allowed.
    worse = []
    cases = list(families.family("softmax_relu", 8, seed=13, noisy_fraction=1.0, n_range=(50, 400),
                                 d_range=(8, 24)))
    for case in cases:
        problem = Problem(case.C, case.b, "softmax_relu", V=case.V)
        rng = np.random.default_rng(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = solve(case.C, case.b, "softmax_relu", V=case.V)
            others = [solve(case.C, case.b, "softmax_relu", V=case.V, x0=x0, continuation=False).loss
                      for x0 in ["zeros"] + [rng.standard_normal(case.x_true.size) / 3 for _ in range(3)]]
        best = min(others)
        if problem.loss(res.x) > best * (1 + 1e-6) + 1e-12 * float(case.b @ case.b):
            worse.append((case.name, res.loss, best))
    assert len(worse) <= 1 and all(loss <= 1.1 * best for _, loss, best in worse), worse


# -- from a caller's start (x0="zeros" or an array) ---------------------------------------------------------
def _peers_problem(n=5000, seed=0):
    """bench/peers.py's softmax_relu problem at a small n (CSR, d = 100, 10 per row, m = 16, 1 % noise), with its
    ridge 1e-3 of the curvature scale: (C, b, V, l2)."""
    planted = fastnewton.make_problem(n, 100, nnz_per_row=10, model="softmax_relu", noise=1e-2, seed=seed)
    C = planted.C
    return C, planted.b, planted.V, 1e-3 * float(C.multiply(C).sum()) / (100 * float(n) ** 2)


def test_from_zeros_the_staged_solve_reaches_the_auto_starts_loss_where_plain_newton_stalls():
    C, b, V, l2 = _peers_problem()
    auto = solve(C, b, "softmax_relu", V=V, l2=l2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        plain = solve(C, b, "softmax_relu", V=V, l2=l2, x0="zeros", continuation=False)
    res = solve(C, b, "softmax_relu", V=V, l2=l2, x0="zeros")
    assert auto.converged and res.converged, (auto.message, res.message)
    assert res.n_iter <= 100 and np.array_equal(res.x0, np.zeros(100))
    # Plain Newton from zeros follows the ReLU valley to another stationary point, 6.6 % above (measured;
    # scipy trust-exact from zeros ends there too); the staged solve reaches the auto start's minimiser.
    assert plain.loss >= 1.05 * auto.loss
    # Both stop at ‖∇L‖ ≤ 1e-8·g_ref near the same minimiser: measured 6e-11 apart, relative.
    assert res.loss == pytest.approx(auto.loss, rel=1e-8)
    # Independently, with NumPy on C as given: a stationary point of the real loss (the 1e-7 leaves the two
    # gradient codes' rounding room over tol = 1e-8) whose Hessian, by central differences of that gradient,
    # is positive semidefinite, i.e. a local minimiser; its loss is the solve's. Measured: eigenvalues 4.4e-9 …
    # 1.5e-2, the smallest 1.3e-12 from the analytic Hessian's, entries within 4e-9 of the largest, so
    # −1e-8 of the largest bounds the differences' error.
    g_ref = np.linalg.norm(_numpy_gradient(C, b, V, l2, np.zeros(100)))
    assert np.linalg.norm(_numpy_gradient(C, b, V, l2, res.x)) <= 1e-7 * g_ref
    step = 1e-5 * max(1.0, np.linalg.norm(res.x))
    columns = [(_numpy_gradient(C, b, V, l2, res.x + step * e) - _numpy_gradient(C, b, V, l2, res.x - step * e))
               / (2 * step) for e in np.eye(100)]
    hessian = np.array(columns)
    eigenvalues = np.linalg.eigvalsh(0.5 * (hessian + hessian.T))
    assert eigenvalues[0] >= -1e-8 * eigenvalues[-1]
    u = C @ res.x
    s = np.exp(u - u.max()) / np.exp(u - u.max()).sum()
    r = np.maximum(V.T @ s, 0.0) - b
    assert 0.5 * r @ r + 0.5 * l2 * res.x @ res.x == pytest.approx(res.loss, rel=1e-10)


def _numpy_gradient(C, b, V, l2, x):
    """∇L = Cᵀ Jᵀ r + λx with J = diag(a) Vᵀ (diag(s) − s sᵀ) the Jacobian of ReLU(Vᵀ softmax(u)): Jᵀr = s ⊙ ρ − (sᵀρ) s,
    ρ = V (a ⊙ r)."""
    u = C @ x
    s = np.exp(u - u.max()) / np.exp(u - u.max()).sum()
    y = V.T @ s
    rho = V @ ((y > 0) * (np.maximum(y, 0.0) - b))
    return C.T @ (s * rho - (s @ rho) * s) + l2 * x


def test_from_a_random_start_the_iterations_start_there_and_reach_the_auto_starts_loss():
    C, b, V, l2 = _peers_problem()
    x0 = 0.1 * np.random.default_rng(0).standard_normal(100) / 10.0
    given = x0.copy()
    seen = []
    res = solve(C, b, "softmax_relu", V=V, l2=l2, x0=x0, callback=lambda info: seen.append(info["phase"]))
    assert np.array_equal(x0, given)  # not modified
    assert np.array_equal(res.x0, x0) and res.start.startswith("given; Newton on the lifted surrogate")
    assert res.converged, res.message
    assert res.loss == pytest.approx(solve(C, b, "softmax_relu", V=V, l2=l2).loss, rel=1e-8)
    # The ridge path, then the surrogate at l2 and the real loss: every phase named, all within max_iter.
    assert seen[0] == f"surrogate l2+{RIDGE_FRACTIONS[0]:g}·λmax" and len(seen) == res.n_iter <= 100
    # The phase's loss at iteration 0 is the first ridge stage's, from x0 (the lifted outputs and the ridge).
    lifted = SoftmaxRelu(b, output_offsets(Problem(C, b, "softmax_relu", V=V), b))
    first = Problem(C, b, "softmax_relu", V=V, l2=l2).with_model(lifted, l2 + RIDGE_FRACTIONS[0] * largest_eigenvalue(
        Problem(C, b, "softmax_relu", V=V, l2=l2).with_model(lifted, l2), x0))
    assert res.history[0]["loss"] == pytest.approx(first.evaluate(x0).loss, rel=1e-12)


def test_a_warm_start_gets_newton_on_the_real_loss_first():
    # The minimiser moved by 0.1 in the logits (a re-solve after a small change): its loss is ≤ WARM_START_LOSS
    # of the loss at 0, so Newton on the real loss runs first and converges in a few iterations (4 measured,
    # against 20–48 through the continuation, whose ridge pulls toward 0): the same iterates as plain Newton.
    C, b, V, l2 = _peers_problem()
    minimiser = solve(C, b, "softmax_relu", V=V, l2=l2).x
    direction = np.random.default_rng(1).standard_normal(100)
    x0 = minimiser + 0.1 * direction / np.max(np.abs(C @ direction))
    problem = Problem(C, b, "softmax_relu", V=V, l2=l2)
    assert problem.loss(x0) <= WARM_START_LOSS * problem.loss(np.zeros(100))
    res = solve(C, b, "softmax_relu", V=V, l2=l2, x0=x0)
    plain = solve(C, b, "softmax_relu", V=V, l2=l2, x0=x0, continuation=False)
    assert res.converged and res.n_iter <= WARM_START_MAX_ITER, res.message
    assert {record["phase"] for record in res.history[1:]} == {"real from x0"}
    assert np.array_equal(res.x, plain.x) and res.n_iter == plain.n_iter
    assert res.loss == pytest.approx(problem.loss(minimiser), rel=1e-8)
    assert res.start == "given; Newton on the real loss from this warm start"


def test_a_warm_start_where_newton_kills_an_output_runs_the_continuation_from_it():
    # Family problem 10: from 0.8 × its minimiser (loss 0.10 of the loss at 0: a warm start) Newton on the real
    # loss kills an output within 8 iterations; the continuation then runs from x0 (not from that dead end),
    # with the iterations left, and solves it.
    case = families.make_case("softmax_relu", 0, 10)
    minimiser = solve(case.C, case.b, "softmax_relu", V=case.V).x
    problem = Problem(case.C, case.b, "softmax_relu", V=case.V)
    x0 = 0.8 * minimiser
    assert problem.loss(x0) <= WARM_START_LOSS * problem.loss(np.zeros_like(x0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = solve(case.C, case.b, "softmax_relu", V=case.V, x0=x0, continuation=False)
    assert plain.status == fastnewton.Status.DEAD_STATIONARY and plain.n_iter < WARM_START_MAX_ITER
    res = solve(case.C, case.b, "softmax_relu", V=case.V, x0=x0)
    assert res.converged and families.relative_residual(case, res.x) <= 1e-6, res.message
    probe = res.history[1:plain.n_iter + 1]
    assert [record["phase"] for record in probe] == ["real from x0"] * plain.n_iter
    assert [record["loss"] for record in probe] == [record["loss"] for record in plain.history[1:]]
    first = res.history[plain.n_iter + 1]
    assert first["phase"] == f"surrogate l2+{RIDGE_FRACTIONS[0]:g}·λmax"
    assert res.n_iter <= 100


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_continuation_false_is_one_newton_loop_from_the_start():
    C, b, V = _planted(2000, 12, model="softmax_relu", m=6, seed=4)
    auto = solve(C, b, "softmax_relu", V=V, continuation=False)
    given = solve(C, b, "softmax_relu", V=V, x0=auto.x0, continuation=False)
    # x0="auto": the simplex start, then the real loss alone (no phases), as from that start given.
    assert auto.start.startswith("auto: simplex vector") and "surrogate" not in auto.start
    assert all("phase" not in record for record in auto.history)
    assert np.array_equal(auto.x, given.x) and auto.n_iter == given.n_iter
    assert np.array_equal(auto.x0, solve(C, b, "softmax_relu", V=V, max_iter=0).x0)
    with pytest.raises(TypeError, match="continuation must be True or False"):
        solve(C, b, "softmax_relu", V=V, continuation="no")
    with pytest.raises(TypeError, match="continuation"):
        solve(C, b, "softmax_relu", V=V, continuation=None)


def test_staged_solve_from_zeros_is_deterministic_across_runs_and_threads():
    C, b, V, l2 = _peers_problem(n=3000)
    runs = [solve(C, b, "softmax_relu", V=V, l2=l2, x0="zeros", n_threads=threads) for threads in (1, 2, 2)]
    assert all(np.array_equal(run.x, runs[0].x) and run.n_iter == runs[0].n_iter for run in runs[1:])


def test_softmax_ignores_continuation():
    planted = fastnewton.make_problem(500, 8, nnz_per_row=3, noise=1e-2, seed=1)
    on = solve(planted.C, planted.b, x0="zeros", continuation=True)
    off = solve(planted.C, planted.b, x0="zeros", continuation=False)
    assert np.array_equal(on.x, off.x) and on.start == off.start == "zeros"


def test_unreachable_target_runs_the_real_loss_from_the_surrogate_end_and_from_zeros():
    """A noisy b: the continuation leaves a misfit above REACHABLE_MISFIT, so no surrogate at l2 and
    both real-loss phases run within max_iter; the result is the lower of the two."""
    case = next(iter(families.family("softmax_relu", 1, seed=13, noisy_fraction=1.0, n_range=(50, 400),
                                     d_range=(8, 24))))
    seen = {}

    def callback(info):
        seen[info["phase"]] = (info["loss"], info["iter"])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = solve(case.C, case.b, "softmax_relu", V=case.V, callback=callback)
    phases = list(dict.fromkeys(record["phase"] for record in res.history[1:]))
    assert phases[-2:] == ["real", "real from zeros"], phases
    assert "surrogate" not in phases and res.n_iter <= 100
    assert "not reachable" in res.start
    assert res.loss == min(seen["real"][0], seen["real from zeros"][0])


# -- the branch probe of the ridge continuation (l2 > 0) ------------------------------------------------------
# bench/valley.py's Gaussian-V problem at n = 5000, seed 9: at the end of the 3e-2·λmax stage one inactive output
# (b_j = 0) has just reached its kink; the stage's loss has another, lower minimiser with that output well inside
# y_j < 0, which the probe finds (measured: stage losses 6.785e-5 and 6.413e-5; the final loss 6.80e-9 without the
# probe, 6.37e-9 with it, 35 iterations against 32). Seed 6 is a probe that finds no lower branch.
BRANCH_CASE = dict(n=5000, kind="gaussian", seed=9)
NO_BRANCH_CASE = dict(n=5000, kind="gaussian", seed=6)


def _valley_solve(n, kind, seed, l2=1e-8):
    """(solve's result, the last x of each phase, the problem's C, b, V) on a small copy of bench/valley.py."""
    C, b, V = valley.valley_problem(n, 100, 10, 16, seed, kind)
    last = {}
    res = solve(C, b, "softmax_relu", V=V, l2=l2, callback=lambda info: last.__setitem__(info["phase"], info["x"]))
    return res, last, (C, b, V)


def _trust_exact(evaluator, x):
    """scipy's trust-exact on ``evaluator``'s loss from x, with its derivatives."""
    return scipy.optimize.minimize(evaluator.loss, x, jac=evaluator.grad, hess=evaluator.hessian,
                                   method="trust-exact", options=dict(gtol=1e-12))


def test_kinks_moved_model_is_the_one_sided_term_shifted_by_the_margin():
    C, b, V = _dead_prone(seed=6)
    b[[1, 2]] = 0.0
    problem = Problem(C, b, "softmax_relu", V=V)
    model = SoftmaxRelu(b, output_offsets(problem, b))
    assert model.one_sided_indices().tolist() == [1, 2]
    margin = 0.05
    moved = problem.with_model(model.with_kinks_moved([2], margin), 0.0)
    assert moved.row_model.one_sided_indices().tolist() == [1]  # the moved term is no longer ½ max(y, 0)²
    rng = np.random.default_rng(7)
    for _ in range(5):
        x = rng.standard_normal(C.shape[1]) * 2
        y = V.T @ naive.softmax(C @ x)
        terms = np.where(b > 0, y - b, np.maximum(y, 0.0))
        terms[2] = max(y[2] + margin, 0.0)
        assert moved.loss(x) == pytest.approx(0.5 * np.sum(terms ** 2), rel=1e-12)


def test_branch_probe_continues_from_the_lower_minimiser_of_the_stage():
    res, last, (C, b, V) = _valley_solve(**BRANCH_CASE)
    probe_phase = "branch probe l2+0.03·λmax"
    phases = [record["phase"] for record in res.history[1:]]
    assert probe_phase in phases and sum(p.startswith("branch probe") for p in phases) == phases.count(probe_phase)
    assert res.converged and len(res.history) == res.n_iter + 1
    stage_end, probe_end = last["surrogate l2+0.03·λmax"], last[probe_phase]
    # The stage's own loss, rebuilt independently of the solve: its ridge from the same power iteration at x₀.
    problem = Problem(C, b, "softmax_relu", V=V, l2=1e-8)
    model = SoftmaxRelu(b, output_offsets(problem, b))
    lam_max = largest_eigenvalue(problem.with_model(model, 1e-8), res.x0)
    stage = problem.with_model(model, 1e-8 + 0.03 * lam_max)
    # scipy from each point: both are (near) minimisers of the stage (scipy moves them by ≤ 1e-3 while they are
    # ~1 apart: two branches), and the probe's is the lower. Measured moves 4e-6 and 9e-5.
    from_stage, from_probe = _trust_exact(stage, stage_end), _trust_exact(stage, probe_end)
    assert np.linalg.norm(from_stage.x - stage_end) <= 1e-3 and np.linalg.norm(from_probe.x - probe_end) <= 1e-3
    assert np.linalg.norm(stage_end - probe_end) >= 0.1
    assert from_probe.fun < from_stage.fun * (1 - 1e-3)
    # The continuation from the lower branch ends lower on the real loss than the one without a probe, and scipy
    # from each end confirms both are minimisers: it lowers neither by more than a point with gradient g that near a
    # minimiser can be above it, ‖g‖²/(2·l2) (at a minimiser the loss's own curvature is ⪰ 0, so the ridge l2 bounds
    # the Hessian below), plus rounding (1e-12 relative). Measured: 1e-17 below, the bound 6e-17 (‖g‖ = 1.1e-12);
    # a fixed 1e-9 relative failed there by 1.6e-9 when auto's rates moved the path within tol.
    import fastnewton.lifted_start as lifted_start
    try:
        lifted_start.BRANCH_PROBE_MAX_ITER, kept = 0, lifted_start.BRANCH_PROBE_MAX_ITER
        without = solve(C, b, "softmax_relu", V=V, l2=1e-8)
    finally:
        lifted_start.BRANCH_PROBE_MAX_ITER = kept
    assert without.converged and not any(r["phase"].startswith("branch") for r in without.history[1:])
    for end in (res, without):
        assert _trust_exact(problem, end.x).fun >= end.loss * (1 - 1e-12) - end.grad_norm**2 / (2 * 1e-8)
    assert res.loss < without.loss * (1 - 1e-2)


def test_branch_probe_without_a_lower_branch_changes_only_the_count(monkeypatch):
    res, last, _ = _valley_solve(**NO_BRANCH_CASE)
    import fastnewton.lifted_start as lifted_start
    monkeypatch.setattr(lifted_start, "BRANCH_PROBE_MAX_ITER", 0)
    without, _, _ = _valley_solve(**NO_BRANCH_CASE)
    probed = sum(record["phase"].startswith("branch probe") for record in res.history[1:])
    assert probed > 0 and res.n_iter == without.n_iter + probed
    assert np.array_equal(res.x, without.x)


def test_no_branch_probe_without_l2():
    """With l2 = 0 every point of the valley floor is a minimiser: which branch the path follows does not matter."""
    res, _, _ = _valley_solve(**BRANCH_CASE, l2=0.0)
    assert res.converged and not any(record["phase"].startswith("branch") for record in res.history[1:])


# Small copies of bench/valley.py's underdetermined problems (d = 100, 10 nnz/row, m = 16 outputs, l2 = 1e-8: the
# optimum is held only by l2), each with a long ridge-continuation walk: n = 20000 planted seed 10 walks a
# distance of 1.0 along the curved valley floor at 3e-3·λmax (25 of its 46 iterations: the branch of stage
# minimisers it followed ends there, and another branch, lower from 1e-1·λmax on, holds the optimum), n = 5000
# planted seed 37 and Gaussian-V seed 6 take 50 and 40. The bound guards convergence along that path (no dead
# output, no stop at a kink, no walk to max_iter); it is not the target of ≤ 40 iterations, which these miss
# (the stage lists (1e-2, 1e-4) and (1e-1, …, 1e-4) take 35, 43, 34 and 35, 40, 27 here, but up to 100 on the
# n = 10⁵ problems of bench/valley.py). With the branch probe they take 46, 50 and 46: the planted ones have no
# inactive output (their two branches are not a kink's, so no probe runs), and Gaussian-V seed 6's probe finds no
# lower branch (6 more iterations, same x: test_branch_probe_without_a_lower_branch_changes_only_the_count).
# The largest, 50, plus 10% for rounding-level changes of the path, is the bound.
VALLEY_MAX_ITER = 55


@pytest.mark.parametrize("n, kind, seed", [(20000, "planted", 10), (5000, "planted", 37), (5000, "gaussian", 6)])
def test_valley_problems_converge_along_the_ridge_path(n, kind, seed):
    C, b, V = valley.valley_problem(n, 100, 10, 16, seed, kind)
    res = solve(C, b, "softmax_relu", V=V, l2=1e-8)
    residual = np.linalg.norm(fastnewton.predict(C, res.x, "softmax_relu", V) - b) / np.linalg.norm(b)
    # l2 = 1e-8 moves the optimum off the exact fit: measured residuals 4e-7 to 2e-6.
    assert res.status == fastnewton.Status.CONVERGED and residual <= 1e-5, (res.status, residual)
    assert res.n_iter <= VALLEY_MAX_ITER, res.n_iter


def test_thread_count_does_not_change_the_bits(run_with_threads):
    C, b, V = _planted(3000, 12, model="softmax_relu", m=6, seed=8, dense=True)
    one = run_with_threads(1, lambda: solve(C, b, "softmax_relu", V=V, n_threads=1))
    two = run_with_threads(2, lambda: solve(C, b, "softmax_relu", V=V, n_threads=2))
    assert np.array_equal(one.x, two.x) and one.n_iter == two.n_iter


def test_one_max_iter_warning_for_all_stages_at_the_callers_line():
    C, b, V = _planted(2000, 12, model="softmax_relu", m=6, seed=4)
    with pytest.warns(fastnewton.ConvergenceWarning, match="max_iter") as record:
        res = solve(C, b, "softmax_relu", V=V, max_iter=2)
    assert res.status == fastnewton.Status.MAX_ITER and res.n_iter == 2
    assert len(record) == 1
    # However deep the stages run, the warning points at the caller of solve.
    assert record[0].filename == __file__


@pytest.mark.parametrize("max_iter", [0, 100])
def test_non_finite_start_ends_every_stage_cleanly(max_iter):
    """A target that overflows the loss at the start (found by the hypothesis error-path test): the
    staged solve reports NON_FINITE with the reason, whatever the budget, and never crashes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = solve(np.array([[1.2573e-4]]), np.array([1e300]), "softmax_relu", V=np.array([[-0.4752]]),
                    row_weights=np.array([0.9128]), max_iter=max_iter)
    assert res.status == fastnewton.Status.NON_FINITE and not res.converged
    assert "too large for float64" in res.message
