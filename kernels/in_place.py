"""Arrays read in place by address: a kernel that takes many problems' arrays reads each where it lies.

``array_at(address, shape, dtype)`` is the C-contiguous array of ``shape`` whose first element is at
``address`` (an int64, the ``ndarray.ctypes.data`` of an array the caller holds): no copy, no
owner. A kernel given the addresses of a thousand problems' matrices reads each in place, where a
packed copy of them all would first fill ~10⁸ bytes of fresh memory (page faults and zeroing
that cost the first call ~0.1–0.2 s at 1000 dense problems of n ≤ 512, d ≤ 64). Numba's typed
lists would also do it, but they compile their methods in every new process (0.2–0.5 s per
element type, measured; their code is not cached on disk).

The caller keeps each array alive, C-contiguous and of ``dtype`` for the whole call; the kernel
only reads through the view.
"""
import ctypes

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload


def array_at(address, shape, dtype):
    """The C-contiguous ``dtype`` array of ``shape`` at ``address`` (the pure-Python form, run under
    NUMBA_DISABLE_JIT)."""
    return numba.carray(ctypes.c_void_p(int(address)), shape, dtype)


@intrinsic
def _pointer(typingctx, address, dtype):
    """The int64 ``address`` as a pointer to ``dtype`` elements (an LLVM inttoptr: no instruction)."""
    if not (isinstance(address, types.Integer) and isinstance(dtype, types.NumberClass)):
        return None
    pointer_type = types.CPointer(dtype.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(address, dtype), codegen


@overload(array_at)
def _array_at(address, shape, dtype):
    def implementation(address, shape, dtype):
        return numba.carray(_pointer(address, dtype), shape)

    return implementation


@numba.njit(cache=True)
def int64_indices_at(address, length, index_bytes):
    """The ``length`` indices at ``address`` as int64: the array itself where it holds int64 (``index_bytes`` 8), an
    int64 copy where it holds int32 (4, SciPy's usual index type). A CSR C's indices are read where they lie and
    widened by the task that reads them (a few µs for a small C, in cache), where widening a thousand problems'
    indices side by side beforehand wrote ~17 MB per call of solve_many (bench/many_small.py's 1000 CSR problems:
    their description 9.1 → 7.0 ms, the compiled solves unchanged)."""
    if index_bytes == 8:
        return array_at(address, (length,), np.int64)
    wide = np.empty(length, dtype=np.int64)
    narrow = array_at(address, (length,), np.int32)
    for i in range(length):
        wide[i] = narrow[i]
    return wide
