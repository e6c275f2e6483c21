"""Command line: ``python -m fastnewton demo`` solves a built-in planted problem and prints the iterations."""
import argparse
import sys
import time

import numpy as np


def _demo(args):
    from . import make_problem, solve

    print(f"fastnewton demo: planted {args.model} problem, n = {args.n:,}, d = {args.d}, "
          f"{args.nnz_per_row} non-zeros per row (CSR), seed = {args.seed}")
    clock = time.perf_counter()
    _check_demo_fits(args)
    problem = make_problem(args.n, args.d, nnz_per_row=args.nnz_per_row, model=args.model,
                           noise=args.noise, seed=args.seed)
    C, b, x_true = problem[:3]
    V = problem[3] if len(problem) > 3 else None
    print(f"built C with nnz = {C.nnz:,} ({C.data.nbytes + C.indices.nbytes + C.indptr.nbytes:,} bytes) "
          f"in {time.perf_counter() - clock:.2f} s; solving with hessian={args.hessian!r}, tol={args.tol:g}")
    res = solve(C, b, args.model, V=V, hessian=args.hessian, tol=args.tol, max_iter=args.max_iter,
                n_threads=args.threads, x0=args.x0, verbose=True)
    error = np.linalg.norm(res.x - x_true) / np.linalg.norm(x_true)
    print(f"summary: {res.n_iter} iterations, {res.time:.2f} s, loss = {res.loss:.3e}, "
          f"|grad| = {res.grad_norm:.3e} (relative {res.rel_grad_norm:.2e}), "
          f"|x - x_true|/|x_true| = {error:.2e}, converged = {res.converged}")
    print(f"start: {res.start}")
    return 0 if res.converged else 1


def _check_demo_fits(args):
    """MemoryError before building the problem when it and one iteration cannot fit (not Numba's
    "Allocation failed" seconds later): C is built with about 3 copies of its entries alive (columns,
    values, the CSR result), 12 bytes per entry, then the iteration's work of ``fastnewton.memory``."""
    from .memory import available_bytes, iteration_bytes

    m = min(args.d, 16) if args.model == "softmax_relu" else 0
    nnz = args.n * min(args.d, args.nnz_per_row)
    needed = 3 * 12 * nnz + 8 * args.n * m + iteration_bytes(args.n, args.d, m + 2)
    available = available_bytes()
    if available is not None and needed > available:
        raise MemoryError(f"n = {args.n:,} rows with {args.nnz_per_row} non-zeros each need about "
                          f"{needed / 2**30:.1f} GiB, but only {available / 2**30:.1f} GiB of memory is available; "
                          f"use a smaller --n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnewton", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="solve a planted sparse problem and print the per-iteration table")
    demo.add_argument("--n", type=int, default=1_000_000, help="rows of C (default 1e6)")
    demo.add_argument("--d", type=int, default=200, help="columns of C (default 200)")
    demo.add_argument("--nnz-per-row", type=int, default=10, help="non-zeros per row (default 10)")
    demo.add_argument("--model", default="softmax", choices=["softmax", "relu_softmax", "softmax_relu"])
    demo.add_argument("--noise", type=float, default=0.0, help="relative noise on b (default 0)")
    demo.add_argument("--x0", default="zeros", choices=["auto", "zeros"],
                      help="starting point (default zeros, so the table shows Newton's iterations; "
                           "auto starts at the planted solution of a noise-free problem)")
    demo.add_argument("--hessian", default="auto", help="Hessian strategy (default auto)")
    demo.add_argument("--tol", type=float, default=1e-8, help="relative gradient tolerance (default 1e-8)")
    demo.add_argument("--max-iter", type=int, default=100)
    demo.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return _demo(args)
    except (ValueError, TypeError, MemoryError) as error:
        parser.error(f"{args.command}: {error}")


if __name__ == "__main__":
    sys.exit(main())
