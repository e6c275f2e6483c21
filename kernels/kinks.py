"""relu_softmax's ReLU kinks: the rows that sit at (Cx)ᵢ = 0, the least-norm Clarke subgradient there, and the
damped Newton step that holds them at 0. Written once for both Newton loops: ``fastnewton.kinks`` (``solve``)
calls these kernels, and kernels/small_newton.py (``solve_many``'s compiled loop) calls them too.

With u = Cx, z = ReLU(u) and aᵢ = ∂f/∂zᵢ (f the smooth loss in z: aᵢ = sᵢ(sᵢ − bᵢ) − c·sᵢ, s = softmax(z),
c = ⟨s, s − b⟩), L is not differentiable where uᵢ = 0 and aᵢ ≠ 0. Its Clarke subdifferential at a point with the
rows K at the kink is {g(θ) = ∇L|_{θ=0 on K} + Σ_{i∈K} θᵢ aᵢ Cᵢᵀ : θ ∈ [0, 1]^K} (the gradient that the
evaluation forms takes θᵢ = mᵢ = 1[uᵢ > 0]). A minimiser on a kink balances the two one-sided pieces with
some θ strictly inside, so the gradient (θ = m) never vanishes there and the smooth Newton step zig-zags
across the kink; instead, the step's model holds the rows of a working set K at the kink:

    min_p gᵀp + ½ pᵀMp   subject to  C_K p = −u_K,     M = H + μD²,

whose solution is p = p₀ − Wν with p₀ = −M⁻¹g, W = M⁻¹C_Kᵀ and (C_K W) ν = u_K + C_K p₀ (a bordered system
of |K| rows, by the range-space method on M's factor). The multiplier gives the row's share of the gradient,
λᵢ = mᵢaᵢ + νᵢ = θᵢaᵢ; a row stays held while 0 ≤ λᵢ ≤ aᵢ (θᵢ ∈ [0, 1] with aᵢ > 0: both one-sided
directional derivatives across the kink are ≥ 0); otherwise it leaves K (θᵢ > 1: L falls on the active
side; θᵢ < 0: on the inactive side; aᵢ < 0, a ridge: always) and the system is solved again without it, while
candidate rows off the kink that the step would move across it join K — the primal-dual active set
(semismooth Newton) rule, in the spirit of ``fastnewton.active_set``. K starts from the rows at the kink and
the other candidates (``kink_candidates``: near the kink, held by the last step, or zig-zagging across it) that
the plain step moves across it (``held_rows``), and where that fails, from the rows at the kink and the crossing
ones that zig-zag or were held short; with none, the plain step is taken unchanged (the same bits).

Many rows can share one geometric kink: rows of C that are parallel (Rₖ = cₖ·Rᵣ, e.g. every row whose only entry
lies in a column j with xⱼ = 0) have uₖ = cₖ·uᵣ, so they reach 0 together and one constraint Rᵣp = −uᵣ holds them
all (u = Cx is consistent: Rₖ(x + p) = cₖ·Rᵣ(x + p) = 0). The held step therefore holds one row per class of
parallel candidates (``parallel_groups``), and its multiplier ν is the class's: the gradient's part along Rᵣ is
Σₖ θₖcₖaₖ, and leaving the kink to the side uᵣ > 0 (< 0) sets θₖ = 1[cₖ > 0] (1[cₖ < 0]), so the class stays
held while lo ≤ Σₖ cₖmₖaₖ + ν ≤ hi with lo = Σ_{cₖ<0} cₖaₖ and hi = Σ_{cₖ>0} cₖaₖ (both one-sided directional
derivatives ≥ 0; a single row, c = 1: 0 ≤ λ ≤ a as above). The least-norm test keeps every row at the kink as
its own unknown θₖ ∈ [0, 1] (the Clarke set is the sum of the rows' segments, parallel or not).

Each candidate row's numbers sit in one row of a table (the ``T_*`` columns) beside its dense row of C (R).
"""
import math

import numpy as np
from numba import njit

from .damping import predicted_ratio
from .reduce import scaled_norm

