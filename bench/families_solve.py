"""Solved counts on the random attention-like families of ``bench/families.py``.

    python bench/families_solve.py                      # 240 softmax_relu + 60 softmax + 60 relu_softmax
    python bench/families_solve.py --quick              # a few problems per model, seconds
    python bench/families_solve.py --models softmax_relu --count 40

Methods, per problem: ``solve`` (default: x0="auto"), ``solve(x0="zeros")``, and
``scipy.optimize.minimize(method="trust-exact")`` from zeros with ``fastnewton.Problem``'s loss,
gradient and Hessian, all divided by g₀ = ‖∇L(0)‖ (scipy's thresholds are absolute; unscaled it
stops at nit = 0 on these losses of ~1e-6), gtol = 1e-8 (the same relative criterion as solve),
at most --max-iter iterations (default 200; solve keeps its default max_iter = 100).

Solved: reachable b (noise-free): ‖h(Cx) − b‖ ≤ 1e-6‖b‖. Noisy b (not reachable, the last
--noisy-fraction of each family): L(x) ≤ L_best + 1e-6·(L_best + ‖b‖²·1e-12), L_best the lowest loss
found by any method or by solve from three extra seeded random starts (x ~ N(0, 1/d)).
Iterations: ``n_iter`` of solve (all phases of the start counted), ``nit`` of scipy.
The machine and the fastnewton that was imported are printed first.
"""
import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.optimize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402

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
        for method, x0 in (("default", "auto"), ("zeros", "zeros")):
            res = fastnewton.solve(case.C, case.b, case.model, V=case.V, x0=x0, **solve_limit)
            rows[method] = (res.x, res.n_iter, res.status.name)
        if with_scipy:
            x, nit = scipy_trust_exact(case, max_iter or SCIPY_MAX_ITER)
            rows["trust-exact"] = (x, nit, "")
        extra = []
        if not case.reachable:
            rng = np.random.default_rng(0)
            for _ in range(EXTRA_STARTS):
                x0 = rng.standard_normal(case.x_true.size) / np.sqrt(case.x_true.size)
                extra.append(fastnewton.solve(case.C, case.b, case.model, V=case.V, x0=x0, **solve_limit).x)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["softmax_relu", "softmax", "relu_softmax"])
    parser.add_argument("--count", type=int, default=None, help="problems per model (default 240 softmax_relu, 60 others)")
    parser.add_argument("--noisy-fraction", type=float, default=0.2)
    parser.add_argument("--max-iter", type=int, default=None,
                        help="max_iter of every solve (default: solve's own, 100) and of scipy (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="6 small problems per model")
    parser.add_argument("--no-scipy", action="store_true")
    parser.add_argument("--list-failures", action="store_true")
    args = parser.parse_args(argv)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}; "
          f"fastnewton from {Path(fastnewton.__file__).parent}")
    header = f"{'model':<13} {'method':<12} {'reach solved':>13} {'noisy best':>11} {'median it':>10} {'max it':>7} {'seconds':>8}"
    print(header)
    for model in args.models:
        count = args.count or (6 if args.quick else (240 if model == "softmax_relu" else 60))
        kwargs = dict(n_range=(50, 400), d_range=(8, 24)) if args.quick else {}
        results, cases = [], []
        start = time.perf_counter()
        for case in families.family(model, count, args.seed, noisy_fraction=args.noisy_fraction, **kwargs):
            results.append(run_case(case, args.max_iter, not args.no_scipy))
            cases.append(case)
        seconds = time.perf_counter() - start
        for method in results[0]:
            reach = [r[method] for r, c in zip(results, cases) if c.reachable]
            noisy = [r[method] for r, c in zip(results, cases) if not c.reachable]
            iters = [r[method]["n_iter"] for r in results]
            print(f"{model:<13} {method:<12} {sum(r['solved'] for r in reach):>6}/{len(reach):<6} "
                  f"{sum(r['solved'] for r in noisy):>5}/{len(noisy):<5} {np.median(iters):>10.1f} {max(iters):>7d} "
                  f"{seconds:>8.1f}")
            if args.list_failures:
                for r, c in zip(results, cases):
                    if not r[method]["solved"]:
                        print(f"    unsolved {c.name} {c.params} it={r[method]['n_iter']} {r[method]['status']} "
                              f"loss={r[method]['loss']:.3e}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
