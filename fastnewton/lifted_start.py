"""``softmax_relu``'s automatic start: a simplex vector, a lifted surrogate, then the real loss.

h(u) = ReLU(Vᵀ softmax(u)). An output j with b_j > 0 whose y_j = (Vᵀ softmax(Cx))_j ≤ 0 is dead:
its ReLU has zero derivative, so no Newton step can revive it. Three stages avoid reaching one
(``fastnewton.models.softmax_relu`` runs them from its ``auto_start`` and ``auto_solve``):

1. **Simplex vector** (``simplex_start``). The s closest to uniform with s ≥ f (f = SIMPLEX_FLOOR/n),
   Σs = 1, (Vᵀs)_j = b_j on active outputs (b_j > 0) and (Vᵀs)_j = 0 on inactive ones that would
   otherwise be positive (an active set: they are added as equations until none is positive):

       min ½‖s − 1/n‖² + (1/2ε)‖Aᵀs − t‖²  s.t.  s ≥ f,    A = [V_E, 1],  t = [b_E, 1],

   solved through its dual in the |E| + 1 multipliers λ: s(λ) = max(f, 1/n + Aλ), and
   semismooth Newton on Aᵀs(λ) − t + ελ = 0 with matrix Aᵀ diag(1[1/n + Aλ > f]) A + εI and a
   backtracking line search on the (convex) dual objective. ε = DUAL_RIDGE·tr(AᵀA)/(|E| + 1)
   keeps noisy, unreachable targets solvable (the least-squares compromise); on reachable ones
   the constraints hold to ~ε. Only A's partial sums leave V's rows (``simplex_partials`` on each
   block, summed by the evaluator's ``map_blocks``), so ``fastnewton.dask`` runs the same solver.
   Then x₀ is the s-weighted least-squares fit of log s on [C, 1] (``fastnewton.start``).
2. **Lifted surrogate** (``lifted_solve``): on each active output replace the ReLU by the
   identity by offsetting the output, ReLU(y_j + o_j) − (b_j + o_j) with o_j > −min_i V_ij, so
   y_j + o_j > 0 at every softmax (shifting column V_j and b_j by o_j is the same: Σs = 1);
   inactive outputs keep their ReLU (o_j = 0). Same zero set as the real loss, no dead outputs.
   Newton on it with a ridge continuation l2 + λ, λ = (3e-1, 3e-2, 3e-3, 3e-4)·λmax(H), 0, each ridge
   stage solved loosely (RIDGE_STAGE_TOL, at most RIDGE_STAGE_MAX_ITER) or, when l2 > 0, to a
   tolerance proportional to its ridge (RIDGE_PATH_TOL), so that the stages follow the path x(λ)
   along the valley of an underdetermined problem; the last to ``tol`` (at most SURROGATE_MAX_ITER).
   λmax(H) by POWER_ITERATIONS Hessian-vector products at x₀ from the gradient (deterministic).
   **Branch probe** (l2 > 0 only: with l2 = 0 every point of the valley floor is a minimiser, and which
   branch the path takes does not change the answer). Inactive outputs (b_j = 0) keep their one-sided
   terms ½ max(y_j, 0)², so the path x(λ) can have several branches: one on which a one-sided output
   sits at its kink (y_j ≈ 0⁺, held there by the rest of the loss) and another on which it lies well
   inside y_j < 0. Following the first until it vanishes and then walking to the second took 30 of 49
   iterations on bench/valley.py's Gaussian-V seed 0. So after a ridge stage (not the first) at whose end
   one-sided outputs sit at their kink (y_j > 0) that did not at the previous stage's end, a probe: the
   same stage with those outputs' terms moved to ½ max(y_j + BRANCH_MARGIN·‖b‖∞, 0)²
   (``SoftmaxRelu.with_kinks_moved``), from the stage's end, at most BRANCH_PROBE_MAX_ITER iterations.
   Its end is kept when the stage's own loss is lower there than at the stage's end (a point below a
   minimiser cannot descend back to it: it lies on another branch), else the stage's end is. Once per
   solve: a probe that finds no lower branch costs its iterations (3–7 on bench/valley.py's problems at
   n = 5000, seeds 0–39), and second probes, at 3e-3 and 3e-4·λmax, found none there (11 and 13 iterations).
   Measured at n = 5000, seeds 0–39: 15 probes, 3 found a lower branch (final loss 1.7–5.5% lower),
   12 none.
3. **Real loss**. Whether b is reachable is read off the continuation's end: a reachable b is fitted
   there almost exactly (surrogate misfit ≤ REACHABLE_MISFIT of the larger of its misfit at x₀ and
   the real loss at 0), a noisy one is not.
   - Reachable: Newton on the surrogate at l2 (at most SURROGATE_MAX_ITER), then on the real problem
     (0–2 iterations: the minimisers coincide); if that stops unconverged and iterations remain, Newton
     on the real loss from x = 0 (uniform attention: the ``x0="zeros"`` solve), lower loss returned.
   - Not reachable: the surrogate's minimiser is not the real one (an output with small b_j > 0 may be
     best left dead), so no surrogate at l2: Newton on the real loss from the continuation's end (at most
     UNREACHABLE_REAL_SHARE of the iterations left), then from x = 0 with the rest, lower loss returned.
     (Before, the surrogate stages spent the default max_iter = 100 first: on the 48 noisy problems of
     bench/families.py the default solve reached the best loss on 19, trust-exact on 24.)
   A phase stopped by the stagnation window at a ReLU kink ends the staged solve: after a surrogate
   phase only the real loss follows (the answer must be the real loss's), after a real phase nothing
   (every later phase would stop at the same kink). No random draw anywhere: deterministic.

**From a caller's start** (x0 = "zeros" or an array; ``SoftmaxRelu.solve_from_rounds``): stages 2 and 3
from x0 in stage 1's place — λmax(H) at x0, the same ridge fractions (the ridge pulls toward x = 0, not x0),
the same reachability test (the misfit at x0 in place of the simplex start's) and real-loss phases, the
restart from x = 0 included. A warm start — real loss at x0 at most WARM_START_LOSS of the loss at x = 0 —
first gets Newton on the real loss (phase "real from x0", at most WARM_START_MAX_ITER iterations): near a
minimiser it converges there in a few iterations, and the result is that minimiser; if it does not
converge (e.g. it stops at a dead output, which the lifted surrogate can revive), stages 2 and 3 run from
x0 with the iterations left, and the lower of the two losses is kept. So the iterations start at x0 and
the answer is a point of the real loss, reached nearly as reliably as from stage 1, where plain Newton from
zeros crawls along the valley of nearly-dead outputs or kills one.

Measured (bench/user_start.py --count 240 --families 240, against plain Newton, i.e. the solve from a
caller's x0 before): on bench/peers.py's softmax_relu problem (CSR 10⁵ × 100, m = 16, 1 % noise) from
zeros 37 iterations to tol at the default start's loss (plain Newton: max_iter = 100 reached, loss 40 %
higher; with max_iter = 400, 220–226 iterations to a loss 30 % higher), from a random small x0 36, from
a warm start 12 (as plain Newton). On the 240 problems of bench/families.py (48 noisy): from zeros 201
reach tol and 219 end at the default start's loss or lower (plain Newton 156 and 174; the default start
203), from a random small x0 201 and 220 (plain 156 and 174), median iterations 10 → 24 as from the
default start (plain Newton's quick successes now pay for the ridge stages); from a warm start (the
default solve's x moved by 0.1 in the logits) 203 and 236 (plain 202 and 237), median 5 iterations, but
on the 48 noisy targets, whose default solve mostly ends at a dead output, Newton stops there again and
the continuation runs after it for nothing: 81 iterations, median, where plain Newton took 5. Still short from
zeros, of the reachable: softmax_relu-0-28 (its ridge stages take 100 iterations; 106 to tol), -0-97 (a
dead output), -0-103 (a local minimiser with a 1.5 % residual) and -0-133 (short of tol from the default
start too); 17 noisy targets end above the default start's loss (non-convex: 4 others end lower). With
``continuation=False`` (``solve``'s keyword) a caller's x0, and "auto" after stage 1, get one plain Newton
loop on the real loss.

Every iteration of every stage counts in ``n_iter`` and appears in the history with its
``phase`` ("surrogate l2+0.3·λmax", …, "surrogate l2+0.0003·λmax", "surrogate", "real",
"real restart from zeros", "real from zeros", "real from x0", and "branch probe l2+0.03·λmax" …); each record's
``loss`` is that phase's loss.
"""
import dataclasses
import math
import time
import warnings

