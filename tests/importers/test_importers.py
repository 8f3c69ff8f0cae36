"""Importing past retrievals: LangSmith, Langfuse, Phoenix and JSONL readers, ``import_traces``.

Each reader is fed what its tool gives (the ``langsmith`` SDK's ``Run`` / ``Feedback``, the
Langfuse public API's JSON, a Phoenix spans dataframe and OTLP/JSON); imports are idempotent on
(source, external id), keep original times, count unknown chunk ids and bad records. End to end
on SciFact: train queries exported in each format, imported, fine-tuned, give the same held-out
gain as the same labels recorded live.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from langsmith.schemas import Feedback, Run

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.errors import NudgeError
from nudge_rag.importers import jsonl, langfuse, langsmith, phoenix
from nudge_rag.state.records import FeedbackRecord, TraceRecord
from nudge_rag.state.state import NudgeState
from nudge_rag.state.traces.log import TraceLog
from nudge_rag.stores.memory import MemoryAdapter

DIM = 8
DOCS = ["refund", "cancel", "invoice", "password", "2fa", "export"]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


class CountingEmbedder:
    """A deterministic query embedder (a hash of the text) that counts its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.stack(
            [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=DIM) for t in texts]
        )
        return out.astype(np.float32)


@pytest.fixture
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
def state(tmp_path: Path, embedder: CountingEmbedder) -> NudgeState:
    rng = np.random.default_rng(0)
    records = {d: {"id": d, "vector": rng.normal(size=DIM).tolist(), "text": d} for d in DOCS}
    s = NudgeState(
        MemoryAdapter(records, metric="cosine"), tmp_path / "state", embed_queries=embedder
    )
    yield s
    s.close()


# -- LangSmith ---------------------------------------------------------------------------------
def _feedback(**kw: object) -> Feedback:
    """A ``langsmith`` Feedback as ``list_feedback`` returns it (ids and times filled in)."""
    kw.setdefault("trace_id", None)
    kw.setdefault("modified_at", kw["created_at"])
    return Feedback(id=uuid.uuid4(), **kw)  # type: ignore[arg-type]


def _langsmith_history() -> tuple[list[Run], list[Feedback]]:
    """A chain run (root) with a retriever child, a second retriever run, and their feedback."""
    root, ret1, ret2 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def doc(i: str, score: float) -> dict:
        return {"page_content": i, "metadata": {"score": score}, "id": i, "type": "Document"}

    runs = [
        Run(id=root, name="RunnableSequence", run_type="chain", start_time=T0, trace_id=root,
            inputs={"input": "how do I get my money back?"}, outputs={"output": "..."}),
        Run(id=ret1, name="VectorStoreRetriever", run_type="retriever", start_time=T0,
            trace_id=root, parent_run_id=root, inputs={"query": "how do I get my money back?"},
            outputs={"documents": [doc("cancel", 0.7), doc("refund", 0.6), doc("gone", 0.1)]}),
        Run(id=ret2, name="VectorStoreRetriever", run_type="retriever",
            start_time=datetime(2025, 3, 2, tzinfo=timezone.utc), trace_id=ret2,
            inputs={"query": "forgot my login"}, outputs={"documents": [doc("password", 0.9)]}),
    ]  # fmt: skip
    feedback = [
        # a correction on the retriever run names the right chunks
        _feedback(run_id=ret1, trace_id=root, key="relevance",
                 correction={"relevant_ids": ["refund"], "irrelevant_ids": ["cancel"]},
                 created_at=datetime(2025, 3, 1, 12, 5, tzinfo=timezone.utc)),
        # a thumbs-up on the root run: a rating of every retriever run in that trace
        _feedback(run_id=root, trace_id=root, key="user_score", score=True,
                 comment="thanks", created_at=datetime(2025, 3, 1, 12, 6, tzinfo=timezone.utc)),
        _feedback(run_id=ret2, key="correctness", score=1, value={"relevant_ids": ["password"]},
                  created_at=datetime(2025, 3, 2, 1, tzinfo=timezone.utc)),
    ]  # fmt: skip
    return runs, feedback


def test_langsmith_reader_maps_runs_and_feedback():
    runs, feedback = _langsmith_history()
    recs = langsmith.read(runs, feedback)
    assert [r.query for r in recs] == ["how do I get my money back?", "forgot my login"]
    first = recs[0]
    assert first.source == "langsmith" and first.external_id == str(runs[1].id)
    assert first.result_ids == ["cancel", "refund", "gone"] and first.scores == [0.7, 0.6, 0.1]
    assert first.time == T0
    fb = {
        (tuple(f.relevant_ids), tuple(f.irrelevant_ids), f.rating, f.text) for f in first.feedback
    }
    assert fb == {(("refund",), ("cancel",), None, None), ((), (), 1.0, "thanks")}
    assert recs[1].feedback[0].relevant_ids == ["password"] and recs[1].feedback[0].rating == 1.0


def test_langsmith_reader_reads_json_exports(tmp_path: Path):
    runs, feedback = _langsmith_history()
    runs_path, fb_path = tmp_path / "runs.jsonl", tmp_path / "feedback.json"
    runs_path.write_text("\n".join(r.model_dump_json() for r in runs) + "\n")
    fb_path.write_text("[" + ",".join(f.model_dump_json() for f in feedback) + "]")
    from_files = langsmith.read(runs_path, fb_path)
    from_objects = langsmith.read(runs, feedback)
    assert [(r.query, r.result_ids, r.external_id) for r in from_files] == [
        (r.query, r.result_ids, r.external_id) for r in from_objects
    ]
    assert [len(r.feedback) for r in from_files] == [2, 1]


