"""Hessian strategies (``solve``'s ``hessian=``): each builds, per iteration, a ``NewtonSystem`` that solves (H + μD²) p = −g
(D: the fixed column scale, so that the steps do not depend on the scale of C's columns; see ``NewtonSystem``).

- ``exact``: H = Cᵀ diag(β) C + P S Pᵀ + λI (sparse sandwich O(Σᵢ nnzᵢ²); dense: blocked SYRK,
  O(n d²/2)); Cholesky.
- ``sketch``: H̃ = CᵀD̃C + P S Pᵀ + λI with D̃ a leverage-score sample of diag(β)
  (``fastnewton.sketching``), a fresh sample each iteration, its scores from a reference Gram
  matrix kept while the samples certify it (``LeverageReference``); Cholesky. Linear local convergence.
  From x0="auto" it offers the start a fit on a sample by the same reference (``start_sample``), as pcg does.
- ``pcg``: conjugate gradients on the exact Hessian-vector product (one read of C each: ``sandwich_vector``),
  preconditioned by the Cholesky factor of H̃ + μD²; forcing term η = min(0.5, ‖g‖/g_ref) for
  quadratic local convergence at near-sketch cost (``_forcing``). From x0="auto" (softmax, dense C)
  H̃'s sandwich is first the start's own fit matrix, with no sample at all (``PreconditionerSystems``).
- ``lagged``: an ``exact`` iteration, then up to LAGGED_STEPS iterations that form no sandwich: CG
  on the exact Hessian-vector product (one read of C each), preconditioned by the exact
  iteration's Cholesky factor (of the Hessian one or two iterates back), forcing term as ``pcg``'s.
- ``auto``: the least predicted time to tol, from work counts and measured rates
  (``strategy_seconds``, ``fastnewton.rates``); of strategies priced within 5% of it, the one
  with the fewest Newton iterations in practice (exact, lagged, pcg, sketch: ``NEAR_TIE_MARGIN``).
"""
import copy
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from . import rates, threads
from .chunking import chunk_rows
from .kernels.damping import FIRST_DAMPING
from .kernels.kinks import small_spd_solve
from .kernels.reduce import add_scaled, scale_into
from .kernels.sketch import expected_poisson_sizes, expected_poisson_sizes_parallel
from .matrix import estimated_sandwich_work
from .newton import REFRESH_EVERY, column_scale, run_rounds
from .reductions import all_finite, dot, norm
from .start import FitSample
from .sketching import (
    EMBED_ROWS_PER_COLUMN,
    JL_DIM,
    OSNAP_NNZ,
    PRECONDITIONER_SAMPLE_CONSTANT,
    SAMPLE_CONSTANT,
    LeverageReference,
    sample_size,
    uncentred_sandwich,
)

STRATEGIES = ("auto", "exact", "sketch", "pcg", "lagged")
# The start's stream is child START_STREAM of the seed's SeedSequence (``start_rng``).
START_STREAM = 1
MAX_CG_ITERATIONS = 100
MAX_FORCING = 0.5
# CG need not make the step's linear residual (the gradient the step predicts) smaller than this
# fraction of the stopping test's tol·g_ref (``_forcing``): the forcing term min(0.5, ‖g‖/g_ref) alone
# asked the last step for a residual of 1e-13·g_ref where 1e-8·g_ref ends the solve. Measured, dense
# 10⁶ × 512, 10% noise, pcg: the last step from 3e-8·g_ref took 2 CG iterations to 1.6e-10 (with 0.1)
# and 1 to 1.4e-9 (with 0.25). (Aiming CG at it from further away does not save the next Newton
# iteration there: the quadratic term alone left 3e-8·g_ref after 3 more CG iterations.) 0.5, not 0.25:
# dense 10⁵ × 256, ridge 10⁻³ of the curvature scale, 1% noise, pcg from x0="auto", seeds 0–3: the last
# step from ~1e-6·g_ref took 3 CG iterations to 1.4–1.8e-10 with 0.25 and 2 to 2.8–3.3e-9 with 0.5 (10%
# noise: 2 → 1, to 4.9e-9), Newton iterations unchanged; 1.0 ended dense 3·10⁵ × 256 at 9.3e-9, too
# close to tol for the column-scaled residual's spread (tests/test_hessian.py's forcing cases).
OVERSOLVE_MARGIN = 0.5
# pcg from x0="auto": the start's fit matrix preconditions CG as long as each step's CG meets its
# forcing term within this many iterations; a step that does not (the truncated CG's iterate is still
# a descent direction) retires it for the rest of the solve (``PreconditionerSystems``). Measured with
# it: 1–4 CG iterations per step on noisy dense softmax (1% and 10% noise); a sampled H̃ needs 4–7.
START_PRECONDITIONER_MAX_CG = 8
# pcg: when the sampled H̃ + μI has no Cholesky factor (β of mixed sign), only the
# preconditioner is shifted, by ν = FIRST_DAMPING·scale (10⁻⁸·scale), ×10 per failure, at most this many times.
MAX_PRECONDITIONER_SHIFTS = 20
# lagged: sandwich-free iterations after each exact one (their preconditioner ages by one per iteration).
LAGGED_STEPS = 2
# ... whose CG reuses the exact iteration's factor at any damping within this factor of it: a
# new Cholesky per move of μ (÷10 after a good step, ×2, ×4, … on failures) cost as much as the
# CG iterations it saved (d = 1024). Two good steps (÷10, ÷10) land on the ratio 100 itself, up to the last bit
# of μ's rounding; the slack (1e-9 relative) counts that as within, as intended, whatever that bit (it
# differed between solve and the compiled loop of solve_many, whose damping scales round differently, and
# decided between reusing the factor and forming one: x then moved by 1e-4 at that step).
LAGGED_SHIFT_RATIO = 100.0 * (1.0 + 1e-9)


