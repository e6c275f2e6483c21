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
    """Run a solve with ``n_threads`` Numba threads (None: as they are) and BLAS on one thread.

    BLAS stays single-threaded inside a solve: OpenBLAS's workers spin after every call
    and steal the cores from the Numba region that follows (measured on the demo problem,
    n = 10⁶, d = 200, 2 cores: 2.5 s with 2 BLAS threads, 1.35 s with 1; every pass over C
    ran 2× slower). The BLAS-heavy steps parallelise themselves instead
    (``map_single_threaded_blas``). The previous ``numba.get_num_threads()`` and BLAS
    limits are restored on exit, so a solve never changes the caller's configuration.
    """
    previous = numba.get_num_threads()
    if n_threads is not None:
        numba.set_num_threads(n_threads)
    try:
        with _blas().limit(limits=1, user_api="blas"):
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
