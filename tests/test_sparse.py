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
    # ... and its rows and local parameters leave the degrees of freedom, as
    # if the group had been left out (its parameters counted: 1.9% larger).
    keep = g != 3
    Xk = np.column_stack([t[keep], np.unique(g[keep], return_inverse=True)[1]])
    left_out = SparseCurveFitRegressor(decay, **kw).fit(Xk, y[keep])
    np.testing.assert_allclose(est.shared_params_, left_out.shared_params_, rtol=1e-8)
    np.testing.assert_allclose(np.sqrt(np.diag(est.shared_pcov_)),
                               np.sqrt(np.diag(left_out.shared_pcov_)), rtol=1e-6)

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


def _rowwise(x, off, b, c):
    """Written for one sample set: x is (2, n_rows); not element-wise in x."""
    return off + jnp.exp(0.5 * (x.T @ jnp.stack([b, c])))


@pytest.mark.parametrize("sizes", [[6] * 6, [7] * 5, [7, 7, 6, 7, 7, 6], [2, 30, 3]],
                         ids=["equal-G=P", "equal", "nearly-equal", "ragged"])
def test_global_fit_model_sees_x_as_for_one_sample_set(sizes):
    """The model got x as (k, G, P) in the padded layout of (nearly) equal
    groups: a matrix product over rows then fitted silently wrong (G == P) or
    failed to broadcast. Reference: scipy on the full parameter vector with
    one-hot group columns."""
    from sknlsq._sparse_fit import _global_layout

    rng = np.random.default_rng(3)
    G = len(sizes)
    g = np.repeat(np.arange(G), sizes)
    x1, x2 = rng.normal(size=(2, g.size))
    off = rng.normal(size=G)
    y = off[g] + np.exp(0.5 * (0.8 * x1 - 0.4 * x2)) + 0.01 * rng.normal(size=g.size)
    perm = rng.permutation(g.size)
    X = np.column_stack([x1, g, x2])[perm]
    est = SparseCurveFitRegressor(_rowwise, p0=[0.0, 1.0, 1.0], local_params=["off"],
                                  group_column=1, **TIGHT).fit(X, y[perm])
    onehot = np.eye(G)[g]

    def resid(p):
        return onehot @ p[2:] + np.exp(0.5 * (p[0] * x1 + p[1] * x2)) - y

    def jac(p):
        e = 0.5 * np.exp(0.5 * (p[0] * x1 + p[1] * x2))
        return np.column_stack([e * x1, e * x2, onehot])

    ref = least_squares(resid, np.r_[1.0, 1.0, np.zeros(G)], jac=jac, ftol=1e-15, xtol=1e-15,
                        gtol=1e-15)
    padded = _global_layout(np.vstack([x1, x2]), y, None, g, G)[1]
    assert padded == (sizes != [2, 30, 3])
    np.testing.assert_allclose(est.shared_params_, ref.x[:2], rtol=1e-8)
    np.testing.assert_allclose(est.local_params_[:, 0], ref.x[2:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(est.predict(X), resid(ref.x)[perm] + y[perm], rtol=1e-8)


def test_cg_with_a_non_finite_jacobian_does_not_report_convergence():
    """d/dk sqrt(k x) is infinite at k = 0: CG returned a zero step (NaN
    ||b||) that passed the xtol test, status 3 at the untouched p0. Like the
    dense solver (reference: CurveFitRegressor), it is no success."""
    from sklearn.exceptions import ConvergenceWarning

    x = np.linspace(0.1, 4, 60)
    y = 2 * np.sqrt(0.7 * x)

    def model(x, a, k):
        return a * jnp.sqrt(k * x)

    with pytest.warns(ConvergenceWarning):
        ref = CurveFitRegressor(model, p0=[1.0, 0.0], max_nfev=30).fit(x[:, None], y)
    with pytest.warns(ConvergenceWarning):
        est = SparseCurveFitRegressor(model, p0=[1.0, 0.0], tr_solver="cg",
                                      max_nfev=30).fit(x[:, None], y)
    assert ref.status_ == est.status_ == 0
    np.testing.assert_array_equal(est.params_, ref.params_)


@pytest.mark.parametrize("local_params", [None, []])
def test_global_fit_without_local_parameters_equals_the_dense_fit(local_params):
    """All parameters shared: crashed after the solve (empty local blocks)."""
    t, g, y = _global_data(3, 30)
    X = np.column_stack([t, g])
    est = SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0], local_params=local_params,
                                  group_column=1, ftol=1e-15, xtol=1e-15, gtol=1e-15
                                  ).fit(X, y)
    ref = CurveFitRegressor(decay, p0=[1.0, 0.0, 1.0], **TIGHT).fit(t[:, None], y)
    np.testing.assert_allclose(est.shared_params_, ref.params_, rtol=1e-8)
    np.testing.assert_allclose(est.params_, ref.params_, rtol=1e-8)
    np.testing.assert_allclose(est.shared_pcov_, ref.pcov_, rtol=1e-6)
    np.testing.assert_allclose(est.perr_, ref.perr_, rtol=1e-6)
    assert est.local_params_.shape == (3, 0)
    np.testing.assert_allclose(est.predict(X), ref.predict(t[:, None]), rtol=1e-8)


