"""Row-block kernels of the softmax models (``softmax``, ``relu_softmax``, ``softmax_relu``), shared by one machine and Dask alike.

A block sees only its rows, so the softmax normaliser is split in two: ``log_partition_parts``
returns the block's (max z, Σ exp(z − max z)) and keeps e = exp(z − max z); the driver combines
the blocks' parts into the global log-partition and hands back the factor that turns e into
s = softmax(z) (one machine is the one-block case: the factor is 1/Σ exp(z − max z)).
The c-terms need global sums, so the columns written here omit them; the driver adds them
linearly (Cᵀq = Cᵀq_a − c·Cᵀs, β = v − c·s + w). Length-n sums use fixed chunks of
``chunk_rows`` whose partials are summed in chunk order (bitwise independent of the thread
count); the maximum is exact in any order.
"""
import numpy as np
from numba import njit, prange

from .exp import simd_exp
from .reduce import _add_scaled_chunk, lanes_sum


@njit(cache=True)
def target_summary(b):
    """(max b, min b, the least positive entry of b or inf when none is positive, ‖b‖² = Σ bᵢ²) in one read of b:
    the softmax models' facts of a target (``Softmax.facts``; many at once, ``plain_target_facts``). Serial: a
    maximum or minimum is exact in any order, and Σ bᵢ² goes in a fixed order, lane j summing b[j + 8t]² over t,
    then the lanes pairwise and the tail (``lanes_sum``'s order), so the thread count changes no bit. ‖b‖² of a
    target near the largest floats is inf (the scale the rounding tests then use). Before, ‖b‖² was NumPy's dot
    (BLAS), one call per target: ~1 µs each, most of a thousand small targets' facts."""
    top = -np.inf
    bottom = np.inf
    least_positive = np.inf
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n = b.shape[0]
    full = n - n % 8
    for i in range(0, full, 8):
        s0 += b[i] * b[i]
        s1 += b[i + 1] * b[i + 1]
        s2 += b[i + 2] * b[i + 2]
        s3 += b[i + 3] * b[i + 3]
        s4 += b[i + 4] * b[i + 4]
        s5 += b[i + 5] * b[i + 5]
        s6 += b[i + 6] * b[i + 6]
        s7 += b[i + 7] * b[i + 7]
        for k in range(i, i + 8):
            top, bottom, least_positive = _extremes_with(b[k], top, bottom, least_positive)
    squares = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for k in range(full, n):
        squares += b[k] * b[k]
        top, bottom, least_positive = _extremes_with(b[k], top, bottom, least_positive)
    return top, bottom, least_positive, squares


@njit(cache=True, inline="always")
def _extremes_with(value, top, bottom, least_positive):
    """``target_summary``'s extremes after one more entry."""
    if value > 0.0:
        least_positive = min(least_positive, value)
    return max(top, value), min(bottom, value), least_positive


@njit(cache=True)
def least_entry_at_or_above(b, threshold):
    """The least entry of b that is ≥ threshold (inf when none is), in one read of b (serial: exact in any order)."""
    least = np.inf
    for i in range(b.shape[0]):
        value = b[i]
        if value >= threshold:
            least = min(least, value)
    return least


