"""The README's two install commands, in sequence, in one fresh venv, as a new user runs them.

``pip install .`` then one solve from another folder (this compiles and caches the kernels),
then ``pip install -e ".[test,bench]"`` over it, then ``import fastnewton`` and a solve from yet
another folder, and the import the bench scripts' subprocesses do. When the kernel cache was
written inside site-packages, the second command left it behind, the leftover folder imported
as an empty namespace package and every later step failed (``fastnewton.make_problem`` →
AttributeError). The venv is made with ``--system-site-packages`` so every dependency comes
from the running interpreter and nothing is downloaded; the copy of the repository is a
"fresh clone" (tracked and untracked-but-not-ignored files only, no kernel cache).
"""
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# pip builds a wheel (a few seconds) and each solve compiles its kernels into an empty cache
# (~10 s on 2 cores); the limit only turns a hang into a failure.
STEP_TIMEOUT = 600

SOLVE = ("import fastnewton, numpy as np; "
         "C, b, x_true = fastnewton.make_problem(2000, 8, noise=1e-2, seed=0); "
         "res = fastnewton.solve(C, b, x0='zeros', hessian='exact'); "
         "assert res.converged, res.message; "
         "print('FILE', fastnewton.__file__); print('SOLVED', res.n_iter)")


def _fresh_clone(destination):
    """Copy the files git would check out (tracked, plus new files not ignored), like a fresh clone."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _run(command, cwd, env):
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert proc.returncode == 0, (f"{' '.join(map(str, command))} (in {cwd}) exited {proc.returncode}\n"
                                  f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
    return proc.stdout


def readme_install_walk_through(source, work):
    """Run the README's install sequence on the repository copy ``source``; return the venv's site-packages."""
    environment = venv.EnvBuilder(system_site_packages=True, with_pip=True)
    environment.create(work / "venv")
    python = str(work / "venv" / "bin" / "python")
    site_packages = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NUMBA_", "PYTHON", "VIRTUAL_ENV"))}
    # The per-user cache of an installed copy goes to a folder of this test, not the user's home.
    env["XDG_CACHE_HOME"] = str(work / "user-cache")
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()

    _run([python, "-m", "pip", "install", "--quiet", "."], source, env)
    # The README's first command runs the installed console script in the clone: the installed copy
    # (not the source folder beside it) compiles, into the per-user cache that later scripts share.
    _run([str(work / "venv" / "bin" / "fastnewton"), "demo", "--n", "2000", "--d", "8"], source, env)
    assert not _cache_files(source / "kernels"), "the demo compiled the clone's source, not the installed copy"
    assert _cache_files(work / "user-cache" / "fastnewton")
    first = _run([python, "-c", SOLVE], elsewhere, env)
    assert f"FILE {site_packages}" in first, first
    stranded = [path for path in (site_packages / "fastnewton").rglob("*") if path.suffix in (".nbi", ".nbc")]
    assert not stranded, f"kernel cache written inside site-packages: {stranded[:3]}"

    _run([python, "-m", "pip", "install", "--quiet", "-e", ".[test,bench]"], source, env)
    assert not (site_packages / "fastnewton").exists(), \
        f"{site_packages / 'fastnewton'} survived the switch to the editable install: {os.listdir(site_packages / 'fastnewton')}"
    other = work / "another-folder"
    other.mkdir()
    second = _run([python, "-c", SOLVE], other, env)
    assert f"FILE {source / 'fastnewton' / '__init__.py'}" in second, second
    # What the bench smoke tests' subprocesses do: import the package from the repository.
    _run([python, "-c", "import fastnewton; fastnewton.ConvergenceWarning; fastnewton.solve"], source / "bench", env)
    _run([python, "-m", "fastnewton", "--version"], other, env)
    return site_packages


@pytest.mark.skipif(sys.platform == "win32", reason="the venv layout (bin/python) is POSIX")
def test_readme_install_commands_in_sequence_leave_a_working_editable_install(tmp_path):
    source = tmp_path / "fastnewton-clone"
    _fresh_clone(source)
    readme_install_walk_through(source, tmp_path)


INSTALLED_COMPILE = """
import numpy as np
import fastnewton
from fastnewton import _cache
from fastnewton.kernels.csr import csr_matvec
indptr = np.array([0, 1], dtype=np.int32); indices = np.array([0], dtype=np.int32)
out = np.empty(1)
csr_matvec(indptr, indices, np.ones(1), np.ones(1), out)
print("CACHE", _cache.cache_dir())
"""


def _installed_copy(site):
    """fastnewton laid out as pip installs it: site/fastnewton/ with kernels/ inside (no kernel cache)."""
    shutil.copytree(REPO / "fastnewton", site / "fastnewton", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "kernels", site / "fastnewton" / "kernels", ignore=shutil.ignore_patterns("__pycache__"))


def _cache_files(folder):
    return [path for path in Path(folder).rglob("*") if path.suffix in (".nbi", ".nbc")]


def test_installed_kernels_cache_per_user_and_numba_cache_dir_wins(tmp_path):
    site = tmp_path / "site"
    _installed_copy(site)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NUMBA_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "user-cache"))
    # Installed layout, no NUMBA_CACHE_DIR: the per-user folder, nothing beside the package.
    out = _run([sys.executable, "-c", INSTALLED_COMPILE], tmp_path, env)
    assert f"CACHE {tmp_path / 'user-cache' / 'fastnewton'}" in out, out
    assert _cache_files(tmp_path / "user-cache" / "fastnewton")
    assert not _cache_files(site)
    # A user's NUMBA_CACHE_DIR wins, as Numba documents; the per-user folder is left alone.
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    out = _run([sys.executable, "-c", INSTALLED_COMPILE], tmp_path, env)
    assert f"CACHE {tmp_path / 'numba-cache'}" in out, out
    assert _cache_files(tmp_path / "numba-cache") and not _cache_files(site)


def test_a_source_checkout_keeps_numbas_in_tree_cache():
    from fastnewton import _cache

    assert _cache.installed_layout(REPO / "fastnewton" / "kernels") is True  # where pip puts them
    assert _cache.installed_layout(REPO / "kernels") is False
    if not os.environ.get("NUMBA_CACHE_DIR"):
        assert _cache.cache_dir(REPO / "kernels") == REPO / "kernels" / "__pycache__"


def test_every_subpackage_is_installed():
    # A subpackage missing from pyproject's list imports from a source checkout (the folder is
    # on sys.path) but not from an install: ``pip install .`` then ``import fastnewton`` elsewhere
    # raised ModuleNotFoundError for fastnewton.models.
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "fastnewton").rglob("__init__.py")
             if "__pycache__" not in path.parts}
    assert found | {"fastnewton.kernels"} == listed, (found, listed)


STAMPED_COMPILE = """
import fastnewton
from fastnewton.kernels.damping import gain_ratio
gain_ratio(1.0, 1.0, 1.0, 1.0, 0.5, 0.0)
print("HITS", sum(gain_ratio.stats.cache_hits.values()), "MISSES", sum(gain_ratio.stats.cache_misses.values()))
"""


def test_a_kernel_is_compiled_again_when_another_kernel_file_changes(tmp_path):
    # Kernels compile the helpers they call from other kernel files into their own code, so a cache
    # that is fresh by the kernel's own file alone kept stale callers after a helper changed (an
    # editable install after `git pull`). Here exp.py changes and damping.py's kernel must recompile.
    site = tmp_path / "site"
    _installed_copy(site)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NUMBA_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "user-cache"))

    def run():
        return _run([sys.executable, "-c", STAMPED_COMPILE], tmp_path, env)

    assert "HITS 0 MISSES 1" in run()  # a fresh copy compiles
    assert "HITS 1 MISSES 0" in run()  # and loads its cache the next time
    helper = site / "fastnewton" / "kernels" / "exp.py"
    helper.write_text(helper.read_text() + "\n# an edit in another kernel file\n")
    assert "HITS 0 MISSES 1" in run()
    assert "HITS 1 MISSES 0" in run()
