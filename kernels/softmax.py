"""Model vectors of SPEC §2: max-shifted softmax, the loss, q, β and U, in O(n) work.

Length-n reductions (sums, dot products) use fixed chunks of ``chunk_rows``
whose partials are summed in chunk order (bitwise independent of the thread
count). The maximum is exact in any order.
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _chunked_max(z, chunk_rows):
    n = z.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.full(n_chunks, -np.inf)
    for c in prange(n_chunks):
        m = -np.inf
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            if z[i] > m:
                m = z[i]
        part[c] = m
    return part.max()


@njit(parallel=True, cache=True)
def softmax_into(u, relu, chunk_rows, s):
    """s = softmax(z), z = ReLU(u) if ``relu`` else u, max-shifted: s_i = exp(z_i − max z)/Σ exp(z − max z).

    Returns log Σ exp(z) (the log-partition). Chunked sums, summed in chunk order.
    """
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    if relu:
        for i in prange(n):
            s[i] = u[i] if u[i] > 0.0 else 0.0
    else:
        for i in prange(n):
            s[i] = u[i]
    zmax = _chunked_max(s, chunk_rows)
    part = np.zeros(n_chunks)
    for c in prange(n_chunks):
        acc = 0.0
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            e = np.exp(s[i] - zmax)
            s[i] = e
            acc += e
        part[c] = acc
    total = 0.0
    for c in range(n_chunks):
        total += part[c]
    inv = 1.0 / total
    for i in prange(n):
        s[i] *= inv
    return zmax + np.log(total)


@njit(parallel=True, cache=True)
def chunked_dots(a, b, c, chunk_rows):
    """(Σ_i a_i·b_i, Σ_i a_i·c_i), each summed over fixed chunks in chunk order."""
    n = a.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros((n_chunks, 2))
    for ch in prange(n_chunks):
        ab = 0.0
        ac = 0.0
        for i in range(ch * chunk_rows, min(n, (ch + 1) * chunk_rows)):
            ab += a[i] * b[i]
            ac += a[i] * c[i]
        part[ch, 0] = ab
        part[ch, 1] = ac
    ab = 0.0
    ac = 0.0
    for ch in range(n_chunks):
        ab += part[ch, 0]
        ac += part[ch, 1]
    return ab, ac


@njit(parallel=True, cache=True)
def softmax_regression_loss(u, b, w, relu, chunk_rows, s):
    """½ Σ_i (s_i − b_i)² + ½ Σ_i w_i u_i² with s = softmax(m ⊙ u) (m = 1[u > 0] if ``relu``).

    ``s`` is a length-n work buffer (overwritten with the softmax).
    """
    softmax_into(u, relu, chunk_rows, s)
    n = u.shape[0]
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros(n_chunks)
    for c in prange(n_chunks):
        acc = 0.0
        for i in range(c * chunk_rows, min(n, (c + 1) * chunk_rows)):
            r = s[i] - b[i]
            acc += r * r + w[i] * u[i] * u[i]
        part[c] = acc
    total = 0.0
    for c in range(n_chunks):
        total += part[c]
    return 0.5 * total


@njit(parallel=True, cache=True)
def softmax_regression_vectors(u, b, w, relu, chunk_rows, Q, beta):
    """q, β, U of SPEC §2 for ``softmax`` (relu=False) and ``relu_softmax`` (relu=True).

    m = 1[u > 0] (or 1), s = softmax(m ⊙ u), r = s − b, v = s ⊙ (2s − b), c = ⟨s, r⟩,
    γ = ⟨3s − 2b, s⟩;  q = m ⊙ (s ⊙ r − c s) + w ⊙ u,  β = m ⊙ (v − c s) + w,
    U = [m ⊙ s, m ⊙ v].  Writes Q = [q, U] (n × 3, row-major) and β; returns
    (loss, c, γ) with loss = ½‖s − b‖² + ½ Σ w u².
    """
    n = u.shape[0]
    s = np.empty(n)
    softmax_into(u, relu, chunk_rows, s)
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    part = np.zeros((n_chunks, 3))
    for ch in prange(n_chunks):
        c_acc = 0.0
        g_acc = 0.0
        l_acc = 0.0
        for i in range(ch * chunk_rows, min(n, (ch + 1) * chunk_rows)):
            si = s[i]
            r = si - b[i]
            c_acc += si * r
            g_acc += (3.0 * si - 2.0 * b[i]) * si
            l_acc += r * r + w[i] * u[i] * u[i]
        part[ch, 0] = c_acc
        part[ch, 1] = g_acc
        part[ch, 2] = l_acc
    c = 0.0
    gamma = 0.0
    loss = 0.0
    for ch in range(n_chunks):
        c += part[ch, 0]
        gamma += part[ch, 1]
        loss += part[ch, 2]
    for i in prange(n):
        si = s[i]
        active = (not relu) or u[i] > 0.0
        if active:
            vi = si * (2.0 * si - b[i])
            Q[i, 0] = si * (si - b[i]) - c * si + w[i] * u[i]
            Q[i, 1] = si
            Q[i, 2] = vi
            beta[i] = vi - c * si + w[i]
        else:
            Q[i, 0] = w[i] * u[i]
            Q[i, 1] = 0.0
            Q[i, 2] = 0.0
            beta[i] = w[i]
    return 0.5 * loss, c, gamma


@njit(parallel=True, cache=True)
def softmax_relu_vectors(u, s, rho, V, y, c, w, Q, beta):
    """q, β, U of SPEC §2 for ``softmax_relu``, given s = softmax(u), y = Vᵀs, ρ = V(a ⊙ r), c = ⟨s, ρ⟩.

    q = s ⊙ ρ − c s + w ⊙ u,  β = s ⊙ ρ − c s + w,
    U = [s, s ⊙ ρ, J V diag(a)] with (J V diag(a))_ij = a_j·s_i·(V_ij − y_j), a = 1[y > 0].
    Writes Q = [q, U] (n × (m + 3), row-major) and β.
    """
    n, m = V.shape
    for i in prange(n):
        si = s[i]
        sr = si * rho[i]
        Q[i, 0] = sr - c * si + w[i] * u[i]
        Q[i, 1] = si
        Q[i, 2] = sr
        beta[i] = sr - c * si + w[i]
        for j in range(m):
            Q[i, 3 + j] = si * (V[i, j] - y[j]) if y[j] > 0.0 else 0.0
