"""LookupEmbeddings: precomputed vectors by text, the real model only for unknown text."""

from __future__ import annotations

import numpy as np
import pytest

from nudge_rag.errors import NudgeError
from nudge_rag.langchain.embeddings import LookupEmbeddings


def test_known_texts_are_looked_up_and_unknown_ones_encoded_once():
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.full((len(texts), 2), 0.5, dtype=np.float32)

    emb = LookupEmbeddings({"a b": [1.0, 0.0]}, fallback=encode, key=lambda t: " ".join(t.split()))
    assert emb.embed_query("a   b") == [1.0, 0.0]
    assert emb.embed_documents(["new", "a b", "new"]) == [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]]
    assert emb.embed_query("new") == [0.5, 0.5]
    assert calls == [["new"]]


def test_unknown_text_without_a_fallback_is_a_clear_error():
    emb = LookupEmbeddings({"a": [1.0]})
    with pytest.raises(NudgeError, match=r"1 unknown text\(s\), e.g. 'b'"):
        emb.embed_documents(["a", "b"])
