"""Peak extra memory of one Newton iteration, and the up-front check that it fits.

Per iteration, beyond C itself (8-byte floats; k = 2 for the softmax models, m + 2 for
``softmax_relu``; c_t ≤ 64 chunks of the transposed pass, c_s ≤ 64 of the sandwich):

    length-n work:      8·n·(k + 12)      two evaluations alive at once (current and new u, Q = [q, U], β),
                                          softmax buffer, C·Δx, trial u; CSR also keeps 8·n of row pair counts
    transposed pass:    8·c_t·d·(k + 1)   per-chunk partials of Cᵀ[q, U]
    Hessian (exact):    8·d²·(c_s + 3)    sandwich partials (capped at 256 MiB), H, H + μI, factor
    dense sandwich:     2·8·8192·d        one block of rows and its weighted copy
    sketch / pcg:       8·n·(JL_DIM + 14) + 8·d²·(c_s + 9) leverage scores, OSNAP tables, SB and its QR

Measured by ``python bench/memory.py`` (n = 10⁷, nnz = 10⁸, d = 64, C itself 1.18 GiB): exact
0.96 GiB peak RSS (formula 1.04 GiB), sketch 2.9 GiB (formula 3.0 GiB). The check below counts
the d²-terms, the ones that can exceed memory before anything is allocated (d = 10⁵ needs
80 GB per d × d matrix).
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


def iteration_bytes(n, d, k):
    """The formula above for one exact Newton iteration: length-n work and the d × d matrices (bytes)."""
    return 8 * n * (k + 13) + 8 * 9 * d * d


def check_iteration_fits(n, d, k):
    """Raise MemoryError before allocating when one Newton iteration's work arrays cannot fit in memory."""
    needed, available = iteration_bytes(n, d, k), available_bytes()
    if available is not None and needed > available:
        raise MemoryError(
            f"a Newton iteration with n = {n} rows and d = {d} columns needs about {needed / 2**30:.1f} GiB "
            f"beyond C itself, but only {available / 2**30:.1f} GiB of memory is available; use fewer rows "
            f"per machine (e.g. fastnewton.dask) or more memory")


def check_hessian_fits(d):
    """Raise MemoryError before allocating when a few d × d float64 matrices cannot fit in memory."""
    needed = 8 * 9 * d * d
    available = available_bytes()
    if available is not None and needed > available:
        raise MemoryError(
            f"a Newton iteration with d = {d} columns needs about {needed / 2**30:.1f} GiB for its d × d "
            f"Hessian matrices, but only {available / 2**30:.1f} GiB of memory is available; reduce d "
            f"(e.g. select or hash features) or use more memory")
