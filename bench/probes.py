"""Machine probes measured in the same run as the benchmarks: memory bandwidth and GEMM rate.

The bandwidth probe streams a large float64 array once per repeat with a Numba
parallel sum (the same threading machinery as the passes over C), so the
roofline ratio compares like with like.
"""
import time

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _stream_read(a, n_chunks):
    """Σ a, read once; eight independent accumulators per chunk so the adds' latency never
    limits the loop (one accumulator measured float-add latency, ~6 GB/s, not memory)."""
    n = a.shape[0]
    size = (n + n_chunks - 1) // n_chunks
    part = np.zeros(n_chunks)
    for c in prange(n_chunks):
        start = c * size
        stop = min(n, start + size)
        acc = np.zeros(8)
        i = start
        while i + 8 <= stop:
            for lane in range(8):
                acc[lane] += a[i + lane]
            i += 8
        total = acc.sum()
        for j in range(i, stop):
            total += a[j]
        part[c] = total
    return part.sum()


def median_seconds(fn, repeats):
    """Median and (min, max) wall time of ``repeats`` calls of fn() (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times)), float(np.max(times))


def read_bandwidth(n_threads, megabytes=512, repeats=5):
    """Bytes per second read by ``n_threads`` threads streaming a ``megabytes`` array (median)."""
    a = np.ones(megabytes * 2**20 // 8)
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        seconds, _, _ = median_seconds(lambda: _stream_read(a, 64), repeats)
    finally:
        numba.set_num_threads(previous)
    return a.nbytes / seconds


def gemm_rate(d=1024, repeats=3):
    """Float64 GEMM flops per second for a d × d product (BLAS threads as currently set)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((d, d))
    B = rng.standard_normal((d, d))
    seconds, _, _ = median_seconds(lambda: A @ B, repeats)
    return 2.0 * d**3 / seconds