def test_covariance_of_badly_scaled_problems_is_exact():
    """Column norms 1e9 apart: pinv(J^T J) (cg) and the eigenvalue threshold /
    pinv of the Schur path took the problem for rank-deficient. Reference:
    the dense covariance of the same linear problem (numpy, equilibrated)."""
    rng = np.random.default_rng(0)

    def dense_perr(A, y):
        coef = np.linalg.lstsq(A, y, rcond=None)[0]
        s2 = np.sum((A @ coef - y) ** 2) / (A.shape[0] - A.shape[1])
        d = np.linalg.norm(A, axis=0)
        return coef, np.sqrt(np.diag(np.linalg.inv((A / d).T @ (A / d))) / d ** 2 * s2)

    x = np.linspace(0, 1, 200)

    def mdl(x, a, b):
        return a * 1e4 * x + b * 1e-5

    y = mdl(x, 1.0, 2.0e5) + 0.01 * rng.normal(size=x.size)
    coef, perr = dense_perr(np.column_stack([1e4 * x, np.full_like(x, 1e-5)]), y)
    est = SparseCurveFitRegressor(mdl, p0=[1.0, 1.0], tr_solver="cg", **TIGHT).fit(x[:, None], y)
    np.testing.assert_allclose(est.params_, coef, rtol=1e-6)
    np.testing.assert_allclose(est.perr_, perr, rtol=1e-6)

    G, P = 4, 50
    g = np.repeat(np.arange(G), P)
    x = np.tile(np.linspace(0, 1, P), G)

    def gm(x, a, b, c):
        return a * 1e4 * x + b * 1e-5 + c * 1e-5 * x ** 2

    y = (rng.uniform(1, 2, G)[g] * 1e4 * x + rng.uniform(1e5, 2e5, G)[g] * 1e-5 + 3.0 * x ** 2
         + 0.01 * rng.normal(size=g.size))
    A = np.zeros((g.size, 1 + 2 * G))
    A[:, 0] = 1e-5 * x ** 2
    A[np.arange(g.size), 1 + 2 * g] = 1e4 * x
    A[np.arange(g.size), 2 + 2 * g] = 1e-5
    coef, perr = dense_perr(A, y)
    est = SparseCurveFitRegressor(gm, p0=[1.0, 1.0, 1.0], local_params=["a", "b"],
                                  group_column=1, ftol=1e-14, xtol=1e-14, gtol=1e-14
                                  ).fit(np.column_stack([x, g]), y)
    np.testing.assert_allclose(est.params_, coef, rtol=1e-6)
    np.testing.assert_allclose(est.perr_, perr, rtol=1e-6)


