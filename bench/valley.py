"""Iterations of softmax_relu's default solve on underdetermined "valley" problems (m < d, small l2).

    python bench/valley.py                   # n = 10⁵, d = 100, 10 nnz/row, m = 16, l2 = 1e-8, seeds 0–5, both V kinds
    python bench/valley.py --quick           # n = 5000, seeds 0–1: seconds (the smoke test)
    python bench/valley.py --seeds 0 --kinds gaussian --phases    # one problem, iterations per phase

With m = 16 outputs and d = 100 columns the zero-residual set is a curved valley of dimension
about d − (active outputs) and the optimum is held only by l2; ``solve``'s staged start follows it
with a ridge continuation (``fastnewton.lifted_start``). Two kinds of value matrix per seed:

- ``planted``: ``make_problem(n, d, nnz_per_row, model="softmax_relu", m, seed)`` as it is (V uniform
  in [−0.5, 1], b = ReLU(Vᵀ softmax(C x_true)));
- ``gaussian``: the same C and x_true with V ~ N(0, 1) drawn from seed 1000 + seed, b = ReLU(Vᵀ
  softmax(C x_true)) (about half the outputs inactive, b_j = 0).

Per problem: ``n_iter`` (every phase of the staged start counted), the status, the relative residual
‖h(Cx) − b‖/‖b‖ and, with ``--phases``, the iterations of each phase in order. The last line gives
the largest and the total. The machine and the fastnewton that was imported are printed first.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _args import nonnegative_float, nonnegative_int, output_file, positive_int  # noqa: E402

import fastnewton  # noqa: E402
from fastnewton.problems import make_problem  # noqa: E402

KINDS = ("planted", "gaussian")
GAUSSIAN_SEED_OFFSET = 1000


def valley_problem(n, d, nnz, m, seed, kind):
    """(C, b, V) of one valley problem (module docstring)."""
    planted = make_problem(n, d, nnz_per_row=nnz, model="softmax_relu", m=m, seed=seed)
    if kind == "planted":
        return planted.C, planted.b, planted.V
    V = np.random.default_rng(GAUSSIAN_SEED_OFFSET + seed).standard_normal(planted.V.shape)
    return planted.C, fastnewton.predict(planted.C, planted.x_true, "softmax_relu", V), V


def phase_counts(history):
    """[(phase, iterations)] in the order the phases ran."""
    counts = []
    for record in history[1:]:
        if counts and counts[-1][0] == record["phase"]:
            counts[-1][1] += 1
        else:
            counts.append([record["phase"], 1])
    return [tuple(pair) for pair in counts]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=positive_int, default=100_000)
    parser.add_argument("--d", type=positive_int, default=100)
    parser.add_argument("--nnz", type=positive_int, default=10, help="non-zeros per row of C")
    parser.add_argument("--m", type=positive_int, default=16, help="outputs (columns of V)")
    parser.add_argument("--l2", type=nonnegative_float, default=1e-8)
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=list(range(6)))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--phases", action="store_true", help="print the iterations of each phase")
    parser.add_argument("--quick", action="store_true", help="n = 5000, seeds 0 and 1 (seconds)")
    parser.add_argument("--out", type=output_file, default=None, help="write the per-problem results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.seeds = 5000, [0, 1]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}; "
          f"fastnewton from {Path(fastnewton.__file__).parent}")
    print(f"n = {args.n}, d = {args.d}, {args.nnz} nnz/row, m = {args.m}, l2 = {args.l2:g}")
    print(f"{'V':<9} {'seed':>4} {'n_iter':>6} {'status':<16} {'residual':>9}")
    rows = []
    started = time.perf_counter()
    for kind in args.kinds:
        for seed in args.seeds:
            C, b, V = valley_problem(args.n, args.d, args.nnz, args.m, seed, kind)
            res = fastnewton.solve(C, b, "softmax_relu", V=V, l2=args.l2)
            residual = float(np.linalg.norm(fastnewton.predict(C, res.x, "softmax_relu", V) - b) / np.linalg.norm(b))
            phases = phase_counts(res.history)
            rows.append(dict(kind=kind, seed=seed, n_iter=res.n_iter, status=res.status.name, residual=residual,
                             phases=phases))
            print(f"{kind:<9} {seed:>4d} {res.n_iter:>6d} {res.status.name:<16} {residual:>9.1e}", flush=True)
            if args.phases:
                print("    " + ", ".join(f"{phase}: {count}" for phase, count in phases))
    iterations = [row["n_iter"] for row in rows]
    print(f"largest {max(iterations)}, total {sum(iterations)} iterations over {len(rows)} problems "
          f"({time.perf_counter() - started:.1f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(args=vars(args), fastnewton=str(Path(fastnewton.__file__).parent),
                                                  rows=rows), indent=1))


if __name__ == "__main__":
    main()
