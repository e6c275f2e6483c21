"""Test matrices for the benchmarks: a bag-of-words-like CSR matrix with Zipf-skewed row lengths.

    from matrices import bag_of_words          # from bench/ (or bench.matrices from the root)
    C = bag_of_words(2_000_000, 1024, nnz=10_000_000, max_row_nnz=1000, seed=0)

Text corpora are skewed twice: document lengths follow a power law (most rows hold a
handful of words, a few hold hundreds), and word frequencies follow Zipf's law (a few
columns are in almost every row). Both skews matter to the sparse kernels: long rows
dominate the sandwich's Σᵢ nnzᵢ² pair work, hot columns concentrate its updates.
"""
import numpy as np
import scipy.sparse as sp

# Word frequencies: p_j ∝ 1/(j + 1)^WORD_EXPONENT (Zipf's law, exponent ≈ 1 in natural text);
# column 0 is the most frequent word, as in a vocabulary sorted by frequency.
WORD_EXPONENT = 1.0
# Rows longer than this draw their words without replacement by the Gumbel top-k trick
# (O(d) per row); shorter rows draw with replacement and drop repeats (O(nnz) in all).
DISTINCT_DRAW_LENGTH = 32
_GUMBEL_BATCH_ROWS = 2048


def row_length_pmf(exponent, max_row_nnz):
    """P(L) ∝ L^(−exponent) on L = 1 … max_row_nnz: (lengths, probabilities)."""
    lengths = np.arange(1, max_row_nnz + 1, dtype=np.float64)
    weights = lengths ** -exponent
    return lengths, weights / weights.sum()


def exponent_for_mean(mean, max_row_nnz):
    """The power-law exponent whose row lengths on 1 … max_row_nnz average ``mean`` (bisection)."""
    low, high = 0.0, 6.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        lengths, p = row_length_pmf(middle, max_row_nnz)
        if lengths @ p > mean:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def bag_of_words(n, d, *, nnz, max_row_nnz=1000, seed=0, dtype=np.float64):
    """An n × d CSR matrix with about ``nnz`` stored entries, bag-of-words-like.

    Row lengths are i.i.d. power law on 1 … min(max_row_nnz, d), exponent chosen so the mean
    is nnz / n; each row's columns are distinct words drawn by Zipf frequency; values are
    1 + Poisson(1) counts scaled by 1/√L (a normalised term frequency), so every row of
    C has norm ≈ 1 as a normalised document vector would.
    """
    rng = np.random.default_rng(seed)
    max_row_nnz = min(max_row_nnz, d)
    exponent = exponent_for_mean(nnz / n, max_row_nnz)
    lengths_support, p = row_length_pmf(exponent, max_row_nnz)
    lengths = rng.choice(lengths_support.astype(np.int64), size=n, p=p)
    word_p = 1.0 / np.arange(1, d + 1) ** WORD_EXPONENT
    word_p /= word_p.sum()

    short = lengths <= DISTINCT_DRAW_LENGTH
    short_rows = np.repeat(np.flatnonzero(short), lengths[short])
    short_cols = np.searchsorted(np.cumsum(word_p), rng.random(short_rows.size), side="right")
    np.minimum(short_cols, d - 1, out=short_cols)
    long_index = np.flatnonzero(~short)
    long_rows, long_cols = [], []
    log_p = np.log(word_p)
    for start in range(0, long_index.size, _GUMBEL_BATCH_ROWS):
        block = long_index[start:start + _GUMBEL_BATCH_ROWS]
        keys = log_p + rng.gumbel(size=(block.size, d))
        order = np.argsort(-keys, axis=1)
        for row, ranked in zip(block, order):
            long_rows.append(np.full(lengths[row], row))
            long_cols.append(ranked[:lengths[row]])
    rows = np.concatenate([short_rows] + long_rows)
    cols = np.concatenate([short_cols] + long_cols)
    # repeats of a short row's word collapse into one entry (a count, summed by the conversion)
    counts = (1.0 + rng.poisson(1.0, size=rows.size)) / np.sqrt(np.maximum(lengths[rows], 1))
    C = sp.coo_matrix((counts.astype(dtype), (rows, cols)), shape=(n, d)).tocsr()
    C.sum_duplicates()
    index_dtype = np.int32 if max(C.nnz, d) < 2**31 - 1 else np.int64
    C.indices = C.indices.astype(index_dtype, copy=False)
    C.indptr = C.indptr.astype(index_dtype, copy=False)
    return C


def pair_count(indptr):
    """Σᵢ nnzᵢ(nnzᵢ + 1)/2: the pair updates of an exact sparse sandwich."""
    row_nnz = np.diff(np.asarray(indptr, dtype=np.int64))
    return int(np.sum(row_nnz * (row_nnz + 1) // 2))
