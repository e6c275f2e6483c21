"""Hessian strategies (fastnewton/hessian.py, SPEC §3): exact, sketch, pcg and auto, end to end through
``solve`` and at the level of one NewtonSystem.

- sketch converges linearly near the optimum, pcg quadratically, both to the exact strategy's x;
- same seed → same bits, other seed → other path, same x; thread count → same bits;
- auto's cost model, ``res.hessian``, and the validation of hessian / eps / sketch_size;
- the preconditioned CG of NewtonSystem: forcing-term residual, negative curvature.

Planted problems: n = 20 000, d = 30 (CSR with 20 entries per row, or dense), l2 = 0. softmax and
relu_softmax with noise 0.1 (β does not vanish at the optimum, so the sketched Hessian stays
inexact there and the sketch's linear rate is visible), from the auto start. softmax_relu
noise-free with m = 40 > d outputs (a unique zero-loss optimum, x_true) from x_true moved so that
the logits change by at most 0.1: the rates are local claims, and with noise (i) sketch and exact end
at different stationary points from the auto start, (ii) β is signed with Cᵀ|D|C up to ~75× H at the
optimum, so the ε-sketch of Cᵀ diag(β) C is no spectral approximation of H and the sketch strategy
converges erratically (25–55 damped iterations from near x*, ratios up to 7; measured). See also the
tests at the end: pcg is not damped by an indefinite preconditioner.
"""
import types
import warnings

import numba
import numpy as np
import pytest
import scipy.linalg
import threadpoolctl

import naive
import fastnewton.hessian as hessian_module
import fastnewton.rates as rates_module
from fastnewton import ConvergenceWarning, Problem, make_problem, solve
from fastnewton.hessian import (
    CG_ITERATION_SECONDS,
    MAX_FORCING,
    NEAR_TIE_MARGIN,
    NEAR_TIE_ORDER,
    NewtonSystem,
    choose_strategy,
    exact_system,
    pcg_system,
    picked_strategies,
    resolve_strategy,
    sketch_system,
    strategy_seconds,
)
from fastnewton.newton import SolveOptions, run_requests
from fastnewton.sketching import PRECONDITIONER_SAMPLE_CONSTANT, sample_size, sampled_sandwich

# The stopping rule ‖∇L‖ ≤ TOL·g_ref. Near x*,
# ‖x − x*‖ ≤ 2‖∇L(x)‖/λ_min(H*) ≤ 2·TOL·g_ref/λ_min(H*),
# 4e-11 to 5e-10 of ‖x*‖ on these problems (checked in the test): comparing x's to 1e-6 relative is
# implied by convergence, yet would catch a different stationary point (those differ by O(1)).
TOL = 1e-10
X_RTOL = 1e-6
# The "local phase": iterations whose relative gradient norm is at most this.
LOCAL = 1e-2
# sketch: ε = 0.5 gives a contraction ≤ ~ε per step in the H⁻¹-norm; measured ratios of successive
# gradient norms 0.04–0.12 in the local phase.
LINEAR_RATE = 0.6
# pcg / exact: rel_{k+1} ≤ QUADRATIC·rel_k² (measured constants 0.5–40), or below the rounding floor of
# the gradient (~1e-13·g_ref measured; TOL/10 leaves margin). A linear rate of 0.1 violates this as
# soon as rel_k < 1e-3.
QUADRATIC = 100.0
FLOOR = TOL / 10
SEED = 1
THREADS = min(2, numba.config.NUMBA_NUM_THREADS)
MODELS = ("softmax", "relu_softmax", "softmax_relu")
FORMATS = ("csr", "dense")
needs_two_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                       reason="Numba was started with fewer than 2 threads")


# ---------------------------------------------------------------------------------------------
# Planted problems and their solves, computed once per module
# ---------------------------------------------------------------------------------------------
def planted(model, fmt, seed=0):
    """(C, b, V, x0, x_true) of the planted problem used for this (model, format)."""
    kwargs = {} if fmt == "dense" else {"nnz_per_row": 20}
    if model == "softmax_relu":
        planted = make_problem(20_000, 30, model=model, m=40, seed=seed, dense=fmt == "dense", **kwargs)
        C, b, x_true = planted
        V = planted.V
        return C, b, V, moved(C, x_true, 0.1, seed + 1), x_true
    C, b, x_true = make_problem(20_000, 30, model=model, noise=0.1, seed=seed, dense=fmt == "dense", **kwargs)
    return C, b, None, "auto", x_true


def moved(C, x, logit_change, seed):
    """x plus a random direction scaled so that the logits Cx change by at most logit_change."""
    direction = np.random.default_rng(seed).standard_normal(x.shape[0])
    return x + logit_change * direction / np.max(np.abs(C @ direction))


_RUNS = {}


def run(model, fmt, hessian, **kwargs):
    """solve() on the planted problem, cached per arguments (x0 fixed: the auto start is computed once)."""
    key = (model, fmt, hessian, tuple(sorted(kwargs.items())))
    if key not in _RUNS:
        C, b, V, x0, _ = planted(model, fmt)
        if isinstance(x0, str) and hessian != "exact":
            # The same start array for every strategy and thread count (the auto start itself has a
            # known thread-count dependence for n > 10 000, tested in test_solver.py).
            x0 = run(model, fmt, "exact").x0
        options = {"seed": SEED, "n_threads": THREADS, **kwargs}
        _RUNS[key] = solve(C, b, model, V=V, x0=x0, hessian=hessian, tol=TOL, **options)
    return _RUNS[key]


def relative_gradient_norms(res):
    return np.array([record["rel_grad_norm"] for record in res.history])


def local_pairs(res):
    """(rel_k, rel_{k+1}) for every step that starts in the local phase."""
    rel = relative_gradient_norms(res)
    return [(rel[k], rel[k + 1]) for k in range(rel.shape[0] - 1) if rel[k] <= LOCAL]


def assert_quadratic(res):
    """rel_{k+1} ≤ max(QUADRATIC·rel_k², FLOOR) for every local step but a CG strategy's last, whose CG
    stops once its predicted gradient is OVERSOLVE_MARGIN·tol·g_ref (``hessian._forcing``): that one
    need only end the solve (rel ≤ TOL)."""
    pairs = local_pairs(res)
    assert len(pairs) >= 2, relative_gradient_norms(res)
    uses_cg = any("cg_iterations" in record for record in res.history)
    for index, (before, after) in enumerate(pairs):
        if uses_cg and index == len(pairs) - 1 and after <= TOL:
            continue
        assert after <= max(QUADRATIC * before**2, FLOOR), (before, after, relative_gradient_norms(res))


CASES = [pytest.param(model, fmt, id=f"{model}-{fmt}") for model in MODELS for fmt in FORMATS]


# ---------------------------------------------------------------------------------------------
# Convergence rates and the solution reached
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, fmt", CASES)
def test_sketch_converges_linearly(model, fmt):
    res = run(model, fmt, "sketch")
    assert res.converged, res.message
    assert res.hessian == "sketch"
    pairs = local_pairs(res)
    assert len(pairs) >= 2, relative_gradient_norms(res)
    ratios = [after / before for before, after in pairs]
    assert max(ratios) <= LINEAR_RATE, ratios
    s = sample_size(30, 0.5)
    assert all(0 < record["sampled_rows"] <= s + 5 * np.sqrt(s) for record in res.history[1:])
    assert all("cg_iterations" not in record for record in res.history)
    if model != "softmax_relu":
        # β does not vanish at a noisy optimum: the sampled Hessian stays inexact and the sketch
        # needs visibly more iterations than exact Newton (9–13 against 3–8, measured). A sketch
        # that secretly used the exact sandwich would fail here.
        assert res.n_iter > run(model, fmt, "exact").n_iter + 2


@pytest.mark.parametrize("hessian", ["exact", "pcg"])
@pytest.mark.parametrize("model, fmt", CASES)
def test_exact_and_pcg_converge_quadratically(model, fmt, hessian):
    res = run(model, fmt, hessian)
    assert res.converged, res.message
    assert res.hessian == hessian
    assert_quadratic(res)
    if hessian == "pcg":
        assert res.n_iter <= run(model, fmt, "exact").n_iter + 1
        # The forcing term min(0.5, ‖g‖/g_ref) tightens as g shrinks: CG works harder at the end.
        cg = [record["cg_iterations"] for record in res.history[1:]]
        assert all(count >= 1 for count in cg) and cg[-1] >= cg[0], cg


def test_sketched_rate_is_not_quadratic():
    """Control for the quadratic test: the sketch's own history fails it (so the test can tell them apart)."""
    pairs = local_pairs(run("softmax", "csr", "sketch"))
    assert any(after > max(QUADRATIC * before**2, FLOOR) for before, after in pairs)


@pytest.mark.parametrize("model, fmt", CASES)
def test_sketch_and_pcg_reach_the_exact_solution(model, fmt):
    exact = run(model, fmt, "exact")
    assert exact.converged and exact.rel_grad_norm <= TOL
    C, b, V, _, _ = planted(model, fmt)
    smallest = np.linalg.eigvalsh(Problem(C, b, model, V=V).hessian(exact.x))[0]
    # Local strong convexity makes the stopping rule a bound on the distance to x*: the comparison
    # below is implied by convergence of both solves, with ≥ 100× margin.
    assert smallest > 0
    assert 2 * TOL * exact.g_ref / smallest <= 1e-2 * X_RTOL * np.linalg.norm(exact.x)
    for hessian in ("sketch", "pcg"):
        res = run(model, fmt, hessian)
        assert res.converged, (hessian, res.message)
        assert np.linalg.norm(res.x - exact.x) <= X_RTOL * np.linalg.norm(exact.x), hessian
        # Same minimum: no better than the other beyond the rounding level of L (~eps·‖b‖², which matters
        # for the zero-loss softmax_relu optimum, where L itself is ~1e-26).
        assert abs(res.loss - exact.loss) <= 1e-10 * abs(exact.loss) + 1e-14 * float(b @ b), hessian


