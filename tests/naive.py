"""Slow, obviously-correct NumPy references for the kernels and the models (no fastnewton imports).

The derivative references deliberately avoid SPEC §2's q / β / U / S route: the
gradient is Jᵀr built from the explicit Jacobian J = ∂h/∂u (dense m × n), and the
Hessian is the textbook chain rule

    ∇²_u ½‖h(u) − b‖² = JᵀJ + Σ_k r_k ∇²h_k(u)

with every ∇²h_k assembled from the explicit second derivatives of the softmax,
∂²s_k/∂u_i∂u_j, then sandwiched with C. Only meant for small n (O(n³) memory).
ReLU'(0) = 0 and ReLU'' = 0 everywhere (the kink itself is excluded by callers).
"""
import numpy as np

MODELS = ("softmax", "relu_softmax", "softmax_relu")


# -- plain linear algebra ---------------------------------------------------------------------
def to_dense(indptr, indices, data, shape):
    """CSR arrays → dense float64: every stored entry added at (row, column); duplicates add up."""
    indptr = np.asarray(indptr, dtype=np.int64)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    A = np.zeros(shape)
    np.add.at(A, (rows, np.asarray(indices[:indptr[-1]], dtype=np.int64)),
              np.asarray(data[:indptr[-1]], dtype=np.float64))
    return A


def matvec(A, x):
    return np.asarray(A, dtype=np.float64) @ np.asarray(x, dtype=np.float64)


def rmatmat(A, Q):
    return np.asarray(A, dtype=np.float64).T @ np.asarray(Q, dtype=np.float64)


def sandwich(A, beta):
    """Σ_i β_i a_i a_iᵀ, one outer product per row."""
    A = np.asarray(A, dtype=np.float64)
    out = np.zeros((A.shape[1], A.shape[1]))
    for i in range(A.shape[0]):
        out += beta[i] * np.outer(A[i], A[i])
    return out


# -- the softmax and its derivatives ---------------------------------------------------------
def relu(z):
    return np.where(z > 0.0, z, 0.0)


def relu_prime(z):
    """ReLU'(z) with ReLU'(0) = 0."""
    return (z > 0.0).astype(np.float64)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def logsumexp(z):
    z = np.asarray(z, dtype=np.float64)
    top = z.max()
    return top + np.log(np.sum(np.exp(z - top)))


def softmax_jacobian(s):
    """∂s_k/∂z_i = s_k (δ_ki − s_i), as an n × n matrix [k, i]."""
    n = s.shape[0]
    J = np.empty((n, n))
    for k in range(n):
        for i in range(n):
            J[k, i] = s[k] * ((k == i) - s[i])
    return J


def softmax_second(s):
    """T[k, i, j] = ∂²s_k/∂z_i∂z_j = s_k (δ_ki − s_i)(δ_kj − s_j) − s_k s_i (δ_ij − s_j).

    Differentiate ∂s_k/∂z_i = s_k δ_ki − s_k s_i by z_j: the product rule on both terms.
    """
    n = s.shape[0]
    T = np.empty((n, n, n))
    for k in range(n):
        for i in range(n):
            for j in range(n):
                T[k, i, j] = (s[k] * ((k == i) - s[i]) * ((k == j) - s[j])
                              - s[k] * s[i] * ((i == j) - s[j]))
    return T


# -- the three models: h(u), ∂h/∂u, ∂²h/∂u² -------------------------------------------------
def outputs(u, model, V=None):
    """h(u)."""
    u = np.asarray(u, dtype=np.float64)
    if model == "softmax":
        return softmax(u)
    if model == "relu_softmax":
        return softmax(relu(u))
    if model == "softmax_relu":
        return relu(np.asarray(V, dtype=np.float64).T @ softmax(u))
    raise ValueError(model)


def output_jacobian(u, model, V=None):
    """J[k, i] = ∂h_k/∂u_i (m × n)."""
    u = np.asarray(u, dtype=np.float64)
    if model == "softmax":
        return softmax_jacobian(softmax(u))
    if model == "relu_softmax":
        # chain rule through z = ReLU(u): ∂z_i/∂u_i = ReLU'(u_i)
        return softmax_jacobian(softmax(relu(u))) * relu_prime(u)[None, :]
    if model == "softmax_relu":
        V = np.asarray(V, dtype=np.float64)
        s = softmax(u)
        y = V.T @ s
        return relu_prime(y)[:, None] * (V.T @ softmax_jacobian(s))
    raise ValueError(model)


