"""Hessian strategies (``solve``'s ``hessian=``): each builds, per iteration, a ``NewtonSystem`` that solves (H + μD²) p = −g
(D: the fixed column scale, so that the steps do not depend on the scale of C's columns; see ``NewtonSystem``).

- ``exact``: H = Cᵀ diag(β) C + P S Pᵀ + λI (sparse sandwich O(Σᵢ nnzᵢ²); dense: blocked SYRK,
  O(n d²/2)); Cholesky.
- ``sketch``: H̃ = CᵀD̃C + P S Pᵀ + λI with D̃ a leverage-score sample of diag(β)
  (``fastnewton.sketching``), a fresh sample each iteration, its scores from a reference Gram
  matrix kept while the samples certify it (``LeverageReference``); Cholesky. Linear local convergence.
  From x0="auto" it offers the start a fit on a sample by the same reference (``start_sample``), as pcg does.
- ``pcg``: conjugate gradients on the exact Hessian-vector product (two passes over C each),
  preconditioned by the Cholesky factor of H̃ + μD²; forcing term η = min(0.5, ‖g‖/g_ref) for
  quadratic local convergence at near-sketch cost.
- ``lagged``: an ``exact`` iteration, then up to LAGGED_STEPS iterations that form no sandwich: CG
  on the exact Hessian-vector product (two passes over C each), preconditioned by the exact
  iteration's Cholesky factor (of the Hessian one or two iterates back), forcing term as ``pcg``'s.
- ``auto``: the least predicted time to tol, from work counts and measured rates
  (``strategy_seconds``, ``fastnewton.rates``).
"""
import copy
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from . import rates
from .matrix import estimated_sandwich_work
from .newton import column_scale
from .reductions import dot, norm
from .start import FitSample
from .sketching import (
    EMBED_ROWS_PER_COLUMN,
    JL_DIM,
    OSNAP_NNZ,
    PRECONDITIONER_SAMPLE_CONSTANT,
    SAMPLE_CONSTANT,
    LeverageReference,
    sample_size,
)

