"""fastnewton.dask.solve on a distributed.LocalCluster with 2 worker processes.

Reference: single-machine ``fastnewton.solve`` on the same data, same start and strategy.
Tolerance 1e-10 relative (issue 7): the blockwise sums (per-block chunks, then blocks in
order, and Cᵀq split as Cᵀ(s⊙r) − c·Cᵀs) round differently from the single-machine
chunks, ~1e-16 per operation; Newton's quadratic convergence to tol = 1e-12 keeps the
difference in x at rounding level times the condition number (measured ≤ 1e-12).
"""
import os
import re
import signal
import time

import numpy as np
import pytest
import scipy.sparse as sp

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import fastnewton  # noqa: E402
import fastnewton.dask  # noqa: E402
from fastnewton.dask import ClusterError  # noqa: E402

AGREEMENT = 1e-10


def _cluster():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=40)
    return cluster, distributed.Client(cluster)


@pytest.fixture(scope="module")
def client():
    cluster, client = _cluster()
    yield client
    client.close()
    cluster.close()


def _problem(model, n=6000, d=12, dense=False, noise=1e-2, seed=0, m=None):
    out = fastnewton.make_problem(n, d, nnz_per_row=None if dense else 6, density=None, model=model,
                                  m=m, noise=noise, seed=seed, dense=dense)
    C, b = out[0], out[1]
    V = out.V
    return C, b, V


def _dask(C, chunks):
    return da.from_array(C, chunks=(chunks, C.shape[1]), asarray=False)


def _relative(x, reference):
    return float(np.max(np.abs(x - reference)) / np.max(np.abs(reference)))


# Before any test creates a client (the module fixture becomes the process default).
def test_no_client_running_is_a_clear_error():
    C, b, _ = _problem("softmax", n=100, d=3)
    try:
        distributed.get_client()
        pytest.skip("a default client exists in this process")
    except ValueError:
        pass
    with pytest.raises(ValueError, match="client: no Dask distributed Client is running"):
        fastnewton.dask.solve(_dask(C, 50), b)


CASES = [
    ("softmax", False, "exact"),
    ("softmax", True, "exact"),
    ("relu_softmax", False, "exact"),
    ("relu_softmax", True, "exact"),
    ("softmax_relu", False, "exact"),
    ("softmax_relu", True, "exact"),
    ("softmax", False, "sketch"),
    ("relu_softmax", True, "sketch"),
    ("softmax", False, "pcg"),
]


@pytest.mark.parametrize("model,dense,hessian", CASES)
def test_same_answer_as_single_machine(client, model, dense, hessian):
    C, b, V = _problem(model, dense=dense, m=30)
    kw = dict(V=V, hessian=hessian, tol=1e-12, seed=3, max_iter=200)
    reference = fastnewton.solve(C, b, model, **kw)
    # Uneven chunks: 2500 + 2500 + 1000 rows.
    res = fastnewton.dask.solve(_dask(C, 2500), b, model, client=client, **kw)
    assert reference.converged and res.converged, (reference.message, res.message)
    assert _relative(res.x, reference.x) <= AGREEMENT
    assert res.loss == pytest.approx(reference.loss, rel=1e-9, abs=1e-15)
    assert res.start == reference.start or res.start.startswith("auto")
    # The same stages (softmax_relu's lifted start: surrogate phases, then the real loss) in the same order.
    assert (list(dict.fromkeys(h.get("phase") for h in res.history))
            == list(dict.fromkeys(h.get("phase") for h in reference.history)))


@pytest.mark.parametrize("hessian", ["sketch", "pcg"])
def test_offset_c_samples_centred_rows_as_on_one_machine(client, hessian):
    """Every entry of dense C + 10: the blocks sample the centred rows cᵢ − μ (μ from their column sums), as one
    machine does, so the sketch converges in a few iterations (before centring: max_iter on one machine, dense
    20000 × 16) and to the single machine's answer."""
    C, b, _ = _problem("softmax", dense=True)
    C = C + 10.0
    kw = dict(hessian=hessian, tol=1e-12, seed=3, max_iter=40)
    reference = fastnewton.solve(C, b, "softmax", **kw)
    res = fastnewton.dask.solve(_dask(C, 2500), b, "softmax", client=client, **kw)
    assert reference.converged and res.converged, (reference.message, res.message)
    assert res.n_iter <= 10, res.n_iter
    assert _relative(res.x, reference.x) <= AGREEMENT


