"""``fastnewton.Problem``: loss, gradient, Hessian and Hessian-vector products of all three models.

Every derivative is checked two independent ways, as SPEC §2 asks:
- against tests/naive.py, which builds them from the explicit Jacobian of h and the
  explicit second derivatives of the softmax (not from the q / β / U / S formulas);
- against central finite differences of the implementation's own loss / gradient.

Rounding tolerances (naive comparisons). Both routes sum O(n + d + m) products in float64;
the worst rounding is ~ (n + d + m)·eps times the sum of the absolute values of the terms
(``_grad_scale``, ``_hess_scale`` below: |C| and the term sums of J, ∂²h and r, see
``_term_sums``). The factor 1e3 on
top covers the relative error that rounding in u = Cx carries into exp (≈ |u|·eps per row,
|u| ≲ 10 here) and the constant factors between the two routes' term sums.

Finite differences. The central difference (f(x + h e_j) − f(x − h e_j)) / 2h has error
≈ h²|f'''|/6 (truncation) + eps_f/h (rounding, eps_f the absolute rounding error of f).
The step h_j = 1e-5 / max_i |C_ij| moves every logit by at most 1e-5, so the truncation
is ~1e-10 relative in u-space and ≤ 1e-6 of the largest derivative entry in all cases we
draw (hence the relative 1e-6); the rounding part is bounded by 4·(n + d + m)·eps·scale/h
with scale = |L| for the gradient and the gradient's term sum for the Hessian. ReLU kinks
are kept ≥ 1e-3 away (far beyond the 1e-5 perturbation) so both sides of each difference see
the same smooth branch.
"""
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastnewton
import naive

EPS = np.finfo(np.float64).eps
MODELS = ["softmax", "relu_softmax", "softmax_relu"]
FORMATS = ["dense", "csr"]
# Distance from every ReLU kink (logits for relu_softmax, outputs y for softmax_relu).
KINK_GAP = 1e-3
FD_STEP = 1e-5
FD_RTOL = 1e-6
ROUNDING = 1e3

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@dataclass
class Case:
    """A problem, its dense float64 copy for the references, and a point x."""

    prob: fastnewton.Problem
    C: np.ndarray
    b: np.ndarray
    V: np.ndarray
    l2: float
    row_weights: object
    x: np.ndarray
    C_input: object = None

    @property
    def kw(self):
        return {"V": self.V, "l2": self.l2, "row_weights": self.row_weights}

    @property
    def n_terms(self):
        n, d = self.C.shape
        return n + d + (0 if self.V is None else self.V.shape[1])