STRATEGIES = ("auto", "exact", "sketch", "pcg", "lagged")
# The start's stream is child START_STREAM of the seed's SeedSequence (``start_rng``).
START_STREAM = 1
MAX_CG_ITERATIONS = 100
MAX_FORCING = 0.5
# pcg: when the sampled H̃ + μI has no Cholesky factor (β of mixed sign), only the
# preconditioner is shifted, by ν = 10⁻⁸·scale, ×10 per failure, at most this many times.
MAX_PRECONDITIONER_SHIFTS = 20
# lagged: sandwich-free iterations after each exact one (their preconditioner ages by one per iteration).
LAGGED_STEPS = 2
# ... whose CG reuses the exact iteration's factor at any damping within this factor of it: a
# new Cholesky per move of μ (÷10 after a good step, ×2, ×4, … on failures) cost as much as the
# CG iterations it saved (d = 1024).
LAGGED_SHIFT_RATIO = 100.0


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
    The exact case is written a second time, compiled, in kernels/small_newton.py (``solve_many`` of
    many small problems); the two must stay the same (tests/test_solve_many_small.py).
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

    def __post_init__(self):
        if self.column_scale is None:
            self.column_scale = np.ones(self.matrix.shape[0])
        self._scaled = self.matrix / np.outer(self.column_scale, self.column_scale)

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
        return system

    def solve(self, g, mu):
        """p with (H + μD²) p ≈ −g, or None when it is not positive definite (raise μ).

        Cholesky strategies factor the matrix itself. pcg factors H̃ + μD² only to precondition
        CG on the exact H + μD²: a sampled H̃ may be indefinite (β of mixed sign) where H is not,
        so it is shifted further (the preconditioner alone) until it factors; whether H + μD²
        is positive definite is CG's to detect (negative curvature).
        """
        if not np.all(np.isfinite(self._scaled)):
            return None
        scaled_g = g / self.column_scale
        if self.hessp is None:
            factor = self._factor(mu)
            if factor is None:
                return None
            return -scipy.linalg.cho_solve(factor, scaled_g, check_finite=False) / self.column_scale
        factor, shift = self._reused_factor(mu), 0.0
        for _ in range(MAX_PRECONDITIONER_SHIFTS):
            if factor is not None:
                break
            shift = shift * 10.0 if shift else 1e-8 * self.scale
            factor = self._factor(mu + shift)
        if factor is None:
            return None
        self.info["preconditioner_shift"] = shift
        p = self._pcg(factor, scaled_g, mu)
        return None if p is None else p / self.column_scale

    def _reused_factor(self, mu):
        """The preconditioner's factor at damping μ: a lagged system first takes a factor it already
        has whose shift is within ×``reuse_shift_ratio`` of μ (shifts below 1e-8·scale count as that),
        so the Levenberg–Marquardt μ moving by a factor up to that costs no new Cholesky factorisation."""
        if self.reuse_shift_ratio > 1.0:
            floor = 1e-8 * self.scale
            target = max(mu, floor)
            for shift, factor in self.factors.items():
                if factor is not None and max(target, max(shift, floor)) <= self.reuse_shift_ratio * min(
                        target, max(shift, floor)):
                    return factor
        return self._factor(mu)

    def _scaled_hessp(self, v):
        return self.hessp(v / self.column_scale) / self.column_scale

    def _pcg(self, factor, g, mu):
        """Preconditioned CG from p = 0 on (D⁻¹HD⁻¹ + μI) p = −g (g scaled) until ‖residual‖ ≤ forcing·‖g‖."""
        p = np.zeros_like(g)
        residual = -g.copy()
        z = scipy.linalg.cho_solve(factor, residual, check_finite=False)
        direction = z.copy()
        rz = dot(residual, z)
        target = self.forcing * norm(g)
        for iteration in range(1, MAX_CG_ITERATIONS + 1):
            Hd = self._scaled_hessp(direction) + mu * direction
            curvature = dot(direction, Hd)
            if not curvature > 0.0:
                self.info["cg_iterations"] = iteration
                # Negative curvature of H + μD²: the damping must grow (the first direction is
                # the preconditioned gradient, so p = 0 here means no usable step yet).
                return p if iteration > 1 else None
            alpha = rz / curvature
            p += alpha * direction
            residual -= alpha * Hd
            if norm(residual) <= target:
                break
            z = scipy.linalg.cho_solve(factor, residual, check_finite=False)
            rz_next = dot(residual, z)
            direction = z + (rz_next / rz) * direction
            rz = rz_next
        self.info["cg_iterations"] = iteration
        return p


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


def _forcing(ev, g_ref):
    """CG's relative residual target η = min(0.5, ‖g‖/g_ref): quadratic local convergence."""
    return min(MAX_FORCING, norm(ev.grad) / g_ref) if g_ref > 0 else MAX_FORCING


