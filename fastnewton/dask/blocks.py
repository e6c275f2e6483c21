"""Worker side of ``fastnewton.dask``: one row block of C and what each round computes on it.

Every function here runs inside a Dask task on the worker that holds the block. It
takes the ``Block`` (and what earlier rounds left there, ``Held``) plus a few
d-sized arguments, runs the model's stage functions or the package's kernels on the
block's rows, and returns a ``Held``: arrays that stay on the worker (u, Q, β, …) and a
small ``summary`` (scalars, d-vectors, d × k or d × d partials) that the driver reduces.
Nothing n-long ever leaves the worker.
"""
import time
from contextlib import contextmanager

import numpy as np

from ..kernels.kinks import MAX_CANDIDATE_ROWS, TABLE_FIELDS, kink_candidates_of_largest, kink_table, largest_magnitude
from ..kinks import near_or_flipped
from ..models import RowBlock
from ..models.base import MAX_PREFIX, checked_array, finite_point, has_row_weights, model_label
from ..sketching import jl_scores, osnap_embed, sample_rows, sampled_rows_of
from ..threads import thread_limits
from ..validation import as_input_matrix, as_row_weights, as_value_matrix, as_vector


class Block(RowBlock):
    """Block ``index`` of C's rows, with the Numba thread count its tasks use."""

    def __init__(self, index, offset, matrix, b, w, V, n_threads):
        super().__init__(matrix, b, w, V, offset)
        self.index = index
        self.n_threads = n_threads


class Held:
    """A round's result on the worker: ``kept`` arrays stay there, ``summary`` goes to the driver."""

    def __init__(self, summary, kept=None):
        self.summary = summary
        self.kept = kept


def make_block(index, offset, rows, d, model, values, C_block, b_block, w_block, V_block, n_threads):
    """Validate and convert one block as it arrives on its worker (errors name the argument and block)."""
    where = f" (rows of C block {index})"
    matrix = as_input_matrix(C_block, name=f"C block {index}")
    if matrix.n != rows or matrix.d != d:
        raise ValueError(f"C block {index} has shape {(matrix.n, matrix.d)}, but C's chunks say {(rows, d)}")
    b = as_vector(b_block, "b", rows, where) if b_block is not None else None
    w = as_row_weights(w_block, rows)
    V = as_value_matrix(V_block, model, rows, values)
    return Block(index, offset, matrix, b, w, V, n_threads)


def _worker_threads(block):
    if block.n_threads is not None:
        return block.n_threads
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return None


@contextmanager
def _timed(block, summary):
    """Run with the block's Numba threads (BLAS on one) and record the seconds in the summary."""
    import numba

    threads = _worker_threads(block)
    if threads is not None:
        threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    start = time.perf_counter()
    with thread_limits(threads):
        yield
    summary[MAX_PREFIX + "seconds"] = time.perf_counter() - start


def summary_of(held):
    return held.summary


def block_meta(block, model):
    """Shape facts for the driver's setup, with the model's statistics of the block's targets."""
    summary = {"nnz": block.matrix.nnz, "dense_rows": block.rows if block.matrix.format == "dense" else 0,
               "bytes": block.matrix.nbytes, "column_squares": block.matrix.column_squares(), "max_seconds": 0.0,
               "weighted_blocks": int(has_row_weights(block))}
    if getattr(model, "shift_invariant", False):
        # C's column sums: the sketch's centre μ (``DaskProblem.sampling_mean``).
        summary["column_sums"] = block.matrix.rmatmat(np.ones((block.rows, 1)))[:, 0]
    summary.update(model.facts(block))
    return Held(summary)


# -- the model's stages ---------------------------------------------------------------------------------
def _stage(block, kept, rows, known, summary):
    """One stage of the model on the block (the stage that keeps Q also does the transposed pass CᵀQ):
    its partials go into ``summary``; returns the arrays kept."""
    partials, new = rows(block, kept, known)
    if "Q" in new:
        # the block's rows of Q, real floats, before the pass reads a row of Q per row of C (``checked_array``;
        # its 1 + k columns are the driver's to check: the worker has the stage, not the model)
        Q = new["Q"]
        shape = (block.rows, Q.shape[1] if isinstance(Q, np.ndarray) and Q.ndim == 2 else 1)
        partials["G"] = block.matrix.rmatmat(checked_array(Q, shape, model_label(getattr(rows, "__self__", rows)),
                                                           "Q, the columns of its transposed pass,"))
    summary.update(partials)
    return {**kept, **new}


def _first_stage(block, u, first_rows, summary, magnitude):
    """The model's first stage on u; with ``magnitude`` (relu_softmax) also the block's max|uᵢ| (``max_abs_u``:
    the scale of the kink test, ``kink_rows``), so that test needs no reduction of its own."""
    if magnitude:
        summary[MAX_PREFIX + "abs_u"] = largest_magnitude(u)
    return _stage(block, {"u": u}, first_rows, {}, summary)


def forward(block, x, first_rows, magnitude=False):
    """u = C_p x (u = 0 without a pass when x is None) and the model's first stage in the same round."""
    summary = {}
    with _timed(block, summary):
        u = np.zeros(block.rows) if x is None else block.matrix.matvec(x)
        kept = _first_stage(block, u, first_rows, summary, magnitude)
    return Held(summary, kept)


def stage(block, held, rows, known):
    """A later stage of the model, on what the earlier ones kept."""
    summary = {}
    with _timed(block, summary):
        kept = _stage(block, held.kept, rows, known, summary)
    return Held(summary, kept)


def curvature(block, held, model, known):
    """β on the block's rows (stays on the worker; checked before a sandwich reads a βᵢ per row)."""
    return checked_array(model.curvature(block, held.kept, known), (block.rows,), model_label(model),
                         "β, its curvature,", finite=finite_point(known))


