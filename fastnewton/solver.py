"""``fastnewton.solve``: validate once, choose the start and the Hessian strategy, run the Newton loop."""
import inspect
import logging
import time
import warnings

import numpy as np

from . import _cache
from .hessian import default_thread_count, resolve_strategy
from .memory import check_hessian_fits, check_iteration_fits
from .models import outputs_distributions
from .newton import NewtonRequest, SolveOptions, run_requests
from .problem import Problem
from .result import SolveResult
from .start import starting_point
from .threads import thread_limits
from .timing import PhaseTimer
from .validation import as_flag, as_positive_float, as_positive_int, as_seed, as_switch, as_thread_count

def solve(C, b, model="softmax", *, V=None, l2=0.0, row_weights=None, x0="auto", hessian="auto",
          eps=0.5, sketch_size=None, tol=1e-8, max_iter=100, seed=None, n_threads=None,
          callback=None, verbose=False, progress=False, continuation=True):
    """Minimise L(x) = ½‖h(Cx) − b‖² + ½ Σᵢ wᵢ (Cx)ᵢ² + ½ λ‖x‖² by a globalised Newton method.

    Parameters
    ----------
    C : (n, d) NumPy array or SciPy sparse matrix (any format; converted once to CSR).
    b : target, length n (``softmax``, ``relu_softmax``) or m (``softmax_relu``).
    model : ``"softmax"``, ``"relu_softmax"`` or ``"softmax_relu"`` (needs ``V``, n × m).
    l2 : ridge λ ≥ 0.  row_weights : w ≥ 0, a scalar or a length-n vector.
    x0 : where the iterations start: ``"auto"`` (a least-squares fit in log space, see
        ``fastnewton.start``; for ``softmax_relu`` the fit to a simplex vector), ``"zeros"`` or a
        length-d array. For ``softmax_relu`` the solve from any of them is staged (``continuation``).
    hessian : ``"exact"``, ``"sketch"``, ``"pcg"``, ``"lagged"`` or ``"auto"`` (see ``fastnewton.hessian``).
    eps : spectral accuracy ε ∈ (0, 1) of the sketched Hessian (``sketch``, ``pcg``).
    sketch_size : rows sampled per iteration (default ⌈3·d·log(d/0.1)/ε²⌉ for ``sketch``, a third
        of that for ``pcg``, whose preconditioner needs only constant-factor accuracy).
    tol : stop when ‖∇L(x)‖ ≤ tol · g_ref with g_ref = ‖∇L(0)‖ (for ``relu_softmax``, whose gradient
        at 0 is exactly zero, the one-sided derivative: the plain softmax gradient at 0), whatever
        the start; ‖∇L(x0)‖ only if that is 0. ``res.g_ref`` and every history record report it. Where
        ∇L(0) is within the bound on its own rounding (b constant to rounding), a stall with ‖∇L(x)‖ within
        it too is CONVERGED (the message says so).
    max_iter : at most this many Newton iterations.
    seed : fixes every random choice.  n_threads : Numba and BLAS threads for this solve (default: as
        Numba has them, all cores unless set otherwise; one for a small problem, ``default_thread_count``).
    callback : called after every iteration, in one of scipy's two forms: ``callback(info)``
        gets a dict (iter, loss, grad_norm, step, damping, seconds per phase, x) and stops the
        solve cleanly by returning True; ``callback(intermediate_result)`` (a parameter of
        exactly that name, as in scipy ≥ 1.11) gets a ``SolveResult`` with ``x``, ``fun``,
        ``nit`` and the same record (and the start's ``phase`` when it runs stages). Either form may
        raise ``StopIteration`` to stop.
    verbose : print one row per iteration (and a line when the kernels compile on first use).
    progress : show a tqdm progress bar (``pip install tqdm``), one tick per iteration.
    continuation : ``softmax_relu`` only (the other models have no stages and ignore it). True (the
        default): from x0 (``"auto"``, ``"zeros"`` or an array alike), Newton on a lifted surrogate in which
        no output's ReLU can die, along a ridge path l2 + (3e-1 … 3e-4)·λmax → l2, then Newton on the real
        loss, with a restart from x = 0 when that stops unconverged (``fastnewton.lifted_start``). A warm
        start (an array whose real loss is at most half the loss at x = 0) first gets up to 20 Newton
        iterations on the real loss, and the continuation runs from x0 only if they do not converge. The
        iterations start at x0, and the result's loss, gradient and status are the real loss's (except
        after a stop by the callback within a surrogate phase: then that phase's). Every
        phase's iterations count in ``n_iter`` and ``max_iter``, each history record names its ``phase``,
        and ``res.start`` says which phases ran. False: one plain Newton loop on the
        real loss from x0 (from ``"zeros"`` or a random x0 it often stops at a dead output or crawls along
        the valley of nearly-dead outputs; ``fastnewton.lifted_start`` has the measurements).

    Returns
    -------
    SolveResult (a ``scipy.optimize.OptimizeResult``) with ``x, loss, grad_norm, n_iter,
    converged, status, message, history`` and scipy's ``fun, jac, nit, success, nfev, njev,
    nhev``. ``time`` covers the whole call; iteration 0's ``seconds`` include ``setup``
    (input checks and conversion) and ``start`` (the starting point).
    """
    clock = time.perf_counter()
    timer = PhaseTimer()
    with timer("setup"):
        problem = Problem.checking_c_on_first_pass(C, b, model=model, V=V, l2=l2, row_weights=row_weights)
    return solve_problem(problem, x0=x0, hessian=hessian, eps=eps, sketch_size=sketch_size, tol=tol,
                         max_iter=max_iter, seed=seed, n_threads=n_threads, callback=callback, verbose=verbose,
                         progress=progress, continuation=continuation, timer=timer, clock=clock)


