"""Time to tol on a bag-of-words-like CSR matrix: fastnewton.solve against scipy L-BFGS-B with NumPy derivatives.

    python bench/zipf_peers.py                  # n = 2e6, d = 1024, nnz ≈ 1e7 (Zipf row lengths, up to 1000)
    python bench/zipf_peers.py --quick

C is bench/matrices.bag_of_words (n rows, d columns, 5 entries per row on average); b is the softmax
model's planted target softmax(C x_true), x_true ~ N(0, 1/5), times (1 + --noise·N(0, 1)) per entry,
clipped at 0, so the optimum is not x_true; the ridge is bench/peers.py's (l2 = --l2-rel·‖C‖_F²/(d n²)).
Methods, each once: fastnewton.solve as a user calls it (x0 = "auto", hessian = "auto"), fastnewton
from x0 = 0 with hessian = "exact" and with "lagged", and scipy.optimize.minimize(method="L-BFGS-B")
from 0 with the NumPy loss and gradient of bench/peers.py, handed L / g_ref. The criterion and its
checks are bench/peers.py's: ‖∇L(x)‖ ≤ tol·‖∇L(0)‖ (tol = 1e-8), scipy stopped at the first gradient
evaluation that meets it, and every final point re-checked with the NumPy gradient (reached_tol).
A method that misses tol within --time-limit seconds reports the time it ran; its ratio is then a
lower bound (">"). Results go to zipf_peers.json in --out.
"""
import argparse
import os
import platform
import types
import warnings

import numba
import numpy as np

import fastnewton

try:
    from _args import add_output_arguments, nonnegative_float, nonnegative_int, positive_float, positive_int, \
        positive_seconds
    from _report import write_json
    from matrices import bag_of_words
    from peers import RECHECK_SLACK, NumpyDerivatives, run_fastnewton, run_scipy
    from phases import planted_softmax
except ImportError:  # run as a module from the repository root
    from bench._args import add_output_arguments, nonnegative_float, nonnegative_int, positive_float, \
        positive_int, positive_seconds
    from bench._report import write_json
    from bench.matrices import bag_of_words
    from bench.peers import RECHECK_SLACK, NumpyDerivatives, run_fastnewton, run_scipy
    from bench.phases import planted_softmax

# --methods names of the fastnewton runs below (in order) and of the scipy run.
METHODS = ("default", "exact", "lagged", "lbfgsb")
# Seconds at which each method's progress is reported (the smallest ‖∇L‖/g_ref reached by then).
CHECKPOINTS_S = (1, 3, 10, 30, 60, 120, 240, 480, 600)
ROWS_PER_NNZ = 5
MAX_ROW_NNZ = 1000
# (label, strategy, start) of the fastnewton runs; scipy L-BFGS-B always starts from zeros.
FASTNEWTON_RUNS = (("fastnewton default (x0 auto, hessian auto)", "auto", "auto"),
                   ("fastnewton exact from 0", "exact", "zeros"),
                   ("fastnewton lagged from 0", "lagged", "zeros"))


