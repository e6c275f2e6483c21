"""Validation of ``fastnewton.dask.solve``'s inputs and their split into per-block pieces.

C must be a Dask array chunked by rows only, with known chunk sizes. n-long vectors
(b for ``softmax``/``relu_softmax``, ``row_weights``) and V's rows follow C's row
chunks: NumPy inputs are split on the driver, Dask inputs with other chunks are
rechunked (a cheap, documented move of a vector, never of C). Block contents are
checked on the workers as they arrive (``blocks.make_block``).
"""
import math

import numpy as np

from ..validation import as_array, check_real_dtype, as_row_weights, as_value_matrix, as_vector


def _dask_array():
    import dask.array

    return dask.array


def _unknown(chunks):
    return any(isinstance(c, float) and math.isnan(c) for axis in chunks for c in axis)


def check_row_partitioned(C):
    """(row chunk sizes, d) of a 2-D Dask array chunked by rows only."""
    da = _dask_array()
    if not isinstance(C, da.Array):
        raise TypeError(f"C must be a dask.array.Array chunked by rows (for NumPy or SciPy inputs use "
                        f"fastnewton.solve), got {type(C).__name__}")
    if C.ndim != 2:
        raise ValueError(f"C must be 2-D (n × d), got a Dask array with {C.ndim} dimension(s)")
    check_real_dtype(np.dtype(C.dtype), "C")
    if _unknown(C.chunks):
        raise ValueError("C has unknown (nan) chunk sizes; call C.compute_chunk_sizes() (or build it with "
                         "known chunks) before fastnewton.dask.solve")
    if C.numblocks[1] != 1:
        raise ValueError(f"C must be chunked by rows only (one chunk spanning all {C.shape[1]} columns), got "
                         f"{C.numblocks[1]} column chunks; use C.rechunk({{1: -1}})")
    if C.shape[0] == 0 or C.shape[1] == 0:
        raise ValueError(f"C must have at least one row and one column, got shape {C.shape}")
    return tuple(int(c) for c in C.chunks[0]), int(C.shape[1])


def _split(array, row_chunks):
    offsets = np.cumsum((0,) + row_chunks)
    return [array[offsets[p]:offsets[p + 1]] for p in range(len(row_chunks))]


def row_vector_blocks(v, name, row_chunks, hint=" (rows of C)"):
    """A length-n vector as one piece per row block (NumPy slices, or Dask blocks rechunked to C's rows)."""
    n = sum(row_chunks)
    da = _dask_array()
    if isinstance(v, da.Array):
        if v.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got a Dask array of shape {v.shape}")
        if _unknown(v.chunks):
            raise ValueError(f"{name} has unknown (nan) chunk sizes; call {name}.compute_chunk_sizes() first")
        if v.shape[0] != n:
            raise ValueError(f"{name} must have length {n}{hint}, got {v.shape[0]}")
        check_real_dtype(np.dtype(v.dtype), name)
        if tuple(v.chunks[0]) != row_chunks:
            v = v.rechunk((row_chunks,))
        return list(v.to_delayed())
    return _split(as_vector(v, name, n, hint), row_chunks)


def value_matrix_blocks(V, model, values, row_chunks):
    """V (n × m) of a model that uses ``values`` as row blocks following C's; None pieces for the others."""
    n = sum(row_chunks)
    da = _dask_array()
    if not isinstance(V, da.Array):
        V = as_value_matrix(V, model, n, values)
        return [None] * len(row_chunks) if V is None else _split(V, row_chunks), (None if V is None else V.shape[1])
    if not values:
        as_value_matrix(V, model, n, values)  # the error for a V that the model does not use
    if V.ndim != 2 or V.shape[0] != n:
        raise ValueError(f"V must be 2-D with n = {n} rows (rows of C), got shape {V.shape}")
    if _unknown(V.chunks):
        raise ValueError("V has unknown (nan) chunk sizes; call V.compute_chunk_sizes() first")
    if V.shape[1] == 0:
        raise ValueError("V must have at least one column (m ≥ 1)")
    check_real_dtype(np.dtype(V.dtype), "V")
    if tuple(V.chunks[0]) != row_chunks or V.numblocks[1] != 1:
        V = V.rechunk((row_chunks, -1))
    return list(V.to_delayed()[:, 0]), int(V.shape[1])


def target_vector(b, m):
    """The length-m b of a model with a value matrix (small): NumPy, or a Dask array computed once on the driver."""
    da = _dask_array()
    if isinstance(b, da.Array):
        if _unknown(b.chunks):
            raise ValueError("b has unknown (nan) chunk sizes; call b.compute_chunk_sizes() first")
        b = b.compute()
    return as_vector(b, "b", m, " (columns of V)")


def row_weight_blocks(row_weights, row_chunks):
    """None, a scalar ≥ 0 (sent as is) or a length-n vector ≥ 0 split like C's rows."""
    if row_weights is None:
        return [None] * len(row_chunks)
    if isinstance(row_weights, _dask_array().Array):
        return row_vector_blocks(row_weights, "row_weights", row_chunks)  # checked ≥ 0 on the workers
    if as_array(row_weights, "row_weights").ndim == 0:
        return [float(as_row_weights(row_weights, 1)[0])] * len(row_chunks)
    return _split(as_row_weights(row_weights, sum(row_chunks)), row_chunks)
