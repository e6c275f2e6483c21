"""Starting points (SPEC §3, ``x0="auto"``): one sandwich and one small factorisation each.

- ``softmax``: log b = Cx − logsumexp(Cx) at a zero-residual optimum, so a b-weighted
  least-squares fit of log b on [C, 1] (rows with b_i ≤ 0 dropped) starts at or near x*.
- ``relu_softmax``: rows with b_i > f·(1 + rtol), f = min b (the softmax floor of inactive
  rows), are active; fit (Cx)_i = log(b_i / f) on them by least squares, then, when the
  active rows leave a null space, move in it so that floor rows get Cx ≤ −τ with the
  largest margin τ ≤ 1 (an LP solved by HiGHS over a cutting-plane working set).
  This never returns x = 0, the dead stationary point, unless b is uniform (then 0 is optimal).
- ``softmax_relu``: the simplex vector s closest to uniform with (Vᵀs)_j = b_j on active
  outputs (b_j > 0) and (Vᵀs)_j = 0 on inactive outputs that would otherwise be positive
  (a closed-form minimum-norm solution on an active set), floored and renormalised;
  then the s-weighted log-linear fit of log s on [C, 1], as for ``softmax``.
"""
import numpy as np
import scipy.linalg
from scipy.optimize import linprog

from .matrix import DenseMatrix
from .reductions import dot

# Relative gap above the floor f = min b for a row of relu_softmax to count as active
# (above the relative noise of float64 softmax values, below any planted signal).
ACTIVE_RTOL = 1e-6
# Eigenvalues of CᵀC below this fraction of the largest span the null space.
NULL_SPACE_RTOL = 1e-10
MARGIN = 1.0
MAX_CUTTING_PLANE_ROUNDS = 20
CUTTING_PLANE_ROWS = 2000
# softmax_relu: floor of the simplex vector, as a fraction of the uniform value 1/n.
SIMPLEX_FLOOR = 1e-3


def starting_point(problem, x0):
    """Return (x0 as float64, a sentence saying how it was chosen)."""
    if isinstance(x0, str):
        if x0 == "zeros":
            return np.zeros(problem.d), "zeros"
        if x0 == "auto":
            return problem._auto_start()
        raise ValueError(f"x0 must be 'auto', 'zeros' or a length-{problem.d} array, got {x0!r}")
    return problem._as_point(x0, "x0").copy(), "given"


def auto_start(problem):
    """``x0="auto"`` for a (single-machine) ``Problem``: (x0, description)."""
    if problem.model == "softmax":
        return _softmax_start(problem.matrix, problem.b)
    if problem.model == "relu_softmax":
        return _relu_softmax_start(problem.matrix, problem.b)
    return _softmax_relu_start(problem.matrix, problem.b, problem.V)


def _normal_system(matrix, weights, target, intercept):
    """Normal equations of min Σ ω_i ((Cx)_i [+ θ] − t_i)²: one sandwich, one fused pass."""
    A = matrix.sandwich(weights)
    G = matrix.rmatmat(np.column_stack([weights, weights * target]))
    return assemble_normal_system(A, G, weights.sum(), dot(weights, target), intercept)


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


def _solve_psd(M, rhs):
    """Least-squares solution of the PSD system M z = rhs (minimum norm in Jacobi-scaled coordinates
    when M is singular), and a basis of M's null space. Scaled by D = √diag M first, so that the
    null-space threshold is relative per column: a column of C scaled by 1e-12 is not "null"."""
    diagonal = np.diag(M) if M.size else np.zeros(0)
    top = float(diagonal.max()) if diagonal.size else 0.0
    if not top > 0.0:
        return np.zeros_like(rhs), np.eye(M.shape[0])
    D = np.sqrt(np.maximum(diagonal, np.finfo(np.float64).eps * top))
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


def _log_linear_fit(matrix, p):
    """x with softmax(Cx) ≈ p: p-weighted least squares of log p on [C, 1], rows with p_i ≤ 0 dropped."""
    positive = p > 0.0
    weights = np.where(positive, p, 0.0) / p[positive].sum()
    target = np.log(np.where(positive, p, 1.0))
    M, rhs = _normal_system(matrix, weights, target, intercept=True)
    z, _ = _solve_psd(M, rhs)
    return z[:-1]


