"""The LLM protocol: adapters, retries, Retry-After, timeouts, budget, against a real server."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from nudge_rag.errors import InvalidAnswerError, NudgeError
from nudge_rag.labeling.llm import (
    CallBudget,
    LLMReply,
    OpenAIChat,
    RetryPolicy,
    Status,
    as_llm,
    ask,
    classify_error,
    extract_json,
    parse_retry_after,
)
from nudge_rag.langchain.llm import LangChainChat
from nudge_rag.llama_index.llm import LlamaIndexChat
from nudge_rag.testing import Faults, OpenAIStub

FAST = RetryPolicy(backoff=0.01, max_backoff=0.05)
MESSAGES = [{"role": "user", "content": "say ok"}]


def ok_judge(body: dict) -> dict:
    return {"ok": True}


def want_ok(answer: object) -> bool:
    if answer != {"ok": True}:
        raise InvalidAnswerError(f"expected {{'ok': true}}, found {answer!r}")
    return True


@pytest.fixture
def stub():
    with OpenAIStub(ok_judge) as s:
        yield s


# -- picking an adapter ----------------------------------------------------------------------


def test_as_llm_passes_none_and_protocol_objects_through():
    class Echo:
        name = "echo"

        def chat(self, messages, *, schema=None):
            return LLMReply(text='{"ok": true}')

    echo = Echo()
    assert as_llm(None) is None
    assert as_llm(echo) is echo


def test_as_llm_openai_needs_a_model_name(stub):
    with pytest.raises(NudgeError, match="llm_model: an openai client needs a model name"):
        as_llm(stub.client())
    assert isinstance(as_llm(stub.client(), model="gpt-x"), OpenAIChat)


def test_as_llm_rejects_unknown_objects_naming_the_fix():
    with pytest.raises(NudgeError, match=r"llm: found builtins\.str, expected an openai\.OpenAI"):
        as_llm("gpt-4o")


def test_as_llm_wraps_langchain_and_llama_index_models():
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from llama_index.core.llms import MockLLM

    assert isinstance(as_llm(FakeListChatModel(responses=["x"])), LangChainChat)
    assert isinstance(as_llm(MockLLM()), LlamaIndexChat)


def test_labeling_imports_no_framework():
    """DESIGN.md: labeling/ imports no framework, not even lazily; the faces hold the LangChain
    and LlamaIndex adapters, and as_llm reaches them through the face modules."""
    import ast
    from pathlib import Path

    import nudge_rag.labeling

    found = []
    for path in sorted(Path(nudge_rag.labeling.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert found == []


FRAMEWORKS = {"langchain", "langchain_core", "langchain_community", "llama_index"}


# -- the openai adapter against the stub -------------------------------------------------------


def test_openai_sends_a_json_schema_response_format(stub):
    llm = as_llm(stub.client(), model="m")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    out = ask(llm, MESSAGES, want_ok, schema=schema, policy=FAST)
    assert out.status is Status.OK and out.calls == 1
    sent = stub.chat_requests[0].body
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == schema
    assert out.prompt_tokens > 0


def test_openai_falls_back_to_parsing_when_response_format_is_rejected():
    with OpenAIStub(ok_judge, faults=Faults(reject_params=("response_format",))) as stub:
        llm = as_llm(stub.client(), model="m")
        first = ask(llm, MESSAGES, want_ok, schema={"type": "object"}, policy=FAST)
        second = ask(llm, MESSAGES, want_ok, schema={"type": "object"}, policy=FAST)
        assert first.status is Status.OK and first.calls == 2  # the 400, then without the format
        assert second.status is Status.OK and second.calls == 1  # remembered
        assert [r.status for r in stub.chat_requests] == [400, 200, 200]
        assert "response_format" not in stub.chat_requests[-1].body


def test_429_honours_retry_after(stub):
    stub.faults.retry_after = 1.0
    stub.queue("429")
    llm = as_llm(stub.client(), model="m")
    out = ask(llm, MESSAGES, want_ok, policy=FAST)
    assert out.status is Status.OK and out.calls == 2 and out.retries == 1
    first, second = stub.chat_requests
    assert first.status == 429 and second.status == 200
    assert second.time - first.time >= 0.95  # waited as told, not the 10 ms backoff


def test_5xx_and_timeouts_are_retried_with_backoff(stub):
    stub.faults.slow_seconds = 3.0
    stub.queue("500", "503", "slow")
    llm = OpenAIChat(stub.client(), "m", timeout=1.0)  # generous for a loaded machine
    out = ask(llm, MESSAGES, want_ok, policy=FAST)
    assert out.status is Status.OK
    assert out.calls == 4 and out.retries == 3
    assert [r.status for r in stub.chat_requests][:2] == [500, 503]


def test_transient_errors_give_up_after_max_retries(stub):
    stub.queue(*["500"] * 10)
    llm = as_llm(stub.client(), model="m")
    out = ask(llm, MESSAGES, want_ok, policy=RetryPolicy(max_retries=2, backoff=0.01))
    assert out.status is Status.FAILED and out.calls == 3
    assert "HTTP 500" in (out.error or "")


def test_a_model_without_temperature_is_asked_again_without_it():
    with OpenAIStub(ok_judge, faults=Faults(reject_params=("temperature",))) as stub:
        llm = as_llm(stub.client(), model="m")
        out = ask(llm, MESSAGES, want_ok, schema={"type": "object"}, policy=FAST)
        assert out.status is Status.OK and out.calls == 2
        last = stub.chat_requests[-1].body
        assert "temperature" not in last and "response_format" in last  # only what it named


def test_permanent_errors_are_not_retried(stub):
    stub.queue("400")  # nothing left to drop (no schema, no temperature complaint)
    llm = OpenAIChat(stub.client(), "m", temperature=None)
    out = ask(llm, MESSAGES, want_ok, policy=FAST)
    assert out.status is Status.FAILED and out.calls == 1
    assert "HTTP 400" in (out.error or "")


def test_malformed_answers_are_retried_then_skipped_never_guessed(stub):
    stub.faults.malformed = 1.0
    llm = as_llm(stub.client(), model="m")
    out = ask(llm, MESSAGES, want_ok, policy=RetryPolicy(max_invalid=2, backoff=0.01))
    assert out.status is Status.INVALID and out.value is None
    assert out.calls == 3 and out.invalid_answers == 3


def test_one_malformed_answer_then_a_good_one(stub):
    stub.queue("malformed")
    out = ask(as_llm(stub.client(), model="m"), MESSAGES, want_ok, policy=FAST)
    assert out.status is Status.OK and out.invalid_answers == 1 and out.calls == 2


def test_the_budget_is_a_hard_cap_on_requests(stub):
    stub.queue(*["500"] * 10)
    budget = CallBudget(3)
    llm = as_llm(stub.client(), model="m")
    out = ask(llm, MESSAGES, want_ok, policy=FAST, budget=budget)
    assert out.status is Status.BUDGET
    assert len(stub.chat_requests) == 3 and budget.exhausted
    again = ask(llm, MESSAGES, want_ok, policy=FAST, budget=budget)
    assert again.status is Status.BUDGET and again.calls == 0
    assert len(stub.chat_requests) == 3


def test_negative_budget_is_rejected():
    with pytest.raises(NudgeError, match="max_calls: found -1"):
        CallBudget(-1)


# -- the framework adapters with the frameworks' own fake models -------------------------------


def test_langchain_fake_chat_model_round_trip():
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    model = FakeListChatModel(responses=["not json at all", '```json\n{"ok": true}\n```'])
    out = ask(as_llm(model), MESSAGES, want_ok, policy=FAST)
    assert out.status is Status.OK and out.invalid_answers == 1 and out.calls == 2


def test_llama_index_mock_llm_round_trip():
    from llama_index.core.llms import MockLLM

    seen: list[str] = []

    def answer(messages) -> str:  # MockLLM echoes the prompt this hook builds
        seen.extend(str(m.content) for m in messages)
        return json.dumps({"ok": True})

    out = ask(as_llm(MockLLM(messages_to_prompt=answer)), MESSAGES, want_ok, policy=FAST)
    assert out.status is Status.OK and seen == ["say ok"]


def test_llama_index_echo_is_invalid_and_skipped():
    from llama_index.core.llms import MockLLM

    out = ask(as_llm(MockLLM()), MESSAGES, want_ok, policy=RetryPolicy(max_invalid=1))
    assert out.status is Status.INVALID and out.calls == 2


def test_framework_errors_are_classified():
    class RateLimitError(Exception):
        pass

    class Upstream(Exception):
        status_code = 503

    class Unauthorized(Exception):
        status_code = 401

    assert classify_error(RateLimitError("slow down")).transient
    assert classify_error(Upstream("x")).transient
    assert classify_error(TimeoutError()).transient
    assert not classify_error(Unauthorized("bad key")).transient
    assert not classify_error(KeyError("x")).transient


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ['{"a": 1}', '```json\n{"a": 1}\n```', 'Sure! Here it is: {"a": 1} Hope it helps.'],
)
def test_extract_json_tolerates_fences_and_prose(text):
    assert extract_json(text) == {"a": 1}


def test_extract_json_rejects_non_json():
    with pytest.raises(InvalidAnswerError, match="answer is not JSON"):
        extract_json('{"a": ')


def test_parse_retry_after_forms():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "1"}) == 0.25
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 10))
    assert 8.0 <= parse_retry_after({"Retry-After": date}, now=now) <= 10.5
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after(None) is None


# -- any LangChain runnable that returns a message (issue 10.7) ----------------------------------

JSON_OK = '{"ok": true}'


def _fake(responses=(JSON_OK,)):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    return FakeListChatModel(responses=list(responses))


def _runnables():
    from langchain_core.runnables import RunnableLambda

    def broken(_):
        raise ConnectionError("primary down")

    return {
        "with_retry": _fake().with_retry(stop_after_attempt=2),
        "with_fallbacks": RunnableLambda(broken).with_fallbacks([_fake()]),
        "bind": _fake().bind(stop=["\n\n"]),
        "with_config": _fake().with_config(tags=["judge"]),
        "lambda_then_model": RunnableLambda(lambda messages: messages) | _fake(),
        "model_then_parser": _fake() | RunnableLambda(lambda message: message.content),
    }


@pytest.mark.parametrize("kind", list(_runnables()))
def test_langchain_runnables_that_return_a_message_are_judges(kind):
    """chat.with_retry(), .with_fallbacks(), .bind(), chains: on main, as_llm raised
    "llm: found RunnableRetry, expected …"."""
    llm = as_llm(_runnables()[kind])
    assert isinstance(llm, LangChainChat)
    out = ask(llm, MESSAGES, want_ok, schema={"type": "object"}, policy=FAST)
    assert out.status is Status.OK and out.calls == 1


def test_runnable_names_follow_the_model_inside():
    """The name is part of the cache key: a model wrapped in retries shares its answers."""
    assert as_llm(_fake().with_retry()).name == as_llm(_fake()).name == as_llm(_fake().bind()).name
    assert "FakeListChatModel" in as_llm(_fake()).name


def _tool_model_class():
    """LangChain's GenericFakeChatModel with tool calling, so ``with_structured_output`` works:
    it answers each request with a tool call whose arguments ``answer(messages)`` builds, and
    records the keyword arguments every call received."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.utils.function_calling import convert_to_openai_tool

    class ToolFakeChatModel(GenericFakeChatModel):
        answer: Any = None
        seen: list = []  # noqa: RUF012 (a pydantic field, one list per instance)

        def bind_tools(self, tools, *, tool_choice=None, **kwargs):
            return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            self.seen.append({"stop": stop, **kwargs})
            if not kwargs.get("tools"):
                return ChatResult(generations=[ChatGeneration(message=AIMessage(content="x"))])
            name = kwargs["tools"][0]["function"]["name"]
            call = {"name": name, "args": self.answer(messages), "id": "call-1"}
            msg = AIMessage(
                content="",
                tool_calls=[call],
                usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
            )
            return ChatResult(generations=[ChatGeneration(message=msg)])

    return ToolFakeChatModel