@dataclass
class NewtonSystem:
    """The matrix the step factors (H or H̃), plus how to solve with it; ``info`` goes to the history.

    Steps are solved in scaled columns: with the fixed column scale D (``column_scale``, the solver
    passes D_j = ‖C_j‖), the system is (D⁻¹HD⁻¹ + μI) p̂ = −D⁻¹g, p = D⁻¹p̂, i.e. (H + μD²) p = −g.
    Multiplying a column of C by any factor multiplies D_j by it too, so the scaled matrix, μ and
    every step (up to that column's entry) are unchanged: columns scaled 1e-12..1e12 factor like unit
    columns (an unscaled H + μI has condition ~1e48 there, and μ is set by the largest column alone).
    D is fixed, not diag(H): near an indefinite point diag(H) has tiny or negative entries, and
    Marquardt damping μ·|diag H| then needed μ ~ 1e-2 along a softmax_relu valley (2.5× the
    iterations); with D = ‖C_j‖ unit-scale problems are damped exactly as with μI.
    The exact case is written a second time, compiled, in kernels/small_newton.py and
    kernels/small_softmax_relu.py (``solve_many`` of many small problems), and so is the lagged one without held
    rows (kernels/small_newton.py's ``_preconditioner`` and ``_cg_step``, softmax); they must stay the same
    (tests/test_solve_many_small.py).
    """

    matrix: np.ndarray
    hessp: object = None
    forcing: float = 0.0
    info: dict = field(default_factory=dict)
    column_scale: object = None
    # Cholesky factors of the scaled matrix + shift·I by shift: a lagged system reuses its exact system's.
    factors: dict = field(default_factory=dict)
    # > 1: the preconditioner may be a factor at a shift within this factor of μ (``_reused_factor``).
    reuse_shift_ratio: float = 1.0
    # CG stops here even short of the forcing term (info["cg_truncated"]); its iterate is the step.
    max_cg_iterations: int = MAX_CG_ITERATIONS
    # (the last step solve returned, its C·step summed by CG) when hessp keeps its passes (``forward_of``).
    step_forward: tuple = field(default=None, repr=False)

    def __post_init__(self):
        if self.column_scale is None:
            self.column_scale = np.ones(self.matrix.shape[0])
        self._scaled = self.matrix / np.outer(self.column_scale, self.column_scale)

    @property
    def finite(self):
        """Whether the scaled matrix has only finite entries (else no damping makes it usable)."""
        return all_finite(self._scaled)

    @property
    def scale(self):
        """The largest |diagonal entry| of the scaled matrix (1 if all are zero): μ is relative to it."""
        return float(np.max(np.abs(np.diag(self._scaled)))) or 1.0

    def _factor(self, shift):
        if shift not in self.factors:
            try:
                self.factors[shift] = scipy.linalg.cho_factor(self._scaled + shift * np.eye(self._scaled.shape[0]),
                                                              lower=True, check_finite=False)
            except (np.linalg.LinAlgError, ValueError):
                self.factors[shift] = None
        return self.factors[shift]

    def preconditioning(self, hessp, forcing, info):
        """This system's matrix (and the factors it has computed) as the preconditioner of CG on the
        exact Hessian-vector product ``hessp``: a lagged system, whose steps need no new sandwich."""
        system = copy.copy(self)
        system.hessp, system.forcing, system.info = hessp, forcing, info
        system.reuse_shift_ratio = LAGGED_SHIFT_RATIO
        system.step_forward = None
        return system

    def solve(self, g, mu):
        """p with (H + μD²) p ≈ −g, or None when it is not positive definite (raise μ).

        Cholesky strategies factor the matrix itself. pcg factors H̃ + μD² only to precondition
        CG on the exact H + μD²: a sampled H̃ may be indefinite (β of mixed sign) where H is not,
        so it is shifted further (the preconditioner alone) until it factors; whether H + μD²
        is positive definite is CG's to detect (negative curvature).
        """
        return run_rounds(self.solve_rounds(g, mu), HessianProduct.run)

    def solve_rounds(self, g, mu):
        """``solve`` as a generator: yields each Hessian-vector product CG needs as a ``HessianProduct``
        and is sent ∇²L·v (``solve_many`` forms the products of many problems with shared passes over C);
        returns the step (or None)."""
        if not self.finite:
            return None
        scaled_g = g / self.column_scale
        if self.hessp is None:
            factor = self._factor(mu)
            if factor is None:
                return None
            return -scipy.linalg.cho_solve(factor, scaled_g, check_finite=False) / self.column_scale
        factor = self._preconditioner(mu)
        if factor is None:
            return None
        solved = yield from self._pcg(factor, scaled_g, mu)
        if solved is None:
            return None
        step = solved.p / self.column_scale
        self.step_forward = (step, solved.forward)
        return step

    def held_solve_rounds(self, g, mu, rows, u):
        """For a CG system (``hessp``): the step of (H + μD²) p ≈ −g with the rows ``rows`` of C (dense, K × d)
        held where rows·p = −u (fastnewton.kinks: relu_softmax's rows at the ReLU kink), by projected CG
        (``_pcg`` with ``HeldRows``); a generator as ``solve_rounds``. Returns (p, ν, pᵀHp), with ν the rows'
        multipliers ((H + μD²) p + g + rowsᵀν = 0 to CG's forcing on the reduced residual) and pᵀHp for the
        step's gain ratio, or None (no usable step: rows dependent, non-finite, negative curvature at once)."""
        if not self.finite:
            return None
        factor = self._preconditioner(mu)
        if factor is None:
            return None
        held = HeldRows.of(factor, rows / self.column_scale)
        if held is None:
            return None
        scaled_g = g / self.column_scale
        solved = yield from self._pcg(factor, scaled_g, mu, held, u)
        if solved is None:
            return None
        # (D⁻¹HD⁻¹ + μI) p̂ = −ĝ − r (r: CG's residual) gives p̂ᵀ(D⁻¹HD⁻¹)p̂ = −p̂ᵀ(ĝ + r) − μ‖p̂‖², with no product
        curvature = -dot(solved.p, scaled_g + solved.residual) - mu * dot(solved.p, solved.p)
        self.info["held_cg_iterations"] = self.info.get("held_cg_iterations", 0) + solved.iterations
        return solved.p / self.column_scale, solved.multipliers, curvature

    def _preconditioner(self, mu):
        """CG's preconditioner factor at damping μ (``_reused_factor``), shifted further while it does not
        factor (``MAX_PRECONDITIONER_SHIFTS``, the shift in info), or None."""
        factor, shift = self._reused_factor(mu), 0.0
        for _ in range(MAX_PRECONDITIONER_SHIFTS):
            if factor is not None:
                break
            shift = shift * 10.0 if shift else FIRST_DAMPING * self.scale
            factor = self._factor(mu + shift)
        if factor is None:
            return None
        self.info["preconditioner_shift"] = shift
        return factor

    def forward_of(self, step):
        """C·step when ``step`` is what the last ``solve`` returned and CG summed it from the passes of
        its Hessian-vector products (``ForwardKeepingProduct``), else None (the line search makes the pass).
        Rounding: C·p = Σₖ αₖ·C dₖ adds one rounding of each term per CG iteration to a pass's own bound
        (the carried u's bound, fastnewton.newton, holds a fresh pass's with room to spare)."""
        held = self.step_forward
        return held[1] if held is not None and held[0] is step else None

    def _reused_factor(self, mu):
        """The preconditioner's factor at damping μ: a lagged system first takes a factor it already
        has whose shift is within ×``reuse_shift_ratio`` of μ (shifts below the first damping, FIRST_DAMPING·scale,
        count as that), so the Levenberg–Marquardt μ moving by a factor up to that costs no new Cholesky
        factorisation."""
        if self.reuse_shift_ratio > 1.0:
            floor = FIRST_DAMPING * self.scale
            target = max(mu, floor)
            for shift, factor in self.factors.items():
                if factor is not None and max(target, max(shift, floor)) <= self.reuse_shift_ratio * min(
                        target, max(shift, floor)):
                    return factor
        return self._factor(mu)

    def _scaled_hessp(self, v):
        """D⁻¹HD⁻¹·v, the product asked for as a ``HessianProduct`` (a generator step of ``_pcg``)."""
        Hv = yield HessianProduct(self.hessp, v / self.column_scale)
        return Hv / self.column_scale

    def _pcg(self, factor, g, mu, held=None, u=None):
        """Preconditioned CG from p = 0 on (D⁻¹HD⁻¹ + μI) p = −g (g scaled) until ‖residual‖ ≤ forcing·‖g‖: a
        ``CGSolve`` (with C·(p/D) summed from the products' passes where ``hessp`` keeps them), or None.
        With ``held`` (a ``HeldRows`` Â) projected CG (Gould, Hribar & Nocedal 2001): from the point where
        u + Âp = 0, each preconditioned residual projected onto Âd = 0, until the reduced residual r − Âᵀν
        (the part no multiplier ν of the held rows accounts for) is ≤ forcing × its first value.
        A generator (``solve_rounds``): yields each product."""
        keeps_forward = held is None and isinstance(self.hessp, ForwardKeepingProduct)
        forward = None
        multipliers = None
        if held is None:
            p = np.zeros_like(g)
            residual = -g.copy()
            z = scipy.linalg.cho_solve(factor, residual, check_finite=False)
            target = self.forcing * norm(g)
        else:
            p = held.feasible(u)
            residual = -g - ((yield from self._scaled_hessp(p)) + mu * p)
            z, multipliers, reduced = held.project(factor, residual)
            target = self.forcing * norm(reduced)
            if not target > 0.0:
                return CGSolve(p, None, residual, multipliers, 0)  # the feasible point is the held step already
        direction = z.copy()
        rz = dot(residual, z)
        limit = self.max_cg_iterations
        if held is None:
            self.info.pop("cg_truncated", None)
        else:
            # CG on the (d − K)-dimensional null space of the held rows ends within d − K iterations in exact
            # arithmetic; past them only rounding is left to reduce, and a curvature at rounding level blows up.
            limit = min(limit, max(1, g.shape[0] - held.A.shape[0]))
        for iteration in range(1, limit + 1):
            Hd = (yield from self._scaled_hessp(direction)) + mu * direction
            curvature = dot(direction, Hd)
            if not curvature > 0.0:
                # Negative curvature of H + μD²: the damping must grow (the first direction is
                # the preconditioned gradient, so p = 0 here means no usable step yet).
                if iteration == 1:
                    self._count(held, iteration)
                    return None
                break
            alpha = rz / curvature
            p += alpha * direction
            if keeps_forward:
                if forward is None:
                    # α·(C·d) in an array of its own (the product keeps C·d: ``ForwardKeepingProduct``), on all
                    # threads: NumPy's bits (one rounding each)
                    forward = self.hessp.empty_forward()
                    scale_into(alpha, self.hessp.forward, chunk_rows(forward.shape[0]), forward)
                else:
                    # forward + α·(C·d) in place, one parallel pass: NumPy's bits (product, then sum),
                    # without its temporary and second single-threaded pass
                    add_scaled(forward, alpha, self.hessp.forward, chunk_rows(forward.shape[0]), forward)
            residual -= alpha * Hd
            if held is None:
                if norm(residual) <= target:
                    break
                z = scipy.linalg.cho_solve(factor, residual, check_finite=False)
            else:
                z, multipliers, reduced = held.project(factor, residual)
                if norm(reduced) <= target:
                    break
            rz_next = dot(residual, z)
            direction = z + (rz_next / rz) * direction
            rz = rz_next
        else:
            if held is None:
                self.info["cg_truncated"] = True
        self._count(held, iteration)
        return CGSolve(p, forward, residual, multipliers, iteration)

    def _count(self, held, iterations):
        """A plain solve's CG iterations go to info["cg_iterations"] (a held solve's: ``held_solve_rounds``)."""
        if held is None:
            self.info["cg_iterations"] = iterations