def test_langsmith_import_keeps_times_ids_and_is_idempotent(state: NudgeState):
    runs, feedback = _langsmith_history()
    rep = state.import_traces(langsmith.read(runs, feedback))
    assert (rep.imported, rep.skipped_duplicates, rep.feedback) == (2, 0, 3)
    assert (rep.unknown_ids, rep.unknown_examples, rep.records_with_unknown_ids) == (1, ["gone"], 1)
    traces = state.traces()
    assert [t.time for t in traces] == [
        T0.timestamp(),
        datetime(2025, 3, 2, tzinfo=timezone.utc).timestamp(),
    ]
    assert [t.external_id for t in traces] == [str(runs[1].id), str(runs[2].id)]
    assert {t.source for t in traces} == {"langsmith"}
    assert traces[0].result_ids == ["cancel", "refund"]  # the unknown id is dropped
    fb = state.feedback(traces[0].id)
    assert fb[0].time == datetime(2025, 3, 1, 12, 5, tzinfo=timezone.utc).timestamp()
    again = state.import_traces(langsmith.read(runs, feedback))
    assert (again.imported, again.skipped_duplicates, again.feedback) == (0, 2, 0)
    assert len(state.traces()) == 2 and len(state.feedback()) == 3


# -- Langfuse ----------------------------------------------------------------------------------
def _langfuse_pages() -> tuple[dict, dict]:
    """``GET /api/public/observations`` and ``/api/public/scores`` pages, as JSON."""
    observations = {
        "data": [
            {
                "id": "obs-1",
                "traceId": "tr-1",
                "type": "RETRIEVER",
                "name": "retrieve",
                "startTime": "2025-03-01T12:00:00.000Z",
                "input": {"query": "turn off renewal"},
                "output": {"documents": [{"id": "cancel", "score": 0.8}, {"id": "invoice"}]},
            },
            {
                "id": "obs-2",
                "traceId": "tr-2",
                "type": "SPAN",
                "name": "search",
                "startTime": "2025-03-01T13:00:00.000Z",
                "input": "authenticator app",
                "output": ["2fa", "password"],
            },
            {
                "id": "obs-3",
                "traceId": "tr-2",
                "type": "GENERATION",
                "name": "llm",
                "startTime": "2025-03-01T13:00:01.000Z",
                "input": "...",
                "output": "...",
            },
        ],
        "meta": {"page": 1, "limit": 50, "totalItems": 3, "totalPages": 1},
    }
    scores = {
        "data": [
            {"id": "s1", "traceId": "tr-1", "observationId": "obs-1", "name": "doc-relevance",
             "dataType": "CATEGORICAL", "stringValue": "relevant", "value": 1,
             "metadata": {"document_id": "cancel"}, "timestamp": "2025-03-01T12:01:00Z"},
            {"id": "s2", "traceId": "tr-1", "observationId": None, "name": "user-feedback",
             "dataType": "BOOLEAN", "value": 0, "comment": "wrong answer",
             "timestamp": "2025-03-01T12:02:00Z"},
            {"id": "s3", "traceId": "tr-2", "observationId": "obs-2", "name": "quality",
             "dataType": "NUMERIC", "value": 0.9,
             "metadata": {"relevant_ids": ["2fa"], "irrelevant_ids": ["password"]},
             "timestamp": "2025-03-01T13:05:00Z"},
        ]
    }  # fmt: skip
    return observations, scores


def test_langfuse_reader_maps_observations_and_scores(state: NudgeState):
    observations, scores = _langfuse_pages()
    recs = langfuse.read(observations, scores, names=["search"])
    assert [r.external_id for r in recs] == ["obs-1", "obs-2"]  # the GENERATION is not a search
    assert recs[0].query == "turn off renewal" and recs[0].result_ids == ["cancel", "invoice"]
    fb = [
        (list(f.relevant_ids), list(f.irrelevant_ids), f.rating, f.text) for f in recs[0].feedback
    ]
    assert fb == [(["cancel"], [], None, None), ([], [], 0.0, "wrong answer")]
    assert recs[1].query == "authenticator app" and recs[1].result_ids == ["2fa", "password"]
    assert recs[1].feedback[0].rating == 0.9
    rep = state.import_traces(recs)
    assert (rep.imported, rep.feedback, rep.unknown_ids, rep.bad) == (2, 3, 0, [])
    t = state.traces()[0]
    assert (t.source, t.external_id) == ("langfuse", "obs-1")
    assert t.time == datetime(2025, 3, 1, 12, tzinfo=timezone.utc).timestamp()
    assert state.import_traces(langfuse.read(observations, scores, names=["search"])).imported == 0


def test_langfuse_numeric_scores_on_another_scale_map_onto_ratings():
    """Five-star NUMERIC scores: 1 is a disliked answer, 4 a liked one (not all "positive")."""
    observations, scores = _langfuse_pages()
    stars = [dict(scores["data"][1], dataType="NUMERIC", value=v) for v in (1, 4)]
    stars[1]["traceId"] = "tr-2"
    recs = langfuse.read(observations, stars, names=["search"], numeric_range=(1, 5))
    assert [f.rating for r in recs for f in r.feedback] == [0.0, 0.75]
    raw = langfuse.read(observations, stars, names=["search"])  # the 0..1 default clips
    assert [f.rating for r in raw for f in r.feedback] == [1.0, 1.0]
    with pytest.raises(NudgeError, match="numeric_range"):
        langfuse.read(observations, stars, numeric_range=(5, 1))