def test_model_output_of_the_wrong_shape_is_named():
    """General path with an explicit `jac_sparsity` or tr_solver='cg': a
    scalar output (a constant model, which CurveFitRegressor fits) crashed
    with an IndexError, and outputs of the wrong length or shape gave bare
    NumPy / JAX broadcast errors."""
    x = np.linspace(0, 3, 50)
    y = 2 * np.exp(-0.4 * x) + 0.01 * np.random.default_rng(0).normal(size=50)
    ref = CurveFitRegressor(lambda x, a: a, p0=[1.0]).fit(x[:, None], y)
    for js in (np.ones((50, 1)), "auto"):
        est = SparseCurveFitRegressor(lambda x, a: a, p0=[1.0], jac_sparsity=js,
                                      tr_solver="cg", **TIGHT).fit(x[:, None], y)
        np.testing.assert_allclose(est.params_, ref.params_, rtol=1e-8)
        np.testing.assert_allclose(est.params_, [y.mean()], rtol=1e-8)
        np.testing.assert_allclose(est.perr_, ref.perr_, rtol=1e-6)
    cases = [(lambda x, a, b: a * x[:10] + b, np.ones((50, 2)), "cg", r"\(10,\)"),
             (lambda x, a, b: (a * x + b)[:, None], "auto", "cg", r"\(50, 1\)"),
             (lambda x, a, b: (a * x + b)[:, None], np.ones((50, 2)), "cg", r"\(50, 1\)"),
             (lambda x, a, b: (a * x + b)[:, None], "auto", "dense", r"\(50, 1\)")]
    for f, js, solver, shape in cases:
        with pytest.raises(ValueError, match=r"`model` returned an array of shape " + shape):
            SparseCurveFitRegressor(f, p0=[1.0, 1.0], jac_sparsity=js,
                                    tr_solver=solver).fit(x[:, None], y)
    g = np.repeat([0, 1], 25)
    with pytest.raises(ValueError, match=r"`model` returned an array of shape \(50, 1\)"):
        SparseCurveFitRegressor(lambda x, a, b: (a * x + b)[:, None], p0=[1.0, 1.0],
                                local_params=["a"], group_column=1).fit(np.c_[x, g], y)


def test_group_ids_beyond_int64_are_refused():
    """1e19 was cast to INT64_MIN for every group (one group at predict)."""
    t, g, y = _global_data(3, 15)
    kw = dict(p0=[1.0, 0.0, 1.0], local_params=["amp", "off"], group_column=1)
    X = np.column_stack([t, np.array([1e19, 2e19, 3e19])[g]])
    with pytest.raises(ValueError, match="group_column"):
        SparseCurveFitRegressor(decay, **kw).fit(X, y)
    ids = np.array([-2.0 ** 62, 0.0, 2.0 ** 62])  # large, but in range: as ids 0, 1, 2
    est = SparseCurveFitRegressor(decay, **kw).fit(np.column_stack([t, ids[g]]), y)
    ref = SparseCurveFitRegressor(decay, **kw).fit(np.column_stack([t, g]), y)
    np.testing.assert_array_equal(est.groups_, ids.astype(np.int64))
    np.testing.assert_allclose(est.params_, ref.params_, rtol=1e-12)
    np.testing.assert_allclose(est.predict(np.column_stack([t, ids[g]])),
                               ref.predict(np.column_stack([t, g])), rtol=1e-12)


def test_refit_leaves_only_the_attributes_of_the_new_fit():
    """groups_, local_params_, shared_pcov_, ... of a global fit survived a
    refit as a general model (set_params(group_column=None)). Reference: a
    fresh estimator fitted the same way."""
    t, g, y = _global_data(2, 20)
    Xg = np.column_stack([t, g])
    kw = dict(p0=[1.0, 0.0, 1.0], local_params=["amp"], group_column=1)
    est = SparseCurveFitRegressor(decay, **kw).fit(Xg, y)
    est.set_params(group_column=None, local_params=None).fit(t[:, None], y)
    fresh = SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0]).fit(t[:, None], y)
    fitted = sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("_"))
    assert fitted == sorted(k for k in vars(fresh) if k.endswith("_") and not k.startswith("_"))
    for name in ("groups_", "shared_params_", "local_params_", "shared_pcov_", "local_pcov_",
                 "local_param_names_", "shared_param_names_"):
        assert not hasattr(est, name)
    np.testing.assert_allclose(est.params_, fresh.params_)
    np.testing.assert_allclose(est.pcov_, fresh.pcov_)
    # ... and back to a global fit: the general fit's covariance is gone.
    est.set_params(**kw).fit(Xg, y)
    fresh = SparseCurveFitRegressor(decay, **kw).fit(Xg, y)
    assert sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("_")) == \
        sorted(k for k in vars(fresh) if k.endswith("_") and not k.startswith("_"))
    assert est.pcov_ is None
    np.testing.assert_allclose(est.local_params_, fresh.local_params_)
