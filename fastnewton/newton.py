"""The globalised Newton loop of SPEC §3, written against ``Problem`` and a Hessian strategy.

Per iteration: 1) u = Cx (carried from the line search as u + t·CΔx, a forward pass only
every ``REFRESH_EVERY`` iterations or when the steps since the last one were long), 2) model vectors and the fused gradient pass
Cᵀ[q, U], 3) the Hessian from the strategy, 4) a damped Newton step: Cholesky of
H + μI (Levenberg–Marquardt μ raised when Cholesky fails or the line search
rejects the step), a logit cap ‖CΔx‖∞ ≤ 10 (one pass C·Δx, reused by every line
search trial as u + t·CΔx), and Armijo backtracking on L.
"""
import os
import sys
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np

from .protocol import no_timer
from .reductions import dot, norm
from .result import MESSAGES, ConvergenceWarning, SolveResult, Status
from .timing import PhaseTimer

ARMIJO_C1 = 1e-4
BACKTRACK_FACTOR = 0.5
MAX_BACKTRACKS = 40
# μ runs from 1e-8·scale up by ×10 per failure: 20 tries reach 1e12·scale, where the
# step is a tiny gradient step that must decrease L unless L is flat to rounding.
MAX_DAMPING_TRIES = 20
FIRST_DAMPING = 1e-8
DAMPING_INCREASE = 10.0
DAMPING_DECREASE = 10.0
# Beyond ~10 the softmax saturates to one-hot and every gradient underflows to 0 (SPEC §3).
MAX_LOGIT_STEP = 10.0
# u = Cx is carried from the line search as u + t·Cp. A fresh pass has |uᵢ − (Cx)ᵢ| ≤ γ_nnzᵢ·|Cᵢ|·|x|;
# the carried u adds, per step since the last fresh pass, one such bound with |t·p| for |x| (the pass
# C·p) and an eps·|uᵢ| (the addition). So it is formed afresh after REFRESH_EVERY carried steps (the
# additions then stay ≤ 8·eps·|uᵢ|, within a fresh pass's own bound for rows of ≥ 8 non-zeros, while
# the refresh costs 1/8 of a pass per iteration) or once ‖x_fresh‖ + Σ‖t·p‖ exceeds
# MAX_CARRIED_PATH·‖x‖ (then the pass errors could exceed 4× a fresh pass's: long or zig-zag steps).
REFRESH_EVERY = 8
MAX_CARRIED_PATH = 4.0
# Rounding level of L: ~100·eps relative to L and to the residual cross term ‖r‖·‖b‖.
ROUNDING_FACTOR = 100.0 * np.finfo(np.float64).eps
# Stagnation ("no decrease of L beyond rounding", also the ReLU-kink test): an iteration makes
# progress when it lowers the lowest loss so far by more than the rounding level, or brings the
# gradient norm below GRADIENT_PROGRESS × the lowest gradient norm so far. The gradient half is
# needed because near the optimum Newton's decrease of L (~‖g‖²/‖H‖) is below rounding while ‖g‖
# still falls by orders of magnitude per step; at the rounding floor L only fluctuates and ‖g‖
# wanders up and down around a level it no longer halves. STALL_WINDOW iterations in a row without
# progress end the solve as STALLED: a linearly converging phase (sketch, rate ≤ ε = 0.5 per step)
# or a slow phase that still lowers L always makes progress well within 10 steps.
STALL_WINDOW = 10
GRADIENT_PROGRESS = 0.5


@dataclass(frozen=True)
class SolveOptions:
    """Configuration of one solve, built once from ``solve``'s arguments."""

    hessian: str
    tol: float
    max_iter: int
    eps: float
    sketch_size: object
    seed: object
    callback: object
    verbose: bool
    max_logit_step: float = MAX_LOGIT_STEP
    # D_j = ‖C_j‖ (zero columns 1): the steps' and the stopping test's column scale, set by newton_solve.
    column_scale: object = None
    # False for the stages of a staged start (``fastnewton.lifted_start``), which warns once for all of them.
    warn_at_max_iter: bool = True