def solve_problem(problem, *, x0="auto", hessian="auto", eps=0.5, sketch_size=None, tol=1e-8, max_iter=100,
                  seed=None, n_threads=None, callback=None, verbose=False, progress=False, continuation=True,
                  timer=None, clock=None):
    """``solve`` of a built ``Problem`` (its inputs validated): ``solve`` after its ``Problem(C, b, ...)``, and
    ``solve_many(problems)`` for the problems it hands to ``solve``'s loop, built and priced already (it
    passes the strategy ``auto`` chose as ``hessian``: the same builder, without pricing twice).
    ``timer`` and ``clock``: the caller's, when its setup ran already (``solve``'s)."""
    clock = time.perf_counter() if clock is None else clock
    timer = PhaseTimer() if timer is None else timer
    with timer("setup"):
        check_iteration_fits(problem.n, problem.d, problem.row_model.k)
        warn_if_not_a_distribution(problem.b, problem.model, stacklevel=4)
        n_threads = default_thread_count(problem, as_thread_count(n_threads))
        bar = progress_bar(as_switch(progress, "progress"), max_iter)
        observer = chain_observers(bar.update if bar else None,
                                   log_iteration if logger.isEnabledFor(logging.DEBUG) else None)
        build_system, options = solve_options(problem, hessian, eps, sketch_size, tol, max_iter, seed, callback,
                                              verbose, observer=observer, default_start=is_default_start(x0),
                                              continuation=continuation)
    try:
        # Inputs whose scale overflows float64 (C·1e160, l2 = 1e300) end in Status.NON_FINITE, whose
        # message says so; NumPy's overflow warnings on the way there would only repeat it.
        with thread_limits(n_threads), _cache.compile_notice(options.verbose), \
                np.errstate(over="ignore", invalid="ignore"):
            res = run_from(problem, x0, build_system, options, timer=timer, clock=clock)
        logger.info("%s iterations=%d loss=%.6e |g|/g_ref=%.3e time=%.3fs", res.message, res.n_iter, res.loss,
                    res.rel_grad_norm, res.time)
        return res
    finally:
        if bar is not None:
            bar.close()


def run_from(problem, x0, build_system, options, timer=None, clock=None):
    """The Newton solve from ``x0`` (shared by ``fastnewton.dask.solve``): "auto" is the model's
    ``auto_solve`` (its start, and any stages of its own), anything else the model's ``solve_from``
    from ``starting_point`` (one Newton loop, or the model's stages from there).
    ``timer`` and ``clock`` as for ``newton_solve`` (the start is timed as the phase "start")."""
    if is_default_start(x0):
        return problem.auto_solve(build_system, options, timer=timer, clock=clock)
    return run_requests(solve_rounds(problem, x0, build_system, options, timer, clock))


def solve_rounds(problem, x0, build_system, options, timer=None, clock=None):
    """``run_from`` as a generator of its Newton loops (``NewtonRequest``s), for ``solve_many``."""
    if is_default_start(x0):
        return (yield from problem.auto_solve_rounds(build_system, options, timer, clock))
    timer = timer if timer is not None else PhaseTimer()
    with timer("start"):
        start, description = starting_point(problem, x0)
    return (yield from problem.solve_from_rounds(start, description, build_system, options, timer, clock))


def is_default_start(x0):
    """Whether ``x0`` asks for the default start ("auto")."""
    return isinstance(x0, str) and x0 == "auto"


