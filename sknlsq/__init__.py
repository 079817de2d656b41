"""sknlsq: scikit-learn-compatible nonlinear least-squares curve fitting on JAX.

Public surface:

* :func:`curve_fit` -- drop-in replacement for :func:`scipy.optimize.curve_fit`;
* :class:`CurveFitRegressor` -- scikit-learn estimator around the same solvers;
* :class:`StreamingCurveFitRegressor` -- exact out-of-core fits over chunked
  data (:class:`ArraySource`, :class:`HDF5Source`, :class:`IterableSource`,
  or any :class:`ChunkSource`) and online ``partial_fit``;
* :class:`MemoryPool` -- compiled programs and staging buffers shared by fits;
* :class:`JaxFallbackWarning` -- emitted when a model cannot be traced by JAX.
"""

from ._estimators import CurveFitRegressor, StreamingCurveFitRegressor
from ._minpack import curve_fit
from ._model import JaxFallbackWarning
from ._pool import MemoryPool
from ._sources import ArraySource, ChunkSource, HDF5Source, IterableSource

__version__ = "0.1.0"

__all__ = ["ArraySource", "ChunkSource", "CurveFitRegressor", "HDF5Source", "IterableSource",
           "JaxFallbackWarning", "MemoryPool", "StreamingCurveFitRegressor", "curve_fit",
           "__version__"]
