"""The globalised Newton loop of SPEC §3, written against ``Problem`` and a Hessian strategy.

Per iteration: 1) u = Cx (carried from the line search as u + t·CΔx, a forward pass only
every ``REFRESH_EVERY`` iterations or when the steps since the last one were long), 2) model vectors and the fused gradient pass
Cᵀ[q, U], 3) the Hessian from the strategy, 4) a damped Newton step: Cholesky of
H + μI (Levenberg–Marquardt μ raised when Cholesky fails or the line search
rejects the step), a logit cap ‖CΔx‖∞ ≤ 10 (one pass C·Δx, reused by every line
search trial as u + t·CΔx), and Armijo backtracking on L.
"""
import time
import warnings
from dataclasses import dataclass

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
# Consecutive steps whose decrease is below rounding and that do not shrink the gradient
# before the solve is declared stalled at the precision limit.
MAX_FLAT_STEPS = 3
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


@dataclass
class Step:
    """An accepted step: the new x, its length t, the damping μ used, trials, ‖t·p‖, whether Armijo
    failed, and the line it was taken on (whose ``evaluate(t)`` carries u)."""

    x: np.ndarray
    length: float
    damping: float
    trials: int
    norm: float
    below_rounding: bool
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


def _next_damping(mu, scale):
    return FIRST_DAMPING * scale if mu == 0.0 else mu * DAMPING_INCREASE


def newton_step(problem, ev, system, mu, max_logit_step=MAX_LOGIT_STEP, timer=None):
    """One damped Newton step from ev.x: ``Step``, or None when no damping gives an accepted step.

    Solves (H + μI) p = −g with ``system``, raising μ (×10 from 1e-8·scale) while the solve fails
    or p is not a descent direction; caps the logit change ‖C p‖∞ ≤ ``max_logit_step`` (one pass
    C·p, reused by every trial); backtracks (×½) until Armijo holds, or the full step keeps L
    within rounding of L(x) when the predicted decrease is itself below rounding.
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
                armijo = L_t <= L0 + ARMIJO_C1 * t * slope
                # Near the optimum the predicted decrease can be below the rounding of L:
                # accept the full step if L does not rise beyond rounding; the gradient test decides.
                invisible = t == 1.0 and -slope <= noise and L_t <= L0 + noise
                if np.isfinite(L_t) and (armijo or invisible):
                    return Step(ev.x + t * line.p, t, mu, trial, t * norm(line.p), not armijo, line)
                t *= BACKTRACK_FACTOR
        mu = _next_damping(mu, scale)
    return None


def newton_solve(problem, x0, start, build_system, options):
    """Run the Newton loop from x0; ``build_system(problem, ev, rng, options, g_ref)`` gives each step's system.

    ``problem`` is any ``fastnewton.protocol.Evaluator``: ``Problem`` on one machine, and
    ``fastnewton.dask`` runs this same loop with the passes over C done where C's blocks live.
    """
    timer = PhaseTimer()
    rng = np.random.default_rng(options.seed)
    clock = time.perf_counter()
    g_ref_zero = problem.gradient_norm_at_zero()
    ev = problem.evaluate(x0, timer=timer)
    if not _all_finite(ev.loss, ev.grad):
        return _result(ev, x0, start, options, Status.NON_FINITE, [], 0.0, clock,
                       detail="the loss or gradient at the starting point is not finite")
    grad_norm = norm(ev.grad)
    g_ref = max(grad_norm, g_ref_zero)
    carried = CarriedForward(path=norm(x0))
    history = []
    _record(history, 0, ev, grad_norm, g_ref, None, timer, clock, options, problem.iteration_extras())
    mu = 0.0
    status = None
    detail = ""
    n_iter = 0
    flat_steps = 0
    try:
        while True:
            if grad_norm <= options.tol * g_ref:
                status = Status.CONVERGED
                break
            if n_iter >= options.max_iter:
                status = Status.MAX_ITER
                break
            n_iter += 1
            # 3) Hessian
            with timer("hessian"):
                system = build_system(problem, ev, rng, options, g_ref)
            # 4) damped Newton step with logit cap and Armijo line search
            step = newton_step(problem, ev, system, mu, options.max_logit_step, timer)
            if step is None:
                status = Status.STALLED
                break
            # 1) u at the new iterate (carried, or a forward pass) and 2) gradient pass
            new_ev = carried.evaluate(problem, step, timer)
            if not _all_finite(new_ev.loss, new_ev.grad):
                status = Status.NON_FINITE
                detail = f"the loss or gradient became non-finite at iteration {n_iter}"
                break
            new_grad_norm = norm(new_ev.grad)
            flat_steps = flat_steps + 1 if step.below_rounding and new_grad_norm >= grad_norm else 0
            ev, grad_norm = new_ev, new_grad_norm
            mu = step.damping / DAMPING_DECREASE if step.length == 1.0 else step.damping
            if mu < FIRST_DAMPING * system.scale:
                mu = 0.0
            info = _record(history, n_iter, ev, grad_norm, g_ref, step, timer, clock, options,
                           {**system.info, **problem.iteration_extras()})
            if options.callback is not None and options.callback(dict(info, x=ev.x.copy())):
                status = Status.CALLBACK
                break
            if flat_steps >= MAX_FLAT_STEPS:
                status = Status.STALLED
                detail = (f"The loss ({ev.loss:.3e}) is flat to rounding error and the gradient stopped "
                          f"decreasing at ‖∇L‖/g_ref = {info['rel_grad_norm']:.3e}.")
                break
    except KeyboardInterrupt:
        status = Status.INTERRUPTED
    if status == Status.MAX_ITER:
        warnings.warn(f"fastnewton.solve stopped at max_iter = {options.max_iter} before reaching tol = "
                      f"{options.tol:g}", ConvergenceWarning, stacklevel=3)
    if status == Status.CONVERGED:
        dead = problem.diagnose(ev)
        if dead:
            status, detail = Status.DEAD_STATIONARY, dead
    return _result(ev, x0, start, options, status, history, g_ref, clock, detail, n_iter)


_TABLE_HEADER = f"{'iter':>5} {'loss':>14} {'|g|/g_ref':>10} {'step':>8} {'damping':>9} {'trials':>6} {'seconds':>8}"


def _record(history, n_iter, ev, grad_norm, g_ref, step, timer, clock, options, system_info=None):
    info = {
        "iter": n_iter,
        "loss": ev.loss,
        "grad_norm": grad_norm,
        "rel_grad_norm": grad_norm / g_ref if g_ref > 0 else 0.0,
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


def _result(ev, x0, start, options, status, history, g_ref, clock, detail="", n_iter=0):
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
    res.update(fun=res["loss"], jac=ev.grad.copy(), nit=n_iter, success=res["converged"])
    if options.verbose:
        print(f"{message} iterations={n_iter} loss={res['loss']:.6e} |g|/g_ref={res['rel_grad_norm']:.3e} "
              f"time={res['time']:.3f}s")
    return res