# The kink tests take at most this many distinct candidate rows per iteration (rows at the kink, held by the last
# step, or whose sign flipped in it; parallel rows count once: ``parallel_groups``); beyond it the iterate is not
# settling on a few kinks (far from the optimum the first steps flip dozens of rows) and the plain step is taken.
MAX_CANDIDATES = 32
# ... and read at most this many rows of C: many parallel rows can sit at one kink (kink_stress: up to 50 rows
# whose only entry lies in one column j with xⱼ = 0). Reading them costs O(their nnz + MAX_CANDIDATE_ROWS·d), the
# grouping O(MAX_CANDIDATE_ROWS·MAX_CANDIDATES) mostly (a non-parallel pair differs at its first entries), and the
# bordered solves one column of W per class: at most MAX_CANDIDATES·d² on a factor, well below forming H.
MAX_CANDIDATE_ROWS = 256
# The bordered system holds at most this many constraints (classes of parallel rows): the minimisers seen on
# noisy relu_softmax targets put 1–2 rows at the kink (bench/many_small.py's problems, n 64–512, d 32–64) and
# kink_stress's up to 2 classes; more is not a few kinks.
MAX_KINK_ROWS = 8
# A row sits at the kink when |uᵢ| ≤ KINK_ROUNDING·nnzᵢ·eps·Σⱼ|Cᵢⱼxⱼ|: a fresh pass forms uᵢ within
# γ_nnzᵢ·Σⱼ|Cᵢⱼxⱼ| ≈ nnzᵢ·eps·Σⱼ|Cᵢⱼxⱼ| of (Cx)ᵢ, and a carried u (fastnewton.newton's CarriedForward, up to
# REFRESH_EVERY = 8 steps) adds per step one such bound with the step for x (smaller than x near a kink)
# and eps·|uᵢ|; twice eight such bounds cover both. Below that bound uᵢ = 0 is as true as uᵢ ≠ 0.
KINK_ROUNDING = 16.0
# Updates of K per step (rows leaving or joining): each is one more small solve with W's columns already formed.
MAX_UPDATES = 3
# Coordinate-descent sweeps of the least-norm problem (the rows at the kink, ≤ MAX_CANDIDATE_ROWS unknowns in a box),
# which polish the exact solution in the classes' shares (``class_start``).
MAX_SWEEPS = 200
# Rounds of the active-set method on the classes' shares (≤ MAX_CANDIDATES unknowns): each frees or fixes one
# variable, and a few rounds per unknown settle it (rounding can make it cycle: then it stops, no worse).
MAX_ACTIVE_SET_ROUNDS = 4 * MAX_CANDIDATES
# Where its free classes are dependent (their rows span fewer dimensions than there are free classes), it adds this
# × the largest diagonal entry to the diagonal: above PIVOT_RTOL, so the factorisation goes through.
BOX_RIDGE_RTOL = 1e-10
# A row zig-zags across its kink when its sign flipped in each of the last ZIGZAG_FLIPS steps (then it is a
# candidate: held when the plain step would flip it once more). Measured on bench/many_small.py's relu_softmax
# problems: with one flip (the last step) the first, long steps of ~20% of the problems that converge without a
# kink had a row held for a step, which changed their path (and, on a few, the local minimum reached); the
# zig-zag at a kink alternates the sign for many steps in a row.
ZIGZAG_FLIPS = 2
# A pivot of the bordered matrix C_K W below this × its largest diagonal entry: rows of C_K dependent.
PIVOT_RTOL = 1e-12
# Two rows are parallel when ‖Rₖ − cRᵣ‖∞ ≤ PARALLEL_RTOL·‖Rₖ‖∞: the pivot test above rejects rows within about
# √PIVOT_RTOL of parallel (the pivot is a squared distance), so those are the ones merged into one constraint.
PARALLEL_RTOL = 1e-6

