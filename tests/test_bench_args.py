"""Bad command-line values of the bench scripts are argparse usage errors, never tracebacks.

Each script runs as a subprocess from the repository root, as a user would, with one bad
value; it must exit with status 2 (argparse's usage error) before building any problem, with
a message on stderr that names the option, and no "Traceback". A subprocess costs about a
second (the interpreter and the imports of NumPy, SciPy and Numba), so a few representative
command lines per script run as subprocesses (concurrently) and every case runs in-process
through the script's own ``main``/``parse_args`` (the same parser, ``SystemExit(2)``). The
``type=`` functions of bench/_args.py are also checked directly.
"""
import argparse
import concurrent.futures
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest

REPO = Path(__file__).resolve().parents[1]
# A case whose bad value slipped through would start the real benchmark (minutes): the
# timeout turns that into a quick failure. Argument errors exit in about a second.
TIMEOUT_SECONDS = 60
TOO_MANY_THREADS = str(numba.config.NUMBA_NUM_THREADS + 1)
# A path that exists as a directory (rejected for an output file) and one that is a file
# (rejected for an output directory); both are tracked files of the repository.
A_DIRECTORY = "bench"
A_FILE = "README.md"

# (script, arguments, the option the message must name)
CASES = {
    # bench/passes.py
    "passes-n-negative": ("passes.py", ["--n", "-5"], "--n"),
    "passes-n-zero": ("passes.py", ["--n", "0"], "--n"),
    "passes-d-text": ("passes.py", ["--d", "many"], "--d"),
    "passes-nnz-per-row-fraction": ("passes.py", ["--nnz-per-row", "2.5"], "--nnz-per-row"),
    "passes-threads-too-many": ("passes.py", ["--threads", "1", TOO_MANY_THREADS], "--threads"),
    "passes-threads-zero": ("passes.py", ["--threads", "0"], "--threads"),
    "passes-threads-empty": ("passes.py", ["--threads"], "--threads"),
    "passes-repeats-zero": ("passes.py", ["--repeats", "0"], "--repeats"),
    "passes-probe-mb-nan": ("passes.py", ["--probe-mb", "nan"], "--probe-mb"),
    "passes-out-file": ("passes.py", ["--out", A_FILE], "--out"),
    "passes-zipf-n-negative": ("passes.py", ["--zipf-n", "-1"], "--zipf-n"),
    "passes-base-not-a-checkout": ("passes.py", ["--base", A_DIRECTORY], "--base"),
    # bench/phases.py
    "phases-n-zero": ("phases.py", ["--n", "0"], "--n"),
    "phases-iterations-text": ("phases.py", ["--iterations", "few"], "--iterations"),
    # bench/sketch_vs_exact.py
    "sketch-dims-zero": ("sketch_vs_exact.py", ["--dims", "64", "0"], "--dims"),
    "sketch-dims-empty": ("sketch_vs_exact.py", ["--dims"], "--dims"),
    "sketch-dense-n-negative": ("sketch_vs_exact.py", ["--dense-n", "-1"], "--dense-n"),
    "sketch-csr-n-overflow": ("sketch_vs_exact.py", ["--csr-n", "1e400"], "--csr-n"),
    "sketch-nnz-per-row-text": ("sketch_vs_exact.py", ["--nnz-per-row", "ten"], "--nnz-per-row"),
    "sketch-formats-unknown": ("sketch_vs_exact.py", ["--formats", "coo"], "--formats"),
    "sketch-iters-zero": ("sketch_vs_exact.py", ["--iters", "0"], "--iters"),
    "sketch-solve-dims-outside-dims": ("sketch_vs_exact.py", ["--dims", "64", "--solve-dims", "48"],
                                       "--solve-dims"),
    "sketch-threads-too-many": ("sketch_vs_exact.py", ["--threads", TOO_MANY_THREADS], "--threads"),
    "sketch-out-file": ("sketch_vs_exact.py", ["--out", A_FILE], "--out"),
    # bench/scaling.py
    "scaling-formats-unknown": ("scaling.py", ["--formats", "coo"], "--formats"),
    "scaling-models-unknown": ("scaling.py", ["--models", "linear"], "--models"),
    "scaling-strategies-unknown": ("scaling.py", ["--strategies", "newton"], "--strategies"),
    "scaling-threads-too-many": ("scaling.py", ["--threads", TOO_MANY_THREADS], "--threads"),
    "scaling-size-threads-zero": ("scaling.py", ["--size-threads", "0"], "--size-threads"),
    "scaling-nnz-zero": ("scaling.py", ["--nnz", "0"], "--nnz"),
    "scaling-fixed-d-negative": ("scaling.py", ["--fixed-d", "-1"], "--fixed-d"),
    "scaling-dims-fraction": ("scaling.py", ["--dims", "2.5"], "--dims"),
    "scaling-repeats-zero": ("scaling.py", ["--repeats", "0"], "--repeats"),
    "scaling-seed-negative": ("scaling.py", ["--seed", "-1"], "--seed"),
    "scaling-out-file": ("scaling.py", ["--out", A_FILE], "--out"),
    # bench/peers.py
    "peers-models-unknown": ("peers.py", ["--models", "linear"], "--models"),
    "peers-n-zero": ("peers.py", ["--n", "0"], "--n"),
    "peers-d-negative": ("peers.py", ["--d", "-3"], "--d"),
    "peers-m-zero": ("peers.py", ["--m", "0"], "--m"),
    "peers-noise-negative": ("peers.py", ["--noise", "-0.1"], "--noise"),
    "peers-l2-rel-nan": ("peers.py", ["--l2-rel", "nan"], "--l2-rel"),
    "peers-relu-perturbation-inf": ("peers.py", ["--relu-perturbation", "inf"], "--relu-perturbation"),
    "peers-start-unknown": ("peers.py", ["--start", "random"], "--start"),
    "peers-seed-negative": ("peers.py", ["--seed", "-1"], "--seed"),
    "peers-tol-zero": ("peers.py", ["--tol", "0"], "--tol"),
    "peers-time-limit-zero": ("peers.py", ["--time-limit", "0"], "--time-limit"),
    "peers-max-iter-zero": ("peers.py", ["--max-iter", "0"], "--max-iter"),
    "peers-threads-too-many": ("peers.py", ["--threads", TOO_MANY_THREADS], "--threads"),
    "peers-out-empty": ("peers.py", ["--out", ""], "--out"),
    # bench/memory.py
    "memory-n-zero": ("memory.py", ["--n", "0"], "--n"),
    "memory-d-text": ("memory.py", ["--d", "x"], "--d"),
    "memory-strategies-unknown": ("memory.py", ["--strategies", "exact,newton"], "--strategies"),
    "memory-strategies-empty": ("memory.py", ["--strategies", ""], "--strategies"),
    "memory-strategies-empty-item": ("memory.py", ["--strategies", "exact,"], "--strategies"),
    "memory-threads-too-many": ("memory.py", ["--threads", TOO_MANY_THREADS], "--threads"),
    "memory-seed-negative": ("memory.py", ["--seed", "-2"], "--seed"),
    "memory-nnz-below-n": ("memory.py", ["--n", "1000", "--nnz", "10"], "--nnz"),
    "memory-out-file": ("memory.py", ["--out", A_FILE], "--out"),
    # bench/valley.py
    "valley-n-zero": ("valley.py", ["--n", "0"], "--n"),
    "valley-seeds-negative": ("valley.py", ["--seeds", "0", "-1"], "--seeds"),
    "valley-kinds-unknown": ("valley.py", ["--kinds", "uniform"], "--kinds"),
    "valley-l2-nan": ("valley.py", ["--l2", "nan"], "--l2"),
    "valley-out-directory": ("valley.py", ["--out", A_DIRECTORY], "--out"),
    # bench/blas_spin.py, dense_iteration.py, families_solve.py, auto_grid.py, sketch_to_tol.py (a hostile pass
    # found these ending in tracebacks, or running nothing and exiting 0)
    "blas-spin-n-negative": ("blas_spin.py", ["--n", "-5"], "--n"),
    "blas-spin-repeats-zero": ("blas_spin.py", ["--repeats", "0"], "--repeats"),
    "dense-iteration-n-zero": ("dense_iteration.py", ["--n", "0"], "--n"),
    "dense-iteration-threads-zero": ("dense_iteration.py", ["--threads", "0"], "--threads"),
    "dense-iteration-strategy-unknown": ("dense_iteration.py", ["--strategies", "bogus"], "--strategies"),
    "families-solve-count-negative": ("families_solve.py", ["--count", "-1"], "--count"),
    "families-solve-noisy-fraction-large": ("families_solve.py", ["--noisy-fraction", "5"], "--noisy-fraction"),
    "families-solve-seed-negative": ("families_solve.py", ["--seed", "-1"], "--seed"),
    "auto-grid-point-past-the-grid": ("auto_grid.py", ["--points", "999"], "--points"),
    "auto-grid-seed-negative": ("auto_grid.py", ["--seed", "-1"], "--seed"),
    "phases-hessian-unknown": ("phases.py", ["--hessian", "bogus"], "--hessian"),
    "sketch-to-tol-strategy-unknown": ("sketch_to_tol.py", ["--strategies", "bogus"], "--strategies"),
}


