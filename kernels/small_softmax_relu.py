"""Many small ``softmax_relu`` Newton loops at once: one Newton loop (``fastnewton.newton.newton_solve`` with the
exact Hessian) per request, compiled, the requests handed out one at a time to the tasks of a parallel loop
(``solve_relu_loops``). ``fastnewton.many_small`` drives the staged solve of ``fastnewton.lifted_start`` (start,
ridge stages, branch probe, real loss, restarts) in Python once per stage for all problems, and each round's
Newton loops (one per problem) run here: no Python per iteration. So do the figures between the stages
(``stage_figures``: the losses of the reachability test, λmax of the ridge continuation).

A request is the loop of one stage: the model h(u) = ReLU(Vᵀ softmax(u)) with output offsets o and targets
b (the real loss: o = 0; the lifted surrogate; a branch probe's moved kinks), ridge l2, tol, max_iter, from x0.
With s = softmax(u), y = Vᵀs, a = 1[y + o > 0], r = a ⊙ (y − b) − (1 − a) ⊙ (b + o), ρ = V(a ⊙ r), c = ⟨s, ρ⟩:

    L = ½‖r‖² + ½ Σ wᵢuᵢ² + ½ l2‖x‖²,   ∇L = Cᵀ(s ⊙ ρ + w ⊙ u) − c·Cᵀs + l2·x,
    ∇²L = Cᵀ diag(s ⊙ ρ − c s + w) C + P S Pᵀ + l2·I,  P = Cᵀ[s, s ⊙ ρ, J V],  S = [[2c, −1], [−1, 0]] ⊕ diag(a),

(J V)_ij = s_i (V_ij − y_j) (``fastnewton.models.softmax_relu``). The loop is ``kernels/small_newton.py``'s
``newton_loop`` (``NewtonRun``'s rules, the damped Newton step of ``fastnewton.hessian.NewtonSystem`` in scaled
columns, the logit cap, Armijo backtracking, the longer trial and the carried u), given this model's evaluation,
its Hessian and the one-sided active-set step of ``fastnewton.active_set`` that refines the step where outputs with
b_j = 0, o_j = 0 exist (Woodbury updates of the factor, at most MAX_UPDATES). ``tests/test_solve_many_small.py``
checks the decisions problem by problem against ``fastnewton.solve``. The passes over C and V are
``kernels/small_newton.py``'s one-thread ones (the parallel kernels' chunks and orders); the small dense algebra
(P S Pᵀ, the Woodbury solves, dot products) is summed in loops here where ``solve`` calls BLAS, so the bits can
differ from ``solve``'s by rounding (answers agree to ~1e-12 relative, not bit for bit).

A request's row ``table[r]`` (the ``T_*`` columns) gives its shapes, where C (as in small_newton's
``addresses``), V (n × m float64, row-major) and w lie, and where its packed vectors start: x (length d, by
T_COL: x0 in, the answer out) and the length-m b, o, y and previous y (by T_OUT). A Newton loop that meets a
non-finite value stops with status NON_FINITE and nothing else: the caller runs that request in Python
(its message needs the evaluation's arrays). Compiled with NumPy's error model, as kernels/small_newton.py (whose
functions these loops inline): a division by zero gives ±inf or NaN, and division loops run as vectors.
"""
import math

import numpy as np
from numba import njit, prange

from .atomic import next_taken
from .damping import predicted_ratio
from .in_place import array_at
from .small_newton import (_all_finite, _cholesky, _cholesky_solve, _dot, _half_ridge, _matvec, _quadratic, _rmatmat,
                           _sandwich, _sandwich_work, matrix_at, newton_loop, no_cg_step, no_curvature, no_held_cg,
                           no_kink_test, scaled_step, S_ROUNDING_FACTOR)
from .softmax import (curvature_weights_serial, log_partition_serial, softmax_relu_columns_row,
                      softmax_relu_gradient_rounding)

# Columns of ``table`` (int64, one row per request).
(T_N, T_D, T_M, T_CSR, T_CHUNK, T_VALUES, T_INDPTR, T_INDICES, T_V, T_W, T_COL, T_OUT, T_MAX_ITER,
 T_INDEX_BYTES) = range(14)