# What the last step did to a row (``held``, an int8 per row): nothing, held it at the kink on a shortened step
# (the line search cut it: uᵢ is on its way to 0), or held it there with the step taken in full (t = 1 within the
# logit cap: uᵢ = 0 up to the rounding of C·p).
NOT_HELD, HELD_SHORT, HELD_FULL = 0, 1, 2
# Columns of the candidate table: uᵢ, aᵢ, mᵢ = 1[uᵢ > 0], whether the row is at the kink (to rounding, or
# HELD_FULL), whether it is on its way there (it zig-zags: its sign flipped in each of the last ZIGZAG_FLIPS
# steps, or the last step held it short of the kink) and whether its row of C is non-zero.
T_U, T_SLOPE, T_ACTIVE, T_AT_KINK, T_MOVING, T_NONZERO = range(6)
TABLE_FIELDS = 6


@njit(cache=True)
def kink_candidates(u, u_previous, held, flips, rtol, index):
    """Counts the sign flips since u_previous into flips (the steps in a row that flipped row i's sign; called once
    per iteration) and lists the rows to test into index: held by the last step, or uᵢ ≠ 0 with
    |uᵢ| ≤ rtol·max|u| (newton.py's kink rule: exact zeros are empty rows, or rows held by the last step), or
    flips[i] ≥ ZIGZAG_FLIPS; returns their count, or −1 when more than index holds."""
    return kink_candidates_of_largest(u, u_previous, held, flips, rtol, largest_magnitude(u), index)


@njit(cache=True)
def largest_magnitude(u):
    """max|uᵢ| (0 for no rows): the scale of ``kink_candidates``' test (on Dask, the blocks' maximum of these)."""
    largest = 0.0
    for i in range(u.shape[0]):
        largest = max(largest, abs(u[i]))
    return largest


@njit(cache=True)
def kink_candidates_of_largest(u, u_previous, held, flips, rtol, largest, index):
    """``kink_candidates`` with max|u| given (``largest``: on Dask, over all blocks' rows, u one block's)."""
    count = 0
    for i in range(u.shape[0]):
        flips[i] = flips[i] + 1 if (u_previous[i] > 0.0) != (u[i] > 0.0) else 0
        near = u[i] != 0.0 and abs(u[i]) <= rtol * largest
        if held[i] != NOT_HELD or near or flips[i] >= ZIGZAG_FLIPS:
            if count < index.shape[0]:
                index[count] = i
            count += 1
    return count if count <= index.shape[0] else -1


@njit(cache=True)
def kink_table(R, index, count, u, flips, held, x, e, scale, b, c, table):
    """Fill table[:count] for the candidate rows index[:count] (R[k] = C[index[k]], dense): aᵢ = sᵢ(sᵢ − bᵢ) − c·sᵢ
    with sᵢ = eᵢ·scale, and whether the row is at the kink: |uᵢ| ≤ KINK_ROUNDING·nnzᵢ·eps·Σⱼ|Rₖⱼxⱼ| (the rounding
    of uᵢ) or HELD_FULL (held at 0 by the last step, taken in full: its rounding is that of C·p, not bounded by
    x's); returns the number of non-zero rows at the kink."""
    eps = np.finfo(np.float64).eps
    at_kink = 0
    for k in range(count):
        i = index[k]
        s = e[i] * scale
        magnitude = 0.0
        nnz = 0
        for j in range(R.shape[1]):
            if R[k, j] != 0.0:
                nnz += 1
                magnitude += abs(R[k, j] * x[j])
        table[k, T_U] = u[i]
        table[k, T_SLOPE] = s * (s - b[i]) - c * s
        table[k, T_ACTIVE] = 1.0 if u[i] > 0.0 else 0.0
        table[k, T_NONZERO] = 1.0 if nnz > 0 else 0.0
        flag = nnz > 0 and (held[i] == HELD_FULL or abs(u[i]) <= KINK_ROUNDING * nnz * eps * magnitude)
        table[k, T_AT_KINK] = 1.0 if flag else 0.0
        table[k, T_MOVING] = 1.0 if flips[i] >= ZIGZAG_FLIPS or held[i] == HELD_SHORT else 0.0
        at_kink += flag
    return at_kink


