"""NudgedVectorStore beyond the standard contract: traces, feedback, versions, default Chroma."""

from __future__ import annotations

import math

import numpy as np
import pytest
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore

from nudge_rag.errors import MetricMismatchError, NudgeError, UnknownIdError
from nudge_rag.langchain import NudgedVectorStore, adapter_for

EMB = DeterministicFakeEmbedding(size=16)
TEXTS = ["apples are red", "the sky is blue", "grass is green", "snow is white", "coal is black"]
IDS = ["a", "b", "c", "d", "e"]
_QDRANT_KEYS = {"_nudge_id", "_id", "_collection_name"}


def _chroma(tmp_path, space: str = "cosine") -> Chroma:
    return Chroma(
        collection_name="docs",
        embedding_function=EMB,
        persist_directory=str(tmp_path / "db"),
        collection_metadata={"hnsw:space": space},
    )


def _qdrant(tmp_path):
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path / "qdrant"))
    client.create_collection(
        "docs", vectors_config=models.VectorParams(size=16, distance=models.Distance.COSINE)
    )
    return QdrantVectorStore(client=client, collection_name="docs", embedding=EMB)


def _faiss():
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS

    return FAISS(EMB, faiss.IndexFlatL2(16), InMemoryDocstore(), {})


def _inner(kind: str, tmp_path) -> VectorStore:
    if kind == "chroma":
        return _chroma(tmp_path)
    if kind == "qdrant":
        return _qdrant(tmp_path)
    if kind == "faiss":
        return _faiss()
    return InMemoryVectorStore(EMB)


def _bare_id(doc: Document) -> str | None:
    """The document id as the app knows it (Qdrant's bare results carry point ids)."""
    return doc.metadata.get("_nudge_id", doc.id)


@pytest.fixture(params=["chroma", "memory", "qdrant", "faiss"])
def pair(request, tmp_path) -> tuple[NudgedVectorStore, VectorStore]:
    inner = _inner(request.param, tmp_path)
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    store.add_texts(TEXTS, [{"n": i} for i in range(5)], ids=IDS)
    yield store, inner
    store.close()
    _close(inner)


def test_documents_carry_trace_id_and_feedback_round_trips(pair):
    store, _ = pair
    docs = store.similarity_search("the sky is blue", k=2)
    tid = docs[0].metadata["nudge_trace_id"]
    assert all(d.metadata["nudge_trace_id"] == tid for d in docs)
    assert store.last_trace_id == tid
    (trace,) = store.traces()
    assert trace.id == tid and trace.query == "the sky is blue" and trace.k == 2
    assert trace.result_ids == [d.id for d in docs] and docs[0].id == "b"
    assert np.allclose(trace.embedding, EMB.embed_query("the sky is blue"), atol=1e-6)
    store.record_feedback(tid, relevant_ids=["e"], irrelevant_ids=["b"], rating=0.0)
    (fb,) = store.feedback(tid)
    assert fb.relevant_ids == ["e"] and fb.irrelevant_ids == ["b"]
    with pytest.raises(UnknownIdError, match="'zz'"):
        store.record_feedback(tid, relevant_ids=["zz"])


def _assert_scores_follow_kind(scores: list[float], kind: str | None) -> None:
    assert kind in ("similarity", "distance")
    assert len(set(scores)) > 1  # the check below means something
    assert scores == sorted(scores, reverse=kind == "similarity"), (kind, scores)


def test_score_kind_says_which_way_the_store_scores_run(pair, tmp_path):
    """Traces keep the store's own scores; score_kind tells distances from similarities."""
    store, _ = pair
    store.similarity_search_with_score("grass", k=5)
    kind = store.nudge_state.trace_log.score_kind
    _assert_scores_follow_kind(store.traces()[-1].scores, kind)
    assert store.nudge_state.trace_log.export_jsonl(tmp_path / "t.jsonl") == 1
    assert '"score_kind": "' + kind + '"' in (tmp_path / "t.jsonl").read_text()


