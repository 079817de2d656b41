"""Streaming / out-of-core fits: StreamingCurveFitRegressor (HDF5, partial_fit)
and large in-memory CurveFitRegressor fits vs scipy.

Model: Gaussian peak on a constant background,
``gauss(x, a, mu, s, c) = a exp(-0.5 ((x - mu) / s)^2) + c`` (``jax.numpy``
for sknlsq, a NumPy twin for scipy), ``x ~ U(0, 10)``, true parameters
``(3, 5, 1.2, 0.5)``, Gaussian noise sd 0.05, ``p0 = (1, 4, 2, 0)``.

Every measured case runs in its own fresh process (this script with
``--child CASE``), which reports its wall time and its peak RSS
(``ru_maxrss``) as JSON, so the memory figures are per case. The parent
process imports only the standard library until every child has run:
a child's ``ru_maxrss`` starts from its parent's peak RSS (the kernel carries
the high-water mark across fork/vfork + exec), so a parent holding numpy/jax
or data would inflate every child's figure.

1. HDF5, 1e8 points (``x``, ``y`` float64, 1.6 GB, two contiguous 1-D
   datasets, written once in slices of 2^20 rows into ``--workdir`` and
   reused when its attributes match). ``StreamingCurveFitRegressor(gauss,
   p0, chunk_size=2^18).fit(HDF5Source(path, X=["x"], y="y"))``: wall time,
   peak RSS (target < 600 MB), passes, points/s per pass. Before the fit the
   parent reads the file once (``--no-preread`` skips it), so that the passes
   read from the page cache; the resident part of the file (``fincore``) is
   printed before and after the fit. Checked against
   (a) an in-memory ``CurveFitRegressor`` fit of the first 1e7 rows
   (|diff| <= 4 perr of that fit) and (b) an in-memory ``CurveFitRegressor``
   fit of all 1e8 rows (max relative difference <= 1e-8). All three fits use
   ``ftol = xtol = gtol = 1e-10``.
2. 1e7 points in memory, default settings: ``CurveFitRegressor.fit`` (first
   fit in the process, including compilation, and a second, warm fit) vs
   ``scipy.optimize.curve_fit`` (one process each, same seeded data).
   Targets: time ratio sknlsq / scipy <= 0.35 (stretch 0.2), checked for the
   cold and the warm fit; peak RSS sknlsq <= scipy.
3. ``partial_fit``, 1e7 points in 100 chunks of 1e5, in memory: (a) rows
   in random order, one pass within 1e-3 relative of the batch optimum
   (``CurveFitRegressor``, tolerances 1e-10, same points); (b) rows sorted
   by x: parameters finite after every chunk and the final cost over all
   the data no worse than at p0 (how close one and two passes get is
   printed). Time per chunk.

Usage, from the repository root::

    python benchmarks/bench_streaming.py [--quick] [--workdir DIR] [--seed S]
           [--h5-points N] [--subset-points N] [--mem-points N] [--chunks K]
           [--chunk-points M] [--no-preread]

``--quick``: 1e6 HDF5 points (subset 1e5), 1e6 in memory, 20 chunks of 1e4.
Exit status: 0 if all targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Only the standard library at module level (see the docstring).

HERE = Path(__file__).resolve().parent
TRUE = (3.0, 5.0, 1.2, 0.5)
P0 = (1.0, 4.0, 2.0, 0.0)
NOISE = 0.05
XMAX = 10.0
TIGHT = 1e-10
CHUNK_SIZE = 1 << 18
GEN_BLOCK = 1 << 20          # rows per generation / HDF5 write slice
H5_FORMAT = "sknlsq-bench-streaming v1 (contiguous x, y float64; slices of 2^20 rows)"

TARGET_STREAM_RSS_MB = 600.0
TARGET_Z = 4.0
TARGET_SAME_REL = 1e-8
TARGET_RATIO = 0.35
STRETCH_RATIO = 0.2
TARGET_PARTIAL_REL = 1e-3
RESULT_TAG = "@@RESULT "


def gauss_np(x, amp, mu, sigma, offset):
    """NumPy twin of the model (same as ``_common.gauss_np``; defined here so
    that the scipy child does not import jax through ``_common``)."""
    import numpy as np
    return amp * np.exp(-0.5 * ((x - mu) / sigma) ** 2) + offset


# ---------------------------------------------------------------------------
# Helpers used in the children
# ---------------------------------------------------------------------------


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rss_now_mib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def make_data(n, seed):
    """``x ~ U(0, 10)``, ``y = gauss + noise``; y is built in blocks so that no
    full-size temporary exists (the setup peak is just x and y)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, XMAX, n)
    y = np.empty(n)
    for i in range(0, n, GEN_BLOCK):
        s = slice(i, min(i + GEN_BLOCK, n))
        y[s] = gauss_np(x[s], *TRUE)
        y[s] += NOISE * rng.standard_normal(s.stop - s.start)
    return x, y


