"""A LlamaIndex store nudge-rag has no backend for (the app's own class), wrapped with
``adapter=``: the caller's adapter reads and writes its vectors (before: ``backend_for`` refused
the class first, and its message said "pass adapter=")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from nudge_rag.errors import NudgeError
from nudge_rag.llama_index import NudgedVectorStore
from nudge_rag.stores.memory import MemoryAdapter


class DictStore(BasePydanticVectorStore):
    """A store of the app's own: vectors and nodes in dicts, an exact cosine search."""

    stores_text: bool = True
    _vectors: dict[str, list[float]] = PrivateAttr(default_factory=dict)
    _nodes: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def client(self) -> Any:
        return self._vectors

    def add(self, nodes: list[Any], **kwargs: Any) -> list[str]:
        for n in nodes:
            self._vectors[n.node_id] = list(n.get_embedding())
            self._nodes[n.node_id] = n.model_copy(update={"embedding": None})
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **kwargs: Any) -> None:
        for i in [i for i, n in self._nodes.items() if n.ref_doc_id == ref_doc_id]:
            del self._nodes[i], self._vectors[i]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        ids = list(self._vectors)
        m = np.asarray([self._vectors[i] for i in ids], dtype=np.float64)
        q = np.asarray(query.query_embedding, dtype=np.float64)
        sims = m @ q / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
        top = np.argsort(-sims)[: query.similarity_top_k]
        return VectorStoreQueryResult(
            nodes=[self._nodes[ids[t]] for t in top],
            similarities=[float(sims[t]) for t in top],
            ids=[ids[t] for t in top],
        )


def _node(i: int, vec: list[float], doc: str) -> TextNode:
    node = TextNode(text=f"chunk {i}", id_=f"n{i}", embedding=vec)
    node.relationships = {}
    node.metadata = {"ref_doc_id": doc}
    return node


def test_a_store_without_a_backend_is_wrapped_through_its_adapter(tmp_path):
    inner = DictStore()
    adapter = MemoryAdapter(inner.client, vector_key=None)
    store = NudgedVectorStore(inner, state_dir=tmp_path / "s", adapter=adapter)
    store.add([_node(0, [1.0, 0.0], "a"), _node(1, [0.0, 1.0], "a"), _node(2, [0.7, 0.7], "b")])
    q = VectorStoreQuery(query_embedding=[1.0, 0.1], similarity_top_k=1)
    assert store.query(q).ids == ["n0"]
    store.record_feedback(store.last_trace_id, relevant_ids=["n2"])
    v = store.apply_vectors({"n2": np.array([1.0, 0.1], np.float32)}, note="moved")
    assert store.query(q).ids == ["n2"] and store.nudge_state.current_version == v
    store.rollback(0)
    assert store.query(q).ids == ["n0"]
    assert np.allclose(store.get_vectors(["n2"]), [[0.7, 0.7]])
    store.close()


def test_a_filtered_delete_the_store_cannot_list_is_refused(tmp_path):
    inner = DictStore()
    store = NudgedVectorStore(
        inner, state_dir=tmp_path / "s", adapter=MemoryAdapter(inner.client, vector_key=None)
    )
    store.add([_node(0, [1.0, 0.0], "a")])
    filters = MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", value="a")])
    with pytest.raises(NudgeError, match="get_nodes"):
        store.delete_nodes(filters=filters)
    assert store.get_vectors(["n0"]).shape == (1, 2)
    store.close()


def test_without_an_adapter_the_message_still_says_pass_adapter(tmp_path):
    with pytest.raises(NudgeError, match="pass adapter="):
        NudgedVectorStore(DictStore(), state_dir=tmp_path / "s")
