"""Time to tol = 1e-8 of fastnewton against scipy.optimize (and PyTorch, when installed), on noisy problems.

    python bench/peers.py                  # CSR n = 200 000, d = 100, 10 nnz/row, three models
    python bench/peers.py --quick          # small problems, a few seconds per model
    python bench/peers.py --dense --n 100000 --d 256 --models softmax --derivatives numpy

Two tables per problem:

  default   each method from its natural default start: fastnewton.solve as a user calls it
            (x0 = "auto", hessian = "auto", the start's cost included), scipy and PyTorch from zeros;
  same      every method from the SAME x0 (zeros, or --start auto: fastnewton's automatic start).

Methods:

  fastnewton.solve with hessian = auto (the default solve), exact, sketch, pcg;
  scipy.optimize.minimize with method = trust-exact (jac + hess), Newton-CG (jac + hessp),
  L-BFGS-B (jac), and scipy.optimize.least_squares (trf, tr_solver = lsmr, the residual
  h(Cx) − b with its Jacobian as a LinearOperator), given two sets of derivatives:
    numpy       the loss, gradient, Hessian and Hessian-vector product written in this file
                with vectorised NumPy/SciPy the way a user would (``NumpyDerivatives``: the
                model's formulas (README, "Derivatives"), Cᵀq by ``C.T @ q``, Cᵀ diag(β) C by a sparse/dense product,
                Hessian-vector products by two products with C);
    fastnewton  ``fastnewton.Problem``'s loss, grad, hessian, hessp (the Numba kernels; not
                for least_squares, which needs the residual's Jacobian).
  The two columns separate "a better algorithm" from "faster kernels".
  When PyTorch is installed (optional): a damped Newton with the closed-form Hessian
  (C.T @ (β[:, None] * C) + P S Pᵀ, Cholesky, Levenberg–Marquardt damping, Armijo backtracking)
  and torch.optim.LBFGS (strong Wolfe line search) with the closed-form gradient, in float64,
  for dense C and the softmax / relu_softmax models.

Criterion: ‖∇L(x)‖ ≤ tol·g_ref with g_ref = ‖∇L(0)‖, exactly fastnewton's (for relu_softmax,
whose gradient at 0 is exactly zero, ‖∇L(0)‖ is the one-sided derivative, i.e. the plain
softmax gradient at 0, as fastnewton does; ‖∇L(x0)‖ only if that is 0); it does not depend on
the start, so both tables hold every method to the same test. g_ref is computed once per
problem with the NumPy derivatives. scipy's own stopping tests are switched off (gtol = ftol =
xtol = 0; least_squares: ftol = gtol = None, xtol = 1e-15); instead every gradient evaluation
is checked by a wrapper, which raises as soon as the criterion holds, so scipy is timed to the
first point it evaluates that meets it (trial points of its line searches included; fastnewton
only checks accepted iterates; least_squares' gradient Jᵀr is formed for the check, one
transposed product per Jacobian evaluation). After every run the final point is checked
independently: the gradient recomputed with plain NumPy (``NumpyDerivatives.grad``), and
reached_tol means that check passed (to 1e-6 relative slack on tol for the last bits of the
two gradient codes). Every method is capped by --time-limit seconds of wall time and
--max-iter iterations; a method that does not reach tol is reported with the time it ran and
"reached_tol = False".

Scaling: scipy is handed L / g_ref (and ∇L / g_ref, ∇²L / g_ref), so its gradients start at
O(1). Its internal thresholds are absolute (Newton-CG treats a CG curvature pᵀHp ≤ 3·eps as
zero; L-BFGS-B and trust-exact compare gradients with fixed numbers) while the raw losses here
are ~1e-7 with gradients ~1e-6 (b ≈ 1/n): unscaled, Newton-CG ends after a few iterations
with "Optimization terminated successfully" far from tol. A user would rescale the same way;
the relative criterion does not change. --no-scipy-scaling shows the raw behaviour.

Starting points of the "same" table: x0 = 0 for softmax and softmax_relu (--start auto:
fastnewton's automatic start instead, the same array for every method). For relu_softmax x = 0 is a dead
stationary point (every ReLU inactive, ∇L = 0 exactly), so x0 is fastnewton's automatic start
(``solve(..., max_iter=0).x0``: a least-squares fit in log space) plus a seeded Gaussian
perturbation of relative size --relu-perturbation (‖δ‖ ≈ that × ‖x_auto‖), so that every method
has work to do. The same x0 array is handed to every method. (In the "default" table scipy
and PyTorch start relu_softmax from zeros too, the dead point, where they cannot move.) For
softmax_relu, fastnewton.solve runs its staged continuation (lifted surrogate along a ridge path,
then the real loss) from that x0, as it does for any x0 a user gives; every iteration counts.

Problems: ``fastnewton.make_problem(n, d, nnz_per_row, model, noise, scale, seed)`` (CSR, or dense
with --dense), with ridge l2. The default l2 is relative to the curvature scale of the data,
l2 = --l2-rel × ‖C‖_F² / (d n²) (about the mean diagonal of Cᵀ diag(β) C, since softmax
weights are ~1/n), because an absolute l2 such as 1e-6 dominates the whole Hessian once n is
large (for n = 2e5 the Hessian's diagonal is ~1e-6) and changes the problem; --l2 sets it
absolutely instead. Problem generation is not timed.

Timing: wall time of the whole user call (``fastnewton.solve``; ``Problem(...)`` construction
plus ``scipy.optimize.minimize`` for the fastnewton-derivative runs; ``minimize`` alone for
the NumPy runs). Numba kernels are compiled (or loaded from the disk cache), and PyTorch
initialised, by a warm-up on a tiny problem before any timing. Then, per problem, one untimed
default solve and one NumPy gradient on the full problem: the first large allocations of a
process take fresh pages from the OS (glibc then keeps freed blocks of that size), which cost
the first timed run alone ~15 ms on the CSR problem (fastnewton's default solve, which runs
first, measured 76 ms against 59 ms for the identical exact solve right after it), and the
first PyTorch call seconds; after the warm-up every method runs in the same warmed process,
C as hot in cache as after any other method's run. Each timed run starts after IDLE_BEFORE_RUN = 0.3 s
of idle (not with --quick), so that the BLAS threads of the run or warm-up before it have stopped
spinning on the cores (OpenBLAS spins its workers ~0.1 s after a call: fastnewton's default solve, dense
10⁵ × 256, took 143–158 ms right after a NumPy Cᵀb, 122–128 ms after the idle). With --repeat R every
method runs R times in a row and its fastest run is reported (the runs are deterministic: the same
iterates, only the time differs), which steadies the ratios on a shared machine.
--threads (default: all cores) goes to fastnewton (n_threads)
and to Numba and BLAS for every method (threadpoolctl), so the comparison is fair.

Output: two tables per problem on stdout (method, derivatives, reached tol, time to tol,
iterations and evaluations, final loss, final relative gradient norm, time / the default
fastnewton solve's time), then the headline ratio best peer with NumPy derivatives / default
fastnewton solve, with the targets (``TARGETS``: CSR, the best peer ≥ 40× from default starts
and ≥ 5× from the same start; dense, from default starts, scipy trust-exact ≥ 15× and the
PyTorch damped Newton ≥ 5×), and, when a peer that stopped on its own short of tol came within NEAR_MISS × tol of it
(Newton-CG ends where its CG curvature test pᵀHp ≤ 3·eps fires, ‖∇L‖ ~ 1.3·tol on the CSR
problem) sooner than the best peer reached tol, the ratio counting that peer as if it had
reached tol: a conservative bound on the headline; in --out (default bench/results/): peers.csv, peers_traces.csv (wall time and relative
gradient norm at every gradient evaluation) and peers.png (not with --no-plot: the best relative
gradient norm so far against wall time, log-log, one panel per problem, one line per method).
Every CSV row carries the versions, git commit, CPU and threads.
"""
import argparse
import contextlib
import csv
import gc
import os
import pathlib
import platform
import sys
import time
import warnings

