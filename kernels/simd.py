"""Four-lane float64 updates written as LLVM vector operations.

Numba leaves LLVM's SLP vectoriser off (``NUMBA_SLP_VECTORIZE=0``, a process-wide setting the
package must not change), so four adjacent scalar updates ``acc[b + t] += v·q_t`` stay four
loads, four multiplies, four adds and four stores. ``add_scaled4`` emits them as one 4-wide
load, multiply, add and store. Each lane still rounds ``v·q_t`` and then the sum, exactly as the
scalar statement does (no fused multiply-add), so the results keep the scalar code's bits.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

LANES = 4


def add_scaled4(acc, base, v, q0, q1, q2, q3):
    """acc[base + t] += v·q_t for t = 0 … 3 (the pure-Python form, run under NUMBA_DISABLE_JIT)."""
    for t, q in enumerate((q0, q1, q2, q3)):
        acc[base + t] += np.float64(v) * np.float64(q)


@intrinsic
def _add_scaled4(typingctx, acc, base, v, q0, q1, q2, q3):
    """One <4 x double> load, fmul, fadd and store at &acc[base] (acc: contiguous float64, 1-d)."""
    if not (isinstance(acc, types.Array) and acc.dtype == types.float64 and acc.ndim == 1
            and acc.layout == "C" and isinstance(base, types.Integer)
            and all(q == types.float64 for q in (v, q0, q1, q2, q3))):
        return None
    signature = types.void(acc, base, v, q0, q1, q2, q3)

    def codegen(context, builder, sig, args):
        acc_value, base_value, v_value = args[:3]
        array = context.make_array(sig.args[0])(context, builder, acc_value)
        double = ir.DoubleType()
        vector = ir.VectorType(double, LANES)
        lane = [ir.Constant(ir.IntType(32), t) for t in range(LANES)]
        # element alignment only: the partials' rows start wherever NumPy put them
        pointer = builder.bitcast(builder.gep(array.data, [base_value]), vector.as_pointer())
        q = ir.Constant(vector, ir.Undefined)
        for t, value in enumerate(args[3:]):
            q = builder.insert_element(q, value, lane[t])
        scale = builder.insert_element(ir.Constant(vector, ir.Undefined), v_value, lane[0])
        scale = builder.shuffle_vector(scale, ir.Constant(vector, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
        total = builder.fadd(builder.load(pointer, align=8), builder.fmul(scale, q))
        builder.store(total, pointer, align=8)
        return context.get_dummy_value()

    return signature, codegen


@overload(add_scaled4)
def _add_scaled4_overload(acc, base, v, q0, q1, q2, q3):
    # float32 values widen exactly, as ``acc[b] += v * q`` widens them for a float64 acc
    def implementation(acc, base, v, q0, q1, q2, q3):
        _add_scaled4(acc, base, np.float64(v), np.float64(q0), np.float64(q1), np.float64(q2), np.float64(q3))

    return implementation