@dataclass
class CGSolve:
    """What ``NewtonSystem._pcg`` returns: the (scaled) step p, C·(p/D) summed from the products' passes (or
    None), the last residual −g − (D⁻¹HD⁻¹ + μI)p, the held rows' multipliers (projected CG), the iterations."""

    p: np.ndarray
    forward: object
    residual: np.ndarray
    multipliers: object
    iterations: int


class HeldRows:
    """Projected CG's constraint Â p = −u (Â: the held rows of C in scaled columns, K × d) in the metric of the
    preconditioner P: Y = P⁻¹Âᵀ and S = ÂY (K × K, symmetric positive definite when the rows are independent)."""

    def __init__(self, A, Y, S):
        self.A, self.Y, self.S = A, Y, S

    @classmethod
    def of(cls, factor, A):
        """The constraint of rows A with P's Cholesky factor, or None when A's rows are dependent
        (kernels/kinks.py's ``small_spd_solve`` test)."""
        Y = scipy.linalg.cho_solve(factor, np.ascontiguousarray(A.T), check_finite=False)
        S = A @ Y
        probe = np.empty(S.shape[0])
        if not small_spd_solve(S, np.ones(S.shape[0]), probe):
            return None
        return cls(A, Y, S)

    def _solve(self, rhs):
        out = np.empty(rhs.shape[0])
        small_spd_solve(self.S, rhs, out)
        return out

    def feasible(self, u):
        """p = −Y S⁻¹u: Âp = −u, the point of least P-norm on the constraint."""
        return -(self.Y @ self._solve(u))

    def project(self, factor, r):
        """(z, ν, r − Âᵀν): z = P⁻¹(r − Âᵀν) with ν = S⁻¹ÂP⁻¹r, so Âz = 0; ν also the multipliers of the held rows
        when r is the residual −g − Mp of the model's gradient (Mp + g + Âᵀν = r − Âᵀν ≈ 0 at the end)."""
        z = scipy.linalg.cho_solve(factor, r, check_finite=False)
        nu = self._solve(self.A @ z)
        return z - self.Y @ nu, nu, r - self.A.T @ nu


@dataclass
class HessianProduct:
    """CG's request for ``product(v)`` = ∇²L·v (``NewtonSystem.solve_rounds``): ``run()`` forms it at once;
    ``solve_many`` forms those of many problems together (``ForwardKeepingProduct.finish``)."""

    product: object
    v: np.ndarray

    def run(self):
        return self.product(self.v)


class ForwardKeepingProduct:
    """CG's v ↦ ∇²L·v at ev (``Problem.hessian_product_and_forward``), keeping C·v, the pass it made,
    as ``forward``: CG sums its step's C·p from them (``NewtonSystem.forward_of``), and the line search
    along the step needs no pass C·p (dense 10⁶ × 512: one pass of ~0.11 s per Newton iteration).

    The last product is kept: asked again for the same v, it is returned without its pass (the same bits).
    That happens when CG's first direction meets negative curvature and the damping is raised: the product
    ∇²L·d does not depend on μ, and a ``lagged`` system's preconditioner, reused across such moves of μ,
    gives the same first direction d (CSR 2·10⁵ × 100 from zeros: two of the 13 products of the solve)."""

    def __init__(self, problem, ev):
        self.problem, self.ev, self.forward = problem, ev, None
        self._last = None  # (v, ∇²L·v) of the last product

    def __call__(self, v):
        last = self._last
        if last is not None and np.array_equal(last[0], v):
            return last[1].copy()  # CG adds μ·v to what it gets; self.forward is still that product's C·v
        Hv, self.forward = self.problem.hessian_product_and_forward(self.ev, v)
        self._last = (v.copy(), Hv.copy())
        return Hv

    def empty_forward(self):
        """A length-n work array for C·p summed from the products' passes, from the problem's recycled arrays:
        ``solve_many(C, B)`` keeps one per problem alive in lock-step, and fresh ones cost their page faults each
        time (CSR 10⁵ × 64, q = 64: 126 of them, ~0.7 ms each to scale into, against ~0.1 ms; ``fastnewton.buffers``)."""
        return self.problem.block.buffers.empty(self.forward.shape[0])

    def weights(self):
        """β, the weights of the product's pass Cᵀ(β ⊙ Cv)."""
        return self.problem.beta(self.ev)

    def finish(self, v, forward, transposed):
        """∇²L·v from its passes formed elsewhere, C·v (``forward``) and Cᵀ(β ⊙ C·v) (``transposed``), with the
        bits of ``__call__`` when they have those of ``matrix.sandwich_vector``; keeps ``forward`` as it does."""
        self.forward = forward
        self._last = None
        return self.problem.hessian_product_from(self.ev, v, transposed)


def hessian_product(problem, ev):
    """CG's Hessian-vector product at ev: a ``ForwardKeepingProduct`` where the evaluator returns its
    pass C·v (one machine), else ``problem.hessian_product`` (Dask keeps C·v on the workers)."""
    if hasattr(problem, "hessian_product_and_forward"):
        return ForwardKeepingProduct(problem, ev)
    return lambda p: problem.hessian_product(ev, p)


def exact_system(problem, ev, rng, options, g_ref, sandwich=None):
    """H = Cᵀ diag(β) C + P S Pᵀ + λI (``sandwich``: Cᵀ diag(β) C when formed already, e.g. with other
    problems' in one read of C; it is then added to in place)."""
    return NewtonSystem(problem.hessian_matrix(ev, sandwich), column_scale=options.column_scale)


def _sketched_matrix(problem, ev, rng, options, constant=SAMPLE_CONSTANT, reference=None):
    s = options.sketch_size or sample_size(problem.d, options.eps, constant)
    sandwich, kept = problem.sampled_sandwich(ev, s, rng, reference)
    return problem.hessian_matrix(ev, sandwich=sandwich), {"sampled_rows": kept}


def sketch_system(problem, ev, rng, options, g_ref, reference=None):
    """H̃ from a fresh leverage-score sample (``reference``: the solve's ``LeverageReference``, else scores afresh)."""
    matrix, info = _sketched_matrix(problem, ev, rng, options, reference=reference)
    return NewtonSystem(matrix, info=info, column_scale=options.column_scale)


def _forcing(ev, g_ref, tol):
    """CG's relative residual target η = min(0.5, max(‖g‖/g_ref, OVERSOLVE_MARGIN·tol·g_ref/‖g‖)).

    ‖g‖/g_ref gives quadratic local convergence; the floor stops CG once the step's residual, the
    gradient it predicts, would be OVERSOLVE_MARGIN below the stopping test's tol·g_ref (dense
    10⁵ × 256, 1% noise, lagged: the last step's 2 CG iterations became 1). It is measured like η, the
    column-scaled residual relative to the scaled gradient: where the columns' scales differ the
    prediction can miss by their spread, and the next step, whose floor is then higher, finishes."""
    if not g_ref > 0:
        return MAX_FORCING
    relative = norm(ev.grad) / g_ref
    if not relative > 0:
        return MAX_FORCING
    return min(MAX_FORCING, max(relative, OVERSOLVE_MARGIN * tol / relative))


