"""Many small ``softmax`` / ``relu_softmax`` problems at once: the start and the whole Newton loop,
compiled, the problems handed out one at a time to the tasks of a parallel loop (``solve_small_problems``).

Each problem is solved serially by one thread, start to finish, from its own slices of packed
arrays, so its bits do not depend on the thread count or on which thread took it. The model's row
math is ``kernels/softmax.py``'s (its ``*_serial`` twins: the same chunks summed in the same
order as the parallel kernels that ``fastnewton.solve`` runs); the passes over C below are the
one-thread counterparts of ``kernels/dense.py`` and ``kernels/csr.py`` (same per-row order, same
chunk partials), needed because a parallel kernel cannot run inside a task of another one.

The control logic is ``fastnewton/newton.py``'s (``newton_solve``, ``newton_step``,
``CarriedForward``) and ``fastnewton/hessian.py``'s exact ``NewtonSystem``, written a second time
here because a compiled loop cannot call Python: the two must make the same decisions, which
``tests/test_solve_many_small.py`` checks problem by problem against ``fastnewton.solve``. It is
written once, ``newton_loop``, for every compiled model: each passes its evaluation, Hessian and step
refinement in (softmax and relu_softmax below, softmax_relu in ``kernels/small_softmax_relu.py``). Its
constants come from newton.py through ``settings`` (an argument, not a global: Numba's disk cache
would keep a stale copy of a global imported from another file).

Layout: problem p's row ``layout[p]`` gives its shape and where its packed vectors start (the
``L_*`` columns); its C is read in place (``kernels/in_place.py``) at ``addresses[p]`` (the ``A_*``
columns): dense C row-major float64 at ``A_VALUES``, or CSR C as ``indptr`` (0 … nnz) at ``A_INDPTR``,
``indices`` at ``A_INDICES`` (both int64 or both int32: ``L_INDEX_BYTES``) and float64 data at ``A_VALUES``.
Per-row vectors (b, w) are packed by ``L_ROW``, per-column ones (x, ∇L) by ``L_COL``.

Every function here is compiled with NumPy's error model: a division by zero gives ±inf or NaN (IEEE), which the
loop's finiteness tests catch, where Numba's default (Python's) tests each divisor and raises. That test kept the
division loops scalar, one entry at a time: the scaled Newton system D⁻¹HD⁻¹ at d = 48 took 1.46 µs, 0.54 as
vectors, the same quotients (each is IEEE's correctly rounded one either way).
"""
import math

import numpy as np
from numba import njit, prange

from .atomic import next_taken
from .blas import syrk_upper
from .csr import (INDPTR_SOUND, ONE, TWO, add_row_scaled, add_row_terms4, csr_column_squares, csr_row_pairs,
                  indptr_fault, row_dot as csr_row_dot, row_pair_dots)
from .damping import (FIRST_DAMPING, FIRST_INCREASE, GOOD_GAIN, damping_after, extended_length, gain_ratio,
                      longer_trial, predicted_ratio, raised_damping)
from .dense import (gram_tiles_width, sandwich_vector_chunk, signed_scaled_rows, tiled_chunk_rmatmat,
                    weighted_gram_upper)
from .in_place import array_at, int64_indices_at
from .kinks import (HELD_FULL, HELD_SHORT, MAX_CANDIDATE_ROWS, MAX_KINK_ROWS, MAX_UPDATES, NOT_HELD, T_U, TABLE_FIELDS,
                    held_classes, held_gain_ratio, held_rows, held_step, hold_classes, kink_candidates, kink_table,
                    least_norm_subgradient, moving_rows_instead, parallel_groups, small_spd_solve, update_working_set)
from .reduce import SQUARES_HIGH, SQUARES_LOW, gradient_rounding_bounds, rescaled_norm, scaled_norm
from .sandwich import ROW_PAD, _add_row, _add_stored_row, _sorted_rows
from .simd import LANES, row_dots, subtract_column_products4, subtract_column_products16
from .softmax import (
    curvature_weights_serial,
    log_partition_serial,
    softmax_gradient_rounding,
    softmax_regression_columns_serial,
    softmax_regression_loss_serial,
    target_summary,
)

# Columns of ``layout`` (int64, one row per problem).
L_N, L_D, L_CSR, L_ROW, L_COL, L_CHUNK, L_START, L_RELU, L_INDEX_BYTES, L_LAGGED = range(10)
LAYOUT_FIELDS = 10
# Columns of ``addresses`` (int64, one row per problem): where its C's arrays lie.
A_VALUES, A_INDPTR, A_INDICES = range(3)
ADDRESS_FIELDS = 3
# Columns of ``parameters`` (float64, one row per problem).
P_L2, P_TARGET_NORM, P_FLOOR = range(3)
PARAMETER_FIELDS = 3
# Starts (``layout[:, L_START]``): given (x holds it), zeros, the softmax fit of log b on [C, 1],
# the relu_softmax fit of log(b/f) on the active rows.
START_GIVEN, START_ZEROS, START_LOG_FIT, START_ACTIVE_FIT = range(4)
# Entries of ``settings`` (float64): newton.py's constants, tol and max_iter.
# (The damping rule is kernels/damping.py's functions, called here and by newton.py.) Then ``lagged``'s, from
# fastnewton/hessian.py: the reuse of a factor across μ, the preconditioner's shifts, CG's iteration limit and
# forcing term (how many lagged iterations follow each exact one: ``layout[:, L_LAGGED]``).
(S_TOL, S_MAX_ITER, S_ARMIJO_C1, S_BACKTRACK_FACTOR, S_MAX_BACKTRACKS, S_MAX_DAMPING_TRIES, S_MAX_LOGIT_STEP,
 S_REFRESH_EVERY, S_MAX_CARRIED_PATH, S_ROUNDING_FACTOR, S_STALL_WINDOW, S_GRADIENT_PROGRESS, S_KINK_RTOL,
 S_NULL_SPACE_RTOL, S_ACTIVE_RTOL, S_LAGGED_SHIFT_RATIO, S_MAX_PRECONDITIONER_SHIFTS, S_MAX_CG_ITERATIONS,
 S_MAX_FORCING, S_OVERSOLVE_MARGIN) = range(20)
SETTINGS_FIELDS = 20
# Columns of ``out_int``: the status (``fastnewton.result.Status``, or START_FAILED), iterations,
# where a non-finite value appeared (FAULT_*, or an iteration ≥ 1), and the ReLU-kink count and first row (of a
# stall; of a CONVERGED stop, the rows at the kink of a kink stationary point, or 0).
O_STATUS, O_N_ITER, O_FAULT_WHERE, O_KINK_COUNT, O_KINK_INDEX = range(5)
OUT_INT_FIELDS = 5
# Columns of ``out_float``: loss, ‖∇L‖ (nan when not finite), g_ref, the final max z (the softmax
# normaliser's shift), L(0), the non-finite loss of a fault, and the bound on ∇L(0)'s rounding where a stall
# within it ended CONVERGED (0: not so; ``newton_loop``).
O_LOSS, O_GRAD_NORM, O_G_REF, O_TOP, O_LOSS_AT_ZERO, O_FAULT_LOSS, O_ROUNDING_BOUND = range(7)
OUT_FLOAT_FIELDS = 7
# Statuses written here (the values of fastnewton.result.Status), and the start's own failure:
# its least-squares system was singular (the null-space and LP parts of the start run in Python).
CONVERGED, MAX_ITER, STALLED, NON_FINITE = 0, 1, 2, 4
START_FAILED = -1
# A C with a NaN or ±Inf entry, or a CSR C with a column index outside [0, d) (checked here, on the solve's
# first read of C, not by a pass of its own beforehand): the caller reports the problem's invalid input with
# Problem's message.
C_INVALID = -2
FAULT_NONE, FAULT_AT_START, FAULT_AT_ZERO = -2, -1, 0
# A stall because no damping gave an accepted step (O_KINK_COUNT is then −1: no kink sentence).
NO_STEP = -1
# The least diagonal entry that a start's Jacobi scaling D_j = √M_jj takes as it is (``_fit_start``,
# ``fastnewton.start.solve_psd``): a zero column's D is √ of the least normal float, which keeps
# M_jl / (D_j D_l) finite; any other column is scaled to a unit diagonal however small or large C's entries are.
JACOBI_FLOOR = float(np.finfo(np.float64).tiny)


# -- passes over one problem's C ---------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def matrix_at(csr, n, d, values, indptr, indices, index_bytes):
    """One problem's n × d C as the passes below take it (A, indptr, indices, data, csr), read in place at the
    addresses of its arrays: CSR C as indptr and indices of ``index_bytes`` each (int64 read in place, int32
    widened: ``int64_indices_at``) and float64 data, or dense C row-major float64."""
    no_indices = np.empty(0, dtype=np.int64)
    if csr:
        starts = int64_indices_at(indptr, n + 1, index_bytes)
        nnz = starts[n]
        return (np.empty((0, d)), starts, int64_indices_at(indices, nnz, index_bytes),
                array_at(values, (nnz,), np.float64), True)
    return array_at(values, (n, d), np.float64), no_indices, no_indices, np.empty(0), False