# -- Phoenix -----------------------------------------------------------------------------------
def _phoenix_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """``get_spans_dataframe()`` and a ``DocumentEvaluations`` dataframe, as Phoenix gives them."""
    spans = pd.DataFrame(
        {
            "context.span_id": ["a1b2c3d4e5f60718", "0f0e0d0c0b0a0908", "1111222233334444"],
            "context.trace_id": ["t" * 32, "u" * 32, "u" * 32],
            "name": ["VectorStoreRetriever", "retrieve", "ChatOpenAI"],
            "span_kind": ["RETRIEVER", "RETRIEVER", "LLM"],
            "start_time": pd.to_datetime(
                ["2025-03-01T12:00:00Z", "2025-03-01T12:30:00Z", "2025-03-01T12:30:01Z"]
            ),
            "attributes.input.value": ["backup my records", "monthly bill pdf", "..."],
            "attributes.retrieval.documents": [
                [
                    {"document.id": "export", "document.score": 0.8, "document.content": "x"},
                    {"document.id": "invoice", "document.score": 0.5, "document.content": "y"},
                ],
                [{"document.id": "invoice", "document.score": 0.9, "document.content": "z"}],
                None,
            ],
        }
    ).set_index("context.span_id")
    annotations = pd.DataFrame(
        {
            "context.span_id": ["a1b2c3d4e5f60718", "a1b2c3d4e5f60718", "0f0e0d0c0b0a0908"],
            "document_position": [0, 1, 0],
            "label": ["relevant", "unrelated", None],
            "score": [1.0, 0.0, 0.8],
            "explanation": ["", "", ""],
        }
    ).set_index(["context.span_id", "document_position"])
    return spans, annotations


def test_phoenix_reader_maps_spans_and_document_annotations(state: NudgeState):
    spans, annotations = _phoenix_frames()
    recs = phoenix.read(spans, annotations)
    assert [(r.external_id, r.source, r.query) for r in recs] == [
        ("a1b2c3d4e5f60718", "otel", "backup my records"),
        ("0f0e0d0c0b0a0908", "otel", "monthly bill pdf"),
    ]
    assert recs[0].result_ids == ["export", "invoice"] and recs[0].scores == [0.8, 0.5]
    assert recs[0].feedback[0].relevant_ids == ["export"]
    assert recs[0].feedback[0].irrelevant_ids == ["invoice"]
    assert recs[1].feedback[0].relevant_ids == ["invoice"]  # no label: score 0.8 >= 0.5
    rep = state.import_traces(recs)
    assert (rep.imported, rep.feedback) == (2, 2)
    assert state.traces()[0].time == datetime(2025, 3, 1, 12, tzinfo=timezone.utc).timestamp()
    assert state.import_traces(phoenix.read(spans, annotations)).skipped_duplicates == 2


def test_phoenix_reader_reads_otlp_json(tmp_path: Path):
    def attr(key: str, value: object) -> dict:
        kind = "doubleValue" if isinstance(value, float) else "stringValue"
        return {"key": key, "value": {kind: value}}

    export = {
        "resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": [
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "name": "retrieve", "kind": 1, "startTimeUnixNano": "1740830400000000000",
             "attributes": [
                 attr("openinference.span.kind", "RETRIEVER"),
                 attr("input.value", "one-time codes"),
                 attr("retrieval.documents.0.document.id", "2fa"),
                 attr("retrieval.documents.0.document.score", 0.7),
                 attr("retrieval.documents.1.document.id", "password"),
                 attr("retrieval.documents.1.document.score", 0.3),
             ]},
        ]}]}]
    }  # fmt: skip
    path = tmp_path / "spans.json"
    path.write_text(json.dumps(export))
    for given in (export, path):
        (rec,) = phoenix.read(given)
        assert (rec.external_id, rec.query, rec.result_ids) == (
            "eee19b7ec3c1b174",
            "one-time codes",
            ["2fa", "password"],
        )
        assert rec.scores == [0.7, 0.3] and rec.time == 1740830400.0
    notes = [{"span_id": "eee19b7ec3c1b174", "document_position": 1, "result.label": "relevant"}]
    assert phoenix.read(export, notes)[0].feedback[0].relevant_ids == ["password"]


# -- JSONL -------------------------------------------------------------------------------------
def test_jsonl_reader_schema_and_export_round_trip(tmp_path: Path, state: NudgeState):
    path = tmp_path / "history.jsonl"
    lines = [
        {"query": "money back", "external_id": "req-1", "source": "my-app",
         "time": "2025-03-01T12:00:00Z", "result_ids": ["refund", "cancel"], "scores": [0.9, 0.2],
         "feedback": [{"relevant_ids": ["refund"], "rating": 1.0, "time": 1740830500}]},
        {"query": "stop my plan", "embedding": [0.5] * DIM, "result_ids": ["cancel"]},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    recs = jsonl.read(path)
    assert (recs[0].source, recs[0].external_id) == ("my-app", "req-1")
    assert (recs[1].source, recs[1].external_id) == ("jsonl", None)
    rep = state.import_traces(recs)
    assert (rep.imported, rep.feedback) == (2, 1)
    assert state.traces()[1].embedding.tolist() == [0.5] * DIM  # given: not re-embedded
    assert state.import_traces(jsonl.read(path)).imported == 0  # no id: derived from content

    out = tmp_path / "export.jsonl"
    state.trace_log.export_jsonl(out)
    other = NudgeState(state.adapter, tmp_path / "other")
    try:
        rep2 = other.import_traces(jsonl.read(out))
        assert rep2.imported == 2 and rep2.feedback == 1
        assert [(t.query, t.time, t.result_ids) for t in other.traces()] == [
            (t.query, t.time, t.result_ids) for t in state.traces()
        ]
    finally:
        other.close()


def test_jsonl_malformed_line_is_named_and_costs_only_itself(tmp_path: Path, state: NudgeState):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"query": "ok", "result_ids": ["refund"]}\n{"query": "broken",\n'
        '{"query": "ok", "results": ["refund"]}\n[1]\n{"query": "last"}\n'
    )
    with pytest.raises(NudgeError, match=r"bad\.jsonl line 2: not valid JSON"):
        list(jsonl.read(path))
    with pytest.raises(NudgeError, match=r"record 1 .*bad\.jsonl line 2.*nothing was stored"):
        state.import_traces(jsonl.read(path), strict=True)
    assert len(state.trace_log) == 0
    rep = state.import_traces(jsonl.read(path))
    assert [t.query for t in state.traces()] == ["ok", "last"]
    reasons = [why for _, _, why in rep.bad]
    assert [n for n, _, _ in rep.bad] == [1, 2, 3]
    assert re.search(r"line 2: not valid JSON", reasons[0])
    assert re.search(r"line 3: unknown fields \['results'\]", reasons[1])
    assert re.search(r"line 4: expected a JSON object, found list", reasons[2])
    with pytest.raises(NudgeError, match=r"path: cannot read .*missing\.jsonl"):
        jsonl.read(tmp_path / "missing.jsonl")


