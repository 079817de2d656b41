"""Levenberg-Marquardt with MINPACK's (``lmder``) step control.

Mathematics (More 1978): at ``x`` with residuals ``f`` and Jacobian ``J`` the
step solves

    min ||J p + f||^2   subject to   ||D p|| <= Delta,

whose solution is ``p = -(J^T J + par D^T D)^{-1} J^T f`` for the
Levenberg-Marquardt parameter ``par >= 0`` that makes ``||D p||`` equal to
``Delta`` within 10% (or ``par = 0`` when the Gauss-Newton step is shorter).
In the scaled variables ``p_h = D p`` this is the trust-region problem for
``J D^{-1} = Q (R D^{-1})``, solved exactly through the SVD of the n x n
matrix ``R D^{-1}``. ``D`` holds the running maxima of the Jacobian column
norms (MINPACK ``mode=1``, scipy's ``x_scale='jac'``) or ``1 / x_scale``.

The acceptance rule (``ratio >= 1e-4``), the radius update and the
convergence tests on the *relative* actual and predicted reductions of the
sum of squares are MINPACK's, so that ``method='lm'`` behaves like
``scipy.optimize.leastsq``. Results use the common status codes (1 gtol,
2 ftol, 3 xtol, 4 both); MINPACK's "tolerance too small" outcomes (its info
6, 7, 8) mean the requested accuracy is below machine precision and are
reported as the corresponding tolerance being met.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._common import EPS, column_norms, norm, safe_div, solve_lsq_trust_region
from ._problem import linearize, loss_scale, svd_options, trial_linearization
from ._smallla import svd_auto

class LMState(NamedTuple):
    x: Any
    f_true: Any
    cost: Any
    R: Any
    qtf: Any
    g: Any
    diag: Any
    Delta: Any
    par: Any
    xnorm: Any
    nfev: Any
    njev: Any
    nit: Any
    term: Any


def _gnorm(cost, g, R):
    """MINPACK's scaled gradient: max_j |cos(angle(f, J[:, j]))|."""
    fnorm = jnp.sqrt(2.0 * cost)
    cn = column_norms(R)
    return jnp.where(fnorm == 0, 0.0, jnp.max(safe_div(jnp.abs(g), fnorm * cn)))


def init(problem, x0, data, lb, ub, x_scale, opts, *, has_bounds, use_jac_scale, m):
    lin = linearize(problem, x0, data, loss_scale(opts))
    if use_jac_scale:
        cn = column_norms(lin.R)
        diag = jnp.where(cn == 0, 1.0, cn)
    else:
        diag = 1.0 / x_scale
    xnorm = norm(diag * x0)
    Delta = jnp.where(xnorm == 0, opts.factor, opts.factor * xnorm)
    gnorm = _gnorm(lin.cost, lin.g, lin.R)
    term = jnp.where((gnorm <= opts.gtol) | (gnorm <= EPS), 1, 0).astype(jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    return LMState(x0, lin.f_true, lin.cost, lin.R, lin.qtf, lin.g, diag, Delta,
                   jnp.zeros(()), xnorm, zero + 1, zero + 1, zero, term)


def step(state: LMState, problem, data, lb, ub, opts, ftol, xtol, gtol, *,
         has_bounds, use_jac_scale, m):
    x, D = state.x, state.diag
    fnorm = jnp.sqrt(2.0 * state.cost)
    R_h = state.R / D[None, :]
    U, s, Vt = svd_auto(R_h, **svd_options(problem))
    uf = U.T @ state.qtf
    p_h, par = solve_lsq_trust_region(m, uf, s, Vt.T, state.Delta, state.par,
                                      rtol=0.1, rescale=False)
    p = p_h / D
    x_new = x + p
    pnorm = norm(p_h)
    first = state.nit == 0
    Delta = jnp.where(first, jnp.minimum(state.Delta, pnorm), state.Delta)

    fn = jnp.where(fnorm == 0, 1.0, fnorm)
    temp1 = norm(state.R @ p) / fn
    temp2 = jnp.sqrt(par) * pnorm / fn
    prered = temp1 ** 2 + temp2 ** 2 / 0.5
    dirder = -(temp1 ** 2 + temp2 ** 2)

    def reduction(cost_new, finite):
        fnorm1 = jnp.where(finite, jnp.sqrt(2.0 * cost_new), jnp.inf)
        actred = jnp.where(0.1 * fnorm1 < fnorm, 1.0 - (fnorm1 / fn) ** 2, -1.0)
        ratio = safe_div(actred, prered)
        return fnorm1, actred, ratio, finite & (ratio >= 1e-4)

    f_new, cost_new, finite, lin_new = trial_linearization(
        problem, x_new, data, loss_scale(opts), state.R,
        lambda c, ok: reduction(c, ok)[3])
    fnorm1, actred, ratio, accept = reduction(cost_new, finite)

    # Radius and parameter update.
    shrink = ratio <= 0.25
    temp = jnp.where(actred >= 0, 0.5, 0.5 * safe_div(dirder, dirder + 0.5 * actred))
    temp = jnp.where((0.1 * fnorm1 >= fnorm) | (temp < 0.1), 0.1, temp)
    grow = ~shrink & ((par == 0) | (ratio >= 0.75))
    Delta_new = jnp.where(shrink, temp * jnp.minimum(Delta, pnorm / 0.1),
                          jnp.where(grow, pnorm / 0.5, Delta))
    par_new = jnp.where(shrink, par / temp, jnp.where(grow, 0.5 * par, par))

    def accepted(_):
        lin = lin_new if lin_new is not None else linearize(
            problem, x_new, data, loss_scale(opts), hint=state.R)
        diag = jnp.maximum(D, column_norms(lin.R)) if use_jac_scale else D
        return (x_new, lin.f_true, lin.cost, lin.R, lin.qtf, lin.g, diag,
                norm(D * x_new), _gnorm(lin.cost, lin.g, lin.R))

    def rejected(_):
        return (x, state.f_true, state.cost, state.R, state.qtf, state.g, D, state.xnorm,
                jnp.inf)

    x, f_true, cost, R, qtf, g, diag, xnorm, gnorm = jax.lax.cond(accept, accepted,
                                                                  rejected, None)

    ftol_ok = ((jnp.abs(actred) <= ftol) & (prered <= ftol) & (0.5 * ratio <= 1.0)) | (
        (jnp.abs(actred) <= EPS) & (prered <= EPS) & (0.5 * ratio <= 1.0))
    xtol_ok = (Delta_new <= xtol * xnorm) | (Delta_new <= EPS * xnorm)
    exact = fnorm == 0
    term = jnp.where(ftol_ok & xtol_ok, 4, jnp.where(ftol_ok | exact, 2,
                                                     jnp.where(xtol_ok, 3, 0)))
    term = jnp.where((term == 0) & accept & ((gnorm <= gtol) | (gnorm <= EPS)), 1, term)
    term = jnp.where(finite | exact, term, 0)
    return LMState(x, f_true, cost, R, qtf, g, diag, Delta_new, par_new, xnorm,
                   state.nfev + 1, state.njev + accept.astype(jnp.int32),
                   state.nit + accept.astype(jnp.int32), term.astype(jnp.int32))
