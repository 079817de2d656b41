"""Tests of the unrolled small-matrix kernels (``sknlsq._solvers._smallla``).

Everything runs in float64 inside a scoped ``jax.enable_x64(True)`` (x64 is
never switched on globally), under ``jit`` and under ``jit(vmap)``, and is
checked against ``numpy.linalg``. Tolerances are relative to the largest
singular value / the norm of the matrix, which is what backward-stable
algorithms (Householder QR, one-sided Jacobi) guarantee.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from sknlsq._solvers import _smallla as S

RTOL = 1e-13  # relative to ||A|| (or ||A||^2 for Gram matrices)


@pytest.fixture(autouse=True)
def x64():
    before = jax.config.jax_enable_x64
    with jax.enable_x64(True):
        yield
    assert jax.config.jax_enable_x64 == before


def rng(seed=0):
    return np.random.default_rng(seed)


def graded(r, m, n, smin=1e-14):
    """m x n matrix with singular values logspace(0, log10(smin), min(m, n))."""
    U, _ = np.linalg.qr(r.standard_normal((m, m)))
    V, _ = np.linalg.qr(r.standard_normal((n, n)))
    k = min(m, n)
    return (U[:, :k] * np.logspace(0, np.log10(smin), k)) @ V[:, :k].T


def col_scaled(r, m, n, lo=-8, hi=8):
    return r.standard_normal((m, n)) * np.logspace(lo, hi, n)[r.permutation(n)]


def rank_deficient(r, m, n, rank):
    return r.standard_normal((m, rank)) @ r.standard_normal((rank, n))


def safe_colnorm(A):
    """Column norms without over/underflow (numpy's norm squares directly)."""
    amax = np.max(np.abs(A), axis=0)
    amax = np.where(amax > 0, amax, 1.0)
    return amax * np.linalg.norm(A / amax, axis=0)


# --------------------------------------------------------------------------
# QR
# --------------------------------------------------------------------------


def check_qr(A, R, rtol=RTOL):
    A = np.asarray(A, float)
    R = np.asarray(R)
    m, k = A.shape
    assert R.shape == (k, k)
    assert np.all(np.isfinite(R))
    assert np.all(np.tril(R, -1) == 0)
    nrm2 = max(np.linalg.norm(A, 2) ** 2, np.finfo(float).tiny)
    # R^T R == A^T A (what the solvers rely on: J^T J, J^T f, column norms).
    assert np.max(np.abs(R.T @ R - A.T @ A)) <= rtol * nrm2
    # Same singular values as A (to eps ||A||).
    sA = np.linalg.svd(A, compute_uv=False)
    sR = np.linalg.svd(R, compute_uv=False)
    smax = max(sA[0], np.finfo(float).tiny)
    np.testing.assert_allclose(sR[: len(sA)], sA, rtol=0, atol=rtol * smax)
    assert np.all(np.abs(sR[len(sA):]) <= rtol * smax)


def check_like_lapack(A, R, rtol=RTOL):
    """Same R as LAPACK up to the sign of each row (signs agree in practice,
    but that is not part of the contract)."""
    A = np.asarray(A, float)
    m, k = A.shape
    Ap = np.vstack([A, np.zeros((max(0, k - m), k))])
    R0 = np.linalg.qr(Ap, mode="r")
    R = np.asarray(R)
    sign = np.where(np.sign(np.diag(R)) == np.sign(np.diag(R0)), 1.0, -1.0)
    scale = np.maximum(np.linalg.norm(A, axis=0), np.finfo(float).tiny)  # per column
    assert np.max(np.abs(sign[:, None] * R - R0) / scale) <= 10 * rtol


QR_SHAPES = [(5, 3), (50, 4), (200, 4), (256, 6), (30, 11), (9, 9)]


@pytest.mark.parametrize("shape", QR_SHAPES)
def test_qr_random(shape):
    A = rng(1).standard_normal(shape)
    R = jax.jit(S.qr_r)(A)
    check_qr(A, R)
    check_like_lapack(A, R)


@pytest.mark.parametrize("kind", ["graded", "colscale", "rank2", "dup", "zero_col", "zero"])
def test_qr_hard(kind):
    r = rng(2)
    m, k = 40, 5
    A = {
        "graded": lambda: graded(r, m, k),
        "colscale": lambda: col_scaled(r, m, k),
        "rank2": lambda: rank_deficient(r, m, k, 2),
        "dup": lambda: np.column_stack([r.standard_normal((m, 3))] * 2)[:, :k],
        "zero_col": lambda: np.column_stack([r.standard_normal((m, 2)), np.zeros(m),
                                             r.standard_normal((m, 2))]),
        "zero": lambda: np.zeros((m, k)),
    }[kind]()
    R = jax.jit(S.qr_r)(A)
    check_qr(A, R)
    if kind == "zero":
        assert np.all(np.asarray(R) == 0)
    if kind == "zero_col":
        np.testing.assert_array_equal(np.asarray(R)[:, 2], 0.0)
    if kind in ("graded", "colscale"):
        check_like_lapack(A, R)


@pytest.mark.parametrize("k", [4, 6])
def test_qr_tall(k):
    A = rng(3).standard_normal((5000, k)) * np.logspace(-3, 3, k)
    R = jax.jit(S.qr_r)(A)
    check_qr(A, R)
    check_like_lapack(A, R)


@pytest.mark.parametrize("shape", [(1, 3), (2, 4), (3, 4), (1, 1)])
def test_qr_fewer_rows_than_columns(shape):
    A = rng(4).standard_normal(shape)
    R = np.asarray(jax.jit(S.qr_r)(A))
    m, k = shape
    assert R.shape == (k, k)
    check_qr(A, R)
    assert np.all(R[m:] == 0)


@pytest.mark.parametrize("magnitude", [1e200, 1e-200])
def test_qr_extreme_magnitudes(magnitude):
    """Column scaling by powers of two: no overflow / underflow in the squares."""
    A = rng(5).standard_normal((30, 4))
    A[:, 1] *= magnitude
    R = np.asarray(jax.jit(S.qr_r)(A))
    assert np.all(np.isfinite(R))
    R0 = np.linalg.qr(A, mode="r")
    sign = np.sign(np.diag(R)) * np.sign(np.diag(R0))
    # Compare column by column, relative to the column norm.
    assert np.max(np.abs(sign[:, None] * R - R0) / safe_colnorm(A)) < 1e-12
    # Without scaling the squares over/underflow (sanity check of the test).
    R_ns = np.asarray(S.qr_r(A, scale=False))
    if magnitude > 1:
        assert not np.all(np.isfinite(R_ns))
    else:  # sigma2 underflows to 0: R[1, 1] is wrong
        assert abs(abs(R_ns[1, 1]) - abs(R0[1, 1])) > 0.1 * abs(R0[1, 1])


def test_qr_subnormal_column():
    """XLA:CPU flushes subnormals to zero, so a subnormal column acts as a zero
    column: finite R, correct to ~1e-310 absolute."""
    A = rng(5).standard_normal((30, 4))
    A[:, 1] *= 1e-310
    R = np.asarray(jax.jit(S.qr_r)(A))
    assert np.all(np.isfinite(R))
    np.testing.assert_allclose(R.T @ R, A.T @ A, rtol=0, atol=1e-13 * np.linalg.norm(A) ** 2)


def test_qr_reduce_use():
    """The solvers' use: QR of [J | f] gives R = R[:n, :n] and qtf = R[:n, n]
    with the Gauss-Newton step solve(R, -qtf) == lstsq(J, -f)."""
    r = rng(6)
    J = col_scaled(r, 120, 4, -4, 4)
    f = r.standard_normal(120)
    Ra = np.asarray(jax.jit(S.qr_r)(np.column_stack([J, f])))
    R, qtf = Ra[:4, :4], Ra[:4, 4]
    p = np.linalg.solve(R, -qtf)
    p0 = np.linalg.lstsq(J, -f, rcond=None)[0]
    np.testing.assert_allclose(p, p0, rtol=1e-10)
    # ||f||^2 = ||qtf||^2 + residual^2, and |R[n, n]| is the residual norm.
    res = np.linalg.norm(J @ p0 + f)
    np.testing.assert_allclose(abs(Ra[4, 4]), res, rtol=1e-12)


def test_qr_vmap_matches_single():
    r = rng(7)
    m, k = 60, 4
    batch = np.stack([r.standard_normal((m, k)), graded(r, m, k), col_scaled(r, m, k),
                      rank_deficient(r, m, k, 1), np.zeros((m, k)),
                      np.column_stack([np.zeros(m), r.standard_normal((m, k - 1))])])
    Rb = np.asarray(jax.jit(jax.vmap(S.qr_r))(batch))
    single = jax.jit(S.qr_r)
    for A, R in zip(batch, Rb):
        check_qr(A, R)
        # (vmapped reductions may round differently: compare to ||A||)
        np.testing.assert_allclose(R, np.asarray(single(A)), rtol=0,
                                   atol=1e-14 * np.linalg.norm(A))


def test_qr_inside_while_loop_vmap():
    """As in the solvers: vmapped while_loop whose body factorises."""
    r = rng(8)
    As = r.standard_normal((16, 50, 3))

    def run(A):
        def body(c):
            i, acc = c
            return i + 1, acc + S.qr_r(A * (1.0 + i))[0, 0]
        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, 0.0))[1]

    out = np.asarray(jax.jit(jax.vmap(run))(As))
    ref = [sum(np.linalg.qr(A * (1.0 + i), mode="r")[0, 0] for i in range(3)) for A in As]
    np.testing.assert_allclose(out, ref, rtol=1e-13)


