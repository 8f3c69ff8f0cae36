"""NudgedVectorStore over a Chroma server (``chroma run`` on 127.0.0.1, reached by HttpClient)."""

from __future__ import annotations

import uuid
from collections.abc import Generator

import numpy as np
import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from nudge_rag.langchain import NudgedVectorStore

pytestmark = pytest.mark.integration


def _inner(server: tuple[str, int], embeddings, space: str = "cosine"):
    import chromadb
    from langchain_chroma import Chroma

    return Chroma(
        collection_name=f"t{uuid.uuid4().hex}",
        embedding_function=embeddings,
        client=chromadb.HttpClient(host=server[0], port=server[1]),
        collection_metadata={"hnsw:space": space},
    )


class TestChromaServer(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path, chroma_server) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        inner = _inner(chroma_server, self.get_embeddings())
        store = NudgedVectorStore(inner, state_dir=tmp_path / "state", trace_metadata_key=None)
        yield store
        store.close()
        inner.delete_collection()


def test_versions_over_http(tmp_path, chroma_server):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    emb = DeterministicFakeEmbedding(size=8)
    inner = _inner(chroma_server, emb)
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    ids = [f"d{i}" for i in range(30)]
    store.add_texts([f"text {i}" for i in ids], ids=ids)
    snap = store.get_vectors(ids)
    store.apply_vectors({"d3": np.ones(8), "d4": -np.ones(8)})
    assert not np.array_equal(store.get_vectors(ids), snap)
    assert store.similarity_search_by_vector(list(np.ones(8)), k=1)[0].id == "d3"
    store.rollback(0)
    assert np.array_equal(store.get_vectors(ids), snap)
    store.close()
    inner.delete_collection()
