"""``sknlsq.curve_fit`` against ``scipy.optimize.curve_fit``.

scipy is the reference answer. It is run on the very same ``jax.numpy`` model
(evaluated eagerly in float64 and handed back as NumPy), given the model's
exact Jacobian and tight tolerances, so the reference is the converged
optimum of the same objective with scipy's covariance conventions. sknlsq,
called with its defaults, must land within ``rtol=1e-6`` of that ``popt``;
``pcov`` depends on the Jacobian at the solution, so it is compared more
loosely (``1e-4``, relative to the parameters' standard deviations).

Every problem uses seeded data with ~200 points and is well conditioned.
"""

from __future__ import annotations

import functools
import os
import re
import time
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from scipy.optimize import Bounds, OptimizeWarning
from scipy.optimize import curve_fit as scipy_curve_fit

from sknlsq import curve_fit

M = 200
FD_WARNING = "(?i)finite.difference"

# --------------------------------------------------------------------------
# Models (jax.numpy) and problems
# --------------------------------------------------------------------------


def exp_decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def gaussian(x, a, mu, s, c):
    return a * jnp.exp(-((x - mu) ** 2) / (2 * s**2)) + c


def sigmoid(x, L, k, x0, b):
    return L / (1 + jnp.exp(-k * (x - x0))) + b


def rational(x, a, b, c):
    return (a + b * x) / (1 + c * x)


def plane(X, a, b, c):
    """Two independent variables, scipy's convention: ``X`` has shape (2, M)."""
    return a * jnp.exp(-b * X[0]) + c * jnp.sin(X[1])


@dataclass(frozen=True)
class Problem:
    model: object
    xdata: np.ndarray
    ydata: np.ndarray
    p0: np.ndarray
    truth: np.ndarray
    bounds: tuple  # loose bounds, inactive at the solution
    noise: float


def _x64():
    """Scoped float64 for evaluating the jnp models in the scipy reference."""
    return jax.enable_x64(True)


def _eval(model, xdata, params):
    with _x64():
        return np.asarray(model(jnp.asarray(xdata), *params), dtype=np.float64)


_SPECS = {
    # name: (model, seed, xdata maker, truth, p0, lower, upper, noise)
    "exp_decay": (exp_decay, 1, lambda r: np.linspace(0, 4, M),
                  [2.5, 1.3, 0.5], [1.0, 1.0, 1.0], [0, 0, -5], [10, 10, 5], 0.05),
    "gaussian": (gaussian, 2, lambda r: np.linspace(-5, 5, M),
                 [3.0, 0.4, 1.2, 0.3], [2.0, 0.0, 1.0, 0.0],
                 [0, -3, 0.1, -2], [10, 3, 5, 2], 0.05),
    "sigmoid": (sigmoid, 3, lambda r: np.linspace(-6, 6, M),
                [2.0, 1.5, 0.5, 0.2], [1.0, 1.0, 0.0, 0.0],
                [0, 0, -3, -2], [10, 10, 3, 2], 0.03),
    "rational": (rational, 4, lambda r: np.linspace(0, 5, M),
                 [1.0, 3.0, 0.7], [1.0, 1.0, 1.0], [0, 0, 0], [10, 10, 10], 0.02),
    "plane": (plane, 5, lambda r: np.stack([r.uniform(0, 3, M), r.uniform(-3, 3, M)]),
              [2.0, 0.8, 1.5], [1.0, 1.0, 1.0], [0, 0, 0], [10, 5, 5], 0.05),
}
PROBLEMS = list(_SPECS)


@functools.lru_cache(maxsize=None)
def problem(name):
    model, seed, make_x, truth, p0, lb, ub, noise = _SPECS[name]
    rng = np.random.default_rng(seed)
    xdata = make_x(rng)
    ydata = _eval(model, xdata, truth) + noise * rng.normal(size=M)
    for a in (xdata, ydata):
        a.setflags(write=False)
    return Problem(model, xdata, ydata, np.asarray(p0, float), np.asarray(truth, float),
                   (np.asarray(lb, float), np.asarray(ub, float)), noise)


def sigma_for(pb, kind):
    """1-sigma errors (1-D), a scalar, or a positive definite covariance (2-D)."""
    s = pb.noise * np.linspace(0.5, 1.5, M)
    if kind == "1d":
        return s
    if kind == "scalar":
        return 2.0 * pb.noise
    if kind == "2d":
        idx = np.arange(M)
        return np.outer(s, s) * 0.6 ** np.abs(idx[:, None] - idx[None, :])
    raise AssertionError(kind)


def with_outliers(pb):
    y = np.array(pb.ydata)
    y[::17] += 10 * pb.noise * np.where(np.arange(y[::17].size) % 2, 1.0, -1.0)
    return y


# --------------------------------------------------------------------------
# The scipy reference and the comparison
# --------------------------------------------------------------------------


