"""Leverage-score sampling of the diagonal part Cᵀ diag(β) C (the approximate Newton of ``hessian="sketch"`` and the ``pcg`` preconditioner).

With B = diag(√|β|) C, row i's (ridge) leverage score is ℓᵢ = bᵢᵀ (BᵀB + λI)⁻¹ bᵢ. We
approximate all of them without forming anything n × d dense:

1. an OSNAP sparse embedding S (m = EMBED_ROWS_PER_COLUMN·d rows, OSNAP_NNZ non-zeros
   per column) gives SB in O(OSNAP_NNZ·nnz(C)); a Cholesky factor R of (SB)ᵀSB + λI
   gives RᵀR ≈ BᵀB + λI (a subspace embedding);
2. a Gaussian d × JL_DIM matrix G gives ℓᵢ ≈ ‖(B R⁻¹ G)ᵢ‖² / JL_DIM (Johnson–Lindenstrauss),
   one pass over C for the n × JL_DIM product;
3. Poisson sampling keeps row i with probability πᵢ = min(1, s·ℓᵢ/Σℓ) and weight βᵢ/πᵢ
   (unbiased, signs of β kept; rows with πᵢ = 1 are kept exactly), so that
   CᵀD̃C = Σ_kept (βᵢ/πᵢ) cᵢcᵢᵀ ≈ Cᵀ diag(β) C.

Total O(nnz(C)·(OSNAP_NNZ + JL_DIM) + m·d² + sampled sandwich): never Σᵢ nnzᵢ² over all rows.

Within a solve (``LeverageReference``) steps 1–2 are not repeated every iteration: ℓᵢ = |βᵢ|·gᵢ
with gᵢ = cᵢᵀ M cᵢ for a reference M ≈ (Cᵀ|D|C + Λ)⁻¹ kept from an earlier iteration (at first
the column scale, M = diag(1/‖C_j‖²): squared row lengths of the column-equilibrated C), so an
iteration's scores cost O(n) and its sandwich the s sampled rows only. The sample is kept only
if it certifies the reference: with Ã = Σ_kept |βᵢ|/πᵢ cᵢcᵢᵀ (the same SYRKs give it, the rows of
each sign being summed apart) and W = M^{1/2}(Ã + Λ)M^{1/2}, λ_min(W) ≥ tr(W)/(REFERENCE_SPREAD·d)
means every score is at least 1/REFERENCE_SPREAD of its share of the true ones (see
``LeverageReference``); otherwise steps 1–2 run on the current β, their M becomes the reference,
and the rows are drawn again.

Centred rows (``mean`` μ given: the model's u-Hessian annihilates 1, ``Model.shift_invariant``): then
Cᵀ H_u C = C̃ᵀ H_u C̃ for C̃ = C − 1μᵀ, and everything above runs on the rows cᵢ − μ (``CentredRows``,
without forming C̃: CSR stays sparse), so a common offset of the rows (a bias column, uncentred
features) is not sampled: sampled, its huge share of Cᵀ diag(β) C, which P S Pᵀ cancels almost
exactly, left an error of ε times it along the offset, far above the true curvature there (dense
10⁵ × 128 softmax, every entry + 10: 5 sketched iterations became 60 without convergence).
``uncentred_sandwich`` turns the sample of C̃ᵀ diag(β) C̃ back into one of Cᵀ diag(β) C whose error is ε
times the centred sandwich only.
"""
import math

import numpy as np
import scipy.linalg
from scipy.linalg.blas import dsyrk

from .kernels.sketch import bucket_members

OSNAP_NNZ = 4
# m = 4d rows: with 4 non-zeros per column OSNAP embeds a d-dimensional subspace to within
# a small constant factor (Nelson & Nguyên 2013; Cohen 2016), all leverage sampling needs.
EMBED_ROWS_PER_COLUMN = 4
JL_DIM = 16
# s = ⌈SAMPLE_CONSTANT · d · log(d/δ) / ε²⌉ with δ = SAMPLE_DELTA. The matrix Chernoff bound
# asks for 8/3 with exact scores; measured (tests/test_sketch.py): 3 keeps every
# eigenvalue of H̃^{-1/2} H H̃^{-1/2} in [1 − ε, 1 + ε] in ≥ 95% of seeds at ε = 0.5 (2 is at the edge).
SAMPLE_CONSTANT = 3.0
SAMPLE_DELTA = 0.1
# Relative ridge added when λ = 0, so R exists for a rank-deficient B.
JITTER = 1e-10
# The embedding visits each row OSNAP_NNZ times in random order; it runs over blocks of
# rows holding about this many stored entries (~3 MiB of CSR), so revisits hit the cache.
# Measured (n = 10⁶, 100 nnz/row, d = 512, 2 threads): unblocked 1.28 s, 2²⁰ entries 0.55 s,
# 2¹⁸ entries 0.31 s, 2¹⁷ entries 0.46 s.
EMBED_BLOCK_ENTRIES = 2**18