TABLE_FIELDS = 14
# Columns of ``numbers`` (float64, one row per request).
N_L2, N_TOL, N_TARGET_NORM = range(3)
NUMBER_FIELDS = 3
# Columns of ``out_int``: status (small_newton's CONVERGED, MAX_ITER, STALLED, NON_FINITE, or NO_STEP_STALL:
# stalled because no damping gave a step), iterations.
O_STATUS, O_N_ITER = range(2)
OUT_INT_FIELDS = 2
# Columns of ``out_float``: loss, ‖∇L‖, g_ref, and the bound on ∇L(0)'s rounding where a stall within it
# ended CONVERGED (0: not so; ``small_newton.newton_loop``).
O_LOSS, O_GRAD_NORM, O_G_REF, O_ROUNDING_BOUND = range(4)
OUT_FLOAT_FIELDS = 4


@njit(cache=True, error_model="numpy")
def _max_abs(a):
    """max|aᵢ| over a 1-D array (0 when empty)."""
    largest = 0.0
    for i in range(a.shape[0]):
        largest = max(largest, abs(a[i]))
    return largest


# -- one evaluation -----------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _outputs(Vm, u, x, b, offset, w, l2, chunk_rows, e, s, y, active_residual):
    """The loss stages at u = Cx (``SoftmaxRelu``'s ``_log_partition``, ``_outputs``, ``_residual``): fills e, s,
    y and a ⊙ r; returns L (with the ridge)."""
    n = u.shape[0]
    m = y.shape[0]
    top, total = log_partition_serial(u, False, chunk_rows, e)
    factor = math.exp(top - top) / total  # LogPartition.factor on the one block
    for i in range(n):
        s[i] = e[i] * factor
    _rmatmat(Vm, s.reshape((n, 1)), chunk_rows, y.reshape((m, 1)))
    weighted = 0.0
    for i in range(n):
        weighted += u[i] * (w[i] * u[i])
    r2 = 0.0
    for j in range(m):
        if y[j] + offset[j] > 0.0:
            r = y[j] - b[j]
            active_residual[j] = r
        else:
            r = -(b[j] + offset[j])
            active_residual[j] = 0.0
        r2 += r * r
    return (0.5 * r2 + 0.5 * weighted) + _half_ridge(l2, x)


@njit(cache=True, error_model="numpy")
def _evaluate(matrix, Vm, u, x, b, offset, w, l2, chunk_rows, e, s, y, active_residual, rho, Q, G, grad):
    """The evaluation at u = Cx: the loss stages, then ρ, Q = [s ρ + w u, s, s ρ, J V], G = CᵀQ and ∇L;
    returns (L, c)."""
    n = u.shape[0]
    V = Vm[0]
    loss = _outputs(Vm, u, x, b, offset, w, l2, chunk_rows, e, s, y, active_residual)
    _matvec(Vm, active_residual, rho)
    c = 0.0
    for i in range(n):
        c += softmax_relu_columns_row(u, s, rho, V, y, w, Q, i)
    _rmatmat(matrix, Q, chunk_rows, G)
    for j in range(grad.shape[0]):
        grad[j] = (G[j, 0] - c * G[j, 1]) + l2 * x[j]
    return loss, c


@njit(cache=True, error_model="numpy")
def _hessian(matrix, Q, c, G, y, offset, w, l2, beta, H, work):
    """H = Cᵀ diag(β) C + ½(P S Pᵀ + (P S Pᵀ)ᵀ) + l2·I, β = Q[:, 2] − c·Q[:, 1] + w, P = G[:, 1:]
    (``Problem.hessian_matrix``), the whole symmetric matrix."""
    d = H.shape[0]
    m = y.shape[0]
    curvature_weights_serial(Q, c, w, beta)
    _sandwich(matrix, beta, H, work)
    # The active outputs' columns of P side by side (rows contiguous: the pair sums below vectorise).
    active = 0
    for t in range(m):
        if y[t] + offset[t] > 0.0:
            active += 1
    Pa = np.empty((d, active))
    at = 0
    for t in range(m):
        if y[t] + offset[t] > 0.0:
            for j in range(d):
                Pa[j, at] = G[j, 3 + t]
            at += 1
    for j in range(d):
        for l in range(j + 1):
            # (P S Pᵀ)_jl = 2c P_j0 P_l0 − P_j0 P_l1 − P_j1 P_l0 + Σ_t a_t P_j(2+t) P_l(2+t); the active sum is its
            # own mirror (the same products in the same order), the first part is averaged with its transpose's.
            low = (2.0 * c * G[j, 1] - G[j, 2]) * G[l, 1] - G[j, 1] * G[l, 2]
            mirrored = (2.0 * c * G[l, 1] - G[l, 2]) * G[j, 1] - G[l, 1] * G[j, 2]
            outputs = 0.0
            for t in range(active):
                outputs += Pa[j, t] * Pa[l, t]
            H[j, l] += 0.5 * (low + mirrored) + outputs
            if l != j:
                H[l, j] = H[j, l]
        H[j, j] += l2


