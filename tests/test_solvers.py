"""The pure-JAX solver core against analytical and scipy references."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares

from sknlsq._fit import _bucket, fit_curve
from sknlsq._solvers import Options, Problem, solve

METHODS = ["trf", "lm", "dogbox"]


def _problem(residual, loss="linear"):
    def fun_jac(p, d):
        J, f = jax.jacfwd(lambda q: (residual(q, d), residual(q, d)), has_aux=True)(p)
        return f, J

    return Problem(residual, fun_jac, loss)


def _opts(ftol=1e-10, xtol=1e-10, gtol=1e-10, max_nfev=2000, f_scale=1.0):
    return Options(np.float64(ftol), np.float64(xtol), np.float64(gtol), np.int32(max_nfev),
                   np.float64(f_scale))


def _run(problem, x0, data, lb=None, ub=None, method="trf", **kw):
    n = len(x0)
    lb = np.full(n, -np.inf) if lb is None else np.asarray(lb, float)
    ub = np.full(n, np.inf) if ub is None else np.asarray(ub, float)
    has_bounds = bool(np.any(np.isfinite(lb) | np.isfinite(ub)))
    with jax.enable_x64(True):
        f = jax.jit(partial(solve, problem, method=method, has_bounds=has_bounds,
                            use_jac_scale=method == "lm", refine=kw.pop("refine", 5)))
        return jax.device_get(f(np.asarray(x0, float), data, lb, ub, np.ones(n), _opts(**kw)))


def rosenbrock(p, d):
    return jnp.stack([10 * (p[1] - p[0] ** 2), 1 - p[0]])


@pytest.mark.parametrize("method", METHODS)
def test_rosenbrock_reaches_exact_minimum(method):
    sol = _run(_problem(rosenbrock), [-1.2, 1.0], {}, method=method)
    assert sol.status > 0
    np.testing.assert_allclose(sol.x, [1.0, 1.0], rtol=1e-10)
    assert sol.cost < 1e-20


@pytest.mark.parametrize("method", METHODS)
def test_linear_least_squares_matches_lstsq(method):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 4))
    b = rng.normal(size=50)

    def res(p, d):
        return d["A"] @ p - d["b"]

    sol = _run(_problem(res), np.zeros(4), {"A": A, "b": b}, method=method)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(sol.x, ref, rtol=1e-10, atol=1e-12)
    # Q^T f and R at the solution reproduce the normal equations' gradient.
    np.testing.assert_allclose(sol.R.T @ sol.qtf, A.T @ (A @ sol.x - b), atol=1e-10)


@pytest.mark.parametrize("method", ["trf", "dogbox"])
def test_bounded_solution_on_active_bound(method):
    # min (p0 - 3)^2 + (p1 + 1)^2 on [0, 2] x [0, 2]: solution (2, 0), both active.
    def res(p, d):
        return jnp.stack([p[0] - 3.0, p[1] + 1.0])

    sol = _run(_problem(res), [1.0, 1.0], {}, lb=[0, 0], ub=[2, 2], method=method)
    np.testing.assert_allclose(sol.x, [2.0, 0.0], atol=1e-8)
    assert list(sol.active_mask) == [1, -1]


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan"])
def test_robust_loss_matches_scipy_least_squares(loss):
    rng = np.random.default_rng(3)
    t = np.linspace(0, 3, 80)
    y = 2.0 * np.exp(-0.8 * t) + 0.02 * rng.normal(size=t.size)
    y[::9] += 1.0  # outliers

    def res(p, d):
        return p[0] * jnp.exp(-p[1] * d["t"]) - d["y"]

    sol = _run(_problem(res, loss), [1.0, 1.0], {"t": t, "y": y}, f_scale=0.1,
               ftol=1e-14, xtol=1e-14, gtol=1e-14)
    ref = least_squares(lambda p: p[0] * np.exp(-p[1] * t) - y, [1.0, 1.0], loss=loss,
                        f_scale=0.1, ftol=1e-14, xtol=1e-14, gtol=1e-14)
    np.testing.assert_allclose(sol.x, ref.x, rtol=1e-8)
    np.testing.assert_allclose(sol.cost, ref.cost, rtol=1e-10)


def test_max_nfev_gives_status_zero():
    sol = _run(_problem(rosenbrock), [-1.2, 1.0], {}, max_nfev=3)
    assert sol.status == 0
    assert sol.nfev == 3


def test_nonfinite_start_is_reported():
    def res(p, d):
        return jnp.stack([jnp.log(p[0]), p[1]])

    sol = _run(_problem(res), [-1.0, 1.0], {})
    assert sol.status == -2


def test_solve_vmaps_over_curves():
    """One compiled solve vmapped over curves equals the curves solved one by one."""
    t = np.linspace(0, 4, 60)
    amps = np.array([1.0, 2.0, 3.0, 0.5])
    rates = np.array([0.3, 0.9, 1.5, 2.2])
    Y = amps[:, None] * np.exp(-rates[:, None] * t)

    def res(p, d):
        return p[0] * jnp.exp(-p[1] * d["t"]) - d["y"]

    problem = _problem(res)
    with jax.enable_x64(True):
        one = partial(solve, problem, method="trf", has_bounds=False, use_jac_scale=False)
        batched = jax.jit(jax.vmap(one, in_axes=(0, {"t": None, "y": 0}, None, None, None,
                                                 None)))
        sol = batched(np.ones((4, 2)), {"t": t, "y": Y}, np.full(2, -np.inf),
                      np.full(2, np.inf), np.ones(2), _opts())
    np.testing.assert_allclose(np.asarray(sol.x), np.stack([amps, rates], 1), rtol=1e-9)
    for i in range(4):
        single = _run(problem, [1.0, 1.0], {"t": t, "y": Y[i]})
        np.testing.assert_allclose(np.asarray(sol.x)[i], single.x, rtol=1e-12)


def _decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


@pytest.mark.parametrize("m", [17, 100, 1000, 1033])
@pytest.mark.parametrize("method", METHODS)
def test_padding_to_bucket_does_not_change_the_fit(m, method, monkeypatch):
    rng = np.random.default_rng(m)
    x = np.linspace(0, 4, m)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.05 * rng.normal(size=m)
    w = rng.uniform(0.5, 2.0, m)
    assert _bucket(m) >= m
    padded = fit_curve(_decay, x, y, sample_weight=w, method=method, p0=[1, 1, 1])
    import sknlsq._fit as fit_mod

    monkeypatch.setattr(fit_mod, "_bucket", lambda k: k)
    exact = fit_curve(_decay, x, y, sample_weight=w, method=method, p0=[1, 1, 1])
    # Mathematically identical; the QR of a taller matrix rounds differently, so
    # the two runs may stop at iterates that differ in the last ~10 digits.
    np.testing.assert_allclose(padded.params, exact.params, rtol=1e-9)
    np.testing.assert_allclose(padded.pcov, exact.pcov, rtol=1e-7)
    np.testing.assert_allclose(padded.fun, exact.fun, rtol=0, atol=1e-9)
    assert padded.fun.shape == (m,)


def test_interleaved_fits_share_a_program_without_leaking():
    x = np.linspace(0, 4, 300)
    ys = [a * np.exp(-b * x) + c for a, b, c in [(1, 1, 0), (3, 0.5, 1), (2, 2, -1)]]
    first = [fit_curve(_decay, x, y, p0=[1, 1, 1]).params for y in ys]
    again = [fit_curve(_decay, x, y, p0=[1, 1, 1]).params for y in ys[::-1]][::-1]
    np.testing.assert_allclose(first, again, rtol=0, atol=0)
    np.testing.assert_allclose(first, [(1, 1, 0), (3, 0.5, 1), (2, 2, -1)], rtol=1e-9,
                               atol=1e-12)


def test_bucket_sizes():
    assert _bucket(1) == 16
    assert _bucket(900) == _bucket(1000) == _bucket(1033)  # the example
    for m in range(1, 300_000, 37):
        b = _bucket(m)
        assert m <= b <= max(24, 1.25 * m + 8) and b % 8 == 0


# --------------------------------------------------------------------------
# Chunked linearisation: Householder TSQR pass vs preconditioned Gram pass
# --------------------------------------------------------------------------


def _chunked_poly(x, y, cs, loss="linear"):
    """Cubic-polynomial-times-exponential model read in chunks of ``cs`` rows
    (the last chunk overlaps the one before; its repeated rows count zero)."""
    from sknlsq._solvers import ChunkedProblem

    M = x.size

    def fun(p, d):
        t = d["x"]
        r = (p[0] + p[1] * t + p[2] * t ** 2 + p[3] * t ** 3) * jnp.exp(-p[4] * t) - d["y"]
        return jnp.where(d["fresh"], r, 0.0)

    def fun_jac(p, d):
        return fun(p, d), jax.jacfwd(fun)(p, d)

    def read(k, data):
        start = jnp.minimum(k * cs, M - cs)
        take = partial(jax.lax.dynamic_slice_in_dim, start_index=start, slice_size=cs)
        chunk = {"x": take(data["x"]), "y": take(data["y"]),
                 "fresh": start + jnp.arange(cs) >= k * cs}
        return chunk, (k + 1) * cs < M

    return ChunkedProblem(fun, fun_jac, read, loss), {"x": x, "y": y, "m": np.float64(M)}


@pytest.mark.parametrize("shift", [0.0, 5.0], ids=["kappa~1e3", "kappa~1e7"])
@pytest.mark.parametrize("loss", ["linear", "soft_l1"])
def test_gram_pass_matches_householder_pass(shift, loss):
    """The Gram pass (used once a previous R is known) gives the same
    linearisation as the Householder TSQR pass: with a good hint through its
    own dot products, and with a poor one (here the identity on a badly
    conditioned Jacobian) by repeating the pass with the factor of the pass
    before as preconditioner (shifted CholeskyQR3)."""
    from sknlsq._solvers import linearize

    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(shift, shift + 1, 5000))
    p = np.array([1.0, -0.5, 0.2, -0.01, 0.3])
    y = (p[0] + p[1] * x + p[2] * x ** 2 + p[3] * x ** 3) * np.exp(-p[4] * x) \
        + 0.01 * rng.standard_normal(x.size)
    problem, data = _chunked_poly(x, y, 700, loss)
    p_near = p * (1 + 1e-3 * rng.standard_normal(p.size))
    with jax.enable_x64(True):
        lin = jax.jit(lambda q, h: linearize(problem, q, data, 1.0, hint=h))
        ref = jax.device_get(jax.jit(lambda q: linearize(problem, q, data, 1.0))(p))
        hint_good = jax.device_get(jax.jit(lambda q: linearize(problem, q, data, 1.0))(p_near)).R
        for hint in (hint_good, np.eye(5)):
            got = jax.device_get(lin(p, hint))
            A_ref, A_got = ref.R.T @ ref.R, got.R.T @ got.R
            np.testing.assert_allclose(A_got, A_ref, rtol=1e-9, atol=1e-12 * np.abs(A_ref).max())
            np.testing.assert_allclose(got.g, ref.g, rtol=1e-9, atol=1e-12 * np.abs(ref.g).max())
            np.testing.assert_allclose(got.R.T @ got.qtf, got.g, rtol=1e-9,
                                       atol=1e-12 * np.abs(ref.g).max())
            np.testing.assert_allclose(got.cost, ref.cost, rtol=1e-12)
            # What the solvers use R for: Gauss-Newton steps and the covariance,
            # whose accuracy a plain Gram matrix would lose on the second case.
            step_ref = np.linalg.solve(ref.R, ref.qtf)
            np.testing.assert_allclose(np.linalg.solve(got.R, got.qtf), step_ref, rtol=1e-6)
            # The covariance from R^{-1} R^{-T} (inverting R^T R would lose
            # cond(R)^2 of precision whatever R's accuracy).
            Ri_ref, Ri_got = np.linalg.inv(ref.R), np.linalg.inv(got.R)
            cov_ref = Ri_ref @ Ri_ref.T
            np.testing.assert_allclose(Ri_got @ Ri_got.T, cov_ref, rtol=1e-6,
                                       atol=1e-9 * np.abs(cov_ref).max())


def test_lm_in_chunks_with_fewer_weighted_rows_than_parameters():
    """A chunked 'lm' fit where only one row carries weight (m = 1 < n = 2):
    the Gauss-Newton step is the minimum-norm solution of the underdetermined
    system, as in memory; it was dropped whole, so the fit stopped at p0 with
    a success status."""
    import warnings

    from sknlsq import CurveFitRegressor, StreamingCurveFitRegressor

    def f(x, a, b):
        return a * jnp.exp(-b * x)

    x = np.linspace(0, 3, 300)
    y = 2 * np.exp(-0.7 * x)
    sw = np.zeros(300)
    sw[5] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = StreamingCurveFitRegressor(f, p0=[1, 1], chunk_size=64).fit(x[:, None], y,
                                                                      sample_weight=sw)
        c = CurveFitRegressor(f, p0=[1, 1]).fit(x[:, None], y, sample_weight=sw)
    assert s.cost_ < 1e-20 and 1 <= s.status_ <= 4
    np.testing.assert_allclose(s.params_, c.params_, rtol=1e-8)


def test_residuals_whose_squares_overflow_are_refused_not_converged():
    """|f| ~ 1e155: finite residuals whose sum of squares overflows float64.
    The cost was inf and MINPACK's scaled gradient 0, so 'lm' reported
    convergence at the untouched p0."""
    from sknlsq import curve_fit

    x = np.linspace(0, 4, 50)
    y = 1e155 * (2.5 * np.exp(-1.3 * x) + 0.5)
    for method in ("lm", "trf"):
        with pytest.raises(ValueError, match="overflows"):
            curve_fit(lambda x, a, b, c: 1e155 * (a * jnp.exp(-b * x) + c), x, y, method=method)
