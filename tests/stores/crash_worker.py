"""The process that tests/stores/test_crash.py kills: it opens a store through a face, checks every
vector against the version log, says READY, then applies and rolls back versions until killed.

Run as ``python crash_worker.py serve``: a fork server. It imports the frameworks once, then for
each JSON line on stdin ``{"store", "root", "seed", "report", "connect"}`` forks a worker and,
when that worker has died, prints ``EXIT <wait status>``. ``connect`` holds the keyword
arguments of a store's opener that name a server (pgvector: the database's URLs), else ``{}``.
The worker prints ``READY <pid>`` (or ``FAIL <traceback as JSON>``). Forking saves the 2 s of
imports per kill that a fresh interpreter costs.

Every store is built as a user builds it, with an l2 (or Simple's own, or LlamaIndex
``PGVectorStore``'s cosine) metric so that stored vectors are exactly the vectors given, and
wrapped with the face's public constructor. The pgvector stores live in a Postgres server the
test started (one database per store), reached through the URLs in ``connect``.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import sqlite3
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

N, D = 200, 16
IDS = [str(uuid.UUID(int=i + 1)) for i in range(N)]  # Qdrant takes UUID point ids only
POS = {i: n for n, i in enumerate(IDS)}
# Chroma keeps every write in its crash-safe SQLite log until this many are pending; its HNSW
# files, rewritten in place at each sync, are not kill-safe (chroma-core/chroma#4218).
CHROMA_SYNC = 10_000_000
PG_STORES = ["lc-pgvector", "li-pgvector", "lc-pgvector-pgstate"]


def base() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)


def version_rows(v: int) -> dict[str, np.ndarray]:
    """The rows and vectors version ``v`` writes (a function of ``v`` only)."""
    rng = np.random.default_rng(1000 + v)
    rows = rng.choice(N, size=int(rng.integers(5, 80)), replace=False)
    vecs = rng.standard_normal((len(rows), D)).astype(np.float32)
    return {IDS[r]: vecs[n] for n, r in enumerate(rows)}


def expected(versions: list[Any]) -> tuple[int, np.ndarray]:
    """The current version and every vector at it: the nearest ancestor's row, else the base."""
    parents = {v.version: v.parent for v in versions}
    (cur,) = [v.version for v in versions if v.current]
    out = base()
    chain = [cur]
    while chain[-1] != 0:
        chain.append(parents[chain[-1]] or 0)
    for v in reversed(chain[:-1]):  # oldest first, so nearer versions overwrite
        for i, vec in version_rows(v).items():
            out[POS[i]] = vec
    return cur, out


def intent_rows(state: Path | str) -> int:
    """Unfinished moves in the version log, read raw (0 when the log does not exist yet)."""
    if isinstance(state, str):  # a Postgres state URL: the version log's schema
        import psycopg

        from nudge_rag.state.db import StateLocation

        where = StateLocation.parse(state)
        assert where.url is not None
        with psycopg.connect(where.url, autocommit=True) as pg:
            try:
                sql = f'SELECT count(*) FROM "{where.schema}_versions".intent'
                return int(pg.execute(sql).fetchone()[0])  # type: ignore[index]
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                return 0  # killed before the schema was written
    path = state / "versions.sqlite"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM intent").fetchone()[0])
    except sqlite3.OperationalError:  # killed before the schema was written
        return 0
    finally:
        conn.close()


# -- the stores, as a user builds them ----------------------------------------------------------
class TableEmbeddings:
    """LangChain embeddings that give document ``IDS[i]`` the base vector ``i``."""

    def __init__(self) -> None:
        self.table = base()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[POS[text]].tolist() if text in POS else [0.0] * D


def _lc_embeddings() -> Any:
    from langchain_core.embeddings import Embeddings

    class Emb(TableEmbeddings, Embeddings):
        pass

    return Emb()


def _nodes() -> list[Any]:
    from llama_index.core.schema import TextNode

    return [
        TextNode(id_=i, text=f"chunk {i}", embedding=row.tolist())
        for i, row in zip(IDS, base(), strict=True)
    ]


def _lc_face(inner: Any, root: Path, *, state: str | None = None, **kw: Any) -> Any:
    """The LangChain face on ``inner``; its state in ``root/state``, or at ``state`` (a URL)."""
    from nudge_rag.langchain import NudgedVectorStore

    where: dict[str, Any] = {"state": state} if state else {"state_dir": root / "state"}
    store = NudgedVectorStore(inner, **where, **kw)
    if not store.nudge_state.ids():
        store.add_texts(IDS, ids=IDS)
    return store


