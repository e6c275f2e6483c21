"""Fixed-order reductions: the chunk partials of the transposed pass, and dot products."""
import numpy as np
from numba import njit, prange


# ``sum_chunk_partials`` adds up to this many partial entries on the calling thread: a parallel region
# wakes the sleeping OpenMP worker (OMP_WAIT_POLICY=PASSIVE, fastnewton/__init__.py), 25–60 µs on this
# 2-core VM, while 2¹⁵ adds take ~15 µs on one thread (a CSR transposed pass at d = 100, k = 3 over 49
# chunks adds 1.5·10⁴: its second region cost more than its work).
SERIAL_PARTIAL_ENTRIES = 2**15


@njit(cache=True)
def overflow_free_scale(count):
    """4⁻ᵏ for the least k ≥ 1 with 4ᵏ ≥ 4·count: a sum of ``count`` finite terms, each times this scale, stays
    below a quarter of the largest float (so do its partial sums), and a power of 4 scales every term exactly
    (its square root, a power of 2, too: rows scaled by √ω for a SYRK), so what is solved from the scaled sums
    is what the unscaled ones would give had they not overflowed."""
    scale = 0.25
    reach = 4.0
    while reach < 4.0 * count:
        scale *= 0.25
        reach *= 4.0
    return scale


@njit(parallel=True, cache=True)
def sum_chunk_partials(partial, out):
    """out[j, t] = Σ_c partial[c, j·w + t] in chunk order c = 0, 1, … (deterministic in the thread count).

    ``partial`` is n_chunks × (d·w), each row a row-major d × w partial result with w ≥ k
    (w = partial.shape[1] / d; columns t ≥ k are padding and are not read). Up to
    SERIAL_PARTIAL_ENTRIES entries on the calling thread (``sum_chunk_partials_serial``: the same sums
    in the same order, so the same bits), more over the threads by j.
    """
    d, k = out.shape
    n_chunks = partial.shape[0]
    if n_chunks * d * k <= SERIAL_PARTIAL_ENTRIES:
        sum_chunk_partials_serial(partial, out)
        return
    for j in prange(d):
        _sum_partials_of_row(partial, j, out)


@njit(cache=True)
def sum_chunk_partials_serial(partial, out):
    """``sum_chunk_partials`` on the calling thread: each out[j, t] summed over c = 0, 1, … in order."""
    for j in range(out.shape[0]):
        _sum_partials_of_row(partial, j, out)


@njit(cache=True, inline="always")
def _sum_partials_of_row(partial, j, out):
    """out[j, t] = Σ_c partial[c, j·w + t] over c = 0, 1, … in order, for every t < k."""
    d, k = out.shape
    width = partial.shape[1] // d
    for t in range(k):
        total = 0.0
        for c in range(partial.shape[0]):
            total += partial[c, j * width + t]
        out[j, t] = total


# A sum of squares below SQUARES_LOW has lost bits to underflow (squares below 2.2e-308 are subnormal, below
# 4.9e-324 zero), one above SQUARES_HIGH may have overflowed: norms and the ridge term then sum (a / max|a|)²
# instead (``rescaled_norm``; ``fastnewton.reductions``, ``kernels.small_newton``).
SQUARES_LOW, SQUARES_HIGH = 1e-290, 1e290


@njit(cache=True)
def scaled_norm(g, scale):
    """‖g / scale‖, summed in index order (the column-scaled norm of the stopping tests); where that sum has
    underflowed (below SQUARES_LOW), ``rescaled_norm`` instead: a non-zero g never has a zero norm. (An overflow
    stays inf: the stopping test then reports the scale as too large for float64.)"""
    total = 0.0
    for j in range(g.shape[0]):
        value = g[j] / scale[j]
        total += value * value
    if total >= SQUARES_LOW or not total == total:
        return np.sqrt(total)
    return rescaled_norm(g, scale)


@njit(cache=True)
def rescaled_norm(g, scale):
    """‖g / scale‖ as m·‖(g / scale) / m‖, m = max_j |g_j / scale_j|: no square underflows or overflows
    (0 for g = 0; inf or NaN where an entry is)."""
    largest = 0.0
    for j in range(g.shape[0]):
        value = abs(g[j] / scale[j])
        if not value == value:
            return np.nan
        if value > largest:
            largest = value
    if largest == 0.0 or np.isinf(largest):
        return largest
    total = 0.0
    for j in range(g.shape[0]):
        value = (g[j] / scale[j]) / largest
        total += value * value
    return largest * np.sqrt(total)


