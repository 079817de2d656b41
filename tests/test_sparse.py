"""SparseCurveFitRegressor: global fits (Schur) and general patterns (CG).

References: scipy.optimize.least_squares with the same sparsity pattern
(tr_solver='lsmr'), and the dense CurveFitRegressor / curve_fit of the same
model with every parameter explicit (its covariance is the exact one).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import least_squares

from sknlsq import CurveFitRegressor, SparseCurveFitRegressor, curve_fit

TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)


def decay(t, amp, off, rate):
    return amp * jnp.exp(-rate * t) + off


def _global_data(G=60, P=40, seed=0):
    rng = np.random.default_rng(seed)
    t = np.tile(np.linspace(0, 5, P), G)
    g = np.repeat(np.arange(G), P)
    amp = rng.uniform(1, 3, G)
    off = rng.uniform(0, 1, G)
    y = amp[g] * np.exp(-0.8 * t) + off[g] + 0.02 * rng.normal(size=G * P)
    return t, g, y


def _dense_global(t, g, y, G):
    """The same global fit with all 2G + 1 parameters explicit (dense)."""
    def model(x, *p):
        p = jnp.stack(p)
        gi = x[1].astype(jnp.int32)
        return p[1 + 2 * gi] * jnp.exp(-p[0] * x[0]) + p[2 + 2 * gi]

    p0 = np.concatenate([[1.0], np.tile([1.0, 0.0], G)])
    return curve_fit(model, np.vstack([t, g]), y, p0=p0, **TIGHT)


def test_global_fit_matches_dense_fit_and_its_covariance():
    G = 60
    t, g, y = _global_data(G)
    est = SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0], local_params=["amp", "off"],
                                  group_column=1, **TIGHT).fit(np.column_stack([t, g]), y)
    popt, pcov = _dense_global(t, g, y, G)
    assert est.tr_solver_ == "schur"
    assert est.params_.shape == (2 * G + 1,)
    np.testing.assert_allclose(est.shared_params_, popt[:1], rtol=1e-9)
    np.testing.assert_allclose(est.local_params_, popt[1:].reshape(G, 2), rtol=1e-7,
                               atol=1e-10)
    np.testing.assert_allclose(est.shared_pcov_, pcov[:1, :1], rtol=1e-6)
    for k in (0, 17, G - 1):
        blk = pcov[1 + 2 * k:3 + 2 * k, 1 + 2 * k:3 + 2 * k]
        np.testing.assert_allclose(est.local_pcov_[k], blk, rtol=1e-6)
    np.testing.assert_allclose(est.perr_, np.sqrt(np.diag(pcov)), rtol=1e-6)
    assert est.n_colors_ == 3
    assert est.sparsity_ == pytest.approx(1 - 3 / (2 * G + 1))
    assert est.memory_usage_["reduction_factor"] > 1
    np.testing.assert_allclose(est.predict(np.column_stack([t, g])[:10]),
                               est.shared_params_[0] * 0 + (
                                   est.local_params_[g[:10], 0] * np.exp(
                                       -est.shared_params_[0] * t[:10])
                                   + est.local_params_[g[:10], 1]), rtol=1e-12)


def test_global_fit_matches_scipy_lsmr_with_the_pattern():
    G, P = 300, 30
    t, g, y = _global_data(G, P, seed=4)
    n = 2 * G + 1
    rows = np.repeat(np.arange(G * P), 3)
    cols = np.stack([np.zeros(G * P, int), 1 + 2 * g, 2 + 2 * g], 1).ravel()
    S = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(G * P, n))

    def res(x):
        return x[1 + 2 * g] * np.exp(-x[0] * t) + x[2 + 2 * g] - y

    ref = least_squares(res, np.concatenate([[1.0], np.tile([1.0, 0.0], G)]),
                        jac_sparsity=S, tr_solver="lsmr", **TIGHT)
    est = SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0], local_params=["amp", "off"],
                                  group_column=-1).fit(np.column_stack([t, g]), y)
    assert abs(est.shared_params_[0] - ref.x[0]) / ref.x[0] < 1e-6
    np.testing.assert_allclose(est.local_params_, ref.x[1:].reshape(G, 2), rtol=1e-5,
                               atol=1e-7)


def spline(x, *c):
    """Piecewise-linear curve on fixed knots: each point touches 2 values."""
    knots = jnp.linspace(0.0, 10.0, len(c))
    return jnp.interp(x, knots, jnp.stack(c)) ** 3


def test_general_sparse_pattern_is_detected_and_solved_by_cg():
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0, 10, 3000))
    truth = 1.0 + 0.3 * np.sin(np.linspace(0, 10, 300))
    y = np.interp(x, np.linspace(0, 10, 300), truth) ** 3 + 0.01 * rng.normal(size=x.size)
    p0 = np.ones(300)
    est = SparseCurveFitRegressor(spline, p0=p0, **TIGHT).fit(x[:, None], y)
    assert est.tr_solver_ == "cg"
    assert est.sparsity_ > 0.99
    assert est.n_colors_ <= 3
    ref = CurveFitRegressor(spline, p0=p0, **TIGHT).fit(x[:, None], y)
    np.testing.assert_allclose(est.params_, ref.params_, rtol=1e-6)
    np.testing.assert_allclose(est.perr_, ref.perr_, rtol=1e-4)


def peaks(x, *p):
    out = p[-1] + 0.0 * x
    for k in range(10):
        a, c, w = p[3 * k:3 * k + 3]
        out = out + a * jnp.exp(-0.5 * ((x - c) / w) ** 2)
    return out


def test_multi_peak_spectrum_sparse_path_equals_dense():
    rng = np.random.default_rng(2)
    x = np.linspace(0, 100, 20_000)
    true = []
    for k in range(10):
        true += [rng.uniform(1, 3), 5 + 10 * k, rng.uniform(0.5, 1.5)]
    true += [0.2]
    y = np.asarray(peaks(x, *true)) + 0.01 * rng.normal(size=x.size)
    p0 = np.array(true) * (1 + 0.01 * rng.normal(size=31))
    # 'lm' (scipy's too) stops in a worse local minimum from this start.
    ref = CurveFitRegressor(peaks, p0=p0, method="trf", **TIGHT).fit(x[:, None], y)
    auto = SparseCurveFitRegressor(peaks, p0=p0, **TIGHT).fit(x[:, None], y)
    assert auto.sparsity_ == 0.0  # Gaussians have no structural zeros
    assert auto.tr_solver_ == "dense"
    cg = SparseCurveFitRegressor(peaks, p0=p0, tr_solver="cg", **TIGHT).fit(x[:, None], y)
    widths = np.arange(2, 30, 3)  # enter squared: compare up to sign

    def canon(p):
        p = p.copy()
        p[widths] = np.abs(p[widths])
        return p

    np.testing.assert_allclose(canon(auto.params_), canon(ref.params_), rtol=1e-6)
    np.testing.assert_allclose(canon(cg.params_), canon(ref.params_), rtol=1e-6)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_pattern_of_the_wrong_shape():
    x = np.linspace(0, 10, 200)
    y = np.interp(x, np.linspace(0, 10, 20), np.ones(20)) ** 3
    with pytest.raises(ValueError, match="jac_sparsity"):
        SparseCurveFitRegressor(spline, p0=np.ones(20), jac_sparsity=np.ones((200, 19))).fit(
            x[:, None], y)


def test_pattern_missing_a_true_nonzero():
    x = np.linspace(0, 10, 200)
    y = np.interp(x, np.linspace(0, 10, 20), np.ones(20)) ** 3
    P = sp.lil_array((200, 20))
    P[np.arange(200), np.minimum((x / 10 * 19).astype(int), 19)] = 1  # left knot only
    with pytest.raises(ValueError, match="jac_sparsity.*miss"):
        SparseCurveFitRegressor(spline, p0=np.full(20, 1.1), jac_sparsity=P).fit(
            x[:, None], y)


@pytest.mark.parametrize("j", [50, 51])
def test_pattern_missing_entries_hidden_behind_a_same_colour_column(j):
    # Column j's entries where it is the right knot are left out: in those
    # rows another column of j's colour may have an entry, so the compressed
    # Jacobian is non-zero where the pattern allows it; the check with two
    # sets of column weights still finds them (the fit would "converge" to a
    # wrong answer).
    knots = np.linspace(0, 10, 100)
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0, 10, 1000))
    y = np.interp(x, knots, 1 + 0.3 * np.sin(knots)) ** 3 + 0.01 * rng.normal(size=x.size)
    i = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, 98)
    keep = ~((np.r_[i, i + 1] == j) & (np.r_[np.zeros_like(i), np.ones_like(i)] == 1))
    rows, cols = np.r_[np.arange(x.size), np.arange(x.size)], np.r_[i, i + 1]
    P = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(x.size, 100))
    with pytest.raises(ValueError, match="jac_sparsity.*miss"):
        SparseCurveFitRegressor(spline, p0=np.ones(100), jac_sparsity=P).fit(x[:, None], y)
    # The complete pattern passes the check and fits.
    full = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(x.size, 100))
    SparseCurveFitRegressor(spline, p0=np.ones(100), jac_sparsity=full).fit(x[:, None], y)


def test_non_integer_and_empty_groups():
    t, g, y = _global_data(5, 10)
    X = np.column_stack([t, g + 0.5])
    kw = dict(p0=[1.0, 0.0, 1.0], local_params=["amp", "off"], group_column=1)
    with pytest.raises(ValueError, match="integer"):
        SparseCurveFitRegressor(decay, **kw).fit(X, y)
    # p0 given per group for 6 groups, but only 5 have samples.
    kw6 = dict(kw, p0=[np.ones(6), 0.0, 1.0])
    with pytest.raises(ValueError, match="no samples"):
        SparseCurveFitRegressor(decay, **kw6).fit(np.column_stack([t, g]), y)
    # A group with fewer samples than local parameters.
    keep = ~((g == 2) & (t > 0))
    with pytest.raises(ValueError, match="group 2 has 1 sample"):
        SparseCurveFitRegressor(decay, **kw).fit(np.column_stack([t, g])[keep], y[keep])
    with pytest.raises(ValueError, match="local_params"):
        SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0], local_params=["nope"],
                                group_column=1).fit(np.column_stack([t, g]), y)


def test_unknown_group_at_predict():
    t, g, y = _global_data(5, 10)
    est = SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0], local_params=["amp", "off"],
                                  group_column=1).fit(np.column_stack([t, g]), y)
    with pytest.raises(ValueError, match="not seen"):
        est.predict(np.array([[0.5, 99.0]]))


def test_ragged_groups_use_the_segment_layout_with_the_same_answer():
    rng = np.random.default_rng(7)
    sizes = np.r_[3, rng.integers(3, 8, 29), 60]  # one long group: no (G, P) layout
    g = np.repeat(np.arange(sizes.size), sizes)
    t = rng.uniform(0, 5, g.size)
    amp, off = rng.uniform(1, 3, sizes.size), rng.uniform(0, 1, sizes.size)
    y = amp[g] * np.exp(-0.8 * t) + off[g] + 0.02 * rng.normal(size=g.size)
    perm = rng.permutation(g.size)  # rows in any order
    X = np.column_stack([t, g])[perm]
    est = SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0], local_params=["amp", "off"],
                                  group_column=1, **TIGHT).fit(X, y[perm])
    popt, pcov = _dense_global(t, g, y, sizes.size)
    np.testing.assert_allclose(est.shared_params_, popt[:1], rtol=1e-9)
    np.testing.assert_allclose(est.local_params_, popt[1:].reshape(-1, 2), rtol=1e-7,
                               atol=1e-10)
    np.testing.assert_allclose(est.perr_, np.sqrt(np.diag(pcov)), rtol=1e-6)


def test_global_fit_covariance_with_weightless_or_degenerate_groups():
    """Zero-weight samples are not degrees of freedom (errors as with the rows
    left out); a group with no weighted samples, or with locally collinear
    parameters, has undetermined local parameters (inf) and leaves the shared
    covariance finite and equal to the dense pseudo-inverse's."""
    import jax

    kw = dict(p0=[1.0, 0.0, 1.0], local_params=["amp", "off"], group_column=1, ftol=1e-12,
              xtol=1e-12, gtol=1e-12)
    rng = np.random.default_rng(1)
    G, P = 10, 20
    t = np.tile(np.linspace(0, 5, P), G)
    g = np.repeat(np.arange(G), P)
    y = 2 * np.exp(-0.8 * t) + 0.3 + 0.01 * rng.normal(size=t.size)
    X = np.column_stack([t, g])
    w = np.ones(t.size)
    w[(g % 2 == 0) & (t > 2)] = 0.0  # half of some groups' samples
    weighted = SparseCurveFitRegressor(decay, **kw).fit(X, y, sample_weight=w)
    dropped = SparseCurveFitRegressor(decay, **kw).fit(X[w > 0], y[w > 0])
    np.testing.assert_allclose(weighted.params_, dropped.params_, rtol=1e-8)
    np.testing.assert_allclose(weighted.perr_, dropped.perr_, rtol=1e-6)

    w = np.ones(t.size)
    w[g == 3] = 0.0  # a group with no weighted sample
    est = SparseCurveFitRegressor(decay, **kw).fit(X, y, sample_weight=w)
    assert np.isfinite(est.perr_[0]) and np.all(np.isinf(est.local_pcov_[3]))
    assert np.all(np.isfinite(est.local_pcov_[np.arange(G) != 3]))

    t2 = t.copy()
    t2[g == 3] = 1.0  # constant feature in group 3: its amp and off are collinear
    est = SparseCurveFitRegressor(decay, **kw).fit(np.column_stack([t2, g]), y)

    def resid(p):
        L = p[1:].reshape(G, 2)
        return L[g, 0] * jnp.exp(-p[0] * t2) + L[g, 1] - y

    with jax.enable_x64(True):
        J = np.asarray(jax.jacfwd(resid)(jnp.asarray(est.params_)))
    C = np.linalg.pinv(J.T @ J, hermitian=True) * 2 * est.cost_ / (t.size - (2 * G + 1))
    np.testing.assert_allclose(est.perr_[0], np.sqrt(C[0, 0]), rtol=1e-6)
    np.testing.assert_allclose(est.perr_[1:3], np.sqrt(np.diag(C))[1:3], rtol=1e-6)
    assert np.all(np.isinf(est.perr_[7:9]))


def test_numpy_model_is_refused_with_a_clear_error():
    """The sparse solvers differentiate the model with JAX: a NumPy model gave
    a bare TracerArrayConversionError in global fits and with an explicit
    `jac_sparsity`."""
    def decay_np(t, amp, off, rate):
        return amp * np.exp(-rate * t) + off

    t = np.tile(np.linspace(0, 3, 20), 3)
    g = np.repeat([0, 1, 2], 20)
    y = np.array([1.0, 2.0, 3.0])[g] * np.exp(-0.8 * t) + 0.1 * g
    for est, X in ((SparseCurveFitRegressor(decay_np, p0=[1, 0, 1], local_params=["amp", "off"],
                                            group_column=1), np.c_[t, g]),
                   (SparseCurveFitRegressor(decay_np, p0=[1, 0, 1],
                                            jac_sparsity=np.ones((60, 3))), t[:, None])):
        with pytest.raises(TypeError, match="`model` that JAX can trace"):
            est.fit(X, y)
