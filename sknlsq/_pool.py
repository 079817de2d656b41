"""The pooled context shared by every fit: compiled programs and staging buffers.

A :class:`MemoryPool` holds

* compiled solver programs, keyed by model, padded shape bucket, dtype and the
  static solver settings (everything that would make XLA compile anew), so a
  repeated fit of a known shape costs one call of an already compiled
  executable;
* host staging buffers for the padded data, handed out exclusively
  (``acquire`` / ``release``) so concurrent fits never share one, and reused
  so a repeated fit allocates nothing new.

Both are bounded by ``max_pool_size`` entries with least-recently-used
eviction. All methods are thread-safe. The pool knows nothing of estimators
or models: callers give it opaque hashable keys and a ``build`` function.

Which pool a fit uses: the ``pool=`` argument if given, else the innermost
active ``with MemoryPool(...)`` block of the current context, else a
process-wide default pool (:func:`get_default_pool`).
"""

from __future__ import annotations

import contextvars
import os
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict

import jax
import numpy as np

__all__ = ["MemoryPool", "get_default_pool", "resolve_pool"]

_active: contextvars.ContextVar = contextvars.ContextVar("sknlsq_active_pool", default=None)
# The pools active before each enclosing ``with pool:`` of this context
# (thread / task), innermost last. Kept per context, not per pool: one pool
# entered by several threads at once must restore each thread's own state.
_outer: contextvars.ContextVar = contextvars.ContextVar("sknlsq_outer_pools", default=())

# --------------------------------------------------------------------------
# Programs that must not run concurrently
# --------------------------------------------------------------------------
# jaxlib's CPU LAPACK kernels (QR, SVD, Cholesky, ... of a *stack* of
# matrices, i.e. LAPACK under jax.vmap) split the stack over XLA's intra-op
# thread pool and block until the pieces are done (ParallelBatchMap). With
# as many such programs running at once (from several Python threads) as the
# pool has threads (two on a 2-core machine), every pool thread waits and the
# programs never finish. Such programs therefore run one at a time.

_SERIAL_LOCK = threading.Lock()
_last_output = None  # one output of the serialised program dispatched last
_BATCHED_SHAPE = re.compile(r"\[\d+(?:,\d+){2,}\]")  # an array of rank >= 3
_BATCH_DIMS = re.compile(r'num_batch_dims="(\d+)"')


def _has_batched_lapack(hlo_text):
    """Whether the (optimised) HLO calls a LAPACK kernel on a stack of
    matrices: ``num_batch_dims`` > 0, or an array of rank >= 3 in the call."""
    for line in hlo_text.splitlines():
        if 'custom_call_target="lapack_' in line:
            dims = _BATCH_DIMS.search(line)
            if (dims is not None and int(dims.group(1)) > 0) or _BATCHED_SHAPE.search(line):
                return True
    return False


class _Serialized:
    """A compiled program of which at most one runs at a time, process-wide.

    A call first waits (under the lock) until the previous such program has
    finished, then dispatches its own and returns without waiting: a single
    thread thus keeps JAX's asynchronous dispatch, and a second thread's
    program starts only once the first one's is done. One output of the
    last program is kept to wait on (all outputs of one execution are
    completed together); the smallest, so that nothing large stays alive.
    """

    __slots__ = ("program",)

    def __init__(self, program):
        self.program = program

    def __call__(self, *args):
        global _last_output
        with _SERIAL_LOCK:
            if _last_output is not None:
                try:
                    _last_output.block_until_ready()
                except Exception:  # noqa: BLE001 - that program's caller sees its error
                    pass
                _last_output = None
            out = self.program(*args)
            leaves = [a for a in jax.tree_util.tree_leaves(out)
                      if hasattr(a, "block_until_ready")]
            if leaves:
                _last_output = min(leaves, key=lambda a: a.size)
        return out

    def __getattr__(self, name):
        return getattr(self.program, name)


def run_serialized(fn, *args):
    """``fn(*args)`` (a JAX computation that runs LAPACK on stacks of
    matrices) as a serialised program: started once the previous one has
    finished (see :class:`_Serialized`)."""
    return _Serialized(fn)(*args)


def _serialized_if_needed(program):
    text = getattr(program, "as_text", None)
    if text is None:
        return program
    try:
        batched = _has_batched_lapack(text())
    except Exception:  # noqa: BLE001 - no HLO text: run it as it is
        return program
    return _Serialized(program) if batched else program


