"""CPU scaling of one Newton iteration and of its phases: time vs threads, nnz(C) and d.

    python bench/scaling.py                       # CSR and dense C, softmax, exact Hessian
    python bench/scaling.py --quick               # tiny sizes, well under a minute
    python bench/scaling.py --strategies exact sketch pcg --models softmax relu_softmax softmax_relu

Three sweeps for every format × model × strategy:

  nnz sweep     nnz(C) over --nnz at d = --fixed-d, with --size-threads threads (default: the most);
  d sweep       d over --dims at nnz(C) = --fixed-nnz, with --size-threads threads;
  thread sweep  threads over --threads (default 1, 2, 4, … up to os.cpu_count()) at
                (--fixed-nnz, --fixed-d).

Problems are planted (``fastnewton.make_problem``, seed 0): CSR with --nnz-per-row entries per
row and n = nnz / nnz-per-row, or dense C with n = nnz / d. Each point is evaluated at x_true / 2
(non-zero residual, non-trivial Hessian). One Newton iteration is what the driver does per step:
forward pass u = Cx, model vectors, fused gradient pass Cᵀ[q, U], Hessian build (strategy), factor /
solve with the smallest Levenberg–Marquardt damping μ ≥ 1e-8·max|diag H| that factors, and the
line search's pass C·Δx plus one loss trial. Each phase is timed by fastnewton's PhaseTimer over
--repeats iterations (after one untimed warm-up iteration, so JIT compilation is never timed):
the CSV holds the median, min, max and quartiles of every phase and of the whole iteration.

Measured in the same run, per thread count: the read bandwidth (probes.read_bandwidth) and the
float64 GEMM rate (probes.gemm_rate, BLAS limited to the same thread count). The passes over C
are compared with the bandwidth roofline: bytes moved / bandwidth, where the bytes are C
(CSR indptr + indices + data, or n·d·itemsize dense) plus the length-n vectors read or written
(u for the forward pass; Q = [q, U], n × (k+1), for the gradient pass) and the length-d ones.
``*_roofline_fraction`` = (bytes / bandwidth) / time, 1.0 being the roof; the target is ≥ 1/1.5.
Above 1 means C fits in cache (the --quick sizes do): the roofline is about C streamed from memory.

Outputs in --out (default bench/results/ of this repository):
  scaling.csv               one row per (sweep, point): the phase statistics, probes and roofline;
                            the shared point (fixed nnz, fixed d, most threads) appears once per sweep
  probes.csv                bandwidth and GEMM rate per thread count
  time_vs_nnz.png           log-log per-iteration and per-phase time vs nnz; the legend gives the growth
                            exponent over the largest step of the sweep (fixed costs dominate small sizes)
  time_vs_d.png             the same vs d
  speedup_vs_threads.png    speed-up over 1 thread per phase, with the ideal line
  roofline_vs_threads.png   achieved fraction of the bandwidth roofline of the passes over C
Plots need matplotlib and the progress bar tqdm (``pip install -e ".[bench]"``); without
matplotlib pass --no-plot. Timings on a shared machine are noisy: compare ratios within one run.
"""
import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass

import numba
import numpy as np

import fastnewton
from fastnewton.hessian import BUILDERS
from fastnewton.newton import SolveOptions, column_scale, newton_step
from fastnewton.sketching import sample_size
from fastnewton.threads import thread_limits
from fastnewton.timing import PhaseTimer

try:
    from _args import add_output_arguments, nonnegative_int, positive_int, thread_count
    from _report import caption, command_line, make_progress, write_csv
    from probes import gemm_rate, read_bandwidth
except ImportError:  # imported as bench.scaling from the repository root
    from bench._args import add_output_arguments, nonnegative_int, positive_int, thread_count
    from bench._report import caption, command_line, make_progress, write_csv
    from bench.probes import gemm_rate, read_bandwidth

