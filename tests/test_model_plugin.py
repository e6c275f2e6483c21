"""A fourth model added from outside the package: softmax with a temperature τ, h(u) = softmax(u/τ).

Everything the solvers need is stated here, in this file, against ``fastnewton.models``' interface
(plain NumPy, no kernels), and registered with ``register_model``; nothing in fastnewton/ knows it.
Its derivatives are checked against central differences of its own loss and against a plain NumPy
loss, and it is solved by ``fastnewton.solve`` and ``fastnewton.dask.solve`` alike.

Derivation (z = u/τ, s = softmax(z), r = s − b, c = ⟨s, r⟩, v = s ⊙ (2s − b), γ = ⟨3s − 2b, s⟩):
∂L/∂u = (s ⊙ r − c s)/τ + w ⊙ u and ∂²L/∂u² = diag((v − c s)/τ² + w) + U S Uᵀ with
U = [s, v]/τ and S = [[γ, −1], [−1, 0]] (the softmax model's, scaled by the chain rule).
"""
import contextlib
import re
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import fastnewton
from fastnewton.models import LogPartition, Model, Stage, register_model
from fastnewton.models.base import half_loss, keep_log_partition
from fastnewton.models.softmax import softmax_gradient
from fastnewton.start import log_linear_fit

TAU = 2.0
NAME = "softmax_temperature"


class TemperatureSoftmax(Model):
    """h(u) = softmax(u/τ), b per row."""

    name = NAME
    k = 2

    def __init__(self, tau):
        self.tau = tau
        first = Stage(self._log_partition, keep_log_partition)
        # The driver-side combinations are the softmax model's: S and the c-term split do not
        # depend on τ once U and q carry the 1/τ of the chain rule.
        self.evaluation = (first, Stage(self._columns, softmax_gradient))
        self.loss_stages = (first, Stage(self._loss_rows, half_loss))

    def _log_partition(self, block, kept, known):
        z = kept["u"] / self.tau
        top = float(z.max())
        e = np.exp(z - top)
        return {"log_partition": LogPartition(top, e.sum())}, {"e": e, "block_top": top}

    def _softmax(self, kept, known):
        return kept["e"] * known["log_partition"].factor(kept["block_top"])

    def _columns(self, block, kept, known):
        s, u, w = self._softmax(kept, known), kept["u"], block.w
        r = s - block.b
        v = s * (2.0 * s - block.b)
        Q = np.column_stack([s * r / self.tau + w * u, s / self.tau, v / self.tau])
        return {"c": np.sum(s * r), "gamma": np.sum((3.0 * s - 2.0 * block.b) * s),
                "loss2": np.sum(r * r + w * u * u)}, {"Q": Q}

    def _loss_rows(self, block, kept, known):
        r = self._softmax(kept, known) - block.b
        u = kept["u"]
        return {"loss2": np.sum(r * r + block.w * u * u)}, {}

    def curvature(self, block, kept, known):
        Q = kept["Q"]
        return (Q[:, 2] - known["c"] * Q[:, 1]) / self.tau + block.w

    def facts(self, block):
        return {"b_squared": float(block.b @ block.b)}

    def target_norm(self, facts):
        return float(np.sqrt(facts["b_squared"]))

    def auto_start(self, problem):
        """softmax(Cx/τ) ≈ b: τ times the b-weighted fit of log b on [C, 1]."""
        return self.tau * log_linear_fit(problem, _targets), "auto: τ·(b-weighted fit of log b on [C, 1])"


def _targets(block, parameters):
    return block.b


register_model(NAME, lambda target: TemperatureSoftmax(TAU))


def _planted(n=3000, d=6, seed=0, noise=1e-2):
    rng = np.random.default_rng(seed)
    C = sp.random(n, d, density=0.5, format="csr", random_state=seed, data_rvs=rng.standard_normal)
    x_true = rng.standard_normal(d)
    u = C @ x_true / TAU
    s = np.exp(u - u.max())
    b = s / s.sum() * (1.0 + noise * rng.standard_normal(n))
    return C, b, x_true


