"""``fastnewton.solve``: validate once, choose the start and the Hessian strategy, run the Newton loop."""
from .hessian import resolve_strategy
from .memory import check_hessian_fits
from .newton import SolveOptions, newton_solve
from .problem import Problem
from .start import starting_point
from .threads import thread_limits
from .validation import as_positive_float, as_positive_int, as_seed, as_thread_count


def solve(C, b, model="softmax", *, V=None, l2=0.0, row_weights=None, x0="auto", hessian="auto",
          eps=0.5, sketch_size=None, tol=1e-8, max_iter=100, seed=None, n_threads=None,
          callback=None, verbose=False):
    """Minimise L(x) = ½‖h(Cx) − b‖² + ½ Σᵢ wᵢ (Cx)ᵢ² + ½ λ‖x‖² by a globalised Newton method.

    Parameters
    ----------
    C : (n, d) NumPy array or SciPy sparse matrix (any format; converted once to CSR).
    b : target, length n (``softmax``, ``relu_softmax``) or m (``softmax_relu``).
    model : ``"softmax"``, ``"relu_softmax"`` or ``"softmax_relu"`` (needs ``V``, n × m).
    l2 : ridge λ ≥ 0.  row_weights : w ≥ 0, a scalar or a length-n vector.
    x0 : ``"auto"`` (a least-squares fit in log space, see ``fastnewton.start``; for
        ``softmax_relu`` then Newton on a lifted surrogate first, see ``fastnewton.lifted_start``),
        ``"zeros"`` or a length-d array.
    hessian : ``"exact"``, ``"sketch"``, ``"pcg"`` or ``"auto"`` (see ``fastnewton.hessian``).
    eps : spectral accuracy ε ∈ (0, 1) of the sketched Hessian (``sketch``, ``pcg``).
    sketch_size : rows sampled per iteration (default ⌈3·d·log(d/0.1)/ε²⌉ for ``sketch``, a third
        of that for ``pcg``, whose preconditioner needs only constant-factor accuracy).
    tol : stop when ‖∇L(x)‖ ≤ tol · max(‖∇L(x0)‖, ‖∇L(0)‖).
    max_iter : at most this many Newton iterations.
    seed : fixes every random choice.  n_threads : Numba and BLAS threads for this solve.
    callback : called after every iteration with a dict (iter, loss, grad_norm, step, damping,
        seconds per phase, x; and the start's ``phase`` when it runs stages); returning True stops
        the solve cleanly.
    verbose : print one row per iteration.

    Returns
    -------
    SolveResult with ``x, loss, grad_norm, n_iter, converged, status, message, history``.
    """
    problem = Problem(C, b, model=model, V=V, l2=l2, row_weights=row_weights)
    n_threads = as_thread_count(n_threads)
    build_system, options = solve_options(problem, hessian, eps, sketch_size, tol, max_iter, seed, callback, verbose)
    with thread_limits(n_threads):
        return run_from(problem, x0, build_system, options)


def run_from(problem, x0, build_system, options):
    """The Newton solve from ``x0`` (shared by ``fastnewton.dask.solve``): "auto" is the model's
    ``auto_solve`` (its start, and any stages of its own), anything else ``starting_point``."""
    if isinstance(x0, str) and x0 == "auto":
        return problem.auto_solve(build_system, options)
    start, description = starting_point(problem, x0)
    return newton_solve(problem, start, description, build_system, options)


def solve_options(problem, hessian, eps, sketch_size, tol, max_iter, seed, callback, verbose):
    """Validate the solver's keywords (shared by ``fastnewton.dask.solve``): (Hessian builder, SolveOptions)."""
    tol = as_positive_float(tol, "tol")
    max_iter = as_positive_int(max_iter, "max_iter", minimum=0)
    eps = as_positive_float(eps, "eps", upper=1.0)
    sketch_size = as_positive_int(sketch_size, "sketch_size", allow_none=True)
    seed = as_seed(seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    check_hessian_fits(problem.d)
    strategy_name, build_system = resolve_strategy(hessian, problem, eps, sketch_size)
    options = SolveOptions(hessian=strategy_name, tol=tol, max_iter=max_iter, eps=eps,
                           sketch_size=sketch_size, seed=seed, callback=callback, verbose=bool(verbose))
    return build_system, options
