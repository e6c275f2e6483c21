"""Starting points: ``x0`` resolved, and the numerical helpers of the models' ``auto_start``.

Each model states its own ``auto_start(problem)`` (``fastnewton.models``); the helpers here are
written against the evaluator's ``map_blocks``/``gather_blocks``, so one start serves the
single-machine ``Problem`` (one block) and ``fastnewton.dask`` (row blocks on the workers) alike:

- ``normal_system``: the normal equations of a weighted least-squares fit of a per-row target
  on [C, 1] (one sandwich, one fused pass; the driver sees d × d, d × 2 and scalars);
- ``log_linear_fit``: x with softmax(Cx) ≈ p, the p- (or p²-) weighted fit of log p on [C, 1];
- ``sampled_normal_system``: that fit's normal equations from a leverage-score sample of the rows
  (a sketched strategy's start: ``FitSample``), when the sample certifies its scores;
- ``solve_psd``: the fit's solution, minimum norm with the null space when singular;
- ``floor_margin``: the cutting-plane LP that moves x in a null space to push chosen rows
  (``FloorRows``) to Cx ≤ −τ.
"""
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.optimize import linprog

from .kernels.reduce import overflow_free_scale
from .kernels.small_newton import JACOBI_FLOOR
from .kernels.softmax import log_fit_rows, log_fit_rows_serial
from .matrix import blocked_syrk_sandwich
from .newton import run_requests
from .reductions import all_finite, dot
from .sketching import sample_rows, spread_certified

# Eigenvalues of CᵀC below this fraction of the largest span the null space.
NULL_SPACE_RTOL = 1e-10
MARGIN = 1.0
MAX_CUTTING_PLANE_ROUNDS = 20
CUTTING_PLANE_ROWS = 2000


def starting_point(problem, x0):
    """Return (x0 as float64, a sentence saying how it was chosen)."""
    if isinstance(x0, str):
        if x0 == "zeros":
            return np.zeros(problem.d), "zeros"
        if x0 == "auto":
            return problem.auto_start()
        raise ValueError(f"x0 must be 'auto', 'zeros' or a length-{problem.d} array, got {x0!r}")
    return problem.as_point(x0, "x0").copy(), "given"


def normal_system_partials(block, row_fit, parameters, transposed_pass=None):
    """A block's CᵀΩC, Cᵀ[ω, ω t], Σω and Σωt for (ω, t) = row_fit(block, parameters); ``transposed_pass``
    forms Cᵀ[ω, ω t] (default: the block matrix's ``rmatmat``)."""
    weights, target = row_fit(block, parameters)
    transposed_pass = transposed_pass or block.matrix.rmatmat
    return fit_partials(weights, target, block.matrix.sandwich(weights), transposed_pass(fit_columns(weights, target)))


def _scaled_fit(block, parameters):
    """(ω·scale, t) of (ω, t) = row_fit(block, its parameters), for parameters (row_fit, its parameters, scale)."""
    row_fit, fit_parameters, scale = parameters
    weights, target = row_fit(block, fit_parameters)
    return weights * scale, target


def fit_columns(weights, target):
    """[ω, ω t]: the columns whose transposed pass gives Cᵀ[ω, ω t]."""
    return np.column_stack([weights, weights * target])


def fit_partials(weights, target, sandwich, transposed):
    """The partials of ``normal_system_partials`` from CᵀΩC and Cᵀ[ω, ω t] (however they were formed)."""
    return {"A": sandwich, "G": transposed, "weight_sum": float(weights.sum()), "weighted_target": dot(weights, target)}


@dataclass
class NormalSystemRequest:
    """The partials of a weighted least-squares fit that a start asks for (``normal_system_rounds``):
    ``run()`` sums ``normal_system_partials`` over the problem's blocks; ``solve_many`` forms those of
    many problems sharing C together (their sandwiches in one read of C)."""

    problem: object
    row_fit: object
    parameters: object

    def run(self, gradient_at_zero=True):
        """The partials; ``gradient_at_zero`` False: without the stopping test's ∇L(0) beside them (a caller
        whose Newton loops form their own: ``solve_many``'s compiled softmax_relu loops)."""
        problem = self.problem
        ride_along = getattr(problem, "rmatmat_with_gradient_at_zero", None)
        # One machine: the fit's transposed pass also gives the stopping test's ∇L(0), when not known yet,
        # with the bits of its own pass (one read of C less: ~6 ms on dense 10⁵ × 256; on CSR 2·10⁵ × 100,
        # 10 per row, ~2 ms: the pass, and the copy that padded the fit's 2 columns for the unrolled kernel,
        # whose 4 lanes take the 2 + 2 columns). Cᵀ[ω, ω t] has the same bits either way (a transposed
        # pass's sums do not depend on the other columns).
        # Not on Dask (an evaluator of many blocks: each block's partials, summed).
        if ride_along is None:
            return problem.map_blocks(normal_system_partials, self.row_fit, self.parameters)
        if not gradient_at_zero:
            return normal_system_partials(problem.block, self.row_fit, self.parameters)
        return normal_system_partials(problem.block, self.row_fit, self.parameters, transposed_pass=ride_along)