@njit(cache=True, error_model="numpy")
def _matvec(matrix, x, out):
    """out = C x (one thread; each row summed as csr_matvec (storage order) / dense_matvec (``row_dot``) do)."""
    A, indptr, indices, data, csr = matrix
    n = out.shape[0]
    if csr:
        # csr_matvec's rows by pairs (two chains of adds in flight; 288 × 48, 8 per row: 2.15 → 1.05 µs), serial
        for pair in range(n // 2):
            i = np.uintp(2 * pair)
            out[i], out[i + ONE] = row_pair_dots(indptr, indices, data, x, i)
        if n % 2:
            out[n - 1] = csr_row_dot(indptr, indices, data, x, n - 1)
    else:
        row_dots(A, x, out)  # row_dot's sums, four rows side by side in one loop (288 × 48: 2.8 → 1.0 µs)


@njit(cache=True, error_model="numpy")
def _rmatmat(matrix, Q, chunk_rows, out):
    """out = Cᵀ Q (d × k): per fixed row chunk a partial, partials added in chunk order (as the
    parallel passes do, so the same bits for the same chunks)."""
    A, indptr, indices, data, csr = matrix
    n, k = Q.shape
    d = out.shape[0]
    out[:] = 0.0
    if not csr:
        # dense_rmatmat's chunk partial (kernels/dense.py), added in chunk order; one small problem's rows stay in
        # cache: by register tiles (288 × 48, k = 3: 4.2 → 2.9 µs; softmax_relu's k = 19: 23.9 → 12.4 µs)
        acc = np.empty((k, d))
        for start in range(0, n, chunk_rows):
            tiled_chunk_rmatmat(A, Q, start, min(n, start + chunk_rows), acc)
            for j in range(d):
                for t in range(k):
                    out[j, t] += acc[t, j]
        return
    if k <= LANES:
        # csr_rmatmat4's rows: each entry's k ≤ 4 updates one 4-wide add_scaled4 on a d × 4 partial (lanes past k add
        # v·0, never read), the same terms in the same order (288 × 48, 8 per row: k = 3 3.3 → 1.8 µs, k = 4 4.4 → 1.7)
        acc = np.empty(d * LANES)
        for start in range(0, n, chunk_rows):
            acc[:] = 0.0
            for i in range(start, min(n, start + chunk_rows)):
                add_row_terms4(indptr, indices, data, np.uintp(i), Q[i, 0], Q[i, 1] if k > 1 else 0.0,
                               Q[i, 2] if k > 2 else 0.0, Q[i, 3] if k > 3 else 0.0, acc)
            for j in range(d):
                for t in range(k):
                    out[j, t] += acc[j * LANES + t]
        return
    acc = np.empty((d, k))  # CSR rows scatter into a d × k partial
    for start in range(0, n, chunk_rows):
        acc[:] = 0.0
        for i in range(start, min(n, start + chunk_rows)):
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                v = data[p]
                for t in range(k):
                    acc[j, t] += v * Q[i, t]
        for j in range(d):
            for t in range(k):
                out[j, t] += acc[j, t]


@njit(cache=True, error_model="numpy")
def _sandwich_vector(matrix, beta, v, chunk_rows, forward, out):
    """forward = C v and out = Cᵀ(β ⊙ forward) in one read of C, each row read for its dot and then, from cache, for
    its update: the one-thread ``dense_sandwich_vector`` (its row chunks, ``sandwich_vector_chunk``) or
    ``csr_sandwich_vector`` (rows in pairs, ``row_pair_dots`` / ``add_row_scaled``), partials added in chunk order, so
    solve's bits for its chunks (CG's Hessian-vector product; dense 4096 × 64: ~half the time of ``_matvec`` and a
    one-column ``_rmatmat``)."""
    A, indptr, indices, data, csr = matrix
    n = forward.shape[0]
    d = out.shape[0]
    out[:] = 0.0
    acc = np.empty(d)
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        acc[:] = 0.0
        if csr:
            i = np.uintp(start)
            end = np.uintp(stop)
            while i + ONE < end:
                first, second = row_pair_dots(indptr, indices, data, v, i)
                forward[i] = first
                forward[i + ONE] = second
                add_row_scaled(indptr, indices, data, i, beta[i] * first, acc)
                add_row_scaled(indptr, indices, data, i + ONE, beta[i + ONE] * second, acc)
                i += TWO
            if i < end:
                dot = csr_row_dot(indptr, indices, data, v, i)
                forward[i] = dot
                add_row_scaled(indptr, indices, data, i, beta[i] * dot, acc)
        else:
            sandwich_vector_chunk(A, beta, v, start, stop, forward, acc)
        for j in range(d):
            out[j] += acc[j]


@njit(cache=True, error_model="numpy")
def _sandwich_work(matrix, n, d):
    """The work arrays of ``_sandwich``, made once per problem: dense C, its copy padded with zero columns to whole
    tiles (``weighted_gram_upper``) and their width × width Gram, or, past the tiles' sizes, the row numbers and
    the rows scaled by √|β|; CSR C, the padded d × (d + ROW_PAD) accumulator of the pair updates, a row's sorted
    columns and values (for a row stored unsorted), and whether every row's columns already increase strictly
    (canonical CSR: its rows are then read in place; tested once here, not per sandwich)."""
    A, indptr, indices, data, csr = matrix
    width = 0 if csr else gram_tiles_width(n, d)
    rows = n if not csr and not width else 0
    B = np.empty((0 if csr else n, width if width else d))
    if width:
        for i in range(n):  # entry by entry: a slice assignment per row took 5 µs at 288 × 48, this 2
            for j in range(d):
                B[i, j] = A[i, j]
            for j in range(d, width):
                B[i, j] = 0.0
    pairs = d * (d + ROW_PAD) if csr else width * width
    in_place = csr and _sorted_rows(indptr, indices, 0, n)
    return np.arange(rows), B, np.empty(pairs), np.empty(d, dtype=np.uintp), np.empty(d), in_place


@njit(cache=True, error_model="numpy")
def _sandwich(matrix, beta, out, work):
    """out = Cᵀ diag(β) C (d × d, β of any sign). Dense: by tiles of C's padded copy (``weighted_gram_upper``),
    or, past their sizes, B₊ᵀB₊ − B₋ᵀB₋ by BLAS SYRKs (``kernels/blas.py``) with B± the rows of positive /
    negative β scaled by √|β|, as fastnewton.matrix's blocked SYRK forms it for ``solve`` (the tiles sum each
    entry's terms in another order: x within the 1e-10 that solve_many promises); CSR: the pair updates of
    ``csr_sandwich_rows`` (kernels/sandwich.py's ``_add_row``: each row's pairs a ≤ b by increasing column,
    register-tiled, into the upper triangle of one padded partial), copied out and mirrored: the one-chunk sum of
    ``solve``'s sandwich, the same bits."""
    A, indptr, indices, data, csr = matrix
    d = out.shape[0]
    n = beta.shape[0]
    rows, B, acc, columns, values, in_place = work
    if csr:
        stride = np.uintp(d + ROW_PAD)
        acc[:] = 0.0
        if in_place:
            for i in range(n):
                bi = beta[i]
                if bi != 0.0:
                    _add_stored_row(indptr, indices, data, i, bi, acc, stride)
        else:
            for i in range(n):
                bi = beta[i]
                if bi != 0.0:
                    _add_row(indptr, indices, data, i, bi, acc, stride, columns, values, False)
        _symmetric_from_upper(acc, d + ROW_PAD, out)
    elif acc.shape[0]:  # dense C within the tiles' sizes: acc holds their Gram (``_sandwich_work``)
        width = B.shape[1]
        weighted_gram_upper(B, beta, d, acc.reshape((width, width)))
        _symmetric_from_upper(acc, width, out)
    else:
        positive, negative = signed_scaled_rows(A, rows, np.empty((n, 0)), beta, np.zeros(d), np.ones(d), B)
        # Each Gram matrix formed on its own and the negative one subtracted, as ``blocked_syrk_sandwich``
        # does for ``solve`` in one block (n ≤ 8192 rows; NumPy runs its Bᵀ·B as a dsyrk too): the same sums.
        if positive:
            syrk_upper(B[:positive], 1.0, 0.0, out)
        else:
            out[:] = 0.0
        if negative:
            gram = np.empty((d, d))
            syrk_upper(B[positive:positive + negative], 1.0, 0.0, gram)
            for j in range(d):
                for l in range(j, d):
                    out[j, l] -= gram[j, l]
        _symmetric_from_upper(out.reshape(-1), d, out)  # in place: exactly symmetric, as SYRK's mirrored triangle


@njit(cache=True, error_model="numpy")
def _symmetric_from_upper(upper, stride, out):
    """out[j, l] = out[l, j] = upper[j·stride + l] for j ≤ l (the upper triangle of a padded row-major partial, or of
    out itself, flat: then a mirror in place): each entry read once and written to both places (a copy, then a
    mirror of out: 3.7 against 1.5 µs, d = 48)."""
    d = out.shape[0]
    for j in range(d):
        base = j * stride
        for l in range(j, d):
            value = upper[base + l]
            out[j, l] = value
            out[l, j] = value


@njit(cache=True, error_model="numpy")
def _column_scale(matrix, d, out):
    """D_j = ‖C_j‖, or 1 where that is 0 or not finite (fastnewton.newton.column_scale)."""
    A, indptr, indices, data, csr = matrix
    out[:] = 0.0
    if csr:
        csr_column_squares(indices[:indptr[indptr.shape[0] - 1]], data, out)
    else:
        for i in range(A.shape[0]):
            for j in range(d):
                out[j] += A[i, j] * A[i, j]
    for j in range(d):
        norm = math.sqrt(out[j])
        out[j] = norm if (np.isfinite(norm) and norm > 0.0) else 1.0


# -- small dense linear algebra -----------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _cholesky(A, shift, U):
    """Uᵀ U = A + shift·I (lower triangle of A read), U upper triangular: U[k, i] = L[i, k] of the lower
    factor L, whose entries are L[i, j] = (A[i, j] − Σ_{k<j} L[i, k]·L[j, k]) / L[j, j] with each sum in the
    order k = 0 … j − 1 (and L[j, j]² = A[j, j] + shift − Σ_{k<j} L[j, k]², in the same order); False when a
    pivot is not positive (or not finite), as LAPACK's potrf fails.

    Column j of L is formed all at once, sixteen (then four) entries at a time held in 4-wide vectors through
    the loop over k (``subtract_column_products16``: t[i] −= L[i, k]·L[j, k] from row k of U, contiguous),
    instead of one sum per entry, each bound by its add latency; every t[i] still gets its terms in the order
    k = 0, 1, …, so the bits are those of the entry-by-entry sums (d = 48, one thread: 7.4 → 5.3 µs)."""
    d = A.shape[0]
    t = np.empty(d)
    for j in range(d):
        t[j] = A[j, j] + shift
        for i in range(j + 1, d):
            t[i] = A[i, j]
        # Blocks laid from the end of the column down to row j; the last may reach above row j into entries
        # of t that this column does not read (their values are never used), so no row needs the scalar loop
        # once d ≥ 4 (a leftover row's lone sum is latency-bound: it cost as much as all the blocks).
        stop = d
        while stop - j > 4 and stop >= 16:
            subtract_column_products16(t, stop - 16, U, j, j)
            stop -= 16
        while stop > j and stop >= 4:
            subtract_column_products4(t, stop - 4, U, j, j)
            stop -= 4
        for i in range(j, stop):
            value = t[i]
            for k in range(j):
                value -= U[k, i] * U[k, j]
            t[i] = value
        s = t[j]
        if not s > 0.0 or not np.isfinite(s):
            return False
        root = math.sqrt(s)
        U[j, j] = root
        for i in range(j + 1, d):
            U[j, i] = t[i] / root
    return True


@njit(cache=True, error_model="numpy")
def _cholesky_solve(U, rhs, out):
    """out = (Uᵀ U)⁻¹ rhs (U from ``_cholesky``): Uᵀy = rhs, then U out = y, every entry's sum in increasing
    k. The forward sweep runs by columns of L (rows of U, contiguous): y[k] is final once every earlier
    column has been subtracted, then subtracted from the entries below it, each getting its terms in k order."""
    d = rhs.shape[0]
    for i in range(d):
        out[i] = rhs[i]
    for k in range(d):
        out[k] = out[k] / U[k, k]
        yk = out[k]
        row = U[k]
        for i in range(k + 1, d):
            out[i] -= row[i] * yk
    for i in range(d - 1, -1, -1):
        t = out[i]
        row = U[i]
        for k in range(i + 1, d):
            t -= row[k] * out[k]
        out[i] = t / U[i, i]


@njit(cache=True, error_model="numpy")
def _dot(a, b):
    acc = 0.0
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@njit(cache=True, error_model="numpy")
def _half_ridge(l2, x):
    """½λ‖x‖² as ``fastnewton.reductions.half_ridge`` forms it: 0 for λ = 0, not 0·inf once ‖x‖² overflows."""
    if l2 == 0.0:
        return 0.0
    squares = _dot(x, x)
    if SQUARES_LOW <= squares <= SQUARES_HIGH:
        return 0.5 * l2 * squares
    root = math.sqrt(l2) * rescaled_norm(x, np.ones(x.shape[0]))
    return 0.5 * root * root


@njit(cache=True, error_model="numpy")
def _quadratic(H, v):
    """vᵀHv."""
    d = v.shape[0]
    total = 0.0
    for j in range(d):
        row = 0.0
        for l in range(d):
            row += H[j, l] * v[l]
        total += v[j] * row
    return total


@njit(cache=True, error_model="numpy")
def _all_finite(a):
    """Whether every entry of a is finite (NaN and ±Inf are not)."""
    non_finite = False
    for k in range(a.shape[0]):
        # x − x is 0 for a finite x and NaN for NaN or ±Inf; an or over the entries, no early exit,
        # vectorises (it runs over a whole dense C at memory speed: ``_solve_packed``).
        non_finite |= (a[k] - a[k]) != 0.0
    return not non_finite


@njit(cache=True, error_model="numpy")
def _norm_or_inf(g):
    """‖g‖, or inf when g has a non-finite entry (newton.py's ``_norm_or_inf``)."""
    return scaled_norm(g, np.ones(g.shape[0])) if _all_finite(g) else np.inf


@njit(cache=True, error_model="numpy")
def _rounding_level(loss, target_norm, factor):
    return factor * (abs(loss) + math.sqrt(2.0 * abs(loss)) * target_norm)


# -- the start ----------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _fit_start(matrix, b, relu, floor, settings, chunk_rows, x, work, Q0, G0):
    """x from the weighted least-squares fit of the models' ``auto_start`` (fastnewton.start):
    softmax: weights pᵢ²/Σp² on rows with pᵢ = bᵢ/max b > 0, target log pᵢ, on [C, 1]; relu_softmax: weight 1
    on the active rows bᵢ > f(1 + rtol), target log(bᵢ/f), on C. Solved as ``solve_psd``: Jacobi
    scaled, Cholesky; False (x untouched) when a pivot is below NULL_SPACE_RTOL·scale (the
    singular case, whose null space and LP the caller handles) or not a number (sums that overflowed, which
    the caller's start forms again scaled: ``fastnewton.start.normal_system_rounds``). Also G0[:, :2] =
    Cᵀ Q0[:, :2] (∇L(0)'s columns at 0: ``_solve_one``), from the fit's own pass over C (as
    ``Problem.rmatmat_with_gradient_at_zero`` forms them for ``solve``); filled whether or not the fit succeeds."""
    n = b.shape[0]
    d = x.shape[0]
    weights = np.zeros(n)
    # Cᵀ[ω, ωt] and ∇L(0)'s Cᵀ[q, s] in one four-column pass (one read of C less: 288 × 48, ~5 µs of a problem's
    # ~290); each column's sums do not depend on the others, so the bits are those of a pass of its own.
    WT = np.empty((n, 4))
    for i in range(n):
        WT[i, 1] = 0.0
        WT[i, 2] = Q0[i, 0]
        WT[i, 3] = Q0[i, 1]
    rtol = settings[S_ACTIVE_RTOL]
    max_b = 0.0
    for i in range(n):
        max_b = max(max_b, b[i])
    for i in range(n):
        if relu:
            if b[i] > floor * (1.0 + rtol):
                weights[i] = 1.0
                ratio = max(b[i], floor) / floor
                # log b − log f where b/f overflows (a subnormal floor f), as fastnewton.models.softmax's _active_fit
                WT[i, 1] = math.log(ratio) if ratio < math.inf else math.log(max(b[i], floor)) - math.log(floor)
        elif b[i] > 0.0:
            p = b[i] / max_b  # as the softmax start's targets: b²/Σb² must not underflow to 0/0
            weights[i] = p * p
            WT[i, 1] = weights[i] * math.log(p)
        WT[i, 0] = weights[i]
    A = np.empty((d, d))
    _sandwich(matrix, weights, A, work)
    G = np.empty((d, 4))
    _rmatmat(matrix, WT, chunk_rows, G)
    for j in range(d):
        G0[j, 0] = G[j, 2]
        G0[j, 1] = G[j, 3]
    size = d if relu else d + 1
    # Only M's lower triangle and diagonal are formed and scaled: all that ``_cholesky`` reads (each entry as
    # ``solve_psd`` forms it, the same bits; the upper half's divisions were ~2 µs of a 288 × 48 problem's fit).
    M = np.empty((size, size))
    rhs = np.empty(size)
    if relu:
        for j in range(d):
            for l in range(j + 1):
                M[j, l] = A[j, l]
            rhs[j] = G[j, 1]
    else:
        weight_sum = 0.0
        weighted_target = 0.0
        for i in range(n):
            weight_sum += weights[i]
            weighted_target += WT[i, 1]
        for j in range(d):
            for l in range(j + 1):
                M[j, l] = A[j, l] / weight_sum
            M[d, j] = G[j, 0] / weight_sum
            rhs[j] = G[j, 1] / weight_sum
        M[d, d] = 1.0
        rhs[d] = weighted_target / weight_sum
    top = 0.0
    for j in range(size):
        top = max(top, M[j, j])
    if not top > 0.0:
        return False
    D = np.empty(size)
    for j in range(size):
        D[j] = math.sqrt(max(M[j, j], JACOBI_FLOOR))
    for j in range(size):
        for l in range(j + 1):
            M[j, l] /= D[j] * D[l]
        rhs[j] /= D[j]
    scale = 0.0
    for j in range(size):
        scale = max(scale, M[j, j])
    U = np.zeros((size, size))
    if not scale > 0.0 or not _cholesky(M, 0.0, U):
        return False
    for j in range(size):
        if not U[j, j] * U[j, j] > settings[S_NULL_SPACE_RTOL] * scale:
            return False
    z = np.empty(size)
    _cholesky_solve(U, rhs, z)
    for j in range(d):
        x[j] = z[j] / D[j]
    return True


# -- one evaluation -----------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _evaluate(matrix, u, x, b, w, relu, l2, chunk_rows, e, Q, G, grad):
    """The softmax model at u = Cx: fills e, Q = [q_a, U], G = CᵀQ, ∇L; returns (L, c, γ, max z, the factor
    turning e into softmax(z)).

    As ``Problem.evaluate_from`` with the stages of ``fastnewton.models.softmax``."""
    c, gamma, loss2, top, scale = _columns(u, b, w, relu, chunk_rows, e, Q)
    _rmatmat(matrix, Q, chunk_rows, G)
    _gradient(G, c, l2, x, grad)
    return 0.5 * loss2 + _half_ridge(l2, x), c, gamma, top, scale


@njit(cache=True, error_model="numpy")
def _columns(u, b, w, relu, chunk_rows, e, Q):
    """The model's row stages at u: e and Q = [q_a, U]; returns (c, γ, ‖h(u) − b‖² + Σw u², max z, the factor
    turning e into softmax(z))."""
    top, total = log_partition_serial(u, relu, chunk_rows, e)
    scale = math.exp(top - top) / total  # LogPartition.factor on the one block
    c, gamma, loss2 = softmax_regression_columns_serial(u, e, scale, b, w, relu, chunk_rows, Q)
    return c, gamma, loss2, top, scale


@njit(cache=True, error_model="numpy")
def _gradient(G, c, l2, x, grad):
    """∇L = (G[:, 0] − c·G[:, 1]) + λx from G's first two columns (Cᵀ[q_a, s])."""
    for j in range(grad.shape[0]):
        grad[j] = (G[j, 0] - c * G[j, 1]) + l2 * x[j]


@njit(cache=True, error_model="numpy")
def _loss_at(u, x, b, w, relu, l2, chunk_rows, e):
    """L at a point whose u = Cx is known (``Problem.loss_at``): the loss stages only."""
    top, total = log_partition_serial(u, relu, chunk_rows, e)
    scale = math.exp(top - top) / total
    return 0.5 * softmax_regression_loss_serial(u, e, scale, b, w, chunk_rows) + _half_ridge(l2, x)


@njit(cache=True, error_model="numpy")
def _hessian(matrix, Q, c, gamma, G, w, l2, beta, H, work):
    """H = Cᵀ diag(β) C + P S Pᵀ (symmetrised) + λI, P = G[:, 1:], S = [[γ, −1], [−1, 0]]
    (``Problem.hessian_matrix``): its lower triangle and diagonal, all that the step's scaled system
    and Cholesky read (the strict upper triangle holds the sandwich alone)."""
    d = H.shape[0]
    curvature_weights_serial(Q, c, w, beta)
    _sandwich(matrix, beta, H, work)
    for j in range(d):
        for l in range(j + 1):
            # (P S Pᵀ)_jl = (γ P_j0 − P_j1) P_l0 − P_j0 P_l1, averaged with its transpose
            low_rank = (gamma * G[j, 1] - G[j, 2]) * G[l, 1] - G[j, 1] * G[l, 2]
            mirrored = (gamma * G[l, 1] - G[l, 2]) * G[j, 1] - G[l, 1] * G[j, 2]
            H[j, l] += 0.5 * (low_rank + mirrored)
        H[j, j] += l2


# -- lagged: CG preconditioned by the last exact system's factors (fastnewton/hessian.py's NewtonSystem) -----------
@njit(cache=True, error_model="numpy")
def _factor_store(d):
    """An empty store of Cholesky factors by shift (``NewtonSystem.factors``): (shifts, whether each factored, the
    factors Uᵀ U of the scaled matrix + shift·I); ``_factor_at`` grows it."""
    capacity = 4
    return np.empty(capacity), np.empty(capacity, dtype=np.bool_), np.empty((capacity, d, d))


@njit(cache=True, error_model="numpy")
def _factor_at(scaled, shift, store, stored):
    """``NewtonSystem._factor``: the index of the factor of scaled + shift·I among the store's first ``stored``
    (formed and kept if it is not there; -1 where it has none), the store (grown when full) and its count."""
    shifts, factored, factors = store
    for k in range(stored):
        if shifts[k] == shift:
            return (k if factored[k] else -1), store, stored
    if stored == shifts.shape[0]:
        grown = (np.empty(2 * stored), np.empty(2 * stored, dtype=np.bool_),
                 np.empty((2 * stored,) + factors.shape[1:]))
        grown[0][:stored] = shifts
        grown[1][:stored] = factored
        grown[2][:stored] = factors
        store = grown
        shifts, factored, factors = store
    shifts[stored] = shift
    factored[stored] = _cholesky(scaled, shift, factors[stored])
    return (stored if factored[stored] else -1), store, stored + 1


@njit(cache=True, error_model="numpy")
def _preconditioner(scaled, mu, scale, settings, store, stored):
    """``NewtonSystem._preconditioner`` of a lagged system: a stored factor whose shift is within
    ×LAGGED_SHIFT_RATIO of μ (shifts below FIRST_DAMPING·scale count as that; the first in the order formed), else
    the factor at μ, shifted further (FIRST_DAMPING·scale, ×10, … at most MAX_PRECONDITIONER_SHIFTS times) while it
    has none. (index or -1, store, count) as ``_factor_at``."""
    floor = FIRST_DAMPING * scale
    target = max(mu, floor)
    ratio = settings[S_LAGGED_SHIFT_RATIO]
    shifts, factored, factors = store
    for k in range(stored):
        if factored[k]:
            held = max(shifts[k], floor)
            if max(target, held) <= ratio * min(target, held):
                return k, store, stored
    k, store, stored = _factor_at(scaled, mu, store, stored)
    shift = 0.0
    for _ in range(int(settings[S_MAX_PRECONDITIONER_SHIFTS])):
        if k >= 0:
            break
        shift = shift * 10.0 if shift else floor
        k, store, stored = _factor_at(scaled, mu + shift, store, stored)
    return k, store, stored


@njit(cache=True, error_model="numpy")
def _forcing(grad_norm, g_ref, tol, settings):
    """CG's relative residual target η = min(MAX_FORCING, max(‖g‖/g_ref, OVERSOLVE_MARGIN·tol·g_ref/‖g‖))
    (``hessian._forcing``)."""
    largest = settings[S_MAX_FORCING]
    if not g_ref > 0.0:
        return largest
    relative = grad_norm / g_ref
    if not relative > 0.0:
        return largest
    return min(largest, max(relative, settings[S_OVERSOLVE_MARGIN] * tol / relative))


@njit(cache=True, error_model="numpy", inline="always")
def _damped_product(hessian_vector, model, matrix, point, scalars, direction, mu, column_scale, v, Cv, out):
    """out = (D⁻¹HD⁻¹ + μI)·direction (``NewtonSystem._scaled_hessp``, then + μ·direction) and Cv = C·v with
    v = D⁻¹·direction (a d-long work array): CG's product, plain or projected."""
    d = direction.shape[0]
    for j in range(d):
        v[j] = direction[j] / column_scale[j]
    hessian_vector(model, matrix, point, scalars, v, Cv, out)
    for j in range(d):
        out[j] = out[j] / column_scale[j] + mu * direction[j]


@njit(cache=True, error_model="numpy", inline="always")
def _pcg(hessian_vector, model, matrix, point, scalars, U, held, scaled_g, mu, forcing, max_iterations, column_scale,
         p, Cp, vectors):
    """``NewtonSystem._pcg``: preconditioned CG (Uᵀ U) on (D⁻¹HD⁻¹ + μI) p̂ = −ĝ (ĝ = D⁻¹g the scaled gradient), at
    negative curvature the iterate so far (none on the first direction: returns -1), else the iterations (p̂ in p,
    scaled columns; the last residual in ``vectors``). ``held`` = (Â, Y, S, u, ν) of K rows (``_held_rows_system``):

    - K = 0: from p̂ = 0 until ‖residual‖ ≤ forcing·‖ĝ‖ (at most max_iterations), with Cp = C·D⁻¹p̂ summed from the
      products' passes (Σ αₖ·C(D⁻¹dₖ), as ``ForwardKeepingProduct``'s forward);
    - K > 0, projected CG (``HeldRows``, Gould, Hribar & Nocedal 2001): from the point of least P-norm on Âp̂ = −u,
      each preconditioned residual projected onto Âd = 0 (``_project``; ν the rows' multipliers), until the reduced
      residual is ≤ forcing × its first value (0 iterations where it already is), at most min(max_iterations,
      d − K) iterations (CG on the null space of the rows; past them only rounding is left to reduce).

    ``vectors``: d-long work arrays (residual, z, the direction, its product, D⁻¹ times it, the reduced residual)
    and an n-long one (a pass C·v). Inlined: ``hessian_vector`` is known at compile time."""
    A, Y, S, u_rows, nu = held
    K = A.shape[0]
    residual, z, direction, Hd, v, reduced, Cv = vectors
    d = p.shape[0]
    n = Cp.shape[0]
    if K == 0:
        for j in range(d):
            p[j] = 0.0
            residual[j] = -scaled_g[j]
        _cholesky_solve(U, residual, z)
        target = forcing * _norm_or_inf(scaled_g)
        limit = int(max_iterations)
    else:
        first = np.empty(K)
        small_spd_solve(S, u_rows, first)
        for j in range(d):
            total = 0.0
            for a in range(K):
                total += Y[j, a] * first[a]
            p[j] = -total
        _damped_product(hessian_vector, model, matrix, point, scalars, p, mu, column_scale, v, Cv, Hd)
        for j in range(d):
            residual[j] = -scaled_g[j] - Hd[j]
        _project(U, A, Y, S, residual, z, nu, reduced)
        target = forcing * _norm_or_inf(reduced)
        if not target > 0.0:
            return 0  # the feasible point is the held step already
        limit = min(int(max_iterations), max(1, d - K))
    direction[:] = z
    rz = _dot(residual, z)
    iteration = 0
    for iteration in range(1, limit + 1):
        _damped_product(hessian_vector, model, matrix, point, scalars, direction, mu, column_scale, v, Cv, Hd)
        curvature = _dot(direction, Hd)
        if not curvature > 0.0:
            # negative curvature of H + μD²: on the first direction no usable step (the damping must grow)
            if iteration == 1:
                return -1
            break
        alpha = rz / curvature
        for j in range(d):
            p[j] += alpha * direction[j]
        if K == 0:
            if iteration == 1:
                for i in range(n):
                    Cp[i] = alpha * Cv[i]
            else:
                for i in range(n):
                    Cp[i] = Cp[i] + alpha * Cv[i]
        for j in range(d):
            residual[j] -= alpha * Hd[j]
        if K == 0:
            if _norm_or_inf(residual) <= target:
                break
            _cholesky_solve(U, residual, z)
        else:
            _project(U, A, Y, S, residual, z, nu, reduced)
            if _norm_or_inf(reduced) <= target:
                break
        rz_next = _dot(residual, z)
        for j in range(d):
            direction[j] = z[j] + (rz_next / rz) * direction[j]
        rz = rz_next
    return iteration


@njit(cache=True, error_model="numpy")
def _no_held_rows(d):
    """``_pcg``'s ``held`` of plain CG: no rows."""
    return np.empty((0, d)), np.empty((d, 0)), np.empty((0, 0)), np.empty(0), np.empty(0)


@njit(cache=True, error_model="numpy", inline="always")
def _cg_step(hessian_vector, model, matrix, point, scalars, U, scaled_g, mu, forcing, max_iterations, column_scale,
             p, Cp, vectors):
    """``lagged``'s CG step (plain ``_pcg``): whether it gave a step, then p = D⁻¹p̂ and Cp = C·p."""
    if _pcg(hessian_vector, model, matrix, point, scalars, U, _no_held_rows(p.shape[0]), scaled_g, mu, forcing,
            max_iterations, column_scale, p, Cp, vectors) < 0:
        return False
    for j in range(p.shape[0]):
        p[j] = p[j] / column_scale[j]
    return True


@njit(cache=True, error_model="numpy")
def _kink(previous, values, rtol):
    """(rows at a ReLU kink, the first of them) as ``fastnewton.newton.kink_sentence`` counts them."""
    largest = 0.0
    for i in range(values.shape[0]):
        largest = max(largest, abs(values[i]))
    count = 0
    first = -1
    for i in range(values.shape[0]):
        flipped = (previous[i] > 0.0) != (values[i] > 0.0)
        near = abs(values[i]) <= rtol * largest and values[i] != 0.0
        if flipped or near:
            if count == 0:
                first = i
            count += 1
    return count, first


# -- the Newton loop, written once for every model --------------------------------------------------------
# A status of the loop alone: stalled because no damping gave an accepted step (its callers say so each their
# own way); and the loop's state while it runs.
NO_STEP_STALL = -2
RUNNING = -100


@njit(cache=True, error_model="numpy", inline="always")
def _step_gain(refined_gain, model, point, H, exact, refined, p, t, actual, noise, slope, scaled_norm2, mu, factor,
               line_curvature):
    """The gain ratio of the accepted step t·p (``newton_step``'s ``ratio_of``): a plain step's (``gain_ratio``), a step
    refined with the exact system's factor (the model's ``refined_gain``, from H), or a held CG step's from its sᵀHs
    (``line_curvature``: a lagged system's matrix is only its preconditioner, ``fastnewton.kinks.held_ratio``)."""
    if not refined:
        return gain_ratio(actual, t * slope, t * t * scaled_norm2, mu, t * factor, noise)
    if exact:
        return refined_gain(model, point, H, p, t, actual, noise)
    return predicted_ratio(actual, -(_dot(point[1], scaled_step(t, p)) + 0.5 * (t * t * line_curvature)), noise)


@njit(cache=True, error_model="numpy", inline="always")
def newton_loop(evaluate, loss_at, hessian, refine, refined_gain, kink_test, curvature, cg_step, held_cg, model,
                matrix, settings, tol, max_iter, lagged_steps, target_norm, x, loss, scalars, point, previous, trial,
                grad_at_zero, gradient_rounding, fault_grad):
    """``newton_solve`` (``fastnewton/newton.py``) from x (the answer written back, x itself again if that is not
    finite) on one problem: the stopping, stagnation and damping rules of ``NewtonRun``, the exact
    ``NewtonSystem`` in scaled columns, ``newton_step``'s logit cap, Armijo backtracking and longer trial, and
    ``CarriedForward``'s u. The model comes as its functions, each called with ``model`` (the model's own arrays
    and numbers, a tuple) first; a point is a tuple of arrays (u = Cx, ∇L, then the model's own):

    - ``evaluate(model, matrix, x, point)`` → (L, scalars): the evaluation at x from point's u, ∇L and the rest
      of point filled (scalars: the model's numbers there, a tuple);
    - ``loss_at(model, u, x, point)`` → L at x from its u (point's arrays the scratch);
    - ``hessian(model, matrix, point, scalars, H)``: ∇²L's lower triangle and diagonal, all the step reads (the
      whole matrix for a model whose ``refine`` can refine);
    - ``refine(model, point, U, column_scale, p, refined)`` → whether the Newton step p (Uᵀ U the damped scaled
      matrix) was replaced in place by a refined step (``refined``: a length-d work array);
    - ``refined_gain(model, point, H, p, t, actual, noise)`` → the gain ratio of the refined step t·p;
    - ``kink_test(model, matrix, point, previous, scalars, x, column_scale, settings, bound, scaled_bound, full)``
      → whether x is a stationary point at ReLU kinks whose least-norm subgradient meets the gradient test's
      bounds (``NewtonRun.stationary_at_kink``), called before each iteration whose gradient does not meet them
      (``full``: whether the last step was taken in full, t = 1 within the logit cap; the model's state may keep
      what the iteration's ``refine`` needs);
    - ``curvature(model, point, scalars)``: the model's state at point that its ∇²L·v reads (softmax: β);
    - ``cg_step(model, matrix, point, scalars, U, scaled_g, mu, forcing, max_iterations, column_scale, p, Cp,
      vectors)`` → whether ``lagged``'s CG gave a step (``_cg_step`` with the model's ∇²L·v);
    - ``held_cg(model, matrix, point, scalars, U, scaled_g, mu, forcing, max_iterations, column_scale, p)`` → the
      pᵀHp of the step that replaced CG's step p with kink rows held (projected CG preconditioned by Uᵀ U:
      ``_held_cg_step``), or NaN (p stays).

    ``lagged_steps``: 0 runs every iteration ``exact``; k > 0 runs ``hessian.LaggedSystems`` (an exact iteration,
    then k whose step is CG on the exact ∇²L·v preconditioned by a factor of the last exact system, ``cg_step``,
    kink rows held by ``held_cg``); softmax_relu, whose one-sided outputs ``solve`` refines with a factor of the
    system itself, runs exact only.

    Called with the evaluation at x in (loss, scalars, point) and, in ``previous``, what its caller reads of the
    point before the last step (a copy of the same); ``trial`` is the third point of the rotation. Inlined into
    each caller: the model's functions are then known at compile time, so calling them costs what a direct call
    does (a function passed as a value is not cached by Numba). ``gradient_rounding``: R of the bound R·D_j on the
    rounding of ∇L(0)'s entry j (0 where the model has none). Returns (status, iterations, L, scalars, ‖∇L‖,
    g_ref, the rounding bound of ∇L(0) where a stall within it ended CONVERGED (else 0), point, previous, where
    a non-finite value appeared (FAULT_*, or the iteration), its L); its ∇L goes to fault_grad. Statuses:
    CONVERGED, MAX_ITER, STALLED, NON_FINITE, NO_STEP_STALL."""
    n = point[0].shape[0]
    d = x.shape[0]
    x0 = x.copy()
    rounding = settings[S_ROUNDING_FACTOR]
    column_scale = np.empty(d)
    _column_scale(matrix, d, column_scale)
    grad_norm = _norm_or_inf(point[1])
    g_ref_zero = _norm_or_inf(grad_at_zero)
    g_ref = 0.0
    converged_bound = 0.0
    fault_where = FAULT_NONE
    fault_loss = 0.0
    status = RUNNING
    n_iter = 0
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
        status, fault_where, fault_loss = NON_FINITE, FAULT_AT_START, loss
        fault_grad[:] = point[1]
    elif not np.isfinite(g_ref_zero):
        status, fault_where, fault_loss = NON_FINITE, FAULT_AT_ZERO, 0.0
        fault_grad[:] = grad_at_zero
    if status == RUNNING:
        g_ref = g_ref_zero if g_ref_zero > 0 else grad_norm
        scaled_zero = scaled_norm(grad_at_zero, column_scale)
        scaled_g_ref = scaled_zero if g_ref_zero > 0 else scaled_norm(point[1], column_scale)
        # NewtonRun.begin: ∇L(0) within its own rounding bound makes tol·g_ref rounding too (NewtonRun.stopping).
        rounding_bound, scaled_rounding_bound = gradient_rounding_bounds(gradient_rounding, column_scale)
        at_rounding = g_ref_zero <= rounding_bound and scaled_zero <= scaled_rounding_bound
        # CarriedForward
        carried_steps = 0
        carried_path = math.sqrt(_dot(x, x))
        mu = 0.0
        lowest_loss = loss
        lowest_grad_norm = grad_norm
        last_progress = 0
        full_step = False
        H = np.empty((d, d))
        scaled = np.empty((d, d))
        finite = True
        system_scale = 1.0
        forcing = 0.0
        scaled_g = np.empty(d)
        p = np.empty(d)
        refined_p = np.empty(d)
        Cp = np.empty(n)
        # lagged: the factors of the last exact system's damped scaled matrix, by shift, in the order formed
        # (``NewtonSystem.factors``, which its lagged systems share), and CG's vectors
        store, stored = _factor_store(d), 0
        since_exact = lagged_steps  # iterations since the last exact one: the first is exact
        cg_vectors = (np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(n))
        u_trial = np.empty(n)
        x_trial = np.empty(d)
        u_longer = np.empty(n)
        x_longer = np.empty(d)
        while True:
            u, grad = point[0], point[1]
            if grad_norm <= tol * g_ref and scaled_norm(grad, column_scale) <= tol * scaled_g_ref:
                status = CONVERGED
                break
            if kink_test(model, matrix, point, previous, scalars, x, column_scale, settings, tol * g_ref,
                         tol * scaled_g_ref, full_step):
                status = CONVERGED
                break
            if n_iter >= max_iter:
                status = MAX_ITER
                break
            if n_iter - last_progress >= settings[S_STALL_WINDOW]:
                status = STALLED
                if (at_rounding and grad_norm <= rounding_bound
                        and scaled_norm(grad, column_scale) <= scaled_rounding_bound):
                    status = CONVERGED
                    converged_bound = rounding_bound
                break
            n_iter += 1
            # 3) Hessian: the exact NewtonSystem in scaled columns, (D⁻¹HD⁻¹ + μI) p̂ = −D⁻¹g, or (lagged) CG on
            # the exact ∇²L·v preconditioned by the last exact system, whose finiteness and scale it keeps
            exact = since_exact >= lagged_steps
            if exact:
                since_exact = 0
                stored = 0
                hessian(model, matrix, point, scalars, H)
                finite = True
                system_scale = 0.0
                # The lower triangle and diagonal of the symmetric scaled matrix: what _cholesky reads (and the
                # entries of the full matrix that NewtonSystem checks for finiteness, each twice).
                for j in range(d):
                    for l in range(j + 1):
                        scaled[j, l] = H[j, l] / (column_scale[j] * column_scale[l])
                        if not np.isfinite(scaled[j, l]):
                            finite = False
                    system_scale = max(system_scale, abs(scaled[j, j]))
                if system_scale == 0.0:
                    system_scale = 1.0  # NewtonSystem.scale: max|diag| "or 1.0"
            else:
                since_exact += 1
                curvature(model, point, scalars)
                forcing = _forcing(grad_norm, g_ref, tol, settings)
            for j in range(d):
                scaled_g[j] = grad[j] / column_scale[j]
            # 4) damped Newton step with logit cap and Armijo line search (newton_step)
            noise = _rounding_level(loss, target_norm, rounding)
            accepted = False
            t = 1.0
            factor = 1.0
            step_mu = mu
            ratio = 1.0
            increase = FIRST_INCREASE
            for _ in range(int(settings[S_MAX_DAMPING_TRIES])):
                refined = False
                if exact:
                    if lagged_steps == 0:
                        stored = 0  # each try's μ differs: no factor of the iteration is asked for again
                    k = -1
                    if finite:
                        k, store, stored = _factor_at(scaled, mu, store, stored)
                    solved = k >= 0
                    if solved:
                        U = store[2][k]
                        _cholesky_solve(U, scaled_g, p)
                        for j in range(d):
                            p[j] = -p[j] / column_scale[j]
                        refined = refine(model, point, U, column_scale, p, refined_p)
                else:
                    k = -1
                    if finite:
                        k, store, stored = _preconditioner(scaled, mu, system_scale, settings, store, stored)
                    # C·p summed by CG from its products' passes (Cp), as ``NewtonSystem.forward_of`` gives it
                    solved = k >= 0 and cg_step(model, matrix, point, scalars, store[2][k], scaled_g, mu, forcing,
                                                settings[S_MAX_CG_ITERATIONS], column_scale, p, Cp, cg_vectors)
                if not solved or not _all_finite(p) or not _dot(grad, p) < 0.0:
                    mu, increase = raised_damping(mu, increase, system_scale)
                    continue
                held_curvature = np.nan
                if not exact:
                    # relu_softmax's kink rows that the CG step crosses, held by projected CG (its pᵀHp comes back)
                    held_curvature = held_cg(model, matrix, point, scalars, store[2][k], scaled_g, mu, forcing,
                                             settings[S_MAX_CG_ITERATIONS], column_scale, p)
                    refined = not np.isnan(held_curvature)
                if exact or refined:  # (a plain CG step's C·p was summed by CG)
                    _matvec(matrix, p, Cp)
                largest = 0.0
                for i in range(n):
                    largest = max(largest, abs(Cp[i]))
                factor = 1.0
                if largest > settings[S_MAX_LOGIT_STEP]:
                    factor = settings[S_MAX_LOGIT_STEP] / largest
                    for j in range(d):
                        p[j] *= factor
                line_curvature = held_curvature * factor * factor  # sᵀHs of the capped held CG step s
                slope = _dot(grad, p)
                scaled_norm2 = 0.0
                for j in range(d):
                    scaled_norm2 += (p[j] * column_scale[j]) ** 2
                t = 1.0
                for backtrack in range(int(settings[S_MAX_BACKTRACKS])):
                    for i in range(n):
                        u_trial[i] = u[i] + (t * factor) * Cp[i]
                    for j in range(d):
                        x_trial[j] = x[j] + t * p[j]
                    L_t = loss_at(model, u_trial, x_trial, trial)
                    armijo = L_t <= loss + settings[S_ARMIJO_C1] * t * slope
                    invisible = t == 1.0 and -slope <= noise and L_t <= loss + noise
                    if np.isfinite(L_t) and (armijo or invisible):
                        accepted = True
                        ratio = _step_gain(refined_gain, model, point, H, exact, refined, p, t, loss - L_t, noise,
                                           slope, scaled_norm2, mu, factor, line_curvature)
                        if backtrack == 0 and armijo and ratio > GOOD_GAIN:
                            if refined and mu > 0.0:
                                longer = longer_trial(slope, _quadratic(H, p) if exact else line_curvature,
                                                      factor * largest, settings[S_MAX_LOGIT_STEP])
                            else:
                                longer = extended_length(slope, scaled_norm2, mu, factor, factor * largest,
                                                         settings[S_MAX_LOGIT_STEP])
                            if longer > 1.0:
                                for i in range(n):
                                    u_longer[i] = u[i] + (longer * factor) * Cp[i]
                                for j in range(d):
                                    x_longer[j] = x[j] + longer * p[j]
                                L_longer = loss_at(model, u_longer, x_longer, trial)
                                if (np.isfinite(L_longer) and L_longer < L_t
                                        and L_longer <= loss + settings[S_ARMIJO_C1] * longer * slope):
                                    t = longer
                                    L_t = L_longer
                                    u_trial[:] = u_longer
                                    x_trial[:] = x_longer
                                    ratio = _step_gain(refined_gain, model, point, H, exact, refined, p, t,
                                                       loss - L_t, noise, slope, scaled_norm2, mu, factor,
                                                       line_curvature)
                        break
                    t *= settings[S_BACKTRACK_FACTOR]
                if accepted:
                    step_mu = mu
                    break
                mu, increase = raised_damping(mu, increase, system_scale)
            if not accepted:
                if finite:
                    status = NO_STEP_STALL
                else:
                    # The Hessian overflowed where L and ∇L did not (NewtonRun.no_step): NON_FINITE at this iterate,
                    # its L and ∇L finite (the caller's message says the Hessian was not)
                    status, fault_where, fault_loss = NON_FINITE, n_iter, loss
                    fault_grad[:] = grad
                break
            # 1) u at the new iterate, carried along the line or by a forward pass when due; 2) gradient pass
            step_norm = t * math.sqrt(_dot(p, p))
            carried_steps += 1
            carried_path += step_norm
            x_norm = math.sqrt(_dot(x_trial, x_trial))
            if carried_steps >= settings[S_REFRESH_EVERY] or carried_path > settings[S_MAX_CARRIED_PATH] * x_norm:
                carried_steps = 0
                carried_path = x_norm
                _matvec(matrix, x_trial, trial[0])
            else:
                trial[0][:] = u_trial
            new_loss, new_scalars = evaluate(model, matrix, x_trial, trial)
            new_grad_norm = _norm_or_inf(trial[1])
            if not (np.isfinite(new_loss) and np.isfinite(new_grad_norm)):
                status, fault_where, fault_loss = NON_FINITE, n_iter, new_loss
                fault_grad[:] = trial[1]
                break
            if (new_loss < lowest_loss - _rounding_level(lowest_loss, target_norm, rounding)
                    or new_grad_norm <= settings[S_GRADIENT_PROGRESS] * lowest_grad_norm):
                last_progress = n_iter
            lowest_loss = min(lowest_loss, new_loss)
            lowest_grad_norm = min(lowest_grad_norm, new_grad_norm)
            x[:] = x_trial
            # the iterate before becomes the scratch of the next trials
            previous, point, trial = point, trial, previous
            loss, scalars, grad_norm = new_loss, new_scalars, new_grad_norm
            mu = damping_after(step_mu, t >= 1.0, ratio, system_scale)
            full_step = t == 1.0 and factor == 1.0
    if not _all_finite(x):
        x[:] = x0
    return status, n_iter, loss, scalars, grad_norm, g_ref, converged_bound, point, previous, fault_where, fault_loss


# -- the model's functions for the Newton loop ------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _new_point(n, d):
    """A point's arrays: u, ∇L, e, Q, G."""
    return np.empty(n), np.empty(d), np.empty(n), np.empty((n, 3)), np.empty((d, 3))


@njit(cache=True, error_model="numpy")
def _evaluate_point(model, matrix, x, point):
    """``_evaluate`` from point's u; scalars (c, γ, max z, the factor turning e into softmax(z))."""
    b, w, relu, l2, chunk_rows, work, beta, kinks = model
    u, grad, e, Q, G = point
    loss, c, gamma, top, scale = _evaluate(matrix, u, x, b, w, relu, l2, chunk_rows, e, Q, G, grad)
    return loss, (c, gamma, top, scale)


@njit(cache=True, error_model="numpy")
def _loss_at_point(model, u, x, point):
    b, w, relu, l2, chunk_rows, work, beta, kinks = model
    return _loss_at(u, x, b, w, relu, l2, chunk_rows, point[2])


@njit(cache=True, error_model="numpy")
def _hessian_at_point(model, matrix, point, scalars, H):
    b, w, relu, l2, chunk_rows, work, beta, kinks = model
    _hessian(matrix, point[3], scalars[0], scalars[1], point[4], w, l2, beta, H, work)
    if relu:  # the whole matrix: a held step's gain ratio and longer trial read pᵀHp (``_kink_gain``)
        d = H.shape[0]
        for j in range(d):
            for l in range(j + 1, d):
                H[j, l] = H[l, j]


@njit(cache=True, error_model="numpy")
def _curvature_at_point(model, point, scalars):
    """β at point (``Problem.beta``: the model's curvature weights from its columns Q), for
    ``_hessian_vector_at_point``."""
    b, w, relu, l2, chunk_rows, work, beta, kinks = model
    curvature_weights_serial(point[3], scalars[0], w, beta)


@njit(cache=True, error_model="numpy")
def _hessian_vector_at_point(model, matrix, point, scalars, v, Cv, Hv):
    """Hv = ∇²L·v = Cᵀ(β ⊙ Cv) + P S Pᵀv + λv (``Problem.hessian_product_and_forward``; P = G[:, 1:], S =
    [[γ, −1], [−1, 0]] as in ``_hessian``; β from ``_curvature_at_point``) and Cv = C·v, in one read of C."""
    b, w, relu, l2, chunk_rows, work, beta, kinks = model
    G = point[4]
    gamma = scalars[1]
    d = v.shape[0]
    sandwiched = np.empty(d)
    _sandwich_vector(matrix, beta, v, chunk_rows, Cv, sandwiched)
    a0 = 0.0
    a1 = 0.0
    for j in range(d):
        a0 += G[j, 1] * v[j]
        a1 += G[j, 2] * v[j]
    s0 = gamma * a0 - a1
    s1 = -a0
    for j in range(d):
        Hv[j] = (sandwiched[j] + (G[j, 1] * s0 + G[j, 2] * s1)) + l2 * v[j]


@njit(cache=True, error_model="numpy")
def _cg_step_at_point(model, matrix, point, scalars, U, scaled_g, mu, forcing, max_iterations, column_scale, p, Cp,
                      vectors):
    """``_cg_step`` with the softmax models' ∇²L·v (``_hessian_vector_at_point``): compiled once here, not inlined
    into each caller of ``newton_loop`` (inlined there, a first call of solve_many(problems) on an empty cache
    compiled for 119 s, against 94 s before lagged and 98 s so)."""
    return _cg_step(_hessian_vector_at_point, model, matrix, point, scalars, U, scaled_g, mu, forcing,
                    max_iterations, column_scale, p, Cp, vectors)


# -- lagged relu_softmax: CG with the kink rows held (fastnewton/kinks.py's Kinks.step_rounds with a CG system) ----
@njit(cache=True, error_model="numpy")
def _held_rows_system(U, R, rows, column_scale, A, Y, S):
    """``HeldRows.of``: Â = R[rows]·D⁻¹ (K × d), Y = P⁻¹Âᵀ (P = UᵀU, CG's preconditioner) and S = ÂY into A, Y and S;
    whether S factors (``small_spd_solve``'s test: False where the rows are dependent)."""
    K = rows.shape[0]
    d = R.shape[1]
    column = np.empty(d)
    for a in range(K):
        for j in range(d):
            A[a, j] = R[rows[a], j] / column_scale[j]
        _cholesky_solve(U, A[a], column)
        for j in range(d):
            Y[j, a] = column[j]
    for a in range(K):
        for c in range(K):
            total = 0.0
            for j in range(d):
                total += A[a, j] * Y[j, c]
            S[a, c] = total
    return small_spd_solve(S, np.ones(K), np.empty(K))


@njit(cache=True, error_model="numpy")
def _project(U, A, Y, S, r, z, nu, reduced):
    """``HeldRows.project``: z = P⁻¹(r − Âᵀν) with ν = S⁻¹ÂP⁻¹r (so Âz = 0), ν, and the reduced residual r − Âᵀν."""
    K, d = A.shape
    _cholesky_solve(U, r, z)
    Az = np.empty(K)
    for a in range(K):
        Az[a] = _dot(A[a], z)
    small_spd_solve(S, Az, nu)
    for j in range(d):
        along = 0.0
        across = 0.0
        for a in range(K):
            along += Y[j, a] * nu[a]
            across += A[a, j] * nu[a]
        z[j] -= along
        reduced[j] = r[j] - across


@njit(cache=True, error_model="numpy")
def _held_cg_step(model, matrix, point, scalars, U, scaled_g, mu, forcing, max_iterations, column_scale, p):
    """``Kinks.step_rounds`` of a lagged (CG) iteration: where the plain CG step p moves candidate rows across their
    kink (``held_rows``), the step with the working set held (projected ``_pcg``, preconditioned by the same factor
    Uᵀ U), the set updated by ``update_working_set`` (at most MAX_UPDATES times), from every crossing candidate and,
    where that fails, from the moving ones (``moving_rows_instead``). Returns the held step's p̂ᵀ(D⁻¹HD⁻¹)p̂ = its
    pᵀHp (for its gain ratio), p replaced and the rows held kept for the next ``_kink_test``; NaN where the plain
    step stays (no candidate crosses, or no held step: rows dependent, negative curvature at once, not descent)."""
    index, R, table, info, held, flips, pending, group, coefficient = model[7]
    info[K_PENDING] = 0
    count = info[K_COUNT]
    if count == 0:
        return np.nan
    member = np.empty(count, dtype=np.bool_)
    if not held_rows(R, table, count, p, member, True):
        return np.nan
    d = p.shape[0]
    grad = point[1]
    first = member.copy()
    step = np.empty(d)
    n = point[0].shape[0]
    vectors = (np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(n))
    residual = vectors[0]
    for attempt in range(2):
        if attempt and not moving_rows_instead(R, table, p, first, member):
            break
        left = np.zeros(count, dtype=np.bool_)
        for _ in range(MAX_UPDATES + 1):
            rows = held_classes(member, group)
            K = rows.shape[0]
            if K == 0 or K > MAX_KINK_ROWS:
                break
            A, Y, S = np.empty((K, d)), np.empty((d, K)), np.empty((K, K))
            if not _held_rows_system(U, R, rows, column_scale, A, Y, S):
                break
            u_rows = np.empty(K)
            for a in range(K):
                u_rows[a] = table[rows[a], T_U]
            nu = np.empty(K)
            if _pcg(_hessian_vector_at_point, model, matrix, point, scalars, U, (A, Y, S, u_rows, nu), scaled_g, mu,
                    forcing, max_iterations, column_scale, step, vectors[6], vectors) < 0:
                break
            # (D⁻¹HD⁻¹ + μI) p̂ = −ĝ − r gives p̂ᵀ(D⁻¹HD⁻¹)p̂ = −p̂ᵀ(ĝ + r) − μ‖p̂‖², with no product
            curvature = -_dot(step, scaled_g + residual) - mu * _dot(step, step)
            for j in range(d):
                step[j] = step[j] / column_scale[j]
            if update_working_set(R, table, group, coefficient, rows, nu, step, member, left):
                continue
            if _all_finite(step) and _dot(grad, step) < 0.0:
                hold_classes(member, group)
                for k in range(count):
                    if member[k]:
                        pending[info[K_PENDING]] = index[k]
                        info[K_PENDING] += 1
                p[:] = step
                return curvature
            break
    return np.nan


@njit(cache=True, error_model="numpy")
def no_held_cg(model, matrix, point, scalars, U, scaled_g, mu, forcing, max_iterations, column_scale, p):
    """``newton_loop``'s ``held_cg`` of a model it runs exact only (``lagged_steps`` 0): never called."""
    return np.nan


# relu_softmax's ReLU kinks (kernels/kinks.py, as ``fastnewton.kinks`` runs them for ``solve``): the model's
# state, made once per problem (``_kink_state``): the candidate rows' indices, their rows of C (dense) and their
# table, what the last step did to each row and each row's sign flips in a row, the rows the current iteration's
# step holds, counts (the ``K_*`` entries of ``info``), and the candidates' classes of parallel rows (group,
# coefficient: ``parallel_groups``).
K_COUNT, K_STATIONARY, K_PENDING = range(3)


@njit(cache=True, error_model="numpy")
def _kink_state(n, d):
    # kink_candidates lists at most n rows; R's rows are written before they are read (``_rows_of``), so a large
    # buffer costs no zeroing per problem
    rows = min(n, MAX_CANDIDATE_ROWS)
    return (np.empty(rows, dtype=np.int64), np.empty((rows, d)), np.empty((rows, TABLE_FIELDS)),
            np.zeros(3, dtype=np.int64), np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int64),
            np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64), np.empty(rows))


