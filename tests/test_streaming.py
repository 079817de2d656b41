"""StreamingCurveFitRegressor and the chunked engine behind it.

References: the in-memory CurveFitRegressor / curve_fit fit of the same data
(itself checked against scipy), the NIST StRD certified values, and
analytical identities (information-form updates of a linear model equal the
batch least-squares solution).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from sklearn.exceptions import ConvergenceWarning

from nist_strd import MODELS, NAMES, digits, load
from sknlsq import (ArraySource, CurveFitRegressor, HDF5Source, IterableSource,
                    JaxFallbackWarning, StreamingCurveFitRegressor, curve_fit)
from sknlsq._fit import fit_curve
from sknlsq._stream import fit_chunked, fit_in_chunks


def gauss(x, a, mu, s, c):
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + c


def plane_decay(x, a, b, c):
    return a * jnp.exp(-b * x[0]) + c * x[1]


P0 = [1.0, 4.0, 2.0, 0.0]


@functools.lru_cache(maxsize=None)
def _data(m=20_011, seed=0, sort=False):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, m)
    if sort:
        x = np.sort(x)
    y = 3 * np.exp(-0.5 * ((x - 5) / 1.2) ** 2) + 0.5 + 0.05 * rng.normal(size=m)
    return x[:, None], y


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b)))


# --------------------------------------------------------------------------
# The exact fit equals the in-memory fit
# --------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    dict(),
    dict(method="trf"),
    dict(method="dogbox", bounds=([0, 0, 0.1, -5], [10, 10, 5, 5])),
    dict(method="trf", loss="soft_l1", f_scale=0.1),
], ids=["lm", "trf", "dogbox-bounds", "trf-soft_l1"])
def test_fit_matches_in_memory_fit(settings):
    X, y = _data()
    kw = dict(p0=P0, ftol=1e-12, xtol=1e-12, gtol=1e-12, **settings)
    ref = CurveFitRegressor(gauss, **kw).fit(X, y)
    est = StreamingCurveFitRegressor(gauss, chunk_size=1000, **kw).fit(X, y)
    assert _rel(est.params_, ref.params_) < 1e-8
    assert _rel(np.sqrt(np.diag(est.pcov_)), ref.perr_) < 1e-6
    assert est.n_points_ == X.shape[0]
    assert est.passes_ >= est.nfev_
    assert est.points_per_second_ > 0
    assert np.allclose(est.predict(X[:5]), ref.predict(X[:5]), rtol=1e-8)


def test_fit_matches_with_weights_and_two_features():
    rng = np.random.default_rng(3)
    m = 5003
    X = np.column_stack([rng.uniform(0, 4, m), rng.uniform(-1, 1, m)])
    y = 2 * np.exp(-0.8 * X[:, 0]) + 0.3 * X[:, 1] + 0.02 * rng.normal(size=m)
    w = rng.uniform(0.5, 2.0, m)
    kw = dict(p0=[1.0, 1.0, 0.0], ftol=1e-12, xtol=1e-12, gtol=1e-12)
    ref = CurveFitRegressor(plane_decay, **kw).fit(X, y, sample_weight=w)
    est = StreamingCurveFitRegressor(plane_decay, chunk_size=333, **kw).fit(
        X, y, sample_weight=w)
    assert _rel(est.params_, ref.params_) < 1e-8
    assert _rel(est.perr_, ref.perr_) < 1e-6


def test_chunked_in_memory_engine_matches_curve_fit():
    X, y = _data()
    popt, pcov = curve_fit(gauss, X[:, 0], y, p0=P0, ftol=1e-12, xtol=1e-12)
    res = fit_in_chunks(gauss, X[:, 0], y, np.ones(y.size), chunk_size=512, p0=P0,
                        ftol=1e-12, xtol=1e-12)
    assert _rel(res.params, popt) < 1e-8
    assert _rel(res.pcov, pcov) < 1e-6


@pytest.fixture
def small_subsample(monkeypatch):
    """Subsample warm starts of fit_in_chunks for small data (the default
    needs 2^18 rows in the subsample); records each two-phase solve."""
    from sknlsq import _stream

    monkeypatch.setattr(_stream, "_SUBSET_MIN_ROWS", 256)
    calls = []
    original = _stream._subset_then_full

    def spy(progs, n, m_sub):
        calls.append(m_sub)
        return original(progs, n, m_sub)

    monkeypatch.setattr(_stream, "_subset_then_full", spy)
    return calls


def _no_subsample(monkeypatch):
    from sknlsq import _stream

    monkeypatch.setattr(_stream, "_SUBSET_MIN_ROWS", 1 << 60)


@pytest.mark.parametrize("case", ["lm", "trf-bounds", "dogbox", "weights", "soft_l1-weights",
                                  "two-features", "sorted-x"])
def test_subsample_warm_start_gives_the_full_data_fit(small_subsample, case):
    """A large in-memory fit first solves on every stride-th row, then on all
    rows from that answer: the result is scipy's fit of all rows (the
    subsample only moves the starting point), with the covariance of all
    rows, and the reported evaluations of both phases stay in the budget."""
    rng = np.random.default_rng(7)
    m = 20_011
    X, y = _data(m, sort=case == "sorted-x")
    x = X[:, 0]
    kw = dict(p0=P0, ftol=1e-13, xtol=1e-13)
    model, model_np = gauss, lambda x, a, mu, s, c: a * np.exp(-0.5 * ((x - mu) / s) ** 2) + c
    w = None
    sp = dict(kw)
    if case == "trf-bounds":
        kw.update(method="trf", bounds=([0, 0, 0.1, -5], [10, 10, 5, 5]))
        sp.update(method="trf", bounds=kw["bounds"], gtol=1e-13)
    elif case == "dogbox":
        kw.update(method="dogbox", bounds=([0, 0, 0.1, -5], [10, 10, 5, 5]))
        sp.update(method="dogbox", bounds=kw["bounds"], gtol=1e-13)
    elif case in ("weights", "soft_l1-weights"):
        w = rng.uniform(0.5, 2.0, m)
    elif case == "two-features":
        x = np.vstack([rng.uniform(0, 4, m), rng.uniform(-1, 1, m)])
        y = 2 * np.exp(-0.8 * x[0]) + 0.3 * x[1] + 0.02 * rng.normal(size=m)
        model = plane_decay
        model_np = lambda x, a, b, c: a * np.exp(-b * x[0]) + c * x[1]  # noqa: E731
        kw["p0"] = sp["p0"] = [1.0, 1.0, 0.0]
    if case == "soft_l1-weights":
        # Frequency weights with a robust loss: the reference is the dense
        # fit (itself checked against scipy on repeated rows elsewhere).
        kw.update(method="trf", loss="soft_l1", f_scale=0.05)
        ref = fit_curve(model, x, y, sample_weight=w, gtol=1e-13, **kw).params
        res = fit_in_chunks(model, x, y, np.sqrt(w), point_scale=np.sqrt(w), chunk_size=512,
                            gtol=1e-13, **kw)
    else:
        ref, ref_pcov = scipy.optimize.curve_fit(
            model_np, x, y, sigma=None if w is None else 1 / np.sqrt(w), **sp)
        res = fit_in_chunks(model, x, y, None if w is None else np.sqrt(w), chunk_size=512,
                            **kw)
        # (scipy's covariance comes from a finite-difference Jacobian)
        assert _rel(np.sqrt(np.diag(res.pcov)), np.sqrt(np.diag(ref_pcov))) < 1e-6
    assert small_subsample and small_subsample[0] < m / 5  # the warm start ran
    assert res.success
    assert _rel(res.params, ref) < 1e-8
    assert res.nfev <= 100 * len(kw["p0"]) * (len(kw["p0"]) + 1)
    assert res.subsample_nfev > 0


def test_subsample_warm_start_survives_an_aliased_subsample(small_subsample):
    """x repeating with a period equal to the stride: the subsample sees one
    x value only (a degenerate fit). The full solve still reaches the fit of
    all rows."""
    from sknlsq import _stream

    stride = _stream._subset_stride(20_020, 512, 1000)
    assert stride == 13  # a prime
    x = np.tile(np.linspace(0, 10, stride), 20_020 // stride)
    rng = np.random.default_rng(2)
    y = 3 * np.exp(-0.5 * ((x - 5) / 1.2) ** 2) + 0.5 + 0.05 * rng.normal(size=x.size)
    ref = scipy.optimize.curve_fit(
        lambda x, a, mu, s, c: a * np.exp(-0.5 * ((x - mu) / s) ** 2) + c, x, y, p0=P0,
        ftol=1e-13, xtol=1e-13)[0]
    for method in ("lm", "trf"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_in_chunks(gauss, x, y, None, chunk_size=512, p0=P0, method=method,
                                ftol=1e-13, xtol=1e-13)
        assert np.ptp(x[::stride]) == 0
        assert _rel(res.params, ref) < 1e-8
    assert len(small_subsample) == 2


def test_subsample_warm_start_that_does_not_converge_is_dropped(small_subsample,
                                                                monkeypatch):
    """The subsample's solve gets a quarter of ``max_nfev``; where that does
    not converge, the full solve starts from ``p0``, with the whole budget:
    the fit is exactly the plain fit with the same ``max_nfev``, and the
    subsample's evaluations are reported apart."""
    from sknlsq import _stream

    monkeypatch.setattr(_stream, "_SUBSET_MIN_NFEV", 8)
    X, y = _data()
    kw = dict(p0=P0, chunk_size=512, ftol=1e-13, xtol=1e-13, max_nfev=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_in_chunks(gauss, X[:, 0], y, None, **kw)
        assert small_subsample
        _no_subsample(monkeypatch)
        plain = fit_in_chunks(gauss, X[:, 0], y, None, **kw)
    assert res.subsample_nfev == 3 and plain.subsample_nfev == 0
    assert res.nfev == plain.nfev <= 12
    assert res.status == plain.status
    assert np.array_equal(res.params, plain.params)


def test_subsample_warm_start_keeps_the_budget_of_the_full_solve(small_subsample,
                                                                  monkeypatch):
    """A ``max_nfev`` just large enough for the plain fit from a poor ``p0``
    (scipy's stopping rule, ``refine=0``) is enough with the warm start too."""
    X, y = _data()
    p0 = [0.1587, 9.456, 0.5782, 0.2002]
    kw = dict(p0=p0, chunk_size=512, refine=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res_any = fit_in_chunks(gauss, X[:, 0], y, None, **kw)
        _no_subsample(monkeypatch)
        plain = fit_in_chunks(gauss, X[:, 0], y, None, **kw)
        from sknlsq import _stream

        monkeypatch.setattr(_stream, "_SUBSET_MIN_ROWS", 256)
        res = fit_in_chunks(gauss, X[:, 0], y, None, max_nfev=plain.nfev, **kw)
    assert plain.success and res_any.success
    assert res.success and res.nfev <= plain.nfev and res.subsample_nfev > 0
    assert _rel(res.params, plain.params) < 1e-6


def test_subsample_answer_outside_the_models_domain_falls_back_to_p0(small_subsample):
    """``a log(c - x) + b`` with the singularity just past the largest x: the
    subsample lacks the rows nearest it, so its ``c`` lies below max(x),
    where the full data give NaN. The full solve then starts from ``p0`` and
    reaches scipy's fit (was: 'not finite in the initial point p0')."""
    rng = np.random.default_rng(1)
    m = 20_011
    x = np.sort(rng.uniform(0, 10, m))
    y = -0.5 * np.log(x[-1] + 1e-4 - x) + 1 + 0.2 * rng.normal(size=m)
    p0 = [-1.0, 0.0, 12.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's trials outside the domain
        ref = scipy.optimize.curve_fit(lambda x, a, b, c: a * np.log(c - x) + b, x, y, p0=p0,
                                       ftol=1e-12, xtol=1e-12)[0]
        res = fit_in_chunks(lambda x, a, b, c: a * jnp.log(c - x) + b, x, y, None,
                            chunk_size=512, p0=p0, ftol=1e-12, xtol=1e-12)
    assert small_subsample and res.subsample_nfev > 0
    assert res.success
    assert _rel(res.params, ref) < 1e-6


def test_subsample_needs_enough_rows_and_budget():
    from sknlsq import _stream

    cs = 1 << 18
    assert _stream._subset_stride(10_000_000, cs, 2000) == 11
    assert _stream._subset_stride(10_000_000, cs, 39) is None  # a small budget is kept whole
    assert _stream._subset_stride(2_000_000, cs, 2000) is None  # stride 2: not worth it
    assert _stream._subset_stride(3_000_000, cs, 2000) == 3
    assert _stream._subset_stride(100, 10, 2000) is None  # subsample under 2^18 rows


def test_rank_deficient_jacobian_in_chunks_matches_scipy():
    """A parameter the model ignores makes every chunked linearisation rank
    deficient: the Gram passes cannot reach an accurate Cholesky factor and
    the reduction falls back to the eigen-decomposition of the last one.
    Same optimum as scipy's fit of the model without that parameter; the
    covariance follows scipy's curve_fit for a singular Jacobian: infinite
    for 'lm', the pseudo-inverse (zero for the ignored parameter) for 'trf'."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 3, 3000)
    y = 2.0 * np.exp(-1.3 * x) + 0.01 * rng.standard_normal(x.size)

    def model(x, a, b, c):
        return a * jnp.exp(-b * x) + 0.0 * c

    ref, ref_pcov = scipy.optimize.curve_fit(lambda x, a, b: a * np.exp(-b * x), x, y,
                                             p0=[1, 1], ftol=1e-14, xtol=1e-14, gtol=1e-14)
    for method in ("lm", "trf"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = StreamingCurveFitRegressor(model, p0=[1, 1, 1], chunk_size=100,
                                             method=method).fit(x[:, None], y)
        assert _rel(est.params_[:2], ref) < 1e-7, method
        assert est.params_[2] == 1.0 and 1 <= est.status_ <= 4
        if method == "lm":
            assert np.all(np.isinf(np.diagonal(est.pcov_)))
        else:  # dof 2997 instead of 2998: 3e-4
            np.testing.assert_allclose(est.pcov_[:2, :2], ref_pcov, rtol=1e-3)
            assert np.all(est.pcov_[2] == 0)


def _g3(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def test_more_parameters_than_rows_is_refused_for_lm_only():
    """scipy's rule, as for CurveFitRegressor: only 'lm' (also method=None
    without bounds) refuses more parameters than data points (a
    ValueError naming n_samples = 1 for a single row, scikit-learn's
    convention); 'trf' and 'dogbox' (and method=None with bounds) fit
    underdetermined problems, with an infinite covariance."""
    X = np.array([[0.5], [1.5]])
    y = 1.0 + X[:, 0]
    for method in (None, "lm"):
        for est in (StreamingCurveFitRegressor(_g3, p0=[1, 1, 0], method=method),
                    CurveFitRegressor(_g3, p0=[1, 1, 0], method=method)):
            with pytest.raises(TypeError, match="parameters=3 must not exceed the number of "
                                                "data points=2"):
                est.fit(X, y)
            with pytest.raises(ValueError, match="n_samples = 1"):
                est.fit(X[:1], y[:1])
        with pytest.raises(TypeError, match="Improper input: func input vector length N=3"):
            fit_chunked(_g3, ArraySource(X[:1], y[:1]), p0=[1, 1, 0], method=method)
    for kw in (dict(method="trf"), dict(method="dogbox"),
               dict(bounds=([-10, -10, -10], [10, 10, 10]))):
        for rows in (1, 2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # see the test below
                est = StreamingCurveFitRegressor(_g3, p0=[1, 1, 0], **kw).fit(X[:rows],
                                                                              y[:rows])
            assert np.all(np.isinf(est.pcov_)), (kw, rows)


def test_underdetermined_trf_and_dogbox_fits_match_the_in_memory_fit():
    """Fewer rows than parameters: the chunked Gram passes stop at a Gram
    matrix still singular after a shifted pass and linearise by Householder
    (repeated shifted passes drove the preconditioner singular, then NaN, and
    the fit stalled until max_nfev)."""
    X = np.array([[0.5], [1.5]])
    y = 1.0 + X[:, 0]
    for method in ("trf", "dogbox"):
        for rows in (1, 2):
            with warnings.catch_warnings():
                warnings.simplefilter("error", ConvergenceWarning)
                est = StreamingCurveFitRegressor(_g3, p0=[1, 1, 0], method=method).fit(
                    X[:rows], y[:rows])
            ref = CurveFitRegressor(_g3, p0=[1, 1, 0], method=method).fit(X[:rows], y[:rows])
            assert est.status_ > 0 and est.cost_ < 1e-20, (method, rows)
            np.testing.assert_allclose(est.predict(X[:rows]), y[:rows], rtol=1e-10)
            if (method, rows) != ("trf", 2):  # another point of the solution set
                assert _rel(est.params_, ref.params_) < 1e-8, (method, rows)


@pytest.mark.parametrize("start", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_nist_with_seven_row_chunks(name, start):
    """Every NIST StRD run through chunks of 7 rows reaches the accuracy of
    the in-memory fit (>= 6 certified digits at default settings)."""
    problem = load(name)
    X = problem.x.T if problem.x.ndim == 2 else problem.x[:, None]
    res = fit_chunked(MODELS[name], ArraySource(X, problem.y), p0=problem.start(start),
                      chunk_size=7)
    in_memory = curve_fit(MODELS[name], problem.x, problem.y, p0=problem.start(start))[0]
    d = digits(res.params, problem.certified)
    assert d >= min(6.0, digits(in_memory, problem.certified)), (name, start, d)


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------


def test_hdf5_source_and_iterable_source_give_the_same_fit(tmp_path):
    X, y = _data()
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = X[:, 0]
        f["y"] = y
    kw = dict(p0=P0, ftol=1e-12, xtol=1e-12, chunk_size=4096)
    ref = StreamingCurveFitRegressor(gauss, **kw).fit(X, y)
    h5 = StreamingCurveFitRegressor(gauss, **kw).fit(HDF5Source(path, X=["x"], y="y"))

    def chunks():
        for i in range(0, y.size, 2500):
            yield X[i:i + 2500], y[i:i + 2500]

    it = StreamingCurveFitRegressor(gauss, **kw).fit(IterableSource(chunks))
    assert _rel(h5.params_, ref.params_) < 1e-12
    assert _rel(it.params_, ref.params_) < 1e-12
    assert h5.n_features_in_ == it.n_features_in_ == 1
    assert it.n_points_ == y.size


def test_memmap_source(tmp_path):
    X, y = _data()
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", shape=X.shape)
    my = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", shape=y.shape)
    mx[:], my[:] = X, y
    mx.flush(), my.flush()
    mx = np.load(tmp_path / "x.npy", mmap_mode="r")
    my = np.load(tmp_path / "y.npy", mmap_mode="r")
    est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=3000).fit(ArraySource(mx, my))
    ref = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=3000).fit(X, y)
    assert np.array_equal(est.params_, ref.params_)


def test_nan_rows_raise_with_chunk_index_or_are_omitted():
    X, y = _data()
    y = y.copy()
    y[2500] = np.nan
    with pytest.raises(ValueError, match="chunk 2"):
        fit_chunked(gauss, ArraySource(X, y), p0=P0, chunk_size=1000)
    est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=1000, nan_policy="omit")
    est.fit(ArraySource(X, y))
    keep = np.isfinite(y)
    ref = CurveFitRegressor(gauss, p0=P0).fit(X[keep], y[keep])
    assert est.n_points_ == keep.sum()
    assert _rel(est.params_, ref.params_) < 1e-7
    # Plain arrays, NaN in y and in X: omitted as from a source (scikit-learn's
    # own validation would refuse a non-finite y).
    Xn = X.copy()
    Xn[7000, 0] = np.nan
    keep2 = keep & np.isfinite(Xn[:, 0])
    est2 = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=1000, nan_policy="omit")
    est2.fit(Xn, y)
    ref2 = CurveFitRegressor(gauss, p0=P0).fit(X[keep2], y[keep2])
    assert est2.n_points_ == keep2.sum()
    assert _rel(est2.params_, ref2.params_) < 1e-7
    online = StreamingCurveFitRegressor(gauss, p0=P0, nan_policy="omit")
    for i in range(0, y.size, 5000):
        online.partial_fit(Xn[i:i + 5000], y[i:i + 5000])
    assert np.all(np.isfinite(online.params_))
    with pytest.raises(ValueError, match="y"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(X, y)  # nan_policy='raise'
    with pytest.raises(ValueError, match="y"):
        StreamingCurveFitRegressor(gauss, p0=P0).partial_fit(X, y)


def test_source_raising_mid_pass_is_reported():
    X, y = _data()
    calls = {"n": 0}

    def chunks():
        for i in range(0, y.size, 2000):
            calls["n"] += 1
            if calls["n"] == 17:  # second pass, chunk 6
                raise OSError("disk went away")
            yield X[i:i + 2000], y[i:i + 2000]

    with pytest.raises(RuntimeError, match="user chunk") as info:
        StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=2000).fit(IterableSource(chunks))
    assert isinstance(info.value.__cause__, OSError)


def test_wrong_number_of_features_in_a_chunk():
    X, y = _data()

    def chunks():
        yield X[:100], y[:100]
        yield np.column_stack([X[100:200], X[100:200]]), y[100:200]

    with pytest.raises(ValueError, match="chunk 1"):
        StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=100).fit(IterableSource(chunks))


def test_missing_file_and_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(HDF5Source(tmp_path / "nope.h5", X="x",
                                                                y="y"))
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(10.0)
        f["y"] = np.arange(9.0)
    with pytest.raises(KeyError, match="'z'"):
        HDF5Source(path, X="z", y="y")
    with pytest.raises(ValueError, match="length"):
        HDF5Source(path, X="x", y="y")


def test_bad_settings_are_named():
    X, y = _data()
    for bad in (0, True):  # True is an int to scikit-learn's validation
        with pytest.raises(ValueError, match="chunk_size"):
            StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=bad).fit(X, y)
    with pytest.raises(ValueError, match="p0"):
        fit_chunked(gauss, ArraySource(X, y), p0=[np.nan, 1, 1, 1])
    with pytest.raises(TypeError, match="source"):
        fit_chunked(gauss, (X, y), p0=P0)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def test_checkpointed_fit_equals_plain_fit_and_settings_must_match(tmp_path):
    X, y = _data()
    kw = dict(p0=P0, chunk_size=2000, ftol=1e-12, xtol=1e-12)
    ref = StreamingCurveFitRegressor(gauss, **kw).fit(X, y)
    ck = tmp_path / "fit.npz"
    done = StreamingCurveFitRegressor(gauss, checkpoint=ck, checkpoint_every=2, **kw).fit(X, y)
    assert np.array_equal(done.params_, ref.params_)
    # A finished checkpoint gives the result back without another pass.
    again = StreamingCurveFitRegressor(gauss, checkpoint=ck, checkpoint_every=2, **kw).fit(X, y)
    assert again.passes_ == 0
    assert np.array_equal(again.params_, ref.params_)
    # Other settings: refused, never silently ignored.
    with pytest.raises(ValueError, match="different fit.*settings"):
        StreamingCurveFitRegressor(gauss, checkpoint=ck, max_nfev=4, **kw).fit(X, y)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_checkpoint_files_get_the_umask_mode_or_keep_their_own(tmp_path):
    """A new checkpoint is created like any file (0666 less the umask), not
    private as a temporary file; an existing one keeps its mode."""
    from sknlsq._stream import _write_checkpoint

    old = os.umask(0o022)
    try:
        new = tmp_path / "new.npz"
        _write_checkpoint(new, [np.zeros(2)], {"version": 1})
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.npz"
        kept.write_bytes(b"")
        kept.chmod(0o640)
        _write_checkpoint(kept, [np.zeros(2)], {"version": 1})
        assert kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    X, y = _data()
    ck = tmp_path / "fit.npz"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        StreamingCurveFitRegressor(gauss, p0=P0, checkpoint=ck, chunk_size=2000).fit(X, y)
    ck.unlink()
    StreamingCurveFitRegressor(gauss, p0=P0, checkpoint=ck, chunk_size=2000).fit(X, y)
    X2, y2 = _data(seed=1)
    with pytest.raises(ValueError, match="different fit.*source"):
        StreamingCurveFitRegressor(gauss, p0=P0, checkpoint=ck, chunk_size=2000).fit(X2, y2)
    assert not list(tmp_path.glob(".sknlsq-ckpt-*"))  # no temporary files left


def _decay(x, a, b, k):
    return a * jnp.exp(-b * x) + k


def _decay_np(x, a, b, k):
    return a * np.exp(-b * x) + k


@functools.lru_cache(maxsize=None)
def _decay_data(m=1003):
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 5, m)
    return x[:, None], 2.0 * np.exp(-0.7 * x) + 0.01 * rng.normal(size=m)


def test_checkpoint_of_another_model_with_the_same_name_is_refused(tmp_path):
    """The checkpoint identifies the model's computation, not its name: two
    partials (or two lambdas) share a qualname but not a jaxpr, two NumPy
    models (run through host callbacks) not their code and arguments."""
    X, y = _decay_data()
    kw = dict(p0=[1.0, 1.0], chunk_size=200)
    ck = tmp_path / "fit.npz"
    first = StreamingCurveFitRegressor(functools.partial(_decay, k=0.0), checkpoint=ck,
                                       **kw).fit(X, y)
    # The same computation in another object resumes: no pass, same result.
    again = StreamingCurveFitRegressor(functools.partial(_decay, k=0.0), checkpoint=ck,
                                       **kw).fit(X, y)
    assert again.passes_ == 0
    assert np.array_equal(again.params_, first.params_)
    with pytest.raises(ValueError, match="different fit.*'model'"):
        StreamingCurveFitRegressor(functools.partial(_decay, k=100.0), checkpoint=ck,
                                   **kw).fit(X, y)
    ck2 = tmp_path / "lambda.npz"
    StreamingCurveFitRegressor(lambda x, a, b: a * jnp.exp(-b * x), checkpoint=ck2,
                               **kw).fit(X, y)
    with pytest.raises(ValueError, match="different fit.*'model'"):
        StreamingCurveFitRegressor(lambda x, a, b: a * jnp.exp(-b * x) + 1.0, checkpoint=ck2,
                                   **kw).fit(X, y)
    ck3 = tmp_path / "numpy.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JaxFallbackWarning)
        first = StreamingCurveFitRegressor(functools.partial(_decay_np, k=0.0),
                                           checkpoint=ck3, **kw).fit(X, y)
        again = StreamingCurveFitRegressor(functools.partial(_decay_np, k=0.0),
                                           checkpoint=ck3, **kw).fit(X, y)
        assert again.passes_ == 0
        assert np.array_equal(again.params_, first.params_)
        with pytest.raises(ValueError, match="different fit.*'model'"):
            StreamingCurveFitRegressor(functools.partial(_decay_np, k=1.0), checkpoint=ck3,
                                       **kw).fit(X, y)
        with pytest.raises(ValueError, match="different fit.*'model'"):
            StreamingCurveFitRegressor(lambda x, a, b: a * np.exp(-b * x), checkpoint=ck3,
                                       **kw).fit(X, y)


FP_MODULE = '''
import functools
import numpy as np


def decay(x, a, b, k, scale=np.array([1.0, 2.0])):
    return a * np.exp(-b * x) + k * scale[0]


model = functools.partial(decay, k=0.5)
'''

FP_CHILD = '''
import sys, warnings
sys.path.insert(0, sys.argv[1])
import numpy as np
import fpmodel
from sknlsq import StreamingCurveFitRegressor
warnings.simplefilter("ignore")
rng = np.random.default_rng(4)
x = rng.uniform(0, 5, 1003)
y = 2.0 * np.exp(-0.7 * x) + 0.01 * rng.normal(size=x.size)
StreamingCurveFitRegressor(fpmodel.model, p0=[1.0, 1.0], chunk_size=200,
                           checkpoint=sys.argv[2]).fit(x[:, None], y)
'''


def test_numpy_model_checkpoint_resumes_in_a_new_process(tmp_path, monkeypatch):
    """The fingerprint of a model run through host callbacks (code,
    defaults, partial arguments) is the same in another process."""
    import os
    import subprocess
    import sys

    (tmp_path / "fpmodel.py").write_text(FP_MODULE)
    ck = tmp_path / "fit.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", FP_CHILD, str(tmp_path), str(ck)], env=env,
                   check=True, timeout=240)
    monkeypatch.syspath_prepend(str(tmp_path))
    import fpmodel

    X, y = _decay_data()
    kw = dict(p0=[1.0, 1.0], chunk_size=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JaxFallbackWarning)
        resumed = StreamingCurveFitRegressor(fpmodel.model, checkpoint=ck, **kw).fit(X, y)
        straight = StreamingCurveFitRegressor(fpmodel.model, **kw).fit(X, y)
    assert resumed.passes_ == 0
    np.testing.assert_allclose(resumed.params_, straight.params_, rtol=1e-12)


def test_checkpoint_of_other_data_from_a_callable_is_refused(tmp_path):
    """A callable's data are checked by the digest of the first chunk and
    by the row count of the first complete pass (a finished checkpoint:
    a counting pass on the host)."""
    X, y = _data(m=1003)

    def make(yy, m=1003, fail_on=None):
        calls = {"n": 0}

        def chunks():
            calls["n"] += 1
            for i in range(0, m, 150):
                if calls["n"] == fail_on and i >= 300:
                    raise OSError("disk went away")
                yield X[i:min(i + 150, m)], yy[i:min(i + 150, m)]

        return chunks

    kw = dict(p0=P0, chunk_size=200)
    ck = tmp_path / "fit.npz"
    StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(make(y))
    with pytest.raises(ValueError, match="different fit.*'first_chunk'"):
        StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(make(2 * y))
    with pytest.raises(ValueError, match="different fit.*gave 900 rows.*saw 1003"):
        StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(make(y, m=900))
    # An unfinished checkpoint: the first pass of the resumed fit counts.
    ck.unlink()
    with pytest.raises(RuntimeError, match="user chunk"):
        StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(make(y, fail_on=7))
    assert ck.exists()
    with pytest.raises(ValueError, match="different fit.*gave 900 rows.*saw 1003"):
        StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(make(y, m=900))
    resumed = StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(make(y))
    straight = StreamingCurveFitRegressor(gauss, **kw).fit(make(y))
    np.testing.assert_allclose(resumed.params_, straight.params_, rtol=1e-12)


def test_checkpoint_of_the_same_size_but_other_values_is_refused(tmp_path):
    """Values changed outside the rows a source's fingerprint samples and
    outside the first chunk: the pass checksum stored in the checkpoint
    catches them, for a finished checkpoint (a checking read on the host) and
    for an unfinished one (the resumed fit's first complete pass)."""
    X, y = _data(m=1003)
    y2 = y.copy()
    y2[700:720] += 0.01  # not in chunk 0, unlikely to be a sampled row
    kw = dict(p0=P0, chunk_size=200)
    ck = tmp_path / "fit.npz"
    StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(ArraySource(X, y))
    with pytest.raises(ValueError, match="different fit.*other values"):
        StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(ArraySource(X, y2))
    again = StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(ArraySource(X, y))
    assert again.passes_ == 0  # the unchanged data resume the finished fit

    def make(yy, fail_on=None):
        calls = {"n": 0}

        def chunks():
            calls["n"] += 1
            for i in range(0, 1003, 150):
                if calls["n"] == fail_on and i >= 300:
                    raise OSError("disk went away")
                yield X[i:i + 150], yy[i:i + 150]

        return chunks

    ck.unlink()
    with pytest.raises(RuntimeError, match="user chunk"):
        StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(make(y, fail_on=7))
    with pytest.raises(ValueError, match="different fit.*other values"):
        StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(make(y2))


def _checkpoint_meta(ck):
    import json

    with np.load(ck) as z:
        return json.loads(str(z["meta"][()]))


def test_resuming_a_finished_checkpoint_keeps_its_data_record(tmp_path):
    """A fit that resumes a finished checkpoint writes the file again: it must
    keep the record of the data (row counts, pass checksum), else a later fit
    of other values of the same size resumed it silently and returned the
    first data's parameters. Arrays and a callable source."""
    X, y = _data(m=1003)
    y2 = y.copy()
    y2[700:720] += 0.01  # not in chunk 0, unlikely to be a sampled row
    kw = dict(p0=P0, chunk_size=200)

    def make(yy):
        def chunks():
            for i in range(0, 1003, 150):
                yield X[i:i + 150], yy[i:i + 150]

        return chunks

    for name, args in [("array", lambda yy: (X, yy)), ("callable", lambda yy: (make(yy),))]:
        ck = tmp_path / f"{name}.npz"
        first = StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(*args(y))
        saved = _checkpoint_meta(ck)
        assert saved["pass_checksum"] is not None and saved["done"]
        again = StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(*args(y))
        assert again.passes_ == 0, name
        assert np.array_equal(again.params_, first.params_), name
        resaved = _checkpoint_meta(ck)
        for key in ("pass_checksum", "rows_seen", "valid_rows", "first_chunk", "source",
                    "settings", "model", "done"):
            assert resaved[key] == saved[key], (name, key)
        with pytest.raises(ValueError, match="different fit.*other values"):
            StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw).fit(*args(y2))


def test_retry_with_the_same_iterable_source_resumes_its_checkpoint(tmp_path):
    """A failed fit taught its IterableSource the number of rows; the retry
    with that source must keep the chunk size (it is in the checkpoint)."""
    X, y = _data(m=1003)
    state = {"calls": 0, "fail": True}

    def chunks():
        state["calls"] += 1
        for i in range(0, 1003, 150):
            if state["fail"] and state["calls"] == 7 and i >= 300:
                raise OSError("transient NFS error")
            yield X[i:i + 150], y[i:i + 150]

    kw = dict(p0=P0, chunk_size=4096, ftol=1e-12, xtol=1e-12)
    ck = tmp_path / "fit.npz"
    src = IterableSource(chunks)
    est = StreamingCurveFitRegressor(gauss, checkpoint=ck, **kw)
    with pytest.raises(RuntimeError, match="user chunk"):
        est.fit(src)
    assert ck.exists() and src.n_samples == 1003
    state["fail"] = False
    resumed = est.fit(src)
    straight = StreamingCurveFitRegressor(gauss, **kw).fit(IterableSource(chunks))
    assert 0 < resumed.passes_ < straight.passes_
    np.testing.assert_allclose(resumed.params_, straight.params_, rtol=1e-12)


def test_checkpoint_in_a_missing_folder_is_refused_before_any_pass(tmp_path):
    X, y = _data(m=1003)
    calls = []

    def chunks():
        calls.append(1)
        yield X, y

    (tmp_path / "file").write_text("")
    for ck, what in [(tmp_path / "nope" / "fit.npz", "does not exist"),
                     (tmp_path / "file" / "fit.npz", "is not a directory"),
                     (tmp_path, "is a directory")]:
        with pytest.raises(ValueError, match=f"`checkpoint`.*{what}"):
            StreamingCurveFitRegressor(gauss, p0=P0, checkpoint=ck).fit(chunks)
        with pytest.raises(ValueError, match=f"`checkpoint`.*{what}"):
            fit_chunked(gauss, IterableSource(chunks), p0=P0, checkpoint=ck)
    assert calls == []


# --------------------------------------------------------------------------
# partial_fit
# --------------------------------------------------------------------------


def test_partial_fit_of_a_linear_model_equals_batch_least_squares():
    """For a model linear in its parameters the information form is exact:
    one pass of partial_fit gives the batch solution and covariance."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (3000, 2))
    y = 1.5 + 0.7 * X[:, 0] - 2.0 * X[:, 1] + 0.1 * rng.normal(size=3000)
    est = StreamingCurveFitRegressor()
    for i in range(0, 3000, 250):
        est.partial_fit(X[i:i + 250], y[i:i + 250])
    ref = CurveFitRegressor().fit(X, y)
    assert _rel(est.params_, ref.params_) < 1e-9
    assert _rel(est.perr_, ref.perr_) < 1e-6
    assert est.n_iter_ == 12 and est.n_points_ == 3000


def test_partial_fit_one_pass_lands_near_the_optimum():
    X, y = _data(m=40_000, seed=2)
    est = StreamingCurveFitRegressor(gauss, p0=P0)
    for i in range(0, y.size, 2000):
        est.partial_fit(X[i:i + 2000], y[i:i + 2000])
        assert np.all(np.isfinite(est.pcov_))
    ref = CurveFitRegressor(gauss, p0=P0).fit(X, y)
    assert _rel(est.params_, ref.params_) < 1e-3
    assert _rel(est.perr_, ref.perr_) < 0.05


def test_partial_fit_on_sorted_rows_stays_finite_and_no_worse_than_p0():
    X, y = _data(m=40_000, seed=2, sort=True)
    est = StreamingCurveFitRegressor(gauss, p0=P0)
    for i in range(0, y.size, 2000):
        est.partial_fit(X[i:i + 2000], y[i:i + 2000])
        assert np.all(np.isfinite(est.params_))

    def cost(p):
        return np.sum((np.asarray(gauss(X[:, 0], *p)) - y) ** 2)

    assert cost(est.params_) <= cost(P0)


def test_partial_fit_checks_features_and_continues_after_fit():
    X, y = _data()
    est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=5000).fit(X, y)
    before = est.params_.copy()
    est.partial_fit(X[:1000], y[:1000])
    assert _rel(est.params_, before) < 1e-3
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(np.column_stack([X[:10], X[:10]]), y[:10])


def test_partial_fit_refuses_a_changed_number_of_parameters():
    """partial_fit keeps the parameters of its first call (or of fit), as
    scikit-learn keeps the number of features: a model or p0 giving another
    number is refused with a ValueError naming the way out, and the fitted
    state is left as it was. A changed model of the same size continues from
    the information gathered so far."""
    from sklearn.base import clone

    x = np.linspace(0, 3, 40)
    X, y = x[:, None], 2 * np.exp(-0.7 * x) + 0.3

    def f(x, a, b):
        return a * jnp.exp(-b * x)

    def g(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    def poly(x, *p):
        return sum(p[i] * x ** i for i in range(len(p)))

    for start in ("partial_fit", "fit"):
        est = getattr(StreamingCurveFitRegressor(f, p0=[1, 1]), start)(X, y)
        before = est.params_.copy()
        est.set_params(model=g, p0=[1, 1, 0])
        with pytest.raises(ValueError, match="3 parameters.*fitted with 2.*fit.*clone"):
            est.partial_fit(X, y)
        assert np.array_equal(est.params_, before)
        np.testing.assert_allclose(clone(est).partial_fit(X, y).params_[2], 0.3, atol=0.05)
        est.fit(X, y)  # restarts with the new model; partial_fit continues from it
        assert est.partial_fit(X, y).params_.size == 3
    est = StreamingCurveFitRegressor(poly, p0=[0, 0]).partial_fit(X, y)
    est.set_params(p0=[0, 0, 0])
    with pytest.raises(ValueError, match="3 parameters.*fitted with 2"):
        est.partial_fit(X, y)
    est = StreamingCurveFitRegressor(f, p0=[1, 1]).partial_fit(X, y)
    est.set_params(model=lambda x, a, b: a * jnp.exp(-b * x) + 0.3)
    est.partial_fit(X, y)
    assert np.all(np.isfinite(est.params_)) and est.n_iter_ == 2


KILL_MODULE = '''
import os, time
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def gauss(x, a, mu, s, c):
    return a * jnp.exp(-0.5 * ((x - mu) / s) ** 2) + c


def chunks():
    data = np.load(os.path.join(HERE, "data.npz"))
    X, y = data["X"], data["y"]
    slow = float(os.environ.get("SKNLSQ_TEST_SLOW", "0"))
    for i in range(0, y.size, 1000):
        if slow:
            time.sleep(slow)
        yield X[i:i + 1000], y[i:i + 1000]
'''

KILL_CHILD = '''
import sys
sys.path.insert(0, sys.argv[1])
import kmodel
from sknlsq import IterableSource, StreamingCurveFitRegressor
StreamingCurveFitRegressor(kmodel.gauss, p0=[1.0, 4.0, 2.0, 0.0], chunk_size=1000,
                           checkpoint=sys.argv[2], checkpoint_every=1,
                           ftol=1e-12, xtol=1e-12).fit(IterableSource(kmodel.chunks))
print("finished")
'''


def test_fit_killed_with_sigkill_resumes_to_the_same_result(tmp_path, monkeypatch):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    X, y = _data()
    np.savez(tmp_path / "data.npz", X=X, y=y)
    (tmp_path / "kmodel.py").write_text(KILL_MODULE)
    ck = tmp_path / "fit.npz"
    env = dict(os.environ, SKNLSQ_TEST_SLOW="0.01", JAX_PLATFORMS="cpu")
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(tmp_path), str(ck)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        steps = 0
        while time.monotonic() < deadline and child.poll() is None:
            if ck.exists():
                with np.load(ck) as z:
                    steps = int(json.loads(str(z["meta"][()]))["nfev"])
                if steps >= 2:
                    break
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()
        assert steps >= 2
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    with np.load(ck) as z:
        assert not json.loads(str(z["meta"][()]))["done"]

    monkeypatch.syspath_prepend(str(tmp_path))
    import kmodel

    kw = dict(p0=P0, chunk_size=1000, ftol=1e-12, xtol=1e-12)
    resumed = StreamingCurveFitRegressor(kmodel.gauss, checkpoint=ck, checkpoint_every=1,
                                         **kw).fit(IterableSource(kmodel.chunks))
    straight = StreamingCurveFitRegressor(kmodel.gauss, **kw).fit(IterableSource(kmodel.chunks))
    assert resumed.nfev_ == straight.nfev_
    np.testing.assert_allclose(resumed.params_, straight.params_, rtol=1e-13)
    np.testing.assert_allclose(resumed.pcov_, straight.pcov_, rtol=1e-10)


# --------------------------------------------------------------------------
# In-memory fits too large for a full Jacobian
# --------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    dict(),
    dict(bounds=([0, 0, 0.1, -5], [10, 10, 5, 5])),
    dict(sigma="per-point", absolute_sigma=True),
], ids=["lm", "trf-bounds", "sigma"])
def test_curve_fit_above_the_jacobian_budget_runs_in_chunks(monkeypatch, settings):
    X, y = _data()
    x = X[:, 0]
    if settings.get("sigma") == "per-point":
        settings = dict(settings, sigma=0.05 + 0.01 * x)
    kw = dict(p0=P0, ftol=1e-12, xtol=1e-12, full_output=True, **settings)
    ref = curve_fit(gauss, x, y, **kw)
    import sknlsq._stream as stream

    calls = []
    original = stream.fit_in_chunks
    monkeypatch.setattr(stream, "fit_in_chunks", lambda *a, **k: calls.append(1) or
                        original(*a, **k))
    monkeypatch.setenv("SKNLSQ_JACOBIAN_BUDGET", "4096")
    got = curve_fit(gauss, x, y, **kw)
    assert calls, "the chunked path was not taken"
    assert _rel(got[0], ref[0]) < 1e-8
    assert _rel(np.sqrt(np.diag(got[1])), np.sqrt(np.diag(ref[1]))) < 1e-6
    np.testing.assert_allclose(got[2]["fvec"], ref[2]["fvec"], rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("shift", [0, 1, 3], ids=["offset0", "offset1", "offset3"])
def test_large_in_memory_fit_reads_the_callers_arrays_in_place(monkeypatch, shift):
    """More rows than one chunk: each array is read through its 64-byte
    aligned tail plus a copy of its first chunk (see _stream._aligned_data);
    the fit equals the full-Jacobian fit whatever the arrays' alignment."""
    from sknlsq._fit import _CHUNK_ROWS

    m = _CHUNK_ROWS + 1003
    rng = np.random.default_rng(5)
    xb, yb, sb = (np.empty(m + 8) for _ in range(3))
    x, y, sigma = xb[shift:shift + m], yb[2 * shift % 8:2 * shift % 8 + m], sb[:m]
    x[:] = rng.uniform(0, 10, m)
    sigma[:] = 0.05 + 0.01 * x
    y[:] = np.asarray(gauss(x, 3.0, 5.0, 1.2, 0.5)) + sigma * rng.standard_normal(m)
    kw = dict(p0=P0, sigma=sigma, ftol=1e-12, xtol=1e-12)
    ref = curve_fit(gauss, x, y, **kw)
    import sknlsq._stream as stream

    seen = []
    original = stream._aligned_data
    monkeypatch.setattr(stream, "_aligned_data",
                        lambda *a: seen.append(original(*a)) or seen[-1])
    monkeypatch.setenv("SKNLSQ_JACOBIAN_BUDGET", "4096")
    got = curve_fit(gauss, x, y, **kw)
    data, offsets = seen[0]
    assert offsets[1] is not None and data["y"].ctypes.data % 64 == 0
    assert np.shares_memory(data["y"], y)
    assert _rel(got[0], ref[0]) < 1e-9
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-6)


def test_large_in_memory_fit_with_two_features_and_weights(monkeypatch):
    """2-D ``xdata`` is sliced as a whole while ``y`` and the weights use the
    aligned-tail layout; with sample weights (zero for some rows)."""
    from sknlsq._fit import _CHUNK_ROWS

    m = _CHUNK_ROWS + 5003
    rng = np.random.default_rng(9)
    X = rng.uniform(0, 3, (m, 2))
    y = np.asarray(plane_decay(X.T, 2.0, 1.3, 0.7)) + 0.01 * rng.standard_normal(m)
    sw = rng.uniform(0.5, 2.0, m)
    sw[::97] = 0.0
    ref = CurveFitRegressor(plane_decay, p0=[1, 1, 0], ftol=1e-12, xtol=1e-12).fit(
        X, y, sample_weight=sw)
    import sknlsq._stream as stream

    seen = []
    original = stream._aligned_data
    monkeypatch.setattr(stream, "_aligned_data",
                        lambda *a: seen.append(original(*a)) or seen[-1])
    monkeypatch.setenv("SKNLSQ_JACOBIAN_BUDGET", "4096")
    got = CurveFitRegressor(plane_decay, p0=[1, 1, 0], ftol=1e-12, xtol=1e-12).fit(
        X, y, sample_weight=sw)
    assert seen and seen[0][1][0] is None and seen[0][1][1] is not None  # x whole, y tail
    assert _rel(got.params_, ref.params_) < 1e-9
    np.testing.assert_allclose(got.pcov_, ref.pcov_, rtol=1e-6)


def _normalised(x, a, b):
    # Not point-wise: depends on the whole array through x.max().
    return a * jnp.exp(-b * x / jnp.max(x))


def test_models_that_are_not_point_wise_keep_the_full_jacobian(monkeypatch):
    x = np.linspace(0.1, 5, 20_000)
    y = 2 * np.exp(-1.5 * x / 5) + 0.01 * np.random.default_rng(0).normal(size=x.size)
    ref = curve_fit(_normalised, x, y, p0=[1, 1])[0]
    import sknlsq._stream as stream

    monkeypatch.setattr(stream, "fit_in_chunks", None)  # must not be called
    monkeypatch.setenv("SKNLSQ_JACOBIAN_BUDGET", "4096")
    got = curve_fit(_normalised, x, y, p0=[1, 1])[0]
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_verbose_shows_a_progress_bar_and_is_silent_by_default(capsys):
    X, y = _data()
    StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=4000).fit(X, y)
    assert capsys.readouterr().err == ""
    StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=4000, verbose=2).fit(X, y)
    err = capsys.readouterr().err
    assert "sknlsq passes" in err and "pt/s" in err


