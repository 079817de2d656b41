"""Numerical configuration: the scoped float64 context used by every fit.

JAX computes in float32 unless ``jax_enable_x64`` is on. sknlsq never flips
that global flag (which would silently change a user's own float32 JAX code);
each fit runs inside a scoped x64 context instead. Compiled programs are
cached per x64 state by JAX itself, so this costs nothing on repeated fits.
"""

from __future__ import annotations

import jax


def x64():
    """Context manager enabling float64 in JAX for the enclosed code only."""
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:  # jax >= 0.8: a config State usable as a context manager
        return enable(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()
