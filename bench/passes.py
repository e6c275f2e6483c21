"""The passes over C and the exact sandwich against the memory-bandwidth roofline, their thread
speed-up, and (optionally) another checkout's kernels timed in the same run.

    python bench/passes.py                          # n = 1e6, d = 256, nnz = 1e7 (CSR), threads 1 and 2
    python bench/passes.py --quick                  # small problem, seconds
    python bench/passes.py --base /tmp/main-copy    # also time that source checkout's kernels (before/after)

For each thread count, the streaming probes (bench/probes.py) and the passes take turns in
every round (--repeats rounds after a warm-up call each), so load from other processes slows
both alike. The roofline bandwidth is the best probe at its best round. Per pass: the best and
the median time, the bytes it must move (C once — indptr, indices, data — plus its length-n
operand or result: 8·n·k bytes for the n × k matrix Q of Cᵀ Q, 8·n for u = Cx), the achieved
GB/s, ``ratio`` = best time / (bytes / roofline) (target ≤ 1.5), ``med.ratio`` the same with
medians on both sides, and the speed-up of the best time over 1 thread (target ≥ 1.7 at 2
threads). The probe line prints each probe's best, median and slowest round, the spread within
the run; run the script several times for the spread across runs.

The exact sandwich Cᵀ diag(β) C is compute-bound (Σᵢ nnzᵢ(nnzᵢ+1)/2 pair updates): its rows
report ns per pair update, on C above (short uniform rows) and on a bag-of-words-like matrix
with Zipf-skewed row lengths (bench/matrices.py: --zipf-n rows, d = --zipf-d, 5 entries per
row on average, rows up to 1000 entries), through CSRMatrix.sandwich (long rows by SYRK) and
through the sparse kernel alone. Their ``roofline_ratio`` compares with one stream of C.

With --base, the same operations run on the kernels of another source checkout (its
kernels/ folder, loaded under another name) in the same rounds: timings alternate between
the two, so a busy machine slows both alike; ``base_median_s`` and ``base_ratio`` (base / ours)
go beside ours. Results also go to passes.json in --out (default bench/results/), with the
run's versions, git commit, CPU model and thread counts.
"""
import argparse
import atexit
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time

import numba
import numpy as np

import fastnewton
from fastnewton.chunking import sandwich_chunk_rows
from fastnewton.kernels import sandwich as sandwich_kernels
from fastnewton.matrix import CSRMatrix
from fastnewton.validation import as_input_matrix

try:
    from _args import add_output_arguments, nonnegative_int, positive_int, thread_count
    from _report import write_json
    from matrices import bag_of_words, pair_count
    from probes import probe_functions
except ImportError:  # run as a module from the repository root
    from bench._args import add_output_arguments, nonnegative_int, positive_int, thread_count
    from bench._report import write_json
    from bench.matrices import bag_of_words, pair_count
    from bench.probes import probe_functions

ZIPF_NNZ_PER_ROW = 5
ZIPF_MAX_ROW_NNZ = 1000


