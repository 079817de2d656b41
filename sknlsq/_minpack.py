"""Drop-in replacement for :func:`scipy.optimize.curve_fit`.

Same signature, return values, covariance semantics, warnings and errors as
scipy; the fit itself runs on the compiled JAX solvers (see ``_fit``).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from scipy.optimize import OptimizeWarning

from ._batch import fit_curves
from ._fit import fit_curve

# Keyword arguments of scipy's leastsq / least_squares that curve_fit forwards.
_KWARGS = {"ftol", "xtol", "gtol", "max_nfev", "maxfev", "loss", "f_scale", "x_scale",
           "diff_step", "epsfcn", "diag", "factor", "col_deriv", "tr_solver", "tr_options",
           "verbose", "workers", "refine", "pool", "batch", "retire"}

_MINPACK_FROM_COMMON = {2: 1, 3: 2, 4: 3, 1: 4, 0: 5}


def _minpack_message(ier, ftol, xtol, gtol, max_nfev):
    return {
        1: "Both actual and predicted relative reductions in the sum of squares\n"
           f"  are at most {ftol:f}",
        2: f"The relative error between two consecutive iterates is at most {xtol:f}",
        3: "Both actual and predicted relative reductions in the sum of squares\n"
           f"  are at most {ftol:f} and the relative error between two consecutive "
           f"iterates is at \n  most {xtol:f}",
        4: "The cosine of the angle between func(x) and any column of the\n"
           f"  Jacobian is at most {gtol:f} in absolute value",
        5: f"Number of calls to function has reached maxfev = {max_nfev:d}.",
    }[ier]


def curve_fit(f, xdata, ydata, p0=None, sigma=None, absolute_sigma=False,
              check_finite=None, bounds=(-np.inf, np.inf), method=None, jac=None, *,
              full_output=False, nan_policy=None, **kwargs):
    """Use non-linear least squares to fit a function, ``f``, to data.

    A drop-in replacement for :func:`scipy.optimize.curve_fit`: assumes
    ``ydata = f(xdata, *params) + eps`` and returns the same values with the
    same meaning. The solve runs as one compiled JAX program in float64.

    Parameters
    ----------
    f : callable
        The model, ``f(x, *params)``. Written with ``jax.numpy`` it is traced,
        differentiated by autodiff and compiled; a NumPy-only model still
        works through a host finite-difference fallback (with a
        :class:`~sknlsq.JaxFallbackWarning`). The compiled program is cached
        (in the :class:`~sknlsq.MemoryPool`) under the identity of ``f``, as
        ``jax.jit`` does: values ``f`` reads from globals, closures or its
        own attributes are those it saw when first traced. Pass values that
        change as parameters or in ``xdata``, use a new function object
        (``functools.partial(f, k=...)``), or call the pool's ``clear()``.
    xdata : array_like or object
        The independent variable: an M-length sequence or a (k, M) array for
        functions with k predictors (or any object the model accepts).
    ydata : array_like
        The dependent data, length M.
    p0 : array_like, optional
        Initial guess (length N). Defaults to ones (or the middle of finite
        bounds), with N taken from the signature of ``f``.
    sigma : None or scalar or M-length sequence or MxM array, optional
        Uncertainty in ``ydata``: standard deviations (1-D) or a covariance
        matrix (2-D), exactly as in scipy.
    absolute_sigma : bool, default=False
        If True, ``sigma`` is used in an absolute sense and ``pcov`` is not
        rescaled by the reduced chi-square.
    check_finite : bool, optional
        Raise on NaN/inf in the inputs. Default True unless ``nan_policy`` is
        given.
    bounds : 2-tuple of array_like or `scipy.optimize.Bounds`, optional
        Lower and upper bounds on the parameters.
    method : {'lm', 'trf', 'dogbox'}, optional
        Default 'lm' without bounds and 'trf' with bounds, like scipy.
    jac : callable, string or None, optional
        ``jac(x, *params)`` returning the (M, N) Jacobian of the model. With a
        JAX-traceable model and no callable, the Jacobian is exact (autodiff);
        the strings '2-point', '3-point', 'cs' select the finite-difference
        scheme of the host fallback.
    full_output : bool, default=False
        Also return ``infodict``, ``mesg`` and ``ier``.
    nan_policy : {'raise', 'omit', None}, optional
        How to handle NaN in the inputs.
    **kwargs
        ``ftol``, ``xtol``, ``gtol``, ``max_nfev`` (or ``maxfev``), ``loss``,
        ``f_scale``, ``x_scale``, ``diff_step``, ``epsfcn``, ``diag``,
        ``factor``, ``col_deriv``, ``tr_solver``, ``verbose`` as in scipy, and
        ``refine`` (sknlsq): the number of extra trial steps at machine-precision
        tolerances after convergence (default 50, ending as soon as those
        tests pass; 0 stops exactly where scipy's tests stop) and ``pool``
        (sknlsq): the :class:`~sknlsq.MemoryPool` holding compiled programs
        and buffers (default: the active pool, else the process-wide one).
        ``batch=True`` (sknlsq): ``ydata`` is a 2-D array of K curves, shape
        (K, M), over the shared ``xdata``; each row gets its own parameters in
        one vectorised solve (``p0``, ``bounds``, ``sigma`` may be per-curve,
        with a leading K axis; NaN entries are missing points with
        ``nan_policy='omit'``). ``popt`` is then (K, N) and ``pcov`` (K, N, N);
        a curve that cannot be fitted (residuals not finite at its ``p0``,
        fewer points than parameters) gets NaN parameters, one that runs out
        of evaluations keeps its last iterate (status 0); each has its status
        in ``infodict['status']``, with one summarising ``OptimizeWarning``
        instead of an exception. ``ier`` and ``mesg`` are then per curve
        (MINPACK's codes for 'lm', as for a single curve).
        ``retire`` (default True) retires converged curves during the solve.

    Returns
    -------
    popt : ndarray
        Optimal parameter values.
    pcov : 2-D ndarray
        Estimated covariance of ``popt`` (inf with an ``OptimizeWarning`` when
        it cannot be estimated).
    infodict : dict, optional
        ``nfev``, ``njev``, ``nit`` and ``fvec`` (residuals at the solution);
        for ``method='lm'`` also leastsq's ``fjac``, ``ipvt`` and ``qtf`` (the
        column-pivoted QR factorisation ``J P = Q R`` of the Jacobian at the
        solution: ``triu(fjac.T[:n])`` is ``R``, ``ipvt`` the column order,
        numbered as the installed scipy's ``leastsq`` numbers it (0- or
        1-based, depending on its version), ``qtf = (Q^T fvec)[:n]``; the
        signs of R's rows, and of ``qtf``'s entries with them, may differ
        from MINPACK's).
    mesg : str, optional
        Termination message.
    ier : int, optional
        Status: MINPACK's ``info`` (1-4 success) for ``method='lm'``,
        least_squares's ``status`` otherwise.

    Raises
    ------
    ValueError
        For invalid input (the message names the argument) or NaN at ``p0``.
    RuntimeError
        If the least-squares minimisation fails (evaluation budget exhausted).

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from sknlsq import curve_fit
    >>> def f(x, a, b, c):
    ...     return a * jnp.exp(-b * x) + c
    >>> x = np.linspace(0, 4, 50)
    >>> y = f(x, 2.5, 1.3, 0.5)
    >>> popt, pcov = curve_fit(f, x, np.asarray(y))
    >>> np.round(popt, 6)
    array([2.5, 1.3, 0.5])
    """
    batch = kwargs.pop("batch", False)
    retire = kwargs.pop("retire", True)
    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument.")
    unknown = set(kwargs) - _KWARGS
    if unknown:
        raise TypeError(f"curve_fit() got an unexpected keyword argument "
                        f"{sorted(unknown)[0]!r}")
    tr_solver = kwargs.pop("tr_solver", None)
    if tr_solver not in (None, "exact", "lsmr"):
        raise ValueError("`tr_solver` must be None, 'exact' or 'lsmr'.")
    kwargs.pop("tr_options", None)
    kwargs.pop("workers", None)  # the Jacobian is never computed column by column in parallel
    verbose = kwargs.pop("verbose", 0)
    max_nfev = kwargs.pop("max_nfev", None)
    maxfev = kwargs.pop("maxfev", None)
    if max_nfev is None:
        max_nfev = maxfev
    epsfcn = kwargs.pop("epsfcn", None)
    if epsfcn is not None and kwargs.get("diff_step") is None:
        kwargs["diff_step"] = float(np.sqrt(max(epsfcn, np.finfo(float).eps)))
    diag = kwargs.pop("diag", None)
    if diag is not None:
        diag = np.asarray(diag, dtype=float)
        if np.any(diag <= 0):
            raise ValueError("`diag` must contain positive entries.")
        kwargs.setdefault("x_scale", 1.0 / diag)
    ftol = kwargs.pop("ftol", 1e-8)
    xtol = kwargs.pop("xtol", 1e-8)
    gtol = kwargs.pop("gtol", None)  # None: leastsq's 0.0 for 'lm', 1e-8 otherwise

    if batch:
        return _curve_fit_batch(f, xdata, ydata, p0, sigma, absolute_sigma, check_finite,
                                bounds, method, jac, full_output, nan_policy, ftol, xtol,
                                gtol, max_nfev, retire, kwargs)
    res = fit_curve(f, xdata, ydata, p0=p0, sigma=sigma, absolute_sigma=absolute_sigma,
                    bounds=bounds, method=method, jac=jac, check_finite=check_finite,
                    nan_policy=nan_policy, ftol=ftol, xtol=xtol, gtol=gtol,
                    max_nfev=max_nfev, stacklevel=2, **kwargs)
    if res.success and not verbose and not full_output:
        return res.params, res.pcov  # the common case: the message is not needed
    if res.method == "lm":
        ier = _MINPACK_FROM_COMMON[res.status]
        mesg = _minpack_message(ier, ftol, xtol, gtol or 0.0,
                                int(max_nfev) if max_nfev is not None else res.nfev)
    else:
        ier, mesg = res.status, res.message
    if verbose:
        print(f"{mesg} Function evaluations {res.nfev}, final cost {res.cost:.4e}.")
    if not res.success:
        raise RuntimeError("Optimal parameters not found: " + mesg)
    if full_output:
        infodict = {"nfev": res.nfev, "njev": res.njev, "nit": res.nit, "fvec": res.residuals()}
        if res.method == "lm" and res.R is not None and res.qtf is not None:
            infodict.update(_minpack_factors(res.R, res.qtf, infodict["fvec"].size))
        return res.params, res.pcov, infodict, mesg, ier
    return res.params, res.pcov


def _minpack_factors(R, qtf, m):
    """leastsq's ``fjac``, ``ipvt`` and ``qtf`` from the fit's ``R`` (``J = Q R``)
    and ``Q^T f``: MINPACK factorises ``J P = Q' R'`` with column pivoting;
    the pivoted QR of ``R`` itself, ``R P = Q'' R'``, has the same ``P`` and
    the same ``R'`` (up to the signs of its rows: ``J P = (Q Q'') R'``), and
    ``qtf = Q''^T (Q^T f)``. ``fjac`` is (n, m) like MINPACK's, with
    ``triu(fjac.T[:n])`` = ``R'``; where MINPACK keeps its Householder vectors
    (below the diagonal) it holds zeros."""
    from scipy.linalg import qr

    n = R.shape[0]
    R = np.asarray(R, dtype=float)
    if not np.all(np.isfinite(R)):
        return {"fjac": np.full((n, max(m, n)), np.nan),
                "ipvt": (np.arange(n) + _ipvt_base()).astype(np.int32),
                "qtf": np.full(n, np.nan)}
    Q2, R2, perm = qr(R, pivoting=True)
    fjac = np.zeros((n, max(m, n)))
    fjac[:, :n] = R2.T
    return {"fjac": fjac, "ipvt": (perm + _ipvt_base()).astype(np.int32),
            "qtf": Q2.T @ np.asarray(qtf)}


@functools.lru_cache(maxsize=None)
def _ipvt_base():
    """0 or 1: how the installed scipy numbers ``ipvt`` (MINPACK's Fortran
    numbering is 1-based; newer scipy releases give 0-based indices), found
    once by a tiny two-parameter ``leastsq``."""
    from scipy.optimize import leastsq

    out = leastsq(lambda p: np.array([p[0] - 1.0, 3.0 * (p[1] - 2.0), p[0] + p[1]]),
                  np.zeros(2), full_output=True)
    return int(np.min(out[2]["ipvt"]))


def _curve_fit_batch(f, xdata, ydata, p0, sigma, absolute_sigma, check_finite, bounds,
                     method, jac, full_output, nan_policy, ftol, xtol, gtol, max_nfev,
                     retire, kwargs):
    res = fit_curves(f, xdata, ydata, p0=p0, sigma=sigma, absolute_sigma=absolute_sigma,
                     check_finite=check_finite, bounds=bounds, method=method, jac=jac,
                     nan_policy=nan_policy, ftol=ftol, xtol=xtol, gtol=gtol,
                     max_nfev=max_nfev, retire=retire, stacklevel=3, **kwargs)
    failed = np.flatnonzero(~res.success)
    if failed.size:
        codes, counts = np.unique(res.status[failed], return_counts=True)
        detail = "; ".join(f"{c} x status {k}" for k, c in zip(codes, counts))
        warnings.warn(f"{failed.size} of {res.status.size} curves did not converge ({detail}; "
                      f"first: {failed[:10].tolist()}). See infodict['status'].",
                      OptimizeWarning, stacklevel=3)
    if full_output:
        infodict = {"nfev": res.nfev, "njev": res.njev, "nit": res.nit, "cost": res.cost,
                    "status": res.status, "n_points": res.n_points}
        ier, mesg = np.array(res.status), list(res.messages)
        if res.method == "lm":  # MINPACK's codes and messages, as for one curve
            for k, status in enumerate(res.status):
                if int(status) in _MINPACK_FROM_COMMON:
                    ier[k] = _MINPACK_FROM_COMMON[int(status)]
                    mesg[k] = _minpack_message(ier[k], ftol, xtol, gtol or 0.0,
                                               int(max_nfev) if max_nfev is not None
                                               else int(res.nfev[k]))
        return res.params, res.pcov, infodict, mesg, ier
    return res.params, res.pcov
