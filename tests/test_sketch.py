"""Leverage-score sampling of Cᵀ diag(β) C (fastnewton/sketching.py, SPEC §3 ``sketch``) and the
kernels it runs on: kernels/sketch.py (bucket_members, csr_embed, dense_embed),
csr_sandwich_rows (kernels/sandwich.py) and csr_matmat (kernels/csr.py), through
CSRMatrix / DenseMatrix (``embed``, ``sandwich_rows``, ``matmat``).

1. Kernels against NumPy one-liners (explicit dense S, Σ_t w_t c c ᵀ, C @ Z), with the rounding bound of
   naive.assert_within_rounding, and bitwise equality with 1 and 2 Numba threads.
2. Approximate ridge leverage scores against exact ones computed densely.
3. Spectral accuracy: every eigenvalue of H̃^{-1/2} H H̃^{-1/2} in [1 − ε, 1 + ε] in ≥ 95 % of seeds,
   including matrices whose rows have very uneven leverage, where uniform row sampling with
   the same expected number of rows fails: the leverage scores are what makes it work.
"""
import math

import numba
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import threadpoolctl
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnewton
import naive
from fastnewton.kernels.csr import csr_matmat
from fastnewton.kernels.sandwich import csr_sandwich_rows, partials_shape
from fastnewton.kernels.sketch import bucket_members
from fastnewton.matrix import DENSE_SANDWICH_BLOCK, DENSE_ROW_MIN_NNZ, CSRMatrix, DenseMatrix
from fastnewton.sketching import (
    CENTRING_MIN_RATIO,
    CentredRows,
    JL_DIM,
    OSNAP_NNZ,
    REFERENCE_SPREAD,
    LeverageReference,
    embedding_factor,
    leverage_scores,
    sample_rows,
    sample_size,
    sampled_sandwich,
    worth_centring,
)
from fastnewton.threads import thread_limits
from fastnewton.validation import as_input_matrix

DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]
EPS = 0.5
SEEDS = range(20)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def osnap_table(rng, n, m, s=OSNAP_NNZ):
    """(buckets, signs) of an OSNAP embedding: s output rows and signs per input row, as sketching draws them."""
    return rng.integers(0, m, size=(n, s)), rng.choice(np.array([-1.0, 1.0]), size=(n, s))


def explicit_sketch(buckets, signs, m):
    """The m × n matrix S with S[bucket, i] += sign/√s for every slot of row i (collisions add up)."""
    n, s = buckets.shape
    S = np.zeros((m, n))
    np.add.at(S, (buckets.ravel(), np.repeat(np.arange(n), s)), signs.ravel() / math.sqrt(s))
    return S


def exact_ridge_leverage(A, beta, l2):
    """ℓᵢ = bᵢᵀ (BᵀB + λI)⁻¹ bᵢ with B = diag(√|β|) A, by a dense solve (the definition)."""
    B = np.sqrt(np.abs(beta))[:, None] * A
    K = B.T @ B + l2 * np.eye(A.shape[1])
    return np.einsum("ij,ji->i", B, np.linalg.solve(K, B.T))


def relative_eigenvalues(H, H_tilde):
    """Eigenvalues of H̃^{-1/2} H H̃^{-1/2}, i.e. θ with H v = θ H̃ v (+inf where H̃ misses a direction of H).

    Computed as the reciprocals of the eigenvalues of L⁻¹ H̃ L⁻ᵀ (H = LLᵀ, always positive definite
    here), which exists even when a bad sample leaves H̃ singular.
    """
    L = np.linalg.cholesky(H)
    M = scipy.linalg.solve_triangular(L, scipy.linalg.solve_triangular(L, H_tilde, lower=True).T, lower=True)
    mu = np.linalg.eigvalsh(0.5 * (M + M.T))
    with np.errstate(divide="ignore"):
        return np.sort(np.where(mu > 0.0, 1.0 / np.where(mu > 0.0, mu, 1.0), np.inf))


def worst_deviation(H, H_tilde):
    """max |θ − 1| over the eigenvalues θ of H̃^{-1/2} H H̃^{-1/2}."""
    return float(np.max(np.abs(relative_eigenvalues(H, H_tilde) - 1.0)))


def uniform_sandwich(matrix, beta, s, rng):
    """The same Poisson estimator with uniform πᵢ = min(1, s/n): same expected number of rows, no leverage."""
    pi = min(1.0, s / matrix.n)
    kept = np.flatnonzero(rng.random(matrix.n) < pi)
    return matrix.sandwich_rows(kept, beta[kept] / pi)


def blas_can_use_two_threads():
    return any(info["user_api"] == "blas" and info["num_threads"] >= 2
               for info in threadpoolctl.threadpool_info())


# ---------------------------------------------------------------------------------------------
# bucket_members: a stable counting sort of the bucket table
# ---------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), s=st.integers(1, 5), m=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_bucket_members_is_a_stable_counting_sort(n, s, m, seed):
    buckets = np.random.default_rng(seed).integers(0, m, size=(n, s))
    ptr, member = bucket_members(buckets, m)
    flat = buckets.ravel()
    np.testing.assert_array_equal(ptr, np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=m))]))
    # Stable: within a bucket the flat indices t = row·s + slot come in increasing order,
    # which is what fixes the summation order of csr_embed / dense_embed.
    np.testing.assert_array_equal(member, np.argsort(flat, kind="stable"))
    assert ptr.dtype == np.int64 and member.dtype == np.int64


def test_bucket_members_empty_buckets_and_collisions():
    # Row 0 lands twice in bucket 2 (a collision, both slots kept), bucket 1 and 3 stay empty.
    buckets = np.array([[2, 2], [0, 2], [4, 0]])
    ptr, member = bucket_members(buckets, 5)
    np.testing.assert_array_equal(ptr, [0, 2, 2, 5, 5, 6])
    np.testing.assert_array_equal(member, [2, 5, 0, 1, 3, 4])


# ---------------------------------------------------------------------------------------------
# embed: S · diag(scale) · C for an explicit OSNAP matrix S
# ---------------------------------------------------------------------------------------------
def _embed_inputs(rng, n, m, s=OSNAP_NNZ):
    buckets, signs = osnap_table(rng, n, m, s)
    scale = np.sqrt(rng.exponential(size=n))
    scale[rng.random(n) < 0.2] = 0.0  # β = 0 rows contribute nothing
    ptr, member = bucket_members(buckets, m)
    # Exactly what leverage_scores hands to the kernels.
    scaled_signs = (signs * (scale[:, None] / math.sqrt(s))).ravel()
    return buckets, signs, scale, ptr, member, scaled_signs