# -- the one-sided step (fastnewton.active_set) -------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _solution(L, column_scale, vector, out):
    """out = M⁻¹·vector, M = H + μD² = D (L Lᵀ) D."""
    d = vector.shape[0]
    scaled = np.empty(d)
    for j in range(d):
        scaled[j] = vector[j] / column_scale[j]
    _cholesky_solve(L, scaled, out)
    for j in range(d):
        out[j] = out[j] / column_scale[j]


@njit(cache=True, error_model="numpy")
def _lu_solve(K, rhs):
    """K⁻¹ rhs by Gaussian elimination with partial pivoting (as LAPACK's gesv), or None when a pivot is
    exactly 0 (``np.linalg.solve`` raises LinAlgError)."""
    q = K.shape[0]
    A = K.copy()
    z = rhs.copy()
    for k in range(q):
        pivot = k
        for i in range(k + 1, q):
            if abs(A[i, k]) > abs(A[pivot, k]):
                pivot = i
        if A[pivot, k] == 0.0:
            return None
        if pivot != k:
            for j in range(q):
                A[k, j], A[pivot, j] = A[pivot, j], A[k, j]
            z[k], z[pivot] = z[pivot], z[k]
        for i in range(k + 1, q):
            f = A[i, k] / A[k, k]
            for j in range(k, q):
                A[i, j] -= f * A[k, j]
            z[i] -= f * z[k]
    for k in range(q - 1, -1, -1):
        t = z[k]
        for j in range(k + 1, q):
            t -= A[k, j] * z[j]
        z[k] = t / A[k, k]
    return z


@njit(cache=True, error_model="numpy")
def _one_sided_step(L, column_scale, g, p, G, one_sided, y, max_updates, step):
    """``fastnewton.active_set.one_sided_step``: writes the refined step into ``step`` and returns True, or
    False (the plain step p stays). J_j = P[:, 2 + j] = G[:, 3 + j] for the one-sided outputs j."""
    d = g.shape[0]
    q = one_sided.shape[0]
    in_system = np.empty(q, dtype=np.bool_)
    members = np.empty(q, dtype=np.bool_)
    updated = np.empty(q, dtype=np.bool_)
    for k in range(q):
        in_system[k] = y[one_sided[k]] > 0.0
        members[k] = in_system[k]
    step[:] = p
    is_p = True
    for _ in range(max_updates):
        same = True
        for k in range(q):
            jp = 0.0
            column = 3 + one_sided[k]
            for j in range(d):
                jp += G[j, column] * step[j]
            updated[k] = y[one_sided[k]] + jp > 0.0
            same &= updated[k] == members[k]
        if same:
            break
        members[:] = updated
        changed = np.flatnonzero(members != in_system)
        if changed.shape[0] == 0:
            step[:] = p
            is_p = True
            continue
        r = changed.shape[0]
        sign = np.empty(r)
        rhs = g.copy()
        for a in range(r):
            k = changed[a]
            sign[a] = 1.0 if members[k] else -1.0
            weight = sign[a] * y[one_sided[k]]
            column = 3 + one_sided[k]
            for j in range(d):
                rhs[j] += G[j, column] * weight
        M_rhs = np.empty(d)
        _solution(L, column_scale, rhs, M_rhs)
        M_U = np.empty((d, r))
        column_vector = np.empty(d)
        solved = np.empty(d)
        for a in range(r):
            column = 3 + one_sided[changed[a]]
            for j in range(d):
                column_vector[j] = G[j, column]
            _solution(L, column_scale, column_vector, solved)
            M_U[:, a] = solved
        K = np.zeros((r, r))
        Ut_M_rhs = np.zeros(r)
        for a in range(r):
            column = 3 + one_sided[changed[a]]
            K[a, a] = sign[a]
            for c2 in range(r):
                acc = 0.0
                for j in range(d):
                    acc += G[j, column] * M_U[j, c2]
                K[a, c2] += acc
            acc = 0.0
            for j in range(d):
                acc += G[j, column] * M_rhs[j]
            Ut_M_rhs[a] = acc
        z = _lu_solve(K, Ut_M_rhs)
        if z is None:
            return False
        for j in range(d):
            correction = 0.0
            for a in range(r):
                correction += M_U[j, a] * z[a]
            step[j] = -(M_rhs[j] - correction)
        is_p = False
        if not _all_finite(step):
            return False
    if is_p or not _dot(g, step) < 0.0:
        return False
    return True


