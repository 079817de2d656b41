"""Unrolled, branch-free dense linear algebra for tiny matrices.

Every solver iteration reduces the Jacobian by a thin QR factorisation of the
augmented matrix ``[J | f]`` (m x k, k = n + 1 columns, n parameters) and then
takes the SVD of an n x n (or 2n x n) matrix. Under ``jax.vmap`` over
thousands of curves XLA lowers ``jnp.linalg.qr`` / ``jnp.linalg.svd`` to one
LAPACK call per matrix; for the SVD of a tiny matrix the fixed cost of each
call dwarfs the arithmetic. The kernels below are instead written with Python loops
over the (static, small) number of columns, so that tracing unrolls them into
a fixed sequence of elementwise operations and reductions: under ``vmap``
every one of those is a single operation over the whole batch. There is no
data-dependent Python control flow (safe under ``jit``, ``vmap`` and inside
``lax.while_loop``), and every division is guarded, so zero columns and zero
matrices give zeros, never NaN.

QR: Householder reflections (``qr_r``)
--------------------------------------
Golub & Van Loan, *Matrix Computations* (4th ed.), Alg. 5.1.1 / 5.2.1, with the
sign convention of LAPACK ``dlarfg``. At step j, with ``x = A[j:, j]``
(``alpha = x[0]``, ``sigma2 = ||x[1:]||^2``, ``xnorm = sqrt(alpha^2 + sigma2)``)
the reflector ``H = I - v v^T / (xnorm (xnorm + |alpha|))``, ``v = x - beta e1``,
``beta = -sign(alpha) xnorm``, maps ``x`` to ``beta e1`` (``v_0 = alpha - beta``
has no cancellation). It is applied to the remaining columns ``y`` as
``y <- y - w v`` with ``w = (v . y) / (xnorm (xnorm + |alpha|))``; since
``v . y = x[1:] . y[1:] + v_0 y_0`` all the inner products of a step are taken
against the same masked vector ``x[1:]``. When ``sigma2 == 0`` (``x`` already
a multiple of ``e1``, including a zero column) no reflection is applied and
``beta = alpha``, exactly as ``dlarfg`` does; so, barring rounding, ``R`` has
the same signs as LAPACK's (``dgeqrf``) and ``qtf = R[:n, n]`` of ``[J | f]``
is consistent with ``R[:n, :n]``. ``Q`` is never formed. Householder QR is
backward stable (Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed., Thm. 19.4): ``R^T R = A^T A + O(eps ||A||^2)`` and ``R`` has the
singular values of ``A`` to ``O(eps ||A||)``. Each column is first scaled by
an exact power of two (its largest entry then lies in [0.5, 1)), so that
squaring neither overflows nor underflows for entries anywhere in the
floating-point range; the scaling is undone exactly on ``R``
(``A D^-1 = Q R_s`` implies ``A = Q (R_s D)``).

SVD: one-sided Jacobi (``svd_small``)
-------------------------------------
Hestenes (1958); Demmel & Veselic, "Jacobi's method is more accurate than QR",
SIAM J. Matrix Anal. Appl. 13 (1992); Golub & Van Loan Sec. 8.6.3; LAPACK
``dgesvj`` (Drmac & Veselic, SIAM J. Matrix Anal. Appl. 29, 2008) for the
stopping rule. The columns of ``W = A`` (p x n) are made mutually orthogonal by
plane rotations applied from the right, ``W <- W J(i, j, theta)``, accumulated
in ``V`` (``W`` and ``V`` are stacked, so one rotation updates both). For a
pair of columns ``x, y`` with ``alpha = x.x``, ``beta = y.y``, ``gamma = x.y``
the rotation that zeroes ``gamma`` (Rutishauser's formulas) is

    zeta = (beta - alpha) / (2 gamma),  t = sign(zeta) / (|zeta| + sqrt(1 + zeta^2)),
    c = 1 / sqrt(1 + t^2),  s = c t,   x' = c x - s y,  y' = s x + c y.

A pair is rotated only if ``|gamma| > tol sqrt(alpha beta)`` with
``tol = sqrt(p) eps`` (as ``dgesvj``) and both squared norms exceed
``(n eps ||A||_F)^2``; otherwise ``t = 0``. The second condition treats
columns at the rounding-noise level as zero: without it a rank-deficient
matrix keeps "orthogonalising" its noise columns and never converges (it
changes nothing above ``n eps ||A||_F``, far below the accuracy asked for). The
pairs are visited in cyclic-by-rows order, each once per sweep; a
``lax.while_loop`` stops after the first sweep in which no pair was rotated
(all columns orthogonal to working accuracy), or after ``max_sweeps``. Cyclic
Jacobi converges quadratically (Wilkinson 1962; van Kempen 1966): in float64
the loop takes 3-6 sweeps for n <= 4 and 5-12 for n <= 12 (``max_sweeps``
defaults to 20). Then ``s_i = ||W[:, i]||``, ``U[:, i] = W[:, i] / s_i`` and
``A = U diag(s) V^T``; the columns are finally sorted by decreasing ``s`` with
a one-hot permutation built from stable ranks. One-sided Jacobi is backward
stable columnwise and computes singular values to high accuracy (Demmel &
Veselic). The matrix is scaled by a power of two (largest entry in [0.5, 1))
first so the inner products neither overflow nor underflow; ``s`` is scaled
back. Under ``vmap`` the ``while_loop`` runs until the slowest matrix of the
batch has converged (the others are frozen by a select).

Zero singular values: a column that ends up exactly zero gives ``s_i = 0``, a
**zero** column ``U[:, i]`` (not a unit vector) and a genuine unit column of
``V``; ``V`` is always orthogonal. Callers that only use ``U^T b``, ``s`` and
``V`` (the trust-region solvers) are unaffected: the corresponding component
of ``U^T b`` is 0 and it is multiplied by ``s_i = 0`` or dropped anyway.
``A = U diag(s) V^T`` holds in every case. A column at the noise level (rank
deficiency in floating point) gives ``s_i = O(n eps ||A||)`` and a unit
``U[:, i]`` that is orthogonal to the others only to about
``n eps ||A|| / s_i``; as for LAPACK, such ``s_i`` are rounding noise.

Which kernel to use (``use_small``, ``qr_r_auto``, ``svd_auto``)
----------------------------------------------------------------
Measured on a shared 2-core CPU (jax 0.10.2, float64, /tmp/smallla_bench.py;
time per matrix, LAPACK / unrolled):

* SVD under ``vmap`` (256 or 2,000 matrices): Jacobi is 2.2-7.6x faster than
  LAPACK for n <= 4 (3 x 3: 0.32-0.38 us vs 1.0-1.9 us), 1.1-1.75x for
  n = 5-6 (p = n or 2n), 0.85x at n = 8 and 0.45-0.5x at n = 12. Outside
  ``vmap`` (one matrix per call inside a loop, as in a single fit) it is
  1.5x faster at n = 3, on par at n = 4 and 0.5-0.7x at n = 5-6. Hence
  ``svd_auto`` uses Jacobi for n <= 4 by default and for n <= 6 when told
  the call is batched.
* QR: XLA executes the unrolled Householder as ~k^2 / 2 passes over the
  (batch x m) columns, while LAPACK factorises each matrix in cache: under
  ``vmap`` the unrolled QR is 0.2-0.75x as fast for m = 50..256 and on par
  at m = 10..20 (1.4x at m = 10 with 256 matrices); single calls are
  0.4-0.75x (m = 200 .. 100,000). So ``qr_r_auto`` only picks ``qr_r`` for
  tiny matrices (k <= 8, m <= 16).

Compile cost (trace + XLA) of the unrolled kernels, against ~0.06 s for a
LAPACK call: SVD 0.3-0.5 s for n <= 4, 0.7-1.3 s for n = 5-6, 1.7 s at n = 8,
4.5 s at n = 12; QR 0.5-0.7 s for k = 4-5, 1 s at k = 7, ~4 s at k = 11.

These functions define no custom derivatives: ``jax.grad`` / ``jax.jacfwd``
through ``qr_r`` work (plain jnp code); ``svd_small`` supports forward mode
only (reverse mode cannot go through its ``while_loop``). The solvers never
differentiate through either.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["qr_r", "svd_small", "use_small", "qr_r_auto", "svd_auto"]

#: ``svd_auto`` uses one-sided Jacobi for min(p, n) <= this ...
SMALL_SVD_N_MAX = 4
#: ... or <= this when the call is known to be vmapped (``batched=True``).
SMALL_SVD_N_MAX_BATCHED = 6
#: ``qr_r_auto`` uses the unrolled Householder for at most this many columns
#: and rows (LAPACK is as fast or faster above; see the module docstring).
SMALL_QR_K_MAX = 8
SMALL_QR_M_MAX = 16


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _as_matrix(A, name):
    """``A`` as a floating 2-D jax array (integers promoted), or a clear error."""
    A = jnp.asarray(A)
    if A.ndim != 2:
        raise ValueError(f"{name} expects a 2-D array, got shape {A.shape}")
    if not jnp.issubdtype(A.dtype, jnp.floating):
        A = A.astype(jnp.result_type(float))
    return A


def _pow2_scale(amax):
    """Exact powers of two ``(scale, unscale = 1 / scale)`` such that
    ``amax * scale`` lies in [0.5, 1). Both stay normal numbers (exponent
    clipped to the normal range), and are 1 where ``amax`` is 0 or not
    finite."""
    fi = jnp.finfo(amax.dtype)
    _, e = jnp.frexp(jnp.where(jnp.isfinite(amax), amax, 0.0))
    e = jnp.clip(e, int(fi.minexp), int(fi.maxexp) - 2)
    one = jnp.ones_like(amax)
    return jnp.ldexp(one, -e), jnp.ldexp(one, e)


def _rdiv(a, b):
    """``a / b`` with 0 where ``b == 0``."""
    ok = b != 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


# --------------------------------------------------------------------------
# QR (R factor only)
# --------------------------------------------------------------------------


def qr_r(A, *, scale=True):
    """Upper-triangular ``R`` (k x k) of the thin QR factorisation ``A = Q R``.

    ``A`` is m x k with k small and static. If ``m < k`` the matrix is padded
    with zero rows (the R of the padded matrix is the R of ``A`` completed by
    zero rows). Householder reflections unrolled over the k columns, with the
    sign convention of LAPACK's ``dgeqrf`` (see the module docstring), so the
    result matches ``jnp.linalg.qr(A, mode="r")`` up to rounding.

    ``scale=False`` skips the exact power-of-two column scaling (one extra
    pass over ``A``); only safe if no squared entry over- or underflows.
    """
    A = _as_matrix(A, "qr_r")
    m, k = A.shape
    if m < k:
        A = jnp.concatenate([A, jnp.zeros((k - m, k), A.dtype)], axis=0)
        m = k
    # Materialise A: the k (k + 1) / 2 passes below would otherwise each
    # recompute A's producer (e.g. the model's Jacobian) fused into them.
    A = lax.optimization_barrier(A)
    if scale:
        sc, unsc = _pow2_scale(jnp.max(jnp.abs(A), axis=0))
        A = A * sc[None, :]
    idx = jnp.arange(m)
    cols = [A[:, j] for j in range(k)]
    zero = jnp.zeros((), A.dtype)
    R = [[zero] * k for _ in range(k)]
    for j in range(k):
        x = cols[j]
        alpha = x[j]
        xb = jnp.where(idx > j, x, 0.0)  # x[j+1:], zero-extended
        sigma2 = jnp.sum(xb * xb)
        dots = [jnp.sum(xb * cols[l]) for l in range(j + 1, k)]
        xnorm = jnp.sqrt(alpha * alpha + sigma2)
        reflect = sigma2 > 0
        beta = jnp.where(reflect, -jnp.copysign(xnorm, alpha), alpha)
        # 2 / (v.v) = 1 / (xnorm (xnorm + |alpha|)); 0 means "no reflection".
        tau = jnp.where(reflect, 1.0 / jnp.where(reflect, xnorm * (xnorm + jnp.abs(alpha)),
                                                   1.0), 0.0)
        v0 = alpha - beta
        R[j][j] = beta
        for l in range(j + 1, k):
            y = cols[l]
            yj = y[j]
            w = tau * (dots[l - j - 1] + v0 * yj)
            R[j][l] = yj - w * v0
            # Rows <= j of y are final (row j is R[j][l]); update rows > j only.
            cols[l] = y - w * xb
    R = jnp.stack([jnp.stack(row) for row in R])
    if scale:
        R = R * unsc[None, :]
    return R


# --------------------------------------------------------------------------
# SVD (one-sided Jacobi)
# --------------------------------------------------------------------------


def _rows(x, p):
    """The first p entries of a column, as p separate scalars."""
    return [lax.index_in_dim(x, r, keepdims=False) for r in range(p)]


def _dot(xs, ys):
    """``sum(xs[r] * ys[r])`` written out as products and adds: the columns
    are tiny, and an explicit sum vectorises over the batch axis of ``vmap``
    better than a reduction over a minor axis of length p."""
    acc = xs[0] * ys[0]
    for xr, yr in zip(xs[1:], ys[1:]):
        acc = acc + xr * yr
    return acc


def _jacobi_pair(x, y, p, tol, small):
    """Rotate the columns ``x, y`` (length p + n: the column of A on top of
    the column of V) so that their first p entries become orthogonal.
    Returns the new pair and whether a rotation was applied.

    Columns with squared norm ``<= small`` are rounding noise and are never
    rotated (else a rank-deficient matrix would keep rotating noise and never
    converge). That bound also keeps ``zeta`` far from overflow: with both
    squared norms in ``(small, ||A||_F^2]`` and ``|gamma| > tol sqrt(alpha
    beta)``, ``|zeta| <= 1 / (2 tol n eps)``.
    """
    xs, ys = _rows(x, p), _rows(y, p)
    alpha = _dot(xs, xs)
    beta = _dot(ys, ys)
    gamma = _dot(xs, ys)
    rot = ((jnp.abs(gamma) > tol * jnp.sqrt(alpha * beta))
           & (jnp.minimum(alpha, beta) > small))
    zeta = (beta - alpha) / (2.0 * jnp.where(rot, gamma, 1.0))
    # The root of t^2 + 2 zeta t - 1 = 0 of smaller magnitude (|t| <= 1).
    t = jnp.where(rot, 1.0 / (zeta + jnp.copysign(jnp.sqrt(1.0 + zeta * zeta), zeta)), 0.0)
    c = lax.rsqrt(1.0 + t * t)
    s = c * t
    return c * x - s * y, s * x + c * y, rot


def svd_small(A, *, max_sweeps=20, tol=None):
    """Thin SVD ``A = U diag(s) Vt`` of a small p x n matrix (one-sided Jacobi).

    Returns ``(U, s, Vt)`` shaped like ``jnp.linalg.svd(A, full_matrices=False)``:
    ``U`` (p x r), ``s`` (r,) non-negative and sorted in decreasing order, ``Vt``
    (r x n), r = min(p, n). For p >= n (the intended use) ``Vt`` is always
    orthogonal and the columns of ``U`` for zero singular values are zero
    vectors (see the module docstring); for p < n the SVD of ``A.T`` is
    computed, so the roles swap (``U`` orthogonal, zero rows of ``Vt``).
    ``tol`` is the relative orthogonality threshold (default
    ``sqrt(max(p, n)) * eps``); ``max_sweeps`` bounds the number of sweeps of
    the convergence loop (each sweep visits all n (n - 1) / 2 column pairs).
    Meant for n <= ~12: the sweep is unrolled, so program size and compile
    time grow as n^2 (about 0.3 s at n = 3, 1.5 s at n = 8, 4.5 s at n = 12).
    """
    return _svd_jacobi(A, max_sweeps, tol)[:3]


def _svd_jacobi(A, max_sweeps=20, tol=None):
    """``svd_small`` plus the number of sweeps taken (for tests/diagnostics)."""
    A = _as_matrix(A, "svd_small")
    p, n = A.shape
    if p < n:
        U, s, Vt, it = _svd_jacobi(A.T, max_sweeps, tol)
        return Vt.T, s, U.T, it
    dtype = A.dtype
    if tol is None:
        tol = float(p) ** 0.5 * float(jnp.finfo(dtype).eps)
    eps = float(jnp.finfo(dtype).eps)
    sc, unsc = _pow2_scale(jnp.max(jnp.abs(A)))
    A = A * sc
    # Negligible squared column norm: (n eps ||A||_F)^2 (rounding noise).
    small = (n * eps) ** 2 * jnp.sum(A * A)
    W = jnp.concatenate([A, jnp.eye(n, dtype=dtype)], axis=0)  # (p + n, n)
    cols = tuple(W[:, j] for j in range(n))

    def sweep(cols):
        cols = list(cols)
        rotated = jnp.zeros((), bool)
        for i in range(n - 1):
            for j in range(i + 1, n):
                cols[i], cols[j], r = _jacobi_pair(cols[i], cols[j], p, tol, small)
                rotated = rotated | r
        return tuple(cols), rotated

    it = jnp.zeros((), jnp.int32)
    if n > 1:
        def cond(state):
            it, rotated, _ = state
            return rotated & (it < max_sweeps)

        def body(state):
            it, _, cols = state
            cols, rotated = sweep(cols)
            return it + 1, rotated, cols

        it, _, cols = lax.while_loop(cond, body, (it, jnp.ones((), bool), cols))

    W = jnp.stack(cols, axis=1)  # (p + n, n)
    s = jnp.sqrt(jnp.sum(W[:p] * W[:p], axis=0))
    if n > 1:
        # Sort by decreasing s with a one-hot permutation built from stable
        # ranks (ties by index); exact, and cheaper than argsort + gather.
        rank = jnp.zeros((n,), jnp.int32)
        idx = jnp.arange(n)
        for j in range(n):
            before = (s[j] > s) | ((s[j] == s) & (j < idx))
            rank = rank + before.astype(jnp.int32)
        P = (rank[:, None] == idx[None, :]).astype(dtype)
        W = W @ P
        s = s @ P
    U = _rdiv(W[:p], s[None, :])
    Vt = W[p:].T
    return U, s * unsc, Vt, it


# --------------------------------------------------------------------------
# Switches
# --------------------------------------------------------------------------


def use_small(n, m=None, *, batched=False):
    """Whether the unrolled kernels should be used (static Python ints only).

    ``use_small(n)``: for the SVD of a matrix with ``min(p, n) == n`` (n <= 4,
    or n <= 6 with ``batched=True``, i.e. when the caller is vmapped over
    many matrices). ``use_small(k, m)``: for the QR of an m x k matrix (only
    tiny ones: k <= 8 and m <= 16). See the module docstring for the timings
    behind these thresholds.
    """
    if m is not None:
        return n <= SMALL_QR_K_MAX and m <= SMALL_QR_M_MAX
    return n <= (SMALL_SVD_N_MAX_BATCHED if batched else SMALL_SVD_N_MAX)


def qr_r_auto(A, *, batched=False):
    """``R`` of ``A = Q R`` (k x k; rows zero-padded first if m < k): the
    unrolled Householder ``qr_r`` for tiny static shapes, LAPACK
    (``jnp.linalg.qr(mode="r")``) otherwise. ``batched`` is accepted for
    symmetry with ``svd_auto`` (the QR threshold does not depend on it)."""
    del batched
    m, k = A.shape
    if use_small(k, m):
        return qr_r(A)
    if m < k:
        A = jnp.concatenate([A, jnp.zeros((k - m, k), A.dtype)], axis=0)
    return jnp.linalg.qr(A, mode="r")


def svd_auto(A, *, batched=False, small=True):
    """Drop-in for ``jnp.linalg.svd(A, full_matrices=False)`` returning
    ``(U, s, Vt)``: one-sided Jacobi (``svd_small``) for small static shapes
    (``use_small(min(p, n), batched=batched)`` and ``max(p, n) <= 2 min(p, n)``),
    LAPACK otherwise. ``small=False`` always takes LAPACK: for callers whose
    steps are dominated by passes over data (chunked fits), where the few
    microseconds the unrolled kernel saves per step do not matter but its
    compile time (about 0.3 s of a chunked solver program) does."""
    p, n = A.shape
    r = min(p, n)
    if small and use_small(r, batched=batched) and max(p, n) <= 2 * r:
        return svd_small(A)
    U, s, Vt = jnp.linalg.svd(A, full_matrices=False)
    return U, s, Vt
