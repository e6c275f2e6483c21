"""``python -m fastnewton demo`` and Numba's on-disk kernel cache, each in a fresh subprocess."""
import os
import re
import subprocess
import sys

import pytest

# A fresh interpreter imports numpy/scipy/numba and loads the cached kernels: a few seconds;
# 120 s only guards against a hang (it is not a timing assertion).
SUBPROCESS_TIMEOUT = 120


def _environment(**extra):
    env = dict(os.environ)
    # A coverage run (STYLE 14) sets NUMBA_DISABLE_JIT=1, which would disable the cache under test.
    env.pop("NUMBA_DISABLE_JIT", None)
    env.pop("NUMBA_DEBUG_CACHE", None)
    env.update(extra)
    return env


def _run(arguments, **extra_env):
    return subprocess.run([sys.executable, *arguments], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=_environment(**extra_env))


def test_demo_prints_the_iteration_table_and_a_summary():
    result = _run(["-m", "fastnewton", "demo", "--n", "3000", "--d", "10"])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.split()[:2] == ["iter", "loss"]]
    assert len(header) == 1, result.stdout
    rows = []
    for line in lines[header[0] + 1:]:
        fields = line.split()
        if not fields or not fields[0].isdigit():
            break
        rows.append(fields)
    assert [int(fields[0]) for fields in rows] == list(range(len(rows)))
    assert len(rows) >= 2  # the demo starts from zeros, so Newton iterates
    summary = [line for line in lines if line.startswith("summary:")]
    assert len(summary) == 1
    iterations = int(re.search(r"summary: (\d+) iterations", summary[0]).group(1))
    assert iterations == len(rows) - 1
    assert "converged = True" in summary[0]


@pytest.mark.parametrize(("arguments", "name"), [
    (["--n", "-5"], "n"),
    (["--n", "2000", "--d", "10", "--hessian", "bogus"], "hessian"),
    (["--n", "2000", "--d", "10", "--tol", "0"], "tol"),
])
def test_demo_reports_bad_values_as_a_usage_error_naming_the_argument(arguments, name):
    # A clean argparse error (exit 2, one line naming the argument), never a traceback.
    result = _run(["-m", "fastnewton", "demo", *arguments])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    # The solver names the argument ("error: demo: tol …"); argparse names the option ("--hessian").
    assert re.search(rf"error: (demo: {name}\b|argument --{name}\b)", result.stderr), result.stderr


def test_demo_rejects_unknown_model():
    result = _run(["-m", "fastnewton", "demo", "--model", "linear"])
    assert result.returncode != 0
    assert "model" in result.stderr


# Every kernel a CSR and a dense solve of each model reaches (module.function as Numba names the
# cache files <module>.<function>-<line>.py<ver>.nbi/.nbc).
TINY_SOLVE = """
import numpy as np
import fastnewton
for model in ("softmax", "relu_softmax", "softmax_relu"):
    problem = fastnewton.make_problem(300, 5, model=model, seed=0)
    C, b = problem[:2]
    V = problem.V
    for matrix in (C, C.toarray()):
        fastnewton.solve(matrix, b, model, V=V, x0="zeros", max_iter=3)
        fastnewton.solve(matrix, b, model, V=V, max_iter=3)
print("solved")
"""
EXPECTED_KERNELS = {"csr.csr_matvec", "sandwich.csr_sandwich_rows", "dense.dense_matvec", "dense.dense_rmatmat",
                    "softmax.softmax_regression_columns", "softmax.softmax_regression_loss",
                    "softmax.softmax_relu_columns", "softmax.log_partition_parts",
                    "softmax.curvature_weights"}


