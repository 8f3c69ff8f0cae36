"""nudge-rag: retrieval that gets better from its own usage, by NUDGE-ing stored embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nudge_rag.errors import (
    BadInputError,
    ConcurrentMoveError,
    GainNotProvenError,
    InvalidAnswerError,
    LLMCallError,
    MetricMismatchError,
    NudgeError,
    StaleStoreError,
    StoreDriftError,
    UnknownIdError,
    VersionLogError,
    WrongStoreError,
)
from nudge_rag.fit.nudge import NudgeResult, finetune_embeddings

if TYPE_CHECKING:
    from nudge_rag.engine.config import FinetuneConfig
    from nudge_rag.engine.engine import NudgeFinetuneEngine
    from nudge_rag.engine.report import FinetuneReport

__version__ = "0.1.0"
__all__ = [
    "BadInputError",
    "ConcurrentMoveError",
    "FinetuneConfig",
    "FinetuneReport",
    "GainNotProvenError",
    "InvalidAnswerError",
    "LLMCallError",
    "MetricMismatchError",
    "NudgeError",
    "NudgeFinetuneEngine",
    "NudgeResult",
    "StaleStoreError",
    "StoreDriftError",
    "UnknownIdError",
    "VersionLogError",
    "WrongStoreError",
    "finetune_embeddings",
]


def __getattr__(name: str) -> Any:
    # The engine pulls in sqlite caches and LLM adapters: import it only when asked for.
    if name == "NudgeFinetuneEngine":
        from nudge_rag.engine.engine import NudgeFinetuneEngine

        return NudgeFinetuneEngine
    if name == "FinetuneConfig":
        from nudge_rag.engine.config import FinetuneConfig

        return FinetuneConfig
    if name == "FinetuneReport":
        from nudge_rag.engine.report import FinetuneReport

        return FinetuneReport
    msg = f"module 'nudge_rag' has no attribute {name!r}"
    raise AttributeError(msg)
