"""What the bench scripts share: progress (tqdm when installed, plain lines otherwise), CSV/JSON output
stamped with the run's provenance (package versions, git commit, CPU model, threads), and plot captions."""
import csv
import functools
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_progress(total, enabled, name):
    """(update(description), close()) through tqdm, or plain lines on stderr where tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
        if enabled:
            print("tqdm not installed (pip install tqdm): progress as plain lines", file=sys.stderr)
    if tqdm is None or not enabled:
        count = [0]

        def update(description):
            count[0] += 1
            if enabled:
                print(f"[{count[0]}/{total}] {description}", file=sys.stderr, flush=True)
        return update, lambda: None
    bar = tqdm(total=total, unit="point", desc=name, file=sys.stderr)
    started = [False]

    def update(description):
        if started[0]:
            bar.update(1)
        started[0] = True
        bar.set_postfix_str(description)
    return update, lambda: (bar.update(1), bar.close())


def cpu_model():
    """The CPU's marketing name (/proc/cpuinfo on Linux, sysctl on macOS), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def git_commit():
    """HEAD of the repository the bench scripts belong to (with "-dirty" for uncommitted changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _installed_version(distribution):
    """The installed version of a distribution, or "" when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=None)
def _static_metadata():
    import numba
    import numpy
    import scipy

    import fastnewton

    blas = ""
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(sorted({f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
                                 if i.get("user_api") == "blas"}))
    except Exception:  # threadpoolctl is a dependency; its report is best effort
        pass
    return {
        "fastnewton_version": fastnewton.__version__,
        "python_version": platform.python_version(),
        "numpy_version": numpy.__version__,
        "scipy_version": scipy.__version__,
        "numba_version": numba.__version__,
        # The optional peer of bench/peers.py, by its installed metadata (importing torch takes seconds).
        "torch_version": _installed_version("torch"),
        "blas": blas,
        "git_commit": git_commit(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "numba_num_threads": numba.config.NUMBA_NUM_THREADS,
    }


def run_metadata():
    """Where the numbers come from: versions, git commit, CPU model and core count, Numba's thread count."""
    return dict(_static_metadata())


def machine_caption():
    """One line for a plot: the machine and the software that produced it."""
    meta = run_metadata()
    return (f"{meta['cpu_model']}, {meta['cpu_count']} CPUs; fastnewton {meta['fastnewton_version']} "
            f"({meta['git_commit'][:12]}), NumPy {meta['numpy_version']}, Numba {meta['numba_version']}")


def caption(fig, command):
    """Stamp a figure with the machine that made it and the command that reproduces it (bottom edge)."""
    fig.text(0.005, 0.005, f"{machine_caption()}\nreproduce: {command}", fontsize=6, color="dimgray",
             ha="left", va="bottom")


def command_line():
    """The command that was run, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(REPO)
    except ValueError:
        shown = script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def write_csv(path, rows, fields=None):
    """rows (dicts) to a CSV at path (directories made); columns: ``fields``, or every key in first-seen order.

    Every row also gets the run's provenance columns (``run_metadata``: versions, git commit, CPU
    model, core and thread counts) after the data columns.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    keys = list(fields) if fields is not None else list(dict.fromkeys(key for row in rows for key in row))
    meta = run_metadata()
    keys += [key for key in meta if key not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**meta, **row} for row in rows)
    print(f"wrote {path}")


def write_json(path, payload):
    """``{"metadata": run_metadata(), "command": …, **payload}`` to a JSON file at path (directories made)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"metadata": run_metadata(), "command": command_line(), **payload}, fh, indent=1, default=float)
    print(f"wrote {path}")
