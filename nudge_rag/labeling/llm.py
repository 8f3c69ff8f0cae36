"""One small LLM protocol, the adapters, and a careful way to call them.

The engine asks an LLM two things (judge candidates, write questions) and wants JSON back.
Everything it needs from a model is :class:`LLMClient`: a ``name`` (part of the label cache
key) and ``chat(messages, schema=...) -> LLMReply``. :func:`as_llm` turns what a user passes
into one:

- an ``openai.OpenAI`` (or ``AzureOpenAI``) client, with ``model=``: chat completions with a
  ``json_schema`` response format; a server that rejects the format is asked again without
  it, and the text is parsed;
- any LangChain ``Runnable`` that returns a message: a ``BaseChatModel``, or one wrapped in
  ``with_retry()``, ``with_fallbacks([...])``, ``bind(...)``, ``with_config(...)`` or a chain
  that ends in one; with a schema, the framework's own ``with_structured_output`` is used
  where every model inside supports it, and the text is parsed otherwise
  (:class:`nudge_rag.langchain.llm.LangChainChat`);
- any LlamaIndex ``LLM`` (``structured_predict`` of the answer's pydantic model for
  function-calling models, the text otherwise; :class:`nudge_rag.llama_index.llm.LlamaIndexChat`).

The framework adapters live in the faces and are imported only when such an object is passed:
this module imports no framework. :func:`ask` adds what a
production caller needs around one request: a hard call budget shared by all threads,
retries with exponential backoff on 429 / 5xx / timeouts that honour ``Retry-After``, and
re-asking when the answer does not parse or validate — then giving up, never guessing. Any
failure to parse or validate an answer (a ``RecursionError`` on hostile nesting included) is
an invalid answer, and every paid answer is handed to ``on_answer`` (the label cache keeps it)
before it is parsed.
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

from nudge_rag.errors import BadInputError, InvalidAnswerError, LLMCallError

__all__ = [
    "MAX_ANSWER_CHARS",
    "CallBudget",
    "LLMClient",
    "LLMReply",
    "Messages",
    "OpenAIChat",
    "Outcome",
    "RetryPolicy",
    "Status",
    "as_llm",
    "ask",
    "classify_error",
    "content_text",
    "extract_json",
    "is_answer_error",
    "judge_answer",
    "output_text",
    "parse_retry_after",
]

T = TypeVar("T")

Messages = Sequence[Mapping[str, str]]
"""Chat messages as ``{"role": "system" | "user" | "assistant", "content": str}``."""

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_TRANSIENT_NAMES = ("timeout", "ratelimit", "connection", "serviceunavailable", "overloaded")


MAX_ANSWER_CHARS = 1_000_000
"""Longer answers are invalid without being parsed (no judge or question answer comes near)."""


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
            raise BadInputError(msg)
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


# ---------------------------------------------------------------------------------------------
# What the framework adapters (nudge_rag.langchain.llm, nudge_rag.llama_index.llm) share


def content_text(content: Any) -> str:
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


def is_answer_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a framework's parser rejecting an answer (not a failed request)."""
    if isinstance(exc, RecursionError | UnicodeError | json.JSONDecodeError):
        return True
    return any(c.__name__ in _PARSER_ERRORS for c in type(exc).__mro__)


_PARSER_ERRORS = frozenset({"OutputParserException", "ValidationError"})


def output_text(out: Any) -> str:
    """The answer text of a runnable's output: a message's content, a string, or the JSON of
    what a structured-output parser returned (a dict, or a pydantic object)."""
    if isinstance(out, str):
        return out
    if hasattr(out, "content") and not isinstance(out, Mapping):
        return content_text(out.content)
    dump = getattr(out, "model_dump", None)
    if callable(dump):
        out = dump(mode="json")
    return json.dumps(out, ensure_ascii=False)


def _from_module(obj: Any, prefix: str) -> bool:
    return any(c.__module__.startswith(prefix) for c in type(obj).__mro__)


