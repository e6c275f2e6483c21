"""Per-iteration time of a solve, by phase, at one large problem: the median over iterations of
each phase's milliseconds from ``history[i]["seconds"]``, plus one line-search trial against the
time to stream its arrays.

    python bench/iteration_phases.py --matrix uniform      # CSR n = 10⁶, d = 256, nnz = 10⁷ (10 per row)
    python bench/iteration_phases.py --matrix zipf         # bag-of-words-like: n = 2·10⁶, d = 1024, Zipf rows
    python bench/iteration_phases.py --quick               # tiny sizes (seconds)

Before/after: run the same command with PYTHONPATH=<a checkout of the other commit> beside it,
under one lock. Prints one row per run, labelled by ``--label`` and the fastnewton path imported.
"""
import argparse
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _args import positive_int  # noqa: E402

import fastnewton  # noqa: E402

PHASES = ("forward", "model", "gradient", "hessian", "solve", "line_search")


def zipf_rows_matrix(n, d, exponent=2.0, seed=0):
    """A bag-of-words-like CSR matrix: row lengths Zipf(exponent) clipped to [1, d] (mean ≈ 4.6 at
    exponent 2, d = 1024, a few rows of ~d entries), columns drawn with probability ∝ 1/(j + 1)
    (word frequencies), values standard normal; duplicate columns summed."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.zipf(exponent, n), d)
    popularity = 1.0 / np.arange(1, d + 1)
    columns = rng.choice(d, size=int(lengths.sum()), p=popularity / popularity.sum())
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    C = sp.csr_matrix((rng.standard_normal(columns.shape[0]), columns, indptr), shape=(n, d))
    C.sum_duplicates()
    return C


def planted_targets(C, seed=0, noise=0.05):
    """b = softmax(C x_true)·(1 + noise·N(0, 1)), clipped at 0, with logits of about unit size."""
    rng = np.random.default_rng(seed + 1)
    per_row = max(1.0, C.nnz / C.shape[0])
    z = C @ (rng.standard_normal(C.shape[1]) / np.sqrt(per_row))
    s = np.exp(z - z.max())
    s /= s.sum()
    return np.maximum(s * (1.0 + noise * rng.standard_normal(s.shape[0])), 0.0)


def stream_seconds(n, repeats=7):
    """Median time of one NumPy copy of n float64 (8n bytes read, 8n written): the O(n) unit."""
    a, out = np.random.default_rng(0).standard_normal(n), np.empty(n)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(out, a)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def trial_seconds(C, b, repeats=7):
    """Median time of one line-search trial (u + t·Cp and the loss stages, no pass over C)."""
    problem = fastnewton.Problem(C, b)
    ev = problem.evaluate(np.zeros(problem.d))
    line = problem.line(ev, np.random.default_rng(2).standard_normal(problem.d) * 1e-2)
    line.loss(0.5)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        line.loss(0.5)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", choices=("uniform", "zipf"), default="uniform")
    parser.add_argument("--iterations", type=positive_int, default=6)
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.matrix == "uniform":
        n, d = (20_000, 32) if args.quick else (1_000_000, 256)
        C = fastnewton.make_problem(n, d, nnz_per_row=10, seed=0)[0]
    else:
        n, d = (40_000, 64) if args.quick else (2_000_000, 1024)
        C = zipf_rows_matrix(n, d)
    b = planted_targets(C)
    res = fastnewton.solve(C, b, x0="zeros", hessian="exact", tol=1e-15, max_iter=args.iterations, n_threads=2)
    records = res.history[1:]
    medians = {phase: 1e3 * float(np.median([r["seconds"].get(phase, 0.0) for r in records])) for phase in PHASES}
    total = 1e3 * float(np.median([sum(r["seconds"].values()) for r in records]))
    forward_iterations = sum("forward" in r["seconds"] for r in records)
    trial, stream = trial_seconds(C, b), stream_seconds(C.shape[0])
    print(f"{args.label:>7} {args.matrix} n={C.shape[0]} d={C.shape[1]} nnz={C.nnz} iterations={len(records)} "
          f"(forward pass in {forward_iterations}) [{os.path.dirname(fastnewton.__file__)}]")
    print("        " + " ".join(f"{phase:>11}" for phase in PHASES) + f" {'total':>8}  trial (×copy of n)")
    print("    ms  " + " ".join(f"{medians[phase]:11.1f}" for phase in PHASES) + f" {total:8.1f}"
          f"  {trial * 1e3:.2f} ms ({trial / stream:.1f}× the {stream * 1e3:.2f} ms copy)")


if __name__ == "__main__":
    main()
