"""``Problem``: the loss, gradient and Hessian of a model, usable directly by scipy.optimize.minimize.

It is also the single-machine ``Evaluator`` of ``fastnewton.protocol``: the model's stages run on
one block holding all of C (``fastnewton.dask`` runs the same stages block by block).
"""
import copy
import warnings
from dataclasses import dataclass

import numpy as np

from .buffers import Recycler
from .hessian import default_thread_count
from .kinks import RowStates
from .kernels.softmax import line_point
from .matrix import column_means, side_by_side
from .memory import check_hessian_fits
from .models import RowBlock, build_model, uses_values
from .models.base import checked_array, checked_evaluation, checked_loss, finite_point, has_row_weights
from .newton import run_rounds, run_rounds_from
from .protocol import Evaluation, add_low_rank_and_ridge, no_timer
from .reductions import half_ridge
from .sketching import sampled_sandwich, uncentred_sandwich, worth_centring
from .threads import numba_threads
from .validation import as_input_matrix, as_l2, as_point, as_row_weights, as_value_matrix, as_vector, check_model


def run_stages(stages, block, kept, timer=no_timer, columns=None, known=None):
    """A model's stages on one block (all of C): (the globals ``known``, the arrays ``kept``).

    The stage that keeps Q gets G = CᵀQ (its first ``columns`` columns when given) in its summary.
    ``known``: the globals of stages already run (when resuming after them).
    """
    return run_rounds(stage_rounds(stages, block, kept, timer, columns, known), _transposed_pass(block.matrix, timer))


def _transposed_pass(matrix, timer):
    def transposed_pass(Q):
        with timer("gradient"):
            return matrix.rmatmat(Q)
    return transposed_pass


def stage_rounds(stages, block, kept, timer=no_timer, columns=None, known=None, done=None, checked=None):
    """``run_stages`` as a generator: yields the columns Q of the transposed pass and is sent G = CᵀQ
    (``solve_many`` forms the G of many problems sharing C in one pass). ``done``: the (summary, new
    arrays) of the first stage's ``rows``, already run (a line-search trial's), which then only combines.
    ``checked``: applied to Q before any pass reads it (``Problem``'s check of a model's columns)."""
    known = dict(known or {})
    for index, stage in enumerate(stages):
        if index == 0 and done is not None:
            summary, new = dict(done[0]), done[1]
        else:
            with timer("model"):
                summary, new = stage.rows(block, kept, known)
        kept = {**kept, **new}
        if "Q" in new:
            Q = new["Q"] if checked is None else checked(new["Q"])
            summary["G"] = yield Q if columns is None else Q[:, :columns]
        known = {**known, **stage.combine(summary, known)}
        if "G" in summary:
            known["G"] = summary["G"]
    return known, kept


def _unchanged(G):
    """``with_gradient_at_zero``'s finish when nothing rides along: the pass itself."""
    return G


def _own(validated, given):
    """``validated`` as an array this Problem alone holds (a copy when it shares memory with ``given``)."""
    if isinstance(given, np.ndarray) and np.shares_memory(validated, given):
        return validated.copy()
    return validated


_UNDECIDED = object()
# Hessian-vector products at one x that form β in their own pass before β is formed once for the rest. CSR
# 2·10⁵ × 100 (caches flushed): the pass writing β ~0.9 ms, a product reading Q[:, 1:3] instead of β ~0.15 ms
# more, so a few products pay; Q wider than 3 columns (softmax_relu) costs a product more.
FUSED_PRODUCTS = 3


