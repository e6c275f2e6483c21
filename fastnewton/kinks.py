"""relu_softmax's ReLU kinks in ``solve``'s Newton loop (``fastnewton.newton``): the rows at (Cx)ᵢ = 0, the
least-norm Clarke subgradient there (the stopping test at a kink) and the step that holds those rows at the
kink. The math is kernels/kinks.py's, which the compiled loop of ``solve_many`` (kernels/small_newton.py) calls
too; this module gathers its inputs from a ``Problem``'s evaluation and solves with the step's ``NewtonSystem``.

With a factored system (``exact``, ``sketch``) the held step is the bordered solve on the factor (``held_step``).
With CG (``pcg``, the lagged systems) a bordered solve would need one CG solve per row, each made of passes over
C; instead projected CG (``NewtonSystem.held_solve_rounds``) solves the held model once per working set, its
iterates kept on C_K p = −u_K, its multipliers from the last projection, and the working set is updated by the
same rule (``update_working_set``).

What the test keeps per row between iterations (the previous iterate's u, the sign-flip counters, what the last
step did to each row) is a problem's ``kink_states(ev)``: ``RowStates`` here on one machine, and on Dask
``fastnewton.dask.problem.DaskRowStates``, which keeps them on the workers and gathers only the candidate rows.
Either gives ``Kinks.at`` the same candidates (index, dense rows of C, ``kink_table``'s table); the step's math
then runs on the driver."""
import numpy as np

from .kernels.damping import predicted_ratio
from .kernels.kinks import (MAX_CANDIDATE_ROWS, MAX_KINK_ROWS, MAX_UPDATES, T_U, TABLE_FIELDS, held_classes,
                            held_gain_ratio, held_rows, held_step, hold_classes, kink_candidates, kink_table,
                            least_norm_subgradient, moving_rows_instead, parallel_groups, update_working_set)
from .reductions import dot

NO_ROWS = np.empty(0, dtype=np.int64)
# What relu_softmax's ReLU inputs are, in the kink sentences of stop messages (``kink_text``,
# ``kink_stationary_text``).
RELU_INPUTS = "row(s) with (Cx)ᵢ"
# A ReLU input sits at its kink when its sign flipped in the last step, or when it is non-zero but
# |value| ≤ KINK_RTOL · (largest |value|): steps that stall there move it by amounts of this order
# (exact zeros are left out: an empty row of C has u = 0 whatever x is).
KINK_RTOL = 1e-6


class Kinks:
    """The candidate kink rows at one iterate: their indices, their rows of C (dense), their table
    (kernels/kinks.py's ``T_*`` columns) and their classes of parallel rows (``parallel_groups``: ``group``,
    ``coefficient``); ``at_kink`` rows sit at the kink to rounding."""

    def __init__(self, index, rows, table, at_kink, group, coefficient):
        self.index, self.rows, self.table, self.at_kink = index, rows, table, at_kink
        self.group, self.coefficient = group, coefficient

    @classmethod
    def at(cls, problem, ev, states, rtol):
        """The kink rows at ev, or None (no ReLU rows here, none a candidate, or too many: kernels/kinks.py).
        ``states``: the problem's ``kink_states`` (per-row state between iterations, updated here: call once per
        iteration), or None. The candidates' classes of parallel rows are formed here, for either kind of states."""
        found = states.candidates(ev, rtol) if states is not None else None
        if found is None:
            return None
        index, rows, table, at_kink = found
        count = index.shape[0]
        group = np.empty(count, dtype=np.int64)
        coefficient = np.empty(count)
        if parallel_groups(rows, table, count, group, coefficient) < 0:
            return None
        return cls(index, rows, table, at_kink, group, coefficient)

    def stationarity(self, g, column_scale):
        """(rows at the kink, ‖g*‖, ‖D⁻¹g*‖) of the least-norm Clarke element g* (``least_norm_subgradient``)."""
        return least_norm_subgradient(g, self.rows, self.table, self.index.shape[0], self.group, self.coefficient,
                                      column_scale)

    def step_rounds(self, system, g, mu, p):
        """(step, rows held, its pᵀHp or None): the step with the working set's rows held at the kink, or
        (p, none, None). A generator as ``NewtonSystem.solve_rounds`` (a CG system's products are yielded).

        With a factor (``exact``, ``sketch``): ``held_step`` on W = M⁻¹C_Kᵀ from the factor. With CG (``pcg``, the
        lagged systems): projected CG on the working set (``NewtonSystem.held_solve_rounds``), one per update of
        the working set (``update_working_set``: the same rule), which gives the step's pᵀHp too; where it fails
        from every crossing candidate, again from the moving ones (as ``held_step`` does)."""
        count = self.index.shape[0]
        member = np.empty(count, dtype=np.bool_)
        if not held_rows(self.rows, self.table, count, p, member, True):
            return p, NO_ROWS, None
        group, coefficient = self.group, self.coefficient
        if system.hessp is None:
            W = np.zeros((p.shape[0], count))
            for k in range(count):
                if group[k] == k:  # the constraints are the classes' rows (``held_step``)
                    column = system.solve(self.rows[k], mu)  # −M⁻¹Rₖ
                    if column is None:
                        return p, NO_ROWS, None
                    W[:, k] = -column
            held = np.empty_like(p)
            if not held_step(self.rows, W, self.table, group, coefficient, member, p, g, held):
                return p, NO_ROWS, None
            return held, self.index[member], None
        first = member.copy()
        for attempt in range(2):
            if attempt and not moving_rows_instead(self.rows, self.table, p, first, member):
                break
            left = np.zeros(count, dtype=np.bool_)
            for _ in range(MAX_UPDATES + 1):
                rows = held_classes(member, group)
                if rows.shape[0] == 0 or rows.shape[0] > MAX_KINK_ROWS:
                    break
                solved = yield from system.held_solve_rounds(g, mu, self.rows[rows], self.table[rows, T_U])
                if solved is None:
                    break
                held, nu, curvature = solved
                if update_working_set(self.rows, self.table, group, coefficient, rows, nu, held, member, left):
                    continue
                if np.all(np.isfinite(held)) and dot(g, held) < 0.0:
                    hold_classes(member, group)
                    return held, self.index[member], curvature
                break
        return p, NO_ROWS, None