def as_numpy_model(model):
    @functools.wraps(model)  # keeps the signature, for p0=None
    def f(x, *p):
        return np.asarray(model(x, *p), dtype=np.float64)

    return f


def exact_jac(model, scale=1.0):
    """The model's Jacobian, shape (M, n) (scipy's ``jac`` convention)."""

    def jac(x, *p):
        argnums = tuple(range(1, len(p) + 1))
        cols = jax.jacfwd(model, argnums=argnums)(jnp.asarray(x), *map(jnp.asarray, p))
        return scale * np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=-1)

    return jac


def _uses_lm(kwargs):
    method = kwargs.get("method")
    if method is not None:
        return method == "lm"
    bounds = kwargs.get("bounds", (-np.inf, np.inf))
    if isinstance(bounds, Bounds):
        bounds = (bounds.lb, bounds.ub)
    return not any(np.any(np.isfinite(np.asarray(b, float))) for b in bounds)


def reference(model, xdata, ydata, p0, *, jac=None, numpy_model=False, **kwargs):
    """scipy.optimize.curve_fit on the same model, converged tightly."""
    if _uses_lm(kwargs):
        tight = dict(ftol=1e-12, xtol=1e-12)
    else:
        tight = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)
    f = model if numpy_model else as_numpy_model(model)
    if jac is None:
        jac = exact_jac(model)
    with _x64():
        return scipy_curve_fit(f, xdata, ydata, p0=p0, jac=jac, **tight, **kwargs)


def assert_fit_matches(got, ref, rtol_popt=1e-6, rtol_pcov=1e-4):
    popt, pcov = got[0], got[1]
    ref_popt, ref_pcov = ref[0], ref[1]
    # Drop-in: plain float64 NumPy arrays, as scipy returns.
    assert type(popt) is np.ndarray and type(pcov) is np.ndarray
    assert popt.dtype == np.float64 and pcov.dtype == np.float64
    assert popt.shape == ref_popt.shape and pcov.shape == ref_pcov.shape
    np.testing.assert_allclose(popt, ref_popt, rtol=rtol_popt, atol=1e-12)
    assert np.all(np.isfinite(pcov)), pcov
    # Compare in units of the reference standard deviations: the diagonal to
    # rtol, the off-diagonal to rtol of sqrt(C_ii C_jj).
    d = np.sqrt(np.diag(ref_pcov))
    scale = np.outer(d, d)
    np.testing.assert_allclose(pcov / scale, ref_pcov / scale, rtol=rtol_pcov, atol=rtol_pcov)


# --------------------------------------------------------------------------
# Agreement on well-conditioned problems
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_unbounded(name, method):
    pb = problem(name)
    got = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, method=method)
    ref = reference(pb.model, pb.xdata, pb.ydata, pb.p0, method=method)
    np.testing.assert_allclose(ref[0], pb.truth, rtol=0.05)  # the problem is sane
    assert_fit_matches(got, ref)


@pytest.mark.parametrize("method", [None, "trf", "dogbox"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_inactive_bounds(name, method):
    pb = problem(name)
    got = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, bounds=pb.bounds, method=method)
    ref = reference(pb.model, pb.xdata, pb.ydata, pb.p0, bounds=pb.bounds, method=method)
    assert_fit_matches(got, ref)


@pytest.mark.parametrize("method", [None, "trf", "dogbox"])
def test_active_bound(method):
    pb = problem("exp_decay")
    bounds = ([0, 0, -5], [10, 10, 0.3])  # the offset (truth 0.5) is held at 0.3
    got = curve_fit(pb.model, pb.xdata, pb.ydata, p0=[1.0, 1.0, 0.0], bounds=bounds,
                    method=method)
    ref = reference(pb.model, pb.xdata, pb.ydata, [1.0, 1.0, 0.0], bounds=bounds,
                    method=method)
    np.testing.assert_allclose(ref[0][2], 0.3, rtol=1e-6)
    assert np.all(got[0] <= np.asarray(bounds[1])) and np.all(got[0] >= np.asarray(bounds[0]))
    assert_fit_matches(got, ref, rtol_popt=1e-5, rtol_pcov=1e-3)


def test_bounds_object_same_as_tuple():
    pb = problem("gaussian")
    got = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, bounds=Bounds(*pb.bounds))
    ref = reference(pb.model, pb.xdata, pb.ydata, pb.p0, bounds=pb.bounds)
    assert_fit_matches(got, ref)


