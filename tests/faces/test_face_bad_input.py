"""Bad input at the faces: k out of range never reaches a store, and a Milvus Lite collection
reopened from disk through LlamaIndex is loaded (the bare store leaves it released)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from nudge_rag.errors import NudgeError
from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.llama_index import NudgedVectorStore as LlamaNudgedVectorStore
from nudge_rag.testing.langchain_stores import KINDS, bare_store

BAD_K = [0, -1, 10**9, 2.5, True, "3"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", BAD_K, ids=repr)
def test_langchain_k_out_of_range_is_refused_before_the_store(kind, k, tmp_path):
    emb = DeterministicFakeEmbedding(size=8)
    store = NudgedVectorStore(bare_store(kind, emb, 8, tmp_path, "docs"), state_dir=tmp_path / "s")
    store.add_texts([f"text {i}" for i in range(50)], ids=[f"d{i}" for i in range(50)])
    calls = [
        lambda: store.similarity_search("q", k=k),
        lambda: store.similarity_search_with_score("q", k=k),
        lambda: store.similarity_search_by_vector(emb.embed_query("q"), k=k),
        lambda: store.max_marginal_relevance_search("q", k=k),
    ]
    for call in calls:
        with pytest.raises(NudgeError, match=r"^k: "):
            call()
    assert store.traces() == []
    store.close()


async def test_langchain_async_k_is_checked_too(tmp_path):
    emb = DeterministicFakeEmbedding(size=8)
    store = NudgedVectorStore(bare_store("memory", emb, 8, tmp_path), state_dir=tmp_path / "s")
    store.add_texts(["a", "b"], ids=["a", "b"])
    with pytest.raises(NudgeError, match=r"^k: found -1"):
        await store.asimilarity_search("q", k=-1)
    with pytest.raises(NudgeError, match=r"^fetch_k: found 0"):
        await store.amax_marginal_relevance_search("q", k=1, fetch_k=0)
    store.close()


@pytest.mark.parametrize("k", [0, -1, 10**9])
def test_llama_index_k_out_of_range_is_refused(k, tmp_path):
    from llama_index.core.vector_stores import SimpleVectorStore

    store = LlamaNudgedVectorStore(SimpleVectorStore(), state_dir=tmp_path / "s")
    store.add([TextNode(id_=f"n{i}", text="t", embedding=[1.0, float(i)]) for i in range(5)])
    with pytest.raises(NudgeError, match=r"similarity_top_k: found"):
        store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=k))
    store.close()


@pytest.mark.integration
def test_milvus_lite_collection_reopened_through_llama_index_is_loaded(tmp_path):
    pytest.importorskip("llama_index.vector_stores.milvus")
    uri = tmp_path / "milvus.db"
    make = textwrap.dedent(
        f"""
        from llama_index.core.schema import TextNode
        from llama_index.vector_stores.milvus import MilvusVectorStore
        s = MilvusVectorStore(uri={str(uri)!r}, dim=4, overwrite=True, collection_name="docs")
        s.add([TextNode(id_=f"n{{i}}", text="t", embedding=[float(i + 1), 1, 0, 0])
               for i in range(5)])
        """
    )
    subprocess.run([sys.executable, "-c", make], check=True, timeout=120)
    from llama_index.vector_stores.milvus import MilvusVectorStore

    bare = MilvusVectorStore(uri=str(uri), dim=4, overwrite=False, collection_name="docs")
    assert "Loaded" not in str(bare.client.get_load_state("docs")["state"])  # the bare store's
    store = LlamaNudgedVectorStore(bare, state_dir=tmp_path / "state")
    got = store.query(VectorStoreQuery(query_embedding=[1.0, 0, 0, 0], similarity_top_k=2))
    assert got.ids == ["n4", "n3"]
    store.close()


def test_method_names_are_one_vocabulary(tmp_path):
    import numpy as np

    from nudge_rag.errors import MetricMismatchError
    from nudge_rag.fit.nudge import Method

    assert Method("NUDGE-M") is Method("nudge_m") is Method.NUDGE_M
    emb = DeterministicFakeEmbedding(size=8)
    store = NudgedVectorStore(bare_store("memory", emb, 8, tmp_path), state_dir=tmp_path / "s")
    store.add_texts(["a"], ids=["a"])
    with pytest.raises(NudgeError, match=r"method: found 'nudge-x'"):
        store.apply_vectors({"a": np.ones(8)}, method="nudge-x")
    with pytest.raises(MetricMismatchError):  # a cosine store refuses NUDGE-M however spelled
        store.apply_vectors({"a": np.ones(8)}, method="Nudge_M")
    assert store.versions()[-1].version == 0
    store.close()


@pytest.mark.integration
def test_milvus_ids_with_quotes_and_backslashes(tmp_path):
    import numpy as np
    from pymilvus import MilvusClient

    from nudge_rag.stores.milvus import MilvusAdapter

    client = MilvusClient(str(tmp_path / "q.db"))
    client.create_collection(
        "d", dimension=4, id_type="string", max_length=100, metric_type="COSINE"
    )
    ids = ["a'b", "c\\", 'q"x', "x' or id != '"]  # the last one rewrote pymilvus's own filter
    client.insert("d", [{"id": i, "vector": [1.0, float(n), 0, 0]} for n, i in enumerate(ids)])
    ad = MilvusAdapter(client, "d", vector_field="vector")
    assert ad.present([*ids, "plain"]) == set(ids)
    ad.put(ids[:1], np.full((1, 4), 0.5, dtype=np.float32))
    assert ad.get(ids[:2]).tolist() == [[0.5] * 4, [1.0, 1.0, 0.0, 0.0]]
    client.close()