def normal_system(problem, row_fit, parameters, intercept, normalise=False):
    """(M, rhs) of min Σ ωᵢ((Cx)ᵢ [+ θ] − tᵢ)² with (ω, t) from ``row_fit`` on every block
    (``normalise``: ω divided by Σω, the weights of a probability vector)."""
    return run_requests(normal_system_rounds(problem, row_fit, parameters, intercept, normalise))


def normal_system_rounds(problem, row_fit, parameters, intercept, normalise=False):
    """``normal_system`` as a generator: yields its ``NormalSystemRequest``, is sent the partials.

    Sums that overflow (C's entries near 1e153: Σ ωᵢ C_ia C_ib past the largest float, while every Hessian
    Cᵀ diag(β) C with its smaller β is finite) are formed again with ω times ``overflow_free_scale(n)``: the
    same normal equations, scaled exactly. relu_softmax's start at C·1e153 had solved the overflowed system to
    x = 0, its dead point, and ended DEAD_STATIONARY at iteration 0; from its scaled start it converges."""
    summary = yield NormalSystemRequest(problem, row_fit, parameters)
    if not (all_finite(summary["A"]) and all_finite(summary["G"])):
        summary = yield NormalSystemRequest(problem, _scaled_fit, (row_fit, parameters, overflow_free_scale(problem.n)))
    A, G, weight_sum, weighted_target = (summary["A"], summary["G"], summary["weight_sum"],
                                         summary["weighted_target"])
    if normalise:
        A, G, weighted_target, weight_sum = A / weight_sum, G / weight_sum, weighted_target / weight_sum, 1.0
    return assemble_normal_system(A, G, weight_sum, weighted_target, intercept)


def assemble_normal_system(A, G, weight_sum, weighted_target, intercept):
    """(M, rhs) from CᵀΩC, Cᵀ[ω, ω t], Σω and Σωt (with the intercept column 1 when asked)."""
    if not intercept:
        return A, G[:, 1]
    d = A.shape[0]
    M = np.empty((d + 1, d + 1))
    M[:d, :d] = A
    M[:d, d] = M[d, :d] = G[:, 0]
    M[d, d] = weight_sum
    return M, np.append(G[:, 1], weighted_target)


def solve_psd(M, rhs):
    """Least-squares solution of the PSD system M z = rhs (minimum norm in Jacobi-scaled coordinates
    when M is singular), and a basis of M's null space. Scaled by D = √diag M first, so that the
    null-space threshold is relative per column: a column of C scaled by 1e-12 is not "null". (D_j was floored
    at √(eps·max M_jj): the softmax fit's intercept column, of unit diagonal, then counted as null once C's
    entries were ~1e12 or more, and C's columns once they were ~1e-14 or less: a start 2× off, and 15 and 8
    iterations where C itself took 2. Only a zero column is floored now: ``JACOBI_FLOOR``.)"""
    diagonal = np.diag(M) if M.size else np.zeros(0)
    top = float(diagonal.max()) if diagonal.size else 0.0
    if not top > 0.0:
        return np.zeros_like(rhs), np.eye(M.shape[0])
    D = np.sqrt(np.maximum(diagonal, JACOBI_FLOOR))
    z, null_space = _solve_scaled_psd(M / np.outer(D, D), rhs / D)
    return z / D, null_space / D[:, None]


def _solve_scaled_psd(M, rhs):
    scale = float(np.max(np.diag(M))) if M.size else 0.0
    if scale <= 0.0:
        return np.zeros_like(rhs), np.eye(M.shape[0])
    try:
        factor = scipy.linalg.cho_factor(M, lower=True, check_finite=False)
        pivots = np.diag(factor[0]) ** 2
        if pivots.min() > NULL_SPACE_RTOL * scale:
            return scipy.linalg.cho_solve(factor, rhs, check_finite=False), np.zeros((M.shape[0], 0))
    except np.linalg.LinAlgError:
        pass
    evals, evecs = scipy.linalg.eigh(M, check_finite=False)
    keep = evals > NULL_SPACE_RTOL * evals[-1]
    z = evecs[:, keep] @ ((evecs[:, keep].T @ rhs) / evals[keep])
    return z, evecs[:, ~keep]


