"""Every stop ends by itself and says why; a non-finite point is never "converged".

Covers: non-finite loss/gradient/g_ref (overflow from the scale of C, l2, row_weights), the
stagnation window at the rounding floor (unreachable tol), the ReLU-kink stop of relu_softmax /
softmax_relu (and that a real slow phase is not cut short), the callback's return values, and
column scaling (the solution of a problem with columns scaled 1e-12..1e12 is the unscaled one's).
"""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import fastnewton
from fastnewton import Status, make_problem, solve
from fastnewton.newton import STALL_WINDOW

C, B, X_TRUE = make_problem(2000, 8, nnz_per_row=4, seed=0)


def _quiet_solve(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        return solve(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Non-finite values are their own status, with the reason
# ---------------------------------------------------------------------------------------------
OVERFLOW_CASES = {
    "C*1e160-zeros": lambda: dict(C=C * 1e160, x0="zeros"),
    "C*1e160-auto": lambda: dict(C=C * 1e160),
    "dense-C*1e200": lambda: dict(C=C.toarray() * 1e200, x0="zeros"),
    "l2=1e300": lambda: dict(l2=1e300),
    "row_weights=1e300": lambda: dict(row_weights=1e300),
    "row_weights=1e300-relu": lambda: dict(row_weights=1e300, model="relu_softmax"),
}


@pytest.mark.parametrize("hessian", ["exact", "pcg"])
@pytest.mark.parametrize("case", sorted(OVERFLOW_CASES))
def test_overflow_is_never_converged_and_says_why(case, hessian):
    kwargs = dict(C=C, b=B, hessian=hessian, seed=0)
    kwargs.update(OVERFLOW_CASES[case]())
    with warnings.catch_warnings():
        # The status and message say it; NumPy's overflow warnings (also from the dense sandwich's
        # worker threads) would only repeat it.
        warnings.simplefilter("error", RuntimeWarning)
        res = _quiet_solve(kwargs.pop("C"), kwargs.pop("b"), **kwargs)
    if res.converged:  # allowed only where the criterion really holds at a finite point
        assert np.isfinite(res.grad_norm) and np.isfinite(res.g_ref) and np.isfinite(res.loss)
        assert res.grad_norm <= 1e-8 * res.g_ref
        return
    assert res.status == Status.NON_FINITE, res.message
    assert "float64" in res.message and ("scale" in res.message)
    assert np.all(np.isfinite(res.x))


@pytest.mark.parametrize("case", ["C*1e160-auto", "dense-C*1e200", "l2=1e300"])
def test_overflow_in_solve_many_is_a_status_without_numpy_warnings(case):
    kwargs = OVERFLOW_CASES[case]()
    matrix = kwargs.pop("C", C)
    targets = np.column_stack([B, B])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)
        shared = fastnewton.solve_many(matrix, targets, **kwargs)
        listed = fastnewton.solve_many([(matrix, B), (matrix, B)], **kwargs)
    for batch in (shared, listed):
        assert not batch.converged.any() and np.all(batch.status == Status.NON_FINITE), batch.message


def test_non_finite_grad_norm_is_never_dead_stationary():
    """row_weights=1e300 once said DEAD_STATIONARY ("the gradient vanished") with grad_norm = inf."""
    res = _quiet_solve(C, B, row_weights=1e300)
    assert res.status not in (Status.DEAD_STATIONARY, Status.CONVERGED) or np.isfinite(res.grad_norm)
    if not np.isfinite(res.grad_norm):
        assert res.status == Status.NON_FINITE


def test_dead_stationary_message_quotes_the_loss_with_its_ridge():
    """The dead-stationary check compares L(x) (with ½λ‖x‖²) with L(0) and quotes that same L(x)."""
    problem = fastnewton.Problem(C, B, l2=0.5)
    x = np.full(C.shape[1], 40.0)  # saturated softmax: a vanishing gradient far from the optimum
    ev = problem.evaluate(x)
    sentence = problem.diagnose(ev)
    assert sentence is not None and f"{ev.loss:.6e}" in sentence


# ---------------------------------------------------------------------------------------------
# Stagnation at the rounding floor (one mechanism; the kink message for the ReLU models)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg"])
@pytest.mark.parametrize("x0", ["zeros", "auto"])
def test_unreachable_tol_stops_as_stalled(hessian, x0):
    """tol = 1e-20 is below the rounding floor (a zero-residual problem's gradient at the optimum is
    ~1e-16 of g_ref: with u carried from the line search one run even met 1e-16): the solve must
    end by itself as STALLED, near the optimum."""
    res = _quiet_solve(C, B, tol=1e-20, x0=x0, hessian=hessian, max_iter=500, seed=0)
    assert res.status == Status.STALLED, res.message
    assert res.n_iter < 200
    assert "rounding" in res.message
    reference = solve(C, B, tol=1e-8, hessian="exact")
    assert res.loss <= reference.loss + 1e-12 * abs(reference.loss)
    assert res.rel_grad_norm < 1e-7


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_reachable_tol_is_not_cut_short(model):
    """The window never fires during Newton's own convergence: tight but reachable tolerances converge."""
    Cm, bm, _ = make_problem(3000, 10, nnz_per_row=5, model=model, noise=0.05, seed=4)
    for hessian in ("exact", "sketch", "pcg"):
        res = _quiet_solve(Cm, bm, model=model, tol=1e-10, x0="zeros" if model == "softmax" else "auto",
                           hessian=hessian, max_iter=500, seed=1)
        assert res.converged, (hessian, res.message)


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_slow_phase_is_not_cut_short(model):
    """A long phase of small steps that still lower L (a tiny logit cap forces hundreds of steps)
    is progress: the stagnation window must not stop it, on a smooth model or a ReLU model."""
    from fastnewton.hessian import resolve_strategy
    from fastnewton.newton import SolveOptions, newton_solve
    from fastnewton.start import starting_point

    Cm, bm, _ = make_problem(2000, 8, nnz_per_row=4, model=model, seed=0)
    problem = fastnewton.Problem(Cm, bm, model=model)
    name, build = resolve_strategy("exact", problem, 0.5, None)
    options = SolveOptions(hessian=name, tol=1e-8, max_iter=3000, eps=0.5, sketch_size=None, seed=0,
                           callback=None, verbose=False, max_logit_step=0.02)
    x0 = np.zeros(problem.d) if model == "softmax" else 0.3 * starting_point(problem, "auto")[0]
    res = newton_solve(problem, x0, "test", build, options)
    assert res.converged, res.message
    assert res.n_iter > 5 * STALL_WINDOW  # the phase really was long


def _kink_case(case):
    if case == "softmax_relu-negative-target":
        # An output with a negative target: the rest of the fit wants yⱼ > 0, its own residual wants
        # yⱼ < 0, so the optimum sits at yⱼ = 0 (m = 8 outputs > d = 6: yⱼ cannot move on its own).
        planted = make_problem(400, 6, nnz_per_row=3, model="softmax_relu", m=8, seed=2)
        Cm, b, V = planted.C, planted.b, planted.V
        b = b.copy()
        b[1] = -0.05
        return Cm, b, dict(model="softmax_relu", V=V)
    # Noisy targets with row weights and a ridge: the optimum puts a row at (Cx)ᵢ = 0.
    Cm, b, _ = make_problem(2000, 8, nnz_per_row=4, model="relu_softmax", noise=0.1, seed=0)
    return Cm, b, dict(model="relu_softmax", row_weights=1e-3, l2=1e-4)


@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg"])
@pytest.mark.parametrize("case", ["softmax_relu-negative-target", "relu_softmax-noise-weights-l2"])
def test_iterate_at_a_relu_kink_stops_with_a_kink_message(case, hessian):
    """Both ran to max_iter (300) before: steps at the kink no longer lower L beyond rounding.

    softmax_relu's default start: the first phase that stops at the kink ends the staged solve (only
    the real loss follows a surrogate phase, so the answer is the real loss's): 57–88 iterations
    measured (exact, sketch, pcg; most of them the ridge stages walking to the kink), against
    104–148 when every phase (and a restart from zeros) was ended by the window."""
    Cm, b, kwargs = _kink_case(case)
    res = _quiet_solve(Cm, b, tol=1e-8, max_iter=300, hessian=hessian, seed=0, **kwargs)
    assert res.n_iter < (110 if case.startswith("softmax_relu") else 60)
    if case.startswith("relu_softmax"):
        # relu_softmax holds the row at its kink (fastnewton.kinks; pcg by projected CG) and stops there as a
        # kink stationary point: 10 (exact), 17 (sketch) and 16 (pcg) iterations, against 24, 29 and 32 to the
        # STALLED stop.
        assert res.status == Status.CONVERGED and "kink stationary point" in res.message, res.message
        assert res.n_iter <= 20 and res.subgradient_norm <= 1e-8 * res.g_ref
        return
    if case.startswith("softmax_relu") and hessian == "pcg" and res.converged:
        # pcg's path can end at another stationary point (yⱼ < 0 strictly), where the gradient
        # criterion holds: a local minimum of a non-convex loss.
        return
    assert res.status == Status.STALLED, res.message
    assert "kink" in res.message and "rounding" in res.message
    if case.startswith("softmax_relu"):
        phases = list(dict.fromkeys(record["phase"] for record in res.history[1:]))
        # One kink stop: the phase after the one that stopped there is the last, and it is the real loss.
        assert phases[-1] == "real" and "real from zeros" not in phases and "real restart from zeros" not in phases
        assert res.at_kink


@pytest.mark.parametrize("hessian", ["exact", "pcg"])
def test_slow_staged_phase_is_not_cut_short(hessian):
    """softmax_relu's staged start with a tiny logit cap (every phase a long walk of small steps that
    still lower L): no phase is ended by the stagnation window, and the solve converges."""
    from fastnewton.solver import solve_options

    planted = make_problem(2000, 8, nnz_per_row=4, model="softmax_relu", m=4, seed=0)
    problem = fastnewton.Problem(planted.C, planted.b, model="softmax_relu", V=planted.V)
    build, options = solve_options(problem, hessian, 0.5, None, 1e-8, 3000, 0, None, False)
    from dataclasses import replace
    res = problem.auto_solve(build, replace(options, max_logit_step=0.02))
    assert res.converged, res.message
    assert res.n_iter > 5 * STALL_WINDOW  # the phases really were long
    assert not res.at_kink


# ---------------------------------------------------------------------------------------------
# Callback return values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, stops", [(True, True), (False, False), (None, False), (np.True_, True),
                                          (np.False_, False)])