MODELS = ("softmax", "relu_softmax", "softmax_relu")
FORMATS = ("csr", "dense")
STRATEGIES = ("exact", "sketch", "pcg")
# The driver's phases (fastnewton.newton): forward = u = Cx only, model = q, β, U, S from u.
PHASES = ("forward", "model", "gradient", "hessian", "solve", "line_search")
PLOTTED_PHASES = ("iteration", "forward", "gradient", "hessian", "solve")
# The grids of the benchmark suite: nnz sweep at fixed d, d sweep at fixed nnz.
NNZ_SWEEP = (10**5, 10**6, 10**7)
FIXED_D = 64
D_SWEEP = (32, 64, 128, 256, 512, 1024)
FIXED_NNZ = 10**6
NNZ_PER_ROW = 10
# Small grids for --quick: seconds per point, every code path still runs (the pytest suite has its own).
QUICK_NNZ_SWEEP = (10**4, 3 * 10**4, 10**5)
QUICK_FIXED_D = 32
QUICK_D_SWEEP = (16, 32, 64)
QUICK_FIXED_NNZ = 3 * 10**4
# ε of the sketched strategies, as in fastnewton.solve's default.
SKETCH_EPS = 0.5


# -- one benchmark point: a planted problem evaluated at x_true / 2 ---------------------------------
@dataclass
class Case:
    """A planted problem, the evaluation point x and its Evaluation (u, vectors, grad, P)."""

    format: str
    model: str
    nnz_target: int
    problem: fastnewton.Problem
    x: np.ndarray
    ev: object

    @property
    def matrix(self):
        return self.problem.matrix

    def describe(self):
        """Self-describing fields for CSV rows and pytest-benchmark's extra_info."""
        matrix = self.matrix
        dtype = matrix.array.dtype if matrix.format == "dense" else matrix.data.dtype
        return {"format": self.format, "model": self.model, "n": matrix.n, "d": matrix.d,
                "nnz": matrix.nnz, "nnz_target": self.nnz_target, "k": self.ev.S.shape[0],
                "dtype": str(dtype)}


