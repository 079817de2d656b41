"""MemoryPool: program and buffer reuse, bounds, statistics, threads."""

import threading
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from sknlsq import MemoryPool, curve_fit
from sknlsq._pool import get_default_pool, resolve_pool


def decay(x, a, b, c):
    return a * jnp.exp(-b * x) + c


def _data(m, seed):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 4, m)
    y = (1 + seed % 3) * np.exp(-(0.5 + 0.1 * (seed % 5)) * x) + 0.2 + 0.01 * rng.normal(size=m)
    return x, y


def test_lengths_in_one_bucket_share_a_compiled_program():
    pool = MemoryPool()
    for m in (900, 1000, 1033):  # the example
        curve_fit(decay, *_data(m, m), pool=pool)
    s = pool.get_stats()
    assert s["compiles"] == 1
    assert s["cache_hits"] == 2
    assert s["compile_seconds"] > 0


def _centred(x, a, b):
    return a * (x - jnp.mean(x)) + b


def _per_length(x, a, b):
    return a * jnp.exp(-x / x.shape[0]) + b


def _centred_np(x, a, b):
    return a * (x - np.mean(x)) + b


def _binned(x, a, b):
    return a * jnp.gradient(x) * jnp.exp(-x / 5) + b  # uses the neighbouring rows


@pytest.mark.parametrize("model", [_centred, _per_length, _centred_np, _binned],
                         ids=["mean", "length", "numpy-mean", "neighbours"])
def test_models_using_the_whole_data_are_not_padded(model):
    """Padding adds rows to x; a model that uses x as a whole (its mean, its
    length) would see them and fit something else. Such models run at their
    exact shape: scipy's answer for lengths off a bucket, single and batched."""
    from scipy.optimize import curve_fit as scipy_curve_fit

    ref_model = {_centred: _centred_np, _centred_np: _centred_np,
                 _per_length: lambda x, a, b: a * np.exp(-x / x.shape[0]) + b,
                 _binned: lambda x, a, b: a * np.gradient(x) * np.exp(-x / 5) + b}[model]
    rng = np.random.default_rng(3)
    for m in (100, 333):
        x = np.linspace(0, 10, m)
        y = ref_model(x, 0.7, 2.5) + 0.01 * rng.normal(size=m)
        ref = scipy_curve_fit(ref_model, x, y, p0=[1, 1], ftol=1e-14, xtol=1e-14, gtol=1e-14)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the NumPy model's host-path notice
            np.testing.assert_allclose(curve_fit(model, x, y, p0=[1, 1])[0], ref, rtol=1e-7)
            Y = np.stack([y, 2 * y])
            batched = curve_fit(model, x, Y, p0=[1, 1], batch=True)[0]
        np.testing.assert_allclose(batched[0], ref, rtol=1e-7)