@pytest.mark.parametrize("absolute_sigma", [False, True])
@pytest.mark.parametrize("kind", ["1d", "scalar", "2d"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_sigma(name, kind, absolute_sigma):
    pb = problem(name)
    sigma = sigma_for(pb, kind)
    got = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, sigma=sigma,
                    absolute_sigma=absolute_sigma)
    # scipy itself breaks on a scalar sigma combined with a callable jac
    # ("expected square matrix"), so its reference gets the equivalent vector.
    ref_sigma = np.full(M, sigma) if kind == "scalar" else sigma
    ref = reference(pb.model, pb.xdata, pb.ydata, pb.p0, sigma=ref_sigma,
                    absolute_sigma=absolute_sigma)
    assert_fit_matches(got, ref)


@pytest.mark.parametrize("absolute_sigma", [False, True])
@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("method", ["trf", "dogbox"])
def test_sigma_bounded_methods(method, kind, absolute_sigma):
    pb = problem("exp_decay")
    sigma = sigma_for(pb, kind)
    kw = dict(p0=pb.p0, sigma=sigma, absolute_sigma=absolute_sigma, bounds=pb.bounds,
              method=method)
    got = curve_fit(pb.model, pb.xdata, pb.ydata, **kw)
    ref = reference(pb.model, pb.xdata, pb.ydata, **kw)
    assert_fit_matches(got, ref)


def test_absolute_sigma_scales_covariance_like_scipy():
    # absolute_sigma=False rescales pcov by the reduced chi-square; True does not.
    pb = problem("exp_decay")
    sigma = sigma_for(pb, "1d")
    rel = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, sigma=sigma)
    ab = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, sigma=sigma, absolute_sigma=True)
    np.testing.assert_allclose(rel[0], ab[0], rtol=1e-12)
    r = (_eval(pb.model, pb.xdata, ab[0]) - pb.ydata) / sigma
    chi2_red = np.sum(r**2) / (M - 3)
    np.testing.assert_allclose(rel[1], ab[1] * chi2_red, rtol=1e-5)


@pytest.mark.parametrize("loss", ["linear", "soft_l1", "huber", "cauchy", "arctan"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_robust_loss(name, loss):
    pb = problem(name)
    y = with_outliers(pb)
    f_scale = 2 * pb.noise
    # A robust loss converges slowly near the optimum: scipy's own defaults
    # (ftol=xtol=gtol=1e-8) stop up to ~3e-6 away from it for 'arctan'. The
    # tolerances are tightened (and so passed through as scipy kwargs) so that
    # both sides report the optimum rather than where each one stopped.
    tol = dict(ftol=1e-10, xtol=1e-10, gtol=1e-10)
    got = curve_fit(pb.model, pb.xdata, y, p0=pb.p0, method="trf", loss=loss, f_scale=f_scale,
                    **tol)
    ref = reference(pb.model, pb.xdata, y, pb.p0, method="trf", loss=loss, f_scale=f_scale)
    assert_fit_matches(got, ref)


def test_robust_loss_defaults():
    # With default tolerances a robust fit still lands near the optimum.
    pb = problem("exp_decay")
    y = with_outliers(pb)
    got = curve_fit(pb.model, pb.xdata, y, p0=pb.p0, method="trf", loss="soft_l1", f_scale=0.1)
    ref = reference(pb.model, pb.xdata, y, pb.p0, method="trf", loss="soft_l1", f_scale=0.1)
    assert_fit_matches(got, ref, rtol_popt=1e-5, rtol_pcov=1e-3)


# --------------------------------------------------------------------------
# Calling conventions
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
def test_full_output(method):
    pb = problem("exp_decay")
    sigma = sigma_for(pb, "1d")
    out = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, sigma=sigma, method=method,
                    full_output=True)
    assert isinstance(out, tuple) and len(out) == 5
    popt, pcov, infodict, mesg, ier = out
    ref = reference(pb.model, pb.xdata, pb.ydata, pb.p0, sigma=sigma, method=method,
                    full_output=True)
    assert_fit_matches(out, ref)
    assert isinstance(infodict, dict)
    assert {"nfev", "fvec"} <= set(infodict)
    assert int(infodict["nfev"]) >= 1
    # fvec: the weighted residuals (f(x, *popt) - y) / sigma at the solution.
    fvec = np.asarray(infodict["fvec"])
    ref_fvec = ref[2]["fvec"]
    assert fvec.shape == ref_fvec.shape == (M,)
    np.testing.assert_allclose(fvec, ref_fvec, rtol=1e-5, atol=1e-5 * np.abs(ref_fvec).max())
    assert isinstance(mesg, str) and mesg
    assert isinstance(ier, (int, np.integer)) and not isinstance(ier, bool)
    assert ier in (1, 2, 3, 4)
    # Without full_output: the same fit, as a 2-tuple.
    plain = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, sigma=sigma, method=method)
    assert len(plain) == 2
    np.testing.assert_allclose(plain[0], popt, rtol=1e-12)


