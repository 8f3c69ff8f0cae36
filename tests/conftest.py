"""Shared fixtures: temporary state folders, the SciFact embeddings (skip when ../shared is absent).

Others may append fixtures below; keep each one small.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(
    os.environ.get("NUDGE_RAG_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh, empty state folder."""
    return tmp_path / "state"


@pytest.fixture(scope="session")
def scifact_corpus() -> tuple[list[str], np.ndarray]:
    """SciFact doc ids and their all-MiniLM-L6-v2 embeddings (float32, unit norm)."""
    emb = SHARED_DATA / "scifact" / "emb" / "all-MiniLM-L6-v2"
    if not (emb / "corpus.npy").is_file():
        pytest.skip(f"SciFact embeddings not found at {emb} (../shared absent; set NUDGE_RAG_DATA)")
    ids = (emb / "corpus_ids.txt").read_text(encoding="utf-8").splitlines()
    return ids, np.load(emb / "corpus.npy")


@pytest.fixture(scope="session")
def scifact_queries() -> tuple[list[str], np.ndarray]:
    """SciFact query ids and their embeddings (float32, unit norm)."""
    emb = SHARED_DATA / "scifact" / "emb" / "all-MiniLM-L6-v2"
    if not (emb / "queries.npy").is_file():
        pytest.skip(f"SciFact embeddings not found at {emb} (../shared absent; set NUDGE_RAG_DATA)")
    ids = (emb / "query_ids.txt").read_text(encoding="utf-8").splitlines()
    return ids, np.load(emb / "queries.npy")
