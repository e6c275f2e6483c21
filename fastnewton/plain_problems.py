"""``solve_many``'s plain problems: inputs already in the form ``Problem`` holds them, checked and described in bulk.

A problem of a softmax model (``softmax``, ``relu_softmax``) is plain when it has no row weights of its own, a
float64 target b of length n and a C that ``as_input_matrix`` would use as it is: a C-contiguous float64 array
or a canonical float64 CSR matrix with int32 or int64 indices (``_plain_parts``, one read of each attribute per
problem). What the compiled solve and ``auto``'s pricing read of a ``Problem`` is formed here for all of
them at once, in a few compiled and NumPy calls, instead of one ``Problem`` each (building them took ~11 ms of
the ~39 ms of Python in a solve_many of 1000 dense softmax problems, n 64–512, d 32–64; their CSR matrices'
``CSRMatrix`` and checks another ~19 ms):

- b's check and the model's facts: ``plain_target_facts`` (whether b is finite, validation's rule; b's
  extremes and ‖b‖² by ``target_summary``, the kernel ``Softmax.facts`` calls) and relu_softmax's floor
  (``with_floor``, as ``Softmax.complete_facts``);
- a CSR C's checks: its indptr by ``plain_csr_facts`` (validation's rule, ``indptr_fault``, read where it lies,
  as the compiled solve reads C's index arrays, int32 or int64), with the sandwich's work that its ``CSRMatrix``
  would form (``csr_row_pairs``); the entries indptr covers (column indices in [0, d), finite values), like a dense
  C's entries, where the compiled solve first reads them (``C_INVALID``), or by ``entries_valid`` for a C that it
  does not read in place;
- the shapes that ``auto`` prices (``shapes``).

A problem that fails a check is not kept: ``Problem`` then rejects it, and its error is the message. A kept
problem gets its ``Problem`` (``problem(k)``) only where one is needed: one left to ``solve``'s loop, or whose
compiled start falls back to Python.
"""
import ctypes
from functools import partial

import numpy as np
import scipy.sparse as sp

from .hessian import PricedShapes
from .kernels.small_newton import plain_csr_entries, plain_csr_facts, plain_target_facts
from .kernels.softmax import least_entry_at_or_above
from .matrix import DenseMatrix, dense_row_threshold
from .models.softmax import target_facts, with_floor
from .problem import Problem
from .validation import csr_matrix_of


_CSR_TYPES = (sp.csr_matrix, sp.csr_array)


def index_arrays_read_in_place(indptr, indices):
    """Whether a CSR C's index arrays are what the compiled solve reads where they lie (``int64_indices_at``): both
    int32 or both int64, C-contiguous."""
    return (indptr.dtype == indices.dtype and (indices.dtype == np.int32 or indices.dtype == np.int64)
            and indptr.flags.c_contiguous and indices.flags.c_contiguous)


def reads_in_place(C, b):
    """Whether the compiled solve of ``solve_many(problems)`` takes (C, b) as a plain problem (``_plain_parts``): C
    read where it lies, with no copy of its arrays."""
    return _plain_parts(C, b) is not None


def _plain_parts(C, b):
    """(n, d, C's values: the dense array or CSR data, CSR indptr, CSR indices) of a problem that is plain, else
    None (one read of each attribute: this runs once per problem of a batch).

    Plain: b a float64 vector of length n ≥ 1 (finiteness aside) and C either in the form Problem converts a dense
    C to (a C-contiguous float64 ndarray with n rows and at least one column) or a SciPy CSR matrix that
    ``as_input_matrix`` would use as it is: float64 values, int32 or int64 indices (both the same), contiguous 1-D
    arrays, n rows and at least one column, indptr of length n + 1, canonical (sorted, no duplicates: SciPy's own
    flag, kept on the matrix). A CSR C's indptr is checked in bulk (``plain_csr_facts``), its entries later
    (``PlainProblems.entries_valid``, or the compiled solve)."""
    if type(b) is not np.ndarray or b.dtype != np.float64 or b.ndim != 1:
        return None
    n = b.shape[0]
    if n == 0:
        return None
    if type(C) is np.ndarray:
        if C.ndim == 2 and C.dtype == np.float64 and C.flags.c_contiguous and C.shape[0] == n and C.shape[1] > 0:
            return n, C.shape[1], C, None, None
        return None
    if not isinstance(C, _CSR_TYPES):
        return None
    shape = C.shape
    data, indptr, indices = C.data, C.indptr, C.indices
    if (len(shape) == 2 and shape[0] == n and shape[1] > 0
            and type(data) is np.ndarray and type(indptr) is np.ndarray and type(indices) is np.ndarray
            and data.dtype == np.float64 and data.ndim == 1 and indptr.ndim == 1 and indices.ndim == 1
            and data.flags.c_contiguous and index_arrays_read_in_place(indptr, indices)
            and indptr.shape[0] == n + 1 and C.has_canonical_format):
        return n, shape[1], data, indptr, indices
    return None