@njit(cache=True)
def parallel_groups(R, table, count, group, coefficient):
    """group[k]: the first candidate r whose row is parallel to candidate k's, Rₖ = cₖ·Rᵣ (cₖ in coefficient; k
    itself with cₖ = 1 when none is, and for an empty row): ‖Rₖ − cₖRᵣ‖∞ ≤ PARALLEL_RTOL·‖Rₖ‖∞ with cₖ from Rᵣ's
    largest entry. Returns the number of classes, or −1 as soon as it passes MAX_CANDIDATES."""
    d = R.shape[1]
    pivot = np.empty(count, dtype=np.int64)
    classes = 0
    for k in range(count):
        group[k] = k
        coefficient[k] = 1.0
        largest = 0.0
        pivot[k] = 0
        for j in range(d):
            if abs(R[k, j]) > largest:
                largest = abs(R[k, j])
                pivot[k] = j
        if table[k, T_NONZERO] != 0.0:
            for r in range(k):
                if group[r] != r or table[r, T_NONZERO] == 0.0:
                    continue
                c = R[k, pivot[r]] / R[r, pivot[r]]
                if c == 0.0:
                    continue
                parallel = True
                for j in range(d):
                    if abs(R[k, j] - c * R[r, j]) > PARALLEL_RTOL * largest:
                        parallel = False
                        break
                if parallel:
                    group[k] = r
                    coefficient[k] = c
                    break
        if group[k] == k:
            classes += 1
            if classes > MAX_CANDIDATES:
                return -1
    return classes


@njit(cache=True)
def least_norm_subgradient(g, R, table, count, group, coefficient, column_scale):
    """(rows at the kink, ‖g(θ*)‖, ‖D⁻¹g(θ*)‖): θ* minimises the column-scaled norm ‖D⁻¹g(θ)‖ of the Clarke
    element g(θ) = g + Σ_{k at kink} (θₖ − mₖ)·aₖ·Rₖ over θ ∈ [0, 1] (the stopping test's scaled norm).

    Rows at one kink are often parallel (``parallel_groups``: Rₖ = cₖ·Rᵣ), which makes the problem in θ
    singular and coordinate descent on it crawl (two classes of parallel rows at a small angle: ~1e-4 of the
    optimum's distance left after MAX_SWEEPS sweeps). So it is first solved exactly in one unknown per class,
    the class's share tᵣ = Σₖ θₖaₖcₖ ∈ [lo, hi] (``class_start``), then split back onto its rows'
    θₖ ∈ [0, 1], and cyclic coordinate descent on the rows' θ (each coordinate minimised exactly in its
    interval) polishes what the grouping's tolerance left. Every θ taken is feasible, so every iterate is an
    element of the subdifferential and the norm returned is an honest bound."""
    d = g.shape[0]
    rows = np.empty(count, dtype=np.int64)
    K = 0
    for k in range(count):
        if table[k, T_AT_KINK] != 0.0:
            rows[K] = k
            K += 1
    element = g.copy()
    if K == 0:
        return 0, scaled_norm(element, np.ones(d)), scaled_norm(element, column_scale)
    # v_k = a_k R_k / D; the scaled element is D⁻¹g + Σ (θ_k − m_k) v_k
    V = np.empty((K, d))
    residual = np.empty(d)
    for j in range(d):
        residual[j] = g[j] / column_scale[j]
    for k in range(K):
        slope = table[rows[k], T_SLOPE]
        for j in range(d):
            V[k, j] = slope * R[rows[k], j] / column_scale[j]
    theta = np.empty(K)
    for k in range(K):
        theta[k] = table[rows[k], T_ACTIVE]
    class_start(R, table, rows[:K], group, coefficient, column_scale, residual, theta)
    for _ in range(MAX_SWEEPS):
        largest_change = 0.0
        for k in range(K):
            curvature = 0.0
            slope = 0.0
            for j in range(d):
                curvature += V[k, j] * V[k, j]
                slope += V[k, j] * residual[j]
            if not curvature > 0.0:
                continue
            new = min(1.0, max(0.0, theta[k] - slope / curvature))
            change = new - theta[k]
            if change != 0.0:
                for j in range(d):
                    residual[j] += change * V[k, j]
                theta[k] = new
                largest_change = max(largest_change, abs(change))
        if largest_change <= 1e-15:
            break
    for k in range(K):
        weight = (theta[k] - table[rows[k], T_ACTIVE]) * table[rows[k], T_SLOPE]
        for j in range(d):
            element[j] += weight * R[rows[k], j]
    return K, scaled_norm(element, np.ones(d)), scaled_norm(element, column_scale)


