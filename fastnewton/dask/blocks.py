"""Worker side of ``fastnewton.dask``: one row block of C and what each round computes on it.

Every function here runs inside a Dask task on the worker that holds the block. It
takes the ``Block`` (and what earlier rounds left there, ``Held``) plus a few
d-sized arguments, runs the package's Numba kernels on the block's rows, and
returns a ``Held``: arrays that stay on the worker (u, Q, β, …) and a small
``summary`` (scalars, d-vectors, d × k or d × d partials) that the driver reduces.
Nothing n-long ever leaves the worker.
"""
import math
import time
from contextlib import contextmanager

import numpy as np

from ..chunking import chunk_rows
from ..kernels.blocks import (
    block_softmax_parts,
    block_softmax_regression,
    block_softmax_regression_loss,
    block_softmax_values,
)
from ..kernels.dense import dense_matvec, dense_rmatmat
from ..kernels.softmax import softmax_relu_vectors
from ..reductions import dot
from ..sketching import jl_scores, osnap_embed, sample_rows
from ..start import SIMPLEX_FLOOR
from ..threads import thread_limits
from ..validation import as_input_matrix, as_row_weights, as_value_matrix, as_vector

# Summary keys reduced by max instead of sum (the slowest block sets the critical path).
MAX_PREFIX = "max_"


class Block:
    """Rows [offset, offset + rows) of C with their slices of b (n-long targets), w and V."""

    def __init__(self, index, offset, matrix, b, w, V, n_threads):
        self.index, self.offset, self.matrix = index, offset, matrix
        self.b, self.w, self.V = b, w, V
        self.rows = matrix.n
        self.n_threads = n_threads
        self.chunk = chunk_rows(self.rows)


class Held:
    """A round's result on the worker: ``arrays`` stay there, ``summary`` goes to the driver."""

    def __init__(self, summary, **arrays):
        self.summary = summary
        self.__dict__.update(arrays)


def make_block(index, offset, rows, d, model, C_block, b_block, w_block, V_block, n_threads):
    """Validate and convert one block as it arrives on its worker (errors name the argument and block)."""
    where = f" (rows of C block {index})"
    matrix = as_input_matrix(C_block, name=f"C block {index}")
    if matrix.n != rows or matrix.d != d:
        raise ValueError(f"C block {index} has shape {(matrix.n, matrix.d)}, but C's chunks say {(rows, d)}")
    b = as_vector(b_block, "b", rows, where) if b_block is not None else None
    w = as_row_weights(w_block, rows)
    V = as_value_matrix(V_block, model, rows)
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


def add_summaries(first, second):
    """Sum two summaries key by key (``max_`` keys take the maximum): one node of the reduction tree."""
    return {key: max(value, second[key]) if key.startswith(MAX_PREFIX) else value + second[key]
            for key, value in first.items()}


def block_meta(block):
    """Shape facts and b statistics for the driver's setup."""
    summary = {"nnz": block.matrix.nnz, "dense_rows": block.rows if block.matrix.format == "dense" else 0,
               "bytes": block.matrix.nbytes, "column_squares": block.matrix.column_squares(), "max_seconds": 0.0}
    if block.b is not None:
        b = block.b
        positive = b[b > 0.0]
        summary.update(b_squared=float(np.dot(b, b)), max_b=float(b.max()), max_negated_min_b=float(-b.min()),
                       max_negated_min_positive_b=float(-positive.min()) if positive.size else -np.inf)
    return Held(summary)


# -- rounds of one evaluation -------------------------------------------------------------------------
def forward(block, x, relu):
    """Round 1: u = C_p x stays; (max z, Σ exp(z − max z)) goes back."""
    summary = {}
    with _timed(block, summary):
        u = block.matrix.matvec(x)
        summary["parts"] = block_softmax_parts(u, relu, block.chunk)
    return Held(summary, u=u)


def zero_forward(block):
    """u = 0 without a pass over C (the reference gradient at x = 0, the loss at 0)."""
    return Held({"parts": (0.0, float(block.rows)), MAX_PREFIX + "seconds": 0.0}, u=np.zeros(block.rows))


def shifted_forward(block, held, Cp, t, relu):
    """A line-search trial: u + t·Cp from what the evaluation and the direction left (no pass over C)."""
    summary = {}
    with _timed(block, summary):
        u = held.u + t * Cp.Cp
        summary["parts"] = block_softmax_parts(u, relu, block.chunk)
    return Held(summary, u=u)


