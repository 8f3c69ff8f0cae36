"""Test helpers that ship with the package: a local OpenAI-compatible server and judges.

Nothing here is imported by the library itself.
"""

from nudge_rag.testing.judges import (
    GullibleJudge,
    NoisyJudge,
    QrelsJudge,
    ScriptedJudge,
    SimilarityBiasedJudge,
)
from nudge_rag.testing.openai_stub import Faults, OpenAIStub, StubRequest

__all__ = [
    "Faults",
    "GullibleJudge",
    "NoisyJudge",
    "OpenAIStub",
    "QrelsJudge",
    "ScriptedJudge",
    "SimilarityBiasedJudge",
    "StubRequest",
]
