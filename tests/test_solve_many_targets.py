"""``solve_many(C, B)``: one C, one problem per column of B, against ``solve`` on each column.

The batched driver shares every pass over C and runs ``solve``'s own Newton decisions (``NewtonRun``)
per column. The shared passes give each column the single-problem pass's bits. So each column is
compared with ``solve`` on it as users are promised: the same status (and stop sentence), the same
iteration count, x within 1e-10 relative and the loss within 1e-10 relative (or its rounding level), and
beyond the promise bit for bit (x and the message), which is checked too. A C small enough has its columns
solved as independent problems by the compiled loop of the list form instead (the last section): there the
promise holds without the bits.
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import warnings
from collections import Counter

import numba
import numpy as np
import pytest

import fastnewton
from fastnewton import ConvergenceWarning, Status, make_problem, predict, solve, solve_many
from fastnewton.result import MESSAGES
from fastnewton import many_targets

MODELS = ("softmax", "relu_softmax", "softmax_relu")
REPO = pathlib.Path(__file__).resolve().parents[1]


def _families():
    spec = importlib.util.spec_from_file_location("bench_families", REPO / "bench" / "families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def targets(C, model, V, q, seed, noise=0.1):
    """q noisy targets on one C: h(C x_j)·(1 + noise·N(0, 1)), clipped at 0, x_j ~ N(0, 1/d)."""
    rng = np.random.default_rng(seed)
    d = C.shape[1]
    columns = [predict(C, rng.standard_normal(d) / np.sqrt(d), model, V) for _ in range(q)]
    return np.column_stack([np.maximum(b * (1.0 + noise * rng.standard_normal(b.shape[0])), 0.0) for b in columns])


def case(model, dense, n=300, d=6, q=4, seed=0):
    problem = make_problem(n, d, nnz_per_row=3, model=model, m=4, seed=seed, dense=dense)
    return problem.C, targets(problem.C, model, problem.V, q, seed + 1), problem.V


def quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


# Promised to users: x within 1e-10 relative of solve's.
X_RTOL = 1e-10
# The shipped bound below which the columns of one C run as independent problems in the compiled loop of the list
# form (``many_targets._compiled_columns``); ``_lock_step`` sets it to 0 for every test but those of that path.
COMPILED_COLUMNS_BELOW_SECONDS = many_targets.COMPILED_COLUMNS_BELOW_SECONDS


@pytest.fixture(autouse=True)
def _lock_step(monkeypatch):
    """The lock-step driver for every test here: their C are small enough that solve_many would hand the columns to
    the compiled loop of the list form (tests/test_solve_many_small.py checks that loop; ``_routed`` below turns
    the hand-over back on for the tests of it)."""
    monkeypatch.setattr(many_targets, "COMPILED_COLUMNS_BELOW_SECONDS", 0.0)


def assert_close_x(x, reference):
    """‖x − reference‖ ≤ X_RTOL·‖reference‖."""
    scale = max(float(np.linalg.norm(reference)), np.finfo(float).tiny)
    assert float(np.linalg.norm(x - reference)) <= X_RTOL * scale, float(np.linalg.norm(x - reference)) / scale


def assert_same_as_solve(batch, C, B, model, V=None, **kwargs):
    """Every column: solve's status, stop sentence, n_iter and converged; x and the loss within 1e-10
    relative; and bit for bit."""
    assert len(batch) == B.shape[1]
    for j in range(B.shape[1]):
        single = quietly(solve, C, B[:, j], model, V=V, **kwargs)
        entry = batch.problem(j)
        assert entry["status"] == single.status, (j, entry["message"], single.message)
        assert entry["message"].split(":")[0] == single.message.split(":")[0], (j, entry["message"])
        assert entry["n_iter"] == single.n_iter and entry["converged"] == single.converged, j
        assert_close_x(entry["x"], single.x)
        # L's own rounding level (the solver's: 100·eps·(|L| + √(2|L|)·‖b‖)) decides at a zero-residual optimum.
        loss = abs(single.loss)
        rounding = 100 * np.finfo(float).eps * (loss + np.sqrt(2 * loss) * np.linalg.norm(B[:, j]))
        assert abs(entry["loss"] - single.loss) <= X_RTOL * loss + rounding, j
        assert np.array_equal(entry["x"], single.x) and entry["message"] == single.message, j


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("model", MODELS)
def test_each_column_is_solve_on_that_column(model, dense):
    C, B, V = case(model, dense)
    batch = quietly(solve_many, C, B, model=model, V=V)
    assert batch.x.shape == (C.shape[1], B.shape[1])
    assert_same_as_solve(batch, C, B, model, V)
    # Problems that need different numbers of iterations drop out of the passes at different rounds.
    assert batch.converged.any()


@pytest.mark.parametrize("model", MODELS)
def test_long_problem_several_chunks_and_zeros_start(model):
    # n > 4096 rows per chunk: every chunked reduction has several chunks.
    C, B, V = case(model, False, n=9000, d=8, q=3, seed=3)
    assert_same_as_solve(quietly(solve_many, C, B, model=model, V=V, x0="zeros"), C, B, model, V, x0="zeros")


def test_a_problem_that_ends_at_a_dead_point_and_others_that_converge():
    # softmax_relu from zeros with plain Newton (continuation=False) on this family problem kills an output
    # and stops at a dead stationary point after iterations (tests/test_lifted_start.py); the other targets
    # on the same C and V converge. The staged solve from zeros (the default) converges on all three.
    families = _families()
    dead = families.make_case("softmax_relu", 0, 10)
    C, V = dead.C, dead.V
    B = np.column_stack([dead.b, targets(C, "softmax_relu", V, 2, seed=5, noise=0.0)])
    batch = quietly(solve_many, C, B, model="softmax_relu", V=V, x0="zeros", continuation=False)
    assert batch.status[0] == Status.DEAD_STATIONARY and batch.n_iter[0] > 0
    assert "dead" in batch.message[0]
    assert_same_as_solve(batch, C, B, "softmax_relu", V, x0="zeros", continuation=False)
    staged = quietly(solve_many, C, B, model="softmax_relu", V=V, x0="zeros")
    assert np.all(staged.converged), staged.message
    assert_same_as_solve(staged, C, B, "softmax_relu", V, x0="zeros")


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_relu_softmax_dead_start_beside_live_ones(dense):
    # Column 0 starts where every ReLU is inactive (C ≥ 0, x0 = −1): dead at once; the others move.
    C, B, _ = case("relu_softmax", dense, q=3)
    C = abs(C)
    x0 = np.column_stack([-np.ones(C.shape[1]), np.zeros(C.shape[1]) + 0.1, np.full(C.shape[1], 0.2)])
    batch = quietly(solve_many, C, B, model="relu_softmax", x0=x0)
    assert batch.status[0] == Status.DEAD_STATIONARY and not batch.converged[0]
    for j in range(3):
        single = quietly(solve, C, B[:, j], "relu_softmax", x0=x0[:, j])
        assert_close_x(batch.x[:, j], single.x)
        assert batch.status[j] == single.status and batch.n_iter[j] == single.n_iter


def test_max_iter_stops_every_problem_with_one_warning():
    C, B, V = case("softmax_relu", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = solve_many(C, B, model="softmax_relu", V=V, max_iter=3)
    assert np.all(batch.status == Status.MAX_ITER) and np.all(batch.n_iter == 3)
    convergence = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(convergence) == 1 and f"{B.shape[1]} of {B.shape[1]} problems" in str(convergence[0].message)
    assert convergence[0].filename == __file__
    assert_same_as_solve(batch, C, B, "softmax_relu", V, max_iter=3)


@pytest.mark.parametrize("model", MODELS)
def test_one_target(model):
    C, B, V = case(model, False, q=1)
    batch = quietly(solve_many, C, B, model=model, V=V)
    assert batch.x.shape == (C.shape[1], 1) and len(batch) == 1
    assert_same_as_solve(batch, C, B, model, V)


def test_grouping_does_not_change_the_bits(monkeypatch):
    C, B, V = case("relu_softmax", False, q=5)
    together = quietly(solve_many, C, B, model="relu_softmax")
    monkeypatch.setattr(many_targets, "GROUP_BYTES", 1)  # one problem per group
    apart = quietly(solve_many, C, B, model="relu_softmax")
    assert np.array_equal(together.x, apart.x) and np.array_equal(together.n_iter, apart.n_iter)


@pytest.mark.parametrize("hessian", ["sketch", "pcg"])
def test_seed_fixes_the_sketched_strategies(hessian):
    C, B, _ = case("softmax", False, n=3000, d=10, q=3, seed=2)
    first = quietly(solve_many, C, B, hessian=hessian, seed=7, x0="zeros")
    second = quietly(solve_many, C, B, hessian=hessian, seed=7, x0="zeros")
    assert np.array_equal(first.x, second.x)
    # Each problem draws from default_rng(seed), as a solve call with that seed does.
    assert_same_as_solve(first, C, B, "softmax", hessian=hessian, seed=7, x0="zeros")


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("hessian", ["lagged", "pcg"])
# (relu_softmax from zeros is its dead stationary point: no iteration, no CG)
@pytest.mark.parametrize("model, x0", [("softmax", "auto"), ("softmax", "zeros"), ("relu_softmax", "auto")])
def test_cg_strategies_take_solves_steps_with_their_products_shared(model, hessian, x0, dense, monkeypatch):
    # lagged keeps its exact-then-CG cycle per problem (one shared builder once made every iteration of
    # every problem exact: other iterates, n_iter and x off by 1e-10..1e-9), and CG's Hessian-vector products
    # and its summed C·p are those of solve: bit for bit. No product is formed problem by problem.
    C, B, _ = case(model, dense)
    matrix_class = fastnewton.matrix.DenseMatrix if dense else fastnewton.matrix.CSRMatrix
    for table in ("CSR_BATCHED_FROM", "DENSE_BATCHED_FROM"):  # the passes for many for any batch: the sharing under test
        monkeypatch.setattr(fastnewton.matrix, table, dict.fromkeys(getattr(fastnewton.matrix, table), 1))
    solve_product = matrix_class.sandwich_vector
    monkeypatch.setattr(matrix_class, "sandwich_vector", lambda *args: pytest.fail("a product of its own"))
    batch = quietly(solve_many, C, B, model=model, hessian=hessian, x0=x0, seed=3)
    monkeypatch.setattr(matrix_class, "sandwich_vector", solve_product)
    assert_same_as_solve(batch, C, B, model, hessian=hessian, x0=x0, seed=3)
    cg_iterations = [record.get("cg_iterations", 0) for j in range(B.shape[1])
                     for record in quietly(solve, C, B[:, j], model, hessian=hessian, x0=x0, seed=3).history]
    assert sum(cg_iterations) > 0


# Every method that reads C once for one problem; ``sandwich_vectors`` (dense) reads it once for each of its products.
SINGLE_PASSES = ("matvec", "rmatmat", "sandwich", "curvature_sandwich", "sandwich_vector", "curvature_sandwich_vector")


def count_passes(matrix_class, monkeypatch):
    """A Counter of the single-problem passes over C made through ``matrix_class`` from now on."""
    counts = Counter()
    for name in SINGLE_PASSES + ("sandwich_vectors",):
        method = getattr(matrix_class, name, None)
        if method is None:
            continue

        def counted(self, *args, _name=name, _method=method, **kwargs):
            counts["sandwich_vector" if _name == "sandwich_vectors" else _name] += (
                len(args[0]) if _name == "sandwich_vectors" else 1)
            return _method(self, *args, **kwargs)
        monkeypatch.setattr(matrix_class, name, counted)
    return counts


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("hessian", ["exact", "lagged"])
@pytest.mark.parametrize("model", ["softmax", "relu_softmax"])
@pytest.mark.parametrize("q", [1, 2])
def test_few_targets_read_c_as_often_as_solve(q, model, hessian, dense, monkeypatch):
    # Below the batch sizes from which the passes for many pay, solve_many makes solve's own passes: ∇L(0) in
    # the start fit's transposed pass, β formed as the pass reads each row (CSR sandwich and CG products, one
    # read each), never a pass solve does not make; the same bits.
    C, B, _ = case(model, dense, q=q)
    matrix_class = fastnewton.matrix.DenseMatrix if dense else fastnewton.matrix.CSRMatrix
    counts = count_passes(matrix_class, monkeypatch)
    batch = quietly(solve_many, C, B, model=model, hessian=hessian, seed=3)
    many = Counter(counts)
    counts.clear()
    for j in range(q):
        quietly(solve, C, B[:, j], model, hessian=hessian, seed=3)
    assert many == counts and sum(many.values()) > 0
    assert_same_as_solve(batch, C, B, model, hessian=hessian, seed=3)


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_relu_softmax_starts_share_their_fits_sandwiches(dense, monkeypatch):
    # relu_softmax's start (the fit on the active rows) asks for its normal system like softmax's: every
    # sandwich of the call, the starts' and the exact iterations', is one of the shared ones.
    C, B, _ = case("relu_softmax", dense)
    matrix_class = fastnewton.matrix.DenseMatrix if dense else fastnewton.matrix.CSRMatrix
    for table in ("CSR_BATCHED_FROM", "DENSE_BATCHED_FROM"):  # the batched kernel for any batch: the sharing under test
        monkeypatch.setattr(fastnewton.matrix, table, dict.fromkeys(getattr(fastnewton.matrix, table), 1))
    single = matrix_class.sandwich
    monkeypatch.setattr(matrix_class, "sandwich", lambda *args: pytest.fail("a sandwich of its own"))
    batch = quietly(solve_many, C, B, model="relu_softmax", hessian="exact")
    monkeypatch.setattr(matrix_class, "sandwich", single)
    assert_same_as_solve(batch, C, B, "relu_softmax", hessian="exact")


def test_auto_prices_each_column_as_solve_prices_it(monkeypatch):
    # auto prices the sketched strategies with their sampled start (dense C, softmax), which needs the
    # model a target builds; solve_many once priced C without a target, so on a large dense C its pick
    # could differ from solve's on the same column (and then its answers too).
    from fastnewton.hessian import start_seconds
    C, B, _ = case("softmax", True, n=20_000, d=30, q=2, seed=4)
    priced = []
    original = many_targets.solve_options
    monkeypatch.setattr(many_targets, "solve_options",
                        lambda problem, *args, **kwargs: priced.append(problem) or original(problem, *args, **kwargs))
    quietly(solve_many, C, B, max_iter=1)
    single = start_seconds(fastnewton.Problem(C, B[:, 0]), 0.5, None)
    assert single["sampled"] < single["exact"]
    assert start_seconds(priced[0], 0.5, None) == single


def test_auto_may_pick_a_different_strategy_for_each_column(monkeypatch):
    # auto prices each problem by its target, so the columns of one C can take different strategies (the
    # shipped rates picked pcg for 68 and lagged for 188 of bench/many.py's 256 dense 4096 × 64 targets);
    # solve_many once ran every column with the first column's pick (x off solve's by up to 1.5e-9). The
    # chooser here picks by a rule of the target, the same in solve and solve_many, not by the shipped rates.
    import fastnewton.hessian as hessian_module
    C, B, _ = case("softmax", True, n=3000, d=10, q=6, seed=5)
    rule = {j: name for j, name in enumerate(["pcg", "lagged", "exact", "lagged", "sketch", "pcg"])}
    columns = {B[:, j].tobytes(): j for j in range(B.shape[1])}

    def by_column(problem, *args, **kwargs):
        return rule[columns[problem.b.tobytes()]]

    monkeypatch.setattr(hessian_module, "choose_strategy", by_column)
    monkeypatch.setattr(many_targets, "choose_strategy", by_column)
    batch = quietly(solve_many, C, B, seed=11)
    assert [quietly(solve, C, B[:, j], seed=11).hessian for j in range(B.shape[1])] == list(rule.values())
    assert_same_as_solve(batch, C, B, "softmax", seed=11)


def test_starts_as_one_vector_or_one_per_column():
    C, B, _ = case("softmax", True, q=3)
    d = C.shape[1]
    common = np.full(d, 0.05)
    assert_same_as_solve(solve_many(C, B, x0=common), C, B, "softmax", x0=common)
    each = np.random.default_rng(0).standard_normal((d, 3)) * 0.1
    batch = solve_many(C, B, x0=each)
    for j in range(3):
        assert_close_x(batch.x[:, j], solve(C, B[:, j], x0=each[:, j]).x)


def test_inputs_are_not_modified():
    C, B, V = case("softmax_relu", False)
    x0 = np.zeros((C.shape[1], B.shape[1]))
    copies = [C.data.copy(), C.indices.copy(), C.indptr.copy(), B.copy(), V.copy(), x0.copy()]
    quietly(solve_many, C, B, model="softmax_relu", V=V, x0=x0)
    for before, after in zip(copies, [C.data, C.indices, C.indptr, B, V, x0]):
        assert np.array_equal(before, after)
    D, B2, _ = case("relu_softmax", True)
    D.setflags(write=False)
    B2.setflags(write=False)
    kept = D.copy(), B2.copy()
    quietly(solve_many, D, B2, model="relu_softmax")
    assert np.array_equal(kept[0], D) and np.array_equal(kept[1], B2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_column_with_nan_or_inf_is_invalid_input_and_the_others_solved(bad):
    # Bad input is INVALID_INPUT in both forms of solve_many (the list form names the problem).
    C, B, _ = case("softmax", False, q=4)
    B = B.copy()
    B[5, 2] = bad
    batch = quietly(solve_many, C, B)
    assert batch.status[2] == Status.INVALID_INPUT and not batch.converged[2]
    assert batch.message[2].startswith(MESSAGES[Status.INVALID_INPUT])
    assert "column 2" in batch.message[2] and "finite" in batch.message[2] and np.all(np.isnan(batch.x[:, 2]))
    listed = quietly(solve_many, [(C, B[:, j]) for j in range(4)])
    assert listed.status[2] == Status.INVALID_INPUT and "problem 2" in listed.message[2]
    keep = [0, 1, 3]
    for j in keep:
        single = quietly(solve, C, B[:, j])
        assert_close_x(batch.x[:, j], single.x)
        assert batch.status[j] == single.status


def test_a_non_finite_start_of_one_column_is_that_columns_invalid_input():
    # A NaN in column 2 of a d × q x0 raised "x0 must contain only finite values" for the whole call, naming no
    # column (a hostile sweep); a NaN column of B was already that column's status.
    C, B, _ = case("softmax", False, q=3)
    starts = np.zeros((C.shape[1], 3))
    starts[0, 2] = np.nan
    batch = quietly(solve_many, C, B, x0=starts)
    assert batch.status[2] == Status.INVALID_INPUT and "x0[:, 2] must contain only finite" in batch.message[2]
    for j in (0, 1):
        single = quietly(solve, C, B[:, j], x0="zeros")
        assert_close_x(batch.x[:, j], single.x)
        assert batch.status[j] == single.status
    with pytest.raises(ValueError, match="x0 must contain only finite"):  # one start for all: no column can take it
        solve_many(C, B, x0=np.full(C.shape[1], np.nan))
    with pytest.raises(TypeError, match="x0 must have a numeric"):
        solve_many(C, B, x0=np.full((C.shape[1], 3), "a"))


def test_progress_and_unknown_keywords_are_named_for_the_users_call():
    # They raised "solve_targets() got an unexpected keyword argument 'progress'", naming an internal function.
    C, B, _ = case("softmax", False, q=2)
    with pytest.raises(TypeError, match=r"solve_many\(C, B\) does not take progress"):
        solve_many(C, B, progress=True)
    with pytest.raises(TypeError, match="solve_many got unexpected keyword argument\\(s\\) bogus, other"):
        solve_many(C, B, bogus=1, other=2)
    assert quietly(solve_many, C, B, progress=False).converged.all()


def test_callback_sees_the_problem_and_stops_only_it():
    C, B, _ = case("relu_softmax", False, q=3)
    seen = []

    def callback(info):
        seen.append((info["problem"], info["iter"]))
        return info["problem"] == 1

    batch = quietly(solve_many, C, B, model="relu_softmax", callback=callback)
    assert batch.status[1] == Status.CALLBACK and batch.n_iter[1] == 1
    assert {problem for problem, _ in seen} == {0, 1, 2}
    for j in (0, 2):
        assert batch.status[j] != Status.CALLBACK


@pytest.mark.parametrize("B, error, words", [
    (np.ones(300) / 300, ValueError, "B must be 2-D"),
    (np.ones((299, 2)) / 299, ValueError, "B must have 300 rows"),
    (np.ones((300, 0)), ValueError, "at least one column"),
    (np.ones((300, 2), dtype=complex), TypeError, "B must be real"),
    (np.array([["a"] * 2] * 300), TypeError, "B must have a numeric"),
])
def test_bad_targets_are_named(B, error, words):
    C, _, _ = case("softmax", False)
    with pytest.raises(error, match=words):
        solve_many(C, B)


def test_bad_arguments_are_named():
    C, B, V = case("softmax_relu", False)
    with pytest.raises(TypeError, match="needs B"):
        solve_many(C)
    with pytest.raises(ValueError, match="B must have 4 rows .columns of V."):
        solve_many(C, np.ones((300, 2)), model="softmax_relu", V=V)
    with pytest.raises(ValueError, match="V .the n × m value matrix. is required"):
        solve_many(C, B, model="softmax_relu")
    with pytest.raises(ValueError, match="model must be one of"):
        solve_many(C, B, model="softmin")
    with pytest.raises(ValueError, match="x0 must be a length-6 array"):
        solve_many(C, B, model="softmax_relu", V=V, x0=np.zeros((6, 3)))
    with pytest.raises(ValueError, match="x0 must be 'auto', 'zeros'"):
        solve_many(C, B, model="softmax_relu", V=V, x0="random")
    with pytest.raises(ValueError, match="x0 must have length 6"):
        solve_many(C, B, model="softmax_relu", V=V, x0=np.zeros(5))
    with pytest.raises(ValueError, match="tol must be a positive number"):
        solve_many(C, B, model="softmax_relu", V=V, tol=-1.0)
    with pytest.raises(ValueError, match="C must contain only finite values"):
        solve_many(np.full((300, 6), np.inf), B[:, :2].copy() * 0 + 1 / 300)
    with pytest.raises(TypeError, match="progress"):
        solve_many(C, B, model="softmax_relu", V=V, progress=True)


def test_targets_that_are_not_distributions_warn_once_per_column():
    C, B, _ = case("softmax", False, q=3)
    B = B.copy()
    B[:, 1] *= 5.0
    with pytest.warns(UserWarning, match=r"B\[:, 1\] is not a probability vector") as caught:
        solve_many(C, B)
    # attributed to the caller's line, as solve's warning is (it pointed into fastnewton/batch.py)
    assert [w.filename for w in caught if "probability" in str(w.message)] == [__file__]


def test_result_fields():
    C, B, _ = case("softmax", True)
    batch = solve_many(C, B)
    for key in ("x", "status", "converged", "n_iter", "loss", "grad_norm", "rel_grad_norm", "message", "time"):
        assert key in batch
    assert batch.status.dtype.kind == "i" and batch.converged.dtype == bool and len(batch.message) == B.shape[1]
    assert "problems" in repr(batch) and batch.time > 0


_CHILD = """
import json, sys, warnings
import numpy as np, scipy.sparse as sp
warnings.simplefilter("ignore")
sys.path.insert(0, {tests!r})
from test_solve_many_targets import case
import fastnewton
out = {{}}
for model in {models!r}:
    for dense in (False, True):
        C, B, V = case(model, dense, n=9000, d=8, q=3, seed=4)
        for hessian in ("auto", "lagged"):  # lagged: CG's products shared
            res = fastnewton.solve_many(C, B, model=model, V=V, hessian=hessian)
            out[f"{{model}} {{dense}} {{hessian}}"] = [res.x.tobytes().hex(), res.n_iter.tolist()]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.cpu_count() < 2, reason="one CPU")
