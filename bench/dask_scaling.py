"""``fastnewton.dask.solve`` on a LocalCluster against single-machine ``fastnewton.solve`` on the same data.

    python bench/dask_scaling.py                          # nnz 1e6 1e7 1e8, d = 64, 1 and 2 workers
    python bench/dask_scaling.py --quick                  # tiny sizes, under a minute
    python bench/dask_scaling.py --nnz 1e6 1e7 --workers 1 2 --hessian sketch

The planted problem is made on the workers, block by block: C's row block p is a random CSR
matrix with --nnz-per-row distinct columns per row and standard normal values, drawn from
``default_rng([seed, p, 0])``, so the same blocks come out whatever the worker count and the
driver never holds C. x_true ~ N(0, 1/k) (k non-zeros per row, so u = C x_true ≈ N(0, 1)) is
made on the driver; the target needs the global softmax normaliser, so each block first returns
(max z_p, Σ exp(z_p − max z_p)) of z = u (ReLU(u) for relu_softmax), the driver forms the
logsumexp, and the blocks then make b_p = exp(z_p − lse)·(1 + noise·N(0, 1)) clipped at 0
(noise from ``default_rng([seed, p, 1])``). For softmax_relu, V's blocks are uniform in
[−0.5, 1] (``default_rng([seed, p, 2])``), the blocks return V_pᵀ softmax(u)_p (m-vectors) and
b = ReLU(Σ_p …)·(1 + noise·N(0, 1)) is formed on the driver. Only scalars, d- and m-vectors
reach the driver while the problem is built.

For every worker count a fresh ``LocalCluster(n_workers=w, threads_per_worker=1,
processes=True)`` runs, per nnz, --iterations Newton iterations of ``fastnewton.dask.solve`` from
x0 = 0 (--start; relu_softmax starts from a fixed random x0, since x = 0 is a dead stationary
point of it) with tol tiny (so every iteration is a real one; the noisy target keeps the
optimum's residual non-zero). Each cluster first solves a tiny problem once, so Numba
compilation (or loading from its cache) in the worker processes is never timed. The blocks of C
and b are gathered to the driver once per nnz (a scipy CSR; 1e8 non-zeros is ~1.2 GB), and after
the clusters are closed ``fastnewton.solve`` runs the same iterations there with --threads
threads (default: every core), the same start, strategy and seed; the max relative difference
of the two final x is printed (``exact`` should agree to ~1e-10; ``sketch``/``pcg`` draw their
samples per block, so after a fixed few iterations from the same start their iterates differ by
the sketch's error, ~10%).

Per iteration (wall time = the difference of consecutive history ``time`` stamps; its median
over the timed iterations, and every other number from that median iteration, so the columns
add up): the iteration time; for Dask the rounds, tasks, bytes moved, the wall time spent in
rounds and the slowest block's compute time summed over the rounds (``block_seconds``).
worker = block seconds × ⌈blocks / workers⌉ is the kernel time on the critical path (a worker
runs its blocks back to back; equal blocks). overhead = round − worker seconds is scheduling +
serialisation + transfer (10–25 ms per round on a 2-core machine); driver = iteration − round
seconds is the work on the driver (Cholesky, the line-search logic). ratio = Dask iteration
time / single-machine time.

Outputs in --out (default bench/results/):
  dask_scaling.csv   one row per (nnz, backend, workers): the medians above, phase seconds, max |Δx|
  dask_scaling.png   per-iteration time vs nnz (one line per worker count and single-machine),
                     bytes moved per iteration vs nnz, and the ratio Dask / single vs nnz
Needs the ``dask`` extra (dask[array], distributed) and for the plots and progress bar the
``bench`` extra (matplotlib, tqdm). Timings on a shared machine are noisy: compare ratios within
one run.
"""
import argparse
import logging
import math
import os
import platform
import sys
import warnings

import numba
import numpy as np
import scipy.sparse as sp

import fastnewton

try:
    from _args import add_output_arguments, nonnegative_float, nonnegative_int, positive_int, thread_count
    from _report import caption, command_line, make_progress, write_csv
