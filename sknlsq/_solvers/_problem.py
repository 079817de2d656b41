"""The least-squares problem as the solvers see it, and its linearisation.

A :class:`Problem` bundles two pure functions of ``(x, data)``: the residual
vector ``f`` and the pair ``(f, J)``. ``data`` is any pytree of arrays (the
observations, weights, masks...), passed as a *traced* argument so that one
compiled program serves every dataset of the same shape. The robust ``loss``
is part of the problem because it changes the objective, and so is
``point_scale``, the name of the data entry (of each chunk, for a chunked
problem) holding per-point multipliers of the robust loss's ``f_scale``: the
square roots of sample weights, which makes a weight the number of copies of
a point for a robust loss too (see ``_losses``). It is None (one
``f_scale``) for the linear loss and for unweighted data, whose programs are
unchanged.

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
(or ``P`` is numerically singular), the pass is repeated with the factor it
produced (shifted where ``B^T B`` is not numerically positive definite) as
the new preconditioner, which is shifted CholeskyQR3: at most
``GRAM_PASSES`` passes reach the accuracy of Householder QR for any
Jacobian of full numerical rank, so accuracy never depends on the hint (on
a badly conditioned test problem it was 300 times closer to an exact
reference than the Householder pass). A rank-deficient Jacobian (the Gram
matrix still singular after a shifted pass), or passes that run out, are
linearised by the Householder pass.
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
# Most Gram passes of one linearisation (shifted CholeskyQR3 needs three for
# a Jacobian of full numerical rank and a useless preconditioner).
GRAM_PASSES = 3
# Largest number of parameters for which batched (vmapped) in-memory solves
# linearise by the Gram passes with unrolled n x n kernels (see
# :func:`_linearize_columns`); above it, by LAPACK's QR of each Jacobian.
# Measured (2,000 curves x 200 points, 2-core x86_64): n = 3 and 4 warm
# batches 20-27% faster for 0.3-0.5 s more compile; n = 6 no faster, and
# 0.6 s more compile.
GRAM_SMALL_N_MAX = 4


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
    # Key of ``data`` with per-point multipliers of ``f_scale`` (robust
    # losses with sample weights), or None.
    point_scale: str | None = None
    # ``(f, J^T)``: the Jacobian with one row per parameter (each column of
    # ``J`` contiguous), or None. Batched solves linearise from it (see
    # :func:`_linearize_columns`).
    fun_jac_t: Callable[[Any, Any], Any] | None = None


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
    # Key of each chunk with per-point multipliers of ``f_scale``, or None.
    point_scale: str | None = None


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


def _point_scale(problem, data):
    """Per-point multipliers of ``f_scale`` from ``data`` (one chunk for a
    chunked problem), or None."""
    key = getattr(problem, "point_scale", None)
    return None if key is None else data[key]


def svd_options(problem) -> dict:
    """Keyword arguments of ``_smallla.svd_auto`` for the solvers' n x n SVDs:
    the unrolled kernel only in vmapped (batched) solves, where it replaces
    one LAPACK call per matrix; a single solve (in memory or in chunks) takes
    LAPACK's, quicker to trace and compile (first fits) and no slower per step
    as measured."""
    batched = bool(getattr(problem, "batched", False))
    return dict(small=batched, batched=batched)


def linearizes_by_columns(problem, x) -> bool:
    """Whether :func:`linearize` with a hint takes the batched Gram route
    (:func:`_linearize_columns`): in-memory problems under ``vmap`` with at
    most ``GRAM_SMALL_N_MAX`` parameters and no prior."""
    return (not isinstance(problem, ChunkedProblem) and problem.batched
            and problem.fun_jac_t is not None and not problem.prior
            and x.shape[0] <= GRAM_SMALL_N_MAX)


def trial_linearization(problem, x, data, f_scale, hint, accept):
    """``(f, cost, finite, lin)`` at a trial point: :func:`trial_cost`, and
    for problems solved under ``vmap`` (:func:`linearizes_by_columns`) also
    the linearisation there, else ``lin = None``. Under ``vmap`` the
    linearisation of an accepted step is computed for every curve anyway
    (``lax.cond`` becomes a select), so taking the trial's residuals and
    cost from it saves one model evaluation per step. ``accept(cost, finite)``:
    the step's acceptance test (curves whose trial is rejected take no extra
    Gram pass, see :func:`_linearize_columns`)."""
    if not linearizes_by_columns(problem, x):
        return trial_cost(problem, x, data, f_scale) + (None,)
    lin = _linearize_columns(problem, x, data, f_scale, hint, accept)
    finite = jnp.all(jnp.isfinite(lin.f_true))
    return lin.f_true, jnp.where(finite, lin.cost, jnp.inf), finite, lin


def linearize(problem, x, data, f_scale, hint=None) -> Linearization:
    """Linearise at ``x``. ``hint``: the ``R`` of a nearby linearisation, the
    preconditioner of the Gram pass of a chunked problem (ignored otherwise:
    in memory, the m x n Jacobian exists anyway and the Gram reduction was
    measured no faster than LAPACK's QR of it)."""
    if isinstance(problem, ChunkedProblem):
        if hint is None:
            return _linearize_chunked(problem, x, data, f_scale)
        return _linearize_chunked_gram(problem, x, data, f_scale, hint)
    if hint is not None and linearizes_by_columns(problem, x):
        return _linearize_columns(problem, x, data, f_scale, hint)
    f, J = problem.fun_jac(x, data)
    cost, Js, fs = scale_for_loss(problem.loss, J, f, f_scale, _point_scale(problem, data))
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
    """The hint, or the identity where it is not finite or numerically
    singular (the passes then start from the unpreconditioned Gram matrix)."""
    n = hint.shape[0]
    d = jnp.abs(jnp.diagonal(hint))
    usable = jnp.all(jnp.isfinite(hint)) & (jnp.min(d) > 1e-8 * jnp.max(d))
    return jnp.where(usable, hint, jnp.eye(n, dtype=hint.dtype))


def _gram_update(Gu, h, Js, fs, P):
    """Add the rows ``(Js, fs)`` to the upper triangle ``Gu`` of ``B^T B`` and
    to ``h = B^T fs``, with ``B = Js P^{-1}`` (P upper triangular). The
    columns of ``B`` are formed element-wise so that XLA fuses them into the
    dot products."""
    n = P.shape[0]
    b = _preconditioned([Js[:, j] for j in range(n)], P)
    Gu = Gu + jnp.stack([jnp.dot(b[i], b[j]) for i in range(n) for j in range(i, n)])
    h = h + jnp.stack([jnp.dot(b[i], fs) for i in range(n)])
    return Gu, h


def _preconditioned(cols, P):
    """The columns of ``B = J P^{-1}`` (P upper triangular) from the columns
    of ``J``, formed element-wise (forward substitution over the columns), so
    that XLA fuses them into the sums that follow."""
    b = []
    for j, v in enumerate(cols):
        for i in range(j):
            v = v - b[i] * P[i, j]
        b.append(v / P[j, j])
    return b


def _gram_matrix(Gu, n, dtype):
    rows, cols = zip(*[(i, j) for i in range(n) for j in range(i, n)])
    return jnp.zeros((n, n), dtype).at[rows, cols].set(Gu).at[cols, rows].set(Gu)


def _gram_finish(G, h, P, m):
    """``(ok, R, qtf, g, P_next)`` from the Gram matrix ``G`` of ``B = J P^{-1}``
    and ``h = B^T f``: ``R = chol(G)^T P``, ``qtf = R^{-T} J^T f``,
    ``g = J^T f = P^T h``.

    ``ok`` is False where ``chol(G)`` is too ill-conditioned for ``R`` to be
    accurate (non-finite sums count as ok: no reduction would do better).
    ``P_next`` is the preconditioner of the next pass in that case: the
    CholeskyQR2 factor ``chol(G)^T P``, or where ``G`` is not numerically
    positive definite the *shifted* factor ``chol(G + s I)^T P`` with Fukaya
    et al.'s shift ``s = 11 (m n + n (n + 1)) u ||B||^2`` (shifted
    CholeskyQR3): each pass makes ``B`` better conditioned, so that a few
    passes reach ``ok`` for any Jacobian of full numerical rank. The last
    value says whether ``G`` was numerically positive definite."""
    n = P.shape[0]
    dtype = P.dtype
    eye = jnp.eye(n, dtype=dtype)
    L = jnp.linalg.cholesky(G)
    Linv = jax.scipy.linalg.solve_triangular(L, eye, lower=True)
    kappa = jnp.max(jnp.sum(jnp.abs(L), axis=0)) * jnp.max(jnp.sum(jnp.abs(Linv), axis=0))
    inputs_ok = jnp.all(jnp.isfinite(G)) & jnp.all(jnp.isfinite(h))
    ok = ~inputs_ok | (jnp.isfinite(kappa) & (kappa <= GRAM_KAPPA_MAX))
    shift = 11.0 * (m * n + n * (n + 1)) * jnp.finfo(dtype).eps * jnp.trace(G)
    Ls = jnp.linalg.cholesky(G + shift * eye)
    definite = jnp.all(jnp.isfinite(L))
    L_next = jnp.where(definite, L, Ls)
    return ok, L.T @ P, Linv @ h, P.T @ h, L_next.T @ P, definite


def _chol_small(G):
    """Lower Cholesky factor of the n x n matrix ``G`` (nested lists of
    scalars), unrolled. Like LAPACK's (as JAX returns it) it is not finite
    where ``G`` is not numerically positive definite: the square root of a
    non-positive pivot is NaN or 0, and a division by a zero pivot inf."""
    n = len(G)
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        d = G[j][j]
        for k in range(j):
            d = d - L[j][k] * L[j][k]
        d = jnp.where(d > 0, d, jnp.nan)
        L[j][j] = jnp.sqrt(d)
        for i in range(j + 1, n):
            v = G[i][j]
            for k in range(j):
                v = v - L[i][k] * L[j][k]
            L[i][j] = v / L[j][j]
    return L


def _tril_inv_small(L):
    """Inverse of a lower triangular matrix (nested lists), unrolled; zeros
    above the diagonal as Python ``None``."""
    n = len(L)
    X = [[None] * n for _ in range(n)]
    for i in range(n):
        X[i][i] = 1.0 / L[i][i]
        for j in range(i):
            v = L[i][j] * X[j][j]
            for k in range(j + 1, i):
                v = v + L[i][k] * X[k][j]
            X[i][j] = -v / L[i][i]
    return X


def _gram_finish_small(G, h, P, m):
    """:func:`_gram_finish` for a small n with unrolled kernels instead of
    LAPACK's Cholesky and triangular solve (under ``vmap`` those are one
    call per tiny matrix, each costing more than the arithmetic). ``G`` and
    ``h`` are nested lists / lists of scalars, ``P`` an (n, n) array."""
    n = len(h)
    dtype = P.dtype
    eps = jnp.finfo(dtype).eps
    Pl = [[P[i, j] for j in range(n)] for i in range(n)]

    def t_times_p(L):  # L^T P, L lower (nested lists)
        return [[sum(L[k][i] * Pl[k][j] for k in range(i, n)) for j in range(n)]
                for i in range(n)]

    L = _chol_small(G)
    Linv = _tril_inv_small(L)
    colsum = lambda T: jnp.max(jnp.stack([sum(jnp.abs(T[i][j]) for i in range(j, n))  # noqa: E731
                                          for j in range(n)]))
    kappa = colsum(L) * colsum(Linv)
    inputs_ok = (jnp.all(jnp.isfinite(jnp.stack([G[i][j] for i in range(n) for j in range(i + 1)])))
                 & jnp.all(jnp.isfinite(jnp.stack(h))))
    ok = ~inputs_ok | (jnp.isfinite(kappa) & (kappa <= GRAM_KAPPA_MAX))
    shift = 11.0 * (m * n + n * (n + 1)) * eps * sum(G[i][i] for i in range(n))
    Ls = _chol_small([[G[i][j] + (shift if i == j else 0.0) for j in range(n)]
                      for i in range(n)])
    definite = jnp.all(jnp.isfinite(jnp.stack([L[i][j] for i in range(n)
                                               for j in range(i + 1)])))
    L_next = [[jnp.where(definite, L[i][j], Ls[i][j]) if j <= i else None
               for j in range(n)] for i in range(n)]
    R = jnp.stack([jnp.stack(row) for row in t_times_p(L)])
    P_next = jnp.stack([jnp.stack(row) for row in t_times_p(L_next)])
    qtf = jnp.stack([sum(Linv[i][k] * h[k] for k in range(i + 1)) for i in range(n)])
    g = jnp.stack([sum(Pl[k][i] * h[k] for k in range(i + 1)) for i in range(n)])
    return ok, R, qtf, g, P_next, definite


def _linearize_columns(problem, x, data, f_scale, hint, accept=None):
    """In-memory linearisation of a batched (vmapped) solve by preconditioned
    Gram passes over the Jacobian's columns (a step's linearisation, with the
    previous ``R`` as ``hint``).

    Under ``vmap`` LAPACK's QR runs once per curve on an m x (n + 1) matrix
    (about 2 us for 240 x 4 on a 2-core x86_64 CPU), and ``jacfwd``'s
    Jacobian has its n columns interleaved. Here each column comes from a
    ``jvp`` of its own (contiguous over the curve's points), the Gram matrix
    of ``B = J P^{-1}`` and ``B^T f`` are n (n + 3) / 2 sums of products over
    them, and the n x n work is unrolled: 1.8-2.0 us instead of 3.9 us per
    240-point, 3-parameter linearisation with the Jacobian (256 curves).
    Accuracy is that of :func:`_linearize_chunked_gram`: the same passes and
    condition test, and where the passes do not reach it (a rank-deficient
    Jacobian, passes run out) LAPACK's QR of the curve's ``[J | f]`` after
    all. Both are while loops, so under ``vmap`` a second pass or the QR is
    paid for only when some curve of the batch needs it. ``accept(cost,
    finite)`` (optional) says which curves will use the result (a trial
    step's acceptance test, from the cost, which needs no pass): the others
    take no pass of their own, and their result is to be discarded."""
    n = x.shape[0]
    dtype = x.dtype
    f, JT = problem.fun_jac_t(x, data)
    m = f.shape[0]
    cost, Js, fs = scale_for_loss(problem.loss, JT.T, f, f_scale, _point_scale(problem, data))
    vecs = [Js[:, j] for j in range(n)] + [fs]
    if accept is None:
        used = jnp.asarray(True)
    else:
        finite = jnp.all(jnp.isfinite(f))
        used = accept(jnp.where(finite, cost, jnp.inf), finite)

    def one_pass(c, vecs):
        k, P = c[:2]
        b = _preconditioned(vecs[:n], P)
        G = [[None] * n for _ in range(n)]
        for i in range(n):
            for j in range(i + 1):
                # Sums of products, not ``dot``: under ``vmap`` a dot of
                # vectors is a batched matrix product (one library kernel
                # each), a sum a reduction XLA fuses with the products.
                G[i][j] = G[j][i] = jnp.sum(b[i] * b[j])
        h = [jnp.sum(b[i] * vecs[n]) for i in range(n)]
        ok, R, qtf, g, P_next, definite = _gram_finish_small(G, h, P, m)
        return k + 1, P_next, ok, R, qtf, g, (k >= 1) & ~definite

    def variant(c):
        # The loops below read the columns through a barrier with their
        # carry, so that XLA does not hoist the work on them (the stacked
        # matrix of the QR: a transposing copy per linearisation) out of a
        # loop that usually runs no iteration.
        return jax.lax.optimization_barrier((vecs, c))

    def more(c):
        k, _, ok, _, _, _, deficient = c
        return ~ok & ~deficient & (k < GRAM_PASSES) & used

    def another_pass(c):
        v, c = variant(c)
        return one_pass(c, v)

    eye = jnp.eye(n, dtype=dtype)
    z = jnp.zeros((n,), dtype)
    P0 = eye if hint is None else _preconditioner(hint)
    init = (jnp.zeros((), jnp.int32), P0, jnp.asarray(False), eye, z, z, jnp.asarray(False))
    _, _, ok, R, qtf, g, _ = jax.lax.while_loop(more, another_pass, init)

    def householder(c):
        v, _ = variant(c)
        R, qtf = qr_reduce(jnp.stack(v[:n], axis=1), v[n])
        return jnp.asarray(True), R, qtf, R.T @ qtf

    _, R, qtf, g = jax.lax.while_loop(lambda c: ~c[0], householder, (ok | ~used, R, qtf, g))
    return Linearization(f, cost, R, qtf, g)


def _prior(x, data):
    Rp, zp, xp = data["prior"]
    return Rp, Rp @ (x - xp) + zp


def trial_cost(problem, x, data, f_scale):
    """Residuals, cost and finiteness at a trial point (no Jacobian)."""
    if isinstance(problem, ChunkedProblem):
        return _trial_cost_chunked(problem, x, data, f_scale)
    f = problem.fun(x, data)
    finite = jnp.all(jnp.isfinite(f))
    cost = loss_cost(problem.loss, f, f_scale, _point_scale(problem, data))
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
        c, Js, fs = scale_for_loss(problem.loss, J, f, f_scale, _point_scale(problem, chunk))
        A = jnp.concatenate([Ra, jnp.concatenate([Js, fs[:, None]], axis=1)], axis=0)
        Ra = jnp.linalg.qr(A, mode="r")[: n + 1]
        return Ra, cost + c, finite & jnp.all(jnp.isfinite(f))

    init = (jnp.zeros((n + 1, n + 1), dtype), jnp.zeros((), dtype), jnp.asarray(True))
    Ra, cost, finite = _over_chunks(problem, data, init, update)
    R, qtf = Ra[:n, :n], Ra[:n, n]
    marker = jnp.where(finite, 0.0, jnp.nan).astype(dtype)[None]
    return Linearization(marker, cost, R, qtf, R.T @ qtf)


def _linearize_chunked_gram(problem, x, data, f_scale, hint):
    """Linearisation by the Gram matrix of ``J P^{-1}``: one pass where the
    hint preconditions well (the rule near a previous point), else up to
    ``GRAM_PASSES`` passes, each preconditioned by the factor of the one
    before (shifted CholeskyQR3, see :func:`_gram_finish`). All passes run
    the same traced code (a ``while_loop``). A Gram matrix that is still not
    positive definite after a shifted pass means a rank-deficient Jacobian
    (a parameter without effect, fewer rows than parameters), where further
    passes would only amplify rounding: the passes stop and the Householder
    pass linearises, as it does where the passes run out."""
    n = x.shape[0]
    dtype = x.dtype
    m = jnp.asarray(data["m"], dtype)

    def update(P):
        def upd(acc, chunk):
            Gu, h, cost, finite = acc
            f, J = problem.fun_jac(x, chunk)
            c, Js, fs = scale_for_loss(problem.loss, J, f, f_scale, _point_scale(problem, chunk))
            Gu, h = _gram_update(Gu, h, Js, fs, P)
            return Gu, h, cost + c, finite & jnp.all(jnp.isfinite(f))
        return upd

    def one_pass(c):
        k, P = c[:2]
        init = (jnp.zeros((_n_upper(P),), dtype), jnp.zeros((n,), dtype),
                jnp.zeros((), dtype), jnp.asarray(True))
        Gu, h, cost, finite = _over_chunks(problem, data, init, update(P))
        ok, R, qtf, g, P_next, definite = _gram_finish(_gram_matrix(Gu, n, dtype), h, P, m)
        marker = jnp.where(finite, 0.0, jnp.nan).astype(dtype)[None]
        deficient = (k >= 1) & ~definite
        return k + 1, P_next, ok, Linearization(marker, cost, R, qtf, g), deficient

    def more(c):
        k, _, ok, _, deficient = c
        return ~ok & ~deficient & (k < GRAM_PASSES)

    z = jnp.zeros((n,), dtype)
    init = (jnp.zeros((), jnp.int32), _preconditioner(hint), jnp.asarray(False),
            Linearization(z[:1], z[0], jnp.eye(n, dtype=dtype), z, z), jnp.asarray(False))
    _, _, ok, lin, _ = jax.lax.while_loop(more, one_pass, init)
    return jax.lax.cond(ok, lambda _: lin,
                        lambda _: _linearize_chunked(problem, x, data, f_scale), None)


def _trial_cost_chunked(problem, x, data, f_scale):
    def update(acc, chunk):
        cost, finite = acc
        f = problem.fun(x, chunk)
        c = loss_cost(problem.loss, f, f_scale, _point_scale(problem, chunk))
        return cost + c, finite & jnp.all(jnp.isfinite(f))

    cost, finite = _over_chunks(problem, data, (jnp.zeros((), x.dtype), jnp.asarray(True)),
                                update)
    marker = jnp.where(finite, 0.0, jnp.nan).astype(x.dtype)[None]
    return marker, jnp.where(finite, cost, jnp.inf), finite