def as_llm(llm: Any, *, model: str | None = None) -> LLMClient | None:
    """Turn an openai client, a LangChain runnable (a chat model, wrapped or not) or a
    LlamaIndex LLM into an LLMClient.

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
            raise BadInputError(msg)
        if type(llm).__name__.startswith("Async"):
            msg = "llm: found an async openai client; pass the sync openai.OpenAI(...) instead."
            raise BadInputError(msg)
        if not model:
            msg = (
                "llm_model: an openai client needs a model name, found none; pass llm_model='...'."
            )
            raise BadInputError(msg)
        return OpenAIChat(llm, model)
    if _from_module(llm, "langchain"):  # the faces hold the framework code: imported when used
        from nudge_rag.langchain.llm import LangChainChat

        if LangChainChat.accepts(llm):
            return LangChainChat(llm)
    if _from_module(llm, "llama_index"):
        from nudge_rag.llama_index.llm import LlamaIndexChat

        if LlamaIndexChat.accepts(llm):
            return LlamaIndexChat(llm)
    if isinstance(llm, LLMClient):
        return llm
    msg = (
        f"llm: found {type(llm).__module__}.{type(llm).__name__}, expected an openai.OpenAI "
        "client (with llm_model=...), a LangChain chat model or Runnable that returns a message "
        "(chat.with_retry(), .with_fallbacks([...]), .bind(...)), a LlamaIndex LLM or an "
        "object with name and chat(messages, schema=None); pass one of those, or llm=None."
    )
    raise BadInputError(msg)


# ---------------------------------------------------------------------------------------------
# Parsing


_PARSE_ERRORS = (ValueError, TypeError, RecursionError, UnicodeError, MemoryError)
"""What ``json.loads`` can raise on hostile text (``JSONDecodeError`` and ``UnicodeError``
are ``ValueError``s; ``RecursionError`` on deep nesting)."""


def _loads(s: str) -> tuple[bool, Any, str]:
    try:
        return True, json.loads(s), ""
    except _PARSE_ERRORS as exc:
        return False, None, type(exc).__name__


def extract_json(text: str) -> Any:
    """Parse a JSON answer, tolerating code fences and prose around one object.

    Anything that is not JSON, too long (``MAX_ANSWER_CHARS``), or nested beyond what the
    parser can take raises :class:`InvalidAnswerError`, never the parser's own error.
    """
    if not isinstance(text, str):
        msg = f"answer is not text: found {type(text).__name__}"
        raise InvalidAnswerError(msg)
    if len(text) > MAX_ANSWER_CHARS:
        msg = f"answer is {len(text)} characters long, over {MAX_ANSWER_CHARS}"
        raise InvalidAnswerError(msg)
    s = text.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        s = s.rsplit("```", 1)[0]
    ok, value, why = _loads(s)
    if ok:
        return value
    start, end = s.find("{"), s.rfind("}")
    if start != -1 and end > start:
        ok, value, _ = _loads(s[start : end + 1])
        if ok:
            return value
    msg = f"answer is not JSON ({why}): {text[:120]!r}"
    raise InvalidAnswerError(msg)


def judge_answer(text: str, validate: Callable[[Any], T]) -> T:
    """``validate(extract_json(text))``; any failure is an :class:`InvalidAnswerError`.

    A validator meeting hostile structure (deep nesting, odd types) may raise anything; that
    is the answer's fault, so it is reported as an invalid answer, never raised as is.
    """
    try:
        return validate(extract_json(text))
    except InvalidAnswerError:
        raise
    except Exception as exc:  # whatever hostile input makes a parser or validator raise
        msg = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise InvalidAnswerError(msg) from exc


# ---------------------------------------------------------------------------------------------
# Calling with a budget, retries and validation


class CallBudget:
    """A hard, thread-safe cap on LLM requests (``None``: no cap)."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            msg = f"max_calls: found {limit}, expected a count ≥ 0 or None; pass e.g. 1000."
            raise BadInputError(msg)
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
    replayed: int = 0  # answers paid for earlier, judged again at no cost


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
    replay: Sequence[str] = (),
    on_answer: Callable[[str], None] | None = None,
) -> Outcome[T]:
    """Ask ``client`` until ``validate(parsed JSON)`` accepts an answer, within the limits.

    ``validate`` raises :class:`InvalidAnswerError` (or anything else) to reject an answer;
    a rejected or unparsable answer is asked again up to ``policy.max_invalid`` times, then
    the question is given up as INVALID. ``replay`` are answers paid for earlier (a run that
    died before settling them): they are judged first, at no cost. ``on_answer`` gets the
    text of every paid answer before it is parsed (to cache it).
    """
    policy = policy or RetryPolicy()
    budget = budget or CallBudget()
    rng = rng or random.Random()
    out: Outcome[T] = Outcome(Status.FAILED)

    def settle(text: str) -> bool:
        """True when ``text`` is a valid answer (``out`` is then OK)."""
        try:
            out.value = judge_answer(text, validate)
        except InvalidAnswerError as exc:
            out.invalid_answers += 1
            out.error = f"invalid answer: {exc}"
            return False
        out.status = Status.OK
        out.error = None
        return True

    def gave_up() -> bool:
        if out.invalid_answers > policy.max_invalid:
            out.status = Status.INVALID
            return True
        return False

    for text in replay:
        out.replayed += 1
        if settle(text):
            return out
        if gave_up():
            return out
    transient = 0
    while True:
        if not budget.take():
            out.status = Status.BUDGET
            return out
        out.calls += 1
        try:
            reply = client.chat(messages, schema=schema)
        except InvalidAnswerError as exc:  # the framework's own parser rejected the answer
            if on_answer is not None:
                on_answer(exc.raw or "")
            out.invalid_answers += 1
            out.error = f"invalid answer: {exc}"
            if gave_up():
                return out
            out.retries += 1
            continue
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
        if on_answer is not None:
            on_answer(reply.text)  # paid for: kept before anything can go wrong parsing it
        if settle(reply.text):
            return out
        if gave_up():
            return out
        out.retries += 1