def load_base_kernels(checkout):
    """The kernels/ package of another source checkout, imported as ``_base_kernels`` (csr, sandwich).

    It is imported from a temporary copy: Numba caches a compiled function beside its source file,
    under the name of the module that compiled it, so compiling the checkout's own files as
    ``_base_kernels`` would leave cache entries there that fail to load (ModuleNotFoundError)
    in any later process importing that checkout as ``fastnewton.kernels``.
    """
    folder = tempfile.mkdtemp(prefix="passes-base-")
    atexit.register(shutil.rmtree, folder, True)
    copy = os.path.join(folder, "_base_kernels")
    shutil.copytree(os.path.join(os.path.abspath(checkout), "kernels"), copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.spec_from_file_location("_base_kernels", os.path.join(copy, "__init__.py"),
                                                  submodule_search_locations=[copy])
    package = importlib.util.module_from_spec(spec)
    sys.modules["_base_kernels"] = package
    spec.loader.exec_module(package)
    return (importlib.import_module("_base_kernels.csr"), importlib.import_module("_base_kernels.sandwich"))


def sandwich_rows_call(sandwich_module, C, rows, weights, chunk, out):
    """A call of ``sandwich_module.csr_sandwich_rows`` over ``rows`` of C into ``out``: with a partial made once
    beforehand when the kernel takes one (as the solver recycles it), else (older checkouts) the kernel
    allocates its own inside."""
    if hasattr(sandwich_module, "partials_shape"):
        partial = np.empty(sandwich_module.partials_shape(rows.shape[0], chunk, C.d))
        return lambda: sandwich_module.csr_sandwich_rows(C.indptr, C.indices, C.data, rows, weights, chunk, partial,
                                                         out)
    return lambda: sandwich_module.csr_sandwich_rows(C.indptr, C.indices, C.data, rows, weights, chunk, out)


def alternate(functions, repeats):
    """Time each callable ``repeats`` times, round-robin (after one warm-up call each): name → seconds."""
    for fn in functions.values():
        fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


class Operation:
    """One timed operation: ours, optionally the base checkout's, the bytes it moves and its pair count."""

    def __init__(self, name, ours, base, moved, pairs=None):
        self.name, self.ours, self.base, self.moved, self.pairs = name, ours, base, moved, pairs


def pass_operations(C, x, Qs, base_csr):
    """The forward pass and the transposed passes Cᵀ Q for each Q in Qs (k = 1, 3 and a generic k)."""
    ops = []
    base_out = np.empty(C.n)
    ops.append(Operation("forward u = Cx", lambda: C.matvec(x),
                         base_csr and (lambda: base_csr.csr_matvec(C.indptr, C.indices, C.data, x, base_out)),
                         C.nbytes + 8 * C.n))
    for Q in Qs:
        k = Q.shape[1]
        name = {1: "Cᵀq (k = 1)", 3: "fused Cᵀ[q, U] (k = 3)"}.get(k, f"Cᵀ Q (k = {k})")
        base_fn = None
        if base_csr is not None:
            unrolled = getattr(base_csr, "csr_rmatmat3", None) or base_csr.csr_rmatmat4  # renamed: k = 3 or 4
            kernel = {1: base_csr.csr_rmatvec, 3: unrolled}.get(k, base_csr.csr_rmatmat)
            operand = Q[:, 0].copy() if k == 1 else Q
            out = np.empty((C.d, k))
            base_fn = (lambda kernel=kernel, operand=operand, out=out:
                       kernel(C.indptr, C.indices, C.data, operand, C._chunk_rows, out))
        ops.append(Operation(name, lambda Q=Q: C.rmatmat(Q), base_fn, C.nbytes + 8 * C.n * k))
    return ops


def sandwich_operations(label, C, beta, base_sandwich):
    """CSRMatrix.sandwich (and, when it has long rows, the sparse kernel over every row); the base kernel beside."""
    pairs = pair_count(C.indptr)
    chunk = sandwich_chunk_rows(C.n, C.d, pairs)
    out, base_out = np.empty((C.d, C.d)), np.empty((C.d, C.d))
    every_row = np.arange(C.n, dtype=np.int64)
    base_fn = base_sandwich and sandwich_rows_call(base_sandwich, C, every_row, beta, chunk, base_out)
    ops = [Operation(f"sandwich {label}", lambda: C.sandwich(beta), base_fn, C.nbytes, pairs)]
    if C._dense_rows.size:
        # the base's time is the row above's (the same call), so it is not timed twice
        ops.append(Operation(f"sandwich {label}, sparse kernel only",
                             sandwich_rows_call(sandwich_kernels, C, every_row, beta, chunk, out),
                             None,
                             C.nbytes, pairs))
    return ops


def describe(C, name):
    row_nnz = np.diff(C.indptr)
    return (f"{name}: n = {C.n:,}, d = {C.d}, nnz = {C.nnz:,} (row nnz mean {row_nnz.mean():.1f}, "
            f"max {row_nnz.max()}), {pair_count(C.indptr):.3g} sandwich pairs, {C._dense_rows.size:,} rows "
            f"sandwiched by GEMM, index {C.indices.dtype}, values {C.data.dtype}")


def run(args):
    C_csr, _, x_true = fastnewton.make_problem(args.n, args.d, nnz_per_row=args.nnz_per_row, seed=0)
    C = as_input_matrix(C_csr)
    assert isinstance(C, CSRMatrix)
    rng = np.random.default_rng(1)
    x = x_true / 2
    Qs = [rng.standard_normal((C.n, k)) for k in (3, 1, args.wide_k)]
    base_csr, base_sandwich = load_base_kernels(args.base) if args.base else (None, None)
    operations = pass_operations(C, x, Qs, base_csr)
    operations += sandwich_operations(f"uniform ({args.nnz_per_row}/row)", C, rng.standard_normal(C.n),
                                      base_sandwich)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba {numba.__version__}"
          + (f"; base kernels from {args.base}" if args.base else ""))
    print(describe(C, "uniform C"))
    if args.zipf_n:
        Z = as_input_matrix(bag_of_words(args.zipf_n, args.zipf_d, nnz=ZIPF_NNZ_PER_ROW * args.zipf_n,
                                         max_row_nnz=ZIPF_MAX_ROW_NNZ, seed=0))
        print(describe(Z, "Zipf C"))
        operations += sandwich_operations("Zipf rows", Z, rng.standard_normal(Z.n), base_sandwich)

    rows = []
    max_threads = numba.config.NUMBA_NUM_THREADS
    threads = [t for t in args.threads if t <= max_threads]
    one_thread = {}
    probes = probe_functions(args.probe_mb)
    for n_threads in threads:
        numba.set_num_threads(n_threads)
        # the probes and the passes take turns in every round: a burst of load slows both alike
        functions = {("probe", name): fn for name, (fn, _) in probes.items()}
        for op in operations:
            if op.pairs is None:
                functions[(op.name, "ours")] = op.ours
                if op.base is not None:
                    functions[(op.name, "base")] = op.base
        times = alternate(functions, args.repeats)
        best = {name: moved / min(times[("probe", name)]) for name, (_, moved) in probes.items()}
        median = {name: moved / float(np.median(times[("probe", name)])) for name, (_, moved) in probes.items()}
        bandwidth, median_bandwidth = max(best.values()), max(median.values())
        print(f"\n{n_threads} thread(s): roofline {bandwidth / 1e9:.2f} GB/s = best of (GB/s, best / median / "
              f"slowest of {args.repeats} rounds) "
              + ", ".join(f"{name} {best[name] / 1e9:.1f}/{median[name] / 1e9:.1f}/"
                          f"{moved / max(times[('probe', name)]) / 1e9:.1f}" for name, (_, moved) in probes.items()))
        print(f"  {'operation':<44} {'best s':>8} {'median s':>9} {'GB/s':>6} {'ratio':>6} {'med.ratio':>9} "
              f"{'speed-up':>8} {'ns/pair':>7}" + (f" {'base s':>8} {'base/ours':>9}" if args.base else ""))
        for op in operations:
            if op.pairs is None:
                op_times = {"ours": times[(op.name, "ours")]}
                if (op.name, "base") in times:
                    op_times["base"] = times[(op.name, "base")]
            else:
                functions = {"ours": op.ours}
                if op.base is not None:
                    functions["base"] = op.base
                op_times = alternate(functions, args.sandwich_repeats)
            low, middle = float(np.min(op_times["ours"])), float(np.median(op_times["ours"]))
            one_thread.setdefault(op.name, low)
            row = {"pass": op.name, "threads": n_threads, "median_s": middle, "min_s": low,
                   "max_s": float(np.max(op_times["ours"])), "bytes": op.moved, "bandwidth_Bps": bandwidth,
                   "probes_Bps": best, "median_bandwidth_Bps": median_bandwidth, "probes_median_Bps": median,
                   "achieved_Bps": op.moved / low, "roofline_s": op.moved / bandwidth,
                   "roofline_ratio": low * bandwidth / op.moved,
                   "median_roofline_ratio": middle * median_bandwidth / op.moved,
                   "speedup": one_thread[op.name] / low, "n": C.n, "d": C.d, "nnz": C.nnz}
            if op.pairs is not None:
                row.update(pairs=op.pairs, ns_per_pair=1e9 * middle / op.pairs)
            if "base" in op_times:
                base_median = float(np.median(op_times["base"]))
                row.update(base_median_s=base_median, base_min_s=float(np.min(op_times["base"])),
                           base_ratio=base_median / middle)
                if op.pairs is not None:
                    row["base_ns_per_pair"] = 1e9 * base_median / op.pairs
            rows.append(row)
            pairs_text = f"{row['ns_per_pair']:>7.2f}" if op.pairs is not None else f"{'':>7}"
            base_text = (f" {row['base_median_s']:>8.4f} {row['base_ratio']:>9.2f}" if "base" in op_times
                         else (f" {'':>8} {'':>9}" if args.base else ""))
            print(f"  {op.name:<44} {low:>8.4f} {middle:>9.4f} {row['achieved_Bps'] / 1e9:>6.1f} "
                  f"{row['roofline_ratio']:>6.2f} {row['median_roofline_ratio']:>9.2f} {row['speedup']:>8.2f} "
                  f"{pairs_text}{base_text}", flush=True)
    numba.set_num_threads(max_threads)
    write_json(os.path.join(args.out, "passes.json"), {"rows": rows})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=1_000_000, help="rows of C (default 1e6)")
    parser.add_argument("--d", type=positive_int, default=256, help="columns of C (default 256)")
    parser.add_argument("--nnz-per-row", type=positive_int, default=10, help="non-zeros per row (default 10)")
    parser.add_argument("--threads", type=thread_count, nargs="+", default=[1, 2],
                        help="thread counts (default 1 2, those above NUMBA_NUM_THREADS skipped)")
    parser.add_argument("--repeats", type=positive_int, default=15, help="timed repeats per pass (default 15)")
    parser.add_argument("--sandwich-repeats", type=positive_int, default=5,
                        help="timed repeats per sandwich (default 5)")
    parser.add_argument("--wide-k", type=positive_int, default=10,
                        help="k of the generic transposed pass Cᵀ Q (default 10, softmax_relu's m + 3 at m = 7)")
    parser.add_argument("--zipf-n", type=nonnegative_int, default=2_000_000,
                        help="rows of the Zipf-skewed bag-of-words matrix for the sandwich (0: skip; default 2e6)")
    parser.add_argument("--zipf-d", type=positive_int, default=1024, help="its columns (default 1024)")
    parser.add_argument("--probe-mb", type=positive_int, default=512, help="bandwidth probe array size in MiB")
    parser.add_argument("--base", default=None,
                        help="a source checkout whose kernels/ are timed beside ours in the same rounds")
    add_output_arguments(parser, plots=False)
    parser.add_argument("--quick", action="store_true",
                        help="n = 1e5, Zipf n = 1e4 (unless 0), 3 repeats, 64 MiB probe")
    args = parser.parse_args(argv)
    if args.base is not None and not os.path.isfile(os.path.join(args.base, "kernels", "csr.py")):
        parser.error(f"argument --base: {args.base!r} has no kernels/csr.py (expected a source checkout)")
    if args.quick:
        args.n, args.repeats, args.sandwich_repeats, args.probe_mb = 100_000, 3, 2, 64
        args.zipf_n = min(args.zipf_n, 10_000)
    return run(args)


if __name__ == "__main__":
    main()