def _li_face(inner: Any, root: Path) -> Any:
    from nudge_rag.llama_index import NudgedVectorStore

    store = NudgedVectorStore(inner, state_dir=root / "state")
    if not store.nudge_state.ids():
        store.add(_nodes())
    return store


def open_lc_chroma(root: Path) -> Any:
    from langchain_chroma import Chroma

    inner = Chroma(
        collection_name="docs",
        embedding_function=_lc_embeddings(),
        persist_directory=str(root / "chroma"),
        collection_metadata={"hnsw:space": "l2", "hnsw:sync_threshold": CHROMA_SYNC},
    )
    return _lc_face(inner, root)


def open_lc_qdrant(root: Path) -> Any:
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(root / "qdrant"))
    if not client.collection_exists("docs"):
        params = models.VectorParams(size=D, distance=models.Distance.EUCLID)
        client.create_collection("docs", vectors_config=params)
    inner = QdrantVectorStore(
        client=client,
        collection_name="docs",
        embedding=_lc_embeddings(),
        distance=models.Distance.EUCLID,
    )
    return _lc_face(inner, root)


class SavingAdapter:
    """The FAISS adapter, saving the store after every write (inside the version move).

    Stands in for ``NudgedVectorStore.save_local`` until the face offers it: a store saved
    there is re-saved by every later apply or rollback, atomically, before the move commits.
    """

    def __init__(self, adapter: Any, save: Callable[[], object]) -> None:
        self._adapter = adapter
        self._save = save

    def put(self, ids: Any, vectors: Any) -> None:
        self._adapter.put(ids, vectors)
        self._save()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._adapter, name)


def open_lc_faiss(root: Path) -> Any:
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS

    from nudge_rag.langchain import NudgedVectorStore, adapter_for
    from nudge_rag.state.files import save_faiss_atomic

    folder = root / "faiss"
    emb = _lc_embeddings()
    if (folder / "index.faiss").exists():
        inner = FAISS.load_local(str(folder), emb, allow_dangerous_deserialization=True)
    else:
        inner = FAISS(emb, faiss.IndexFlatL2(D), InMemoryDocstore(), {})
    if hasattr(NudgedVectorStore, "save_local"):
        store = _lc_face(inner, root)
        store.save_local(str(folder))
        return store
    adapter = SavingAdapter(adapter_for(inner), lambda: save_faiss_atomic(inner, folder))
    store = _lc_face(inner, root, adapter=adapter)
    save_faiss_atomic(inner, folder)
    return store


def open_lc_lancedb(root: Path) -> Any:
    from langchain_community.vectorstores import LanceDB

    inner = LanceDB(uri=str(root / "lancedb"), embedding=_lc_embeddings(), mode="append")
    return _lc_face(inner, root)


def _li_chroma_collection(root: Path) -> Any:
    import chromadb

    client = chromadb.PersistentClient(path=str(root / "chroma"))
    return client.get_or_create_collection(
        "docs", metadata={"hnsw:space": "l2", "hnsw:sync_threshold": CHROMA_SYNC}
    )


def open_li_chroma(root: Path) -> Any:
    from llama_index.vector_stores.chroma import ChromaVectorStore

    return _li_face(ChromaVectorStore(chroma_collection=_li_chroma_collection(root)), root)


def open_li_simple(root: Path) -> Any:
    from llama_index.core.vector_stores import SimpleVectorStore

    path = root / "storage" / "vector_store.json"
    inner = SimpleVectorStore.from_persist_path(str(path)) if path.exists() else None
    store = _li_face(inner if inner is not None else SimpleVectorStore(), root)
    store.persist(str(path))  # bind the file: every later move re-persists it
    return store


def open_li_qdrant(root: Path) -> Any:
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(root / "qdrant"))
    dense = models.VectorParams(size=D, distance=models.Distance.EUCLID)
    return _li_face(QdrantVectorStore("docs", client=client, dense_config=dense), root)


def open_li_milvus(root: Path) -> Any:
    from llama_index.vector_stores.milvus import MilvusVectorStore

    inner = MilvusVectorStore(
        uri=str(root / "milvus.db"), dim=D, collection_name="docs", similarity_metric="L2"
    )
    inner.client.load_collection("docs")  # a reopened Milvus Lite collection comes back released
    return _li_face(inner, root)


def open_li_lancedb(root: Path) -> Any:
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    return _li_face(LanceDBVectorStore(uri=str(root / "lancedb"), table_name="docs"), root)


