"""Sparse-Jacobian structure: detection, column colouring, compressed evaluation.

This module owns everything a sparse least-squares fit needs to know about
*where* the Jacobian ``J`` (``n_residuals x n_params``) can be nonzero, and
how to evaluate it without ever forming it densely.

Structure detection
    :func:`detect_sparsity_pattern` finds the pattern of ``J`` for a model
    ``model(x, *params)``. The exact method interprets the model's jaxpr: each
    intermediate array element carries the set of parameters it depends on
    (a row of a sparse boolean matrix), propagated primitive by primitive.
    Elementwise arithmetic takes unions, data movement (reshape, gather, pad,
    concatenate, ...) moves the sets exactly like the values, reductions take
    unions over the reduced axes, and operations whose derivative vanishes
    almost everywhere (comparisons, ``floor``, ``stop_gradient``, integer
    results) carry no dependence. Values that do not depend on the parameters
    (the data ``x`` and everything computed from it alone: group ids, masks,
    constant design matrices) are evaluated concretely: indexing with them is
    exact, and their exact zeros cancel dependences in products (``x * p`` at
    ``x == 0``, zero entries of a constant matrix in ``D @ p``).
    Where control flow or indices depend on the parameters, the union over
    every branch or position is taken (a structural superset, valid at every
    parameter value). ``scan`` and ``while`` loops are unrolled, up to 256
    iterations and provided their length does not depend on the parameters.
    Models the interpreter cannot follow (longer loops, callbacks, linear
    solves, convolutions, ...) fall back to sampling dense Jacobians at random
    points, which is approximate and says so with a
    :class:`SampledSparsityWarning`.

Column colouring (Curtis, Powell and Reid)
    Columns ``j`` and ``k`` of ``J`` are *structurally orthogonal* when no row
    has a nonzero in both. A group of mutually orthogonal columns can share one
    forward-mode derivative: with the seed matrix ``S`` (``n_params x
    n_colors``, ``S[j, color[j]] = 1``) the compressed Jacobian ``B = J S``
    holds each ``J[i, j]`` unmixed at ``B[i, color[j]]``. Finding few groups is
    colouring the column intersection graph ``G = P^T P`` of the pattern ``P``
    (columns adjacent when they share a row); :func:`color_columns` colours it
    greedily in largest-degree-first order (Welsh and Powell).

Compressed evaluation
    :func:`compressed_jacobian` computes ``B`` with one JVP per colour
    (``jax.vmap`` over the seed columns) and reads ``J[i, j] = B[i, color[j]]``
    into a CSR matrix laid out like the pattern (the indices of
    :func:`decompression_indices`).

References
----------
.. [1] A. R. Curtis, M. J. D. Powell and J. K. Reid, "On the estimation of
   sparse Jacobian matrices", IMA J. Appl. Math. 13 (1974) 117-119.
.. [2] T. F. Coleman and J. J. More, "Estimation of sparse Jacobian matrices
   and graph coloring problems", SIAM J. Numer. Anal. 20 (1983) 187-209.
.. [3] A. H. Gebremedhin, F. Manne and A. Pothen, "What color is your
   Jacobian? Graph coloring for computing derivatives", SIAM Rev. 47 (2005).
"""

from __future__ import annotations

import math
import numbers
import warnings
from contextlib import nullcontext

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax

from ._config import x64

try:  # jax >= 0.4.32
    from jax.extend.core import DropVar, Literal
except ImportError:  # pragma: no cover - older jax
    from jax.core import DropVar, Literal

__all__ = [
    "SUPPORTED_PRIMITIVES",
    "SampledSparsityWarning",
    "color_columns",
    "compressed_jacobian",
    "decompression_indices",
    "detect_sparsity_pattern",
    "estimate_memory_usage",
    "plot_sparsity_pattern",
    "validate_pattern",
]


