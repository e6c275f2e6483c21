"""Fixed row chunking for deterministic reductions.

Chunk sizes depend only on the problem's shape, never on the thread count, so every
chunked reduction in kernels/ returns the same bits with 1 or 64 threads.
"""
from .kernels.sandwich import ROW_PAD

# At most this many chunks: enough to balance 16+ threads, few enough that the
# per-chunk d × k partials of the transposed pass stay small.
MAX_CHUNKS = 64
MIN_CHUNK_ROWS = 4096
# The sandwich keeps a d × d partial per chunk (rows padded by ROW_PAD); cap their total at 256 MiB.
SANDWICH_PARTIAL_BYTES = 256 * 2**20
# ... and gives each chunk at least this many pair updates per partial entry, so zeroing and
# summing the d × d partials costs a few percent of the pairs' work (without this bound a
# d = 1024 sandwich spent 0.3 s on partials for 5·10⁶ pair updates). A partial costs about two
# pair updates per entry (zeroed, brought into cache, summed): CSR 10⁶ × 256, 10 per row, took
# 53.2 ms with 50 chunks (16 pairs per entry) against 48.6 ms with 16 (one thread, same run).
MIN_PAIRS_PER_PARTIAL_ENTRY = 32
# Below that bound one chunk would run the whole sandwich on one thread. A sandwich of at least
# PARALLEL_CHUNKS · MIN_CHUNK_ROWS rows and MIN_PAIRS_PER_PARALLEL_PARTIAL_ENTRY pair updates per entry of
# a partial gets PARALLEL_CHUNKS chunks all the same: on one thread the second partial costs
# ~2 pair updates per entry more (~1/8 of the work at the bound), on two it nearly halves the pairs'
# time. Measured (2-core AMD EPYC, best of 3 rounds of 5, ms; one chunk → two on 2 threads): CSR
# 10⁶ × 1024 with 5 per row (14 pairs per entry) 41.4 → 26.7, 10⁶ × 512 with 5 (57) 26.7 → 22.5, 10⁵ × 256
# with 5 (23) 3.7 → 2.0; on one thread two chunks took 45.7, 28.5 and 3.7 (one: 51.4, 36.0, 3.6).
PARALLEL_CHUNKS = 2
MIN_PAIRS_PER_PARALLEL_PARTIAL_ENTRY = 8


def _ceil_div(a, b):
    return -(-a // b)


def chunk_rows(n):
    """Rows per chunk for length-n reductions and the transposed pass."""
    return max(MIN_CHUNK_ROWS, _ceil_div(n, MAX_CHUNKS))


def sandwich_chunk_rows(n, d, pair_work):
    """Rows per chunk for the sparse sandwich of n rows holding ``pair_work`` = Σᵢ nnzᵢ(nnzᵢ+1)/2 pair updates.

    As many chunks (up to MAX_CHUNKS) as memory for the d × d partials and enough work
    per partial allow (at least PARALLEL_CHUNKS where the work is enough for two threads), rounded down to a
    power of two: the equal chunks then split evenly over
    1, 2, 4, … threads (3 chunks on 2 threads would take as long as 4). A function of
    (n, d, pair_work) only, never of the thread count.
    """
    by_memory = SANDWICH_PARTIAL_BYTES // (8 * d * (d + ROW_PAD))
    by_work = pair_work // (MIN_PAIRS_PER_PARTIAL_ENTRY * d * d)
    chunks = max(1, min(MAX_CHUNKS, by_memory, by_work))
    if (chunks < PARALLEL_CHUNKS and n >= PARALLEL_CHUNKS * MIN_CHUNK_ROWS
            and pair_work >= MIN_PAIRS_PER_PARALLEL_PARTIAL_ENTRY * d * d):
        chunks = max(1, min(PARALLEL_CHUNKS, by_memory))
    return max(1, _ceil_div(n, 1 << (chunks.bit_length() - 1)))
