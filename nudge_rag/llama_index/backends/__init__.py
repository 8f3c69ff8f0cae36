"""One backend per wrapped LlamaIndex store, one module each in this package; :func:`backend_for`
picks it by the store's class (see :mod:`nudge_rag.stores.registry`)."""

from __future__ import annotations

from collections.abc import Iterable

from llama_index.core.vector_stores.types import BasePydanticVectorStore

from nudge_rag.errors import BadInputError
from nudge_rag.llama_index.backends.base import REGISTRY, Backend
from nudge_rag.llama_index.backends.chroma import ChromaBackend
from nudge_rag.llama_index.backends.custom import AdapterBackend
from nudge_rag.stores.base import StoreAdapter

BACKENDS: list[type[Backend]] = REGISTRY.backends()
SUPPORTED = ", ".join(s.rpartition(".")[2] for b in BACKENDS for s in b.stores)

__all__ = [
    "BACKENDS",
    "REGISTRY",
    "SUPPORTED",
    "AdapterBackend",
    "Backend",
    "ChromaBackend",
    "backend_for",
]


def _class_names(store: object) -> Iterable[str]:
    return (cls.__name__ for cls in type(store).__mro__)


def backend_for(store: BasePydanticVectorStore, adapter: StoreAdapter | None = None) -> Backend:
    """Pick the backend of a LlamaIndex store by its class (subclasses included); a store of
    another class is wrapped through the ``adapter`` its caller passed."""
    names = set(_class_names(store))
    found = REGISTRY.find(store)
    if adapter is not None and found is None:
        return AdapterBackend(store, adapter)
    if "FaissVectorStore" in names or "FaissMapVectorStore" in names:
        msg = (
            f"vector_store: found {type(store).__name__}; LlamaIndex's FAISS stores cannot look "
            "up or overwrite vectors by node id, so NUDGE cannot edit them. Use "
            "NudgedVectorStore.from_defaults(...) (persistent Chroma) or a Simple, Qdrant or "
            "Milvus store instead."
        )
        raise BadInputError(msg)
    if found is not None:
        return found(store)
    msg = (
        f"vector_store: found {type(store).__name__}, expected one of {SUPPORTED}; "
        "wrap one of those, or pass adapter= with a StoreAdapter for your store's native client."
    )
    raise BadInputError(msg)
