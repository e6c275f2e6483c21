"""Measure the rates behind ``hessian="auto"`` and (with --write) store them in fastnewton/rates.py.

    python bench/calibrate.py            # print the measured rates
    python bench/calibrate.py --write    # ... and rewrite fastnewton/rates.py with them
    python bench/calibrate.py --quick    # tiny sizes (a smoke run; never --write its figures)
    python bench/calibrate.py --write --merge   # ... keeping the faster of stored and measured rates

Run it on a quiet machine (about two minutes on 2 cores) after the kernels change: every
figure is the best of a few calls of the package's own operations (a pass over C, the
sandwich, the dense Hessian-vector product, the sampled dense sandwich, the OSNAP embedding,
C·Z, the QR and Cholesky factorisations, a sketched iteration's draw over the rows) at sizes
where they run at full speed;
an iteration's row work beyond its passes from the phase timers of exact solves of a short-row
CSR problem (n = 10⁶, 3 per row) and its fixed cost from a tiny one; and the iteration ratios (and
the leverage references refused per sketched iteration) from solving planted noisy softmax
problems (dense at d = 64 and 256, CSR with long rows and with short rows) from ``x0="auto"`` to
tol = 1e-8 with each strategy, and again from zeros (the ``_FROM_OTHER_STARTS`` figures, which price any
start but ``x0="auto"``).
"""
import argparse
import pathlib
import platform
import time

import numba
import numpy as np
import scipy.linalg

import fastnewton
from fastnewton import sketching
from fastnewton.problem import Problem
from fastnewton.sketching import JL_DIM, OSNAP_NNZ
from fastnewton.threads import thread_limits

RATES_FILE = pathlib.Path(fastnewton.__file__).with_name("rates.py")


