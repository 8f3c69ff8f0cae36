"""LangSmith: retriever runs and their feedback as records for ``store.import_traces``.

Reads what the ``langsmith`` SDK's ``Client.list_runs`` / ``Client.list_feedback`` return
(``langsmith.schemas.Run`` / ``Feedback``), or the same objects as JSON / JSONL files or dicts.

Mapping:

- a run with ``run_type == "retriever"`` is one past search: ``inputs["query"]`` the query,
  ``outputs["documents"]`` the results in order (chunk id: ``metadata[id_key]``, else the
  document's ``id``, else ``metadata["id"]``; score: ``metadata[score_key]`` when given), its
  ``start_time`` the time and its ``id`` the external id (source ``"langsmith"``; a LangChain
  retriever over a nudge-rag store records the same run id live);
- each ``Feedback`` whose ``run_id`` is that run, or the root run of its trace (``trace_id``;
  then it applies to every retriever run of the trace): ``correction`` names chunk ids (a list
  of ids, ``{"relevant_ids": [...], "irrelevant_ids": [...]}`` or ``{"documents": [...]}``),
  and so does a ``value`` that is such a list or dict; ``score`` (a bool is 1 / 0) is the
  rating, ``comment`` the text, ``created_at`` the time. A rating alone names no chunk: the
  engine treats it as answer-level feedback. (``correction`` / ``value`` given as JSON text are
  parsed first.) Feedback whose ``feedback_source.type`` is ``"model"`` (an LLM evaluator's) is
  model-made (``provenance="model"``); the rest is human.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from nudge_rag.importers._common import (
    document_id,
    document_score,
    every_dict,
    feedback_record,
    get,
    lazy,
    number_or_nan,
    query_text,
    results,
    scaled_rating,
    score_scale,
    searches,
)
from nudge_rag.importers.resolve import Resolver
from nudge_rag.state.records import (
    LANGSMITH,
    FeedbackRecord,
    Records,
    Resolution,
    TraceRecord,
    Unreadable,
)

__all__ = ["read"]


def read(
    runs: Iterable[Any] | str,
    feedback: Iterable[Any] | str = (),
    *,
    id_key: str | None = None,
    score_key: str | None = None,
    numeric_range: tuple[float, float] = (0.0, 1.0),
    store: Any = None,
) -> Records:
    """Records of the retriever runs in ``runs`` with the ``feedback`` on them or their traces.

    ``runs`` / ``feedback``: ``Run`` / ``Feedback`` objects, dicts, or a JSON / JSONL path.
    ``id_key``: the document metadata key holding the chunk id (default: the document's id,
    else the usual metadata keys). ``store``: the store the runs searched, to find documents
    kept without an id by a metadata value it holds (e.g. ``source``) or by their text (see
    :mod:`~nudge_rag.importers.resolve`).
    ``numeric_range``: the (worst, best) of numeric feedback scores, mapped onto 0..1 ratings.
    The feedback is read now (and held, by run); the runs lazily, as the records are iterated.
    """
    scale = score_scale(numeric_range)
    by_run: dict[str, list[FeedbackRecord]] = {}
    for d in every_dict(feedback, "feedback", "pass langsmith Feedback objects or their JSON."):
        target = get(d, "run_id", "trace_id")
        record = _feedback(d, scale)
        if target is not None and record is not None:
            by_run.setdefault(str(target), []).append(record)

    def records() -> Iterator[TraceRecord | Unreadable]:
        entries = searches(runs, "runs", "pass langsmith Run objects or their JSON.", _documents)
        make = partial(_record, by_run=by_run, score_key=score_key)
        yield from Resolver(store, id_key).stream(entries, make)

    return lazy(records, runs)


def _record(
    d: Mapping,
    docs: list[Any],
    ids: list[str | None],
    res: Resolution,
    *,
    by_run: dict[str, list[FeedbackRecord]],
    score_key: str | None,
) -> TraceRecord:
    run_id = str(d.get("id"))
    fb = by_run.get(run_id, [])
    trace = d.get("trace_id")
    if trace is not None and str(trace) != run_id:
        fb = fb + by_run.get(str(trace), [])
    found, scores = results(docs, ids, partial(document_score, score_key=score_key))
    return TraceRecord(
        query=query_text(d.get("inputs") or {}),
        result_ids=found,
        scores=scores,
        time=d.get("start_time"),
        external_id=run_id,
        source=LANGSMITH,
        feedback=fb,
        resolution=res,
    )


def _documents(d: Mapping) -> list[Any] | None:
    """A retriever run's output documents (none when its outputs are not shaped so); None for
    any other run."""
    if d.get("run_type") != "retriever":
        return None
    outputs = d.get("outputs")
    docs = outputs.get("documents") if isinstance(outputs, Mapping) else None
    return list(docs) if isinstance(docs, list) else []


def _ids(value: Any) -> tuple[list[str], list[str]]:
    """(relevant, irrelevant) chunk ids named by a correction or value, if any."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return [], []
    if isinstance(value, list):
        ids = [document_id(v, None) for v in value]
        return [i for i in ids if i is not None], []
    if isinstance(value, Mapping):
        if "documents" in value and isinstance(value["documents"], list):
            return _ids(value["documents"])
        rel = value.get("relevant_ids") or []
        irr = value.get("irrelevant_ids") or []
        if isinstance(rel, list) and isinstance(irr, list):
            return [str(i) for i in rel], [str(i) for i in irr]
    return [], []


def _feedback(d: Mapping, scale: tuple[float, float]) -> FeedbackRecord | None:
    rel, irr = _ids(d.get("correction"))
    more_rel, more_irr = _ids(d.get("value"))
    rel += more_rel
    irr += more_irr
    score = d.get("score")
    rating = None
    if isinstance(score, bool):
        rating = 1.0 if score else 0.0
    elif score is not None:
        rating = scaled_rating(number_or_nan(score), scale)
    src = d.get("feedback_source")
    kind = (src.get("type") if isinstance(src, Mapping) else getattr(src, "type", None)) or ""
    prov = "model" if str(kind).lower() == "model" else "human"
    return feedback_record(
        d, rel, irr, rating, get(d, "created_at", "modified_at"), provenance=prov
    )
