"""Chunked data sources (sknlsq._sources): exact passes, resume, errors."""

import json
import os

import h5py
import numpy as np
import pytest

from sknlsq._sources import (ArraySource, Chunk, ChunkSource, HDF5Source, IterableSource,
                             as_source, check_chunk)

N, F = 23, 3


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, F))
    y = rng.normal(size=N)
    w = rng.uniform(0.5, 2.0, size=N)
    return X, y, w


@pytest.fixture
def h5path(tmp_path, data):
    X, y, w = data
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["X"] = X
        f["y"] = y
        f["w"] = w
        for j in range(F):
            f[f"cols/x{j}"] = X[:, j].astype(np.float32 if j == 0 else np.float64)
        f["short"] = y[:-1]
        f["text"] = np.array([b"a", b"b"])
    return path


def _concat(chunks):
    chunks = list(chunks)
    X = np.concatenate([c.X for c in chunks])
    y = np.concatenate([c.y for c in chunks])
    w = (None if chunks[0].sample_weight is None
         else np.concatenate([c.sample_weight for c in chunks]))
    return chunks, X, y, w


def _check_layout(chunks, chunk_size, start_chunk=0, n=N):
    assert [c.index for c in chunks] == list(range(start_chunk, start_chunk + len(chunks)))
    assert [c.start for c in chunks] == [c.index * chunk_size for c in chunks]
    assert all(c.n_rows == chunk_size for c in chunks[:-1])
    assert chunks[-1].start + chunks[-1].n_rows == n
    for c in chunks:
        assert isinstance(c, Chunk)
        assert c.X.dtype == c.y.dtype == np.float64
        assert c.X.ndim == 2 and c.y.ndim == 1


def _n_open_files():
    return len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))


def _assert_closed(path):
    # Truncating fails while the file is still open anywhere in the process.
    h5py.File(path, "a").close()


# -- ArraySource -------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 5, 7, N, 100])
def test_array_chunks_concatenate_back(data, chunk_size):
    X, y, w = data
    src = ArraySource(X, y, w)
    assert (src.n_samples, src.n_features, src.has_sample_weight) == (N, F, True)
    assert src.n_chunks(chunk_size) == -(-N // chunk_size)
    chunks, Xc, yc, wc = _concat(src.chunks(chunk_size))
    _check_layout(chunks, chunk_size)
    np.testing.assert_array_equal(Xc, X)
    np.testing.assert_array_equal(yc, y)
    np.testing.assert_array_equal(wc, w)
    # Every call is a fresh pass.
    assert len(list(src.chunks(chunk_size))) == len(chunks)


def test_array_start_chunk_resumes(data):
    X, y, _ = data
    src = ArraySource(X, y)
    chunks, Xc, yc, wc = _concat(src.chunks(5, start_chunk=2))
    _check_layout(chunks, 5, start_chunk=2)
    np.testing.assert_array_equal(Xc, X[10:])
    np.testing.assert_array_equal(yc, y[10:])
    assert wc is None
    assert list(src.chunks(5, start_chunk=5)) == []      # 23 rows = 5 chunks
    with pytest.raises(ValueError, match="start_chunk=6"):
        src.chunks(5, start_chunk=6)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            src.chunks(bad)
    with pytest.raises(ValueError, match="start_chunk"):
        src.chunks(5, start_chunk=-1)


def test_array_1d_x_lists_and_ints():
    src = ArraySource([1, 2, 3], [4, 5, 6])
    (chunk,) = src.chunks(10)
    assert src.n_features == 1
    np.testing.assert_array_equal(chunk.X, [[1.0], [2.0], [3.0]])
    assert chunk.X.dtype == chunk.y.dtype == np.float64


def test_array_chunks_own_their_data(data):
    X, y, _ = data
    src = ArraySource(X, y)
    for c in src.chunks(4):
        c.X[:] = 0.0
        c.y[:] = 0.0
    assert np.abs(X).sum() > 0 and np.abs(y).sum() > 0


def test_memmap_is_sliced_lazily(tmp_path, data):
    X, y, _ = data
    Xm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32,
                                   shape=X.shape)
    Xm[:] = X
    Xm.flush()
    del Xm
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    src = ArraySource(Xm, y)
    assert isinstance(src.X, np.memmap)            # kept as is, not read whole
    for c in src.chunks(6):
        np.testing.assert_array_equal(c.X, Xm[c.start:c.start + c.n_rows].astype(np.float64))
        assert c.X.dtype == np.float64 and not isinstance(c.X, np.memmap)
    # A 1-D memmap X stays a memmap-backed view.
    ym = np.load(tmp_path / "X.npy", mmap_mode="r")[:, 0]
    assert isinstance(ArraySource(ym, y).X, np.memmap)


