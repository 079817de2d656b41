"""CurveFitRegressor behaviour against scipy and sknlsq.curve_fit references."""

import pickle
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit as scipy_curve_fit
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sknlsq import CurveFitRegressor, curve_fit
from sknlsq._config import x64


def decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def gauss(x, h, mu, w, bg):
    return h * jnp.exp(-((x - mu) / w) ** 2) + bg


def sigmoid(x, top, x0, k):
    return top / (1 + jnp.exp(-k * (x - x0)))


def plane_decay(X, a, b, c):
    return a * jnp.exp(-b * X[0]) + c * X[1]


def _np(model):
    """The jnp model as a float64 NumPy function, for scipy references."""
    def f(x, *p):
        with x64():
            return np.asarray(model(np.asarray(x), *p), dtype=float)

    return f


CASES = {
    "decay": (decay, [1.0, 1.0, 0.0], lambda x: 2.5 * np.exp(-1.3 * x) + 0.5, (0, 4)),
    "gauss": (gauss, [1.0, 0.0, 1.0, 0.0], lambda x: 3 * np.exp(-((x - 0.4) / 1.2) ** 2) + 0.3,
              (-4, 4)),
    "sigmoid": (sigmoid, [1.0, 0.0, 1.0], lambda x: 2.0 / (1 + np.exp(-1.7 * (x - 0.5))),
                (-4, 4)),
}


def _data(name, m=200, seed=0):
    model, p0, truth, (lo, hi) = CASES[name]
    rng = np.random.default_rng(seed)
    x = np.linspace(lo, hi, m)
    return model, p0, x, truth(x) + 0.02 * rng.normal(size=m)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
def test_estimator_matches_curve_fit_and_scipy(name, method):
    model, p0, x, y = _data(name)
    reg = CurveFitRegressor(model, p0=p0, method=method).fit(x[:, None], y)
    popt, pcov = curve_fit(model, x, y, p0=p0, method=method)
    ref, ref_cov = scipy_curve_fit(_np(model), x, y, p0=p0, method=method, ftol=1e-14,
                                   xtol=1e-14, gtol=1e-14)
    np.testing.assert_allclose(reg.params_, popt, rtol=1e-12)
    np.testing.assert_allclose(reg.params_, ref, rtol=1e-6)
    np.testing.assert_allclose(reg.pcov_, pcov, rtol=1e-10)
    np.testing.assert_allclose(reg.perr_, np.sqrt(np.diag(ref_cov)), rtol=1e-3)
    assert reg.param_names_ == tuple(model.__code__.co_varnames[1:len(p0) + 1])
    assert reg.predict(x[:, None]).shape == (x.size,)
    assert reg.score(x[:, None], y) > 0.95


def test_two_feature_model_receives_k_by_m():
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 2, size=(300, 2))
    y = 1.5 * np.exp(-0.7 * X[:, 0]) + 0.4 * X[:, 1] + 0.01 * rng.normal(size=300)
    reg = CurveFitRegressor(plane_decay, p0=[1, 1, 1]).fit(X, y)
    popt = curve_fit(plane_decay, X.T, y, p0=[1, 1, 1])[0]
    ref = scipy_curve_fit(_np(plane_decay), X.T, y, p0=[1, 1, 1], ftol=1e-14, xtol=1e-14)[0]
    np.testing.assert_allclose(reg.params_, popt, rtol=1e-12)
    np.testing.assert_allclose(reg.params_, ref, rtol=1e-6)
    assert reg.n_features_in_ == 2
    assert reg.param_names_ == ("a", "b", "c")
    assert reg.predict(X[:7]).shape == (7,)