class SampledSparsityWarning(UserWarning):
    """The sparsity pattern was sampled at random points, not traced exactly."""


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_count(value, name, minimum=0):
    """``value`` as a Python int >= ``minimum`` (bools rejected)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer; got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return int(value)


def _as_pattern(pattern, name):
    """Any accepted sparsity form as a canonical boolean CSC array."""
    if sp.issparse(pattern):
        if pattern.ndim != 2:
            raise ValueError(f"`{name}` must be 2-D; got a {pattern.ndim}-D sparse array.")
        A = sp.csc_array(pattern)
        if A.dtype.kind not in "biufc":
            raise TypeError(f"`{name}` must hold numbers or booleans; got dtype {A.dtype}.")
        if A.dtype.kind in "fc" and not np.all(np.isfinite(A.data)):
            raise ValueError(f"`{name}` must not contain NaN or infinite values.")
    else:
        try:
            arr = np.asarray(pattern)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"`{name}` must be an array-like or a scipy.sparse "
                            f"matrix; got {type(pattern).__name__}.") from exc
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"`{name}` must hold numbers or booleans; got dtype {arr.dtype}.")
        if arr.ndim != 2:
            raise ValueError(f"`{name}` must be 2-D; got a {arr.ndim}-D array of shape "
                             f"{arr.shape}.")
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` must not contain NaN or infinite values.")
        A = sp.csc_array(arr != 0)
    A = A.astype(bool)  # a copy: the caller's matrix is never modified
    A.sum_duplicates()
    A.eliminate_zeros()
    A.sort_indices()
    return A


def validate_pattern(pattern, n_residuals, n_params):
    """Check a user-supplied Jacobian sparsity pattern (scipy's ``jac_sparsity``).

    Parameters
    ----------
    pattern : array-like or scipy.sparse matrix/array of shape (n_residuals, n_params)
        Any nonzero (or ``True``) entry marks a Jacobian element that may be
        nonzero; zeros, including explicitly stored ones, mark elements that
        are identically zero.
    n_residuals, n_params : int
        Expected shape.

    Returns
    -------
    pattern : scipy.sparse.csc_array of bool
        Canonical form (sorted indices, no duplicates, no stored zeros). The
        input is never modified.

    Notes
    -----
    Columns without any nonzero are accepted silently, as scipy does: such a
    parameter does not influence the residuals, which the solver (not the
    pattern) has to cope with.
    """
    n_residuals = _check_count(n_residuals, "n_residuals")
    n_params = _check_count(n_params, "n_params")
    P = _as_pattern(pattern, "jac_sparsity")
    if P.shape != (n_residuals, n_params):
        raise ValueError(f"`jac_sparsity` must have shape (n_residuals, n_params) = "
                         f"({n_residuals}, {n_params}); got {P.shape}.")
    return P


# --------------------------------------------------------------------------
# Column colouring and compressed Jacobians
# --------------------------------------------------------------------------


def color_columns(pattern):
    """Group structurally orthogonal Jacobian columns (Curtis-Powell-Reid).

    Two columns share a colour only if no row has a nonzero in both, so one
    forward-mode derivative per colour recovers every Jacobian entry.

    Parameters
    ----------
    pattern : array-like or scipy.sparse matrix/array of shape (n_residuals, n_params)
        Jacobian sparsity pattern (nonzero = may be nonzero).

    Returns
    -------
    colors : ndarray of int, shape (n_params,)
        Colour (group) of each column, in ``range(n_colors)``.
    n_colors : int
        Number of colours: the number of JVPs needed per Jacobian.

    Notes
    -----
    Greedy sequential colouring of the column intersection graph ``P^T P``
    with columns taken in largest-degree-first order (ties by index); each
    column gets the smallest colour none of its already coloured neighbours
    has. Cost: the sparse product (``sum_i nnz(row_i)**2``) plus one short
    NumPy step per column. A dense pattern needs ``n_params`` colours; empty
    columns get colour 0.

    Examples
    --------
    >>> import numpy as np
    >>> from sknlsq._sparsity import color_columns
    >>> P = np.array([[1, 0, 0, 1],
    ...               [0, 1, 0, 1],
    ...               [0, 0, 1, 1]])
    >>> colors, n_colors = color_columns(P)
    >>> colors, n_colors
    (array([1, 1, 1, 0]), 2)
    """
    P = _as_pattern(pattern, "pattern")
    n = P.shape[1]
    if n == 0:
        return np.zeros(0, dtype=np.intp), 0
    G = (P.T @ P.tocsr()).tocsr()  # bool product: OR of AND, i.e. "share a row"
    G.sort_indices()
    indptr, indices = G.indptr, G.indices
    degree = np.diff(indptr) - (G.diagonal() != 0)
    order = np.argsort(-degree, kind="stable")
    colors = np.full(n, -1, dtype=np.intp)
    for v in order.tolist():
        c = colors[indices[indptr[v]:indptr[v + 1]]]
        c = c[c >= 0]
        if c.size == 0:
            colors[v] = 0
        else:
            used = np.zeros(int(c.max()) + 2, dtype=bool)
            used[c] = True
            colors[v] = int(used.argmin())
    return colors, int(colors.max()) + 1


def _check_colors(colors, n_params):
    colors = np.asarray(colors)
    if colors.ndim != 1 or colors.shape[0] != n_params:
        raise ValueError(f"`colors` must have shape (n_params,) = ({n_params},); "
                         f"got {colors.shape}.")
    if colors.dtype.kind not in "iu" and not (
            colors.dtype.kind == "f" and np.all(colors == np.round(colors))):
        raise TypeError(f"`colors` must hold integers; got dtype {colors.dtype}.")
    colors = colors.astype(np.intp)
    if colors.size and colors.min() < 0:
        raise ValueError("`colors` must be non-negative.")
    return colors


def _check_orthogonal(rows, cols, compressed_col):
    """ValueError when two columns of one colour share a row."""
    if rows.size < 2:
        return
    n_colors = int(compressed_col.max()) + 1
    key = np.sort(rows.astype(np.int64) * n_colors + compressed_col)
    clash = np.flatnonzero(key[1:] == key[:-1])
    if clash.size:
        i = int(key[clash[0]] // n_colors)
        c = int(key[clash[0]] % n_colors)
        both = cols[(rows == i) & (compressed_col == c)]
        raise ValueError(f"`colors` do not group structurally orthogonal columns: "
                         f"columns {both[0]} and {both[1]} both have colour {c} and "
                         f"share row {i}.")


def decompression_indices(pattern, colors):
    """Where each Jacobian nonzero sits in the compressed Jacobian ``B = J S``.

    Parameters
    ----------
    pattern : array-like or scipy.sparse matrix/array of shape (n_residuals, n_params)
        Jacobian sparsity pattern.
    colors : array-like of int, shape (n_params,)
        Column colours, e.g. from :func:`color_columns`.

    Returns
    -------
    rows, cols, compressed_col : ndarray of int, shape (nnz,)
        The pattern's nonzeros in CSR (row-major, columns sorted) order and the
        colour of each one's column, so ``data = B[rows, compressed_col]`` and
        ``scipy.sparse.csr_array((data, (rows, cols)), shape)`` is ``J``.

    Raises
    ------
    ValueError
        If two columns of one colour share a row (``B`` would mix them).
    """
    P = _as_pattern(pattern, "pattern").tocsr()
    P.sort_indices()
    colors = _check_colors(colors, P.shape[1])
    rows = np.repeat(np.arange(P.shape[0], dtype=np.intp), np.diff(P.indptr))
    cols = P.indices.astype(np.intp)
    compressed_col = colors[cols]
    _check_orthogonal(rows, cols, compressed_col)
    return rows, cols, compressed_col


_TANGENT_BUDGET = 2**25  # default bound on tangent values per intermediate (float64)


def compressed_jacobian(fun, params, pattern=None, colors=None, chunk_rows=None, *,
                        colors_per_pass=None):
    """Sparse Jacobian of ``fun`` with one forward-mode JVP per column colour.

    Parameters
    ----------
    fun : callable
        JAX-traceable ``fun(params_vector) -> residuals`` (any shape; raveled).
    params : array-like of shape (n_params,)
        Point at which to differentiate.
    pattern : array-like or scipy.sparse matrix/array, optional
        Sparsity pattern of the Jacobian, shape (n_residuals, n_params).
        Detected with :func:`detect_sparsity_pattern` (``method='auto'``) when
        omitted.
    colors : array-like of int, shape (n_params,), optional
        Column colours; computed with :func:`color_columns` when omitted.
    chunk_rows : int, optional
        Decompress ``B`` into the CSR result in blocks of this many residual
        rows, so the host-side index temporaries stay ``O(chunk)`` instead of
        ``O(nnz)``. The JVPs themselves always produce every residual row:
        ``fun`` is opaque, so its residuals cannot be evaluated row by row.
    colors_per_pass : int, optional
        Number of seed columns pushed through one ``vmap``-ed JVP. Device
        memory grows as about ``colors_per_pass`` tangent copies of each
        intermediate of ``fun``. Default: all colours in one pass, unless that
        exceeds 2**25 tangent values (256 MiB) per intermediate.

    Returns
    -------
    J : scipy.sparse.csr_array of float64, shape (n_residuals, n_params)
        The Jacobian, with the pattern as its exact structure: entries of the
        pattern that happen to be zero at ``params`` are stored zeros.

    Notes
    -----
    ``B = J S`` (``n_residuals x n_colors``) is the only Jacobian-sized array
    formed; the dense ``n_residuals x n_params`` Jacobian never is. The JVPs
    run as one compiled program per call.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp
    >>> from sknlsq._sparsity import compressed_jacobian
    >>> def fun(p):  # residual i couples p[i] and p[i + 1]
    ...     return p[:-1] * p[1:]
    >>> J = compressed_jacobian(fun, np.array([1.0, 2.0, 3.0, 4.0]))
    >>> J.toarray()
    array([[2., 1., 0., 0.],
           [0., 3., 2., 0.],
           [0., 0., 4., 3.]])
    """
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 1 or params.size == 0:
        raise ValueError(f"`params` must be a non-empty 1-D array; got shape {params.shape}.")
    n = params.size

    def flat(q):
        return jnp.ravel(fun(q))

    with x64():
        p = jnp.asarray(params)
        m = math.prod(jax.eval_shape(flat, p).shape)
        if pattern is None:
            def model(x, *q):
                return flat(jnp.stack(q))

            P, _ = detect_sparsity_pattern(model, params, None)
            P = sp.csc_array(P)
        else:
            P = validate_pattern(pattern, m, n)
        Pr = P.tocsr()
        Pr.sort_indices()
        indptr, cols = Pr.indptr, Pr.indices
        if colors is None:
            colors, n_colors = color_columns(P)
        else:
            colors = _check_colors(colors, n)
            n_colors = int(colors.max()) + 1
            _check_orthogonal(np.repeat(np.arange(m), np.diff(indptr)), cols, colors[cols])
        if colors_per_pass is None:  # all at once, unless the tangents get big
            per_pass = max(1, min(n_colors, _TANGENT_BUDGET // max(m, n, 1)))
        else:
            per_pass = _check_count(colors_per_pass, "colors_per_pass", 1)
        if chunk_rows is not None:
            chunk_rows = _check_count(chunk_rows, "chunk_rows", 1)
        # one compiled program for all passes (op-by-op dispatch would compile
        # every primitive of `fun` separately)
        push = jax.jit(jax.vmap(lambda q, s: jax.jvp(flat, (q,), (s,))[1], in_axes=(None, 0)))
        blocks = []
        for start in range(0, n_colors, per_pass):
            k = min(per_pass, n_colors - start)
            seeds = np.zeros((per_pass, n))  # same shape every pass: one compilation
            sel = (colors >= start) & (colors < start + k)
            seeds[colors[sel] - start, np.flatnonzero(sel)] = 1.0
            blocks.append(np.asarray(push(p, jnp.asarray(seeds)), dtype=np.float64)[:k])
        B = np.concatenate(blocks, axis=0).T if blocks else np.zeros((m, 0))

    step = m if chunk_rows is None else chunk_rows
    data = np.empty(cols.size, dtype=np.float64)
    for r0 in range(0, m, max(step, 1)):
        r1 = min(m, r0 + step)
        a, b = indptr[r0], indptr[r1]
        rows = np.repeat(np.arange(r0, r1), np.diff(indptr[r0:r1 + 1]))
        data[a:b] = B[rows, colors[cols[a:b]]]
    return sp.csr_array((data, cols.copy(), indptr.copy()), shape=(m, n))


# --------------------------------------------------------------------------
# Dependency sets: one CSR row of parameter indices per array element
# --------------------------------------------------------------------------
#
# A dependency set "D" is a pair (indptr, indices) describing a boolean
# (n_elements x n_params) matrix in CSR form, rows in C order of the array, or
# None when no element depends on any parameter. Rows are kept sorted and
# duplicate-free.


_MAX_ENTRIES = 2**28  # dependency entries of one intermediate array (~1 GiB of int32)


def _check_size(total):
    if total > _MAX_ENTRIES:
        raise _Untraceable(f"an intermediate array depends on {total:,} (element, "
                           f"parameter) pairs, more than the tracer's limit of "
                           f"{_MAX_ENTRIES:,}: the model is too dense to trace")


def _rows(D):
    indptr = D[0]
    return np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))


def _build(rows, cols, n_rows, n_params):
    """CSR rows from (row, col) pairs, deduplicated (None when empty)."""
    if rows.size == 0:
        return None
    keys = rows.astype(np.int64) * n_params + cols
    if keys.size > 1 and not np.all(keys[1:] > keys[:-1]):
        # stable sort = timsort: linear on the concatenated sorted runs of unions
        keys = np.sort(keys, kind="stable")
        keep = np.empty(keys.size, dtype=bool)
        keep[0] = True
        np.not_equal(keys[1:], keys[:-1], out=keep[1:])
        keys = keys[keep]
    r = keys // n_params
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
    return indptr, (keys - r * n_params).astype(np.int32)


def _take(D, ids):
    """Rows ``ids`` of D (a flat int array; negative ids give empty rows)."""
    if D is None:
        return None
    indptr, indices = D
    ids = np.asarray(ids, dtype=np.int64).ravel()
    lens_all = np.diff(indptr)
    valid = ids >= 0
    if valid.all():
        safe = ids
        lens = lens_all[ids]
    else:
        safe = np.where(valid, ids, 0)
        lens = np.where(valid, lens_all[safe], 0)
    out = np.zeros(ids.size + 1, dtype=np.int64)
    np.cumsum(lens, out=out[1:])
    total = int(out[-1])
    if total == 0:
        return None
    _check_size(total)
    pos = np.arange(total, dtype=np.int64) + np.repeat(indptr[safe] - out[:-1], lens)
    return out, indices[pos]


def _regroup(D, dst, n_out, n_params):
    """Row ``dst[r]`` of the result gets the union of rows r of D mapped to it."""
    if D is None:
        return None
    indptr, indices = D
    rows = np.repeat(np.asarray(dst, dtype=np.int64).ravel(), np.diff(indptr))
    keep = rows >= 0
    if not keep.all():
        rows, indices = rows[keep], indices[keep]
    return _build(rows, indices, n_out, n_params)


def _union(Ds, n, n_params):
    """Row-wise union of dependency sets of the same number of rows."""
    uniq = []
    for D in Ds:
        if D is not None and not any(D is U for U in uniq):
            uniq.append(D)
    if not uniq:
        return None
    if len(uniq) == 1:
        return uniq[0]
    rows = np.concatenate([_rows(D) for D in uniq])
    cols = np.concatenate([D[1] for D in uniq])
    return _build(rows, cols, n, n_params)


def _stack(Ds, sizes):
    """The rows of several dependency sets one after the other."""
    if all(D is None for D in Ds):
        return None
    lens = [np.zeros(s, dtype=np.int64) if D is None else np.diff(D[0])
            for D, s in zip(Ds, sizes)]
    lens = np.concatenate(lens)
    indptr = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    indices = np.concatenate([D[1] for D in Ds if D is not None])
    return indptr, indices


def _broadcast_ids(shape, out_shape):
    """Source element of each element of ``out_shape`` under NumPy broadcasting."""
    ids = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    return np.broadcast_to(ids, out_shape).ravel()


def _broadcast(D, shape, out_shape):
    if D is None or tuple(shape) == tuple(out_shape):
        return D
    return _take(D, _broadcast_ids(shape, out_shape))


# --------------------------------------------------------------------------
# The jaxpr interpreter
# --------------------------------------------------------------------------


class _Untraceable(Exception):
    """The interpreter cannot propagate the structure through this model."""


class _Info:
    """What the interpreter knows of one jaxpr variable.

    ``tainted``: the value may change with the parameters (then ``value`` is
    None: only parameter-free values are evaluated). ``deps``: which
    parameters each element's derivative may involve (None: none).
    """

    __slots__ = ("value", "deps", "tainted")

    def __init__(self, value, deps, tainted):
        self.value, self.deps, self.tainted = value, deps, tainted


_NOTHING = _Info(None, None, True)

# Elementwise primitives: the result depends on every operand at the same
# (broadcast) position. `mul` additionally drops exact constant zeros.
_ELEMENTWISE = frozenset("""
    abs acos acosh add add_any asin asinh atan atan2 atanh bessel_i0e bessel_i1e
    cbrt clamp complex conj cos cosh digamma div erf erf_inv erfc exp exp2 expm1
    igamma igamma_grad_a igammac imag integer_pow lgamma log log1p logistic max
    min mul neg polygamma pow random_gamma_grad real reduce_precision
    regularized_incomplete_beta rem rsqrt sin sinh sqrt square sub tan tanh zeta
    copy copy_p convert_element_type
""".split())

# Float-valued results whose derivative is zero almost everywhere.
_ZERO_DERIVATIVE = frozenset("""
    ceil floor round sign stop_gradient is_finite nextafter
""".split())

# Data movement done with NumPy on element ids.
_SAME_ORDER = frozenset(["reshape", "squeeze"])
_NUMPY_MOVES = frozenset(["broadcast_in_dim", "transpose", "rev", "slice", "concatenate",
                          "stack", "tile"])
# Several operands passed through unchanged.
_IDENTITY = frozenset(["device_put", "optimization_barrier"])
# Data movement done by applying the primitive itself to element ids; the
# value is the set of operand positions that carry data (the others are
# indices that must not depend on the parameters).
_BIND_MOVES = {
    "pad": (0, 1),
    "gather": (0,),
    "dynamic_slice": (0,),
    "dynamic_update_slice": (0, 1),
    "split": (0,),
    "unstack": (0,),
}
_REDUCTIONS = frozenset(["reduce_sum", "reduce_max", "reduce_min", "reduce_prod"])
_CUMULATIVE = frozenset(["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"])
_SCATTERS = frozenset(["scatter", "scatter-add", "scatter_add", "scatter-sub", "scatter_sub",
                       "scatter-mul", "scatter_mul", "scatter-min", "scatter_min",
                       "scatter-max", "scatter_max"])
_LOOPS = frozenset(["scan", "while"])
_MAX_UNROLL = 256  # loop iterations the tracer follows one by one
_CALLS = frozenset(["jit", "pjit", "closed_call", "core_call", "remat", "remat2",
                    "checkpoint", "custom_jvp_call", "custom_vjp_call",
                    "custom_vjp_call_jaxpr"])

SUPPORTED_PRIMITIVES = tuple(sorted(
    _ELEMENTWISE | _ZERO_DERIVATIVE | _SAME_ORDER | _NUMPY_MOVES | _IDENTITY | set(_BIND_MOVES)
    | _REDUCTIONS | _CUMULATIVE | _SCATTERS | _CALLS
    | _LOOPS | {"select_n", "dot_general", "sort", "top_k", "cond"}))


def _shape(atom):
    return tuple(atom.aval.shape)


def _inexact(aval):
    try:
        return bool(jnp.issubdtype(aval.dtype, jnp.inexact))
    except (TypeError, AttributeError):  # extended dtypes (PRNG keys) and tokens
        return False


def _subjaxpr(params):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = params.get(key)
        if sub is not None:
            if hasattr(sub, "consts"):  # ClosedJaxpr
                return sub.jaxpr, list(sub.consts)
            return sub, []
    return None


class _Interpreter:
    """Propagates dependency sets through a jaxpr (see the module docstring)."""

    def __init__(self, n_params):
        self.n_params = n_params

    # ---- driver --------------------------------------------------------

    def run(self, jaxpr, consts, args):
        env = {}

        def read(v):
            if isinstance(v, Literal):
                return _Info(v.val, None, False)
            return env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = _Info(c, None, False)
        for v, a in zip(jaxpr.invars, args):
            env[v] = a
        last = {}
        for i, eqn in enumerate(jaxpr.eqns):
            for v in eqn.invars:
                if not isinstance(v, Literal):
                    last[v] = i
        keep = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
        for i, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            if any(a.tainted for a in ins):
                outs = self.propagate(eqn, ins)
            else:
                outs = self.evaluate(eqn, ins)
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, DropVar):
                    env[v] = o
            for v in eqn.invars:  # free big arrays as soon as possible
                if not isinstance(v, Literal) and last.get(v) == i and v not in keep:
                    env.pop(v, None)
        return [read(v) for v in jaxpr.outvars]

    @staticmethod
    def evaluate(eqn, ins):
        """Concrete evaluation of a parameter-free equation."""
        params = eqn.primitive.get_bind_params(eqn.params)
        if isinstance(params, tuple):  # older jax: (subfuns, params)
            subfuns, params = params
        else:
            subfuns = ()
        ctx = getattr(getattr(eqn, "ctx", None), "manager", None) or nullcontext()
        with ctx:
            out = eqn.primitive.bind(*subfuns, *[a.value for a in ins], **params)
        outs = out if eqn.primitive.multiple_results else [out]
        return [_Info(o, None, False) for o in outs]

    def propagate(self, eqn, ins):
        name = eqn.primitive.name
        inexact = [_inexact(v.aval) for v in eqn.outvars]
        if not any(inexact):  # integer / boolean results: derivative zero
            return [_NOTHING] * len(eqn.outvars)
        if name in _ZERO_DERIVATIVE:
            return [_NOTHING] * len(eqn.outvars)
        try:
            outs = self.dispatch(name, eqn, ins)
        except (_Untraceable, MemoryError):
            raise
        except Exception as exc:  # a rule hit a case it does not handle
            raise _Untraceable(f"primitive '{name}' could not be propagated "
                               f"({type(exc).__name__}: {exc})") from exc
        return [o if ok or not o.tainted else _NOTHING for o, ok in zip(outs, inexact)]

    def dispatch(self, name, eqn, ins):
        if name in _ELEMENTWISE:
            return [self.elementwise(name, eqn, ins)]
        if name in _SAME_ORDER:
            if name == "reshape" and eqn.params.get("dimensions") is not None:
                raise _Untraceable("reshape with `dimensions`")
            return [_Info(None, ins[0].deps, True)]
        if name in _NUMPY_MOVES:
            return [self.numpy_move(name, eqn, ins)]
        if name in _IDENTITY:
            return list(ins)
        if name in _BIND_MOVES:
            return self.bind_move(eqn, ins, _BIND_MOVES[name])
        if name == "select_n":
            return [self.select_n(eqn, ins)]
        if name in _REDUCTIONS:
            D = ins[0].deps
            shape = _shape(eqn.invars[0])
            axes = tuple(eqn.params["axes"])
            return [_Info(None, self.reduce(D, shape, axes)[0], True)]
        if name in _CUMULATIVE:
            return [self.cumulative(eqn, ins)]
        if name == "dot_general":
            return [self.dot_general(eqn, ins)]
        if name == "sort":
            return self.sort(eqn, ins)
        if name == "top_k":
            return self.top_k(eqn, ins)
        if name == "scan":
            return self.scan(eqn, ins)
        if name == "while":
            return self.while_loop(eqn, ins)
        if name in _SCATTERS:
            return [self.scatter(name, eqn, ins)]
        if name == "cond":
            return self.cond(eqn, ins)
        if name in _CALLS:
            sub = _subjaxpr(eqn.params)
            if sub is None:
                raise _Untraceable(f"no sub-jaxpr found in '{name}'")
            return self.run(sub[0], sub[1], ins)
        raise _Untraceable(f"primitive '{name}' is not supported by the structural "
                           f"tracer")

    # ---- rules ---------------------------------------------------------

    def elementwise(self, name, eqn, ins):
        out_shape = _shape(eqn.outvars[0])
        n = math.prod(out_shape)
        Ds = []
        for k, (a, v) in enumerate(zip(ins, eqn.invars)):
            if a.deps is None:
                continue
            D = _broadcast(a.deps, _shape(v), out_shape)
            if name == "mul" and not ins[1 - k].tainted:
                # c * f with a constant c: the derivative is identically zero where c == 0
                zero = np.broadcast_to(np.asarray(ins[1 - k].value) == 0, out_shape).ravel()
                if zero.any():
                    D = _take(D, np.where(zero, -1, np.arange(n)))
            Ds.append(D)
        return _Info(None, _union(Ds, n, self.n_params), True)

    def numpy_move(self, name, eqn, ins):
        p = eqn.params
        if name in ("concatenate", "stack"):
            sizes, pieces, off = [], [], 0
            for v in eqn.invars:
                shape = _shape(v)
                size = math.prod(shape)
                pieces.append(np.arange(off, off + size, dtype=np.int64).reshape(shape))
                sizes.append(size)
                off += size
            table = _stack([a.deps for a in ins], sizes)
            if table is None:
                return _NOTHING
            if name == "concatenate":
                ids = np.concatenate(pieces, axis=p["dimension"])
            else:
                ids = np.stack(pieces, axis=p["axis"])
            return _Info(None, _take(table, ids), True)
        D = ins[0].deps
        if D is None:
            return _NOTHING
        shape = _shape(eqn.invars[0])
        ids = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
        if name == "broadcast_in_dim":
            if len(eqn.invars) != 1:
                raise _Untraceable("dynamic-shape broadcast_in_dim")
            out = tuple(p["shape"])
            dims = tuple(p["broadcast_dimensions"])
            order = np.argsort(dims)  # operand axes in output order (may transpose)
            tmp = [1] * len(out)
            for k in order:
                tmp[dims[k]] = shape[k]
            ids = np.broadcast_to(ids.transpose(order).reshape(tmp), out)
        elif name == "transpose":
            ids = ids.transpose(p["permutation"])
        elif name == "tile":
            ids = np.tile(ids, tuple(p["reps"]))
        elif name == "rev":
            ids = np.flip(ids, axis=tuple(p["dimensions"]))
        elif name == "slice":
            strides = p["strides"] or (1,) * len(shape)
            ids = ids[tuple(slice(s, e, st) for s, e, st in
                            zip(p["start_indices"], p["limit_indices"], strides))]
        return _Info(None, _take(D, ids), True)

    def bind_move(self, eqn, ins, data):
        """Apply the primitive itself to element ids of its data operands."""
        sizes = [math.prod(_shape(eqn.invars[k])) for k in data]
        table = _stack([ins[k].deps for k in data], sizes)
        n_out = len(eqn.outvars)
        if table is None:
            return [_NOTHING] * n_out
        dtype = np.int32 if sum(sizes) < 2**31 - 1 else np.int64
        args, off = [], 0
        for k, (a, v) in enumerate(zip(ins, eqn.invars)):
            if k in data:
                size = math.prod(_shape(v))
                args.append(np.arange(off, off + size, dtype=dtype).reshape(_shape(v)))
                off += size
            elif a.tainted:
                return self.anywhere(eqn, ins)
            else:
                args.append(a.value)
        params = dict(eqn.params)
        if "fill_value" in params:
            params["fill_value"] = -1  # positions filled in: no dependence
        out = eqn.primitive.bind(*args, **params)
        outs = out if eqn.primitive.multiple_results else [out]
        return [_Info(None, _take(table, np.asarray(o)), True) for o in outs]

    def anywhere(self, eqn, ins):
        """Indices computed from the parameters: data may move to any position."""
        n = math.prod(_shape(eqn.outvars[0]))
        if eqn.primitive.name == "dynamic_update_slice":  # the operand stays in place
            D = _union([ins[0].deps, self.spread(ins[1].deps, n)], n, self.n_params)
        else:  # gather, dynamic_slice: any operand element may be read
            D = self.spread(ins[0].deps, n)
        return [_Info(None, D, True)]

    def spread(self, D, n):
        """The union of all rows of D, repeated on n rows."""
        if D is None:
            return None
        U = _regroup(D, np.zeros(D[0].size - 1, dtype=np.int64), 1, self.n_params)
        return _take(U, np.zeros(n, dtype=np.int64))

    def select_n(self, eqn, ins):
        pred, cases = ins[0], ins[1:]
        out_shape = _shape(eqn.outvars[0])
        n = math.prod(out_shape)
        Ds = [_broadcast(a.deps, _shape(v), out_shape) for a, v in zip(cases, eqn.invars[1:])]
        if all(D is None for D in Ds):
            return _NOTHING
        if pred.tainted:  # either branch may be taken: structural union
            return _Info(None, _union(Ds, n, self.n_params), True)
        which = np.broadcast_to(np.asarray(pred.value).astype(np.int64), out_shape).ravel()
        ids = which * n + np.arange(n, dtype=np.int64)
        return _Info(None, _take(_stack(Ds, [n] * len(Ds)), ids), True)

    def reduce(self, D, shape, axes):
        """Union over ``axes``; also returns each element's output row."""
        out_shape = tuple(s for i, s in enumerate(shape) if i not in axes)
        dst = np.arange(math.prod(out_shape), dtype=np.int64).reshape(out_shape)
        dst = np.broadcast_to(np.expand_dims(dst, tuple(sorted(axes))), shape).ravel()
        return _regroup(D, dst, math.prod(out_shape), self.n_params), dst

    def cumulative(self, eqn, ins):
        """Prefix unions by recursive doubling (Hillis-Steele): log2(L) unions."""
        D = ins[0].deps
        if D is None:
            return _NOTHING
        shape = _shape(eqn.invars[0])
        axis, reverse = eqn.params["axis"], eqn.params["reverse"]
        n = math.prod(shape)
        pos = np.moveaxis(np.arange(n, dtype=np.int64).reshape(shape), axis, -1)
        L = shape[axis]
        s = 1
        while s < L:
            src = np.full(pos.shape, -1, dtype=np.int64)
            if reverse:
                src[..., :-s] = pos[..., s:]
            else:
                src[..., s:] = pos[..., :-s]
            src = np.moveaxis(src, -1, axis).ravel()
            D = _union([D, _take(D, src)], n, self.n_params)
            s *= 2
        return _Info(None, D, True)

    def dot_general(self, eqn, ins):
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lc, rc, lb, rb = map(tuple, (lc, rc, lb, rb))
        lhs, rhs = ins
        ls, rs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
        lf = tuple(d for d in range(len(ls)) if d not in lc and d not in lb)
        rf = tuple(d for d in range(len(rs)) if d not in rc and d not in rb)
        nB = math.prod(ls[d] for d in lb)
        nC = math.prod(ls[d] for d in lc)
        nI = math.prod(ls[d] for d in lf)
        nJ = math.prod(rs[d] for d in rf)
        n_out = nB * nI * nJ
        P = self.n_params

        def coords(shape, perm, dims):
            """For each flat element: its index in the permuted (d0, d1, d2) layout."""
            size = math.prod(shape)
            order = np.arange(size, dtype=np.int64).reshape(shape).transpose(perm).ravel()
            inv = np.empty(size, dtype=np.int64)
            inv[order] = np.arange(size, dtype=np.int64)
            d1, d2 = dims
            return inv // (d1 * d2), (inv // d2) % d1, inv % d2

        if lhs.deps is not None and rhs.deps is None and not rhs.tainted:
            # exact: out(b,i,j) = U_{c : R[b,c,j] != 0} L(b,i,c)
            b, i, c = coords(ls, lb + lf + lc, (nI, nC))
            mask = np.asarray(rhs.value) != 0
            mask = mask.transpose(rb + rc + rf).reshape(nB * nC, nJ)
            return _Info(None, self._join(lhs.deps, b * nC + c, b, i, mask, nI, nJ, n_out, True),
                         True)
        if rhs.deps is not None and lhs.deps is None and not lhs.tainted:
            b, c, j = coords(rs, rb + rc + rf, (nC, nJ))
            mask = np.asarray(lhs.value) != 0
            mask = mask.transpose(lb + lc + lf).reshape(nB * nC, nI)
            return _Info(None, self._join(rhs.deps, b * nC + c, b, j, mask, nI, nJ, n_out, False),
                         True)
        # structural: out(b,i,j) = U_c L(b,i,c) U U_c R(b,c,j)
        Ds = []
        out_b = np.repeat(np.arange(nB, dtype=np.int64), nI * nJ)
        out_i = np.tile(np.repeat(np.arange(nI, dtype=np.int64), nJ), nB)
        out_j = np.tile(np.arange(nJ, dtype=np.int64), nB * nI)
        if lhs.deps is not None:
            b, i, _ = coords(ls, lb + lf + lc, (nI, nC))
            Lr = _regroup(lhs.deps, b * nI + i, nB * nI, P)
            Ds.append(_take(Lr, out_b * nI + out_i))
        if rhs.deps is not None:
            b, _, j = coords(rs, rb + rc + rf, (nC, nJ))
            Rr = _regroup(rhs.deps, b * nJ + j, nB * nJ, P)
            Ds.append(_take(Rr, out_b * nJ + out_j))
        return _Info(None, _union(Ds, n_out, P), True)

    def _join(self, D, key, b, f, mask, nI, nJ, n_out, lhs_free):
        """Spread each dependency entry over the nonzeros of the constant operand.

        ``key[r]`` is the (batch, contracted) row of ``mask`` for element r of
        the dependent operand, ``f[r]`` its free index; ``mask`` rows list the
        other operand's free indices with a nonzero coefficient.
        """
        indptr, indices = D
        lens = np.diff(indptr)
        r = np.repeat(np.arange(lens.size, dtype=np.int64), lens)
        mr, mc = np.nonzero(mask)
        mptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(mr, minlength=mask.shape[0]), out=mptr[1:])
        k = key[r]
        cnt = mptr[k + 1] - mptr[k]
        total = int(cnt.sum())
        if total == 0:
            return None
        _check_size(total)
        start = np.zeros(cnt.size, dtype=np.int64)
        np.cumsum(cnt[:-1], out=start[1:])
        g = mc[np.arange(total, dtype=np.int64) - np.repeat(start - mptr[k], cnt)]
        bb = np.repeat(b[r], cnt)
        ff = np.repeat(f[r], cnt)
        cols = np.repeat(indices, cnt)
        rows = (bb * nI + ff) * nJ + g if lhs_free else (bb * nI + g) * nJ + ff
        return _build(rows, cols, n_out, self.n_params)

    def sort(self, eqn, ins):
        num_keys = eqn.params["num_keys"]
        dim = eqn.params["dimension"]
        shape = _shape(eqn.invars[0])
        if not any(a.tainted for a in ins[:num_keys]):
            # the permutation is known: move ids of the dependent operands with it
            n = math.prod(shape)
            ids = np.arange(n, dtype=np.int32 if n < 2**31 - 1 else np.int64).reshape(shape)
            args = [ids if a.tainted else a.value for a in ins]
            outs = eqn.primitive.bind(*args, **eqn.params)
            return [_Info(None, _take(a.deps, np.asarray(o)), True) if a.tainted
                    else _Info(o, None, False) for a, o in zip(ins, outs)]
        res = []
        for a in ins:  # the order depends on the parameters: union along `dim`
            if a.deps is None:
                res.append(_NOTHING)
                continue
            Dr, dst = self.reduce(a.deps, shape, (dim,))
            res.append(_Info(None, _take(Dr, dst), True))
        return res

    def top_k(self, eqn, ins):
        """Any element of the last axis may be among the k largest."""
        D = ins[0].deps
        if D is None:
            return [_NOTHING, _NOTHING]
        shape = _shape(eqn.invars[0])
        Dr, _ = self.reduce(D, shape, (len(shape) - 1,))
        k = _shape(eqn.outvars[0])[-1]
        ids = np.repeat(np.arange(math.prod(shape[:-1]), dtype=np.int64), k)
        return [_Info(None, _take(Dr, ids), True), _NOTHING]

    def scan(self, eqn, ins):
        """Unrolled: the body is interpreted once per iteration (exact)."""
        p = eqn.params
        length, nc, nk = p["length"], p["num_consts"], p["num_carry"]
        if length > _MAX_UNROLL:
            raise _Untraceable(f"'scan' of length {length} (the tracer unrolls at most "
                               f"{_MAX_UNROLL} iterations)")
        body = p["jaxpr"]
        consts, carry, xs = ins[:nc], ins[nc:nc + nk], ins[nc + nk:]
        xs_shapes = [_shape(v) for v in eqn.invars[nc + nk:]]
        ys = []
        for i in (range(length - 1, -1, -1) if p["reverse"] else range(length)):
            x_i = [self._row(a, shape, i) for a, shape in zip(xs, xs_shapes)]
            outs = self.run(body.jaxpr, list(body.consts), consts + carry + x_i)
            carry = outs[:nk]
            ys.append(outs[nk:])
        if p["reverse"]:
            ys.reverse()
        stacked = []
        for k, v in enumerate(eqn.outvars[nk:]):
            shape = _shape(v)
            parts = [y[k] for y in ys]
            if not any(a.tainted for a in parts):
                value = (jnp.stack([a.value for a in parts]) if parts
                         else jnp.zeros(shape, v.aval.dtype))
                stacked.append(_Info(value, None, False))
            else:
                inner = math.prod(shape[1:])
                stacked.append(_Info(None, _stack([a.deps for a in parts],
                                                  [inner] * len(parts)), True))
        return list(carry) + stacked

    @staticmethod
    def _row(a, shape, i):
        """Slice ``i`` along the leading axis."""
        if not a.tainted:
            return _Info(a.value[i], None, False)
        if a.deps is None:
            return _NOTHING
        inner = math.prod(shape[1:])
        return _Info(None, _take(a.deps, np.arange(i * inner, (i + 1) * inner)), True)

    def while_loop(self, eqn, ins):
        """Unrolled while the condition does not depend on the parameters."""
        p = eqn.params
        cj, bj = p["cond_jaxpr"], p["body_jaxpr"]
        nc, nb = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, carry = ins[:nc], ins[nc:nc + nb], ins[nc + nb:]
        for _ in range(_MAX_UNROLL + 1):
            (pred,) = self.run(cj.jaxpr, list(cj.consts), cconsts + carry)
            if pred.tainted:
                raise _Untraceable("'while' loop whose stopping condition depends on the "
                                   "parameters")
            if not bool(np.asarray(pred.value)):
                return carry
            carry = self.run(bj.jaxpr, list(bj.consts), bconsts + carry)
        raise _Untraceable(f"'while' loop running more than {_MAX_UNROLL} iterations "
                           f"(the tracer unrolls at most {_MAX_UNROLL})")

    def scatter(self, name, eqn, ins):
        operand, indices, updates = ins[:3]
        if operand.deps is None and updates.deps is None:
            return _NOTHING
        n = math.prod(_shape(eqn.invars[0]))
        if indices.tainted:  # the updates may land anywhere, the operand may survive
            return _Info(None, _union([operand.deps, self.spread(updates.deps, n)], n,
                                      self.n_params), True)
        dn = eqn.params["dimension_numbers"]
        op_shape = _shape(eqn.invars[0])
        up_shape = _shape(eqn.invars[2])
        # The transpose of a scatter is a gather (as in JAX's own transpose
        # rule): gathering operand ids tells each update element its target.
        gdn = lax.GatherDimensionNumbers(
            offset_dims=tuple(dn.update_window_dims),
            collapsed_slice_dims=tuple(dn.inserted_window_dims),
            start_index_map=tuple(dn.scatter_dims_to_operand_dims),
            operand_batching_dims=tuple(dn.operand_batching_dims),
            start_indices_batching_dims=tuple(dn.scatter_indices_batching_dims))
        slice_sizes, pos = [], 0
        for i in range(len(op_shape)):
            if i in dn.inserted_window_dims or i in dn.operand_batching_dims:
                slice_sizes.append(1)
            else:
                slice_sizes.append(up_shape[dn.update_window_dims[pos]])
                pos += 1
        ids = np.arange(n, dtype=np.int32 if n < 2**31 - 1 else np.int64).reshape(op_shape)
        target = lax.gather(ids, indices.value, gdn, tuple(slice_sizes),
                            mode=eqn.params["mode"], fill_value=-1)
        target = np.asarray(target, dtype=np.int64).ravel()
        moved = _regroup(updates.deps, target, n, self.n_params)
        kept = operand.deps
        if name == "scatter" and kept is not None:  # overwritten positions lose the operand
            hit = np.zeros(n, dtype=bool)
            hit[target[target >= 0]] = True
            kept = _take(kept, np.where(hit, -1, np.arange(n, dtype=np.int64)))
        return _Info(None, _union([kept, moved], n, self.n_params), True)

    def cond(self, eqn, ins):
        branches = eqn.params["branches"]
        index, ops = ins[0], ins[1:]
        if not index.tainted:
            k = int(np.clip(np.asarray(index.value), 0, len(branches) - 1))
            return self.run(branches[k].jaxpr, list(branches[k].consts), ops)
        results = [self.run(br.jaxpr, list(br.consts), ops) for br in branches]
        outs = []
        for v, per_branch in zip(eqn.outvars, zip(*results)):
            n = math.prod(_shape(v))
            outs.append(_Info(None, _union([r.deps for r in per_branch], n, self.n_params),
                              True))
        return outs