@njit(cache=True)
def class_start(R, table, rows, group, coefficient, column_scale, residual, theta):
    """``least_norm_subgradient``'s start: the rows ``rows`` at the kink grouped by class r (group[k] = r, Rₖ ≈ cₖRᵣ),
    the scaled element minimised over each class's share tᵣ = Σₖ θₖaₖcₖ ∈ [lo, hi] (lo = Σ min(0, aₖcₖ),
    hi = Σ max(0, aₖcₖ)) with the element's part along Rᵣ taken as tᵣRᵣ (``box_least_squares``, from θ's shares),
    then split back: θₖ = α for aₖcₖ > 0 and 1 − α for aₖcₖ < 0 with α = (tᵣ − lo)/(hi − lo), so that Σ θₖaₖcₖ = tᵣ.
    Updates θ (entry k for rows[k]) and the residual D⁻¹g(θ) with the rows themselves (not cₖRᵣ): θ stays
    feasible and the residual exact whatever the grouping's tolerance."""
    K = rows.shape[0]
    d = residual.shape[0]
    at_kink = np.zeros(group.shape[0], dtype=np.bool_)
    at_kink[rows] = True
    classes = held_classes(at_kink, group)
    J = classes.shape[0]
    slot = np.empty(group.shape[0], dtype=np.int64)
    slot[classes] = np.arange(J)
    of_row = np.empty(K, dtype=np.int64)
    for k in range(K):
        of_row[k] = slot[group[rows[k]]]
    low = np.zeros(J)
    high = np.zeros(J)
    share = np.zeros(J)
    for k in range(K):
        weight = table[rows[k], T_SLOPE] * coefficient[rows[k]]
        if weight > 0.0:
            high[of_row[k]] += weight
        else:
            low[of_row[k]] += weight
        share[of_row[k]] += theta[k] * weight
    # In s = t − share (s = 0 feasible): min ½‖residual + Σ sᵣ D⁻¹Rᵣ‖² = ½sᵀGs + hᵀs + const over the shifted box.
    W = np.empty((J, d))
    for c in range(J):
        for j in range(d):
            W[c, j] = R[classes[c], j] / column_scale[j]
    G = np.zeros((J, J))
    h = np.zeros(J)
    for c in range(J):
        for j in range(d):
            h[c] += W[c, j] * residual[j]
        for e in range(c + 1):
            total = 0.0
            for j in range(d):
                total += W[c, j] * W[e, j]
            G[c, e] = total
            G[e, c] = total
    step = np.zeros(J)
    box_least_squares(G, h, low - share, high - share, step)
    for k in range(K):
        c = of_row[k]
        weight = table[rows[k], T_SLOPE] * coefficient[rows[k]]
        if weight == 0.0 or not high[c] > low[c]:
            continue
        alpha = min(1.0, max(0.0, (share[c] + step[c] - low[c]) / (high[c] - low[c])))
        new = alpha if weight > 0.0 else 1.0 - alpha
        change = (new - theta[k]) * table[rows[k], T_SLOPE]
        theta[k] = new
        for j in range(d):
            residual[j] += change * R[rows[k], j] / column_scale[j]


