"""The NIST StRD nonlinear regression problems: data, models and scoring.

The 27 problems of the NIST Statistical Reference Datasets for nonlinear least
squares live as ``.dat`` files in ``<checkout parent>/shared/data/nist_strd``
(the repository is cloned as ``<dir>/main`` with ``<dir>/shared`` beside it).
This module

* parses a problem file into a :class:`Problem` (:func:`load`, cached);
* holds the 27 model functions, written with ``jax.numpy`` in scipy's
  ``f(x, b1, b2, ...)`` form, so the parameter count comes from the
  signature (:data:`MODELS`);
* scores a fit by its number of agreeing digits with the certified values
  (:func:`digits`), and runs one problem from one of its two starting points
  through any ``scipy.optimize.curve_fit``-compatible function (:func:`run`).

The files are parsed by their text, not by the line numbers printed in their
headers: the parameter block is every ``bK = start1 start2 value sd`` line,
the data is everything after the *last* line beginning with ``Data:`` (the
first such line opens the description of the variables).

Nelson is the one problem with two predictors and a transformed response: its
``x`` is a ``(2, M)`` array (scipy's ``(k, M)`` convention for ``xdata``) and
its ``y`` is the natural log of the data column, as the certified values are
for ``log[y] = b1 - b2*x1 * exp[-b3*x2]``.

The models are plain ``jax.numpy`` code. Called on NumPy arrays outside a
``jax.enable_x64`` context JAX computes in float32, so evaluate them through
:func:`numpy_model` (float64, NumPy in and out) when they are handed to
scipy or checked by hand.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DATA_DIR",
    "MAX_DIGITS",
    "MODELS",
    "NAMES",
    "Problem",
    "RunResult",
    "data_dir",
    "digits",
    "load",
    "n_params",
    "numpy_model",
    "parse",
    "run",
]

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "nist_strd"

MAX_DIGITS = 11.0
"""The certified values carry 11 significant digits; scores are capped there."""


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
# Transcribed from the ``Model:`` block of each file. NIST writes ``exp[..]``
# and ``arctan[..]`` with square brackets and ``**`` for powers.


def bennett5(x, b1, b2, b3):
    """``y = b1 * (b2+x)**(-1/b3)``"""
    return b1 * (b2 + x) ** (-1 / b3)


def boxbod(x, b1, b2):
    """``y = b1*(1-exp[-b2*x])``"""
    return b1 * (1 - jnp.exp(-b2 * x))


def chwirut(x, b1, b2, b3):
    """``y = exp[-b1*x]/(b2+b3*x)`` (Chwirut1 and Chwirut2)."""
    return jnp.exp(-b1 * x) / (b2 + b3 * x)


def danwood(x, b1, b2):
    """``y = b1*x**b2``"""
    return b1 * x**b2


def enso(x, b1, b2, b3, b4, b5, b6, b7, b8, b9):
    """``y = b1 + b2*cos(2*pi*x/12) + b3*sin(2*pi*x/12)
    + b5*cos(2*pi*x/b4) + b6*sin(2*pi*x/b4)
    + b8*cos(2*pi*x/b7) + b9*sin(2*pi*x/b7)``

    Note the order: ``b4`` and ``b7`` are periods, not amplitudes.
    """
    w = 2 * jnp.pi * x
    return (
        b1
        + b2 * jnp.cos(w / 12)
        + b3 * jnp.sin(w / 12)
        + b5 * jnp.cos(w / b4)
        + b6 * jnp.sin(w / b4)
        + b8 * jnp.cos(w / b7)
        + b9 * jnp.sin(w / b7)
    )


def eckerle4(x, b1, b2, b3):
    """``y = (b1/b2) * exp[-0.5*((x-b3)/b2)**2]``"""
    return (b1 / b2) * jnp.exp(-0.5 * ((x - b3) / b2) ** 2)


def gauss(x, b1, b2, b3, b4, b5, b6, b7, b8):
    """``y = b1*exp(-b2*x) + b3*exp(-(x-b4)**2 / b5**2) + b6*exp(-(x-b7)**2 / b8**2)``

    (Gauss1, Gauss2 and Gauss3.)
    """
    return (
        b1 * jnp.exp(-b2 * x)
        + b3 * jnp.exp(-((x - b4) ** 2) / b5**2)
        + b6 * jnp.exp(-((x - b7) ** 2) / b8**2)
    )


def cubic_over_cubic(x, b1, b2, b3, b4, b5, b6, b7):
    """``y = (b1 + b2*x + b3*x**2 + b4*x**3) / (1 + b5*x + b6*x**2 + b7*x**3)``

    (Hahn1 and Thurber.)
    """
    return (b1 + b2 * x + b3 * x**2 + b4 * x**3) / (1 + b5 * x + b6 * x**2 + b7 * x**3)


def kirby2(x, b1, b2, b3, b4, b5):
    """``y = (b1 + b2*x + b3*x**2) / (1 + b4*x + b5*x**2)``"""
    return (b1 + b2 * x + b3 * x**2) / (1 + b4 * x + b5 * x**2)


def lanczos(x, b1, b2, b3, b4, b5, b6):
    """``y = b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)`` (Lanczos1, 2 and 3)."""
    return b1 * jnp.exp(-b2 * x) + b3 * jnp.exp(-b4 * x) + b5 * jnp.exp(-b6 * x)


def mgh09(x, b1, b2, b3, b4):
    """``y = b1*(x**2+x*b2) / (x**2+x*b3+b4)``"""
    return b1 * (x**2 + x * b2) / (x**2 + x * b3 + b4)


def mgh10(x, b1, b2, b3):
    """``y = b1 * exp[b2/(x+b3)]``"""
    return b1 * jnp.exp(b2 / (x + b3))


def mgh17(x, b1, b2, b3, b4, b5):
    """``y = b1 + b2*exp[-x*b4] + b3*exp[-x*b5]``"""
    return b1 + b2 * jnp.exp(-x * b4) + b3 * jnp.exp(-x * b5)


def misra1a(x, b1, b2):
    """``y = b1*(1-exp[-b2*x])``"""
    return b1 * (1 - jnp.exp(-b2 * x))


def misra1b(x, b1, b2):
    """``y = b1 * (1-(1+b2*x/2)**(-2))``"""
    return b1 * (1 - (1 + b2 * x / 2) ** (-2))


def misra1c(x, b1, b2):
    """``y = b1 * (1-(1+2*b2*x)**(-.5))``"""
    return b1 * (1 - (1 + 2 * b2 * x) ** (-0.5))


def misra1d(x, b1, b2):
    """``y = b1*b2*x*((1+b2*x)**(-1))``"""
    return b1 * b2 * x * ((1 + b2 * x) ** (-1))


def nelson(x, b1, b2, b3):
    """``log[y] = b1 - b2*x1 * exp[-b3*x2]``; ``x`` is ``(2, M)``: ``x1 = x[0]``, ``x2 = x[1]``."""
    x1, x2 = x[0], x[1]
    return b1 - b2 * x1 * jnp.exp(-b3 * x2)


def rat42(x, b1, b2, b3):
    """``y = b1 / (1+exp[b2-b3*x])``"""
    return b1 / (1 + jnp.exp(b2 - b3 * x))


def rat43(x, b1, b2, b3, b4):
    """``y = b1 / ((1+exp[b2-b3*x])**(1/b4))``"""
    return b1 / ((1 + jnp.exp(b2 - b3 * x)) ** (1 / b4))


def roszman1(x, b1, b2, b3, b4):
    """``y = b1 - b2*x - arctan[b3/(x-b4)]/pi``

    The principal branch of arctan, as NIST states it (not ``arctan2``).
    """
    return b1 - b2 * x - jnp.arctan(b3 / (x - b4)) / jnp.pi


MODELS: dict[str, Callable[..., Any]] = {
    "Bennett5": bennett5,
    "BoxBOD": boxbod,
    "Chwirut1": chwirut,
    "Chwirut2": chwirut,
    "DanWood": danwood,
    "ENSO": enso,
    "Eckerle4": eckerle4,
    "Gauss1": gauss,
    "Gauss2": gauss,
    "Gauss3": gauss,
    "Hahn1": cubic_over_cubic,
    "Kirby2": kirby2,
    "Lanczos1": lanczos,
    "Lanczos2": lanczos,
    "Lanczos3": lanczos,
    "MGH09": mgh09,
    "MGH10": mgh10,
    "MGH17": mgh17,
    "Misra1a": misra1a,
    "Misra1b": misra1b,
    "Misra1c": misra1c,
    "Misra1d": misra1d,
    "Nelson": nelson,
    "Rat42": rat42,
    "Rat43": rat43,
    "Roszman1": roszman1,
    "Thurber": cubic_over_cubic,
}
"""Problem name -> ``jax.numpy`` model ``f(x, b1, ..., bp)``."""

NAMES: list[str] = sorted(MODELS, key=str.lower)
"""The 27 problem names (the ``.dat`` file stems), in case-insensitive order."""


def n_params(f: Callable[..., Any]) -> int:
    """Number of fit parameters of a scipy-style model: its arguments after ``x``."""
    return len(inspect.signature(f).parameters) - 1


def numpy_model(f: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """``f`` evaluated in float64 with NumPy output (for scipy and hand checks).

    The wrapper runs ``f`` inside a scoped ``jax.enable_x64(True)`` (so the
    global flag is left alone) and converts the result with ``np.asarray``.
    ``functools.wraps`` keeps ``f``'s signature visible to ``inspect``.
    """

    @functools.wraps(f)
    def wrapped(x, *params):
        with jax.enable_x64(True):
            return np.asarray(f(x, *params), dtype=np.float64)

    return wrapped


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One NIST StRD nonlinear regression problem.

    ``x`` is 1-D, or ``(2, M)`` for Nelson; ``y`` is the response the model is
    fitted to (``log`` of the data column for Nelson). ``start1``, ``start2``,
    ``certified`` and ``certified_sd`` have one entry per parameter.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    start1: np.ndarray
    start2: np.ndarray
    certified: np.ndarray
    certified_sd: np.ndarray
    certified_rss: float
    difficulty: str  # "lower", "average" or "higher"
    n_obs: int = 0  # as stated in the header
    formula: str = field(default="", repr=False)  # the model as NIST writes it

    @property
    def model(self) -> Callable[..., Any]:
        """The ``jax.numpy`` model of :data:`MODELS`."""
        return MODELS[self.name]

    def start(self, which: int) -> np.ndarray:
        """Starting point 1 or 2."""
        if which == 1:
            return self.start1
        if which == 2:
            return self.start2
        raise ValueError(f"start must be 1 or 2, got {which!r}")


_PARAM_LINE = re.compile(r"^\s*b(\d+)\s*=\s*(.*)$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def data_dir() -> Path:
    """The data directory; raises ``FileNotFoundError`` (loudly) if it is absent."""
    if not DATA_DIR.is_dir():
        raise FileNotFoundError(
            f"NIST StRD data directory not found: {DATA_DIR}. The tests expect the "
            "27 .dat files in <dir>/shared/data/nist_strd beside the <dir>/main checkout."
        )
    return DATA_DIR


def _search(pattern: str, text: str, what: str, name: str, flags: int = 0) -> re.Match[str]:
    m = re.search(pattern, text, flags=re.MULTILINE | re.IGNORECASE | flags)
    if m is None:
        raise ValueError(f"{name}.dat: could not find the {what}")
    return m


def _floats(line: str) -> list[float]:
    return [float(tok) for tok in line.split()]


def parse(text: str, name: str) -> Problem:
    """Parse the text of a NIST StRD ``.dat`` file (``name`` is its stem)."""
    lines = text.splitlines()

    difficulty = _search(r"\b(lower|average|higher)\s+level\s+of\s+difficulty", text,
                         "difficulty level", name).group(1).lower()
    n_obs = int(_search(r"^\s*Number of Observations:\s*(\d+)", text,
                        "number of observations", name).group(1))
    certified_rss = float(_search(rf"^\s*Residual Sum of Squares:\s*({_NUMBER})", text,
                                  "residual sum of squares", name).group(1))

    # Model formula: the indented lines of the "Model:" block after its
    # "N Parameters" line, up to the starting-values table.
    model_block = _search(r"^Model:.*?\n(.*?)^\s*Starting values", text,
                          "model block", name, re.DOTALL).group(1)
    formula_lines = [ln.strip() for ln in model_block.splitlines()
                     if ln.strip() and not re.search(r"\bParameters?\b", ln)]
    formula = " ".join(formula_lines)

    # Parameter table: "bK = start1 start2 certified certified_sd".
    rows: dict[int, list[float]] = {}
    for ln in lines:
        m = _PARAM_LINE.match(ln)
        if m is None:
            continue
        values = _floats(m.group(2))
        if len(values) != 4:
            raise ValueError(f"{name}.dat: parameter line {ln!r} does not hold 4 numbers")
        rows[int(m.group(1))] = values
    if not rows or sorted(rows) != list(range(1, len(rows) + 1)):
        raise ValueError(f"{name}.dat: parameters are not numbered b1..bp: {sorted(rows)}")
    table = np.array([rows[k] for k in sorted(rows)], dtype=np.float64)

    # Data: everything after the last line beginning with "Data:", whose
    # remaining tokens name the columns ("y x" or "y x1 x2").
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Data:")]
    if not starts:
        raise ValueError(f"{name}.dat: no line begins with 'Data:'")
    columns = lines[starts[-1]].split()[1:]
    if not columns or columns[0] != "y":
        raise ValueError(f"{name}.dat: unexpected data header {lines[starts[-1]]!r}")
    data = np.array([_floats(ln) for ln in lines[starts[-1] + 1:] if ln.strip()],
                    dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(columns):
        raise ValueError(f"{name}.dat: data rows do not match the columns {columns}")
    if data.shape[0] != n_obs:
        raise ValueError(f"{name}.dat: {data.shape[0]} data rows, header says {n_obs}")

    y = data[:, 0]
    x = data[:, 1] if data.shape[1] == 2 else np.ascontiguousarray(data[:, 1:].T)
    if formula.lower().startswith("log[y]"):
        y = np.log(y)  # Nelson: the response is log[y]

    arrays = [x, y] + [np.ascontiguousarray(table[:, j]) for j in range(4)]
    for a in arrays:
        a.setflags(write=False)  # problems are cached and shared: keep them intact
    x, y, start1, start2, certified, certified_sd = arrays
    return Problem(
        name=name, x=x, y=y, start1=start1, start2=start2, certified=certified,
        certified_sd=certified_sd, certified_rss=certified_rss, difficulty=difficulty,
        n_obs=n_obs, formula=formula,
    )


@functools.lru_cache(maxsize=None)
def load(name: str) -> Problem:
    """Load (and cache) problem ``name`` from :data:`DATA_DIR`."""
    path = data_dir() / f"{name}.dat"
    if not path.is_file():
        raise FileNotFoundError(f"NIST StRD problem file not found: {path}")
    return parse(path.read_text(), name)


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------


def digits(b: Any, certified: Any) -> float:
    """Number of agreeing significant digits (log relative error, LRE).

    The minimum over parameters of ``-log10(|b - c| / |c|)``, capped at
    :data:`MAX_DIGITS` (11, an exact match included) and floored at 0 (an
    answer off by more than 100 % scores 0, as does a non-finite ``b`` or one
    of the wrong length).
    """
    b = np.asarray(b, dtype=np.float64).ravel()
    c = np.asarray(certified, dtype=np.float64).ravel()
    if b.shape != c.shape or not np.all(np.isfinite(b)):
        return 0.0
    with np.errstate(divide="ignore"):
        lre = -np.log10(np.abs(b - c) / np.abs(c))
    return float(np.clip(lre.min(), 0.0, MAX_DIGITS))


@dataclass
class RunResult:
    """The outcome of one run: problem ``name`` from starting point ``start``."""

    name: str
    start: int
    digits: float
    popt: np.ndarray | None = field(default=None, repr=False)
    pcov: np.ndarray | None = field(default=None, repr=False)
    error: BaseException | None = None  # the exception the fit raised, if any
    seconds: float = math.nan

    @property
    def ok(self) -> bool:
        """Whether the fit returned a result (without raising)."""
        return self.error is None

    def __str__(self) -> str:
        note = f"  [{type(self.error).__name__}: {self.error}]" if self.error else ""
        return f"{self.name:<9} start{self.start}  {self.digits:5.2f}{note}"


def run(name: str, start: int, fit: Callable[..., Any], *, model=None, **kwargs) -> RunResult:
    """Fit problem ``name`` from starting point ``start`` (1 or 2) and score it.

    Calls ``fit(f, x, y, p0=start_values, **kwargs)`` with a
    ``scipy.optimize.curve_fit``-compatible ``fit``, where ``f`` is
    ``model`` if given (e.g. ``numpy_model(MODELS[name])`` for scipy) and
    :data:`MODELS` ``[name]`` otherwise. Returns a :class:`RunResult` whose
    ``digits`` are :func:`digits` of ``popt``; if ``fit`` raises (e.g.
    scipy's ``RuntimeError`` when it runs out of evaluations) the digits are
    0 and the exception is kept in ``error``.
    """
    problem = load(name)
    f = MODELS[name] if model is None else model
    t0 = time.perf_counter()
    try:
        out = fit(f, problem.x, problem.y, p0=problem.start(start), **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure scores 0 and is recorded
        return RunResult(name, start, 0.0, error=exc, seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    popt, pcov = np.asarray(out[0], dtype=np.float64), np.asarray(out[1], dtype=np.float64)
    return RunResult(name, start, digits(popt, problem.certified), popt, pcov,
                     seconds=seconds)