def pcg_system(problem, ev, rng, options, g_ref, reference=None):
    """CG on the exact H, preconditioned by the sampled H̃ (``reference`` as for ``sketch_system``)."""
    matrix, info = _sketched_matrix(problem, ev, rng, options, PRECONDITIONER_SAMPLE_CONSTANT, reference)
    return NewtonSystem(matrix, hessp=lambda p: problem.hessian_product(ev, p), forcing=_forcing(ev, g_ref),
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
        size = options.sketch_size or sample_size(problem.d + 1, options.eps)
        return FitSample(self.reference(problem, column_scale(problem)), size, start_rng(options.seed))

    def __call__(self, problem, ev, rng, options, g_ref):
        reference = self.reference(problem, options.column_scale)
        system = self.build(problem, ev, rng, options, g_ref, reference)
        # Iterations so far whose scores were estimated afresh (embedding, factor, JL pass).
        system.info["leverage_refreshes"] = reference.refreshes
        return system


class PreconditionerSystems(SketchedSystems):
    """``pcg``'s builder: ``SketchedSystems`` of ``pcg_system``."""

    def __init__(self):
        super().__init__(pcg_system)


class LaggedSystems:
    """``lagged``'s builder, one per solve: every (LAGGED_STEPS + 1)-th iteration is ``exact`` (the
    sandwich, the Cholesky factor); the LAGGED_STEPS after it solve with CG on the exact Hessian,
    preconditioned by that factor (of H one or two iterates back, at a damping within
    LAGGED_SHIFT_RATIO of μ, else factored anew), to the forcing term of ``pcg``. So their steps are Newton steps to CG's tolerance, for two passes
    over C per CG iteration instead of a sandwich. A new problem (a stage of a staged start) starts
    with an exact iteration.
    """

    def __init__(self, lagged_steps=LAGGED_STEPS):
        self.lagged_steps = lagged_steps
        self.exact, self.problem, self.age = None, None, 0

    def __call__(self, problem, ev, rng, options, g_ref):
        if self.exact is None or problem is not self.problem or self.age >= self.lagged_steps:
            self.exact = exact_system(problem, ev, rng, options, g_ref)
            self.problem, self.age = problem, 0
            return self.exact
        self.age += 1
        return self.exact.preconditioning(lambda p: problem.hessian_product(ev, p), _forcing(ev, g_ref),
                                          {"preconditioner_age": self.age})


BUILDERS = {"exact": exact_system, "sketch": SketchedSystems, "pcg": PreconditionerSystems, "lagged": LaggedSystems}


# Passes over C per Newton iteration shared by every strategy (forward, fused gradient, line
# search C·Δx), and per CG iteration of pcg (Hessian-vector product: C·p and Cᵀ(·)).
PASSES_PER_ITERATION = 3
PASSES_PER_CG_ITERATION = 2
# A CG iteration's fixed cost beyond its passes and triangular solves: its Python control, two kernel
# launches and two SciPy triangular solves. Measured 85–104 µs per CG iteration (``lagged``, 2 threads,
# 50 softmax CSR problems n 64–512, d 32–64, 8 entries per row, whose passes take ~2 µs); priced at
# less than that so it only decides where the passes are that small. Without it ``auto`` chose lagged
# for 42% of such problems, which then solved in 6.8–7.0 ms against exact's 3.9–5.5 ms.
CG_ITERATION_SECONDS = 5e-5


def csr_sandwich_rate(d, rates=rates):
    """Pair updates per second of the CSR sandwich at width d: measured at d = 256 and 1024, log-log between."""
    position = min(1.0, max(0.0, math.log(d / 256) / math.log(4)))
    return rates.CSR_SANDWICH_PAIRS ** (1 - position) * rates.CSR_SANDWICH_PAIRS_D1024 ** position


def start_rng(seed):
    """The start's random stream for ``seed`` (``as_seed``'s forms): a Generator is used as is (and
    advanced); otherwise a child of seed's SeedSequence, so the start's draws are independent of the
    Newton loop's ``default_rng(seed)``."""
    if isinstance(seed, np.random.Generator):
        return seed
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return np.random.default_rng(np.random.SeedSequence(sequence.entropy,
                                                        spawn_key=sequence.spawn_key + (START_STREAM,)))


def _unit_seconds(problem, rates):
    """(a full sandwich, one pass over C, a d × d Cholesky) in seconds for ``problem``'s matrix."""
    matrix = problem.matrix
    n, d, nnz = matrix.n, matrix.d, matrix.nnz
    dense = matrix.format == "dense"
    work = getattr(matrix, "sandwich_work", None)
    pairs, dense_fma = work() if work is not None else estimated_sandwich_work(n, d, nnz, dense)
    full_sandwich = pairs / csr_sandwich_rate(d, rates) + dense_fma / rates.DENSE_SANDWICH_FMA
    one_pass = nnz / (rates.DENSE_PASS_ENTRIES if dense else rates.CSR_PASS_ENTRIES)
    return full_sandwich, one_pass, d**3 / 3 / rates.CHOLESKY_FMA


def start_seconds(problem, eps, sketch_size, rates=rates, unit_seconds=None):
    """Predicted seconds of the default start's least-squares fit: {"exact": …, "sampled": …}.

    exact: the full sandwich, the pass Cᵀ[ω, ωt] and a Cholesky. sampled
    (``fastnewton.start.sampled_normal_system``): two passes (the fit's ω-mean μ = Cᵀω; the rows'
    cᵢᵀD⁻²μ), one SYRK over s gathered rows of width d + 2 (at the sampled sandwich's rate) and two
    Cholesky factorisations (the certificate, the solve). Neither counts the pass for the rows' reference
    factors, which the sampled fit also reads: the sketched strategies pay it either way (their first
    reference), so the two figures compare as they are. inf where the start cannot or should not
    sample: a model whose start does not use the sample (``samples_start``), an evaluator that keeps
    no leverage reference (Dask) or one without C's rows at hand, and CSR C, where the sampled fit
    measured no gain (10⁶×200, 10 per row: sketch 0.66 → 0.70 s) and, priced cheaper, sent auto to a
    slower sketch (10⁵×64: 7 sketched iterations against 3 exact). ``unit_seconds``: ``_unit_seconds(problem,
    rates)`` when the caller has it already (``strategy_seconds``)."""
    full_sandwich, one_pass, cholesky = unit_seconds or _unit_seconds(problem, rates)
    exact = full_sandwich + one_pass + cholesky
    model = getattr(problem, "row_model", None)
    if (not getattr(model, "samples_start", False) or not getattr(problem, "reuses_leverage_scores", True)
            or getattr(problem, "block", None) is None or problem.matrix.format != "dense"):
        return {"exact": exact, "sampled": math.inf}
    d = problem.matrix.d
    rows = min(problem.matrix.n, sketch_size or sample_size(d + 1, eps))
    sampled = 2 * one_pass + rows * (d + 2) ** 2 / 2 / rates.DENSE_SAMPLED_SANDWICH_FMA + 2 * cholesky
    return {"exact": exact, "sampled": sampled}


def strategy_seconds(problem, eps, sketch_size, rates=rates, default_start=True):
    """Predicted seconds to tol of each strategy: {"exact": …, "sketch": …, "pcg": …, "lagged": …}.

    Work counts × measured rates (``fastnewton.rates``, written by bench/calibrate.py): a pass
    costs nnz entries, the exact sandwich d²/2 SYRK multiply-adds per dense row (every row of
    dense C, the long rows of CSR C) and nnzᵢ(nnzᵢ + 1)/2 pair updates per other row (at the rate
    for width d; ``sandwich_work``), and every strategy a d × d Cholesky. A sketched iteration
    (``fastnewton.sketching.LeverageReference``) samples s rows: on dense C one SYRK pair over them
    (at the sampled rate: the rows are gathered) gives the signed and the |β| sums, on CSR C two
    sampled sandwiches (s/n of the full one each); then the reference's certificate (two
    triangular solves and a Cholesky, ~4/3 d³); in REFERENCE_REFRESHES_PER_ITERATION of the
    iterations also fresh scores (an OSNAP embedding, a QR of the 4d × d embedding, a C·Z pass)
    and a second draw. The first reference costs one pass. The start (``start_seconds``): the exact
    fit, or from x0="auto" for sketch and pcg the sampled fit where cheaper (either way they also pay
    their first reference's pass), then two passes for the stopping test's references. Iteration counts: EXACT_ITERATIONS for
    exact, scaled by the measured ratios for
    sketch, pcg and lagged; pcg also pays CG_ITERATIONS_PER_STEP Hessian-vector products (two
    passes and a triangular solve pair each, plus CG_ITERATION_SECONDS) per step, lagged an exact iteration in every
    LAGGED_STEPS + 1 and LAGGED_CG_ITERATIONS_PER_STEP of them on the others.
    """
    matrix = problem.matrix
    n, d, nnz = matrix.n, matrix.d, matrix.nnz
    dense = matrix.format == "dense"
    units = _unit_seconds(problem, rates)
    full_sandwich, one_pass, cholesky = units

    def sandwich(rows):
        return full_sandwich * rows / n
    fresh_scores = (nnz * OSNAP_NNZ / (rates.DENSE_EMBED_UPDATES if dense else rates.CSR_EMBED_UPDATES)
                    + EMBED_ROWS_PER_COLUMN * d * d * d / rates.QR_FMA
                    + nnz * JL_DIM / (rates.DENSE_MATMAT_FMA if dense else rates.CSR_MATMAT_FMA))
    certificate = 4 * cholesky

    def sampled(constant):
        rows = min(n, sketch_size or sample_size(d, eps, constant))
        if dense:
            return rows * d * d / 2 / rates.DENSE_SAMPLED_SANDWICH_FMA
        return 2 * sandwich(rows)

    def sketched(constant):
        # Dask's blocks keep no leverage reference: fresh scores every iteration there.
        # From the default start β moves little and the reference holds; from zeros (or a user's x0) it
        # moves far in the first iterations and the reference is refused more often.
        refresh = (rates.REFERENCE_REFRESHES_PER_ITERATION if default_start
                   else rates.REFERENCE_REFRESHES_FROM_OTHER_STARTS)
        if not getattr(problem, "reuses_leverage_scores", True):
            refresh = 1.0
        return (1 + refresh) * sampled(constant) + refresh * fresh_scores + certificate

    def cg(iterations):
        return iterations * (PASSES_PER_CG_ITERATION * one_pass + 2 * d * d / rates.CHOLESKY_FMA + CG_ITERATION_SECONDS)

    per_iteration = {
        "exact": sandwich(n) + cholesky,
        "sketch": sketched(SAMPLE_CONSTANT) + cholesky,
        "pcg": sketched(PRECONDITIONER_SAMPLE_CONSTANT) + cholesky + cg(rates.CG_ITERATIONS_PER_STEP),
    }
    iterations = {"exact": rates.EXACT_ITERATIONS,
                  "sketch": rates.EXACT_ITERATIONS * rates.SKETCH_ITERATIONS_PER_EXACT,
                  "pcg": rates.EXACT_ITERATIONS * rates.PCG_ITERATIONS_PER_EXACT}
    # lagged: one exact iteration in every LAGGED_STEPS + 1, CG on the others.
    per_iteration["lagged"] = ((per_iteration["exact"] + LAGGED_STEPS * cg(rates.LAGGED_CG_ITERATIONS_PER_STEP))
                               / (LAGGED_STEPS + 1))
    iterations["lagged"] = rates.EXACT_ITERATIONS * rates.LAGGED_ITERATIONS_PER_EXACT
    # The start's fit, then the stopping test's references (column norms, ∇L(0)). From x0="auto" the
    # sketched strategies fit on a sample when that is cheaper, and its pass is their first reference.
    fit = start_seconds(problem, eps, sketch_size, rates, units)
    exact_start = fit["exact"] + 2 * one_pass
    sketched_start = (fit["sampled"] if default_start and fit["sampled"] < fit["exact"]
                      else fit["exact"]) + one_pass + 2 * one_pass
    start = {"exact": exact_start, "sketch": sketched_start, "pcg": sketched_start, "lagged": exact_start}
    return {name: start[name] + iterations[name] * (per_iteration[name] + PASSES_PER_ITERATION * one_pass)
            for name in per_iteration}


def choose_strategy(problem, eps, sketch_size, default_start=True):
    """``auto``: the strategy with the least predicted time to tol (``strategy_seconds``);
    ``default_start``: whether the solve starts from x0 = "auto"."""
    seconds = strategy_seconds(problem, eps, sketch_size, default_start=default_start)
    return min(seconds, key=seconds.get)


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