@njit(cache=True, error_model="numpy")
def _one_sided_gain_ratio(H, g, G, one_sided, y, step, actual, noise):
    """``fastnewton.active_set.one_sided_gain_ratio`` of the refined step ``step`` (t·p along the line)."""
    d = g.shape[0]
    g_hat_s = _dot(g, step)
    kinks_after = 0.0
    kinks_before = 0.0
    in_curvature = 0.0
    for k in range(one_sided.shape[0]):
        column = 3 + one_sided[k]
        js = 0.0
        for j in range(d):
            js += G[j, column] * step[j]
        yk = y[one_sided[k]]
        if yk > 0.0:
            g_hat_s -= yk * js
            in_curvature += js * js
        after = max(yk + js, 0.0)
        before = max(yk, 0.0)
        kinks_after += after * after
        kinks_before += before * before
    curvature = _quadratic(H, step) - in_curvature
    kinks = 0.5 * kinks_after - 0.5 * kinks_before
    predicted = -(g_hat_s + 0.5 * curvature + kinks)
    return predicted_ratio(actual, predicted, noise)


# -- the model's functions for the Newton loop (kernels/small_newton.py's newton_loop) ----------------------
@njit(cache=True, error_model="numpy")
def _new_point(n, d, m):
    """A point's arrays: u, ∇L, e, s, y, a ⊙ r, Q, G."""
    return (np.empty(n), np.empty(d), np.empty(n), np.empty(n), np.empty(m), np.empty(m), np.empty((n, m + 3)),
            np.empty((d, m + 3)))


@njit(cache=True, error_model="numpy")
def _evaluate_point(model, matrix, x, point):
    """``_evaluate`` from point's u; scalars (c,)."""
    Vm, b, offset, w, l2, chunk_rows, work, beta, rho, one_sided, max_updates = model
    u, grad, e, s, y, active_residual, Q, G = point
    loss, c = _evaluate(matrix, Vm, u, x, b, offset, w, l2, chunk_rows, e, s, y, active_residual, rho, Q, G, grad)
    return loss, (c,)


@njit(cache=True, error_model="numpy")
def _loss_at_point(model, u, x, point):
    Vm, b, offset, w, l2, chunk_rows, work, beta, rho, one_sided, max_updates = model
    _, _, e, s, y, active_residual, _, _ = point
    return _outputs(Vm, u, x, b, offset, w, l2, chunk_rows, e, s, y, active_residual)


@njit(cache=True, error_model="numpy")
def _hessian_at_point(model, matrix, point, scalars, H):
    Vm, b, offset, w, l2, chunk_rows, work, beta, rho, one_sided, max_updates = model
    _hessian(matrix, point[6], scalars[0], point[7], point[4], offset, w, l2, beta, H, work)


@njit(cache=True, error_model="numpy")
def _refine_step(model, point, L, column_scale, p, refined):
    """The one-sided step in place of a descent step p where outputs with b_j = 0, o_j = 0 exist."""
    one_sided, max_updates = model[9], model[10]
    grad, y, G = point[1], point[4], point[7]
    if one_sided.shape[0] and _all_finite(p) and _dot(grad, p) < 0.0:
        if _one_sided_step(L, column_scale, grad, p, G, one_sided, y, max_updates, refined):
            p[:] = refined
            return True
    return False