def _tool_model(answer):
    return _tool_model_class()(messages=iter([]), answer=answer, seen=[])


@pytest.mark.parametrize("wrap", ["none", "with_retry", "bind", "with_fallbacks"])
def test_langchain_structured_output_is_used_through_the_wrappers(wrap):
    """With a schema, the model's own with_structured_output runs (the model gets the tool),
    under the same retry / fallbacks / bound arguments."""
    model = _tool_model(lambda messages: {"ok": True})
    runnable = {
        "none": model,
        "with_retry": model.with_retry(stop_after_attempt=2),
        "bind": model.bind(stop=["END"]),
        "with_fallbacks": model.with_fallbacks([_tool_model(lambda m: {"ok": True})]),
    }[wrap]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    out = ask(as_llm(runnable), MESSAGES, want_ok, schema=schema, policy=FAST)
    assert out.status is Status.OK and out.calls == 1
    assert (
        model.seen[-1]["tools"][0]["function"]["parameters"]["properties"] == schema["properties"]
    )
    assert out.prompt_tokens == 7 and out.completion_tokens == 3
    if wrap == "bind":
        assert model.seen[-1]["stop"] == ["END"]  # the bound arguments still reach the model


def test_langchain_without_tool_calling_falls_back_to_the_text():
    model = _fake(['```json\n{"ok": true}\n```'])
    out = ask(as_llm(model.with_retry()), MESSAGES, want_ok, schema={"type": "object"})
    assert out.status is Status.OK


