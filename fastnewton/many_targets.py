"""One C, many targets: ``solve_many(C, B)`` solves one problem per column of B, in lock-step.

(Or, where C is small and every column's strategy is compiled, as independent problems by the compiled loop of
``solve_many(problems)``, ``fastnewton.many_small``: each column start to finish on one thread, with no Python
per iteration, x within 1e-10 of solve's but not to the bit: ``_compiled_columns``. The rest of this docstring
is the lock-step driver's.)

Every problem is ``solve``'s: the same start, the same ``NewtonRun`` decisions (damping, Armijo line
search, logit cap, stagnation window, stopping tests, statuses and messages) and the same model code.
What changes is who does the passes over C. The single solve's code yields them as requests
(``fastnewton.newton.run_rounds``): a direction p whose line needs C·p, columns Q whose transposed
pass Cᵀ Q the gradient needs, a Newton loop a staged start asks for. Here the requests of all
unfinished problems are answered together, each round by one pass over C:

- u = C X and the lines' C·P: ``matrix.matvecs`` (SpMM / dense, one read of C);
- the gradients' Cᵀ[Q₁, Q₂, …]: ``matrix.rmatmats`` (CSR: the problems' columns side by side in one
  read of C, SIMD across problems; dense: one read of C for all problems);
- the exact Hessians' Cᵀ diag(β_j) C (``exact``, and ``lagged``'s exact iterations): ``matrix.sandwiches``
  (CSR: one read of C per block of problems, each pair's update q-wide across them; dense: all problems'
  SYRKs on one thread pool);
- CG's Hessian-vector products (``pcg``, ``lagged``): on CSR, C·v with the lines' C·p, then Cᵀ(β_j ⊙ C v_j)
  of all problems in one transposed pass (fewer products than that pays for, ``CSR_BATCHED_FROM``: each as
  ``solve`` forms it, one read of C with β formed as the rows are read, and likewise fewer exact sandwiches
  each by ``solve``'s own ``curvature_sandwich``); on dense C, C·v and Cᵀ(β_j ⊙ C v_j) of all problems in one
  parallel region, each row read once for both (``matrix.sandwich_vectors``, as ``solve``'s
  ``sandwich_vector``); a step's C·p that CG summed from its products is taken as ``solve`` takes it
  (``NewtonSystem.forward_of``).

Every shared pass gives each column the bits of the single-problem pass (same sums in the same
order). So each problem runs ``solve``'s decisions on its column and follows its iterates bit for bit
(its status, iteration count and x are ``solve``'s; promised: x within 1e-10 relative); its bits depend
neither on the thread count nor on which other columns are solved with it.
Problems that stop drop out of the passes. Per-problem work that needs no pass (the model's O(n)
vectors, the d × d Cholesky solves, line-search trials) runs problem by problem, as do the
sampled sandwiches of ``sketch``/``pcg`` and the parts of a start that make passes of their own
(``softmax_relu``'s simplex vector and λmax, ``relu_softmax``'s floor LP); the starts' least-squares
fits (``NormalSystemRequest``: the softmax models' fits of log b) share their sandwiches and
transposed passes, each fit's pass also giving its problem's ∇L(0) for the stopping test, as in ``solve``.
So a few targets (a single one, the last unfinished ones) read C as often as ``solve`` does for them.

Problems are solved in groups whose work arrays fit ``GROUP_BYTES`` (the answers do not depend on
the grouping). In lock-step every problem's evaluations are alive at once: their work arrays come
from one ``fastnewton.buffers.Recycler`` that the problems share, each round lets go of the last
round's steps, and an exact Hessian's β and Q are released once its system is formed, so freed
memory is written again rather than fresh memory faulted in.
"""
import copy
import time
import warnings
from dataclasses import replace
from types import SimpleNamespace

import numba
import numpy as np
import scipy.sparse as sp

from . import _cache, rates, threads
from .batch import BatchResult
from .buffers import Recycler
from .hessian import (ForwardKeepingProduct, HessianProduct, choose_strategy, default_thread_count,
                      exact_iteration_seconds, forms_exact_sandwich, resolve_strategy)
