"""``DaskProblem``: the Newton driver's interface (the same as ``Problem``'s) over row blocks on a cluster.

Rounds per evaluation (x moves out, partials come back; u, Q, β stay on the workers):

- ``softmax``/``relu_softmax``: (1) u_p = C_p x, back (max z_p, Σ exp(z_p − max z_p)) → global lse;
  (2) Q_p = [m s r + w u, m s, m v], back Σ s r, Σ (3s − 2b) s, Σ r² + w u², C_pᵀQ_p (d × 3);
  the driver forms c, γ, L, ∇L = G₀ − c·G₁ + λx and P = [G₁, G₂].
- ``softmax_relu``: (1) as above; (2a) s_p = exp(u_p − lse), back V_pᵀs_p (m) and Σ w u² → y, r, L;
  (2b) ρ_p = V_p(a ⊙ r), Q_p = [s ρ + w u, s, s ρ, J V diag(a)], back Σ s ρ and C_pᵀQ_p (d × (m + 3)).
- Hessian, ``exact``: one round, β_p = Q₂ − c Q₁ + w on the worker, back C_pᵀ diag(β_p) C_p (d × d).
  ``sketch``/``pcg``: three rounds: back the block's OSNAP share S_pB_p (4d × d) → R on the driver;
  Z = R⁻¹G (d × 16) out, back Σℓ_p; s/Σℓ out, back the sampled sandwich (d × d).
  ``pcg``: one round per CG iteration, p out, C_pᵀ(β_p ⊙ C_p p) back (d).
- Line search: one round for C_p p (back ‖C_p p‖∞ and the lse parts of u_p + C_p p), then per trial
  the loss partials (softmax_relu: V_pᵀs_p and Σ w u²): one round for the full step t = 1, two for
  any other t (first the lse parts of u_p + t·C_p p).
"""
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..models import diagnose_softmax_regression, diagnose_softmax_relu
from ..problem import _no_timer, add_low_rank_and_ridge, kink_sentence
from ..reductions import dot, norm
from ..sketching import embedding_factor, jl_directions
from ..validation import as_vector
from . import blocks
from .rounds import Rounds


@dataclass
class DaskEvaluation:
    """One point x: what the driver holds (loss, gradient, P, S, c) and the futures of what stays on workers."""

    x: np.ndarray
    loss: float
    grad: np.ndarray
    P: np.ndarray
    S: np.ndarray
    c: float
    held: list
    top: float  # max over rows of z = m ⊙ u (> 0 iff some ReLU is active)
    y: object = None  # softmax_relu: Vᵀ softmax(Cx)
    beta: object = None  # futures of β_p, formed when a Hessian needs them