# ---------------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("hessian", ["sketch", "pcg"])
def test_same_seed_gives_the_same_bits(hessian, fmt):
    first = run("softmax", fmt, hessian)
    C, b, _, _, _ = planted("softmax", fmt)
    again = solve(C, b, x0=first.x0, hessian=hessian, tol=TOL, seed=SEED, n_threads=THREADS)
    assert np.array_equal(again.x, first.x)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in first.history]
    assert [r["sampled_rows"] for r in again.history[1:]] == [r["sampled_rows"] for r in first.history[1:]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("hessian", ["sketch", "pcg"])
def test_other_seed_takes_another_path_to_the_same_x(hessian, fmt):
    first = run("softmax", fmt, hessian)
    other = run("softmax", fmt, hessian, seed=SEED + 1)
    assert other.converged
    # Other rows are sampled, so the iterates differ (already in the first step) ...
    assert [r["sampled_rows"] for r in other.history[1:]] != [r["sampled_rows"] for r in first.history[1:]]
    assert other.history[1]["loss"] != first.history[1]["loss"]
    # ... but the solution is the same to the stopping rule's accuracy (see TOL).
    assert np.linalg.norm(other.x - first.x) <= X_RTOL * np.linalg.norm(first.x)


def _blas_can_use_two_threads():
    return any(info["user_api"] == "blas" and info["num_threads"] >= 2
               for info in threadpoolctl.threadpool_info())


@needs_two_threads
@pytest.mark.parametrize("fmt", [
    "csr",
    pytest.param("dense", marks=pytest.mark.skipif(not _blas_can_use_two_threads(),
                                                    reason="BLAS limited to one thread")),
])
@pytest.mark.parametrize("hessian", ["sketch", "pcg"])
def test_thread_count_does_not_change_the_bits(hessian, fmt):
    """n_threads sets Numba and BLAS threads; every reduction (chunked kernels, single-threaded GEMM blocks,
    fixed-order dots) must give the same bits. The whole path is compared, not only x: a rounding
    difference in an early step is usually corrected away by the later Newton steps."""
    two = run("softmax", fmt, hessian)
    one = run("softmax", fmt, hessian, n_threads=1)
    assert np.array_equal(one.x0, two.x0)
    for key in ("loss", "grad_norm", "step_norm", "sampled_rows"):
        assert [r.get(key) for r in one.history] == [r.get(key) for r in two.history], key
    assert np.array_equal(one.x, two.x)


# ---------------------------------------------------------------------------------------------
# auto: the cost model, and what res.hessian reports
# ---------------------------------------------------------------------------------------------
def stand_in(n, d, nnz=None, fmt="dense"):
    """A light object with what choose_strategy reads (problem.matrix.n, d, nnz, format): no n × d array."""
    nnz = n * d if nnz is None else nnz
    return types.SimpleNamespace(matrix=types.SimpleNamespace(n=n, d=d, nnz=nnz, format=fmt))


def uniform_rates(**changes):
    """Rates with every operation at 1e9 per second and 5 / 2 / 1 / 3 iteration figures, then ``changes``.

    lagged is priced out (3× exact's iterations) unless a test sets LAGGED_ITERATIONS_PER_EXACT; every
    sketched iteration estimates fresh scores (REFERENCE_REFRESHES_PER_ITERATION = 1) unless a test sets it."""
    values = {name: 1e9 for name in dir(rates_module) if name.isupper() and name not in (
        "MACHINE", "START_PRECONDITIONED_CG_ITERATIONS_PER_STEP", "REFERENCE_REFRESHES_PER_ITERATION")
        + STARTED_FIGURES and not name.endswith(FROM_OTHER_STARTS)}
    values.update(EXACT_ITERATIONS=5.0, SKETCH_ITERATIONS_PER_EXACT=2.0, PCG_ITERATIONS_PER_EXACT=1.0,
                  CG_ITERATIONS_PER_STEP=3.0, LAGGED_ITERATIONS_PER_EXACT=3.0, LAGGED_CG_ITERATIONS_PER_STEP=3.0,
                  START_PRECONDITIONED_CG_ITERATIONS_PER_STEP=2.0,
                  REFERENCE_REFRESHES_PER_ITERATION=1.0, REFERENCE_REFRESHES_FROM_OTHER_STARTS=1.0)
    values.update(changes)
    return types.SimpleNamespace(**with_other_start_figures(values))


# The iteration figures measured from x0="auto" and, with FROM_OTHER_STARTS appended, from zeros.
STARTED_FIGURES = ("EXACT_ITERATIONS", "SKETCH_ITERATIONS_PER_EXACT", "PCG_ITERATIONS_PER_EXACT",
                   "CG_ITERATIONS_PER_STEP", "LAGGED_ITERATIONS_PER_EXACT", "LAGGED_CG_ITERATIONS_PER_STEP")
FROM_OTHER_STARTS = "_FROM_OTHER_STARTS"


def with_other_start_figures(values):
    """``values`` with each iteration figure from other starts that it does not set equal to the default start's."""
    return {**{name + FROM_OTHER_STARTS: values[name] for name in STARTED_FIGURES}, **values}


def test_auto_picks_the_least_predicted_time():
    for problem in (stand_in(1000, 20), stand_in(10**6, 512), stand_in(10**6, 1000, nnz=10**7, fmt="csr")):
        seconds = strategy_seconds(problem, 0.5, None)
        assert set(seconds) == {"exact", "sketch", "pcg", "lagged"} and all(t > 0 for t in seconds.values())
        least = min(seconds, key=seconds.get)
        # no near tie on these shapes (the runner-up priced over 5% higher): the least is the pick
        assert sorted(seconds.values())[1] > NEAR_TIE_MARGIN * seconds[least]
        assert choose_strategy(problem, 0.5, None) == least


# (predicted seconds, auto's pick): the least, unless others are priced within 5% of it; then the first of
# those in the order exact, lagged, pcg, sketch (their Newton iterations in practice: fewest first).
NEAR_TIE_CASES = [
    (dict(exact=1.0, sketch=0.5, pcg=2.0, lagged=3.0), "sketch"),   # a clear least
    (dict(exact=1.04, sketch=2.0, pcg=1.5, lagged=1.0), "exact"),   # exact 4% over lagged: exact
    (dict(exact=1.041, sketch=2.0, pcg=1.5, lagged=1.0), "exact"),  # CSR 10⁶ × 32, 5 per row (4.1%)
    (dict(exact=1.06, sketch=2.0, pcg=1.5, lagged=1.0), "lagged"),  # 6% over: the least
    (dict(exact=2.0, sketch=2.0, pcg=1.0, lagged=1.004), "lagged"),  # dense 10⁵ × 32's near tie
    (dict(exact=1.2, sketch=0.99, pcg=1.0, lagged=1.0396), "pcg"),  # within 5% of sketch's 0.99: pcg only
    (dict(exact=1.0, sketch=1.0, pcg=1.0, lagged=1.0), "exact"),    # equal: exact
    (dict(exact=1.05, sketch=1.0, pcg=3.0, lagged=3.0), "exact"),   # exactly 5% over (1.05 = 1.05·1.0): in
    (dict(exact=np.inf, sketch=1.0, pcg=1.01, lagged=np.inf), "pcg"),
]


def test_auto_breaks_near_ties_toward_fewer_iterations():
    """``picked_strategies`` on hand-made predictions, one at a time and all at once (solve_many's form)."""
    assert NEAR_TIE_MARGIN == 1.05 and NEAR_TIE_ORDER == ("exact", "lagged", "pcg", "sketch")
    for seconds, pick in NEAR_TIE_CASES:
        assert NEAR_TIE_ORDER[int(picked_strategies(seconds))] == pick, seconds
    stacked = {name: np.array([seconds[name] for seconds, _ in NEAR_TIE_CASES]) for name in NEAR_TIE_ORDER}
    assert [NEAR_TIE_ORDER[k] for k in picked_strategies(stacked).tolist()] == [pick for _, pick in NEAR_TIE_CASES]


def test_auto_takes_the_near_tie_rule_on_real_predictions(monkeypatch):
    """choose_strategy applies the rule to strategy_seconds' figures: with lagged priced 4% under exact it
    picks exact, 7% under it lagged (the model's figures scaled, the rest of the solve untouched)."""
    problem = stand_in(10**6, 1000, nnz=10**7, fmt="csr")
    seconds = strategy_seconds(problem, 0.5, None)
    for factor, pick in ((0.96, "exact"), (0.93, "lagged")):
        scaled = dict(seconds, lagged=factor * seconds["exact"], pcg=2 * seconds["exact"],
                      sketch=2 * seconds["exact"])
        monkeypatch.setattr(hessian_module, "strategy_seconds", lambda *args, scaled=scaled, **kw: scaled)
        assert choose_strategy(problem, 0.5, None) == pick


def test_cost_model_work_counts():
    """With every rate 1e9/s the predictions are the work counts of the docstring, checked by hand here."""
    rates = uniform_rates()
    n, d = 100_000, 100
    seconds = strategy_seconds(stand_in(n, d), 0.5, None, rates)
    one_pass, row_work, fixed = n * d / 1e9, n / 1e9, 1 / 1e9
    # Every iteration: the line's C·p, the gradient pass and a forward pass in eight (REFRESH_EVERY), the
    # row work beyond them, the fixed cost.
    shared = (2 + 1 / 8) * one_pass + row_work + fixed
    sandwich, cholesky = n * d * d / 2 / 1e9, d**3 / 3 / 1e9
    # The exact fit (sandwich, pass, Cholesky), the stopping test's two passes, the first evaluation.
    start = sandwich + cholesky + one_pass + 2 * one_pass + (2 * one_pass + row_work)
    assert seconds["exact"] == pytest.approx(start + 5 * (sandwich + cholesky + shared), rel=1e-12)
    s = sample_size(d, 0.5)
    # Every iteration refreshes (uniform_rates): fresh scores, two draws over the n rows (a stand-in has no
    # target: the sample keeps s rows), the certificate (4/3 d³).
    fresh_scores = (4 * n * d + 4 * d**3 + 16 * n * d) / 1e9
    sampled, draw, certificate, first_reference = s * d * d / 2 / 1e9, n / 1e9, 4 * cholesky, one_pass
    assert seconds["sketch"] == pytest.approx(
        start + first_reference + 10 * (fresh_scores + 2 * (sampled + draw) + certificate + cholesky + shared),
        rel=1e-12)
    kept = strategy_seconds(stand_in(n, d), 0.5, None, uniform_rates(REFERENCE_REFRESHES_PER_ITERATION=0.0))
    assert kept["sketch"] == pytest.approx(
        start + first_reference + 10 * (sampled + draw + certificate + cholesky + shared), rel=1e-12)
    # lagged: 15 iterations, one in three exact, the others 3 CG iterations of a pass (dense C: the
    # product reads each row once), two triangular solves and the fixed cost of a CG iteration each.
    cg_step = 3 * ((n * d + 2 * d * d) / 1e9 + CG_ITERATION_SECONDS)
    assert seconds["lagged"] == pytest.approx(
        start + 15 * ((sandwich + cholesky + 2 * cg_step) / 3 + shared), rel=1e-12)


def test_auto_picks_lagged_when_its_cg_steps_cost_less_than_a_sandwich():
    """Short CSR rows at d = 1000: the Cholesky and the sandwich cost more than three CG iterations of
    one read of C each, so lagged (as many iterations as exact) wins; with 40 CG iterations per step
    (0.52 s per step against 0.39 s for an exact iteration) it does not."""
    csr = stand_in(10**6, 1000, nnz=10**7, fmt="csr")
    assert choose_strategy_with(csr, uniform_rates(LAGGED_ITERATIONS_PER_EXACT=1.0)) == "lagged"
    assert choose_strategy_with(csr, uniform_rates(LAGGED_ITERATIONS_PER_EXACT=1.0,
                                                   LAGGED_CG_ITERATIONS_PER_STEP=40.0)) == "exact"
    # A dense sandwich at BLAS speed against passes at the same rate: exact stays.
    assert choose_strategy_with(stand_in(10**6, 512), uniform_rates(
        DENSE_SANDWICH_FMA=1e11, DENSE_EMBED_UPDATES=1e8, LAGGED_ITERATIONS_PER_EXACT=1.0)) == "exact"


def test_auto_keeps_small_csr_problems_exact():
    # 500 rows of 8 entries at d = 64 (lagged without CG_ITERATION_SECONDS): a CG iteration's passes take
    # ~2 µs, its Python ~85 µs (measured), so CG steps cannot beat one small sandwich.
    assert choose_strategy(stand_in(500, 64, nnz=4000, fmt="csr"), 0.5, None) == "exact"


def test_auto_follows_the_measured_rates():
    """The same shape changes strategy when the rates change: a slow sandwich makes pcg pay on long rows,
    a slow embedding keeps exact; short CSR rows and small problems stay exact at equal rates."""
    long_rows = stand_in(10**6, 512)
    assert choose_strategy_with(long_rows, uniform_rates(DENSE_SANDWICH_FMA=1e8)) == "pcg"
    assert choose_strategy_with(long_rows, uniform_rates(DENSE_SANDWICH_FMA=1e11, DENSE_EMBED_UPDATES=1e8)) == "exact"
    assert choose_strategy_with(stand_in(10**6, 1000, nnz=10**7, fmt="csr"), uniform_rates()) == "exact"
    assert choose_strategy_with(stand_in(1000, 20), uniform_rates()) == "exact"
    # A sketch that converges in as few iterations as exact beats pcg when CG needs many iterations.
    assert choose_strategy_with(long_rows, uniform_rates(DENSE_SANDWICH_FMA=1e8, SKETCH_ITERATIONS_PER_EXACT=1.0,
                                                         CG_ITERATIONS_PER_STEP=50.0)) == "sketch"


def test_auto_prices_the_kept_leverage_reference():
    """With the reference kept (no refreshes) a slow embedding no longer holds the sketch back on long
    dense rows; Dask's evaluator, which estimates scores afresh every iteration, is priced with them."""
    long_rows = stand_in(10**6, 512)
    slow_embedding = dict(DENSE_SANDWICH_FMA=1e10, DENSE_EMBED_UPDATES=1e7)
    assert choose_strategy_with(long_rows, uniform_rates(**slow_embedding)) == "exact"
    assert choose_strategy_with(long_rows, uniform_rates(REFERENCE_REFRESHES_PER_ITERATION=0.0,
                                                         **slow_embedding)) in ("sketch", "pcg")
    dask_like = types.SimpleNamespace(matrix=long_rows.matrix, reuses_leverage_scores=False)
    assert choose_strategy_with(dask_like, uniform_rates(REFERENCE_REFRESHES_PER_ITERATION=0.0,
                                                         **slow_embedding)) == "exact"


def choose_strategy_with(problem, rates, eps=0.5, sketch_size=None):
    """auto's pick (``picked_strategies``) from the predictions with these rates."""
    return NEAR_TIE_ORDER[int(picked_strategies(strategy_seconds(problem, eps, sketch_size, rates)))]


def test_auto_uses_sketch_size_and_eps():
    """A forced sample of all rows, or a small ε (≈ 5× the sample), prices the sketched build up to the exact one."""
    problem = stand_in(200_000, 512)
    rates = uniform_rates(DENSE_SANDWICH_FMA=1e8, DENSE_SAMPLED_SANDWICH_FMA=1e8)
    assert choose_strategy_with(problem, rates) == "pcg"
    assert choose_strategy_with(problem, rates, sketch_size=200_000) == "exact"
    assert strategy_seconds(problem, 0.2, None, rates)["pcg"] > strategy_seconds(problem, 0.5, None, rates)["pcg"]


def test_auto_resolves_to_exact_on_a_small_problem_and_reports_it():
    C, b, _ = make_problem(2000, 10, seed=3)
    res = solve(C, b, hessian="auto")
    assert res.hessian == choose_strategy(Problem(C, b), 0.5, None) == "exact"
    assert res.converged
    assert all("sampled_rows" not in record for record in res.history)


def test_auto_reports_pcg_when_the_cost_model_picks_it(monkeypatch):
    # A problem big enough for the model to choose pcg is too big for a unit test: swap the model.
    monkeypatch.setattr(hessian_module, "choose_strategy", lambda problem, eps, sketch_size, default_start=True: "pcg")
    C, b, _ = make_problem(3000, 8, seed=4, noise=0.05)
    res = solve(C, b, hessian="auto", seed=0)
    assert res.hessian == "pcg"
    assert res.converged
    assert all(record["cg_iterations"] >= 1 and record["sampled_rows"] > 0 for record in res.history[1:])


@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg"])
def test_explicit_strategy_is_reported(hessian):
    C, b, _ = make_problem(3000, 8, seed=5, noise=0.05)
    res = solve(C, b, hessian=hessian, seed=0)
    assert res.hessian == hessian
    assert res.converged
    assert all(("sampled_rows" in record) == (hessian != "exact") for record in res.history[1:])
    assert all(("cg_iterations" in record) == (hessian == "pcg") for record in res.history[1:])


# ---------------------------------------------------------------------------------------------
# Validation of hessian, eps, sketch_size
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    C, b, _ = make_problem(200, 5, seed=6)
    return C, b


@pytest.mark.parametrize("value, error", [
    ("newton", ValueError), ("Exact", ValueError), ("", ValueError), ("sketch ", ValueError),
    (None, TypeError), (1, TypeError), (["exact"], TypeError),
])
def test_invalid_hessian_is_rejected(small, value, error):
    with pytest.raises(error, match="hessian"):
        solve(*small, hessian=value)


@pytest.mark.parametrize("value, error", [
    (0.0, ValueError), (1.0, ValueError), (-0.5, ValueError), (1.5, ValueError),
    (float("nan"), ValueError), (float("inf"), ValueError),
    ("0.5", TypeError), (None, TypeError), (True, TypeError),
])
@pytest.mark.parametrize("hessian", ["sketch", "pcg", "auto"])
def test_eps_outside_the_open_unit_interval_is_rejected(small, hessian, value, error):
    with pytest.raises(error, match="eps"):
        solve(*small, hessian=hessian, eps=value)


@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-5, ValueError), (10.5, TypeError), ("100", TypeError), (True, TypeError),
    (100.0, TypeError),
])
def test_invalid_sketch_size_is_rejected(small, value, error):
    with pytest.raises(error, match="sketch_size"):
        solve(*small, hessian="sketch", sketch_size=value)


