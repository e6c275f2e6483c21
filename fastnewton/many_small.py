"""Many independent small problems: the whole Newton loop runs in compiled code, in parallel across problems.

``solve_many([(C, b), (C, b, V), ...], model=..., **kw)`` (through ``fastnewton.solve_many``):

1. Each problem is validated as ``fastnewton.Problem`` validates it; a problem whose input is invalid gets the
   status ``INVALID_INPUT`` and Problem's reason in its message, and the others still solve. Plain problems
   (a float64 b, a C-contiguous float64 or canonical float64 CSR C, no V or row weights) are checked,
   described and priced in bulk, with no Problem each (``fastnewton.plain_problems``; their C's entries where
   the compiled solve first reads them), every other problem by building its ``Problem``. A problem whose
   Newton iteration does not fit in the memory available gets INVALID_INPUT with ``solve``'s MemoryError message
   (``_fit_errors``), before any solve allocates.
2. ``softmax`` and ``relu_softmax`` problems whose Hessian strategy is exact or lagged (``hessian="exact"`` /
   ``"lagged"``, or ``"auto"`` where ``solve``'s cost model picks them:
   exact at bench/many_small.py's sizes, n 64–512, d 32–64, dense and CSR, from any start, lagged at some larger
   ones, e.g. dense 2000 × 64, pcg at others, e.g. dense 10⁴ × 128; all problems priced in one call of that
   model's formula, ``hessian.many_strategy_seconds``) are solved, each C read where it lies (dense
   rows, or CSR for sparse C with few entries per row: ``DENSIFY_ROW_FRACTION``),
   by ``kernels/small_newton.py``: start and Newton loop compiled (lagged's CG steps too), one lane of problems
   per thread (each problem start to finish on one thread), so no Python runs per iteration and the thread
   count does not change the bits (relu_softmax's lagged CG steps hold its kink rows by projected CG, as
   ``solve``'s do).
   The starts' rare singular cases (a rank-deficient least-squares fit, and relu_softmax's margin
   LP in its null space) run ``Problem.auto_start`` in Python, one call per such problem.
3. ``softmax_relu`` problems with the exact Hessian run ``solve``'s own staged solve (``fastnewton.lifted_start``:
   simplex start, lifted surrogate with ridge continuation, branch probe, real loss, restarts), each problem's
   as a generator (``_solve_staged``): the stage logic runs in Python once per stage and problem, and the
   Newton loops that a round of stages asks for (one per problem) run together in one call of
   ``kernels/small_softmax_relu.py``, one loop per thread (no Python per iteration), and so do the start's
   simplex vectors (the dual Newton; the least-squares fit of log s stays in Python) and the figures between
   stages (λmax of the ridge continuation, the reachability test's losses). A loop that meets a non-finite
   value, and a simplex vector whose dual is singular or stops short of its tolerance, are run again in
   Python (``newton_solve``, ``simplex_vector``).
4. Every other problem — where ``"auto"`` picks a sketched Hessian — is solved by
   ``solve``'s own path
   (``fastnewton.solver.solve_problem``), one call per problem, on the Problem built and priced here (not
   validated or priced a second time).

Every problem gets the answer ``fastnewton.solve`` gives it (the same start, damping, line search,
stopping tests and statuses; tests/test_solve_many_small.py compares them problem by problem; softmax_relu's
up to the rounding of its small dense products, summed in loops where solve calls BLAS).
``hessian="sketch"`` / ``"pcg"`` are rejected: their random sketches belong to one solve each.
"""
import contextlib
import gc
import time
import warnings
from dataclasses import dataclass

import numba
import numpy as np

from . import hessian, newton
from .active_set import MAX_UPDATES
from .batch import BatchResult
from .hessian import STRATEGIES, PricedShapes, choose_strategies, default_thread_count, exact_system
from .kernels import small_newton as kernel
from .kernels import small_softmax_relu as relu_kernel
from . import lifted_start
from .lifted_start import POWER_ITERATIONS, EigenvalueRequest, LossesRequest, SimplexRequest
from .chunking import chunk_rows
from .models import LogPartition, build_model, check_model, uses_values
from .models.softmax import ACTIVE_RTOL, Softmax
from .models.softmax_relu import SoftmaxRelu
from .kinks import KINK_RTOL, RELU_INPUTS, kink_sentence, kink_stationary_text, kink_text
from .memory import check_hessian_fits, check_iteration_fits
from .newton import MAX_LOGIT_STEP, NewtonRequest, stall_detail, status_message, warn_max_iter
from .plain_problems import PlainProblems, index_arrays_read_in_place
from .problem import Problem
from .result import MESSAGES, ConvergenceWarning, SolveResult, Status, relative_gradient_norm
from .solver import (SUM_TOLERANCE, is_default_start, not_a_distribution, solve_options, solve_problem,
                     solve_rounds)
from .start import NULL_SPACE_RTOL, NormalSystemRequest
from .threads import single_threaded_blas, thread_limits
from .validation import (as_flag, as_l2, as_point, as_positive_float, as_positive_int, as_row_weights, as_seed,
                         as_thread_count)

_SOLVE_ONLY = ("callback", "verbose", "progress")
# The statuses by their codes (a dict look-up per problem read back, where calling the enum costs ~0.7 µs).
_STATUSES = {int(status): status for status in Status}
# A CSR problem with at least this fraction of d stored entries per row is packed as dense rows: its
# sandwich then runs as one BLAS product instead of nnzᵢ²/2 scattered pair updates per row. Measured
# with one thread, 300 softmax problems, n 64–512, d 32–64 (µs per problem, CSR / densified): 167 / 322
# at 4 entries per row, 242 / 310 at 8, 426 / 308 at 16; break-even near 0.2–0.25·d.
DENSIFY_ROW_FRACTION = 0.25


# The most iterations a compiled loop is told to run: a power of two (exact in the float64 ``settings``, and an
# int64 after ``int``), far beyond any loop's reach. solve takes any max_iter ≥ 0: int64's largest, 2**63 − 1, is
# 2**63 in float64, which overflowed int64 when the kernel read it back (the loop stopped at once, MAX_ITER).
COMPILED_MAX_ITER = 2**62


def _compiled_max_iter(max_iter):
    """max_iter as the compiled loops hold it: the same limit, clamped to ``COMPILED_MAX_ITER``."""
    return min(max_iter, COMPILED_MAX_ITER)


def _settings(tol, max_iter):
    """The compiled loop's constants, from fastnewton.newton (their one home) and the start's modules."""
    settings = np.empty(kernel.SETTINGS_FIELDS)
    values = {
        kernel.S_TOL: tol, kernel.S_MAX_ITER: _compiled_max_iter(max_iter), kernel.S_ARMIJO_C1: newton.ARMIJO_C1,
        kernel.S_BACKTRACK_FACTOR: newton.BACKTRACK_FACTOR, kernel.S_MAX_BACKTRACKS: newton.MAX_BACKTRACKS,
        kernel.S_MAX_DAMPING_TRIES: newton.MAX_DAMPING_TRIES, kernel.S_MAX_LOGIT_STEP: newton.MAX_LOGIT_STEP, kernel.S_REFRESH_EVERY: newton.REFRESH_EVERY,
        kernel.S_MAX_CARRIED_PATH: newton.MAX_CARRIED_PATH, kernel.S_ROUNDING_FACTOR: newton.ROUNDING_FACTOR,
        kernel.S_STALL_WINDOW: newton.STALL_WINDOW, kernel.S_GRADIENT_PROGRESS: newton.GRADIENT_PROGRESS,
        kernel.S_KINK_RTOL: KINK_RTOL, kernel.S_NULL_SPACE_RTOL: NULL_SPACE_RTOL,
        kernel.S_ACTIVE_RTOL: ACTIVE_RTOL, kernel.S_LAGGED_SHIFT_RATIO: hessian.LAGGED_SHIFT_RATIO,
        kernel.S_MAX_PRECONDITIONER_SHIFTS: hessian.MAX_PRECONDITIONER_SHIFTS,
        kernel.S_MAX_CG_ITERATIONS: hessian.MAX_CG_ITERATIONS, kernel.S_MAX_FORCING: hessian.MAX_FORCING,
        kernel.S_OVERSOLVE_MARGIN: hessian.OVERSOLVE_MARGIN,
    }
    assert len(values) == kernel.SETTINGS_FIELDS
    for index, value in values.items():
        settings[index] = value
    return settings


