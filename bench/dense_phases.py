"""Per-phase milliseconds of one dense iteration, with 1 and 2 threads: passes, sandwich, sketch pieces.

    python bench/dense_phases.py                       # n = 100 000, d = 256
    python bench/dense_phases.py --n 20000 --d 64 --repeat 2
    python bench/dense_phases.py --quick                 # n = 20 000, d = 64, best of 2
    PYTHONPATH=/path/to/other/checkout python bench/dense_phases.py   # the same table for other code

Each figure is the best of --repeat calls at the point x = 0 of a planted noisy softmax
problem (β of mixed sign), inside ``thread_limits`` exactly as in a solve. ``pass after
sandwich`` times u = Cx immediately after a sandwich (BLAS threads raised for the sandwich
only) against ``matvec`` after an idle pause: equal figures mean the threaded BLAS left no
spinning workers behind to slow the Numba pass. The sketched Hessian is broken into its
pieces (embedding, factor, JL pass, sampled SYRK) below its total; then the sketched Hessian of
an iteration that reuses the solve's leverage reference (scores |β|·g in O(n), the sampled SYRK
with its |β| Gram, the certificate), and whole iterations (3 passes + Hessian + Cholesky) of
exact and of the reused-reference sketch, with their ratio. Writes dense_phases.json (the
rows, with the run's versions, git commit, CPU and threads) to --out (default bench/results/).
"""
import argparse
import os
import sys
import time

import numpy as np

import fastnewton
from fastnewton import sketching
from fastnewton.problem import Problem
from fastnewton.threads import blas_threads, thread_limits

try:
    from _args import add_output_arguments, nonnegative_int, positive_int
    from _report import write_json
except ImportError:  # imported as bench.dense_phases from the repository root
    from bench._args import add_output_arguments, nonnegative_int, positive_int
    from bench._report import write_json