def output_second(u, model, V=None):
    """T[k, i, j] = ∂²h_k/∂u_i∂u_j (m × n × n); ReLU'' = 0 off the kink."""
    u = np.asarray(u, dtype=np.float64)
    if model == "softmax":
        return softmax_second(softmax(u))
    if model == "relu_softmax":
        mask = relu_prime(u)
        return softmax_second(softmax(relu(u))) * mask[None, :, None] * mask[None, None, :]
    if model == "softmax_relu":
        V = np.asarray(V, dtype=np.float64)
        s = softmax(u)
        a = relu_prime(V.T @ s)
        T = softmax_second(s)
        m = V.shape[1]
        out = np.zeros((m, u.shape[0], u.shape[0]))
        for j in range(m):
            for k in range(u.shape[0]):
                out[j] += a[j] * V[k, j] * T[k]
        return out
    raise ValueError(model)


# -- the loss L(x) and its derivatives -------------------------------------------------------
def _weights(row_weights, n):
    if row_weights is None:
        return np.zeros(n)
    return np.broadcast_to(np.asarray(row_weights, dtype=np.float64), (n,)).copy()


def loss(C, b, x, model, V=None, l2=0.0, row_weights=None):
    """½‖h(Cx) − b‖² + ½ Σ w (Cx)² + ½ λ‖x‖², term by term."""
    C = np.asarray(C, dtype=np.float64)
    u = C @ x
    w = _weights(row_weights, u.shape[0])
    r = outputs(u, model, V) - b
    return 0.5 * np.sum(r * r) + 0.5 * np.sum(w * u * u) + 0.5 * l2 * np.sum(x * x)


def grad(C, b, x, model, V=None, l2=0.0, row_weights=None):
    """Cᵀ(Jᵀr + w ⊙ u) + λx with the explicit Jacobian J of h."""
    C = np.asarray(C, dtype=np.float64)
    u = C @ x
    w = _weights(row_weights, u.shape[0])
    r = outputs(u, model, V) - b
    J = output_jacobian(u, model, V)
    return C.T @ (J.T @ r + w * u) + l2 * x


def hessian_u(u, b, model, V=None, row_weights=None):
    """∇²_u of the u-part of L: JᵀJ + Σ_k r_k ∇²h_k + diag(w) (n × n)."""
    u = np.asarray(u, dtype=np.float64)
    w = _weights(row_weights, u.shape[0])
    r = outputs(u, model, V) - b
    J = output_jacobian(u, model, V)
    T = output_second(u, model, V)
    return J.T @ J + np.einsum("k,kij->ij", r, T) + np.diag(w)


def hessian(C, b, x, model, V=None, l2=0.0, row_weights=None):
    """Cᵀ ∇²_u C + λI."""
    C = np.asarray(C, dtype=np.float64)
    H_u = hessian_u(C @ x, b, model, V, row_weights)
    return C.T @ H_u @ C + l2 * np.eye(C.shape[1])


# -- rounding bounds --------------------------------------------------------------------------
def assert_within_rounding(got, ref, abs_scale, n_terms, eps=np.finfo(np.float64).eps):
    """|got − ref| ≤ 2·(n_terms + 1)·eps·abs_scale, elementwise.

    A sum of n_terms floating-point products, in any order, is within γ ≈ n_terms·eps
    times Σ|terms| (= ``abs_scale``) of the exact value (Higham, Accuracy and Stability,
    Thm 3.1 / §3.1); both ``got`` and ``ref`` obey that bound, so they differ by at most
    twice it. Rows whose terms are all zero must therefore match exactly.
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    tol = 2.0 * (n_terms + 1) * eps * np.asarray(abs_scale, dtype=np.float64)
    err = np.abs(got - ref)
    bad = err > tol
    assert not np.any(bad), (
        f"{int(bad.sum())} entries off by more than the rounding bound; worst excess "
        f"{float(np.max(err - tol)):.3e} (err {float(err[bad].max()):.3e})")