import numba
import numpy as np
import scipy
import scipy.optimize
import scipy.sparse as sp
import scipy.sparse.linalg
import threadpoolctl
from threadpoolctl import threadpool_limits

import fastnewton

# The bench scripts' shared argument types live beside this file. Run as a script, bench/ is
# sys.path[0]; imported, or loaded from its path by tests/test_bench_peers.py, it may be on
# no path at all, so it is added (last, so it shadows nothing).
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from _args import (  # noqa: E402
    add_output_arguments, nonnegative_float, nonnegative_int, positive_float, positive_int, positive_seconds,
    thread_count)
from _report import caption, command_line, run_metadata, write_csv as write_stamped_csv  # noqa: E402

MODELS = ("softmax", "relu_softmax", "softmax_relu")
# "auto" is the default solve, the one the headline ratios are taken against.
FASTNEWTON_STRATEGIES = ("auto", "exact", "sketch", "pcg")
# scipy method → which derivatives it is given (None: gradient only; "jacobian": the residual's).
SCIPY_METHODS = {"trust-exact": "hess", "Newton-CG": "hessp", "L-BFGS-B": None, "least_squares": "jacobian"}
DERIVATIVES = ("numpy", "fastnewton")
TORCH_METHODS = ("torch Newton", "torch L-BFGS")
TABLES = ("default", "same")
# Targets for a peer's time / the default fastnewton solve's, per (table, format): (peer, its derivatives,
# ratio); peer None: the best peer with those derivatives.
TARGETS = {("default", "csr"): ((None, "numpy", 40.0),), ("same", "csr"): ((None, "numpy", 5.0),),
           ("default", "dense"): (("trust-exact", "numpy", 15.0), ("torch Newton", "torch", 5.0))}
# reached_tol allows the last bits by which NumPy's gradient and the method's own may differ.
RECHECK_SLACK = 1e-6
# Seconds of idle before every timed run (not with --quick): OpenBLAS keeps its worker threads spinning
# for ~0.1 s after a multi-threaded call (its THREAD_TIMEOUT, 2²⁸ cycles), on the cores the next run needs.
# Measured (dense 10⁵ × 256, 2 cores): fastnewton's default solve right after a NumPy Cᵀb took
# 143–158 ms, after 0.3 s idle 122–128 ms; in this script the first timed run follows the warm-up's
# NumPy gradient, and every run follows another method's.
IDLE_BEFORE_RUN = 0.3
# A peer that stopped on its own at ‖∇L‖ ≤ NEAR_MISS·tol·g_ref counts in the conservative headline.
NEAR_MISS = 10.0

CSV_FIELDS = ("table", "model", "format", "n", "d", "nnz", "m", "l2", "start", "tol", "g_ref", "threads", "method",
              "solver", "derivatives", "reached_tol", "time_s", "repeat", "n_iter", "n_fun", "n_grad", "n_hess", "final_loss",
              "final_rel_grad_norm", "ratio_to_fastnewton_default", "status")


# ---------------------------------------------------------------------------------------------
# The derivatives a user would write with NumPy/SciPy (the README's formulas)
# ---------------------------------------------------------------------------------------------
def softmax(z):
    """Max-shifted softmax of a vector."""
    e = np.exp(z - z.max())
    return e / e.sum()


