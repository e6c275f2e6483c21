"""Solved counts on the random attention-like families of ``bench/families.py``.

    python bench/families_solve.py                      # 240 softmax_relu + 60 softmax + 60 relu_softmax
    python bench/families_solve.py --quick              # a few problems per model, seconds
    python bench/families_solve.py --models softmax_relu --count 40
    python bench/families_solve.py --models softmax_relu --range 0 60 --out part1.json   # a slice ...
    python bench/families_solve.py --table part1.json part2.json ...                     # ... then one table

``--range A B`` runs problems A..B−1 of each family (the same problems as in the full run: the noisy
ones are still the last --noisy-fraction of --count), so a long run can be split into short ones;
``--out`` writes the per-problem results as JSON and ``--table`` prints the table of several such files.

Methods, per problem: ``solve`` (default: x0="auto"), ``solve(x0="zeros")`` (softmax_relu: the staged
continuation from zeros), ``solve(x0="zeros", continuation=False)`` (one plain Newton loop), and
``scipy.optimize.minimize(method="trust-exact")`` from zeros with ``fastnewton.Problem``'s loss,
gradient and Hessian, all divided by g₀ = ‖∇L(0)‖ (scipy's thresholds are absolute; unscaled it
stops at nit = 0 on these losses of ~1e-6), gtol = 1e-8 (the same relative criterion as solve),
at most --max-iter iterations (default 200; solve keeps its default max_iter = 100).

Solved: reachable b (noise-free): ‖h(Cx) − b‖ ≤ 1e-6‖b‖. Noisy b (not reachable, the last
--noisy-fraction of each family): L(x) ≤ L_best + 1e-6·(L_best + ‖b‖²·1e-12), L_best the lowest loss
found by any method or by plain Newton (continuation=False) from three extra seeded random starts
(x ~ N(0, 1/d)).
Iterations: ``n_iter`` of solve (all phases of the start counted), ``nit`` of scipy.
The machine and the fastnewton that was imported are printed first.
"""
import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.optimize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402
from _args import nonnegative_int, positive_int, unit_fraction  # noqa: E402

import fastnewton  # noqa: E402

RESIDUAL_RTOL = 1e-6
NOISY_LOSS_RTOL = 1e-6
EXTRA_STARTS = 3
SCIPY_MAX_ITER = 200


