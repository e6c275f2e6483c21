"""relu_softmax's ReLU kinks in ``solve``'s Newton loop (``fastnewton.newton``): the rows at (Cx)ᵢ = 0, the
least-norm Clarke subgradient there (the stopping test at a kink) and the step that holds those rows at the
kink. The math is kernels/kinks.py's, which the compiled loop of ``solve_many`` (kernels/small_newton.py) calls
too; this module gathers its inputs from a ``Problem``'s evaluation and solves with the step's ``NewtonSystem``.

Only on one machine (Dask's evaluator keeps the rows on its workers: its ``relu_kink_inputs`` are None) and, for the
step, only with a system that has a factor (``exact``, ``sketch``): with CG (``pcg``, the lagged systems) each
of the bordered system's solves would cost passes over C, so those take the plain step (the kink stopping
test applies to every strategy)."""
import numpy as np

from .kernels.kinks import (MAX_CANDIDATES, TABLE_FIELDS, held_gain_ratio, held_rows, held_step, kink_candidates,
                            kink_table, least_norm_subgradient)

NO_ROWS = np.empty(0, dtype=np.int64)


class Kinks:
    """The candidate kink rows at one iterate: their indices, their rows of C (dense) and their table
    (kernels/kinks.py's ``T_*`` columns); ``at_kink`` rows sit at the kink to rounding."""

    def __init__(self, index, rows, table, at_kink):
        self.index, self.rows, self.table, self.at_kink = index, rows, table, at_kink

    @classmethod
    def at(cls, problem, ev, previous, held, flips, rtol):
        """The kink rows at ev, or None (no ReLU rows here, none a candidate, or too many: kernels/kinks.py).
        ``previous``: the evaluator's ``relu_inputs`` before the last step; ``held``: what it did to each row
        (int8, kernels/kinks.py's ``HELD_*``, or None: nothing); ``flips``: each row's sign flips in a row (int64,
        updated here: call once per iteration)."""
        inputs = problem.relu_kink_inputs(ev) if previous is not None else None
        if inputs is None:
            return None
        u, e, scale, b, c = inputs
        if held is None:
            held = np.zeros(u.shape[0], dtype=np.int8)
        index = np.empty(MAX_CANDIDATES, dtype=np.int64)
        count = kink_candidates(u, previous[1], held, flips, rtol, index)
        if count <= 0:
            return None
        index = index[:count]
        rows = problem.relu_rows(index)
        table = np.empty((count, TABLE_FIELDS))
        at_kink = kink_table(rows, index, count, u, flips, held, ev.x, e, scale, b, c, table)
        return cls(index, rows, table, at_kink)

    def stationarity(self, g, column_scale):
        """(rows at the kink, ‖g*‖, ‖D⁻¹g*‖) of the least-norm Clarke element g* (``least_norm_subgradient``)."""
        return least_norm_subgradient(g, self.rows, self.table, self.index.shape[0], column_scale)

    def step(self, system, g, mu, p):
        """(step, rows held): the step with the working set's rows held at the kink (``held_step``), or (p, none)."""
        count = self.index.shape[0]
        member = np.empty(count, dtype=np.bool_)
        if not held_rows(self.rows, self.table, count, p, member):
            return p, NO_ROWS
        W = np.empty((p.shape[0], count))
        for k in range(count):
            column = system.solve(self.rows[k], mu)  # −M⁻¹Rₖ
            if column is None:
                return p, NO_ROWS
            W[:, k] = -column
        held = np.empty_like(p)
        if not held_step(self.rows, W, self.table, member, p, g, held):
            return p, NO_ROWS
        return held, self.index[member]


def held_ratio(system, g, s, actual, noise):
    """The gain ratio of a held step s (``held_gain_ratio``, with the system's matrix)."""
    return held_gain_ratio(g, system.matrix, s, actual, noise)


def kink_stationary_text(count):
    """The CONVERGED message's sentence for a stationary point at ``count`` ReLU kinks."""
    return (f"x is a kink stationary point: {count} row(s) with (Cx)ᵢ sit at the ReLU kink, where L is not "
            f"differentiable; the least-norm element of its Clarke subdifferential there meets the test "
            f"(subgradient_norm), ∇L itself cannot.")
