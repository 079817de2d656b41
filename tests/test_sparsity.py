"""Sparse-Jacobian structure: validation, colouring, compressed JVPs, detection.

References are independent of the code under test: dense ``jax.jacfwd``
Jacobians for patterns and values, brute-force pairwise checks for the
colouring, hand-computed byte counts for the memory estimate.
"""

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax import lax

import sknlsq._sparsity as sparsity_module
from sknlsq._config import x64
from sknlsq._sparsity import (
    SampledSparsityWarning,
    color_columns,
    compressed_jacobian,
    decompression_indices,
    detect_sparsity_pattern,
    estimate_memory_usage,
    plot_sparsity_pattern,
    validate_pattern,
)

RNG = np.random.default_rng(20240611)


def dense_jacobian(model, params, X):
    """Reference: the dense forward-mode Jacobian of the raveled model output."""
    with x64():
        x = jnp.asarray(X, dtype=jnp.float64)

        def f(q):
            return jnp.ravel(model(x, *q))

        return np.asarray(jax.jit(jax.jacfwd(f))(jnp.asarray(params, dtype=jnp.float64)))


def traced(model, params, X):
    P, s = detect_sparsity_pattern(model, params, X, method="trace")
    assert isinstance(P, sp.csr_array) and P.dtype == bool
    A = P.toarray()
    assert s == pytest.approx(1.0 - A.sum() / A.size)
    return A


# --------------------------------------------------------------------------
# validate_pattern
# --------------------------------------------------------------------------


def test_validate_pattern_accepts_scipy_forms():
    dense = np.array([[1, 0, 0], [0, 2, 0], [1, 0, -1], [0, 0, 0]])
    want = dense != 0
    forms = [dense, dense.astype(bool), dense.tolist(), dense.astype(float),
             sp.csr_matrix(dense), sp.csc_array(dense), sp.lil_matrix(dense),
             sp.dok_array(dense), sp.coo_array(dense)]
    for form in forms:
        P = validate_pattern(form, 4, 3)
        assert isinstance(P, sp.csc_array) and P.dtype == bool
        np.testing.assert_array_equal(P.toarray(), want)


def test_validate_pattern_drops_stored_zeros_and_keeps_input():
    A = sp.csr_array((np.array([1.0, 0.0, 3.0]), np.array([0, 1, 1]), np.array([0, 2, 3])),
                     shape=(2, 2))
    P = validate_pattern(A, 2, 2)
    np.testing.assert_array_equal(P.toarray(), [[True, False], [False, True]])
    assert P.nnz == 2
    assert A.nnz == 3 and A.data[1] == 0.0  # the caller's matrix is untouched


def test_validate_pattern_allows_empty_columns_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P = validate_pattern(np.array([[1, 0], [1, 0]]), 2, 2)
    assert P.nnz == 2


@pytest.mark.parametrize("pattern, exc, match", [
    (np.ones((3, 2)), ValueError, r"jac_sparsity.*\(4, 2\); got \(3, 2\)"),
    (np.ones((4, 3)), ValueError, r"jac_sparsity.*\(4, 2\); got \(4, 3\)"),
    (sp.csr_array(np.ones((2, 4))), ValueError, r"jac_sparsity.*got \(2, 4\)"),
    (np.ones(8), ValueError, r"jac_sparsity.*2-D"),
    (np.ones((4, 2, 1)), ValueError, r"jac_sparsity.*2-D"),
    (np.array([[1, np.nan]] * 4), ValueError, r"jac_sparsity.*NaN"),
    (sp.csr_array(np.array([[1, np.inf]] * 4)), ValueError, r"jac_sparsity.*infinite"),
    (np.array([["a", "b"]] * 4), TypeError, r"jac_sparsity.*numbers"),
])
def test_validate_pattern_errors(pattern, exc, match):
    with pytest.raises(exc, match=match):
        validate_pattern(pattern, 4, 2)


def test_validate_pattern_checks_sizes():
    with pytest.raises(TypeError, match="n_residuals"):
        validate_pattern(np.ones((2, 2)), 2.0, 2)
    with pytest.raises(ValueError, match="n_params"):
        validate_pattern(np.ones((2, 2)), 2, -1)


# --------------------------------------------------------------------------
# Colouring and decompression
# --------------------------------------------------------------------------


