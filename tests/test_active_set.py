"""The Newton step with one-sided loss terms ½ max(y_j, 0)² (``fastnewton.active_set``), checked against
brute force over every active set and against scipy's minimiser of the same piecewise-quadratic model,
and softmax_relu's one-sided outputs against central differences."""
import itertools

import numpy as np
import pytest
import scipy.optimize

from fastnewton import Problem
from fastnewton.active_set import one_sided_gain_ratio, one_sided_step
from fastnewton.hessian import NewtonSystem
from fastnewton.lifted_start import output_offsets
from fastnewton.models import SoftmaxRelu

import naive


def _case(seed, d=6, k=3, mu=1e-3):
    """A system M = H + μD² whose part without the one-sided terms, M̂, is positive definite."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d))
    D = rng.uniform(0.5, 2.0, d)
    J = rng.standard_normal((d, k))
    y = rng.standard_normal(k) * 0.5
    M_hat = A @ A.T / d + 0.5 * np.eye(d)
    inside = y > 0.0
    M = M_hat + J[:, inside] @ J[:, inside].T
    H = M - mu * np.diag(D * D)
    g = rng.standard_normal(d)
    return NewtonSystem(matrix=H, column_scale=D), g, mu, J, y, M_hat, g - J[:, inside] @ y[inside]


def _model(p, g_hat, M_hat, J, y):
    """m(p) = ĝᵀp + ½pᵀM̂p + Σ_j ½ max(y_j + J_jᵀp, 0)² (the module docstring)."""
    kinks = np.maximum(y + J.T @ p, 0.0)
    return g_hat @ p + 0.5 * p @ M_hat @ p + 0.5 * kinks @ kinks


def _brute_force(g_hat, M_hat, J, y):
    """The minimiser of the (strictly convex) model: the solution of the one active set it agrees with."""
    found = []
    for members in itertools.product([False, True], repeat=y.size):
        members = np.array(members)
        p = -np.linalg.solve(M_hat + J[:, members] @ J[:, members].T, g_hat + J[:, members] @ y[members])
        if np.array_equal(y + J.T @ p > 0.0, members):
            found.append(p)
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("seed", range(12))
def test_refined_step_minimises_the_model_with_its_kinks(seed):
    system, g, mu, J, y, M_hat, g_hat = _case(seed)
    plain = system.solve(g, mu)
    step, refined = one_sided_step(system, g, mu, plain, J, y)
    expected = _brute_force(g_hat, M_hat, J, y)
    if not np.array_equal(y + J.T @ plain > 0.0, y > 0.0):
        assert refined
    # The brute force's solve and the Woodbury update of the factor: a few hundred eps of the step.
    np.testing.assert_allclose(step, expected, rtol=0, atol=1e-12 * np.abs(expected).max() * 100)
    independent = scipy.optimize.minimize(_model, plain, args=(g_hat, M_hat, J, y), method="BFGS", tol=1e-12).x
    np.testing.assert_allclose(step, independent, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert g @ step < 0.0


def test_step_is_the_plain_one_when_no_kink_is_crossed():
    system, g, mu, J, y, *_ = _case(0)
    plain = system.solve(g, mu)
    far = np.where(y > 0.0, 10.0, -10.0)  # |y_j| ≫ |J_jᵀp|: no output changes side
    step, refined = one_sided_step(system, g, mu, plain, J, far)
    assert step is plain and not refined


def test_gain_ratio_of_a_refined_step_divides_by_the_models_decrease():
    system, g, mu, J, y, M_hat, g_hat = _case(3)
    step, _ = one_sided_step(system, g, mu, system.solve(g, mu), J, y)
    inside = y > 0.0
    H_hat = system.matrix - J[:, inside] @ J[:, inside].T  # the undamped model
    decrease = -_model(step, g_hat, H_hat, J, y) + 0.5 * np.maximum(y, 0.0) @ np.maximum(y, 0.0)
    assert one_sided_gain_ratio(system, g, J, y, step, 0.7 * decrease, noise=0.0) == pytest.approx(0.7, rel=1e-12)
    assert one_sided_gain_ratio(system, g, J, y, step, 0.7 * decrease, noise=2 * abs(decrease)) == 1.0


def _softmax_relu_case(seed=4, n=300, d=7, m=6):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((n, d))
    V = rng.standard_normal((n, m))
    b = np.maximum(V.T @ naive.softmax(C @ rng.standard_normal(d)), 0.0)
    b[0] = 0.0
    return C, b, V, rng.standard_normal(d) * 0.5


@pytest.mark.parametrize("lifted", [False, True])
def test_softmax_relu_one_sided_outputs_are_the_zero_targets_with_their_gradients(lifted):
    C, b, V, x = _softmax_relu_case()
    problem = Problem(C, b, "softmax_relu", V=V)
    if lifted:
        problem = problem.with_model(SoftmaxRelu(b, output_offsets(problem, b)), 0.0)
    J, y = problem.one_sided_outputs(problem.evaluate(x))
    zero = np.flatnonzero(b == 0.0)
    assert zero.size >= 2 and J.shape == (x.size, zero.size)

    def outputs(z):
        return V.T @ naive.softmax(C @ z)

    np.testing.assert_allclose(y, outputs(x)[zero], rtol=0, atol=1e-14)
    h = 1e-5
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h
        central = (outputs(x + e) - outputs(x - e))[zero] / (2 * h)
        # central differences: O(h²) truncation and eps/h rounding of O(1) outputs
        np.testing.assert_allclose(J[i], central, rtol=0, atol=1e-8)


def test_models_without_one_sided_terms_offer_none():
    C, b, V, x = _softmax_relu_case()
    assert Problem(C, naive.softmax(C @ x), "softmax").one_sided_outputs(Problem(C, naive.softmax(C @ x),
                                                                                  "softmax").evaluate(x)) is None
    positive = np.maximum(b, 0.1)
    problem = Problem(C, positive, "softmax_relu", V=V)
    assert problem.one_sided_outputs(problem.evaluate(x)) is None


def test_hessian_keeps_only_the_outputs_above_their_kink():
    # P now holds every output's gradient; S weighs them by 1[y > 0], so H is the model's as before.
    C, b, V, x = _softmax_relu_case(n=40)  # naive.hessian is O(n³) Python
    H = Problem(C, b, "softmax_relu", V=V).hessian(x)
    expected = naive.hessian(C, b, x, "softmax_relu", V)
    naive.assert_within_rounding(H, expected, np.abs(expected).max(), C.shape[0])
