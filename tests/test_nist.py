"""``sknlsq.curve_fit`` on the 27 NIST StRD nonlinear regression problems.

Each problem is run from both of its certified starting points (54 runs) and
scored by the number of digits its ``popt`` shares with the certified values
(see :mod:`nist_strd`). Reference figures, from ``scipy.optimize.curve_fit``
(scipy 1.17, finite-difference Jacobian, the same ``jax.numpy`` models
evaluated in float64):

* default settings: 27 of 54 runs reach 6 digits;
* ``ftol=xtol=gtol=1e-15``: 45 of 54 (48 with ``maxfev=100000``); with the
  exact Jacobian as well, 53 of 54 (``lm``) and 54 of 54 (``trf``).

The targets below are for ``sknlsq``: 48 of 54 at its defaults, all 54 with
tight tolerances. The first tests need no fitting: they check the parser and
the transcription of the 27 model formulas against the certified residual sum
of squares. ``pytest -s`` prints the per-run tables.

The data directory (``<dir>/shared/data/nist_strd`` beside the ``<dir>/main``
checkout) must be present: without it these tests error out, they are not
skipped.
"""

from __future__ import annotations

import functools
import inspect

import jax
import numpy as np
import pytest

from nist_strd import (
    MAX_DIGITS,
    MODELS,
    NAMES,
    RunResult,
    data_dir,
    digits,
    load,
    n_params,
    numpy_model,
    run,
)
from sknlsq import curve_fit

STARTS = (1, 2)
GOOD = 6.0  # digits a run must reach to count as converged
TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)

DIFFICULTY = {
    "lower": {"Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2",
              "DanWood", "Misra1b"},
    "average": {"Kirby2", "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3",
                "Misra1c", "Misra1d", "Roszman1", "ENSO"},
    "higher": {"MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43",
               "Bennett5"},
}

# Problems whose certified standard deviations scipy's default curve_fit
# reproduces to better than 1e-4 (relative) from both starting points
# (worst: Gauss1, 1.6e-5). Lanczos1 is never among them: its certified RSS
# (1.4e-25) is below float64 resolution, so s**2 = RSS / (N - p), and with it
# every standard deviation, cannot be reproduced (scipy is off by ~1e-3 even
# with 10.5 correct digits in popt).
SD_PROBLEMS_DEFAULT = ("DanWood", "Eckerle4", "Gauss1", "Gauss2", "Gauss3", "Misra1a",
                       "Misra1b", "Misra1c", "Misra1d", "Rat42")
# With tight tolerances scipy reproduces them for every run it converges on.
SD_EXCLUDED = ("Lanczos1",)
SD_RTOL = 1e-4


# --------------------------------------------------------------------------
# Helpers (runs are cached: the sd tests reuse the accuracy tests' fits)
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _runs(setting: str) -> tuple[RunResult, ...]:
    kwargs = TIGHT if setting == "tight" else {}
    return tuple(run(name, s, curve_fit, **kwargs) for name in NAMES for s in STARTS)


def _table(results, title: str) -> str:
    lines = [title, f"{'problem':<9} {'start':>5} {'digits':>6}"]
    for r in results:
        note = f"  {type(r.error).__name__}: {r.error}" if r.error is not None else ""
        flag = "" if r.digits >= GOOD else "  <-- below 6"
        lines.append(f"{r.name:<9} {r.start:>5} {r.digits:6.2f}{flag}{note}")
    good = sum(r.digits >= GOOD for r in results)
    lines.append(f"{good} of {len(results)} runs reach {GOOD:g} digits")
    return "\n".join(lines)


def _failing(results) -> list[str]:
    return [
        f"{r.name} start{r.start}: {r.digits:.2f}"
        + (f" ({type(r.error).__name__}: {r.error})" if r.error is not None else "")
        for r in results
        if r.digits < GOOD
    ]


# --------------------------------------------------------------------------
# Data and models (no fitting)
# --------------------------------------------------------------------------


def test_all_problems_present():
    files = sorted(p.stem for p in data_dir().glob("*.dat"))
    assert files == sorted(NAMES)
    assert len(NAMES) == 27


def test_difficulty_levels():
    for level, names in DIFFICULTY.items():
        assert {n for n in NAMES if load(n).difficulty == level} == names


