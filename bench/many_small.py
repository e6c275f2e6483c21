"""Many small independent problems: ``fastnewton.solve_many(problems)`` against a Python loop of ``solve``.

    python bench/many_small.py                 # 1000 softmax problems (dense and CSR), 200 relu_softmax, 40 softmax_relu
    python bench/many_small.py --quick         # a few problems per case, seconds
    python bench/many_small.py --count 500 --threads 1

Problems: n uniform in [--n-min, --n-max] (64–512), d uniform in [--d-min, --d-max] (32–64), planted
targets with multiplicative noise --noise (so the solves take their usual 5–30 iterations), dense
or CSR with --nnz-per-row stored entries per row. Both sides run with default keywords, in one process,
on the same problems, alternating --repeat times (each side's fastest run counts): ``solve_many`` (on all
of Numba's threads), then ``solve`` per problem as a user writes the loop (``solve`` runs a problem this small on one thread: waking a second thread for each
pass costs more than it saves); --threads N gives both sides n_threads = N instead.
Answers agree when a problem has the same status and x within 1e-10 relative (x is not compared for
a stall at the rounding floor, whose last steps are rounding noise). Where they differ the script
also solves the other format's copy of C (dense ↔ CSR, the same problem up to rounding) with
``solve``: "(solve too)" counts the problems where ``solve`` itself then changes its answer, i.e.
ill-posed ones (a relu_softmax problem with fewer active rows than columns has a valley of minimisers)
on which any rounding difference moves x. "valid. s" is the time of building ``Problem`` (input
checks) for every problem, which both sides pay.
Writes many_small.csv and many_small.json (with the machine and versions) under --out, and
many_small.png (time per problem, both sides) unless --no-plot.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import add_output_arguments, nonnegative_float, nonnegative_int, positive_int, thread_count  # noqa: E402
from _report import caption, command_line, run_metadata, write_csv, write_json  # noqa: E402

import fastnewton  # noqa: E402
from fastnewton import Status  # noqa: E402

X_RTOL = 1e-10
# (model, format, fraction of --count): softmax_relu's stage logic runs per problem in Python (fewer problems).
CASES = (("softmax", "dense", 1.0), ("softmax", "csr", 1.0), ("relu_softmax", "dense", 0.2),
         ("relu_softmax", "csr", 0.2), ("softmax_relu", "dense", 0.04), ("softmax_relu", "csr", 0.04))


def make_problems(model, fmt, count, args, seed):
    rng = np.random.default_rng(seed)
    problems = []
    for i in range(count):
        n = int(rng.integers(args.n_min, args.n_max + 1))
        d = int(rng.integers(args.d_min, args.d_max + 1))
        made = fastnewton.make_problem(n, d, nnz_per_row=min(d, args.nnz_per_row), model=model, noise=args.noise,
                                       seed=int(rng.integers(2**31)), dense=fmt == "dense")
        problems.append((made.C, made.b, made.V) if model == "softmax_relu" else (made.C, made.b))
    return problems


def _differs(x, status, reference):
    """Whether (x, status) is not ``reference``'s answer: another status, or x beyond X_RTOL (not for a
    stall at the rounding floor, whose last steps are rounding noise)."""
    if status != reference.status:
        return True
    scale = max(float(np.linalg.norm(reference.x)), 1e-300)
    return reference.status != Status.STALLED and float(np.linalg.norm(x - reference.x)) > X_RTOL * scale


def agreement(problems, model, batch, loop):
    """(problems whose answers differ, of those the ones where ``solve`` itself gives another answer on
    the other format's copy of C (dense ↔ CSR: the same problem up to rounding), largest relative x
    difference over the problems with the same status, stalled problems)."""
    differ, unstable, worst, stalled = 0, 0, 0.0, 0
    for i, res in enumerate(loop):
        mine = batch.problem(i)
        stalled += res.status == Status.STALLED
        if mine["status"] == res.status and res.status != Status.STALLED:
            worst = max(worst, float(np.linalg.norm(mine["x"] - res.x)) / max(float(np.linalg.norm(res.x)), 1e-300))
        if _differs(mine["x"], mine["status"], res):
            differ += 1
            C, b, *rest = problems[i]
            other = C.toarray() if sp.issparse(C) else sp.csr_matrix(C)
            copy = fastnewton.solve(other, b, model, V=rest[0] if rest else None)
            unstable += _differs(copy.x, copy.status, res)
    return differ, unstable, worst, stalled


def run_case(model, fmt, count, args, seed):
    problems = make_problems(model, fmt, count, args, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up: kernels loaded from the disk cache (or compiled) before either side is timed
        fastnewton.solve_many(problems[:2], model=model, n_threads=args.threads)
        fastnewton.solve(*problems[0][:2], model, V=problems[0][2] if len(problems[0]) == 3 else None,
                         n_threads=args.threads)
        # The two sides alternate, --repeat runs each, and each side's fastest run counts (the answers are the
        # same every run: they are checked on the last).
        batch_seconds = loop_seconds = np.inf
        for _ in range(args.repeat):
            start = time.perf_counter()
            batch = fastnewton.solve_many(problems, model=model, n_threads=args.threads)
            batch_seconds = min(batch_seconds, time.perf_counter() - start)
            start = time.perf_counter()
            loop = [fastnewton.solve(C, b, model, V=rest[0] if rest else None, n_threads=args.threads)
                    for C, b, *rest in problems]
            loop_seconds = min(loop_seconds, time.perf_counter() - start)
        start = time.perf_counter()
        for C, b, *rest in problems:  # the per-problem validation that both sides pay, for scale
            fastnewton.Problem(C, b, model, V=rest[0] if rest else None)
        validation_seconds = time.perf_counter() - start
        differ, unstable, worst, stalled = agreement(problems, model, batch, loop)
    return {"model": model, "format": fmt, "problems": count, "repeat": args.repeat,
            "threads": "default" if args.threads is None else args.threads,
            "solve_many_s": batch_seconds, "loop_of_solve_s": loop_seconds, "speedup": loop_seconds / batch_seconds,
            "validation_s": validation_seconds, "answers_differ": differ, "solve_differs_on_format_copy": unstable,
            "stalled": stalled, "max_rel_x_difference": worst, "answers_agree": differ == 0,
            "median_iterations": float(np.median([res.n_iter for res in loop])),
            "converged": int(np.count_nonzero(batch.converged))}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{row['model']}\n{row['format']}" for row in rows]
    position = np.arange(len(rows))
    ax.bar(position - 0.2, [1e3 * row["loop_of_solve_s"] / row["problems"] for row in rows], 0.4,
           label="Python loop of solve")
    ax.bar(position + 0.2, [1e3 * row["solve_many_s"] / row["problems"] for row in rows], 0.4, label="solve_many")
    for x, row in zip(position, rows):
        ax.annotate(f"{row['speedup']:.0f}×", (x, 1e3 * row["loop_of_solve_s"] / row["problems"]), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(position, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per problem")
    ax.set_title(f"Many small problems (n {rows[0]['n_range']}, d {rows[0]['d_range']}), "
                 f"threads: {rows[0]['threads']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.28)
    caption(fig, command_line())
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=positive_int, default=1000, help="softmax problems per format (others fewer)")
    parser.add_argument("--n-min", type=positive_int, default=64)
    parser.add_argument("--n-max", type=positive_int, default=512)
    parser.add_argument("--d-min", type=positive_int, default=32)
    parser.add_argument("--d-max", type=positive_int, default=64)
    parser.add_argument("--nnz-per-row", type=positive_int, default=8)
    parser.add_argument("--noise", type=nonnegative_float, default=0.05)
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="n_threads of both sides (default: not given, each call's own default)")
    parser.add_argument("--models", nargs="+", default=["softmax", "relu_softmax", "softmax_relu"],
                        choices=["softmax", "relu_softmax", "softmax_relu"])
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="runs of each side, alternating; each side's fastest counts (--quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a few small problems per case (a smoke run)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.n_min > args.n_max or args.d_min > args.d_max:
        parser.error("--n-min/--d-min must not exceed --n-max/--d-max")
    if args.quick:
        args.count, args.n_max, args.d_max, args.repeat = 10, min(args.n_max, 128), min(args.d_max, 40), 1
        args.n_min, args.d_min = min(args.n_min, args.n_max), min(args.d_min, args.d_max)
    meta = run_metadata()
    threads = "default threads" if args.threads is None else f"n_threads = {args.threads}"
    print(f"machine: {meta['cpu_model']}, {meta['cpu_count']} CPUs; {threads}; "
          f"fastnewton {meta['git_commit'][:12]}")
    print(f"{'model':<13} {'format':<6} {'problems':>8} {'solve_many s':>12} {'loop s':>8} {'speedup':>8} "
          f"{'valid. s':>8} {'median it':>9} {'differ':>6} {'(solve too)':>11} {'max Δx':>9}")
    rows = []
    for case, (model, fmt, fraction) in enumerate(CASES):
        if model not in args.models:
            continue
        count = max(2, int(round(args.count * fraction)))
        row = run_case(model, fmt, count, args, args.seed + case)
        row.update(n_range=f"{args.n_min}-{args.n_max}", d_range=f"{args.d_min}-{args.d_max}")
        rows.append(row)
        print(f"{model:<13} {fmt:<6} {count:>8d} {row['solve_many_s']:>12.3f} {row['loop_of_solve_s']:>8.3f} "
              f"{row['speedup']:>7.1f}× {row['validation_s']:>8.3f} {row['median_iterations']:>9.1f} "
              f"{row['answers_differ']:>6d} {row['solve_differs_on_format_copy']:>11d} "
              f"{row['max_rel_x_difference']:>9.1e}", flush=True)
    write_csv(str(Path(args.out) / "many_small.csv"), rows)
    write_json(str(Path(args.out) / "many_small.json"), {"rows": rows})
    if not args.no_plot:
        try:
            plot(rows, str(Path(args.out) / "many_small.png"))
        except ImportError:
            print("matplotlib not installed: no plot (pip install matplotlib)")


if __name__ == "__main__":
    main()