import numpy as np
import scipy.linalg

from .matrix import DenseMatrix
from .newton import NewtonRequest, run_requests, warn_max_iter
from .timing import PhaseTimer
from .reductions import dot, norm
from .result import Status
from .start import log_linear_fit_rounds

# softmax_relu: floor of the simplex vector, as a fraction of the uniform value 1/n.
SIMPLEX_FLOOR = 1e-3
# ε of the penalised simplex problem relative to the mean diagonal of AᵀA: far below any
# reachable target's scale (the constraints then hold to ~1e-12 relative), large enough
# that the dual Newton matrix stays factorable when rows are clipped at the floor.
DUAL_RIDGE = 1e-12
MAX_DUAL_ITER = 60
DUAL_RTOL = 1e-12
# Ridge continuation of the surrogate, as fractions of λmax(H) at x₀. On underdetermined problems (m < d,
# the optimum held by a small l2) the stages follow the path x(λ) down the valley; measured on n = 10⁵,
# d = 100, m = 16, l2 = 1e-8 (seeds 0–5, make_problem's V and Gaussian V), iterations of all phases:
# the original 1e-2, 1e-4 (then 0) 24–100 (4 of 12 over 40); 1e-1, 1e-2, 1e-3, 1e-4: 24–42 and 75
# (sum 425); these 25–39 and 55 (sum 389). Starting at 3e-1 shortens the first stage (make_problem's V,
# seed 4: 29 iterations there at 1e-1). Gaussian V seed 0 still walks a long curved valley floor: its
# minimiser has ‖x‖ = 1.3 against ‖x₀‖ = 0.002 and an inactive output at its kink. bench/families_solve.py
# --models softmax_relu: reachable 189 → 190 of 192, noisy best 36 → 37 of 48, median 22 → 24 iterations.
# With the one-sided step of fastnewton.active_set (kinks of the inactive outputs kept in the step's model)
# the same valley problems take 22–39 and 49 (sum 374); with the branch probe (below) 22–39.
RIDGE_FRACTIONS = (3e-1, 3e-2, 3e-3, 3e-4)
# With l2 > 0 each ridge stage is solved to min(RIDGE_STAGE_TOL, RIDGE_PATH_TOL·fraction) relative
# gradient. Along a valley ∇L is ~ the ridge's own λ‖x‖, so a fixed 1e-4·g_ref is met anywhere on the
# valley floor once λ ≪ λmax and the walk was left to the last stage (hundreds of zig-zag steps there);
# a tolerance proportional to the ridge makes each stage reach its own point of the path. With l2 = 0
# every point of the valley floor is a minimiser, no walk is needed, and RIDGE_STAGE_TOL alone is used
# (the proportional one cost 4 iterations, median, on bench/families_solve.py).
# Branch probe (module docstring, l2 > 0): the moved kinks sit at y_j = −BRANCH_MARGIN·‖b‖∞. Measured on
# bench/valley.py's Gaussian-V seed 0 (the lower branch has y_j = −0.38·‖b‖∞ on the kinked output): margins
# 0.05, 0.1, 0.2, 0.3 all find it; 0.3 takes 13 probe iterations, 0.1 16; on three small valleys (n = 5000–
# 20000) 0.1 cost the least. BRANCH_PROBE_MAX_ITER bounds the probe (the longest found branch took 20 at n = 5000).
BRANCH_MARGIN = 0.1
BRANCH_PROBE_MAX_ITER = 20
RIDGE_STAGE_TOL = 1e-4
RIDGE_PATH_TOL = 1e-3
RIDGE_STAGE_MAX_ITER = 30
POWER_ITERATIONS = 10
# The surrogate at l2 alone: reachable targets converge in a few iterations; noisy ones, whose
# surrogate minimiser differs from the real one, stop here and leave the rest to the real loss
# (and, if that stops unconverged, to the restart from zeros).
SURROGATE_MAX_ITER = 30
# b counts as reachable when the ridge continuation leaves a surrogate misfit (½‖lifted residual‖²
# at l2) ≤ REACHABLE_MISFIT × max(misfit at x₀, real loss at 0). Measured on bench/families.py
# (240 softmax_relu problems, 48 noisy; with the two-stage 1e-2, 1e-4 continuation): every reachable
# problem that the staged start solves ends the continuation at ≤ 1.8e-3 of it, every noisy one it
# does not solve at ≥ 1.2e-2.
REACHABLE_MISFIT = 5e-3
# With b not reachable, the real loss from the continuation's end gets this share of the iterations
# left and the restart from zeros the rest (on noisy targets the restart needs ~20, at most ~70).
UNREACHABLE_REAL_SHARE = 0.5
# A caller's x0 is a warm start when its real loss is at most WARM_START_LOSS of the loss at x = 0; Newton
# on the real loss then runs first, for at most WARM_START_MAX_ITER iterations. Measured L(x0)/L(0): random
# small starts (x ~ N(0, 0.1²/d)) 0.87–1.0 on bench/families.py's problems and 1.0 on bench/peers.py's;
# the minimiser moved by 0.1 in the logits (‖CΔx‖∞) 4e-4–0.5, the larger on noisy targets whose minimiser
# itself leaves up to 0.49. From such a start (tests/test_hessian.py's softmax_relu problems) Newton converges
# in 4 iterations, the continuation in 20–48; from the minimiser scaled by 0.5–0.9 (L(x0)/L(0) ≤ 0.5) on 8
# family problems Newton converged in 4–14 iterations or stopped at a dead output in 1–10. A probe on every
# start (no loss test, at most 10 iterations) cost the families' cold starts 9 iterations, median (24 → 33
# from zeros), and solved none more.
WARM_START_LOSS = 0.5
WARM_START_MAX_ITER = 20
# The offset o_j = −min_i V_ij + OFFSET_MARGIN·(max_i V_ij − min_i V_ij) (+1 if V_j is constant).
OFFSET_MARGIN = 1.0