def test_whole_data_model_on_replicated_x_is_not_padded():
    """A design with replicated x levels (5 levels x 20 replicates): the first
    16 and the last 8 rows are equal, which made a model centring x on its
    mean look row-independent; the padded fit saw another mean. The verdict
    was then cached for the model, so its later fits of ordinary data were
    padded too. Both must give scipy's answer."""
    from scipy.optimize import curve_fit as scipy_curve_fit

    def centred(x, a, b):
        return a * (x - x.mean()) + b

    rng = np.random.default_rng(0)
    x = np.repeat(np.arange(5.0), 20)
    y = 1.5 * (x - x.mean()) + 3.0 + 0.1 * rng.standard_normal(x.size)
    x2 = np.linspace(0.0, 10.0, 30)
    y2 = 1.5 * (x2 - x2.mean()) + 3.0 + 0.1 * rng.standard_normal(x2.size)
    for xx, yy in ((x, y), (x2, y2), (np.ones(50), np.full(50, 2.0))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (constant x: covariance not estimated)
            ref = scipy_curve_fit(centred, xx, yy, p0=[1, 1])[0]
            np.testing.assert_allclose(curve_fit(centred, xx, yy, p0=[1, 1])[0], ref,
                                       rtol=1e-7, atol=1e-12)


def test_robust_losses_share_one_program_and_keep_their_answers():
    """soft_l1, huber, cauchy and arctan run one compiled program (the loss is
    chosen at run time, like f_scale); each gives scipy's answer, in a single
    fit, in a batched fit and in a chunked (streaming) fit."""
    from scipy.optimize import curve_fit as scipy_curve_fit

    from sknlsq._stream import fit_in_chunks

    x, y = _data(400, 7)
    y = y.copy()
    y[::37] += 1.5  # outliers, so that the losses differ
    Y = np.stack([y, y[::-1]])
    pool = MemoryPool()
    for i, loss in enumerate(("soft_l1", "huber", "cauchy", "arctan")):
        kw = dict(p0=[1, 1, 0], loss=loss, f_scale=0.1, method="trf")
        ref = scipy_curve_fit(lambda t, a, b, c: a * np.exp(-b * t) + c, x, y, ftol=1e-14,
                              xtol=1e-14, gtol=1e-14, **kw)[0]
        np.testing.assert_allclose(curve_fit(decay, x, y, pool=pool, **kw)[0], ref, rtol=1e-6)
        batched = curve_fit(decay, x, Y, batch=True, pool=pool, **kw)[0]
        np.testing.assert_allclose(batched[0], ref, rtol=1e-6)
        chunked = fit_in_chunks(decay, x, y, None, chunk_size=64, pool=pool, **kw)
        np.testing.assert_allclose(chunked.params, ref, rtol=1e-6)
        if i == 0:
            compiles = pool.get_stats()["compiles"]
    assert pool.get_stats()["compiles"] == compiles  # no program for the other losses
    # The linear loss keeps its own (leaner) program.
    curve_fit(decay, x, y, p0=[1, 1, 0], method="trf", pool=pool)
    assert pool.get_stats()["compiles"] == compiles + 1


def test_repeated_fits_reuse_staging_buffers():
    pool = MemoryPool()
    for seed in range(5):
        curve_fit(decay, *_data(1000, seed), pool=pool)
    s = pool.get_stats()
    # x, y and weights, padded to 1112, share one (3, 1112) buffer allocated once.
    assert s["allocations"] == 1
    assert s["reuses"] == 4
    assert s["reuse_rate"] == pytest.approx(4 / 5)
    assert s["peak_memory"] == s["memory"] == 3 * 1112 * 8


def test_active_pool_and_default_pool():
    with MemoryPool() as pool:
        assert resolve_pool() is pool
        curve_fit(decay, *_data(300, 1))
        with MemoryPool() as inner:
            assert resolve_pool() is inner
        assert resolve_pool() is pool
    assert pool.get_stats()["compiles"] == 1
    assert resolve_pool() is get_default_pool()
    with pytest.raises(TypeError, match="pool"):
        resolve_pool("not a pool")


def test_one_pool_entered_by_several_threads_at_once():
    """``with pool:`` blocks of one pool in two threads that overlap and end
    out of order: each thread gets its own pool state back (the exit of the
    first raised 'Token was created in a different Context')."""
    pool = MemoryPool()
    errors, seen = [], {}
    first_in, second_out = threading.Event(), threading.Event()

    def work(i):
        try:
            with MemoryPool() as own:  # the state each exit must restore
                if i == 1:
                    first_in.wait()
                with pool:
                    if i == 0:
                        first_in.set()
                        second_out.wait(10)  # thread 1 enters and leaves meanwhile
                    seen[i, "in"] = resolve_pool() is pool
                    popt, _ = curve_fit(decay, *_data(300, 1 + i))
                    seen[i, "fit"] = popt
                seen[i, "after"] = resolve_pool() is own
                if i == 1:
                    second_out.set()
        except Exception as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)
            second_out.set()

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(seen[i, k] for i in (0, 1) for k in ("in", "after"))
    np.testing.assert_allclose(seen[1, "fit"], curve_fit(decay, *_data(300, 2))[0], rtol=1e-10)
    with pytest.raises(RuntimeError, match="__enter__"):
        pool.__exit__(None, None, None)


