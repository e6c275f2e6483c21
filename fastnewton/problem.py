"""``Problem``: loss, gradient and Hessian of SPEC §1–2, usable directly by scipy.optimize.minimize."""
from dataclasses import dataclass, replace

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


def _own(validated, given):
    """``validated`` as an array this Problem alone holds (a copy when it shares memory with ``given``)."""
    if isinstance(given, np.ndarray) and np.shares_memory(validated, given):
        return validated.copy()
    return validated


class Problem:
    """L(x) = ½‖h(Cx) − b‖² + ½ Σᵢ wᵢ (Cx)ᵢ² + ½ λ‖x‖² for one of the three models.

    C is a dense array or any SciPy sparse matrix (converted once to CSR; float32 or
    float64 values, int32 or int64 indices). ``b`` has length n (``softmax``,
    ``relu_softmax``) or m (``softmax_relu``, with V of shape n × m).
    ``loss``, ``grad``, ``loss_and_grad``, ``hessian`` and ``hessp`` plug straight
    into ``scipy.optimize.minimize(fun, x0, jac=, hess=, hessp=)``. The last point
    evaluated is cached, so ``fun``/``jac``/``hessp`` at the same x share one pass.

    ``b``, ``V`` and ``row_weights`` are copied: later edits of the caller's arrays do not affect
    the Problem. ``C`` is not copied when it is already float32/float64 canonical CSR or a
    C-contiguous array (it can be as large as memory), so do not modify it in place while the
    Problem is in use; build a new Problem instead. (If you do: ``loss`` and ``grad`` at the last
    point evaluated keep their cached values from the old C, every other point reads the new C,
    and ``hessian``/``hessp`` at the cached point would combine the cached curvature weights with
    the new C. ``clear_cache()`` drops the cache after such an edit.)
    """

    def __init__(self, C, b, model="softmax", V=None, l2=0.0, row_weights=None):
        self.model = check_model(model)
        self.matrix = as_input_matrix(C)
        n = self.matrix.n
        # b, V and w are copied (validation may return the caller's own array): editing them later
        # cannot change this Problem. C is not copied (it can be as large as memory).
        self.V = as_value_matrix(V, self.model, n)
        self.V = None if self.V is None else _own(self.V, V)
        if self.V is None:
            self.b = _own(as_vector(b, "b", n, " (rows of C)"), b)
        else:
            self.b = _own(as_vector(b, "b", self.V.shape[1], " (columns of V)"), b)
        self.l2 = as_l2(l2)
        self.row_weights = _own(as_row_weights(row_weights, n), row_weights)
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

    def _gradient_at_zero(self):
        """∇L(0) (u = 0 needs no pass over C), using the model's reference derivative at 0."""
        vectors = self._model.reference_model().vectors(np.zeros(self.n))
        return self.matrix.rmatmat(np.ascontiguousarray(vectors.Q[:, :1]))[:, 0]

    def _gradient_norm_at_zero(self):
        return norm(self._gradient_at_zero())

    def _column_norms(self):
        """‖C_j‖ for every column j: the fixed scale of the column-scaled stopping test."""
        return np.sqrt(self.matrix.column_squares())

    def _diagnose(self, ev):
        """A sentence when ev is a stationary point that cannot be the optimum, else None."""
        # The model compares the loss with L(0); it must be the loss with its ridge term, as reported.
        return self._model.diagnose(ev.u, replace(ev.vectors, loss=ev.loss))

    def _kink(self, before, after):
        """A sentence when the iterate sits at a ReLU kink between evaluations ``before`` and ``after``, else None."""
        if self.model == "relu_softmax":
            return kink_sentence("row(s) with (Cx)ᵢ", before.u, after.u)
        if self.model == "softmax_relu":
            return kink_sentence("output(s) with yⱼ = (Vᵀ softmax(Cx))ⱼ", before.vectors.extras["y"],
                                 after.vectors.extras["y"])
        return None

    def _iteration_extras(self):
        """Entries added to each history record (the distributed problem reports its rounds here)."""
        return {}

    def _auto_start(self):
        from .start import auto_start

        return auto_start(self)

    # -- public API --------------------------------------------------------------------------
    def clear_cache(self):
        """Forget the last point evaluated (after modifying C in place, so no value mixes old and new C)."""
        self._last = None
        self._last_forward = None

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


# A ReLU input sits at its kink when its sign flipped in the last step, or when it is non-zero but
# |value| ≤ KINK_RTOL · (largest |value|): steps that stall there move it by amounts of this order
# (exact zeros are left out: an empty row of C has u = 0 whatever x is).
KINK_RTOL = 1e-6


def kink_sentence(what, before, after):
    """The stop message's sentence when ReLU inputs ``after`` (rows or outputs) sit at the kink, or None."""
    largest = float(np.max(np.abs(after))) if after.size else 0.0
    flipped = (before > 0.0) != (after > 0.0)
    near = (np.abs(after) <= KINK_RTOL * largest) & (after != 0.0)
    at_kink = flipped | near
    if not at_kink.any():
        return None
    return (f"x sits at a ReLU kink: {int(at_kink.sum())} {what} ≈ 0 or changing sign between steps (e.g. "
            f"index {int(np.flatnonzero(at_kink)[0])}), where L is not differentiable and Newton steps no "
            f"longer reduce it beyond rounding.")


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
