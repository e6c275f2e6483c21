"""Where one ``solve_many(C, B)`` call in lock-step spends its wall time (a small C's columns, which
``solve_many`` hands to the compiled loop of the list form, are kept in lock-step here): the shared passes,
the sandwiches, the line-search trials, the softmax models' row stages and the rest (Python control and other
per-problem kernels), without cProfile's per-call distortion; and the same for the loop of ``solve`` over B's columns that it replaces.

    python bench/many_phases.py                              # dense 4096 × 64 and CSR 10⁵ × 64, softmax, q = 64
    python bench/many_phases.py --formats dense --models softmax,relu_softmax --targets 64
    python bench/many_phases.py --quick                      # small sizes, seconds

The targets are bench/many.py's (one C from ``make_problem``, seed 0; noisy targets, seed 1). Each phase is
timed by a wrapper around the method that does it (``DenseMatrix`` / ``CSRMatrix`` ``matvecs``, ``rmatmats``,
``sandwiches`` …, ``scipy.linalg`` ``cho_factor``/``cho_solve`` of the Newton systems, ``LineSearch.loss``,
the softmax models' stages ``log_partition``, ``columns``, ``loss_rows`` and their curvature weights β) and counted exclusive of the wrapped calls inside it; "rest" is the call's wall time less all of them. The
wrappers add a few µs per call: the fastest of --repeat wrapped calls is reported, beside the fastest
unwrapped call. Each case gives two rows, ``solve_many`` and ``loop`` (``[solve(C, B[:, j]) for j]``); the
``solve_many`` row's "bound" is the loop's unwrapped time over solve_many's timed phases (all but the rest):
the most solve_many could gain on the loop with its Python control and other per-problem kernels taking no
time at all. Writes many_phases.csv to --out (default bench/results/).
"""
import argparse
import math
import os
import sys
import time
import warnings

import scipy.linalg

import fastnewton
from fastnewton import hessian, many_targets, matrix, problem
from fastnewton.models import base as model_base, softmax as softmax_model

try:
    from _args import add_output_arguments, comma_list, positive_int
    from _report import write_csv
    from many import FORMATS, MODELS, cases
except ImportError:  # imported as bench.many_phases from the repository root
    from bench._args import add_output_arguments, comma_list, positive_int
    from bench._report import write_csv
    from bench.many import FORMATS, MODELS, cases

# (owner, method, phase): the methods timed, each counted in its phase exclusive of timed calls inside it (the
# Hessian-vector products, ``sandwich_vector(s)``, with the transposed passes; only dense C has ``sandwich_vectors``,
# only CSR ``curvature_sandwich_vector``; ``curvature_sandwich``, solve's Hessian with β formed in the pass, with
# the sandwiches).
TIMED = [(cls, name, phase) for cls in (matrix.DenseMatrix, matrix.CSRMatrix) for name, phase in (
    ("matvecs", "forward passes"), ("matvec", "forward passes"), ("rmatmats", "transposed passes"),
    ("rmatmat", "transposed passes"), ("sandwich_vector", "transposed passes"), ("sandwich_vectors", "transposed passes"),
    ("curvature_sandwich_vector", "transposed passes"), ("sandwiches", "sandwiches"), ("sandwich", "sandwiches"),
    ("curvature_sandwich", "sandwiches")) if hasattr(cls, name)] + [
    (hessian.NewtonSystem, "_factor", "cholesky and solves"), (problem.LineSearch, "loss", "line-search trials")] + [
    # The O(n) row work of softmax / relu_softmax per problem (exp, the columns Q, a trial's loss, β): the part of a
    # solve that sharing C leaves as it is (a trial's counted here, its u = u₀ + t·Cp with the trial).
    (softmax_model.Softmax, name, "model vectors") for name in ("log_partition", "columns", "loss_rows")] + [
    (model_base.ColumnCurvature, "curvature", "model vectors")]
PHASES = ["forward passes", "transposed passes", "sandwiches", "cholesky and solves", "line-search trials",
          "model vectors"]


