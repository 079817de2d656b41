"""Levenberg-Marquardt for large sparse problems, in pure JAX.

For problems with thousands of parameters the dense reduction of ``_common``
(an n x n QR factor) is out of reach: ``n^2`` memory and ``m n^2`` work. Here
the Jacobian is kept sparse and the damped Gauss-Newton step

    (J^T J + lam D^2) p = -J^T f                                   (1)

is solved by one of two linear solvers:

* ``"schur"`` -- for *block-arrow* Jacobians: the parameters are split into
  shared (global) ones and blocks of local ones, one block per group of
  residuals, and a residual depends only on the shared parameters and the
  local ones of its group. The Jacobian is then held as two dense per-row
  arrays, ``JL`` (m x p_l, derivatives by the row's own local parameters)
  and ``JG`` (m x p_g), and (1) is solved exactly by eliminating the local
  blocks (a batch of p_l x p_l systems) and solving the p_g x p_g Schur
  complement ``S = V - sum_g W_g^T U_g^{-1} W_g``. Work and memory are
  O(m (p_l + p_g)^2 + G p_l^3 + p_g^3): linear in the number of groups.
* ``"cg"`` -- for any sparsity pattern: the Jacobian is a COO list of its
  structural non-zeros (static row and column indices, values computed by
  compressed forward-mode products, see ``_sparsity``), and (1) is solved by
  conjugate gradients preconditioned with its diagonal, using only products
  with ``J`` and ``J^T`` (segment sums).

The damping follows Nielsen's rule (H. B. Nielsen, "Damping parameter in
Marquardt's method", IMM-REP-1999-05): after a step with gain ratio
``rho > 0``, ``lam *= max(1/3, 1 - (2 rho - 1)^3)``, otherwise
``lam *= nu; nu *= 2``. ``D^2`` holds the running maxima of the diagonal of
``J^T J`` (Marquardt's scaling, MINPACK's ``mode=1``). Termination uses
scipy's tests: ``ftol`` on the relative decrease of the cost, ``xtol`` on the
step, ``gtol`` on the largest gradient component.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

EPS = float(jnp.finfo(jnp.float64).eps)


class BlockArrow(NamedTuple):
    """Static description of a block-arrow problem.

    ``fun(theta_L, theta_G, data) -> f`` where ``theta_L`` is (G, p_l) and
    ``theta_G`` (p_g,). With ``padded=True`` the residuals come as a
    (G, P) array, row g holding group g's residuals (zero-weight padding
    where a group has fewer than P); otherwise as a flat (m,) array with
    the group of each residual in ``data["group"]``.
    """

    fun: Callable[[Any, Any, Any], Any]
    n_groups: int
    n_local: int
    n_shared: int
    padded: bool = False


class SparseOptions(NamedTuple):
    ftol: Any
    xtol: Any
    gtol: Any
    max_nfev: Any
    cg_maxiter: Any = 200
    cg_tol: Any = 1e-10


class SparseState(NamedTuple):
    x: Any  # (n,) packed parameters: shared first, then local group-major
    cost: Any
    rep: Any  # what the linear solver needs: (U, W, V) blocks, or the COO values
    g: Any  # J^T f
    d2: Any  # scaling: running max of diag(J^T J)
    lam: Any
    nu: Any
    nfev: Any
    njev: Any
    nit: Any
    status: Any  # -1 running; else 0 (budget), 1 gtol, 2 ftol, 3 xtol, 4 ftol and xtol


# --------------------------------------------------------------------------
# Block-arrow: Jacobian by per-row forward products, Schur-complement solve
# --------------------------------------------------------------------------


def _ba_split(prob: BlockArrow, x):
    pg = prob.n_shared
    return x[pg:].reshape(prob.n_groups, prob.n_local), x[:pg]


def _ba_fun(prob, x, data):
    tl, tg = _ba_split(prob, x)
    return prob.fun(tl, tg, data)


def _ba_jac(prob, x, data):
    """``(f, (JL, JG))``: one forward product per local slot and per shared
    parameter (the columns of a slot are structurally orthogonal across
    groups, so they share a colour)."""
    tl, tg = _ba_split(prob, x)

    def f_of(tl, tg):
        return prob.fun(tl, tg, data)

    f, lin = jax.linearize(f_of, tl, tg)
    pl, pg = prob.n_local, prob.n_shared
    out = f.ndim  # per-slot derivatives go to a new trailing axis
    JL = jax.vmap(lambda e: lin(jnp.broadcast_to(e, tl.shape), jnp.zeros_like(tg)),
                  out_axes=out)(jnp.eye(pl, dtype=x.dtype)) if pl else \
        jnp.zeros(f.shape + (0,), x.dtype)
    JG = jax.vmap(lambda e: lin(jnp.zeros_like(tl), e), out_axes=out)(
        jnp.eye(pg, dtype=x.dtype)) if pg else jnp.zeros(f.shape + (0,), x.dtype)
    return f, (JL, JG)


def _ba_products(prob, jac, f, group):
    JL, JG = jac
    if prob.padded:
        gl = jnp.einsum("gpi,gp->gi", JL, f)
        gg = jnp.einsum("gpk,gp->k", JG, f)
    else:
        gl = jax.ops.segment_sum(JL * f[:, None], group, prob.n_groups)  # (G, pl)
        gg = JG.T @ f
    return jnp.concatenate([gg, gl.reshape(-1)])


def _ba_blocks(prob, jac, group):
    JL, JG = jac
    if prob.padded:
        U = jnp.einsum("gpi,gpj->gij", JL, JL)
        W = jnp.einsum("gpi,gpk->gik", JL, JG)
        V = jnp.einsum("gpk,gpl->kl", JG, JG)
        return U, W, V
    G = prob.n_groups
    U = jax.ops.segment_sum(JL[:, :, None] * JL[:, None, :], group, G)  # (G, pl, pl)
    W = jax.ops.segment_sum(JL[:, :, None] * JG[:, None, :], group, G)  # (G, pl, pg)
    V = JG.T @ JG
    return U, W, V


def _ba_solve(prob, blocks, g, d2, lam):
    """Solve (1) by eliminating the local blocks."""
    pg, pl, G = prob.n_shared, prob.n_local, prob.n_groups
    U, W, V = blocks
    gg, gl = g[:pg], g[pg:].reshape(G, pl)
    dg, dl = d2[:pg], d2[pg:].reshape(G, pl)
    Ud = U + lam * jax.vmap(jnp.diag)(dl)
    Vd = V + lam * jnp.diag(dg)
    Uc = jax.scipy.linalg.cho_factor(Ud)[0]  # batched Cholesky (lower=False: upper)
    solve_u = jax.vmap(lambda c, b: jax.scipy.linalg.cho_solve((c, False), b))
    UiW = solve_u(Uc, W)  # (G, pl, pg)
    Uig = solve_u(Uc, gl)  # (G, pl)
    S = Vd - jnp.einsum("gij,gik->jk", W, UiW)
    rhs = -gg + jnp.einsum("gij,gi->j", W, Uig)
    pG = jnp.linalg.solve(S, rhs) if pg else jnp.zeros((0,), g.dtype)
    pL = -Uig - jnp.einsum("gij,j->gi", UiW, pG)
    return jnp.concatenate([pG, pL.reshape(-1)])


def block_arrow_covariance(blocks):
    """Unscaled covariance pieces ``(J^T J)^{-1}`` without forming it, from
    the blocks ``U, W, V`` of ``J^T J`` (the ``rep`` of a solved state): the
    shared block ``S^{-1}`` and the per-group local diagonal blocks
    ``U_g^{-1} + U_g^{-1} W_g S^{-1} W_g^T U_g^{-1}``.

    A group whose block ``U_g`` is singular (no weighted samples, or locally
    collinear parameters) has undetermined local parameters: their variances
    are inf, and the group enters the shared block through the pseudo-inverse
    ``U_g^+`` (the generalised Schur complement: ``range(W_g)`` lies in
    ``range(U_g)`` for a Gram matrix), which gives the shared block of the
    pseudo-inverse of the whole ``J^T J`` instead of NaN.

    The rank decisions and inverses work on the equilibrated system (every
    column of ``J`` scaled to unit norm, zero columns left alone) and are
    scaled back, so that a well-determined but badly scaled problem (column
    norms many orders apart) is not taken for a singular one.

    With no local parameters (``p_l = 0``) this is the pseudo-inverse of
    ``V``, with empty local and cross blocks."""
    U, W, V = blocks
    G, pl, pg = W.shape
    dv = jnp.sqrt(jnp.diagonal(V))
    dv = jnp.where(dv > 0, dv, 1.0)
    if pl == 0:
        Vs = V / (dv[:, None] * dv[None, :])
        Si = jnp.linalg.pinv(Vs, hermitian=True) / (dv[:, None] * dv[None, :])
        return Si, jnp.zeros((G, 0, 0), V.dtype), jnp.zeros((G, 0, pg), V.dtype)
    du = jnp.sqrt(jnp.diagonal(U, axis1=1, axis2=2))  # (G, pl)
    du = jnp.where(du > 0, du, 1.0)
    U = U / (du[:, :, None] * du[:, None, :])
    W = W / (du[:, :, None] * dv[None, None, :])
    V = V / (dv[:, None] * dv[None, :])
    lam, Q = jnp.linalg.eigh(U)
    tol = (lam.shape[-1] * jnp.finfo(U.dtype).eps
           * jnp.maximum(jnp.max(jnp.abs(lam), axis=-1, keepdims=True),
                         jnp.finfo(U.dtype).tiny))
    keep = lam > tol
    Ui = jnp.einsum("gij,gj,gkj->gik", Q, jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0),
                    Q)
    singular = ~jnp.all(keep, axis=-1)
    UiW = Ui @ W
    S = V - jnp.einsum("gij,gik->jk", W, UiW)
    Si = jnp.linalg.pinv(S, hermitian=True)
    local = Ui + jnp.einsum("gij,jk,glk->gil", UiW, Si, UiW)
    cross = -jnp.einsum("gij,jk->gik", UiW, Si)  # cov(local_g, shared)
    Si = Si / (dv[:, None] * dv[None, :])
    local = local / (du[:, :, None] * du[:, None, :])
    cross = cross / (du[:, :, None] * dv[None, None, :])
    local = jnp.where(singular[:, None, None], jnp.inf, local)
    cross = jnp.where(singular[:, None, None], jnp.inf, cross)
    return Si, local, cross


# --------------------------------------------------------------------------
# General pattern: COO Jacobian, preconditioned CG on the normal equations
# --------------------------------------------------------------------------


class COOPattern(NamedTuple):
    """Static sparsity: ``fun(x, data) -> f``; non-zeros at (rows, cols);
    ``colors`` (n,) groups structurally orthogonal columns; ``n_colors``."""

    fun: Callable[[Any, Any], Any]
    n: int
    m: int
    n_colors: int


def _coo_jac(prob: COOPattern, x, data):
    """Values of the non-zeros by one forward product per colour."""
    f, lin = jax.linearize(lambda q: prob.fun(q, data), x)
    colors, rows, cols = data["colors"], data["rows"], data["cols"]
    seeds = (colors[None, :] == jnp.arange(prob.n_colors)[:, None]).astype(x.dtype)
    B = jax.vmap(lin, out_axes=1)(seeds)  # (m, n_colors) compressed Jacobian
    return f, B[rows, colors[cols]]


def _coo_mv(prob, vals, rows, cols, v):
    return jax.ops.segment_sum(vals * v[cols], rows, prob.m)


def _coo_rmv(prob, vals, rows, cols, u):
    return jax.ops.segment_sum(vals * u[rows], cols, prob.n)


def _cg_solve(prob, vals, rows, cols, g, d2, lam, opts):
    """Preconditioned CG on (J^T J + lam D^2) p = -g."""
    diag = jax.ops.segment_sum(vals * vals, cols, prob.n) + lam * d2
    Minv = jnp.where(diag > 0, 1.0 / jnp.where(diag > 0, diag, 1.0), 1.0)

    def A(v):
        return _coo_rmv(prob, vals, rows, cols, _coo_mv(prob, vals, rows, cols, v)) + lam * d2 * v

    b = -g
    x0 = jnp.zeros_like(b)
    r0 = b
    z0 = Minv * r0
    bnorm = jnp.sqrt(jnp.dot(b, b))

    def cond(c):
        _, r, _, _, _, k = c
        return (jnp.sqrt(jnp.dot(r, r)) > opts.cg_tol * bnorm) & (k < opts.cg_maxiter)

    def body(c):
        x, r, z, p, rz, k = c
        Ap = A(p)
        alpha = rz / jnp.dot(p, Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        z = Minv * r
        rz_new = jnp.dot(r, z)
        p = z + (rz_new / rz) * p
        return x, r, z, p, rz_new, k + 1

    x, *_ = jax.lax.while_loop(cond, body, (x0, r0, z0, z0, jnp.dot(r0, z0), 0))
    # A non-finite Jacobian or gradient (NaN ``bnorm`` stops the loop at once)
    # has no step: NaN, which the driver rejects and never takes for
    # convergence, as it does the Schur solve's.
    ok = jnp.isfinite(bnorm) & jnp.all(jnp.isfinite(vals)) & jnp.all(jnp.isfinite(x))
    return jnp.where(ok, x, jnp.nan)


# --------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------


def _ops(prob, data, opts):
    """``lin(x) -> (cost, finite, g, diag(J^T J), rep)``, ``cost(x)`` and
    ``solve(rep, g, d2, lam)`` for either kind of problem. Only the n-sized
    pieces and ``rep`` outlive a linearisation: the residuals and the
    Jacobian are temporaries."""
    if isinstance(prob, BlockArrow):
        group = None if prob.padded else data["group"]

        def lin(x):
            f, jac = _ba_jac(prob, x, data)
            U, W, V = _ba_blocks(prob, jac, group)
            g = _ba_products(prob, jac, f, group)
            d = jnp.concatenate([jnp.diagonal(V), jnp.diagonal(U, axis1=1, axis2=2).reshape(-1)])
            return 0.5 * jnp.sum(f * f), jnp.all(jnp.isfinite(f)), g, d, (U, W, V)

        def cost(x):
            f = _ba_fun(prob, x, data)
            return 0.5 * jnp.sum(f * f), jnp.all(jnp.isfinite(f))

        return lin, cost, lambda rep, g, d2, lam: _ba_solve(prob, rep, g, d2, lam)

    rows, cols = data["rows"], data["cols"]

    def lin(x):
        f, vals = _coo_jac(prob, x, data)
        g = _coo_rmv(prob, vals, rows, cols, f)
        d = jax.ops.segment_sum(vals * vals, cols, prob.n)
        return 0.5 * jnp.sum(f * f), jnp.all(jnp.isfinite(f)), g, d, vals

    def cost(x):
        f = prob.fun(x, data)
        return 0.5 * jnp.sum(f * f), jnp.all(jnp.isfinite(f))

    def solve(vals, g, d2, lam):
        return _cg_solve(prob, vals, rows, cols, g, d2, lam, opts)

    return lin, cost, solve


def sparse_solve(prob, x0, data, opts: SparseOptions) -> SparseState:
    """Run the whole sparse Levenberg-Marquardt fit (one traced computation)."""
    lin, cost_of, solve = _ops(prob, data, opts)
    cost0, finite0, g0, d20, rep0 = lin(x0)
    d20 = jnp.where(d20 > 0, d20, 1.0)
    lam0 = 1e-3 * jnp.max(d20)
    gtol_ok = jnp.max(jnp.abs(g0)) <= opts.gtol
    status0 = jnp.where(finite0, jnp.where(gtol_ok, 1, -1), -2).astype(jnp.int32)
    one = jnp.ones((), jnp.int32)
    state = SparseState(x0, cost0, rep0, g0, d20, lam0, jnp.asarray(2.0, x0.dtype), one, one,
                        0 * one, status0)

    def cond(s):
        return (s.status == -1) & (s.nfev < opts.max_nfev)

    def body(s):
        p = solve(s.rep, s.g, s.d2, s.lam)
        x_new = s.x + p
        cost_new, finite = cost_of(x_new)
        cost_new = jnp.where(finite, cost_new, jnp.inf)
        pred = 0.5 * (s.lam * jnp.dot(p, s.d2 * p) - jnp.dot(s.g, p))
        actual = s.cost - cost_new
        rho = jnp.where(pred > 0, actual / jnp.where(pred > 0, pred, 1.0), -1.0)
        accept = finite & (rho > 1e-4)

        def accepted(_):
            cost, _, g, d, rep = lin(x_new)
            d2 = jnp.maximum(s.d2, d)
            lam = s.lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            return x_new, cost, rep, g, d2, lam, jnp.asarray(2.0, x0.dtype)

        def rejected(_):
            return s.x, s.cost, s.rep, s.g, s.d2, s.lam * s.nu, 2.0 * s.nu

        x, cost, rep, g, d2, lam, nu = jax.lax.cond(accept, accepted, rejected, None)
        ftol_ok = accept & (actual <= opts.ftol * s.cost)
        pnorm = jnp.sqrt(jnp.dot(p, p))  # NaN for a non-finite step: never xtol
        xtol_ok = jnp.isfinite(pnorm) & (
            pnorm <= opts.xtol * (opts.xtol + jnp.sqrt(jnp.dot(s.x, s.x))))
        gtol_ok = accept & (jnp.max(jnp.abs(g)) <= opts.gtol)
        status = jnp.where(ftol_ok & xtol_ok, 4, jnp.where(ftol_ok, 2, jnp.where(
            xtol_ok, 3, jnp.where(gtol_ok, 1, -1)))).astype(jnp.int32)
        return SparseState(x, cost, rep, g, d2, lam, nu, s.nfev + 1,
                           s.njev + accept.astype(jnp.int32), s.nit + accept.astype(jnp.int32),
                           status)

    state = jax.lax.while_loop(cond, body, state)
    return state._replace(status=jnp.where(state.status == -1, 0, state.status))