def _numpy_loss(C, b, x, w):
    u = C @ x
    z = u / TAU
    s = np.exp(z - z.max())
    s /= s.sum()
    return 0.5 * np.sum((s - b) ** 2) + 0.5 * np.sum(w * u * u)


def test_unknown_model_lists_the_registered_ones():
    C, b, _ = _planted(n=50)
    with pytest.raises(ValueError, match=f"'softmax'.*'{NAME}'.*got 'linear'"):
        fastnewton.Problem(C, b, model="linear")


def test_gradient_and_hessian_match_central_differences():
    C, b, x_true = _planted(n=400)
    w = np.random.default_rng(1).uniform(0.0, 1e-3, 400)
    problem = fastnewton.Problem(C, b, NAME, l2=1e-3, row_weights=w)
    x = x_true + 0.3 * np.random.default_rng(2).standard_normal(6)
    # The loss against an independent NumPy formula: a few hundred eps of relative rounding.
    ridge = 0.5e-3 * x @ x
    assert problem.loss(x) == pytest.approx(_numpy_loss(C, b, x, w) + ridge, rel=1e-12)
    # Central differences, h = 1e-5: truncation O(h²·|L'''|) ~ 1e-10 and rounding O(eps·L/h) ~ 1e-13
    # relative to the O(1e-3) gradient entries, so 1e-6 of the largest entry has a wide margin.
    h = 1e-5
    eye = np.eye(6)
    grad = problem.grad(x)
    fd_grad = np.array([(problem.loss(x + h * e) - problem.loss(x - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(grad, fd_grad, rtol=0, atol=1e-6 * np.abs(grad).max())
    H = problem.hessian(x)
    fd_hessian = np.column_stack([(problem.grad(x + h * e) - problem.grad(x - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(H, fd_hessian, rtol=0, atol=1e-6 * np.abs(H).max())
    p = np.random.default_rng(3).standard_normal(6)
    np.testing.assert_allclose(problem.hessp(x, p), H @ p, rtol=1e-12, atol=1e-14 * np.abs(H).max())


@pytest.mark.parametrize("hessian", ["exact", "pcg"])
def test_solve_reaches_the_planted_optimum(hessian):
    C, b, x_true = _planted(noise=0.0)
    res = fastnewton.solve(C, b, NAME, hessian=hessian, seed=0, tol=1e-10)
    assert res.converged, res.message
    assert res.start.startswith("auto")
    np.testing.assert_allclose(res.x, x_true, rtol=0, atol=1e-6)


@contextlib.contextmanager
def _plugin_cluster():
    """(a Client of a 2-worker LocalCluster, dask.array): the models live in this test module, which the worker
    processes cannot import, so it is shipped by value while the cluster runs."""
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                      silence_logs=50) as cluster, distributed.Client(cluster) as client:
            yield client, da
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_dask_solve_agrees_with_solve():
    import fastnewton.dask

    C, b, _ = _planted()
    kw = dict(hessian="exact", tol=1e-12, seed=0)
    reference = fastnewton.solve(C, b, NAME, **kw)
    with _plugin_cluster() as (client, da):
        res = fastnewton.dask.solve(da.from_array(C, chunks=(1300, 6), asarray=False), b, NAME, client=client, **kw)
    assert reference.converged and res.converged, (reference.message, res.message)
    # As tests/test_dask.py: the blockwise sums round differently, ~1e-16 per operation.
    assert np.max(np.abs(res.x - reference.x)) <= 1e-10 * np.max(np.abs(reference.x))


class _Broken(TemperatureSoftmax):
    """The temperature model with one output gone wrong (``fault``): what a badly written plugin hands back."""

    def __init__(self, fault):
        super().__init__(TAU)
        self.fault = fault
        first, columns = self.evaluation
        self.evaluation = (first, Stage(self._faulty_columns, self._faulty_combine))

    def _faulty_columns(self, block, kept, known):
        summary, new = self._columns(block, kept, known)
        Q = new["Q"]
        new["Q"] = {"Q_short": Q[:-1], "Q_int": Q.astype(np.int64), "Q_wide": np.column_stack([Q, Q[:, :1]])}.get(
            self.fault, Q)
        return summary, new

    def _faulty_combine(self, summary, known):
        out = softmax_gradient(summary, known)
        if self.fault == "gradient_complex":
            out["gradient"] = out["gradient"].astype(np.complex128)
        elif self.fault == "S_shape":
            out["S"] = np.zeros((3, 3))
        elif self.fault == "loss_array":
            out["loss"] = np.array([out["loss"], out["loss"]])
        elif self.fault == "S_nan":
            out["S"] = out["S"] * np.nan
        return out

    def curvature(self, block, kept, known):
        beta = super().curvature(block, kept, known)
        if self.fault in ("beta_nan", "beta_inf"):
            beta = beta.copy()
            beta[7] = np.nan if self.fault == "beta_nan" else np.inf
        return {"beta_short": beta[: beta.shape[0] // 2], "beta_complex": beta.astype(np.complex128)}.get(
            self.fault, beta)


@pytest.mark.parametrize("fault, error, said", [
    ("beta_short", ValueError, "β, its curvature, must have shape (3000,)"),
    ("beta_complex", TypeError, "β, its curvature, must be a real floating"),
    ("Q_short", ValueError, "Q, the columns of its transposed pass, must have shape (3000, 3)"),
    ("Q_int", TypeError, "Q, the columns of its transposed pass, must be a real floating"),
    ("Q_wide", ValueError, "must have shape (3000, 3)"),
    ("gradient_complex", TypeError, "its gradient must be a real floating"),
    ("S_shape", ValueError, "S (k × k) must have shape (2, 2)"),
    ("loss_array", TypeError, "its loss must be a real number"),
])
@pytest.mark.parametrize("hessian", ["exact", "pcg"])
def test_a_plugin_model_that_hands_back_a_wrong_array_is_named(fault, error, said, hessian):
    # Nothing checked a plugin's outputs: a β or Q with too few rows was read past its end by the compiled passes
    # (a dense Hessian off by 1e3 and "converged", or NaN on CSR), a complex one ended in Numba's typing error, an
    # integer Q was truncated, a wrong S or gradient shape in NumPy's broadcasting errors.
    _solve_raises(fault, hessian, error, said, seed=3)


def _solve_raises(fault, hessian, error, said, seed):
    """solve with ``_Broken(fault)`` raises ``error`` saying ``said``, on CSR C and on its dense copy."""
    name = f"broken_{fault}"
    register_model(name, lambda target: _Broken(fault), replace=True)
    C, b, _ = _planted(seed=seed)
    for matrix in (C, C.toarray()):
        with pytest.raises(error, match=re.escape(said)):
            fastnewton.solve(matrix, b, name, hessian=hessian, seed=0)


@pytest.mark.parametrize("fault, said", [
    ("beta_nan", "β, its curvature, must be finite where its loss and gradient are, got nan at index 7"),
    ("beta_inf", "β, its curvature, must be finite where its loss and gradient are, got inf at index 7"),
    ("S_nan", "S (k × k) must be finite where its loss and gradient are, got nan at entry (0, 0)"),
])
@pytest.mark.parametrize("hessian", ["exact", "lagged", "pcg", "sketch"])
def test_a_plugin_models_non_finite_curvature_is_named(fault, said, hessian):
    # Unchecked, a NaN or inf in β or S made every damped system unusable: STALLED, "No step along the Newton
    # direction decreases it", the model unnamed (exact, lagged, pcg); the sketch dropped the row from its sample
    # and reported CONVERGED.
    _solve_raises(fault, hessian, ValueError, said, seed=4)


@pytest.mark.parametrize("hessian", ["exact", "lagged", "pcg", "sketch"])
def test_a_sandwich_that_overflows_with_c_is_no_model_error_but_non_finite(hessian):
    # |C_ij| ~ 1e156: the loss and gradient are finite, Cᵀ diag(β) C overflows. That is C's scale, not the model's
    # curvature: never a ValueError naming the model, but NON_FINITE saying the Hessian overflowed (it was a stall,
    # "no step along the Newton direction decreases it at any damping"), in solve and both forms of solve_many.
    made = fastnewton.make_problem(400, 6, noise=1e-2, seed=0, dense=True)
    C = made.C * 1e156
    res = fastnewton.solve(C, made.b, hessian=hessian, seed=0)
    assert res.status == fastnewton.Status.NON_FINITE and np.all(np.isfinite(res.x))
    assert "the Hessian has non-finite entries at iteration 1" in res.message and "rescale" in res.message
    batch = fastnewton.solve_many(C, np.column_stack([made.b, made.b]), hessian=hessian, seed=0)
    assert list(batch.status) == [res.status] * 2 and batch.message[0] == res.message
    if hessian == "exact":  # the compiled loop of the list form
        listed = fastnewton.solve_many([(C, made.b), (C.copy(), made.b)])
        assert list(listed.status) == [res.status] * 2 and listed.message[0] == res.message


def test_registering_a_taken_name_needs_replace_and_built_ins_stay():
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_model(NAME, lambda target: TemperatureSoftmax(TAU))
    register_model(NAME, lambda target: TemperatureSoftmax(TAU), replace=True)
    for name in ("softmax", "relu_softmax", "softmax_relu"):
        with pytest.raises(ValueError, match="built-in"):
            register_model(name, lambda target: TemperatureSoftmax(TAU), replace=True)
    with pytest.raises(TypeError, match="uses_values"):
        register_model("another", lambda target: TemperatureSoftmax(TAU), uses_values="no")


@pytest.mark.parametrize("made, said", [(None, "without evaluation"), ("text", "without evaluation"),
                                        (_Broken("none"), None)])
def test_a_factory_must_make_a_model(made, said):
    register_model("made_by_factory", lambda target: made, replace=True)
    C, b, _ = _planted(n=200, seed=4)
    if said is None:
        made.k = 0
        said = "k (the columns of U) must be an integer ≥ 1"
    with pytest.raises(TypeError, match=re.escape(said)):
        fastnewton.Problem(C, b, "made_by_factory")


@pytest.mark.parametrize("distributions", [False, True])
def test_the_not_a_distribution_warning_is_for_models_that_say_their_outputs_are(distributions):
    # Every model without V got solve's "b is not a probability vector … h(Cx) = name(…), which is ≥ 0 and sums to
    # 1" warning, false for a plugin's own outputs (least squares, a sigmoid); register_model now says which are.
    register_model("temperature_outputs", lambda target: TemperatureSoftmax(TAU), replace=True,
                   distributions=distributions)
    C, b, _ = _planted(n=400, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastnewton.solve(C, 3.0 * b, "temperature_outputs", max_iter=2)
    assert any("not a probability vector" in str(w.message) for w in caught) == distributions


def test_dask_workers_check_a_plugins_columns_and_curvature():
    # The workers' passes read Q and β by C's rows as the single-machine ones do: checked there too.
    import fastnewton.dask

    C, b, _ = _planted(seed=6)
    with _plugin_cluster() as (client, da):
        # each block's own rows (blocks of 1300, 1300 and 400 rows: whichever fails first is reported)
        for fault, said in (("Q_short", r"Q, the columns of its transposed pass, must have shape \((1300|400), 3\)"),
                            ("beta_short", r"β, its curvature, must have shape \((1300|400),\)"),
                            ("beta_nan", r"β, its curvature, must be finite .* got nan at index 7"),
                            ("S_nan", r"S \(k × k\) must be finite .* got nan at entry \(0, 0\)")):
            name = f"broken_dask_{fault}"
            register_model(name, lambda target, fault=fault: _Broken(fault), replace=True)
            with pytest.raises(ValueError, match=said):
                fastnewton.dask.solve(da.from_array(C, chunks=(1300, 6), asarray=False), b, name, client=client,
                                      hessian="exact")