# pcg only needs a preconditioner within constant factors (CG corrects the rest): a third of
# the sample (eigenvalues of H̃⁻¹H measured within [0.69, 1.55], so κ ≈ 2.3) costs a few more
# CG iterations but a third of the sampled sandwich.
PRECONDITIONER_SAMPLE_CONSTANT = 1.0


# Past this many rows every row is kept anyway (πᵢ = 1); the cap keeps a tiny ε (1e-300: ε² underflows)
# from dividing by zero or overflowing.
MAX_SAMPLE_SIZE = 2**62


def sample_size(d, eps, constant=SAMPLE_CONSTANT, delta=SAMPLE_DELTA):
    """s = ⌈c·d·log(d/δ)/ε²⌉ sampled rows (at least d + 1, log argument at least e, at most MAX_SAMPLE_SIZE)."""
    rows = constant * d * max(1.0, math.log(d / delta))
    if eps * eps <= rows / MAX_SAMPLE_SIZE:
        return MAX_SAMPLE_SIZE
    return max(d + 1, math.ceil(rows / eps**2))


# A column whose centred squares ‖C_j − μ_j‖² are at most this fraction of ‖C_j‖² is constant (a bias column):
# centring leaves it zero up to rounding, so it carries no leverage and is left out of the reference's
# certificate (with it, its ridge-sized whitened eigenvalue refused every first reference).
CONSTANT_COLUMN_RTOL = 1e-12


class CentredRows:
    """C̃ = C − 1μᵀ as the leverage sampling reads it, without forming it (a CSR C stays sparse):
    C̃Z = CZ − 1(μᵀZ); Σⱼ (cᵢⱼ − μⱼ)²aⱼ = Σⱼ cᵢⱼ²aⱼ − 2cᵢᵀ(a ⊙ μ) + Σⱼ aⱼμⱼ² (one read of C with its matvec);
    the OSNAP embedding S·diag(σ)·C̃ = S·diag(σ)·C − (Sσ)μᵀ; the sampled sandwich by the matrix itself
    (``sandwich_rows(..., shift=μ)``: the dense SYRK centres the gathered rows, CSR corrects by rank two)."""

    def __init__(self, matrix, mean):
        self.matrix, self.mean = matrix, np.ascontiguousarray(mean, dtype=np.float64)
        self.n, self.d, self.nnz, self.format = matrix.n, matrix.d, matrix.nnz, matrix.format

    def matmat(self, Z):
        out = self.matrix.matmat(Z)
        out -= self.mean @ Z
        return out

    def row_squares(self, column_weights):
        """Σⱼ (cᵢⱼ − μⱼ)²·column_weights[j] for every row i (expanded; rounding below 0 clipped: a score
        only needs a constant factor, and a row at the mean carries no curvature)."""
        weighted_mean = column_weights * self.mean
        squares, product = self.matrix.row_squares_and_matvec(column_weights, weighted_mean)
        squares -= 2.0 * product
        squares += float(np.dot(weighted_mean, self.mean))
        return np.maximum(squares, 0.0, out=squares)

    def embed(self, scaled_signs, s, ptr, member, m):
        out = self.matrix.embed(scaled_signs, s, ptr, member, m)
        # Sσ: each output row's sum of its entries' scaled signs, summed per (row block, output row) key in the
        # embedding's order, then over the blocks in order (one n·s gather, less than the JL projection's n × 16).
        keys = np.flatnonzero(np.diff(ptr) > 0)
        per_key = np.add.reduceat(scaled_signs[member], ptr[keys]) if keys.size else np.zeros(0)
        out -= np.outer(np.bincount(keys % m, weights=per_key, minlength=m), self.mean)
        return out

    def sandwich_rows(self, rows, weights):
        return self.matrix.sandwich_rows(rows, weights, shift=self.mean)

    def sandwich_rows_and_absolute(self, rows, weights, column_scale=None):
        if column_scale is None:  # (a CSR matrix takes no column scale: ``LeverageReference.sandwich_of_sample``)
            return self.matrix.sandwich_rows_and_absolute(rows, weights, shift=self.mean)
        return self.matrix.sandwich_rows_and_absolute(rows, weights, shift=self.mean, column_scale=column_scale)