def test_readers_name_the_record_they_cannot_read(tmp_path: Path):
    with pytest.raises(NudgeError, match=r"runs\[1\]: expected a record object"):
        list(langsmith.read([{"run_type": "chain"}, 42]))
    with pytest.raises(NudgeError, match=r"scores\[0\]: expected a record object"):
        langfuse.read([], [7])
    with pytest.raises(NudgeError, match=r"annotations_df row 0: found no span id"):
        phoenix.read([], [{"label": "relevant"}])
    bad = tmp_path / "runs.jsonl"
    bad.write_text('{"run_type": "retriever"}\nnot json\n')
    with pytest.raises(NudgeError, match=r"runs: .*runs\.jsonl line 2: not valid JSON"):
        list(langsmith.read(bad))


# -- import_traces -----------------------------------------------------------------------------
def test_bad_records_are_counted_with_their_reason_and_cost_no_others(state: NudgeState):
    recs = [
        TraceRecord(query="good one", result_ids=["refund"], external_id="1", source="x"),
        TraceRecord(query=None, result_ids=["refund"], external_id="2", source="x"),
        TraceRecord(
            query="nan vector", embedding=[float("nan")] * DIM, external_id="3", source="x"
        ),
        TraceRecord(query="short vector", embedding=[1.0, 2.0], external_id="4", source="x"),
        TraceRecord(query="bad time", time="yesterday-ish", external_id="5", source="x"),
        TraceRecord(query="no source", external_id="6"),
        TraceRecord(query="ok too", external_id="7", source="x", time=1.7e9),
    ]
    rep = state.import_traces(recs)
    assert rep.imported == 2 and [t.query for t in state.traces()] == ["good one", "ok too"]
    reasons = {n: why for n, _, why in rep.bad}
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert "query" in reasons[1] and "non-finite" in reasons[2]
    assert "wrong dimension (2" in reasons[3] and "yesterday-ish" in reasons[4]
    assert "source" in reasons[5]


def test_strict_import_raises_naming_the_record_and_stores_nothing(state: NudgeState):
    recs = [
        TraceRecord(query="fine", external_id="a", source="x"),
        TraceRecord(query="   ", external_id="b", source="x"),
    ]
    with pytest.raises(NudgeError, match=r"record 1 \(external id 'b'\).*nothing was stored"):
        state.import_traces(recs, strict=True)
    assert len(state.trace_log) == 0
    assert state.import_traces(recs[:1], strict=True).imported == 1


def test_queries_without_embeddings_are_embedded_in_batches(
    state: NudgeState, embedder: CountingEmbedder
):
    recs = [TraceRecord(query=f"q{i}", external_id=str(i), source="x") for i in range(600)]
    rep = state.import_traces(recs)
    assert rep.imported == 600
    assert [len(c) for c in embedder.calls] == [256, 256, 88]
    t = state.traces()[5]
    assert np.allclose(t.embedding, embedder(["q5"])[0])


def test_unknown_ids_are_counted_not_fatal(state: NudgeState):
    recs = [
        TraceRecord(query="a", result_ids=["refund", "old-1"], external_id="a", source="x",
                    feedback=[FeedbackRecord(relevant_ids=["old-2"])]),
        TraceRecord(query="b", result_ids=["old-1"], external_id="b", source="x"),
        TraceRecord(query="c", result_ids=["cancel"], external_id="c", source="x"),
    ]  # fmt: skip
    rep = state.import_traces(recs)
    assert rep.imported == 3 and rep.bad == []
    assert (rep.unknown_ids, rep.records_with_unknown_ids) == (2, 2)
    assert rep.unknown_examples == ["old-1", "old-2"]
    assert rep.feedback == 0  # its only id is unknown: nothing left to record
    assert [t.result_ids for t in state.traces()] == [["refund"], [], ["cancel"]]


def test_feedback_that_arrives_later_joins_the_imported_trace(state: NudgeState):
    first = TraceRecord(query="q", result_ids=["refund"], time=1.7e9, external_id="r", source="x")
    state.import_traces([first])
    later = FeedbackRecord(relevant_ids=["refund"], rating=1.0, time=1.7e9 + 60)
    rep = state.import_traces([TraceRecord(**{**first.__dict__, "feedback": [later]})])
    assert (rep.imported, rep.skipped_duplicates, rep.feedback) == (0, 1, 1)
    (trace,) = state.traces()
    assert [f.relevant_ids for f in state.feedback(trace.id)] == [["refund"]]


def test_an_old_trace_log_gains_the_external_id_columns(tmp_path: Path):
    path = tmp_path / "traces.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE traces (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " time REAL NOT NULL, query TEXT, embedding BLOB NOT NULL, dim INTEGER NOT NULL,"
        " k INTEGER NOT NULL, filter TEXT, result_ids TEXT NOT NULL, scores TEXT NOT NULL);"
        "INSERT INTO traces (id, time, query, embedding, dim, k, result_ids, scores)"
        " VALUES ('old', 1.0, 'q', x'0000803f', 1, 1, '[\"a\"]', '[0.5]');"
    )
    conn.close()
    with TraceLog(path) as log:
        (old,) = log.traces()
        assert (old.id, old.external_id, old.source) == ("old", None, None)