@pytest.mark.parametrize("hessian", ["sketch", "pcg"])
def test_a_generator_seed_gives_each_column_solves_draws(hessian):
    # Shared by the columns in lock-step, a Generator's draws made each column depend on the others: two equal
    # columns got different answers (4 and 5 iterations) and column 0 differed from solve's by 4e-9 (a hostile sweep).
    made = make_problem(400, 6, nnz_per_row=4, noise=1e-2, seed=0)
    generator = np.random.default_rng(5)
    state = generator.bit_generator.state
    batch = solve_many(made.C, np.column_stack([made.b, made.b]), hessian=hessian, seed=generator)
    alone = solve(made.C, made.b, hessian=hessian, seed=np.random.default_rng(5))
    for j in range(2):
        np.testing.assert_array_equal(batch.x[:, j], alone.x)
        assert batch.n_iter[j] == alone.n_iter
    assert generator.bit_generator.state == state  # copied per column, the caller's not advanced


def test_thread_count_does_not_change_the_bits():
    script = _CHILD.format(tests=str(REPO / "tests"), models=MODELS)
    outputs = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_shared_transposed_pass_of_leading_columns_has_rmatmat_bits(dense):
    # The gradient's columns Q[:, :2] go through the shared pass whole (no n × 2 copy) and G is cut to
    # them; each is still rmatmat's of those columns, bit for bit, beside problems of other widths.
    problem = make_problem(5000, 7, nnz_per_row=3, seed=4, dense=dense)
    inputs = fastnewton.Problem(problem.C, problem.b)
    rng = np.random.default_rng(0)
    wide = [rng.standard_normal((5000, 3)) for _ in range(3)]
    columns = [wide[0][:, :2], wide[1], wide[2][:, :2], rng.standard_normal((5000, 2))]
    passes = many_targets.SharedPasses(inputs.matrix, None)
    for Q, G in zip(columns, passes.transposed(columns)):
        assert G.shape == (7, Q.shape[1]) and G.flags.c_contiguous
        assert np.array_equal(G, inputs.matrix.rmatmat(Q))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="Numba was started with fewer than 2 threads")
