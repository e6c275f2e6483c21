"""Smoke test of bench/dask_scaling.py: the --quick sweep runs on LocalClusters and writes its CSV and PNG.

Runs as a subprocess from the repository root, as a user would (LocalCluster with worker
processes needs the script's ``if __name__ == "__main__"`` guard). No timing is checked; the
numbers only have to be positive and finite, and the Dask and single-machine answers must agree.
"""
import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dask.array")
pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
# Generous limit (the quick sweep takes well under a minute): a hung cluster fails the test, not the run.
TIMEOUT_SECONDS = 300
COLUMNS = ["nnz_target", "n", "d", "nnz", "nnz_per_row", "blocks", "model", "hessian", "backend", "workers",
           "threads", "iterations", "iteration_median_s", "forward_median_s", "gradient_median_s",
           "hessian_median_s", "rounds_per_iter", "tasks_per_iter", "bytes_moved_per_iter", "round_seconds_per_iter",
           "block_seconds_per_iter", "worker_seconds_per_iter", "overhead_seconds_per_iter", "driver_seconds_per_iter",
           "max_rel_diff_x", "ratio_vs_single"]


def test_dask_scaling_quick(tmp_path):
    args = [sys.executable, "bench/dask_scaling.py", "--quick", "--no-progress", "--out", str(tmp_path)]
    plots = importlib.util.find_spec("matplotlib") is not None
    if not plots:
        args.append("--no-plot")
    proc = subprocess.run(args, cwd=REPO, env=dict(os.environ, MPLBACKEND="Agg"), capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS)
    assert proc.returncode == 0, (f"{' '.join(args)} exited {proc.returncode}\n--- stdout ---\n"
                                  f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    path = tmp_path / "dask_scaling.csv"
    assert path.exists(), f"no {path}; stdout:\n{proc.stdout[-2000:]}"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, f"{path} has no rows"
    missing = set(COLUMNS) - set(rows[0])
    assert not missing, f"{path} lacks columns {sorted(missing)}"
    assert {(row["backend"], row["workers"]) for row in rows} == {("single", "0"), ("dask", "1"), ("dask", "2")}
    for row in rows:
        assert int(row["iterations"]) == 2, row
        assert float(row["iteration_median_s"]) > 0 and math.isfinite(float(row["iteration_median_s"])), row
        if row["backend"] == "dask":
            assert float(row["bytes_moved_per_iter"]) > 0 and float(row["rounds_per_iter"]) >= 1, row
            assert float(row["max_rel_diff_x"]) < 1e-8, row  # exact Hessian: the same answer as solve
            assert math.isfinite(float(row["ratio_vs_single"])), row
    if plots:
        assert (tmp_path / "dask_scaling.png").stat().st_size > 0
