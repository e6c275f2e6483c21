"""Validation at the public boundary: every message names the argument and what was expected.

Internals trust what these functions return: C as a DenseMatrix or CSRMatrix,
vectors as contiguous float64 arrays. Inputs are never modified (a conversion
that must change an array works on a copy).
"""
import numbers

import numpy as np
import scipy.sparse as sp

from .matrix import CSRMatrix, DenseMatrix

MODELS = ("softmax", "relu_softmax", "softmax_relu")


def _real_dtype_or_raise(dtype, name):
    if dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued, got complex dtype {dtype}")
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a numeric (real) dtype, got {dtype}")


def _as_array(value, name):
    """np.asarray with NumPy's own complaints (ragged nested lists, …) re-raised naming the argument."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be array-like with a regular (non-ragged) shape: {exc}") from exc


def _finite_or_raise(values, name):
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must contain only finite values (found NaN or Inf)")


def as_input_matrix(C, name="C"):
    """C (dense array-like or any SciPy sparse format) → DenseMatrix or CSRMatrix."""
    if sp.issparse(C):
        return _as_csr(C, name)
    if isinstance(C, (str, bytes)) or C is None:
        raise TypeError(f"{name} must be a 2-D NumPy array or a SciPy sparse matrix, got {type(C).__name__}")
    array = _as_array(C, name)
    _real_dtype_or_raise(array.dtype, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n × d), got an array with {array.ndim} dimension(s)")
    _nonempty_or_raise(array.shape, name)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    # Numba reads rows contiguously; an F-ordered or strided C is copied once here.
    array = np.ascontiguousarray(array)
    _finite_or_raise(array, name)
    return DenseMatrix(array)


def _nonempty_or_raise(shape, name):
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {shape}")


def _as_csr(C, name):
    _real_dtype_or_raise(C.dtype, name)
    if C.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n × d), got {C.ndim} dimension(s)")
    _nonempty_or_raise(C.shape, name)
    # tocsr converts every other format on a copy; a CSR input is used as is (read only).
    csr = C.tocsr()
    data = csr.data
    if data.dtype not in (np.float32, np.float64):
        data = data.astype(np.float64)
    indptr, indices = csr.indptr, csr.indices
    if indptr.dtype != indices.dtype or indices.dtype not in (np.int32, np.int64):
        indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
    n, d = csr.shape
    if indptr.shape[0] != n + 1 or indptr[0] != 0 or indptr[-1] > indices.shape[0] or np.any(np.diff(indptr) < 0):
        raise ValueError(f"{name} has an invalid CSR index pointer")
    nnz = int(indptr[-1])
    if nnz and (indices[:nnz].min() < 0 or indices[:nnz].max() >= d):
        raise ValueError(f"{name} has column indices outside [0, {d})")
    _finite_or_raise(data[:nnz], name)
    return CSRMatrix(np.ascontiguousarray(indptr), np.ascontiguousarray(indices[:nnz]),
                     np.ascontiguousarray(data[:nnz]), (n, d))


def as_vector(v, name, length, length_hint=""):
    """A finite real 1-D vector of the given length, as contiguous float64."""
    if v is None or sp.issparse(v):
        raise TypeError(f"{name} must be a 1-D NumPy array of length {length}{length_hint}")
    array = _as_array(v, name)
    _real_dtype_or_raise(array.dtype, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {array.shape}")
    if array.shape[0] != length:
        raise ValueError(f"{name} must have length {length}{length_hint}, got {array.shape[0]}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    _finite_or_raise(array, name)
    return array


def check_model(model):
    if not isinstance(model, str) or model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(repr(m) for m in MODELS)}, got {model!r}")
    return model


def as_real_scalar(value, name, minimum=0.0):
    """A finite real number ≥ minimum (Python or NumPy scalar, or a 0-d array) as float."""
    if isinstance(value, (bool, np.bool_)) or not (
            isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.ndim == 0
                                                and value.dtype.kind in "iuf")):
        raise TypeError(f"{name} must be a real number ≥ {minimum:g}, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number ≥ {minimum:g}, got {value}")
    return value


def as_l2(l2):
    return as_real_scalar(l2, "l2")


def as_row_weights(row_weights, n):
    """None, a scalar ≥ 0 or a length-n vector ≥ 0 → length-n float64 vector w."""
    if row_weights is None:
        return np.zeros(n)
    if _as_array(row_weights, "row_weights").ndim == 0 and not isinstance(row_weights, (str, bytes)):
        if isinstance(row_weights, bool) or not isinstance(row_weights, numbers.Real):
            raise TypeError(f"row_weights must be a number or a 1-D array, got {type(row_weights).__name__}")
        value = float(row_weights)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"row_weights must be finite and ≥ 0, got {value}")
        return np.full(n, value)
    w = as_vector(row_weights, "row_weights", n, " (rows of C)")
    if np.any(w < 0):
        raise ValueError("row_weights must be ≥ 0 (found a negative weight)")
    return w


def as_value_matrix(V, model, n):
    """V for softmax_relu: n × m, dense or sparse → C-contiguous float64 dense (U needs it dense anyway)."""
    if model != "softmax_relu":
        if V is not None:
            raise ValueError(f"V is only used by model='softmax_relu'; got V with model={model!r}")
        return None
    if V is None:
        raise ValueError("V (the n × m value matrix) is required for model='softmax_relu'")
    if sp.issparse(V):
        _real_dtype_or_raise(V.dtype, "V")
        V = V.toarray()
    array = _as_array(V, "V")
    _real_dtype_or_raise(array.dtype, "V")
    if array.ndim != 2:
        raise ValueError(f"V must be 2-D (n × m), got an array with {array.ndim} dimension(s)")
    if array.shape[0] != n:
        raise ValueError(f"V must have n = {n} rows (rows of C), got {array.shape[0]}")
    if array.shape[1] == 0:
        raise ValueError("V must have at least one column (m ≥ 1)")
    array = np.ascontiguousarray(array, dtype=np.float64)
    _finite_or_raise(array, "V")
    return array


def as_positive_int(value, name, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer ≥ {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value}")
    return int(value)


def as_thread_count(n_threads):
    """None or an integer in [1, numba.config.NUMBA_NUM_THREADS] (Numba cannot start more)."""
    import numba

    n_threads = as_positive_int(n_threads, "n_threads", allow_none=True)
    limit = numba.config.NUMBA_NUM_THREADS
    if n_threads is not None and n_threads > limit:
        raise ValueError(f"n_threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n_threads}")
    return n_threads


def as_seed(seed):
    """None, an integer ≥ 0, a numpy SeedSequence or a numpy Generator (used as is, and advanced)."""
    if seed is None or isinstance(seed, (np.random.SeedSequence, np.random.Generator)):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None, an integer ≥ 0, a numpy SeedSequence or a numpy Generator, "
                        f"got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed}")
    return int(seed)


def as_positive_float(value, name, upper=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value <= 0 or (upper is not None and value >= upper):
        bound = f" and < {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be a positive number{bound}, got {value}")
    return value
