"""Many problems at once: ``solve_many`` against a Python loop of ``solve``, in one run.

    python bench/many.py                     # one C, q = 1, 4, 16, 64, 256 targets (CSR and dense), softmax
    python bench/many.py --models softmax,relu_softmax --targets 16 64
    python bench/many.py --quick             # small sizes, seconds

One C, many targets: C is CSR (n = 10⁵, d = 64, 10 non-zeros per row) or dense (n = 4096, d = 64),
from ``make_problem`` (seed 0); target j is h(C x_j) for x_j ~ N(0, 1/k) (k non-zeros per row),
times (1 + 0.1·N(0, 1)) entrywise and clipped at 0, so no start is the optimum (``softmax_relu``:
read out through ``make_problem``'s V). Each q is timed as ``solve_many(C, B)`` and as
``[solve(C, B[:, j]) for j in range(q)]`` (default keywords, one warm-up call of each first; the two
alternate, again while a q's runs have taken under MIN_SECONDS, up to --repeat runs, each side's fastest
counted), and
the answers are checked to agree: x within 1e-10 relative (‖x_many − x_solve‖ ≤ 1e-10‖x_solve‖)
and the same status for every column. Writes many.csv (and many.png, the speed-up against q; not
with --no-plot) to --out (default bench/results/).
"""
import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import fastnewton

try:
    from _args import add_output_arguments, comma_list, positive_int, thread_count
    from _report import caption, command_line, run_metadata, write_csv
except ImportError:  # imported as bench.many from the repository root
    from bench._args import add_output_arguments, comma_list, positive_int, thread_count
    from bench._report import caption, command_line, run_metadata, write_csv

MODELS = ("softmax", "relu_softmax", "softmax_relu")
FORMATS = ("csr", "dense")
X_RTOL = 1e-10
# A q whose solve_many and loop of solve took less than this together is timed again (up to --repeat runs).
MIN_SECONDS = 2.0
NOISE = 0.1


def targets(problem, model, q, nnz_per_row, rng):
    """q noisy targets on one C (module docstring): an n × q (m × q for softmax_relu) array."""
    C, V = problem.C, problem.V
    columns = []
    for _ in range(q):
        x = rng.standard_normal(C.shape[1]) / np.sqrt(nnz_per_row)
        b = fastnewton.predict(C, x, model, V)
        columns.append(np.maximum(b * (1.0 + NOISE * rng.standard_normal(b.shape[0])), 0.0))
    return np.column_stack(columns)


def agreement(batch, singles):
    """(largest ‖x_many − x_solve‖ / ‖x_solve‖, whether every status is the same)."""
    worst = 0.0
    for j, res in enumerate(singles):
        scale = max(float(np.linalg.norm(res.x)), np.finfo(float).tiny)
        worst = max(worst, float(np.linalg.norm(batch.x[:, j] - res.x)) / scale)
    same_status = all(int(batch.status[j]) == int(res.status) for j, res in enumerate(singles))
    return worst, same_status


def cases(args):
    """(format, model, n, problem, targets) for every --formats × --models: C from ``make_problem`` (seed 0) and
    max(--targets) noisy targets on it (``targets``, seed 1), the first q of which make a case of q targets."""
    for fmt in args.formats:
        n = args.dense_n if fmt == "dense" else args.csr_n
        for model in args.models:
            problem = fastnewton.make_problem(n, args.d, nnz_per_row=args.nnz_per_row, model=model, seed=0,
                                              dense=fmt == "dense")
            per_row = args.d if fmt == "dense" else args.nnz_per_row
            yield fmt, model, n, problem, targets(problem, model, max(args.targets), per_row, np.random.default_rng(1))


