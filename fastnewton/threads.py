"""Thread control: Numba's prange threads and the BLAS pool, set together and restored afterwards."""
from contextlib import contextmanager

import numba
from threadpoolctl import threadpool_limits


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
        with threadpool_limits(limits=n_threads, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(previous)