from .many_small import compiled_lagged_steps, solve_problems
from .memory import check_iteration_fits, iteration_bytes
from .models.softmax import Softmax
from .newton import NewtonRequest, NewtonRun, References, column_scale, user_stacklevel
from .plain_problems import reads_in_place
from .problem import Problem
from .result import ConvergenceWarning, MESSAGES, Status
from .start import NormalSystemRequest, fit_columns, fit_partials
from .solver import is_default_start, solve_options, solve_rounds, warn_if_not_a_distribution
from .threads import numba_threads, thread_limits
from .validation import as_array, as_switch, as_thread_count, check_model, check_real_dtype

# The problems solved together hold their work arrays (``iteration_bytes`` each: evaluations, Q, β,
# line-search vectors) at once; groups are sized to fit this, so memory stays bounded for any q.
GROUP_BYTES = 2**30
# The strategies whose every pass over C and sandwich is shared by the problems (``SharedPasses``); ``sketch``
# and ``pcg`` form their sampled sandwiches problem by problem.
SHARED_STRATEGIES = ("exact", "lagged")
# Below this priced exact iteration (``exact_iteration_seconds``) the columns of one C run as independent problems in
# the compiled loop of ``solve_many(problems)`` (``_compiled_columns``). Measured, q = 64 noisy softmax targets
# (bench/many.py's), 2-core AMD EPYC, best of 2, that loop's time against lock-step's (lagged / exact): dense
# 4096 × 64 (priced 1.2 ms) 3.3× / 2.2×, 8192 × 64 (2.4 ms) 1.8× / 1.7×, 4096 × 128 (3.2 ms) 1.2× / 1.4×, 16384 × 32
# 2.4× / 2.6×; CSR 10 per row, 20000 × 128 (1.6 ms) 1.5× / 1.3×, 50000 × 64 (3.6 ms) 1.1× / 0.70×, 10⁵ × 64
# (7.2 ms) 1.0× / 1.0×.
COMPILED_COLUMNS_BELOW_SECONDS = 3.5e-3