@njit(cache=True, error_model="numpy")
def _refined_gain(model, point, H, p, t, actual, noise):
    return _one_sided_gain_ratio(H, point[1], point[7], model[9], point[4], scaled_step(t, p), actual, noise)


# -- one Newton loop ----------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _newton_loop(matrix, Vm, b, offset, w, l2, tol, max_iter, target_norm, chunk_rows, max_updates, settings,
                 x, y_out, y_previous_out, out_int, out_float):
    """``newton_loop`` from x (the answer written back) on one request; y at the end and at the iterate
    before it (the kink test's) into y_out and y_previous_out."""
    n = w.shape[0]
    d = x.shape[0]
    m = b.shape[0]
    count = 0
    for j in range(m):
        if b[j] == 0.0 and offset[j] == 0.0:
            count += 1
    one_sided = np.empty(count, dtype=np.int64)
    count = 0
    for j in range(m):
        if b[j] == 0.0 and offset[j] == 0.0:
            one_sided[count] = j
            count += 1
    rho = np.empty(n)
    model = (Vm, b, offset, w, l2, chunk_rows, _sandwich_work(matrix, n, d), np.empty(n), rho, one_sided,
             max_updates)
    point, previous, trial = _new_point(n, d, m), _new_point(n, d, m), _new_point(n, d, m)
    u, grad, e, s, y, active_residual, Q, G = point
    # ∇L(0) of this request's model (its ridge term l2·0 left out), from the gradient's two columns of Q alone, as
    # Problem.gradient_at_zero forms it (a transposed pass's sums do not depend on the other columns)
    u[:] = 0.0
    zero = np.zeros(d)
    grad_at_zero = np.empty(d)
    _outputs(Vm, u, zero, b, offset, w, 0.0, chunk_rows, e, s, y, active_residual)
    _matvec(Vm, active_residual, rho)
    gradient_columns = np.empty((n, 2))
    c_zero = 0.0
    for i in range(n):
        gradient_columns[i, 0] = s[i] * rho[i] + w[i] * u[i]
        gradient_columns[i, 1] = s[i]
        c_zero += s[i] * rho[i]
    G_zero = np.empty((d, 2))
    _rmatmat(matrix, gradient_columns, chunk_rows, G_zero)
    for j in range(d):
        grad_at_zero[j] = G_zero[j, 0] - c_zero * G_zero[j, 1]
    # the evaluation at x0
    _matvec(matrix, x, u)
    loss, scalars = _evaluate_point(model, matrix, x, point)
    previous[4][:] = y  # the kink test's y before the last step
    # The bound on ∇L(0)'s rounding, from max|V| and max|b| + max|o| (SoftmaxRelu.gradient_rounding's; V is dense)
    gradient_rounding = softmax_relu_gradient_rounding(n, m, _max_abs(Vm[0].ravel()), _max_abs(b) + _max_abs(offset),
                                                        settings[S_ROUNDING_FACTOR])
    status, n_iter, loss, _, grad_norm, g_ref, converged_bound, point, previous, _, _ = newton_loop(
        _evaluate_point, _loss_at_point, _hessian_at_point, _refine_step, _refined_gain, no_kink_test, no_curvature,
        no_cg_step, no_held_cg, model, matrix, settings, tol, max_iter, 0, target_norm, x, loss, scalars, point,
        previous, trial, grad_at_zero, gradient_rounding, np.empty(d))
    out_int[O_STATUS] = status
    out_int[O_N_ITER] = n_iter
    out_float[O_LOSS] = loss
    out_float[O_GRAD_NORM] = grad_norm
    out_float[O_G_REF] = g_ref
    out_float[O_ROUNDING_BOUND] = converged_bound
    y_out[:] = point[4]
    y_previous_out[:] = previous[4]