class NumpyDerivatives:
    """L(x) = ½‖h(Cx) − b‖² + ½ Σᵢ wᵢ (Cx)ᵢ² + ½ λ‖x‖² and its derivatives in plain NumPy/SciPy.

    With u = Cx: ∇L = Cᵀq + λx and ∇²L = Cᵀ(diag(β) + U S Uᵀ)C + λI, where (README, "Derivatives")

    softmax / relu_softmax: mask m = 1 or 1[u > 0], s = softmax(m ⊙ u), r = s − b,
        v = s ⊙ (2s − b), c = ⟨s, r⟩, γ = ⟨3s − 2b, s⟩;
        q = m ⊙ (s ⊙ r − c s) + w ⊙ u, β = m ⊙ (v − c s) + w, U = [m ⊙ s, m ⊙ v],
        S = [[γ, −1], [−1, 0]];
    softmax_relu: s = softmax(u), y = Vᵀs, a = 1[y > 0], r = ReLU(y) − b, ρ = V(a ⊙ r),
        c = ⟨s, ρ⟩; q = s ⊙ ρ − c s + w ⊙ u, β = s ⊙ ρ − c s + w,
        U = [s, s ⊙ ρ, J V diag(a)] with J V = diag(s)(V − 1 yᵀ), S = blockdiag([[2c, −1], [−1, 0]], I).

    As a careful user would, the last point's u = Cx and model vectors are cached, so
    ``loss``/``grad``/``hessp`` at the same x share one product with C. C may be a dense
    array or a SciPy sparse matrix; products use ``C @`` and ``C.T @`` only.
    """

    def __init__(self, C, b, model="softmax", V=None, l2=0.0, row_weights=None):
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        self.C = C
        self.CT = C.T
        self.model = model
        self.b = np.asarray(b, dtype=np.float64)
        self.V = None if V is None else np.asarray(V, dtype=np.float64)
        self.l2 = float(l2)
        n = C.shape[0]
        self.w = np.zeros(n) if row_weights is None else np.broadcast_to(
            np.asarray(row_weights, dtype=np.float64), (n,))
        self._x = None

    def _at(self, x):
        """Evaluate u, the loss and q at x (cached for the last x)."""
        if self._x is not None and np.array_equal(x, self._x):
            return
        u = self.C @ x
        if self.model == "softmax_relu":
            s = softmax(u)
            y = self.V.T @ s
            active = y > 0.0
            r = np.maximum(y, 0.0) - self.b
            rho = self.V @ np.where(active, r, 0.0)
            c = s @ rho
            q = s * rho - c * s
            self._parts = {"s": s, "y": y, "active": active, "rho": rho, "c": c}
        else:
            mask = (u > 0.0).astype(np.float64) if self.model == "relu_softmax" else np.ones_like(u)
            s = softmax(mask * u)
            r = s - self.b
            c = s @ r
            q = mask * (s * r - c * s)
            self._parts = {"s": s, "mask": mask, "c": c}
        q = q + self.w * u
        self._loss = 0.5 * (r @ r) + 0.5 * ((self.w * u) @ u) + 0.5 * self.l2 * (x @ x)
        self._u, self._q, self._r, self._curvature_terms = u, q, r, None
        self._x = np.array(x, dtype=np.float64, copy=True)

    def _curvature(self):
        """(β, U, S) at the cached point."""
        if self._curvature_terms is None:
            parts, s = self._parts, self._parts["s"]
            if self.model == "softmax_relu":
                rho, c, a = parts["rho"], parts["c"], parts["active"]
                beta = s * rho - c * s + self.w
                JVa = s[:, None] * (self.V - parts["y"][None, :]) * a[None, :]
                U = np.column_stack([s, s * rho, JVa])
                S = np.eye(U.shape[1])
                S[:2, :2] = [[2.0 * c, -1.0], [-1.0, 0.0]]
            else:
                mask, c = parts["mask"], parts["c"]
                v = s * (2.0 * s - self.b)
                gamma = (3.0 * s - 2.0 * self.b) @ s
                beta = mask * (v - c * s) + self.w
                U = np.column_stack([mask * s, mask * v])
                S = np.array([[gamma, -1.0], [-1.0, 0.0]])
            self._curvature_terms = beta, U, S
        return self._curvature_terms

    def loss(self, x):
        """L(x)."""
        self._at(x)
        return float(self._loss)

    def grad(self, x):
        """∇L(x) = Cᵀq + λx."""
        self._at(x)
        return np.asarray(self.CT @ self._q).ravel() + self.l2 * x

    def hessian(self, x):
        """∇²L(x) = Cᵀ diag(β) C + (CᵀU) S (CᵀU)ᵀ + λI, dense d × d."""
        self._at(x)
        beta, U, S = self._curvature()
        if sp.issparse(self.C):
            sandwich = (self.CT @ (sp.diags(beta) @ self.C)).toarray()
        else:
            sandwich = self.CT @ (beta[:, None] * self.C)
        P = np.asarray(self.CT @ U)
        H = sandwich + P @ S @ P.T
        H[np.diag_indices_from(H)] += self.l2
        return H

    def residual(self, x):
        """The residual vector ρ(x) with L = ½‖ρ‖²: [h(Cx) − b; √w ⊙ Cx; √λ x] (zero parts left out)."""
        self._at(x)
        parts = [self._r]
        if np.any(self.w > 0):
            parts.append(np.sqrt(self.w) * self._u)
        if self.l2 > 0:
            parts.append(np.sqrt(self.l2) * x)
        return np.concatenate(parts)

    def jacobian(self, x):
        """∂ρ/∂x at x as a LinearOperator: J_h C on top (J_h = (diag(s) − s sᵀ) diag(m), or
        diag(a) Vᵀ (diag(s) − s sᵀ) for softmax_relu), then diag(√w) C and √λ I."""
        self._at(x)
        s, parts, n, d = self._parts["s"], self._parts, self.C.shape[0], self.C.shape[1]
        root_w = np.sqrt(self.w) if np.any(self.w > 0) else None
        root_l2 = np.sqrt(self.l2) if self.l2 > 0 else None
        top = self._r.shape[0]
        rows = top + (n if root_w is not None else 0) + (d if root_l2 is not None else 0)

        def matvec(p):
            p = np.ravel(p)
            Cp = self.C @ p
            if self.model == "softmax_relu":
                Js = s * Cp - s * (s @ Cp)
                out = [np.where(parts["active"], self.V.T @ Js, 0.0)]
            else:
                mCp = parts["mask"] * Cp
                out = [s * mCp - s * (s @ mCp)]
            if root_w is not None:
                out.append(root_w * Cp)
            if root_l2 is not None:
                out.append(root_l2 * p)
            return np.concatenate(out)

        def rmatvec(y):
            y = np.ravel(y)
            if self.model == "softmax_relu":
                z = self.V @ np.where(parts["active"], y[:top], 0.0)
                q = s * z - s * (s @ z)
            else:
                z = y[:top]
                q = parts["mask"] * (s * z - s * (s @ z))
            if root_w is not None:
                q = q + root_w * y[top:top + n]
            out = np.asarray(self.CT @ q).ravel()
            if root_l2 is not None:
                out = out + root_l2 * y[rows - d:]
            return out

        return scipy.sparse.linalg.LinearOperator((rows, d), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)

    def hessp(self, x, p):
        """∇²L(x)·p = Cᵀ(β ⊙ Cp + U S UᵀCp) + λp: two products with C."""
        self._at(x)
        beta, U, S = self._curvature()
        Cp = self.C @ p
        return np.asarray(self.CT @ (beta * Cp + U @ (S @ (U.T @ Cp)))).ravel() + self.l2 * p


# ---------------------------------------------------------------------------------------------
# Problems, starting points and the common criterion
# ---------------------------------------------------------------------------------------------
def build_case(model, args):
    """One planted problem with its x0 and g_ref: a dict (C, b, V, l2, x0, g_ref, reference Problem)."""
    out = fastnewton.make_problem(args.n, args.d, nnz_per_row=args.nnz_per_row, model=model, m=args.m,
                                  noise=args.noise, scale=args.scale, seed=args.seed, dense=args.dense)
    C, b = out[0], out[1]
    V = out.V
    n, d = C.shape
    frobenius2 = float(np.sum(C * C)) if args.dense else float(C.multiply(C).sum())
    l2 = args.l2 if args.l2 is not None else args.l2_rel * frobenius2 / (d * float(n) ** 2)
    reference = fastnewton.Problem(C, b, model=model, V=V, l2=l2)
    if model == "relu_softmax" or args.start == "auto":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
            x0 = fastnewton.solve(C, b, model, V=V, l2=l2, max_iter=0, n_threads=args.threads).x0
        if model == "relu_softmax":
            delta = np.random.default_rng(args.seed + 1).standard_normal(d)
            x0 = x0 + args.relu_perturbation * np.linalg.norm(x0) / np.sqrt(d) * delta
    else:
        x0 = np.zeros(d)
    start = ("auto + perturbation" if model == "relu_softmax" else args.start)
    # ∇L(0) = 0 exactly for relu_softmax; fastnewton takes the one-sided (softmax) derivative.
    numpy_derivatives = NumpyDerivatives(C, b, model, V=V, l2=l2)
    at_zero = NumpyDerivatives(C, b, "softmax", l2=l2) if model == "relu_softmax" else numpy_derivatives
    g_ref = float(np.linalg.norm(at_zero.grad(np.zeros(d)))) or float(np.linalg.norm(numpy_derivatives.grad(x0)))
    nnz = int(np.count_nonzero(C)) if args.dense else int(C.nnz)
    return {"model": model, "C": C, "b": b, "V": V, "l2": l2, "x0": x0, "g_ref": g_ref, "reference": reference,
            "numpy": numpy_derivatives,
            "n": n, "d": d, "nnz": nnz, "m": None if V is None else V.shape[1],
            "format": "dense" if args.dense else "csr", "start": start}


