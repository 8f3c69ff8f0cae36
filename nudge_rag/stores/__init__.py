"""Store adapters: one module per native vector store client."""

from nudge_rag.stores.base import BaseStoreAdapter, Metric, StoreAdapter, StoreDescription

__all__ = ["BaseStoreAdapter", "Metric", "StoreAdapter", "StoreDescription"]