def test_array_errors(data):
    X, y, w = data
    with pytest.raises(ValueError, match=r"y.*23.*22|23.*y.*22"):
        ArraySource(X, y[:-1])
    with pytest.raises(ValueError, match="sample_weight has 21"):
        ArraySource(X, y, w[:-2])
    with pytest.raises(ValueError, match="y must be 1-D"):
        ArraySource(X, y[:, None])
    with pytest.raises(ValueError, match="X must be 1-D or 2-D"):
        ArraySource(X[:, :, None], y)
    with pytest.raises(TypeError, match="X must be numeric"):
        ArraySource(np.array(["a"] * N), y)
    with pytest.raises(ValueError, match="0 samples"):
        ArraySource(np.zeros((0, 2)), np.zeros(0))


# -- HDF5Source --------------------------------------------------------------

@pytest.mark.parametrize("x_spec", ["X", ["cols/x0", "cols/x1", "cols/x2"]],
                         ids=["2d", "columns"])
@pytest.mark.parametrize("how", ["path", "open_file", "datasets"])
def test_hdf5_chunks_concatenate_back(h5path, data, x_spec, how):
    X, y, w = data
    expected_X = X.copy()
    if isinstance(x_spec, list):
        expected_X[:, 0] = X[:, 0].astype(np.float32)
    before = _n_open_files()
    if how == "path":
        src = HDF5Source(str(h5path), X=x_spec, y="y", sample_weight="w")
        assert _n_open_files() == before     # the validating open was closed
        passes = [src.chunks(7), src.chunks(7)]
        f = None
    else:
        f = h5py.File(h5path, "r")
        if how == "open_file":
            src = HDF5Source(f, X=x_spec, y="y", sample_weight="w")
        else:
            xs = [f[k] for k in x_spec] if isinstance(x_spec, list) else f[x_spec]
            src = as_source(xs, f["y"], f["w"])
            assert isinstance(src, HDF5Source)
        passes = [src.chunks(7)]
    assert (src.n_samples, src.n_features, src.has_sample_weight) == (N, F, True)
    for it in passes:
        chunks, Xc, yc, wc = _concat(it)
        _check_layout(chunks, 7)
        np.testing.assert_array_equal(Xc, expected_X)
        np.testing.assert_array_equal(yc, y)
        np.testing.assert_array_equal(wc, w)
    chunks, Xc, _, _ = _concat(src.chunks(7, start_chunk=2))
    _check_layout(chunks, 7, start_chunk=2)
    np.testing.assert_array_equal(Xc, expected_X[14:])
    if f is not None:
        assert f.id.valid          # a file the caller opened is left open
        f.close()
    assert _n_open_files() == before


def test_hdf5_path_closed_after_pass_break_and_error(h5path):
    src = HDF5Source(h5path, X="X", y="y")
    before = _n_open_files()
    list(src.chunks(5))
    assert _n_open_files() == before
    _assert_closed(h5path)

    for c in src.chunks(5):
        assert _n_open_files() == before + 1        # open during the pass
        break
    assert _n_open_files() == before
    _assert_closed(h5path)

    it = src.chunks(5)
    next(it)
    it.close()
    assert _n_open_files() == before

    with pytest.raises(RuntimeError, match="consumer"):
        for c in src.chunks(5):
            raise RuntimeError("consumer failed")
    assert _n_open_files() == before
    _assert_closed(h5path)
    src.fingerprint()
    assert _n_open_files() == before