def make_case(model, fmt, n, d, m=3, seed=0, scale=1.0, weights="none", l2=0.0, density=0.6):
    """A random (not planted) problem: b is any target, so residuals and second-order terms are non-zero."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((n, d))
    if fmt == "csr":
        C *= rng.random((n, d)) < density
        if n > 2:
            C[n // 2] = 0.0  # an empty row: u_i = 0 for every x (ReLU'(0) = 0 keeps it dead)
    V = None
    if model == "softmax_relu":
        V = rng.uniform(-1.0, 1.0, (n, m))
        if m >= 2:
            # y_0 = Σ s_i V_i0 > 0 and y_1 < 0 for every x: always one live and one dead output
            V[:, 0] = np.abs(V[:, 0])
            V[:, 1] = -np.abs(V[:, 1])
        b = rng.uniform(0.0, 0.6, m)
    else:
        b = rng.uniform(0.0, 2.0 / n, n)
        b[rng.random(n) < 0.2] = 0.0
    row_weights = {"none": None, "scalar": 0.3, "vector": rng.uniform(0.0, 1.0, n)}[weights]
    x = rng.standard_normal(d) * scale
    C_input = sp.csr_matrix(C) if fmt == "csr" else C.copy()
    prob = fastnewton.Problem(C_input, b, model=model, V=V, l2=l2, row_weights=row_weights)
    return Case(prob, C, b, V, l2, row_weights, x, C_input)


def away_from_kinks(case, x=None):
    """True when no ReLU is within KINK_GAP of its kink at x (rows of C that are all zero never move)."""
    x = case.x if x is None else x
    u = case.C @ x
    if case.prob.model == "relu_softmax":
        moving = np.any(case.C != 0.0, axis=1)
        return not np.any(moving & (np.abs(u) < KINK_GAP))
    if case.prob.model == "softmax_relu":
        return bool(np.all(np.abs(case.V.T @ naive.softmax(u)) >= KINK_GAP))
    return True


def _weights(case):
    n = case.C.shape[0]
    return np.zeros(n) if case.row_weights is None else np.broadcast_to(case.row_weights, (n,))


def _term_sums(case, x):
    """|h| + |b|, and the Jacobian and second derivatives of h with every minus sign made a plus.

    The rounding of a computed quantity is bounded by eps times the sum of the absolute values
    of the terms it is built from, not by its own size: s_k(δ_ki − s_i) loses all its relative
    accuracy when s_i ≈ 1 in either route, so its rounding scale is s_k(δ_ki + s_i).
    """
    model, V = case.prob.model, case.V
    u = case.C @ x
    z = naive.relu(u) if model == "relu_softmax" else u
    s = naive.softmax(z)
    n = s.shape[0]
    eye = np.eye(n)
    J = s[:, None] * (eye + s[None, :])
    T = (s[:, None, None] * (eye[:, :, None] + s[None, :, None]) * (eye[:, None, :] + s[None, None, :])
         + s[:, None, None] * s[None, :, None] * (eye[None, :, :] + s[None, None, :]))
    if model == "relu_softmax":
        mask = naive.relu_prime(u)
        J = J * mask[None, :]
        T = T * mask[None, :, None] * mask[None, None, :]
    elif model == "softmax_relu":
        a = naive.relu_prime(V.T @ s)
        J = a[:, None] * (np.abs(V).T @ J)
        T = a[:, None, None] * np.einsum("kj,kil->jil", np.abs(V), T)
    r = np.abs(naive.outputs(u, model, V)) + np.abs(case.b)
    return u, r, J, T


def _grad_scale(case, x):
    """Σ|terms| of the gradient Cᵀ(Jᵀr + w ⊙ u) + λx, per entry."""
    u, r, J, _ = _term_sums(case, x)
    return np.abs(case.C).T @ (J.T @ r + np.abs(_weights(case) * u)) + case.l2 * np.abs(x)


def _hess_scale(case, x):
    """Σ|terms| of the Hessian Cᵀ(JᵀJ + Σ_k r_k ∇²h_k + diag(w))C + λI, per entry."""
    _, r, J, T = _term_sums(case, x)
    H_u = J.T @ J + np.einsum("k,kij->ij", r, T) + np.diag(_weights(case))
    return np.abs(case.C).T @ H_u @ np.abs(case.C) + case.l2 * np.eye(case.C.shape[1])


def _loss_scale(case, x):
    """|L| plus the rounding that an error of ~|u|·eps in each logit carries into ½‖r‖²."""
    u, r, _, _ = _term_sums(case, x)
    v_max = 1.0 if case.V is None else max(1.0, np.abs(case.V).max())
    return (naive.loss(case.C, case.b, x, case.prob.model, **case.kw)
            + r @ (r + v_max) * (1.0 + np.abs(u).max(initial=0.0)))


def assert_loss_close(case, got, x):
    expected = naive.loss(case.C, case.b, x, case.prob.model, **case.kw)
    tol = ROUNDING * case.n_terms * EPS * _loss_scale(case, x)
    assert abs(got - expected) <= tol, (got, expected, tol)


def assert_grad_close(case, got, x):
    expected = naive.grad(case.C, case.b, x, case.prob.model, **case.kw)
    naive.assert_within_rounding(got, expected, _grad_scale(case, x), ROUNDING * case.n_terms)


def assert_hessian_close(case, got, x):
    expected = naive.hessian(case.C, case.b, x, case.prob.model, **case.kw)
    naive.assert_within_rounding(got, expected, _hess_scale(case, x), ROUNDING * case.n_terms)


def _fd_steps(case):
    """h_j = FD_STEP / max_i |C_ij|: each logit moves by ≤ FD_STEP (zero columns: only λx moves, any h)."""
    return FD_STEP / np.maximum(np.abs(case.C).max(axis=0), 1e-3)


def _coordinate_steps(case):
    """(j, h_j, h_j·e_j) for every coordinate; rejects the draw if a step would cross a ReLU kink."""
    steps = []
    for j, h in enumerate(_fd_steps(case)):
        e = np.zeros_like(case.x)
        e[j] = h
        assume(away_from_kinks(case, case.x + e) and away_from_kinks(case, case.x - e))
        steps.append((j, h, e))
    return steps


@st.composite
def cases(draw, model, fmt):
    case = make_case(
        model, fmt,
        n=draw(st.integers(2, 24)),
        d=draw(st.integers(1, 6)),
        m=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 2**32 - 1)),
        scale=draw(st.floats(0.1, 2.0)),
        weights=draw(st.sampled_from(["none", "scalar", "vector"])),
        l2=draw(st.sampled_from([0.0, 0.7])),
    )
    assume(away_from_kinks(case))
    return case


def _both(test):
    """Parametrise over every model × format; hypothesis then draws shapes and values inside each."""
    return pytest.mark.parametrize("model", MODELS)(pytest.mark.parametrize("fmt", FORMATS)(test))


# -- against the naive references (hypothesis over shapes and values) ----------------------
@_both
@SETTINGS
@given(data=st.data())
def test_loss_matches_naive(model, fmt, data):
    case = data.draw(cases(model, fmt))
    assert_loss_close(case, case.prob.loss(case.x), case.x)


@_both
@SETTINGS
@given(data=st.data())
def test_grad_matches_naive(model, fmt, data):
    case = data.draw(cases(model, fmt))
    assert_grad_close(case, case.prob.grad(case.x), case.x)


@_both
@SETTINGS
@given(data=st.data())
def test_hessian_matches_naive_and_is_symmetric(model, fmt, data):
    case = data.draw(cases(model, fmt))
    H = case.prob.hessian(case.x)
    assert H.shape == (case.C.shape[1],) * 2
    np.testing.assert_array_equal(H, H.T)
    assert_hessian_close(case, H, case.x)


# -- against central finite differences ----------------------------------------------------
@_both
@SETTINGS
@given(data=st.data())
def test_grad_matches_central_differences_of_loss(model, fmt, data):
    case = data.draw(cases(model, fmt))
    prob, x = case.prob, case.x
    steps = _coordinate_steps(case)
    g = prob.grad(x)
    L = prob.loss(x)
    fd = np.empty_like(x)
    for j, h, e in steps:
        fd[j] = (prob.loss(x + e) - prob.loss(x - e)) / (2 * h)
    tol = FD_RTOL * np.abs(g).max() + 4 * case.n_terms * EPS * abs(L) / _fd_steps(case)
    assert np.all(np.abs(fd - g) <= tol), (fd, g, tol)


@_both
@SETTINGS
@given(data=st.data())
def test_hessian_matches_central_differences_of_grad(model, fmt, data):
    case = data.draw(cases(model, fmt))
    prob, x = case.prob, case.x
    steps = _coordinate_steps(case)
    H = prob.hessian(x)
    fd = np.empty_like(H)
    for j, h, e in steps:
        fd[:, j] = (prob.grad(x + e) - prob.grad(x - e)) / (2 * h)
    g_scale = _grad_scale(case, x).max()
    tol = FD_RTOL * np.abs(H).max() + 4 * case.n_terms * EPS * g_scale / _fd_steps(case)[None, :]
    assert np.all(np.abs(fd - H) <= tol), (fd, H, tol)


# -- consistency between the entry points ---------------------------------------------------
@_both
@SETTINGS
@given(data=st.data(), p_seed=st.integers(0, 2**32 - 1))
def test_hessp_matches_hessian_times_p(model, fmt, data, p_seed):
    case = data.draw(cases(model, fmt))
    p = np.random.default_rng(p_seed).standard_normal(case.x.shape[0])
    Hp = case.prob.hessp(case.x, p)
    H = case.prob.hessian(case.x)
    naive.assert_within_rounding(Hp, H @ p, _hess_scale(case, case.x) @ np.abs(p), ROUNDING * case.n_terms)


@_both
@SETTINGS
@given(data=st.data())
def test_loss_and_grad_agree_with_loss_and_grad(model, fmt, data):
    case = data.draw(cases(model, fmt))
    x = case.x
    L_first, g_first = case.prob.loss_and_grad(x)
    # a second Problem, loss before grad, so neither answer comes from the other's cache
    other = fastnewton.Problem(case.C_input, case.b, model=model, V=case.V, l2=case.l2,
                               row_weights=case.row_weights)
    L_sep = other.loss(x)
    g_sep = other.grad(x)
    # bitwise: the solver's line search compares L from the loss-only path with L from the full
    # evaluation, so the two must not differ even in the last bit
    assert L_first == L_sep
    np.testing.assert_array_equal(g_first, g_sep)
    assert_loss_close(case, L_first, x)
    assert_grad_close(case, g_first, x)


# -- every option on a fixed grid (deterministic coverage of weights × l2 × model × format) ----
@pytest.mark.parametrize("l2", [0.0, 0.5])
@pytest.mark.parametrize("weights", ["none", "scalar", "vector"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_every_option_against_naive(model, fmt, weights, l2):
    case = make_case(model, fmt, n=17, d=5, m=3, seed=42, scale=1.0, weights=weights, l2=l2)
    assert away_from_kinks(case)
    x, prob = case.x, case.prob
    assert_loss_close(case, prob.loss(x), x)
    assert_grad_close(case, prob.grad(x), x)
    assert_hessian_close(case, prob.hessian(x), x)
    p = np.linspace(-1.0, 1.0, x.shape[0])
    naive.assert_within_rounding(prob.hessp(x, p), naive.hessian(case.C, case.b, x, model, **case.kw) @ p,
                                 _hess_scale(case, x) @ np.abs(p), ROUNDING * case.n_terms)


@pytest.mark.parametrize("model", MODELS)
def test_scalar_row_weights_equal_a_constant_vector(model):
    a = make_case(model, "dense", n=12, d=4, seed=3, weights="scalar")
    w = np.full(12, 0.3)
    b = fastnewton.Problem(a.C, a.b, model=model, V=a.V, row_weights=w)
    assert a.prob.loss(a.x) == b.loss(a.x)
    np.testing.assert_array_equal(a.prob.grad(a.x), b.grad(a.x))
    np.testing.assert_array_equal(a.prob.hessian(a.x), b.hessian(a.x))
    # and the weights really enter: a zero weight gives a different loss
    c = fastnewton.Problem(a.C, a.b, model=model, V=a.V)
    assert c.loss(a.x) < b.loss(a.x)


# -- the cache of the last evaluated point -------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_cache_never_returns_a_stale_point(model, fmt):
    case = make_case(model, fmt, n=15, d=4, seed=7, weights="vector", l2=0.5)
    prob = case.prob
    x1 = case.x
    x2 = x1 + np.array([0.3, -0.2, 0.1, 0.25])
    assert away_from_kinks(case, x2)
    p = np.array([1.0, -2.0, 0.5, 0.0])

    g1 = prob.grad(x1)
    g2 = prob.grad(x2)
    g1_again = prob.grad(x1)
    assert_grad_close(case, g1, x1)
    assert_grad_close(case, g2, x2)
    np.testing.assert_array_equal(g1_again, g1)
    assert np.abs(g1 - g2).max() > 0

    # loss / hessp / hessian at a point other than the cached one
    prob.grad(x2)
    assert_loss_close(case, prob.loss(x1), x1)
    prob.grad(x1)
    naive.assert_within_rounding(prob.hessp(x2, p), naive.hessian(case.C, case.b, x2, model, **case.kw) @ p,
                                 _hess_scale(case, x2) @ np.abs(p), ROUNDING * case.n_terms)
    assert_hessian_close(case, prob.hessian(x1), x1)
    L2, g2b = prob.loss_and_grad(x2)
    assert_loss_close(case, L2, x2)
    np.testing.assert_array_equal(g2b, g2)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_cache_survives_caller_mutations(model, fmt):
    """Mutating a returned array, or the caller's x in place, must not corrupt later answers."""
    case = make_case(model, fmt, n=15, d=4, seed=8, weights="scalar", l2=0.2)
    prob = case.prob
    x = case.x.copy()
    g = prob.grad(x)
    expected = g.copy()
    g[:] = 123.0
    np.testing.assert_array_equal(prob.grad(x), expected)
    L, g = prob.loss_and_grad(x)
    g[:] = -7.0
    np.testing.assert_array_equal(prob.grad(x), expected)
    H = prob.hessian(x)
    H_expected = H.copy()
    H[:] = 0.0
    np.testing.assert_array_equal(prob.hessian(x), H_expected)
    Hp = prob.hessp(x, np.ones(4))
    Hp[:] = 0.0
    np.testing.assert_array_equal(prob.hessian(x), H_expected)

    # the same array object, changed in place: the cache must see a new point
    x_old = x.copy()
    x += 0.05
    assert away_from_kinks(case, x)
    assert_grad_close(case, prob.grad(x), x)
    assert_loss_close(case, prob.loss(x), x)
    assert_hessian_close(case, prob.hessian(x), x)
    np.testing.assert_array_equal(prob.grad(x_old), expected)


