"""Unrolled, branch-free dense linear algebra for tiny matrices.

Every solver iteration reduces the Jacobian by a thin QR factorisation of the
augmented matrix ``[J | f]`` (m x k, k = n + 1 columns, n parameters) and then
takes the SVD of an n x n (or 2n x n) matrix. Under ``jax.vmap`` over
thousands of curves XLA lowers ``jnp.linalg.qr`` / ``jnp.linalg.svd`` to one
LAPACK call per matrix, each with a fixed overhead that dwarfs the arithmetic
when n is a handful. The kernels below are instead written with Python loops
over the (static, small) number of columns, so that tracing unrolls them into
a fixed sequence of elementwise operations and reductions over the rows: under
``vmap`` every one of those is a single vectorised operation over the whole
batch. There is no data-dependent Python control flow (safe under ``jit``,
``vmap`` and inside ``lax.while_loop``), and every division is guarded, so
zero columns and zero matrices give zeros, never NaN.

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
against the same masked vector ``x[1:]`` in one pass. When ``sigma2 == 0``
(``x`` already a multiple of ``e1``, including a zero column) no reflection is
applied and ``beta = alpha``, exactly as ``dlarfg`` does; so, barring rounding,
``R`` has the same signs as LAPACK's (``dgeqrf``). ``Q`` is never formed.
Householder QR is backward stable (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., Thm. 19.4): ``R^T R = A^T A + O(eps ||A||^2)``
and ``R`` has the singular values of ``A`` to ``O(eps ||A||)``. Each column is
first scaled by an exact power of two (its largest entry then lies in
[0.5, 1)), so that squaring never overflows or underflows for entries anywhere
in the floating-point range; the scaling is undone exactly on ``R``
(``A D^-1 = Q R_s`` implies ``A = Q (R_s D)``).

SVD: one-sided Jacobi (``svd_small``)
-------------------------------------
Hestenes (1958); Demmel & Veselic, "Jacobi's method is more accurate than QR",
SIAM J. Matrix Anal. Appl. 13 (1992); Golub & Van Loan Sec. 8.6.4; LAPACK
``dgesvj`` (Drmac & Veselic 2008) for the stopping rule. The columns of
``W = A`` (p x n) are made mutually orthogonal by plane rotations applied from
the right, ``W <- W J(i, j, theta)``, accumulated in ``V``. For a pair of
columns ``x, y`` with ``alpha = x.x``, ``beta = y.y``, ``gamma = x.y``, the
rotation that zeroes ``gamma`` (Rutishauser's formulas) is

    zeta = (beta - alpha) / (2 gamma),  t = sign(zeta) / (|zeta| + sqrt(1 + zeta^2)),
    c = 1 / sqrt(1 + t^2),  s = c t,   x' = c x - s y,  y' = s x + c y,

after which ``x'.x' = alpha - t gamma`` and ``y'.y' = beta + t gamma``. A pair
is rotated only if ``|gamma| > tol sqrt(alpha beta)`` with
``tol = sqrt(p) eps`` (as ``dgesvj``); otherwise ``t = 0``. In addition the two
new columns are swapped whenever the first would be the shorter one, so the
longer column always moves to the lower index (a sorting variant in the spirit
of de Rijk, SIAM J. Sci. Stat. Comput. 10 (1989), which also speeds up
convergence). The pairs are visited in cyclic-by-rows order and a sweep
touches each pair once; the loop (``lax.while_loop``) stops after the first
sweep in which no pair was rotated, or after ``max_sweeps``. That last sweep
only swapped, i.e. it was a selection sort, so the columns come out ordered
by decreasing norm; a final rank-based permutation makes ``s`` sorted even if
``max_sweeps`` was hit. Then ``s_i = ||W[:, i]||``, ``U[:, i] = W[:, i] / s_i``
and ``A = U diag(s) V^T``. One-sided Jacobi is backward stable columnwise and
computes the singular values to high accuracy; the quadratic convergence of
cyclic Jacobi (Wilkinson 1962; van Kempen 1966) makes a handful of sweeps
enough in float64 for n <= 12 (typically 4-7; ``max_sweeps`` defaults to 16).
The matrix is scaled by a power of two (largest entry in [0.5, 1)) first so the
inner products neither overflow nor underflow, and ``s`` is scaled back.

Zero singular values: a column that ends up exactly zero gives ``s_i = 0``, a
**zero** column ``U[:, i]`` (not a unit vector) and a genuine unit column of
``V``; ``V`` is always orthogonal. Callers that only use ``U^T b``, ``s`` and
``V`` (the trust-region solvers) are unaffected: the corresponding component
of ``U^T b`` is 0 and it is multiplied by ``s_i = 0`` or dropped anyway.
``A = U diag(s) V^T`` holds in every case.

Which kernel to use (``use_small``, ``qr_r_auto``, ``svd_auto``): the unrolled
code grows as n^2 (QR) or n^2 per sweep (SVD) in program size, so the switch
helpers only pick it for small static shapes and fall back to LAPACK
otherwise (see the thresholds below, measured on CPU under ``vmap``).

These functions do not define derivatives: ``jax.grad`` through ``qr_r`` works
(it is plain jnp code) but differentiating ``svd_small`` goes through a
``while_loop`` and is not supported in reverse mode; the solvers never
differentiate through either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["qr_r", "svd_small", "use_small", "qr_r_auto", "svd_auto",
           "SMALL_N_MAX", "SMALL_QR_M_MAX"]

#: Largest number of columns for which the unrolled kernels are used by
#: ``use_small`` / ``qr_r_auto`` / ``svd_auto``.
SMALL_N_MAX = 8
#: Largest number of rows for which ``qr_r_auto`` uses the unrolled QR (above
#: it the memory-streaming Householder loses to LAPACK, which works on each
#: matrix in cache).
SMALL_QR_M_MAX = 64


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _pow2_scale(amax):
    """Exact powers of two ``(scale, unscale)`` with ``amax * scale`` in
    [0.5, 1); 1 for zero, subnormal-free, non-finite input."""
    _, e = jnp.frexp(jnp.where(jnp.isfinite(amax), amax, 0.0))
    e = jnp.clip(e, -1000, 1000)
    return jnp.ldexp(jnp.ones_like(amax), -e), jnp.ldexp(jnp.ones_like(amax), e)


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
    A = jnp.asarray(A)
    if A.ndim != 2:
        raise ValueError(f"qr_r expects a 2-D array, got shape {A.shape}")
    if not jnp.issubdtype(A.dtype, jnp.floating):
        A = A.astype(jnp.result_type(float))
    m, k = A.shape
    if m < k:
        A = jnp.concatenate([A, jnp.zeros((k - m, k), A.dtype)], axis=0)
        m = k
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


def _dot_rows(x, y, p):
    """``sum(x[:p] * y[:p])`` written as p elementwise products and adds (the
    column length is tiny: an explicit sum vectorises over the batch better
    than a reduction over a minor axis of length p)."""
    acc = x[0] * y[0]
    for r in range(1, p):
        acc = acc + x[r] * y[r]
    return acc


def _jacobi_pair(x, y, p, tol, small):
    """Rotate (and possibly swap) the columns ``x, y`` (length p + n: the
    column of A on top of the column of V). Returns the new pair and whether
    a rotation was applied. Columns with squared norm ``<= small`` are
    rounding noise and are never rotated (else rank-deficient matrices would
    keep rotating noise and never converge)."""
    alpha = _dot_rows(x, x, p)
    beta = _dot_rows(y, y, p)
    gamma = _dot_rows(x, y, p)
    rot = ((jnp.abs(gamma) > tol * jnp.sqrt(alpha * beta))
           & (jnp.minimum(alpha, beta) > small))
    g = jnp.where(rot, gamma, 1.0)
    zeta = (beta - alpha) / (2.0 * g)
    big = jnp.abs(zeta) > 1e100  # zeta**2 would overflow; t ~ 1 / (2 zeta)
    zs = jnp.where(big, 1.0, zeta)
    t = jnp.where(big, 0.5 / jnp.where(big, zeta, 1.0),
                  jnp.where(zs >= 0, 1.0, -1.0) / (jnp.abs(zs) + jnp.sqrt(1.0 + zs * zs)))
    t = jnp.where(rot, t, 0.0)
    c = lax.rsqrt(1.0 + t * t)
    s = c * t
    tg = t * gamma
    swap = (alpha - tg) < (beta + tg)
    # Unswapped: x' = c x - s y, y' = s x + c y. Swapped: (x', y') <- (y', x').
    cx1 = jnp.where(swap, s, c)
    cy1 = jnp.where(swap, c, -s)
    cx2 = jnp.where(swap, c, s)
    cy2 = jnp.where(swap, -s, c)
    return cx1 * x + cy1 * y, cx2 * x + cy2 * y, rot


def svd_small(A, *, max_sweeps=16, tol=None):
    """Thin SVD ``A = U diag(s) Vt`` of a small p x n matrix (one-sided Jacobi).

    Returns ``(U, s, Vt)`` shaped like ``jnp.linalg.svd(A, full_matrices=False)``:
    ``U`` (p x r), ``s`` (r,) non-negative and sorted in decreasing order, ``Vt``
    (r x n), r = min(p, n). Columns of ``U`` for zero singular values are zero
    vectors (see the module docstring); ``Vt`` is always orthogonal. ``tol``
    is the relative orthogonality threshold (default ``sqrt(p) * eps``);
    ``max_sweeps`` bounds the number of sweeps of the convergence loop.
    """
    return _svd_jacobi(A, max_sweeps, tol)[:3]


def _svd_jacobi(A, max_sweeps=16, tol=None):
    """``svd_small`` plus the number of sweeps taken (for tests/diagnostics)."""
    A = jnp.asarray(A)
    if A.ndim != 2:
        raise ValueError(f"svd_small expects a 2-D array, got shape {A.shape}")
    if not jnp.issubdtype(A.dtype, jnp.floating):
        A = A.astype(jnp.result_type(float))
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

    norms = [jnp.sqrt(_dot_rows(c, c, p)) for c in cols]
    if n > 1:
        # Stable ranks (ties by index): a permutation even if max_sweeps was hit.
        ranks = []
        for i in range(n):
            r = jnp.zeros((), jnp.int32)
            for j in range(n):
                if j != i:
                    before = (norms[j] > norms[i]) | ((norms[j] == norms[i]) & (j < i))
                    r = r + before.astype(jnp.int32)
            ranks.append(r)
        cols_sorted, norms_sorted = [], []
        for q in range(n):
            sel = [ranks[i] == q for i in range(n)]
            c = jnp.where(sel[0], cols[0], 0.0)
            s_q = jnp.where(sel[0], norms[0], 0.0)
            for i in range(1, n):
                c = jnp.where(sel[i], cols[i], c)
                s_q = jnp.where(sel[i], norms[i], s_q)
            cols_sorted.append(c)
            norms_sorted.append(s_q)
        cols, norms = cols_sorted, norms_sorted
    W = jnp.stack(cols, axis=1)
    s = jnp.stack(norms)
    U = _rdiv(W[:p], s[None, :])
    Vt = W[p:].T
    return U, s * unsc, Vt, it


# --------------------------------------------------------------------------
# Switches
# --------------------------------------------------------------------------


def use_small(n, m=None):
    """Whether the unrolled kernels should be used for n columns (and, for the
    QR, m rows). Static shapes only (Python ints)."""
    if n > SMALL_N_MAX:
        return False
    return m is None or m <= SMALL_QR_M_MAX


def qr_r_auto(A):
    """``R`` of ``A = Q R`` (k x k, rows zero-padded if m < k): the unrolled
    Householder for small static shapes, LAPACK (``jnp.linalg.qr``) otherwise."""
    m, k = A.shape
    if use_small(k, m):
        return qr_r(A)
    if m < k:
        A = jnp.concatenate([A, jnp.zeros((k - m, k), A.dtype)], axis=0)
    return jnp.linalg.qr(A, mode="r")


def svd_auto(A):
    """Drop-in for ``jnp.linalg.svd(A, full_matrices=False)``: one-sided Jacobi
    for small static shapes, LAPACK otherwise."""
    if use_small(min(A.shape)) and max(A.shape) <= 2 * SMALL_N_MAX:
        return svd_small(A)
    return jnp.linalg.svd(A, full_matrices=False)
