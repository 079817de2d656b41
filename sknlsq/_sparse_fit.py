"""Sparse fits: the glue between user models and ``_solvers/_sparse``.

Two entry points, each compiling one whole-fit program held by the pool:

* :func:`fit_global` -- a *global fit*: samples carry a group id, some
  parameters are local to each group, the others shared by all. The
  Jacobian is block-arrow by construction (its pattern is known, not
  detected), evaluated by one forward product per parameter *slot* (the
  columns of one slot are structurally orthogonal across groups, so they
  share a colour), and each step is a Schur-complement solve.
* :func:`fit_pattern` -- any model ``f(x, *params)`` with a sparsity pattern
  (given, or detected from the JAX model by ``_sparsity``): the Jacobian's
  non-zeros are computed by one forward product per colour of a
  Curtis-Powell-Reid colouring and each step solves the damped normal
  equations by preconditioned conjugate gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from . import _model
from ._config import compile_lowered, x64
from ._pool import resolve_pool, run_serialized
from ._solvers._driver import MESSAGES
from ._solvers._sparse import (BlockArrow, COOPattern, SparseOptions, block_arrow_covariance,
                               sparse_solve)
from ._sparsity import color_columns, decompression_indices

EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class SparseFitResult:
    params: np.ndarray  # (n,) packed: shared first, then local group-major (global fits)
    cost: float
    nfev: int
    njev: int
    nit: int
    status: int
    message: str
    success: bool
    n_colors: int
    nnz: int  # structural non-zeros of the Jacobian
    cov: dict  # unscaled covariance pieces (see the fit functions)


def _options(ftol, xtol, gtol, max_nfev, n, cg_maxiter):
    for name, v in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"`{name}` must be a non-negative number, got {v!r}.")
    if ftol < EPS and xtol < EPS and gtol < EPS:
        raise ValueError("At least one of the tolerances (`ftol`, `xtol`, `gtol`) must be "
                         f"higher than machine epsilon ({EPS:.1e}).")
    if max_nfev is None:
        max_nfev = max(100 * min(n, 100), 1000)
    return SparseOptions(np.float64(ftol), np.float64(xtol), np.float64(gtol),
                         np.int32(max_nfev), np.int32(cg_maxiter or min(n, 500)),
                         np.float64(1e-10))


def _run(pool, key, prob, x0, data, opts):
    def build():
        return compile_lowered(jax.jit(lambda x0, d, o: sparse_solve(prob, x0, d, o)).lower(
            x0, data, opts))

    prog = pool.program(key, build)
    return prog(x0, data, opts)


def _result(state, n_colors, nnz, cov):
    status = int(state.status)
    if status == -2:
        raise ValueError("Residuals are not finite in the initial point `p0`.")
    return SparseFitResult(params=np.asarray(state.x, dtype=float), cost=float(state.cost),
                           nfev=int(state.nfev), njev=int(state.njev), nit=int(state.nit),
                           status=status, message=MESSAGES[status], success=status > 0,
                           n_colors=n_colors, nnz=nnz, cov=cov)


# --------------------------------------------------------------------------
# Global fits (block-arrow)
# --------------------------------------------------------------------------


def fit_global(model, xdata, y, w, group, n_groups, local_idx, shared_idx, p0_local, p0_shared,
               *, ftol=1e-8, xtol=1e-8, gtol=1e-8, max_nfev=None, pool=None):
    """Fit ``model(x, *params)`` where ``params[j]`` is, for ``j`` in
    ``local_idx``, the value of the row's group (an array over rows) and, for
    ``j`` in ``shared_idx``, one shared scalar.

    Returns a :class:`SparseFitResult` whose ``cov`` holds the unscaled
    ``(J^T J)^{-1}`` blocks: ``shared`` (p_g, p_g), ``local`` (G, p_l, p_l)
    and ``cross`` (G, p_l, p_g).
    """
    pool = resolve_pool(pool)
    pl, pg = len(local_idx), len(shared_idx)
    n_params = pl + pg
    n = pg + n_groups * pl
    opts = _options(ftol, xtol, gtol, max_nfev, n, None)
    data, padded = _global_layout(xdata, y, w, group, n_groups)
    m = np.asarray(y).size

    def fun(tl, tg, d):
        # The model sees x as for one ordinary sample set, (k, rows) or
        # (rows,), and each local parameter as an array over those rows (the
        # value of the row's group); in the padded layout the rows are the
        # G x P slots, group-major, so a row's local value is a broadcast.
        shape = d["y"].shape
        args = [None] * n_params
        for j, k in enumerate(local_idx):
            args[k] = (jnp.broadcast_to(tl[:, j][:, None], shape).reshape(-1) if padded
                       else tl[d["group"], j])
        for j, k in enumerate(shared_idx):
            args[k] = tg[j]
        out = jnp.asarray(model(d["x"], *args), dtype=jnp.float64)
        out = jnp.broadcast_to(out, (int(np.prod(shape)),)).reshape(shape)
        return d["w"] * (out - d["y"])

    prob = BlockArrow(fun, int(n_groups), pl, pg, padded)
    x0 = np.concatenate([np.asarray(p0_shared, float).reshape(-1),
                         np.asarray(p0_local, float).reshape(-1)])
    key = ("sparse-global", _model._hashable(model), tuple(local_idx), tuple(shared_idx),
           int(n_groups), padded, tuple((k, np.shape(v)) for k, v in sorted(data.items())))
    with x64():
        state = _run(pool, key, prob, x0, data, opts)
        status = int(state.status)
        cov = {}
        if status >= 0:
            # Batched LAPACK (per-block inverses): one at a time (see _pool).
            shared, local, cross = run_serialized(jax.jit(block_arrow_covariance), state.rep)
            cov = dict(shared=np.asarray(shared), local=np.asarray(local),
                       cross=np.asarray(cross))
    return _result(state, pl + pg, m * (pl + pg), cov)


def _global_layout(xdata, y, w, group, n_groups):
    """The data of a global fit as the solver takes them.

    Groups side by side in a (G, P) layout (P the largest group; padding
    rows get zero weight) when that wastes little room: the sums of a step
    are then batched contractions instead of scatters. Otherwise flat, with
    the group of each row. ``w=None`` means unit weights.

    ``x`` keeps the form the model takes for one sample set in both layouts:
    1-D or (k, rows), the padded layout's rows being its G x P slots in
    group-major order (``y`` and ``w`` are (G, P) there).
    """
    group = np.asarray(group, dtype=np.int64)
    y = np.asarray(y, dtype=float)
    xdata = np.asarray(xdata, dtype=float)
    m = y.size
    counts = np.bincount(group, minlength=n_groups)
    P = int(counts.max())
    if n_groups * P > 1.5 * m:
        wd = np.ones(()) if w is None else np.asarray(w, dtype=float)
        return {"x": xdata, "y": y, "w": wd, "group": group.astype(np.int32)}, False
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(m) - np.repeat(starts, counts)
    gs = group[order]
    del group

    def lay(a):
        out = np.zeros(a.shape[:-1] + (n_groups, P))
        out[..., gs, slot] = a[..., order]
        return out

    if np.all(counts == P):
        wd = np.ones(()) if w is None else lay(np.asarray(w, dtype=float))
        xl = lay(xdata) if xdata.ndim else xdata
    else:
        wd = lay(np.ones(m) if w is None else np.asarray(w, dtype=float))
        xl = xdata
        if xdata.ndim:  # padding rows repeat a real row of their group
            xl = np.broadcast_to(xdata[..., order[starts]][..., None],
                                 xdata.shape[:-1] + (n_groups, P)).copy()
            xl[..., gs, slot] = xdata[..., order]
    if xl.ndim:
        xl = xl.reshape(xl.shape[:-2] + (n_groups * P,))
    return {"x": xl, "y": lay(y), "w": wd}, True


# --------------------------------------------------------------------------
# General patterns (colouring + CG)
# --------------------------------------------------------------------------


def fit_pattern(model, xdata, y, w, p0, pattern, *, ftol=1e-8, xtol=1e-8, gtol=1e-8,
                max_nfev=None, cg_maxiter=None, pool=None, dense_cov_limit=2000):
    """Fit ``model(x, *params)`` with a Jacobian of sparsity ``pattern``
    (a validated scipy.sparse matrix of shape (m, n)).

    ``cov`` holds ``full`` (the unscaled ``(J^T J)^+``, only when n <=
    ``dense_cov_limit``) or nothing.
    """
    pool = resolve_pool(pool)
    P = sp.csr_array(pattern, dtype=bool)
    m, n = P.shape
    colors, n_colors = color_columns(P)
    rows, cols, _ = decompression_indices(P, colors)
    opts = _options(ftol, xtol, gtol, max_nfev, n, cg_maxiter)

    def fun(x, d):
        out = jnp.asarray(model(d["x"], *[x[i] for i in range(n)]), dtype=jnp.float64)
        return d["w"] * (jnp.broadcast_to(out, d["y"].shape).reshape(-1) - d["y"])

    prob = COOPattern(fun, int(n), int(m), int(n_colors))
    data = {"x": xdata, "y": np.asarray(y, float).reshape(-1), "w": w,
            "rows": np.asarray(rows, np.int32), "cols": np.asarray(cols, np.int32),
            "colors": np.asarray(colors, np.int32)}
    key = ("sparse-pattern", _model._hashable(model), int(n), int(m), int(n_colors),
           tuple((k, np.shape(v)) for k, v in sorted(data.items())))
    with x64():
        state = _run(pool, key, prob, np.asarray(p0, float), data, opts)
    cov = {}
    if n <= dense_cov_limit and int(state.status) >= 0:
        J = sp.csr_array((np.asarray(state.rep), (rows, cols)), shape=(m, n))
        JTJ = (J.T @ J).toarray()
        # Equilibrated (unit column norms) before the rank decision of the
        # pseudo-inverse, then scaled back: badly scaled columns are not
        # taken for a rank deficiency.
        if np.all(np.isfinite(JTJ)):
            d = np.sqrt(np.diag(JTJ))
            d = np.where(d > 0, d, 1.0)
            full = np.linalg.pinv(JTJ / np.outer(d, d), hermitian=True) / np.outer(d, d)
        else:  # a non-finite Jacobian (the fit failed): no covariance
            full = np.full((n, n), np.nan)
        cov = dict(full=full)
    return _result(state, int(n_colors), int(rows.size), cov)