# -- inputs are never modified -------------------------------------------------------------
def _inputs(variant, rng, n, d):
    A = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.6)
    A[1] = 0.0
    if variant == "dense_c_f64":
        return A
    if variant == "dense_f_f32":
        return np.asfortranarray(A.astype(np.float32))
    if variant == "dense_strided":
        return np.repeat(A, 2, axis=1)[:, ::2]
    csr = sp.csr_matrix(A)
    if variant == "csr_f64_i32":
        return csr
    if variant == "csr_f32_i64_unsorted_duplicates":
        # every entry split into two halves stored in reverse column order: same matrix
        rows, cols = np.repeat(np.arange(n), np.diff(csr.indptr)), csr.indices
        order = np.lexsort((-cols, rows))
        rows2 = np.concatenate([rows[order], rows[order]])
        cols2 = np.concatenate([cols[order], cols[order]])
        vals2 = np.concatenate([csr.data[order], csr.data[order]]).astype(np.float32) / np.float32(2)
        order2 = np.argsort(rows2, kind="stable")
        counts = np.bincount(rows2, minlength=n)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out = sp.csr_matrix((vals2[order2], cols2[order2], indptr), shape=(n, d))
        # SciPy's constructor downcasts small index arrays to int32; set int64 explicitly
        out.indices, out.indptr = out.indices.astype(np.int64), out.indptr.astype(np.int64)
        assert not out.has_sorted_indices
        return out
    if variant == "csc":
        return csr.tocsc()
    if variant == "coo":
        return csr.tocoo()
    raise ValueError(variant)


