"""Bad input to ``sknlsq.curve_fit`` fails fast with a clear message.

Every case must raise (never hang) an exception from Python itself or from
sknlsq, not a bare JAX error, and its message must name the argument at
fault. Exception types follow scipy's: ``TypeError`` where scipy raises
``TypeError``, ``ValueError`` elsewhere. Data are tiny on purpose.
"""

from __future__ import annotations

import threading
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from sknlsq import curve_fit

TIMEOUT_S = 120  # generous: the first call may compile


def decay(x, a, b):
    return a * jnp.exp(-b * x)


def decay3(x, a, b, c):
    return a * jnp.exp(-b * x) + c


X = np.linspace(0.0, 2.0, 8)
Y = 2.0 * np.exp(-1.3 * X)


def call_bounded(fn):
    """Run ``fn()``; fail the test (instead of hanging) if it does not return."""
    box = {}

    def target():
        try:
            with warnings.catch_warnings():
                # A fallback or covariance warning on the way to the error is
                # not what these tests are about.
                warnings.simplefilter("ignore")
                box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if thread.is_alive():
        pytest.fail(f"curve_fit did not return within {TIMEOUT_S} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def assert_raises(exc_type, match, fn):
    with pytest.raises(exc_type, match=match) as excinfo:
        call_bounded(fn)
    err = excinfo.value
    module = type(err).__module__
    assert module == "builtins" or module.startswith("sknlsq"), (
        f"{type(err).__module__}.{type(err).__name__} leaked out: {err}"
    )
    msg = str(err)
    assert msg.strip(), "empty error message"
    assert "Traceback" not in msg and "jax._src" not in msg and "Traced<" not in msg, msg
    return excinfo


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["xdata", "ydata"])
def test_non_finite_data(where, bad):
    x, y = X.copy(), Y.copy()
    (x if where == "xdata" else y)[3] = bad
    # scipy: ValueError("array must not contain infs or NaNs")
    assert_raises(ValueError, "xdata|ydata|infs or NaNs", lambda: curve_fit(decay, x, y))


def test_non_finite_2d_xdata():
    x = np.stack([X, X])
    x[1, 2] = np.nan
    assert_raises(ValueError, "xdata|ydata|infs or NaNs",
                  lambda: curve_fit(lambda x, a, b: a * x[0] + b * x[1], x, Y))


@pytest.mark.parametrize("method", [None, "trf"])
def test_length_mismatch(method):
    # scipy only fails when the model output meets ydata ("operands could not
    # be broadcast together ..."); sknlsq must say which arrays disagree.
    assert_raises(ValueError, "xdata|ydata",
                  lambda: curve_fit(decay, X, Y[:-1], method=method))


def test_fewer_points_than_parameters():
    # scipy: TypeError("The number of func parameters=3 must not exceed the
    # number of data points=2") for method 'lm' (the default when unbounded).
    assert_raises(TypeError, "number of", lambda: curve_fit(decay3, X[:2], Y[:2]))
    # scipy: TypeError("Improper input: func input vector length N=3 must not
    # exceed func output vector length M=1") from MINPACK for a single point.
    assert_raises(TypeError, "Improper input", lambda: curve_fit(decay3, X[:1], Y[:1]))


@pytest.mark.parametrize("method", ["trf", "dogbox"])
def test_underdetermined_fits_run_with_trf_and_dogbox(method):
    # scipy's least_squares solves them (only 'lm' needs M >= N); the
    # covariance cannot be estimated.
    from scipy.optimize import OptimizeWarning
    from scipy.optimize import curve_fit as scipy_curve_fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        ref = scipy_curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, X[:2], Y[:2],
                              p0=[1.0, 1.0, 0.0], method=method)[0]
        popt, pcov = curve_fit(decay3, X[:2], Y[:2], p0=[1.0, 1.0, 0.0], method=method)
    np.testing.assert_allclose(popt, ref, rtol=1e-6)
    assert np.all(np.isinf(pcov))


def test_empty_ydata():
    # scipy: ValueError("`ydata` must not be empty!")
    assert_raises(ValueError, "ydata", lambda: curve_fit(decay, np.array([]), np.array([])))


@pytest.mark.parametrize("nan_policy", ["propagate", "bogus"])
def test_unsupported_nan_policy(nan_policy):
    y = Y.copy()
    y[2] = np.nan
    assert_raises(ValueError, "nan_policy",
                  lambda: curve_fit(decay, X, y, nan_policy=nan_policy))


def test_nan_policy_raise():
    # scipy: ValueError("The input contains nan values")
    y = Y.copy()
    y[2] = np.nan
    assert_raises(ValueError, "(?i)nan", lambda: curve_fit(decay, X, y, nan_policy="raise"))


