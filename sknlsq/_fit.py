"""One fit, end to end: validation, packing, the compiled solve, covariance.

This is the layer shared by :func:`sknlsq.curve_fit` and the estimators. It
turns user input (scipy's conventions) into the arrays the pure-JAX solver
takes, runs the cached compiled program inside a scoped ``jax.enable_x64``
context, and turns the solution back into NumPy results with scipy's
covariance semantics.

Float64 policy: all computation runs in float64 inside a *scoped*
``jax.enable_x64(True)`` context, so a user's own float32 JAX code outside a
fit is untouched (the global ``jax_enable_x64`` flag is never changed).

Shape buckets: data of length M are padded to a bucket size (a geometric
sequence of ratio 1.25, see :func:`_bucket`) with zero-weight copies of the
last point. Zero-weight rows have zero residual and zero Jacobian rows, so
they change neither the QR factor, the cost nor any step: the result is the
unpadded fit, while fits of 900, 1000 and 1033 points reuse one compiled
program. Only models whose rows are independent are padded
(:func:`_rows_independent`); the others run at their exact shape.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import LinAlgError, cholesky
from scipy.optimize import OptimizeWarning

from . import _model
from ._config import compile_lowered, fetch, x64
from ._pool import resolve_pool
from ._solvers import LOSSES, MESSAGES, NONFINITE_X0, Options, Problem, solve
from ._solvers._losses import loss_id, static_loss

EPS = np.finfo(np.float64).eps
METHOD_NAMES = ("trf", "dogbox", "lm")
FD_SCHEMES = ("2-point", "3-point", "cs")
DEFAULT_REFINE = 50
# Above this many bytes of [J | f], in-memory fits accumulate the QR factor
# chunk by chunk (rows of _CHUNK_ROWS) instead of forming the Jacobian.
_JACOBIAN_BUDGET = 64 << 20
_CHUNK_ROWS = 1 << 18


def jacobian_budget():
    """Bytes of ``[J | f]`` above which a fit runs in chunks
    (``SKNLSQ_JACOBIAN_BUDGET`` overrides the default of 64 MiB)."""
    env = os.environ.get("SKNLSQ_JACOBIAN_BUDGET")
    return int(env) if env else _JACOBIAN_BUDGET


# Verdicts of _rows_independent, by (model, host, sample axis, other dims of x).
_ROW_CHECKS: dict = {}
_ROW_CHECK_ROWS = 16


def _distinct_rows(x, axis, limit):
    """Indices of up to ``limit`` pairwise distinct rows of ``x`` (along the
    sample ``axis``), spread over the data, interleaved (alternately from
    the front and the back of the data) so that any half of them differs
    from the other half in mean, spread and order."""
    m = x.shape[axis]
    cand = np.unique(np.linspace(0, m - 1, min(m, 512)).astype(np.int64))
    flat = np.moveaxis(np.take(x, cand, axis=axis), axis, 0).reshape(cand.size, -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    distinct = cand[np.sort(first)]
    pick = distinct[np.unique(np.linspace(0, distinct.size - 1,
                                          min(limit, distinct.size)).astype(np.int64))]
    order = np.empty_like(pick)
    order[0::2] = pick[: (pick.size + 1) // 2]
    order[1::2] = pick[(pick.size + 1) // 2:][::-1]
    return order


def _rows_independent(f, host, x, axis, p0):
    """Whether row i of ``f(x, *p0)`` depends on row i of ``x`` only (along the
    sample ``axis``), so that padding the data with extra rows leaves the
    values at the real rows, and so the fit, unchanged. The same property
    makes evaluation in chunks exact: the large-data path asks it too.

    Tested on up to 16 pairwise distinct rows of ``x`` spread over the data
    and interleaved: evaluated together they must give what their two halves
    give apart and, reversed, the reversed values (fails for models that use
    the data as a whole: ``x - mean(x)``, ``x / len(x)``, cumulative sums,
    or neighbouring rows: ``np.gradient(x)``), and the same values with 8
    copies of the last row appended; the last 8 rows of the data must also
    keep their values with 8 copies of the last row appended, as padding
    appends them. Fewer than 16 distinct rows are repeated in runs (the
    halves still differ). Data whose rows are all equal cannot show a
    dependence on other rows (a model centring ``x`` on its mean passes any
    test on equal rows): they get False (no padding, no chunks) and no
    cached verdict. A verdict from distinct rows is cached per model and
    layout. A model that fails to evaluate on so few rows counts as
    dependent (the fit then runs at its exact shape)."""
    shape = np.shape(x)
    key = (_model._hashable(f), host, axis, shape[:axis] + shape[axis + 1:])
    verdict = _ROW_CHECKS.get(key)
    if verdict is not None:
        return verdict
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[axis]
    order = _distinct_rows(x, axis, _ROW_CHECK_ROWS)
    if order.size < 2:
        return False
    if order.size < _ROW_CHECK_ROWS:
        # Few distinct rows (binary or dose-level x): runs of each in data
        # order, so that the halves hold different values (a 2-level x gives
        # 8 + 8 rows; levels 0..4 give halves {0, 1} and {2, 3}).
        order = np.repeat(np.sort(order), -(-_ROW_CHECK_ROWS // order.size))
        order = order[:_ROW_CHECK_ROWS]

    def rows(a, idx):
        return np.take(a, idx, axis=axis)

    k = order.size // 2
    xs = rows(x, order[: 2 * k])
    e = _ROW_CHECK_ROWS // 2
    tail = rows(x, np.arange(max(0, m - e), m))
    t = tail.shape[axis]
    parts = (xs, rows(xs, np.arange(k)), rows(xs, np.arange(k, 2 * k)),
             rows(xs, np.arange(2 * k)[::-1]), rows(xs, np.minimum(np.arange(2 * k + e),
                                                                  2 * k - 1)),
             tail, rows(tail, np.minimum(np.arange(t + e), t - 1)))
    p = np.asarray(p0, dtype=np.float64)

    def same(a, b):
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-12, atol=0,
                                                       equal_nan=True))

    try:
        with x64():
            if host:
                outs = [f(part, *p) for part in parts]
            else:
                def evaluate(parts, q):
                    qs = [q[i] for i in range(q.shape[0])]
                    return tuple(jnp.asarray(f(v, *qs), jnp.float64) for v in parts)

                outs = jax.jit(evaluate)(parts, p)
            both, first, second, rev, padded, short, tail_padded = (
                np.asarray(o, dtype=np.float64).reshape(-1) for o in outs)
        verdict = (both.shape == (2 * k,) and short.shape == (t,)
                   and same(both, np.concatenate([first, second]))
                   and same(rev, both[::-1])
                   and padded.shape == (2 * k + e,) and same(padded[:2 * k], both)
                   and tail_padded.shape == (t + e,) and same(tail_padded[:t], short))
    except Exception:  # noqa: BLE001 - cannot tell: do not pad
        verdict = False
    if len(_ROW_CHECKS) > 1024:
        _ROW_CHECKS.clear()
    _ROW_CHECKS[key] = verdict
    return verdict


def _jac_shape(target, n, col_deriv):
    """The shape a ``jac`` callable must return for model values of shape
    ``target``."""
    m = int(np.prod(target))
    return (n, m) if col_deriv else (m, n)


def _host_jac_shape(jac, x, axis, xshape, p0):
    """Shape of ``jac(x, *p0)`` for a ``jac`` that JAX cannot trace (called once
    with NumPy input, ``x`` edge-padded to ``xshape``); None if the call fails
    (the fit reports that error when it calls ``jac``)."""
    try:
        xx = np.asarray(x, dtype=np.float64)
        if tuple(xx.shape) != tuple(xshape) and axis is not None:
            xx = _pad_along(xx, axis, xshape[axis])
        return np.shape(jac(xx, *np.asarray(p0, dtype=np.float64)))
    except Exception:  # noqa: BLE001
        return None


_PAD_LIMIT = 1 << 22  # above this many points, fit the exact shape (no padding copy)
_MIN_BUCKET = 16


@dataclass(frozen=True)
class FitResult:
    """Outcome of one fit (NumPy arrays, float64)."""

    params: np.ndarray
    pcov: np.ndarray
    cost: float
    # Weighted residuals at the solution. Chunked fits (data too large to
    # form the Jacobian) hold a zero-argument function computing them
    # instead: see `residuals`.
    fun: Any
    nfev: int
    njev: int
    nit: int
    status: int
    message: str
    success: bool
    method: str
    param_names: tuple
    active_mask: np.ndarray
    cov_estimated: bool = True
    # Triangular factor of the (loss-scaled) Jacobian at params (J = Q R),
    # and Q^T f of the residuals with it; None where a fit does not keep them.
    R: np.ndarray | None = None
    qtf: np.ndarray | None = None
    perr: np.ndarray = field(init=False)

    def __post_init__(self):
        # sqrt of the variances, NaN (without a warning) where one is negative
        # or NaN; quicker than an errstate context on every small fit.
        d = self.pcov.diagonal()
        object.__setattr__(self, "perr", np.sqrt(d, out=np.full_like(d, np.nan), where=d >= 0))

    def residuals(self) -> np.ndarray:
        """The weighted residual vector at the solution (computed on first
        call where the fit ran in chunks)."""
        if callable(self.fun):
            object.__setattr__(self, "fun", self.fun())
        return self.fun


# --------------------------------------------------------------------------
# Compiled programs (held by the MemoryPool)
# --------------------------------------------------------------------------


def _pack(sol):
    """The parts of a Solution the host needs, as one float64 vector: every
    array returned costs a device-to-host transfer of its own (~20 us)."""
    head = jnp.stack([sol.cost, sol.nfev, sol.njev, sol.nit, sol.status]).astype(jnp.float64)
    # The covariance needs the SVD of R (same singular values and right
    # singular vectors as J); taking it here saves a host LAPACK call.
    _, sv, VT = jnp.linalg.svd(sol.R, full_matrices=False)
    # R and Q^T f (n^2 + n values) for MINPACK's fjac / ipvt / qtf
    # (curve_fit's full_output with method 'lm').
    return jnp.concatenate([head, sol.x, sol.active_mask.astype(jnp.float64), sv,
                            VT.reshape(-1), sol.R.reshape(-1), sol.qtf, sol.fun])


def _unpack(v, n):
    """Inverse of :func:`_pack`."""
    cost, nfev, njev, nit, status = v[:5]
    x = v[5:5 + n]
    active = v[5 + n:5 + 2 * n].astype(int)
    sv = v[5 + 2 * n:5 + 3 * n]
    k = 5 + 3 * n
    VT = v[k:k + n * n].reshape(n, n)
    R = v[k + n * n:k + 2 * n * n].reshape(n, n)
    qtf = v[k + 2 * n * n:k + 2 * n * n + n]
    fun = v[k + 2 * n * n + n:]
    return dict(cost=float(cost), counts=(int(nfev), int(njev), int(nit), int(status)),
                x=x, active=active, sv=sv, VT=VT, R=R, qtf=qtf, fun=fun)


def point_scale_key(loss, weighted, separate=False):
    """The ``point_scale`` of a problem (see ``_solvers._problem``): where a
    robust loss finds the per-point multipliers ``sqrt(sample_weight)`` of
    ``f_scale`` that make sample weights frequencies. None for the linear
    loss (``w`` already makes them frequencies there) and without sample
    weights; ``"w"`` where the residual weights are ``sqrt(sample_weight)``
    themselves (no second array); ``"s"`` (``separate``: a 1-D ``sigma`` as
    well) for a row of its own."""
    if loss == "linear" or not weighted:
        return None
    return "s" if separate else "w"


def _make_problem(plan, weighting, loss, use_fwd, point_scale=None):
    """Residual ``w * T^{-1} (f(x, p) - y)`` and its Jacobian for a plan;
    ``point_scale`` as returned by :func:`point_scale_key`."""

    def model_values(p, d):
        return jnp.broadcast_to(plan.evaluate(p, d["x"]), d["y"].shape).reshape(-1)

    def whiten(r, d):
        if weighting == "cov":
            r = jax.scipy.linalg.solve_triangular(d["L"], r, lower=True)
        return r

    def fun(p, d):
        r = whiten(model_values(p, d) - d["y"].reshape(-1), d)
        return d["w"] * r

    if plan.jac_mode is None:
        jf = jax.jacfwd if use_fwd else jax.jacrev

        def fun_jac(p, d):
            J, f = jf(lambda q: (fun(q, d), fun(q, d)), has_aux=True)(p)
            return f, J

        def fun_jac_t(p, d):
            # One jvp per parameter: row j of the result is column j of J.
            basis = jnp.eye(p.shape[0], dtype=p.dtype)
            f, JT = jax.vmap(lambda t: jax.jvp(lambda q: fun(q, d), (p,), (t,)),
                             out_axes=(None, 0))(basis)
            return f, JT
    else:
        def fun_jac(p, d):
            f = fun(p, d)
            J = whiten(plan.jacobian(p, d["x"]), d)
            return f, d["w"][:, None] * J

        def fun_jac_t(p, d):
            f, J = fun_jac(p, d)
            return f, J.T

    return Problem(fun, fun_jac, static_loss(loss), point_scale=point_scale,
                   fun_jac_t=fun_jac_t)


def _pack_args(p0, lb, ub, x_scale, opts):
    """The small arguments of a fit as one float64 vector: each argument of a
    compiled call costs a host-to-device conversion of its own (~6 us on a
    CPU), more than a small solve's step."""
    tail = np.array([opts.ftol, opts.xtol, opts.gtol, opts.max_nfev, opts.f_scale,
                     opts.factor, opts.loss_id], dtype=np.float64)
    return np.concatenate([p0, lb, ub, x_scale, tail])


