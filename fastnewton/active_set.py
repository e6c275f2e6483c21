"""The Newton step when some loss terms are one-sided, ½ max(y_j, 0)², and the decrease its model predicts.

``softmax_relu``'s outputs with target b_j = 0 (and no offset: every output of the real model, the
inactive ones of the lifted surrogate) add ½ max(y_j, 0)² to L, y_j = (Vᵀ softmax(Cx))_j: nothing
while y_j ≤ 0, a quadratic penalty once y_j > 0. The Newton system at x holds output j's term only
where y_j > 0 (gradient y_j∇y_j, Hessian ∇y_j∇y_jᵀ + y_j∇²y_j). So a step from y_j < 0 that pushes y_j
past 0 does not see the penalty it will pay (the line search then cuts it to a fraction), and a step
from y_j > 0 holds y_j near 0 from both sides, as if the kink were a target. Along the valley floor of
an underdetermined problem (m < d) the iterate slides from one output's kink to another's.

The step here minimises the model that keeps each kink,

    m(p) = ĝᵀp + ½ pᵀM̂p + Σ_j ½ max(y_j + J_jᵀp, 0)²,   J_j = ∇y_j (columns of P = CᵀU: no pass over C),

with M = H + μD² and g the iteration's system, ĝ = g − Σ_{y_j>0} y_j J_j and M̂ = M − Σ_{y_j>0} J_jJ_jᵀ
(the one-sided terms taken out; their y_j∇²y_j stays). Semismooth Newton on ∇m = 0, i.e. the
primal-dual active set method: from the plain Newton step p₀ (A₀ = {y_j > 0}),
A_{k+1} = {j : y_j + J_jᵀp_k > 0} and p_{k+1} = −(M̂ + Σ_{j∈A} J_jJ_jᵀ)⁻¹(ĝ + Σ_{j∈A} y_j J_j), until A
repeats (p then minimises m where M̂ ≻ 0) or after MAX_UPDATES. Only the outputs whose membership
changed enter, as a low-rank update of M's factor (Woodbury): with U = [J_j] of those outputs and
Σ = diag(+1 added, −1 removed), (M + UΣUᵀ)⁻¹ = M⁻¹ − M⁻¹U(Σ + UᵀM⁻¹U)⁻¹UᵀM⁻¹. The plain step is
kept when a solve fails or the result is not a descent direction of L. Only for systems with a
factor (``exact``, ``sketch``): with CG each solve would cost passes over C.

Written a second time, compiled, in kernels/small_softmax_relu.py (``solve_many`` of small softmax_relu
problems); the two must make the same decisions (tests/test_solve_many_small.py).

Measured on bench/valley.py (n = 10⁵, d = 100, m = 16, l2 = 1e-8, 12 problems): iterations
55 → 49 on the longest, 389 → 374 in all, none more.
"""
import numpy as np

from .kernels.damping import predicted_ratio
from .reductions import dot

# The active set method ends in finitely many updates when M̂ ≻ 0 (Hintermüller, Ito & Kunisch 2002), usually
# one or two here; three bound the cost at a few triangular solves per damping try.
MAX_UPDATES = 3


def _solution(system, mu, vector):
    """M⁻¹·vector (M = H + μD²) from the system's factor, or None."""
    step = system.solve(vector, mu)
    return None if step is None else -step


def one_sided_step(system, g, mu, p, J, y):
    """(step, refined): the minimiser of the model above from the plain step p = −M⁻¹g, and whether it
    differs from p (the plain step when a solve fails or the result is not a descent direction)."""
    in_system = y > 0.0
    members = in_system
    step = p
    for _ in range(MAX_UPDATES):
        updated = y + J.T @ step > 0.0
        if np.array_equal(updated, members):
            break
        members = updated
        changed = members != in_system
        if not changed.any():
            step = p
            continue
        sign = np.where(members[changed], 1.0, -1.0)
        U = J[:, changed]
        rhs = g + U @ (sign * y[changed])
        M_rhs = _solution(system, mu, rhs)
        M_U = [_solution(system, mu, column) for column in U.T]
        if M_rhs is None or any(column is None for column in M_U):
            return p, False
        M_U = np.column_stack(M_U)
        try:
            correction = M_U @ np.linalg.solve(np.diag(sign) + U.T @ M_U, U.T @ M_rhs)
        except np.linalg.LinAlgError:
            return p, False
        step = -(M_rhs - correction)
        if not np.all(np.isfinite(step)):
            return p, False
    if step is p or not dot(g, step) < 0.0:
        return p, False
    return step, True


def one_sided_gain_ratio(system, g, J, y, s, actual, noise):
    """The gain ratio (``kernels.damping.predicted_ratio``) of a refined step s: actual / (m(0) − m(s)) for
    the undamped model m(s) = ĝᵀs + ½ sᵀĤs + Σ_j ½ max(y_j + J_jᵀs, 0)², Ĥ = H − Σ_{y_j>0} J_jJ_jᵀ
    (the plain step's identity sᵀHs = −gᵀs − μ‖Ds‖² does not hold for it)."""
    in_system = y > 0.0
    Js = J.T @ s
    g_hat = g - J[:, in_system] @ y[in_system]
    curvature = dot(s, system.matrix @ s) - dot(Js[in_system], Js[in_system])
    after, before = np.maximum(y + Js, 0.0), np.maximum(y, 0.0)
    kinks = 0.5 * dot(after, after) - 0.5 * dot(before, before)
    predicted = -(dot(g_hat, s) + 0.5 * curvature + kinks)
    return predicted_ratio(actual, predicted, noise)
