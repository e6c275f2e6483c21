"""The README's Usage section runs as written and shows what it claims.

Every ```python block of the Usage section is executed in order in one namespace (as a user
pasting them into one session would), from an empty folder. Then: both solves iterate (the
verbose tables have rows), the plot is written, and every scipy.optimize.minimize call of the
README iterates (nit > 0) and reaches ‖∇L‖/g_ref ≤ 1e-7 (scipy's gtol is 1e-8 on the scaled
problem; L-BFGS-B's projected-gradient test uses the max norm, so the 2-norm may be a little above).
"""
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize

README = Path(__file__).resolve().parents[1] / "README.md"


def section(text, title):
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_usage_blocks_run_and_teach(tmp_path, monkeypatch, capsys):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    blocks = python_blocks(section(README.read_text(), "Usage"))
    assert len(blocks) >= 3
    calls = []
    real_minimize = scipy.optimize.minimize

    def recording_minimize(fun, x0, *args, **kwargs):
        out = real_minimize(fun, x0, *args, **kwargs)
        calls.append((kwargs.get("method"), out))
        return out

    monkeypatch.setattr(scipy.optimize, "minimize", recording_minimize)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out

    res, res_zeros = namespace["res"], namespace["res_zeros"]
    assert res.converged and res_zeros.converged
    assert res.n_iter >= 1 and res_zeros.n_iter >= 3
    assert printed.count("iter           loss") == 2
    assert (tmp_path / "convergence.png").stat().st_size > 0
    scaled = namespace["scaled"]
    assert len(calls) >= 2
    for method, out in calls:
        assert out.nit > 0, method
        assert scaled.rel_grad_norm(out.x) <= 1e-7, (method, scaled.rel_grad_norm(out.x))
    # The minimiser agrees with solve's to the accuracy the criterion allows.
    np.testing.assert_allclose(calls[0][1].x, res.x, rtol=1e-4, atol=1e-6 * np.abs(res.x).max())


def test_readme_warns_about_the_unscaled_problem_with_reason():
    # What the README says happens with the unscaled Problem really happens (so the advice is needed).
    import fastnewton

    C, b, _ = fastnewton.make_problem(200_000, 100, nnz_per_row=10, noise=1e-2, seed=0)
    prob = fastnewton.Problem(C, b)
    out = scipy.optimize.minimize(prob.loss, np.zeros(C.shape[1]), jac=prob.grad, method="L-BFGS-B")
    assert out.nit == 0 and out.success
    assert "nit=0" in README.read_text()
