"""NudgedVectorStore: a LangChain VectorStore that wraps a real store, traces every search and
keeps versions of the stored vectors.

Everything NUDGE (feedback, traces, versions, the latest trace id) comes from the shared
:class:`~nudge_rag.state.surface.NudgeSurface`; everything store-specific from one backend object
(``nudge_rag.langchain.backends``). This module only translates LangChain calls.
"""

from __future__ import annotations

import contextvars
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.fit.checks import check_k
from nudge_rag.langchain.backends import Backend, backend_for
from nudge_rag.langchain.backends.base import ScoredDocs
from nudge_rag.state.db import state_argument
from nudge_rag.state.records import EXTERNAL_RUN, LANGSMITH
from nudge_rag.state.state import NudgeState
from nudge_rag.state.surface import NudgeSurface
from nudge_rag.stores.base import StoreAdapter, exact_readback, present_ids

__all__ = ["TRACE_KEY", "NudgedRetriever", "NudgedVectorStore", "adapter_for"]

TRACE_KEY = "nudge_trace_id"

_capture: contextvars.ContextVar[list[list[float]] | None] = contextvars.ContextVar(
    "nudge_capture", default=None
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


class NudgedRetriever(VectorStoreRetriever):
    """``VectorStoreRetriever`` whose searches record its LangChain run id on their traces
    (external id ``"langsmith:<run id>"``: LangSmith keeps the run under that id, so its
    feedback joins the trace on ``import_traces``)."""

    def _get_relevant_documents(
        self, query: str, *, run_manager: Any, **kwargs: Any
    ) -> list[Document]:
        token = EXTERNAL_RUN.set((LANGSMITH, str(run_manager.run_id)))
        try:
            return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)
        finally:
            EXTERNAL_RUN.reset(token)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: Any, **kwargs: Any
    ) -> list[Document]:
        token = EXTERNAL_RUN.set((LANGSMITH, str(run_manager.run_id)))
        try:
            return await super()._aget_relevant_documents(query, run_manager=run_manager, **kwargs)
        finally:
            EXTERNAL_RUN.reset(token)


