"""Accuracy on the NIST StRD nonlinear regression problems: sknlsq vs scipy.

Runs all 54 NIST StRD runs (27 problems, 2 starting points each) with
``sknlsq.curve_fit`` and ``scipy.optimize.curve_fit`` at their default
settings and with ``ftol = xtol = gtol = 1e-15``, and prints the number of
agreeing digits with the certified parameters side by side, the number of
runs reaching 6 digits, and wall-clock times.

Both libraries fit the same ``jax.numpy`` models (``tests/nist_strd.py``);
scipy gets them evaluated eagerly in float64 and returned as NumPy arrays,
and uses its own finite-difference Jacobian. sknlsq's times include JIT
compilation (paid by the first setting that meets a problem; later settings
reuse the compiled programs) unless ``--warm`` is given.

Usage, from the repository root::

    python benchmarks/nist_accuracy.py [--maxfev N] [--warm] [--scipy-exact-jac]

``--maxfev N`` raises the evaluation budget in the tight setting (sknlsq's
``max_nfev``, scipy's ``maxfev`` for its default 'lm' method);
``--scipy-exact-jac`` gives scipy the models' exact (JAX autodiff) Jacobian.
If ``sknlsq`` cannot be imported, only the scipy columns are filled.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.optimize import curve_fit as scipy_curve_fit  # noqa: E402

from nist_strd import MODELS, NAMES, load, numpy_model, run  # noqa: E402

GOOD = 6.0
TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)


def exact_jacobian(f):
    """``jac(x, *p)`` for scipy: the (M, N) autodiff Jacobian of ``f``, in float64."""

    def jac(x, *params):
        with jax.enable_x64(True):
            p = jnp.asarray(params, dtype=jnp.float64)
            return np.asarray(jax.jacfwd(lambda q: f(x, *q))(p))

    return jac


def run_all(fit, scipy_style: bool, exact_jac: bool = False, **kwargs):
    """All 54 runs of one library and setting: (results, total seconds)."""
    results = []
    t0 = time.perf_counter()
    for name in NAMES:
        extra = {}
        if scipy_style:
            extra["model"] = numpy_model(MODELS[name])
            if exact_jac:
                extra["jac"] = exact_jacobian(MODELS[name])
        for start in (1, 2):
            results.append(run(name, start, fit, **extra, **kwargs))
    return results, time.perf_counter() - t0


def fmt(result) -> str:
    if result is None:
        return f"{'-':>7}"
    mark = "*" if result.error is not None else ("!" if result.digits < GOOD else " ")
    return f"{result.digits:6.2f}{mark}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maxfev", type=int, default=None,
                        help="evaluation budget for the tight setting (default: library's)")
    parser.add_argument("--warm", action="store_true",
                        help="run sknlsq once untimed first, so its times exclude compilation")
    parser.add_argument("--scipy-exact-jac", action="store_true",
                        help="give scipy the exact (autodiff) Jacobian")
    args = parser.parse_args(argv)

    for name in NAMES:  # parse (and cache) every problem up front, outside the timings
        load(name)

    try:
        from sknlsq import curve_fit as sknlsq_curve_fit
    except Exception as exc:  # noqa: BLE001 - report and carry on with scipy alone
        print(f"sknlsq not importable ({type(exc).__name__}: {exc}); scipy only\n")
        sknlsq_curve_fit = None

    tight_sknlsq = dict(TIGHT)
    tight_scipy = dict(TIGHT)
    if args.maxfev is not None:
        tight_sknlsq["max_nfev"] = args.maxfev
        tight_scipy["maxfev"] = args.maxfev  # scipy's default method 'lm' (leastsq)

    settings = [("default", {}, {}), ("1e-15", tight_sknlsq, tight_scipy)]
    columns, times = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OptimizeWarning, overflow, ...: the digits tell
        for label, kw_sknlsq, kw_scipy in settings:
            if sknlsq_curve_fit is not None:
                if args.warm:
                    run_all(sknlsq_curve_fit, False, **kw_sknlsq)
                columns["sknlsq", label], times["sknlsq", label] = run_all(
                    sknlsq_curve_fit, False, **kw_sknlsq)
            columns["scipy", label], times["scipy", label] = run_all(
                scipy_curve_fit, True, exact_jac=args.scipy_exact_jac, **kw_scipy)

    keys = [(lib, label) for label, _, _ in settings for lib in ("sknlsq", "scipy")]
    header = f"{'problem':<9} {'start':>5} " + " ".join(
        f"{lib[:6]:>7}" for lib, _ in keys)
    sub = f"{'':<9} {'':>5} " + " ".join(f"{label[:7]:>7}" for _, label in keys)
    print(f"jax {jax.__version__}, scipy {scipy.__version__}; digits agreeing with the "
          f"certified values (max 11); '1e-15': ftol = xtol = gtol = 1e-15\n"
          f"* = raised (scored 0), ! = below {GOOD:g} digits\n")
    print(header)
    print(sub)
    for i in range(2 * len(NAMES)):
        cells = [fmt(columns[k][i]) if k in columns else fmt(None) for k in keys]
        name, start = NAMES[i // 2], i % 2 + 1
        print(f"{name:<9} {start:>5} " + " ".join(cells))

    print(f"\nruns reaching {GOOD:g} digits (of 54), and total wall time:")
    for lib, label in keys:
        if (lib, label) not in columns:
            continue
        results = columns[lib, label]
        good = sum(r.digits >= GOOD for r in results)
        failing = [f"{r.name}/{r.start}" for r in results if r.digits < GOOD]
        print(f"  {lib:<6} {label:<9} {good:3d}   {times[lib, label]:7.2f} s"
              + (f"   below: {', '.join(failing)}" if failing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