@pytest.mark.parametrize("continuation", [True, False])
@pytest.mark.parametrize("start", ["zeros", "warm"])
def test_softmax_relu_from_a_callers_start_same_answer_as_single_machine(client, start, continuation):
    # A caller's x0 runs the same staged continuation (or, continuation=False, the one Newton loop) blockwise;
    # a warm start (the minimiser moved by 0.1 in the logits) the same warm-start test and Newton first.
    C, b, V = _problem("softmax_relu", m=30)
    x0 = "zeros"
    if start == "warm":
        direction = np.random.default_rng(2).standard_normal(C.shape[1])
        x0 = fastnewton.solve(C, b, "softmax_relu", V=V).x + 0.1 * direction / np.max(np.abs(C @ direction))
    kw = dict(V=V, x0=x0, hessian="exact", tol=1e-12, max_iter=200, continuation=continuation)
    reference = fastnewton.solve(C, b, "softmax_relu", **kw)
    res = fastnewton.dask.solve(_dask(C, 2500), b, "softmax_relu", client=client, **kw)
    assert reference.converged and res.converged, (reference.message, res.message)
    assert _relative(res.x, reference.x) <= AGREEMENT
    assert res.start == reference.start and res.n_iter == reference.n_iter
    assert [h.get("phase") for h in res.history] == [h.get("phase") for h in reference.history]
    assert ("surrogate" in res.start) == (continuation and start == "zeros")
    assert ("warm start" in res.start) == (continuation and start == "warm")


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_auto_start_matches_single_machine_start(client):
    for model in ("softmax", "relu_softmax", "softmax_relu"):
        C, b, V = _problem(model, noise=0.0, m=30)
        single = fastnewton.solve(C, b, model, V=V, max_iter=0)
        res = fastnewton.dask.solve(_dask(C, 1500), b, model, V=V, client=client, max_iter=0)
        assert _relative(res.x0, single.x0) <= 1e-8, model


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_relu_softmax_margin_lp_runs_blockwise(client):
    # d > active rows leaves a null space: the cutting-plane LP pulls rows from the blocks.
    rng = np.random.default_rng(5)
    n, d = 3000, 40
    C = rng.standard_normal((n, d))
    x_true = np.zeros(d)
    x_true[:3] = 1.0
    u = np.where(np.arange(n) < 20, np.abs(C @ x_true) + 1.0, -1.0)
    C[20:] *= 0.0
    C[20:, 3:] = rng.standard_normal((n - 20, d - 3))
    z = np.maximum(u, 0.0)
    b = np.exp(z) / np.exp(z).sum()
    single = fastnewton.solve(C, b, "relu_softmax", max_iter=0)
    res = fastnewton.dask.solve(_dask(C, 1000), b, "relu_softmax", client=client, max_iter=0)
    assert "LP" in single.start and "LP" in res.start
    assert _relative(res.x0, single.x0) <= 1e-6


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_relu_softmax_floor_skips_a_negligible_entry_across_blocks(client):
    """relu_softmax's floor f is the least positive target entry among those ≥ ε·max b. The blocks' facts give max
    b and the least positive entry in one round; when that entry is below ε·max b (here 1e-40, in the last block) a
    second round finds f. The start is the one of the target with that entry 0, and the start and the answer are
    those of one machine, which takes f in two reads of b."""
    C, b, _ = _problem("relu_softmax")
    b = b.copy()
    order = np.argsort(b)
    b[order[:1000]] = 0.0
    b[-1] = 1e-40
    single = fastnewton.solve(C, b, "relu_softmax")
    assert single.status == fastnewton.Status.CONVERGED
    b_zero = b.copy()
    b_zero[-1] = 0.0
    assert np.array_equal(fastnewton.solve(C, b_zero, "relu_softmax").x0, single.x0)
    res = fastnewton.dask.solve(_dask(C, 1500), b, "relu_softmax", client=client)
    assert res.status == single.status
    assert _relative(res.x0, single.x0) <= 1e-8
    assert _relative(res.x, single.x) <= AGREEMENT


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_relu_softmax_start_whose_normal_equations_overflow(client):
    """C·1e153: the start's CᵀC overflows, so its fit is formed again with weights scaled by a power of 4 (one more
    round); the start and the answer are those of one machine, which converges (not the dead point x = 0)."""
    C, b, _ = _problem("relu_softmax", n=3000)
    C = C * 1e153
    single = fastnewton.solve(C, b, "relu_softmax")
    assert single.status == fastnewton.Status.CONVERGED
    res = fastnewton.dask.solve(_dask(C, 1000), b, "relu_softmax", client=client)
    assert res.status == single.status
    assert _relative(res.x0, single.x0) <= 1e-8
    assert _relative(res.x, single.x) <= AGREEMENT


def test_repeated_runs_are_bitwise_identical(client):
    C, b, _ = _problem("softmax")
    runs = [fastnewton.dask.solve(_dask(C, 2000), b, client=client, hessian="sketch", seed=11, tol=1e-10)
            for _ in range(2)]
    assert np.array_equal(runs[0].x, runs[1].x)
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