def test_callback_boolean_returns(value, stops):
    res = _quiet_solve(C, B, x0="zeros", callback=lambda info: value)
    assert (res.status == Status.CALLBACK) == stops
    assert res.n_iter == (1 if stops else res.n_iter)


def test_callback_stop_iteration_stops_cleanly():
    def callback(info):
        if info["iter"] == 2:
            raise StopIteration
    res = _quiet_solve(C, B, x0="zeros", callback=callback)
    assert res.status == Status.CALLBACK and res.n_iter == 2


@pytest.mark.parametrize("value", [np.array([True, False]), np.array([1.0]), "False", float("nan"), 0, 1, [],
                                   object()])
def test_callback_other_returns_are_rejected_naming_callback(value):
    with pytest.raises(TypeError, match=r"\bcallback\b"):
        _quiet_solve(C, B, x0="zeros", callback=lambda info: value)


# ---------------------------------------------------------------------------------------------
# Column scaling: the solver is invariant to the scale of each column
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg"])
@pytest.mark.parametrize("span", [4, 12])
@pytest.mark.parametrize("x0", ["zeros", "auto"])
def test_column_scales_from_1e_minus12_to_1e12_give_the_unscaled_optimum(hessian, span, x0):
    """C·diag(scale) has the optimum x/scale; converged must mean near it (the gradient criterion
    alone was dominated by the largest column and stopped 36–62% off at 1e±12)."""
    d = C.shape[1]
    scale = np.logspace(-span, span, d)
    reference = solve(C, B, tol=1e-12, hessian="exact")
    res = _quiet_solve(C @ sp.diags(scale), B, hessian=hessian, x0=x0, tol=1e-10, max_iter=200, seed=0)
    assert res.converged, res.message
    error = np.linalg.norm(res.x * scale - reference.x) / np.linalg.norm(reference.x)
    assert error < 1e-5, error


