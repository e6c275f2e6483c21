"""Small problems on one thread or on all: the time of ``solve`` with n_threads = 1 and with the machine's
threads, against the predicted work of one exact iteration that decides the default.

    python bench/small_threads.py                       # softmax and softmax_relu, dense and CSR, d = 64
    python bench/small_threads.py --models softmax --repeats 9
    python bench/small_threads.py --quick               # two sizes, seconds

Without ``n_threads`` ``solve`` runs a problem whose exact iteration is predicted under
``fastnewton.threads.SINGLE_THREAD_BELOW_SECONDS`` of work on one thread (``default_thread_count``):
each parallel pass wakes the other threads, which costs tens of µs per pass where the workers sleep
between passes (OMP_WAIT_POLICY=PASSIVE), more than a pass over a few thousand rows. This script shows
where the line falls on this machine: ratio = time on 1 thread / time on all; the predicted work
(``fastnewton.hessian.exact_iteration_seconds``) is what the rule compares. Noisy planted problems
(``make_problem(..., noise=0.1)``), default keywords, best of --repeats solves each, both thread counts
alternating in one process. Writes small_threads.csv under --out.
"""
import argparse
import sys
import warnings
from pathlib import Path

import numba

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import add_output_arguments, comma_list, positive_int  # noqa: E402
from _report import write_csv  # noqa: E402
from calibrate import best_seconds  # noqa: E402

import fastnewton  # noqa: E402
from fastnewton.hessian import exact_iteration_seconds  # noqa: E402
from fastnewton.threads import SINGLE_THREAD_BELOW_SECONDS  # noqa: E402

MODELS = ("softmax", "relu_softmax", "softmax_relu")
SIZES = {"dense": (256, 1024, 4096, 16384, 65536), "csr": (2000, 10_000, 30_000, 100_000)}
QUICK_SIZES = {"dense": (256, 4096), "csr": (2000, 30_000)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=comma_list(MODELS), default=["softmax", "softmax_relu"])
    parser.add_argument("--d", type=positive_int, default=64)
    parser.add_argument("--nnz-per-row", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--quick", action="store_true", help="two sizes per format, two repeats")
    add_output_arguments(parser, plots=False)
    args = parser.parse_args(argv)
    sizes, repeats = (QUICK_SIZES, 2) if args.quick else (SIZES, args.repeats)
    threads = numba.get_num_threads()
    print(f"one thread below {SINGLE_THREAD_BELOW_SECONDS * 1e3:g} ms of predicted work per exact iteration; "
          f"all = {threads} threads")
    print(f"{'model':>13} {'C':>5} {'n':>7} {'d':>4} {'iter':>5} {'predicted':>10} {'1 thread':>10} "
          f"{'all':>10} {'ratio':>6} {'default':>8}")
    rows = []
    warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
    for model in args.models:
        for fmt, ns in sizes.items():
            for n in ns:
                made = fastnewton.make_problem(n, args.d, nnz_per_row=args.nnz_per_row, model=model, noise=0.1,
                                               seed=1, dense=fmt == "dense")
                keywords = dict(model=model, V=made.V)
                res = fastnewton.solve(made.C, made.b, n_threads=threads, **keywords)  # warm-up
                fastnewton.solve(made.C, made.b, n_threads=1, **keywords)
                one = best_seconds(lambda: fastnewton.solve(made.C, made.b, n_threads=1, **keywords), repeats)
                every = best_seconds(lambda: fastnewton.solve(made.C, made.b, n_threads=threads, **keywords),
                                     repeats)
                predicted = exact_iteration_seconds(fastnewton.Problem(made.C, made.b, model=model, V=made.V))
                default = 1 if predicted < SINGLE_THREAD_BELOW_SECONDS else threads
                row = dict(model=model, format=fmt, n=n, d=args.d, nnz=made.C.nnz if fmt == "csr" else n * args.d,
                           iterations=res.n_iter, predicted_ms=predicted * 1e3, one_thread_ms=one * 1e3,
                           all_threads_ms=every * 1e3, threads=threads, ratio=one / every, default_threads=default)
                rows.append(row)
                print(f"{model:>13} {fmt:>5} {n:7d} {args.d:4d} {res.n_iter:5d} {predicted * 1e3:8.2f}ms "
                      f"{one * 1e3:8.2f}ms {every * 1e3:8.2f}ms {one / every:6.2f} {default:8d}", flush=True)
    write_csv(str(Path(args.out) / "small_threads.csv"), rows)


if __name__ == "__main__":
    main()
