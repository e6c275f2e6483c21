"""The globalised (damped, line-searched) Newton loop, written against ``Problem`` and a Hessian strategy.

Per iteration: 1) u = Cx (carried from the line search as u + t·CΔx, a forward pass only
every ``REFRESH_EVERY`` iterations or when the steps since the last one were long), 2) model vectors and the fused gradient pass
Cᵀ[q, U], 3) the Hessian from the strategy, 4) a damped Newton step: Cholesky of
H + μD² (Levenberg–Marquardt μ raised when Cholesky fails or the line search
rejects the step, and set after each step by its gain ratio: kernels/damping.py; loss terms
½ max(y_j, 0)² keep their kinks in the step's model: fastnewton.active_set; relu_softmax's rows at a ReLU kink
are held there, and a point at such kinks is stationary when its least-norm Clarke subgradient meets the
stopping test: fastnewton.kinks), a logit cap
‖CΔx‖∞ ≤ 10 (one pass C·Δx, reused by every line search trial as u + t·CΔx), and Armijo
backtracking on L (a well-predicted damped step also tries one longer step).
"""
import copy
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from .active_set import one_sided_gain_ratio, one_sided_step
from .kernels.damping import (FIRST_INCREASE, GOOD_GAIN, damping_after, extended_length, gain_ratio, longer_trial,
                              raised_damping)
from .kernels.kinks import HELD_FULL, HELD_SHORT
from .kernels.reduce import gradient_rounding_bounds
from .kinks import KINK_RTOL, NO_ROWS, Kinks, held_ratio, kink_stationary_text
from .protocol import no_timer
from .reductions import dot, norm
from .result import MESSAGES, ConvergenceWarning, SolveResult, Status, relative_gradient_norm
from .timing import PhaseTimer

ARMIJO_C1 = 1e-4
BACKTRACK_FACTOR = 0.5
MAX_BACKTRACKS = 40
# μ runs from 0 to 1e-8·scale, then up by ×2, ×4, ×8, … per failure (kernels/damping.py): the 13th
# try is past 1e12·scale, where the step is a tiny gradient step that must decrease L unless L is
# flat to rounding; 20 leave room for an iteration that starts from a μ far below the one it needs.
MAX_DAMPING_TRIES = 20
# Beyond ~10 the softmax saturates to one-hot and every gradient underflows to 0.
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
    # Whether a model with a staged solve (``softmax_relu``) runs its stages from the start (``solve``'s
    # ``continuation``); False: one Newton loop on the real loss from it.
    continuation: bool = True


@dataclass
class Step:
    """An accepted step: the new x, its length t, the damping μ used, trials, ‖t·p‖, the line it
    was taken on (whose ``evaluate(t)`` carries u), and its gain ratio (``kernels.damping.gain_ratio``)."""

    x: np.ndarray
    length: float
    damping: float
    trials: int
    norm: float
    line: object = None
    gain_ratio: float = 1.0
    # The rows it held at their ReLU kink (``fastnewton.kinks``).
    held: np.ndarray = field(default_factory=lambda: NO_ROWS)


@dataclass
class CarriedForward:
    """How far u = Cx has been carried as u + t·Cp since a forward pass formed it (the rule above)."""

    steps: int = 0
    path: float = 0.0  # ‖x‖ at the last forward pass + Σ ‖t·p‖ since

    def fresh(self, step):
        """Whether u at step.x is formed by a forward pass (the rule above) rather than carried; counts the step."""
        self.steps += 1
        self.path += step.norm
        x_norm = norm(step.x)
        if step.line is None or self.steps >= REFRESH_EVERY or self.path > MAX_CARRIED_PATH * x_norm:
            self.steps, self.path = 0, x_norm
            return True
        return False

    def evaluate(self, problem, step, timer):
        """The evaluation at step.x: u carried along the step's line, or a forward pass when due."""
        if self.fresh(step):
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


def non_finite_detail(loss, grad, grad_norm, where):
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


NO_STEP_DETAIL = "No step along the Newton direction decreases it at any damping."