def regression_gradient(block, held, lse, relu):
    """Round 2 of softmax / relu_softmax: Q = [m s r + w u, m s, m v] stays; partial c, γ, 2·loss, CᵀQ go back."""
    summary = {}
    with _timed(block, summary):
        Q = np.empty((block.rows, 3))
        c, gamma, loss2 = block_softmax_regression(held.u, block.b, block.w, relu, lse, block.chunk, Q)
        summary.update(c=c, gamma=gamma, loss2=loss2, G=block.matrix.rmatmat(Q))
    return Held(summary, u=held.u, Q=Q)


def regression_loss(block, held, lse, relu):
    """Σ (s − b)² + w u² over the block (a line-search trial's loss, round 2)."""
    summary = {}
    with _timed(block, summary):
        summary["loss2"] = block_softmax_regression_loss(held.u, block.b, block.w, relu, lse, block.chunk)
    return Held(summary)


def relu_outputs(block, held, lse):
    """Round 2a of softmax_relu: s = exp(u − lse) stays; the partial y = V_pᵀ s and Σ w u² go back."""
    summary = {}
    with _timed(block, summary):
        s = np.empty(block.rows)
        block_softmax_values(held.u, lse, s)
        y = np.empty((block.V.shape[1], 1))
        dense_rmatmat(block.V, s[:, None], block.chunk, y)
        summary.update(y=y[:, 0], weighted_square=dot(held.u, block.w * held.u))
    return Held(summary, u=held.u, s=s)


def relu_gradient(block, held, y, active_residual):
    """Round 2b of softmax_relu: ρ = V_p(a ⊙ r); Q = [s ρ + w u, s, s ρ, J V diag(a)] stays; Σ s ρ, CᵀQ go back."""
    summary = {}
    with _timed(block, summary):
        rho = np.empty(block.rows)
        dense_matvec(block.V, active_residual, rho)
        c = dot(held.s, rho)
        Q = np.empty((block.rows, block.V.shape[1] + 3))
        # c = 0 here: the global c is not known yet; the driver subtracts c·Cᵀs (= c·G[:, 1]).
        softmax_relu_vectors(held.u, held.s, rho, block.V, y, 0.0, block.w, Q, np.empty(block.rows))
        summary.update(c=c, G=block.matrix.rmatmat(Q))
    return Held(summary, u=held.u, Q=Q)


def curvature_weights(block, held, c):
    """β = (m ⊙ v or s ⊙ ρ) − c·(m ⊙ s or s) + w = Q[:, 2] − c·Q[:, 1] + w, for both model families."""
    return held.Q[:, 2] - c * held.Q[:, 1] + block.w


# -- Hessian pieces -----------------------------------------------------------------------------------
def sandwich(block, beta):
    summary = {}
    with _timed(block, summary):
        summary["H"] = block.matrix.sandwich(beta)
    return Held(summary)


def hessian_vector(block, beta, p):
    """C_pᵀ(β ⊙ C_p p): two passes over the block, the d-vector goes back."""
    summary = {}
    with _timed(block, summary):
        Cp = block.matrix.matvec(p)
        summary["Hp"] = block.matrix.rmatmat((beta * Cp)[:, None])[:, 0]
    return Held(summary)


def direction(block, held, p, relu):
    """C_p p stays for the line search; ‖C_p p‖∞ goes back (the logit cap), with the lse parts of
    the full step u + C_p p, so an uncapped first trial needs no round of its own."""
    summary = {}
    with _timed(block, summary):
        Cp = block.matrix.matvec(p)
        u = held.u + Cp
        summary[MAX_PREFIX + "abs"] = float(np.max(np.abs(Cp))) if Cp.size else 0.0
        summary["parts"] = block_softmax_parts(u, relu, block.chunk)
    return Held(summary, Cp=Cp, u=u)


def _block_rng(block, seed, phase):
    return np.random.default_rng([seed, block.index, phase])


def embed(block, beta, seed):
    """The block's share Σ_{i in block} of the OSNAP embedding of diag(√|β|) C (m × d)."""
    summary = {}
    with _timed(block, summary):
        summary["SB"] = osnap_embed(block.matrix, beta, _block_rng(block, seed, 0))
    return Held(summary)


