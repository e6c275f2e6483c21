"""The ``fastnewton`` command (also ``python -m fastnewton``): demo, fit, warmup.

    fastnewton demo                      solve a built-in planted problem, print the iterations
    fastnewton fit C.mtx --b b.npy       solve your own problem from files, write x
    fastnewton warmup                    compile and cache the kernels ahead of the first solve
    fastnewton --version
"""
import argparse
import contextlib
import math
import os
import sys
import time
import zipfile

import numpy as np

from .hessian import STRATEGIES
from .models import model_names, uses_values

MODELS = model_names()


# -- argument types: sizes may be written 1e6 --------------------------------------------------
def _integer(text, minimum):
    kind = f"an integer ≥ {minimum}"
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind} (e.g. 1000000 or 1e6), got {text!r}") from None
        # 1e6 is an integer; 2.5 or 1e400 is not, and is never rounded silently.
        if not math.isfinite(number) or number != int(number):
            raise argparse.ArgumentTypeError(f"expected {kind} (e.g. 1000000 or 1e6), got {text!r}") from None
        value = int(number)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return value


def positive_int(text):
    """An integer ≥ 1; '1e6' is accepted as 1000000."""
    return _integer(text, 1)


def nonnegative_int(text):
    """An integer ≥ 0 (seeds, max_iter); '1e3' is accepted."""
    return _integer(text, 0)


def real(text):
    """A finite number (the solver checks the range and names the argument)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _version():
    from . import __version__
    import numba
    import numpy
    import scipy

    return (f"fastnewton {__version__} (Python {sys.version.split()[0]}, NumPy {numpy.__version__}, "
            f"SciPy {scipy.__version__}, Numba {numba.__version__})")


# -- shared solver options -------------------------------------------------------------------------
def _add_solver_options(parser, x0_default, takes_file_x0=False):
    parser.add_argument("--model", default="softmax", choices=MODELS, help="the model h (default softmax)")
    parser.add_argument("--hessian", default="auto", choices=STRATEGIES, help="Hessian strategy (default auto)")
    if takes_file_x0:
        parser.add_argument("--x0", default=x0_default, metavar="{auto,zeros,FILE}",
                            help=f"starting point: auto, zeros, or a file holding a length-d x (.npy, .txt, .csv, "
                                 f"e.g. a previous fit's --out) (default {x0_default})")
    else:
        parser.add_argument("--x0", default=x0_default, choices=["auto", "zeros"],
                            help=f"starting point (default {x0_default})")
    parser.add_argument("--no-continuation", dest="continuation", action="store_false",
                        help="softmax_relu: one plain Newton loop on the real loss from the start, without the "
                             "staged continuation (lifted surrogate, ridge path, restart from zeros)")
    parser.add_argument("--tol", type=real, default=1e-8, help="relative gradient tolerance (default 1e-8)")
    parser.add_argument("--max-iter", type=nonnegative_int, default=100, help="at most this many iterations (default 100)")
    parser.add_argument("--l2", type=real, default=0.0, help="ridge weight λ ≥ 0 (default 0)")
    parser.add_argument("--threads", type=positive_int, default=None, help="threads (default: all cores)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of every random choice (default 0)")


def _summary(res, extra=""):
    return (f"summary: {res.n_iter} iterations, {res.time:.2f} s, loss = {res.loss:.3e}, "
            f"|grad| = {res.grad_norm:.3e} (relative {res.rel_grad_norm:.2e}){extra}, converged = {res.converged}")


# -- demo ------------------------------------------------------------------------------------------
def _demo(args):
    from . import make_problem, solve

    print(f"fastnewton demo: planted {args.model} problem, n = {args.n:,}, d = {args.d}, "
          f"{args.nnz_per_row} non-zeros per row (CSR), noise = {args.noise:g}, seed = {args.seed}")
    clock = time.perf_counter()
    _check_demo_fits(args)
    problem = make_problem(args.n, args.d, nnz_per_row=args.nnz_per_row, model=args.model,
                           noise=args.noise, seed=args.seed)
    C, b, x_true = problem
    print(f"built C with nnz = {C.nnz:,} ({C.data.nbytes + C.indices.nbytes + C.indptr.nbytes:,} bytes) "
          f"in {time.perf_counter() - clock:.2f} s; solving with hessian={args.hessian!r}, tol={args.tol:g}")
    res = solve(C, b, args.model, V=problem.V, l2=args.l2, hessian=args.hessian, tol=args.tol,
                max_iter=args.max_iter, n_threads=args.threads, x0=args.x0, seed=args.seed, verbose=True,
                continuation=args.continuation)
    error = np.linalg.norm(res.x - x_true) / np.linalg.norm(x_true)
    print(_summary(res, f", |x - x_true|/|x_true| = {error:.2e}"))
    print(f"start: {res.start}")
    return 0 if res.converged else 1


def _check_demo_fits(args):
    """MemoryError before building the problem when it and one iteration cannot fit (not Numba's
    "Allocation failed" seconds later): C is built with about 3 copies of its entries alive (columns,
    values, the CSR result), 12 bytes per entry, then the iteration's work of ``fastnewton.memory``."""
    from .memory import available_bytes, iteration_bytes

    m = min(args.d, 16) if uses_values(args.model) else 0
    nnz = args.n * min(args.d, args.nnz_per_row)
    needed = 3 * 12 * nnz + 8 * args.n * m + iteration_bytes(args.n, args.d, m + 2)
    available = available_bytes()
    if available is not None and needed > available:
        raise MemoryError(f"n = {args.n:,} rows with {args.nnz_per_row} non-zeros each and d = {args.d:,} columns "
                          f"need about {needed / 2**30:.1f} GiB, but only {available / 2**30:.1f} GiB of memory is "
                          f"available; use a smaller --n or --d")


