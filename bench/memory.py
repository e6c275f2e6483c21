"""The memory a Newton iteration needs beyond the problem itself, per Hessian strategy.

Each (shape, strategy) runs in a fresh child process, so no run inherits another's heap:
the child builds a planted CSR ``softmax`` problem (n rows, nnz // n distinct sorted columns
per row, canonical CSR, so ``solve`` uses C as it is and copies nothing), compiles the
kernels on a tiny problem, and then, with C, b and x0 resident, runs
``fastnewton.solve(C, b, x0=0.9·x_true, hessian=strategy, max_iter=1)`` — the problem's
checks, the reference scales (‖b‖, column norms, ∇L(0)), the evaluation at x0, one Hessian,
one damped step with its line search and the evaluation at the new iterate. It reports:

- **traced**: the tracemalloc peak above what was traced before the call — every NumPy
  array (and Python object) the solve allocates, including short-lived temporaries (the CSR
  sandwich's per-chunk partials among them), but not arrays Numba kernels allocate inside
  compiled code;
- **RSS**: the resident-set high-water mark (Linux VmHWM, reset just before the call through
  /proc/self/clear_refs) above the RSS before the call: everything, Numba's arrays and the
  BLAS and thread-pool buffers included. glibc's mmap threshold is fixed at 128 KiB in the
  child (MALLOC_MMAP_THRESHOLD_), so freed large arrays go back to the system at once and
  cannot hide a later allocation by being reused;
- the count of ``fastnewton/memory.py`` for the same shape, term by term, and C's own bytes.

sketch and pcg are measured on their largest iteration: one whose leverage reference is refused,
so it runs the embedding and the JL pass over every row (most iterations keep the reference and
need only O(n) for their scores). The child forces that path by setting
``fastnewton.sketching.REFERENCE_SPREAD`` below 1, a spread no Gram matrix can pass (its smallest
eigenvalue would have to exceed its mean); the row's ``leverage_refreshes`` confirms it.

    python bench/memory.py --quick
    python bench/memory.py --n 1e7 1e6 --nnz 1e8 1e7 --d 64 2048     # the default: tall, and wide

Writes memory.json (one row per (shape, strategy), with the run's versions, git commit, CPU and
threads) to --out (default bench/results/).
"""
import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np
import scipy.sparse as sp

try:
    from _args import add_output_arguments, comma_list, nonnegative_int, positive_int, thread_count
    from _report import write_json
except ImportError:  # imported as bench.memory from the repository root
    from bench._args import add_output_arguments, comma_list, nonnegative_int, positive_int, thread_count
    from bench._report import write_json

MiB = 2**20
STRATEGIES = ("exact", "sketch", "pcg")
# glibc returns allocations of at least this many bytes to the system when they are freed (and
# stops raising the threshold as large blocks are freed): a peak then shows in the RSS high-water.
MMAP_THRESHOLD = 128 * 1024