except ImportError:  # imported as bench.dask_scaling from the repository root
    from bench._args import add_output_arguments, nonnegative_float, nonnegative_int, positive_int, thread_count
    from bench._report import caption, command_line, make_progress, write_csv

MODELS = ("softmax", "relu_softmax", "softmax_relu")
STRATEGIES = ("exact", "sketch", "pcg")
STARTS = ("zeros", "random", "auto")
PHASES = ("forward", "model", "gradient", "hessian", "solve", "line_search")
# Per-iteration counters the Dask solver adds to each history record (fastnewton.dask.rounds).
ROUND_COUNTERS = ("rounds", "tasks", "bytes_moved", "round_seconds", "block_seconds")
NNZ_SWEEP = (10**6, 10**7, 10**8)
QUICK_NNZ_SWEEP = (2 * 10**4, 10**5)
QUICK_D = 16
QUICK_ITERATIONS = 2
# Tiny enough that the warm-up solve costs well under a second, big enough that every block has rows.
WARMUP_ROWS_PER_BLOCK = 200
# Outputs of softmax_relu (m); make_problem's default min(d, 16).
VALUE_COLUMNS = 16
# Far below any reachable ‖∇L‖/g_ref, so the solve runs exactly --iterations iterations.
TINY_TOL = 1e-300
CSV_NAME = "dask_scaling.csv"
PNG_NAME = "dask_scaling.png"


# -- worker side: the planted problem, block by block (module level, so the workers can run them) -----
def random_csr_block(rows, d, nnz_per_row, seed, index):
    """Rows of C for block ``index``: ``nnz_per_row`` distinct uniform columns per row, N(0, 1) values.

    Floyd's sampling, vectorised over rows: a uniform k-subset of range(d) in k draws per row."""
    rng = np.random.default_rng([seed, index, 0])
    k = nnz_per_row
    columns = np.empty((rows, k), dtype=np.int32)
    for i, top in enumerate(range(d - k, d)):
        pick = rng.integers(0, top + 1, size=rows, dtype=np.int32)
        taken = (columns[:, :i] == pick[:, None]).any(axis=1)
        columns[:, i] = np.where(taken, top, pick)
    columns.sort(axis=1)
    indptr = np.arange(0, rows * k + 1, k, dtype=np.int64 if rows * k >= 2**31 else np.int32)
    block = sp.csr_matrix((rng.standard_normal(rows * k), columns.ravel(), indptr), shape=(rows, d))
    block.has_sorted_indices = True
    return block


def _logits(C_block, x_true, relu):
    u = np.asarray(C_block @ x_true)
    return np.maximum(u, 0.0) if relu else u


def logit_parts(C_block, x_true, relu):
    """(max z, Σ exp(z − max z)) of the block's z = C_p x_true (ReLU'd for relu_softmax): two scalars."""
    z = _logits(C_block, x_true, relu)
    top = float(z.max())
    return top, float(np.exp(z - top).sum())


def planted_target(C_block, x_true, lse, relu, noise, seed, block_id=None):
    """b_p = softmax(z)_p = exp(z_p − lse), times (1 + noise·N(0, 1)) and clipped at 0, for one block."""
    b = np.exp(_logits(C_block, x_true, relu) - lse)
    if noise > 0:
        rng = np.random.default_rng([seed, block_id[0], 1])
        b = np.maximum(b * (1.0 + noise * rng.standard_normal(b.shape[0])), 0.0)
    return b


def value_block(C_block, m, seed, block_id=None):
    """softmax_relu's V rows for one block: uniform in [−0.5, 1] (as make_problem)."""
    return np.random.default_rng([seed, block_id[0], 2]).uniform(-0.5, 1.0, size=(C_block.shape[0], m))


def relu_outputs(C_block, V_block, x_true, lse):
    """The block's share V_pᵀ softmax(u)_p of softmax_relu's outputs (an m-vector)."""
    return V_block.T @ np.exp(_logits(C_block, x_true, False) - lse)