def test_scaled_stopping_test_agrees_on_well_scaled_columns():
    """On unit-scale columns the extra column-scaled test costs no iteration: same count as the plain one."""
    res = solve(C, B, tol=1e-8, x0="zeros", hessian="exact")
    plain = [h["rel_grad_norm"] for h in res.history]
    first = next(i for i, r in enumerate(plain) if r <= 1e-8)
    assert res.n_iter == first



# ---------------------------------------------------------------------------------------------
# A target with no signal beyond rounding (b constant): ∇L(0) is rounding; a stall within its bound converged
# ---------------------------------------------------------------------------------------------
def _constant_targets(n):
    """Targets whose softmax regression has ∇L(0) = −(1/n)·Cᵀ(b − mean b) = 0 exactly: b constant (the
    float32 1/n of a uniform attention row read as float64 is one), so x = 0 (uniform softmax) is optimal."""
    return {"zeros": np.zeros(n), "0.3": np.full(n, 0.3),
            "float32-uniform": np.full(n, np.float32(1.0) / np.float32(n)).astype(np.float64)}


def _softmax_loss(matrix, x, b):
    z = matrix @ x
    s = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return 0.5 * np.sum((s - b) ** 2)


@pytest.mark.filterwarnings("ignore:.*not a probability vector")
@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("target", ["zeros", "0.3", "float32-uniform"])
@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_constant_target_is_converged_in_solve_and_solve_many(model, target, dense):
    # Before, these ended STALLED ("tol was not met") after 10–12 iterations: g_ref was the rounding of ∇L(0)
    # (5.7e-18 for b = 0), so tol·g_ref lay far below what an evaluation resolves. The iterate is the same.
    matrix = C.toarray() if dense else C
    b = _constant_targets(C.shape[0])[target]
    res = _quiet_solve(matrix, b, model=model)
    assert res.status == Status.CONVERGED, res.message
    assert res.n_iter <= 2 * STALL_WINDOW  # the stall window after the last rounding-level "progress"
    # Independent: x = 0 is the optimum of a constant target (the simplex point nearest a constant vector is
    # uniform), so the loss at the answer is L(0) to rounding, by a plain NumPy evaluation.
    loss_zero = 0.5 * np.sum((1.0 / C.shape[0] - b) ** 2)
    assert _softmax_loss(matrix, res.x, b) <= loss_zero * (1 + 1e-12) + 1e-300
    if res.n_iter:  # relu_softmax's b = 0 starts at its exact stationary point 0 (∇L = 0): the plain test
        assert "zero to rounding" in res.message and res.message.startswith("Converged: ")
    batch = fastnewton.solve_many([(matrix, b)], model=model)
    assert batch.status[0] == res.status and batch.n_iter[0] == res.n_iter
    assert batch.message[0] == res.message
    np.testing.assert_allclose(batch.x[:, 0], res.x, rtol=0, atol=1e-10 * max(1.0, np.abs(res.x).max()))
    many = fastnewton.solve_many(matrix, np.stack([b, B], axis=1), model=model)
    assert many.status[0] == res.status and many.n_iter[0] == res.n_iter and many.message[0] == res.message


