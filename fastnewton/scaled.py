"""``Problem.scaled()``: the same loss divided by g_ref, so scipy.optimize's fixed tolerances mean something.

scipy's stopping tests are absolute (L-BFGS-B: max |gᵢ| ≤ gtol = 1e-5; trust-region methods:
‖g‖ ≤ gtol; L-BFGS-B's ftol compares changes of f with max(|f|, 1)), while these losses are
tiny: with n rows the targets are ~1/n, so at n = 2·10⁵ the loss is ~1e-7 and the gradient at
x = 0 ~1e-6 — below scipy's defaults, and scipy stops at nit = 0 with success = True. Dividing
L and its derivatives by g_ref = ‖∇L(0)‖ (the scale of ``solve``'s own test, ‖∇L(x)‖ ≤ tol·g_ref)
changes neither the minimiser nor the Newton steps, and scipy's ``gtol`` then reads as
``solve``'s relative ``tol``.
"""
import numpy as np

from .reductions import norm


def reference_gradient_norm(problem):
    """g_ref = ‖∇L(0)‖ (for relu_softmax its one-sided value, as ``solve`` uses), by solve's ``norm`` (rescaled where
    its squares underflow: a C scaled by 1e-160 has ‖∇L(0)‖ ~1e-162, not 0)."""
    return norm(problem.gradient_at_zero())


class ScaledProblem:
    """``problem``'s loss, gradient and Hessian divided by ``scale`` (default g_ref); same minimiser.

    ``loss``, ``grad``, ``loss_and_grad``, ``hessian`` and ``hessp`` plug into
    ``scipy.optimize.minimize`` as ``Problem``'s do; ``rel_grad_norm(x)`` is ‖∇L(x)‖ / g_ref,
    the quantity ``solve`` compares with ``tol`` (scipy's ``gtol`` on this problem).
    """

    def __init__(self, problem, scale=None):
        self.problem = problem
        if scale is None:
            self.scale = reference_gradient_norm(problem)
        else:
            if isinstance(scale, (bool, np.bool_)):
                raise TypeError(f"scale must be a finite number > 0, got {type(scale).__name__} {scale!r}")
            try:
                self.scale = float(scale)
            except (TypeError, ValueError):
                raise TypeError(f"scale must be a finite number > 0, got {type(scale).__name__} {scale!r:.40}") from None
        if not (np.isfinite(self.scale) and self.scale > 0):
            why = ""
            if scale is None:
                why = (" (∇L(0) = 0: no reference scale; pass scale=)" if self.scale == 0 else
                       " (‖∇L(0)‖ overflows float64: the problem's scale is too large; rescale C or b)")
            raise ValueError(f"scale must be a finite number > 0, got {self.scale}{why}")

    def __repr__(self):
        return f"ScaledProblem({self.problem!r}, scale={self.scale:.6g})"

    def loss(self, x):
        return self.problem.loss(x) / self.scale

    def grad(self, x):
        return self.problem.grad(x) / self.scale

    def loss_and_grad(self, x):
        loss, grad = self.problem.loss_and_grad(x)
        return loss / self.scale, grad / self.scale

    def hessian(self, x):
        return self.problem.hessian(x) / self.scale

    def hessp(self, x, p):
        return self.problem.hessp(x, p) / self.scale

    def rel_grad_norm(self, x):
        return float(np.linalg.norm(self.grad(x)))