@contextlib.contextmanager
def _collection_paused():
    """Python's cyclic garbage collector off for the block, then back to its previous state (also on an
    exception). Building, packing and reading back 1000 small problems allocates some 10⁵ objects, enough
    to set off collections, among them full ones that walk every live object (one of 57 ms measured on
    1000 dense problems, against ~0.35 s for the whole call); the objects made here are freed by reference
    counting, and the block runs no user code that could pile up cyclic garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _per_problem(value, count, name):
    """A keyword given once for all problems, or a list/tuple with one entry per problem."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} given per problem must have one entry per problem ({count}), got {len(value)}")
        return list(value)
    return [value] * count


def _check_given_once(row_weights, x0):
    """The checks of a ``row_weights`` or ``x0`` given once for all problems that do not depend on a problem's
    shape (x0's name, dtype, dimensions, finite, weights ≥ 0), made once with ``solve``'s error: a value that no
    problem can take is the call's error, not every problem's (its length is each problem's own check)."""
    if row_weights is not None and not isinstance(row_weights, (list, tuple)):
        as_row_weights(row_weights, np.shape(row_weights)[0] if np.ndim(row_weights) else 1)
    if isinstance(x0, str) and x0 not in ("auto", "zeros"):
        raise ValueError(f"x0 must be 'auto', 'zeros', or a list of one length-d array per problem, got {x0!r}")
    if x0 is None:
        raise TypeError("x0 must be 'auto', 'zeros', a length-d array for every problem, or a list of one per problem, "
                        "got None")
    if not isinstance(x0, (str, list, tuple)):
        as_point(x0, "x0", np.shape(x0)[0] if np.ndim(x0) else 1)


def _unpack(item, index):
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise TypeError(f"problems[{index}] must be a (C, b) or (C, b, V) tuple, got "
                        f"{type(item).__name__}{f' of length {len(item)}' if isinstance(item, (tuple, list)) else ''}")
    return (*item, None) if len(item) == 2 else tuple(item)


def _start_kind(relu, facts, x0, d):
    """(start code of kernels/small_newton.py, the start x or None, the relu floor f) of a problem of d columns
    whose model is relu_softmax (``relu``) or softmax and whose targets have these ``facts`` (``Softmax.facts``)."""
    if isinstance(x0, str):
        if x0 == "zeros":
            return kernel.START_ZEROS, None, 0.0
        if x0 != "auto":
            raise ValueError(f"x0 must be 'auto', 'zeros', or one length-d array per problem, got {x0!r}")
        # Softmax.auto_start's cases, decided here; the fits themselves are compiled.
        if not facts["max_b"] > 0.0:
            return kernel.START_ZEROS, None, 0.0
        if relu:
            floor = facts["floor"]
            if not facts["max_b"] > floor * (1.0 + ACTIVE_RTOL):
                return kernel.START_ZEROS, None, 0.0
            return kernel.START_ACTIVE_FIT, None, floor
        return kernel.START_LOG_FIT, None, 0.0
    return kernel.START_GIVEN, as_point(x0, "x0", d).copy(), 0.0


def compiled_lagged_steps(strategy):
    """The compiled loop's ``lagged_steps`` for a softmax or relu_softmax problem whose Hessian strategy is
    ``strategy``: 0 for exact, LAGGED_STEPS for lagged; None where ``solve``'s own loop runs it (the sketched
    strategies)."""
    if strategy == "exact":
        return 0
    if strategy == "lagged":
        return hessian.LAGGED_STEPS
    return None


def _read_as_csr(csr, nnz, n, d):
    """Whether the compiled solve reads a C (CSR when ``csr``, of nnz stored entries, n × d) as CSR rather than as
    dense rows (``DENSIFY_ROW_FRACTION``); element-wise on arrays."""
    return csr & (nnz < DENSIFY_ROW_FRACTION * d * n)


def _matrix_addresses(matrices):
    """(which are read as CSR, their arrays' addresses in the ``A_*`` columns of kernels/small_newton.py, the size of
    their index arrays' entries (4 or 8), the arrays those point into, to be kept alive and unchanged while the
    addresses are used): each C read in place (a float64 copy only where the matrix holds other values, an int64
    copy of index arrays that are neither int32 nor int64 or not contiguous, dense rows for a CSR matrix with at
    least ``DENSIFY_ROW_FRACTION``·d entries per row)."""
    csr = [_read_as_csr(matrix.format == "csr", matrix.nnz, matrix.n, matrix.d) for matrix in matrices]
    held = []
    addresses = np.zeros((len(matrices), kernel.ADDRESS_FIELDS), dtype=np.int64)
    index_bytes = np.full(len(matrices), 8, dtype=np.int64)
    values = []
    for p, (matrix, sparse) in enumerate(zip(matrices, csr)):
        if sparse:
            array = np.ascontiguousarray(matrix.data, dtype=np.float64)
            indptr, indices = _index_arrays(matrix.indptr, matrix.indices)
            held += [indptr, indices]
            addresses[p, kernel.A_INDPTR], addresses[p, kernel.A_INDICES] = indptr.ctypes.data, indices.ctypes.data
            index_bytes[p] = indptr.itemsize
        else:
            dense = matrix.array if matrix.format == "dense" else matrix.rows(np.arange(matrix.n))
            array = np.ascontiguousarray(dense, dtype=np.float64)
        values.append(array.ctypes.data)
        held.append(array)
    addresses[:, kernel.A_VALUES] = values
    return csr, addresses, index_bytes, held


def _index_arrays(indptr, indices):
    """A CSR C's indptr and indices as the compiled solve reads them in place: both int32 or both int64, contiguous
    (as they are, else int64 copies)."""
    if index_arrays_read_in_place(indptr, indices):
        return indptr, indices
    return np.ascontiguousarray(indptr, dtype=np.int64), np.ascontiguousarray(indices, dtype=np.int64)


@dataclass
class _Columns:
    """What the compiled solve reads of some problems, one entry per problem (``_Packed`` joins such parts): shapes
    ``n`` and ``d``, whether C is read as ``csr``, its index arrays' ``index_bytes`` (4 or 8), rows per ``chunk``
    (``chunk_rows(n)``), whether the model is ``relu``_softmax, the ridge ``l2``, ``target_norm``
    (``Softmax.target_norm``), the ``starts`` (``_start_kind``'s triples), the ``lagged`` steps of each
    (``compiled_lagged_steps``), the targets ``b`` and row weights ``w`` side by side, C's ``addresses`` (the ``A_*``
    columns) and the arrays they point into (``held``: kept alive, unchanged, as long as the pack)."""

    n: np.ndarray
    d: np.ndarray
    csr: object
    index_bytes: object
    chunk: object
    relu: object
    l2: object
    target_norm: object
    starts: list
    lagged: list
    b: np.ndarray
    w: np.ndarray
    addresses: np.ndarray
    held: list