# -- stage 1: the simplex vector ----------------------------------------------------------------------
def _simplex_matrix(block, active_outputs):
    return DenseMatrix(np.column_stack([block.V[:, active_outputs], np.ones(block.rows)]))


def _kept_simplex_matrix(block, active_outputs):
    """``_simplex_matrix``, formed once per equation set E and kept on the block while the dual runs: it
    reads A at every trial (on noisy targets with many outputs ~10³ times per set; gathering V's columns
    took 70% of such a dual's time: family problem softmax_relu-0-204, |E| = 87–97, 6.1 of 8.1 s).
    ``_forget_simplex_matrix`` drops it."""
    key = active_outputs.tobytes()
    kept = getattr(block, "simplex_matrix", None)
    if kept is None or kept[0] != key:
        kept = (key, _simplex_matrix(block, active_outputs))
        block.simplex_matrix = kept
    return kept[1]


def _forget_simplex_matrix(block):
    block.simplex_matrix = None
    return {}


def _simplex_point(block, n, active_outputs, lam):
    """(A = [V_E, 1] on the block's rows, s = max(f, 1/n + Aλ), the rows where s > f) with f = SIMPLEX_FLOOR/n."""
    # The package's chunked dense passes (not NumPy's BLAS): the thread count never changes the bits.
    A = _kept_simplex_matrix(block, active_outputs)
    z = 1.0 / n + A.matvec(lam)
    free = z > SIMPLEX_FLOOR / n
    return A, np.where(free, z, SIMPLEX_FLOOR / n), free