def test_model_sees_scipy_xdata_convention():
    # One column: a 1-D x of length M; k columns: a (k, M) array, at fit and
    # at predict (shapes of traced calls may be padded along M).
    seen = []

    def one(x, a, b):
        seen.append(np.shape(x))
        return a * x + b

    def two(x, a, b):
        seen.append(np.shape(x))
        return a * x[0] + b * x[1]

    X = np.random.default_rng(5).uniform(size=(40, 2))
    CurveFitRegressor(one, p0=[1, 1]).fit(X[:, :1], X[:, 0]).predict(X[:3, :1])
    assert seen and all(len(s) == 1 for s in seen)
    assert seen[-1] == (3,)
    seen.clear()
    CurveFitRegressor(two, p0=[1, 1]).fit(X, X.sum(axis=1)).predict(X[:3])
    assert seen and all(len(s) == 2 and s[0] == 2 for s in seen)
    assert seen[-1] == (2, 3)


def test_bounds_match_curve_fit_and_scipy():
    model, p0, x, y = _data("sigmoid")
    bounds = ([0.0, 0.6, 0.0], [1.9, 2.0, 10.0])  # the optimum presses on two bounds
    reg = CurveFitRegressor(model, p0=[1.0, 1.0, 1.0], bounds=bounds).fit(x[:, None], y)
    popt = curve_fit(model, x, y, p0=[1.0, 1.0, 1.0], bounds=bounds)[0]
    ref = scipy_curve_fit(_np(model), x, y, p0=[1.0, 1.0, 1.0], bounds=bounds, ftol=1e-14,
                          xtol=1e-14, gtol=1e-14)[0]
    np.testing.assert_allclose(reg.params_, popt, rtol=1e-12)
    np.testing.assert_allclose(reg.params_, ref, rtol=1e-6)
    assert reg.params_[0] == pytest.approx(1.9) and reg.params_[1] == pytest.approx(0.6)


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan"])
def test_robust_losses_and_bounds(loss):
    model, p0, x, y = _data("decay")
    y = y.copy()
    y[::17] += 2.0
    kw = dict(p0=p0, method="trf", loss=loss, f_scale=0.1, bounds=([0, 0, -1], [5, 5, 1]))
    reg = CurveFitRegressor(model, ftol=1e-12, xtol=1e-12, gtol=1e-12, **kw).fit(x[:, None], y)
    popt = curve_fit(model, x, y, ftol=1e-12, xtol=1e-12, gtol=1e-12, **kw)[0]
    ref = scipy_curve_fit(_np(model), x, y, ftol=1e-12, xtol=1e-12, gtol=1e-12, **kw)[0]
    np.testing.assert_allclose(reg.params_, popt, rtol=1e-12)
    np.testing.assert_allclose(reg.params_, ref, rtol=1e-6)


def test_sample_weight_is_scipy_sigma():
    model, p0, x, y = _data("gauss")
    w = np.random.default_rng(2).uniform(0.2, 3.0, x.size)
    reg = CurveFitRegressor(model, p0=p0).fit(x[:, None], y, sample_weight=w)
    popt, pcov = curve_fit(model, x, y, p0=p0, sigma=1 / np.sqrt(w))
    ref, ref_cov = scipy_curve_fit(_np(model), x, y, p0=p0, sigma=1 / np.sqrt(w),
                                   ftol=1e-14, xtol=1e-14)
    # Weights enter through sample_weight here and sigma there: agreement to
    # the solver's tolerances, not bit for bit.
    np.testing.assert_allclose(reg.params_, popt, rtol=1e-8)
    np.testing.assert_allclose(reg.pcov_, pcov, rtol=1e-6)
    np.testing.assert_allclose(reg.params_, ref, rtol=1e-6)
    np.testing.assert_allclose(reg.pcov_, ref_cov, rtol=1e-3)


def test_integer_sample_weight_is_repetition():
    # scikit-learn's own check of this property is an expected failure (it
    # builds an underdetermined problem, see test_estimator_checks.py), so it
    # is checked here on a well-posed one: zero weight drops a sample, weight
    # k repeats it k times.
    model, p0, x, y = _data("decay", m=60)
    w = np.random.default_rng(6).integers(0, 4, size=x.size)
    weighted = CurveFitRegressor(model, p0=p0).fit(x[:, None], y, sample_weight=w)
    repeated = CurveFitRegressor(model, p0=p0).fit(np.repeat(x, w)[:, None], np.repeat(y, w))
    np.testing.assert_allclose(weighted.params_, repeated.params_, rtol=1e-8)
    np.testing.assert_allclose(weighted.cost_, repeated.cost_, rtol=1e-8)


