"""Issue 20 §1: what a rollback through the wrong PGVector collection costs the version log.

An app's PGVector collection ``docs`` of N chunks, all nudged by version 1, rolled back to the
base; then ``nudge-rag rollback --to 1`` without ``--collection docs`` (so ``nudge_rag``) and with
``--collection other`` (another app's collection). Prints the command's exit status and first
line, and the rows and base records of the versions schema before and after each, then a rollback
through the right collection and what ``verify`` says.

    python benchmarks/bench_wrong_collection.py --chunks 485
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import psycopg
from langchain_postgres import PGVector
from typer.testing import CliRunner

from nudge_rag.cli import app
from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.langchain.embeddings import LookupEmbeddings
from nudge_rag.testing.pgserver import start_pgserver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=485)
    n = parser.parse_args().chunks
    pg = start_pgserver()
    try:
        pg.create_database("wrong")
        vecs = np.random.default_rng(0).normal(size=(2 * n, 8)).astype(np.float32)
        texts = [f"t{i}" for i in range(2 * n)]
        emb = LookupEmbeddings(dict(zip(texts, vecs, strict=True)))
        inner = PGVector(emb, connection=pg.langchain_url("wrong"), collection_name="docs")
        url = pg.url("wrong") + "&schema=nudge_docs"
        store = NudgedVectorStore(inner, state=url)
        ids = [f"c{i}" for i in range(n)]
        store.add_texts(texts[:n], ids=ids)
        store.apply_vectors(dict(zip(ids, -vecs[:n], strict=True)))
        store.rollback(0)
        store.close()
        other = PGVector(emb, connection=pg.langchain_url("wrong"), collection_name="other")
        other.add_texts(texts[n:], ids=[f"o{i}" for i in range(n)])

        def counts() -> str:
            with psycopg.connect(pg.conninfo("wrong")) as conn:
                rows = conn.execute("SELECT count(*) FROM nudge_docs_versions.rows").fetchone()
                base = conn.execute("SELECT count(*) FROM nudge_docs_versions.base").fetchone()
                names = [r[0] for r in conn.execute("SELECT name FROM langchain_pg_collection")]
            assert rows is not None and base is not None
            return f"rows {rows[0]}, base {base[0]}, collections {sorted(names)}"

        runner = CliRunner()
        for extra in ([], ["--collection", "other"], ["--collection", "docs"]):
            before = counts()
            t0 = time.perf_counter()
            res = runner.invoke(app, ["rollback", "--store", url, "--to", "1", *extra])
            took = time.perf_counter() - t0
            lines = res.output.strip().splitlines() or [""]
            first = next((x for x in lines if x.startswith(("error", "store"))), lines[0])[:200]
            print(f"rollback --to 1 {' '.join(extra) or '(no --collection)'}: exit {res.exit_code}")
            print(f"  {first}")
            print(f"  before: {before}\n  after:  {counts()}  ({took:.2f} s)")
        res = runner.invoke(app, ["verify", "--store", url, "--collection", "docs"])
        print(f"verify --collection docs: exit {res.exit_code}: {res.output.strip()[:160]}")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