# -- live searches record the run or span they ran in ------------------------------------------
def test_langchain_retriever_run_id_is_recorded_and_joins_langsmith_feedback(tmp_path: Path):
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag.langchain import NudgedVectorStore

    class RunIds(BaseCallbackHandler):
        def __init__(self) -> None:
            self.ids: list[uuid.UUID] = []

        def on_retriever_start(self, serialized, query, *, run_id, **kw):  # type: ignore[no-untyped-def]
            self.ids.append(run_id)

    inner = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    try:
        store.add_texts(["refunds take 5 days", "cancel in settings"], ids=["refund", "cancel"])
        seen = RunIds()
        store.as_retriever(search_kwargs={"k": 2}).invoke("money back", {"callbacks": [seen]})
        store.similarity_search("outside any run", k=1)
        live, plain = store.traces()
        assert live.external_id == f"langsmith:{seen.ids[0]}" and live.source is None
        assert plain.external_id is None
        # the same run as LangSmith exports it, with the feedback given there later
        run = Run(
            id=seen.ids[0],
            name="VectorStoreRetriever",
            run_type="retriever",
            start_time=T0,
            inputs={"query": "money back"},
            outputs={"documents": [{"page_content": "x", "metadata": {}, "id": "refund"}]},
        )
        fb = _feedback(run_id=seen.ids[0], key="relevance",
                      correction={"relevant_ids": ["refund"]}, created_at=T0)  # fmt: skip
        rep = store.import_traces(langsmith.read([run], [fb]))
        assert (rep.imported, rep.skipped_duplicates, rep.feedback) == (0, 1, 1)
        assert store.feedback(live.id)[0].relevant_ids == ["refund"]
    finally:
        store.close()


async def test_async_langchain_retriever_records_its_run_id(tmp_path: Path):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.tracers.schemas import Run as TracerRun
    from langchain_core.tracers.stdout import FunctionCallbackHandler
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag.langchain import NudgedVectorStore

    runs: list[TracerRun] = []

    class Keep(FunctionCallbackHandler):
        def _on_retriever_start(self, run: TracerRun) -> None:
            runs.append(run)

    store = NudgedVectorStore(
        InMemoryVectorStore(DeterministicFakeEmbedding(size=16)), state_dir=tmp_path / "s"
    )
    try:
        store.add_texts(["refunds take 5 days"], ids=["refund"])
        await store.as_retriever().ainvoke("money back", {"callbacks": [Keep(lambda _: None)]})
        (trace,) = store.traces()
        assert trace.external_id == f"langsmith:{runs[0].id}"
    finally:
        store.close()


def test_opentelemetry_span_is_recorded_and_joins_phoenix_annotations(state: NudgeState):
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    q = np.ones(DIM, np.float32)
    with tracer.start_as_current_span("retrieve") as span:
        tid = state.record_search("backup my records", q, 2, None, ["export", "invoice"], [1, 0])
        span_id = format(span.get_span_context().span_id, "016x")
    assert state.record_search("no span", q, 1, None, ["export"], [1.0]) is not None
    traces = state.traces()
    assert traces[0].external_id == f"otel:{span_id}" and traces[1].external_id is None
    spans = pd.DataFrame(
        {
            "context.span_id": [span_id],
            "span_kind": ["RETRIEVER"],
            "start_time": [T0],
            "attributes.input.value": ["backup my records"],
            "attributes.retrieval.documents": [[{"document.id": "export"}]],
        }
    )
    notes = pd.DataFrame(
        {"context.span_id": [span_id], "document_position": [0], "label": ["relevant"]}
    )
    rep = state.import_traces(phoenix.read(spans, notes))
    assert (rep.imported, rep.skipped_duplicates, rep.feedback) == (0, 1, 1)
    assert state.feedback(tid)[0].relevant_ids == ["export"]


# -- end to end on SciFact ---------------------------------------------------------------------
@cache
def _scifact():  # type: ignore[no-untyped-def]
    from nudge_rag.eval.data import load_beir, shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "scifact").is_dir():
        return None
    return load_beir(root / "scifact")


def _history(ds) -> list[dict]:  # type: ignore[no-untyped-def]
    """SciFact's train queries searched over the base vectors (top 10) with their gold labels,
    as plain dicts: the one history every format below exports."""
    from nudge_rag.fit.metrics import exact_knn

    qrow = {q: i for i, q in enumerate(ds.query_ids)}
    qids = sorted(q for q in ds.qrels["train"] if q in ds.query_text)
    queries = ds.query_embeddings[[qrow[q] for q in qids]]
    scores, top = exact_knn(queries, ds.corpus_embeddings, 10, metric="cosine")
    out = []
    for n, q in enumerate(qids):
        gold = [d for d, g in ds.qrels["train"][q].items() if g > 0]
        out.append(
            {
                "id": f"run-{q}",
                "span": format(n + 1, "016x"),
                "query": ds.query_text[q],
                "time": 1.7e9 + n,
                "ids": [ds.corpus_ids[r] for r in top[n]],
                "scores": scores[n].tolist(),
                "gold": gold,
            }
        )
    return out