@njit(cache=True, error_model="numpy")
def _rows_of(matrix, index, count, R):
    """R[k] = C[index[k]] (dense) for k < count."""
    A, indptr, indices, data, csr = matrix
    for k in range(count):
        i = index[k]
        if csr:
            R[k, :] = 0.0
            for q in range(indptr[i], indptr[i + 1]):
                R[k, indices[q]] += data[q]  # summed as SciPy sums duplicate entries when it densifies a row
        else:
            R[k, :] = A[i]


@njit(cache=True, error_model="numpy")
def _kink_test(model, matrix, point, previous, scalars, x, column_scale, settings, bound, scaled_bound, full):
    """``NewtonRun.stationary_at_kink`` (with ``fastnewton.kinks.Kinks.at``): the rows the last step held become
    ``held`` (HELD_FULL after a full step), then the candidate rows, their table and the least-norm test."""
    b, w, relu, l2, chunk_rows, work, beta, kinks = model
    index, R, table, info, held, flips, pending, group, coefficient = kinks
    info[K_COUNT] = 0
    info[K_STATIONARY] = 0
    if not relu:
        return False
    held[:] = NOT_HELD
    for k in range(info[K_PENDING]):
        held[pending[k]] = HELD_FULL if full else HELD_SHORT
    info[K_PENDING] = 0
    u = point[0]
    count = kink_candidates(u, previous[0], held, flips, settings[S_KINK_RTOL], index)
    if count <= 0:
        return False
    _rows_of(matrix, index, count, R)
    at_kink = kink_table(R, index, count, u, flips, held, x, point[2], scalars[3], b, scalars[0], table)
    if parallel_groups(R, table, count, group, coefficient) < 0:
        return False
    info[K_COUNT] = count
    if at_kink == 0:
        return False
    rows, norm, scaled = least_norm_subgradient(point[1], R, table, count, group, coefficient, column_scale)
    if norm <= bound and scaled <= scaled_bound:
        info[K_STATIONARY] = rows
        return True
    return False