def pcg_system(problem, ev, rng, options, g_ref, reference=None, sandwich=None):
    """CG on the exact H, preconditioned by H̃: with ``sandwich`` (an approximation of Cᵀ diag(β) C, e.g.
    the start's fit matrix: ``PreconditionerSystems``) H̃ = sandwich + P S Pᵀ + λI, else the sampled H̃
    (``reference`` as for ``sketch_system``)."""
    if sandwich is None:
        matrix, info = _sketched_matrix(problem, ev, rng, options, PRECONDITIONER_SAMPLE_CONSTANT, reference)
    else:
        matrix, info = problem.hessian_matrix(ev, sandwich=sandwich), {"preconditioner": "start fit"}
    return NewtonSystem(matrix, hessp=hessian_product(problem, ev), forcing=_forcing(ev, g_ref, options.tol),
                        info=info, column_scale=options.column_scale)


class SketchedSystems:
    """``sketch``'s (or, with ``build=pcg_system``, ``pcg``'s) builder, one per solve: one
    ``LeverageReference`` per problem (a stage of a staged start, or each problem of ``solve_many``,
    has its own), so the leverage scores of most iterations cost O(n) instead of an embedding and a
    JL pass over C."""

    def __init__(self, build=sketch_system):
        self.build = build
        # id(problem) → (problem, its reference); holding the problem keeps its id from being reused.
        self.references = {}

    def reference(self, problem, column_scale):
        """The ``LeverageReference`` of ``problem`` (made on first use, with the column scale D)."""
        held = self.references.get(id(problem))
        if held is None or held[0] is not problem:
            held = self.references[id(problem)] = (problem, LeverageReference(column_scale))
        return held[1]

    def start_sample(self, problem, options):
        """The ``FitSample`` offered to the start of a solve from ``x0="auto"`` (``Model.auto_start_rounds``),
        or None when the exact fit is predicted cheaper (``start_seconds``) or the evaluator keeps no
        leverage reference (Dask). The sample draws from the start's own stream of ``options.seed``
        (``start_rng``) and its rows' factors are the reference the iterations then sample by."""
        seconds = start_seconds(problem, options.eps, options.sketch_size)
        if not seconds["sampled"] < seconds["exact"]:
            return None
        size = start_sample_size(problem.d, options.eps, options.sketch_size)
        # D when the fit first needs it, after its mean's pass (which forms C's column squares too).
        return FitSample(self.reference(problem, lambda: column_scale(problem)), size, start_rng(options.seed))

    def __call__(self, problem, ev, rng, options, g_ref):
        reference = self.reference(problem, options.column_scale)
        system = self.build(problem, ev, rng, options, g_ref, reference)
        # Iterations so far whose scores were estimated afresh (embedding, factor, JL pass).
        system.info["leverage_refreshes"] = reference.refreshes
        return system


class PreconditionerSystems(SketchedSystems):
    """``pcg``'s builder: ``SketchedSystems`` of ``pcg_system``, whose preconditioner is first the start's
    own fit matrix where the start was offered a ``FitSample`` (from x0="auto"; softmax on dense C).

    The softmax start fits log b with weights ωᵢ ∝ bᵢ² (``fastnewton.start.log_linear_fit``), and near the
    optimum the Hessian's sandwich weights are βᵢ = sᵢ(2sᵢ − bᵢ) − c·sᵢ ≈ bᵢ² (s ≈ b, c = ⟨s, s − b⟩ ≈ 0). So
    the fit's normal matrix M (Σω = 1; on a leverage sample an ε-spectral approximation of the exact
    one, or exact when the sample was refused) scaled to β's mass, (Σβ)·M[:d, :d], approximates
    Cᵀ diag(β) C, and H̃ = (Σβ)·M[:d, :d] + P S Pᵀ + λI (the current P, S, λ) preconditions CG on the
    exact Hessian with no sandwich and no sample in the Newton loop: its Cholesky (d³/3) is an
    iteration's only work beyond the passes. The rule: it serves while every step's CG meets its
    forcing term within START_PRECONDITIONER_MAX_CG iterations (and Σβ > 0); the first step that
    does not (β has moved away from b², e.g. a target far from any softmax) ends its use for that
    problem, and the sampled H̃ of the current β preconditions from the next iteration on.
    """

    def __init__(self):
        super().__init__(pcg_system)
        # id(problem) → [problem, its start's FitSample, the last system it preconditioned (or None)].
        self.start_fits = {}

    def start_sample(self, problem, options):
        sample = super().start_sample(problem, options)
        if sample is not None:
            self.start_fits[id(problem)] = [problem, sample, None]
        return sample

    def start_sandwich(self, problem, ev):
        """(Σβ)·M[:d, :d] from ``problem``'s start fit, or None when it has none or the rule retired it."""
        held = self.start_fits.get(id(problem))
        if held is None or held[0] is not problem:
            return None
        held_problem, sample, last = held
        M = sample.normal_matrix
        mass = float(np.sum(problem.beta(ev))) if M is not None else 0.0
        if M is None or (last is not None and last.info.get("cg_truncated")) or not 0.0 < mass < math.inf:
            del self.start_fits[id(problem)]
            return None
        d = problem.d
        if not problem.centres_samples():
            return mass * M[:d, :d]
        # Centred on the fit's ω-mean μ = M[:d, d]/M[d, d]: (Σβ) times the ω-covariance approximates C̃ᵀ diag(β) C̃
        # (C̃ = C − 1μᵀ), turned back exactly by the low-rank part (``uncentred_sandwich``), so a common offset
        # of the rows is not approximated (dense 10⁵ × 128 softmax, every entry + 10: CG iterations per solve 15
        # with mass·M[:d, :d], against 6 on the unshifted C).
        mean = M[:d, d] / M[d, d]
        covariance = M[:d, :d] - M[d, d] * np.outer(mean, mean)
        return uncentred_sandwich(mass * covariance, mean, ev.P, ev.S, problem.row_model.ones_columns(ev.known))

    def __call__(self, problem, ev, rng, options, g_ref):
        sandwich = self.start_sandwich(problem, ev)
        if sandwich is None:
            return super().__call__(problem, ev, rng, options, g_ref)
        system = pcg_system(problem, ev, rng, options, g_ref, sandwich=sandwich)
        system.max_cg_iterations = START_PRECONDITIONER_MAX_CG
        self.start_fits[id(problem)][2] = system
        return system


class LaggedSystems:
    """``lagged``'s builder, one per solve: every (LAGGED_STEPS + 1)-th iteration is ``exact`` (the
    sandwich, the Cholesky factor); the LAGGED_STEPS after it solve with CG on the exact Hessian,
    preconditioned by that factor (of H one or two iterates back, at a damping within
    LAGGED_SHIFT_RATIO of μ, else factored anew), to the forcing term of ``pcg``. So their steps are Newton steps to CG's tolerance, for one read
    of C per CG iteration instead of a sandwich. The cycle is kept per problem (as ``SketchedSystems``
    keeps its references): a new problem (a stage of a staged start, or each problem of ``solve_many``,
    whose problems share the builder) starts with an exact iteration.
    """

    def __init__(self, lagged_steps=LAGGED_STEPS):
        self.lagged_steps = lagged_steps
        # id(problem) → [problem, its last exact system, iterations since]; holding the problem keeps its id.
        self.cycles = {}

    def _cycle(self, problem):
        held = self.cycles.get(id(problem))
        return held if held is not None and held[0] is problem else None

    def next_is_exact(self, problem):
        """Whether ``problem``'s next system is an exact one (its sandwich then formed by the caller may be given)."""
        held = self._cycle(problem)
        return held is None or held[2] >= self.lagged_steps

    def __call__(self, problem, ev, rng, options, g_ref, sandwich=None):
        if self.next_is_exact(problem):
            exact = exact_system(problem, ev, rng, options, g_ref, sandwich)
            self.cycles[id(problem)] = [problem, exact, 0]
            return exact
        held = self._cycle(problem)
        held[2] += 1
        return held[1].preconditioning(hessian_product(problem, ev), _forcing(ev, g_ref, options.tol),
                                       {"preconditioner_age": held[2]})