def _address(array):
    """The address of a contiguous array's first element, as ``array.ctypes.data`` gives it: through a ctypes view
    of its buffer where it is writable and not empty (0.3 µs against ctypes.data's ~1 µs: a batch asks for up to
    three per problem), else by ctypes.data."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError, BufferError):
        return array.ctypes.data


def addresses_of(arrays):
    """The addresses of these contiguous arrays' first elements (``_address``), as an int64 array."""
    return np.fromiter(map(_address, arrays), np.int64, len(arrays))


def _offsets(lengths):
    """The count + 1 offsets of arrays of these lengths laid side by side (0 first)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


class PlainProblems:
    """The plain problems among solve_many's, those whose checks passed, in input order (module docstring; a CSR
    C's entries are checked later: ``entries_valid``).

    Arrays, one entry per problem: ``index`` (its position in the batch), ``n``, ``d``, ``nnz`` (stored
    entries), ``csr`` (C is CSR), ``values_at`` (the address of its dense C's entries, or of its CSR data),
    ``indptr_at`` / ``indices_at`` (CSR: the addresses of its index arrays, read in place) and ``index_bytes`` (CSR:
    their entries' size, 4 or 8; 8 for a dense C), ``sparse_pairs`` and ``long_rows`` (CSR: its sandwich's work, as
    ``CSRMatrix.sandwich_work``);
    ``b``, the targets side by side from ``offsets`` (count + 1); ``facts``, the model's facts of each target
    (``Softmax.facts``'s dicts)."""

    @classmethod
    def of(cls, items, weights_each):
        """Those of ``items`` ((C, b, V) each) with no V or row weights, a plain b and a plain C whose checks
        pass; None when there is none."""
        plain, parts = [], []
        for i, (C, b, V) in enumerate(items):
            if V is None and weights_each[i] is None:
                found = _plain_parts(C, b)
                if found is not None:
                    plain.append(i)
                    parts.append(found)
        return cls(items, plain, parts) if plain else None

    def __init__(self, items, plain, parts):
        """``plain``: the positions in ``items`` of the plain problems, ``parts`` their ``_plain_parts``."""
        count = len(plain)
        matrices = [items[i][0] for i in plain]
        targets = [items[i][1] for i in plain]
        rows, columns, values, indptrs, indices_each = zip(*parts)
        n = np.array(rows, dtype=np.int64)
        d = np.array(columns, dtype=np.int64)
        csr = np.fromiter((indptr is not None for indptr in indptrs), np.bool_, count)
        offsets = _offsets(n)
        b = np.concatenate(targets)
        finite = np.empty(count, dtype=np.bool_)
        summaries = np.empty((count, 4))
        plain_target_facts(b, offsets, finite, summaries)
        values_at = addresses_of(values)
        nnz = n * d
        sparse_pairs, long_rows = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
        indptr_at, indices_at = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
        index_bytes = np.full(count, 8, dtype=np.int64)
        valid = finite
        at = np.flatnonzero(csr)
        if at.size:
            at_list = at.tolist()
            # Index arrays read where they lie, int32 (SciPy's) or int64 (``int64_indices_at``).
            sparse_indptrs = [indptrs[k] for k in at_list]
            sparse_indices = [indices_each[k] for k in at_list]
            indptr_at[at] = addresses_of(sparse_indptrs)
            indices_at[at] = addresses_of(sparse_indices)
            index_bytes[at] = np.fromiter((array.itemsize for array in sparse_indptrs), np.int64, at.size)
            stored_indices = np.fromiter(map(len, sparse_indices), np.int64, at.size)
            stored_data = np.fromiter(map(len, [values[k] for k in at_list]), np.int64, at.size)
            thresholds = {width: dense_row_threshold(width) for width in set(d[at].tolist())}
            dense_from = np.array([thresholds[width] for width in d[at].tolist()], dtype=np.float64)
            sound = np.empty(at.size, dtype=np.bool_)
            facts = np.zeros((at.size, 3), dtype=np.int64)
            plain_csr_facts(indptr_at[at], index_bytes[at], n[at], stored_indices, stored_data, dense_from, sound,
                            facts)
            valid[at] &= sound
            nnz[at], sparse_pairs[at], long_rows[at] = facts.T
        kept = np.flatnonzero(valid)
        if kept.size < count:
            b = b[np.repeat(valid, n)]
        self.index = np.asarray(plain, dtype=np.int64)[kept]
        self._matrices = [matrices[k] for k in kept.tolist()]
        self._targets = [targets[k] for k in kept.tolist()]
        self.n, self.d, self.csr, self.nnz = n[kept], d[kept], csr[kept], nnz[kept]
        self.values_at, self.indptr_at, self.indices_at = values_at[kept], indptr_at[kept], indices_at[kept]
        self.index_bytes = index_bytes[kept]
        self.sparse_pairs, self.long_rows = sparse_pairs[kept], long_rows[kept]
        self.b, self.offsets = b, _offsets(self.n)
        self.facts = [with_floor(target_facts(*summary), partial(least_entry_at_or_above, b_k))
                      for summary, b_k in zip(summaries[kept].tolist(), self._targets)]

    def entries_valid(self, chosen):
        """Whether the CSR problems at positions ``chosen`` have stored entries that validation accepts (column
        indices in [0, d), finite values: ``plain_csr_entries``), for those the compiled solve does not check
        where it reads them (a C read as dense rows, or left to ``solve``'s loop): an array of bools."""
        valid = np.empty(len(chosen), dtype=np.bool_)
        plain_csr_entries(self.indices_at[chosen], self.values_at[chosen], self.nnz[chosen], self.d[chosen],
                          self.index_bytes[chosen], valid)
        return valid

    def __len__(self):
        return self.index.shape[0]

    def matrix(self, k):
        """Problem k's C as ``as_input_matrix`` gives it (a DenseMatrix or CSRMatrix)."""
        C = self._matrices[k]
        return csr_matrix_of(C.indptr, C.indices, C.data, C.shape) if self.csr[k] else DenseMatrix(C)

    def dense_rows(self, k):
        """Problem k's CSR C as dense float64 rows (``CSRMatrix.rows`` of every row: SciPy's ``toarray`` of the
        same canonical arrays, entries past indptr[-1] not read)."""
        return self._matrices[k].toarray()

    def entries(self, k):
        """Problem k's dense C (the caller's array)."""
        return self._matrices[k]

    def problem(self, k, model, l2, row_model):
        """Problem k's ``Problem`` (``Problem.from_checked``: its checks were made here; ``row_model``, a
        stateless model object of ``model`` to share)."""
        return Problem.from_checked(self.matrix(k), self._targets[k], model, l2, row_model)

    def shapes(self, model, l2, row_model):
        """``auto``'s ``PricedShapes`` of these problems: the sandwich's work as their matrices form it
        (``DenseMatrix`` / ``CSRMatrix.sandwich_work``: every dense row by SYRK; a CSR C's short rows by pair
        updates, its long rows by SYRK), the flags those of a Problem of the batch."""
        d = self.d
        dense_rows = np.where(self.csr, self.long_rows, self.n)
        work = np.column_stack([np.where(self.csr, self.sparse_pairs, 0), dense_rows * d * d / 2])
        return PricedShapes.of_columns(self.n, d, self.nnz, ~self.csr, work, (self.b, self.offsets),
                                       like=self.problem(0, model, l2, row_model))