def build_case(args):
    C = bag_of_words(args.n, args.d, nnz=ROWS_PER_NNZ * args.n, max_row_nnz=MAX_ROW_NNZ, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    b = np.maximum(planted_softmax(C, args.seed) * (1.0 + args.noise * rng.standard_normal(args.n)), 0.0)
    l2 = args.l2_rel * float(C.multiply(C).sum()) / (args.d * float(args.n) ** 2)
    numpy_derivatives = NumpyDerivatives(C, b, "softmax", l2=l2)
    g_ref = float(np.linalg.norm(numpy_derivatives.grad(np.zeros(args.d))))
    return {"model": "softmax", "C": C, "b": b, "V": None, "l2": l2, "g_ref": g_ref, "numpy": numpy_derivatives}


def progress(trace, seconds):
    """[(t, smallest relative gradient norm reached by t)] for the CHECKPOINTS_S up to ``seconds``,
    from a trace of (seconds, ‖∇L‖/g_ref) pairs: how far a method had come when (e.g.) capped."""
    points = []
    for t in CHECKPOINTS_S + (seconds,):
        reached = [g for s, g in trace if s <= t]
        if t <= seconds and reached and (not points or t > points[-1][0]):
            points.append((float(t), float(min(reached))))
    return points


def run(args):
    case = build_case(args)
    C = case["C"]
    row_nnz = np.diff(C.indptr)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba {numba.__version__}, "
          f"{numba.get_num_threads()} threads")
    print(f"Zipf bag-of-words C: n = {C.shape[0]:,}, d = {C.shape[1]}, nnz = {C.nnz:,} (row nnz mean "
          f"{row_nnz.mean():.1f}, max {row_nnz.max()}); softmax, noise {args.noise:g}, l2 = {case['l2']:.3g}, "
          f"tol = {args.tol:g}, time limit {args.time_limit:g} s per method"
          + (f" ({args.lbfgsb_time_limit:g} s for L-BFGS-B)" if args.lbfgsb_time_limit else ""))
    with warnings.catch_warnings():  # compile every kernel outside the timings
        warnings.simplefilter("ignore")
        for strategy in ("exact", "lagged"):
            fastnewton.solve(C[:2000], case["b"][:2000], hessian=strategy, x0="zeros", max_iter=2)
    options = types.SimpleNamespace(tol=args.tol, time_limit=args.time_limit, max_iter=args.max_iter, seed=args.seed,
                                    threads=None, no_scipy_scaling=False)
    rows = []
    for (label, strategy, start), name in zip(FASTNEWTON_RUNS, METHODS):
        if name not in args.methods:
            continue
        row = run_fastnewton(case, strategy, options, start if start == "auto" else np.zeros(args.d))
        if strategy == "auto":  # name what auto resolved to: run_fastnewton reports "fastnewton auto (<name>)"
            label = label.replace("hessian auto", f"hessian auto → {row['method'].split('(')[-1].rstrip(')')}")
        rows.append(dict(row, method=label))
    scipy_row = None
    if "lbfgsb" in args.methods:
        scipy_options = types.SimpleNamespace(**dict(vars(options), time_limit=args.lbfgsb_time_limit or args.time_limit))
        rows.append(dict(run_scipy(case, "L-BFGS-B", "numpy", scipy_options, np.zeros(args.d)),
                         method="scipy L-BFGS-B from 0 (NumPy derivatives)"))
        scipy_row = rows[-1]
    print(f"\n  {'method':<54} {'reached':>7} {'time s':>8} {'iters':>6} {'final |g|/g_ref':>15} {'L-BFGS-B / this':>15}")
    for row in rows:
        row["progress"] = progress(row.pop("trace", None) or [], row["time_s"])
        shown = "-"  # no L-BFGS-B run (--methods)
        if scipy_row is not None:
            ratio = scipy_row["time_s"] / row["time_s"]
            bound = ">" if row is not scipy_row and row["reached_tol"] and not scipy_row["reached_tol"] else ""
            row["lbfgsb_ratio"] = ratio
            row["lbfgsb_ratio_is_lower_bound"] = bool(bound)
            shown = bound + format(ratio, ".1f")
        print(f"  {row['method']:<54} {str(row['reached_tol']):>7} {row['time_s']:>8.2f} {row['n_iter']:>6} "
              f"{row['final_rel_grad_norm']:>15.2e} {shown:>15}", flush=True)
    print("\n  smallest ‖∇L‖/g_ref of the gradients evaluated by each time: "
          + "; ".join(f"{row['method'].split(' (')[0]}: " + ", ".join(f"{t:.3g} s {g:.1e}" for t, g in row["progress"])
                      for row in rows))
    write_json(os.path.join(args.out, "zipf_peers.json"),
               {"n": C.shape[0], "d": C.shape[1], "nnz": int(C.nnz), "noise": args.noise, "l2": case["l2"],
                "tol": args.tol, "recheck_slack": RECHECK_SLACK, "rows": rows})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=2_000_000, help="rows (default 2e6)")
    parser.add_argument("--d", type=positive_int, default=1024, help="columns (default 1024)")
    parser.add_argument("--noise", type=nonnegative_float, default=1e-2, help="relative noise on b (default 1e-2)")
    parser.add_argument("--l2-rel", type=nonnegative_float, default=1e-3,
                        help="ridge l2 = this × ‖C‖_F² / (d n²), as bench/peers.py (default 1e-3)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of C, x_true and the noise")
    parser.add_argument("--tol", type=positive_float, default=1e-8, help="relative gradient tolerance (default 1e-8)")
    parser.add_argument("--time-limit", type=positive_seconds, default=120.0,
                        help="wall-time cap per method in s (default 120)")
    parser.add_argument("--lbfgsb-time-limit", type=positive_seconds, default=None,
                        help="wall-time cap of L-BFGS-B alone (default: --time-limit), e.g. longer, for a "
                             "stronger lower bound when it does not reach tol")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="runs: default (x0 auto), exact / lagged from 0, lbfgsb (default: all)")
    parser.add_argument("--max-iter", type=positive_int, default=10_000,
                        help="iteration cap per method (L-BFGS-B maxfun = 10×; default 10000)")
    add_output_arguments(parser, plots=False)
    parser.add_argument("--quick", action="store_true", help="n = 2e4, d = 128, time limit ≤ 5 s: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.time_limit = 20_000, 128, min(args.time_limit, 5.0)
        args.lbfgsb_time_limit = min(args.lbfgsb_time_limit or 5.0, 5.0)
    return run(args)


if __name__ == "__main__":
    main()