def forms_exact_sandwich(build_system, problem):
    """Whether ``build_system``'s next system for ``problem`` is exact, taking its sandwich Cᵀ diag(β) C as the
    keyword ``sandwich`` (``solve_many`` forms those of many problems in one read of C)."""
    return build_system is exact_system or (isinstance(build_system, LaggedSystems)
                                            and build_system.next_is_exact(problem))


BUILDERS = {"exact": exact_system, "sketch": SketchedSystems, "pcg": PreconditionerSystems, "lagged": LaggedSystems}


# Passes over C per Newton iteration shared by every strategy (the line search's C·p, the fused
# gradient pass, and a forward pass u = Cx once in REFRESH_EVERY iterations: u is carried along the
# line in between). (A CSR CG iteration's Hessian-vector product reads C once, ``csr_sandwich_vector``,
# and has rates of its own: CSR_HESSIAN_VECTOR_ENTRIES and _ROWS.)
PASSES_PER_ITERATION = 2 + 1 / REFRESH_EVERY
# A CG iteration's fixed cost beyond its passes and triangular solves: its Python control, two kernel
# launches and two SciPy triangular solves. Measured 85–104 µs per CG iteration (``lagged``, 2 threads,
# 50 softmax CSR problems n 64–512, d 32–64, 8 entries per row, whose passes take ~2 µs); priced at
# less than that so it only decides where the passes are that small. Without it ``auto`` chose lagged
# for 42% of such problems, which then solved in 6.8–7.0 ms against exact's 3.9–5.5 ms.
CG_ITERATION_SECONDS = 5e-5
# The sampled start's reads of C beyond the two passes they stand in for (``start_seconds``): its second
# read sums cᵢᵀD⁻²μ beside the row factors (``kernels.sketch.dense_row_squares_and_matvec``: 7.9 ms against
# 5.5 ms for the row factors alone, dense 10⁵ × 256), about half a pass more. It also keeps a tiny
# problem's start exact, as the two passes the sampled fit was priced at before did (n = 500–2000, d = 10).
SAMPLED_START_EXTRA_PASSES = 0.5
# A sample expected to keep more than this fraction of the rows is not drawn: it saves little of the
# exact fit's SYRK, and its certificate then often fails, so the exact fit runs after it (dense 10⁴ × 1024,
# 7303 of 10⁴ rows: the sampled start 0.40–0.56 s, uncertified, against the exact fit's 0.15 s).
SAMPLED_START_MAX_FRACTION = 0.5
# ``auto``'s near ties: of the strategies priced within NEAR_TIE_MARGIN of the least, the first in
# NEAR_TIE_ORDER. A smaller margin is within the prediction's own error: the iteration figures it multiplies
# moved by 2.6% (lagged per exact, 1 → 1.026) and 4.6% (pcg, 1.08 → 1.13) when bench/calibrate.py's solves
# went from 3 to 8 targets per shape. (3% at first; 5% since CSR 10⁶ × 32, 5 per row, priced lagged 4.1% under
# exact, measured lagged/exact 1.30, 0.97, 1.06, 0.94 and 1.38 in five runs of the grid, 3 iterations each: the
# only pick of the grid, from either start, that the wider margin changes; at 7% dense 10⁴ × 32 from x0="auto"
# would go to exact, priced 5.7% over lagged, measured 1.49× lagged's time.) The order is that of the
# iteration counts, which a shared constant ratio cannot follow from problem to problem: on every point of
# bench/auto_grid.py's grid (seed 0) exact took no more Newton iterations than lagged, and lagged no more than
# pcg (pcg took 3 where exact and lagged finished in 2: dense 10⁵ × 32, 3·10⁵ × 256, 10⁶ × 32), sketch the
# most; and exact and lagged draw nothing at random. Measured on the grid's near ties (2-core AMD EPYC, best
# of 3 each): CSR 10⁵ × 32, 5 per row, priced lagged 18.3 ms against exact's 18.8 (2.7% apart), exact was as
# fast or faster on 5 of 6 targets (lagged/exact 1.30, 1.08, 1.01, 1.09, 1.03, 0.97: lagged took 4 iterations
# on the first); dense 10⁶ × 32, priced pcg 460 ms against lagged's 467 (1.5%), lagged/pcg 0.89, 1.02, 0.81 on 3
# targets; dense 10⁵ × 32 (0.4%) 0.84, 0.89, 1.25, 1.06 on 4.
NEAR_TIE_MARGIN = 1.05
NEAR_TIE_ORDER = ("exact", "lagged", "pcg", "sketch")


def _log_log_between(d, low, high):
    """The rate at width d from rates measured at two widths, low = (d₀, r₀) and high = (d₁, r₁): log-log
    between them, the nearer one's rate outside."""
    (d0, r0), (d1, r1) = low, high
    position = min(1.0, max(0.0, math.log(d / d0) / math.log(d1 / d0)))
    return r0 ** (1 - position) * r1 ** position


def csr_sandwich_rate(d, rates=rates):
    """Pair updates per second of the CSR sandwich at width d: measured at d = 256 and 1024, log-log between."""
    return _log_log_between(d, (256, rates.CSR_SANDWICH_PAIRS), (1024, rates.CSR_SANDWICH_PAIRS_D1024))


def dense_sandwich_rate(d, rates=rates):
    """Multiply-adds per second of the dense (SYRK) sandwich at width d: measured at d = 32 and 256, log-log
    between. At small d a SYRK of an n × d block does few multiply-adds per entry it reads (n = 10⁶,
    d = 32: about 2.5× slower per multiply-add than at d = 256), so one rate would price exact there
    below lagged, which forms a third as many sandwiches."""
    return _log_log_between(d, (32, rates.DENSE_SANDWICH_FMA_D32), (256, rates.DENSE_SANDWICH_FMA))


def dense_hessian_vector_rate(d, rates=rates):
    """Entries of C per second of the dense Hessian-vector product (``DenseMatrix.sandwich_vector``: C·v and
    Cᵀ(β ⊙ Cv) from one read of each row) at width d: measured at d = 32 and 256, log-log between. One read,
    but not one pass's time: the update's multiply-adds follow the dot's, and short rows cost more per entry
    (measured 1.2–1.5 forward passes at d = 32–512; at d = 32 a forward pass itself costs 1.6× per entry what
    it costs at d = 256). Priced as one pass, pcg at dense 10⁶ × 32 was predicted 0.215 s and took 0.27 s."""
    return _log_log_between(d, (32, rates.DENSE_HESSIAN_VECTOR_ENTRIES_D32), (256, rates.DENSE_HESSIAN_VECTOR_ENTRIES))


def start_rng(seed):
    """The start's random stream for ``seed`` (``as_seed``'s forms): a Generator is used as is (and
    advanced); otherwise a child of seed's SeedSequence, so the start's draws are independent of the
    Newton loop's ``default_rng(seed)``."""
    if isinstance(seed, np.random.Generator):
        return seed
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return np.random.default_rng(np.random.SeedSequence(sequence.entropy,
                                                        spawn_key=sequence.spawn_key + (START_STREAM,)))


def _where(condition, if_true, if_false):
    """``np.where`` over arrays (many problems); a conditional over one problem's Python scalars, where a NumPy
    call would cost ~1 µs per use. The values are the same either way (a choice, no arithmetic)."""
    if isinstance(condition, np.ndarray):
        return np.where(condition, if_true, if_false)
    return if_true if condition else if_false


def _minimum(a, b):
    """``np.minimum`` over arrays, ``min`` over Python scalars (the same value: no NaN is priced)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.minimum(a, b)
    return min(a, b)


def _maximum(a, b):
    """``np.maximum`` over arrays, ``max`` over Python scalars (the same value: no NaN is priced)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return max(a, b)


def _per_width(function, d):
    """function(w) for the width d of one problem (a number), or of every problem (an array: called once per
    distinct width). The rates' log-log interpolation and the sample sizes are scalar code (``math``), run
    as such for one problem and for many: their bits do not depend on how many are priced."""
    if not isinstance(d, np.ndarray):
        return function(int(d))
    widths, where = np.unique(d, return_inverse=True)
    return np.array([function(int(width)) for width in widths], dtype=np.float64)[where.reshape(-1)]