def test_a_framework_parser_rejection_is_an_invalid_answer_asked_again():
    """A tool call whose arguments fail the framework's parser is an invalid answer, not a
    failed request: asked again, then given up, never raised."""
    model = _tool_model(lambda messages: {"not": "ok"})
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    out = ask(as_llm(model), MESSAGES, want_ok, schema=schema, policy=RetryPolicy(max_invalid=1))
    assert out.status is Status.INVALID and out.calls == 2 and out.invalid_answers == 2


def test_llama_index_function_calling_llm_uses_structured_predict():
    """LlamaIndex's own structured output: a function-calling LLM is asked through a tool
    built from the schema; the chunk text (with braces) reaches it intact."""
    from llama_index.core.base.llms.types import ToolCallBlock
    from llama_index.core.llms import ChatMessage, MessageRole
    from llama_index.core.llms.mock import MockFunctionCallingLLM

    from nudge_rag.labeling.answers import (
        Candidate,
        judge_messages,
        judge_schema,
        parse_request,
        validate_judgments,
    )

    seen: list[str] = []

    def respond(messages, **kw):
        tools = kw.get("tools") or []
        seen.append(",".join(t.metadata.name for t in tools))
        req = parse_request([{"role": "user", "content": str(messages[-1].content)}])
        args = {"judgments": [{"id": c["id"], "grade": 2} for c in req["candidates"]]}
        block = ToolCallBlock(tool_call_id="c1", tool_name=tools[0].metadata.name, tool_kwargs=args)
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=[block])

    cands = [Candidate("a", 'braces {"x": 1} and {y}'), Candidate("b", "plain")]
    out = ask(
        as_llm(MockFunctionCallingLLM(response_generator=respond)),
        judge_messages("why?", cands),
        lambda a: validate_judgments(a, ["a", "b"]),
        schema=judge_schema(["a", "b"]),
        policy=FAST,
    )
    assert out.status is Status.OK and out.value == {"a": 2, "b": 2}
    assert seen == ["Answer"]


