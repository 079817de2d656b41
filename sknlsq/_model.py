"""User models: parameter introspection, JAX traceability, host fallback.

A model is any callable ``f(x, *params)`` in scipy's convention. This module
decides how the compiled solver evaluates it:

* ``"jax"``: the model traces under JAX (it uses ``jax.numpy``, or is already
  a ``jax.jit`` function). Residuals and the Jacobian are computed inside the
  compiled program, the Jacobian by forward- or reverse-mode autodiff chosen
  from the shapes (forward when there are no more parameters than residuals).
* ``"host"``: the model does not trace (it calls NumPy or SciPy functions on
  its inputs, branches on parameter values, assigns in place...). It is then
  called on the host through ``jax.pure_callback`` from inside the same
  compiled program, with NumPy arrays, and its Jacobian comes from finite
  differences (scipy's step rules) unless the user supplied ``jac``. One
  :class:`JaxFallbackWarning` says why the fast path was not taken.

Host callbacks never raise inside XLA: an exception from the user's code is
recorded in a per-thread slot and NaNs are returned instead; the caller
re-raises it as a clear error once the compiled program returns.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import warnings
from collections import OrderedDict
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._config import x64_in_callback_thread

EPS = np.finfo(np.float64).eps


class JaxFallbackWarning(UserWarning):
    """The model could not be traced by JAX; a slower host path is used."""


# --------------------------------------------------------------------------
# Parameter introspection
# --------------------------------------------------------------------------


_names_cache: OrderedDict = OrderedDict()


def parameter_names(f: Callable, n: int | None) -> tuple[str, ...]:
    """Names of the fit parameters of ``f(x, a, b, ...)`` (cached per model)."""
    try:
        key = (f, n)
        hit = _names_cache.get(key)
    except TypeError:  # unhashable callable
        return _parameter_names(f, n)
    if hit is None:
        hit = _parameter_names(f, n)
        with _probe_lock:
            _names_cache[key] = hit
            while len(_names_cache) > 256:
                _names_cache.popitem(last=False)
    return hit


def _parameter_names(f: Callable, n: int | None) -> tuple[str, ...]:
    """Names of the fit parameters of ``f(x, a, b, ...)``.

    With ``n`` given (from ``p0``) and a variadic signature ``f(x, *params)``
    the names are ``('p0', 'p1', ...)``. Raises ``ValueError`` when the count
    cannot be determined, as scipy does.
    """
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        sig = None
    names, variadic, required = [], False, 0
    if sig is not None:
        for prm in sig.parameters.values():
            if prm.kind in (prm.POSITIONAL_ONLY, prm.POSITIONAL_OR_KEYWORD):
                names.append(prm.name)
                required += prm.default is prm.empty
            elif prm.kind == prm.VAR_POSITIONAL:
                variadic = True
    names = names[1:]  # the first positional argument is x
    required = max(required - 1, 0)
    if n is not None and sig is not None and (n < required or (n > len(names) and not variadic)):
        expected = (f"{required}" if required == len(names)
                    else f"{required} to {len(names)}")
        raise TypeError(f"`p0` has {n} values but the model f(x, {', '.join(names)}) takes "
                        f"{expected} parameters.")
    if n is None:
        if len(names) < 1:
            raise ValueError("Unable to determine number of fit parameters.")
        return tuple(names)
    if len(names) >= n and not variadic:
        return tuple(names[:n])
    if len(names) == n:
        return tuple(names)
    return tuple(names[:n]) + tuple(f"p{i}" for i in range(len(names), n))


# --------------------------------------------------------------------------
# Host-side error capture
# --------------------------------------------------------------------------

# A model (or jac) raising inside a host callback cannot raise through XLA
# cleanly: the callback records the exception and returns NaN, and the fit
# re-raises it afterwards. XLA may run the callback on one of its own worker
# threads, so the record cannot be thread-local: each fit registers a slot
# (per calling thread) and a callback's exception goes to every registered
# slot of the same model (or of an unknown one). Two concurrent fits of one
# model may thus both report an error only one raised; none is ever lost.
_errors_lock = threading.Lock()
_slots: dict = {}  # token -> [model or None, exception or None]
_slot_of_thread = threading.local()
_slot_tokens = itertools.count()


def reset_host_error(model=None):
    """Register the calling thread's fit (of ``model``) for host errors.
    Returns the registration's token (see :func:`peek_host_error`)."""
    token = next(_slot_tokens)
    with _errors_lock:
        old = getattr(_slot_of_thread, "token", None)
        _slots.pop(old, None)
        _slots[token] = [model, None]
    _slot_of_thread.token = token
    return token


def peek_host_error(token):
    """The exception recorded for the fit registered as ``token`` so far (or
    None), from any thread: a streaming fit's chunk reader stops the pass
    when the model has raised instead of letting the solver go on."""
    with _errors_lock:
        slot = _slots.get(token)
    return None if slot is None else slot[1]


def pop_host_error():
    """The first exception a host callback of this thread's fit raised (or None);
    ends the registration."""
    token = getattr(_slot_of_thread, "token", None)
    _slot_of_thread.token = None
    with _errors_lock:
        slot = _slots.pop(token, None)
    return None if slot is None else slot[1]