@dataclass
class PricedShapes:
    """What ``auto``'s cost model reads of problems: rows ``n``, columns ``d``, stored entries ``nnz``, whether C
    is ``dense``, the full sandwich's work (``sandwich_pairs``, ``sandwich_fma``: the matrix's
    ``sandwich_work``), and ``targets`` for ``expected_sample_rows`` (None: no target at hand, a stand-in or
    Dask); and, for all the problems, ``samples_start`` (whether the start may fit on a sample: a model whose
    start uses it, an evaluator that keeps leverage references and holds C's rows) and
    ``reuses_leverage_scores``. ``of(problem)``: one problem, its figures Python numbers (floats) and its target
    b; ``of_many`` / ``of_problems``: many (``solve_many``), float64 / bool arrays and ``targets`` = (their b
    concatenated, start and stop offsets, whether each has one). ``strategy_seconds`` prices either with one
    formula: + − × ÷ give the same bits on float64 scalars and arrays, and ``_where``, ``_minimum`` and
    ``_per_width`` keep the rest element-wise alike."""

    n: object
    d: object
    nnz: object
    dense: object
    sandwich_pairs: object
    sandwich_fma: object
    targets: object = None
    samples_start: bool = False
    reuses_leverage_scores: bool = True

    @classmethod
    def of(cls, problem):
        matrix = problem.matrix
        dense = matrix.format == "dense"
        work = getattr(matrix, "sandwich_work", None)
        pairs, fma = work() if work is not None else estimated_sandwich_work(matrix.n, matrix.d, matrix.nnz, dense)
        return cls(float(matrix.n), float(matrix.d), float(matrix.nnz), dense, float(pairs), float(fma),
                   _target(problem), *_batch_flags(problem))

    @classmethod
    def of_problems(cls, problems):
        """Problems of one model and one kind of evaluator (``Problem``s, or stand-ins with what is read of them)."""
        return cls.of_many([problem.matrix for problem in problems], [_target(problem) for problem in problems],
                           *_batch_flags(problems[0]))

    @classmethod
    def of_many(cls, matrices, targets, samples_start, reuses_leverage_scores=True):
        """``matrices``: DenseMatrix / CSRMatrix (or anything with n, d, nnz and format); ``targets``: their
        float64 length-n targets (an entry None, or None for all: no target at hand)."""
        count = len(matrices)
        n = np.fromiter((matrix.n for matrix in matrices), np.float64, count)
        d = np.fromiter((matrix.d for matrix in matrices), np.float64, count)
        nnz = np.fromiter((matrix.nnz for matrix in matrices), np.float64, count)
        dense = np.fromiter((matrix.format == "dense" for matrix in matrices), np.bool_, count)
        work = np.array([matrix.sandwich_work() if hasattr(matrix, "sandwich_work")
                         else estimated_sandwich_work(matrix.n, matrix.d, matrix.nnz, matrix.format == "dense")
                         for matrix in matrices], dtype=np.float64).reshape(count, 2)
        if targets is not None:
            present = np.fromiter((b is not None for b in targets), np.bool_, count)
            lengths = np.where(present, n, 0.0).astype(np.int64)
            stops = np.cumsum(lengths)
            held = [b for b in targets if b is not None]
            b = (held[0] if len(held) == 1 else np.concatenate(held)) if held else np.empty(0)
            targets = (b, stops - lengths, stops, present)
        return cls(n, d, nnz, dense, work[:, 0], work[:, 1], targets, bool(samples_start),
                   bool(reuses_leverage_scores))

    @classmethod
    def of_columns(cls, n, d, nnz, dense, work, targets, like):
        """``of_many`` of problems described by arrays, not by a matrix object each (``solve_many``'s plain
        problems, ``fastnewton.plain_problems``): ``n``, ``d``, ``nnz`` and ``work`` (count × 2, each C's
        ``sandwich_work``) as numbers, ``dense`` as bools, ``targets`` = (their float64 b side by side, the
        count + 1 offsets where each starts); the batch's flags are those of ``like``, one Problem of the batch."""
        work = np.asarray(work, dtype=np.float64)
        b, offsets = targets
        return cls(np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64), np.asarray(nnz, dtype=np.float64),
                   np.asarray(dense, dtype=np.bool_), work[:, 0], work[:, 1],
                   (b, offsets[:-1], offsets[1:], np.ones(len(offsets) - 1, dtype=np.bool_)), *_batch_flags(like))


def _target(problem):
    """The problem's target b when it is a float64 vector of length n (the sample-size estimate's weights), else None."""
    b = getattr(getattr(problem, "block", None), "b", None)
    plain = isinstance(b, np.ndarray) and b.shape == (problem.matrix.n,) and b.dtype == np.float64
    return b if plain else None


def _batch_flags(problem):
    """(samples_start, reuses_leverage_scores) of ``PricedShapes`` for ``problem``'s model and evaluator."""
    reuses = getattr(problem, "reuses_leverage_scores", True)
    samples_start = (getattr(getattr(problem, "row_model", None), "samples_start", False) and reuses
                     and getattr(problem, "block", None) is not None)
    return bool(samples_start), bool(reuses)


def _unit_seconds(shapes, rates):
    """(a full sandwich, one pass over C, a d × d Cholesky) in seconds, per problem of ``shapes``."""
    d = shapes.d
    # The rows of the pair updates (those not run by SYRK) each cost a fixed amount beyond their pairs.
    pair_rows = _where(shapes.dense, 0.0, _maximum(shapes.n - shapes.sandwich_fma / (d * d / 2), 0.0))
    full_sandwich = (shapes.sandwich_pairs / _per_width(lambda width: csr_sandwich_rate(width, rates), d)
                     + pair_rows / rates.CSR_SANDWICH_ROWS
                     + shapes.sandwich_fma / _per_width(lambda width: dense_sandwich_rate(width, rates), d))
    one_pass = shapes.nnz / _where(shapes.dense, rates.DENSE_PASS_ENTRIES, rates.CSR_PASS_ENTRIES)
    return full_sandwich, one_pass, d * d * d / 3 / rates.CHOLESKY_FMA


def _iteration_passes_and_rows(one_pass, n, rates):
    """Seconds of the passes and row work every Newton iteration pays, whatever its strategy."""
    return PASSES_PER_ITERATION * one_pass + n / rates.ITERATION_ROWS


def exact_iteration_seconds(problem, rates=rates):
    """Predicted work of one exact Newton iteration on ``problem`` (its sandwich, Cholesky, passes and row
    work; not the fixed cost of its Python control), from ``strategy_seconds``' units."""
    shapes = PricedShapes.of(problem)
    full_sandwich, one_pass, cholesky = _unit_seconds(shapes, rates)
    return full_sandwich + cholesky + _iteration_passes_and_rows(one_pass, shapes.n, rates)


def default_thread_count(problem, n_threads):
    """``n_threads`` if given, else 1 for a problem whose exact iteration is predicted under
    ``fastnewton.threads.SINGLE_THREAD_BELOW_SECONDS`` of work, else None (Numba's threads as they are)."""
    if n_threads is not None:
        return n_threads
    return 1 if exact_iteration_seconds(problem) < threads.SINGLE_THREAD_BELOW_SECONDS else None


def expected_sample_rows(problem, sizes):
    """Rows a leverage-score sample of size s keeps, for each s in ``sizes``: Σᵢ min(1, s·ℓᵢ/Σℓ).

    Poisson sampling (``fastnewton.sketching.sample_rows``) caps each row's probability at 1, so
    where a few rows carry most of the scores the sample holds fewer than s rows (and never more
    than n). The scores ℓᵢ = |βᵢ|·gᵢ are not known before the solve; ℓᵢ ∝ bᵢ² stands in (the
    target b; row_weights' wᵢ are left out): near the fit the softmax curvature weights βᵢ scale
    like bᵢ², the row factors gᵢ of i.i.d. rows are about equal, and the start's sample is drawn by
    the same b² weights (``expected_poisson_sizes``: two serial reads of b, ~1.3 ms at n = 10⁶).
    Measured rows kept per sampled iteration against this estimate (noisy planted softmax,
    x0="auto"): dense 10⁵×512 sketch 21.7k–22.0k of s = 52.5k (estimate 21.9k), dense 10⁵×32 sketch
    1.8k–1.9k of 2.2k (2.0k), CSR 3·10⁴×1024 (200 per row) sketch 16.3k–16.7k of 113k (16.6k), CSR
    10⁶×200 (10 per row) pcg 4.8k of 6.1k (4.3k). Without a target at hand (a stand-in, Dask) min(n, s)."""
    return _sample_rows(PricedShapes.of(problem), [float(size) for size in sizes])


