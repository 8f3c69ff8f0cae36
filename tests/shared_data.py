"""Access to the shared BEIR datasets; tests that need them skip with a clear message."""

from __future__ import annotations

from functools import cache

import pytest

from nudge_rag.core.data import BeirDataset, load_beir, shared_data_dir


@cache
def _load(name: str) -> BeirDataset | None:
    root = shared_data_dir()
    if root is None or not (root / name).is_dir():
        return None
    return load_beir(root / name, load_text=False)


def dataset(name: str) -> BeirDataset:
    """The shared dataset ``name`` (embeddings, qrels; no text), or skip the test."""
    ds = _load(name)
    if ds is None:
        pytest.skip(f"../shared/data/{name} not found (set NUDGE_RAG_DATA to the data folder)")
    return ds
