"""Batched fits: one parameter vector per curve, many curves per compiled call.

``fit_curves(model, xdata, Y)`` fits every row of ``Y`` (K curves sharing
``xdata``) with the same model. The whole-fit solver of ``_solvers`` is
vmapped over curves, so a batch costs a handful of calls of one compiled
program instead of K separate fits.

Retiring converged curves. Under a plain ``vmap`` the ``while_loop`` runs
until the slowest curve finishes and every curve pays for those iterations.
Here the batch is instead processed through a fixed number of *slots*:
the solver advances all slots for a few trial steps at a time, curves that
have finished hand in their results, and their slots are refilled with the
next curves from the queue. The slowest curve then only holds its own slot
while the others keep the program busy, and one compiled program (of the slot
count) serves any number of curves.

Ragged data and isolated failures. Missing observations (NaN in ``Y`` with
``nan_policy='omit'``, or zero weights) get zero weight, so each curve is
fitted on its own valid points only. A curve with too few valid points or a
non-finite residual at its ``p0`` gets NaN parameters and its own status; a
curve that runs out of evaluations keeps its last iterate with status 0. The
other curves are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _model
from ._config import compile_lowered, x64
from ._fit import (DEFAULT_REFINE, _as_float_array, _bucket, _check_common,
                   _full_rank_equilibrated, _initialize_feasible, _make_problem, _plan,
                   _positive, _prepare_bounds, _resolve_solver, _sample_axis,
                   point_scale_key)
from ._pool import resolve_pool
from ._solvers import MESSAGES, Options, advance, finish, running, start
from ._solvers._losses import loss_id, static_loss

EPS = np.finfo(np.float64).eps
TOO_FEW_POINTS = -3
BATCH_MESSAGES = dict(MESSAGES)
BATCH_MESSAGES[TOO_FEW_POINTS] = "Fewer valid points than parameters."
MAX_SLOTS = 512  # curves advanced together when retiring converged curves
SEGMENT = 4  # trial steps between two retire/refill rounds


@dataclass(frozen=True)
class BatchFitResult:
    """Per-curve outcomes of a batched fit (leading axis: curves)."""

    params: np.ndarray  # (K, n); NaN where a curve has no answer
    pcov: np.ndarray  # (K, n, n)
    cost: np.ndarray  # (K,)
    nfev: np.ndarray
    njev: np.ndarray
    nit: np.ndarray
    status: np.ndarray  # (K,) common codes, plus -2 / -3 for isolated failures
    success: np.ndarray  # (K,) bool
    n_points: np.ndarray  # (K,) valid points per curve
    method: str
    param_names: tuple
    perr: np.ndarray = field(init=False)

    def __post_init__(self):
        with np.errstate(invalid="ignore"):
            object.__setattr__(self, "perr",
                               np.sqrt(np.diagonal(self.pcov, axis1=-2, axis2=-1)))

    @property
    def messages(self):
        return [BATCH_MESSAGES.get(int(s), "") for s in self.status]


def _per_curve(a, K, n, name):
    a = _as_float_array(a, name, False)
    if a.ndim == 0:
        return np.full((K, n), float(a))
    if a.shape == (n,):
        return np.broadcast_to(a, (K, n)).copy()
    if a.shape == (K, n):
        return a.copy()
    raise ValueError(f"`{name}` must be a scalar, shape ({n},) or per-curve ({K}, {n}); "
                     f"got shape {a.shape}.")


def _batch_bounds(bounds, K, n):
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):  # scipy.optimize.Bounds
        bounds = (bounds.lb, bounds.ub)
    if (isinstance(bounds, (tuple, list)) and len(bounds) == 2
            and any(np.ndim(b) == 2 for b in bounds)):
        lb = _per_curve(bounds[0], K, n, "bounds")
        ub = _per_curve(bounds[1], K, n, "bounds")
        if np.any(np.isnan(lb)) or np.any(np.isnan(ub)):
            raise ValueError("`bounds` must not contain NaN.")
        if np.any(lb >= ub):
            raise ValueError("Each lower bound must be strictly less than each upper bound "
                             "(`bounds`).")
        return lb, ub
    lb, ub = _prepare_bounds(bounds, n)
    return np.broadcast_to(lb, (K, n)).copy(), np.broadcast_to(ub, (K, n)).copy()


def fit_curves(model, xdata, Y, *, p0=None, sigma=None, sample_weight=None,
               absolute_sigma=False, bounds=(-np.inf, np.inf), method=None, jac=None,
               loss="linear", f_scale=1.0, x_scale=None, ftol=1e-8, xtol=1e-8, gtol=None,
               max_nfev=None, nan_policy=None, check_finite=None, diff_step=None,
               col_deriv=False, factor=10.0,
               refine=DEFAULT_REFINE, retire=True, pool=None, stacklevel=2) -> BatchFitResult:
    """Fit ``model(xdata, *params)`` to every row of ``Y`` (shape (K, M)).

    ``p0``, ``bounds`` (each side), ``sigma`` and ``sample_weight`` may be
    shared or per-curve (leading K axis). NaN in ``Y`` marks missing points
    when ``nan_policy='omit'``. Never raises for a single curve's failure;
    see :class:`BatchFitResult`.
    """
    pool = resolve_pool(pool)
    f_scale = _check_common(model, method, loss, nan_policy, jac, f_scale, refine)
    if diff_step is not None:
        diff_step = _positive(diff_step, "diff_step")

    if check_finite is None:
        check_finite = nan_policy is None
    Y = _as_float_array(Y, "ydata", check_finite)
    if Y.ndim != 2 or Y.size == 0:
        raise ValueError(f"batched `ydata` must be a non-empty 2-D array (n_curves, n_points); "
                         f"got shape {Y.shape}.")
    K, M = Y.shape
    missing = np.isnan(Y)
    if missing.any() and nan_policy != "omit":
        raise ValueError("`ydata` contains NaN; pass nan_policy='omit' to fit each curve on "
                         "its valid points only.")
    x_is_array = isinstance(xdata, (list, tuple, np.ndarray)) or hasattr(xdata, "__array__")
    if not x_is_array:
        raise ValueError("batched fits need an array `xdata` shared by all curves.")
    xdata = _as_float_array(xdata, "xdata", True)
    axis = _sample_axis(xdata, M) if xdata.ndim >= 1 else None
    if xdata.ndim >= 1 and axis is None:
        raise ValueError(f"`xdata` of shape {xdata.shape} does not match the {M} points per "
                         "curve of `ydata`.")

    # Parameters, bounds, method.
    if p0 is None:
        names = _model.parameter_names(model, None)
        n = len(names)
    else:
        p0a = _as_float_array(p0, "p0", False)
        n = p0a.shape[-1] if p0a.ndim else 1
        names = _model.parameter_names(model, n)
    lb, ub = _batch_bounds(bounds, K, n)
    P0 = _initialize_feasible(lb, ub) if p0 is None else _per_curve(p0, K, n, "p0")
    if not np.all(np.isfinite(P0)):
        raise ValueError("`p0` must contain only finite values.")
    if np.any((P0 < lb) | (P0 > ub)):
        bad = np.flatnonzero(np.any((P0 < lb) | (P0 > ub), axis=1))
        raise ValueError(f"`p0` is infeasible: it lies outside `bounds` for curve(s) "
                         f"{bad[:10].tolist()}.")
    has_bounds = bool(np.any(np.isfinite(lb) | np.isfinite(ub)))
    method, ftol, xtol, gtol, max_nfev = _resolve_solver(method, loss, has_bounds, ftol, xtol,
                                                         gtol, max_nfev, n)
    if x_scale is None or (isinstance(x_scale, str) and x_scale == "jac"):
        use_jac_scale = x_scale is not None or method == "lm"
        XS = np.ones((K, n))
    else:
        XS = _per_curve(x_scale, K, n, "x_scale")
        if not np.all(np.isfinite(XS) & (XS > 0)):
            raise ValueError("`x_scale` must be 'jac' or positive numbers.")
        use_jac_scale = False

    # Weights: 1/sigma, sqrt(sample_weight), zero for missing points. A
    # robust loss scales f_scale per point by sqrt(sample_weight) (sample
    # weights as frequencies): ``W`` itself without sigma, else ``S``.
    point_scale = point_scale_key(loss, sample_weight is not None,
                                  separate=sigma is not None)
    S = None
    W = np.ones((K, M))
    if sigma is not None:
        sig = _as_float_array(sigma, "sigma", False)
        if sig.ndim == 2 and sig.shape == (M, M) and K != M:
            raise ValueError("a covariance-matrix `sigma` is not supported in batched fits; "
                             "give per-point errors (shape (M,) or (K, M)).")
        try:
            sig = np.broadcast_to(sig, (K, M))
        except ValueError:
            raise ValueError(f"`sigma` has incorrect shape {np.shape(sigma)}; expected a "
                             f"scalar, ({M},) or ({K}, {M}).") from None
        with np.errstate(divide="ignore"):
            W = W / sig
    if sample_weight is not None:
        sw = np.asarray(sample_weight, dtype=float)
        try:
            sw = np.broadcast_to(sw, (K, M))
        except ValueError:
            raise ValueError(f"`sample_weight` has shape {np.shape(sample_weight)}; expected "
                             f"({M},) or ({K}, {M}).") from None
        if not np.all(np.isfinite(sw)) or np.any(sw < 0):
            raise ValueError("`sample_weight` must be finite and non-negative.")
        W = W * np.sqrt(sw)
        if point_scale == "s":
            S = np.sqrt(sw)
    W = np.where(missing, 0.0, W)
    Yf = np.where(missing, 0.0, Y)
    n_points = np.count_nonzero(W, axis=1)
    too_few = n_points < n

    # Evaluation plan (traceability, padding) and compiled programs.
    m_pad = _bucket(M) if (axis is not None or xdata.ndim == 0) else M
    with x64():
        plan, padded = _plan(model, xdata, True, n, M, m_pad, (m_pad,), (M,),
                             jac if callable(jac) else None,
                             jac if isinstance(jac, str) else "2-point", diff_step, col_deriv,
                             P0[0], lb[0], ub[0], axis, stacklevel)
        if not padded:
            m_pad = M
        if m_pad != M:
            pad = m_pad - M
            Yf = np.concatenate([Yf, np.zeros((K, pad))], axis=1)
            W = np.concatenate([W, np.zeros((K, pad))], axis=1)
            if S is not None:
                S = np.concatenate([S, np.zeros((K, pad))], axis=1)
            if xdata.ndim >= 1:
                xv = np.moveaxis(xdata, axis, -1)
                xdata = np.moveaxis(np.concatenate([xv, np.repeat(xv[..., -1:], pad, -1)],
                                                   axis=-1), -1, axis)
        opts = Options(np.float64(ftol), np.float64(xtol), np.float64(gtol),
                       np.int32(max_nfev), np.float64(f_scale),
                       np.float64(_positive(factor, "factor")),
                       np.float64(loss_id(loss)))
        problem_key = (plan.key, plan.out_shape if plan.mode == "host" else None,
                       static_loss(loss),
                       method, has_bounds, use_jac_scale, int(refine), xdata.shape, n)
        if point_scale is not None:  # "w" has the layout of unweighted data
            problem_key = problem_key + (("point_scale", point_scale),)
        pending = np.flatnonzero(~too_few)
        out = _run_batched(pool, problem_key, plan, loss, method, has_bounds, use_jac_scale,
                           int(refine), xdata, Yf, W, P0, lb, ub, XS, opts, pending, retire,
                           point_scale, S)
    host_exc = _model.pop_host_error()
    if host_exc is not None:
        raise ValueError(f"model `f` raised {type(host_exc).__name__} during the fit: "
                         f"{host_exc}") from host_exc

    params, cost, R, status, nfev, njev, nit = out
    status[too_few] = TOO_FEW_POINTS
    bad = status < 0
    params[bad] = np.nan
    cost[bad] = np.nan
    pcov = _batch_covariance(R, cost, n_points, n, method, absolute_sigma)
    pcov[bad] = np.inf
    return BatchFitResult(params=params, pcov=pcov, cost=cost, nfev=nfev, njev=njev, nit=nit,
                          status=status, success=status > 0, n_points=n_points, method=method,
                          param_names=tuple(names))


def _programs(pool, key, plan, loss, method, has_bounds, use_jac_scale, refine, args, slots,
              point_scale=None):
    """The compiled start program for ``slots`` curves at a time (``args``
    holds theirs), and the builder of segment programs."""
    kw = dict(method=method, has_bounds=has_bounds, use_jac_scale=use_jac_scale)
    data_axes = {name: None if name == "x" else 0 for name in args[1]}
    axes = (0, data_axes, 0, 0, 0, None)
    shapes = tuple(np.shape(a) for a in jax.tree_util.tree_leaves(args))

    def problem_of():
        return _make_problem(plan, "diag", loss, True, point_scale)._replace(batched=True)

    def build_start():
        problem = problem_of()
        f = jax.vmap(partial(start, problem, refine=refine, **kw), in_axes=axes)
        return compile_lowered(jax.jit(f).lower(*args))

    start_prog = pool.program(("batch-start", key, slots, shapes), build_start)

    def build_segment(max_steps):
        problem = problem_of()

        def segment(carry, x0, data, lb, ub, x_scale, opts):
            def one(c, d, lo, hi):
                return advance(c, problem, d, lo, hi, opts, max_steps, **kw)

            carry = jax.vmap(one, in_axes=(0, data_axes, 0, 0))(
                carry, data, lb, ub)
            sol = jax.vmap(lambda c, l, u: finish(c, l, u, opts, method=method))(carry, lb, ub)
            go = jax.vmap(lambda c: running(c, opts))(carry)
            return carry, (sol.x, sol.cost, sol.R, sol.status, sol.nfev, sol.njev, sol.nit), go

        return segment

    return start_prog, build_segment


def _run_batched(pool, key, plan, loss, method, has_bounds, use_jac_scale, refine, xdata,
                 Y, W, P0, LB, UB, XS, opts, pending, retire, point_scale=None, S=None):
    K, n = P0.shape
    params = np.array(P0, dtype=float)
    cost = np.full(K, np.nan)
    R = np.full((K, n, n), np.nan)
    status = np.zeros(K, dtype=np.int64)
    nfev = np.zeros(K, dtype=np.int64)
    njev = np.zeros(K, dtype=np.int64)
    nit = np.zeros(K, dtype=np.int64)
    if pending.size == 0:
        return params, cost, R, status, nfev, njev, nit

    queue = list(pending)
    slots = _pow2(len(queue)) if (not retire or len(queue) <= MAX_SLOTS) else MAX_SLOTS
    max_steps = None if (not retire or len(queue) <= slots) else SEGMENT

    def gather(idx):
        data = {"x": xdata, "y": Y[idx], "w": W[idx]}
        if S is not None:
            data["s"] = S[idx]
        return (P0[idx], data, LB[idx], UB[idx], XS[idx])

    occupant = np.array(queue[:slots] + [queue[0]] * max(0, slots - len(queue)))
    real = np.arange(slots) < min(slots, len(queue))
    queue = queue[slots:]
    args = gather(occupant) + (opts,)
    # Refills start their curves ``fill`` at a time (half the slots when
    # curves are queued: a refill takes about a third of them), so that a
    # refill does not pay a start for every slot.
    fill = slots // 2 if (max_steps is not None and slots >= 64) else slots
    start_prog, build_segment = _programs(pool, key, plan, loss, method, has_bounds,
                                          use_jac_scale, refine, gather(occupant[:fill])
                                          + (opts,), fill, point_scale)
    scatter = pool.program(("batch-scatter",), lambda: jax.jit(_scatter))

    def started(pos, curves, carry=None):
        """``carry`` with the slots ``pos`` (re)started on ``curves``."""
        for i in range(0, len(pos), fill):
            p, c = pos[i:i + fill], curves[i:i + fill]
            pad = fill - len(p)  # repeats of the last slot write the same values
            p = np.concatenate([p, np.repeat(p[-1:], pad)])
            c = np.concatenate([c, np.repeat(c[-1:], pad)])
            fresh = start_prog(*(gather(c) + (opts,)))
            if carry is None:  # the first fill: tile it to the slot count
                carry = jax.tree_util.tree_map(
                    lambda a: jnp.concatenate([a] * (slots // fill)), fresh)
            carry = scatter(p.astype(np.int32), fresh, carry)
        return carry

    def build_seg():
        carry = started(np.arange(slots), occupant)
        fn = jax.jit(build_segment(max_steps))
        return compile_lowered(fn.lower(carry, *args))

    shapes = tuple(np.shape(a) for a in jax.tree_util.tree_leaves(args))
    seg_prog = pool.program(("batch-segment", key, slots, max_steps, shapes), build_seg)

    _model.reset_host_error(plan.f)
    carry = started(np.arange(slots), occupant)
    while True:
        carry, sol, go = seg_prog(carry, *args)
        sol, go = jax.device_get((sol, go))
        done = real & ~np.asarray(go)
        if done.any():
            idx = occupant[done]
            x, c, Rs, st, nf, nj, ni = sol
            params[idx], cost[idx], R[idx] = x[done], c[done], Rs[done]
            status[idx], nfev[idx], njev[idx], nit[idx] = st[done], nf[done], nj[done], ni[done]
            real = real & ~done
        if queue and done.any():
            free = np.flatnonzero(~real)
            take = min(len(free), len(queue))
            pos = free[:take]
            occupant[pos] = queue[:take]
            real[pos] = True
            queue = queue[take:]
            args = gather(occupant) + (opts,)
            carry = started(pos, occupant[pos], carry)
        if not real.any() and not queue:
            break
    return params, cost, R, status, nfev, njev, nit


def _scatter(pos, new, old):
    """``old`` with row ``pos[i]`` of every leaf replaced by row i of ``new``."""
    return jax.tree_util.tree_map(lambda a, b: b.at[pos].set(a), new, old)


def _pow2(k):
    return 1 << max(0, int(k - 1).bit_length())


def _batch_covariance(R, cost, m, n, method, absolute_sigma):
    """Per-curve scipy covariance from the R factors (see ``_fit._covariance``)."""
    K = R.shape[0]
    pcov = np.full((K, n, n), np.inf)
    ok = np.all(np.isfinite(R.reshape(K, -1)), axis=1)
    if not ok.any():
        return pcov
    _, s, VT = np.linalg.svd(R[ok])
    thr = EPS * np.maximum(m[ok], n)[:, None] * s[:, :1]
    keep = s > thr
    good = np.ones(ok.sum(), dtype=bool)
    if method == "lm":  # leastsq's rule: scale-invariant (see _fit._covariance)
        mm = np.maximum(m[ok], n)
        for k in np.flatnonzero(~keep.all(axis=1)):
            if _full_rank_equilibrated(s[k], VT[k], mm[k]):
                keep[k] = s[k] > 0
        good &= keep.all(axis=1)
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0) ** 2, 0.0)
    pc = np.einsum("kji,kj,kjl->kil", VT, inv, VT)
    if not absolute_sigma:
        dof = m[ok] - n
        good &= dof > 0
        pc = pc * (2.0 * cost[ok] / np.where(dof > 0, dof, 1))[:, None, None]
    pc[~good] = np.inf
    pcov[ok] = pc
    return pcov
