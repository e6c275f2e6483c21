"""Validation at the public boundary: every message names the argument and what was expected.

Internals trust what these functions return: C as a DenseMatrix or CSRMatrix,
vectors as contiguous float64 arrays. Inputs are never modified (a conversion
that must change an array works on a copy).
"""
import numbers

import numpy as np
import scipy.sparse as sp

from .kernels.csr import INDPTR_OVERRUNS, INDPTR_UNORDERED, compressed_index_facts, indptr_fault
from .matrix import CSRMatrix, DenseMatrix
from .reductions import all_finite
from . import models


def check_real_dtype(dtype, name):
    if dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued, got complex dtype {dtype}")
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a numeric (real) dtype, got {dtype}")


def as_array(value, name):
    """np.asarray with NumPy's own complaints (ragged nested lists, …) re-raised naming the argument.

    Masked arrays are not honoured: one with masked entries is rejected (silently using the values
    under the mask would be wrong), one without is used as its data. Extension arrays (e.g. pandas
    ``Float64``) that NumPy sees as objects are converted through their ``to_numpy``, missing values
    becoming NaN (then rejected as non-finite)."""
    if isinstance(value, np.ma.MaskedArray):
        if np.ma.is_masked(value):
            raise ValueError(f"{name} is a masked array with masked entries; masks are not supported: fill them "
                             f"(e.g. {name}.filled(0.0)) or drop the masked rows")
        value = np.ma.getdata(value)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be array-like with a regular (non-ragged) shape: {exc}") from exc
    if array.dtype == object and hasattr(value, "to_numpy"):
        try:
            array = np.asarray(value.to_numpy(dtype=np.float64, na_value=np.nan))
        except (ValueError, TypeError):
            pass  # not numeric: the dtype check that follows names the argument
    return array


def _finite_or_raise(values, name):
    if not all_finite(values):
        raise ValueError(f"{name} must contain only finite values (found NaN or Inf)")


# From this many entries a dense C is checked by its column squares, which the solve needs anyway (its column
# scale ‖C_j‖): one parallel pass that is kept (``DenseMatrix.column_squares``) instead of a sum of its own
# (dense 10⁵ × 256: 6.0 ms for C.sum(), 5.5 ms for the squares). Smaller C keeps the sum, whose call costs
# ~1 µs against the parallel kernel's launch (solve_many validates thousands of small problems).
COLUMN_SQUARES_CHECK_ENTRIES = 2**18


def _matrix_finite_or_raise(matrix, values, name):
    """ValueError naming C when C (``values``: its dense array or its stored CSR entries) has a NaN or Inf
    entry (as ``_finite_or_raise``)."""
    # CSR: the serial squares (1.0 ms at 2·10⁶ entries) against data.sum() (~0.4 ms), which they spare.
    if matrix.nnz >= COLUMN_SQUARES_CHECK_ENTRIES:
        _squares_finite_or_raise(matrix.column_squares(), values, name)
    else:
        _finite_or_raise(values, name)


def _squares_finite_or_raise(column_squares, values, name):
    # A NaN or Inf entry makes its column's sum of squares NaN or Inf; finite squares clear every entry.
    # Non-finite squares from finite entries (|C_ij| ≳ 1e154 overflows its square) go to the plain check.
    if not np.isfinite(column_squares).all():
        _finite_or_raise(values, name)


def as_input_matrix(C, name="C", check_on_first_pass=False):
    """C (dense array-like or any SciPy sparse format) → DenseMatrix or CSRMatrix.

    ``check_on_first_pass`` (``fastnewton.solve``): a dense C of at least COLUMN_SQUARES_CHECK_ENTRIES
    entries has them checked by the column squares that its first transposed pass forms too, before any
    result read from C is returned (``DenseMatrix.check_on_first_pass``), instead of by a pass now."""
    if sp.issparse(C):
        return _as_csr(C, name)
    if isinstance(C, (str, bytes)) or C is None:
        raise TypeError(f"{name} must be a 2-D NumPy array or a SciPy sparse matrix, got {type(C).__name__}")
    array = as_array(C, name)
    check_real_dtype(array.dtype, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n × d), got an array with {array.ndim} dimension(s)")
    _nonempty_or_raise(array.shape, name)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    # Numba reads rows contiguously; an F-ordered or strided C is copied once here.
    matrix = DenseMatrix(np.ascontiguousarray(array))
    if check_on_first_pass and matrix.nnz >= COLUMN_SQUARES_CHECK_ENTRIES:
        matrix.check_on_first_pass(lambda column_squares: _squares_finite_or_raise(column_squares, matrix.array, name))
    else:
        _matrix_finite_or_raise(matrix, matrix.array, name)
    return matrix


def _nonempty_or_raise(shape, name):
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {shape}")