@pytest.mark.filterwarnings("ignore")
def test_second_process_loads_every_kernel_from_the_disk_cache():
    # The first run compiles whatever is not cached yet (and saves it); the second must only load.
    first = _run(["-W", "ignore", "-c", TINY_SOLVE])
    assert first.returncode == 0, first.stderr
    second = _run(["-W", "ignore", "-c", TINY_SOLVE], NUMBA_DEBUG_CACHE="1")
    assert second.returncode == 0, second.stderr
    output = second.stdout + second.stderr
    assert "solved" in output
    # NUMBA_DEBUG_CACHE prints "[cache] index loaded from '.../csr.csr_matvec-10.py311.nbi'",
    # "[cache] data loaded from '...nbc'" on a hit and "[cache] data saved to ..." after compiling.
    loaded = set(re.findall(r"\[cache\] data loaded from '.*?([A-Za-z_]\w*\.[A-Za-z_]\w*)-\d+\.py\d+", output))
    indexed = set(re.findall(r"\[cache\] index loaded from '.*?([A-Za-z_]\w*\.[A-Za-z_]\w*)-\d+\.py\d+",
                             output))
    assert EXPECTED_KERNELS <= loaded, sorted(loaded)
    assert loaded <= indexed
    assert "saved" not in output, [line for line in output.splitlines() if "saved" in line]


# -- the fastnewton command in-process: --version, sizes like 1e6, fit, warmup ---------------------
def _main(arguments, capsys):
    from fastnewton.cli import main

    try:
        code = main(arguments)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_names_the_package_and_its_dependencies(capsys):
    import fastnewton

    code, out, _ = _main(["--version"], capsys)
    assert code == 0
    assert out.startswith(f"fastnewton {fastnewton.__version__} ") and "NumPy" in out and "Numba" in out


def test_sizes_may_be_written_like_1e6(capsys):
    code, out, _ = _main(["demo", "--n", "3e3", "--d", "1e1", "--nnz-per-row", "4e0", "--max-iter", "1e2"], capsys)
    assert code == 0, out
    assert "n = 3,000, d = 10, 4 non-zeros per row" in out


@pytest.mark.parametrize("text", ["2.5", "1e400", "ten", "-1e3"])
def test_sizes_that_are_not_whole_numbers_are_usage_errors(text, capsys):
    code, _, err = _main(["demo", "--n", text], capsys)
    assert code == 2 and "argument --n" in err and "Traceback" not in err


def _planted_files(tmp_path, model):
    import numpy as np
    import scipy.io
    import scipy.sparse as sp

    import fastnewton

    planted = fastnewton.make_problem(400, 6, nnz_per_row=3, model=model, m=3, noise=1e-2, seed=2)
    files = {}
    files["npz"] = tmp_path / "problem.npz"
    arrays = dict(C=planted.C.toarray(), b=planted.b)
    if planted.V is not None:
        arrays["V"] = planted.V
    np.savez(files["npz"], **arrays)
    files["mtx"] = tmp_path / "C.mtx"
    scipy.io.mmwrite(files["mtx"], planted.C)
    files["sparse_npz"] = tmp_path / "C_sparse.npz"
    sp.save_npz(files["sparse_npz"], planted.C)
    files["b_txt"] = tmp_path / "b.txt"
    np.savetxt(files["b_txt"], planted.b)
    files["b_mtx"] = tmp_path / "b.mtx"
    scipy.io.mmwrite(files["b_mtx"], planted.b[:, None])
    if planted.V is not None:
        files["V_npy"] = tmp_path / "V.npy"
        np.save(files["V_npy"], planted.V)
    return planted, files


