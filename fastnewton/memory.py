"""Peak extra memory of one Newton iteration, and the up-front check that it fits.

Beyond C itself, counted from the arrays the solver allocates (8-byte floats; n rows, d columns;
k = 2 for the softmax models, m + 2 for ``softmax_relu``). The problem holds 8·n·4 (b's own copy,
the row weights — zeros when none are given — and, for CSR, the row pair counts and the list of
rows). On top of that the peak is the largest of three moments:

    forming the Hessian:  one evaluation, 8·n·(k + 3) (u, the softmax vector, Q = [q, U], β), and
        exact:            8·d²·3 + partials      the sandwich, P S Pᵀ and their sum; the CSR
                                                 sandwich's per-chunk d × (d + 8) partials (as many
                                                 as ``sandwich_chunk_rows`` makes: at most 64, at
                                                 most 256 MiB; kept by the matrix from one Hessian
                                                 to the next, so counted in every moment below)
        sketch / pcg:     8·n·(JL_DIM + 3) + 8·d²·6   the JL projection of every row and the
                                                 leverage scores; the 4d × d embedding, its QR
                                                 factor and the sampled sandwich (an iteration
                                                 that refreshes its leverage reference, the
                                                 largest; the others skip the projection)
    the step:             one evaluation and 8·d²·4   H, its column-scaled copy, H + μD² and the
                                                 Cholesky factor
    the new iterate:      8·n·(2k + 8) + 8·d²·3   two evaluations alive (current and new) with the
                                                 line search's C·Δx and trial u; H, its scaled copy
                                                 and the factor kept

``python bench/memory.py`` measures one iteration per strategy in a fresh process and prints this
count beside it (the README's Memory table). The check below counts the exact iteration (without
the partials, which are capped) before anything is allocated (d = 10⁵ needs 80 GB per d × d matrix).
"""
import os


def _read_int(path):
    try:
        with open(path) as handle:
            text = handle.read().split()[0]
        return None if text == "max" else int(text)
    except (OSError, ValueError, IndexError):
        return None


def available_bytes():
    """Memory this process can still allocate (Linux): the least of the physical memory available,
    the cgroup (v2) limit minus its usage, and the address-space limit (ulimit -v) minus this
    process's virtual size; None where none can be read."""
    candidates = []
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        candidates.append(os.sysconf("SC_AVPHYS_PAGES") * page)
    except (ValueError, OSError, AttributeError):
        page = None
    limit, usage = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and usage is not None:
        candidates.append(max(0, limit - usage))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        virtual_pages = _read_int("/proc/self/statm")
        if soft != resource.RLIM_INFINITY and virtual_pages is not None and page:
            candidates.append(max(0, soft - virtual_pages * page))
    except (ImportError, OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def iteration_terms(n, d, nnz, k=2, strategy="exact", eps=0.5, sketch_size=None, partials=True):
    """The count above (bytes), term by term, of the largest moment, for CSR C with ``nnz`` stored
    entries (dense: nnz = n·d); ``partials=False`` leaves out the sandwich's partials."""
    from .chunking import sandwich_chunk_rows
    from .kernels.sandwich import ROW_PAD
    from .sketching import JL_DIM, SAMPLE_CONSTANT, sample_size

    problem = {"the problem 8n·4": 8 * n * 4}
    one = {**problem, "one evaluation 8n(k+3)": 8 * n * (k + 3)}
    if strategy == "exact":
        hessian = {**one, "Hessian 8d²·3": 8 * d * d * 3}
        if partials:
            per_row = nnz / n
            chunks = -(-n // sandwich_chunk_rows(n, d, int(n * per_row * (per_row + 1) / 2)))
            # kept by the matrix between Hessians (CSRMatrix._sparse_sandwich): part of every moment
            problem = {**problem, "sandwich partials 8d(d+8)·chunks": chunks * 8 * d * (d + ROW_PAD)}
            one = {**problem, **one}
            hessian = {**problem, **hessian}
    else:
        hessian = {**one, "sketch 8n(JL+3) + 8d²·6": 8 * n * (JL_DIM + 3) + 8 * d * d * 6}
    step = {**one, "step 8d²·4": 8 * d * d * 4}
    new_iterate = {**problem, "two evaluations, line search 8n(2k+8)": 8 * n * (2 * k + 8),
                   "H, scaled H, factor 8d²·3": 8 * d * d * 3}
    return max(hessian, step, new_iterate, key=lambda terms: sum(terms.values()))


def iteration_bytes(n, d, k):
    """The count above for one exact Newton iteration, without the sandwich's partials (bytes)."""
    return sum(iteration_terms(n, d, n, k, partials=False).values())


# A need under this many bytes is not checked against ``available_bytes`` (its three file reads took
# ~37 µs, twice per solve: ~5% of a solve of a few hundred rows); a machine that cannot spare it fails
# at the allocation itself, also with a MemoryError.
CHECKED_FROM_BYTES = 2**26


def _available_short_of(needed):
    """The bytes available when ``needed`` is more than that (and at least CHECKED_FROM_BYTES), else None."""
    if needed < CHECKED_FROM_BYTES:
        return None
    available = available_bytes()
    return available if available is not None and needed > available else None


def check_iteration_fits(n, d, k):
    """Raise MemoryError before allocating when one Newton iteration's work arrays cannot fit in memory."""
    needed = iteration_bytes(n, d, k)
    available = _available_short_of(needed)
    if available is not None:
        raise MemoryError(
            f"a Newton iteration with n = {n} rows and d = {d} columns needs about {needed / 2**30:.1f} GiB "
            f"beyond C itself, but only {available / 2**30:.1f} GiB of memory is available; use fewer rows "
            f"per machine (e.g. fastnewton.dask) or more memory")


def check_hessian_fits(d):
    """Raise MemoryError before allocating when a few d × d float64 matrices cannot fit in memory."""
    needed = 8 * 4 * d * d
    available = _available_short_of(needed)
    if available is not None:
        raise MemoryError(
            f"a Newton iteration with d = {d} columns needs about {needed / 2**30:.1f} GiB for its d × d "
            f"Hessian matrices, but only {available / 2**30:.1f} GiB of memory is available; reduce d "
            f"(e.g. select or hash features) or use more memory")