def simplex_objective_partials(block, n, active_outputs, lam):
    """What the dual objective ψ needs from a block of V's rows at multipliers λ (a line-search trial):
    Aᵀs and ‖s − 1/n‖², sums over these rows (``simplex_partials``' figures, with their bits)."""
    A, s, _ = _simplex_point(block, n, active_outputs, lam)
    return {"Ats": A.rmatmat(s[:, None])[:, 0], "distance": dot(s - 1.0 / n, s - 1.0 / n)}


def simplex_partials(block, n, active_outputs, lam):
    """What the dual Newton needs from a block of V's rows (all of V on one machine) at multipliers λ.

    s = max(f, 1/n + Aλ) with A = [V_E, 1], f = SIMPLEX_FLOOR/n; returns AᵀDA (D = 1[1/n + Aλ > f]),
    Aᵀs, ‖s − 1/n‖² and Vᵀs (every output), all sums over these rows.
    """
    A, s, free = _simplex_point(block, n, active_outputs, lam)
    return {"AtDA": A.sandwich(free.astype(np.float64)), "Ats": A.rmatmat(s[:, None])[:, 0],
            "distance": dot(s - 1.0 / n, s - 1.0 / n), "y": DenseMatrix(block.V).rmatmat(s[:, None])[:, 0]}


def simplex_weights(block, parameters):
    """s = max(f, 1/n + [V_E, 1]λ) / total on the block's rows, ``parameters`` = (n, E, λ, total);
    ``total`` is Σ max(·) over all n rows."""
    n, active_outputs, lam, total = parameters
    return np.maximum(1.0 / n + _simplex_matrix(block, active_outputs).matvec(lam), SIMPLEX_FLOOR / n) / total


