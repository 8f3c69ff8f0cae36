"""LlamaIndex face: ``NudgedVectorStore`` wraps a LlamaIndex vector store."""

from nudge_rag.llama_index.base import TRACE_ID_KEY, NudgedVectorStore

__all__ = ["TRACE_ID_KEY", "NudgedVectorStore"]
