"""Time to tol of exact / sketch / pcg on one dense noisy softmax problem, with the seconds of each phase.

    python bench/sketch_to_tol.py --n 300000 --d 256
    python bench/sketch_to_tol.py --n 1000000 --d 512 --repeat 1     # 4 GB of C
    python bench/sketch_to_tol.py --n 200000 --d 512 --nnz-per-row 60   # CSR with long rows
    python bench/sketch_to_tol.py --quick
    PYTHONPATH=/path/to/other/checkout python bench/sketch_to_tol.py ...   # the same table for other code

A planted softmax problem (``make_problem``, dense or with --nnz-per-row CSR, noise 0.1: the optimum is not the planted x),
solved from ``x0="auto"`` to tol = 1e-8 with each strategy (seed 0); the wall time of the
``solve`` call (best of --repeat), its Newton iterations, the seconds of the start (setup, start,
reference, first evaluation; each on the line below, with how the start was fitted) and of the
iterations' phases summed, and ‖∇L(x)‖/‖∇L(0)‖ recomputed
independently (``Problem.grad``) after the run.
"""
import argparse
import time
import warnings

import numpy as np

import fastnewton
from fastnewton.hessian import STRATEGIES
from fastnewton.problem import Problem

from _args import positive_int


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=300_000)
    parser.add_argument("--d", type=positive_int, default=256)
    parser.add_argument("--repeat", type=positive_int, default=2)
    parser.add_argument("--strategies", nargs="+", default=["exact", "sketch", "pcg"], choices=STRATEGIES)
    parser.add_argument("--nnz-per-row", type=positive_int, default=None,
                        help="CSR C with this many entries per row (default: dense C)")
    parser.add_argument("--quick", action="store_true", help="n = 5000, d = 16")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.repeat = 5000, 16, 1
    if args.nnz_per_row is not None and not 1 <= args.nnz_per_row <= args.d:
        parser.error(f"--nnz-per-row must be in [1, d = {args.d}], got {args.nnz_per_row}")
    dense = args.nnz_per_row is None
    C, b, _ = fastnewton.make_problem(args.n, args.d, nnz_per_row=args.nnz_per_row, dense=dense, noise=0.1, seed=0)
    problem = Problem(C, b)
    g0 = float(np.linalg.norm(problem.grad(np.zeros(args.d))))
    # Compile (or load the cached kernels) before timing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        for name in args.strategies:
            fastnewton.solve(C[:2000], b[:2000] / b[:2000].sum(), max_iter=2, hessian=name, seed=0)
    shape = "dense" if dense else f"csr ({args.nnz_per_row} per row)"
    print(f"# fastnewton from {fastnewton.__file__}; {shape} n = {args.n}, d = {args.d}, noise 0.1, x0 = auto, "
          f"tol = 1e-8; best of {args.repeat}")
    times = {}
    for name in args.strategies:
        best, res = float("inf"), None
        for _ in range(args.repeat):
            start = time.perf_counter()
            res = fastnewton.solve(C, b, hessian=name, seed=0)
            best = min(best, time.perf_counter() - start)
        times[name] = best
        first = res.history[0]["seconds"]
        start_phases = sum(first.values())
        phases = {}
        for record in res.history[1:]:
            for key, value in record["seconds"].items():
                phases[key] = phases.get(key, 0.0) + value
        rel = float(np.linalg.norm(problem.grad(res.x))) / g0
        extra = ""
        if "leverage_refreshes" in res.history[-1]:
            extra = f" refreshes {res.history[-1]['leverage_refreshes']}"
        if "cg_iterations" in res.history[-1]:
            extra += f" cg {sum(r['cg_iterations'] for r in res.history[1:])}"
        print(f"{name:>7} {best:7.2f} s  it {res.n_iter:>2}  converged {res.converged}  ‖∇L‖/‖∇L(0)‖ {rel:.1e}  "
              f"start {start_phases:.2f} s  " + "  ".join(f"{k} {v:.2f}" for k, v in phases.items()) + extra,
              flush=True)
        print(f"{'':>9}iteration 0: " + "  ".join(f"{k} {v:.3f}" for k, v in first.items()) + f"  ({res.start})",
              flush=True)
    if "exact" in times:
        print("exact / strategy: " + "  ".join(f"{name} {times['exact'] / t:.2f}" for name, t in times.items()))


if __name__ == "__main__":
    main()