def test_qr_derivatives_finite():
    A = rng(9).standard_normal((20, 3))
    g = jax.jit(jax.grad(lambda a: jnp.sum(S.qr_r(a) ** 2)))(A)
    # sum(R^2) = ||A||_F^2, so the gradient is 2 A.
    np.testing.assert_allclose(np.asarray(g), 2 * A, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# SVD
# --------------------------------------------------------------------------


def check_svd(A, U, s, Vt, rtol=RTOL):
    A = np.asarray(A, float)
    U, s, Vt = (np.asarray(a) for a in (U, s, Vt))
    p, n = A.shape
    r = min(p, n)
    assert U.shape == (p, r) and s.shape == (r,) and Vt.shape == (r, n)
    assert np.all(np.isfinite(U)) and np.all(np.isfinite(s)) and np.all(np.isfinite(Vt))
    assert np.all(s >= 0)
    assert np.all(np.diff(s) <= 0), "s not sorted in decreasing order"
    s0 = np.linalg.svd(A, compute_uv=False)
    smax = max(s0[0], np.finfo(float).tiny)
    np.testing.assert_allclose(s, s0, rtol=0, atol=10 * rtol * smax)
    # Reconstruction.
    assert np.linalg.norm(U * s @ Vt - A) <= rtol * max(np.linalg.norm(A), np.finfo(float).tiny)
    # V (n >= p: rows of Vt) orthonormal.
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(r), atol=10 * rtol)
    # U: orthonormal columns where s is well above the noise level, zero
    # columns where s == 0.
    big = s > 1e-8 * smax
    Ub = U[:, big]
    np.testing.assert_allclose(Ub.T @ Ub, np.eye(big.sum()), atol=1e3 * rtol)
    assert np.all(U[:, s == 0] == 0)


