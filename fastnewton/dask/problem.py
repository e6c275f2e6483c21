"""``DaskProblem``: the driver's ``Evaluator`` (``fastnewton.protocol``) over row blocks on a cluster.

Rounds per evaluation (x moves out, partials come back; u, Q, β stay on the workers): the
model's stages (``fastnewton.models``), one round each. The first rides on the forward pass
u_p = C_p x; the one that keeps Q rides on the transposed pass C_pᵀQ_p; after each round the
driver sums the blocks' summaries and the stage's ``combine`` turns them into the globals the
next stage needs (e.g. softmax: (1) the blocks' log-partition parts → the normaliser; (2) Q_p
and the partials of c, γ, the loss and C_pᵀQ_p → L, ∇L = G₀ − c·G₁ + λx, P = [G₁, G₂]).

- Hessian, ``exact``: one round, β_p from the model on the worker, back C_pᵀ diag(β_p) C_p (d × d).
  ``sketch``/``pcg``: three rounds: back the block's OSNAP share S_pB_p (4d × d) → R on the driver;
  Z = R⁻¹G (d × 16) out, back Σℓ_p; s/Σℓ out, back the sampled sandwich (d × d).
  ``pcg``: one round per CG iteration, p out, C_pᵀ(β_p ⊙ C_p p) back (d).
- Line search: one round for C_p p (back ‖C_p p‖∞ and the first loss stage at u_p + C_p p), then per
  trial the remaining loss stages: one round for the full step t = 1 of an uncapped direction (two
  for softmax_relu), one more for any other t (the first loss stage at u_p + t·C_p p). The accepted
  trial's u_p + t·C_p p and first stage start the next evaluation (no forward round; see
  ``fastnewton.newton.CarriedForward`` for when u is formed afresh).
- relu_softmax's kink test (``fastnewton.kinks``): one round per iteration (``DaskRowStates``): the global
  max|u| out (it came back with the evaluation's first stage), with the rows the last step held; back each
  block's candidate rows (≤ MAX_CANDIDATE_ROWS in all: index, dense row of C, table row). The previous u and the
  sign-flip counters stay on the workers. A held step adds no round with a factor (its solves are the driver's)
  and, with CG, the Hessian-vector rounds of its projected CG. A stall adds one round for its message's kink
  sentence (``DaskRowStates.stall_sentence``: each block's count of rows at the kink and its first).
"""
import copy
from types import SimpleNamespace

import numpy as np

from ..kernels.kinks import MAX_CANDIDATE_ROWS
from ..kinks import NO_ROWS, RELU_INPUTS, RowStates, kink_text
from ..models import build_model, uses_values
from ..models.base import checked_evaluation
from ..protocol import Evaluation, add_low_rank_and_ridge, no_timer
from ..reductions import half_ridge
from ..sketching import embedding_factor, jl_directions, uncentred_sandwich, worth_centring
from ..validation import as_l2, as_vector
from . import blocks
from .rounds import Rounds


