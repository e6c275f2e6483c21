"""Smoke tests of bench/: every script and the pytest-benchmark suite run in quick mode and write their outputs.

Each runs as a subprocess from the repository root, as a user would, and must exit 0 and
write its CSV / JSON / PNG with the expected columns. No timing is checked (timings on a
shared machine are noise); the numbers only have to be positive and finite.
"""
import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Generous per-script limit: a hung script fails the test instead of the whole run.
TIMEOUT_SECONDS = 300


def run_script(args, env=None):
    """Run ``python *args`` from the repository root; fail with its output when it exits non-zero."""
    # The child is a process of its own, not a pytest-xdist worker (pytest-benchmark reads PYTEST_XDIST_WORKER
    # and would disable a child benchmark run as if it were one).
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_XDIST_")}
    environment = dict(inherited, MPLBACKEND="Agg", **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS)
    assert proc.returncode == 0, (f"python {' '.join(args)} exited {proc.returncode}\n"
                                  f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, f"{path} has no rows"
    return rows


def assert_columns(rows, columns, path):
    missing = set(columns) - set(rows[0])
    assert not missing, f"{path} lacks columns {sorted(missing)}; has {sorted(rows[0])}"


def assert_positive(value, what):
    value = float(value)
    assert math.isfinite(value) and value > 0, f"{what} = {value}"


def has_module(name):
    return importlib.util.find_spec(name) is not None


METADATA = ("fastnewton_version", "numpy_version", "scipy_version", "numba_version", "git_commit", "cpu_model",
            "cpu_count", "numba_num_threads")


def assert_metadata(record):
    """Every data file says which code, which versions and which machine produced it."""
    missing = [key for key in METADATA if key not in record]
    assert not missing, f"missing provenance {missing}"
    assert record["git_commit"] and record["cpu_model"] and int(record["cpu_count"]) >= 1


# -- bench/scaling.py ----------------------------------------------------------------------------------
SCALING_PLOTS = ("time_vs_nnz.png", "time_vs_d.png", "speedup_vs_threads.png", "roofline_vs_threads.png")
PHASE_COLUMNS = [f"{phase}_{stat}" for phase in ("iteration", "forward", "gradient", "hessian", "solve")
                 for stat in ("median_s", "min_s", "max_s", "q25_s", "q75_s")]


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory):
    """One ``scaling.py --quick`` run shared by the checks below (plots only where matplotlib is installed)."""
    output = tmp_path_factory.mktemp("scaling")
    args = ["bench/scaling.py", "--quick", "--out", str(output)]
    if not has_module("matplotlib"):
        args.append("--no-plot")
    return output, run_script(args)


def test_scaling_quick_writes_csv(scaling_run):
    output, _ = scaling_run
    rows = read_csv(output / "scaling.csv")
    assert_columns(rows, ["sweep", "format", "model", "strategy", "n", "d", "nnz", "threads", "bandwidth_Bps",
                          "gemm_flops", "forward_bytes", "gradient_bytes", "forward_roofline_fraction",
                          "gradient_roofline_fraction", *PHASE_COLUMNS], "scaling.csv")
    assert {row["sweep"] for row in rows} == {"nnz", "d", "threads"}
    assert {row["format"] for row in rows} == {"csr", "dense"}
    assert_metadata(rows[0])
    for row in rows:
        for column in ("iteration_median_s", "forward_median_s", "gradient_median_s", "hessian_median_s",
                       "solve_median_s", "bandwidth_Bps", "gemm_flops", "forward_roofline_fraction"):
            assert_positive(row[column], f"{column} of {row['sweep']} {row['format']} d={row['d']}")
        assert float(row["iteration_min_s"]) <= float(row["iteration_median_s"]) <= float(row["iteration_max_s"])
    threads = sorted({int(row["threads"]) for row in rows if row["sweep"] == "threads"})
    assert threads[0] == 1
    probes = read_csv(output / "probes.csv")
    assert_columns(probes, ["threads", "bandwidth_Bps", "gemm_flops"], "probes.csv")
    assert sorted(int(row["threads"]) for row in probes) == threads


def test_scaling_quick_writes_plots(scaling_run):
    pytest.importorskip("matplotlib")
    output, _ = scaling_run
    for name in SCALING_PLOTS:
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"


