"""Smoke tests of the scripts behind ``hessian="auto"`` and the dense phases: bench/calibrate.py,
bench/auto_grid.py and bench/dense_phases.py in their quick modes (no timing is checked)."""
import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastnewton
import fastnewton.rates as rates_module
from fastnewton import Problem
from fastnewton.hessian import strategy_seconds

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 300
RATE_NAMES = [name for name in dir(rates_module) if name.isupper() and name != "MACHINE"]


def run_script(*args):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS, env=dict(os.environ, MPLBACKEND="Agg"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def load_calibrate():
    spec = importlib.util.spec_from_file_location("bench_calibrate", REPO / "bench" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibrate_quick_measures_every_shipped_rate():
    out = run_script("bench/calibrate.py", "--quick")
    measured = dict(re.findall(r"^([A-Z0-9_]+) = (\S+)$", out, flags=re.M))
    # A row rate is left out (the stored one kept) when noise puts the short rows' time below the long rows' rate.
    assert set(measured) <= set(RATE_NAMES)
    assert set(RATE_NAMES) - set(measured) <= {"CSR_SANDWICH_ROWS", "CSR_HESSIAN_VECTOR_ROWS"}
    # A share of iterations: 0 where every leverage reference was kept.
    assert float(measured.pop("REFERENCE_REFRESHES_PER_ITERATION")) >= 0
    assert all(float(value) > 0 for value in measured.values())


def test_calibrate_splits_an_operations_time_into_its_work_and_its_rows():
    # time = work / W + rows / R at W = 3e9, R = 2e8, measured on long rows and on short rows: both recovered.
    calibrate = load_calibrate()
    long_rows, short_rows = (1.9e8, 4e5), (6e6, 1e6)
    seconds = [work / 3e9 + rows / 2e8 for work, rows in (long_rows, short_rows)]
    work_rate, row_rate = calibrate.work_and_row_rates((*long_rows, seconds[0]), (*short_rows, seconds[1]))
    assert work_rate == pytest.approx(3e9, rel=1e-9) and row_rate == pytest.approx(2e8, rel=1e-9)
    # Short rows measured faster than the long rows' rate alone predicts (noise): no row rate, the stored one stays.
    work_rate, row_rate = calibrate.work_and_row_rates((*long_rows, seconds[0]), (*short_rows, 6e6 / 3e9 / 2))
    assert row_rate is None and work_rate == pytest.approx(1.9e8 / seconds[0])


def test_calibrate_rewrites_only_the_values():
    calibrate = load_calibrate()
    text = calibrate.module_text({name: 2.5 for name in RATE_NAMES}, "test machine")
    namespace = {}
    exec(text, namespace)
    assert namespace["MACHINE"] == "test machine"
    assert all(namespace[name] == 2.5 for name in RATE_NAMES)
    # the comments saying how to re-calibrate stay
    assert "python bench/calibrate.py --write" in text


def test_calibrate_refuses_to_write_quick_figures():
    proc = subprocess.run([sys.executable, "bench/calibrate.py", "--quick", "--write"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--write" in proc.stderr


def test_auto_grid_quick_prints_and_writes_the_grid(tmp_path):
    output = tmp_path / "grid.csv"
    out = run_script("bench/auto_grid.py", "--quick", "--output", str(output))
    assert "worst ratio auto / fastest" in out
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        assert row["auto"] in ("exact", "sketch", "pcg", "lagged")
        assert float(row["ratio"]) >= 1.0
        assert all(float(row[f"{name}_s"]) > 0 for name in ("exact", "sketch", "pcg", "lagged"))


def test_dense_phases_runs_small():
    out = run_script("bench/dense_phases.py", "--n", "3000", "--d", "16", "--repeat", "1")
    assert out.count("sandwich") >= 2 and "threads 1" in out


def test_calibrate_merge_keeps_the_faster_rate_and_the_measured_iterations():
    calibrate = load_calibrate()
    stored = rates_module
    measured = {name: 2 * getattr(stored, name) if name.startswith("DENSE") else 0.5 * getattr(stored, name)
                for name in RATE_NAMES}
    out = calibrate.merged(measured, stored)
    for name in RATE_NAMES:
        if name in calibrate.ITERATION_FIGURES:
            assert out[name] == measured[name]
        else:
            assert out[name] == max(measured[name], getattr(stored, name))


def test_auto_grid_points_selects_grid_entries():
    out = run_script("bench/auto_grid.py", "--quick", "--points", "1")
    assert out.count("   csr ") == 1 and " dense " not in out.split("\n", 1)[1]


def test_auto_grid_from_zeros_prices_that_start(tmp_path):
    # --x0 zeros: every strategy from zeros, and auto's pick priced for that start (not for x0="auto")
    output = tmp_path / "grid.csv"
    run_script("bench/auto_grid.py", "--quick", "--points", "0", "--x0", "zeros", "--output", str(output))
    with open(output) as handle:
        row, = csv.DictReader(handle)
    C, b, _ = fastnewton.make_problem(3000, 16, dense=True, noise=0.1, seed=0)
    predicted = strategy_seconds(Problem(C, b), 0.5, None, default_start=False)
    assert float(row["exact_predicted_s"]) == pytest.approx(predicted["exact"], rel=1e-12)
    assert int(row["exact_iterations"]) > 0
