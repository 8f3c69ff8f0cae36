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
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.importers._common import (
    document_id,
    every,
    get,
    items,
    label_relevance,
    lazy,
    number_or_nan,
    query_text,
    results,
)
from nudge_rag.importers.resolve import Doc, Resolver, metadata_dict
from nudge_rag.state.records import (
    OTEL,
    FeedbackRecord,
    Records,
    Resolution,
    TraceRecord,
    Unreadable,
    span_id_text,
)

__all__ = ["document_annotations", "pull", "read"]

_DOC_PREFIX = "retrieval.documents."


def read(
    spans_df: Any,
    annotations_df: Any = None,
    *,
    id_key: str | None = None,
    provenance: str = "human",
    store: Any = None,
) -> Records:
    """Records of the RETRIEVER spans with their documents' annotations.

    ``spans_df``: a Phoenix spans dataframe (as ``Client().spans.get_spans_dataframe()``
    returns it), a list of its rows as dicts, or OTLP/JSON (a dict or a path).
    ``annotations_df``: document annotations (a dataframe or a list of dicts).
    ``id_key``: the document metadata key holding the chunk id (default: ``document.id``, the
    document's LangChain id in ``output.value``, else the usual metadata keys). ``store``: the
    store the spans searched, to match documents kept without an id by their text (see
    :mod:`~nudge_rag.importers.resolve`). A retriever span inside another with no documents of
    its own (LlamaIndex's ``_retrieve`` under ``retrieve``) is the same search: skipped.
    ``provenance``: who made annotations without an ``annotator_kind`` (``"human"`` or
    ``"model"``, e.g. for a ``DocumentEvaluations`` frame of LLM evals). The annotations are
    read now (and held, by span); the spans lazily, as the records are iterated (a file one
    span batch at a time, a dataframe 1,000 rows at a time).
    """
    judged = _annotations(annotations_df, provenance)

    def entries() -> Iterator[Any]:
        retriever_ids: set[str] = set()  # a parent span starts, so comes, before its children
        for n, row in enumerate(_span_rows(spans_df)):
            if isinstance(row, Unreadable):
                yield row
                continue
            if not _is_retriever(row):
                continue
            try:
                retriever_ids.add(span_id_text(get(row, "context.span_id", "span_id")))
                docs = _documents(row.get("attributes.retrieval.documents"))
            except Exception as e:  # one odd span costs itself only
                yield Unreadable(f"spans_df row {n}", str(e))
                continue
            if not docs and _inner(row, retriever_ids):
                continue
            yield f"spans_df row {n}", row, docs

    def records() -> Iterator[TraceRecord | Unreadable]:
        make = partial(_record, judged=judged)
        yield from Resolver(store, id_key).stream(entries(), make, docs_of=_docs_of)

    return lazy(records, spans_df)


def _docs_of(row: Mapping, docs: list[Any]) -> list[Doc]:
    return [_doc(d, p, row) for p, d in enumerate(docs)]


def _record(
    row: Mapping,
    docs: list[Any],
    ids: list[str | None],
    res: Resolution,
    *,
    judged: dict[str, dict[str, dict[int, bool]]],
) -> TraceRecord:
    span = span_id_text(get(row, "context.span_id", "span_id"))
    feedback = []
    for prov, verdicts in sorted(judged.get(span, {}).items()):
        rel = [i for p, ok in sorted(verdicts.items()) if ok and (i := _at(ids, p))]
        irr = [i for p, ok in sorted(verdicts.items()) if not ok and (i := _at(ids, p))]
        if rel or irr:
            feedback.append(FeedbackRecord(relevant_ids=rel, irrelevant_ids=irr, provenance=prov))
    found, scores = results(docs, ids, _document_score)
    return TraceRecord(
        query=query_text(row.get("attributes.input.value")),
        result_ids=found,
        scores=scores,
        time=row.get("start_time"),
        external_id=span,
        source=OTEL,
        feedback=feedback,
        resolution=res,
    )


def _document_score(d: Any) -> float | None:
    return number_or_nan(d.get("document.score")) if isinstance(d, Mapping) else None


def pull(
    endpoint: str,
    project: str = "default",
    *,
    store: Any = None,
    id_key: str | None = None,
    annotation_names: Sequence[str] | None = None,
    limit: int = 100_000,
    api_key: str | None = None,
    timeout: float = 300.0,
) -> Records:
    """Records of a running Phoenix server's RETRIEVER spans in ``project`` with their
    document annotations (all, or those named in ``annotation_names``).

    The spans come from ``phoenix.client.Client().spans.get_spans_dataframe`` (install
    ``arize-phoenix-client``), the document annotations from the server's GraphQL API
    (``Span.documentEvaluations``, what Phoenix's UI shows; the client has no call for them).
    ``store`` / ``id_key``: as for :func:`read`.
    """
    try:
        from phoenix.client import Client
        from phoenix.client.types.spans import SpanQuery
    except ImportError as e:
        msg = "phoenix.pull needs the Phoenix client: pip install arize-phoenix-client."
        raise NudgeError(msg) from e
    client = Client(base_url=endpoint, api_key=api_key)
    try:
        spans = client.spans.get_spans_dataframe(
            query=SpanQuery().where("span_kind == 'RETRIEVER'"),
            project_name=project,
            limit=limit,
            timeout=int(timeout),
        )
    except Exception as e:  # the client's HTTP errors: name the server and project
        msg = f"phoenix.pull: reading spans of project {project!r} at {endpoint} failed: {e}"
        raise NudgeError(msg) from e
    notes = document_annotations(endpoint, project, names=annotation_names, api_key=api_key,
                                 timeout=timeout)  # fmt: skip
    return read(spans, notes, id_key=id_key, store=store)