def test_eviction_keeps_working_and_clear_recompiles():
    pool = MemoryPool(max_pool_size=2)
    ref = {}
    for m in (40, 100, 300, 700):  # four buckets, four programs
        x, y = _data(m, m)
        ref[m] = curve_fit(decay, x, y, pool=pool)[0]
    s = pool.get_stats()
    assert s["programs"] == 2 and s["evictions"] >= 2
    x, y = _data(40, 40)  # evicted: recompiles, same answer
    np.testing.assert_array_equal(curve_fit(decay, x, y, pool=pool)[0], ref[40])
    pool.clear()
    assert pool.get_stats()["compiles"] == 0
    np.testing.assert_array_equal(curve_fit(decay, x, y, pool=pool)[0], ref[40])
    assert pool.get_stats()["compiles"] == 1


def test_concurrent_fits_match_sequential_fits():
    pool = MemoryPool()
    datasets = [_data(500 + 37 * i, i) for i in range(12)]
    sequential = [curve_fit(decay, x, y, pool=pool)[0] for x, y in datasets]
    results = [None] * len(datasets)

    def work(i):
        for _ in range(3):
            results[i] = curve_fit(decay, *datasets[i], pool=pool)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(datasets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, sequential):
        np.testing.assert_array_equal(got, want)


def test_concurrent_batched_fits_finish_and_match_sequential_fits():
    """Batched fits (LAPACK on stacks of matrices) from several threads at
    once: jaxlib's batched LAPACK kernels block on XLA's intra-op thread pool,
    and as many of them at once as the pool has threads never finished
    (a hang on a 2-core machine) before such programs were serialised."""
    rng = np.random.default_rng(3)
    x = np.linspace(0, 4, 120)
    curves = [(1 + rng.uniform(0, 2, (300, 1))) * np.exp(-rng.uniform(0.3, 1.5, (300, 1)) * x)
              + 0.2 + 0.01 * rng.normal(size=(300, 120)) for _ in range(4)]
    pool = MemoryPool()
    sequential = [curve_fit(decay, x, Y, p0=[1, 1, 0], batch=True, pool=pool)[0]
                  for Y in curves]
    results = [None] * len(curves)

    def work(i):
        results[i] = curve_fit(decay, x, curves[i], p0=[1, 1, 0], batch=True, pool=pool)[0]

    threads = [threading.Thread(target=work, args=(i,), daemon=True)
               for i in range(len(curves))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "concurrent batched fits did not finish"
    for got, want in zip(results, sequential):
        np.testing.assert_array_equal(got, want)


def test_batched_lapack_detection():
    from sknlsq._pool import _has_batched_lapack

    stacked = ('%geqrf.0 = (f64[256,224,4]{1,2,0}, f64[256,4]{1,0}) custom-call(%c), '
               'custom_call_target="lapack_dgeqrf_ffi", frontend_attributes='
               '{num_batch_dims="1"}')
    single = ('%geqrf.0 = (f64[224,4]{1,0}, f64[4]{0}) custom-call(%c), '
              'custom_call_target="lapack_dgeqrf_ffi", frontend_attributes='
              '{num_batch_dims="0"}')
    assert _has_batched_lapack(stacked)
    assert not _has_batched_lapack(single)
    assert not _has_batched_lapack("%fusion.1 = f64[256,224,4]{2,1,0} fusion(%p)")


def test_pool_argument_validation(tmp_path):
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="max_pool_size"):
            MemoryPool(max_pool_size=bad)
    a_file = tmp_path / "f"
    a_file.write_text("")
    for bad in (a_file, a_file / "sub"):
        with pytest.raises(ValueError, match="cache_dir"):
            MemoryPool(cache_dir=bad)


