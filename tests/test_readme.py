"""The README's Usage section runs as written and shows what it claims.

Every ```python block of the Usage section is executed in order in one namespace (as a user
pasting them into one session would), from an empty folder. Then: both solves iterate (the
verbose tables have rows), the plot is written, and every scipy.optimize.minimize call of the
README iterates (nit > 0) and reaches ‖∇L‖/g_ref ≤ 1e-8, solve's tol: the README's gtol on the
scaled problem is 1e-8 (L-BFGS-B's, a max-norm test, 1e-8/√d).
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
        assert scaled.rel_grad_norm(out.x) <= 1e-8, (method, scaled.rel_grad_norm(out.x))
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


def test_readme_command_line_section_runs_as_written(tmp_path, monkeypatch):
    # The Python block writes the input files; then every command of the bash block, as a user
    # types it (`fastnewton` is `python -m fastnewton`), succeeds from that folder.
    import os
    import shlex
    import subprocess
    import sys

    text = section(README.read_text(), "Command line")
    (block,) = python_blocks(text)
    (commands,) = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {"__name__": "__main__"})
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_DISABLE_JIT"}
    lines = [line.split("#")[0].strip() for line in commands.splitlines() if line.strip()]
    assert len(lines) >= 5 and all(line.startswith("fastnewton ") for line in lines)
    for line in lines:
        arguments = shlex.split(line)[1:]
        proc = subprocess.run([sys.executable, "-m", "fastnewton", *arguments], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (line, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, (line, proc.stderr[-2000:])
    assert (tmp_path / "x.npy").exists() and (tmp_path / "x.csv").exists()


def test_readme_dask_example_runs_as_a_script_without_the_large_graph_warning(tmp_path):
    # Pasted into a file and run, as the example is written (it guards its cluster with __main__).
    pytest.importorskip("distributed")
    import os
    import subprocess
    import sys

    (block,) = [block for block in python_blocks(section(README.read_text(), "Scale out with Dask"))
                if "LocalCluster" in block]
    script = tmp_path / "example.py"
    script.write_text(block)
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_DISABLE_JIT"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("Converged"), proc.stdout
    # The warning a C too large for the task graph gives (other warnings, e.g. distributed's
    # "event loop was unresponsive" on a busy machine, are about the machine, not the example).
    assert "large graph" not in proc.stderr, proc.stderr[-3000:]
