"""Four-lane float64 updates and sums written as LLVM vector operations.

Numba leaves LLVM's SLP vectoriser off (``NUMBA_SLP_VECTORIZE=0``, a process-wide setting the
package must not change), so four adjacent scalar updates ``acc[b + t] += v·q_t`` stay four
loads, four multiplies, four adds and four stores. ``add_scaled4`` emits them as one 4-wide
load, multiply, add and store; ``lane_sums4`` runs the four partial sums of a row's dot product
(``kernels.dense.row_dot``) as one 4-wide accumulator, and ``add_scaled_and_lane_sums4`` the same sums beside
another row's update (a Hessian-vector product's pass), and ``row_dots`` those of a whole matrix's rows, four
rows side by side (the small problems' dense forward pass); ``weighted_gram_tile`` holds a tile of a
weighted Gram matrix in 8- or 4-wide accumulators (the small problems' dense sandwich), ``add_product_tile`` a tile of
Aᵀ Q likewise (their transposed pass), and ``subtract_column_products{4,16}`` a Cholesky factor's pending
column sums (the small problems' factorisation). Each lane computes exactly what its scalar statements do, so the
results keep the scalar code's bits. All but one round each product and then the sum (the passes as ``solve``'s
passes do: a small problem's gradient has the bits of ``solve``'s); the Gram tile, whose sums ``solve`` forms
another way (BLAS's SYRK), adds each product by a fused multiply-add (``fused_multiply_add``, one rounding: its
scalar statements call it too), which halves its arithmetic on a CPU whose multiplies and adds share two ports
(Intel's).
"""
import math
from fractions import Fraction

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

LANES = 4


def _float64_c_array(array, ndim):
    """Whether a Numba type is a C-contiguous float64 array of ``ndim`` dimensions (what the intrinsics read)."""
    return (isinstance(array, types.Array) and array.dtype == types.float64 and array.ndim == ndim
            and array.layout == "C")


def _broadcast(builder, value, lanes=LANES):
    """A <lanes x double> vector with every lane ``value`` (an insert and a shuffle: one broadcast instruction)."""
    vector = ir.VectorType(ir.DoubleType(), lanes)
    first = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def _vector_at(builder, data, offset, lanes=LANES):
    """&data[offset] as a pointer to <lanes x element> (data: a pointer to the element type). Loads and stores
    through it take element alignment only: a row starts wherever its row index (or NumPy) puts it."""
    return builder.bitcast(builder.gep(data, [offset]), ir.VectorType(data.type.pointee, lanes).as_pointer())


def _fma(builder, a, b, c):
    """a·b + c rounded once (LLVM's fma intrinsic: one vfmadd where the CPU has FMA; a, b, c doubles or vectors of
    them, lane by lane)."""
    name = f"llvm.fma.v{a.type.count}f64" if isinstance(a.type, ir.VectorType) else "llvm.fma.f64"
    function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(a.type, [a.type] * 3), name)
    return builder.call(function, [a, b, c])


def fused_multiply_add(a, b, c):
    """a·b + c with one rounding (IEEE fusedMultiplyAdd). The pure-Python form (called from Python, and under
    NUMBA_DISABLE_JIT) forms the exact sum of finite operands as a fraction, rounded once by ``float``; with an
    infinite or NaN operand the rounding does not matter and it is a·b + c."""
    a, b, c = float(a), float(b), float(c)
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        return a * b + c
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:  # a·b = −c exactly (or a product of zero): a·b + c rounds nothing and signs the zero as IEEE does
        return a * b + c
    try:
        return float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf  # beyond the largest float once rounded