@pytest.mark.parametrize("route", ["in memory", "in chunks"])
def test_full_output_lm_has_leastsqs_qr_factors(route, monkeypatch):
    """method='lm' full_output carries leastsq's fjac, ipvt and qtf: the same
    column order as scipy's, the same R up to row signs, and the covariance
    scipy's leastsq builds from them equals pcov (before the reduced
    chi-square scaling)."""
    if route == "in chunks":  # [J | f] over the budget: solved in chunks
        monkeypatch.setenv("SKNLSQ_JACOBIAN_BUDGET", "4096")
    rng = np.random.default_rng(11)
    x = np.linspace(0, 5, 300)
    y = 2.0 * np.exp(-1.3 * x) + 0.5 + 0.02 * rng.standard_normal(x.size)
    jmodel = lambda t, a, b, c: a * jnp.exp(-b * t) + c  # noqa: E731
    nmodel = lambda t, a, b, c: a * np.exp(-b * t) + c  # noqa: E731
    got = curve_fit(jmodel, x, y, p0=[1, 1, 0], full_output=True, method="lm")
    ref = scipy_curve_fit(nmodel, x, y, p0=[1, 1, 0], full_output=True, method="lm")
    info, rinfo = got[2], ref[2]
    n = 3
    assert info["fjac"].shape == rinfo["fjac"].shape == (n, x.size)
    assert info["ipvt"].dtype == rinfo["ipvt"].dtype
    np.testing.assert_array_equal(info["ipvt"], rinfo["ipvt"])
    r, rr = np.triu(info["fjac"].T[:n]), np.triu(rinfo["fjac"].T[:n])
    signs = np.sign(np.diag(r)) * np.sign(np.diag(rr))
    np.testing.assert_allclose(r * signs[:, None], rr, rtol=1e-5, atol=1e-6)
    # scipy's leastsq: invR[perm] = invR; cov_x = invR invR^T
    perm = info["ipvt"] - int(np.min(rinfo["ipvt"]))
    inv_r = np.linalg.inv(r)
    inv_r[perm] = inv_r.copy()
    s_sq = np.sum(info["fvec"] ** 2) / (x.size - n)
    np.testing.assert_allclose(inv_r @ inv_r.T * s_sq, got[1], rtol=1e-10)
    # qtf: Q^T fvec, so that ||fvec||^2 = ||qtf||^2 + (the rest) and R's
    # normal equations hold: R'^T qtf = P^T J^T f, ~0 at the optimum.
    assert info["qtf"].shape == (n,)
    assert np.linalg.norm(info["qtf"]) <= np.linalg.norm(info["fvec"])
    assert np.abs(info["qtf"]).max() < 1e-6 * np.linalg.norm(info["fvec"])


def test_full_output_2d_sigma_fvec():
    # With a covariance matrix, scipy's fvec is solve(L, f - y), C = L L^T.
    pb = problem("plane")
    sigma = sigma_for(pb, "2d")
    out = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, sigma=sigma, full_output=True)
    ref = reference(pb.model, pb.xdata, pb.ydata, pb.p0, sigma=sigma, full_output=True)
    assert_fit_matches(out, ref)
    ref_fvec = ref[2]["fvec"]
    np.testing.assert_allclose(np.asarray(out[2]["fvec"]), ref_fvec, rtol=1e-5,
                               atol=1e-5 * np.abs(ref_fvec).max())


def test_p0_none_uses_ones_from_signature():
    pb = problem("exp_decay")
    got = curve_fit(pb.model, pb.xdata, pb.ydata)
    ones = curve_fit(pb.model, pb.xdata, pb.ydata, p0=np.ones(3))
    assert got[0].shape == (3,)
    np.testing.assert_allclose(got[0], ones[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], ones[1], rtol=1e-10)
    assert_fit_matches(got, reference(pb.model, pb.xdata, pb.ydata, np.ones(3)))


def test_p0_none_with_bounds_starts_feasible_like_scipy():
    # scipy starts at the midpoint of two finite bounds, lb + 1 / ub - 1 for a
    # one-sided bound and 1 where unbounded.
    pb = problem("exp_decay")
    bounds = ([0, 0, -1], [10, 5, np.inf])
    expected_p0 = np.array([5.0, 2.5, 0.0])
    got = curve_fit(pb.model, pb.xdata, pb.ydata, bounds=bounds)
    explicit = curve_fit(pb.model, pb.xdata, pb.ydata, p0=expected_p0, bounds=bounds)
    np.testing.assert_allclose(got[0], explicit[0], rtol=1e-12)
    assert_fit_matches(got, reference(pb.model, pb.xdata, pb.ydata, expected_p0,
                                      bounds=bounds))


@pytest.mark.parametrize(
    "name, kind", [("exp_decay", None), ("exp_decay", "1d"), ("plane", "2d")]
)
def test_nan_policy_omit(name, kind):
    pb = problem(name)
    x = np.array(pb.xdata)
    y = np.array(pb.ydata)
    y[[5, 60]] = np.nan
    if x.ndim == 1:
        x[120] = np.nan
    else:
        x[1, 120] = np.nan  # a NaN in any row drops the whole column
    sigma = None if kind is None else sigma_for(pb, kind)
    got = curve_fit(pb.model, x, y, p0=pb.p0, sigma=sigma, nan_policy="omit")
    ref = reference(pb.model, x, y, pb.p0, sigma=sigma, nan_policy="omit")
    assert_fit_matches(got, ref)
    # ... which is the fit to the clean points alone.
    keep = ~np.isnan(y) & ~np.isnan(x).reshape(-1, M).any(axis=0)
    assert keep.sum() == M - 3
    sig_keep = None
    if kind == "1d":
        sig_keep = sigma[keep]
    elif kind == "2d":
        sig_keep = sigma[np.ix_(keep, keep)]
    clean = reference(pb.model, x[..., keep], y[keep], pb.p0, sigma=sig_keep)
    assert_fit_matches(got, clean)


