"""The LangChain face of nudge-rag: a VectorStore that learns from its own usage."""

from nudge_rag.langchain.vectorstores import NudgedVectorStore, adapter_for

__all__ = ["NudgedVectorStore", "adapter_for"]