@intrinsic
def _fused_multiply_add(typingctx, a, b, c):
    if not all(value == types.float64 for value in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        return _fma(builder, *args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@overload(fused_multiply_add)
def _fused_multiply_add_overload(a, b, c):
    def implementation(a, b, c):
        return _fused_multiply_add(np.float64(a), np.float64(b), np.float64(c))

    return implementation


def add_scaled4(acc, base, v, q0, q1, q2, q3):
    """acc[base + t] += v·q_t for t = 0 … 3 (the pure-Python form, run under NUMBA_DISABLE_JIT)."""
    for t, q in enumerate((q0, q1, q2, q3)):
        acc[base + t] += np.float64(v) * np.float64(q)


@intrinsic
def _add_scaled4(typingctx, acc, base, v, q0, q1, q2, q3):
    """One <4 x double> load, fmul, fadd and store at &acc[base] (acc: contiguous float64, 1-d)."""
    if not (_float64_c_array(acc, 1) and isinstance(base, types.Integer)
            and all(q == types.float64 for q in (v, q0, q1, q2, q3))):
        return None
    signature = types.void(acc, base, v, q0, q1, q2, q3)

    def codegen(context, builder, sig, args):
        acc_value, base_value, v_value = args[:3]
        array = context.make_array(sig.args[0])(context, builder, acc_value)
        double = ir.DoubleType()
        vector = ir.VectorType(double, LANES)
        lane = [ir.Constant(ir.IntType(32), t) for t in range(LANES)]
        pointer = _vector_at(builder, array.data, base_value)
        q = ir.Constant(vector, ir.Undefined)
        for t, value in enumerate(args[3:]):
            q = builder.insert_element(q, value, lane[t])
        scale = _broadcast(builder, v_value)
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



def lane_sums4(row, x, full):
    """(c₀, c₁, c₂, c₃) with c_k = Σ_{j < full, j ≡ k (mod 4)} row[j]·x[j], each lane summed in increasing j
    (``full`` a multiple of 4; the pure-Python form, run under NUMBA_DISABLE_JIT)."""
    c = [0.0] * LANES
    for j in range(0, full, LANES):
        for t in range(LANES):
            c[t] += np.float64(row[j + t]) * np.float64(x[j + t])
    return c[0], c[1], c[2], c[3]


def _contiguous_vectors(row, x):
    """Whether ``lane_sums4`` of these types runs as vector code: 1-d C-contiguous row (float64 or float32) and x
    (float64); others take the scalar loop (the same sums in the same order)."""
    return (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
            and row.dtype in (types.float64, types.float32)
            and isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C" and x.dtype == types.float64)


@intrinsic
def _lane_sums4(typingctx, row, x, full):
    """The loop of ``lane_sums4`` on one <4 x double> accumulator: per step a 4-wide load of row (widened
    from float32 exactly, as the scalar product widens it) and of x, one fmul and one fadd."""
    if not (_contiguous_vectors(row, x) and isinstance(full, types.Integer)):
        return None
    signature = types.UniTuple(types.float64, LANES)(row, x, full)

    def codegen(context, builder, sig, args):
        row, x = _arrays(context, builder, sig, args)

        def step(j, accumulators):
            (sums,) = accumulators
            return (builder.fadd(sums, builder.fmul(_load4(builder, row, j), _load4(builder, x, j))),)

        return _lane_loop(context, builder, sig, args[-1], 1, step)

    return signature, codegen


def _arrays(context, builder, sig, args):
    """The (data pointer, element type) of each array argument of an intrinsic."""
    return [(context.make_array(kind)(context, builder, value).data, kind.dtype)
            for kind, value in zip(sig.args, args) if isinstance(kind, types.Array)]


def _load4(builder, array, j):
    """array[j:j + 4] as <4 x double> (float32 widened exactly); element alignment only: a row of C
    starts wherever its row index puts it."""
    data, dtype = array
    values = builder.load(_vector_at(builder, data, j), align=dtype.bitwidth // 8)
    if dtype != types.float64:
        values = builder.fpext(values, ir.VectorType(ir.DoubleType(), LANES))
    return values


def _lane_loop(context, builder, sig, full_value, count, step):
    """for j = 0, 4, … < full: accumulators = step(j, accumulators), ``count`` <4 x double> accumulators
    from zero; returns their lanes as the intrinsic's tuple (accumulator by accumulator)."""
    vector = ir.VectorType(ir.DoubleType(), LANES)
    intp = context.get_value_type(types.intp)
    stop = context.cast(builder, full_value, sig.args[-1], types.intp)
    slots = [cgutils.alloca_once_value(builder, ir.Constant(vector, [0.0] * LANES)) for _ in range(count)]
    with cgutils.for_range_slice(builder, ir.Constant(intp, 0), stop, ir.Constant(intp, LANES), intp) as (j, _):
        for slot, value in zip(slots, step(j, [builder.load(slot) for slot in slots])):
            builder.store(value, slot)
    lanes = [builder.extract_element(builder.load(slot), ir.Constant(ir.IntType(32), t))
             for slot in slots for t in range(LANES)]
    return context.make_tuple(builder, sig.return_type, lanes)


@overload(lane_sums4)
def _lane_sums4_overload(row, x, full):
    if _contiguous_vectors(row, x):
        def implementation(row, x, full):
            return _lane_sums4(row, x, full)

        return implementation

    def scalar(row, x, full):
        c0 = c1 = c2 = c3 = 0.0
        for j in range(0, full, LANES):
            c0 += row[j] * x[j]
            c1 += row[j + 1] * x[j + 1]
            c2 += row[j + 2] * x[j + 2]
            c3 += row[j + 3] * x[j + 3]
        return c0, c1, c2, c3

    return scalar


def lane_square_sums4_and_sums4(row, weights, x, full):
    """(s₀, …, s₃, c₀, …, c₃): s_k = Σ (row[j]·row[j])·weights[j] and c_k = Σ row[j]·x[j] over j < full,
    j ≡ k (mod 4), each lane in increasing j, from one sweep along the row (the pure-Python form)."""
    s = [0.0] * LANES
    c = [0.0] * LANES
    for j in range(0, full, LANES):
        for t in range(LANES):
            value = np.float64(row[j + t])
            s[t] += value * value * np.float64(weights[j + t])
            c[t] += value * np.float64(x[j + t])
    return s[0], s[1], s[2], s[3], c[0], c[1], c[2], c[3]


@intrinsic
def _lane_square_sums4_and_sums4(typingctx, row, weights, x, full):
    """The loop of ``lane_square_sums4_and_sums4`` on two <4 x double> accumulators."""
    if not (_contiguous_vectors(row, x) and _contiguous_vectors(weights, x) and weights.dtype == types.float64
            and isinstance(full, types.Integer)):
        return None
    signature = types.UniTuple(types.float64, 2 * LANES)(row, weights, x, full)

    def codegen(context, builder, sig, args):
        row, weights, x = _arrays(context, builder, sig, args)

        def step(j, accumulators):
            squares, sums = accumulators
            values = _load4(builder, row, j)
            weighted = builder.fmul(builder.fmul(values, values), _load4(builder, weights, j))
            return (builder.fadd(squares, weighted), builder.fadd(sums, builder.fmul(values, _load4(builder, x, j))))

        return _lane_loop(context, builder, sig, args[-1], 2, step)

    return signature, codegen


@overload(lane_square_sums4_and_sums4)
def _lane_square_sums4_and_sums4_overload(row, weights, x, full):
    if _contiguous_vectors(row, x) and _contiguous_vectors(weights, x) and weights.dtype == types.float64:
        def implementation(row, weights, x, full):
            return _lane_square_sums4_and_sums4(row, weights, x, full)

        return implementation

    def scalar(row, weights, x, full):
        s0 = s1 = s2 = s3 = 0.0
        c0 = c1 = c2 = c3 = 0.0
        for j in range(0, full, LANES):
            v0, v1, v2, v3 = np.float64(row[j]), np.float64(row[j + 1]), np.float64(row[j + 2]), np.float64(row[j + 3])
            s0 += v0 * v0 * weights[j]
            s1 += v1 * v1 * weights[j + 1]
            s2 += v2 * v2 * weights[j + 2]
            s3 += v3 * v3 * weights[j + 3]
            c0 += row[j] * x[j]
            c1 += row[j + 1] * x[j + 1]
            c2 += row[j + 2] * x[j + 2]
            c3 += row[j + 3] * x[j + 3]
        return s0, s1, s2, s3, c0, c1, c2, c3

    return scalar


def add_scaled_and_lane_sums4(acc, previous, w, row, x, full):
    """acc[j] += previous[j]·w for j < full, and ``lane_sums4(row, x, full)``, in one loop (the pure-Python form)."""
    for j in range(full):
        acc[j] += np.float64(previous[j]) * np.float64(w)
    return lane_sums4(row, x, full)


@intrinsic
def _add_scaled_and_lane_sums4(typingctx, acc, previous, w, row, x, full):
    """Per step of 4: a 4-wide load, fmul, fadd and store of acc from ``previous``, and ``lane_sums4``'s step on row."""
    if not (_contiguous_vectors(row, x) and _contiguous_vectors(previous, x) and _contiguous_vectors(acc, x)
            and acc.dtype == types.float64 and w == types.float64 and isinstance(full, types.Integer)):
        return None
    signature = types.UniTuple(types.float64, LANES)(acc, previous, w, row, x, full)

    def codegen(context, builder, sig, args):
        acc_array, previous_array, row_array, x_array = _arrays(context, builder, sig, args)
        scale = _broadcast(builder, args[2])

        def step(j, accumulators):
            (sums,) = accumulators
            pointer = _vector_at(builder, acc_array[0], j)
            updated = builder.fadd(builder.load(pointer, align=8), builder.fmul(_load4(builder, previous_array, j), scale))
            builder.store(updated, pointer, align=8)
            return (builder.fadd(sums, builder.fmul(_load4(builder, row_array, j), _load4(builder, x_array, j))),)

        return _lane_loop(context, builder, sig, args[-1], 1, step)

    return signature, codegen


@overload(add_scaled_and_lane_sums4)
def _add_scaled_and_lane_sums4_overload(acc, previous, w, row, x, full):
    if (_contiguous_vectors(row, x) and _contiguous_vectors(previous, x) and _contiguous_vectors(acc, x)
            and acc.dtype == types.float64):
        def implementation(acc, previous, w, row, x, full):
            return _add_scaled_and_lane_sums4(acc, previous, np.float64(w), row, x, full)

        return implementation

    def scalar(acc, previous, w, row, x, full):
        for j in range(full):
            acc[j] += previous[j] * w
        return lane_sums4(row, x, full)

    return scalar


def row_dots(A, x, out):
    """out[i] = Σ_j A[i, j]·x[j] for every row i, each summed in ``kernels.dense.row_dot``'s order: four lane sums c_k
    over j < full = d − d mod 4, j ≡ k (mod 4), each in increasing j, then the last d − full terms added to c₀, c₁,
    c₂, then (c₀ + c₁) + (c₂ + c₃). Called from Python (and under NUMBA_DISABLE_JIT): the scalar loop."""
    _row_dots_scalar(A, x, out)


@njit(cache=True)
def _row_dots_scalar(A, x, out):
    """``row_dots`` row by row, each row's lanes by ``lane_sums4`` (its scalar loop where A's rows are strided)."""
    d = x.shape[0]
    full = d - d % LANES
    for i in range(A.shape[0]):
        c0, c1, c2, c3 = lane_sums4(A[i], x, full)
        if full < d:
            c0 += A[i, full] * x[full]
        if full + 1 < d:
            c1 += A[i, full + 1] * x[full + 1]
        if full + 2 < d:
            c2 += A[i, full + 2] * x[full + 2]
        out[i] = (c0 + c1) + (c2 + c3)


ROW_DOTS_GROUP = 4  # rows summed side by side: four independent 4-wide chains hide the add latency that bounds one


def _row_dot_group(builder, intp, A, x_data, out_data, first, rows, full, d):
    """``row_dots`` of rows first … first + rows − 1 (A: (data, row stride)): their <4 x double> lane sums side by
    side from one load of x per step, then each row's last terms and its total."""
    a_data, stride = A
    vector = ir.VectorType(ir.DoubleType(), LANES)
    slots = [cgutils.alloca_once(builder, vector) for _ in range(rows)]
    for slot in slots:
        builder.store(ir.Constant(vector, [0.0] * LANES), slot)
    bases = [builder.mul(builder.add(first, ir.Constant(intp, r)), stride) for r in range(rows)]
    with cgutils.for_range_slice(builder, ir.Constant(intp, 0), full, ir.Constant(intp, LANES), intp) as (j, _):
        values = builder.load(_vector_at(builder, x_data, j), align=8)
        for slot, base in zip(slots, bases):
            row = builder.load(_vector_at(builder, a_data, builder.add(base, j)), align=8)
            builder.store(builder.fadd(builder.load(slot), builder.fmul(row, values)), slot)
    for r, (slot, base) in enumerate(zip(slots, bases)):
        sums = builder.load(slot)
        lanes = [cgutils.alloca_once_value(builder, builder.extract_element(sums, ir.Constant(ir.IntType(32), k)))
                 for k in range(LANES)]
        for k in range(LANES - 1):  # the last d − full < 4 terms, into lanes 0, 1, 2
            j = builder.add(full, ir.Constant(intp, k))
            with builder.if_then(builder.icmp_signed("<", j, d)):
                term = builder.fmul(builder.load(builder.gep(a_data, [builder.add(base, j)])),
                                    builder.load(builder.gep(x_data, [j])))
                builder.store(builder.fadd(builder.load(lanes[k]), term), lanes[k])
        c = [builder.load(lane) for lane in lanes]
        builder.store(builder.fadd(builder.fadd(c[0], c[1]), builder.fadd(c[2], c[3])),
                      builder.gep(out_data, [builder.add(first, ir.Constant(intp, r))]))


@intrinsic
def _row_dots(typingctx, A, x, out):
    """``row_dots`` in one loop: rows by groups of ROW_DOTS_GROUP (``_row_dot_group``), the last n mod
    ROW_DOTS_GROUP one at a time. Each lane rounds the product and then the sum, as the scalar statements (their
    bits). (Called per group of four from Numba, returning sixteen lane sums, the same sums took 2.8 µs at 288 × 48;
    in one loop here 1.0 µs.)"""
    if not (_float64_c_array(A, 2) and _float64_c_array(x, 1) and _float64_c_array(out, 1)):
        return None
    signature = types.void(A, x, out)

    def codegen(context, builder, sig, args):
        intp = context.get_value_type(types.intp)
        A_array, x_array, out_array = (context.make_array(kind)(context, builder, value)
                                       for kind, value in zip(sig.args, args))
        n, d = cgutils.unpack_tuple(builder, A_array.shape, 2)
        full = builder.sub(d, builder.srem(d, ir.Constant(intp, LANES)))
        group = ir.Constant(intp, ROW_DOTS_GROUP)
        groups = builder.sdiv(n, group)
        matrix = (A_array.data, d)
        with cgutils.for_range(builder, groups, intp=intp) as loop:
            _row_dot_group(builder, intp, matrix, x_array.data, out_array.data, builder.mul(loop.index, group),
                           ROW_DOTS_GROUP, full, d)
        with cgutils.for_range_slice(builder, builder.mul(groups, group), n, ir.Constant(intp, 1), intp) as (i, _):
            _row_dot_group(builder, intp, matrix, x_array.data, out_array.data, i, 1, full, d)
        return context.get_dummy_value()

    return signature, codegen


@overload(row_dots)
def _row_dots_overload(A, x, out):
    if _float64_c_array(A, 2) and _float64_c_array(x, 1) and _float64_c_array(out, 1):
        def implementation(A, x, out):
            _row_dots(A, x, out)

        return implementation

    def scalar(A, x, out):
        _row_dots_scalar(A, x, out)

    return scalar


def subtract_column_products4(t, start, U, column, rows):
    """t[start + r] −= U[k, start + r]·U[k, column] for k = 0 … rows − 1 in that order, r = 0 … 3: four entries of
    a Cholesky factor's pending column sums, from rows of U (the pure-Python form)."""
    _subtract_column_products_python(t, start, LANES, U, column, rows)


def subtract_column_products16(t, start, U, column, rows):
    """``subtract_column_products4`` for sixteen entries, r = 0 … 15 (the pure-Python form)."""
    _subtract_column_products_python(t, start, 4 * LANES, U, column, rows)


def _subtract_column_products_python(t, start, count, U, column, rows):
    for r in range(count):
        value = t[start + r]
        for k in range(rows):
            value -= U[k, start + r] * U[k, column]
        t[start + r] = value


def _column_products_intrinsic(vectors):
    """The intrinsic of ``subtract_column_products{4·vectors}``: ``vectors`` <4 x double> accumulators held
    through the loop over k; per k one broadcast of U[k, column] and per accumulator a 4-wide load, fmul and
    fsub (each lane rounds the product, then the difference, in k order: the scalar statements' bits).
    t: contiguous float64 (1-d), U: C-contiguous float64 (2-d)."""

    def typer(typingctx, t, start, U, column, rows):
        if not (_float64_c_array(t, 1) and _float64_c_array(U, 2)
                and all(isinstance(a, types.Integer) for a in (start, column, rows))):
            return None
        signature = types.void(t, start, U, column, rows)

        def codegen(context, builder, sig, args):
            t_value, start_value, U_value, column_value, rows_value = args
            intp = context.get_value_type(types.intp)
            t_array = context.make_array(sig.args[0])(context, builder, t_value)
            U_array = context.make_array(sig.args[2])(context, builder, U_value)
            stride = cgutils.unpack_tuple(builder, U_array.shape, 2)[1]
            start_i = context.cast(builder, start_value, sig.args[1], types.intp)
            column_i = context.cast(builder, column_value, sig.args[3], types.intp)
            stop = context.cast(builder, rows_value, sig.args[4], types.intp)
            offsets = [builder.add(start_i, ir.Constant(intp, LANES * v)) for v in range(vectors)]
            slots = [cgutils.alloca_once_value(builder,
                                               builder.load(_vector_at(builder, t_array.data, offset), align=8))
                     for offset in offsets]
            with cgutils.for_range(builder, stop, intp=intp) as loop:
                row = builder.mul(loop.index, stride)
                factor = builder.load(builder.gep(U_array.data, [builder.add(row, column_i)]))
                broadcast = _broadcast(builder, factor)
                for slot, offset in zip(slots, offsets):
                    values = builder.load(_vector_at(builder, U_array.data, builder.add(row, offset)), align=8)
                    builder.store(builder.fsub(builder.load(slot), builder.fmul(values, broadcast)), slot)
            for slot, offset in zip(slots, offsets):
                builder.store(builder.load(slot), _vector_at(builder, t_array.data, offset), align=8)
            return context.get_dummy_value()

        return signature, codegen

    return intrinsic(typer)


_subtract_column_products4 = _column_products_intrinsic(1)
_subtract_column_products16 = _column_products_intrinsic(4)


@overload(subtract_column_products4)
def _subtract_column_products4_overload(t, start, U, column, rows):
    def implementation(t, start, U, column, rows):
        _subtract_column_products4(t, start, U, column, rows)

    return implementation


@overload(subtract_column_products16)
def _subtract_column_products16_overload(t, start, U, column, rows):
    def implementation(t, start, U, column, rows):
        _subtract_column_products16(t, start, U, column, rows)

    return implementation


# -- the weighted Gram tile ------------------------------------------------------------------------------
# A tile is GRAM_TILE_HEIGHT rows × GRAM_TILE_WIDTH columns of Aᵀ diag(w) A, each of its rows one <8 x double>
# accumulator held through the loop over A's rows. Eight accumulators need the 32 vector registers of AVX-512
# (AVX2's 16 hold four: with eight, LLVM spilled them and the tiles ran at 0.73× BLAS's SYRK, measured with
# Numba targeting haswell on this AMD EPYC; four rows: 1.17×). Numba compiles for the CPU it runs on (its cache
# is keyed by it), so the height follows that CPU's features.
GRAM_TILE_WIDTH = 8


def _wide_vector_registers():
    """Whether Numba's target CPU has AVX-512's 32 vector registers: NUMBA_CPU_FEATURES where set, else the host's
    (the features Numba's code generator takes)."""
    from llvmlite import binding
    from numba.core import config

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else binding.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


GRAM_TILE_HEIGHT = 8 if _wide_vector_registers() else 4


def _switch(builder, intp, key, values, emit):
    """Code that branches on the intp ``key``: where it equals values[k], the code ``emit(k)`` writes; any other key
    does nothing (the tiles' intrinsics: one loop per tile shape, chosen at run time)."""
    done = builder.append_basic_block("switch_done")
    switch = builder.switch(key, done)
    for k, value in enumerate(values):
        case = builder.append_basic_block(f"case_{value}")
        switch.add_case(ir.Constant(intp, value), case)
        builder.position_at_end(case)
        emit(k)
        builder.branch(done)
    builder.position_at_end(done)


GRAM_TILE_WIDTHS = (GRAM_TILE_WIDTH, LANES)  # 8-wide tiles, and 4-wide ones for a remainder of at most 4 columns


def weighted_gram_tile(A, weights, start, stop, j0, l0, height, width, weighted_rows, out):
    """out[j0 + t, l0 + h] = Σ_{i ∈ [start, stop)} A[i, j0 + t]·(wᵢ·A[i, l0 + h]) for t < height ≤ GRAM_TILE_HEIGHT and
    h < width ∈ GRAM_TILE_WIDTHS, each sum in increasing i by fused multiply-adds (one rounding per term:
    total ← fma(A[i, j0 + t], wᵢ·A[i, l0 + h], total)), from 0.0 where start = 0 and continued from out's value where
    start > 0 (so a sum taken over row blocks in turn has the bits of one pass); with ``weighted_rows`` the weight
    goes with the tile's rows instead, fma(wᵢ·A[i, j0 + t], A[i, l0 + h], total): the same products (each of the
    same two numbers), so the entry (l0 + h, j0 + t) of the first form to the bit (A: n × width, C-contiguous float64
    with j0 + height and l0 + width ≤ its width; out likewise). Called from Python (and under NUMBA_DISABLE_JIT):
    the scalar loop."""
    _gram_tile_scalar(A, weights, start, stop, j0, l0, height, width, weighted_rows, out)


@njit(cache=True)
def _gram_tile_scalar(A, weights, start, stop, j0, l0, height, width, weighted_rows, out):
    """``weighted_gram_tile`` entry by entry."""
    for t in range(height):
        for h in range(width):
            total = out[j0 + t, l0 + h] if start > 0 else 0.0
            for i in range(start, stop):
                if weighted_rows:
                    total = fused_multiply_add(weights[i] * A[i, j0 + t], A[i, l0 + h], total)
                else:
                    total = fused_multiply_add(A[i, j0 + t], weights[i] * A[i, l0 + h], total)
            out[j0 + t, l0 + h] = total


def _gram_tile_loop(context, builder, A, weights, out, start, stop, j0, l0, height, width, weighted_rows):
    """The loop of one (height, width) tile of ``weighted_gram_tile`` (A, weights, out: Numba array structs)."""
    intp = context.get_value_type(types.intp)
    stride = cgutils.unpack_tuple(builder, A.shape, 2)[1]
    out_stride = cgutils.unpack_tuple(builder, out.shape, 2)[1]
    vector = ir.VectorType(ir.DoubleType(), width)
    pointers = [_vector_at(builder, out.data, builder.add(builder.mul(builder.add(j0, ir.Constant(intp, t)),
                                                                      out_stride), l0), width)
                for t in range(height)]
    continued = builder.icmp_signed(">", start, ir.Constant(intp, 0))
    slots = []
    for pointer in pointers:
        slot = cgutils.alloca_once(builder, vector)
        # out's tile is read only to continue its sums (at start = 0 it may hold anything)
        with builder.if_else(continued) as (then, otherwise):
            with then:
                builder.store(builder.load(pointer, align=8), slot)
            with otherwise:
                builder.store(ir.Constant(vector, [0.0] * width), slot)
        slots.append(slot)
    with cgutils.for_range_slice(builder, start, stop, ir.Constant(intp, 1), intp) as (i, _):
        row = builder.mul(i, stride)
        weight = builder.load(builder.gep(weights.data, [i]))
        columns = builder.load(_vector_at(builder, A.data, builder.add(row, l0), width), align=8)
        if not weighted_rows:
            columns = builder.fmul(_broadcast(builder, weight, width), columns)
        for t, slot in enumerate(slots):
            entry = builder.load(builder.gep(A.data, [builder.add(row, builder.add(j0, ir.Constant(intp, t)))]))
            if weighted_rows:
                entry = builder.fmul(weight, entry)
            builder.store(_fma(builder, _broadcast(builder, entry, width), columns, builder.load(slot)), slot)
    for slot, pointer in zip(slots, pointers):
        builder.store(builder.load(slot), pointer, align=8)


@intrinsic
def _weighted_gram_tile(typingctx, A, weights, start, stop, j0, l0, height, width, weighted_rows, out):
    """``weighted_gram_tile``: one loop per (height, width, weighted_rows), chosen by a switch on
    256·weighted_rows + 16·height + width (any other triple does nothing: the caller keeps to them). Per row of A
    one ``width``-wide load at column l0, scaled by a broadcast wᵢ (or each broadcast entry scaled by wᵢ, with
    ``weighted_rows``), then per tile row a broadcast of A[i, j0 + t] and one fused multiply-add into that row's
    accumulator (the scalar statements' bits)."""
    if not (_float64_c_array(A, 2) and _float64_c_array(out, 2) and _float64_c_array(weights, 1)
            and all(isinstance(a, types.Integer) for a in (start, stop, j0, l0, height, width))
            and isinstance(weighted_rows, types.Boolean)):
        return None
    signature = types.void(A, weights, start, stop, j0, l0, height, width, weighted_rows, out)

    def codegen(context, builder, sig, args):
        A_value, weights_value, start_v, stop_v, j0_v, l0_v, height_v, width_v, weighted_v, out_value = args
        intp = context.get_value_type(types.intp)
        arrays = (context.make_array(sig.args[0])(context, builder, A_value),
                  context.make_array(sig.args[1])(context, builder, weights_value),
                  context.make_array(sig.args[9])(context, builder, out_value))

        def index(position, value):
            return context.cast(builder, value, sig.args[position], types.intp)

        rows_and_corner = index(2, start_v), index(3, stop_v), index(4, j0_v), index(5, l0_v)
        key = builder.add(builder.mul(builder.zext(weighted_v, intp), ir.Constant(intp, 256)),
                          builder.add(builder.mul(index(6, height_v), ir.Constant(intp, 16)), index(7, width_v)))
        shapes = [(weighted_rows, height, width) for weighted_rows in (False, True)
                  for height in range(1, GRAM_TILE_HEIGHT + 1) for width in GRAM_TILE_WIDTHS]

        def emit(k):
            weighted_rows, height, width = shapes[k]
            _gram_tile_loop(context, builder, *arrays, *rows_and_corner, height, width, weighted_rows)

        _switch(builder, intp, key, [256 * rows + 16 * height + width for rows, height, width in shapes], emit)
        return context.get_dummy_value()

    return signature, codegen


@overload(weighted_gram_tile)
def _weighted_gram_tile_overload(A, weights, start, stop, j0, l0, height, width, weighted_rows, out):
    if _float64_c_array(A, 2) and _float64_c_array(out, 2) and _float64_c_array(weights, 1):
        def implementation(A, weights, start, stop, j0, l0, height, width, weighted_rows, out):
            _weighted_gram_tile(A, weights, start, stop, j0, l0, height, width, weighted_rows, out)

        return implementation

    def scalar(A, weights, start, stop, j0, l0, height, width, weighted_rows, out):
        _gram_tile_scalar(A, weights, start, stop, j0, l0, height, width, weighted_rows, out)

    return scalar


# -- the tile of Aᵀ Q -----------------------------------------------------------------------------------------
# A tile holds PRODUCT_TILE_HEIGHT (at most) columns of Q × one <width x double> run of A's columns, each of its
# rows one accumulator held through the loop over A's rows: per row of A one load of the run and per tile row a
# broadcast of Q[i, t], an fmul and an fadd. The register budget is the Gram tile's (eight 8-wide accumulators need
# AVX-512's 32 registers; four on AVX2's 16).
PRODUCT_TILE_HEIGHT = GRAM_TILE_HEIGHT
PRODUCT_TILE_WIDTHS = (8, LANES, 1)  # 8-wide runs, then one 4-wide and single columns for d's remainder


def add_product_tile(A, Q, start, stop, t0, height, l0, width, out):
    """out[t0 + t, l0 + h] += Σ_{i ∈ [start, stop)} A[i, l0 + h]·Q[i, t0 + t] for t < height ≤ PRODUCT_TILE_HEIGHT and
    h < width ∈ PRODUCT_TILE_WIDTHS, each entry's sum continued from its value in increasing i (A float64 or float32,
    widened exactly; Q, out float64). Called from Python (and under NUMBA_DISABLE_JIT): the scalar loop."""
    _product_tile_scalar(A, Q, start, stop, t0, height, l0, width, out)


@njit(cache=True)
def _product_tile_scalar(A, Q, start, stop, t0, height, l0, width, out):
    """``add_product_tile`` entry by entry."""
    for t in range(height):
        for h in range(width):
            total = out[t0 + t, l0 + h]
            for i in range(start, stop):
                total += np.float64(A[i, l0 + h]) * Q[i, t0 + t]
            out[t0 + t, l0 + h] = total


def _product_tile_loop(context, builder, A, Q, out, start, stop, t0, l0, height, width):
    """The loop of one (height, width) tile of ``add_product_tile`` (A, Q, out: (data, element type, row stride))."""
    intp = context.get_value_type(types.intp)
    (a_data, a_dtype, a_stride), (q_data, _, q_stride), (out_data, _, out_stride) = A, Q, out
    wide = ir.VectorType(ir.DoubleType(), width)
    rows = [builder.mul(builder.add(t0, ir.Constant(intp, t)), out_stride) for t in range(height)]
    pointers = [_vector_at(builder, out_data, builder.add(row, l0), width) for row in rows]
    slots = [cgutils.alloca_once(builder, wide) for _ in range(height)]
    for slot, pointer in zip(slots, pointers):
        builder.store(builder.load(pointer, align=8), slot)
    with cgutils.for_range_slice(builder, start, stop, ir.Constant(intp, 1), intp) as (i, _):
        values = builder.load(_vector_at(builder, a_data, builder.add(builder.mul(i, a_stride), l0), width),
                              align=a_dtype.bitwidth // 8)
        if a_dtype != types.float64:
            values = builder.fpext(values, wide)
        q_row = builder.add(builder.mul(i, q_stride), t0)
        for t, slot in enumerate(slots):
            factor = _broadcast(builder, builder.load(builder.gep(q_data, [builder.add(q_row, ir.Constant(intp, t))])),
                                width)
            builder.store(builder.fadd(builder.load(slot), builder.fmul(values, factor)), slot)
    for slot, pointer in zip(slots, pointers):
        builder.store(builder.load(slot), pointer, align=8)


@intrinsic
def _add_product_tile(typingctx, A, Q, start, stop, t0, height, l0, width, out):
    """``add_product_tile``: one loop per (height, width) pair, chosen by a switch on height·16 + width (any other
    pair does nothing: the caller keeps to them). Each lane rounds the product and then the sum, as the scalar
    statements (their bits)."""
    if not (isinstance(A, types.Array) and A.ndim == 2 and A.layout == "C" and A.dtype in (types.float64, types.float32)
            and _float64_c_array(Q, 2) and _float64_c_array(out, 2)
            and all(isinstance(a, types.Integer) for a in (start, stop, t0, height, l0, width))):
        return None
    signature = types.void(A, Q, start, stop, t0, height, l0, width, out)

    def codegen(context, builder, sig, args):
        A_value, Q_value, start_v, stop_v, t0_v, height_v, l0_v, width_v, out_value = args
        intp = context.get_value_type(types.intp)

        def matrix(position, value):
            array = context.make_array(sig.args[position])(context, builder, value)
            return array.data, sig.args[position].dtype, cgutils.unpack_tuple(builder, array.shape, 2)[1]

        def index(position, value):
            return context.cast(builder, value, sig.args[position], types.intp)

        arrays = matrix(0, A_value), matrix(1, Q_value), matrix(8, out_value)
        start_i, stop_i, t0_i, l0_i = index(2, start_v), index(3, stop_v), index(4, t0_v), index(6, l0_v)
        key = builder.add(builder.mul(index(5, height_v), ir.Constant(intp, 16)), index(7, width_v))
        shapes = [(height, width) for height in range(1, PRODUCT_TILE_HEIGHT + 1) for width in PRODUCT_TILE_WIDTHS]
        _switch(builder, intp, key, [16 * height + width for height, width in shapes],
                lambda k: _product_tile_loop(context, builder, *arrays, start_i, stop_i, t0_i, l0_i, *shapes[k]))
        return context.get_dummy_value()

    return signature, codegen


@overload(add_product_tile)
def _add_product_tile_overload(A, Q, start, stop, t0, height, l0, width, out):
    if (isinstance(A, types.Array) and A.ndim == 2 and A.layout == "C" and A.dtype in (types.float64, types.float32)
            and _float64_c_array(Q, 2) and _float64_c_array(out, 2)):
        def implementation(A, Q, start, stop, t0, height, l0, width, out):
            _add_product_tile(A, Q, start, stop, t0, height, l0, width, out)

        return implementation

    def scalar(A, Q, start, stop, t0, height, l0, width, out):
        _product_tile_scalar(A, Q, start, stop, t0, height, l0, width, out)

    return scalar