def test_hdf5_file_changed_between_passes(h5path, data):
    src = HDF5Source(h5path, X="X", y="y")
    with h5py.File(h5path, "a") as f:
        del f["X"], f["y"]
        f["X"] = np.zeros((5, F))
        f["y"] = np.zeros(5)
    with pytest.raises(ValueError, match="changed shape"):
        list(src.chunks(5))
    assert _n_open_files() == 0
    _assert_closed(h5path)


def test_hdf5_errors(h5path, tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        HDF5Source(missing, X="X", y="y")
    with pytest.raises(KeyError, match=r"'Z'.*available datasets: 'X', 'cols/x0'"):
        HDF5Source(h5path, X="Z", y="y")
    with pytest.raises(KeyError, match=r"'cols/x9'.*'cols/x1'"):
        HDF5Source(h5path, X=["cols/x0", "cols/x9"], y="y")
    with pytest.raises(ValueError, match=r"different lengths.*'/X' has 23.*'/short' has 22"):
        HDF5Source(h5path, X="X", y="short")
    with pytest.raises(TypeError, match=r"'/text'.*non-numeric"):
        HDF5Source(h5path, X="X", y="text")
    with pytest.raises(TypeError, match="'cols'.*not a dataset"):
        HDF5Source(h5path, X="cols", y="y")
    with pytest.raises(ValueError, match="each X dataset of a list must be a 1-D"):
        HDF5Source(h5path, X=["X"], y="y")
    with pytest.raises(ValueError, match="file=None"):
        HDF5Source(None, X="X", y="y")
    not_hdf5 = tmp_path / "plain.txt"
    not_hdf5.write_text("hello")
    with pytest.raises(OSError, match="plain.txt"):
        HDF5Source(not_hdf5, X="X", y="y")
    with h5py.File(h5path, "r") as f:
        src = as_source(f["X"], f["y"])
    with pytest.raises(ValueError, match="no longer valid"):
        list(src.chunks(5))
    assert _n_open_files() == 0


# -- IterableSource ------------------------------------------------------------

def _factory(X, y, w=None, sizes=(4, 9, 1, 6, 3)):
    def read():
        start = 0
        for size in sizes:
            sl = slice(start, start + size)
            start += size
            # Lists and 1-D inputs are fine too: convert as the user might.
            yield (X[sl], y[sl].tolist()) if w is None else (X[sl], y[sl], w[sl])
    return read


@pytest.mark.parametrize("chunk_size", [1, 5, 8, N, 100])
def test_iterable_rebuffers_to_chunk_size(data, chunk_size):
    X, y, w = data
    src = IterableSource(_factory(X, y, w))
    assert src.n_samples is None and src.n_chunks(5) is None
    for _ in range(2):
        chunks, Xc, yc, wc = _concat(src.chunks(chunk_size))
        _check_layout(chunks, chunk_size)
        np.testing.assert_array_equal(Xc, X)
        np.testing.assert_array_equal(yc, y)
        np.testing.assert_array_equal(wc, w)
        assert (src.n_samples, src.n_features, src.has_sample_weight) == (N, F, True)


def test_iterable_start_chunk_and_1d(data):
    X, y, _ = data
    src = IterableSource(_factory(X[:, 0], y))
    chunks, Xc, yc, wc = _concat(src.chunks(5, start_chunk=3))
    _check_layout(chunks, 5, start_chunk=3)
    np.testing.assert_array_equal(Xc[:, 0], X[15:, 0])
    np.testing.assert_array_equal(yc, y[15:])
    assert wc is None and src.n_features == 1 and src.n_samples == N
    with pytest.raises(ValueError, match="start_chunk=6"):
        src.chunks(5, start_chunk=6)                        # known size: eager
    fresh = IterableSource(_factory(X, y))
    with pytest.raises(ValueError, match="start_chunk=6"):  # unknown size: at the end
        list(fresh.chunks(5, start_chunk=6))


def test_iterable_rejects_one_shot_iterators(data):
    X, y, _ = data
    gen = _factory(X, y)()
    with pytest.raises(TypeError, match="fresh iterator"):
        IterableSource(gen)
    with pytest.raises(TypeError, match="fresh iterator"):
        as_source(gen)
    with pytest.raises(TypeError, match="factory must be a callable"):
        IterableSource(42)
    # A factory returning the same, consumed iterator is caught on pass 2.
    src = IterableSource(lambda: gen)
    list(src.chunks(5))
    with pytest.raises(ValueError, match="this pass gave 0 rows"):
        list(src.chunks(5))


def test_iterable_chunk_errors(data):
    X, y, w = data

    def wrong_features():
        yield X[:4], y[:4]
        yield X[4:8], y[4:8]
        yield X[8:, :2], y[8:]

    with pytest.raises(ValueError, match="user chunk 2: X has 2 features.*3"):
        list(IterableSource(wrong_features).chunks(5))

    def wrong_length():
        yield X[:4], y[:4]
        yield X[4:8], y[4:9]

    with pytest.raises(ValueError, match=r"user chunk 1: X and y have different lengths \(4 and 5\)"):
        list(IterableSource(wrong_length).chunks(5))

    def weights_then_none():
        yield X[:4], y[:4], w[:4]
        yield X[4:], y[4:]

    with pytest.raises(ValueError, match="user chunk 1: has no sample_weight"):
        list(IterableSource(weights_then_none).chunks(5))

    with pytest.raises(TypeError, match="user chunk 0 must be an"):
        list(IterableSource(lambda: iter([X])).chunks(5))
    with pytest.raises(TypeError, match="user chunk 0: y must be numeric"):
        list(IterableSource(lambda: iter([(X, np.array(["a"] * N))])).chunks(5))
    with pytest.raises(ValueError, match="no rows"):
        list(IterableSource(lambda: iter([])).chunks(5))


def test_iterable_exception_mid_pass_keeps_cause(data):
    X, y, _ = data

    def failing():
        yield X[:10], y[:10]
        yield X[10:20], y[10:20]
        raise OSError("disk gone")

    with pytest.raises(RuntimeError, match="user chunk 2") as info:
        list(IterableSource(failing).chunks(5))
    assert isinstance(info.value.__cause__, OSError)
    assert str(info.value.__cause__) == "disk gone"

    def bad_factory():
        raise ValueError("no connection")

    with pytest.raises(RuntimeError, match="factory") as info:
        list(IterableSource(bad_factory).chunks(5))
    assert isinstance(info.value.__cause__, ValueError)


def test_iterable_changed_row_count_is_caught(data):
    X, y, _ = data
    sizes = [(10, 13), (10, 12)]

    def read():
        for size in sizes.pop(0):
            yield X[:size], y[:size]

    src = IterableSource(read)
    list(src.chunks(5))
    assert src.n_samples == 23
    with pytest.raises(ValueError, match="this pass gave 22 rows but an earlier one gave 23"):
        list(src.chunks(5))


# -- as_source ---------------------------------------------------------------------

def test_as_source_dispatch(data, h5path):
    X, y, w = data
    src = ArraySource(X, y)
    assert as_source(src) is src
    assert isinstance(as_source(X, y, w), ArraySource)
    assert isinstance(as_source(X.tolist(), y.tolist()), ArraySource)
    assert isinstance(as_source(_factory(X, y)), IterableSource)
    with pytest.raises(ValueError, match="y must be None"):
        as_source(src, y)
    with pytest.raises(ValueError, match="y must be None"):
        as_source(_factory(X, y), y)
    with pytest.raises(ValueError, match="y is required"):
        as_source(X)
    for path in (h5path, str(h5path)):
        with pytest.raises(TypeError, match=r"HDF5Source\(path, X="):
            as_source(path, "y")
    with pytest.raises(TypeError, match="X must be an array-like"):
        as_source(object(), y)
    assert issubclass(ArraySource, ChunkSource)


# -- check_chunk -------------------------------------------------------------------

def _chunk(index=3, start=30):
    X = np.arange(12.0).reshape(4, 3)
    return Chunk(index, start, X, np.arange(4.0), np.ones(4))


def test_check_chunk_passes_clean_chunk_through():
    c = _chunk()
    assert check_chunk(c, 3) is c
    assert check_chunk(c, None, nan_policy="omit") is c


def test_check_chunk_errors_name_the_chunk():
    with pytest.raises(ValueError, match="chunk 3.*X has 3 features, expected 2"):
        check_chunk(_chunk(), 2)
    for name in ("X", "y", "sample_weight"):
        c = _chunk()
        arr = getattr(c, name)
        arr[(2, 1) if name == "X" else 2] = np.nan
        with pytest.raises(ValueError, match=f"chunk 3.*{name} has non-finite.*row 32"):
            check_chunk(c, 3)
    c = _chunk()
    c.sample_weight[1] = -1.0
    with pytest.raises(ValueError, match="chunk 3.*negative.*row 31"):
        check_chunk(c, 3)
    with pytest.raises(ValueError, match="nan_policy"):
        check_chunk(_chunk(), 3, nan_policy="propagate")


def test_check_chunk_omit_drops_rows():
    c = _chunk()
    c.X[0, 2] = np.inf
    c.y[2] = np.nan
    out = check_chunk(c, 3, nan_policy="omit")
    assert (out.index, out.start, out.n_rows) == (3, 30, 2)
    np.testing.assert_array_equal(out.X, c.X[[1, 3]])
    np.testing.assert_array_equal(out.y, c.y[[1, 3]])
    np.testing.assert_array_equal(out.sample_weight, [1.0, 1.0])
    c.sample_weight[3] = -2.0
    with pytest.raises(ValueError, match="negative.*row 33"):
        check_chunk(c, 3, nan_policy="omit")


# -- fingerprints ------------------------------------------------------------------

def test_array_fingerprint(data):
    X, y, w = data
    fp = ArraySource(X, y, w).fingerprint()
    json.dumps(fp)
    assert fp == ArraySource(X.copy(), y.copy(), w.copy()).fingerprint()
    assert fp["kind"] == "array" and fp["n_samples"] == N
    assert fp != ArraySource(X[:-1], y[:-1], w[:-1]).fingerprint()
    assert fp != ArraySource(X, y).fingerprint()
    X2 = X.copy()
    X2[-1, 0] += 1.0                    # the last rows are always sampled
    assert fp != ArraySource(X2, y, w).fingerprint()


def test_hdf5_fingerprint(h5path, data, tmp_path):
    X, y, _ = data
    fp = HDF5Source(h5path, X="X", y="y").fingerprint()
    json.dumps(fp)
    assert fp == HDF5Source(str(h5path), X="X", y="y").fingerprint()
    with h5py.File(h5path, "r") as f:
        assert HDF5Source(f, X="X", y="y").fingerprint() == fp
    assert fp["kind"] == "hdf5"
    assert fp["datasets"]["X"][0]["name"] == "/X"
    assert fp["files"][os.path.abspath(h5path)]["size"] == os.path.getsize(h5path)
    assert fp != HDF5Source(h5path, X=["cols/x0", "cols/x1", "cols/x2"], y="y").fingerprint()

    # Same names, other file content: the file's size/mtime and digest change.
    with h5py.File(h5path, "a") as f:
        f["X"][0, 0] = 99.0
    os.utime(h5path, ns=(1, 1))
    assert HDF5Source(h5path, X="X", y="y").fingerprint() != fp

    # Other length.
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["X"], f["y"] = X[:-1], y[:-1]
    fp_other = HDF5Source(other, X="X", y="y").fingerprint()
    assert fp_other["n_samples"] == N - 1 and fp_other != fp


def test_iterable_fingerprint_stable_across_passes(data):
    X, y, _ = data
    src = IterableSource(_factory(X, y))
    fp = src.fingerprint()
    list(src.chunks(5))
    assert src.fingerprint() == fp == IterableSource(_factory(X, y)).fingerprint()
    json.dumps(fp)


def test_closed_file_object_is_named(h5path):
    f = h5py.File(h5path, "r")
    src = HDF5Source(f, X="X", y="y")
    f.close()
    with pytest.raises(ValueError, match="`file` is closed"):
        list(src.chunks(5))