def make_case(fmt, model, nnz, d, nnz_per_row=NNZ_PER_ROW, seed=0):
    """The planted problem with about ``nnz`` non-zeros: CSR with n = nnz / nnz_per_row, or dense n = nnz / d."""
    if fmt == "dense":
        planted = fastnewton.make_problem(max(1, nnz // d), d, model=model, dense=True, seed=seed)
    elif fmt == "csr":
        per_row = min(nnz_per_row, d)
        planted = fastnewton.make_problem(max(1, nnz // per_row), d, nnz_per_row=per_row, model=model, seed=seed)
    else:
        raise ValueError(f"format must be 'csr' or 'dense', got {fmt!r}")
    C, b, x_true = planted
    V = planted.V
    problem = fastnewton.Problem(C, b, model=model, V=V)
    # Halfway to the planted optimum: at x_true the residual (and so half the Hessian) vanishes.
    x = problem.as_point(x_true / 2)
    return Case(fmt, model, nnz, problem, x, problem.evaluate(x))


def size_id(nnz, d):
    """'nnz1e6-d64': short, stable, greppable names (pytest ids, plot labels)."""
    exponent = int(math.floor(math.log10(nnz)))
    mantissa = nnz / 10**exponent
    mantissa = f"{mantissa:.0f}" if mantissa == round(mantissa) else f"{mantissa:g}"
    return f"nnz{mantissa}e{exponent}-d{d}"


# -- a Hessian strategy set up at a case ------------------------------------------------------------
@dataclass
class StrategySetup:
    """What the driver holds for one step: the builder, options, g_ref, the system at case.ev and μ."""

    name: str
    build: object
    options: SolveOptions
    g_ref: float
    system: object
    mu: float

    def describe(self, case):
        info = {"strategy": self.name, "mu": self.mu}
        if self.name != "exact":
            info["sample_size"] = self.options.sketch_size or sample_size(case.matrix.d, self.options.eps)
        info.update(self.system.info)
        return info


def accepted_damping(problem, ev, system, mu=0.0):
    """The damping μ of the driver's step from ev (``fastnewton.newton.newton_step``)."""
    step = newton_step(problem, ev, system, mu)
    if step is None:
        raise RuntimeError("no damping gives an accepted Newton step")
    return step.damping


def setup_strategy(case, strategy, rng, eps=SKETCH_EPS, sketch_size=None):
    options = SolveOptions(hessian=strategy, tol=1e-8, max_iter=1, eps=eps, sketch_size=sketch_size,
                           seed=None, callback=None, verbose=False, column_scale=column_scale(case.problem))
    g_ref = float(np.linalg.norm(case.problem.gradient_at_zero())) or float(np.linalg.norm(case.ev.grad))
    build = BUILDERS[strategy]
    # A stateful builder (a class: sketch's and pcg's keep a leverage reference) is made once per
    # setup, so repeated builds time an iteration of a running solve.
    build = build() if isinstance(build, type) else build
    system = build(case.problem, case.ev, rng, options, g_ref)
    return StrategySetup(strategy, build, options, g_ref, system, accepted_damping(case.problem, case.ev, system))


# -- the phases ------------------------------------------------------------------------------------
def forward_phase(case):
    """(a) forward pass u = Cx and the model's row vectors up to the columns Q (the kept arrays)."""
    problem, matrix, x = case.problem, case.matrix, case.x
    return lambda: problem.row_vectors(matrix.matvec(x))[1]


def gradient_phase(case):
    """(b) the fused gradient pass Cᵀ[q, U]."""
    matrix, Q = case.matrix, case.ev.kept["Q"]
    return lambda: matrix.rmatmat(Q)


def hessian_phase(case, setup, rng):
    """(c) the strategy's Hessian build (exact sandwich, or the sketched matrix for sketch / pcg)."""
    return lambda: setup.build(case.problem, case.ev, rng, setup.options, setup.g_ref)


def solve_phase(case, setup):
    """(d) factor and solve (H + μI) p = −g (pcg: preconditioned CG on the exact Hessian)."""
    system, g, mu = setup.system, case.ev.grad, setup.mu
    return lambda: system.solve(g, mu)


def newton_iteration(case, setup, rng, timer):
    """One driver iteration at case.x, each phase timed into ``timer``; returns the NewtonSystem built.

    As fastnewton.newton: evaluate (forward, model, gradient), build the system, then the driver's
    damped step from setup.mu (``newton_step``: solve, the line search's one pass C·Δx and its trials).
    """
    problem = case.problem
    problem.clear_cache()  # Problem caches its last point; every iteration pays its passes
    ev = problem.evaluate(case.x, timer=timer)
    with timer("hessian"):
        system = setup.build(problem, ev, rng, setup.options, setup.g_ref)
    if newton_step(problem, ev, system, setup.mu, timer=timer) is None:
        raise RuntimeError("no damping gives an accepted Newton step")
    return system


def iteration_phase(case, setup, rng):
    """A full Newton iteration, for pytest-benchmark (phase times discarded)."""
    timer = PhaseTimer()

    def run():
        newton_iteration(case, setup, rng, timer)
        timer.pop()
    return run


def pass_bytes(case):
    """Bytes the two passes over C must move: C once plus their length-n and length-d operands."""
    matrix, k1 = case.matrix, case.ev.kept["Q"].shape[1]
    return {"forward": matrix.nbytes + 8 * (matrix.n + matrix.d),
            "gradient": matrix.nbytes + 8 * k1 * (matrix.n + matrix.d)}


def summarize(seconds):
    """Median, min, max and quartiles of a list of seconds."""
    values = np.asarray(seconds, dtype=float)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"median_s": float(median), "min_s": float(values.min()), "max_s": float(values.max()),
            "q25_s": float(q25), "q75_s": float(q75)}


def measure(case, setup, repeats, rng):
    """Per-phase and whole-iteration statistics over ``repeats`` timed iterations (after one warm-up)."""
    timer = PhaseTimer()
    newton_iteration(case, setup, rng, timer)
    timer.pop()
    samples = {phase: [] for phase in ("iteration",) + PHASES}
    cg_iterations = []
    for _ in range(repeats):
        start = time.perf_counter()
        system = newton_iteration(case, setup, rng, timer)
        samples["iteration"].append(time.perf_counter() - start)
        seconds = timer.pop()
        for phase in PHASES:
            samples[phase].append(seconds.get(phase, 0.0))
        cg_iterations.append(system.info.get("cg_iterations", 0))
    row = {}
    for phase, values in samples.items():
        row.update({f"{phase}_{key}": value for key, value in summarize(values).items()})
    row["cg_iterations"] = float(np.median(cg_iterations))
    row["sampled_rows"] = system.info.get("sampled_rows", case.matrix.n)
    return row


# -- the sweep ---------------------------------------------------------------------------------------
def default_threads():
    counts, t = [], 1
    while t < (os.cpu_count() or 1):
        counts.append(t)
        t *= 2
    return counts + [os.cpu_count() or 1]


def plan(args):
    """{(format, model, nnz, d): {threads: [sweep names]}} for every point to measure."""
    points = {}

    def add(fmt, model, nnz, d, threads, sweep):
        points.setdefault((fmt, model, nnz, d), {}).setdefault(threads, []).append(sweep)
    for fmt in args.formats:
        for model in args.models:
            for nnz in args.nnz:
                add(fmt, model, nnz, args.fixed_d, args.size_threads, "nnz")
            for d in args.dims:
                add(fmt, model, args.fixed_nnz, d, args.size_threads, "d")
            for threads in args.threads:
                add(fmt, model, args.fixed_nnz, args.fixed_d, threads, "threads")
    return points


def probe_machine(threads, args, progress):
    """Read bandwidth and GEMM rate per thread count, measured before the problems are built."""
    rows = []
    for t in threads:
        progress(f"probes, {t} thread(s)")
        bandwidth = read_bandwidth(t, megabytes=args.probe_mb, repeats=args.repeats)
        with thread_limits(t):
            flops = gemm_rate(args.gemm_d, repeats=3)
        rows.append({"threads": t, "bandwidth_Bps": bandwidth, "gemm_flops": flops, "probe_mb": args.probe_mb,
                     "gemm_d": args.gemm_d})
    return rows


def run(args):
    points = plan(args)
    threads_needed = sorted({t for per_threads in points.values() for t in per_threads})
    total = len(threads_needed) + sum(len(per_threads) * len(args.strategies) for per_threads in points.values())
    progress, close = make_progress(total, not args.no_progress, "scaling")
    probes = {row["threads"]: row for row in probe_machine(threads_needed, args, progress)}
    rows = []
    for (fmt, model, nnz, d), per_threads in points.items():
        case = make_case(fmt, model, nnz, d, nnz_per_row=args.nnz_per_row, seed=args.seed)
        sizes = pass_bytes(case)
        for strategy in args.strategies:
            for threads, sweeps in sorted(per_threads.items()):
                progress(f"{fmt} {model} {size_id(nnz, d)} {strategy} {threads}t")
                rng = np.random.default_rng(args.seed)
                with thread_limits(threads):
                    setup = setup_strategy(case, strategy, rng)
                    stats = measure(case, setup, args.repeats, rng)
                probe = probes[threads]
                point = dict(case.describe(), strategy=strategy, threads=threads, repeats=args.repeats,
                             mu=setup.mu, **stats, bandwidth_Bps=probe["bandwidth_Bps"],
                             gemm_flops=probe["gemm_flops"])
                for phase, size in sizes.items():
                    point[f"{phase}_bytes"] = size
                    point[f"{phase}_roofline_fraction"] = size / probe["bandwidth_Bps"] / stats[f"{phase}_median_s"]
                rows.extend(dict(sweep=sweep, **point) for sweep in sweeps)
        del case
    close()
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "scaling.csv"), rows)
    write_csv(os.path.join(args.out, "probes.csv"), list(probes.values()))
    report(rows, probes, args)
    if not args.no_plot:
        plot(rows, args)
    return rows


def series(rows, sweep):
    """{(format, model, strategy): rows of that sweep sorted by its variable}."""
    key = {"nnz": "nnz_target", "d": "d", "threads": "threads"}[sweep]
    out = {}
    for row in rows:
        if row["sweep"] == sweep:
            out.setdefault((row["format"], row["model"], row["strategy"]), []).append(row)
    return {label: sorted(points, key=lambda r: r[key]) for label, points in out.items()}


def growth_exponent(xs, ys):
    """log(y₂/y₁) / log(x₂/x₁) between the two largest x: how time grows at the top of the sweep.

    A straight-line fit through every point would mix in the small sizes, where fixed costs
    (the d × d Cholesky, thread start-up, Python) dominate and the curve is flat: measured, a
    fit over nnz = 1e5…1e7 gave 0.04 for a phase that is linear in nnz at the top. nan with
    fewer than two distinct x.
    """
    pairs = sorted((x, y) for x, y in zip(xs, ys))
    if len({x for x, _ in pairs}) < 2 or any(y <= 0 for _, y in pairs[-2:]):
        return float("nan")
    (x1, y1), (x2, y2) = pairs[-2:]
    return float(np.log(y2 / y1) / np.log(x2 / x1))


def speedups(points, phase, statistic="median_s"):
    """Speed-up over the 1-thread point (or the fewest threads measured) for each point."""
    base = points[0][f"{phase}_{statistic}"]
    return [base / p[f"{phase}_{statistic}"] for p in points]


def report(rows, probes, args):
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba {numba.__version__} "
          f"(NUMBA_NUM_THREADS = {numba.config.NUMBA_NUM_THREADS}); timings on a shared machine are noisy")
    for t, probe in sorted(probes.items()):
        print(f"  {t} thread(s): read bandwidth {probe['bandwidth_Bps'] / 1e9:.2f} GB/s, "
              f"GEMM {probe['gemm_flops'] / 1e9:.1f} GFlop/s (d = {probe['gemm_d']})")
    for sweep, variable in (("nnz", "nnz_target"), ("d", "d")):
        print(f"\ngrowth exponent of the fastest time vs {variable} over the last step of the {sweep} sweep "
              f"({args.size_threads} threads):")
        for (fmt, model, strategy), points in series(rows, sweep).items():
            xs = [p[variable] for p in points]
            slopes = "  ".join(f"{phase} {growth_exponent(xs, [p[f'{phase}_min_s'] for p in points]):5.2f}"
                               for phase in PLOTTED_PHASES)
            print(f"  {fmt:>5} {model:<12} {strategy:<6}: {slopes}")
        print(f"  per point, median seconds ({' / '.join(PLOTTED_PHASES)}):")
        for (fmt, model, strategy), points in series(rows, sweep).items():
            for p in points:
                times = " / ".join(f"{p[f'{phase}_median_s']:.4g}" for phase in PLOTTED_PHASES)
                print(f"    {fmt:>5} {model:<12} {strategy:<6} {size_id(p['nnz_target'], p['d']):<16} {times}")
    print("\nthread sweep: speed-up of the medians over the fewest threads | of the fastest runs (min), which "
          "\nother processes on the cores disturb least | roofline fraction of the passes over C (medians):")
    for (fmt, model, strategy), points in series(rows, "threads").items():
        for i, p in enumerate(points):
            ups = "  ".join(f"{phase} {speedups(points, phase)[i]:4.2f}x" for phase in PLOTTED_PHASES)
            best = "  ".join(f"{phase} {speedups(points, phase, 'min_s')[i]:4.2f}x"
                             for phase in ("forward", "gradient"))
            print(f"  {fmt:>5} {model:<12} {strategy:<6} {p['threads']:>3}t: {ups} | {best} | forward "
                  f"{p['forward_roofline_fraction']:.2f}, gradient {p['gradient_roofline_fraction']:.2f}")


