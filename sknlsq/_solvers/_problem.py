"""The least-squares problem as the solvers see it, and its linearisation.

A :class:`Problem` bundles two pure functions of ``(x, data)``: the residual
vector ``f`` and the pair ``(f, J)``. ``data`` is any pytree of arrays (the
observations, weights, masks...), passed as a *traced* argument so that one
compiled program serves every dataset of the same shape. The robust ``loss``
is part of the problem because it changes the objective.

:func:`linearize` evaluates ``(f, J)``, applies the robust-loss rescaling and
reduces the result to the n x n quantities every solver works on (see
``_common``): the cost, ``R``, ``Q^T f`` and the gradient ``g = J^T f``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp

from ._common import qr_reduce
from ._losses import loss_cost, scale_for_loss


class Problem(NamedTuple):
    """Static description of a residual function (hashable, so it can key a
    compiled-program cache)."""

    fun: Callable[[Any, Any], Any]
    fun_jac: Callable[[Any, Any], Any]
    loss: str = "linear"


class Linearization(NamedTuple):
    f_true: Any  # residuals before robust-loss rescaling (m,)
    cost: Any  # 0.5 * sum(rho(f**2))
    R: Any  # (n, n) triangular factor of the (loss-scaled) Jacobian
    qtf: Any  # (n,) Q^T f of the loss-scaled residuals
    g: Any  # (n,) gradient J^T f


def linearize(problem: Problem, x, data, f_scale) -> Linearization:
    f, J = problem.fun_jac(x, data)
    cost, Js, fs = scale_for_loss(problem.loss, J, f, f_scale)
    R, qtf = qr_reduce(Js, fs)
    return Linearization(f, cost, R, qtf, R.T @ qtf)


def trial_cost(problem: Problem, x, data, f_scale):
    """Residuals, cost and finiteness at a trial point (no Jacobian)."""
    f = problem.fun(x, data)
    finite = jnp.all(jnp.isfinite(f))
    cost = loss_cost(problem.loss, f, f_scale)
    return f, jnp.where(finite, cost, jnp.inf), finite
