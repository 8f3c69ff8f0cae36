"""The engine through both faces: searches and feedback go in through LangChain or LlamaIndex,
the engine fine-tunes through ``store.nudge_state``, the wrapped store serves the result."""

from __future__ import annotations

import numpy as np
import pytest

from nudge_rag import NudgeFinetuneEngine
from tests.engine.test_engine import World


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path / "world")  # only its vectors, texts and queries are used here


def _check_apply_and_rollback(store, world: World, report) -> None:
    base = store.nudge_state.base_vectors(world.ids)
    assert report.proven
    engine = NudgeFinetuneEngine(store, progress=False)
    version = engine.apply(report)
    assert store.nudge_state.versions()[-1].report["queries"] == report.queries
    changed = report.vectors()
    now = store.nudge_state.get_vectors(list(changed))
    np.testing.assert_allclose(now, np.stack(list(changed.values())), atol=1e-6)
    assert engine.rollback() == version - 1
    np.testing.assert_allclose(store.nudge_state.get_vectors(world.ids), base, atol=0)


def test_langchain_face(world, tmp_path):
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.langchain.embeddings import LookupEmbeddings

    store = NudgedVectorStore(
        InMemoryVectorStore(LookupEmbeddings(world.text_vectors())), state_dir=tmp_path / "lc"
    )
    store.add_texts([world.records[i]["text"] for i in world.ids], ids=world.ids)
    for text, _, target in world.queries:
        docs = store.similarity_search(text, k=5)
        store.record_feedback(docs[0].metadata["nudge_trace_id"], relevant_ids=[target])

    report = NudgeFinetuneEngine(store, progress=False).finetune()  # the face, not its state
    assert report.labels["feedback"] == len(world.queries) and report.labels["traces"] == 240
    _check_apply_and_rollback(store, world, report)


def test_llama_index_face(world, tmp_path):
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore, VectorStoreQuery

    from nudge_rag.llama_index import NudgedVectorStore

    store = NudgedVectorStore(SimpleVectorStore(), state_dir=tmp_path / "li")
    store.add(
        [
            TextNode(id_=i, text=world.records[i]["text"], embedding=world.vectors[n].tolist())
            for n, i in enumerate(world.ids)
        ]
    )
    for text, v, target in world.queries:
        store.query(
            VectorStoreQuery(query_embedding=v.tolist(), query_str=text, similarity_top_k=5)
        )
        store.record_feedback(store.last_trace_id, relevant_ids=[target])

    report = NudgeFinetuneEngine(store, progress=False).finetune()
    assert report.labels["feedback"] == len(world.queries)
    _check_apply_and_rollback(store, world, report)