@pytest.mark.parametrize("check_finite", ["default", True])
@pytest.mark.parametrize("where", ["xdata", "ydata"])
def test_check_finite_rejects_nan(where, check_finite):
    pb = problem("exp_decay")
    x, y = np.array(pb.xdata), np.array(pb.ydata)
    (x if where == "xdata" else y)[7] = np.nan
    kw = {} if check_finite == "default" else {"check_finite": True}
    with pytest.raises(ValueError):
        scipy_curve_fit(as_numpy_model(pb.model), x, y, p0=pb.p0, **kw)
    with pytest.raises(ValueError):
        curve_fit(pb.model, x, y, p0=pb.p0, **kw)


# --------------------------------------------------------------------------
# Models that are not plain jnp functions of (x, a, b, ...)
# --------------------------------------------------------------------------


def step_decay_np(x, a, b, c, d):
    """NumPy/scipy only: JAX cannot trace it."""
    return a * np.exp(-b * x) + c * scipy.special.erf(x - d)


def step_decay_np_jac(x, a, b, c, d):
    e = np.exp(-b * x)
    derf = 2 / np.sqrt(np.pi) * np.exp(-((x - d) ** 2))
    return np.stack([e, -a * x * e, scipy.special.erf(x - d), -c * derf], axis=-1)


@pytest.mark.parametrize("method", ["lm", "trf"])
def test_numpy_only_model_falls_back_to_finite_differences(method):
    rng = np.random.default_rng(11)
    x = np.linspace(0, 6, M)
    truth, p0 = [2.0, 0.7, 1.0, 3.0], [1.5, 1.0, 0.8, 2.5]
    y = step_decay_np(x, *truth) + 0.03 * rng.normal(size=M)
    with pytest.warns(UserWarning, match=FD_WARNING) as record:
        got = curve_fit(step_decay_np, x, y, p0=p0, method=method)
    fd = [w for w in record if re.search(FD_WARNING, str(w.message))]
    assert len(fd) == 1, [str(w.message) for w in record]
    others = [w for w in record if w not in fd and issubclass(w.category, UserWarning)]
    assert not others, [str(w.message) for w in others]
    ref = reference(step_decay_np, x, y, p0, jac=step_decay_np_jac, numpy_model=True,
                    method=method)
    assert_fit_matches(got, ref)


def _decay_np_checked(x, a, b, c):
    if float(np.real(b)) < -100:  # Python control flow on a value: not traceable
        raise ValueError("rate out of range")
    return a * np.exp(-b * np.asarray(x)) + c


@pytest.mark.parametrize("method", ["lm", "trf"])
def test_numpy_model_complex_step_jacobian(method):
    # jac='cs' on a model JAX cannot trace: the complex step must reach the
    # model (it returned p0 with a zero Jacobian when the values were cast to
    # float first); scipy's answer with the same scheme.
    rng = np.random.default_rng(12)
    x = np.linspace(0, 5, 80)
    y = 2 * np.exp(-0.7 * x) + 0.3 + 0.01 * rng.normal(size=x.size)
    ref = scipy_curve_fit(_decay_np_checked, x, y, p0=[1, 1, 0.1], jac="cs", method="trf",
                          ftol=1e-14, xtol=1e-14, gtol=1e-14)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = curve_fit(_decay_np_checked, x, y, p0=[1, 1, 0.1], jac="cs", method=method)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def exp_decay_jac(x, a, b, c):
    e = jnp.exp(-b * x)
    return jnp.stack([e, -a * x * e, jnp.ones_like(x)], axis=-1)


@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
def test_user_jac_is_used(method):
    pb = problem("exp_decay")
    calls = []

    def jac(x, *p):
        calls.append(1)
        return exp_decay_jac(x, *p)

    got = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, jac=jac, method=method)
    assert calls, "the user's jac was never called"
    ref = reference(pb.model, pb.xdata, pb.ydata, pb.p0, method=method)
    assert_fit_matches(got, ref)

    # A Jacobian deliberately scaled by 2 has the same stationary point but a
    # covariance four times smaller: only a fit that really uses it shows that.
    def jac2(x, *p):
        return 2.0 * exp_decay_jac(x, *p)

    got2 = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0, jac=jac2, method=method)
    ref2 = reference(pb.model, pb.xdata, pb.ydata, pb.p0, method=method,
                     jac=exact_jac(pb.model, scale=2.0))
    assert_fit_matches(got2, ref2, rtol_popt=1e-5)
    np.testing.assert_allclose(got2[1], got[1] / 4, rtol=1e-3)


