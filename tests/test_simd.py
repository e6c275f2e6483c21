"""kernels/simd.py: the four-lane update against its pure-Python form (which NUMBA_DISABLE_JIT runs)."""
import numpy as np
import pytest
from numba import njit

from fastnewton.kernels.simd import add_scaled4


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