def _unpack_args(theta, n):
    """Inverse of :func:`_pack_args`, inside the compiled program."""
    p0, lb, ub, xs = (theta[i * n:(i + 1) * n] for i in range(4))
    t = theta[4 * n:]
    opts = Options(t[0], t[1], t[2], t[3].astype(jnp.int32), t[4], t[5], t[6])
    return p0, lb, ub, xs, opts


def _compiled_solver(pool, plan, weighting, loss, use_fwd, method, has_bounds,
                     use_jac_scale, refine, args, point_scale=None):
    """The compiled whole-fit program for these settings and argument shapes.

    ``args = (theta, data)``: :func:`_pack_args`'s vector and the data dict,
    whose ``"xyw"`` entry (if present) stacks 1-D ``x``, ``y`` and ``w`` (and
    ``s``, a fourth row, for ``point_scale="s"``)."""
    theta, data = args
    n = (theta.shape[0] - len(Options._fields)) // 4
    shapes = tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in sorted(data.items()))
    key = ("curve_fit", plan.key, plan.out_shape if plan.mode == "host" else None,
           weighting, static_loss(loss), use_fwd, method, has_bounds, use_jac_scale, refine, n,
           shapes)
    if point_scale is not None:  # "w" has the layout of unweighted data
        key = key + (("point_scale", point_scale),)

    def build():
        problem = _make_problem(plan, weighting, loss, use_fwd, point_scale)
        run = partial(solve, problem, method=method, has_bounds=has_bounds,
                      use_jac_scale=use_jac_scale, refine=refine)

        def program(theta, data):
            p0, lb, ub, xs, opts = _unpack_args(theta, n)
            if "xyw" in data:
                data = dict(data)
                xyw = data.pop("xyw")
                data.update(x=xyw[0], y=xyw[1], w=xyw[2])
                if xyw.shape[0] == 4:
                    data["s"] = xyw[3]
            return _pack(run(p0, data, lb, ub, xs, opts))

        return compile_lowered(jax.jit(program).lower(*args))

    return pool.program(key, build)


