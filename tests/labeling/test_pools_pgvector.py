"""The lexical leg from Postgres full-text search on a real pgvector table (the store path)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.errors import NudgeError
from nudge_rag.labeling.pools import LexicalIndex
from nudge_rag.state.state import NudgeState
from nudge_rag.testing import OpenAIStub
from tests.labeling.test_pools import K, PoolRecorder, PoolWorld

pytestmark = pytest.mark.integration


def pg_table(pg: Any, db: str, world: PoolWorld) -> Any:
    """World's chunks in a pgvector table ``docs`` (id, embedding, document); its connection."""
    import psycopg

    from nudge_rag.stores.pgvector import conninfo_from

    conn = psycopg.connect(conninfo_from(pg.langchain_url(db)), autocommit=True)
    dim = world.vectors.shape[1]
    conn.execute(f"CREATE TABLE docs (id text PRIMARY KEY, embedding vector({dim}), document text)")
    with conn.cursor() as cur, cur.copy("COPY docs (id, embedding, document) FROM STDIN") as cp:
        for i, v in zip(world.ids, world.vectors.tolist(), strict=True):
            cp.write_row((i, "[" + ",".join(map(repr, v)) + "]", world.texts[i]))
    return conn


def test_text_search_ranks_by_postgres_full_text(pg: Any, db: str, tmp_path: Any) -> None:
    from nudge_rag.stores.pgvector import PgVectorAdapter

    world = PoolWorld(tmp_path)
    conn = pg_table(pg, db, world)
    adapter = PgVectorAdapter(conn, "docs", metric="cosine", text_column="document")
    target = world.queries[3][2]
    got = adapter.text_search(["what about rare3?", 'x" -(rare5 | & !', "", "the of"], 5)
    assert got[0] == [target]  # the one row holding the word
    assert got[1] == [world.queries[5][2]]  # punctuation is not read as tsquery syntax
    assert got[2] == [] and got[3] == []  # no words, only stop words
    many = adapter.text_search(["topic1 topic2"], 200)[0]
    assert len(many) == len(set(many)) > 5 and all(isinstance(i, str) for i in many)
    assert adapter.text_search(["topic1 topic2 rare3"], 3)[0][0] == target  # rare words weigh
    again = adapter.text_search(["what about rare3"], 5)  # the temporary tables were dropped
    assert again == [[target]]
    adapter.text_rank = "ts_rank"  # Postgres's own rank over websearch_to_tsquery(... or ...)
    assert adapter.text_search(["what about rare3?", "the of"], 5) == [[target], []]
    adapter.text_rank = "bm25"
    n_tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'docs'").fetchone()
    assert n_tables == (1,)
    with pytest.raises(NudgeError, match=r"text_column: table 'public\.docs' has no column"):
        PgVectorAdapter(conn, "docs", metric="cosine", text_column="body")
    bare = PgVectorAdapter(conn, "docs", metric="cosine")
    with pytest.raises(NudgeError, match="text_column: no text column was given"):
        bare.text_search(["rare3"], 5)


def test_store_path_pools_use_postgres_full_text(
    pg: Any, db: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the store path the lexical leg is the server's full-text search (no BM25 index is
    built in the process); on the memory path of the same store it is bm25s. Both bring the
    lexical hits into the judge's pools at label_k."""
    from nudge_rag.stores.pgvector import PgVectorAdapter

    world = PoolWorld(tmp_path)
    conn = pg_table(pg, db, world)
    adapter = PgVectorAdapter(conn, "docs", metric="cosine", text_column="document")
    world.state = NudgeState(
        adapter,
        tmp_path / "pgstate",
        embed_queries=world.state._embed_queries,
        get_texts=world.read_texts,
    )
    world.search_all()
    built: list[int] = []
    real = LexicalIndex.build.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, ids: Any, read: Any, **kw: Any) -> LexicalIndex:
        built.append(len(ids))
        return real(cls, ids, read, **kw)

    monkeypatch.setattr(LexicalIndex, "build", classmethod(counting))
    qrels = {t: {target: 1} for t, _, target in world.queries}
    got: dict[str, dict[str, list[str]]] = {}
    for corpus in ("store", "memory"):
        judge = PoolRecorder(qrels)
        with OpenAIStub(judge) as stub:
            eng = NudgeFinetuneEngine(
                world.state,
                llm=stub.client(),
                llm_model="stub",
                progress=False,
                label_k=K,
                corpus=corpus,
                cache_path=tmp_path / f"labels-{corpus}.sqlite",
            )
            with contextlib.suppress(NudgeError):  # too few labels to split is fine
                eng.finetune()
            stats = eng.last_pool_stats
            eng.close()
        assert stats.lexical and stats.lexical_kind == ("store" if corpus == "store" else "bm25s")
        got[corpus] = judge.pools
        if corpus == "store":
            assert built == []  # nothing indexed in the process
    assert built == [len(world.ids)]
    for text, _, target in world.queries:
        for corpus in ("store", "memory"):
            assert len(got[corpus][text]) == K and target in got[corpus][text]
    # adaptive depth on the store path: one text search for the pool and its reserve
    searches: list[int] = []
    real_search = adapter.text_search

    def counting_search(queries: Any, k: int) -> Any:
        searches.append(k)
        return real_search(queries, k)

    monkeypatch.setattr(adapter, "text_search", counting_search)
    judge = PoolRecorder(qrels)
    with OpenAIStub(judge) as stub:
        eng = NudgeFinetuneEngine(
            world.state,
            llm=stub.client(),
            llm_model="stub",
            progress=False,
            label_k=K,
            corpus="store",
            pool_depth="adaptive",
            cache_path=tmp_path / "labels-adaptive.sqlite",
        )
        with contextlib.suppress(NudgeError):
            eng.finetune()
        eng.close()
    assert searches == [3 * K]
    assert sum(map(len, judge.pools.values())) == K * len(world.queries)