# Centring is skipped on C whose column means are all small against their spread: nμⱼ² ≤ CENTRING_MIN_RATIO·‖C_j − μ_j‖²
# for every column j. The offset's share of the sample, ~|μ|²/σ² of the curvature along it, adds at most ε times
# that ratio to the sample's error (0.05 at ε = 0.5), while centring costs a read of C more for the first row
# factors (the start's, on dense softmax, are uncentred); planted C (make_problem: ratio ~1e-5) keeps its
# uncentred sample and its bits, C + 1 (ratio 1: 17 sketched iterations instead of 5) is centred.
CENTRING_MIN_RATIO = 0.1


def worth_centring(column_squares, mean, n):
    """Whether some column's mean is not small against its spread (``CENTRING_MIN_RATIO``; a constant non-zero
    column, e.g. a bias, always is): μ = C's column mean, ``column_squares`` ‖C_j‖²."""
    offsets = n * mean * mean
    return bool(np.any(offsets > CENTRING_MIN_RATIO * (np.asarray(column_squares) - offsets)))


def sampled_rows_of(matrix, mean):
    """The rows the sample is drawn from: C's own, or C̃ = C − 1μᵀ (``CentredRows``) when ``mean`` μ is given."""
    return matrix if mean is None else CentredRows(matrix, mean)


def uncentred_sandwich(centred, mean, P, S, ones_columns):
    """An approximation of Cᵀ diag(β) C from one, ``centred``, of C̃ᵀ diag(β) C̃ (C̃ = C − 1μᵀ), for a u-Hessian
    diag(β) + U S Uᵀ that annihilates 1, with P = CᵀU and t = Uᵀ1 (``ones_columns``):

        Cᵀ diag(β) C = C̃ᵀ diag(β) C̃ + μaᵀ + aμᵀ − (Σβ)μμᵀ,  a = Cᵀβ = −P S t,  Σβ = −tᵀS t

    (β = −U S t row by row, since (diag(β) + U S Uᵀ)1 = 0). So the Hessian it gives, + P S Pᵀ + λI, is
    C̃ᵀ D̃ C̃ + P̃ S P̃ᵀ + λI with P̃ = P − μtᵀ: its error is the centred sample's alone. O(d·k + d²), no pass."""
    St = S @ ones_columns
    cross = np.outer(mean, P @ St)
    out = centred - (cross + cross.T)  # summed first: exactly symmetric, as the sandwich is
    out += float(ones_columns @ St) * np.outer(mean, mean)
    return out


def leverage_scores(matrix, beta, l2, rng):
    """Approximate ridge leverage scores ℓᵢ of the rows of diag(√|β|) C (length n, ≥ 0)."""
    R = embedding_factor(osnap_embed(matrix, beta, rng), l2)
    return jl_scores(matrix, beta, jl_directions(R, rng))