@pytest.mark.parametrize("model", ["softmax", "softmax_relu"])
def test_fit_reads_npz_and_matrix_market_files_solves_and_writes_x(tmp_path, capsys, model):
    import numpy as np

    import fastnewton

    planted, files = _planted_files(tmp_path, model)
    reference = fastnewton.solve(planted.C, planted.b, model, V=planted.V)
    extra = ["--V", str(files["V_npy"])] if model == "softmax_relu" else []
    runs = {
        "npz": [str(files["npz"])],
        "mtx": [str(files["mtx"]), "--b", str(files["b_txt"]), *extra],
        "sparse_npz": [str(files["sparse_npz"]), "--b", str(files["b_mtx"]), *extra],
    }
    for name, arguments in runs.items():
        out_file = tmp_path / f"x_{name}.{'csv' if name == 'mtx' else 'npy'}"
        code, out, err = _main(["fit", *arguments, "--model", model, "--out", str(out_file)], capsys)
        assert code == 0, out + err
        assert "iter" in out and "summary:" in out and f"wrote x (length 6) to {out_file}" in out
        x = np.loadtxt(out_file, delimiter=",") if out_file.suffix == ".csv" else np.load(out_file)
        # The same problem read back from a file (the text files hold 17 significant digits).
        np.testing.assert_allclose(x, reference.x, rtol=1e-8, atol=1e-10)


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")  # 8 iterations on purpose
def test_fit_starts_from_an_x0_file_and_takes_no_continuation_as_solve_does(tmp_path, capsys):
    import numpy as np

    import fastnewton

    planted, files = _planted_files(tmp_path, "softmax_relu")
    common = [str(files["npz"]), "--model", "softmax_relu", "--max-iter", "8"]
    # A warm start written as a previous fit's --out (.npy) and as text (17 significant digits: the same x).
    x0 = fastnewton.solve(planted.C, planted.b, "softmax_relu", V=planted.V, max_iter=3).x + 0.05
    np.save(tmp_path / "x0.npy", x0)
    np.savetxt(tmp_path / "x0.txt", x0, fmt="%.17g")
    for start in ("x0.npy", "x0.txt"):
        for plain in (False, True):
            out_file = tmp_path / f"x_{start}_{plain}.npy"
            arguments = ["fit", *common, "--x0", str(tmp_path / start), "--out", str(out_file)]
            code, out, err = _main(arguments + (["--no-continuation"] if plain else []), capsys)
            assert code in (0, 1), out + err  # 1: not converged in 8 iterations, still written
            reference = fastnewton.solve(planted.C, planted.b, "softmax_relu", V=planted.V, x0=x0, max_iter=8,
                                         continuation=not plain)
            # The same solve as the API's: bit for bit from the .npy, to the text's rounding from the .txt.
            np.testing.assert_allclose(np.load(out_file), reference.x, rtol=1e-10, atol=1e-12)
    # Without the continuation the solve differs (a plain Newton loop), so the flag reached solve.
    stages = fastnewton.solve(planted.C, planted.b, "softmax_relu", V=planted.V, x0="zeros", max_iter=8)
    plain = fastnewton.solve(planted.C, planted.b, "softmax_relu", V=planted.V, x0="zeros", max_iter=8,
                             continuation=False)
    assert {record.get("phase") for record in stages.history} != {record.get("phase") for record in plain.history}
    code, _, err = _main(["fit", *common, "--x0", str(tmp_path / "missing.npy")], capsys)
    assert code == 2 and "x0: no such file" in err and "Traceback" not in err
    np.save(tmp_path / "short.npy", x0[:-1])
    code, _, err = _main(["fit", *common, "--x0", str(tmp_path / "short.npy")], capsys)
    assert code == 2 and "x0" in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore::fastnewton.ConvergenceWarning")
def test_demo_takes_no_continuation(capsys):
    from fastnewton.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo"]).continuation is True
    assert parser.parse_args(["demo", "--no-continuation"]).continuation is False
    code, out, err = _main(["demo", "--n", "2000", "--d", "8", "--model", "softmax_relu", "--no-continuation",
                            "--max-iter", "5"], capsys)
    assert code in (0, 1) and "summary:" in out, out + err