def test_h5py_datasets_can_be_passed_directly(tmp_path):
    X, y = _data()
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"] = X
        f["y"] = y
    ref = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=3000).fit(X, y)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=3000).fit(f["X"], f["y"])
    assert np.array_equal(est.params_, ref.params_)
    assert est.n_features_in_ == 1


def test_fit_hands_h5py_lists_iterators_and_paths_to_the_sources(tmp_path):
    X, y = _data(m=1003)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["a"] = X[:, 0]
        f["y"] = y
    ref = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=200).fit(X, y)
    with h5py.File(path, "r") as f:
        est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=200).fit([f["a"]], f["y"])
    assert np.array_equal(est.params_, ref.params_)
    assert est.n_features_in_ == 1
    with pytest.raises(TypeError, match="one-shot generator.*callable"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(c for c in [(X, y)])
    with pytest.raises(TypeError, match="one-shot"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(iter([(X, y)]))
    for p in (path, str(path)):
        with pytest.raises(TypeError, match="file path.*dataset names.*HDF5Source"):
            StreamingCurveFitRegressor(gauss, p0=P0).fit(p)


def test_memmap_passed_as_x_is_read_lazily(tmp_path, monkeypatch):
    """``fit(memmap, y)`` reads the file one chunk at a time (no float64
    copy of the whole array) and keeps scikit-learn's shape checks."""
    import sknlsq._estimators._streaming as streaming

    X, y = _data(m=1003)
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                   shape=X.shape)
    mx[:] = X
    mx.flush()
    mx = np.load(tmp_path / "x.npy", mmap_mode="r")
    seen = []

    class Spy(ArraySource):
        def __init__(self, X, y, sample_weight=None):
            seen.append(X)
            super().__init__(X, y, sample_weight)

    monkeypatch.setattr(streaming, "ArraySource", Spy)
    est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=200).fit(mx, y)
    assert isinstance(seen[0], np.memmap) and seen[0].dtype == np.float32
    ref = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=200).fit(
        X.astype(np.float32).astype(float), y)
    assert np.array_equal(est.params_, ref.params_)
    assert est.n_features_in_ == 1 and not hasattr(est, "feature_names_in_")
    with pytest.raises(ValueError, match="2D"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(mx[:, 0], y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(mx, y[:-1])
    with pytest.raises(ValueError, match="requires y"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(mx)


def test_feature_names_are_dropped_by_a_fit_from_a_source():
    pd = pytest.importorskip("pandas")
    X, y = _data(m=1003)
    est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=200)
    est.fit(pd.DataFrame(X, columns=["u"]), y)
    assert list(est.feature_names_in_) == ["u"]
    est.fit(IterableSource(lambda: iter([(X, y)])))
    assert not hasattr(est, "feature_names_in_")
    ref = CurveFitRegressor(gauss, p0=P0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fitted with feature names" warning
        np.testing.assert_allclose(est.predict(X[:5]), ref.predict(X[:5]), rtol=1e-7)


def test_predict_after_partial_fit_without_valid_rows_is_not_fitted():
    from sklearn.exceptions import NotFittedError

    X, y = _data(m=1003)
    est = StreamingCurveFitRegressor(gauss, p0=P0, nan_policy="omit")
    est.partial_fit(X[:5], np.full(5, np.nan))
    with pytest.raises(NotFittedError):
        est.predict(X[:3])
    est.partial_fit(X, y)
    ref = CurveFitRegressor(gauss, p0=P0).fit(X, y)
    assert _rel(est.params_, ref.params_) < 1e-6


def test_nan_policy_omit_with_chunks_without_valid_rows():
    X, y = _data(m=1003)
    y = y.copy()
    y[:100] = np.nan  # chunk 0: the padding row comes from chunk 1
    y[300:400] = np.nan  # chunk 3
    est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=100, nan_policy="omit")
    est.fit(X, y)
    keep = np.isfinite(y)
    ref = CurveFitRegressor(gauss, p0=P0).fit(X[keep], y[keep])
    assert est.n_points_ == keep.sum()
    assert _rel(est.params_, ref.params_) < 1e-7


def test_nan_sample_weight_is_omitted_like_for_a_source():
    X, y = _data(m=1003)
    w = np.random.default_rng(7).uniform(0.5, 2.0, y.size)
    w[[10, 500]] = np.nan
    w[700] = np.inf
    keep = np.isfinite(w)
    tol = dict(ftol=1e-12, xtol=1e-12)
    kw = dict(p0=P0, chunk_size=200, nan_policy="omit", **tol)
    est = StreamingCurveFitRegressor(gauss, **kw).fit(X, y, sample_weight=w)
    src = StreamingCurveFitRegressor(gauss, **kw).fit(ArraySource(X, y, w))
    ref = CurveFitRegressor(gauss, p0=P0, **tol).fit(X[keep], y[keep], sample_weight=w[keep])
    assert est.n_points_ == src.n_points_ == keep.sum()
    assert np.array_equal(est.params_, src.params_)
    assert _rel(est.params_, ref.params_) < 1e-8
    online = StreamingCurveFitRegressor(gauss, p0=P0, nan_policy="omit", **tol)
    online.partial_fit(X, y, sample_weight=w)
    assert online.n_points_ == keep.sum()
    assert _rel(online.params_, ref.params_) < 1e-6
    for policy in ("raise", "omit"):
        bad = w if policy == "raise" else np.where(np.arange(w.size) == 3, -1.0, w)
        est = StreamingCurveFitRegressor(gauss, p0=P0, nan_policy=policy)
        with pytest.raises(ValueError, match="sample_weight"):
            est.fit(X, y, sample_weight=bad)
        with pytest.raises(ValueError, match="sample_weight"):
            est.partial_fit(X, y, sample_weight=bad)


def test_chunk_errors_are_not_logged_by_jax(caplog):
    """A chunk error reaches the caller as an exception; JAX's log record
    of the failed io_callback (with a traceback) is dropped, other records
    of that logger are not."""
    from sknlsq._stream import _DropChunkErrors

    X, y = _data(m=1003)
    yn = y.copy()
    yn[523] = np.nan
    logger = logging.getLogger("jax._src.callback")

    def fit():
        with pytest.raises(ValueError, match="chunk 5"):
            StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=100).fit(
                lambda: iter([(X, yn)]))

    def logged():
        return [r for r in caplog.records if r.name == logger.name]

    ours = [f for f in logger.filters if isinstance(f, _DropChunkErrors)]
    assert ours
    for f in ours:  # the reference: what JAX logs without the filter
        logger.removeFilter(f)
    try:
        with caplog.at_level(logging.ERROR, logger=logger.name):
            fit()
        assert any("io_callback failed" in r.getMessage() for r in logged())
    finally:
        for f in ours:
            logger.addFilter(f)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger=logger.name):
        fit()
        assert logged() == []
        logger.error("another failure", exc_info=RuntimeError("not ours"))
    assert [r.getMessage() for r in logged()] == ["another failure"]


