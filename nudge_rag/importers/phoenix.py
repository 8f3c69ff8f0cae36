"""Phoenix / OpenInference: RETRIEVER spans and document annotations for ``store.import_traces``.

Reads a spans dataframe as Phoenix returns it (``px.Client().get_spans_dataframe()``: columns
``context.span_id``, ``context.trace_id``, ``span_kind``, ``start_time``,
``attributes.input.value``, ``attributes.retrieval.documents``, a list of ``{"document.id",
"document.score", "document.content"}``; the span id may be the index), its rows as dicts, or an
OTLP/JSON export (``{"resourceSpans": [...]}``, a dict or a file path) with OpenInference
attributes (``openinference.span.kind``, ``input.value``, ``retrieval.documents.<i>.document.id``
/ ``.score``).

Mapping: a span of kind ``RETRIEVER`` is one past search (external id: the span id as 16 hex
digits, source ``"otel"``, the id space a live search inside that span records too). Document
annotations (Phoenix's ``DocumentEvaluations`` dataframe, or span document annotations),
indexed by (``context.span_id`` or ``span_id``, ``document_position``) with ``label`` /
``score`` (or ``result.label`` / ``result.score``), judge the document at that position of the
span's results: a label such as ``relevant`` / ``irrelevant`` decides, else a score >= 0.5 is
relevant and below irrelevant. Every judged document of a span becomes one feedback row (one
per provenance: an annotation whose ``annotator_kind`` is ``LLM`` or ``CODE`` is model-made,
``HUMAN`` human; without the column, ``provenance=`` says which, default ``"human"``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.records import (
    OTEL,
    FeedbackRecord,
    Records,
    TraceRecord,
    Unreadable,
    span_id_text,
)
from nudge_rag.importers._common import (
    converted,
    document_id,
    every,
    get,
    items,
    label_relevance,
    lazy,
    number_or_nan,
    query_text,
)

__all__ = ["read"]

_DOC_PREFIX = "retrieval.documents."


def read(
    spans_df: Any,
    annotations_df: Any = None,
    *,
    id_key: str | None = None,
    provenance: str = "human",
) -> Records:
    """Records of the RETRIEVER spans with their documents' annotations.

    ``spans_df``: a Phoenix spans dataframe, a list of its rows as dicts, or OTLP/JSON (a dict
    or a path). ``annotations_df``: document annotations (a dataframe or a list of dicts).
    ``id_key``: the document metadata key holding the chunk id (default: ``document.id``).
    The annotations are read now (and held, by span); the spans lazily, as the records are
    iterated (a file one span batch at a time, a dataframe 1,000 rows at a time).
    ``provenance``: who made annotations without an ``annotator_kind`` (``"human"`` or
    ``"model"``, e.g. for a ``DocumentEvaluations`` frame of LLM evals).
    """
    judged = _annotations(annotations_df, provenance)

    def records() -> Iterator[TraceRecord | Unreadable]:
        for n, row in enumerate(_span_rows(spans_df)):
            if isinstance(row, Unreadable):
                yield row
                continue
            kind = get(row, "span_kind", "attributes.openinference.span.kind", default="")
            if str(kind).upper() != "RETRIEVER":
                continue
            yield converted(f"spans_df row {n}", _record, row, judged, id_key)

    return lazy(records, spans_df)


def _record(
    row: Mapping, judged: dict[str, dict[str, dict[int, bool]]], id_key: str | None
) -> TraceRecord:
    span = span_id_text(get(row, "context.span_id", "span_id"))
    docs = _documents(row.get("attributes.retrieval.documents"))
    ids = [document_id(doc, id_key) for doc in docs]
    feedback = []
    for prov, verdicts in sorted(judged.get(span, {}).items()):
        rel = [i for p, ok in sorted(verdicts.items()) if ok and (i := _at(ids, p))]
        irr = [i for p, ok in sorted(verdicts.items()) if not ok and (i := _at(ids, p))]
        if rel or irr:
            feedback.append(FeedbackRecord(relevant_ids=rel, irrelevant_ids=irr, provenance=prov))
    return TraceRecord(
        query=query_text(row.get("attributes.input.value")),
        result_ids=[i for i in ids if i is not None],
        scores=[
            number_or_nan(d.get("document.score")) if isinstance(d, Mapping) else None
            for d, i in zip(docs, ids, strict=True)
            if i is not None
        ],
        time=row.get("start_time"),
        external_id=span,
        source=OTEL,
        feedback=feedback,
    )


def _at(ids: list[str | None], p: int) -> str | None:
    """The chunk id at result position ``p`` (None when out of range or without an id)."""
    return ids[p] if 0 <= p < len(ids) else None


def _documents(docs: Any) -> list[Any]:
    if docs is None:
        return []
    if isinstance(docs, str):
        try:
            docs = json.loads(docs)
        except json.JSONDecodeError:
            return []
    try:
        return list(docs)
    except TypeError:  # NaN where a span has no documents
        return []


_FRAME_ROWS = 1000  # dataframe rows turned into dicts at a time


def _is_frame(df: Any) -> bool:
    return callable(getattr(df, "to_dict", None)) and hasattr(df, "reset_index")


def _frame_rows(df: Any) -> Iterator[dict]:
    """A dataframe's rows as dicts (its named index as columns), a slice at a time."""
    names = [n for n in getattr(df.index, "names", []) if n is not None]
    for start in range(0, len(df), _FRAME_ROWS):
        part = df.iloc[start : start + _FRAME_ROWS]
        yield from (part.reset_index() if names else part).to_dict("records")


