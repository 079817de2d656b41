"""Test-session setup shared by every test module.

Kept deliberately small. JAX is pinned to the CPU so the suite behaves the
same on a laptop, in CI and on a machine that happens to have an accelerator
(set ``JAX_PLATFORMS`` yourself to override). Nothing here switches on x64:
``sknlsq`` runs its computations in float64 inside a scoped
``jax.enable_x64`` context, and the tests check that it leaves the global
setting alone.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
