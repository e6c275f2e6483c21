"""Planted problems for demos, tests and benchmarks."""
from collections import namedtuple

import numpy as np
import scipy.sparse as sp

from .models import uses_values
from .prediction import predict
from .validation import as_flag, as_positive_int, as_real_scalar, as_seed, check_model


class PlantedProblem(namedtuple("PlantedProblem", ["C", "b", "x_true"])):
    """What ``make_problem`` returns: a named tuple ``(C, b, x_true)`` plus the attributes ``V``
    (the n × m value matrix of ``softmax_relu``, None for the other models) and ``model``.

    ``C, b, x_true = make_problem(...)`` unpacks every model the same way; pass
    ``V=problem.V`` to ``solve``/``Problem`` (None is their default).
    """

    def __new__(cls, C, b, x_true, V=None, model="softmax"):
        self = super().__new__(cls, C, b, x_true)
        self.V = V
        self.model = model
        return self

    def __repr__(self):
        shape = "×".join(map(str, self.C.shape))
        kind = "CSR" if sp.issparse(self.C) else "dense"
        extra = f", V {self.V.shape[0]}×{self.V.shape[1]}" if self.V is not None else ""
        return f"PlantedProblem(model={self.model!r}, C {kind} {shape}, b length {self.b.shape[0]}{extra})"


def make_problem(n, d, *, nnz_per_row=None, density=None, model="softmax", m=None, scale=1.0,
                 noise=0.0, seed=None, dense=False):
    """A planted problem: the named tuple ``(C, b, x_true)``, with ``.V`` for ``softmax_relu``.

    C is CSR (``nnz_per_row`` entries per row at uniformly random columns, duplicates
    summed; or ``density`` × d per row; default min(d, 10)) or, with ``dense=True``, a
    dense n × d array; values are standard normal. x_true ~ N(0, scale²/k) with k
    entries per row, so the logits u = C x_true are ≈ N(0, scale²). b = h(u) exactly,
    then, if ``noise`` > 0, multiplied entrywise by (1 + noise·N(0, 1)) and clipped at 0.
    For ``softmax_relu``, V (n × m, default m = min(d, 16)) has entries uniform in
    [−0.5, 1], so every output is positive at the uniform softmax (x = 0). ``nnz_per_row`` / ``density``
    with ``dense=True``, and ``m`` with another model, are checked and not used.
    """
    n = as_positive_int(n, "n")
    d = as_positive_int(d, "d")
    model = check_model(model)
    scale = as_real_scalar(scale, "scale")
    noise = as_real_scalar(noise, "noise")
    seed = as_seed(seed)
    dense = as_flag(dense, "dense")
    if nnz_per_row is not None and density is not None:
        raise ValueError("give nnz_per_row or density, not both")
    # checked whether or not they are used (a dense C has every entry; only softmax_relu has V)
    if density is not None:
        density = as_real_scalar(density, "density")
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}")
    if nnz_per_row is not None:
        nnz_per_row = as_positive_int(nnz_per_row, "nnz_per_row")
    if m is not None:
        m = as_positive_int(m, "m")
    rng = np.random.default_rng(seed)
    if dense:
        C = rng.standard_normal((n, d))
        k = d
    else:
        if density is not None:
            k = max(1, int(round(density * d)))
        else:
            k = nnz_per_row if nnz_per_row is not None else min(d, 10)
        k = min(k, d)
        index_dtype = np.int32 if d < 2**31 - 1 and n * k < 2**31 - 1 else np.int64
        columns = np.sort(rng.integers(0, d, size=(n, k), dtype=index_dtype), axis=1)
        values = rng.standard_normal(n * k)
        indptr = np.arange(0, n * k + 1, k, dtype=index_dtype)
        C = sp.csr_matrix((values, columns.ravel(), indptr), shape=(n, d))
        C.has_sorted_indices = True
        C.sum_duplicates()
    with np.errstate(over="ignore", invalid="ignore"):
        x_true = rng.standard_normal(d) * (scale / np.sqrt(k))
        u = C @ x_true
    if not np.all(np.isfinite(x_true)) or not np.all(np.isfinite(u)):
        raise ValueError(f"scale = {scale:g} is too large: the planted logits C·x_true overflow float64")
    V = None
    if uses_values(model):
        m = m if m is not None else min(d, 16)
        V = rng.uniform(-0.5, 1.0, size=(n, m))
    b = predict(C, x_true, model, V)
    if noise > 0:
        b = np.maximum(b * (1.0 + noise * rng.standard_normal(b.shape[0])), 0.0)
    return PlantedProblem(C, b, x_true, V=V, model=model)
