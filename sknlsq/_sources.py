"""Chunked data sources: exact, repeatable passes over data read piece by piece.

Streaming fits read their data in chunks and make several *exact* passes over
it (one per solver iteration, plus evaluation passes), so the data need never
be in memory at once. This module owns that reading layer:

* :class:`Chunk` -- one piece of the data: ``X`` (rows, n_features), ``y``
  (rows,) and ``sample_weight`` (rows,) or None, all float64 arrays that the
  chunk owns, plus its position (``index``, ``start``) in the pass;
* :class:`ChunkSource` -- the interface: ``chunks(chunk_size)`` starts a fresh
  pass on every call and can resume one at a given chunk, ``fingerprint()``
  describes the data so that a checkpoint can be checked against it;
* :class:`ArraySource` (NumPy arrays, including :class:`numpy.memmap`, sliced
  lazily), :class:`HDF5Source` (h5py datasets, read one chunk at a time) and
  :class:`IterableSource` (a callable returning a fresh iterator per pass);
* :func:`as_source`, which picks one of these for the usual inputs, and
  :func:`check_chunk`, which validates one chunk (feature count, finite
  values, non-negative weights) and can drop non-finite rows.

It knows nothing of models, solvers or JAX: consumers pad the last, short
chunk themselves. Only NumPy is needed; h5py is imported when an HDF5 input
is actually used.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import sys
from typing import Callable, Iterator, NamedTuple

import numpy as np

__all__ = ["ArraySource", "Chunk", "ChunkSource", "HDF5Source", "IterableSource",
           "as_source", "check_chunk"]

# Dtype kinds accepted as numeric data: bool, signed/unsigned int, float.
# Complex, strings, objects and compound types are rejected up front so that a
# pass never fails half-way on a conversion.
_NUMERIC_KINDS = "biuf"

# Rows read for the content digest of a fingerprint: a few small blocks spread
# over the data. A sanity check that a checkpoint meets the same data, cheap
# enough to compute on every save and resume; not a full checksum.
_DIGEST_BLOCKS = 16
_DIGEST_BLOCK_ROWS = 4

# Longest list of dataset names quoted in an error message.
_MAX_LISTED_NAMES = 25


class Chunk(NamedTuple):
    """One chunk of a pass over a data source.

    Attributes
    ----------
    index : int
        Chunk number within the pass, 0-based. A pass resumed with
        ``start_chunk=k`` starts at ``index == k``.
    start : int
        Row offset, in the source, of the first row of the chunk. After
        :func:`check_chunk` with ``nan_policy='omit'`` it still refers to the
        unfiltered chunk.
    X : ndarray of shape (rows, n_features), dtype float64
    y : ndarray of shape (rows,), dtype float64
    sample_weight : ndarray of shape (rows,), dtype float64, or None

    Notes
    -----
    ``rows`` is the true number of rows: the last chunk of a pass is usually
    shorter than the chunk size. The arrays are owned by the chunk (never
    views of the caller's data or of a memory map), so consumers may modify
    them in place.
    """

    index: int
    start: int
    X: np.ndarray
    y: np.ndarray
    sample_weight: np.ndarray | None

    @property
    def n_rows(self) -> int:
        """Number of rows in the chunk."""
        return int(self.y.shape[0])


class ChunkSource(abc.ABC):
    """Abstract data source read as a sequence of chunks.

    Attributes
    ----------
    n_samples : int or None
        Number of rows, or None while unknown (an :class:`IterableSource`
        before its first complete pass).
    n_features : int or None
        Number of columns of ``X``, or None while unknown.
    has_sample_weight : bool or None
        Whether chunks carry ``sample_weight``, or None while unknown.
    """

    n_samples: int | None = None
    n_features: int | None = None
    has_sample_weight: bool | None = None

    @abc.abstractmethod
    def chunks(self, chunk_size: int, *, start_chunk: int = 0) -> Iterator[Chunk]:
        """Start a fresh pass over the data.

        Parameters
        ----------
        chunk_size : int
            Rows per chunk. Every chunk but the last has exactly this many.
        start_chunk : int, default=0
            Resume the pass at this chunk (e.g. from a checkpoint): chunks
            ``0 .. start_chunk - 1`` are not yielded. Equal to the number of
            chunks, the pass yields nothing; beyond it, ValueError.

        Returns
        -------
        iterator of Chunk
            A generator. Resources it holds (an open file) are released when
            it is exhausted, closed, or garbage collected; call its
            ``close()`` if you keep a reference to it after stopping early.
        """

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """JSON-able description of the data, to check that a checkpoint
        belongs to this source.

        Two sources over the same data give equal fingerprints; a change of
        shape, dtype, file or (for arrays and HDF5) of the sampled content
        changes it.
        """

    def n_chunks(self, chunk_size: int) -> int | None:
        """Number of chunks of a pass with this chunk size, None if unknown."""
        chunk_size = _check_chunk_size(chunk_size)
        if self.n_samples is None:
            return None
        return -(-self.n_samples // chunk_size)

    def __repr__(self):
        return (f"{type(self).__name__}(n_samples={self.n_samples}, "
                f"n_features={self.n_features})")


# ---------------------------------------------------------------------------
# Sources of known size: arrays and HDF5 datasets.
# ---------------------------------------------------------------------------

class _SizedSource(ChunkSource):
    """A source whose size is known up front and whose rows can be sliced.

    Subclasses implement ``_open_pass()``: a generator yielding one function
    ``read(start, stop) -> (X, y, sample_weight)`` and releasing whatever it
    opened when it is closed. The chunking itself lives here, once.
    """

    @abc.abstractmethod
    def _open_pass(self):
        """Yield exactly one row reader, clean up after it (generator)."""

    def chunks(self, chunk_size, *, start_chunk=0):
        # Validate eagerly, at the call, rather than at the first next().
        chunk_size = _check_chunk_size(chunk_size)
        start_chunk = _check_start_chunk(start_chunk)
        n_chunks = self.n_chunks(chunk_size)
        if start_chunk > n_chunks:
            raise ValueError(
                f"start_chunk={start_chunk} is past the end of the data: "
                f"{self.n_samples} rows make {n_chunks} chunks of {chunk_size}.")
        return self._iter_chunks(chunk_size, start_chunk, n_chunks)

    def _iter_chunks(self, chunk_size, start_chunk, n_chunks):
        opener = self._open_pass()
        try:
            read = next(opener)
            for index in range(start_chunk, n_chunks):
                start = index * chunk_size
                stop = min(start + chunk_size, self.n_samples)
                X, y, w = read(start, stop, index)
                yield Chunk(index, start, X, y, w)
        finally:
            # Runs on exhaustion, on an early break (generator close) and on
            # exceptions alike: the opener releases the file it opened.
            opener.close()

    def _sample_digest(self):
        """SHA-256 of a few row blocks spread over the data (hex string)."""
        n = self.n_samples
        starts = np.unique(np.linspace(0, max(n - _DIGEST_BLOCK_ROWS, 0),
                                       num=min(_DIGEST_BLOCKS, n)).astype(np.int64))
        digest = hashlib.sha256()
        opener = self._open_pass()
        try:
            read = next(opener)
            for start in starts:
                start = int(start)
                X, y, w = read(start, min(start + _DIGEST_BLOCK_ROWS, n), None)
                for a in (X, y, w):
                    if a is not None:
                        # Fixed byte order: equal on every platform.
                        digest.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        finally:
            opener.close()
        return digest.hexdigest()


class ArraySource(_SizedSource):
    """Data source over in-memory or memory-mapped NumPy arrays.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_samples,)
        Independent variable; 1-D means one feature. A :class:`numpy.ndarray`
        (including a :class:`numpy.memmap`) is used as is and sliced lazily,
        one chunk at a time, so a memory map is never read whole. Other
        array-likes (lists, DataFrames) are converted with
        :func:`numpy.asarray`, i.e. loaded into memory.
    y : array-like of shape (n_samples,)
        Dependent variable; same rules as ``X``.
    sample_weight : array-like of shape (n_samples,), optional
        Non-negative weights per sample; same rules as ``X``.

    Notes
    -----
    Each chunk is converted to float64 on its own (a copy, even if the data
    already is float64), so integer or float32 memory maps cost no full-size
    float64 copy.

    Examples
    --------
    >>> import numpy as np
    >>> from sknlsq._sources import ArraySource
    >>> src = ArraySource(np.arange(10.0), np.arange(10.0) ** 2)
    >>> [(c.index, c.start, c.n_rows) for c in src.chunks(4)]
    [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    >>> [c.index for c in src.chunks(4, start_chunk=2)]
    [2]
    """

    def __init__(self, X, y, sample_weight=None):
        X = _as_lazy_array(X, "X")
        if X.ndim == 1:
            X = X.reshape(-1, 1)   # a view: lazy for memmaps too
        elif X.ndim != 2:
            raise ValueError(f"X must be 1-D or 2-D (n_samples, n_features); "
                             f"got shape {X.shape}.")
        y = _as_lazy_array(y, "y")
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D (n_samples,); got shape {y.shape}.")
        if sample_weight is not None:
            sample_weight = _as_lazy_array(sample_weight, "sample_weight")
            if sample_weight.ndim != 1:
                raise ValueError(f"sample_weight must be 1-D (n_samples,); got "
                                 f"shape {sample_weight.shape}.")
        n = X.shape[0]
        for name, a in (("y", y), ("sample_weight", sample_weight)):
            if a is not None and a.shape[0] != n:
                raise ValueError(f"X and {name} have different lengths: X has {n} "
                                 f"samples, {name} has {a.shape[0]}.")
        if n == 0:
            raise ValueError("X has 0 samples; at least 1 is required.")
        if X.shape[1] == 0:
            raise ValueError("X has 0 features; at least 1 is required.")
        self.X, self.y, self.sample_weight = X, y, sample_weight
        self.n_samples = int(n)
        self.n_features = int(X.shape[1])
        self.has_sample_weight = sample_weight is not None

    def _open_pass(self):
        X, y, w = self.X, self.y, self.sample_weight

        def read(start, stop, index):
            # np.array copies the slice (and only the slice) into a new
            # float64 array: lazy on memmaps, and chunks own their data.
            return (np.array(X[start:stop], dtype=np.float64, order="C"),
                    np.array(y[start:stop], dtype=np.float64),
                    None if w is None else np.array(w[start:stop], dtype=np.float64))

        yield read

    def fingerprint(self):
        return {
            "kind": "array",
            "n_samples": self.n_samples,
            "n_features": self.n_features,
            "has_sample_weight": self.has_sample_weight,
            "dtype": {"X": self.X.dtype.str, "y": self.y.dtype.str,
                      "sample_weight": (None if self.sample_weight is None
                                        else self.sample_weight.dtype.str)},
            "sample_digest": self._sample_digest(),
        }


class HDF5Source(_SizedSource):
    """Data source over HDF5 datasets, read with h5py one chunk at a time.

    Parameters
    ----------
    file : str, os.PathLike, h5py.File, h5py.Group or None
        The file holding the datasets. A path is opened read-only for each
        pass (and for :meth:`fingerprint`) and closed when the pass ends,
        also on an early stop or an exception. An open File/Group is used as
        is and left open: the caller owns it. May be None when every dataset
        is given as an ``h5py.Dataset``.
    X : str, h5py.Dataset, or list of them
        A 2-D (n_samples, n_features) or 1-D (one feature) dataset, or a list
        of 1-D datasets, one per feature, stacked column-wise per chunk.
        Strings are dataset paths inside ``file``.
    y : str or h5py.Dataset
        1-D dataset of the dependent variable.
    sample_weight : str or h5py.Dataset, optional
        1-D dataset of non-negative weights.

    Raises
    ------
    FileNotFoundError
        If ``file`` is a path that does not exist.
    KeyError
        If a named dataset is not in the file; the message lists the
        datasets that are.
    TypeError
        If a name refers to a group, or a dataset is not numeric.
    ValueError
        If the datasets have different lengths or unsupported shapes.

    Examples
    --------
    >>> import os, shutil, tempfile, h5py, numpy as np
    >>> from sknlsq._sources import HDF5Source
    >>> tmp = tempfile.mkdtemp()
    >>> path = os.path.join(tmp, "data.h5")
    >>> with h5py.File(path, "w") as f:
    ...     f["X"] = np.arange(10.0).reshape(5, 2)
    ...     f["y"] = np.arange(5.0)
    >>> src = HDF5Source(path, X="X", y="y")
    >>> src.n_samples, src.n_features
    (5, 2)
    >>> [c.n_rows for c in src.chunks(2)]
    [2, 2, 1]
    >>> shutil.rmtree(tmp)
    """

    def __init__(self, file, X, y, sample_weight=None):
        h5py = _import_h5py()
        if isinstance(file, (str, os.PathLike)):
            path = os.fspath(file)
            if not os.path.exists(path):
                raise FileNotFoundError(f"HDF5Source: file {path!r} does not exist.")
            self._path = os.path.abspath(path)
            self._root = None
        elif file is None or isinstance(file, h5py.Group):   # h5py.File is a Group
            self._path = None
            self._root = file
        else:
            raise TypeError(f"file must be a path, an open h5py.File/Group or None; "
                            f"got {type(file).__name__}.")
        self._stacked = isinstance(X, (list, tuple))
        x_keys = list(X) if self._stacked else [X]
        if not x_keys:
            raise ValueError("X is an empty list; give one 1-D dataset per feature.")
        self._keys = {"X": x_keys, "y": [y],
                      "sample_weight": [] if sample_weight is None else [sample_weight]}
        for role, keys in self._keys.items():
            for key in keys:
                if not isinstance(key, (str, h5py.Dataset)):
                    raise TypeError(f"{role} must be a dataset name (str) or an "
                                    f"h5py.Dataset; got {type(key).__name__}.")
                if isinstance(key, str) and file is None:
                    raise ValueError(f"{role}={key!r} is a dataset name, so `file` is "
                                     f"needed to look it up; got file=None.")

        # Open once now so that every error shows at construction, and record
        # the shapes: each later pass checks that the file still matches.
        with self._opened() as root:
            datasets = self._resolve(root)
            self._shapes = self._validate(datasets)
            self._meta = {role: [{"file": _abs_filename(ds), "name": ds.name,
                                  "shape": list(ds.shape), "dtype": ds.dtype.str}
                                 for ds in dss]
                          for role, dss in datasets.items()}

    # -- file handling ------------------------------------------------------

    def _opened(self):
        """Context manager giving the root group (None if datasets only)."""
        if self._path is None:
            return contextlib.nullcontext(self._root)
        h5py = _import_h5py()
        try:
            f = h5py.File(self._path, "r")
        except FileNotFoundError:
            raise FileNotFoundError(f"HDF5Source: file {self._path!r} does not exist.") from None
        except OSError as exc:
            raise OSError(f"HDF5Source: could not open {self._path!r} as an HDF5 file "
                          f"for reading: {exc}") from exc
        return f   # h5py.File is its own context manager: closes on exit

    def _where(self):
        if self._path is not None:
            return repr(self._path)
        if self._root is not None:
            return repr(self._root.file.filename)
        return "the given datasets"

    def _resolve(self, root):
        """Map each role to its list of h5py.Dataset objects."""
        h5py = _import_h5py()
        if root is not None and not root.id.valid:
            raise ValueError("HDF5Source: the h5py.File/Group given as `file` is closed.")
        out = {}
        for role, keys in self._keys.items():
            dss = []
            for key in keys:
                if isinstance(key, h5py.Dataset):
                    if not key.id.valid:
                        raise ValueError(f"{role}: the h5py.Dataset {key.name!r} is no "
                                         f"longer valid (was its file closed?).")
                    dss.append(key)
                    continue
                try:
                    obj = root.get(key)
                except Exception as exc:   # e.g. a broken external link
                    raise KeyError(f"HDF5Source: cannot read {role} dataset {key!r} in "
                                   f"{self._where()}: {exc}") from exc
                if obj is None:
                    names = _dataset_names(root)
                    listed = ", ".join(repr(n) for n in names[:_MAX_LISTED_NAMES])
                    more = (f" and {len(names) - _MAX_LISTED_NAMES} more"
                            if len(names) > _MAX_LISTED_NAMES else "")
                    raise KeyError(f"HDF5Source: no dataset {key!r} (for {role}) in "
                                   f"{self._where()}; available datasets: "
                                   f"{listed or '(none)'}{more}.")
                if not isinstance(obj, h5py.Dataset):
                    raise TypeError(f"HDF5Source: {key!r} (for {role}) in {self._where()} "
                                    f"is a {type(obj).__name__}, not a dataset.")
                dss.append(obj)
            out[role] = dss
        return out

    def _validate(self, datasets):
        """Check dtypes, shapes and lengths; return the shapes, role by role."""
        for role, dss in datasets.items():
            for ds in dss:
                if ds.dtype.kind not in _NUMERIC_KINDS:
                    raise TypeError(f"HDF5Source: {role} dataset {ds.name!r} has "
                                    f"non-numeric dtype {ds.dtype}; a numeric (bool, "
                                    f"int or float) dataset is needed.")
                one_d = role != "X" or self._stacked
                if one_d and ds.ndim != 1:
                    what = "each X dataset of a list" if role == "X" else role
                    raise ValueError(f"HDF5Source: {what} must be a 1-D dataset; "
                                     f"{ds.name!r} has shape {ds.shape}.")
                if not one_d and ds.ndim not in (1, 2):
                    raise ValueError(f"HDF5Source: X must be a 1-D or 2-D dataset; "
                                     f"{ds.name!r} has shape {ds.shape}.")
        lengths = [(role, ds.name, ds.shape[0])
                   for role, dss in datasets.items() for ds in dss]
        if len({n for _, _, n in lengths}) > 1:
            desc = ", ".join(f"{role} {name!r} has {n}" for role, name, n in lengths)
            raise ValueError(f"HDF5Source: datasets have different lengths: {desc}.")
        n = lengths[0][2]
        if n == 0:
            raise ValueError("HDF5Source: the datasets have 0 samples; at least 1 is "
                             "required.")
        x = datasets["X"]
        self.n_samples = int(n)
        self.n_features = len(x) if self._stacked else (
            1 if x[0].ndim == 1 else int(x[0].shape[1]))
        if self.n_features == 0:
            raise ValueError(f"HDF5Source: X dataset {x[0].name!r} has 0 features.")
        self.has_sample_weight = bool(datasets["sample_weight"])
        return {role: [ds.shape for ds in dss] for role, dss in datasets.items()}

    def _open_pass(self):
        with self._opened() as root:
            datasets = self._resolve(root)
            shapes = {role: [ds.shape for ds in dss] for role, dss in datasets.items()}
            if shapes != self._shapes:
                raise ValueError(f"HDF5Source: the datasets in {self._where()} changed "
                                 f"shape since the source was created (was "
                                 f"{self._shapes}, now {shapes}).")
            x_dss, (y_ds,) = datasets["X"], datasets["y"]
            w_ds = datasets["sample_weight"][0] if datasets["sample_weight"] else None

            def load(ds, role, start, stop, index):
                try:
                    return ds[start:stop]
                except Exception as exc:   # h5py / HDF5 read errors (filters, I/O)
                    at = "" if index is None else f"chunk {index} "
                    raise OSError(f"HDF5Source: reading {at}(rows {start}:{stop}) of "
                                  f"{role} dataset {ds.name!r} in {self._where()} "
                                  f"failed: {exc}") from exc

            def read(start, stop, index):
                if self._stacked:
                    X = np.empty((stop - start, len(x_dss)), dtype=np.float64)
                    for j, ds in enumerate(x_dss):
                        X[:, j] = load(ds, "X", start, stop, index)
                else:
                    X = np.asarray(load(x_dss[0], "X", start, stop, index),
                                   dtype=np.float64).reshape(stop - start, -1)
                y = np.asarray(load(y_ds, "y", start, stop, index), dtype=np.float64)
                w = (None if w_ds is None else
                     np.asarray(load(w_ds, "sample_weight", start, stop, index),
                                dtype=np.float64))
                return X, y, w

            yield read

    def fingerprint(self):
        files = {}
        for entries in self._meta.values():
            for entry in entries:
                name = entry["file"]
                if name not in files:
                    try:
                        st = os.stat(name)
                        files[name] = {"size": int(st.st_size),
                                       "mtime_ns": int(st.st_mtime_ns)}
                    except (OSError, TypeError):   # in-memory file, no backing store
                        files[name] = None
        return {
            "kind": "hdf5",
            "n_samples": self.n_samples,
            "n_features": self.n_features,
            "has_sample_weight": self.has_sample_weight,
            "datasets": {role: [dict(e) for e in entries]
                         for role, entries in self._meta.items()},
            "files": files,
            "sample_digest": self._sample_digest(),
        }

    def __repr__(self):
        names = {role: [e["name"] for e in entries] for role, entries in self._meta.items()}
        x = names["X"] if self._stacked else names["X"][0]
        w = names["sample_weight"][0] if names["sample_weight"] else None
        return (f"HDF5Source({self._path!r}, X={x!r}, y={names['y'][0]!r}, "
                f"sample_weight={w!r})")


# ---------------------------------------------------------------------------
# Sources of unknown size: a user callable producing an iterator per pass.
# ---------------------------------------------------------------------------

_ONE_SHOT_MESSAGE = (
    "a fit makes several passes over the data, so it needs a callable that "
    "returns a fresh iterator on every call (a generator function, or e.g. "
    "`lambda: read_chunks(path)`), not a one-shot iterator or generator that "
    "can be consumed only once")


class IterableSource(ChunkSource):
    """Data source produced by user code, one iterator per pass.

    Parameters
    ----------
    factory : callable
        Called with no arguments at the start of every pass; returns an
        iterable of ``(X, y)`` or ``(X, y, sample_weight)`` tuples ("user
        chunks") that must give the same rows, in the same order, on every
        call. ``X`` may be 1-D (one feature).

    Notes
    -----
    User chunks may have any number of rows: they are re-buffered so that the
    chunks of a pass have exactly ``chunk_size`` rows, except the last one,
    just like an :class:`ArraySource` over the same rows. Consumers thus see
    one chunk shape whatever the user yields, and ``start_chunk`` means the
    same thing for every source. Resuming a pass still runs the user's
    iterator from its start (it cannot seek), but skipped rows are not
    yielded.

    ``n_samples`` is known once a pass has read the iterator to its end;
    ``n_features`` and ``has_sample_weight`` once a user chunk was read. Every
    later pass must give the same number of rows and features.

    Errors in user chunks name the user chunk, counted from 0 in the order
    the iterator yields them. An exception raised by the user's iterator is
    re-raised as a RuntimeError naming the user chunk, with the original as
    its ``__cause__``.

    Examples
    --------
    >>> import numpy as np
    >>> from sknlsq._sources import IterableSource
    >>> def read():
    ...     for i in range(3):
    ...         yield np.arange(3.0) + 3 * i, np.ones(3)
    >>> src = IterableSource(read)
    >>> [c.n_rows for c in src.chunks(4)]
    [4, 4, 1]
    >>> src.n_samples
    9
    """

    def __init__(self, factory: Callable):
        if not callable(factory):
            if hasattr(factory, "__next__"):
                raise TypeError(f"IterableSource: got a {type(factory).__name__}: "
                                f"{_ONE_SHOT_MESSAGE}.")
            raise TypeError(f"IterableSource: factory must be a callable returning an "
                            f"iterator of (X, y[, sample_weight]) tuples; got "
                            f"{type(factory).__name__}.")
        self.factory = factory

    def chunks(self, chunk_size, *, start_chunk=0):
        chunk_size = _check_chunk_size(chunk_size)
        start_chunk = _check_start_chunk(start_chunk)
        n_chunks = self.n_chunks(chunk_size)
        if n_chunks is not None and start_chunk > n_chunks:
            raise ValueError(
                f"start_chunk={start_chunk} is past the end of the data: "
                f"{self.n_samples} rows make {n_chunks} chunks of {chunk_size}.")
        return self._iter_chunks(chunk_size, start_chunk)

    def _iter_chunks(self, chunk_size, start_chunk):
        try:
            iterator = iter(self.factory())
        except Exception as exc:
            raise RuntimeError(f"IterableSource: calling the factory {self._name()}() "
                               f"failed: {type(exc).__name__}: {exc}") from exc
        skip = start_chunk * chunk_size   # rows of the chunks not yielded
        pieces = []                        # (X, y, w) rows read but not yielded yet
        n_buffered = 0
        row = 0                            # rows read from the iterator so far
        index = start_chunk
        k = 0                              # number of the next user chunk
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception as exc:
                raise RuntimeError(f"IterableSource: the iterator raised while "
                                   f"producing user chunk {k} (rows from {row}): "
                                   f"{type(exc).__name__}: {exc}") from exc
            X, y, w = self._convert(item, k)
            k += 1
            n = y.shape[0]
            if row + n <= skip:            # wholly before the resume point
                row += n
                continue
            if row < skip:
                cut = skip - row
                X, y = X[cut:], y[cut:]
                w = None if w is None else w[cut:]
                row, n = skip, n - cut
            pieces.append((X, y, w))
            n_buffered += n
            row += n
            if n_buffered >= chunk_size:
                X, y, w = _concat(pieces)
                offset = 0
                while n_buffered - offset >= chunk_size:
                    stop = offset + chunk_size
                    yield Chunk(index, index * chunk_size, _take(X, offset, stop),
                                _take(y, offset, stop),
                                None if w is None else _take(w, offset, stop))
                    index += 1
                    offset = stop
                pieces = ([(X[offset:], y[offset:], None if w is None else w[offset:])]
                          if offset < n_buffered else [])
                n_buffered -= offset

        # The iterator is exhausted: the row count is now known, and checked.
        if self.n_samples is not None and row != self.n_samples:
            raise ValueError(f"IterableSource: this pass gave {row} rows but an earlier "
                             f"one gave {self.n_samples}; factory() must return an "
                             f"iterator over the same data on every call (did it "
                             f"return an already consumed iterator?).")
        if row == 0:
            raise ValueError(f"IterableSource: the iterator of {self._name()}() "
                             f"yielded no rows.")
        self.n_samples = row
        if skip > row:
            raise ValueError(f"start_chunk={start_chunk} is past the end of the data: "
                             f"{row} rows make {self.n_chunks(chunk_size)} chunks of "
                             f"{chunk_size}.")
        if n_buffered:
            X, y, w = _concat(pieces)
            yield Chunk(index, index * chunk_size, _take(X, 0, n_buffered),
                        _take(y, 0, n_buffered),
                        None if w is None else _take(w, 0, n_buffered))

    def _name(self):
        return getattr(self.factory, "__qualname__", type(self.factory).__name__)

    def _convert(self, item, k):
        """Validate one user chunk and return it as float64 (X 2-D, y, w)."""
        where = f"IterableSource: user chunk {k}"
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(f"{where} must be an (X, y) or (X, y, sample_weight) "
                            f"tuple; got {type(item).__name__}"
                            f"{f' of length {len(item)}' if isinstance(item, (tuple, list)) else ''}.")
        X, y = item[0], item[1]
        w = item[2] if len(item) == 3 else None
        X = _to_float64(X, f"{where}: X")
        if X.ndim == 1:
            X = X.reshape(-1, 1)
        elif X.ndim != 2:
            raise ValueError(f"{where}: X must be 1-D or 2-D; got shape {X.shape}.")
        y = _to_float64(y, f"{where}: y")
        if y.ndim != 1:
            raise ValueError(f"{where}: y must be 1-D; got shape {y.shape}.")
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"{where}: X and y have different lengths "
                             f"({X.shape[0]} and {y.shape[0]}).")
        if w is not None:
            w = _to_float64(w, f"{where}: sample_weight")
            if w.shape != y.shape:
                raise ValueError(f"{where}: sample_weight has shape {w.shape}, "
                                 f"expected ({y.shape[0]},).")
        if self.n_features is None:
            self.n_features = int(X.shape[1])
            if self.n_features == 0:
                raise ValueError(f"{where}: X has 0 features.")
        elif X.shape[1] != self.n_features:
            raise ValueError(f"{where}: X has {X.shape[1]} features, but earlier user "
                             f"chunks had {self.n_features}.")
        if self.has_sample_weight is None:
            self.has_sample_weight = w is not None
        elif (w is not None) != self.has_sample_weight:
            raise ValueError(f"{where}: "
                             + ("has a sample_weight but earlier user chunks had none."
                                if w is not None else
                                "has no sample_weight but earlier user chunks had one."))
        return X, y, w

    def fingerprint(self):
        # Only what is known before a pass, so that a fresh source (as on a
        # resume in a new process) fingerprints like the one that saved the
        # checkpoint. The data themselves cannot be checked without a pass:
        # the chunked fit adds a digest of the first chunk to its checkpoint
        # and checks the row count of the first complete pass on a resume.
        return {
            "kind": "iterable",
            "factory": f"{getattr(self.factory, '__module__', None)}.{self._name()}",
        }


# ---------------------------------------------------------------------------
# Dispatch and per-chunk validation.
# ---------------------------------------------------------------------------

def as_source(X, y=None, sample_weight=None) -> ChunkSource:
    """Return a :class:`ChunkSource` over the given data.

    Parameters
    ----------
    X : ChunkSource, array-like, h5py.Dataset (or list of them) or callable
        * a :class:`ChunkSource` is returned as is (``y`` and
          ``sample_weight`` must then be None);
        * an ``h5py.Dataset`` (or list of 1-D ones, one per feature), with
          ``y`` (and ``sample_weight``) datasets too -> :class:`HDF5Source`;
        * a NumPy array, memory map or other array-like -> :class:`ArraySource`;
        * a callable returning a fresh iterator of ``(X, y[, sample_weight])``
          tuples per pass -> :class:`IterableSource` (``y`` must be None).

        A file path is not accepted: an HDF5 file needs dataset names, so use
        ``HDF5Source(path, X="X", y="y")``.
    y, sample_weight : array-like or h5py.Dataset, optional

    Returns
    -------
    ChunkSource
    """
    if isinstance(X, ChunkSource):
        _check_none(y, sample_weight, "a ChunkSource, which holds its own y")
        return X
    if _is_h5py_dataset(X) or (isinstance(X, (list, tuple)) and X
                               and all(_is_h5py_dataset(x) for x in X)):
        if y is None:
            raise ValueError("y is required with an h5py.Dataset X.")
        return HDF5Source(None, X, y, sample_weight)
    if isinstance(X, (str, bytes, os.PathLike)):
        raise TypeError(f"X is a file path ({os.fsdecode(X)!r}); a file needs dataset "
                        f"names: use HDF5Source(path, X='X', y='y') for HDF5, or "
                        f"np.load(path, mmap_mode='r') for a .npy file.")
    if isinstance(X, (np.ndarray, list, tuple)) or hasattr(X, "__array__"):
        if y is None:
            raise ValueError("y is required when X is an array.")
        return ArraySource(X, y, sample_weight)
    if callable(X):
        _check_none(y, sample_weight, "a callable, whose iterators yield y")
        return IterableSource(X)
    if hasattr(X, "__next__"):
        raise TypeError(f"X is a one-shot {type(X).__name__}: {_ONE_SHOT_MESSAGE}.")
    raise TypeError(f"X must be an array-like, an h5py.Dataset, a ChunkSource or a "
                    f"callable returning an iterator of chunks; got {type(X).__name__}.")


def check_chunk(chunk: Chunk, n_features: int | None, nan_policy: str = "raise") -> Chunk:
    """Validate one chunk; with ``nan_policy='omit'`` drop its non-finite rows.

    Parameters
    ----------
    chunk : Chunk
    n_features : int or None
        Expected number of columns of ``chunk.X``; None skips that check.
    nan_policy : {'raise', 'omit'}, default='raise'
        What to do with rows holding NaN or inf in ``X``, ``y`` or
        ``sample_weight``: raise a ValueError, or drop the rows.

    Returns
    -------
    Chunk
        ``chunk`` itself if nothing was dropped, else a copy without the
        non-finite rows (``start`` unchanged; it may have 0 rows).

    Raises
    ------
    ValueError
        On a feature-count or length mismatch, non-finite values with
        ``nan_policy='raise'``, or negative sample weights. The message names
        the chunk index.
    """
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit'; got {nan_policy!r}.")
    X, y, w = chunk.X, chunk.y, chunk.sample_weight
    where = f"chunk {chunk.index} (rows from {chunk.start})"
    if X.ndim != 2:
        raise ValueError(f"{where}: X must be 2-D; got shape {X.shape}.")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{where}: X has {X.shape[1]} features, expected {n_features}.")
    if y.shape != (X.shape[0],) or (w is not None and w.shape != y.shape):
        raise ValueError(f"{where}: X, y and sample_weight have inconsistent shapes "
                         f"{X.shape}, {y.shape}, {None if w is None else w.shape}.")
    finite = {"X": np.isfinite(X).all(axis=1), "y": np.isfinite(y)}
    if w is not None:
        finite["sample_weight"] = np.isfinite(w)
    keep = np.logical_and.reduce(list(finite.values()))
    if not keep.all():
        if nan_policy == "raise":
            name, ok = next((name, ok) for name, ok in finite.items() if not ok.all())
            bad = np.flatnonzero(~ok)
            raise ValueError(f"{where}: {name} has non-finite values (NaN or inf) in "
                             f"{bad.size} row(s), the first at row "
                             f"{chunk.start + int(bad[0])}; pass nan_policy='omit' to "
                             f"drop such rows.")
        X, y = X[keep], y[keep]
        w = None if w is None else w[keep]
    if w is not None and (w < 0).any():
        # Report the row in the source, counting rows dropped above.
        first = chunk.start + int(np.flatnonzero(keep)[np.flatnonzero(w < 0)[0]])
        raise ValueError(f"{where}: sample_weight has negative values, the first at "
                         f"row {first}; weights must be >= 0.")
    if keep.all():
        return chunk
    return chunk._replace(X=X, y=y, sample_weight=w)


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------

def _check_chunk_size(chunk_size):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
    return int(chunk_size)


def _check_start_chunk(start_chunk):
    if isinstance(start_chunk, bool) or not isinstance(start_chunk, (int, np.integer)) \
            or start_chunk < 0:
        raise ValueError(f"start_chunk must be a non-negative integer; got "
                         f"{start_chunk!r}.")
    return int(start_chunk)


def _check_none(y, sample_weight, what):
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None:
            raise ValueError(f"{name} must be None when X is {what}.")


def _import_h5py():
    try:
        import h5py
    except ImportError as exc:   # pragma: no cover - h5py is a dependency
        raise ImportError("HDF5 data sources need h5py: pip install h5py") from exc
    return h5py


def _is_h5py_dataset(obj):
    # No h5py import unless h5py is already loaded: an object can only be an
    # h5py.Dataset if it is.
    h5py = sys.modules.get("h5py")
    return h5py is not None and isinstance(obj, h5py.Dataset)


def _abs_filename(ds):
    name = ds.file.filename
    return os.path.abspath(name) if os.path.exists(name) else name


def _dataset_names(root):
    """Full paths of every dataset under ``root``, sorted."""
    h5py = _import_h5py()
    names = []
    root.visititems(lambda name, obj: names.append(name)
                    if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def _as_lazy_array(a, name):
    """``a`` as an ndarray of numeric dtype, without reading a memmap."""
    if _is_h5py_dataset(a):
        raise TypeError(f"{name} is an h5py.Dataset: use HDF5Source (or as_source), "
                        f"which reads it one chunk at a time.")
    if not isinstance(a, np.ndarray):
        # Lists, DataFrames, ...: they are in memory already.
        a = np.asarray(a)
    if a.dtype.kind == "O":
        # Object arrays hold Python numbers at best; convert once, up front.
        a = _to_float64(a, name)
    elif a.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{name} must be numeric (bool, int or float); got dtype "
                        f"{a.dtype}.")
    return a


def _to_float64(a, what):
    """A new float64 array from ``a``; a clear TypeError naming ``what`` if not numeric."""
    arr = np.asarray(a)
    if arr.dtype.kind not in _NUMERIC_KINDS + "O":
        raise TypeError(f"{what} must be numeric (bool, int or float); got dtype "
                        f"{arr.dtype}.")
    try:
        return np.array(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} cannot be converted to float64: {exc}") from exc


def _concat(pieces):
    if len(pieces) == 1:
        return pieces[0]
    X = np.concatenate([p[0] for p in pieces])
    y = np.concatenate([p[1] for p in pieces])
    w = None if pieces[0][2] is None else np.concatenate([p[2] for p in pieces])
    return X, y, w


def _take(a, start, stop):
    """Rows ``start:stop`` of ``a`` as an array owning its data: ``a`` itself
    if it is exactly that and owns its data, else a copy. Chunks never hold
    views, which would keep larger buffers alive and alias each other."""
    if start == 0 and stop == a.shape[0] and a.base is None and a.flags.c_contiguous:
        return a
    return a[start:stop].copy()