# -- fit -------------------------------------------------------------------------------------------
# The first bytes of each NumPy format: a file without them is refused by name before np.load reads it (an empty
# file raised EOFError, a traceback; any other bytes were taken for a pickle, "allow_pickle" advice naming nothing).
_MAGIC = {".npy": (b"\x93NUMPY",), ".npz": (b"PK\x03\x04", b"PK\x05\x06")}
# What reading a damaged file may raise besides OSError / ValueError (a truncated archive, a cut-off array).
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _check_magic(path, suffix):
    with open(path, "rb") as file:
        head = file.read(8)
    if not head.startswith(_MAGIC[suffix]):
        what = "it is empty" if not head else f"it does not start as a NumPy {suffix} file does"
        raise ValueError(f"{path} is not a {suffix} file ({what})")


def _load_npz(path):
    import scipy.sparse as sp

    _check_magic(path, ".npz")
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        if {"format", "shape", "data"} <= keys:  # written by scipy.sparse.save_npz
            return {"C": sp.load_npz(path)}
        try:
            return {key: archive[key] for key in archive.files}
        except ValueError as error:
            if "allow_pickle" not in str(error):
                raise
            # numpy.savez of a SciPy sparse matrix stores a pickled object, which is never loaded
            # (unpickling runs code from the file).
            raise ValueError(f"{path} holds a Python object, not an array (numpy.savez of a SciPy sparse "
                             f"matrix?): save a sparse C with scipy.sparse.save_npz('C.npz', C) and pass b "
                             f"with --b, or store C dense") from None