def _dual_objective(parts, lam, t, ridge):
    """ψ(λ) = λᵀ(Aᵀs(λ) − t) − ½‖s(λ) − 1/n‖² + ½ε‖λ‖², convex, ∇ψ = Aᵀs(λ) − t + ελ."""
    return float(lam @ (parts["Ats"] - t) - 0.5 * parts["distance"] + 0.5 * ridge * (lam @ lam))


def _solve_dual(problem, active_outputs, t):
    """Semismooth Newton on the dual: (λ, partials at λ, iterations)."""
    lam = np.zeros(t.shape[0])
    parts = problem.map_blocks(simplex_partials, problem.n, active_outputs, lam)
    ridge = DUAL_RIDGE * np.trace(parts["AtDA"]) / t.shape[0]
    psi = _dual_objective(parts, lam, t, ridge)
    for iteration in range(1, MAX_DUAL_ITER + 1):
        F = parts["Ats"] - t + ridge * lam
        if norm(F) <= DUAL_RTOL * norm(t):
            return lam, parts, iteration - 1
        M = parts["AtDA"] + ridge * np.eye(t.shape[0])
        try:
            direction = -scipy.linalg.solve(M, F, assume_a="pos", check_finite=False)
        except (np.linalg.LinAlgError, ValueError):
            direction = -scipy.linalg.lstsq(M, F, check_finite=False)[0]
        slope = float(F @ direction)
        step = 1.0
        for _ in range(40):
            trial = lam + step * direction
            # A trial needs ψ only: the sandwich AᵀDA (|E| + 1 times a pass's work) and Vᵀs are formed at
            # the accepted point. On noisy targets with many outputs the dual runs its 60 steps with ~20
            # halvings each (family problem softmax_relu-0-204, |E| = 87: 1269 trials, 1.95 s per dual solve).
            trial_parts = problem.map_blocks(simplex_objective_partials, problem.n, active_outputs, trial)
            trial_psi = _dual_objective(trial_parts, trial, t, ridge)
            if trial_psi <= psi + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            return lam, parts, iteration
        lam, psi = trial, trial_psi
        parts = problem.map_blocks(simplex_partials, problem.n, active_outputs, lam)
    return lam, parts, MAX_DUAL_ITER


def simplex_vector(problem, b):
    """The simplex vector of stage 1 as (equation outputs E, multipliers λ, Σ max(·), dual Newton steps);
    s = ``simplex_weights(block, (n, E, λ, Σ))`` on each block."""
    equal = b > 0.0
    targets = np.where(equal, b, 0.0)
    total_iterations = 0
    try:
        for _ in range(b.shape[0] + 1):
            active_outputs = np.flatnonzero(equal)
            lam, parts, iterations = _solve_dual(problem, active_outputs, np.append(targets[active_outputs], 1.0))
            total_iterations += iterations
            newly = (~equal) & (parts["y"] > 0.0)
            if not newly.any():
                break
            equal |= newly
    finally:
        problem.map_blocks(_forget_simplex_matrix)
    return active_outputs, lam, parts["Ats"][-1], total_iterations


def simplex_start(problem, b):
    """Stage 1: (x₀, description) from the simplex vector s and the s-weighted fit of log s on [C, 1]."""
    return run_requests(simplex_start_rounds(problem, b))


@dataclasses.dataclass
class SimplexRequest:
    """``simplex_vector(problem, b)``, asked for as a request (``run()`` gives it) so that ``solve_many`` can form
    those of many problems at once (``fastnewton.many_small``)."""

    problem: object
    b: np.ndarray

    def run(self):
        return simplex_vector(self.problem, self.b)


def simplex_start_rounds(problem, b):
    """``simplex_start`` as a generator of the simplex vector's request and the fit's (the simplex vector's
    passes are over V)."""
    active_outputs, lam, total, iterations = yield SimplexRequest(problem, b)
    x0 = yield from log_linear_fit_rounds(problem, simplex_weights, (problem.n, active_outputs, lam, total))
    return x0, (f"auto: simplex vector closest to uniform with Vᵀs = b on active outputs ({iterations} "
                "dual Newton steps), then an s-weighted least-squares fit of log s on [C, 1]")


# -- stages 2 and 3 -------------------------------------------------------------------------------------
def _column_range(block):
    return block.V.min(axis=0), block.V.max(axis=0)


