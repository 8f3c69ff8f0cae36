"""Framework-free core: NUDGE math, metrics, data, store adapters, traces, versions, engine."""

from nudge_rag.core.errors import MetricMismatchError, NudgeError, UnknownIdError
from nudge_rag.core.nudge import Method, NudgeResult, Selection, finetune_embeddings

__all__ = [
    "Method",
    "MetricMismatchError",
    "NudgeError",
    "NudgeResult",
    "Selection",
    "UnknownIdError",
    "finetune_embeddings",
]
