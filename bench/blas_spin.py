"""A multi-threaded NumPy call just before ``solve``: OpenBLAS's idle workers spin into the solve.

After a multi-threaded BLAS call OpenBLAS's worker threads keep spinning (sched_yield in a loop) for
2²⁸ CPU cycles, ~0.1 s, before they sleep. A ``solve`` that starts inside that window shares the cores
with them: its first passes over C run slower. ``OPENBLAS_THREAD_TIMEOUT=4`` (read when OpenBLAS
loads, i.e. set before NumPy is imported) makes them sleep after 2⁴ cycles.

    python bench/blas_spin.py                # dense n = 10⁵, d = 256, noisy softmax, default solve
    python bench/blas_spin.py --quick        # n = 2·10⁴, d = 64, seconds

Prints, for OpenBLAS's default timeout and for OPENBLAS_THREAD_TIMEOUT=4 (each in a child process, so
that the variable is read at load), the min and median wall time of ``fastnewton.solve`` started
(a) after 0.3 s idle, (b) right after a 400 × 400 NumPy matrix product, (c) after the product and
0.3 s idle, interleaved over --repeats rounds.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time

from _args import positive_int

MODES = ("idle", "after matmul", "after matmul + idle")
IDLE_SECONDS = 0.3


def child(n, d, repeats):
    """The timings in this process: {mode: [seconds]}."""
    import numpy as np

    import fastnewton
    made = fastnewton.make_problem(n, d, model="softmax", noise=0.01, seed=0, dense=True)
    product = np.random.default_rng(0).standard_normal((400, 400))
    fastnewton.solve(made.C, made.b)  # warm-up: kernels loaded, first allocations made
    times = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            gc.collect()
            time.sleep(IDLE_SECONDS)
            if mode != "idle":
                product @ product
            if mode == "after matmul + idle":
                time.sleep(IDLE_SECONDS)
            start = time.perf_counter()
            fastnewton.solve(made.C, made.b)
            times[mode].append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=100_000)
    parser.add_argument("--d", type=positive_int, default=256)
    parser.add_argument("--repeats", type=positive_int, default=8)
    parser.add_argument("--quick", action="store_true", help="n = 2·10⁴, d = 64, 2 rounds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.repeats = 20_000, 64, 2
    if args.child:
        print(json.dumps(child(args.n, args.d, args.repeats)))
        return
    print(f"dense n = {args.n:,}, d = {args.d}, default solve; min / median of {args.repeats} rounds, ms")
    for label, timeout in (("OpenBLAS default timeout", None), ("OPENBLAS_THREAD_TIMEOUT=4", "4")):
        env = dict(os.environ)
        env.pop("OPENBLAS_THREAD_TIMEOUT", None)
        if timeout is not None:
            env["OPENBLAS_THREAD_TIMEOUT"] = timeout
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--n", str(args.n),
                              "--d", str(args.d), "--repeats", str(args.repeats)],
                             env=env, check=True, capture_output=True, text=True)
        times = json.loads(out.stdout.strip().splitlines()[-1])
        cells = []
        for mode in MODES:
            seconds = sorted(times[mode])
            cells.append(f"{mode} {seconds[0] * 1e3:.0f} / {seconds[len(seconds) // 2] * 1e3:.0f}")
        print(f"{label:>26}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