@pytest.mark.parametrize("model", ["softmax", "softmax_relu"])
def test_carried_u_on_the_workers_is_the_single_machine_u(client, model):
    """The line's evaluate(t) carries u_p + t·C_p p on the workers: bitwise the u that ``Problem``
    carries (same C_p p rows, same t·factor), for a full, a backtracked and a capped step."""
    from fastnewton.dask.problem import DaskProblem
    from fastnewton.dask.solver import persist_blocks

    C, b, V = _problem(model, n=3000, d=8)
    futures, n, d, small_b = persist_blocks(client, _dask(C, 700), b, model, V, None, None)
    remote = DaskProblem(client, futures, n, d, model, small_b, 0.0)
    local = fastnewton.Problem(C, b, model, V=V)
    rng = np.random.default_rng(1)
    evs = [problem.evaluate(np.zeros(d)) for problem in (local, remote)]
    for t, factor in [(1.0, 1.0), (0.5, 1.0), (1.0, 0.3), (0.25, 0.3)]:
        p = rng.standard_normal(d)
        lines = [problem.line(ev, p.copy()) for problem, ev in zip((local, remote), evs)]
        for line in lines:
            if factor != 1.0:
                line.scale(factor)
            line.loss(t)
        evs = [line.evaluate(t) for line in lines]
        u_remote = np.concatenate([held.kept["u"] for held in client.gather(evs[1].kept)])
        assert np.array_equal(u_remote, evs[0].kept["u"])
        assert np.array_equal(evs[0].x, evs[1].x)
        assert np.allclose(evs[1].grad, evs[0].grad, rtol=0, atol=1e-12 * np.max(np.abs(evs[0].grad)))
        assert evs[1].loss == pytest.approx(evs[0].loss, rel=1e-12)


def test_any_chunking_agrees(client):
    C, b, _ = _problem("relu_softmax")
    reference = fastnewton.solve(C, b, "relu_softmax", hessian="exact", tol=1e-12)
    # 1, 7, 2 and 12 blocks: 12 > DRIVER_SUM_BLOCKS, so the partials are summed by the tree on the workers.
    for chunks in (6000, 999, 3001, 500):
        res = fastnewton.dask.solve(_dask(C, chunks), b, "relu_softmax", client=client, hessian="exact", tol=1e-12)
        assert _relative(res.x, reference.x) <= AGREEMENT, chunks


def test_b_as_dask_with_other_chunks_is_rechunked(client):
    C, b, _ = _problem("softmax")
    reference = fastnewton.solve(C, b, hessian="exact", tol=1e-12)
    b_dask = da.from_array(b, chunks=1700)
    w = np.linspace(0.0, 1e-3, C.shape[0])
    res = fastnewton.dask.solve(_dask(C, 2500), b_dask, client=client, hessian="exact", tol=1e-12)
    assert _relative(res.x, reference.x) <= AGREEMENT
    weighted = fastnewton.solve(C, b, hessian="exact", tol=1e-12, row_weights=w, l2=1e-4)
    res_w = fastnewton.dask.solve(_dask(C, 2500), b_dask, client=client, hessian="exact", tol=1e-12,
                                  row_weights=da.from_array(w, chunks=2200), l2=1e-4)
    assert _relative(res_w.x, weighted.x) <= AGREEMENT


