"""NudgedVectorStore over a Chroma server (``chroma run`` on 127.0.0.1, reached by HttpClient)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from nudge_rag.langchain import NudgedVectorStore


def _chroma_exe() -> str | None:
    here = Path(sys.executable).with_name("chroma")
    return str(here) if here.is_file() else shutil.which("chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory) -> Generator[tuple[str, int], None, None]:
    """A ``chroma run`` server on a free local port, stopped after the session."""
    exe = _chroma_exe()
    if exe is None:
        pytest.skip("the `chroma` executable (pip install chromadb) is not on this machine")
    import chromadb

    port = _free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    log = (path / "server.log").open("wb")
    proc = subprocess.Popen(
        [exe, "run", "--path", str(path / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"chroma run did not answer on port {port}; see {path / 'server.log'}")
            time.sleep(0.2)
    yield "127.0.0.1", port
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


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
