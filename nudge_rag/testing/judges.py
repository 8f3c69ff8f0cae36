"""Judges for :class:`~nudge_rag.testing.openai_stub.OpenAIStub` that answer from a dataset.

:class:`QrelsJudge` reads the request line that :mod:`nudge_rag.core.labels` puts in every
prompt, grades the candidates from qrels (optionally flipping a seeded fraction of the
judgments, to simulate a noisy LLM), and answers question requests from a map of questions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from nudge_rag.core.labels import MAX_GRADE, parse_request


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _unit(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class QrelsJudge:
    """Answer judge requests from ``qrels`` (query text → {doc id: grade}).

    ``flip`` is the fraction of judgments flipped (relevant ↔ not relevant), drawn per
    (query, candidate) from ``seed``, so a retry gets the same answer. ``questions`` maps a
    doc id to the questions returned for a question request (the first ``n``). ``calls``
    counts the requests answered, by task.
    """

    def __init__(
        self,
        qrels: Mapping[str, Mapping[str, float]],
        *,
        questions: Mapping[str, Sequence[str]] | None = None,
        flip: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.qrels = {
            _norm(q): {str(d): float(g) for d, g in rel.items()} for q, rel in qrels.items()
        }
        self.questions = {str(k): list(v) for k, v in (questions or {}).items()}
        self.flip = flip
        self.seed = seed
        self.calls: dict[str, int] = {}

    def grade(self, query: str, doc_id: str) -> int:
        """The grade this judge gives ``doc_id`` for ``query`` (after any flip)."""
        g = int(min(max(self.qrels.get(_norm(query), {}).get(doc_id, 0.0), 0.0), MAX_GRADE))
        if self.flip > 0 and _unit(self.seed, _norm(query), doc_id) < self.flip:
            g = 0 if g > 0 else 1
        return g

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        request = parse_request(body.get("messages", []))
        task = request.get("task")
        self.calls[task] = self.calls.get(task, 0) + 1
        if task == "judge":
            query = request["query"]
            return {
                "judgments": [
                    {"id": c["id"], "grade": self.grade(query, c["id"])}
                    for c in request["candidates"]
                ]
            }
        if task == "questions":
            n = int(request["n"])
            return {"questions": self.questions.get(request["passage"]["id"], [])[:n]}
        msg = f"unknown task {task!r}"
        raise ValueError(msg)