def test_valid_eps_and_sketch_size_are_accepted(small):
    for kwargs in ({"eps": 1e-3}, {"eps": 0.999}, {"sketch_size": np.int64(50)}, {"sketch_size": 1}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = solve(*small, hessian="sketch", seed=0, max_iter=2, **kwargs)
        assert res.hessian == "sketch"


# ---------------------------------------------------------------------------------------------
# One Newton system: what the strategies build
# ---------------------------------------------------------------------------------------------
def options(**kwargs):
    base = dict(hessian="pcg", tol=TOL, max_iter=100, eps=0.5, sketch_size=None, seed=0, callback=None,
                verbose=False)
    return SolveOptions(**{**base, **kwargs})


@pytest.fixture(scope="module")
def softmax_point():
    """(problem, evaluation at the auto start, g_ref) of the planted CSR softmax problem."""
    C, b, _, _, _ = planted("softmax", "csr")
    start = run("softmax", "csr", "exact")
    problem = Problem(C, b)
    return problem, problem.evaluate(start.x0), start.g_ref


def test_sketch_system_samples_only_the_diagonal_part(softmax_point):
    """H̃ − H = C̃ᵀD̃C̃ − C̃ᵀdiag(β)C̃: the low-rank P S Pᵀ and the ridge are kept exact. softmax samples the
    centred rows C̃ = C − 1μᵀ where centring pays (μ: C's column mean; its Hessian is unchanged by the shift), so
    the error is that of the centred sample alone, against C̃ᵀdiag(β)C̃ formed densely in NumPy. Here C's column
    means are ~1e-2 of their spread: centring is skipped, C̃ = C (tests/test_sketch.py: the centred cases)."""
    problem, ev, g_ref = softmax_point
    assert problem.sampling_mean() is None
    H = exact_system(problem, ev, np.random.default_rng(0), options(), g_ref).matrix
    np.testing.assert_array_equal(H, problem.hessian(ev.x))
    sketched = sketch_system(problem, ev, np.random.default_rng(7), options(), g_ref)
    mean = problem.sampling_mean()
    sampled, kept = sampled_sandwich(problem.matrix, problem.beta(ev), problem.l2, sample_size(problem.d, 0.5),
                                     np.random.default_rng(7), mean=mean)
    assert sketched.info == {"sampled_rows": kept}
    centred = problem.matrix.rows(np.arange(problem.n)) - (0.0 if mean is None else mean)
    difference = sampled - centred.T @ (problem.beta(ev)[:, None] * centred)
    np.testing.assert_allclose(sketched.matrix - H, difference, rtol=0, atol=1e-12 * np.abs(H).max())
    assert np.abs(difference).max() > 1e-6 * np.abs(H).max()


def test_sketch_size_and_eps_set_the_number_of_sampled_rows(softmax_point):
    problem, ev, g_ref = softmax_point

    def kept(**kwargs):
        return sketch_system(problem, ev, np.random.default_rng(8), options(**kwargs), g_ref).info["sampled_rows"]

    # Poisson sampling keeps Σπ ≤ s rows on average; 5 standard deviations above.
    assert kept(sketch_size=300) <= 300 + 5 * np.sqrt(300)
    s_default = sample_size(problem.d, 0.5)
    assert 300 + 5 * np.sqrt(300) < kept() <= s_default + 5 * np.sqrt(s_default)
    assert kept(eps=0.9) < kept(eps=0.5) < kept(eps=0.3)


def test_pcg_system_uses_the_exact_hessian_and_the_forcing_term(softmax_point):
    problem, ev, g_ref = softmax_point
    system = pcg_system(problem, ev, np.random.default_rng(9), options(), g_ref)
    H = problem.hessian(ev.x)
    p = np.random.default_rng(10).standard_normal(problem.d)
    scale = np.abs(H).sum(axis=1).max() * np.abs(p).max()
    np.testing.assert_allclose(system.hessp(p), H @ p, rtol=0, atol=1e-10 * scale)
    relative = np.linalg.norm(ev.grad) / g_ref
    assert system.forcing == min(MAX_FORCING, max(relative, hessian_module.OVERSOLVE_MARGIN * TOL / relative))
    assert system.forcing == min(MAX_FORCING, relative)  # far from tol here: the floor does not bind
    assert 0 < system.forcing < MAX_FORCING
    step = system.solve(ev.grad, 0.0)
    residual = np.linalg.norm(H @ step + ev.grad)
    assert residual <= system.forcing * np.linalg.norm(ev.grad) * (1 + 1e-6)
    assert system.info["cg_iterations"] >= 1
    assert float(ev.grad @ step) < 0


# ---------------------------------------------------------------------------------------------
# Preconditioned CG on synthetic systems
# ---------------------------------------------------------------------------------------------
def spd(rng, d, condition):
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.geomspace(1.0, condition, d)) @ Q.T


