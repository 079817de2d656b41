"""Numerical configuration: the scoped float64 context used by every fit.

JAX computes in float32 unless ``jax_enable_x64`` is on. sknlsq never flips
that global flag (which would silently change a user's own float32 JAX code);
each fit runs inside a scoped x64 context instead. Compiled programs are
cached per x64 state by JAX itself, so this costs nothing on repeated fits.
"""

from __future__ import annotations

import threading
import time

import jax
import numpy as np


def x64():
    """Context manager enabling float64 in JAX for the enclosed code only."""
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:  # jax >= 0.8: a config State usable as a context manager
        return enable(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


_callback_thread = threading.local()


def x64_in_callback_thread():
    """Enable float64 for the rest of this thread's life if it is off here.

    Called first thing in every host callback (NumPy-only models, chunk
    readers). XLA may run a callback on one of its own worker threads, which
    does not see the calling thread's scoped x64 context; JAX would then cast
    the callback's float64 results to float32 and fail on the dtype check. A
    fit's own thread always has x64 on (it runs inside :func:`x64`), so a
    thread where it is off is an XLA worker: its thread-local setting is
    switched on and left on (those threads run nothing but callbacks). The
    global flag, and so any user thread, is never touched.
    """
    if getattr(_callback_thread, "x64", False):
        return
    if not _thread_x64():
        x64().__enter__()  # deliberately never exited: see above
    _callback_thread.x64 = True


def _thread_x64():
    """The value of ``jax_enable_x64`` as this thread sees it."""
    try:
        from jax._src.config import enable_x64 as state

        return bool(state.value)
    except (ImportError, AttributeError):  # pragma: no cover - older jax
        return bool(jax.config.jax_enable_x64)


# XLA:CPU's newer fusion emitters roughly double the compile time of the
# solver programs (many small fusions inside nested while loops) and made the
# compiled fits no faster here (jax 0.10, 2-core x86_64: lm solver compile
# 1.13 s -> 0.58 s, warm 1,000-point fit 441 -> 324 us; see
# benchmarks/README.md). The option only exists on the CPU backend.
_CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
_options_ok = True


def compile_lowered(lowered):
    """``lowered.compile()`` with this package's compiler options."""
    global _options_ok
    if _options_ok and jax.default_backend() == "cpu":
        try:
            return lowered.compile(compiler_options=_CPU_COMPILER_OPTIONS)
        except Exception:  # an XLA without this option: compile as is from now on
            _options_ok = False
    return lowered.compile()


# How long the caller polls for a compiled program's result before it blocks.
_SPIN_SECONDS = 0.002


def fetch(out, spin=True):
    """``np.asarray(out)`` for the result of a compiled call.

    JAX's CPU runtime runs a program (one with loops) on a worker thread;
    a caller that blocks on the result is put to sleep and woken when it is
    ready, which on a small VM costs tens of microseconds, a sizeable part of
    a small fit. With ``spin`` the caller polls ``is_ready()`` for up to
    ``_SPIN_SECONDS`` first. Never spin on a program with host callbacks:
    they need the interpreter lock that the polling thread holds.
    """
    if spin:
        ready = getattr(out, "is_ready", None)
        if ready is not None and not ready():
            deadline = time.perf_counter() + _SPIN_SECONDS
            while not ready() and time.perf_counter() < deadline:
                pass
    return np.asarray(out)
