"""BLAS routines Numba does not wrap, called from compiled kernels by symbol name.

``syrk_upper(B, alpha, beta, out)``: the upper triangle of out (j ≤ l) becomes α·BᵀB + β·out, by
BLAS's dsyrk (half the multiply-adds of the GEMM that ``np.dot(B.T, B)`` runs); the strict lower
triangle is left as it was.

How the compiled code reaches dsyrk: this module registers the address of SciPy's
``scipy.linalg.cython_blas.dsyrk`` with LLVM under the name ``fastnewton_dsyrk`` when it is
imported, and the kernels call that name (as Numba's own ``np.dot`` calls ``numba_xxgemm``). The
machine code that ``cache=True`` writes to disk therefore holds the name, not this process's
address; a later process resolves it when it links the cached code, which it does only after
importing this module (every kernel that calls ``syrk_upper`` imports it). A ctypes or cffi
pointer would instead be a constant of the process that compiled the kernel.

dsyrk runs on the calling thread when BLAS is limited to one thread (``fastnewton.threads``'s
``thread_limits``, which every caller of the compiled solves holds), so a call's bits do not
depend on how many threads run; its rounding is that of SciPy's BLAS (the library of
``np.dot`` in compiled code, not NumPy's own).
"""
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic, overload
from scipy.linalg.blas import dsyrk

SYMBOL = "fastnewton_dsyrk"
binding.add_symbol(SYMBOL, get_cython_function_address("scipy.linalg.cython_blas", "dsyrk"))


def syrk_upper(B, alpha, beta, out):
    """out[j, l] = α·Σᵢ B[i, j]·B[i, l] + β·out[j, l] for j ≤ l (B: k × d, out: d × d, both C-contiguous
    float64); the pure-Python form, run under NUMBA_DISABLE_JIT, by the same BLAS routine."""
    if out.shape[0]:
        # B's rows are the columns of the Fortran-order d × k matrix Bᵀ; out's upper triangle is the lower
        # triangle of the Fortran-order view out.T
        out.T[:, :] = dsyrk(alpha, B.T, beta=beta, c=out.T, trans=0, lower=1)


@intrinsic
def _dsyrk_upper(typingctx, B, alpha, beta, out):
    """dsyrk('L', 'N', d, k, α, B, max(1, d), β, out, max(1, d)) on the Fortran views of the C-order
    arrays: B (k × d) is the d × k matrix Bᵀ, whose product with its transpose is BᵀB; the lower
    triangle of the Fortran d × d matrix is out's upper one. Fortran convention: every argument by
    pointer, 32-bit integers (SciPy's BLAS is LP64)."""
    if not (all(isinstance(a, types.Array) and a.dtype == types.float64 and a.ndim == 2 and a.layout == "C"
                for a in (B, out)) and alpha == types.float64 and beta == types.float64):
        return None
    signature = types.void(B, alpha, beta, out)

    def codegen(context, builder, sig, args):
        B_value, alpha_value, beta_value, out_value = args
        B_array = context.make_array(sig.args[0])(context, builder, B_value)
        out_array = context.make_array(sig.args[3])(context, builder, out_value)
        rows, d = cgutils.unpack_tuple(builder, B_array.shape, 2)
        int32 = ir.IntType(32)
        char = ir.IntType(8)
        double = ir.DoubleType()

        def by_pointer(value):
            return cgutils.alloca_once_value(builder, value)

        d32 = builder.trunc(d, int32)
        leading = builder.select(builder.icmp_signed(">", d32, ir.Constant(int32, 1)), d32, ir.Constant(int32, 1))
        function_type = ir.FunctionType(ir.VoidType(), [
            char.as_pointer(), char.as_pointer(), int32.as_pointer(), int32.as_pointer(), double.as_pointer(),
            double.as_pointer(), int32.as_pointer(), double.as_pointer(), double.as_pointer(), int32.as_pointer()])
        function = cgutils.get_or_insert_function(builder.module, function_type, SYMBOL)
        builder.call(function, [
            by_pointer(ir.Constant(char, ord("L"))), by_pointer(ir.Constant(char, ord("N"))), by_pointer(d32),
            by_pointer(builder.trunc(rows, int32)), by_pointer(alpha_value), B_array.data, by_pointer(leading),
            by_pointer(beta_value), out_array.data, by_pointer(leading)])
        return context.get_dummy_value()

    return signature, codegen


@overload(syrk_upper)
def _syrk_upper(B, alpha, beta, out):
    def implementation(B, alpha, beta, out):
        _dsyrk_upper(B, float(alpha), float(beta), out)

    return implementation