# -- driver side ---------------------------------------------------------------------------------------
def row_chunks(n, blocks):
    """n rows split into ``blocks`` near-equal chunks (the larger ones first)."""
    base, extra = divmod(n, blocks)
    return tuple(base + 1 if p < extra else base for p in range(blocks))


def log_sum_exp(parts):
    """The global logsumexp from the blocks' (max, Σ exp(z − max)), combined in block order."""
    top = max(block_top for block_top, _ in parts)
    return top + math.log(math.fsum(total * math.exp(block_top - top) for block_top, total in parts))


def build_problem(client, model, n, d, nnz_per_row, blocks, noise, seed):
    """(C, b, V) as Dask collections persisted on the workers; only scalars and m-vectors reach the driver."""
    import dask
    import dask.array as da

    chunks = row_chunks(n, blocks)
    make = dask.delayed(random_csr_block, pure=True)
    C = da.concatenate([da.from_delayed(make(rows, d, nnz_per_row, seed, p), shape=(rows, d), dtype=np.float64,
                                        meta=sp.csr_matrix((0, d))) for p, rows in enumerate(chunks)], axis=0)
    C = client.persist(C)
    C_blocks = list(C.to_delayed()[:, 0])
    rng = np.random.default_rng(seed)
    x_true = rng.standard_normal(d) / math.sqrt(nnz_per_row)
    relu = model == "relu_softmax"
    parts = client.gather(client.compute([dask.delayed(logit_parts, pure=True)(block, x_true, relu)
                                          for block in C_blocks]))
    lse = log_sum_exp(parts)
    if model == "softmax_relu":
        V = client.persist(C.map_blocks(value_block, VALUE_COLUMNS, seed, chunks=(chunks, (VALUE_COLUMNS,)),
                                        dtype=np.float64, meta=np.empty((0, 0))))
        outputs = client.gather(client.compute([
            dask.delayed(relu_outputs, pure=True)(block, V_block, x_true, lse)
            for block, V_block in zip(C_blocks, V.to_delayed()[:, 0])]))
        y = np.zeros(VALUE_COLUMNS)
        for share in outputs:  # block order: the same b whatever the worker count
            y += share
        b = np.maximum(y, 0.0)
        if noise > 0:
            b = np.maximum(b * (1.0 + noise * rng.standard_normal(b.shape[0])), 0.0)
        return C, b, V
    b = C.map_blocks(planted_target, x_true, lse, relu, noise, seed, drop_axis=1, chunks=(chunks,),
                     dtype=np.float64, meta=np.empty(0))
    return C, client.persist(b), None


def gather_problem(client, C, b, V):
    """C as one scipy CSR on the driver (blocks stacked in order), b and V as NumPy arrays."""
    C_blocks = client.gather(client.compute(list(C.to_delayed()[:, 0])))
    C_local = sp.vstack(C_blocks, format="csr")
    del C_blocks
    b_local = client.compute(b).result() if hasattr(b, "dask") else b
    V_local = client.compute(V).result() if V is not None else None
    return C_local, b_local, V_local


def starting_point(args):
    """x0 of both solves: "zeros", "auto", or a fixed draw N(0, 1/k) (k = nnz per row), the same for both."""
    if args.start == "random":
        return np.random.default_rng([args.seed, 3]).standard_normal(args.d) / math.sqrt(args.nnz_per_row)
    return args.start


def solve_keywords(args, iterations):
    return dict(model=args.model, x0=starting_point(args), hessian=args.hessian, tol=TINY_TOL,
                max_iter=iterations, seed=args.seed)


def run_solve(solver, C, b, V, iterations, args, **extra):
    """A solve of exactly ``iterations`` iterations (the max_iter warning is expected and silenced)."""
    keywords = solve_keywords(args, iterations)
    if V is not None:
        keywords["V"] = V
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        return solver(C, b, **keywords, **extra)