def output_offsets(problem, b):
    """o_j > −min_i V_ij on active outputs (b_j > 0), so y_j + o_j > 0 at every softmax; 0 elsewhere."""
    found = problem.gather_blocks(_column_range)
    low = np.min([low for low, _ in found], axis=0)
    high = np.max([high for _, high in found], axis=0)
    offset = -low + OFFSET_MARGIN * (high - low) + np.where(high > low, 0.0, 1.0)
    return np.where(b > 0.0, np.maximum(offset, 0.0), 0.0)


def largest_eigenvalue(problem, x):
    """|λmax| of ∇²L(x) by power iteration from ∇L(x) (no random draw: the same answer every run)."""
    ev = problem.evaluate(x)
    p = ev.grad.copy()
    if not norm(p) > 0.0:
        p = np.ones_like(x)
    estimate = 0.0
    for _ in range(POWER_ITERATIONS):
        size = norm(p)
        if not math.isfinite(size):
            # Σp² overflows once p = Hp passes ~1e154 (C's entries past ~1e77): p/inf was 0, the estimate 0 and
            # the continuation dropped, a different solve than C's own. Only the direction counts: p/max|p| first.
            p /= np.max(np.abs(p))
            size = norm(p)
        p /= size
        Hp = problem.hessian_product(ev, p)
        estimate = abs(float(p @ Hp))
        if not np.all(np.isfinite(Hp)) or not norm(Hp) > 0.0:
            break
        p = Hp
    # A non-finite estimate (overflowing curvature) drops the continuation rather than poisoning l2.
    return estimate if np.isfinite(estimate) else 0.0


class _Stages:
    """Runs Newton stage after stage and joins their histories, iteration counts and callbacks."""

    def __init__(self, options, timer=None, clock=None):
        self.options = options
        self.history = []
        self.n_iter = 0
        self.stopped = False
        self.clock = clock if clock is not None else time.perf_counter()
        # The first stage's iteration 0 carries the caller's phases (setup, start); later stages time their own.
        self.timer = timer
        self.counts = {"nfev": 0, "njev": 0, "nhev": 0}

    def run(self, problem, x, phase, build_system, tol, max_iter):
        """One stage (a generator: yields its ``NewtonRequest``, is sent the result, returns it)."""
        done, clock_offset = self.n_iter, time.perf_counter() - self.clock
        callback = self.options.callback
        wrapped = None if callback is None else (
            lambda info: callback(dict(info, iter=info["iter"] + done, phase=phase)))
        options = dataclasses.replace(self.options, tol=tol, max_iter=max_iter, callback=wrapped,
                                      warn_at_max_iter=False)
        if self.options.verbose:
            print(f"phase: {phase}")
        res = yield NewtonRequest(problem, x, "", build_system, options, timer=self.timer)
        self.timer = None
        for key in self.counts:
            self.counts[key] += res.get(key, 0)
        records = res.history if not self.history else res.history[1:]
        for record in records:
            record.update(iter=record["iter"] + done, phase=phase, time=record["time"] + clock_offset)
        self.history.extend(records)
        self.n_iter += res.n_iter
        self.stopped = res.status in (Status.CALLBACK, Status.INTERRUPTED, Status.NON_FINITE)
        return res

    def left(self):
        return self.options.max_iter - self.n_iter

    def finish(self, res, x0, description):
        res.update(n_iter=self.n_iter, nit=self.n_iter, history=self.history, x0=x0.copy(), start=description,
                   time=time.perf_counter() - self.clock, **self.counts)
        return res


def _is_warm(problem, x0):
    """Whether L(x0) ≤ WARM_START_LOSS·L(0): loss stages only (no transposed pass), L(0) first so that the
    single-machine Problem still holds x0's forward pass for the Newton loop from x0."""
    with warnings.catch_warnings():
        # an overflowing x0 (Problem.loss warns of its non-finite loss) is not warm; the solve reports it itself
        warnings.simplefilter("ignore", RuntimeWarning)
        at_zero = problem.loss(np.zeros_like(x0))
        return problem.loss(x0) <= WARM_START_LOSS * at_zero


def _misfit(evaluator, x):
    return evaluator.evaluate(x).loss


@dataclasses.dataclass
class EigenvalueRequest:
    """``largest_eigenvalue(problem, x)``, asked for as a request (``run()`` gives it) so that ``solve_many`` can
    form those of many problems at once (``fastnewton.many_small``)."""

    problem: object
    x: np.ndarray

    def run(self):
        return largest_eigenvalue(self.problem, self.x)