def test_default_model_is_linear():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(100, 3))
    y = 0.5 + X @ [1.0, -2.0, 3.0]
    reg = CurveFitRegressor().fit(X, y)
    np.testing.assert_allclose(reg.params_, [0.5, 1.0, -2.0, 3.0], atol=1e-10)
    assert reg.param_names_ == ("intercept", "coef_0", "coef_1", "coef_2")


def test_score_is_r2():
    model, p0, x, y = _data("sigmoid")
    reg = CurveFitRegressor(model, p0=p0).fit(x[:, None], y)
    pred = reg.predict(x[:, None])
    assert pred.dtype == np.float64 and pred.shape == (x.size,)
    assert reg.score(x[:, None], y) == pytest.approx(r2_score(y, pred))


def test_pipeline_with_scaler_and_linear_model():
    # Standardising X only reparametrises a linear model: same predictions.
    rng = np.random.default_rng(7)
    X = rng.normal(loc=[10.0, -3.0], scale=[5.0, 0.1], size=(80, 2))
    y = 1.0 + X @ [0.5, 4.0] + 0.01 * rng.normal(size=80)
    pipe = make_pipeline(StandardScaler(), CurveFitRegressor()).fit(X, y)
    plain = CurveFitRegressor().fit(X, y)
    np.testing.assert_allclose(pipe.predict(X), plain.predict(X), rtol=1e-9)
    assert pipe[-1].param_names_ == ("intercept", "coef_0", "coef_1")