def _export(history: list[dict], fmt: str, tmp_path: Path) -> list[TraceRecord]:
    """``history`` written the way ``fmt``'s tool keeps it, read back by its reader."""
    if fmt == "langsmith":
        runs = [
            Run(id=uuid.uuid5(uuid.NAMESPACE_URL, h["id"]), name="VectorStoreRetriever",
                run_type="retriever", start_time=datetime.fromtimestamp(h["time"], timezone.utc),
                inputs={"query": h["query"]},
                outputs={"documents": [{"page_content": "", "metadata": {"score": s}, "id": i}
                                       for i, s in zip(h["ids"], h["scores"], strict=True)]})
            for h in history
        ]  # fmt: skip
        feedback = [
            _feedback(run_id=r.id, key="relevance",
                     correction={"relevant_ids": h["gold"]}, created_at=r.start_time)
            for r, h in zip(runs, history, strict=True)
        ]  # fmt: skip
        path = tmp_path / "runs.jsonl"
        path.write_text("\n".join(r.model_dump_json() for r in runs))
        return langsmith.read(path, feedback, score_key="score")
    if fmt == "langfuse":
        obs = {"data": [
            {"id": h["id"], "traceId": h["id"], "type": "RETRIEVER",
             "startTime": datetime.fromtimestamp(h["time"], timezone.utc).isoformat(),
             "input": {"query": h["query"]},
             "output": [{"id": i, "score": s} for i, s in zip(h["ids"], h["scores"], strict=True)]}
            for h in history
        ]}  # fmt: skip
        scores = {"data": [
            {"id": f"s-{h['id']}", "traceId": h["id"], "observationId": h["id"],
             "dataType": "NUMERIC", "value": 1.0, "metadata": {"relevant_ids": h["gold"]}}
            for h in history
        ]}  # fmt: skip
        return langfuse.read(obs, scores)
    if fmt == "phoenix":
        spans = pd.DataFrame(
            {
                "context.span_id": [h["span"] for h in history],
                "span_kind": "RETRIEVER",
                "start_time": pd.to_datetime([h["time"] for h in history], unit="s", utc=True),
                "attributes.input.value": [h["query"] for h in history],
                "attributes.retrieval.documents": [
                    [
                        {"document.id": i, "document.score": s}
                        for i, s in zip(h["ids"], h["scores"], strict=True)
                    ]
                    for h in history
                ],
            }
        )  # fmt: skip
        # Phoenix annotates retrieved documents only: the live side records shown gold only
        notes = pd.DataFrame(
            [
                {"context.span_id": h["span"], "document_position": p, "label": "relevant"}
                for h in history
                for p, i in enumerate(h["ids"])
                if i in h["gold"]
            ]
        )
        return phoenix.read(spans, notes)
    path = tmp_path / "history.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"query": h["query"], "external_id": h["id"], "time": h["time"],
                        "result_ids": h["ids"], "scores": h["scores"],
                        "feedback": [{"relevant_ids": h["gold"]}]})
            for h in history
        )
    )  # fmt: skip
    return jsonl.read(path)


def _finetune_gain(state: NudgeState) -> float:
    report = NudgeFinetuneEngine(state, llm=None, seed=0, progress=False).finetune()
    assert report.proven
    return report.ndcg.gain


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["langsmith", "langfuse", "phoenix", "jsonl"])
def test_scifact_imported_history_gives_the_live_gain(fmt: str, tmp_path: Path):
    from nudge_rag.eval.simulate import beir_state

    ds = _scifact()
    if ds is None:
        pytest.skip("../shared/data/scifact not found (set NUDGE_RAG_DATA to the data folder)")
    history = _history(ds)
    shown_only = fmt == "phoenix"  # document annotations judge retrieved documents only
    live = beir_state(ds, tmp_path / "live")
    try:
        for h in history:
            gold = [i for i in h["gold"] if i in h["ids"]] if shown_only else h["gold"]
            emb = live.embed_queries([h["query"]])[0]
            tid = live.record_search(h["query"], emb, 10, None, h["ids"], h["scores"])
            if gold:
                live.record_feedback(tid, relevant_ids=gold)
        live_gain = _finetune_gain(live)
    finally:
        live.close()
    imported = beir_state(ds, tmp_path / "imported")
    try:
        rep = imported.import_traces(_export(history, fmt, tmp_path))
        assert rep.imported == len(history) and rep.bad == [] and rep.unknown_ids == 0
        gain = _finetune_gain(imported)
        assert gain > 0.05
        assert gain == pytest.approx(live_gain, abs=1e-9)
        assert imported.import_traces(_export(history, fmt, tmp_path)).imported == 0
    finally:
        imported.close()


def test_reimporting_records_without_times_adds_no_feedback(state: NudgeState):
    """A record (and its feedback) with no time: the second import finds the feedback there."""
    rec = TraceRecord(
        query="how to cancel",
        result_ids=[state.adapter.ids()[0]],
        external_id="run-1",
        source="jsonl",
        feedback=[FeedbackRecord(relevant_ids=[state.adapter.ids()[0]], rating=1.0)],
    )
    first = state.import_traces([rec])
    again = state.import_traces([rec])
    assert (first.imported, first.feedback) == (1, 1)
    assert (again.imported, again.feedback) == (0, 0)
    assert len(state.feedback()) == 1


def test_a_nul_in_an_imported_record_costs_nothing(state: NudgeState):
    """Postgres text cannot hold NUL: it becomes U+FFFD in the query and feedback text, on every
    database, so no batch is refused for one record."""
    cid = state.adapter.ids()[0]
    rec = TraceRecord(
        query="bad \x00 query",
        result_ids=[cid],
        external_id="nul",
        source="jsonl",
        feedback=[FeedbackRecord(relevant_ids=[cid], text="nul \x00 text")],
    )
    assert state.import_traces([rec]).imported == 1
    (t,) = state.traces()
    assert t.query == "bad \ufffd query" and state.feedback()[0].text == "nul \ufffd text"


# -- one bad record costs only itself -----------------------------------------------------------
def _deep(depth: int) -> dict:
    out: dict = {}
    node = out
    for _ in range(depth):
        node["and"] = {}
        node = node["and"]
    return out