# --------------------------------------------------------------------------
# Structure detection
# --------------------------------------------------------------------------

_SAMPLE_BUDGET = 2**22  # Jacobian values per sampled JVP batch (32 MiB of float64)


def _model_input(X):
    """``X`` as the fit passes it to the model: float64 JAX array when array-like."""
    if X is None or not (isinstance(X, (list, tuple, np.ndarray)) or hasattr(X, "__array__")):
        return X
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError):  # ragged sequences: leave them to the model
        return X
    if arr.dtype.kind not in "biuf":
        return X
    return jnp.asarray(arr, dtype=jnp.float64)


def _flat_outputs(out):
    leaves = jax.tree_util.tree_leaves(out)
    if len(leaves) == 1:
        return jnp.ravel(leaves[0])
    return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])


def _not_traceable(exc):
    return TypeError("Sparsity detection needs a model that JAX can trace "
                     f"(jax.numpy operations on the parameters); tracing failed with "
                     f"{type(exc).__name__}: {exc}. Pass `jac_sparsity` explicitly instead.")


def _trace_pattern(model, params, X):
    """Exact structural pattern from the model's jaxpr (raises _Untraceable)."""
    n = params.size
    with x64():
        x = _model_input(X)
        scalar = jax.ShapeDtypeStruct((), jnp.float64)
        try:
            closed = jax.make_jaxpr(lambda *p: model(x, *p))(*([scalar] * n))
        except Exception as exc:
            raise _not_traceable(exc) from exc
        one = np.array([0, 1], dtype=np.int64)
        args = [_Info(None, (one, np.array([j], dtype=np.int32)), True) for j in range(n)]
        outs = _Interpreter(n).run(closed.jaxpr, list(closed.consts), args)
    sizes = [math.prod(a.shape) for a in closed.out_avals]
    D = _stack([o.deps for o in outs], sizes)
    m = sum(sizes)
    if D is None:
        return sp.csr_array((m, n), dtype=bool)
    indptr, indices = D
    return sp.csr_array((np.ones(indices.size, dtype=bool), indices, indptr), shape=(m, n))


