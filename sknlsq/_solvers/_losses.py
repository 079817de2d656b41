"""Robust loss functions ``rho(z)`` of ``z = (f / f_scale)**2``, in pure JAX.

Each returns ``(rho, rho', rho'')`` as in scipy's ``least_squares``. The solver
uses them through :func:`loss_cost` (the objective ``0.5 * sum(rho)``) and
:func:`scale_for_loss`, which rescales ``J`` and ``f`` so that the Gauss-Newton
model of the robust objective becomes an ordinary least-squares model
(Triggs et al., "Bundle Adjustment - A Modern Synthesis", 2000).
"""

from __future__ import annotations

import jax.numpy as jnp

from ._common import EPS

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def _rho(loss, z):
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


def loss_cost(loss, f, f_scale):
    """The objective ``0.5 * sum(rho(f**2))`` (``0.5 * ||f||^2`` for linear)."""
    if loss == "linear":
        return 0.5 * jnp.dot(f, f)
    rho0, _, _ = _rho(loss, (f / f_scale) ** 2)
    return 0.5 * f_scale ** 2 * jnp.sum(rho0)


def scale_for_loss(loss, J, f, f_scale):
    """Return ``(cost, J_scaled, f_scaled)`` for the robust Gauss-Newton model."""
    if loss == "linear":
        return 0.5 * jnp.dot(f, f), J, f
    rho0, rho1, rho2 = _rho(loss, (f / f_scale) ** 2)
    cost = 0.5 * f_scale ** 2 * jnp.sum(rho0)
    rho2 = rho2 / f_scale ** 2
    J_scale = rho1 + 2.0 * rho2 * f ** 2
    J_scale = jnp.sqrt(jnp.where(J_scale < EPS, EPS, J_scale))
    return cost, J * J_scale[:, None], f * (rho1 / J_scale)
