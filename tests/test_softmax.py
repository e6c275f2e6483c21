"""kernels/softmax.py (and the dot product of kernels/reduce.py) against the naive formulas of tests/naive.py.

The column kernels are checked by what q, β, U, S must *mean*, not by re-typing SPEC §2:
q = Q[:, 0] − c·Q[:, 1] must be the u-gradient Jᵀr + w ⊙ u of the explicit Jacobian, and
diag(β) + U S Uᵀ (β = Q[:, 2] − c·Q[:, 1] + w, U = Q[:, 1:]) the u-Hessian
JᵀJ + Σ_k r_k ∇²h_k + diag(w) of naive.py.
Tolerances are multiples of np.finfo(np.float64).eps (everything is float64), scaled
by the size of the quantities involved; the multiples are stated where used.
"""
import types
import warnings

import numba
import numpy as np
import pytest

import naive
from fastnewton.chunking import chunk_rows as real_chunk_rows
from fastnewton.kernels.reduce import add_scaled, chunked_dot, scale_into
from fastnewton.kernels.softmax import (
    curvature_weights,
    line_point,
    log_partition_parts,
    softmax_regression_columns,
    softmax_regression_loss,
    softmax_relu_columns,
    target_summary,
)
from fastnewton.models import LogPartition

EPS = np.finfo(np.float64).eps
CHUNKS = [1, 3, None]
CHUNK_IDS = ["chunk1", "chunk3", "real"]


def _rows(n, chunk_rows):
    return real_chunk_rows(n) if chunk_rows is None else chunk_rows


def _u_away_from_kink(rng, n, scale=2.0, gap=1e-3):
    u = rng.standard_normal(n) * scale
    return np.where(np.abs(u) < gap, gap * 2, u)


def one_block_softmax(u, relu, chunk_rows, s):
    """s = softmax(z) of one block from the kernel's parts; returns log Σ exp(z)."""
    top, total = log_partition_parts(u, relu, chunk_rows, s)
    s *= LogPartition(top, total).factor(top)
    return top + np.log(total)


def _parts(u, relu, chunk_rows):
    """(e, the one-block factor e → s) as the evaluators pass them to the column kernels."""
    e = np.empty(u.shape[0])
    top, total = log_partition_parts(u, relu, chunk_rows, e)
    return e, LogPartition(top, total).factor(top)


def _beta(Q, c, w):
    beta = np.full(Q.shape[0], np.nan)
    curvature_weights(Q, c, w, beta)
    return beta


# -- one_block_softmax ---------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_rows", CHUNKS, ids=CHUNK_IDS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("n", [1, 2, 50, 10_000])
def test_one_block_softmax_matches_naive(n, relu, chunk_rows):
    rng = np.random.default_rng(30)
    u = rng.standard_normal(n) * 3
    s = np.full(n, np.nan)
    lse = one_block_softmax(u, relu, _rows(n, chunk_rows), s)
    z = naive.relu(u) if relu else u
    # each s_i is one exp (≤ 1 ulp-ish error, a few eps) over a sum of n terms (≤ n·eps relative)
    np.testing.assert_allclose(s, naive.softmax(z), rtol=4 * (n + 4) * EPS, atol=0)
    np.testing.assert_allclose(lse, naive.logsumexp(z), rtol=4 * (n + 4) * EPS)
    assert abs(s.sum() - 1.0) <= 2 * (n + 4) * EPS


def test_one_block_softmax_huge_logits_do_not_overflow():
    u = np.array([1e4, 1e4 - 1.0, -1e4, 0.0, 1e4 - 800.0])
    s = np.empty_like(u)
    lse = one_block_softmax(u, False, 2, s)
    top = 1.0 / (1.0 + np.exp(-1.0))
    # exp(−800) underflows to 0 after the max shift: exactly the right answer in float64
    expected = np.array([top, np.exp(-1.0) * top, 0.0, 0.0, 0.0])
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, expected, rtol=8 * EPS, atol=0)
    np.testing.assert_allclose(lse, 1e4 + np.log1p(np.exp(-1.0)), rtol=4 * EPS)