# --------------------------------------------------------------------------
# Parameters and bounds
# --------------------------------------------------------------------------


@pytest.mark.parametrize("p0", [[1.0], [1.0, 1.0, 1.0]])
def test_p0_wrong_length(p0):
    # scipy lets Python's own TypeError from the call through
    # ("decay() takes 3 positional arguments but 4 were given"); sknlsq
    # keeps the type and names p0.
    assert_raises(TypeError, "p0", lambda: curve_fit(decay, X, Y, p0=p0))


def test_parameter_count_undeterminable():
    # A model f(x, *params) needs p0; scipy: ValueError("Unable to determine
    # number of fit parameters.")
    assert_raises(ValueError, "p0|parameters",
                  lambda: curve_fit(lambda x, *p: p[0] * x, X, Y))


@pytest.mark.parametrize("method", [None, "trf", "dogbox"])
def test_p0_outside_bounds(method):
    # scipy: ValueError("Initial guess is outside of provided bounds")
    assert_raises(ValueError, "p0|bounds|infeasible",
                  lambda: curve_fit(decay, X, Y, p0=[20.0, 1.0], bounds=(0, 10), method=method))


@pytest.mark.parametrize("bounds", [(10, 0), (1, 1), ([0, 5], [1, 5])])
def test_lower_not_below_upper(bounds):
    # scipy: ValueError("Each lower bound must be strictly less than each upper bound.")
    assert_raises(ValueError, "bound", lambda: curve_fit(decay, X, Y, bounds=bounds))


def test_lm_with_bounds():
    # scipy: ValueError("Method 'lm' only works for unconstrained problems. ...")
    assert_raises(ValueError, "lm",
                  lambda: curve_fit(decay, X, Y, bounds=(0, 10), method="lm"))


# --------------------------------------------------------------------------
# Method, loss, keywords
# --------------------------------------------------------------------------


def test_unknown_method():
    # scipy: ValueError("`method` must be 'trf', 'dogbox' or 'lm'.")
    assert_raises(ValueError, "method", lambda: curve_fit(decay, X, Y, method="newton"))


def test_unknown_loss():
    # scipy: ValueError("`loss` must be one of dict_keys([...]) or a callable.")
    assert_raises(ValueError, "loss",
                  lambda: curve_fit(decay, X, Y, method="trf", loss="l1"))


def test_robust_loss_with_lm():
    # scipy: TypeError("leastsq() got an unexpected keyword argument 'loss'")
    assert_raises((TypeError, ValueError), "loss",
                  lambda: curve_fit(decay, X, Y, method="lm", loss="huber"))


@pytest.mark.parametrize("method", [None, "trf"])
def test_unknown_keyword(method):
    # scipy: TypeError("leastsq() / least_squares() got an unexpected keyword
    # argument 'tolerance'")
    assert_raises(TypeError, "tolerance",
                  lambda: curve_fit(decay, X, Y, method=method, tolerance=1e-3))


def test_args_keyword_rejected():
    # scipy: ValueError("'args' is not a supported keyword argument.")
    assert_raises(ValueError, "args", lambda: curve_fit(decay, X, Y, args=(1,)))


# --------------------------------------------------------------------------
# sigma
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigma",
    [np.ones(X.size - 1), np.eye(X.size - 1), np.ones((X.size, X.size, 1)), np.ones((X.size, 2))],
    ids=["1d-short", "2d-small", "3d", "2d-rect"],
)
def test_sigma_wrong_shape(sigma):
    # scipy: ValueError("`sigma` has incorrect shape.")
    assert_raises(ValueError, "sigma", lambda: curve_fit(decay, X, Y, sigma=sigma))


@pytest.mark.parametrize(
    "sigma",
    [np.ones((X.size, X.size)), -np.eye(X.size), np.diag(np.r_[1.0, 0.0, np.ones(X.size - 2)])],
    ids=["singular", "negative", "zero-variance"],
)
def test_sigma_not_positive_definite(sigma):
    # scipy: ValueError("`sigma` must be positive definite.") from LinAlgError
    assert_raises(ValueError, "sigma", lambda: curve_fit(decay, X, Y, sigma=sigma))


# --------------------------------------------------------------------------
# Misbehaving models
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", [None, "trf"])
def test_model_returns_wrong_shape(method):
    # scipy: ValueError("operands could not be broadcast together with shapes (3,) (8,)")
    assert_raises(ValueError, "model|shape",
                  lambda: curve_fit(lambda x, a, b: a * jnp.ones(3) + b, X, Y, method=method))


@pytest.mark.parametrize("kwargs, name", [
    (dict(sigma="a"), "sigma"), (dict(p0=["a", 1.0]), "p0"), (dict(factor="a"), "factor"),
    (dict(factor=-1.0), "factor"), (dict(factor=0.0), "factor"), (dict(diff_step="a"), "diff_step"),
    (dict(x_scale=["a", 1.0]), "x_scale")])