class MemoryPool:
    """Compiled solver programs and reusable buffers shared by fits.

    Parameters
    ----------
    max_pool_size : int, default=128
        Maximum number of compiled programs, and separately of buffer shapes,
        kept; the least recently used entry is evicted beyond it.
    cache_dir : str or os.PathLike, optional
        Turn on JAX's persistent compilation cache in this directory, so that
        other processes (joblib workers, later runs) load compiled programs
        instead of compiling them. This is a process-wide JAX setting, and it
        is also exported as ``JAX_COMPILATION_CACHE_DIR`` (with zero minimum
        compile time and entry size) for worker processes started later.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from sknlsq import MemoryPool, curve_fit
    >>> def f(x, a, b):
    ...     return a * jnp.exp(-b * x)
    >>> with MemoryPool(max_pool_size=16) as pool:
    ...     for n in (900, 1000, 1010):
    ...         x = np.linspace(0, 4, n)
    ...         popt, _ = curve_fit(f, x, 2.0 * np.exp(-0.5 * x))
    ...     stats = pool.get_stats()
    >>> stats["compiles"], stats["cache_hits"]
    (1, 2)
    """

    def __init__(self, max_pool_size: int = 128, *, cache_dir=None):
        if (not isinstance(max_pool_size, (int, np.integer)) or isinstance(max_pool_size, bool)
                or max_pool_size < 1):
            raise ValueError(f"`max_pool_size` must be a positive integer, got "
                             f"{max_pool_size!r}.")
        self.max_pool_size = int(max_pool_size)
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        if self.cache_dir is not None:
            enable_persistent_cache(self.cache_dir)
        self._lock = threading.RLock()
        self._programs: OrderedDict = OrderedDict()
        self._building: dict = {}
        self._free: OrderedDict = OrderedDict()  # (shape, dtype) -> [arrays]
        self._held = 0  # bytes of all buffers owned by the pool (free or lent)
        self._lent: dict = {}  # id(array) -> key, for release
        self._id = uuid.uuid4().hex
        with _registry_lock:
            _registry[self._id] = self
        self._reset_stats()

    # -- statistics ------------------------------------------------------------
    def _reset_stats(self):
        self._stats = dict(allocations=0, reuses=0, peak_memory=0, compiles=0, cache_hits=0,
                           compile_seconds=0.0, evictions=0)

    def get_stats(self) -> dict:
        """Counters since creation or the last :meth:`clear`.

        ``allocations`` / ``reuses``: staging buffers newly allocated / handed
        out again; ``reuse_rate`` = reuses / (allocations + reuses);
        ``peak_memory``: most bytes of buffers held at once; ``memory``: bytes
        held now; ``compiles`` / ``cache_hits``: program look-ups that
        compiled / found a compiled program; ``compile_seconds``: time spent
        compiling; ``programs`` and ``evictions``: entries held and evicted.
        """
        with self._lock:
            s = dict(self._stats)
            total = s["allocations"] + s["reuses"]
            s["reuse_rate"] = s["reuses"] / total if total else 0.0
            s["memory"] = self._held
            s["programs"] = len(self._programs)
            return s

    def clear(self):
        """Drop every compiled program and buffer and reset the statistics.

        The pool stays usable: later fits recompile transparently.
        """
        with self._lock:
            self._programs.clear()
            self._free.clear()
            self._lent.clear()
            self._held = 0
            self._reset_stats()

    # -- compiled programs -----------------------------------------------------
    def program(self, key, build):
        """The compiled program for ``key``, built with ``build()`` on a miss.

        ``build`` returns a compiled callable; the time it takes is counted
        as compile time. Concurrent misses on one key compile once.
        """
        with self._lock:
            prog = self._programs.get(key)
            if prog is not None:
                self._programs.move_to_end(key)
                self._stats["cache_hits"] += 1
                return prog
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                prog = self._programs.get(key)
                if prog is not None:
                    self._programs.move_to_end(key)
                    self._stats["cache_hits"] += 1
                    return prog
            t0 = time.perf_counter()
            prog = _serialized_if_needed(build())
            dt = time.perf_counter() - t0
            with self._lock:
                self._programs[key] = prog
                self._stats["compiles"] += 1
                self._stats["compile_seconds"] += dt
                while len(self._programs) > self.max_pool_size:
                    self._programs.popitem(last=False)
                    self._stats["evictions"] += 1
                self._building.pop(key, None)
        return prog

    # -- staging buffers -------------------------------------------------------
    def acquire(self, shape, dtype=np.float64) -> np.ndarray:
        """An uninitialised array lent exclusively to the caller until
        :meth:`release`; reused from earlier fits when one is free."""
        key = (tuple(int(s) for s in shape), np.dtype(dtype).str)
        with self._lock:
            free = self._free.get(key)
            if free:
                arr = free.pop()
                self._free.move_to_end(key)
                self._stats["reuses"] += 1
            else:
                arr = None
        if arr is None:
            arr = np.empty(key[0], dtype=np.dtype(dtype))
            with self._lock:
                self._stats["allocations"] += 1
                self._held += arr.nbytes
                self._stats["peak_memory"] = max(self._stats["peak_memory"], self._held)
        with self._lock:
            self._lent[id(arr)] = key
        return arr

    def release(self, arr: np.ndarray):
        """Give a buffer from :meth:`acquire` back to the pool."""
        with self._lock:
            key = self._lent.pop(id(arr), None)
            if key is None:  # the pool was cleared while it was lent: drop it
                return
            self._free.setdefault(key, []).append(arr)
            self._free.move_to_end(key)
            while len(self._free) > self.max_pool_size:
                _, dropped = self._free.popitem(last=False)
                self._held -= sum(a.nbytes for a in dropped)
                self._stats["evictions"] += 1

    # -- context management ----------------------------------------------------
    def __enter__(self):
        _outer.set(_outer.get() + (_active.get(),))
        _active.set(self)
        return self

    def __exit__(self, *exc):
        outer = _outer.get()
        if not outer:
            raise RuntimeError("MemoryPool.__exit__ without a matching __enter__ in this "
                               "thread or context.")
        _outer.set(outer[:-1])
        _active.set(outer[-1])
        return False

    def __repr__(self):
        s = self.get_stats()
        return (f"MemoryPool(max_pool_size={self.max_pool_size}, programs={s['programs']}, "
                f"memory={s['memory']} bytes)")

    # A pool is a shared resource, not a value: copies (scikit-learn's clone
    # deep-copies parameters) share it. A pool sent to another process
    # (joblib workers) arrives as that process's pool for the same identity:
    # created empty with the same settings the first time, then shared by
    # every later task there, so compiled programs are reused across tasks.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (_restore_pool, (self._id, self.max_pool_size, self.cache_dir))