# (12 x 12 is covered by test_svd_many_random_converge.)
SVD_SHAPES = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (6, 3), (12, 6), (8, 5), (3, 5)]


@pytest.mark.parametrize("shape", SVD_SHAPES)
def test_svd_random(shape):
    A = rng(10).standard_normal(shape)
    check_svd(A, *jax.jit(S.svd_small)(A))


@pytest.mark.parametrize("kind", ["graded", "colscale", "triu", "rank1", "rank3", "dup",
                                  "zero_col", "zero", "identity", "ints", "trf_aug"])
@pytest.mark.parametrize("n", [3, 6])
def test_svd_hard(kind, n):
    r = rng(11)
    A = {
        "graded": lambda: graded(r, n, n),
        "colscale": lambda: col_scaled(r, n, n),
        "triu": lambda: np.triu(r.standard_normal((n, n))) * np.logspace(-5, 5, n),
        "rank1": lambda: rank_deficient(r, n, n, 1),
        "rank3": lambda: rank_deficient(r, 2 * n, n, min(3, n - 1)),
        "dup": lambda: np.column_stack([r.standard_normal((n, n - 1)),
                                        np.zeros((n, 1))])[:, [*range(n - 1), 0]] * 3.0,
        "zero_col": lambda: np.column_stack([r.standard_normal((n, n - 1)), np.zeros(n)]),
        "zero": lambda: np.zeros((n, n)),
        "identity": lambda: np.eye(n) * 2.5,
        "ints": lambda: r.integers(-2, 3, (n, n)).astype(float),
        # TRF with bounds: [R D; diag(sqrt(g dv scale))], some diagonal zeros.
        "trf_aug": lambda: np.vstack([np.triu(r.standard_normal((n, n))) * np.logspace(-4, 4, n),
                                      np.diag(np.where(np.arange(n) % 2, 0.0, 0.3))]),
    }[kind]()
    U, s, Vt, sweeps = jax.jit(S._svd_jacobi)(A)
    check_svd(A, U, s, Vt)
    assert int(sweeps) < 20, "did not converge before max_sweeps"
    if kind == "zero":
        assert np.all(np.asarray(s) == 0) and np.all(np.asarray(U) == 0)


