"""kernels/exp.py: simd_exp against the C library's exp (math.exp) over the whole float64 range.

Tolerance: 2 ulp. math.exp (glibc) is within 1 ulp of the exact value and simd_exp's own error
is Horner's rounding (the degree-13 Taylor remainder is < eps/40), measured ≤ 1 ulp from math.exp
here; the bound leaves one ulp for another C library. Distances are counted in representable
doubles (the int64 bit patterns of non-negative doubles are ordered like the values), so they
hold in the subnormal range too. Overflow, underflow to 0 and NaN must match exactly.
"""
import math

import numpy as np
import pytest
from numba import njit

from fastnewton.kernels.exp import power_of_two, simd_exp

MAX_ULPS = 2


@njit(cache=True)
def _exp_loop(x, out):
    for i in range(x.shape[0]):
        out[i] = simd_exp(x[i])


def _simd(x):
    out = np.empty_like(x)
    _exp_loop(x, out)
    return out


def _reference(x):
    def one(v):
        try:
            return math.exp(v)
        except OverflowError:
            return math.inf
    return np.array([one(v) for v in x])


def _ulps(a, b):
    return np.abs(a.view(np.int64) - b.view(np.int64))


def _whole_range(rng):
    """Uniform over [−760, 720] (past both ends), plus the regions where the scaling changes."""
    return np.concatenate([
        rng.uniform(-760.0, 720.0, 200_000),
        rng.uniform(-1.0, 1.0, 50_000),
        rng.uniform(-1e-8, 1e-8, 1_000),
        rng.uniform(-746.0, -707.0, 50_000),   # subnormal results and the underflow to 0
        rng.uniform(705.0, 710.0, 20_000),     # near the overflow
        np.linspace(-0.5 * math.log(2), 0.5 * math.log(2), 2_001),  # r at the edges of the reduction
    ])


def test_simd_exp_within_two_ulp_of_libm_over_the_whole_range():
    x = _whole_range(np.random.default_rng(0))
    got, ref = _simd(x), _reference(x)
    finite = np.isfinite(ref) & (ref > 0.0)
    assert _ulps(got[finite], ref[finite]).max() <= MAX_ULPS
    np.testing.assert_array_equal(got[~finite], ref[~finite])  # inf above 709.78…, 0 below −745.13…


def test_simd_exp_edges_and_special_values():
    largest = math.log(np.finfo(np.float64).max)  # 709.782712893384
    smallest = math.log(np.finfo(np.float64).smallest_subnormal)  # −744.44…
    x = np.array([0.0, -0.0, 1.0, -1.0, largest, np.nextafter(largest, 0.0), np.nextafter(largest, np.inf), 710.0,
                  1e4, smallest, -745.1332191019411, -745.1332191019412, -746.0, -1e4, 1e-300, -1e-300,
                  np.inf, -np.inf, np.nan, -np.nan])
    got, ref = _simd(x), _reference(x)
    assert got[0] == 1.0 and got[1] == 1.0
    assert np.isnan(got[-2:]).all()
    numbers = ~np.isnan(ref)
    assert _ulps(got[numbers], ref[numbers]).max() <= MAX_ULPS
    assert got[7] == np.inf and got[8] == np.inf and got[16] == np.inf
    assert got[12] == 0.0 and got[13] == 0.0 and got[17] == 0.0
    assert got[10] > 0.0  # rounds up to the smallest subnormal, as exp does


def test_python_form_gives_the_compiled_bits():
    """The pure-Python simd_exp (NUMBA_DISABLE_JIT runs it) and power_of_two match the compiled ones."""
    x = np.concatenate([np.random.default_rng(1).uniform(-760.0, 720.0, 300), [0.0, np.inf, -np.inf, np.nan]])
    with np.errstate(over="ignore"):
        python = np.array([getattr(simd_exp, "py_func", simd_exp)(v) for v in x])
    np.testing.assert_array_equal(python.view(np.int64), _simd(x).view(np.int64))
    for k in (-1022, -538, -1, 0, 1, 512, 1023):
        assert power_of_two(k) == 2.0**k


@pytest.mark.parametrize("relu", [False, True])
def test_log_partition_parts_e_matches_numpy_exp(relu):
    """e = exp(z − max z) from the kernel's SIMD loop matches NumPy's exp of the same differences."""
    from fastnewton.kernels.softmax import log_partition_parts

    rng = np.random.default_rng(2)
    u = rng.standard_normal(50_003) * 30
    e = np.empty_like(u)
    top, total = log_partition_parts(u, relu, 4096, e)
    z = np.where(u > 0.0, u, 0.0) if relu else u
    assert top == z.max()
    ref = np.exp(z - top)
    assert _ulps(e, ref).max() <= MAX_ULPS + 1  # NumPy's SIMD exp is itself within 1 ulp (NEP 38's bound)
    naive_total = math.fsum(ref)
    assert abs(total - naive_total) <= 4 * z.shape[0] * np.finfo(np.float64).eps * naive_total
