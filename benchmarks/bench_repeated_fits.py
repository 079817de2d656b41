"""Repeated small fits: sknlsq.curve_fit vs scipy.optimize.curve_fit.

200 exponential-decay datasets ``y = a exp(-b x) + c + noise`` (3 parameters,
drawn per dataset) with lengths drawn uniformly in [500, 2000] points
(seeded), fitted one after another inside one ``sknlsq.MemoryPool``, after
one warm-up fit per library. Both libraries get the same data, the same
``p0`` and their default settings (so 'lm' for both: MINPACK with a
finite-difference Jacobian for scipy, sknlsq's compiled LM with an autodiff
Jacobian). Fits alternate between the two libraries, dataset by dataset.

Reports the median time per fit of each library and their ratio (target:
sknlsq / scipy <= 0.5), the median over only the fits that found a compiled
program in the pool, the fits that had to compile (the first fit of each
shape bucket) and their times, the pool statistics, and the largest
difference between the two libraries' parameters.

Usage, from the repository root::

    python benchmarks/bench_repeated_fits.py [--quick] [--n-fits N] [--seed S]
           [--profile N]

``--profile N`` additionally runs N warm sknlsq fits under cProfile and
prints the top entries by cumulative time. ``--sync-dispatch`` sets JAX's
``jax_cpu_enable_async_dispatch`` to False before the first fit (a process-wide
JAX setting, True by default, which sknlsq itself never changes): the
CPU runtime then runs each compiled program on the calling thread instead of
handing it to a worker thread and waking the caller when it is done, which
on a small VM costs more than a small fit's arithmetic.
Exit status: 0 if the target is met, 1 otherwise.
"""

from __future__ import annotations

import cProfile
import time
import io
import pstats
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (puts the repository root on sys.path)

import numpy as np  # noqa: E402
from scipy.optimize import curve_fit as scipy_curve_fit  # noqa: E402

import sknlsq  # noqa: E402

TARGET = 0.5
P0 = (1.0, 1.0, 0.0)


def make_datasets(n_fits, seed, lo=500, hi=2000):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_fits):
        m = int(rng.integers(lo, hi + 1))
        a, b, c = rng.uniform(1.0, 4.0), rng.uniform(0.5, 2.0), rng.uniform(0.1, 1.0)
        x = np.linspace(0.0, 5.0, m)
        y = a * np.exp(-b * x) + c + 0.02 * a * rng.standard_normal(m)
        out.append((x, y, (a, b, c)))
    return out


