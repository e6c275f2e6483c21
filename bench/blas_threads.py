"""Whether the d × d work of a Newton step (Cholesky, P S Pᵀ) pays for more BLAS threads.

For each d: the median time of the Cholesky of an SPD d × d matrix and of H + P S Pᵀ (k = 2) with
BLAS on 1 and on 2 threads (``fastnewton.threads.blas_threads``, scoped to the call, back to one
after, as inside a solve), the median time of the Numba forward pass that follows it (CSR
n = 10⁶, 10 per row, d = 256; the spinning OpenBLAS workers would slow it), and whether the
factor's bits depend on the BLAS thread count.

    python bench/blas_threads.py            # d = 256 … 2048
    python bench/blas_threads.py --quick    # small sizes, seconds
"""
import argparse
import os
import sys
import time

import numpy as np
import scipy.linalg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastnewton  # noqa: E402
from fastnewton.protocol import add_low_rank_and_ridge  # noqa: E402
from fastnewton.threads import blas_threads, thread_limits  # noqa: E402
from fastnewton.validation import as_input_matrix  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n, sizes, repeats = (20_000, (64, 128), 3) if args.quick else (1_000_000, (256, 512, 1024, 2048), 5)
    rng = np.random.default_rng(0)
    matrix = as_input_matrix(fastnewton.make_problem(n, 256, nnz_per_row=10, seed=0)[0])
    x = rng.standard_normal(256)

    def pass_ms():
        start = time.perf_counter()
        matrix.matvec(x)
        return (time.perf_counter() - start) * 1e3

    with thread_limits(2):
        for _ in range(3):
            pass_ms()
        alone = float(np.median([pass_ms() for _ in range(7)]))
        print(f"forward pass alone: {alone:.2f} ms")
        print(f"{'d':>5} {'BLAS':>4} {'cholesky ms':>12} {'H+PSPt ms':>10} {'next pass ms':>13}")
        for d in sizes:
            A = rng.standard_normal((d, d))
            H = A @ A.T / d + np.eye(d)
            P, S = rng.standard_normal((d, 2)), np.array([[1.0, -1.0], [-1.0, 0.0]])
            factors = {}
            for threads in (1, 2):
                cholesky, low_rank, after = [], [], []
                for _ in range(repeats):
                    start = time.perf_counter()
                    with blas_threads(threads):
                        factors[threads] = scipy.linalg.cho_factor(H, lower=True, check_finite=False)[0]
                    cholesky.append(time.perf_counter() - start)
                    after.append(pass_ms())
                    target = H.copy()
                    start = time.perf_counter()
                    with blas_threads(threads):
                        add_low_rank_and_ridge(target, P, S, 0.0)
                    low_rank.append(time.perf_counter() - start)
                print(f"{d:5d} {threads:4d} {np.median(cholesky) * 1e3:12.2f} {np.median(low_rank) * 1e3:10.2f} "
                      f"{np.median(after):13.2f}")
            same = np.array_equal(np.tril(factors[1]), np.tril(factors[2]))
            print(f"      Cholesky factor bitwise equal on 1 and 2 BLAS threads: {same}")


if __name__ == "__main__":
    main()
