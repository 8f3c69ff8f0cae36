"""LangChain chat models (and runnables that return a message) as an
:class:`~nudge_rag.labeling.llm.LLMClient`; :func:`nudge_rag.labeling.llm.as_llm` picks
:class:`LangChainChat` for any LangChain ``Runnable``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableSequence, RunnableWithFallbacks
from langchain_core.runnables.base import RunnableBindingBase

from nudge_rag.errors import InvalidAnswerError
from nudge_rag.labeling.llm import (
    LLMReply,
    Messages,
    classify_error,
    is_answer_error,
    output_text,
)

__all__ = ["LangChainChat"]


def _schema_named(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with the top-level title and description frameworks need to name a tool."""
    return {"title": "answer", "description": "The answer, as JSON.", **dict(schema)}


def _describe_runnable(runnable: Any) -> str:
    """A stable label for a LangChain runnable: the chat models inside, outermost wrappers
    dropped (``chat``, ``chat.with_retry()`` and ``chat.bind(...)`` share a cache)."""
    if isinstance(runnable, BaseChatModel):
        label = getattr(runnable, "model_name", None) or getattr(runnable, "model", None) or ""
        return f"{type(runnable).__name__}:{label}".rstrip(":")
    if isinstance(runnable, RunnableBindingBase):
        return _describe_runnable(runnable.bound)
    if isinstance(runnable, RunnableWithFallbacks):
        return "|".join(_describe_runnable(r) for r in (runnable.runnable, *runnable.fallbacks))
    if isinstance(runnable, RunnableSequence):
        return _describe_runnable(runnable.last)
    return f"{type(runnable).__name__}:{runnable.get_name()}"


def _structured_runnable(runnable: Any, schema: Mapping[str, Any]) -> Any | None:
    """``runnable`` rebuilt around each model's own ``with_structured_output(schema)``, keeping
    its retries, fallbacks, bound arguments and config; ``None`` where a model inside does not
    support structured output or the shape is opaque (a lambda, a chain): then parse text."""
    if isinstance(runnable, BaseChatModel):
        try:
            return runnable.with_structured_output(_schema_named(schema))
        except (NotImplementedError, ValueError, TypeError):  # no tool calling / json mode
            return None
    if isinstance(runnable, RunnableBindingBase):  # bind(...), with_retry(), with_config(...)
        inner = _structured_runnable(runnable.bound, schema)
        # a bound call's kwargs reach the first step of the structured chain: the model call
        return None if inner is None else runnable.model_copy(update={"bound": inner})
    if isinstance(runnable, RunnableWithFallbacks):
        parts = [_structured_runnable(r, schema) for r in (runnable.runnable, *runnable.fallbacks)]
        if any(p is None for p in parts):
            return None
        return runnable.model_copy(update={"runnable": parts[0], "fallbacks": parts[1:]})
    return None


class _Usage(BaseCallbackHandler):
    """Token counts of every model call inside the runnable (fallbacks included)."""

    def __init__(self) -> None:
        self.tokens = [0, 0]

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        for gens in response.generations:
            for gen in gens:
                meta = getattr(getattr(gen, "message", None), "usage_metadata", None)
                if isinstance(meta, Mapping):
                    self.tokens[0] += int(meta.get("input_tokens", 0) or 0)
                    self.tokens[1] += int(meta.get("output_tokens", 0) or 0)


class LangChainChat:
    """A LangChain ``Runnable`` that returns a message, as an :class:`LLMClient`.

    A ``BaseChatModel``, or one wrapped in ``with_retry()``, ``with_fallbacks([...])``,
    ``bind(...)``, ``with_config(...)``, or a chain (``RunnableLambda``, ``prompt | model``)
    that ends in one. With a ``schema``, the model's own ``with_structured_output`` is used,
    rebuilt under the same wrappers, where every model inside supports it; otherwise (or with
    ``structured=False``) the answer's text is parsed. Retries the runnable makes on its own
    (``with_retry``) are invisible to the call budget.
    """

    @staticmethod
    def accepts(obj: Any) -> bool:
        """Whether ``obj`` is a LangChain ``Runnable`` (what :func:`as_llm` wraps in this)."""
        return isinstance(obj, Runnable)

    def __init__(self, runnable: Any, *, structured: bool = True) -> None:
        self.runnable = runnable
        self.model = runnable  # the name earlier versions exposed
        self.structured = structured
        self.name = f"langchain:{_describe_runnable(runnable)}"

    def chat(self, messages: Messages, *, schema: Mapping[str, Any] | None = None) -> LLMReply:
        """One ``invoke``: structured where supported, else text (the schema is in the
        prompt already). A framework parser that rejects the answer raises
        :class:`InvalidAnswerError` (an invalid answer, asked again); other failures
        :class:`LLMCallError`."""
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        lc = [kinds.get(m["role"], HumanMessage)(content=m["content"]) for m in messages]
        runnable = self.runnable
        if schema is not None and self.structured:
            runnable = _structured_runnable(self.runnable, schema) or self.runnable
        usage = _Usage()
        try:
            out = runnable.invoke(lc, config={"callbacks": [usage]})
            text = output_text(out)
        except Exception as exc:
            if is_answer_error(exc):
                raw = getattr(exc, "llm_output", None)
                msg = f"the framework rejected the answer ({type(exc).__name__}): {exc}"[:300]
                raise InvalidAnswerError(msg, raw=raw if isinstance(raw, str) else None) from exc
            raise classify_error(exc) from exc
        return LLMReply(text=text, prompt_tokens=usage.tokens[0], completion_tokens=usage.tokens[1])
