"""An atomic counter for compiled parallel loops: the tasks of a ``prange`` take work items one at a time.

``fetch_add(counter, value)`` adds ``value`` to ``counter[0]`` (a 1-element int64 array) as one atomic
read-modify-write and returns what it held before, so every task that calls it gets a different number.
A prange hands its iterations out in fixed blocks (OpenMP's static schedule); with a counter, the
tasks hand out the items among themselves as each finishes its last one: a thread slowed by another
process on its core takes fewer items instead of holding up the loop's end. ``next_taken(counter, order)``
is that hand-out: a task's next item of ``order``, or -1 once every item is taken.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


def fetch_add(counter, value):
    """counter[0] += value, returning the value before (the pure-Python form, run under NUMBA_DISABLE_JIT,
    where the loop runs on one thread)."""
    before = int(counter[0])
    counter[0] = before + value
    return before


@intrinsic
def _fetch_add(typingctx, counter, value):
    """An LLVM ``atomicrmw add`` (sequentially consistent) on &counter[0] (int64, 1-d, contiguous)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1
            and counter.layout == "C" and value == types.int64):
        return None
    signature = types.int64(counter, value)

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, args[1], "seq_cst")

    return signature, codegen


@overload(fetch_add)
def _fetch_add_overload(counter, value):
    def implementation(counter, value):
        return _fetch_add(counter, np.int64(value))

    return implementation


@njit(cache=True)
def next_taken(counter, order):
    """order[k] for the next k taken from ``counter`` (``fetch_add``), or -1 once k reaches the end of order
    (``order``: non-negative item numbers). A task of a ``prange`` calls it for each item it works on."""
    position = fetch_add(counter, 1)
    return order[position] if position < order.shape[0] else -1