def scores(block, beta, Z):
    """Leverage-score estimates of the block's rows stay; their sum goes back."""
    summary = {}
    with _timed(block, summary):
        ell = jl_scores(block.matrix, beta, Z)
        summary["total"] = float(ell.sum())
    return Held(summary, scores=ell)


def sampled_sandwich(block, beta, held_scores, s, total, seed):
    """The block's share of CᵀD̃C: Poisson-sampled rows with weights β/π (and how many were kept)."""
    summary = {}
    with _timed(block, summary):
        rows, pi = sample_rows(held_scores.scores, s, _block_rng(block, seed, 1), total)
        summary.update(H=block.matrix.sandwich_rows(rows, beta[rows] / pi), kept=rows.shape[0])
    return Held(summary)


# -- starting points ----------------------------------------------------------------------------------
def normal_system(block, kind, parameters):
    """Partials of the normal equations of min Σ ωᵢ((Cx)ᵢ [+ θ] − tᵢ)²: CᵀΩC, Cᵀ[ω, ω t], Σω, Σωt.

    ``kind`` says how the block forms ω and t from its own rows (see ``fit_rows``)."""
    summary = {}
    with _timed(block, summary):
        weights, target = fit_rows(block, kind, parameters)
        summary.update(A=block.matrix.sandwich(weights),
                       G=block.matrix.rmatmat(np.column_stack([weights, weights * target])),
                       weight_sum=float(weights.sum()), weighted_target=float(np.dot(weights, target)))
    return Held(summary)


def fit_rows(block, kind, parameters):
    """(ω, t) of a start's least-squares fit on the block's rows.

    ``log_b``: ω = b⁺ (normalised by the driver), t = log b (softmax).
    ``active``: ω = 1[b > f(1 + rtol)], t = log(max(b, f)/f) (relu_softmax, f = min positive b).
    ``simplex``: ω = s, t = log s with s the floored simplex vector of softmax_relu's start.
    """
    if kind == "log_b":
        positive = block.b > 0.0
        return np.where(positive, block.b, 0.0), np.log(np.where(positive, block.b, 1.0))
    if kind == "active":
        floor, rtol = parameters
        active = block.b > floor * (1.0 + rtol)
        return active.astype(np.float64), np.where(active, np.log(np.maximum(block.b, floor) / floor), 0.0)
    s = simplex_vector(block, *parameters)
    return s, np.log(s)


def floor_worst(block, x, floor, rtol, k):
    """The k floor rows (b ≤ f(1 + rtol)) of relu_softmax with the largest (Cx)ᵢ: (values, global rows)."""
    u = block.matrix.matvec(x)
    floor_index = np.flatnonzero(~(block.b > floor * (1.0 + rtol)))
    values = u[floor_index]
    order = np.argsort(-values, kind="stable")[:k]
    return Held((values[order], floor_index[order] + block.offset))


def rows_of(block, global_rows):
    """The block's rows among ``global_rows`` as dense float64: (those rows, their global indices)."""
    local = global_rows[(global_rows >= block.offset) & (global_rows < block.offset + block.rows)] - block.offset
    return Held((block.matrix.rows(local), local + block.offset))


def _simplex_matrix(block, active_outputs):
    return np.column_stack([block.V[:, active_outputs], np.ones(block.rows)])


def simplex_columns(block, active_outputs):
    """Partials of AᵀA for A = [V_E, 1] and of Vᵀ1 (softmax_relu's start)."""
    A = _simplex_matrix(block, active_outputs)
    return Held({"AtA": A.T @ A, "column_sums": block.V.sum(axis=0)})


def simplex_outputs(block, n, active_outputs, lam):
    """Partials of Vᵀs for s = 1/n + A λ, and of Σ max(s, floor/n)."""
    s = 1.0 / n + _simplex_matrix(block, active_outputs) @ lam
    return Held({"y": block.V.T @ s, "floored_sum": float(np.maximum(s, SIMPLEX_FLOOR / n).sum())})


def simplex_vector(block, n, active_outputs, lam, total):
    """s = max(1/n + A λ, floor/n) / total on the block's rows (``total``: the global Σ max(·))."""
    return np.maximum(1.0 / n + _simplex_matrix(block, active_outputs) @ lam, SIMPLEX_FLOOR / n) / total


def log_sum_exp(parts):
    """Global log Σ exp(z) from each block's (max z, Σ exp(z − max z)), combined in block order."""
    top = max(zmax for zmax, _ in parts)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(total * math.exp(zmax - top) for zmax, total in parts))
