"""What a first solve compiles: one specialisation per kernel, and only the kernels the solve needs.

Every compiled specialisation costs about a second on a first solve (measured: 0.3–2 s per kernel,
empty cache, 2 cores). The solves run in a fresh interpreter, so the signatures listed are exactly
the ones these solves loaded or compiled (from the on-disk cache when it is warm: the count is the
same either way, and no time is measured).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

# Fresh interpreter + cached kernels: seconds; 240 s only guards against a hang (a first-ever run
# compiles every kernel).
SUBPROCESS_TIMEOUT = 240

SOLVES = """
import json, sys, warnings
import numpy as np
import fastnewton
from fastnewton import kernels

warnings.simplefilter("ignore")
which = sys.argv[1]
problem = fastnewton.make_problem(400, 6, model="softmax_relu" if which == "softmax_relu" else "softmax",
                                  nnz_per_row=3, noise=1e-3, seed=0, dense=sys.argv[2] == "dense")
C, b, V = problem.C, problem.b, problem.V
inputs = [C, np.asfortranarray(C)] if sys.argv[2] == "dense" else [C]
for matrix in inputs:
    model = "softmax_relu" if which == "softmax_relu" else which
    for x0 in ("zeros", "auto"):
        fastnewton.solve(matrix, b, model, V=V, x0=x0, max_iter=4)
    problem = fastnewton.Problem(matrix, b, model, V=V)
    problem.grad(np.zeros(matrix.shape[1]))
signatures = {}
for module in ("csr", "dense", "reduce", "sandwich", "sketch", "softmax"):
    module = getattr(__import__("fastnewton.kernels." + module).kernels, module)
    for name, value in vars(module).items():
        if hasattr(value, "signatures") and value.signatures:
            signatures[module.__name__.rsplit(".", 1)[1] + "." + name] = [str(s) for s in value.signatures]
print(json.dumps(signatures))
"""


def _signatures(model, fmt):
    env = dict(os.environ)
    env.pop("NUMBA_DISABLE_JIT", None)  # a coverage run disables the JIT: there would be nothing to count
    result = subprocess.run([sys.executable, "-c", SOLVES, model, fmt], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("model", ["softmax", "relu_softmax", "softmax_relu"])
@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_a_solve_compiles_one_specialisation_per_kernel(model, fmt):
    # C- and F-ordered dense C, x0 zeros and auto, Problem.grad (the gradient's columns alone):
    # still one signature each (F-ordered arrays are made row-major once, before any kernel).
    signatures = _signatures(model, fmt)
    assert signatures, "no kernel ran"
    assert all(len(listed) == 1 for listed in signatures.values()), signatures
    if fmt == "csr" and model != "softmax_relu":
        # The softmax models' transposed passes have 2 or 3 columns: all on the unrolled kernel;
        # the full sandwich and the sampled one share csr_sandwich_rows.
        assert "csr.csr_rmatmat" not in signatures, signatures
        assert {"csr.csr_rmatmat4", "sandwich.csr_sandwich_rows"} <= set(signatures)
    if fmt == "dense":
        assert not any("csr." in name or "sandwich." in name for name in signatures), signatures


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_csr_transposed_pass_of_any_width_matches_the_generic_kernel_bit_for_bit(k, index_dtype):
    # k = 2 to 4 run on the unrolled 4-lane kernel (k = 2 with a third column): the same sums in the same order.
    from fastnewton.kernels.csr import csr_rmatmat
    from fastnewton.validation import as_input_matrix

    rng = np.random.default_rng(k)
    C = sp.random(3000, 40, density=0.1, format="csr", random_state=k)
    C.indices, C.indptr = C.indices.astype(index_dtype), C.indptr.astype(index_dtype)
    matrix = as_input_matrix(C)
    Q = rng.standard_normal((3000, k + 1))[:, 1:]  # a non-contiguous view, as the callers pass
    expected = np.empty((40, k))
    csr_rmatmat(matrix.indptr, matrix.indices, matrix.data, np.ascontiguousarray(Q), matrix._chunk_rows, expected)
    got = matrix.rmatmat(Q)
    assert got.shape == (40, k) and got.flags.c_contiguous
    assert np.array_equal(got, expected)
    np.testing.assert_allclose(got, C.T @ Q, rtol=1e-12, atol=1e-12)
