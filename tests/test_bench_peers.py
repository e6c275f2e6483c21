"""Smoke test of bench/peers.py: the --quick run, its CSV, and the script's NumPy derivatives.

The NumPy derivatives (``NumpyDerivatives``) are what scipy.optimize is given as "user-written
derivatives" in the peer comparison, so they must be the same function as fastnewton.Problem:
checked here on tiny problems to 1e-10 relative, and against central differences.
"""
import csv
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastnewton

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "peers.py"
MODELS = ("softmax", "relu_softmax", "softmax_relu")
# Both sides compute the same sums in different orders: agreement to ~1e3·eps relative.
AGREEMENT_RTOL = 1e-10


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _relative(a, e):
    a, e = np.ravel(np.asarray(a, dtype=float)), np.ravel(np.asarray(e, dtype=float))
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


def _tiny(model, dense, seed=3):
    out = fastnewton.make_problem(80, 6, nnz_per_row=3, model=model, m=5, noise=1e-2, seed=seed, dense=dense)
    return out.C, out.b, out.V


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("model", MODELS)
def test_numpy_derivatives_match_problem(peers, model, dense):
    C, b, V = _tiny(model, dense)
    row_weights = np.random.default_rng(1).uniform(0.0, 1e-3, size=C.shape[0])
    mine = peers.NumpyDerivatives(C, b, model, V=V, l2=1e-3, row_weights=row_weights)
    theirs = fastnewton.Problem(C, b, model, V=V, l2=1e-3, row_weights=row_weights)
    rng = np.random.default_rng(2)
    for _ in range(3):
        x, p = rng.standard_normal(C.shape[1]), rng.standard_normal(C.shape[1])
        if model == "relu_softmax":
            assert np.any(C @ x > 0) and np.any(C @ x < 0), "both ReLU branches must be exercised"
        assert _relative(mine.loss(x), theirs.loss(x)) < AGREEMENT_RTOL
        assert _relative(mine.grad(x), theirs.grad(x)) < AGREEMENT_RTOL
        assert _relative(mine.hessian(x), theirs.hessian(x)) < AGREEMENT_RTOL
        assert _relative(mine.hessp(x, p), theirs.hessp(x, p)) < AGREEMENT_RTOL


@pytest.mark.parametrize("model", MODELS)
def test_numpy_derivatives_match_central_differences(peers, model):
    C, b, V = _tiny(model, dense=True)
    mine = peers.NumpyDerivatives(C, b, model, V=V, l2=1e-3)
    x, p = np.random.default_rng(4).standard_normal((2, C.shape[1]))
    h = 1e-5
    # Central differences: truncation O(h²) plus rounding O(eps·L/h); 1e-6 relative leaves margin.
    fd_grad = np.array([(mine.loss(x + h * e) - mine.loss(x - h * e)) / (2 * h) for e in np.eye(C.shape[1])])
    assert _relative(mine.grad(x), fd_grad) < 1e-6
    fd_hessp = (mine.grad(x + h * p) - mine.grad(x - h * p)) / (2 * h)
    assert _relative(mine.hessp(x, p), fd_hessp) < 1e-6
    assert _relative(mine.hessian(x) @ p, mine.hessp(x, p)) < AGREEMENT_RTOL


def test_check_derivatives_reports_agreement(peers):
    assert peers.check_derivatives() < AGREEMENT_RTOL


def test_quick_run_writes_csv_traces_and_plot(tmp_path):
    output = tmp_path / "peers.csv"
    # One thread: on a loaded 2-core machine Numba's parallel regions stall waiting for a core.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best scipy with numpy derivatives / best fastnewton" in proc.stdout
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = {(model, f"fastnewton {s}", "fastnewton") for model in MODELS for s in ("exact", "sketch", "pcg")}
    expected |= {(model, method, derivatives) for model in MODELS
                 for method in ("trust-exact", "Newton-CG", "L-BFGS-B") for derivatives in ("numpy", "fastnewton")}
    assert {(r["model"], r["method"], r["derivatives"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        assert r["reached_tol"] in ("True", "False")
        assert np.isfinite(float(r["time_s"])) and float(r["time_s"]) >= 0
        assert np.isfinite(float(r["final_loss"])) and np.isfinite(float(r["final_rel_grad_norm"]))
        # reached_tol is the criterion itself, evaluated at the reported final point.
        if r["reached_tol"] == "True":
            # (re-evaluated with fastnewton.Problem, which may differ from NumPy's in the last bits)
            assert float(r["final_rel_grad_norm"]) <= float(r["tol"]) * (1 + 1e-6)
    exact = next(r for r in rows if r["model"] == "softmax" and r["method"] == "fastnewton exact")
    assert exact["reached_tol"] == "True"
    assert (tmp_path / "peers_traces.csv").stat().st_size > 0
    assert (tmp_path / "peers.png").stat().st_size > 0
