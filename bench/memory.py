"""Peak extra memory of one Newton iteration vs the formula in ``fastnewton/memory.py``.

Builds a planted CSR ``softmax`` problem (default n = 10⁷, nnz = 10⁸, d = 64; ``--quick``:
n = 10⁵, nnz = 10⁶) without holding extra copies of C, then for each Hessian strategy runs
``fastnewton.solve(..., x0=given, max_iter=1)`` (the Problem, ∇L(0) for g_ref, the evaluation at
x0, one Hessian, one damped step with its line search and the evaluation at the new iterate) and
reports:

- tracemalloc peak (NumPy registers its allocations with tracemalloc) above what was traced
  before the call: the peak extra bytes of the iteration as seen from Python/NumPy;
- the RSS high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) before and after,
  and, where Linux allows resetting it (/proc/self/clear_refs), the peak RSS of this strategy alone
  above the RSS before the call (VmHWM − VmRSS): this also sees Numba-allocated arrays;
- the formula of ``fastnewton/memory.py`` evaluated for this shape, and the bytes of C.

    python bench/memory.py --quick
    python bench/memory.py --n 1e7 --nnz 1e8 --d 64

Writes memory.json (per strategy: the formula's terms and the measurements, with the run's
versions, git commit, CPU and threads) to --out (default bench/results/).
"""
import os
import argparse
import gc
import math
import resource
import sys
import time
import tracemalloc
import warnings

import numpy as np
import scipy.sparse as sp

import fastnewton
from fastnewton.chunking import MAX_CHUNKS, SANDWICH_PARTIAL_BYTES, chunk_rows, sandwich_chunk_rows
from fastnewton.sketching import JL_DIM, SAMPLE_CONSTANT, sample_size

try:
    from _args import add_output_arguments, comma_list, nonnegative_int, positive_int, thread_count
    from _report import write_json
except ImportError:  # imported as bench.memory from the repository root
    from bench._args import add_output_arguments, comma_list, nonnegative_int, positive_int, thread_count
    from bench._report import write_json

MiB = 2**20


