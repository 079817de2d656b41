"""Sparse fits: SparseCurveFitRegressor vs scipy least_squares with jac_sparsity.

1. Global fit: G exponential-decay curves x P points (default 20,000 x 100),
   ``y = amp_g exp(-rate t) + off_g + noise`` with per-curve amplitude and
   offset and one shared rate (2G + 1 parameters, G P residuals).
   sknlsq: ``SparseCurveFitRegressor(decay, local_params=["amp", "off"],
   group_column=1)`` (block-arrow structure known from the groups, Schur
   complement steps). scipy: ``least_squares(res, x0, jac_sparsity=S,
   tr_solver='lsmr')`` with the pattern ``S`` built by hand, finite
   differences as scipy does. Each runs in its own fresh process, which
   reports its wall time (first fit in the process, so sknlsq's includes JAX
   compilation; a second, warm fit is reported too) and its peak RSS.
   Targets: time <= 0.3 x scipy, peak RSS <= 0.5 x scipy, same shared rate to
   1e-6 relative.
2. Multi-peak spectrum: 50,000 points, 10 Gaussian peaks plus background (31
   parameters). ``SparseCurveFitRegressor`` with detected sparsity, the
   automatic solver choice and forced ``tr_solver='cg'``, against the dense
   ``CurveFitRegressor(method='trf')``: same parameters to 1e-6 relative;
   the detected sparsity is printed.

Usage, from the repository root::

    python benchmarks/bench_sparse.py [--quick] [--groups G] [--points P]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402

TARGET_TIME = 0.3
TARGET_RSS = 0.5
TARGET_REL = 1e-6

CHILD_COMMON = r'''
import json, resource, sys, time
import numpy as np
G, P, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
t = np.tile(np.linspace(0, 5, P), G)
g = np.repeat(np.arange(G), P)
amp, off = rng.uniform(1, 3, G), rng.uniform(0, 1, G)
y = amp[g] * np.exp(-0.8 * t) + off[g] + 0.02 * rng.normal(size=G * P)
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
'''

CHILD_SKNLSQ = CHILD_COMMON + r'''
import jax.numpy as jnp
from sknlsq import SparseCurveFitRegressor
def decay(t, amp, off, rate):
    return amp * jnp.exp(-rate * t) + off
X = np.column_stack([t, g])
base = rss()
est = SparseCurveFitRegressor(decay, p0=[1.0, 0.0, 1.0], local_params=["amp", "off"],
                              group_column=1)
t0 = time.perf_counter(); est.fit(X, y); first = time.perf_counter() - t0
peak = rss()
t0 = time.perf_counter(); est.fit(X, y); warm = time.perf_counter() - t0
print(json.dumps(dict(first=first, warm=warm, base=base, peak=peak,
                      rate=float(est.shared_params_[0]), nfev=int(est.nfev_),
                      status=int(est.status_), sparsity=est.sparsity_,
                      n_colors=est.n_colors_, memory=est.memory_usage_,
                      rate_err=float(np.sqrt(est.shared_pcov_[0, 0])))))
'''

CHILD_SCIPY = CHILD_COMMON + r'''
import scipy.sparse as sp
from scipy.optimize import least_squares
n = 2 * G + 1
def res(x):
    return x[1 + 2 * g] * np.exp(-x[0] * t) + x[2 + 2 * g] - y
base = rss()
t0 = time.perf_counter()
rows = np.repeat(np.arange(G * P), 3)
cols = np.stack([np.zeros(G * P, int), 1 + 2 * g, 2 + 2 * g], 1).ravel()
S = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(G * P, n))
x0 = np.concatenate([[1.0], np.tile([1.0, 0.0], G)])
r = least_squares(res, x0, jac_sparsity=S, tr_solver="lsmr")
sec = time.perf_counter() - t0
print(json.dumps(dict(first=sec, base=base, peak=rss(), rate=float(r.x[0]), nfev=int(r.nfev),
                      status=int(r.status))))
'''


def _child(code, *args):
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                         text=True, cwd=C.ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peaks(x, *p):
    import jax.numpy as jnp

    out = p[-1] + 0.0 * x
    for k in range(10):
        a, c, w = p[3 * k:3 * k + 3]
        out = out + a * jnp.exp(-0.5 * ((x - c) / w) ** 2)
    return out


def spectrum(n_points, seed):
    import warnings

    from sknlsq import CurveFitRegressor, SparseCurveFitRegressor

    rng = np.random.default_rng(seed)
    x = np.linspace(0, 100, n_points)
    true = []
    for k in range(10):
        true += [rng.uniform(1, 3), 5 + 10 * k, rng.uniform(0.5, 1.5)]
    true += [0.2]
    y = np.asarray(peaks(x, *true)) + 0.01 * rng.normal(size=x.size)
    # Start near the truth: amplitudes and widths 5% off, centres 0.1 off.
    # (Relative perturbations of the centres, up to 95, would move some
    # peaks by about their width, and then a dense solver may stop in a
    # different local minimum than the sparse one: nothing to compare.)
    p0 = np.array(true)
    p0[0:30:3] *= 1 + 0.05 * rng.normal(size=10)
    p0[1:30:3] += 0.1 * rng.normal(size=10)
    p0[2:30:3] *= 1 + 0.05 * rng.normal(size=10)
    X = x[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with C.Timer() as t_dense:
            dense = CurveFitRegressor(peaks, p0=p0, method="trf").fit(X, y)
        with C.Timer() as t_auto:
            auto = SparseCurveFitRegressor(peaks, p0=p0).fit(X, y)
        with C.Timer() as t_cg:
            cg = SparseCurveFitRegressor(peaks, p0=p0, tr_solver="cg").fit(X, y)
    widths = np.arange(2, 30, 3)

    def canon(p):
        p = np.array(p, dtype=float)
        p[widths] = np.abs(p[widths])  # widths enter squared
        return p

    ref = canon(dense.params_)
    err_auto = float(np.max(np.abs(canon(auto.params_) - ref) / np.abs(ref)))
    err_cg = float(np.max(np.abs(canon(cg.params_) - ref) / np.abs(ref)))
    cost = [float(np.sum((np.asarray(peaks(x, *e.params_)) - y) ** 2) / 2)
            for e in (dense, auto, cg)]
    return dict(cost=cost, t_dense=t_dense.seconds, t_auto=t_auto.seconds, t_cg=t_cg.seconds,
                err_auto=err_auto, err_cg=err_cg, sparsity=auto.sparsity_,
                solver=auto.tr_solver_, memory=auto.memory_usage_, n_colors=cg.n_colors_)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=None)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--spectrum-points", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    G = args.groups or (2000 if args.quick else 20_000)
    P = args.points
    n_spec = args.spectrum_points or (10_000 if args.quick else 50_000)
    C.banner("Sparse fits: SparseCurveFitRegressor vs scipy least_squares(jac_sparsity, lsmr)",
             args.quick, {
                 "global fit": f"{G} curves x {P} points, {2 * G + 1} parameters, "
                               f"{G * P} residuals",
                 "spectrum": f"{n_spec} points, 10 Gaussians + background (31 parameters)",
             })

    sk = _child(CHILD_SKNLSQ, G, P, args.seed)
    sc = _child(CHILD_SCIPY, G, P, args.seed)
    rel = abs(sk["rate"] - sc["rate"]) / abs(sc["rate"])
    print(f"sknlsq: first fit {C.fmt_s(sk['first'])} (warm {C.fmt_s(sk['warm'])}), "
          f"nfev {sk['nfev']}, status {sk['status']}, rate {sk['rate']:.10f} "
          f"+- {sk['rate_err']:.2e}; peak RSS {sk['peak'] / 2**20:.0f} MiB "
          f"(after imports + data {sk['base'] / 2**20:.0f} MiB)")
    print(f"        sparsity {sk['sparsity']:.6f}, {sk['n_colors']} forward products per "
          f"Jacobian; dense J {sk['memory']['dense_bytes'] / 2**30:.1f} GiB vs sparse "
          f"{sk['memory']['sparse_bytes'] / 2**20:.0f} MiB")
    print(f"scipy:  {C.fmt_s(sc['first'])}, nfev {sc['nfev']}, status {sc['status']}, rate "
          f"{sc['rate']:.10f}; peak RSS {sc['peak'] / 2**20:.0f} MiB (after imports + data "
          f"{sc['base'] / 2**20:.0f} MiB)")
    print(f"shared rate: relative difference {rel:.2e}")

    spec = spectrum(n_spec, args.seed)
    print(f"\nspectrum: detected sparsity {spec['sparsity']:.3f} (structurally dense), "
          f"auto solver '{spec['solver']}'; dense trf {C.fmt_s(spec['t_dense'])}, sparse auto "
          f"{C.fmt_s(spec['t_auto'])}, sparse cg ({spec['n_colors']} colours) "
          f"{C.fmt_s(spec['t_cg'])}; costs (dense, auto, cg) "
          f"{', '.join(f'{c:.6g}' for c in spec['cost'])}")
    print()
    rows = [
        C.Row("global fit, first fit (incl. compile)", sk["first"], sc["first"],
              target=f"ratio <= {TARGET_TIME}", passed=sk["first"] <= TARGET_TIME * sc["first"]),
        C.Row("global fit, warm second fit", sk["warm"], sc["first"]),
        C.Row("global fit, peak RSS (MiB)", sk["peak"] / 2**20, sc["peak"] / 2**20,
              unit="value", ratio=sk["peak"] / sc["peak"], target=f"ratio <= {TARGET_RSS}",
              passed=sk["peak"] <= TARGET_RSS * sc["peak"]),
        C.Row("global fit, RSS increase over imports+data (MiB)",
              (sk["peak"] - sk["base"]) / 2**20, (sc["peak"] - sc["base"]) / 2**20,
              unit="value", ratio=(sk["peak"] - sk["base"]) / max(sc["peak"] - sc["base"], 1)),
        C.Row("shared rate, relative difference", rel, float("nan"), unit="value",
              ratio=float("nan"), target=f"<= {TARGET_REL:g}", passed=rel <= TARGET_REL),
        C.Row("spectrum: sparse (auto) vs dense, max rel diff", spec["err_auto"], float("nan"),
              unit="value", ratio=float("nan"), target=f"<= {TARGET_REL:g}",
              passed=spec["err_auto"] <= TARGET_REL),
        C.Row("spectrum: sparse (cg) vs dense, max rel diff", spec["err_cg"], float("nan"),
              unit="value", ratio=float("nan"), target=f"<= {TARGET_REL:g}",
              passed=spec["err_cg"] <= TARGET_REL),
    ]
    C.print_table(rows, reference_name="scipy", quick=args.quick)
    return C.exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