@njit(cache=True, error_model="numpy")
def _kink_refine(model, point, U, column_scale, p, refined):
    """``fastnewton.kinks.Kinks.step``: the step with the working set's rows held at their kink (``held_step``,
    M⁻¹ from the factor Uᵀ U of the damped scaled matrix) in place of a descent step p; the rows held are kept
    for the next iteration's ``_kink_test``."""
    index, R, table, info, held, flips, pending, group, coefficient = model[7]
    info[K_PENDING] = 0
    count = info[K_COUNT]
    grad = point[1]
    if count == 0 or not _all_finite(p) or not _dot(grad, p) < 0.0:
        return False
    member = np.empty(count, dtype=np.bool_)
    if not held_rows(R, table, count, p, member, True):
        return False
    d = p.shape[0]
    W = np.empty((d, count))
    scaled_row = np.empty(d)
    column = np.empty(d)
    for k in range(count):  # W[:, k] = M⁻¹Rₖ = D⁻¹(D⁻¹MD⁻¹)⁻¹D⁻¹Rₖ for the classes' rows (``held_step``)
        if group[k] != k:
            continue
        for j in range(d):
            scaled_row[j] = R[k, j] / column_scale[j]
        _cholesky_solve(U, scaled_row, column)
        for j in range(d):
            W[j, k] = column[j] / column_scale[j]
    if not held_step(R, W, table, group, coefficient, member, p, grad, refined):
        return False
    for k in range(count):
        if member[k]:
            pending[info[K_PENDING]] = index[k]
            info[K_PENDING] += 1
    p[:] = refined
    return True