@pytest.mark.parametrize("dense", [True, False])
def test_softmax_relu_target_of_uniform_attention_is_converged(dense):
    # b = ReLU(Vᵀ1/n), the read-out of uniform attention: x = 0 is optimal and ∇L(0) is rounding (was STALLED).
    rng = np.random.default_rng(4)
    n, d, m = 300, 16, 8
    matrix = rng.standard_normal((n, d))
    matrix = matrix if dense else sp.csr_matrix(np.where(rng.random((n, d)) < 0.3, matrix, 0.0))
    V = np.abs(rng.standard_normal((n, m)))
    b = V.mean(axis=0)
    res = _quiet_solve(matrix, b, model="softmax_relu", V=V)
    assert res.status == Status.CONVERGED and "zero to rounding" in res.message, res.message
    # Independent: the loss is that of x = 0, which is 0 up to rounding of V's column means
    z = matrix @ res.x
    s = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert 0.5 * np.sum((np.maximum(V.T @ s, 0) - b) ** 2) <= 1e-28
    batch = fastnewton.solve_many([(matrix, b, V)], model="softmax_relu")
    assert batch.status[0] == res.status and batch.message[0] == res.message
    np.testing.assert_allclose(batch.x[:, 0], res.x, rtol=0, atol=1e-10 * max(1.0, np.abs(res.x).max()))


