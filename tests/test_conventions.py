"""scipy and NumPy conventions: OptimizeResult, callbacks, seeds, make_problem's tuple, predict, warnings,
timing of the whole call, logging, the progress bar and plot_history."""
import logging
import time
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

import fastnewton
from fastnewton import make_problem, solve

from naive import softmax as naive_softmax


@pytest.fixture(scope="module")
def planted():
    return make_problem(2000, 8, nnz_per_row=4, noise=1e-2, seed=3)


# -- SolveResult is scipy's OptimizeResult --------------------------------------------------------
def test_result_is_an_optimize_result_with_scipys_counters(planted):
    C, b, _ = planted
    res = solve(C, b, x0="zeros", hessian="exact")
    assert isinstance(res, scipy.optimize.OptimizeResult) and isinstance(res, fastnewton.SolveResult)
    assert res.fun == res.loss and res.nit == res.n_iter and res.success == res.converged
    assert np.array_equal(res.jac, Problem_grad(C, b, res.x))
    # One gradient per accepted iterate (x0 included), one Hessian per iteration, and a loss for each
    # of those gradients plus every line-search trial.
    assert res.njev == res.n_iter + 1
    assert res.nhev == res.n_iter
    trials = sum(record["line_search_trials"] for record in res.history)
    assert res.nfev >= res.njev + trials
    assert res.nfev == res.njev + trials or any(record["damping"] > 0 for record in res.history)
    assert "nfev" in dir(res) and "SolveResult(" in repr(res)


def Problem_grad(C, b, x):
    return fastnewton.Problem(C, b).grad(x)


# -- callbacks ---------------------------------------------------------------------------------------
def test_scipy_intermediate_result_callback_and_stop_iteration(planted):
    C, b, _ = planted
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)
        if intermediate_result.nit == 2:
            raise StopIteration

    res = solve(C, b, x0="zeros", hessian="exact", callback=callback)
    assert [r.nit for r in seen] == [1, 2]
    assert isinstance(seen[0], scipy.optimize.OptimizeResult)
    assert seen[-1].fun == seen[-1].loss == res.loss
    np.testing.assert_array_equal(seen[-1].x, res.x)
    assert res.status == fastnewton.Status.CALLBACK and res.n_iter == 2 and not res.converged


def test_dict_callback_may_raise_stop_iteration(planted):
    C, b, _ = planted
    calls = []

    def callback(info):
        calls.append(info["iter"])
        raise StopIteration

    res = solve(C, b, x0="zeros", hessian="exact", callback=callback)
    assert calls == [1] and res.status == fastnewton.Status.CALLBACK and res.n_iter == 1


def test_dict_callback_gets_the_record_with_x(planted):
    C, b, _ = planted
    records = []
    res = solve(C, b, x0="zeros", hessian="exact", callback=lambda info: records.append(info))
    assert len(records) == res.n_iter
    assert {"x", "loss", "rel_grad_norm", "seconds"} <= set(records[-1])
    np.testing.assert_array_equal(records[-1]["x"], res.x)


# -- seeds -------------------------------------------------------------------------------------------
def test_seed_accepts_a_generator_like_numpy(planted):
    C, b, _ = planted
    by_int = solve(C, b, x0="zeros", hessian="sketch", seed=7)
    by_generator = solve(C, b, x0="zeros", hessian="sketch", seed=np.random.default_rng(7))
    # default_rng(7) and default_rng(default_rng(7)) draw the same stream.
    np.testing.assert_array_equal(by_int.x, by_generator.x)
    a = make_problem(50, 4, seed=np.random.default_rng(1))
    b2 = make_problem(50, 4, seed=1)
    np.testing.assert_array_equal(a.b, b2.b)
    with pytest.raises(TypeError, match="seed"):
        solve(C, b, seed=np.random.RandomState(0))


# -- make_problem's named tuple -------------------------------------------------------------------
@pytest.mark.parametrize("model", ["softmax", "relu_softmax", "softmax_relu"])
def test_make_problem_is_a_named_tuple_of_three_with_V_as_an_attribute(model):
    planted = make_problem(100, 6, model=model, m=4, seed=0)
    C, b, x_true = planted  # the same unpacking for every model
    assert planted.C is C and planted.b is b and planted.x_true is x_true and planted.model == model
    assert (planted.V is None) == (model != "softmax_relu")
    if planted.V is not None:
        assert planted.V.shape == (100, 4) and b.shape == (4,)
    assert model in repr(planted)
    import pickle
    again = pickle.loads(pickle.dumps(planted))
    assert again.model == model and (again.V is None) == (planted.V is None)


# -- predict -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["softmax", "relu_softmax", "softmax_relu"])
@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_predict_is_h_of_Cx_against_plain_numpy(model, dense):
    planted = make_problem(300, 5, model=model, m=3, seed=4, dense=dense)
    C, b, x_true = planted
    u = np.asarray(C @ x_true)
    if model == "softmax":
        expected = naive_softmax(u)
    elif model == "relu_softmax":
        expected = naive_softmax(np.maximum(u, 0.0))
    else:
        expected = np.maximum(planted.V.T @ naive_softmax(u), 0.0)
    got = fastnewton.predict(C, x_true, model, V=planted.V)
    # A length-300 softmax: sums of ≤ 300 terms, so a few hundred ulps at most.
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    # make_problem's b is exactly h(C x_true) without noise.
    np.testing.assert_allclose(got, b, rtol=1e-12, atol=1e-15)