@dataclasses.dataclass
class LossesRequest:
    """The losses L(x) (``evaluate(x).loss``) of ``points``, (evaluator, x) pairs, asked for as a request
    (``run()`` gives the list, in order) so that ``solve_many`` can form those of many problems at once."""

    points: list

    def run(self):
        return [_misfit(evaluator, x) for evaluator, x in self.points]


def lifted_solve(problem, surrogate_model, build_system, options, timer=None, clock=None):
    """Stages 1–3 above, one ``SolveResult`` for all of them: stage 1 is ``problem.auto_start()``,
    the surrogate is ``problem.with_model(surrogate_model, l2 + ridge)``. ``timer`` and ``clock``
    as for ``newton_solve`` (stage 1 is timed as the phase "start")."""
    return run_requests(lifted_solve_rounds(problem, surrogate_model, build_system, options, timer, clock))


def lifted_solve_rounds(problem, surrogate_model, build_system, options, timer=None, clock=None, start=None):
    """``lifted_solve`` as a generator of its Newton loops (``NewtonRequest``s) and of the figures between them
    (``EigenvalueRequest``, ``LossesRequest``), for ``solve_many``.
    ``start``: (x0, description) of a user's start, which takes stage 1's place."""
    timer = timer if timer is not None else PhaseTimer()
    stages = _Stages(options, timer, clock)
    if start is None:
        with timer("start"):
            x0, description = yield from problem.row_model.auto_start_rounds(problem)
    else:
        x0, description = start

    def surrogate(ridge):
        return problem.with_model(surrogate_model, problem.l2 + ridge)

    warm = None  # Newton's end from a warm start that did not converge, kept if the continuation ends higher

    def finish(res, how):
        if warm is not None and warm.loss < res.loss:
            res, how = warm, how + "; Newton's end from the warm start kept (lower loss)"
        if res.status == Status.MAX_ITER and options.warn_at_max_iter:
            warn_max_iter(options)
        return stages.finish(res, x0, description + how)

    if start is not None and stages.left() > 0 and x0.any() and _is_warm(problem, x0):
        # A warm start: Newton on the real loss converges from it in a few iterations, which the
        # continuation (whose ridge pulls toward 0) would spend many more on. If it does not (e.g. it stops
        # at a dead output), the continuation runs from x0 with the iterations left, and the lower loss is kept.
        from_x0 = yield from stages.run(problem, x0, "real from x0", build_system, options.tol,
                                        min(WARM_START_MAX_ITER, stages.left()))
        if from_x0.converged or stages.stopped or stages.left() <= 0:
            return finish(from_x0, "; Newton on the real loss from this warm start" if from_x0.converged else "")
        warm = from_x0
    x = x0
    lam_max = (yield EigenvalueRequest(surrogate(0.0), x0)) if options.max_iter else 0.0
    res = None
    kinked = None  # the one-sided outputs at their kink at the previous ridge stage's end (l2 > 0 only)
    probed = False
    for fraction in RIDGE_FRACTIONS:
        budget = min(RIDGE_STAGE_MAX_ITER, stages.left())
        if budget <= 0:
            break
        stage_tol = min(RIDGE_STAGE_TOL, RIDGE_PATH_TOL * fraction) if problem.l2 > 0 else RIDGE_STAGE_TOL
        stage = surrogate(fraction * lam_max)
        phase = f"l2+{fraction:g}·λmax"
        res = yield from stages.run(stage, x, f"surrogate {phase}", build_system, max(options.tol, stage_tol),
                                    budget)
        x = res.x
        if stages.stopped:
            return stages.finish(res, x0, description)
        if res.get("at_kink"):
            break
        if problem.l2 > 0 and not probed:
            x, kinked, probe = yield from _branch_choice(stages, stage, surrogate_model, res, kinked, phase,
                                                         build_system, max(options.tol, stage_tol))
            probed = probe is not None
            if stages.stopped:
                return stages.finish(probe, x0, description)
    if res is not None and res.get("at_kink"):
        # The continuation stopped at a ReLU kink: only the real loss from there (no restart: the kink
        # is where the landscape puts the iterate, and every later phase would stop at it again).
        res = yield from stages.run(problem, x, "real", build_system, options.tol, max(stages.left(), 0))
        return finish(res, "; Newton on the lifted surrogate (ridge continuation) stopped at a ReLU kink, "
                           "then on the real loss")
    # Reachable b: the continuation's end fits b almost exactly (surrogate misfit ≤ 2e-3 of the larger of
    # its misfit at x₀ and the real loss at 0, measured on bench/families.py); noisy b leaves ≥ 1e-2.
    reachable = stages.left() <= 0
    if not reachable:
        misfit, at_start, at_zero = yield LossesRequest([(surrogate(0.0), x), (surrogate(0.0), x0),
                                                         (problem, np.zeros_like(x))])
        reachable = misfit <= REACHABLE_MISFIT * max(at_start, at_zero)
    if reachable:
        return (yield from _reachable_stages(problem, stages, surrogate, x, build_system, options, finish))
    return (yield from _unreachable_stages(problem, stages, x, build_system, options, finish))