def test_scaling_quick_shows_progress(scaling_run):
    pytest.importorskip("tqdm")
    _, proc = scaling_run
    assert "100%" in proc.stderr, proc.stderr[-2000:]


def test_scaling_help_documents_options():
    text = run_script(["bench/scaling.py", "--help"]).stdout
    for option in ("--quick", "--out", "--strategies", "--threads", "--nnz", "--dims", "--no-plot"):
        assert option in text


# -- bench/passes.py and bench/sketch_vs_exact.py ----------------------------------------------------------
def test_passes_quick_writes_json(tmp_path):
    run_script(["bench/passes.py", "--quick", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "passes.json").read_text())
    assert_metadata(payload["metadata"])
    rows = payload["rows"]
    assert rows, "passes.py wrote no rows"
    for row in rows:
        assert {"pass", "threads", "median_s", "min_s", "bytes", "bandwidth_Bps", "roofline_ratio",
                "median_roofline_ratio", "speedup"} <= set(row)
        assert_positive(row["median_s"], f"median_s of {row['pass']}")
        assert_positive(row["roofline_ratio"], f"roofline_ratio of {row['pass']}")
        assert row["bandwidth_Bps"] == max(row["probes_Bps"].values())
    sandwiches = [row for row in rows if row["pass"].startswith("sandwich")]
    assert {"sandwich uniform (10/row)", "sandwich Zipf rows"} <= {row["pass"] for row in sandwiches}
    for row in sandwiches:
        assert_positive(row["ns_per_pair"], f"ns_per_pair of {row['pass']}")


