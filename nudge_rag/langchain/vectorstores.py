"""NudgedVectorStore: a LangChain VectorStore that wraps a real store, traces every search and
keeps versions of the stored vectors."""

from __future__ import annotations

import contextvars
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.state import NudgeState
from nudge_rag.core.stores.base import Metric, StoreAdapter, exact_readback, present_ids
from nudge_rag.core.traces import Feedback, Trace
from nudge_rag.core.versions import VersionInfo

TRACE_KEY = "nudge_trace_id"
ORIGINAL_ID_KEY = "_nudge_id"  # where the Qdrant face keeps a document's own id (in metadata)
_QDRANT_ADDED = ("_id", "_collection_name")
# stores that build new Document objects for every search (FAISS returns its stored ones)
_FRESH_DOCS = frozenset({"chroma", "memory", "qdrant"})

_capture: contextvars.ContextVar[list[list[float]] | None] = contextvars.ContextVar(
    "nudge_capture", default=None
)
_last_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "nudge_last_trace", default=None
)


class _CapturingEmbeddings(Embeddings):
    """Passes calls through; inside an add, keeps the document vectors given to the store."""

    def __init__(self, inner: Embeddings):
        self.inner = inner

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        out = self.inner.embed_documents(texts)
        buf = _capture.get()
        if buf is not None:
            buf.extend(out)
        return out

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        out = await self.inner.aembed_documents(texts)
        buf = _capture.get()
        if buf is not None:
            buf.extend(out)
        return out

    async def aembed_query(self, text: str) -> list[float]:
        return await self.inner.aembed_query(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _kind(store: Any) -> str:
    """'chroma', 'memory', 'qdrant' or 'faiss' for the supported LangChain stores."""
    mod = type(store).__module__
    name = type(store).__name__
    if name == "Chroma" and mod.startswith("langchain_chroma"):
        return "chroma"
    if name == "InMemoryVectorStore" and mod.startswith("langchain_core"):
        return "memory"
    if name == "QdrantVectorStore" and mod.startswith("langchain_qdrant"):
        return "qdrant"
    if name == "FAISS" and mod.startswith("langchain_community"):
        return "faiss"
    return "other"


_SUPPORTED = (
    "langchain_chroma.Chroma, langchain_core InMemoryVectorStore, "
    "langchain_qdrant.QdrantVectorStore, langchain_community FAISS"
)


def adapter_for(store: VectorStore) -> StoreAdapter:
    """The store adapter of the native client inside a LangChain ``store``."""
    kind = _kind(store)
    if kind == "chroma":
        from nudge_rag.core.stores.chroma import ChromaAdapter

        return ChromaAdapter(store._collection)  # type: ignore[attr-defined]
    if kind == "memory":
        from nudge_rag.core.stores.memory import MemoryAdapter

        return MemoryAdapter(store.store, metric=Metric.COSINE)  # type: ignore[attr-defined]
    if kind == "qdrant":
        from nudge_rag.core.stores.qdrant import QdrantAdapter

        return QdrantAdapter(
            store.client,  # type: ignore[attr-defined]
            store.collection_name,  # type: ignore[attr-defined]
            vector_name=store.vector_name,  # type: ignore[attr-defined]
        )
    if kind == "faiss":
        from nudge_rag.core.stores.faiss import FaissAdapter

        return FaissAdapter.for_holder(
            store,
            normalize=bool(getattr(store, "_normalize_L2", False)),
            strategy=str(getattr(store.distance_strategy, "value", store.distance_strategy)),  # type: ignore[attr-defined]
        )
    msg = (
        f"store: found {type(store).__module__}.{type(store).__name__}, which NudgedVectorStore "
        f"cannot reach inside; supported: {_SUPPORTED}. Pass adapter=... (a "
        "nudge_rag.core.stores adapter over its native client) to wrap another store."
    )
    raise NudgeError(msg)


_EMBEDDING_ATTRS = {
    "chroma": "_embedding_function",
    "memory": "embedding",
    "qdrant": "_embeddings",
    "faiss": "embedding_function",
}


def _copy_with(doc: Document, doc_id: str | None, metadata: dict) -> Document:
    """A shallow copy of ``doc`` with a new id and metadata, as ``copy.copy`` makes it.

    Its fields are already valid, so nothing is re-validated: this runs for every result of a
    traced FAISS search, where pydantic's own copy would be a tenth of the search's time.
    """
    new = object.__new__(type(doc))
    fields = dict(doc.__dict__)
    fields["id"] = doc_id
    fields["metadata"] = metadata
    object.__setattr__(new, "__dict__", fields)
    object.__setattr__(new, "__pydantic_fields_set__", doc.__pydantic_fields_set__ | {"metadata"})
    object.__setattr__(new, "__pydantic_extra__", doc.__pydantic_extra__)
    object.__setattr__(new, "__pydantic_private__", doc.__pydantic_private__)
    return new


class NudgedVectorStore(VectorStore):
    """A LangChain vector store that learns from its own usage.

    Wraps a real store (Chroma, InMemoryVectorStore, Qdrant, FAISS) without changing its
    results: every search is delegated, logged as a trace in ``state_dir`` and its documents
    carry the trace id in ``metadata["nudge_trace_id"]`` so the app can send feedback. The stored
    vectors are versioned: ``apply_vectors`` writes fine-tuned vectors in place (nothing is
    re-embedded), ``rollback`` restores any version exactly.

    Setup:
        .. code-block:: bash

            pip install "nudge-rag[langchain,chroma]"

    Key init args:
        inner_store: VectorStore
            The store to wrap; its native client is found inside it.
        state_dir: str | Path
            Folder for ``traces.sqlite`` and ``versions.sqlite`` (created owner-only).
        tracing: bool
            Log searches (default True). Off, searches are plain delegation.
        retention_days: float | None
            Purge traces older than this.

    Instantiate:
        .. code-block:: python

            from langchain_chroma import Chroma
            from nudge_rag.langchain import NudgedVectorStore

            inner = Chroma("docs", embedding_function=embeddings, persist_directory="db")
            store = NudgedVectorStore(inner, state_dir="db/nudge_state")
            # or the embedded default (a persistent cosine Chroma collection):
            store = NudgedVectorStore.from_texts(texts, embeddings, persist_directory="db")

    Add/Update/Delete:
        .. code-block:: python

            store.add_texts(["Paris is in France"], ids=["p1"])   # same id again: overwrite
            store.delete(["p1"])

    Search (with filter, with score):
        .. code-block:: python

            docs = store.similarity_search("capital of France", k=4)
            docs[0].metadata["nudge_trace_id"]     # -> 'e3b0c442...'
            store.similarity_search_with_score("capital of France", k=4, filter={"lang": "en"})

    Feedback and versions:
        .. code-block:: python

            store.record_feedback(docs[0].metadata["nudge_trace_id"], relevant_ids=["p7"])
            v = store.apply_vectors({"p7": new_vector}, note="nudge-n, gamma 0.3")
            store.rollback()          # previous version; rollback(0): the base embeddings
            store.versions()          # [VersionInfo(version=0, ...), VersionInfo(version=1, ...)]

    Async:
        .. code-block:: python

            docs = await store.asimilarity_search("capital of France", k=4)

    Use as Retriever:
        .. code-block:: python

            retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 4})
    """

    def __init__(
        self,
        inner_store: VectorStore,
        *,
        state_dir: str | Path,
        tracing: bool = True,
        retention_days: float | None = None,
        trace_metadata_key: str | None = TRACE_KEY,
        adapter: StoreAdapter | None = None,
    ):
        if not isinstance(inner_store, VectorStore):
            msg = (
                f"inner_store: expected a LangChain VectorStore, found "
                f"{type(inner_store).__name__}; pass e.g. langchain_chroma.Chroma(...)."
            )
            raise NudgeError(msg)
        if isinstance(inner_store, NudgedVectorStore):
            msg = "inner_store: found a NudgedVectorStore; wrap the bare store once."
            raise NudgeError(msg)
        self.inner = inner_store
        self._kind = _kind(inner_store)
        ad = adapter if adapter is not None else adapter_for(inner_store)
        self.trace_metadata_key = trace_metadata_key
        self._install_capture(ad)
        self._vector_search = self._find_vector_search()
        self.nudge_state = NudgeState(
            ad,
            state_dir,
            embed_queries=self._embed_queries,
            get_texts=self._get_texts,
            tracing=tracing,
            retention_days=retention_days,
        )
        # the scores searches return (and traces keep): Chroma and every l2 store give distances
        distance = self._kind == "chroma" or self.nudge_state.metric is Metric.L2
        self.nudge_state.trace_log.score_kind = "distance" if distance else "similarity"

    # -- wiring --------------------------------------------------------------------------------
    def _install_capture(self, ad: StoreAdapter) -> None:
        """Keep inserted vectors as given when the store does not read them back exactly."""
        attr = _EMBEDDING_ATTRS.get(self._kind)
        if exact_readback(ad) or attr is None:
            return
        emb = getattr(self.inner, attr, None)
        if isinstance(emb, Embeddings) and not isinstance(emb, _CapturingEmbeddings):
            setattr(self.inner, attr, _CapturingEmbeddings(emb))

    def _find_vector_search(self) -> Callable[..., list[tuple[Document, float]]]:
        for name in (
            "similarity_search_with_score_by_vector",
            "similarity_search_by_vector_with_relevance_scores",  # Chroma
        ):
            fn = getattr(self.inner, name, None)
            if callable(fn):
                return fn
        return self._no_vector_search

    def _no_vector_search(self, *a: Any, **k: Any) -> list[tuple[Document, float]]:
        msg = (
            f"{type(self.inner).__name__} has no search by vector with scores, so its searches "
            "cannot be traced; construct NudgedVectorStore(..., tracing=False)."
        )
        raise NudgeError(msg)

    @property
    def tracing(self) -> bool:
        """Whether searches are logged (settable)."""
        return self.nudge_state.tracing

    @tracing.setter
    def tracing(self, on: bool) -> None:
        self.nudge_state.tracing = bool(on)

    @property
    def adapter(self) -> StoreAdapter:
        """The adapter over the wrapped store's native client."""
        return self.nudge_state.adapter

    @property
    def embeddings(self) -> Embeddings | None:
        """The wrapped store's embeddings."""
        emb = self.inner.embeddings
        return emb.inner if isinstance(emb, _CapturingEmbeddings) else emb

    @property
    def last_trace_id(self) -> str | None:
        """The trace id of the last search made in this context (thread or task)."""
        return _last_trace.get()

    def _embedding(self) -> Embeddings:
        emb = self.inner.embeddings
        if emb is None:
            msg = (
                f"{type(self.inner).__name__} has no LangChain embeddings, so queries cannot be "
                "embedded for traces; build it with embedding=... or use tracing=False."
            )
            raise NudgeError(msg)
        return emb

    def _embed_queries(self, texts: list[str]) -> np.ndarray:
        emb = self._embedding()
        return np.asarray([emb.embed_query(t) for t in texts], dtype=np.float32)

    def _get_texts(self, ids: list[str]) -> list[str | None]:
        found = {d.id: d.page_content for d in self.get_by_ids(ids)}
        return [found.get(i) for i in ids]

    # -- ids (Qdrant needs UUID point ids) -----------------------------------------------------
    def _to_store_ids(self, ids: Sequence[str]) -> list[str]:
        if self._kind != "qdrant":
            return list(ids)
        conv = self.adapter.id_to_point  # type: ignore[attr-defined]
        return [str(conv(i)) for i in ids]

    def _out(self, doc: Document, trace_id: str | None) -> Document:
        """The document as the app sees it: its own id, and the trace id in its metadata."""
        if self._kind != "qdrant" and (trace_id is None or self.trace_metadata_key is None):
            return doc
        meta = dict(doc.metadata)
        doc_id = doc.id
        if self._kind == "qdrant":
            # the document's own id, and its metadata as stored: langchain-qdrant adds the
            # point id and collection name, which the VectorStore contract does not allow
            doc_id = meta.pop(ORIGINAL_ID_KEY, doc.id)
            for key in _QDRANT_ADDED:
                meta.pop(key, None)
        if trace_id is not None and self.trace_metadata_key is not None:
            meta[self.trace_metadata_key] = trace_id
        if self._kind in _FRESH_DOCS:  # a new object per search: give it the new dict, no copy
            doc.id = doc_id
            doc.metadata = meta
            return doc
        return _copy_with(doc, doc_id, meta)  # a stored object (FAISS): never touch it

    # -- writes --------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and add texts; an existing id is overwritten (its nudge and base dropped)."""
        texts = list(texts)
        if ids is None:
            ids = [str(uuid.uuid4()) for _ in texts]
        ids = [str(i) if i is not None else str(uuid.uuid4()) for i in ids]
        if len(ids) != len(texts):
            msg = f"ids: found {len(ids)} ids for {len(texts)} texts; pass one id per text."
            raise NudgeError(msg)
        if len(set(ids)) != len(ids):
            msg = "ids: found duplicates within one add; pass each id once."
            raise NudgeError(msg)
        if metadatas is not None and len(metadatas) != len(texts):
            msg = f"metadatas: found {len(metadatas)} for {len(texts)} texts; pass one per text."
            raise NudgeError(msg)
        if not texts:
            return []
        state = self.nudge_state
        state.on_upsert(ids)  # before the write: never an old base on a new document
        if self._kind == "faiss":  # FAISS refuses existing ids: overwrite = delete + add
            old = present_ids(state.adapter, ids)
            if old:
                self.inner.delete([i for i in ids if i in old])
        store_ids = self._to_store_ids(ids)
        if self._kind == "qdrant":
            metas = metadatas or [{} for _ in texts]
            metadatas = [{**(m or {}), ORIGINAL_ID_KEY: i} for m, i in zip(metas, ids, strict=True)]
        buf: list[list[float]] = []
        token = _capture.set(buf)
        try:
            self.inner.add_texts(texts, metadatas, ids=store_ids, **kwargs)
        finally:
            _capture.reset(token)
        if len(buf) == len(ids):
            state.on_upsert(ids, np.asarray(buf, dtype=np.float64))
        return ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Add documents (ids from ``ids=`` or each document's ``id``)."""
        ids = kwargs.pop("ids", None)
        if ids is None:
            ids = [d.id or str(uuid.uuid4()) for d in documents]
        return self.add_texts(
            [d.page_content for d in documents],
            [dict(d.metadata) for d in documents],
            ids=ids,
            **kwargs,
        )

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Async :meth:`add_texts`."""
        return await run_in_executor(
            None, self.add_texts, list(texts), metadatas, ids=ids, **kwargs
        )

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Async :meth:`add_documents`."""
        return await run_in_executor(None, self.add_documents, documents, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (missing ids are ignored); their nudges go with them."""
        if ids is None:
            msg = (
                "ids: found None; NudgedVectorStore deletes by id only. Pass the ids to delete "
                "(store.nudge_state.ids() lists them all)."
            )
            raise NudgeError(msg)
        ids = [str(i) for i in ids]
        if not ids:
            return True
        have = present_ids(self.adapter, ids)
        self.nudge_state.on_delete(ids)
        gone = [i for i in ids if i in have]
        if gone:
            self.inner.delete(self._to_store_ids(gone), **kwargs)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Async :meth:`delete`."""
        return await run_in_executor(None, self.delete, ids, **kwargs)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of ``ids`` that exist."""
        ids = [str(i) for i in ids]
        if self._kind == "chroma":
            # langchain-chroma builds Document(metadata=None) for documents added without
            # metadata, which pydantic rejects: read the collection directly instead.
            got = self.inner._collection.get(ids=ids, include=["documents", "metadatas"])
            return [
                Document(id=i, page_content=text or "", metadata=meta or {})
                for i, text, meta in zip(
                    got["ids"], got["documents"], got["metadatas"], strict=True
                )
            ]
        docs = self.inner.get_by_ids(self._to_store_ids(ids))
        return [self._out(d, None) for d in docs]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Async :meth:`get_by_ids`."""
        return await run_in_executor(None, self.get_by_ids, ids)

    # -- searches ------------------------------------------------------------------------------
    def _traced(
        self, query: str | None, embedding: list[float], k: int, kwargs: dict[str, Any]
    ) -> list[tuple[Document, float]]:
        pairs = self._vector_search(embedding, k=k, **kwargs)
        tid = self.nudge_state.record_search(
            query,
            embedding,
            k,
            kwargs.get("filter"),
            [self._out(d, None).id or "" for d, _ in pairs],
            [s for _, s in pairs],
        )
        _last_trace.set(tid)
        return [(self._out(d, tid), s) for d, s in pairs]

    def _untraced(self, docs: list[Document]) -> list[Document]:
        return docs if self._kind != "qdrant" else [self._out(d, None) for d in docs]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The ``k`` documents most similar to ``query`` (traced)."""
        if not self.tracing:
            return self._untraced(self.inner.similarity_search(query, k=k, **kwargs))
        emb = self._embedding().embed_query(query)
        return [d for d, _ in self._traced(query, emb, k, kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents and the wrapped store's own scores (distances for Chroma, FAISS l2)."""
        if not self.tracing:
            pairs = self.inner.similarity_search_with_score(query, k=k, **kwargs)
            return [(self._out(d, None), s) for d, s in pairs]
        emb = self._embedding().embed_query(query)
        return self._traced(query, emb, k, kwargs)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents most similar to ``embedding`` (traced, without query text)."""
        if not self.tracing:
            return self._untraced(self.inner.similarity_search_by_vector(embedding, k=k, **kwargs))
        return [d for d, _ in self._traced(None, list(embedding), k, kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return self.inner._select_relevance_score_fn()

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if not self.tracing:
            pairs = self.inner._similarity_search_with_relevance_scores(query, k=k, **kwargs)
            return [(self._out(d, None), s) for d, s in pairs]
        fn = self._select_relevance_score_fn()
        return [(d, fn(s)) for d, s in self.similarity_search_with_score(query, k, **kwargs)]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """Diverse results by maximal marginal relevance (traced; MMR gives no scores: NaN)."""
        if not self.tracing:
            docs = self.inner.max_marginal_relevance_search(
                query, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
            )
            return self._untraced(docs)
        emb = self._embedding().embed_query(query)
        return self._mmr(query, emb, k, fetch_k, lambda_mult, kwargs)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """MMR from a query vector (traced without query text)."""
        if not self.tracing:
            docs = self.inner.max_marginal_relevance_search_by_vector(
                embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
            )
            return self._untraced(docs)
        return self._mmr(None, list(embedding), k, fetch_k, lambda_mult, kwargs)

    def _mmr(
        self,
        query: str | None,
        emb: list[float],
        k: int,
        fetch_k: int,
        lambda_mult: float,
        kwargs: dict[str, Any],
    ) -> list[Document]:
        docs = self.inner.max_marginal_relevance_search_by_vector(
            emb, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
        )
        plain = [self._out(d, None) for d in docs]
        tid = self.nudge_state.record_search(
            query,
            emb,
            k,
            kwargs.get("filter"),
            [d.id or "" for d in plain],
            [float("nan")] * len(plain),
        )
        _last_trace.set(tid)
        return [self._out(d, tid) for d in docs]

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """Async :meth:`similarity_search`."""
        return await run_in_executor(None, self.similarity_search, query, k, **kwargs)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score`."""
        return await run_in_executor(None, self.similarity_search_with_score, query, k, **kwargs)

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """Async :meth:`similarity_search_by_vector`."""
        return await run_in_executor(None, self.similarity_search_by_vector, embedding, k, **kwargs)

    async def asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_relevance_scores`."""
        return await run_in_executor(
            None, self.similarity_search_with_relevance_scores, query, k, **kwargs
        )

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search`."""
        return await run_in_executor(
            None, self.max_marginal_relevance_search, query, k, fetch_k, lambda_mult, **kwargs
        )

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search_by_vector`."""
        return await run_in_executor(
            None,
            self.max_marginal_relevance_search_by_vector,
            embedding,
            k,
            fetch_k,
            lambda_mult,
            **kwargs,
        )

    # -- feedback and versions (delegating to nudge_state) -------------------------------------
    def record_feedback(
        self,
        trace_id: str,
        *,
        relevant_ids: Iterable[str] = (),
        irrelevant_ids: Iterable[str] = (),
        rating: float | None = None,
        text: str | None = None,
    ) -> None:
        """Attach feedback to a search; relevant ids need not be among its results."""
        self.nudge_state.record_feedback(
            trace_id,
            relevant_ids=relevant_ids,
            irrelevant_ids=irrelevant_ids,
            rating=rating,
            text=text,
        )

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The vectors the wrapped store holds now (float32, in order)."""
        return self.nudge_state.get_vectors(ids)

    def base_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The base (version 0) vectors of ``ids``."""
        return self.nudge_state.base_vectors(ids)

    def apply_vectors(
        self,
        vectors: dict[str, np.ndarray],
        *,
        note: str | None = None,
        method: str | None = None,
        gamma: float | None = None,
        report: dict | None = None,
    ) -> int:
        """Write ``{id: vector}`` in place as a new version; return its number."""
        return self.nudge_state.apply_vectors(
            vectors, note=note, method=method, gamma=gamma, report=report
        )

    def rollback(self, version: int | None = None) -> int:
        """Restore ``version`` exactly (None: the previous one; 0: the base)."""
        return self.nudge_state.rollback(version)

    def versions(self) -> list[VersionInfo]:
        """Every recorded version, oldest first."""
        return self.nudge_state.versions()

    def traces(self, **kw: Any) -> list[Trace]:
        """Every recorded search (``since=`` a time for newer ones only)."""
        return self.nudge_state.traces(**kw)

    def feedback(self, trace_id: str | None = None) -> list[Feedback]:
        """Every feedback row, or those of one trace."""
        return self.nudge_state.feedback(trace_id)

    def close(self) -> None:
        """Close the trace and version logs (the wrapped store stays open)."""
        self.nudge_state.close()

    # -- the embedded default: Chroma ----------------------------------------------------------
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        persist_directory: str | Path | None = None,
        collection_name: str = "nudge_rag",
        collection_metadata: dict | None = None,
        state_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> NudgedVectorStore:
        """Build the embedded default: a Chroma collection (cosine unless told otherwise).

        ``persist_directory`` keeps the collection on disk, with the state in
        ``<persist_directory>/nudge_state`` unless ``state_dir`` is given; without either, both
        live in memory / a temporary folder.
        """
        try:
            from langchain_chroma import Chroma
        except ImportError as e:  # pragma: no cover
            msg = "from_texts needs langchain-chroma: pip install 'nudge-rag[chroma]'."
            raise NudgeError(msg) from e
        wrap_kw = {
            k: kwargs.pop(k)
            for k in ("tracing", "retention_days", "trace_metadata_key")
            if k in kwargs
        }
        inner = Chroma(
            collection_name=collection_name,
            embedding_function=embedding,
            persist_directory=None if persist_directory is None else str(persist_directory),
            collection_metadata=collection_metadata or {"hnsw:space": "cosine"},
            **kwargs,
        )
        if state_dir is None:
            state_dir = (
                Path(persist_directory) / "nudge_state"
                if persist_directory is not None
                else tempfile.mkdtemp(prefix="nudge_state_")
            )
        store = cls(inner, state_dir=state_dir, **wrap_kw)
        if texts:
            store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    def from_documents(
        cls, documents: list[Document], embedding: Embeddings, **kwargs: Any
    ) -> NudgedVectorStore:
        """:meth:`from_texts` for documents (their ids kept)."""
        ids = kwargs.pop("ids", None)
        if ids is None and any(d.id for d in documents):
            ids = [d.id or str(uuid.uuid4()) for d in documents]
        return cls.from_texts(
            [d.page_content for d in documents],
            embedding,
            [dict(d.metadata) for d in documents],
            ids=ids,
            **kwargs,
        )
