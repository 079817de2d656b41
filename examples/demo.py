"""sknlsq demo: fit two synthetic data sets and print the parameters.

Builds seeded synthetic data (1,000 points each): an exponential decay and a
Gaussian peak on a constant background, both with Gaussian noise. Each is
fitted twice, with the scipy-compatible ``sknlsq.curve_fit`` and with the
scikit-learn estimator ``sknlsq.CurveFitRegressor``, and the fitted values
are printed beside the true ones with their 1-sigma errors
(``sqrt(diag(pcov))``).

Run from the repository root::

    python examples/demo.py
"""

import time

import jax.numpy as jnp
import numpy as np

from sknlsq import CurveFitRegressor, curve_fit

N_POINTS = 1000


def exp_decay(x, amplitude, rate, offset):
    return amplitude * jnp.exp(-rate * x) + offset


def gaussian_peak(x, height, center, width, background):
    return height * jnp.exp(-((x - center) ** 2) / (2 * width**2)) + background


def make_data(rng):
    """Two noisy data sets: (name, model, x, y, true params, initial guess)."""
    x1 = np.linspace(0.0, 5.0, N_POINTS)
    true1 = np.array([2.5, 1.3, 0.5])
    y1 = 2.5 * np.exp(-1.3 * x1) + 0.5 + 0.05 * rng.normal(size=N_POINTS)

    x2 = np.linspace(-5.0, 5.0, N_POINTS)
    true2 = np.array([3.0, 0.4, 1.2, 0.3])
    y2 = 3.0 * np.exp(-((x2 - 0.4) ** 2) / (2 * 1.2**2)) + 0.3 + 0.1 * rng.normal(size=N_POINTS)

    return [
        ("exponential decay", exp_decay, x1, y1, true1, [1.0, 1.0, 0.0]),
        ("Gaussian peak", gaussian_peak, x2, y2, true2, [2.0, 0.0, 1.0, 0.0]),
    ]


def param_names(model):
    code = model.__code__
    return code.co_varnames[1:code.co_argcount]


def print_table(names, true, popt, pcov):
    perr = np.sqrt(np.diag(pcov))
    print(f"  {'parameter':<12}{'true':>10}{'fitted':>12}{'1-sigma':>12}{'(fit-true)/sigma':>19}")
    for name, t, p, e in zip(names, true, popt, perr):
        print(f"  {name:<12}{t:>10.4f}{p:>12.5f}{e:>12.5f}{(p - t) / e:>19.2f}")


def main():
    rng = np.random.default_rng(2024)
    for title, model, x, y, true, p0 in make_data(rng):
        names = param_names(model)
        print(f"\n=== {title}: {x.size} points ===")

        t0 = time.perf_counter()
        popt, pcov = curve_fit(model, x, y, p0=p0)
        t1 = time.perf_counter()
        print(f"\nsknlsq.curve_fit  ({(t1 - t0) * 1e3:.0f} ms, including compilation)")
        print_table(names, true, popt, pcov)

        reg = CurveFitRegressor(model=model, p0=p0).fit(x[:, None], y)
        print(f"\nsknlsq.CurveFitRegressor  (R^2 = {reg.score(x[:, None], y):.4f})")
        print_table(names, true, reg.params_, reg.pcov_)
        assert np.allclose(reg.params_, popt, rtol=1e-6), "estimator and curve_fit disagree"


if __name__ == "__main__":
    main()
