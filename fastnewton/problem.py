"""``Problem``: loss, gradient and Hessian of SPEC §1–2, usable directly by scipy.optimize.minimize."""
from dataclasses import dataclass

import numpy as np

from .memory import check_hessian_fits
from .models import ModelVectors, build_model
from .reductions import dot, norm
from .sketching import sampled_sandwich
from .validation import (
    as_input_matrix,
    as_l2,
    as_row_weights,
    as_value_matrix,
    as_vector,
    check_model,
)


@dataclass
class Evaluation:
    """One point x with u = Cx, the model vectors, the gradient and P = CᵀU."""

    x: np.ndarray
    u: np.ndarray
    vectors: ModelVectors
    loss: float
    grad: np.ndarray
    P: object  # d × k array, or None until a Hessian needs it


class Problem:
    """L(x) = ½‖h(Cx) − b‖² + ½ Σᵢ wᵢ (Cx)ᵢ² + ½ λ‖x‖² for one of the three models.

    C is a dense array or any SciPy sparse matrix (converted once to CSR; float32 or
    float64 values, int32 or int64 indices). ``b`` has length n (``softmax``,
    ``relu_softmax``) or m (``softmax_relu``, with V of shape n × m).
    ``loss``, ``grad``, ``loss_and_grad``, ``hessian`` and ``hessp`` plug straight
    into ``scipy.optimize.minimize(fun, x0, jac=, hess=, hessp=)``. The last point
    evaluated is cached, so ``fun``/``jac``/``hessp`` at the same x share one pass.
    """

    def __init__(self, C, b, model="softmax", V=None, l2=0.0, row_weights=None):
        self.model = check_model(model)
        self.matrix = as_input_matrix(C)
        n = self.matrix.n
        self.V = as_value_matrix(V, self.model, n)
        if self.V is None:
            self.b = as_vector(b, "b", n, " (rows of C)")
        else:
            self.b = as_vector(b, "b", self.V.shape[1], " (columns of V)")
        self.l2 = as_l2(l2)
        self.row_weights = as_row_weights(row_weights, n)
        self._model = build_model(self.model, self.b, self.row_weights, self.V)
        self._last = None
        self._last_forward = None

    @property
    def n(self):
        return self.matrix.n

    @property
    def d(self):
        return self.matrix.d

    def __repr__(self):
        return (f"Problem(model={self.model!r}, n={self.n}, d={self.d}, nnz={self.matrix.nnz}, "
                f"format={self.matrix.format!r}, l2={self.l2})")

    # -- internals shared with the solver -------------------------------------------------
    def _as_point(self, x, name="x"):
        return as_vector(x, name, self.d, " (columns of C)")

    def _forward(self, x, timer):
        """u = Cx, reused while x is the last point seen (scipy calls fun, then jac, at one x)."""
        if self._last_forward is not None and np.array_equal(self._last_forward[0], x):
            return self._last_forward[1]
        with timer("forward"):
            u = self.matrix.matvec(x)
        self._last_forward = (x.copy(), u)
        return u

    def _evaluate(self, x, timer=None, with_P=True):
        """Evaluation at a validated float64 x: the fused pass Cᵀ[q, U] when ``with_P``, else the
        gradient pass alone (P = CᵀU is then formed by a second pass if a Hessian is asked for)."""
        timer = timer or _no_timer
        ev = self._last
        if ev is None or not np.array_equal(ev.x, x):
            u = self._forward(x, timer)
            with timer("model"):
                vectors = self._model.vectors(u)
            with timer("gradient"):
                if with_P:
                    G = self.matrix.rmatmat(vectors.Q)
                    grad, P = G[:, 0], np.ascontiguousarray(G[:, 1:])
                else:
                    grad, P = self.matrix.rmatmat(vectors.Q[:, :1])[:, 0], None
            grad = grad + self.l2 * x
            loss = vectors.loss + 0.5 * self.l2 * dot(x, x)
            ev = self._last = Evaluation(x.copy(), u, vectors, loss, grad, P)
        if with_P and ev.P is None:
            with timer("gradient"):
                ev.P = self.matrix.rmatmat(ev.vectors.Q[:, 1:])
        return ev

    def _loss_at(self, u, x):
        """L at a point whose u = Cx is already known (line-search trials)."""
        return self._model.loss(u) + 0.5 * self.l2 * dot(x, x)

    def _hessian(self, ev, sandwich=None):
        """Cᵀ diag(β) C (or a given approximation of it) + P S Pᵀ + λI."""
        H = self.matrix.sandwich(ev.vectors.beta) if sandwich is None else sandwich
        return add_low_rank_and_ridge(H, ev.P, ev.vectors.S, self.l2)

    def _sampled_sandwich(self, ev, s, rng):
        """(CᵀD̃C from a leverage-score sample of about s rows, rows kept): ``fastnewton.sketching``."""
        return sampled_sandwich(self.matrix, ev.vectors.beta, self.l2, s, rng)

    def _line(self, ev, p):
        return _LineSearch(self, ev, p)

    def _target_norm(self):
        return norm(self.b)

    def _gradient_norm_at_zero(self):
        """‖∇L(0)‖ (u = 0 needs no pass over C), using the model's reference derivative at 0."""
        vectors = self._model.reference_model().vectors(np.zeros(self.n))
        return norm(self.matrix.rmatmat(np.ascontiguousarray(vectors.Q[:, :1]))[:, 0])

    def _diagnose(self, ev):
        """A sentence when ev is a stationary point that cannot be the optimum, else None."""
        return self._model.diagnose(ev.u, ev.vectors)

    def _iteration_extras(self):
        """Entries added to each history record (the distributed problem reports its rounds here)."""
        return {}

    def _auto_start(self):
        from .start import auto_start

        return auto_start(self)

    # -- public API --------------------------------------------------------------------------
    def loss(self, x):
        """L(x)."""
        x = self._as_point(x)
        if self._last is not None and np.array_equal(self._last.x, x):
            return self._last.loss
        return self._loss_at(self._forward(x, _no_timer), x)

    def grad(self, x):
        """∇L(x) = Cᵀq + λx (a new array)."""
        return self._evaluate(self._as_point(x), with_P=False).grad.copy()

    def loss_and_grad(self, x):
        """(L(x), ∇L(x)) from one forward and one fused transposed pass."""
        ev = self._evaluate(self._as_point(x), with_P=False)
        return ev.loss, ev.grad.copy()

    def hessian(self, x):
        """∇²L(x) = Cᵀ(diag(β) + U S Uᵀ)C + λI as a dense d × d array."""
        check_hessian_fits(self.d)
        return self._hessian(self._evaluate(self._as_point(x)))

    def _hessp(self, ev, p):
        Cp = self.matrix.matvec(p)
        Hp = self.matrix.rmatmat((ev.vectors.beta * Cp)[:, None])[:, 0]
        Hp += ev.P @ (ev.vectors.S @ (ev.P.T @ p))
        Hp += self.l2 * p
        return Hp

    def hessp(self, x, p):
        """∇²L(x)·p = Cᵀ(β ⊙ Cp) + P S Pᵀp + λp without forming the Hessian (two passes over C)."""
        ev = self._evaluate(self._as_point(x))
        return self._hessp(ev, self._as_point(p, "p"))

    def scaled(self, scale=None):
        """This loss divided by g_ref = ‖∇L(0)‖ for scipy.optimize, whose tolerances are absolute (``fastnewton.scaled``)."""
        from .scaled import ScaledProblem

        return ScaledProblem(self, scale)


def add_low_rank_and_ridge(H, P, S, l2):
    """H + P S Pᵀ + λI in place (symmetrised, so the Hessian is exactly symmetric)."""
    low_rank = P @ S @ P.T
    H += 0.5 * (low_rank + low_rank.T)
    H[np.diag_indices_from(H)] += l2
    return H


class _LineSearch:
    """The line x + t·p: one pass C·p, then each trial's loss from u + t·Cp with no pass over C.

    ``largest`` = ‖Cp‖∞ (the logit cap); ``scale`` shrinks p and Cp together.
    """

    def __init__(self, problem, ev, p):
        self.problem, self.ev, self.p = problem, ev, p
        self.Cp = problem.matrix.matvec(p)
        self.largest = float(np.max(np.abs(self.Cp)))

    def scale(self, factor):
        self.p *= factor
        self.Cp *= factor
        self.largest *= factor

    def loss(self, t):
        return self.problem._loss_at(self.ev.u + t * self.Cp, self.ev.x + t * self.p)


class _NoTimer:
    def __call__(self, phase):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_no_timer = _NoTimer()