def test_numpy_model_raising_in_a_streaming_fit_is_reported():
    """A NumPy-only model (run through host callbacks) that raises during a
    fit from a source: the caller gets its error, not a misleading message."""
    import warnings

    calls = {"n": 0}

    class Boom(RuntimeError):
        pass

    def model(x, a, b):
        calls["n"] += 1
        if calls["n"] > 3:
            raise Boom("boom inside the model")
        return a * np.exp(-b * np.asarray(x))

    x = np.linspace(0, 3, 500)
    y = 2 * np.exp(-0.7 * x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="raised Boom") as info:
            StreamingCurveFitRegressor(model, p0=[1, 1], chunk_size=100).fit(
                IterableSource(lambda: iter([(x[:, None], y)])))
    assert isinstance(info.value.__cause__, Boom)


# --------------------------------------------------------------------------
# Sample weights are frequencies for the robust losses too
# --------------------------------------------------------------------------

ROBUST = ("soft_l1", "huber", "cauchy", "arctan")
TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)


def decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def _robust_data(m=60, seed=11):
    """Decay data with outliers (so that the robust losses act) in random
    order, and integer weights 0..3, zero for a few points."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 4, m)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.002 * rng.normal(size=m)
    y[::10] += 0.3
    w = rng.integers(0, 4, size=m)
    w[[0, 9, 30]] = 0
    return x, y, w


def _robust_kw(loss):
    return dict(p0=[2.0, 1.0, 0.5], method="trf", loss=loss, f_scale=0.004, **TIGHT)


def _same_fit_as_repeated(weighted, repeated, w, n=3):
    """Same parameters and cost; the covariances differ only by the degrees
    of freedom, which count the points of non-zero weight (as for the linear
    loss): pcov * (m - n) is the same."""
    assert _rel(weighted.params_, repeated.params_) < 1e-8
    assert _rel(weighted.cost_, repeated.cost_) < 1e-8
    np.testing.assert_allclose(weighted.pcov_ * (np.count_nonzero(w) - n),
                               repeated.pcov_ * (np.sum(w) - n), rtol=1e-6)


@pytest.mark.parametrize("loss", ROBUST)
def test_robust_sample_weight_in_the_chunked_in_memory_path_is_repetition(monkeypatch, loss):
    """Above the Jacobian budget (forced here, with chunks of 16 rows) a
    CurveFitRegressor with a robust loss fits in chunks: integer weights
    equal repeated rows, zero weights removed rows, and the fit equals the
    in-memory one. Also with a per-point ``sigma`` (scipy's meaning, inside
    rho) next to the weights, which takes a row of loss scales of its own."""
    import sknlsq._fit as fit_module
    import sknlsq._stream as stream
    from sknlsq._fit import fit_curve

    x, y, w = _robust_data()
    kw = _robust_kw(loss)
    in_memory = CurveFitRegressor(decay, **kw).fit(x[:, None], y, sample_weight=w)
    sigma = 0.5 + 0.5 * np.random.default_rng(4).uniform(size=x.size)
    sig_in_memory = fit_curve(decay, x, y, sigma=sigma, sample_weight=w, **kw)

    calls = []
    original = stream.fit_in_chunks
    monkeypatch.setattr(stream, "fit_in_chunks", lambda *a, **k: calls.append(1) or
                        original(*a, **k))
    monkeypatch.setattr(fit_module, "_CHUNK_ROWS", 16)
    monkeypatch.setenv("SKNLSQ_JACOBIAN_BUDGET", "256")
    weighted = CurveFitRegressor(decay, **kw).fit(x[:, None], y, sample_weight=w)
    assert calls, "the chunked path was not taken"
    repeated = CurveFitRegressor(decay, **kw).fit(np.repeat(x, w)[:, None], np.repeat(y, w))
    _same_fit_as_repeated(weighted, repeated, w)
    keep = w > 0
    removed = CurveFitRegressor(decay, **kw).fit(x[keep, None], y[keep],
                                                 sample_weight=w[keep])
    assert _rel(weighted.params_, removed.params_) < 1e-8
    np.testing.assert_allclose(weighted.pcov_, removed.pcov_, rtol=1e-6)
    assert _rel(weighted.params_, in_memory.params_) < 1e-8
    np.testing.assert_allclose(weighted.pcov_, in_memory.pcov_, rtol=1e-6)

    sig_weighted = fit_curve(decay, x, y, sigma=sigma, sample_weight=w, **kw)
    sig_repeated = fit_curve(decay, np.repeat(x, w), np.repeat(y, w),
                             sigma=np.repeat(sigma, w), **kw)
    assert len(calls) == 5
    assert _rel(sig_weighted.params, sig_repeated.params) < 1e-8
    assert _rel(sig_weighted.cost, sig_repeated.cost) < 1e-8
    assert _rel(sig_weighted.params, sig_in_memory.params) < 1e-8


@pytest.mark.parametrize("loss", ROBUST)
def test_streaming_fit_robust_sample_weight_is_repetition(loss):
    """StreamingCurveFitRegressor.fit with a robust loss, from arrays and
    from a chunk source with a sample_weight column: integer weights equal
    repeated rows, zero weights removed rows."""
    x, y, w = _robust_data()
    X = x[:, None]
    kw = dict(_robust_kw(loss), chunk_size=16)
    weighted = StreamingCurveFitRegressor(decay, **kw).fit(X, y, sample_weight=w)
    repeated = StreamingCurveFitRegressor(decay, **kw).fit(np.repeat(X, w, axis=0),
                                                           np.repeat(y, w))
    _same_fit_as_repeated(weighted, repeated, w)
    assert weighted.n_points_ == np.count_nonzero(w)
    keep = w > 0
    removed = StreamingCurveFitRegressor(decay, **kw).fit(X[keep], y[keep],
                                                          sample_weight=w[keep])
    assert _rel(weighted.params_, removed.params_) < 1e-8
    np.testing.assert_allclose(weighted.pcov_, removed.pcov_, rtol=1e-6)

    def chunks():
        for i in range(0, y.size, 25):
            yield X[i:i + 25], y[i:i + 25], w[i:i + 25].astype(float)

    source = StreamingCurveFitRegressor(decay, **kw).fit(IterableSource(chunks))
    _same_fit_as_repeated(source, repeated, w)
    in_memory = CurveFitRegressor(decay, **_robust_kw(loss)).fit(X, y, sample_weight=w)
    assert _rel(weighted.params_, in_memory.params_) < 1e-8


@pytest.mark.parametrize("loss", ROBUST)
def test_partial_fit_robust_sample_weight_is_repetition(loss):
    """A sequence of partial_fit calls with a robust loss: integer weights
    equal the same sequence on the chunks' rows repeated, zero weights the
    rows removed."""
    x, y, w = _robust_data(m=90)
    X = x[:, None]
    kw = _robust_kw(loss)
    weighted = StreamingCurveFitRegressor(decay, **kw)
    repeated = StreamingCurveFitRegressor(decay, **kw)
    removed = StreamingCurveFitRegressor(decay, **kw)
    for i in range(0, y.size, 30):
        part = slice(i, i + 30)
        wi = w[part]
        weighted.partial_fit(X[part], y[part], sample_weight=wi)
        repeated.partial_fit(np.repeat(X[part], wi, axis=0), np.repeat(y[part], wi))
        keep = wi > 0
        removed.partial_fit(X[part][keep], y[part][keep], sample_weight=wi[keep])
        _same_fit_as_repeated(weighted, repeated, w[:i + 30])
        assert _rel(weighted.params_, removed.params_) < 1e-8
        np.testing.assert_allclose(weighted.pcov_, removed.pcov_, rtol=1e-6)


def _plane(x, a, b, c):
    return a + b * x[0] + c * x[1]


@pytest.mark.parametrize("loss", ROBUST)
def test_sklearn_sample_weight_equivalence_check_with_robust_losses(loss):
    """scikit-learn's own check (weights vs repeated rows, zero weights vs
    removed rows) for StreamingCurveFitRegressor with a robust loss and a
    model of three parameters."""
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    est = StreamingCurveFitRegressor(_plane, p0=[0.0, 0.0, 0.0], loss=loss, method="trf",
                                     **TIGHT)
    check_sample_weight_equivalence_on_dense_data("StreamingCurveFitRegressor", est)


def test_source_faults_found_by_the_reader():
    """Faults a source (not an array) can have, each of which gave a wrong or
    wasteful result: every weight zero (p0 returned as 'converged'), other
    values in a later pass of the same fit (a fit of mixed data), and a NumPy
    model raising on the host (the solver went on for max_nfev passes before
    the error was reported)."""
    X, y = _data(3000)

    def weighted(w):
        def chunks():
            for i in range(0, y.size, 1000):
                yield X[i:i + 1000], y[i:i + 1000], w[i:i + 1000]
        return chunks

    with pytest.raises(ValueError, match="non-zero sample weight"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(IterableSource(weighted(np.zeros(y.size))))

    calls = []

    def drifting():
        calls.append(1)
        shift = 0.0 if len(calls) < 5 else 0.5  # a later pass reads other values
        for i in range(0, y.size, 1000):
            yield X[i:i + 1000], y[i:i + 1000] + shift

    with pytest.raises(ValueError, match="other values"):
        StreamingCurveFitRegressor(gauss, p0=P0).fit(IterableSource(drifting))

    passes = []

    def counted():
        passes.append(1)
        for i in range(0, y.size, 1000):
            yield X[i:i + 1000], y[i:i + 1000]

    def gauss_np(x, a, mu, s, c):
        if a > 1.5:
            raise RuntimeError("model fail")
        return a * np.exp(-0.5 * ((x - mu) / s) ** 2) + c

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NumPy model's host-path notice
        with pytest.raises(ValueError, match="model fail"):
            StreamingCurveFitRegressor(gauss_np, p0=P0).fit(IterableSource(counted))
    assert len(passes) <= 6


def test_unwritable_checkpoint_folder_is_refused_before_any_pass(tmp_path):
    folder = "/proc"  # no regular files can be created there, even as root
    if not os.path.isdir(folder):
        pytest.skip("needs /proc")
    X, y = _data(2000)
    calls = []

    def chunks():
        calls.append(1)
        yield X, y

    with pytest.raises(ValueError, match="cannot write"):
        StreamingCurveFitRegressor(gauss, p0=P0, checkpoint=os.path.join(folder, "f.npz")).fit(
            IterableSource(chunks))
    assert len(calls) <= 1  # at most the first chunk's look at the features


def test_partial_fit_zero_weight_chunk_is_a_no_op_and_predict_needs_arrays():
    X, y = _data(300)
    est = StreamingCurveFitRegressor(gauss, p0=P0).partial_fit(X[:200], y[:200])
    before = est.params_.copy(), est.pcov_.copy()
    est.partial_fit(X[200:], y[200:], sample_weight=np.zeros(100))
    np.testing.assert_array_equal(est.params_, before[0])
    np.testing.assert_array_equal(est.pcov_, before[1])
    with pytest.raises(TypeError, match="array-like `X`"):
        est.predict(ArraySource(X, y))


def test_a_reused_iterable_source_learns_its_size_again():
    """An IterableSource learns its row count from a complete pass; a later fit
    of the same object after the data grew failed with 'this pass gave 2000
    rows but an earlier one gave 1000'. A new fit learns the size afresh."""
    X, y = _data(2000)
    store = {"n": 1000}

    def read():
        for i in range(0, store["n"], 250):
            yield X[i:min(i + 250, store["n"])], y[i:min(i + 250, store["n"])]

    src = IterableSource(read)
    est = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=128).fit(src)
    assert est.n_points_ == 1000
    store["n"] = 2000
    est.fit(src)
    ref = StreamingCurveFitRegressor(gauss, p0=P0, chunk_size=128).fit(X, y)
    assert est.n_points_ == 2000 and _rel(est.params_, ref.params_) < 1e-10


