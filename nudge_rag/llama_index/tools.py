"""A LlamaIndex tool for agents whose output names the search's trace and the chunks it showed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import MetadataMode, NodeWithScore
from llama_index.core.tools import FunctionTool, ToolOutput

from nudge_rag.errors import BadInputError
from nudge_rag.state.citations import format_chunks

if TYPE_CHECKING:
    from nudge_rag.llama_index.base import NudgedVectorStore

__all__ = ["format_nodes", "retriever_tool"]


def format_nodes(hits: Sequence[NodeWithScore]) -> str:
    """Each node as ``[node_id] text`` (the text the LLM sees), one block each."""
    ids = [h.node.node_id for h in hits]
    return format_chunks(ids, [h.node.get_content(MetadataMode.LLM) for h in hits])


def retriever_tool(
    store: NudgedVectorStore,
    index_or_retriever: Any,
    name: str,
    description: str,
    *,
    k: int | None = None,
) -> FunctionTool:
    """A ``FunctionTool`` that searches ``index_or_retriever`` and reports what it showed.

    ``index_or_retriever`` is an index over ``store`` (searched through
    ``index.as_retriever(similarity_top_k=k)``) or any retriever whose searches reach ``store``
    (a vector retriever, a ``QueryFusionRetriever`` with BM25, ...). The tool's output content
    lists the retrieved nodes as ``[node_id] text`` for the model to read and cite; its
    ``raw_output`` is ``{"trace_id": ..., "ids": [...]}``: the trace of the call's latest search
    of ``store`` (None when tracing is off or no search reached it) and the node ids shown, for
    ``store.record_citations(raw_output["trace_id"], answer)``.

    Example:
        .. code-block:: python

            tool = retriever_tool(store, index, "search_docs", "Search the docs; cite [id].", k=5)
            out = tool.call(query="how do refunds work?")
            out.content                 # "[node-7] Refunds are issued ..."
            out.raw_output["trace_id"]  # -> store.record_citations(trace_id, answer)
    """
    retriever = _retriever(store, index_or_retriever, k)

    def output(query: str, hits: Sequence[NodeWithScore], trace_id: str | None) -> ToolOutput:
        return ToolOutput(
            content=format_nodes(hits),
            tool_name=name,
            raw_input={"query": query},
            raw_output={"trace_id": trace_id, "ids": [h.node.node_id for h in hits]},
        )

    def search(query: str) -> ToolOutput:
        """Search the knowledge base for ``query``."""
        with store.trace_scope() as scope:  # also sees searches in spawned tasks and threads
            hits = retriever.retrieve(query)
        return output(query, hits, scope.last)

    async def asearch(query: str) -> ToolOutput:
        """Search the knowledge base for ``query``."""
        with store.trace_scope() as scope:
            hits = await retriever.aretrieve(query)
        return output(query, hits, scope.last)

    def passthrough(result: Any) -> Any:  # the function's ToolOutput is the tool's output
        return result

    async def apassthrough(result: Any) -> Any:
        return result

    return FunctionTool.from_defaults(
        fn=search,
        async_fn=asearch,
        name=name,
        description=description,
        callback=passthrough,
        async_callback=apassthrough,
    )


def _retriever(store: Any, index_or_retriever: Any, k: int | None) -> BaseRetriever:
    from nudge_rag.llama_index.base import NudgedVectorStore

    if not isinstance(store, NudgedVectorStore):
        msg = (
            f"store: found {type(store).__name__}, expected a nudge_rag.llama_index."
            "NudgedVectorStore; wrap the vector store first."
        )
        raise BadInputError(msg)
    if isinstance(index_or_retriever, BaseRetriever):
        if k is not None:
            msg = (
                f"k: found {k!r} with a retriever, which brings its own top k; pass k=None, or "
                "pass the index instead of its retriever."
            )
            raise BadInputError(msg)
        return index_or_retriever
    if hasattr(index_or_retriever, "as_retriever") and hasattr(index_or_retriever, "vector_store"):
        if index_or_retriever.vector_store is not store:
            msg = (
                "index_or_retriever: the index searches another vector store, not `store`; "
                "build the index over the NudgedVectorStore (VectorStoreIndex.from_vector_store"
                "(store)) so its searches are traced."
            )
            raise BadInputError(msg)
        kwargs = {} if k is None else {"similarity_top_k": k}
        return index_or_retriever.as_retriever(**kwargs)
    msg = (
        f"index_or_retriever: found {type(index_or_retriever).__name__}, expected a "
        "VectorStoreIndex over `store` or a LlamaIndex retriever."
    )
    raise BadInputError(msg)