@njit(cache=True, error_model="numpy")
def _stage_figure(matrix, Vm, b, offset, w, l2, chunk_rows, eigenvalue, power_iterations, x):
    """L(x) (``eigenvalue`` False), or |λmax| of ∇²L(x) by ``power_iterations`` steps of the power iteration
    from ∇L(x) (ones where that is 0), ∇²L formed once (``fastnewton.lifted_start.largest_eigenvalue``; 0 for
    a non-finite estimate)."""
    n = w.shape[0]
    d = x.shape[0]
    m = b.shape[0]
    u = np.empty(n)
    _matvec(matrix, x, u)
    e, s, rho = np.empty(n), np.empty(n), np.empty(n)
    y, active_residual = np.empty(m), np.empty(m)
    if not eigenvalue:
        return _outputs(Vm, u, x, b, offset, w, l2, chunk_rows, e, s, y, active_residual)
    Q = np.empty((n, m + 3))
    G = np.empty((d, m + 3))
    p = np.empty(d)
    _, c = _evaluate(matrix, Vm, u, x, b, offset, w, l2, chunk_rows, e, s, y, active_residual, rho, Q, G, p)
    H = np.empty((d, d))
    _hessian(matrix, Q, c, G, y, offset, w, l2, np.empty(n), H, _sandwich_work(matrix, n, d))
    if not math.sqrt(_dot(p, p)) > 0.0:
        p[:] = 1.0
    estimate = 0.0
    Hp = np.empty(d)
    for _ in range(power_iterations):
        size = math.sqrt(_dot(p, p))
        if not np.isfinite(size):  # Σp² overflowed: p/max|p| first (``largest_eigenvalue``)
            top = 0.0
            for j in range(d):
                top = max(top, abs(p[j]))
            for j in range(d):
                p[j] /= top
            size = math.sqrt(_dot(p, p))
        for j in range(d):
            p[j] /= size
        for j in range(d):
            acc = 0.0
            for l in range(d):
                acc += H[j, l] * p[l]
            Hp[j] = acc
        estimate = abs(_dot(p, Hp))
        if not _all_finite(Hp) or not math.sqrt(_dot(Hp, Hp)) > 0.0:
            break
        p[:] = Hp
    return estimate if np.isfinite(estimate) else 0.0


@njit(parallel=True, cache=True, error_model="numpy")
def stage_figures(order, lanes, table, numbers, eigenvalue, power_iterations, b, offset, x, out):
    """out[r] = ``_stage_figure`` of request r at its slice of x (L(x), or |λmax| of ∇²L(x) when
    ``eigenvalue``), the requests of ``order`` handed out to ``lanes`` tasks as ``solve_relu_loops`` does."""
    taken = np.zeros(1, dtype=np.int64)
    for lane in prange(lanes):
        while True:
            r = next_taken(taken, order)
            if r < 0:
                break
            matrix, Vm, w = _request_arrays(r, table)
            at = table[r, T_OUT]
            m = table[r, T_M]
            col = table[r, T_COL]
            out[r] = _stage_figure(matrix, Vm, b[at:at + m], offset[at:at + m], w, numbers[r, N_L2], table[r, T_CHUNK],
                                   eigenvalue, power_iterations, x[col:col + table[r, T_D]])


@njit(parallel=True, cache=True, error_model="numpy")
def solve_relu_loops(order, lanes, table, numbers, settings, max_updates, b, offset, x, y, y_previous, out_int,
                     out_float):
    """Run the requests listed in ``order`` in ``lanes`` tasks, each taking the next request from a shared
    atomic counter (``kernels/atomic.py``) when it finishes one; a request runs start to finish on one
    thread, so its bits do not depend on the lanes or on which lane took it. Reads each request's C, V and
    w in place (``table``: the T_* columns); writes its answer into its slice of x, its y and previous y,
    and out_int / out_float (the O_* columns). ``max_updates``: ``fastnewton.active_set.MAX_UPDATES``."""
    taken = np.zeros(1, dtype=np.int64)
    for lane in prange(lanes):
        while True:
            r = next_taken(taken, order)
            if r < 0:
                break
            _run_request(r, table, numbers, settings, max_updates, b, offset, x, y, y_previous,
                         out_int, out_float)


@njit(cache=True, error_model="numpy")
def _run_request(r, table, numbers, settings, max_updates, b, offset, x, y, y_previous, out_int, out_float):
    """``_newton_loop`` on request r: C, V and w read in place, its slices of the packed vectors."""
    d = table[r, T_D]
    m = table[r, T_M]
    col = table[r, T_COL]
    at = table[r, T_OUT]
    matrix, Vm, w = _request_arrays(r, table)
    _newton_loop(matrix, Vm, b[at:at + m], offset[at:at + m], w, numbers[r, N_L2], numbers[r, N_TOL],
                 table[r, T_MAX_ITER], numbers[r, N_TARGET_NORM], table[r, T_CHUNK], max_updates,
                 settings, x[col:col + d], y[at:at + m], y_previous[at:at + m], out_int[r], out_float[r])