_default_pool = None
_default_lock = threading.Lock()
_registry: "weakref.WeakValueDictionary[str, MemoryPool]" = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()
_restored: dict = {}  # pools created by unpickling: held for the life of the process


def _restore_pool(pool_id, max_pool_size, cache_dir):
    """Unpickling: this process's pool of that identity (created on first use
    and then kept, so later tasks in a worker process find its programs)."""
    with _registry_lock:
        pool = _registry.get(pool_id)
    if pool is None:
        pool = MemoryPool(max_pool_size, cache_dir=cache_dir)
        with _registry_lock:
            _registry.pop(pool._id, None)
            pool._id = pool_id
            pool = _registry.setdefault(pool_id, pool)
            _restored[pool_id] = pool
    return pool


def get_default_pool() -> MemoryPool:
    """The process-wide pool used when no other is given or active."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = MemoryPool()
        return _default_pool


def resolve_pool(pool=None) -> MemoryPool:
    if pool is not None:
        if not isinstance(pool, MemoryPool):
            raise TypeError(f"`pool` must be a MemoryPool or None, got {type(pool).__name__}.")
        return pool
    active = _active.get()
    return active if active is not None else get_default_pool()


def enable_persistent_cache(cache_dir):
    """Turn on JAX's persistent compilation cache in ``cache_dir`` (process-wide).

    The matching environment variables are set too, so worker processes
    started afterwards (joblib/loky, multiprocessing) use the same cache from
    their first compile on.
    """
    import jax

    try:
        os.makedirs(cache_dir, exist_ok=True)
        if not os.access(cache_dir, os.W_OK | os.X_OK):
            raise PermissionError("the directory is not writable")
    except (OSError, TypeError) as exc:
        raise ValueError(f"`cache_dir` {cache_dir!r} cannot be used as a compilation cache "
                         f"directory: {exc}") from exc
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.fspath(cache_dir)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    jax.config.update("jax_compilation_cache_dir", os.fspath(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
