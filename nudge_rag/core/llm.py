"""One small LLM protocol, three adapters, and a careful way to call them.

The engine asks an LLM two things (judge candidates, write questions) and wants JSON back.
Everything it needs from a model is :class:`LLMClient`: a ``name`` (part of the label cache
key) and ``chat(messages, schema=...) -> LLMReply``. :func:`as_llm` turns what a user passes
into one:

- an ``openai.OpenAI`` (or ``AzureOpenAI``) client, with ``model=``: chat completions with a
  ``json_schema`` response format; a server that rejects the format is asked again without
  it, and the text is parsed;
- any LangChain ``BaseChatModel``;
- any LlamaIndex ``LLM``.

The frameworks are imported only when such an object is passed. :func:`ask` adds what a
production caller needs around one request: a hard call budget shared by all threads,
retries with exponential backoff on 429 / 5xx / timeouts that honour ``Retry-After``, and
re-asking when the answer does not parse or validate — then giving up, never guessing.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from nudge_rag.core.errors import NudgeError

T = TypeVar("T")

Messages = Sequence[Mapping[str, str]]
"""Chat messages as ``{"role": "system" | "user" | "assistant", "content": str}``."""

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_TRANSIENT_NAMES = ("timeout", "ratelimit", "connection", "serviceunavailable", "overloaded")


class LLMCallError(NudgeError):
    """One LLM request failed; ``transient`` failures are worth retrying."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after


class InvalidAnswerError(NudgeError):
    """An LLM answer that does not parse, or names ids / values outside what was asked."""


@dataclass(frozen=True)
class LLMReply:
    """The text of one answer, with token counts where the model reports them."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 1


@runtime_checkable
class LLMClient(Protocol):
    """What the engine needs from a chat model."""

    name: str

    def chat(self, messages: Messages, *, schema: Mapping[str, Any] | None = None) -> LLMReply:
        """Answer ``messages``; ``schema`` is a JSON schema the answer should follow."""
        ...


# ---------------------------------------------------------------------------------------------
# Errors from any client → LLMCallError


def _status_of(exc: BaseException) -> int | None:
    for obj in (exc, getattr(exc, "response", None)):
        for attr in ("status_code", "status", "http_status"):
            value = getattr(obj, attr, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
    return None


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    if "retry-after-ms" in lower:
        try:
            return max(float(lower["retry-after-ms"]) / 1000.0, 0.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


def classify_error(exc: BaseException) -> LLMCallError:
    """Wrap any client's exception: status, whether to retry, and any ``Retry-After``."""
    if isinstance(exc, LLMCallError):
        return exc
    status = _status_of(exc)
    names = " ".join(c.__name__.lower() for c in type(exc).__mro__)
    transient = (
        (status is not None and (status in _TRANSIENT_STATUS or status >= 500))
        or isinstance(exc, (TimeoutError, ConnectionError))
        or (status is None and any(n in names for n in _TRANSIENT_NAMES))
    )
    headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        retry_after = parse_retry_after(headers)
    except Exception:  # a header object we cannot read is just no hint
        retry_after = None
    where = f"HTTP {status}" if status is not None else type(exc).__name__
    msg = f"LLM request failed ({where}): {exc}"
    return LLMCallError(msg, transient=transient, status=status, retry_after=retry_after)


# ---------------------------------------------------------------------------------------------
# Adapters


class OpenAIChat:
    """An ``openai.OpenAI`` client as an :class:`LLMClient` (chat completions).

    The client's own retries are switched off (``max_retries=0``): :func:`ask` retries, so
    every request counts against the budget. The JSON schema goes out as
    ``response_format={"type": "json_schema", ...}``; a server that answers 400 to that is
    asked once more without it, and from then on the text alone is parsed.
    """

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        temperature: float | None = 0.0,
        timeout: float = 60.0,
        use_schema: bool = True,
    ) -> None:
        if not model:
            msg = "model: an openai client needs a model name, found none; pass llm_model='...'."
            raise NudgeError(msg)
        self._client = client.with_options(max_retries=0, timeout=timeout)
        self.model = model
        self.temperature = temperature
        self.use_schema = use_schema
        self.name = f"openai:{model}"

    def _drop_rejected(self, message: str, schema: Mapping[str, Any] | None) -> bool:
        """Stop sending the parameter a 400 complains about; False when there is none."""
        text = message.lower()
        if self.temperature is not None and "temperature" in text:
            self.temperature = None
            return True
        named = any(w in text for w in ("response_format", "json_schema", "schema", "structured"))
        if self.use_schema and schema is not None and named:
            self.use_schema = False
            return True
        return False

    def _create(self, messages: Messages, schema: Mapping[str, Any] | None) -> Any:
        kwargs: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": dict(schema), "strict": True},
            }
        return self._client.chat.completions.create(**kwargs)

    def chat(self, messages: Messages, *, schema: Mapping[str, Any] | None = None) -> LLMReply:
        """One chat completion; errors come out as :class:`LLMCallError`.

        A 400 whose message names ``temperature`` or the response format (``response_format``,
        ``json_schema``, ...) drops that parameter, for this and every later request, and asks
        again at once; each request is counted.
        """
        calls = 1
        while True:
            try:
                resp = self._create(messages, schema if self.use_schema else None)
                break
            except Exception as exc:
                if _status_of(exc) == 400 and self._drop_rejected(str(exc), schema):
                    calls += 1
                    continue
                raise classify_error(exc) from exc
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content or "") if choice is not None else ""
        usage = getattr(resp, "usage", None)
        return LLMReply(
            text=text,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            calls=calls,
        )


