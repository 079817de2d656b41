"""The least-squares problem as the solvers see it, and its linearisation.

A :class:`Problem` bundles two pure functions of ``(x, data)``: the residual
vector ``f`` and the pair ``(f, J)``. ``data`` is any pytree of arrays (the
observations, weights, masks...), passed as a *traced* argument so that one
compiled program serves every dataset of the same shape. The robust ``loss``
is part of the problem because it changes the objective.

:func:`linearize` evaluates ``(f, J)``, applies the robust-loss rescaling and
reduces the result to the n x n quantities every solver works on (see
``_common``): the cost, ``R``, ``Q^T f`` and the gradient ``g = J^T f``.

:class:`ChunkedProblem` is the same problem with the data split into chunks
of a fixed number of rows, read one at a time by its ``read`` function (a
slice of an in-memory array, or a host callback reading a file). Its
linearisation never holds more than one chunk's Jacobian: it is a single
pass over the chunks that accumulates the QR factor of ``[J | f]`` by a
tall-skinny QR (TSQR) update,

    R_k = qr_r([R_{k-1}; J_k | f_k]),

in float64. ``R_K`` is the R factor of the whole stacked matrix (QR is
unique up to row signs), so every solver sees exactly what it would see with
all data in memory, with the accuracy of a Householder QR of the full
Jacobian; accumulating ``J^T J`` instead would square the condition number,
which the NIST StRD problems do not survive. A trial point needs only a cost
pass. Zero-weight rows (the padding of the last chunk) contribute nothing.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ._common import qr_reduce
from ._losses import loss_cost, scale_for_loss


class Problem(NamedTuple):
    """Static description of a residual function (hashable, so it can key a
    compiled-program cache)."""

    fun: Callable[[Any, Any], Any]
    fun_jac: Callable[[Any, Any], Any]
    loss: str = "linear"
    # With a prior, ``data["prior"] = (Rp, zp, xp)`` adds the quadratic
    # ``0.5 ||Rp (x - xp) + zp||^2`` to the cost, outside the robust loss:
    # the information of earlier data in online (``partial_fit``) updates.
    prior: bool = False


class ChunkedProblem(NamedTuple):
    """A problem whose data are read chunk by chunk.

    ``fun`` and ``fun_jac`` act on one chunk (a pytree of arrays of fixed
    shape). ``read(k, data) -> (chunk, more)`` returns chunk ``k`` of a pass
    and whether another chunk follows; passes stop after the chunk with
    ``more == False``. ``data`` is whatever ``read`` needs (the stacked
    chunks of in-memory data, or nothing for a host reader) plus ``"m"``,
    the number of residuals (used in the rank threshold only).
    """

    fun: Callable[[Any, Any], Any]
    fun_jac: Callable[[Any, Any], Any]
    read: Callable[[Any, Any], Any]
    loss: str = "linear"


class Linearization(NamedTuple):
    # Residuals before robust-loss rescaling (m,). For a ChunkedProblem, a
    # 1-element marker instead: 0 where all residuals are finite, else NaN.
    f_true: Any
    cost: Any  # 0.5 * sum(rho(f**2))
    R: Any  # (n, n) triangular factor of the (loss-scaled) Jacobian
    qtf: Any  # (n,) Q^T f of the loss-scaled residuals
    g: Any  # (n,) gradient J^T f


def linearize(problem, x, data, f_scale) -> Linearization:
    if isinstance(problem, ChunkedProblem):
        return _linearize_chunked(problem, x, data, f_scale)
    f, J = problem.fun_jac(x, data)
    cost, Js, fs = scale_for_loss(problem.loss, J, f, f_scale)
    if problem.prior:
        Rp, rp = _prior(x, data)
        Js = jnp.concatenate([Js, Rp], axis=0)
        fs = jnp.concatenate([fs, rp])
        cost = cost + 0.5 * jnp.dot(rp, rp)
    R, qtf = qr_reduce(Js, fs)
    return Linearization(f, cost, R, qtf, R.T @ qtf)


def _prior(x, data):
    Rp, zp, xp = data["prior"]
    return Rp, Rp @ (x - xp) + zp


def trial_cost(problem, x, data, f_scale):
    """Residuals, cost and finiteness at a trial point (no Jacobian)."""
    if isinstance(problem, ChunkedProblem):
        return _trial_cost_chunked(problem, x, data, f_scale)
    f = problem.fun(x, data)
    finite = jnp.all(jnp.isfinite(f))
    cost = loss_cost(problem.loss, f, f_scale)
    if problem.prior:
        _, rp = _prior(x, data)
        cost = cost + 0.5 * jnp.dot(rp, rp)
    return f, jnp.where(finite, cost, jnp.inf), finite


def n_residuals(problem, x, data):
    """Number of residuals m: static for an in-memory problem, ``data["m"]``
    (traced) for a chunked one."""
    if isinstance(problem, ChunkedProblem):
        return data["m"]
    return jax.eval_shape(problem.fun, x, data).shape[0]


def _over_chunks(problem, data, init, update):
    """``acc = update(acc, chunk)`` over one pass; returns the final ``acc``."""

    def cond(c):
        return c[2]

    def body(c):
        k, acc, _ = c
        chunk, more = problem.read(k, data)
        return k + 1, update(acc, chunk), more

    _, acc, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), init,
                                                jnp.asarray(True)))
    return acc


def _linearize_chunked(problem, x, data, f_scale):
    n = x.shape[0]
    dtype = x.dtype

    def update(acc, chunk):
        Ra, cost, finite = acc
        f, J = problem.fun_jac(x, chunk)
        c, Js, fs = scale_for_loss(problem.loss, J, f, f_scale)
        A = jnp.concatenate([Ra, jnp.concatenate([Js, fs[:, None]], axis=1)], axis=0)
        Ra = jnp.linalg.qr(A, mode="r")[: n + 1]
        return Ra, cost + c, finite & jnp.all(jnp.isfinite(f))

    init = (jnp.zeros((n + 1, n + 1), dtype), jnp.zeros((), dtype), jnp.asarray(True))
    Ra, cost, finite = _over_chunks(problem, data, init, update)
    R, qtf = Ra[:n, :n], Ra[:n, n]
    marker = jnp.where(finite, 0.0, jnp.nan).astype(dtype)[None]
    return Linearization(marker, cost, R, qtf, R.T @ qtf)


def _trial_cost_chunked(problem, x, data, f_scale):
    def update(acc, chunk):
        cost, finite = acc
        f = problem.fun(x, chunk)
        return cost + loss_cost(problem.loss, f, f_scale), finite & jnp.all(jnp.isfinite(f))

    cost, finite = _over_chunks(problem, data, (jnp.zeros((), x.dtype), jnp.asarray(True)),
                                update)
    marker = jnp.where(finite, 0.0, jnp.nan).astype(x.dtype)[None]
    return marker, jnp.where(finite, cost, jnp.inf), finite