# -- a LangChain chat model over HTTP: the local OpenAI-compatible stub ------------------------


def _stub_chat_model(stub):
    """A minimal LangChain chat model that calls the stub with the openai client (what
    langchain-openai's ChatOpenAI does), so the wrappers run over a real HTTP server."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    client = stub.client()
    roles = {"system": "system", "human": "user", "ai": "assistant"}

    class StubChat(BaseChatModel):
        model_name: str = "stub-judge"

        @property
        def _llm_type(self) -> str:
            return "stub"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            resp = client.chat.completions.create(
                model=self.model_name,
                messages=[{"role": roles[m.type], "content": m.content} for m in messages],
            )
            text = resp.choices[0].message.content
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    return StubChat()


def test_langchain_wrappers_over_the_http_stub(stub):
    """chat.with_retry() absorbs a 500 by itself; a primary that fails over to a fallback
    answers; both judge through the real local server."""
    chat = _stub_chat_model(stub)
    stub.queue("500")
    out = ask(as_llm(chat.with_retry(stop_after_attempt=2)), MESSAGES, want_ok, policy=FAST)
    assert out.status is Status.OK and out.calls == 1  # the runnable retried on its own
    assert [r.status for r in stub.chat_requests] == [500, 200]
    stub.queue("400")
    fallback = chat.with_fallbacks([_stub_chat_model(stub)])
    out = ask(as_llm(fallback), MESSAGES, want_ok, policy=FAST)
    assert out.status is Status.OK
    assert [r.status for r in stub.chat_requests][-2:] == [400, 200]


# -- hostile answers (issue 11.7) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"a": ' * 50_000,
        "[" * 100_000 + "]" * 100_000,  # well-formed, but deeper than the parser goes
        "\ud800",
        "x" * 2_000_000,
    ],
)
def test_extract_json_turns_every_parser_failure_into_an_invalid_answer(text):
    """On main, deep nesting raised RecursionError straight out of the parser."""
    with pytest.raises(InvalidAnswerError):
        extract_json(text)


def test_a_deeply_nested_answer_is_retried_then_skipped_never_raised(stub):
    from nudge_rag.testing import ScriptedJudge

    judge = ScriptedJudge(["[" * 100_000, "[" * 100_000, JSON_OK])
    paid: list[str] = []
    with OpenAIStub(judge) as hostile:
        llm = as_llm(hostile.client(), model="m")
        out = ask(llm, MESSAGES, want_ok, policy=FAST, on_answer=paid.append)
    assert out.status is Status.OK and out.invalid_answers == 2 and out.calls == 3
    assert paid[0] == "[" * 100_000 and len(paid) == 3  # each kept before it was parsed


def test_a_validator_that_breaks_on_hostile_structure_is_an_invalid_answer():
    class Echo:
        name = "echo"

        def chat(self, messages, *, schema=None):
            return LLMReply(text='{"ok": [1, 2]}')

    def fragile(answer):
        return answer["ok"]["nested"]  # TypeError on a list

    out = ask(Echo(), MESSAGES, fragile, policy=RetryPolicy(max_invalid=0))
    assert out.status is Status.INVALID and "TypeError" in (out.error or "")


def test_replayed_answers_are_judged_before_paying():
    calls: list[int] = []

    class Counting:
        name = "counting"

        def chat(self, messages, *, schema=None):
            calls.append(1)
            return LLMReply(text=JSON_OK)

    out = ask(Counting(), MESSAGES, want_ok, replay=["[" * 10_000, JSON_OK])
    assert out.status is Status.OK and out.calls == 0 and out.replayed == 2 and not calls
    out = ask(Counting(), MESSAGES, want_ok, replay=["nope"], policy=FAST)
    assert out.status is Status.OK and out.calls == 1 and out.invalid_answers == 1
