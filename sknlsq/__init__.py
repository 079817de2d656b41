"""sknlsq: scikit-learn-compatible nonlinear least-squares curve fitting on JAX.

Public surface:

* :func:`curve_fit` -- drop-in replacement for :func:`scipy.optimize.curve_fit`;
* :class:`CurveFitRegressor` -- scikit-learn estimator around the same solvers;
* :class:`MemoryPool` -- compiled programs and staging buffers shared by fits;
* :class:`JaxFallbackWarning` -- emitted when a model cannot be traced by JAX.
"""

from ._estimators import CurveFitRegressor
from ._minpack import curve_fit
from ._model import JaxFallbackWarning
from ._pool import MemoryPool

__version__ = "0.1.0"

__all__ = ["CurveFitRegressor", "JaxFallbackWarning", "MemoryPool", "curve_fit",
           "__version__"]