def _snapshot(obj):
    if sp.issparse(obj):
        return {name: getattr(obj, name).copy() for name in ("data", "indices", "indptr", "row", "col")
                if hasattr(obj, name)}
    return {"array": np.array(obj, copy=True)}


def _unchanged(before, obj):
    now = _snapshot(obj)
    assert before.keys() == now.keys()
    for key in before:
        assert before[key].dtype == now[key].dtype
        np.testing.assert_array_equal(before[key], now[key])


VARIANTS = ["dense_c_f64", "dense_f_f32", "dense_strided", "csr_f64_i32", "csr_f32_i64_unsorted_duplicates",
            "csc", "coo"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", MODELS)
def test_inputs_are_never_modified_and_every_format_gives_the_same_answer(model, variant):
    rng = np.random.default_rng(9)
    n, d, m = 14, 5, 3
    C = _inputs(variant, rng, n, d)
    C_dense = C.toarray().astype(np.float64) if sp.issparse(C) else np.asarray(C, dtype=np.float64)
    V = rng.uniform(-1.0, 1.0, (n, m)) if model == "softmax_relu" else None
    b = rng.uniform(0.0, 0.6, m) if V is not None else rng.uniform(0.0, 2.0 / n, n)
    w = rng.uniform(0.0, 1.0, n)
    x = rng.standard_normal(d)
    p = rng.standard_normal(d)
    before = {name: _snapshot(obj) for name, obj in
              {"C": C, "b": b, "w": w, "x": x, "p": p, **({"V": V} if V is not None else {})}.items()}

    prob = fastnewton.Problem(C, b, model=model, V=V, l2=0.3, row_weights=w)
    results = [prob.loss(x), prob.grad(x), prob.loss_and_grad(x), prob.hessian(x), prob.hessp(x, p)]
    prob.grad(p)
    prob.hessp(p, x)

    for name, obj in {"C": C, "b": b, "w": w, "x": x, "p": p, **({"V": V} if V is not None else {})}.items():
        _unchanged(before[name], obj)

    case = Case(prob, C_dense, b, V, 0.3, w, x)
    assert away_from_kinks(case)
    assert_loss_close(case, results[0], x)
    assert_grad_close(case, results[1], x)
    assert_hessian_close(case, results[3], x)


# -- scipy.optimize.minimize ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["Newton-CG", "trust-ncg"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_scipy_minimize_solves_a_tiny_planted_problem(model, fmt, method):
    """Problem plugs into scipy.optimize.minimize(fun, x0, jac=, hessp=) and reaches the planted optimum.

    relu_softmax and softmax_relu start near x_true (from 0 they sit at a dead stationary point,
    SPEC §3); softmax starts from 0. The planted b is exact, so L(x*) = 0.
    (trust-krylov is not used: SciPy's trlib breaks down at these gradient scales, ~1e-6, even
    with a naive NumPy Hessian.)
    """
    n, d = 60, 5
    out = fastnewton.make_problem(n, d, nnz_per_row=3, model=model, m=3, seed=1, dense=(fmt == "dense"))
    C, b, x_true = out[:3]
    V = out.V
    prob = fastnewton.Problem(C, b, model=model, V=V)
    rng = np.random.default_rng(1)
    x0 = np.zeros(d) if model == "softmax" else x_true + 0.1 * np.abs(x_true).max() * rng.standard_normal(d)
    L0, g0 = prob.loss(x0), np.abs(prob.grad(x0)).max()
    options = {"xtol": 1e-14} if method == "Newton-CG" else {"gtol": 1e-8 * g0}
    res = scipy.optimize.minimize(prob.loss, x0, jac=prob.grad, hessp=prob.hessp, method=method, options=options)
    assert res.success, res.message
    # L(x*) = 0: a wrong gradient or Hessian-vector product stalls far above these (Newton-CG stops
    # on its step size, typically at L ≈ 1e-8·L0, hence the slack)
    assert prob.loss(res.x) <= 1e-6 * L0
    assert np.abs(prob.grad(res.x)).max() <= 1e-3 * g0
    if model != "softmax_relu":  # softmax_relu has m = 3 outputs for d = 5 unknowns: x* is not unique
        np.testing.assert_allclose(res.x, x_true, atol=1e-3 * np.abs(x_true).max())


# -- thread count ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_problem_results_bitwise_equal_with_1_and_2_threads(model, fmt, run_with_threads):
    """n large enough for several fixed row chunks: loss, gradient, Hessian and hessp keep their bits."""
    n, d = 12_000, 6
    out = fastnewton.make_problem(n, d, nnz_per_row=4, model=model, m=4, seed=5, noise=0.1, dense=(fmt == "dense"))
    C, b = out[:2]
    V = out.V
    rng = np.random.default_rng(5)
    w = rng.uniform(0.0, 1.0, n)
    x = out[2] + 0.3 * rng.standard_normal(d)
    p = rng.standard_normal(d)

    def evaluate():
        prob = fastnewton.Problem(C, b, model=model, V=V, l2=0.1, row_weights=w)
        L, g = prob.loss_and_grad(x)
        return np.array([L, prob.loss(x + p)]), g, prob.hessian(x), prob.hessp(x, p)

    one = run_with_threads(1, evaluate)
    two = run_with_threads(2, evaluate)
    for a, b_ in zip(one, two):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_gradient_at_zero_rides_along_another_transposed_pass_with_its_own_bits(model, fmt):
    """``rmatmat_with_gradient_at_zero(Q)`` (the sampled start's mean pass): CᵀQ with the bits of
    ``matrix.rmatmat(Q)``, and ∇L(0) from the same read with the bits of its own pass (a transposed pass's
    column sums do not depend on the other columns), kept for ``gradient_at_zero`` (read-only) until
    ``clear_cache``; a new target (``with_target``) forms its own."""
    out = fastnewton.make_problem(300, 7, nnz_per_row=3, model=model, noise=0.1, seed=4, dense=fmt == "dense")
    C, b, V = out[0], out[1], out.V
    own_pass = fastnewton.Problem(C, b, model, V=V).gradient_at_zero()
    problem = fastnewton.Problem(C, b, model, V=V)
    Q = np.random.default_rng(5).standard_normal((300, 2))
    G = problem.rmatmat_with_gradient_at_zero(Q)
    assert np.array_equal(G, problem.matrix.rmatmat(Q))
    kept = problem.gradient_at_zero()
    assert np.array_equal(kept, own_pass) and kept is problem.gradient_at_zero() and not kept.flags.writeable
    assert np.array_equal(problem.rmatmat_with_gradient_at_zero(Q), G)  # known: Q's pass alone
    problem.clear_cache()
    again = problem.gradient_at_zero()
    assert again is not kept and np.array_equal(again, own_pass)
    other_b = b[::-1].copy()
    assert np.array_equal(problem.with_target(other_b).gradient_at_zero(),
                          fastnewton.Problem(C, other_b, model, V=V).gradient_at_zero())


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_from_checked_is_the_problem_that_problem_builds(model, dense):
    """solve_many's problems whose checks ran in bulk: the same inputs held (C's matrix as given, b
    copied, zero row weights), the same facts, and the same loss, gradient and Hessian as Problem's own."""
    from fastnewton.validation import as_input_matrix

    made = fastnewton.make_problem(40, 6, model=model, noise=0.1, seed=3, dense=dense)
    C, b = made.C, made.b
    matrix = as_input_matrix(C)
    mine = fastnewton.Problem.from_checked(matrix, b, model, 0.25)
    reference = fastnewton.Problem(C, b, model, l2=0.25)
    assert mine.matrix is matrix and mine.matrix.format == reference.matrix.format and mine.V is None
    assert not np.shares_memory(mine.b, b)
    np.testing.assert_array_equal(mine.b, reference.b)
    np.testing.assert_array_equal(mine.row_weights, reference.row_weights)
    assert (mine.model, mine.l2, mine.facts) == (reference.model, reference.l2, reference.facts)
    x = np.random.default_rng(0).standard_normal(6)
    assert mine.loss(x) == reference.loss(x)
    np.testing.assert_array_equal(mine.grad(x), reference.grad(x))
    np.testing.assert_array_equal(mine.hessian(x), reference.hessian(x))


def test_line_search_evaluates_a_kept_trial_without_forming_it_again(monkeypatch):
    """LineSearch.evaluate(t) reuses the trial at t (its u and log-partition) when t was the last trial, or the
    one before a longer trial (a rejected longer step after an accepted one), and forms u again after
    backtracking past it; every route gives the bits of a fresh line's evaluation at t. ‖Cp‖∞ is ``largest``."""
    from fastnewton.problem import LineSearch

    C, b, _ = fastnewton.make_problem(3_000, 20, nnz_per_row=5, seed=3)
    problem = fastnewton.Problem(C, b)
    rng = np.random.default_rng(4)
    ev = problem.evaluate(0.3 * rng.standard_normal(20))
    p = 0.2 * rng.standard_normal(20)
    formed = []
    original = LineSearch._u
    monkeypatch.setattr(LineSearch, "_u", lambda self, t: formed.append(t) or original(self, t))

    def fresh(t):
        line = problem.line(ev, p.copy())
        return line.loss(t), line.evaluate(t)

    L1, reference = fresh(1.0)
    np.testing.assert_array_equal(reference.x, ev.x + p)
    assert reference.loss == L1
    assert problem.line(ev, p.copy()).largest == np.max(np.abs(C @ p))
    for trials, t, forms_again in [((1.0, 2.5), 1.0, False), ((1.0, 2.5), 2.5, False), ((1.0, 0.5), 1.0, True),
                                   ((1.0, 0.5, 0.25), 0.5, True)]:
        line = problem.line(ev, p.copy())
        for trial in trials:
            line.loss(trial)
        formed.clear()
        evaluation = line.evaluate(t)
        assert formed == ([t] if forms_again else []), (trials, t)
        expected = reference if t == 1.0 else fresh(t)[1]
        np.testing.assert_array_equal(evaluation.grad, expected.grad)
        assert evaluation.loss == expected.loss


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_solve_from_zeros_reads_c_neither_for_u_at_zero_nor_for_a_separate_reference(model, fmt, monkeypatch):
    """At x = 0, u = C·0 is +0.0 on every row (finite C: 0.0 + (±0.0) + … = +0.0), so the evaluation writes
    zeros, the pass's bits, without the pass; and from x0 = 0, ∇L(0) (g_ref) is the gradient of that
    evaluation, with the bits of its own pass, where the reference model is the model itself (relu_softmax's
    reference is the plain softmax: it keeps its own pass). Same solve, same bits, either way."""
    out = fastnewton.make_problem(300, 7, nnz_per_row=3, model=model, noise=0.1, seed=4, dense=fmt == "dense")
    C, b, V = out[0], out[1], out.V
    problem = fastnewton.Problem(C, b, model, V=V, l2=0.01)
    u = problem.matrix.matvec(np.zeros(7))
    assert np.array_equal(u, np.zeros(300)) and not np.signbit(u).any()
    own_pass = fastnewton.Problem(C, b, model, V=V, l2=0.01).gradient_at_zero()
    reads = []
    matrix_class = type(problem.matrix)
    matvec = matrix_class.matvec
    monkeypatch.setattr(matrix_class, "matvec", lambda self, x, out=None: reads.append(x.copy()) or matvec(self, x, out))
    at_zero = problem.evaluate(np.zeros(7))
    assert reads == []
    assert np.array_equal(at_zero.kept["u"], u)
    assert np.array_equal(problem.gradient_at_zero(), own_pass)
    if model != "relu_softmax":
        assert np.array_equal(at_zero.grad, own_pass)
    # The solve from zeros: g_ref has the bits of the separate pass; the iterates those of a solve whose
    # evaluation at 0 and reference made their passes (the monkeypatched matvec at x = 0, then a new Problem).
    monkeypatch.setattr(matrix_class, "matvec", matvec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        # continuation=False: softmax_relu's one Newton loop on the real loss, as newton_solve below
        res = fastnewton.solve(C, b, model, V=V, l2=0.01, x0="zeros", hessian="exact", max_iter=3, tol=1e-300,
                               continuation=False)
    assert res.g_ref == float(np.linalg.norm(own_pass))
    forced = fastnewton.Problem(C, b, model, V=V, l2=0.01)
    forced._forward = lambda x, timer: forced.matrix.matvec(x)  # the pass even at x = 0
    forced._gradient_at_zero = own_pass
    from fastnewton.hessian import exact_system
    from fastnewton.newton import SolveOptions, newton_solve
    options = SolveOptions(hessian="exact", tol=1e-300, max_iter=3, eps=0.5, sketch_size=None, seed=None,
                           callback=None, verbose=False, warn_at_max_iter=False)
    again = newton_solve(forced, np.zeros(7), "zeros", exact_system, options)
    assert res.n_iter == again.n_iter and res.status == again.status
    assert np.array_equal(res.x, again.x) and res.loss == again.loss


@pytest.mark.parametrize("model", MODELS)
def test_a_trial_forms_the_evaluation_of_its_point_with_the_bits_of_a_fresh_one(model, run_with_threads):
    """Problem.trial_at: a line's first trial (softmax, relu_softmax: with the columns Q of the transposed
    pass, ``trial_columns``) gives the loss of the loss stages bit for bit, and LineSearch.evaluate(t) at it
    the evaluation (loss, ∇L, P, S, Q) that ``evaluate_from`` forms at the same u = u0 + t·Cp (NumPy's
    multiply, then add), with 1 and 2 threads; a later trial (backtracking: the loss stages alone) likewise."""
    out = fastnewton.make_problem(6_000, 12, nnz_per_row=4, model=model, noise=0.05, seed=8)
    C, b, V = out[0], out[1], out.V
    problem = fastnewton.Problem(C, b, model, V=V, l2=1e-3)
    rng = np.random.default_rng(9)
    x = 0.3 * rng.standard_normal(12)
    p = 0.2 * rng.standard_normal(12)

    def routes():
        ev = problem.evaluate(x)
        line = problem.line(ev, p.copy())
        trials = [line.loss(1.0), line.loss(0.5)]  # the second backtracks past the first
        evaluations = [line.evaluate(0.5)]
        line = problem.line(ev, p.copy())
        trials.append(line.loss(1.0))
        evaluations.append(line.evaluate(1.0))
        references = []
        for t in (0.5, 1.0):
            u = np.add(ev.kept["u"], np.multiply(line.Cp, t))
            point = x + t * p
            references.append((problem.loss_at(u, point), problem.evaluate_from(point, {"u": u})))
        return trials, evaluations, references

    for threads in (1, 2):
        (first, backtracked, accepted), evaluations, references = run_with_threads(threads, routes)
        assert first == accepted and backtracked == references[0][0] and accepted == references[1][0]
        for evaluation, (loss, reference) in zip(evaluations, references):
            assert evaluation.loss == reference.loss == loss
            np.testing.assert_array_equal(evaluation.grad, reference.grad)
            np.testing.assert_array_equal(evaluation.P, reference.P)
            np.testing.assert_array_equal(evaluation.S, reference.S)
            np.testing.assert_array_equal(evaluation.kept["Q"], reference.kept["Q"])


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_the_loss_at_zero_is_kept_from_an_evaluation_at_zero_with_the_bits_of_the_loss_stages(model, monkeypatch):
    """Problem.loss_at_zero (diagnose's L(0)): after an evaluation at x = 0 (a solve from zeros), that
    evaluation's loss, equal bit for bit to the loss stages at u = 0, with no kernel run again."""
    out = fastnewton.make_problem(2_000, 9, nnz_per_row=3, model=model, noise=0.05, seed=12)
    fresh = fastnewton.Problem(out[0], out[1], model, l2=0.01).loss_at(np.zeros(2_000), np.zeros(9))
    problem = fastnewton.Problem(out[0], out[1], model, l2=0.01)
    problem.evaluate(np.zeros(9))
    monkeypatch.setattr(problem, "loss_at", lambda u, x: pytest.fail("L(0) formed again"))
    assert problem.loss_at_zero() == fresh


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_an_accepted_longer_trial_is_evaluated_in_the_arrays_the_first_trial_let_go(model):
    """A line's first trial (with the columns Q) is kept while a longer one is tried (it is the step if the
    longer one is rejected); once the longer one is accepted, the evaluation lets the first go before it
    forms its own arrays, so it reuses them (``fastnewton.buffers``) and the peak stays two trials' arrays."""
    out = fastnewton.make_problem(3_000, 8, nnz_per_row=3, model=model, noise=0.05, seed=5)
    problem = fastnewton.Problem(out[0], out[1], model, l2=1e-3)
    rng = np.random.default_rng(6)
    ev = problem.evaluate(0.3 * rng.standard_normal(8))
    line = problem.line(ev, 0.05 * rng.standard_normal(8))

    def held_arrays():
        return sorted((shape, len(arrays)) for shape, arrays in problem.buffers._arrays.items())

    line.loss(1.0)
    line.loss(2.0)  # longer: the first trial stays held
    before = held_arrays()
    evaluation = line.evaluate(2.0)
    assert held_arrays() == before
    fresh = problem.evaluate_from(ev.x + 2.0 * line.p, {"u": np.add(ev.kept["u"], np.multiply(line.Cp, 2.0))})
    assert evaluation.loss == fresh.loss
    np.testing.assert_array_equal(evaluation.grad, fresh.grad)


@pytest.mark.parametrize("model", ["softmax", "relu_softmax", "softmax_relu"])
def test_a_cg_product_before_beta_is_formed_writes_no_beta_and_has_its_bits(model):
    """Problem.hessian_product_and_forward before β is formed (a ``lagged`` iteration's CG) on CSR C: the first
    FUSED_PRODUCTS products at a point form each βᵢ from the columns Q in their pass (the model's
    ``curvature_sandwich_vector``): ev.beta stays unformed; the next one forms β (many products at one x); every
    product and C·p have the bits of the product with β formed first."""
    from fastnewton.problem import FUSED_PRODUCTS

    made = fastnewton.make_problem(3000, 12, nnz_per_row=5, model=model, m=3, noise=0.1, seed=5)
    problem = fastnewton.Problem(made[0], made[1], model=model, V=made.V, l2=1e-6)
    rng = np.random.default_rng(3)
    x, p = rng.standard_normal(12) * 0.3, rng.standard_normal(12)
    ev = problem.evaluate(x)
    products = []
    for _ in range(FUSED_PRODUCTS):
        products.append(problem.hessian_product_and_forward(ev, p))
        assert ev.beta is None
    products.append(problem.hessian_product_and_forward(ev, p))
    assert ev.beta is not None
    with_beta = fastnewton.Problem(made[0], made[1], model=model, V=made.V, l2=1e-6)
    ev_beta = with_beta.evaluate(x)
    with_beta.beta(ev_beta)
    product, forward = with_beta.hessian_product_and_forward(ev_beta, p)
    for fused, fused_forward in products:
        assert np.array_equal(fused, product) and np.array_equal(fused_forward, forward)
