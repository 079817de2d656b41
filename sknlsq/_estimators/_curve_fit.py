"""CurveFitRegressor: the scikit-learn layer over the compiled curve fit.

Thin by design: validate with scikit-learn's helpers, pack ``X`` into scipy's
``xdata`` convention, call :func:`sknlsq._fit.fit_curve` (or the batched
:func:`sknlsq._batch.fit_curves` for a 2-D target), unpack the results.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import jax.numpy as jnp
import numpy as np
from scipy.optimize import Bounds
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (_check_sample_weight, check_array, check_is_fitted,
                                      validate_data)

from .._batch import fit_curves
from .._fit import evaluate_model, fit_curve
from .._pool import MemoryPool


def linear_model(x, *params):
    """``params[0] + sum_j params[j + 1] * x_j``: the default model.

    ``x`` is 1-D for one feature or (k, M) for k features (scipy's convention).
    """
    x = jnp.asarray(x)
    xs = x[None, :] if x.ndim == 1 else x
    coef = jnp.stack(params[1:]) if len(params) > 1 else jnp.zeros((0,))
    return params[0] + jnp.tensordot(coef, xs, axes=1)


def _xdata(X):
    """scipy's xdata convention: 1-D for one column, (k, M) otherwise."""
    return X[:, 0] if X.shape[1] == 1 else X.T


def _checked_weights(sample_weight, X):
    """``sample_weight`` validated by scikit-learn (float64, non-negative,
    one per sample), every message naming the argument; None stays None."""
    if sample_weight is None:
        return None
    try:
        return _check_sample_weight(sample_weight, X, dtype=np.float64,
                                    ensure_non_negative=True)
    except ValueError as exc:
        raise ValueError(f"Invalid `sample_weight`: {exc}") from exc


def _checked_column_weights(sample_weight, shape):
    """A 2-D ``sample_weight`` of a batched fit: float64, of ``y``'s shape
    ``(n_samples, n_targets)``, finite and non-negative."""
    sw = check_array(sample_weight, dtype=np.float64, input_name="sample_weight")
    if sw.shape != tuple(shape):
        raise ValueError(f"Invalid `sample_weight`: shape {sw.shape}; a 2-D `sample_weight` "
                         f"must have y's shape {tuple(shape)} (n_samples, n_targets).")
    if np.any(sw < 0):
        raise ValueError("Invalid `sample_weight`: negative values are not allowed.")
    return sw


class _ModelMixin:
    """What every estimator here shares: the model (``None``: the linear
    model, with zeros as ``p0``) and the names of its parameters."""

    def _model_and_p0(self, n_features):
        if self.model is not None:
            return self.model, self.p0
        p0 = np.zeros(n_features + 1) if self.p0 is None else self.p0
        if np.shape(p0)[-1:] != (n_features + 1,):
            raise ValueError(f"`p0` has shape {np.shape(p0)}; the default linear model of "
                             f"{n_features} feature(s) takes {n_features + 1} parameters "
                             "(intercept, then one coefficient per feature).")
        return linear_model, p0

    def _param_names(self, names, n_features):
        if self.model is None:
            return ("intercept",) + tuple(f"coef_{j}" for j in range(n_features))
        return tuple(names)

    def _evaluate(self, X, params):
        """The model at validated ``X`` for one parameter vector, (n_samples,)."""
        model, _ = self._model_and_p0(X.shape[1])
        return np.broadcast_to(evaluate_model(model, _xdata(X), params), (X.shape[0],)).copy()


class CurveFitRegressor(_ModelMixin, RegressorMixin, BaseEstimator):
    """Nonlinear least-squares curve fit as a scikit-learn regressor.

    Fits ``y = model(x, *params)`` with the compiled JAX solvers behind
    :func:`sknlsq.curve_fit` (trust-region reflective, Levenberg-Marquardt or
    dogbox, with bounds and robust losses).

    Parameters
    ----------
    model : callable, default=None
        ``model(x, *params)`` in scipy's convention: ``x`` is ``X[:, 0]`` (a
        1-D array) when ``X`` has one column and ``X.T`` (shape (k, M))
        otherwise. Write it with ``jax.numpy`` for autodiff and compilation;
        a NumPy-only model works through a finite-difference fallback.
        ``None`` fits a linear model ``intercept + sum_j coef_j * x_j``.
        Compiled programs are cached under the model object's identity:
        values it reads from globals or its attributes are those it saw
        when first traced (see :func:`sknlsq.curve_fit`).
    p0 : array-like of shape (n_params,) or (n_targets, n_params), default=None
        Initial parameters. Default: ones (zeros for the linear model), or
        the middle of finite bounds, as in scipy. Required for a model
        written as ``f(x, *params)``.
    bounds : 2-tuple of array-like, default=(-inf, inf)
        Lower and upper bounds on the parameters (scalars, per parameter or,
        for a 2-D target, per target).
    method : {'lm', 'trf', 'dogbox'}, default=None
        Solver; ``None`` picks 'lm' without bounds and 'trf' with bounds.
    jac : callable or {'2-point', '3-point', 'cs'}, default=None
        Jacobian ``jac(x, *params)`` of shape (M, n_params). ``None`` uses
        autodiff for JAX models and finite differences otherwise.
    loss : {'linear', 'soft_l1', 'huber', 'cauchy', 'arctan'}, default='linear'
        Robust loss ('trf' and 'dogbox' only).
    f_scale : float, default=1.0
        Soft margin between inlier and outlier residuals of robust losses.
    x_scale : array-like or 'jac', default=None
        Characteristic scale of each parameter (scipy's meaning).
    ftol, xtol, gtol : float, default=1e-8
        Termination tolerances (scipy's meaning).
    max_nfev : int, default=None
        Maximum number of trial evaluations; default ``100 * n * (n + 1)``.
    pool : MemoryPool, default=None
        Pool holding compiled programs and buffers; default: the active pool,
        else the process-wide one.

    Attributes
    ----------
    params_ : ndarray of shape (n_params,) or (n_targets, n_params)
        Fitted parameters.
    param_names_ : tuple of str
        Parameter names from the model's signature.
    pcov_ : ndarray of shape (n_params, n_params) or (n_targets, n_params, n_params)
        Estimated covariance of ``params_`` (scaled by the reduced
        chi-square ``2 * cost_ / (m - n_params)``, ``m`` the number of samples
        of non-zero weight; inf where it cannot be estimated).
    perr_ : ndarray
        One-standard-deviation errors, ``sqrt(diag(pcov_))``.
    cost_ : float or ndarray of shape (n_targets,)
        Final value of the objective ``0.5 * sum(w * f_scale**2 * rho(r**2 /
        f_scale**2))`` (``0.5 * sum(w * r**2)`` for the linear loss), ``w``
        the sample weights: each point's loss counted ``w`` times.
    n_iter_ : int or ndarray
        Number of accepted iterations.
    nfev_ : int or ndarray
        Number of residual evaluations.
    status_ : int or ndarray
        Termination status (scipy's least_squares codes; negative: failed).
    message_ : str or list of str
        Termination message(s).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sknlsq.curve_fit : The scipy-compatible function behind this estimator.

    Notes
    -----
    A 2-D ``y`` of shape (n_samples, n_targets) fits one parameter vector per
    column in a single vectorised solve; NaN entries of such a ``y`` are
    missing values, and each column is fitted on its own valid samples. A
    column whose fit fails gets NaN parameters and its status, with one
    summarising :class:`~sklearn.exceptions.ConvergenceWarning`.

    ``sample_weight`` is a frequency weight, for every loss: an integer
    weight ``k`` gives the fit of the sample repeated ``k`` times, and a zero
    weight leaves it out. It multiplies each point's loss: with the linear
    loss that is the squared residual, so it is scipy's ``sigma = 1 /
    sqrt(sample_weight)``; with a robust loss it is ``w * f_scale**2 *
    rho(r**2 / f_scale**2)``, whereas scipy's ``sigma`` would act inside
    ``rho`` (``f_scale**2 * rho(w * r**2 / f_scale**2)``), moving the point
    towards the outlier side instead of counting it more. The covariance
    ``pcov_`` takes the number of samples of non-zero weight, not the sum of
    the weights, as the number of points in its degrees of freedom: it
    equals that of the fit on repeated rows times ``(m_repeated - n_params)
    / (m_nonzero - n_params)``.

    The estimator holds ``model`` by reference, so it pickles (with
    :mod:`pickle` or :func:`joblib.dump`) only when ``model`` is a module-level
    function. Lambdas and closures do not pickle with the standard library;
    ``cloudpickle`` serialises them, and joblib's default parallel backend
    uses it, so ``n_jobs`` in :func:`~sklearn.model_selection.cross_val_score`
    or :class:`~sklearn.model_selection.GridSearchCV` works with them.
    :func:`~sklearn.base.clone` works with any callable.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from sknlsq import CurveFitRegressor
    >>> def decay(x, a, b):
    ...     return a * jnp.exp(-b * x)
    >>> X = np.linspace(0, 3, 40)[:, None]
    >>> y = 2.0 * np.exp(-0.7 * X[:, 0])
    >>> reg = CurveFitRegressor(decay, p0=[1.0, 1.0]).fit(X, y)
    >>> reg.param_names_
    ('a', 'b')
    >>> np.round(reg.params_, 6)
    array([2. , 0.7])
    """

    _parameter_constraints: dict = {
        "model": [callable, None],
        "p0": ["array-like", None],
        "bounds": [tuple, list, "array-like", Bounds],
        "method": [StrOptions({"lm", "trf", "dogbox"}), None],
        "jac": [callable, StrOptions({"2-point", "3-point", "cs"}), None],
        "loss": [StrOptions({"linear", "soft_l1", "huber", "cauchy", "arctan"})],
        "f_scale": [Interval(Real, 0, None, closed="neither")],
        "x_scale": ["array-like", StrOptions({"jac"}), None],
        "ftol": [Interval(Real, 0, None, closed="left")],
        "xtol": [Interval(Real, 0, None, closed="left")],
        "gtol": [Interval(Real, 0, None, closed="left")],
        "max_nfev": [Interval(Integral, 1, None, closed="left"), None],
        "pool": [MemoryPool, None],
    }

    def __init__(self, model=None, *, p0=None, bounds=(-np.inf, np.inf), method=None,
                 jac=None, loss="linear", f_scale=1.0, x_scale=None, ftol=1e-8, xtol=1e-8,
                 gtol=1e-8, max_nfev=None, pool=None):
        self.model = model
        self.p0 = p0
        self.bounds = bounds
        self.method = method
        self.jac = jac
        self.loss = loss
        self.f_scale = f_scale
        self.x_scale = x_scale
        self.ftol = ftol
        self.xtol = xtol
        self.gtol = gtol
        self.max_nfev = max_nfev
        self.pool = pool

    def _settings(self):
        return dict(bounds=self.bounds, method=self.method, jac=self.jac, loss=self.loss,
                    f_scale=self.f_scale, x_scale=self.x_scale, ftol=self.ftol,
                    xtol=self.xtol, gtol=self.gtol, max_nfev=self.max_nfev, pool=self.pool)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model parameters to ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Independent variables.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets; a 2-D ``y`` (``(n_samples, 1)`` included) fits one
            parameter vector per column (NaN entries are missing values), and
            ``predict`` then returns one column per target.
        sample_weight : array-like of shape (n_samples,) or (n_samples, n_targets), \
default=None
            Non-negative frequency weights: each point's loss (its squared
            residual for the linear loss, ``f_scale**2 * rho(r**2 /
            f_scale**2)`` for a robust one) counts ``sample_weight`` times, so
            an integer weight ``k`` equals the row repeated ``k`` times. With
            a 2-D ``y`` they may differ per column (a zero leaves the point
            out of that column's fit only).

        Returns
        -------
        self : object
            Fitted estimator.
        """
        y_arr = np.asarray(y) if not hasattr(y, "iloc") else y.to_numpy()
        batched = y_arr.ndim == 2  # (n_samples, 1) too: predict keeps the 2-D shape
        if batched:
            X = validate_data(self, X, reset=True, dtype=np.float64)
            Y = check_array(y_arr, dtype=np.float64, ensure_all_finite="allow-nan",
                            input_name="y")
            if Y.shape[0] != X.shape[0]:
                raise ValueError(f"X has {X.shape[0]} samples but y has {Y.shape[0]}.")
        else:
            X, y = validate_data(self, X, y, reset=True, y_numeric=True, dtype=np.float64)
        if batched and sample_weight is not None and np.ndim(sample_weight) == 2:
            sample_weight = _checked_column_weights(sample_weight, Y.shape)
        else:
            sample_weight = _checked_weights(sample_weight, X)
        model, p0 = self._model_and_p0(X.shape[1])
        if batched:
            return self._fit_batch(model, p0, X, Y, sample_weight)

        try:
            res = fit_curve(model, _xdata(X), y, p0=p0, sample_weight=sample_weight,
                            warn_cov=False, stacklevel=3, **self._settings())
        except TypeError as exc:
            if X.shape[0] == 1 and str(exc).startswith("Improper input"):
                # scikit-learn's convention for too few samples is a ValueError.
                raise ValueError(f"Cannot fit with n_samples = 1: {exc} (method 'lm'; 'trf' "
                                 "and 'dogbox' accept underdetermined fits).") from exc
            raise
        self.params_ = res.params
        self.param_names_ = self._param_names(res.param_names, X.shape[1])
        self.pcov_ = res.pcov
        self.perr_ = res.perr
        self.cost_ = res.cost
        self.n_iter_ = res.nit
        self.nfev_ = res.nfev
        self.status_ = res.status
        self.message_ = res.message
        if not res.success:
            # stacklevel 3: past fit and scikit-learn's _fit_context wrapper.
            warnings.warn(f"The fit did not converge: {res.message} Increase `max_nfev` or "
                          "check `p0` and the model.", ConvergenceWarning, stacklevel=3)
        return self

    def _fit_batch(self, model, p0, X, Y, sample_weight):
        Yt = Y.T  # (n_targets, n_samples): one curve per row
        sw = None
        if sample_weight is not None:
            sw = (sample_weight.T if sample_weight.ndim == 2
                  else np.broadcast_to(sample_weight, Yt.shape))
        res = fit_curves(model, _xdata(X), Yt, p0=p0, sample_weight=sw,
                         nan_policy="omit", check_finite=False, stacklevel=4,
                         **self._settings())
        self.params_ = res.params
        self.param_names_ = self._param_names(res.param_names, X.shape[1])
        self.pcov_ = res.pcov
        self.perr_ = res.perr
        self.cost_ = res.cost
        self.n_iter_ = res.nit
        self.nfev_ = res.nfev
        self.status_ = res.status
        self.message_ = res.messages
        failed = np.flatnonzero(~res.success)
        if failed.size:
            warnings.warn(f"{failed.size} of {Yt.shape[0]} targets did not converge "
                          f"(columns {failed[:10].tolist()}); see status_ and message_.",
                          ConvergenceWarning, stacklevel=4)
        return self

    def predict(self, X):
        """Evaluate the fitted model at ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Independent variables.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_targets)
            Model values at the fitted parameters.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self.params_.ndim == 2:
            return np.stack([self._evaluate(X, p) for p in self.params_], axis=1)
        return self._evaluate(X, self.params_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.regressor_tags.poor_score = False
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.input_tags.allow_nan = False
        return tags
