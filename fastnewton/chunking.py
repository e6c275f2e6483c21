"""Fixed row chunking for deterministic reductions.

Chunk sizes depend only on the problem's shape, never on the thread count, so every
chunked reduction in kernels/ returns the same bits with 1 or 64 threads.
"""

# At most this many chunks: enough to balance 16+ threads, few enough that the
# per-chunk d × k partials of the transposed pass stay small.
MAX_CHUNKS = 64
MIN_CHUNK_ROWS = 4096
# The sandwich keeps a d × d partial per chunk; cap their total at 256 MiB.
SANDWICH_PARTIAL_BYTES = 256 * 2**20


def _ceil_div(a, b):
    return -(-a // b)


def chunk_rows(n):
    """Rows per chunk for length-n reductions and the transposed pass."""
    return max(MIN_CHUNK_ROWS, _ceil_div(n, MAX_CHUNKS))


def sandwich_chunk_rows(n, d):
    """Rows per chunk for the sparse sandwich (bounded memory for the d × d partials)."""
    max_chunks = max(1, min(MAX_CHUNKS, SANDWICH_PARTIAL_BYTES // (8 * d * d)))
    return max(1024, _ceil_div(n, max_chunks))