def approximate(rng, H, distortion):
    """H^{1/2}(I + E)H^{1/2} with ‖E‖ = distortion: a spectral (1 ± distortion) preconditioner of H."""
    root = scipy.linalg.sqrtm(H).real
    E = rng.standard_normal(H.shape)
    E = (E + E.T) / 2
    E *= distortion / np.abs(np.linalg.eigvalsh(E)).max()
    M = root @ (np.eye(H.shape[0]) + E) @ root
    return (M + M.T) / 2


@pytest.mark.parametrize("mu", [0.0, 0.3])
@pytest.mark.parametrize("forcing", [0.5, 1e-3, 1e-10])
def test_pcg_step_meets_the_forcing_term_on_the_exact_matrix(forcing, mu):
    rng = np.random.default_rng(11)
    d = 25
    H = spd(rng, d, 1e3)
    M = approximate(rng, H, 0.5)
    g = rng.standard_normal(d)
    system = NewtonSystem(M, hessp=lambda p: H @ p, forcing=forcing)
    p = system.solve(g, mu)
    A = H + mu * np.eye(d)
    # The loop tests its recursively updated residual; the true residual differs by rounding,
    # a few eps·‖A‖·‖p‖ per iteration.
    rounding = 100 * d * np.finfo(float).eps * (np.linalg.norm(A, 2) * np.linalg.norm(p) + np.linalg.norm(g))
    assert np.linalg.norm(A @ p + g) <= forcing * np.linalg.norm(g) + rounding
    assert 1 <= system.info["cg_iterations"] <= d + 5
    assert float(g @ p) < 0
    if forcing == 1e-10:
        # The step solves the exact system, not the preconditioner's: −(M + μI)⁻¹g is far off.
        newton = np.linalg.solve(A, -g)
        assert np.linalg.norm(p - newton) <= 1e-6 * np.linalg.norm(newton)
        assert np.linalg.norm(np.linalg.solve(M + mu * np.eye(d), -g) - newton) > 1e-2 * np.linalg.norm(newton)


def test_pcg_tighter_forcing_takes_more_iterations():
    rng = np.random.default_rng(12)
    d = 40
    H = spd(rng, d, 1e4)
    M = approximate(rng, H, 0.6)
    g = rng.standard_normal(d)
    counts = []
    for forcing in (0.5, 1e-2, 1e-4, 1e-8):
        system = NewtonSystem(M, hessp=lambda p: H @ p, forcing=forcing)
        system.solve(g, 0.0)
        counts.append(system.info["cg_iterations"])
    assert counts == sorted(counts) and counts[-1] > counts[0], counts


def test_direct_solve_without_hessp_is_the_cholesky_solve():
    rng = np.random.default_rng(13)
    H = spd(rng, 10, 100.0)
    g = rng.standard_normal(10)
    for mu in (0.0, 2.0):
        p = NewtonSystem(H).solve(g, mu)
        np.testing.assert_allclose((H + mu * np.eye(10)) @ p, -g, rtol=0, atol=1e-12 * np.linalg.norm(g) * 100)


def test_pcg_returns_none_on_negative_curvature_in_the_first_direction():
    # Preconditioner I, so the first direction is −g = −e_last, along which H + μI has curvature −1 + μ.
    H = np.diag([1.0, 2.0, 3.0, -1.0])
    g = np.array([0.0, 0.0, 0.0, 1.0])
    for mu in (0.0, 0.5):
        system = NewtonSystem(np.eye(4), hessp=lambda p: H @ p, forcing=1e-8)
        assert system.solve(g, mu) is None
        assert system.info["cg_iterations"] == 1
    # Damped enough, H + μI is positive definite and the step is the Newton step.
    p = NewtonSystem(np.eye(4), hessp=lambda p: H @ p, forcing=1e-12).solve(g, 2.0)
    np.testing.assert_allclose(p, [0.0, 0.0, 0.0, -1.0], atol=1e-12)


def test_pcg_keeps_the_descent_step_found_before_later_negative_curvature():
    # The first direction −g has positive curvature (mostly along the positive eigenvalues); the
    # second CG direction exposes the negative eigenvalue: the step from the first iteration is kept.
    H = np.diag([1.0, 1.0, -4.0])
    g = np.array([1.0, 1.0, 0.5])
    system = NewtonSystem(np.eye(3), hessp=lambda p: H @ p, forcing=1e-10)
    p = system.solve(g, 0.0)
    assert p is not None
    assert system.info["cg_iterations"] >= 2
    assert float(g @ p) < 0


def test_pcg_shifts_only_the_preconditioner_when_it_has_no_cholesky_factor():
    # H̃ + μI indefinite but H + μI positive definite: the preconditioner is shifted until it
    # factors, and CG still solves the undamped exact system.
    H = np.eye(3)
    M = np.diag([1.0, 1.0, -1.0])
    system = NewtonSystem(M, hessp=lambda p: H @ p, forcing=1e-8)
    p = system.solve(np.ones(3), 0.0)
    assert p is not None
    np.testing.assert_allclose(p, -np.ones(3), atol=1e-7)
    assert system.info["preconditioner_shift"] > 1.0


def test_pcg_solves_a_positive_definite_system_with_an_indefinite_preconditioner():
    rng = np.random.default_rng(14)
    d = 8
    H = spd(rng, d, 10.0)
    M = H - 1.5 * np.eye(d)  # a bad sample: one direction of H̃ has the wrong sign
    if np.linalg.eigvalsh(M)[0] >= 0 or np.linalg.eigvalsh(H)[0] <= 0:
        pytest.fail("test set-up: M must be indefinite and H positive definite")
    g = rng.standard_normal(d)
    system = NewtonSystem(M, hessp=lambda p: H @ p, forcing=1e-8)
    p = system.solve(g, 0.0)
    assert p is not None
    assert np.linalg.norm(H @ p + g) <= 1e-6 * np.linalg.norm(g)


def test_pcg_returns_a_step_near_a_softmax_relu_optimum_where_the_hessian_is_positive_definite():
    """On the planted softmax_relu problem (CSR), at x_true moved by ≤ 0.2 in the logits, H ≻ 0 and the
    exact strategy takes undamped steps; the pcg system returns None at μ = 0 for 4 of these 20
    seeds (measured), because the sampled H̃ (signed β) is indefinite."""
    C, b, V, _, x_true = planted("softmax_relu", "csr")
    x = moved(C, x_true, 0.2, 1)
    problem = Problem(C, b, "softmax_relu", V=V)
    ev = problem.evaluate(x)
    H = problem.hessian(x)
    if not np.linalg.eigvalsh(H)[0] > 0:
        pytest.fail("test set-up: the exact Hessian must be positive definite at x")
    rejected = [seed for seed in range(20)
                if pcg_system(problem, ev, np.random.default_rng(seed), options(), 1.0).solve(ev.grad, 0.0) is None]
    assert rejected == []


def test_csr_sandwich_rate_interpolates_in_d():
    rates = types.SimpleNamespace(CSR_SANDWICH_PAIRS=4e8, CSR_SANDWICH_PAIRS_D1024=1e8)
    assert hessian_module.csr_sandwich_rate(64, rates) == 4e8
    assert hessian_module.csr_sandwich_rate(256, rates) == pytest.approx(4e8)
    assert hessian_module.csr_sandwich_rate(512, rates) == pytest.approx(2e8)
    assert hessian_module.csr_sandwich_rate(4096, rates) == pytest.approx(1e8)


def test_dense_sandwich_rate_interpolates_in_d_and_prices_narrow_sandwiches_slower():
    """Measured at d = 32 and 256, log-log between; a slower narrow SYRK makes exact's sandwich at d = 32
    cost more, and lagged (a sandwich in three iterations) gains on it."""
    rates = types.SimpleNamespace(DENSE_SANDWICH_FMA=8e9, DENSE_SANDWICH_FMA_D32=1e9)
    assert hessian_module.dense_sandwich_rate(16, rates) == 1e9
    assert hessian_module.dense_sandwich_rate(32, rates) == pytest.approx(1e9)
    assert hessian_module.dense_sandwich_rate(64, rates) == pytest.approx(2e9)
    assert hessian_module.dense_sandwich_rate(1024, rates) == pytest.approx(8e9)
    narrow = stand_in(10**6, 32)
    fast = strategy_seconds(narrow, 0.5, None, uniform_rates(LAGGED_ITERATIONS_PER_EXACT=1.0))
    slow = strategy_seconds(narrow, 0.5, None, uniform_rates(LAGGED_ITERATIONS_PER_EXACT=1.0,
                                                             DENSE_SANDWICH_FMA_D32=1e8))
    # 5 iterations + the start's fit: 6 sandwiches for exact, 5/3 + 1 for lagged, of n·d²/2 multiply-adds.
    sandwich = 10**6 * 32 * 32 / 2 * (1 / 1e8 - 1 / 1e9)
    assert slow["exact"] - fast["exact"] == pytest.approx(6 * sandwich)
    assert slow["lagged"] - fast["lagged"] == pytest.approx((5 / 3 + 1) * sandwich)


def test_dense_cg_products_are_priced_at_their_measured_rate_in_d():
    """A dense CG step's product (one read of C for C·v and Cᵀ(β ⊙ Cv)) costs nnz / its rate, measured at
    d = 32 and 256 and log-log between: a slower product at d = 32 makes pcg's and lagged's CG steps cost
    more, by exactly their predicted CG iterations' entries, and leaves exact and sketch alone."""
    rates = types.SimpleNamespace(DENSE_HESSIAN_VECTOR_ENTRIES=8e9, DENSE_HESSIAN_VECTOR_ENTRIES_D32=1e9)
    assert hessian_module.dense_hessian_vector_rate(16, rates) == 1e9
    assert hessian_module.dense_hessian_vector_rate(64, rates) == pytest.approx(2e9)
    assert hessian_module.dense_hessian_vector_rate(512, rates) == pytest.approx(8e9)
    n, d = 10**6, 32
    narrow = stand_in(n, d)
    fast = strategy_seconds(narrow, 0.5, None, uniform_rates(LAGGED_ITERATIONS_PER_EXACT=1.0))
    slow = strategy_seconds(narrow, 0.5, None, uniform_rates(LAGGED_ITERATIONS_PER_EXACT=1.0,
                                                             DENSE_HESSIAN_VECTOR_ENTRIES_D32=1e8))
    product = n * d * (1 / 1e8 - 1 / 1e9)
    # uniform_rates: 5 exact iterations; pcg 5 × 3 CG iterations; lagged 5 iterations, two in three of
    # them 3 CG iterations each.
    assert slow["pcg"] - fast["pcg"] == pytest.approx(5 * 3 * product)
    assert slow["lagged"] - fast["lagged"] == pytest.approx(5 * 2 / 3 * 3 * product)
    for name in ("exact", "sketch"):
        assert slow[name] == fast[name]


