"""A wrong store or collection never costs a version.

A version log opened over a store that holds none (or few) of the ids it names is another
collection, or a new empty one: every move, ``finetune()`` and ``repair()`` refuse it with
``WrongStoreError``, ``verify()`` says so, and not one row leaves the log. Rows leave the log
only through ``repair(forget_missing=True)``, which names them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import chromadb
import numpy as np
import pytest

from nudge_rag.state.versions.log import VersionLog, WrongStoreError
from nudge_rag.stores.chroma import ChromaAdapter

N, D = 40, 8
IDS = [f"d{i}" for i in range(N)]


def _vectors(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def _collection(client: chromadb.ClientAPI, name: str, ids: list[str]) -> ChromaAdapter:
    col = client.create_collection(name, metadata={"hnsw:space": "l2"})
    if ids:
        col.add(ids=ids, embeddings=_vectors(len(name), len(ids)))
    return ChromaAdapter(col)


def _counts(path: Path) -> tuple[int, int, int]:
    """Rows, base records and the current version, read from the log file itself."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
        base = conn.execute("SELECT count(*) FROM base").fetchone()[0]
        cur = conn.execute("SELECT value FROM meta WHERE key = 'current'").fetchone()[0]
    return rows, base, int(cur)


@pytest.fixture
def logged(tmp_path):
    """A Chroma collection ``docs`` whose log holds version 1 (20 rows), the store back at 0."""
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    docs = _collection(client, "docs", IDS)
    path = tmp_path / "state" / "versions.sqlite"
    log = VersionLog(path, docs)
    v1 = dict(zip(IDS[:20], _vectors(7, 20), strict=True))
    log.apply(v1)
    log.rollback(0)
    log.close()
    return client, docs, path, v1


@pytest.mark.parametrize("other", ["empty", "different ids", "a few shared ids"])
def test_a_wrong_collection_refuses_every_move_and_drops_nothing(logged, other):
    client, docs, path, v1 = logged
    ids = {
        "empty": [],
        "different ids": [f"x{i}" for i in range(30)],
        "a few shared ids": IDS[:3] + [f"x{i}" for i in range(30)],
    }[other]
    wrong = _collection(client, "nudge_rag", ids)
    before = _counts(path)
    held = wrong.get(wrong.ids()) if ids else None
    with pytest.warns(RuntimeWarning, match="not the one its version log"):
        log = VersionLog(path, wrong)
    with pytest.raises(WrongStoreError, match=r"collection 'nudge_rag'.* holds \d+ of \d+ ids"):
        log.rollback(1)
    with pytest.raises(WrongStoreError, match="nothing is dropped from the log"):
        log.apply({IDS[0]: _vectors(9, 1)[0]})
    with pytest.raises(WrongStoreError):
        log.check_store()
    with pytest.raises(WrongStoreError, match="forget-missing"):
        log.repair()
    report = log.verify()
    assert not report.ok and "is not the one its version log" in report.problems[0]
    assert _counts(path) == before  # not one row, base record or move lost
    if held is not None:
        np.testing.assert_array_equal(wrong.get(wrong.ids()), held)  # nothing written there
    log.close()

    right = VersionLog(path, docs)  # the right collection: version 1 comes back whole
    assert right.rollback(1) == 1
    np.testing.assert_array_equal(docs.get(list(v1)), np.stack(list(v1.values())))
    assert right.verify().ok
    right.close()


def test_an_interrupted_move_is_not_finished_in_a_wrong_store(logged):
    """Opening the log completes an unfinished move; in another store it waits instead."""
    client, docs, path, v1 = logged
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO intent (one, op, from_version, to_version) VALUES (1, 'rollback', 0, 1)"
        )
    before = _counts(path)
    wrong = _collection(client, "nudge_rag", [])
    with pytest.warns(RuntimeWarning, match="not the one its version log"):
        VersionLog(path, wrong).close()
    assert _counts(path) == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT from_version, to_version FROM intent").fetchall() == [(0, 1)]
    right = VersionLog(path, docs)
    assert right.current == 1
    np.testing.assert_array_equal(docs.get(list(v1)), np.stack(list(v1.values())))
    right.close()


