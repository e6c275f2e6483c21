"""softmax_relu from a user's start: iterations, tol reached and loss against the default start.

    python bench/user_start.py                     # the peers problem (CSR 10⁵ × 100, 1% noise) + 40 family problems
    python bench/user_start.py --quick             # a small peers problem + 6 small family problems (seconds)
    python bench/user_start.py --families 0 --n 200000

Per problem, ``fastnewton.solve(C, b, "softmax_relu", V=V, l2=l2, x0=...)`` with the default max_iter
from four starts: ``auto`` (the default), ``zeros``, a seeded random small x0 (x ~ N(0, 0.1²/d),
logits of order 0.1 or less) and ``warm``: the default solve's x moved in a seeded random direction
by 0.1 in the logits (‖CΔx‖∞ = 0.1, a caller re-solving after a small change), with the status, ``n_iter``, wall time and the final loss relative to
the default start's, (loss − loss_auto) / max(loss_auto, 1e-12·‖b‖²), or for a reachable family
problem, whose optimal loss is 0, the relative residual ‖h(Cx) − b‖/‖b‖. The last lines count, per
start, the family problems where it reached tol and where it ended no worse than the default start
(loss ≤ loss_auto·(1 + 1e-6) + 1e-12·‖b‖², or residual ≤ 1e-6 when b is reachable).

Problems: bench/peers.py's softmax_relu problem (``make_problem(n, d, 10 nnz/row, m = 16, noise 1e-2,
seed 0)``, l2 = 1e-3·‖C‖_F²/(d n²)) and problems --first.. of ``bench/families.py``'s softmax_relu
family (seed 0; the last 20 % of the family of --count noisy). The machine and the fastnewton that
was imported are printed first; to compare two versions, run the script with each.
"""
import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402
from _args import nonnegative_int, positive_int  # noqa: E402

import fastnewton  # noqa: E402

STARTS = ("auto", "zeros", "random", "warm")
RANDOM_SCALE = 0.1
# The warm start: the default solve's x moved by this much in the logits (‖CΔx‖∞), as a caller re-solving
# after a small change would start.
WARM_LOGIT_CHANGE = 0.1
LOSS_RTOL = 1e-6
RESIDUAL_RTOL = 1e-6


def peers_problem(n, d, seed):
    """bench/peers.py's softmax_relu problem: (C, b, V, l2)."""
    planted = fastnewton.make_problem(n, d, nnz_per_row=10, model="softmax_relu", noise=1e-2, seed=seed)
    C = planted.C
    l2 = 1e-3 * float(C.multiply(C).sum()) / (d * float(n) ** 2)
    return C, planted.b, planted.V, l2


def starting_points(d, seed):
    rng = np.random.default_rng(seed)
    return {"auto": "auto", "zeros": "zeros", "random": RANDOM_SCALE * rng.standard_normal(d) / np.sqrt(d)}


def warm_start(C, x, seed):
    """x moved in a seeded random direction by WARM_LOGIT_CHANGE in the logits."""
    direction = np.random.default_rng(seed).standard_normal(x.shape[0])
    return x + WARM_LOGIT_CHANGE * direction / max(float(np.max(np.abs(C @ direction))), 1e-300)


def run_problem(name, C, b, V, l2, reachable, seed, residual):
    rows, ends = {}, {}
    starts = starting_points(C.shape[1], seed)
    for start in STARTS:
        x0 = starts[start] if start != "warm" else warm_start(C, ends["auto"], seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            began = time.perf_counter()
            res = fastnewton.solve(C, b, "softmax_relu", V=V, l2=l2, x0=x0)
            seconds = time.perf_counter() - began
        ends[start] = res.x
        rows[start] = dict(converged=bool(res.converged), status=res.status.name, n_iter=int(res.n_iter),
                           seconds=seconds, loss=float(res.loss), residual=residual(res.x))
    auto = rows["auto"]
    floor = max(auto["loss"], 1e-12 * float(b @ b))
    for row in rows.values():
        if reachable:
            row["as_good"] = row["residual"] <= RESIDUAL_RTOL
        else:
            row["as_good"] = row["loss"] <= auto["loss"] * (1 + LOSS_RTOL) + 1e-12 * float(b @ b)
        cells = (f"{row['status'][:14]:<14} {row['n_iter']:>4d} {row['seconds']:>7.2f}s "
                 + (f"res {row['residual']:8.1e}" if reachable else f"{(row['loss'] - auto['loss']) / floor:+9.2e}"))
        row["cells"] = cells
    print(f"{name:<22} " + " | ".join(rows[start]["cells"] for start in STARTS), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=positive_int, default=100_000, help="rows of the peers problem")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers problem")
    parser.add_argument("--families", type=nonnegative_int, default=40, help="family problems to run")
    parser.add_argument("--first", type=nonnegative_int, default=0, help="index of the first family problem")
    parser.add_argument("--count", type=positive_int, default=40, help="family size (its last 20 %% noisy)")
    parser.add_argument("--quick", action="store_true", help="n = 5000 and 6 small family problems")
    args = parser.parse_args(argv)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}; "
          f"fastnewton from {Path(fastnewton.__file__).parent}")
    print(f"{'problem':<22} " + " | ".join(f"{start:<14} {'it':>4} {'time':>8} {'loss/auto-1':>12}"
                                          for start in STARTS))
    for dense in (False, True):
        warm = fastnewton.make_problem(300, 8, nnz_per_row=3, model="softmax_relu", m=4, noise=1e-2, seed=0,
                                       dense=dense)
        run_problem("(warm-up, compiles)", warm.C, warm.b, warm.V, 0.0, False, 0, lambda x: 0.0)
    results = []
    if not args.no_peers:
        n = 5000 if args.quick else args.n
        C, b, V, l2 = peers_problem(n, 100, 0)
        residual = lambda x: 0.0  # noqa: E731 (noisy: compared by loss)
        results.append(run_problem(f"peers n={n}", C, b, V, l2, False, 0, residual))
    count, kwargs = args.count, {}
    last = args.first + args.families
    if args.quick:
        count, last, kwargs = 6, args.first + 6, dict(n_range=(50, 400), d_range=(8, 24))
    for index, case in enumerate(families.family("softmax_relu", count, 0, noisy_fraction=0.2, **kwargs)):
        if args.first <= index < last:
            results.append(run_problem(case.name + ("" if case.reachable else " noisy"), case.C, case.b, case.V, 0.0,
                                       case.reachable, index, lambda x, case=case: families.relative_residual(case, x)))
    family_results = results[0 if args.no_peers else 1:]
    if not family_results:
        return
    print(f"the {len(family_results)} family problems:")
    for start in STARTS:
        rows = [result[start] for result in family_results]
        print(f"{start:<7} reached tol {sum(r['converged'] for r in rows):>3}/{len(rows)}, "
              f"as good as auto {sum(r['as_good'] for r in rows):>3}/{len(rows)}, "
              f"iterations median {np.median([r['n_iter'] for r in rows]):.0f} max {max(r['n_iter'] for r in rows)}, "
              f"seconds {sum(r['seconds'] for r in rows):.1f}")


if __name__ == "__main__":
    main()
