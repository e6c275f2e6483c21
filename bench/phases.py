"""Seconds per phase of a Newton iteration, read from one solve's history (the driver's own timers).

    python bench/phases.py                          # CSR n = 1e6, d = 256, 10/row, softmax, hessian="exact"
    python bench/phases.py --zipf                   # bag-of-words-like C (bench/matrices.py), n = 2e6, d = 1024
    python bench/phases.py --quick
    PYTHONPATH=/path/to/copy python bench/phases.py # the same with another copy's fastnewton

The other copy needs its kernels inside its package (copy/fastnewton/kernels, the installed
layout): in a source layout an editable install resolves ``fastnewton.kernels`` to its own
checkout's kernels/. The first lines printed name where fastnewton and its kernels came from.

Runs ``fastnewton.solve(C, b, hessian=..., x0="zeros", max_iter=--iterations)`` after an untimed
one-iteration solve (JIT compilation is never timed), and prints, per phase, the median over
the iterations of the seconds each iteration spent in it (forward pass, model vectors, gradient
pass, Hessian, solve, line search), and the median total. b is planted: b = h(C x_true) for the
softmax model with x_true ~ N(0, 1/k) (k non-zeros per row on average), so u = C x_true ≈ N(0, 1).
Two runs (two checkouts) in one shell command compare before/after on the same machine state.
"""
import argparse
import os
import sys
import warnings

import numpy as np

import fastnewton
import fastnewton.kernels  # noqa: F401 (its location is printed)
from fastnewton.hessian import STRATEGIES

try:
    from _args import add_output_arguments, positive_int, thread_count
    from _report import write_json
    from matrices import bag_of_words
except ImportError:  # run as a module from the repository root
    from bench._args import add_output_arguments, positive_int, thread_count
    from bench._report import write_json
    from bench.matrices import bag_of_words


def planted_softmax(C, seed=0):
    """b = softmax(C x_true), x_true ~ N(0, 1/k) with k = nnz / n (the softmax model's target)."""
    rng = np.random.default_rng(seed)
    x_true = rng.standard_normal(C.shape[1]) / np.sqrt(max(1.0, C.nnz / C.shape[0]))
    u = C @ x_true
    e = np.exp(u - u.max())
    return e / e.sum()


def run(args):
    if args.zipf:
        C = bag_of_words(args.n, args.d, nnz=args.nnz_per_row * args.n, seed=0)
        b = planted_softmax(C)
    else:
        C, b, _ = fastnewton.make_problem(args.n, args.d, nnz_per_row=args.nnz_per_row, seed=0)
    options = dict(hessian=args.hessian, x0="zeros", tol=1e-14, n_threads=args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastnewton.solve(C, b, max_iter=1, **options)
        result = fastnewton.solve(C, b, max_iter=args.iterations, **options)
    iterations = [record["seconds"] for record in result.history[1:]]
    phases = sorted({phase for seconds in iterations for phase in seconds})
    summary = {phase: float(np.median([seconds.get(phase, 0.0) for seconds in iterations])) for phase in phases}
    summary["total"] = float(np.median([sum(seconds.values()) for seconds in iterations]))
    print(f"fastnewton from {os.path.dirname(fastnewton.__file__)}, "
          f"kernels from {os.path.dirname(sys.modules['fastnewton.kernels'].__file__)}")
    print(f"CSR n = {C.shape[0]:,}, d = {C.shape[1]}, nnz = {C.nnz:,}{' (Zipf rows)' if args.zipf else ''}; "
          f"hessian = {args.hessian!r}, {len(iterations)} iterations, threads = {args.threads or 'all'}")
    for phase, seconds in summary.items():
        print(f"  {phase:<12} {1e3 * seconds:9.1f} ms")
    write_json(os.path.join(args.out, "phases.json"),
               {"n": C.shape[0], "d": C.shape[1], "nnz": int(C.nnz), "zipf": args.zipf, "hessian": args.hessian,
                "median_seconds": summary, "history_seconds": iterations})
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=None, help="rows (default 1e6, or 2e6 with --zipf)")
    parser.add_argument("--d", type=positive_int, default=None, help="columns (default 256, or 1024 with --zipf)")
    parser.add_argument("--nnz-per-row", type=positive_int, default=None,
                        help="non-zeros per row, the mean with --zipf (default 10, or 5 with --zipf)")
    parser.add_argument("--zipf", action="store_true", help="bag-of-words-like C with Zipf-skewed row lengths")
    parser.add_argument("--hessian", default="exact", choices=STRATEGIES, help="Hessian strategy (default exact)")
    parser.add_argument("--iterations", type=positive_int, default=5, help="Newton iterations timed (default 5)")
    parser.add_argument("--threads", type=thread_count, default=None, help="n_threads of the solve (default all)")
    add_output_arguments(parser, plots=False)
    parser.add_argument("--quick", action="store_true", help="n = 1e5 (2e4 with --zipf), 2 iterations")
    args = parser.parse_args(argv)
    defaults = (2_000_000, 1024, 5) if args.zipf else (1_000_000, 256, 10)
    args.n = args.n or defaults[0]
    args.d = args.d or defaults[1]
    args.nnz_per_row = args.nnz_per_row or defaults[2]
    if args.quick:
        args.n, args.iterations = (20_000 if args.zipf else 100_000), 2
    return run(args)


if __name__ == "__main__":
    main()