def _problem_columns(problems, starts, lagged):
    """The ``_Columns`` of built ``Problem``s, with their starts (``_start_kind``) and ``lagged`` steps."""
    count = len(problems)
    matrices = [problem.matrix for problem in problems]
    csr, addresses, index_bytes, held = _matrix_addresses(matrices)
    return _Columns(n=np.fromiter((matrix.n for matrix in matrices), np.int64, count),
                    d=np.fromiter((matrix.d for matrix in matrices), np.int64, count), csr=csr, index_bytes=index_bytes,
                    chunk=[problem.block.chunk for problem in problems],
                    relu=[problem.row_model.relu for problem in problems], l2=[problem.l2 for problem in problems],
                    target_norm=[problem.target_norm() for problem in problems], starts=starts, lagged=lagged,
                    b=np.concatenate([problem.b for problem in problems]).astype(np.float64, copy=False),
                    w=np.concatenate([problem.row_weights for problem in problems]).astype(np.float64, copy=False),
                    addresses=addresses, held=held)


def _plain_columns(plain, chosen, starts, lagged, row_model, l2):
    """The ``_Columns`` of the plain problems at positions ``chosen`` of ``plain`` (``PlainProblems``; each C read in
    place, dense rows formed only for a CSR C read as such), with their starts and ``lagged`` steps; one model object
    ``row_model`` and ridge ``l2`` for all (no row weights: w = 0)."""
    count = len(chosen)
    n, d = plain.n[chosen], plain.d[chosen]
    csr = _read_as_csr(plain.csr[chosen], plain.nnz[chosen], n, d)
    addresses = np.zeros((count, kernel.ADDRESS_FIELDS), dtype=np.int64)
    addresses[:, kernel.A_VALUES] = plain.values_at[chosen]
    addresses[csr, kernel.A_INDPTR] = plain.indptr_at[chosen][csr]
    addresses[csr, kernel.A_INDICES] = plain.indices_at[chosen][csr]
    held = []
    for position in np.flatnonzero(plain.csr[chosen] & ~csr).tolist():
        rows = plain.dense_rows(chosen[position])
        held.append(rows)
        addresses[position, kernel.A_VALUES] = rows.ctypes.data
    if count == len(plain):
        b = plain.b
    else:
        picked = np.zeros(len(plain), dtype=np.bool_)
        picked[chosen] = True
        b = plain.b[np.repeat(picked, plain.n)]
    return _Columns(n=n, d=d, csr=csr, index_bytes=plain.index_bytes[chosen],
                    chunk=[chunk_rows(rows) for rows in n.tolist()], relu=row_model.relu, l2=l2,
                    target_norm=[row_model.target_norm(plain.facts[k]) for k in chosen], starts=starts, lagged=lagged,
                    b=b, w=np.zeros(b.shape[0]), addresses=addresses, held=held)


class _Packed:
    """The compiled problems' data in the layout of kernels/small_newton.py: each C read in place
    (its address; a float64 / int64 copy only where the problem holds another dtype, or a CSR
    problem is run as dense rows), b, w and x packed (vectors of length n or d: small). ``parts``:
    ``_Columns``, the pack's problems in their order."""

    def __init__(self, parts):
        def joined(name, dtype):
            return np.concatenate([np.broadcast_to(np.asarray(getattr(part, name), dtype=dtype), part.n.shape)
                                   for part in parts])

        n, d = joined("n", np.int64), joined("d", np.int64)
        count = n.shape[0]
        self.addresses = np.concatenate([part.addresses for part in parts])
        # The arrays ``addresses`` points into: kept alive (and unchanged) as long as this pack.
        self._held = [array for part in parts for array in part.held]
        starts = [start for part in parts for start in part.starts]
        # Built a column at a time (per-problem NumPy item assignments cost ~10 µs each).
        self.layout = layout = np.empty((count, kernel.LAYOUT_FIELDS), dtype=np.int64)
        layout[:, kernel.L_N] = n
        layout[:, kernel.L_D] = d
        layout[:, kernel.L_CSR] = joined("csr", np.int64)
        layout[:, kernel.L_INDEX_BYTES] = joined("index_bytes", np.int64)
        layout[:, kernel.L_CHUNK] = joined("chunk", np.int64)
        layout[:, kernel.L_START] = [start for start, _, _ in starts]
        layout[:, kernel.L_RELU] = joined("relu", np.int64)
        layout[:, kernel.L_LAGGED] = joined("lagged", np.int64)
        layout[:, kernel.L_ROW] = np.cumsum(n) - n
        layout[:, kernel.L_COL] = np.cumsum(d) - d
        self.parameters = np.empty((count, kernel.PARAMETER_FIELDS))
        self.parameters[:, kernel.P_L2] = joined("l2", np.float64)
        self.parameters[:, kernel.P_TARGET_NORM] = joined("target_norm", np.float64)
        self.parameters[:, kernel.P_FLOOR] = [floor for _, _, floor in starts]
        self.b = parts[0].b if len(parts) == 1 else np.concatenate([part.b for part in parts])
        self.w = parts[0].w if len(parts) == 1 else np.concatenate([part.w for part in parts])
        self.x = np.zeros(int(d.sum()))
        for p, (_, x0, _) in enumerate(starts):
            if x0 is not None:
                self.x[self.columns(p)] = x0
        self.grad = np.zeros_like(self.x)
        self.fault_grad = np.zeros_like(self.x)
        self.out_int = np.zeros((count, kernel.OUT_INT_FIELDS), dtype=np.int64)
        self.out_float = np.zeros((count, kernel.OUT_FLOAT_FIELDS))

    @classmethod
    def of_problems(cls, problems, starts, lagged=None):
        """The pack of built ``Problem``s, with their starts (``_start_kind``) and lagged steps (default 0: exact)."""
        return cls([_problem_columns(problems, starts, [0] * len(problems) if lagged is None else lagged)])

    def columns(self, p):
        start = self.layout[p, kernel.L_COL]
        return slice(start, start + self.layout[p, kernel.L_D])

    def run(self, selected, settings):
        """Solve the problems ``selected`` (positions in this pack), the costliest first."""
        n, d = self.layout[selected, kernel.L_N], self.layout[selected, kernel.L_D]
        # A problem's cost estimated by its sandwich's n·d² multiply-adds.
        by_cost, lanes = _hand_out(n * d * d)
        kernel.solve_small_problems(np.asarray(selected, dtype=np.int64)[by_cost], lanes, self.layout,
                                    self.addresses, self.parameters, settings, self.b, self.w, self.x, self.grad,
                                    self.fault_grad, self.out_int, self.out_float)