def non_finite_hessian_detail(where):
    """Why no step was found where the loss and gradient are finite but the Newton system is not (|C_ij| ≳ 1e154:
    Cᵀ diag(β) C overflows before the gradient does): the same advice as ``non_finite_detail``'s."""
    return (f"the Hessian has non-finite entries {where} (the loss and gradient are finite): the scale of C, b, V, "
            f"row_weights or l2 is too large for float64 arithmetic; rescale the problem (e.g. divide C by its "
            f"largest entry) or reduce l2 / row_weights.")


def rounding_converged_detail(bound):
    """The CONVERGED message's detail (its whole sentence: ``status_message``) of a stall within ``bound``, the
    bound on ∇L(0)'s rounding, where ∇L(0) itself was within it (``NewtonRun.stopping``)."""
    return (f"∇L(0) is zero to rounding (‖∇L(0)‖ ≤ {bound:.3e}, the bound on its rounding error), so b carries no "
            "signal beyond rounding (e.g. a constant target) and tol·g_ref lies below what float64 resolves; the "
            f"loss stopped decreasing beyond rounding with ‖∇L(x)‖ within that bound: x is stationary to working "
            "precision.")


def stall_detail(kink, loss, grad_norm, g_ref):
    """The STALLED message's detail: the kink sentence (or None) and the stagnation sentence."""
    detail = (kink or "") + (
        f" The loss ({loss:.6e}) has not decreased beyond rounding error and the gradient norm "
        f"has not halved in {STALL_WINDOW} iterations (‖∇L‖/g_ref = {grad_norm / g_ref:.3e}).")
    return detail.strip()


def status_message(status, detail=""):
    """The stop message: the status's sentence, completed or followed by ``detail``."""
    message = MESSAGES[status]
    if detail and status == Status.CONVERGED:
        # A stop at ReLU kinks (``kink_stationary_text``) or within ∇L(0)'s rounding bound
        # (``rounding_converged_detail``): the test it met was not the relative one, so its sentence replaces it.
        return "Converged: " + detail
    if detail:
        # The dead-stationary message ends in ": " and the detail completes its sentence.
        message += detail if status == Status.DEAD_STATIONARY else " " + detail
    return message


def column_scale(problem):
    """D_j = ‖C_j‖, the fixed column scale of the steps and of the column-scaled stopping test.

    A zero (or overflowing: the start then reports it) column leaves its gradient entry unscaled."""
    with np.errstate(over="ignore"):
        norms = problem.column_norms()
    return np.where(np.isfinite(norms) & (norms > 0.0), norms, 1.0)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel():
    """The ``stacklevel`` that attributes a warning issued by the caller of this function to the first
    frame outside the package (the user's call, however deep the package's own frames are)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    return level


def warn_max_iter(options):
    """The ConvergenceWarning of a solve that stopped at max_iter, attributed to the user's call of ``solve``."""
    warnings.warn(f"fastnewton.solve stopped at max_iter = {options.max_iter} before reaching tol = "
                  f"{options.tol:g}", ConvergenceWarning, stacklevel=user_stacklevel())


def run_rounds(rounds, answer):
    """Drive a generator that yields requests for passes over C: each request gets ``answer(request)``
    at once; returns the generator's return value (the single-problem path of ``solve_many``'s rounds)."""
    try:
        request = next(rounds)
    except StopIteration as stop:
        return stop.value
    return run_rounds_from(rounds, answer(request), answer)


def run_rounds_from(rounds, reply, answer):
    """``run_rounds`` of a generator that has yielded its first request, answered by ``reply``."""
    try:
        request = rounds.send(reply)
        while True:
            request = rounds.send(answer(request))
    except StopIteration as stop:
        return stop.value


