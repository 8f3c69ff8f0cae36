"""The corpus under NUDGE and the engine: the base matrix in memory, or the wrapped store's search.

On exact stores (FAISS flat, the in-memory store) the store path gives what the memory path
gives: the same rows, vectors (≤ 1e-6), γ and report. On HNSW stores (Chroma, pgvector,
Milvus Lite) the held-out NDCG@10 before / after differ by no more than the index's own recall
loss, measured here against exact search. Real stores throughout, SciFact's real embeddings.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.fit.corpus import MemoryCorpus, StoreCorpus, choose_corpus, normalize_rows
from nudge_rag.fit.metrics import exact_knn
from nudge_rag.fit.nudge import finetune_embeddings
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.base import Metric
from nudge_rag.stores.faiss import FaissAdapter
from nudge_rag.stores.memory import MemoryAdapter
from tests.shared_data import dataset

K = 10


# --------------------------------------------------------------------------- stores


def memory_adapter(ids: list[str], vecs: np.ndarray, tmp: Path) -> MemoryAdapter:
    records = {
        i: {"id": i, "vector": v.tolist(), "text": i} for i, v in zip(ids, vecs, strict=True)
    }
    return MemoryAdapter(records, metric=Metric.COSINE)


def faiss_adapter(ids: list[str], vecs: np.ndarray, tmp: Path) -> FaissAdapter:
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(normalize_rows(vecs))  # as LangChain's FAISS with normalize_L2=True
    return FaissAdapter(index, dict(enumerate(ids)), normalize=True)


def chroma_adapter(ids: list[str], vecs: np.ndarray, tmp: Path) -> Any:
    chromadb = pytest.importorskip("chromadb")
    from nudge_rag.stores.chroma import ChromaAdapter

    col = chromadb.PersistentClient(str(tmp / "chroma")).get_or_create_collection(
        "docs", metadata={"hnsw:space": "cosine"}
    )
    for s in range(0, len(ids), 2000):
        col.add(ids=ids[s : s + 2000], embeddings=vecs[s : s + 2000])
    return ChromaAdapter(col)


def milvus_adapter(ids: list[str], vecs: np.ndarray, tmp: Path) -> Any:
    pymilvus = pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from nudge_rag.stores.milvus import MilvusAdapter

    client = pymilvus.MilvusClient(str(tmp / "milvus.db"))
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", pymilvus.DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("embedding", pymilvus.DataType.FLOAT_VECTOR, dim=vecs.shape[1])
    index = client.prepare_index_params()
    index.add_index("embedding", index_type="HNSW", metric_type="COSINE")
    client.create_collection("docs", schema=schema, index_params=index)
    for s in range(0, len(ids), 2000):
        rows = zip(ids[s : s + 2000], vecs[s : s + 2000].tolist(), strict=True)
        client.insert("docs", [{"id": i, "embedding": v} for i, v in rows])
    return MilvusAdapter(client, "docs")


def qdrant_adapter(ids: list[str], vecs: np.ndarray, tmp: Path) -> Any:
    qdrant_client = pytest.importorskip("qdrant_client")
    from qdrant_client import models

    from nudge_rag.stores.qdrant import ORIGINAL_ID_KEY, QdrantAdapter, default_point_id

    client = qdrant_client.QdrantClient(path=str(tmp / "qdrant"))  # local mode, on disk
    params = models.VectorParams(size=vecs.shape[1], distance=models.Distance.COSINE)
    client.create_collection("docs", vectors_config=params)
    points = [
        models.PointStruct(id=default_point_id(i), vector=v, payload={ORIGINAL_ID_KEY: i})
        for i, v in zip(ids, vecs.tolist(), strict=True)
    ]
    client.upsert("docs", points=points, wait=True)
    return QdrantAdapter(client, "docs")


def pgvector_adapter(pg: Any, db: str) -> Callable[[list[str], np.ndarray, Path], Any]:
    def make(ids: list[str], vecs: np.ndarray, tmp: Path) -> Any:
        import psycopg

        from nudge_rag.stores.pgvector import PgVectorAdapter, conninfo_from

        conn = psycopg.connect(conninfo_from(pg.langchain_url(db)), autocommit=True)
        conn.execute(f"CREATE TABLE docs (id text PRIMARY KEY, embedding vector({vecs.shape[1]}))")
        with conn.cursor() as cur, cur.copy("COPY docs (id, embedding) FROM STDIN") as cp:
            for i, v in zip(ids, vecs.tolist(), strict=True):
                cp.write_row((i, "[" + ",".join(map(repr, v)) + "]"))
        conn.execute("CREATE INDEX ON docs USING hnsw (embedding vector_cosine_ops)")
        return PgVectorAdapter(conn, "docs", metric="cosine")

    return make


@pytest.mark.integration
def test_pgvector_search_spreads_a_batch_over_connections(
    pg: Any, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adapter built from a URL answers a large batch over ``search_connections`` backends
    (a server with several cores answers them at once): the same ids and scores as one."""
    from nudge_rag.stores.pgvector import PgVectorAdapter

    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(2000, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pgvector_adapter(pg, db)([f"d{i}" for i in range(2000)], vecs, Path())
    adapter = PgVectorAdapter(pg.langchain_url(db), "docs", metric="cosine")
    q = rng.normal(size=(600, 16)).astype(np.float32)
    adapter.search_connections = 1
    one = adapter.search(q, 7)
    opened = 0
    from nudge_rag.stores import pgvector as pgvector_module

    connect = pgvector_module.connect_masked

    def counting(*a: Any, **kw: Any) -> Any:
        nonlocal opened
        opened += 1
        return connect(*a, **kw)

    monkeypatch.setattr(pgvector_module, "connect_masked", counting)
    adapter.search_connections = 4
    assert adapter.search(q, 7) == one
    assert opened == 4
    assert [len(r) for r in one[0]] == [7] * 600
    adapter.close()


# --------------------------------------------------------------------------- SciFact usage


def scifact_state(make: Callable[..., Any], tmp: Path) -> tuple[NudgeState, list[str], np.ndarray]:
    """A state over SciFact in the store ``make`` builds; every SciFact query with qrels is a
    trace with feedback (its qrels), as users would leave them."""
    ds = dataset("scifact")
    assert ds.corpus_embeddings is not None and ds.query_embeddings is not None
    ids = list(ds.corpus_ids)
    vecs = np.ascontiguousarray(ds.corpus_embeddings, dtype=np.float32)
    state = NudgeState(make(ids, vecs, tmp), tmp / "state")
    qrow = {q: n for n, q in enumerate(ds.query_ids)}
    for split in ds.splits:
        for qid, rel in sorted(ds.qrels[split].items()):
            good = [d for d, g in rel.items() if g > 0]
            if qid not in qrow or not good:
                continue
            tid = state.record_search(qid, ds.query_embeddings[qrow[qid]], K, None, [], [])
            state.record_feedback(str(tid), relevant_ids=good)
    return state, ids, vecs


def finetune(state: NudgeState, corpus: str, **kw: Any) -> tuple[NudgeFinetuneEngine, Any]:
    eng = NudgeFinetuneEngine(state, corpus=corpus, progress=False, n_resamples=500, **kw)
    return eng, eng.finetune()


def assert_same_report(mem: Any, sto: Any) -> None:
    assert (mem.corpus, sto.corpus) == ("memory", "store")
    got, want = sto.vectors(), mem.vectors()
    assert sorted(got) == sorted(want) and got  # the same rows changed
    assert sto.gamma == mem.gamma
    assert max(np.abs(got[i] - want[i]).max() for i in want) <= 1e-6
    for name in ("ndcg", "recall"):
        a, b = getattr(mem, name), getattr(sto, name)
        assert (b.before, b.after, b.ci_low, b.ci_high) == pytest.approx(
            (a.before, a.after, a.ci_low, a.ci_high), abs=1e-12
        )
    assert sto.n_chunks == mem.n_chunks and sto.queries == mem.queries
    assert sto.proven == mem.proven


EXACT = {"memory": memory_adapter, "faiss-flat": faiss_adapter}


@pytest.mark.integration
@pytest.mark.parametrize("store", list(EXACT))
def test_exact_store_path_equals_memory_path(store: str, tmp_path: Path) -> None:
    state, _, _ = scifact_state(EXACT[store], tmp_path)
    _, mem = finetune(state, "auto")  # 5,183 × 384 float32 fit the default budget
    _, sto = finetune(state, "auto", memory_budget=5183 * 384 * 4 - 1)  # and now they do not
    assert_same_report(mem, sto)
    assert not sto.corpus_approximate and "store's own search (exact)" in str(sto)
    # memory beyond the store: the rows the fit touched and the top-k lists, not N
    assert 0 < sto.corpus_stats["vectors_fetched"] < state.adapter.count()
    assert mem.proven and mem.ndcg.gain > 0.05


@pytest.mark.integration
@pytest.mark.parametrize("store", list(EXACT))
def test_nudged_rows_are_ranked_by_their_base_vectors(store: str, tmp_path: Path) -> None:
    """After an apply the store ranks nudged rows by their new vectors; the next fine-tune
    must still start from base: pools, γ and the "before" figures equal the memory path's."""
    state, ids, _ = scifact_state(EXACT[store], tmp_path)
    eng, first = finetune(state, "store")
    eng.apply(first)
    # and one row pulled right onto a held-out query, which the store would now rank first
    test = eng.split_labels(eng.last_labels)[2]
    state.apply_vectors({ids[123]: test[0].embedding}, method="nudge-n", note="planted")
    _, mem = finetune(state, "memory")
    _, sto = finetune(state, "store")
    assert_same_report(mem, sto)
    assert sto.ndcg.before == first.ndcg.before  # against base, whatever the store holds now


def test_topk_excluding_grows_the_overfetch(tmp_path: Path) -> None:
    """Excluding each query's own top 50 rows forces the over-fetch to grow; the store path
    still finds exactly the memory path's top 10 among the rest."""
    state, ids, vecs = scifact_state(faiss_adapter, tmp_path)
    rng = np.random.default_rng(0)
    q = normalize_rows(vecs[rng.choice(len(ids), 40, replace=False)] + rng.normal(size=(40, 384)))
    top50 = exact_knn(q, vecs, 50, metric="cosine")[1]
    store = StoreCorpus(state, normalize=True)
    mem = MemoryCorpus(vecs, ids=ids, metric=Metric.COSINE, fit=normalize_rows(vecs))
    excluded = sorted({ids[r] for r in top50.ravel()})
    got_rows, got_scores = store.topk_excluding(q, K, store.rows_of(excluded))
    want_rows, want_scores = mem.topk_excluding(q, K, mem.rows_of(excluded))
    assert [store.ids_of(r) for r in got_rows] == [mem.ids_of(r) for r in want_rows]
    assert np.abs(got_scores - want_scores).max() <= 1e-6
    assert store.stats.refetch_rounds > 0 and store.stats.short_lists == 0


@pytest.mark.parametrize(
    "store",
    [
        "memory",
        "faiss-flat",
        "chroma",
        pytest.param("milvus", marks=pytest.mark.integration),
        pytest.param("qdrant", marks=pytest.mark.integration),
    ],
)
def test_adapter_search_is_the_metric_similarity_order(store: str, tmp_path: Path) -> None:
    makers = {**EXACT, "chroma": chroma_adapter, "milvus": milvus_adapter, "qdrant": qdrant_adapter}
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(500, 16)).astype(np.float32)
    ids = [f"d{i}" for i in range(500)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = makers[store](ids, vecs, tmp_path)
    q = rng.normal(size=(20, 16)).astype(np.float32)
    got_ids, got_scores = adapter.search(q, 5)
    want_scores, want_rows = exact_knn(q, vecs, 5, metric="cosine")
    assert got_ids == [[ids[r] for r in row] for row in want_rows]
    assert np.abs(np.asarray(got_scores) - want_scores).max() <= 1e-5
    assert adapter.count() == 500


def random_milvus(tmp: Path, n: int, d: int, seed: int) -> tuple[Any, list[str], np.ndarray]:
    """A Milvus Lite collection (HNSW, cosine) of ``n`` random rows: adapter, ids, rows."""
    vecs = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    ids = [f"d{i}" for i in range(n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return milvus_adapter(ids, vecs, tmp), ids, vecs


def spy(obj: Any, name: str) -> list[Any]:
    """Wrap ``obj.<name>`` so that each call's result is recorded; the list of results."""
    seen: list[Any] = []
    real = getattr(obj, name)

    def recording(*a: Any, **kw: Any) -> Any:
        seen.append(out := real(*a, **kw))
        return out

    setattr(obj, name, recording)
    return seen


@pytest.mark.integration
def test_milvus_search_moves_no_vectors(tmp_path: Path) -> None:
    """The store path asks Milvus for keys and scores only: with ``output_fields=[]`` Milvus
    Lite returned every hit's vector (0.3 MB a query, most of the client's RSS at 1M rows)."""
    adapter, _, _ = random_milvus(tmp_path, 300, 16, seed=3)
    seen = spy(adapter.client, "search")
    got, _ = adapter.search(np.random.default_rng(30).normal(size=(3, 16)).astype(np.float32), 5)
    assert [len(g) for g in got] == [5, 5, 5]
    fields = {f for res in seen for hits in res for hit in hits for f in hit.get("entity", {})}
    assert "embedding" not in fields


@pytest.mark.integration
def test_milvus_reads_ask_the_schema_once_per_call(tmp_path: Path) -> None:
    """``id_field`` asks the server whether the collection exists; read per row it cost one
    round trip per row (20,000 ids: 14 s to list, now 2 s), in get, put, ids and scan alike."""
    adapter, ids, vecs = random_milvus(tmp_path, 1500, 16, seed=6)
    calls = spy(adapter.client, "has_collection")
    assert np.array_equal(adapter.get(ids), vecs)
    adapter.put(ids[:1200], vecs[:1200] * 2)
    assert sorted(adapter.ids()) == sorted(ids)
    assert sum(len(page) for page, _ in adapter.scan()) == 1500
    assert len(calls) <= 20, f"{len(calls)} round trips for four calls"


@pytest.mark.integration
def test_milvus_hnsw_search_explores_more_than_the_default(tmp_path: Path) -> None:
    """The fine-tune's searches pass ``ef = max(search_ef, k)`` to an HNSW index: on 5,000
    random 64-d rows Milvus Lite's default ``ef`` (64) found 91% of the exact top 10."""
    adapter, ids, vecs = random_milvus(tmp_path, 5000, 64, seed=5)
    adapter.client.flush("docs")
    q = np.random.default_rng(50).normal(size=(50, 64)).astype(np.float32)  # not the rows
    want = [{ids[r] for r in row} for row in exact_knn(q, vecs, K, metric="cosine")[1]]

    def recall(ef: int) -> float:
        adapter.search_ef = ef
        got, _ = adapter.search(q, K)
        return float(np.mean([len(set(g) & w) / K for g, w in zip(got, want, strict=True)]))

    deadline = time.monotonic() + 120  # Milvus Lite builds the index in the background
    while recall(K) > 0.9 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert recall(K) <= 0.9, "the HNSW index was never built"
    assert adapter.approximate_search
    del adapter.search_ef  # the class default
    assert recall(adapter.search_ef) >= 0.98


@pytest.mark.integration
def test_memory_path_reads_milvus_in_one_pass(tmp_path: Path, monkeypatch: Any) -> None:
    """The memory path reads a Milvus collection page by page (``scan``), not by filtered
    queries of 1,000 ids each (which Milvus Lite answers by a pass over the collection:
    quadratic in N); the matrix equals the per-id read, nudged rows hold their base."""
    import nudge_rag.stores.milvus as milvus

    monkeypatch.setattr(milvus, "_PAGE_FLOATS", 700 * 16)  # 700-row pages, a short last one
    adapter, ids, vecs = random_milvus(tmp_path, 2500, 16, seed=4)
    state = NudgeState(adapter, tmp_path / "state")
    nudged = normalize_rows(np.random.default_rng(40).normal(size=(2, 16)).astype(np.float32))
    state.apply_vectors({ids[7]: nudged[0], ids[2400]: nudged[1]}, method="nudge-n")
    queries = spy(adapter.client, "query")
    got_ids, got = state.base_matrix()
    assert len(queries) <= 1  # the log's base rows may need none; no per-1,000-ids reads
    assert sorted(got_ids) == sorted(ids) and len(set(got_ids)) == len(ids)
    row = {i: n for n, i in enumerate(got_ids)}
    assert np.array_equal(got[[row[i] for i in ids]], vecs)  # base, also for the nudged rows
    eng = NudgeFinetuneEngine(state, corpus="memory", progress=False)
    assert eng.open_corpus().shape == (2500, 16)


@pytest.mark.integration
def test_milvus_search_reads_a_key_not_named_id(tmp_path: Path) -> None:
    """LangChain's Milvus names its INT64 key ``pk``: the store path read every hit's key as
    ``hit["id"]`` and raised KeyError on such a collection."""
    pymilvus = pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from nudge_rag.stores.milvus import MilvusAdapter

    rng = np.random.default_rng(8)
    vecs = rng.normal(size=(200, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = pymilvus.MilvusClient(str(tmp_path / "milvus.db"))
        schema = client.create_schema(auto_id=False)
        schema.add_field("pk", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("embedding", pymilvus.DataType.FLOAT_VECTOR, dim=16)
        index = client.prepare_index_params()
        index.add_index("embedding", index_type="FLAT", metric_type="COSINE")
        client.create_collection("docs", schema=schema, index_params=index)
        client.insert(
            "docs", [{"pk": 1000 + n, "embedding": v} for n, v in enumerate(vecs.tolist())]
        )
    adapter = MilvusAdapter(client, "docs")
    q = rng.normal(size=(4, 16)).astype(np.float32)
    got, _ = adapter.search(q, 5)
    want = exact_knn(q, vecs, 5, metric="cosine")[1]
    assert got == [[str(1000 + r) for r in row] for row in want]


def test_base_matrix_survives_a_stale_count_and_repeated_ids(tmp_path: Path) -> None:
    """A scan may repeat an id across pages, and the store's count may lag behind it: every id
    once, its vector, and no oversized buffer kept behind the matrix."""
    rng = np.random.default_rng(9)
    vecs = rng.normal(size=(1000, 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(1000)]

    class Paged(MemoryAdapter):
        def count(self) -> int:
            return 900  # behind the scan

        def scan(self) -> Any:
            for a in range(0, 1000, 300):
                page = [*range(a, min(1000, a + 300)), a // 2]  # one id seen before
                yield [ids[r] for r in page], vecs[page]

    records = {
        i: {"id": i, "vector": v.tolist(), "text": i} for i, v in zip(ids, vecs, strict=True)
    }
    state = NudgeState(Paged(records, metric=Metric.COSINE), tmp_path / "state")
    got_ids, got = state.base_matrix()
    assert got_ids == ids
    assert np.array_equal(got, vecs)
    assert got.base is None or len(got.base) == 1000


def test_choosing_the_corpus(tmp_path: Path) -> None:
    vecs = normalize_rows(np.random.default_rng(2).normal(size=(100, 8)).astype(np.float32))
    ids = [str(i) for i in range(100)]
    state = NudgeState(memory_adapter(ids, vecs, tmp_path), tmp_path / "state")
    assert choose_corpus("auto", state, 100 * 8 * 4) == "memory"
    assert choose_corpus("auto", state, 100 * 8 * 4 - 1) == "store"
    assert choose_corpus("memory", state, 0) == "memory"

    class Bare:
        adapter = object()

    assert choose_corpus("auto", Bare(), 0) == "memory"
    with pytest.raises(BadInputError, match="offers no search"):
        choose_corpus("store", Bare(), 0)
    with pytest.raises(NudgeError, match="corpus: found 'disk'"):
        NudgeFinetuneEngine(state, corpus="disk")


def test_finetune_embeddings_takes_a_corpus(tmp_path: Path) -> None:
    """NUDGE itself on the store path: only the labelled rows and the top-k lists are read."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(20, 24))
    vecs = normalize_rows(centers[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 24)))
    ids = [f"c{i}" for i in range(2000)]
    state = NudgeState(faiss_adapter(ids, vecs, tmp_path), tmp_path / "state")
    store = StoreCorpus(state, normalize=True)
    rows = store.rows_of(ids)  # rows in id order, so both paths number rows alike
    assert list(rows) == list(range(2000))
    chosen = rng.choice(2000, 60, replace=False)
    sides = rng.normal(size=(60, 24))  # the users of one chunk ask from one side of it
    pick = rng.integers(0, 60, 300)
    targets = chosen[pick]
    noise = sides[pick] + 0.5 * rng.normal(size=(300, 24))
    queries = normalize_rows(vecs[targets] + 1.3 * noise / np.sqrt(24))
    train = [[int(t)] for t in targets[:200]]
    val = [[int(t)] for t in targets[200:]]
    kw = {"train_positives": train, "val_queries": queries[200:], "val_positives": val}
    want = finetune_embeddings(vecs, queries[:200], **kw)
    got = finetune_embeddings(store, queries[:200], **kw)
    assert want.gamma > 0 and len(want.rows)
    assert got.gamma == want.gamma and np.array_equal(got.rows, want.rows)
    assert np.abs(got.vectors - want.vectors).max() <= 1e-6


# --------------------------------------------------------------------------- HNSW stores


def heldout_recall(
    eng: NudgeFinetuneEngine, state: NudgeState, ids: list[str], vecs: np.ndarray
) -> tuple[float, float]:
    """Recall@10 of the store's own search against exact search over the held-out queries, and
    the share of those queries whose store top-10 misses any exact top-10 row."""
    test = eng.split_labels(eng.last_labels)[2]
    q = np.stack([t.embedding for t in test]).astype(np.float32)
    got, _ = state.adapter.search(q, K)  # type: ignore[attr-defined]
    exact = exact_knn(q, vecs, K, metric="cosine")[1]
    hits = np.array(
        [len(set(g) & {ids[r] for r in e}) / K for g, e in zip(got, exact, strict=True)]
    )
    return float(hits.mean()), float((hits < 1).mean())


def check_hnsw(make: Callable[..., Any], tmp_path: Path, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state, ids, vecs = scifact_state(make, tmp_path)
    _, mem = finetune(state, "memory")
    eng, sto = finetune(state, "store")
    recall, missed = heldout_recall(eng, state, ids, vecs)
    d_before = sto.ndcg.before - mem.ndcg.before
    d_after = sto.ndcg.after - mem.ndcg.after
    print(
        f"\n{name}: held-out recall@10 of the store's search vs exact {recall:.4f} (queries "
        f"with a miss {missed:.4f}); NDCG@10 "
        f"before memory {mem.ndcg.before:.4f} store {sto.ndcg.before:.4f} ({d_before:+.4f}), "
        f"after memory {mem.ndcg.after:.4f} store {sto.ndcg.after:.4f} ({d_after:+.4f}); "
        f"gamma {mem.gamma:.3f} / {sto.gamma:.3f}; {sto.corpus_stats}"
    )
    assert sto.corpus == "store" and sto.corpus_approximate
    assert "approximate index" in str(sto)
    # a query's NDCG@10 (in [0, 1]) can change only where the index missed one of its exact
    # top 10, so the mean moves by at most the share of such queries; one missed row can cost a
    # query more than 1/10, so the recall loss itself is not a bound (Chroma: 0.0048 vs 0.0043)
    assert abs(d_before) <= missed + 1e-9
    assert abs(d_after) <= missed + 1e-9
    assert sto.proven


@pytest.mark.integration
def test_chroma_hnsw_within_the_index_recall(tmp_path: Path) -> None:
    check_hnsw(chroma_adapter, tmp_path, "chroma")


@pytest.mark.integration
def test_milvus_lite_within_the_index_recall(tmp_path: Path) -> None:
    check_hnsw(milvus_adapter, tmp_path, "milvus-lite")


@pytest.mark.integration
def test_pgvector_hnsw_within_the_index_recall(pg: Any, db: str, tmp_path: Path) -> None:
    check_hnsw(pgvector_adapter(pg, db), tmp_path, "pgvector-hnsw")