def assert_orthogonal_groups(P, colors, n_colors):
    """Brute force: no two columns of one colour share a row."""
    A = sp.csc_array(P).toarray().astype(bool) if sp.issparse(P) else np.asarray(P) != 0
    assert colors.shape == (A.shape[1],)
    assert set(np.unique(colors)) <= set(range(n_colors))
    for j in range(A.shape[1]):
        for k in range(j + 1, A.shape[1]):
            if colors[j] == colors[k]:
                assert not np.any(A[:, j] & A[:, k]), (j, k)


@pytest.mark.parametrize("seed", range(6))
def test_color_columns_random_patterns_are_orthogonal(seed):
    rng = np.random.default_rng(seed)
    A = rng.random((40, 25)) < rng.uniform(0.02, 0.3)
    colors, n_colors = color_columns(A)
    assert_orthogonal_groups(A, colors, n_colors)
    # every row needs at least as many colours as it has nonzeros
    assert n_colors >= A.sum(axis=1).max()


def test_color_columns_extremes():
    colors, n = color_columns(np.ones((5, 7)))
    assert n == 7 and sorted(colors) == list(range(7))
    colors, n = color_columns(sp.eye_array(6))
    assert n == 1 and np.all(colors == 0)
    colors, n = color_columns(np.zeros((4, 3)))
    assert n == 1 and np.all(colors == 0)
    colors, n = color_columns(np.zeros((4, 0)))
    assert n == 0 and colors.shape == (0,)
    # tridiagonal: 3 colours
    T = sp.diags_array([np.ones(29), np.ones(30), np.ones(29)], offsets=[-1, 0, 1])
    colors, n = color_columns(T)
    assert n == 3
    assert_orthogonal_groups(T, colors, n)


def group_pattern(n_groups, per_group):
    """Row i of group g touches rate 0, amplitude 1+g and offset 1+G+g."""
    g = np.repeat(np.arange(n_groups), per_group)
    m = g.size
    rows = np.repeat(np.arange(m), 3)
    cols = np.stack([np.zeros(m, int), 1 + g, 1 + n_groups + g], axis=1).ravel()
    return sp.csr_array((np.ones(3 * m, bool), (rows, cols)), shape=(m, 2 * n_groups + 1))


def test_color_columns_global_fit_needs_three_colours():
    P = group_pattern(2000, 10)
    colors, n = color_columns(P)
    assert n == 3
    # orthogonality without a dense pairwise loop: within each row the colours differ
    rows, cols, cc = decompression_indices(P, colors)
    assert np.all(np.sort(cc.reshape(-1, 3), axis=1) == [0, 1, 2])