def _load_array(path, name):
    """A matrix or vector from .npy, .npz (scipy.sparse.save_npz or one array), .mtx or a text file."""
    import scipy.io

    if not os.path.isfile(path):
        raise ValueError(f"{name}: no such file {path!r}")
    lower = path.lower()
    try:
        if lower.endswith((".mtx", ".mtx.gz", ".mm")):
            return scipy.io.mmread(path)
        if lower.endswith(".npy"):
            _check_magic(path, ".npy")
            return np.load(path, allow_pickle=False)
        if lower.endswith(".npz"):
            arrays = _load_npz(path)
            if len(arrays) == 1:
                return next(iter(arrays.values()))
            if name in arrays:
                return arrays[name]
            raise ValueError(f"{name}: {path} holds {sorted(arrays)}; expected one array or one named {name!r}")
        if lower.endswith((".txt", ".csv", ".tsv", ".dat")):
            return np.loadtxt(path, delimiter="," if lower.endswith(".csv") else None, ndmin=1)
    except _READ_ERRORS as error:
        raise ValueError(f"{name}: cannot read {path}: {error}") from error
    raise ValueError(f"{name}: unsupported file type {path!r} (use .npz, .npy, .mtx, .txt or .csv)")


def _as_vector(value):
    import scipy.sparse as sp

    if sp.issparse(value):
        value = value.toarray()
    value = np.asarray(value)
    return value.ravel() if value.ndim == 2 and 1 in value.shape else value


def _fit_inputs(args):
    """(C, b, V) from the command line: DATA (.npz with C, b[, V], or a matrix file) and --b/--V."""
    if args.data.lower().endswith(".npz"):
        if not os.path.isfile(args.data):
            raise ValueError(f"DATA: no such file {args.data!r}")
        try:
            arrays = _load_npz(args.data)
        except _READ_ERRORS as error:
            raise ValueError(f"DATA: cannot read {args.data}: {error}") from error
        if "C" not in arrays:
            raise ValueError(f"DATA: {args.data} has no array named 'C' (has {sorted(arrays)})")
        C, b, V = arrays["C"], arrays.get("b"), arrays.get("V")
    else:
        C, b, V = _load_array(args.data, "C"), None, None
    if args.b is not None:
        b = _load_array(args.b, "b")
    if args.V is not None:
        V = _load_array(args.V, "V")
    if b is None:
        raise ValueError("b: give --b FILE (or store an array named 'b' in DATA.npz)")
    b = _as_vector(b)
    if not uses_values(args.model):
        V = None
    elif V is None:
        raise ValueError(f"V: model {args.model} needs --V FILE (or an array named 'V' in DATA.npz)")
    return C, b, V


def _check_writable(path):
    """A ValueError naming --out, before the solve, where the file cannot be written (a missing or read-only
    folder, a path through a file, /proc): the folders are made and the file opened for appending (left as it was,
    or removed again when this made it)."""
    existed = os.path.exists(path)
    with _out_errors(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "ab"):
            pass
        if not existed:
            os.remove(path)


@contextlib.contextmanager
def _out_errors(path):
    """An OSError inside (writing --out, or checking that it can be) as a ValueError naming --out."""
    try:
        yield
    except OSError as error:
        raise ValueError(f"out: cannot write {path!r}: {error.strerror or error}") from None


