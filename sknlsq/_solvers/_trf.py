"""Trust Region Reflective (TRF) for bounded nonlinear least squares.

Mathematics (Branch, Coleman & Li 1999; as in scipy's ``optimize._lsq.trf``):
the bounds are handled by the Coleman-Li scaling ``v(x)``. With
``D = diag(v**0.5 * scale)`` the problem is solved in the scaled variables
``p = D p_h``, where the first-order optimality conditions of the bounded
problem become a system of equations whose Newton step is the solution of

    min ||J_h p_h + f||^2 + p_h^T diag(g * dv * scale) p_h,   ||p_h|| <= Delta,

``J_h = J D``. This is an ordinary trust-region least-squares problem on the
augmented matrix ``[J_h; diag(sqrt(g dv scale))]``; since ``J_h = Q R D`` the
augmented matrix reduces to ``[R D; diag(...)]`` (2n x n), whose SVD gives the
exact subproblem solution. A step that would leave the box is replaced by the
best of: the step scaled back to ``theta`` times the distance to the bound,
its reflection in the bound, and the scaled anti-gradient (Cauchy) step.
Without bounds ``v == 1``, the extra diagonal vanishes and TRF is a classical
trust-region Gauss-Newton method with an exact subproblem solver.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._common import (build_quadratic_1d, check_termination, cl_scaling_vector,
                      evaluate_quadratic, in_bounds, intersect_trust_region,
                      jac_scale, make_strictly_feasible, minimize_quadratic_1d,
                      norm, safe_div, solve_lsq_trust_region, step_size_to_bound,
                      update_tr_radius)
from ._problem import linearize, loss_scale, svd_options, trial_linearization
from ._smallla import svd_auto


class TRFState(NamedTuple):
    x: Any
    f_true: Any
    cost: Any
    R: Any
    qtf: Any
    g: Any
    scale_inv: Any
    Delta: Any
    alpha: Any
    g_norm: Any
    nfev: Any
    njev: Any
    nit: Any
    term: Any


def _g_norm(x, g, lb, ub, has_bounds):
    if has_bounds:
        v, _ = cl_scaling_vector(x, g, lb, ub)
        return jnp.max(jnp.abs(g * v))
    return jnp.max(jnp.abs(g))


def init(problem, x0, data, lb, ub, x_scale, opts, *, has_bounds, use_jac_scale, m):
    lin = linearize(problem, x0, data, loss_scale(opts))
    if use_jac_scale:
        _, scale_inv = jac_scale(lin.R)
    else:
        scale_inv = 1.0 / x_scale
    if has_bounds:
        v, dv = cl_scaling_vector(x0, lin.g, lb, ub)
        v = jnp.where(dv != 0, v * scale_inv, v)
    else:
        v = jnp.ones_like(x0)
    Delta = norm(x0 * scale_inv / jnp.sqrt(v))
    Delta = jnp.where(Delta == 0, 1.0, Delta)
    g_norm = _g_norm(x0, lin.g, lb, ub, has_bounds)
    term = jnp.where(g_norm < opts.gtol, 1, 0)
    zero = jnp.zeros((), jnp.int32)
    return TRFState(x0, lin.f_true, lin.cost, lin.R, lin.qtf, lin.g, scale_inv, Delta,
                    jnp.zeros(()), g_norm, zero + 1, zero + 1, zero, term.astype(jnp.int32))


def _select_step(x, R_h, diag_h, g_h, p, p_h, d, Delta, lb, ub, theta):
    """Scipy's choice among the constrained Newton, reflected and Cauchy steps."""
    inside = in_bounds(x + p, lb, ub)
    full_value = evaluate_quadratic(R_h, g_h, p_h, diag_h)

    p_stride, hits = step_size_to_bound(x, p, lb, ub)
    r_h = jnp.where(hits != 0, -p_h, p_h)
    r = d * r_h
    p_s = p * p_stride
    p_h_s = p_h * p_stride
    x_on_bound = x + p_s
    _, to_tr = intersect_trust_region(p_h_s, r_h, Delta)
    to_bound, _ = step_size_to_bound(x_on_bound, r, lb, ub)
    r_stride = jnp.minimum(to_bound, to_tr)
    pos = r_stride > 0
    r_stride_l = jnp.where(pos, (1 - theta) * p_stride / jnp.where(pos, r_stride, 1.0), 0.0)
    r_stride_u = jnp.where(pos, jnp.where(r_stride == to_bound, theta * to_bound, to_tr), -1.0)
    a, b, c = build_quadratic_1d(R_h, g_h, r_h, s0=p_h_s, diag=diag_h)
    r_t, r_value = minimize_quadratic_1d(a, b, r_stride_l, r_stride_u, c=c)
    r_h = r_h * r_t + p_h_s
    r = r_h * d
    r_value = jnp.where(r_stride_l <= r_stride_u, r_value, jnp.inf)

    p_t = p_s * theta
    p_h_t = p_h_s * theta
    p_value = evaluate_quadratic(R_h, g_h, p_h_t, diag_h)

    ag_h = -g_h
    ag = d * ag_h
    to_tr = Delta / norm(ag_h)
    to_bound, _ = step_size_to_bound(x, ag, lb, ub)
    ag_stride = jnp.where(to_bound < to_tr, theta * to_bound, to_tr)
    a, b, _ = build_quadratic_1d(R_h, g_h, ag_h, diag=diag_h)
    ag_stride, ag_value = minimize_quadratic_1d(a, b, 0.0, ag_stride)
    ag_h = ag_h * ag_stride
    ag = ag * ag_stride

    use_p = (p_value < r_value) & (p_value < ag_value)
    use_r = ~use_p & (r_value < p_value) & (r_value < ag_value)

    def pick(a_in, a_p, a_r, a_ag):
        return jnp.where(inside, a_in, jnp.where(use_p, a_p, jnp.where(use_r, a_r, a_ag)))

    return (pick(p, p_t, r, ag), pick(p_h, p_h_t, r_h, ag_h),
            -pick(full_value, p_value, r_value, ag_value))