# From this many rows ``_log_fit_rows`` runs the fit's rows as one parallel pass (``log_fit_rows``); below it
# on one thread, where waking the threads costs more than the pass (small problems, Dask's blocks).
LOG_FIT_PARALLEL_ROWS = 2**14


def _log_fit_rows(block, parameters):
    row_probabilities, their_parameters, squared = parameters
    p = np.ascontiguousarray(row_probabilities(block, their_parameters), dtype=np.float64)
    weights, target = np.empty(p.shape[0]), np.empty(p.shape[0])
    if p.shape[0] >= LOG_FIT_PARALLEL_ROWS:
        log_fit_rows(p, bool(squared), block.chunk, weights, target)
    else:
        log_fit_rows_serial(p, bool(squared), weights, target)
    return weights, target


def log_linear_fit(problem, row_probabilities, parameters=None, squared=False, sample=None):
    """x with softmax(Cx) ≈ p: the p-weighted least-squares fit of log p on [C, 1], rows with pᵢ ≤ 0
    dropped; ``row_probabilities(block, parameters)`` gives p on a block's rows (up to a common factor).

    ``squared``: weights p² instead, the fit that matches ½‖softmax(Cx) − p‖² to second order:
    softmax(u)ᵢ − pᵢ ≈ pᵢ·(log softmax(u)ᵢ − log pᵢ) near the fit, so that loss is ≈ ½ Σ pᵢ² (residual in
    log space)², and its Hessian's sandwich weights β ≈ s ⊙ s ≈ p² there (the p weights match the
    cross-entropy instead).
    ``sample``: a ``FitSample`` to fit on a leverage-score sample of the rows (``sampled_normal_system``;
    the exact fit when its sample does not certify its scores)."""
    return run_requests(log_linear_fit_rounds(problem, row_probabilities, parameters, squared, sample))


def log_linear_fit_rounds(problem, row_probabilities, parameters=None, squared=False, sample=None):
    """``log_linear_fit`` as a generator of its ``NormalSystemRequest`` (none when the sample serves)."""
    fit = (row_probabilities, parameters, squared)
    system = None if sample is None else sampled_normal_system(problem, _log_fit_rows, fit, sample)
    if system is None:
        system = yield from normal_system_rounds(problem, _log_fit_rows, fit, intercept=True, normalise=True)
    if sample is not None:
        sample.normal_matrix = system[0]
    z, _ = solve_psd(*system)
    return z[:-1]


@dataclass
class FitSample:
    """How a start fits from a sample of rows (``sampled_normal_system``): the solve's
    ``LeverageReference`` (whose row factors gᵢ the Newton iterations then reuse), about ``size`` rows,
    the start's own random stream. ``kept`` is set to the rows the fit used, or 0 when it refused the
    sample (the exact fit then ran); ``normal_matrix`` to the fit's M over [C, 1] (ω normalised to
    Σω = 1; sampled, or exact when refused), which ``pcg`` reuses as its preconditioner
    (``fastnewton.hessian.PreconditionerSystems``)."""

    reference: object
    size: int
    rng: object
    kept: int = 0
    normal_matrix: object = None


