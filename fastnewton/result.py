"""The solve result (a scipy.optimize.OptimizeResult) and the status table."""
import enum

from scipy.optimize import OptimizeResult


class ConvergenceWarning(UserWarning):
    """Issued when a solve stops at max_iter before meeting tol."""


class Status(enum.IntEnum):
    CONVERGED = 0
    MAX_ITER = 1
    STALLED = 2
    CALLBACK = 3
    NON_FINITE = 4
    DEAD_STATIONARY = 5
    INTERRUPTED = 6
    INVALID_INPUT = 7  # fastnewton.solve_many: one problem of many failed validation (the others solve)


MESSAGES = {
    Status.CONVERGED: "Converged: relative gradient norm ‖∇L(x)‖ / g_ref ≤ tol.",
    Status.MAX_ITER: "Stopped: the maximum number of iterations (max_iter) was reached before tol.",
    Status.STALLED: ("Stopped: the loss no longer decreases beyond rounding error; the gradient criterion tol "
                     "was not met."),
    Status.CALLBACK: "Stopped by the callback (it returned True or raised StopIteration); x is the current iterate.",
    Status.NON_FINITE: "Stopped: a non-finite value appeared; x is the last finite iterate.",
    Status.DEAD_STATIONARY: "Stopped at a stationary point with non-zero loss that is not the optimum: ",
    Status.INTERRUPTED: "Stopped by KeyboardInterrupt; x is the current iterate.",
    Status.INVALID_INPUT: "Not solved: this problem's input is invalid:",
}


def relative_gradient_norm(grad_norm, g_ref, status=None):
    """‖∇L(x)‖ / g_ref, the figure of the stopping test (``rel_grad_norm``). Where no reference was formed (g_ref 0
    or NaN) it is NaN, never a small number that a test ``rel_grad_norm <= tol`` would pass: a non-finite value
    stopped the solve before it (``status`` NON_FINITE; the gradient at x may then be exactly 0, as at
    relu_softmax's dead point x = 0), or ∇L(0) = ∇L(x₀) = 0, where a zero gradient (x₀ optimal at once)
    gives 0."""
    if g_ref > 0:
        return grad_norm / g_ref
    return 0.0 if grad_norm == 0 and status != Status.NON_FINITE else float("nan")


class SolveResult(OptimizeResult):
    """Result of ``fastnewton.solve``: a ``scipy.optimize.OptimizeResult`` (a dict with attribute access).

    Attributes: ``x``, ``loss``, ``grad_norm`` (‖∇L(x)‖), ``rel_grad_norm`` (‖∇L(x)‖ / g_ref),
    ``n_iter``, ``converged`` (True only when the gradient criterion is met at a point
    that is not a known dead stationary point), ``status`` (a ``Status``), ``message``,
    ``history`` (one dict per iteration), ``x0`` and ``start`` (how x0 was chosen),
    ``hessian`` (strategy used) and ``time`` (seconds, the whole call); ``subgradient_norm`` only where a
    relu_softmax solve converged at a kink stationary point (``fastnewton.kinks``). scipy's names:
    ``fun``, ``jac``, ``nit``, ``success``, ``nfev`` (loss evaluations, line-search trials
    included), ``njev`` (gradient evaluations) and ``nhev`` (Hessians built).
    """

    def __dir__(self):
        return list(self.keys())

    def __repr__(self):
        keys = ("converged", "status", "message", "n_iter", "loss", "grad_norm", "rel_grad_norm", "time")
        lines = [f"{k:>14}: {self[k]!r}" for k in keys if k in self]
        return "SolveResult(\n" + "\n".join(lines) + "\n)"