def best_ms(function, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def phases(problem, threads, repeat, rng):
    matrix = problem.matrix
    x = np.zeros(problem.d)
    row = {"threads": threads}
    with thread_limits(threads):
        ev = problem.evaluate(x)
        beta = problem.beta(ev)
        row["matvec"] = best_ms(lambda: matrix.matvec(x), repeat)
        row["rmatmat"] = best_ms(lambda: matrix.rmatmat(ev.kept["Q"]), repeat)
        row["sandwich"] = best_ms(lambda: matrix.sandwich(beta), repeat)

        def pass_after_sandwich():
            matrix.sandwich(beta)
            start = time.perf_counter()
            matrix.matvec(x)
            return time.perf_counter() - start

        row["pass after sandwich"] = 1e3 * min(pass_after_sandwich() for _ in range(repeat))
        # (After the pass-after-sandwich figure: threaded BLAS leaves its workers spinning.)
        # The same passes by BLAS GEMV/GEMM, for the Numba-or-BLAS decision: on one BLAS thread (as in a
        # solve) and on the solve's thread count (scoped by blas_threads).
        row["matvec BLAS"] = best_ms(lambda: matrix.array @ x, repeat)
        row["rmatmat BLAS"] = best_ms(lambda: matrix.array.T @ ev.kept["Q"], repeat)
        with blas_threads(threads):
            row["matvec BLAS threaded"] = best_ms(lambda: matrix.array @ x, repeat)
            row["rmatmat BLAS threaded"] = best_ms(lambda: matrix.array.T @ ev.kept["Q"], repeat)
        shifted = problem.hessian_matrix(ev) + np.eye(problem.d)
        row["cholesky"] = best_ms(lambda: np.linalg.cholesky(shifted), repeat)
        s = sketching.sample_size(problem.d, 0.5)
        row["sketch Hessian (sampled sandwich, s rows)"] = best_ms(
            lambda: sketching.sampled_sandwich(matrix, beta, 0.0, s, rng), repeat)
        row["s"] = s
        # Its pieces: the OSNAP embedding SB, the factor R of (SB)ᵀSB, the JL pass C·R⁻¹G, the SYRK of the sample.
        SB = sketching.osnap_embed(matrix, beta, rng)
        row["  embed"] = best_ms(lambda: sketching.osnap_embed(matrix, beta, rng), repeat)
        R = sketching.embedding_factor(SB, 0.0)
        row["  factor"] = best_ms(lambda: sketching.embedding_factor(SB, 0.0), repeat)
        Z = sketching.jl_directions(R, rng)
        scores = sketching.jl_scores(matrix, beta, Z)
        row["  JL pass"] = best_ms(lambda: sketching.jl_scores(matrix, beta, Z), repeat)
        rows, pi = sketching.sample_rows(scores, s, rng)
        row["  sampled SYRK"] = best_ms(lambda: matrix.sandwich_rows(rows, beta[rows] / pi), repeat)
        passes = 2 * row["matvec"] + row["rmatmat"]
        row["iteration exact"] = passes + row["sandwich"] + row["cholesky"]
        if hasattr(sketching, "LeverageReference"):
            reference = sketching.LeverageReference()
            row["reference: first (row lengths)"] = best_ms(
                lambda: sketching.sampled_sandwich(matrix, beta, 0.0, s, rng, reference), 1)
            row["sketch Hessian, reused reference"] = best_ms(
                lambda: sketching.sampled_sandwich(matrix, beta, 0.0, s, rng, reference), repeat)
            row["  refreshes"] = reference.refreshes
            row["  scores |β|·g + draw"] = best_ms(
                lambda: sketching.sample_rows(np.abs(beta) * reference.row_norms, s, rng), repeat)
            # As the solve forms it (float32 SYRKs while the reference is the column scale).
            def sampled_pair():
                return reference.sandwich_of_sample(matrix, rows, beta[rows] / pi)

            pair = sampled_pair()
            row["  sampled SYRK + |β| Gram"] = best_ms(sampled_pair, repeat)
            row["  certificate"] = best_ms(lambda: reference.certified(pair[1], 0.0), repeat)
            sketched = row["sketch Hessian, reused reference"]
        else:
            sketched = row["sketch Hessian (sampled sandwich, s rows)"]
        row["iteration sketch"] = passes + sketched + row["cholesky"]
        row["sketch / exact"] = row["iteration sketch"] / row["iteration exact"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=100_000, help="rows (default 1e5)")
    parser.add_argument("--d", type=positive_int, default=256, help="columns (default 256)")
    parser.add_argument("--repeat", type=positive_int, default=3, help="best of this many calls (default 3)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--quick", action="store_true", help="n = 2e4, d = 64, best of 2 (a smoke run)")
    parser.add_argument("--blas-threads", action="store_true",
                        help="run each sandwich block as one multi-threaded SYRK instead of one block per thread")
    add_output_arguments(parser, plots=False)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.repeat = 20_000, 64, 2
    if args.blas_threads:
        from fastnewton import matrix
        matrix.DENSE_SANDWICH_BLAS_THREADS = True
    C, b, _ = fastnewton.make_problem(args.n, args.d, dense=True, noise=0.1, seed=args.seed)
    # Compile (or load the cached kernels) before timing.
    fastnewton.solve(C[:2000], b[:2000] / b[:2000].sum(), max_iter=1, hessian="sketch", seed=0)
    problem = Problem(C, b)
    rng = np.random.default_rng(args.seed)
    print(f"# fastnewton from {fastnewton.__file__}{' (--blas-threads)' if args.blas_threads else ''}; dense n = {args.n}, d = {args.d}; best of {args.repeat}, ms")
    rows = []
    for threads in (1, 2):
        row = phases(problem, threads, args.repeat, rng)
        rows.append(row)
        print("  ".join(f"{key} {value:.2f}" if key == "sketch / exact" else
                        f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}"
                        for key, value in row.items()))
    write_json(os.path.join(args.out, "dense_phases.json"),
               {"n": args.n, "d": args.d, "repeat": args.repeat, "blas_threads": args.blas_threads, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