# --------------------------------------------------------------------------
# Validation helpers (messages name the argument)
# --------------------------------------------------------------------------


def _bucket_sizes(limit):
    """Geometric bucket sizes, ratio 1.25 from 16, rounded up to multiples of 8
    (at most 25% + 7 rows of padding; 900, 1000 and 1033 points share 1112)."""
    sizes, v = [], float(_MIN_BUCKET)
    while not sizes or sizes[-1] < limit:
        size = -(-int(np.ceil(v - 1e-9)) // 8) * 8
        if not sizes or size > sizes[-1]:
            sizes.append(size)
        v *= 1.25
    return tuple(sizes)


_BUCKETS = _bucket_sizes(_PAD_LIMIT)


def _bucket(m):
    """The padded length of ``m`` points (``m`` itself above the largest size)."""
    if m <= _MIN_BUCKET:
        return _MIN_BUCKET
    i = bisect.bisect_left(_BUCKETS, m)
    return _BUCKETS[i] if i < len(_BUCKETS) else m


def _unbounded(bounds):
    """Whether ``bounds`` is the default ``(-inf, inf)`` as two floats."""
    return (type(bounds) is tuple and len(bounds) == 2 and type(bounds[0]) is float
            and type(bounds[1]) is float and bounds[0] == -np.inf and bounds[1] == np.inf)


_ONE = np.ones(1).tobytes()


def _unit_weights(m):
    """``m`` unit weights as a read-only view of one float (no m-sized
    allocation; quicker than ``np.broadcast_to``)."""
    return np.ndarray((m,), dtype=np.float64, buffer=_ONE, strides=(0,))


_CONSTANTS: dict = {}


def _constant(value, n):
    """A read-only length-``n`` array of ``value``, made once per ``(value, n)``
    (the default bounds and ``x_scale`` of every fit)."""
    key = (value, n)
    arr = _CONSTANTS.get(key)
    if arr is None:
        arr = np.full(n, value)
        arr.setflags(write=False)
        if len(_CONSTANTS) < 256:
            _CONSTANTS[key] = arr
    return arr


def _prepare_bounds(bounds, n):
    if _unbounded(bounds):  # the common case, without the general checks
        return _constant(-np.inf, n), _constant(np.inf, n)
    from scipy.optimize import Bounds

    if isinstance(bounds, Bounds):
        lb, ub = bounds.lb, bounds.ub
    else:
        try:
            if len(bounds) != 2:
                raise ValueError
            lb, ub = bounds
        except (TypeError, ValueError):
            raise ValueError("`bounds` must contain 2 elements: (lower, upper).") from None
    try:
        lb = np.asarray(lb, dtype=float)
        ub = np.asarray(ub, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`bounds` must be numeric: {exc}") from None
    if lb.ndim == 0:
        lb = np.full(n, float(lb))
    if ub.ndim == 0:
        ub = np.full(n, float(ub))
    if lb.shape != (n,) or ub.shape != (n,):
        raise ValueError(f"Inconsistent shapes between `bounds` {lb.shape, ub.shape} and the "
                         f"number of parameters ({n}).")
    if np.any(np.isnan(lb)) or np.any(np.isnan(ub)):
        raise ValueError("`bounds` must not contain NaN.")
    if np.any(lb >= ub):
        raise ValueError("Each lower bound must be strictly less than each upper bound "
                         "(`bounds`).")
    return lb, ub


def _initialize_feasible(lb, ub):
    p0 = np.ones_like(lb)
    lf, uf = np.isfinite(lb), np.isfinite(ub)
    both = lf & uf
    p0[both] = 0.5 * (lb[both] + ub[both])
    p0[lf & ~uf] = lb[lf & ~uf] + 1
    p0[~lf & uf] = ub[~lf & uf] - 1
    return p0


def _as_float_array(a, name, check_finite):
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be numeric array_like: {exc}") from None
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must not contain infs or NaNs "
                         "(array must not contain infs or NaNs).")
    return arr


def check_points_for_method(method, n, m):
    """scipy's rule: only 'lm' (MINPACK) needs M >= N, with scipy's messages;
    'trf' and 'dogbox' solve underdetermined problems (the covariance is then
    inf). ``method`` resolved ('lm' for None without bounds)."""
    if method == "lm" and n > m:
        if m != 1:
            raise TypeError(f"The number of func parameters={n} must not exceed the number "
                            f"of data points={m}")
        raise TypeError(f"Improper input: func input vector length N={n} must not exceed "
                        f"func output vector length M={m}")


def _check_tolerances(ftol, xtol, gtol, method):
    vals = {}
    for name, tol in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if tol is None or (method == "lm" and tol == 0):  # leastsq accepts 0 silently
            vals[name] = 0.0
            continue
        try:
            tol = float(tol)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be a number, got {tol!r}.") from None
        if not tol >= 0:
            raise ValueError(f"`{name}` must be non-negative, got {tol!r}.")
        if tol < EPS:
            warnings.warn(f"Setting `{name}` below the machine epsilon ({EPS:.2e}) "
                          "effectively disables the corresponding termination condition.",
                          stacklevel=4)
        vals[name] = tol
    if all(v < EPS for v in vals.values()):
        raise ValueError("At least one of the tolerances (`ftol`, `xtol`, `gtol`) must be "
                         f"higher than machine epsilon ({EPS:.2e}).")
    return vals["ftol"], vals["xtol"], vals["gtol"]


def _positive(value, name):
    """A positive finite number (or array of them), else an error naming it."""
    if type(value) is float and 0.0 < value < np.inf:  # the common case, quickly
        return value
    v = _as_float_array(value, name, False)
    if v.size == 0 or not np.all(np.isfinite(v) & (v > 0)):
        raise ValueError(f"`{name}` must be positive, got {value!r}.")
    return v if v.ndim else float(v)


def _check_common(model, method, loss, nan_policy, jac, f_scale, refine):
    """Validate the settings shared by single and batched fits; returns f_scale."""
    if not callable(model):
        raise TypeError(f"the model `f` must be callable, got {type(model).__name__}.")
    if method is not None and method not in METHOD_NAMES:
        raise ValueError(f"`method` must be 'trf', 'dogbox' or 'lm', got {method!r}.")
    if callable(loss) or loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {list(LOSSES)}, got {loss!r}.")
    if nan_policy not in (None, "raise", "omit"):
        if nan_policy == "propagate":
            raise ValueError("`nan_policy='propagate'` is not supported by this function.")
        raise ValueError("nan_policy must be one of {None, 'raise', 'omit'}")
    if jac is not None and not callable(jac) and jac not in FD_SCHEMES:
        raise ValueError(f"`jac` must be a callable or one of {FD_SCHEMES}, got {jac!r}.")
    try:
        f_scale = float(f_scale)
    except (TypeError, ValueError):
        raise ValueError(f"`f_scale` must be a positive number, got {f_scale!r}.") from None
    if not f_scale > 0 or not np.isfinite(f_scale):
        raise ValueError(f"`f_scale` must be a positive number, got {f_scale!r}.")
    if not isinstance(refine, (int, np.integer)) or refine < 0:
        raise ValueError(f"`refine` must be a non-negative integer, got {refine!r}.")
    return f_scale


def _resolve_solver(method, loss, has_bounds, ftol, xtol, gtol, max_nfev, n):
    """scipy's method choice and checks, tolerance and budget defaults."""
    if method is None:
        method = "trf" if has_bounds else "lm"
    if method == "lm" and has_bounds:
        raise ValueError("Method 'lm' only works for unconstrained problems. "
                         "Use 'trf' or 'dogbox' instead (`method`, `bounds`).")
    if method == "lm" and loss != "linear":
        raise ValueError("method='lm' supports only 'linear' loss function (`loss`).")
    if gtol is None:
        gtol = 0.0 if method == "lm" else 1e-8
    ftol, xtol, gtol = _check_tolerances(ftol, xtol, gtol, method)
    if max_nfev is None:
        # The budget scipy gives finite-difference LM, counted here in trial
        # points (every trial costs one residual evaluation).
        max_nfev = 100 * n * (n + 1)
    integral = isinstance(max_nfev, (int, np.integer)) or (
        isinstance(max_nfev, (float, np.floating)) and float(max_nfev).is_integer())
    if isinstance(max_nfev, bool) or not integral or max_nfev < 1:  # scipy takes 100.0
        raise ValueError(f"`max_nfev` must be a positive integer, got {max_nfev!r}.")
    return method, ftol, xtol, gtol, int(max_nfev)


def _sample_axis(x, m):
    if x.ndim >= 1 and x.shape[-1] == m:
        return x.ndim - 1
    if x.ndim >= 1 and x.shape[0] == m:
        return 0
    return None


def _pad_along(a, axis, size, mode="edge"):
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return np.pad(a, widths, mode=mode)


# --------------------------------------------------------------------------
# Model plan (traceability, padding feasibility)
# --------------------------------------------------------------------------


def _output_shape_error(out, target):
    msg = (f"model `f` returned an array of shape {tuple(out)}; expected shape "
           f"{tuple(target)} matching `ydata`.")
    if len(target) > 1:
        msg += (" A 2-D `ydata` is compared with a model output of the same shape; to fit "
                "each row of `ydata` as a curve of its own, pass `batch=True`.")
    return ValueError(msg)


def _plan(f, x, x_is_array, n, m, m_pad, ypad_shape, y_shape, jac, fd_scheme, rel_step,
          col_deriv, p0, lb, ub, axis, stacklevel=2):
    """Choose how to evaluate the model and whether padding can be used.

    Returns ``(plan, use_padding)``. ``stacklevel`` is that of the public
    caller of ``fit_curve`` / ``fit_curves`` (for the fallback warning).
    """
    def shape_ok(out, target):
        if len(target) > 1:
            # A 2-D ydata is compared with an output of its own shape (scipy
            # refuses 2-D residuals altogether); broadcasting one curve to
            # every row would fit them jointly, which is batch=True's job.
            return tuple(out) == tuple(target)
        if tuple(out) == tuple(target):
            return True
        try:
            return np.broadcast_shapes(tuple(out), target) == tuple(target)
        except ValueError:
            return False

    pad_shape = None
    if m_pad != m and x_is_array:
        pad_shape = list(np.shape(x))
        if axis is not None:
            pad_shape[axis] = m_pad
        pad_shape = tuple(pad_shape)

    # 1. JAX path.
    trace_exc = None
    if x_is_array:
        for xshape, target, padded in ((pad_shape, ypad_shape, True),
                                       (np.shape(x), y_shape, False)):
            if xshape is None:
                continue
            out, exc = _model.probe_jax(f, xshape, n)
            if (out is not None and shape_ok(out, target) and padded
                    and not _rows_independent(f, False, x, axis, p0)):
                continue  # padding would change the model's values: exact shape
            if out is not None and shape_ok(out, target):
                jac_mode = None
                if callable(jac):
                    jout, _ = _model.probe_jax_jac(jac, xshape, n)
                    jac_mode = "jax" if jout is not None else "host"
                    if jout is None:
                        jout = _host_jac_shape(jac, x, axis, xshape, p0)
                    want = _jac_shape(target, n, col_deriv)
                    if jout is not None and tuple(jout) != want and not (
                            n == 1 and tuple(jout) == (max(want),)):
                        if padded:
                            continue  # e.g. a jac of fixed length: fit the exact shape
                        raise ValueError(f"`jac` returned an array of shape {tuple(jout)}; "
                                         f"expected {want} ({'N, M' if col_deriv else 'M, N'}"
                                         f" for M = {want[1] if col_deriv else want[0]} "
                                         f"points and N = {n} parameters).")
                return _model.ModelPlan(f, mode="jax", jac=jac if callable(jac) else None,
                                        jac_mode=jac_mode, col_deriv=col_deriv,
                                        out_shape=target), padded
            if out is not None:
                trace_exc = _output_shape_error(out, target)
            elif trace_exc is None or padded is False:
                trace_exc = exc if trace_exc is None else trace_exc
    else:
        trace_exc = TypeError("`xdata` is not an array, so the model cannot be traced")

    # 2. Host path: the model must at least run on NumPy input.
    host_exc = None
    candidates = []
    if pad_shape is not None and _rows_independent(f, True, x, axis, p0):
        candidates.append((_pad_along(x, axis, m_pad) if axis is not None else x,
                           ypad_shape, True))
    candidates.append((x if x_is_array else x, y_shape, False))
    for xx, target, padded in candidates:
        try:
            out = np.asarray(f(xx, *p0), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - reported below with the cause chained
            host_exc = exc
            continue
        if not shape_ok(out.shape, target):
            host_exc = _output_shape_error(out.shape, target)
            continue
        if isinstance(trace_exc, ValueError) and "returned an array of shape" in str(trace_exc):
            raise trace_exc
        _model.warn_fallback(trace_exc, has_jac=callable(jac), stacklevel=stacklevel + 3)
        jac_mode = "host" if callable(jac) else "fd"
        return _model.ModelPlan(
            f, mode="host", jac=jac if callable(jac) else None, jac_mode=jac_mode,
            fd_scheme=fd_scheme, rel_step=rel_step, col_deriv=col_deriv, out_shape=target,
            x_host=None if x_is_array else x, lb=lb, ub=ub), padded

    if isinstance(host_exc, ValueError) and "returned an array of shape" in str(host_exc):
        raise host_exc
    raise ValueError(f"model `f` raised {type(host_exc).__name__} when called as "
                     f"f(xdata, *p0): {host_exc}") from host_exc


# --------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------


def fit_curve(model, xdata, ydata, *, p0=None, sigma=None, sample_weight=None,
              absolute_sigma=False, bounds=(-np.inf, np.inf), method=None, jac=None,
              loss="linear", f_scale=1.0, x_scale=None, ftol=1e-8, xtol=1e-8, gtol=None,
              max_nfev=None, nan_policy=None, check_finite=True, diff_step=None,
              col_deriv=False, factor=10.0, refine=DEFAULT_REFINE, warn_cov=True,
              pool=None, stacklevel=2) -> FitResult:
    """Fit ``model(xdata, *params)`` to ``ydata`` (scipy conventions).

    ``gtol=None`` means scipy's default for the method: 0 for 'lm' (leastsq),
    1e-8 otherwise. Does not raise on non-convergence (``success=False``); raises ``ValueError``
    (``TypeError`` where scipy does) naming the argument for bad input.

    ``sample_weight`` (shape of ``ydata``) are frequency weights for every
    loss: point ``i`` adds ``w_i * f_scale**2 * rho(r_i**2 / f_scale**2)``
    to twice the cost (``w_i * r_i**2`` for the linear loss), so an integer
    weight ``k`` equals the point repeated ``k`` times and zero leaves it
    out; ``sigma`` keeps scipy's meaning (inside ``rho``). The residuals are
    multiplied by ``sqrt(w_i)`` and, for a robust loss, the loss scale of
    point ``i`` is ``f_scale * sqrt(w_i)``, which is the same objective. The
    covariance's degrees of freedom count the points of non-zero weight.
    """
    pool = resolve_pool(pool)
    f_scale = _check_common(model, method, loss, nan_policy, jac, f_scale, refine)

    # Parameters.
    if p0 is None:
        names = _model.parameter_names(model, None)
        n = len(names)
    else:
        # Any shape, raveled, as scipy (np.atleast_1d, then leastsq ravels).
        p0 = np.atleast_1d(_as_float_array(p0, "p0", False)).ravel()
        n = p0.size
        if n == 0:
            raise ValueError("`p0` must not be empty.")
        names = _model.parameter_names(model, n)
        if not np.isfinite(p0).all():
            raise ValueError("`p0` must contain only finite values.")
    lb, ub = _prepare_bounds(bounds, n)
    if p0 is None:
        p0 = _initialize_feasible(lb, ub)
    if ((p0 < lb) | (p0 > ub)).any():
        raise ValueError("`p0` is infeasible: it lies outside `bounds`.")
    has_bounds = bool((np.isfinite(lb) | np.isfinite(ub)).any())
    method, ftol, xtol, gtol, max_nfev = _resolve_solver(method, loss, has_bounds, ftol, xtol,
                                                         gtol, max_nfev, n)

    if x_scale is None:
        use_jac_scale = method == "lm"
        x_scale_arr = _constant(1.0, n)
    elif isinstance(x_scale, str):
        if x_scale != "jac":
            raise ValueError("`x_scale` must be 'jac' or array_like with positive numbers.")
        use_jac_scale, x_scale_arr = True, _constant(1.0, n)
    else:
        x_scale_arr = _as_float_array(x_scale, "x_scale", False)
        if x_scale_arr.ndim == 0:
            x_scale_arr = np.full(n, float(x_scale_arr))
        if x_scale_arr.shape != (n,) or not np.all(np.isfinite(x_scale_arr) & (x_scale_arr > 0)):
            raise ValueError("`x_scale` must be 'jac' or array_like with positive numbers, "
                             "one per parameter.")
        use_jac_scale = False

    # Data.
    if check_finite is None:
        check_finite = nan_policy is None
    ydata = _as_float_array(ydata, "ydata", check_finite)
    x_is_array = isinstance(xdata, (list, tuple, np.ndarray)) or hasattr(xdata, "__array__")
    # scipy converts only lists, tuples and arrays and hands anything else to
    # the model untouched. Other objects with __array__ (pandas) are
    # converted here, which lets a JAX model trace them; where the model
    # cannot evaluate the converted array (it reads columns by name) the
    # original object is used as scipy would (see the plan below).
    x_object = None if isinstance(xdata, (list, tuple, np.ndarray)) else xdata
    if x_is_array:
        xdata = _as_float_array(xdata, "xdata", check_finite)
    if ydata.size == 0:
        raise ValueError("`ydata` must not be empty!")
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=float)
        if sample_weight.shape != ydata.shape:
            raise ValueError(f"`sample_weight` has shape {sample_weight.shape}; expected "
                             f"{ydata.shape} like `ydata`.")
        if not np.all(np.isfinite(sample_weight)) or np.any(sample_weight < 0):
            raise ValueError("`sample_weight` must be finite and non-negative.")
        if not np.any(sample_weight > 0):
            raise ValueError("`sample_weight` must not be all zero.")

    if not check_finite and nan_policy is not None:
        has_nan = np.isnan(ydata)
        if x_is_array and xdata.ndim >= 1:
            xn = np.isnan(xdata)
            ax = _sample_axis(xdata, ydata.size) if ydata.ndim == 1 else None
            if ax is not None:
                xn = xn.any(axis=tuple(i for i in range(xdata.ndim) if i != ax))
                has_nan = has_nan | xn
            elif xn.any():
                has_nan = has_nan | True
        if has_nan.any():
            if nan_policy == "raise":
                raise ValueError("The input contains nan values (`xdata` or `ydata`).")
            if ydata.ndim != 1:
                raise ValueError("nan_policy='omit' needs 1-D `ydata`.")
            keep = ~has_nan
            if x_is_array and xdata.ndim >= 1:
                xdata = np.compress(keep, xdata, axis=_sample_axis(xdata, keep.size))
            ydata = ydata[keep]
            if sample_weight is not None:
                sample_weight = sample_weight[keep]
            if sigma is not None:
                sigma = np.asarray(sigma)
                if sigma.ndim == 1 and sigma.size == keep.size:
                    sigma = sigma[keep]
                elif sigma.ndim == 2:
                    sigma = sigma[keep][:, keep]
            if ydata.size == 0:
                raise ValueError("`ydata` must not be empty after omitting NaNs!")

    m = ydata.size
    # An xdata with no axis of length M (a meshgrid pair (2, H, W) for an
    # image raveled into ydata, a grid the model expands) is scipy's too: the
    # fit then runs at the exact shape (no padding, no chunks), and a model
    # whose output does not match ydata gets the shape error.
    check_points_for_method(method, n, m)

    weighting = "diag"
    L = None
    w = _unit_weights(m)
    if sigma is not None:
        sigma = _as_float_array(sigma, "sigma", False)
        if sigma.size == 1 or sigma.shape == (m,):
            with np.errstate(divide="ignore"):
                w = np.broadcast_to(1.0 / sigma.reshape(-1), (m,)).astype(float)
        elif sigma.shape == (m, m):
            try:
                L = cholesky(sigma, lower=True)
            except (LinAlgError, ValueError) as exc:
                raise ValueError("`sigma` must be positive definite.") from exc
            weighting = "cov"
        else:
            raise ValueError(f"`sigma` has incorrect shape {sigma.shape}; expected a scalar, "
                             f"({m},) or ({m}, {m}).")
    # Robust losses: each point's loss scale is f_scale * sqrt(sample_weight)
    # (``s``), so that sample weights are frequencies (see _solvers._losses);
    # it is ``w`` itself unless a 1-D sigma enters ``w`` too.
    s = None
    point_scale = point_scale_key(loss, sample_weight is not None,
                                  separate=sigma is not None and weighting == "diag")
    if sample_weight is not None:
        root = np.sqrt(sample_weight.reshape(-1))
        w = w * root
        s = root if point_scale == "s" else None
    # Degrees of freedom of the covariance: the points of non-zero weight
    # (sample weights count as frequencies in the fit, not in this count).
    m_dof = m if sample_weight is None else int(np.count_nonzero(sample_weight))

    fd_scheme = jac if isinstance(jac, str) else "2-point"
    jac_callable = jac if callable(jac) else None
    rel_step = diff_step if diff_step is None else _positive(diff_step, "diff_step")

    # Large in-memory data: never form the m x n Jacobian (see _stream).
    if (weighting == "diag" and ydata.ndim == 1 and x_is_array and xdata.ndim in (1, 2)
            and _sample_axis(xdata, m) == xdata.ndim - 1 and jac is None
            and diff_step is None and not col_deriv
            and m * (n + 1) * 8 > jacobian_budget()
            and _rows_independent(model, False, xdata, xdata.ndim - 1, p0)):
        from ._stream import fit_in_chunks

        unit = sigma is None and sample_weight is None
        res = fit_in_chunks(model, xdata, ydata, None if unit else w,
                            point_scale=w if point_scale == "w" else s,
                            chunk_size=_CHUNK_ROWS, p0=p0, bounds=(lb, ub), method=method,
                            loss=loss, f_scale=f_scale, x_scale=x_scale, ftol=ftol, xtol=xtol, gtol=gtol,
                            max_nfev=max_nfev, refine=int(refine), pool=pool,
                            absolute_sigma=absolute_sigma, m_dof=m_dof,
                            stacklevel=stacklevel + 1)
        if not res.cov_estimated and warn_cov:
            warnings.warn("Covariance of the parameters could not be estimated",
                          category=OptimizeWarning, stacklevel=stacklevel + 1)
        # The residual vector is as long as the data: computed only on request.
        return dataclasses.replace(res, fun=partial(_chunked_residuals, model, xdata, ydata, w,
                                                    res.params))

    # Padding to a shape bucket.
    axis = _sample_axis(xdata, m) if (x_is_array and xdata.ndim >= 1) else None
    can_pad = ydata.ndim == 1 and m <= _PAD_LIMIT and (not x_is_array or xdata.ndim == 0
                                                      or axis is not None)
    m_pad = _bucket(m) if can_pad else m
    if x_is_array and xdata.ndim == 0:
        axis = None

    with x64():
        try:
            plan, padded = _plan(model, xdata, x_is_array, n, m, m_pad, (m_pad,), ydata.shape,
                                 jac_callable, fd_scheme, rel_step, col_deriv, p0, lb, ub, axis,
                                 stacklevel)
        except Exception:
            if x_object is None or not x_is_array:
                raise
            fallback = None
            try:  # the object itself, as scipy passes it (a NumPy model)
                fallback = _plan(model, x_object, False, n, m, m, (m,), ydata.shape,
                                 jac_callable, fd_scheme, rel_step, col_deriv, p0, lb, ub,
                                 None, stacklevel)
            except Exception:  # noqa: BLE001 - the error on the array is the one to show
                pass
            if fallback is None:
                raise
            (plan, padded), xdata, x_is_array, axis, m_pad = fallback, x_object, False, None, m
        if not padded:
            m_pad = m
        opts = Options(np.float64(ftol), np.float64(xtol), np.float64(gtol),
                       np.int32(max_nfev), np.float64(f_scale),
                       np.float64(_positive(factor, "factor")),
                       np.float64(loss_id(loss)))
        use_fwd = n <= max(m, 1) or m == 1
        lent = []
        try:
            data = _stage_data(pool, lent, xdata if x_is_array else None, ydata, w, L, m,
                               m_pad, axis, s)
            # NumPy arrays go straight to the compiled executable; converting
            # them to jax arrays first would cost more than a small solve.
            args = (_pack_args(np.asarray(p0, dtype=np.float64), lb, ub, x_scale_arr, opts),
                    data)
            solver = _compiled_solver(pool, plan, weighting, loss, use_fwd, method,
                                      has_bounds, use_jac_scale, int(refine), args,
                                      point_scale)
            # Only programs with host callbacks can record a host error.
            uses_host = plan.uses_host
            if uses_host:
                _model.reset_host_error(model)
            sol = _unpack(fetch(solver(*args), spin=not uses_host), n)
        finally:
            for buf in lent:
                pool.release(buf)
    host_exc = _model.pop_host_error() if uses_host else None
    if host_exc is not None:
        raise ValueError(f"model `f` raised {type(host_exc).__name__} during the fit: "
                         f"{host_exc}") from host_exc

    nfev, njev, nit, status = (int(c) for c in sol["counts"])
    if status == NONFINITE_X0:
        raise ValueError("Residuals are not finite in the initial point `p0`: the model or "
                         "`sigma` gives inf or NaN there, or the sum of their squares "
                         "overflows float64 (rescale `ydata`).")
    params = np.asarray(sol["x"], dtype=float)
    cost = sol["cost"]
    fun = np.asarray(sol["fun"], dtype=float)[:m]
    pcov, estimated = _covariance(sol["sv"], sol["VT"], cost, m, m_dof, n, method,
                                  absolute_sigma)
    if not estimated and warn_cov:
        warnings.warn("Covariance of the parameters could not be estimated",
                      category=OptimizeWarning, stacklevel=stacklevel + 1)
    return FitResult(params=params, pcov=pcov, cost=cost, fun=fun, nfev=nfev,
                     njev=njev, nit=nit, status=status,
                     message=MESSAGES[status], success=status > 0, method=method,
                     param_names=tuple(names), active_mask=np.asarray(sol["active"]),
                     cov_estimated=estimated, R=sol["R"], qtf=sol["qtf"])


def _stage_data(pool, lent, x, y, w, L, m, m_pad, axis, s=None):
    """The data arrays for the solver, padded to ``m_pad`` in pooled buffers.

    Padding rows repeat the last point (so the model stays finite there) and
    get zero weight. A 1-D ``x`` is stacked with ``y`` and the weights into
    one ``(3, m_pad)`` buffer (one argument of the compiled call instead of
    three; ``(4, m_pad)`` with the loss-scale multipliers ``s``, given only
    for a robust loss with both sample weights and a 1-D sigma). Buffers are
    appended to ``lent`` for the caller to release once the compiled program
    has returned.
    """
    def buffer(shape):
        buf = pool.acquire(shape)
        lent.append(buf)
        return buf

    def put(dst, src, pad):  # rows along the first axis; the padding rows get `pad`
        dst[:m] = src
        dst[m:] = pad

    stack = (x is not None and x.ndim == 1 and y.ndim == 1 and axis == 0 and L is None
             and m_pad <= _PAD_LIMIT)
    if m_pad == m and not stack:
        data = {"x": np.zeros(()) if x is None else x, "y": y, "w": w}
        if L is not None:
            data["L"] = L
        if s is not None:
            data["s"] = s
        return data
    if stack:
        # One argument instead of three (see _pack_args).
        xyw = buffer((3 if s is None else 4, m_pad))
        put(xyw[0], x, x[-1])
        put(xyw[1], y, y[-1])
        put(xyw[2], w, 0.0)
        if s is not None:
            put(xyw[3], s, 0.0)
        return {"xyw": xyw}
    yb = buffer((m_pad,))
    put(yb, y, y[-1])
    wb = buffer((m_pad,))
    put(wb, w, 0.0)
    if x is None:
        xb = np.zeros(())
    elif x.ndim == 0 or axis is None:
        xb = x
    else:
        shape = list(x.shape)
        shape[axis] = m_pad
        xb = buffer(tuple(shape))
        src = np.moveaxis(x, axis, 0)
        put(np.moveaxis(xb, axis, 0), src, src[-1])
    data = {"x": xb, "y": yb, "w": wb}
    if s is not None:
        sb = buffer((m_pad,))
        put(sb, s, 0.0)
        data["s"] = sb
    if L is not None:
        Lb = buffer((m_pad, m_pad))
        Lb[...] = 0.0
        Lb[:m, :m] = L
        idx = np.arange(m, m_pad)
        Lb[idx, idx] = 1.0
        data["L"] = Lb
    return data


def _full_rank_equilibrated(s, VT, mn):
    """Whether ``R = U diag(s) VT`` has full numerical rank once its columns
    are scaled to unit norm. 'lm' mirrors leastsq, which inverts MINPACK's
    column-pivoted R and gives up only where it is singular, so a badly
    scaled but well-determined problem (parameters of 1e8 and 1e-6) keeps
    its covariance; the plain rank test on ``s`` is not scale-invariant.
    ``s[:, None] * VT`` has the column norms and singular values of R."""
    A = s[:, None] * VT
    d = np.linalg.norm(A, axis=0)
    if not np.all(d > 0):
        return False
    se = np.linalg.svd(A / d, compute_uv=False)
    return bool(se[-1] > EPS * mn * se[0])


def _covariance(s, VT, cost, m, m_dof, n, method, absolute_sigma):
    """Scipy's covariance: Moore-Penrose inverse of ``J^T J`` from the SVD
    ``R = U diag(s) VT`` (same singular values and right vectors as ``J``),
    scaled by the reduced chi-square unless ``absolute_sigma``.
    ``method='lm'`` mirrors ``leastsq``: a rank-deficient Jacobian gives an
    inf covariance."""
    if not (np.isfinite(s).all() and np.isfinite(VT).all()):
        return np.full((n, n), np.inf), False
    threshold = EPS * max(m, n) * (s[0] if s.size else 0.0)
    # Singular values come in descending order: all are kept when the last is.
    if not (s.size and s[-1] > threshold):
        keep = s > threshold
        if method == "lm":
            if not _full_rank_equilibrated(s, VT, max(m, n)):
                return np.full((n, n), np.inf), False
            keep = s > 0
        s, VT = s[keep], VT[keep]
    pcov = (VT.T / (s * s)) @ VT
    if np.isnan(pcov).any():
        return np.full((n, n), np.inf), False
    if not absolute_sigma:
        if m_dof > n:
            pcov = pcov * (2.0 * cost / (m_dof - n))
        else:
            return np.full((n, n), np.inf), False
    return pcov, True


def _chunked_residuals(model, xdata, ydata, w, params):
    """Weighted residuals at ``params``, evaluated in chunks of rows by one
    compiled program (the lazy ``FitResult.fun`` of chunked fits)."""
    m = ydata.shape[0]
    cs = min(_CHUNK_ROWS, m)
    with x64():
        p = np.asarray(params, dtype=np.float64)
        ev = jax.jit(lambda xx, q: jnp.asarray(model(xx, *[q[i] for i in range(q.shape[0])]),
                                               jnp.float64).reshape(-1))
        fun = np.empty(m)
        for i in range(0, m, cs):
            lo = min(i, m - cs)  # the last chunk overlaps: one shape, one compile
            part = slice(lo, lo + cs)
            fun[part] = w[part] * (np.asarray(ev(np.ascontiguousarray(xdata[..., part]), p))
                                   - ydata[part])
    return fun


def evaluate_model(model, xdata, params):
    """``model(xdata, *params)`` as a float64 NumPy array (x64 scope; NumPy
    models are called directly)."""
    params = np.asarray(params, dtype=float)
    with x64():
        out = model(xdata, *params)
        return np.asarray(out, dtype=np.float64)