@njit(cache=True, error_model="numpy")
def scaled_step(t, p):
    """t·p, a new array (the step whose gain ratio a model's ``refined_gain`` gives)."""
    step = np.empty(p.shape[0])
    for j in range(p.shape[0]):
        step[j] = t * p[j]
    return step


@njit(cache=True, error_model="numpy")
def _kink_gain(model, point, H, p, t, actual, noise):
    """The gain ratio of a held step t·p (``held_gain_ratio``)."""
    return held_gain_ratio(point[1], H, scaled_step(t, p), actual, noise)


@njit(cache=True, error_model="numpy")
def no_kink_test(model, matrix, point, previous, scalars, x, column_scale, settings, bound, scaled_bound, full):
    """``newton_loop``'s ``kink_test`` of a model without ReLU kinks on its rows."""
    return False


@njit(cache=True, error_model="numpy")
def no_curvature(model, point, scalars):
    """``newton_loop``'s ``curvature`` of a model it runs exact only (``lagged_steps`` 0)."""


@njit(cache=True, error_model="numpy")
def no_cg_step(model, matrix, point, scalars, U, scaled_g, mu, forcing, max_iterations, column_scale, p, Cp, vectors):
    """``newton_loop``'s ``cg_step`` of a model it runs exact only (``lagged_steps`` 0): never called."""
    return False


