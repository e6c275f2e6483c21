"""The model interface: what a model states about a block of rows, run alike by both evaluators.

A model h (``fastnewton.models.softmax``, ``fastnewton.models.softmax_relu``) is one object that
states, for a block of rows of C (a ``RowBlock``: the rows' matrix, their slices of b, w and V):

- ``evaluation``: the stages of one evaluation at u = Cx. A ``Stage`` runs ``rows(block, kept,
  known)`` on each block (→ a summary of partials and arrays kept with the block) and then
  ``combine(summary, known)`` once on the driver, on the blocks' summaries summed (→ the globals
  the next stage needs). The last stage keeps Q = [q_a, U], the columns of the one transposed
  pass; the evaluator adds G = CᵀQ to its summary, and its ``combine`` returns ``loss``,
  ``gradient`` (∇L without the ridge, the c-terms split linearly, e.g. G[:, 0] − c·G[:, 1]) and S.
  P = CᵀU is G[:, 1:]; the first ``gradient_columns`` columns of Q give the gradient alone.
- ``loss_stages``: the stages of the loss alone at a line-search trial u (the last ``combine``
  returns ``loss``).
- ``curvature(block, kept, known)``: β on the block's rows, for the sandwich Cᵀ diag(β) C;
  ``curvature_sandwich(block, kept, known)``: that sandwich over the block (by default
  ``block.matrix.sandwich(curvature(...))``; a model may form it without writing β), and
  ``curvature_sandwich_vector(block, kept, known, v)``: (Cᵀ(β ⊙ Cv), Cv) without writing β, or None.
- ``facts(block)``: summable statistics of the block's targets, ``target_norm(facts)``,
  ``diagnose(known, loss, facts, loss_at_zero)``, ``reference()`` (the model whose gradient at
  x = 0 sets g_ref) and ``auto_start(problem)``;
- ``auto_solve(problem, build_system, options)``: the whole solve from ``x0="auto"``, written as
  ``auto_solve_rounds``, a generator yielding each Newton loop it needs (``NewtonRequest``). By default
  the Newton loop from ``auto_start``; a model whose start has Newton stages of its own
  (``softmax_relu``: Newton on a surrogate model first, ``fastnewton.lifted_start``) runs them
  here, on ``problem.with_model(surrogate, l2)`` copies of the evaluator.
  ``solve_from_rounds(problem, x0, description, build_system, options)``: the same from a caller's x0
  (by default one Newton loop from it; ``softmax_relu`` runs its stages from x0).

The single-machine ``Problem`` runs the stages on one block holding all of C; ``fastnewton.dask``
runs each stage's ``rows`` on the workers and its ``combine`` on the driver. Summaries are dicts
summed key by key (keys starting ``max_`` take the maximum), so any value with ``+`` works
(``LogPartition`` for the softmax normaliser).
"""
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..buffers import Recycler
from ..chunking import chunk_rows
from ..kernels.softmax import curvature_weights, exp_sum_parts, log_partition_parts
from ..newton import NewtonRequest, run_requests
from ..reductions import all_finite
from ..timing import PhaseTimer
from ..validation import as_flag

# Summary keys reduced by max instead of sum.
MAX_PREFIX = "max_"


class RowBlock:
    """Rows [offset, offset + rows) of C with their slices of the per-row target b (or None), w and V.

    ``buffers.empty(shape)`` gives the models' per-evaluation work arrays (``fastnewton.buffers``; a
    ``Recycler`` of its own, or ``buffers``, one that the blocks of problems solved together share)."""

    def __init__(self, matrix, b, w, V, offset=0, buffers=None):
        self.matrix, self.b, self.w, self.V, self.offset = matrix, b, w, V, offset
        self.kernel_w = None if w is None else kernel_row_weights(w)
        self.rows = matrix.n
        self.chunk = chunk_rows(self.rows)
        self.buffers = Recycler() if buffers is None else buffers


def kernel_row_weights(w):
    """w as the softmax kernels take it: an empty array when every wᵢ is 0 (no row weights given), whose w
    terms they then leave out with their reads of w and, in the columns of the transposed pass, of u
    (``kernels.softmax.chunk_regression_columns``; CSR 2·10⁵ × 100 from zeros: ~26 passes over the n rows per
    solve read an all-zero w). Else w itself."""
    return w if w.shape[0] == 0 or w.any() else _NO_ROW_WEIGHTS


