"""``softmax``: h(u) = softmax(u), and ``relu_softmax``: h(u) = softmax(ReLU(u)) (arXiv 2308.08358).

L = ½‖h(u) − b‖² + ½ Σ w u² with b per row. With m = 1[u > 0] (or 1), s = h(u), r = s − b,
v = s ⊙ (2s − b), c = ⟨s, r⟩, γ = ⟨3s − 2b, s⟩ (sums over all rows):
  q = m ⊙ (s ⊙ r − c s) + w ⊙ u,  β = m ⊙ (v − c s) + w,  U = [m ⊙ s, m ⊙ v],  S = [[γ, −1], [−1, 0]].
Stages: (1) the blocks' log-partition parts → the global normaliser; (2) Q = [m s r + w u, m s, m v]
and the partials of c, γ and the loss → ∇L = Cᵀ(m s r + w u) − c·Cᵀ(m s).
"""
import numpy as np

from ..kernels.softmax import (least_entry_at_or_above, softmax_gradient_rounding, softmax_regression_columns,
                               softmax_regression_loss, target_summary)
from ..start import FloorRows, floor_margin, log_linear_fit_rounds, normal_system_rounds, solve_psd
from ..kinks import RELU_INPUTS
from ..newton import run_requests
from .base import ColumnCurvature, Model, Stage, softmax_rows, half_loss, keep_log_partition, log_partition_rows

# Relative gap above the floor f (``with_floor``) for a row of relu_softmax to count as active
# (above the relative noise of float64 softmax values, below any planted signal).
ACTIVE_RTOL = 1e-6
# Target entries below this fraction of max b are zero at b's own precision (a sum with max b does not see
# them); relu_softmax's start takes its floor f among the others (``with_floor``).
NEGLIGIBLE_TARGET = float(np.finfo(np.float64).eps)


