"""The models' Python side: loss and the SPEC §2 vectors (q, β, U, S) as functions of u = Cx.

Each model turns u into a ``ModelVectors`` record; the heavy O(n) work is in
kernels/softmax.py. The gradient is Cᵀq + λx and the Hessian
Cᵀ(diag(β) + U S Uᵀ)C + λI, with Q = [q, U] laid out row-major for the fused pass.
"""
from dataclasses import dataclass

import numpy as np

from .chunking import chunk_rows
from .reductions import dot
from .kernels.dense import dense_matvec, dense_rmatmat
from .kernels.softmax import (
    softmax_into,
    softmax_regression_loss,
    softmax_regression_vectors,
    softmax_relu_vectors,
)


@dataclass
class ModelVectors:
    """Everything the derivatives need at u: Q = [q, U] (n × (k+1)), β (n), S (k × k), the loss without λ."""

    loss: float
    Q: np.ndarray
    beta: np.ndarray
    S: np.ndarray
    extras: dict


class SoftmaxRegression:
    """h(u) = softmax(u) (``softmax``) or softmax(ReLU(u)) (``relu_softmax``, arXiv 2308.08358)."""

    def __init__(self, b, row_weights, relu):
        self.b = b
        self.w = row_weights
        self.relu = relu
        self.name = "relu_softmax" if relu else "softmax"
        self.n = b.shape[0]
        self.k = 2
        self._chunk_rows = chunk_rows(self.n)

    def loss(self, u):
        """½‖h(u) − b‖² + ½ Σ w u²."""
        return softmax_regression_loss(u, self.b, self.w, self.relu, self._chunk_rows, np.empty(self.n))

    def vectors(self, u):
        Q = np.empty((self.n, 3))
        beta = np.empty(self.n)
        loss, c, gamma = softmax_regression_vectors(u, self.b, self.w, self.relu, self._chunk_rows, Q, beta)
        S = np.array([[gamma, -1.0], [-1.0, 0.0]])
        return ModelVectors(loss, Q, beta, S, {"c": c, "gamma": gamma})

    def reference_model(self):
        """The model whose gradient at x = 0 sets g_ref.

        relu_softmax has ∇L(0) = 0 exactly (ReLU'(0) = 0 on every row), which would make the
        scale-free criterion unreachable; its one-sided derivative at 0, the plain softmax
        gradient, gives the scale instead.
        """
        return SoftmaxRegression(self.b, self.w, relu=False) if self.relu else self

    def diagnose(self, u, vectors):
        """A sentence when u is a stationary point that cannot be the optimum, else None."""
        return diagnose_softmax_regression(
            self.relu, bool(np.any(u > 0.0)), bool(np.any(self.b != self.b[0])), vectors.loss,
            self.loss(np.zeros(self.n)), dot(self.b, self.b))


def diagnose_softmax_regression(relu, any_active, b_varies, loss, loss_at_zero, b_squared_norm):
    """The dead-stationary sentence for ``softmax``/``relu_softmax`` from global facts about the point, or None."""
    if relu and not any_active and b_varies:
        return ("every ReLU is inactive (Cx ≤ 0 on all rows): x is a dead stationary point of "
                "relu_softmax where the gradient is exactly zero, not the optimum")
    # A softmax saturated to one-hot has a gradient that underflows to ~0 at any loss;
    # a loss above L(0) (uniform softmax, no weight term) proves x is not the minimiser.
    if loss > loss_at_zero + 1e-8 * (loss_at_zero + b_squared_norm):
        return (f"the gradient vanished but the loss {loss:.6e} exceeds L(0) = {loss_at_zero:.6e}, "
                "so x is not the optimum (e.g. a softmax saturated to one-hot by huge logits |Cx|)")
    return None


class SoftmaxRelu:
    """h(u) = ReLU(Vᵀ softmax(u)) (``softmax_relu``, arXiv 2311.15390); V is n × m, b has length m."""

    def __init__(self, b, row_weights, V):
        self.b = b
        self.w = row_weights
        self.V = V
        self.name = "softmax_relu"
        self.n, self.m = V.shape
        self.k = self.m + 2
        self._chunk_rows = chunk_rows(self.n)

    def _outputs(self, u):
        s = np.empty(self.n)
        softmax_into(u, False, self._chunk_rows, s)
        y = np.empty((self.m, 1))
        dense_rmatmat(self.V, s[:, None], self._chunk_rows, y)
        y = y[:, 0]
        r = np.maximum(y, 0.0) - self.b
        return s, y, r

    def _weight_term(self, u):
        return 0.5 * dot(u, self.w * u)

    def loss(self, u):
        """½‖ReLU(Vᵀ softmax(u)) − b‖² + ½ Σ w u²."""
        _, _, r = self._outputs(u)
        return 0.5 * dot(r, r) + self._weight_term(u)

    def vectors(self, u):
        s, y, r = self._outputs(u)
        active = y > 0.0
        rho = np.empty(self.n)
        dense_matvec(self.V, np.where(active, r, 0.0), rho)
        c = dot(s, rho)
        Q = np.empty((self.n, self.m + 3))
        beta = np.empty(self.n)
        softmax_relu_vectors(u, s, rho, self.V, y, c, self.w, Q, beta)
        S = np.eye(self.k)
        S[:2, :2] = [[2.0 * c, -1.0], [-1.0, 0.0]]
        loss = 0.5 * dot(r, r) + self._weight_term(u)
        return ModelVectors(loss, Q, beta, S, {"c": c, "y": y})

    def reference_model(self):
        return self

    def diagnose(self, u, vectors):
        return diagnose_softmax_relu(vectors.extras["y"], self.b)


def diagnose_softmax_relu(y, b):
    """The dead-output sentence for ``softmax_relu`` (y = Vᵀ softmax(Cx), b of length m), or None."""
    dead = np.flatnonzero((y <= 0.0) & (b > 0.0))
    if dead.size:
        return (f"{dead.size} output ReLU(s) are dead (y_j = (Vᵀ softmax(Cx))_j ≤ 0 while b_j > 0, "
                f"e.g. j = {dead[0]}): they cannot recover, so this stationary point is not the optimum")
    return None


def build_model(model, b, row_weights, V):
    if model == "softmax_relu":
        return SoftmaxRelu(b, row_weights, V)
    return SoftmaxRegression(b, row_weights, relu=(model == "relu_softmax"))