def ssr(x, y, p):
    """Sum of squared residuals of ``p`` over all of (x, y), in blocks."""
    total = 0.0
    for i in range(0, len(x), GEN_BLOCK):
        r = gauss_np(x[i:i + GEN_BLOCK], *p) - y[i:i + GEN_BLOCK]
        total += float(r @ r)
    return total


def max_rel(p, ref):
    return max(abs(a - b) / abs(b) for a, b in zip(p, ref))


def _record_warnings():
    import warnings
    cm = warnings.catch_warnings(record=True)
    log = cm.__enter__()
    warnings.simplefilter("always")
    return cm, log


def _warn_summary(log):
    seen = []
    for w in log:
        s = f"{w.category.__name__}: {str(w.message)[:200]}"
        if s not in seen:
            seen.append(s)
    return seen


class _CompileProbe:
    """Counts JAX compilations (and their seconds: tracing, lowering, XLA
    backend compile) through ``jax.monitoring``, from ``start()`` on."""

    KEYS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
            "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
            "/jax/core/compile/backend_compile_duration": "compile"}

    def __init__(self):
        import jax.monitoring
        self.on = False
        self.data = {}
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, seconds, **kwargs):
        name = self.KEYS.get(event)
        if self.on and name:
            n, t = self.data.get(name, (0, 0.0))
            self.data[name] = (n + 1, t + seconds)

    def start(self):
        self.data, self.on = {}, True

    def snapshot(self):
        return {k: [n, t] for k, (n, t) in self.data.items()}


def _est_info(est):
    import numpy as np
    out = dict(params=np.asarray(est.params_, float).tolist(),
               perr=np.asarray(est.perr_, float).tolist(),
               nfev=int(est.nfev_), n_iter=int(est.n_iter_),
               status=int(est.status_), message=str(est.message_),
               cost=float(est.cost_))
    return out


# ---------------------------------------------------------------------------
# Children (each runs in a fresh process)
# ---------------------------------------------------------------------------


def child_banner(title, quick, details):
    sys.path.insert(0, str(HERE))
    import _common as C
    C.banner(title, quick, details)
    return {}


def _h5_matches(path, n, seed):
    import h5py
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            ok = (a.get("format") == H5_FORMAT and int(a.get("n", -1)) == n
                  and int(a.get("seed", -1)) == seed
                  and tuple(f["x"].shape) == (n,) and tuple(f["y"].shape) == (n,)
                  and f["x"].dtype == "f8" and f["y"].dtype == "f8")
    except (OSError, KeyError):
        return False
    return bool(ok) and os.path.getsize(path) >= 16 * n