class RowStates:
    """The kink test's per-row state on one machine (``Problem.kink_states``): the previous iterate's ReLU inputs
    (``relu_inputs``: any model's, which the stall message's kink sentence compares too), each row's sign flips in
    a row (int64) and what the last step did to it (int8, kernels/kinks.py's ``HELD_*``, or None: nothing)."""

    def __init__(self, problem, ev):
        self.problem = problem
        self.previous = problem.relu_inputs(ev)
        self.flips = None if self.previous is None else np.zeros(self.previous[1].shape[0], dtype=np.int64)
        self.held = None

    def candidates(self, ev, rtol):
        """(index, rows, table, rows at the kink) of the candidates at ev (``Kinks``' fields), or None; counts the
        sign flips since the previous iterate."""
        inputs = self.problem.relu_kink_inputs(ev) if self.previous is not None else None
        if inputs is None:
            return None
        u, e, scale, b, c = inputs
        held = self.held if self.held is not None else np.zeros(u.shape[0], dtype=np.int8)
        index = np.empty(MAX_CANDIDATE_ROWS, dtype=np.int64)
        count = kink_candidates(u, self.previous[1], held, self.flips, rtol, index)
        if count <= 0:
            return None
        index = index[:count]
        rows = self.problem.relu_rows(index)
        table = np.empty((count, TABLE_FIELDS))
        at_kink = kink_table(rows, index, count, u, self.flips, held, ev.x, e, scale, b, c, table)
        return index, rows, table, at_kink

    def stall_sentence(self, ev):
        """The STALLED message's kink sentence at ev (``kink_sentence`` against the previous iterate), or None."""
        return kink_sentence(self.previous, self.problem.relu_inputs(ev),
                             self.problem.relu_kink_inputs(ev) is not None)

    def after_step(self, ev, held, state):
        """A step from ev was taken that held the rows ``held`` (global indices) with ``state`` (``HELD_*``)."""
        self.previous = self.problem.relu_inputs(ev)
        self.held = None
        if held.size:
            self.held = np.zeros(self.previous[1].shape[0], dtype=np.int8)
            self.held[held] = state


def held_ratio(system, g, s, actual, noise, curvature=None):
    """The gain ratio of a held step s: ``held_gain_ratio`` with the system's matrix, or, given sᵀHs
    (``curvature``: a CG system's matrix is only its preconditioner), actual / (−gᵀs − ½ sᵀHs)."""
    if curvature is None:
        return held_gain_ratio(g, system.matrix, s, actual, noise)
    return predicted_ratio(actual, -(dot(g, s) + 0.5 * curvature), noise)


def kink_stationary_text(count):
    """The CONVERGED message's sentence for a stationary point at ``count`` ReLU kinks."""
    return (f"x is a kink stationary point: {count} {RELU_INPUTS} sit at the ReLU kink, where L is not "
            f"differentiable; the least-norm element of its Clarke subdifferential there meets the test "
            f"(subgradient_norm), ∇L itself cannot.")


def near_or_flipped(flipped, values, largest):
    """The ReLU inputs at their kink (``KINK_RTOL``): sign flipped in the last step, or non-zero with
    |value| ≤ KINK_RTOL·largest (largest: max |value| over all inputs, on Dask over every block's)."""
    return flipped | ((np.abs(values) <= KINK_RTOL * largest) & (values != 0.0))


def kink_sentence(before, after, held=False):
    """The stop message's sentence when the ReLU inputs sit at the kink, or None.

    ``before`` and ``after`` are an evaluator's ``relu_inputs`` at two successive iterates:
    (what they are, their values) or None for a model without ReLU inputs on the driver; ``held``: whether the
    loop holds rows at the kink (relu_softmax)."""
    if before is None or after is None:
        return None
    what, previous = before
    _, values = after
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    at_kink = near_or_flipped((previous > 0.0) != (values > 0.0), values, largest)
    if not at_kink.any():
        return None
    return kink_text(what, int(at_kink.sum()), int(np.flatnonzero(at_kink)[0]), held)


def kink_text(what, count, first, held=False):
    """The kink sentence for ``count`` ReLU inputs at the kink, the first at index ``first``; ``held``: whether the
    loop holds rows at the kink (then more rows than it reads are said to be beyond it)."""
    text = (f"x sits at a ReLU kink: {count} {what} ≈ 0 or changing sign between steps (e.g. "
            f"index {first}), where L is not differentiable and Newton steps no "
            f"longer reduce it beyond rounding.")
    if held and count > MAX_CANDIDATE_ROWS:
        text += (f" That is more rows than the step that holds rows at the kink reads ({MAX_CANDIDATE_ROWS}), so "
                 f"plain Newton steps were taken.")
    return text
