"""``NudgedVectorStore``: a LlamaIndex vector store that learns from its own usage.

It wraps a LlamaIndex store (Chroma, Simple, Qdrant, Milvus, pgvector, LanceDB), answers
every call through it, logs each query as a trace, and exposes NUDGE's versioned vector edits.
All state (traces, feedback, base vectors, versions) lives in ``nudge_rag.state``, the store
adapters in ``nudge_rag.stores``; this module only translates.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from nudge_rag.errors import BadInputError
from nudge_rag.fit.checks import check_k, check_vectors
from nudge_rag.llama_index.backends import Backend, backend_for
from nudge_rag.state.db import state_argument
from nudge_rag.state.files import persist_atomic
from nudge_rag.state.state import NudgeState
from nudge_rag.state.surface import NudgeSurface
from nudge_rag.stores.base import Metric, StoreAdapter

__all__ = ["DOCUMENT_KEY", "TRACE_ID_KEY", "NudgedVectorStore"]

TRACE_ID_KEY = "nudge_trace_id"
"""Metadata key for the trace id, for apps that opt in with ``trace_metadata_key=TRACE_ID_KEY``.

Off by default: LlamaIndex's ``node.hash`` covers metadata, and fusion retrievers
(``QueryFusionRetriever``) merge the legs' nodes by hash, so a stamped node would no longer merge
with the same chunk found by BM25; wrapping must not change what a pipeline computes.
"""


DOCUMENT_KEY = "ref_doc_id"
"""How feedback names a document: an id that is no chunk of the store but a ``ref_doc_id``
(``node.ref_doc_id``, the SOURCE relationship) stands for the chunks of that document."""


class NudgedVectorStore(NudgeSurface, BasePydanticVectorStore):
    """LlamaIndex vector store that records its queries and serves NUDGE-tuned vectors.

    Every call goes to the wrapped store unchanged; queries are also logged (query text,
    query embedding, result ids, similarities) so that feedback and LLM judgments can later
    become NUDGE training labels. Fitted vectors are written into the wrapped store in place,
    by version, with the original vectors kept for an exact rollback.

    Setup:
        ```bash
        pip install "nudge-rag[llama-index,chroma]"   # or [qdrant] / [milvus]
        ```

    Key init args:
        vector_store: the LlamaIndex store to wrap: ``ChromaVectorStore`` (embedded,
            persistent or a Chroma server), ``SimpleVectorStore``, ``QdrantVectorStore``
            (pass ``dense_config`` with ``Distance.DOT`` to use NUDGE-M), ``MilvusVectorStore``
            (Milvus Lite or a cluster), ``PGVectorStore``, ``LanceDBVectorStore`` (its vector
            index's metric, l2 without one). LlamaIndex's FAISS stores cannot look up vectors
            by node id and are refused.
        state_dir: folder for the trace log and the version log.
        state: instead of ``state_dir``: a folder, or a Postgres URL
            (``postgresql://user@host/db?schema=nudge_docs``) shared by every worker process.
        embed_model: optional LlamaIndex embedding model (or ``texts -> matrix`` callable),
            used by the fine-tune engine to embed synthetic queries.
        get_texts: optional ``ids -> texts``; defaults to the wrapped store's text.
        tracing: log queries (default True).
        retention_days: drop traces older than this many days (default: keep all).

    Instantiate (embedded, persistent Chroma):
        ```python
        from nudge_rag.llama_index import NudgedVectorStore

        store = NudgedVectorStore.from_defaults(persist_dir="./storage", collection_name="docs")
        ```

    Instantiate (any supported store):
        ```python
        from llama_index.core.vector_stores import SimpleVectorStore

        store = NudgedVectorStore(SimpleVectorStore(), state_dir="./nudge_state")
        ```

    Build an index and retrieve:
        ```python
        from llama_index.core import Document, StorageContext, VectorStoreIndex

        index = VectorStoreIndex.from_documents(
            [Document(text="NUDGE edits embeddings in closed form.")],
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=embed_model,
        )
        hits = index.as_retriever(similarity_top_k=2).retrieve("how does NUDGE work?")
        ```

    Send feedback (nodes come back untouched; the trace id is the store's, per thread/task):
        ```python
        trace_id = store.last_trace_id        # the latest query of this thread or task
        store.record_feedback(trace_id, relevant_ids=[hits[0].node.node_id])
        with store.trace_scope() as scope:    # every query of a pipeline run (fusion, agents)
            fusion_retriever.retrieve("how does NUDGE work?")
        scope.trace_ids
        ```
        Nodes keep their metadata (and so their ``node.hash``, which fusion retrievers merge
        by); pass ``trace_metadata_key="nudge_trace_id"`` to stamp the trace id on each node.

    Feedback on documents and parent nodes (ids that are no chunk of the store; a chunk id
    always means that chunk):
        ```python
        store.record_feedback(trace_id, relevant_ids=[document.doc_id])   # all its chunks
        # HierarchicalNodeParser + AutoMergingRetriever: a merged parent node stands for its
        # chunks that this search returned
        store.record_feedback(trace_id, relevant_ids=[merged.node.node_id])
        ```

    Versions:
        ```python
        store.get_vectors(["node-1"])            # what the store serves now
        store.apply_vectors({"node-1": new_vec}, note="nudge-n fit")   # -> version number
        store.versions()                          # version records, newest last
        store.rollback()                          # back to the previous version
        ```

    Async:
        ``aquery``, ``async_add``, ``adelete``, ``adelete_nodes``, ``aget_nodes`` and
        ``aclear`` call the wrapped store's async twins (a ``QdrantVectorStore`` built
        without ``aclient`` runs them synchronously instead of failing).
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False

    _inner: BasePydanticVectorStore = PrivateAttr()
    _backend: Backend = PrivateAttr()
    _nudge_state: NudgeState = PrivateAttr()
    _dim: int | None = PrivateAttr(default=None)
    _trace_metadata_key: str | None = PrivateAttr(default=None)
    _persisted_to: tuple[str, Any] | None = PrivateAttr(default=None)

    def __init__(
        self,
        vector_store: BasePydanticVectorStore,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        state: str | os.PathLike[str] | None = None,
        embed_model: Any = None,
        get_texts: Callable[[Sequence[str]], list[str | None]] | None = None,
        tracing: bool = True,
        retention_days: float | None = None,
        trace_metadata_key: str | None = None,
        adapter: StoreAdapter | None = None,
    ) -> None:
        if isinstance(vector_store, NudgedVectorStore):
            msg = (
                "vector_store: found a NudgedVectorStore; wrap the underlying store once "
                "(pass nudged.vector_store, or use the NudgedVectorStore as it is)."
            )
            raise BadInputError(msg)
        if not isinstance(vector_store, BasePydanticVectorStore):
            msg = (
                f"vector_store: expected a LlamaIndex BasePydanticVectorStore, found "
                f"{type(vector_store).__name__}; pass e.g. a ChromaVectorStore."
            )
            raise BadInputError(msg)
        backend = backend_for(vector_store, adapter)
        super().__init__(
            stores_text=vector_store.stores_text,
            is_embedding_query=vector_store.is_embedding_query,
            flat_metadata=bool(getattr(vector_store, "flat_metadata", False)),  # type: ignore[call-arg]
        )
        self._inner = vector_store
        self._backend = backend
        self._trace_metadata_key = trace_metadata_key
        if get_texts is None and vector_store.stores_text:
            get_texts = backend.texts
        self._nudge_state = NudgeState(
            adapter if adapter is not None else backend.adapter(),
            state_argument(state_dir, state),
            embed_queries=_query_embedder(embed_model),
            get_texts=get_texts,
            children_of=self._children_of,
            parent_id_key=DOCUMENT_KEY,
            after_write=self._repersist,
            tracing=tracing,
            retention_days=retention_days,
        )
        self._nudge_state.trace_log.score_kind = backend.score_kind(self._nudge_state.metric)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_defaults(
        cls,
        persist_dir: str | os.PathLike[str] = "./storage",
        collection_name: str = "nudge_rag",
        *,
        state_dir: str | os.PathLike[str] | None = None,
        state: str | os.PathLike[str] | None = None,
        metric: Metric | str = Metric.COSINE,
        host: str | None = None,
        port: int | None = None,
        embed_model: Any = None,
        tracing: bool = True,
        retention_days: float | None = None,
    ) -> NudgedVectorStore:
        """The embedded default: a persistent Chroma collection (or a Chroma server).

        Args:
            persist_dir: Chroma's folder (ignored when ``host`` is given).
            collection_name: the collection, created if missing.
            state_dir: trace and version logs; default ``<persist_dir>/nudge_state/<name>``.
            state: instead of ``state_dir``: a folder or a Postgres URL (``postgresql://...``).
            metric: ``"cosine"`` (default), ``"ip"`` (for NUDGE-M) or ``"l2"``; used when the
                collection is created.
            host, port: reach a running ``chroma run`` server instead of a local folder.
        """
        import chromadb
        from llama_index.vector_stores.chroma import ChromaVectorStore

        space = _metric(metric).value
        if host is not None:
            if state_dir is None and state is None:
                msg = (
                    "state_dir: found None with a Chroma server (host=...); pass a local "
                    "folder (state_dir=) or a Postgres URL (state=) for the trace and version "
                    "logs."
                )
                raise BadInputError(msg)
            client: Any = chromadb.HttpClient(host=host, port=port or 8000)
        else:
            client = chromadb.PersistentClient(path=str(persist_dir))
        collection = client.get_or_create_collection(
            collection_name, configuration={"hnsw": {"space": space}}, embedding_function=None
        )
        inner = ChromaVectorStore(
            chroma_collection=collection,
            collection_name=collection_name,
            persist_dir=None if host is not None else str(persist_dir),
            host=host,
            port=port,
        )
        if state_dir is None and state is None:
            state_dir = Path(persist_dir) / "nudge_state" / collection_name
        return cls(
            inner,
            state_dir=state_dir,
            state=state,
            embed_model=embed_model,
            tracing=tracing,
            retention_days=retention_days,
        )

    @classmethod
    def class_name(cls) -> str:
        """Name LlamaIndex uses when it serialises the store's settings."""
        return "NudgedVectorStore"

    # -- feedback on documents and parent nodes -------------------------------------------------
    def record_feedback(
        self,
        trace_id: str,
        *,
        relevant_ids: Iterable[str] = (),
        irrelevant_ids: Iterable[str] = (),
        id_key: str | None = None,
        **kw: Any,
    ) -> None:
        """Attach feedback to a trace (see :meth:`NudgeState.record_feedback`, which takes the
        other arguments: ``rating``, ``text``).

        An id the store holds is that chunk. Any other id may be a document's (its
        ``ref_doc_id``): it stands for every chunk of that document the store holds; or a parent
        node's (``HierarchicalNodeParser``'s PARENT relationship, what ``AutoMergingRetriever``
        returns): it stands for its chunks that search ``trace_id`` returned. ``id_key``: the
        ids are values of that metadata key instead.
        """
        rel, irr = relevant_ids, irrelevant_ids
        if id_key is None and not isinstance(rel, str | bytes) and not isinstance(irr, str | bytes):
            rel, irr = [str(i) for i in rel], [str(i) for i in irr]
            parents = self._shown_parents(trace_id, list(dict.fromkeys(rel + irr)))
            if parents:
                rel = _expand_parents(rel, parents)
                irr = _expand_parents(irr, parents)
        self._nudge_state.record_feedback(
            trace_id, relevant_ids=rel, irrelevant_ids=irr, id_key=id_key, **kw
        )

    def _shown_parents(self, trace_id: str, ids: list[str]) -> dict[str, list[str]]:
        """Each of ``ids`` that is neither a chunk nor a document but the PARENT of chunks
        search ``trace_id`` returned, with those chunks."""
        state = self._nudge_state
        held = state.known_ids(ids)
        rest = [i for i in ids if i not in held]
        if rest:
            docs = self._backend.documents(rest)
            rest = [i for i in rest if i not in docs]
        if not rest:
            return {}
        shown = state._shown_ids(trace_id)
        parent_of = self._backend.parents(shown)
        found = {p: [c for c in shown if parent_of.get(c) == p] for p in rest}
        return {p: chunks for p, chunks in found.items() if chunks}

    def _children_of(self, ids: list[str], key: str) -> dict[str, list[str]]:
        """The chunk ids each id stands for: a document's (``key`` is :data:`DOCUMENT_KEY`), or
        those whose metadata ``key`` equals it."""
        if key == DOCUMENT_KEY:
            return self._backend.documents(ids)
        from llama_index.core.vector_stores.types import MetadataFilter

        found = {
            i: self._backend.matching(MetadataFilters(filters=[MetadataFilter(key=key, value=i)]))
            for i in dict.fromkeys(ids)
        }
        return {i: chunks for i, chunks in found.items() if chunks}

    # -- what is wrapped -----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The wrapped store's client (a chromadb Collection, QdrantClient, MilvusClient)."""
        return self._inner.client

    @property
    def _store(self) -> BasePydanticVectorStore:
        """The wrapped store, made ready for a call (see ``Backend.refresh``)."""
        self._backend.refresh()
        return self._inner

    @property
    def vector_store(self) -> BasePydanticVectorStore:
        """The wrapped LlamaIndex store."""
        return self._inner

    @property
    def nudge_state(self) -> NudgeState:
        """The core state (adapter, trace log, version log) that the engine works on."""
        return self._nudge_state

    # -- writes --------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Add nodes with embeddings; bad nodes are refused before anything is written."""
        matrix = self._check_nodes(nodes)
        self._before_add(nodes)
        ids = self._store.add(list(nodes), **add_kwargs)
        self._after_add(nodes, matrix)
        return ids

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Async twin of ``add`` (blocking work runs in a thread, off the event loop)."""
        if not self._backend.has_async():
            return await asyncio.to_thread(self.add, nodes, **kwargs)
        matrix = self._check_nodes(nodes)
        await asyncio.to_thread(self._before_add, nodes)
        ids = await self._store.async_add(list(nodes), **kwargs)
        await asyncio.to_thread(self._after_add, nodes, matrix)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete the nodes of document ``ref_doc_id``; their versions are forgotten."""
        candidates = self._before_delete(self._backend.ref_doc_ids(ref_doc_id))
        self._store.delete(ref_doc_id, **delete_kwargs)
        self._after_delete(candidates)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Async twin of ``delete`` (blocking work runs in a thread, off the event loop)."""
        if not self._backend.has_async():
            return await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)
        ids = await asyncio.to_thread(self._backend.ref_doc_ids, ref_doc_id)
        candidates = await asyncio.to_thread(self._before_delete, ids)
        await self._store.adelete(ref_doc_id, **delete_kwargs)
        await asyncio.to_thread(self._after_delete, candidates)
        return None

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes by id and/or metadata filters, as the wrapped store does."""
        candidates = self._before_delete_nodes(node_ids, filters)
        self._store.delete_nodes(node_ids, filters=filters, **delete_kwargs)
        self._after_delete(candidates)

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Async twin of ``delete_nodes`` (blocking work runs in a thread, off the loop)."""
        if not self._backend.has_async():
            return await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)
        candidates = await asyncio.to_thread(self._before_delete_nodes, node_ids, filters)
        await self._store.adelete_nodes(node_ids, filters=filters, **delete_kwargs)
        await asyncio.to_thread(self._after_delete, candidates)
        return None

    def clear(self) -> None:
        """Remove every node from the wrapped store; the version log forgets them all."""
        ids = self._before_delete(self._backend.all_ids())
        self._store.clear()
        self._after_clear(ids)

    async def aclear(self) -> None:
        """Async twin of ``clear`` (blocking work runs in a thread, off the event loop)."""
        if not self._backend.has_async():
            return await asyncio.to_thread(self.clear)
        ids = await asyncio.to_thread(self._backend.all_ids)
        await asyncio.to_thread(self._before_delete, ids)
        await self._store.aclear()
        await asyncio.to_thread(self._after_clear, ids)
        return None

    def persist(self, persist_path: str, fs: Any = None) -> None:
        """Persist the wrapped store where it persists (``SimpleVectorStore``'s JSON file).

        Every later vector write (``apply_vectors``, ``rollback``, the fine-tune engine's
        apply) re-persists to the same path, so the file never lags behind the version log.
        On the local disk the file is replaced atomically (written beside it, fsynced,
        renamed over it): a kill leaves the previous file or the new one, never a cut one.
        On another fsspec filesystem the store writes the path itself, as whole as that
        filesystem makes a closed file (an object store publishes it whole).
        """
        local_fs = fs if fs is not None else getattr(self._inner, "_fs", None)
        persist_atomic(lambda p: self._inner.persist(p, fs=fs), persist_path, fs=local_fs)
        self._persisted_to = (persist_path, fs)

    # -- reads ---------------------------------------------------------------------------------
    def get_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **kwargs: Any,
    ) -> list[BaseNode]:
        """Nodes by id and/or filters, as the wrapped store returns them."""
        return self._store.get_nodes(node_ids, filters, **kwargs)

    async def aget_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **kwargs: Any,
    ) -> list[BaseNode]:
        """Async twin of ``get_nodes``."""
        if self._backend.has_async():
            return await self._store.aget_nodes(node_ids, filters, **kwargs)
        return await asyncio.to_thread(self._store.get_nodes, node_ids, filters, **kwargs)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Query the wrapped store and log the query as a trace."""
        self._nudge_state.check_fresh()
        self._check_query(query)
        return self._traced(query, self._store.query(query, **kwargs))

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Async twin of ``query``."""
        self._nudge_state.check_fresh()
        self._check_query(query)
        if self._backend.has_async():
            result = await self._store.aquery(query, **kwargs)
        else:
            result = await asyncio.to_thread(self._store.query, query, **kwargs)
        return self._traced(query, result)  # in the caller's context: sets its last_trace_id

    # -- agents ---------------------------------------------------------------------------------
    def as_retriever_tool(
        self,
        index_or_retriever: Any,
        name: str = "search_documents",
        description: str = "Search the knowledge base; cite the chunks you use as [id].",
        *,
        k: int | None = None,
    ) -> Any:
        """A LlamaIndex ``FunctionTool`` for agents: it shows each node as ``[node_id] text`` and
        its ``raw_output`` is ``{"trace_id", "ids"}`` for :meth:`record_citations`.

        ``index_or_retriever``: an index over this store, or any retriever that searches it
        (a vector retriever, a ``QueryFusionRetriever``).
        """
        from nudge_rag.llama_index.tools import retriever_tool

        return retriever_tool(self, index_or_retriever, name, description, k=k)

    # -- internals -----------------------------------------------------------------------------
    def _store_dim(self) -> int | None:
        if self._dim is None:
            self._dim = self._backend.dim()
        return self._dim

    def _check_nodes(self, nodes: Sequence[BaseNode]) -> np.ndarray | None:
        """Refuse nodes the store must not take; return their embeddings as a matrix."""
        if not nodes:
            return None
        missing = [n.node_id for n in nodes if n.embedding is None]
        if missing:
            msg = (
                f"nodes: {len(missing)} of {len(nodes)} node(s) have no embedding "
                f"(first: {missing[:5]!r}), expected every node embedded; embed them first "
                "(VectorStoreIndex does so with its embed_model) or set node.embedding."
            )
            raise BadInputError(msg)
        dims = {len(n.embedding) for n in nodes}  # type: ignore[arg-type]
        if len(dims) > 1:
            msg = (
                f"nodes: embeddings have mixed dimensions {sorted(dims)}, expected one; embed "
                "all nodes with the same model."
            )
            raise BadInputError(msg)
        (found,) = dims
        want = self._store_dim()
        if want is not None and found != want:
            msg = (
                f"nodes: embeddings have {found} dimensions, the store holds {want}-d vectors; "
                "embed with the store's model or use a new collection."
            )
            raise BadInputError(msg)
        return check_vectors(
            [n.embedding for n in nodes],
            what="nodes",
            dim=want,
            dtype=np.float64,
            row_names=[n.node_id for n in nodes],
        )

    def _before_add(self, nodes: Sequence[BaseNode]) -> None:
        if nodes:
            self._nudge_state.on_upsert([n.node_id for n in nodes])

    def _after_add(self, nodes: Sequence[BaseNode], matrix: np.ndarray | None) -> None:
        if matrix is None:
            return
        if self._dim is None:
            self._dim = matrix.shape[1]
        self._nudge_state.on_upsert([n.node_id for n in nodes], matrix)

    def _before_delete(self, ids: Sequence[str]) -> list[str]:
        """Forget the nudges of ``ids``, which the coming delete removes for sure (unless the
        backend forgets after the delete: ``_after_delete`` then forgets those gone)."""
        ids = list(ids)
        if ids and self._backend.forget_before_delete:
            self._nudge_state.on_delete(ids)
        return ids

    def _before_delete_nodes(
        self, node_ids: Sequence[str] | None, filters: MetadataFilters | None
    ) -> list[str]:
        """Forget the ids that every store removes; return a superset of what it may remove.

        Stores differ when both ``node_ids`` and ``filters`` are given (Chroma intersects,
        Qdrant with an OR condition unions): the intersection is forgotten now, and
        ``_after_delete`` forgets whatever else of the superset is gone. Named ids the store
        does not hold are never forgotten (they may be another collection's versions).
        """
        has_filters = filters is not None and bool(filters.filters)
        matched = self._backend.matching(filters) if has_filters else None  # type: ignore[arg-type]
        if node_ids:
            held = self._backend.existing(node_ids)
            keep = set(matched) if matched is not None else held
            self._before_delete([i for i in node_ids if i in keep])
            return list(dict.fromkeys([*(i for i in node_ids if i in held), *(matched or [])]))
        if matched is not None:
            return self._before_delete(matched)
        return self._backend.all_ids()

    def _after_delete(self, candidates: Sequence[str]) -> None:
        """Forget the ids of ``candidates`` that the delete removed (the others are kept)."""
        if not candidates:
            return
        still = self._backend.existing(candidates)
        gone = [i for i in candidates if i not in still]
        if gone:
            self._nudge_state.on_delete(gone)

    def _after_clear(self, ids: Sequence[str]) -> None:
        if not self._backend.forget_before_delete:
            self._after_delete(ids)
        self._dim = None  # the next add may bring another dimension

    def _check_query(self, query: VectorStoreQuery) -> None:
        check_k(query.similarity_top_k, what="query.similarity_top_k")
        emb = query.query_embedding
        if emb is None:
            return
        want = self._store_dim()
        if want is not None and len(emb) != want:
            msg = (
                f"query.query_embedding: has {len(emb)} dimensions, the store holds {want}-d "
                "vectors; embed the query with the model that embedded the documents."
            )
            raise BadInputError(msg)

    def _traced(
        self, query: VectorStoreQuery, result: VectorStoreQueryResult
    ) -> VectorStoreQueryResult:
        trace_id = None
        ids = result.ids
        if query.query_embedding is not None and ids is not None:
            scores = result.similarities
            trace_id = self._nudge_state.record_search(
                query.query_str,
                query.query_embedding,
                query.similarity_top_k,
                _query_filter(query),
                list(ids),
                list(scores) if scores is not None else [float("nan")] * len(ids),
            )
        self._nudge_state.last_trace.set(trace_id)
        key = self._trace_metadata_key
        if trace_id is not None and key is not None:  # opted in: see TRACE_ID_KEY
            for node in result.nodes or ():
                node.metadata[key] = trace_id
                hidden = (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys)
                for excluded in hidden:
                    if key not in excluded:
                        excluded.append(key)
        return result

    def _repersist(self) -> None:
        self._backend.refresh()  # the store object the app holds sees the write too
        if self._persisted_to is not None:
            self.persist(*self._persisted_to)  # atomically, inside the move (before it commits)


def _expand_parents(ids: list[str], parents: dict[str, list[str]]) -> list[str]:
    """``ids`` with each parent node id replaced by its chunk ids (order kept, no repeats)."""
    return list(dict.fromkeys(c for i in ids for c in parents.get(i, [i])))


def _metric(metric: Metric | str) -> Metric:
    try:
        return Metric(metric.lower() if isinstance(metric, str) else metric)
    except ValueError:
        msg = (
            f"metric: found {metric!r}, expected one of {[m.value for m in Metric]}; "
            "pass 'cosine' unless you fit NUDGE-M (then 'ip')."
        )
        raise BadInputError(msg) from None


def _query_filter(query: VectorStoreQuery) -> dict | None:
    out: dict[str, Any] = {}
    if query.filters is not None:
        out["filters"] = query.filters.model_dump(mode="json", exclude_none=True)
    if query.node_ids:
        out["node_ids"] = list(query.node_ids)
    if query.doc_ids:
        out["doc_ids"] = list(query.doc_ids)
    if query.mode != "default":
        out["mode"] = str(query.mode.value)
    return out or None


def _query_embedder(embed_model: Any) -> Callable[[Sequence[str]], np.ndarray] | None:
    if embed_model is None:
        return None
    get_query = getattr(embed_model, "get_query_embedding", None)
    if callable(get_query):

        def embed(texts: Sequence[str]) -> np.ndarray:
            return np.asarray([get_query(t) for t in texts], dtype=np.float32)

        return embed
    if callable(embed_model):
        return embed_model
    msg = (
        f"embed_model: found {type(embed_model).__name__}, expected a LlamaIndex embedding "
        "model or a callable texts -> (n, d) matrix."
    )
    raise BadInputError(msg)
