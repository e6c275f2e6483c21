"""Machine probes measured in the same run as the benchmarks: memory bandwidth and GEMM rate.

The roofline is the best of several ways to stream a large float64 array (512 MiB by
default, 16 times this machine's 32 MiB L3), each timed here: a vectorised Numba
``prange`` sum (``fastmath`` lets LLVM reorder the adds into SIMD lanes, independent
accumulators per lane), a Numba sum over fixed chunks with eight independent scalar
accumulators, a Numba ``prange`` copy, NumPy's own ``sum`` and NumPy's copy (copies count
read + write bytes). A probe whose adds or loop overhead are the bottleneck reports less than
the memory can do; taking the best of them keeps the roofline honest. (An earlier probe kept
its accumulators in a small array that LLVM did not promote to registers: it timed the adds
and read ~10 GB/s where this machine streams ~25 GB/s on 2 threads.)

Each probe's rate is its best over the repetitions (after a warm-up call): on a shared
machine load only ever slows a stream, so the fastest repetition is the closest to what the
memory can do, and the median moves with the neighbours' load. Benchmarks that compare a
kernel with the roofline (bench/passes.py) time the probes in the same rounds as the kernel
(``probe_functions``), so a burst of load hits both alike.
"""
import time

import numba
import numpy as np
from numba import njit, prange

from fastnewton.kernels.reduce import lanes_sum

PROBE_CHUNKS = 64


@njit(parallel=True, fastmath=True, cache=True)
def _vector_sum(a):
    """Σ a, read once; fastmath lets the reduction run in SIMD lanes (the probe's only use of it)."""
    total = 0.0
    for i in prange(a.shape[0]):
        total += a[i]
    return total


@njit(parallel=True, cache=True)
def _scalar_lanes_sum(a, n_chunks):
    """Σ a over fixed chunks, each by ``lanes_sum`` (eight independent scalar accumulators, kept in registers)."""
    n = a.shape[0]
    size = (n + n_chunks - 1) // n_chunks
    part = np.zeros(n_chunks)
    for c in prange(n_chunks):
        start = c * size
        stop = min(n, start + size)
        part[c] = lanes_sum(a[start:stop])
    return part.sum()


@njit(parallel=True, cache=True)
def _copy(a, out):
    """out[:] = a[:], split over the threads (LLVM vectorises the contiguous loop)."""
    for i in prange(a.shape[0]):
        out[i] = a[i]


def median_seconds(fn, repeats):
    """Median and (min, max) wall time of ``repeats`` calls of fn() (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times)), float(np.max(times))


def probe_functions(megabytes=512):
    """The streaming probes: name → (callable, bytes it moves). Numba's run at the current thread count,
    NumPy's on one thread. Keys: ``numba_vector_sum``, ``numba_scalar_lanes_sum``, ``numba_copy``,
    ``numpy_sum``, ``numpy_copy``."""
    a = np.ones(megabytes * 2**20 // 8)
    copy = np.ones_like(a)  # written once here, so no timed call pays its first-touch page faults
    return {
        "numba_vector_sum": (lambda: _vector_sum(a), a.nbytes),
        "numba_scalar_lanes_sum": (lambda: _scalar_lanes_sum(a, PROBE_CHUNKS), a.nbytes),
        "numba_copy": (lambda: _copy(a, copy), 2 * a.nbytes),
        "numpy_sum": (lambda: a.sum(), a.nbytes),
        "numpy_copy": (lambda: np.copyto(copy, a), 2 * a.nbytes),
    }


def bandwidth_probes(n_threads, megabytes=512, repeats=5):
    """Bytes per second of each streaming probe, its best over ``repeats`` (after a warm-up call), Numba at
    ``n_threads``; the probes take turns in each repetition (see ``probe_functions`` for the keys)."""
    probes = probe_functions(megabytes)
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        for fn, _ in probes.values():
            fn()
        best = {name: np.inf for name in probes}
        for _ in range(repeats):
            for name, (fn, _) in probes.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
        return {name: moved / best[name] for name, (_, moved) in probes.items()}
    finally:
        numba.set_num_threads(previous)


def read_bandwidth(n_threads, megabytes=512, repeats=5):
    """The roofline bandwidth in bytes per second: the best of ``bandwidth_probes`` (same run)."""
    return max(bandwidth_probes(n_threads, megabytes, repeats).values())


def gemm_rate(d=1024, repeats=3):
    """Float64 GEMM flops per second for a d × d product (BLAS threads as currently set)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((d, d))
    B = rng.standard_normal((d, d))
    seconds, _, _ = median_seconds(lambda: A @ B, repeats)
    return 2.0 * d**3 / seconds