def _sample_rows(shapes, sizes):
    """``expected_sample_rows`` of the problems of ``shapes``: one problem's list for its list of sizes, or
    many problems' (count × k) array for a (count × k) array of sizes."""
    one = not isinstance(shapes.n, np.ndarray)
    limit = [min(shapes.n, size) for size in sizes] if one else np.minimum(shapes.n[:, None], sizes)
    if shapes.targets is None:
        return limit
    if one:
        b = shapes.targets
        largest = max(float(b.max()), -float(b.min()))
    else:
        b, starts, stops, present = shapes.targets
        largest = np.full(present.shape[0], np.nan)  # NaN: no target, min(n, s)
        with_target = np.flatnonzero(present)
        if with_target.size:
            first = starts[with_target]
            largest[with_target] = np.maximum(np.maximum.reduceat(b, first), -np.minimum.reduceat(b, first))
    usable = (largest > 0.0) & (largest < math.inf)
    # b² would under- or overflow (b ~ 1e±300): the same sums on b/max|b|
    divisors = _where((largest > 1e-100) & (largest < 1e100), 1.0, largest)
    if one:
        if not usable:
            return limit
        kept = np.empty((1, len(sizes)))
        expected_poisson_sizes(b, np.zeros(1, np.int64), np.array([b.shape[0]]), np.array([divisors]),
                               np.array([sizes]), kept)
        return [min(bound, rows) for bound, rows in zip(limit, kept[0].tolist())]
    usable = np.flatnonzero(usable)
    kept = np.empty((usable.size, sizes.shape[1]))
    # One task per target: each one's sums are the serial kernel's (the same bits as one problem priced alone).
    expected_poisson_sizes_parallel(b, starts[usable], stops[usable], divisors[usable], sizes[usable], kept)
    limit[usable] = np.minimum(limit[usable], kept)
    return limit


def start_seconds(problem, eps, sketch_size, rates=rates, sample_rows=None):
    """Predicted seconds of the default start's least-squares fit: {"exact": …, "sampled": …}.

    exact: the full sandwich, the pass Cᵀ[ω, ωt] and a Cholesky. sampled
    (``fastnewton.start.sampled_normal_system``): the Poisson draw over the n rows, one SYRK over the
    ``expected_sample_rows`` of s gathered rows of width d + 2 (at the sampled sandwich's rate) and two
    Cholesky factorisations (the certificate, the solve) and SAMPLED_START_EXTRA_PASSES: its two reads of C
    (the fit's ω-mean μ = Cᵀω; the rows' cᵢᵀD⁻²μ) also give the stopping test's ∇L(0) and the rows'
    reference factors, two passes that the sketched strategies pay either way (their first reference;
    ``strategy_seconds``), so only what the reads cost beyond those is counted and the two figures
    compare as they are. inf where the start cannot or should not
    sample: a sample of more than SAMPLED_START_MAX_FRACTION of the rows, a model whose start does not
    use the sample (``samples_start``), an evaluator that keeps
    no leverage reference (Dask) or one without C's rows at hand, and CSR C, where the sampled fit
    measured no gain (10⁶×200, 10 per row: sketch 0.66 → 0.70 s) and, priced cheaper, sent auto to a
    slower sketch (10⁵×64: 7 sketched iterations against 3 exact). ``sample_rows``: the rows the fit's
    sample keeps, when not ``expected_sample_rows`` of its size (``start_sample_size``)."""
    shapes = PricedShapes.of(problem)
    if sample_rows is None:
        sample_rows, = _sample_rows(shapes, [float(start_sample_size(problem.matrix.d, eps, sketch_size))])
    exact, sampled = _start_seconds(shapes, _unit_seconds(shapes, rates), float(sample_rows), rates)
    return {"exact": exact, "sampled": sampled}


def _start_seconds(shapes, units, rows, rates):
    """``start_seconds`` of the problems of ``shapes``: (exact, sampled), given their ``_unit_seconds`` and
    the rows their fit's sample keeps."""
    full_sandwich, one_pass, cholesky = units
    exact = full_sandwich + one_pass + cholesky
    d = shapes.d
    sampled = (SAMPLED_START_EXTRA_PASSES * one_pass + shapes.n / rates.SAMPLING_ROWS
               + rows * ((d + 2) * (d + 2)) / 2 / rates.DENSE_SAMPLED_SANDWICH_FMA + 2 * cholesky)
    possible = _where(rows > SAMPLED_START_MAX_FRACTION * shapes.n, False, True) & shapes.dense & shapes.samples_start
    return exact, _where(possible, sampled, math.inf)


def start_sample_size(d, eps, sketch_size):
    """s of the default start's sampled fit (its rows have d + 1 columns: C and the intercept)."""
    return sketch_size or sample_size(d + 1, eps)


def strategy_seconds(problem, eps, sketch_size, rates=rates, default_start=True):
    """Predicted seconds to tol of each strategy: {"exact": …, "sketch": …, "pcg": …, "lagged": …}.

    Work counts × measured rates (``fastnewton.rates``, written by bench/calibrate.py): a pass
    costs nnz entries, the exact sandwich d²/2 SYRK multiply-adds per dense row (every row of
    dense C, the long rows of CSR C) and nnzᵢ(nnzᵢ + 1)/2 pair updates per other row (at the rate
    for width d; ``sandwich_work``) plus a fixed cost per such row (CSR_SANDWICH_ROWS: on short rows it
    outweighs the pairs), and every strategy a d × d Cholesky. Every iteration also pays
    work per row beyond its passes (the model's row stages at the line search's trial and the new
    point: ITERATION_ROWS per second) and a fixed 1/TINY_ITERATIONS seconds (its Python control and
    small kernels); on short CSR rows (n = 10⁶, 5 per row) the row work costs more than the passes, so a
    strategy that takes more iterations pays it each time. A sketched iteration
    (``fastnewton.sketching.LeverageReference``) draws its sample over all n rows (scores |βᵢ|gᵢ and a
    Poisson draw: SAMPLING_ROWS per second) and keeps ``expected_sample_rows`` of them (fewer than s
    where a few rows carry most of the scores): on dense C one SYRK pair over them (at the sampled
    rate: the rows are gathered) gives the signed and the |β| sums, on CSR C two sampled sandwiches
    (their share of the full one each); then the reference's certificate (two triangular solves and
    a Cholesky, ~4/3 d³); in REFERENCE_REFRESHES_PER_ITERATION of the iterations also fresh scores
    (an OSNAP embedding, a QR of the 4d × d embedding, a C·Z pass) and a second draw. The first
    reference costs one pass. The start (``start_seconds``): from x0="auto" the exact fit, or for
    sketch and pcg the sampled fit where cheaper (either way they also pay their first reference's
    pass); from any other start no fit; then two passes for the stopping test's references and the first
    evaluation (a pass pair and its row work). Iteration counts: EXACT_ITERATIONS for exact, scaled by the
    measured ratios for sketch, pcg and lagged, and the CG counts below, all measured from x0="auto", and
    from any other start their ``_FROM_OTHER_STARTS`` figures, measured from zeros (3–4× the Newton
    iterations; from zeros on dense 6·10⁴ × 256, pcg reached tol in 174–282 ms, lagged in 304–328 ms, and the
    figures of x0="auto" priced lagged the cheaper); pcg also pays CG_ITERATIONS_PER_STEP Hessian-vector products
    (one read of C each, priced on CSR C by its entries and its rows, CSR_HESSIAN_VECTOR_ENTRIES and _ROWS;
    a triangular solve pair; CG_ITERATION_SECONDS) per step, lagged an
    exact iteration in every LAGGED_STEPS + 1 and LAGGED_CG_ITERATIONS_PER_STEP of them on the others.
    Where the start fits on a sample (from x0="auto"), pcg's preconditioner is the start's fit matrix
    (``PreconditionerSystems``): its iterations sample nothing, pay one Cholesky and
    START_PRECONDITIONED_CG_ITERATIONS_PER_STEP Hessian-vector products (one pass each on dense C:
    ``DenseMatrix.sandwich_vector`` reads a row once for C·p and Cᵀ(β ⊙ ·)).
    The formula is ``many_strategy_seconds``', on one problem.
    """
    return many_strategy_seconds(PricedShapes.of(problem), eps, sketch_size, rates, bool(default_start))