def planted_csr(n, nnz, d, seed):
    """(C, b, x0): canonical CSR C with k = nnz // n distinct sorted columns per row (at most d),
    b = softmax(C x_true), x0 = 0.9·x_true. C's arrays are the only large allocation that stays."""
    rng = np.random.default_rng(seed)
    k = min(d, max(1, nnz // n))
    index_dtype = np.int32 if n * k < 2**31 - 1 else np.int64
    # Column t of a row lies in the t-th of k equal strata of [0, d): distinct and sorted by construction.
    lows = (np.arange(k) * d) // k
    widths = (np.arange(1, k + 1) * d) // k - lows
    indices = (lows + (rng.random((n, k)) * widths).astype(index_dtype)).astype(index_dtype).reshape(-1)
    data = rng.standard_normal(n * k)
    indptr = np.arange(0, n * k + 1, k, dtype=index_dtype)
    C = sp.csr_matrix((data, indices, indptr), shape=(n, d), copy=False)
    C.has_canonical_format = True  # distinct sorted columns: nothing for solve to sum or copy
    x_true = rng.standard_normal(d) / math.sqrt(k)
    u = C @ x_true
    u -= u.max()
    np.exp(u, out=u)
    u /= u.sum()
    return C, u, 0.9 * x_true


def csr_bytes(C):
    return C.data.nbytes + C.indices.nbytes + C.indptr.nbytes


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


def quiet_solve(*args, **kwargs):
    import fastnewton

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        return fastnewton.solve(*args, **kwargs)


def child(n, nnz, d, strategy, threads, seed):
    """One measurement in this (fresh) process; returns its row."""
    import numba

    threads = threads or numba.get_num_threads()
    if strategy in ("sketch", "pcg"):
        import fastnewton.sketching
        fastnewton.sketching.REFERENCE_SPREAD = 0.5  # every reference refused: the refresh iteration
    started = time.perf_counter()
    C, b, x0 = planted_csr(n, nnz, d, seed)
    built_s = time.perf_counter() - started
    # Compile (or load) this strategy's kernels and start the thread pools on a tiny problem of the
    # same kind, so neither is charged to the iteration.
    Cw, bw, xw = planted_csr(2000, 2000 * max(1, nnz // n), d, seed + 1)
    quiet_solve(Cw, bw, x0=xw, hessian=strategy, max_iter=1, tol=1e-300, seed=0, n_threads=threads)
    del Cw, bw, xw
    gc.collect()
    can_reset = reset_hwm()
    rss_before = (vm_kib("VmRSS") or 0) * 1024
    tracemalloc.start()
    traced_before, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    res = quiet_solve(C, b, x0=x0, hessian=strategy, max_iter=1, tol=1e-300, seed=0, n_threads=threads)
    seconds = time.perf_counter() - started
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = (vm_kib("VmHWM") or 0) * 1024 if can_reset else None
    return dict(strategy=strategy, n=n, d=d, nnz=C.nnz, threads=threads, c_bytes=csr_bytes(C),
                resident_before=rss_before, traced=traced_peak - traced_before,
                rss_peak=(hwm - rss_before) if hwm is not None else None, seconds=seconds, built_s=built_s,
                n_iter=res.n_iter, status=res.status.name, hessian_used=res.get("hessian", strategy),
                leverage_refreshes=max(int(h.get("leverage_refreshes") or 0) for h in res.history))


def measure_in_child(n, nnz, d, strategy, threads, seed):
    command = [sys.executable, os.path.abspath(__file__), "--child", strategy, "--n", str(n), "--nnz", str(nnz),
               "--d", str(d), "--seed", str(seed)] + (["--threads", str(threads)] if threads else [])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the measurement of {strategy} at d = {d} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, nargs="+", default=[10**7, 10**6],
                        help="rows, one value per shape (default 1e7 1e6)")
    parser.add_argument("--nnz", type=positive_int, nargs="+", default=[10**8, 10**7],
                        help="non-zeros, at least one per row, one value per shape (default 1e8 1e7)")
    parser.add_argument("--d", type=positive_int, nargs="+", default=None,
                        help="columns, one value per shape (default 64 2048); a single value of --n, "
                             "--nnz or --d serves every shape")
    parser.add_argument("--quick", action="store_true",
                        help="n = 10^5, nnz = 10^6, d = 64 and 256 unless --d is given (a smoke run)")
    parser.add_argument("--strategies", type=comma_list(STRATEGIES), default=list(STRATEGIES),
                        help="comma-separated, of exact, sketch, pcg (default all three)")
    parser.add_argument("--threads", type=thread_count, default=None, help="Numba threads (default: all)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--child", choices=STRATEGIES, default=None, help=argparse.SUPPRESS)
    add_output_arguments(parser, plots=False)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.nnz, args.d = [10**5], [10**6], args.d or [64, 256]
    args.d = args.d or [64, 2048]
    count = max(len(args.n), len(args.nnz), len(args.d))
    for name in ("n", "nnz", "d"):
        values = getattr(args, name)
        if len(values) not in (1, count):
            parser.error(f"--{name} needs one value or {count} (one per shape), got {len(values)}")
        setattr(args, name, values * count if len(values) == 1 else values)
    shapes = list(zip(args.n, args.nnz, args.d))
    for n, nnz, _ in shapes:
        if nnz < n:
            # planted_csr stores nnz // n entries per row: fewer than n would silently become n.
            parser.error(f"--nnz must be ≥ --n = {n} (at least one entry per row), got {nnz}")
    if args.child:
        print(json.dumps(child(*shapes[0], args.child, args.threads, args.seed)))
        return 0

    from fastnewton.memory import iteration_terms

    rows = []
    for n, nnz, d in shapes:
        for strategy in args.strategies:
            row = measure_in_child(n, nnz, d, strategy, args.threads, args.seed)
            terms = iteration_terms(row["n"], d, row["nnz"], k=2, strategy=strategy)
            row.update(formula_terms=terms, formula_bytes=sum(terms.values()))
            rows.append(row)
            print(f"\n[d = {d}, {strategy}] C {row['c_bytes'] / MiB:.0f} MiB (built in {row['built_s']:.1f} s); "
                  f"solve(max_iter=1) {row['seconds']:.2f} s, {row['status']}")
            for name, value in terms.items():
                print(f"    {name:<46} {value / MiB:9.1f} MiB")
            print(f"    {'count (fastnewton/memory.py)':<46} {row['formula_bytes'] / MiB:9.1f} MiB")
            print(f"    {'measured: traced peak (NumPy allocations)':<46} {row['traced'] / MiB:9.1f} MiB")
            if row["rss_peak"] is not None:
                print(f"    {'measured: RSS high-water above the problem':<46} {row['rss_peak'] / MiB:9.1f} MiB")
    write_json(os.path.join(args.out, "memory.json"), {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
