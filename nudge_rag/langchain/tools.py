"""A retriever tool for agents whose artifact carries the search's trace id and chunk ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from nudge_rag.state.citations import format_chunks

if TYPE_CHECKING:
    from nudge_rag.langchain.vectorstores import NudgedVectorStore

__all__ = ["retriever_tool"]


class _SearchInput(BaseModel):
    query: str = Field(description="What to search for.")


def retriever_tool(
    store: NudgedVectorStore,
    name: str,
    description: str,
    *,
    k: int = 4,
    search_kwargs: dict[str, Any] | None = None,
) -> BaseTool:
    """A ``content_and_artifact`` tool over ``store.similarity_search``.

    The content lists the chunks as ``[id] text``; the artifact is ``{"trace_id": ..., "ids":
    [...]}`` (trace_id None when tracing is off). It travels with the ``ToolMessage``, so it
    reaches the app even when the agent runs the tool in another thread.
    """
    extra = dict(search_kwargs or {})
    k = extra.pop("k", k)  # as_retriever's habit: k inside search_kwargs

    def shown(docs: list[Any], trace_id: str | None) -> tuple[str, dict[str, Any]]:
        ids = [d.id or "" for d in docs]
        content = format_chunks(ids, [d.page_content for d in docs])
        return content, {"trace_id": trace_id, "ids": ids}

    def run(query: str) -> tuple[str, dict[str, Any]]:
        return shown(*store.search_with_trace(query, k=k, **extra))

    async def arun(query: str) -> tuple[str, dict[str, Any]]:
        return shown(*await store.asearch_with_trace(query, k=k, **extra))

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=name,
        description=description,
        args_schema=_SearchInput,
        response_format="content_and_artifact",
    )
