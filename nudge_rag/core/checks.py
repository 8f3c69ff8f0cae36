"""Input checks shared by the core: each raises ``NudgeError`` naming the argument and the fix."""

from __future__ import annotations

import numpy as np

from nudge_rag.core.errors import NudgeError


def require_float_dtype(arr: np.ndarray, what: str, *, integers: bool = False) -> None:
    """Refuse an array that does not hold floats (or integers, where ``integers`` allows)."""
    ok = np.issubdtype(arr.dtype, np.floating) or (
        integers and np.issubdtype(arr.dtype, np.integer)
    )
    if not ok:
        msg = f"{what}: expected float vectors, found dtype {arr.dtype}."
        raise NudgeError(msg)


def require_finite_rows(arr: np.ndarray, what: str) -> None:
    """Refuse a 2-d array with a NaN or inf, naming its first bad row (one pass when clean)."""
    if np.isfinite(arr.sum(dtype=np.float64)):
        return
    bad = np.nonzero(~np.isfinite(arr).all(axis=1))[0]
    if len(bad):  # else the sum only overflowed
        msg = (
            f"{what} row {int(bad[0])} holds NaN or inf ({len(bad)} such rows); "
            "pass finite vectors."
        )
        raise NudgeError(msg)