class ReachedTol(Exception):
    """A gradient evaluation met ‖∇L(x)‖ ≤ tol·g_ref."""


class OutOfTime(Exception):
    """The method ran past --time-limit."""


class Monitor:
    """Counts evaluations, records (wall time, ‖∇L‖/g_ref) at every gradient, stops at tol or the time limit."""

    def __init__(self, g_ref, tol, time_limit):
        self.g_ref, self.tol, self.time_limit = g_ref, tol, time_limit
        self.trace = []
        self.counts = {"fun": 0, "grad": 0, "hess": 0, "iter": 0}
        self.x_last_iterate = None
        self.x_met = None
        self.time_met = None
        self.start = time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start

    def _check_time(self):
        if self.elapsed() > self.time_limit:
            raise OutOfTime

    def wrap(self, derivatives, method, scale=1.0):
        """fun, jac and (per method) hess or hessp for scipy.optimize.minimize, with the checks.

        scipy sees scale·L and its derivatives; the criterion is tested on the unscaled gradient.
        """
        def fun(x):
            self._check_time()
            self.counts["fun"] += 1
            return scale * derivatives.loss(x)

        def jac(x):
            g = derivatives.grad(x)
            self.counts["grad"] += 1
            t, rel = self.elapsed(), float(np.linalg.norm(g)) / self.g_ref
            self.trace.append((t, rel))
            if rel <= self.tol:
                self.x_met, self.time_met = np.array(x, copy=True), t
                raise ReachedTol
            self._check_time()
            return scale * g

        def hess(x):
            self._check_time()
            self.counts["hess"] += 1
            return scale * derivatives.hessian(x)

        def hessp(x, p):
            self._check_time()
            self.counts["hess"] += 1
            return scale * derivatives.hessp(x, p)

        second = SCIPY_METHODS[method]
        if second == "jacobian":
            def residual(x):
                self._check_time()
                self.counts["fun"] += 1
                self.x_last_iterate = np.array(x, copy=True)
                return derivatives.residual(x)

            def jacobian(x):
                # The criterion needs ∇L = Jᵀρ, which least_squares forms itself right after.
                jac(x)
                self.counts["iter"] += 1
                return derivatives.jacobian(x)

            return {"fun": residual, "jac": jacobian}
        kwargs = {"fun": fun, "jac": jac, "callback": self.callback}
        if second == "hess":
            kwargs["hess"] = hess
        elif second == "hessp":
            kwargs["hessp"] = hessp
        return kwargs

    def callback(self, intermediate_result):
        self.counts["iter"] += 1
        self.x_last_iterate = np.array(intermediate_result.x, copy=True)
        self._check_time()


def scipy_options(method, max_iter):
    """Switch off scipy's own stopping tests (the Monitor applies the common criterion)."""
    if method == "L-BFGS-B":
        return {"maxiter": max_iter, "maxfun": 10 * max_iter, "ftol": 0.0, "gtol": 0.0}
    if method == "Newton-CG":
        return {"maxiter": max_iter, "xtol": 0.0}
    return {"maxiter": max_iter, "gtol": 0.0}


def run_scipy(case, method, derivatives_name, args, x0):
    C, b, V, l2 = case["C"], case["b"], case["V"], case["l2"]
    gc.collect()
    monitor = Monitor(case["g_ref"], args.tol, args.time_limit)
    scale = 1.0 if args.no_scipy_scaling else 1.0 / case["g_ref"]
    status = ""
    res = None
    try:
        if derivatives_name == "numpy":
            derivatives = NumpyDerivatives(C, b, case["model"], V=V, l2=l2)
        else:
            derivatives = fastnewton.Problem(C, b, case["model"], V=V, l2=l2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == "least_squares":
                # Its tests are relative to ‖ρ‖ and ‖x‖ (no scaling needed); all but a tiny xtol off.
                res = scipy.optimize.least_squares(x0=x0.copy(), method="trf", tr_solver="lsmr", ftol=None,
                                                   gtol=None, xtol=1e-15, max_nfev=args.max_iter,
                                                   **monitor.wrap(derivatives, method))
            else:
                res = scipy.optimize.minimize(x0=x0.copy(), method=method,
                                              options=scipy_options(method, args.max_iter),
                                              **monitor.wrap(derivatives, method, scale))
        status = f"scipy stopped: {res.message}"
    except ReachedTol:
        status = "reached tol"
    except OutOfTime:
        status = f"time limit {args.time_limit:g} s"
    elapsed = monitor.elapsed()
    if monitor.x_met is not None:
        x_final, seconds = monitor.x_met, monitor.time_met
    else:
        x_final = res.x if res is not None else (monitor.x_last_iterate if monitor.x_last_iterate is not None
                                                 else x0)
        seconds = elapsed
    final = final_point(case, x_final)
    return dict(solver="scipy", method=method, derivatives=derivatives_name,
                reached_tol=final["final_rel_grad_norm"] <= args.tol * (1 + RECHECK_SLACK), time_s=seconds, n_iter=monitor.counts["iter"],
                n_fun=monitor.counts["fun"], n_grad=monitor.counts["grad"], n_hess=monitor.counts["hess"],
                status=status, trace=monitor.trace, **final)


def run_fastnewton(case, strategy, args, x0):
    gc.collect()
    start = time.perf_counter()

    def stop_at_time_limit(info):
        return time.perf_counter() - start > args.time_limit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastnewton.ConvergenceWarning)
        res = fastnewton.solve(case["C"], case["b"], case["model"], V=case["V"], l2=case["l2"], x0=x0,
                               hessian=strategy, tol=args.tol, max_iter=args.max_iter, seed=args.seed,
                               n_threads=args.threads, callback=stop_at_time_limit)
    seconds = time.perf_counter() - start
    if not np.isclose(res.g_ref, case["g_ref"], rtol=1e-10, atol=0.0):
        warnings.warn(f"fastnewton's g_ref {res.g_ref:.17g} differs from the benchmark's {case['g_ref']:.17g}")
    # history times run from the start of the Newton loop; shift them by the setup before it.
    setup = seconds - res.time
    trace = [(h["time"] + setup, h["grad_norm"] / case["g_ref"]) for h in res.history]
    final = final_point(case, res.x)
    reached = final["final_rel_grad_norm"] <= args.tol * (1 + RECHECK_SLACK)
    if strategy == "auto":
        strategy = f"auto ({res.hessian})"
    return dict(solver="fastnewton", method=f"fastnewton {strategy}", derivatives="fastnewton",
                reached_tol=reached, time_s=seconds, n_iter=res.n_iter, n_fun=len(res.history),
                n_grad=len(res.history), n_hess=res.n_iter, status=f"{res.status.name}: {res.message}",
                trace=trace, **final)