def solve_targets(C, B, model="softmax", *, V=None, l2=0.0, row_weights=None, x0="auto", hessian="auto",
                  eps=0.5, sketch_size=None, tol=1e-8, max_iter=100, seed=None, n_threads=None, callback=None,
                  verbose=False, continuation=True):
    """``solve(C, B[:, j], ...)`` for every column j of B, with the passes over C shared (module docstring).

    B is n × q (``softmax``, ``relu_softmax``) or m × q (``softmax_relu``, with one V of shape n × m).
    ``x0``: ``"auto"``, ``"zeros"``, one length-d start for all columns or a d × q array of starts.
    ``seed``: each problem's random draws (``sketch``, ``pcg``) come from ``default_rng(seed)``, as in a
    ``solve`` call with that seed (a Generator: a copy of it per problem, the caller's left as it was).
    ``callback(info)``: called after every iteration of every problem, ``info["problem"]`` its column; stopping
    it stops that problem only. ``verbose``: one line per problem.

    A column with NaN or Inf (in B, or in its start of a d × q ``x0``) is invalid input and is not solved: its
    status is ``INVALID_INPUT`` (as for a bad problem of the list form), its message names the column, its x is
    NaN, and the other columns are solved as usual.
    """
    clock = time.perf_counter()
    model = check_model(model)
    targets = _as_targets(B)
    inputs = Problem.inputs_only(C, model=model, V=V, l2=l2, row_weights=row_weights)
    n_targets = inputs.V.shape[1] if inputs.V is not None else inputs.n
    if targets.shape[0] != n_targets:
        raise ValueError(f"B must have {n_targets} rows ({'columns of V' if inputs.V is not None else 'rows of C'}), "
                         f"one target per column, got shape {targets.shape}")
    q = targets.shape[1]
    starts = _as_starts(x0, inputs.d, q)
    # A column's own bad input (NaN or Inf in its target, or in its start of a d × q x0): its status, not the call's
    invalid = {j: "B" for j in np.flatnonzero(~np.all(np.isfinite(targets), axis=0)).tolist()}
    if not isinstance(x0, str) and np.ndim(x0) == 2:
        invalid.update({j: "x0" for j, start in enumerate(starts)
                        if j not in invalid and not np.all(np.isfinite(start))})
    n_threads = requested_threads = as_thread_count(n_threads)
    verbose = as_switch(verbose, "verbose")
    columns = _transposed(targets)
    problems = [None if j in invalid else inputs.with_target(columns[j], f"B[:, {j}]") for j in range(q)]
    del columns
    solvable = [j for j in range(q) if problems[j] is not None]
    # The keywords checked, and each column's strategy chosen on its own problem, as solve chooses it: ``auto``
    # prices a problem by its target (the start's model, the sketch's refreshes), so the columns of one C can
    # take different strategies (dense 4096 × 64, noisy targets: pcg for some, lagged for others). One builder
    # per strategy: a stateful builder keeps its state per problem.
    default_start = is_default_start(x0)
    build_system, options = solve_options(problems[solvable[0]] if solvable else inputs, hessian, eps, sketch_size,
                                          tol, max_iter, seed, callback, False, default_start=default_start,
                                          continuation=continuation)
    options = replace(options, warn_at_max_iter=False)
    strategies = {options.hessian: (build_system, options)}
    column_strategy = {j: options.hessian for j in solvable}
    for j in solvable[1:] if hessian == "auto" else ():
        name = column_strategy[j] = choose_strategy(problems[j], options.eps, options.sketch_size, default_start)
        if name not in strategies:
            strategies[name] = (resolve_strategy(name, problems[j], options.eps, options.sketch_size)[1],
                                replace(options, hessian=name))
    k = problems[solvable[0]].row_model.k if solvable else 0
    # Threads. The shared passes, whose work is that of all the problems in them, run on the caller's threads
    # (or ``n_threads``) once that work is past the bound by which solve runs a small problem on one thread
    # (``SharedPasses.threads``). The per-problem work runs on one thread where solve runs a column on one
    # (``default_thread_count``), and also where that work, with every sandwich and pass shared (``exact``,
    # ``lagged``), is the model's row stages alone and below that bound: each of its small parallel kernels
    # would wake the threads for less work than waking costs (dense 4096 × 64, 4096 rows: ~66 µs of row work
    # per iteration against 40–130 µs per parallel region; ``fastnewton.threads``).
    first = problems[solvable[0]] if solvable else inputs
    pass_threads = n_threads if n_threads is not None else numba.get_num_threads()
    problem_seconds = exact_iteration_seconds(first)
    if (n_threads is None and all(name in SHARED_STRATEGIES for name in strategies)
            and inputs.n / rates.ITERATION_ROWS < threads.SINGLE_THREAD_BELOW_SECONDS):
        n_threads = 1
    n_threads = default_thread_count(first, n_threads)
    check_iteration_fits(inputs.n, inputs.d, k)
    for j in solvable:
        # + 1: the warning is issued one frame down, in warn_if_not_a_distribution (it pointed into batch.py)
        warn_if_not_a_distribution(problems[j].b, model, f"B[:, {j}]", stacklevel=user_stacklevel() + 1)
    results = [None] * q
    if callback is None and solvable and _compiled_columns(C, first, [column_strategy[j] for j in solvable],
                                                           problem_seconds):
        with _cache.compile_notice(verbose):
            _solve_compiled_columns(C, problems, solvable, model, starts, results, l2=l2, row_weights=row_weights,
                                    hessian=hessian, eps=eps, sketch_size=sketch_size, tol=tol, max_iter=max_iter,
                                    seed=seed, n_threads=requested_threads, continuation=continuation)
        return _batch_result(results, invalid, inputs.d, options, verbose, clock)
    # Overflowing scales end in Status.NON_FINITE with its message, as in solve (no NumPy warnings).
    with thread_limits(n_threads), _cache.compile_notice(verbose), np.errstate(over="ignore", invalid="ignore"):
        passes = SharedPasses(inputs.matrix, column_scale(inputs), pass_threads, problem_seconds)
        group = max(1, GROUP_BYTES // iteration_bytes(inputs.n, inputs.d, k))
        for begin in range(0, len(solvable), group):
            members = solvable[begin:begin + group]
            rounds = [solve_rounds(problems[j], starts[j], *_for_problem(strategies[column_strategy[j]], j), clock=clock)
                      for j in members]
            for j, res in zip(members, answer_together(rounds, passes.requests)):
                results[j] = res
    return _batch_result(results, invalid, inputs.d, options, verbose, clock)


def _compiled_columns(C, problem, strategies, exact_seconds):
    """Whether the columns of one C (``problem``: one of them; ``strategies``: each column's) are solved faster as
    independent problems by the compiled loop of ``solve_many(problems)`` (``fastnewton.many_small``: each column
    start to finish on one thread, no Python per iteration) than in lock-step: every strategy one that it compiles
    (exact, lagged), the exact iteration (priced at ``exact_seconds``) below
    ``COMPILED_COLUMNS_BELOW_SECONDS``, and C a plain one, which it reads in place for every column
    (``plain_problems.reads_in_place``: a C-contiguous float64 array or canonical float64 CSR; any other C it would
    copy once per column)."""
    return (isinstance(problem.row_model, Softmax) and exact_seconds < COMPILED_COLUMNS_BELOW_SECONDS
            and all(compiled_lagged_steps(name) is not None for name in strategies)
            and reads_in_place(C, problem.b))


def _solve_compiled_columns(C, problems, columns, model, starts, results, **keywords):
    """Columns ``columns`` of B (``problems``: each column's Problem) as a list of (C, B[:, j]) problems by
    ``solve_many(problems)``'s compiled loop (``_compiled_columns``), their entries of ``results`` written (each
    column's answer is solve's up to that loop's rounding: x within 1e-10, not to the bit). The warnings for the
    batch (max_iter, targets off the simplex) are solve_targets' own, naming columns: the inner call's are not
    repeated."""
    listed = [(C, problems[j].b) for j in columns]
    x0 = starts[columns[0]] if all(isinstance(starts[j], str) for j in columns) else [starts[j] for j in columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        batch = solve_problems(listed, model, x0=x0, **keywords)
    for k, j in enumerate(columns):
        results[j] = SimpleNamespace(**batch.problem(k))


def _as_targets(B):
    """B as a 2-D float64 array (a copy only where conversion needs one; never modified)."""
    if B is None:
        raise TypeError("B must be a 2-D array of targets, one per column")
    if sp.issparse(B):
        raise TypeError(f"B must be a dense 2-D array of targets, one per column, got a SciPy sparse "
                        f"{type(B).__name__} (targets are dense: B.toarray())")
    array = as_array(B, "B")
    check_real_dtype(array.dtype, "B")
    if array.ndim != 2:
        raise ValueError(f"B must be 2-D (one target per column), got an array with {array.ndim} dimension(s)")
    if array.shape[1] == 0:
        raise ValueError("B must have at least one column (one target per column)")
    return np.asarray(array, dtype=np.float64)


# ``_transposed`` copies this many rows of B at a time (n × 64 floats: 2 MiB, within L2/L3).
TRANSPOSE_ROWS = 4096


def _transposed(B):
    """Bᵀ as a C-contiguous q × n copy (each column a contiguous row), block of rows by block: 64 strided
    column reads of an n × 64 B cost 64 sweeps over B (~90 ms at n = 10⁵), and one transposed copy
    ``np.ascontiguousarray(B.T)``, which reads down the columns, 46 ms, against 18 ms in blocks (the same
    process, memory already mapped)."""
    n, q = B.shape
    out = np.empty((q, n))
    for start in range(0, n, TRANSPOSE_ROWS):
        out[:, start:start + TRANSPOSE_ROWS] = B[start:start + TRANSPOSE_ROWS].T
    return out


def _as_starts(x0, d, q):
    """One start per column: "auto"/"zeros", a length-d array (for all), or a d × q array."""
    if isinstance(x0, str):
        if x0 not in ("auto", "zeros"):
            raise ValueError(f"x0 must be 'auto', 'zeros', a length-{d} array or a {d} × {q} array, got {x0!r}")
        return [x0] * q
    array = as_array(x0, "x0")
    check_real_dtype(array.dtype, "x0")
    if array.ndim == 1:
        return [array] * q
    if array.ndim != 2 or array.shape != (d, q):
        raise ValueError(f"x0 must be a length-{d} array (one start for every column of B) or a {d} × {q} "
                         f"array (one per column), got shape {array.shape}")
    return [array[:, j] for j in range(q)]


def _for_problem(strategy, j):
    """(builder, options) of column j from its strategy's: its callback sees ``info["problem"] = j``, and a seed
    given as a Generator is copied for it, so that each column draws what a lone ``solve`` with that generator
    would (shared, the columns drew from it in lock-step: each column's draws depended on the others, and two
    equal columns got different answers)."""
    build_system, options = strategy
    changes = {}
    if isinstance(options.seed, np.random.Generator):
        changes["seed"] = copy.deepcopy(options.seed)
    callback = options.callback
    if callback is not None:
        changes["callback"] = lambda info: callback(dict(info, problem=j))
    return build_system, replace(options, **changes) if changes else options


def answer_together(generators, answer):
    """Run generators that yield requests, answering each round's requests together.

    ``answer(requests, indices)`` (the pending requests of the unfinished generators and their positions,
    in generator order) returns the answers in that order; each is sent back to its generator. Returns the
    generators' return values.
    """
    results = [None] * len(generators)
    pending = {}
    for index, generator in enumerate(generators):
        try:
            pending[index] = next(generator)
        except StopIteration as stop:
            results[index] = stop.value
    while pending:
        answers = answer(list(pending.values()), list(pending))
        following = {}
        for (index, _), reply in zip(pending.items(), answers):
            try:
                following[index] = generators[index].send(reply)
            except StopIteration as stop:
                results[index] = stop.value
        pending = following
    return results


class SharedPasses:
    """The passes over one C for many problems at once (module docstring: which are bit for bit the single problem's)."""

    def __init__(self, matrix, column_scale, pass_threads=None, problem_seconds=0.0):
        self.matrix = matrix
        # Threads of a pass shared by ``count`` problems (``threads``): the thread count never changes the bits.
        self.pass_threads, self.problem_seconds = pass_threads, problem_seconds
        # The forward passes' r × n outputs (n × 64 doubles is 51 MB at n = 10⁵: past malloc's mmap threshold,
        # so a fresh one cost 12.5k page faults per round), rows of one recycled array (``forward_pass``).
        self.buffers = Recycler()
        self.widest = 0
        # D_j = ‖C_j‖ (``fastnewton.newton.column_scale``): the same for every problem on this C.
        self.column_scale = column_scale
        self.interrupted = False

    def threads(self, count):
        """The Numba threads (and SYRK workers) of a pass shared by ``count`` problems: ``pass_threads`` once
        their exact iterations together are predicted past ``SINGLE_THREAD_BELOW_SECONDS`` of work (the bound by
        which ``solve`` runs a small problem on one thread: below it waking the threads costs more than they
        save), else the per-problem count that is set. Dense 4096 × 64 runs a column on one thread; 64 columns'
        passes are 64× that work (``dense_rmatmats`` of 64 problems on one thread: 5.5 ms)."""
        if self.pass_threads is None or count * self.problem_seconds < threads.SINGLE_THREAD_BELOW_SECONDS:
            return numba_threads(None)
        return numba_threads(self.pass_threads)

    def forward(self, points):
        """[C x for x in points] from one pass."""
        return list(self.forward_pass(np.column_stack(points)))

    def forward_pass(self, X):
        """(C X)ᵀ, r × n for a d × r X (``matrix.matvecs``), written into the leading rows of a recycled array
        as wide as the widest pass so far: let go once no row of it is held, it serves the next round."""
        with self.threads(X.shape[1]):
            return self.matrix.matvecs(X, out=self.rows(X.shape[1]))

    def rows(self, count):
        """``count`` length-n rows for a pass to write: the leading rows of a recycled array as wide as the widest
        pass so far (``forward_pass``)."""
        self.widest = max(self.widest, count)
        return self.buffers.empty((self.widest, self.matrix.n))[:count]

    def transposed(self, columns, indices=None):
        """[Cᵀ Q for Q in columns] from one pass over the stacked columns (one pass per width, should
        the problems' widths differ).

        A Q that is the leading columns of a contiguous array (the gradient's alone, ``Q[:, :2]``) is
        passed whole and its G cut to them: every column of CᵀQ is its own sum in the passes over C
        (``csr_rmatmats``, ``dense_rmatmats``), so the bits are the same, and no n × 2 copy is made
        (64 of them cost ~0.1 s and 25k page faults at n = 10⁵)."""
        whole = [_whole_array(Q) for Q in columns]
        out = [None] * len(columns)
        for width in sorted({Q.shape[1] for Q in whole}):
            members = [t for t, Q in enumerate(whole) if Q.shape[1] == width]
            with self.threads(len(members)):
                transposed = self.matrix.rmatmats([whole[t] for t in members])
            for t, G in zip(members, transposed):
                out[t] = G if width == columns[t].shape[1] else np.ascontiguousarray(G[:, :columns[t].shape[1]])
        return out

    def evaluations(self, rounds):
        """The evaluations of ``evaluation_rounds`` generators (their transposed passes shared)."""
        return answer_together(rounds, self.transposed)

    def requests(self, requests, indices=None):
        """Answer a round of the problems' requests, each kind together (``NewtonRequest``: the Newton
        loops in lock-step; ``NormalSystemRequest``: the starts' least-squares partials)."""
        answers = [None] * len(requests)
        for kind, answer in ((NormalSystemRequest, self.normal_systems), (NewtonRequest, self.newton_loops)):
            members = [t for t, request in enumerate(requests) if isinstance(request, kind)]
            if members:
                for t, reply in zip(members, answer([requests[t] for t in members])):
                    answers[t] = reply
        for t, request in enumerate(requests):
            # Any other request (softmax_relu's figures between its stages: ``fastnewton.lifted_start``) on its own.
            if not isinstance(request, (NormalSystemRequest, NewtonRequest)):
                answers[t] = request.run()
        return answers

    def normal_systems(self, requests):
        """``NormalSystemRequest.run()`` for each request, the sandwiches and transposed passes shared."""
        fits = [request.row_fit(request.problem.block, request.parameters) for request in requests]
        with self.threads(len(fits)):
            sandwiches = self.matrix.sandwiches([weights for weights, _ in fits])
        # Each fit's pass also gives its problem's ∇L(0) for the stopping test, as in solve (``NormalSystemRequest.run``).
        passes = [request.problem.with_gradient_at_zero(fit_columns(weights, target))
                  for request, (weights, target) in zip(requests, fits)]
        transposed = self.transposed([columns for columns, _ in passes])
        return [fit_partials(weights, target, sandwich, finish(G))
                for (weights, target), sandwich, (_, finish), G in zip(fits, sandwiches, passes, transposed)]

    def newton_loops(self, requests, indices=None):
        """The ``SolveResult`` of each ``NewtonRequest``: ``newton_solve``'s loop for all of them in lock-step."""
        problems = [request.problem for request in requests]
        # ∇L(0) of the problems whose start's fit did not form it (``normal_systems``), from one shared pass
        gradients_at_zero = [problem.known_gradient_at_zero() for problem in problems]
        missing = [t for t, gradient in enumerate(gradients_at_zero) if gradient is None]
        for t, gradient in zip(missing, self.evaluations([problems[t].gradient_at_zero_rounds() for t in missing])):
            gradients_at_zero[t] = gradient
        runs = [NewtonRun(request.problem, request.x0, request.start, request.options,
                          References.of(request.problem, self.column_scale, gradient),
                          request.timer, request.clock)
                for request, gradient in zip(requests, gradients_at_zero)]
        builders = {id(run): request.build_system for run, request in zip(runs, requests)}
        points = [run.x0 for run in runs]
        evaluations = self.evaluations([problem.evaluation_rounds(x, {"u": u})
                                        for problem, x, u in zip(problems, points, self.forward(points))])
        live = [run for run, ev in zip(runs, evaluations) if run.begin(ev)]
        del evaluations  # each run holds its own (the rest are recycled: ``fastnewton.buffers``)
        try:
            if self.interrupted:
                raise KeyboardInterrupt
            while live:
                live = [run for run in live if not run.stopping()]
                if not live:
                    break
                systems = self.systems(live, [builders[id(run)] for run in live])
                steps = answer_together([run.step_rounds(system) for run, system in zip(live, systems)],
                                        lambda asked, indices, live=live, systems=systems: self.lines(
                                            live, systems, asked, indices))
                moved = []
                for run, system, step in zip(live, systems, steps):
                    if step is None:
                        run.no_step(system)
                    else:
                        moved.append((run, system, step))
                for (run, system, step), ev in zip(moved, self.next_evaluations(moved)):
                    run.accept(step, ev, system)
                live = [run for run, _, _ in moved if not run.finished]
                # The steps hold their lines, trials and the old evaluations: let their work arrays go
                # back to the recycler before the next round asks for new ones (``fastnewton.buffers``).
                del systems, steps, moved, step, system
        except KeyboardInterrupt:
            self.interrupted = True
            for run in runs:
                if not run.finished:
                    run.status = Status.INTERRUPTED
        return [run.result() for run in runs]

    def systems(self, runs, builders):
        """Each run's Newton system (``builders``: each run's strategy); the exact ones' sandwiches (``exact``,
        and ``lagged``'s exact iterations) formed together."""
        exact = [forms_exact_sandwich(builder, run.problem) for run, builder in zip(runs, builders)]
        # Fewer than the sandwich kernel for many takes: each system formed as solve forms it (CSR: β formed as the
        # pass reads each row, ``curvature_sandwich``, rather than written first), the same sums one at a time.
        shared = exact if self.matrix.batches("sandwiches", sum(exact)) else [False] * len(runs)
        sandwiches = iter(())
        if any(shared):
            weights = [run.problem.beta(run.ev) for run, due in zip(runs, shared) if due]
            with self.threads(len(weights)):
                sandwiches = iter(self.matrix.sandwiches(weights))
            del weights
        systems = [run.build_system(builder, sandwich=next(sandwiches)) if due else run.build_system(builder)
                   for run, builder, due in zip(runs, builders, shared)]
        # The exact system holds the Hessian itself: β and Q are not read again (a CG step reads β, not Q).
        # Released, the peak memory of all problems in lock-step drops by ~4 n-vectors each, and so do the
        # page faults of the fresh memory it costs (CSR n = 10⁵, d = 64, q = 64: see ``fastnewton.buffers``).
        # The others keep β for their CG products where those are shared (``lines``); where too few for that,
        # their evaluations stay as in solve, whose first products form β from Q as they read C.
        products_shared = self.matrix.batches("products", len(runs) - sum(exact))
        for run, due in zip(runs, exact):
            if due or products_shared:
                run.problem.release_curvature(run.ev, keep_beta=not due)
        return systems

    def lines(self, runs, systems, asked, indices):
        """The answers to ``runs[i]``'s step requests for i in ``indices`` (``asked``), from one forward pass C·[P, V]
        and one transposed pass: a direction p gets its line x + t·p (C·p summed by CG where its system kept it,
        as ``newton_step`` takes it); a ``HessianProduct`` gets ∇²L·v (``products``)."""
        # Dense C: each product's C·v and Cᵀ(β ⊙ Cv) from one read of its rows (``fused_products``), not in the
        # forward pass and a transposed pass of their own. CSR: in the shared passes (``products``). Either where
        # there are enough products for that (``matrix.batches``: on dense C any), else each as solve forms it
        # (``request.run()``: one read of C, each βᵢ formed as its row is read: ``Problem.hessian_product_and_forward``).
        fused = hasattr(self.matrix, "sandwich_vectors")
        shared = self.matrix.batches("products", sum(
            isinstance(request, HessianProduct) and isinstance(request.product, ForwardKeepingProduct)
            for request in asked))
        forward = []
        for i, request in zip(indices, asked):
            if isinstance(request, np.ndarray):
                if systems[i].forward_of(request) is None:
                    forward.append(request)
            elif isinstance(request.product, ForwardKeepingProduct) and shared and not fused:
                forward.append(request.v)
        passes = iter(self.forward_pass(np.column_stack(forward)) if forward else ())
        answers, products = [], []
        for i, request in zip(indices, asked):
            if isinstance(request, np.ndarray):
                Cp = systems[i].forward_of(request)
                answers.append(runs[i].problem.line(runs[i].ev, request, next(passes) if Cp is None else Cp))
            elif isinstance(request.product, ForwardKeepingProduct) and shared:
                answers.append(None)
                products.append((len(answers) - 1, request, None if fused else next(passes)))
            else:
                answers.append(request.run())
        for t, Hv in (self.fused_products(products) if fused else self.products(products)):
            answers[t] = Hv
        return answers

    def fused_products(self, products):
        """(t, ∇²L·v) for each (t, ``HessianProduct`` of a ``ForwardKeepingProduct``, None): C·v and Cᵀ(β ⊙ Cv)
        of all in one parallel region (``matrix.sandwich_vectors``, dense C), each with ``matrix.sandwich_vector``'s
        bits, as ``solve`` forms it. Dense 4096 × 64, 64 products, best of 7 (2 threads, a loaded machine): 5.3 ms,
        against 9.9 ms for the forward pass of all, β ⊙ Cv and the transposed pass of all (``products``), and
        8.6 ms for 64 ``sandwich_vector`` calls (1 thread: 6.1, 10.6 and 5.4 ms)."""
        if not products:
            return []
        forward = self.rows(len(products))
        with self.threads(len(products)):
            transposed = self.matrix.sandwich_vectors([request.product.weights() for _, request, _ in products],
                                                      np.stack([request.v for _, request, _ in products]), forward)
        return [(t, request.product.finish(request.v, Cv, G))
                for (t, request, _), Cv, G in zip(products, forward, transposed)]

    def products(self, products):
        """(t, ∇²L·v) for each (t, ``HessianProduct`` of a ``ForwardKeepingProduct``, its C·v): the passes
        Cᵀ(β ⊙ Cv) of all in one read of C, with ``matrix.sandwich_vector``'s bits (that of ``rmatmat`` after
        ``matvec``: ``matvecs`` and ``rmatmats`` give each column those)."""
        if not products:
            return []
        # β ⊙ Cv written into recycled arrays (``fastnewton.buffers``), let go after the pass
        weighted = [np.multiply(request.product.weights(), Cv, out=request.product.problem.block.buffers.empty(
            Cv.shape[0]))[:, None] for _, request, Cv in products]
        with self.threads(len(weighted)):
            transposed = self.matrix.rmatmats(weighted)
        return [(t, request.product.finish(request.v, Cv, np.ascontiguousarray(G[:, 0])))
                for (t, request, Cv), G in zip(products, transposed)]

    def next_evaluations(self, moved):
        """The evaluations after the accepted steps: u carried along the line, or formed by one shared
        forward pass where ``CarriedForward`` says it is due; then one shared transposed pass."""
        fresh = [run.carried.fresh(step) for run, _, step in moved]
        points = [step.x for (_, _, step), due in zip(moved, fresh) if due]
        forwarded = iter(self.forward(points)) if points else iter(())
        rounds = [run.problem.evaluation_rounds(step.x, {"u": next(forwarded)}) if due
                  else step.line.evaluation_rounds(step.length)
                  for (run, _, step), due in zip(moved, fresh)]
        return self.evaluations(rounds)


def _whole_array(Q):
    """The C-contiguous array whose leading columns Q is (Q itself when it is C-contiguous or not such a view)."""
    base = Q.base
    if (Q.flags.c_contiguous or not isinstance(base, np.ndarray) or base.ndim != 2 or not base.flags.c_contiguous
            or base.shape[0] != Q.shape[0] or base.strides != Q.strides or base.ctypes.data != Q.ctypes.data):
        return Q
    return base


def _batch_result(results, invalid, d, options, verbose, clock):
    """The ``BatchResult`` of the columns' results (None for a column not solved: ``invalid[j]`` names its bad
    argument, "B" or "x0")."""
    q = len(results)
    x = np.full((d, q), np.nan)
    status = np.full(q, int(Status.INVALID_INPUT), dtype=np.int64)
    converged = np.zeros(q, dtype=bool)
    n_iter = np.zeros(q, dtype=np.int64)
    loss = np.full(q, np.nan)
    grad_norm = np.full(q, np.nan)
    rel_grad_norm = np.full(q, np.nan)
    message = []
    for j, res in enumerate(results):
        if res is None:
            message.append(f"{MESSAGES[Status.INVALID_INPUT]} column {j} of B: {invalid[j]}[:, {j}] must contain only "
                           "finite values (found NaN or Inf)")
            continue
        x[:, j] = res.x
        status[j], converged[j], n_iter[j] = int(res.status), res.converged, res.n_iter
        loss[j], grad_norm[j], rel_grad_norm[j] = res.loss, res.grad_norm, res.rel_grad_norm
        message.append(res.message)
    at_max_iter = np.flatnonzero(status == Status.MAX_ITER)
    if at_max_iter.size:
        warnings.warn(f"fastnewton.solve_many: {at_max_iter.size} of {q} problems stopped at max_iter = "
                      f"{options.max_iter} before reaching tol = {options.tol:g} (e.g. column {at_max_iter[0]})",
                      ConvergenceWarning, stacklevel=user_stacklevel())
    result = BatchResult(x=x, status=status, converged=converged, n_iter=n_iter, loss=loss, grad_norm=grad_norm,
                         rel_grad_norm=rel_grad_norm, message=message, time=time.perf_counter() - clock)
    if verbose:
        for j in range(q):
            print(f"problem {j}: {message[j]} iterations={n_iter[j]} loss={loss[j]:.6e} "
                  f"|g|/g_ref={rel_grad_norm[j]:.3e}")
    return result
