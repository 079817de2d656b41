"""scikit-learn estimators: thin layers over the shared fitting core."""

from ._curve_fit import CurveFitRegressor
from ._sparse import SparseCurveFitRegressor
from ._streaming import StreamingCurveFitRegressor

__all__ = ["CurveFitRegressor", "SparseCurveFitRegressor", "StreamingCurveFitRegressor"]