def direction(block, held, p, first_rows, magnitude=False):
    """C_p p stays for the line search; ‖C_p p‖∞ goes back (the logit cap), with the first loss stage
    at the full step u + C_p p, so an uncapped first trial needs no round of its own."""
    summary = {}
    with _timed(block, summary):
        Cp = block.matrix.matvec(p)
        summary[MAX_PREFIX + "abs"] = float(np.max(np.abs(Cp))) if Cp.size else 0.0
        kept = _first_stage(block, held.kept["u"] + Cp, first_rows, summary, magnitude)
    return Held(summary, {**kept, "Cp": Cp})


def shifted_forward(block, held, line, t, first_rows, magnitude=False):
    """A line-search trial u + t·C_p p from what the evaluation and the direction left (no pass over C)."""
    summary = {}
    with _timed(block, summary):
        kept = _first_stage(block, held.kept["u"] + t * line.kept["Cp"], first_rows, summary, magnitude)
    return Held(summary, kept)


def kink_rows(block, held, states, rtol, largest, held_rows, held_states, x, log_partition, c):
    """relu_softmax's kink candidates on the block (``fastnewton.kinks.RowStates.candidates``, block by block):
    the sign flips since the previous iterate's u (``states``: what this function kept at it, or None at the
    first) counted into the block's flips, the rows listed by ``kink_candidates_of_largest`` with the global
    ``largest`` = max|u|, and for each its global index, dense row of C and ``kink_table`` row go back (count −1:
    more than MAX_CANDIDATE_ROWS here). ``held_rows``/``held_states``: the rows (global indices) the last step held
    and how (``HELD_*``). u and the flips stay on the worker for the next iteration."""
    summary = {}
    with _timed(block, summary):
        kept = held.kept
        u = kept["u"]
        previous = u if states is None else states.kept["u"]
        # A copy: a task run again (a lost worker) must not count the flips twice.
        flips = np.zeros(block.rows, dtype=np.int64) if states is None else states.kept["flips"].copy()
        held_now = np.zeros(block.rows, dtype=np.int8)
        local = held_rows - block.offset
        inside = (local >= 0) & (local < block.rows)
        held_now[local[inside]] = held_states[inside]
        index = np.empty(MAX_CANDIDATE_ROWS, dtype=np.int64)
        count = kink_candidates_of_largest(u, previous, held_now, flips, rtol, largest, index)
        summary["count"] = count
        if count > 0:
            index = index[:count]
            R = block.matrix.rows(index)
            table = np.empty((count, TABLE_FIELDS))
            at_kink = kink_table(R, index, count, u, flips, held_now, x, kept["e"],
                                 log_partition.factor(kept["block_top"]), block.b, c, table)
            summary.update(index=index + block.offset, rows=R, table=table, at_kink=at_kink)
    return Held(summary, {"u": u.copy(), "flips": flips})


def rows_near_kink(block, states, largest):
    """The block's rows at the kink for the stall message (``fastnewton.kinks.kink_sentence``): from the u and flips
    that ``kink_rows`` kept (a flip counted in the last step, or u non-zero within KINK_RTOL·largest of 0), their
    count and the first one's global index (−1: none)."""
    summary = {}
    with _timed(block, summary):
        u = states.kept["u"]
        at_kink = near_or_flipped(states.kept["flips"] > 0, u, largest)
        first = np.flatnonzero(at_kink)[:1]
        summary.update(count=int(at_kink.sum()), first=int(first[0]) + block.offset if first.size else -1)
    return Held(summary)


def apply(block, function, args):
    """function(block, *args) for the evaluator's ``map_blocks``/``gather_blocks`` (the starts)."""
    return Held(function(block, *args))


# -- Hessian pieces -----------------------------------------------------------------------------------
def sandwich(block, beta):
    summary = {}
    with _timed(block, summary):
        summary["H"] = block.matrix.sandwich(beta)
    return Held(summary)


def hessian_vector(block, beta, p):
    """C_pᵀ(β ⊙ C_p p) (``sandwich_vector``: one read of a dense block), the d-vector goes back."""
    summary = {}
    with _timed(block, summary):
        summary["Hp"] = block.matrix.sandwich_vector(beta, p)[0]
    return Held(summary)


def _block_rng(block, seed, phase):
    return np.random.default_rng([seed, block.index, phase])


def embed(block, beta, seed, mean=None):
    """The block's share Σ_{i in block} of the OSNAP embedding of diag(√|β|) C (m × d; of C − 1μᵀ with ``mean``)."""
    summary = {}
    with _timed(block, summary):
        summary["SB"] = osnap_embed(sampled_rows_of(block.matrix, mean), beta, _block_rng(block, seed, 0))
    return Held(summary)


def scores(block, beta, Z, mean=None):
    """Leverage-score estimates of the block's rows (centred on ``mean``) stay; their sum goes back."""
    summary = {}
    with _timed(block, summary):
        ell = jl_scores(sampled_rows_of(block.matrix, mean), beta, Z)
        summary["total"] = float(ell.sum())
    return Held(summary, {"scores": ell})


def sampled_sandwich(block, beta, held_scores, s, total, seed, mean=None):
    """The block's share of CᵀD̃C (C̃ᵀD̃C̃ with ``mean``): Poisson-sampled rows with weights β/π (and how many
    were kept)."""
    summary = {}
    with _timed(block, summary):
        rows, pi = sample_rows(held_scores.kept["scores"], s, _block_rng(block, seed, 1), total)
        summary.update(H=sampled_rows_of(block.matrix, mean).sandwich_rows(rows, beta[rows] / pi), kept=rows.shape[0])
    return Held(summary)
