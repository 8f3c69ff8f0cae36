"""Today's agent APIs end to end on SciFact: an agent searches with the store's retriever tool, its
answers cite chunks, the citations become feedback and the fine-tune from them is proven.

The chat models are scripted (the frameworks' fake models): they call the tool with the
question, then cite the shown chunks that SciFact's train qrels mark relevant (an oracle
reader)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from nudge_rag import NudgeFinetuneEngine

pytestmark = pytest.mark.integration

CITE = re.compile(r"^\[([^\]]+)\]", re.MULTILINE)


@cache
def _scifact() -> Any:
    from nudge_rag.eval.data import load_beir, shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "scifact").is_dir():
        return None
    return load_beir(root / "scifact")


def _data() -> tuple[Any, dict[str, set[str]], dict[str, Any]]:
    """SciFact, the gold ids of each train query text, and every text's vector."""
    ds = _scifact()
    if ds is None:
        pytest.skip("../shared/data/scifact not found (set NUDGE_RAG_DATA to the data folder)")
    row = {d: n for n, d in enumerate(ds.corpus_ids)}
    qrow = {q: n for n, q in enumerate(ds.query_ids)}
    gold: dict[str, set[str]] = {}
    table = {ds.corpus_text[d]: ds.corpus_embeddings[row[d]] for d in ds.corpus_ids}
    for q in sorted(ds.qrels["train"]):
        if q in ds.query_text and ds.query_text[q] not in gold:
            gold[ds.query_text[q]] = {d for d, g in ds.qrels["train"][q].items() if g > 0}
            table[ds.query_text[q]] = ds.query_embeddings[qrow[q]]
    return ds, gold, table


def _cite(question: str, shown: str, gold: dict[str, set[str]]) -> str:
    """The oracle's answer: the shown chunks that are gold, cited as [id]."""
    ids = [i for i in CITE.findall(shown) if i in gold[question]]
    return "Answer. " + " ".join(f"[{i}]" for i in ids) if ids else "No answer found."


# CI asks the first 120 train questions (citations become model-made feedback that the engine
# labels from); the full 807, whose fine-tune must prove its gain, run with -m slow.
QUESTIONS = [pytest.param(120, id="120"), pytest.param(None, id="all", marks=pytest.mark.slow)]


def _asked(gold: dict[str, set[str]], n: int | None) -> list[str]:
    return list(gold)[:n] if n else list(gold)


def _check_fine_tune(state: Any, cited: int, full: bool) -> float:
    """The citations are model-made feedback; the engine labels from them; with every question
    the held-out gain is proven. Returns the held-out NDCG@10 gain."""
    assert sum(f.provenance == "model" for f in state.feedback()) == cited
    report = NudgeFinetuneEngine(state, llm=None, seed=0, progress=False).finetune()
    assert report.labels["cited"] == cited, report.labels
    if full:
        assert report.proven and report.ndcg.gain > 0.02, report
    return float(report.ndcg.gain)


@pytest.mark.parametrize("questions", QUESTIONS)
def test_langchain_create_agent_citations_fine_tune(tmp_path: Path, questions: int | None):
    pytest.importorskip("langchain.agents", reason="needs langchain>=1.0 (create_agent)")
    from langchain.agents import create_agent
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.langchain.embeddings import LookupEmbeddings

    ds, gold, table = _data()

    class OracleChat(BaseChatModel):
        """Calls ``search_docs`` with the question, then cites the gold chunks it was shown."""

        @property
        def _llm_type(self) -> str:
            return "oracle"

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def _generate(self, messages: list, stop: Any = None, **kw: Any) -> ChatResult:
            question = next(m.content for m in messages if isinstance(m, HumanMessage))
            tools = [m for m in messages if isinstance(m, ToolMessage)]
            if tools:
                msg = AIMessage(content=_cite(question, str(tools[-1].content), gold))
            else:
                call = {"name": "search_docs", "args": {"query": question}, "id": "c1"}
                msg = AIMessage(content="", tool_calls=[call])
            return ChatResult(generations=[ChatGeneration(message=msg)])

    store = NudgedVectorStore(
        InMemoryVectorStore(LookupEmbeddings(table)), state_dir=tmp_path / "state"
    )
    try:
        store.add_texts([ds.corpus_text[d] for d in ds.corpus_ids], ids=list(ds.corpus_ids))
        tool = store.as_retriever_tool("search_docs", "Search the papers.", k=10)
        agent = create_agent(OracleChat(), [tool], system_prompt="Cite chunks as [id].")
        cited = 0
        asked = _asked(gold, questions)
        for question in asked:
            out = agent.invoke({"messages": [HumanMessage(question)]})
            (tool_msg,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
            result = store.record_citations(tool_msg.artifact["trace_id"], out["messages"][-1])
            cited += bool(result.relevant_ids)
        assert len(store.traces()) == len(asked) and cited > len(asked) // 2
        gain = _check_fine_tune(store.nudge_state, cited, questions is None)
        print(f"create_agent: {cited} of {len(asked)} answers cited; NDCG@10 gain {gain:+.4f}")
    finally:
        store.close()


@pytest.mark.parametrize("questions", QUESTIONS)
def test_llamaindex_function_agent_citations_fine_tune(tmp_path: Path, questions: int | None):
    import asyncio

    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
    from llama_index.core.base.llms.types import ToolCallBlock
    from llama_index.core.embeddings import BaseEmbedding
    from llama_index.core.llms import ChatMessage, MessageRole
    from llama_index.core.llms.mock import MockFunctionCallingLLM
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    from nudge_rag.llama_index import NudgedVectorStore

    ds, gold, table = _data()

    class Lookup(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return table[query].tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return table[text].tolist()

    def script(messages: list, **kwargs: Any) -> ChatMessage:
        question = next(m.content for m in messages if m.role == MessageRole.USER)
        shown = [m.content for m in messages if m.role == MessageRole.TOOL]
        if not shown:
            call = ToolCallBlock(
                tool_call_id="c1", tool_name="search_docs", tool_kwargs={"query": question}
            )
            return ChatMessage(role=MessageRole.ASSISTANT, blocks=[call])
        return ChatMessage(role=MessageRole.ASSISTANT, content=_cite(question, shown[-1], gold))

    store = NudgedVectorStore(SimpleVectorStore(), state_dir=tmp_path / "state")
    try:
        nodes = [
            TextNode(id_=d, text=ds.corpus_text[d], embedding=table[ds.corpus_text[d]].tolist())
            for d in ds.corpus_ids
        ]
        index = VectorStoreIndex(
            nodes,
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=Lookup(),
        )
        tool = store.as_retriever_tool(index, "search_docs", "Search the papers.", k=10)
        agent = FunctionAgent(tools=[tool], llm=MockFunctionCallingLLM(response_generator=script))

        async def ask(question: str) -> tuple[str, str]:
            handler = agent.run(user_msg=question)
            results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
            answer = await handler
            return results[-1].tool_output.raw_output["trace_id"], str(answer.response.content)

        asked = _asked(gold, questions)

        async def ask_all() -> int:
            cited = 0
            for question in asked:
                trace_id, answer = await ask(question)
                cited += bool(store.record_citations(trace_id, answer).relevant_ids)
            return cited

        cited = asyncio.run(ask_all())
        assert len(store.traces()) == len(asked) and cited > len(asked) // 2
        gain = _check_fine_tune(store.nudge_state, cited, questions is None)
        print(f"FunctionAgent: {cited} of {len(asked)} answers cited; NDCG@10 gain {gain:+.4f}")
    finally:
        store.close()