class DaskProblem:
    """L(x) = ½‖h(Cx) − b‖² + ½ Σᵢ wᵢ (Cx)ᵢ² + ½ λ‖x‖² for C held as row blocks (futures of ``blocks.Block``) on a Dask cluster."""

    # Leverage scores are estimated afresh each iteration (``sampled_sandwich``): ``auto`` prices that.
    reuses_leverage_scores = False

    def __init__(self, client, block_futures, n, d, model, b, l2):
        self.rounds = Rounds(client, block_futures)
        self.model = model
        self.n, self.d = n, d
        self.l2 = l2
        self.b = b  # the length-m target of a model with a value matrix; None when b is per row (in the blocks)
        self.row_model = build_model(model, b if uses_values(model) else None)
        self.meta = self.rounds.reduce(self.rounds.run(blocks.block_meta, args=(self.row_model,)))
        self.facts = self.row_model.complete_facts(self.meta, self.map_blocks)
        dense = self.meta["dense_rows"] == n
        self.matrix = SimpleNamespace(n=n, d=d, nnz=int(self.meta["nnz"]), format="dense" if dense else "csr",
                                      nbytes=int(self.meta["bytes"]))
        self._loss_at_zero = None

    def __repr__(self):
        return (f"DaskProblem(model={self.model!r}, n={self.n}, d={self.d}, nnz={self.matrix.nnz}, "
                f"blocks={len(self.rounds.blocks)}, l2={self.l2})")

    def as_point(self, x, name="x"):
        return as_vector(x, name, self.d, " (columns of C)")

    # -- evaluation ---------------------------------------------------------------------------------
    def run_stages(self, stages, held, timer=no_timer, first_summary=None):
        """The model's stages after the first (whose round made ``held``; its reduced summary when
        already known): (known, futures kept)."""
        known = {}
        for index, stage in enumerate(stages):
            if index:
                with timer("gradient" if index == len(stages) - 1 else "model"):
                    held = self.rounds.run(blocks.stage, held, args=(stage.rows, known))
                    summary = self.rounds.reduce(held)
            elif first_summary is not None:
                summary = first_summary
            else:
                with timer("forward"):
                    summary = self.rounds.reduce(held)
            known = {**known, **stage.combine(summary, known)}
            if "max_abs_u" in summary:  # the first stage's max|u| (relu_softmax: the kink test's scale)
                known["max_abs_u"] = summary["max_abs_u"]
            if "G" in summary:
                known["G"] = summary["G"]
        return known, held

    def _forward(self, x, model, timer=no_timer):
        """Round 1 (no pass over C at x = 0): u_p = C_p x and the model's first stage."""
        with timer("forward"):
            return self.rounds.run(blocks.forward, args=(x if np.any(x) else None, model.evaluation[0].rows,
                                                         self.kink_rows_model(model)))

    def evaluate(self, x, timer=None, reference=False):
        """Evaluation at a validated x (``reference``: the model whose gradient at 0 sets g_ref)."""
        timer = timer or no_timer
        model = self.row_model.reference() if reference else self.row_model
        return self.evaluate_from(x, self._forward(x, model, timer), timer, model=model)

    def evaluate_from(self, x, held, timer=no_timer, first_summary=None, model=None):
        """The evaluation at x from the round of its first stage (``held``; its reduced summary when known)."""
        model = model or self.row_model
        known, held = self.run_stages(model.evaluation, held, timer, first_summary)
        G = known["G"]
        grad, loss, S = checked_evaluation(known, self.model, self.d, model.k)
        return Evaluation(x.copy(), loss + half_ridge(self.l2, x), grad + self.l2 * x, np.ascontiguousarray(G[:, 1:]),
                          S, known, held)

    def loss(self, x):
        """L(x): round 1 and the model's loss stages, no transposed pass (no pass over C at all at x = 0)."""
        held = self.rounds.run(blocks.forward, args=(x if np.any(x) else None, self.row_model.loss_stages[0].rows,
                                                     self.kink_rows_model()))
        return self.loss_from(held, x)

    def loss_from(self, held, x, first_summary=None):
        """L at a trial whose first loss stage made ``held`` (later stages run here)."""
        known, _ = self.run_stages(self.row_model.loss_stages, held, first_summary=first_summary)
        return known["loss"] + half_ridge(self.l2, x)

    def beta(self, ev):
        if ev.beta is None:
            ev.beta = self.rounds.run(blocks.curvature, ev.kept, args=(self.row_model, ev.known))
        return ev.beta

    # -- the rest of the Evaluator interface --------------------------------------------------------
    def hessian_matrix(self, ev, sandwich=None):
        if sandwich is None:
            sandwich = self.rounds.reduce(self.rounds.run(blocks.sandwich, self.beta(ev)))["H"]
        return add_low_rank_and_ridge(sandwich, ev.P, ev.S, self.l2)

    def sampled_sandwich(self, ev, s, rng, reference=None):
        """The leverage-score sample of ``fastnewton.sketching``, block by block (per-block seeded streams).

        The scores are estimated afresh every iteration (embedding, factor, JL pass), since the blocks
        keep no per-row state between rounds: ``reference`` only counts it as a refresh. Of the centred
        rows where the model allows it, as on one machine (``Problem.sampled_sandwich``)."""
        if reference is not None:
            reference.refreshes += 1
        beta = self.beta(ev)
        mean = self.sampling_mean()
        seed = int(rng.integers(2**63))
        SB = self.rounds.reduce(self.rounds.run(blocks.embed, beta, args=(seed, mean)))["SB"]
        Z = jl_directions(embedding_factor(SB, self.l2), rng)
        scores = self.rounds.run(blocks.scores, beta, args=(Z, mean))
        total = self.rounds.reduce(scores)["total"]
        summary = self.rounds.reduce(self.rounds.run(blocks.sampled_sandwich, beta, scores,
                                                     args=(s, total, seed, mean)))
        sandwich = summary["H"]
        if mean is not None:
            sandwich = uncentred_sandwich(sandwich, mean, ev.P, ev.S, self.row_model.ones_columns(ev.known))
        return sandwich, int(summary["kept"])

    def sampling_mean(self):
        """μ = C's column mean (from the blocks' column sums) when the sketch samples centred rows: a
        ``shift_invariant`` model and no non-zero row weight (``Problem.sampling_mean``); else None."""
        if (not getattr(self.row_model, "shift_invariant", False) or "column_sums" not in self.meta
                or self.meta["weighted_blocks"]):
            return None
        mean = self.meta["column_sums"] / self.n
        return mean if worth_centring(self.meta["column_squares"], mean, self.n) else None

    def hessian_product(self, ev, p):
        Hp = self.rounds.reduce(self.rounds.run(blocks.hessian_vector, self.beta(ev), args=(p,)))["Hp"]
        return Hp + ev.P @ (ev.S @ (ev.P.T @ p)) + self.l2 * p

    def line(self, ev, p):
        return DaskLine(self, ev, p)

    def target_norm(self):
        return self.row_model.target_norm(self.facts)

    def gradient_at_zero(self):
        return self.evaluate(np.zeros(self.d), reference=True).grad

    def column_norms(self):
        return np.sqrt(self.meta["column_squares"])

    def relu_inputs(self, ev):
        # n-long arrays (relu_softmax's u) stay on the workers: only driver-side globals are offered.
        return self.row_model.relu_inputs(ev.known, None)

    def relu_kink_inputs(self, ev):
        # u, e and b stay on the workers: the kink test runs there block by block (``kink_states``).
        return self.row_model.relu_kink_inputs(ev.known, None, None)

    def relu_rows(self, index):
        raise NotImplementedError("the rows of C stay on the workers (the kink candidates' rows come back with "
                                  "their test: DaskRowStates)")

    def kink_rows_model(self, model=None):
        """Whether ``model`` (default the problem's) passes u through ReLU before a softmax (relu_softmax): its
        evaluations bring back max|u| and its iterations run the kink test (``DaskRowStates``)."""
        model = model or self.row_model
        return model.name == "relu_softmax"

    def kink_states(self, ev):
        """The kink test's per-row state, kept on the workers (``DaskRowStates``); for other models the driver-side
        ReLU inputs (softmax_relu's outputs y: ``RowStates``, for the stall message's kink sentence)."""
        return DaskRowStates(self) if self.kink_rows_model() else RowStates(self, ev)

    def one_sided_outputs(self, ev):
        return self.row_model.one_sided_outputs(ev.known, ev.P)

    def _loss_at_zero_value(self):
        if self._loss_at_zero is None:
            self._loss_at_zero = self.loss(np.zeros(self.d))
        return self._loss_at_zero

    def diagnose(self, ev):
        return self.row_model.diagnose(ev.known, ev.known["loss"], self.facts, self._loss_at_zero_value)

    def iteration_extras(self):
        return self.rounds.take_counts()

    def auto_start(self):
        return self.row_model.auto_start(self)

    def auto_solve(self, build_system, options, timer=None, clock=None):
        return self.row_model.auto_solve(self, build_system, options, timer=timer, clock=clock)

    def solve_from_rounds(self, x0, description, build_system, options, timer=None, clock=None):
        return self.row_model.solve_from_rounds(self, x0, description, build_system, options, timer, clock)

    def with_model(self, row_model, l2):
        """This problem for another model of the same targets (its ``facts`` are these) and ridge ``l2``:
        the same blocks on the workers and the same round counters; no round is run."""
        other = copy.copy(self)
        other.row_model = row_model
        other.l2 = as_l2(l2)
        other._loss_at_zero = None
        return other

    def map_blocks(self, function, *args):
        """function(block, *args) on every block, the summaries summed (``max_`` keys: the maximum)."""
        return self.rounds.reduce(self.rounds.run(blocks.apply, args=(function, args)))

    def gather_blocks(self, function, *args):
        """[function(block, *args)] for the blocks in row order."""
        return self.rounds.gather(self.rounds.run(blocks.apply, args=(function, args)))


