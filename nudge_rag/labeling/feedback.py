"""The grades that feedback gives: per chunk (relevant / irrelevant ids) and per answer (a
rating, with the answer it judges)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nudge_rag.state.state import POSITIVE_RATING  # the rating scale is the state's

__all__ = ["POSITIVE_RATING", "AnswerRating", "answer_ratings", "feedback_grades"]


def feedback_grades(feedback: Iterable[Any]) -> dict[str, dict[str, float]]:
    """Per trace id, the grades that feedback gives: relevant ids 1, irrelevant ids 0.

    Feedback is applied in time order, so a later verdict on an id replaces an earlier one.
    A rating alone names no chunk, so it gives no per-chunk grade.
    """
    out: dict[str, dict[str, float]] = {}
    for fb in sorted(feedback, key=lambda f: getattr(f, "time", 0) or 0):
        grades = out.setdefault(str(fb.trace_id), {})
        for i in fb.irrelevant_ids or ():
            grades[str(i)] = 0.0
        for i in fb.relevant_ids or ():
            grades[str(i)] = 1.0
    return out


@dataclass(frozen=True)
class AnswerRating:
    """A trace's latest answer rating (``positive``: at least :data:`POSITIVE_RATING`) and the
    answer text stored with it."""

    rating: float
    answer: str | None

    @property
    def positive(self) -> bool:
        """Whether the user found the answer helpful."""
        return self.rating >= POSITIVE_RATING


def answer_ratings(feedback: Iterable[Any]) -> dict[str, AnswerRating]:
    """Per trace id, its latest rating (feedback in time order), with the answer it judges: the
    row's text when it was recorded as the answer (a comment is never read as one)."""
    out: dict[str, AnswerRating] = {}
    for fb in sorted(feedback, key=lambda f: getattr(f, "time", 0) or 0):
        if fb.rating is not None:
            answer = fb.text if getattr(fb, "is_answer", False) else None
            out[str(fb.trace_id)] = AnswerRating(float(fb.rating), answer)
    return out
