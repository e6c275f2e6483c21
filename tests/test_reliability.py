"""Reliability at numerical extremes, through the public API (``fastnewton.solve`` / ``Problem``).

Every case must give a correct result or an honest message: finite x, a ``Status``, a
non-empty message, and ``converged`` only when the gradient criterion really holds.
"""
import pathlib
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp

import fastnewton
import fastnewton.models as models
from fastnewton import Problem, Status, make_problem, solve

REPO = pathlib.Path(__file__).resolve().parent.parent
# Overflow, invalid operations and division by zero are errors; underflow (exp of a very
# negative logit flushing to 0) is the expected, exact behaviour of a max-shifted softmax.
STRICT = dict(over="raise", invalid="raise", divide="raise")


def _softmax_reference(u):
    z = u - u.max()
    e = np.exp(z)
    return e / e.sum()


def _reference_loss_grad(C, b, x):
    """½‖softmax(Cx) − b‖² and its gradient Cᵀ(s ⊙ r − ⟨s, r⟩ s), in plain NumPy."""
    u = C @ x
    s = _softmax_reference(u)
    r = s - b
    q = s * r - np.dot(s, r) * s
    return 0.5 * np.dot(r, r), C.T @ q


def _check_honest(res, d):
    """The invariants every result must satisfy, whatever the problem."""
    assert res.x.shape == (d,)
    assert np.all(np.isfinite(res.x)), res.message
    assert isinstance(res.status, Status)
    assert res.status in set(Status)
    assert isinstance(res.message, str) and res.message.strip()
    assert res.converged == (res.status == Status.CONVERGED)
    if res.converged:
        assert res.grad_norm <= res.history[0]["grad_norm"] or res.n_iter == 0
        # tol below; or ∇L(0) was within its own rounding bound, the test's floor then (the message says so)
        assert res.rel_grad_norm <= 1e-6 or "zero to rounding" in res.message
    if res.status in (Status.CONVERGED, Status.MAX_ITER, Status.STALLED):
        assert np.isfinite(res.loss)


def _solve(*args, **kwargs):
    kwargs.setdefault("tol", 1e-6)
    kwargs.setdefault("seed", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        return solve(*args, **kwargs)


# -- huge logits -------------------------------------------------------------------------------

@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("logit", [1e2, 1e3, 1e4])
def test_huge_logits_loss_and_grad_are_finite_and_exact(dense, logit):
    C, b, x_true = make_problem(300, 12, nnz_per_row=4, seed=1, dense=dense)
    Cd = C if dense else C.toarray()
    x0 = x_true * (logit / np.max(np.abs(Cd @ x_true)))
    u0 = Cd @ x0
    assert np.isclose(np.max(np.abs(u0)), logit)
    prob = Problem(C, b)
    with np.errstate(**STRICT), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        loss = prob.loss(x0)
        loss2, grad = prob.loss_and_grad(x0)
        grad2 = prob.grad(x0)
        ref_loss, ref_grad = _reference_loss_grad(Cd, b, x0)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == loss2
    np.testing.assert_array_equal(grad, grad2)
    assert abs(loss - ref_loss) <= 1e-13 * max(1.0, ref_loss)
    # Rounding bound per entry: n terms |C_ij| s_i (|r_i| + |c|), each with a few ulps of error.
    s0 = _softmax_reference(u0)
    scale = np.abs(Cd).T @ (s0 * (np.abs(s0 - b) + 1.0))
    assert np.all(np.abs(grad - ref_grad) <= 1e-12 * scale)


@pytest.mark.parametrize("dense", [False, True])
def test_huge_logits_in_both_directions_are_exact(dense):
    """Entries of Cx0 at +1e4 and −1e4: the softmax is one-hot-like, never inf or NaN."""
    rng = np.random.default_rng(3)
    n, d = 200, 8
    Cd = rng.standard_normal((n, d))
    x0 = np.zeros(d)
    x0[0] = 1.0
    Cd[:, 0] = rng.choice([-1e4, 1e4], size=n) * rng.uniform(0.5, 1.0, size=n)
    Cd[0, 0], Cd[1, 0] = 1e4, -1e4
    b = _softmax_reference(rng.standard_normal(n))
    C = Cd if dense else sp.csr_matrix(Cd)
    prob = Problem(C, b)
    with np.errstate(**STRICT), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        loss, grad = prob.loss_and_grad(x0)
        H = prob.hessian(x0)
        Hp = prob.hessp(x0, np.ones(d))
    ref_loss, ref_grad = _reference_loss_grad(Cd, b, x0)
    assert abs(loss - ref_loss) <= 1e-13 * max(1.0, ref_loss)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-12 * np.abs(Cd).sum())
    assert np.all(np.isfinite(H)) and np.all(np.isfinite(Hp))


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
@pytest.mark.parametrize("hessian", ["exact", "pcg"])
def test_solve_from_huge_logits_returns_finite_x(model, hessian):
    C, b, x_true = make_problem(400, 10, nnz_per_row=4, model=model, seed=2)
    x0 = x_true * (1e4 / np.max(np.abs(C @ x_true)))
    with np.errstate(**STRICT):
        res = _solve(C, b, model, x0=x0, hessian=hessian, max_iter=60)
    _check_honest(res, C.shape[1])
    prob = Problem(C, b, model)
    assert res.loss <= prob.loss(x0) + 1e-15
    # The saturated softmax has a gradient ~0 at a loss far above L(0): never "converged".
    assert not res.converged, res.message
    assert res.status == Status.DEAD_STATIONARY
    assert "not the optimum" in res.message
    assert res.loss > prob.loss(np.zeros(C.shape[1]))