def _hand_out(costs):
    """(the positions of ``costs`` costliest first, the lanes): how a compiled batch's items go to its threads.

    One lane per thread, each taking the next item, costliest first, as it finishes one (``kernels/atomic.py
    next_taken``): greedy list scheduling on the real costs (LPT when the estimates are right). Measured (1000
    dense problems, 2 threads): the costs dealt out beforehand to 2 fixed lanes (LPT) 117 ms, alternating 120 ms,
    the costlier half to one lane 160 ms, which is what numba.parallel_chunksize(1) over the costliest-first order
    took (OpenMP's static hand-out); two processes solving half each 117 ms. Fixed lanes wait for their slowest:
    with another process on one core (this machine's 2 cores shared), 403 ms fixed against 338 ms taken from the
    counter (best of 6, same run). (Which thread takes an item never changes its bits: each is run start to
    finish by one thread.)"""
    order = np.argsort(-np.asarray(costs, dtype=np.float64), kind="stable").astype(np.int64)
    return order, max(1, min(numba.get_num_threads(), order.shape[0]))


def _compiled_message(row_model, facts, pack, p, status, out_int, out_float):
    """(status, message) of compiled problem p (its model object, its targets' facts, its rows of the pack's
    ``out_int`` and ``out_float`` as Python numbers), with newton.py's sentences and the model's diagnosis."""
    loss, grad_norm, g_ref = out_float[kernel.O_LOSS], out_float[kernel.O_GRAD_NORM], out_float[kernel.O_G_REF]
    detail = ""
    if status == Status.CONVERGED:
        count = out_int[kernel.O_KINK_COUNT]
        if count:  # a kink stationary point (kernels/kinks.py), as NewtonRun.stationary_at_kink says it
            detail = kink_stationary_text(int(count))
        dead = row_model.diagnose({"log_partition": LogPartition(out_float[kernel.O_TOP], 1.0)}, loss, facts,
                                  lambda: out_float[kernel.O_LOSS_AT_ZERO])
        if dead:
            status, detail = Status.DEAD_STATIONARY, dead
        elif out_float[kernel.O_ROUNDING_BOUND] > 0.0:
            detail = newton.rounding_converged_detail(out_float[kernel.O_ROUNDING_BOUND])
    elif status == Status.STALLED:
        count = out_int[kernel.O_KINK_COUNT]
        if count == kernel.NO_STEP:
            detail = newton.NO_STEP_DETAIL
        else:
            kink = (kink_text(RELU_INPUTS, int(count), int(out_int[kernel.O_KINK_INDEX]), True)
                    if count else None)
            detail = newton.stall_detail(kink, loss, grad_norm, g_ref)
    elif status == Status.NON_FINITE:
        where = out_int[kernel.O_FAULT_WHERE]
        fault = pack.fault_grad[pack.columns(p)]
        fault_loss = out_float[kernel.O_FAULT_LOSS]
        place = {kernel.FAULT_AT_START: "at the starting point",
                 kernel.FAULT_AT_ZERO: "at x = 0 (the reference gradient g_ref)"}.get(where, f"at iteration {where}")
        with np.errstate(over="ignore", invalid="ignore"):
            fault_norm = float(np.sqrt(fault @ fault)) if np.all(np.isfinite(fault)) else np.inf
        # a finite L and ∇L there: the loop stopped at a Hessian that was not (``newton_loop``, NewtonRun.no_step)
        detail = (newton.non_finite_detail(fault_loss, fault, fault_norm, place)
                  or newton.non_finite_hessian_detail(place))
    return status, newton.status_message(status, detail)


def solve_problems(problems, model="softmax", *, l2=0.0, row_weights=None, x0="auto", hessian="auto", eps=0.5,
                   sketch_size=None, tol=1e-8, max_iter=100, seed=None, n_threads=None, continuation=True, **solve_only):
    """``solve_many`` for a list or tuple of independent ``(C, b)`` / ``(C, b, V)`` problems (``fastnewton.batch``
    dispatches here, an iterator already listed; see the module docstring).

    ``row_weights`` and ``x0`` may be given once for all problems or as a list with one entry per
    problem (``x0``: "auto", "zeros", or the problems' length-dᵢ arrays); given once, what does not depend on a
    problem's shape is checked once (``_check_given_once``).
    """
    clock = time.perf_counter()
    for name in _SOLVE_ONLY:
        if name in solve_only and solve_only.pop(name) not in (None, False):
            raise TypeError(f"solve_many(problems) does not take {name} (the loop runs in compiled code): "
                            f"call fastnewton.solve per problem for it")
    if solve_only:
        raise TypeError(f"solve_many got unexpected keyword argument(s) {', '.join(sorted(solve_only))}")
    if len(problems) == 0:
        raise ValueError("problems is empty: give at least one (C, b) / (C, b, V) tuple")
    model = check_model(model)
    if not isinstance(hessian, str):
        raise TypeError(f"hessian must be a string, got {type(hessian).__name__}")
    if hessian not in STRATEGIES:
        raise ValueError(f"hessian must be one of {', '.join(repr(s) for s in STRATEGIES)}, got {hessian!r}")
    if hessian in ("sketch", "pcg"):
        raise ValueError(f"solve_many(problems) runs the exact or lagged Hessian (hessian='exact', 'lagged' or "
                         f"'auto'), got {hessian!r}: a sketched Hessian pays for large problems only; call "
                         f"fastnewton.solve per problem for it")
    tol = as_positive_float(tol, "tol")
    max_iter = as_positive_int(max_iter, "max_iter", minimum=0)
    eps = as_positive_float(eps, "eps", upper=1.0)
    sketch_size = as_positive_int(sketch_size, "sketch_size", allow_none=True)
    seed = as_seed(seed)
    n_threads = as_thread_count(n_threads)
    continuation = as_flag(continuation, "continuation")
    l2 = as_l2(l2)
    count = len(problems)
    items = [_unpack(item, i) for i, item in enumerate(problems)]
    weights_each = _per_problem(row_weights, count, "row_weights")
    _check_given_once(row_weights, x0)
    x0_each = [x0] * count if isinstance(x0, str) else _per_problem(x0, count, "x0")

    results = [None] * count  # per problem: (x, status, n_iter, loss, grad_norm, g_ref, message)
    with _collection_paused():
        max_iter_hit, by_solve = _solve_compiled(items, model, l2, weights_each, x0_each, hessian, eps, sketch_size,
                                                 tol, max_iter, seed, n_threads, continuation, results)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # one warning for the batch, below
        for k, (i, problem, strategy, threads) in enumerate(by_solve):
            # The Problem built (validated) and priced above: solve's loop without doing either again. Let go
            # of it once solved (its work arrays are a few n-vectors: not thousands of problems' at once).
            by_solve[k] = None
            try:
                res = solve_problem(problem, x0=x0_each[i], hessian=strategy, eps=eps, sketch_size=sketch_size,
                                    tol=tol, max_iter=max_iter, seed=seed, n_threads=threads,
                                    continuation=continuation)
            except MemoryError as error:  # its own work arrays did not fit: its status, not the batch's end
                results[i] = _invalid(items[i][0], i, error)
                continue
            finally:
                del problem
            results[i] = (res.x, Status(res.status), res.n_iter, res.loss, res.grad_norm, res.g_ref, res.message)
            if res.status == Status.MAX_ITER:
                max_iter_hit.append(i)
    if max_iter_hit:
        warnings.warn(f"fastnewton.solve_many: {len(max_iter_hit)} of {count} problems stopped at max_iter = "
                      f"{max_iter} before reaching tol = {tol:g} (e.g. problem {min(max_iter_hit)})",
                      ConvergenceWarning, stacklevel=3)
    return _batch_result(results, clock)