def _record(exc, model=None):
    with _errors_lock:
        for slot in _slots.values():
            if slot[1] is None and (slot[0] is None or model is None or slot[0] is model):
                slot[1] = exc


# --------------------------------------------------------------------------
# Host evaluation and finite differences
# --------------------------------------------------------------------------


def _host_eval(f, x, p, out_shape):
    y = f(x, *p)
    if y is None:
        raise TypeError("the model returned None (a missing `return`?)")
    y = np.asarray(y)
    if np.iscomplexobj(y):  # scipy: "Result from function call is not a proper array of floats"
        raise TypeError("the model returned complex values; residuals must be real")
    return np.broadcast_to(y.astype(np.float64, copy=False), out_shape).astype(np.float64,
                                                                               copy=False)


def _fd_steps(p, lb, ub, scheme, rel_step):
    """Scipy's absolute steps ``h = rel * sign(p) * max(1, |p|)``, flipped to
    stay inside the bounds where a one-sided step would leave them."""
    if rel_step is None:
        rel_step = EPS ** 0.5 if scheme in ("2-point", "cs") else EPS ** (1 / 3)
    sign = np.where(p >= 0, 1.0, -1.0)
    h = rel_step * sign * np.maximum(1.0, np.abs(p))
    if scheme == "2-point":
        out = (p + h > ub) | (p + h < lb)
        h = np.where(out, -h, h)
    h = (p + h) - p  # make the step exactly representable
    return np.where(h == 0, rel_step, h)


def host_fd_jacobian(f, x, p, f0, lb, ub, scheme="2-point", rel_step=None):
    """Finite-difference Jacobian (M, n) of ``f(x, *p)`` on the host."""
    p = np.asarray(p, dtype=np.float64)
    h = _fd_steps(p, lb, ub, scheme, rel_step)
    J = np.empty((f0.size, p.size))
    for j in range(p.size):
        e = np.zeros_like(p)
        e[j] = h[j]
        if scheme == "2-point":
            J[:, j] = (_host_eval(f, x, p + e, f0.shape) - f0) / h[j]
        elif scheme == "3-point":
            lo_ok = p[j] - h[j] >= lb[j]
            hi_ok = p[j] + h[j] <= ub[j]
            if lo_ok and hi_ok:
                J[:, j] = (_host_eval(f, x, p + e, f0.shape)
                           - _host_eval(f, x, p - e, f0.shape)) / (2 * h[j])
            else:  # one-sided second-order formula towards the interior
                s = 1.0 if hi_ok else -1.0
                f1 = _host_eval(f, x, p + s * e, f0.shape)
                f2 = _host_eval(f, x, p + 2 * s * e, f0.shape)
                J[:, j] = s * (-3 * f0 + 4 * f1 - f2) / (2 * h[j])
        elif scheme == "cs":
            yc = np.asarray(f(x, *(p + 1j * e)), dtype=np.complex128)
            J[:, j] = np.broadcast_to(yc.imag, f0.shape) / h[j]
        else:  # pragma: no cover - validated earlier
            raise ValueError(f"unknown finite-difference scheme {scheme!r}")
    return J


def _hashable(obj):
    """``obj`` itself when hashable, else a token for its identity (the compiled
    program that uses the key keeps ``obj`` alive, so the id stays unique)."""
    try:
        hash(obj)
        return obj
    except TypeError:
        return ("id", id(obj))


# --------------------------------------------------------------------------
# The evaluation plan for one fit
# --------------------------------------------------------------------------