def test_a_small_c_runs_on_one_thread_as_solve_runs_its_columns(monkeypatch):
    import fastnewton.threads as threads_module
    monkeypatch.setattr(threads_module, "SINGLE_THREAD_BELOW_SECONDS", 7.5e-4)  # as shipped (conftest sets 0)
    C, B, _ = case("softmax", True)
    caller = numba.get_num_threads()
    seen = {}
    for given in (None, 2):
        seen[given] = []
        quietly(solve_many, C, B, n_threads=given, callback=lambda info, s=seen[given]: s.append(numba.get_num_threads()))
    assert set(seen[None]) == {1} and set(seen[2]) == {2} and numba.get_num_threads() == caller
    assert_same_as_solve(quietly(solve_many, C, B), C, B, "softmax")


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="Numba was started with fewer than 2 threads")
def test_per_problem_work_of_a_c_with_few_rows_on_one_thread_and_the_shared_passes_on_all(monkeypatch):
    # Dense 4096 × 64: solve runs a column on the caller's threads (its sandwich and passes are worth them), but
    # with those shared, each problem's own work is its row stages on 4096 rows: one thread. The passes shared
    # by the problems run on the caller's threads; the bits are solve's either way.
    import fastnewton.threads as threads_module
    from fastnewton import matrix as matrix_module
    monkeypatch.setattr(threads_module, "SINGLE_THREAD_BELOW_SECONDS", 7.5e-4)  # as shipped (conftest sets 0)
    problem = make_problem(4096, 64, model="softmax", seed=5, dense=True)
    B = targets(problem.C, "softmax", None, 4, seed=6)
    caller = numba.get_num_threads()
    passes, steps = [], []
    rmatmats = matrix_module.DenseMatrix.rmatmats

    def counting(self, Qs):
        passes.append((len(Qs), numba.get_num_threads()))
        return rmatmats(self, Qs)

    monkeypatch.setattr(matrix_module.DenseMatrix, "rmatmats", counting)
    batch = quietly(solve_many, problem.C, B, callback=lambda info: steps.append(numba.get_num_threads()))
    assert steps and set(steps) == {1}
    assert passes and {threads for _, threads in passes} == {caller}
    assert numba.get_num_threads() == caller
    monkeypatch.setattr(matrix_module.DenseMatrix, "rmatmats", rmatmats)
    assert_same_as_solve(batch, problem.C, B, "softmax")