_NO_ROW_WEIGHTS = np.zeros(0)


def has_row_weights(block):
    """Whether some row weight wᵢ of the block is non-zero (then ½ Σ wᵢuᵢ² makes no model shift-invariant:
    ``Model.shift_invariant``)."""
    w = block.kernel_w
    return w is not None and w.shape[0] > 0


def add_summaries(first, second):
    """Sum two summaries key by key (``max_`` keys take the maximum): one node of a reduction."""
    return {key: max(value, second[key]) if key.startswith(MAX_PREFIX) else value + second[key]
            for key, value in first.items()}


class LogPartition:
    """log Σ exp(z) held as (max z, Σ exp(z − max z)); ``+`` combines two blocks' parts (in a fixed order)."""

    __slots__ = ("top", "total")

    def __init__(self, top, total):
        self.top, self.total = float(top), float(total)

    def __add__(self, other):
        top = max(self.top, other.top)
        if top == -math.inf:
            return LogPartition(top, 0.0)
        return LogPartition(top, self.total * math.exp(self.top - top) + other.total * math.exp(other.top - top))

    def factor(self, block_top):
        """The factor turning a block's e = exp(z − block_top) into softmax(z) = e·factor."""
        return math.exp(block_top - self.top) / self.total

    def __reduce__(self):
        return LogPartition, (self.top, self.total)


def log_partition_rows(block, kept, relu):
    """The first stage of the softmax models: e = exp(z − max z) kept, the block's LogPartition back.

    When u came with its maximum (``kept["u_max"]``: a line-search trial's u, ``kernels.softmax.line_point``),
    max z follows from it and only the exponentials remain (one parallel region, not two; the same bits)."""
    e = block.buffers.empty(block.rows)
    u_max = kept.get("u_max")
    if u_max is None:
        top, total = log_partition_parts(kept["u"], relu, block.chunk, e)
    else:
        top = relu_max(u_max, block.rows) if relu else u_max
        total = exp_sum_parts(kept["u"], relu, top, block.chunk, e)
    return {"log_partition": LogPartition(top, total)}, {"e": e, "block_top": top}


def relu_max(u_max, rows):
    """max ReLU(u) over ``rows`` entries from max u (NaN entries ignored): the value that
    ``kernels.softmax.chunk_max_z(u, True)`` finds (+0.0 when no entry is positive; −inf for no rows)."""
    if u_max > 0.0:
        return u_max
    return 0.0 if rows else -math.inf


def softmax_rows(block, u, relu):
    """softmax(z) over the rows of a block that holds them all, z = ReLU(u) if ``relu`` else u."""
    e = np.empty(block.rows)
    _, total = log_partition_parts(u, relu, block.chunk, e)
    return e / total


def keep_log_partition(summary, known):
    return {"log_partition": summary["log_partition"]}


def half_loss(summary, known):
    """The loss from the blocks' partials of Σ r² + w u²."""
    return {"loss": 0.5 * summary["loss2"]}


@dataclass(frozen=True)
class Stage:
    """One round of a model's evaluation: ``rows`` on every block, then ``combine`` on the driver."""

    rows: Callable  # rows(block, kept, known) -> (summary dict, dict of arrays kept with the block)
    combine: Callable  # combine(summed summary, known) -> dict of new globals


