"""The LLM protocol: adapters, retries, Retry-After, timeouts, budget, against a real server."""

from __future__ import annotations

import json
import time

import pytest

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.llm import (
    CallBudget,
    InvalidAnswerError,
    LangChainChat,
    LlamaIndexChat,
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
