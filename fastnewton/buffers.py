"""Work arrays of one problem's evaluations, handed out again once nothing refers to them.

Each evaluation and line-search trial writes length-n (and n × k) arrays: the softmax's e, the
columns Q of the transposed pass, the curvature weights β, a trial's u. Fresh ``np.empty`` arrays
cost a page fault per 4 KiB page on first touch whenever the allocator has returned the memory to
the system, which it does when many large arrays are freed at once. ``solve_many(C, B)`` keeps the
arrays of all its problems alive in lock-step and frees them in bulk, and so paid ~4·10⁵ page faults
per call (CSR n = 10⁵, d = 64, q = 64: 1.6 GB zeroed by the kernel, about a third of its CPU time),
where a loop of ``solve`` paid none. A ``Recycler`` keeps the arrays it handed out and gives one back
when the Python reference count says that nothing else holds it (no evaluation, no view): the same
memory, already mapped, is written again. The values are whatever the caller writes (``empty``'s
contract), so no result changes.
"""
import sys
import threading

import numpy as np

# sys.getrefcount of a kept array that nothing else refers to: the free list, the loop variable and
# getrefcount's own argument. A view (or a Numba typed list) holding the array raises it.
_UNREFERENCED = 3


class Recycler:
    """``empty(shape)``: a float64 array of that shape, reused once no other reference to it remains.

    Holds at most as many arrays of a shape as were referenced at once (the peak of the evaluations
    alive together: a few per Newton iteration), freed with the recycler. Thread-safe; a copy or a
    pickle starts empty (blocks sent to Dask workers hold no arrays of the driver's).
    """

    def __init__(self):
        self._arrays = {}
        # Per shape, where the next search for a free array starts: just past the last one handed out. The
        # problems of ``solve_many(C, B)`` share one recycler holding hundreds of arrays of a shape, freed
        # roughly in the order they were handed out; a search from the front tested every held one first
        # (O(q) per call, O(q²) per round: 4.6% of solve_many's time, dense 4096 × 64, q = 64, relu_softmax).
        self._cursors = {}
        self._lock = threading.Lock()

    def empty(self, shape):
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
        with self._lock:
            kept = self._arrays.setdefault(shape, [])
            count = len(kept)
            start = self._cursors.get(shape, 0)
            for offset in range(count):
                position = start + offset
                if position >= count:
                    position -= count
                array = kept[position]
                if sys.getrefcount(array) == _UNREFERENCED:
                    self._cursors[shape] = position + 1
                    return array
            array = np.empty(shape)
            kept.append(array)
            self._cursors[shape] = count + 1
            return array

    def __copy__(self):
        return Recycler()

    def __deepcopy__(self, memo):
        return Recycler()

    def __reduce__(self):
        return Recycler, ()
