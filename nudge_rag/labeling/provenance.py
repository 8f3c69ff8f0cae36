"""Where a label came from, and how far the LLM judge agrees with the people who labelled.

Provenance
----------
Every label is one of :class:`Provenance`: ``human`` (explicit feedback through
``record_feedback``, human annotations imported from LangSmith / Langfuse / Phoenix / JSONL),
``model`` (the LLM judge, the answer-support judge, an agent's citations, imported LLM-evaluator
annotations) or ``synthetic`` (questions the LLM wrote for sampled chunks). Feedback rows keep
theirs in the trace log (``feedback.provenance``; rows written before the column existed read as
``human``, the only kind ``record_feedback`` wrote on purpose).

The judge audit
---------------
Before the engine judges unlabelled searches, it asks the judge about the searches people have
already labelled, over the same candidate pools (the top ``label_k`` chunks) it would see for
any other search. On those pools, with the human positives as truth (a pool chunk no person
marked relevant counts as not relevant):

- precision = judge positives that people marked relevant / judge positives;
- recall = human positives in the pools that the judge marked relevant / human positives there;

each with a Wilson score interval over the (query, chunk) pairs (pairs of one query are not
independent, so the interval is somewhat narrow when a few queries hold most pairs).

A judge is **not trusted** when its agreement is significantly poor: the upper end of the
precision interval is below ``min_precision``, or that of recall below ``min_recall``. The
engine then drops every label the judge would make (it does not judge the other searches at
all, and labels liked answers no more), fits on the human labels, and proves on them alone;
the report says why. Incomplete human labels (a person marks one good chunk of three) make the
measured precision a lower bound, which is why the default bar is low (see ``DEFAULT_MIN_*``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from nudge_rag.fit.stats import wilson_interval

__all__ = [
    "DEFAULT_MIN_PRECISION",
    "DEFAULT_MIN_RECALL",
    "JUDGE_SOURCES",
    "SOURCE_PROVENANCE",
    "JudgeAudit",
    "Provenance",
    "audit_judge",
]

DEFAULT_MIN_PRECISION = 0.3
"""A judge whose precision against people is significantly below this is not trusted."""
DEFAULT_MIN_RECALL = 0.2
"""A judge whose recall of the human positives is significantly below this is not trusted (a
judge that misses most positives turns them into negatives the fit pushes away)."""


class Provenance(str, Enum):
    """Who made a label."""

    HUMAN = "human"
    MODEL = "model"
    SYNTHETIC = "synthetic"

    @classmethod
    def parse(cls, value: Any, *, what: str = "provenance") -> Provenance:
        """``value`` as a Provenance (``None`` is human); a clear error for anything else."""
        if value is None:
            return cls.HUMAN
        try:
            return cls(str(value.value if isinstance(value, Enum) else value).lower())
        except ValueError:
            from nudge_rag.errors import BadInputError

            msg = f"{what}: found {value!r}, expected 'human', 'model' or 'synthetic'."
            raise BadInputError(msg) from None


# which LabeledQuery sources are which provenance
SOURCE_PROVENANCE: dict[str, Provenance] = {
    "feedback": Provenance.HUMAN,
    "cited": Provenance.MODEL,  # model-made feedback: agent citations, LLM evaluators
    "llm": Provenance.MODEL,
    "answer": Provenance.MODEL,  # the support judge on a liked answer
    "synthetic": Provenance.SYNTHETIC,
}
JUDGE_SOURCES = frozenset({"llm", "answer"})
"""Label sources the LLM judge makes: dropped when the audit does not trust it."""


@dataclass
class JudgeAudit:
    """The judge's agreement with human labels on the pools of human-labelled searches.

    ``queries``: human-labelled searches asked about (``skipped``: whose judgment failed);
    ``tp`` / ``fp`` / ``fn``: judge positives people marked relevant / did not / human positives
    in the pools the judge missed. ``judge_calls``: the LLM requests the audit made (cache hits
    are free). ``trusted``: False when agreement is significantly poor (see the module).
    """

    queries: int
    tp: int
    fp: int
    fn: int
    precision_ci: tuple[float, float]
    recall_ci: tuple[float, float]
    min_precision: float
    min_recall: float
    confidence: float
    judge_calls: int = 0
    prompts: int = 0
    skipped: int = 0

    @property
    def precision(self) -> float:
        """``tp / (tp + fp)`` (NaN without judge positives)."""
        n = self.tp + self.fp
        return self.tp / n if n else math.nan

    @property
    def recall(self) -> float:
        """``tp / (tp + fn)`` (NaN without human positives in the pools)."""
        n = self.tp + self.fn
        return self.tp / n if n else math.nan

    @property
    def trusted(self) -> bool:
        """False when precision or recall is significantly below its bar."""
        return not self.reasons()

    def reasons(self) -> list[str]:
        """Why the judge is not trusted (empty when it is)."""
        pct = round(self.confidence * 100)
        out = []
        if self.tp + self.fp and self.precision_ci[1] < self.min_precision:
            out.append(
                f"precision {self.precision:.2f} ({pct}% CI up to {self.precision_ci[1]:.2f}) "
                f"is below {self.min_precision:.2f}"
            )
        if self.tp + self.fn and self.recall_ci[1] < self.min_recall:
            out.append(
                f"recall {self.recall:.2f} ({pct}% CI up to {self.recall_ci[1]:.2f}) is below "
                f"{self.min_recall:.2f}"
            )
        return out

    def summary(self) -> str:
        """One line: the figures, and the verdict with its reason."""
        pct = round(self.confidence * 100)

        def fig(value: float, ci: tuple[float, float]) -> str:
            if math.isnan(value):
                return "n/a"
            return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"

        head = (
            f"judge audit on {self.queries} human-labelled searches ({self.judge_calls} extra "
            f"LLM calls): precision {fig(self.precision, self.precision_ci)}, recall "
            f"{fig(self.recall, self.recall_ci)} ({pct}% Wilson CI)"
        )
        why = self.reasons()
        if why:
            return head + "; NOT TRUSTED (" + "; ".join(why) + "): its labels are dropped"
        return head + "; trusted"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (stored with the report)."""
        out = asdict(self)
        out.update(
            precision=None if math.isnan(self.precision) else self.precision,
            recall=None if math.isnan(self.recall) else self.recall,
            trusted=self.trusted,
            reasons=self.reasons(),
        )
        return out


