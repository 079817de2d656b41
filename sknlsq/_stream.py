"""Out-of-core and online fits over chunked data.

Two modes, both exact where they claim to be:

* :func:`fit_chunked` -- the exact multi-pass fit. The solvers of
  ``_solvers`` run unchanged on a :class:`~._solvers.ChunkedProblem`: every
  linearisation is one pass over the chunks accumulating the QR factor of
  ``[J | f]`` (TSQR, float64), every trial point one cost pass. Chunks come
  from a :class:`~._sources.ChunkSource` through a host callback inside the
  compiled program (one program per chunk shape and settings, whatever the
  data length), or, for data already in memory, from device arrays sliced
  in the program (:func:`fit_in_chunks`). Memory depends on the chunk size
  and the number of parameters, not on the number of points.

  The solve runs in segments of ``checkpoint_every`` trial steps; after each
  segment the solver state (a few n-vectors and n x n matrices) is written to
  ``checkpoint`` atomically. Checkpoints are taken between iterations, so a
  killed fit that restarts from one repeats at most the passes of one
  segment and ends with the same result as an uninterrupted fit.

* :class:`OnlineState` / :func:`online_update` -- the ``partial_fit`` mode.
  The information of the chunks seen so far is kept as a quadratic
  ``0.5 ||R (p - x) + z||^2`` (an R factor, i.e. the square root of the
  Gauss-Newton information matrix). A new chunk is fitted by the ordinary
  trust-region solver on its own residuals plus that quadratic; the result's
  linearisation (chunk plus prior, QR-reduced) becomes the next quadratic.
  An optional forgetting factor ``lam`` in (0, 1] scales the old information
  by ``lam`` before each update.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
import types
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from . import _model
from ._config import compile_lowered, x64, x64_in_callback_thread
from ._fit import (DEFAULT_REFINE, FitResult, _check_common, _covariance,
                   _initialize_feasible, _make_problem, _plan, _prepare_bounds,
                   _resolve_solver, check_points_for_method, point_scale_key)
from ._pool import resolve_pool
from ._solvers import (MESSAGES, NONFINITE_X0, ChunkedProblem, Options, advance, finish,
                       linearize, running, start)
from ._solvers._losses import loss_id, static_loss
from ._solvers._problem import loss_scale
from ._sources import ChunkSource, IterableSource, _check_chunk_size, check_chunk

CHECKPOINT_VERSION = 2  # 2: model fingerprint by its computation, digest of chunk 0


# --------------------------------------------------------------------------
# Host side of a pass: the reader behind the io_callback
# --------------------------------------------------------------------------

_readers: dict = {}
_readers_lock = threading.Lock()
_tokens = itertools.count(1)


class _ModelRaised(Exception):
    """The model raised in a host callback of this fit (recorded by
    ``_model``): the reader stops the pass, fit_chunked reports it."""


class _ChunkError(Exception):
    """Raised inside the io_callback in place of the reader's own exception.

    The original is kept in ``_Reader.error`` and re-raised by
    :func:`fit_chunked` once the compiled program has stopped; this stand-in
    only has to stop the program, and lets :class:`_DropChunkErrors`
    recognise the failure as ours.
    """


class _DropChunkErrors(logging.Filter):
    """Drops JAX's "jax.io_callback failed" log record (with a traceback)
    for a chunk error of our reader: the error reaches the caller as an
    exception anyway, so the log would only repeat it, even when the caller
    catches it. Every other record passes."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _ChunkError)


def _install_log_filter():
    logger = logging.getLogger("jax._src.callback")  # where io_callback logs failures
    if not any(type(f).__name__ == _DropChunkErrors.__name__ for f in logger.filters):
        logger.addFilter(_DropChunkErrors())


_install_log_filter()


def _dispatch(token, k):
    x64_in_callback_thread()
    reader = _readers.get(int(token))
    if reader is None:  # pragma: no cover - a program outliving its fit
        raise RuntimeError("no chunk reader registered for this fit")
    return reader.read(int(k))


