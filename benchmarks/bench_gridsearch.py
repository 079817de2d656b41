"""GridSearchCV over solver settings: n_jobs=1 vs n_jobs=2 (loky).

A 2,000-point Gaussian peak on a constant background (noise sd 0.1 and 5%
outliers, seeded) is fitted by ``CurveFitRegressor(model=gauss, p0=...)``
in ``GridSearchCV`` over 12 solver settings

    method in {'trf', 'dogbox'} x loss in {'linear', 'soft_l1', 'huber'}
    x f_scale in {0.5, 1.0}

x 5 shuffled folds (60 fits, plus the refit on all data), scored by R^2.
Each configuration runs in its own fresh process (so that no compiled
program, loky worker or cache state leaks from one to the next), which
times ``GridSearchCV.fit`` only (imports excluded; loky worker start-up
included, as a user pays it) and then a second, warm ``fit`` in the same
process (same loky workers):

* ``n_jobs=1`` and ``n_jobs=2`` (loky), without a persistent cache.
  Target: n_jobs=2 faster than n_jobs=1 (first fit in a fresh process).
* With a shared persistent compilation cache: a first process populates
  ``cache_dir`` (n_jobs=1), then fresh n_jobs=2 processes run with
  (a) ``with MemoryPool(cache_dir=...):`` around ``GridSearchCV.fit``, and
  (b) ``CurveFitRegressor(..., pool=MemoryPool(cache_dir=...))``; and a
  fresh n_jobs=2 process starts from an empty cache with (b).

Every fit also reports, through extra probe scorers (``_common.PROBE_SCORERS``),
the process it ran in, whether JAX's persistent cache is configured there,
and that process's persistent-cache hits/misses and XLA compile seconds, so
one can see whether loky workers pick up the cache.

Reference: the same 60 + 1 fits with ``scipy.optimize.curve_fit`` (same
methods, losses and f_scale; NumPy model) in a sequential loop, in this
process; the ratio column is sknlsq / scipy.

Usage, from the repository root::

    python benchmarks/bench_gridsearch.py [--quick] [--points M] [--folds F]

``--quick``: 500 points and 3 folds. Exit status: 0 if the target is met,
1 otherwise, 2 if ``CurveFitRegressor`` is not available.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402

P0 = (1.0, 0.0, 1.0, 0.0)
GRID = {"method": ["trf", "dogbox"], "loss": ["linear", "soft_l1", "huber"],
        "f_scale": [0.5, 1.0]}
TRUE = (3.0, 0.4, 0.8, 0.5)


def make_data(m, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(-5.0, 5.0, m)
    y = C.gauss_np(x, *TRUE) + 0.1 * rng.standard_normal(m)
    out = rng.random(m) < 0.05
    y[out] += rng.uniform(1.0, 3.0, out.sum())
    return x, y


def _cv(folds):
    from sklearn.model_selection import KFold

    return KFold(n_splits=folds, shuffle=True, random_state=0)


# ---------------------------------------------------------------------------
# Child: one GridSearchCV configuration in a fresh process
# ---------------------------------------------------------------------------


def child(n_jobs, cache_dir, cache_mode, points, folds):
    import time

    from sklearn.model_selection import GridSearchCV

    import sknlsq

    x, y = make_data(points)
    X = x[:, None]
    pool_param = None
    ctx = None
    if cache_mode == "param":
        pool_param = sknlsq.MemoryPool(cache_dir=cache_dir)
    elif cache_mode == "context":
        ctx = sknlsq.MemoryPool(cache_dir=cache_dir)
    est = sknlsq.CurveFitRegressor(model=C.gauss, p0=P0, pool=pool_param)
    scoring = {"r2": "r2", **C.PROBE_SCORERS}
    out = {}
    for run in ("first", "second"):
        gs = GridSearchCV(est, GRID, cv=_cv(folds), scoring=scoring, refit="r2",
                          n_jobs=n_jobs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            if ctx is not None:
                with ctx:
                    gs.fit(X, y)
            else:
                gs.fit(X, y)
            dt = time.perf_counter() - t0
        res = gs.cv_results_
        per_pid = {}
        for i in range(folds):
            pids = res[f"split{i}_test_pid"]
            for j, pid in enumerate(pids):
                d = per_pid.setdefault(str(int(pid)), dict(fits=0, cache_dir_set=0.0,
                                                           cache_hits=0.0, cache_misses=0.0,
                                                           backend_compile_s=0.0))
                d["fits"] += 1
                for k in ("cache_dir_set", "cache_hits", "cache_misses", "backend_compile_s"):
                    d[k] = max(d[k], float(res[f"split{i}_test_{k}"][j]))
        out[run] = dict(seconds=dt, best_params=gs.best_params_, best_score=gs.best_score_,
                        best_popt=[float(v) for v in gs.best_estimator_.params_],
                        per_pid=per_pid)
    out["main_pid"] = str(__import__("os").getpid())
    print("RESULT " + json.dumps(out))


def run_child(n_jobs, points, folds, cache_dir=None, cache_mode="none"):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--n-jobs", str(n_jobs),
           "--points", str(points), "--folds", str(folds), "--cache-mode", cache_mode]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# ---------------------------------------------------------------------------
# scipy reference: the same grid, sequentially
# ---------------------------------------------------------------------------


def scipy_reference(points, folds):
    import itertools
    import time

    from scipy.optimize import curve_fit
    from sklearn.metrics import r2_score

    x, y = make_data(points)
    t0 = time.perf_counter()
    best = (-np.inf, None)
    for method, loss, f_scale in itertools.product(GRID["method"], GRID["loss"],
                                                   GRID["f_scale"]):
        scores = []
        for train, test in _cv(folds).split(x[:, None]):
            try:
                p, _ = curve_fit(C.gauss_np, x[train], y[train], p0=P0, method=method,
                                 loss=loss, f_scale=f_scale)
                scores.append(r2_score(y[test], C.gauss_np(x[test], *p)))
            except RuntimeError:
                scores.append(np.nan)
        s = float(np.mean(scores))
        if s > best[0]:
            best = (s, dict(method=method, loss=loss, f_scale=f_scale))
    p, _ = curve_fit(C.gauss_np, x, y, p0=P0, **best[1])
    return time.perf_counter() - t0, best[1], best[0], p


def describe(name, r):
    f = r["first"]
    lines = [f"  {name}: first fit {C.fmt_s(f['seconds'])}, second (warm) fit "
             f"{C.fmt_s(r['second']['seconds'])}; best {f['best_params']} "
             f"(R^2 {f['best_score']:.5f})"]
    for run in ("first", "second"):
        for pid, d in sorted(r[run]["per_pid"].items()):
            who = "main process" if pid == r["main_pid"] else "worker"
            lines.append(
                f"      {run:<6} fit, pid {pid} ({who}): {d['fits']:2d} fits, cache dir set "
                f"{'yes' if d['cache_dir_set'] else 'no '}, persistent-cache hits "
                f"{d['cache_hits']:.0f} misses {d['cache_misses']:.0f}, XLA compile/load "
                f"{d['backend_compile_s']:.2f} s (cumulative in that process)")
    return "\n".join(lines)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=None, help="data points (default 2000)")
    p.add_argument("--folds", type=int, default=None, help="CV folds (default 5)")
    p.add_argument("--child", action="store_true", help=argparse_hidden())
    p.add_argument("--n-jobs", type=int, default=1, help=argparse_hidden())
    p.add_argument("--cache-dir", default=None, help=argparse_hidden())
    p.add_argument("--cache-mode", default="none", choices=["none", "context", "param"],
                   help=argparse_hidden())
    args = p.parse_args(argv)
    points = args.points or (500 if args.quick else 2000)
    folds = args.folds or (3 if args.quick else 5)
    if args.child:
        child(args.n_jobs, args.cache_dir, args.cache_mode, points, folds)
        return 0

    import sknlsq

    if not hasattr(sknlsq, "CurveFitRegressor"):
        print("sknlsq.CurveFitRegressor is not available yet; exiting with status 2.")
        return 2
    n_settings = int(np.prod([len(v) for v in GRID.values()]))
    C.banner("GridSearchCV over solver settings: n_jobs=1 vs n_jobs=2 (loky)", args.quick, {
        "data": f"{points}-point Gaussian peak + offset, noise sd 0.1, 5% outliers",
        "grid": f"{n_settings} settings {GRID} x {folds} folds "
                f"= {n_settings * folds} fits + refit",
        "isolation": "each configuration in a fresh process; times exclude imports",
    })

    t_sp, best_sp, score_sp, p_sp = scipy_reference(points, folds)
    print(f"scipy reference (sequential loop): {C.fmt_s(t_sp)}; best {best_sp} "
          f"(R^2 {score_sp:.5f}); refit params {np.round(p_sp, 6).tolist()}\n")

    r1 = run_child(1, points, folds)
    r2 = run_child(2, points, folds)
    with tempfile.TemporaryDirectory(prefix="sknlsq-gs-cache-") as tmp, \
            tempfile.TemporaryDirectory(prefix="sknlsq-gs-cache-empty-") as empty:
        r_pop = run_child(1, points, folds, tmp, "context")
        r_ctx = run_child(2, points, folds, tmp, "context")
        r_par = run_child(2, points, folds, tmp, "param")
        r_par_empty = run_child(2, points, folds, empty, "param")
    print("Per configuration (probe scorers report per fitting process):")
    for name, r in (("n_jobs=1, no cache", r1), ("n_jobs=2, no cache", r2),
                    ("n_jobs=1, populate cache (context)", r_pop),
                    ("n_jobs=2, warm cache via `with MemoryPool(cache_dir)`", r_ctx),
                    ("n_jobs=2, warm cache via pool= param", r_par),
                    ("n_jobs=2, empty cache via pool= param", r_par_empty)):
        print(describe(name, r))
    print()

    def t(r, run="first"):
        return r[run]["seconds"]

    rows = [
        C.Row("n_jobs=1, no cache (fresh process)", t(r1), t_sp),
        C.Row("n_jobs=2, no cache (fresh process)", t(r2), t_sp),
        C.Row("speed-up n_jobs=1 / n_jobs=2, no cache", float("nan"), float("nan"),
              ratio=t(r1) / t(r2), target="> 1 (n_jobs=2 faster)", passed=t(r2) < t(r1)),
        C.Row("n_jobs=1, second fit in same process", t(r1, "second"), t_sp),
        C.Row("n_jobs=2, second fit (warm workers)", t(r2, "second"), t_sp),
        C.Row("n_jobs=1, populating a cache", t(r_pop), t_sp),
        C.Row("n_jobs=2, warm cache, `with MemoryPool`", t(r_ctx), t_sp),
        C.Row("n_jobs=2, warm cache, pool= param", t(r_par), t_sp),
        C.Row("n_jobs=2, warm cache, pool= param, second fit", t(r_par, "second"), t_sp),
        C.Row("n_jobs=2, empty cache, pool= param", t(r_par_empty), t_sp),
        C.Row("speed-up n_jobs=1 / n_jobs=2 warm cache (pool=)", float("nan"), float("nan"),
              ratio=t(r1) / t(r_par)),
    ]
    C.print_table(rows, reference_name="scipy loop", quick=args.quick)
    return C.exit_code(rows)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
