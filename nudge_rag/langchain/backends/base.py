"""What the LangChain face needs from one wrapped store, beyond the core adapter.

One class per store, one file each (``chroma.py``, ``memory.py``, ``qdrant.py``, ``faiss.py``,
...), registered with :data:`REGISTRY` by ``@REGISTRY.register`` and found by the store
classes it names in ``stores``: which core adapter reads and writes its vectors, where it
keeps its embeddings, how to search by vector with scores, how its document ids map to store
ids, its batch limit, and how to find chunks by a metadata key (for parent-document feedback).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore

from nudge_rag.errors import BadInputError
from nudge_rag.stores.base import Metric, StoreAdapter
from nudge_rag.stores.registry import BackendRegistry, class_matches

__all__ = ["REGISTRY", "Backend", "ScoredDocs", "group_children", "parent_values"]

ScoredDocs = list[tuple[Document, float]]


class Backend:
    """A wrapped LangChain store; subclasses fill in the store-specific parts."""

    #: the store classes served, ``"module_prefix.ClassName"`` (e.g. ``"langchain_chroma.Chroma"``)
    stores: ClassVar[tuple[str, ...]] = ()
    #: whether subclasses of those classes are served too (they may change what is reached into)
    subclasses: ClassVar[bool] = False

    #: attribute of the store that holds its ``Embeddings`` (None: not known)
    embeddings_attr: ClassVar[str | None] = None
    #: whether each search builds new ``Document`` objects (FAISS returns its stored ones)
    fresh_docs: ClassVar[bool] = True

    def __init__(self, store: VectorStore, adapter: StoreAdapter | None = None) -> None:
        self.store = store
        self._adapter = adapter
        #: whether :meth:`own` changes a result's id or metadata (else results pass as they are)
        self.rewrites_docs = type(self).own is not Backend.own

    @classmethod
    def matches(cls, store: VectorStore) -> bool:
        """Whether this backend serves ``store`` (by its class, or a base class when
        ``subclasses``)."""
        mro = type(store).__mro__ if cls.subclasses else (type(store),)
        return any(class_matches(t, s) for t in mro for s in cls.stores)

    # -- vectors ---------------------------------------------------------------------------------
    def adapter(self) -> StoreAdapter:
        """The core adapter over the store's native client (built once)."""
        if self._adapter is None:
            self._adapter = self.build_adapter()
        return self._adapter

    def build_adapter(self) -> StoreAdapter:
        """A new core adapter over the store's native client."""
        msg = (
            f"store: found {type(self.store).__module__}.{type(self.store).__name__}, which "
            "NudgedVectorStore cannot reach inside; pass adapter=... (a nudge_rag.stores "
            "adapter over its native client) to wrap another store."
        )
        raise BadInputError(msg)

    def after_write(self) -> None:
        """Called after each version write into the store (a file-backed store saves itself)."""

    def score_kind(self, metric: Metric) -> str:
        """'distance' or 'similarity': what the store's scores are."""
        return "distance" if metric is Metric.L2 else "similarity"

    def max_batch(self) -> int | None:
        """The most documents one write may carry (None: no limit)."""
        return None

    # -- searches --------------------------------------------------------------------------------
    def vector_search(self) -> Callable[..., ScoredDocs] | None:
        """The store's search by vector with its own scores (None: it has none)."""
        fn = getattr(self.store, "similarity_search_with_score_by_vector", None)
        return fn if callable(fn) else None

    # -- ids and documents -----------------------------------------------------------------------
    def to_store_ids(self, ids: Sequence[str]) -> list[str]:
        """The store's ids of documents ``ids``."""
        return list(ids)

    def own(self, doc: Document) -> tuple[str | None, dict[str, Any] | None]:
        """The document's own id and metadata as the app gave them (None: unchanged)."""
        return doc.id, None

    def prepare_add(
        self, ids: list[str], metadatas: list[dict] | None, n: int
    ) -> list[dict] | None:
        """Metadata to write for an add (a store may keep the document id in it)."""
        return metadatas

    def before_overwrite(self, present: set[str], ids: list[str]) -> None:
        """Called before an add that overwrites ``present`` ids (FAISS deletes them first)."""

    def save_local(self, folder: str, index_name: str = "index") -> None:
        """Save the store to ``folder`` (stores that save to files: FAISS)."""
        msg = (
            f"save_local: {type(self.store).__name__} does not save to a folder; it persists on "
            "its own (Chroma's persist_directory, Qdrant's path) or lives on a server."
        )
        raise BadInputError(msg)

    def get_by_ids(self, ids: Sequence[str]) -> list[Document]:
        """The documents of ``ids`` that exist, as the store returns them."""
        return list(self.store.get_by_ids(self.to_store_ids(ids)))

    def children_of(self, parent_ids: Sequence[str], key: str) -> dict[str, list[str]]:
        """The document ids whose metadata ``key`` equals each of ``parent_ids``."""
        msg = (
            f"id_key: {type(self.store).__name__} cannot be searched by metadata here; pass the "
            "chunk ids instead of parent ids."
        )
        raise BadInputError(msg)


#: the LangChain face's backends, one module each in this package
REGISTRY: BackendRegistry[Backend] = BackendRegistry("nudge_rag.langchain.backends")


def parent_values(parent_ids: Sequence[str]) -> tuple[list[str], list[int]]:
    """The parent ids as strings, and as integers where they read as one (metadata may hold
    either: ``{"doc_id": 7}`` or ``{"doc_id": "7"}``)."""
    strs = [str(p) for p in parent_ids]
    ints = [int(p) for p in strs if p.lstrip("-").isdigit()]
    return strs, ints


def group_children(pairs: Sequence[tuple[str, Any]], parent_ids: Sequence[str]) -> dict:
    """``{parent: [child ids]}`` from ``(child id, parent value)`` pairs."""
    wanted = {str(p) for p in parent_ids}
    out: dict[str, list[str]] = {}
    for child, parent in pairs:
        if parent is not None and str(parent) in wanted:
            out.setdefault(str(parent), []).append(str(child))
    return out
