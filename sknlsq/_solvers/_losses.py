"""Robust loss functions ``rho(z)`` of ``z = (f / f_scale)**2``, in pure JAX.

Each returns ``(rho, rho', rho'')`` as in scipy's ``least_squares``. The solver
uses them through :func:`loss_cost` (the objective ``0.5 * sum(rho)``) and
:func:`scale_for_loss`, which rescales ``J`` and ``f`` so that the Gauss-Newton
model of the robust objective becomes an ordinary least-squares model
(Triggs et al., "Bundle Adjustment - A Modern Synthesis", 2000).

The loss a compiled program sees is ``"linear"`` or ``"robust"``
(:func:`static_loss`): the robust losses share one program and pick their
``rho`` at run time by :func:`loss_id`, passed with ``f_scale`` as the pair
``(f_scale, loss_id)``, so that a sweep over losses (a grid search, a user
trying one after another) compiles once. Under ``jax.vmap`` with an unbatched
id the selection stays a branch.

Sample weights as frequencies. Both functions take optional per-point
multipliers ``s`` of ``f_scale``: point ``i`` then has the loss scale
``C_i = f_scale * s_i``. With ``s_i = sqrt(w_i)`` and the residual already
multiplied by ``sqrt(w_i)`` (as the problems do with a sample weight ``w``),

    C_i**2 rho((sqrt(w_i) r_i)**2 / C_i**2) = w_i * f_scale**2 rho(r_i**2 / f_scale**2),

so weight ``k`` is exactly the point repeated ``k`` times, in the cost and in
the rescaled ``J`` and ``f`` of the Gauss-Newton model (``rho`` sees the same
argument, and the rescaled rows carry a factor ``sqrt(w_i)``: their
contribution to ``J^T J`` and ``J^T f`` is ``w_i`` times that of one copy).
Where ``s_i == 0`` the residual and Jacobian row are zero too; the scale is
then ``f_scale`` (no 0/0), ``rho(0) = 0`` and the rows stay zero. Without
``s`` (``None``) nothing is added to the computation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._common import EPS

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")
ROBUST = LOSSES[1:]


def static_loss(loss):
    """The loss as compiled programs know it: ``"linear"`` or ``"robust"``."""
    return "linear" if loss == "linear" else "robust"


def loss_id(loss):
    """The run-time index of a robust loss in :data:`ROBUST` (0 for linear)."""
    return ROBUST.index(loss) if loss in ROBUST else 0


def _split(f_scale):
    """``(f_scale, loss_id)`` from a scalar or the pair."""
    if isinstance(f_scale, tuple):
        return f_scale
    return f_scale, None


def _rho(loss, z, lid=None):
    if loss == "robust":
        if lid is None:
            raise ValueError("the robust loss needs its run-time id with f_scale")
        branches = [lambda z, name=name: _rho(name, z) for name in ROBUST]
        return jax.lax.switch(jnp.asarray(lid).astype(jnp.int32), branches, z)
    if loss == "linear":
        return z, jnp.ones_like(z), jnp.zeros_like(z)
    if loss == "soft_l1":
        t = 1.0 + z
        return 2.0 * (jnp.sqrt(t) - 1.0), t ** -0.5, -0.5 * t ** -1.5
    if loss == "huber":
        small = z <= 1.0
        zs = jnp.where(small, 1.0, z)
        return (jnp.where(small, z, 2.0 * jnp.sqrt(zs) - 1.0),
                jnp.where(small, 1.0, zs ** -0.5),
                jnp.where(small, 0.0, -0.5 * zs ** -1.5))
    if loss == "cauchy":
        t = 1.0 + z
        return jnp.log1p(z), 1.0 / t, -1.0 / t ** 2
    if loss == "arctan":
        t = 1.0 + z ** 2
        return jnp.arctan(z), 1.0 / t, -2.0 * z / t ** 2
    raise ValueError(f"unknown loss {loss!r}")


def _scale(f_scale, s):
    """The loss scale: ``f_scale``, or per point ``f_scale * s`` (``f_scale``
    where ``s == 0``, whose residuals are zero: see the module docstring)."""
    if s is None:
        return f_scale
    return f_scale * jnp.where(s > 0, s, 1.0)


def loss_cost(loss, f, f_scale, s=None):
    """The objective ``0.5 * sum(C**2 rho(f**2 / C**2))`` (``0.5 * ||f||^2``
    for linear), ``C = f_scale`` or ``f_scale * s`` per point.
    ``f_scale``: a scalar, or ``(f_scale, loss_id)`` (required for "robust");
    ``s``: per-point multipliers of ``f_scale`` (square roots of sample
    weights), or None."""
    f_scale, lid = _split(f_scale)
    if loss == "linear":
        return 0.5 * jnp.dot(f, f)
    C = _scale(f_scale, s)
    rho0, _, _ = _rho(loss, (f / C) ** 2, lid)
    if s is None:
        return 0.5 * f_scale ** 2 * jnp.sum(rho0)
    return 0.5 * jnp.sum(C ** 2 * rho0)


def scale_for_loss(loss, J, f, f_scale, s=None):
    """Return ``(cost, J_scaled, f_scaled)`` for the robust Gauss-Newton model
    (``f_scale`` and ``s`` as in :func:`loss_cost`)."""
    f_scale, lid = _split(f_scale)
    if loss == "linear":
        return 0.5 * jnp.dot(f, f), J, f
    C = _scale(f_scale, s)
    rho0, rho1, rho2 = _rho(loss, (f / C) ** 2, lid)
    if s is None:
        cost = 0.5 * f_scale ** 2 * jnp.sum(rho0)
    else:
        cost = 0.5 * jnp.sum(C ** 2 * rho0)
    rho2 = rho2 / C ** 2
    J_scale = rho1 + 2.0 * rho2 * f ** 2
    J_scale = jnp.sqrt(jnp.where(J_scale < EPS, EPS, J_scale))
    return cost, J * J_scale[:, None], f * (rho1 / J_scale)
