"""Documents kept without chunk ids: resolved by metadata or text, or named in the report; the
shapes today's SDKs export (Phoenix client, Langfuse's LangChain handler, LlamaIndex spans)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nudge_rag.importers import langfuse, langsmith, phoenix
from nudge_rag.importers.resolve import ContentIndex, Doc, resolve
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.memory import MemoryAdapter

DIM = 8
TEXTS = {
    "a.md": "Refunds are paid back within five days.",
    "b.md": "Cancel the plan from the billing page.",
    "c.md": "Invoices arrive monthly.",
    "d.md": "Invoices arrive monthly.",  # the same text as c.md: matches neither
}


@pytest.fixture
def state(tmp_path: Path) -> NudgeState:
    rng = np.random.default_rng(0)
    records = {
        i: {"id": i, "vector": rng.normal(size=DIM).tolist(), "text": t} for i, t in TEXTS.items()
    }

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([np.random.default_rng(len(t)).normal(size=DIM) for t in texts])

    def texts(ids: list[str]) -> list[str | None]:
        return [TEXTS.get(i) for i in ids]

    s = NudgeState(
        MemoryAdapter(records, metric="cosine"),
        tmp_path / "s",
        embed_queries=embed,
        get_texts=texts,
    )
    yield s
    s.close()


def _runs() -> list[dict]:
    """LangSmith retriever runs whose documents carry no id, only ``metadata["source"]``."""
    docs = [
        {"page_content": TEXTS[i], "metadata": {"source": i, "page": 0}, "type": "Document"}
        for i in ("a.md", "b.md")
    ]
    return [
        {"id": f"r{n}", "run_type": "retriever", "inputs": {"query": f"q{n}"},
         "outputs": {"documents": docs}, "start_time": 1.7e9 + n}
        for n in range(3)
    ]  # fmt: skip


def test_langsmith_documents_without_ids_are_named_not_reported_clean(state: NudgeState):
    report = state.import_traces(langsmith.read(_runs()))
    assert not report.clean and report.imported == 0  # was: 3 traces with no results, "0 bad"
    assert [n for n, _, _ in report.unresolved] == [0, 1, 2]
    hint = report.unresolved[0][2]
    assert "store=" in hint and "'source'" in hint
    assert "3 records with unresolved documents" in str(report)


def test_langsmith_metadata_source_is_detected_against_the_store(state: NudgeState):
    records = langsmith.read(_runs(), store=state)
    assert [r.result_ids for r in records] == [["a.md", "b.md"]] * 3
    report = state.import_traces(records)
    assert report.clean and report.imported == 3 and report.resolved == {"metadata": 6}
    assert langsmith.read(_runs(), id_key="source")[0].result_ids == ["a.md", "b.md"]


def test_content_index_matches_exact_then_normalised_text_never_ambiguous(state: NudgeState):
    index = ContentIndex(state, page=1)  # one id per page: the streaming path
    assert index.lookup(TEXTS["a.md"]) == "a.md"
    assert index.lookup("  Cancel the plan\n from the  billing page. ") == "b.md"
    assert index.lookup(TEXTS["c.md"]) is None  # held by two chunks
    assert index.lookup("unknown") is None
    ((ids, res),) = resolve(
        [[Doc(content=TEXTS["a.md"]), Doc(content=TEXTS["c.md"]), Doc(id="b.md")]], store=state
    )
    assert ids == ["a.md", None, "b.md"]
    assert (res.by_id, res.by_content, res.unresolved) == (1, 1, 1)
    assert "matches no chunk" in res.hint


def test_langfuse_langchain_handler_spans_are_read_by_default(state: NudgeState):
    docs = [{"page_content": TEXTS["a.md"], "metadata": {"source": "a.md"}, "id": "a.md"}]
    page = {
        "data": [
            {"id": "o1", "traceId": "t1", "type": "SPAN", "name": "VectorStoreRetriever",
             "input": "refund?", "output": docs},
            {"id": "o2", "traceId": "t2", "type": "SPAN", "name": "my_retriever",
             "input": {"query": "cancel?"}, "output": [{"page_content": TEXTS["b.md"]}]},
            {"id": "o3", "traceId": "t3", "type": "SPAN", "name": "format_docs",
             "input": "x", "output": "text"},
        ]
    }  # fmt: skip
    records = langfuse.read(page, store=state)
    assert [(r.external_id, r.result_ids) for r in records] == [
        ("o1", ["a.md"]),
        ("o2", ["b.md"]),
    ]
    assert records[1].resolution is not None and records[1].resolution.by_content == 1


def test_phoenix_client_frame_and_llamaindex_inner_spans(state: NudgeState):
    frame = pd.DataFrame(
        {
            "context.span_id": ["00000000000000a1", "00000000000000a2"],
            "parent_id": [None, "00000000000000a1"],
            "span_kind": ["RETRIEVER", "RETRIEVER"],
            "attributes.input.value": ["refund?", '{"query_bundle": {"query_str": "refund?"}}'],
            "attributes.retrieval.documents": [
                [{"document.content": TEXTS["a.md"], "document.metadata": {"page": 1}}],
                None,
            ],
        }
    ).set_index("context.span_id", drop=False)  # as Client().spans.get_spans_dataframe() gives
    (record,) = phoenix.read(frame, store=state)  # was: ValueError, then a bad inner record
    assert record.result_ids == ["a.md"] and record.query == "refund?"
    report = state.import_traces([record])
    assert report.clean and report.bad == [] and report.resolved == {"content": 1}