def test_jitted_model():
    pb = problem("exp_decay")
    jitted = jax.jit(exp_decay)
    ref = reference(pb.model, pb.xdata, pb.ydata, pb.p0)
    assert_fit_matches(curve_fit(jitted, pb.xdata, pb.ydata, p0=pb.p0), ref)
    # The parameter count still comes from the wrapped function's signature.
    got = curve_fit(jitted, pb.xdata, pb.ydata)
    assert_fit_matches(got, reference(pb.model, pb.xdata, pb.ydata, np.ones(3)))


def cubic(x, *coefs):
    return sum(c * x**i for i, c in enumerate(coefs))


def test_varargs_model_with_p0():
    rng = np.random.default_rng(12)
    x = np.linspace(-2, 2, M)
    truth = [0.5, -1.0, 0.3, 0.8]
    y = _eval(cubic, x, truth) + 0.1 * rng.normal(size=M)
    got = curve_fit(cubic, x, y, p0=np.ones(4))
    assert got[0].shape == (4,)
    assert_fit_matches(got, reference(cubic, x, y, np.ones(4)))


# --------------------------------------------------------------------------
# Covariance edge cases
# --------------------------------------------------------------------------


def _line_data():
    rng = np.random.default_rng(13)
    x = np.linspace(0, 1, 20)
    return x, 2.0 * x + 0.01 * rng.normal(size=x.size)


def test_indeterminate_covariance_lm_is_inf_with_warning():
    x, y = _line_data()

    def model(x, a, b):  # b has no effect: its Jacobian column is zero
        return a * x

    with pytest.warns(OptimizeWarning, match="(?i)covariance"):
        popt, pcov = curve_fit(model, x, y, method="lm")
    with pytest.warns(OptimizeWarning, match="(?i)covariance"):
        ref_popt, ref_pcov = reference(model, x, y, None, method="lm")
    assert pcov.shape == (2, 2) and np.all(np.isinf(ref_pcov))
    assert np.all(np.isinf(pcov))
    np.testing.assert_allclose(popt, ref_popt, rtol=1e-6)