def _check_embed(out, A, A_abs, buckets, signs, scale, m):
    ref = explicit_sketch(buckets, signs, m) @ (scale[:, None] * A)
    # |S| slot by slot: two slots of one row in the same bucket with opposite signs cancel in S
    # but are still two rounded terms in the kernel's sum.
    bound_scale = explicit_sketch(buckets, np.abs(signs), m) @ (scale[:, None] * A_abs)
    # Each entry sums at most n·s products, each of three rounded factors.
    naive.assert_within_rounding(out, ref, bound_scale, A.shape[0] * buckets.shape[1] + 3)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_embed_matches_explicit_sketch(dtype, index_dtype, csr_case, random_csr):
    rng = np.random.default_rng(30)
    n, d, m = 60, 9, 7  # m small: many rows share a bucket, and slots of one row collide
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, max_per_row=5,
                                       **csr_case)
    C = CSRMatrix(indptr, indices, data, (n, d))
    buckets, signs, scale, ptr, member, scaled_signs = _embed_inputs(rng, n, m)
    out = C.embed(scaled_signs, OSNAP_NNZ, ptr, member, m)
    A = naive.to_dense(indptr, indices, data, (n, d))
    A_abs = naive.to_dense(indptr, indices, np.abs(data), (n, d))
    _check_embed(out, A, A_abs, buckets, signs, scale, m)
    unused = ~np.any(A_abs > 0, axis=0)
    assert np.all(out[:, unused] == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_embed_matches_explicit_sketch(dtype):
    rng = np.random.default_rng(31)
    n, d, m = 80, 6, 11
    A = rng.standard_normal((n, d)).astype(dtype)
    A[5] = 0.0
    C = DenseMatrix(A)
    buckets, signs, scale, ptr, member, scaled_signs = _embed_inputs(rng, n, m)
    out = C.embed(scaled_signs, OSNAP_NNZ, ptr, member, m)
    A64 = A.astype(np.float64)
    _check_embed(out, A64, np.abs(A64), buckets, signs, scale, m)


@pytest.mark.parametrize("rows_per_block", [1, 7, 60, 1000])
def test_blocked_bucket_order_gives_the_same_bits_as_one_block(rows_per_block, random_csr):
    # Row blocks keep each output row's terms in increasing row order, so blocking is a pure
    # cache optimisation: the embedding must not change by a single bit, dense or CSR.
    rng = np.random.default_rng(33)
    n, d, m = 60, 9, 7
    indptr, indices, data = random_csr(rng, n, d, max_per_row=5)
    buckets, signs, scale, ptr, member, scaled_signs = _embed_inputs(rng, n, m)
    blocked_ptr, blocked_member = bucket_members(buckets, m, rows_per_block)
    n_blocks = -(-n // rows_per_block)
    assert blocked_ptr.shape[0] == n_blocks * m + 1
    for matrix in (CSRMatrix(indptr, indices, data, (n, d)),
                   DenseMatrix(naive.to_dense(indptr, indices, data, (n, d)))):
        one = matrix.embed(scaled_signs, OSNAP_NNZ, ptr, member, m)
        blocked = matrix.embed(scaled_signs, OSNAP_NNZ, blocked_ptr, blocked_member, m)
        assert np.array_equal(one, blocked)


def test_embed_with_one_slot_and_empty_buckets_is_a_signed_scatter():
    # s = 1: S has one ±1 per column; an empty bucket gives an exact zero row.
    A = np.arange(12.0).reshape(4, 3)
    buckets = np.array([[0], [2], [0], [2]])
    ptr, member = bucket_members(buckets, 3)
    scaled_signs = np.array([1.0, -2.0, 0.5, 1.0])
    for C in (DenseMatrix(A), as_input_matrix(sp.csr_matrix(A))):
        out = C.embed(scaled_signs, 1, ptr, member, 3)
        np.testing.assert_array_equal(out, [A[0] + 0.5 * A[2], np.zeros(3), -2.0 * A[1] + A[3]])


# ---------------------------------------------------------------------------------------------
# sandwich_rows: Σ_t w_t c_{r_t} c_{r_t}ᵀ, repeated rows included
# ---------------------------------------------------------------------------------------------
def _rows_and_weights(rng, n, count):
    rows = rng.integers(0, n, size=count)
    rows[: count // 4] = rows[0]  # the same row listed many times: each listing adds its own term
    weights = rng.standard_normal(count) * rng.exponential(size=count)
    weights[rng.random(count) < 0.2] = 0.0
    return rows.astype(np.int64), weights


def _check_sandwich_rows(out, A, A_abs, rows, weights, per_row):
    ref = naive.sandwich(A[rows], weights)
    bound_scale = A_abs[rows].T @ (np.abs(weights)[:, None] * A_abs[rows])
    naive.assert_within_rounding(out, ref, bound_scale, rows.shape[0] * per_row**2 + 2)
    np.testing.assert_array_equal(out, out.T)


@pytest.mark.parametrize("chunk_rows", [1, 3, None], ids=["chunk1", "chunk3", "real"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_sandwich_rows_matches_outer_products(dtype, index_dtype, chunk_rows, csr_case, random_csr):
    rng = np.random.default_rng(32)
    n, d, per_row = 40, 8, 6
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, max_per_row=per_row,
                                       **csr_case)
    rows, weights = _rows_and_weights(rng, n, 50)
    A = naive.to_dense(indptr, indices, data, (n, d))
    A_abs = naive.to_dense(indptr, indices, np.abs(data), (n, d))
    if chunk_rows is None:
        out = CSRMatrix(indptr, indices, data, (n, d)).sandwich_rows(rows, weights)
    else:
        out = np.full((d, d), np.nan)
        csr_sandwich_rows(indptr, indices, data, rows, weights, chunk_rows,
                          np.empty(partials_shape(rows.shape[0], chunk_rows, d)), out)
    _check_sandwich_rows(out, A, A_abs, rows, weights, per_row)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_sandwich_rows_matches_outer_products(dtype):
    rng = np.random.default_rng(33)
    n, d = 50, 7
    A = rng.standard_normal((n, d)).astype(dtype)
    rows, weights = _rows_and_weights(rng, n, 64)
    out = DenseMatrix(A).sandwich_rows(rows, weights)
    A64 = A.astype(np.float64)
    _check_sandwich_rows(out, A64, np.abs(A64), rows, weights, d)


def test_dense_sandwich_rows_over_several_gemm_blocks():
    rng = np.random.default_rng(34)
    n, d = 300, 3
    A = rng.standard_normal((n, d))
    rows = rng.integers(0, n, size=DENSE_SANDWICH_BLOCK + 7)
    weights = rng.standard_normal(rows.shape[0])
    out = DenseMatrix(A).sandwich_rows(rows, weights)
    _check_sandwich_rows(out, A, np.abs(A), rows, weights, d)


def test_sandwich_rows_of_no_rows_is_zero():
    A = np.random.default_rng(35).standard_normal((10, 4))
    empty_rows, empty_weights = np.zeros(0, dtype=np.int64), np.zeros(0)
    for C in (DenseMatrix(A), as_input_matrix(sp.csr_matrix(A))):
        np.testing.assert_array_equal(C.sandwich_rows(empty_rows, empty_weights), np.zeros((4, 4)))


def test_sandwich_rows_of_every_row_once_is_the_sandwich(random_csr):
    rng = np.random.default_rng(36)
    n, d = 30, 6
    indptr, indices, data = random_csr(rng, n, d, duplicates=True, unsorted=True)
    beta = rng.standard_normal(n)
    C = CSRMatrix(indptr, indices, data, (n, d))
    # Same pairwise scheme, same chunking over the same rows: the same bits.
    np.testing.assert_array_equal(C.sandwich_rows(np.arange(n), beta), C.sandwich(beta))


# ---------------------------------------------------------------------------------------------
# matmat: C @ Z for a thin Z
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r", [1, JL_DIM])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_matmat_matches_numpy(dtype, index_dtype, r, csr_case, random_csr):
    rng = np.random.default_rng(37)
    n, d, per_row = 45, 8, 6
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, index_dtype=index_dtype, max_per_row=per_row,
                                       **csr_case)
    Z = rng.standard_normal((d, r))
    A = naive.to_dense(indptr, indices, data, (n, d))
    A_abs = naive.to_dense(indptr, indices, np.abs(data), (n, d))
    out = np.full((n, r), np.nan)
    csr_matmat(indptr, indices, data, Z, out)
    naive.assert_within_rounding(out, A @ Z, A_abs @ np.abs(Z), per_row)
    # Through CSRMatrix, with an F-ordered Z (the solve_triangular output is F-ordered).
    via_matrix = CSRMatrix(indptr, indices, data, (n, d)).matmat(np.asfortranarray(Z))
    np.testing.assert_array_equal(via_matrix, out)
    assert np.all(out[np.diff(indptr) == 0] == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matmat_matches_numpy(dtype):
    rng = np.random.default_rng(38)
    n, d, r = DENSE_SANDWICH_BLOCK + 5, 5, JL_DIM  # two GEMM blocks
    A = rng.standard_normal((n, d)).astype(dtype)
    Z = np.asfortranarray(rng.standard_normal((d, r)))
    A64 = A.astype(np.float64)
    naive.assert_within_rounding(DenseMatrix(A).matmat(Z), A64 @ Z, np.abs(A64) @ np.abs(Z), d)


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------
def _sketch_outputs(seed=40):
    """Every kernel and matrix operation of the sketch on inputs big enough for several chunks."""
    rng = np.random.default_rng(seed)
    n, d = 3000, 12
    csr = as_input_matrix(sp.random(n, d, density=0.4, random_state=seed, format="csr"))
    dense = DenseMatrix(rng.standard_normal((n, d)))
    m = 4 * d
    buckets, _, _, ptr, member, scaled_signs = _embed_inputs(rng, n, m)
    rows, weights = _rows_and_weights(rng, n, 2000)
    Z = rng.standard_normal((d, JL_DIM))
    beta = rng.exponential(size=n)
    out = {"bucket_members": np.concatenate(bucket_members(buckets, m))}
    for name, C in (("csr", csr), ("dense", dense)):
        out[name + ".embed"] = C.embed(scaled_signs, OSNAP_NNZ, ptr, member, m)
        out[name + ".matmat"] = C.matmat(Z)
        out[name + ".sandwich_rows"] = C.sandwich_rows(rows, weights)
        out[name + ".leverage_scores"] = leverage_scores(C, beta, 0.0, np.random.default_rng(1))
        out[name + ".sampled_sandwich"] = sampled_sandwich(C, beta, 0.0, 500, np.random.default_rng(1))[0]
        out[name + ".row_squares"] = C.row_squares(1.0 + np.arange(d))
        out[name + ".sandwich_rows_and_absolute"] = np.stack(C.sandwich_rows_and_absolute(rows, weights))
        # Two iterations of one reference, the second after β moved far enough to refresh it.
        reference, reference_rng = LeverageReference(), np.random.default_rng(2)
        moved = beta * np.exp(3.0 * np.random.default_rng(3).standard_normal(n))
        out[name + ".reference"] = np.stack([sampled_sandwich(C, w, 0.0, 500, reference_rng, reference)[0]
                                             for w in (beta, moved)])
        # The same on the centred rows cᵢ − μ (CentredRows), μ the column mean (the reference's scale assumes it).
        mean = C.rows(np.arange(n)).mean(axis=0)
        centred = CentredRows(C, mean)
        out[name + ".centred.embed"] = centred.embed(scaled_signs, OSNAP_NNZ, ptr, member, m)
        out[name + ".centred.matmat"] = centred.matmat(Z)
        out[name + ".centred.row_squares"] = centred.row_squares(1.0 + np.arange(d))
        out[name + ".centred.sandwich_rows_and_absolute"] = np.stack(centred.sandwich_rows_and_absolute(rows, weights))
        reference, reference_rng = LeverageReference(), np.random.default_rng(2)
        out[name + ".centred.reference"] = np.stack([
            sampled_sandwich(C, w, 0.0, 500, reference_rng, reference, mean)[0] for w in (beta, moved)])
        out[name + ".centred.fresh"] = sampled_sandwich(C, beta, 0.0, 500, np.random.default_rng(1), None, mean)[0]
    chunked = np.empty((d, d))
    csr_sandwich_rows(csr.indptr, csr.indices, csr.data, rows, weights, 7, np.empty(partials_shape(rows.shape[0], 7, d)),
                      chunked)
    out["csr_sandwich_rows.chunk7"] = chunked
    return out


def test_sketch_kernels_bitwise_equal_with_1_and_2_threads(run_with_threads):
    one = run_with_threads(1, _sketch_outputs)
    two = run_with_threads(2, _sketch_outputs)
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2 or not blas_can_use_two_threads(),
                    reason="needs 2 Numba and 2 BLAS threads")
def test_dense_sandwich_bitwise_equal_with_1_and_2_blas_threads():
    """The dense sandwich is a BLAS GEMM: OpenBLAS splits a 3000-row reduction differently over 1 and 2
    threads (measured: a plain A.T @ A of 3000 × 30 differs in the last bits), so DenseMatrix must pin
    each block's GEMM to one BLAS thread to keep sketch/pcg solves on dense C reproducible (STYLE 7)."""
    rng = np.random.default_rng(41)
    A = rng.standard_normal((3000, 30))
    C = DenseMatrix(A)
    w = rng.exponential(size=3000)
    rows = rng.integers(0, 3000, size=3000)

    def run(n_threads):
        with thread_limits(n_threads):
            return C.sandwich(w), C.sandwich_rows(rows, w)

    (full_1, rows_1), (full_2, rows_2) = run(1), run(2)
    assert np.array_equal(rows_1, rows_2), "sandwich_rows"
    assert np.array_equal(full_1, full_2), "sandwich"


# ---------------------------------------------------------------------------------------------
# Sample size and Poisson sampling
# ---------------------------------------------------------------------------------------------
def test_sample_size_formula():
    # s = ⌈3·d·log(d/0.1)/ε²⌉, at least d + 1, log argument at least e.
    assert sample_size(20, 0.5) == math.ceil(3 * 20 * math.log(200) / 0.25) == 1272
    assert sample_size(1, 0.99) == math.ceil(3 * math.log(10) / 0.99**2)
    assert sample_size(1000, 0.999) > 1000 + 1
    assert sample_size(2, 0.5) >= 3
    for d in (5, 50, 500):
        assert sample_size(d, 0.25) > sample_size(d, 0.5) > sample_size(d, 0.9) >= d + 1
        assert sample_size(2 * d, 0.5) > 2 * sample_size(d, 0.5) - 1


def test_sample_rows_is_poisson_with_capped_probabilities():
    rng = np.random.default_rng(50)
    n, s = 2000, 100
    scores = rng.exponential(size=n) ** 2
    scores[:20] = 0.0  # never drawn
    scores[20:25] = 1e3 * scores.sum()  # π = 1: always drawn
    pi_all = np.minimum(1.0, s * scores / scores.sum())
    counts = np.zeros(n)
    draws = 300
    for seed in range(draws):
        kept, pi = sample_rows(scores, s, np.random.default_rng(seed))
        assert np.all(np.diff(kept) > 0)
        np.testing.assert_array_equal(pi, pi_all[kept])
        assert np.all(np.isin(np.arange(20, 25), kept))
        assert not np.any(kept < 20)
        counts[kept] += 1
    # Mean number of rows kept = Σπ ≤ s; 5 standard errors of the mean.
    expected = pi_all.sum()
    sd = math.sqrt(np.sum(pi_all * (1 - pi_all)) / draws)
    assert abs(counts.sum() / draws - expected) <= 5 * sd
    assert expected <= s


def test_sample_rows_with_no_positive_score_keeps_nothing():
    kept, pi = sample_rows(np.zeros(10), 5, np.random.default_rng(0))
    assert kept.shape == (0,) and pi.shape == (0,) and kept.dtype == np.int64


def test_sampled_sandwich_is_unbiased_with_signed_beta():
    """E[CᵀD̃C] = Cᵀ diag(β) C: the mean of 100 draws is 10× closer than one draw (errors whitened by Cᵀ|D|C).

    One draw is off by ~0.3 here (s = 100 ≪ n); the mean by ~0.03 = 0.3/√100. Weights βᵢ/πᵢ² or βᵢ
    instead of βᵢ/πᵢ would leave an O(1) bias.
    """
    rng = np.random.default_rng(51)
    n, d, s = 2000, 6, 100
    C = DenseMatrix(rng.standard_normal((n, d)) * np.exp(rng.standard_normal(n))[:, None])
    beta = rng.standard_normal(n)
    H = C.sandwich(beta)
    L = np.linalg.cholesky(C.sandwich(np.abs(beta)))

    def whitened_error(M):
        E = scipy.linalg.solve_triangular(L, scipy.linalg.solve_triangular(L, M - H, lower=True).T, lower=True)
        return float(np.max(np.abs(np.linalg.eigvalsh(0.5 * (E + E.T)))))

    draws = [sampled_sandwich(C, beta, 0.0, s, np.random.default_rng(seed)) for seed in range(100)]
    assert all(0 < kept <= s + 5 * math.sqrt(s) for _, kept in draws)
    single = np.median([whitened_error(M) for M, _ in draws[:10]])
    mean_error = whitened_error(np.mean([M for M, _ in draws], axis=0))
    assert single > 0.1
    assert mean_error <= 0.1
    assert mean_error <= single / 3


# ---------------------------------------------------------------------------------------------
# Test matrices: generic and with very uneven leverage
# ---------------------------------------------------------------------------------------------
def _dense_gaussian(rng):
    n, d = 20_000, 20
    beta = rng.exponential(size=n)
    beta[rng.random(n) < 0.1] = 0.0
    return rng.standard_normal((n, d)), beta, 0.0


def _csr_ridge(rng):
    """CSR, 10 entries per row, heavy-tailed β ≥ 0 with zeros, and a ridge λ (ridge leverage scores)."""
    n, d, k = 20_000, 40, 10
    columns = np.sort(rng.integers(0, d, size=(n, k)), axis=1)
    C = sp.csr_matrix((rng.standard_normal(n * k), columns.ravel(), np.arange(0, n * k + 1, k)), shape=(n, d))
    C.sum_duplicates()
    beta = rng.exponential(size=n) ** 3
    beta[rng.random(n) < 0.3] = 0.0
    l2 = 0.05 * float(np.median(np.linalg.eigvalsh((C.T @ C.multiply(beta[:, None])).toarray())))
    return C, beta, l2


def _dense_uneven(rng):
    """Most rows tiny (norm ~0.04), d rows 1000× larger: those d rows carry almost all of H."""
    n, d = 20_000, 20
    A = 1e-2 * rng.standard_normal((n, d))
    A[rng.choice(n, size=d, replace=False)] = 10.0 * rng.standard_normal((d, d))
    return A, rng.exponential(size=n), 0.0


def _csr_lonely_columns(rng):
    """Bulk rows use columns 0..19; each of columns 20..29 is touched by one row only (leverage 1)."""
    n, d, bulk_d, k = 20_000, 30, 20, 3
    columns = np.sort(np.argsort(rng.random((n, bulk_d)), axis=1)[:, :k], axis=1)
    values = rng.standard_normal((n, k))
    lonely_rows = rng.choice(n, size=d - bulk_d, replace=False)
    rows = np.concatenate([np.repeat(np.arange(n), k), lonely_rows])
    cols = np.concatenate([columns.ravel(), np.arange(bulk_d, d)])
    vals = np.concatenate([values.ravel(), rng.standard_normal(d - bulk_d)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, d)), rng.exponential(size=n), 0.0


CASES = {
    "dense_gaussian": _dense_gaussian,
    "csr_ridge": _csr_ridge,
    "dense_uneven_rows": _dense_uneven,
    "csr_lonely_columns": _csr_lonely_columns,
}
UNEVEN_CASES = ["dense_uneven_rows", "csr_lonely_columns"]
_CACHE = {}


def spectral_case(name):
    """(matrix, β, λ, H + λI, s, leverage-sampling deviations per seed), computed once per module."""
    if name not in _CACHE:
        C, beta, l2 = CASES[name](np.random.default_rng(sorted(CASES).index(name)))
        matrix = as_input_matrix(C)
        H = matrix.sandwich(beta) + l2 * np.eye(matrix.d)
        s = sample_size(matrix.d, EPS)
        deviations = []
        for seed in SEEDS:
            H_tilde, _ = sampled_sandwich(matrix, beta, l2, s, np.random.default_rng(seed))
            deviations.append(worst_deviation(H, H_tilde + l2 * np.eye(matrix.d)))
        _CACHE[name] = (matrix, beta, l2, H, s, np.array(deviations))
    return _CACHE[name]


# ---------------------------------------------------------------------------------------------
# Leverage scores
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [False, True], ids=["beta>=0", "signed_beta"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_leverage_scores_approximate_exact_ridge_scores(name, signed):
    """ℓ̃ᵢ/ℓᵢ within a factor 4 for ≥ 90 % of rows, within 20 for all, Σℓ̃ within [0.75, 2.5]·d_eff.

    ℓ̃ᵢ = ‖(B R⁻¹ G)ᵢ‖²/JL_DIM is ℓᵢ times (a) a χ²₁₆/16 draw from the Gaussian G (JL_DIM = 16;
    P(χ²₁₆/16 < 1/4) = 1.1e-3, P(> 4/1.7) = 1.7e-3) and (b) the distortion of the OSNAP embedding
    with 4d rows, which over-estimates by ~1.1–1.9×. Measured on these four matrices over 50 seeds:
    ≥ 97.9 % of rows within 4×, extreme ratios 0.08–6.7, Σℓ̃/d_eff in [1.12, 1.88] (and ≥ 93 % within 4×
    on a harsher uneven matrix). Σℓ = d_eff = tr(BᵀB(BᵀB + λI)⁻¹) ≤ d. Rows with β = 0 must get
    exactly 0; a signed β must give the scores of |β|.
    """
    matrix, beta, l2, _, _, _ = spectral_case(name)
    if signed:
        beta = beta * np.random.default_rng(60).choice([-1.0, 1.0], size=beta.shape[0])
    A = matrix.rows(np.arange(matrix.n))
    exact = exact_ridge_leverage(A, beta, l2)
    d_eff = exact.sum()
    assert d_eff <= matrix.d + 1e-9
    zero = beta == 0.0
    for seed in range(3):
        approx = leverage_scores(matrix, beta, l2, np.random.default_rng(seed))
        assert approx.shape == (matrix.n,) and np.all(approx >= 0.0)
        assert np.all(approx[zero] == 0.0)
        ratio = approx[~zero] / exact[~zero]
        within_4 = np.mean((ratio >= 0.25) & (ratio <= 4.0))
        assert within_4 >= 0.9, (seed, within_4)
        assert ratio.min() >= 1 / 20 and ratio.max() <= 20, (seed, ratio.min(), ratio.max())
        assert 0.75 * d_eff <= approx.sum() <= 2.5 * d_eff, (seed, approx.sum(), d_eff)


def test_leverage_scores_find_the_rows_that_alone_span_a_column():
    # A row that is the only one touching a column has ℓ = 1 (exactly, for λ → 0); every other
    # row's ℓ is ~20/20000. With ~30 expected rows per unit of Σℓ̃/s the lonely rows must be kept for sure.
    matrix, beta, l2, _, s, _ = spectral_case("csr_lonely_columns")
    lonely = np.flatnonzero(np.asarray(matrix.scipy()[:, 20:].getnnz(axis=1)) > 0)
    assert lonely.shape == (10,)
    scores = leverage_scores(matrix, beta, l2, np.random.default_rng(0))
    assert np.all(np.minimum(1.0, s * scores[lonely] / scores.sum()) == 1.0)
    bulk = np.setdiff1d(np.arange(matrix.n), lonely)
    assert scores[lonely].min() > 50 * np.median(scores[bulk])


# ---------------------------------------------------------------------------------------------
# Spectral accuracy of the sampled sandwich
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_sampled_sandwich_is_an_eps_spectral_approximation(name):
    """Every eigenvalue of H̃^{-1/2} H H̃^{-1/2} in [1 − ε, 1 + ε] in ≥ 19 of 20 seeds (ε = 0.5, s = sample_size(d, ε)).

    H = Cᵀ diag(β) C + λI exactly (matrix.sandwich), H̃ = sampled sandwich + λI. Measured over 200
    seeds: failures 0 (dense_gaussian, csr_ridge), 2 (dense_uneven_rows), 3 (csr_lonely_columns);
    median max|θ − 1| 0.11–0.26. With ≤ 1.5 % failures per seed, ≥ 2 of 20 happens with ~4 %
    probability for an arbitrary random stream; seeds 0–19 give 0 failures in every case.
    """
    _, _, _, _, s, deviations = spectral_case(name)
    failures = int(np.sum(deviations > EPS))
    assert failures <= 1, (failures, deviations)


@pytest.mark.parametrize("name", UNEVEN_CASES)
def test_uniform_sampling_fails_where_leverage_sampling_succeeds(name):
    """Same Poisson estimator, same expected number of rows s, but πᵢ = s/n: the few high-leverage
    rows are missed (each kept with probability s/n ≈ 0.06–0.1), so H̃ misses whole directions.

    Measured over 50 seeds: uniform fails the interval in 50 of 50 on both matrices (median max|θ − 1|
    ∞ with the lonely columns, 5e3 with the uneven rows), leverage sampling in ≤ 1.5 % (median 0.26 / 0.11).
    """
    matrix, beta, l2, H, s, leverage_deviations = spectral_case(name)
    uniform_deviations = np.array([
        worst_deviation(H, uniform_sandwich(matrix, beta, s, np.random.default_rng(seed)) + l2 * np.eye(matrix.d))
        for seed in SEEDS])
    assert np.sum(uniform_deviations > EPS) >= 15, uniform_deviations
    assert np.median(uniform_deviations) >= 5 * np.median(leverage_deviations), (
        np.median(uniform_deviations), np.median(leverage_deviations))


def test_uniform_sampling_is_fine_on_incoherent_rows():
    """Control for the test above: on i.i.d. Gaussian rows every row has leverage ≈ d/n, so uniform
    sampling only lacks the β weighting and stays close (measured over 100 seeds: max|θ − 1| ≤ 0.60,
    median 0.40, against 0.26 for leverage) — the failures above come from the uneven rows."""
    matrix, beta, l2, H, s, leverage_deviations = spectral_case("dense_gaussian")
    uniform_deviations = [worst_deviation(H, uniform_sandwich(matrix, beta, s, np.random.default_rng(seed)))
                          for seed in range(5)]
    assert max(uniform_deviations) < 1.0
    assert np.max(leverage_deviations) < EPS


# ---------------------------------------------------------------------------------------------
# A leverage reference kept across iterations (LeverageReference)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_squares_and_matvec_are_the_two_passes_bit_for_bit(dtype, random_csr, run_with_threads):
    """``row_squares_and_matvec`` (the sampled start's second read of C: the first reference's row factors
    and C·D⁻²μ together): the bits of ``row_squares`` and ``matvec``, with one thread as with two; widths
    with every remainder mod 4 (the four partial sums' tails)."""
    rng = np.random.default_rng(71)
    for d in (8, 9, 10, 11):
        A = rng.standard_normal((301, d)).astype(dtype)
        A[::7] = 0.0
        w, x = rng.exponential(size=d), rng.standard_normal(d)
        indptr, indices, data = random_csr(rng, 300, d, dtype=dtype, empty_rows=True, zero_columns=True)
        for matrix in (DenseMatrix(A), CSRMatrix(indptr, indices, data, (300, d))):
            squares, product = run_with_threads(2, lambda: matrix.row_squares_and_matvec(w, x))
            assert np.array_equal(squares, matrix.row_squares(w)) and np.array_equal(product, matrix.matvec(x))
            one = run_with_threads(1, lambda: matrix.row_squares_and_matvec(w, x))
            assert np.array_equal(one[0], squares) and np.array_equal(one[1], product)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_squares_match_numpy(dtype, random_csr):
    rng = np.random.default_rng(70)
    A = rng.standard_normal((DENSE_SANDWICH_BLOCK + 7, 9)).astype(dtype)
    w = rng.exponential(size=9)
    A64 = A.astype(np.float64)
    naive.assert_within_rounding(DenseMatrix(A).row_squares(w), (A64 * A64) @ w, (A64 * A64) @ w, 9 * 2)
    n, d = 300, 9
    indptr, indices, data = random_csr(rng, n, d, dtype=dtype, empty_rows=True, zero_columns=True)
    dense = naive.to_dense(indptr, indices, data, (n, d))
    expected = (dense * dense) @ w
    naive.assert_within_rounding(CSRMatrix(indptr, indices, data, (n, d)).row_squares(w), expected, expected, 9 * 2)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_sandwich_rows_and_absolute_is_the_signed_and_the_absolute_sandwich(fmt, random_csr):
    rng = np.random.default_rng(71)
    n, d = DENSE_SANDWICH_BLOCK + 50, 6
    if fmt == "dense":
        C = DenseMatrix(rng.standard_normal((n, d)))
    else:
        C = as_input_matrix(sp.random(n, d, density=0.5, random_state=71, format="csr"))
    rows, weights = _rows_and_weights(rng, n, DENSE_SANDWICH_BLOCK + 100)  # two SYRK blocks when dense
    signed, absolute = C.sandwich_rows_and_absolute(rows, weights)
    np.testing.assert_array_equal(signed, C.sandwich_rows(rows, weights))
    A = C.rows(np.arange(n))
    _check_sandwich_rows(absolute, A, np.abs(A), rows, np.abs(weights), d)


@pytest.mark.parametrize("centred", [False, True], ids=["rows", "centred"])
def test_dense_sandwich_rows_and_absolute_in_float32_is_within_float32_rounding(centred):
    """With a column scale D the dense sampled SYRKs run in float32 on the rows scaled by D⁻¹: each sum within
    float32's rounding bound of the float64 NumPy one, Σ|terms| times γ (Higham §3.1, with float32's ε; a few
    more terms for rounding each entry to float32), on columns 1e-30 … 1e30 apart and weights ~1e-200, whose
    unscaled entries and products float32 cannot hold; exactly symmetric, as the float64 SYRK's."""
    rng = np.random.default_rng(74)
    n, d = DENSE_SANDWICH_BLOCK + 50, 6
    A = rng.standard_normal((n, d)) * 10.0 ** np.linspace(-30, 30, d) + 3.0 * 10.0 ** np.linspace(-30, 30, d)
    matrix = DenseMatrix(A)
    rows, weights = _rows_and_weights(rng, n, DENSE_SANDWICH_BLOCK + 100)  # two SYRK blocks
    weights *= 1e-200
    shift = A.mean(axis=0) if centred else None
    rows_of = A - shift if centred else A
    D = np.sqrt(np.sum(rows_of**2, axis=0))
    signed, absolute = matrix.sandwich_rows_and_absolute(rows, weights, shift=shift, column_scale=D)
    for got, w in ((signed, weights), (absolute, np.abs(weights))):
        bound_scale = np.abs(rows_of[rows]).T @ (np.abs(w)[:, None] * np.abs(rows_of[rows]))
        naive.assert_within_rounding(got, naive.sandwich(rows_of[rows], w), bound_scale, rows.shape[0] + 4,
                                     eps=np.finfo(np.float32).eps)
        np.testing.assert_array_equal(got, got.T)
    # The float64 sums are far closer: the float32 path is a different computation, not the same one.
    assert not np.array_equal(signed, matrix.sandwich_rows(rows, weights, shift=shift))


def test_reference_samples_in_float32_until_it_is_refreshed():
    """The column-scale reference's samples of dense C run in float32 (``sandwich_of_sample``), a refreshed
    reference's (an embedding's factor) and a CSR C's in float64, bit for bit the ``sandwich_rows_and_absolute``
    they stand for."""
    rng = np.random.default_rng(75)
    n, d = 3000, 8
    A = rng.standard_normal((n, d))
    rows, weights = _rows_and_weights(rng, n, 500)
    dense, csr = DenseMatrix(A), as_input_matrix(sp.csr_matrix(A))
    reference = LeverageReference()
    D = reference.first_scale(dense)
    for got, expected in zip(reference.sandwich_of_sample(dense, rows, weights),
                             dense.sandwich_rows_and_absolute(rows, weights, column_scale=D)):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(reference.sandwich_of_sample(csr, rows, weights),
                             csr.sandwich_rows_and_absolute(rows, weights)):
        np.testing.assert_array_equal(got, expected)
    reference.factor = embedding_factor(rng.standard_normal((4 * d, d)), 0.0)
    for got, expected in zip(reference.sandwich_of_sample(dense, rows, weights),
                             dense.sandwich_rows_and_absolute(rows, weights)):
        np.testing.assert_array_equal(got, expected)


def test_certified_is_the_eigenvalue_test_it_states():
    """λ_min(R⁻ᵀ(Ã + Λ)R⁻¹) ≥ tr/(Γd), by an independent eigenvalue computation, on both sides of the bound."""
    rng = np.random.default_rng(72)
    d = 8
    R = embedding_factor(rng.standard_normal((4 * d, d)), 0.0)
    reference = LeverageReference()
    reference.factor = R
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    for smallest, expected in ((1.2 / REFERENCE_SPREAD, True), (0.8 / REFERENCE_SPREAD, False)):
        # W with eigenvalues (smallest, then d − 1 values set so that the mean is 1).
        eigenvalues = np.full(d, (d - smallest) / (d - 1))
        eigenvalues[0] = smallest
        W = Q @ np.diag(eigenvalues) @ Q.T
        gram = R.T @ W @ R
        absolute = gram - np.diag(sketching_ridge(gram, 1e-3))
        assert reference.certified(absolute, 1e-3) is expected, smallest
        whitened = np.linalg.solve(R.T, np.linalg.solve(R.T, gram).T)
        assert bool(np.linalg.eigvalsh(whitened)[0] >= np.trace(whitened) / (REFERENCE_SPREAD * d)) is expected
    assert not reference.certified(np.full((d, d), np.nan), 0.0)


def sketching_ridge(gram, l2):
    from fastnewton.sketching import ridge
    return ridge(np.diag(gram).copy(), l2)


def _drifting_samples(name, seeds, iterations=3, drift=0.5):
    """Deviations max|θ − 1| of each iteration's sample with one reference per seed, β multiplied by
    exp(drift·N(0, 1)) per row between iterations (as an iteration moves β), and the refresh counts."""
    matrix, beta, l2, _, s, _ = spectral_case(name)
    deviations, refreshes = [], []
    for seed in seeds:
        rng, moves = np.random.default_rng(seed), np.random.default_rng(1000 + seed)
        reference, current = LeverageReference(), beta.copy()
        for _ in range(iterations):
            H = matrix.sandwich(current) + l2 * np.eye(matrix.d)
            H_tilde, _ = sampled_sandwich(matrix, current, l2, s, rng, reference)
            deviations.append(worst_deviation(H, H_tilde + l2 * np.eye(matrix.d)))
            current = current * np.exp(drift * moves.standard_normal(current.shape[0]))
        refreshes.append(reference.refreshes)
    return np.array(deviations), np.array(refreshes)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_samples_stay_eps_spectral_approximations_while_beta_moves(name):
    """Every eigenvalue of H̃^{-1/2} H H̃^{-1/2} in [1 − ε, 1 + ε] in ≥ 95 % of 60 draws (20 seeds × 3 iterations).

    Each iteration's scores come from the reference, which is kept only where its sample certifies
    it, else replaced (embedding + JL, the fresh scores) and the rows drawn again. Measured over
    40 seeds × 3: 0 failures on dense_gaussian, csr_ridge, dense_uneven_rows, 1 of 120 on
    csr_lonely_columns (max|θ − 1| 0.67); medians 0.11–0.25, as with fresh scores (0.08–0.25).
    """
    deviations, _ = _drifting_samples(name, SEEDS)
    assert int(np.sum(deviations > EPS)) <= 3, deviations


@pytest.mark.parametrize("name", ["dense_gaussian", "csr_ridge"])
def test_reference_from_the_column_scale_is_kept_on_even_rows(name):
    """Where the rows of the column-equilibrated C are even (i.i.d. Gaussian, random sparse), the first
    reference — squared row lengths, one pass — is certified at every iteration: no embedding, no JL
    pass in the whole sequence (measured: 0 refreshes in 40 of 40 seeds on both)."""
    _, refreshes = _drifting_samples(name, range(5))
    assert np.all(refreshes == 0), refreshes


def test_reference_is_refreshed_when_beta_moves_the_gram_matrix():
    """Rows of two kinds, each large in its own half of the columns: β on the first kind, then on the
    second, turns the Gram matrix in whitened coordinates from ≈ I to far from it (its smallest
    eigenvalue ~1e-4 of the mean): the check must refuse the old reference, and the sample drawn
    again must be accurate."""
    rng = np.random.default_rng(73)
    n, d = 20_000, 12
    A = rng.standard_normal((n, d))
    first = np.arange(n) < n // 2
    A[first, : d // 2] *= 100.0
    A[~first, d // 2:] *= 100.0
    matrix = DenseMatrix(A)
    s = sample_size(d, EPS)
    on_first = np.where(first, 1.0, 1e-6)
    reference, sample_rng = LeverageReference(), np.random.default_rng(0)
    for beta, refreshes in ((on_first, None), (on_first * 1.1, "kept"), (on_first[::-1].copy(), "refreshed")):
        before = reference.refreshes
        H_tilde, _ = sampled_sandwich(matrix, beta, 0.0, s, sample_rng, reference)
        assert worst_deviation(matrix.sandwich(beta), H_tilde) <= EPS
        if refreshes == "kept":
            assert reference.refreshes == before
        elif refreshes == "refreshed":
            assert reference.refreshes == before + 1


def test_column_scale_reference_is_refused_on_correlated_columns():
    """Columns sharing one strong common factor: the squared row lengths of C D⁻¹ miss the directions
    of small spread, the first sample cannot certify them, and the scores are estimated afresh."""
    rng = np.random.default_rng(74)
    n, d = 20_000, 10
    A = rng.standard_normal((n, d)) * 1e-2 + rng.standard_normal((n, 1))
    A[:20] = 10.0 * rng.standard_normal((20, d))  # a few rows carry the spread
    matrix, beta = DenseMatrix(A), rng.exponential(size=n)
    reference = LeverageReference()
    H_tilde, _ = sampled_sandwich(matrix, beta, 0.0, sample_size(d, EPS), np.random.default_rng(1), reference)
    assert reference.refreshes == 1
    assert worst_deviation(matrix.sandwich(beta), H_tilde) <= EPS


def test_reference_samples_are_fixed_by_the_seed():
    matrix, beta, l2, _, s, _ = spectral_case("csr_lonely_columns")

    def draws():
        rng, reference = np.random.default_rng(5), LeverageReference()
        return [sampled_sandwich(matrix, beta * scale, l2, s, rng, reference)[0] for scale in (1.0, 2.0, 0.5)]

    for first, again in zip(draws(), draws()):
        np.testing.assert_array_equal(first, again)


# ---------------------------------------------------------------------------------------------
# Centred rows: the sketch of a shift-invariant model samples cᵢ − μ (fastnewton.sketching.CentredRows)
# ---------------------------------------------------------------------------------------------
def _offset_problem(model, n=3000, d=6, offset=3.0, row_weights=None, csr=False, seed=1):
    """A planted problem whose C has every entry shifted by ``offset`` (CSR: column 0 replaced by ones, a bias)."""
    out = fastnewton.make_problem(n, d, model=model, noise=1e-2, seed=seed, dense=True)
    C = out[0] + offset
    if csr:
        C = sp.csr_matrix(np.column_stack([np.ones(n), out[0][:, 1:]]))
    kw = {"V": out.V} if model == "softmax_relu" else {}
    return fastnewton.Problem(C, out[1], model=model, row_weights=row_weights, **kw), C


def _dense_array(C):
    return C.toarray() if sp.issparse(C) else np.asarray(C)


@pytest.mark.parametrize("weighted", [False, True], ids=["no_row_weights", "row_weights"])
@pytest.mark.parametrize("model", ["softmax", "relu_softmax", "softmax_relu"])
def test_centred_formula_is_the_exact_hessian_where_the_model_is_shift_invariant(model, weighted):
    """H = C̃ᵀ diag(β) C̃ + P̃ S P̃ᵀ + λI with C̃ = C − 1μᵀ, P̃ = P − μ(Uᵀ1)ᵀ for ANY μ, evaluated densely in NumPy
    against the exact ``Problem.hessian``: to 1e-12 relative for softmax and softmax_relu (the loss depends on u
    through softmax(u) only: its u-Hessian annihilates 1). relu_softmax (softmax(ReLU(u)): diag(m) H_z diag(m)
    does not annihilate 1) and any model with row weights (½ Σ wᵢuᵢ² is not shift-invariant) miss by O(1) and
    keep the uncentred sample (``sampling_mean`` None). Also Uᵀ1 = ``ones_columns`` (the analytic form)."""
    rng = np.random.default_rng(80)
    n = 3000
    weights = rng.random(n) if weighted else None
    problem, C = _offset_problem(model, n=n, row_weights=weights)
    A = _dense_array(C)
    x = 0.3 * rng.standard_normal(A.shape[1])
    if model == "relu_softmax":
        x -= x.mean()  # Σx = 0: the offset cancels in u = Cx, about half the rows active (all active is softmax)
    ev = problem.evaluate(x)
    H = problem.hessian(x)
    beta, U = problem.beta(ev), ev.kept["Q"][:, 1:]
    ones = U.sum(axis=0)
    for mean in (A.mean(axis=0), rng.standard_normal(A.shape[1])):
        centred, P = A - mean, ev.P - np.outer(mean, ones)
        formula = centred.T @ (beta[:, None] * centred) + P @ ev.S @ P.T
        error = float(np.max(np.abs(formula - H)) / np.max(np.abs(H)))
        if problem.row_model.shift_invariant and not weighted:
            assert error <= 1e-12, error
        else:
            assert error > 1e-3, error
    allowed = problem.row_model.shift_invariant and not weighted
    assert (problem.sampling_mean() is not None) is allowed
    assert problem.row_model.shift_invariant is (model != "relu_softmax")
    if problem.row_model.shift_invariant:
        np.testing.assert_allclose(problem.row_model.ones_columns(ev.known), ones, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", ["dense", "csr", "csr_long_rows"])
def test_centred_rows_match_numpy(form):
    """Every operation of ``CentredRows`` against NumPy on the densely centred rows A − μ: the sampled
    sandwich and its |w| twin Σ w (cᵢ − μ)(cᵢ − μ)ᵀ over listed rows (repeats included), row squares, C̃Z and
    the OSNAP embedding (explicit S). Tolerance 1e-12 of the same sums over |cᵢ| + |μ| (the CSR sandwich and the
    row squares are expanded: their rounding is relative to the uncentred terms)."""
    rng = np.random.default_rng(81)
    n, d = 400, 80 if form == "csr_long_rows" else 8
    A = rng.standard_normal((n, d)) + 5.0
    if form == "dense":
        matrix = DenseMatrix(A)
    else:
        # Sparse rows; with long rows, every other row keeps all its d entries (sandwiched by SYRK).
        sparse_rows = rng.random((n, d)) < (0.9 if form == "csr_long_rows" else 0.4)
        if form == "csr_long_rows":
            sparse_rows[::2] = False
        A[sparse_rows] = 0.0
        A[:, 0] = 1.0  # a bias column
        matrix = as_input_matrix(sp.csr_matrix(A))
        assert (form == "csr_long_rows") == bool(np.any(np.diff(matrix.indptr) >= DENSE_ROW_MIN_NNZ))
    mean = A.mean(axis=0) + 0.1 * rng.standard_normal(d)
    rows_of = CentredRows(matrix, mean)
    centred, magnitude = A - mean, np.abs(A) + np.abs(mean)
    rows, weights = _rows_and_weights(rng, n, 300)

    def close(out, ref, scale):
        assert np.all(np.abs(out - ref) <= 1e-12 * scale + 1e-300), float(np.max(np.abs(out - ref) / scale))

    scale = magnitude[rows].T @ (np.abs(weights)[:, None] * magnitude[rows])
    signed = rows_of.sandwich_rows(rows, weights)
    close(signed, naive.sandwich(centred[rows], weights), scale)
    np.testing.assert_array_equal(signed, signed.T)
    both = rows_of.sandwich_rows_and_absolute(rows, weights)
    np.testing.assert_array_equal(both[0], signed)
    close(both[1], naive.sandwich(centred[rows], np.abs(weights)), scale)
    column_weights = 1.0 + rng.random(d)
    close(rows_of.row_squares(column_weights), np.maximum((centred**2) @ column_weights, 0.0),
          (magnitude**2) @ column_weights)
    Z = rng.standard_normal((d, JL_DIM))
    close(rows_of.matmat(Z), centred @ Z, magnitude @ np.abs(Z))
    m = 4 * d
    buckets, signs, row_scale, ptr, member, scaled_signs = _embed_inputs(rng, n, m)
    S = explicit_sketch(buckets, signs, m)
    # One block of rows, and blocks of 37 rows (as ``osnap_embed`` runs it on large C).
    for ptr, member in ((ptr, member), bucket_members(buckets, m, 37)):
        close(rows_of.embed(scaled_signs, OSNAP_NNZ, ptr, member, m), S @ (row_scale[:, None] * centred),
              np.abs(S) @ (row_scale[:, None] * magnitude))


@pytest.mark.parametrize("model,csr", [("softmax", False), ("softmax", True), ("softmax_relu", False),
                                       ("softmax_relu", True)])
def test_centred_sample_of_every_row_gives_the_exact_hessian(model, csr):
    """With every row kept (πᵢ = 1) the sampled Hessian, C̃ᵀ diag(β) C̃ turned back by ``uncentred_sandwich`` + P S Pᵀ,
    is the exact Hessian to 1e-12 relative (offset dense C; CSR C with a bias column of ones)."""
    problem, _ = _offset_problem(model, csr=csr)
    assert problem.sampling_mean() is not None
    x = 0.3 * np.random.default_rng(82).standard_normal(problem.d)
    ev = problem.evaluate(x)
    sandwich, kept = problem.sampled_sandwich(ev, 2**40, np.random.default_rng(0))
    assert kept == problem.n
    H = problem.hessian(x)
    error = float(np.max(np.abs(problem.hessian_matrix(ev, sandwich=sandwich) - H)) / np.max(np.abs(H)))
    assert error <= 1e-12, error


def _sketched_and_exact(problem, x, seeds, reference=False, centred=True):
    """(H, [H̃ per seed]) at x: H̃ = the sampled sandwich (centred, or forced uncentred) + P S Pᵀ + λI."""
    ev = problem.evaluate(x)
    H = problem.hessian(x)
    s = sample_size(problem.d, EPS)
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        ref = LeverageReference() if reference else None
        if centred:
            sandwich, _ = problem.sampled_sandwich(ev, s, rng, ref)
        else:
            sandwich, _ = sampled_sandwich(problem.matrix, problem.beta(ev), problem.l2, s, rng, ref)
        out.append(problem.hessian_matrix(ev, sandwich=sandwich.copy()))
    return H, out


@pytest.mark.parametrize("reference", [False, True], ids=["fresh_scores", "reference"])
def test_centred_sample_is_eps_spectral_on_offset_c(reference):
    """Dense softmax, every entry of C + 10, near the optimum: every eigenvalue of H̃^{-1/2} H H̃^{-1/2} in
    [1 − ε, 1 + ε] in ≥ 95 % of 20 seeds with the centred sample (measured max|θ − 1|: 0.13–0.31 over 10 seeds,
    fresh scores and reference alike); the uncentred sample misses by far in every seed (measured over 10 seeds
    each: 0.96 to ∞, i.e. H̃ off by 2× or indefinite along the offset), which is the defect centring removes."""
    n, d = 20_000, 16
    out = fastnewton.make_problem(n, d, model="softmax", noise=1e-2, seed=3, dense=True)
    problem = fastnewton.Problem(out[0] + 10.0, out[1])
    x = out[2]
    H, centred = _sketched_and_exact(problem, x, SEEDS, reference)
    deviations = np.array([worst_deviation(H, H_tilde) for H_tilde in centred])
    assert int(np.sum(deviations > EPS)) <= 1, deviations
    H, uncentred = _sketched_and_exact(problem, x, range(5), reference, centred=False)
    assert all(worst_deviation(H, H_tilde) > 0.9 for H_tilde in uncentred)


def _offset_solves(offset, hessian, csr=False, seeds=range(3), n=20_000, d=16, **kw):
    out = fastnewton.make_problem(n, d, model="softmax", noise=1e-2, seed=0, dense=True)
    C = out[0] + offset
    if csr:
        C = sp.csr_matrix(np.column_stack([np.full(n, offset), out[0][:, 1:]]))
    return [fastnewton.solve(C, out[1], "softmax", hessian=hessian, max_iter=40, seed=seed, **kw) for seed in seeds]


@pytest.mark.parametrize("hessian", ["sketch", "pcg"])
@pytest.mark.parametrize("csr", [False, True], ids=["dense_offset", "csr_bias_column"])
def test_sketched_solve_on_offset_c_takes_the_iterations_of_centred_c(hessian, csr):
    """C + 10 (dense; CSR: column 0 a constant 10, a bias feature) against C itself (CSR: that column 0): the
    same softmax problem in x up to the intercept (softmax(u + t·1) = softmax(u)), and with centred samples the
    same centred rows, so the sketch must take about as many iterations: at most offset 0's + 2 per seed (the
    start's sample, drawn on uncentred rows, and rounding make the two solves differ a little). Measured, dense
    20000 × 16, seeds 0–2: sketch 7, 6, 7 on C and 6, 6, 7 on C + 10; before centring C + 10 hit max_iter = 40
    in all three; pcg 2 everywhere (CG on the exact Hessian corrects its preconditioner), and its CG iterations,
    preconditioned by the start's fit matrix on dense C (centred on the fit's mean, then turned back), also at
    most offset 0's + 2 per solve (dense 10⁵ × 128, + 10: 15 before centring, 6 after, 6 on C itself; at this
    size 6 on C and 3 on C + 10, 4 before centring)."""
    base = _offset_solves(0.0, hessian, csr)
    shifted = _offset_solves(10.0, hessian, csr)

    def cg(res):
        return sum(record.get("cg_iterations", 0) for record in res.history)

    for plain, offset in zip(base, shifted):
        assert plain.converged and offset.converged, offset.message
        assert offset.n_iter <= plain.n_iter + 2, (plain.n_iter, offset.n_iter)
        assert cg(offset) <= cg(plain) + 2, (cg(plain), cg(offset))


def test_centred_sketch_solve_is_fixed_by_the_seed_and_not_by_the_thread_count(run_with_threads):
    """Bit for bit: the same seed twice, and 1 against 2 Numba threads (dense offset C and CSR with a bias column)."""
    for csr in (False, True):
        def solve_once():
            return _offset_solves(10.0, "sketch", csr, seeds=[4], n=5000, d=12)[0].x
        one, again = run_with_threads(1, solve_once), run_with_threads(1, solve_once)
        two = run_with_threads(2, solve_once)
        np.testing.assert_array_equal(one, again)
        np.testing.assert_array_equal(one, two)


def test_centring_is_skipped_where_every_column_mean_is_small_against_its_spread():
    """``worth_centring``: nμⱼ² > CENTRING_MIN_RATIO·‖C_j − μ_j‖² for some column j, on both sides of the bound;
    a constant non-zero column always, a zero column never. Planted C (means ~1e-2 of the spread) keeps the
    uncentred sample; C + 1 and a bias column are centred."""
    n = 1000
    spread = np.ones(n)
    spread[::2] = -1.0  # mean 0, ‖C_j − μ_j‖² = n
    for ratio, expected in ((0.9 * CENTRING_MIN_RATIO, False), (1.1 * CENTRING_MIN_RATIO, True)):
        column = spread + math.sqrt(ratio)  # nμ² = ratio·n
        assert worth_centring(np.array([column @ column, n]), np.array([column.mean(), 0.0]), n) is expected
    assert worth_centring(np.array([4.0 * n]), np.array([2.0]), n)
    assert not worth_centring(np.array([0.0]), np.array([0.0]), n)
    problem, _ = _offset_problem("softmax", offset=0.0)
    assert problem.sampling_mean() is None
    for offset, csr in ((1.0, False), (0.0, True)):
        problem, _ = _offset_problem("softmax", offset=offset, csr=csr)
        assert problem.sampling_mean() is not None