@njit(cache=True)
def softmax_gradient_rounding(n, max_abs_b, rounding):
    """R such that the rounding error of the computed ∇L(0) of softmax regression (``softmax``'s, and
    ``relu_softmax``'s reference gradient) is at most R·D_j in entry j, D_j = ‖C_j‖
    (``reduce.gradient_rounding_bounds`` turns R into bounds on the plain and the column-scaled norm).

    At u = 0 every row has s = 1/n and ∇L(0) = Cᵀq, q = s ⊙ r − c·s, r = s − b, c = ⟨s, r⟩ (the ridge term
    w ⊙ u is 0). With B = max|b|: |rᵢ| ≤ 1/n + B, |c| ≤ 1/n + B, |qᵢ| ≤ (2/n)(1/n + B). Taking ``rounding``
    as the relative error of one chain of operations (newton.py's ROUNDING_FACTOR, ~100·eps, which also covers
    the length-n sums): rᵢ errs by ≤ rounding·(s + |bᵢ|), c by ≤ rounding·Σ s|r|, so qᵢ by
    ≤ rounding·s·(s + |bᵢ| + |rᵢ| + |c| + Σ s|r|) ≤ rounding·(4/n)(1/n + B); the pass Cᵀq adds
    ≤ rounding·|C_j|ᵀ|q| to entry j. With |C_j|ᵀ|v| ≤ D_j‖v‖ and ‖v‖ ≤ √n·max|vᵢ|:
    |δ∇L(0)_j| ≤ D_j · rounding · (6/√n)(1/n + B) = D_j · R."""
    return rounding * 6.0 * (1.0 / n + max_abs_b) / np.sqrt(n)


@njit(cache=True)
def softmax_relu_gradient_rounding(n, m, max_abs_V, max_abs_b, rounding):
    """R such that the rounding error of the computed ∇L(0) of ``softmax_relu`` is at most R·D_j in entry j
    (as ``softmax_gradient_rounding``; ``max_abs_b`` bounds |b_j| + |o_j| with the output offsets o).

    At u = 0, s = 1/n, y = Vᵀs, r_j = ReLU(y_j + o_j) − (b_j + o_j), ρ = V(a ⊙ r), c = ⟨s, ρ⟩ and ∇L(0) = Cᵀq,
    q = s ⊙ ρ − c·s. With V∞ = max|V|, B = ``max_abs_b``, ε = ``rounding``: |y_j| ≤ V∞ (error ≤ ε V∞),
    |r_j| ≤ V∞ + B (error ≤ ε(2V∞ + B)), |ρᵢ| ≤ m V∞(V∞ + B) (error ≤ ε m V∞(3V∞ + 2B)), c likewise (error
    ≤ ε m V∞(4V∞ + 3B)), so |qᵢ| ≤ (2/n) m V∞(V∞ + B) and its error ≤ (ε/n) m V∞(9V∞ + 7B); the pass adds
    ≤ ε|C_j|ᵀ|q| ≤ ε D_j (2/√n) m V∞(V∞ + B). In all |δ∇L(0)_j| ≤ D_j · ε m V∞ (11V∞ + 9B)/√n = D_j · R."""
    return rounding * m * max_abs_V * (11.0 * max_abs_V + 9.0 * max_abs_b) / np.sqrt(n)


@njit(cache=True)
def chunk_max_z(chunk_u, relu):
    """max z over a chunk's u (a view), z = ReLU(u) if ``relu`` else u (−inf for no rows)."""
    top = -np.inf
    for i in range(chunk_u.shape[0]):
        z = chunk_u[i] if (not relu or chunk_u[i] > 0.0) else 0.0
        if z > top:
            top = z
    return top


@njit(cache=True)
def chunk_exp_sum(chunk_u, relu, zmax, chunk_e):
    """chunk_e = exp(z − zmax) over a chunk's u (views); returns Σ chunk_e in ``lanes_sum``'s fixed order.

    Views indexed from 0, which Numba knows are not negative: with ``range(start, stop)`` each
    index got a wraparound select and the loop ran scalar, 3× slower. The loop holds no reduction,
    so ``simd_exp`` runs in SIMD lanes; the sum then reads e still in cache.
    """
    for i in range(chunk_u.shape[0]):
        z = chunk_u[i] if (not relu or chunk_u[i] > 0.0) else 0.0
        chunk_e[i] = simd_exp(z - zmax)
    return lanes_sum(chunk_e)