def _solve_compiled(items, model, l2, weights_each, x0_each, hessian, eps, sketch_size, tol, max_iter, seed, n_threads,
                    continuation, results):
    """Validate every problem, solve the compiled ones and write their entries of ``results``:
    (the indices of compiled problems that stopped at max_iter, (index, Problem, strategy, n_threads) of those
    left to ``solve``'s loop, in input order).

    The plain problems (``fastnewton.plain_problems``) are checked, described and priced in bulk, a ``Problem``
    built only for one that needs it; every other problem is a ``Problem`` (its checks; its error, the message)."""
    # The softmax models hold no state: one object for every plain problem (a model with V holds its targets).
    shared_model = None if uses_values(model) else build_model(model)
    plain = PlainProblems.of(items, weights_each) if isinstance(shared_model, Softmax) else None
    in_plain = np.zeros(len(items), dtype=np.bool_)
    if plain is not None:
        in_plain[plain.index] = True
    valid, valid_index = [], []
    for i in np.flatnonzero(~in_plain).tolist():
        C, b, V = items[i]
        try:
            valid.append(Problem(C, b, model=model, V=V, l2=l2, row_weights=weights_each[i]))
            valid_index.append(i)
        except (TypeError, ValueError) as error:
            results[i] = _invalid(C, i, error)
    fit_errors = _fit_errors([problem.n for problem in valid], [problem.d for problem in valid],
                             [problem.row_model.k for problem in valid])
    for i, error in zip(valid_index, fit_errors):
        if error is not None:
            results[i] = _invalid(items[i][0], i, error)
    valid = [problem for problem, error in zip(valid, fit_errors) if error is None]
    valid_index = [i for i, error in zip(valid_index, fit_errors) if error is None]
    default_start = [is_default_start(x0) for x0 in x0_each]

    def strategies(indices, shapes):
        """auto's choice for all these problems at once: solve's formula (``many_strategy_seconds``), element-wise."""
        if hessian != "auto" or not indices:
            return [hessian] * len(indices)
        return choose_strategies(shapes(), eps, sketch_size, [default_start[i] for i in indices])

    def checked_start(i, d):
        """Problem i's x0 checked now (a ValueError names it: its status, not the batch's), where the compiled
        start does not check it (``_start_kind``): for the problems left to solve's loop and the staged ones."""
        if not isinstance(x0_each[i], str):
            as_point(x0_each[i], "x0", d)

    def left_to_solve(i, problem, strategy):
        checked_start(i, problem.d)
        # solve's own threads rule: a small problem on one thread, whatever the batch's n_threads
        # (one thread per such problem ran the 40 softmax_relu problems of bench/many_small.py, when
        # they went this way, in 0.64 s, two in 2.35 s)
        by_solve.append((i, problem, strategy, 1 if default_thread_count(problem, None) == 1 else n_threads))

    # The pack's parts (``_Columns``), and per compiled problem its input index, model object and targets' facts,
    # and its Problem or its position among the plain problems (whose Problem is built if it must be).
    parts, compiled_index, compiled_models, compiled_facts, owners = [], [], [], [], []
    by_solve, staged = [], []
    if plain is not None:
        plain_index, plain_d = plain.index.tolist(), plain.d.tolist()
        plain_strategies = strategies(plain_index, lambda: plain.shapes(model, l2, shared_model))
        plain_steps = [compiled_lagged_steps(strategy) for strategy in plain_strategies]
        compiled_plain = np.array([steps is not None for steps in plain_steps], dtype=np.bool_)
        # A plain C's entries are checked where the compiled solve reads them in place; a CSR C that it reads as
        # dense rows (formed here) or that is left to solve's loop has its entries checked now.
        entries_valid = np.ones(len(plain), dtype=np.bool_)
        unread = np.flatnonzero(plain.csr & ~(compiled_plain & _read_as_csr(plain.csr, plain.nnz, plain.n, plain.d)))
        if unread.size:
            entries_valid[unread] = plain.entries_valid(unread)
        fit_errors = _fit_errors(plain.n.tolist(), plain_d, [shared_model.k] * len(plain))
        chosen, starts, chosen_steps = [], [], []
        for k, (i, strategy, valid_entries) in enumerate(zip(plain_index, plain_strategies, entries_valid.tolist())):
            try:
                if not valid_entries:
                    results[i] = _invalid_as_problem(items[i], i, model, l2, weights_each[i])
                elif fit_errors[k] is not None:
                    results[i] = _invalid(items[i][0], i, fit_errors[k])
                elif plain_steps[k] is not None:
                    starts.append(_start_kind(shared_model.relu, plain.facts[k], x0_each[i], plain_d[k]))
                    chosen.append(k)
                    chosen_steps.append(plain_steps[k])
                # A dense C left to solve's loop: its entries checked here.
                elif not plain.csr[k] and not np.all(np.isfinite(plain.entries(k))):
                    results[i] = _invalid_as_problem(items[i], i, model, l2, weights_each[i])
                else:
                    left_to_solve(i, plain.problem(k, model, l2, shared_model), strategy)
            except (TypeError, ValueError) as error:
                results[i] = _invalid(items[i][0], i, error)
        if chosen:
            parts.append(_plain_columns(plain, np.array(chosen, dtype=np.int64), starts, chosen_steps, shared_model,
                                        l2))
            compiled_index += [plain_index[k] for k in chosen]
            compiled_models += [shared_model] * len(chosen)
            compiled_facts += [plain.facts[k] for k in chosen]
            owners += chosen
    compiled, starts, compiled_steps = [], [], []
    for problem, i, strategy in zip(valid, valid_index, strategies(valid_index,
                                                                   lambda: PricedShapes.of_problems(valid))):
        try:
            softmax = isinstance(problem.row_model, Softmax)
            steps = compiled_lagged_steps(strategy) if softmax else None
            if steps is not None:
                starts.append(_start_kind(problem.row_model.relu, problem.facts, x0_each[i], problem.d))
                compiled.append(problem)
                compiled_index.append(i)
                compiled_steps.append(steps)
            elif isinstance(problem.row_model, SoftmaxRelu) and strategy == "exact":
                checked_start(i, problem.d)
                staged.append((i, problem))
            else:
                left_to_solve(i, problem, strategy)
        except (TypeError, ValueError) as error:
            results[i] = _invalid(items[i][0], i, error)
    if compiled:
        parts.append(_problem_columns(compiled, starts, compiled_steps))
        compiled_models += [problem.row_model for problem in compiled]
        compiled_facts += [problem.facts for problem in compiled]
        owners += compiled
    # Solved in input order (a seed given as a Generator is drawn from by each solve in turn).
    by_solve.sort(key=lambda entry: entry[0])

    max_iter_hit = []
    if staged:
        _solve_staged(staged, x0_each, eps, sketch_size, tol, max_iter, seed, n_threads, continuation, results,
                      max_iter_hit)
    if parts:
        pack = _Packed(parts)
        settings = _settings(tol, max_iter)
        # Overflowing scales end in Status.NON_FINITE with its message, as in solve (no NumPy warnings).
        with thread_limits(n_threads), np.errstate(over="ignore", invalid="ignore"):
            pack.run(np.arange(len(owners)), settings)
            invalid = np.flatnonzero(pack.out_int[:, kernel.O_STATUS] == kernel.C_INVALID).tolist()
            for p in invalid:
                i = compiled_index[p]
                results[i] = _invalid_as_problem(items[i], i, model, l2, weights_each[i])
            failed = np.flatnonzero(pack.out_int[:, kernel.O_STATUS] == kernel.START_FAILED)
            for p in failed:
                # The fit was singular: its null-space step (and relu_softmax's LP) in Python.
                owner = owners[p]
                problem = owner if isinstance(owner, Problem) else plain.problem(owner, model, l2, shared_model)
                x_start, _ = problem.auto_start()
                pack.x[pack.columns(p)] = x_start
                pack.layout[p, kernel.L_START] = kernel.START_GIVEN
            if failed.size:
                pack.run(failed, settings)
        # Read back in bulk (per-problem NumPy indexing costs ~1 µs a value; np.split ~3 µs a piece): the x's
        # are views of one copy of the packed x (not of the pack's array), the outputs Python numbers.
        x = pack.x.copy()
        xs = [x[start:start + d] for start, d in pack.layout[:, [kernel.L_COL, kernel.L_D]].tolist()]
        out_ints, out_floats = pack.out_int.tolist(), pack.out_float.tolist()
        _warn_if_not_distributions(pack, compiled_index, model, set(invalid))
        for p, (i, row_model, facts) in enumerate(zip(compiled_index, compiled_models, compiled_facts)):
            out_int, out_float = out_ints[p], out_floats[p]
            code = out_int[kernel.O_STATUS]
            if code == kernel.C_INVALID:
                continue
            status, message = _compiled_message(row_model, facts, pack, p, _STATUSES[code], out_int, out_float)
            results[i] = (xs[p], status, out_int[kernel.O_N_ITER], out_float[kernel.O_LOSS],
                          out_float[kernel.O_GRAD_NORM], out_float[kernel.O_G_REF], message)
            if status == Status.MAX_ITER:
                max_iter_hit.append(i)
    return max_iter_hit, by_solve