def _records(df: Any) -> list[dict]:
    """A dataframe's rows (with its index as columns) or a list of dicts."""
    if _is_frame(df):
        return list(_frame_rows(df))
    return [dict(r) for r in every(df, "annotations_df")]


def _span_rows(spans_df: Any) -> Iterator[dict | Unreadable]:
    """Span rows shaped like Phoenix's dataframe, one at a time, from any input ``read`` takes
    (OTLP/JSON is turned into rows one resource's spans at a time)."""
    if isinstance(spans_df, Mapping) and "resourceSpans" in spans_df:
        source: Iterator[Any] = iter(spans_df.get("resourceSpans") or [])
    elif _is_frame(spans_df):
        source = _frame_rows(spans_df)
    else:
        source = items(spans_df, "spans_df", data_key="resourceSpans")
    for n, x in enumerate(source):
        if isinstance(x, Unreadable):
            yield x
        elif isinstance(x, Mapping) and (
            "resourceSpans" in x or "scopeSpans" in x or "instrumentationLibrarySpans" in x
        ):
            try:
                rows = _otlp_rows(x if "resourceSpans" in x else {"resourceSpans": [x]})
            except Exception as e:  # a malformed batch costs its spans only
                yield Unreadable(f"spans_df[{n}]", f"malformed OTLP/JSON ({type(e).__name__}: {e})")
                continue
            yield from rows
        elif isinstance(x, Mapping):
            yield dict(x)
        else:
            yield Unreadable(f"spans_df[{n}]", f"expected a span row, found {type(x).__name__}")


def _otlp_value(v: Mapping) -> Any:
    for key in ("stringValue", "doubleValue", "boolValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_otlp_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _otlp_rows(export: Mapping) -> list[dict]:
    """OTLP/JSON spans as rows shaped like Phoenix's dataframe."""
    rows = []
    for rs in export.get("resourceSpans") or []:
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            for span in ss.get("spans") or []:
                attrs = {
                    a["key"]: _otlp_value(a.get("value") or {})
                    for a in span.get("attributes") or []
                }
                docs: dict[int, dict] = {}
                for key, value in attrs.items():
                    if key.startswith(_DOC_PREFIX):
                        pos, _, field = key[len(_DOC_PREFIX) :].partition(".")
                        if pos.isdigit():
                            docs.setdefault(int(pos), {})[field] = value
                start = span.get("startTimeUnixNano")
                rows.append(
                    {
                        "context.span_id": span.get("spanId"),
                        "context.trace_id": span.get("traceId"),
                        "span_kind": attrs.get("openinference.span.kind"),
                        "start_time": None if start is None else int(start) / 1e9,
                        "attributes.input.value": attrs.get("input.value"),
                        "attributes.retrieval.documents": [docs[p] for p in sorted(docs)],
                    }
                )
    return rows


def _annotations(annotations_df: Any, default: str) -> dict[str, dict[str, dict[int, bool]]]:
    """{span id: {provenance: {document position: relevant?}}} from document annotations."""
    if annotations_df is None:
        return {}
    out: dict[str, dict[str, dict[int, bool]]] = {}
    for n, row in enumerate(_records(annotations_df)):
        span = get(row, "context.span_id", "span_id")
        pos = row.get("document_position")
        if span is None or pos is None:
            msg = (
                f"annotations_df row {n}: found no span id or document_position; pass document "
                "annotations indexed by (context.span_id, document_position)."
            )
            raise NudgeError(msg)
        label = get(row, "label", "result.label")
        score = get(row, "score", "result.score")
        if isinstance(label, float) and label != label:  # pandas' NaN for no label
            label = None
        ok = label_relevance(label, score)
        if ok is None:
            continue
        kind = row.get("annotator_kind")
        if isinstance(kind, str) and kind.strip():
            prov = "human" if kind.strip().upper() == "HUMAN" else "model"
        else:
            prov = default
        verdicts = out.setdefault(span_id_text(span), {}).setdefault(prov, {})
        p = int(pos)
        verdicts[p] = verdicts.get(p, False) or ok  # a relevant verdict wins
    return out
