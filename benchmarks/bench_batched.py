"""Batched fits: sknlsq.curve_fit(..., batch=True) vs a scipy curve_fit loop.

10,000 curves x 200 points of ``y = a exp(-b x) + c`` on a shared grid
``x = linspace(0, 5, 200)``, with parameters drawn per curve
(a ~ U(1, 4), b ~ U(0.5, 2), c ~ U(0.1, 1); seeded) and Gaussian noise of
1% of the amplitude (sd = 0.01 a). Every fit starts from the same
``p0 = (1, 1, 0)`` with default settings ('lm' for both libraries).

Measured, in one process:

* the scipy loop: ``scipy.optimize.curve_fit`` on each curve in turn;
* sknlsq ``curve_fit(decay, x, Y, p0=p0, batch=True)`` (``retire=True``,
  the default), first call (including compilation) and a second, warm call;
* the same with ``retire=False`` (one plain vmap over all curves), to show
  the gain of retiring converged curves.

Targets: sknlsq batched time <= 0.05 x scipy loop time (checked for the
warm call and, separately, for the first call including compilation); every
curve's parameters within 1e-6 relative (max over the 3 parameters) of a
tightly converged scipy fit (``ftol = xtol = gtol = 1e-14``), computed on
all curves (on a random subset of 500 curves with ``--quick``).

Usage, from the repository root::

    python benchmarks/bench_batched.py [--quick] [--curves K] [--points M]
           [--ref-subset N] [--seed S]

Exit status: 0 if all targets are met, 1 otherwise, 2 if this sknlsq has no
batched ``curve_fit`` (``batch=True`` rejected).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import OptimizeWarning  # noqa: E402
from scipy.optimize import curve_fit as scipy_curve_fit  # noqa: E402

import sknlsq  # noqa: E402

TARGET_RATIO = 0.05
TARGET_REL = 1e-6
P0 = (1.0, 1.0, 0.0)
TIGHT = dict(ftol=1e-14, xtol=1e-14, gtol=1e-14)


def make_data(K, M, seed):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 5.0, M)
    a = rng.uniform(1.0, 4.0, K)
    b = rng.uniform(0.5, 2.0, K)
    c = rng.uniform(0.1, 1.0, K)
    Y = (a[:, None] * np.exp(-b[:, None] * x) + c[:, None]
         + 0.01 * a[:, None] * rng.standard_normal((K, M)))
    return x, Y, np.stack([a, b, c], axis=1)


def batch_supported(x, Y):
    """True if ``curve_fit(..., batch=True)`` is accepted (tiny 2-curve call)."""
    try:
        popt, _ = sknlsq.curve_fit(C.decay, x, Y[:2], p0=P0, batch=True)
    except TypeError as exc:
        if "batch" in str(exc):
            print(f"sknlsq.curve_fit does not support batch=True yet ({exc}).\n"
                  "The batched benchmark cannot run on this version of sknlsq; "
                  "exiting with status 2.")
            return False
        raise
    if np.shape(popt) != (2, len(P0)):
        print(f"curve_fit(..., batch=True) returned popt of shape {np.shape(popt)}, "
              f"expected (2, {len(P0)}); exiting with status 2.")
        return False
    return True


def scipy_fit(x, y, **kw):
    try:
        return scipy_curve_fit(C.decay_np, x, y, p0=P0, **kw)[0]
    except RuntimeError:
        return np.full(len(P0), np.nan)


def rel_err(p, ref):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.max(np.abs(p - ref) / np.abs(ref), axis=1)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--curves", type=int, default=None,
                   help="number of curves (default 10000; 1000 with --quick)")
    p.add_argument("--points", type=int, default=200, help="points per curve (default 200)")
    p.add_argument("--ref-subset", type=int, default=None,
                   help="tight scipy reference on this many random curves "
                        "(default: all; 500 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    K = args.curves or (1000 if args.quick else 10000)
    M = args.points
    n_ref = args.ref_subset or (500 if args.quick else K)
    n_ref = min(n_ref, K)

    x, Y, _ = make_data(K, M, args.seed)
    C.banner("Batched fits: sknlsq curve_fit(batch=True) vs scipy curve_fit loop", args.quick, {
        "curves x points": f"{K} x {M} (seed {args.seed})",
        "model": "a*exp(-b*x) + c; a~U(1,4), b~U(0.5,2), c~U(0.1,1); noise sd 0.01*a",
        "settings": "p0 = (1, 1, 0), defaults (method 'lm')",
        "tight reference": f"scipy ftol=xtol=gtol=1e-14 on "
                           f"{'all' if n_ref == K else 'a random subset of'} {n_ref} curves",
    })
    if not batch_supported(x, Y):
        return 2

    # scipy loop (default settings).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        with C.Timer() as t_scipy:
            P_scipy = np.stack([scipy_fit(x, Y[k]) for k in range(K)])

    # sknlsq batched, retire=True then retire=False; first (cold) and warm calls.
    times, results = {}, {}
    with sknlsq.MemoryPool() as pool:
        for retire in (True, False):
            for call in ("first", "warm"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", OptimizeWarning)
                    with C.Timer() as t:
                        out = sknlsq.curve_fit(C.decay, x, Y, p0=P0, batch=True, retire=retire,
                                               full_output=True)
                times[retire, call] = t.seconds
                results[retire] = out
        stats = pool.get_stats()

    P_sk, _, info = results[True][:3]
    P_noret = results[False][0]

    # Tight scipy reference.
    rng = np.random.default_rng(args.seed + 1)
    ref_idx = np.arange(K) if n_ref == K else np.sort(rng.choice(K, n_ref, replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        with C.Timer() as t_ref:
            P_ref = np.stack([scipy_fit(x, Y[k], **TIGHT) for k in ref_idx])
    err_sk = rel_err(P_sk[ref_idx], P_ref)
    err_noret = rel_err(P_noret[ref_idx], P_ref)
    err_scipy = rel_err(P_scipy[ref_idx], P_ref)
    ref_ok = np.isfinite(P_ref).all(axis=1)
    n_over = int(np.sum(~(err_sk <= TARGET_REL) & ref_ok))  # NaN counts as over
    n_over_noret = int(np.sum(~(err_noret <= TARGET_REL) & ref_ok))
    n_over_scipy = int(np.sum(~(err_scipy <= TARGET_REL) & ref_ok))

    status, counts = np.unique(info["status"], return_counts=True)
    nfev = np.asarray(info["nfev"])
    print(f"scipy loop: {K} fits in {C.fmt_s(t_scipy.seconds)} "
          f"({C.fmt_s(t_scipy.seconds / K)} per curve); "
          f"{int(np.isnan(P_scipy).any(axis=1).sum())} failed")
    print(f"tight scipy reference: {len(ref_idx)} fits in {C.fmt_s(t_ref.seconds)}; "
          f"{int((~ref_ok).sum())} failed (excluded)")
    print(f"sknlsq batch (retire=True): status counts "
          f"{dict(zip(status.tolist(), counts.tolist()))}; nfev median {np.median(nfev):.0f}, "
          f"max {nfev.max()}; nit median {np.median(info['nit']):.0f}, max {np.max(info['nit'])}")
    print(f"MemoryPool: compiles={stats['compiles']} cache_hits={stats['cache_hits']} "
          f"compile_seconds={stats['compile_seconds']:.2f} programs={stats['programs']}")
    print("\nAccuracy vs the tight scipy fit (max relative error over the 3 parameters):")
    for name, err, over in (("sknlsq batch, retire=True", err_sk, n_over),
                            ("sknlsq batch, retire=False", err_noret, n_over_noret),
                            ("scipy default loop (context)", err_scipy, n_over_scipy)):
        e = err[ref_ok]
        print(f"  {name:<30} max {np.nanmax(e):.3e}   median {np.nanmedian(e):.3e}   "
              f"curves > {TARGET_REL:g}: {over} of {int(ref_ok.sum())}")
    print()

    t_warm, t_first = times[True, "warm"], times[True, "first"]
    gain = times[False, "warm"] / t_warm
    rows = [
        C.Row("batch retire=True, warm call", t_warm, t_scipy.seconds,
              target=f"ratio <= {TARGET_RATIO}", passed=t_warm <= TARGET_RATIO * t_scipy.seconds),
        C.Row("batch retire=True, first call (incl. compile)", t_first, t_scipy.seconds,
              target=f"ratio <= {TARGET_RATIO}",
              passed=t_first <= TARGET_RATIO * t_scipy.seconds),
        C.Row("batch retire=False, warm call", times[False, "warm"], t_scipy.seconds),
        C.Row("batch retire=False, first call (incl. compile)", times[False, "first"],
              t_scipy.seconds),
        C.Row("gain of retiring: t(retire=False)/t(retire=True), warm",
              float("nan"), float("nan"), ratio=gain),
        C.Row(f"max rel. error vs tight scipy ({int(ref_ok.sum())} curves)",
              float(np.max(err_sk[ref_ok])), float(np.max(err_scipy[ref_ok])), unit="value",
              ratio=float("nan"),
              target=f"all <= {TARGET_REL:g}", passed=n_over == 0),
        C.Row("curves over 1e-6 (sknlsq | scipy default)", float(n_over), float(n_over_scipy),
              unit="value", ratio=float("nan")),
    ]
    C.print_table(rows, reference_name="scipy loop", quick=args.quick)
    return C.exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