def _solve_staged(staged, x0_each, eps, sketch_size, tol, max_iter, seed, n_threads, continuation, results,
                  max_iter_hit):
    """The ``softmax_relu`` problems (index, Problem) with the exact Hessian: each runs ``solve``'s own staged
    solve (``fastnewton.solver.solve_rounds``: the simplex start, the lifted surrogate's ridge stages, branch
    probe, real loss, restarts; ``fastnewton.lifted_start``) as a generator, all of them side by side; the
    Newton loops they ask for in a round (one per problem) run together in one call of
    ``kernels/small_softmax_relu.py`` (``_run_loops``), the rest of each stage in Python. Writes their entries
    of ``results``."""
    rounds, pending = {}, {}
    # BLAS held on one thread for the whole staged solve: the thread_limits of each round below then only set
    # Numba's threads (a first BLAS limit through threadpoolctl costs ~0.1 ms, two a round).
    with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"), single_threaded_blas():
        warnings.simplefilter("ignore", ConvergenceWarning)  # one warning for the batch (solve_problems)
        # The stages' own work (starts, power iterations, misfits) runs one problem at a time on one thread, as
        # ``solve`` runs a problem this small; the Newton loops on the batch's threads, one problem per thread.
        with thread_limits(1):
            for i, problem in staged:
                build_system, options = solve_options(problem, "exact", eps, sketch_size, tol, max_iter, seed, None,
                                                      False, default_start=is_default_start(x0_each[i]),
                                                      continuation=continuation)
                rounds[i] = solve_rounds(problem, x0_each[i], build_system, options)
                _advance(i, rounds, pending, None, results, max_iter_hit)
        settings = _settings(tol, max_iter)
        book = _MatrixBook()
        while pending:
            batch = list(pending.items())
            pending.clear()
            with thread_limits(n_threads):
                answers = _answer_round([request for _, request in batch], settings, book)
            with thread_limits(1):
                for (i, request), answer in zip(batch, answers):
                    _advance(i, rounds, pending, request.run() if answer is None else answer, results, max_iter_hit)


def _answer_round(requests, settings, book):
    """The answers to a round of the staged solves' requests, each kind in one kernel call: Newton loops
    (``_run_loops``; None for one to run in Python), the starts' simplex vectors (``_simplex_vectors``; None
    likewise), λmax and the reachability test's losses (``_stage_figures``); their C's addresses from ``book``."""
    answers = [None] * len(requests)
    loops = [k for k, request in enumerate(requests) if isinstance(request, NewtonRequest)]
    for k, answer in zip(loops, _run_loops([requests[k] for k in loops], settings, book) if loops else []):
        answers[k] = answer
    eigenvalues = [k for k, request in enumerate(requests) if isinstance(request, EigenvalueRequest)]
    if eigenvalues:
        for k, value in zip(eigenvalues, _stage_figures([(requests[k].problem, requests[k].x) for k in eigenvalues],
                                                        True, book)):
            answers[k] = value
    simplex = [k for k, request in enumerate(requests) if isinstance(request, SimplexRequest)]
    if simplex:
        for k, vector in zip(simplex, _simplex_vectors([requests[k].problem for k in simplex], book)):
            answers[k] = vector
    losses = [k for k, request in enumerate(requests) if isinstance(request, LossesRequest)]
    if losses:
        values = _stage_figures([point for k in losses for point in requests[k].points], False, book)
        at = 0
        for k in losses:
            answers[k] = values[at:at + len(requests[k].points)]
            at += len(requests[k].points)
    return answers


def _advance(i, rounds, pending, answer, results, max_iter_hit):
    """Run problem i's staged solve on to its next Newton loop that the compiled kernel runs (into ``pending``),
    answering every other request (a start's least-squares fit, a loop the kernel does not run) at once; at its
    end, its entry of ``results``."""
    generator = rounds[i]
    try:
        request = next(generator) if answer is None else generator.send(answer)
        while not _compiles(request):
            # The start's fit without ∇L(0) beside it: the compiled loops form their own (~150 µs a problem).
            request = generator.send(request.run(gradient_at_zero=False) if isinstance(request, NormalSystemRequest)
                                     else request.run())
        pending[i] = request
    except StopIteration as stop:
        res = stop.value
        del rounds[i]
        results[i] = (res.x, Status(res.status), res.n_iter, res.loss, res.grad_norm, res.g_ref, res.message)
        if res.status == Status.MAX_ITER:
            max_iter_hit.append(i)


def _compiles(request):
    """Whether kernels/small_softmax_relu.py runs this request: a Newton loop of ``softmax_relu`` (any offsets,
    targets and ridge) with the exact Hessian, no callback, the default logit cap; λmax or losses of ``softmax_relu``
    evaluators (``fastnewton.lifted_start``'s figures between stages)."""
    if isinstance(request, NewtonRequest):
        return (isinstance(request.problem.row_model, SoftmaxRelu) and request.build_system is exact_system
                and request.options.callback is None and request.options.max_logit_step == MAX_LOGIT_STEP)
    if isinstance(request, (EigenvalueRequest, SimplexRequest)):
        return isinstance(request.problem.row_model, SoftmaxRelu)
    return isinstance(request, LossesRequest) and all(isinstance(problem.row_model, SoftmaxRelu)
                                                      for problem, _ in request.points)


