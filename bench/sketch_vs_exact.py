"""Per-iteration time of ``sketch`` vs ``exact`` across d, and time to tol for exact / sketch / pcg.

    python bench/sketch_vs_exact.py                # dense n = 2e5 and CSR n = 1e6 with 100 nnz/row
    python bench/sketch_vs_exact.py --quick        # small sizes, seconds

Problems are planted (``make_problem``, seed 0, noise 1e-2, so the optimum is not the start)
with long rows, where sketching pays: dense C with n ≫ d, and CSR with 100 non-zeros per row.
Per-iteration time is the median over the first ``--iters`` Newton iterations from x0 = 0 of
the sum of all phases (forward, model, gradient, Hessian build, factor/solve, line search).
Time to tol is the wall time of a full ``solve`` (tol = 1e-8, from x0 = 0) per strategy.
Writes sketch_vs_exact.csv and sketch_vs_exact.png (per-iteration time vs d; not with --no-plot)
to --out (default bench/results/).
"""
import argparse
import os
import time
import warnings

import numpy as np

import fastnewton

try:
    from _args import add_output_arguments, positive_int, thread_count
    from _report import caption, command_line, write_csv
except ImportError:  # imported as bench.sketch_vs_exact from the repository root
    from bench._args import add_output_arguments, positive_int, thread_count
    from bench._report import caption, command_line, write_csv


def per_iteration_seconds(res):
    phases = [sum(h["seconds"].values()) for h in res.history[1:]]
    return float(np.median(phases)) if phases else float("nan")


def run_case(fmt, n, d, nnz_per_row, args, full_solve):
    C, b, _ = fastnewton.make_problem(n, d, nnz_per_row=nnz_per_row, dense=(fmt == "dense"), noise=1e-2, seed=0)
    rows = []
    for strategy in ("exact", "sketch", "pcg"):
        if strategy == "pcg" and not full_solve:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
            res = fastnewton.solve(C, b, hessian=strategy, x0="zeros", max_iter=args.iters, seed=1,
                                   n_threads=args.threads)
        row = {"format": fmt, "n": n, "d": d, "nnz": int(np.count_nonzero(C) if fmt == "dense" else C.nnz),
               "strategy": strategy, "per_iter_s": per_iteration_seconds(res),
               "hessian_s": float(np.median([h["seconds"].get("hessian", 0.0) for h in res.history[1:]])),
               "sampled_rows": res.history[-1].get("sampled_rows", n)}
        if full_solve:
            start = time.perf_counter()
            full = fastnewton.solve(C, b, hessian=strategy, x0="zeros", tol=1e-8, max_iter=200, seed=1,
                                    n_threads=args.threads)
            row.update(solve_s=time.perf_counter() - start, solve_iters=full.n_iter, converged=full.converged,
                       rel_grad_norm=full.rel_grad_norm)
        rows.append(row)
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=positive_int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--dense-n", type=positive_int, default=200_000)
    parser.add_argument("--csr-n", type=positive_int, default=1_000_000)
    parser.add_argument("--nnz-per-row", type=positive_int, default=100)
    parser.add_argument("--formats", nargs="+", default=["dense", "csr"], choices=["dense", "csr"])
    parser.add_argument("--iters", type=positive_int, default=3, help="Newton iterations timed per point")
    parser.add_argument("--solve-dims", type=positive_int, nargs="*", default=None,
                        help="d values (among --dims) at which to also time full solves to tol for all "
                             "strategies (default 1024)")
    parser.add_argument("--threads", type=thread_count, default=None)
    add_output_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="d in {16, 32}, n = 5000, 20 nnz/row")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.dense_n, args.csr_n, args.nnz_per_row, args.solve_dims = [16, 32], 5000, 5000, 20, [32]
    elif args.solve_dims is None:
        args.solve_dims = [1024]
    elif set(args.solve_dims) - set(args.dims):
        # A d outside the sweep would be ignored silently.
        parser.error(f"--solve-dims must be among --dims {args.dims}, "
                     f"got {sorted(set(args.solve_dims) - set(args.dims))}")
    rows = []
    for fmt in args.formats:
        n = args.dense_n if fmt == "dense" else args.csr_n
        for d in args.dims:
            print(f"{fmt} n={n} d={d}", flush=True)
            rows += run_case(fmt, n, d, args.nnz_per_row, args, full_solve=d in args.solve_dims)
    print("\nper-iteration time, exact / sketch:")
    for fmt in args.formats:
        for d in args.dims:
            t = {r["strategy"]: r for r in rows if r["format"] == fmt and r["d"] == d}
            print(f"  {fmt:>5} d={d:>5}: exact {t['exact']['per_iter_s']:.3f} s, sketch {t['sketch']['per_iter_s']:.3f} s,"
                  f" ratio {t['exact']['per_iter_s'] / t['sketch']['per_iter_s']:.2f}")
            if "solve_s" in t["exact"]:
                best = min(t[s]["solve_s"] for s in ("sketch", "pcg"))
                print("         to tol 1e-8: " + ", ".join(
                    f"{s} {t[s]['solve_s']:.2f} s ({t[s]['solve_iters']} it, converged={t[s]['converged']})"
                    for s in ("exact", "sketch", "pcg")) + f"; exact / best = {t['exact']['solve_s'] / best:.2f}")
    write_csv(os.path.join(args.out, "sketch_vs_exact.csv"), rows, sorted({k for r in rows for k in r}))
    if not args.no_plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.8))
        for fmt in args.formats:
            for strategy, style in (("exact", "-o"), ("sketch", "--s")):
                pts = [(r["d"], r["per_iter_s"]) for r in rows if r["format"] == fmt and r["strategy"] == strategy]
                ax.loglog(*zip(*pts), style, label=f"{fmt} {strategy}")
        ax.set_xlabel("d, columns of C")
        ax.set_ylabel("seconds per Newton iteration (median)")
        threads = args.threads or "all"
        ax.set_title(f"Sketched vs exact Hessian: planted softmax, noise 1e-2, from x = 0, {threads} threads\n"
                     f"dense n = {args.dense_n:,}; CSR n = {args.csr_n:,} with {args.nnz_per_row} non-zeros "
                     f"per row", fontsize=9)
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        caption(fig, command_line())
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        path = os.path.join(args.out, "sketch_vs_exact.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