@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
def test_nonlinear_model_with_an_ignored_parameter_converges_like_scipy(method):
    """A parameter the model ignores (a zero Jacobian column) in a nonlinear
    fit. MINPACK takes the least-squares Gauss-Newton step of the
    rank-deficient system where it fits the trust region; sknlsq's 'lm' held
    its step at the region's radius instead and stopped at max_nfev
    (status 0) short of the optimum."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 3, 300)
    y = 2.0 * np.exp(-1.3 * x) + 0.01 * rng.standard_normal(x.size)

    def model(x, a, b, c):
        return a * jnp.exp(-b * x) + 0.0 * c

    def model_np(x, a, b, c):
        return a * np.exp(-b * x) + 0.0 * c

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        popt, _, info, _, ier = curve_fit(model, x, y, p0=[1, 1, 1], method=method,
                                          full_output=True)
        ref = scipy_curve_fit(lambda x, a, b: a * np.exp(-b * x), x, y, p0=[1, 1],
                              ftol=1e-14, xtol=1e-14, gtol=1e-14)[0]
        ref_nfev = scipy_curve_fit(model_np, x, y, p0=[1, 1, 1], method=method,
                                   full_output=True)[2]["nfev"]
    assert 1 <= ier <= 4
    np.testing.assert_allclose(popt[:2], ref, rtol=1e-7)
    assert popt[2] == 1.0
    assert info["nfev"] <= 3 * ref_nfev + 10


@pytest.mark.parametrize("method", ["trf", "dogbox"])
def test_rank_deficient_covariance_trf_uses_pseudo_inverse(method):
    # scipy's trf/dogbox branch inverts J^T J by an SVD that drops zero
    # singular values: finite pcov, zeros for the dead parameter, no warning.
    x, y = _line_data()

    def model(x, a, b):
        return a * x + 0.0 * b

    with warnings.catch_warnings():
        warnings.simplefilter("error", OptimizeWarning)
        popt, pcov = curve_fit(model, x, y, method=method)
        ref_popt, ref_pcov = reference(model, x, y, np.ones(2), method=method)
    np.testing.assert_allclose(popt, ref_popt, rtol=1e-6)
    np.testing.assert_allclose(pcov, ref_pcov, rtol=1e-4, atol=1e-12 * ref_pcov[0, 0])
    assert pcov[1, 1] == 0 and pcov[0, 0] > 0


# --------------------------------------------------------------------------
# Precision policy
# --------------------------------------------------------------------------


def test_float32_input_is_fitted_in_float64():
    pb = problem("gaussian")
    x32 = np.asarray(pb.xdata, np.float32)
    y32 = np.asarray(pb.ydata, np.float32)
    got = curve_fit(pb.model, x32, y32, p0=np.asarray(pb.p0, np.float32))
    assert got[0].dtype == np.float64 and got[1].dtype == np.float64
    ref = reference(pb.model, x32.astype(np.float64), y32.astype(np.float64), pb.p0)
    assert_fit_matches(got, ref)


@pytest.mark.skipif(bool(os.environ.get("JAX_ENABLE_X64")),
                    reason="x64 switched on for the whole process by the environment")
def test_x64_is_not_switched_on_globally():
    user = jnp.linspace(0.0, 1.0, 5)
    assert user.dtype == jnp.float32 and jnp.ones(3).dtype == jnp.float32
    pb = problem("exp_decay")
    popt, _ = curve_fit(pb.model, pb.xdata, pb.ydata, p0=pb.p0)
    assert popt.dtype == np.float64
    assert jnp.ones(3).dtype == jnp.float32
    assert (user * 2).dtype == jnp.float32
    assert not jax.config.jax_enable_x64


def _slow_numpy_decay(x, a, b):
    time.sleep(0.002)  # keep the fit running while the other thread looks
    return a * np.exp(-b * np.asarray(x))


def test_numpy_model_fit_leaves_other_threads_in_float32():
    # A fit with a NumPy-only model runs host callbacks, possibly on XLA's
    # threads; float64 must be enabled there only, never globally: a user's
    # thread computing meanwhile keeps float32.
    import threading

    seen, stop = set(), threading.Event()

    def user():
        while not stop.is_set():
            seen.add(str(jnp.ones(3).dtype))
            time.sleep(0.001)

    x = np.linspace(0, 3, 200)
    y = 2 * np.exp(-0.7 * x) + 0.01 * np.sin(11 * x)
    thread = threading.Thread(target=user)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt = curve_fit(_slow_numpy_decay, x, y, p0=[1.0, 1.0])[0]
    finally:
        stop.set()
        thread.join()
    assert seen == {"float32"}
    assert not jax.config.jax_enable_x64 and jnp.ones(3).dtype == jnp.float32
    ref = scipy_curve_fit(_slow_numpy_decay, x, y, p0=[1.0, 1.0], ftol=1e-14, xtol=1e-14,
                          gtol=1e-14)[0]
    np.testing.assert_allclose(popt, ref, rtol=1e-8)


@pytest.mark.parametrize("m", [6, 16, 40])
def test_2d_ydata_with_1d_xdata(m):
    """A 2-D ``ydata`` (compared with the model's output of the same shape)
    with a 1-D ``xdata`` of as many points, padded or not: the same fit as
    scipy's of the flattened problem."""
    rng = np.random.default_rng(m)
    x = np.linspace(0, 1, m)
    y = ((2.0 * x + 1.0) + 0.01 * rng.normal(size=m)).reshape(2, m // 2)

    def model(t, a, b):
        return (a * t + b).reshape(2, m // 2)

    got, gcov = curve_fit(model, x, y, p0=[1.0, 1.0])
    want, wcov = scipy_curve_fit(lambda t, a, b: a * t + b, x, y.ravel(), p0=[1.0, 1.0])
    np.testing.assert_allclose(got, want, rtol=1e-7)
    np.testing.assert_allclose(gcov, wcov, rtol=1e-5)


def test_xdata_without_a_sample_axis_fits_like_scipy():
    """scipy places no constraint on xdata's shape: the documented image fit
    passes a meshgrid pair (2, H, W) with the image raveled into ydata. It was
    refused as 'inconsistent lengths'."""
    H, W = 12, 15
    X, Y = np.meshgrid(np.linspace(-3, 3, W), np.linspace(-2, 2, H))

    def gauss(xy, A, x0, y0, s):
        x, y = xy
        return (A * jnp.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s ** 2))).ravel()

    def gauss_np(xy, A, x0, y0, s):
        x, y = xy
        return (A * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s ** 2))).ravel()

    rng = np.random.default_rng(0)
    img = gauss_np((X, Y), 3.0, 0.5, -0.3, 0.8) + 0.01 * rng.standard_normal(H * W)
    ref = scipy_curve_fit(gauss_np, (X, Y), img, p0=[1, 0, 0, 1], ftol=1e-14, xtol=1e-14,
                          gtol=1e-14)[0]
    np.testing.assert_allclose(curve_fit(gauss, (X, Y), img, p0=[1, 0, 0, 1])[0], ref,
                               rtol=1e-7)
    # Lengths that really disagree still get a clear error.
    with pytest.raises(ValueError, match="shape"):
        curve_fit(lambda x, a, b: a * x + b, np.arange(50.0), np.arange(40.0))


