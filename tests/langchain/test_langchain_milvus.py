"""NudgedVectorStore over ``langchain_milvus.Milvus`` on Milvus Lite (an embedded ``.db`` file).

LangChain's standard VectorStore contract, wrapped == bare on SciFact, apply + rollback bit for
bit, feedback by parent id through Milvus filter expressions, and the store's own quirks (a
collection made on the first add, auto ids, reopening a collection from disk).
"""

from __future__ import annotations

import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.shared_data import scifact_lookup

pytest.importorskip("langchain_milvus")
pytest.importorskip("milvus_lite")

from langchain_core.vectorstores import VectorStore
from langchain_milvus import Milvus
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from pymilvus import MilvusClient

from nudge_rag.errors import MetricMismatchError, NudgeError, UnknownIdError
from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.langchain.backends.milvus import MilvusBackend, register_orm_alias
from nudge_rag.langchain.embeddings import LookupEmbeddings
from nudge_rag.stores.base import Metric

pytestmark = pytest.mark.integration

N_QUERIES = 60


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One Milvus Lite file per module (one embedded server); each test its own collection."""
    return str(tmp_path_factory.mktemp("milvus") / "milvus.db")


def _milvus(uri: str, embedding: Any, metric: str = "COSINE", **kw: Any) -> Milvus:
    return Milvus(
        embedding,
        collection_name=kw.pop("collection_name", f"t{uuid.uuid4().hex}"),
        connection_args={"uri": uri},
        index_params={"metric_type": metric, "index_type": "FLAT"},
        **{"enable_dynamic_field": True, **kw},
    )


class TestMilvusLite(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, uri, tmp_path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        inner = _milvus(uri, self.get_embeddings())
        store = NudgedVectorStore(inner, state_dir=tmp_path / "state", trace_metadata_key=None)
        yield store
        store.close()
        inner.drop()


# -- SciFact: the wrapper never changes results ------------------------------------------------
@pytest.fixture(scope="module")
def scifact(scifact_corpus, scifact_queries):
    return scifact_lookup(scifact_corpus, scifact_queries, N_QUERIES)


def _bare_ids(pairs) -> list[str]:
    return [d.metadata["pk"] for d, _ in pairs]


@pytest.mark.integration
def test_wrapped_equals_bare_on_scifact_and_rollback_is_exact(uri, scifact, tmp_path):
    doc_ids, emb, qtexts = scifact
    inner = _milvus(uri, emb, collection_name="scifact")
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    assert isinstance(store.backend, MilvusBackend)
    assert store.nudge_state.metric is Metric.COSINE
    store.add_texts([f"doc {i}" for i in doc_ids], ids=doc_ids)
    bare_before = []
    for q in qtexts:
        bare = inner.similarity_search_with_score(q, k=10)
        wrapped = store.similarity_search_with_score(q, k=10)
        assert [d.id for d, _ in wrapped] == _bare_ids(bare), q
        assert [s for _, s in wrapped] == [s for _, s in bare], q
        assert len(wrapped) == 10 and all(d.metadata["nudge_trace_id"] for d, _ in wrapped)
        assert "pk" not in wrapped[0][0].metadata
        bare_before.append(_bare_ids(bare))
    traces = store.traces()
    assert len(traces) == N_QUERIES and traces[0].result_ids == bare_before[0]
    # COSINE scores are similarities: the first result scores highest
    assert traces[0].scores[0] >= traces[0].scores[-1]
    # a nudge changes what the store serves; a rollback gives the bare results back, bit for bit
    top = bare_before[0][:3]
    held = store.get_vectors(top)
    qv = np.asarray(emb.embed_query(qtexts[0]), dtype=np.float32)
    assert store.apply_vectors({i: -qv for i in top}, method="nudge-n") == 1
    np.testing.assert_array_equal(store.get_vectors(top), np.tile(-qv, (3, 1)))
    moved = _bare_ids(inner.similarity_search_with_score(qtexts[0], k=10))
    assert not set(top) & set(moved)
    assert [d.id for d in store.similarity_search(qtexts[0], k=10)] == moved
    with pytest.raises(MetricMismatchError):
        store.apply_vectors({top[0]: qv}, method="nudge-m")  # cosine store: NUDGE-M refused
    with pytest.raises(UnknownIdError):
        store.apply_vectors({"no such doc": qv}, method="nudge-n")
    store.rollback(0)
    np.testing.assert_array_equal(
        store.get_vectors(top).view(np.uint32), held.astype(np.float32).view(np.uint32)
    )
    for q, before in zip(qtexts[:20], bare_before, strict=False):
        assert _bare_ids(inner.similarity_search_with_score(q, k=10)) == before
        assert [d.id for d in store.similarity_search(q, k=10)] == before
    # text and metadata survive the partial upserts
    (doc,) = store.get_by_ids([top[0]])
    assert doc.page_content == f"doc {top[0]}" and doc.metadata == {}
    assert store.nudge_state.current_version == 0
    store.close()
    inner.drop()


# -- a small store: scores, filters, parent ids -------------------------------------------------
def _small(uri: str, tmp_path: Path, metric: str = "COSINE", **kw: Any):
    """40 chunks in 8 parents (metadata ``parent``, ``parent-id``), random 16-d vectors."""
    rng = np.random.default_rng(7)
    texts = [f"t{i}" for i in range(40)]
    vecs = rng.normal(size=(41, 16)).astype(np.float32)
    emb = LookupEmbeddings({**dict(zip(texts, vecs, strict=False)), "q": vecs[40]})
    inner = _milvus(uri, emb, metric, **kw)
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state", parent_id_key="parent")
    metas = [
        {"topic": "ab"[i % 2], "parent": f'p"{i // 5}\\', "parent-id": f"q{i // 5}", "n": i}
        for i in range(40)
    ]
    store.add_texts(texts, metas, ids=[f"c{i}" for i in range(40)])
    return inner, store, emb


@pytest.mark.parametrize(
    ("metric", "kind"), [("COSINE", "similarity"), ("IP", "similarity"), ("L2", "distance")]
)
def test_scores_run_the_metric_way(uri, tmp_path, metric, kind):
    inner, store, _ = _small(uri, tmp_path, metric)
    assert store.nudge_state.metric is Metric(metric.lower())
    assert store.nudge_state.trace_log.score_kind == kind
    wrapped = store.similarity_search_with_score("q", k=40)
    scores = [s for _, s in wrapped]
    assert scores == sorted(scores, reverse=kind == "similarity")
    assert [(d.id, s) for d, s in wrapped] == [
        (d.metadata["pk"], s) for d, s in inner.similarity_search_with_score("q", k=40)
    ]
    store.close()
    inner.drop()


@pytest.mark.parametrize("dynamic", [True, False])
def test_filters_pass_through_and_parent_feedback(uri, tmp_path, dynamic):
    inner, store, _ = _small(uri, tmp_path, enable_dynamic_field=dynamic)
    for expr in ('topic == "a"', "n >= 30", 'topic == "b" or n == 0'):
        bare = inner.similarity_search_with_score("q", k=6, expr=expr)
        wrapped = store.similarity_search_with_score("q", k=6, expr=expr)
        assert [(d.id, s) for d, s in wrapped] == [(d.metadata["pk"], s) for d, s in bare]
        assert wrapped and all(d.metadata["nudge_trace_id"] for d, _ in wrapped)
    only_a = store.similarity_search("q", k=40, expr='topic == "a"')
    assert len(only_a) == 20 and {d.metadata["topic"] for d in only_a} == {"a"}
    # feedback by parent id: a Milvus expression on the metadata field (quotes and backslashes
    # in the values are escaped)
    p1 = 'p"1\\'
    assert store.backend.children_of([p1, "p9"], "parent") == {p1: [f"c{i}" for i in range(5, 10)]}
    if dynamic:  # a key that is not an identifier: $meta["parent-id"]
        got = store.backend.children_of(["q2", "q3"], "parent-id")
        assert {k: sorted(v) for k, v in got.items()} == {
            "q2": [f"c{i}" for i in range(10, 15)],
            "q3": [f"c{i}" for i in range(15, 20)],
        }
    else:  # the schema has only the first add's metadata columns (no hyphens allowed)
        with pytest.raises(NudgeError, match="enable_dynamic_field"):
            store.backend.children_of(["q2"], "missing_key")
    tid = store.last_trace_id
    assert tid is not None
    store.record_feedback(tid, relevant_ids=[p1], irrelevant_ids=["c0"])
    fb = store.feedback(tid)[0]
    assert sorted(fb.relevant_ids) == [f"c{i}" for i in range(5, 10)] and fb.irrelevant_ids == [
        "c0"
    ]
    with pytest.raises(UnknownIdError):
        store.record_feedback(tid, relevant_ids=["p99"])
    store.close()
    inner.drop()


def test_overwrite_delete_and_get_by_ids(uri, tmp_path):
    inner, store, emb = _small(uri, tmp_path)
    emb.table["new text"] = emb.table["t0"] * -1
    store.add_texts(["new text"], [{"topic": "z"}], ids=["c1"])  # same id: overwritten, once
    rows = inner.client.query(inner.collection_name, filter='pk == "c1"', output_fields=["pk"])
    assert len(rows) == 1
    docs = store.get_by_ids(["c1", "nope", "c2"])
    assert [(d.id, d.page_content, d.metadata) for d in docs] == [
        ("c1", "new text", {"topic": "z"}),
        ("c2", "t2", {"topic": "a", "parent": 'p"0\\', "parent-id": "q0", "n": 2}),
    ]
    np.testing.assert_array_equal(store.get_vectors(["c1"])[0], emb.table["new text"])
    store.delete(["c1", "nope"])
    assert store.get_by_ids(["c1"]) == [] and "c1" not in store.nudge_state.ids()
    store.close()
    inner.drop()


def test_empty_store_is_wrapped_before_its_collection_exists(uri, tmp_path):
    emb = LookupEmbeddings({"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "q": [1.0, 0.1, 0.0]})
    inner = _milvus(uri, emb, "IP")
    assert not inner.client.has_collection(inner.collection_name)
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    assert store.nudge_state.metric is Metric.IP  # from index_params, before any add
    assert store.similarity_search("q", k=2) == [] and store.get_by_ids(["a"]) == []
    with pytest.raises(UnknownIdError):
        store.get_vectors(["a"])
    store.add_texts(["a", "b"], ids=["a", "b"])  # langchain-milvus creates the collection here
    assert [d.id for d in store.similarity_search("q", k=2)] == ["a", "b"]
    assert store.apply_vectors({"b": np.array([2.0, 0.0, 0.0])}, method="nudge-m") == 1
    assert [d.id for d in store.similarity_search("q", k=2)] == ["b", "a"]
    store.rollback(0)
    assert [d.id for d in store.similarity_search("q", k=2)] == ["a", "b"]
    store.close()
    inner.drop()


def test_reopened_collection_and_auto_id(uri, tmp_path):
    _, store, emb = _small(uri, tmp_path, collection_name="reopen")
    before = [d.id for d in store.similarity_search("q", k=5)]
    store.close()
    # langchain-milvus opens an existing collection through pymilvus's ORM, under an alias that
    # pymilvus >= 2.6.10 leaves unregistered; register_orm_alias makes that work
    register_orm_alias(MilvusClient(uri=uri))
    again = _milvus(uri, emb, collection_name="reopen")
    wrapped = NudgedVectorStore(again, state_dir=tmp_path / "state")
    assert [d.id for d in wrapped.similarity_search("q", k=5)] == before
    wrapped.close()
    again.drop()
    # an auto-id collection ignores the ids given: adding through the wrapper is refused
    auto = _milvus(uri, emb, auto_id=True)
    auto_store = NudgedVectorStore(auto, state_dir=tmp_path / "auto")
    with pytest.raises(NudgeError, match="auto_id=False"):
        auto_store.add_texts(["t1"], ids=["x"])
    auto_store.close()


def test_unsupported_shapes_are_refused(uri, tmp_path):
    from langchain_milvus import BM25BuiltInFunction

    emb = LookupEmbeddings({"a": [1.0, 0.0]})
    hybrid = Milvus(
        emb,
        builtin_function=BM25BuiltInFunction(),
        vector_field=["dense", "sparse"],
        collection_name=f"t{uuid.uuid4().hex}",
        connection_args={"uri": uri},
    )
    with pytest.raises(NudgeError, match="one dense vector field"):
        NudgedVectorStore(hybrid, state_dir=tmp_path / "state")