@pytest.mark.parametrize("name", NAMES)
def test_parse(name):
    p = load(name)
    k = n_params(MODELS[name])
    assert len(p.start1) == len(p.start2) == len(p.certified) == len(p.certified_sd) == k
    assert list(inspect.signature(MODELS[name]).parameters)[1:] == [
        f"b{i}" for i in range(1, k + 1)
    ]
    if name == "Nelson":
        assert p.x.shape == (2, p.n_obs)
    else:
        assert p.x.shape == (p.n_obs,)
    assert p.y.shape == (p.n_obs,)
    for a in (p.x, p.y, p.start1, p.start2, p.certified, p.certified_sd):
        assert np.all(np.isfinite(a))
    assert np.all(p.certified_sd > 0) and p.certified_rss > 0
    assert not np.array_equal(p.start1, p.start2)


@pytest.mark.parametrize("name", NAMES)
def test_certified_rss(name):
    """The transcribed model, at the certified parameters, gives the certified RSS.

    A small absolute allowance covers Lanczos1, whose certified RSS (1.4e-25)
    lies below what float64 evaluation at 11-digit parameters can resolve (it
    gives ~4e-21); every other problem is held to the relative 1e-6.
    """
    p = load(name)
    r = p.y - numpy_model(MODELS[name])(p.x, *p.certified)
    rss = float(r @ r)
    np.testing.assert_allclose(rss, p.certified_rss, rtol=1e-6, atol=1e-18 * float(p.y @ p.y))


def test_models_leave_x64_alone():
    p = load("Misra1a")
    before = jax.config.jax_enable_x64
    out = numpy_model(MODELS["Misra1a"])(p.x, *p.certified)
    assert out.dtype == np.float64
    assert jax.config.jax_enable_x64 == before


def test_digits():
    c = np.array([2.0, -4.0])
    assert digits(c, c) == MAX_DIGITS
    assert digits(c * (1 + 1e-7), c) == pytest.approx(7.0)
    assert digits([2.0, -4.4], c) == pytest.approx(1.0)
    assert digits([2.0, np.nan], c) == 0.0
    assert digits([2.0, 40.0], c) == 0.0  # off by more than 100 %: floored at 0
    assert digits([2.0], c) == 0.0


# --------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------


def test_default_settings():
    """``curve_fit(f, x, y, p0=start)``: at least 48 of 54 runs reach 6 digits."""
    results = _runs("default")
    print("\n" + _table(results, "NIST StRD, sknlsq.curve_fit defaults"))
    failing = _failing(results)
    n_good = len(results) - len(failing)
    assert n_good >= 48, f"{n_good} of 54 runs reach 6 digits (need 48); below 6: {failing}"


def test_tight_tolerances():
    """``ftol = xtol = gtol = 1e-15``: all 54 runs reach 6 digits."""
    results = _runs("tight")
    print("\n" + _table(results, "NIST StRD, sknlsq.curve_fit ftol=xtol=gtol=1e-15"))
    failing = _failing(results)
    assert not failing, f"{54 - len(failing)} of 54 runs reach 6 digits; below 6: {failing}"


# --------------------------------------------------------------------------
# Certified standard deviations (absolute_sigma=False)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, problems",
    [
        ("default", SD_PROBLEMS_DEFAULT),
        ("tight", tuple(n for n in NAMES if n not in SD_EXCLUDED)),
    ],
)
def test_certified_sd(setting, problems):
    """sqrt(diag(pcov)) matches the certified sd (1e-4) on every converged run.

    Only runs that reach 6 digits are compared (convergence itself is the
    accuracy tests' business), but the comparison may not be vacuous: at
    least one run of each problem in the default subset must take part.
    """
    checked, bad = [], []
    for r in _runs(setting):
        if r.name not in problems or r.digits < GOOD:
            continue
        p = load(r.name)
        sd = np.sqrt(np.diag(r.pcov))
        rel = float(np.max(np.abs(sd - p.certified_sd) / p.certified_sd))
        checked.append(r.name)
        if not rel <= SD_RTOL:
            bad.append(f"{r.name} start{r.start}: max relative sd error {rel:.2e}")
    print(f"\nsd check ({setting}): {len(checked)} converged runs compared")
    assert not bad, f"standard deviations off by more than {SD_RTOL:g}: {bad}"
    if setting == "default":
        missing = sorted(set(SD_PROBLEMS_DEFAULT) - set(checked))
        assert not missing, f"no converged run to compare standard deviations for: {missing}"
