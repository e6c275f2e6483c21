"""Iterations of sketch and pcg from the sampled start against the exact start, on planted noisy problems.

    python bench/sampled_start.py                 # dense, CSR 10 and 40 per row; n 5·10⁴ and 10⁵; 6 seeds
    python bench/sampled_start.py --quick

For each problem (``make_problem``, noise 0.1, softmax) and strategy: ``solve`` from ``x0="auto"``
(whose start, for sketch and pcg, fits on a leverage-score sample of the rows when that is predicted
cheaper) and ``solve`` from the exact least-squares start given as x0, same seed. Prints, per shape,
"sampled/exact" Newton iterations per seed (E: the auto start was not sampled, !: not converged),
and the totals.
"""
import argparse
import warnings

import fastnewton
from fastnewton import Problem, solve
from fastnewton.start import starting_point

from _args import positive_int


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=positive_int, default=6)
    parser.add_argument("--quick", action="store_true", help="one shape (dense n = 20,000, d = 30), 2 seeds")
    args = parser.parse_args(argv)
    shapes = [(fmt, n, d) for fmt in ("dense", 10, 40) for n, d in ((50_000, 50), (100_000, 100))]
    if args.quick:
        shapes, args.seeds = [("dense", 20_000, 30)], 2
    warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
    totals = {"equal": 0, "more": 0, "fewer": 0}
    for fmt, n, d in shapes:
        row = {"sketch": [], "pcg": []}
        for seed in range(args.seeds):
            kind = dict(dense=True) if fmt == "dense" else dict(nnz_per_row=fmt)
            C, b, _ = fastnewton.make_problem(n, d, noise=0.1, seed=seed, **kind)
            exact_start = starting_point(Problem(C, b), "auto")[0]
            for hessian, cells in row.items():
                sampled = solve(C, b, hessian=hessian, seed=seed)
                exact = solve(C, b, hessian=hessian, seed=seed, x0=exact_start)
                cells.append(f"{sampled.n_iter}/{exact.n_iter}" + ("" if "sampled" in sampled.start else "E")
                             + ("" if sampled.converged and exact.converged else "!"))
                key = "equal" if sampled.n_iter == exact.n_iter else "more" if sampled.n_iter > exact.n_iter else "fewer"
                totals[key] += 1
        name = "dense" if fmt == "dense" else f"csr {fmt}/row"
        print(f"{name:>12} n = {n:>7,} d = {d:>3}  " + "  ".join(f"{h}: {' '.join(c)}" for h, c in row.items()),
              flush=True)
    print(f"sampled start against exact start: {totals['equal']} equal, {totals['more']} more, "
          f"{totals['fewer']} fewer iterations")


if __name__ == "__main__":
    main()