def osnap_embed(matrix, beta, rng):
    """SB: the OSNAP embedding (EMBED_ROWS_PER_COLUMN·d rows) of B = diag(√|β|) C.

    Each row of B is hashed independently, so the embeddings of disjoint row blocks sum
    to an embedding of the whole B (``fastnewton.dask`` sums its blocks' SB)."""
    n, d = matrix.n, matrix.d
    scale = np.sqrt(np.abs(beta))
    m = EMBED_ROWS_PER_COLUMN * d
    buckets = rng.integers(0, m, size=(n, OSNAP_NNZ))
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, OSNAP_NNZ))
    rows_per_block = max(1, EMBED_BLOCK_ENTRIES * n // max(1, matrix.nnz))
    ptr, member = bucket_members(buckets, m, rows_per_block)
    scaled_signs = (signs * (scale[:, None] / math.sqrt(OSNAP_NNZ))).ravel()
    return matrix.embed(scaled_signs, OSNAP_NNZ, ptr, member, m)


def ridge(column_squares, l2):
    """Λ's diagonal: λ for every column, or when λ = 0 JITTER·(that column's squared norm) with a floor
    (``embedding_factor``)."""
    if l2 > 0:
        return np.full(column_squares.shape[0], l2)
    floor = max(float(column_squares.max()) * np.finfo(float).eps, np.finfo(float).tiny)
    return JITTER * np.maximum(column_squares, floor)


def embedding_factor(SB, l2):
    """R (d × d, upper triangular) with RᵀR = (SB)ᵀSB + Λ: Λ = λI, or when λ = 0 a tiny ridge per
    column, JITTER·‖(SB)_j‖², so that scaling a column of C leaves the scores unchanged (one ridge
    for all columns would swamp columns scaled far below the largest).

    By Cholesky of the Gram matrix formed with SYRK (Cholesky-QR): a third of a QR's flops at
    BLAS-3 speed (measured at m = 4d, d = 512: 4× faster than the QR). Squaring the condition
    number costs nothing here: R only has to reproduce the leverage scores within constant
    factors, and the ridge keeps the Gram matrix positive definite; should rounding still break
    the factorisation, a QR of [SB; √Λ] gives R instead.
    """
    d = SB.shape[1]
    diagonal = ridge(np.einsum("ij,ij->j", SB, SB), l2)
    gram = dsyrk(1.0, np.asfortranarray(SB.T), trans=0, lower=0)
    gram[np.diag_indices(d)] += diagonal
    try:
        return scipy.linalg.cholesky(gram, lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return scipy.linalg.qr(np.vstack([SB, np.diag(np.sqrt(diagonal))]), mode="r", check_finite=False)[0][:d]


def jl_directions(R, rng):
    """Z = R⁻¹G for a Gaussian d × JL_DIM matrix G."""
    G = rng.standard_normal((R.shape[0], JL_DIM))
    return scipy.linalg.solve_triangular(R, G, lower=False, check_finite=False)


def jl_row_norms(matrix, Z):
    """gᵢ = ‖(C Z)ᵢ‖² / JL_DIM ≈ cᵢᵀ R⁻¹R⁻ᵀ cᵢ for Z = R⁻¹G: one pass over C."""
    W = matrix.matmat(Z)
    return np.einsum("ij,ij->i", W, W) / JL_DIM


def jl_scores(matrix, beta, Z):
    """ℓᵢ ≈ |βᵢ|·‖(C Z)ᵢ‖² / JL_DIM = ‖(diag(√|β|) C Z)ᵢ‖² / JL_DIM: one pass over C."""
    return np.abs(beta) * jl_row_norms(matrix, Z)


def sample_rows(scores, s, rng, total=None):
    """Poisson sampling: (rows kept, their inclusion probabilities πᵢ = min(1, s·ℓᵢ/Σℓ)).

    ``total`` is Σℓ over all rows when ``scores`` holds one block's share of them."""
    total = scores.sum() if total is None else total
    if not total > 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    pi = np.minimum(1.0, s * scores / total)
    kept = np.flatnonzero(rng.random(scores.shape[0]) < pi)
    return kept, pi[kept]


def sampled_sandwich(matrix, beta, l2, s, rng, reference=None, mean=None):
    """CᵀD̃C ≈ Cᵀ diag(β) C from s leverage-score samples; returns (d × d matrix, rows kept).

    ``reference``: a ``LeverageReference`` kept across a solve's iterations (scores in O(n) while it
    holds), else the scores are estimated afresh (embedding, factor, JL pass). ``mean`` μ: sample the
    centred rows cᵢ − μ instead, returning C̃ᵀD̃C̃ (``uncentred_sandwich`` turns it into the above)."""
    if reference is not None:
        return reference.sampled_sandwich(matrix, beta, l2, s, rng, mean)
    rows_of = sampled_rows_of(matrix, mean)
    scores = leverage_scores(rows_of, beta, l2, rng)
    rows, pi = sample_rows(scores, s, rng)
    return rows_of.sandwich_rows(rows, beta[rows] / pi), rows.shape[0]


# A reused reference M is kept while the sample it drew certifies λ_min(W) ≥ tr(W)/(REFERENCE_SPREAD·d)
# (``LeverageReference``). The sample's own error moves the eigenvalues of W by up to ±ε = 0.5, i.e. a
# spread min/mean down to ~1/2 with a perfect reference, so 4 leaves room for that; a score then
# under-states its row's share of the true scores by at most 4×.
REFERENCE_SPREAD = 4.0


class LeverageReference:
    """Leverage scores ℓ̃ᵢ = |βᵢ|·gᵢ, gᵢ = cᵢᵀ M cᵢ, with M kept across the iterations of one solve.

    Why it is enough: let A = Cᵀ|D|C + Λ (the true scores are ℓᵢ = |βᵢ| cᵢᵀA⁻¹cᵢ) and
    W = M^{1/2} A M^{1/2}. If λ_min(W) ≥ tr(W)/(Γd) then M ⪰ (tr(W)/(Γd))·A⁻¹, so ℓ̃ᵢ ≥ (tr W/(Γd))·ℓᵢ,
    while Σℓ̃ ≤ tr(W); the sampling probabilities ℓ̃ᵢ/Σℓ̃ are then ≥ ℓᵢ/(Γd): at least 1/Γ of those of
    exact scores. A is not formed: its unbiased sample Ã (same rows, weights |βᵢ|/πᵢ) stands in,
    and Γ = REFERENCE_SPREAD leaves room for the sample's own error. So each iteration pays O(n) for its
    scores and the sampled sandwich, and only an iteration whose β has moved the Gram matrix off
    the reference pays the embedding and the JL pass (and draws its rows again).

    The first reference is the column scale D (M = D⁻²): squared lengths of the rows of C D⁻¹,
    one pass; exact up to β on i.i.d. rows, and refused by the check on C whose scaled columns are
    far from orthogonal. Afterwards M = R⁻¹R⁻ᵀ from ``embedding_factor`` and gᵢ by ``jl_row_norms``.
    """

    def __init__(self, column_scale=None):
        self.column_scale = column_scale
        self.factor = None  # R (upper triangular), once the embedding has run
        self.row_norms = None  # gᵢ
        self.refreshes = 0
        # Centred (``centre``): μ, the rows' scale D̃ (norms of the centred columns) and the constant columns.
        self.mean = None
        self.centred_scale = None
        self.constant_columns = None

    def first_scale(self, matrix):
        """D, the first reference's column scale (from C's column squares when none was given, or from the
        function given instead, called here: a solve's start first reads C for its fit's mean, whose pass
        also forms the squares that D needs; zero columns 1)."""
        if self.column_scale is None:
            self.column_scale = np.sqrt(matrix.column_squares())
        elif callable(self.column_scale):
            self.column_scale = self.column_scale()
        self.column_scale = np.where(self.column_scale > 0, self.column_scale, 1.0)
        return self.column_scale

    def centre(self, matrix, mean):
        """Draw from the centred rows cᵢ − μ from now on (μ: C's column mean). The first reference's scale
        becomes D̃ⱼ = ‖C_j − μ_j‖ = (‖C_j‖² − nμⱼ²)^{1/2} (column squares kept by the matrix: no pass), constant
        columns (CONSTANT_COLUMN_RTOL) 1 and left out of the certificate; row factors formed for the uncentred
        rows (by the start's pass) are formed again, centred, when first needed."""
        self.mean = mean
        self.row_norms = None
        self.factor = None
        squares = np.asarray(matrix.column_squares(), dtype=np.float64)
        centred = squares - matrix.n * mean * mean
        self.constant_columns = ~(centred > CONSTANT_COLUMN_RTOL * squares)
        self.centred_scale = np.sqrt(np.where(self.constant_columns, 1.0, centred))

    def score_scale(self, matrix):
        """The scale whose reference M = scale⁻² gives the first row factors: D, or D̃ once centred."""
        return self.first_scale(matrix) if self.mean is None else self.centred_scale

    def row_factors(self, matrix):
        """gᵢ for every row (the first time: the squared row lengths of C D⁻¹, one pass, or of the centred
        rows (cᵢ − μ)D̃⁻¹, one read with its matvec; the solve's start samples its fit by the uncentred
        ones too, ``fastnewton.start.sampled_normal_system``)."""
        if self.row_norms is None:
            self.row_norms = sampled_rows_of(matrix, self.mean).row_squares(1.0 / self.score_scale(matrix)**2)
        return self.row_norms

    def row_factors_and_matvec(self, matrix, x):
        """(the uncentred ``row_factors(matrix)``, C·x): the first time in one read of C (the start's sampled fit
        needs C·D⁻²μ next to them: one pass less, ~5 ms at dense 10⁵ × 256)."""
        if self.row_norms is not None and self.mean is None:
            return self.row_norms, matrix.matvec(x)
        row_norms, product = matrix.row_squares_and_matvec(1.0 / self.first_scale(matrix)**2, x)
        if self.mean is None:
            self.row_norms = row_norms
        return row_norms, product

    def sampled_sandwich(self, matrix, beta, l2, s, rng, mean=None):
        if mean is not None and self.mean is None:
            self.centre(matrix, mean)
        rows_of = sampled_rows_of(matrix, self.mean)
        rows, pi = sample_rows(np.abs(beta) * self.row_factors(matrix), s, rng)
        signed, absolute = self.sandwich_of_sample(matrix, rows, beta[rows] / pi)
        if self.certified(absolute, l2):
            return signed, rows.shape[0]
        self.refreshes += 1
        self.factor = embedding_factor(osnap_embed(rows_of, beta, rng), l2)
        self.row_norms = jl_row_norms(rows_of, jl_directions(self.factor, rng))
        rows, pi = sample_rows(np.abs(beta) * self.row_norms, s, rng)
        return rows_of.sandwich_rows(rows, beta[rows] / pi), rows.shape[0]

    def sandwich_of_sample(self, matrix, rows, weights):
        """(signed, absolute) sampled sandwich of the rows drawn by this reference (``sandwich_rows_and_absolute``
        of C's rows, or of the centred ones once ``centre``d).

        While the reference is the column scale (before any refresh), dense C's SYRKs run in float32 on the rows
        scaled by it (``DenseMatrix.sandwich_rows_and_absolute``; dense 10⁵ × 256, 24k sampled rows: the
        sketched Hessian ~1.5× faster). Safe there because the sample is kept only when it certifies that
        scale (``certified``): the whitened W then has λ_min(W) ≥ tr(W)/(REFERENCE_SPREAD·d), so the float32
        rounding, ~1e-7 of W's entries, moves its eigenvalues by ~1e-7·d·REFERENCE_SPREAD of λ_min at most
        (~1e-4 at d = 256), against the sample's own ε. After a refresh the reference is an embedding's
        factor, whose whitening the column scale does not give (strongly correlated columns: D⁻¹-scaled rows
        can span a Gram of condition far beyond float32's 1e7), so its samples stay in float64. A CSR C's
        pair updates have no float32 kernel: float64."""
        rows_of = sampled_rows_of(matrix, self.mean)
        if self.factor is None and matrix.format == "dense":
            return rows_of.sandwich_rows_and_absolute(rows, weights, column_scale=self.score_scale(matrix))
        return rows_of.sandwich_rows_and_absolute(rows, weights)

    def certified(self, absolute, l2):
        """Whether λ_min(W) ≥ tr(W)/(REFERENCE_SPREAD·d) for W = M^{1/2}(Ã + Λ)M^{1/2} (one Cholesky), over the
        columns that are not constant once centred."""
        gram = absolute + np.diag(ridge(np.diag(absolute).copy(), l2))
        if self.factor is None:
            scale = self.column_scale if self.mean is None else self.centred_scale
            whitened = gram / np.outer(scale, scale)
        else:
            half = scipy.linalg.solve_triangular(self.factor, gram, trans="T", check_finite=False)
            whitened = scipy.linalg.solve_triangular(self.factor, half.T, trans="T", check_finite=False)
            whitened = 0.5 * (whitened + whitened.T)
        if self.constant_columns is not None and self.constant_columns.any():
            kept = np.flatnonzero(~self.constant_columns)
            whitened = whitened[np.ix_(kept, kept)]
        return spread_certified(whitened)


def spread_certified(whitened):
    """Whether λ_min(W) ≥ tr(W)/(REFERENCE_SPREAD·d) for a whitened symmetric W (d × d; one Cholesky):
    then every reference score is at least 1/REFERENCE_SPREAD of its share of the true ones
    (``LeverageReference``)."""
    d = whitened.shape[0]
    if d == 0 or not np.all(np.isfinite(whitened)):
        return False
    floor = np.trace(whitened) / (REFERENCE_SPREAD * d)
    if not floor > 0:
        return False
    try:
        scipy.linalg.cholesky(whitened - floor * np.eye(d), lower=False, check_finite=False)
    except np.linalg.LinAlgError:
        return False
    return True