def profile_fits(datasets, pool, n, top=25):
    """cProfile ``n`` warm sknlsq fits; print the top cumulative entries."""
    for x, y, _ in datasets[:n]:  # make sure every bucket used is compiled
        sknlsq.curve_fit(C.decay, x, y, p0=P0, pool=pool)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for x, y, _ in datasets[:n]:
        sknlsq.curve_fit(C.decay, x, y, p0=P0, pool=pool)
    prof.disable()
    wall = time.perf_counter() - t0
    print(f"\ncProfile of {n} warm sknlsq fits: {C.fmt_s(wall)} in all "
          f"({C.fmt_s(wall / n)} per fit, profiler overhead included)")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    print(s.getvalue())
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
    print(s.getvalue())


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--n-fits", type=int, default=None, help="datasets (default 200; 40 quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also cProfile N warm sknlsq fits")
    p.add_argument("--sync-dispatch", action="store_true",
                   help="set jax_cpu_enable_async_dispatch=False first (see the docstring)")
    args = p.parse_args(argv)
    n_fits = args.n_fits or (40 if args.quick else 200)
    if args.sync_dispatch:
        import jax

        jax.config.update("jax_cpu_enable_async_dispatch", False)

    datasets = make_datasets(n_fits + 1, args.seed)  # +1: the warm-up dataset
    warm, datasets = datasets[0], datasets[1:]
    lengths = np.array([len(d[0]) for d in datasets])
    C.banner("Repeated fits: sknlsq.curve_fit vs scipy.optimize.curve_fit", args.quick, {
        "datasets": f"{n_fits} (+1 warm-up), lengths {lengths.min()}..{lengths.max()} "
                    f"(uniform in [500, 2000], seed {args.seed})",
        "model": "a*exp(-b*x) + c, 3 params, p0 = (1, 1, 0), default settings",
        "JAX CPU dispatch": "synchronous (--sync-dispatch)" if args.sync_dispatch
                            else "asynchronous (JAX's default)",
    })

    sk_times, sp_times, compiled = [], [], []
    max_rel = 0.0
    with sknlsq.MemoryPool() as pool:
        x, y, _ = warm
        (_, t_sk_first) = C.timed(sknlsq.curve_fit, C.decay, x, y, p0=P0)
        (_, t_sp_first) = C.timed(scipy_curve_fit, C.decay_np, x, y, p0=P0)
        for x, y, _ in datasets:
            before = pool.get_stats()["compiles"]
            (p_sk, _), t_sk = C.timed(sknlsq.curve_fit, C.decay, x, y, p0=P0)
            compiled.append(pool.get_stats()["compiles"] > before)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (p_sp, _), t_sp = C.timed(scipy_curve_fit, C.decay_np, x, y, p0=P0)
            sk_times.append(t_sk)
            sp_times.append(t_sp)
            max_rel = max(max_rel, float(np.max(np.abs(p_sk - p_sp) / np.abs(p_sp))))
        stats = pool.get_stats()
        # Informational: the same fits with refine=0 (no extra machine-precision
        # steps after convergence); the programs differ, so warm them first.
        refine0 = []
        for x, y, _ in datasets:
            sknlsq.curve_fit(C.decay, x, y, p0=P0, refine=0)
            _, t = C.timed(sknlsq.curve_fit, C.decay, x, y, p0=P0, refine=0)
            refine0.append(t)

        sk = np.array(sk_times)
        sp = np.array(sp_times)
        compiled = np.array(compiled)
        med_sk, med_sp = C.median(sk), C.median(sp)
        med_sk_hit = C.median(sk[~compiled]) if (~compiled).any() else float("nan")
        per_ratio = C.median(sk / sp)
        rows = [
            C.Row("first fit in the process (warm-up, cold)", t_sk_first, t_sp_first),
            C.Row(f"median per fit, all {n_fits} fits", med_sk, med_sp,
                  target=f"ratio <= {TARGET}", passed=med_sk / med_sp <= TARGET),
            C.Row(f"median per fit, {int((~compiled).sum())} pool-hit fits", med_sk_hit,
                  C.median(sp[~compiled]) if (~compiled).any() else float("nan")),
            C.Row("median per fit, refine=0 (all warm)", C.median(refine0), med_sp),
            C.Row("median of per-dataset ratios", float("nan"), float("nan"),
                  ratio=per_ratio),
            C.Row("mean per fit, all fits", float(sk.mean()), float(sp.mean())),
            C.Row("total, all fits", float(sk.sum()), float(sp.sum())),
        ]
        print("Fits that compiled a program (first fit of a shape bucket):",
              f"{int(compiled.sum())} of {n_fits}")
        for i in np.flatnonzero(compiled):
            print(f"  dataset {i:3d}: {lengths[i]:4d} points   sknlsq {C.fmt_s(sk[i])}   "
                  f"scipy {C.fmt_s(sp[i])}")
        print(f"\nMemoryPool stats (warm-up included): compiles={stats['compiles']} "
              f"cache_hits={stats['cache_hits']} compile_seconds={stats['compile_seconds']:.2f} "
              f"programs={stats['programs']} allocations={stats['allocations']} "
              f"reuses={stats['reuses']} reuse_rate={stats['reuse_rate']:.3f} "
              f"peak_memory={stats['peak_memory']} B evictions={stats['evictions']}")
        print(f"Percentiles per fit (pool-hit fits), sknlsq: p10 "
              f"{C.fmt_s(np.percentile(sk[~compiled], 10))}, p90 "
              f"{C.fmt_s(np.percentile(sk[~compiled], 90))};  scipy (all): p10 "
              f"{C.fmt_s(np.percentile(sp, 10))}, p90 {C.fmt_s(np.percentile(sp, 90))}")
        print(f"Largest relative parameter difference sknlsq vs scipy: {max_rel:.2e}\n")
        C.print_table(rows, quick=args.quick)

        if args.profile:
            profile_fits(datasets, pool, args.profile)
    return C.exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
