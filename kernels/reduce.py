"""Fixed-order reductions: the chunk partials of the transposed pass, and dot products."""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def sum_chunk_partials(partial, out):
    """out[j, t] = Σ_c partial[c, j·k + t] in chunk order c = 0, 1, … (deterministic in the thread count).

    ``partial`` is n_chunks × (d·k), each row a row-major d × k partial result.
    """
    d, k = out.shape
    n_chunks = partial.shape[0]
    for j in prange(d):
        for t in range(k):
            total = 0.0
            for c in range(n_chunks):
                total += partial[c, j * k + t]
            out[j, t] = total


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
