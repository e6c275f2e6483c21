"""Does ``hessian="auto"`` pick the fastest strategy? Time to tol of every strategy on a grid of shapes.

    python bench/auto_grid.py                 # the full grid (dense and CSR), ~3 minutes on 2 cores
    python bench/auto_grid.py --only dense    # one half of it
    python bench/auto_grid.py --quick         # three tiny shapes (a smoke run)
    python bench/auto_grid.py --x0 zeros      # every strategy and auto's pick from x0 = 0 (~4× the iterations)

For each shape: a planted softmax problem with noisy targets (noise 0.1, so the optimum is not
the planted x), solved from ``x0="auto"`` (or --x0 zeros) to tol = 1e-8 with hessian = exact, sketch, pcg and lagged
(seed 0), after one untimed default solve; the wall time of each ``fastnewton.solve`` call (best of 3 for
solves under 2 s), and
its Newton iterations; auto's pick (``choose_strategy``, a deterministic function of the shape
and the target b, so its time is the picked strategy's); and the ratio of
that time to the fastest strategy's. The rates auto uses come from bench/calibrate.py.

Dropped from the issue's ranges (n 10⁴–10⁶, d 32–1024, 5–500 non-zeros per row), for memory
and a budget of minutes: dense n = 10⁶ with d > 32 (≥ 2 GB, minutes per strategy), CSR with
500 non-zeros per row beyond n = 10⁴, 200 per row beyond n = 3·10⁴ and ≥ 50 per row at n = 10⁶
at d = 1024 (the exact sandwich alone takes minutes per solve there).
"""
import argparse
import csv
import sys
import time
import warnings


import fastnewton
from fastnewton.hessian import choose_strategy, strategy_seconds
from fastnewton.problem import Problem
from _args import nonnegative_int

STRATEGIES = ("exact", "sketch", "pcg", "lagged")
# (format, n, d, non-zeros per row; None for dense)
GRID = {
    "dense": [("dense", 10_000, 32, None), ("dense", 10_000, 256, None), ("dense", 10_000, 1024, None),
              ("dense", 100_000, 32, None), ("dense", 100_000, 256, None), ("dense", 100_000, 512, None),
              ("dense", 300_000, 256, None), ("dense", 1_000_000, 32, None)],
    "csr": [("csr", 10_000, 32, 5), ("csr", 10_000, 256, 50), ("csr", 10_000, 1024, 500),
            ("csr", 100_000, 32, 5), ("csr", 100_000, 256, 50), ("csr", 100_000, 1024, 50),
            ("csr", 30_000, 1024, 200), ("csr", 1_000_000, 32, 5), ("csr", 1_000_000, 200, 10),
            ("csr", 1_000_000, 256, 10),
            ("csr", 1_000_000, 1024, 5)],
}
QUICK_GRID = [("dense", 3000, 16, None), ("csr", 5000, 32, 5), ("csr", 3000, 64, 40)]
TOLERANCE = 1.15
REPEATS = 3
REPEAT_BELOW_SECONDS = 2.0


def run_point(fmt, n, d, per_row, seed, x0="auto"):
    C, b, _ = fastnewton.make_problem(n, d, nnz_per_row=per_row, dense=fmt == "dense", noise=0.1, seed=seed)
    times, converged, iterations = {}, {}, {}
    # One untimed solve first, so that no strategy pays the process's first work on this shape: right after the
    # problem is built (NumPy, one core) the first solves ran 1.5–3× slower than later ones (CSR 10⁶ × 32, 5 per
    # row, exact, kernels loaded on a small problem before: 211–319 ms, then 165–213 ms, then 108–145 ms; four
    # processes), and exact, timed first, was charged for it (its best of 3 there: 0.11–0.19 s over runs,
    # lagged's 0.12–0.14 s).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        fastnewton.solve(C, b, seed=seed, x0=x0)
    for name in STRATEGIES:
        times[name] = float("inf")
        # Best of a few runs for short solves: on a shared machine one descheduling is ~0.1 s.
        for _ in range(REPEATS if times[name] == float("inf") else 1):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
                res = fastnewton.solve(C, b, hessian=name, seed=seed, x0=x0)
            times[name] = min(times[name], time.perf_counter() - start)
            if times[name] > REPEAT_BELOW_SECONDS:
                break
        converged[name] = bool(res.converged)
        iterations[name] = res.n_iter
    problem = Problem(C, b)
    # auto prices the start it is given: the default one, or any other (zeros, a user's x0)
    pick = choose_strategy(problem, 0.5, None, default_start=x0 == "auto")
    predicted = strategy_seconds(problem, 0.5, None, default_start=x0 == "auto")
    best = min((t for name, t in times.items() if converged[name]), default=float("nan"))
    return {"format": fmt, "n": n, "d": d, "nnz_per_row": per_row or d,
            **{f"{name}_s": times[name] for name in STRATEGIES},
            **{f"{name}_converged": converged[name] for name in STRATEGIES},
            **{f"{name}_iterations": iterations[name] for name in STRATEGIES},
            **{f"{name}_predicted_s": predicted[name] for name in STRATEGIES},
            "auto": pick, "ratio": times[pick] / best if converged[pick] else float("inf")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three tiny shapes")
    parser.add_argument("--only", choices=sorted(GRID), help="one half of the grid")
    parser.add_argument("--points", type=nonnegative_int, nargs="+", metavar="INDEX",
                        help="only these points of the selected grid (0-based), to split it into shorter runs")
    parser.add_argument("--output", help="also write the rows to this CSV file")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--x0", choices=("auto", "zeros"), default="auto",
                        help="the start of every solve (default: fastnewton's automatic start)")
    args = parser.parse_args(argv)
    grid = QUICK_GRID if args.quick else [p for fmt in (args.only,) if fmt for p in GRID[fmt]] or \
        GRID["dense"] + GRID["csr"]
    if args.points is not None:
        if max(args.points) >= len(grid):
            parser.error(f"--points {max(args.points)} is past the selected grid, whose {len(grid)} points are "
                         f"0 to {len(grid) - 1}")
        grid = [grid[index] for index in args.points]
    # Compile (or load the cached kernels) before timing.
    run_point("dense", 500, 8, None, args.seed)
    run_point("csr", 500, 8, 3, args.seed)
    print(f"{'format':>6} {'n':>8} {'d':>5} {'nnz/row':>7} {'exact s (it)':>13} {'sketch s (it)':>13} "
          f"{'pcg s (it)':>13} {'lagged s (it)':>13} {'auto':>6} {'ratio':>6}")
    rows = []
    for fmt, n, d, per_row in grid:
        row = run_point(fmt, n, d, per_row, args.seed, args.x0)
        rows.append(row)
        cells = " ".join(f"{row[f'{name}_s']:>8.3f}" + ("" if row[f"{name}_converged"] else "*")
                         + f" ({row[f'{name}_iterations']:>2})" for name in STRATEGIES)
        print(f"{fmt:>6} {n:>8} {d:>5} {row['nnz_per_row']:>7} {cells} {row['auto']:>6} {row['ratio']:>6.2f}",
              flush=True)
    worst = max(row["ratio"] for row in rows)
    print(f"worst ratio auto / fastest = {worst:.2f} (target ≤ {TOLERANCE}); * = did not reach tol")
    if args.output:
        with open(args.output, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    # The quick grid is a smoke run: timings of millisecond solves decide nothing.
    return 0 if args.quick or worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
