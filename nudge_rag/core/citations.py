"""Citations in an answer: the ``[id]`` marks an agent or a chain leaves in its text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nudge_rag.core.errors import NudgeError


@dataclass(frozen=True)
class Citations:
    """What :meth:`NudgeSurface.record_citations` found in an answer."""

    relevant_ids: list[str]
    unknown_ids: list[str]


_CITATION = re.compile(r"\[([^\[\]\n]{1,200})\]")


def cited_ids(answer: Any) -> list[str]:
    """The ids an answer cites as ``[id]`` (a string, or a message with ``.content``), in order."""
    text = getattr(answer, "content", answer)
    if isinstance(text, list):  # content blocks of a chat message
        text = " ".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in text)
    if not isinstance(text, str):
        msg = (
            f"answer: found {type(answer).__name__}, expected a string or a message with "
            "string .content."
        )
        raise NudgeError(msg)
    found: list[str] = []
    for match in _CITATION.finditer(text):
        for part in match.group(1).split(","):
            part = part.strip()
            if part.lower().startswith("id:"):
                part = part[3:].strip()
            if part:
                found.append(part)
    return list(dict.fromkeys(found))


def format_chunks(ids: list[str], texts: list[str]) -> str:
    """Each chunk as ``[id] text``, one block each, for a model to read and cite."""
    blocks = [f"[{i}] {t}" for i, t in zip(ids, texts, strict=True)]
    return "\n\n".join(blocks) or "No documents found."