def _index_array(value, name, what):
    """A 1-D integer index array of a sparse matrix (checked before anything reads it)."""
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"{name} is a corrupt sparse matrix: its {what} must be a 1-D integer array, "
                         f"got shape {array.shape} and dtype {array.dtype}")
    return array


def _data_array(value, name, ndim=1):
    data = np.asarray(value)
    if data.ndim != ndim:
        raise ValueError(f"{name} is a corrupt sparse matrix: its data must be {ndim}-D, got shape {data.shape}")
    check_real_dtype(data.dtype, name)
    return data


def _in_range_or_raise(index, bound, name, what):
    if index.size:
        _extremes_in_range_or_raise(index.min(), index.max(), bound, name, what)


def _extremes_in_range_or_raise(least, largest, bound, name, what):
    """ValueError naming the argument when the least or largest index lies outside [0, bound)."""
    if least < 0 or largest >= bound:
        raise ValueError(f"{name} is a corrupt sparse matrix: its {what} must lie in [0, {bound}), "
                         f"found {int(least)}..{int(largest)}")


def _check_compressed(indptr, indices, data_length, major, minor, name, fmt, minor_name):
    """CSR/CSC/BSR arrays: indptr of length major + 1, from 0, non-decreasing, ending within
    indices and data, and the indices it covers in [0, minor). Returns whether every major slice's indices
    were found strictly increasing (checked from INDEX_FACTS_ENTRIES stored entries on; False below, unchecked)."""
    indptr = _index_array(indptr, name, f"{fmt} index pointer (indptr)")
    indices = _index_array(indices, name, f"{fmt} indices")
    if indptr.shape[0] != major + 1:
        raise ValueError(f"{name} is a corrupt sparse matrix: its {fmt} indptr must have length {major + 1}, "
                         f"got {indptr.shape[0]}")
    # The compiled rule reads int32 or int64 (an index pointer of another integer type is checked as int64).
    fault = indptr_fault(indptr if indptr.dtype in (np.int32, np.int64) else indptr.astype(np.int64),
                         indices.shape[0], data_length)
    if fault == INDPTR_UNORDERED:
        raise ValueError(f"{name} is a corrupt sparse matrix: its {fmt} indptr must start at 0 and never decrease")
    stored = int(indptr[-1])
    if fault == INDPTR_OVERRUNS:
        raise ValueError(f"{name} is a corrupt sparse matrix: its {fmt} indptr[-1] = {stored} exceeds the "
                         f"{indices.shape[0]} stored indices or the {data_length} stored values")
    if stored < INDEX_FACTS_ENTRIES or indptr.dtype != indices.dtype or indices.dtype not in (np.int32, np.int64):
        _in_range_or_raise(indices[:stored], minor, name, f"{fmt} {minor_name} indices")
        return False
    least, largest, strictly_increasing = index_facts(indptr, indices)
    _extremes_in_range_or_raise(least, largest, minor, name, f"{fmt} {minor_name} indices")
    return strictly_increasing


# From this many stored entries the indices are checked by one parallel compiled read (``index_facts``), which
# also tells whether every row's columns increase strictly; below it NumPy's min and max, whose calls cost
# less than a parallel kernel's launch (solve_many checks thousands of small matrices).
INDEX_FACTS_ENTRIES = 2**16
# ``index_facts`` reads the slices in this many fixed chunks (more than threads, for balance).
INDEX_FACTS_CHUNKS = 64


