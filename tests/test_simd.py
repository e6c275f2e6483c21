"""kernels/simd.py: the four-lane update and the lane sums against scalar references and their pure-Python forms
(which NUMBA_DISABLE_JIT runs), bit for bit."""
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from fastnewton.kernels.simd import (GRAM_TILE_HEIGHT, GRAM_TILE_WIDTH, GRAM_TILE_WIDTHS, PRODUCT_TILE_HEIGHT,
                                     PRODUCT_TILE_WIDTHS, _gram_tile_scalar, add_product_tile, add_scaled4, add_scaled_and_lane_sums4,
                                     fused_multiply_add, lane_square_sums4_and_sums4, lane_sums4, row_dots,
                                     subtract_column_products4, subtract_column_products16, weighted_gram_tile)

# A fresh interpreter compiles the small Newton's kernels for another CPU: seconds; 240 s only guards against a hang
# (not a timing assertion).
SUBPROCESS_TIMEOUT = 240


@njit
def _compiled_updates(acc, bases, v, q):
    for t in range(bases.shape[0]):
        add_scaled4(acc, bases[t], v[t], q[t, 0], q[t, 1], q[t, 2], q[t, 3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_scaled4_gives_the_scalar_bits_and_touches_four_slots(dtype):
    """Each lane rounds v·q then the sum (no fused multiply-add), as ``acc[b] += v * q`` does; float32
    values widen exactly; repeated and overlapping bases add in call order; nothing outside the four
    slots of each call changes."""
    rng = np.random.default_rng(0)
    size = 23
    bases = np.array([0, 4, 4, 2, 19, 10, 11, 0], dtype=np.uintp)
    v = (rng.standard_normal(bases.shape[0]) * 1e3).astype(dtype)
    q = (rng.standard_normal((bases.shape[0], 4)) * np.exp(rng.uniform(-30, 30, (bases.shape[0], 4)))).astype(dtype)
    start = rng.standard_normal(size) * 1e5
    compiled = start.copy()
    _compiled_updates(compiled, bases, v, q)
    python = start.copy()
    for t in range(bases.shape[0]):
        add_scaled4(python, int(bases[t]), v[t], *q[t])
    scalar = start.copy()
    for t in range(bases.shape[0]):
        for lane in range(4):
            scalar[bases[t] + lane] += np.float64(v[t]) * np.float64(q[t, lane])
    np.testing.assert_array_equal(compiled, scalar)
    np.testing.assert_array_equal(python, scalar)
    touched = np.zeros(size, dtype=bool)
    for base in bases:
        touched[base:base + 4] = True
    np.testing.assert_array_equal(compiled[~touched], start[~touched])


def _lane_reference(row, weights, x, full):
    """The four lane sums of squares (v·v)·w and of products v·x, each lane in increasing j, one scalar at a time."""
    squares, sums = [0.0] * 4, [0.0] * 4
    for j in range(full):
        value = np.float64(row[j])
        squares[j % 4] += value * value * np.float64(weights[j])
        sums[j % 4] += value * np.float64(x[j])
    return squares, sums


@njit
def _compiled_lanes(row, weights, x, full):
    return lane_sums4(row, x, full), lane_square_sums4_and_sums4(row, weights, x, full)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lane_sums_give_the_scalar_lanes_bits(dtype, contiguous):
    """The 4-wide accumulators of ``lane_sums4`` and ``lane_square_sums4_and_sums4`` (contiguous rows: vector
    code; strided: the scalar loop) round each product and then each sum as the scalar lanes do (no fused
    multiply-add: values spread over 60 orders of magnitude would show one), float32 rows widening exactly;
    and the pure-Python forms (NUMBA_DISABLE_JIT) agree."""
    rng = np.random.default_rng(3)
    for d in (0, 4, 8, 12, 256, 1024):
        row = (rng.standard_normal(2 * d) * np.exp(rng.uniform(-30, 30, 2 * d))).astype(dtype)
        row = row[::2] if not contiguous else np.ascontiguousarray(row[:d])
        weights = np.abs(rng.standard_normal(d)) * np.exp(rng.uniform(-10, 10, d))
        x = rng.standard_normal(d) * np.exp(rng.uniform(-30, 30, d))
        squares, sums = _lane_reference(row, weights, x, d)
        compiled_sums, compiled_both = _compiled_lanes(row, weights, x, d)
        assert compiled_sums == tuple(sums)
        assert compiled_both == tuple(squares) + tuple(sums)
        assert lane_sums4(row, x, d) == tuple(sums)
        assert lane_square_sums4_and_sums4(row, weights, x, d) == tuple(squares) + tuple(sums)
        # A prefix only (the kernels' callers sum the last d mod 4 entries themselves).
        if d >= 8:
            squares, sums = _lane_reference(row, weights, x, d - 4)
            assert _compiled_lanes(row, weights, x, d - 4)[1] == tuple(squares) + tuple(sums)


@njit
def _compiled_update_and_lanes(acc, previous, w, row, x, full):
    return add_scaled_and_lane_sums4(acc, previous, w, row, x, full)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_beside_lane_sums_gives_the_scalar_bits(dtype, contiguous):
    """``add_scaled_and_lane_sums4``: acc[j] += previous[j]·w (each entry rounded as the scalar statement, j < full
    only) and row·x's four lane sums, bit for bit against scalar loops, compiled (vector code on contiguous rows,
    the scalar loop on strided ones) and in its pure-Python form."""
    rng = np.random.default_rng(5)
    for d in (0, 4, 12, 256):
        full = d - 4 if d >= 8 else d
        rows = (rng.standard_normal((2, 2 * d)) * np.exp(rng.uniform(-30, 30, (2, 2 * d)))).astype(dtype)
        previous, row = (rows[:, ::2] if not contiguous else np.ascontiguousarray(rows[:, :d]))
        x = rng.standard_normal(d) * np.exp(rng.uniform(-30, 30, d))
        w = float(rng.standard_normal() * 1e3)
        start = rng.standard_normal(d) * 1e5
        expected = start.copy()
        for j in range(full):
            expected[j] += np.float64(previous[j]) * w
        _, sums = _lane_reference(row, np.ones(d), x, full)
        for run in (_compiled_update_and_lanes, add_scaled_and_lane_sums4):
            acc = start.copy()
            assert run(acc, previous, w, row, x, full) == tuple(sums)
            np.testing.assert_array_equal(acc, expected)


@njit
def _compiled_row_dots(A, x, out):
    row_dots(A, x, out)


def test_row_dots_give_row_dots_bits_for_every_row_and_width():
    """``row_dots``: every row's ``kernels.dense.row_dot`` (four lane sums, the last d mod 4 terms into lanes 0–2,
    then (c₀ + c₁) + (c₂ + c₃)) bit for bit, compiled and by its scalar loop (called from Python), with values over
    60 orders of magnitude (a fused multiply-add or another order would show); n mod 4 = 0 … 3 (the rows after the
    groups of four), d mod 4 = 0 … 3, no rows, and a strided A (the scalar loop: the same sums)."""
    from fastnewton.kernels.dense import row_dot

    rng = np.random.default_rng(43)
    for n in (0, 1, 3, 4, 9, 38):
        for d in (1, 2, 3, 4, 5, 7, 48, 63):
            A = rng.standard_normal((n, 2 * d)) * np.exp(rng.uniform(-30, 30, (n, 2 * d)))
            x = rng.standard_normal(d) * np.exp(rng.uniform(-30, 30, d))
            for matrix in (np.ascontiguousarray(A[:, :d]), A[:, ::2]):
                expected = np.array([row_dot(np.ascontiguousarray(row), x) for row in matrix])
                for run in (_compiled_row_dots, row_dots):
                    out = np.full(n, np.nan)
                    run(matrix, x, out)
                    np.testing.assert_array_equal(out, expected)


@njit
def _compiled_column_products(t, U, column, rows, wide):
    for start in range(0, t.shape[0] - (16 if wide else 4) + 1, 16 if wide else 4):
        if wide:
            subtract_column_products16(t, start, U, column, rows)
        else:
            subtract_column_products4(t, start, U, column, rows)


@pytest.mark.parametrize("wide", [False, True], ids=["4", "16"])
def test_column_products_give_the_scalar_bits(wide):
    """``subtract_column_products4`` / ``16``: t[start + r] −= U[k, start + r]·U[k, column] in k order, bit for bit
    against the scalar statements, compiled and in the pure-Python form."""
    rng = np.random.default_rng(11)
    d = 32
    U = rng.standard_normal((d, d)) * np.exp(rng.uniform(-30, 30, (d, d)))
    start_values = rng.standard_normal(d) * 1e5
    for rows in (0, 1, 7, 32):
        expected = start_values.copy()
        for i in range(d):
            for k in range(rows):
                expected[i] -= U[k, i] * U[k, 5]
        t = start_values.copy()
        _compiled_column_products(t, U, 5, rows, wide)
        np.testing.assert_array_equal(t, expected)
        t = start_values.copy()
        for start in range(0, d, 16 if wide else 4):
            (subtract_column_products16 if wide else subtract_column_products4)(t, start, U, 5, rows)
        np.testing.assert_array_equal(t, expected)


@njit
def _compiled_gram_tile(A, weights, start, stop, j0, l0, height, width, weighted_rows, out):
    weighted_gram_tile(A, weights, start, stop, j0, l0, height, width, weighted_rows, out)


# The scalar statements of ``weighted_gram_tile`` run as plain Python, each fused multiply-add exact
# (``fused_multiply_add``'s pure-Python form: the exact sum as a fraction, rounded once).
_gram_tile_reference = getattr(_gram_tile_scalar, "py_func", _gram_tile_scalar)


@pytest.mark.parametrize("weighted_rows", [False, True])
def test_weighted_gram_tile_gives_the_scalar_bits_and_writes_its_tile_only(weighted_rows):
    """``weighted_gram_tile``: out[j0 + t, l0 + h] = Σ_{i ∈ [start, stop)} A[i, j0 + t]·(wᵢ·A[i, l0 + h]) in increasing
    i by fused multiply-adds (with ``weighted_rows``, Σᵢ (wᵢ·A[i, j0 + t])·A[i, l0 + h]), from 0.0 where start = 0 (out's
    NaN there is not read) and continued from out's values where start > 0, bit for bit against the scalar
    statements with exact fused multiply-adds (entries over 60 orders of magnitude: separate roundings would show),
    for every height and width, compiled and in the pure-Python form; a sum over rows taken in two blocks has the
    bits of one pass; nothing outside the tile changes. Tiles at the edges of A and out (the last columns of a row:
    no read past it), and no rows."""
    rng = np.random.default_rng(13)
    width = 3 * GRAM_TILE_WIDTH
    for n in (0, 1, 7, 40):
        A = rng.standard_normal((n, width)) * np.exp(rng.uniform(-30, 30, (n, width)))
        weights = rng.standard_normal(n) * np.exp(rng.uniform(-10, 10, n))
        weights[::5] = 0.0
        for height in range(1, GRAM_TILE_HEIGHT + 1):
            for tile_width in GRAM_TILE_WIDTHS:
                for j0, l0 in ((0, 0), (GRAM_TILE_HEIGHT, GRAM_TILE_WIDTH), (width - height, width - tile_width)):
                    before = rng.standard_normal((width, width))
                    before[j0:j0 + height, l0:l0 + tile_width] = np.nan
                    expected = before.copy()
                    _gram_tile_reference(A, weights, 0, n, j0, l0, height, tile_width, weighted_rows, expected)
                    middle = n // 3
                    for run in (_compiled_gram_tile, weighted_gram_tile):
                        out = before.copy()
                        run(A, weights, 0, n, j0, l0, height, tile_width, weighted_rows, out)
                        np.testing.assert_array_equal(out, expected)
                        out = before.copy()
                        run(A, weights, 0, middle, j0, l0, height, tile_width, weighted_rows, out)
                        run(A, weights, middle, n, j0, l0, height, tile_width, weighted_rows, out)
                        np.testing.assert_array_equal(out, expected)
                    if 0 < middle:  # continued from whatever out holds
                        continued = rng.standard_normal((width, width))
                        expected = continued.copy()
                        _gram_tile_reference(A, weights, middle, n, j0, l0, height, tile_width, weighted_rows,
                                             expected)
                        out = continued.copy()
                        _compiled_gram_tile(A, weights, middle, n, j0, l0, height, tile_width, weighted_rows, out)
                        np.testing.assert_array_equal(out, expected)


def test_fused_multiply_add_rounds_once():
    """``fused_multiply_add``: a·b + c with one rounding, compiled (LLVM's fma) and in the pure-Python form (exact
    fractions): (1 + 2⁻³⁰)(1 − 2⁻³⁰) − 1 is −2⁻⁶⁰ (a product rounded first gives 0); random operands over 600 orders
    of magnitude agree bit for bit; overflow of the exact sum gives ±inf, infinite and NaN operands propagate as
    a·b + c does, and an exact zero has IEEE's sign."""
    compiled = njit(lambda a, b, c: fused_multiply_add(a, b, c))
    a, b = 1.0 + 2.0**-30, 1.0 - 2.0**-30
    assert a * b - 1.0 == 0.0
    assert fused_multiply_add(a, b, -1.0) == compiled(a, b, -1.0) == -(2.0**-60)
    rng = np.random.default_rng(3)
    values = rng.standard_normal((2000, 3)) * np.exp(rng.uniform(-300, 300, (2000, 3)) / 2)
    values[::7, 2] = -values[::7, 0] * values[::7, 1]  # cancellation: the rounding of the product decides the sign
    for x, y, z in values:
        assert fused_multiply_add(x, y, z) == compiled(x, y, z)
    big = np.finfo(np.float64).max
    for args in ((big, 2.0, 0.0), (-big, 2.0, 0.0), (big, 2.0, -big), (np.inf, 1.0, 1.0), (np.inf, 0.0, 1.0),
                 (np.nan, 1.0, 1.0), (1.0, 1.0, -np.inf)):
        np.testing.assert_array_equal(fused_multiply_add(*args), compiled(*args))
    for args in ((-0.0, 5.0, -0.0), (0.0, -5.0, -0.0), (0.0, 5.0, -0.0), (2.0, 3.0, -6.0)):  # signed zeros as IEEE
        ieee = args[0] * args[1] + args[2]  # exact here: no rounding to fuse away
        assert np.signbit(fused_multiply_add(*args)) == np.signbit(compiled(*args)) == np.signbit(ieee)


@njit
def _compiled_product_tile(A, Q, start, stop, t0, height, l0, width, out):
    add_product_tile(A, Q, start, stop, t0, height, l0, width, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_product_tile_gives_the_scalar_bits_for_every_shape_and_writes_its_tile_only(dtype):
    """``add_product_tile``: out[t0 + t, l0 + h] += Σ A[i, l0 + h]·Q[i, t0 + t] over i ∈ [start, stop) in increasing i,
    continued from out's values, bit for bit against the scalar statements (no fused multiply-add: values over 60
    orders of magnitude would show one; float32 A widened exactly), compiled and by its scalar loop (called from
    Python), for every height up to PRODUCT_TILE_HEIGHT and every width; tiles at the last rows and columns (no read
    past them), an empty row range, and nothing outside the tile changes."""
    rng = np.random.default_rng(31)
    n, d, k = 29, 2 * max(PRODUCT_TILE_WIDTHS) + 3, PRODUCT_TILE_HEIGHT + 3
    A = (rng.standard_normal((n, d)) * np.exp(rng.uniform(-30, 30, (n, d)))).astype(dtype)
    Q = rng.standard_normal((n, k)) * np.exp(rng.uniform(-30, 30, (n, k)))
    A[::4] = 0.0
    for height in range(1, PRODUCT_TILE_HEIGHT + 1):
        for width in PRODUCT_TILE_WIDTHS:
            for start, stop, t0, l0 in ((0, n, 0, 0), (5, 17, k - height, d - width), (3, 3, 1, 2)):
                before = rng.standard_normal((k, d))
                expected = before.copy()
                for t in range(height):
                    for h in range(width):
                        total = expected[t0 + t, l0 + h]
                        for i in range(start, stop):
                            total += np.float64(A[i, l0 + h]) * Q[i, t0 + t]
                        expected[t0 + t, l0 + h] = total
                for run in (_compiled_product_tile, add_product_tile):
                    out = before.copy()
                    run(A, Q, start, stop, t0, height, l0, width, out)
                    np.testing.assert_array_equal(out, expected)


# Numba compiled for an AVX2 CPU (which this machine can run): 16 vector registers, so tiles of four rows.
# The sandwich of kernels/small_newton.py, by those tiles, against NumPy within its rounding bound (worst ratio).
AVX2_TILES = """
import numpy as np
from fastnewton.kernels.simd import GRAM_TILE_HEIGHT
from fastnewton.kernels.small_newton import _sandwich, _sandwich_work
rng = np.random.default_rng(5)
worst = 0.0
for n, d in [(90, 12), (64, 37), (200, 48), (33, 5), (70, 33), (20, 2), (40, 19), (50, 43)]:
    C = rng.standard_normal((n, d))
    beta = rng.standard_normal(n)
    matrix = (C, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0), False)
    out = np.full((d, d), np.nan)
    _sandwich(matrix, beta, out, _sandwich_work(matrix, n, d))
    bound = (n + 2) * np.finfo(np.float64).eps * (abs(C).T @ (abs(beta)[:, None] * abs(C)))
    worst = max(worst, float(np.max(abs(out - C.T @ (beta[:, None] * C)) / bound)))
    assert np.array_equal(out, out.T)
from fastnewton.kernels.dense import chunk_rmatmat, tiled_chunk_rmatmat
from fastnewton.kernels.simd import PRODUCT_TILE_HEIGHT
for n, d, k in [(300, 37, 19), (40, 64, 3), (9, 5, 6)]:
    A, Q = rng.standard_normal((n, d)), rng.standard_normal((n, k))
    tiled, flat = np.empty((k, d)), np.empty(d * k)
    tiled_chunk_rmatmat(A, Q, 0, n, tiled)
    chunk_rmatmat(A, Q, 0, n, np.empty((k, d)), flat, False)
    assert np.array_equal(tiled.T, flat.reshape(d, k))
print(GRAM_TILE_HEIGHT, PRODUCT_TILE_HEIGHT, worst)
"""
HASWELL_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fsgsbase,+fxsr,+lzcnt,+mmx,+movbe,+pclmul,"
                    "+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,+xsaveopt")


def test_gram_tiles_of_four_rows_on_an_avx2_target(tmp_path):
    """Where Numba's target CPU has no AVX-512 (here one set by NUMBA_CPU_NAME and NUMBA_CPU_FEATURES in a fresh
    process), the tiles are GRAM_TILE_HEIGHT = PRODUCT_TILE_HEIGHT = 4 rows, the compiled dense sandwich made of them
    is Cᵀ diag(β) C within its rounding bound, and the tiled Cᵀ Q has the bits of ``chunk_rmatmat``. Runs where this CPU can execute AVX2 code; skipped elsewhere."""
    from llvmlite import binding

    if "+avx2" not in binding.get_host_cpu_features().flatten().split(","):
        pytest.skip("this CPU cannot run AVX2 code")
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)
    env.update(NUMBA_CACHE_DIR=str(tmp_path), NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=HASWELL_FEATURES)
    result = subprocess.run([sys.executable, "-c", AVX2_TILES], capture_output=True, text=True, env=env,
                            timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr
    height, product_height, worst = result.stdout.split()
    assert int(height) == int(product_height) == 4 and float(worst) <= 1.0
