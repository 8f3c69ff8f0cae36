"""Adapters for LlamaIndex-only stores: SimpleVectorStore and a Milvus Lite collection."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import SimpleVectorStore

from nudge_rag.errors import NudgeError, UnknownIdError
from nudge_rag.stores.base import Metric, StoreAdapter
from nudge_rag.stores.llama_simple import LlamaSimpleAdapter
from nudge_rag.stores.milvus import MilvusAdapter

DIM = 4


def _nodes(n: int = 5) -> list[TextNode]:
    rng = np.random.default_rng(0)
    return [
        TextNode(id_=f"n{i}", text=f"text {i}", embedding=rng.normal(size=DIM).tolist())
        for i in range(n)
    ]


@pytest.fixture(
    params=[
        "simple",
        pytest.param("milvus-cosine", marks=pytest.mark.integration),
        pytest.param("milvus-ip", marks=pytest.mark.integration),
    ]
)
def filled(request, tmp_path):
    """A store holding five nodes, and its adapter."""
    nodes = _nodes()
    if request.param == "simple":
        store = SimpleVectorStore()
        store.add(nodes)
        yield LlamaSimpleAdapter(store), nodes, Metric.COSINE
        return
    from llama_index.vector_stores.milvus import MilvusVectorStore

    metric = "COSINE" if request.param == "milvus-cosine" else "IP"
    store = MilvusVectorStore(
        uri=str(tmp_path / "m.db"), dim=DIM, collection_name="c", similarity_metric=metric
    )
    store.add(nodes)
    adapter = MilvusAdapter(store.client, "c", vector_field=store.embedding_field)
    yield adapter, nodes, Metric(metric.lower())
    store.client.close()


def test_protocol_and_metric(filled):
    adapter, _, metric = filled
    assert isinstance(adapter, StoreAdapter)
    assert adapter.metric is metric


def test_get_returns_stored_vectors_in_request_order(filled):
    adapter, nodes, _ = filled
    got = adapter.get(["n3", "n0"])
    want = np.asarray([nodes[3].embedding, nodes[0].embedding], dtype=np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert sorted(adapter.ids()) == [f"n{i}" for i in range(5)]


def test_put_overwrites_only_the_vectors(filled):
    adapter, _, _ = filled
    new = np.full((2, DIM), 0.5, dtype=np.float32)
    adapter.put(["n1", "n2"], new)
    np.testing.assert_array_equal(adapter.get(["n1", "n2"]), new)
    np.testing.assert_array_equal(adapter.get(["n0"])[0], np.float32(_nodes()[0].embedding))


def test_put_with_an_unknown_id_changes_nothing(filled):
    adapter, _, _ = filled
    before = adapter.get(["n1"])
    with pytest.raises(UnknownIdError, match="'nope'"):
        adapter.put(["n1", "nope"], np.zeros((2, DIM), dtype=np.float32))
    np.testing.assert_array_equal(adapter.get(["n1"]), before)
    with pytest.raises(UnknownIdError, match="add the documents first"):
        adapter.get(["nope"])


def test_put_with_the_wrong_dimension_changes_nothing(filled):
    adapter, _, _ = filled
    before = adapter.get(["n1"])
    with pytest.raises(NudgeError, match=f"vectors have 3 dimensions, the store expects {DIM}"):
        adapter.put(["n1"], np.zeros((1, 3), dtype=np.float32))
    np.testing.assert_array_equal(adapter.get(["n1"]), before)


@pytest.mark.integration
def test_milvus_partial_update_keeps_text_and_metadata(tmp_path):
    from llama_index.vector_stores.milvus import MilvusVectorStore

    store = MilvusVectorStore(uri=str(tmp_path / "m.db"), dim=DIM, collection_name="c")
    node = TextNode(id_="a", text="keep me", metadata={"k": 7}, embedding=[1.0, 0, 0, 0])
    store.add([node])
    MilvusAdapter(store.client, "c").put(["a"], np.asarray([[0, 1.0, 0, 0]], dtype=np.float32))
    (got,) = store.get_nodes(node_ids=["a"])
    assert (got.text, got.metadata, got.embedding) == ("keep me", {"k": 7}, [0, 1.0, 0, 0])
    store.client.close()


def test_simple_adapter_follows_clear():
    store = SimpleVectorStore()
    adapter = LlamaSimpleAdapter(store)
    store.add(_nodes(2))
    store.clear()
    assert adapter.ids() == []
    store.add(_nodes(1))
    assert adapter.ids() == ["n0"]


@pytest.mark.integration
def test_wrong_objects_are_refused(tmp_path):
    with pytest.raises(NudgeError, match="expected a LlamaIndex SimpleVectorStore"):
        LlamaSimpleAdapter(object())
    from pymilvus import MilvusClient

    client = MilvusClient(str(tmp_path / "m.db"))
    with pytest.raises(NudgeError, match="holds no collection 'missing'"):
        MilvusAdapter(client, "missing")
    client.close()