def test_fit_names_what_is_missing_or_unreadable(tmp_path, capsys):
    _, files = _planted_files(tmp_path, "softmax")
    import numpy as np
    import scipy.io
    import scipy.sparse

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, C=scipy.sparse.csr_matrix(scipy.io.mmread(files["mtx"])), b=np.loadtxt(files["b_txt"]))
    cases = [
        ([str(files["mtx"])], "b: give --b"),
        ([str(tmp_path / "missing.mtx"), "--b", str(files["b_txt"])], "no such file"),
        ([str(files["mtx"]), "--b", str(files["b_txt"]), "--out", str(tmp_path / "x.bin")], "out: use a .npy"),
        ([str(files["mtx"]), "--b", str(files["b_txt"]), "--model", "softmax_relu"], "V: model softmax_relu needs"),
        ([str(files["mtx"]), "--b", str(files["mtx"])], "b must"),
        # numpy.savez of a sparse C pickles it: never loaded, and the message says what to do instead
        ([str(pickled)], "scipy.sparse.save_npz"),
        # a 1-D V: solve's message (the banner's 'V n×m' broke on it: "not enough arguments for format string")
        ([str(files["mtx"]), "--b", str(files["b_txt"]), "--model", "softmax_relu", "--V", str(files["b_txt"])],
         "V must be 2-D"),
        # an --out that cannot be written: said before the solve (it was a traceback after it)
        ([str(files["mtx"]), "--b", str(files["b_txt"]), "--out", str(files["b_txt"] / "x.npy")], "out: cannot write"),
    ]
    for arguments, message in cases:
        code, out, err = _main(["fit", *arguments], capsys)
        assert code == 2 and message in err and "Traceback" not in err, (arguments, err)
        assert "iter" not in out, (arguments, out)  # no solve ran


def test_fit_names_an_empty_damaged_or_foreign_file(tmp_path, capsys):
    # An empty .npy/.npz was an EOFError traceback with exit code 1 (the code of "did not converge"); other bytes
    # in a .npy/.npz were read as a pickle: NumPy's "allow_pickle" advice, naming neither the argument nor the file.
    import numpy as np

    _, files = _planted_files(tmp_path, "softmax")
    C, b = str(files["mtx"]), str(files["b_txt"])
    full = tmp_path / "full.npz"
    np.savez(full, C=np.ones((4, 2)), b=np.full(4, 0.25))
    written = {"empty.npy": b"", "empty.npz": b"", "junk.npy": b"junk\n", "junk.npz": b"junk\n",
               "cut.npz": full.read_bytes()[:120]}
    for name, content in written.items():
        (tmp_path / name).write_bytes(content)
    path = {name: str(tmp_path / name) for name in written}
    cases = [
        ([path["empty.npy"], "--b", b], "C: cannot read", "is not a .npy file (it is empty)"),
        ([path["empty.npz"], "--b", b], "DATA: cannot read", "is not a .npz file (it is empty)"),
        ([C, "--b", path["empty.npz"]], "b: cannot read", "it is empty"),
        ([C, "--b", b, "--x0", path["empty.npy"]], "x0: cannot read", "it is empty"),
        ([path["junk.npy"], "--b", b], "C: cannot read", "does not start as a NumPy .npy file does"),
        ([path["junk.npz"], "--b", b], "DATA: cannot read", "does not start as a NumPy .npz file does"),
        ([path["cut.npz"]], "DATA: cannot read", "cut.npz"),
    ]
    for arguments, named, said in cases:
        code, out, err = _main(["fit", *arguments], capsys)
        assert code == 2 and named in err and said in err and "Traceback" not in err, (arguments, err)
        assert "allow_pickle" not in err, (arguments, err)


def test_demo_too_large_for_memory_names_both_sizes(capsys):
    # d = 300 000 needs its d × d matrices (~2.7 TB), whatever n: the message named only --n
    code, _, err = _main(["demo", "--n", "2000", "--d", "300000"], capsys)
    assert code == 2 and "use a smaller --n or --d" in err and "d = 300,000" in err, err


def test_warmup_compiles_and_reports(capsys):
    code, out, _ = _main(["warmup", "--models", "softmax"], capsys)
    assert code == 0
    assert "softmax   csr" in out and "softmax dense" in out and "cache:" in out


def test_hessian_choices_are_the_solvers_strategies():
    # One list of strategies (fastnewton.hessian.STRATEGIES): each parses, and nothing else does.
    from fastnewton.cli import build_parser
    from fastnewton.hessian import STRATEGIES

    parser = build_parser()
    for strategy in STRATEGIES:
        assert parser.parse_args(["demo", "--hessian", strategy]).hessian == strategy
        assert parser.parse_args(["fit", "data.npz", "--hessian", strategy]).hessian == strategy
