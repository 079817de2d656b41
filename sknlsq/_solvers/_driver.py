"""One compiled program per fit: the generic ``lax.while_loop`` driver.

Each algorithm module (``_trf``, ``_lm``, ``_dogbox``) provides ``init`` and
``step``; a step makes exactly one trial evaluation of the residuals (plus a
Jacobian when the trial is accepted) and sets ``term`` to a status code when a
convergence test passes. The driver owns the loop, the evaluation budget and
the *refinement* phase:

Refinement. The standard tests stop when the relative decrease of the cost
falls below ``ftol`` (or the step below ``xtol``). Near a minimum the
Gauss-Newton model is accurate and the remaining parameter error is often
still well above what the data determine (about ``sqrt(ftol)`` relative for
ill-conditioned problems). After the first test passes, the driver therefore
keeps stepping for at most ``refine`` more trials with the tolerances at
machine precision, stopping as soon as those tighter tests pass. The status
reported is the one of the first test; ``nfev`` counts all evaluations and
never exceeds ``max_nfev``. ``refine=0`` gives scipy's stopping behaviour.

Status codes (scipy's ``least_squares`` convention plus our own negatives):

* ``-2`` residuals not finite at the initial point (nothing was done),
* ``0`` the evaluation budget ``max_nfev`` ran out,
* ``1`` gtol, ``2`` ftol, ``3`` xtol, ``4`` ftol and xtol.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _dogbox, _lm, _trf
from ._common import EPS, find_active_constraints, make_strictly_feasible
from ._problem import n_residuals

METHODS = {"trf": _trf, "lm": _lm, "dogbox": _dogbox}

RUNNING = -1
NONFINITE_X0 = -2

MESSAGES = {
    NONFINITE_X0: "Residuals are not finite in the initial point.",
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
}


class Options(NamedTuple):
    """Dynamic (traced) solver settings: changing them never recompiles."""

    ftol: Any
    xtol: Any
    gtol: Any
    max_nfev: Any
    f_scale: Any
    factor: Any = 10.0  # initial trust radius factor of method "lm" (MINPACK's `factor`)
    loss_id: Any = 0  # which robust loss (``_losses.loss_id``) a "robust" problem uses


class Solution(NamedTuple):
    x: Any
    cost: Any
    fun: Any  # residuals at x (before robust-loss rescaling)
    R: Any  # triangular factor of the (loss-scaled) Jacobian at x
    qtf: Any
    grad: Any
    active_mask: Any
    nfev: Any
    njev: Any
    nit: Any
    status: Any


class Carry(NamedTuple):
    """Loop state of a solve in progress (a pytree: it can be vmapped, split
    into batches and merged)."""

    state: Any  # the algorithm's state (TRFState, LMState or DogboxState)
    status: Any  # RUNNING, NONFINITE_X0 or the first convergence code
    left: Any  # refinement trials left


def start(problem, x0, data, lb, ub, x_scale, opts: Options, *, method: str,
          has_bounds: bool, use_jac_scale: bool, refine: int = 5) -> Carry:
    """Evaluate the starting point and return the initial :class:`Carry`."""
    alg = METHODS[method]
    static = _static(problem, x0, data, has_bounds, use_jac_scale)
    if method == "trf" and has_bounds:
        x0 = make_strictly_feasible(x0, lb, ub)
    state = alg.init(problem, x0, data, lb, ub, x_scale, opts, **static)
    # A finite residual vector whose sum of squares overflows (|f| ~ 1e155)
    # cannot be solved in float64 either: its cost is inf, its scaled
    # gradient 0, which would pass for convergence at p0.
    finite0 = jnp.all(jnp.isfinite(state.f_true)) & jnp.isfinite(state.cost)
    status = jnp.where(finite0, jnp.where(state.term > 0, state.term, RUNNING), NONFINITE_X0)
    state = state._replace(term=jnp.zeros_like(state.term))
    return Carry(state, status.astype(jnp.int32), jnp.asarray(refine, jnp.int32))


def running(carry: Carry, opts: Options):
    """Whether the solve still has work to do."""
    go = (carry.status == RUNNING) | ((carry.status > 0) & (carry.left > 0))
    return go & (carry.state.nfev < opts.max_nfev)


def advance(carry: Carry, problem, data, lb, ub, opts: Options, max_steps=None, *,
            method: str, has_bounds: bool, use_jac_scale: bool) -> Carry:
    """Run trial steps until the solve finishes (or ``max_steps`` trials)."""
    alg = METHODS[method]
    static = _static(problem, carry.state.x, data, has_bounds, use_jac_scale)
    tight = jnp.asarray(EPS, carry.state.x.dtype)

    def cond(c):
        carry, i = c
        go = running(carry, opts)
        return go if max_steps is None else go & (i < max_steps)

    def body(c):
        (st, status, left), i = c
        polishing = status > 0
        ftol = jnp.where(polishing, tight, opts.ftol)
        xtol = jnp.where(polishing, tight, opts.xtol)
        gtol = jnp.where(polishing, 0.0, opts.gtol)
        st = alg.step(st, problem, data, lb, ub, opts, ftol, xtol, gtol, **static)
        fired = st.term > 0
        left = jnp.where(polishing, jnp.where(fired, 0, left - 1), left)
        status = jnp.where(~polishing & fired, st.term, status)
        return Carry(st._replace(term=jnp.zeros_like(st.term)), status, left), i + 1

    carry, _ = jax.lax.while_loop(cond, body, (carry, jnp.zeros((), jnp.int32)))
    return carry


def finish(carry: Carry, lb, ub, opts: Options, *, method: str) -> Solution:
    """The :class:`Solution` of a finished (or interrupted) solve."""
    state = carry.state
    status = jnp.where(carry.status == RUNNING, 0, carry.status)
    if method == "dogbox":
        active = state.on_bound.astype(jnp.int32)
    else:
        active = find_active_constraints(state.x, lb, ub, rtol=opts.xtol)
    return Solution(state.x, state.cost, state.f_true, state.R, state.qtf, state.g, active,
                    state.nfev, state.njev, state.nit, status)


def solve(problem, x0, data, lb, ub, x_scale, opts: Options, *, method: str,
          has_bounds: bool, use_jac_scale: bool, refine: int = 5) -> Solution:
    """Run one whole least-squares solve as a single traced computation.

    ``problem`` (a :class:`~._problem.Problem`), ``method``, ``has_bounds``,
    ``use_jac_scale`` and ``refine`` are static; everything else is an array.
    The function is pure and can be wrapped in ``jax.jit`` and ``jax.vmap``.
    It is ``finish(advance(start(...)))``; batched drivers call the three
    pieces separately to retire finished problems between segments.
    """
    kw = dict(method=method, has_bounds=has_bounds, use_jac_scale=use_jac_scale)
    carry = start(problem, x0, data, lb, ub, x_scale, opts, refine=refine, **kw)
    carry = advance(carry, problem, data, lb, ub, opts, **kw)
    return finish(carry, lb, ub, opts, method=method)


def _static(problem, x, data, has_bounds, use_jac_scale):
    return dict(has_bounds=has_bounds, use_jac_scale=use_jac_scale,
                m=n_residuals(problem, x, data))