def newton_step_rounds(problem, ev, system, mu, max_logit_step=MAX_LOGIT_STEP, timer=None, counts=None,
                       kinks=None):
    """``newton_step`` as a generator: yields each direction p (an array) whose line x + t·p it needs (the
    pass C·p) and is sent that ``Line``, and each Hessian-vector product a CG step asks for (a request
    with ``run()``: ``fastnewton.hessian.HessianProduct``) and is sent ∇²L·v; returns the ``Step`` (or
    None). ``solve_many`` answers those of many problems with shared passes; ``newton_step`` each at once."""
    timer = timer or no_timer
    scale = system.scale
    g = ev.grad
    L0 = ev.loss
    noise = _rounding_level(L0, problem.target_norm())
    increase = FIRST_INCREASE  # ν of the next raise (kernels/damping.py)
    # Loss terms ½ max(y_j, 0)² (softmax_relu's outputs with b_j = 0) keep their kinks in the step's model
    # (fastnewton.active_set); only where the system has a factor (with CG each solve costs passes over C).
    one_sided = problem.one_sided_outputs(ev) if system.hessp is None else None
    # relu_softmax's rows at (or zig-zagging across) their ReLU kink are held there (``fastnewton.kinks``).
    for _ in range(MAX_DAMPING_TRIES):
        refined = False
        held = NO_ROWS
        curvature = None  # a held CG step's pᵀHp (``Kinks.step_rounds``)
        with timer("solve"):
            p = yield from system.solve_rounds(g, mu)
            if one_sided is not None and p is not None and _all_finite(p) and dot(g, p) < 0.0:
                p, refined = one_sided_step(system, g, mu, p, *one_sided)
            if kinks is not None and p is not None and _all_finite(p) and dot(g, p) < 0.0:
                p, held, curvature = yield from kinks.step_rounds(system, g, mu, p)
                refined = held.size > 0
        if p is None or not _all_finite(p) or not dot(g, p) < 0.0:
            mu, increase = raised_damping(mu, increase, scale)
            continue
        line = yield p
        with timer("line_search"):
            cap = 1.0
            if line.largest > max_logit_step:
                cap = max_logit_step / line.largest
                line.scale(cap)
            slope = dot(g, line.p)
            scaled = line.p * system.column_scale
            scaled2 = dot(scaled, scaled)

            # sᵀHs of s = line.p (p shortened by the cap)
            line_curvature = None if curvature is None else curvature * cap * cap

            def ratio_of(t, L_t):
                if held.size:
                    return held_ratio(system, g, t * line.p, L0 - L_t, noise,
                                      None if line_curvature is None else t * t * line_curvature)
                if refined:
                    return one_sided_gain_ratio(system, g, *one_sided, t * line.p, L0 - L_t, noise)
                return gain_ratio(L0 - L_t, t * slope, t * t * scaled2, mu, t * cap, noise)

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
                    ratio = ratio_of(t, L_t)
                    if trial == 1 and armijo and ratio > GOOD_GAIN:
                        # A damped step that the model predicted well: one more O(n) trial at the
                        # undamped model's minimiser along the line (kernels/damping.py); for a refined
                        # step qᵀHq comes from the system's matrix (its damped identity does not hold).
                        if refined and mu > 0.0:
                            pHp = line_curvature if line_curvature is not None else dot(line.p, system.matrix @ line.p)
                            longer = longer_trial(slope, pHp, line.largest, max_logit_step)
                        else:
                            longer = extended_length(slope, scaled2, mu, cap, line.largest, max_logit_step)
                        if longer > 1.0:
                            trial += 1
                            L_longer = line.loss(longer)
                            if counts is not None:
                                counts["nfev"] += 1
                            if (np.isfinite(L_longer) and L_longer < L_t
                                    and L_longer <= L0 + ARMIJO_C1 * longer * slope):
                                t, L_t = longer, L_longer
                                ratio = ratio_of(t, L_t)
                    return Step(ev.x + t * line.p, t, mu, trial, t * norm(line.p), line, ratio, held)
                t *= BACKTRACK_FACTOR
        mu, increase = raised_damping(mu, increase, scale)
    return None