def test_one_block_softmax_huge_negative_logits():
    """All logits hugely negative: the max shift keeps the largest at exp(0) = 1, never 0/0."""
    u = np.array([-1e4, -1e4 - 1.0, -2e4])
    s = np.empty_like(u)
    lse = one_block_softmax(u, False, 1, s)
    assert np.all(np.isfinite(s)) and abs(s.sum() - 1.0) <= 4 * EPS
    np.testing.assert_allclose(s, naive.softmax(u), rtol=8 * EPS)
    np.testing.assert_allclose(lse, -1e4 + np.log1p(np.exp(-1.0)), rtol=4 * EPS)


def test_one_block_softmax_relu_huge_and_all_dead():
    s = np.empty(4)
    lse = one_block_softmax(np.array([1e4, -1e4, 3.0, -0.0]), True, 3, s)
    np.testing.assert_allclose(s, [1.0, 0.0, 0.0, 0.0], rtol=0, atol=0)
    np.testing.assert_allclose(lse, 1e4, rtol=4 * EPS)
    # every ReLU dead: z = 0 everywhere, the uniform distribution
    lse = one_block_softmax(np.array([-1.0, -2.0, -1e4, -0.5]), True, 3, s)
    np.testing.assert_allclose(s, 0.25, rtol=4 * EPS)
    np.testing.assert_allclose(lse, np.log(4.0), rtol=4 * EPS)


def test_one_block_softmax_reads_u_only():
    rng = np.random.default_rng(31)
    u = rng.standard_normal(20)
    u.flags.writeable = False
    s = np.empty(20)
    one_block_softmax(u, True, 3, s)
    np.testing.assert_allclose(s, naive.softmax(naive.relu(u)), rtol=100 * EPS)


# -- chunked_dot ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_rows", CHUNKS, ids=CHUNK_IDS)
@pytest.mark.parametrize("n", [1, 7, 10_000])
def test_chunked_dot_matches_numpy(n, chunk_rows):
    rng = np.random.default_rng(32)
    a, b = (rng.standard_normal(n) for _ in range(2))
    naive.assert_within_rounding(chunked_dot(a, b, _rows(n, chunk_rows)), a @ b, np.abs(a) @ np.abs(b), 2 * n)


# -- add_scaled (a line-search trial's u + t·Cp), scale_into (CG's first α·C·d) --------------
@pytest.mark.parametrize("chunk_rows", CHUNKS, ids=CHUNK_IDS)
@pytest.mark.parametrize("n", [0, 1, 7, 10_000])
def test_add_scaled_has_the_bits_of_numpy_multiply_then_add(n, chunk_rows, run_with_threads):
    """a + f·b rounded twice (product, then sum; no fused multiply-add), exactly NumPy's
    np.add(a, np.multiply(b, f)), with 1 and 2 threads; the inputs are only read."""
    rng = np.random.default_rng(33)
    a, b = (rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 8, n) for _ in range(2))
    a.flags.writeable = b.flags.writeable = False
    factor = 0.1 + 1e-9
    expected = np.add(a, np.multiply(b, factor))

    def run():
        out = np.full(n, np.nan)
        add_scaled(a, factor, b, _rows(n, chunk_rows), out)
        return out

    np.testing.assert_array_equal(run_with_threads(1, run), expected)
    np.testing.assert_array_equal(run_with_threads(2, run), expected)

    def run_scale():
        out = np.full(n, np.nan)
        scale_into(factor, b, _rows(n, chunk_rows), out)
        return out

    # scale_into (CG's first α·C·d): f·b rounded once, exactly NumPy's f * b
    np.testing.assert_array_equal(run_with_threads(1, run_scale), factor * b)
    np.testing.assert_array_equal(run_with_threads(2, run_scale), factor * b)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("chunk_rows", CHUNKS, ids=CHUNK_IDS)