@njit(cache=True, error_model="numpy")
def _request_arrays(r, table):
    """Request r's C (small_newton's matrix tuple), V (the same, dense) and w, read in place."""
    n = table[r, T_N]
    d = table[r, T_D]
    m = table[r, T_M]
    matrix = matrix_at(table[r, T_CSR] == 1, n, d, table[r, T_VALUES], table[r, T_INDPTR], table[r, T_INDICES],
                       table[r, T_INDEX_BYTES])
    Vm = matrix_at(False, n, m, table[r, T_V], 0, 0, 8)
    return matrix, Vm, array_at(table[r, T_W], (n,), np.float64)


# -- stage 1: the simplex vector (fastnewton.lifted_start.simplex_vector) -----------------------------------
# Entries of ``simplex_settings``: lifted_start's SIMPLEX_FLOOR, DUAL_RIDGE, MAX_DUAL_ITER, DUAL_RTOL.
SIMPLEX_FLOOR_AT, DUAL_RIDGE_AT, MAX_DUAL_ITER_AT, DUAL_RTOL_AT = range(4)
SIMPLEX_SETTINGS_FIELDS = 4
# Statuses of ``simplex_vectors``: done; a dual Newton matrix without a Cholesky factor (the caller runs that
# problem's simplex vector in Python, whose least-squares fallback it is); a dual solve that stopped short of its
# tolerance (line search or MAX_DUAL_ITER: unreachable targets, e.g. a dead output, whose ridge ε = 1e-12 leaves
# the dual so ill-conditioned that rounding moves λ and the start far: the caller runs it in Python too).
SIMPLEX_DONE, SIMPLEX_NOT_FACTORED, SIMPLEX_UNCONVERGED = 0, 1, 2


@njit(cache=True, error_model="numpy")
def _simplex_point(Am, lam, n, floor, chunk_rows, z, s, free, Ats):
    """s = max(f, 1/n + Aλ) (f = ``floor``), free = 1[1/n + Aλ > f], Aᵀs; returns ‖s − 1/n‖²."""
    _matvec(Am, lam, z)
    distance = 0.0
    for i in range(n):
        value = 1.0 / n + z[i]
        free[i] = 1.0 if value > floor else 0.0
        s[i] = value if value > floor else floor
        gap = s[i] - 1.0 / n
        distance += gap * gap
    _rmatmat(Am, s.reshape((n, 1)), chunk_rows, Ats.reshape((Ats.shape[0], 1)))
    return distance


@njit(cache=True, error_model="numpy")
def _dual_objective(lam, Ats, t, distance, ridge):
    """ψ(λ) = λᵀ(Aᵀs(λ) − t) − ½‖s(λ) − 1/n‖² + ½ε‖λ‖²."""
    total = 0.0
    for k in range(lam.shape[0]):
        total += lam[k] * (Ats[k] - t[k])
    return total - 0.5 * distance + 0.5 * ridge * _dot(lam, lam)


