"""Input checks shared by the core: one validator where vectors enter, and one per kind of number.

:func:`check_vectors` is the only place that decides what a matrix of vectors may hold, in the
spirit of scikit-learn's ``check_array``: 2-d, a float dtype, the expected rows and dimensions,
and values that stay finite *as float32* (the precision every store and every NUDGE kernel
computes in: ``1e39`` is finite in float64 and ``inf`` in float32) with a squared norm that fits
float32 too (a row of ``1e30`` normalises to zeros). :func:`check_int` and :func:`check_float`
validate scalar arguments. Each raises ``BadInputError`` naming the argument, what was found, what
is expected and the fix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError

__all__ = [
    "FLOAT32_MAX",
    "MAX_K",
    "MAX_NORM",
    "check_float",
    "check_int",
    "check_k",
    "check_vectors",
]

FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38
MAX_NORM = math.sqrt(FLOAT32_MAX)  # 1.8e19: the largest norm whose square is a finite float32
_BLOCK_ELEMENTS = 1 << 22  # rows are checked in blocks of at most this many values (16 MiB)


def check_vectors(
    x: Any,
    *,
    what: str,
    n_rows: int | None = None,
    dim: int | None = None,
    dim_source: str = "the store",
    dtype: type[np.floating[Any]] | None = np.float32,
    integers: bool = False,
    row_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Validate a matrix of vectors where it enters; return it as a C-contiguous ``dtype`` array.

    ``x`` is an array or a sequence of rows, ``(n_rows, dim)`` when those are given; its dtype
    must be a float (or an integer, where ``integers`` allows). Every value must be finite once
    cast to float32 and every row's squared norm must fit float32 (``‖x‖ < 1.8e19``); the cheap
    check runs first (one float32 dot product per block), the row search only when it fails.
    ``dtype=None`` keeps a float array as given (no copy; e.g. a memory-mapped corpus that is
    streamed later), checking it block by block. ``dim_source`` says who expects ``dim`` (for
    the message); ``row_names`` (e.g. the ids) name a bad row beside its number. Raises
    ``BadInputError`` naming ``what``, the first bad row, what was found, what is expected and the
    fix.
    """
    arr = _as_array(x, what)
    if arr.ndim != 2:
        if n_rows == 0 and arr.size == 0:
            return np.zeros((0, dim or 0), dtype=dtype or np.float32)
        fix = " (for one vector, pass x.reshape(1, -1))" if arr.ndim == 1 else ""
        msg = (
            f"{what}: expected a 2-d (rows, dim) matrix of vectors, found shape {arr.shape}; "
            f"pass one vector per row{fix}."
        )
        raise BadInputError(msg)
    is_float = np.issubdtype(arr.dtype, np.floating)
    if not is_float and not (integers and np.issubdtype(arr.dtype, np.integer)):
        msg = (
            f"{what}: expected float vectors, found dtype {arr.dtype}; pass e.g. "
            "np.asarray(vectors, dtype=np.float32)."
        )
        raise BadInputError(msg)
    if n_rows is not None and arr.shape[0] != n_rows:
        msg = (
            f"{what}: expected {n_rows} rows (one vector per id), found {arr.shape[0]} "
            f"(shape {arr.shape}); pass one vector per id, in the same order."
        )
        raise BadInputError(msg)
    if dim is not None and arr.shape[1] != dim:
        msg = (
            f"{what}: its vectors have {arr.shape[1]} dimensions, {dim_source} expects {dim}; "
            f"pass {dim}-d vectors from the same embedding model."
        )
        raise BadInputError(msg)
    if dtype is None:
        out = arr if is_float else arr.astype(np.float64)
    else:
        with np.errstate(over="ignore"):  # beyond float32's range: inf, refused just below
            out = np.ascontiguousarray(arr, dtype=dtype)
    _check_finite_float32(out if out.dtype == np.float32 else arr, what, given=arr, names=row_names)
    return out


def _as_array(x: Any, what: str) -> np.ndarray:
    """``x`` as an array; a ragged sequence of rows or a non-numeric object is refused."""
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.dtype == object:
        try:
            shapes = sorted({np.shape(r) for r in x}, key=str)[:5]
        except TypeError:
            shapes = []
        found = f"rows of shapes {shapes}" if shapes else f"{type(x).__name__}"
        msg = (
            f"{what}: expected a matrix of numbers (rows of one length), found {found}; pass "
            "a 2-d float array, one vector per row."
        )
        raise BadInputError(msg)
    return arr


