"""Shared numerics of the trust-region solvers, in pure JAX.

Every solver in this package works on the *reduced* form of the linearised
problem. With residuals ``f`` (length m) and Jacobian ``J`` (m x n) at the
current point, a thin QR factorisation ``J = Q R`` turns the trust-region
subproblem

    min_p ||J p + f||^2   subject to   ||D p|| <= Delta

into the n x n problem ``min_p ||R p + Q^T f||^2`` (the constant
``||f||^2 - ||Q^T f||^2`` does not depend on ``p``). The solvers therefore only
ever see ``R`` (n x n), ``qtf = Q^T f`` (n), the cost and the gradient
``g = J^T f = R^T qtf``. That is what makes a whole fit independent of how the
Jacobian was obtained: dense in memory, accumulated chunk by chunk (a TSQR
update of ``R``), or from a sparse product.

The helpers below follow the notation of scipy's ``optimize._lsq`` (Coleman-Li
scaling, reflective steps, the secular-equation solve of the trust-region
subproblem) and of MINPACK's ``lmder``; see

* M. A. Branch, T. F. Coleman, Y. Li, "A Subspace, Interior, and Conjugate
  Gradient Method for Large-Scale Bound-Constrained Minimization Problems",
  SIAM J. Sci. Comput. 21 (1999).
* J. J. More, "The Levenberg-Marquardt Algorithm: Implementation and Theory",
  Numerical Analysis, Lecture Notes in Mathematics 630 (1978).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = float(jnp.finfo(jnp.float64).eps)


# --------------------------------------------------------------------------
# Reduction of the linearised problem
# --------------------------------------------------------------------------


def qr_reduce(J, f):
    """Return ``(R, qtf)`` with ``J = Q R`` and ``qtf = Q^T f``.

    The QR factorisation of the augmented matrix ``[J | f]`` yields both at
    once without forming ``Q``: its leading n x n block is ``R`` and the first
    n entries of its last column are ``Q^T f``.
    """
    m, n = J.shape
    A = jnp.concatenate([J, f[:, None]], axis=1)
    if m < n + 1:
        A = jnp.concatenate([A, jnp.zeros((n + 1 - m, n + 1), A.dtype)], axis=0)
    Ra = jnp.linalg.qr(A, mode="r")
    return Ra[:n, :n], Ra[:n, n]


def column_norms(R):
    """Column norms of ``J``; QR preserves them, so they come from ``R``."""
    return jnp.sqrt(jnp.sum(R * R, axis=0))


def jac_scale(R, scale_inv_old=None):
    """Scipy's ``x_scale='jac'``: inverse scales are the Jacobian column norms,
    never decreasing over the iterations."""
    scale_inv = column_norms(R)
    if scale_inv_old is not None:
        scale_inv = jnp.maximum(scale_inv, scale_inv_old)
    scale_inv = jnp.where(scale_inv == 0, 1.0, scale_inv)
    return 1.0 / scale_inv, scale_inv


def norm(x):
    return jnp.sqrt(jnp.sum(x * x))


def safe_div(a, b):
    """``a / b`` with 0 where ``b == 0`` (no NaN leaks into unused branches)."""
    ok = b != 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


# --------------------------------------------------------------------------
# Trust-region subproblem (exact, via the SVD of the reduced matrix)
# --------------------------------------------------------------------------


def solve_lsq_trust_region(m, uf, s, V, Delta, alpha0, rtol=0.01, max_iter=10,
                           rescale=True):
    """Solve ``min ||A p + b||`` s.t. ``||p|| <= Delta`` given the SVD of ``A``.

    ``A = U diag(s) V^T`` and ``uf = U^T b``. The Levenberg-Marquardt parameter
    ``alpha`` solves the secular equation ``||p(alpha)|| = Delta`` by the
    safeguarded Newton iteration of More (1978), warm-started at ``alpha0``
    (``alpha0 == 0`` means "no warm start"). Returns ``(p, alpha)``; ``alpha``
    is 0 when the Gauss-Newton step lies inside the region. With ``rescale``
    (scipy's TRF) ``p`` is scaled to length ``Delta`` exactly; without it
    (MINPACK's LM) ``p`` is the step for the returned ``alpha``.
    """
    n = s.shape[0]
    suf = s * uf
    threshold = EPS * m * s[0]
    full_rank = (m >= n) & (s[-1] > threshold)

    if rescale:
        # scipy's TRF tries the Gauss-Newton step only at full rank.
        s_safe = jnp.where(full_rank, s, 1.0)
        p_gn = -V @ (uf / s_safe)
        gn_inside = full_rank & (norm(p_gn) <= Delta)
    else:
        # MINPACK's lmpar: for a rank-deficient Jacobian the Gauss-Newton
        # direction is a least-squares solution (here the minimum-norm one,
        # the singular values at or below the rank threshold dropped), and
        # it is taken where it fits the region. Otherwise the step would be
        # held at length Delta (par > 0) however near the minimum, so a
        # parameter the model ignores stalled the fit until max_nfev.
        # (Also the minimum-norm step of a chunked fit with fewer weighted
        # rows than parameters, where m counts only those rows.)
        kept = s > threshold
        p_gn = -V @ jnp.where(kept, uf / jnp.where(kept, s, 1.0), 0.0)
        gn_inside = norm(p_gn) <= Delta

    def phi_and_derivative(alpha):
        denom = s ** 2 + alpha
        denom = jnp.where(denom == 0, 1.0, denom)
        q = suf / denom
        p_norm = norm(q)
        p_norm_safe = jnp.where(p_norm == 0, 1.0, p_norm)
        phi = p_norm - Delta
        phi_prime = -jnp.sum(suf ** 2 / denom ** 3) / p_norm_safe
        return phi, phi_prime

    alpha_upper = norm(suf) / Delta
    phi0, phi0_prime = phi_and_derivative(0.0)
    alpha_lower = jnp.where(full_rank, -safe_div(phi0, phi0_prime), 0.0)
    reset = jnp.maximum(0.001 * alpha_upper, jnp.sqrt(alpha_lower * alpha_upper))
    alpha = jnp.where((alpha0 == 0) & ~full_rank, reset, alpha0)

    def body(carry):
        alpha, a_used, lower, upper, done, it = carry
        outside = (alpha < lower) | (alpha > upper)
        a = jnp.where(outside,
                      jnp.maximum(0.001 * upper, jnp.sqrt(lower * upper)), alpha)
        phi, phi_prime = phi_and_derivative(a)
        upper_n = jnp.where(phi < 0, a, upper)
        ratio = safe_div(phi, phi_prime)
        lower_n = jnp.maximum(lower, a - ratio)
        a_n = a - (phi + Delta) * ratio / Delta
        conv = jnp.abs(phi) < rtol * Delta
        keep = done
        return (jnp.where(keep, alpha, a_n), jnp.where(keep, a_used, a),
                jnp.where(keep, lower, lower_n), jnp.where(keep, upper, upper_n),
                done | conv, it + 1)

    # A while loop (not a fixed-count loop) so that the common cases cost
    # nothing: the Gauss-Newton step inside the region needs no iteration and
    # the warm-started iteration usually converges in one or two.
    alpha, a_used, _, _, _, _ = jax.lax.while_loop(
        lambda c: ~c[4] & (c[5] < max_iter), body,
        (alpha, alpha, alpha_lower, alpha_upper, gn_inside, jnp.zeros((), jnp.int32)))
    if not rescale:
        # Without the final rescaling (MINPACK's lmpar) the step must be the one
        # whose length was verified: use the last evaluated parameter, which
        # the safeguards keep inside [lower, upper].
        alpha = a_used
    p = -V @ (suf / (s ** 2 + alpha))
    if rescale:
        pn = norm(p)
        p = jnp.where(pn > 0, p * (Delta / jnp.where(pn > 0, pn, 1.0)), p)
    p = jnp.where(gn_inside, p_gn, p)
    alpha = jnp.where(gn_inside, 0.0, alpha)
    return p, alpha


def update_tr_radius(Delta, actual_reduction, predicted_reduction, step_norm,
                     bound_hit):
    """Scipy's trust-radius rule: shrink to a quarter of the step when the
    model was poor, double it when the model was good and the step hit the
    boundary of the region."""
    ratio = jnp.where(
        predicted_reduction > 0,
        actual_reduction / jnp.where(predicted_reduction > 0, predicted_reduction, 1.0),
        jnp.where((predicted_reduction == 0) & (actual_reduction == 0), 1.0, 0.0))
    Delta = jnp.where(ratio < 0.25, 0.25 * step_norm,
                      jnp.where((ratio > 0.75) & bound_hit, 2.0 * Delta, Delta))
    return Delta, ratio


def check_termination(dF, F, dx_norm, x_norm, ratio, ftol, xtol):
    """Scipy's ftol/xtol test; returns 0 (continue), 2 (ftol), 3 (xtol) or 4."""
    ftol_ok = (dF < ftol * F) & (ratio > 0.25)
    xtol_ok = dx_norm < xtol * (xtol + x_norm)
    return jnp.where(ftol_ok & xtol_ok, 4,
                     jnp.where(ftol_ok, 2, jnp.where(xtol_ok, 3, 0)))


# --------------------------------------------------------------------------
# Quadratic models (in terms of R: ||J s|| == ||R s||)
# --------------------------------------------------------------------------


def evaluate_quadratic(R, g, s, diag=None):
    """``0.5 s^T (J^T J + diag) s + g^T s``."""
    Js = R @ s
    q = jnp.dot(Js, Js)
    if diag is not None:
        q = q + jnp.dot(s * diag, s)
    return 0.5 * q + jnp.dot(g, s)


def build_quadratic_1d(R, g, s, diag=None, s0=None):
    """Coefficients of ``q(t) = a t^2 + b t + c`` for ``s0 + t s``."""
    v = R @ s
    a = jnp.dot(v, v)
    if diag is not None:
        a = a + jnp.dot(s * diag, s)
    a = 0.5 * a
    b = jnp.dot(g, s)
    c = 0.0
    if s0 is not None:
        u = R @ s0
        b = b + jnp.dot(u, v)
        c = 0.5 * jnp.dot(u, u) + jnp.dot(g, s0)
        if diag is not None:
            b = b + jnp.dot(s0 * diag, s)
            c = c + 0.5 * jnp.dot(s0 * diag, s0)
    return a, b, c


def minimize_quadratic_1d(a, b, lb, ub, c=0.0):
    """Minimise ``a t^2 + b t + c`` on ``[lb, ub]``; returns ``(t, value)``."""
    ext = -0.5 * b / jnp.where(a != 0, a, 1.0)
    use_ext = (a != 0) & (lb < ext) & (ext < ub)
    ts = jnp.stack([lb, ub, jnp.where(use_ext, ext, lb)])
    ys = ts * (a * ts + b) + c
    i = jnp.argmin(ys)
    return ts[i], ys[i]


# --------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------


def in_bounds(x, lb, ub):
    return jnp.all((x >= lb) & (x <= ub))


def step_size_to_bound(x, s, lb, ub):
    """Largest ``t`` with ``x + t s`` feasible, and which bounds it hits
    (-1 lower, +1 upper, 0 none) in the sense of scipy's helper."""
    nz = s != 0
    s_safe = jnp.where(nz, s, 1.0)
    steps = jnp.where(nz, jnp.maximum((lb - x) / s_safe, (ub - x) / s_safe), jnp.inf)
    min_step = jnp.min(steps)
    hits = jnp.where(steps == min_step, jnp.sign(s), 0.0)
    return min_step, hits


def intersect_trust_region(x, s, Delta):
    """Roots ``t1 <= t2`` of ``||x + t s|| = Delta`` (``x`` inside the region)."""
    a = jnp.dot(s, s)
    b = jnp.dot(x, s)
    c = jnp.dot(x, x) - Delta ** 2
    d = jnp.sqrt(jnp.maximum(b * b - a * c, 0.0))
    q = -(b + jnp.where(b >= 0, d, -d))
    a_safe = jnp.where(a == 0, 1.0, a)
    q_safe = jnp.where(q == 0, 1.0, q)
    t1 = q / a_safe
    t2 = c / q_safe
    return jnp.minimum(t1, t2), jnp.maximum(t1, t2)


def cl_scaling_vector(x, g, lb, ub):
    """Coleman-Li scaling vector ``v`` and its derivative sign ``dv``."""
    up = (g < 0) & jnp.isfinite(ub)
    lo = (g > 0) & jnp.isfinite(lb)
    v = jnp.where(lo, x - lb, jnp.where(up, ub - x, 1.0))
    dv = jnp.where(lo, 1.0, jnp.where(up, -1.0, 0.0))
    return v, dv


def find_active_constraints(x, lb, ub, rtol=1e-10):
    """-1 where a lower bound is active, +1 for an upper bound, 0 otherwise."""
    lower_dist = x - lb
    upper_dist = ub - x
    lower_thr = rtol * jnp.maximum(1.0, jnp.abs(lb))
    upper_thr = rtol * jnp.maximum(1.0, jnp.abs(ub))
    lower = jnp.isfinite(lb) & (lower_dist <= jnp.minimum(upper_dist, lower_thr))
    upper = jnp.isfinite(ub) & (upper_dist <= jnp.minimum(lower_dist, upper_thr))
    return jnp.where(upper, 1, jnp.where(lower, -1, 0))


def make_strictly_feasible(x, lb, ub, rstep=1e-10):
    """Move ``x`` strictly inside the bounds (scipy's rule)."""
    active = find_active_constraints(x, lb, ub, rstep)
    if rstep == 0:
        x_new = jnp.where(active == -1, jnp.nextafter(lb, ub), x)
        x_new = jnp.where(active == 1, jnp.nextafter(ub, lb), x_new)
    else:
        x_new = jnp.where(active == -1, lb + rstep * jnp.maximum(1.0, jnp.abs(lb)), x)
        x_new = jnp.where(active == 1, ub - rstep * jnp.maximum(1.0, jnp.abs(ub)), x_new)
    tight = (x_new < lb) | (x_new > ub)
    return jnp.where(tight, 0.5 * (lb + ub), x_new)