class ModelPlan:
    """How the compiled program evaluates the model and its Jacobian.

    ``evaluate(p, x) -> (M,)`` and ``jacobian(p, x) -> (M, n)`` or ``None``
    (autodiff) are traceable functions; for host models they wrap
    ``jax.pure_callback``. ``key`` identifies the plan for program caching.
    """

    def __init__(self, f, *, mode, jac=None, jac_mode=None, fd_scheme="2-point",
                 rel_step=None, col_deriv=False, out_shape=None, x_host=None,
                 lb=None, ub=None):
        self.f = f
        self.mode = mode  # "jax" or "host"
        self.jac = jac
        self.jac_mode = jac_mode  # None (autodiff), "jax", "host", "fd"
        self.fd_scheme = fd_scheme
        self.rel_step = rel_step
        self.col_deriv = col_deriv
        self.out_shape = out_shape
        self.x_host = x_host  # non-array xdata, closed over (host mode only)
        self.lb = lb
        self.ub = ub
        token = id(x_host) if x_host is not None else None
        self.key = (_hashable(f), mode, _hashable(jac), jac_mode, fd_scheme, rel_step, bool(col_deriv), token,
                    None if lb is None else (tuple(lb), tuple(ub)))

    @property
    def uses_host(self):
        """Whether the compiled program calls back into Python."""
        return self.mode == "host" or self.jac_mode in ("host", "fd")

    # -- model values -----------------------------------------------------
    def evaluate(self, p, x):
        if self.mode == "jax":
            return jnp.asarray(self.f(x, *[p[i] for i in range(p.shape[0])]),
                               dtype=jnp.float64)
        shape = jax.ShapeDtypeStruct(self.out_shape, jnp.float64)
        f, xh = self.f, self.x_host

        def cb(p, x):
            x64_in_callback_thread()
            try:
                return _host_eval(f, xh if xh is not None else np.array(x), np.asarray(p),
                                  self.out_shape)
            except Exception as exc:  # re-raised by the caller after the solve
                _record(exc, f)
                return np.full(self.out_shape, np.nan)

        return jax.pure_callback(cb, shape, p, x, vmap_method="sequential")

    # -- model Jacobian -----------------------------------------------------
    def jacobian(self, p, x):
        if self.jac_mode is None:
            return None
        n = p.shape[0]
        if self.jac_mode == "jax":
            J = jnp.asarray(self.jac(x, *[p[i] for i in range(n)]), dtype=jnp.float64)
            J = J.T if self.col_deriv else J
            return jnp.broadcast_to(J.reshape(J.shape[0], -1) if J.ndim > 1 else J[:, None],
                                    (int(np.prod(self.out_shape)), n))
        M = int(np.prod(self.out_shape))
        shape = jax.ShapeDtypeStruct((M, n), jnp.float64)
        f, jac, xh = self.f, self.jac, self.x_host
        scheme, rel, col = self.fd_scheme, self.rel_step, self.col_deriv
        lb = self.lb if self.lb is not None else np.full(n, -np.inf)
        ub = self.ub if self.ub is not None else np.full(n, np.inf)
        out_shape = self.out_shape

        def cb(p, x):
            x64_in_callback_thread()
            xx = xh if xh is not None else np.array(x)  # writable, as scipy's
            p = np.asarray(p)
            try:
                if jac is not None:
                    J = np.asarray(jac(xx, *p), dtype=np.float64)
                    J = J.T if col else J
                    return np.broadcast_to(J.reshape(M, -1), (M, n)).astype(np.float64)
                f0 = _host_eval(f, xx, p, out_shape).reshape(-1)
                # No float cast here: the complex step needs the imaginary part.
                ff = (lambda x_, *q: np.broadcast_to(np.asarray(f(x_, *q)),
                                                     out_shape).reshape(-1))
                return host_fd_jacobian(ff, xx, p, f0, lb, ub, scheme, rel)
            except Exception as exc:
                _record(exc, f)
                return np.full((M, n), np.nan)

        return jax.pure_callback(cb, shape, p, x, vmap_method="sequential")


# --------------------------------------------------------------------------
# Traceability probe (cached)
# --------------------------------------------------------------------------

_probe_cache: OrderedDict = OrderedDict()
_probe_lock = threading.Lock()
_PROBE_CACHE_SIZE = 256


def probe_jax(f, x_shape, n):
    """Return ``(out_shape, None)`` if ``f(x, *p)`` traces for a float64 ``x``
    of shape ``x_shape``, else ``(None, exc)``. Successes are cached per model
    object and shapes.
    """
    try:
        key = (f, tuple(x_shape), n)
        hash(key)
    except TypeError:
        key = None
    if key is not None:
        with _probe_lock:
            hit = _probe_cache.get(key)
            if hit is not None:
                _probe_cache.move_to_end(key)
                return hit
    try:
        out = jax.eval_shape(lambda p, xx: jnp.asarray(f(xx, *[p[i] for i in range(n)])),
                             jax.ShapeDtypeStruct((n,), jnp.float64),
                             jax.ShapeDtypeStruct(tuple(x_shape), jnp.float64))
        res = (tuple(out.shape), None)
    except Exception as exc:  # any failure to trace means "use the host path"
        res = (None, exc)
    if key is not None and res[1] is None:
        with _probe_lock:
            _probe_cache[key] = res
            while len(_probe_cache) > _PROBE_CACHE_SIZE:
                _probe_cache.popitem(last=False)
    return res


def probe_jax_jac(jac, x_shape, n):
    try:
        out = jax.eval_shape(lambda p, xx: jnp.asarray(jac(xx, *[p[i] for i in range(n)])),
                             jax.ShapeDtypeStruct((n,), jnp.float64),
                             jax.ShapeDtypeStruct(tuple(x_shape), jnp.float64))
        return tuple(out.shape), None
    except Exception as exc:
        return None, exc


def describe_trace_failure(exc) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg[:200]}" if msg else type(exc).__name__


def warn_fallback(exc, has_jac=False, stacklevel=3):
    how = ("with the user-supplied `jac`" if has_jac
           else "by finite differences (less accurate than autodiff)")
    warnings.warn(
        "The model could not be traced by JAX (" + describe_trace_failure(exc) + "), so it "
        "is evaluated with NumPy on the host through a callback and its Jacobian is "
        "computed " + how + "; fits are slower than on the compiled path. Write the model "
        "with jax.numpy (and jax.lax for value-dependent branches) to use the fast path.",
        JaxFallbackWarning, stacklevel=stacklevel)