@njit(parallel=True, cache=True)
def log_partition_parts(u, relu, chunk_rows, e):
    """e = exp(z − max z) with z = ReLU(u) if ``relu`` else u; returns (max z, Σ_i e_i) over the block.

    Chunk by chunk (``chunk_max_z``, then ``exp_sum_parts``: ``simd_exp`` in SIMD lanes, each
    chunk's sum in ``lanes_sum``'s fixed order), the chunk sums added in chunk order.
    """
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part_max = np.full(n_chunks, -np.inf)
    for ch in prange(n_chunks):
        part_max[ch] = chunk_max_z(u[ch * chunk_rows:min(n, (ch + 1) * chunk_rows)], relu)
    zmax = _max_in_chunk_order(part_max)
    return zmax, exp_sum_parts(u, relu, zmax, chunk_rows, e)


@njit(cache=True)
def _max_in_chunk_order(part_max):
    """The largest chunk maximum, the chunks compared in order (the first of equal ones kept)."""
    zmax = -np.inf
    for ch in range(part_max.shape[0]):
        if part_max[ch] > zmax:
            zmax = part_max[ch]
    return zmax


@njit(parallel=True, cache=True)
def exp_sum_parts(u, relu, zmax, chunk_rows, e):
    """e = exp(z − zmax), z = ReLU(u) if ``relu`` else u, for a known max z (``log_partition_parts``' second
    half); returns Σ_i e_i, each chunk's sum in ``lanes_sum``'s order, the chunk sums added in chunk order."""
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros(n_chunks)
    for ch in prange(n_chunks):
        start = ch * chunk_rows
        stop = min(n, start + chunk_rows)
        part[ch] = chunk_exp_sum(u[start:stop], relu, zmax, e[start:stop])
    total = 0.0
    for ch in range(n_chunks):
        total += part[ch]
    return total


@njit(parallel=True, cache=True)
def line_point(u0, factor, Cp, chunk_rows, u):
    """u = u0 + factor·Cp (``add_scaled``'s bits: the product, then the sum) and returns max u, the value
    ``log_partition_parts`` finds for z = u (NaN entries ignored), in one parallel region: a line-search
    trial's u and its log-partition's first half, each chunk's maximum read while the chunk is in cache.
    The trial's log-partition then needs only ``exp_sum_parts``: one parallel region and one read of u
    less per trial (each region wakes the sleeping OpenMP worker, 25–60 µs here)."""
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part_max = np.full(n_chunks, -np.inf)
    for ch in prange(n_chunks):
        start = ch * chunk_rows
        stop = min(n, start + chunk_rows)
        _add_scaled_chunk(u0[start:stop], factor, Cp[start:stop], u[start:stop])
        # np.bool_: a bool, as chunk_max_z's other callers pass, not a literal False (a second specialisation)
        part_max[ch] = chunk_max_z(u[start:stop], np.bool_(False))
    return _max_in_chunk_order(part_max)


@njit(cache=True)
def log_partition_serial(u, relu, chunk_rows, e):
    """``log_partition_parts`` on one thread (for callers that are themselves one task of a parallel
    loop): the same chunks, maximum and sums in the same order, so the same bits."""
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    zmax = -np.inf
    for ch in range(n_chunks):
        top = chunk_max_z(u[ch * chunk_rows:min(n, (ch + 1) * chunk_rows)], relu)
        if top > zmax:
            zmax = top
    total = 0.0
    for ch in range(n_chunks):
        start = ch * chunk_rows
        stop = min(n, start + chunk_rows)
        total += chunk_exp_sum(u[start:stop], relu, zmax, e[start:stop])
    return zmax, total


@njit(cache=True)
def chunk_regression_columns(u, e, scale, b, w, relu, start, stop, Q):
    """Rows [start, stop) of ``softmax_regression_columns``: writes their Q rows and returns their
    (Σ s·r, Σ (3s − 2b)·s, Σ r² + w u²), summed in row order. An empty w (no row weights:
    ``fastnewton.models.base.kernel_row_weights``) leaves the w terms out: the bits of an all-zero w
    (Q[i, 0] up to the sign of a zero), without reading w or, for softmax, u."""
    weighted = w.shape[0] != 0
    c_acc = 0.0
    g_acc = 0.0
    l_acc = 0.0
    for i in range(start, stop):
        si = scale * e[i]
        r = si - b[i]
        c_acc += si * r
        g_acc += (3.0 * si - 2.0 * b[i]) * si
        if weighted:
            wu = w[i] * u[i]
            l_acc += r * r + wu * u[i]
        else:
            wu = 0.0
            l_acc += r * r
        if (not relu) or u[i] > 0.0:
            Q[i, 0] = si * r + wu
            Q[i, 1] = si
            Q[i, 2] = si * (2.0 * si - b[i])
        else:
            Q[i, 0] = wu
            Q[i, 1] = 0.0
            Q[i, 2] = 0.0
    return c_acc, g_acc, l_acc


