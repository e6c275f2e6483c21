"""fastnewton: Newton-type solvers for attention-style two-layer regression, with Numba kernels.

    import fastnewton
    C, b, x_true = fastnewton.make_problem(100_000, 50, nnz_per_row=10, seed=0)
    res = fastnewton.solve(C, b, model="softmax")
"""
import importlib.util as _importlib_util
import os as _os
import pathlib as _pathlib
import sys as _sys

# Numba's OpenMP workers spin-wait between parallel regions by default. When anything else
# runs on the cores (BLAS, scipy, another process) a spinning worker holds back every barrier:
# measured on 2 cores with one other busy process, 100 ms instead of 10 ms per Problem.loss+grad
# (n = 2·10⁵) and 4.6 s instead of 2.4 s for the demo solve. Sleeping workers cost ~µs per region.
# Only a default: an OMP_WAIT_POLICY set by the user (before OpenMP starts) wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _map_source_kernels():
    """In a source checkout kernels/ sits beside fastnewton/; installs place it at fastnewton/kernels.

    When the package is imported from a source tree that an editable install does
    not map (e.g. ``python -m fastnewton`` in the repository after ``pip install .``),
    load ../kernels as ``fastnewton.kernels`` so both layouts import the same way.
    """
    if _importlib_util.find_spec(__name__ + ".kernels") is not None:
        return
    source = _pathlib.Path(__file__).resolve().parent.parent / "kernels"
    spec = _importlib_util.spec_from_file_location(
        __name__ + ".kernels", source / "__init__.py", submodule_search_locations=[str(source)])
    if spec is None:
        raise ImportError("fastnewton.kernels is missing: reinstall fastnewton")
    module = _importlib_util.module_from_spec(spec)
    _sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_map_source_kernels()

from . import _cache  # noqa: E402

# Before any kernel module is imported: Numba picks each kernel's cache folder when it is decorated.
_cache.install_locator()

from .batch import BatchResult, solve_many  # noqa: E402
from .plotting import plot_history  # noqa: E402
from .prediction import predict  # noqa: E402
from .problem import Problem  # noqa: E402
from .problems import PlantedProblem, make_problem  # noqa: E402
from .result import ConvergenceWarning, SolveResult, Status  # noqa: E402
from .solver import solve  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BatchResult", "ConvergenceWarning", "PlantedProblem", "Problem", "SolveResult", "Status", "make_problem",
           "plot_history", "predict", "solve", "solve_many", "__version__"]
