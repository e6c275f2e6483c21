"""The fixed-order reduction shared by every chunked transposed pass."""
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