@njit(parallel=True, cache=True)
def softmax_regression_columns(u, e, scale, b, w, relu, chunk_rows, Q):
    """Columns of the transposed pass for ``softmax`` (relu=False) and ``relu_softmax`` (relu=True).

    m = 1[u > 0] (or 1), s = scale·e, r = s − b, v = s ⊙ (2s − b).
    Writes Q = [m ⊙ s ⊙ r + w ⊙ u, m ⊙ s, m ⊙ v] (n × 3, row-major) and returns the block's
    (Σ s·r, Σ (3s − 2b)·s, Σ r² + w u²): partials of c, γ and twice the loss.
    """
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros((n_chunks, 3))
    for ch in prange(n_chunks):
        c_acc, g_acc, l_acc = chunk_regression_columns(u, e, scale, b, w, relu, ch * chunk_rows,
                                                       min(n, (ch + 1) * chunk_rows), Q)
        part[ch, 0] = c_acc
        part[ch, 1] = g_acc
        part[ch, 2] = l_acc
    c = 0.0
    gamma = 0.0
    loss2 = 0.0
    for ch in range(n_chunks):
        c += part[ch, 0]
        gamma += part[ch, 1]
        loss2 += part[ch, 2]
    return c, gamma, loss2


@njit(cache=True)
def softmax_regression_columns_serial(u, e, scale, b, w, relu, chunk_rows, Q):
    """``softmax_regression_columns`` on one thread: the same chunks summed in the same order (same bits)."""
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    c = 0.0
    gamma = 0.0
    loss2 = 0.0
    for ch in range(n_chunks):
        c_acc, g_acc, l_acc = chunk_regression_columns(u, e, scale, b, w, relu, ch * chunk_rows,
                                                       min(n, (ch + 1) * chunk_rows), Q)
        c += c_acc
        gamma += g_acc
        loss2 += l_acc
    return c, gamma, loss2


@njit(cache=True)
def chunk_regression_loss(u, e, scale, b, w, start, stop):
    """Σ (s_i − b_i)² + w_i u_i² over rows [start, stop), in row order, s = scale·e (an empty w: Σ (s_i − b_i)²,
    the bits of an all-zero w, without reading w or u)."""
    acc = 0.0
    if w.shape[0] == 0:
        for i in range(start, stop):
            r = scale * e[i] - b[i]
            acc += r * r
        return acc
    for i in range(start, stop):
        r = scale * e[i] - b[i]
        acc += r * r + w[i] * u[i] * u[i]
    return acc


@njit(parallel=True, cache=True)
def softmax_regression_loss(u, e, scale, b, w, chunk_rows):
    """Σ_i (s_i − b_i)² + w_i u_i² over the block (twice its share of the loss), s = scale·e."""
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros(n_chunks)
    for ch in prange(n_chunks):
        part[ch] = chunk_regression_loss(u, e, scale, b, w, ch * chunk_rows, min(n, (ch + 1) * chunk_rows))
    total = 0.0
    for ch in range(n_chunks):
        total += part[ch]
    return total


@njit(cache=True)
def softmax_regression_loss_serial(u, e, scale, b, w, chunk_rows):
    """``softmax_regression_loss`` on one thread: the same chunks summed in the same order (same bits)."""
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    total = 0.0
    for ch in range(n_chunks):
        total += chunk_regression_loss(u, e, scale, b, w, ch * chunk_rows, min(n, (ch + 1) * chunk_rows))
    return total