@pytest.mark.parametrize("batch", [False, True])
def test_non_numeric_or_non_positive_settings_name_the_argument(kwargs, name, batch):
    # scipy: "could not convert string to float" / "Improper input parameters"
    # (factor <= 0); sknlsq names the argument, single and batched alike.
    kwargs = dict(dict(p0=[1.0, 1.0]), **kwargs)
    if name == "diff_step":
        kwargs["jac"] = "2-point"
    ydata = np.stack([Y, 2 * Y]) if batch else Y
    assert_raises(ValueError, f"`{name}`",
                  lambda: curve_fit(decay, X, ydata, batch=batch, **kwargs))


@pytest.mark.parametrize("jac", [lambda x, a, b: jnp.ones((len(X), 1)),
                                 lambda x, a, b: np.ones((len(X), 3)),
                                 lambda x, a, b: jnp.ones((2, len(X)))],
                         ids=["jax-columns", "numpy-columns", "transposed"])
def test_jac_returns_wrong_shape(jac):
    # scipy: ValueError from least_squares / MINPACK about the Jacobian's shape.
    assert_raises(ValueError, r"`jac`.*shape.*\(8, 2\)",
                  lambda: curve_fit(decay, X, Y, p0=[1.0, 1.0], jac=jac))
    # A jac that ignores x's length (so cannot be padded) but is right for the
    # data runs at the exact shape and agrees with autodiff.
    fixed = curve_fit(decay, X, Y, p0=[1.0, 1.0],
                      jac=lambda x, a, b: jnp.stack([jnp.exp(-b * X), -a * X * jnp.exp(-b * X)],
                                                    axis=1))[0]
    np.testing.assert_allclose(fixed, curve_fit(decay, X, Y, p0=[1.0, 1.0])[0], rtol=1e-8)


class Boom(RuntimeError):
    pass


def _numpy_decay(x, a, b):
    return a * np.exp(-b * np.asarray(x))


def _raising_jac(x, a, b):
    raise Boom("boom inside jac")


@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
def test_host_jac_raising_is_reported_whatever_thread_runs_it(method):
    # XLA may run a host callback on one of its worker threads (it did for
    # dogbox): the error must still reach the caller, never a misleading
    # "maximum number of function evaluations" or a silent result.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = np.linspace(0.1, 5.0, 60)
        excinfo = assert_raises(ValueError, "raised Boom",
                                lambda: curve_fit(_numpy_decay, x, 2 * np.exp(-0.7 * x),
                                                  p0=[1.0, 1.0], jac=_raising_jac,
                                                  method=method))
    assert isinstance(excinfo.value.__cause__, Boom)


def _raising_jnp(x, a, b):
    raise Boom("boom inside the model")


def _raising_numpy(x, a, b):
    a * np.exp(-b * np.asarray(x))  # JAX cannot trace this: the fallback runs it
    raise Boom("boom inside the model")


@pytest.mark.parametrize("model", [_raising_jnp, _raising_numpy], ids=["always", "on-numpy"])
def test_model_raises(model):
    # scipy lets the model's own exception through unchanged; sknlsq names the
    # model and chains the original as __cause__.
    excinfo = assert_raises(Exception, "model", lambda: curve_fit(model, X, Y, p0=[1.0, 1.0]))
    chain, err = [], excinfo.value
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__
    assert any(isinstance(e, Boom) for e in chain), [type(e) for e in chain]


def _returns_none(x, a, b):
    a * np.exp(-b * np.asarray(x))  # forgotten `return`


def _returns_complex(x, a, b):
    return a * np.exp(-b * np.asarray(x)) + 0j * float(a > 100)


def test_numpy_model_returning_none_or_complex():
    # scipy: TypeError / "Result from function call is not a proper array of
    # floats"; sknlsq names the model and says what it returned.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_raises(ValueError, "returned None", lambda: curve_fit(_returns_none, X, Y,
                                                                     p0=[1.0, 1.0]))
        assert_raises(ValueError, "complex", lambda: curve_fit(_returns_complex, X, Y,
                                                               p0=[1.0, 1.0]))


def _writes_into_x(x, a, b):
    x *= 1.0  # in place, as scipy allows (it passes the user's array)
    return a * np.exp(-b * x)


def test_numpy_model_may_write_into_x():
    from scipy.optimize import curve_fit as scipy_curve_fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = curve_fit(_writes_into_x, X, Y, p0=[1.0, 1.0])[0]
    ref = scipy_curve_fit(_writes_into_x, X.copy(), Y, p0=[1.0, 1.0])[0]
    np.testing.assert_allclose(got, ref, rtol=1e-7)