@njit(cache=True)
def box_least_squares(G, h, low, high, s):
    """min ½sᵀGs + hᵀs over low ≤ s ≤ high (G positive semidefinite, s feasible on entry) by the active-set method:
    minimise over the free variables with the others at their bounds (``small_spd_solve``), stepping back to the
    first bound crossed; when none is, free the bound variable whose gradient points most into the box, and stop
    when none does (the KKT point); a singular free block (dependent directions) is solved with a ridge
    (BOX_RIDGE_RTOL). s stays feasible whenever it stops (at the KKT point, at a block singular even so, or after
    MAX_ACTIVE_SET_ROUNDS rounds)."""
    J = s.shape[0]
    free = np.zeros(J, dtype=np.bool_)
    for c in range(J):
        free[c] = low[c] < s[c] < high[c]
    for _ in range(MAX_ACTIVE_SET_ROUNDS):
        F = np.flatnonzero(free)
        if F.shape[0] > 0:
            S = np.empty((F.shape[0], F.shape[0]))
            rhs = np.empty(F.shape[0])
            for a in range(F.shape[0]):
                value = -h[F[a]]
                for c in range(J):
                    if not free[c]:
                        value -= G[F[a], c] * s[c]
                rhs[a] = value
                for e in range(F.shape[0]):
                    S[a, e] = G[F[a], F[e]]
            target = np.empty(F.shape[0])
            if not small_spd_solve(S, rhs, target):
                # Dependent directions (classes whose rows span fewer dimensions than there are classes free):
                # the face's minimisers form a line or more, and a ridge picks one (the objective to O(ridge)).
                top = 0.0
                for a in range(F.shape[0]):
                    top = max(top, S[a, a])
                for a in range(F.shape[0]):
                    S[a, a] += BOX_RIDGE_RTOL * top
                if not small_spd_solve(S, rhs, target):
                    return
            fraction = 1.0
            blocking = -1
            blocking_bound = 0.0
            for a in range(F.shape[0]):
                c = F[a]
                if target[a] < low[c] or target[a] > high[c]:
                    bound = low[c] if target[a] < low[c] else high[c]
                    ratio = max(0.0, (bound - s[c]) / (target[a] - s[c]))
                    if ratio < fraction:
                        fraction, blocking, blocking_bound = ratio, c, bound
            for a in range(F.shape[0]):
                s[F[a]] = min(high[F[a]], max(low[F[a]], s[F[a]] + fraction * (target[a] - s[F[a]])))
            if blocking >= 0:
                s[blocking] = blocking_bound
                free[blocking] = False
                continue
        worst = -1
        violation = 0.0
        for c in range(J):
            if free[c] or not high[c] > low[c]:
                continue
            gradient = h[c]
            for e in range(J):
                gradient += G[c, e] * s[e]
            inward = -gradient if s[c] <= low[c] else gradient
            if inward > violation:
                violation = inward
                worst = c
        if worst < 0:
            return
        free[worst] = True


@njit(cache=True)
def _crosses(R, table, k, p):
    """Whether the step p moves candidate k's uᵢ across the kink (to the other side of 0, or off it)."""
    u = table[k, T_U]
    moved = u
    for j in range(R.shape[1]):
        moved += R[k, j] * p[j]
    return (u > 0.0) != (moved > 0.0)


@njit(cache=True)
def held_rows(R, table, count, p0, member, every_crossing):
    """member[k]: whether candidate k starts in the working set K of ``held_step``: a row at the kink (``kink_table``),
    or a candidate that the plain step p₀ moves across the kink: any (``every_crossing``), or one on its way there
    (T_MOVING: zig-zagging, or held short by the last step); returns |K|.

    Every crossing candidate first, not only the moving ones: near a minimiser on a kink the smooth piece's gradient
    makes p₀ move uᵢ by an amount that does not shrink with uᵢ, so a line search that cuts p₀ short of the kink
    leaves uᵢ on the same side, a little closer (no sign flip, no zig-zag), and the steps creep towards the kink
    without reaching it (a noisy problem with 50 rows at one kink: 22–28 iterations with exact and sketch steps,
    pcg STALLED; holding them, 13–15). Holding the row puts it at the kink in one step; the multiplier test then
    releases it when L falls across the kink. Where that set fails (e.g. its classes pin x: as many independent
    classes as columns), the held step starts again from the moving ones (``held_step``)."""
    size = 0
    for k in range(count):
        crossing = (every_crossing or table[k, T_MOVING] != 0.0) and _crosses(R, table, k, p0)
        member[k] = table[k, T_NONZERO] != 0.0 and (table[k, T_AT_KINK] != 0.0 or crossing)
        size += member[k]
    return size