@pytest.mark.parametrize("magnitude", [1e250, 1e-250])
def test_svd_extreme_magnitudes(magnitude):
    A = rng(12).standard_normal((4, 3)) * magnitude
    U, s, Vt = jax.jit(S.svd_small)(A)
    s0 = np.linalg.svd(A / magnitude, compute_uv=False) * magnitude
    assert np.all(np.isfinite(np.asarray(s)))
    np.testing.assert_allclose(np.asarray(s), s0, rtol=1e-12)
    check_svd(A / magnitude, U, np.asarray(s) / magnitude, Vt)


def test_svd_subnormal():
    """Subnormal input is flushed to zero by XLA:CPU: a zero SVD, no NaN."""
    A = rng(12).standard_normal((4, 3)) * 1e-310
    U, s, Vt = (np.asarray(a) for a in jax.jit(S.svd_small)(A))
    assert np.all(np.isfinite(U)) and np.all(np.isfinite(Vt))
    assert np.all(s <= 1e-300)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(3), atol=1e-15)


def test_svd_many_random_converge():
    """Batch of 300 random 12 x 12: all converge, accuracy as for one."""
    As = rng(13).standard_normal((300, 12, 12))
    U, s, Vt, sweeps = jax.jit(jax.vmap(S._svd_jacobi))(As)
    assert int(np.max(sweeps)) < 20
    s0 = np.linalg.svd(As, compute_uv=False)
    assert np.max(np.abs(np.asarray(s) - s0) / s0[:, :1]) < 1e-13
    rec = np.einsum("bij,bj,bjk->bik", U, s, Vt) - As
    assert np.max(np.linalg.norm(rec, axis=(1, 2)) / np.linalg.norm(As, axis=(1, 2))) < RTOL


def test_svd_vmap_matches_single():
    r = rng(14)
    n = 4
    batch = np.stack([r.standard_normal((n, n)), graded(r, n, n), col_scaled(r, n, n),
                      rank_deficient(r, n, n, 2), np.zeros((n, n)), np.eye(n),
                      np.triu(r.standard_normal((n, n)))])
    Ub, sb, Vtb = (np.asarray(a) for a in jax.jit(jax.vmap(S.svd_small))(batch))
    single = jax.jit(S.svd_small)
    for A, U, s, Vt in zip(batch, Ub, sb, Vtb):
        check_svd(A, U, s, Vt)
        # Same result as the unbatched call (lanes that converged early are
        # frozen, so they see exactly the same sweeps).
        U1, s1, Vt1 = (np.asarray(a) for a in single(A))
        np.testing.assert_allclose(s, s1, rtol=0, atol=1e-14 * s1[0])
        np.testing.assert_allclose(U * s, U1 * s1, rtol=0, atol=1e-13 * s1[0])