@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
def test_converged_never_claimed_above_the_loss_at_zero(model):
    """Whatever the start, a result reported as converged is at least as good as x = 0."""
    C, b, x_true = make_problem(300, 10, nnz_per_row=4, model=model, seed=20)
    L0 = Problem(C, b, model).loss(np.zeros(10))
    for logit in (30.0, 300.0, 3e3):
        x0 = x_true * (logit / np.max(np.abs(C @ x_true)))
        res = _solve(C, b, model, x0=x0, max_iter=50)
        _check_honest(res, 10)
        if res.converged:
            assert res.loss <= L0 * (1 + 1e-12) + 1e-15, (logit, res.message)


# -- awkward targets -----------------------------------------------------------------------------

@pytest.mark.parametrize("x0", ["auto", "zeros"])
@pytest.mark.parametrize("case", ["zeros", "half_zero", "sum_2", "sum_half", "one_hot"])
def test_softmax_targets_with_zeros_or_wrong_sum(case, x0):
    C, b, _ = make_problem(500, 15, nnz_per_row=5, seed=4)
    rng = np.random.default_rng(4)
    if case == "zeros":
        b = b.copy()
        b[rng.random(b.size) < 0.2] = 0.0
        b /= b.sum()
    elif case == "half_zero":
        b = b.copy()
        b[: b.size // 2] = 0.0
    elif case == "sum_2":
        b = 2.0 * b
    elif case == "sum_half":
        b = 0.5 * b
    else:
        b = np.zeros_like(b)
        b[7] = 1.0
    with np.errstate(**STRICT):
        res = _solve(C, b, x0=x0, max_iter=100)
    _check_honest(res, C.shape[1])
    assert res.status in (Status.CONVERGED, Status.STALLED, Status.MAX_ITER)
    assert res.loss <= Problem(C, b).loss(res.x0) + 1e-15


def test_all_zero_target_is_solved_or_explained():
    C, _, _ = make_problem(200, 10, nnz_per_row=4, seed=5)
    res = _solve(C, np.zeros(200), max_iter=50)
    _check_honest(res, 10)


# -- dead ReLUs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg"])
def test_every_relu_inactive_is_reported_as_dead_stationary(dense, hessian):
    C, b, _ = make_problem(300, 12, nnz_per_row=4, model="relu_softmax", seed=6, dense=dense)
    C = abs(C)  # non-negative entries: x0 = −1 gives Cx0 ≤ 0 on every row
    x0 = -np.ones(12)
    assert np.all(C @ x0 <= 0)
    res = _solve(C, b, "relu_softmax", x0=x0, hessian=hessian)
    _check_honest(res, 12)
    assert res.status == Status.DEAD_STATIONARY
    assert res.converged is False and res.success is False
    assert "inactive" in res.message or "dead" in res.message
    assert res.loss > 0


def test_dead_relus_with_zero_rows_in_c():
    """Zero rows give Cx0 = 0 exactly (ReLU'(0) = 0): still dead, still reported."""
    C, b, _ = make_problem(300, 12, nnz_per_row=4, model="relu_softmax", seed=7)
    C = abs(C).tolil()
    C[::3] = 0
    C = C.tocsr()
    res = _solve(C, b, "relu_softmax", x0=-np.ones(12))
    assert res.status == Status.DEAD_STATIONARY and not res.converged


# -- singular and badly scaled C -------------------------------------------------------------------

def _rank_deficient_cases():
    C, b, _ = make_problem(300, 10, nnz_per_row=4, seed=8)
    yield "duplicate_columns", sp.hstack([C, C, C[:, :3]]).tocsr(), b
    C2, b2, _ = make_problem(40, 120, nnz_per_row=6, seed=9)
    yield "d_greater_than_n", C2, b2
    C3, b3, _ = make_problem(25, 60, dense=True, seed=10)
    yield "d_greater_than_n_dense", C3, b3
    C4, b4, x4 = make_problem(150, 10, nnz_per_row=4, seed=11)
    C4 = sp.vstack([C4, C4, C4[:20]]).tocsr()
    yield "duplicate_rows", C4, _softmax_reference(C4 @ x4)
    C5, _, x5 = make_problem(300, 10, nnz_per_row=4, seed=12)
    C5 = C5.tolil()
    C5[::4] = 0
    C5 = C5.tocsr()
    yield "zero_rows", C5, _softmax_reference(C5 @ x5)
    C6, b6, _ = make_problem(300, 10, nnz_per_row=4, seed=13)
    C6 = C6.tolil()
    C6[:, 4] = 0
    yield "zero_column", C6.tocsr(), b6
    rng = np.random.default_rng(14)
    C7, b7, _ = make_problem(300, 10, nnz_per_row=4, seed=14)
    scales = np.where(rng.random(300) < 0.5, 1e6, 1e-6)
    yield "uneven_row_norms", sp.diags(scales) @ C7, b7
    C8, b8, _ = make_problem(200, 8, seed=15, dense=True)
    C8[:100] *= 1e6
    C8[100:] *= 1e-6
    yield "uneven_row_norms_dense", C8, b8


_CASES = list(_rank_deficient_cases())


@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg"])
@pytest.mark.parametrize("x0", ["auto", "zeros"])
@pytest.mark.parametrize("case", range(len(_CASES)), ids=[c[0] for c in _CASES])
def test_singular_or_badly_scaled_c_is_handled(case, x0, hessian):
    name, C, b = _CASES[case]
    with np.errstate(**STRICT):
        res = _solve(C, b, x0=x0, hessian=hessian, l2=0.0, max_iter=60)
    _check_honest(res, C.shape[1])
    assert res.status in (Status.CONVERGED, Status.STALLED, Status.MAX_ITER), res.message
    assert res.loss <= Problem(C, b).loss(res.x0) + 1e-15
    if name in ("duplicate_columns", "duplicate_rows", "zero_rows", "zero_column") and hessian == "exact":
        # Consistent planted problems whose only defect is the singular Hessian: damping must reach tol.
        assert res.converged, res.message


@pytest.mark.parametrize("model", ["relu_softmax", "softmax_relu"])
def test_rank_deficient_relu_models_are_honest(model):
    out = make_problem(200, 8, nnz_per_row=4, model=model, seed=16)
    C, b = out[0], out[1]
    V = out.V
    C = sp.hstack([C, C]).tocsr()
    res = _solve(C, b, model, V=V, l2=0.0, max_iter=60)
    _check_honest(res, 16)
    assert res.status in (Status.CONVERGED, Status.STALLED, Status.MAX_ITER, Status.DEAD_STATIONARY)


# -- non-finite values during the iteration ----------------------------------------------------------

def _poison_after(monkeypatch, calls, method="columns"):
    """Make the softmax model's stage ``method`` NaN from call number ``calls`` + 1 on: ``columns``
    (once per evaluation: Q and the loss), ``loss_rows`` (once per loss alone, e.g. a line-search trial)."""
    original = getattr(models.Softmax, method)
    count = {"n": 0}

    def poisoned(self, block, kept, known):
        count["n"] += 1
        summary, new = original(self, block, kept, known)
        if count["n"] > calls:
            summary = {key: float("nan") for key in summary}
            new = {key: np.full_like(value, np.nan) for key, value in new.items()}
        return summary, new

    monkeypatch.setattr(models.Softmax, method, poisoned)
    return count


@pytest.mark.parametrize("hessian", ["exact", "sketch", "pcg"])
def test_non_finite_iterate_stops_with_last_finite_x(monkeypatch, hessian):
    C, b, _ = make_problem(400, 10, nnz_per_row=4, seed=17)
    # g_ref at 0, the start, and two iterations are finite; the third iterate is poisoned.
    _poison_after(monkeypatch, 4)
    res = _solve(C, b, x0="zeros", hessian=hessian, tol=1e-14)
    assert res.status == Status.NON_FINITE
    assert res.converged is False
    assert np.all(np.isfinite(res.x))
    assert "non-finite" in res.message
    assert np.isfinite(res.loss) and np.isfinite(res.grad_norm)
    assert len(res.history) == res.n_iter  # the poisoned iterate is not recorded
    assert res.n_iter >= 1


def test_non_finite_start_returns_the_start(monkeypatch):
    C, b, _ = make_problem(200, 10, nnz_per_row=4, seed=18)
    _poison_after(monkeypatch, 1)  # ∇L(0) finite, the start is not
    x0 = np.full(10, 0.1)
    res = _solve(C, b, x0=x0)
    assert res.status == Status.NON_FINITE and not res.converged
    np.testing.assert_array_equal(res.x, x0)
    assert res.message.strip()


def test_non_finite_trial_losses_are_rejected_not_accepted(monkeypatch):
    from fastnewton.problem import LineSearch

    C, b, _ = make_problem(200, 10, nnz_per_row=4, seed=19)
    # every line-search trial is NaN (a line's first trial forms the columns Q too, the others the loss alone)
    _poison_after(monkeypatch, 0, method="loss_rows")
    trial_loss = LineSearch.loss
    monkeypatch.setattr(LineSearch, "loss", lambda self, t: trial_loss(self, t) * float("nan"))
    res = _solve(C, b, x0="zeros")
    _check_honest(res, 10)
    assert not res.converged
    assert res.status in (Status.STALLED, Status.NON_FINITE)


# -- concurrent solves ------------------------------------------------------------------------------

def _concurrent_jobs():
    jobs = []
    for i, (model, hessian, threads) in enumerate([
            ("softmax", "exact", None), ("relu_softmax", "exact", 1), ("softmax", "pcg", 2),
            ("softmax_relu", "exact", None), ("softmax", "sketch", 1), ("relu_softmax", "pcg", 2),
            ("softmax", "exact", 2), ("softmax", "pcg", None)]):
        dense = i % 3 == 2
        out = make_problem(3000, 40, nnz_per_row=8, model=model, noise=0.01, seed=100 + i, dense=dense)
        V = out.V
        jobs.append(dict(C=out[0], b=out[1], model=model, V=V, hessian=hessian, n_threads=threads,
                         seed=i, tol=1e-10, max_iter=30))
    return jobs


def _run(job):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        return solve(**job)


def _blas_threads():
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_concurrent_solves_match_solo_runs_bitwise():
    jobs = _concurrent_jobs()
    before = _blas_threads()
    alone = [_run(job) for job in jobs]
    for _ in range(2):
        with ThreadPoolExecutor(max_workers=4) as pool:
            together = list(pool.map(_run, jobs))
        for job, a, t in zip(jobs, alone, together):
            label = (job["model"], job["hessian"], job["n_threads"])
            # Bitwise: fixed chunks in every kernel, Numba's thread count is per calling thread, and
            # the process-wide BLAS limit is reference-counted across solves and taken over from
            # whichever thread held it (fastnewton.threads.single_threaded_blas). Before that, dense
            # solves from pool threads differed from solo runs by up to 2e-16.
            assert np.array_equal(t.x, a.x), label
            assert a.status == t.status, label
    # The last solve to finish restores the caller's BLAS threads (none leak at 1).
    assert _blas_threads() == before


def test_solve_from_a_worker_thread_matches_the_main_thread_bitwise():
    job = _concurrent_jobs()[2]  # dense C: the sandwich and sketch run through BLAS
    for hessian in ("exact", "pcg"):
        main = _run(dict(job, hessian=hessian))
        with ThreadPoolExecutor(max_workers=1) as pool:
            worker = pool.submit(_run, dict(job, hessian=hessian)).result()
        assert np.array_equal(main.x, worker.x), hessian


# -- memory --------------------------------------------------------------------------------------------

def test_hessian_too_large_raises_memory_error_before_allocating():
    C = sp.random(50, 400_000, density=1e-5, format="csr", random_state=0)
    b = np.full(50, 1 / 50)
    t = time.perf_counter()
    with pytest.raises(MemoryError, match="d = 400000"):
        solve(C, b, x0="zeros")
    with pytest.raises(MemoryError, match="d = 400000"):
        Problem(C, b).hessian(np.zeros(400_000))
    assert time.perf_counter() - t < 5.0


def test_blas_threads_are_scoped_to_the_block():
    """``blas_threads(n)`` inside a solve's single-threaded BLAS: n threads in the block, one after it."""
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS too)

    from fastnewton.threads import blas_threads, single_threaded_blas

    before = _blas_threads()
    with single_threaded_blas():
        with blas_threads(2):
            inside = _blas_threads()
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before
    assert set(inside) <= {2} or max(before) < 2  # a BLAS built for one thread stays at one