def test_predict_names_bad_arguments():
    C, b, x = make_problem(20, 3, seed=0)
    with pytest.raises(ValueError, match="x must have length 3"):
        fastnewton.predict(C, np.zeros(4))
    with pytest.raises(ValueError, match="V"):
        fastnewton.predict(C, x, "softmax_relu")
    with pytest.raises(ValueError, match="model"):
        fastnewton.predict(C, x, "linear")


# -- targets that cannot be a softmax output -----------------------------------------------------------
@pytest.mark.parametrize(("scale", "shift", "what"), [(1000.0, 0.0, "Σb = 99"), (1.0, -0.01, "negative")])
def test_targets_that_are_not_distributions_warn(planted, scale, shift, what):
    C, b, _ = planted
    with pytest.warns(UserWarning, match=what):
        res = solve(C, scale * b + shift, max_iter=50, hessian="exact")
    assert np.all(np.isfinite(res.x))


def test_a_noisy_distribution_does_not_warn(planted):
    C, b, _ = planted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve(C, b, hessian="exact")


# -- the whole call is timed --------------------------------------------------------------------------
def test_time_covers_the_whole_call_with_setup_and_start_in_the_history(planted):
    C, b, _ = planted
    C_coo = sp.coo_matrix(C)  # a conversion to CSR happens in the setup phase
    clock = time.perf_counter()
    res = solve(C_coo, b, hessian="exact")
    wall = time.perf_counter() - clock
    first = res.history[0]["seconds"]
    assert {"setup", "start"} <= set(first)
    phases = sum(sum(record["seconds"].values()) for record in res.history)
    # Every phase lies inside the call, and the call's time inside the measured wall time.
    assert phases <= res.time <= wall
    assert res.history[-1]["time"] <= res.time
    assert res.history[0]["time"] >= first["setup"] + first["start"]


# -- logging, progress bar, plot_history ------------------------------------------------------------------
def test_progress_bar_ticks_once_per_iteration(planted, capsys):
    pytest.importorskip("tqdm")
    C, b, _ = planted
    res = solve(C, b, x0="zeros", hessian="exact", progress=True)
    err = capsys.readouterr().err
    assert "fastnewton" in err and f"{res.n_iter}/100" in err


def test_compile_notice_is_logged_once(caplog):
    import fastnewton._cache as cache
    from numba.core import event

    class FakeDispatcher:
        py_func = cache.cache_dir  # any function of the package: its module is fastnewton._cache

    kernel_like = type("K", (), {"py_func": type("F", (), {"__module__": "fastnewton.kernels.csr"})()})()
    saved = cache._noticed
    cache._noticed = False
    try:
        with caplog.at_level(logging.INFO, logger="fastnewton"), cache.compile_notice(verbose=False):
            for dispatcher in (FakeDispatcher(), kernel_like, kernel_like):
                with event.trigger_event("numba:compile", data={"dispatcher": dispatcher}):
                    pass
    finally:
        cache._noticed = saved or cache._noticed
    notices = [r for r in caplog.records if "compiling fastnewton's Numba kernels" in r.getMessage()]
    assert len(notices) == 1
    assert "warmup" in notices[0].getMessage()


def test_plot_history_draws_both_panels(planted):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    C, b, _ = planted
    res = solve(C, b, x0="zeros", hessian="exact")
    figure = fastnewton.plot_history(res)
    left, right = figure.axes
    assert left.get_yscale() == "log" and len(left.lines[0].get_xdata()) == len(res.history)
    assert "seconds" in left.get_xlabel()
    figure = fastnewton.plot_history(res, x="iter")
    assert list(figure.axes[0].lines[0].get_xdata()) == list(range(res.n_iter + 1))
    with pytest.raises(ValueError, match="x must be"):
        fastnewton.plot_history(res, x="loss")


def test_plot_history_without_matplotlib_says_how_to_install(monkeypatch, planted):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    res = solve(*planted[:2], hessian="exact")
    with pytest.raises(ImportError, match="pip install matplotlib"):
        fastnewton.plot_history(res)


def test_progress_goes_to_the_fastnewton_logger(planted, caplog):
    C, b, _ = planted
    with caplog.at_level(logging.DEBUG, logger="fastnewton"):
        res = solve(C, b, x0="zeros", hessian="exact")
    rows = [r for r in caplog.records if r.levelno == logging.DEBUG and r.getMessage().startswith("iter ")]
    assert len(rows) == res.n_iter
    summary = [r for r in caplog.records if r.levelno == logging.INFO and "iterations=" in r.getMessage()]
    assert len(summary) == 1 and res.message in summary[0].getMessage()