# -- a C small enough: its columns run as independent problems in solve_many(problems)'s compiled loop ------------
def _routed(monkeypatch):
    """A list that collects each call of the compiled columns' path while the patch holds, that path enabled at
    its shipped bound (the autouse ``_lock_step`` fixture turns it off for the other tests)."""
    monkeypatch.setattr(many_targets, "COMPILED_COLUMNS_BELOW_SECONDS", COMPILED_COLUMNS_BELOW_SECONDS)
    calls, original = [], many_targets.solve_problems
    monkeypatch.setattr(many_targets, "solve_problems",
                        lambda *args, **kwargs: calls.append(len(args[0])) or original(*args, **kwargs))
    return calls


def assert_solves_answers(batch, C, B, model, **kwargs):
    """``assert_same_as_solve`` but for the bits: the compiled loop's rounding is its own (x within 1e-10)."""
    for j in range(B.shape[1]):
        single = quietly(solve, C, B[:, j], model, **{**kwargs, "x0": kwargs.get("x0", "auto")})
        entry = batch.problem(j)
        assert (entry["status"], entry["n_iter"], entry["converged"]) == (single.status, single.n_iter,
                                                                          single.converged), j
        assert entry["message"] == single.message, j
        assert_close_x(entry["x"], single.x)
        assert entry["loss"] == pytest.approx(single.loss, rel=X_RTOL, abs=1e-300)


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("model, hessian", [("softmax", "auto"), ("softmax", "exact"), ("softmax", "lagged"),
                                            ("relu_softmax", "auto"), ("relu_softmax", "lagged")])