def test_persistent_cache_serves_a_fresh_process(tmp_path):
    """``MemoryPool(cache_dir=d)``: a fresh process loads the programs an
    earlier one compiled (JAX's cache-hit events), with the same answer.
    Run in subprocesses: the cache setting is process-wide."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, numpy as np, jax, jax.numpy as jnp, sknlsq\n"
        "events = []\n"
        "jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))\n"
        "x = np.linspace(0, 4, 300); y = 2 * np.exp(-0.7 * x) + 0.3 + 0.01 * np.sin(40 * x)\n"
        "f = lambda x, a, b, c: a * jnp.exp(-b * x) + c\n"
        "with sknlsq.MemoryPool(cache_dir=sys.argv[1]):\n"
        "    p = sknlsq.curve_fit(f, x, y, p0=[1, 1, 0])[0]\n"
        "print(json.dumps({'hits': events.count('/jax/compilation_cache/cache_hits'),\n"
        "                  'p': p.tolist()}))\n")
    d = tmp_path / "cache"
    runs = [json.loads(subprocess.run([sys.executable, "-c", code, str(d)], check=True,
                                      capture_output=True).stdout.decode().splitlines()[-1])
            for _ in range(2)]
    assert runs[0]["hits"] == 0 and any(d.iterdir())
    assert runs[1]["hits"] >= 1
    assert runs[1]["p"] == runs[0]["p"]


def test_pool_pickles_by_identity():
    import pickle
    import subprocess
    import sys

    pool = MemoryPool(max_pool_size=7)
    curve_fit(decay, *_data(100, 0), pool=pool)
    blob = pickle.dumps(pool)
    assert pickle.loads(blob) is pool  # same process: the same pool
    # Another process gets one empty pool with the same settings, shared by
    # everything unpickled there with the same identity.
    code = ("import pickle, sys; b = sys.stdin.buffer.read(); a = pickle.loads(b); "
            "c = pickle.loads(b); print(a is c, a.max_pool_size, a.get_stats()['compiles'])")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                         check=True).stdout.decode().split()
    assert out == ["True", "7", "0"]


def test_clone_shares_the_pool():
    import copy

    from sklearn.base import clone

    from sknlsq import CurveFitRegressor

    pool = MemoryPool()
    est = CurveFitRegressor(decay, p0=[1, 1, 0], pool=pool)
    assert clone(est).pool is pool and copy.deepcopy(pool) is pool


def test_few_distinct_x_values_keep_padding_and_dependence_is_still_seen():
    """A binary or 3-level x (an A/B test, dose levels) has fewer distinct
    rows than the row-independence check uses: such data lost padding (one
    compile per length) and the large-data chunked path. Runs of each level
    keep the halves different, so a plain model is padded and a model
    centring x on its mean is still not."""
    from scipy.optimize import curve_fit as scipy_curve_fit

    def line(x, a, b):
        return a + b * x

    def centred(x, a, b):
        return a + b * (x - x.mean())

    for levels in (2, 3):
        pool = MemoryPool()
        compiles = []
        for m in (900, 1000, 1033):
            x = np.arange(m, dtype=float) % levels
            curve_fit(line, x, 1 + 2 * x, p0=[0.5, 0.5], pool=pool)
            compiles.append(pool.get_stats()["compiles"])
        assert compiles == [1, 1, 1], (levels, compiles)
        x = np.sort(np.arange(101, dtype=float) % levels)
        y = 3.0 + 1.5 * (x - x.mean()) + 0.01 * np.sin(np.arange(x.size))
        ref = scipy_curve_fit(centred, x, y, p0=[1, 1])[0]
        np.testing.assert_allclose(curve_fit(centred, x, y, p0=[1, 1])[0], ref, rtol=1e-7)