@njit(cache=True)
def _classes_in(member, group):
    """held[r]: whether the class of parallel rows that candidate r stands for (``parallel_groups``) has a row in
    the working set ``member``."""
    held = np.zeros(member.shape[0], dtype=np.bool_)
    for k in range(member.shape[0]):
        if member[k]:
            held[group[k]] = True
    return held


@njit(cache=True)
def held_classes(member, group):
    """The candidates that stand for a class with a row in the working set ``member``, ascending: the constraints
    of the held step."""
    return np.flatnonzero(_classes_in(member, group))


@njit(cache=True)
def hold_classes(member, group):
    """member[k] = whether candidate k's class has a row in ``member``: every row that a held step puts at the kink."""
    held = _classes_in(member, group)
    for k in range(member.shape[0]):
        member[k] = held[group[k]]


@njit(cache=True)
def held_step(R, W, table, group, coefficient, member, p0, g, p):
    """``held_step_from`` the working set ``member`` (``held_rows`` with every crossing candidate); where that
    fails, again from ``held_rows``' smaller set (the rows at the kink and the moving ones) when it differs.
    Writes p and ``member``; returns the number of constraints, or 0 (the plain step stays)."""
    first = member.copy()
    held = held_step_from(R, W, table, group, coefficient, member, p0, g, p)
    if held or not moving_rows_instead(R, table, p0, first, member):
        return held
    return held_step_from(R, W, table, group, coefficient, member, p0, g, p)


@njit(cache=True)
def moving_rows_instead(R, table, p0, first, member):
    """The fallback working set of a held step that failed from ``first`` (``held_rows`` with every crossing
    candidate): member = ``held_rows``' smaller set (the rows at the kink and the moving ones); returns whether it
    is worth a second try (non-empty and not ``first``)."""
    return held_rows(R, table, member.shape[0], p0, member, False) > 0 and not np.array_equal(member, first)


@njit(cache=True)
def held_step_from(R, W, table, group, coefficient, member, p0, g, p):
    """The step of the model above with the rows of ``member`` (from ``held_rows``) held at the kink, one
    constraint per class of parallel rows (``held_classes``): W[:, r] = M⁻¹R[r] for every class's row r (the
    caller's solves with M's factor; other columns are not read), p₀ = −M⁻¹g. The working set is then updated as
    the primal-dual active set method does: classes whose multiplier leaves [lo, hi] leave it, candidate rows off
    the kink that the held step moves across it join it, and the bordered system is solved again (at most
    MAX_UPDATES times). Writes p and ``member`` (every row of the classes held); returns the number of
    constraints, or 0 when the plain step stays (none, over MAX_KINK_ROWS or not settled, the classes' rows
    dependent, or the held step not a descent direction)."""
    count = member.shape[0]
    d = p0.shape[0]
    left = np.zeros(count, dtype=np.bool_)
    for _ in range(MAX_UPDATES + 1):
        rows = held_classes(member, group)
        K = rows.shape[0]
        if K == 0 or K > MAX_KINK_ROWS:
            return 0
        S = np.empty((K, K))
        rhs = np.empty(K)
        for a in range(K):
            ra = rows[a]
            value = table[ra, T_U]
            for j in range(d):
                value += R[ra, j] * p0[j]
            rhs[a] = value
            for b in range(K):
                total = 0.0
                for j in range(d):
                    total += R[ra, j] * W[j, rows[b]]
                S[a, b] = total
        nu = np.empty(K)
        if not small_spd_solve(S, rhs, nu):
            return 0
        for j in range(d):
            value = p0[j]
            for a in range(K):
                value -= W[j, rows[a]] * nu[a]
            p[j] = value
        changed = update_working_set(R, table, group, coefficient, rows, nu, p, member, left)
        if changed:
            continue
        descent = 0.0
        for j in range(d):
            descent += g[j] * p[j]
        if not np.isfinite(descent) or not descent < 0.0:
            return 0
        hold_classes(member, group)
        return K
    return 0