class DaskProblem:
    """L(x) of SPEC §1 for C held as row blocks (futures of ``blocks.Block``) on a Dask cluster."""

    def __init__(self, client, block_futures, n, d, model, b, l2):
        self.rounds = Rounds(client, block_futures)
        self.model = model
        self.n, self.d = n, d
        self.l2 = l2
        self.b = b  # softmax_relu's length-m target; None for the others (their b lives in the blocks)
        self.relu = model == "relu_softmax"
        self.meta = self.rounds.reduce(self.rounds.run(blocks.block_meta))
        dense = self.meta["dense_rows"] == n
        self.matrix = SimpleNamespace(n=n, d=d, nnz=int(self.meta["nnz"]), format="dense" if dense else "csr",
                                      nbytes=int(self.meta["bytes"]))
        self._loss_at_zero = None

    def __repr__(self):
        return (f"DaskProblem(model={self.model!r}, n={self.n}, d={self.d}, nnz={self.matrix.nnz}, "
                f"blocks={len(self.rounds.blocks)}, l2={self.l2})")

    def _as_point(self, x, name="x"):
        return as_vector(x, name, self.d, " (columns of C)")

    # -- evaluation ---------------------------------------------------------------------------------
    def _forward(self, x, relu):
        """Round 1 (no pass over C at x = 0): the futures of u_p, the global lse and max z."""
        if not np.any(x):
            held = self.rounds.run(blocks.zero_forward)
        else:
            held = self.rounds.run(blocks.forward, args=(x, relu))
        parts = [summary["parts"] for summary in self.rounds.gather(held)]
        return held, blocks.log_sum_exp(parts), max(zmax for zmax, _ in parts)

    def _evaluate(self, x, timer=None, reference=False):
        """Evaluation at a validated x (``reference``: relu_softmax's g_ref model, the plain softmax)."""
        timer = timer or _no_timer
        relu = self.relu and not reference
        with timer("forward"):
            held, lse, top = self._forward(x, relu)
        ridge = 0.5 * self.l2 * dot(x, x)
        if self.model == "softmax_relu":
            with timer("model"):
                outputs = self.rounds.run(blocks.relu_outputs, held, args=(lse,))
                y, loss = self._outputs_loss(outputs, ridge)
                active_residual = np.where(y > 0.0, np.maximum(y, 0.0) - self.b, 0.0)
            with timer("gradient"):
                state = self.rounds.run(blocks.relu_gradient, outputs, args=(y, active_residual))
                summary = self.rounds.reduce(state)
            c = summary["c"]
            S = np.eye(self.b.shape[0] + 2)
            S[:2, :2] = [[2.0 * c, -1.0], [-1.0, 0.0]]
        else:
            with timer("gradient"):
                state = self.rounds.run(blocks.regression_gradient, held, args=(lse, relu))
                summary = self.rounds.reduce(state)
            c, y = summary["c"], None
            loss = 0.5 * summary["loss2"] + ridge
            S = np.array([[summary["gamma"], -1.0], [-1.0, 0.0]])
        G = summary["G"]
        grad = G[:, 0] - c * G[:, 1] + self.l2 * x
        return DaskEvaluation(x.copy(), loss, grad, np.ascontiguousarray(G[:, 1:]), S, c, state, top, y)

    def _outputs_loss(self, outputs, ridge):
        """softmax_relu: y = Σ_p V_pᵀs_p and L = ½‖ReLU(y) − b‖² + ½ Σ w u² + ridge."""
        summary = self.rounds.reduce(outputs)
        y = summary["y"]
        r = np.maximum(y, 0.0) - self.b
        return y, 0.5 * dot(r, r) + 0.5 * summary["weighted_square"] + ridge

    def _loss_from_forward(self, held, lse, relu, ridge):
        if self.model == "softmax_relu":
            return self._outputs_loss(self.rounds.run(blocks.relu_outputs, held, args=(lse,)), ridge)[1]
        partials = self.rounds.gather(self.rounds.run(blocks.regression_loss, held, args=(lse, relu)))
        return 0.5 * math.fsum(summary["loss2"] for summary in partials) + ridge

    def _beta(self, ev):
        if ev.beta is None:
            ev.beta = self.rounds.run(blocks.curvature_weights, ev.held, args=(ev.c,))
        return ev.beta

    # -- the driver's interface (see fastnewton.newton) ---------------------------------------------
    def _hessian(self, ev, sandwich=None):
        if sandwich is None:
            sandwich = self.rounds.reduce(self.rounds.run(blocks.sandwich, self._beta(ev)))["H"]
        return add_low_rank_and_ridge(sandwich, ev.P, ev.S, self.l2)

    def _sampled_sandwich(self, ev, s, rng):
        """The leverage-score sample of ``fastnewton.sketching``, block by block (per-block seeded streams)."""
        beta = self._beta(ev)
        seed = int(rng.integers(2**63))
        SB = self.rounds.reduce(self.rounds.run(blocks.embed, beta, args=(seed,)))["SB"]
        Z = jl_directions(embedding_factor(SB, self.l2), rng)
        scores = self.rounds.run(blocks.scores, beta, args=(Z,))
        total = self.rounds.reduce(scores)["total"]
        summary = self.rounds.reduce(self.rounds.run(blocks.sampled_sandwich, beta, scores, args=(s, total, seed)))
        return summary["H"], int(summary["kept"])

    def _hessp(self, ev, p):
        Hp = self.rounds.reduce(self.rounds.run(blocks.hessian_vector, self._beta(ev), args=(p,)))["Hp"]
        return Hp + ev.P @ (ev.S @ (ev.P.T @ p)) + self.l2 * p

    def _line(self, ev, p):
        return _DaskLine(self, ev, p)

    def _target_norm(self):
        return norm(self.b) if self.b is not None else math.sqrt(self.meta["b_squared"])

    def _gradient_at_zero(self):
        return self._evaluate(np.zeros(self.d), reference=True).grad

    def _gradient_norm_at_zero(self):
        return norm(self._gradient_at_zero())

    def _column_norms(self):
        return np.sqrt(self.meta["column_squares"])

    def _kink(self, before, after):
        if self.model == "softmax_relu":
            return kink_sentence("output(s) with yⱼ = (Vᵀ softmax(Cx))ⱼ", before.y, after.y)
        return None  # relu_softmax's u stays on the workers; the stall message is the generic one

    def _diagnose(self, ev):
        if self.model == "softmax_relu":
            return diagnose_softmax_relu(ev.y, self.b)
        if self._loss_at_zero is None:
            held, lse, _ = self._forward(np.zeros(self.d), self.relu)
            self._loss_at_zero = self._loss_from_forward(held, lse, self.relu, 0.0)
        b_varies = self.meta["max_b"] != -self.meta["max_negated_min_b"]
        return diagnose_softmax_regression(self.relu, ev.top > 0.0, b_varies, ev.loss, self._loss_at_zero,
                                           self.meta["b_squared"])

    def _iteration_extras(self):
        return self.rounds.take_counts()

    def _auto_start(self):
        from .start import auto_start

        return auto_start(self)


class _DaskLine:
    """The line x + t·p: C_p p stays on the workers; each trial costs two rounds and no pass over C,
    except the full step t = 1 of an uncapped direction, whose first round rides on C_p p's."""

    def __init__(self, problem, ev, p):
        self.problem, self.ev, self.p = problem, ev, p
        self.directions = problem.rounds.run(blocks.direction, ev.held, args=(p, problem.relu))
        summaries = problem.rounds.gather(self.directions)
        self.largest = max(summary["max_abs"] for summary in summaries)
        self._full_step_parts = [summary["parts"] for summary in summaries]
        self.factor = 1.0

    def scale(self, factor):
        self.p *= factor
        self.factor *= factor
        self.largest *= factor

    def loss(self, t):
        problem = self.problem
        x_t = self.ev.x + t * self.p
        step = t * self.factor
        if step == 1.0:
            held, parts = self.directions, self._full_step_parts
        else:
            held = problem.rounds.run(blocks.shifted_forward, self.ev.held, self.directions,
                                      args=(step, problem.relu))
            parts = [summary["parts"] for summary in problem.rounds.gather(held)]
        return problem._loss_from_forward(held, blocks.log_sum_exp(parts), problem.relu,
                                          0.5 * problem.l2 * dot(x_t, x_t))