# -- the solve of one problem -------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _solve_one(matrix, b, w, relu, l2, target_norm, floor, start, chunk_rows, lagged_steps, settings, x, grad_out,
               fault_grad, out_int, out_float):
    """Start and Newton loop of one problem; x holds the given start (START_GIVEN) and gets the answer.
    ``lagged_steps``: 0 (``exact``) or ``lagged``'s (``newton_loop``)."""
    n = b.shape[0]
    d = x.shape[0]
    out_int[O_FAULT_WHERE] = FAULT_NONE
    out_int[O_KINK_COUNT] = 0
    out_int[O_KINK_INDEX] = -1
    out_int[O_N_ITER] = 0
    # Made once for the start's fit and every iteration rather than per sandwich (measured in a loop of
    # sandwiches alone, one thread: 36.6 µs fresh against 37.2 µs reused at 288 × 48, no gain there; kept as
    # the one place the dense sandwich's work arrays are made).
    work = _sandwich_work(matrix, n, d)
    point, previous, trial = _new_point(n, d), _new_point(n, d), _new_point(n, d)
    u, grad, e, Q, G = point
    # ∇L(0) with the reference model (plain softmax: relu_softmax's one-sided derivative at 0): its columns
    # here, their pass over C the start fit's when there is one.
    u[:] = 0.0
    zero = np.zeros(d)
    grad_at_zero = np.empty(d)
    c_zero = _columns(u, b, w, False, chunk_rows, e, Q)[0]
    if start == START_LOG_FIT or start == START_ACTIVE_FIT:
        if not _fit_start(matrix, b, start == START_ACTIVE_FIT, floor, settings, chunk_rows, x, work, Q, G):
            out_int[O_STATUS] = START_FAILED
            return
    else:
        _rmatmat(matrix, Q, chunk_rows, G)
        if start == START_ZEROS:
            x[:] = 0.0
    _gradient(G, c_zero, 0.0, zero, grad_at_zero)
    model = (b, w, relu, l2, chunk_rows, work, np.empty(n), _kink_state(n, d))
    out_float[O_LOSS_AT_ZERO] = _loss_at(u, zero, b, w, relu, l2, chunk_rows, e)
    # the evaluation at x0
    _matvec(matrix, x, u)
    loss, scalars = _evaluate_point(model, matrix, x, point)
    previous[0][:] = u  # the kink count's u before the last step
    top, bottom, _, _ = target_summary(b)
    gradient_rounding = softmax_gradient_rounding(n, max(top, -bottom), settings[S_ROUNDING_FACTOR])
    (status, n_iter, loss, scalars, grad_norm, g_ref, converged_bound, point, previous, fault_where,
     fault_loss) = newton_loop(
        _evaluate_point, _loss_at_point, _hessian_at_point, _kink_refine, _kink_gain, _kink_test, _curvature_at_point,
        _cg_step_at_point, _held_cg_step, model, matrix, settings, settings[S_TOL], int(settings[S_MAX_ITER]),
        lagged_steps, target_norm, x, loss, scalars, point, previous, trial, grad_at_zero, gradient_rounding,
        fault_grad)
    if status == NO_STEP_STALL:
        status = STALLED
        out_int[O_KINK_COUNT] = NO_STEP
    elif status == STALLED and relu:
        count, first = _kink(previous[0], point[0], settings[S_KINK_RTOL])
        out_int[O_KINK_COUNT] = count
        out_int[O_KINK_INDEX] = first
    elif status == CONVERGED:
        out_int[O_KINK_COUNT] = model[7][3][K_STATIONARY]  # rows at the kink of a kink stationary point (or 0)
    if fault_where != FAULT_NONE:
        out_int[O_FAULT_WHERE] = fault_where
        out_float[O_FAULT_LOSS] = fault_loss
    grad = point[1]
    out_int[O_STATUS] = status
    out_int[O_N_ITER] = n_iter
    out_float[O_LOSS] = loss
    out_float[O_G_REF] = g_ref
    out_float[O_ROUNDING_BOUND] = converged_bound
    out_float[O_TOP] = scalars[2]
    # The loop's ‖∇L‖ (``_norm_or_inf``: rescaled where Σg² underflows, as solve's ``norm``; √Σg² alone read 0
    # for a C scaled by 1e-160), NaN for a non-finite gradient as in solve's result.
    out_float[O_GRAD_NORM] = grad_norm if _all_finite(grad) else np.nan
    grad_out[:] = grad