def _sample_pattern(model, params, X, n_samples, random_state):
    """Union of the nonzeros of dense Jacobians at random points near ``params``.

    The Jacobian is computed in batches of columns (a ``vmap`` of JVPs over
    unit tangents), at most about ``_SAMPLE_BUDGET`` values at a time; the
    model is opaque in ``x``, so it cannot be evaluated on a subset of rows
    instead. Each sample costs ``ceil(n_params / batch)`` compiled JVP passes.
    """
    n = params.size
    if isinstance(random_state, np.random.RandomState):
        rng = random_state
    else:
        rng = np.random.default_rng(random_state)
    with x64():
        x = _model_input(X)

        def f(q):
            return _flat_outputs(model(x, *[q[j] for j in range(n)]))

        try:
            m = math.prod(jax.eval_shape(f, jnp.asarray(params)).shape)
        except Exception as exc:
            raise _not_traceable(exc) from exc
        chunk = max(1, min(n, _SAMPLE_BUDGET // max(m, n, 1)))  # tangents and outputs
        jvps = jax.jit(lambda q, E: jax.vmap(lambda e: jax.jvp(f, (q,), (e,))[1])(E))
        rows, cols = [], []
        scale = np.where(params != 0, np.abs(params), 0.1)
        for _ in range(n_samples):
            # relative perturbations; parameters at exactly zero move by ~0.01
            q = jnp.asarray(params + 0.1 * scale * rng.standard_normal(n))
            for start in range(0, n, chunk):
                k = min(chunk, n - start)
                E = np.zeros((chunk, n))
                E[np.arange(k), start + np.arange(k)] = 1.0
                try:
                    Jc = np.asarray(jvps(q, jnp.asarray(E)))[:k]
                except Exception as exc:
                    raise TypeError(f"The sparsity pattern could not be sampled: JAX "
                                    f"cannot differentiate the model ({type(exc).__name__}: "
                                    f"{exc}). Pass `jac_sparsity` explicitly.") from exc
                c, r = np.nonzero(Jc != 0)  # NaN counts as a dependence
                rows.append(r)
                cols.append(c + start)
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    P = sp.csr_array((np.ones(rows.size, dtype=bool), (rows, cols)), shape=(m, n))
    P.sum_duplicates()
    return P


def detect_sparsity_pattern(model, params, X, *, method="auto", n_samples=3,
                            random_state=None):
    """Which Jacobian entries of ``model(X, *params)`` can be nonzero.

    Parameters
    ----------
    model : callable
        ``model(x, *params)`` written with ``jax.numpy`` (scipy's convention).
        Its output, raveled, is the residual vector (n_residuals entries).
    params : array-like of shape (n_params,)
        A representative parameter vector (e.g. the initial guess ``p0``).
    X : array-like or object
        The model's ``x`` (1-D, or ``(k, M)`` for several features). Arrays
        are passed as float64, exactly as in a fit.
    method : {'auto', 'trace', 'sample'}, default='auto'
        ``'trace'``: exact structure from the model's jaxpr, valid at every
        parameter value (a dependence is recorded whenever the computation can
        propagate one, e.g. both branches of a ``where`` whose condition
        involves the parameters, every position an index computed from the
        parameters can reach). Loops are unrolled (at most 256 iterations,
        with a length independent of the parameters). Raises
        ``NotImplementedError`` for models it cannot follow (longer loops,
        callbacks, linear solves, convolutions, FFTs, ...).
        ``'sample'``: union of the nonzeros of dense Jacobians (``jacfwd``,
        in column batches) at ``n_samples`` random points near ``params``;
        approximate: entries that vanish at those points are missed.
        ``'auto'``: ``'trace'``, falling back to ``'sample'`` with a
        :class:`SampledSparsityWarning` that says why.
    n_samples : int, default=3
        Number of random points for ``'sample'``.
    random_state : int, numpy.random.Generator or RandomState, optional
        Seed of the sampled points (relative perturbations of 10%).

    Returns
    -------
    pattern : scipy.sparse.csr_array of bool, shape (n_residuals, n_params)
        Structural nonzeros of the Jacobian.
    sparsity : float
        Fraction of zero entries, ``1 - nnz / (n_residuals * n_params)``.

    Notes
    -----
    The tracer never forms a dense ``n_residuals x n_params`` array: every
    intermediate element carries a sparse set of parameter indices. Values
    that do not depend on the parameters (``X``, group ids computed from it,
    constant matrices) are evaluated, so indexing with them and exact zeros of
    constant factors (``x * p`` at ``x == 0``, zeros of a constant design
    matrix in ``D @ p``) are resolved exactly. Supported primitives are listed
    in ``sknlsq._sparsity.SUPPORTED_PRIMITIVES``.

    Examples
    --------
    A global fit: a shared rate ``k`` and one amplitude per group.

    >>> import numpy as np, jax.numpy as jnp
    >>> from sknlsq._sparsity import detect_sparsity_pattern
    >>> def model(x, k, a0, a1):
    ...     group = x[1].astype(int)
    ...     amplitude = jnp.stack([a0, a1])[group]
    ...     return amplitude * jnp.exp(-k * x[0])
    >>> X = np.array([[1., 2., 3., 1., 2.],
    ...               [0., 0., 0., 1., 1.]])
    >>> pattern, sparsity = detect_sparsity_pattern(model, [0.5, 1.0, 2.0], X)
    >>> pattern.toarray().astype(int)
    array([[1, 1, 0],
           [1, 1, 0],
           [1, 1, 0],
           [1, 0, 1],
           [1, 0, 1]])
    >>> round(sparsity, 3)
    0.333
    """
    if method not in ("auto", "trace", "sample"):
        raise ValueError(f"`method` must be 'auto', 'trace' or 'sample'; got {method!r}.")
    try:
        params = np.asarray(params, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError("`params` must be a 1-D array of numbers.") from exc
    if params.ndim == 0:
        params = params.reshape(1)
    if params.ndim != 1 or params.size == 0:
        raise ValueError(f"`params` must be a non-empty 1-D array; got shape {params.shape}.")
    if not np.all(np.isfinite(params)):
        raise ValueError("`params` must be finite.")
    n_samples = _check_count(n_samples, "n_samples", 1)

    if method == "sample":
        P = _sample_pattern(model, params, X, n_samples, random_state)
    else:
        try:
            P = _trace_pattern(model, params, X)
        except _Untraceable as exc:
            if method == "trace":
                raise NotImplementedError(
                    f"The sparsity pattern cannot be traced exactly: {exc}. Use "
                    f"method='sample' (approximate) or pass `jac_sparsity`.") from exc
            P = _sample_pattern(model, params, X, n_samples, random_state)
            warnings.warn(
                f"The Jacobian sparsity pattern was sampled at {n_samples} random "
                f"point(s), not traced: {exc}. Entries that vanish at those points "
                f"(kinks of max/abs, inactive branches) may be missing; pass "
                f"`jac_sparsity` explicitly if the fit needs them.",
                SampledSparsityWarning, stacklevel=2)
    size = P.shape[0] * P.shape[1]
    sparsity = 1.0 - P.nnz / size if size else 0.0
    return P, float(sparsity)


# --------------------------------------------------------------------------
# Memory estimate and plotting
# --------------------------------------------------------------------------


def estimate_memory_usage(n_data, n_params, sparsity, dtype=np.float64):
    """Bytes of a dense versus a CSR Jacobian.

    Parameters
    ----------
    n_data : int
        Number of residuals (Jacobian rows), >= 1.
    n_params : int
        Number of parameters (Jacobian columns), >= 1.
    sparsity : float
        Fraction of zero entries, in [0, 1].
    dtype : numpy dtype, default=numpy.float64
        Dtype of the Jacobian values.

    Returns
    -------
    usage : dict
        ``nnz = round((1 - sparsity) * n_data * n_params)``;
        ``dense_bytes = n_data * n_params * itemsize``;
        ``sparse_bytes = nnz * (itemsize + index_bytes) + (n_data + 1) * index_bytes``
        (CSR: values, column indices, row pointers), where ``index_bytes`` is
        4 when ``nnz``, ``n_data`` and ``n_params`` all fit in int32 (as
        scipy chooses its index dtype) and 8 otherwise;
        ``reduction_factor = dense_bytes / sparse_bytes``.

    Examples
    --------
    >>> from sknlsq._sparsity import estimate_memory_usage
    >>> usage = estimate_memory_usage(1000, 50, 0.9)
    >>> usage["nnz"], usage["dense_bytes"], usage["sparse_bytes"]
    (5000, 400000, 64004)
    >>> round(usage["reduction_factor"], 2)
    6.25
    """
    n_data = _check_count(n_data, "n_data", 1)
    n_params = _check_count(n_params, "n_params", 1)
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"`sparsity` must be a real number; got {type(sparsity).__name__}.")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity <= 1.0:  # also rejects NaN
        raise ValueError(f"`sparsity` must be in [0, 1]; got {sparsity}.")
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"`dtype` must be a NumPy dtype; got {dtype!r}.") from exc
    if dtype.kind not in "fciub":
        raise TypeError(f"`dtype` must be a numeric dtype; got {dtype}.")
    total = n_data * n_params
    nnz = int(round((1.0 - sparsity) * total))
    index_bytes = 4 if max(nnz, n_data, n_params) <= np.iinfo(np.int32).max else 8
    dense = total * dtype.itemsize
    sparse = nnz * (dtype.itemsize + index_bytes) + (n_data + 1) * index_bytes
    return {"dense_bytes": dense, "sparse_bytes": sparse, "nnz": nnz,
            "reduction_factor": dense / sparse}


_SPY_MARKER_LIMIT = 1000  # larger patterns are drawn as a block-occupancy image


def plot_sparsity_pattern(pattern, ax=None, **kwargs):
    """Spy plot of a Jacobian sparsity pattern.

    Parameters
    ----------
    pattern : array-like or scipy.sparse matrix/array of shape (n_residuals, n_params)
        The pattern (nonzero = may be nonzero).
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure's axes by default.
    **kwargs
        Passed on to :meth:`matplotlib.axes.Axes.spy`.

    Returns
    -------
    ax : matplotlib.axes.Axes

    Notes
    -----
    Patterns of at most 1000 rows and columns are drawn with one marker per
    nonzero. Larger ones are downsampled to a grid of at most 1000 x 1000
    blocks, a block drawn black when any entry in it is nonzero, as an image
    whose axes still count rows and columns of the full pattern (so millions
    of nonzeros plot in constant time). Needs matplotlib
    (``pip install sknlsq[plot]``).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_sparsity_pattern needs matplotlib: install it with "
                          "`pip install sknlsq[plot]` (or `pip install matplotlib`).") from exc
    P = _as_pattern(pattern, "pattern")
    m, n = P.shape
    if ax is None:
        _, ax = plt.subplots()
    kwargs.setdefault("aspect", "auto")
    if max(m, n) <= _SPY_MARKER_LIMIT:
        kwargs.setdefault("markersize", max(1.0, min(6.0, 300.0 / max(m, n, 1))))
        ax.spy(P, **kwargs)
    else:
        bm = -(-m // _SPY_MARKER_LIMIT) if m > _SPY_MARKER_LIMIT else 1
        bn = -(-n // _SPY_MARKER_LIMIT) if n > _SPY_MARKER_LIMIT else 1
        coo = P.tocoo()
        grid = np.zeros((-(-m // bm), -(-n // bn)), dtype=bool)
        grid[coo.row // bm, coo.col // bn] = True
        kwargs.setdefault("extent", (-0.5, n - 0.5, m - 0.5, -0.5))
        ax.spy(grid, **kwargs)
    ax.set_xlabel("parameter")
    ax.set_ylabel("residual")
    return ax
