"""Dogleg in a rectangular trust region ("dogbox") for bounded least squares.

Mathematics (Voglis & Lagaris 2004; as in scipy's ``optimize._lsq.dogbox``):
the trust region is the box ``|p_i| <= Delta * scale_i``, intersected with
the bounds. Variables sitting on a bound with the gradient pushing outward
form the active set and are frozen for the step. On the free variables the
Gauss-Newton step (minimum-norm least-squares solution, from the SVD of the
reduced factor ``R`` restricted to the free columns) is taken when it lies in
the feasible box; otherwise the dogleg path from the Cauchy point towards the
Gauss-Newton point is followed to the box boundary. Variables whose step hits
a bound become active in the next iteration.

Frozen variables are handled with masks rather than by slicing, so every
iteration has the same shapes and the whole solve compiles to one program.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._common import (EPS, check_termination, evaluate_quadratic, in_bounds, jac_scale,
                      minimize_quadratic_1d, norm, step_size_to_bound, update_tr_radius)
from ._problem import linearize, loss_scale, svd_options, trial_cost
from ._smallla import svd_auto


class DogboxState(NamedTuple):
    x: Any
    f_true: Any
    cost: Any
    R: Any
    qtf: Any
    g: Any
    scale_inv: Any
    Delta: Any
    on_bound: Any
    g_norm: Any
    nfev: Any
    njev: Any
    nit: Any
    term: Any


def _g_norm(on_bound, g):
    active = on_bound * g < 0
    return jnp.max(jnp.abs(jnp.where(active, 0.0, g)))


def init(problem, x0, data, lb, ub, x_scale, opts, *, has_bounds, use_jac_scale, m):
    lin = linearize(problem, x0, data, loss_scale(opts))
    scale_inv = jac_scale(lin.R)[1] if use_jac_scale else 1.0 / x_scale
    Delta = jnp.max(jnp.abs(x0 * scale_inv))
    Delta = jnp.where(Delta == 0, 1.0, Delta)
    on_bound = jnp.where(x0 == lb, -1.0, jnp.where(x0 == ub, 1.0, 0.0))
    g_norm = _g_norm(on_bound, lin.g)
    zero = jnp.zeros((), jnp.int32)
    term = jnp.where(g_norm < opts.gtol, 1, 0).astype(jnp.int32)
    return DogboxState(x0, lin.f_true, lin.cost, lin.R, lin.qtf, lin.g, scale_inv, Delta,
                       on_bound, g_norm, zero + 1, zero + 1, zero, term)


def _dogleg_step(newton, g, a, b, tr_bounds, lb_c, ub_c, free):
    """Dogleg path inside the box ``[max(lb-x, -tr), min(ub-x, tr)]``."""
    lb_total = jnp.where(free, jnp.maximum(lb_c, -tr_bounds), -jnp.inf)
    ub_total = jnp.where(free, jnp.minimum(ub_c, tr_bounds), jnp.inf)
    orig_l = lb_total == lb_c
    orig_u = ub_total == ub_c
    tr_l = lb_total == -tr_bounds
    tr_u = ub_total == tr_bounds
    zeros = jnp.zeros_like(newton)
    newton_ok = in_bounds(newton, lb_total, ub_total)

    to_bounds, _ = step_size_to_bound(zeros, -g, lb_total, ub_total)
    cauchy = -minimize_quadratic_1d(a, b, 0.0, to_bounds)[0] * g
    diff = newton - cauchy
    size, hits = step_size_to_bound(cauchy, diff, lb_total, ub_total)
    bound_hits = jnp.where((hits < 0) & orig_l, -1.0, jnp.where((hits > 0) & orig_u, 1.0, 0.0))
    tr_hit = jnp.any(((hits < 0) & tr_l) | ((hits > 0) & tr_u))
    dog = cauchy + size * diff
    return (jnp.where(newton_ok, newton, dog), jnp.where(newton_ok, 0.0, bound_hits),
            jnp.where(newton_ok, False, tr_hit))


def step(state: DogboxState, problem, data, lb, ub, opts, ftol, xtol, gtol, *,
         has_bounds, use_jac_scale, m):
    x, g, on_bound = state.x, state.g, state.on_bound
    scale_inv = state.scale_inv
    scale = 1.0 / scale_inv
    free = ~(on_bound * g < 0)
    g_free = jnp.where(free, g, 0.0)
    R_free = state.R * free[None, :]

    # Minimum-norm Gauss-Newton step on the free variables.
    U, s, Vt = svd_auto(R_free, **svd_options(problem))
    keep = s > EPS * jnp.maximum(m, x.shape[0]) * s[0]
    s_inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    newton = jnp.where(free, -(Vt.T @ (s_inv * (U.T @ state.qtf))), 0.0)
    Rg = R_free @ g_free
    a = 0.5 * jnp.dot(Rg, Rg)
    b = -jnp.dot(g_free, g_free)

    tr_bounds = state.Delta * scale
    stp, hits, tr_hit = _dogleg_step(newton, g_free, a, b, tr_bounds, lb - x, ub - x, free)
    stp = jnp.where(free, stp, 0.0)
    predicted = -evaluate_quadratic(R_free, g_free, stp)
    x_new = jnp.clip(x + stp, lb, ub)

    f_new, cost_new, finite = trial_cost(problem, x_new, data, loss_scale(opts))
    step_h_norm = jnp.max(jnp.abs(stp * scale_inv))
    actual = state.cost - cost_new
    Delta_new, ratio = update_tr_radius(state.Delta, actual, predicted, step_h_norm, tr_hit)
    term = check_termination(actual, state.cost, norm(stp), norm(x), ratio, ftol, xtol)
    term = jnp.where(finite, term, 0)
    Delta = jnp.where(finite, Delta_new, 0.25 * step_h_norm)
    accept = finite & (actual > 0)

    def accepted(_):
        ob = jnp.where(free, hits, on_bound)
        xn = jnp.where(ob == -1, lb, jnp.where(ob == 1, ub, x_new))
        lin = linearize(problem, xn, data, loss_scale(opts), hint=state.R)
        si = jac_scale(lin.R, scale_inv)[1] if use_jac_scale else scale_inv
        return xn, lin.f_true, lin.cost, lin.R, lin.qtf, lin.g, si, ob, _g_norm(ob, lin.g)

    def rejected(_):
        return (x, state.f_true, state.cost, state.R, state.qtf, g, scale_inv, on_bound,
                state.g_norm)

    x, f_true, cost, R, qtf, g, scale_inv, on_bound, g_norm = jax.lax.cond(
        accept, accepted, rejected, None)
    term = jnp.where(accept & (g_norm < gtol), 1, term)
    return DogboxState(x, f_true, cost, R, qtf, g, scale_inv, Delta, on_bound, g_norm,
                       state.nfev + 1, state.njev + accept.astype(jnp.int32),
                       state.nit + accept.astype(jnp.int32), term.astype(jnp.int32))