def planted_csr(n, nnz, d, seed):
    """(C, b, x0): C CSR with nnz // n entries per row (sorted, possibly repeated columns),
    b = softmax(C x_true), x0 = 0.9·x_true. Arrays are built in place: C's arrays are the only copy."""
    rng = np.random.default_rng(seed)
    k = max(1, nnz // n)
    index_dtype = np.int32 if n * k < 2**31 - 1 else np.int64
    indices = rng.integers(0, d, size=(n, k), dtype=index_dtype)
    indices.sort(axis=1)  # in place
    data = rng.standard_normal(n * k)
    indptr = np.arange(0, n * k + 1, k, dtype=index_dtype)
    C = sp.csr_matrix((data, indices.reshape(-1), indptr), shape=(n, d), copy=False)
    del indices, data, indptr
    x_true = rng.standard_normal(d) / math.sqrt(k)
    u = C @ x_true
    u -= u.max()
    np.exp(u, out=u)
    u /= u.sum()
    return C, u, 0.9 * x_true


def csr_bytes(C):
    return C.data.nbytes + C.indices.nbytes + C.indptr.nbytes


def formula(strategy, n, d, nnz, k=2, sketch_size=None, eps=0.5):
    """The per-iteration extra bytes of fastnewton/memory.py's docstring, term by term."""
    c_t = math.ceil(n / chunk_rows(n))
    per_row = nnz / n
    terms = {"length-n work 8n(k+12)": 8 * n * (k + 12),
             "transposed pass 8·c_t·d(k+1)": 8 * c_t * d * (k + 1)}
    if strategy == "exact":
        c_s = math.ceil(n / sandwich_chunk_rows(n, d, int(n * per_row * (per_row + 1) / 2)))
        partials = min(8 * c_s * d * d, SANDWICH_PARTIAL_BYTES)
        terms["Hessian (exact) 8d²(c_s+3)"] = partials + 8 * d * d * 3
    else:
        s = min(n, sketch_size or sample_size(d, eps, SAMPLE_CONSTANT))
        c_s = math.ceil(s / sandwich_chunk_rows(s, d, int(s * per_row * (per_row + 1) / 2)))
        partials = min(8 * c_s * d * d, SANDWICH_PARTIAL_BYTES)
        terms["sketch 8n(JL+14) + 8d²(c_s+9)"] = 8 * n * (JL_DIM + 14) + partials + 8 * d * d * 9
    return terms, c_t, c_s


def vm_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_hwm():
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def measure(C, b, x0, strategy, threads):
    gc.collect()
    can_reset = reset_hwm()
    rss_before = (vm_kib("VmRSS") or 0) * 1024
    maxrss_before = maxrss_bytes()
    tracemalloc.start()
    traced_before, _ = tracemalloc.get_traced_memory()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        res = fastnewton.solve(C, b, x0=x0, hessian=strategy, max_iter=1, tol=1e-300, seed=0,
                               n_threads=threads)
    seconds = time.perf_counter() - t
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss_after = maxrss_bytes()
    hwm = (vm_kib("VmHWM") or 0) * 1024 if can_reset else None
    return dict(traced=traced_peak - traced_before, maxrss_before=maxrss_before, maxrss_after=maxrss_after,
                rss_peak=(hwm - rss_before) if hwm is not None else None, seconds=seconds,
                n_iter=res.n_iter, status=res.status.name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=10**7, help="rows (default 10^7)")
    parser.add_argument("--nnz", type=positive_int, default=10**8, help="non-zeros, at least one per row (default 10^8)")
    parser.add_argument("--d", type=positive_int, default=64, help="columns (default 64)")
    parser.add_argument("--quick", action="store_true", help="n = 10^5, nnz = 10^6 (a smoke run)")
    parser.add_argument("--strategies", type=comma_list(("exact", "sketch", "pcg")), default=["exact", "sketch"],
                        help="comma-separated, of exact, sketch, pcg (default exact,sketch)")
    parser.add_argument("--threads", type=thread_count, default=None, help="Numba threads (default: all)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    add_output_arguments(parser, plots=False)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.nnz = 10**5, 10**6
    if args.nnz < args.n:
        # planted_csr stores nnz // n entries per row: fewer than n would silently become n.
        parser.error(f"--nnz must be ≥ --n = {args.n} (at least one entry per row), got {args.nnz}")
    n, d = args.n, args.d

    t = time.perf_counter()
    C, b, x0 = planted_csr(n, args.nnz, d, args.seed)
    nnz = C.nnz
    print(f"problem: n = {n}, d = {d}, nnz = {nnz} (built in {time.perf_counter() - t:.1f} s)")
    print(f"C itself: {csr_bytes(C) / MiB:.1f} MiB (data {C.data.nbytes / MiB:.1f}, indices "
          f"{C.indices.nbytes / MiB:.1f}, indptr {C.indptr.nbytes / MiB:.1f}); b and x0: "
          f"{(b.nbytes + x0.nbytes) / MiB:.1f} MiB")
    print(f"RSS high-water after building: {maxrss_bytes() / MiB:.1f} MiB")
    # Warm-up on a tiny problem so the JIT's memory is not charged to the first strategy.
    Cw, bw, xw = planted_csr(5000, 50000, d, 1)
    for strategy in args.strategies:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
            fastnewton.solve(Cw, bw, x0=xw, hessian=strategy, max_iter=1, tol=1e-300, seed=0)
    del Cw, bw, xw

    rows = []
    for strategy in args.strategies:
        terms, c_t, c_s = formula(strategy, n, d, nnz)
        total = sum(terms.values())
        m = measure(C, b, x0, strategy, args.threads)
        rows.append(dict(strategy=strategy, n=n, d=d, nnz=nnz, threads=args.threads, c_bytes=csr_bytes(C),
                         formula_bytes=total, formula_terms=terms, **m))
        print(f"\n[{strategy}] one iteration via solve(max_iter=1): {m['seconds']:.2f} s, status {m['status']}")
        print(f"  formula (fastnewton/memory.py, c_t = {c_t}, c_s = {c_s}, MAX_CHUNKS = {MAX_CHUNKS}):")
        for name, value in terms.items():
            print(f"    {name:<34} {value / MiB:10.1f} MiB")
        print(f"    {'formula total':<34} {total / MiB:10.1f} MiB")
        print(f"  measured tracemalloc peak extra:   {m['traced'] / MiB:10.1f} MiB "
              f"({m['traced'] / total:.2f} x formula)")
        if m["rss_peak"] is not None:
            print(f"  measured RSS peak extra (VmHWM):   {m['rss_peak'] / MiB:10.1f} MiB "
                  f"({m['rss_peak'] / total:.2f} x formula)")
        print(f"  ru_maxrss before / after:          {m['maxrss_before'] / MiB:.1f} / "
              f"{m['maxrss_after'] / MiB:.1f} MiB (+{(m['maxrss_after'] - m['maxrss_before']) / MiB:.1f})")
        print(f"  C itself:                          {csr_bytes(C) / MiB:10.1f} MiB")
    write_json(os.path.join(args.out, "memory.json"), {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
