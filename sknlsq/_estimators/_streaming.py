"""StreamingCurveFitRegressor: exact out-of-core fits and online updates.

The scikit-learn layer over :mod:`sknlsq._stream`: ``fit`` runs the exact
multi-pass chunked solver over a data source (arrays, memory maps, HDF5
datasets, re-iterable chunk generators); ``partial_fit`` folds one chunk at a
time into an information-form estimate.
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral, Real

import numpy as np
from scipy.optimize import Bounds
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (check_array, check_consistent_length,
                                      check_is_fitted, column_or_1d, validate_data)

from .._fit import _bucket, point_scale_key
from .._pool import MemoryPool
from .._sources import (ArraySource, ChunkSource, IterableSource, _check_chunk_size,
                        _is_h5py_dataset, as_source)
from .._stream import (OnlineState, _check_checkpoint_path, _settings_check,
                       covariance_from_R, fit_chunked, online_update)
from ._curve_fit import _checked_weights, _ModelMixin, _xdata


def _is_source_like(X):
    """Whether ``fit`` hands ``X`` to :func:`~sknlsq._sources.as_source` rather
    than to scikit-learn's validation: sources, callables, h5py datasets (or
    lists of them), and what ``as_source`` refuses with a better message than
    ``check_array`` would give (paths, one-shot iterators and generators)."""
    if isinstance(X, (ChunkSource, str, bytes, os.PathLike)) or callable(X):
        return True
    if isinstance(X, (list, tuple)):
        return bool(X) and all(_is_h5py_dataset(x) for x in X)
    if isinstance(X, np.ndarray):
        return False
    mod = type(X).__module__ or ""
    return mod.startswith("h5py") or hasattr(X, "__next__")


class StreamingCurveFitRegressor(_ModelMixin, RegressorMixin, BaseEstimator):
    """Nonlinear least-squares curve fit over data read in chunks.

    ``fit`` is exact: every solver iteration makes one pass over the data,
    accumulating the QR factor of the Jacobian chunk by chunk in float64, so
    the result equals an in-memory :class:`~sknlsq.CurveFitRegressor` fit
    while memory depends only on ``chunk_size`` and the number of
    parameters. ``partial_fit`` is the online mode for data arriving over
    time.

    Parameters
    ----------
    model : callable, default=None
        ``model(x, *params)``, point-wise, in scipy's convention: ``x`` is a
        chunk's ``X[:, 0]`` for one feature and ``X.T`` otherwise. ``None``
        fits a linear model ``intercept + sum_j coef_j * x_j``.
    p0 : array-like of shape (n_params,), default=None
        Initial parameters (ones, zeros for the linear model, or the middle
        of finite bounds when omitted).
    bounds : 2-tuple of array-like, default=(-inf, inf)
        Lower and upper bounds on the parameters.
    method : {'lm', 'trf', 'dogbox'}, default=None
        Solver; ``None`` picks 'lm' without bounds and 'trf' with bounds.
    loss : {'linear', 'soft_l1', 'huber', 'cauchy', 'arctan'}, default='linear'
        Robust loss ('trf' and 'dogbox' only).
    f_scale : float, default=1.0
        Soft margin of the robust losses.
    x_scale : array-like or 'jac', default=None
        Characteristic scale of each parameter (scipy's meaning).
    ftol, xtol, gtol : float, default=1e-8
        Termination tolerances (scipy's meaning).
    max_nfev : int, default=None
        Maximum number of trial evaluations (passes) of ``fit``, and of each
        ``partial_fit`` update; default ``100 * n * (n + 1)``.
    chunk_size : int, default=65536
        Rows per chunk. Memory is O(chunk_size * n_params).
    nan_policy : {'raise', 'omit'}, default='raise'
        Non-finite values in a chunk raise an error naming the chunk, or
        (``'omit'``) their rows are skipped.
    forgetting_factor : float in (0, 1], default=1.0
        ``partial_fit`` only: weight of the information of earlier chunks at
        each update (1: all data count equally).
    checkpoint : str or path, default=None
        File (.npz) where ``fit`` saves its state every ``checkpoint_every``
        solver steps, atomically; its folder must exist. A ``fit`` that
        finds the file resumes from it (after checking that it belongs to
        the same settings, model computation -- the jaxpr of a JAX model,
        the code and arguments of a NumPy one -- and data: the source's
        fingerprint, the first chunk, the number of rows and a checksum of
        all values, checked at the first complete pass; a finished
        checkpoint is checked by one read of the data) and reaches the
        same result as an uninterrupted fit. The file is kept after the fit;
        delete it to start afresh.
    checkpoint_every : int, default=1
        Solver steps (each one or two passes) between checkpoints.
    verbose : int, default=0
        ``> 0`` shows a tqdm progress bar of the passes with points/s.
    absolute_sigma : bool, default=False
        scipy's meaning for the covariance (weights are ``1 / sigma**2``).
    pool : MemoryPool, default=None
        Pool holding the compiled programs.

    Attributes
    ----------
    params_ : ndarray of shape (n_params,)
        Fitted parameters.
    param_names_ : tuple of str
        Parameter names.
    pcov_ : ndarray of shape (n_params, n_params)
        Covariance of ``params_`` (after ``fit`` and after every
        ``partial_fit``).
    perr_ : ndarray of shape (n_params,)
        ``sqrt(diag(pcov_))``.
    cost_ : float
        ``0.5 * sum(w * f_scale**2 * rho(r**2 / f_scale**2))`` at
        ``params_`` (``fit``; ``w`` the sample weights).
    n_iter_ : int
        Accepted solver iterations of ``fit``; number of chunks seen by
        ``partial_fit``.
    nfev_ : int
        Trial evaluations (each one pass over the data for ``fit``).
    status_ : int
        Termination status (scipy's least_squares codes).
    message_ : str
        Termination message.
    n_points_ : int
        Points with non-zero weight used by the last ``fit`` (or seen by
        ``partial_fit``).
    passes_ : int
        Passes over the data made by the last ``fit``.
    points_per_second_ : float
        Throughput of those passes.
    n_features_in_ : int
        Number of features seen during fit.

    See Also
    --------
    sknlsq.CurveFitRegressor : The in-memory estimator.

    Notes
    -----
    ``partial_fit`` keeps the Gauss-Newton information of past chunks as an
    R factor and fits each new chunk against it with the trust-region
    solver. With rows in random order a single pass lands close to the
    optimum of all the data; with ordered rows (early chunks seeing only part
    of the curve) it stays finite but can be far from it. ``fit`` gives the
    exact answer.

    ``sample_weight`` is a frequency weight, for every loss: each point's
    loss (its squared residual for the linear loss, scipy's ``sigma = 1 /
    sqrt(sample_weight)``; ``f_scale**2 * rho(r**2 / f_scale**2)`` for a
    robust one) counts ``sample_weight`` times, so an integer weight ``k``
    equals the row repeated ``k`` times and a zero leaves it out. The
    covariance counts the points of non-zero weight, not the sum of the
    weights, in its degrees of freedom.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from sknlsq import StreamingCurveFitRegressor
    >>> def decay(x, a, b):
    ...     return a * jnp.exp(-b * x)
    >>> X = np.linspace(0, 3, 1000)[:, None]
    >>> y = 2.0 * np.exp(-0.7 * X[:, 0])
    >>> reg = StreamingCurveFitRegressor(decay, p0=[1.0, 1.0], chunk_size=128)
    >>> np.round(reg.fit(X, y).params_, 6)
    array([2. , 0.7])
    >>> reg.passes_ > 1
    True
    """

    _parameter_constraints: dict = {
        "model": [callable, None],
        "p0": ["array-like", None],
        "bounds": [tuple, list, "array-like", Bounds],
        "method": [StrOptions({"lm", "trf", "dogbox"}), None],
        "loss": [StrOptions({"linear", "soft_l1", "huber", "cauchy", "arctan"})],
        "f_scale": [Interval(Real, 0, None, closed="neither")],
        "x_scale": ["array-like", StrOptions({"jac"}), None],
        "ftol": [Interval(Real, 0, None, closed="left")],
        "xtol": [Interval(Real, 0, None, closed="left")],
        "gtol": [Interval(Real, 0, None, closed="left")],
        "max_nfev": [Interval(Integral, 1, None, closed="left"), None],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "nan_policy": [StrOptions({"raise", "omit"})],
        "forgetting_factor": [Interval(Real, 0, 1, closed="right")],
        "checkpoint": [str, os.PathLike, None],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
        "absolute_sigma": ["boolean"],
        "pool": [MemoryPool, None],
    }

    def __init__(self, model=None, *, p0=None, bounds=(-np.inf, np.inf), method=None,
                 loss="linear", f_scale=1.0, x_scale=None, ftol=1e-8, xtol=1e-8, gtol=1e-8,
                 max_nfev=None, chunk_size=65536, nan_policy="raise", forgetting_factor=1.0,
                 checkpoint=None, checkpoint_every=1, verbose=0, absolute_sigma=False,
                 pool=None):
        self.model = model
        self.p0 = p0
        self.bounds = bounds
        self.method = method
        self.loss = loss
        self.f_scale = f_scale
        self.x_scale = x_scale
        self.ftol = ftol
        self.xtol = xtol
        self.gtol = gtol
        self.max_nfev = max_nfev
        self.chunk_size = chunk_size
        self.nan_policy = nan_policy
        self.forgetting_factor = forgetting_factor
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.verbose = verbose
        self.absolute_sigma = absolute_sigma
        self.pool = pool

    # -- helpers ---------------------------------------------------------------
    def _solver_settings(self, model, p0, n_features):
        return _settings_check(model, p0, self.bounds, self.method, self.loss, self.f_scale,
                               self.x_scale, self.ftol, self.xtol, self.gtol, self.max_nfev,
                               0, n_features)

    # -- fit ---------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Exact fit over all the data, in passes over chunks.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), ChunkSource, h5py dataset or callable
            The data: in-memory arrays or memory maps (with ``y``; a
            :class:`numpy.memmap` is read one chunk at a time), h5py
            datasets (a 2-D one or a list of 1-D ones, with a ``y``
            dataset), a :class:`ChunkSource` such as
            ``HDF5Source(path, X=..., y=...)`` (``y`` must then be None), or a
            callable returning a fresh iterator of ``(X, y[, sample_weight])``
            chunks per pass. A file path or a one-shot iterator is refused
            with a message saying what to pass instead.
        y : array-like of shape (n_samples,), default=None
            Targets, when ``X`` is an array.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative frequency weights of the points' losses (arrays
            only; a weight ``k`` equals the row repeated ``k`` times, for
            robust losses too). With ``nan_policy='omit'`` rows with a
            non-finite weight are left out, as rows with non-finite ``X`` or
            ``y``.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        if self.checkpoint is not None:  # before anything reads the data
            _check_checkpoint_path(self.checkpoint)
        from_source = _is_source_like(X)
        if from_source:
            source = as_source(X, y, sample_weight)
            # Only a size known up front: an IterableSource learns its size in
            # its first pass, and a chunk size changing between a fit and its
            # retry with the same source would refuse the fit's checkpoint.
            n_samples = None if isinstance(source, IterableSource) else source.n_samples
        elif isinstance(X, np.memmap):
            source = self._memmap_source(X, y, sample_weight)
            n_samples = source.n_samples
        else:
            X, y = self._validate_xy(X, y, reset=True)
            source = ArraySource(X, y, self._checked_weights(sample_weight, X))
            n_samples = X.shape[0]
        chunk_size = _check_chunk_size(self.chunk_size)  # (refuses True, as checkpoint_every)
        if n_samples is not None:  # no chunk larger than the data needs
            chunk_size = min(chunk_size, _bucket(max(int(n_samples), 1)))
        nf = self._features_of(source)
        model, p0 = self._model_and_p0(nf)
        try:
            res = fit_chunked(model, source, p0=p0, bounds=self.bounds, method=self.method,
                              loss=self.loss, f_scale=self.f_scale, x_scale=self.x_scale,
                              ftol=self.ftol, xtol=self.xtol, gtol=self.gtol,
                              max_nfev=self.max_nfev, absolute_sigma=self.absolute_sigma,
                              chunk_size=chunk_size, nan_policy=self.nan_policy,
                              checkpoint=self.checkpoint,
                              checkpoint_every=self.checkpoint_every, verbose=self.verbose,
                              pool=self.pool, stacklevel=3)
        except TypeError as exc:
            if source.n_samples == 1 and str(exc).startswith("Improper input"):
                # scikit-learn's convention for too few samples is a ValueError
                # (as CurveFitRegressor).
                raise ValueError(f"Cannot fit with n_samples = 1: {exc} (method 'lm'; 'trf' "
                                 "and 'dogbox' accept underdetermined fits).") from exc
            raise
        if from_source:
            self.n_features_in_ = nf
            if hasattr(self, "feature_names_in_"):  # of an earlier fit on a DataFrame
                del self.feature_names_in_
        self.params_ = res.params
        self.param_names_ = self._param_names(res.param_names, nf)
        self.pcov_ = res.pcov
        self.perr_ = res.perr
        self.cost_ = res.cost
        self.n_iter_ = res.nit
        self._partial_chunks = 0  # partial_fit calls since this fit
        self.nfev_ = res.nfev
        self.status_ = res.status
        self.message_ = res.message
        self.n_points_ = res.n_points
        self.passes_ = res.passes
        self.points_per_second_ = res.points_per_second
        # partial_fit may continue from here: the information at the optimum.
        self._online = OnlineState(x=res.params.copy(), R=res.R, z=np.zeros(res.params.size),
                                   rss_const=2.0 * res.cost, n_seen=float(res.n_points))
        if not res.success:
            warnings.warn(f"The fit did not converge: {res.message} Increase `max_nfev` or "
                          "check `p0` and the model.", ConvergenceWarning, stacklevel=3)
        return self

    def _memmap_source(self, X, y, sample_weight):
        """A lazy :class:`ArraySource` over a memory-mapped ``X`` (and ``y``,
        ``sample_weight`` if they are memory maps too), with scikit-learn's
        checks of the shapes: ``validate_data`` would load the whole file
        into a float64 copy. Values are checked chunk by chunk in the fit."""
        if X.ndim != 2:
            raise ValueError(f"Expected a 2D array, got a {X.ndim}D memory map instead: "
                             "reshape it with X.reshape(-1, 1) for a single feature.")
        if y is None:
            raise ValueError(f"This {type(self).__name__} estimator requires y to be passed, "
                             "but the target y is None.")
        if isinstance(y, np.memmap):
            if y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]  # a view: still lazy
            if y.ndim != 1:
                raise ValueError(f"`y` must be 1-D (n_samples,); got a memory map of shape "
                                 f"{y.shape}.")
        else:
            y = column_or_1d(check_array(y, ensure_2d=False, dtype=np.float64,
                                         ensure_all_finite=self.nan_policy == "raise",
                                         input_name="y"), warn=True)
        check_consistent_length(X, y)
        if not isinstance(sample_weight, np.memmap):
            sample_weight = self._checked_weights(sample_weight, X)
        source = ArraySource(X, y, sample_weight)
        self.n_features_in_ = source.n_features
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return source

    def _checked_weights(self, sample_weight, X):
        """``sample_weight`` validated by scikit-learn; with ``nan_policy='omit'``
        non-finite weights pass as NaN (their rows are left out, as for a
        source), every other check still applies."""
        if sample_weight is None or self.nan_policy == "raise" or np.ndim(sample_weight) == 0:
            return _checked_weights(sample_weight, X)
        try:
            raw = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError):
            return _checked_weights(sample_weight, X)  # its message names the argument
        bad = ~np.isfinite(raw)
        if not bad.any():
            return _checked_weights(sample_weight, X)
        sw = _checked_weights(np.where(bad, 1.0, raw), X)
        sw[bad] = np.nan
        return sw

    def _features_of(self, source):
        if source.n_features is not None:
            return int(source.n_features)
        for chunk in source.chunks(max(int(self.chunk_size), 1)):
            return chunk.X.reshape(chunk.n_rows, -1).shape[1]
        raise ValueError("the data source is empty (`X`).")

    # -- partial_fit -------------------------------------------------------------
    def _validate_xy(self, X, y, reset):
        """``(X, y)`` validated as scikit-learn does; with ``nan_policy='omit'``
        non-finite entries of ``X`` and ``y`` pass (the fit leaves those rows
        out), which ``validate_data(X, y)`` would refuse for ``y``."""
        if self.nan_policy == "raise":
            return validate_data(self, X, y, reset=reset, y_numeric=True, dtype=np.float64)
        if y is None:
            raise ValueError(f"This {type(self).__name__} estimator requires y to be passed, "
                             "but the target y is None.")
        X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=False)
        y = column_or_1d(check_array(y, ensure_2d=False, dtype=np.float64,
                                     ensure_all_finite=False, input_name="y"), warn=True)
        check_consistent_length(X, y)
        return X, y

    def partial_fit(self, X, y, sample_weight=None):
        """Update the fit with one chunk of data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The chunk's independent variables.
        y : array-like of shape (n_samples,)
            The chunk's targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative frequency weights of the points' losses (a weight
            ``k`` equals the row repeated ``k`` times, for robust losses
            too).

        Returns
        -------
        self : object
            Updated estimator.
        """
        first_call = not hasattr(self, "_online") or not hasattr(self, "params_")
        if first_call:
            self._validate_params()
        X, y = self._validate_xy(X, y, reset=first_call)
        if sample_weight is not None and np.ndim(sample_weight) == 1 and X.shape[0] > 0:
            try:
                raw = np.asarray(sample_weight, dtype=np.float64)
            except (TypeError, ValueError):
                raw = None
            if raw is not None and raw.shape == (X.shape[0],) and np.all(raw == 0):
                # A chunk of zero weight carries no information: no update (as
                # a chunk whose rows nan_policy='omit' drops), not an error.
                return self
        sw = self._checked_weights(sample_weight, X)
        w = np.ones(X.shape[0]) if sw is None else np.sqrt(sw)
        if self.nan_policy == "omit":
            ok = np.isfinite(y) & np.all(np.isfinite(X), axis=1) & np.isfinite(w)
            X, y, w = X[ok], y[ok], w[ok]
            if X.shape[0] == 0:
                return self
        nf = X.shape[1]
        model, p0 = self._model_and_p0(nf)
        st = self._solver_settings(model, p0, nf)
        # With a robust loss, sqrt(sample_weight) scales f_scale per point:
        # weights are frequencies (``w`` is what online_update scales by).
        st["point_scale"] = point_scale_key(st["loss"], sw is not None)
        state = getattr(self, "_online", None) if not first_call else None
        if state is not None and state.x.size != st["n"]:
            # scikit-learn's convention: partial_fit keeps the structure of
            # the first call (as it keeps the number of features).
            raise ValueError(f"`model` / `p0` now give {st['n']} parameters, but this "
                             f"estimator was fitted with {state.x.size} (its first "
                             "partial_fit, or fit): partial_fit cannot change the number of "
                             "parameters. Call fit, or partial_fit on a clone "
                             "(sklearn.base.clone), to start afresh with the new model.")
        max_nfev = st["opts"].max_nfev
        new, status, nfev = online_update(model, state, _xdata(X), y, w, p0=st["p0"], st=st,
                                          pool=self.pool, max_nfev=int(max_nfev),
                                          lam=float(self.forgetting_factor), stacklevel=2)
        self._online = new
        n = st["n"]
        self.params_ = new.x
        self.param_names_ = self._param_names(st["names"], nf)
        self.pcov_ = covariance_from_R(new.R, 0.5 * new.rss, new.n_seen, n, st["method"],
                                       self.absolute_sigma)
        self.perr_ = np.sqrt(np.diag(self.pcov_))
        self.cost_ = 0.5 * new.rss
        # The chunks seen by partial_fit (since the first call, or the last fit).
        self._partial_chunks = (0 if first_call else getattr(self, "_partial_chunks", 0)) + 1
        self.n_iter_ = self._partial_chunks
        self.nfev_ = (0 if first_call else getattr(self, "nfev_", 0)) + nfev
        self.status_ = status
        self.message_ = ""
        self.n_points_ = int(round(new.n_seen))
        return self

    def predict(self, X):
        """Evaluate the fitted model at ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Independent variables.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Model values at the fitted parameters.
        """
        # params_ is what predict needs: a partial_fit whose rows were all
        # dropped (nan_policy='omit') sets other attributes but not it.
        check_is_fitted(self, "params_")
        if isinstance(X, ChunkSource) or callable(X) or _is_h5py_dataset(X):
            raise TypeError(f"predict needs an array-like `X` of shape (n_samples, "
                            f"n_features), not {type(X).__name__}: read the rows to "
                            "predict from the source first.")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._evaluate(X, self.params_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.regressor_tags.poor_score = False
        tags.input_tags.allow_nan = False
        return tags