def _content_text(content: Any) -> str:
    """The text of a message content: a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(getattr(block, "text", None), str):
                parts.append(block.text)
        return "".join(parts)
    return "" if content is None else str(content)


class LangChainChat:
    """A LangChain ``BaseChatModel`` as an :class:`LLMClient` (``invoke``; text parsed)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        label = getattr(model, "model_name", None) or getattr(model, "model", None) or ""
        self.name = f"langchain:{type(model).__name__}:{label}".rstrip(":")

    def chat(self, messages: Messages, *, schema: Mapping[str, Any] | None = None) -> LLMReply:
        """One ``invoke``; the schema is in the prompt already, so it is not sent again."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        lc = [kinds.get(m["role"], HumanMessage)(content=m["content"]) for m in messages]
        try:
            out = self.model.invoke(lc)
        except Exception as exc:
            raise classify_error(exc) from exc
        usage = getattr(out, "usage_metadata", None) or {}
        return LLMReply(
            text=_content_text(getattr(out, "content", out)),
            prompt_tokens=int(usage.get("input_tokens", 0) or 0),
            completion_tokens=int(usage.get("output_tokens", 0) or 0),
        )


class LlamaIndexChat:
    """A LlamaIndex ``LLM`` as an :class:`LLMClient` (``chat``; text parsed)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        try:
            label = llm.metadata.model_name
        except Exception:  # metadata is optional on custom LLMs
            label = ""
        self.name = f"llama_index:{type(llm).__name__}:{label}".rstrip(":")

    def chat(self, messages: Messages, *, schema: Mapping[str, Any] | None = None) -> LLMReply:
        """One ``chat`` call; the schema is in the prompt already."""
        from llama_index.core.llms import ChatMessage, MessageRole

        roles = {
            "system": MessageRole.SYSTEM,
            "user": MessageRole.USER,
            "assistant": MessageRole.ASSISTANT,
        }
        li = [
            ChatMessage(role=roles.get(m["role"], MessageRole.USER), content=m["content"])
            for m in messages
        ]
        try:
            out = self.llm.chat(li)
        except Exception as exc:
            raise classify_error(exc) from exc
        return LLMReply(text=_content_text(out.message.content))


def _from_module(obj: Any, prefix: str) -> bool:
    return any(c.__module__.startswith(prefix) for c in type(obj).__mro__)


def as_llm(llm: Any, *, model: str | None = None) -> LLMClient | None:
    """Turn an openai client, a LangChain chat model or a LlamaIndex LLM into an LLMClient.

    ``None`` stays ``None`` (feedback labels only); an :class:`LLMClient` passes through.
    ``model`` names the model for an openai client (required there, ignored elsewhere).
    """
    if llm is None:
        return None
    if _from_module(llm, "openai"):
        chat = getattr(getattr(llm, "chat", None), "completions", None)
        if chat is None or not callable(getattr(chat, "create", None)):
            msg = (
                f"llm: found {type(llm).__name__} from the openai package, expected a client "
                "with chat.completions (openai.OpenAI or AzureOpenAI); pass openai.OpenAI(...)."
            )
            raise NudgeError(msg)
        if type(llm).__name__.startswith("Async"):
            msg = "llm: found an async openai client; pass the sync openai.OpenAI(...) instead."
            raise NudgeError(msg)
        if not model:
            msg = (
                "llm_model: an openai client needs a model name, found none; pass llm_model='...'."
            )
            raise NudgeError(msg)
        return OpenAIChat(llm, model)
    if _from_module(llm, "langchain"):
        from langchain_core.language_models import BaseChatModel

        if isinstance(llm, BaseChatModel):
            return LangChainChat(llm)
    if _from_module(llm, "llama_index"):
        from llama_index.core.llms import LLM

        if isinstance(llm, LLM):
            return LlamaIndexChat(llm)
    if isinstance(llm, LLMClient):
        return llm
    msg = (
        f"llm: found {type(llm).__module__}.{type(llm).__name__}, expected an openai.OpenAI "
        "client (with llm_model=...), a LangChain BaseChatModel, a LlamaIndex LLM or an object "
        "with name and chat(messages, schema=None); pass one of those, or llm=None."
    )
    raise NudgeError(msg)