def test_pipeline_cross_val_and_grid_search():
    model, p0, x, y = _data("gauss", m=300)
    X = x[:, None]
    pipe = make_pipeline(FunctionTransformer(lambda z: z * 1.0),
                         CurveFitRegressor(model, p0=p0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.9)
    # 'lm' supports only the linear loss, hence two sub-grids.
    grid = [{"method": ["lm"], "ftol": [1e-8, 1e-10]},
            {"method": ["trf", "dogbox"], "loss": ["linear", "soft_l1"],
             "f_scale": [0.5, 1.0], "ftol": [1e-8, 1e-10]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no failed fits, no convergence warnings
        search = GridSearchCV(CurveFitRegressor(model, p0=p0), grid, cv=3).fit(X, y)
    assert len(search.cv_results_["params"]) == 18
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    best = search.best_estimator_
    assert {k: best.get_params()[k] for k in search.best_params_} == search.best_params_
    direct = CurveFitRegressor(model, p0=p0, **search.best_params_).fit(X, y)
    np.testing.assert_allclose(best.params_, direct.params_, rtol=1e-12)
    assert best.score(X, y) > 0.95


@pytest.mark.slow
def test_parallel_cross_val_with_lambda_model():
    # joblib's process-based backend serialises the lambda with cloudpickle.
    x = np.linspace(0, 4, 90)
    y = 2.0 * np.exp(-0.5 * x) + 0.01 * np.sin(7 * x)
    reg = CurveFitRegressor(lambda x, a, b: a * jnp.exp(-b * x), p0=[1.0, 1.0])
    scores = cross_val_score(reg, x[:, None], y, cv=3, n_jobs=2)
    np.testing.assert_allclose(scores, cross_val_score(reg, x[:, None], y, cv=3), rtol=1e-12)
    assert np.all(scores > 0.95)


def test_pickle_and_clone():
    model, p0, x, y = _data("decay")
    reg = CurveFitRegressor(decay, p0=p0).fit(x[:, None], y)
    again = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(x[:, None]), reg.predict(x[:, None]))
    assert again.param_names_ == reg.param_names_
    np.testing.assert_array_equal(again.pcov_, reg.pcov_)
    fresh = clone(reg)
    assert not hasattr(fresh, "params_") and fresh.get_params()["p0"] == p0
    assert fresh.model is decay
    np.testing.assert_array_equal(fresh.fit(x[:, None], y).params_, reg.params_)


def test_lambda_model_clones_and_cloudpickles():
    x = np.linspace(0, 3, 50)
    reg = CurveFitRegressor(lambda x, a, b: a * jnp.exp(-b * x), p0=[1.0, 1.0])
    reg.fit(x[:, None], 2.0 * np.exp(-0.7 * x))
    assert reg.param_names_ == ("a", "b")
    assert clone(reg).model is reg.model
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(reg)
    cloudpickle = pytest.importorskip("cloudpickle")
    again = pickle.loads(cloudpickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(x[:, None]), reg.predict(x[:, None]))


@pytest.mark.parametrize("max_nfev", [1, 2])
def test_convergence_warning_when_budget_runs_out(max_nfev):
    model, p0, x, y = _data("gauss")
    with pytest.warns(ConvergenceWarning, match="did not converge") as rec:
        reg = CurveFitRegressor(model, p0=p0, max_nfev=max_nfev).fit(x[:, None], y)
    assert reg.status_ == 0 and reg.nfev_ == max_nfev
    assert "function evaluations" in reg.message_
    # The warning points at the caller of fit, not into scikit-learn.
    assert [w.filename for w in rec if w.category is ConvergenceWarning] == [__file__]


def test_errors_name_the_argument():
    model, p0, x, y = _data("decay")
    X = x[:, None]
    with pytest.raises(ValueError, match="sample_weight"):
        CurveFitRegressor(model, p0=p0).fit(X, y, sample_weight=-np.ones_like(y))
    with pytest.raises(ValueError, match="sample_weight"):
        CurveFitRegressor(model, p0=p0).fit(X, y, sample_weight=np.zeros_like(y))
    with pytest.raises(ValueError, match="sample_weight"):
        CurveFitRegressor(model, p0=p0).fit(X, y, sample_weight=np.ones(y.size - 1))
    with pytest.raises(NotFittedError):
        CurveFitRegressor(model, p0=p0).predict(X)
    reg = CurveFitRegressor(model, p0=p0).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        reg.predict(np.ones((3, 2)))
    with pytest.raises(ValueError, match="method"):
        CurveFitRegressor(model, p0=p0, method="nope").fit(X, y)
    with pytest.raises(ValueError, match="f_scale"):
        CurveFitRegressor(model, p0=p0, f_scale=0.0).fit(X, y)
    with pytest.raises(ValueError, match="loss"):
        CurveFitRegressor(model, p0=p0, method="lm", loss="huber").fit(X, y)


def test_dataframe_sets_feature_names():
    pd = pytest.importorskip("pandas")
    model, p0, x, y = _data("decay")
    df = pd.DataFrame({"t": x})
    reg = CurveFitRegressor(model, p0=p0).fit(df, pd.Series(y))
    assert list(reg.feature_names_in_) == ["t"]
    with pytest.warns(UserWarning, match="feature names"):
        from_array = reg.predict(x[:, None])
    np.testing.assert_array_equal(reg.predict(df), from_array)
    with pytest.raises(ValueError, match="feature names"):
        reg.predict(pd.DataFrame({"s": x}))
    X2 = pd.DataFrame({"u": x, "v": x[::-1]})
    reg2 = CurveFitRegressor(plane_decay, p0=[1, 1, 1]).fit(X2, y)
    assert list(reg2.feature_names_in_) == ["u", "v"] and reg2.n_features_in_ == 2


def test_two_dimensional_target_fits_one_curve_per_column():
    rng = np.random.default_rng(4)
    x = np.linspace(0, 4, 150)
    truth = np.array([[2.0, 1.0, 0.1], [1.0, 0.5, -0.2], [3.0, 2.0, 0.0]])
    Y = np.stack([decay(x, *t) for t in truth], axis=1) + 0.01 * rng.normal(size=(150, 3))
    Y[100:, 1] = np.nan  # a shorter column
    reg = CurveFitRegressor(decay, p0=[1, 1, 0]).fit(x[:, None], Y)
    assert reg.params_.shape == (3, 3) and reg.pcov_.shape == (3, 3, 3)
    assert reg.status_.shape == (3,) and reg.n_iter_.shape == (3,)
    for j in range(3):
        ok = ~np.isnan(Y[:, j])
        ref = curve_fit(decay, x[ok], Y[ok, j], p0=[1, 1, 0])[0]
        np.testing.assert_allclose(reg.params_[j], ref, rtol=1e-8)
    assert reg.predict(x[:, None]).shape == (150, 3)


def test_bounds_object_and_linear_model_p0_length():
    from scipy.optimize import Bounds

    x = np.linspace(0, 4, 60)
    y = decay(x, 2.0, 1.0, 0.1) + 0.01 * np.sin(9 * x)
    tup = CurveFitRegressor(decay, p0=[1, 1, 0], bounds=([0, 0, -1], [5, 5, 1])).fit(x[:, None], y)
    obj = CurveFitRegressor(decay, p0=[1, 1, 0],
                            bounds=Bounds([0, 0, -1], [5, 5, 1])).fit(x[:, None], y)
    np.testing.assert_array_equal(obj.params_, tup.params_)
    with pytest.raises(ValueError, match="p0.*linear model"):
        CurveFitRegressor(p0=[1.0, 2.0]).fit(np.c_[x, x ** 2], y)


def test_column_vector_target_keeps_its_shape():
    # As scikit-learn's multi-output regressors (LinearRegression): y of shape
    # (n, 1) is one target column, predictions have shape (n, 1), no warning.
    x = np.linspace(0, 4, 60)
    y = decay(x, 2.0, 1.0, 0.1) + 0.01 * np.sin(9 * x)
    flat = CurveFitRegressor(decay, p0=[1, 1, 0]).fit(x[:, None], y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col = CurveFitRegressor(decay, p0=[1, 1, 0]).fit(x[:, None], y[:, None])
    assert col.params_.shape == (1, 3) and col.pcov_.shape == (1, 3, 3)
    np.testing.assert_allclose(col.params_[0], flat.params_, rtol=1e-8)
    assert col.predict(x[:7, None]).shape == (7, 1)


def test_two_dimensional_target_takes_per_column_sample_weight():
    """A 2-D ``sample_weight`` weights each column on its own; a zero leaves a
    point out of that column's fit only (scipy on the column's kept points,
    with the weights as 1 / sigma**2, is the reference)."""
    rng = np.random.default_rng(5)
    x = np.linspace(0, 4, 120)
    truth = np.array([[2.0, 1.0, 0.1], [1.0, 0.5, -0.2], [3.0, 2.0, 0.0]])
    Y = np.stack([decay(x, *t) for t in truth], axis=1) + 0.02 * rng.normal(size=(120, 3))
    sw = rng.uniform(0.5, 2.0, size=Y.shape)
    sw[:50, 0] = 0.0
    sw[::3, 2] = 0.0
    reg = CurveFitRegressor(decay, p0=[1, 1, 0]).fit(x[:, None], Y, sample_weight=sw)
    for j in range(3):
        ok = sw[:, j] > 0
        ref, ref_cov = scipy_curve_fit(lambda t, a, b, c: a * np.exp(-b * t) + c, x[ok],
                                       Y[ok, j], p0=[1, 1, 0], sigma=1 / np.sqrt(sw[ok, j]),
                                       ftol=1e-14, xtol=1e-14, gtol=1e-14)
        np.testing.assert_allclose(reg.params_[j], ref, rtol=1e-6)
        np.testing.assert_allclose(reg.pcov_[j], ref_cov, rtol=1e-5,
                                   atol=1e-6 * np.abs(ref_cov).max())
    # A 1-D weight still applies to every column.
    one = CurveFitRegressor(decay, p0=[1, 1, 0]).fit(x[:, None], Y, sample_weight=sw[:, 1])
    both = CurveFitRegressor(decay, p0=[1, 1, 0]).fit(
        x[:, None], Y, sample_weight=np.repeat(sw[:, 1:2], 3, axis=1))
    np.testing.assert_allclose(one.params_, both.params_, rtol=1e-12)
    with pytest.raises(ValueError, match="sample_weight.*shape"):
        reg.fit(x[:, None], Y, sample_weight=sw[:, :2])
    with pytest.raises(ValueError, match="sample_weight.*negative"):
        reg.fit(x[:, None], Y, sample_weight=-sw)
    with pytest.raises(ValueError, match="sample_weight"):
        reg.fit(x[:, None], Y[:, 0], sample_weight=sw)  # 1-D y: one weight per sample


def test_two_dimensional_target_isolates_failures():
    x = np.linspace(0, 4, 50)
    Y = np.stack([decay(x, 2.0, 1.0, 0.0), np.full(50, np.nan)], axis=1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        reg = CurveFitRegressor(decay, p0=[1, 1, 0]).fit(x[:, None], np.asarray(Y))
    assert sum(issubclass(w.category, ConvergenceWarning) for w in rec) == 1
    assert np.all(np.isnan(reg.params_[1])) and reg.status_[1] < 0
    np.testing.assert_allclose(reg.params_[0], [2.0, 1.0, 0.0], atol=1e-8)


# --------------------------------------------------------------------------
# Sample weights are frequencies for the robust losses too
# --------------------------------------------------------------------------

ROBUST = ("soft_l1", "huber", "cauchy", "arctan")
TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)


def _robust_data(m=60, seed=11, truth=(2.5, 1.3, 0.5)):
    """Decay data with outliers (so that the robust losses act) and integer
    weights 0..3, zero for a few points."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 4, m)
    y = truth[0] * np.exp(-truth[1] * x) + truth[2] + 0.002 * rng.normal(size=m)
    y[::10] += 0.3
    w = rng.integers(0, 4, size=m)
    w[[0, 9, 30]] = 0
    return x, y, w


def _assert_repetition(weighted, repeated, w, n, cov_rtol=1e-6):
    """``weighted`` (integer weights ``w``) and ``repeated`` (rows repeated)
    give the same fit; their covariances differ only by the degrees of
    freedom, which count the points of non-zero weight (as for the linear
    loss): pcov * (m - n) is the same."""
    np.testing.assert_allclose(weighted.params_, repeated.params_, rtol=1e-8)
    np.testing.assert_allclose(weighted.cost_, repeated.cost_, rtol=1e-8)
    nonzero, total = np.count_nonzero(w), np.sum(w)
    np.testing.assert_allclose(weighted.pcov_ * (nonzero - n), repeated.pcov_ * (total - n),
                               rtol=cov_rtol)


@pytest.mark.parametrize("loss", ROBUST)
def test_integer_sample_weight_is_repetition_for_robust_losses(loss):
    """With a robust loss a weight k multiplies the point's loss
    ``f_scale**2 rho(r**2 / f_scale**2)``: the fit equals the fit on the rows
    repeated k times, and a zero weight equals the row removed."""
    x, y, w = _robust_data()
    kw = dict(p0=[2.0, 1.0, 0.5], method="trf", loss=loss, f_scale=0.004, **TIGHT)
    weighted = CurveFitRegressor(decay, **kw).fit(x[:, None], y, sample_weight=w)
    repeated = CurveFitRegressor(decay, **kw).fit(np.repeat(x, w)[:, None], np.repeat(y, w))
    _assert_repetition(weighted, repeated, w, 3)
    keep = w > 0
    removed = CurveFitRegressor(decay, **kw).fit(x[keep, None], y[keep],
                                                 sample_weight=w[keep])
    np.testing.assert_allclose(weighted.params_, removed.params_, rtol=1e-8)
    np.testing.assert_allclose(weighted.pcov_, removed.pcov_, rtol=1e-6)
    # dogbox, with bounds, sees the same objective.
    kw = dict(kw, method="dogbox", bounds=([0, 0, -1], [5, 5, 1]))
    weighted = CurveFitRegressor(decay, **kw).fit(x[:, None], y, sample_weight=w)
    repeated = CurveFitRegressor(decay, **kw).fit(np.repeat(x, w)[:, None], np.repeat(y, w))
    _assert_repetition(weighted, repeated, w, 3)


@pytest.mark.parametrize("loss", ROBUST)
def test_two_dimensional_target_robust_sample_weight_is_repetition(loss):
    """Per-column integer weights of a 2-D target with a robust loss: each
    column's fit equals the (batched) fit of that column on its rows
    repeated, and a zero weight equals the row removed from that column."""
    data = [_robust_data(seed=s, truth=t) for s, t in
            ((1, (2.5, 1.3, 0.5)), (2, (1.5, 0.6, -0.8)), (3, (3.0, 2.0, 1.0)))]
    x = data[0][0]
    Y = np.stack([d[1] for d in data], axis=1)
    SW = np.stack([d[2] for d in data], axis=1)
    kw = dict(p0=[2.0, 1.0, 0.5], method="trf", loss=loss, f_scale=0.004, **TIGHT)
    reg = CurveFitRegressor(decay, **kw).fit(x[:, None], Y, sample_weight=SW)
    assert np.all(reg.status_ > 0)
    for j in range(3):
        w = SW[:, j]
        rep = CurveFitRegressor(decay, **kw).fit(np.repeat(x, w)[:, None],
                                                 np.repeat(Y[:, j], w)[:, None])
        np.testing.assert_allclose(reg.params_[j], rep.params_[0], rtol=1e-8)
        np.testing.assert_allclose(reg.cost_[j], rep.cost_[0], rtol=1e-8)
        nonzero, total = np.count_nonzero(w), np.sum(w)
        np.testing.assert_allclose(reg.pcov_[j] * (nonzero - 3), rep.pcov_[0] * (total - 3),
                                   rtol=1e-6)
        keep = w > 0
        removed = CurveFitRegressor(decay, **kw).fit(x[keep, None], Y[keep, j:j + 1],
                                                     sample_weight=w[keep, None])
        np.testing.assert_allclose(reg.params_[j], removed.params_[0], rtol=1e-8)
        np.testing.assert_allclose(reg.pcov_[j], removed.pcov_[0], rtol=1e-6)


@pytest.mark.parametrize("loss", ROBUST)
def test_robust_sample_weight_with_sigma_is_repetition(loss):
    """``sigma`` keeps scipy's meaning (inside rho) while sample weights are
    frequencies: with both, weights equal repeated rows (each repeated row
    keeps its sigma), in single and batched fits."""
    from sknlsq._batch import fit_curves
    from sknlsq._fit import fit_curve

    x, y, w = _robust_data()
    sigma = 0.5 + 0.5 * np.random.default_rng(4).uniform(size=x.size)
    kw = dict(p0=[2.0, 1.0, 0.5], method="trf", loss=loss, f_scale=0.004, **TIGHT)
    weighted = fit_curve(decay, x, y, sigma=sigma, sample_weight=w, **kw)
    repeated = fit_curve(decay, np.repeat(x, w), np.repeat(y, w), sigma=np.repeat(sigma, w),
                         **kw)
    np.testing.assert_allclose(weighted.params, repeated.params, rtol=1e-8)
    np.testing.assert_allclose(weighted.cost, repeated.cost, rtol=1e-8)
    batched = fit_curves(decay, x, np.stack([y, y]), sigma=sigma, sample_weight=w, **kw)
    batched_rep = fit_curves(decay, np.repeat(x, w), np.repeat(y, w)[None],
                             sigma=np.repeat(sigma, w), **kw)
    np.testing.assert_allclose(batched.params[0], batched_rep.params[0], rtol=1e-8)
    np.testing.assert_allclose(batched.cost[0], batched_rep.cost[0], rtol=1e-8)


def _plane(x, a, b, c):
    return a + b * x[0] + c * x[1]


@pytest.mark.parametrize("loss", ROBUST)
def test_sklearn_sample_weight_equivalence_check_with_robust_losses(loss):
    """scikit-learn's own check (weights vs repeated rows, zero weights vs
    removed rows) with a robust loss and a model of three parameters (the
    default linear model has too many for the check's data, see
    test_estimator_checks.py)."""
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    est = CurveFitRegressor(_plane, p0=[0.0, 0.0, 0.0], loss=loss, method="trf", **TIGHT)
    check_sample_weight_equivalence_on_dense_data("CurveFitRegressor", est)
