"""One backend per wrapped LangChain store, one module each in this package; :func:`backend_for`
picks it by the store's class (see :mod:`nudge_rag.stores.registry`)."""

from __future__ import annotations

from langchain_core.vectorstores import VectorStore

from nudge_rag.errors import BadInputError
from nudge_rag.langchain.backends.base import REGISTRY, Backend
from nudge_rag.stores.base import StoreAdapter

BACKENDS: list[type[Backend]] = REGISTRY.backends()
SUPPORTED = REGISTRY.supported()

__all__ = ["BACKENDS", "REGISTRY", "SUPPORTED", "Backend", "backend_for"]


def backend_for(store: VectorStore, adapter: StoreAdapter | None = None) -> Backend:
    """The backend of ``store`` (``adapter`` given: any store, through that adapter)."""
    found = REGISTRY.find(store)
    if found is not None:
        return found(store, adapter)
    if adapter is not None:
        return Backend(store, adapter)
    msg = (
        f"store: found {type(store).__module__}.{type(store).__name__}, which NudgedVectorStore "
        f"cannot reach inside; supported: {REGISTRY.supported()}. Pass adapter=... (a "
        "nudge_rag.stores adapter over its native client) to wrap another store."
    )
    raise BadInputError(msg)