def newton_step(problem, ev, system, mu, max_logit_step=MAX_LOGIT_STEP, timer=None, counts=None, kinks=None):
    """One damped Newton step from ev.x: ``Step``, or None when no damping gives an accepted step.

    Solves (H + μD²) p = −g with ``system``, raising μ (from 1e-8·scale by ×2, ×4, ×8, …:
    ``kernels.damping.raised_damping``) while the solve fails or p is not a descent direction
    (with one-sided loss terms ½ max(y_j, 0)², p minimises the model that keeps their kinks:
    ``fastnewton.active_set``, with that model's gain ratio);
    caps the logit change ‖C p‖∞ ≤ ``max_logit_step`` (one pass C·p, reused by every trial);
    backtracks (×½) until Armijo holds, or the full step keeps L within rounding of L(x) when the
    predicted decrease is itself below rounding. A full damped step with gain ratio > GOOD_GAIN
    gets one more trial, longer (t ≤ MAX_EXTENSION, within the logit cap), at the minimiser of the
    undamped model along the line (``kernels.damping.extended_length``), kept if L is lower there.
    Records the accepted step's gain ratio (which sets the next iteration's μ: ``NewtonRun.accept``).
    ``counts["nfev"]`` (if given) counts the line search's loss evaluations.
    """
    timer = timer or no_timer

    def line(p):
        if not isinstance(p, np.ndarray):  # a Hessian-vector product of CG (``newton_step_rounds``)
            return p.run()
        with timer("line_search"):
            # C·p summed by CG from its products' passes, when it kept them (NewtonSystem.forward_of)
            Cp = system.forward_of(p)
            return problem.line(ev, p) if Cp is None else problem.line(ev, p, Cp)

    return run_rounds(newton_step_rounds(problem, ev, system, mu, max_logit_step, timer, counts, kinks), line)


@dataclass
class References:
    """The scales of the stopping test, fixed for a solve: ‖b‖, D_j = ‖C_j‖, ∇L(0) and the bound R·D_j on the
    rounding error of ∇L(0)'s entry j (``gradient_rounding``; 0: no bound)."""

    target_norm: float
    column_scale: np.ndarray
    grad_at_zero: np.ndarray
    gradient_rounding: float = 0.0

    @classmethod
    def of(cls, problem, column_scale_=None, grad_at_zero=None):
        """``problem``'s references (its column scale and ∇L(0) given when formed already)."""
        return cls(problem.target_norm(), column_scale(problem) if column_scale_ is None else column_scale_,
                   problem.gradient_at_zero() if grad_at_zero is None else grad_at_zero,
                   problem.row_model.reference().gradient_rounding(problem.n, problem.facts, ROUNDING_FACTOR))


