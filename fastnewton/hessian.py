"""Hessian strategies (SPEC §3): each builds, per iteration, a ``NewtonSystem`` that solves (H + μD²) p = −g
(D: the fixed column scale, so that the steps do not depend on the scale of C's columns; see ``NewtonSystem``).

- ``exact``: H = Cᵀ diag(β) C + P S Pᵀ + λI (sparse sandwich O(Σᵢ nnzᵢ²); dense: blocked SYRK,
  O(n d²/2)); Cholesky.
- ``sketch``: H̃ = CᵀD̃C + P S Pᵀ + λI with D̃ a leverage-score sample of diag(β)
  (``fastnewton.sketching``), a fresh sample each iteration; Cholesky. Linear local convergence.
- ``pcg``: conjugate gradients on the exact Hessian-vector product (two passes over C each),
  preconditioned by the Cholesky factor of H̃ + μD²; forcing term η = min(0.5, ‖g‖/g_ref) for
  quadratic local convergence at near-sketch cost.
- ``auto``: the least predicted time to tol, from work counts and measured rates
  (``strategy_seconds``, ``fastnewton.rates``).
"""
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from . import rates
from .reductions import dot, norm
from .sketching import (
    EMBED_ROWS_PER_COLUMN,
    JL_DIM,
    OSNAP_NNZ,
    PRECONDITIONER_SAMPLE_CONSTANT,
    SAMPLE_CONSTANT,
    sample_size,
)

STRATEGIES = ("auto", "exact", "sketch", "pcg")
MAX_CG_ITERATIONS = 100
MAX_FORCING = 0.5
# pcg: when the sampled H̃ + μI has no Cholesky factor (β of mixed sign), only the
# preconditioner is shifted, by ν = 10⁻⁸·scale, ×10 per failure, at most this many times.
MAX_PRECONDITIONER_SHIFTS = 20


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

    def __post_init__(self):
        if self.column_scale is None:
            self.column_scale = np.ones(self.matrix.shape[0])
        self._scaled = self.matrix / np.outer(self.column_scale, self.column_scale)

    @property
    def scale(self):
        """The largest |diagonal entry| of the scaled matrix (1 if all are zero): μ is relative to it."""
        return float(np.max(np.abs(np.diag(self._scaled)))) or 1.0

    def _factor(self, shift):
        try:
            return scipy.linalg.cho_factor(self._scaled + shift * np.eye(self._scaled.shape[0]),
                                           lower=True, check_finite=False)
        except (np.linalg.LinAlgError, ValueError):
            return None

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
        factor, shift = self._factor(mu), 0.0
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


def exact_system(problem, ev, rng, options, g_ref):
    return NewtonSystem(problem.hessian_matrix(ev), column_scale=options.column_scale)


def _sketched_matrix(problem, ev, rng, options, constant=SAMPLE_CONSTANT):
    s = options.sketch_size or sample_size(problem.d, options.eps, constant)
    sandwich, kept = problem.sampled_sandwich(ev, s, rng)
    return problem.hessian_matrix(ev, sandwich=sandwich), {"sampled_rows": kept}


def sketch_system(problem, ev, rng, options, g_ref):
    matrix, info = _sketched_matrix(problem, ev, rng, options)
    return NewtonSystem(matrix, info=info, column_scale=options.column_scale)


def pcg_system(problem, ev, rng, options, g_ref):
    matrix, info = _sketched_matrix(problem, ev, rng, options, PRECONDITIONER_SAMPLE_CONSTANT)
    forcing = min(MAX_FORCING, norm(ev.grad) / g_ref) if g_ref > 0 else MAX_FORCING
    return NewtonSystem(matrix, hessp=lambda p: problem.hessian_product(ev, p), forcing=forcing, info=info,
                        column_scale=options.column_scale)


BUILDERS = {"exact": exact_system, "sketch": sketch_system, "pcg": pcg_system}


# Passes over C per Newton iteration shared by every strategy (forward, fused gradient, line
# search C·Δx), and per CG iteration of pcg (Hessian-vector product: C·p and Cᵀ(·)).
PASSES_PER_ITERATION = 3
PASSES_PER_CG_ITERATION = 2