def test_columns_of_a_small_c_are_solved_by_the_compiled_loop(model, hessian, dense, monkeypatch):
    calls = _routed(monkeypatch)
    C, B, _ = case(model, dense, q=5)
    batch = quietly(solve_many, C, B, model=model, hessian=hessian)
    assert calls == [B.shape[1]]
    assert batch.x.shape == (C.shape[1], B.shape[1])
    assert_solves_answers(batch, C, B, model, hessian=hessian)


@pytest.mark.parametrize("why", ["callback", "float32", "not_canonical", "priced", "pcg", "softmax_relu"])
def test_columns_stay_in_lock_step_where_the_compiled_loop_would_not_pay_or_cannot_run(why, monkeypatch):
    # A callback needs Python per iteration; a float32 C, or a CSR C not flagged canonical, would be copied per
    # column (the list form reads only plain C in place); a C whose exact iteration is
    # priced above the bound is solved faster in lock-step; pcg is not compiled;
    # softmax_relu's V is not a list-form problem of this path.
    calls = _routed(monkeypatch)
    model = "softmax_relu" if why == "softmax_relu" else "softmax"
    C, B, V = case(model, why != "not_canonical", q=3)
    kwargs = {"callback": dict(callback=lambda info: None), "pcg": dict(hessian="pcg", seed=0)}.get(why, {})
    if why == "float32":
        C = C.astype(np.float32)
    if why == "not_canonical":
        C = C.copy()
        C.has_canonical_format = False
    if why == "priced":
        monkeypatch.setattr(many_targets, "COMPILED_COLUMNS_BELOW_SECONDS", 1e-12)
    batch = quietly(solve_many, C, B, model=model, V=V, **kwargs)
    assert calls == []
    kwargs.pop("callback", None)
    assert_same_as_solve(batch, C, B, model, V, **kwargs)