class Model:
    """Base of the models: defaults for the optional parts of the interface (see the module docstring)."""

    name = None
    # Whether the model takes a value matrix V (n × m) and a length-m target b held by the model.
    uses_values = False
    # k, the columns of U (the rank of the low-rank part U S Uᵀ), is set by every model: memory
    # checks size the n × (k + 1) work by it.
    # Leading columns of Q that the gradient alone needs ([q_a, q_b] for the c-term split).
    gradient_columns = 2
    # Whether ``auto_start_rounds`` fits on a ``FitSample`` when offered one (``auto`` prices the start by it).
    samples_start = False
    # Whether a line-search trial may run the evaluation's stages up to the columns Q of the transposed pass
    # in place of ``loss_stages`` (``Problem.trial_at``): the last loss stage's ``combine`` then reads the
    # last evaluation stage's summary, which must hold the loss's row sums with the same bits.
    trial_columns = False
    # Whether the loss without row weights depends on u = Cx only through softmax(u), so L(u + t·1) = L(u)
    # and its u-Hessian diag(β) + U S Uᵀ annihilates 1: then Cᵀ H_u C = C̃ᵀ H_u C̃ for C̃ = C − 1μᵀ, and the
    # sketch samples centred rows (``fastnewton.sketching.CentredRows``; ``ones_columns`` gives Uᵀ1).
    shift_invariant = False

    def facts(self, block):
        return {}

    def complete_facts(self, facts, map_blocks):
        """The facts of the whole target from ``facts``, the blocks' combined: those that need a fact of all the
        blocks first ask ``map_blocks(function, *args)`` (function(block, *args) over every block, the
        summaries combined as the facts are) for one more read of the target."""
        return facts

    def curvature_sandwich(self, block, kept, known):
        """Cᵀ diag(β) C over the block's rows, β = ``curvature(block, kept, known)`` (checked before the sandwich
        reads a βᵢ per row: ``checked_array``)."""
        beta = checked_array(self.curvature(block, kept, known), (block.rows,), model_label(self), "β, its curvature,",
                             finite=finite_point(known))
        return block.matrix.sandwich(beta)

    def curvature_sandwich_vector(self, block, kept, known, v):
        """(Cᵀ(β ⊙ Cv), Cv) over the block's rows, β = ``curvature(block, kept, known)``, from a pass that forms
        each βᵢ as its row needs it; None when the model or the block's matrix has none (β is then formed first)."""
        return None

    def reference(self):
        return self

    def gradient_rounding(self, n, facts, rounding):
        """R of a bound R·D_j (D_j = ‖C_j‖) on the rounding error of this model's computed ∇L(0) entry j, where
        the model knows one; 0 otherwise (the stopping test then has no rounding floor: ``NewtonRun.begin``).
        ``rounding``: the relative error of one chain of operations (newton.py's ROUNDING_FACTOR)."""
        return 0.0

    def ones_columns(self, known):
        """t = Uᵀ1 (length k) at an evaluation, for a ``shift_invariant`` model
        (``fastnewton.sketching.uncentred_sandwich``)."""
        raise NotImplementedError(f"model {self.name!r} is not shift-invariant")

    def diagnose(self, known, loss, facts, loss_at_zero):
        return None

    def predict(self, block, u):
        """h(u) on the block's rows (``fastnewton.predict``)."""
        raise NotImplementedError(f"model {self.name!r} does not define predict(block, u)")

    def relu_inputs(self, known, kept):
        """(what they are, values) of the ReLU inputs whose kinks can stall Newton, or None.

        ``kept`` holds the rows' arrays on one machine and is None where they stay on workers."""
        return None

    def relu_kink_inputs(self, known, kept, block):
        """(u, e, softmax factor, b, c) of a model whose rows pass u = Cx through ReLU before a softmax
        (``fastnewton.kinks``), or None."""
        return None

    def one_sided_outputs(self, known, P):
        """(J, y): the outputs whose loss term is ½ max(y_j, 0)², as ∇y_j (columns of the d × k array J, taken
        from P = CᵀU) and y_j; None when the model has none (``fastnewton.active_set``)."""
        return None

    def auto_start(self, problem):
        return np.zeros(problem.d), "zeros (auto: the model has no starting rule)"

    def auto_start_rounds(self, problem, sample=None):
        """``auto_start`` as a generator of the requests for passes over C that ``solve_many`` can share
        between problems (``fastnewton.start.NormalSystemRequest``); returns (x0, description). By
        default ``auto_start`` itself, with no request; a model writing its start this way defines
        ``auto_start`` as ``run_requests(self.auto_start_rounds(problem))``. ``sample``: a
        ``fastnewton.start.FitSample`` when the solve's strategy offers its start a sampled fit (a
        model may use it, e.g. ``fastnewton.start.log_linear_fit``, or ignore it)."""
        return self.auto_start(problem)
        yield  # a generator with no request

    def auto_solve(self, problem, build_system, options, timer=None, clock=None):
        """The solve from ``x0="auto"`` (``timer``, ``clock``: as for ``newton_solve``; the start is timed
        as the phase "start"): ``auto_solve_rounds`` with each Newton loop run at once."""
        return run_requests(self.auto_solve_rounds(problem, build_system, options, timer, clock))

    def auto_solve_rounds(self, problem, build_system, options, timer=None, clock=None):
        """The solve from ``x0="auto"`` as a generator: yields each Newton loop it needs as a
        ``NewtonRequest``, is sent its ``SolveResult``, returns the final one. By default one loop,
        from ``auto_start``; ``solve_many`` runs the loops of many problems in lock-step."""
        timer = timer if timer is not None else PhaseTimer()
        with timer("start"):
            # A sketched strategy offers a sampled fit (``fastnewton.hessian.SketchedSystems.start_sample``),
            # only to models with ``samples_start``: others keep the one-argument call.
            offer = getattr(build_system, "start_sample", None)
            sample = offer(problem, options) if offer is not None else None
            if sample is None:
                x0, description = yield from self.auto_start_rounds(problem)
            else:
                x0, description = yield from self.auto_start_rounds(problem, sample=sample)
        return (yield NewtonRequest(problem, x0, description, build_system, options, timer, clock))

    def solve_from_rounds(self, problem, x0, description, build_system, options, timer=None, clock=None):
        """The solve from a caller's start x0 (``"zeros"`` or an array, resolved by ``starting_point``; its
        ``description``), as a generator like ``auto_solve_rounds``. By default one Newton loop from x0; a
        model with stages of its own may run them from x0 (``softmax_relu``, when ``options.continuation``)."""
        return (yield NewtonRequest(problem, x0, description, build_system, options, timer, clock))