def test_score_kind_of_an_inner_product_faiss_index(tmp_path):
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy

    inner = FAISS(
        EMB,
        faiss.IndexFlatIP(16),
        InMemoryDocstore(),
        {},
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    store.add_texts(TEXTS, ids=IDS)
    store.similarity_search_with_score("grass", k=5)
    assert store.nudge_state.trace_log.score_kind == "similarity"
    _assert_scores_follow_kind(store.traces()[-1].scores, "similarity")
    store.close()


def test_wrapped_results_equal_bare(pair):
    store, inner = pair
    for q in ["grass", "coal is black", "sky"]:
        bare = inner.similarity_search_with_score(q, k=5)
        wrapped = store.similarity_search_with_score(q, k=5)
        assert [d.id for d, _ in wrapped] == [_bare_id(d) for d, _ in bare]
        assert [s for _, s in wrapped] == [s for _, s in bare]
        for (w, _), (b, _) in zip(wrapped, bare, strict=True):
            meta = dict(w.metadata)
            meta.pop("nudge_trace_id")
            assert meta == {k: v for k, v in b.metadata.items() if k not in _QDRANT_KEYS}
            assert w.page_content == b.page_content
        try:
            rel_b = inner.similarity_search_with_relevance_scores(q, k=3, score_threshold=-9)
        except NotImplementedError:  # InMemoryVectorStore has no relevance function
            with pytest.raises(NotImplementedError):
                store.similarity_search_with_relevance_scores(q, k=3)
        else:
            rel_w = store.similarity_search_with_relevance_scores(q, k=3, score_threshold=-9)
            assert [(d.id, s) for d, s in rel_w] == [(_bare_id(d), s) for d, s in rel_b]
        mmr_b = inner.max_marginal_relevance_search(q, k=3, fetch_k=5)
        mmr_w = store.max_marginal_relevance_search(q, k=3, fetch_k=5)
        assert [d.id for d in mmr_w] == [_bare_id(d) for d in mmr_b]
    assert math.isnan(store.traces()[-1].scores[0])  # MMR: no scores


async def test_async_search_traces(pair):
    store, _ = pair
    docs = await store.asimilarity_search("snow", k=1)
    assert docs[0].metadata["nudge_trace_id"] == store.traces()[-1].id
    pairs = await store.asimilarity_search_with_score("snow", k=2)
    assert len(pairs) == 2 and len(store.traces()) == 2


def test_retriever_search_types_are_traced(pair):
    store, _ = pair
    for kind, kw in [
        ("similarity", {"k": 2}),
        ("mmr", {"k": 2, "fetch_k": 4}),
    ]:
        docs = store.as_retriever(search_type=kind, search_kwargs=kw).invoke("green grass")
        assert len(docs) == 2
        assert docs[0].metadata["nudge_trace_id"] == store.traces()[-1].id
    assert len(store.traces()) == 2


def test_tracing_off_and_on(pair):
    store, _ = pair
    store.tracing = False
    docs = store.similarity_search("snow", k=2)
    assert "nudge_trace_id" not in docs[0].metadata and store.traces() == []
    store.tracing = True
    store.similarity_search_by_vector(EMB.embed_query("snow"), k=2)
    assert store.traces()[0].query is None


def test_apply_changes_results_and_rollback_restores(pair):
    store, _ = pair
    q = EMB.embed_query("a question")
    before = [d.id for d in store.similarity_search_by_vector(q, k=5)]
    base = store.get_vectors(IDS)
    last = before[-1]
    v = store.apply_vectors({last: np.asarray(q, dtype=np.float32)}, note="pull last to query")
    assert v == 1
    assert store.similarity_search_by_vector(q, k=1)[0].id == last
    assert store.versions()[-1].note == "pull last to query"
    assert store.rollback() == 0
    assert np.array_equal(store.get_vectors(IDS), base)
    assert [d.id for d in store.similarity_search_by_vector(q, k=5)] == before


def test_overwrite_and_delete_drop_nudges(pair):
    store, _ = pair
    store.apply_vectors({"a": np.ones(16), "b": np.ones(16)})
    store.add_texts(["apples are green now"], ids=["a"])  # overwrite
    store.delete(["b", "not-there"])
    assert store.nudge_state.version_log.changed_ids() == []
    assert store.get_by_ids(["b"]) == []
    expected = np.asarray(EMB.embed_documents(["apples are green now"]), dtype=np.float32)
    store.rollback(0)
    got = store.get_vectors(["a"])
    if store.nudge_state.metric.value == "cosine":  # Qdrant keeps cosine vectors normalised
        got, expected = got / np.linalg.norm(got), expected / np.linalg.norm(expected)
    assert np.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["chroma", pytest.param("qdrant", marks=pytest.mark.integration)])