def best_seconds(function, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def matrix_rates(prefix, matrix, rng, sandwich_work=None):
    """Rates of one matrix's operations: {name: per second}."""
    x = rng.standard_normal(matrix.d)
    Q = rng.standard_normal((matrix.n, 3))
    beta = rng.standard_normal(matrix.n)
    Z = rng.standard_normal((matrix.d, JL_DIM))
    one_pass = 0.5 * (best_seconds(lambda: matrix.matvec(x)) + best_seconds(lambda: matrix.rmatmat(Q)))
    dense_only = {}
    if prefix == "DENSE":
        # (the CSR sandwich is priced by its pairs and its rows: ``csr_row_rates``)
        dense_only["DENSE_SANDWICH_FMA"] = sandwich_work / best_seconds(lambda: matrix.sandwich(beta))
        s = min(matrix.n, sketching.sample_size(matrix.d, 0.5))
        rows = np.sort(rng.choice(matrix.n, size=s, replace=False))
        # As a solve forms it while its leverage reference is the column scale (float32 SYRKs; the start's
        # sampled fit runs in float32 too), priced for both.
        reference = sketching.LeverageReference()
        dense_only["DENSE_SAMPLED_SANDWICH_FMA"] = s * matrix.d**2 / 2 / best_seconds(
            lambda: reference.sandwich_of_sample(matrix, rows, beta[rows]))
    return {
        **dense_only,
        f"{prefix}_PASS_ENTRIES": matrix.nnz / one_pass,
        f"{prefix}_EMBED_UPDATES": matrix.nnz * OSNAP_NNZ / best_seconds(
            lambda: sketching.osnap_embed(matrix, beta, rng)),
        f"{prefix}_MATMAT_FMA": matrix.nnz * JL_DIM / best_seconds(lambda: matrix.matmat(Z)),
    }


def factorisation_rates(d, rng):
    m = sketching.EMBED_ROWS_PER_COLUMN * d
    SB = rng.standard_normal((m, d))
    A = SB.T @ SB + np.eye(d)
    return {
        "QR_FMA": m * d * d / best_seconds(lambda: sketching.embedding_factor(SB, 0.0)),
        "CHOLESKY_FMA": d**3 / 3 / best_seconds(lambda: scipy.linalg.cho_factor(A, check_finite=False)),
    }


def per_iteration_phases(C, b, hessian, repeat=3):
    """(iterations, seconds per iteration outside the Hessian and the step's solve, of the fastest of
    ``repeat`` solves from x0="auto"), read from the solve's own phase timers."""
    best = (1, float("inf"))
    for _ in range(repeat):
        res = fastnewton.solve(C, b, hessian=hessian, seed=0)
        iterations = max(1, res.n_iter)
        shared = sum(seconds for record in res.history[1:] for phase, seconds in record["seconds"].items()
                     if phase not in ("hessian", "solve")) / iterations
        best = min(best, (iterations, shared), key=lambda pair: pair[1])
    return best


def row_rates(rates, quick, rng, seed=0):
    """ITERATION_ROWS, SAMPLING_ROWS and TINY_ITERATIONS (with the pass rate measured already).

    The row work is what an exact iteration spends outside its Hessian and step beyond the
    PASSES_PER_ITERATION passes the model prices (on short CSR rows, where it dominates), plus
    forming β (in the Hessian phase of every strategy); the draw is ``sample_rows`` over all rows by
    the reference's scores; the fixed cost is a tiny problem's whole iteration."""
    from fastnewton.hessian import PASSES_PER_ITERATION
    from fastnewton.sketching import LeverageReference, sample_rows

    n, d, per_row = 1_000_000 // (10 if quick else 1), 32, 3
    C, b, _ = fastnewton.make_problem(n, d, nnz_per_row=per_row, noise=0.1, seed=seed)
    problem = Problem(C, b)
    iterations, shared = per_iteration_phases(C, b, "exact")
    passes = PASSES_PER_ITERATION * problem.matrix.nnz / rates["CSR_PASS_ENTRIES"]
    ev = problem.evaluate(np.zeros(d))

    def curvature():
        ev.beta = None
        problem.beta(ev)
    row_seconds = max(shared - passes, 0.0) + best_seconds(curvature)
    reference = LeverageReference()
    factors = reference.row_factors(problem.matrix)
    beta = problem.beta(ev)
    draw = best_seconds(lambda: sample_rows(np.abs(beta) * factors, d + 1, rng))
    C, b, _ = fastnewton.make_problem(200, 4, dense=True, noise=0.1, seed=seed)
    # On all threads, as the problems auto chooses for run (solve would run this one on one thread: the
    # fixed cost of an iteration includes waking the other threads for each of its parallel passes).
    threads = numba.get_num_threads()
    tiny = min(sum(sum(record["seconds"].values()) for record in res.history[1:]) / max(1, res.n_iter)
               for res in (fastnewton.solve(C, b, hessian="exact", seed=0, n_threads=threads) for _ in range(5)))
    return {"ITERATION_ROWS": n / row_seconds, "SAMPLING_ROWS": n / draw, "TINY_ITERATIONS": 1.0 / tiny}


STRATEGY_NAMES = ("exact", "sketch", "pcg", "lagged")
# ``IterationTally.figures``, in its order.
TALLIED_FIGURES = ("EXACT_ITERATIONS", "SKETCH_ITERATIONS_PER_EXACT", "PCG_ITERATIONS_PER_EXACT",
                   "CG_ITERATIONS_PER_STEP", "LAGGED_ITERATIONS_PER_EXACT", "LAGGED_CG_ITERATIONS_PER_STEP")
# The iteration figures measured from zeros, for any start but x0="auto" (``hessian.many_strategy_seconds``).
FROM_OTHER_STARTS = "_FROM_OTHER_STARTS"


class IterationTally:
    """Newton and CG iterations of the four strategies' solves from one kind of start, problem by problem."""

    def __init__(self):
        self.exact, self.sketch, self.pcg, self.lagged = [], [], [], []
        self.cg, self.lagged_cg, self.start_preconditioned_cg = [], [], []
        self.refreshes, self.sketched = 0, 0

    def add(self, runs):
        """One problem's solves, ``runs[name]`` for each of STRATEGY_NAMES."""
        self.exact.append(max(1, runs["exact"].n_iter))
        for name in ("sketch", "pcg", "lagged"):
            getattr(self, name).append(runs[name].n_iter / self.exact[-1])
        # pcg's steps preconditioned by a sample, and those by the start's fit matrix (dense C from x0="auto")
        steps = [record for record in runs["pcg"].history[1:] if record.get("preconditioner") != "start fit"]
        if steps or not runs["pcg"].n_iter:
            self.cg.append(np.mean([record.get("cg_iterations", 1) for record in steps]) if steps else 1.0)
        steps = [record for record in runs["pcg"].history[1:] if record.get("preconditioner") == "start fit"]
        if steps:
            self.start_preconditioned_cg.append(np.mean([record["cg_iterations"] for record in steps]))
        # the lagged steps only (every third iteration is exact and runs no CG)
        counts = [record["cg_iterations"] for record in runs["lagged"].history[1:] if "cg_iterations" in record]
        self.lagged_cg.append(np.mean(counts) if counts else 1.0)
        for name in ("sketch", "pcg"):
            # the iterations that sampled (pcg's preconditioned by the start's fit matrix sample nothing)
            sampling = [record for record in runs[name].history[1:] if "sampled_rows" in record]
            if sampling:
                self.refreshes += sampling[-1]["leverage_refreshes"]
                self.sketched += len(sampling)

    def figures(self, suffix=""):
        """The mean figures, named as in fastnewton/rates.py with ``suffix``."""
        values = (self.exact, self.sketch, self.pcg, self.cg, self.lagged, self.lagged_cg)
        return {name + suffix: float(np.mean(value)) for name, value in zip(TALLIED_FIGURES, values)}


def iteration_ratios(problems):
    """Mean ratios of Newton iterations (sketch, pcg, lagged per exact) and CG iterations per pcg / lagged step,
    and the leverage references refused per sketched iteration, from x0="auto" and (``FROM_OTHER_STARTS``) from
    zeros, where β moves far in the first iterations: the reference is refused more often, every strategy takes
    more Newton iterations, and CG more per step."""
    default, other = IterationTally(), IterationTally()
    for C, b in problems:
        default.add({name: fastnewton.solve(C, b, hessian=name, seed=0) for name in STRATEGY_NAMES})
        other.add({name: fastnewton.solve(C, b, hessian=name, x0="zeros", seed=0) for name in STRATEGY_NAMES})
    return {**default.figures(), **other.figures(FROM_OTHER_STARTS),
            "REFERENCE_REFRESHES_PER_ITERATION": default.refreshes / max(1, default.sketched),
            "REFERENCE_REFRESHES_FROM_OTHER_STARTS": other.refreshes / max(1, other.sketched),
            "START_PRECONDITIONED_CG_ITERATIONS_PER_STEP": float(np.mean(default.start_preconditioned_cg))
            if default.start_preconditioned_cg else 1.0}


def hessian_vector_seconds(matrix, rng):
    """Seconds of a matrix's one-read Hessian-vector product (``sandwich_vector``: CG's step)."""
    beta, v = rng.standard_normal(matrix.n), rng.standard_normal(matrix.d)
    return best_seconds(lambda: matrix.sandwich_vector(beta, v))


def hessian_vector_entries(matrix, rng):
    """Entries per second of a dense matrix's one-read Hessian-vector product."""
    return matrix.n * matrix.d / hessian_vector_seconds(matrix, rng)


def work_and_row_rates(long_rows, short_rows):
    """(work per second, rows per second) of an operation whose time is work / W + rows / R, from two
    (work, rows, seconds) measurements, one on long rows (the work dominates) and one on short rows
    (the rows do): the 2 × 2 linear system for 1/W and 1/R. A per-row cost measured at or below zero
    (noise: the short rows measured faster than the long rows' rate predicts) gives R = None, and the
    stored rate is kept."""
    (work_1, rows_1, seconds_1), (work_2, rows_2, seconds_2) = long_rows, short_rows
    per_work, per_row = np.linalg.solve([[work_1, rows_1], [work_2, rows_2]], [seconds_1, seconds_2])
    if per_row <= 0.0 or per_work <= 0.0:
        return work_1 / seconds_1, None
    return 1.0 / per_work, 1.0 / per_row


def csr_row_rates(long_matrix, rng, quick, seed):
    """CSR_SANDWICH_PAIRS, CSR_SANDWICH_ROWS, CSR_HESSIAN_VECTOR_ENTRIES, CSR_HESSIAN_VECTOR_ROWS: the sandwich
    priced by its pair updates and its rows, the Hessian-vector product by its stored entries and its rows,
    each pair of rates from ``long_matrix`` (30 entries per row) and a short-row matrix (3 per row) at the
    same width. On short rows a row's fixed work (its loop set-up, the β and the product it reads) costs
    more than its few pairs: n = 10⁶, d = 32, 5 per row took 9.7 ms where the pairs alone priced 4.4."""
    n = 1_000_000 // (10 if quick else 1)
    C, _, _ = fastnewton.make_problem(n, long_matrix.d, nnz_per_row=3, seed=seed)
    short_matrix = Problem(C, np.full(n, 1.0 / n)).matrix
    sandwich, product = [], []
    for matrix in (long_matrix, short_matrix):
        row_nnz = np.diff(matrix.indptr)
        pairs = float(np.sum(row_nnz * (row_nnz + 1) / 2))
        beta = rng.standard_normal(matrix.n)
        sandwich.append((pairs, matrix.n, best_seconds(lambda: matrix.sandwich(beta))))
        product.append((matrix.nnz, matrix.n, hessian_vector_seconds(matrix, rng)))
    pairs_rate, sandwich_rows = work_and_row_rates(*sandwich)
    entries_rate, product_rows = work_and_row_rates(*product)
    measured = {"CSR_SANDWICH_PAIRS": pairs_rate, "CSR_SANDWICH_ROWS": sandwich_rows,
                "CSR_HESSIAN_VECTOR_ENTRIES": entries_rate, "CSR_HESSIAN_VECTOR_ROWS": product_rows}
    return {name: value for name, value in measured.items() if value is not None}


# Targets per shape behind the iteration figures (``iteration_ratios``).
ITERATION_SEEDS = 3


def measure(quick, seed=0):
    rng = np.random.default_rng(seed)
    scale = 10 if quick else 1
    dense_n, dense_d = 60_000 // scale, 256
    C, _, _ = fastnewton.make_problem(dense_n, dense_d, dense=True, seed=seed)
    matrix = Problem(C, np.full(dense_n, 1.0 / dense_n)).matrix
    rates = matrix_rates("DENSE", matrix, rng, dense_n * dense_d**2 / 2)
    rates["DENSE_HESSIAN_VECTOR_ENTRIES"] = hessian_vector_entries(matrix, rng)
    csr_n, csr_d, per_row = 400_000 // scale, 256, 30
    C, _, _ = fastnewton.make_problem(csr_n, csr_d, nnz_per_row=per_row, seed=seed)
    matrix = Problem(C, np.full(csr_n, 1.0 / csr_n)).matrix
    rates.update(matrix_rates("CSR", matrix, rng))
    rates.update(csr_row_rates(matrix, rng, quick, seed))
    # The dense sandwich again at d = 32, where a SYRK does few multiply-adds per entry it reads.
    narrow_n, narrow_d = 400_000 // scale, 32
    C, _, _ = fastnewton.make_problem(narrow_n, narrow_d, dense=True, seed=seed)
    matrix = Problem(C, np.full(narrow_n, 1.0 / narrow_n)).matrix
    beta = rng.standard_normal(narrow_n)
    rates["DENSE_SANDWICH_FMA_D32"] = narrow_n * narrow_d**2 / 2 / best_seconds(lambda: matrix.sandwich(beta))
    rates["DENSE_HESSIAN_VECTOR_ENTRIES_D32"] = hessian_vector_entries(matrix, rng)
    del C, matrix
    # The CSR sandwich again at d = 1024, where its d × d partial no longer fits in cache.
    wide_n, wide_d, wide_per_row = 40_000 // scale, 1024, 100
    C, _, _ = fastnewton.make_problem(wide_n, wide_d, nnz_per_row=wide_per_row, seed=seed)
    matrix = Problem(C, np.full(wide_n, 1.0 / wide_n)).matrix
    row_nnz = np.diff(C.indptr)
    beta = rng.standard_normal(wide_n)
    # (its rows' fixed work, priced by CSR_SANDWICH_ROWS, taken out)
    rates["CSR_SANDWICH_PAIRS_D1024"] = float(np.sum(row_nnz * (row_nnz + 1) / 2)) / max(
        best_seconds(lambda: matrix.sandwich(beta), 2) - wide_n / rates["CSR_SANDWICH_ROWS"], 1e-9)
    rates.update(factorisation_rates(128 if quick else 512, rng))
    rates.update(row_rates(rates, quick, rng, seed))
    # Dense narrow and wide (where lagged's CG steps take more iterations and the sketch's fewer), CSR with
    # long rows and CSR with short rows (where the sketch's reference is refused more); each with
    # ITERATION_SEEDS targets: a strategy's iteration count moves by one between problems of one shape (lagged
    # took one more than exact on 7 of 28 noisy CSR problems, 4 seeds of 7 shapes), which one seed per shape
    # rounds to all or nothing.
    shapes = [(30_000 // scale, 64, None), (60_000 // scale, 256, None), (100_000 // scale, 128, 40),
              (300_000 // scale, 64, 5)]
    problems = (fastnewton.make_problem(n, d, nnz_per_row=per_row, dense=per_row is None, noise=0.1,
                                        seed=seed + offset)[:2]
                for offset in range(1 if quick else ITERATION_SEEDS) for n, d, per_row in shapes)
    rates.update(iteration_ratios(problems))
    return rates


ITERATION_FIGURES = TALLIED_FIGURES + tuple(name + FROM_OTHER_STARTS for name in TALLIED_FIGURES) + (
    "START_PRECONDITIONED_CG_ITERATIONS_PER_STEP", "REFERENCE_REFRESHES_PER_ITERATION",
    "REFERENCE_REFRESHES_FROM_OTHER_STARTS")


def merged(measured, stored):
    """Each rate the faster of measured and stored (another job only ever slows a measurement down);
    the iteration figures (deterministic solves) as measured."""
    return {name: value if name in ITERATION_FIGURES else max(value, getattr(stored, name))
            for name, value in measured.items()}


def module_text(rates, machine):
    template = RATES_FILE.read_text().splitlines()
    lines = []
    for line in template:
        name = line.split(" = ")[0]
        if name == "MACHINE":
            line = f"MACHINE = {machine!r}"
        elif name in rates:
            line = f"{name} = {rates[name]:.3g}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--write", action="store_true", help="rewrite fastnewton/rates.py with the figures")
    parser.add_argument("--merge", action="store_true",
                        help="with --write: keep the faster of the stored and the measured figure of each rate "
                             "(on a shared machine another job's burst only ever slows a measurement down, so "
                             "the best of several runs is the machine's rate); iteration figures are replaced")
    args = parser.parse_args(argv)
    if args.merge and not args.write:
        parser.error("--merge only applies with --write")
    if args.quick and args.write:
        parser.error("--quick figures are not rates to ship: drop --write")
    # Compile (or load the cached kernels) before timing.
    C, b, _ = fastnewton.make_problem(2000, 16, nnz_per_row=4, noise=0.1, seed=0)
    for name in ("exact", "sketch", "pcg", "lagged"):
        fastnewton.solve(C, b, hessian=name, seed=0)
        fastnewton.solve(C.toarray(), b, hessian=name, seed=0)
    # As inside a solve: Numba on every thread, BLAS on one outside the blocks that raise it.
    with thread_limits(None):
        rates = measure(args.quick)
    for name, value in rates.items():
        print(f"{name} = {value:.3g}")
    if args.merge:
        from fastnewton import rates as stored
        rates = merged(rates, stored)
    if args.write:
        machine = f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores"
        RATES_FILE.write_text(module_text(rates, machine))
        print(f"wrote {RATES_FILE}")


if __name__ == "__main__":
    main()