@njit(parallel=True, cache=True, error_model="numpy")
def plain_target_facts(b, starts, finite, summaries):
    """For each target p, t = b[starts[p]:starts[p + 1]] (many targets side by side): finite[p] = whether every
    entry is finite (``fastnewton.validation``'s rule for b), summaries[p] = ``target_summary(t)`` (max, min,
    the least positive entry, ‖t‖²: the softmax models' facts). One task per target, each summary serial, so
    the thread count changes no bit."""
    for p in prange(finite.shape[0]):
        t = b[starts[p]:starts[p + 1]]
        finite[p] = _all_finite(t)
        top, bottom, least_positive, squares = target_summary(t)
        summaries[p, 0] = top
        summaries[p, 1] = bottom
        summaries[p, 2] = least_positive
        summaries[p, 3] = squares


@njit(parallel=True, cache=True, error_model="numpy")
def plain_csr_facts(indptr_at, index_bytes, n, stored_indices, stored_data, dense_from, sound, facts):
    """For each CSR C p of ``n[p]`` rows whose indptr lies at ``indptr_at[p]`` (``index_bytes[p]`` an entry: 8, int64,
    or 4, int32), holding ``stored_indices[p]`` indices and ``stored_data[p]`` values: sound[p] = whether that indptr is
    what ``fastnewton.validation`` accepts (``indptr_fault``: from 0, never decreasing, ending within both), and for a
    sound one facts[p] = (stored entries indptr[-1], the sandwich's pair updates over its rows shorter than
    ``dense_from[p]`` entries, those long rows: ``csr_row_pairs``, as ``fastnewton.matrix.CSRMatrix`` forms them). Only
    indptr is read: the entries it covers are checked by ``plain_csr_entries`` or where the compiled solve first reads
    them (``_solve_packed``). One task per matrix."""
    for p in prange(sound.shape[0]):
        starts = int64_indices_at(indptr_at[p], n[p] + 1, index_bytes[p])
        sound[p] = indptr_fault(starts, stored_indices[p], stored_data[p]) == INDPTR_SOUND
        if sound[p]:
            _, short_pairs, long_rows = csr_row_pairs(starts, dense_from[p], np.empty(starts.shape[0] - 1, np.int64))
            facts[p, 0] = starts[starts.shape[0] - 1]
            facts[p, 1] = short_pairs
            facts[p, 2] = long_rows


