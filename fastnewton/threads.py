"""Thread control: Numba's prange threads and the BLAS pool, set together and restored afterwards."""
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
from threadpoolctl import ThreadpoolController

_controller = None


def _blas():
    """One ThreadpoolController for the process (building one scans the loaded libraries)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


@contextmanager
def thread_limits(n_threads):
    """Run the block with ``n_threads`` Numba threads and BLAS threads (None: leave both as they are).

    The previous ``numba.get_num_threads()`` is restored in ``finally``, so a solve
    never changes the caller's global configuration.
    """
    if n_threads is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        with _blas().limit(limits=n_threads, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(previous)


def map_single_threaded_blas(function, items):
    """Yield function(item) for each item, in item order, computed on numba.get_num_threads() Python
    threads with BLAS limited to 1 thread.

    A BLAS call's rounding depends on how many threads split it; one thread per call
    and results consumed in item order make blocked GEMM sums independent of the
    thread count (BLAS releases the GIL, so the calls still run in parallel). Results
    are yielded as they complete in order, so only a few are held at once.
    """
    with _blas().limit(limits=1, user_api="blas"):
        workers = numba.get_num_threads()
        if workers == 1:
            for item in items:
                yield function(item)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(function, items)