def _kinked_outputs(stage, model, ev):
    """The one-sided outputs (loss ½ max(y_j, 0)²) with y_j > 0 at ``ev``: those whose kink binds."""
    y = stage.relu_inputs(ev)[1]
    one_sided = model.one_sided_indices()
    return frozenset(one_sided[y[one_sided] > 0.0].tolist())


def _branch_choice(stages, stage, model, res, previous, phase, build_system, tol):
    """The branch probe after a ridge stage (module docstring): (x to continue from, the kinked outputs there,
    the probe's result or None). ``previous``: the kinked outputs at the previous stage's end (None after
    the first stage, which only records them)."""
    x = res.x
    kinked = _kinked_outputs(stage, model, stage.evaluate(x))
    arrived = sorted(kinked - previous) if previous is not None else []
    budget = min(BRANCH_PROBE_MAX_ITER, stages.left())
    if not arrived or budget <= 0:
        return x, kinked, None
    margin = BRANCH_MARGIN * float(np.max(np.abs(model.b)))
    moved = stage.with_model(model.with_kinks_moved(arrived, margin), stage.l2)
    probe = yield from stages.run(moved, x, f"branch probe {phase}", build_system, tol, budget)
    if stages.stopped:
        return x, kinked, probe
    ev = stage.evaluate(probe.x)
    # A point below the stage's minimiser on the stage's own loss cannot descend back to it: another branch.
    if ev.loss < res.loss:
        return probe.x, _kinked_outputs(stage, model, ev), probe
    return x, kinked, probe


def _reachable_stages(problem, stages, surrogate, x, build_system, options, finish):
    """The surrogate at l2 (its minimiser is the real one), the real loss, and the restart from zeros
    when that stops unconverged (not at a ReLU kink: a phase stopped at one ends the solve)."""
    kink = "; Newton on the lifted surrogate (ridge continuation) stopped at a ReLU kink, then on the real loss"
    how = "; Newton on the lifted surrogate (ridge continuation), then on the real loss"
    if stages.left() > 0:
        res = yield from stages.run(surrogate(0.0), x, "surrogate", build_system, options.tol,
                         min(SURROGATE_MAX_ITER, stages.left()))
        x = res.x
        if stages.stopped:
            return finish(res, "")
        if res.get("at_kink"):
            how = kink
    res = yield from stages.run(problem, x, "real", build_system, options.tol, max(stages.left(), 0))
    if res.converged or res.get("at_kink") or how == kink or stages.stopped or stages.left() <= 0:
        return finish(res, how)
    again = yield from stages.run(problem, np.zeros_like(x), "real restart from zeros", build_system, options.tol,
                       stages.left())
    if again.loss < res.loss or stages.stopped:
        res = again
    return finish(res, how + ", restarted from zeros after it stopped unconverged")


def _unreachable_stages(problem, stages, x, build_system, options, finish):
    """b not reachable: the surrogate's minimiser is not the real one. Newton on the real loss from the
    continuation's end (at most UNREACHABLE_REAL_SHARE of the iterations left), then from zeros (uniform
    attention) with the rest; the lower loss is returned. A phase stopped at a ReLU kink ends the solve."""
    how = ("; the lifted surrogate (ridge continuation) left a misfit, so b is not reachable: Newton on the real "
           "loss from the surrogate's end, then (unless that converges) from zeros")
    budget = max(int(UNREACHABLE_REAL_SHARE * stages.left()), min(stages.left(), 1))
    res = yield from stages.run(problem, x, "real", build_system, options.tol, budget)
    if stages.stopped or res.converged or res.get("at_kink") or stages.left() <= 0:
        return finish(res, how)
    again = yield from stages.run(problem, np.zeros_like(x), "real from zeros", build_system, options.tol, stages.left())
    if again.loss < res.loss or stages.stopped:
        res = again
    return finish(res, how)