def _check_finite_float32(
    arr: np.ndarray, what: str, *, given: np.ndarray, names: Sequence[str] | None
) -> None:
    """Refuse a value that is NaN or inf as float32, or a row whose squared norm overflows it.

    ``arr`` is checked (cast to float32 block by block unless it is float32); ``given`` is the
    caller's array, quoted in the message.
    """
    n, d = arr.shape
    if n == 0 or d == 0:
        return
    step = max(1, _BLOCK_ELEMENTS // d)
    for start in range(0, n, step):
        b32 = _float32(arr[start : start + step])
        flat = b32.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):  # every value and every squared norm is finite
                continue
            sq = np.einsum("ij,ij->i", b32, b32)  # per row, in float32 as the kernels compute
        bad = np.nonzero(~np.isfinite(sq))[0]
        if len(bad):
            _raise_bad_row(given, start + int(bad[0]), what, names)


def _float32(block: np.ndarray) -> np.ndarray:
    if block.dtype == np.float32 and block.flags.c_contiguous:
        return block
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(block, dtype=np.float32)


def _raise_bad_row(arr: np.ndarray, row: int, what: str, names: Sequence[str] | None) -> None:
    given = np.asarray(arr[row])
    where = f"row {row}" if names is None else f"row {row} (id {names[row]!r})"
    as32 = _float32(given.reshape(1, -1))[0]
    cols = np.nonzero(~np.isfinite(as32))[0]
    if len(cols):
        col = int(cols[0])
        found = given[col]
        if np.isfinite(found):
            msg = (
                f"{what} {where} holds NaN or inf once stored as float32 (found {found:.4g} in "
                f"column {col}, beyond float32's ±3.4e38); expected finite float32 values; "
                "scale the vector down (or normalise it)."
            )
        else:
            msg = (
                f"{what} {where} holds NaN or inf (found {found} in column {col}); expected "
                "finite values; pass finite vectors (re-embed that text)."
            )
    else:
        norm = float(np.linalg.norm(given.astype(np.float64)))
        msg = (
            f"{what} {where} has norm {norm:.4g}, whose square overflows float32 (limit "
            f"{MAX_NORM:.3g}); expected smaller vectors; scale it down (or normalise it)."
        )
    raise BadInputError(msg)


def check_int(
    x: Any, *, what: str, low: int | None = None, high: int | None = None, hint: str = ""
) -> int:
    """``x`` as an ``int`` in ``[low, high]``; a bool, a float or a string is refused."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        msg = f"{what}: expected an integer, found {type(x).__name__} {x!r}{_hint(hint)}"
        raise BadInputError(msg)
    value = int(x)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = _range(low, high)
        msg = f"{what}: found {value}, expected an integer {bounds}".rstrip() + _hint(hint)
        raise BadInputError(msg)
    return value


def check_float(
    x: Any,
    *,
    what: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    hint: str = "",
) -> float:
    """``x`` as a finite ``float`` in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        msg = f"{what}: expected a number, found {type(x).__name__} {x!r}{_hint(hint)}"
        raise BadInputError(msg)
    value = float(x)
    below = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        bounds = _range(low, high, low_open=low_open)
        expected = f"a finite number {bounds}" if bounds else "a finite number"
        msg = f"{what}: found {value}, expected {expected}{_hint(hint)}"
        raise BadInputError(msg)
    return value


def _range(low: float | None, high: float | None, *, low_open: bool = False) -> str:
    """``"in [low, high]"``, ``"≥ low"``, ``"≤ high"`` or ``""``."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}]"
    if low is not None:
        return f"{'>' if low_open else '≥'} {low}"
    if high is not None:
        return f"≤ {high}"
    return ""


def _hint(hint: str) -> str:
    return f"; {hint}." if hint else "."


MAX_K = 1_000_000
"""The most results one search may ask for: beyond any real candidate pool (rerankers fetch
thousands), below what would make a store allocate gigabytes (``k=1e9``)."""


def check_k(k: Any, *, what: str = "k") -> int:
    """A search's ``k``: an integer in ``[1, MAX_K]``, checked before the store sees it."""
    return check_int(
        k, what=what, low=1, high=MAX_K, hint="ask for the number of results you will use"
    )
