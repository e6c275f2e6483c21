"""The driver's interface: what the Newton loop, the Hessian strategies and the starts ask of a problem.

``fastnewton.Problem`` (one machine, C in memory) and ``fastnewton.dask.problem.DaskProblem``
(C as row blocks on a cluster) both implement ``Evaluator``; ``fastnewton.newton``,
``fastnewton.hessian``, ``fastnewton.start`` and the models' ``auto_start``/``auto_solve`` use
nothing else. ``with_model(row_model, l2)`` is a copy of the evaluator (the same C, blocks and
targets, no pass over C) for another model of the same targets and another ridge: a staged start
(``fastnewton.lifted_start``) runs Newton on it.
"""
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Evaluation:
    """One point x: the loss, ∇L, P = CᵀU and S on the driver; ``known`` the model's globals at x;
    ``kept`` what stays with the blocks (arrays on one machine, futures on Dask); β once needed."""

    x: np.ndarray
    loss: float
    grad: np.ndarray
    P: object  # d × k array, or None until a Hessian needs it
    S: np.ndarray
    known: dict
    kept: object
    beta: object = None
    # Hessian-vector products formed at x (``Problem.hessian_product_and_forward``: the first few form β in their pass).
    products: int = 0


class Line(Protocol):
    """The line x + t·p from an evaluation; ``largest`` = ‖Cp‖∞ (the logit cap).

    ``evaluate(t)`` is the evaluation at x + t·p with u carried as u + t·Cp (no forward pass);
    the first stage that the trial at t ran (e.g. the softmax log-partition) is reused.
    """

    p: np.ndarray
    largest: float

    def scale(self, factor): ...

    def loss(self, t): ...

    def evaluate(self, t, timer=None) -> Evaluation: ...


class Evaluator(Protocol):
    """L(x) = ½‖h(Cx) − b‖² + ½ Σᵢ wᵢ (Cx)ᵢ² + ½ λ‖x‖² for one model, with the passes over C done wherever C lives."""

    n: int
    d: int
    l2: float
    matrix: object  # n, d, nnz, format
    facts: dict  # the model's summable statistics of the targets

    def as_point(self, x, name="x"): ...

    def evaluate(self, x, timer=None) -> Evaluation: ...

    def loss(self, x) -> float: ...

    def line(self, ev, p) -> Line: ...

    def hessian_matrix(self, ev, sandwich=None) -> np.ndarray: ...

    def hessian_product(self, ev, p) -> np.ndarray: ...

    def sampled_sandwich(self, ev, s, rng, reference=None): ...

    def target_norm(self) -> float: ...

    def gradient_at_zero(self) -> np.ndarray: ...

    def column_norms(self) -> np.ndarray: ...

    def relu_inputs(self, ev): ...

    def relu_kink_inputs(self, ev): ...

    def relu_rows(self, index) -> np.ndarray: ...

    def kink_states(self, ev): ...

    def one_sided_outputs(self, ev): ...

    def diagnose(self, ev): ...

    def iteration_extras(self) -> dict: ...

    def auto_start(self): ...

    def auto_solve(self, build_system, options, timer=None, clock=None): ...

    def solve_from_rounds(self, x0, description, build_system, options, timer=None, clock=None): ...

    def with_model(self, row_model, l2): ...

    def map_blocks(self, function, *args) -> dict: ...

    def gather_blocks(self, function, *args) -> list: ...


def add_low_rank_and_ridge(H, P, S, l2):
    """H + P S Pᵀ + λI in place (symmetrised, so the Hessian is exactly symmetric)."""
    low_rank = P @ S @ P.T
    H += 0.5 * (low_rank + low_rank.T)
    H[np.diag_indices_from(H)] += l2
    return H


class _NoTimer:
    def __call__(self, phase):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


no_timer = _NoTimer()