def test_cosine_rollback_to_base_is_bitwise(tmp_path, kind):
    """Cosine stores do not read back what they were given: the face keeps inserted vectors."""
    inner = _inner(kind, tmp_path)
    store = NudgedVectorStore(inner, state_dir=tmp_path / "s")
    texts = [f"document number {i}" for i in range(200)]
    ids = [str(i) for i in range(200)]
    store.add_texts(texts, ids=ids)
    snap = store.adapter.get(ids)
    rng = np.random.default_rng(0)
    store.apply_vectors({i: rng.standard_normal(16) for i in ids})
    store.rollback(0)
    assert np.array_equal(store.adapter.get(ids), snap)
    store.close()
    _close(inner)


def _close(inner: VectorStore) -> None:
    client = getattr(inner, "client", None)
    if type(inner).__name__ == "QdrantVectorStore" and client is not None:
        client.close()


def test_metric_mismatch(tmp_path):
    store = NudgedVectorStore(_chroma(tmp_path, "l2"), state_dir=tmp_path / "s")
    store.add_texts(["x"], ids=["x"])
    with pytest.raises(MetricMismatchError, match="NUDGE-N"):
        store.apply_vectors({"x": np.ones(16)}, method="NUDGE-M")
    ip = NudgedVectorStore(
        Chroma("ipdocs", embedding_function=EMB, collection_metadata={"hnsw:space": "ip"}),
        state_dir=tmp_path / "s2",
    )
    ip.add_texts(["x"], ids=["x"])
    assert ip.apply_vectors({"x": np.ones(16) * 3}, method="NUDGE-M") == 1
    store.close()
    ip.close()


def test_from_texts_persists(tmp_path):
    store = NudgedVectorStore.from_documents(
        [Document(page_content=t, id=i) for t, i in zip(TEXTS, IDS, strict=True)],
        EMB,
        persist_directory=tmp_path / "db",
    )
    assert store.nudge_state.metric.value == "cosine"
    store.apply_vectors({"c": np.ones(16)})
    store.similarity_search("green", k=1)
    store.close()
    again = NudgedVectorStore(
        Chroma("nudge_rag", embedding_function=EMB, persist_directory=str(tmp_path / "db")),
        state_dir=tmp_path / "db" / "nudge_state",
    )
    assert [v.version for v in again.versions()] == [0, 1] and len(again.traces()) == 1
    assert sorted(again.nudge_state.ids()) == sorted(IDS)
    again.close()


def test_unsupported_store_and_bad_input(tmp_path):
    class Other(InMemoryVectorStore):
        pass

    with pytest.raises(NudgeError, match="cannot reach inside; supported"):
        adapter_for(Other(EMB))
    store = NudgedVectorStore(InMemoryVectorStore(EMB), state_dir=tmp_path / "s")
    with pytest.raises(NudgeError, match="duplicates"):
        store.add_texts(["a", "b"], ids=["x", "x"])
    with pytest.raises(NudgeError, match="deletes by id only"):
        store.delete()
    with pytest.raises(NudgeError, match="wrap the bare store once"):
        NudgedVectorStore(store, state_dir=tmp_path / "s3")
    store.close()


def test_score_threshold_retriever_on_chroma(tmp_path):
    store = NudgedVectorStore(_chroma(tmp_path, "l2"), state_dir=tmp_path / "s")
    store.add_texts(TEXTS, ids=IDS)
    retriever = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"k": 2, "score_threshold": -100.0}
    )
    docs = retriever.invoke("green grass")
    assert len(docs) == 2 and docs[0].metadata["nudge_trace_id"] == store.traces()[-1].id
    store.close()


def test_chroma_documents_without_metadata_are_readable(tmp_path):
    """langchain-chroma's own get_by_ids fails on them; texts feed the LLM judge."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from nudge_rag.langchain import NudgedVectorStore

    store = NudgedVectorStore.from_texts(
        ["alpha beta", "gamma delta"], DeterministicFakeEmbedding(size=8), ids=["x", "y"],
        persist_directory=tmp_path / "db",
    )  # fmt: skip
    docs = store.get_by_ids(["y", "x", "missing"])
    assert {(d.id, d.page_content) for d in docs} == {("x", "alpha beta"), ("y", "gamma delta")}
    assert all(d.metadata == {} for d in docs)
    assert store.nudge_state.texts(["x", "missing", "y"]) == ["alpha beta", None, "gamma delta"]