def test_repair_forgets_missing_ids_only_when_asked_and_names_them(logged):
    _, docs, path, _ = logged
    docs.collection.delete(ids=IDS[:3])  # behind the log's back: 17 of 20 nudged ids left
    log = VersionLog(path, docs)
    rows = _counts(path)[0]
    report = log.verify()
    assert not report.ok and "does not hold 3 of the 20 nudged ids" in report.problems[0]
    with pytest.warns(RuntimeWarning, match=r"no longer holds 3 nudged id\(s\)"):
        assert log.rollback(1) == 1  # the other 17 rows are written
    assert _counts(path)[0] == rows and not log.repair().ok  # kept, still listed
    fixed = log.repair(forget_missing=True)
    assert fixed.ok and fixed.forgotten == tuple(IDS[:3])
    assert "forgot 3 id(s)" in fixed.actions[0] and "'d0', 'd1', 'd2'" in fixed.actions[0]
    assert _counts(path)[0] == rows - 3
    assert log.rollback(0) == 0  # no warning now: the log and the store agree
    log.close()


def _world(n: int = 12) -> tuple[list[str], np.ndarray]:
    ids = [f"c{i}" for i in range(n)]
    x = _vectors(3, n)
    return ids, x / np.linalg.norm(x, axis=1, keepdims=True)


def test_langchain_face_over_a_new_empty_store_keeps_every_version(tmp_path):
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag import NudgeFinetuneEngine
    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.langchain.embeddings import LookupEmbeddings

    ids, x = _world()
    emb = LookupEmbeddings(dict(zip(ids, x, strict=True)))
    state = tmp_path / "state"
    store = NudgedVectorStore(InMemoryVectorStore(emb), state_dir=state)
    store.add_texts(ids, ids=ids)
    store.apply_vectors({i: -v for i, v in zip(ids[:6], x[:6], strict=True)})
    store.rollback(0)
    store.close()
    before = _counts(state / "versions.sqlite")

    with pytest.warns(RuntimeWarning, match="not the one its version log"):
        other = NudgedVectorStore(InMemoryVectorStore(emb), state_dir=state)  # the app's typo
    with pytest.raises(WrongStoreError):
        other.rollback(1)
    with pytest.raises(WrongStoreError):
        NudgeFinetuneEngine(other, progress=False).finetune()
    assert not (state / "labels.sqlite").exists()  # refused before its label cache was made
    assert not other.nudge_state.verify().ok
    other.delete(ids[:3])  # ids this store does not hold: their versions are not its to drop
    other.close()
    assert _counts(state / "versions.sqlite") == before


def test_llama_index_face_over_another_store_keeps_every_version(tmp_path):
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    from nudge_rag.llama_index import NudgedVectorStore

    ids, x = _world()
    state = tmp_path / "state"
    store = NudgedVectorStore(SimpleVectorStore(), state_dir=state)
    store.add([TextNode(id_=i, text=i, embedding=v.tolist()) for i, v in zip(ids, x, strict=True)])
    store.apply_vectors({i: -v for i, v in zip(ids[:6], x[:6], strict=True)})
    store.close()
    before = _counts(state / "versions.sqlite")

    elsewhere = SimpleVectorStore()
    elsewhere.add([TextNode(id_=f"z{n}", text="z", embedding=v.tolist()) for n, v in enumerate(x)])
    with pytest.warns(RuntimeWarning, match="not the one its version log"):
        other = NudgedVectorStore(elsewhere, state_dir=state)
    for move in (lambda: other.rollback(0), lambda: other.nudge_state.repair()):
        with pytest.raises(WrongStoreError):
            move()
    other.delete_nodes(ids[:3])  # ids this store does not hold: their versions stay
    other.close()
    assert _counts(state / "versions.sqlite") == before