class _Reader:
    """Serves chunk ``k`` of the current pass to the compiled program.

    Chunks are padded to ``chunk_size`` rows: ``x`` repeats a valid row, the
    weights are zero. The weights are ``sqrt(sample_weight)`` (ones without),
    which is also what a robust loss scales ``f_scale`` by (``point_scale``
    ``"w"``). Passes are read sequentially (chunk 0 starts a new
    one); any exception is kept in ``error`` for the caller to re-raise once
    the compiled program has stopped.
    """

    def __init__(self, source, chunk_size, n_features, nan_policy, fill_x, progress=None,
                 checkpoint=None):
        self.source = source
        self.cs = chunk_size
        self.nf = n_features
        self.nan_policy = nan_policy
        self.fill_x = np.asarray(fill_x, dtype=float)
        self.progress = progress
        self.error = None
        self.passes = 0
        self.rows_seen = self.valid_rows = None  # of the last complete pass
        # (rows_seen, valid_rows) stored in the checkpoint resumed from: the
        # first complete pass must find the same counts.
        self.checkpoint = checkpoint
        self.expected_rows = None  # (rows, valid rows, pass checksum) of the checkpoint
        self.pass_checksum = None  # of the last complete pass, see _pass_checksum
        self._sums = (0, 0)
        self.pass_seconds = []
        self._it = None
        self._pending = None
        self._next = 0
        self._rows = self._valid = 0
        self._whole = False  # the current pass started at chunk 0
        self._t0 = 0.0
        # Host-error registration of the fit (_model.reset_host_error): a
        # model that raised stops the fit at the next chunk.
        self.error_slot = None

    def close(self):
        if self._it is not None:
            self._it.close()
            self._it = None

    def _fetch(self):
        return next(self._it, None)

    def read(self, k):
        try:
            return self._read(k)
        except _ModelRaised:
            self.close()  # fit_chunked reports the model's own exception
            raise _ChunkError("the model raised") from None
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            self.close()
            # Stops the program; fit_chunked re-raises ``self.error``.
            raise _ChunkError(f"{type(exc).__name__}: {exc}") from None

    def _read(self, k):
        if self.error_slot is not None and _model.peek_host_error(self.error_slot) is not None:
            raise _ModelRaised
        if k == 0 or k != self._next or self._it is None:
            self.close()
            self._it = self.source.chunks(self.cs, start_chunk=k)
            self._pending = self._fetch()
            self._whole = k == 0
            if k == 0:
                self._rows = self._valid = 0
                self._sums = (0, 0)
                self._t0 = time.perf_counter()
        chunk = self._pending
        if chunk is None:
            raise ValueError("the data source yielded no data (an empty pass).")
        self._pending = self._fetch()
        more = self._pending is not None
        self._next = k + 1
        if self._whole:
            self._sums = _add_checksum(self._sums, chunk, self._rows)
        chunk = check_chunk(chunk, self.nf, self.nan_policy)
        rows = chunk.n_rows
        X = chunk.X  # (rows, nf), checked; rows may be 0 with nan_policy='omit'
        w = np.ones(rows) if chunk.sample_weight is None else np.sqrt(chunk.sample_weight)
        Xp = np.empty((self.cs, self.nf))
        Xp[:rows] = X
        Xp[rows:] = X[-1] if rows else self.fill_x
        yp = np.zeros(self.cs)
        yp[:rows] = chunk.y
        wp = np.zeros(self.cs)
        wp[:rows] = w
        self._rows += rows
        self._valid += int(np.count_nonzero(w))
        if self.progress is not None:
            self.progress.update(rows)
        if not more:
            self.close()
            checksum = _pass_checksum(self._sums) if self._whole else None
            if self._whole and self._valid == 0:
                raise ValueError("the data have no row with a non-zero sample weight (every "
                                 "weight is zero): there is nothing to fit.")
            if self._whole and self.expected_rows is not None:
                self._check_rows(self._rows, self._valid, checksum)
            if checksum is not None:
                # Within one fit only the values count, not their order (a
                # source may shuffle its rows per pass): the order-free half.
                if (self.pass_checksum is not None
                        and checksum[:16] != self.pass_checksum[:16]):
                    raise ValueError("the data source gave other values in this pass than "
                                     "in an earlier pass of the same fit (same size): a "
                                     "source must yield the same data on every pass.")
                self.pass_checksum = checksum
            self.passes += 1
            self.rows_seen, self.valid_rows = self._rows, self._valid
            self.pass_seconds.append(time.perf_counter() - self._t0)
            if self.progress is not None:
                self.progress.set_postfix(passes=self.passes, refresh=False)
        xd = Xp[:, 0].copy() if self.nf == 1 else np.ascontiguousarray(Xp.T)
        return xd, yp, wp, np.bool_(more)

    def _check_rows(self, rows, valid, checksum):
        """The first complete pass after a resume must count the rows, and sum
        the values, that the checkpoint recorded: a source's fingerprint sees
        only part of the data (a sample of rows, the first chunk), so this is
        where other data show."""
        want_rows, want_valid, want_sum = self.expected_rows
        self.expected_rows = None
        if (rows, valid) != (want_rows, want_valid):
            raise ValueError(f"`checkpoint` file {os.fspath(self.checkpoint)!r} belongs to a "
                             f"different fit: a pass over the data gave {rows} rows "
                             f"({valid} with non-zero weight), the fit that saved it saw "
                             f"{want_rows} ({want_valid}). Delete it or use another path.")
        if want_sum is not None and checksum != want_sum:
            raise ValueError(f"`checkpoint` file {os.fspath(self.checkpoint)!r} belongs to a "
                             "different fit: the data differ from those it was saved with "
                             "(same size, other values). Delete it or use another path.")

    def count_pass(self):
        """Count the rows of one pass on the host (no model evaluation) and
        check them: a finished checkpoint resumes without a pass of the fit."""
        rows = valid = 0
        sums = (0, 0)
        chunks = self.source.chunks(self.cs)
        try:
            for chunk in chunks:
                sums = _add_checksum(sums, chunk, rows)
                chunk = check_chunk(chunk, self.nf, self.nan_policy)
                w = chunk.sample_weight
                rows += chunk.n_rows
                valid += chunk.n_rows if w is None else int(np.count_nonzero(w))
        finally:
            chunks.close()
        checksum = _pass_checksum(sums)
        self._check_rows(rows, valid, checksum)
        # What this pass saw is what the re-saved checkpoint records: without
        # it the file would lose its checksum and accept other data later.
        self.pass_checksum = checksum
        self.rows_seen, self.valid_rows = rows, valid


def _xshape(cs, nf):
    return (cs,) if nf == 1 else (nf, cs)