def sampled_normal_system(problem, row_fit, parameters, sample):
    """(M̃, r̃) for min Σ ωᵢ((Cx)ᵢ + θ − tᵢ)² (ω normalised to Σω = 1, as ``normal_system(...,
    intercept=True, normalise=True)``) from a Poisson sample of about s = ``sample.size`` rows, or None
    when the sample does not certify its scores.

    The rows aᵢ = [cᵢ, 1] are kept with πᵢ = min(1, s·ℓᵢ/Σℓ), ℓᵢ = ωᵢ·(‖(cᵢ − μ)D⁻¹‖² + 1/n): the
    scores of the reference R⁻¹ = Tᵀ diag(D⁻², 1/n) T on [C, 1], where T aᵢ = [cᵢ − μ, 1] centres the
    rows on their ω-mean μ = Σωᵢcᵢ (one transposed pass) and D is the reference's column scale (its
    row factors gᵢ = ‖cᵢD⁻¹‖² give ‖(cᵢ − μ)D⁻¹‖² = gᵢ − 2cᵢᵀD⁻²μ + ‖D⁻¹μ‖² with one forward pass).
    Centring is what lets the intercept count as one unit column (1/n, ‖1‖² = n): in the centred
    coordinates the fit's Gram is block-diagonal, [[Σ, 0], [0, 1]] with Σ the ω-covariance, so the true
    scores are ωᵢ(‖cᵢ − μ‖²_Σ⁻¹ + 1). Without centring a concentrated ω (the softmax start's b² weights)
    leaves a mean that the diagonal reference cannot see, and no intercept weight certifies (measured on
    dense planted problems: 0 of 15 samples, against 15 of 15 centred). One blocked float32 SYRK of
    the kept rows [(cᵢ − μ)D⁻¹, 1, tᵢ] (centred and scaled, so that float32 rounds relative to the
    ω-covariance) with weights ωᵢ/πᵢ gives T M̃ Tᵀ, and with it (``uncentred_gram``) M̃ = Σ (ωᵢ/πᵢ) aᵢaᵢᵀ and
    r̃ = Σ (ωᵢ/πᵢ) tᵢaᵢ: the normal equations of the sampled fit (sketch-and-solve). With ℓ within a constant of the
    leverage scores of Ω^{1/2}[C, 1] and s = O(d log d/ε²) rows, M̃ is an ε-spectral approximation of M
    and the fit's weighted residual is within a factor (1 + ε)/(1 − ε) of the exact fit's
    (tests/test_start.py). The certificate is the reference's (``fastnewton.sketching.spread_certified``
    on T M̃ Tᵀ whitened by diag(D, √n)): without it, e.g. on strongly correlated columns, the exact fit
    runs. Costs s·(d + 2)²/2 multiply-adds and two reads of C: μ (whose pass also gives the stopping
    test's ∇L(0): ``Problem.rmatmat_with_gradient_at_zero``), then cᵢᵀD⁻²μ with the reference's row
    factors gᵢ (``LeverageReference.row_factors_and_matvec``).
    """
    block = problem.block
    matrix = block.matrix
    n, d = matrix.n, matrix.d
    weights, target = row_fit(block, parameters)
    total = float(weights.sum())
    if not total > 0.0:
        return None
    weights = weights / total
    reference = sample.reference
    # μ's pass also forms the stopping test's ∇L(0) (and, in ``solve``, C's column squares, which check its
    # entries: ``DenseMatrix.check_on_first_pass``), and C·D⁻²μ's the reference's row factors gᵢ.
    mean = problem.rmatmat_with_gradient_at_zero(weights[:, None])[:, 0]
    column_scale = reference.first_scale(matrix)
    scaled_mean = (1.0 / column_scale**2) * mean  # D⁻²μ
    row_factors, product = reference.row_factors_and_matvec(matrix, scaled_mean)
    centred = row_factors - 2.0 * product + float(np.dot(scaled_mean, mean))
    # The expansion can round a row at the mean slightly below 0; a score only needs a constant factor.
    rows, pi = sample_rows(weights * (np.maximum(centred, 0.0) + 1.0 / n), sample.size, sample.rng)
    sample.kept = 0
    if rows.shape[0] <= d:
        return None
    # The kept rows [(cᵢ − μ)D⁻¹, 1, tᵢ], gathered, centred and scaled by the SYRK itself, in float32 (the SYRK
    # at twice the speed: 13.1k × 258 at dense 10⁵ × 256, ~16 → ~8 ms). Centred and scaled, the float32 rounding
    # (~1e-7 per entry, ~1e-5 in each sum) is relative to the ω-covariance that the fit and the certificate use,
    # whatever the columns' means and scales; the sample's own error is ε ≈ 0.5.
    ones_and_target = np.column_stack([np.ones(rows.shape[0]), target[rows]])

    def sampled_rows(part):
        return matrix.gathered(rows[part])

    gram = blocked_syrk_sandwich(sampled_rows, weights[rows] / pi, d, extra_columns=ones_and_target, shift=mean,
                                 column_factors=1.0 / column_scale, dtype=np.float32)
    # The certificate's matrix: the centred Gram whitened by diag(D, √n) (the rows are scaled by D⁻¹ already).
    whitened = gram[:d + 1, :d + 1].copy()
    whitened[d, :] /= math.sqrt(n)
    whitened[:, d] /= math.sqrt(n)
    if not spread_certified(whitened):
        return None
    scale = np.append(column_scale, [1.0, 1.0])
    full = uncentred_gram(gram * np.outer(scale, scale), mean)
    sample.kept = int(rows.shape[0])
    return np.ascontiguousarray(full[:d + 1, :d + 1]), full[:d + 1, d + 1].copy()


