"""kernels/in_place.py: arrays read where they lie, compiled and in its pure-Python form (NUMBA_DISABLE_JIT)."""
import numpy as np
import pytest
import scipy.sparse as sp
from numba import njit

from fastnewton.kernels.in_place import array_at


@njit
def _compiled_views(addresses, n, d):
    """Problem-like reads: a row-major n × d float64 matrix, and an int64 vector of length n."""
    A = array_at(addresses[0], (n, d), np.float64)
    index = array_at(addresses[1], (n,), np.int64)
    out = np.empty((n, d))
    for i in range(n):
        for j in range(d):
            out[i, j] = A[i, j] + index[i]
    return out


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (40, 17)])
def test_array_at_reads_the_arrays_in_place(shape):
    rng = np.random.default_rng(sum(shape))
    A = rng.standard_normal(shape)
    index = rng.integers(-5, 5, shape[0]).astype(np.int64)
    A.flags.writeable = False  # read-only arrays are read the same way
    addresses = np.array([A.ctypes.data, index.ctypes.data], dtype=np.int64)
    np.testing.assert_array_equal(_compiled_views(addresses, *shape), A + index[:, None])
    view = array_at(A.ctypes.data, shape, np.float64)  # the pure-Python form
    np.testing.assert_array_equal(view, A)
    assert np.shares_memory(view, A)


def test_solve_many_reads_float64_inputs_in_place_and_copies_only_other_dtypes():
    """Dense float64 C and CSR arrays (float64 data, int32 or int64 indices) are read where the problem holds them (no
    copy), each CSR C with its index size; float32 values are converted, for that problem only."""
    from fastnewton.kernels import small_newton as kernel
    from fastnewton.many_small import _Packed, _start_kind
    from fastnewton.problem import Problem

    rng = np.random.default_rng(1)
    dense = rng.standard_normal((30, 5))
    csr32 = sp.random(200, 40, density=0.05, format="csr", random_state=2)
    csr64 = csr32.copy()
    # set after construction: SciPy's constructor would downcast indices that fit in int32
    csr64.indices, csr64.indptr = csr64.indices.astype(np.int64), csr64.indptr.astype(np.int64)
    assert csr32.indices.dtype == np.int32
    inputs = [(dense, 5), (dense.astype(np.float32), 5), (csr64, 40), (csr32, 40)]
    problems = [Problem(C, np.full(C.shape[0], 1.0 / C.shape[0])) for C, _ in inputs]
    pack = _Packed.of_problems(problems, [_start_kind(problem.row_model.relu, problem.facts, "zeros", problem.d)
                                          for problem in problems])
    values, indptr, indices = (pack.addresses[:, field] for field in (kernel.A_VALUES, kernel.A_INDPTR,
                                                                      kernel.A_INDICES))
    assert list(pack.layout[:, kernel.L_CSR]) == [0, 0, 1, 1]
    assert values[0] == problems[0].matrix.array.ctypes.data
    assert values[1] != problems[1].matrix.array.ctypes.data  # float32: a float64 copy
    held = problems[2].matrix
    assert (values[2], indptr[2], indices[2]) == (held.data.ctypes.data, held.indptr.ctypes.data,
                                                  held.indices.ctypes.data)
    narrow = problems[3].matrix
    assert (values[3], indptr[3], indices[3]) == (narrow.data.ctypes.data, narrow.indptr.ctypes.data,
                                                  narrow.indices.ctypes.data)
    assert list(pack.layout[:, kernel.L_INDEX_BYTES]) == [8, 8, 8, 4]


def test_index_arrays_of_mixed_or_other_types_are_copied_as_int64():
    """``_index_arrays``: int32 or int64 pairs as they are; mixed, other integer types or strided ones as int64
    copies."""
    from fastnewton.many_small import _index_arrays

    indptr, indices = np.array([0, 2, 3]), np.array([1, 0, 2])
    for dtype in (np.int32, np.int64):
        pair = (indptr.astype(dtype), indices.astype(dtype))
        kept = _index_arrays(*pair)
        assert kept[0] is pair[0] and kept[1] is pair[1]
    for pair in [(indptr.astype(np.int64), indices.astype(np.int32)),
                 (indptr.astype(np.int16), indices.astype(np.int16)),
                 (indptr.astype(np.int64), np.repeat(indices, 2)[::2])]:
        copied = _index_arrays(*pair)
        assert all(array.dtype == np.int64 and array.flags.c_contiguous for array in copied)
        np.testing.assert_array_equal(copied[0], indptr)
        np.testing.assert_array_equal(copied[1], indices)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_int64_indices_at_reads_int64_in_place_and_widens_int32(dtype):
    """``int64_indices_at``, compiled and in its pure-Python form: the indices' values as int64, extremes included; the
    array itself when it holds int64."""
    from fastnewton.kernels.in_place import int64_indices_at

    info = np.iinfo(dtype)
    source = np.array([0, 1, info.max, info.min, -1, 7], dtype=dtype)

    @njit
    def compiled(address, length, index_bytes):
        return int64_indices_at(address, length, index_bytes).copy()

    for read in (compiled, int64_indices_at.py_func):
        got = read(source.ctypes.data, source.shape[0], source.itemsize)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, source.astype(np.int64))
        assert read(source.ctypes.data, 0, source.itemsize).shape == (0,)
    in_place = np.shares_memory(int64_indices_at.py_func(source.ctypes.data, 6, source.itemsize), source)
    assert in_place == (dtype == np.int64)