@njit(cache=True)
def update_working_set(R, table, group, coefficient, rows, nu, p, member, left):
    """The primal-dual active set update after the held step p with the classes ``rows`` held (their multipliers ν,
    Mp + g + C_Kᵀν = 0): a class whose share Σₖ cₖmₖaₖ + ν leaves [lo, hi] (module docstring; a single row: λᵢ =
    mᵢaᵢ + νᵢ leaves [0, aᵢ]) leaves K (its rows marked in ``left``), a candidate off the kink and off the classes
    held that p moves across it joins K; returns whether K changed."""
    changed = False
    count = member.shape[0]
    held = np.zeros(count, dtype=np.bool_)
    for a in range(rows.shape[0]):
        r = rows[a]
        held[r] = True
        share = 0.0
        low = 0.0
        high = 0.0
        for k in range(count):
            if group[k] == r:
                slope = coefficient[k] * table[k, T_SLOPE]
                share += table[k, T_ACTIVE] * slope
                if coefficient[k] > 0.0:
                    high += slope
                else:
                    low += slope
        share += nu[a]
        if not (low <= share <= high):
            for k in range(count):
                if group[k] == r:
                    member[k] = False
                    left[k] = True
            changed = True
    for k in range(count):
        # A row at the kink (or one that left K in this step) is decided by its multiplier alone: its uᵢ is
        # 0 to rounding, whose sign says nothing, and re-entering would cycle; so is a row of a class held (p
        # puts it at 0 with the class).
        if (not member[k] and not left[k] and table[k, T_NONZERO] != 0.0 and table[k, T_AT_KINK] == 0.0
                and not held[group[k]] and _crosses(R, table, k, p)):
            member[k] = True
            changed = True
    return changed


@njit(cache=True)
def small_spd_solve(S, rhs, out):
    """out = S⁻¹rhs for a small symmetric S (its lower triangle) by Cholesky; False when a pivot is below
    PIVOT_RTOL × the largest diagonal entry (the rows held are dependent) or not finite."""
    K = S.shape[0]
    top = 0.0
    for a in range(K):
        top = max(top, S[a, a])
    if not top > 0.0 or not np.isfinite(top):
        return False
    L = np.zeros((K, K))
    for j in range(K):
        pivot = S[j, j]
        for k in range(j):
            pivot -= L[j, k] * L[j, k]
        if not pivot > PIVOT_RTOL * top:
            return False
        L[j, j] = math.sqrt(pivot)
        for i in range(j + 1, K):
            value = S[i, j]
            for k in range(j):
                value -= L[i, k] * L[j, k]
            L[i, j] = value / L[j, j]
    for i in range(K):
        value = rhs[i]
        for k in range(i):
            value -= L[i, k] * out[k]
        out[i] = value / L[i, i]
    for i in range(K - 1, -1, -1):
        value = out[i]
        for k in range(i + 1, K):
            value -= L[k, i] * out[k]
        out[i] = value / L[i, i]
    return True


@njit(cache=True)
def held_gain_ratio(g, H, s, actual, noise):
    """The gain ratio (``kernels.damping.predicted_ratio``) of a held step s: actual / (−gᵀs − ½ sᵀHs), the
    undamped model's decrease (the plain step's identity sᵀHs = −gᵀs − μ‖Ds‖² does not hold for it)."""
    d = s.shape[0]
    linear = 0.0
    curvature = 0.0
    for j in range(d):
        linear += g[j] * s[j]
        row = 0.0
        for l in range(d):
            row += H[j, l] * s[l]
        curvature += s[j] * row
    return predicted_ratio(actual, -(linear + 0.5 * curvature), noise)