def plot(rows, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def save(fig, name):
        fig.tight_layout()
        caption(fig, command_line())
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = os.path.join(args.out, name)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        print(f"wrote {path}")

    models = ", ".join(args.models)
    problem = (f"planted {models} at x_true / 2; CSR: {args.nnz_per_row} non-zeros per row, n = nnz / "
               f"{args.nnz_per_row}; dense: n = nnz / d")
    for sweep, variable, label, power in (("nnz", "nnz_target", "nnz(C), stored entries", 1),
                                          ("d", "d", "d, columns of C", None)):
        fig, axes = plt.subplots(1, len(PLOTTED_PHASES), figsize=(4.2 * len(PLOTTED_PHASES), 4.6), squeeze=False)
        fixed = f"d = {args.fixed_d}" if sweep == "nnz" else f"nnz = {args.fixed_nnz:.0e}"
        fig.suptitle(f"Time per Newton iteration and per phase vs {label.split(',')[0]} ({fixed}, "
                     f"{args.size_threads} threads, fastest of {args.repeats} repeats, band up to the median)\n"
                     f"{problem}", fontsize=9)
        for ax, phase in zip(axes[0], PLOTTED_PHASES):
            for (fmt, model, strategy), points in series(rows, sweep).items():
                xs = [p[variable] for p in points]
                fastest = [p[f"{phase}_min_s"] for p in points]
                medians = [p[f"{phase}_median_s"] for p in points]
                line, = ax.plot(xs, fastest, marker="o",
                                label=f"{fmt} {model} {strategy}: ∝ {label.split(',')[0].split('(')[0]}^"
                                      f"{growth_exponent(xs, fastest):.2f} at the top")
                ax.fill_between(xs, fastest, medians, color=line.get_color(), alpha=0.15)
            xs_all = sorted({p[variable] for points in series(rows, sweep).values() for p in points})
            if len(xs_all) > 1 and power is not None and phase != "solve":  # solve costs d only
                top = max(p[f"{phase}_min_s"] for points in series(rows, sweep).values() for p in points
                          if p[variable] == xs_all[-1])
                ax.plot(xs_all, [top * (x / xs_all[-1]) ** power for x in xs_all], "k:", linewidth=1,
                        label="∝ nnz (reference)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = sorted({p[variable] for points in series(rows, sweep).values() for p in points})
            ax.set_xticks(ticks, [f"{t:.0e}".replace("e+0", "e") if sweep == "nnz" else str(t) for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel("seconds")
            ax.set_title(f"{phase}, {fixed}, {args.size_threads} threads", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, f"time_vs_{sweep}.png")

    thread_series = series(rows, "threads")
    fig, axes = plt.subplots(1, len(PLOTTED_PHASES), figsize=(4.2 * len(PLOTTED_PHASES), 4), squeeze=False)
    most = max(args.threads)
    fig.suptitle(f"Speed-up of one Newton iteration and its phases over 1 thread (median of {args.repeats}), "
                 f"{size_id(args.fixed_nnz, args.fixed_d)}\n{problem}", fontsize=9)
    for ax, phase in zip(axes[0], PLOTTED_PHASES):
        ax.plot([1, most], [1, most], "k--", label="ideal")
        for (fmt, model, strategy), points in thread_series.items():
            ax.plot([p["threads"] for p in points], speedups(points, phase), marker="o",
                    label=f"{fmt} {model} {strategy}")
        ax.set_xticks(args.threads)
        ax.set_xlabel("threads")
        ax.set_ylabel("speed-up over 1 thread")
        ax.set_title(f"{phase}, {size_id(args.fixed_nnz, args.fixed_d)}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "speedup_vs_threads.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), squeeze=False)
    fig.suptitle(f"Passes over C against the bandwidth roofline, {size_id(args.fixed_nnz, args.fixed_d)}\n"
                 f"{problem}", fontsize=9)
    for ax, phase, title in zip(axes[0], ("forward", "gradient"), ("forward pass u = Cx", "fused pass Cᵀ[q, U]")):
        seen = set()
        for (fmt, model, _), points in thread_series.items():
            if (fmt, model) in seen:  # the passes do not depend on the Hessian strategy
                continue
            seen.add((fmt, model))
            ax.plot([p["threads"] for p in points], [p[f"{phase}_roofline_fraction"] for p in points],
                    marker="o", label=f"{fmt} {model}")
        ax.axhline(1.0, color="k", linestyle="--", label="roofline (probed bandwidth)")
        ax.axhline(1 / 1.5, color="gray", linestyle=":", label="target: within 1.5× of the roofline")
        ax.set_xticks(args.threads)
        ax.set_xlabel("threads")
        ax.set_ylabel("(bytes / bandwidth) / time")
        ax.set_title(f"{title}, {size_id(args.fixed_nnz, args.fixed_d)}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "roofline_vs_threads.png")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="storage formats of C (default: csr dense)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["softmax"], help="models (default softmax)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=["exact"],
                        help="Hessian strategies (default exact)")
    parser.add_argument("--threads", type=thread_count, nargs="+", default=None,
                        help="thread counts of the thread sweep (default 1, 2, 4, … up to os.cpu_count())")
    parser.add_argument("--size-threads", type=thread_count, default=None,
                        help="threads for the nnz and d sweeps (default: the largest of --threads)")
    parser.add_argument("--nnz", type=positive_int, nargs="+", default=list(NNZ_SWEEP),
                        help="nnz(C) of the nnz sweep (default 1e5 1e6 1e7)")
    parser.add_argument("--fixed-d", type=positive_int, default=FIXED_D, help=f"d of the nnz sweep (default {FIXED_D})")
    parser.add_argument("--dims", type=positive_int, nargs="+", default=list(D_SWEEP),
                        help="d of the d sweep (default 32 64 128 256 512 1024)")
    parser.add_argument("--fixed-nnz", type=positive_int, default=FIXED_NNZ,
                        help="nnz(C) of the d sweep and the thread sweep (default 1e6)")
    parser.add_argument("--nnz-per-row", type=positive_int, default=NNZ_PER_ROW,
                        help=f"non-zeros per row of CSR C (default {NNZ_PER_ROW}); dense C has n = nnz / d")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed iterations per point (default 7)")
    parser.add_argument("--probe-mb", type=positive_int, default=512, help="bandwidth probe array in MiB (default 512)")
    parser.add_argument("--gemm-d", type=positive_int, default=1024, help="GEMM probe size d × d (default 1024)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="problem and sketch seed (default 0)")
    add_output_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quick", action="store_true",
                        help="nnz 1e4 3e4 1e5 at d = 32, d 16 32 64 at nnz = 3e4, 3 repeats, 32 MiB probe, "
                             "GEMM d = 256: under a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.nnz, args.fixed_d = list(QUICK_NNZ_SWEEP), QUICK_FIXED_D
        args.dims, args.fixed_nnz = list(QUICK_D_SWEEP), QUICK_FIXED_NNZ
        args.repeats, args.probe_mb, args.gemm_d = 3, 32, 256
    available = numba.config.NUMBA_NUM_THREADS
    requested = args.threads or default_threads()
    args.threads = sorted({t for t in requested if t <= available})
    if len(args.threads) < len(set(requested)):
        print(f"note: thread counts above NUMBA_NUM_THREADS = {available} skipped", file=sys.stderr)
    if not args.threads:
        parser.error(f"no thread count ≤ NUMBA_NUM_THREADS = {available}")
    args.size_threads = min(args.size_threads or max(args.threads), available)
    return args


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