BAD_RECORDS = {
    "score n/a": ({"scores": ["n/a"]}, r"scores\[0\]: expected a number"),
    "scores 5": ({"scores": 5}, r"scores: expected a list of numbers"),
    "k 10**30": ({"k": 10**30}, r"k: expected an integer in 1\.\.2\*\*63-1"),
    "surrogate external_id": ({"external_id": "run-\ud800"}, r"external_id: .*lone surrogate"),
    "surrogate source": ({"source": "tool\udfff"}, r"source: .*lone surrogate"),
    "NUL external_id": ({"external_id": "run\x00"}, r"external_id: .*NUL"),
    "filter 100k deep": ({"filter": _deep(100_000)}, r"filter: nested too deeply"),
    "time inf": ({"time": float("inf")}, r"time: expected a finite time"),
    "time NaN": ({"time": float("nan")}, r"time: expected a finite time"),
    "time 10**400": ({"time": 10**400}, r"time: expected a time"),
    "rating 10**400": (
        {"feedback": [FeedbackRecord(rating=10**400)]},
        r"rating: expected a number",
    ),
    "embedding 10**400": ({"embedding": [10**400] * DIM}, r"embedding: not a vector"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_one_bad_record_among_1000_costs_only_itself(state: NudgeState, case: str):
    """Record 700 is bad: it alone is listed with its reason, the 999 others are stored, and a
    rerun adds nothing and names it again (before: the import raised after 512 written)."""
    change, reason = BAD_RECORDS[case]
    cid = state.adapter.ids()[0]

    def rec(i: int) -> TraceRecord:
        base = {"query": f"q{i}", "result_ids": [cid], "external_id": str(i), "source": "x"}
        return TraceRecord(**{**base, **(change if i == 700 else {})})  # type: ignore[arg-type]

    for attempt in range(2):
        rep = state.import_traces(rec(i) for i in range(1000))
        assert [n for n, _, _ in rep.bad] == [700]
        assert re.search(reason, rep.bad[0][2]), rep.bad[0][2]
        assert (rep.imported, rep.skipped_duplicates) == ((999, 0) if attempt == 0 else (0, 999))
    assert len(state.trace_log) == 999
    assert "700" not in {t.external_id for t in state.traces()}


def test_chunk_ids_no_store_can_hold_are_unknown_not_fatal(state: NudgeState):
    """A result id holding a NUL or a lone surrogate is dropped and counted like any id the store
    does not hold; the store is never asked about it (a Postgres store would refuse the query)."""
    cid = state.adapter.ids()[0]
    asked: list[list[str]] = []
    real = state.known_ids
    state.known_ids = lambda ids: (asked.append(list(ids)), real(ids))[1]  # type: ignore[method-assign]
    rec = TraceRecord(
        query="q", result_ids=[cid, "a\x00b", "c\ud800"], external_id="1", source="x",
        feedback=[FeedbackRecord(relevant_ids=[cid, "a\x00b"])],
    )  # fmt: skip
    rep = state.import_traces([rec])
    assert (rep.imported, rep.bad, rep.unknown_ids, rep.feedback) == (1, [], 2, 1)
    assert asked == [[cid]]
    assert state.traces()[0].result_ids == [cid]


def test_a_row_the_database_refuses_costs_only_itself(state: NudgeState):
    """What the checks miss, the database may refuse: that row is left out and named, the rest of
    its transaction is written (one by one under savepoints)."""
    cid = state.adapter.ids()[0]
    good = TraceRecord(query="fine", result_ids=[cid], external_id="1", source="x")
    one = np.ones(DIM, np.float32).tobytes()
    rows = [
        ("x", "1", 1.7e9, "fine", one, DIM, 1, None, [cid], [0.5], []),
        ("x", "2", 1.7e9, "bad", one, DIM, 2**64, None, [], [], []),  # beyond SQLite's INTEGER
        ("x", "3", 1.7e9, "fine", one, DIM, 1, None, [], [], []),
    ]
    done = state.trace_log.import_rows(rows)
    assert [s for _, s, _ in done] == ["new", "refused", "new"]
    assert "SQLite refused the row" in done[1][0] and "OverflowError" in done[1][0]
    assert sorted(t.external_id for t in state.traces()) == ["1", "3"]
    assert state.import_traces([good]).skipped_duplicates == 1


@pytest.mark.integration
def test_a_nul_in_an_id_on_postgres_costs_only_its_record(pg: Any, db: str, tmp_path: Path):
    pytest.importorskip("psycopg", reason='needs pip install "nudge-rag[postgres]"')
    rng = np.random.default_rng(0)
    records = {d: {"id": d, "vector": rng.normal(size=DIM).tolist(), "text": d} for d in DOCS}
    url = f"{pg.url(db)}&schema=nudge_imp"
    s = NudgeState(MemoryAdapter(records, metric="cosine"), url, embed_queries=CountingEmbedder())
    try:
        recs = [
            TraceRecord(query=f"q{i}", result_ids=["refund"], external_id=f"r{i}", source="x")
            for i in range(5)
        ]
        recs[2] = TraceRecord(query="nul", result_ids=["refund"], external_id="r\x002", source="x")
        recs[3] = TraceRecord(query="nul", result_ids=["refund"], external_id="r3", source="x\x00")
        rep = s.import_traces(recs)
        assert [n for n, _, _ in rep.bad] == [2, 3] and rep.imported == 3
        assert sorted(t.external_id for t in s.traces()) == ["r0", "r1", "r4"]
    finally:
        s.close()


# -- times ahead of the clock -----------------------------------------------------------------
def test_times_far_ahead_are_clamped_to_the_import_time_and_said_so(state: NudgeState):
    """A fast clock or ``time: 1e308`` never lands in the log: the trace and feedback times are
    set to the import's time, counted, warned about once; a re-import adds nothing."""
    cid = state.adapter.ids()[0]
    now = time.time()
    recs = [
        TraceRecord(query="day ahead", result_ids=[cid], time=now + 86400, external_id="a",
                    source="x", feedback=[FeedbackRecord(relevant_ids=[cid])]),
        TraceRecord(query="1e308", result_ids=[cid], time=1e308, source="x"),
        TraceRecord(query="fb ahead", result_ids=[cid], time=now - 60, external_id="c",
                    source="x", feedback=[FeedbackRecord(relevant_ids=[cid], time=now + 3600)]),
        TraceRecord(query="just ahead", result_ids=[cid], time=now + 60, external_id="d",
                    source="x"),
    ]  # fmt: skip
    with pytest.warns(RuntimeWarning, match=r"3 records or feedback lay more than 300 s ahead"):
        rep = state.import_traces(recs)
    assert (rep.imported, rep.bad, rep.future_times) == (4, [], 3)
    assert [(n, tm) for n, _, tm in rep.future_examples] == [
        (0, now + 86400),
        (1, 1e308),
        (2, now + 3600),
    ]
    assert "3 times ahead of this clock set to the import's time" in str(rep)
    after = time.time()
    times = {t.query: t.time for t in state.traces()}
    assert now <= times["day ahead"] <= after and now <= times["1e308"] <= after
    assert times["fb ahead"] == now - 60 and times["just ahead"] == now + 60  # within 300 s
    assert all(now <= f.time <= after for f in state.feedback())
    with pytest.warns(RuntimeWarning):
        again = state.import_traces(recs)
    assert (again.imported, again.skipped_duplicates, again.feedback) == (0, 4, 0)


def test_times_far_ahead_can_be_refused(state: NudgeState):
    now = time.time()
    recs = [
        TraceRecord(query="ahead", time=now + 7200, external_id="a", source="x"),
        TraceRecord(query="fine", time=now, external_id="b", source="x"),
    ]
    rep = state.import_traces(recs, future_times="refuse", max_future_s=3600)
    assert rep.imported == 1 and [n for n, _, _ in rep.bad] == [0]
    assert re.search(r"time: .* lies 7.2e\+03 s ahead .*max_future_s=3600", rep.bad[0][2])
    assert state.import_traces(recs[:1], max_future_s=None).imported == 1
    with pytest.raises(NudgeError, match=r"future_times: expected 'clamp' or 'refuse'"):
        state.import_traces(recs, future_times="drop")
    with pytest.raises(NudgeError, match=r"max_future_s: expected seconds >= 0"):
        state.import_traces(recs, max_future_s=-1)


# -- memory does not grow with the export -------------------------------------------------------
def _write_export(path: Path, fmt: str, n: int) -> int:
    """A LangSmith JSON array (runs with 5 documents of 3,000 characters each) or a JSONL file
    (records with a 384-number embedding padded by a long query), written a record at a time."""
    rng = np.random.default_rng(1)
    with path.open("w") as f:
        f.write("[\n" if fmt == "langsmith" else "")
        for i in range(n):
            if fmt == "langsmith":
                docs = [
                    {"page_content": "x" * 3000, "metadata": {"score": 0.5}, "id": DOCS[j]}
                    for j in range(5)
                ]
                run = {
                    "id": f"run-{i}",
                    "run_type": "retriever",
                    "start_time": 1.7e9 + i,
                    "inputs": {"query": f"question {i}"},
                    "outputs": {"documents": docs},
                }
                f.write(("" if i == 0 else ",\n") + json.dumps(run))
            else:
                line = {
                    "query": f"q{i} " + "y" * 10_000,
                    "external_id": str(i),
                    "embedding": rng.normal(size=DIM).tolist(),
                    "result_ids": DOCS[:3],
                }
                f.write(json.dumps(line) + "\n")
        f.write("\n]\n" if fmt == "langsmith" else "")
    return path.stat().st_size


@pytest.mark.parametrize("fmt", ["langsmith", "jsonl"])
def test_import_memory_does_not_grow_with_the_export(fmt: str, tmp_path: Path):
    """Peak Python memory (tracemalloc) of reading and importing a 4x larger export stays
    within 1.5x of the smaller one's, and below a third of the big file's size (before: the
    whole file, then every record, was held: peaks several times the file's size)."""
    import tracemalloc

    peaks, sizes = [], []
    for n in (250, 1000):
        path = tmp_path / f"{fmt}-{n}.json"
        sizes.append(_write_export(path, fmt, n))
        s = NudgeState(
            MemoryAdapter({d: {"id": d, "vector": [1.0] * DIM} for d in DOCS}, metric="cosine"),
            tmp_path / f"state-{n}",
            embed_queries=CountingEmbedder(),
        )
        tracemalloc.start()
        try:
            rep = s.import_traces(langsmith.read(path) if fmt == "langsmith" else jsonl.read(path))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
            s.close()
        assert rep.imported == n and rep.bad == []
    assert sizes[1] > 3.9 * sizes[0] > 3.9 * 2.5e6
    assert peaks[1] < 1.5 * peaks[0], (peaks, sizes)
    assert peaks[1] < sizes[1] / 3, (peaks, sizes)


def test_a_streamed_export_with_odd_items_imports_the_rest(tmp_path: Path, state: NudgeState):
    """A LangSmith JSON array whose run 1 holds a document that is a number and whose end is
    cut off: run 1 and the cut are listed as bad, the others imported."""
    runs, _ = _langsmith_history()
    good = [json.loads(r.model_dump_json()) for r in runs]
    odd = {**good[1], "id": str(uuid.uuid4()), "outputs": {"documents": [42]}}
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([good[1], odd, good[2]], indent=2)[:-1] + ', {"id": "cut')
    rep = state.import_traces(langsmith.read(path))
    assert rep.imported == 2 and [n for n, _, _ in rep.bad] == [1, 3]
    assert "runs[1]: expected a record object or a dict, found int" in rep.bad[0][2]
    assert re.search(r"runs\.json line \d+: not valid JSON .*rest of the file", rep.bad[1][2])


def test_records_from_a_one_shot_iterator_say_so_when_read_again(state: NudgeState):
    runs, feedback = _langsmith_history()
    recs = langsmith.read(iter(runs), feedback)
    assert state.import_traces(recs).imported == 2
    with pytest.raises(NudgeError, match=r"read from an iterator, which is used up"):
        state.import_traces(recs)
    again = langsmith.read(runs, feedback)  # a list: read as often as wanted
    assert len(again) == 2 and state.import_traces(again).skipped_duplicates == 2


def test_a_progress_bar_counts_the_records(state: NudgeState, capsys: pytest.CaptureFixture):
    pytest.importorskip("tqdm")
    recs = [TraceRecord(query=f"q{i}", external_id=str(i), source="x") for i in range(300)]
    assert state.import_traces(recs, progress=True).imported == 300
    assert re.search(r"importing traces: .*300 records", capsys.readouterr().err)
    state.import_traces(recs)  # not on a terminal: no bar
    assert capsys.readouterr().err == ""
