"""ns per pair update of the exact sparse sandwich Cᵀ diag(β) C, ours against another checkout's kernel.

    python bench/sandwich.py --base /tmp/main-copy      # n = 1e6 uniform 10/row at d = 256, Zipf 2e6 × 1024
    python bench/sandwich.py --quick

Two matrices: C of ``make_problem`` (short uniform rows, 10 per row, d = 256) and the bag-of-words
matrix of bench/matrices.py (Zipf row lengths, 5 per row on average, rows up to 1000 entries,
d = 1024). Per thread count: on the uniform matrix the sparse kernel over every row (``csr_sandwich_rows`` with every row listed); on
the Zipf matrix, which has long rows, the sparse kernel over its short rows (``csr_sandwich_rows``,
what ``CSRMatrix.sandwich`` runs beside the SYRK of the long rows) and ``CSRMatrix.sandwich``. With --base, the
base checkout's kernels/ run the same sparse calls, chunked as that checkout chunks them, in the same rounds (alternating, so a busy
machine slows both alike). ns per pair = seconds / Σ nnzᵢ(nnzᵢ + 1)/2 over the rows it covers.
Results go to sandwich.json in --out.
"""
import argparse
import os
import platform

import numba
import numpy as np

import fastnewton
from fastnewton.chunking import sandwich_chunk_rows
from fastnewton.kernels import sandwich as sandwich_kernels
from fastnewton.validation import as_input_matrix

try:
    from _args import add_output_arguments, nonnegative_int, positive_int, thread_count
    from _report import write_json
    from matrices import bag_of_words, pair_count
    from passes import ZIPF_MAX_ROW_NNZ, ZIPF_NNZ_PER_ROW, alternate, load_base_kernels, sandwich_rows_call
except ImportError:  # run as a module from the repository root
    from bench._args import add_output_arguments, nonnegative_int, positive_int, thread_count
    from bench._report import write_json
    from bench.matrices import bag_of_words, pair_count
    from bench.passes import ZIPF_MAX_ROW_NNZ, ZIPF_NNZ_PER_ROW, alternate, load_base_kernels, sandwich_rows_call


def load_base_chunking(checkout):
    """The other checkout's ``sandwich_chunk_rows`` (its chunk count is part of what its sandwich costs),
    its one relative import pointed at the base kernels that ``load_base_kernels`` imported; ours when
    the checkout has no fastnewton/chunking.py (a copy of kernels/ alone)."""
    path = os.path.join(checkout, "fastnewton", "chunking.py")
    if not os.path.isfile(path):
        print(f"{checkout} has no fastnewton/chunking.py: its kernels run with our chunks")
        return sandwich_chunk_rows
    with open(path, encoding="utf-8") as file:
        source = file.read().replace("from .kernels.", "from _base_kernels.")
    namespace = {"__name__": "_base_chunking"}
    exec(compile(source, path, "exec"), namespace)
    return namespace["sandwich_chunk_rows"]


def operations(label, C, beta, base, base_chunk_rows):
    """name → (ours, base or None, pair updates covered); each kernel runs with its own checkout's chunks."""
    d = C.d
    pairs = pair_count(C.indptr)
    chunk = sandwich_chunk_rows(C.n, d, pairs)
    base_chunk = base and base_chunk_rows(C.n, d, pairs)
    out, base_out = np.empty((d, d)), np.empty((d, d))
    every_row = np.arange(C.n, dtype=np.int64)
    if not C._dense_rows.size:
        return {f"{label}: sparse kernel, every row": (
            sandwich_rows_call(sandwich_kernels, C, every_row, beta, chunk, out),
            base and sandwich_rows_call(base, C, every_row, beta, base_chunk, base_out), pairs)}
    # With long rows, the sparse kernel over every row is not what runs (and takes seconds): its short rows are.
    rows = C._sparse_rows
    weights = beta[rows]
    short_pairs = int(C._row_pairs[rows].sum())
    short_chunk = sandwich_chunk_rows(rows.size, d, short_pairs)
    base_short_chunk = base and base_chunk_rows(rows.size, d, short_pairs)
    return {f"{label}: sparse kernel, short rows": (
                sandwich_rows_call(sandwich_kernels, C, rows, weights, short_chunk, out),
                base and sandwich_rows_call(base, C, rows, weights, base_short_chunk, base_out), short_pairs),
            f"{label}: CSRMatrix.sandwich (long rows by SYRK)": (lambda: C.sandwich(beta), None, pairs)}


