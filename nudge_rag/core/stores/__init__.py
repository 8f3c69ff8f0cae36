"""Store adapters: one module per native vector store client."""

from nudge_rag.core.stores.base import Metric, StoreAdapter

__all__ = ["Metric", "StoreAdapter"]