def test_compiled_columns_beside_an_invalid_one_and_with_a_start_per_column(monkeypatch):
    calls = _routed(monkeypatch)
    C, B, _ = case("softmax", True, q=4)
    B = B.copy()
    B[3, 1] = np.nan
    x0 = np.column_stack([np.full(C.shape[1], 0.1 * j) for j in range(4)])
    batch = quietly(solve_many, C, B, x0=x0)
    assert calls == [3]  # the solvable columns
    assert batch.status[1] == Status.INVALID_INPUT and "column 1 of B" in batch.message[1]
    assert np.all(np.isnan(batch.x[:, 1]))
    for j in (0, 2, 3):
        single = quietly(solve, C, B[:, j], x0=x0[:, j])
        assert batch.status[j] == single.status and batch.n_iter[j] == single.n_iter
        assert_close_x(batch.x[:, j], single.x)


def test_compiled_columns_warn_once_for_the_batch_naming_columns(monkeypatch):
    _routed(monkeypatch)
    C, B, _ = case("softmax", True, q=3)
    B = B.copy()
    B[:, 1] *= 5.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = solve_many(C, B, max_iter=1)
    assert np.all(batch.status == Status.MAX_ITER)
    convergence = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(convergence) == 1 and "e.g. column 0" in str(convergence[0].message)
    probability = [w for w in caught if "probability" in str(w.message)]
    assert len(probability) == 1 and "B[:, 1]" in str(probability[0].message)
    assert {w.filename for w in convergence + probability} == {__file__}


def test_compiled_columns_do_not_depend_on_the_thread_count_or_the_other_columns(monkeypatch):
    _routed(monkeypatch)
    C, B, _ = case("softmax", False, q=4)
    together = quietly(solve_many, C, B, n_threads=2)
    alone = [quietly(solve_many, C, B[:, j:j + 1], n_threads=1) for j in range(4)]
    for j in range(4):
        assert np.array_equal(together.x[:, j], alone[j].x[:, 0]), j