# ---------------------------------------------------------------------------------------------
# PyTorch peers (optional: used only when torch imports)
# ---------------------------------------------------------------------------------------------
def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_applies(case):
    """The PyTorch peers handle dense C and the softmax / relu_softmax models."""
    return case["format"] == "dense" and case["model"] in ("softmax", "relu_softmax")


class TorchDerivatives:
    """L, ∇L and the closed-form Hessian Cᵀ diag(β) C + P S Pᵀ + λI in float64 PyTorch (the README's formulas)."""

    def __init__(self, case):
        import torch

        self.torch = torch
        self.C = torch.from_numpy(np.ascontiguousarray(case["C"], dtype=np.float64))
        self.b = torch.from_numpy(np.asarray(case["b"], dtype=np.float64))
        self.l2 = float(case["l2"])
        self.relu = case["model"] == "relu_softmax"

    def _parts(self, x):
        torch = self.torch
        u = self.C @ x
        mask = (u > 0).to(u.dtype) if self.relu else torch.ones_like(u)
        s = torch.softmax(mask * u, dim=0)
        r = s - self.b
        return u, mask, s, r

    def loss(self, x):
        _, _, _, r = self._parts(x)
        return float(0.5 * (r @ r) + 0.5 * self.l2 * (x @ x))

    def loss_and_grad(self, x):
        _, mask, s, r = self._parts(x)
        c = s @ r
        q = mask * (s * r - c * s)
        return float(0.5 * (r @ r) + 0.5 * self.l2 * (x @ x)), self.C.T @ q + self.l2 * x

    def hessian(self, x):
        torch = self.torch
        _, mask, s, r = self._parts(x)
        c = s @ r
        v = s * (2 * s - self.b)
        gamma = (3 * s - 2 * self.b) @ s
        beta = mask * (v - c * s)
        P = self.C.T @ torch.stack([mask * s, mask * v], dim=1)
        S = torch.tensor([[float(gamma), -1.0], [-1.0, 0.0]], dtype=torch.float64)
        H = self.C.T @ (beta[:, None] * self.C) + P @ S @ P.T
        H = 0.5 * (H + H.T)
        H.diagonal().add_(self.l2)
        return H


def run_torch(case, method, args, x0):
    """A PyTorch damped Newton (closed-form Hessian, Cholesky, LM damping, Armijo) or torch.optim.LBFGS."""
    import torch

    torch.set_num_threads(args.threads)
    gc.collect()
    monitor = Monitor(case["g_ref"], args.tol, args.time_limit)
    derivatives = TorchDerivatives(case)
    x = torch.from_numpy(np.array(x0, dtype=np.float64))
    status = ""

    def check(x, g):
        monitor.counts["grad"] += 1
        t, rel = monitor.elapsed(), float(torch.linalg.vector_norm(g)) / case["g_ref"]
        monitor.trace.append((t, rel))
        if rel <= args.tol:
            monitor.x_met, monitor.time_met = x.numpy().copy(), t
            raise ReachedTol
        monitor._check_time()

    try:
        if method == "torch Newton":
            mu = 0.0
            for _ in range(args.max_iter):
                loss, g = derivatives.loss_and_grad(x)
                check(x, g)
                H = derivatives.hessian(x)
                monitor.counts["hess"] += 1
                monitor.counts["iter"] += 1
                scale = float(H.diagonal().abs().max()) or 1.0
                for _ in range(40):
                    factor, info = torch.linalg.cholesky_ex(H + mu * torch.eye(H.shape[0], dtype=H.dtype))
                    step = -torch.cholesky_solve(g[:, None], factor)[:, 0] if int(info) == 0 else None
                    t, accepted = 1.0, False
                    if step is not None:
                        slope = float(g @ step)
                        for _ in range(30):
                            monitor.counts["fun"] += 1
                            if derivatives.loss(x + t * step) <= loss + 1e-4 * t * slope:
                                accepted = True
                                break
                            t *= 0.5
                    if accepted:
                        x = x + t * step
                        mu = mu / 10 if t == 1.0 else mu
                        break
                    mu = 1e-8 * scale if mu == 0.0 else 10 * mu
                else:
                    status = "damping failed"
                    break
        else:
            x = x.clone().requires_grad_(False)
            param = torch.nn.Parameter(x)
            optimizer = torch.optim.LBFGS([param], lr=1.0, max_iter=args.max_iter, max_eval=10 * args.max_iter,
                                          tolerance_grad=0.0, tolerance_change=0.0, history_size=10,
                                          line_search_fn="strong_wolfe")

            def closure():
                optimizer.zero_grad()
                with torch.no_grad():
                    loss, g = derivatives.loss_and_grad(param.detach())
                monitor.counts["fun"] += 1
                check(param.detach(), g)
                # L / g_ref as for scipy, so the optimizer's gradients start at O(1).
                param.grad = g / case["g_ref"]
                return torch.tensor(loss / case["g_ref"], dtype=torch.float64)

            try:
                optimizer.step(closure)
            finally:
                monitor.counts["iter"] = int(optimizer.state[param].get("n_iter", 0))
            x = param.detach()
            status = "LBFGS stopped"
    except ReachedTol:
        status = "reached tol"
    except OutOfTime:
        status = f"time limit {args.time_limit:g} s"
    x_final = monitor.x_met if monitor.x_met is not None else x.numpy()
    seconds = monitor.time_met if monitor.x_met is not None else monitor.elapsed()
    final = final_point(case, x_final)
    return dict(solver="torch", method=method, derivatives="torch",
                reached_tol=final["final_rel_grad_norm"] <= args.tol * (1 + RECHECK_SLACK), time_s=seconds,
                n_iter=monitor.counts["iter"], n_fun=monitor.counts["fun"], n_grad=monitor.counts["grad"],
                n_hess=monitor.counts["hess"], status=status, trace=monitor.trace, **final)


def final_point(case, x):
    """Loss and relative gradient norm at x, recomputed with the plain NumPy derivatives (not timed)."""
    numpy_derivatives = case["numpy"]
    numpy_derivatives._x = None
    loss, grad = numpy_derivatives.loss(x), numpy_derivatives.grad(x)
    return {"final_loss": float(loss), "final_rel_grad_norm": float(np.linalg.norm(grad)) / case["g_ref"]}


