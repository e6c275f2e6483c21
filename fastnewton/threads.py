"""Thread control: Numba's prange threads and the BLAS pool, set together and restored afterwards."""
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np
import threadpoolctl
from threadpoolctl import ThreadpoolController

_controller = None


def _blas():
    """One ThreadpoolController for the process (building one scans the loaded libraries)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None


def _release_openblas_control():
    """Let the calling thread set OpenBLAS limits.

    threadpoolctl ≥ 3.6 hands OpenBLAS's process-wide pool (pthreads layer) to the first thread
    that limits it and silently ignores every other thread's limits until that one lets go
    (measured: a limit of 1 set from a worker thread after the main thread had limited and
    restored outside a ``with`` block left 2 threads, and the GEMMs rounded differently).
    """
    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)


@contextmanager
def single_threaded_blas():
    """BLAS on one thread while any caller in the process is inside this block (reference-counted).

    The limit is process-wide state: per-call set/restore pairs interleave when solves run
    concurrently from several Python threads (one solve's exit restored 2 threads under another
    solve's GEMM). Counting the users, the first entry sets the limit and the last exit restores
    it, so concurrent solves give the same bits as solo runs.
    """
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _release_openblas_control()
            _blas_limiter = _blas().limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _release_openblas_control()
                _blas_limiter.restore_original_limits()
                _release_openblas_control()
                _blas_limiter = None


@contextmanager
def blas_threads(n_threads):
    """BLAS on ``n_threads`` threads for the calls inside this block, then back to what it was.

    For the few large level-3 calls (the dense sandwich's SYRKs) that BLAS threads well,
    inside a solve that otherwise keeps BLAS on one thread. Scoped this way the Numba pass
    that follows is not slowed (measured with bench/dense_phases.py). Raised only when no
    other solve in the process holds the single-thread limit: the lock is held for the
    whole block, so a solve starting meanwhile waits for it, and concurrent solves keep
    one BLAS thread each.
    """
    with _blas_lock:
        if n_threads <= 1 or _blas_users > 1:
            yield
            return
        _release_openblas_control()
        limiter = _blas().limit(limits=n_threads, user_api="blas")
        try:
            yield
        finally:
            _release_openblas_control()
            limiter.restore_original_limits()
            _release_openblas_control()


# A problem whose exact Newton iteration is predicted to cost less than this (its work,
# ``fastnewton.hessian.exact_iteration_seconds``) runs on one Numba thread unless the caller gives a thread
# count (``fastnewton.hessian.default_thread_count``: ``solve``, ``solve_many`` and ``Problem``'s methods):
# each parallel pass then wakes the other threads (OMP_WAIT_POLICY=PASSIVE: 40–130 µs per parallel region on
# this 2-core VM against 5–9 µs for the pass itself on a few hundred rows), more than they save. Measured,
# 2-core AMD EPYC, noisy softmax solves from x0="auto", 1 thread / 2 threads (the prediction in brackets):
# dense n = 256, d = 48 0.39–0.41 (0.03 ms), 1024 × 64 0.48–0.58 (0.19 ms), 4096 × 64 0.65–0.67 (0.73 ms),
# 16384 × 64 0.91–1.03 (2.9 ms), 65536 × 64 1.35–1.44; CSR 10 per row, d = 64: n = 2000 0.41–0.46
# (0.08 ms), 10⁴ 0.78–0.79 (0.37 ms), 3·10⁴ 1.01–1.13 (1.1 ms), 10⁵ 1.25–1.27; softmax_relu (25–54
# iterations) alike, 0.30 at dense 256 × 48 to 1.55 at 65536 × 64. The thread count never changes the bits.
SINGLE_THREAD_BELOW_SECONDS = 7.5e-4


@contextmanager
def numba_threads(n_threads):
    """Numba's prange threads set to ``n_threads`` inside this block (None: as they are), then restored."""
    previous = numba.get_num_threads()
    if n_threads is not None:
        numba.set_num_threads(n_threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


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
    with numba_threads(n_threads), single_threaded_blas():
        yield


def map_single_threaded_blas(function, items):
    """Yield function(item) for each item, in item order, computed on numba.get_num_threads() Python
    threads with BLAS limited to 1 thread.

    A BLAS call's rounding depends on how many threads split it; one thread per call
    and results consumed in item order make blocked GEMM sums independent of the
    thread count (BLAS releases the GIL, so the calls still run in parallel). Results
    are yielded as they complete in order, so only a few are held at once.
    """
    items = list(items)
    with single_threaded_blas():
        # One item gains nothing from a pool, whose start costs about as much as a 4096 × 256 SYRK
        # (measured: one dense 4096 × 256 sandwich block 6.9 ms alone, 7.4 ms through a pool of 2).
        workers = min(numba.get_num_threads(), len(items))
        if workers <= 1:
            for item in items:
                yield function(item)
            return
        # NumPy's floating-point error handling is per thread: the workers follow the caller's.
        caller_errors = np.geterr()

        def call(item):
            with np.errstate(**caller_errors):
                return function(item)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(call, items)
