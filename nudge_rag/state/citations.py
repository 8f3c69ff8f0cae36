"""Citations in an answer: the ``[id]`` marks an agent or a chain leaves in its text."""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from nudge_rag.errors import BadInputError

__all__ = ["Citations", "answer_text", "cited_ids", "format_chunks"]


@dataclass(frozen=True)
class Citations:
    """What :meth:`NudgeSurface.record_citations` found in an answer."""

    relevant_ids: list[str]  #: cited and shown by the search: recorded as relevant
    unknown_ids: list[str]  #: cited ids the store does not hold (made up, deleted, misspelt)
    #: cited ids the store holds that this search did not show (another search's): not recorded
    not_shown_ids: list[str] = field(default_factory=list)


# [id] or [id1, id2]; not a markdown link "[text](url)" nor a footnote "[^1]"
_CITATION = re.compile(r"\[(?!\^)([^\[\]\n]{1,200})\](?!\()")


def answer_text(answer: Any) -> str:
    """The text of an answer: a string, or a chat message's ``.content`` (blocks joined)."""
    text = getattr(answer, "content", answer)
    if isinstance(text, list):  # content blocks of a chat message
        text = " ".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in text)
    if not isinstance(text, str):
        msg = (
            f"answer: found {type(answer).__name__}, expected a string or a message with "
            "string .content."
        )
        raise BadInputError(msg)
    return text


def cited_ids(answer: Any, *, whole: Container[str] = ()) -> list[str]:
    """The ids an answer cites as ``[id]`` or ``[id1, id2]`` (a string, or a message with
    ``.content``), in order; a bracket whose whole text is in ``whole`` is one id."""
    text = answer_text(answer)
    found: list[str] = []
    for match in _CITATION.finditer(text):
        inside = match.group(1).strip()
        parts = [inside] if inside in whole else [p.strip() for p in inside.split(",")]
        for part in parts:
            if part.lower().startswith("id:"):
                part = part[3:].strip()
            if part:
                found.append(part)
    return list(dict.fromkeys(found))


def format_chunks(ids: list[str], texts: list[str]) -> str:
    """Each chunk as ``[id] text``, one block each, for a model to read and cite."""
    blocks = [f"[{i}] {t}" for i, t in zip(ids, texts, strict=True)]
    return "\n\n".join(blocks) or "No documents found."