def step(state: TRFState, problem, data, lb, ub, opts, ftol, xtol, gtol, *,
         has_bounds, use_jac_scale, m):
    x, g = state.x, state.g
    scale_inv = state.scale_inv
    scale = 1.0 / scale_inv
    n = x.shape[0]
    if has_bounds:
        v, dv = cl_scaling_vector(x, g, lb, ub)
        v = jnp.where(dv != 0, v * scale_inv, v)
        d = jnp.sqrt(v) * scale
        diag_h = g * dv * scale
        R_h = state.R * d[None, :]
        A = jnp.concatenate([R_h, jnp.diag(jnp.sqrt(diag_h))], axis=0)
        b = jnp.concatenate([state.qtf, jnp.zeros(n, x.dtype)])
    else:
        d = scale
        diag_h = None
        R_h = state.R * d[None, :]
        A, b = R_h, state.qtf
    g_h = d * g
    U, s, Vt = svd_auto(A, **svd_options(problem))
    uf = U.T @ b
    theta = jnp.maximum(0.995, 1.0 - state.g_norm)
    p_h, alpha = solve_lsq_trust_region(m, uf, s, Vt.T, state.Delta, state.alpha)
    p = d * p_h
    if has_bounds:
        stp, stp_h, predicted = _select_step(x, R_h, diag_h, g_h, p, p_h, d, state.Delta,
                                             lb, ub, theta)
        x_new = make_strictly_feasible(x + stp, lb, ub, rstep=0)
    else:
        stp, stp_h = p, p_h
        predicted = -evaluate_quadratic(R_h, g_h, p_h)
        x_new = x + stp

    f_new, cost_new, finite, lin_new = trial_linearization(
        problem, x_new, data, loss_scale(opts), state.R,
        lambda c, ok: ok & (state.cost - c > 0))
    step_h_norm = norm(stp_h)
    actual = state.cost - cost_new
    Delta_new, ratio = update_tr_radius(state.Delta, actual, predicted, step_h_norm,
                                        step_h_norm > 0.95 * state.Delta)
    term = check_termination(actual, state.cost, norm(stp), norm(x), ratio, ftol, xtol)
    term = jnp.where(finite, term, 0)
    alpha = jnp.where(finite & (term == 0), alpha * safe_div(state.Delta, Delta_new), alpha)
    Delta = jnp.where(finite, jnp.where(term == 0, Delta_new, state.Delta),
                      0.25 * step_h_norm)
    accept = finite & (actual > 0)

    def accepted(_):
        lin = lin_new if lin_new is not None else linearize(
            problem, x_new, data, loss_scale(opts), hint=state.R)
        si = jac_scale(lin.R, scale_inv)[1] if use_jac_scale else scale_inv
        return (x_new, lin.f_true, lin.cost, lin.R, lin.qtf, lin.g, si,
                _g_norm(x_new, lin.g, lb, ub, has_bounds))

    def rejected(_):
        return (x, state.f_true, state.cost, state.R, state.qtf, g, scale_inv, state.g_norm)

    x, f_true, cost, R, qtf, g, scale_inv, g_norm = jax.lax.cond(accept, accepted, rejected,
                                                                 None)
    term = jnp.where(accept & (g_norm < gtol), 1, term)
    return TRFState(x, f_true, cost, R, qtf, g, scale_inv, Delta, alpha, g_norm,
                    state.nfev + 1, state.njev + accept.astype(jnp.int32),
                    state.nit + accept.astype(jnp.int32), term.astype(jnp.int32))
