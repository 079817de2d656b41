"""Pure-JAX least-squares solvers (no scikit-learn, no I/O).

The public entry point of this subpackage is :func:`solve`, a pure function
of arrays that runs a whole fit (trust-region reflective, Levenberg-Marquardt
or dogbox) as one ``lax.while_loop``; wrap it in ``jax.jit`` (and ``jax.vmap``)
as needed.
"""

from ._driver import (MESSAGES, METHODS, NONFINITE_X0, RUNNING, Carry, Options, Solution,
                      advance, finish, running, solve, start)
from ._losses import LOSSES
from ._problem import ChunkedProblem, Linearization, Problem, linearize

__all__ = ["LOSSES", "MESSAGES", "METHODS", "NONFINITE_X0", "RUNNING", "Carry", "ChunkedProblem",
           "Linearization", "Options", "Problem", "Solution", "advance", "finish", "linearize",
           "running", "solve", "start"]