def open_lc_pgvector(root: Path, *, url: str, state: str | None = None) -> Any:
    """``langchain_postgres.PGVector`` (l2) on ``url``: collection ``docs``, made on first use;
    the state in ``root/state``, or in Postgres at ``state``, a URL (``lc-pgvector-pgstate``)."""
    from langchain_postgres import PGVector
    from langchain_postgres.vectorstores import DistanceStrategy

    inner = PGVector(
        _lc_embeddings(),
        connection=url,
        collection_name="docs",
        distance_strategy=DistanceStrategy.EUCLIDEAN,
        use_jsonb=True,
    )
    return _lc_face(inner, root, state=state)


def open_li_pgvector(root: Path, *, urls: list[str]) -> Any:
    """LlamaIndex ``PGVectorStore`` (cosine; stores vectors as given) on ``urls`` (sync, async)."""
    from llama_index.vector_stores.postgres import PGVectorStore

    sync_url, async_url = urls
    inner = PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name="docs",
        embed_dim=D,
        use_jsonb=True,
    )
    return _li_face(inner, root)


OPEN: dict[str, Callable[..., Any]] = {
    "lc-chroma": open_lc_chroma,
    "lc-qdrant": open_lc_qdrant,
    "lc-faiss": open_lc_faiss,
    "lc-lancedb": open_lc_lancedb,
    "li-chroma": open_li_chroma,
    "li-simple": open_li_simple,
    "li-qdrant": open_li_qdrant,
    "li-milvus": open_li_milvus,
    "li-lancedb": open_li_lancedb,
    "lc-pgvector": open_lc_pgvector,
    "lc-pgvector-pgstate": open_lc_pgvector,  # connect names the state URL too
    "li-pgvector": open_li_pgvector,
}


# -- one worker ----------------------------------------------------------------------------------
def work(cmd: dict[str, Any]) -> None:
    """Open, check and report; then apply and roll back until killed."""
    kind, tag, seed = cmd["store"], cmd["tag"], int(cmd["seed"])
    root, report = Path(cmd["root"]), Path(cmd["report"])
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    state = cmd.get("connect", {}).get("state") or root / "state"  # a folder, or a URL
    pending = intent_rows(state)
    store = OPEN[kind](root, **cmd.get("connect", {}))  # the log completes an unfinished move
    cur, exp = expected(store.versions())
    held = np.asarray(store.get_vectors(IDS), dtype=np.float32)
    bad = int((held.view(np.uint32) != exp.view(np.uint32)).any(axis=1).sum())
    row: dict[str, Any] = {"current": cur, "bad_rows": bad, "intent": intent_rows(state)}
    row.update(pending=pending, open_s=round(time.perf_counter() - t0, 3))
    with report.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    _emit(f"READY {tag} {os.getpid()}")
    rng = random.Random(seed)
    while True:
        known = [v.version for v in store.versions()]
        if rng.random() < 0.6:
            store.apply_vectors(version_rows(max(known) + 1), method="nudge-n", note=f"{seed}")
        else:
            store.rollback(rng.choice(known))


def _emit(line: str) -> None:
    """One line to the test, in one write (lines from several workers never interleave)."""
    os.write(sys.stdout.fileno(), (line[:3500] + "\n").encode())


def serve() -> None:
    """Import once, then fork one worker per command line (see the module docstring)."""
    warnings.filterwarnings("ignore")
    import chromadb  # noqa: F401 - imported once, before the forks
    import faiss  # noqa: F401
    import lancedb  # noqa: F401
    import langchain_chroma  # noqa: F401
    import langchain_community.vectorstores
    import langchain_community.vectorstores.lancedb  # noqa: F401
    import langchain_qdrant  # noqa: F401
    import llama_index.vector_stores.chroma
    import llama_index.vector_stores.lancedb
    import llama_index.vector_stores.milvus
    import llama_index.vector_stores.qdrant

    import nudge_rag.langchain
    import nudge_rag.llama_index  # noqa: F401

    try:  # the pgvector stores' frameworks, where installed (nudge-rag[postgres])
        import langchain_postgres  # noqa: F401
        import llama_index.vector_stores.postgres  # noqa: F401
    except ImportError:
        pass

    tags: dict[int, str] = {}
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
    buf = b""
    _emit("SERVING")
    while True:
        if sel.select(0.02):
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = json.loads(line)
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    sel.close()
                    os.close(0)
                    work(cmd)
                except BaseException:
                    _emit(f"FAIL {cmd['tag']} " + json.dumps(traceback.format_exc()[-3000:]))
                    code = 1
                finally:
                    os._exit(code)
            tags[pid] = cmd["tag"]
        while tags:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            _emit(f"EXIT {tags.pop(pid)} {status}")
    for pid in tags:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    serve()