class _MatrixBook:
    """Where the staged solves' C, V and w lie (``_matrix_addresses`` for C), formed once per block for all their
    rounds: a problem's stages share its block (``Problem.with_model``), and forming C's addresses each round cost
    ~10 ms of a ~200 ms solve_many of 40 CSR problems (their int32 indices converted again in each of ~9 rounds),
    the rest of a request's table row ~1 ms a round. Holds the blocks (their ids are the keys) and the arrays the
    addresses point into."""

    # The columns of kernels/small_softmax_relu.py's ``table`` that a block fixes.
    BLOCK_FIELDS = [relu_kernel.T_N, relu_kernel.T_D, relu_kernel.T_CSR, relu_kernel.T_CHUNK, relu_kernel.T_VALUES,
                    relu_kernel.T_INDPTR, relu_kernel.T_INDICES, relu_kernel.T_V, relu_kernel.T_W]

    def __init__(self):
        self._row_of, self._blocks, self._held = {}, [], []
        self.table = np.zeros((0, relu_kernel.TABLE_FIELDS), dtype=np.int64)

    def rows(self, problems):
        """The rows of ``table`` (its ``BLOCK_FIELDS`` filled) for these problems' blocks (those not seen yet
        formed now)."""
        new = {}
        for problem in problems:
            if id(problem.block) not in self._row_of:
                new.setdefault(id(problem.block), problem)
        if new:
            fresh = list(new.values())
            csr, addresses, index_bytes, held = _matrix_addresses([problem.matrix for problem in fresh])
            values = [np.ascontiguousarray(problem.block.V, dtype=np.float64) for problem in fresh]
            weights = [np.ascontiguousarray(problem.block.w, dtype=np.float64) for problem in fresh]
            table = np.zeros((len(fresh), relu_kernel.TABLE_FIELDS), dtype=np.int64)
            table[:, relu_kernel.T_N] = [problem.n for problem in fresh]
            table[:, relu_kernel.T_D] = [problem.d for problem in fresh]
            table[:, relu_kernel.T_CSR] = csr
            table[:, relu_kernel.T_CHUNK] = [problem.block.chunk for problem in fresh]
            table[:, relu_kernel.T_VALUES] = addresses[:, kernel.A_VALUES]
            table[:, relu_kernel.T_INDPTR] = addresses[:, kernel.A_INDPTR]
            table[:, relu_kernel.T_INDICES] = addresses[:, kernel.A_INDICES]
            table[:, relu_kernel.T_INDEX_BYTES] = index_bytes
            table[:, relu_kernel.T_V] = [V.ctypes.data for V in values]
            table[:, relu_kernel.T_W] = [w.ctypes.data for w in weights]
            for key in new:
                self._row_of[key] = len(self._row_of)
            self._blocks += [problem.block for problem in fresh]
            self._held += held + values + weights
            self.table = np.concatenate([self.table, table])
        return np.fromiter((self._row_of[id(problem.block)] for problem in problems), np.int64, len(problems))


class _RequestPack:
    """Requests on ``softmax_relu`` problems (evaluator, x) in the layout of kernels/small_softmax_relu.py: C, V
    and w read in place (where they lie from ``book``, a ``_MatrixBook``), the models' b and offsets and the
    points x packed; ``order`` the costliest first (the sandwich's n·d² and the low-rank part's d²·m), for lanes
    that each take the next as they finish one (``_hand_out``)."""

    def __init__(self, problems, points, book):
        count = len(problems)
        models = [problem.row_model for problem in problems]
        rows = book.rows(problems)  # before reading book.table: it grows by the blocks not seen yet
        self.table = table = book.table[rows]
        n = table[:, relu_kernel.T_N]
        self.d = d = table[:, relu_kernel.T_D].copy()
        self.m = m = np.fromiter((model.m for model in models), np.int64, count)
        table[:, relu_kernel.T_M] = m
        table[:, relu_kernel.T_COL] = np.cumsum(d) - d
        table[:, relu_kernel.T_OUT] = np.cumsum(m) - m
        table[:, relu_kernel.T_MAX_ITER] = 0
        self.numbers = np.zeros((count, relu_kernel.NUMBER_FIELDS))
        self.numbers[:, relu_kernel.N_L2] = [problem.l2 for problem in problems]
        self.b = np.concatenate([model.b for model in models]).astype(np.float64, copy=False)
        self.offset = np.concatenate([model.output_offset for model in models]).astype(np.float64, copy=False)
        self.x = np.concatenate(points).astype(np.float64)
        self.order, self.lanes = _hand_out(n * d * (d + m))


def _run_loops(requests, settings, book):
    """The ``SolveResult`` of each Newton loop (``NewtonRequest``) run by ``solve_relu_loops``, or None for one that
    met a non-finite value (the caller runs it in Python: its message names where, from the arrays there)."""
    count = len(requests)
    problems = [request.problem for request in requests]
    pack = _RequestPack(problems, [request.x0 for request in requests], book)
    pack.table[:, relu_kernel.T_MAX_ITER] = [_compiled_max_iter(request.options.max_iter) for request in requests]
    pack.numbers[:, relu_kernel.N_TOL] = [request.options.tol for request in requests]
    pack.numbers[:, relu_kernel.N_TARGET_NORM] = [problem.target_norm() for problem in problems]
    y, y_previous = np.empty_like(pack.b), np.empty_like(pack.b)
    out_int = np.zeros((count, relu_kernel.OUT_INT_FIELDS), dtype=np.int64)
    out_float = np.zeros((count, relu_kernel.OUT_FLOAT_FIELDS))
    relu_kernel.solve_relu_loops(pack.order, pack.lanes, pack.table, pack.numbers, settings, MAX_UPDATES, pack.b,
                                 pack.offset, pack.x, y, y_previous, out_int, out_float)
    # Read back in bulk (Python numbers, slices: np.split and per-entry NumPy indexing cost a few µs a piece).
    places = pack.table[:, [relu_kernel.T_COL, relu_kernel.T_D, relu_kernel.T_OUT, relu_kernel.T_M]].tolist()
    return [_loop_result(request, pack.x[col:col + d], y[at:at + m], y_previous[at:at + m], ints, floats)
            for request, (col, d, at, m), ints, floats in zip(requests, places, out_int.tolist(), out_float.tolist())]


def _simplex_vectors(problems, book):
    """``lifted_start.simplex_vector`` of each problem (E, λ, Σ max(·), dual Newton steps) by ``simplex_vectors``,
    or None where a dual Newton matrix had no Cholesky factor or a dual solve stopped short of its tolerance (the
    caller runs it in Python: ``SIMPLEX_UNCONVERGED``)."""
    count = len(problems)
    pack = _RequestPack(problems, [np.zeros(problem.d) for problem in problems], book)
    settings = np.empty(relu_kernel.SIMPLEX_SETTINGS_FIELDS)
    settings[relu_kernel.SIMPLEX_FLOOR_AT] = lifted_start.SIMPLEX_FLOOR
    settings[relu_kernel.DUAL_RIDGE_AT] = lifted_start.DUAL_RIDGE
    settings[relu_kernel.MAX_DUAL_ITER_AT] = lifted_start.MAX_DUAL_ITER
    settings[relu_kernel.DUAL_RTOL_AT] = lifted_start.DUAL_RTOL
    equal = np.empty_like(pack.b)
    lam = np.empty(pack.b.shape[0] + count)
    out_int = np.zeros((count, 3), dtype=np.int64)
    out_float = np.zeros(count)
    relu_kernel.simplex_vectors(pack.order, pack.lanes, pack.table, settings, pack.b, equal, lam, out_int, out_float)
    vectors = []
    for r, (at, m) in enumerate(zip(pack.table[:, relu_kernel.T_OUT].tolist(), pack.m.tolist())):
        status, steps, size = out_int[r].tolist()
        if status != relu_kernel.SIMPLEX_DONE:
            vectors.append(None)
            continue
        vectors.append((np.flatnonzero(equal[at:at + m] == 1.0), lam[at + r:at + r + size + 1].copy(),
                        float(out_float[r]), steps))
    return vectors