def test_blocks_built_on_workers(client):
    """Blocks made by map_blocks on the workers (the driver never holds C)."""
    n, d, rows = 4000, 10, 1000

    def make_block(block_info=None):
        start = block_info[None]["array-location"][0][0]
        rng = np.random.default_rng(start)
        return sp.random(rows, d, density=0.4, format="csr", random_state=rng)

    C = da.map_blocks(make_block, chunks=((rows,) * (n // rows), (d,)), dtype=np.float64,
                      meta=sp.csr_matrix((0, d)))
    local = sp.vstack([sp.random(rows, d, density=0.4, format="csr", random_state=np.random.default_rng(s))
                       for s in range(0, n, rows)]).tocsr()
    x = np.random.default_rng(1).standard_normal(d)
    u = local @ x
    b = np.exp(u) / np.exp(u).sum()
    res = fastnewton.dask.solve(C, b, client=client, x0="zeros", hessian="exact", tol=1e-12)
    reference = fastnewton.solve(local, b, x0="zeros", hessian="exact", tol=1e-12)
    assert _relative(res.x, reference.x) <= AGREEMENT


def test_history_reports_rounds_and_bytes(client):
    C, b, _ = _problem("softmax", d=12)
    res = fastnewton.dask.solve(_dask(C, 2000), b, client=client, x0="zeros", hessian="exact", tol=1e-10)
    step = res.history[1]
    for key in ("rounds", "tasks", "bytes_moved", "round_seconds", "block_seconds", "seconds"):
        assert key in step
    # Nothing n-long moves: bytes per iteration stay far below one n-vector per block.
    d, blocks = 12, 3
    assert step["bytes_moved"] < blocks * 64 * (d * d + 4 * d) + 10_000
    assert res.cluster["blocks"] == blocks and res.cluster["rounds"] >= sum(h["rounds"] for h in res.history)


# -- bad input -----------------------------------------------------------------------------------
def test_column_chunks_rejected(client):
    C, b, _ = _problem("softmax")
    with pytest.raises(ValueError, match=r"C must be chunked by rows only.*rechunk"):
        fastnewton.dask.solve(da.from_array(C.toarray(), chunks=(2000, 6)), b, client=client)


def test_unknown_chunks_rejected(client):
    C, b, _ = _problem("softmax", dense=True)
    Cd = da.from_array(C, chunks=(2000, 12))
    Cd = Cd[Cd[:, 0] > -np.inf]  # boolean indexing makes the row chunks unknown
    with pytest.raises(ValueError, match=r"C has unknown \(nan\) chunk sizes.*compute_chunk_sizes"):
        fastnewton.dask.solve(Cd, b, client=client)


def test_wrong_b_length_and_types_named(client):
    C, b, _ = _problem("softmax")
    with pytest.raises(ValueError, match="b must have length 6000"):
        fastnewton.dask.solve(_dask(C, 2000), b[:-1], client=client)
    with pytest.raises(ValueError, match="b must have length 6000"):
        fastnewton.dask.solve(_dask(C, 2000), da.from_array(b[:-1], chunks=2000), client=client)
    with pytest.raises(TypeError, match="C must be a dask.array.Array"):
        fastnewton.dask.solve(C, b, client=client)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        fastnewton.dask.solve(_dask(C, 2000), b, client="tcp://nowhere")
    with pytest.raises(ValueError, match="tol"):
        fastnewton.dask.solve(_dask(C, 2000), b, client=client, tol=-1.0)
    with pytest.raises(ValueError, match="V is only used"):
        fastnewton.dask.solve(_dask(C, 2000), b, client=client, V=np.ones((6000, 2)))


def test_unsupported_block_type_named(client):
    C, b, _ = _problem("softmax", dense=True)

    def as_strings(block):
        return block.astype(str)

    Cd = da.from_array(C, chunks=(2000, 12)).map_blocks(as_strings, dtype=np.float64)
    with pytest.raises(TypeError, match="C block 0 must have a numeric"):
        fastnewton.dask.solve(Cd, b, client=client)


def test_non_finite_block_named(client):
    C, b, _ = _problem("softmax", dense=True)
    C = C.copy()
    C[4500, 3] = np.nan
    with pytest.raises(ValueError, match="C block 2 must contain only finite values"):
        fastnewton.dask.solve(da.from_array(C, chunks=(2000, 12)), b, client=client)


def test_inputs_not_modified(client):
    C, b, V = _problem("softmax_relu", m=20)
    copies = [C.data.copy(), C.indices.copy(), C.indptr.copy(), b.copy(), V.copy()]
    with pytest.warns(fastnewton.ConvergenceWarning):
        fastnewton.dask.solve(_dask(C, 2000), b, "softmax_relu", V=V, client=client, max_iter=3)
    for before, after in zip(copies, [C.data, C.indices, C.indptr, b, V]):
        assert np.array_equal(before, after)


# -- faults --------------------------------------------------------------------------------------
def test_worker_killed_mid_solve_gives_the_same_answer():
    C, b, _ = _problem("softmax", n=8000)
    kw = dict(x0="zeros", hessian="exact", tol=1e-12)
    cluster, client = _cluster()
    try:
        undisturbed = fastnewton.dask.solve(_dask(C, 2000), b, client=client, **kw)
        killed = []

        def kill_one_worker(info):
            if info["iter"] == 2 and not killed:
                address = sorted(client.scheduler_info()["workers"])[0]
                pid = client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                killed.append(address)
                time.sleep(0.5)
            return False

        res = fastnewton.dask.solve(_dask(C, 2000), b, client=client, callback=kill_one_worker, **kw)
        assert killed
        # The killed worker is gone (its nanny starts a fresh one under a new address), so its
        # blocks and intermediate results were recomputed from the graph.
        assert killed[0] not in client.scheduler_info()["workers"]
        assert res.converged
        assert np.array_equal(res.x, undisturbed.x)
    finally:
        client.close()
        cluster.close()


def test_losing_the_cluster_raises_and_returns_nothing():
    C, b, _ = _problem("softmax", n=8000)
    cluster, client = _cluster()
    try:
        def shut_down(info):
            if info["iter"] == 1:
                cluster.close()
            return False

        with pytest.raises(ClusterError, match="cluster was lost"):
            fastnewton.dask.solve(_dask(C, 2000), b, client=client, x0="zeros", hessian="exact",
                                  callback=shut_down, tol=1e-14)
    finally:
        client.close()
        cluster.close()


def test_softmax_relu_with_dask_V_and_b_auto_strategy_verbose(client, capsys):
    C, b, V = _problem("softmax_relu", m=30)
    reference = fastnewton.solve(C, b, "softmax_relu", V=V, tol=1e-12)
    res = fastnewton.dask.solve(_dask(C, 2500), da.from_array(b, chunks=7), "softmax_relu", client=client,
                                V=da.from_array(V, chunks=(1000, 10)), tol=1e-12, verbose=True)
    assert res.hessian == reference.hessian  # "auto" resolves the same way from the blocks' nnz
    assert _relative(res.x, reference.x) <= AGREEMENT
    printed = capsys.readouterr().out
    assert "iter" in printed and "Converged" in printed


# -- hostile inputs and cluster faults (each ends by itself with a clear error) -------------------
def test_corrupt_sparse_block_is_named_not_a_lost_cluster(client):
    """A block whose CSR data is shorter than indptr[-1] once crashed its worker four times and was
    reported as a lost cluster; it is rejected on its worker before any kernel runs, by name."""
    C, b, _ = _problem("softmax")

    def corrupt_second(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 1:
            block = block.copy()
            block.data = block.data[:1].copy()
        return block

    Cd = _dask(C, 2000).map_blocks(corrupt_second, dtype=C.dtype)
    with pytest.raises(ValueError, match="C block 1 is a corrupt sparse matrix"):
        fastnewton.dask.solve(Cd, b, client=client)


def test_too_many_threads_rejected_as_in_solve(client):
    C, b, _ = _problem("softmax", n=200, d=3)
    import numba

    with pytest.raises(ValueError, match="n_threads"):
        fastnewton.dask.solve(_dask(C, 100), b, client=client, n_threads=numba.config.NUMBA_NUM_THREADS + 1)
    with pytest.raises(ValueError, match="n_threads"):
        fastnewton.solve(C, b, n_threads=numba.config.NUMBA_NUM_THREADS + 1)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_overflowing_ridge_gives_the_same_status_as_solve(client):
    """l2 = 1e300: ‖∇L‖ overflows at the start; Dask said DEAD_STATIONARY where solve said CONVERGED.
    Neither repeats the NON_FINITE message as a NumPy overflow warning."""
    C, b, _ = _problem("softmax")
    reference = fastnewton.solve(C, b, l2=1e300)
    res = fastnewton.dask.solve(_dask(C, 2000), b, client=client, l2=1e300)
    assert res.status == reference.status == fastnewton.Status.NON_FINITE
    assert "float64" in res.message


def test_closed_client_is_a_clear_error(client):
    C, b, _ = _problem("softmax", n=200, d=3)
    closed = distributed.Client(client.scheduler.address, set_as_default=False)
    closed.close()
    with pytest.raises(ValueError, match=r"\bclient\b.*closed"):
        fastnewton.dask.solve(_dask(C, 100), b, client=closed)


def test_scaling_the_cluster_to_zero_raises_within_the_worker_timeout():
    """cluster.scale(0) mid-solve once hung forever: rounds wait for workers at most worker_timeout."""
    import threading

    C, b, _ = _problem("softmax", n=8000)
    # Threads, not processes: scale(0) then retires the workers in a fraction of a second.
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=":0", silence_logs=40)
    client = distributed.Client(cluster, set_as_default=False)
    outcome = []
    try:
        def scale_to_zero(info):
            if info["iter"] == 1:
                cluster.scale(0)
                while client.scheduler_info()["workers"]:
                    time.sleep(0.1)
            return False

        def run():
            try:
                fastnewton.dask.solve(_dask(C, 2000), b, client=client, x0="zeros", hessian="exact", tol=1e-14,
                                      callback=scale_to_zero, worker_timeout=2.0)
                outcome.append("returned")
            except Exception as error:  # noqa: BLE001 - the test inspects it below
                outcome.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=120)  # a bound, not a timing assertion: without the fix it never ends
        assert outcome, "the solve did not end after the cluster was scaled to zero"
        assert isinstance(outcome[0], ClusterError), outcome[0]
        assert "no workers" in str(outcome[0])
    finally:
        client.close()
        cluster.close()


def _family_case(noisy):
    """A random attention-like softmax_relu problem of bench/families.py (5 % noise when ``noisy``)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "families.py"
    spec = importlib.util.spec_from_file_location("bench_families", path)
    families = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(families)
    return families.make_case("softmax_relu", 13, 0, n_range=(50, 400), d_range=(8, 24), noise=0.05 if noisy else 0.0)


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
@pytest.mark.parametrize("noisy", [False, True])
def test_softmax_relu_staged_start_same_phases_and_answer(client, noisy):
    """softmax_relu's staged start through fastnewton.dask.solve: reachable b (the surrogate at l2, then
    the real loss) and noisy b (not reachable: the real loss from the surrogate's end, then from zeros)
    take the same phases, the same number of iterations each, and end at the same point: x to 1e-10
    where the minimiser is unique (reachable b), the loss and h(Cx) to 1e-10 where the noisy solve
    ends at a dead stationary point (a dead output leaves directions of x on which L is flat, so x
    there is fixed only to rounding times the inverse of a vanishing curvature: 2e-5 measured)."""
    case = _family_case(noisy)
    C = case.C.toarray() if sp.issparse(case.C) else case.C
    # tol = 1e-12 as in the other comparisons, and max_iter = 300 so that every phase ends by its own test
    # (a phase cut by max_iter mid-path compares two paths of rounding, not two answers).
    kw = dict(V=case.V, hessian="exact", seed=3, tol=1e-12, max_iter=300)
    reference = fastnewton.solve(C, case.b, "softmax_relu", **kw)
    res = fastnewton.dask.solve(_dask(C, (C.shape[0] + 1) // 2), case.b, "softmax_relu", client=client, **kw)
    phases = [h.get("phase") for h in reference.history]
    assert [h.get("phase") for h in res.history] == phases
    assert ("real from zeros" in phases) == noisy and ("surrogate" in phases) == (not noisy)
    assert res.status == reference.status and res.n_iter == reference.n_iter
    assert res.loss == pytest.approx(reference.loss, rel=AGREEMENT, abs=1e-15)
    prediction = fastnewton.predict(C, res.x, "softmax_relu", case.V)
    reference_prediction = fastnewton.predict(C, reference.x, "softmax_relu", case.V)
    assert _relative(prediction, reference_prediction) <= AGREEMENT
    if not noisy:
        assert reference.converged
        assert _relative(res.x, reference.x) <= AGREEMENT


def test_one_sided_steps_are_the_same_on_dask(client, monkeypatch):
    """softmax_relu with Gaussian V (outputs with b_j = 0, loss ½ max(y_j, 0)²): the steps that keep their
    kinks (fastnewton.active_set) run on the driver from P and y, so Dask takes them at the same iterations
    and ends at the same x."""
    import fastnewton.newton

    rng = np.random.default_rng(5)
    planted = fastnewton.make_problem(4000, 30, nnz_per_row=6, model="softmax_relu", m=12, seed=5)
    C = planted.C.toarray()
    V = rng.standard_normal(planted.V.shape)
    b = fastnewton.predict(C, planted.x_true, "softmax_relu", V)
    assert (b == 0.0).sum() >= 3
    refined = []
    original = fastnewton.newton.one_sided_step

    def counting(*args):
        step, changed = original(*args)
        refined.append(changed)
        return step, changed

    monkeypatch.setattr(fastnewton.newton, "one_sided_step", counting)
    kw = dict(V=V, hessian="exact", l2=1e-8, tol=1e-12, max_iter=300)
    reference = fastnewton.solve(C, b, "softmax_relu", **kw)
    local = list(refined)
    refined.clear()
    res = fastnewton.dask.solve(_dask(C, 1500), b, "softmax_relu", client=client, **kw)
    assert any(local) and refined == local
    assert res.status == reference.status and res.n_iter == reference.n_iter
    assert _relative(res.x, reference.x) <= AGREEMENT


def test_branch_probe_is_the_same_on_dask(client):
    """The ridge continuation's branch probe (fastnewton.lifted_start, l2 > 0) decides on the driver from y and
    the stage's loss, through the evaluator's methods: Dask probes at the same stage, keeps the same branch, and
    ends at the same x (a small copy of bench/valley.py's Gaussian-V problem on which the probe finds the lower
    branch: tests/test_lifted_start.py::test_branch_probe_continues_from_the_lower_minimiser_of_the_stage)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "valley.py"
    spec = importlib.util.spec_from_file_location("bench_valley_dask", path)
    valley = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(valley)
    C, b, V = valley.valley_problem(5000, 100, 10, 16, 9, "gaussian")
    C = C.toarray()
    kw = dict(V=V, hessian="exact", l2=1e-8)
    reference = fastnewton.solve(C, b, "softmax_relu", **kw)
    res = fastnewton.dask.solve(_dask(C, 2500), b, "softmax_relu", client=client, **kw)
    phases = [record["phase"] for record in reference.history[1:]]
    assert "branch probe l2+0.03·λmax" in phases
    assert [record["phase"] for record in res.history[1:]] == phases
    assert res.status == reference.status and res.n_iter == reference.n_iter
    assert _relative(res.x, reference.x) <= AGREEMENT


@pytest.mark.parametrize("hessian", ["exact", "pcg"])
@pytest.mark.parametrize("shared", [False, True], ids=["two-rows", "parallel-rows"])
def test_planted_kink_minimum_is_converged_to_on_dask(client, hessian, shared):
    """relu_softmax with rows at (Cx*)ᵢ = 0 at its minimiser (tests/test_kinks.py's planted problems: two rows, or
    15 rows in two classes of parallel rows split over two blocks), on 2 blocks (8 for the 15-row problem): Dask
    runs the kink test and held step of ``solve`` (the per-row state on the workers: ``DaskRowStates``) and ends
    CONVERGED at the kink stationary point (the plain step stalls there: after 51 / 29 iterations on the two-row
    problem). Its x is ``solve``'s to the solve's tolerance, 1e-8 relative (the blockwise sums round otherwise;
    measured 1e-15 exact, 1e-11 pcg), and its least-norm Clarke element by lsq_linear is ≤ 10·tol·g_ref
    (independently: NumPy's softmax, tests/test_kinks.py)."""
    from test_kinks import _least_norm_clarke, planted_kink_problem, planted_shared_kink_problem

    C, b, x_star, kinks = planted_shared_kink_problem() if shared else planted_kink_problem()
    tol = 1e-8
    kw = dict(hessian=hessian, tol=tol, seed=0)
    reference = fastnewton.solve(C, b, "relu_softmax", **kw)
    # The shared problem's kink rows are its first 15 of 80: blocks of 10 rows put them on two of its 8 blocks.
    res = fastnewton.dask.solve(_dask(C, 10 if shared else 30), b, "relu_softmax", client=client, **kw)
    assert res.status == reference.status == fastnewton.Status.CONVERGED, res.message
    assert f"kink stationary point: {kinks.size} row(s)" in res.message
    if not (shared and hessian == "pcg"):
        # (pcg on the shared problem: CG's iterates from Dask's sums part from solve's after a few steps, and its
        # path to the same point takes 9 iterations where solve's takes 7)
        assert res.n_iter == reference.n_iter
    assert np.linalg.norm(res.x - reference.x) <= tol * np.linalg.norm(reference.x)
    if not shared:  # the shared problem's x against scipy's minimiser on its kink face: tests/test_kinks.py
        assert np.linalg.norm(res.x - x_star) <= tol * np.linalg.norm(x_star)
    assert res.subgradient_norm <= tol * res.g_ref
    found, norm, _ = _least_norm_clarke(C, b, res.x, method="bvls" if shared else "trf")
    assert found.tolist() == kinks.tolist() and norm <= 10 * tol * res.g_ref


@pytest.mark.parametrize("hessian", ["exact", "pcg"])
def test_rows_creeping_to_a_kink_are_held_on_dask(client, hessian):
    """tests/test_kinks.py's creeping problem (50 rows at one kink that the cut plain steps approach from one side) on
    4 blocks: Dask holds the rows the plain step crosses as ``solve`` does, CONVERGED at a kink stationary point in
    solve's iterations (13 with either strategy, where the plain rule took 22 or STALLED), x within 1e-8 of solve's
    (measured 5e-16 exact, 5e-11 pcg)."""
    from test_kinks import creeping_kink_problem

    C, b = creeping_kink_problem()
    C = C.toarray()
    kw = dict(hessian=hessian, seed=0)
    reference = fastnewton.solve(C, b, "relu_softmax", **kw)
    res = fastnewton.dask.solve(_dask(C, 36), b, "relu_softmax", client=client, **kw)
    assert res.status == reference.status == fastnewton.Status.CONVERGED, res.message
    assert "kink stationary point" in res.message
    assert res.n_iter == reference.n_iter
    assert np.linalg.norm(res.x - reference.x) <= 1e-8 * np.linalg.norm(reference.x)


def test_relu_softmax_without_kinks_takes_its_path_on_dask(client, monkeypatch):
    """A relu_softmax problem with no row at a kink on the way or at the end (tests/test_kinks.py's): the same x,
    bits and iterations on Dask as the loop without the kink machinery (``kink_states`` None: the loop as before),
    and the iterations of ``solve``."""
    from fastnewton.dask.problem import DaskProblem

    C, b, _ = fastnewton.make_problem(400, 12, nnz_per_row=4, model="relu_softmax", seed=4)
    kw = dict(x0=np.full(12, 0.05), tol=1e-10, hessian="exact")
    reference = fastnewton.solve(C, b, "relu_softmax", **kw)
    res = fastnewton.dask.solve(_dask(C, 200), b, "relu_softmax", client=client, **kw)
    monkeypatch.setattr(DaskProblem, "kink_states", lambda self, ev: None)
    plain = fastnewton.dask.solve(_dask(C, 200), b, "relu_softmax", client=client, **kw)
    assert res.status == plain.status == reference.status == fastnewton.Status.CONVERGED
    assert res.n_iter == plain.n_iter == reference.n_iter and res.n_iter > 3
    assert np.array_equal(res.x, plain.x)
    assert "kink" not in res.message
    # The kink test's round: one more per iteration than without it.
    assert [r["rounds"] for r in res.history[1:]] == [r["rounds"] + 1 for r in plain.history[1:]]


def test_relu_softmax_stall_at_a_kink_says_so_on_dask(client, monkeypatch):
    """Without the held step and the least-norm test (patched off on the driver), the plain steps zig-zag across the
    planted problem's kink and stall (as before the kink machinery). Dask's STALLED message names the rows at the
    kink, as ``solve``'s does: their count and first index come from the flips and u the kink round keeps on the
    workers (``DaskRowStates.stall_sentence``), since u never reaches the driver."""
    import fastnewton.kinks as kinks_module
    from test_kinks import planted_kink_problem

    monkeypatch.setattr(kinks_module, "held_rows", lambda *args: 0)
    monkeypatch.setattr(kinks_module.Kinks, "stationarity", lambda self, g, scale: (0, np.inf, np.inf))
    C, b, _, _ = planted_kink_problem()
    reference = fastnewton.solve(C, b, "relu_softmax", tol=1e-12)
    res = fastnewton.dask.solve(_dask(C, 30), b, "relu_softmax", client=client, tol=1e-12)
    assert reference.status == res.status == fastnewton.Status.STALLED
    sentence = re.search(r"x sits at a ReLU kink: \d+ row\(s\) with \(Cx\)ᵢ ≈ 0 or changing sign between steps "
                         r"\(e\.g\. index \d+\)", reference.message)
    assert sentence is not None, reference.message
    assert sentence.group(0) in res.message and res.at_kink


@pytest.mark.parametrize("model", ["softmax", "softmax_relu"])
def test_chunks_of_zero_rows_are_skipped(client, model):
    """Rows selected by a Dask boolean mask leave chunks of zero rows once their sizes are computed (legal in
    Dask): they hold nothing to solve, and the answer is solve's on the selected rows (they were refused)."""
    C, b, V = _problem(model, n=3000, dense=model == "softmax")
    keep = np.ones(C.shape[0], dtype=bool)
    keep[1000:2000] = False
    mask = da.from_array(keep, chunks=1000)
    C_kept = _dask(C, 1000)[mask]
    C_kept.compute_chunk_sizes()
    assert C_kept.chunks[0] == (1000, 0, 1000)
    if model == "softmax":
        b = b / b[keep].sum()  # the selected rows' target, a distribution again
        b_kept = da.from_array(b, chunks=1000)[mask]
        b_kept.compute_chunk_sizes()  # chunked like C, a zero-row chunk too
        rows = dict(b=b[keep], V=None)
        weights = da.from_array(np.full(C.shape[0], 1e-4), chunks=1000)[mask]
        weights.compute_chunk_sizes()
        V_kept = None
    else:
        b_kept, rows, weights = b, dict(b=b, V=V[keep]), 1e-4
        V_kept = da.from_array(V, chunks=(1000, -1))[mask]
        V_kept.compute_chunk_sizes()
    for hessian in ("exact", "pcg"):
        reference = fastnewton.solve(C[keep], rows["b"], model, V=rows["V"], hessian=hessian, tol=1e-12, seed=3,
                                     row_weights=1e-4)
        res = fastnewton.dask.solve(C_kept, b_kept, model, V=V_kept, client=client, hessian=hessian, tol=1e-12,
                                    seed=3, row_weights=weights)
        assert res.status == reference.status
        assert res.cluster["blocks"] == 2
        # exact: the same sums as on one machine; pcg: its sketch's seeds are per block, so its CG steps differ
        # within its own tolerance (both converge to the same point at tol = 1e-12)
        assert _relative(res.x, reference.x) <= (AGREEMENT if hessian == "exact" else 1e-8), hessian