@dataclass
class Step:
    """An accepted step: the new x, its length t, the damping μ used, trials, ‖t·p‖, and the line it
    was taken on (whose ``evaluate(t)`` carries u)."""

    x: np.ndarray
    length: float
    damping: float
    trials: int
    norm: float
    line: object = None


@dataclass
class CarriedForward:
    """How far u = Cx has been carried as u + t·Cp since a forward pass formed it (the rule above)."""

    steps: int = 0
    path: float = 0.0  # ‖x‖ at the last forward pass + Σ ‖t·p‖ since

    def evaluate(self, problem, step, timer):
        """The evaluation at step.x: u carried along the step's line, or a forward pass when due."""
        self.steps += 1
        self.path += step.norm
        x_norm = norm(step.x)
        if step.line is None or self.steps >= REFRESH_EVERY or self.path > MAX_CARRIED_PATH * x_norm:
            self.steps, self.path = 0, x_norm
            return problem.evaluate(step.x, timer=timer)
        return step.line.evaluate(step.length, timer=timer)


def _all_finite(*values):
    return all(np.all(np.isfinite(v)) for v in values)


def _rounding_level(loss, target_norm):
    return ROUNDING_FACTOR * (abs(loss) + np.sqrt(2.0 * abs(loss)) * target_norm)


def _callback_stops(value):
    """Whether a callback's return value asks to stop: True/False/None (NumPy bools too); anything else is an error."""
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"callback must return True (stop), False or None (continue), or raise StopIteration; "
                    f"got {type(value).__name__} {value!r:.60}")


def _norm_or_inf(g):
    """‖g‖, or inf when g has a non-finite entry (so no test against it can pass)."""
    return norm(g) if _all_finite(g) else np.inf


def _non_finite_detail(loss, grad, grad_norm, where):
    """Why a loss or gradient is not usable (a sentence), or "" when both are finite."""
    if not np.isfinite(loss):
        what = f"the loss is {loss}"
    elif not _all_finite(grad):
        what = "the gradient has non-finite entries"
    elif not np.isfinite(grad_norm):
        what = f"‖∇L‖ overflows float64 (gradient entries up to {float(np.max(np.abs(grad))):.3e})"
    else:
        return ""
    return (f"{what} {where}: the scale of C, b, V, row_weights or l2 is too large for float64 arithmetic; "
            f"rescale the problem (e.g. divide C by its largest entry) or reduce l2 / row_weights.")


# A ReLU input sits at its kink when its sign flipped in the last step, or when it is non-zero but
# |value| ≤ KINK_RTOL · (largest |value|): steps that stall there move it by amounts of this order
# (exact zeros are left out: an empty row of C has u = 0 whatever x is).
KINK_RTOL = 1e-6


def kink_sentence(before, after):
    """The stop message's sentence when the ReLU inputs sit at the kink, or None.

    ``before`` and ``after`` are an evaluator's ``relu_inputs`` at two successive iterates:
    (what they are, their values) or None for a model without ReLU inputs on the driver."""
    if before is None or after is None:
        return None
    what, previous = before
    _, values = after
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    flipped = (previous > 0.0) != (values > 0.0)
    near = (np.abs(values) <= KINK_RTOL * largest) & (values != 0.0)
    at_kink = flipped | near
    if not at_kink.any():
        return None
    return (f"x sits at a ReLU kink: {int(at_kink.sum())} {what} ≈ 0 or changing sign between steps (e.g. "
            f"index {int(np.flatnonzero(at_kink)[0])}), where L is not differentiable and Newton steps no "
            f"longer reduce it beyond rounding.")