@pytest.mark.parametrize("case", ["mixed", "nonpositive", "signed_zeros_nan", "all_nan"])
def test_a_trials_u_with_its_maximum_gives_the_log_partition_of_the_two_pass_kernel(case, chunk_rows, relu,
                                                                                      run_with_threads):
    """line_point: u = u0 + f·Cp with add_scaled's bits (NumPy's multiply, then add) and max u in one region;
    the softmax stage given that maximum (models.base.log_partition_rows with kept["u_max"], relu_max for
    ReLU(u)) runs only exp_sum_parts and gets log_partition_parts' max z, e and Σe bit for bit (1 and 2
    threads), also where no u is positive, with ±0.0 (the first of equal maxima is kept) and NaN entries."""
    from fastnewton.models import RowBlock
    from fastnewton.models.base import log_partition_rows

    rng = np.random.default_rng(34)
    n = 9_000
    u0, Cp = rng.standard_normal(n), rng.standard_normal(n)
    factor = 0.7 + 1e-9
    if case == "nonpositive":
        u0 = -np.abs(u0) - 3.0
    if case in ("signed_zeros_nan", "all_nan"):
        u0, Cp = np.where(rng.random(n) < 0.5, -0.0, 0.0), np.full(n, -0.0)  # u keeps u0's signed zeros
        u0[rng.random(n) < 0.1] = np.nan
    if case == "all_nan":
        u0[:] = np.nan
    rows = _rows(n, chunk_rows)
    expected_u = np.add(u0, np.multiply(Cp, factor))
    block = RowBlock(CSRMatrixStub(n), None, np.zeros(n), None)
    block.chunk = rows

    def run():
        u = np.empty(n)
        top = line_point(u0, factor, Cp, rows, u)
        stage, kept = log_partition_rows(block, {"u": u, "u_max": top}, relu)
        e = np.empty(n)
        expected = log_partition_parts(u, relu, rows, e)
        return u, top, stage["log_partition"], kept, expected, e

    for threads in (1, 2):
        u, top, part, kept, (zmax, total), e = run_with_threads(threads, run)
        np.testing.assert_array_equal(u, expected_u)
        assert kept["block_top"] == zmax and np.signbit(kept["block_top"]) == np.signbit(zmax)
        assert part.top == zmax and (part.total == total or (np.isnan(part.total) and np.isnan(total)))
        np.testing.assert_array_equal(kept["e"], e)


class CSRMatrixStub:
    """A matrix of n rows for a RowBlock whose stages read no C."""

    def __init__(self, n):
        self.n = n


# -- the log-partition of row blocks ---------------------------------------------------------
@pytest.mark.parametrize("relu", [False, True])
def test_blocks_log_partitions_combine_to_the_whole(relu):
    """Three blocks' parts added in order give the one-block softmax (each factor within a few eps)."""
    rng = np.random.default_rng(37)
    n = 300
    u = rng.standard_normal(n) * 5
    whole = np.empty(n)
    lse = one_block_softmax(u, relu, 7, whole)
    pieces = [slice(0, 100), slice(100, 101), slice(101, n)]
    parts = []
    for piece in pieces:
        e = np.empty(piece.stop - piece.start)
        top, total = log_partition_parts(u[piece], relu, 7, e)
        parts.append((e, top, LogPartition(top, total)))
    combined = parts[0][2] + parts[1][2] + parts[2][2]
    s = np.concatenate([e * combined.factor(top) for e, top, _ in parts])
    np.testing.assert_allclose(s, whole, rtol=8 * (n + 4) * EPS, atol=0)
    np.testing.assert_allclose(combined.top + np.log(combined.total), lse, rtol=8 * (n + 4) * EPS)


# -- softmax_regression_loss / softmax_regression_vectors -------------------------------------
def _regression_case(rng, n, weighted):
    u = _u_away_from_kink(rng, n)
    b = rng.uniform(0.0, 2.0 / n, n)
    b[rng.random(n) < 0.2] = 0.0
    w = rng.uniform(0.0, 0.5, n) if weighted else np.zeros(n)
    return u, b, w


