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

Preconditioned Gram pass. The Householder update costs about 13 ns per
point on a CPU (LAPACK's unblocked QR makes several passes over each chunk),
which made a linearisation seven times a cost pass. After the first step
the solvers pass the ``R`` of the previous linearisation as a *hint*
``P``; the pass then accumulates the Gram matrix of ``B = J P^{-1}``
(plus ``B^T f`` and the cost) with plain dot products, and ``R = chol(B^T
B)^T P``. Near ``x_prev``, ``B`` is close to orthonormal, so squaring its
condition number costs nothing: this is CholeskyQR with a preconditioner,
the idea behind CholeskyQR2 and shifted CholeskyQR (Yamamoto et al., 2015;
Fukaya et al., SIAM J. Sci. Comput. 42, 2020). The pass checks it: where
the 1-norm condition number of ``chol(B^T B)`` exceeds ``GRAM_KAPPA_MAX``
(or ``P`` is numerically singular), the linearisation is redone with the
Householder pass, so accuracy never depends on the hint.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ._common import qr_reduce
from ._losses import loss_cost, scale_for_loss

# Largest 1-norm condition number of the preconditioned factor chol(B^T B) for
# which the Gram pass is kept: its R then carries a relative error of about
# GRAM_KAPPA_MAX**2 * (rounding of the dot products, ~1e-14), 1e-8 at worst,
# and much less near convergence where B is almost orthonormal.
GRAM_KAPPA_MAX = 1e3


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
    # True where the solve runs under ``jax.vmap`` (batched fits): the n x n
    # SVDs then use the unrolled kernel of ``_smallla`` (up to n = 6).
    batched: bool = False


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


def loss_scale(opts):
    """``(f_scale, loss_id)`` of the solver options: what :func:`linearize` and
    :func:`trial_cost` take as ``f_scale`` (the robust losses share one
    compiled program and choose their ``rho`` by ``loss_id`` at run time)."""
    return opts.f_scale, opts.loss_id


def svd_options(problem) -> dict:
    """Keyword arguments of ``_smallla.svd_auto`` for the solvers' n x n SVDs:
    the unrolled kernel only in vmapped (batched) solves, where it replaces
    one LAPACK call per matrix; a single solve (in memory or in chunks) takes
    LAPACK's, quicker to trace and compile (first fits) and no slower per step
    as measured."""
    batched = bool(getattr(problem, "batched", False))
    return dict(small=batched, batched=batched)


def linearize(problem, x, data, f_scale, hint=None) -> Linearization:
    """Linearise at ``x``. ``hint``: the ``R`` of a nearby linearisation, the
    preconditioner of the Gram pass of a chunked problem (ignored otherwise:
    in memory, the m x n Jacobian exists anyway and the Gram reduction was
    measured no faster than LAPACK's QR of it)."""
    if isinstance(problem, ChunkedProblem):
        if hint is None:
            return _linearize_chunked(problem, x, data, f_scale)
        return _linearize_chunked_gram(problem, x, data, f_scale, hint)
    f, J = problem.fun_jac(x, data)
    cost, Js, fs = scale_for_loss(problem.loss, J, f, f_scale)
    if problem.prior:
        Rp, rp = _prior(x, data)
        Js = jnp.concatenate([Js, Rp], axis=0)
        fs = jnp.concatenate([fs, rp])
        cost = cost + 0.5 * jnp.dot(rp, rp)
    R, qtf = qr_reduce(Js, fs)
    return Linearization(f, cost, R, qtf, R.T @ qtf)


# --------------------------------------------------------------------------
# Preconditioned Gram reduction
# --------------------------------------------------------------------------


def _n_upper(P):
    n = P.shape[0]
    return n * (n + 1) // 2


def _preconditioner(hint):
    """``(P, usable)``: the hint, or the identity where it is numerically
    singular (``usable`` False: the caller must not rely on the Gram pass)."""
    n = hint.shape[0]
    d = jnp.abs(jnp.diagonal(hint))
    usable = jnp.all(jnp.isfinite(hint)) & (jnp.min(d) > 1e-8 * jnp.max(d))
    return jnp.where(usable, hint, jnp.eye(n, dtype=hint.dtype)), usable


def _gram_update(Gu, h, Js, fs, P):
    """Add the rows ``(Js, fs)`` to the upper triangle ``Gu`` of ``B^T B`` and
    to ``h = B^T fs``, with ``B = Js P^{-1}`` (P upper triangular). The
    columns of ``B`` are formed element-wise so that XLA fuses them into the
    dot products."""
    n = P.shape[0]
    b = []
    for j in range(n):
        v = Js[:, j]
        for i in range(j):
            v = v - b[i] * P[i, j]
        b.append(v / P[j, j])
    Gu = Gu + jnp.stack([jnp.dot(b[i], b[j]) for i in range(n) for j in range(i, n)])
    h = h + jnp.stack([jnp.dot(b[i], fs) for i in range(n)])
    return Gu, h


def _gram_finish(Gu, h, P):
    """``(ok, R, qtf, g)`` from the accumulated Gram matrix of ``B = J P^{-1}``:
    ``R = chol(B^T B)^T P``, ``qtf = R^{-T} J^T f``, ``g = J^T f = P^T h``.
    ``ok`` is False where ``chol(B^T B)`` is too ill-conditioned for ``R`` to
    be accurate (then the caller redoes the reduction by Householder QR);
    non-finite sums count as ok (Householder would not do better)."""
    n = P.shape[0]
    dtype = P.dtype
    rows, cols = zip(*[(i, j) for i in range(n) for j in range(i, n)])
    G = jnp.zeros((n, n), dtype).at[rows, cols].set(Gu).at[cols, rows].set(Gu)
    L = jnp.linalg.cholesky(G)
    Linv = jax.scipy.linalg.solve_triangular(L, jnp.eye(n, dtype=dtype), lower=True)
    kappa = jnp.max(jnp.sum(jnp.abs(L), axis=0)) * jnp.max(jnp.sum(jnp.abs(Linv), axis=0))
    inputs_ok = jnp.all(jnp.isfinite(G)) & jnp.all(jnp.isfinite(h))
    ok = ~inputs_ok | (jnp.isfinite(kappa) & (kappa <= GRAM_KAPPA_MAX))
    return ok, L.T @ P, Linv @ h, P.T @ h


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


def _linearize_chunked_gram(problem, x, data, f_scale, hint):
    """Linearisation by the Gram matrix of ``J P^{-1}``, one pass; falls back
    to :func:`_linearize_chunked` where that would lose accuracy."""
    n = x.shape[0]
    dtype = x.dtype
    P, usable = _preconditioner(hint)

    def update(acc, chunk):
        Gu, h, cost, finite = acc
        f, J = problem.fun_jac(x, chunk)
        c, Js, fs = scale_for_loss(problem.loss, J, f, f_scale)
        Gu, h = _gram_update(Gu, h, Js, fs, P)
        return Gu, h, cost + c, finite & jnp.all(jnp.isfinite(f))

    def gram(_):
        init = (jnp.zeros((_n_upper(P),), dtype), jnp.zeros((n,), dtype),
                jnp.zeros((), dtype), jnp.asarray(True))
        Gu, h, cost, finite = _over_chunks(problem, data, init, update)
        ok, R, qtf, g = _gram_finish(Gu, h, P)
        marker = jnp.where(finite, 0.0, jnp.nan).astype(dtype)[None]
        return ok, Linearization(marker, cost, R, qtf, g)

    def skip(_):
        z = jnp.zeros((n,), dtype)
        return jnp.asarray(False), Linearization(z[:1], z[0], jnp.eye(n, dtype=dtype), z, z)

    ok, lin = jax.lax.cond(usable, gram, skip, None)
    return jax.lax.cond(ok, lambda _: lin,
                        lambda _: _linearize_chunked(problem, x, data, f_scale), None)


def _trial_cost_chunked(problem, x, data, f_scale):
    def update(acc, chunk):
        cost, finite = acc
        f = problem.fun(x, chunk)
        return cost + loss_cost(problem.loss, f, f_scale), finite & jnp.all(jnp.isfinite(f))

    cost, finite = _over_chunks(problem, data, (jnp.zeros((), x.dtype), jnp.asarray(True)),
                                update)
    marker = jnp.where(finite, 0.0, jnp.nan).astype(x.dtype)[None]
    return marker, jnp.where(finite, cost, jnp.inf), finite