class DaskRowStates:
    """``fastnewton.kinks.RowStates`` with the per-row state on the workers: each block keeps its previous u and
    sign-flip counters (``blocks.kink_rows``); the driver keeps only the rows the last step held."""

    def __init__(self, problem):
        self.problem = problem
        self.states = [None] * len(problem.rounds.blocks)
        self.held, self.held_states = NO_ROWS, np.zeros(0, dtype=np.int8)

    def candidates(self, ev, rtol):
        """One round: (index, rows, table, rows at the kink) of the candidates at ev, or None (none, or more than
        MAX_CANDIDATE_ROWS in all, as on one machine); counts the sign flips on the workers."""
        rounds, known = self.problem.rounds, ev.known
        futures = rounds.run(blocks.kink_rows, ev.kept, self.states,
                             args=(rtol, known["max_abs_u"], self.held, self.held_states, ev.x,
                                   known["log_partition"], known["c"]))
        found = rounds.gather(futures)
        self.states = futures
        counts = [summary["count"] for summary in found]
        if min(counts) < 0 or not 0 < sum(counts) <= MAX_CANDIDATE_ROWS:
            return None
        found = [summary for summary in found if summary["count"] > 0]  # blocks in row order: rows ascending
        return (np.concatenate([summary["index"] for summary in found]),
                np.concatenate([summary["rows"] for summary in found]),
                np.concatenate([summary["table"] for summary in found]),
                sum(summary["at_kink"] for summary in found))

    def stall_sentence(self, ev):
        """The STALLED message's kink sentence at ev (``kink_sentence``'s rows, counted on the workers from the flips
        and u that the last ``candidates`` round kept there: one round), or None."""
        if any(state is None for state in self.states):
            return None
        rounds = self.problem.rounds
        found = rounds.gather(rounds.run(blocks.rows_near_kink, self.states, args=(ev.known["max_abs_u"],)))
        count = sum(summary["count"] for summary in found)
        if count == 0:
            return None
        first = min(summary["first"] for summary in found if summary["count"])
        return kink_text(RELU_INPUTS, count, first, True)

    def after_step(self, ev, held, state):
        """A step from ev held the rows ``held`` (global indices) with ``state``: sent with the next round."""
        self.held, self.held_states = held, np.full(held.size, state, dtype=np.int8)


