"""Measured rates behind ``hessian="auto"``'s cost model (``fastnewton.hessian.strategy_seconds``).

Written by ``python bench/calibrate.py --write`` on the machine named below; re-run that
command (a few minutes, on a quiet machine) after the kernels change or on a new machine; on a
shared machine repeat ``--write --merge``, which keeps each rate's best figure (these are the
best of three runs). Rates are per second with the default thread count and BLAS on one thread
(as inside a solve); iteration figures are from noisy planted softmax solves from ``x0="auto"``
(and, ``_FROM_OTHER_STARTS``, from zeros) to tol = 1e-8.
"""

MACHINE = 'x86_64, 2 cores'

# Stored entries of C read per second by one pass (u = Cx, or the fused Cᵀ[q, U]).
DENSE_PASS_ENTRIES = 1.51e+09
CSR_PASS_ENTRIES = 1.07e+09
# Dense Hessian-vector product (C·v and Cᵀ(β ⊙ Cv) in one read of C): entries of C per second at d = 256
# and at d = 32; log-log in d between.
DENSE_HESSIAN_VECTOR_ENTRIES = 2.01e+09
DENSE_HESSIAN_VECTOR_ENTRIES_D32 = 1.96e+09
# Dense sandwich (SYRK): multiply-adds n·d²/2 per second at d = 256 and at d = 32 (few multiply-adds
# per entry read: slower); log-log in d between.
DENSE_SANDWICH_FMA = 2e+10
DENSE_SANDWICH_FMA_D32 = 7.85e+09
# CSR sandwich: pair updates Σᵢ nnzᵢ(nnzᵢ + 1)/2 per second at d = 256 and at d = 1024 (the
# updates scatter into a d × d partial: slower once it leaves the cache); log-log in d between.
CSR_SANDWICH_PAIRS = 1.49e+09
CSR_SANDWICH_PAIRS_D1024 = 1.28e+09
# CSR sandwich: rows per second of each row's fixed work beyond its pairs (with the pair rate, from a long-row
# and a short-row matrix at d = 256).
CSR_SANDWICH_ROWS = 1.41e+08
# CSR Hessian-vector product (C·v and Cᵀ(β ⊙ Cv) in one read of C): stored entries per second, and rows per
# second of each row's fixed work beyond its entries (the same two matrices).
CSR_HESSIAN_VECTOR_ENTRIES = 1.01e+09
CSR_HESSIAN_VECTOR_ROWS = 4.9e+08
# OSNAP embedding: (stored entry, slot) updates per second.
DENSE_EMBED_UPDATES = 1.63e+09
CSR_EMBED_UPDATES = 1.92e+08
# Sampled dense sandwich (its signed and |β| sums, ``sandwich_rows_and_absolute``): s·d²/2 per second.
DENSE_SAMPLED_SANDWICH_FMA = 2.41e+10
# C Z for the JL directions: (stored entry, column) multiply-adds per second.
DENSE_MATMAT_FMA = 9.34e+09
CSR_MATMAT_FMA = 3.85e+09
# QR of the m × d embedding (multiply-adds m·d²) and Cholesky of d × d (d³/3) per second.
QR_FMA = 2.21e+10
CHOLESKY_FMA = 1.07e+10
# Rows per second of an iteration's work per row beyond its passes (the model's row stages at the
# line search's trial and at the new point, β), from exact solves of a short-row CSR problem, and
# iterations per second of a tiny problem (an iteration's fixed cost: Python control, small kernels).
ITERATION_ROWS = 7.03e+07
TINY_ITERATIONS = 1.05e+03
# Rows per second of a sketched iteration's draw (scores |βᵢ|gᵢ and the Poisson sample over every row).
SAMPLING_ROWS = 7.6e+07
# Newton iterations of exact, of sketch and of pcg per exact Newton iteration, CG iterations per pcg step.
EXACT_ITERATIONS = 2.75
SKETCH_ITERATIONS_PER_EXACT = 2.25
PCG_ITERATIONS_PER_EXACT = 1.08
CG_ITERATIONS_PER_STEP = 2.75
# Leverage references refused (fresh scores drawn) per sketch / pcg iteration, from the default start
# and from any other (zeros, a user's x0: β moves far in the first iterations); the iteration figures
# are means over calibrate.py's four shapes (dense at d = 64 and 256, CSR with long and with short rows),
# ITERATION_SEEDS targets each.
REFERENCE_REFRESHES_PER_ITERATION = 0.0645
REFERENCE_REFRESHES_FROM_OTHER_STARTS = 0.143
# Newton iterations of lagged per exact Newton iteration, CG iterations per lagged step.
LAGGED_ITERATIONS_PER_EXACT = 1
LAGGED_CG_ITERATIONS_PER_STEP = 1.88
# CG iterations per pcg step preconditioned by the start's fit matrix (dense C from x0="auto").
START_PRECONDITIONED_CG_ITERATIONS_PER_STEP = 2.83
# The iteration figures above from zeros, priced for any start but x0="auto" (zeros, a user's x0). Added
# later than the rest (a ``--write --merge`` run whose other figures were not kept: with the default start's
# figures over 3 targets per shape auto priced pcg below lagged at dense 4096 × 64, where lagged is faster).
EXACT_ITERATIONS_FROM_OTHER_STARTS = 8.25
SKETCH_ITERATIONS_PER_EXACT_FROM_OTHER_STARTS = 1.4
PCG_ITERATIONS_PER_EXACT_FROM_OTHER_STARTS = 1.03
CG_ITERATIONS_PER_STEP_FROM_OTHER_STARTS = 1.83
LAGGED_ITERATIONS_PER_EXACT_FROM_OTHER_STARTS = 1.06
LAGGED_CG_ITERATIONS_PER_STEP_FROM_OTHER_STARTS = 2