def test_svd_nan_terminates():
    A = np.ones((3, 3))
    A[1, 1] = np.nan
    U, s, Vt = jax.jit(S.svd_small)(A)
    assert np.isnan(np.asarray(s)).any()


def test_svd_trust_region_quantities():
    """What the solvers compute from the SVD: uf = U^T b and the minimum-norm
    least-squares solution V diag(1/s) U^T b on the numerical range."""
    r = rng(15)
    for A in (r.standard_normal((6, 3)), rank_deficient(r, 4, 4, 2),
              np.triu(r.standard_normal((5, 5)))):
        b = r.standard_normal(A.shape[0])
        U, s, Vt = (np.asarray(a) for a in jax.jit(S.svd_small)(A))
        keep = s > 1e-12 * s[0]
        x = Vt.T[:, keep] @ ((U.T @ b)[keep] / s[keep])
        x0 = np.linalg.lstsq(A, b, rcond=1e-12)[0]
        np.testing.assert_allclose(x, x0, rtol=1e-10, atol=1e-12)
        # ||U^T b|| on the range equals ||P_range b||.
        U0, s0, _ = np.linalg.svd(A, full_matrices=False)
        np.testing.assert_allclose(np.linalg.norm((U.T @ b)[keep]),
                                   np.linalg.norm((U0.T @ b)[s0 > 1e-12 * s0[0]]), rtol=1e-12)


def test_svd_inside_while_loop_vmap():
    r = rng(16)
    As = r.standard_normal((32, 3, 3))

    def run(A):
        def body(c):
            i, acc = c
            return i + 1, acc + S.svd_small(A * (1.0 + i))[1][-1]
        # Data-dependent trip count per lane.
        return jax.lax.while_loop(lambda c: c[0] < 2 + (A[0, 0] > 0), body, (0, 0.0))[1]

    out = np.asarray(jax.jit(jax.vmap(run))(As))
    ref = [sum(np.linalg.svd(A * (1.0 + i), compute_uv=False)[-1] for i in range(2 + (A[0, 0] > 0)))
           for A in As]
    np.testing.assert_allclose(out, ref, rtol=1e-13)


def test_svd_float32():
    A = rng(17).standard_normal((5, 4)).astype(np.float32)
    U, s, Vt = jax.jit(S.svd_small)(A)
    assert s.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(s), np.linalg.svd(A.astype(float), compute_uv=False),
                               rtol=1e-5)


# --------------------------------------------------------------------------
# Switches
# --------------------------------------------------------------------------


def test_use_small_thresholds():
    assert S.use_small(3) and S.use_small(4) and not S.use_small(5)
    assert S.use_small(6, batched=True) and not S.use_small(7, batched=True)
    assert S.use_small(4, 10) and not S.use_small(4, 200) and not S.use_small(12, 12)


@pytest.mark.parametrize("shape", [(8, 4), (200, 4), (2, 4), (40, 11)])
def test_qr_r_auto(shape):
    A = rng(18).standard_normal(shape)
    R = jax.jit(S.qr_r_auto)(A)
    check_qr(A, R)
    Rb = jax.jit(jax.vmap(S.qr_r_auto))(np.stack([A, 2 * A]))
    check_qr(2 * A, Rb[1])


@pytest.mark.parametrize("shape,batched", [((3, 3), False), ((6, 3), False), ((6, 6), False),
                                           ((6, 6), True), ((12, 6), True), ((20, 4), False),
                                           ((10, 10), True)])
def test_svd_auto(shape, batched):
    A = rng(19).standard_normal(shape)
    U, s, Vt = jax.jit(lambda a: S.svd_auto(a, batched=batched))(A)
    check_svd(A, U, s, Vt)
    out = jax.jit(jax.vmap(lambda a: S.svd_auto(a, batched=batched)))(np.stack([A, -A]))
    check_svd(-A, *(o[1] for o in out))
