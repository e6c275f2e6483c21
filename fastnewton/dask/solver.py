"""``fastnewton.dask.solve``: the Newton driver of ``fastnewton.solve`` over a row-partitioned Dask array."""
import numpy as np

from ..solver import run_from, solve_options
from ..threads import thread_limits
from ..models import uses_values
from ..validation import as_l2, as_positive_float, as_thread_count, check_model
from . import blocks
from .inputs import check_row_partitioned, row_vector_blocks, row_weight_blocks, target_vector, value_matrix_blocks
from .problem import DaskProblem
from .rounds import WORKER_TIMEOUT, wait_for_workers


def _default_client(client):
    if client is not None:
        from distributed import Client

        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        if client.status in ("closing", "closed"):
            raise ValueError(f"client is {client.status}; pass a running distributed.Client")
        return client
    from distributed import get_client

    try:
        return get_client()
    except ValueError as exc:
        raise ValueError("client: no Dask distributed Client is running; start one (e.g. "
                         "distributed.Client(distributed.LocalCluster())) or pass client=") from exc


def persist_blocks(client, C, b, model, V, row_weights, n_threads, worker_timeout=WORKER_TIMEOUT):
    """Validate the inputs and build one ``blocks.Block`` per row chunk with rows on the workers (futures, in row
    order).

    Returns (block futures, n, d, the length-m b of a model with a value matrix, or None)."""
    import dask

    row_chunks, d = check_row_partitioned(C)
    n = sum(row_chunks)
    values = uses_values(model)
    V_pieces, m = value_matrix_blocks(V, model, values, row_chunks)
    if values:
        small_b, b_pieces = target_vector(b, m), [None] * len(row_chunks)
    else:
        small_b, b_pieces = None, row_vector_blocks(b, "b", row_chunks)
    w_pieces = row_weight_blocks(row_weights, row_chunks)
    C_pieces = list(C.to_delayed()[:, 0])
    offsets = np.cumsum((0,) + row_chunks)
    make = dask.delayed(blocks.make_block, pure=True)
    # A chunk of zero rows (legal in Dask: e.g. a boolean row mask's result after compute_chunk_sizes, or chunks
    # given by hand) holds nothing to solve and gets no block; the others keep Dask's block numbers (the names in
    # errors, the seeds of their sketches).
    delayed_blocks = [make(p, int(offsets[p]), rows, d, model, values, C_pieces[p], b_pieces[p], w_pieces[p], V_pieces[p],
                           n_threads) for p, rows in enumerate(row_chunks) if rows > 0]
    futures = client.compute(delayed_blocks)
    # Report a bad block deterministically: the first failing block in row order, whichever finished first.
    wait_for_workers(client, futures, worker_timeout)
    for future in futures:
        if future.status == "error":
            future.result()
    return futures, n, d, small_b


def solve(C, b, model="softmax", *, client=None, V=None, l2=0.0, row_weights=None, x0="auto", hessian="auto",
          eps=0.5, sketch_size=None, tol=1e-8, max_iter=100, seed=None, n_threads=None, callback=None,
          verbose=False, worker_timeout=WORKER_TIMEOUT, continuation=True):
    """``fastnewton.solve`` for a C that lives on a Dask cluster as row blocks; the same result object.

    C : dask.array.Array (n, d) chunked by rows only, blocks NumPy arrays or SciPy sparse matrices
        (e.g. ``da.from_array(C_csr, chunks=(rows, d), asarray=False)``, or blocks made on the workers).
    b : NumPy or Dask, length n (``softmax``, ``relu_softmax``; a Dask b with other chunks is rechunked
        to C's rows) or length m (``softmax_relu``). V (n × m) and ``row_weights`` likewise follow C's rows.
    client : a ``distributed.Client`` (default: the current one).
    n_threads : Numba threads per block task (default: the worker's thread count), at most
        ``NUMBA_NUM_THREADS`` as in ``fastnewton.solve``.
    worker_timeout : seconds a round may wait while the cluster has no worker at all (e.g. after
        ``cluster.scale(0)``) before ``ClusterError`` (default 60; rounds that are computing are
        never timed out).
    Every other keyword is ``fastnewton.solve``'s. Each block is built once on a worker and stays
    there; only x, scalars, d-vectors and d × k / d × d partials move (see ``fastnewton.dask.problem``).
    The history adds, per iteration, ``rounds``, ``tasks``, ``bytes_moved``, ``round_seconds`` (wall
    time of the rounds) and ``block_seconds`` (the slowest block's compute time, summed over rounds).
    Raises ``ClusterError`` when the cluster is lost; never returns a partial result.
    """
    model = check_model(model)
    client = _default_client(client)
    l2 = as_l2(l2)
    n_threads = as_thread_count(n_threads)
    worker_timeout = as_positive_float(worker_timeout, "worker_timeout")
    block_futures, n, d, small_b = persist_blocks(client, C, b, model, V, row_weights, n_threads, worker_timeout)
    problem = DaskProblem(client, block_futures, n, d, model, small_b, l2)
    problem.rounds.worker_timeout = worker_timeout
    build_system, options = solve_options(problem, hessian, eps, sketch_size, tol, max_iter, seed, callback, verbose,
                                          continuation=continuation)
    # As ``fastnewton.solve``: overflowing inputs end in Status.NON_FINITE, which says so; NumPy's
    # overflow warnings on the way there would only repeat it.
    with thread_limits(None), np.errstate(over="ignore", invalid="ignore"):
        res = run_from(problem, x0, build_system, options)
    res["cluster"] = dict(problem.rounds.totals, blocks=len(block_futures))
    return res