_PROJECTS = "{ projects { edges { node { id name } } } }"
_NOTES = """query($id: ID!, $after: String) { node(id: $id) { ... on Project {
  spans(first: 1000, after: $after, filterCondition: "span_kind == 'RETRIEVER'") {
    edges { node { spanId documentEvaluations { documentPosition name label score } } }
    pageInfo { hasNextPage endCursor } } } } }"""


def document_annotations(
    endpoint: str,
    project: str = "default",
    *,
    names: Sequence[str] | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> list[dict]:
    """The document annotations of ``project``'s RETRIEVER spans on a Phoenix server, as rows
    ``{"context.span_id", "document_position", "name", "label", "score"}`` (what :func:`read`
    takes), read from its GraphQL API by pages of 1000 spans."""
    import httpx

    url = endpoint.rstrip("/") + "/graphql"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    wanted = None if names is None else set(names)

    def ask(query: str, variables: dict) -> dict:
        try:
            r = httpx.post(url, json={"query": query, "variables": variables},
                           headers=headers, timeout=timeout)  # fmt: skip
            r.raise_for_status()
            body = r.json()
        except (httpx.HTTPError, ValueError) as e:
            msg = f"phoenix: the GraphQL API at {url} did not answer ({e}); is the server up?"
            raise NudgeError(msg) from e
        if body.get("errors"):
            msg = f"phoenix: the GraphQL API at {url} refused the query: {body['errors'][0]}"
            raise NudgeError(msg)
        return body["data"]

    projects = {e["node"]["name"]: e["node"]["id"] for e in ask(_PROJECTS, {})["projects"]["edges"]}
    if project not in projects:
        msg = f"phoenix: no project {project!r} at {endpoint}; it has {sorted(projects)}."
        raise BadInputError(msg)
    out: list[dict] = []
    after = None
    while True:
        page = ask(_NOTES, {"id": projects[project], "after": after})["node"]["spans"]
        for edge in page["edges"]:
            node = edge["node"]
            for ev in node["documentEvaluations"]:
                if wanted is None or ev["name"] in wanted:
                    out.append({"context.span_id": node["spanId"],
                                "document_position": ev["documentPosition"], "name": ev["name"],
                                "label": ev["label"], "score": ev["score"]})  # fmt: skip
        if not page["pageInfo"]["hasNextPage"]:
            return out
        after = page["pageInfo"]["endCursor"]


def _is_retriever(row: Mapping) -> bool:
    kind = get(row, "span_kind", "attributes.openinference.span.kind", default="")
    return str(kind).upper() == "RETRIEVER"


def _inner(row: Mapping, retriever_ids: set[str]) -> bool:
    """A retriever span that is part of another: its parent is a retriever span, or its input
    is a LlamaIndex ``query_bundle`` (the parent may be outside this page of spans)."""
    parent = row.get("parent_id")
    if isinstance(parent, str) and parent and span_id_text(parent) in retriever_ids:
        return True
    raw = row.get("attributes.input.value")
    return isinstance(raw, str) and raw.lstrip().startswith('{"query_bundle"')


def _doc(d: Any, p: int, row: Mapping) -> Doc:
    """The ``p``-th document of a span: OpenInference fields; a LangChain document's own id
    from the span's ``output.value`` when ``document.id`` is absent."""
    if not isinstance(d, Mapping):
        return Doc(id=document_id(d, None))
    own = d.get("document.id")
    if own is None:
        own = _output_ids(row).get(p)
    content = d.get("document.content")
    return Doc(
        id=None if own is None else str(own),
        metadata=metadata_dict(d.get("document.metadata")),
        content=content if isinstance(content, str) else None,
    )


def _output_ids(row: Mapping) -> dict[int, str]:
    """{position: id} of the LangChain documents in a span's JSON ``output.value``."""
    cached = row.get("_nudge_output_ids")
    if isinstance(cached, dict):
        return cached
    out: dict[int, str] = {}
    raw = row.get("attributes.output.value")
    if isinstance(raw, str) and raw.lstrip().startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = None
        docs = value.get("documents") if isinstance(value, Mapping) else None
        for p, doc in enumerate(docs if isinstance(docs, list) else []):
            if isinstance(doc, Mapping) and doc.get("id") not in (None, ""):
                out[p] = str(doc["id"])
    if isinstance(row, dict):
        row["_nudge_output_ids"] = out
    return out


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
    """A dataframe's rows as dicts (its named index as columns), a slice at a time.

    Phoenix's client indexes its spans by ``context.span_id`` and keeps it as a column too: an
    index level that is also a column is dropped, not inserted again."""
    names = [n for n in getattr(df.index, "names", []) if n is not None]
    fresh = [n for n in names if n not in df.columns]
    for start in range(0, len(df), _FRAME_ROWS):
        part = df.iloc[start : start + _FRAME_ROWS]
        if names:
            part = part.reset_index(level=fresh) if fresh else part
            if any(n is not None for n in part.index.names):
                part = part.reset_index(drop=True)
        yield from part.to_dict("records")


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
            raise BadInputError(msg)
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
