"""Batched fits (one parameter vector per curve) against one-by-one references."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import OptimizeWarning
from scipy.optimize import curve_fit as scipy_curve_fit

import sknlsq._batch as batch_mod
from sknlsq import curve_fit
from sknlsq._batch import fit_curves


def decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def decay_np(x, a, b, c):
    return a * np.exp(-b * x) + c


def _curves(K, M=120, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 5, M)
    true = np.stack([rng.uniform(1, 3, K), rng.uniform(0.4, 2.0, K), rng.uniform(-1, 1, K)], 1)
    Y = decay_np(x[None, :], *true.T[:, :, None]) + 0.01 * rng.normal(size=(K, M))
    return x, Y, true


@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
def test_batch_matches_tight_scipy_per_curve(method):
    x, Y, _ = _curves(40)
    popt, pcov = curve_fit(decay, x, Y, p0=[1, 1, 0], batch=True, method=method)
    assert popt.shape == (40, 3) and pcov.shape == (40, 3, 3)
    for k in range(0, 40, 7):
        ref, ref_cov = scipy_curve_fit(decay_np, x, Y[k], p0=[1, 1, 0], ftol=1e-14,
                                       xtol=1e-14, gtol=1e-14)
        np.testing.assert_allclose(popt[k], ref, rtol=1e-6)
        np.testing.assert_allclose(pcov[k], ref_cov, rtol=1e-3, atol=1e-12)


def test_retiring_gives_the_same_answers_as_plain_vmap(monkeypatch):
    x, Y, _ = _curves(70)
    monkeypatch.setattr(batch_mod, "MAX_SLOTS", 16)  # force a queue and refills
    retired = fit_curves(decay, x, Y, p0=[1, 1, 0], retire=True)
    plain = fit_curves(decay, x, Y, p0=[1, 1, 0], retire=False)
    # Same maths; the batch width changes rounding in the batched kernels, so the
    # two runs may stop at iterates a few 1e-10 apart (and take different numbers
    # of refinement steps). The answers agree far inside the 1e-6 accuracy target.
    np.testing.assert_allclose(retired.params, plain.params, rtol=1e-8)
    assert retired.success.all() and plain.success.all()
    no_refine = [fit_curves(decay, x, Y, p0=[1, 1, 0], retire=r, refine=0) for r in (True, False)]
    np.testing.assert_allclose(no_refine[0].params, no_refine[1].params, rtol=1e-8)


def test_per_curve_p0_and_bounds():
    x, Y, true = _curves(6)
    p0 = true * 1.3
    lb = np.tile([0.0, 0.0, -2.0], (6, 1))
    ub = np.tile([10.0, 10.0, 2.0], (6, 1))
    ub[2, 1] = 0.3  # one curve with an active bound on the rate
    res = fit_curves(decay, x, Y, p0=np.minimum(p0, ub - 1e-3), bounds=(lb, ub))
    for k in range(6):
        one = scipy_curve_fit(decay_np, x, Y[k], p0=np.minimum(p0[k], ub[k] - 1e-3),
                              bounds=(lb[k], ub[k]), ftol=1e-14, xtol=1e-14, gtol=1e-14)[0]
        np.testing.assert_allclose(res.params[k], one, rtol=1e-5)
    assert res.params[2, 1] == pytest.approx(0.3)
    # The same bounds as a list or as scipy.optimize.Bounds, as scipy accepts them.
    from scipy.optimize import Bounds

    for bounds in ([lb, ub], Bounds(lb, ub)):
        again = fit_curves(decay, x, Y, p0=np.minimum(p0, ub - 1e-3), bounds=bounds)
        np.testing.assert_array_equal(again.params, res.params)
    with pytest.raises(ValueError, match="p0"):
        fit_curves(decay, x, Y, p0=[["a", 1, 1]] * 6)


def test_ragged_curves_are_fitted_on_their_own_points():
    x, Y, _ = _curves(5, M=150)
    Y = Y.copy()
    Y[1, 100:] = np.nan  # a shorter curve
    Y[3, ::4] = np.nan  # scattered missing values
    res = fit_curves(decay, x, Y, p0=[1, 1, 0], nan_policy="omit")
    for k in (1, 3):
        ok = ~np.isnan(Y[k])
        one, one_cov = curve_fit(decay, x[ok], Y[k, ok], p0=[1, 1, 0])
        np.testing.assert_allclose(res.params[k], one, rtol=1e-8)
        np.testing.assert_allclose(res.pcov[k], one_cov, rtol=1e-6)
        assert res.n_points[k] == ok.sum()
    with pytest.raises(ValueError, match="NaN"):
        fit_curves(decay, x, Y, p0=[1, 1, 0])
    with pytest.raises(ValueError, match="nan_policy"):
        fit_curves(decay, x, Y, p0=[1, 1, 0], check_finite=False)


def test_zero_weight_columns_match_missing_values():
    x, Y, _ = _curves(3, M=100)
    sw = np.ones_like(Y)
    sw[0, :40] = 0.0
    res = fit_curves(decay, x, Y, p0=[1, 1, 0], sample_weight=sw)
    one = curve_fit(decay, x[40:], Y[0, 40:], p0=[1, 1, 0])[0]
    np.testing.assert_allclose(res.params[0], one, rtol=1e-8)


def test_isolated_failures_do_not_touch_other_curves():
    x, Y, _ = _curves(6)
    Y = Y.copy()
    Y[1, :] = np.nan  # no data at all
    sigma = np.ones_like(Y)
    sigma[4, 0] = 0.0  # infinite weight: residuals not finite at p0
    clean = fit_curves(decay, x, np.delete(Y, [1, 4], 0), p0=[1, 1, 0])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        popt, pcov, info, mesg, ier = curve_fit(decay, x, Y, p0=[1, 1, 0], sigma=sigma,
                                                batch=True, nan_policy="omit",
                                                full_output=True)
    assert sum(issubclass(w.category, OptimizeWarning) for w in rec) == 1
    assert ier[1] == batch_mod.TOO_FEW_POINTS and ier[4] == -2
    assert np.all(np.isnan(popt[[1, 4]]))
    assert np.all(np.isinf(pcov[[1, 4]]))
    np.testing.assert_allclose(popt[[0, 2, 3, 5]], clean.params, rtol=1e-8)
    assert "Fewer valid points" in mesg[1]


def test_non_converged_curve_keeps_its_iterate_and_status():
    x, Y, _ = _curves(4)
    res = fit_curves(decay, x, Y, p0=[1, 1, 0], max_nfev=3)
    assert np.all(res.status == 0) and not res.success.any()
    assert np.all(np.isfinite(res.params))
    assert np.all(res.nfev == 3)


def test_batch_input_validation():
    x, Y, _ = _curves(3)
    with pytest.raises(ValueError, match="p0"):
        fit_curves(decay, x, Y, p0=np.ones((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        fit_curves(decay, x, Y[0], p0=[1, 1, 0])
    with pytest.raises(ValueError, match="xdata"):
        fit_curves(decay, x[:-1], Y, p0=[1, 1, 0])
    with pytest.raises(ValueError, match="bounds"):
        fit_curves(decay, x, Y, p0=[1, 1, 0], bounds=(np.zeros((3, 3)), np.zeros((3, 3))))


def test_numpy_model_in_a_batch_uses_the_host_path_and_keeps_user_float32():
    x, Y, _ = _curves(3, M=60)
    with pytest.warns(UserWarning, match="(?i)finite differences"):
        res = fit_curves(decay_np, x, Y, p0=[1, 1, 0])
    ref = fit_curves(decay, x, Y, p0=[1, 1, 0])
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-6)
    assert jnp.ones(2).dtype == jnp.float32  # the global x64 flag was restored


def test_batched_lm_returns_minpack_codes_like_a_single_curve():
    """full_output with batch=True: 'lm' gave least_squares' status codes
    (2 = ftol) where the single-curve call gives MINPACK's ier (1 = ftol)."""
    rng = np.random.default_rng(7)
    x = np.linspace(0, 4, 30)
    Y = np.stack([2.0 * np.exp(-1.1 * x) + 0.3, 1.5 * np.exp(-0.7 * x) + 0.8])
    Y = Y + 0.02 * rng.standard_normal(Y.shape)

    def f(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    _, _, info, mesg, ier = curve_fit(f, x, Y, batch=True, full_output=True)
    for k, y in enumerate(Y):
        _, _, _, m1, ier1 = curve_fit(f, x, y, full_output=True)
        assert ier[k] == ier1 and mesg[k] == m1
    assert np.all(info["status"] > 0)


# --------------------------------------------------------------------------
# The batched Gram linearisation (``_problem._linearize_columns``)
# --------------------------------------------------------------------------


def _column_problems():
    """One problem per route: the batched one (Gram passes over the Jacobian's
    columns) and the reference (LAPACK's QR of ``[J | f]``). Data: ``(y, s)``,
    ``s`` the scale of the last column (0: a zero column)."""
    import jax

    from sknlsq._solvers._problem import Problem

    x = jnp.linspace(0.0, 5.0, 90)

    def fun(p, d):
        y, s = d
        return p[0] * jnp.exp(-p[1] * x) + p[2] + p[3] * s * x - y

    def fun_jac(p, d):
        J, f = jax.jacfwd(lambda q: (fun(q, d), fun(q, d)), has_aux=True)(p)
        return f, J

    def fun_jac_t(p, d):
        f, J = fun_jac(p, d)
        return f, J.T

    batched = Problem(fun, fun_jac, "linear", batched=True, fun_jac_t=fun_jac_t)
    return x, batched, Problem(fun, fun_jac, "linear")


def _row_normalised(R, qtf):
    """R and Q^T f with R's diagonal made non-negative (R is unique up to
    the signs of its rows)."""
    s = np.where(np.diagonal(R, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
    return R * s[..., :, None], qtf * s


@pytest.mark.parametrize("case", ["near hint", "identity hint", "rank deficient"])
def test_column_linearization_matches_householder(case):
    import jax

    from sknlsq._config import x64
    from sknlsq._solvers import _problem

    with x64():
        x, batched, reference = _column_problems()
        rng = np.random.default_rng(3)
        K = 6
        P = jnp.asarray(np.column_stack([rng.uniform(1, 3, K), rng.uniform(0.5, 2, K),
                                         rng.uniform(-1, 1, K), rng.uniform(0.5, 1.5, K)]))
        Y = jnp.asarray(P[:, :1] * np.exp(-P[:, 1:2] * np.asarray(x)) + P[:, 2:3]
                        + 0.01 * rng.standard_normal((K, x.shape[0])))
        S = jnp.full(K, 0.0 if case == "rank deficient" else 1e3)

        def ref(p, y, s):
            return _problem.linearize(reference, p, (y, s), 1.0)

        want = jax.vmap(ref)(P, Y, S)
        if case == "near hint":
            hint = jax.vmap(ref)(P * (1 + 1e-3), Y, S).R
        else:  # the identity: column scales 1 .. 1e3 need more than one pass
            hint = jnp.broadcast_to(jnp.eye(4), (K, 4, 4))
        assert _problem.linearizes_by_columns(batched, P[0])
        got = jax.vmap(lambda p, y, s, h: _problem.linearize(batched, p, (y, s), 1.0, hint=h))(
            P, Y, S, hint)
    np.testing.assert_array_equal(got.f_true, want.f_true)
    np.testing.assert_allclose(got.cost, want.cost, rtol=1e-14)
    Rg, qg = _row_normalised(np.asarray(got.R), np.asarray(got.qtf))
    Rw, qw = _row_normalised(np.asarray(want.R), np.asarray(want.qtf))
    scale = np.abs(Rw).max(axis=(1, 2))[:, None, None]
    if case == "rank deficient":
        # The last column is zero: R's last row and column are zero up to
        # rounding, which LAPACK and the passes place differently.
        Rg, Rw, qg, qw = Rg[:, :3, :3], Rw[:, :3, :3], qg[:, :3], qw[:, :3]
    np.testing.assert_allclose(Rg / scale, Rw / scale, atol=1e-12)
    np.testing.assert_allclose(qg, qw, rtol=1e-9, atol=1e-12 * float(np.abs(qw).max()))
    np.testing.assert_allclose(got.g, want.g, rtol=1e-9,
                               atol=1e-12 * float(np.abs(want.g).max()))


@pytest.mark.parametrize("name", ["MGH09", "BoxBOD", "Rat43", "Eckerle4", "MGH10",
                                  "Bennett5"])
def test_batched_nist_problems_reach_the_certified_values(name):
    """The hardest NIST StRD problems with at most 4 parameters, both starts
    as two curves of one batch: every curve's parameters and standard
    deviations agree with the certified values (the batched linearisation
    squares no condition number it cannot afford)."""
    from nist_strd import digits, load

    P = load(name)
    Y = np.stack([P.y, P.y])
    popt, pcov = curve_fit(P.model, P.x, Y, p0=np.stack([P.start1, P.start2]), batch=True)
    sd = np.sqrt(np.diagonal(pcov, axis1=1, axis2=2))
    for k in range(2):
        assert digits(popt[k], P.certified) >= 6.5, (name, k, popt[k])
        assert digits(sd[k], P.certified_sd) >= 6.0, (name, k, sd[k])