# One real command line per script and kind of check (a type, a choice, a thread count, a
# cross-argument check): these run as subprocesses; every case also runs in-process below.
SUBPROCESS_CASES = [
    "blas-spin-n-negative", "families-solve-noisy-fraction-large",
    "passes-n-negative", "passes-threads-too-many", "passes-threads-empty",
    "sketch-formats-unknown", "sketch-csr-n-overflow", "sketch-solve-dims-outside-dims",
    "scaling-strategies-unknown", "scaling-nnz-zero", "scaling-threads-too-many",
    "peers-models-unknown", "peers-tol-zero", "peers-out-empty",
    "memory-strategies-unknown", "memory-threads-too-many", "memory-nnz-below-n",
]


def _environment():
    env = dict(os.environ, MPLBACKEND="Agg")
    # The scripts import fastnewton from the checkout they live in, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(script, arguments):
    try:
        return subprocess.run([sys.executable, str(Path("bench") / script), *arguments], cwd=REPO,
                              env=_environment(), capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as error:
        return error


def _assert_usage_error(command, returncode, stdout, stderr, option):
    assert "Traceback" not in stderr, f"{command}\n{stderr[-3000:]}"
    assert returncode == 2, f"{command} exited {returncode}\n{stderr[-3000:]}"
    assert f"error: argument {option}:" in stderr or f"error: {option} " in stderr, stderr
    assert stdout == "", f"{command} started work before rejecting its arguments:\n{stdout}"


@pytest.fixture(scope="module")
def results():
    """{case id: CompletedProcess (or TimeoutExpired)} for SUBPROCESS_CASES, run concurrently."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        futures = {name: pool.submit(_run, *CASES[name][:2]) for name in SUBPROCESS_CASES}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_value_is_a_usage_error_of_the_command(results, case):
    script, arguments, option = CASES[case]
    result = results[case]
    command = f"python bench/{script} {' '.join(arguments)}"
    assert not isinstance(result, subprocess.TimeoutExpired), f"{command} ran past argument parsing"
    _assert_usage_error(command, result.returncode, result.stdout, result.stderr, option)


_ENTRY_POINTS = {}


def entry_point(script):
    """The script's ``parse_args`` where it has one (it does nothing else), else its ``main``: argument
    errors exit before main does any work. Loaded from bench/ as the script imports its helpers
    (``from _args import …``) when run as a file; each script once per session."""
    if script not in _ENTRY_POINTS:
        with pytest.MonkeyPatch.context() as patch:
            patch.syspath_prepend(str(REPO / "bench"))
            spec = importlib.util.spec_from_file_location("bench_args_" + script[:-3], REPO / "bench" / script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        _ENTRY_POINTS[script] = getattr(module, "parse_args", module.main)
    return _ENTRY_POINTS[script]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_value_is_a_usage_error(case, capsys, monkeypatch):
    script, arguments, option = CASES[case]
    parse = entry_point(script)
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        parse(arguments)
    captured = capsys.readouterr()
    _assert_usage_error(f"bench/{script} {' '.join(arguments)}", exit_info.value.code, captured.out,
                        captured.err, option)


# -- the type functions themselves ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_args():
    spec = importlib.util.spec_from_file_location("bench_args", REPO / "bench" / "_args.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("function", "text", "expected"), [
    ("positive_int", "7", 7),
    ("positive_int", "1e6", 1_000_000),
    ("positive_int", " 12 ", 12),
    ("nonnegative_int", "0", 0),
    ("positive_float", "1e-8", 1e-8),
    ("positive_seconds", "inf", float("inf")),
    ("nonnegative_float", "0", 0.0),
    ("thread_count", "1", 1),
    ("output_file", "", ""),
    ("output_file", "bench/results/new.csv", "bench/results/new.csv"),
    ("output_directory", "bench/results", "bench/results"),
])
def test_valid_values_are_parsed(bench_args, function, text, expected, monkeypatch):
    monkeypatch.chdir(REPO)
    assert getattr(bench_args, function)(text) == expected


@pytest.mark.parametrize(("function", "text"), [
    ("positive_int", "0"), ("positive_int", "-1"), ("positive_int", "2.5"), ("positive_int", "1e400"),
    ("positive_int", "nan"), ("positive_int", "inf"), ("positive_int", ""), ("positive_int", "0x10"),
    ("nonnegative_int", "-1"), ("nonnegative_int", "0.5"),
    ("positive_float", "0"), ("positive_float", "-1e-3"), ("positive_float", "inf"), ("positive_float", "nan"),
    ("positive_float", "small"),
    ("positive_seconds", "0"), ("positive_seconds", "-inf"), ("positive_seconds", "nan"),
    ("nonnegative_float", "-0.1"), ("nonnegative_float", "inf"), ("nonnegative_float", "nan"),
    ("thread_count", "0"), ("thread_count", TOO_MANY_THREADS), ("thread_count", "1.5"),
    ("output_file", A_DIRECTORY), ("output_directory", A_FILE), ("output_directory", ""),
])
def test_invalid_values_raise_argument_type_error(bench_args, function, text, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        getattr(bench_args, function)(text)


def test_comma_list(bench_args):
    parse = bench_args.comma_list(("exact", "sketch", "pcg"))
    assert parse("exact,sketch") == ["exact", "sketch"]
    assert parse("pcg") == ["pcg"]
    for text in ("", "exact,", ",", "exact,,sketch", "auto", "exact,newton"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            parse(text)


def test_valid_peers_command_lines_still_parse(monkeypatch):
    # The scripts with a separate parse_args: integral floats for sizes, inf for no time limit,
    # and the defaults (thread counts above the machine's are only ever dropped from defaults).
    monkeypatch.chdir(REPO)
    peers = entry_point("peers.py")(["--n", "1e4", "--d", "20", "--time-limit", "inf", "--threads", "1",
                                     "--models", "softmax", "--l2", "0", "--seed", "3"])
    assert (peers.n, peers.d, peers.time_limit, peers.threads, peers.models, peers.l2, peers.seed) == (
        10_000, 20, float("inf"), 1, ["softmax"], 0.0, 3)


def test_valid_scaling_command_lines_still_parse(monkeypatch):
    monkeypatch.chdir(REPO)
    scaling = entry_point("scaling.py")(["--nnz", "1e5", "3e4", "--dims", "16", "--threads", "1",
                                         "--no-plot", "--no-progress"])
    assert (scaling.nnz, scaling.dims, scaling.threads, scaling.size_threads) == ([100_000, 30_000], [16], [1], 1)
    defaults = entry_point("scaling.py")([])
    assert defaults.threads and max(defaults.threads) <= numba.config.NUMBA_NUM_THREADS


# -- one output vocabulary: --out DIR (default bench/results/ of the repository), --no-plot, --quick ------
SCRIPTS = ("passes.py", "peers.py", "scaling.py", "sketch_vs_exact.py", "memory.py", "dask_scaling.py")
PLOTTING = ("peers.py", "scaling.py", "sketch_vs_exact.py", "dask_scaling.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_uses_the_shared_output_options(script):
    source = (REPO / "bench" / script).read_text()
    assert "add_output_arguments(" in source
    assert "--quick" in source
    for old in ("--output-dir", '"--output"', "--no-plots", '"--plot"'):
        assert old not in source, f"bench/{script} still defines {old}"
    if script not in PLOTTING:
        assert "add_output_arguments(parser, plots=False)" in source


@pytest.mark.parametrize("script", ["scaling.py", "peers.py", "dask_scaling.py"])
def test_default_output_folder_is_the_repositorys_whatever_the_cwd(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = entry_point(script)(["--threads", "1"] if script != "dask_scaling.py" else [])
    assert args.out == str(REPO / "bench" / "results")
    assert args.no_plot is False


def test_help_of_every_script_lists_out_and_no_plot():
    # One subprocess per script would cost seconds each: the parser's own help, via --help in-process
    # where the script has parse_args; the others through their source (checked above).
    for script in ("scaling.py", "peers.py", "dask_scaling.py"):
        with pytest.raises(SystemExit):
            entry_point(script)(["--help"])


USER_FACING = [REPO / "README.md", *sorted((REPO / "bench").glob("*.py")),
               *sorted((REPO / "docs").rglob("*.md")), REPO / "fastnewton" / "cli.py"]


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(REPO)))
def test_no_internal_references_in_what_users_read(path):
    import re

    text = path.read_text()
    hits = [m.group(0) for m in re.finditer(r"\bSPEC\b|§\s?\d|\b[Ii]ssue\s+#?\d+", text)]
    assert not hits, f"{path.relative_to(REPO)} refers to internal documents: {hits}"
