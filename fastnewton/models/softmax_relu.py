"""``softmax_relu``: h(u) = ReLU(Vᵀ softmax(u)) (arXiv 2311.15390); V is n × m, b has length m.

With s = softmax(u), y = Vᵀs, a = 1[y > 0], r = ReLU(y) − b, ρ = V(a ⊙ r), c = ⟨s, ρ⟩:
  q = s ⊙ ρ − c s + w ⊙ u,  β = s ⊙ ρ − c s + w,  U = [s, s ⊙ ρ, J V],
  S = [[2c, −1], [−1, 0]] ⊕ diag(a), with (J V)_ij = s_i·(V_ij − y_j) = ∂y_j/∂u_i. Every output's
column is kept (S drops the inactive ones from the Hessian): P = CᵀU then holds ∇y_j for all j, which
the one-sided step of ``fastnewton.active_set`` needs for outputs at their kink.
Stages: (1) the blocks' log-partition parts; (2) s kept, the partials of y = Vᵀs and Σ w u² back
→ y, a, r and the loss; (3) ρ, Q = [s ρ + w u, s, s ρ, J V] and the partial of c back
→ ∇L = Cᵀ(s ρ + w u) − c·Cᵀs.

With output offsets o (the lifted surrogate of ``fastnewton.lifted_start``; o = 0 for the real
loss) the outputs are ReLU(y + o) − (b + o): a = 1[y + o > 0] and r = a ⊙ (y − b) − (1 − a) ⊙ (b + o),
all on the driver; the row stages are unchanged (J·1 = 0 makes J V diag(a) offset-free).
"""
import numpy as np

from ..kernels.dense import dense_matvec, dense_rmatmat
from ..kernels.softmax import softmax_relu_columns, softmax_relu_gradient_rounding
from ..lifted_start import lifted_solve_rounds, output_offsets, simplex_start_rounds
from ..reductions import dot, norm
from ..newton import run_requests
from .base import ColumnCurvature, Model, Stage, softmax_rows, keep_log_partition, log_partition_rows