@njit(cache=True, error_model="numpy")
def _simplex_vector(Vm, b, chunk_rows, simplex_settings, equal, lam_out):
    """``lifted_start.simplex_vector`` on one problem: the equation outputs E (``equal``, 1 on E), λ (its first
    |E| + 1 entries of ``lam_out``); returns (status, dual Newton steps, |E|, Σ max(·))."""
    V = Vm[0]
    n, m = V.shape
    floor = simplex_settings[SIMPLEX_FLOOR_AT] / n
    no_indices = np.empty(0, dtype=np.int64)
    for j in range(m):
        equal[j] = 1.0 if b[j] > 0.0 else 0.0
    z, s, free = np.empty(n), np.empty(n), np.empty(n)
    y = np.empty(m)
    total_iterations = 0
    size = 0
    total = 0.0
    for _ in range(m + 1):
        size = 0
        for j in range(m):
            if equal[j] == 1.0:
                size += 1
        k = size + 1
        A = np.empty((n, k))
        t = np.empty(k)
        at = 0
        for j in range(m):
            if equal[j] == 1.0:
                for i in range(n):
                    A[i, at] = V[i, j]
                t[at] = b[j] if b[j] > 0.0 else 0.0
                at += 1
        A[:, size] = 1.0
        t[size] = 1.0
        Am = (A, no_indices, no_indices, np.empty(0), False)
        work = _sandwich_work(Am, n, k)
        lam = np.zeros(k)
        Ats = np.empty(k)
        AtDA = np.empty((k, k))
        distance = _simplex_point(Am, lam, n, floor, chunk_rows, z, s, free, Ats)
        _sandwich(Am, free, AtDA, work)
        trace = 0.0
        for a in range(k):
            trace += AtDA[a, a]
        ridge = simplex_settings[DUAL_RIDGE_AT] * trace / k
        psi = _dual_objective(lam, Ats, t, distance, ridge)
        F = np.empty(k)
        L = np.empty((k, k))
        direction = np.empty(k)
        trial = np.empty(k)
        trial_Ats = np.empty(k)
        iterations = 0
        t_norm = math.sqrt(_dot(t, t))
        for iteration in range(1, int(simplex_settings[MAX_DUAL_ITER_AT]) + 1):
            for a in range(k):
                F[a] = Ats[a] - t[a] + ridge * lam[a]
            if math.sqrt(_dot(F, F)) <= simplex_settings[DUAL_RTOL_AT] * t_norm:
                iterations = iteration - 1
                break
            if not _cholesky(AtDA, ridge, L):
                return SIMPLEX_NOT_FACTORED, 0, 0, 0.0
            _cholesky_solve(L, F, direction)
            for a in range(k):
                direction[a] = -direction[a]
            slope = _dot(F, direction)
            step = 1.0
            accepted = False
            trial_psi = 0.0
            for _ in range(40):
                for a in range(k):
                    trial[a] = lam[a] + step * direction[a]
                trial_distance = _simplex_point(Am, trial, n, floor, chunk_rows, z, s, free, trial_Ats)
                trial_psi = _dual_objective(trial, trial_Ats, t, trial_distance, ridge)
                if trial_psi <= psi + 1e-4 * step * slope:
                    accepted = True
                    break
                step *= 0.5
            if not accepted:
                return SIMPLEX_UNCONVERGED, 0, 0, 0.0
            lam[:] = trial
            psi = trial_psi
            distance = _simplex_point(Am, lam, n, floor, chunk_rows, z, s, free, Ats)
            _sandwich(Am, free, AtDA, work)
        else:
            return SIMPLEX_UNCONVERGED, 0, 0, 0.0
        total_iterations += iterations
        _rmatmat(Vm, s.reshape((n, 1)), chunk_rows, y.reshape((m, 1)))
        lam_out[:k] = lam
        total = Ats[size]
        newly = False
        for j in range(m):
            if equal[j] == 0.0 and y[j] > 0.0:
                equal[j] = 1.0
                newly = True
        if not newly:
            break
    return SIMPLEX_DONE, total_iterations, size, total


@njit(parallel=True, cache=True, error_model="numpy")
def simplex_vectors(order, lanes, table, simplex_settings, b, equal, lam, out_int, out_float):
    """``_simplex_vector`` of request r (V read in place, its b by T_OUT): ``equal`` (length m, by T_OUT) and
    ``lam`` (length m + 1 per request, at T_OUT + r), out_int[r] = (status, steps, |E|), out_float[r] = Σ max(·);
    the requests handed out as ``solve_relu_loops`` does."""
    taken = np.zeros(1, dtype=np.int64)
    for lane in prange(lanes):
        while True:
            r = next_taken(taken, order)
            if r < 0:
                break
            _, Vm, _ = _request_arrays(r, table)
            at = table[r, T_OUT]
            m = table[r, T_M]
            status, steps, size, total = _simplex_vector(Vm, b[at:at + m], table[r, T_CHUNK], simplex_settings,
                                                         equal[at:at + m], lam[at + r:at + r + m + 1])
            out_int[r, 0] = status
            out_int[r, 1] = steps
            out_int[r, 2] = size
            out_float[r] = total