def check_derivatives(models=MODELS, n=60, d=7, seed=0):
    """Largest ‖numpy − Problem‖ / ‖Problem‖ over loss, grad, hessian and hessp on tiny problems."""
    worst = 0.0
    rng = np.random.default_rng(seed)
    for model in models:
        for dense in (False, True):
            out = fastnewton.make_problem(n, d, nnz_per_row=3, model=model, m=4, noise=1e-2, seed=seed, dense=dense)
            C, b = out[0], out[1]
            V = out.V
            mine = NumpyDerivatives(C, b, model, V=V, l2=1e-3)
            theirs = fastnewton.Problem(C, b, model, V=V, l2=1e-3)
            x, p = rng.standard_normal(d), rng.standard_normal(d)
            for a, e in ((mine.loss(x), theirs.loss(x)), (mine.grad(x), theirs.grad(x)),
                         (mine.hessian(x), theirs.hessian(x)), (mine.hessp(x, p), theirs.hessp(x, p))):
                worst = max(worst, float(np.linalg.norm(np.ravel(a) - np.ravel(e)) / np.linalg.norm(np.ravel(e))))
    return worst


# ---------------------------------------------------------------------------------------------
# Driver, report, CSV and plot
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def thread_limits(n_threads):
    """Numba and BLAS threads for the whole benchmark; the previous Numba count is restored."""
    previous = numba.get_num_threads()
    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=n_threads, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(previous)


def warm_up(models, args):
    """Compile (or load from the disk cache) every kernel the timed runs use, on tiny problems."""
    for model in models:
        out = fastnewton.make_problem(400, 8, nnz_per_row=3, model=model, m=4, noise=1e-2, seed=0, dense=args.dense)
        C, b = out[0], out[1]
        V = out.V
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for strategy in FASTNEWTON_STRATEGIES:
                fastnewton.solve(C, b, model, V=V, l2=1e-6, hessian=strategy, max_iter=2, seed=0,
                                 n_threads=args.threads, sketch_size=50)
        prob = fastnewton.Problem(C, b, model, V=V, l2=1e-6)
        x = np.full(8, 0.1)
        prob.loss(x), prob.grad(x), prob.hessian(x), prob.hessp(x, x)
        if args.torch and args.dense and model in ("softmax", "relu_softmax"):
            # PyTorch's first call initialises its thread pool and kernels (seconds).
            tiny = {"C": C, "b": b, "l2": 1e-6, "model": model, "g_ref": 1.0, "format": "dense"}
            derivatives = TorchDerivatives(tiny)
            import torch
            point = torch.from_numpy(x)
            derivatives.loss_and_grad(point), derivatives.hessian(point)


def warm_up_case(case, args):
    """One untimed default solve and one NumPy gradient on the full problem (see "Timing" above)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastnewton.solve(case["C"], case["b"], case["model"], V=case["V"], l2=case["l2"], tol=args.tol,
                         max_iter=args.max_iter, seed=args.seed, n_threads=args.threads)
    NumpyDerivatives(case["C"], case["b"], case["model"], V=case["V"], l2=case["l2"]).grad(np.zeros(case["d"]))


def methods(case, args):
    """(solver, method, derivatives) of every run on this case."""
    runs = [("fastnewton", strategy, "fastnewton") for strategy in FASTNEWTON_STRATEGIES]
    runs += [("scipy", method, deriv) for deriv in args.derivatives for method in SCIPY_METHODS
             if deriv == "numpy" or SCIPY_METHODS[method] != "jacobian"]
    if args.torch and torch_applies(case):
        runs += [("torch", method, "torch") for method in TORCH_METHODS]
    if args.methods is not None:
        runs = [run for run in runs if (f"fastnewton {run[1]}" if run[0] == "fastnewton" else run[1]) in args.methods]
    return runs


def start_of(solver, table, case):
    """x0 of a run: the default table starts fastnewton at "auto" and the peers at zeros."""
    if table == "default":
        return "auto" if solver == "fastnewton" else np.zeros(case["d"])
    return case["x0"]


# A run whose final loss exceeds the table's lowest by more than this (relative) met the gradient
# test at another stationary point (e.g. relu_softmax's dead x = 0, where ∇L = 0 exactly).
LOSS_RTOL = 1e-6


def reject_other_stationary_points(rows):
    """reached_tol = False, with a status saying why, for runs that stopped at a worse stationary point."""
    losses = [r["final_loss"] for r in rows if r["reached_tol"]]
    if not losses:
        return
    lowest = min(losses)
    for r in rows:
        if r["reached_tol"] and r["final_loss"] > lowest + LOSS_RTOL * abs(lowest):
            r["reached_tol"] = False
            r["status"] = f"stationary point with loss {r['final_loss']:.6e} > lowest {lowest:.6e}: " + r["status"]


def add_ratios(rows):
    """time / the default fastnewton solve's time (hessian = auto); a run that missed tol gets a lower bound."""
    reject_other_stationary_points(rows)
    default = [r["time_s"] for r in rows if r["method"].startswith("fastnewton auto") and r["reached_tol"]]
    reference = default[0] if default else float("nan")
    for r in rows:
        r["ratio_to_fastnewton_default"] = r["time_s"] / reference
    return reference


def headline(rows, derivatives, best_fastnewton):
    """(ratio, is_lower_bound, method) for the best peer with the given derivatives / the default solve."""
    runs = [r for r in rows if r["solver"] != "fastnewton" and r["derivatives"] == derivatives]
    reached = [r for r in runs if r["reached_tol"]]
    if reached:
        best = min(reached, key=lambda r: r["time_s"])
        return best["time_s"] / best_fastnewton, False, best["method"]
    # None reached tol. Runs cut by the time limit give a lower bound; a run that stopped on
    # its own (line search failure, zero step) would never have reached tol.
    cut = [r for r in runs if r["status"].startswith("time limit")]
    if not runs:
        return float("nan"), False, "none"
    if not cut:
        return float("inf"), True, "none"
    best = min(cut, key=lambda r: r["time_s"])
    return best["time_s"] / best_fastnewton, True, best["method"]


def near_miss(rows, derivatives, best_fastnewton, tol):
    """(ratio, method, ‖∇L‖/g_ref) of the fastest peer with these derivatives that stopped on its own short
    of tol but within NEAR_MISS × tol, when it stopped sooner than every peer that reached tol; else None."""
    runs = [r for r in rows if r["solver"] != "fastnewton" and r["derivatives"] == derivatives]
    close = [r for r in runs if not r["reached_tol"] and r["final_rel_grad_norm"] <= NEAR_MISS * tol
             and not r["status"].startswith("time limit")]
    if not close:
        return None
    nearest = min(close, key=lambda r: r["time_s"])
    reached = [r["time_s"] for r in runs if r["reached_tol"]]
    if reached and min(reached) <= nearest["time_s"]:
        return None
    return nearest["time_s"] / best_fastnewton, nearest["method"], nearest["final_rel_grad_norm"]