def one_c_many_targets(args):
    """The one-C table: time of solve_many vs a loop of solve for every (format, model, q)."""
    rows = []
    print(f"{'format':>6} {'model':>13} {'q':>5} {'runs':>4} {'solve_many s':>13} {'loop of solve s':>16} {'ratio':>7} "
          f"{'iterations':>10} {'max rel dx':>11} {'agree':>6}", flush=True)
    for fmt, model, n, problem, all_targets in cases(args):
        # A fixed seed: auto may pick a sketched strategy (pcg) for some columns, whose draws must be the
        # same in both calls for their answers to be compared.
        keywords = dict(model=model, V=problem.V, n_threads=args.threads, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Warm-up (kernels loaded from the disk cache, BLAS and thread pools started): 16 columns, so
            # that both kinds of passes are loaded (a small batch makes one single pass per column).
            fastnewton.solve_many(problem.C, all_targets[:, :16], **keywords)
            fastnewton.solve(problem.C, all_targets[:, 0], **keywords)
            for q in args.targets:
                B = all_targets[:, :q]
                many_s = loop_s = math.inf
                spent, repeats = 0.0, 0
                # Short calls are timed again (the two alternating) until they have taken MIN_SECONDS, at most
                # --repeat times; each side's fastest counts (a 5 ms solve of q = 1 is otherwise one noisy sample).
                while repeats < args.repeat and (repeats == 0 or spent < MIN_SECONDS):
                    start = time.perf_counter()
                    batch = fastnewton.solve_many(problem.C, B, **keywords)
                    middle = time.perf_counter()
                    singles = [fastnewton.solve(problem.C, B[:, j], **keywords) for j in range(q)]
                    stop = time.perf_counter()
                    many_s, loop_s = min(many_s, middle - start), min(loop_s, stop - middle)
                    spent += stop - start
                    repeats += 1
                worst, same_status = agreement(batch, singles)
                agree = worst <= X_RTOL and same_status
                row = dict(format=fmt, model=model, n=n, d=args.d, q=q, repeats=repeats, many_s=many_s, loop_s=loop_s,
                           ratio=loop_s / many_s, iterations=int(batch.n_iter.sum()),
                           converged=int(batch.converged.sum()), max_rel_dx=worst, same_status=same_status,
                           agree=agree)
                rows.append(row)
                print(f"{fmt:>6} {model:>13} {q:5d} {repeats:4d} {many_s:13.3f} {loop_s:16.3f} {row['ratio']:7.2f} "
                      f"{row['iterations']:10d} {worst:11.1e} {str(agree):>6}", flush=True)
    return rows


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for fmt in sorted({r["format"] for r in rows}):
        for model in sorted({r["model"] for r in rows}):
            points = [(r["q"], r["ratio"]) for r in rows if r["format"] == fmt and r["model"] == model]
            if points:
                ax.semilogx(*zip(*points), "-o", label=f"{fmt} {model}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("q, targets solved on one C")
    ax.set_ylabel("time of q solve calls / time of solve_many")
    ax.set_title("solve_many(C, B) against a loop of solve", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    caption(fig, command_line())
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=comma_list(MODELS), default=["softmax"],
                        help="comma-separated models (default softmax)")
    parser.add_argument("--formats", type=comma_list(FORMATS), default=list(FORMATS),
                        help="comma-separated formats of C (default csr,dense)")
    parser.add_argument("--targets", type=positive_int, nargs="+", default=[1, 4, 16, 64, 256],
                        help="numbers of targets q (default 1 4 16 64 256)")
    parser.add_argument("--csr-n", type=positive_int, default=100_000)
    parser.add_argument("--dense-n", type=positive_int, default=4096)
    parser.add_argument("--d", type=positive_int, default=64)
    parser.add_argument("--nnz-per-row", type=positive_int, default=10)
    parser.add_argument("--repeat", type=positive_int, default=5,
                        help="most runs of each q, each side's fastest counted; runs stop once a q's runs took "
                             f"{MIN_SECONDS:g} s (default 5)")
    parser.add_argument("--threads", type=thread_count, default=None, help="n_threads of every solve (default all)")
    add_output_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="CSR n = 5000, dense n = 512, d = 16, q = 1, 4, one run each")
    args = parser.parse_args(argv)
    if args.quick:
        args.csr_n, args.dense_n, args.d, args.targets, args.repeat = 5000, 512, 16, [1, 4], 1
    meta = run_metadata()
    print(f"{meta['cpu_model']}, {meta['cpu_count']} CPUs, Numba threads {meta['numba_num_threads']}; "
          f"fastnewton {meta['fastnewton_version']} ({meta['git_commit'][:12]}) from "
          f"{Path(fastnewton.__file__).resolve().parent}", flush=True)
    rows = one_c_many_targets(args)
    write_csv(os.path.join(args.out, "many.csv"), rows)
    if not args.no_plot:
        plot(rows, os.path.join(args.out, "many.png"))
    if not all(row["agree"] for row in rows):
        print("solve_many and solve disagree on some problems (see max_rel_dx, same_status)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