# ---------------------------------------------------------------------------------------------
# lagged: CG on the exact Hessian, preconditioned by the last exact iteration's factor
# ---------------------------------------------------------------------------------------------
def test_lagged_step_is_the_exact_newton_step_to_cg_tolerance(softmax_point, monkeypatch):
    """The lagged system at a new point: no sandwich is formed, and its step solves the exact Newton system
    at that point (H from Problem.hessian: dense, independent of CG) to the forcing term; with the forcing
    term made tiny it is the exact Newton step −H⁻¹g."""
    problem, ev, g_ref = softmax_point
    scale = problem.column_norms()
    opts = {"loose": options(hessian="lagged", column_scale=scale),
            "tight": options(hessian="lagged", column_scale=scale, tol=1e-30)}
    builders = {"loose": hessian_module.LaggedSystems(), "tight": hessian_module.LaggedSystems()}
    # A g_ref 1e12× larger (and a tol that keeps the oversolving floor below it) makes
    # η = min(0.5, ‖g‖/g_ref) ~1e-12 for the tight builder.
    g_refs = {"loose": g_ref, "tight": g_ref * 1e12}
    first = {name: builder(problem, ev, None, opts[name], g_refs[name]) for name, builder in builders.items()}
    moved_ev = problem.evaluate(ev.x + 0.5 * first["loose"].solve(ev.grad, 0.0))
    H = problem.hessian(moved_ev.x)
    g = moved_ev.grad

    def no_sandwich(*args):
        raise AssertionError("a lagged iteration formed a sandwich")

    monkeypatch.setattr(problem.matrix, "sandwich", no_sandwich)
    monkeypatch.setattr(problem.matrix, "curvature_sandwich", no_sandwich)
    lagged = {name: builder(problem, moved_ev, None, opts[name], g_refs[name]) for name, builder in builders.items()}
    steps = {name: system.solve(g, 0.0) for name, system in lagged.items()}
    assert lagged["loose"].info["preconditioner_age"] == 1 and lagged["loose"].info["cg_iterations"] >= 1
    # CG stops at ‖D⁻¹(Hp + g)‖ ≤ η‖D⁻¹g‖; 1e-9 of slack for the rounding of the products.
    eta = min(MAX_FORCING, np.linalg.norm(g) / g_ref)
    residual = np.linalg.norm((H @ steps["loose"] + g) / scale) / np.linalg.norm(g / scale)
    assert residual <= eta + 1e-9
    # The tight step is the Newton step to ~cond(H)·η (cond ~1e3 here).
    newton = -np.linalg.solve(H, g)
    assert np.linalg.norm(steps["tight"] - newton) <= 1e-8 * np.linalg.norm(newton)


def test_lagged_forms_a_sandwich_every_third_iteration(monkeypatch):
    """Iterations 1, 4, 7, … are exact (a sandwich each, no CG); the two after each reuse its factor."""
    import fastnewton.matrix as matrix_module

    calls = []
    original = matrix_module.CSRMatrix.sandwich
    monkeypatch.setattr(matrix_module.CSRMatrix, "sandwich", lambda self, beta: calls.append(1) or original(self, beta))
    # the exact Hessian's sandwich, with β formed inside it
    fused = matrix_module.CSRMatrix.curvature_sandwich
    monkeypatch.setattr(matrix_module.CSRMatrix, "curvature_sandwich", lambda self, *args: calls.append(1) or fused(self, *args))
    C, b, _ = make_problem(4000, 12, seed=8, noise=0.05)
    res = solve(C, b, x0="zeros", hessian="lagged", tol=1e-10)
    assert res.converged and res.hessian == "lagged"
    ages = [record.get("preconditioner_age", 0) for record in res.history[1:]]
    assert ages == [k % 3 for k in range(res.n_iter)]
    assert all(("cg_iterations" in record) == (age > 0) for record, age in zip(res.history[1:], ages))
    assert len(calls) == sum(age == 0 for age in ages)
    # x = 0 is far from x*: the damped phase and the quadratic end both run on lagged steps.
    assert res.n_iter >= 6


@pytest.mark.parametrize("model, fmt", CASES)
def test_lagged_converges_quadratically_to_the_exact_solution(model, fmt):
    res = run(model, fmt, "lagged")
    exact = run(model, fmt, "exact")
    assert res.converged, res.message
    assert res.hessian == "lagged"
    assert_quadratic(res)
    assert res.n_iter <= exact.n_iter + 1
    # Same minimum as exact (see test_sketch_and_pcg_reach_the_exact_solution for the bound).
    assert np.linalg.norm(res.x - exact.x) <= X_RTOL * np.linalg.norm(exact.x)


@needs_two_threads
@pytest.mark.parametrize("fmt", FORMATS)
def test_lagged_thread_count_does_not_change_the_bits(fmt):
    if fmt == "dense" and not _blas_can_use_two_threads():
        pytest.skip("BLAS limited to one thread")
    two = run("softmax", fmt, "lagged")
    one = run("softmax", fmt, "lagged", n_threads=1)
    for key in ("loss", "grad_norm", "step_norm", "cg_iterations"):
        assert [r.get(key) for r in one.history] == [r.get(key) for r in two.history], key
    assert np.array_equal(one.x, two.x)


