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
    """Both ran to max_iter (300) before: steps at the kink no longer lower L beyond rounding (relu_softmax's pcg
    still: CG's steps do not hold rows at the kink).

    softmax_relu's default start: the first phase that stops at the kink ends the staged solve (only
    the real loss follows a surrogate phase, so the answer is the real loss's): 57–88 iterations
    measured (exact, sketch, pcg; most of them the ridge stages walking to the kink), against
    104–148 when every phase (and a restart from zeros) was ended by the window."""
    Cm, b, kwargs = _kink_case(case)
    res = _quiet_solve(Cm, b, tol=1e-8, max_iter=300, hessian=hessian, seed=0, **kwargs)
    assert res.n_iter < (110 if case.startswith("softmax_relu") else 60)
    if case.startswith("relu_softmax") and hessian != "pcg":
        # With a factored system relu_softmax holds the row at its kink (fastnewton.kinks) and stops there as a
        # kink stationary point: 10 (exact) and 17 (sketch) iterations, against 24 and 29 to the STALLED stop.
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