@pytest.mark.parametrize("chunk_rows", CHUNKS, ids=CHUNK_IDS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_softmax_regression_loss_matches_naive(relu, weighted, chunk_rows):
    rng = np.random.default_rng(33)
    n = 60
    u, b, w = _regression_case(rng, n, weighted)
    model = "relu_softmax" if relu else "softmax"
    ref = 0.5 * np.sum((naive.outputs(u, model) - b) ** 2) + 0.5 * np.sum(w * u * u)
    e, scale = _parts(u, relu, _rows(n, chunk_rows))
    loss = 0.5 * softmax_regression_loss(u, e, scale, b, w, _rows(n, chunk_rows))
    # n squared residuals of values ≤ 1 and the weight terms: ≤ ~4n·eps relative to the total
    np.testing.assert_allclose(loss, ref, rtol=8 * (n + 4) * EPS)


@pytest.mark.parametrize("chunk_rows", CHUNKS, ids=CHUNK_IDS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_softmax_regression_columns_are_the_u_derivatives(relu, weighted, chunk_rows):
    rng = np.random.default_rng(34)
    n = 25
    u, b, w = _regression_case(rng, n, weighted)
    model = "relu_softmax" if relu else "softmax"
    Q = np.full((n, 3), np.nan)
    e, scale = _parts(u, relu, _rows(n, chunk_rows))
    c, gamma, loss2 = softmax_regression_columns(u, e, scale, b, w, relu, _rows(n, chunk_rows), Q)
    loss = 0.5 * loss2
    beta = _beta(Q, c, w)

    h = naive.outputs(u, model)
    r = h - b
    np.testing.assert_allclose(loss, 0.5 * r @ r + 0.5 * np.sum(w * u * u), rtol=8 * (n + 4) * EPS)
    # c and γ of SPEC §2 from the naive softmax (z-space, so masked rows contribute too)
    np.testing.assert_allclose(c, h @ r, rtol=1e3 * n * EPS, atol=1e3 * n * EPS * (h @ np.abs(r)))
    np.testing.assert_allclose(gamma, (3 * h - 2 * b) @ h, rtol=1e3 * n * EPS)

    grad_u = naive.output_jacobian(u, model).T @ r + w * u
    hess_u = naive.hessian_u(u, b, model, row_weights=w)
    S = np.array([[gamma, -1.0], [-1.0, 0.0]])
    U = Q[:, 1:]
    # the references involve O(n) sums of products of quantities ≤ 1 (s, b, r): an absolute
    # error of a few hundred n·eps relative to the largest entry covers both routes' rounding
    q = Q[:, 0] - c * Q[:, 1]
    np.testing.assert_allclose(q, grad_u, rtol=0, atol=1e3 * n * EPS * max(np.abs(grad_u).max(), 1e-300))
    H = np.diag(beta) + U @ S @ U.T
    np.testing.assert_allclose(H, hess_u, rtol=0, atol=1e3 * n * EPS * np.abs(hess_u).max())
    if relu:
        dead = u <= 0
        assert np.all(U[dead] == 0.0) and np.all(beta[dead] == w[dead])
        np.testing.assert_array_equal(q[dead], w[dead] * u[dead])


def test_softmax_regression_columns_at_huge_logits_stay_finite():
    u = np.array([1e4, 1e4 - 1.0, -1e4, 5.0])
    b = np.array([0.5, 0.3, 0.1, 0.1])
    w = np.zeros(4)
    Q = np.empty((4, 3))
    e, scale = _parts(u, False, 2)
    c, gamma, loss2 = softmax_regression_columns(u, e, scale, b, w, False, 2, Q)
    loss = 0.5 * loss2
    beta = _beta(Q, c, w)
    assert np.all(np.isfinite(Q)) and np.all(np.isfinite(beta)) and np.isfinite(c) and np.isfinite(gamma)
    np.testing.assert_allclose(Q[:, 0] - c * Q[:, 1], naive.output_jacobian(u, "softmax").T @ (naive.softmax(u) - b),
                               rtol=0, atol=64 * EPS)
    np.testing.assert_allclose(loss, 0.5 * np.sum((naive.softmax(u) - b) ** 2), rtol=64 * EPS)


@pytest.mark.parametrize("relu", [False, True])
def test_an_empty_w_gives_the_bits_of_an_all_zero_w_without_reading_u(relu, run_with_threads):
    """The kernels' empty w (``models.base.kernel_row_weights``: no row weights) leaves the w terms out: the
    loss, c, γ and β have the bits of an all-zero w, and Q too (its first column up to the sign of a zero,
    which no sum over it can show), alike with 1 and 2 threads; for softmax, u is not read at all (NaN u
    here changes nothing)."""
    rng = np.random.default_rng(35)
    n = 20_000
    u, b, _ = _regression_case(rng, n, weighted=False)
    b[rng.random(n) < 0.3] = 0.0  # rows whose q is s·(s − 0)
    chunk = _rows(n, None)
    e, scale = _parts(u, relu, chunk)
    empty = np.zeros(0)
    read_u = u if relu else np.full(n, np.nan)

    def kernels(u, w):
        Q = np.full((n, 3), np.nan)
        scalars = softmax_regression_columns(u, e, scale, b, w, relu, chunk, Q)
        loss2 = softmax_regression_loss(u, e, scale, b, w, chunk)
        return Q, scalars, loss2, _beta(Q, scalars[0], w)

    for threads in (1, 2):
        Q, scalars, loss2, beta = run_with_threads(threads, lambda: kernels(u, np.zeros(n)))
        Q_e, scalars_e, loss2_e, beta_e = run_with_threads(threads, lambda: kernels(read_u, empty))
        assert scalars_e == scalars and loss2_e == loss2
        np.testing.assert_array_equal(Q_e, Q)  # −0.0 == +0.0
        np.testing.assert_array_equal(beta_e.view(np.int64), beta.view(np.int64))  # every bit, zeros' signs too


def test_the_kernels_get_an_empty_w_exactly_when_every_row_weight_is_zero():
    from fastnewton.models.base import kernel_row_weights

    assert kernel_row_weights(np.zeros(5)).shape == (0,)
    w = np.array([0.0, 0.0, 1e-300])
    assert kernel_row_weights(w) is w
    assert kernel_row_weights(np.zeros(0)).shape == (0,)


# -- softmax_relu_columns --------------------------------------------------------------------
def _softmax_relu_inputs(u, b, V):
    """s, y, ρ, c as the kernel expects them, from the naive softmax."""
    s = naive.softmax(u)
    y = V.T @ s
    a = naive.relu_prime(y)
    r = naive.relu(y) - b
    rho = V @ (a * r)
    return s, y, rho, float(s @ rho)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("m", [1, 4])
def test_softmax_relu_columns_are_the_u_derivatives(m, weighted):
    rng = np.random.default_rng(35)
    n = 20
    u = rng.standard_normal(n) * 2
    # V uniform in [−1, 1] with one column forced negative: some outputs active, some dead
    V = rng.uniform(-1.0, 1.0, (n, m))
    if m > 1:
        V[:, 0] = -np.abs(V[:, 0])
        V[:, 1] = np.abs(V[:, 1])
    b = rng.uniform(0.0, 0.5, m)
    w = rng.uniform(0.0, 0.5, n) if weighted else np.zeros(n)
    s, y, rho, c = _softmax_relu_inputs(u, b, V)
    assert np.all(np.abs(y) > 1e-6), "outputs must be away from the ReLU kink"
    Q = np.full((n, m + 3), np.nan)
    softmax_relu_columns(u, s, rho, V, y, w, Q)
    beta = _beta(Q, c, w)

    r = naive.outputs(u, "softmax_relu", V) - b
    grad_u = naive.output_jacobian(u, "softmax_relu", V).T @ r + w * u
    hess_u = naive.hessian_u(u, b, "softmax_relu", V, row_weights=w)
    # The model weighs the output columns by a = 1[y > 0] (``SoftmaxRelu._gradient``): S = [[2c, −1], [−1, 0]] ⊕ diag(a).
    S = np.diag(np.append([0.0, 0.0], y > 0.0))
    S[:2, :2] = [[2 * c, -1.0], [-1.0, 0.0]]
    U = Q[:, 1:]
    # O(n + m) sums of products of O(1) quantities: a few hundred (n + m)·eps of the largest entry
    np.testing.assert_allclose(Q[:, 0] - c * Q[:, 1], grad_u, rtol=0,
                               atol=1e3 * (n + m) * EPS * np.abs(grad_u).max())
    np.testing.assert_allclose(np.diag(beta) + U @ S @ U.T, hess_u, rtol=0,
                               atol=1e3 * (n + m) * EPS * np.abs(hess_u).max())
    # Every output's column is ∂y_j/∂u, dead ones too (the one-sided step of ``fastnewton.active_set`` needs them).
    np.testing.assert_allclose(Q[:, 3:], naive.softmax_jacobian(naive.softmax(u)) @ V, rtol=0,
                               atol=1e3 * EPS * np.abs(V).max())


# -- determinism ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_rows", [3, None], ids=["chunk3", "real"])
def test_softmax_kernels_bitwise_equal_with_1_and_2_threads(chunk_rows, run_with_threads):
    rng = np.random.default_rng(36)
    n = 20_000
    rows = _rows(n, chunk_rows)
    u = rng.standard_normal(n) * 3
    b = rng.uniform(0, 2.0 / n, n)
    w = rng.uniform(0, 1, n)
    a, c = rng.standard_normal(n) * np.exp(rng.uniform(-10, 10, n)), rng.standard_normal(n)

    def everything():
        s = np.empty(n)
        lse = one_block_softmax(u, True, rows, s)
        e, scale = _parts(u, False, rows)
        loss = softmax_regression_loss(u, e, scale, b, w, rows)
        Q = np.empty((n, 3))
        e, scale = _parts(u, True, rows)
        scalars = softmax_regression_columns(u, e, scale, b, w, True, rows, Q)
        beta = _beta(Q, scalars[0], w)
        dots = chunked_dot(a, c, rows)
        return s, np.array([lse, loss, *scalars, dots]), Q, beta

    one = run_with_threads(1, everything)
    two = run_with_threads(2, everything)
    for x1, x2 in zip(one, two):
        np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("values", [[0.3, -0.2, 0.0, 0.9, 0.1], [-1.0, -0.5, 0.0], [2.5], [0.0, 0.0], [-3.0],
                                    list(np.linspace(-1.0, 2.0, 8)), list(np.linspace(-0.5, 3.0, 23))])
def test_target_summary_matches_numpy(values):
    """max, min and least positive entry (inf when none is positive), exactly as NumPy's reductions, and ‖b‖² in
    its fixed order: lane j sums b[j + 8t]² over t (lengths from 1 to 23: no full group, groups, a tail)."""
    b = np.array(values)
    positive = b[b > 0.0]
    top, bottom, least_positive, squares = target_summary(b)
    assert (top, bottom, least_positive) == (b.max(), b.min(), positive.min() if positive.size else np.inf)
    full = len(b) - len(b) % 8
    lanes = [sum(b[j:full:8] ** 2, 0.0) for j in range(8)]  # each lane in increasing t, from 0.0
    expected = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    for value in b[full:]:
        expected += value * value
    assert squares == expected
    assert squares == pytest.approx(float(b @ b), rel=1e-14, abs=0.0)  # another order: n·eps apart at most


def test_target_summary_squares_overflow_to_inf_silently():
    """‖b‖² of a target near the largest floats is inf (the rounding tests' scale), with no warning from the compiled
    kernel nor from ``Softmax.facts`` (whose pure-Python kernel, under NUMBA_DISABLE_JIT, overflows NumPy scalars)."""
    from fastnewton.models.softmax import Softmax

    b = np.array([1e200, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Softmax().facts(types.SimpleNamespace(b=b))["b_squared"] == np.inf
        if not numba.config.DISABLE_JIT:
            assert target_summary(b)[3] == np.inf
