"""The passes over C against the memory-bandwidth roofline, and their thread speed-up.

    python bench/passes.py                 # n = 1e6, d = 256, nnz = 1e7 (CSR), threads 1 and 2
    python bench/passes.py --quick         # small problem, seconds

For each thread count: the measured read bandwidth (same run), then per pass the
median time, the bytes it must move, the roofline time (bytes / bandwidth) and
the ratio time / roofline (target ≤ 1.5), and the speed-up over 1 thread
(target ≥ 1.7 at 2 threads). Results also go to passes.json in --out (default bench/results/),
with the run's versions, git commit, CPU model and thread counts.
"""
import argparse
import os
import platform

import numba
import numpy as np

import fastnewton
from fastnewton.matrix import CSRMatrix
from fastnewton.validation import as_input_matrix

try:
    from _args import add_output_arguments, positive_int, thread_count
    from _report import write_json
    from probes import median_seconds, read_bandwidth
except ImportError:  # run as a module from the repository root
    from bench._args import add_output_arguments, positive_int, thread_count
    from bench._report import write_json
    from bench.probes import median_seconds, read_bandwidth


def pass_bytes(C, k):
    """Bytes a pass must move: C once (indptr, indices, data) plus its length-n operand/result."""
    matrix_bytes = C.nbytes
    return {
        "forward u = Cx": matrix_bytes + 8 * C.n,
        f"fused Cᵀ[q, U] (k+1 = {k})": matrix_bytes + 8 * C.n * k,
    }


def run(args):
    C_csr, b, _ = fastnewton.make_problem(args.n, args.d, nnz_per_row=args.nnz_per_row, seed=0)
    C = as_input_matrix(C_csr)
    assert isinstance(C, CSRMatrix)
    problem = fastnewton.Problem(C_csr, b)
    x = np.random.default_rng(1).standard_normal(args.d) / np.sqrt(args.nnz_per_row)
    Q = problem.row_vectors(C.matvec(x))[1]["Q"]
    passes = {
        "forward u = Cx": lambda: C.matvec(x),
        f"fused Cᵀ[q, U] (k+1 = {Q.shape[1]})": lambda: C.rmatmat(Q),
    }
    sizes = pass_bytes(C, Q.shape[1])
    rows = []
    max_threads = numba.config.NUMBA_NUM_THREADS
    threads = [t for t in args.threads if t <= max_threads]
    print(f"CSR n = {C.n:,}, d = {C.d}, nnz = {C.nnz:,}, index {C.indices.dtype}, values {C.data.dtype}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba {numba.__version__}")
    baseline = {}
    for n_threads in threads:
        bandwidth = read_bandwidth(n_threads, megabytes=args.probe_mb)
        print(f"\n{n_threads} thread(s): read bandwidth {bandwidth / 1e9:.2f} GB/s")
        print(f"  {'pass':<28} {'median s':>9} {'GB moved':>9} {'roofline s':>11} {'ratio':>6} {'speed-up':>9}")
        numba.set_num_threads(n_threads)
        for name, fn in passes.items():
            median, low, high = median_seconds(fn, args.repeats)
            roofline = sizes[name] / bandwidth
            baseline.setdefault(name, median)
            row = {"pass": name, "threads": n_threads, "median_s": median, "min_s": low, "max_s": high,
                   "bytes": sizes[name], "bandwidth_Bps": bandwidth, "roofline_s": roofline,
                   "roofline_ratio": median / roofline, "speedup": baseline[name] / median,
                   "n": C.n, "d": C.d, "nnz": C.nnz}
            rows.append(row)
            print(f"  {name:<28} {median:>9.4f} {sizes[name] / 1e9:>9.3f} {roofline:>11.4f} "
                  f"{row['roofline_ratio']:>6.2f} {row['speedup']:>9.2f}")
    numba.set_num_threads(max_threads)
    write_json(os.path.join(args.out, "passes.json"), {"rows": rows})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=1_000_000, help="rows of C (default 1e6)")
    parser.add_argument("--d", type=positive_int, default=256, help="columns of C (default 256)")
    parser.add_argument("--nnz-per-row", type=positive_int, default=10, help="non-zeros per row (default 10)")
    parser.add_argument("--threads", type=thread_count, nargs="+", default=[1, 2],
                        help="thread counts (default 1 2, those above NUMBA_NUM_THREADS skipped)")
    parser.add_argument("--repeats", type=positive_int, default=15, help="timed repeats per point (default 15)")
    parser.add_argument("--probe-mb", type=positive_int, default=512, help="bandwidth probe array size in MiB")
    add_output_arguments(parser, plots=False)
    parser.add_argument("--quick", action="store_true", help="n = 1e5, 3 repeats, 64 MiB probe")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.probe_mb = 100_000, 3, 64
    return run(args)


if __name__ == "__main__":
    main()
