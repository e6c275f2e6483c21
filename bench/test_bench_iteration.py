"""pytest-benchmark suites: one Newton iteration and each of its phases, per model, format, strategy and size.

    python -m pytest bench/ --benchmark-only                                  # the whole grid (long)
    python -m pytest bench/ --benchmark-only -m "csr and softmax and not heavy"
    python -m pytest bench/ --benchmark-only -k "test_iteration and dense and exact"
    FASTNEWTON_BENCH_QUICK=1 python -m pytest bench/ --benchmark-only      # tiny sizes, seconds
    NUMBA_NUM_THREADS=1 python -m pytest bench/ --benchmark-only ...         # one thread

    # across commits: save a run on each, then compare the same benchmark side by side
    python -m pytest bench/ --benchmark-only -m sweep_nnz --benchmark-autosave
    pytest-benchmark compare 0001 0002 --group-by=name --columns=median,iqr,rounds

Grid (bench/conftest.py): nnz ∈ {1e5, 1e6, 1e7} at d = 64 and d ∈ {32, …, 1024} at nnz = 1e6, CSR
(10 non-zeros per row) and dense C (n = nnz / d), every model; ids read ``csr-softmax-nnz1e6-d64``
(plus ``-exact``/``-sketch``/``-pcg``). Markers: csr, dense, softmax, relu_softmax, softmax_relu,
exact, sketch, pcg, sweep_nnz, sweep_d, heavy (nnz ≥ 1e7 or d ≥ 512).

Phases, as the driver runs them (fastnewton.newton; helpers in bench/scaling.py):
  test_forward    (a) forward pass u = Cx and the model vectors q, β, U, S
  test_gradient   (b) the fused gradient pass Cᵀ[q, U] (matrix.rmatmat(vectors.Q))
  test_hessian    (c) the strategy's Hessian build: exact sandwich, or the sketched matrix (sketch, pcg)
  test_solve      (d) NewtonSystem.solve(g, μ) with the smallest damping μ ≥ 1e-8·max|diag H| that
                      factors (pcg: preconditioned CG, two passes over C per CG iteration)
  test_iteration  all of it, plus the line search's pass C·Δx and one loss trial
at x = x_true / 2 of ``make_problem(..., seed=0)``. Each benchmark calls its function twice before
timing (JIT compilation and first-touch allocations are never timed; the second call sizes the
run), then runs benchmark.pedantic with rounds = FASTNEWTON_BENCH_BUDGET seconds (default 1) / one
call, clamped to [3, 50] ([2, 5] and 0.02 s in quick mode), and several calls per round when one
takes under a millisecond. extra_info (n, d, nnz, nnz_target, k, model, strategy, phase, format,
threads, μ, sample size, sampled rows, CG iterations) and the group make the JSON self-describing.
"""
import time

import numba
import numpy as np

try:
    import scaling
except ImportError:  # imported as bench.test_bench_iteration from the repository root
    from bench import scaling


def run_benchmark(benchmark, rounds_policy, fn, case, phase, strategy=None, setup=None):
    """Warm up outside the timing, describe the point in extra_info, then time with benchmark.pedantic."""
    budget, min_rounds, max_rounds = rounds_policy
    start = time.perf_counter()
    fn()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    fn()
    call = max(time.perf_counter() - start, 1e-9)
    rounds = int(min(max_rounds, max(min_rounds, budget / call)))
    # Calls under ~1 ms are repeated inside a round so the timer's resolution does not dominate.
    iterations = max(1, min(100, int(1e-3 / call)))
    benchmark.group = f"{phase} {case.format} {case.model}" + (f" {strategy}" if strategy else "")
    benchmark.extra_info.update(case.describe())
    benchmark.extra_info.update(phase=phase, strategy=strategy, threads=numba.get_num_threads(),
                                first_call_s=warm)
    if setup is not None:
        benchmark.extra_info.update(setup.describe(case))
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=0)


def test_forward(benchmark, rounds_policy, case):
    """(a) u = Cx and the model vectors."""
    kept = run_benchmark(benchmark, rounds_policy, scaling.forward_phase(case), case, "forward")
    np.testing.assert_allclose(kept["Q"], case.ev.kept["Q"])


def test_gradient(benchmark, rounds_policy, case):
    """(b) the fused pass Cᵀ[q, U]."""
    G = run_benchmark(benchmark, rounds_policy, scaling.gradient_phase(case), case, "gradient")
    np.testing.assert_allclose(G, case.ev.known["G"])


def test_hessian(benchmark, rounds_policy, case, strategy):
    """(c) the Hessian build of one strategy."""
    rng = np.random.default_rng(0)
    setup = scaling.setup_strategy(case, strategy, rng)
    system = run_benchmark(benchmark, rounds_policy, scaling.hessian_phase(case, setup, rng), case, "hessian",
                           strategy, setup)
    assert system.matrix.shape == (case.matrix.d, case.matrix.d)


def test_solve(benchmark, rounds_policy, case, strategy):
    """(d) factor and solve (H + μI) p = −g."""
    rng = np.random.default_rng(0)
    setup = scaling.setup_strategy(case, strategy, rng)
    p = run_benchmark(benchmark, rounds_policy, scaling.solve_phase(case, setup), case, "solve", strategy, setup)
    assert p is not None and float(p @ case.ev.grad) < 0.0


def test_iteration(benchmark, rounds_policy, case, strategy):
    """One full Newton iteration of the driver."""
    rng = np.random.default_rng(0)
    setup = scaling.setup_strategy(case, strategy, rng)
    run_benchmark(benchmark, rounds_policy, scaling.iteration_phase(case, setup, rng), case, "iteration",
                  strategy, setup)
