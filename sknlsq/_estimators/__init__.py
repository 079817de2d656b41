"""scikit-learn estimators: thin layers over the shared fitting core."""

from ._curve_fit import CurveFitRegressor

__all__ = ["CurveFitRegressor"]