def verdict(ratio, lower_bound, target):
    """Whether a ratio meets a target; a lower bound below it cannot tell."""
    if ratio >= target:
        return "meets"
    return "cannot tell (a lower bound) whether it meets" if lower_bound else "misses"


def format_ratio(ratio, lower_bound):
    if np.isnan(ratio):
        return "n/a"
    if not np.isfinite(ratio):
        return "∞ (no peer reached tol)"
    return f"{'≥ ' if lower_bound else ''}{ratio:.1f}×"


def format_table(case, table, rows, args):
    starts = ("fastnewton x0='auto', peers x0=0" if table == "default" else f"every method x0={case['start']}")
    lines = [f"\n{case['model']}, {table} starts ({starts}): {case['format']} n={case['n']:,} d={case['d']} "
             f"nnz={case['nnz']:,}" + (f" m={case['m']}" if case["m"] else "")
             + f" l2={case['l2']:.3g} g_ref=‖∇L(0)‖={case['g_ref']:.3e} tol={args.tol:g}"
             + (f"; each method's fastest of {args.repeat} runs" if args.repeat > 1 else ""),
             f"  {'method':<26} {'derivs':<10} {'reached':>7} {'time s':>9} {'iter':>6} {'fun/grad/hess':>16} "
             f"{'final loss':>13} {'|g|/g_ref':>10} {'ratio':>9}  status"]
    for r in rows:
        ratio = r["ratio_to_fastnewton_default"]
        ratio_text = "n/a" if not np.isfinite(ratio) else (f"{ratio:.2f}" if r["reached_tol"] else f">{ratio:.1f}")
        evals = f"{r['n_fun']}/{r['n_grad']}/{r['n_hess']}"
        lines.append(f"  {r['method']:<26} {r['derivatives']:<10} {str(r['reached_tol']):>7} {r['time_s']:>9.3f} "
                     f"{r['n_iter']:>6} {evals:>16} {r['final_loss']:>13.6e} {r['final_rel_grad_norm']:>10.2e} "
                     f"{ratio_text:>9}  {r['status'][:70]}")
    return lines


def write_csv(path, rows):
    write_stamped_csv(path, rows, CSV_FIELDS)


def write_traces(path, rows):
    meta = run_metadata()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "method", "derivatives", "time_s", "rel_grad_norm", *meta])
        for r in rows:
            for t, rel in r["trace"]:
                writer.writerow([r["model"], r["method"], r["derivatives"], f"{t:.6g}", f"{rel:.6e}", *meta.values()])