def test_a_source_may_shuffle_its_rows_between_passes():
    """Within one fit only the values of a pass must agree, not their order:
    a source that reshuffles its rows per pass fits like the arrays (the
    between-pass check compares the order-free half of the checksum)."""
    X, y = _data(3000)
    rng = np.random.default_rng(1)

    def shuffled():
        idx = rng.permutation(y.size)
        for i in range(0, y.size, 700):
            j = idx[i:i + 700]
            yield X[j], y[j]

    est = StreamingCurveFitRegressor(gauss, p0=P0, ftol=1e-12, xtol=1e-12).fit(
        IterableSource(shuffled))
    ref = StreamingCurveFitRegressor(gauss, p0=P0, ftol=1e-12, xtol=1e-12).fit(X, y)
    assert _rel(est.params_, ref.params_) < 1e-8


def test_n_iter_counts_the_partial_fit_chunks_after_a_fit():
    """n_iter_ is the solver's iterations for fit and the number of chunks
    partial_fit has seen; after fit then partial_fit it was fit's count + 1."""
    X, y = _data(600)
    est = StreamingCurveFitRegressor(gauss, p0=P0).fit(X, y)
    est.partial_fit(X[:300], y[:300])
    est.partial_fit(X[300:], y[300:])
    assert est.n_iter_ == 2
    est.fit(X, y)
    est.partial_fit(X[:300], y[:300])
    assert est.n_iter_ == 1
