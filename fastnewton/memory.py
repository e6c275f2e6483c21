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


def available_bytes():
    """Physical memory available now (Linux sysconf), or None where it cannot be read."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_hessian_fits(d):
    """Raise MemoryError before allocating when a few d × d float64 matrices cannot fit in memory."""
    needed = 8 * 9 * d * d
    available = available_bytes()
    if available is not None and needed > available:
        raise MemoryError(
            f"a Newton iteration with d = {d} columns needs about {needed / 2**30:.1f} GiB for its d × d "
            f"Hessian matrices, but only {available / 2**30:.1f} GiB of memory is available; reduce d "
            f"(e.g. select or hash features) or use more memory")