def uncentred_gram(G, mean):
    """The Gram of rows [cᵢ, 1, eᵢ] from G, that of the centred rows [cᵢ − μ, 1, eᵢ] (d = len(μ) columns, then
    the unit column, then any others): P G Pᵀ with cᵢ = (cᵢ − μ) + μ·1, i.e. P = I + μ e_dᵀ on the first d
    rows, as two rank-one updates in O(d²) (two (d + 2)³ products took ~2 ms of the dense 10⁵ × 256 start); the
    lower triangle mirrored, so the result is exactly symmetric as a SYRK's."""
    d = mean.shape[0]
    out = G.copy()
    out[:d, :] += np.outer(mean, G[d, :])
    out[:, :d] += np.outer(out[:, d], mean)
    lower = np.tril(out)
    return lower + np.tril(lower, -1).T


def worst_rows(block, x, is_floor, parameters, k):
    """The block's k rows with is_floor(block, parameters) and the largest (Cx)ᵢ: (values, global rows)."""
    u = block.matrix.matvec(x)
    floor_index = np.flatnonzero(is_floor(block, parameters))
    values = u[floor_index]
    order = np.argsort(-values, kind="stable")[:k]
    return values[order], floor_index[order] + block.offset


def rows_of(block, global_rows):
    """The block's rows among ``global_rows`` as dense float64: (those rows, their global indices)."""
    local = global_rows[(global_rows >= block.offset) & (global_rows < block.offset + block.rows)] - block.offset
    return block.matrix.rows(local), local + block.offset


class FloorRows:
    """The rows with is_floor(block, parameters), found block by block, for ``floor_margin``."""

    def __init__(self, problem, is_floor, parameters):
        self.problem, self.is_floor, self.parameters = problem, is_floor, parameters

    def worst(self, x, k):
        """The k floor rows with the largest (Cx)_i: (values, descending; row indices)."""
        found = self.problem.gather_blocks(worst_rows, x, self.is_floor, self.parameters, k)
        values = np.concatenate([v for v, _ in found])
        index = np.concatenate([i for _, i in found])
        order = np.argsort(-values, kind="stable")[:k]
        return values[order], index[order]

    def rows(self, index):
        # Blocks hold increasing row ranges and ``index`` is sorted, so block order is index order.
        return np.vstack([rows for rows, _ in self.problem.gather_blocks(rows_of, index)])


def floor_margin(floor, x, null_space):
    """Largest τ ≤ MARGIN with C_F (x + N δ) ≤ −τ, and among such δ the smallest ‖δ‖₁.

    Two LPs per round (HiGHS): maximise τ over free δ, then minimise ‖δ‖₁ at that τ, so
    x moves no further than the margin needs. Cutting planes: the LPs see a working set
    of floor rows; the worst CUTTING_PLANE_ROWS rows violated by the solution are added
    and the LPs re-solved until none is violated. ``floor`` gives the worst floor rows at
    a point and the rows themselves (``FloorRows``).
    """
    r = null_space.shape[1]
    working = np.zeros(0, dtype=np.int64)
    best_x, best_margin = x, -np.inf
    candidate, tau = x, MARGIN
    for _ in range(MAX_CUTTING_PLANE_ROUNDS):
        values, index = floor.worst(candidate, CUTTING_PLANE_ROWS)
        if -values[0] > best_margin:
            best_x, best_margin = candidate, -values[0]
        new = np.setdiff1d(index[values > -tau + 1e-12], working)
        if new.size == 0:
            break
        working = np.union1d(working, new)
        C_working = floor.rows(working)
        CN, Cx = C_working @ null_space, C_working @ x
        # 1) variables (δ, τ): maximise τ subject to C_W N δ + τ ≤ −C_W x, τ ≤ MARGIN.
        first = linprog(np.append(np.zeros(r), -1.0), A_ub=np.column_stack([CN, np.ones(working.size)]),
                        b_ub=-Cx, bounds=[(None, None)] * r + [(None, MARGIN)], method="highs")
        if first.status != 0:
            break
        tau = first.x[r]
        # 2) variables (δ⁺, δ⁻) ≥ 0: minimise Σ(δ⁺ + δ⁻) subject to C_W N (δ⁺ − δ⁻) ≤ −C_W x − τ.
        second = linprog(np.ones(2 * r), A_ub=np.column_stack([CN, -CN]), b_ub=-Cx - tau + 1e-9 * (1.0 + abs(tau)),
                         bounds=[(0, None)] * (2 * r), method="highs")
        delta = second.x[:r] - second.x[r:] if second.status == 0 else first.x[:r]
        candidate = x + null_space @ delta
    return best_x, best_margin