def index_facts(indptr, indices):
    """(least index, largest index, whether every major slice's indices increase strictly) of a compressed
    sparse matrix with checked indptr and int32/int64 indptr and indices of one dtype
    (``compressed_index_facts``: one parallel read of the indices, ~0.4 ms for 2·10⁶ entries on 2 threads
    against 0.3 ms for NumPy's min and max and 2.5 ms for SciPy's serial check of the canonical format)."""
    slices = indptr.shape[0] - 1
    per_chunk = max(1, -(-slices // INDEX_FACTS_CHUNKS))
    out = np.empty((-(-slices // per_chunk) if slices else 1, 3), dtype=np.int64)
    compressed_index_facts(indptr, indices, per_chunk, out)
    return int(out[:, 0].min()), int(out[:, 1].max()), not out[:, 2].any()


def _check_coordinates(coords, data, shape, name):
    """COO arrays: one integer index array per axis, each as long as data and within the shape."""
    for axis, (index, what) in enumerate(zip(coords, ("row", "column"))):
        index = _index_array(index, name, f"COO {what} indices")
        if index.shape[0] != data.shape[0]:
            raise ValueError(f"{name} is a corrupt sparse matrix: its COO {what} indices have length "
                             f"{index.shape[0]}, but data has length {data.shape[0]}")
        _in_range_or_raise(index, shape[axis], name, f"COO {what} indices")


def _check_lil_rows(C, name):
    """LIL: one column list per row, each as long as its value list (SciPy's compiled tocoo reads
    the values by the column lists' lengths, past the end of a shorter value list)."""
    if len(C.rows) != C.shape[0] or len(C.data) != C.shape[0]:
        raise ValueError(f"{name} is a corrupt LIL sparse matrix: it must hold {C.shape[0]} row lists, "
                         f"got {len(C.rows)} column lists and {len(C.data)} value lists")
    for i, (columns, values) in enumerate(zip(C.rows, C.data)):
        if len(columns) != len(values):
            raise ValueError(f"{name} is a corrupt LIL sparse matrix: row {i} has {len(columns)} column "
                             f"indices but {len(values)} values")


def _check_sparse_arrays(C, name):
    """Check a SciPy sparse matrix's raw arrays before SciPy converts them or a kernel reads them.

    SciPy checks them when a matrix is built, but not after its attributes are reassigned or
    edited in place, and its compiled conversions (tocsr) then read out of bounds. Returns (C in a form
    whose conversion to CSR is safe: LIL and DOK become COO first, then are checked; whether C is CSR whose
    every row's columns were found strictly increasing here, i.e. in canonical format: ``index_facts``)."""
    n, d = C.shape
    fmt = C.format
    if fmt in ("csr", "csc"):
        data = _data_array(C.data, name)
        major, minor = (n, d) if fmt == "csr" else (d, n)
        increasing = _check_compressed(C.indptr, C.indices, data.shape[0], major, minor, name, fmt.upper(),
                                       "column" if fmt == "csr" else "row")
        if not all(array.dtype in (np.int32, np.int64) for array in (C.indptr, C.indices)):
            # Other integer index types (uint64, int16, …; their values checked above) become int64 on a new
            # matrix: SciPy's own methods (the canonical-format test, tocsr) refuse some of them, e.g. uint64.
            C = type(C)((C.data, C.indices.astype(np.int64), C.indptr.astype(np.int64)), shape=C.shape)
        return C, fmt == "csr" and increasing
    elif fmt == "bsr":
        data = _data_array(C.data, name, ndim=3)
        R, K = data.shape[1:]
        if R == 0 or K == 0 or n % R or d % K:
            raise ValueError(f"{name} is a corrupt sparse matrix: its BSR blocks of shape {(R, K)} do not tile "
                             f"its shape {(n, d)}")
        _check_compressed(C.indptr, C.indices, data.shape[0], n // R, d // K, name, "BSR", "block column")
    elif fmt == "dia":
        data = _data_array(C.data, name, ndim=2)
        offsets = _index_array(C.offsets, name, "DIA offsets")
        if offsets.shape[0] != data.shape[0]:
            raise ValueError(f"{name} is a corrupt sparse matrix: it has {offsets.shape[0]} DIA offsets for "
                             f"{data.shape[0]} diagonals")
        # SciPy converts offsets to its (possibly 32-bit) index type; outside (−n, d) they would wrap.
        if offsets.size and (offsets.min() <= -n or offsets.max() >= d):
            raise ValueError(f"{name} is a corrupt sparse matrix: its DIA offsets must lie in ({-n}, {d})")
    elif fmt in ("lil", "dok"):
        if fmt == "lil":
            _check_lil_rows(C, name)
        try:
            coo = C.tocoo()
        except (ValueError, TypeError, IndexError, OverflowError) as exc:
            raise ValueError(f"{name} is a corrupt {fmt.upper()} sparse matrix: {exc}") from exc
        return _check_sparse_arrays(coo, name)
    elif fmt == "coo":
        data = _data_array(C.data, name)
        coords = C.coords if hasattr(C, "coords") else (C.row, C.col)
        if len(coords) != 2:
            raise ValueError(f"{name} is a corrupt sparse matrix: a 2-D COO matrix needs 2 index arrays, "
                             f"got {len(coords)}")
        _check_coordinates(coords, data, (n, d), name)
    else:
        raise TypeError(f"{name} has an unsupported sparse format {fmt!r}")
    return C, False


def _as_csr(C, name):
    check_real_dtype(C.dtype, name)
    if C.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n × d), got {C.ndim} dimension(s)")
    _nonempty_or_raise(C.shape, name)
    C, rows_increasing = _check_sparse_arrays(C, name)
    # tocsr converts every other format on a copy; a CSR input is used as is (read only).
    csr = C.tocsr()
    # Rows found strictly increasing by the index check are canonical: SciPy's own (serial) test of the format,
    # which it keeps in a flag that can be stale, is asked only of the others.
    if not rows_increasing and not csr.has_canonical_format:
        # Duplicates would cost the sandwich O(nnzᵢ²) per row for entries that add up to one:
        # sum them once, on a copy (the caller's matrix is never modified).
        csr = csr.copy() if csr is C else csr
        csr.sum_duplicates()
    data = csr.data
    if data.dtype not in (np.float32, np.float64):
        data = data.astype(np.float64)
    indptr, indices = csr.indptr, csr.indices
    # Both are int32 or int64 here (``_check_sparse_arrays`` made other index types int64; SciPy's conversions give
    # those two): an int32 indptr beside int64 indices (or the reverse) becomes int64, the kernels' one type.
    if indptr.dtype != indices.dtype:
        indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
    matrix = csr_matrix_of(indptr, indices, data, csr.shape, rows_increasing=rows_increasing)
    _matrix_finite_or_raise(matrix, matrix.data, name)
    return matrix


def csr_matrix_of(indptr, indices, data, shape, rows_increasing=False):
    """The ``CSRMatrix`` of checked CSR arrays (int32/int64 indices of one type, float32/float64 data): indices
    and data cut to the indptr[-1] stored entries, contiguous (a view where they already are).
    ``rows_increasing``: every row's columns were checked to increase strictly (``CSRMatrix``)."""
    nnz = int(indptr[-1])
    return CSRMatrix(np.ascontiguousarray(indptr), np.ascontiguousarray(indices[:nnz]),
                     np.ascontiguousarray(data[:nnz]), shape, rows_increasing=rows_increasing)


def as_vector(v, name, length, length_hint=""):
    """A finite real 1-D vector of the given length, as contiguous float64."""
    if v is None or sp.issparse(v):
        raise TypeError(f"{name} must be a 1-D NumPy array of length {length}{length_hint}")
    array = as_array(v, name)
    check_real_dtype(array.dtype, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {array.shape}")
    if array.shape[0] != length:
        raise ValueError(f"{name} must have length {length}{length_hint}, got {array.shape[0]}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    _finite_or_raise(array, name)
    return array


def as_point(x, name, d):
    """A point x of a problem whose C has d columns (``as_vector``; its length named as C's columns)."""
    return as_vector(x, name, d, " (columns of C)")


def check_model(model):
    """A registered model name (``fastnewton.models.register_model``), else a ValueError listing them."""
    return models.check_model(model)


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
    if isinstance(row_weights, np.ndarray) and row_weights.ndim == 0 and row_weights.dtype.kind in "iuf":
        row_weights = row_weights.item()  # a 0-d array is its number (as for l2)
    if as_array(row_weights, "row_weights").ndim == 0 and not isinstance(row_weights, (str, bytes)):
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


def as_value_matrix(V, model, n, uses_values):
    """V of a model that ``uses_values`` (softmax_relu): n × m, dense or sparse → C-contiguous float64 dense."""
    if not uses_values:
        if V is not None:
            raise ValueError(f"V is only used by models with a value matrix (e.g. 'softmax_relu'); "
                             f"got V with model={model!r}")
        return None
    if V is None:
        raise ValueError(f"V (the n × m value matrix) is required for model={model!r}")
    if sp.issparse(V):
        check_real_dtype(V.dtype, "V")
        V = V.toarray()
    array = as_array(V, "V")
    check_real_dtype(array.dtype, "V")
    if array.ndim != 2:
        raise ValueError(f"V must be 2-D (n × m), got an array with {array.ndim} dimension(s)")
    if array.shape[0] != n:
        raise ValueError(f"V must have n = {n} rows (rows of C), got {array.shape[0]}")
    if array.shape[1] == 0:
        raise ValueError("V must have at least one column (m ≥ 1)")
    array = np.ascontiguousarray(array, dtype=np.float64)
    _finite_or_raise(array, "V")
    # The start forms VᵀV (n·max|V|² per entry) and the loss ½‖ReLU(Vᵀs) − b‖² (m·max|V|²): beyond
    # this V overflows float64 before any iteration (and LAPACK fails on the infinities).
    largest = float(np.max(np.abs(array)))
    if largest > 0.0 and largest * largest * max(array.shape) * array.shape[1] > np.finfo(np.float64).max / 16:
        raise ValueError(f"V's entries are too large for float64 arithmetic (largest |V_ij| = {largest:.3e}): "
                         f"VᵀV and the loss overflow; rescale V and b together (e.g. divide both by {largest:.3e})")
    return array


def as_positive_int(value, name, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer ≥ {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value}")
    return int(value)


def as_flag(value, name):
    """A True/False option as a bool (NumPy's bool too); anything else is a TypeError naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def as_switch(value, name):
    """An on/off option (``verbose``, ``progress``) as a bool: True/False, NumPy's bools, an integer (0 off, as
    ``verbose=0`` is often written) or None (off, as a wrapper forwarding its own default passes it); anything
    else (a string such as "no", an array) is a TypeError naming it (a string was taken as on, an array raised
    NumPy's "truth value … is ambiguous")."""
    if value is None or isinstance(value, (bool, np.bool_, numbers.Integral)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


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
