"""Milliseconds per Newton iteration of one dense solve, per strategy: for before/after comparisons.

    python bench/dense_iteration.py                          # n = 100 000, d = 256, exact and sketch
    PYTHONPATH=/path/to/other/checkout python bench/dense_iteration.py   # the same for other code

A planted noisy softmax problem (noise 0.1, seed 0), solved from x0 = 0 for --iters
iterations; the figure is the median gap between consecutive history time stamps (each gap
is one whole iteration: forward, model, gradient, Hessian, factor/solve, line search).
"""
import argparse
import warnings

import numpy as np
from _args import positive_int, thread_count

import fastnewton
from fastnewton.hessian import STRATEGIES


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=100_000)
    parser.add_argument("--d", type=positive_int, default=256)
    parser.add_argument("--iters", type=positive_int, default=6)
    parser.add_argument("--strategies", nargs="+", default=["exact", "sketch"], choices=STRATEGIES)
    parser.add_argument("--threads", type=thread_count, default=None)
    args = parser.parse_args(argv)
    C, b, _ = fastnewton.make_problem(args.n, args.d, dense=True, noise=0.1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Compile (or load the cached kernels) before timing.
        for strategy in args.strategies:
            fastnewton.solve(C[:2000], b[:2000] / b[:2000].sum(), max_iter=2, hessian=strategy, seed=0,
                             x0="zeros")
        print(f"# {fastnewton.__file__}: dense n = {args.n}, d = {args.d}, ms per iteration (median of {args.iters})")
        for strategy in args.strategies:
            res = fastnewton.solve(C, b, hessian=strategy, x0="zeros", max_iter=args.iters, seed=1,
                                   n_threads=args.threads)
            stamps = np.array([h["time"] for h in res.history])
            print(f"{strategy}: {1e3 * np.median(np.diff(stamps)):.1f} ms/iteration "
                  f"({res.n_iter} iterations, {1e3 * res.time:.0f} ms)", flush=True)


if __name__ == "__main__":
    main()
