"""LangChain's standard VectorStore contract, for NudgedVectorStore over every supported store.

Searches are traced (``trace_metadata_key=None`` keeps the returned documents equal to what was
stored, as the contract compares them; the default adds ``nudge_trace_id``, tested elsewhere).
"""

from __future__ import annotations

import uuid
from collections.abc import Generator

import chromadb
import pytest
from langchain_chroma import Chroma
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from nudge_rag.langchain import NudgedVectorStore


class TestChromaCosine(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        inner = Chroma(
            collection_name=f"t{uuid.uuid4().hex}",
            embedding_function=self.get_embeddings(),
            client=chromadb.EphemeralClient(),
            collection_metadata={"hnsw:space": "cosine"},
        )
        store = NudgedVectorStore(inner, state_dir=tmp_path / "state", trace_metadata_key=None)
        yield store
        store.close()
        inner.delete_collection()


class TestChromaPersistentL2(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        inner = Chroma(
            collection_name="docs",
            embedding_function=self.get_embeddings(),
            persist_directory=str(tmp_path / "db"),
        )
        store = NudgedVectorStore(inner, state_dir=tmp_path / "state", trace_metadata_key=None)
        yield store
        store.close()


class TestInMemory(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        store = NudgedVectorStore(
            InMemoryVectorStore(self.get_embeddings()),
            state_dir=tmp_path / "state",
            trace_metadata_key=None,
        )
        yield store
        store.close()


class TestInMemoryTracingOff(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        store = NudgedVectorStore(
            InMemoryVectorStore(self.get_embeddings()), state_dir=tmp_path / "state", tracing=False
        )
        yield store
        store.close()