def test_passes_quick_times_a_base_checkout_beside_ours(tmp_path):
    """--base: another checkout's kernels (here a copy of ours, so the ratios are about 1) in the same rounds."""
    shutil.copytree(REPO / "kernels", tmp_path / "base" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    run_script(["bench/passes.py", "--quick", "--threads", "1", "--zipf-n", "0", "--base", str(tmp_path / "base"),
                "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "passes.json").read_text())["rows"]
    for row in rows:
        assert_positive(row["base_median_s"], f"base_median_s of {row['pass']}")
        assert_positive(row["base_ratio"], f"base_ratio of {row['pass']}")


def test_phases_quick_reports_every_phase(tmp_path):
    run_script(["bench/phases.py", "--quick", "--zipf", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "phases.json").read_text())
    # "forward" appears only on the iterations that re-form u = Cx (it is carried from the line search otherwise).
    assert {"gradient", "hessian", "solve", "line_search", "total"} <= set(result["median_seconds"])
    assert len(result["history_seconds"]) == 2


def test_sketch_vs_exact_quick_writes_csv(tmp_path):
    output = tmp_path / "sketch_vs_exact.csv"
    run_script(["bench/sketch_vs_exact.py", "--quick", "--no-plot", "--out", str(tmp_path)])
    rows = read_csv(output)
    assert_metadata(rows[0])
    assert_columns(rows, ["format", "n", "d", "nnz", "strategy", "per_iter_s", "hessian_s"], output.name)
    assert {"exact", "sketch"} <= {row["strategy"] for row in rows}
    for row in rows:
        assert_positive(row["per_iter_s"], f"per_iter_s of {row['format']} d={row['d']} {row['strategy']}")


def test_blas_threads_quick_runs():
    out = run_script(["bench/blas_threads.py", "--quick"]).stdout
    assert "Cholesky factor bitwise equal" in out


def test_blas_spin_quick_times_both_timeouts_in_every_mode():
    lines = run_script(["bench/blas_spin.py", "--quick"]).stdout.splitlines()
    rows = [line for line in lines if "idle" in line]
    assert len(rows) == 2 and "OPENBLAS_THREAD_TIMEOUT=4" in rows[1]
    assert all(row.count("/") == 3 and "after matmul + idle" in row for row in rows)


def test_families_solve_split_run_gives_the_whole_runs_table(tmp_path):
    """--range slices written with --out and joined by --table count the same problems as one run."""
    common = ["bench/families_solve.py", "--quick", "--models", "softmax_relu", "--count", "3", "--no-scipy"]
    whole = run_script(common + ["--out", str(tmp_path / "whole.json")]).stdout
    for first, stop in ((0, 2), (2, 3)):
        run_script(common + ["--range", str(first), str(stop), "--out", str(tmp_path / f"{first}.json")])
    joined = run_script(["bench/families_solve.py", "--table", str(tmp_path / "0.json"), str(tmp_path / "2.json")]).stdout
    assert joined.startswith("3 problems from 2 file(s)")

    def counts(out):  # method, solved counts, median and max iterations (not the seconds)
        return [line.split()[1:6] for line in out.splitlines() if line.startswith("softmax_relu")]

    assert counts(joined) == counts(whole) and len(counts(whole)) == 3


# -- the pytest-benchmark suite ------------------------------------------------------------------------------
EXTRA_INFO = {"n", "d", "nnz", "model", "strategy", "phase", "format", "threads"}


def test_families_solve_quick_prints_solved_counts():
    out = run_script(["bench/families_solve.py", "--quick", "--models", "softmax_relu", "--count", "3"]).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("softmax_relu")]
    assert [row[1] for row in rows] == ["default", "zeros", "zeros-plain", "trust-exact"], out
    for row in rows:
        solved, total = row[2].split("/")
        assert 0 <= int(solved) <= int(total), out


def test_user_start_quick_counts_each_start_against_the_default():
    out = run_script(["bench/user_start.py", "--quick"]).stdout
    counts = [line.split() for line in out.splitlines() if line.startswith(("auto ", "zeros ", "random ", "warm "))]
    assert [row[0] for row in counts] == ["auto", "zeros", "random", "warm"], out
    for row in counts:
        reached, total = row[3].rstrip(",").split("/")
        assert 0 <= int(reached) <= int(total) == 6, out


def test_valley_quick_prints_iterations_per_problem_and_phase(tmp_path):
    out = run_script(["bench/valley.py", "--quick", "--phases", "--out", str(tmp_path / "valley.json")]).stdout
    assert "largest" in out and "surrogate l2+" in out
    rows = json.loads((tmp_path / "valley.json").read_text())["rows"]
    assert [(row["kind"], row["seed"]) for row in rows] == [("planted", 0), ("planted", 1), ("gaussian", 0),
                                                          ("gaussian", 1)]
    for row in rows:
        assert row["status"] == "CONVERGED" and row["residual"] < 1e-4
        assert sum(count for _, count in row["phases"]) == row["n_iter"]


def test_benchmark_suite_quick_writes_self_describing_json(tmp_path):
    output = tmp_path / "bench.json"
    # One Numba and BLAS thread: the suite's code does not depend on the thread count, and on
    # a 2-core machine shared with other processes every parallel region otherwise waits a
    # scheduler slice for its second thread (measured: 2 minutes instead of 15 s).
    single_thread = {"FASTNEWTON_BENCH_QUICK": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run_script(["-m", "pytest", "bench/", "--benchmark-only", "--benchmark-disable-gc", "-q",
                "-p", "no:cacheprovider", f"--benchmark-json={output}"], env=single_thread)
    benchmarks = json.loads(output.read_text())["benchmarks"]
    seen = set()
    for bench in benchmarks:
        info = bench["extra_info"]
        assert EXTRA_INFO <= set(info), f"{bench['name']} extra_info lacks {sorted(EXTRA_INFO - set(info))}"
        assert info["threads"] == 1
        assert_positive(bench["stats"]["median"], bench["name"])
        seen.add((info["phase"], info["format"], info["model"], info["strategy"]))
    expected = {(phase, fmt, model, strategy)
                for fmt in ("csr", "dense") for model in ("softmax", "relu_softmax", "softmax_relu")
                for phase, strategies in (("forward", [None]), ("gradient", [None]),
                                          ("hessian", ["exact", "sketch", "pcg"]),
                                          ("solve", ["exact", "sketch", "pcg"]),
                                          ("iteration", ["exact", "sketch", "pcg"]))
                for strategy in strategies}
    assert seen == expected, f"missing {sorted(expected - seen, key=str)}"


def test_plain_pytest_does_not_collect_bench():
    """``python -m pytest`` from the root runs tests/ only: bench/ is collected only when named."""
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert config["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


# -- bench/many.py ---------------------------------------------------------------------------------------
def test_many_quick_writes_csv_and_answers_agree(tmp_path):
    output = tmp_path / "many.csv"
    args = ["bench/many.py", "--quick", "--models", "softmax,relu_softmax,softmax_relu", "--out", str(tmp_path)]
    if not has_module("matplotlib"):
        args.append("--no-plot")
    out = run_script(args).stdout
    assert "ratio" in out
    rows = read_csv(output)
    assert_metadata(rows[0])
    assert_columns(rows, ["format", "model", "q", "many_s", "loop_s", "ratio", "max_rel_dx", "agree"], output.name)
    assert {(row["format"], row["model"]) for row in rows} == {(f, m) for f in ("csr", "dense")
                                                              for m in ("softmax", "relu_softmax", "softmax_relu")}
    for row in rows:
        assert_positive(row["many_s"], "many_s")
        assert_positive(row["loop_s"], "loop_s")
        assert row["agree"] == "True", row
    if has_module("matplotlib"):
        assert (tmp_path / "many.png").stat().st_size > 0


def test_many_phases_quick_writes_each_phase_and_the_rest(tmp_path):
    output = tmp_path / "many_phases.csv"
    run_script(["bench/many_phases.py", "--quick", "--models", "softmax,relu_softmax", "--out", str(tmp_path)])
    rows = read_csv(output)
    assert_metadata(rows[0])
    phases = ["forward_passes_s", "transposed_passes_s", "sandwiches_s", "cholesky_and_solves_s",
              "line_search_trials_s", "model_vectors_s", "rest_s"]
    assert_columns(rows, ["format", "model", "q", "side", "unwrapped_s", "wrapped_s", *phases, "bound"], output.name)
    assert {(row["format"], row["model"], row["side"]) for row in rows} == {
        (f, m, side) for f in ("csr", "dense") for m in ("softmax", "relu_softmax") for side in ("solve_many", "loop")}
    for row in rows:
        if row["side"] == "solve_many":
            # the loop's time over solve_many's timed phases
            loop = next(other for other in rows if other["side"] == "loop"
                        and (other["format"], other["model"]) == (row["format"], row["model"]))
            timed = float(row["wrapped_s"]) - float(row["rest_s"])
            assert abs(float(row["bound"]) - float(loop["unwrapped_s"]) / timed) <= 1e-9 * float(row["bound"])
        assert_positive(row["wrapped_s"], "wrapped_s")
        # the phases are parts of the wrapped call (exclusive times): they add up to it
        parts = sum(float(row[phase]) for phase in phases)
        assert abs(parts - float(row["wrapped_s"])) <= 1e-9 * float(row["wrapped_s"]) + 1e-12
        assert all(float(row[phase]) >= 0.0 for phase in phases[:-1]), row


def test_sandwich_quick_times_a_base_checkout_beside_ours(tmp_path):
    """bench/sandwich.py --base: ns per pair of ours and of another checkout's kernels (here a copy of ours)."""
    shutil.copytree(REPO / "kernels", tmp_path / "base" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "base" / "fastnewton").mkdir()
    shutil.copy(REPO / "fastnewton" / "chunking.py", tmp_path / "base" / "fastnewton")  # the base's own chunks
    run_script(["bench/sandwich.py", "--quick", "--threads", "1", "--base", str(tmp_path / "base"),
                "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "sandwich.json").read_text())["rows"]
    assert any(row["operation"].startswith("uniform") for row in rows)
    assert any("short rows" in row["operation"] for row in rows), "the Zipf matrix must have rows sandwiched by SYRK"
    for row in rows:
        assert_positive(row["ns_per_pair"], f"ns_per_pair of {row['operation']}")
        if "SYRK" not in row["operation"]:
            assert_positive(row["base_ratio"], f"base_ratio of {row['operation']}")


def test_zipf_peers_quick_reports_every_method(tmp_path):
    """bench/zipf_peers.py --quick: the three fastnewton runs and L-BFGS-B, each re-checked with NumPy."""
    run_script(["bench/zipf_peers.py", "--quick", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "zipf_peers.json").read_text())["rows"]
    assert [row["method"].split(" (")[0].split(" from")[0] for row in rows] == [
        "fastnewton default", "fastnewton exact", "fastnewton lagged", "scipy L-BFGS-B"]
    assert "hessian auto → " in rows[0]["method"]
    for row in rows[:3]:
        assert row["reached_tol"], row
        assert row["final_rel_grad_norm"] <= 1e-8 * (1 + 1e-6)
    for row in rows:
        assert_positive(row["lbfgsb_ratio"], f"lbfgsb_ratio of {row['method']}")
        # progress: (seconds, smallest ‖∇L‖/g_ref so far), times increasing up to the run's time, norms not rising
        times, norms = zip(*row["progress"])
        assert list(times) == sorted(times) and times[-1] <= row["time_s"], row["progress"]
        assert list(norms) == sorted(norms, reverse=True), row["progress"]


def test_zipf_peers_progress_takes_the_smallest_norm_by_each_checkpoint():
    sys.path.insert(0, str(REPO / "bench"))
    from zipf_peers import progress
    trace = [(0.5, 1.0), (2.0, 0.1), (2.5, 0.3), (12.0, 0.01)]
    assert progress(trace, 12.0) == [(1.0, 1.0), (3.0, 0.1), (10.0, 0.1), (12.0, 0.01)]
    assert progress(trace, 2.0) == [(1.0, 1.0), (2.0, 0.1)]
    assert progress([], 5.0) == []


def test_memory_counts_the_iteration_not_the_problem(tmp_path):
    """bench/memory.py --quick: each strategy in its own process; the NumPy peak of one iteration agrees
    with fastnewton/memory.py's count (both count the same arrays: within 25%; sketch and pcg on their
    largest iteration, the one that refreshes its leverage reference), and the sketch's
    length-n JL projection makes its peak larger than the exact iteration's at d = 64 (the old script
    reported the problem's construction, the same peak for every strategy)."""
    run_script(["bench/memory.py", "--quick", "--d", "64", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["exact", "sketch", "pcg"]
    for r in rows:
        assert r["n_iter"] == 1 and 0.8 <= r["traced"] / r["formula_bytes"] <= 1.25, r
        assert r["formula_bytes"] < r["c_bytes"] * 3
        assert r["leverage_refreshes"] == (0 if r["strategy"] == "exact" else 1), r
    exact, sketch = rows[0], rows[1]
    assert sketch["traced"] > 1.5 * exact["traced"] and sketch["formula_bytes"] > 1.5 * exact["formula_bytes"]


def test_zipf_peers_methods_runs_a_subset(tmp_path):
    """--methods exact: only that run, and no L-BFGS-B ratio (there is no L-BFGS-B row to divide by)."""
    run_script(["bench/zipf_peers.py", "--quick", "--methods", "exact", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "zipf_peers.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["fastnewton exact from 0"]
    assert rows[0]["reached_tol"] and "lbfgsb_ratio" not in rows[0]


def test_sketch_to_tol_and_sampled_start_quick_run():
    """bench/sketch_to_tol.py --quick (dense and CSR) reaches tol with every strategy and says how the start
    was fitted; bench/sampled_start.py --quick compares the sampled and the exact start."""
    for extra in ([], ["--nnz-per-row", "4"]):
        out = run_script(["bench/sketch_to_tol.py", "--quick", *extra]).stdout
        assert out.count("converged True") == 3 and out.count("iteration 0:") == 3, out
    out = run_script(["bench/sampled_start.py", "--quick"]).stdout
    assert "sampled start against exact start: " in out and "!" not in out and "E" not in out.split("\n")[0], out


# -- bench/small_threads.py ------------------------------------------------------------------------------
def test_small_threads_quick_writes_csv(tmp_path):
    output = tmp_path / "small_threads.csv"
    out = run_script(["bench/small_threads.py", "--quick", "--models", "softmax", "--out", str(tmp_path)]).stdout
    assert "ratio" in out
    rows = read_csv(output)
    assert_metadata(rows[0])
    assert_columns(rows, ["model", "format", "n", "predicted_ms", "one_thread_ms", "all_threads_ms", "ratio",
                          "default_threads"], output.name)
    assert {row["format"] for row in rows} == {"csr", "dense"}
    for row in rows:
        assert_positive(row["one_thread_ms"], "one_thread_ms")
        assert_positive(row["all_threads_ms"], "all_threads_ms")
    # the smallest of each format is under the line: one thread by default
    assert all(row["default_threads"] == "1" for row in rows if row["n"] in ("256", "2000"))
