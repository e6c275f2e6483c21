"""``softmax_relu``: h(u) = ReLU(Vᵀ softmax(u)) (arXiv 2311.15390); V is n × m, b has length m.

With s = softmax(u), y = Vᵀs, a = 1[y > 0], r = ReLU(y) − b, ρ = V(a ⊙ r), c = ⟨s, ρ⟩:
  q = s ⊙ ρ − c s + w ⊙ u,  β = s ⊙ ρ − c s + w,  U = [s, s ⊙ ρ, J V diag(a)],
  S = [[2c, −1], [−1, 0]] ⊕ I_m, with (J V diag(a))_ij = a_j·s_i·(V_ij − y_j).
Stages: (1) the blocks' log-partition parts; (2) s kept, the partials of y = Vᵀs and Σ w u² back
→ y, r and the loss; (3) ρ, Q = [s ρ + w u, s, s ρ, J V diag(a)] and the partial of c back
→ ∇L = Cᵀ(s ρ + w u) − c·Cᵀs.
"""
import numpy as np
import scipy.linalg

from ..kernels.dense import dense_matvec, dense_rmatmat
from ..kernels.softmax import curvature_weights, softmax_relu_columns
from ..reductions import dot, norm
from ..start import log_linear_fit
from .base import Model, Stage, softmax_rows, keep_log_partition, log_partition_rows

# Floor of the start's simplex vector, as a fraction of the uniform value 1/n.
SIMPLEX_FLOOR = 1e-3


class SoftmaxRelu(Model):
    """h(u) = ReLU(Vᵀ softmax(u)); ``b`` is the length-m target."""

    name = "softmax_relu"
    uses_values = True

    def __init__(self, b):
        self.b = b
        self.m = b.shape[0]
        self.k = self.m + 2
        first = Stage(_log_partition, keep_log_partition)
        outputs = Stage(_outputs, self._residual)
        self.evaluation = (first, outputs, Stage(_columns, self._gradient))
        self.loss_stages = (first, outputs)

    def _residual(self, summary, known):
        """y = Σ_blocks V_pᵀs_p, r = ReLU(y) − b, L = ½‖r‖² + ½ Σ w u²."""
        y = summary["y"]
        r = np.maximum(y, 0.0) - self.b
        return {"y": y, "active_residual": np.where(y > 0.0, r, 0.0),
                "loss": 0.5 * dot(r, r) + 0.5 * summary["weighted_square"]}

    def _gradient(self, summary, known):
        G, c = summary["G"], summary["c"]
        S = np.eye(self.k)
        S[:2, :2] = [[2.0 * c, -1.0], [-1.0, 0.0]]
        return {"c": c, "gradient": G[:, 0] - c * G[:, 1], "S": S}

    def curvature(self, block, kept, known):
        beta = np.empty(block.rows)
        curvature_weights(kept["Q"], known["c"], block.w, beta)
        return beta

    def target_norm(self, facts):
        return norm(self.b)

    def diagnose(self, known, loss, facts, loss_at_zero):
        """Dead outputs: y_j ≤ 0 while b_j > 0 cannot recover (ReLU'(y_j) = 0)."""
        dead = np.flatnonzero((known["y"] <= 0.0) & (self.b > 0.0))
        if dead.size:
            return (f"{dead.size} output ReLU(s) are dead (y_j = (Vᵀ softmax(Cx))_j ≤ 0 while b_j > 0, "
                    f"e.g. j = {dead[0]}): they cannot recover, so this stationary point is not the optimum")
        return None

    def predict(self, block, u):
        """ReLU(Vᵀ softmax(u)) (one block holding every row: the normaliser is its own)."""
        s = softmax_rows(block, u, False)
        y = np.empty((block.V.shape[1], 1))
        dense_rmatmat(block.V, s[:, None], block.chunk, y)
        return np.maximum(y[:, 0], 0.0)

    def relu_inputs(self, known, kept):
        return "output(s) with yⱼ = (Vᵀ softmax(Cx))ⱼ", known["y"]

    def auto_start(self, problem):
        """The simplex vector s closest to uniform with (Vᵀs)_j = b_j on active outputs (b_j > 0) and
        (Vᵀs)_j = 0 on inactive outputs that would otherwise be positive (a closed-form minimum-norm
        solution on an active set), floored and renormalised; then the s-weighted fit of log s on [C, 1]."""
        b, n = self.b, problem.n
        equal = b > 0.0
        targets = np.where(equal, b, 0.0)
        for _ in range(b.shape[0] + 1):
            active_outputs = np.flatnonzero(equal)
            columns = problem.map_blocks(_simplex_columns, active_outputs)
            y_uniform = columns["column_sums"] / n
            # min ‖s − 1/n‖² s.t. V_Eᵀ s = b_E, 1ᵀs = 1: s = 1/n + [V_E, 1] λ, a (|E|+1)-square system.
            residual = np.append(targets[active_outputs] - y_uniform[active_outputs], 0.0)
            lam = scipy.linalg.lstsq(columns["AtA"], residual, check_finite=False)[0]
            outputs = problem.map_blocks(_simplex_outputs, n, active_outputs, lam)
            newly = (~equal) & (outputs["y"] > 0.0)
            if not newly.any():
                break
            equal |= newly
        x = log_linear_fit(problem, _simplex_vector, (n, active_outputs, lam, outputs["floored_sum"]))
        return x, ("auto: simplex vector closest to uniform with Vᵀs = b on active outputs, then an "
                   "s-weighted least-squares fit of log s on [C, 1]")


def _log_partition(block, kept, known):
    return log_partition_rows(block, kept, False)


def _outputs(block, kept, known):
    s = kept["e"] * known["log_partition"].factor(kept["block_top"])
    y = np.empty((block.V.shape[1], 1))
    dense_rmatmat(block.V, s[:, None], block.chunk, y)
    u = kept["u"]
    return {"y": y[:, 0], "weighted_square": dot(u, block.w * u)}, {"s": s}


def _columns(block, kept, known):
    rho = np.empty(block.rows)
    dense_matvec(block.V, known["active_residual"], rho)
    Q = np.empty((block.rows, block.V.shape[1] + 3))
    softmax_relu_columns(kept["u"], kept["s"], rho, block.V, known["y"], block.w, Q)
    return {"c": dot(kept["s"], rho)}, {"Q": Q}


def _simplex_matrix(block, active_outputs):
    return np.column_stack([block.V[:, active_outputs], np.ones(block.rows)])


def _simplex_columns(block, active_outputs):
    """Partials of AᵀA for A = [V_E, 1] and of Vᵀ1."""
    A = _simplex_matrix(block, active_outputs)
    return {"AtA": A.T @ A, "column_sums": block.V.sum(axis=0)}


def _simplex_outputs(block, n, active_outputs, lam):
    """Partials of Vᵀs for s = 1/n + A λ, and of Σ max(s, floor/n)."""
    s = 1.0 / n + _simplex_matrix(block, active_outputs) @ lam
    return {"y": block.V.T @ s, "floored_sum": float(np.maximum(s, SIMPLEX_FLOOR / n).sum())}


def _simplex_vector(block, parameters):
    """s = max(1/n + A λ, floor/n) / Σ max(·) on the block's rows."""
    n, active_outputs, lam, total = parameters
    return np.maximum(1.0 / n + _simplex_matrix(block, active_outputs) @ lam, SIMPLEX_FLOOR / n) / total