@pytest.mark.parametrize("per_row", [5, 700], ids=["short_rows", "long_rows"])
def test_cost_model_prices_each_row_as_the_sandwich_computes_it(per_row):
    """Equal CSR rows: the matrix's own work count (long rows by SYRK, short by pair updates) equals the
    shape-only estimate used for matrices known by shape alone (Dask), and a long-row CSR matrix is
    priced like the dense matrix of the same shape."""
    from fastnewton.matrix import estimated_sandwich_work

    n, d = 300, 1024
    C, b, _ = make_problem(n, d, nnz_per_row=per_row, seed=3)
    C = C.tocsr()
    equal_rows = np.all(np.diff(C.indptr) == C.nnz // n)
    matrix = Problem(C, b).matrix
    pairs, dense_fma = matrix.sandwich_work()
    if per_row == 700:
        assert (pairs, dense_fma) == (0.0, n * d * d / 2)
        dense = Problem(C.toarray(), b)
        assert strategy_seconds(dense, 0.5, None)["exact"] > 0
    else:
        row_nnz = np.diff(C.indptr)
        assert dense_fma == 0.0 and pairs == float(np.sum(row_nnz * (row_nnz + 1) // 2))
    if equal_rows:
        assert estimated_sandwich_work(n, d, C.nnz, False) == (pairs, dense_fma)


def test_auto_prices_the_sketch_refreshes_of_the_start_it_is_given():
    """From x0 = "auto" the reference is kept (no refresh priced), from zeros it is refused in a share of
    the iterations: the same problem costs the sketch more, and the other strategies the same."""
    problem = stand_in(10**6, 200, nnz=10**7, fmt="csr")
    rates = uniform_rates(REFERENCE_REFRESHES_PER_ITERATION=0.0, REFERENCE_REFRESHES_FROM_OTHER_STARTS=0.5)
    default = strategy_seconds(problem, 0.5, None, rates)
    other = strategy_seconds(problem, 0.5, None, rates, default_start=False)
    # (from another start no strategy pays the start's fit: exact and lagged differ by that alone)
    fit = default["exact"] - other["exact"]
    assert fit > 0 and default["lagged"] - other["lagged"] == pytest.approx(fit, rel=1e-12)
    assert other["sketch"] - default["sketch"] > -fit and other["pcg"] - default["pcg"] > -fit


# Each iteration figure and the strategies whose price it moves.
FIGURE_MOVES = {"EXACT_ITERATIONS": {"exact", "sketch", "pcg", "lagged"}, "SKETCH_ITERATIONS_PER_EXACT": {"sketch"},
                "PCG_ITERATIONS_PER_EXACT": {"pcg"}, "CG_ITERATIONS_PER_STEP": {"pcg"},
                "LAGGED_ITERATIONS_PER_EXACT": {"lagged"}, "LAGGED_CG_ITERATIONS_PER_STEP": {"lagged"}}


@pytest.mark.parametrize("name", STARTED_FIGURES)
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "csr"])
def test_auto_prices_another_start_with_the_figures_measured_from_zeros(name, dense):
    """From zeros every strategy takes 3–4× the Newton iterations of x0="auto", in other ratios, and CG more per
    step: another start is priced with the ``_FROM_OTHER_STARTS`` figures, each of which raises the price of the
    strategies it counts for, from another start only."""
    assert set(FIGURE_MOVES) == set(STARTED_FIGURES)
    problem = stand_in(10**5, 256) if dense else stand_in(10**6, 200, nnz=10**7, fmt="csr")
    base = uniform_rates()
    raised = uniform_rates(**{name + FROM_OTHER_STARTS: 2 * getattr(base, name)})
    assert strategy_seconds(problem, 0.5, None, raised) == strategy_seconds(problem, 0.5, None, base)
    before = strategy_seconds(problem, 0.5, None, base, default_start=False)
    after = strategy_seconds(problem, 0.5, None, raised, default_start=False)
    assert {strategy for strategy in after if after[strategy] > before[strategy]} == FIGURE_MOVES[name]
    assert all(after[strategy] == before[strategy] for strategy in after if strategy not in FIGURE_MOVES[name])


def test_auto_prices_no_start_fit_from_another_start():
    """x0="zeros" or a user's x0 makes no least-squares fit: exact's price from another start is its price from
    x0="auto" less that fit (``start_seconds``), with the same iteration figures."""
    for problem in (stand_in(10**5, 256), stand_in(10**6, 200, nnz=10**7, fmt="csr")):
        rates = uniform_rates()
        fit = hessian_module.start_seconds(problem, 0.5, None, rates)["exact"]
        default = strategy_seconds(problem, 0.5, None, rates)
        other = strategy_seconds(problem, 0.5, None, rates, default_start=False)
        for name in ("exact", "lagged"):
            assert other[name] == pytest.approx(default[name] - fit, rel=1e-12)


def test_solve_passes_its_start_to_auto(monkeypatch):
    """``solve``'s x0 reaches the cost model: "auto" as the default start, zeros and arrays as others."""
    seen = []
    original = hessian_module.choose_strategy

    def spy(problem, eps, sketch_size, default_start=True):
        seen.append(default_start)
        return original(problem, eps, sketch_size, default_start)

    monkeypatch.setattr(hessian_module, "choose_strategy", spy)
    C, b, _ = make_problem(200, 5, nnz_per_row=3, noise=0.1, seed=0)
    for x0 in ("auto", "zeros", np.zeros(5)):
        solve(C, b, x0=x0, max_iter=2)
    assert seen == [True, False, False]


def test_auto_prices_the_sampled_start_of_the_sketched_strategies():
    """From x0="auto", sketch and pcg fit the start on s = sample_size(d + 1, ε) rows: their start costs
    a draw over the rows, a SYRK of s rows of width d + 2 and two Cholesky factorisations instead of the
    full sandwich, a pass and a Cholesky; its two reads of C (the fit's mean, with ∇L(0) in the same pass;
    the rows' distance to it, with the reference's row factors in the same read) are the two passes the
    sketched strategies pay either way (their first reference, the stopping test's ∇L(0)), plus what the
    second read costs beyond a pass (SAMPLED_START_EXTRA_PASSES). exact and
    lagged keep the exact fit; from zeros, on Dask (no kept reference) or for a model whose start does not
    sample (``samples_start``) nothing changes."""
    rates = uniform_rates(REFERENCE_REFRESHES_PER_ITERATION=0.0)
    n, d = 100_000, 100
    plain = stand_in(n, d)
    sampling = stand_in(n, d)
    sampling.row_model, sampling.block = types.SimpleNamespace(samples_start=True), object()
    before, after = strategy_seconds(plain, 0.5, None, rates), strategy_seconds(sampling, 0.5, None, rates)
    sandwich, one_pass, cholesky = n * d * d / 2 / 1e9, n * d / 1e9, d**3 / 3 / 1e9
    s = sample_size(d + 1, 0.5)
    draw = n / 1e9  # the Poisson draw over the n rows
    saved = (sandwich + one_pass + cholesky) - (hessian_module.SAMPLED_START_EXTRA_PASSES * one_pass + draw
                                                + s * (d + 2) ** 2 / 2 / 1e9 + 2 * cholesky)
    assert before["sketch"] - after["sketch"] == pytest.approx(saved, rel=1e-9)
    # pcg's iterations are then preconditioned by the start's fit matrix: no sample (its rows, its draw,
    # the certificate's 4/3 d³), START_PRECONDITIONED_CG_ITERATIONS_PER_STEP instead of CG_ITERATIONS_PER_STEP.
    rows = sample_size(d, 0.5, PRECONDITIONER_SAMPLE_CONSTANT)
    cg_step = (n * d + 2 * d * d) / 1e9 + CG_ITERATION_SECONDS
    per_iteration = (rows * d * d / 2 / 1e9 + draw + 4 * cholesky
                     + (rates.CG_ITERATIONS_PER_STEP - rates.START_PRECONDITIONED_CG_ITERATIONS_PER_STEP) * cg_step)
    iterations = rates.EXACT_ITERATIONS * rates.PCG_ITERATIONS_PER_EXACT
    assert before["pcg"] - after["pcg"] == pytest.approx(saved + iterations * per_iteration, rel=1e-9)
    for name in ("exact", "lagged"):
        assert after[name] == before[name]
    assert strategy_seconds(sampling, 0.5, None, rates, default_start=False) == strategy_seconds(
        plain, 0.5, None, rates, default_start=False)
    dask_like = stand_in(n, d)
    dask_like.row_model, dask_like.block, dask_like.reuses_leverage_scores = sampling.row_model, object(), False
    assert hessian_module.start_seconds(dask_like, 0.5, None, rates)["sampled"] == np.inf
    relu = stand_in(n, d)
    relu.row_model, relu.block = types.SimpleNamespace(samples_start=False), object()
    assert hessian_module.start_seconds(relu, 0.5, None, rates)["sampled"] == np.inf
    # A sample expected to keep more than SAMPLED_START_MAX_FRACTION of the rows is not drawn.
    most = hessian_module.SAMPLED_START_MAX_FRACTION * n
    assert hessian_module.start_seconds(sampling, 0.5, None, rates, sample_rows=most)["sampled"] < np.inf
    assert hessian_module.start_seconds(sampling, 0.5, None, rates, sample_rows=most + 1)["sampled"] == np.inf


def test_expected_sample_rows_is_the_poisson_samples_expected_size():
    """Σᵢ min(1, s·bᵢ²/Σb²): s for equal targets, fewer where a few rows carry most of b², never more than
    n; min(n, s) without a target (a stand-in). On dense planted problems within 10% of the rows the
    sketched iterations keep (their scores |βᵢ|gᵢ scale like bᵢ² near the fit, gᵢ about equal on i.i.d.
    rows): the dense sampled sandwich costs the rows kept, not s (10⁵×512: 21.9k of s = 52.5k)."""
    from fastnewton.hessian import expected_sample_rows
    from fastnewton.start import starting_point

    n, d = 2000, 8
    C = np.random.default_rng(0).standard_normal((n, d))
    assert expected_sample_rows(Problem(C, np.full(n, 1.0 / n)), [500, 5000]) == pytest.approx([500, n])
    b = np.full(n, 0.5 / (n - 1))
    b[0] = 0.5  # one row carries 1/(1 + 1/(n − 1)) of Σb²
    squares = b * b
    by_hand = [sum(min(1.0, s * value / squares.sum()) for value in squares) for s in (10, 500)]
    # rel 1e-9: the kernel sums s minus the capped rows' excess (another rounding order than by hand).
    assert expected_sample_rows(Problem(C, b), [10, 500]) == pytest.approx(by_hand, rel=1e-9)
    assert expected_sample_rows(Problem(C, b * 1e-300), [10, 500]) == pytest.approx(by_hand, rel=1e-9)
    assert by_hand[1] < 15
    assert expected_sample_rows(stand_in(n, d), [10, 5000]) == [10, n]
    for n, d in ((20_000, 64), (5000, 48)):
        C, b, _ = make_problem(n, d, dense=True, noise=0.1, seed=0)
        # pcg is given the exact fit as an array: from x0="auto" its iterations are preconditioned by the
        # start's sampled fit and draw no sample of their own.
        x0, _ = starting_point(Problem(C, b), "auto")
        for name, constant, start in (("sketch", 3.0, "auto"), ("pcg", PRECONDITIONER_SAMPLE_CONSTANT, x0)):
            res = solve(C, b, hessian=name, seed=0, x0=start)
            kept = np.mean([record["sampled_rows"] for record in res.history[1:]])
            estimate, = expected_sample_rows(Problem(C, b), [sample_size(d, 0.5, constant)])
            assert kept == pytest.approx(estimate, rel=0.1) and estimate < 0.8 * sample_size(d, 0.5, constant)


def test_auto_prices_the_row_work_of_every_iteration_and_the_draw_of_every_sketched_one():
    """Each iteration (and the first evaluation) pays n/ITERATION_ROWS beyond its passes, each sketched
    iteration's draw n/SAMPLING_ROWS: a strategy predicted to take more iterations pays them more often."""
    n = 10**6
    csr = stand_in(n, 200, nnz=10 * n, fmt="csr")
    free = strategy_seconds(csr, 0.5, None, uniform_rates(REFERENCE_REFRESHES_PER_ITERATION=0.0))
    paid = strategy_seconds(csr, 0.5, None, uniform_rates(REFERENCE_REFRESHES_PER_ITERATION=0.0,
                                                          ITERATION_ROWS=1e8, SAMPLING_ROWS=2e8))
    iterations = {"exact": 5, "sketch": 10, "pcg": 5, "lagged": 15}  # uniform_rates' figures
    for name, count in iterations.items():
        draws = count * n * (1 / 2e8 - 1 / 1e9) if name in ("sketch", "pcg") else 0.0
        assert paid[name] - free[name] == pytest.approx((count + 1) * n * (1 / 1e8 - 1 / 1e9) + draws, rel=1e-9)


# The rates this machine measured (bench/calibrate.py --write, then --write --merge five times) when
# the row terms were added (the narrow dense SYRK's rate a little later), as fixed figures: the test
# below must not move with a re-calibration.
MEASURED_RATES = dict(
    DENSE_PASS_ENTRIES=3.45e9, CSR_PASS_ENTRIES=2.76e9, DENSE_SANDWICH_FMA=3.32e10, DENSE_SANDWICH_FMA_D32=1.21e10,
    CSR_SANDWICH_PAIRS=2.45e9,
    CSR_SANDWICH_PAIRS_D1024=1.65e9, DENSE_EMBED_UPDATES=3.32e9, CSR_EMBED_UPDATES=4.63e8,
    DENSE_SAMPLED_SANDWICH_FMA=2.53e10, DENSE_MATMAT_FMA=1.65e10, CSR_MATMAT_FMA=7.07e9, QR_FMA=4.09e10,
    CHOLESKY_FMA=1.81e10, ITERATION_ROWS=1.04e8, TINY_ITERATIONS=3.42e3, SAMPLING_ROWS=2.03e8,
    EXACT_ITERATIONS=2.67, SKETCH_ITERATIONS_PER_EXACT=2.44, PCG_ITERATIONS_PER_EXACT=1.11,
    CG_ITERATIONS_PER_STEP=3.92, REFERENCE_REFRESHES_PER_ITERATION=0.0714,
    REFERENCE_REFRESHES_FROM_OTHER_STARTS=0.179, LAGGED_ITERATIONS_PER_EXACT=1.0, LAGGED_CG_ITERATIONS_PER_STEP=2.0,
    START_PRECONDITIONED_CG_ITERATIONS_PER_STEP=3.0, DENSE_HESSIAN_VECTOR_ENTRIES=3.0e9,
    DENSE_HESSIAN_VECTOR_ENTRIES_D32=1.5e9,
    # priced later; here as the model then priced them: no per-row sandwich cost, a CSR Hessian-vector
    # product at two passes
    CSR_SANDWICH_ROWS=np.inf, CSR_HESSIAN_VECTOR_ENTRIES=2.76e9 / 2, CSR_HESSIAN_VECTOR_ROWS=np.inf)
# (and the same iteration figures from any start)
MEASURED_RATES = with_other_start_figures(MEASURED_RATES)


def test_auto_keeps_exact_on_short_csr_rows_once_the_row_work_is_priced():
    """CSR 10⁶×200, 10 per row, from x0="auto" (measured: exact 0.37–0.40 s, sketch 0.66–0.70 s, 1.7–1.9×):
    the sketch's extra iterations each pay the row work (≈ 10 ms at n = 10⁶, more than the three passes)
    and a draw over every row. Priced, and with the iteration figures of today's starts, the sketch is
    predicted ≥ 1.5× exact; without the row terms and with the figures measured before (2.17 sketched
    iterations per exact one, no refused reference) auto had picked the sketch."""
    csr = stand_in(10**6, 200, nnz=10**7, fmt="csr")
    assert set(MEASURED_RATES) == {name for name in dir(rates_module) if name.isupper() and name != "MACHINE"}
    seconds = strategy_seconds(csr, 0.5, None, types.SimpleNamespace(**MEASURED_RATES))
    assert seconds["sketch"] >= 1.5 * seconds["exact"] and min(seconds, key=seconds.get) in ("exact", "lagged")
    before = types.SimpleNamespace(**{**MEASURED_RATES, "ITERATION_ROWS": np.inf, "SAMPLING_ROWS": np.inf,
                                      "TINY_ITERATIONS": np.inf, "EXACT_ITERATIONS": 3.0,
                                      "SKETCH_ITERATIONS_PER_EXACT": 2.17, "REFERENCE_REFRESHES_PER_ITERATION": 0.0})
    seconds = strategy_seconds(csr, 0.5, None, before)
    assert seconds["sketch"] < seconds["exact"]


def test_auto_picks_pcg_from_zeros_on_wide_dense_c():
    """Dense 10⁵ × 256 and 3·10⁵ × 256 from zeros (``python bench/auto_grid.py --x0 zeros``: pcg 0.43 and 0.73 s,
    lagged 0.64 and 1.16 s): priced with the iteration figures of x0="auto" lagged was picked (1.49× and 1.58× the
    fastest); with those measured from zeros (3× the Newton iterations, lagged 6% more than exact, CG 1.8–2 per
    step: this machine's bench/calibrate.py) pcg is. From x0="auto" the figures from zeros change nothing."""
    measured = types.SimpleNamespace(**MEASURED_RATES)
    from_zeros = types.SimpleNamespace(**{**MEASURED_RATES, **dict(
        EXACT_ITERATIONS_FROM_OTHER_STARTS=8.25, SKETCH_ITERATIONS_PER_EXACT_FROM_OTHER_STARTS=1.4,
        PCG_ITERATIONS_PER_EXACT_FROM_OTHER_STARTS=1.03, CG_ITERATIONS_PER_STEP_FROM_OTHER_STARTS=1.83,
        LAGGED_ITERATIONS_PER_EXACT_FROM_OTHER_STARTS=1.06, LAGGED_CG_ITERATIONS_PER_STEP_FROM_OTHER_STARTS=2.0)})
    for n in (10**5, 3 * 10**5):
        dense = stand_in(n, 256)
        before = strategy_seconds(dense, 0.5, None, measured, default_start=False)
        after = strategy_seconds(dense, 0.5, None, from_zeros, default_start=False)
        assert min(before, key=before.get) == "lagged" and min(after, key=after.get) == "pcg"
        assert picked_strategies(after) == NEAR_TIE_ORDER.index("pcg")
        assert strategy_seconds(dense, 0.5, None, from_zeros) == strategy_seconds(dense, 0.5, None, measured)


def test_auto_prices_the_rows_of_a_short_row_csr_sandwich_and_picks_lagged_there():
    """CSR 10⁶ × 32, 5 per row (bench/auto_grid.py's point; measured exact 0.179–0.181 s, lagged 0.150–0.160 s):
    a row of the sandwich costs more than its 15 pairs (its loop set-up; the pairs alone priced 4.4 ms of a
    measured 9.7 ms), and a CG product reads C once (priced as two passes before). With both priced (this
    machine's calibration of them) lagged is predicted cheaper; with the sandwich's rows free and the product
    at two passes, as before, exact was."""
    csr = stand_in(10**6, 32, nnz=5 * 10**6, fmt="csr")
    priced = types.SimpleNamespace(**{**MEASURED_RATES, "CSR_SANDWICH_PAIRS": 3.47e9, "CSR_SANDWICH_ROWS": 1.78e8,
                                      "CSR_HESSIAN_VECTOR_ENTRIES": 1.87e9, "CSR_HESSIAN_VECTOR_ROWS": 1.73e9})
    seconds = strategy_seconds(csr, 0.5, None, priced)
    assert min(seconds, key=seconds.get) == "lagged" and seconds["exact"] > 1.05 * seconds["lagged"]
    seconds = strategy_seconds(csr, 0.5, None, types.SimpleNamespace(**MEASURED_RATES))
    assert min(seconds, key=seconds.get) == "exact"


def test_sketched_strategies_offer_a_sampled_start_only_where_it_is_predicted_cheaper():
    options = SolveOptions(hessian="sketch", tol=1e-8, max_iter=10, eps=0.5, sketch_size=None, seed=0,
                           callback=None, verbose=False)
    # n = 500 < s = 621: the "sample" would hold most rows, gathered, at more than the exact fit's cost.
    small = Problem(*make_problem(500, 10, dense=True, noise=0.1, seed=0)[:2])
    # d = 128: the SYRK of the sample saves more than its passes and its draw over the rows cost.
    large = Problem(*make_problem(20_000, 128, dense=True, noise=0.1, seed=0)[:2])
    for problem in (small, large):
        seconds = hessian_module.start_seconds(problem, 0.5, None)
        assert (seconds["sampled"] < seconds["exact"]) == (problem is large)
    for builder in (hessian_module.SketchedSystems(), hessian_module.PreconditionerSystems()):
        assert builder.start_sample(small, options) is None
        sample = builder.start_sample(large, options)
        assert sample.size == sample_size(large.d + 1, 0.5)
        # The sample's reference is the one the iterations of this problem then use.
        assert builder.reference(large, None) is sample.reference


def test_csr_starts_are_not_sampled():
    # On CSR the sampled fit measured no gain and, priced cheaper, sent auto to a slower sketch.
    C, b = make_problem(100_000, 64, nnz_per_row=10, noise=0.1, seed=0)[:2]
    seconds = hessian_module.start_seconds(Problem(C, b), 0.5, None)
    assert seconds["sampled"] == np.inf and np.isfinite(seconds["exact"])


# ---------------------------------------------------------------------------------------------
# CG's forcing term, and pcg preconditioned by the start's own fit matrix
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("relative, tol, expected", [
    (1e-2, 1e-8, 1e-2),     # far from tol: ‖g‖/g_ref (quadratic local convergence)
    (2e-4, 1e-8, 2e-4),
    # near tol: the residual need only reach OVERSOLVE_MARGIN·tol·g_ref
    (1e-6, 1e-8, hessian_module.OVERSOLVE_MARGIN * 1e-2),
    (3e-8, 1e-8, hessian_module.OVERSOLVE_MARGIN / 3),
    (0.9, 1e-8, MAX_FORCING),
])
def test_forcing_term_stops_cg_once_the_predicted_gradient_meets_the_stopping_test(relative, tol, expected):
    ev = types.SimpleNamespace(grad=np.array([relative, 0.0]))
    assert hessian_module._forcing(ev, 1.0, tol) == pytest.approx(expected, rel=1e-12)
    assert hessian_module._forcing(ev, 0.0, tol) == MAX_FORCING


@pytest.fixture(scope="module")
def dense_start():
    """The planted dense softmax problem after its start from x0="auto" with pcg's builder: (problem,
    builder, its FitSample, the evaluation at x0, g_ref, options)."""
    C, b, _, _, _ = planted("softmax", "dense")
    problem = Problem(C, b)
    opts = options(column_scale=problem.column_norms())
    builder = hessian_module.PreconditionerSystems()
    sample = builder.start_sample(problem, opts)
    assert sample is not None
    x0, _ = run_start(problem, sample)
    g_ref = float(np.linalg.norm(problem.gradient_at_zero()))
    return problem, builder, sample, problem.evaluate(x0), g_ref, opts


def run_start(problem, sample):
    return run_requests(problem.row_model.auto_start_rounds(problem, sample=sample))


def softmax_hessian(C, b, x):
    """The softmax loss's dense Hessian in plain NumPy from the closed form (README, "Derivatives"):
    Cᵀ diag(β) C + (CᵀU) S (CᵀU)ᵀ, β = v − c·s, U = [s, v], v = s ⊙ (2s − b), c = ⟨s, s − b⟩,
    S = [[γ, −1], [−1, 0]], γ = ⟨3s − 2b, s⟩ (tests/naive.hessian forms the n × n Hessian in u instead:
    3 GB at n = 20 000)."""
    u = C @ x
    s = np.exp(u - u.max())
    s /= s.sum()
    v = s * (2 * s - b)
    c, gamma = s @ (s - b), (3 * s - 2 * b) @ s
    P = C.T @ np.column_stack([s, v])
    return (C.T * (v - c * s)) @ C + P @ np.array([[gamma, -1.0], [-1.0, 0.0]]) @ P.T


def softmax_u_columns(C, b, x):
    """U = [s, v] of ``softmax_hessian`` (n × 2), in plain NumPy."""
    u = C @ x
    s = np.exp(u - u.max())
    s /= s.sum()
    return np.column_stack([s, s * (2 * s - b)])


def test_start_fit_matrix_is_recorded_and_preconditions_pcg(dense_start):
    """The FitSample holds the fit's normal matrix M (Σω = 1), within ε of the exact b²-weighted one on
    [C, 1]; pcg's first system is (Σβ)·Σ_ω + P̃ S P̃ᵀ (no sample), Σ_ω = M[:d, :d] − μμᵀ the ω-covariance of the
    rows about their ω-mean μ = M[:d, d] and P̃ = P − μ(Uᵀ1)ᵀ (softmax's Hessian is unchanged by centring C on any
    μ: the fit's rows, centred, approximate C̃ᵀ diag(β) C̃), and its step is the Newton step −H⁻¹g of the dense
    Hessian (``softmax_hessian``, plain NumPy) to CG's forcing term."""
    problem, builder, sample, ev, g_ref, opts = dense_start
    C, b = problem.block.matrix.array, problem.block.b
    d = problem.d
    assert sample.kept > 0
    weights = (b / b.max()) ** 2
    A = np.column_stack([C, np.ones(C.shape[0])])
    exact_M = (A.T * weights) @ A / weights.sum()
    # ε-spectral: the whitened difference has eigenvalues within ±ε = 0.5 (measured ±0.2 here).
    root = np.linalg.cholesky(exact_M)
    whitened = np.linalg.solve(root, np.linalg.solve(root, sample.normal_matrix - exact_M).T)
    assert np.abs(np.linalg.eigvalsh((whitened + whitened.T) / 2)).max() < 0.5
    system = builder(problem, ev, np.random.default_rng(0), opts, g_ref)
    assert system.info == {"preconditioner": "start fit"}
    beta = problem.beta(ev)
    M = sample.normal_matrix
    mean = M[:d, d] / M[d, d]
    centred_P = ev.P - np.outer(mean, softmax_u_columns(C, b, ev.x).sum(axis=0))
    covariance_part = beta.sum() * (M[:d, :d] - M[d, d] * np.outer(mean, mean))
    expected = covariance_part + centred_P @ ev.S @ centred_P.T
    scale = (np.abs(covariance_part) + np.abs(ev.P @ ev.S @ ev.P.T)).max()
    np.testing.assert_allclose(system.matrix, expected, rtol=0, atol=1e-12 * scale)
    g = ev.grad
    H = softmax_hessian(C, b, ev.x)
    step = system.solve(g, 0.0)
    scale = opts.column_scale
    residual = np.linalg.norm((H @ step + g) / scale) / np.linalg.norm(g / scale)
    assert residual <= system.forcing + 1e-9
    assert 1 <= system.info["cg_iterations"] <= hessian_module.START_PRECONDITIONER_MAX_CG
    assert not system.info.get("cg_truncated")
    # With a tiny forcing term the step is the Newton step (cond(H) ~1e3: 1e-12·1e3 of slack).
    system.forcing = 1e-12
    system.max_cg_iterations = hessian_module.MAX_CG_ITERATIONS
    newton = np.linalg.solve(H, -g)
    assert np.linalg.norm(system.solve(g, 0.0) - newton) <= 1e-8 * np.linalg.norm(newton)


def test_a_truncated_cg_retires_the_start_preconditioner(dense_start):
    """The rule: a step whose CG misses its forcing term within START_PRECONDITIONER_MAX_CG iterations
    (here: the fit matrix replaced by a poor one) still returns its descent iterate, and
    the next system of that problem is the sampled H̃; so is the first where Σβ ≤ 0."""
    problem, _, sample, ev, g_ref, opts = dense_start
    builder = hessian_module.PreconditionerSystems()
    # M with its columns rescaled by 1/30 … 30: condition ×1e6 against the Hessian.
    spread = np.geomspace(1 / 30, 30, problem.d + 1)
    poor = hessian_module.FitSample(sample.reference, sample.size, None,
                                    normal_matrix=sample.normal_matrix * np.outer(spread, spread))
    builder.start_fits[id(problem)] = [problem, poor, None]
    first = builder(problem, ev, np.random.default_rng(0), opts, g_ref)
    assert first.info["preconditioner"] == "start fit"
    step = first.solve(ev.grad, 0.0)
    assert first.info["cg_truncated"] and first.info["cg_iterations"] == hessian_module.START_PRECONDITIONER_MAX_CG
    assert float(ev.grad @ step) < 0
    second = builder(problem, ev, np.random.default_rng(0), opts, g_ref)
    assert "sampled_rows" in second.info and "preconditioner" not in second.info
    assert id(problem) not in builder.start_fits
    # Σβ ≤ 0 (β of mixed sign far from the optimum): no fit-matrix preconditioner at all.
    builder.start_fits[id(problem)] = [problem, sample, None]
    negative = types.SimpleNamespace(**vars(ev))
    negative.beta = -problem.beta(ev)
    assert "sampled_rows" in builder(problem, negative, np.random.default_rng(0), opts, g_ref).info


def test_pcg_from_the_auto_start_matches_exact_and_is_reproducible():
    """Dense softmax from x0="auto": every pcg step is preconditioned by the start's fit matrix, the
    answer is exact's to the stopping rule's accuracy (see TOL), and the bits depend on the seed alone."""
    C, b, _, _, _ = planted("softmax", "dense")
    exact = solve(C, b, hessian="exact", tol=TOL, seed=SEED)
    runs = [solve(C, b, hessian="pcg", tol=TOL, seed=SEED, n_threads=threads) for threads in (THREADS, 1, THREADS)]
    first = runs[0]
    assert first.converged and "leverage-sampled rows" in first.start
    assert all(record["preconditioner"] == "start fit" for record in first.history[1:])
    assert all(record["cg_iterations"] <= hessian_module.START_PRECONDITIONER_MAX_CG for record in first.history[1:])
    assert np.linalg.norm(first.x - exact.x) <= X_RTOL * np.linalg.norm(exact.x)
    for again in runs[1:]:
        assert np.array_equal(again.x, first.x)
        assert [r["loss"] for r in again.history] == [r["loss"] for r in first.history]


def test_cg_sums_the_forward_pass_of_its_step(dense_start):
    """C·p of a CG step, summed from its Hessian-vector products' passes, equals C @ p (NumPy) to the
    rounding of a pass plus one term per CG iteration; the line search takes it instead of a pass. Other
    arrays, and steps of a Cholesky system, get None (the line search makes the pass)."""
    problem, builder, _, ev, g_ref, opts = dense_start
    C = problem.block.matrix.array
    system = pcg_system(problem, ev, np.random.default_rng(0), opts, g_ref)
    step = system.solve(ev.grad, 0.0)
    forward = system.forward_of(step)
    iterations = system.info["cg_iterations"]
    naive.assert_within_rounding(forward, C @ step, np.abs(C) @ np.abs(step), problem.d + 4 * iterations)
    assert system.forward_of(step.copy()) is None
    line = problem.line(ev, step, forward)
    assert line.Cp is forward and line.largest == np.max(np.abs(forward))
    exact = exact_system(problem, ev, None, opts, g_ref)
    assert exact.forward_of(exact.solve(ev.grad, 0.0)) is None


def test_cg_adds_its_products_passes_in_place_with_numpys_bits(dense_start, monkeypatch, run_with_threads):
    """CG's C·p adds α·C·d of each further iteration into its sum in place (``add_scaled``, one parallel
    pass; the first α·C·d by ``scale_into``): the bits of NumPy's ``forward + α·(C·d)`` (the product rounded,
    then the sum), with one thread as with two, and the same step."""
    problem, builder, _, ev, g_ref, opts = dense_start

    def forward_and_step():
        system = pcg_system(problem, ev, np.random.default_rng(0), opts, g_ref)
        system.forcing = 1e-12  # several CG iterations, so that the in-place sum runs
        step = system.solve(ev.grad, 0.0)
        return system.forward_of(step), step, system.info["cg_iterations"]

    forward, step, iterations = run_with_threads(2, forward_and_step)
    assert iterations >= 3 and forward is not None
    one = run_with_threads(1, forward_and_step)
    assert np.array_equal(one[0], forward) and np.array_equal(one[1], step)
    monkeypatch.setattr(hessian_module, "add_scaled",
                        lambda a, factor, b, chunk_rows, out: np.add(a, factor * b, out=out))
    monkeypatch.setattr(hessian_module, "scale_into", lambda factor, b, chunk_rows, out: np.multiply(factor, b, out=out))
    numpy_forward, numpy_step, _ = forward_and_step()
    assert np.array_equal(numpy_forward, forward) and np.array_equal(numpy_step, step)


@pytest.mark.parametrize("dense", [True, False])
def test_pricing_many_problems_at_once_gives_each_its_own_figures(dense):
    """many_strategy_seconds (solve_many prices all its problems at once) gives every problem the figures
    strategy_seconds gives it alone, to the bit, and choose_strategies its choose_strategy: on a grid of
    shapes (a one-row problem, targets at 1e-300 and all zero among them), eps, sketch sizes and starts (one
    flag for all, or one per problem); and on stand-ins (no target, no sandwich_work) where auto's choice differs."""
    shapes = [(64, 32), (512, 64), (2000, 8), (300, 120), (5000, 200), (1, 3)]
    problems = [Problem(*make_problem(n, d, nnz_per_row=min(d, 6), seed=n + d, dense=dense)[:2]) for n, d in shapes]
    C, b = make_problem(400, 16, nnz_per_row=6, seed=3, dense=dense)[:2]
    problems += [Problem(C, b * 1e-300), Problem(C, np.zeros_like(b)), Problem(C, -b)]
    batch = hessian_module.PricedShapes.of_many([problem.matrix for problem in problems],
                                                [problem.block.b for problem in problems], samples_start=True)
    stand_ins = [stand_in(1000, 20), stand_in(10**6, 512), stand_in(10**6, 1000, nnz=10**7, fmt="csr"),
                 stand_in(10**5, 64, nnz=10**6, fmt="csr"), stand_in(10**5, 256)]
    stand_in_batch = hessian_module.PricedShapes.of_many([problem.matrix for problem in stand_ins], None, False)
    chosen_names = set()
    for group, priced in ((problems, batch), (stand_ins, stand_in_batch)):
        for eps, sketch_size in [(0.5, None), (0.2, None), (0.5, 100)]:
            per_problem = [i % 3 != 1 for i in range(len(group))]
            for default_start in (True, False, per_problem):
                many = hessian_module.many_strategy_seconds(priced, eps, sketch_size, default_start=default_start)
                chosen = hessian_module.choose_strategies(priced, eps, sketch_size, default_start)
                for i, problem in enumerate(group):
                    flag = default_start[i] if isinstance(default_start, list) else default_start
                    alone = strategy_seconds(problem, eps, sketch_size, default_start=flag)
                    assert {name: float(seconds[i]) for name, seconds in many.items()} == alone, (i, eps, flag)
                    assert chosen[i] == choose_strategy(problem, eps, sketch_size, flag)
                chosen_names.update(chosen)
    assert len(chosen_names) > 1  # the choices compared are not all one strategy


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_a_damping_retry_of_lagged_cg_reuses_its_first_product(dense, monkeypatch):
    """lagged from zeros (CSR n = 5000, d = 20: CG's first direction meets negative curvature, and μ is raised):
    the preconditioner, reused across those moves of μ, gives the same first direction, whose product
    ∇²L·d (independent of μ) is taken from the last one instead of a new pass over C. Asked for the same v,
    the product returns ∇²L·v with its bits and keeps its C·v; the solve has the bits of one whose every
    product makes its passes, with fewer passes."""
    C, b = make_problem(5000, 20, nnz_per_row=5, noise=1e-2, seed=0, dense=dense)[:2]
    problem = Problem(C, b)
    ev = problem.evaluate(np.full(20, 0.1))
    product = hessian_module.ForwardKeepingProduct(problem, ev)
    v = np.random.default_rng(0).standard_normal(20)
    first = product(v)
    forward = product.forward
    passes = []
    made = Problem.hessian_product_and_forward
    monkeypatch.setattr(Problem, "hessian_product_and_forward", lambda self, e, p: passes.append(1) or made(self, e, p))
    again = product(v.copy())
    assert passes == [] and np.array_equal(again, first) and again is not first and product.forward is forward
    first += 1.0  # the caller's array: the kept product is not changed by it
    assert np.array_equal(product(v), again) and passes == []
    product(2.0 * v)
    assert passes == [1] and not np.array_equal(product.forward, forward)
    if dense:  # this dense problem's lagged solve meets no negative curvature: the solve below is CSR's
        return
    passes.clear()
    res = solve(C, b, x0="zeros", hessian="lagged")
    cached = len(passes)
    passes.clear()
    uncached = hessian_module.ForwardKeepingProduct.__call__

    def every_product_a_pass(self, v):
        self._last = None
        return uncached(self, v)
    monkeypatch.setattr(hessian_module.ForwardKeepingProduct, "__call__", every_product_a_pass)
    again = solve(C, b, x0="zeros", hessian="lagged")
    assert res.converged and np.array_equal(res.x, again.x) and res.n_iter == again.n_iter
    assert [h["cg_iterations"] for h in res.history[1:] if "cg_iterations" in h] == [
        h["cg_iterations"] for h in again.history[1:] if "cg_iterations" in h]
    assert cached < len(passes)