def child_write_h5(path, n, seed):
    import h5py
    import numpy as np
    if os.path.exists(path) and _h5_matches(path, n, seed):
        return dict(reused=True, seconds=0.0, bytes=os.path.getsize(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".partial"
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    with h5py.File(tmp, "w") as f:
        dx = f.create_dataset("x", shape=(n,), dtype="f8")   # contiguous layout
        dy = f.create_dataset("y", shape=(n,), dtype="f8")
        for i in range(0, n, GEN_BLOCK):
            k = min(GEN_BLOCK, n - i)
            x = rng.uniform(0.0, XMAX, k)
            y = gauss_np(x, *TRUE) + NOISE * rng.standard_normal(k)
            dx[i:i + k] = x
            dy[i:i + k] = y
        f.attrs.update(format=H5_FORMAT, n=n, seed=seed, true=np.array(TRUE), noise=NOISE)
    os.replace(tmp, path)
    layout = "contiguous"
    with h5py.File(path, "r") as f:
        if f["x"].chunks is not None:
            layout = f"chunked {f['x'].chunks}"
    return dict(reused=False, seconds=time.perf_counter() - t0, bytes=os.path.getsize(path),
                layout=layout)


def child_stream_h5(path, chunk_size, tol):
    sys.path.insert(0, str(HERE))
    import _common as C
    from sknlsq import HDF5Source, StreamingCurveFitRegressor
    src = HDF5Source(path, X=["x"], y="y")
    base_peak, base_now = _peak_mib(), _rss_now_mib()
    est = StreamingCurveFitRegressor(C.gauss, p0=P0, chunk_size=chunk_size, ftol=tol,
                                     xtol=tol, gtol=tol)
    probe = _CompileProbe()
    cm, log = _record_warnings()
    probe.start()
    t0 = time.perf_counter()
    est.fit(src)
    wall = time.perf_counter() - t0
    cm.__exit__(None, None, None)
    out = _est_info(est)
    out.update(wall=wall, base_peak=base_peak, base_now=base_now, peak=_peak_mib(),
               passes=int(est.passes_), pps=float(est.points_per_second_),
               n_points=int(est.n_points_), compiles=probe.snapshot(),
               warnings=_warn_summary(log))
    return out


def child_mem_h5(path, n_rows, tol):
    """In-memory CurveFitRegressor fit of the first ``n_rows`` rows of the file."""
    sys.path.insert(0, str(HERE))
    import _common as C
    import h5py
    import numpy as np
    from sknlsq import CurveFitRegressor
    x = np.empty(n_rows)
    y = np.empty(n_rows)
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        f["x"].read_direct(x, np.s_[0:n_rows])
        f["y"].read_direct(y, np.s_[0:n_rows])
    t_load = time.perf_counter() - t0
    X = x[:, None]
    base_peak, base_now = _peak_mib(), _rss_now_mib()
    est = CurveFitRegressor(C.gauss, p0=P0, ftol=tol, xtol=tol, gtol=tol)
    cm, log = _record_warnings()
    t0 = time.perf_counter()
    est.fit(X, y)
    wall = time.perf_counter() - t0
    cm.__exit__(None, None, None)
    out = _est_info(est)
    out.update(wall=wall, load_seconds=t_load, base_peak=base_peak, base_now=base_now,
               peak=_peak_mib(), warnings=_warn_summary(log))
    return out


def child_mem_sknlsq(n, seed):
    sys.path.insert(0, str(HERE))
    import _common as C
    from sknlsq import CurveFitRegressor
    x, y = make_data(n, seed)
    X = x[:, None]
    base_peak, base_now = _peak_mib(), _rss_now_mib()
    probe = _CompileProbe()
    cm, log = _record_warnings()
    probe.start()
    t0 = time.perf_counter()
    est = CurveFitRegressor(C.gauss, p0=P0).fit(X, y)
    t_cold = time.perf_counter() - t0
    peak_cold = _peak_mib()
    compiles_cold = probe.snapshot()
    first = _est_info(est)
    probe.start()
    t0 = time.perf_counter()
    est2 = CurveFitRegressor(C.gauss, p0=P0).fit(X, y)
    t_warm = time.perf_counter() - t0
    cm.__exit__(None, None, None)
    out = _est_info(est2)
    out.update(first_params=first["params"], cold=t_cold, warm=t_warm,
               compiles_cold=compiles_cold, compiles_warm=probe.snapshot(), base_peak=base_peak,
               base_now=base_now, peak_cold=peak_cold, peak=_peak_mib(),
               warnings=_warn_summary(log))
    return out


def child_mem_scipy(n, seed):
    import numpy as np
    from scipy.optimize import curve_fit
    x, y = make_data(n, seed)
    base_peak, base_now = _peak_mib(), _rss_now_mib()
    cm, log = _record_warnings()
    t0 = time.perf_counter()
    popt, pcov, info, _, _ = curve_fit(gauss_np, x, y, p0=P0, full_output=True)
    t_first = time.perf_counter() - t0
    nfev = int(info["nfev"])
    del info  # holds fvec and fjac (m x n): not kept alive during the second fit
    peak_first = _peak_mib()
    t0 = time.perf_counter()
    popt2, _ = curve_fit(gauss_np, x, y, p0=P0)
    t_second = time.perf_counter() - t0
    cm.__exit__(None, None, None)
    return dict(params=popt.tolist(), perr=np.sqrt(np.diag(pcov)).tolist(),
                params_second=popt2.tolist(), nfev=nfev, first=t_first,
                second=t_second,
                base_peak=base_peak, base_now=base_now, peak_first=peak_first,
                peak=_peak_mib(), warnings=_warn_summary(log))


def child_partial(n_chunks, chunk_n, seed, order, passes):
    sys.path.insert(0, str(HERE))
    import _common as C
    import numpy as np
    from sknlsq import CurveFitRegressor, StreamingCurveFitRegressor
    n = n_chunks * chunk_n
    x, y = make_data(n, seed)
    if order == "sorted":
        idx = np.argsort(x, kind="stable")
        x, y = x[idx], y[idx]
        del idx
    X = x[:, None]
    base_peak = _peak_mib()
    cm, log = _record_warnings()
    est = StreamingCurveFitRegressor(C.gauss, p0=P0)
    times, all_finite, first_nonfinite = [], True, None
    per_pass = []
    for p in range(passes):
        for k in range(n_chunks):
            s = slice(k * chunk_n, (k + 1) * chunk_n)
            t0 = time.perf_counter()
            est.partial_fit(X[s], y[s])
            times.append(time.perf_counter() - t0)
            if not np.all(np.isfinite(est.params_)):
                if first_nonfinite is None:
                    first_nonfinite = [p, k]
                all_finite = False
        per_pass.append(dict(params=np.asarray(est.params_, float).tolist(),
                             finite=bool(np.all(np.isfinite(est.params_))),
                             cost_all=ssr(x, y, est.params_) if np.all(np.isfinite(est.params_))
                             else float("nan")))
    peak_partial = _peak_mib()
    # The batch optimum on the same points (after the timing above).
    t0 = time.perf_counter()
    ref = CurveFitRegressor(C.gauss, p0=P0, ftol=TIGHT, xtol=TIGHT, gtol=TIGHT).fit(X, y)
    t_batch = time.perf_counter() - t0
    cm.__exit__(None, None, None)
    p_ref = np.asarray(ref.params_, float)
    for pp in per_pass:
        pp["max_rel"] = max_rel(pp["params"], p_ref)
    return dict(order=order, times=times, all_finite=all_finite, first_nonfinite=first_nonfinite,
                per_pass=per_pass, batch_params=p_ref.tolist(), batch_seconds=t_batch,
                cost_p0=ssr(x, y, P0), cost_batch=ssr(x, y, p_ref), base_peak=base_peak,
                peak_partial=peak_partial, peak=_peak_mib(), warnings=_warn_summary(log))


CHILDREN = {"banner": child_banner, "write_h5": child_write_h5, "stream_h5": child_stream_h5,
            "mem_h5": child_mem_h5, "mem_sknlsq": child_mem_sknlsq,
            "mem_scipy": child_mem_scipy, "partial": child_partial}


def child_main(name, args_json):
    start_peak = _peak_mib()
    out = CHILDREN[name](**json.loads(args_json))
    out["start_peak"] = start_peak
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(out))
    return 0


# ---------------------------------------------------------------------------
# Parent (standard library only until every child has run)
# ---------------------------------------------------------------------------


def run_child(name, timeout=7200, echo=False, **kwargs):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--args",
           json.dumps(kwargs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    result, lines = None, []
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
        else:
            lines.append(line)
    if echo and lines:
        print("\n".join(lines))
    if proc.returncode != 0 or result is None:
        print(f"child {name} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n"
              f"{proc.stderr[-5000:]}")
        raise SystemExit(1)
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if err:
        print(f"  [{name}: stderr, last lines]")
        for ln in err[-8:]:
            print("    " + ln[:200])
    result["process_seconds"] = elapsed
    return result


def _fmt_p(p):
    return "(" + ", ".join(f"{v:.10g}" for v in p) + ")"


def _fmt_compiles(c):
    if not c:
        return "no compilation"
    n = c.get("compile", [0, 0.0])[0]
    return (f"{n} program(s) compiled: " + ", ".join(f"{k} {t:.2f} s" for k, (_, t) in
                                                  sorted(c.items())))


def _page_cache(path):
    """Resident part of ``path`` in the page cache (util-linux ``fincore``)."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE",
                              path], capture_output=True, text=True, timeout=60).stdout.split()
        res, size = int(out[0]), int(out[1])
        return f"{res / 1e9:.3f} of {size / 1e9:.3f} GB resident"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return "unknown (no fincore)"


def _preread(path, block=1 << 20):
    """Read ``path`` once (into a reused buffer), so that the fit's passes read
    from the page cache; returns (seconds, bytes)."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while True:
            k = fh.readinto(view)
            if not k:
                break
            total += k
    return time.perf_counter() - t0, total


def _loadavg():
    try:
        return "%.2f / %.2f / %.2f" % os.getloadavg()
    except OSError:
        return "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="reduced problem size for smoke-testing (figures are NOT the "
                        "benchmark's; targets are still checked and reported)")
    p.add_argument("--workdir", default="/tmp/sknlsq-bench",
                   help="where the HDF5 file is written (and reused); default %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--h5-points", type=int, default=None,
                   help="points in the HDF5 file (default 1e8; 1e6 with --quick)")
    p.add_argument("--subset-points", type=int, default=None,
                   help="first rows fitted in memory for check (a) (default h5-points / 10)")
    p.add_argument("--mem-points", type=int, default=None,
                   help="points of the in-memory comparison (default 1e7; 1e6 with --quick)")
    p.add_argument("--chunks", type=int, default=None,
                   help="partial_fit chunks (default 100; 20 with --quick)")
    p.add_argument("--chunk-points", type=int, default=None,
                   help="points per partial_fit chunk (default 1e5; 1e4 with --quick)")
    p.add_argument("--no-preread", action="store_true",
                   help="do not read the HDF5 file once before the streaming fit (by default "
                        "it is read, so that the passes come from the page cache)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child, args.args)

    q = args.quick
    N_H5 = args.h5_points or (10**6 if q else 10**8)
    N_SUB = args.subset_points or N_H5 // 10
    N_MEM = args.mem_points or (10**6 if q else 10**7)
    K = args.chunks or (20 if q else 100)
    M = args.chunk_points or (10**4 if q else 10**5)
    h5_path = os.path.join(os.path.abspath(args.workdir), f"gauss_{N_H5}_seed{args.seed}.h5")

    run_child("banner", echo=True, title="Streaming / out-of-core fits: "
              "StreamingCurveFitRegressor, large in-memory CurveFitRegressor vs scipy",
              quick=q, details={
                  "model": "a*exp(-0.5*((x-mu)/s)^2) + c; true (3, 5, 1.2, 0.5); "
                           "x ~ U(0, 10); noise sd 0.05",
                  "p0": str(P0),
                  "1. HDF5": f"{N_H5:.3g} points (x, y float64, {16 * N_H5 / 1e9:.3g} GB, "
                             f"contiguous datasets) at {h5_path}; chunk_size {CHUNK_SIZE}; "
                             f"subset check on the first {N_SUB:.3g} rows; "
                             f"ftol=xtol=gtol={TIGHT:g} in all three fits",
                  "2. in memory": f"{N_MEM:.3g} points, default settings, seed {args.seed}",
                  "3. partial_fit": f"{K} chunks x {M:.3g} points (random order, sorted by x)",
                  "processes": "every case in a fresh child process (peak RSS = ru_maxrss)",
              })
    print(f"load average 1/5/15 min (start): {_loadavg()}")
    sys.stdout.flush()

    # ---- 1. HDF5 --------------------------------------------------------------
    w = run_child("write_h5", path=h5_path, n=N_H5, seed=args.seed)
    if w["reused"]:
        print(f"HDF5 file reused: {h5_path} ({w['bytes'] / 1e9:.3f} GB)")
    else:
        print(f"HDF5 file written in {w['seconds']:.1f} s: {h5_path} "
              f"({w['bytes'] / 1e9:.3f} GB, {w['layout']} datasets)")
    print(f"  page cache before the pre-read: {_page_cache(h5_path)}")
    if not args.no_preread:
        secs, nbytes = _preread(h5_path)
        print(f"  pre-read the file once (1 MiB blocks): {secs:.2f} s, "
              f"{nbytes / secs / 1e9:.2f} GB/s; page cache now: {_page_cache(h5_path)}")
    sys.stdout.flush()
    st = run_child("stream_h5", path=h5_path, chunk_size=CHUNK_SIZE, tol=TIGHT)
    print(f"  page cache after the streaming fit: {_page_cache(h5_path)}")
    pass_time = st["passes"] * st["n_points"] / st["pps"]
    print(f"streaming fit: {st['wall']:.2f} s, {st['passes']} passes, nfev {st['nfev']}, "
          f"n_iter {st['n_iter']}, status {st['status']} ({st['message']})")
    print(f"  {st['pps'] / 1e6:.2f} M points/s per pass ({pass_time / st['passes']:.2f} s per "
          f"pass; {pass_time:.2f} s in passes, {st['wall'] - pass_time:.2f} s other, "
          "compilation included)")
    print(f"  JAX in the fit: {_fmt_compiles(st['compiles'])}")
    print(f"  n_points {st['n_points']}; RSS peak {st['peak']:.1f} MiB (after imports + "
          f"source: {st['base_peak']:.1f} MiB); params {_fmt_p(st['params'])}")
    print(f"  perr {_fmt_p(st['perr'])}")
    sys.stdout.flush()
    sub = run_child("mem_h5", path=h5_path, n_rows=N_SUB, tol=TIGHT)
    print(f"in-memory subset fit ({N_SUB:.3g} rows): {sub['wall']:.2f} s, nfev {sub['nfev']}, "
          f"RSS peak {sub['peak']:.1f} MiB (after load {sub['base_peak']:.1f} MiB)")
    print(f"  params {_fmt_p(sub['params'])}\n  perr   {_fmt_p(sub['perr'])}")
    sys.stdout.flush()
    full = run_child("mem_h5", path=h5_path, n_rows=N_H5, tol=TIGHT)
    print(f"in-memory fit of all {N_H5:.3g} rows: {full['wall']:.2f} s, nfev {full['nfev']}, "
          f"status {full['status']}, RSS peak {full['peak']:.1f} MiB (after load "
          f"{full['base_peak']:.1f} MiB; load {full['load_seconds']:.1f} s)")
    print(f"  params {_fmt_p(full['params'])}\n  perr   {_fmt_p(full['perr'])}")
    sys.stdout.flush()

    # ---- 2. in memory vs scipy --------------------------------------------------
    sk = run_child("mem_sknlsq", n=N_MEM, seed=args.seed)
    print(f"sknlsq in memory ({N_MEM:.3g}): cold {sk['cold']:.3f} s, warm {sk['warm']:.3f} s, "
          f"nfev {sk['nfev']}; RSS after setup {sk['base_peak']:.1f} MiB (now "
          f"{sk['base_now']:.1f}), after cold fit {sk['peak_cold']:.1f}, end {sk['peak']:.1f}")
    print(f"  JAX in the cold fit: {_fmt_compiles(sk['compiles_cold'])}; in the warm fit: "
          f"{_fmt_compiles(sk['compiles_warm'])}")
    sys.stdout.flush()
    sp = run_child("mem_scipy", n=N_MEM, seed=args.seed)
    print(f"scipy in memory ({N_MEM:.3g}): first {sp['first']:.3f} s, second "
          f"{sp['second']:.3f} s, nfev {sp['nfev']} (incl. finite-difference columns); "
          f"RSS after setup {sp['base_peak']:.1f} MiB (now {sp['base_now']:.1f}), after first "
          f"fit {sp['peak_first']:.1f}, end {sp['peak']:.1f}")
    sys.stdout.flush()

    # ---- 3. partial_fit -----------------------------------------------------------
    pr = run_child("partial", n_chunks=K, chunk_n=M, seed=args.seed + 1, order="random",
                   passes=2)
    ps = run_child("partial", n_chunks=K, chunk_n=M, seed=args.seed + 1, order="sorted",
                   passes=2)

    # ---- analysis (numpy/jax may be imported now) ----------------------------------
    sys.path.insert(0, str(HERE))
    import _common as C
    import numpy as np

    floors = [r["start_peak"] for r in (st, sub, full, sk, sp, pr, ps)]
    print(f"\nru_maxrss at the start of each child (inherited floor): "
          f"{min(floors):.1f}-{max(floors):.1f} MiB")
    # (a) z-scores, (b) same answer.
    z = (np.array(st["params"]) - np.array(sub["params"])) / np.array(sub["perr"])
    rel_full = max_rel(st["params"], full["params"])
    rel_perr = max_rel(st["perr"], full["perr"])
    print("1(a) streaming (all rows) - in-memory subset, in units of the subset's perr: "
          + ", ".join(f"{v:+.3f}" for v in z))
    print(f"1(b) streaming vs in-memory, all rows: max rel diff params {rel_full:.3e}, "
          f"perr {rel_perr:.3e}")
    rel_sk_sp = max_rel(sk["params"], sp["params"])
    print(f"2. sknlsq vs scipy params: max rel diff {rel_sk_sp:.3e} "
          f"(sknlsq {_fmt_p(sk['params'])}, scipy {_fmt_p(sp['params'])}); "
          f"sknlsq cold vs warm fit identical: "
          f"{sk['first_params'] == sk['params']}; nfev sknlsq {sk['nfev']}")
    for r in (pr, ps):
        t = np.array(r["times"])
        tp = t[:K]
        print(f"3. partial_fit ({r['order']}): first chunk {tp[0] * 1e3:.1f} ms (compiles), then "
              f"median {np.median(tp[1:]) * 1e3:.2f} ms, mean {np.mean(tp[1:]) * 1e3:.2f} ms, max "
              f"{np.max(tp[1:]) * 1e3:.2f} ms per chunk; pass 2 median "
              f"{np.median(t[K:]) * 1e3:.2f} ms; batch reference fit {r['batch_seconds']:.2f} s")
        print(f"   params finite after every chunk: {r['all_finite']}"
              + ("" if r["all_finite"] else f" (first non-finite: pass, chunk "
                 f"{r['first_nonfinite']})"))
        print(f"   cost (sum of squares, all data): p0 {r['cost_p0']:.6g}, batch optimum "
              f"{r['cost_batch']:.10g}")
        for i, pp in enumerate(r["per_pass"]):
            print(f"   after pass {i + 1}: max rel diff vs batch {pp['max_rel']:.3e}, cost "
                  f"{pp['cost_all']:.10g}, params {_fmt_p(pp['params'])}")
        if r["warnings"]:
            print(f"   warnings: {r['warnings'][:3]}")
    for name, r in (("stream", st), ("subset", sub), ("full", full), ("sknlsq", sk),
                    ("scipy", sp)):
        if r.get("warnings"):
            print(f"warnings in {name}: {r['warnings'][:3]}")
    print()

    MB = 1024.0 * 1024.0 / 1e6   # MiB -> MB
    stream_mb = st["peak"] * MB
    cold_ratio = sk["cold"] / sp["first"]
    warm_ratio = sk["warm"] / sp["second"]
    pr1, ps1, ps2 = pr["per_pass"][0], ps["per_pass"][0], ps["per_pass"][1]
    t_r = np.array(pr["times"][:K])
    ok_sorted_cost = ps1["cost_all"] <= ps["cost_p0"]
    rows = [
        C.Row(f"1. stream HDF5 {N_H5:.0e} pts: wall (1 process, compile incl.)", st["wall"],
              full["wall"]),
        C.Row("   stream: peak RSS [MB] (ref: in-memory fit)", stream_mb, full["peak"] * MB,
              unit="value", ratio=stream_mb / (full["peak"] * MB),
              target=f"< {TARGET_STREAM_RSS_MB:g} MB", passed=stream_mb < TARGET_STREAM_RSS_MB),
        C.Row("   stream: passes | points/s per pass [M/s]", st["passes"], st["pps"] / 1e6,
              unit="value", ratio=float("nan")),
        C.Row(f"1a. max |z| vs in-memory fit of first {N_SUB:.0e} rows", float(np.max(np.abs(z))),
              float("nan"), unit="value", ratio=float("nan"), target=f"<= {TARGET_Z:g}",
              passed=bool(np.max(np.abs(z)) <= TARGET_Z)),
        C.Row(f"1b. max rel diff vs in-memory fit of all {N_H5:.0e}", rel_full, float("nan"),
              unit="value", ratio=float("nan"), target=f"<= {TARGET_SAME_REL:g}",
              passed=rel_full <= TARGET_SAME_REL),
        C.Row(f"2. in memory {N_MEM:.0e}: first fit (cold, compile incl.)", sk["cold"],
              sp["first"], target=f"ratio <= {TARGET_RATIO}",
              passed=cold_ratio <= TARGET_RATIO),
        C.Row("   second fit, same process (warm)", sk["warm"], sp["second"],
              target=f"ratio <= {TARGET_RATIO}", passed=warm_ratio <= TARGET_RATIO),
        C.Row(f"   stretch ratio <= {STRETCH_RATIO} (cold | warm)", cold_ratio, warm_ratio,
              unit="value", ratio=float("nan"),
              target=f"{'met' if cold_ratio <= STRETCH_RATIO else 'missed'} | "
                     f"{'met' if warm_ratio <= STRETCH_RATIO else 'missed'}"),
        C.Row("   peak RSS [MB]", sk["peak"] * MB, sp["peak"] * MB, unit="value",
              ratio=sk["peak"] / sp["peak"], target="sknlsq <= scipy",
              passed=sk["peak"] <= sp["peak"]),
        C.Row("   RSS after imports + data [MB]", sk["base_peak"] * MB, sp["base_peak"] * MB,
              unit="value", ratio=float("nan")),
        C.Row("   RSS increment of the fits [MB]", (sk["peak"] - sk["base_peak"]) * MB,
              (sp["peak"] - sp["base_peak"]) * MB, unit="value",
              ratio=(sk["peak"] - sk["base_peak"]) / max(sp["peak"] - sp["base_peak"], 1e-9)),
        C.Row("   max rel diff of params sknlsq vs scipy", rel_sk_sp, float("nan"),
              unit="value", ratio=float("nan")),
        C.Row("3a. partial_fit random, 1 pass: max rel diff vs batch", pr1["max_rel"],
              float("nan"), unit="value", ratio=float("nan"),
              target=f"<= {TARGET_PARTIAL_REL:g}", passed=pr1["max_rel"] <= TARGET_PARTIAL_REL),
        C.Row(f"    time per chunk ({M:.0e} pts), median of chunks 2..{K}",
              float(np.median(t_r[1:])), float("nan")),
        C.Row("3b. partial_fit sorted: params finite after every chunk",
              float(ps["all_finite"]), float("nan"), unit="value", ratio=float("nan"),
              target="all finite", passed=ps["all_finite"]),
        C.Row("    cost all data after 1 pass | at p0", ps1["cost_all"], ps["cost_p0"],
              unit="value", ratio=ps1["cost_all"] / ps["cost_p0"], target="<= cost at p0",
              passed=ok_sorted_cost),
        C.Row("    max rel diff vs batch: 1 pass | 2 passes", ps1["max_rel"], ps2["max_rel"],
              unit="value", ratio=float("nan")),
    ]
    C.print_table(rows, reference_name="reference", quick=q)
    print("references: 1. in-memory CurveFitRegressor fit of the same rows (separate process); "
          "2. scipy.optimize.curve_fit; 3. see the row.")
    return C.exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