class Problem:
    """L(x) = ½‖h(Cx) − b‖² + ½ Σᵢ wᵢ (Cx)ᵢ² + ½ λ‖x‖² for one of the registered models.

    C is a dense array or any SciPy sparse matrix (converted once to CSR; float32 or
    float64 values, int32 or int64 indices). ``b`` has length n (``softmax``,
    ``relu_softmax``) or m (``softmax_relu``, with V of shape n × m).
    ``loss``, ``grad``, ``loss_and_grad``, ``hessian`` and ``hessp`` plug straight
    into ``scipy.optimize.minimize(fun, x0, jac=, hess=, hessp=)``. The last point
    evaluated is cached, so ``fun``/``jac``/``hessp`` at the same x share one pass.
    They run on Numba's threads as the caller set them, except on a problem so small that ``solve``
    runs it on one thread (``fastnewton.hessian.default_thread_count``): there they run on one thread too
    (same bits; waking the other threads would cost more than the pass).

    ``b``, ``V`` and ``row_weights`` are copied: later edits of the caller's arrays do not affect
    the Problem. ``C`` is not copied when it is already float32/float64 canonical CSR or a
    C-contiguous array (it can be as large as memory), so do not modify it in place while the
    Problem is in use; build a new Problem instead. (If you do: ``loss`` and ``grad`` at the last
    point evaluated keep their cached values from the old C, every other point reads the new C,
    and ``hessian``/``hessp`` at the cached point would combine the cached curvature weights with
    the new C. ``clear_cache()`` drops the cache after such an edit.)
    """

    def __init__(self, C, b, model="softmax", V=None, l2=0.0, row_weights=None):
        self._set_inputs(C, model, V, l2, row_weights)
        self._set_target(b, "b")

    @classmethod
    def inputs_only(cls, C, model="softmax", V=None, l2=0.0, row_weights=None):
        """C, V, l2 and row_weights validated, no target yet: ``with_target(b, name)`` gives the problems
        (``solve_many``'s, one per column of B, whose errors name the column)."""
        problem = cls.__new__(cls)
        problem._set_inputs(C, model, V, l2, row_weights)
        return problem

    @classmethod
    def checking_c_on_first_pass(cls, C, b, model="softmax", V=None, l2=0.0, row_weights=None):
        """``Problem(C, b, ...)`` whose large dense C has its entries checked by its first transposed pass,
        before any result read from C is returned, instead of by a pass of its own at construction
        (``fastnewton.validation.as_input_matrix``; ``solve``: one read of C less when that pass comes first)."""
        problem = cls.__new__(cls)
        problem._set_inputs(C, model, V, l2, row_weights, check_on_first_pass=True)
        problem._set_target(b, "b")
        return problem

    @classmethod
    def from_checked(cls, matrix, b, model, l2, row_model=None):
        """``Problem(C, b, model, l2=l2)`` for inputs whose checks were already made (in bulk, by
        ``fastnewton.many_small`` for solve_many's problems): ``matrix`` C as ``as_input_matrix`` gives it
        (a DenseMatrix or CSRMatrix), b a finite float64 vector of length n, ``model`` a checked name of
        a model without V, ``l2`` a checked float. The same Problem, without its checks. ``row_model``: a
        model object of ``model`` that holds no state of its own (``build_model(model)``, e.g. Softmax), to
        share rather than build one per problem (~3.6 µs of the ~14 µs a problem costs here)."""
        problem = cls.__new__(cls)
        problem._hold_inputs(model, matrix, None, l2, np.zeros(matrix.n))
        problem._hold_target(b.copy(), row_model)
        return problem

    def _set_inputs(self, C, model, V, l2, row_weights, check_on_first_pass=False):
        model = check_model(model)
        matrix = as_input_matrix(C, check_on_first_pass=check_on_first_pass)
        n = matrix.n
        # b, V and w are copied (validation may return the caller's own array): editing them later
        # cannot change this Problem. C is not copied (it can be as large as memory).
        values = as_value_matrix(V, model, n, uses_values(model))
        values = None if values is None else _own(values, V)
        self._hold_inputs(model, matrix, values, as_l2(l2), _own(as_row_weights(row_weights, n), row_weights))

    def _hold_inputs(self, model, matrix, V, l2, row_weights):
        """Hold the validated inputs."""
        self.model, self.matrix, self.V, self.l2, self.row_weights = model, matrix, V, l2, row_weights
        self._column_norms = None
        self._thread_count = _UNDECIDED
        # The work arrays of evaluations (``fastnewton.buffers``), shared by the problems ``with_target``
        # makes: solve_many's problems reuse each other's freed arrays, not only their own.
        self.buffers = Recycler()

    def _set_target(self, b, name):
        """Validate and hold the target b (a copy)."""
        if self.V is None:
            self._hold_target(_own(as_vector(b, name, self.n, " (rows of C)"), b))
        else:
            self._hold_target(_own(as_vector(b, name, self.V.shape[1], " (columns of V)"), b))

    def _hold_target(self, b, row_model=None):
        """Hold the validated target b (this Problem's own array), and build what depends on it: the
        model (unless ``row_model`` is given: ``from_checked``), the block, the facts."""
        self.b = b
        self.row_model = row_model or build_model(self.model, self.b if self.V is not None else None)
        self.block = RowBlock(self.matrix, None if self.V is not None else self.b, self.row_weights, self.V,
                              buffers=self.buffers)
        self.facts = self.row_model.complete_facts(self.row_model.facts(self.block), self.map_blocks)
        self._forget_points()

    def with_target(self, b, name="b"):
        """This problem for another target b (validated as ``name``): C, V, w and l2 are shared, not
        checked or converted again (``solve_many``'s problems, one per column of B)."""
        other = copy.copy(self)
        other._set_target(b, name)
        return other

    @property
    def n(self):
        return self.matrix.n

    @property
    def d(self):
        return self.matrix.d

    def __repr__(self):
        return (f"Problem(model={self.model!r}, n={self.n}, d={self.d}, nnz={self.matrix.nnz}, "
                f"format={self.matrix.format!r}, l2={self.l2})")

    # -- the Evaluator interface (fastnewton.protocol) -------------------------------------------
    def as_point(self, x, name="x"):
        return as_point(x, name, self.d)

    def _forward(self, x, timer):
        """u = Cx, reused while x is the last point seen (scipy calls fun, then jac, at one x); u is a
        recycled array, like every trial's u after it (``fastnewton.buffers``)."""
        if self._last_forward is not None and np.array_equal(self._last_forward[0], x):
            return self._last_forward[1]
        with timer("forward"):
            u = self.block.buffers.empty(self.n)
            if x.any():
                self.matrix.matvec(x, out=u)
            else:
                # C·0 with finite C (validated): every row's sum is 0.0 + (±0.0) + … = +0.0, so zeros
                # are the pass's bits, without its read of C (a solve from x0 = 0).
                u.fill(0.0)
        self._last_forward = (x.copy(), u)
        return u

    def row_vectors(self, u):
        """The model's stages at u up to the columns Q of the transposed pass: (known, kept), no pass over C."""
        *before, last = self.row_model.evaluation
        known, kept = run_stages(before, self.block, {"u": u})
        summary, new = last.rows(self.block, kept, known)
        return known, {**kept, **new}

    def evaluate(self, x, timer=None, with_P=True):
        """Evaluation at a validated float64 x: the fused pass Cᵀ[q, U] when ``with_P``, else the
        gradient's columns alone (P = CᵀU is then formed by a second pass if a Hessian is asked for)."""
        timer = timer or no_timer
        ev = self._last
        if ev is None or not np.array_equal(ev.x, x):
            ev = self.evaluate_from(x, {"u": self._forward(x, timer)}, timer, with_P)
        if with_P and ev.P is None:
            with timer("gradient"):
                ev.P = self.matrix.rmatmat(ev.kept["Q"][:, 1:])
        return ev

    def evaluate_from(self, x, kept, timer=no_timer, with_P=True, first=None):
        """The evaluation at x from its u = Cx in ``kept``; ``first``: the ``TrialRows`` of a line-search
        trial at that u, whose stages are then not run again."""
        return run_rounds(self.evaluation_rounds(x, kept, timer, with_P, first), _transposed_pass(self.matrix, timer))

    def evaluation_rounds(self, x, kept, timer=no_timer, with_P=True, first=None):
        """``evaluate_from`` as a generator (yields Q, is sent CᵀQ: ``stage_rounds``); returns the Evaluation."""
        stages = self.row_model.evaluation
        known, done = None, None
        if first is not None:
            known, kept, done = first.known, first.kept, first.rows
            stages = stages[first.stages:]
        columns = None if with_P else self.row_model.gradient_columns
        model = self.row_model
        known, kept = yield from stage_rounds(stages, self.block, kept, timer, columns, known, done,
                                              self._columns_check(model))
        with timer("gradient"):
            grad, loss, S = checked_evaluation(known, self.model, self.d, model.k)
            grad = grad + self.l2 * x
        loss = loss + half_ridge(self.l2, x)
        ev = self._last = Evaluation(x.copy(), loss, grad, None, S, known, kept)
        if self.row_model.trial_columns and not x.any() and not kept["u"].any():
            # At x = 0 with u = +0.0 (u carried along a line could hold rounding where x + t·p is 0): the
            # loss stages at 0 would give these bits (``trial_columns``), so L(0) for ``diagnose`` needs
            # no kernels of its own at the end of a solve from zeros.
            self._loss_at_zero = loss
        if self._last_forward is not None and self._last_forward[1] is not kept["u"]:
            # An evaluation from a carried u (a line search's): the cached forward pass is of an
            # older point; let its u go back to the recycler (``fastnewton.buffers``).
            self._last_forward = None
        if with_P:
            ev.P = np.ascontiguousarray(known["G"][:, 1:]) if "G" in known else None
        return ev

    def loss_at(self, u, x):
        """L at a point whose u = Cx is already known (the model's loss stages)."""
        return self.trial_at({"u": u}, x)[0]

    def trial_at(self, kept, x, with_columns=False):
        """(L, ``TrialRows``) at a line-search trial whose u = Cx is in ``kept`` (with its maximum, when
        known: ``kernels.softmax.line_point``): the loss, and the stages run that the evaluation at the
        trial reuses (None when none is one of its stages).

        ``with_columns``, for a model whose ``trial_columns`` says so: the evaluation's stages up to the
        columns Q of the transposed pass instead of the loss stages (its loss from the same row sums), so
        an accepted trial's evaluation makes only that pass (softmax, CSR 2·10⁵ × 100: a kernel over the n
        rows less per accepted step, at the price of writing Q on a trial that is rejected)."""
        model = self.row_model
        if with_columns and model.trial_columns:
            *before, last = model.evaluation
            known, kept = run_stages(before, self.block, kept)
            summary, new = last.rows(self.block, kept, known)
            loss = model.loss_stages[-1].combine(summary, known).get("loss")
            rows = TrialRows(known, kept, len(before), (summary, new))
        else:
            head, *rest = model.loss_stages
            known, kept = run_stages((head,), self.block, kept)
            rows = TrialRows(known, kept, 1) if head == model.evaluation[0] else None
            known, _ = run_stages(rest, self.block, kept, known=known)
            loss = known.get("loss")
        return checked_loss(loss, self.model) + half_ridge(self.l2, x), rows

    def _columns_check(self, model):
        """The check of the columns Q = [q_a, U] that ``model`` (this Problem's, or its reference) hands the
        transposed pass: n rows, 1 + k columns, real floating (``checked_array``)."""
        shape = (self.n, model.k + 1)
        return lambda Q: checked_array(Q, shape, self.model, "Q, the columns of its transposed pass,")

    def beta(self, ev):
        """β at ev (formed once, when a Hessian first needs it)."""
        if ev.beta is None:
            ev.beta = checked_array(self.row_model.curvature(self.block, ev.kept, ev.known), (self.n,), self.model,
                                    "β, its curvature,", finite=finite_point(ev.known))
        return ev.beta

    def release_curvature(self, ev, keep_beta=False):
        """Let go of ev's arrays that only its Hessian needed (β and the columns Q, whose transposed pass
        is done) once the Hessian is formed: ``solve_many`` then holds per problem only what the line
        search and the next evaluation read, and the next evaluation's Q and β reuse this memory
        (``fastnewton.buffers``). ``keep_beta``: β stays (formed, as ``beta`` forms it), for the
        Hessian-vector products of a CG step; Q, which β was formed from, goes."""
        if keep_beta:
            self.beta(ev)
        else:
            ev.beta = None
        ev.kept = {key: value for key, value in ev.kept.items() if key != "Q"}

    def hessian_matrix(self, ev, sandwich=None):
        """Cᵀ diag(β) C (or a given approximation of it) + P S Pᵀ + λI; β itself is formed only if
        something formed it already (the model's ``curvature_sandwich`` may do without)."""
        if sandwich is None:
            sandwich = (self.matrix.sandwich(ev.beta) if ev.beta is not None
                        else checked_array(self.row_model.curvature_sandwich(self.block, ev.kept, ev.known),
                                           (self.d, self.d), self.model, "its curvature_sandwich"))
        return add_low_rank_and_ridge(sandwich, ev.P, ev.S, self.l2)

    def hessian_product(self, ev, p):
        """∇²L·p = Cᵀ(β ⊙ Cp) + P S Pᵀp + λp (one read of C: ``matrix.sandwich_vector``)."""
        return self.hessian_product_and_forward(ev, p)[0]

    def hessian_product_and_forward(self, ev, p):
        """(∇²L·p, C·p): the product and its first pass, which CG sums into C·(its step) so that the
        line search along the step needs no pass of its own (``fastnewton.hessian.ForwardKeepingProduct``).
        While β is not formed, the first FUSED_PRODUCTS products at ev (a ``lagged`` iteration's CG: 1–3) may form
        each βᵢ from the columns Q as its row is read (the model's ``curvature_sandwich_vector``, the same bits); a
        later one forms β first (many products at one x, e.g. scipy's Newton-CG through ``hessp``)."""
        fused = None
        if ev.beta is None and ev.products < FUSED_PRODUCTS and "Q" in ev.kept:
            fused = self.row_model.curvature_sandwich_vector(self.block, ev.kept, ev.known, p)
            if fused is not None:
                what = "of its curvature_sandwich_vector"
                fused = (checked_array(fused[0], (self.d,), self.model, f"Cᵀ(β ⊙ Cv) {what}"),
                         checked_array(fused[1], (self.n,), self.model, f"Cv {what}"))
        ev.products += 1
        Hp, Cp = fused if fused is not None else self.matrix.sandwich_vector(self.beta(ev), p)
        return self.hessian_product_from(ev, p, Hp), Cp

    def hessian_product_from(self, ev, p, sandwiched):
        """∇²L·p from its pass ``sandwiched`` = Cᵀ(β ⊙ Cp) (added to in place): + P S Pᵀp + λp."""
        sandwiched += ev.P @ (ev.S @ (ev.P.T @ p))
        sandwiched += self.l2 * p
        return sandwiched

    def sampled_sandwich(self, ev, s, rng, reference=None):
        """(CᵀD̃C from a leverage-score sample of about s rows, rows kept): ``fastnewton.sketching``
        (``reference``: a ``LeverageReference`` kept across the solve's iterations). Of the centred rows
        cᵢ − μ where the model allows it (``sampling_mean``), turned back by ``uncentred_sandwich``."""
        mean = self.sampling_mean()
        sandwich, kept = sampled_sandwich(self.matrix, self.beta(ev), self.l2, s, rng, reference, mean)
        if mean is not None:
            sandwich = uncentred_sandwich(sandwich, mean, ev.P, ev.S, self.row_model.ones_columns(ev.known))
        return sandwich, kept

    def centres_samples(self):
        """Whether the sketch samples centred rows cᵢ − μ: the model's u-Hessian annihilates 1
        (``Model.shift_invariant``) and no row weight is non-zero (½ Σ wᵢuᵢ² is not shift-invariant)."""
        return getattr(self.row_model, "shift_invariant", False) and not has_row_weights(self.block)

    def sampling_mean(self):
        """μ, C's column mean, when the sketch samples the centred rows cᵢ − μ (``centres_samples``, and some
        column's mean is not small against its spread: ``fastnewton.sketching.worth_centring``), else None.
        One transposed pass, kept by the matrix (``fastnewton.matrix.column_means``)."""
        if not self.centres_samples():
            return None
        mean = column_means(self.matrix)
        return mean if worth_centring(self.matrix.column_squares(), mean, self.matrix.n) else None

    def line(self, ev, p, Cp=None):
        """The line x + t·p from ev (``Cp``: C·p when already formed, e.g. with other problems' directions)."""
        return LineSearch(self, ev, p, Cp)

    def target_norm(self):
        return self.row_model.target_norm(self.facts)

    def gradient_at_zero(self):
        """∇L(0) (u = 0 needs no forward pass), using the model's reference derivative at 0 (read-only;
        kept until ``clear_cache``, and formed in another pass's read of C when one came first:
        ``rmatmat_with_gradient_at_zero``)."""
        if self._gradient_at_zero is None:
            at_zero = self._last
            if (at_zero is not None and not at_zero.x.any() and self.row_model.reference() is self.row_model
                    and "gradient" in at_zero.known):
                # The last evaluation was at 0 (a solve from x0 = 0) of this same model: its stages and
                # pass are the reference's (a transposed pass's sums do not depend on the other columns
                # of Q), so its gradient before the ridge term (λ·0) has the bits of a pass of its own.
                self._keep_gradient_at_zero(np.array(at_zero.known["gradient"], dtype=np.float64))
            else:
                self._keep_gradient_at_zero(run_rounds(self.gradient_at_zero_rounds(),
                                                       _transposed_pass(self.matrix, no_timer)))
        return self._gradient_at_zero

    def known_gradient_at_zero(self):
        """∇L(0) when formed already (e.g. beside the start's fit: ``with_gradient_at_zero``), else None."""
        return self._gradient_at_zero

    def _keep_gradient_at_zero(self, gradient):
        gradient.flags.writeable = False
        self._gradient_at_zero = gradient

    def rmatmat_with_gradient_at_zero(self, Q):
        """CᵀQ (n × k Q), with ∇L(0), when not known yet, from the same read of C (``with_gradient_at_zero``).
        The sampled start's pass for its fit's mean thus also gives the stopping test's g_ref (dense
        10⁵ × 256: 1 and 4 columns cost one pass alike, ~7 ms)."""
        columns, finish = self.with_gradient_at_zero(Q)
        return finish(self.matrix.rmatmat(columns))

    def with_gradient_at_zero(self, Q):
        """(columns, finish): Q with, while ∇L(0) is not known, its gradient columns appended, and ``finish(G)``,
        which keeps ∇L(0) from the transposed pass G = Cᵀ·columns and returns CᵀQ. A transposed pass's sums do
        not depend on the other columns, so ∇L(0) has the bits of its own pass; ``solve_many`` puts the columns of
        many problems in one pass."""
        if self._gradient_at_zero is not None:
            return Q, _unchanged
        rounds = self.gradient_at_zero_rounds(gradient_columns_only=True)
        try:
            columns = next(rounds)
        except StopIteration as stop:  # no pass asked for
            self._keep_gradient_at_zero(stop.value)
            return Q, _unchanged
        k = Q.shape[1]

        def finish(G):
            # A model asking for more than one pass: the others on their own.
            self._keep_gradient_at_zero(run_rounds_from(rounds, G[:, k:], self.matrix.rmatmat))
            return G[:, :k]

        # Beside Q only the gradient's columns: they are copied next to Q anyway (dense 10⁵ × 256, Q = ω:
        # 3 columns instead of 4, 7.1 → 5.9 ms on two threads, 12.7 → 9.6 ms on one).
        return side_by_side(Q, columns), finish

    def gradient_at_zero_rounds(self, gradient_columns_only=False):
        """``gradient_at_zero`` as a generator (yields Q, is sent CᵀQ: ``stage_rounds``); ``gradient_columns_only``:
        Q's gradient columns alone (P = CᵀU is not needed at 0) whatever k is."""
        reference = self.row_model.reference()
        # Q = [q, U] has k + 1 columns. Up to 3, the whole Q costs no more than its gradient columns: the
        # pass over C runs the unrolled 4-lane kernel either way (the same bits).
        columns = (reference.gradient_columns if gradient_columns_only or reference.k + 1 > 3 else None)
        known, _ = yield from stage_rounds(reference.evaluation, self.block, {"u": np.zeros(self.n)},
                                           columns=columns, checked=self._columns_check(reference))
        return known["gradient"]

    def column_norms(self):
        """‖C_j‖ for every column j: the fixed scale of the steps and of the column-scaled stopping test
        (one pass, kept until ``clear_cache``: a sampled start and the stopping test both need it; read-only)."""
        if self._column_norms is None:
            self._column_norms = np.sqrt(self.matrix.column_squares())
            self._column_norms.flags.writeable = False
        return self._column_norms

    def diagnose(self, ev):
        """A sentence when ev is a stationary point that cannot be the optimum, else None."""
        # The loss with its ridge term, as reported, is compared with L(0) (whose ridge term is 0).
        return self.row_model.diagnose(ev.known, ev.loss, self.facts, self.loss_at_zero)

    def loss_at_zero(self):
        """L(0), kept until the points are forgotten; from an evaluation at x = 0 when one was made (a solve
        from x0 = 0: its loss stages' sums, with the bits of the loss stages' own: ``trial_columns``)."""
        if self._loss_at_zero is None:
            self._loss_at_zero = self.loss_at(np.zeros(self.n), np.zeros(self.d))
        return self._loss_at_zero

    def relu_inputs(self, ev):
        """(what they are, values) of the model's ReLU inputs at ev, for the kink test; None without ReLUs."""
        return self.row_model.relu_inputs(ev.known, ev.kept)

    def relu_kink_inputs(self, ev):
        """(u, e, softmax factor, b, c) at ev for the kink tests (``fastnewton.kinks``), or None without ReLU rows."""
        return self.row_model.relu_kink_inputs(ev.known, ev.kept, self.block)

    def relu_rows(self, index):
        """C[index] as a dense float64 array (the few rows at a ReLU kink: ``fastnewton.kinks``)."""
        return self.matrix.rows(index)

    def kink_states(self, ev):
        """The kink test's per-row state from the solve's first evaluation ev (``fastnewton.kinks.RowStates``)."""
        return RowStates(self, ev)

    def one_sided_outputs(self, ev):
        """(J, y) of the outputs whose loss is ½ max(y_j, 0)² at ev, or None (``fastnewton.active_set``)."""
        return self.row_model.one_sided_outputs(ev.known, ev.P)

    def iteration_extras(self):
        """Entries added to each history record (the distributed problem reports its rounds here)."""
        return {}

    def auto_start(self):
        return self.row_model.auto_start(self)

    def auto_solve(self, build_system, options, timer=None, clock=None):
        """The solve from ``x0="auto"`` (the model's ``auto_solve``: its start and the Newton loop)."""
        return self.row_model.auto_solve(self, build_system, options, timer=timer, clock=clock)

    def auto_solve_rounds(self, build_system, options, timer=None, clock=None):
        """``auto_solve`` as a generator of its Newton loops (the model's ``auto_solve_rounds``)."""
        return self.row_model.auto_solve_rounds(self, build_system, options, timer, clock)

    def solve_from_rounds(self, x0, description, build_system, options, timer=None, clock=None):
        """The solve from a caller's x0 as a generator of its Newton loops (the model's ``solve_from_rounds``)."""
        return self.row_model.solve_from_rounds(self, x0, description, build_system, options, timer, clock)

    def with_model(self, row_model, l2):
        """This problem for another model of the same targets (its ``facts`` are these) and ridge ``l2``:
        C, b, w and V are shared, not copied; the cached u = Cx stays valid, the cached evaluation and
        ∇L(0) do not."""
        other = copy.copy(self)
        other.row_model = row_model
        other.l2 = as_l2(l2)
        other._last = None
        other._gradient_at_zero = None
        other._loss_at_zero = None
        return other

    def map_blocks(self, function, *args):
        """function(block, *args) on the one block: its summary is the total."""
        return function(self.block, *args)

    def gather_blocks(self, function, *args):
        """[function(block, *args)] for the blocks in row order (here one)."""
        return [function(self.block, *args)]

    # -- public API --------------------------------------------------------------------------
    def clear_cache(self):
        """Forget the last point evaluated and what was formed from C (column norms, ∇L(0)): the next
        evaluation pays its passes over C again (after modifying C in place, so no value mixes old and new C)."""
        self._forget_points()
        self._column_norms = None
        self.matrix.clear_cache()

    def _forget_points(self):
        """Forget the evaluations at points (and ∇L(0)): what depends on b (a new target: ``with_target``)."""
        self._last = None
        self._last_forward = None
        self._gradient_at_zero = None
        self._loss_at_zero = None

    def _threads(self):
        """Numba's threads for a public method's call: one on a problem that ``solve`` runs on one thread
        (``default_thread_count``, decided once: it depends on C only), else the caller's."""
        if self._thread_count is _UNDECIDED:
            self._thread_count = default_thread_count(self, None)
        return numba_threads(self._thread_count)

    def loss(self, x):
        """L(x)."""
        x = self.as_point(x)
        if self._last is not None and np.array_equal(self._last.x, x):
            return _finite_or_warned(self._last.loss, "loss")
        with self._threads():
            return _finite_or_warned(self.loss_at(self._forward(x, no_timer), x), "loss")

    def grad(self, x):
        """∇L(x) = Cᵀq + λx (a new array)."""
        x = self.as_point(x)
        with self._threads():
            return _finite_or_warned(self.evaluate(x, with_P=False).grad.copy(), "grad")

    def loss_and_grad(self, x):
        """(L(x), ∇L(x)) from one forward and one fused transposed pass."""
        x = self.as_point(x)
        with self._threads():
            ev = self.evaluate(x, with_P=False)
        return _finite_or_warned(ev.loss, "loss_and_grad"), _finite_or_warned(ev.grad.copy(), "loss_and_grad")

    def hessian(self, x):
        """∇²L(x) = Cᵀ(diag(β) + U S Uᵀ)C + λI as a dense d × d array."""
        check_hessian_fits(self.d)
        x = self.as_point(x)
        with self._threads():
            return _finite_or_warned(self.hessian_matrix(self.evaluate(x)), "hessian")

    def hessp(self, x, p):
        """∇²L(x)·p = Cᵀ(β ⊙ Cp) + P S Pᵀp + λp without forming the Hessian (one read of C for the product)."""
        x, p = self.as_point(x), self.as_point(p, "p")
        with self._threads():
            return _finite_or_warned(self.hessian_product(self.evaluate(x), p), "hessp")

    def scaled(self, scale=None):
        """This loss divided by g_ref = ‖∇L(0)‖ for scipy.optimize, whose tolerances are absolute (``fastnewton.scaled``)."""
        from .scaled import ScaledProblem

        return ScaledProblem(self, scale)