def csr_sandwich_rate(d, rates=rates):
    """Pair updates per second of the CSR sandwich at width d: measured at d = 256 and 1024, log-log between."""
    position = min(1.0, max(0.0, math.log(d / 256) / math.log(4)))
    return rates.CSR_SANDWICH_PAIRS ** (1 - position) * rates.CSR_SANDWICH_PAIRS_D1024 ** position


def strategy_seconds(problem, eps, sketch_size, rates=rates):
    """Predicted seconds to tol of each strategy: {"exact": …, "sketch": …, "pcg": …}.

    Work counts × measured rates (``fastnewton.rates``, written by bench/calibrate.py): a pass
    costs nnz entries, the exact sandwich n·d²/2 SYRK multiply-adds (dense) or Σᵢ nnzᵢ²/2 pair
    updates (CSR, estimated as for equal rows, at the rate for width d), the sketch an OSNAP embedding, a QR of the
    4d × d embedding, a C·Z pass for the JL scores and the sandwich of its s sampled rows,
    and every strategy a d × d Cholesky. Iteration counts: EXACT_ITERATIONS for exact (and
    the common start: one sandwich, one pass), scaled by the measured ratios for sketch and
    pcg, which also pays CG_ITERATIONS_PER_STEP Hessian-vector products per step.
    """
    matrix = problem.matrix
    n, d, nnz = matrix.n, matrix.d, matrix.nnz
    dense = matrix.format == "dense"
    per_row = nnz / n

    def sandwich(rows):
        if dense:
            return rows * d * d / 2 / rates.DENSE_SANDWICH_FMA
        return rows * per_row * (per_row + 1) / 2 / csr_sandwich_rate(d, rates)

    one_pass = nnz / (rates.DENSE_PASS_ENTRIES if dense else rates.CSR_PASS_ENTRIES)
    cholesky = d**3 / 3 / rates.CHOLESKY_FMA
    sketch_common = (nnz * OSNAP_NNZ / (rates.DENSE_EMBED_UPDATES if dense else rates.CSR_EMBED_UPDATES)
                     + EMBED_ROWS_PER_COLUMN * d * d * d / rates.QR_FMA
                     + nnz * JL_DIM / (rates.DENSE_MATMAT_FMA if dense else rates.CSR_MATMAT_FMA))

    def sampled(constant):
        return sandwich(min(n, sketch_size or sample_size(d, eps, constant)))

    per_iteration = {
        "exact": sandwich(n) + cholesky,
        "sketch": sketch_common + sampled(SAMPLE_CONSTANT) + cholesky,
        "pcg": (sketch_common + sampled(PRECONDITIONER_SAMPLE_CONSTANT) + cholesky
                + rates.CG_ITERATIONS_PER_STEP * (PASSES_PER_CG_ITERATION * one_pass + 2 * d * d / rates.CHOLESKY_FMA)),
    }
    iterations = {"exact": rates.EXACT_ITERATIONS,
                  "sketch": rates.EXACT_ITERATIONS * rates.SKETCH_ITERATIONS_PER_EXACT,
                  "pcg": rates.EXACT_ITERATIONS * rates.PCG_ITERATIONS_PER_EXACT}
    start = sandwich(n) + cholesky + 3 * one_pass
    return {name: start + iterations[name] * (per_iteration[name] + PASSES_PER_ITERATION * one_pass)
            for name in per_iteration}


def choose_strategy(problem, eps, sketch_size):
    """``auto``: the strategy with the least predicted time to tol (``strategy_seconds``)."""
    seconds = strategy_seconds(problem, eps, sketch_size)
    return min(seconds, key=seconds.get)


def resolve_strategy(name, problem, eps, sketch_size):
    """(resolved strategy name, builder)."""
    if not isinstance(name, str):
        raise TypeError(f"hessian must be a string, got {type(name).__name__}")
    if name not in STRATEGIES:
        raise ValueError(f"hessian must be one of {', '.join(repr(s) for s in STRATEGIES)}, got {name!r}")
    if name == "auto":
        name = choose_strategy(problem, eps, sketch_size)
    return name, BUILDERS[name]