def iteration_stats(res, iterations, blocks_per_worker=1):
    """Wall time per timed iteration (history records 1 … iterations): the median, min and max; phase
    seconds and round counters of the median iteration itself (the lower median for an even count), so
    that iteration = round + driver and round = worker + overhead hold within one row.

    ``blocks_per_worker``: the most blocks one worker runs back to back in a round; the kernel time on
    the critical path is about that many times the slowest block's (equal blocks)."""
    history = res.history
    stats = {"iterations": len(history) - 1, "n_iter": res.n_iter, "status": res.status.name,
             "final_loss": res.loss, "final_rel_grad_norm": res.rel_grad_norm}
    if stats["iterations"] < iterations:
        print(f"note: the solve stopped after {stats['iterations']} of {iterations} iterations "
              f"({res.status.name}); the statistics are over those", file=sys.stderr)
    if len(history) < 2:
        return stats
    walls = np.array([history[i]["time"] - history[i - 1]["time"] for i in range(1, len(history))])
    middle = int(np.argsort(walls, kind="stable")[(len(walls) - 1) // 2])
    record = history[middle + 1]
    stats.update(iteration_median_s=float(walls[middle]), iteration_min_s=float(walls.min()),
                 iteration_max_s=float(walls.max()))
    for phase in PHASES:
        stats[f"{phase}_median_s"] = float(record["seconds"].get(phase, 0.0))
    if all(key in record for key in ROUND_COUNTERS):
        for key in ROUND_COUNTERS:
            stats[f"{key}_per_iter"] = float(record[key])
        worker = blocks_per_worker * record["block_seconds"]
        stats.update(worker_seconds_per_iter=worker, overhead_seconds_per_iter=record["round_seconds"] - worker,
                     driver_seconds_per_iter=float(walls[middle]) - record["round_seconds"])
    return stats


def start_cluster(workers):
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        # With the dashboard off the scheduler still serves its bare HTTP routes (health checks) on 8787,
        # moving to a free port when another cluster holds it: harmless, so not worth a warning.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
    return cluster, Client(cluster)


def warm_up_dask(client, args, blocks):
    """One tiny solve on the cluster, so the worker processes compile (or load) every kernel before timing."""
    import fastnewton.dask

    rows = WARMUP_ROWS_PER_BLOCK * blocks
    C, b, V = build_problem(client, args.model, rows, args.d, args.nnz_per_row, blocks, args.noise, args.seed)
    run_solve(fastnewton.dask.solve, C, b, V, 1, args, client=client)


def warm_up_single(args):
    rows = WARMUP_ROWS_PER_BLOCK
    planted = fastnewton.make_problem(rows, args.d, nnz_per_row=args.nnz_per_row, model=args.model,
                                      noise=args.noise, seed=args.seed)
    V = planted.V
    run_solve(fastnewton.solve, planted[0], planted[1], V, 1, args, n_threads=args.threads)


def size_fields(args, nnz):
    n = max(1, nnz // args.nnz_per_row)
    return {"nnz_target": nnz, "n": n, "d": args.d, "nnz": n * args.nnz_per_row, "nnz_per_row": args.nnz_per_row,
            "blocks": args.blocks, "model": args.model, "hessian": args.hessian, "start": args.start}


def run(args):
    import fastnewton.dask

    points = len(args.workers) * len(args.nnz) + len(args.nnz)
    progress, close = make_progress(points, not args.no_progress, "dask_scaling")
    rows, gathered, dask_x = [], {}, {}
    for workers in args.workers:
        cluster, client = start_cluster(workers)
        try:
            warm_up_dask(client, args, args.blocks)
            for nnz in args.nnz:
                fields = size_fields(args, nnz)
                progress(f"dask {workers} worker(s), nnz {nnz:.0e}")
                C, b, V = build_problem(client, args.model, fields["n"], args.d, args.nnz_per_row, args.blocks,
                                        args.noise, args.seed)
                res = run_solve(fastnewton.dask.solve, C, b, V, args.iterations, args, client=client)
                dask_x[nnz, workers] = res.x
                rows.append(dict(fields, backend="dask", workers=workers, threads=1,
                                 **iteration_stats(res, args.iterations, -(-args.blocks // workers))))
                if nnz not in gathered:
                    gathered[nnz] = gather_problem(client, C, b, V)
                del C, b, V, res
        finally:
            client.close()
            cluster.close()
    # The baseline runs with the clusters gone: its 2 threads do not compete with idle worker processes.
    warm_up_single(args)
    for nnz in args.nnz:
        progress(f"single {args.threads} thread(s), nnz {nnz:.0e}")
        C, b, V = gathered.pop(nnz)
        res = run_solve(fastnewton.solve, C, b, V, args.iterations, args, n_threads=args.threads)
        single = dict(size_fields(args, nnz), backend="single", workers=0, threads=args.threads,
                      **iteration_stats(res, args.iterations))
        scale = max(float(np.max(np.abs(res.x))), np.finfo(float).tiny)
        for row in rows:
            if row["backend"] == "dask" and row["nnz_target"] == nnz:
                row["max_rel_diff_x"] = float(np.max(np.abs(dask_x[nnz, row["workers"]] - res.x))) / scale
                if "iteration_median_s" in single and "iteration_median_s" in row:
                    row["ratio_vs_single"] = row["iteration_median_s"] / single["iteration_median_s"]
        rows.append(single)
        del C, b, V, res
    close()
    rows.sort(key=lambda row: (row["nnz_target"], row["backend"] != "single", row["workers"]))
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, CSV_NAME), rows)
    report(rows, args)
    if not args.no_plot:
        plot(rows, args)
    return rows


def _format(row, key, spec, scale=1.0):
    value = row.get(key)
    return "-" if value is None else format(value * scale, spec)


def report(rows, args):
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba {numba.__version__}; "
          f"model {args.model}, hessian {args.hessian}, d = {args.d}, {args.nnz_per_row} nnz/row, "
          f"{args.blocks} blocks, {args.iterations} timed iterations from x0 = {args.start} (medians per iteration); "
          "timings on a shared machine are noisy")
    print("worker = slowest block's seconds × blocks per worker (kernels on the critical path); overhead = round − "
          "worker seconds (scheduler, serialisation, transfer);\ndriver = iteration − round seconds; "
          "ratio = Dask / single iteration time")
    header = (f"{'nnz':>8} {'backend':<8} {'w':>2} {'iter s':>8} {'ratio':>6} {'rounds':>6} {'tasks':>6} "
              f"{'KB/iter':>8} {'round s':>8} {'worker s':>8} {'ovhd s':>8} {'driver s':>8} {'max|Δx|/|x|':>11}")
    print(header)
    for row in rows:
        print(f"{row['nnz']:>8.0e} {row['backend']:<8} {row['workers'] or row['threads']:>2} "
              f"{_format(row, 'iteration_median_s', '8.3f')} {_format(row, 'ratio_vs_single', '6.2f')} "
              f"{_format(row, 'rounds_per_iter', '6.0f')} {_format(row, 'tasks_per_iter', '6.0f')} "
              f"{_format(row, 'bytes_moved_per_iter', '8.1f', 1e-3)} {_format(row, 'round_seconds_per_iter', '8.3f')} "
              f"{_format(row, 'worker_seconds_per_iter', '8.3f')} {_format(row, 'overhead_seconds_per_iter', '8.3f')} "
              f"{_format(row, 'driver_seconds_per_iter', '8.3f')} {_format(row, 'max_rel_diff_x', '11.1e')}")
    print("(w: workers for dask, threads for single)")


def plot(rows, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def line(backend, workers):
        points = sorted((r for r in rows if r["backend"] == backend and r["workers"] == workers
                         and "iteration_median_s" in r), key=lambda r: r["nnz"])
        return points

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4))
    time_ax, bytes_ax, ratio_ax = axes
    single = line("single", 0)
    if single:
        time_ax.plot([r["nnz"] for r in single], [r["iteration_median_s"] for r in single], "k--", marker="s",
                     label=f"single machine, {args.threads} thread(s)")
    for workers in args.workers:
        points = line("dask", workers)
        if not points:
            continue
        xs = [r["nnz"] for r in points]
        label = f"Dask, {workers} worker(s)"
        time_ax.plot(xs, [r["iteration_median_s"] for r in points], marker="o", label=label)
        bytes_ax.plot(xs, [r["bytes_moved_per_iter"] for r in points], marker="o", label=label)
        ratios = [(r["nnz"], r["ratio_vs_single"]) for r in points if "ratio_vs_single" in r]
        if ratios:
            ratio_ax.plot(*zip(*ratios), marker="o", label=label)
    ratio_ax.axhline(1.5, color="gray", linestyle=":", label="target 1.5×")
    ratio_ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
    titles = ("per-iteration time (median)", "bytes moved per iteration (Dask)", "Dask / single per-iteration time")
    ylabels = ("seconds", "bytes", "ratio")
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nnz(C)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{args.model}, {args.hessian}, d = {args.d}, {args.blocks} blocks", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    moved = [r["bytes_moved_per_iter"] for r in rows if "bytes_moved_per_iter" in r]
    if moved:  # the traffic hardly depends on nnz: show it against a decade either side, not a 0.1% band
        bytes_ax.set_ylim(min(moved) / 10, max(moved) * 10)
    fig.suptitle(f"Dask LocalCluster (single-threaded workers) vs solve with {args.threads} threads on the same "
                 f"data: planted {args.model}, CSR with {args.nnz_per_row} non-zeros per row, d = {args.d}, "
                 f"{args.blocks} row blocks", fontsize=9)
    caption(fig, command_line())
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = os.path.join(args.out, PNG_NAME)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def default_threads():
    return max(1, min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnz", type=positive_int, nargs="+", default=list(NNZ_SWEEP),
                        help="nnz(C) of the sweep (default 1e6 1e7 1e8); n = nnz / nnz-per-row")
    parser.add_argument("--d", type=positive_int, default=64, help="columns of C (default 64)")
    parser.add_argument("--nnz-per-row", type=positive_int, default=10,
                        help="non-zeros per row of C, distinct columns (default 10; at most d)")
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2],
                        help="LocalCluster worker counts, one single-threaded process each (default 1 2)")
    parser.add_argument("--blocks", type=positive_int, default=None,
                        help="row blocks of C (default: the largest worker count; at most n)")
    parser.add_argument("--model", choices=MODELS, default="softmax", help="model (default softmax)")
    parser.add_argument("--hessian", choices=STRATEGIES, default="exact", help="Hessian strategy (default exact)")
    parser.add_argument("--iterations", type=positive_int, default=3,
                        help="Newton iterations timed per solve (default 3)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="threads of the single-machine solve (default: every core)")
    parser.add_argument("--start", choices=STARTS, default=None,
                        help="x0 of both solves: zeros, a fixed random draw, or solve's auto start "
                             "(default zeros; random for relu_softmax, whose x = 0 is a dead stationary point)")
    parser.add_argument("--noise", type=nonnegative_float, default=1e-2,
                        help="relative noise on the planted target (default 1e-2)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="problem and solver seed (default 0)")
    add_output_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quick", action="store_true",
                        help=f"nnz {' '.join(f'{v:.0e}' for v in QUICK_NNZ_SWEEP)} at d = {QUICK_D}, "
                             f"{QUICK_ITERATIONS} iterations: under a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.nnz, args.d, args.iterations = list(QUICK_NNZ_SWEEP), QUICK_D, QUICK_ITERATIONS
    if args.nnz_per_row > args.d:
        parser.error(f"argument --nnz-per-row: must be at most --d = {args.d}, got {args.nnz_per_row}")
    if args.start is None:
        args.start = "random" if args.model == "relu_softmax" else "zeros"
    args.nnz = sorted(set(args.nnz))
    args.workers = sorted(set(args.workers))
    args.blocks = args.blocks or max(args.workers)
    smallest_n = min(args.nnz) // args.nnz_per_row
    if smallest_n < args.blocks:
        parser.error(f"argument --nnz: {min(args.nnz)} non-zeros at {args.nnz_per_row} per row give "
                     f"{smallest_n} rows, fewer than the {args.blocks} blocks")
    if args.threads is None:
        args.threads = default_threads()
    for module in ("dask.array", "distributed"):
        try:
            __import__(module)
        except ImportError:
            parser.error(f"{module} is not installed (pip install -e \".[dask]\")")
    return args


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