def _write_vector(path, x):
    lower = path.lower()
    with _out_errors(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if lower.endswith(".npy"):
            np.save(path, x)
        elif lower.endswith((".txt", ".csv")):
            np.savetxt(path, x, delimiter=",", fmt="%.17g")
        else:
            raise ValueError(f"out: use a .npy, .txt or .csv file name, got {path!r}")


def _fit(args):
    from . import solve

    if not args.out.lower().endswith((".npy", ".txt", ".csv")):
        raise ValueError(f"out: use a .npy, .txt or .csv file name, got {args.out!r}")
    _check_writable(args.out)
    clock = time.perf_counter()
    C, b, V = _fit_inputs(args)
    shape = "×".join(map(str, np.shape(C))) if not hasattr(C, "nnz") else f"{C.shape[0]}×{C.shape[1]}, nnz = {C.nnz:,}"
    print(f"fastnewton fit: {args.model}, C {shape} from {args.data}, b of length {b.shape[0]}"
          f"{', V ' + '×'.join(map(str, np.shape(V))) if V is not None else ''} "
          f"(read in {time.perf_counter() - clock:.2f} s)")
    x0 = args.x0 if args.x0 in ("auto", "zeros") else _as_vector(_load_array(args.x0, "x0"))
    res = solve(C, b, args.model, V=V, l2=args.l2, hessian=args.hessian, tol=args.tol, max_iter=args.max_iter,
                n_threads=args.threads, x0=x0, seed=args.seed, verbose=True, continuation=args.continuation)
    _write_vector(args.out, res.x)
    print(_summary(res))
    print(f"wrote x (length {res.x.shape[0]}) to {args.out}")
    return 0 if res.converged else 1


# -- warmup ----------------------------------------------------------------------------------------
def _warmup(args):
    import warnings

    from . import _cache, make_problem, solve

    formats = ("csr", "dense")
    strategies = ("exact", "sketch", "pcg") if args.all else ("auto",)
    clock = time.perf_counter()
    print(f"compiling the kernels for {', '.join(args.models)} on {' and '.join(formats)} C "
          f"(hessian {', '.join(strategies)}); cache: {_cache.cache_dir()}", flush=True)
    for model in args.models:
        planted = make_problem(300, 5, model=model, m=3, seed=0)
        for fmt in formats:
            C = planted.C if fmt == "csr" else planted.C.toarray()
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for hessian in strategies:
                    for x0 in ("zeros", "auto"):
                        solve(C, planted.b, model, V=planted.V, x0=x0, hessian=hessian, max_iter=3, seed=0)
            print(f"  {model:>13} {fmt:>5}: {time.perf_counter() - started:6.2f} s", flush=True)
    print(f"done in {time.perf_counter() - clock:.1f} s; later processes load the kernels from the cache")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastnewton", formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,fit,warmup}")

    demo = sub.add_parser("demo", help="solve a planted sparse problem and print the per-iteration table",
                          description="Solve a planted CSR problem (make_problem) and print one row per iteration.")
    demo.add_argument("--n", type=positive_int, default=1_000_000, help="rows of C (default 1e6)")
    demo.add_argument("--d", type=positive_int, default=200, help="columns of C (default 200)")
    demo.add_argument("--nnz-per-row", type=positive_int, default=10, help="non-zeros per row (default 10)")
    demo.add_argument("--noise", type=real, default=0.0, help="relative noise on b (default 0)")
    _add_solver_options(demo, x0_default="zeros")
    demo.set_defaults(run=_demo)

    fit = sub.add_parser(
        "fit", help="solve your own problem read from files and write x",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read C, b (and V) from files, solve, print the per-iteration table and write x.\n\n"
                    "DATA is either a .npz archive holding arrays named C and b (and V; e.g. written by\n"
                    "numpy.savez('data.npz', C=C, b=b)), or a file holding C alone: Matrix Market (.mtx),\n"
                    "scipy.sparse.save_npz (.npz), .npy, or text (.txt/.csv); then give --b (and --V)\n"
                    "as .npy, .mtx, .npz, .txt or .csv files.",
        epilog="example: fastnewton fit C.mtx --b b.txt --model softmax --out x.npy")
    fit.add_argument("data", metavar="DATA", help="C (and optionally b, V): .npz, .mtx, .npy, .txt or .csv")
    fit.add_argument("--b", default=None, metavar="FILE", help="the target b (if not in DATA)")
    fit.add_argument("--V", default=None, metavar="FILE", help="V, n × m, for softmax_relu (if not in DATA)")
    fit.add_argument("--out", default="x.npy", metavar="FILE", help="where to write x: .npy, .txt or .csv (default x.npy)")
    _add_solver_options(fit, x0_default="auto", takes_file_x0=True)
    fit.set_defaults(run=_fit)

    warmup = sub.add_parser("warmup", help="compile and cache the kernels now (once per install)",
                            description="Compile the Numba kernels of small solves of every model on CSR and "
                                        "dense C, so the first real solve starts at once.")
    warmup.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models (default all)")
    warmup.add_argument("--all", action="store_true", help="also the sketch and pcg strategies (slower)")
    warmup.set_defaults(run=_warmup)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, MemoryError) as error:
        parser.error(f"{args.command}: {error}")