def solve_options(problem, hessian, eps, sketch_size, tol, max_iter, seed, callback, verbose, observer=None,
                  default_start=True, continuation=True):
    """Validate the solver's keywords (shared by ``fastnewton.dask.solve``): (Hessian builder, SolveOptions).

    ``observer(info)``, if given, sees every iteration's record before the callback (the progress bar).
    ``default_start``: whether x0 is "auto" (``auto`` prices the sketch's leverage refreshes by it).
    """
    continuation = as_flag(continuation, "continuation")
    tol = as_positive_float(tol, "tol")
    max_iter = as_positive_int(max_iter, "max_iter", minimum=0)
    eps = as_positive_float(eps, "eps", upper=1.0)
    sketch_size = as_positive_int(sketch_size, "sketch_size", allow_none=True)
    seed = as_seed(seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    callback = chain_callbacks(observer, as_record_callback(callback))
    check_hessian_fits(problem.d)
    strategy_name, build_system = resolve_strategy(hessian, problem, eps, sketch_size, default_start)
    options = SolveOptions(hessian=strategy_name, tol=tol, max_iter=max_iter, eps=eps,
                           sketch_size=sketch_size, seed=seed, callback=callback, verbose=as_switch(verbose, "verbose"),
                           continuation=continuation)
    return build_system, options


logger = logging.getLogger("fastnewton")

# A target further than this from Σb = 1 cannot be (close to) a softmax output; noisy planted
# targets (1 ± noise per entry) stay within a few percent.
SUM_TOLERANCE = 0.1


def not_a_distribution(b, model, name="b"):
    """The warning's text when b cannot be a softmax output of ``model``, or "" when it can."""
    if not outputs_distributions(model):  # softmax_relu's read-out through V, a plugin's own outputs
        return ""
    problems = []
    negative = b < 0
    if negative.any():
        problems.append(f"{int(np.count_nonzero(negative))} negative entries")
    with np.errstate(over="ignore"):  # entries near the largest float: Σb = inf, named below (not NumPy's warning)
        total = float(b.sum())
    if abs(total - 1.0) > SUM_TOLERANCE:
        problems.append(f"Σb = {total:.4g}")
    if not problems:
        return ""
    return (f"{name} is not a probability vector ({', '.join(problems)}), so h(Cx) = {model}(…), which "
            "is ≥ 0 and sums to 1, can never match it: the fit minimises the distance to the closest "
            f"distribution. Normalise it ({name} / {name}.sum()) if it holds scores or counts.")


def warn_if_not_a_distribution(b, model, name="b", stacklevel=3):
    """A warning (not an error: the loss is defined for any b) when b cannot be a softmax output."""
    message = not_a_distribution(b, model, name)
    if message:
        warnings.warn(message, UserWarning, stacklevel=stacklevel)


def as_record_callback(callback):
    """The user's callback as ``f(info) -> stop?``, for either of scipy's forms; StopIteration means stop.

    Like scipy, a callback whose only parameter is named ``intermediate_result`` gets a
    ``SolveResult`` of the iterate (its return value is ignored); any other callback gets the
    history record with ``x`` and its return value decides.
    """
    if callback is None:
        return None
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # builtins without a signature: the dict form
        signature = None
    scipy_form = signature is not None and set(signature.parameters) == {"intermediate_result"}
    if signature is not None and not scipy_form:
        try:
            signature.bind(None)
        except TypeError:
            # said now, not as the callable's own TypeError after the first iteration's work
            raise TypeError(f"callback must take one argument (the iteration's record, or scipy's "
                            f"intermediate_result), got a callable with signature {signature}") from None

    def record_callback(info):
        try:
            if scipy_form:
                callback(intermediate_result=SolveResult(info, fun=info["loss"], nit=info["iter"]))
                return None
            return callback(info)
        except StopIteration:
            return True

    return record_callback


def log_iteration(info):
    """One DEBUG record per iteration on the ``fastnewton`` logger (the verbose table's row)."""
    logger.debug("iter %d loss %.6e |g|/g_ref %.3e step %.2e damping %.2e trials %d seconds %.3f", info["iter"],
                 info["loss"], info["rel_grad_norm"], info["step"], info["damping"], info["line_search_trials"],
                 sum(info["seconds"].values()))


def chain_observers(*observers):
    """One observer calling each given (non-None) observer in turn; None when there are none."""
    observers = [observer for observer in observers if observer is not None]
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def each(info):
        for observer in observers:
            observer(info)
    return each


def chain_callbacks(observer, callback):
    """Call ``observer(info)`` (progress; never stops the solve), then the callback; None when both are."""
    if observer is None:
        return callback
    if callback is None:
        return lambda info: observer(info)

    def both(info):
        observer(info)
        return callback(info)
    return both


class _ProgressBar:
    """A tqdm bar ticking once per Newton iteration, showing the loss and ‖∇L‖/g_ref."""

    def __init__(self, tqdm, max_iter):
        # An iteration takes milliseconds or more: redraw on every one (tqdm skips updates by default).
        self.bar = tqdm(total=max_iter, unit="it", desc="fastnewton", leave=False, miniters=1, mininterval=0)

    def update(self, info):
        self.bar.set_postfix(loss=f"{info['loss']:.3e}", rel_grad=f"{info['rel_grad_norm']:.2e}", refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()


def progress_bar(progress, max_iter):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return _ProgressBar(tqdm, max_iter if isinstance(max_iter, int) and max_iter > 0 else None)