@njit(parallel=True, cache=True, error_model="numpy")
def plain_csr_entries(indices_at, data_at, nnz, columns, index_bytes, valid):
    """valid[p] = whether CSR C p's ``nnz[p]`` stored entries, column indices at ``indices_at[p]`` (``index_bytes[p]``
    each) and float64 values at ``data_at[p]`` (read in place), are what ``fastnewton.validation`` accepts of a C
    with ``columns[p]`` columns (``_csr_entries_valid``). One task per matrix."""
    for p in prange(valid.shape[0]):
        valid[p] = _csr_entries_valid(int64_indices_at(indices_at[p], nnz[p], index_bytes[p]),
                                      array_at(data_at[p], (nnz[p],), np.float64), columns[p])


@njit(cache=True, error_model="numpy")
def _csr_entries_valid(indices, data, d):
    """Whether a CSR C's stored entries (those its sound indptr covers) have column indices in [0, d) and
    finite values: validation's rules for them."""
    outside = False
    for k in range(indices.shape[0]):
        outside |= (indices[k] < 0) | (indices[k] >= d)  # no early exit: the loop vectorises
    return not outside and _all_finite(data)


@njit(parallel=True, cache=True, error_model="numpy")
def solve_small_problems(order, lanes, layout, addresses, parameters, settings, b, w, x, grad_out, fault_grad,
                         out_int, out_float):
    """Solve the problems listed in ``order`` (costliest first, say) in ``lanes`` tasks, each taking the next
    problem of ``order`` from a shared atomic counter (``kernels/atomic.py``) when it finishes one. A
    problem is solved start to finish on one thread, so its bits do not depend on the lanes or on
    which lane took it.

    Reads each problem's C in place at ``addresses[p]``; writes its answer into its slice of x
    (which holds its start when it is given), ∇L into grad_out, and out_int / out_float (the
    O_* columns); a non-finite gradient that stopped a solve goes to fault_grad. A dense C with a
    non-finite entry, or a CSR C with a column index outside [0, d), is not solved: its status is C_INVALID.
    """
    taken = np.zeros(1, dtype=np.int64)
    for lane in prange(lanes):
        while True:
            p = next_taken(taken, order)
            if p < 0:
                break
            _solve_packed(p, layout, addresses, parameters, settings, b, w, x, grad_out,
                          fault_grad, out_int, out_float)


@njit(cache=True, error_model="numpy")
def _solve_packed(p, layout, addresses, parameters, settings, b, w, x, grad_out, fault_grad, out_int, out_float):
    """``_solve_one`` on packed problem p: its C read in place, its slices of the packed vectors."""
    n = layout[p, L_N]
    d = layout[p, L_D]
    row = layout[p, L_ROW]
    col = layout[p, L_COL]
    csr = layout[p, L_CSR] == 1
    # C's checks (Problem's: no NaN or ±Inf entry, a CSR C's column indices in [0, d); its indptr was checked
    # before), here rather than in a pass over every C before the solves: this first read brings C from memory
    # for the start's sandwich that follows (1000 dense problems, 288 × 48 on average: a separate pass over
    # their 115 MB took ~8 ms on 2 threads).
    matrix = matrix_at(csr, n, d, addresses[p, A_VALUES], addresses[p, A_INDPTR], addresses[p, A_INDICES],
                       layout[p, L_INDEX_BYTES])
    if csr:
        valid = _csr_entries_valid(matrix[2], matrix[3], d)
    else:
        valid = _all_finite(array_at(addresses[p, A_VALUES], (n * d,), np.float64))
    if not valid:
        out_int[p, O_STATUS] = C_INVALID
        out_int[p, O_N_ITER] = 0
        return
    _solve_one(matrix, b[row:row + n], w[row:row + n], layout[p, L_RELU] == 1, parameters[p, P_L2],
               parameters[p, P_TARGET_NORM], parameters[p, P_FLOOR], layout[p, L_START], layout[p, L_CHUNK],
               layout[p, L_LAGGED], settings, x[col:col + d], grad_out[col:col + d], fault_grad[col:col + d],
               out_int[p], out_float[p])
