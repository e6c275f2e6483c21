"""Software prefetch of a row of a dense matrix, for gathers of scattered rows.

A gather of sampled rows of a dense row-major C (``kernels.dense.signed_scaled_rows``: the sampled
sandwich's rows, a few kilobytes each and several rows apart) reads each row as a short stream that
the hardware prefetcher only picks up after its first misses, so the gather waits on memory latency
row after row. ``prefetch_row(A, i)`` asks for every cache line of A[i] while the previous row is
being copied (measured, one thread, 6028 of 10⁵ rows of 256 float64 in increasing order, gathered
into float32: 3.2–3.6 ms without, 2.35 ms with the next row prefetched; 1.5 ms for 6028 adjacent
rows). A prefetch is a hint: it changes no value, only when the loads arrive.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

CACHE_LINE_BYTES = 64


def prefetch_row(A, i):
    """Hint that row A[i] of a C-contiguous 2-d array is read soon (the pure-Python form, run under
    NUMBA_DISABLE_JIT: nothing to do)."""


@intrinsic
def _prefetch(typingctx, row, j):
    """llvm.prefetch of &row[j]: a read, kept in every cache level (locality 3), into the data cache."""
    if not (isinstance(row, types.Array) and row.ndim == 1 and isinstance(j, types.Integer)):
        return None
    signature = types.void(row, j)

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        pointer = builder.gep(array.data, [args[1]])
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, int32, int32, int32]), "llvm.prefetch.p0")
        builder.call(function, [pointer, ir.Constant(int32, 0), ir.Constant(int32, 3), ir.Constant(int32, 1)])
        return context.get_dummy_value()

    return signature, codegen


@overload(prefetch_row)
def _prefetch_row(A, i):
    if not (isinstance(A, types.Array) and A.ndim == 2 and A.layout == "C"):
        return lambda A, i: None
    step = max(1, CACHE_LINE_BYTES * 8 // A.dtype.bitwidth)  # entries per cache line

    def implementation(A, i):
        row = A[i]
        for j in range(0, row.shape[0], step):
            _prefetch(row, j)

    return implementation