class SoftmaxRelu(ColumnCurvature, Model):
    """h(u) = ReLU(Vᵀ softmax(u)); ``b`` is the length-m target; ``output_offset`` o lifts the
    outputs to ReLU(y + o) − (b + o) (default 0: the model itself)."""

    name = "softmax_relu"
    uses_values = True
    # The loss depends on u only through s = softmax(u) (with or without output offsets).
    shift_invariant = True

    def __init__(self, b, output_offset=None):
        self.b = b
        self.m = b.shape[0]
        self.k = self.m + 2
        self.output_offset = np.zeros(self.m) if output_offset is None else output_offset
        first = Stage(_log_partition, keep_log_partition)
        outputs = Stage(_outputs, self._residual)
        self.evaluation = (first, outputs, Stage(_columns, self._gradient))
        self.loss_stages = (first, outputs)

    def _residual(self, summary, known):
        """y = Σ_blocks V_pᵀs_p, a = 1[y + o > 0], r = ReLU(y + o) − (b + o), L = ½‖r‖² + ½ Σ w u²."""
        y = summary["y"]
        active = y + self.output_offset > 0.0
        # Written so that o cancels exactly on active outputs (o = 0 gives ReLU(y) − b bit for bit).
        r = np.where(active, y - self.b, -(self.b + self.output_offset))
        return {"y": y, "active": active, "active_residual": np.where(active, r, 0.0),
                "loss": 0.5 * dot(r, r) + 0.5 * summary["weighted_square"]}

    def _gradient(self, summary, known):
        G, c = summary["G"], summary["c"]
        S = np.diag(np.append([0.0, 0.0], known["active"].astype(np.float64)))
        S[:2, :2] = [[2.0 * c, -1.0], [-1.0, 0.0]]
        return {"c": c, "gradient": G[:, 0] - c * G[:, 1], "S": S}

    def target_norm(self, facts):
        return norm(self.b)

    def facts(self, block):
        # max|V| (the bound on ∇L(0)'s rounding); a block's V may have no rows, whose maximum is 0.
        return {"max_abs_V": _max_abs(block.V)}

    def gradient_rounding(self, n, facts, rounding):
        """``kernels.softmax.softmax_relu_gradient_rounding`` with B = max|b| + max|o| (the compiled loop of many
        small problems calls it too)."""
        largest_target = _max_abs(self.b) + _max_abs(self.output_offset)
        return softmax_relu_gradient_rounding(n, self.m, facts["max_abs_V"], largest_target, rounding)

    def ones_columns(self, known):
        """Uᵀ1 = [Σs, ⟨s, ρ⟩, (J V)ᵀ1] = [1, c, 0, …, 0] (J1 = s − s·Σs = 0)."""
        t = np.zeros(self.k)
        t[0], t[1] = 1.0, known["c"]
        return t

    def diagnose(self, known, loss, facts, loss_at_zero):
        """Dead outputs: y_j + o_j ≤ 0 while b_j + o_j > 0 cannot recover (ReLU'(y_j + o_j) = 0)."""
        dead = np.flatnonzero((known["y"] + self.output_offset <= 0.0) & (self.b + self.output_offset > 0.0))
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

    def one_sided_outputs(self, known, P):
        """(∇y_j as the columns of a d × k array, y_j) for the outputs whose loss is ½ max(y_j, 0)² (b_j = 0,
        no offset), or None: see ``fastnewton.active_set``."""
        one_sided = self.one_sided_indices()
        if one_sided.size == 0 or P is None:
            return None
        return P[:, 2 + one_sided], known["y"][one_sided]

    def one_sided_indices(self):
        """The outputs whose loss term is ½ max(y_j, 0)²: b_j = 0 and no offset."""
        return np.flatnonzero((self.b == 0.0) & (self.output_offset == 0.0))

    def with_kinks_moved(self, outputs, margin):
        """This model with the one-sided terms ½ max(y_j, 0)² of ``outputs`` replaced by ½ max(y_j + margin, 0)²
        (target −margin lifted by the offset margin: r_j = ReLU(y_j + margin) − 0), whose minimisers keep
        y_j ≤ −margin unless the rest of the loss pulls y_j up (``fastnewton.lifted_start``'s branch probe)."""
        b, offset = self.b.copy(), self.output_offset.copy()
        b[outputs], offset[outputs] = -margin, margin
        return SoftmaxRelu(b, offset)

    def auto_start(self, problem):
        return run_requests(self.auto_start_rounds(problem))

    def auto_start_rounds(self, problem):
        """Stage 1 of ``fastnewton.lifted_start``: the simplex vector s ≥ floor closest to uniform with
        Vᵀs = b on active outputs (and 0 on inactive ones that would otherwise be positive), then the
        s-weighted fit of log s on [C, 1]."""
        return (yield from simplex_start_rounds(problem, self.b))

    def auto_solve_rounds(self, problem, build_system, options, timer=None, clock=None):
        """``fastnewton.lifted_start.lifted_solve_rounds``: stage 1, Newton on this model with the outputs
        lifted by offsets (ridge continuation), then on the real loss. Without ``options.continuation``:
        stage 1, then one Newton loop on the real loss."""
        if not options.continuation:
            return (yield from super().auto_solve_rounds(problem, build_system, options, timer, clock))
        return (yield from lifted_solve_rounds(problem, self.lifted(problem), build_system, options, timer=timer,
                                               clock=clock))

    def solve_from_rounds(self, problem, x0, description, build_system, options, timer=None, clock=None):
        """From a caller's x0: stages 2 and 3 of ``fastnewton.lifted_start`` from x0 in stage 1's place
        (``options.continuation``, the default), else one Newton loop on the real loss."""
        if not options.continuation:
            return (yield from super().solve_from_rounds(problem, x0, description, build_system, options, timer,
                                                         clock))
        return (yield from lifted_solve_rounds(problem, self.lifted(problem), build_system, options, timer=timer,
                                               clock=clock, start=(x0, description)))

    def lifted(self, problem):
        """This model with every active output lifted by ``output_offsets``: the surrogate of the staged solve."""
        return SoftmaxRelu(self.b, output_offsets(problem, self.b))


def _log_partition(block, kept, known):
    return log_partition_rows(block, kept, False)


def _outputs(block, kept, known):
    s = kept["e"] * known["log_partition"].factor(kept["block_top"])
    y = np.empty((block.V.shape[1], 1))
    dense_rmatmat(block.V, s[:, None], block.chunk, y)
    u = kept["u"]
    return {"y": y[:, 0], "weighted_square": dot(u, block.w * u)}, {"s": s}


def _columns(block, kept, known):
    rho = block.buffers.empty(block.rows)
    dense_matvec(block.V, known["active_residual"], rho)
    Q = block.buffers.empty((block.rows, block.V.shape[1] + 3))
    softmax_relu_columns(kept["u"], kept["s"], rho, block.V, known["y"], block.w, Q)
    return {"c": dot(kept["s"], rho)}, {"Q": Q}


def _max_abs(a):
    return float(np.max(np.abs(a), initial=0.0))
