"""The examples in public docstrings run and print what they claim."""

import doctest

import pytest

import sknlsq._estimators._curve_fit
import sknlsq._estimators._sparse
import sknlsq._estimators._streaming
import sknlsq._minpack
import sknlsq._pool
import sknlsq._sources
import sknlsq._sparsity

MODULES = [sknlsq._minpack, sknlsq._pool, sknlsq._sources, sknlsq._sparsity,
           sknlsq._estimators._curve_fit, sknlsq._estimators._sparse,
           sknlsq._estimators._streaming]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
