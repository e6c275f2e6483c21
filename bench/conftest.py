"""The benchmark grid, its markers, and a session cache of planted problems.

Collected only when bench/ is named on the command line (pyproject's testpaths is ["tests"]).
The grid is the one of bench/scaling.py: nnz ∈ {1e5, 1e6, 1e7} at d = 64 and
d ∈ {32, …, 1024} at nnz = 1e6, for CSR and dense C and every model; with
FASTNEWTON_BENCH_QUICK=1 the tiny grid of ``scaling.py --quick`` instead.
"""
import os

import pytest

try:
    import scaling
except ImportError:  # imported as bench.conftest from the repository root
    from bench import scaling


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


QUICK = _flag("FASTNEWTON_BENCH_QUICK")
# Seconds of timed calls per benchmark: rounds = budget / (one warm call), within [MIN, MAX] rounds.
BUDGET_SECONDS = float(os.environ.get("FASTNEWTON_BENCH_BUDGET", "0.02" if QUICK else "1.0"))
MIN_ROUNDS = 2 if QUICK else 3
MAX_ROUNDS = 5 if QUICK else 50
# A case at or above this many non-zeros, or this d, gets the ``heavy`` marker (deselect with -m "not heavy").
HEAVY_NNZ = 10**7
HEAVY_D = 512

if QUICK:
    NNZ_SWEEP, FIXED_D = (2_000, 8_000), 16
    D_SWEEP, FIXED_NNZ = (16, 32), 8_000
else:
    NNZ_SWEEP, FIXED_D = scaling.NNZ_SWEEP, scaling.FIXED_D
    D_SWEEP, FIXED_NNZ = scaling.D_SWEEP, scaling.FIXED_NNZ

MARKERS = {
    "csr": "C stored as CSR",
    "dense": "C stored as a dense row-major array",
    "softmax": "model softmax",
    "relu_softmax": "model relu_softmax",
    "softmax_relu": "model softmax_relu",
    "exact": "Hessian strategy exact",
    "sketch": "Hessian strategy sketch",
    "pcg": "Hessian strategy pcg",
    "sweep_nnz": "a point of the nnz sweep at fixed d",
    "sweep_d": "a point of the d sweep at fixed nnz",
    "heavy": f"nnz ≥ {HEAVY_NNZ:.0e} or d ≥ {HEAVY_D} (slow to build and to time)",
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def grid():
    """[(nnz, d, [sweep markers])] without repeating the shared point."""
    points = {}
    for nnz in NNZ_SWEEP:
        points.setdefault((nnz, FIXED_D), []).append("sweep_nnz")
    for d in D_SWEEP:
        points.setdefault((FIXED_NNZ, d), []).append("sweep_d")
    return [(nnz, d, sweeps) for (nnz, d), sweeps in points.items()]


def pytest_generate_tests(metafunc):
    """Parametrise ``case_key`` over format × model × size and ``strategy`` over the Hessian strategies.

    Ids read like ``csr-softmax-nnz1e6-d64``, so ``-k`` selects by substring and ``-m`` by marker.
    """
    if "case_key" in metafunc.fixturenames:
        params = []
        for fmt in scaling.FORMATS:
            for model in scaling.MODELS:
                for nnz, d, sweeps in grid():
                    marks = [getattr(pytest.mark, name) for name in (fmt, model, *sweeps)]
                    if nnz >= HEAVY_NNZ or d >= HEAVY_D:
                        marks.append(pytest.mark.heavy)
                    params.append(pytest.param((fmt, model, nnz, d), marks=marks,
                                               id=f"{fmt}-{model}-{scaling.size_id(nnz, d)}"))
        metafunc.parametrize("case_key", params)
    if "strategy" in metafunc.fixturenames:
        metafunc.parametrize("strategy", [pytest.param(name, marks=getattr(pytest.mark, name))
                                          for name in scaling.STRATEGIES])


@pytest.fixture(scope="session")
def case_cache():
    """Planted problems built once per session (make_problem, seed 0), keyed by (format, model, nnz, d).

    The full grid keeps about 2–3 GB alive; select a subset (-k, -m) on small machines.
    """
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = scaling.make_case(*key, seed=0)
        return cache[key]
    return get


@pytest.fixture(scope="session")
def rounds_policy():
    """(budget seconds, min rounds, max rounds) for benchmark.pedantic."""
    return BUDGET_SECONDS, MIN_ROUNDS, MAX_ROUNDS


@pytest.fixture
def case(case_cache, case_key):
    return case_cache(case_key)
