"""LlamaIndex LLMs as an :class:`~nudge_rag.labeling.llm.LLMClient`;
:func:`nudge_rag.labeling.llm.as_llm` picks :class:`LlamaIndexChat` for any LlamaIndex ``LLM``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.llms import LLM, ChatMessage, MessageRole
from llama_index.core.prompts import ChatPromptTemplate

from nudge_rag.errors import InvalidAnswerError
from nudge_rag.labeling.llm import (
    LLMReply,
    Messages,
    classify_error,
    content_text,
    is_answer_error,
    output_text,
)

__all__ = ["LlamaIndexChat"]


class LlamaIndexChat:
    """A LlamaIndex ``LLM`` as an :class:`LLMClient`.

    With an answer's schema (:class:`~nudge_rag.labeling.answers.AnswerSchema`) and a
    function-calling model (``metadata.is_function_calling_model``), LlamaIndex's own
    ``structured_predict`` fills the answer's pydantic model; otherwise ``chat`` is called and
    the text parsed.
    """

    @staticmethod
    def accepts(obj: Any) -> bool:
        """Whether ``obj`` is a LlamaIndex ``LLM`` (what :func:`as_llm` wraps in this)."""
        return isinstance(obj, LLM)

    def __init__(self, llm: Any, *, structured: bool = True) -> None:
        self.llm = llm
        self.structured = structured
        try:
            label = llm.metadata.model_name
        except Exception:  # metadata is optional on custom LLMs
            label = ""
        self.name = f"llama_index:{type(llm).__name__}:{label}".rstrip(":")

    def _function_calling(self) -> bool:
        try:
            return bool(self.llm.metadata.is_function_calling_model)
        except Exception:  # metadata is optional on custom LLMs
            return False

    def chat(self, messages: Messages, *, schema: Mapping[str, Any] | None = None) -> LLMReply:
        """One ``structured_predict`` or ``chat`` call (the schema is in the prompt too)."""
        roles = {
            "system": MessageRole.SYSTEM,
            "user": MessageRole.USER,
            "assistant": MessageRole.ASSISTANT,
        }
        li = [
            ChatMessage(role=roles.get(m["role"], MessageRole.USER), content=m["content"])
            for m in messages
        ]
        output_cls = (
            getattr(schema, "model", None)  # an answer's pydantic model (labeling.answers)
            if schema is not None and self.structured and self._function_calling()
            else None
        )
        try:
            if output_cls is not None:
                out = self.llm.structured_predict(output_cls, ChatPromptTemplate(li))
                return LLMReply(text=output_text(out))
            reply = self.llm.chat(li)
        except Exception as exc:
            if is_answer_error(exc):
                msg = f"the framework rejected the answer ({type(exc).__name__}): {exc}"[:300]
                raise InvalidAnswerError(msg) from exc
            raise classify_error(exc) from exc
        return LLMReply(text=content_text(reply.message.content))