def _exact_gradient_at_zero(matrix, b, V):
    """∇L(0) in extended precision (np.longdouble): softmax −(1/n)·Cᵀ(b − mean b); softmax_relu
    (1/n)·Cᵀ(ρ − mean ρ), ρ = V(a ⊙ (y − b)), y = Vᵀ1/n, a = 1[y > 0]."""
    L = np.longdouble
    A = matrix.astype(L)
    n = A.shape[0]
    if V is None:
        return -(A.T @ (b.astype(L) - b.astype(L).mean())) / n
    y = V.astype(L).T @ np.full(n, L(1) / n)
    rho = V.astype(L) @ np.where(y > 0, y - b.astype(L), L(0))
    return (A.T @ (rho - rho.mean())) / n


@pytest.mark.filterwarnings("ignore:.*not a probability vector")
@pytest.mark.parametrize("model", ["softmax", "softmax_relu"])
@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_gradient_rounding_bound_holds_against_extended_precision(seed, dense, model):
    """The bound R·D_j on the rounding of the computed ∇L(0) holds: |computed − exact|_j ≤ R·D_j, with the exact
    ∇L(0) in extended precision (np.longdouble, 64-bit mantissa on x86; where it is plain float64 the check is
    only against another float64 evaluation order). Over 40 seeds the largest error was 1.8% of the bound
    (softmax, dense and CSR)."""
    from fastnewton.newton import ROUNDING_FACTOR
    from fastnewton.problem import Problem
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(50, 3000)), int(rng.integers(2, 40))
    matrix = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-3, 3, size=d)
    V = None
    if model == "softmax_relu":
        V = rng.standard_normal((n, int(rng.integers(1, 12)))) * 10.0 ** rng.uniform(-2, 2)
        b = np.maximum(V.mean(axis=0), 0.0) * (1 + 10.0 ** -rng.integers(6, 16) * rng.standard_normal(V.shape[1]))
    elif seed % 2:  # near-constant targets, where the bound matters, and ordinary ones of every scale
        b = np.full(n, rng.uniform(0, 2)) * (1 + 10.0 ** -rng.integers(6, 16) * rng.standard_normal(n))
    else:
        b = rng.dirichlet(np.ones(n)) * 10.0 ** rng.uniform(-3, 3)
    problem = Problem(matrix if dense else sp.csr_matrix(matrix), b, model=model, V=V)
    computed = problem.gradient_at_zero()
    R = problem.row_model.gradient_rounding(n, problem.facts, ROUNDING_FACTOR)
    error = np.abs(computed.astype(np.longdouble) - _exact_gradient_at_zero(matrix, b, V)).astype(np.float64)
    assert np.all(error <= R * np.linalg.norm(matrix, axis=0)), (error / (R * np.linalg.norm(matrix, axis=0))).max()


def test_floor_never_binds_on_a_target_with_signal():
    # Only where ∇L(0) is within its rounding bound does a stall count as converged; ordinary and even
    # near-constant targets (1e-6 relative signal) meet the plain test ‖∇L‖ ≤ tol·g_ref, with its message.
    n = C.shape[0]
    rng = np.random.default_rng(3)
    for b in (B, np.full(n, 1.0 / n) * (1 + 1e-6 * rng.standard_normal(n))):
        res = _quiet_solve(C, b)
        assert res.status == Status.CONVERGED and "zero to rounding" not in res.message
        assert res.grad_norm <= 1e-8 * res.g_ref