def test_2d_ydata_needs_a_model_output_of_its_shape():
    """A model returning one curve for a 2-D ydata was broadcast to every row
    and fitted jointly (one parameter vector for the average curve); scipy
    raises (its residual would be 2-D). sknlsq raises and names batch=True."""
    x = np.linspace(0, 1, 10)
    Y = np.stack([2 * x + 1, 3 * x - 1])
    for method in (None, "trf"):
        with pytest.raises(ValueError, match="batch=True"):
            curve_fit(lambda x, a, b: a * x + b, x, Y, method=method)
    popt = curve_fit(lambda x, a, b: a * x + b, x, Y, batch=True)[0]
    np.testing.assert_allclose(popt, [[2, 1], [3, -1]], atol=1e-10)


def test_xdata_object_the_model_reads_by_name_is_passed_untouched():
    """scipy converts only lists, tuples and arrays; other objects reach the
    model as they are. sknlsq converts objects with __array__ (so that a JAX
    model can trace a pandas Series), but a model that cannot use the array
    (it reads columns by name) gets the object itself, like in scipy."""
    class Table:
        def __init__(self, **cols):
            self.cols = cols

        def __getitem__(self, k):
            return self.cols[k]

        def __array__(self, dtype=None, copy=None):
            return np.stack(list(self.cols.values()), axis=1).astype(dtype or float)

        def __len__(self):
            return len(next(iter(self.cols.values())))

    t = np.linspace(0, 4, 30)
    X = Table(t=t, T=20 + 5 * np.sin(t))
    y = 2.0 * np.exp(-0.5 * t) + 0.01 * X["T"]

    def model(X, a, b, c):
        return a * np.exp(-b * X["t"]) + c * X["T"]

    ref = scipy_curve_fit(model, X, y, ftol=1e-14, xtol=1e-14, gtol=1e-14)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the host-path notice for a NumPy model
        np.testing.assert_allclose(curve_fit(model, X, y)[0], ref, rtol=1e-7)


def test_lm_covariance_of_a_badly_scaled_problem_is_finite_like_scipy(monkeypatch):
    """Parameters of 1e8 and 1e-6: well determined, but R's singular values
    span more than the plain rank threshold. leastsq inverts R (singular only
    where it is exactly singular): a finite covariance, equal to the fit's in
    rescaled units. sknlsq's 'lm' gave inf and a warning, single, batched and
    in chunks."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 5e-6, 100)
    y = 1e8 * np.exp(-t / 1e-6) + 1e5 * rng.standard_normal(t.size)
    p0 = [0.9e8, 1.1e-6]

    def f(t, A, tau):
        return A * jnp.exp(-t / tau)

    ref_p, ref_c = scipy_curve_fit(lambda t, A, tau: A * np.exp(-t / tau), t, y, p0=p0)
    # The same fit in rescaled units (A in 1e8, tau in 1e-6) is well conditioned.
    pr, cr = scipy_curve_fit(lambda t, a, b: 1e8 * a * np.exp(-t / (1e-6 * b)), t, y,
                             p0=[0.9, 1.1])
    perr_units = np.sqrt(np.diag(cr)) * [1e8, 1e-6]
    np.testing.assert_allclose(np.sqrt(np.diag(ref_c)), perr_units, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptimizeWarning)
        popt, pcov = curve_fit(f, t, y, p0=p0)
        bp, bc = curve_fit(f, t, np.stack([y, y]), p0=p0, batch=True)
        monkeypatch.setenv("SKNLSQ_JACOBIAN_BUDGET", "256")  # the chunked path
        cp, cc = curve_fit(f, t, y, p0=p0)
    for c in (pcov, bc[0], cc):
        np.testing.assert_allclose(np.sqrt(np.diag(c)), perr_units, rtol=1e-6)


def test_inputs_scipy_accepts_p0_of_any_shape_and_integral_float_max_nfev():
    """scipy ravels p0 (np.atleast_1d) and takes max_nfev=100.0; both were
    refused."""
    x = np.linspace(0, 1, 20)
    y = 2 * x
    np.testing.assert_allclose(curve_fit(lambda x, a: a * x, x, y, p0=[[1.0]])[0], [2.0])
    np.testing.assert_allclose(curve_fit(lambda x, a: a * x, x, y, max_nfev=100.0,
                                         method="trf")[0], [2.0])
    for bad in (0.5, True, 0):
        with pytest.raises(ValueError, match="max_nfev"):
            curve_fit(lambda x, a: a * x, x, y, max_nfev=bad, method="trf")


@pytest.mark.parametrize("batch", [False, True])
def test_lm_with_an_integral_float_maxfev(batch):
    """max_nfev / maxfev = 100.0 is accepted; the MINPACK message formatted it
    with ':d' and crashed after the fit."""
    x = np.linspace(0, 4, 30)
    y = 2 * np.exp(-0.5 * x)
    Y = np.stack([y, y]) if batch else y
    for kw in (dict(max_nfev=100.0), dict(maxfev=100.0)):
        popt = curve_fit(lambda x, a, b: a * jnp.exp(-b * x), x, Y, p0=[1, 1], batch=batch,
                         **kw)[0]
        np.testing.assert_allclose(np.reshape(popt, (-1, 2))[0], [2, 0.5], rtol=1e-8)