def test_decompression_indices_reconstructs_jacobian():
    A = np.array([[1, 0, 2, 0], [0, 3, 0, 0], [4, 0, 0, 5], [0, 6, 7, 0]], dtype=float)
    colors, n_colors = color_columns(A)
    rows, cols, cc = decompression_indices(A, colors)
    np.testing.assert_array_equal(rows, [0, 0, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(cols, [0, 2, 1, 0, 3, 1, 2])
    np.testing.assert_array_equal(cc, colors[cols])
    S = np.zeros((4, n_colors))
    S[np.arange(4), colors] = 1.0
    B = A @ S
    J = sp.csr_array((B[rows, cc], (rows, cols)), shape=A.shape)
    np.testing.assert_array_equal(J.toarray(), A)


def test_decompression_indices_rejects_mixed_groups():
    with pytest.raises(ValueError, match="columns 0 and 1 .* share row 0"):
        decompression_indices(np.ones((2, 2)), np.array([0, 0]))
    with pytest.raises(ValueError, match="colors"):
        decompression_indices(np.ones((2, 2)), np.array([0, 1, 2]))


# --------------------------------------------------------------------------
# compressed_jacobian
# --------------------------------------------------------------------------

M_SMALL = 400
X_SMALL = RNG.uniform(0.0, 5.0, M_SMALL)
G_SMALL = 20
GROUP_SMALL = RNG.integers(0, G_SMALL, M_SMALL)


def global_fun(p):
    return p[1 + GROUP_SMALL] * jnp.exp(-p[0] * X_SMALL) + p[1 + G_SMALL + GROUP_SMALL]


def chain_fun(p):
    # neighbouring-parameter coupling: a banded (3-colour) Jacobian
    return jnp.concatenate([p[:-1] * p[1:] ** 2, jnp.sin(p[1:-1]) - p[:-2] + p[2:]])


@pytest.mark.parametrize("fun, n", [(global_fun, 2 * G_SMALL + 1), (chain_fun, 15),
                                    (lambda p: jnp.tanh(jnp.sum(p) * p), 6)])
def test_compressed_jacobian_matches_jacfwd(fun, n):
    p = RNG.uniform(0.5, 2.0, n)
    with x64():
        want = np.asarray(jax.jit(jax.jacfwd(lambda q: jnp.ravel(fun(q))))(jnp.asarray(p)))
    J = compressed_jacobian(fun, p)
    assert isinstance(J, sp.csr_array) and J.dtype == np.float64
    np.testing.assert_allclose(J.toarray(), want, rtol=1e-13, atol=1e-13)


def test_compressed_jacobian_options_agree(monkeypatch):
    p = RNG.uniform(0.5, 2.0, 2 * G_SMALL + 1)
    P, _ = detect_sparsity_pattern(lambda x, *q: global_fun(jnp.stack(q)), p, None)
    colors, n_colors = color_columns(P)
    assert n_colors == 3
    ref = compressed_jacobian(global_fun, p, pattern=P, colors=colors)
    for kw in [dict(chunk_rows=7), dict(colors_per_pass=1), dict(chunk_rows=1000,
                                                                 colors_per_pass=2)]:
        J = compressed_jacobian(global_fun, p, pattern=P, colors=colors, **kw)
        np.testing.assert_array_equal(J.toarray(), ref.toarray())
        np.testing.assert_array_equal(J.indptr, ref.indptr)
    monkeypatch.setattr(sparsity_module, "_TANGENT_BUDGET", 1)  # default: one colour a pass
    J = compressed_jacobian(global_fun, p, pattern=P)
    np.testing.assert_array_equal(J.toarray(), ref.toarray())
    with pytest.raises(ValueError, match="jac_sparsity"):
        compressed_jacobian(global_fun, p, pattern=P[:10])
    with pytest.raises(ValueError, match="structurally orthogonal"):
        compressed_jacobian(global_fun, p, pattern=P, colors=np.zeros(p.size, int))


def test_compressed_jacobian_keeps_pattern_zeros():
    # d/da (a * x) vanishes at x == 0, but the pattern (given) keeps the slot
    def fun(p):
        return p[0] * jnp.array([0.0, 1.0, 2.0]) + p[1]

    J = compressed_jacobian(fun, [1.0, 2.0], pattern=np.ones((3, 2)))
    assert J.nnz == 6
    np.testing.assert_array_equal(J.toarray(), [[0, 1], [1, 1], [2, 1]])


# --------------------------------------------------------------------------
# detect_sparsity_pattern: 'trace' against dense jacfwd
# --------------------------------------------------------------------------

X_LINE = np.linspace(0.05, 9.95, 37)  # no point on a knot or breakpoint below


def spectrum(x, *p):
    """10 Gaussian peaks + linear background: structurally dense."""
    c, w, a = jnp.stack(p[0:10]), jnp.stack(p[10:20]), jnp.stack(p[20:30])
    peaks = a[:, None] * jnp.exp(-0.5 * ((x[None, :] - c[:, None]) / w[:, None]) ** 2)
    return jnp.sum(peaks, axis=0) + p[30] + p[31] * x


def test_trace_spectrum_is_dense_and_matches_jacfwd():
    p = np.concatenate([RNG.uniform(0, 10, 10), RNG.uniform(1, 2, 10),
                        RNG.uniform(0.5, 2, 10), [0.1, 0.01]])
    A = traced(spectrum, p, X_LINE)
    np.testing.assert_array_equal(A, dense_jacobian(spectrum, p, X_LINE) != 0)
    assert A.all()


N_GROUPS = 6


def global_model(xg, *p):
    x, g = xg[0], xg[1].astype(jnp.int32)
    k = p[0]
    amplitude = jnp.stack(p[1:N_GROUPS + 1])[g]
    offset = jnp.stack(p[N_GROUPS + 1:])[g]
    return amplitude * jnp.exp(-k * x) + offset


def test_trace_global_model_three_per_row():
    X = np.stack([RNG.uniform(0.1, 3, 50), RNG.integers(0, N_GROUPS, 50).astype(float)])
    p = RNG.uniform(0.5, 2, 2 * N_GROUPS + 1)
    A = traced(global_model, p, X)
    np.testing.assert_array_equal(A, dense_jacobian(global_model, p, X) != 0)
    assert np.all(A.sum(axis=1) == 3)


def piecewise_fixed(x, a, b, c, d):
    return jnp.where(x < 3.0, a * x, jnp.where(x < 6.0, b + c * x, d * jnp.sqrt(x)))


def piecewise_select(x, a, b, c):
    return jnp.select([x < 2.0, x > 7.0], [a * x, b * x], c)


def design_dot(x, a, b, c, d):
    D = np.zeros((x.size, 4))
    D[::3, 0], D[1::3, 1], D[::2, 2], D[5:9, 3] = 1.0, 2.0, -1.0, 0.5
    return jnp.dot(jnp.asarray(D), jnp.stack([a, b, c, d])) * x


def design_matmul(x, a, b, c, d):
    W = jnp.zeros((2, x.size)).at[0, :10].set(1.0).at[1, 20:].set(x[20:])
    M = jnp.stack([a, b, c, d]).reshape(2, 2)
    return (M @ W).ravel()


def sum_of_params(x, a, b, c):
    return x * jnp.sum(jnp.stack([a, b]) ** 2) + c


def with_stop_gradient(x, a, b, c):
    return a * x + lax.stop_gradient(b) * x + jnp.floor(c) + jnp.sign(b) * x


def data_movement(x, a, b, c):
    v = jnp.stack([a, b, c, a * b])
    w = jnp.concatenate([v[::-1], jnp.zeros(3), v[1:3]])  # rev, slice, concatenate
    m = jnp.tile(w, 5)[: x.size].reshape(-1, 1)  # gather/broadcast/reshape
    return (m.T * x).ravel() + jnp.pad(v[:2], (x.size - 2, 0))


def broadcast_transposed(x, a, b, c):
    m = jnp.stack([a, b, c, a * b, b * c, 1.0]).reshape(2, 3)
    t = lax.broadcast_in_dim(m, (3, 2, 2), (1, 0))  # the dimensions transpose m
    return jnp.tile(t.ravel(), 4)[: x.size] * x


def cumulative(x, a, b, c):
    v = jnp.cumsum(jnp.stack([a, b, c, 1.0]))
    return v[jnp.arange(x.size) % 4] * x + jnp.cumprod(jnp.stack([c, a]))[1]


def scatters(x, a, b, c):
    base = x * c
    y = base.at[jnp.array([1, 4])].set(jnp.stack([a, b]))
    y = y.at[jnp.array([4, 4, 7])].add(a)
    return y.at[x.size + 5].set(b)  # out of bounds: dropped


def const_slices(x, a, b, c):
    v = jnp.stack([a, b, c]) * jnp.arange(1.0, 4.0)
    y = lax.dynamic_slice(jnp.tile(v, 20), (2,), (x.size,))
    return lax.dynamic_update_slice(y * x, jnp.stack([b, b]), (5,))


def sorted_by_x(x, a, b, c):
    vals = jnp.stack([a, b, c])[(jnp.arange(x.size) * 7) % 3] * x
    _, moved = lax.sort((jnp.cos(x), vals), num_keys=1)
    return moved


def branching(x, a, b, c):
    y = lax.cond(x[0] > 0, lambda: a * x, lambda: b * x)
    return y + lax.switch(2, [lambda: a * x, lambda: b * x, lambda: c * x])


def interpolated(x, a, b, c, d):
    return jnp.interp(x, jnp.array([0.0, 2.5, 5.0, 7.5, 10.0]), jnp.stack([a, b, c, d, a]))


@jax.custom_vjp
def _soft(t):
    return jnp.log1p(jnp.exp(t))


_soft.defvjp(lambda t: (_soft(t), t), lambda t, g: (g * jax.nn.sigmoid(t),))


def nested_calls(x, a, b, c):
    inner = jax.jit(lambda t, s: t * s)
    ck = jax.checkpoint(lambda t: jnp.exp(-t * x))
    return inner(x, a) + ck(b) + jax.nn.sigmoid(c * x)


def batched_dot(x, a, b, c, d):
    M = jnp.stack([a, b, c, d]).reshape(2, 2, 1)
    V = jnp.asarray(x[: 2 * 3].reshape(2, 1, 3))
    return jnp.einsum("bik,bkj->bij", M, V).ravel()


def tuple_output(x, a, b):
    return a * x, b * x[:3]


@pytest.mark.parametrize("model, n_params", [
    (piecewise_fixed, 4), (piecewise_select, 3), (design_dot, 4), (design_matmul, 4),
    (sum_of_params, 3), (with_stop_gradient, 3), (data_movement, 3), (cumulative, 3),
    (broadcast_transposed, 3),
    (scatters, 3), (const_slices, 3), (sorted_by_x, 3), (branching, 3),
    (interpolated, 4), (nested_calls, 3), (batched_dot, 4),
], ids=lambda v: getattr(v, "__name__", str(v)))
def test_trace_matches_jacfwd(model, n_params):
    p = RNG.uniform(0.5, 2.0, n_params)
    A = traced(model, p, X_LINE)
    want = dense_jacobian(model, p, X_LINE) != 0
    np.testing.assert_array_equal(A, want)


def test_trace_custom_vjp_against_jacrev():
    # forward mode cannot differentiate a custom_vjp function: reverse-mode reference
    def model(x, a, b, c):
        return b * x + _soft(a * x[::2]).sum() + jnp.pad(_soft(c * x[:3]), (0, x.size - 3))

    p = [0.5, 1.5, 2.0]
    with x64():
        f = jax.jit(jax.jacrev(lambda q: model(jnp.asarray(X_LINE), *q)))
        want = np.asarray(f(jnp.asarray(p))) != 0
    np.testing.assert_array_equal(traced(model, p, X_LINE), want)
    assert want[:3, 2].all() and not want[3:, 2].any()


def test_trace_exact_zeros_of_constants():
    # x * p at x == 0 and zero rows of a constant design matrix carry no dependence
    x = np.array([0.0, 1.0, 2.0])
    A = traced(lambda x, a, b: a * x + b * jnp.array([1.0, 0.0, 1.0]), [1.0, 2.0], x)
    np.testing.assert_array_equal(A, [[0, 1], [1, 0], [1, 1]])


def test_trace_multiple_outputs_are_stacked():
    A = traced(tuple_output, [1.0, 2.0], X_LINE)
    assert A.shape == (X_LINE.size + 3, 2)
    assert A[: X_LINE.size, 0].all() and not A[: X_LINE.size, 1].any()
    assert A[X_LINE.size:, 1].all() and not A[X_LINE.size:, 0].any()


def test_trace_is_structural_superset_at_kinks():
    x = X_LINE

    def breakpoint_model(x, a, b, bp):  # both branches: the breakpoint moves
        return jnp.where(x < bp, a * x, b * x)

    def kinks(x, a, b, c):
        return jax.nn.relu(a * x - 5.0) + jnp.maximum(b * x, c)

    def sort_params(x, a, b, c):
        return jnp.sort(jnp.stack([a, b, c]))[jnp.arange(x.size) % 3] * x

    def param_index(x, a, b, c):  # index computed from a parameter
        return jnp.stack([a, b])[(c > 1.0).astype(int)] * x

    cases = [(breakpoint_model, [1.0, 2.0, 5.0], [[1, 1, 0]]),
             (kinks, [1.0, 2.0, 3.0], [[1, 1, 1]]),
             (sort_params, [1.0, 2.0, 3.0], [[1, 1, 1]]),
             (param_index, [1.0, 2.0, 3.0], [[1, 1, 0]])]
    for model, p, row in cases:
        A = traced(model, p, x)
        sampled = dense_jacobian(model, p, x) != 0
        assert np.all(A >= sampled), model.__name__
        np.testing.assert_array_equal(A, np.broadcast_to(row, A.shape).astype(bool))
        assert (A != sampled).any(), model.__name__  # jacfwd sees one side only


def test_trace_global_model_at_scale():
    """200,000 residuals x 4,001 parameters: runs fast and stays exactly sparse."""
    G, M = 2000, 200_000
    rng = np.random.default_rng(0)
    X = np.stack([rng.uniform(0, 5, M), rng.integers(0, G, M).astype(float)])

    def model(xg, *p):
        x, g = xg[0], xg[1].astype(jnp.int32)
        amplitude = jnp.stack(p[1:G + 1])[g]
        offset = jnp.stack(p[G + 1:])[g]
        return amplitude * jnp.exp(-p[0] * x) + offset

    P, s = detect_sparsity_pattern(model, np.ones(2 * G + 1), X, method="trace")
    assert P.shape == (M, 2 * G + 1) and P.nnz == 3 * M
    g = X[1].astype(int)
    np.testing.assert_array_equal(P.indices.reshape(M, 3), np.stack([0 * g, 1 + g, 1 + G + g], 1))
    assert s == pytest.approx(1 - 3 / (2 * G + 1))
    colors, n_colors = color_columns(P)
    assert n_colors == 3


# --------------------------------------------------------------------------
# Loops: unrolled when short and parameter-independent in length
# --------------------------------------------------------------------------


def with_fori(x, a, b, c):
    return lax.fori_loop(0, 3, lambda i, t: t * b, x * a) + c


def with_scan(x, a, b, c):
    steps = lax.scan(lambda carry, xi: (carry + a * xi, carry * xi), 0.0, x)[1]
    return steps + b * x[::-1]


def with_while(x, a, b, c):
    def body(state):
        i, t = state
        return i + 1, t * jnp.roll(t, 1) * b

    return lax.while_loop(lambda s: s[0] < 2, body, (0, x * a))[1] + c


def polynomial(x, a, b, c, d):
    return jnp.where(x < 5.0, jnp.polyval(jnp.stack([a, b, c]), x), d * x)


@pytest.mark.parametrize("model", [with_fori, with_scan, with_while, polynomial],
                         ids=lambda f: f.__name__)
def test_trace_unrolls_short_loops(model):
    p = RNG.uniform(0.5, 2.0, 4 if model is polynomial else 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P, _ = detect_sparsity_pattern(model, p, X_LINE)
    np.testing.assert_array_equal(P.toarray(), dense_jacobian(model, p, X_LINE) != 0)


# --------------------------------------------------------------------------
# Fallback to sampling
# --------------------------------------------------------------------------


def long_scan(x, a, b, c):  # more steps than the tracer unrolls
    t = jnp.linspace(0.0, 1.0, 300)
    final = lax.scan(lambda y, ti: (y * (1 - 0.01 * a) + 0.01 * ti, None), b, t)[0]
    return jnp.where(x < 5.0, final * x, c * x)


def param_while(x, a, b, c):  # the number of iterations depends on a parameter
    def body(state):
        i, t = state
        return i + 1, t * 1.5

    t = lax.while_loop(lambda s: s[1] < 10.0, body, (0, a))[1]
    return jnp.where(x < 5.0, t * x, b * x) + c * x[0]


def linear_solve(x, a, b, c):
    M = jnp.stack([jnp.stack([a, 1.0]), jnp.stack([0.5, b])])
    u = jnp.linalg.solve(M, jnp.array([1.0, 2.0]))
    return jnp.where(x < 5.0, u[0] * x, c * x)


@pytest.mark.parametrize("model, reason", [(long_scan, "scan"), (param_while, "while"),
                                           (linear_solve, "lu")],
                         ids=lambda v: getattr(v, "__name__", v))
def test_auto_falls_back_to_sampling_with_warning(model, reason):
    p = [1.1, 0.9, 1.3]
    with pytest.warns(SampledSparsityWarning, match=rf"sampled .* not traced: .*{reason}"):
        P, s = detect_sparsity_pattern(model, p, X_LINE, random_state=0)
    assert issubclass(SampledSparsityWarning, UserWarning)
    A = P.toarray()
    np.testing.assert_array_equal(A, dense_jacobian(model, p, X_LINE) != 0)
    assert s == pytest.approx(1.0 - A.mean()) and 0 < s < 1
    with pytest.raises(NotImplementedError, match=reason):
        detect_sparsity_pattern(model, p, X_LINE, method="trace")


def test_explicit_sample_is_silent_and_reproducible():
    p = [1.1, 0.9, 1.3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P1, s1 = detect_sparsity_pattern(with_scan, p, X_LINE, method="sample",
                                         n_samples=2, random_state=3)
        P2, s2 = detect_sparsity_pattern(with_scan, p, X_LINE, method="sample",
                                         n_samples=2, random_state=3)
    np.testing.assert_array_equal(P1.toarray(), P2.toarray())
    assert s1 == s2
    # sampling in several column batches gives the same union
    old = sparsity_module._SAMPLE_BUDGET
    sparsity_module._SAMPLE_BUDGET = X_LINE.size  # one column per batch
    try:
        P3, _ = detect_sparsity_pattern(with_scan, p, X_LINE, method="sample")
    finally:
        sparsity_module._SAMPLE_BUDGET = old
    np.testing.assert_array_equal(P3.toarray(), P1.toarray())


def test_detect_argument_errors():
    def model(x, a):
        return a * x

    with pytest.raises(ValueError, match="method"):
        detect_sparsity_pattern(model, [1.0], X_LINE, method="exact")
    with pytest.raises(ValueError, match="n_samples"):
        detect_sparsity_pattern(model, [1.0], X_LINE, n_samples=0)
    with pytest.raises(ValueError, match="params"):
        detect_sparsity_pattern(model, [np.nan], X_LINE)
    with pytest.raises(ValueError, match="params"):
        detect_sparsity_pattern(model, [], X_LINE)

    def host_model(x, a):
        return np.exp(float(a) * np.asarray(x))

    with pytest.raises(TypeError, match="trace"):
        detect_sparsity_pattern(host_model, [1.0], X_LINE)


def test_detection_leaves_global_x64_alone():
    before = jax.config.jax_enable_x64
    detect_sparsity_pattern(sum_of_params, [1.0, 2.0, 3.0], X_LINE)
    assert jax.config.jax_enable_x64 == before


# --------------------------------------------------------------------------
# estimate_memory_usage
# --------------------------------------------------------------------------


def test_estimate_memory_usage_hand_numbers():
    u = estimate_memory_usage(2_000_000, 40_001, 1 - 3 / 40_001)
    assert u["nnz"] == 6_000_000
    assert u["dense_bytes"] == 2_000_000 * 40_001 * 8
    assert u["sparse_bytes"] == 6_000_000 * 12 + 2_000_001 * 4
    assert u["reduction_factor"] == pytest.approx(640_016_000_000 / 80_000_004)

    u = estimate_memory_usage(10, 4, 0.5, dtype=np.float32)
    assert (u["nnz"], u["dense_bytes"], u["sparse_bytes"]) == (20, 160, 20 * 8 + 11 * 4)

    # beyond int32: 8-byte indices
    u = estimate_memory_usage(2**31, 2, 0.0)
    assert u["nnz"] == 2**32
    assert u["sparse_bytes"] == 2**32 * 16 + (2**31 + 1) * 8

    u = estimate_memory_usage(5, 5, 1.0)
    assert u["nnz"] == 0 and u["sparse_bytes"] == 6 * 4


@pytest.mark.parametrize("args, exc, match", [
    ((0, 3, 0.5), ValueError, "n_data"),
    ((2.5, 3, 0.5), TypeError, "n_data"),
    ((10, 0, 0.5), ValueError, "n_params"),
    ((10, True, 0.5), TypeError, "n_params"),
    ((10, 3, 1.5), ValueError, "sparsity"),
    ((10, 3, float("nan")), ValueError, "sparsity"),
    ((10, 3, "0.5"), TypeError, "sparsity"),
    ((10, 3, 0.5, "not-a-dtype"), TypeError, "dtype"),
    ((10, 3, 0.5, object), TypeError, "dtype"),
])
def test_estimate_memory_usage_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        estimate_memory_usage(*args)


# --------------------------------------------------------------------------
# Plotting and docstrings
# --------------------------------------------------------------------------


def test_plot_sparsity_pattern_small_and_huge():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_sparsity_pattern(group_pattern(10, 5))
    assert ax.get_xlim() == (-0.5, 20.5) and len(ax.lines) == 1
    fig, own = plt.subplots()
    big = group_pattern(2000, 100)  # 200,000 x 4,001: downsampled to an image
    assert plot_sparsity_pattern(big, ax=own) is own
    assert len(own.images) == 1 and max(own.images[0].get_array().shape) <= 1000
    assert own.get_ylim() == (200_000 - 0.5, -0.5)
    plt.close("all")


def test_plot_sparsity_pattern_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install sknlsq\[plot\]"):
        plot_sparsity_pattern(np.eye(3))

