"""nudge-rag's plain JSONL schema: one past search per line, for any other tool.

Each line is a JSON object (only ``query`` is required)::

    {"query": "how do refunds work?",           # the query text
     "external_id": "req-8812",                 # the tool's id (default: derived from content)
     "source": "my-app",                        # its id space (default: "jsonl")
     "time": "2025-03-01T12:00:00Z",            # epoch seconds or ISO 8601 (default: now)
     "result_ids": ["refund", "cancel"],        # returned chunk ids, best first
     "scores": [0.82, 0.41],                    # their scores (optional)
     "embedding": [0.01, ...],                  # the query vector (optional: embedded)
     "k": 4,                                    # how many were asked for (optional)
     "feedback": [{"relevant_ids": ["refund"], "irrelevant_ids": [], "rating": 1.0,
                   "text": "thanks", "time": 1740830400,
                   "provenance": "human"}]}             # or "model" (an LLM evaluator's)

``TraceLog.export_jsonl`` writes this schema too (its ``id`` is then the external id, source
``"nudge-rag"``), so one store's history can be imported into another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nudge_rag.errors import BadInputError
from nudge_rag.importers._common import converted
from nudge_rag.state.records import JSONL, FeedbackRecord, Records, TraceRecord, Unreadable

__all__ = ["read"]

_FIELDS = {
    "query",
    "external_id",
    "source",
    "time",
    "result_ids",
    "scores",
    "embedding",
    "k",
    "filter",
    "feedback",
    "id",
    "score_kind",
}


def read(path: str | os.PathLike[str], *, source: str = JSONL) -> Records:
    """The records of the JSONL file ``path``, read lazily (one line at a time, as they are
    iterated). A line that is not a JSON object of the schema comes as an item naming it:
    ``import_traces`` lists it in ``report.bad`` and imports the rest; iterating raises."""
    p = Path(path)
    try:
        p.open("rb").close()
    except OSError as e:
        msg = f"path: cannot read {p} ({e}); pass the path of a JSONL file."
        raise BadInputError(msg) from None

    def records() -> Iterator[TraceRecord | Unreadable]:
        with p.open(encoding="utf-8", errors="surrogateescape") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    why = f"not valid JSON ({e.msg}, column {e.colno}); fix or remove that line."
                    yield Unreadable(f"{p} line {n}", why)
                    continue
                except RecursionError:
                    yield Unreadable(f"{p} line {n}", "not valid JSON (nested too deeply).")
                    continue
                if not isinstance(obj, Mapping):
                    why = f"expected a JSON object, found {type(obj).__name__}."
                    yield Unreadable(f"{p} line {n}", why)
                    continue
                yield converted(f"{p} line {n}", _record, obj, source)

    return Records(records, once=False)


def _record(obj: Mapping[str, Any], source: str) -> TraceRecord:
    return record(obj, where="", source=source)


def record(obj: Mapping[str, Any], *, where: str = "record", source: str = JSONL) -> TraceRecord:
    """One JSONL object as a TraceRecord (unknown keys are an error naming them)."""
    at = f"{where}: " if where else ""
    extra = sorted(set(obj) - _FIELDS)
    if extra:
        msg = f"{at}unknown fields {extra}; the schema's fields are {sorted(_FIELDS)}."
        raise BadInputError(msg)
    feedback = obj.get("feedback") or []
    if not isinstance(feedback, list) or not all(isinstance(f, Mapping) for f in feedback):
        msg = f"{at}feedback must be a list of objects, found {feedback!r:.80}."
        raise BadInputError(msg)
    fb = []
    for f in feedback:
        fb.append(
            FeedbackRecord(
                relevant_ids=f.get("relevant_ids") or [],
                irrelevant_ids=f.get("irrelevant_ids") or [],
                rating=f.get("rating"),
                text=f.get("text"),
                time=f.get("time"),
                provenance=f.get("provenance") or "human",
            )
        )
    if obj.get("source"):
        src, ext = str(obj["source"]), obj.get("external_id")
    elif "id" in obj:  # a nudge-rag export: its own trace id
        src, ext = "nudge-rag", obj["id"]
    else:
        src, ext = source, obj.get("external_id")
    return TraceRecord(
        query=obj.get("query"),
        embedding=obj.get("embedding") or None,
        result_ids=obj.get("result_ids") or [],
        scores=obj.get("scores"),
        time=obj.get("time"),
        external_id=None if ext is None else str(ext),
        source=src,
        feedback=fb,
        k=obj.get("k"),
        filter=obj.get("filter"),
    )