def scipy_trust_exact(case, max_iter):
    problem = fastnewton.Problem(case.C, case.b, case.model, V=case.V)
    zero = np.zeros(problem.d)
    scale = max(float(np.linalg.norm(problem.grad(zero))), 1e-300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = scipy.optimize.minimize(lambda x: problem.loss(x) / scale, zero, jac=lambda x: problem.grad(x) / scale,
                                      hess=lambda x: problem.hessian(x) / scale, method="trust-exact",
                                      options={"gtol": 1e-8, "maxiter": max_iter})
    return res.x, int(res.nit)


def run_case(case, max_iter, with_scipy):
    solve_limit = {} if max_iter is None else {"max_iter": max_iter}
    rows = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method, x0, continuation in (("default", "auto", True), ("zeros", "zeros", True),
                                         ("zeros-plain", "zeros", False)):
            res = fastnewton.solve(case.C, case.b, case.model, V=case.V, x0=x0, continuation=continuation,
                                   **solve_limit)
            rows[method] = (res.x, res.n_iter, res.status.name)
        if with_scipy:
            x, nit = scipy_trust_exact(case, max_iter or SCIPY_MAX_ITER)
            rows["trust-exact"] = (x, nit, "")
        extra = []
        if not case.reachable:
            rng = np.random.default_rng(0)
            for _ in range(EXTRA_STARTS):
                x0 = rng.standard_normal(case.x_true.size) / np.sqrt(case.x_true.size)
                extra.append(fastnewton.solve(case.C, case.b, case.model, V=case.V, x0=x0, continuation=False,
                                              **solve_limit).x)
    problem = fastnewton.Problem(case.C, case.b, case.model, V=case.V)
    losses = {method: problem.loss(x) for method, (x, _, _) in rows.items()}
    if case.reachable:
        solved = {method: families.relative_residual(case, x) <= RESIDUAL_RTOL for method, (x, _, _) in rows.items()}
    else:
        best = min(list(losses.values()) + [problem.loss(x) for x in extra])
        slack = NOISY_LOSS_RTOL * best + 1e-12 * float(case.b @ case.b)
        solved = {method: loss <= best + slack for method, loss in losses.items()}
    return {method: dict(solved=solved[method], n_iter=rows[method][1], status=rows[method][2], loss=losses[method])
            for method in rows}


def print_table(rows, seconds, list_failures=False):
    """The table of per-problem result rows (dicts of model, name, params, reachable and one entry per method)."""
    header = (f"{'model':<13} {'method':<12} {'reach solved':>13} {'noisy best':>11} {'median it':>10} {'max it':>7} "
              f"{'seconds':>8}")
    print(header)
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        for method in mine[0]["methods"]:
            reach = [row["methods"][method] for row in mine if row["reachable"]]
            noisy = [row["methods"][method] for row in mine if not row["reachable"]]
            iters = [row["methods"][method]["n_iter"] for row in mine]
            print(f"{model:<13} {method:<12} {sum(r['solved'] for r in reach):>6}/{len(reach):<6} "
                  f"{sum(r['solved'] for r in noisy):>5}/{len(noisy):<5} {np.median(iters):>10.1f} {max(iters):>7d} "
                  f"{seconds.get(model, float('nan')):>8.1f}")
            if list_failures:
                for row in mine:
                    r = row["methods"][method]
                    if not r["solved"]:
                        print(f"    unsolved {row['name']} {row['params']} it={r['n_iter']} {r['status']} "
                              f"loss={r['loss']:.3e}")
        sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["softmax_relu", "softmax", "relu_softmax"])
    parser.add_argument("--count", type=positive_int, default=None, help="problems per model (default 240 softmax_relu, 60 others)")
    parser.add_argument("--range", nargs=2, type=nonnegative_int, metavar=("FIRST", "STOP"), default=None,
                        help="run only problems FIRST..STOP-1 of each family")
    parser.add_argument("--noisy-fraction", type=unit_fraction, default=0.2)
    parser.add_argument("--max-iter", type=nonnegative_int, default=None,
                        help="max_iter of every solve (default: solve's own, 100) and of scipy (default 200)")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--quick", action="store_true", help="6 small problems per model")
    parser.add_argument("--no-scipy", action="store_true")
    parser.add_argument("--list-failures", action="store_true")
    parser.add_argument("--out", default=None, help="write the per-problem results to this JSON file")
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON",
                        help="print the table of --out files (no solving)")
    args = parser.parse_args(argv)
    if args.table:
        rows, seconds = [], {}
        for path in args.table:
            part = json.loads(Path(path).read_text())
            rows += part["rows"]
            for model, value in part["seconds"].items():
                seconds[model] = seconds.get(model, 0.0) + value
        print(f"{len(rows)} problems from {len(args.table)} file(s); fastnewton from "
              f"{', '.join(sorted({json.loads(Path(p).read_text())['fastnewton'] for p in args.table}))}")
        print_table(rows, seconds, args.list_failures)
        return
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}; "
          f"fastnewton from {Path(fastnewton.__file__).parent}")
    rows, seconds = [], {}
    for model in args.models:
        count = args.count or (6 if args.quick else (240 if model == "softmax_relu" else 60))
        first, stop = args.range if args.range else (0, count)
        kwargs = dict(n_range=(50, 400), d_range=(8, 24)) if args.quick else {}
        start = time.perf_counter()
        for index, case in enumerate(families.family(model, count, args.seed, noisy_fraction=args.noisy_fraction,
                                                     **kwargs)):
            if first <= index < stop:
                rows.append(dict(model=model, name=case.name, params=case.params, reachable=case.reachable,
                                 methods=run_case(case, args.max_iter, not args.no_scipy)))
        seconds[model] = time.perf_counter() - start
    print_table(rows, seconds, args.list_failures)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(fastnewton=str(Path(fastnewton.__file__).parent), seconds=seconds,
                                                  rows=rows), default=_plain))


def _plain(value):
    """JSON for NumPy scalars."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    main()