def run(args):
    rng = np.random.default_rng(1)
    C_uniform, _, _ = fastnewton.make_problem(args.n, args.d, nnz_per_row=args.nnz_per_row, seed=0)
    matrices = {f"uniform {args.nnz_per_row}/row, d = {args.d}": as_input_matrix(C_uniform)}
    if args.zipf_n:
        matrices[f"Zipf rows, d = {args.zipf_d}"] = as_input_matrix(bag_of_words(
            args.zipf_n, args.zipf_d, nnz=ZIPF_NNZ_PER_ROW * args.zipf_n, max_row_nnz=ZIPF_MAX_ROW_NNZ, seed=0))
    base = load_base_kernels(args.base)[1] if args.base else None
    base_chunk_rows = load_base_chunking(args.base) if args.base else None
    ops = {}
    for label, C in matrices.items():
        print(f"{label}: n = {C.n:,}, nnz = {C.nnz:,}, {pair_count(C.indptr):.3g} pairs, "
              f"{C._dense_rows.size:,} rows by SYRK")
        ops.update(operations(label, C, rng.standard_normal(C.n), base, base_chunk_rows))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba {numba.__version__}"
          + (f"; base kernels from {args.base}" if args.base else ""))
    rows = []
    threads = [t for t in args.threads if t <= numba.config.NUMBA_NUM_THREADS]
    for n_threads in threads:
        numba.set_num_threads(n_threads)
        print(f"\n{n_threads} thread(s)\n  {'operation':<58} {'ours s':>8} {'ns/pair':>7}"
              + (f" {'base s':>8} {'ns/pair':>7} {'base/ours':>9}" if base else ""))
        for name, (ours, base_fn, pairs) in ops.items():
            functions = {"ours": ours} if base_fn is None else {"ours": ours, "base": base_fn}
            times = {key: float(np.median(value)) for key, value in alternate(functions, args.repeats).items()}
            row = {"operation": name, "threads": n_threads, "pairs": pairs, "median_s": times["ours"],
                   "ns_per_pair": 1e9 * times["ours"] / pairs}
            text = f"  {name:<58} {times['ours']:>8.4f} {row['ns_per_pair']:>7.2f}"
            if "base" in times:
                row.update(base_median_s=times["base"], base_ns_per_pair=1e9 * times["base"] / pairs,
                           base_ratio=times["base"] / times["ours"])
                text += f" {times['base']:>8.4f} {row['base_ns_per_pair']:>7.2f} {row['base_ratio']:>9.2f}"
            rows.append(row)
            print(text, flush=True)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    write_json(os.path.join(args.out, "sandwich.json"), {"rows": rows})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=1_000_000, help="rows of the uniform C (default 1e6)")
    parser.add_argument("--d", type=positive_int, default=256, help="its columns (default 256)")
    parser.add_argument("--nnz-per-row", type=positive_int, default=10, help="its non-zeros per row (default 10)")
    parser.add_argument("--zipf-n", type=nonnegative_int, default=2_000_000,
                        help="rows of the Zipf bag-of-words matrix (0: skip; default 2e6)")
    parser.add_argument("--zipf-d", type=positive_int, default=1024, help="its columns (default 1024)")
    parser.add_argument("--threads", type=thread_count, nargs="+", default=[1, 2],
                        help="thread counts (default 1 2, those above NUMBA_NUM_THREADS skipped)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per operation (default 5)")
    parser.add_argument("--base", default=None, help="a source checkout whose kernels/ run beside ours")
    add_output_arguments(parser, plots=False)
    parser.add_argument("--quick", action="store_true", help="n = 1e5, Zipf n = 2e4 (unless 0), 2 repeats")
    args = parser.parse_args(argv)
    if args.base is not None and not os.path.isfile(os.path.join(args.base, "kernels", "sandwich.py")):
        parser.error(f"argument --base: {args.base!r} has no kernels/sandwich.py (expected a source checkout)")
    if args.quick:
        args.n, args.repeats = 100_000, 2
        args.zipf_n = min(args.zipf_n, 20_000)
    return run(args)


if __name__ == "__main__":
    main()
