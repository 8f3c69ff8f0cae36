"""FinetuneConfig: every setting of the fine-tune engine, checked once, where it is made."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError
from nudge_rag.fit.corpus import DEFAULT_MEMORY_BUDGET
from nudge_rag.fit.nudge import Method, Selection, check_gamma
from nudge_rag.labeling.llm import RetryPolicy
from nudge_rag.labeling.provenance import DEFAULT_MIN_PRECISION, DEFAULT_MIN_RECALL
from nudge_rag.state.db import Database

__all__ = ["FinetuneConfig", "resolve_config"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of :class:`~nudge_rag.engine.engine.NudgeFinetuneEngine`, checked at
    construction (a ``BadInputError`` names the setting, what was found and the fix).

    The engine takes these fields as keyword arguments, or one ``config=``; it is frozen, and
    ``dataclasses.replace(config, ...)`` makes a changed copy, checked again.

    Use:
        .. code-block:: python

            config = FinetuneConfig(method="nudge-n", min_gain=0.01, corpus="store")
            engine = NudgeFinetuneEngine(store, llm=None, config=config)
            strict = dataclasses.replace(config, confidence=0.99)
    """

    method: Method = Method.NUDGE_N
    """``"nudge-n"`` (any metric) or ``"nudge-m"`` (inner-product stores only); a ``Method``
    or its value."""
    llm_model: str | None = None
    """The model name for an ``openai.OpenAI`` client passed as ``llm``."""
    label_k: int = 20
    """Size of the candidate pool the judge grades per query."""
    pools: str = "hybrid"
    """How the pool is drawn: ``"hybrid"`` fuses the dense top ``label_k`` with BM25 over the
    chunk texts (the ``lexical`` extra; left out with a logged note when ``bm25s`` is missing)
    and the chunks users marked relevant, by reciprocal rank; ``"dense"`` is the dense top
    alone. On the store path (``corpus="store"``) a store with full-text search of its own
    (pgvector with a text column: BM25 over Postgres ``to_tsvector`` lexemes) ranks the lexical
    leg in the server instead. The BM25 index is kept across ``finetune()`` calls while the
    chunks' ids and texts are unchanged."""
    pool_depth: str = "fixed"
    """``"fixed"`` judges each query's ``label_k`` candidates; ``"adaptive"`` judges the first
    ``label_k / 2`` of each, then spends the rest of the same budget (``label_k`` × queries
    candidates) ``label_k / 4`` at a time on the queries whose deeper candidates (up to
    3 × ``label_k``) are expected to hold the most positives, learned from the grades so far,
    when queries without a positive yet yield more than the average one (few positives a
    query); else every query gets its ``label_k`` (:class:`~nudge_rag.labeling.pools.DepthPlan`).
    More prompts of fewer candidates each, in rounds. SciFact: 0.81 of the gold-label gain
    against 0.73 fixed; NFCorpus unchanged (``benchmarks/DEFAULTS.md``)."""
    judge_batch: int = 20
    """Candidates per judge prompt; a larger pool goes out as several prompts."""
    synthetic_chunks: int = 0
    """Cold start: chunks sampled to have the LLM write questions for; those questions train
    and validate, and are the held-out proof only when no real trace is labeled."""
    questions_per_chunk: int = 2
    """Questions the LLM writes per sampled chunk."""
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    """(train, validation, held-out) shares of the queries, by each query key's seeded hash."""
    seed: int = 0
    """Seeds the split, the chunk sample, the bootstrap and the judge's prompts."""
    min_gain: float = 0.0
    """``apply`` needs the held-out NDCG@10 gain's CI lower bound above this."""
    confidence: float = 0.95
    """Level of the gain's bootstrap CI (and of the judge audit's intervals)."""
    n_resamples: int = 2000
    """Bootstrap resamples behind the gain's CI (≥ 100)."""
    gamma: float | None = None
    """A fixed γ for the fit; None: chosen on the validation queries."""
    selection: str | None = None
    """How γ is chosen: ``"ndcg@10"`` or ``"top1"`` (None: the fit's default)."""
    refit: bool | None = None
    """Refit on train + validation once γ is chosen (None: the fit's default)."""
    cache_path: str | Path | Database | None = None
    """The label cache (None: the state's, ``labels.sqlite`` in its folder or its Postgres
    schema)."""
    concurrency: int = 4
    """LLM requests in flight at once."""
    max_calls: int | None = None
    """Hard cap on LLM requests per ``finetune()``."""
    retry: RetryPolicy | None = None
    """How failed LLM requests are retried (None: the default policy)."""
    progress: bool = True
    """Show progress bars while the LLM labels."""
    device: str | None = None
    """The torch device the fit runs on (None: CPU)."""
    min_human_heldout: int = 10
    """With a judge the audit did not trust (``audit=False``), this many human-labelled
    queries in the held-out share make the held-out set theirs alone, and the judge's queries
    only train and validate (0: never)."""
    exclude_outliers: bool = True
    """Drop the judge's positives for chunks judged relevant in an outlying share of pools."""
    outlier_min_pools: int = 10
    """Pools a chunk must have been in before its positive rate can be an outlier."""
    use_negatives: bool = True
    """Feed what is known not relevant (feedback's ``irrelevant_ids``, the judge's grade-0
    candidates) to the fit; their weight is chosen on validation."""
    corpus: str = "auto"
    """Where the whole-corpus ranking runs (judge pools, γ selection, held-out proof):
    ``"memory"`` reads every base vector and ranks exactly; ``"store"`` asks the wrapped store's
    own search (an HNSW index's recall carries into the figures); ``"auto"`` is memory while the
    base matrix fits ``memory_budget``, the store above."""
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    """Bytes of float32 base matrix ``corpus="auto"`` keeps in memory (default 2 GiB)."""
    audit: bool = True
    """Before judging, grade the pools of human-labelled searches with the judge and measure it
    against the people (``report.judge_audit``). A trusted judge's held-out queries join the
    people's in the proof (each graded by its own labels; a negative gain on the people's
    vetoes it: ``report.vetoed``)."""
    min_judge_precision: float = DEFAULT_MIN_PRECISION
    """A judge whose precision is significantly below this is not trusted: nothing is judged
    and the fit and the proof use the other labels (0 turns the check off)."""
    min_judge_recall: float = DEFAULT_MIN_RECALL
    """As ``min_judge_precision``, for the judge's recall of the human positives."""
    max_audit_queries: int = 200
    """Human-labelled searches the audit asks the judge about (0: no audit)."""

    def __post_init__(self) -> None:
        self._check_fit()
        self._check_labels()
        self._check_proof()
        self._check_audit()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: normalised once, here

    def _check_fit(self) -> None:
        try:
            self._set("method", Method(self.method))
        except ValueError:
            msg = f"method: found {self.method!r}, expected 'nudge-n' or 'nudge-m'."
            raise BadInputError(msg) from None
        if self.gamma is not None:  # the fit's own checks
            self._set("gamma", check_gamma(self.gamma, self.method))
        if self.selection is not None and self.selection not in list(Selection):
            msg = f"selection: found {self.selection!r}, expected 'ndcg@10' or 'top1'."
            raise BadInputError(msg)
        split = self.split
        if len(split) != 3 or min(split) < 0 or not math.isclose(sum(split), 1.0):
            msg = (
                f"split: found {split}, expected (train, validation, held-out) fractions "
                "≥ 0 that sum to 1; pass e.g. (0.6, 0.2, 0.2)."
            )
            raise BadInputError(msg)
        if split[0] == 0 or split[2] == 0:
            msg = f"split: found {split}; train and held-out need a share > 0."
            raise BadInputError(msg)
        self._set("split", tuple(split))
        self._set("use_negatives", bool(self.use_negatives))
        if self.corpus not in ("auto", "memory", "store"):
            msg = f"corpus: found {self.corpus!r}, expected 'auto', 'memory' or 'store'."
            raise BadInputError(msg)
        budget = self.memory_budget
        if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
            msg = f"memory_budget: found {budget!r}, expected bytes as an integer, e.g. 2 * 2**30."
            raise BadInputError(msg)
        self._set("memory_budget", int(budget))

    def _check_labels(self) -> None:
        if self.label_k < 1:
            msg = f"label_k: found {self.label_k}, expected ≥ 1; pass e.g. 20."
            raise BadInputError(msg)
        if self.judge_batch < 1:
            msg = f"judge_batch: found {self.judge_batch}, expected ≥ 1; pass e.g. 20."
            raise BadInputError(msg)
        if self.pools not in ("hybrid", "dense"):
            msg = f"pools: found {self.pools!r}, expected 'hybrid' or 'dense'."
            raise BadInputError(msg)
        if self.pool_depth not in ("fixed", "adaptive"):
            msg = f"pool_depth: found {self.pool_depth!r}, expected 'fixed' or 'adaptive'."
            raise BadInputError(msg)
        if self.synthetic_chunks < 0:
            msg = f"synthetic_chunks: found {self.synthetic_chunks}, expected ≥ 0."
            raise BadInputError(msg)
        if self.min_human_heldout < 0 or self.outlier_min_pools < 1:
            msg = (
                f"min_human_heldout / outlier_min_pools: found {self.min_human_heldout} / "
                f"{self.outlier_min_pools}, expected ≥ 0 / ≥ 1; pass e.g. 10 / 10."
            )
            raise BadInputError(msg)

    def _check_proof(self) -> None:
        if not 0 < self.confidence < 1:
            msg = f"confidence: found {self.confidence}, expected a level in (0, 1), e.g. 0.95."
            raise BadInputError(msg)
        n = self.n_resamples
        integral = isinstance(n, int | np.integer) and not isinstance(n, bool)
        if not integral or n < 100:
            msg = (
                f"n_resamples: found {n!r}, expected an integer ≥ 100 (bootstrap "
                "resamples behind the gain's confidence interval); pass e.g. 2000."
            )
            raise BadInputError(msg)
        self._set("min_gain", float(self.min_gain))

    def _check_audit(self) -> None:
        precision, recall = self.min_judge_precision, self.min_judge_recall
        if not all(isinstance(b, int | float) and 0.0 <= b <= 1.0 for b in (precision, recall)):
            msg = (
                f"min_judge_precision / min_judge_recall: found {precision!r} / "
                f"{recall!r}, expected shares in [0, 1]; pass e.g. 0.3 / 0.2 (0 "
                "turns that check off)."
            )
            raise BadInputError(msg)
        n = self.max_audit_queries
        if isinstance(n, bool) or not isinstance(n, int):
            msg = f"max_audit_queries: found {n!r}, expected an integer ≥ 0."
            raise BadInputError(msg)
        if n < 0:
            msg = f"max_audit_queries: found {n}, expected ≥ 0 (0: no audit)."
            raise BadInputError(msg)
        self._set("audit", bool(self.audit))
        self._set("min_judge_precision", float(precision))
        self._set("min_judge_recall", float(recall))

    @property
    def audits(self) -> bool:
        """Whether ``finetune()`` audits the judge (``audit`` and ``max_audit_queries > 0``)."""
        return self.audit and self.max_audit_queries > 0


_FIELDS = frozenset(f.name for f in dataclasses.fields(FinetuneConfig))


def resolve_config(
    config: FinetuneConfig | None, settings: Mapping[str, Any], *, who: str = "NudgeFinetuneEngine"
) -> FinetuneConfig:
    """``config``, or a :class:`FinetuneConfig` of the keyword ``settings`` (never both)."""
    if config is not None and not isinstance(config, FinetuneConfig):
        msg = (
            f"config: found {type(config).__name__}, expected a FinetuneConfig; pass "
            "config=FinetuneConfig(...) or the settings as keyword arguments."
        )
        raise BadInputError(msg)
    if config is not None and settings:
        msg = (
            f"config: found config= and the keyword settings {', '.join(sorted(settings))}; "
            "pass one or the other (dataclasses.replace(config, ...) changes a few settings)."
        )
        raise BadInputError(msg)
    if config is not None:
        return config
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        msg = (
            f"{who}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"its settings are FinetuneConfig's fields: {', '.join(sorted(_FIELDS))}."
        )
        raise TypeError(msg)
    return FinetuneConfig(**settings)