class PhaseClock:
    """Exclusive wall time per phase of the wrapped methods (a stack of open calls: a call's time less its
    wrapped children's)."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.stack = [0.0]
        self.originals = []

    def wrap(self, owner, name, phase):
        function = getattr(owner, name)
        self.originals.append((owner, name, function))

        def timed(*args, **kwargs):
            self.stack.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[phase] += elapsed - self.stack.pop()
                self.stack[-1] += elapsed

        setattr(owner, name, timed)

    def __enter__(self):
        for owner, name, phase in TIMED:
            self.wrap(owner, name, phase)
        # The Newton systems' triangular solves (``cho_solve`` as fastnewton.hessian calls it)
        self.wrap(hessian.scipy.linalg, "cho_solve", "cholesky and solves")
        return self

    def __exit__(self, *exc):
        for owner, name, function in reversed(self.originals):
            setattr(owner, name, function)
        assert hessian.scipy.linalg.cho_solve is scipy.linalg.cho_solve


def solve_loop(C, B, model, V):
    """``solve`` on each column of B, as a user writes the loop: (the results' total iterations)."""
    return sum(fastnewton.solve(C, B[:, j], model, V=V).n_iter for j in range(B.shape[1]))


def solve_together(C, B, model, V):
    """``solve_many(C, B)``'s lock-step loop (``many_targets.solve_targets``), with the hand-over of a small C's
    columns to the compiled loop of the list form turned off (``COMPILED_COLUMNS_BELOW_SECONDS``: that loop has
    no phases to time from Python; bench/many.py times what users get): (the problems' total iterations)."""
    bound = many_targets.COMPILED_COLUMNS_BELOW_SECONDS
    many_targets.COMPILED_COLUMNS_BELOW_SECONDS = 0.0
    try:
        return int(many_targets.solve_targets(C, B, model=model, V=V).n_iter.sum())
    finally:
        many_targets.COMPILED_COLUMNS_BELOW_SECONDS = bound


def phase_row(C, B, model, V, repeat, run=solve_together):
    """The fastest unwrapped and wrapped run(C, B, model, V) and the wrapped one's seconds by phase."""
    run(C, B[:, :min(16, B.shape[1])], model, V)  # warm-up: kernels loaded, pools started
    plain = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        run(C, B, model, V)
        plain = min(plain, time.perf_counter() - start)
    best = None
    for _ in range(repeat):
        with PhaseClock() as clock:
            start = time.perf_counter()
            iterations = run(C, B, model, V)
            total = time.perf_counter() - start
        if best is None or total < best[0]:
            best = total, dict(clock.seconds), iterations
    total, seconds, iterations = best
    row = {"unwrapped_s": plain, "wrapped_s": total, **{phase.replace(" ", "_").replace("-", "_") + "_s": seconds[phase]
                                                        for phase in PHASES}}
    row["rest_s"] = total - sum(seconds.values())
    row["iterations"] = iterations
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=comma_list(MODELS), default=["softmax"], help="comma-separated models")
    parser.add_argument("--formats", type=comma_list(FORMATS), default=list(FORMATS), help="comma-separated formats")
    parser.add_argument("--targets", type=positive_int, nargs="+", default=[64], help="numbers of targets q")
    parser.add_argument("--csr-n", type=positive_int, default=100_000)
    parser.add_argument("--dense-n", type=positive_int, default=4096)
    parser.add_argument("--d", type=positive_int, default=64)
    parser.add_argument("--nnz-per-row", type=positive_int, default=10)
    parser.add_argument("--repeat", type=positive_int, default=3, help="calls of each kind, the fastest counted")
    add_output_arguments(parser, plots=False)
    parser.add_argument("--quick", action="store_true", help="CSR n = 5000, dense n = 512, d = 16, q = 4, one call")
    args = parser.parse_args(argv)
    if args.quick:
        args.csr_n, args.dense_n, args.d, args.targets, args.repeat = 5000, 512, 16, [4], 1
    rows = []
    columns = ["unwrapped_s", "wrapped_s"] + [phase.replace(" ", "_").replace("-", "_") + "_s" for phase in PHASES] + ["rest_s"]
    print(f"{'format':>6} {'model':>13} {'q':>4} {'side':>10} " + " ".join(f"{c[:-2]:>13}" for c in columns)
          + " (ms)   iterations   bound")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmt, model, n, made, all_targets in cases(args):
            for q in args.targets:
                B = all_targets[:, :q]
                many = phase_row(made.C, B, model, made.V, args.repeat)
                loop = phase_row(made.C, B, model, made.V, args.repeat, run=solve_loop)
                many["bound"] = loop["unwrapped_s"] / (many["wrapped_s"] - many["rest_s"])
                loop["bound"] = ""
                for side, phases in (("solve_many", many), ("loop", loop)):
                    row = dict(format=fmt, model=model, n=n, d=args.d, q=q, side=side, **phases)
                    rows.append(row)
                    bound = f"{row['bound']:7.2f}×" if side == "solve_many" else ""
                    print(f"{fmt:>6} {model:>13} {q:4d} {side:>10} " + " ".join(f"{1e3 * row[c]:13.1f}" for c in columns)
                          + f"   {row['iterations']:10d}   {bound}", flush=True)
    write_csv(os.path.join(args.out, "many_phases.csv"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