def _callback_read(cs, nf):
    shapes = (jax.ShapeDtypeStruct(_xshape(cs, nf), jnp.float64),
              jax.ShapeDtypeStruct((cs,), jnp.float64),
              jax.ShapeDtypeStruct((cs,), jnp.float64),
              jax.ShapeDtypeStruct((), jnp.bool_))

    def read(k, data):
        x, y, w, more = io_callback(_dispatch, shapes, data["token"], k, ordered=True)
        return {"x": x, "y": y, "w": w}, more

    return read


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def _write_checkpoint(path, leaves, meta):
    """Write ``leaves`` and ``meta`` to ``path`` atomically (.npz, no pickle)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sknlsq-ckpt-", suffix=".npz", dir=folder)
    try:
        # mkstemp creates the file private (0600); the checkpoint gets the
        # mode of the file it replaces, or that of any new file (umask).
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _checkpoint_mode(path))
        with os.fdopen(fd, "wb") as fh:
            arrays = {f"leaf_{i}": np.asarray(a) for i, a in enumerate(leaves)}
            np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _checkpoint_mode(path):
    """Permission bits for a checkpoint written to ``path``."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    mask = None
    try:  # Linux: read the umask without changing it (other threads)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    mask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _read_checkpoint(path, expected, template):
    """Leaves of the carry stored at ``path``, checked against ``expected``
    (settings and data fingerprint) and the leaves of ``template``."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            leaves = [z[f"leaf_{i}"] for i in range(len(template))]
    except Exception as exc:
        raise ValueError(f"`checkpoint` file {os.fspath(path)!r} is corrupt or not an sknlsq "
                         f"checkpoint ({type(exc).__name__}: {exc}); delete it to start the "
                         "fit from the beginning.") from exc
    if not isinstance(meta, dict) or meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"`checkpoint` file {os.fspath(path)!r} has an unknown format "
                         f"version {meta.get('version') if isinstance(meta, dict) else None}.")
    for key, want in expected.items():
        if meta.get(key) != want:
            raise ValueError(f"`checkpoint` file {os.fspath(path)!r} belongs to a different "
                             f"fit: its {key!r} differs from this fit's ({meta.get(key)!r} vs "
                             f"{want!r}). Delete it or use another path.")
    for i, (a, t) in enumerate(zip(leaves, template)):
        if a.shape != t.shape or a.dtype != t.dtype:
            raise ValueError(f"`checkpoint` file {os.fspath(path)!r} is corrupt: entry {i} "
                             f"has shape {a.shape} {a.dtype}, expected {t.shape} {t.dtype}.")
    return leaves, meta


# --------------------------------------------------------------------------
# The exact chunked fit
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkedFitResult(FitResult):
    """A :class:`~._fit.FitResult` plus what the passes measured."""

    n_points: int = 0  # rows with non-zero weight in the last pass
    passes: int = 0
    points_per_second: float = float("nan")  # over the passes of this run
    resumed: bool = False
    # Trial evaluations of the subsample warm start (fit_in_chunks), each on
    # 1/stride of the rows; not counted in nfev. 0: no subsample.
    subsample_nfev: int = 0


def _settings_check(model, p0, bounds, method, loss, f_scale, x_scale, ftol, xtol, gtol,
                    max_nfev, refine, n_features):
    f_scale = _check_common(model, method, loss, None, None, f_scale, refine)
    if p0 is None:
        names = _model.parameter_names(model, None)
        n = len(names)
    else:
        p0 = np.atleast_1d(np.asarray(p0, dtype=float))
        if p0.ndim != 1 or p0.size == 0 or not np.all(np.isfinite(p0)):
            raise ValueError("`p0` must be a non-empty 1-D array of finite values.")
        n = p0.size
        names = _model.parameter_names(model, n)
    lb, ub = _prepare_bounds(bounds, n)
    if p0 is None:
        p0 = _initialize_feasible(lb, ub)
    if np.any((p0 < lb) | (p0 > ub)):
        raise ValueError("`p0` is infeasible: it lies outside `bounds`.")
    has_bounds = bool(np.any(np.isfinite(lb) | np.isfinite(ub)))
    method, ftol, xtol, gtol, max_nfev = _resolve_solver(method, loss, has_bounds, ftol, xtol,
                                                         gtol, max_nfev, n)
    if x_scale is None or (isinstance(x_scale, str) and x_scale == "jac"):
        use_jac_scale = x_scale is not None or method == "lm"
        xs = np.ones(n)
    else:
        xs = np.asarray(x_scale, dtype=float)
        if xs.ndim == 0:
            xs = np.full(n, float(xs))
        if xs.shape != (n,) or not np.all(np.isfinite(xs) & (xs > 0)):
            raise ValueError("`x_scale` must be 'jac' or positive numbers, one per parameter "
                             f"({n}); got shape {xs.shape}.")
        use_jac_scale = False
    opts = Options(np.float64(ftol), np.float64(xtol), np.float64(gtol), np.int32(max_nfev),
                   np.float64(f_scale), np.float64(10.0), np.float64(loss_id(loss)))
    return dict(model_name=_callable_name(model), p0=p0, n=n, names=names, lb=lb, ub=ub,
                has_bounds=has_bounds, method=method, use_jac_scale=use_jac_scale, xs=xs,
                opts=opts, loss=loss)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _callable_name(model):
    return (f"{getattr(model, '__module__', '')}."
            f"{getattr(model, '__qualname__', type(model).__name__)}")


def _model_fingerprint(model, plan, xsample, n):
    """What identifies the model's computation in a checkpoint: its name plus
    the SHA-256 of its jaxpr (text and constants) for a model that traces,
    else of its code, defaults, closure and partial arguments.

    The name alone would let a checkpoint of ``partial(f, k=0)`` resume a fit
    of ``partial(f, k=100)`` (or of another lambda) and return the first
    fit's parameters. Values a NumPy model reads from globals are not seen.
    """
    name = _callable_name(model)
    if plan.mode == "jax":
        try:
            closed = jax.make_jaxpr(plan.evaluate)(
                jax.ShapeDtypeStruct((n,), jnp.float64),
                jax.ShapeDtypeStruct(np.shape(xsample), jnp.float64))
        except Exception:  # noqa: BLE001 - traced for the plan; fall back to the code
            closed = None
        if closed is not None:
            digest = hashlib.sha256(_ADDRESS.sub("", str(closed.jaxpr)).encode())
            for c in closed.consts:
                _hash_value(np.asarray(c), digest, 0)
            return f"{name} jaxpr:{digest.hexdigest()}"
    digest = hashlib.sha256()
    _hash_callable(model, digest, 0)
    return f"{name} code:{digest.hexdigest()}"


_MAX_DEPTH = 6  # of nested partials, closures and containers hashed


def _hash_code(code, digest):
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):  # nested functions, comprehensions
            _hash_code(c, digest)
        else:
            digest.update(_ADDRESS.sub("", repr(c)).encode())


def _hash_callable(f, digest, depth):
    if depth > _MAX_DEPTH:
        return
    digest.update(_callable_name(f).encode())
    if isinstance(f, functools.partial):
        _hash_callable(f.func, digest, depth + 1)
        _hash_value(f.args, digest, depth + 1)
        _hash_value(dict(f.keywords), digest, depth + 1)
    elif isinstance(f, types.MethodType):
        _hash_callable(f.__func__, digest, depth + 1)
        _hash_value(getattr(f.__self__, "__dict__", None), digest, depth + 1)
    elif isinstance(f, types.FunctionType):
        _hash_code(f.__code__, digest)
        _hash_value(f.__defaults__, digest, depth + 1)
        _hash_value(f.__kwdefaults__, digest, depth + 1)
        cells = tuple(c.cell_contents for c in f.__closure__ or ()
                      if _cell_filled(c))
        _hash_value(cells, digest, depth + 1)
    else:  # a callable object: its class's __call__ and its attributes
        call = getattr(type(f), "__call__", None)
        if isinstance(call, types.FunctionType):
            _hash_callable(call, digest, depth + 1)
        _hash_value(getattr(f, "__dict__", None), digest, depth + 1)


def _cell_filled(cell):
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def _hash_value(v, digest, depth):
    if depth > _MAX_DEPTH:
        return
    if isinstance(v, (np.ndarray, np.generic, jax.Array)):
        a = np.asarray(v)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    elif isinstance(v, (tuple, list)):
        digest.update(f"{type(v).__name__}{len(v)}".encode())
        for item in v:
            _hash_value(item, digest, depth + 1)
    elif isinstance(v, dict):
        digest.update(f"dict{len(v)}".encode())
        for key in sorted(v, key=repr):
            digest.update(repr(key).encode())
            _hash_value(v[key], digest, depth + 1)
    elif isinstance(v, (types.FunctionType, functools.partial, types.MethodType)):
        _hash_callable(v, digest, depth + 1)
    else:  # numbers, strings, None, modules, other objects (without addresses)
        digest.update(_ADDRESS.sub("", repr(v)).encode())


_MASK64 = (1 << 64) - 1


def _add_checksum(sums, chunk, start):
    """Add a raw chunk (rows ``start``, ``start + 1``, ... of a pass) to the
    pass checksum ``(sum of the float64 bit patterns, sum of bit pattern x
    (row + 1))`` modulo 2**64: any changed value or reordering of rows shows,
    at the cost of two integer sums per chunk (a cryptographic hash of every
    pass would cost a sizeable part of a pass)."""
    y = np.asarray(chunk.y)
    rows = y.shape[0] if y.ndim else 1
    idx = np.arange(start + 1, start + rows + 1, dtype=np.uint64)[:, None]
    s1, s2 = sums
    for a in (chunk.X, chunk.y, chunk.sample_weight):
        if a is None:
            continue
        b = np.ascontiguousarray(np.asarray(a, dtype="<f8").reshape(rows, -1)).view(np.uint64)
        s1 = (s1 + int(b.sum(dtype=np.uint64))) & _MASK64
        s2 = (s2 + int((b * idx).sum(dtype=np.uint64))) & _MASK64
    return s1, s2


def _pass_checksum(sums):
    return f"{sums[0]:016x}{sums[1]:016x}"


def _chunk_digest(chunk):
    """SHA-256 of a chunk's raw rows, for the checkpoint's data check."""
    digest = hashlib.sha256()
    for a in (chunk.X, chunk.y, chunk.sample_weight):
        if a is None:
            digest.update(b"none")
        else:
            digest.update(f"{np.shape(a)}".encode())
            digest.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    return digest.hexdigest()


def _check_checkpoint_path(checkpoint):
    """Refuse, before any pass, a ``checkpoint`` that could never be written."""
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        raise ValueError(f"`checkpoint` {path!r} is a directory; give a file path such as "
                         f"{os.path.join(path, 'fit.npz')!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = ("is not a directory; choose another path" if os.path.exists(folder)
                else "does not exist; create it or choose another path")
        raise ValueError(f"`checkpoint` {path!r}: its folder {folder!r} {what}.")
    # Checkpoints are written as a temporary file in that folder, then renamed:
    # try one now rather than after the first passes.
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sknlsq-ckpt-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"`checkpoint` {path!r}: cannot write in its folder {folder!r} "
                         f"({exc.strerror or exc}).") from None


def fit_chunked(model, source, *, p0=None, bounds=(-np.inf, np.inf), method=None,
                loss="linear", f_scale=1.0, x_scale=None, ftol=1e-8, xtol=1e-8, gtol=None,
                max_nfev=None, absolute_sigma=False, chunk_size=65536, nan_policy="raise",
                checkpoint=None, checkpoint_every=1, verbose=0, refine=DEFAULT_REFINE,
                pool=None, stacklevel=2) -> ChunkedFitResult:
    """Exact least-squares fit of ``model(x, *params)`` over a chunked source.

    ``source`` is a :class:`~._sources.ChunkSource` (or anything
    :func:`~._sources.as_source` accepts with ``y`` inside it). ``x`` is the
    chunk's ``X[:, 0]`` for one feature, ``X.T`` otherwise; the model must be
    point-wise (row ``i`` of the output depends on row ``i`` of ``X`` only).
    """
    if not isinstance(source, ChunkSource):
        raise TypeError(f"`source` must be a ChunkSource, got {type(source).__name__}.")
    cs = _check_chunk_size(chunk_size)
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"`nan_policy` must be 'raise' or 'omit', got {nan_policy!r}.")
    if (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer))
            or checkpoint_every < 1):
        raise ValueError(f"`checkpoint_every` must be a positive integer, got "
                         f"{checkpoint_every!r}.")
    if checkpoint is not None:
        _check_checkpoint_path(checkpoint)
    pool = resolve_pool(pool)
    if isinstance(source, IterableSource):
        # Its row count is learned from a complete pass and then checked on
        # every other pass: a new fit learns it afresh (the data may have
        # grown since an earlier fit of the same object).
        source.n_samples = None

    # The first chunk: number of features, a valid row for padding, the plan,
    # and (for checkpoints) a digest of the raw rows of chunk 0.
    first = first_digest = None
    for chunk in source.chunks(cs):
        if first_digest is None and checkpoint is not None:
            first_digest = _chunk_digest(chunk)
        first = check_chunk(chunk, source.n_features, nan_policy)
        if first.n_rows:
            break
    if first is None or first.n_rows == 0:
        raise ValueError("the data source is empty (no valid rows in `X`, `y`).")
    nf = first.X.reshape(first.n_rows, -1).shape[1]
    st = _settings_check(model, p0, bounds, method, loss, f_scale, x_scale, ftol, xtol, gtol,
                         max_nfev, refine, nf)
    # Chunks carry the weights sqrt(sample_weight) as "w": a robust loss
    # scales f_scale by them (sample weights as frequencies).
    st["point_scale"] = point_scale_key(st["loss"], first.sample_weight is not None)
    n = st["n"]
    m = source.n_samples
    if m is not None:
        check_points_for_method(st["method"], n, m)
    fill_x = first.X.reshape(first.n_rows, -1)[0]
    xsample = np.repeat(fill_x[None, :], cs, axis=0)
    xsample = xsample[:, 0] if nf == 1 else np.ascontiguousarray(xsample.T)

    progress = None
    if verbose:
        from tqdm.auto import tqdm

        progress = tqdm(total=None, unit="pt", unit_scale=True, desc="sknlsq passes",
                        leave=verbose > 1 or None)
    reader = _Reader(source, cs, nf, nan_policy, fill_x, progress, checkpoint)
    token = next(_tokens)
    steps = int(checkpoint_every) if checkpoint is not None else None
    try:
        with x64():
            plan, _ = _plan(model, xsample, True, n, cs, cs, (cs,), (cs,), None, "2-point",
                            None, False, st["p0"], st["lb"], st["ub"], -1, stacklevel + 1)
            if checkpoint is not None:
                st = dict(st, model_name=_model_fingerprint(model, plan, xsample, n),
                          first_chunk=first_digest)
            m_hint = source.n_samples if source.n_samples is not None else cs
            data = {"token": np.int64(token), "m": np.float64(m_hint)}
            key = ("chunked-host", cs, nf)
            # Segmented programs even without checkpoints: with the host
            # callback inside one whole-solve program, XLA:CPU faulted in
            # fresh memory for every chunk (2x slower passes, measured).
            progs = _chunked_programs(pool, plan, st, int(refine), key,
                                      partial(_callback_read_cached, cs, nf), data, steps)
            with _readers_lock:
                _readers[token] = reader
            reader.error_slot = _model.reset_host_error(model)
            out = _run_segments(progs, st, data, reader, checkpoint, source, cs, nan_policy,
                                int(refine))
    except Exception as exc:
        err = reader.error
        if err is not None and err is not exc:
            raise err from err.__cause__  # keep its cause, drop XLA's wrapping
        host_exc = _model.pop_host_error()
        if host_exc is not None:
            raise ValueError(f"model `f` raised {type(host_exc).__name__} during the fit: "
                             f"{host_exc}") from host_exc
        raise
    finally:
        with _readers_lock:
            _readers.pop(token, None)
        reader.close()
        if progress is not None:
            progress.close()
    host_exc = _model.pop_host_error()
    if host_exc is not None:
        raise ValueError(f"model `f` raised {type(host_exc).__name__} during the fit: "
                         f"{host_exc}") from host_exc
    sol, resumed = out
    m_valid = reader.valid_rows if reader.valid_rows is not None else int(sol["m"])
    points = (reader.rows_seen or 0) * len(reader.pass_seconds)
    pps = points / sum(reader.pass_seconds) if reader.pass_seconds else float("nan")
    return _result(sol, st, m_valid, absolute_sigma, passes=reader.passes,
                   points_per_second=pps, resumed=resumed)


_read_cache: dict = {}


def _callback_read_cached(cs, nf):
    key = (cs, nf)
    if key not in _read_cache:
        _read_cache[key] = _callback_read(cs, nf)
    return _read_cache[key]


def fit_in_chunks(model, xdata, ydata, weights, *, chunk_size, stacklevel=2, pool=None,
                  refine=DEFAULT_REFINE, absolute_sigma=False, m_dof=None, point_scale=None,
                  **settings):
    """Exact fit of in-memory data without ever forming the full Jacobian.

    The program slices chunks of ``chunk_size`` rows out of the flat arrays
    (the last chunk overlaps the one before it, and its already-counted
    rows get zero weight), so no padded copy of the data is made. ``xdata``
    follows scipy's convention (1-D, or (k, M)); ``weights`` are the residual
    weights (``sqrt(sample_weight) / sigma``), or None for ones.
    ``point_scale``: for a robust loss with sample weights, the per-point
    multipliers ``sqrt(sample_weight)`` of ``f_scale`` (sample weights as
    frequencies); pass ``weights`` itself (the same object) where they are
    equal, which adds no array. None: one ``f_scale``.

    Subsample warm start: with at least ``_SUBSET_CHUNKS`` chunks'
    worth of rows in a systematic subsample (every ``stride``-th row,
    ``stride`` a prime >= 3, at least ``_SUBSET_MIN_ROWS`` rows) and a budget
    of ``max_nfev >= _SUBSET_MIN_NFEV``, the same compiled program first
    solves the problem on that subsample (passes cost 1/stride of a full
    one), then solves the full problem from its answer, which takes a few
    full passes instead of the whole descent from ``p0``. The answer is the
    full problem's, converged by the usual tests; only the starting point of
    the full solve differs (so from a poor ``p0`` on a problem with several
    minima it may end in another one, as any other path from ``p0`` could).
    ``nfev``/``njev``/``nit`` and ``max_nfev`` are those of the full solve,
    as without the subsample; the subsample's solve gets a quarter of
    ``max_nfev`` and its evaluations are reported as ``subsample_nfev``.
    It is dropped (the full solve starts from ``p0``) where it does not
    converge or its answer gives non-finite residuals on all rows.
    """
    cs = _check_chunk_size(chunk_size)
    pool = resolve_pool(pool)
    y = np.asarray(ydata, dtype=float).reshape(-1)
    M = y.size
    x = np.asarray(xdata, dtype=float)
    nf = 1 if x.ndim == 1 else x.shape[0]
    cs = min(cs, M)
    st = _settings_check(model, settings.pop("p0", None), settings.pop("bounds",
                         (-np.inf, np.inf)), settings.pop("method", None),
                         settings.pop("loss", "linear"), settings.pop("f_scale", 1.0),
                         settings.pop("x_scale", None), settings.pop("ftol", 1e-8),
                         settings.pop("xtol", 1e-8), settings.pop("gtol", None),
                         settings.pop("max_nfev", None), refine, nf)
    if settings:
        raise TypeError(f"unexpected settings {sorted(settings)}")
    w = np.ones(()) if weights is None else np.asarray(weights, dtype=float)
    s = None
    if point_scale is not None and st["loss"] != "linear":
        if point_scale is weights:
            st["point_scale"] = "w"
        else:
            st["point_scale"] = "s"
            s = np.asarray(point_scale, dtype=float).reshape(-1)
    with x64():
        plan, _ = _plan(model, x[..., :cs], True, st["n"], cs, cs, (cs,), (cs,), None,
                        "2-point", None, False, st["p0"], st["lb"], st["ub"], -1,
                        stacklevel + 1)
        data, offsets = _aligned_data(x, y, w, cs, s)
        stride = _subset_stride(M, cs, int(st["opts"].max_nfev))
        m_sub = None
        if stride is not None:
            data.update(_subset_data(x, y, w, s, stride))
            data["subset"] = np.bool_(False)
            m_sub = data["y_sub"].shape[0]
        progs = _chunked_programs(pool, plan, st, int(refine), ("chunked-device", cs, offsets),
                                  partial(_device_reader, cs, M, offsets, m_sub), data, None,
                                  whole=True)
        _model.reset_host_error(model)
        if stride is None:
            sol, _ = _run_segments(progs, st, data, None, None, None, cs, None, int(refine))
        else:
            sol = _subset_then_full(progs, st["n"], m_sub)
    host_exc = _model.pop_host_error()
    if host_exc is not None:
        raise ValueError(f"model `f` raised {type(host_exc).__name__} during the fit: "
                         f"{host_exc}") from host_exc
    if m_dof is None:
        m_dof = M if weights is None else int(np.count_nonzero(w))
    return _result(sol, st, m_dof, absolute_sigma, passes=0, points_per_second=float("nan"),
                   resumed=False, subsample_nfev=sol.get("subsample_counts", (0,))[0])


_ALIGN = 64  # bytes: the CPU runtime aliases host buffers aligned to this, else copies

# Subsample warm start of large in-memory fits (see fit_in_chunks): the
# subsample holds about this many chunks (and at least _SUBSET_MIN_ROWS
# rows); strides below _SUBSET_MIN_STRIDE save too little to pay for the
# extra start-up, budgets below _SUBSET_MIN_NFEV are kept for the full solve.
_SUBSET_CHUNKS = 3
_SUBSET_MIN_ROWS = 1 << 18
_SUBSET_MIN_STRIDE = 3
_SUBSET_MIN_NFEV = 40


def _subset_stride(M, cs, max_nfev):
    """Row stride of the warm-start subsample of ``M`` rows in chunks of
    ``cs``, or None for no subsample: the largest prime not above
    ``M / (_SUBSET_CHUNKS cs)`` and ``M / _SUBSET_MIN_ROWS`` (a prime, so
    that data laid out with a period, a grid repeated per sensor or per
    scan, are sampled across the period), if at least _SUBSET_MIN_STRIDE."""
    if max_nfev < _SUBSET_MIN_NFEV:
        return None
    s = min(M // (_SUBSET_CHUNKS * cs), M // _SUBSET_MIN_ROWS)
    while s >= _SUBSET_MIN_STRIDE and any(s % d == 0 for d in range(2, int(s ** 0.5) + 1)):
        s -= 1
    return s if s >= _SUBSET_MIN_STRIDE else None


def _aligned_copy(a):
    """A C-contiguous copy of ``a`` starting on an _ALIGN-byte boundary (so
    that the compiled call reads it in place)."""
    a = np.asarray(a)
    pad = _ALIGN // a.itemsize
    buf = np.empty(a.size + pad, a.dtype)
    off = (-buf.ctypes.data % _ALIGN) // a.itemsize
    out = buf[off:off + a.size].reshape(a.shape)
    out[...] = a
    return out


def _subset_data(x, y, w, s, stride):
    """Every ``stride``-th row of the arrays of an in-memory chunked fit, as
    the ``*_sub`` entries of its data (a scalar weight stays shared)."""
    out = {"x_sub": _aligned_copy(x[..., ::stride]), "y_sub": _aligned_copy(y[::stride])}
    if np.ndim(w) == 1:
        out["w_sub"] = _aligned_copy(w[::stride])
    if s is not None:
        out["s_sub"] = _aligned_copy(s[::stride])
    return out


def _subset_then_full(progs, n, m_sub):
    """Run the whole-solve program of :func:`fit_in_chunks` on the subsample,
    then on all rows from its answer. The full solve starts from ``p0``
    instead where the subsample's solve did not converge, or where its
    answer gives non-finite residuals on all rows (a point outside the
    model's domain that the subsample did not reach). The full solve always
    has the whole ``max_nfev``; the subsample's solve gets a quarter of it,
    and its counts (evaluations on 1/stride of the rows) are returned apart,
    as ``sol["subsample_counts"]``."""
    prog, _, args, _ = progs
    p0, data, lb, ub, xs, opts = args
    budget = int(opts.max_nfev)
    sub = dict(data, subset=np.bool_(True), m=np.float64(m_sub))
    _, _, packed = prog(p0, sub, lb, ub, xs,
                        opts._replace(max_nfev=np.int32(max(budget // 4, 1))))
    first = _unpack_small(np.asarray(packed), n, m_sub)
    x0 = p0
    if first["counts"][3] > 0 and np.all(np.isfinite(first["x"])):
        x0 = np.asarray(first["x"], dtype=p0.dtype)
    _, _, packed = prog(x0, data, lb, ub, xs, opts)
    sol = _unpack_small(np.asarray(packed), n, data["m"])
    if sol["counts"][3] == NONFINITE_X0 and x0 is not p0:
        _, _, packed = prog(p0, data, lb, ub, xs, opts)
        sol = _unpack_small(np.asarray(packed), n, data["m"])
    sol["subsample_counts"] = first["counts"]
    return sol


def _aligned_data(x, y, w, cs, s=None):
    """The arrays of an in-memory chunked fit, arranged so that the compiled
    call can use the caller's memory instead of a copy (``s``: the loss-scale
    multipliers of a robust loss, where they are not ``w``; else None).

    The CPU runtime aliases a host array only if it starts on a 64-byte
    boundary, and NumPy's large arrays usually start 16 bytes past one. So
    each 1-D array is passed as its aligned tail ``a[off:]`` (``off`` <= 7
    rows, a view) plus a copy of its first chunk ``a[:cs]``, which chunk 0
    reads instead. Returns ``(data, offsets)``; ``offsets`` (static, one per
    array: x, y, w and s if given) enter the program key. 2-D ``x`` (several
    features) is passed whole.
    """
    M = y.shape[0]
    data, offsets = {"m": np.float64(M)}, []
    arrays = (("x", x), ("y", y), ("w", w)) + ((("s", s),) if s is not None else ())
    for name, a in arrays:
        a = a if a.ndim == 0 else np.ascontiguousarray(a)
        off = 0
        if a.ndim == 1 and M >= cs + _ALIGN // 8 and a.ctypes.data % 8 == 0:
            off = (-a.ctypes.data % _ALIGN) // 8
        if a.ndim == 1 and M >= cs + _ALIGN // 8:
            data[name + "_head"] = a[:cs].copy()
            data[name] = a[off:]
        else:
            data[name] = a
            off = None  # no head: slice the array as it is
        offsets.append(off)
    return data, tuple(offsets)


def _device_reader(cs, M, offsets, m_sub=None):
    """Chunk ``k`` of in-memory data laid out by :func:`_aligned_data`; with
    ``m_sub``, of the warm-start subsample (``*_sub`` entries, ``m_sub``
    rows) where ``data["subset"]`` is true."""
    offs = dict(zip(("x", "y", "w", "s"), offsets))
    if m_sub is not None:
        read_all = _device_reader(cs, M, offsets)

        def read_subset(k, data):
            first = k * cs
            start = jnp.minimum(first, m_sub - cs)
            fresh = start + jnp.arange(cs) >= first
            c = {}
            for name in offs:
                a = data.get(name + "_sub", data[name])
                c[name] = (jnp.broadcast_to(a, (cs,)) if a.ndim == 0 else
                           jax.lax.dynamic_slice_in_dim(a, start, cs, axis=-1))
            c["w"] = jnp.where(fresh, c["w"], 0.0)
            return c, first + cs < m_sub

        return lambda k, data: jax.lax.cond(data["subset"], read_subset, read_all, k, data)

    def read(k, data):
        first = k * cs
        start = jnp.minimum(first, M - cs)
        fresh = start + jnp.arange(cs) >= first  # rows not counted by the chunk before

        def rows(name, from_head):
            a, off = data[name], offs[name]
            if a.ndim == 0:
                return jnp.broadcast_to(a, (cs,))
            if off is None:
                return jax.lax.dynamic_slice_in_dim(a, start, cs, axis=-1)
            if from_head:
                return data[name + "_head"]
            # k >= 1 here, so start >= min(cs, M - cs) >= off.
            return jax.lax.dynamic_slice_in_dim(a, start - off, cs, axis=-1)

        def chunk(from_head):
            return {name: rows(name, from_head) for name in offs}

        if all(offs[name] is None or data[name].ndim == 0 for name in offs):
            c = chunk(False)
        else:
            c = jax.lax.cond(k == 0, lambda _: chunk(True), lambda _: chunk(False), None)
        c["w"] = jnp.where(fresh, c["w"], 0.0)
        return c, first + cs < M

    return read


def _chunked_programs(pool, plan, st, refine, key, make_read, data, steps, whole=False):
    """Compiled programs of a chunked fit: ``(start, segment)``, or with
    ``whole`` a single program for the whole solve (half the compile time;
    used when nothing needs the state between segments)."""
    kw = dict(method=st["method"], has_bounds=st["has_bounds"],
              use_jac_scale=st["use_jac_scale"])
    point_scale = st.get("point_scale")
    base = ("chunked", key, plan.key, plan.out_shape if plan.mode == "host" else None,
            static_loss(st["loss"]), st["method"], st["has_bounds"], st["use_jac_scale"], refine,
            st["n"],
            tuple((k, np.shape(v)) for k, v in sorted(data.items())))
    if point_scale is not None:  # "w" has the layout of unweighted data
        base = base + (("point_scale", point_scale),)

    def problem():
        p = _make_problem(plan, "diag", st["loss"], True, point_scale)
        return ChunkedProblem(p.fun, p.fun_jac, make_read(), p.loss, p.point_scale)

    args = (st["p0"], data, st["lb"], st["ub"], st["xs"], st["opts"])

    if whole:
        def build_whole():
            pr = problem()

            def run(x0, data, lb, ub, xs, opts):
                carry = start(pr, x0, data, lb, ub, xs, opts, refine=refine, **kw)
                carry = advance(carry, pr, data, lb, ub, opts, **kw)
                sol = finish(carry, lb, ub, opts, method=st["method"])
                return carry, running(carry, opts), _pack_small(sol)

            return compile_lowered(jax.jit(run).lower(*args))

        return pool.program(base + ("whole",), build_whole), None, args, None

    def build_start():
        f = partial(start, problem(), refine=refine, **kw)
        return compile_lowered(jax.jit(f).lower(*args))

    start_prog = pool.program(base + ("start",), build_start)

    def build_segment():
        pr = problem()
        method = st["method"]

        def segment(carry, data, lb, ub, opts):
            carry = advance(carry, pr, data, lb, ub, opts, steps, **kw)
            sol = finish(carry, lb, ub, opts, method=method)
            return carry, running(carry, opts), _pack_small(sol)

        carry = jax.eval_shape(partial(start, pr, refine=refine, **kw), *args)
        return compile_lowered(jax.jit(segment).lower(carry, data, st["lb"], st["ub"],
                                                      st["opts"]))

    seg_prog = pool.program(base + ("segment", steps), build_segment)

    def template():
        """Shapes of the solver state (for reading a checkpoint back)."""
        return jax.eval_shape(partial(start, problem(), refine=refine, **kw), *args)

    return start_prog, seg_prog, args, template


def _pack_small(sol):
    head = jnp.stack([sol.cost, sol.nfev, sol.njev, sol.nit, sol.status]).astype(jnp.float64)
    return jnp.concatenate([head, sol.x, sol.active_mask.astype(jnp.float64),
                            sol.R.reshape(-1), sol.qtf])


def _run_segments(progs, st, data, reader, checkpoint, source, cs, nan_policy, refine):
    start_prog, seg_prog, args, template_of = progs
    if seg_prog is None:  # the whole solve in one program
        _, _, packed = start_prog(*args)
        return _unpack_small(np.asarray(packed), st["n"], data["m"]), False
    expected = None
    resumed = False
    carry = None
    stored = {}  # meta of the checkpoint resumed from
    if checkpoint is not None:
        expected = dict(version=CHECKPOINT_VERSION, source=source.fingerprint(),
                        settings=_settings_fingerprint(st, cs, nan_policy, refine),
                        model=st["model_name"], first_chunk=st.get("first_chunk"))
        if os.path.exists(os.fspath(checkpoint)):
            info = template_of()
            template = jax.tree_util.tree_leaves(info)
            leaves, meta = _read_checkpoint(checkpoint, expected, template)
            carry = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(info),
                                                 [jnp.asarray(a) for a in leaves])
            resumed = True
            stored = meta
            if reader is not None and meta.get("valid_rows") is not None:
                reader.valid_rows = meta["valid_rows"]
                reader.rows_seen = meta["rows_seen"]
                reader.expected_rows = (meta["rows_seen"], meta["valid_rows"],
                                        meta.get("pass_checksum"))
                if meta.get("done"):
                    # No pass will follow: read the data once (no model
                    # evaluation) to check them against the checkpoint.
                    reader.count_pass()
    if carry is None:
        carry = start_prog(*args)
    if reader is not None and reader.valid_rows is not None:
        # The exact number of residuals, known once a pass is complete.
        data = dict(data, m=np.float64(reader.valid_rows))
    _, _, lb, ub, _, opts = args
    while True:
        carry, go, packed = seg_prog(carry, data, lb, ub, opts)
        go = bool(go)
        if checkpoint is not None:
            leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(carry)]
            counts = np.asarray(packed[:5])
            meta = dict(expected, done=not go, nfev=int(counts[1]), nit=int(counts[3]),
                        valid_rows=None if reader is None else reader.valid_rows,
                        rows_seen=None if reader is None else reader.rows_seen,
                        pass_checksum=None if reader is None else reader.pass_checksum)
            for key in ("valid_rows", "rows_seen", "pass_checksum"):
                # A re-save before this run completed a pass of its own keeps
                # the data record of the checkpoint it resumed (never None).
                if meta[key] is None:
                    meta[key] = stored.get(key)
            _write_checkpoint(checkpoint, leaves, meta)
        if not go:
            break
    return _unpack_small(np.asarray(packed), st["n"], data["m"]), resumed


def _settings_fingerprint(st, cs, nan_policy, refine):
    o = st["opts"]
    fp = dict(method=st["method"], loss=st["loss"], n=st["n"], chunk_size=cs,
              nan_policy=nan_policy, refine=refine, has_bounds=st["has_bounds"],
              use_jac_scale=st["use_jac_scale"],
              p0=[float(v) for v in st["p0"]], lb=[float(v) for v in st["lb"]],
              ub=[float(v) for v in st["ub"]], x_scale=[float(v) for v in st["xs"]],
              ftol=float(o.ftol), xtol=float(o.xtol), gtol=float(o.gtol),
              max_nfev=int(o.max_nfev), f_scale=float(o.f_scale))
    if st.get("point_scale") is not None:
        # A robust loss scaled per point by sqrt(sample_weight): checkpoints
        # of the earlier objective (f_scale alone) are refused.
        fp["point_scale"] = "sqrt(sample_weight)"
    return fp


def _unpack_small(v, n, m):
    cost, nfev, njev, nit, status = v[:5]
    return dict(cost=float(cost), counts=(int(nfev), int(njev), int(nit), int(status)),
                x=v[5:5 + n], active=v[5 + n:5 + 2 * n].astype(int),
                R=v[5 + 2 * n:5 + 2 * n + n * n].reshape(n, n),
                qtf=v[5 + 2 * n + n * n:5 + 3 * n + n * n], m=float(m))


def _result(sol, st, m_dof, absolute_sigma, **extra):
    nfev, njev, nit, status = sol["counts"]
    if status == NONFINITE_X0:
        raise ValueError("Residuals are not finite in the initial point `p0`: the model or "
                         "the weights give inf or NaN there, or the sum of their squares "
                         "overflows float64 (rescale y).")
    n = st["n"]
    pcov = covariance_from_R(sol["R"], sol["cost"], m_dof, n, st["method"], absolute_sigma)
    return ChunkedFitResult(params=np.asarray(sol["x"], dtype=float), pcov=pcov,
                            cost=sol["cost"], fun=np.empty(0), nfev=nfev, njev=njev, nit=nit,
                            status=status, message=MESSAGES[status], success=status > 0,
                            method=st["method"], param_names=tuple(st["names"]),
                            active_mask=np.asarray(sol["active"]),
                            cov_estimated=bool(np.all(np.isfinite(pcov))), n_points=m_dof,
                            R=np.asarray(sol["R"], dtype=float),
                            qtf=np.asarray(sol["qtf"], dtype=float), **extra)


def covariance_from_R(R, cost, m, n, method, absolute_sigma):
    """scipy's covariance from the R factor of the Jacobian (pseudo-inverse
    of ``R^T R`` by SVD, scaled by the reduced chi-square)."""
    R = np.asarray(R, dtype=float)
    if not np.all(np.isfinite(R)):
        return np.full((n, n), np.inf)
    _, s, VT = np.linalg.svd(R)
    return _covariance(s, VT, cost, m, m, n, method, absolute_sigma)[0]


# --------------------------------------------------------------------------
# Online updates (partial_fit)
# --------------------------------------------------------------------------


@dataclass
class OnlineState:
    """Information of the data seen so far, as ``0.5 ||R (p - x) + z||^2 + c``."""

    x: np.ndarray
    R: np.ndarray
    z: np.ndarray
    rss_const: float  # twice the constant c: residual sum of squares not in z
    n_seen: float  # (forgetting-weighted) number of valid points seen
    n_chunks: int = 0

    @property
    def rss(self):
        """Residual sum of squares of the quadratic at its centre."""
        return self.rss_const + float(self.z @ self.z)


def online_update(model, state: OnlineState | None, xdata, y, w, *, p0, st, pool,
                  max_nfev, lam=1.0, refine=0, stacklevel=2):
    """Fit one chunk against the accumulated information; returns the new
    :class:`OnlineState` and the solver status of this update.

    ``w``: the residual weights ``sqrt(sample_weight)``; with
    ``st["point_scale"] == "w"`` (a robust loss with sample weights) they
    scale ``f_scale`` per point too, so that weights are frequencies."""
    from ._fit import _bucket

    pool = resolve_pool(pool)
    n = st["n"]
    M = y.size
    m_pad = _bucket(M)
    x = np.asarray(xdata, dtype=float)
    X = x.reshape(-1, 1) if x.ndim == 1 else x.T
    nf = X.shape[1]
    pad = m_pad - M
    Xp = np.concatenate([X, np.repeat(X[-1:], pad, axis=0)])
    xp = Xp[:, 0] if nf == 1 else np.ascontiguousarray(Xp.T)
    yp = np.concatenate([y, np.zeros(pad)])
    wp = np.concatenate([w, np.zeros(pad)])
    if state is None:
        x0 = np.asarray(p0, dtype=float)
        Rp, zp, c0, n0 = np.zeros((n, n)), np.zeros(n), 0.0, 0.0
    else:
        x0 = state.x
        s = np.sqrt(lam)
        Rp, zp, c0, n0 = s * state.R, s * state.z, lam * state.rss_const, lam * state.n_seen
    opts = st["opts"]._replace(max_nfev=np.int32(max_nfev))
    kw = dict(method=st["method"], has_bounds=st["has_bounds"],
              use_jac_scale=st["use_jac_scale"])
    with x64():
        plan, _ = _plan(model, xp, True, n, m_pad, m_pad, (m_pad,), (m_pad,), None, "2-point",
                        None, False, x0, st["lb"], st["ub"], -1, stacklevel + 1)
        data = {"x": xp, "y": yp, "w": wp, "prior": (Rp, zp, x0)}
        args = (x0, data, st["lb"], st["ub"], st["xs"], opts)
        point_scale = st.get("point_scale")
        key = ("online", plan.key, plan.out_shape if plan.mode == "host" else None,
               static_loss(st["loss"]), st["method"], st["has_bounds"], st["use_jac_scale"],
               refine, n,
               np.shape(xp))
        if point_scale is not None:  # "w" has the layout of unweighted data
            key = key + (("point_scale", point_scale),)

        def build():
            p = _make_problem(plan, "diag", st["loss"], True, point_scale)._replace(prior=True)

            def run(x0, data, lb, ub, xs, opts):
                carry = start(p, x0, data, lb, ub, xs, opts, refine=refine, **kw)
                carry = advance(carry, p, data, lb, ub, opts, **kw)
                sol = finish(carry, lb, ub, opts, method=kw["method"])
                # The information after this chunk: the QR-reduced linearisation
                # of chunk plus prior at the new point, without robust-loss
                # rescaling of the prior rows (linearize keeps them linear).
                lin = linearize(p, sol.x, data, loss_scale(opts))
                return sol.x, lin.R, lin.qtf, lin.cost, sol.status, sol.nfev

            return compile_lowered(jax.jit(run).lower(*args))

        prog = pool.program(key, build)
        _model.reset_host_error(model)
        xn, R, qtf, cost, status, nfev = (np.asarray(a) for a in prog(*args))
    host_exc = _model.pop_host_error()
    if host_exc is not None:
        raise ValueError(f"model `f` raised {type(host_exc).__name__} during the fit: "
                         f"{host_exc}") from host_exc
    if int(status) == NONFINITE_X0:
        raise ValueError("Residuals are not finite at the current parameters for this "
                         "chunk: the model or the weights give inf or NaN there.")
    # 2 * cost = ||f||^2 over chunk and prior = ||qtf||^2 + (what R cannot explain).
    rss_total = 2.0 * float(cost) + c0
    rss_const = max(rss_total - float(qtf @ qtf), 0.0)
    new = OnlineState(x=xn, R=R, z=qtf, rss_const=rss_const,
                      n_seen=n0 + float(np.count_nonzero(w)),
                      n_chunks=0 if state is None else state.n_chunks + 1)
    return new, int(status), int(nfev)
