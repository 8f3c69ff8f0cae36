"""Labels for NUDGE: feedback as it is, LLM judgments of candidate pools, synthetic questions.

The prompts and the answers they take are in :mod:`nudge_rag.labeling.answers`, the cache of
paid answers in :mod:`nudge_rag.labeling.cache`, the grades that feedback gives in
:mod:`nudge_rag.labeling.feedback`.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError
from nudge_rag.labeling.answers import (
    JUDGE_PROMPT_VERSION,
    QUESTIONS_PROMPT_VERSION,
    QUESTIONS_SCHEMA,
    SUPPORT_PROMPT_VERSION,
    Candidate,
    judge_messages,
    judge_schema,
    questions_messages,
    support_messages,
    validate_judgments,
    validate_questions,
)
from nudge_rag.labeling.cache import LabelCache
from nudge_rag.labeling.llm import (
    CallBudget,
    LLMClient,
    Outcome,
    RetryPolicy,
    Status,
    ask,
)

__all__ = [
    "INJECTION_PATTERNS",
    "LabelStats",
    "LabeledQuery",
    "Labeler",
    "group_traces",
    "judge_injection",
    "pool_positive_rates",
    "positive_rate_outliers",
    "query_key",
    "sample_chunks",
]

# ---------------------------------------------------------------------------------------------
# Chunks that talk to the judge

_OBJ = r"(?:this|the|these|every|each|all|any|my|our)\s+(?:\w+\s+)?"
_DOC = (
    r"(?:passages?|documents?|docs?|chunks?|texts?|results?|candidates?|snippets?|excerpts?|"
    r"articles?|entr(?:y|ies)|sources?)"
)
_HIGH = r"(?:as\s+)?(?:highly\s+|very\s+|fully\s+|most\s+|maximally\s+|extremely\s+)?"
_REL = r"(?:relevant|correct|the\s+best(?:\s+match)?|a\s+(?:2|two)\b|2\b|grade\s+2)"
_GRADE_VERB = r"(?:mark|grade|rate|label|judge|score|rank|classify|tag|flag|consider|treat)"
_AI = (
    r"(?:ai|a\.i\.|assistant|llm|language\s+model|chatbot|grader|judge|evaluator|annotator|"
    r"rater|labell?er|reranker|ranker|gpt|chatgpt|claude|gemini)"
)

INJECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.MULTILINE))  # matched against lowercased text
    for name, rx in (
        (
            "tells the reader to ignore its instructions",
            r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+|"
            r"previous\s+|prior\s+|above\s+|earlier\s+|preceding\s+|other\s+|original\s+|"
            r"user'?s?\s+|given\s+)*(?:instructions?|questions?|quer(?:y|ies)|prompts?|rules?|"
            r"directions?|guidelines?|system\s+(?:messages?|prompts?)|tasks?|grading|criteria)\b",
        ),
        (
            "orders a grade",
            rf"\b{_GRADE_VERB}\s+(?:{_OBJ}{_DOC}|everything|it|them|me|us)\s+{_HIGH}{_REL}",
        ),
        (
            "orders a grade",
            rf"\b(?:this|the)\s+{_DOC}\s+(?:is\s+to|should|must|shall|has\s+to|needs\s+to)\s+"
            rf"(?:always\s+)?(?:be\s+)?(?:marked|graded|rated|labell?ed|judged|scored|ranked|"
            rf"considered|treated|classified)\s+{_HIGH}{_REL}",
        ),
        (
            "orders a grade",
            r"\b(?:give|assign|award)\s+(?:this|it|me|us|the)\s*(?:\w+\s+)?(?:a\s+|the\s+)?"
            r"(?:grade|score|rating|relevance)\s+(?:of\s+)?(?:2|two|maximum|max|highest|full|"
            r"top)\b|\b(?:give|assign|award)\s+(?:this|it|me|us)\s+(?:a\s+|the\s+)?(?:highest|"
            r"maximum|max|top|full|best|perfect)\s+(?:grade|score|rating|relevance)\b",
        ),
        (
            "claims relevance to every query",
            r"\b(?:(?:is|are|be)\s+(?:highly\s+|always\s+)?relevant|the\s+(?:best|right)\s+"
            r"answer)\s+(?:to|for)\s+(?:every|all|any)\s+"
            r"(?:possible\s+)?(?:quer(?:y|ies)|questions?|searche?s?|users?)\b",
        ),
        (
            "addresses the model",
            rf"\b(?:note|message|instructions?|attention|reminder|memo)\s+(?:to|for)\s+(?:the\s+|"
            rf"any\s+|all\s+)?{_AI}s?\b|\b(?:dear|hey|hello|hi)\s+{_AI}\b|\b(?:you\s+are\s+"
            rf"(?:now\s+)?|act\s+as\s+|pretend\s+to\s+be\s+)an?\s+{_AI}\b|\bif\s+you\s+are\s+an?"
            rf"\s+{_AI}\b|\b{_AI}s?\s+(?:reading|grading|judging|evaluating)\s+this\b",
        ),
        (
            "carries chat role tags",
            r"<\|?(?:im_start|im_end|system|assistant|endoftext|eot_id|start_header_id)\|?>|"
            r"\[/?inst\]|<<\s*/?sys\s*>>|^\s*(?:system|assistant)\s*:|</?(?:system|"
            r"instructions?)>|#{2,}\s*(?:system|instructions?)\b",
        ),
        (
            "forges an answer",
            r"request_json|[\"']judgments[\"']\s*:|[\"']grade[\"']\s*:\s*\d",
        ),
        (
            "gives new instructions",
            r"\b(?:system\s+prompt|(?:new|updated|real|actual|hidden)\s+instructions?\s*:|"
            r"instructions?\s+(?:to|for)\s+(?:the\s+)?(?:model|grader|judge))",
        ),
    )
)
"""What :func:`judge_injection` looks for, each with the reason it reports."""

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


def judge_injection(text: str | None) -> str | None:
    """Why ``text`` looks written to steer an LLM judge, or ``None`` when it does not.

    It looks for text that addresses the grader rather than a reader: orders to ignore the
    instructions or the question, to mark or grade the passage (or everything) relevant,
    claims of relevance to every query, words to the AI / assistant / grader, chat role tags
    (``<|im_start|>``, ``[INST]``, ``system:``), forged answer JSON. Text is NFKC-normalised
    and stripped of invisible characters first. Measured false positives: 0 of 5,183 SciFact
    and 0 of 3,633 NFCorpus chunks (``tests/labeling/test_labels.py``).
    """
    if not text:
        return None
    norm = unicodedata.normalize("NFKC", text).translate(_INVISIBLE).lower()
    for reason, rx in INJECTION_PATTERNS:
        m = rx.search(norm)
        if m is not None:
            return f"{reason}: {m.group(0)[:80]!r}"
    return None


def pool_positive_rates(pools: Iterable[Mapping[str, float]]) -> dict[str, tuple[int, int]]:
    """Per chunk id, ``(positives, pools)``: in how many judged pools it was graded > 0, of
    how many it was judged in."""
    seen: dict[str, list[int]] = {}
    for grades in pools:
        for cid, grade in grades.items():
            c = seen.setdefault(cid, [0, 0])
            c[0] += grade > 0
            c[1] += 1
    return {cid: (p, n) for cid, (p, n) in seen.items()}


def positive_rate_outliers(
    pools: Iterable[Mapping[str, float]], *, min_pools: int = 10, min_rate: float = 0.5
) -> dict[str, tuple[int, int]]:
    """Chunks the judge found relevant in an outlying share of the pools they were in.

    A chunk is flagged when it was judged in at least ``min_pools`` pools and its positive
    rate ``p / n`` is at least ``min_rate`` and beyond the upper Tukey fence of the rates of
    every chunk judged that often (``Q3 + 3·IQR``). A chunk that tells a gullible judge to
    mark it relevant is positive in nearly every pool; an honest chunk, only for the few
    queries it answers.
    """
    rates = pool_positive_rates(pools)
    often = {cid: (p, n) for cid, (p, n) in rates.items() if n >= min_pools}
    if not often:
        return {}
    values = np.array([p / n for p, n in often.values()])
    q1, q3 = np.quantile(values, [0.25, 0.75])
    fence = max(min_rate, q3 + 3.0 * (q3 - q1))
    return {cid: pn for cid, pn in often.items() if pn[0] / pn[1] >= fence}


# ---------------------------------------------------------------------------------------------
# The labeler


@dataclass
class LabelStats:
    """What labeling cost and how it went (summed over every question asked)."""

    questions: int = 0
    answered: int = 0
    cache_hits: int = 0
    llm_calls: int = 0
    retries: int = 0
    invalid_answers: int = 0
    skipped_invalid: int = 0
    skipped_failed: int = 0
    skipped_budget: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


def _judge_request(
    query: str, candidates: list[Candidate]
) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    return judge_messages(query, candidates), judge_schema([c.id for c in candidates])


def _support_request(
    query: str, answer: str | None, candidates: list[Candidate]
) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    return support_messages(query, answer, candidates), judge_schema([c.id for c in candidates])


def _questions_request(
    passage: Candidate, n: int
) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    return questions_messages(passage, n), QUESTIONS_SCHEMA


def _check_judgments(ids: list[str], answer: Any) -> dict[str, int]:
    return validate_judgments(answer, ids)


def _check_questions(n: int, answer: Any) -> list[str]:
    return validate_questions(answer, n)


@dataclass
class _Job:
    key: str
    build: Callable[[], tuple[list[dict[str, str]], dict[str, Any] | None]]  # only on a miss
    validate: Callable[[Any], Any]


class Labeler:
    """Asks an LLM for judgments and questions: cached, concurrent, retried, within a budget.

    ``max_calls`` caps the HTTP requests of this labeler (retries included); once spent, the
    questions left are skipped and counted. Answers that stay invalid after
    ``policy.max_invalid`` re-asks are cached as invalid, so a rerun does not pay for them
    again (``retry_invalid=True`` asks them anew).
    """

    def __init__(
        self,
        llm: LLMClient,
        *,
        cache: LabelCache | None = None,
        concurrency: int = 4,
        max_calls: int | None = None,
        policy: RetryPolicy | None = None,
        progress: bool = True,
        retry_invalid: bool = False,
        seed: int = 0,
    ) -> None:
        if concurrency < 1:
            msg = f"concurrency: found {concurrency}, expected ≥ 1; pass e.g. 4."
            raise BadInputError(msg)
        self.llm = llm
        self.cache = cache if cache is not None else LabelCache()
        self.concurrency = concurrency
        self.budget = CallBudget(max_calls)
        self.policy = policy or RetryPolicy()
        self.progress = progress
        self.retry_invalid = retry_invalid
        self.stats = LabelStats()
        self._seed = seed

    def judge(
        self, items: Sequence[tuple[str, Sequence[Candidate]]]
    ) -> list[dict[str, int] | None]:
        """Grades ``{candidate id: 0..2}`` for each ``(query, candidates)``; ``None`` if skipped."""
        jobs = []
        for query, candidates in items:
            ids = [c.id for c in candidates]
            inputs = {"query": query, "candidates": [[c.id, c.text] for c in candidates]}
            jobs.append(
                _Job(
                    key=self.cache.key(self.llm.name, JUDGE_PROMPT_VERSION, "judge", inputs),
                    build=partial(_judge_request, query, list(candidates)),
                    validate=partial(_check_judgments, ids),
                )
            )
        return self._run("judge", JUDGE_PROMPT_VERSION, jobs, desc="judging")

    def support(
        self, items: Sequence[tuple[str, str | None, Sequence[Candidate]]]
    ) -> list[dict[str, int] | None]:
        """Grades ``{candidate id: 0..2}`` for each ``(query, answer, shown candidates)`` of a
        positively rated answer: which chunks it rests on; ``None`` if skipped."""
        jobs = []
        for query, answer, candidates in items:
            ids = [c.id for c in candidates]
            inputs = {
                "query": query,
                "answer": answer,
                "candidates": [[c.id, c.text] for c in candidates],
            }
            jobs.append(
                _Job(
                    key=self.cache.key(self.llm.name, SUPPORT_PROMPT_VERSION, "support", inputs),
                    build=partial(_support_request, query, answer, list(candidates)),
                    validate=partial(_check_judgments, ids),
                )
            )
        return self._run("support", SUPPORT_PROMPT_VERSION, jobs, desc="answer support")

    def questions(self, passages: Sequence[Candidate], n: int) -> list[list[str] | None]:
        """Up to ``n`` questions per passage; ``None`` where skipped."""
        if n < 1:
            msg = f"questions_per_chunk: found {n}, expected ≥ 1; pass e.g. 2."
            raise BadInputError(msg)
        jobs = []
        for p in passages:
            inputs = {"n": n, "passage": [p.id, p.text]}
            jobs.append(
                _Job(
                    key=self.cache.key(
                        self.llm.name, QUESTIONS_PROMPT_VERSION, "questions", inputs
                    ),
                    build=partial(_questions_request, p, n),
                    validate=partial(_check_questions, n),
                )
            )
        return self._run("questions", QUESTIONS_PROMPT_VERSION, jobs, desc="questions")

    def _run(self, kind: str, version: str, jobs: list[_Job], *, desc: str) -> list[Any]:
        from nudge_rag.progress import progress_bar

        results: list[Any] = [None] * len(jobs)
        todo: dict[str, list[int]] = {}
        self.stats.questions += len(jobs)
        for i, job in enumerate(jobs):
            hit = self.cache.get(job.key)
            if hit is not None and (hit[0] is Status.OK or not self.retry_invalid):
                self.stats.cache_hits += 1
                if hit[0] is Status.OK:
                    results[i] = hit[1]
                    self.stats.answered += 1
                else:
                    self.stats.skipped_invalid += 1
                continue
            todo.setdefault(job.key, []).append(i)  # identical questions are asked once
        if not todo:
            return results
        base_seed = self._seed

        model = self.llm.name

        def work(idx: int) -> Outcome[Any]:
            job = jobs[idx]
            rng = random.Random(f"{base_seed}:{job.key}")
            messages, schema = job.build()
            # answers paid for by a run that died before settling them; a settled INVALID
            # asked again (retry_invalid) starts afresh
            replay = [] if self.cache.get(job.key) is not None else self.cache.raw(job.key)
            return ask(
                self.llm,
                messages,
                job.validate,
                schema=schema,
                policy=self.policy,
                budget=self.budget,
                rng=rng,
                replay=replay,
                on_answer=partial(self._keep_raw, job.key, model),
            )

        bar = progress_bar(total=len(todo), desc=desc, disable=not self.progress, leave=False)
        try:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                futures = {pool.submit(work, idxs[0]): idxs for idxs in todo.values()}
                for fut in as_completed(futures):
                    idxs = futures[fut]
                    out = fut.result()
                    self._settle(kind, version, jobs[idxs[0]], out)
                    if out.status is Status.OK:
                        for i in idxs:
                            results[i] = out.value
                        self.stats.answered += len(idxs)
                    bar.update(1)
                    bar.set_postfix(calls=self.budget.used, refresh=False)
        finally:
            bar.close()
        return results

    def _keep_raw(self, key: str, model: str, text: str) -> None:
        self.cache.put_raw(key, text, model=model)

    def _settle(self, kind: str, version: str, job: _Job, out: Outcome[Any]) -> None:
        s = self.stats
        if out.calls == 0 and out.status in (Status.OK, Status.INVALID):
            s.cache_hits += 1  # settled from answers paid for earlier
        s.llm_calls += out.calls
        s.retries += out.retries
        s.invalid_answers += out.invalid_answers
        s.prompt_tokens += out.prompt_tokens
        s.completion_tokens += out.completion_tokens
        if out.status is Status.INVALID:
            s.skipped_invalid += 1
        elif out.status is Status.FAILED:
            s.skipped_failed += 1
        elif out.status is Status.BUDGET:
            s.skipped_budget += 1
        if out.status in (Status.OK, Status.INVALID):  # settled: never pay for it again
            self.cache.put(
                job.key,
                model=self.llm.name,
                prompt_version=version,
                kind=kind,
                status=out.status,
                value=out.value,
                calls=out.calls,
            )


# ---------------------------------------------------------------------------------------------
# From traces and feedback to labeled queries


@dataclass
class LabeledQuery:
    """One query with graded chunks: ``grades[id] > 0`` relevant, ``== 0`` judged not relevant."""

    key: str
    text: str | None
    embedding: np.ndarray
    grades: dict[str, float]
    source: str  # "feedback" (human) | "cited" (model feedback) | "llm" | "answer" | "synthetic"
    trace_ids: tuple[str, ...] = field(default=())

    @property
    def positives(self) -> dict[str, float]:
        """The relevant chunks and their grades."""
        return {i: g for i, g in self.grades.items() if g > 0}

    @property
    def provenance(self) -> Any:
        """Who made the label: a :class:`~nudge_rag.labeling.provenance.Provenance`."""
        from nudge_rag.labeling.provenance import SOURCE_PROVENANCE  # labeling imports core

        return SOURCE_PROVENANCE[self.source]


def query_key(text: str | None, trace_id: str) -> str:
    """Group key of a trace: its normalised query text, or its id when it has no text."""
    if text and text.strip():
        return "q:" + " ".join(text.lower().split())
    return "t:" + str(trace_id)


def group_traces(traces: Iterable[Any]) -> dict[str, list[Any]]:
    """Traces by :func:`query_key`, so that a repeated query is one labeled query."""
    groups: dict[str, list[Any]] = {}
    for t in traces:
        groups.setdefault(query_key(getattr(t, "query", None), t.id), []).append(t)
    return groups


def sample_chunks(ids: Sequence[str], n: int, *, seed: int) -> list[str]:
    """``n`` ids drawn without replacement, stable per id: each id gets a seeded hash rank,
    so a corpus that grows keeps most of its earlier sample (and its cached questions)."""
    if n <= 0:
        return []
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return ranked[:n]
