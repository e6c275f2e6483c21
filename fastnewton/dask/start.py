"""``x0="auto"`` on row blocks: the starts of ``fastnewton.start``, with every n-long step done on the workers.

The driver sees only the normal equations' partials (d × d, d × 2, scalars), the
cutting-plane rows of relu_softmax's margin LP (at most CUTTING_PLANE_ROWS per round)
and softmax_relu's m-sized simplex system.
"""
import numpy as np
import scipy.linalg

from ..start import ACTIVE_RTOL, _solve_psd, assemble_normal_system, floor_margin
from . import blocks


def auto_start(problem):
    if problem.model == "softmax":
        return _softmax_start(problem)
    if problem.model == "relu_softmax":
        return _relu_softmax_start(problem)
    return _softmax_relu_start(problem)


def _normal_system(problem, kind, parameters, intercept, normalise=False):
    rounds = problem.rounds
    summary = rounds.reduce(rounds.run(blocks.normal_system, args=(kind, parameters)))
    A, G, weight_sum, weighted_target = (summary["A"], summary["G"], summary["weight_sum"],
                                         summary["weighted_target"])
    if normalise:
        A, G, weighted_target, weight_sum = A / weight_sum, G / weight_sum, weighted_target / weight_sum, 1.0
    return assemble_normal_system(A, G, weight_sum, weighted_target, intercept)


def _log_linear_fit(problem, kind, parameters):
    z, _ = _solve_psd(*_normal_system(problem, kind, parameters, intercept=True, normalise=True))
    return z[:-1]


def _softmax_start(problem):
    if not problem.meta["max_b"] > 0.0:
        return np.zeros(problem.d), "zeros (auto: b has no positive entry to fit log b to)"
    return _log_linear_fit(problem, "log_b", None), "auto: b-weighted least-squares fit of log b on [C, 1]"


class _BlockFloorRows:
    """relu_softmax's floor rows, found block by block (the twin of ``fastnewton.start._FloorRows``)."""

    def __init__(self, problem, floor):
        self.rounds, self.floor = problem.rounds, floor

    def worst(self, x, k):
        found = self.rounds.gather(self.rounds.run(blocks.floor_worst, args=(x, self.floor, ACTIVE_RTOL, k)))
        values = np.concatenate([v for v, _ in found])
        index = np.concatenate([i for _, i in found])
        order = np.argsort(-values, kind="stable")[:k]
        return values[order], index[order]

    def rows(self, index):
        found = self.rounds.gather(self.rounds.run(blocks.rows_of, args=(index,)))
        # Blocks hold increasing row ranges and ``index`` is sorted, so block order is index order.
        return np.vstack([rows for rows, _ in found])


def _relu_softmax_start(problem):
    meta = problem.meta
    floor = -meta["max_negated_min_positive_b"]
    if not np.isfinite(floor):
        return np.zeros(problem.d), "zeros (auto: b has no positive entry to fit log b to)"
    if not meta["max_b"] > floor * (1.0 + ACTIVE_RTOL):
        return np.zeros(problem.d), "zeros (auto: b is uniform, so every x with Cx ≤ 0 is optimal)"
    M, rhs = _normal_system(problem, "active", (floor, ACTIVE_RTOL), intercept=False)
    x, null_space = _solve_psd(M, rhs)
    description = "auto: least-squares fit of log(b_i / min b) on the active rows"
    all_active = -meta["max_negated_min_b"] > floor * (1.0 + ACTIVE_RTOL)
    if null_space.shape[1] and not all_active:
        x, margin = floor_margin(_BlockFloorRows(problem, floor), x, null_space)
        description += f", floor rows pushed to Cx ≤ −{margin:.3g} in the active rows' null space (LP)"
    return x, description


def _softmax_relu_start(problem):
    """The simplex step of ``fastnewton.start._softmax_relu_start`` on V's row blocks, then the s-weighted fit."""
    rounds, b, n = problem.rounds, problem.b, problem.n
    equal = b > 0.0
    targets = np.where(equal, b, 0.0)
    for _ in range(b.shape[0] + 1):
        active_outputs = np.flatnonzero(equal)
        columns = rounds.reduce(rounds.run(blocks.simplex_columns, args=(active_outputs,)))
        y_uniform = columns["column_sums"] / n
        residual = np.append(targets[active_outputs] - y_uniform[active_outputs], 0.0)
        lam = scipy.linalg.lstsq(columns["AtA"], residual, check_finite=False)[0]
        outputs = rounds.reduce(rounds.run(blocks.simplex_outputs, args=(n, active_outputs, lam)))
        newly = (~equal) & (outputs["y"] > 0.0)
        if not newly.any():
            break
        equal |= newly
    x = _log_linear_fit(problem, "simplex", (n, active_outputs, lam, outputs["floored_sum"]))
    return x, ("auto: simplex vector closest to uniform with Vᵀs = b on active outputs, then an "
               "s-weighted least-squares fit of log s on [C, 1]")