def many_strategy_seconds(shapes, eps, sketch_size, rates=rates, default_start=True):
    """``strategy_seconds`` of the problems of ``shapes`` (``PricedShapes``): floats for one problem
    (``PricedShapes.of``), arrays for many (``solve_many`` prices all of its problems in one call).
    ``default_start``: one flag, or (many) one per problem. One formula for both: see ``PricedShapes``."""
    n, d, nnz, dense = shapes.n, shapes.d, shapes.nnz, shapes.dense
    if not isinstance(default_start, bool):
        default_start = np.asarray(default_start, dtype=np.bool_)
    units = _unit_seconds(shapes, rates)
    full_sandwich, one_pass, cholesky = units
    row_work = n / rates.ITERATION_ROWS
    draw = n / rates.SAMPLING_ROWS

    def sandwich(rows):
        return full_sandwich * rows / n
    fresh_scores = (nnz * OSNAP_NNZ / _where(dense, rates.DENSE_EMBED_UPDATES, rates.CSR_EMBED_UPDATES)
                    + EMBED_ROWS_PER_COLUMN * d * d * d / rates.QR_FMA
                    + nnz * JL_DIM / _where(dense, rates.DENSE_MATMAT_FMA, rates.CSR_MATMAT_FMA))
    certificate = 4 * cholesky
    # The iterations' two sample sizes and the start's, estimated in one read of each b (each size's
    # estimate is its own sum: the same figures as three calls).
    sizes = [_per_width(lambda width: sketch_size or sample_size(width, eps, constant), d)
             for constant in (SAMPLE_CONSTANT, PRECONDITIONER_SAMPLE_CONSTANT)]
    sizes.append(_per_width(lambda width: start_sample_size(width, eps, sketch_size), d))
    if isinstance(d, np.ndarray):
        sketch_rows, preconditioner_rows, start_rows = _sample_rows(shapes, np.column_stack(sizes)).T
    else:
        sketch_rows, preconditioner_rows, start_rows = _sample_rows(shapes, [float(size) for size in sizes])

    def sampled(rows):
        return _where(dense, rows * d * d / 2 / rates.DENSE_SAMPLED_SANDWICH_FMA, 2 * sandwich(rows))

    # Dask's blocks keep no leverage reference: fresh scores every iteration there.
    # From the default start β moves little and the reference holds; from zeros (or a user's x0) it
    # moves far in the first iterations and the reference is refused more often.
    refresh = _where(default_start, rates.REFERENCE_REFRESHES_PER_ITERATION,
                     rates.REFERENCE_REFRESHES_FROM_OTHER_STARTS)
    if not shapes.reuses_leverage_scores:
        refresh = 1.0

    def sketched(rows):
        return (1 + refresh) * (sampled(rows) + draw) + refresh * fresh_scores + certificate

    def cg(iterations):
        product = _where(dense, nnz / _per_width(lambda width: dense_hessian_vector_rate(width, rates), d),
                         nnz / rates.CSR_HESSIAN_VECTOR_ENTRIES + n / rates.CSR_HESSIAN_VECTOR_ROWS)
        return iterations * (product + 2 * d * d / rates.CHOLESKY_FMA + CG_ITERATION_SECONDS)

    def figure(name):
        """An iteration figure of the start given: measured from x0="auto", or from zeros (``_FROM_OTHER_STARTS``:
        every strategy takes 3–4× the Newton iterations there, and their ratios and CG counts differ)."""
        return _where(default_start, getattr(rates, name), getattr(rates, f"{name}_FROM_OTHER_STARTS"))

    fit_exact, fit_sampled = _start_seconds(shapes, units, start_rows, rates)
    samples_start = default_start & (fit_sampled < fit_exact)
    per_iteration = {
        "exact": sandwich(n) + cholesky,
        "sketch": sketched(sketch_rows) + cholesky,
        "pcg": _where(samples_start, cholesky + cg(rates.START_PRECONDITIONED_CG_ITERATIONS_PER_STEP),
                      sketched(preconditioner_rows) + cholesky + cg(figure("CG_ITERATIONS_PER_STEP"))),
    }
    exact_iterations = figure("EXACT_ITERATIONS")
    iterations = {"exact": exact_iterations,
                  "sketch": exact_iterations * figure("SKETCH_ITERATIONS_PER_EXACT"),
                  "pcg": exact_iterations * figure("PCG_ITERATIONS_PER_EXACT")}
    # lagged: one exact iteration in every LAGGED_STEPS + 1, CG on the others.
    per_iteration["lagged"] = ((per_iteration["exact"] + LAGGED_STEPS * cg(figure("LAGGED_CG_ITERATIONS_PER_STEP")))
                               / (LAGGED_STEPS + 1))
    iterations["lagged"] = exact_iterations * figure("LAGGED_ITERATIONS_PER_EXACT")
    # The start's fit (the default start only: from another start there is none), then the stopping test's
    # references (column norms, ∇L(0)) and the first evaluation. From x0="auto" the sketched strategies fit on a
    # sample when that is cheaper, whose two reads of C are their first reference's pass and the ∇L(0) pass
    # (``start_seconds``).
    fit = _where(default_start, fit_exact, 0.0)
    first_evaluation = 2 * one_pass + row_work
    exact_start = fit + 2 * one_pass + first_evaluation
    sketched_start = _where(samples_start, fit_sampled, fit) + one_pass + 2 * one_pass + first_evaluation
    start = {"exact": exact_start, "sketch": sketched_start, "pcg": sketched_start, "lagged": exact_start}
    shared = _iteration_passes_and_rows(one_pass, n, rates) + 1.0 / rates.TINY_ITERATIONS
    return {name: start[name] + iterations[name] * (per_iteration[name] + shared) for name in per_iteration}


def picked_strategies(seconds):
    """``auto``'s pick from predicted times (``strategy_seconds``: floats, or arrays of many problems): the
    position in NEAR_TIE_ORDER of the first strategy priced within NEAR_TIE_MARGIN of the least (an int, or
    one per problem)."""
    stacked = np.stack([np.asarray(seconds[name], dtype=np.float64) for name in NEAR_TIE_ORDER])
    return np.argmax(stacked <= NEAR_TIE_MARGIN * stacked.min(axis=0), axis=0)


def choose_strategy(problem, eps, sketch_size, default_start=True):
    """``auto``: the strategy with the least predicted time to tol (``strategy_seconds``), or where others
    are priced within NEAR_TIE_MARGIN of it the first of those in NEAR_TIE_ORDER (``picked_strategies``);
    ``default_start``: whether the solve starts from x0 = "auto"."""
    seconds = strategy_seconds(problem, eps, sketch_size, default_start=default_start)
    return NEAR_TIE_ORDER[int(picked_strategies(seconds))]


def choose_strategies(shapes, eps, sketch_size, default_start=True):
    """``choose_strategy`` of every problem of ``shapes`` (``PricedShapes.of_many``) at once: a list of names."""
    seconds = many_strategy_seconds(shapes, eps, sketch_size, default_start=default_start)
    return [NEAR_TIE_ORDER[k] for k in picked_strategies(seconds).tolist()]


def resolve_strategy(name, problem, eps, sketch_size, default_start=True):
    """(resolved strategy name, builder); a stateful builder (a class: ``lagged``) is made afresh per call."""
    if not isinstance(name, str):
        raise TypeError(f"hessian must be a string, got {type(name).__name__}")
    if name not in STRATEGIES:
        raise ValueError(f"hessian must be one of {', '.join(repr(s) for s in STRATEGIES)}, got {name!r}")
    if name == "auto":
        name = choose_strategy(problem, eps, sketch_size, default_start)
    builder = BUILDERS[name]
    return name, builder() if isinstance(builder, type) else builder
