"""Model vectors of one row block of C, for the row-partitioned (Dask) solver.

A block sees only its rows, so the softmax normaliser comes from outside: round 1
returns the block's (max z, Σ exp(z − max z)); the driver combines them into the
global log-partition lse = log Σ_all exp(z); round 2 uses s_i = exp(z_i − lse).
The c-terms of SPEC §2 need global sums too, so the block's q omits them and the
driver adds them linearly: Cᵀq = Cᵀ(m ⊙ s ⊙ r + w ⊙ u) − c·Cᵀ(m ⊙ s).
Sums use fixed chunks summed in chunk order (bitwise independent of the thread count).
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def block_softmax_parts(u, relu, chunk_rows):
    """(max z, Σ_i exp(z_i − max z)) over the block, z = ReLU(u) if ``relu`` else u."""
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part_max = np.full(n_chunks, -np.inf)
    for c in prange(n_chunks):
        m = -np.inf
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            z = u[i] if (not relu or u[i] > 0.0) else 0.0
            if z > m:
                m = z
        part_max[c] = m
    zmax = part_max.max()
    part = np.zeros(n_chunks)
    for c in prange(n_chunks):
        acc = 0.0
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            z = u[i] if (not relu or u[i] > 0.0) else 0.0
            acc += np.exp(z - zmax)
        part[c] = acc
    total = 0.0
    for c in range(n_chunks):
        total += part[c]
    return zmax, total


@njit(parallel=True, cache=True)
def block_softmax_regression(u, b, w, relu, lse, chunk_rows, Q):
    """Round 2 of ``softmax``/``relu_softmax`` on a block, given the global lse.

    m = 1[u > 0] (or 1), s = exp(m ⊙ u − lse), r = s − b, v = s ⊙ (2s − b).
    Writes Q = [m ⊙ s ⊙ r + w ⊙ u, m ⊙ s, m ⊙ v] (n × 3) and returns the block's
    (Σ s·r, Σ (3s − 2b)·s, Σ r² + w u²): partials of c, γ and 2·loss.
    """
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros((n_chunks, 3))
    for ch in prange(n_chunks):
        c_acc = 0.0
        g_acc = 0.0
        l_acc = 0.0
        for i in range(ch * chunk_rows, min(n, (ch + 1) * chunk_rows)):
            active = (not relu) or u[i] > 0.0
            si = np.exp((u[i] if active else 0.0) - lse)
            r = si - b[i]
            c_acc += si * r
            g_acc += (3.0 * si - 2.0 * b[i]) * si
            l_acc += r * r + w[i] * u[i] * u[i]
            if active:
                Q[i, 0] = si * r + w[i] * u[i]
                Q[i, 1] = si
                Q[i, 2] = si * (2.0 * si - b[i])
            else:
                Q[i, 0] = w[i] * u[i]
                Q[i, 1] = 0.0
                Q[i, 2] = 0.0
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


@njit(parallel=True, cache=True)
def block_softmax_regression_loss(u, b, w, relu, lse, chunk_rows):
    """Σ_i (s_i − b_i)² + w_i u_i² over the block (twice its share of the loss), s = exp(m ⊙ u − lse)."""
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros(n_chunks)
    for ch in prange(n_chunks):
        acc = 0.0
        for i in range(ch * chunk_rows, min(n, (ch + 1) * chunk_rows)):
            z = u[i] if (not relu or u[i] > 0.0) else 0.0
            r = np.exp(z - lse) - b[i]
            acc += r * r + w[i] * u[i] * u[i]
        part[ch] = acc
    total = 0.0
    for ch in range(n_chunks):
        total += part[ch]
    return total


@njit(parallel=True, cache=True)
def block_softmax_values(u, lse, s):
    """s = exp(u − lse): the block's entries of softmax(u) given the global log-partition."""
    for i in prange(u.shape[0]):
        s[i] = np.exp(u[i] - lse)