class DaskLine:
    """The line x + t·p: C_p p stays on the workers; a trial costs the model's loss stages and no pass
    over C, and the full step t = 1 of an uncapped direction rides its first stage on C_p p's round."""

    def __init__(self, problem, ev, p):
        self.problem, self.ev, self.p = problem, ev, p
        self.first = problem.row_model.loss_stages[0].rows
        self.magnitude = problem.kink_rows_model()
        self.directions = problem.rounds.run(blocks.direction, ev.kept, args=(p, self.first, self.magnitude))
        self.full_step = problem.rounds.reduce(self.directions)
        self.largest = self.full_step["max_abs"]
        self.factor = 1.0
        self.trial = None

    def scale(self, factor):
        self.p *= factor
        self.factor *= factor
        self.largest *= factor

    def loss(self, t):
        problem = self.problem
        step = t * self.factor
        x_t = self.ev.x + t * self.p
        if step == 1.0:
            self.trial = t, self.directions, self.full_step
            return problem.loss_from(self.directions, x_t, self.full_step)
        held = problem.rounds.run(blocks.shifted_forward, self.ev.kept, self.directions,
                                  args=(step, self.first, self.magnitude))
        self.trial = t, held, None
        return problem.loss_from(held, x_t)

    def evaluate(self, t, timer=None):
        """The evaluation at x + t·p from u_p + t·C_p p on the workers: the trial's round when t was the
        last trial and the model's first loss stage is its first evaluation stage, else one round."""
        problem = self.problem
        first = problem.row_model.evaluation[0].rows
        if self.trial is not None and self.trial[0] == t and first == self.first:
            _, held, summary = self.trial
        else:
            held, summary = problem.rounds.run(blocks.shifted_forward, self.ev.kept, self.directions,
                                               args=(t * self.factor, first, self.magnitude)), None
        return problem.evaluate_from(self.ev.x + t * self.p, held, timer or no_timer, summary)