class ColumnCurvature:
    """β of a model whose columns Q hold it as β = Q[:, 2] − c·Q[:, 1] + w (``softmax``, ``relu_softmax``,
    ``softmax_relu``: ``kernels.softmax.curvature_weights``), with its sandwich and Hessian-vector pass formed
    without writing β where the matrix can (CSR)."""

    def curvature(self, block, kept, known):
        beta = block.buffers.empty(block.rows)
        curvature_weights(kept["Q"], known["c"], block.kernel_w, beta)
        return beta

    def curvature_sandwich(self, block, kept, known):
        """Cᵀ diag(β) C, β as ``curvature``'s, formed by the matrix (CSR: without writing β)."""
        return block.matrix.curvature_sandwich(kept["Q"], known["c"], block.kernel_w,
                                               block.buffers.empty(block.rows))

    def curvature_sandwich_vector(self, block, kept, known, v):
        """(Cᵀ(β ⊙ Cv), Cv), β as ``curvature``'s, each βᵢ formed as its row is read (CSR; None for dense C)."""
        product = getattr(block.matrix, "curvature_sandwich_vector", None)
        return None if product is None else product(kept["Q"], known["c"], block.kernel_w, v)


def _described(value):
    """A short description of what a model returned, for the messages below."""
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"{type(value).__name__} {value!r:.40}"


def model_label(model):
    """The name a model object goes by in messages (its ``name``, else its class's)."""
    return getattr(model, "name", None) or type(model).__name__


def checked_array(value, shape, model, what, finite=False):
    """value when it is a real floating array of this shape, else a TypeError / ValueError naming the model and
    what it returned. A model's outputs reach compiled kernels that read a row per row of C: a β or Q with too
    few rows would be read past its end (garbage, or a crash), an integer Q truncated, a complex one refused by
    Numba with a typing error that names neither.

    ``finite``: a NaN or ±inf entry is a ValueError too. For the model's curvature weights β and its S at a
    point whose loss and gradient are finite (``finite_point``: the solve goes on only from such a point): a
    non-finite entry there is the model's, and unchecked it made every damped system unusable ("no step
    decreases it", the model unnamed), or dropped its rows from a sketch's sample unannounced. (Not for a
    d × d sandwich: Cᵀ diag(β) C overflows on its own where C's entries do (|C_ij| ≳ 1e154), which the solve
    reports as NON_FINITE, the Hessian's, for every model: ``NewtonRun.no_step``.)"""
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise TypeError(f"model {model!r}: {what} must be a real floating NumPy array of shape {shape}, got "
                        f"{_described(value)}")
    if value.shape != shape:
        raise ValueError(f"model {model!r}: {what} must have shape {shape}, got {_described(value)}")
    if finite and not all_finite(value):
        at = np.argwhere(~np.isfinite(value))[0]
        where = f"index {int(at[0])}" if value.ndim == 1 else f"entry {tuple(int(i) for i in at)}"
        raise ValueError(f"model {model!r}: {what} must be finite where its loss and gradient are, got "
                         f"{value[tuple(at)]} at {where}")
    return value


