"""scikit-learn's estimator checks for every public estimator."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sknlsq import CurveFitRegressor

EXPECTED_FAILED = {
    CurveFitRegressor: {
        "check_sample_weight_equivalence_on_dense_data": (
            "fits 30 features (31 parameters of the default linear model) on 27 samples: "
            "an underdetermined least-squares problem, which curve fitting rejects with a "
            "clear error (fewer data points than parameters), as scipy's curve_fit does"),
    },
}


@parametrize_with_checks(
    [CurveFitRegressor()],
    expected_failed_checks=lambda est: EXPECTED_FAILED.get(type(est), {}))
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
