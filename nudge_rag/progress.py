"""Progress bars when ``tqdm`` is installed (the ``cli`` and ``demo`` extras), none otherwise.

tqdm stays optional: a bar is a courtesy on a terminal, not something a library installed with
``[langchain,openai,faiss]`` should fail without (before, the labeler imported it at every run).
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    """Stands in for a tqdm bar: every call does nothing."""

    def update(self, n: float = 1) -> None:
        """Nothing to draw."""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to draw."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(*, total: int, desc: str, disable: bool = False, leave: bool = True) -> Any:
    """A ``tqdm.auto`` bar, or one that draws nothing when ``disable`` or tqdm is missing."""
    if not disable:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # an optional extra: no bar, the work goes on
            return _NoBar()
        return tqdm(total=total, desc=desc, leave=leave)
    return _NoBar()
