"""Langfuse: retriever observations and their scores as records for ``store.import_traces``.

Reads the public API's JSON (``GET /api/public/observations`` and ``/api/public/scores``: a
page ``{"data": [...]}``, a list of its items, or a JSON / JSONL file of them) or the SDK's
objects (read by attribute, camelCase or snake_case).

Mapping:

- an observation of type ``RETRIEVER``, or any observation whose ``name`` is in ``names``, is
  one past search: ``input`` the query (a string, or ``query`` / ``input`` / ``question`` of a
  dict), ``output`` the results (a list, or ``documents`` of a dict; each a chunk id string or a
  document dict: ``metadata[id_key]``, ``id`` or ``metadata["id"]``; ``score``), ``startTime``
  the time, ``id`` the external id (source ``"langfuse"``);
- each score whose ``observationId`` is that observation, or with no observation on its
  ``traceId`` (it then applies to every retriever observation of the trace): ``NUMERIC``
  gives the rating ``value`` (mapped from ``numeric_range`` onto 0..1), ``BOOLEAN`` 1 / 0,
  ``CATEGORICAL`` a label (``relevant`` / ``irrelevant``, ``good`` / ``bad``, ...) read as 1 / 0;
  ``comment`` is the text. Chunk ids come from the score's ``metadata``: ``relevant_ids`` /
  ``irrelevant_ids`` lists, or a ``document_id`` (relevant when the score or label is
  positive, irrelevant when negative). A score whose ``source`` is ``EVAL`` (an evaluator's)
  is model-made (``provenance="model"``); ``API`` / ``ANNOTATION`` scores are human.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from nudge_rag.importers._common import (
    document_score,
    every_dict,
    feedback_record,
    get,
    label_relevance,
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
    LANGFUSE,
    FeedbackRecord,
    Records,
    Resolution,
    TraceRecord,
    Unreadable,
)

__all__ = ["read"]

_HINT = "pass Langfuse API objects or their JSON."


def read(
    observations: Iterable[Any] | Mapping | str,
    scores: Iterable[Any] | Mapping | str = (),
    *,
    names: Iterable[str] = (),
    id_key: str | None = None,
    score_key: str | None = None,
    numeric_range: tuple[float, float] = (0.0, 1.0),
    store: Any = None,
) -> Records:
    """Records of the retriever observations with the scores on them or their traces.

    Retriever observations: type ``RETRIEVER``, or what Langfuse's LangChain callback handler
    logs for a retriever (a ``SPAN`` named after the retriever class, ``...Retriever``, or
    whose output is a list of LangChain documents). ``names``: also read observations with
    these names (spans a user made around a search). ``id_key`` / ``store``: how documents
    kept without an id find their chunk (see :mod:`~nudge_rag.importers.resolve`).
    ``numeric_range``: the (worst, best) of your ``NUMERIC`` scores, mapped onto nudge-rag's 0..1
    ratings (0.5 and above is a liked answer): ``(1, 5)`` for five stars. The scores are read
    now (and held, by observation); the observations lazily, as the records are iterated.
    """
    scale = score_scale(numeric_range)
    wanted = set(names)
    by_obs: dict[str, list[FeedbackRecord]] = {}
    by_trace: dict[str, list[FeedbackRecord]] = {}
    for d in every_dict(scores, "scores", _HINT, data_key="data"):
        record = _feedback(d, scale)
        if record is None:
            continue
        obs = get(d, "observationId", "observation_id")
        if obs is not None:
            by_obs.setdefault(str(obs), []).append(record)
        elif get(d, "traceId", "trace_id") is not None:
            by_trace.setdefault(str(get(d, "traceId", "trace_id")), []).append(record)

    def records() -> Iterator[TraceRecord | Unreadable]:
        documents = partial(_documents, wanted=wanted)
        entries = searches(observations, "observations", _HINT, documents, data_key="data")
        make = partial(_record, by_obs=by_obs, by_trace=by_trace, score_key=score_key)
        yield from Resolver(store, id_key).stream(entries, make)

    return lazy(records, observations)


def _record(
    d: Mapping,
    docs: list[Any],
    ids: list[str | None],
    res: Resolution,
    *,
    by_obs: dict[str, list[FeedbackRecord]],
    by_trace: dict[str, list[FeedbackRecord]],
    score_key: str | None,
) -> TraceRecord:
    oid = str(d.get("id"))
    trace = get(d, "traceId", "trace_id")
    found, scores = results(docs, ids, partial(document_score, score_key=score_key))
    return TraceRecord(
        query=query_text(d.get("input")),
        result_ids=found,
        scores=scores,
        time=get(d, "startTime", "start_time"),
        external_id=oid,
        source=LANGFUSE,
        feedback=by_obs.get(oid, []) + by_trace.get(str(trace), []),
        resolution=res,
    )


def _documents(d: Mapping, wanted: set[str]) -> list[Any] | None:
    """A retriever observation's output documents; None for any other observation."""
    if not _is_search(d, wanted):
        return None
    output = d.get("output")
    if isinstance(output, Mapping):
        output = get(output, "documents", "nodes", "results", default=[])
    return output if isinstance(output, list) else []


def _is_search(d: Mapping, wanted: set[str]) -> bool:
    """A retriever observation: typed so, named in ``wanted``, or the LangChain handler's span
    for a retriever (named after its class, or with LangChain documents as output)."""
    kind = str(d.get("type", "")).upper()
    name = d.get("name")
    if kind == "RETRIEVER" or name in wanted:
        return True
    if kind != "SPAN":
        return False
    if isinstance(name, str) and name.endswith("Retriever"):
        return True
    output = d.get("output")
    return (
        isinstance(output, list)
        and bool(output)
        and all(isinstance(x, Mapping) and "page_content" in x for x in output)
    )


def _feedback(d: Mapping, scale: tuple[float, float]) -> FeedbackRecord | None:
    kind = str(get(d, "dataType", "data_type", default="NUMERIC")).upper()
    value = d.get("value")
    label = get(d, "stringValue", "string_value")
    if kind == "BOOLEAN":
        rating: float | None = 1.0 if number_or_nan(value) >= 0.5 or value is True else 0.0
    elif kind == "CATEGORICAL":
        good = label_relevance(label if label is not None else value, None)
        rating = None if good is None else float(good)
    else:
        rating = scaled_rating(number_or_nan(value), scale)
    found = d.get("metadata")
    meta: Mapping = found if isinstance(found, Mapping) else {}
    rel = [str(i) for i in meta.get("relevant_ids") or []]
    irr = [str(i) for i in meta.get("irrelevant_ids") or []]
    doc = meta.get("document_id")
    if doc is not None and rating is not None:
        (rel if rating >= 0.5 else irr).append(str(doc))
        rating = None  # a per-document judgment, not a rating of the whole search
    # a score from an evaluator run (source "EVAL") is an LLM's, not a person's
    prov = "model" if str(d.get("source") or "").upper() == "EVAL" else "human"
    when = get(d, "timestamp", "createdAt", "created_at")
    return feedback_record(d, rel, irr, rating, when, provenance=prov)