@njit(cache=True)
def gradient_rounding_bounds(R, column_scale):
    """(R·‖D‖, R·√d): for a gradient whose entry j errs by at most R·D_j (D = ``column_scale``), the bound on
    the error of its norm and of its column-scaled norm ‖g / D‖ (the two norms of the stopping test)."""
    total = 0.0
    for j in range(column_scale.shape[0]):
        total += column_scale[j] * column_scale[j]
    return R * np.sqrt(total), R * np.sqrt(float(column_scale.shape[0]))


# Independent accumulators of ``lanes_sum``.
LANES = 8


@njit(cache=True)
def lanes_sum(a):
    """Σ a in a fixed order: lane j sums a[j + 8t] over t, then the lanes pairwise, then the tail
    (eight independent adds in flight instead of one chain of ~4-cycle adds)."""
    n = a.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    i = 0
    while i + LANES <= n:
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
        i += LANES
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(i, n):
        total += a[j]
    return total


@njit(parallel=True, cache=True)
def chunked_dot(a, b, chunk_rows):
    """Σ_i a_i·b_i, summed over fixed chunks of ``chunk_rows`` in chunk order."""
    n = a.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros(n_chunks)
    for ch in prange(n_chunks):
        acc = 0.0
        for i in range(ch * chunk_rows, min(n, (ch + 1) * chunk_rows)):
            acc += a[i] * b[i]
        part[ch] = acc
    total = 0.0
    for ch in range(n_chunks):
        total += part[ch]
    return total


@njit(parallel=True, cache=True)
def add_scaled(a, factor, b, chunk_rows, out):
    """out = a + factor·b elementwise, in fixed chunks of ``chunk_rows`` on all threads.

    Each entry is rounded twice, the product and then the sum (no fused multiply-add), so the
    bits are NumPy's ``np.add(a, np.multiply(b, factor))`` whatever the thread count; one pass
    instead of NumPy's two (which also run on one thread).
    """
    n = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    for ch in prange(n_chunks):
        start = ch * chunk_rows
        stop = min(n, start + chunk_rows)
        _add_scaled_chunk(a[start:stop], factor, b[start:stop], out[start:stop])


@njit(parallel=True, cache=True)
def scale_into(factor, b, chunk_rows, out):
    """out = factor·b elementwise (one rounding each: NumPy's ``factor * b`` bits) in fixed chunks on all
    threads: NumPy's product runs on one (CG's first α·C·d, CSR 2·10⁵: a length-n array per lagged step)."""
    n = out.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    for ch in prange(n_chunks):
        start = ch * chunk_rows
        stop = min(n, start + chunk_rows)
        _scale_chunk(factor, b[start:stop], out[start:stop])


@njit(cache=True)
def _scale_chunk(factor, b, out):
    """out = factor·b on views indexed from 0 (SIMD lanes, as ``_add_scaled_chunk``)."""
    for i in range(out.shape[0]):
        out[i] = b[i] * factor


@njit(cache=True)
def _add_scaled_chunk(a, factor, b, out):
    """out = a + factor·b on views indexed from 0 (which Numba knows are not negative: the loop
    then runs in SIMD lanes, where ``range(start, stop)`` over the whole arrays ran scalar)."""
    for i in range(out.shape[0]):
        out[i] = a[i] + b[i] * factor


@njit(parallel=True, cache=True)
def copy_columns(block, first, chunk_rows, out):
    """out[i, first + j] = block[i, j] for every row i and column j of ``block`` (n × k, any strides): a copy,
    row by row in fixed chunks on all threads (``fastnewton.matrix.side_by_side``: NumPy's strided column
    copies ran ~3 ns per entry, n = 2·10⁵ × 4 columns ~1.6 ms)."""
    n, k = block.shape
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    for ch in prange(n_chunks):
        for i in range(ch * chunk_rows, min(n, (ch + 1) * chunk_rows)):
            for j in range(k):
                out[i, first + j] = block[i, j]
