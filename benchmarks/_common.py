"""Shared helpers for the ``benchmarks/bench_*.py`` scripts.

* ``ROOT`` is put on ``sys.path`` on import, so the scripts (run as
  ``python benchmarks/<name>.py`` from anywhere) import the working tree's
  ``sknlsq`` rather than an installed copy;
* the benchmark models, written twice: with ``jax.numpy`` for sknlsq and with
  NumPy for scipy. They live here, at module level in an importable module,
  so that joblib/loky workers can unpickle them;
* timing (:func:`time.perf_counter`), a machine description and a small
  results table with the target and PASS/FAIL.

Not a test module: pytest only collects ``tests/`` (see ``pyproject.toml``),
and none of these files matches ``test_*.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
for _p in (str(ROOT), str(BENCH_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# ---------------------------------------------------------------------------
# Models (jnp for sknlsq, NumPy twin for scipy)
# ---------------------------------------------------------------------------


def decay(x, a, b, c):
    """Exponential decay ``a * exp(-b x) + c`` (jax.numpy, for sknlsq)."""
    return a * jnp.exp(-b * x) + c


def decay_np(x, a, b, c):
    """NumPy twin of :func:`decay` (for scipy)."""
    return a * np.exp(-b * x) + c


def gauss(x, amp, mu, sigma, offset):
    """Gaussian peak on a constant background (jax.numpy, for sknlsq)."""
    return amp * jnp.exp(-0.5 * ((x - mu) / sigma) ** 2) + offset


def gauss_np(x, amp, mu, sigma, offset):
    """NumPy twin of :func:`gauss` (for scipy)."""
    return amp * np.exp(-0.5 * ((x - mu) / sigma) ** 2) + offset


# ---------------------------------------------------------------------------
# Process probes (used as extra GridSearchCV scorers, so that each joblib
# worker reports what it did; scorers must be importable module-level
# callables with the signature scorer(estimator, X, y) -> float)
# ---------------------------------------------------------------------------

# JAX compilation events seen by this process (counted from the moment this
# module is imported: in a loky worker, when the first task unpickles a model
# from here, i.e. before that worker's first compile).
JAX_EVENTS: dict = {}


def _on_jax_event(event, **kwargs):
    JAX_EVENTS[event] = JAX_EVENTS.get(event, 0) + 1


def _on_jax_duration(event, seconds, **kwargs):
    key = event + " [s]"
    JAX_EVENTS[key] = JAX_EVENTS.get(key, 0.0) + seconds


def _register_jax_listeners():
    import jax.monitoring

    jax.monitoring.register_event_listener(_on_jax_event)
    jax.monitoring.register_event_duration_secs_listener(_on_jax_duration)


_register_jax_listeners()


def probe_pid(estimator, X, y):
    """Scorer: the id of the process that fitted ``estimator``."""
    return float(os.getpid())


def probe_cache_dir_set(estimator, X, y):
    """Scorer: 1.0 if JAX's persistent compilation cache is configured here."""
    import jax

    return 1.0 if jax.config.jax_compilation_cache_dir else 0.0


def probe_cache_hits(estimator, X, y):
    """Scorer: persistent-cache hits so far in this process (cumulative)."""
    return float(JAX_EVENTS.get("/jax/compilation_cache/cache_hits", 0))


def probe_cache_misses(estimator, X, y):
    """Scorer: persistent-cache misses so far in this process (cumulative)."""
    return float(JAX_EVENTS.get("/jax/compilation_cache/cache_misses", 0))


def probe_backend_compile_s(estimator, X, y):
    """Scorer: seconds of XLA backend compilation (or cache loading) so far in
    this process (cumulative)."""
    return float(JAX_EVENTS.get("/jax/core/compile/backend_compile_duration [s]", 0.0))


PROBE_SCORERS = {
    "pid": probe_pid,
    "cache_dir_set": probe_cache_dir_set,
    "cache_hits": probe_cache_hits,
    "cache_misses": probe_cache_misses,
    "backend_compile_s": probe_backend_compile_s,
}