def audit_judge(
    pairs: Iterable[tuple[Mapping[str, float], Mapping[str, float]]],
    *,
    min_precision: float = DEFAULT_MIN_PRECISION,
    min_recall: float = DEFAULT_MIN_RECALL,
    confidence: float = 0.95,
    judge_calls: int = 0,
    prompts: int = 0,
    skipped: int = 0,
) -> JudgeAudit:
    """Score the judge on ``pairs`` of (its grades over a pool, human grades of that query).

    Only the chunks the judge graded count (the pool): a judge positive is a true positive when
    people graded it > 0; a human positive the judge graded 0 is a miss; human positives outside
    the pool are not the judge's to find.
    """
    tp = fp = fn = queries = 0
    for judged, human in pairs:
        queries += 1
        for cid, grade in judged.items():
            truth = human.get(cid, 0.0) > 0
            if grade > 0:
                tp += truth
                fp += not truth
            elif truth:
                fn += 1
    return JudgeAudit(
        queries=queries,
        tp=tp,
        fp=fp,
        fn=fn,
        precision_ci=wilson_interval(tp, tp + fp, confidence=confidence),
        recall_ci=wilson_interval(tp, tp + fn, confidence=confidence),
        min_precision=min_precision,
        min_recall=min_recall,
        confidence=confidence,
        judge_calls=judge_calls,
        prompts=prompts,
        skipped=skipped,
    )