@njit(parallel=True, cache=True)
def softmax_relu_columns(u, s, rho, V, y, w, Q):
    """Columns of the transposed pass for ``softmax_relu``, given s = softmax(u), y = Vᵀs, ρ = V(a ⊙ r).

    Q = [s ⊙ ρ + w ⊙ u, s, s ⊙ ρ, J V] (n × (m + 3), row-major) with (J V)_ij = s_i·(V_ij − y_j) = ∂y_j/∂u_i
    for every output j (the model's S weighs them by a = 1[y + o > 0]; J·1 = 0 makes J V_j offset-free).
    """
    for i in prange(V.shape[0]):
        softmax_relu_columns_row(u, s, rho, V, y, w, Q, i)


@njit(inline="always")
def softmax_relu_columns_row(u, s, rho, V, y, w, Q, i):
    """Row i of ``softmax_relu_columns``' Q; returns s_i·ρ_i (its term of c = ⟨s, ρ⟩)."""
    si = s[i]
    sr = si * rho[i]
    Q[i, 0] = sr + w[i] * u[i]
    Q[i, 1] = si
    Q[i, 2] = sr
    for j in range(V.shape[1]):
        Q[i, 3 + j] = si * (V[i, j] - y[j])
    return sr


@njit(parallel=True, cache=True)
def curvature_weights(Q, c, w, beta):
    """β = Q[:, 2] − c·Q[:, 1] + w: the diagonal Hessian weights, once the global c is known."""
    for i in prange(Q.shape[0]):
        # a prange index may be unsigned: int64 as every caller passes it (one specialisation to compile)
        beta[i] = curvature_weight(Q, c, w, np.int64(i))


@njit(cache=True)
def curvature_weights_serial(Q, c, w, beta):
    """``curvature_weights`` on the calling thread (the same values: each βᵢ is its own row's), for the compiled
    loops of ``solve_many``, which run inside a task of a parallel loop."""
    for i in range(Q.shape[0]):
        beta[i] = curvature_weight(Q, c, w, i)


@njit(cache=True)
def curvature_weight(Q, c, w, i):
    """β_i = Q[i, 2] − c·Q[i, 1] + w_i (one row of ``curvature_weights``); an empty w adds +0.0 for w_i,
    the bits of an all-zero w, without reading it."""
    return Q[i, 2] - c * Q[i, 1] + (w[i] if w.shape[0] != 0 else 0.0)



@njit(cache=True)
def log_fit_rows_serial(p, squared, weights, target):
    """The rows of the log-linear fit of log p on one thread: weights[i] = pᵢ (pᵢ² when ``squared``) and
    target[i] = log pᵢ where pᵢ > 0, else 0 and 0 (the row dropped; log 1 = 0 exactly). For small blocks,
    where waking the threads costs more than the pass; ``log_fit_rows`` runs it chunk by chunk on all threads
    (the values do not depend on the chunks)."""
    for i in range(p.shape[0]):
        value = p[i]
        if value > 0.0:
            weights[i] = value * value if squared else value
            target[i] = np.log(value)
        else:
            weights[i] = 0.0
            target[i] = 0.0


@njit(parallel=True, cache=True)
def log_fit_rows(p, squared, chunk_rows, weights, target):
    """``log_fit_rows_serial`` in one pass in fixed chunks on all threads: NumPy's np.where, square and log ran
    one after another on one thread (n = 2·10⁵: ~2 ms, the log ~1.4). ``np.log`` here is the C library's log,
    as in kernels/small_newton.py's fit (NumPy's own float64 log is that one on a CPU without AVX-512; with
    AVX-512 it is a SIMD log of NumPy's whose last bit can differ), so every size of problem takes the same
    logarithm."""
    n = p.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    for ch in prange(n_chunks):
        start, stop = ch * chunk_rows, min(n, (ch + 1) * chunk_rows)
        log_fit_rows_serial(p[start:stop], squared, weights[start:stop], target[start:stop])