# ---------------------------------------------------------------------------
# Command line, timing
# ---------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the common ``--quick`` flag."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="reduced problem size for smoke-testing (figures are NOT the "
                        "benchmark's; targets are still checked and reported)")
    return p


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (time.perf_counter)."""

    def __enter__(self):
        self._t0 = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        return False


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call of ``fn``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def median(xs):
    return float(statistics.median(xs))


def fmt_s(seconds: float) -> str:
    """Seconds with a unit that keeps 3-4 significant digits."""
    if seconds != seconds:  # NaN
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


# ---------------------------------------------------------------------------
# Machine description, banner, results table
# ---------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "sknlsq"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + (" (sknlsq/ modified)" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict:
    """Facts about this machine and the library versions, as strings."""
    import jax
    import scipy

    try:
        import sknlsq
        sk_version = sknlsq.__version__
    except Exception as exc:  # noqa: BLE001 - report, do not fail
        sk_version = f"not importable ({type(exc).__name__})"
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = "%.2f / %.2f / %.2f" % os.getloadavg()
    except (AttributeError, OSError):
        load = "unknown"
    return {
        "platform": platform.platform(),
        "platform.processor()": repr(platform.processor()),
        "cpu model (/proc/cpuinfo)": _cpu_model() or "unknown",
        "os.cpu_count()": str(os.cpu_count()),
        "usable cpus (sched_getaffinity)": str(affinity),
        "load average 1/5/15 min (start)": load,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax.devices()": str(jax.devices()),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sknlsq": f"{sk_version} @ {_git_revision()}",
    }


def banner(title: str, quick: bool, details: dict | None = None):
    """Print the benchmark title, the machine and the problem size."""
    print("=" * 78)
    print(title)
    print("=" * 78)
    if quick:
        print("*** --quick: REDUCED SIZE for smoke-testing; these are NOT the benchmark's "
              "figures ***")
    for k, v in machine_info().items():
        print(f"  {k:<32} {v}")
    for k, v in (details or {}).items():
        print(f"  {k:<32} {v}")
    print()
    sys.stdout.flush()


class Row:
    """One line of the results table.

    ``ratio`` is sknlsq / reference; ``passed`` is True/False, or None when
    the line is informational (no target).
    """

    def __init__(self, name, sknlsq=float("nan"), reference=float("nan"), target="",
                 passed=None, ratio=None, unit="time"):
        self.name = name
        self.sknlsq = sknlsq
        self.reference = reference
        if ratio is None and unit == "time" and reference == reference and reference > 0:
            ratio = sknlsq / reference
        self.ratio = ratio
        self.target = target
        self.passed = None if passed is None else bool(passed)
        self.unit = unit

    def cells(self):
        conv = fmt_s if self.unit == "time" else (lambda v: f"{v:.4g}" if v == v else "n/a")
        verdict = {True: "PASS", False: "FAIL", None: "-"}[self.passed]
        ratio = "n/a" if self.ratio is None or self.ratio != self.ratio else f"{self.ratio:.3f}"
        return [self.name, conv(self.sknlsq), conv(self.reference), ratio, self.target or "-",
                verdict]


def print_table(rows, reference_name="scipy", quick=False):
    """Print ``rows`` (list of :class:`Row`) as an aligned table."""
    head = ["measurement", "sknlsq", reference_name, "ratio sk/ref", "target", "result"]
    body = [r.cells() for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(str(c).ljust(w) for c, w in zip(head, widths)))
    print(line)
    for cells in body:
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)))
    print(line)
    try:
        print("load average 1/5/15 min (end): %.2f / %.2f / %.2f" % os.getloadavg())
    except (AttributeError, OSError):
        pass
    if quick:
        print("(--quick run: reduced size, not the benchmark's figures)")
    sys.stdout.flush()


def exit_code(rows) -> int:
    """0 when every row with a target passed, 1 otherwise."""
    return 0 if all(r.passed is not False for r in rows) else 1