class NudgedVectorStore(NudgeSurface, VectorStore):
    """A LangChain vector store that learns from its own usage.

    Wraps a real store (Chroma, InMemoryVectorStore, Qdrant, FAISS, PGVector, Milvus) without
    changing its results: every search is delegated, logged as a trace in ``state_dir`` and its
    documents carry the trace id in ``metadata["nudge_trace_id"]`` so the app can send feedback.
    The stored vectors are versioned: ``apply_vectors`` writes fine-tuned vectors in place
    (nothing is re-embedded), ``rollback`` restores any version exactly.

    Setup:
        .. code-block:: bash

            pip install "nudge-rag[langchain,chroma]"

    Key init args:
        inner_store: VectorStore
            The store to wrap; its native client is found inside it.
        state_dir: str | Path
            Folder for ``traces.sqlite`` and ``versions.sqlite`` (created owner-only).
        state: str | Path
            Instead of ``state_dir``: a folder, or a Postgres URL
            (``postgresql://user@host/db?schema=nudge_docs``) whose schemas hold the trace log,
            the version log and the label cache for every worker process and machine.
        tracing: bool
            Log searches (default True). Off, searches are plain delegation.
        retention_days: float | None
            Purge traces older than this.
        trace_metadata_key: str | None
            Metadata key for the trace id on each result (None: leave metadata as stored).
        parent_id_key: str | None
            Metadata key naming a chunk's parent (a parent-document retriever's ``id_key``):
            feedback given with parent ids maps to their chunks.

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
            store.last_trace_id                  # that search's trace, in this task

    Use as Retriever (chains, agents, parent documents):
        .. code-block:: python

            retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 4})
            with store.trace_scope() as scope:   # every search of one chain run
                (retriever | format_docs).invoke("capital of France")
            tool = store.as_retriever_tool("search_docs", "Search the docs.")  # agents
            store.record_citations(tool_message.artifact["trace_id"], answer)
            # ParentDocumentRetriever(vectorstore=NudgedVectorStore(..., parent_id_key="doc_id"))
            store.record_feedback(scope.last, relevant_ids=["parent-7"])  # -> its chunks
    """

    def __init__(
        self,
        inner_store: VectorStore,
        *,
        state_dir: str | Path | None = None,
        state: str | Path | None = None,
        tracing: bool = True,
        retention_days: float | None = None,
        trace_metadata_key: str | None = TRACE_KEY,
        parent_id_key: str | None = None,
        adapter: StoreAdapter | None = None,
    ):
        if isinstance(inner_store, NudgedVectorStore):
            msg = "inner_store: found a NudgedVectorStore; wrap the bare store once."
            raise BadInputError(msg)
        if not isinstance(inner_store, VectorStore):
            msg = (
                f"inner_store: expected a LangChain VectorStore, found "
                f"{type(inner_store).__name__}; pass e.g. langchain_chroma.Chroma(...)."
            )
            raise BadInputError(msg)
        self.inner = inner_store
        self.backend: Backend = backend_for(inner_store, adapter)
        ad = self.backend.adapter()
        self.trace_metadata_key = trace_metadata_key
        self._add_lock = threading.Lock()
        self._nudge_state = NudgeState(
            ad,
            state_argument(state_dir, state),
            embed_queries=self._embed_queries,
            get_texts=self._get_texts,
            children_of=self.backend.children_of,
            parent_id_key=parent_id_key,
            after_write=self.backend.after_write,
            tracing=tracing,
            retention_days=retention_days,
        )
        self._nudge_state.trace_log.score_kind = self.backend.score_kind(self._nudge_state.metric)

    # -- wiring --------------------------------------------------------------------------------
    @property
    def nudge_state(self) -> NudgeState:
        """The core state (adapter, trace log, version log) that the engine works on."""
        return self._nudge_state

    @property
    def adapter(self) -> StoreAdapter:
        """The adapter over the wrapped store's native client."""
        return self._nudge_state.adapter

    @contextmanager
    def _capturing(self) -> Iterator[list[list[float]]]:
        """During one add: the vectors given to the store, when it will not read them back
        exactly (cosine Chroma, Qdrant). The store's embeddings are swapped for a pass-through
        recorder only for the add, so the app's store object stays as it built it."""
        buf: list[list[float]] = []
        attr = self.backend.embeddings_attr
        emb = getattr(self.inner, attr, None) if attr is not None else None
        swap = isinstance(emb, Embeddings) and not exact_readback(self.adapter)
        token = _capture.set(buf)
        if swap:
            setattr(self.inner, attr, _CapturingEmbeddings(emb))  # type: ignore[arg-type]
        try:
            yield buf
        finally:
            if swap:
                setattr(self.inner, attr, emb)  # type: ignore[arg-type]
            _capture.reset(token)

    @property
    def embeddings(self) -> Embeddings | None:
        """The wrapped store's embeddings."""
        emb = self.inner.embeddings
        return emb.inner if isinstance(emb, _CapturingEmbeddings) else emb

    def _embedding(self) -> Embeddings:
        emb = self.inner.embeddings
        if emb is None:
            msg = (
                f"{type(self.inner).__name__} has no LangChain embeddings, so queries cannot be "
                "embedded for traces; build it with embedding=... or use tracing=False."
            )
            raise BadInputError(msg)
        return emb

    def _embed_queries(self, texts: list[str]) -> np.ndarray:
        emb = self._embedding()
        return np.asarray([emb.embed_query(t) for t in texts], dtype=np.float32)

    def _get_texts(self, ids: list[str]) -> list[str | None]:
        found = {d.id: d.page_content for d in self.get_by_ids(ids)}
        return [found.get(i) for i in ids]

    def _out(self, doc: Document, trace_id: str | None) -> Document:
        """The document as the app sees it: its own id, and the trace id in its metadata."""
        doc_id, meta = self.backend.own(doc)
        stamp = trace_id is not None and self.trace_metadata_key is not None
        if meta is None and not stamp:
            return doc
        meta = dict(doc.metadata) if meta is None else meta
        if stamp:
            meta[self.trace_metadata_key] = trace_id  # type: ignore[index]
        if self.backend.fresh_docs:  # a new object per search: give it the new dict, no copy
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
        """Embed and add texts (in batches the store accepts); an existing id is overwritten."""
        texts = list(texts)
        if ids is None:
            ids = [str(uuid.uuid4()) for _ in texts]
        ids = [str(i) if i is not None else str(uuid.uuid4()) for i in ids]
        if len(ids) != len(texts):
            msg = f"ids: found {len(ids)} ids for {len(texts)} texts; pass one id per text."
            raise BadInputError(msg)
        if len(set(ids)) != len(ids):
            msg = "ids: found duplicates within one add; pass each id once."
            raise BadInputError(msg)
        if metadatas is not None and len(metadatas) != len(texts):
            msg = f"metadatas: found {len(metadatas)} for {len(texts)} texts; pass one per text."
            raise BadInputError(msg)
        step = self.backend.max_batch() or max(1, len(texts))
        for s in range(0, len(texts), step):
            self._add_batch(
                texts[s : s + step],
                None if metadatas is None else metadatas[s : s + step],
                ids[s : s + step],
                kwargs,
            )
        return ids

    def _add_batch(
        self, texts: list[str], metadatas: list[dict] | None, ids: list[str], kwargs: dict
    ) -> None:
        state = self._nudge_state
        state.on_upsert(ids)  # before the write: never an old base on a new document
        present = present_ids(state.adapter, ids)
        if present:
            self.backend.before_overwrite(present, ids)
        metadatas = self.backend.prepare_add(ids, metadatas, len(texts))
        with self._add_lock, self._capturing() as buf:
            self.inner.add_texts(texts, metadatas, ids=self.backend.to_store_ids(ids), **kwargs)
        if len(buf) == len(ids):
            state.on_upsert(ids, np.asarray(buf, dtype=np.float64))

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
            raise BadInputError(msg)
        ids = [str(i) for i in ids]
        if not ids:
            return True
        have = present_ids(self.adapter, ids)
        gone = [i for i in ids if i in have]
        if gone:  # ids the store does not hold keep their versions (another collection's?)
            self._nudge_state.on_delete(gone)
            self.inner.delete(self.backend.to_store_ids(gone), **kwargs)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Async :meth:`delete`."""
        return await run_in_executor(None, self.delete, ids, **kwargs)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of ``ids`` that exist."""
        return self.backend.get_by_ids([str(i) for i in ids])

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Async :meth:`get_by_ids`."""
        return await run_in_executor(None, self.get_by_ids, ids)

    # -- searches ------------------------------------------------------------------------------
    # Each traced search runs in two steps: the store's search (blocking; in a worker thread for
    # the async twins), then _finish in the caller's own context, which logs the trace and sets
    # the caller's last_trace_id.
    def _vector_pairs(self, embedding: list[float], k: int, kwargs: dict) -> ScoredDocs:
        self._nudge_state.check_fresh()
        search = self.backend.vector_search()
        if search is None:
            msg = (
                f"{type(self.inner).__name__} has no search by vector with scores, so its "
                "searches cannot be traced; construct NudgedVectorStore(..., tracing=False)."
            )
            raise BadInputError(msg)
        return search(embedding, k=k, **kwargs)

    def _query_pairs(self, query: str, k: int, kwargs: dict) -> tuple[list[float], ScoredDocs]:
        emb = self._embedding().embed_query(query)
        return emb, self._vector_pairs(emb, k, kwargs)

    def _finish(
        self, query: str | None, emb: list[float], k: int, kwargs: dict, pairs: ScoredDocs
    ) -> ScoredDocs:
        return self._finish_with_id(query, emb, k, kwargs, pairs)[0]

    def _finish_with_id(
        self, query: str | None, emb: list[float], k: int, kwargs: dict, pairs: ScoredDocs
    ) -> tuple[ScoredDocs, str | None]:
        if self.backend.rewrites_docs:  # the documents' own ids, for the trace
            ids = [self._out(d, None).id or "" for d, _ in pairs]
        else:
            ids = [d.id or "" for d, _ in pairs]
        tid = self._nudge_state.record_search(
            query, emb, k, kwargs.get("filter"), ids, [s for _, s in pairs]
        )
        self._nudge_state.last_trace.set(tid)
        return [(self._out(d, tid), s) for d, s in pairs], tid

    def _plain(self, docs: list[Document]) -> list[Document]:
        """Results of an untraced search (tracing off), with the documents' own ids."""
        self._nudge_state.check_fresh()
        self._nudge_state.last_trace.set(None)
        return [self._out(d, None) for d in docs] if self.backend.rewrites_docs else docs

    def _plain_pairs(self, pairs: ScoredDocs) -> ScoredDocs:
        self._nudge_state.check_fresh()
        self._nudge_state.last_trace.set(None)
        if not self.backend.rewrites_docs:
            return pairs
        return [(self._out(d, None), s) for d, s in pairs]

    def _mmr_docs(
        self, emb: list[float], k: int, fetch_k: int, lambda_mult: float, kwargs: dict
    ) -> ScoredDocs:
        self._nudge_state.check_fresh()
        docs = self.inner.max_marginal_relevance_search_by_vector(
            emb, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
        )
        return [(d, float("nan")) for d in docs]  # MMR gives no scores

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The ``k`` documents most similar to ``query`` (traced)."""
        k = check_k(k)
        if not self.tracing:
            return self._plain(self.inner.similarity_search(query, k=k, **kwargs))
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents and the wrapped store's own scores (distances for Chroma, FAISS l2)."""
        k = check_k(k)
        if not self.tracing:
            return self._plain_pairs(self.inner.similarity_search_with_score(query, k=k, **kwargs))
        emb, pairs = self._query_pairs(query, k, kwargs)
        return self._finish(query, emb, k, kwargs, pairs)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents most similar to ``embedding`` (traced, without query text)."""
        k = check_k(k)
        if not self.tracing:
            return self._plain(self.inner.similarity_search_by_vector(embedding, k=k, **kwargs))
        emb = list(embedding)
        return [
            d for d, _ in self._finish(None, emb, k, kwargs, self._vector_pairs(emb, k, kwargs))
        ]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return self.inner._select_relevance_score_fn()

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        k = check_k(k)
        if not self.tracing:
            pairs = self.inner._similarity_search_with_relevance_scores(query, k=k, **kwargs)
            return self._plain_pairs(pairs)
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
        k = check_k(k)
        fetch_k = check_k(fetch_k, what="fetch_k")
        if not self.tracing:
            return self._plain(
                self.inner.max_marginal_relevance_search(
                    query, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
                )
            )
        emb = self._embedding().embed_query(query)
        pairs = self._mmr_docs(emb, k, fetch_k, lambda_mult, kwargs)
        return [d for d, _ in self._finish(query, emb, k, kwargs, pairs)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """MMR from a query vector (traced without query text)."""
        k = check_k(k)
        fetch_k = check_k(fetch_k, what="fetch_k")
        if not self.tracing:
            return self._plain(
                self.inner.max_marginal_relevance_search_by_vector(
                    embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
                )
            )
        emb = list(embedding)
        pairs = self._mmr_docs(emb, k, fetch_k, lambda_mult, kwargs)
        return [d for d, _ in self._finish(None, emb, k, kwargs, pairs)]

    # -- async twins: the store's work in a thread, the trace in the caller's context -----------
    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """Async :meth:`similarity_search`."""
        k = check_k(k)
        if not self.tracing:
            return self._plain(await self.inner.asimilarity_search(query, k=k, **kwargs))
        return [d for d, _ in await self.asimilarity_search_with_score(query, k, **kwargs)]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score`."""
        k = check_k(k)
        if not self.tracing:
            pairs = await self.inner.asimilarity_search_with_score(query, k=k, **kwargs)
            return self._plain_pairs(pairs)
        emb, pairs = await run_in_executor(None, self._query_pairs, query, k, kwargs)
        return self._finish(query, emb, k, kwargs, pairs)

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        """Async :meth:`similarity_search_by_vector`."""
        k = check_k(k)
        if not self.tracing:
            docs = await self.inner.asimilarity_search_by_vector(embedding, k=k, **kwargs)
            return self._plain(docs)
        emb = list(embedding)
        pairs = await run_in_executor(None, self._vector_pairs, emb, k, kwargs)
        return [d for d, _ in self._finish(None, emb, k, kwargs, pairs)]

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        k = check_k(k)
        if not self.tracing:
            pairs = await self.inner._asimilarity_search_with_relevance_scores(query, k=k, **kwargs)
            return self._plain_pairs(pairs)
        fn = self._select_relevance_score_fn()
        return [(d, fn(s)) for d, s in await self.asimilarity_search_with_score(query, k, **kwargs)]

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search`."""
        k = check_k(k)
        fetch_k = check_k(fetch_k, what="fetch_k")
        if not self.tracing:
            docs = await self.inner.amax_marginal_relevance_search(
                query, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
            )
            return self._plain(docs)
        emb = await run_in_executor(None, self._embedding().embed_query, query)
        pairs = await run_in_executor(None, self._mmr_docs, emb, k, fetch_k, lambda_mult, kwargs)
        return [d for d, _ in self._finish(query, emb, k, kwargs, pairs)]

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search_by_vector`."""
        k = check_k(k)
        fetch_k = check_k(fetch_k, what="fetch_k")
        if not self.tracing:
            docs = await self.inner.amax_marginal_relevance_search_by_vector(
                embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
            )
            return self._plain(docs)
        emb = list(embedding)
        pairs = await run_in_executor(None, self._mmr_docs, emb, k, fetch_k, lambda_mult, kwargs)
        return [d for d, _ in self._finish(None, emb, k, kwargs, pairs)]

    # -- files ---------------------------------------------------------------------------------
    def save_local(self, folder_path: str, index_name: str = "index") -> None:
        """Save a FAISS store to ``folder_path``, atomically (``FAISS.load_local`` reads it).

        Every later ``apply_vectors``/``rollback`` re-saves there before its version commits, so
        the saved pair never lags behind the version log; a kill never leaves a cut or mixed pair.
        """
        self.backend.save_local(folder_path, index_name)

    def search_with_trace(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> tuple[list[Document], str | None]:
        """:meth:`similarity_search` and the id of that very search's trace (None: untraced)."""
        k = check_k(k)
        if not self.tracing:
            return self.similarity_search(query, k, **kwargs), None
        emb, pairs = self._query_pairs(query, k, kwargs)
        docs, tid = self._finish_with_id(query, emb, k, kwargs, pairs)
        return [d for d, _ in docs], tid

    async def asearch_with_trace(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> tuple[list[Document], str | None]:
        """Async :meth:`search_with_trace`."""
        k = check_k(k)
        if not self.tracing:
            return await self.asimilarity_search(query, k, **kwargs), None
        emb, pairs = await run_in_executor(None, self._query_pairs, query, k, kwargs)
        docs, tid = self._finish_with_id(query, emb, k, kwargs, pairs)
        return [d for d, _ in docs], tid

    def as_retriever(self, **kwargs: Any) -> VectorStoreRetriever:
        """A retriever over this store (LangChain's, recording its run id on each trace)."""
        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return NudgedRetriever(vectorstore=self, tags=tags, **kwargs)

    # -- agents ---------------------------------------------------------------------------------
    def as_retriever_tool(
        self,
        name: str = "search_documents",
        description: str = "Search the knowledge base; cite the chunks you use as [id].",
        *,
        k: int = 4,
        search_kwargs: dict[str, Any] | None = None,
    ) -> BaseTool:
        """A LangChain tool for agents: content shows each chunk as ``[id] text`` so the model can
        cite it; its artifact carries ``{"trace_id", "ids"}`` for :meth:`record_citations`.

        .. code-block:: python

            tool = store.as_retriever_tool("search_docs", "Search the product docs.")
            agent = create_react_agent(model, [tool])
        """
        from nudge_rag.langchain.tools import retriever_tool

        return retriever_tool(self, name, description, k=k, search_kwargs=search_kwargs)

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
        state: str | Path | None = None,
        **kwargs: Any,
    ) -> NudgedVectorStore:
        """Build the embedded default: a Chroma collection (cosine unless told otherwise).

        ``persist_directory`` keeps the collection on disk, with the state in
        ``<persist_directory>/nudge_state`` unless ``state_dir`` (a folder) or ``state`` (a
        folder or a Postgres URL) is given; without either, both live in memory / a temporary
        folder.
        """
        try:
            from langchain_chroma import Chroma
        except ImportError as e:  # pragma: no cover
            msg = "from_texts needs langchain-chroma: pip install 'nudge-rag[chroma]'."
            raise NudgeError(msg) from e
        wrap_kw = {
            k: kwargs.pop(k)
            for k in ("tracing", "retention_days", "trace_metadata_key", "parent_id_key")
            if k in kwargs
        }
        inner = Chroma(
            collection_name=collection_name,
            embedding_function=embedding,
            persist_directory=None if persist_directory is None else str(persist_directory),
            collection_metadata=collection_metadata or {"hnsw:space": "cosine"},
            **kwargs,
        )
        if state_dir is None and state is None:
            state_dir = (
                Path(persist_directory) / "nudge_state"
                if persist_directory is not None
                else tempfile.mkdtemp(prefix="nudge_state_")
            )
        store = cls(inner, state_dir=state_dir, state=state, **wrap_kw)
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


def adapter_for(store: VectorStore) -> StoreAdapter:
    """The store adapter of the native client inside a LangChain ``store``."""
    return backend_for(store).adapter()
