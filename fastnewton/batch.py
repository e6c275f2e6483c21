"""``solve_many``: many problems in one call, and the batch result it returns.

Two forms share one entry point:

- ``solve_many(C, B, model=..., V=None, **kw)``: one C (n × d) and q targets, the columns of B
  (n × q, or m × q for models read out through V). Implemented in ``fastnewton.many_targets``.
- ``solve_many(problems, model=..., **kw)``: a list or tuple of independent ``(C, b)`` or ``(C, b, V)``
  tuples whose shapes may differ, or an iterator of them (a generator, ``zip(Cs, bs)``), read once.
  Implemented in ``fastnewton.many_small``.
"""
import inspect
from collections.abc import Iterator

import numpy as np
from scipy.optimize import OptimizeResult


class BatchResult(OptimizeResult):
    """Result of ``fastnewton.solve_many``: one entry per problem, in input order.

    Attributes: ``x`` (d × q array when every problem has the same d, else a list of
    length-dᵢ arrays), and per-problem arrays ``status`` (``Status`` codes, int),
    ``converged`` (bool), ``n_iter`` (int), ``loss``, ``grad_norm``, ``rel_grad_norm``
    (float) and ``message`` (a list of str); ``time`` (seconds, the whole call).
    ``len(result)`` is the number of problems and ``result.problem(i)`` gives problem i's
    entries as a dict.
    """

    PER_PROBLEM = ("status", "converged", "n_iter", "loss", "grad_norm", "rel_grad_norm", "message")

    def __dir__(self):
        return list(self.keys())

    def __len__(self):
        return len(self["status"])

    def problem(self, i):
        """Problem i's x and per-problem entries, as a dict."""
        x = self["x"][i] if isinstance(self["x"], list) else self["x"][:, i]
        return {"x": x, **{key: self[key][i] for key in self.PER_PROBLEM if key in self}}

    def __repr__(self):
        status = np.asarray(self["status"])
        counts = {int(s): int(np.count_nonzero(status == s)) for s in np.unique(status)}
        return (f"BatchResult({len(self)} problems, converged {int(np.count_nonzero(self['converged']))}, "
                f"status counts {counts}, time {self.get('time', float('nan')):.3g} s)")


def solve_many(problems_or_C, B=None, model="softmax", *, V=None, **kwargs):
    """Solve many problems in one call; see the module docstring for the two forms.

    Keywords are ``fastnewton.solve``'s (l2, row_weights, x0, hessian, tol, max_iter, seed, ...), applied to
    every problem, but for ``progress`` (``solve``'s only: a TypeError), and ``callback`` and ``verbose``, which
    the one-C form takes (the callback's record names its column as ``info["problem"]``; one line per problem)
    and the list form does not (its loop runs in compiled code: a TypeError). Returns a ``BatchResult``.
    """
    if B is None and isinstance(problems_or_C, Iterator):  # a generator, zip(Cs, bs), map(...): taken once
        problems_or_C = list(problems_or_C)
    if isinstance(B, str) and isinstance(problems_or_C, (list, tuple)):
        raise TypeError(f"solve_many(problems, ...) takes the model as a keyword (model={B!r}): its second positional "
                        f"argument is B, the targets of one C")
    if B is None and isinstance(problems_or_C, (list, tuple)):
        if V is not None:
            raise TypeError("V is given per problem in the sequence form: pass (C, b, V) tuples")
        from .many_small import solve_problems
        return solve_problems(problems_or_C, model=model, **kwargs)
    if B is None:
        raise TypeError("solve_many needs B (the targets, one per column) when given one C, "
                        "or a list (or an iterator) of (C, b) / (C, b, V) tuples")
    if kwargs.pop("progress", None) not in (None, False):
        raise TypeError("solve_many(C, B) does not take progress: call fastnewton.solve per column for a progress "
                        "bar, or pass callback= (its record names the column)")
    from .many_targets import solve_targets
    unknown = set(kwargs) - set(inspect.signature(solve_targets).parameters)
    if unknown:  # named as the user's call, not the internal function's
        raise TypeError(f"solve_many got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
    return solve_targets(problems_or_C, B, model=model, V=V, **kwargs)
