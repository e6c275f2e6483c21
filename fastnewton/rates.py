"""Measured rates behind ``hessian="auto"``'s cost model (``fastnewton.hessian.strategy_seconds``).

Written by ``python bench/calibrate.py --write`` on the machine named below; re-run that
command (a few minutes, on a quiet machine) after the kernels change or on a new machine; on a
shared machine repeat ``--write --merge``, which keeps each rate's best figure (these are the
best of three runs). Rates are per second with the default thread count and BLAS on one thread
(as inside a solve); iteration figures are from noisy planted softmax solves from ``x0="auto"``
to tol = 1e-8.
"""

MACHINE = 'x86_64, 2 cores'

# Stored entries of C read per second by one pass (u = Cx, or the fused Cᵀ[q, U]).
DENSE_PASS_ENTRIES = 3.34e+09
CSR_PASS_ENTRIES = 2.02e+09
# Dense sandwich (SYRK): multiply-adds n·d²/2 per second.
DENSE_SANDWICH_FMA = 3.17e+10
# CSR sandwich: pair updates Σᵢ nnzᵢ(nnzᵢ + 1)/2 per second at d = 256 and at d = 1024 (the
# updates scatter into a d × d partial: slower once it leaves the cache); log-log in d between.
CSR_SANDWICH_PAIRS = 2.4e+09
CSR_SANDWICH_PAIRS_D1024 = 1.62e+09
# OSNAP embedding: (stored entry, slot) updates per second.
DENSE_EMBED_UPDATES = 3.29e+09
CSR_EMBED_UPDATES = 4.68e+08
# Sampled dense sandwich (its signed and |β| sums, ``sandwich_rows_and_absolute``): s·d²/2 per second.
DENSE_SAMPLED_SANDWICH_FMA = 2.38e+10
# C Z for the JL directions: (stored entry, column) multiply-adds per second.
DENSE_MATMAT_FMA = 1.51e+10
CSR_MATMAT_FMA = 6.96e+09
# QR of the m × d embedding (multiply-adds m·d²) and Cholesky of d × d (d³/3) per second.
QR_FMA = 3.9e+10
CHOLESKY_FMA = 1.79e+10
# Newton iterations of sketch and of pcg per exact Newton iteration, CG iterations per pcg step.
EXACT_ITERATIONS = 3
SKETCH_ITERATIONS_PER_EXACT = 2.17
PCG_ITERATIONS_PER_EXACT = 1.17
CG_ITERATIONS_PER_STEP = 4
# Leverage references refused (fresh scores drawn) per sketch / pcg iteration, from the default start
# and from any other (zeros, a user's x0: β moves far in the first iterations). Measured on the demo's
# problem (CSR 10⁶ × 200, 10 per row) from zeros: 6 refreshes in 17 sketch iterations.
REFERENCE_REFRESHES_PER_ITERATION = 0
REFERENCE_REFRESHES_FROM_OTHER_STARTS = 0.35
# Newton iterations of lagged per exact Newton iteration, CG iterations per lagged step.
LAGGED_ITERATIONS_PER_EXACT = 1
LAGGED_CG_ITERATIONS_PER_STEP = 2.75
# CG iterations per pcg step preconditioned by the start's fit matrix (dense C from x0="auto").
START_PRECONDITIONED_CG_ITERATIONS_PER_STEP = 3
