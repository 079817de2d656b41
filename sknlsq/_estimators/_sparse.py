"""SparseCurveFitRegressor: fits with many parameters and a sparse Jacobian.

Thin layer over :mod:`sknlsq._sparse_fit` (global fits with group-local and
shared parameters; any model with a given or detected sparsity pattern) and,
for small structurally dense problems, the dense solver of
:func:`sknlsq._fit.fit_curve`.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import _model
from .._config import x64
from .._fit import fit_curve
from .._pool import MemoryPool
from .._sparse_fit import fit_global, fit_pattern
from .._sparsity import (color_columns, detect_sparsity_pattern, estimate_memory_usage,
                         validate_pattern)
from ._curve_fit import _checked_weights, _ModelMixin, _xdata

_DENSE_MAX_PARAMS = 200  # 'auto': at most this many parameters and ...
_DENSE_MAX_FILL = 0.5  # ... at least this fraction of non-zeros: solve densely

# Everything a fit sets (besides n_features_in_ / feature_names_in_, which
# validate_data resets): removed at the start of each fit.
_FITTED_ATTRS = ("params_", "pcov_", "perr_", "shared_params_", "local_params_", "groups_",
                 "shared_pcov_", "local_pcov_", "local_param_names_", "shared_param_names_",
                 "sparsity_", "n_colors_", "memory_usage_", "tr_solver_", "cost_", "n_iter_",
                 "nfev_", "status_", "message_")


def _check_output_shape(out, m):
    """The model's output must be one value per sample, or broadcast to it
    (a scalar: a constant model), as for CurveFitRegressor."""
    try:
        ok = np.broadcast_shapes(tuple(out), (m,)) == (m,)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"`model` returned an array of shape {tuple(out)}; expected shape "
                         f"({m},), one value per sample (or a scalar).")


class _Broadcast:
    """``model`` with its output broadcast to ``(m,)``: a general fit of a
    model that returns a scalar (or shape (1,)), which the pattern detection,
    the pattern check and the solver all take as one value per sample.
    Equal for equal (model, m), so that compiled programs are reused."""

    def __init__(self, model, m):
        self.model, self.m = model, m

    def __call__(self, x, *params):
        return jnp.broadcast_to(jnp.asarray(self.model(x, *params)), (self.m,))

    def __eq__(self, other):
        return (type(other) is _Broadcast and self.m == other.m
                and self.model == other.model)

    def __hash__(self):
        return hash((_Broadcast, self.model, self.m))


class SparseCurveFitRegressor(_ModelMixin, RegressorMixin, BaseEstimator):
    """Nonlinear least squares with a sparse Jacobian (thousands of parameters).

    Two kinds of problems:

    * **Global fits** (``group_column`` set): samples carry a group id in
      column ``group_column`` of ``X``; the parameters named in
      ``local_params`` take one value per group, the others are shared by
      all groups. ``model(x, *params)`` is written for one sample set as
      usual: ``x`` is 1-D or (n_features, n_rows) as for predict, and the
      local parameters come as arrays over the rows (the value of each row's
      group), so each output row must depend only on its own row of ``x``
      and of the parameters (rows may be reordered by group, and padded with
      copies of a row of the same group).
      The Jacobian is block-arrow by construction and each step eliminates
      the local blocks exactly (Schur complement).
    * **General sparse models** (``group_column=None``): ``model(x, *params)``
      with a sparsity pattern given as ``jac_sparsity`` (scipy's forms) or
      detected from the JAX model (``'auto'``). The Jacobian's non-zeros are
      computed by one forward-mode product per colour of a Curtis-Powell-Reid
      column colouring, never densely, and the damped Gauss-Newton steps are
      solved by preconditioned conjugate gradients. Small, structurally dense
      problems are solved by the dense trust-region reflective solver
      (``method='trf'`` of :func:`sknlsq.curve_fit`) instead
      (``tr_solver='auto'``).

    Parameters
    ----------
    model : callable, default=None
        ``model(x, *params)``; ``None`` fits a linear model.
    p0 : array-like of shape (n_params,), default=None
        Initial values, one per parameter of ``model``. For a global fit an
        entry of a local parameter may also be an array of one value per
        group (in the order of ``groups_``).
    local_params : list of str or int, default=None
        Global fits: names (or positions) of the per-group parameters;
        ``None`` or ``[]``: all parameters shared.
    group_column : int, default=None
        Global fits: the column of ``X`` holding integer group ids; the other
        columns are the model's features.
    jac_sparsity : 'auto' or array-like or sparse matrix, default='auto'
        General models: the Jacobian pattern (n_samples, n_params), or
        ``'auto'`` to detect it by tracing the model.
    tr_solver : {'auto', 'schur', 'cg', 'dense'}, default='auto'
        Linear solver of the steps: 'schur' (global fits), 'cg' (general
        sparse) or 'dense' (the exact dense QR trust-region solver).
    ftol, xtol, gtol : float, default=1e-8
        Termination tolerances (scipy's meaning).
    max_nfev : int, default=None
        Maximum number of trial evaluations.
    cg_maxiter : int, default=None
        Conjugate-gradient iterations per step (default ``min(n, 500)``).
    pool : MemoryPool, default=None
        Pool holding the compiled programs.

    Attributes
    ----------
    params_ : ndarray of shape (n_params_total,)
        Fitted parameters; for a global fit the shared ones first, then the
        local ones group by group.
    shared_params_ : ndarray of shape (n_shared,)
        Global fits: the shared parameters.
    local_params_ : ndarray of shape (n_groups, n_local)
        Global fits: the local parameters, one row per group.
    groups_ : ndarray of shape (n_groups,)
        Global fits: the group ids, sorted.
    pcov_ : ndarray or None
        Covariance of ``params_`` (general models with at most 2000
        parameters); for global fits see ``shared_pcov_``/``local_pcov_``.
    shared_pcov_ : ndarray of shape (n_shared, n_shared)
        Global fits: covariance of the shared parameters (from the Schur
        complement, never a dense inverse of the whole system).
    local_pcov_ : ndarray of shape (n_groups, n_local, n_local)
        Global fits: the per-group diagonal blocks of the covariance.
    perr_ : ndarray of shape (n_params_total,)
        One-standard-deviation errors.
    sparsity_ : float
        Fraction of structural zeros of the Jacobian.
    n_colors_ : int
        Forward products per Jacobian evaluation.
    memory_usage_ : dict
        Dense versus sparse Jacobian bytes (:func:`estimate_memory_usage`).
    tr_solver_ : str
        The linear solver used.
    cost_, n_iter_, nfev_, status_, message_ : as for CurveFitRegressor.
    n_features_in_ : int
        Number of columns of ``X``.

    See Also
    --------
    sknlsq.CurveFitRegressor : Dense fits.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from sknlsq import SparseCurveFitRegressor
    >>> def decay(t, amp, off, rate):
    ...     return amp * jnp.exp(-rate * t) + off
    >>> t = np.tile(np.linspace(0, 4, 30), 3)
    >>> g = np.repeat([0, 1, 2], 30)
    >>> y = np.array([1.0, 2.0, 3.0])[g] * np.exp(-0.5 * t) + 0.1 * g
    >>> X = np.column_stack([t, g])
    >>> reg = SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0],
    ...                               local_params=["amp", "off"], group_column=1)
    >>> np.round(reg.fit(X, y).shared_params_, 6)
    array([0.5])
    >>> np.round(reg.local_params_, 6)
    array([[1. , 0. ],
           [2. , 0.1],
           [3. , 0.2]])
    """

    _parameter_constraints: dict = {
        "model": [callable, None],
        "p0": ["array-like", list, None],
        "local_params": [list, tuple, None],
        "group_column": [Integral, None],
        "jac_sparsity": [StrOptions({"auto"}), "array-like", "sparse matrix"],
        "tr_solver": [StrOptions({"auto", "schur", "cg", "dense"})],
        "ftol": [Interval(Real, 0, None, closed="left")],
        "xtol": [Interval(Real, 0, None, closed="left")],
        "gtol": [Interval(Real, 0, None, closed="left")],
        "max_nfev": [Interval(Integral, 1, None, closed="left"), None],
        "cg_maxiter": [Interval(Integral, 1, None, closed="left"), None],
        "pool": [MemoryPool, None],
    }

    def __init__(self, model=None, *, p0=None, local_params=None, group_column=None,
                 jac_sparsity="auto", tr_solver="auto", ftol=1e-8, xtol=1e-8, gtol=1e-8,
                 max_nfev=None, cg_maxiter=None, pool=None):
        self.model = model
        self.p0 = p0
        self.local_params = local_params
        self.group_column = group_column
        self.jac_sparsity = jac_sparsity
        self.tr_solver = tr_solver
        self.ftol = ftol
        self.xtol = xtol
        self.gtol = gtol
        self.max_nfev = max_nfev
        self.cg_maxiter = cg_maxiter
        self.pool = pool

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the parameters.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Independent variables (including the group column for global
            fits).
        y : array-like of shape (n_samples,)
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the squared residuals.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        # Each fit leaves only its own attributes (a global fit's groups_,
        # local_params_, ... do not survive a general refit, nor the reverse).
        for name in _FITTED_ATTRS:
            self.__dict__.pop(name, None)
        X, y = validate_data(self, X, y, reset=True, y_numeric=True, dtype=np.float64)
        sw = _checked_weights(sample_weight, X)
        w = None if sw is None else np.sqrt(sw)  # None: unit weights
        if self.group_column is not None:
            self._fit_global(X, y, w)
        else:
            self._fit_general(X, y, np.ones(X.shape[0]) if w is None else w)
        if not self.status_ > 0:
            warnings.warn(f"The fit did not converge: {self.message_} Increase `max_nfev` or "
                          "check `p0` and the model.", ConvergenceWarning, stacklevel=3)
        return self

    # -- global fits -------------------------------------------------------------
    def _split_X(self, X):
        gc = self.group_column
        if not -X.shape[1] <= gc < X.shape[1]:
            raise ValueError(f"`group_column`={gc} is out of range for X with "
                             f"{X.shape[1]} columns.")
        gc %= X.shape[1]
        if X.shape[1] == 1:
            raise ValueError("`X` needs at least one feature column besides `group_column`.")
        # Views where possible: X can be large.
        keep = [c for c in range(X.shape[1]) if c != gc]
        feats = X[:, keep[0]:keep[0] + 1] if len(keep) == 1 else X[:, keep]
        return X[:, gc], feats

    @staticmethod
    def _group_index(ids):
        """Sorted distinct group ids and each row's position among them."""
        groups, group = np.unique(ids, return_inverse=True)
        bad = groups[groups != np.round(groups)]
        if bad.size:
            raise ValueError(f"group ids (`group_column` of X) must be integers; got "
                             f"{bad[:3].tolist()}.")
        big = groups[(groups < -2.0 ** 63) | (groups >= 2.0 ** 63)]
        if big.size:
            raise ValueError(f"group ids (`group_column` of X) must be 64-bit integers "
                             f"(between -2**63 and 2**63 - 1); got {big[:3].tolist()}.")
        return groups.astype(np.int64), group

    def _fit_global(self, X, y, w):
        if self.model is None:
            raise ValueError("a global fit (`group_column`) needs a `model`.")
        if self.tr_solver not in ("auto", "schur"):
            raise ValueError(f"global fits use tr_solver='schur', got {self.tr_solver!r}.")
        ids, feats = self._split_X(X)
        groups, group = self._group_index(ids)
        del ids
        G = groups.size
        names = _model.parameter_names(self.model, None if self.p0 is None else len(self.p0))
        n_params = len(names)
        local = list(self.local_params or [])
        local_idx = []
        for p in local:
            if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
                if not 0 <= p < n_params:
                    raise ValueError(f"`local_params` entry {p} is out of range "
                                     f"({n_params} parameters).")
                local_idx.append(int(p))
            elif p in names:
                local_idx.append(names.index(p))
            else:
                raise ValueError(f"`local_params` entry {p!r} is not a parameter of the "
                                 f"model {names}.")
        if len(set(local_idx)) != len(local_idx):
            raise ValueError("`local_params` lists a parameter twice.")
        shared_idx = [i for i in range(n_params) if i not in local_idx]
        counts = np.bincount(group, minlength=G)
        if np.any(counts < len(local_idx)):
            g = int(np.argmin(counts))
            raise ValueError(f"group {groups[g]} has {counts[g]} sample(s), fewer than its "
                             f"{len(local_idx)} local parameters.")
        p0 = [1.0] * n_params if self.p0 is None else list(self.p0)
        if len(p0) != n_params:
            raise ValueError(f"`p0` has {len(p0)} entries; the model has {n_params} "
                             "parameters.")
        p0_local = np.empty((G, len(local_idx)))
        for j, k in enumerate(local_idx):
            v = np.asarray(p0[k], dtype=float)
            if v.ndim == 0:
                p0_local[:, j] = v
            elif v.shape == (G,):
                p0_local[:, j] = v
            else:
                raise ValueError(f"`p0` entry of local parameter {names[k]!r} must be a scalar "
                                 f"or one value per group ({G}); got shape {v.shape}. Groups "
                                 "with no samples cannot be fitted.")
        try:
            p0_shared = np.array([float(np.asarray(p0[k], dtype=float)) for k in shared_idx])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"`p0` entries of the shared parameters must be scalars: {exc}"
                             ) from None
        if not (np.all(np.isfinite(p0_local)) and np.all(np.isfinite(p0_shared))):
            raise ValueError("`p0` must contain only finite values.")
        _check_output_shape(self._require_traceable(self.model, _xdata(feats), n_params),
                            y.size)
        res = fit_global(self.model, _xdata(feats), y, w, group, G, local_idx, shared_idx,
                         p0_local, p0_shared, ftol=self.ftol, xtol=self.xtol, gtol=self.gtol,
                         max_nfev=self.max_nfev, pool=self.pool)
        pg, pl = len(shared_idx), len(local_idx)
        # Degrees of freedom: zero-weight samples are not data (as in the
        # other estimators, and as if they had been left out).
        m = y.size if w is None else int(np.count_nonzero(w))
        # A group whose samples all have zero weight is left out, its local
        # parameters too (they are undetermined: inf).
        seen = G if w is None else int(np.count_nonzero(np.bincount(group, weights=w > 0,
                                                                    minlength=G)))
        n = pg + G * pl
        n_dof = pg + seen * pl
        s2 = 2.0 * res.cost / (m - n_dof) if m > n_dof else np.inf
        self.groups_ = groups
        self.local_param_names_ = tuple(names[k] for k in local_idx)
        self.shared_param_names_ = tuple(names[k] for k in shared_idx)
        self.params_ = res.params
        self.shared_params_ = res.params[:pg]
        self.local_params_ = res.params[pg:].reshape(G, pl)
        if res.cov:
            self.shared_pcov_ = res.cov["shared"] * s2
            self.local_pcov_ = res.cov["local"] * s2
            local_err = np.sqrt(np.diagonal(self.local_pcov_, axis1=1, axis2=2))
            self.perr_ = np.concatenate([np.sqrt(np.diag(self.shared_pcov_)),
                                         local_err.reshape(-1)])
        else:
            self.shared_pcov_ = np.full((pg, pg), np.inf)
            self.local_pcov_ = np.full((G, pl, pl), np.inf)
            self.perr_ = np.full(n, np.inf)
        self.pcov_ = None
        self.tr_solver_ = "schur"
        self.sparsity_ = 1.0 - (pg + pl) / n
        self.n_colors_ = res.n_colors
        self.memory_usage_ = estimate_memory_usage(m, n, self.sparsity_)
        self._store_common(res)

    # -- general models ----------------------------------------------------------
    def _fit_general(self, X, y, w):
        model, p0 = self._model_and_p0(X.shape[1])
        xdata = _xdata(X)
        if p0 is None:
            names = _model.parameter_names(model, None)
            p0 = np.ones(len(names))
        p0 = np.asarray(p0, dtype=float).reshape(-1)
        if not np.all(np.isfinite(p0)):
            raise ValueError("`p0` must contain only finite values.")
        m, n = y.size, p0.size
        if self.model is not None:
            _model.parameter_names(model, n)  # a p0 of the wrong length names `p0`
        dense_model = model
        if isinstance(self.jac_sparsity, str):
            out, _ = _model.probe_jax(model, np.shape(xdata), n)  # untraceable: as before
        else:
            out = self._require_traceable(model, xdata, n)
        if out is not None:
            _check_output_shape(out, m)
            if tuple(out) != (m,):
                model = _Broadcast(model, m)
        if isinstance(self.jac_sparsity, str):
            pattern, sparsity = detect_sparsity_pattern(model, p0, xdata)
            if pattern.shape != (m, n):
                raise ValueError(f"the model returns {pattern.shape[0]} values for "
                                 f"{m} samples.")
        else:
            pattern = validate_pattern(self.jac_sparsity, m, n)
            sparsity = 1.0 - pattern.nnz / (m * n)
            self._verify_pattern(model, xdata, p0, pattern)
        solver = self.tr_solver
        if solver == "schur":
            raise ValueError("tr_solver='schur' needs a global fit (`group_column`).")
        if solver == "auto":
            dense_ok = n <= _DENSE_MAX_PARAMS and (1 - sparsity) >= _DENSE_MAX_FILL
            solver = "dense" if dense_ok else "cg"
        self.sparsity_ = float(sparsity)
        self.memory_usage_ = estimate_memory_usage(m, n, sparsity)
        self.tr_solver_ = solver
        if solver == "dense":
            res = fit_curve(dense_model, xdata, y, p0=p0, sample_weight=w ** 2, method="trf",
                            ftol=self.ftol, xtol=self.xtol, gtol=self.gtol,
                            max_nfev=self.max_nfev, warn_cov=False, pool=self.pool,
                            stacklevel=4)
            self.params_ = res.params
            self.pcov_ = res.pcov
            self.perr_ = res.perr
            self.n_colors_ = n
            self.cost_ = res.cost
            self.n_iter_, self.nfev_ = res.nit, res.nfev
            self.status_, self.message_ = res.status, res.message
            return
        res = fit_pattern(model, xdata, y, w, p0, pattern, ftol=self.ftol, xtol=self.xtol,
                          gtol=self.gtol, max_nfev=self.max_nfev, cg_maxiter=self.cg_maxiter,
                          pool=self.pool)
        self.params_ = res.params
        n_dof = int(np.count_nonzero(w))
        if "full" in res.cov and n_dof > n:
            self.pcov_ = res.cov["full"] * (2.0 * res.cost / (n_dof - n))
            self.perr_ = np.sqrt(np.diag(self.pcov_))
        else:
            self.pcov_ = None
            self.perr_ = np.full(n, np.nan)
        self.n_colors_ = res.n_colors
        self._store_common(res)

    def _verify_pattern(self, model, xdata, p0, pattern):
        """A given pattern must cover the Jacobian's non-zeros at ``p0`` (checked
        by forward products on a few rows' worth of columns)."""
        n = p0.size
        with x64():
            def f(p):
                return jnp.asarray(model(xdata, *[p[i] for i in range(n)]),
                                   dtype=jnp.float64).reshape(-1)

            # Random column combinations: J @ v is non-zero only on rows that
            # the pattern must cover for the columns in v.
            rng = np.random.default_rng(0)
            for _ in range(3):
                v = rng.normal(size=n)
                _, jv = jax.jvp(f, (jnp.asarray(p0),), (jnp.asarray(v),))
                covered = np.asarray((pattern @ np.ones(n)) > 0).reshape(-1)
                jv = np.asarray(jv)
                if np.any((np.abs(jv) > 0) & ~covered):
                    rows = np.flatnonzero((np.abs(jv) > 0) & ~covered)[:5]
                    raise ValueError(f"`jac_sparsity` misses non-zero Jacobian entries (rows "
                                     f"{rows.tolist()} have none in the pattern but depend "
                                     "on the parameters).")
            # All columns at once through the compressed Jacobian of the
            # pattern's own colouring, B = J @ seeds (one forward product per
            # colour), taken twice with random column weights w1, w2: where
            # the pattern is right, B[i, c] comes from the one column j of
            # colour c with an entry in row i, so B2 = B1 * w2[j] / w1[j];
            # a missing entry shows as a non-zero B outside the pattern, or
            # (hidden behind j) as a mismatch of that ratio.
            colors, n_colors = color_columns(pattern)
            colors = np.asarray(colors)
            w1, w2 = rng.uniform(0.5, 1.5, size=(2, n))

            def compressed(w):
                seeds = np.zeros((n_colors, n))
                seeds[colors, np.arange(n)] = w
                return np.asarray(jax.vmap(lambda v: jax.jvp(f, (jnp.asarray(p0),), (v,))[1],
                                           out_axes=1)(jnp.asarray(seeds)))

            B1, B2 = compressed(w1), compressed(w2)
            coo = pattern.tocoo()
            C = sp.csr_matrix((np.ones(n), (np.arange(n), colors)), shape=(n, n_colors))
            allowed = (abs(pattern.tocsr()) @ C).toarray() > 0
            bad = (np.abs(B1) > 0) & ~allowed
            i, j = coo.row, coo.col
            pred = B1[i, colors[j]] * (w2[j] / w1[j])
            got = B2[i, colors[j]]
            scale = max(np.abs(B2).max(initial=0.0), np.finfo(float).tiny)
            off = np.abs(got - pred) > 1e-7 * (np.abs(got) + np.abs(pred)) + 1e-12 * scale
            if bad.any() or off.any():
                rows = (np.nonzero(bad)[0] if bad.any() else i[off])[:5]
                near = (np.flatnonzero(colors == np.nonzero(bad)[1][0]) if bad.any()
                        else j[off])[:5]
                raise ValueError(f"`jac_sparsity` misses true non-zeros of the Jacobian: rows "
                                 f"{rows.tolist()} depend on parameters where the pattern has "
                                 f"no entry (near columns {near.tolist()}).")
            # Column by column check on a sample of columns.
            cols = rng.choice(n, size=min(n, 20), replace=False)
            P = pattern.tocsc()
            for j in cols:
                e = np.zeros(n)
                e[j] = 1.0
                _, jv = jax.jvp(f, (jnp.asarray(p0),), (jnp.asarray(e),))
                nz = np.flatnonzero(np.abs(np.asarray(jv)) > 0)
                allowed = P[:, [j]].nonzero()[0]
                missing = np.setdiff1d(nz, allowed)
                if missing.size:
                    raise ValueError(f"`jac_sparsity` misses true non-zeros of the Jacobian: "
                                     f"column {j}, rows {missing[:5].tolist()}.")

    @staticmethod
    def _require_traceable(model, xdata, n):
        """The sparse solvers differentiate the model with JAX: a NumPy model
        gets this error instead of a tracer conversion error from inside.
        Returns the output's shape (for scalar parameters)."""
        out, exc = _model.probe_jax(model, np.shape(xdata), n)
        if exc is not None:
            raise TypeError(f"SparseCurveFitRegressor needs a `model` that JAX can trace "
                            f"(jax.numpy operations on the parameters); tracing failed with "
                            f"{type(exc).__name__}: {exc}. Fit NumPy models with "
                            "CurveFitRegressor.") from None
        return out

    def _store_common(self, res):
        self.cost_ = res.cost
        self.n_iter_ = res.nit
        self.nfev_ = res.nfev
        self.status_ = res.status
        self.message_ = res.message

    def predict(self, X):
        """Evaluate the fitted model at ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Independent variables (with the group column for global fits).

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Model values at the fitted parameters.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self.group_column is None:
            return self._evaluate(X, self.params_)
        ids, feats = self._split_X(X)
        if np.any(ids != np.round(ids)):
            raise ValueError("group ids (`group_column` of X) must be integers.")
        pos = np.searchsorted(self.groups_, ids)
        pos = np.clip(pos, 0, self.groups_.size - 1)
        unknown = self.groups_[pos] != ids
        if unknown.any():
            raise ValueError(f"group ids {np.unique(ids[unknown])[:5].tolist()} were not seen "
                             "during fit.")
        names = self.shared_param_names_ + self.local_param_names_
        all_names = _model.parameter_names(self.model, len(names))
        args = []
        for name in all_names:
            if name in self.local_param_names_:
                args.append(self.local_params_[pos, self.local_param_names_.index(name)])
            else:
                args.append(self.shared_params_[self.shared_param_names_.index(name)])
        with x64():
            out = self.model(jnp.asarray(_xdata(feats)), *[jnp.asarray(a) for a in args])
            return np.broadcast_to(np.asarray(out, dtype=np.float64), (X.shape[0],)).copy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.regressor_tags.poor_score = False
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags
