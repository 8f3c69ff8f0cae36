"""The fine-tune engine through the LlamaIndex face: traces and feedback in, versions out."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import VectorStoreQuery

from nudge_rag.engine.engine import NudgeFinetuneEngine
from nudge_rag.llama_index import NudgedVectorStore

pytestmark = pytest.mark.integration

TRAIN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "scifact" / "qrels"


def _qrels(split: str) -> dict[str, set[str]]:
    path = TRAIN / f"{split}.tsv"
    if not path.is_file():
        pytest.skip(f"SciFact qrels not found at {path}")
    out: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0:
            out.setdefault(qid, set()).add(did)
    return out


def nid(doc_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"scifact/{doc_id}"))


@pytest.mark.slow
def test_engine_fits_and_rolls_back_through_a_simple_store(
    tmp_path, scifact_corpus, scifact_queries
):
    doc_ids, corpus = scifact_corpus
    query_ids, queries = scifact_queries
    row_of_query = {q: i for i, q in enumerate(query_ids)}
    inner = SimpleVectorStore()
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    store.add(
        [
            TextNode(id_=nid(d), text=f"doc {d}", embedding=corpus[i].tolist())
            for i, d in enumerate(doc_ids)
        ]
    )
    store.persist(str(tmp_path / "storage" / "default__vector_store.json"))

    # usage: each train query is a search, and the user marks the relevant documents
    for qid, relevant in sorted(_qrels("train").items())[:300]:
        vec = queries[row_of_query[qid]]
        store.query(VectorStoreQuery(query_embedding=vec.tolist(), similarity_top_k=10))
        store.record_feedback(store.last_trace_id, relevant_ids=[nid(d) for d in relevant])

    engine = NudgeFinetuneEngine(store, llm=None, method="nudge-n")
    report = engine.finetune()
    version = engine.apply(report, force=True)
    changed = store.versions()[-1].rows_changed
    assert version == 1 and changed > 0
    on_disk = SimpleVectorStore.from_persist_path(
        str(tmp_path / "storage" / "default__vector_store.json")
    )
    assert on_disk.data.embedding_dict == inner.data.embedding_dict  # re-persisted on write

    engine.rollback()
    all_ids = [nid(d) for d in doc_ids]
    np.testing.assert_array_equal(store.get_vectors(all_ids), corpus)
    store.close()