class Softmax(ColumnCurvature, Model):
    """h(u) = softmax(u) (``softmax``) or softmax(ReLU(u)) (``relu_softmax``); b has length n."""

    k = 2
    # ``columns``' summary holds Σ r² + w u² with the bits of ``loss_rows``' (the same sum, row by row and
    # chunk by chunk), which ``half_loss`` turns into the loss: a trial may form Q (``Problem.trial_at``).
    trial_columns = True

    def __init__(self, relu=False):
        self.relu = relu
        self.name = "relu_softmax" if relu else "softmax"
        self.samples_start = not relu
        # softmax(u) is; softmax(ReLU(u)) is not: its u-Hessian is diag(m) H_z diag(m), H_z 1 = 0 but H_z m ≠ 0.
        self.shift_invariant = not relu
        first = Stage(self.log_partition, keep_log_partition)
        self.evaluation = (first, Stage(self.columns, softmax_gradient))
        self.loss_stages = (first, Stage(self.loss_rows, half_loss))

    def log_partition(self, block, kept, known):
        return log_partition_rows(block, kept, self.relu)

    def columns(self, block, kept, known):
        Q = block.buffers.empty((block.rows, 3))
        scale = known["log_partition"].factor(kept["block_top"])
        c, gamma, loss2 = softmax_regression_columns(kept["u"], kept["e"], scale, block.b, block.kernel_w,
                                                     self.relu, block.chunk, Q)
        return {"c": c, "gamma": gamma, "loss2": loss2}, {"Q": Q}

    def loss_rows(self, block, kept, known):
        scale = known["log_partition"].factor(kept["block_top"])
        loss2 = softmax_regression_loss(kept["u"], kept["e"], scale, block.b, block.kernel_w, block.chunk)
        return {"loss2": loss2}, {}

    def facts(self, block):
        # One compiled read for the extremes and ‖b‖² (four NumPy reductions and a masked copy cost ~5 µs on
        # the small targets of solve_many's problems). ‖b‖² of a target near the largest floats is inf, the scale the
        # rounding tests then use: no warning (the kernel gives none; its pure-Python form, under NUMBA_DISABLE_JIT,
        # would).
        with np.errstate(over="ignore"):
            return target_facts(*target_summary(block.b))

    def complete_facts(self, facts, map_blocks):
        return with_floor(facts, lambda threshold: -map_blocks(_least_entry_summary, threshold)["max_negated_entry"])

    def target_norm(self, facts):
        return float(np.sqrt(facts["b_squared"]))

    def ones_columns(self, known):
        """Uᵀ1 = [Σs, Σv] = [1, γ − c] (softmax: Σs = 1, Σv = 2Σs² − ⟨s, b⟩, γ − c = 2Σs² − ⟨s, b⟩)."""
        return np.array([1.0, known["S"][0, 0] - known["c"]])

    def gradient_rounding(self, n, facts, rounding):
        """``kernels.softmax.softmax_gradient_rounding`` (the compiled loop of many small problems calls it too)."""
        return softmax_gradient_rounding(n, max(facts["max_b"], facts["max_negated_min_b"]), rounding)

    def reference(self):
        """relu_softmax has ∇L(0) = 0 exactly (ReLU'(0) = 0 on every row), which would make the
        scale-free criterion unreachable; its one-sided derivative at 0, the plain softmax
        gradient, gives the scale instead."""
        return Softmax(relu=False) if self.relu else self

    def diagnose(self, known, loss, facts, loss_at_zero):
        """A sentence when the stationary point cannot be the optimum, else None."""
        b_varies = facts["max_b"] != -facts["max_negated_min_b"]
        if self.relu and not known["log_partition"].top > 0.0 and b_varies:
            return ("every ReLU is inactive (Cx ≤ 0 on all rows): x is a dead stationary point of "
                    "relu_softmax where the gradient is exactly zero, not the optimum")
        # A softmax saturated to one-hot has a gradient that underflows to ~0 at any loss;
        # a loss above L(0) (uniform softmax, no weight term) proves x is not the minimiser.
        at_zero = loss_at_zero()
        if loss > at_zero + 1e-8 * (at_zero + facts["b_squared"]):
            return (f"the gradient vanished but the loss {loss:.6e} exceeds L(0) = {at_zero:.6e}, "
                    "so x is not the optimum (e.g. a softmax saturated to one-hot by huge logits |Cx|)")
        return None

    def predict(self, block, u):
        """softmax(m ⊙ u) (one block holding every row: the normaliser is its own)."""
        return softmax_rows(block, u, self.relu)

    def relu_inputs(self, known, kept):
        if not self.relu or kept is None:
            return None
        return RELU_INPUTS, kept["u"]

    def relu_kink_inputs(self, known, kept, block):
        if not self.relu or kept is None:
            return None
        return kept["u"], kept["e"], known["log_partition"].factor(kept["block_top"]), block.b, known["c"]

    def auto_start(self, problem):
        return run_requests(self.auto_start_rounds(problem))

    def auto_start_rounds(self, problem, sample=None):
        """softmax: log b = Cx − logsumexp(Cx) at a zero-residual optimum, so the b²-weighted fit of
        log b on [C, 1] (the loss to second order there: ``fastnewton.start.log_linear_fit``) starts at
        or near x* (on a leverage-score ``sample`` of the rows when the strategy offers one and it
        certifies its scores). relu_softmax: see ``_relu_start`` (its fit's request shared, no sample: its
        null-space step needs the exact fit)."""
        facts = problem.facts
        if not facts["max_b"] > 0.0:
            return np.zeros(problem.d), "zeros (auto: b has no positive entry to fit log b to)"
        if self.relu:
            return (yield from _relu_start(problem, facts["floor"]))
        x0 = yield from log_linear_fit_rounds(problem, _targets, facts["max_b"], squared=True, sample=sample)
        description = "auto: b²-weighted least-squares fit of log b on [C, 1]"
        if sample is not None and sample.kept:
            description += f" (on {sample.kept} leverage-sampled rows of {problem.n})"
        return x0, description


def target_facts(top, bottom, least_positive, b_squared):
    """``Softmax.facts`` from ``target_summary``'s figures of b (max b, min b, its least positive entry, ‖b‖²):
    ``solve_many`` forms those of many targets at once (``fastnewton.plain_problems``)."""
    return {"b_squared": b_squared, "max_b": top, "max_negated_min_b": -bottom,
            "max_negated_min_positive_b": -least_positive}