def plot(path, rows, models, tol, describe=""):
    """Best relative gradient norm so far against wall time, log-log, one panel per problem."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["method"].split(" (")[0] for r in rows))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    # fastnewton solid; scipy with NumPy derivatives dashed, with fastnewton.Problem's dotted; PyTorch dash-dot.
    styles = {"numpy": "--", "fastnewton": ":", "torch": "-."}
    tables = list(dict.fromkeys(r["table"] for r in rows))
    panels = [(model, table) for table in tables for model in models]
    fig, axes = plt.subplots(len(tables), len(models), figsize=(6 * len(models), 4.5 * len(tables)), squeeze=False)
    for ax, (model, table) in zip(axes.ravel(), panels):
        for r in (r for r in rows if r["model"] == model and r["table"] == table):
            trace = [(t, g) for t, g in r["trace"] if t > 0 and g > 0]
            if not trace:
                continue
            t, g = zip(*trace)
            # scipy's line-search trial points spike the raw gradient; the running minimum
            # is what "time to tol" measures (the raw values are in the traces CSV).
            best = np.minimum.accumulate(g)
            fastnewton_run = r["solver"] == "fastnewton"
            ax.plot(t, best, "-" if fastnewton_run else styles[r["derivatives"]],
                    color=colours[r["method"].split(" (")[0]],
                    marker="." if len(t) < 60 else None, markersize=4,
                    label=r["method"] if fastnewton_run else f"{r['method']} ({r['derivatives']})")
        ax.axhline(tol, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{model}, {table} starts")
        ax.set_xlabel("wall time [s]")
        ax.set_ylabel("best ‖∇L(x)‖ / g_ref so far")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Time to a relative gradient of {tol:g}: fastnewton vs scipy.optimize (same start, same "
                 f"criterion)\n{describe}", fontsize=9)
    caption(fig, command_line())
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def header(args):
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
                     for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas") or "unknown"
    return [f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
            f"numba {numba.__version__}, fastnewton {fastnewton.__version__}, "
            f"threadpoolctl {threadpoolctl.__version__}",
            f"{platform.processor() or platform.machine()}: {os.cpu_count()} CPUs ({affinity} usable); "
            f"threads used: {args.threads} (Numba max {numba.config.NUMBA_NUM_THREADS}); BLAS: {blas}"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_argument_group("problems")
    size.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models to run (default: all)")
    size.add_argument("--n", type=positive_int, default=200_000, help="rows of C (default 200000)")
    size.add_argument("--d", type=positive_int, default=100, help="columns of C (default 100)")
    size.add_argument("--nnz-per-row", type=positive_int, default=10, help="non-zeros per row of CSR C (default 10)")
    size.add_argument("--m", type=positive_int, default=None, help="softmax_relu outputs (default: make_problem's min(d, 16))")
    size.add_argument("--dense", action="store_true", help="dense C instead of CSR")
    size.add_argument("--noise", type=nonnegative_float, default=1e-2,
                      help="relative noise on b, so the optimum is not the planted x (default 1e-2)")
    size.add_argument("--scale", type=positive_float, default=1.0,
                      help="spread of the planted logits C·x_true ≈ N(0, scale²) (default 1); larger is harder: "
                           "a peakier softmax, more Newton iterations from x = 0")
    size.add_argument("--l2-rel", type=nonnegative_float, default=1e-3,
                      help="ridge relative to the curvature scale: l2 = this × ‖C‖_F² / (d n²) (default 1e-3)")
    size.add_argument("--l2", type=nonnegative_float, default=None, help="absolute ridge l2 (overrides --l2-rel)")
    size.add_argument("--start", choices=("zeros", "auto"), default="zeros",
                      help="x0 for softmax and softmax_relu: zeros (default) or fastnewton's automatic "
                           "start (solve(..., max_iter=0).x0), handed to every method; relu_softmax "
                           "always starts from the perturbed automatic start")
    size.add_argument("--relu-perturbation", type=nonnegative_float, default=0.1,
                      help="relu_softmax: relative size of the seeded perturbation of fastnewton's "
                           "automatic start (default 0.1)")
    size.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the problems, the perturbation and sketches")
    run = parser.add_argument_group("runs")
    run.add_argument("--tol", type=positive_float, default=1e-8, help="relative gradient tolerance (default 1e-8)")
    run.add_argument("--repeat", type=positive_int, default=1,
                     help="run every method this many times and report its fastest run (default 1; the runs are "
                          "deterministic: only the time differs)")
    run.add_argument("--time-limit", type=positive_seconds, default=120.0, help="wall-time cap per method in s (default 120)")
    run.add_argument("--max-iter", type=positive_int, default=10_000,
                     help="iteration cap per method (scipy maxiter; L-BFGS-B maxfun = 10×; default 10000)")
    run.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES),
                     help="default: each method from its natural start (fastnewton 'auto', peers zeros); "
                          "same: every method from the same x0 (default: both)")
    run.add_argument("--derivatives", nargs="+", choices=DERIVATIVES, default=list(DERIVATIVES),
                     help="which derivatives scipy is given (default: both)")
    run.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers even when torch is installed")
    run.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                     help="run only these methods (names as in the tables, e.g. 'fastnewton auto' trust-exact "
                          "'torch Newton'; default: all) — to split a long benchmark into shorter runs; the "
                          "ratios need 'fastnewton auto' in each run")
    run.add_argument("--no-scipy-scaling", action="store_true",
                     help="hand scipy the raw loss instead of L / g_ref (see 'Scaling' above)")
    run.add_argument("--threads", type=thread_count, default=None,
                     help="Numba and BLAS threads for every method (default: all usable cores)")
    add_output_arguments(run)
    run.add_argument("--quick", action="store_true",
                     help="small problems (overrides --n 4000 --d 20 --nnz-per-row 5; time limit ≤ 3 s): "
                          "a smoke test of the script, not a measurement")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.nnz_per_row, args.time_limit = 4000, 20, 5, min(args.time_limit, 3.0)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args.torch = not args.no_torch and torch_available()
    return args


def main(argv=None):
    args = parse_args(argv)
    from tqdm import tqdm

    for line in header(args):
        print(line)
    worst = check_derivatives()
    print(f"NumPy derivatives vs fastnewton.Problem on tiny problems: max relative difference {worst:.1e}")
    if worst > 1e-10:
        raise SystemExit(f"the NumPy derivatives disagree with fastnewton.Problem ({worst:.1e} > 1e-10)")
    output = pathlib.Path(args.out) / "peers.csv"
    all_rows = []
    headlines = []
    with thread_limits(args.threads):
        warm_up(args.models, args)
        progress = tqdm(desc="peers", unit="run", file=sys.stderr)
        for model in args.models:
            progress.set_postfix_str(f"{model}: building problem")
            case = build_case(model, args)
            progress.set_postfix_str(f"{model}: untimed warm-up solve")
            warm_up_case(case, args)
            for table in args.tables:
                rows = []
                for solver, method, deriv in methods(case, args):
                    progress.set_postfix_str(f"{model}, {table}: {method} ({deriv})")
                    x0 = start_of(solver, table, case)
                    runs = []
                    for _ in range(args.repeat):
                        if not args.quick:
                            time.sleep(IDLE_BEFORE_RUN)
                        if solver == "fastnewton":
                            runs.append(run_fastnewton(case, method, args, x0))
                        elif solver == "torch":
                            runs.append(run_torch(case, method, args, x0))
                        else:
                            runs.append(run_scipy(case, method, deriv, args, x0))
                    row = min(runs, key=lambda run: run["time_s"])  # best of --repeat (deterministic runs)
                    row.update(table=table, model=model, format=case["format"], n=case["n"], d=case["d"],
                               nnz=case["nnz"], m=case["m"], l2=case["l2"],
                               start=("auto" if isinstance(x0, str) else "zeros" if not np.any(x0) else case["start"]),
                               tol=args.tol, g_ref=case["g_ref"], threads=args.threads, repeat=args.repeat)
                    rows.append(row)
                    progress.update()
                reference = add_ratios(rows)
                lines = format_table(case, table, rows, args)
                if np.isfinite(reference):
                    targets = TARGETS.get((table, case["format"]), ())
                    ran = {r["derivatives"] for r in rows if r["solver"] != "fastnewton"}
                    for deriv in [d for d in (*args.derivatives, "torch") if d in ran]:
                        ratio, lower, method = headline(rows, deriv, reference)
                        target = next((t for peer, d, t in targets if peer is None and d == deriv), None)
                        aim = "" if target is None else f" — {verdict(ratio, lower, target)} the target ≥ {target:g}×"
                        lines.append(f"  best peer with {deriv} derivatives / default fastnewton solve: "
                                     f"{format_ratio(ratio, lower)}"
                                     + (f" ({method}{', none reached tol' if lower else ''})"
                                        if np.isfinite(ratio) else "") + aim)
                        headlines.append((model, table, deriv, ratio, lower))
                        close = near_miss(rows, deriv, reference, args.tol)
                        if close is not None and deriv != "fastnewton":
                            lines.append(f"    counting {close[1]}, which stopped on its own at ‖∇L‖/g_ref = "
                                         f"{close[2]:.2g} (within {NEAR_MISS:g}× tol), as if it had reached tol: "
                                         f"{close[0]:.1f}×")
                            headlines.append((model, table, f"{deriv} (near miss: {close[1]})", close[0], False))
                    for peer, deriv, target in targets:
                        run = next((r for r in rows if peer is not None and r["method"] == peer
                                    and r["derivatives"] == deriv), None)
                        if run is not None:
                            ratio, lower = run["time_s"] / reference, not run["reached_tol"]
                            lines.append(f"  {peer} ({deriv}) / default fastnewton solve: "
                                         f"{format_ratio(ratio, lower)}"
                                         + ("" if run["reached_tol"] else f" (did not reach tol: {run['status'][:40]})")
                                         + f" — {verdict(ratio, lower, target)} the target ≥ {target:g}×")
                            headlines.append((model, table, f"{peer} ({deriv})", ratio, lower))
                else:
                    lines.append("  the default fastnewton solve did not reach tol: no ratio")
                for line in lines:
                    tqdm.write(line)
                all_rows += rows
            del case
        progress.close()
    write_csv(output, all_rows)
    traces = output.with_name(output.stem + "_traces.csv")
    write_traces(traces, all_rows)
    written = [str(output), str(traces)]
    if not args.no_plot:
        png = output.with_suffix(".png")
        fmt = "dense" if args.dense else f"CSR with {args.nnz_per_row} non-zeros per row"
        plot(png, all_rows, args.models, args.tol,
             f"planted problems, {fmt}, n = {args.n:,}, d = {args.d}, noise {args.noise:g}, scale {args.scale:g}, start {args.start}, "
             f"{args.threads} threads; fastnewton solid, scipy with NumPy derivatives dashed, with "
             f"fastnewton.Problem dotted")
        written.append(str(png))
    print("\nheadline (best peer, or the named peer, / default fastnewton solve, time to tol):")
    for model, table, deriv, ratio, lower in headlines:
        print(f"  {model:<13} {table:<8} {deriv:<10} {format_ratio(ratio, lower)}")
    if not args.torch:
        print("PyTorch peers: not run (" + ("--no-torch" if torch_available() else "PyTorch is not installed") + ")")
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
