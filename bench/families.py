"""Random attention-like problem families for the start and the solver (NumPy and SciPy only).

Each problem is an attention-inversion instance: keys C (n × d), a query x_true, attention
weights softmax(C x_true) and, for ``softmax_relu``, values V (n × m) read out through a ReLU.
No real transformer weights can be downloaded here, so the keys imitate their structure:

- ``gaussian``: i.i.d. N(0, 1) entries (the planted problems of ``fastnewton.make_problem``);
- ``low_rank``: C = A Bᵀ + 0.3·N with rank r = d/4 (keys share a few directions, as trained
  keys do), N Gaussian noise;
- ``clustered``: rows drawn around k = 3..12 centres (keys of similar tokens), spread 0.5.

Sparse problems (CSR) keep a fraction 10–50 % of each row's entries. The query is scaled so the
logits C x_true have standard deviation ``logit_scale`` ∈ [0.3, 3] (flat to peaked attention).
Values: V_ij = G_ij + o_j with G Gaussian and per-output offsets o_j ∈ [−1, 1]·σ (mixed signs and
offsets), so some outputs are negative at the optimum (b_j = 0, their ReLU inactive) and the
others positive. ``noise`` > 0 makes b unreachable: b ← max(b + noise·‖b‖/√len(b)·N(0, 1), 0)
(additive, so inactive outputs can become slightly positive, as data does).

``family(model, count, seed)`` yields ``Case`` records; the same (model, seed, index) always
gives the same problem (each problem has its own generator seeded from (seed, index)).
"""
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

KEY_KINDS = ("gaussian", "low_rank", "clustered")


@dataclass
class Case:
    """One problem: the inputs of ``fastnewton.solve`` and how it was made."""

    name: str
    model: str
    C: object
    b: np.ndarray
    V: object
    x_true: np.ndarray
    reachable: bool
    params: dict


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _keys(rng, n, d, kind):
    if kind == "gaussian":
        return rng.standard_normal((n, d))
    if kind == "low_rank":
        rank = max(1, d // 4)
        return (rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) / np.sqrt(rank)
                + 0.3 * rng.standard_normal((n, d)))
    centres = rng.standard_normal((int(rng.integers(3, 13)), d))
    return centres[rng.integers(0, centres.shape[0], size=n)] + 0.5 * rng.standard_normal((n, d))


def make_case(model, seed, index, *, n_range=(50, 5000), d_range=(8, 128), noise=0.0, sparse=None):
    """Problem ``index`` of the family of ``model`` with seed ``seed`` (see the module docstring)."""
    rng = np.random.default_rng([seed, index])
    n = int(np.exp(rng.uniform(np.log(n_range[0]), np.log(n_range[1]))))
    d = int(np.exp(rng.uniform(np.log(d_range[0]), np.log(d_range[1]))))
    kind = KEY_KINDS[index % len(KEY_KINDS)]
    sparse = bool(rng.random() < 0.5) if sparse is None else sparse
    C = _keys(rng, n, d, kind)
    if sparse:
        keep = rng.random((n, d)) < rng.uniform(0.1, 0.5)
        keep[np.arange(n), rng.integers(0, d, size=n)] = True
        C = sp.csr_matrix(np.where(keep, C, 0.0))
    logit_scale = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    x_true = rng.standard_normal(d)
    u = C @ x_true
    x_true *= logit_scale / max(np.std(u), 1e-12)
    u = C @ x_true
    params = dict(n=n, d=d, keys=kind, format="csr" if sparse else "dense", logit_scale=logit_scale, noise=noise)
    V = None
    if model == "softmax":
        b = _softmax(u)
    elif model == "relu_softmax":
        b = _softmax(np.maximum(u, 0.0))
    else:
        m = int(rng.integers(2, 2 * d + 1))
        spread = float(np.exp(rng.uniform(np.log(0.1), np.log(10.0))))
        V = spread * (rng.standard_normal((n, m)) + rng.uniform(-1.0, 1.0, size=m))
        y = V.T @ _softmax(u)
        if not np.any(y > 0.0):  # at least one active output, so that ‖b‖ > 0
            V[:, np.argmax(y)] += spread - y.max()
            y = V.T @ _softmax(u)
        b = np.maximum(y, 0.0)
        params.update(m=m, value_scale=spread, inactive=int(np.sum(b == 0.0)))
    if noise > 0.0:
        b = np.maximum(b + noise * np.linalg.norm(b) / np.sqrt(b.size) * rng.standard_normal(b.size), 0.0)
        if model != "softmax_relu":
            b /= b.sum()  # softmax targets stay on the simplex
    name = f"{model}-{seed}-{index}"
    return Case(name, model, C, b, V, x_true, noise == 0.0, params)


def family(model, count, seed=0, *, noisy_fraction=0.0, **kwargs):
    """``count`` problems of ``model``; the last ``noisy_fraction`` of them with noisy targets (noise 0.05)."""
    noisy_from = count - int(round(noisy_fraction * count))
    for index in range(count):
        yield make_case(model, seed, index, noise=0.05 if index >= noisy_from else 0.0, **kwargs)


def relative_residual(case, x):
    """‖h(Cx) − b‖ / ‖b‖."""
    u = case.C @ x
    if case.model == "softmax":
        h = _softmax(u)
    elif case.model == "relu_softmax":
        h = _softmax(np.maximum(u, 0.0))
    else:
        h = np.maximum(case.V.T @ _softmax(u), 0.0)
    return float(np.linalg.norm(h - case.b) / np.linalg.norm(case.b))