def finite_point(known):
    """Whether the model's loss and gradient at a point (``known``, as its combine functions left them) are
    finite: a solve goes on only from such a point (else it ends NON_FINITE), and there the model's curvature
    (β and S) must be finite too. Problem's methods may be called at any x: elsewhere it is not checked."""
    return bool(np.isfinite(known["loss"])) and all_finite(known["gradient"])


def checked_evaluation(known, model, d, k):
    """(∇L, L, S) of a model's evaluation, as its stages' combine functions left them in ``known``, checked:
    the gradient a real array of length d, the loss a real number (``checked_loss``), S a real k × k array,
    finite at a ``finite_point`` (``checked_array``). ``fastnewton.Problem`` and the Dask driver read an
    evaluation this way."""
    grad = checked_array(known.get("gradient"), (d,), model, "its gradient")
    loss = checked_loss(known.get("loss"), model)
    return grad, loss, checked_array(known.get("S"), (k, k), model, "S (k × k)", finite=finite_point(known))


def checked_loss(value, model):
    """The model's loss as a float (a real number: a NaN or ±inf is the solve's to report), else a TypeError."""
    if isinstance(value, (float, np.floating)) or (isinstance(value, (int, np.integer))
                                                   and not isinstance(value, (bool, np.bool_))):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        return float(value)
    raise TypeError(f"model {model!r}: its loss must be a real number, got {_described(value)}")


@dataclass(frozen=True)
class _Entry:
    factory: Callable
    uses_values: bool
    distributions: bool = False


_REGISTRY = {}


# The package's own models (``fastnewton.models`` registers them): never replaced.
BUILT_IN = ("softmax", "relu_softmax", "softmax_relu")


def register_model(name, factory, uses_values=False, replace=False, distributions=False):
    """Make ``model=name`` available to ``solve``, ``Problem`` and ``fastnewton.dask.solve``.

    ``factory(target)`` returns the model object; ``target`` is the length-m b when ``uses_values``
    (the model then needs V, n × m), else None (b is per row and reaches the model through the blocks).
    A name already registered is a ValueError unless ``replace=True`` (a built-in model's name, always: a
    registration that silently took "softmax" would change every default ``solve``). ``distributions``: its
    outputs h(Cx) are probability vectors (≥ 0, sum 1), so a b that is not one gets ``solve``'s warning.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    uses_values, replace = as_flag(uses_values, "uses_values"), as_flag(replace, "replace")
    distributions = as_flag(distributions, "distributions")
    if name in _REGISTRY and (name in BUILT_IN or not replace):
        raise ValueError(f"model {name!r} is already registered"
                         + (" (a built-in model)" if name in BUILT_IN else "; pass replace=True to replace it"))
    _REGISTRY[name] = _Entry(factory, uses_values, distributions)


def model_names():
    return tuple(_REGISTRY)


def check_model(model):
    """The model name, or a ValueError listing the registered ones."""
    if not isinstance(model, str) or model not in _REGISTRY:
        raise ValueError(f"model must be one of {', '.join(repr(m) for m in _REGISTRY)}, got {model!r}")
    return model


def uses_values(model):
    return _REGISTRY[check_model(model)].uses_values


def outputs_distributions(model):
    """Whether the model's outputs h(Cx) are probability vectors (``register_model``'s ``distributions``)."""
    return _REGISTRY[check_model(model)].distributions


def build_model(model, target=None):
    """The model object for a registered name (``target``: the length-m b of a model with ``uses_values``); a
    TypeError naming it where its factory gives something without the interface's stages, curvature and k."""
    built = _REGISTRY[check_model(model)].factory(target)
    missing = [name for name in ("evaluation", "loss_stages", "curvature", "k") if not hasattr(built, name)]
    if missing:
        raise TypeError(f"model {model!r}: its factory returned {_described(built)}, without "
                        f"{', '.join(missing)} (see fastnewton.models.base.Model)")
    if isinstance(built.k, (bool, np.bool_)) or not isinstance(built.k, (int, np.integer)) or built.k < 1:
        raise TypeError(f"model {model!r}: k (the columns of U) must be an integer ≥ 1, got {built.k!r}")
    return built