def _softmax_start(matrix, b):
    if not np.any(b > 0.0):
        return np.zeros(matrix.d), "zeros (auto: b has no positive entry to fit log b to)"
    return _log_linear_fit(matrix, b), "auto: b-weighted least-squares fit of log b on [C, 1]"


def _relu_softmax_start(matrix, b):
    positive = b[b > 0.0]
    if positive.size == 0:
        return np.zeros(matrix.d), "zeros (auto: b has no positive entry to fit log b to)"
    floor = positive.min()
    active = b > floor * (1.0 + ACTIVE_RTOL)
    if not np.any(active):
        return np.zeros(matrix.d), "zeros (auto: b is uniform, so every x with Cx ≤ 0 is optimal)"
    weights = active.astype(np.float64)
    target = np.where(active, np.log(np.maximum(b, floor) / floor), 0.0)
    M, rhs = _normal_system(matrix, weights, target, intercept=False)
    x, null_space = _solve_psd(M, rhs)
    description = (f"auto: least-squares fit of log(b_i / min b) on the {int(active.sum())} active rows")
    if null_space.shape[1] and not np.all(active):
        x, margin = floor_margin(_FloorRows(matrix, ~active), x, null_space)
        description += f", floor rows pushed to Cx ≤ −{margin:.3g} in the active rows' null space (LP)"
    return x, description


class _FloorRows:
    """The floor rows of relu_softmax's start on one machine (``fastnewton.dask`` has a blockwise twin)."""

    def __init__(self, matrix, floor_rows):
        self.matrix, self.index = matrix, np.flatnonzero(floor_rows)

    def worst(self, x, k):
        """The k floor rows with the largest (Cx)_i: (values, descending; row indices)."""
        u = self.matrix.matvec(x)[self.index]
        order = np.argsort(-u, kind="stable")[:k]
        return u[order], self.index[order]

    def rows(self, index):
        return self.matrix.rows(index)


def floor_margin(floor, x, null_space):
    """Largest τ ≤ MARGIN with C_F (x + N δ) ≤ −τ, and among such δ the smallest ‖δ‖₁.

    Two LPs per round (HiGHS): maximise τ over free δ, then minimise ‖δ‖₁ at that τ, so
    x moves no further than the margin needs. Cutting planes: the LPs see a working set
    of floor rows; the worst CUTTING_PLANE_ROWS rows violated by the solution are added
    and the LPs re-solved until none is violated. ``floor`` gives the worst floor rows at
    a point and the rows themselves (``_FloorRows``).
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


def _softmax_relu_start(matrix, b, V):
    n, m = V.shape
    values = DenseMatrix(V)
    uniform = np.full(n, 1.0 / n)
    y_uniform = values.rmatmat(uniform[:, None])[:, 0]
    equal = b > 0.0
    targets = np.where(equal, b, 0.0)
    s = uniform
    for _ in range(m + 1):
        # min ‖s − 1/n‖² s.t. V_Eᵀ s = b_E, 1ᵀs = 1: s = 1/n + [V_E, 1] λ, a (|E|+1)-square system.
        A = np.column_stack([V[:, equal], np.ones(n)])
        residual = np.append(targets[equal] - y_uniform[equal], 0.0)
        lam = scipy.linalg.lstsq(DenseMatrix(A).sandwich(np.ones(n)), residual, check_finite=False)[0]
        s = uniform + A @ lam
        newly = (~equal) & (values.rmatmat(s[:, None])[:, 0] > 0.0)
        if not newly.any():
            break
        equal |= newly
    s = np.maximum(s, SIMPLEX_FLOOR / n)
    s /= s.sum()
    return _log_linear_fit(matrix, s), ("auto: simplex vector closest to uniform with Vᵀs = b on active "
                                        "outputs, then an s-weighted least-squares fit of log s on [C, 1]")
