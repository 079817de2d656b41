"""sknlsq: scikit-learn-compatible nonlinear least-squares curve fitting on JAX.

Public surface:

* :func:`curve_fit` -- drop-in replacement for :func:`scipy.optimize.curve_fit`;
* :class:`CurveFitRegressor` -- scikit-learn estimator around the same solvers;
* :class:`StreamingCurveFitRegressor` -- exact out-of-core fits over chunked
  data (:class:`ArraySource`, :class:`HDF5Source`, :class:`IterableSource`,
  or any :class:`ChunkSource`) and online ``partial_fit``;
* :class:`SparseCurveFitRegressor` -- sparse Jacobians: global fits with
  per-group and shared parameters, detected or given sparsity patterns
  (:func:`detect_sparsity_pattern`, :func:`estimate_memory_usage`,
  :func:`plot_sparsity_pattern`);
* :class:`MemoryPool` -- compiled programs and staging buffers shared by fits;
* :class:`JaxFallbackWarning` -- emitted when a model cannot be traced by JAX.
"""

from ._estimators import (CurveFitRegressor, SparseCurveFitRegressor,
                          StreamingCurveFitRegressor)
from ._minpack import curve_fit
from ._model import JaxFallbackWarning
from ._pool import MemoryPool
from ._sources import ArraySource, ChunkSource, HDF5Source, IterableSource
from ._sparsity import detect_sparsity_pattern, estimate_memory_usage, plot_sparsity_pattern

__version__ = "0.1.0"

__all__ = ["ArraySource", "ChunkSource", "CurveFitRegressor", "HDF5Source", "IterableSource",
           "JaxFallbackWarning", "MemoryPool", "SparseCurveFitRegressor",
           "StreamingCurveFitRegressor", "curve_fit", "detect_sparsity_pattern",
           "estimate_memory_usage", "plot_sparsity_pattern", "__version__"]
