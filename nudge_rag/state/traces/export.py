"""Exporting the trace log: every trace with its feedback as one strict-JSON line, to a local file
replaced atomically and owner-only (0600). Nothing leaves the machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nudge_rag.state.files import atomic_path
from nudge_rag.state.traces.schema import _IN_CHUNK, Trace, _strict_json

if TYPE_CHECKING:
    from nudge_rag.state.traces.log import TraceLog

__all__ = ["export_jsonl"]


def export_jsonl(log: TraceLog, path: str | os.PathLike[str]) -> int:
    """Write every trace of ``log``, with its feedback, as one strict-JSON line each; return the
    count (see :meth:`TraceLog.export_jsonl`)."""
    out = Path(path)
    if not out.parent.exists():
        out.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    kind = log.score_kind
    n = 0
    with atomic_path(out, mode=0o600) as tmp:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            page: list[Trace] = []
            for t in log.iter_traces():
                page.append(t)
                if len(page) >= _IN_CHUNK:
                    n += _export_page(log, fh, page, kind)
                    page = []
            n += _export_page(log, fh, page, kind)
    return n


def _export_page(log: TraceLog, fh: Any, page: list[Trace], kind: str | None) -> int:
    """Write one page of traces with their feedback (read in one query); return how many."""
    if not page:
        return 0
    by_trace: dict[str, list[dict]] = {}
    for f in log._feedback_of([t.id for t in page]):
        by_trace.setdefault(f.trace_id, []).append(
            {
                "time": f.time,
                "relevant_ids": f.relevant_ids,
                "irrelevant_ids": f.irrelevant_ids,
                "rating": f.rating,
                "text": f.text,
                "provenance": f.provenance,
            }
        )
    for t in page:
        rec = {
            "id": t.id,
            "time": t.time,
            "query": t.query,
            "embedding": t.embedding.tolist(),
            "k": t.k,
            "filter": t.filter,
            "result_ids": t.result_ids,
            "scores": t.scores,
            "score_kind": kind,
            "external_id": t.external_id,
            "source": t.source,
            "feedback": by_trace.get(t.id, []),
        }
        fh.write(_strict_json(rec) + "\n")
    return len(page)