class NewtonRun:
    """One Newton solve's state and its per-iteration decisions (start checks, stopping tests,
    progress, damping, records, callback, final status), apart from the passes over C.

    ``newton_solve`` runs one; ``fastnewton.many_targets`` runs many in lock-step, doing the passes
    over C of all unfinished ones together. Use: ``begin(ev)`` at x0; then while ``not stopping()``:
    a system, a step (``newton_step_rounds``), ``no_step()`` when there is none, else the new
    evaluation (``carried``) and ``accept(step, new_ev, system)``; finally ``result()``.
    ``finished`` is True once a status is set.
    """

    def __init__(self, problem, x0, start, options, references, timer=None, clock=None):
        self.problem, self.x0, self.start = problem, x0, start
        self.timer = timer if timer is not None else PhaseTimer()
        self.clock = clock if clock is not None else time.perf_counter()
        # scipy's nfev / njev / nhev: loss evaluations (line-search trials too), gradients, Hessians built.
        self.counts = {"nfev": 1, "njev": 1, "nhev": 0}
        self.rng = np.random.default_rng(options.seed)
        self.target_norm = references.target_norm
        self.grad_at_zero = references.grad_at_zero
        self.gradient_rounding = references.gradient_rounding
        self.options = replace(options, column_scale=references.column_scale)
        self.status = None
        self.detail = ""
        # Whether a STALLED stop found x at a ReLU kink (the staged start of softmax_relu ends there).
        self.at_kink = False
        # relu_softmax's kink rows at the current iterate (``fastnewton.kinks``), the per-row state the kink test
        # keeps between iterations (the problem's ``kink_states``: previous u, sign flips, what the last step did to
        # each row), and the least-norm Clarke subgradient's norm of a stop at a kink.
        self.kinks = None
        self.kink_states = None
        self.subgradient_norm = None
        self.n_iter = 0
        self.history = []
        self.g_ref = 0.0

    def scaled_norm(self, g):
        return norm(g / self.options.column_scale)

    def begin(self, ev):
        """Set up from the evaluation at x0; False when the solve ends there (non-finite values)."""
        self.ev = ev
        self.grad_norm = _norm_or_inf(ev.grad)
        g_ref_zero = _norm_or_inf(self.grad_at_zero)
        detail = (non_finite_detail(ev.loss, ev.grad, self.grad_norm, "at the starting point")
                  or non_finite_detail(0.0, self.grad_at_zero, g_ref_zero, "at x = 0 (the reference gradient g_ref)"))
        if detail:
            self.status, self.detail = Status.NON_FINITE, detail
            return False
        # Independent of the start, so runs from different starts (and peers) meet one criterion;
        # ‖∇L(x0)‖ only where ∇L(0) = 0.
        self.g_ref = g_ref_zero if g_ref_zero > 0 else self.grad_norm
        scaled_zero = self.scaled_norm(self.grad_at_zero)
        self.scaled_g_ref = scaled_zero if g_ref_zero > 0 else self.scaled_norm(ev.grad)
        # ∇L(0) within the bound on its own rounding (b constant to rounding: softmax(0) is then optimal, and
        # ∇L(0) is rounding, not a scale): tol·g_ref is below what any evaluation resolves (``stopping``).
        self.rounding_bounds = gradient_rounding_bounds(self.gradient_rounding, self.options.column_scale)
        self.at_rounding = g_ref_zero <= self.rounding_bounds[0] and scaled_zero <= self.rounding_bounds[1]
        self.carried = CarriedForward(path=norm(self.x0))
        _record(self.history, 0, ev, self.grad_norm, self.g_ref, None, self.timer, self.clock, self.options,
                self.problem.iteration_extras())
        self.mu = 0.0
        self.lowest_loss, self.lowest_grad_norm, self.last_progress = ev.loss, self.grad_norm, 0
        self.kink_states = self.problem.kink_states(ev)
        return True

    @property
    def finished(self):
        return self.status is not None

    def stopping(self):
        """The stopping tests before an iteration: True (status set) to stop, else count the iteration."""
        options, ev = self.options, self.ev
        if (self.grad_norm <= options.tol * self.g_ref
                and self.scaled_norm(ev.grad) <= options.tol * self.scaled_g_ref):
            self.status = Status.CONVERGED
        elif self.stationary_at_kink():
            self.status = Status.CONVERGED
        elif self.n_iter >= options.max_iter:
            self.status = Status.MAX_ITER
        elif (self.n_iter - self.last_progress >= STALL_WINDOW and self.at_rounding
              and self.grad_norm <= self.rounding_bounds[0] and self.scaled_norm(ev.grad) <= self.rounding_bounds[1]):
            # A stall where ∇L(0) is rounding, with ‖∇L(x)‖ within the same bound: converged to working precision
            # (the iterate is the stall's, as ever: no accuracy is given up for the status).
            self.status = Status.CONVERGED
            self.detail = rounding_converged_detail(self.rounding_bounds[0])
        elif self.n_iter - self.last_progress >= STALL_WINDOW:
            self.status = Status.STALLED
            kink = self.kink_states.stall_sentence(ev) if self.kink_states is not None else None
            self.at_kink = kink is not None
            self.detail = stall_detail(kink, ev.loss, self.grad_norm, self.g_ref)
        else:
            self.n_iter += 1
            return False
        return True

    def stationary_at_kink(self):
        """Whether x sits at relu_softmax's ReLU kinks with a least-norm Clarke subgradient that passes the
        gradient test (then the detail says so); sets this iteration's kink rows for its step."""
        self.kinks = Kinks.at(self.problem, self.ev, self.kink_states, KINK_RTOL)
        if self.kinks is None or not self.kinks.at_kink:
            return False
        count, subgradient_norm, scaled = self.kinks.stationarity(self.ev.grad, self.options.column_scale)
        tol = self.options.tol
        if subgradient_norm <= tol * self.g_ref and scaled <= tol * self.scaled_g_ref:
            self.detail, self.subgradient_norm = kink_stationary_text(count), subgradient_norm
            return True
        return False

    def build_system(self, build_system, **kwargs):
        """This iteration's Newton system (``kwargs`` go to the strategy, e.g. a sandwich formed already)."""
        with self.timer("hessian"):
            system = build_system(self.problem, self.ev, self.rng, self.options, self.g_ref, **kwargs)
        self.counts["nhev"] += 1
        return system

    def step_rounds(self, system):
        """This iteration's ``newton_step_rounds`` (a generator yielding directions p)."""
        return newton_step_rounds(self.problem, self.ev, system, self.mu, self.options.max_logit_step, self.timer,
                                  self.counts, self.kinks)

    def no_step(self, system):
        """No step at any damping: a stall, or, where ``system`` itself is not finite, NON_FINITE saying so (a stall
        "at any damping" hid an overflowing Hessian)."""
        if system.finite:
            self.status, self.detail = Status.STALLED, NO_STEP_DETAIL
        else:
            self.status, self.detail = Status.NON_FINITE, non_finite_hessian_detail(f"at iteration {self.n_iter}")

    def accept(self, step, new_ev, system):
        """Move to the evaluation after ``step``; may set a status (non-finite values, the callback)."""
        self.counts["nfev"] += 1
        self.counts["njev"] += 1
        n_iter = self.n_iter
        new_grad_norm = _norm_or_inf(new_ev.grad)
        detail = non_finite_detail(new_ev.loss, new_ev.grad, new_grad_norm, f"at iteration {n_iter}")
        if detail:
            self.status, self.detail = Status.NON_FINITE, detail
            return
        if (new_ev.loss < self.lowest_loss - _rounding_level(self.lowest_loss, self.target_norm)
                or new_grad_norm <= GRADIENT_PROGRESS * self.lowest_grad_norm):
            self.last_progress = n_iter
        self.lowest_loss = min(self.lowest_loss, new_ev.loss)
        self.lowest_grad_norm = min(self.lowest_grad_norm, new_grad_norm)
        if self.kink_states is not None:
            # Rows held at the kink by a step taken in full (t = 1 within the logit cap) sit there (kernels/kinks.py).
            self.kink_states.after_step(self.ev, step.held, HELD_FULL if step.held.size and step.length == 1.0
                                        and step.line.factor == 1.0 else HELD_SHORT)
        self.ev, self.grad_norm = new_ev, new_grad_norm
        self.mu = damping_after(step.damping, step.length >= 1.0, step.gain_ratio, system.scale)
        scaled_g_ref = self.scaled_g_ref
        info = _record(self.history, n_iter, new_ev, new_grad_norm, self.g_ref, step, self.timer, self.clock,
                       self.options,
                       {**system.info, **self.problem.iteration_extras(),
                        "rel_scaled_grad_norm": self.scaled_norm(new_ev.grad) / scaled_g_ref if scaled_g_ref > 0
                        else 0.0})
        if self.options.callback is not None:
            try:
                # a deep copy: a callback that edits the record (its "seconds", say) leaves the history as it was
                stop = _callback_stops(self.options.callback(dict(copy.deepcopy(info), x=new_ev.x.copy())))
            except StopIteration:
                stop = True
            if stop:
                self.status = Status.CALLBACK

    def result(self):
        """The ``SolveResult`` (a finished run; warns at max_iter, diagnoses dead stationary points)."""
        options = self.options
        if self.status == Status.NON_FINITE and not self.history:
            return _result(self.ev, self.x0, self.start, options, self.status, [], 0.0, self.clock,
                           detail=self.detail, counts=self.counts)
        if self.status == Status.MAX_ITER and options.warn_at_max_iter:
            warn_max_iter(options)
        if self.status == Status.CONVERGED:
            dead = self.problem.diagnose(self.ev)
            if dead:
                self.status, self.detail = Status.DEAD_STATIONARY, dead
        res = _result(self.ev, self.x0, self.start, options, self.status, self.history, self.g_ref, self.clock,
                      self.detail, self.n_iter, self.counts)
        res["at_kink"] = self.at_kink
        if self.subgradient_norm is not None and self.status == Status.CONVERGED:
            res["subgradient_norm"] = self.subgradient_norm
        return res


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
    The decisions are ``NewtonRun``'s, shared with ``solve_many(C, B)``.

    The same control logic exists a second time, compiled, in kernels/small_newton.py (``solve_many``
    of many small softmax / relu_softmax problems, where no Python may run per iteration) and a third
    time in kernels/small_softmax_relu.py (the Newton loops of softmax_relu's stages, with the one-sided
    step of ``fastnewton.active_set``): a change to the decisions here (damping, line search, carried u,
    stopping and stagnation tests) must be made there too; tests/test_solve_many_small.py compares them
    with this loop problem by problem.
    """
    timer = timer if timer is not None else PhaseTimer()
    clock = clock if clock is not None else time.perf_counter()
    ev = problem.evaluate(x0, timer=timer)
    # After the evaluation at x0: from x0 = 0 that evaluation is ∇L(0) (``Problem.gradient_at_zero``).
    with timer("reference"):  # ‖b‖, the column norms and ∇L(0): the scales of the stopping test
        references = References.of(problem)
    run = NewtonRun(problem, x0, start, options, references, timer, clock)
    if not run.begin(ev):
        return run.result()
    try:
        while not run.stopping():
            # 3) Hessian
            system = run.build_system(build_system)
            # 4) damped Newton step with logit cap and Armijo line search
            step = newton_step(problem, run.ev, system, run.mu, options.max_logit_step, timer, run.counts, run.kinks)
            if step is None:
                run.no_step(system)
                break
            # 1) u at the new iterate (carried along the line, or a forward pass when due) and 2) gradient pass
            run.accept(step, run.carried.evaluate(problem, step, timer), system)
            # The step holds its line: the old evaluation, C·p and the trials' arrays. Let them go
            # now, not when the next step replaces it, so that the next Hessian and line search reuse
            # this memory (``fastnewton.buffers``): fresh arrays cost their page faults again.
            del step
            if run.finished:
                break
    except KeyboardInterrupt:
        run.status = Status.INTERRUPTED
    return run.result()


@dataclass
class NewtonRequest:
    """A Newton loop asked for by a start with stages of its own (``Model.auto_solve_rounds``): the
    arguments of ``newton_solve``. ``solve`` runs each at once; ``solve_many`` runs those of many
    problems in lock-step."""

    problem: object
    x0: np.ndarray
    start: str
    build_system: object
    options: SolveOptions
    timer: object = None
    clock: object = None

    def run(self):
        return newton_solve(self.problem, self.x0, self.start, self.build_system, self.options, self.timer,
                            self.clock)


def run_requests(rounds):
    """Drive a generator of requests (``NewtonRequest``, ``fastnewton.start.NormalSystemRequest``), answering
    each with its own ``run()`` at once; its return value."""
    return run_rounds(rounds, lambda request: request.run())


_TABLE_HEADER = f"{'iter':>5} {'loss':>14} {'|g|/g_ref':>10} {'step':>8} {'damping':>9} {'trials':>6} {'seconds':>8}"


def _record(history, n_iter, ev, grad_norm, g_ref, step, timer, clock, options, system_info=None):
    info = {
        "iter": n_iter,
        "loss": ev.loss,
        "grad_norm": grad_norm,
        "rel_grad_norm": relative_gradient_norm(grad_norm, g_ref),
        "g_ref": g_ref,
        "step": step.length if step else 0.0,
        "step_norm": step.norm if step else 0.0,
        "damping": step.damping if step else 0.0,
        "line_search_trials": step.trials if step else 0,
        # actual / predicted decrease of L: near 1 where the quadratic model holds; sets the next damping
        "gain_ratio": step.gain_ratio if step else 0.0,
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
    message = status_message(status, detail)
    grad_norm = norm(ev.grad) if _all_finite(ev.grad) else float("nan")
    x = ev.x.copy() if _all_finite(ev.x) else x0.copy()
    res = SolveResult(
        x=x,
        loss=ev.loss,
        grad_norm=grad_norm,
        rel_grad_norm=relative_gradient_norm(grad_norm, g_ref, status),
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
