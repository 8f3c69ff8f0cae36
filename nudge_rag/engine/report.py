"""The report of a fine-tune: held-out figures before and after with a CI of the gain, what
labelled the queries, what the LLM cost, and the new vectors ``apply`` writes."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from nudge_rag.labeling.provenance import JudgeAudit

__all__ = ["FinetuneReport", "MetricGain"]


@dataclass
class MetricGain:
    """Mean of one metric over the held-out queries, before and after, with a CI of the gain."""

    before: float
    after: float
    ci_low: float
    ci_high: float

    @property
    def gain(self) -> float:
        """``after − before``."""
        return self.after - self.before


@dataclass
class FinetuneReport:
    """What :meth:`NudgeFinetuneEngine.finetune` found; ``apply`` writes it.

    ``ndcg`` / ``recall`` are NDCG@10 / Recall@10 of the held-out queries over the whole
    corpus, each query graded by its own labels; ``proven`` is whether the NDCG@10 gain's CI
    lower bound beats ``min_gain`` and people's labels do not veto it (``vetoed``).
    ``to_dict()`` is what is stored with the version; the new vectors are not in it.
    """

    method: str
    metric: str
    gamma: float
    n_chunks: int
    rows_changed: int
    ndcg: MetricGain
    recall: MetricGain
    min_gain: float
    confidence: float
    heldout_source: str  # "traces" or "synthetic"
    queries: dict[str, int]
    labels: dict[str, int]
    cost: dict[str, int]
    seed: int
    created: float = field(default_factory=time.time)
    version: int | None = None
    suspects: dict[str, list[str]] = field(default_factory=dict)
    """Chunk ids under suspicion: ``"injection"`` (their text addresses the judge, so the
    judge never saw them), ``"outlier"`` (judged relevant in an unusual share of the pools
    they were in; their LLM positives dropped unless ``exclude_outliers=False``)."""
    heldout_by: str = ""
    """Who labelled the held-out queries: ``"feedback"`` (people), ``"llm"``,
    ``"feedback+llm"`` or ``"synthetic"``."""
    bad_traces: dict[str, str] = field(default_factory=dict)
    """Traces skipped because their query vector cannot label (trace id → zero norm, wrong
    dimension or NaN/inf; the first 1,000, all counted in ``labels["bad_traces"]``); remove
    them with ``store.delete_traces(list(report.bad_traces))``."""
    negative_weight: float = 0.0
    """λ, the weight the fit gave chunks judged not relevant (``labels["negative_pairs"]``
    counts those (query, chunk) pairs); 0 when validation preferred the fit without them."""
    corpus: str = "memory"
    """Where the whole-corpus ranking ran (judge pools, γ selection, held-out proof):
    ``"memory"`` (the base matrix, exact) or ``"store"`` (the wrapped store's own search)."""
    corpus_approximate: bool = False
    """The store answered from an approximate index (HNSW, IVF): every figure carries its
    recall."""
    corpus_stats: dict[str, int] = field(default_factory=dict)
    """What the store path asked of the store (searches, query vectors, base vectors read)."""
    judge_audit: JudgeAudit | None = None
    """The judge's agreement with human labels on human-labelled searches' pools (None: no
    judge, or no human labels to audit it with: then the proof is only as good as the judge)."""
    graded: dict[str, MetricGain] = field(default_factory=dict)
    """The held-out NDCG@10 apart by who graded each query: ``"human"`` (people's labels) and
    ``"judge"`` (model labels); ``ndcg`` is over both, each query graded by its own labels."""
    graded_queries: dict[str, int] = field(default_factory=dict)
    """Held-out queries per grader (``"human"`` / ``"judge"``)."""
    _ids: list[str] = field(default_factory=list, repr=False)
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _base_digest: str = field(default="", repr=False)

    @property
    def vetoed(self) -> bool:
        """People's labels refuse a proof that judge-graded queries carry: the held-out set
        mixes human- and judge-graded queries and the mean NDCG@10 gain on the human-graded
        ones is negative (below ``min(0, min_gain)``). A point estimate, not a test: on a few
        human queries a harmful change shows negative more often than significantly negative
        (``benchmarks/RESULTS_JUDGES.md`` measures both)."""
        human = self.graded.get("human")
        if human is None or self.proof_by != "human+judge":
            return False
        return human.gain < min(0.0, self.min_gain)

    @property
    def proven(self) -> bool:
        """Whether the NDCG@10 gain's CI lower bound is above ``min_gain``, not ``vetoed``."""
        ok = math.isfinite(self.ndcg.ci_low) and self.ndcg.ci_low > self.min_gain
        return ok and not self.vetoed

    def vectors(self) -> dict[str, np.ndarray]:
        """The new vectors by id (empty for a report read back from a version)."""
        if self._vectors is None:
            return {}
        return {i: self._vectors[n] for n, i in enumerate(self._ids)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (stored with the version ``apply`` creates)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name.startswith("_") or f.name == "version":
                continue
            value = getattr(self, f.name)
            if isinstance(value, MetricGain):
                value = asdict(value)
            elif isinstance(value, JudgeAudit):
                value = value.to_dict()
            elif f.name == "graded":
                value = {k: {**asdict(m), "gain": m.gain} for k, m in value.items()}
            out[f.name] = value
        for name in ("ndcg", "recall"):
            out[name] = {**out[name], "gain": getattr(self, name).gain}
        out["proven"] = self.proven
        out["vetoed"] = self.vetoed
        out["proof_by"] = self.proof_by
        return out

    @property
    def proof_by(self) -> str:
        """Who graded the held-out proof: ``"human"``, ``"judge"``, ``"human+judge"`` (each
        query by its own labels) or ``"synthetic"``."""
        if self.heldout_source == "synthetic":
            return "synthetic"
        return "+".join(k for k in ("human", "judge") if self.graded_queries.get(k))

    def veto_reason(self) -> str:
        """Why people's labels veto the proof (empty when they do not)."""
        if not self.vetoed:
            return ""
        h = self.graded["human"]
        return (
            f"people's labels veto it: NDCG@10 on the {self.graded_queries.get('human', 0)} "
            f"human-graded held-out queries went {h.before:.4f} -> {h.after:.4f} "
            f"({h.gain:+.4f}); the CI over all held-out queries ({self.ndcg.ci_low:+.4f} low) "
            "rests on the judge's grades"
        )

    def headline(self) -> str:
        """Who graded the proof and how far the judge can be trusted, in one or two lines."""
        a = self.judge_audit
        has_judge = self.graded_queries.get("judge", 0) > 0 or self.labels.get("llm", 0) > 0
        if a is not None:
            head = a.summary()
        elif has_judge or self.labels.get("answer", 0) or self.heldout_source == "synthetic":
            head = (
                "judge unaudited: no human labels; the proof is only as good as the judge (record "
                "feedback on some searches to audit it; `nudge-rag watch` guards an applied "
                "version with the feedback that arrives after it)"
            )
        else:
            head = "labels: human feedback only (no judge)"
        return head

    def __str__(self) -> str:
        pct = round(self.confidence * 100)
        q = self.queries
        lines = [
            f"NUDGE fine-tune: {self.method}, gamma={self.gamma:.3f}, {self.metric} store, "
            f"{self.n_chunks} chunks, {self.rows_changed} rows changed",
            self.headline(),
            f"queries: train {q.get('train', 0)}, validation {q.get('validation', 0)}, "
            f"held-out {q.get('heldout', 0)} ({self.heldout_source}"
            f"{', graded by ' + self.proof_by if self.proof_by else ''}); labeled by human "
            f"feedback {self.labels.get('feedback', 0)}, model feedback (citations) "
            f"{self.labels.get('cited', 0)}, llm {self.labels.get('llm', 0)}, synthetic "
            f"{self.labels.get('synthetic', 0)}, answer ratings {self.labels.get('answer', 0)}",
            "",
            f"{'held-out':<10}{'before':>9}{'after':>9}{'gain':>9}   {pct}% CI of the gain",
        ]
        for name, m in (("NDCG@10", self.ndcg), ("Recall@10", self.recall)):
            lines.append(
                f"{name:<10}{m.before:>9.4f}{m.after:>9.4f}{m.gain:>+9.4f}   "
                f"[{m.ci_low:+.4f}, {m.ci_high:+.4f}]"
            )
        if len(self.graded) > 1:  # both graders: their figures apart
            for who, m in self.graded.items():
                n = self.graded_queries.get(who, 0)
                lines.append(
                    f"  NDCG@10 on the {n} {who}-graded: {m.before:.4f} -> {m.after:.4f} "
                    f"({m.gain:+.4f}, CI [{m.ci_low:+.4f}, {m.ci_high:+.4f}])"
                )
        if self.proven:
            verdict = (
                f"proven: NDCG@10 CI lower bound {self.ndcg.ci_low:+.4f} > min_gain "
                f"{self.min_gain:+.4f}; engine.apply(report) will write it"
            )
        elif self.vetoed:
            verdict = "not proven: " + self.veto_reason() + "; apply refuses (force=True)"
        else:
            verdict = (
                f"not proven: NDCG@10 CI lower bound {self.ndcg.ci_low:+.4f} <= min_gain "
                f"{self.min_gain:+.4f}; apply refuses (collect more labels, or force=True)"
            )
        c = self.cost
        lines += [
            "",
            verdict,
            f"LLM: {c.get('questions', 0)} questions, {c.get('llm_calls', 0)} calls, "
            f"{c.get('cache_hits', 0)} cache hits, {c.get('retries', 0)} retries, skipped "
            f"{c.get('skipped_invalid', 0)} invalid / {c.get('skipped_failed', 0)} failed / "
            f"{c.get('skipped_budget', 0)} over budget; tokens {c.get('prompt_tokens', 0)} in, "
            f"{c.get('completion_tokens', 0)} out",
        ]
        for kind, why in (
            ("injection", "text addresses the judge; never shown to it"),
            ("outlier", "judged relevant in an outlying share of pools; LLM positives dropped"),
        ):
            flagged = self.suspects.get(kind, [])
            if flagged:
                shown = ", ".join(flagged[:5]) + (", ..." if len(flagged) > 5 else "")
                lines.append(f"suspect chunks ({why}): {len(flagged)}: {shown}")
        if self.proof_by == "human+judge":
            audited = self.judge_audit is not None and self.judge_audit.trusted
            lines.append(
                f"note: the proof grades {self.graded_queries.get('human', 0)} held-out queries "
                f"by people and {self.graded_queries.get('judge', 0)} by model labels ("
                + ("the judge the audit trusted" if audited else "unaudited")
                + "); a negative gain on the people's vetoes it."
            )
        if self.labels.get("judge_dropped", 0):
            lines.append(
                f"judge not trusted: {self.labels['judge_dropped']} searches left unjudged; the "
                "fit and the proof use human (and other) labels only."
            )
        n_bad = self.labels.get("bad_traces", 0)
        if n_bad:
            lines.append(
                f"skipped {n_bad} traces whose query vector cannot label (zero norm, wrong "
                "dimension or NaN/inf): report.bad_traces names them; "
                "store.delete_traces(list(report.bad_traces)) removes them."
            )
        if self.corpus == "store":
            lines.append(
                "corpus: ranked by the store's own search"
                + (
                    " (an approximate index: the figures carry its recall)"
                    if self.corpus_approximate
                    else " (exact)"
                )
            )
        if q.get("heldout", 0) < 30:
            lines.append(f"note: only {q.get('heldout', 0)} held-out queries; the CI is wide.")
        if self.version is not None:
            lines.append(f"applied as version {self.version}")
        return "\n".join(lines)