def _stage_figures(points, eigenvalue, book):
    """The losses L(x) (or, ``eigenvalue``, |λmax| of ∇²L(x): ``lifted_start.largest_eigenvalue``) at the
    (evaluator, x) ``points``, formed by ``stage_figures``."""
    pack = _RequestPack([problem for problem, _ in points], [x for _, x in points], book)
    out = np.empty(len(points))
    relu_kernel.stage_figures(pack.order, pack.lanes, pack.table, pack.numbers, eigenvalue, POWER_ITERATIONS, pack.b,
                              pack.offset, pack.x, out)
    return out.tolist()


def _loop_result(request, x, y, y_previous, out_int, out_float):
    """The ``SolveResult`` of one compiled Newton loop, as ``NewtonRun.result`` makes it (its status, message,
    the dead-output diagnosis and the kink flag); None for a loop that met a non-finite value. ``out_int`` and
    ``out_float``: its rows of the outputs, as lists of Python numbers."""
    code = out_int[relu_kernel.O_STATUS]
    if code == kernel.NON_FINITE:
        return None
    problem, options = request.problem, request.options
    model = problem.row_model
    n_iter = out_int[relu_kernel.O_N_ITER]
    loss, grad_norm, g_ref = (out_float[relu_kernel.O_LOSS], out_float[relu_kernel.O_GRAD_NORM],
                              out_float[relu_kernel.O_G_REF])
    detail, at_kink = "", False
    if code == kernel.NO_STEP_STALL:
        status, detail = Status.STALLED, newton.NO_STEP_DETAIL
    else:
        status = _STATUSES[code]
    if status == Status.STALLED and code != kernel.NO_STEP_STALL:
        kink = kink_sentence(model.relu_inputs({"y": y_previous}, None), model.relu_inputs({"y": y}, None))
        at_kink = kink is not None
        detail = stall_detail(kink, loss, grad_norm, g_ref)
    elif status == Status.CONVERGED:
        dead = model.diagnose({"y": y}, loss, problem.facts, problem.loss_at_zero)
        if dead:
            status, detail = Status.DEAD_STATIONARY, dead
        elif out_float[relu_kernel.O_ROUNDING_BOUND] > 0.0:
            detail = newton.rounding_converged_detail(out_float[relu_kernel.O_ROUNDING_BOUND])
    if status == Status.MAX_ITER and options.warn_at_max_iter:
        warn_max_iter(options)
    # The stages join the loops' records (``lifted_start._Stages``): one per iteration, without the figures.
    history = [{"iter": k, "time": 0.0} for k in range(n_iter + 1)]
    res = SolveResult(x=x, loss=loss, grad_norm=grad_norm,
                      rel_grad_norm=relative_gradient_norm(grad_norm, g_ref, status),
                      g_ref=g_ref, n_iter=n_iter, converged=status == Status.CONVERGED, status=status,
                      message=status_message(status, detail), history=history, x0=request.x0.copy(),
                      start=request.start, hessian=options.hessian, time=0.0)
    res.update(fun=loss, nit=n_iter, success=res["converged"], at_kink=at_kink)
    return res


def _invalid_as_problem(item, i, model, l2, row_weights):
    """Problem i's entry of ``results`` for an input found invalid after its bulk checks (a C with a NaN or ±Inf
    entry, a CSR C with a column index outside [0, d)): ``Problem`` rejects it, and its error is the message."""
    C, b, V = item
    try:
        Problem(C, b, model=model, V=V, l2=l2, row_weights=row_weights)
    except (TypeError, ValueError) as error:
        return _invalid(C, i, error)
    raise AssertionError(f"problem {i}: its input was found invalid, but Problem accepts it")


def _fit_errors(n, d, k):
    """Per problem (lists n, d and the model's k), solve's MemoryError where its Newton iteration cannot fit in the
    memory available (``check_iteration_fits``, ``check_hessian_fits``: solve raises it before any work), else None.
    The compiled solve would fail at its allocation inside the parallel loop, losing the whole batch; the problem
    gets INVALID_INPUT with that message instead. The need grows with n, d and k: the batch's largest of each is
    checked first, and the problems one by one only when that does not fit."""
    errors = [None] * len(n)
    if not errors:
        return errors
    try:
        check_iteration_fits(max(n), max(d), max(k))
        check_hessian_fits(max(d))
        return errors
    except MemoryError:
        pass
    for position, shape in enumerate(zip(n, d, k)):
        try:
            check_iteration_fits(*shape)
            check_hessian_fits(shape[1])
        except MemoryError as error:
            errors[position] = error
    return errors


def _invalid(C, i, error):
    """Problem i's entry of ``results`` when its input is invalid: x of NaNs (length d where C has a shape)."""
    d = getattr(C, "shape", (0, 0))[1] if len(getattr(C, "shape", ())) == 2 else 0
    return (np.full(d, np.nan), Status.INVALID_INPUT, 0, np.nan, np.nan, np.nan,
            f"{MESSAGES[Status.INVALID_INPUT]} problem {i}: {error}")


def _warn_if_not_distributions(pack, indices, model, invalid=()):
    """``solve``'s warning for targets that cannot be softmax outputs, once for the batch (naming the problems).

    The pack's targets (``pack.b``: the problems' b side by side) are screened all at once: only a problem with
    a negative entry or a sum off 1 by more than half of solve's tolerance (``SUM_TOLERANCE``; a sum in another
    order differs by ~n·eps, far less) is asked ``not_a_distribution``, whose test and text are the warning's
    (~6 µs a problem asked). ``indices``: the pack's problems' indices in the batch; ``invalid``: positions of
    problems whose input turned out invalid (not warned about: they are not solved)."""
    targets = pack.b
    lengths, starts = pack.layout[:, kernel.L_N], pack.layout[:, kernel.L_ROW]
    negative = np.logical_or.reduceat(targets < 0, starts)
    with np.errstate(over="ignore"):  # an overflowing sum is off 1, and ``not_a_distribution`` names it
        off = np.abs(np.add.reduceat(targets, starts) - 1.0) > 0.5 * SUM_TOLERANCE
    flagged, first = [], None
    for k in np.flatnonzero(negative | off).tolist():
        if k in invalid:
            continue
        message = not_a_distribution(targets[starts[k]:starts[k] + lengths[k]], model)
        if message:
            flagged.append(indices[k])
            first = first or message
    if flagged:
        shown = ", ".join(str(i) for i in flagged[:10]) + (", …" if len(flagged) > 10 else "")
        warnings.warn(f"problem(s) {shown}: {first}", UserWarning, stacklevel=5)


def _batch_result(results, clock):
    xs = [r[0] for r in results]
    dims = {x.shape[0] for x in xs}
    status = np.array([int(r[1]) for r in results], dtype=np.int64)
    grad_norm = np.array([r[4] for r in results], dtype=np.float64)
    rel = np.array([relative_gradient_norm(r[4], r[5], r[1]) for r in results], dtype=np.float64)
    return BatchResult(
        x=np.column_stack(xs) if len(dims) == 1 else xs,
        status=status,
        converged=status == Status.CONVERGED,
        n_iter=np.array([r[2] for r in results], dtype=np.int64),
        loss=np.array([r[3] for r in results], dtype=np.float64),
        grad_norm=grad_norm,
        rel_grad_norm=rel,
        message=[r[6] for r in results],
        time=time.perf_counter() - clock,
    )
