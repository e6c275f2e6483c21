"""kernels/blas.py: dsyrk called from compiled code by symbol name, against NumPy; and its cached callers
loaded in a fresh process (where the name is resolved anew)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from fastnewton.kernels.blas import syrk_upper

# A fresh interpreter imports numpy/scipy/numba and compiles or loads one kernel: seconds; 240 s only
# guards against a hang (it is not a timing assertion).
SUBPROCESS_TIMEOUT = 240


@njit
def _compiled_syrk_upper(B, alpha, beta, out):
    syrk_upper(B, alpha, beta, out)


def _expected(B, alpha, beta, out):
    """α·BᵀB + β·out on the upper triangle, out below it; and a bound on dsyrk's rounding there
    (k products summed: k·eps relative to α·|B|ᵀ|B| + |β·out|)."""
    upper = np.triu(np.ones(out.shape, dtype=bool))
    expected = np.where(upper, alpha * (B.T @ B) + beta * out, out)
    bound = (B.shape[0] + 2) * np.finfo(np.float64).eps * (abs(alpha) * (abs(B).T @ abs(B)) + abs(beta * out))
    return expected, np.where(upper, bound, 0.0)


@pytest.mark.parametrize(("n", "d"), [(1, 1), (5, 7), (40, 3), (300, 48), (513, 64), (0, 4), (6, 0), (0, 0)])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (-1.0, 1.0), (0.5, -2.0)])
def test_syrk_upper_matches_numpy_on_the_upper_triangle_and_keeps_the_lower_one(n, d, alpha, beta):
    # n < d, no rows (the triangle becomes β·out) and no columns included
    rng = np.random.default_rng(n * 100 + d)
    B = rng.standard_normal((n, d))
    start = rng.standard_normal((d, d))
    expected, bound = _expected(B, alpha, beta, start)
    out = start.copy()
    _compiled_syrk_upper(B, alpha, beta, out)
    assert np.all(abs(out - expected) <= bound)
    np.testing.assert_array_equal(np.tril(out, -1), np.tril(start, -1))
    plain = start.copy()
    syrk_upper(B, alpha, beta, plain)  # the pure-Python form (NUMBA_DISABLE_JIT): the same routine, the same bits
    np.testing.assert_array_equal(plain, out)


def test_syrk_upper_reads_row_blocks_of_a_larger_array():
    # B[:p] and B[p:q] of one C-ordered buffer (as the small Newton's sandwich splits rows by sign)
    rng = np.random.default_rng(3)
    B = rng.standard_normal((50, 9))
    for rows in (slice(0, 20), slice(20, 50)):
        out = np.zeros((9, 9))
        _compiled_syrk_upper(B[rows], 1.0, 0.0, out)
        expected, bound = _expected(B[rows], 1.0, 0.0, np.zeros((9, 9)))
        assert np.all(abs(out - expected) <= bound)


def test_small_newton_sandwich_matches_numpy():
    """The compiled dense sandwich Cᵀ diag(β) C, by tiles (``weighted_gram_upper``) at the small problems' sizes and
    by the two dsyrk calls past them (wider than GRAM_TILES_MAX_WIDTH, more entries than GRAM_TILES_MAX_ENTRIES),
    within the rounding bound of its n-term sums and exactly symmetric."""
    from fastnewton.kernels.dense import GRAM_TILES_MAX_ENTRIES, GRAM_TILES_MAX_WIDTH, gram_tiles_width
    from fastnewton.kernels.small_newton import _sandwich, _sandwich_work

    rng = np.random.default_rng(4)
    wide = GRAM_TILES_MAX_WIDTH + 3
    long = GRAM_TILES_MAX_ENTRIES // 64 + 1
    for n, d, signs, tiled in [(200, 40, "both", True), (64, 80, "both", True), (90, 12, "positive", True),
                               (90, 12, "negative", True), (30, 5, "zero", True), (40, wide, "both", False),
                               (40, wide, "negative", False), (long, 64, "both", False)]:
        assert (gram_tiles_width(n, d) > 0) == tiled
        C = rng.standard_normal((n, d))
        beta = {"both": rng.standard_normal(n), "positive": rng.random(n), "negative": -rng.random(n),
                "zero": np.zeros(n)}[signs]
        matrix = (C, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0), False)
        out = np.full((d, d), np.nan)
        _sandwich(matrix, beta, out, _sandwich_work(matrix, n, d))
        expected = C.T @ (beta[:, None] * C)
        bound = (n + 2) * np.finfo(np.float64).eps * (abs(C).T @ (abs(beta)[:, None] * abs(C)))
        assert np.all(abs(out - expected) <= bound)
        np.testing.assert_array_equal(out, out.T)


# A fresh interpreter that imports only the small Newton's kernel module (which registers the symbol)
# and runs its cached dense sandwich, which calls dsyrk by name (C wider than the compiled tiles take).
CACHED_SANDWICH = """
import numpy as np
import llvmlite.binding
from fastnewton.kernels.dense import GRAM_TILES_MAX_WIDTH
from fastnewton.kernels.small_newton import _sandwich, _sandwich_work
rng = np.random.default_rng(7)
d = GRAM_TILES_MAX_WIDTH + 5
C = rng.standard_normal((120, d))
beta = rng.standard_normal(120)
out = np.empty((d, d))
matrix = (C, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0), False)
_sandwich(matrix, beta, out, _sandwich_work(matrix, 120, d))
error = np.max(abs(out - C.T @ (beta[:, None] * C))) / np.max(abs(C).T @ (abs(beta)[:, None] * abs(C)))
print("error", error, "hits", len(_sandwich.stats.cache_hits), "misses", len(_sandwich.stats.cache_misses),
      "address", llvmlite.binding.address_of_symbol("fastnewton_dsyrk"))
"""


def test_a_fresh_process_loads_the_cached_sandwich_and_resolves_dsyrk_by_name(tmp_path):
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)  # a coverage run disables the JIT: there would be no cache to test
    env.pop("NUMBA_DEBUG_CACHE", None)
    env["NUMBA_CACHE_DIR"] = str(tmp_path)  # an empty cache: the first process compiles and saves

    def run():
        result = subprocess.run([sys.executable, "-c", CACHED_SANDWICH], capture_output=True, text=True,
                                timeout=SUBPROCESS_TIMEOUT, env=env)
        assert result.returncode == 0, result.stderr
        line = result.stdout.splitlines()[-1].split()
        return float(line[1]), int(line[3]), int(line[5])

    error, hits, misses = run()
    assert error < 1e-14 and hits == 0 and misses == 1
    assert any(name.endswith(".nbc") and "_sandwich" in name for name in _files(tmp_path))
    # Loaded from the cache in a new process, where SciPy's BLAS may lie at another address: the cached
    # code names the symbol, which this process's import of the module registered before the call.
    error, hits, misses = run()
    assert error < 1e-14 and hits == 1 and misses == 0


def _files(folder):
    return [name for _, _, names in os.walk(folder) for name in names]


def test_the_symbol_is_registered_by_importing_the_module():
    import llvmlite.binding

    address = llvmlite.binding.address_of_symbol("fastnewton_dsyrk")
    assert address is not None and address != 0