def column_scale(problem):
    """D_j = ‖C_j‖, the fixed column scale of the steps and of the column-scaled stopping test.

    A zero (or overflowing: the start then reports it) column leaves its gradient entry unscaled."""
    with np.errstate(over="ignore"):
        norms = problem.column_norms()
    return np.where(np.isfinite(norms) & (norms > 0.0), norms, 1.0)


def _next_damping(mu, scale):
    return FIRST_DAMPING * scale if mu == 0.0 else mu * DAMPING_INCREASE


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_max_iter(options):
    """The ConvergenceWarning of a solve that stopped at max_iter, attributed to the first caller
    outside the package (the user's call of ``solve``, however deep the package's own frames are)."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    warnings.warn(f"fastnewton.solve stopped at max_iter = {options.max_iter} before reaching tol = "
                  f"{options.tol:g}", ConvergenceWarning, stacklevel=level)


def newton_step(problem, ev, system, mu, max_logit_step=MAX_LOGIT_STEP, timer=None, counts=None):
    """One damped Newton step from ev.x: ``Step``, or None when no damping gives an accepted step.

    Solves (H + μI) p = −g with ``system``, raising μ (×10 from 1e-8·scale) while the solve fails
    or p is not a descent direction; caps the logit change ‖C p‖∞ ≤ ``max_logit_step`` (one pass
    C·p, reused by every trial); backtracks (×½) until Armijo holds, or the full step keeps L
    within rounding of L(x) when the predicted decrease is itself below rounding.
    ``counts["nfev"]`` (if given) counts the line search's loss evaluations.
    """
    timer = timer or no_timer
    scale = system.scale
    g = ev.grad
    L0 = ev.loss
    noise = _rounding_level(L0, problem.target_norm())
    for _ in range(MAX_DAMPING_TRIES):
        with timer("solve"):
            p = system.solve(g, mu)
        if p is None or not _all_finite(p) or not dot(g, p) < 0.0:
            mu = _next_damping(mu, scale)
            continue
        with timer("line_search"):
            line = problem.line(ev, p)
            if line.largest > max_logit_step:
                line.scale(max_logit_step / line.largest)
            slope = dot(g, line.p)
            t = 1.0
            for trial in range(1, MAX_BACKTRACKS + 1):
                L_t = line.loss(t)
                if counts is not None:
                    counts["nfev"] += 1
                armijo = L_t <= L0 + ARMIJO_C1 * t * slope
                # Near the optimum the predicted decrease can be below the rounding of L:
                # accept the full step if L does not rise beyond rounding; the gradient test decides.
                invisible = t == 1.0 and -slope <= noise and L_t <= L0 + noise
                if np.isfinite(L_t) and (armijo or invisible):
                    return Step(ev.x + t * line.p, t, mu, trial, t * norm(line.p), line)
                t *= BACKTRACK_FACTOR
        mu = _next_damping(mu, scale)
    return None


def newton_solve(problem, x0, start, build_system, options, timer=None, clock=None):
    """Run the Newton loop from x0; ``build_system(problem, ev, rng, options, g_ref)`` gives each step's system.

    ``problem`` is any ``fastnewton.protocol.Evaluator``: ``Problem`` on one machine, and
    ``fastnewton.dask`` runs this same loop with the passes over C done where C's blocks live.
    ``timer`` and ``clock`` (a ``time.perf_counter()`` reading) come from the caller when work
    before the loop (validation, the start) belongs in iteration 0's record and in ``res.time``.

    Convergence needs both ‖∇L(x)‖ ≤ tol·g_ref (g_ref = ‖∇L(0)‖, or ‖∇L(x0)‖ only where that is 0)
    and the same test in the column-scaled norm ‖∇L(x)/c‖ ≤ tol·‖∇L(0)/c‖, c_j = ‖C_j‖: on well-scaled
    columns the two agree; on columns scaled 1e-12..1e12 the first is dominated by the largest
    column and the second keeps the small ones from being declared converged far from the optimum.
    """
    timer = timer if timer is not None else PhaseTimer()
    # scipy's nfev / njev / nhev: loss evaluations (line-search trials too), gradients, Hessians built.
    counts = {"nfev": 1, "njev": 1, "nhev": 0}
    rng = np.random.default_rng(options.seed)
    clock = clock if clock is not None else time.perf_counter()
    with timer("reference"):  # ‖b‖, the column norms and ∇L(0): the scales of the stopping test
        target_norm = problem.target_norm()
        column_norms = column_scale(problem)
        grad_at_zero = problem.gradient_at_zero()
    options = replace(options, column_scale=column_norms)

    def scaled_norm(g):
        return norm(g / column_norms)

    ev = problem.evaluate(x0, timer=timer)
    grad_norm = _norm_or_inf(ev.grad)
    g_ref_zero = _norm_or_inf(grad_at_zero)
    detail = (_non_finite_detail(ev.loss, ev.grad, grad_norm, "at the starting point")
              or _non_finite_detail(0.0, grad_at_zero, g_ref_zero, "at x = 0 (the reference gradient g_ref)"))
    if detail:
        return _result(ev, x0, start, options, Status.NON_FINITE, [], 0.0, clock, detail=detail, counts=counts)
    # Independent of the start, so runs from different starts (and peers) meet one criterion;
    # ‖∇L(x0)‖ only where ∇L(0) = 0.
    g_ref = g_ref_zero if g_ref_zero > 0 else grad_norm
    scaled_g_ref = scaled_norm(grad_at_zero) if g_ref_zero > 0 else scaled_norm(ev.grad)
    carried = CarriedForward(path=norm(x0))
    history = []
    _record(history, 0, ev, grad_norm, g_ref, None, timer, clock, options, problem.iteration_extras())
    mu = 0.0
    status = None
    detail = ""
    n_iter = 0
    lowest_loss, lowest_grad_norm, last_progress = ev.loss, grad_norm, 0
    previous = ev
    at_kink = False
    try:
        while True:
            if grad_norm <= options.tol * g_ref and scaled_norm(ev.grad) <= options.tol * scaled_g_ref:
                status = Status.CONVERGED
                break
            if n_iter >= options.max_iter:
                status = Status.MAX_ITER
                break
            if n_iter - last_progress >= STALL_WINDOW:
                status = Status.STALLED
                kink = kink_sentence(problem.relu_inputs(previous), problem.relu_inputs(ev))
                at_kink = kink is not None
                detail = (kink or "") + (
                    f" The loss ({ev.loss:.6e}) has not decreased beyond rounding error and the gradient norm "
                    f"has not halved in {STALL_WINDOW} iterations (‖∇L‖/g_ref = {grad_norm / g_ref:.3e}).")
                detail = detail.strip()
                break
            n_iter += 1
            # 3) Hessian
            with timer("hessian"):
                system = build_system(problem, ev, rng, options, g_ref)
            counts["nhev"] += 1
            # 4) damped Newton step with logit cap and Armijo line search
            step = newton_step(problem, ev, system, mu, options.max_logit_step, timer, counts)
            if step is None:
                status = Status.STALLED
                detail = "No step along the Newton direction decreases it at any damping."
                break
            # 1) u at the new iterate (carried along the line, or a forward pass when due) and 2) gradient pass
            new_ev = carried.evaluate(problem, step, timer)
            counts["nfev"] += 1
            counts["njev"] += 1
            new_grad_norm = _norm_or_inf(new_ev.grad)
            detail = _non_finite_detail(new_ev.loss, new_ev.grad, new_grad_norm, f"at iteration {n_iter}")
            if detail:
                status = Status.NON_FINITE
                break
            if (new_ev.loss < lowest_loss - _rounding_level(lowest_loss, target_norm)
                    or new_grad_norm <= GRADIENT_PROGRESS * lowest_grad_norm):
                last_progress = n_iter
            lowest_loss, lowest_grad_norm = min(lowest_loss, new_ev.loss), min(lowest_grad_norm, new_grad_norm)
            previous, ev, grad_norm = ev, new_ev, new_grad_norm
            mu = step.damping / DAMPING_DECREASE if step.length == 1.0 else step.damping
            if mu < FIRST_DAMPING * system.scale:
                mu = 0.0
            info = _record(history, n_iter, ev, grad_norm, g_ref, step, timer, clock, options,
                           {**system.info, **problem.iteration_extras(),
                            "rel_scaled_grad_norm": scaled_norm(ev.grad) / scaled_g_ref if scaled_g_ref > 0 else 0.0})
            if options.callback is not None:
                try:
                    stop = _callback_stops(options.callback(dict(info, x=ev.x.copy())))
                except StopIteration:
                    stop = True
                if stop:
                    status = Status.CALLBACK
                    break
    except KeyboardInterrupt:
        status = Status.INTERRUPTED
    if status == Status.MAX_ITER and options.warn_at_max_iter:
        warn_max_iter(options)
    if status == Status.CONVERGED:
        dead = problem.diagnose(ev)
        if dead:
            status, detail = Status.DEAD_STATIONARY, dead
    res = _result(ev, x0, start, options, status, history, g_ref, clock, detail, n_iter, counts)
    # Whether a STALLED stop found x at a ReLU kink (the staged start of softmax_relu ends there).
    res["at_kink"] = at_kink
    return res


_TABLE_HEADER = f"{'iter':>5} {'loss':>14} {'|g|/g_ref':>10} {'step':>8} {'damping':>9} {'trials':>6} {'seconds':>8}"


def _record(history, n_iter, ev, grad_norm, g_ref, step, timer, clock, options, system_info=None):
    info = {
        "iter": n_iter,
        "loss": ev.loss,
        "grad_norm": grad_norm,
        "rel_grad_norm": grad_norm / g_ref if g_ref > 0 else 0.0,
        "g_ref": g_ref,
        "step": step.length if step else 0.0,
        "step_norm": step.norm if step else 0.0,
        "damping": step.damping if step else 0.0,
        "line_search_trials": step.trials if step else 0,
        "seconds": timer.pop(),
        "time": time.perf_counter() - clock,
    }
    info.update(system_info or {})
    history.append(info)
    if options.verbose:
        if n_iter == 0:
            print(_TABLE_HEADER)
        print(f"{n_iter:>5d} {info['loss']:>14.6e} {info['rel_grad_norm']:>10.3e} {info['step']:>8.2e} "
              f"{info['damping']:>9.2e} {info['line_search_trials']:>6d} {sum(info['seconds'].values()):>8.3f}")
    return info


def _result(ev, x0, start, options, status, history, g_ref, clock, detail="", n_iter=0, counts=None):
    message = MESSAGES[status]
    if detail:
        # The dead-stationary message ends in ": " and the detail completes its sentence.
        message += detail if status == Status.DEAD_STATIONARY else " " + detail
    grad_norm = norm(ev.grad) if _all_finite(ev.grad) else float("nan")
    x = ev.x.copy() if _all_finite(ev.x) else x0.copy()
    res = SolveResult(
        x=x,
        loss=ev.loss,
        grad_norm=grad_norm,
        rel_grad_norm=grad_norm / g_ref if g_ref > 0 else 0.0,
        g_ref=g_ref,
        n_iter=n_iter,
        converged=status == Status.CONVERGED,
        status=status,
        message=message,
        history=history,
        x0=x0.copy(),
        start=start,
        hessian=options.hessian,
        time=time.perf_counter() - clock,
    )
    res.update(fun=res["loss"], jac=ev.grad.copy(), nit=n_iter, success=res["converged"], **(counts or {}))
    if options.verbose:
        print(f"{message} iterations={n_iter} loss={res['loss']:.6e} |g|/g_ref={res['rel_grad_norm']:.3e} "
              f"time={res['time']:.3f}s")
    return res