def with_floor(facts, least_entry_at_or_above):
    """``facts`` with "floor": relu_softmax's floor f, the least positive entry of b among those ≥ ε·max b
    (``NEGLIGIBLE_TARGET``), unless max b is the only one. A smaller positive entry is zero at b's precision,
    but as f it set every active row's target log(bᵢ/f) far too high: one entry of 1e-40 among entries ~1e-3
    ended the solve at 100 iterations and 17× L(0), one of 1e-80 at a dead point 75× L(0); as a zero it is a
    floor row.
    ``least_entry_at_or_above(t)``, the least entry ≥ t, is asked only when such an entry exists (a second read
    of b; a round over the blocks on Dask, whose facts are the blocks' combined)."""
    floor = -facts["max_negated_min_positive_b"]
    threshold = NEGLIGIBLE_TARGET * facts["max_b"]
    if floor < threshold:
        significant = least_entry_at_or_above(threshold)
        # Only max b is significant (b one-hot at its precision): no floor among the others; the least positive
        # entry stays f, as before.
        floor = significant if significant < facts["max_b"] else floor
    return {**facts, "floor": floor}


def _least_entry_summary(block, threshold):
    """A block's least target entry ≥ threshold, negated as a ``max_`` key (the blocks' summaries combine by max)."""
    return {"max_negated_entry": -least_entry_at_or_above(block.b, threshold)}


def softmax_gradient(summary, known):
    """L, ∇L = G[:, 0] − c·G[:, 1] and S = [[γ, −1], [−1, 0]] from the blocks' partials of c, γ, 2L and G = CᵀQ."""
    G, c = summary["G"], summary["c"]
    return {"c": c, "loss": 0.5 * summary["loss2"], "gradient": G[:, 0] - c * G[:, 1],
            "S": np.array([[summary["gamma"], -1.0], [-1.0, 0.0]])}


def _targets(block, max_b):
    """b / max b: the fit's weights p² then cannot underflow to an all-zero system (b = 1e-300 made
    Σ bᵢ² = 0); the common factor only shifts log p by a constant that the intercept absorbs."""
    return block.b / max_b


def _is_floor(block, floor):
    return ~(block.b > floor * (1.0 + ACTIVE_RTOL))


def _active_fit(block, floor):
    active = block.b > floor * (1.0 + ACTIVE_RTOL)
    above = np.maximum(block.b, floor)
    with np.errstate(over="ignore"):
        ratio = above / floor
    # b/f overflows where the floor f is subnormal (a target entry of 1e-310): log b − log f there (the start was
    # non-finite, and its x NaN); elsewhere log(b/f) as it always was
    target = np.where(np.isfinite(ratio), np.log(ratio), np.log(above) - np.log(floor))
    return active.astype(np.float64), np.where(active, target, 0.0)


def _relu_start(problem, floor):
    """Rows with bᵢ > f·(1 + rtol), f = the floor of ``with_floor`` (the softmax floor of inactive rows), are
    active: fit (Cx)ᵢ = log(bᵢ / f) on them by least squares, then, when the active rows leave a
    null space, move in it so that floor rows get Cx ≤ −τ with the largest margin τ ≤ 1 (an LP
    over a cutting-plane working set). Never x = 0, the dead stationary point, unless b is uniform.
    A generator: yields the fit's ``NormalSystemRequest`` (``solve_many`` forms those of many targets on
    one C together)."""
    facts = problem.facts
    if not facts["max_b"] > floor * (1.0 + ACTIVE_RTOL):
        return np.zeros(problem.d), "zeros (auto: b is uniform, so every x with Cx ≤ 0 is optimal)"
    x, null_space = solve_psd(*(yield from normal_system_rounds(problem, _active_fit, floor, intercept=False)))
    description = "auto: least-squares fit of log(b_i / f) on the active rows, f the least b_i > eps·max b"
    all_active = -facts["max_negated_min_b"] > floor * (1.0 + ACTIVE_RTOL)
    if null_space.shape[1] and not all_active:
        x, margin = floor_margin(FloorRows(problem, _is_floor, floor), x, null_space)
        # + 0.0: a margin of −0.0 read "Cx ≤ −-0"
        description += f", floor rows pushed to Cx ≤ −{margin + 0.0:.3g} in the active rows' null space (LP)"
    return x, description