# ---------------------------------------------------------------------------------------------
# Parsing


def extract_json(text: str) -> Any:
    """Parse a JSON answer, tolerating code fences and prose around one object."""
    s = text.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        s = s.rsplit("```", 1)[0]
    try:
        return json.loads(s)
    except ValueError:
        pass
    start, end = s.find("{"), s.rfind("}")
    if start != -1 and end > start:
        try:
            return json.loads(s[start : end + 1])
        except ValueError:
            pass
    msg = f"answer is not JSON: {text[:120]!r}"
    raise InvalidAnswerError(msg)


# ---------------------------------------------------------------------------------------------
# Calling with a budget, retries and validation


class CallBudget:
    """A hard, thread-safe cap on LLM requests (``None``: no cap)."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            msg = f"max_calls: found {limit}, expected a count ≥ 0 or None; pass e.g. 1000."
            raise NudgeError(msg)
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Reserve one request; ``False`` once the budget is spent."""
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True

    def add(self, n: int) -> None:
        """Count ``n`` requests that were made without a reservation."""
        with self._lock:
            self.used += n

    @property
    def exhausted(self) -> bool:
        """Whether no request is left."""
        return self.limit is not None and self.used >= self.limit


@dataclass(frozen=True)
class RetryPolicy:
    """How hard :func:`ask` tries.

    ``max_retries`` transient failures (429, 408/409/425, 5xx, timeouts, connection errors)
    are retried after ``backoff * 2**attempt`` seconds with jitter, capped at ``max_backoff``,
    or after the server's ``Retry-After`` (capped at ``max_wait``); ``max_invalid`` answers
    that do not parse or validate are asked again.
    """

    max_retries: int = 5
    max_invalid: int = 2
    backoff: float = 0.5
    max_backoff: float = 20.0
    max_wait: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        base = min(self.backoff * (2.0**attempt), self.max_backoff)
        return base * (0.5 + 0.5 * rng.random())


class Status(str, Enum):
    """How one question to the LLM ended."""

    OK = "ok"
    INVALID = "invalid"  # answers kept failing validation: skipped, counted, never guessed
    FAILED = "failed"  # transient errors outlasted the retries, or a permanent error
    BUDGET = "budget"  # the call budget ran out first


@dataclass
class Outcome(Generic[T]):
    """The validated value of one question (``None`` unless ``status`` is OK) and its cost."""

    status: Status
    value: T | None = None
    calls: int = 0
    invalid_answers: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


def ask(
    client: LLMClient,
    messages: Messages,
    validate: Callable[[Any], T],
    *,
    schema: Mapping[str, Any] | None = None,
    policy: RetryPolicy | None = None,
    budget: CallBudget | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Outcome[T]:
    """Ask ``client`` until ``validate(parsed JSON)`` accepts an answer, within the limits.

    ``validate`` raises :class:`InvalidAnswerError` (or ``ValueError``) to reject an answer.
    """
    policy = policy or RetryPolicy()
    budget = budget or CallBudget()
    rng = rng or random.Random()
    out: Outcome[T] = Outcome(Status.FAILED)
    transient = 0
    while True:
        if not budget.take():
            out.status = Status.BUDGET
            return out
        out.calls += 1
        try:
            reply = client.chat(messages, schema=schema)
        except Exception as exc:
            err = classify_error(exc)
            out.error = str(err)
            if not err.transient or transient >= policy.max_retries:
                out.status = Status.FAILED
                return out
            sleep(policy.delay(transient, err.retry_after, rng))
            transient += 1
            out.retries += 1
            continue
        if reply.calls > 1:
            budget.add(reply.calls - 1)
            out.calls += reply.calls - 1
        out.prompt_tokens += reply.prompt_tokens
        out.completion_tokens += reply.completion_tokens
        try:
            out.value = validate(extract_json(reply.text))
        except (InvalidAnswerError, ValueError, TypeError, KeyError) as exc:
            out.invalid_answers += 1
            out.error = f"invalid answer: {exc}"
            if out.invalid_answers > policy.max_invalid:
                out.status = Status.INVALID
                return out
            out.retries += 1
            continue
        out.status = Status.OK
        out.error = None
        return out
