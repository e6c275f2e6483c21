"""bench/matrices.py (the bag-of-words-like test matrix) and bench/probes.py (the bandwidth roofline)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from matrices import bag_of_words, exponent_for_mean, pair_count, row_length_pmf  # noqa: E402
from probes import bandwidth_probes, probe_functions, read_bandwidth  # noqa: E402


def test_bag_of_words_has_skewed_rows_and_hot_columns():
    n, d = 20_000, 256
    C = bag_of_words(n, d, nnz=5 * n, max_row_nnz=200, seed=3)
    row_nnz = np.diff(C.indptr)
    assert C.shape == (n, d) and C.indices.dtype == np.int32 and C.has_canonical_format
    # a power law: most rows short, a few near the cap; the mean near the target (short rows lose repeats)
    assert 1 <= row_nnz.min() and row_nnz.max() <= 200
    assert np.median(row_nnz) <= 2 and row_nnz.max() >= 100
    assert 4.0 <= row_nnz.mean() <= 5.5
    # Zipf word frequencies: column 0 in far more rows than the last column
    column_rows = np.bincount(C.indices, minlength=d)
    assert column_rows[0] > 20 * max(1, column_rows[-1])
    assert np.all(C.data > 0)
    # the same seed gives the same matrix
    again = bag_of_words(n, d, nnz=5 * n, max_row_nnz=200, seed=3)
    np.testing.assert_array_equal(C.indptr, again.indptr)
    np.testing.assert_array_equal(C.indices, again.indices)
    np.testing.assert_array_equal(C.data, again.data)


@pytest.mark.parametrize("mean", [1.5, 5.0, 40.0])
def test_exponent_for_mean_hits_the_mean(mean):
    lengths, p = row_length_pmf(exponent_for_mean(mean, 1000), 1000)
    assert lengths @ p == pytest.approx(mean, rel=1e-9)


def test_pair_count_is_the_sandwich_work():
    indptr = np.array([0, 0, 1, 4, 14])
    assert pair_count(indptr) == 0 + 1 + 6 + 55


def test_bandwidth_probes_and_the_roofline():
    probes = bandwidth_probes(1, megabytes=8, repeats=2)
    assert set(probes) == {"numba_vector_sum", "numba_scalar_lanes_sum", "numba_copy", "numpy_sum", "numpy_copy"}
    assert set(probe_functions(8)) == set(probes)
    assert all(np.isfinite(rate) and rate > 0 for rate in probes.values())
    assert read_bandwidth(1, megabytes=8, repeats=2) > 0