def _finite_or_warned(value, method):
    """value (a number or an array), with a RuntimeWarning where it is not finite: at a finite x whose C·x or model
    stages overflow float64 the public methods would hand back NaN or ±inf unannounced (``solve`` stops there with
    NON_FINITE and says why). The value is returned as it is: a minimiser's line search may step back from it."""
    if not np.all(np.isfinite(value)):
        warnings.warn(f"Problem.{method}: the result at this x is not finite (C·x or the model's terms overflow "
                      f"float64): x is too large for the scale of C, b and V, or the problem's scale is too large",
                      RuntimeWarning, stacklevel=3)
    return value


@dataclass
class TrialRows:
    """What a line-search trial ran of the evaluation's stages at its u (``Problem.trial_at``): the globals
    ``known`` and arrays ``kept`` after its first ``stages`` stages, and ``rows``, the (summary, new arrays)
    of the next stage's ``rows`` when that ran too (it then only combines, once G = CᵀQ is formed)."""

    known: dict
    kept: dict
    stages: int
    rows: tuple = None


class LineSearch:
    """The line x + t·p: one pass C·p, then each trial's loss from u + t·Cp with no pass over C.

    ``largest`` = ‖Cp‖∞ (the logit cap); ``scale`` shrinks p (Cp stays, times the factor, as the
    workers of ``fastnewton.dask`` keep it, so both carry the same u). ``evaluate(t)`` reuses the
    u and first loss stage of the last trial, or of the one before when the last was longer (a
    rejected longer trial after an accepted one: ``fastnewton.newton``), when t is that trial's.
    C·p goes into a recycled array and ‖Cp‖∞ is read without a |Cp| temporary: a fresh length-n
    array costs its page faults on first touch (``fastnewton.buffers``).
    """

    def __init__(self, problem, ev, p, Cp=None):
        self.problem, self.ev, self.p = problem, ev, p
        if Cp is None:
            Cp = problem.matrix.matvec(p, out=problem.block.buffers.empty(problem.n))
        self.Cp = Cp
        # max and −min (both NaN when any entry is): ‖Cp‖∞ with no |Cp| array
        self.largest = max(float(Cp.max()), -float(Cp.min())) if Cp.size else 0.0
        self.factor = 1.0
        self.trial = None
        self.previous = None

    def scale(self, factor):
        self.p *= factor
        self.factor *= factor
        self.largest *= factor

    def _u(self, t):
        """{"u": u + (t·factor)·Cp, "u_max": its maximum}, u written into a recycled array (a trial per call:
        ``fastnewton.buffers``) in the same parallel region as its maximum (``line_point``)."""
        block = self.problem.block
        u = block.buffers.empty(self.Cp.shape[0])
        return {"u": u, "u_max": line_point(self.ev.kept["u"], t * self.factor, self.Cp, block.chunk, u)}

    def loss(self, t):
        # The line's first trial, the one usually accepted, also forms the columns of the transposed pass
        # (``Problem.trial_at``); later ones (backtracking, or a longer step after it) the loss alone, so
        # the arrays held stay those of one evaluation beside a trial's u and softmax.
        first_trial = self.trial is None
        kept = self._u(t)
        loss, rows = self.problem.trial_at(kept, self.ev.x + t * self.p, with_columns=first_trial)
        # A longer trial keeps the one before (the accepted step if the longer is rejected); a
        # shorter one (backtracking) lets it go: at most two trials' arrays are held, as while a
        # trial is computed.
        self.previous = self.trial if self.trial is not None and t > self.trial[0] else None
        self.trial = t, kept, rows
        return loss

    def evaluate(self, t, timer=None):
        timer = timer or no_timer
        return run_rounds(self.evaluation_rounds(t, timer), _transposed_pass(self.problem.matrix, timer))

    def evaluation_rounds(self, t, timer=no_timer):
        """``evaluate`` as a generator (yields Q, is sent CᵀQ: ``stage_rounds``)."""
        held = [trial for trial in (self.trial, self.previous) if trial is not None and trial[0] == t]
        # The line ends here: the other trial's arrays go before the evaluation forms its own (an accepted
        # step after a rejected longer one would otherwise hold a third set of trial arrays at the peak).
        self.trial = self.previous = None
        if held:
            _, kept, first = held[0]
        else:
            kept, first = self._u(t), None
        return self.problem.evaluation_rounds(self.ev.x + t * self.p, kept, timer, first=first)
