"""NudgeFinetuneEngine: label → split → fit → prove on held-out queries → apply as a version.

The engine reaches a store only through :class:`EngineStore` (what ``NudgeState`` offers), so
it works the same under the LangChain and the LlamaIndex face and never imports either.

Each :meth:`NudgeFinetuneEngine.finetune` starts from the *base* vectors of every id (no drift
compounds over rounds) and uses every label gathered so far:

1. labels — feedback on traces as it is; traces without feedback judged by the LLM over a
   candidate pool of ``label_k`` chunks (the dense top under the base vectors fused with BM25
   over the chunk texts and the chunks users marked relevant: :mod:`nudge_rag.labeling.pools`;
   chunks the user never saw can become positives); optionally synthetic questions for sampled
   chunks. LLM answers come from the label cache when they were paid for before.
2. split — by query, seeded: each query's key hashes to a fixed place in [0, 1), so a query
   keeps its split as more traces arrive. Synthetic queries only train and validate whenever
   real queries exist.
3. fit — NUDGE on the train queries, γ chosen on validation; the held-out queries never touch
   either.
4. prove — NDCG@10 and Recall@10 of the held-out queries before and after, over the whole
   corpus, with a paired bootstrap CI of the gain; each query graded by its own labels
   (people's where they exist), the human-graded and judge-graded figures reported apart, and
   a negative gain on the human-graded ones vetoes a proof (``split_labels``).

:meth:`NudgeFinetuneEngine.apply` writes the changed rows as a new version (and puts rows that
an earlier version nudged but this fit does not back to base), storing the report with it; it
refuses unless the CI's lower bound beats ``min_gain`` and people's labels do not veto it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from nudge_rag.engine.config import FinetuneConfig, resolve_config
from nudge_rag.engine.report import FinetuneReport, MetricGain
from nudge_rag.errors import BadInputError, GainNotProvenError, NudgeError
from nudge_rag.fit.corpus import (
    Corpus,
    MemoryCorpus,
    StoreCorpus,
    choose_corpus,
    normalize_rows,
)
from nudge_rag.fit.metrics import RelevanceTable, exact_knn, ndcg_at_k, recall_at_k
from nudge_rag.fit.nudge import NudgeResult, finetune_embeddings
from nudge_rag.fit.stats import paired_bootstrap
from nudge_rag.labeling.cache import LabelCache
from nudge_rag.labeling.feedback import AnswerRating, answer_ratings, feedback_grades
from nudge_rag.labeling.labeler import (
    Candidate,
    LabeledQuery,
    Labeler,
    LabelStats,
    judge_injection,
    positive_rate_outliers,
    query_key,
    sample_chunks,
)
from nudge_rag.labeling.llm import as_llm
from nudge_rag.labeling.pools import (
    DepthPlan,
    LexicalCache,
    LexicalLeg,
    PoolStats,
    deep_pools,
    lexical_available,
    store_text_search,
)
from nudge_rag.labeling.provenance import (
    SOURCE_PROVENANCE,
    JudgeAudit,
    Provenance,
    audit_judge,
)
from nudge_rag.state.traces.log import embedding_problem
from nudge_rag.state.versions.log import check_metric
from nudge_rag.stores.base import Metric

__all__ = ["EngineStore", "NudgeFinetuneEngine", "resolve_store", "search", "split_point"]

log = logging.getLogger(__name__)

K = 10
_BAD_LISTED = 1000  # bad trace ids a report names (all are counted)

_STORE_METHODS = (
    "ids",
    "get_vectors",
    "base_vectors",
    "traces",
    "feedback",
    "apply_vectors",
    "rollback",
    "versions",
    "embed_queries",
    "texts",
)


class EngineStore(Protocol):
    """What the engine needs from a store; ``NudgeState`` (``face.nudge_state``) has it."""

    metric: Metric

    def ids(self) -> list[str]: ...
    def get_vectors(self, ids: Sequence[str]) -> np.ndarray: ...
    def base_vectors(self, ids: Sequence[str]) -> np.ndarray: ...
    def traces(self, **kw: Any) -> list[Any]: ...
    def feedback(self, trace_id: str | None = None) -> list[Any]: ...
    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...
    def texts(self, ids: Sequence[str]) -> list[str | None]: ...
    def apply_vectors(
        self,
        vectors: Mapping[str, np.ndarray],
        *,
        note: str | None = None,
        method: str | None = None,
        gamma: float | None = None,
        report: dict | None = None,
        from_base: bool = False,
    ) -> int: ...
    def rollback(self, version: int | None = None) -> int: ...
    def versions(self) -> list[Any]: ...


def resolve_store(store: Any) -> EngineStore:
    """The :class:`EngineStore` behind ``store``: a face's ``nudge_state``, or ``store`` itself."""
    state = getattr(store, "nudge_state", None) or store
    missing = [m for m in (*_STORE_METHODS, "metric") if not hasattr(state, m)]
    if missing:
        msg = (
            f"store: found {type(store).__name__} without {', '.join(missing)}; expected a "
            "NudgedVectorStore (LangChain or LlamaIndex face) or its .nudge_state."
        )
        raise BadInputError(msg)
    return state


# ---------------------------------------------------------------------------------------------
# Small pure helpers


def _queries(qs: Sequence[LabeledQuery]) -> np.ndarray:
    """The queries' embeddings as one float32 matrix."""
    return np.stack([q.embedding for q in qs]).astype(np.float32)


def _check_splits(
    usable: list[LabeledQuery],
    train: list[LabeledQuery],
    val: list[LabeledQuery],
    test: list[LabeledQuery],
    counts: dict[str, int],
) -> None:
    """Refuse a fit without a query in each of train, validation and held-out."""
    if train and val and test:
        return
    msg = (
        f"labels: found {len(usable)} labeled queries with a positive (train "
        f"{len(train)}, validation {len(val)}, held-out {len(test)}), expected at least "
        "one in each split; record more searches and feedback, pass llm=... to judge "
        "traces, or synthetic_chunks=... for a cold start."
    )
    if counts["answer_unjudged"]:
        msg += (
            f" {counts['answer_unjudged']} queries have only a positive answer rating: "
            "pass llm=... so the judge picks the chunks those answers rest on."
        )
    raise NudgeError(msg)


def _is_human(q: LabeledQuery) -> bool:
    return SOURCE_PROVENANCE.get(q.source) is Provenance.HUMAN


def _provenance(feedback: Any) -> Provenance:
    """A feedback row's provenance (rows of a custom store without one: human)."""
    return Provenance.parse(getattr(feedback, "provenance", None))


def split_point(seed: int, key: str) -> float:
    """Where a query key falls in [0, 1) for the seeded split (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _digest(mat: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mat, dtype=np.float32).tobytes()).hexdigest()


def search(queries: np.ndarray, vectors: np.ndarray, k: int, metric: Metric) -> np.ndarray:
    """Top-``k`` row indices per query under the store's ``metric`` (exact)."""
    return exact_knn(queries, vectors, k, metric=metric)[1]


def _trace_reader(state: Any) -> Callable[..., Iterable[Any]]:
    """``iter_traces(*, ids=None, with_embeddings=True)`` of the store's trace log, paged.

    A store without one (a custom :class:`EngineStore`) gets a stand-in over ``traces()``.
    """
    for owner in (state, getattr(state, "trace_log", None)):
        fn = getattr(owner, "iter_traces", None)
        if callable(fn):
            return fn

    def from_list(*, ids: Iterable[str] | None = None, with_embeddings: bool = True) -> list:
        wanted = None if ids is None else set(ids)
        return [t for t in state.traces() if wanted is None or str(t.id) in wanted]

    return from_list


class _TraceGroup:
    """The traces of one query (its key), without embeddings: (time, id) and its text."""

    __slots__ = ("members", "text", "text_time")

    def __init__(self) -> None:
        self.members: list[tuple[float, str]] = []
        self.text: str | None = None
        self.text_time = math.inf

    def add(self, time: float, trace_id: str, query: str | None) -> None:
        self.members.append((time, trace_id))
        if query and time < self.text_time:  # the earliest wording of the query
            self.text, self.text_time = query, time

    def ids(self) -> tuple[str, ...]:
        """Trace ids, oldest first."""
        return tuple(i for _, i in sorted(self.members, key=lambda m: m[0]))

    def latest_first(self) -> list[str]:
        return list(reversed(self.ids()))

    def grades(self, by_trace: Mapping[str, dict[str, float]]) -> dict[str, float]:
        """Feedback grades of the group's traces, in time order (a later verdict wins)."""
        out: dict[str, float] = {}
        for tid in self.ids():
            out.update(by_trace.get(tid, {}))
        return out


# ---------------------------------------------------------------------------------------------
# The engine


class NudgeFinetuneEngine:
    """Fine-tune a wrapped store's chunk embeddings from its own usage, with held-out proof.

    Setup:
        Wrap a store with either face (``nudge_rag.langchain`` / ``nudge_rag.llama_index``),
        let users search (each search is a trace), record feedback where you have it.

    Key init args:
        store: a ``NudgedVectorStore`` of either face, or its ``.nudge_state``.
        llm: ``None`` (feedback labels only), an ``openai.OpenAI`` client (with
            ``llm_model=``), a LangChain ``BaseChatModel`` or a LlamaIndex ``LLM``.
        config: a :class:`~nudge_rag.engine.config.FinetuneConfig`, or its fields as keyword
            arguments (not both); checked here, before any LLM call. The ones most often set:
            ``method`` (``"nudge-n"``, or ``"nudge-m"`` on inner-product stores), ``label_k`` /
            ``pools`` (the candidate pool the judge grades per query), ``synthetic_chunks``
            (cold start), ``min_gain`` (the bar ``apply`` needs the CI lower bound above),
            ``max_calls`` (a cap on LLM requests), ``corpus`` (``"memory"``, ``"store"`` or
            ``"auto"``: where the whole-corpus ranking runs), ``audit`` (measure the judge
            against human labels first and drop it when it is significantly poor).

    Use:
        .. code-block:: python

            engine = NudgeFinetuneEngine(store, llm=openai.OpenAI(), llm_model="gpt-4o-mini")
            report = engine.finetune()     # nothing is written yet
            print(report)                  # before/after on held-out queries, CI, counts, cost
            version = engine.apply(report) # refuses unless the gain is proven (force=True)
            engine.rollback()              # back to the previous version, exactly
    """

    def __init__(
        self, store: Any, llm: Any = None, *, config: FinetuneConfig | None = None, **settings: Any
    ) -> None:
        self.state = resolve_store(store)
        self.metric = Metric(self.state.metric)
        self._config = resolve_config(config, settings)
        check_metric(self.config.method.value, self.metric)  # fail before any LLM call is paid for
        self.llm = as_llm(llm, model=self.config.llm_model)
        self.last_audit: JudgeAudit | None = None
        self._suspects: dict[str, list[str]] = {}
        self._cache: LabelCache | None = None  # opened on first use: see ``cache``
        self.last_report: FinetuneReport | None = None
        self.last_labels: list[LabeledQuery] = []
        self.last_bad_traces: dict[str, str] = {}  # trace id -> why its vector was skipped
        self.last_pool_stats = PoolStats()  # what the last judge pools cost and brought in
        self._liked: list[str] = []  # chunks users marked relevant (the pools' feedback leg)
        self._lexical = LexicalCache()  # the BM25 index, kept while the chunks are unchanged

    @property
    def config(self) -> FinetuneConfig:
        """The engine's settings (frozen; build another engine to change them)."""
        return self._config

    @property
    def cache(self) -> LabelCache:
        """The label cache (``cache_path``, else the state's ``labels`` part), opened on first
        use: an engine over a store that turns out not to be its log's creates nothing."""
        if self._cache is None:
            path = self.config.cache_path
            if path is None:
                part = getattr(self.state, "part", None)  # the state's label cache (file or schema)
                path = part("labels") if callable(part) else None
            self._cache = LabelCache(path)
        return self._cache

    # -- labels ---------------------------------------------------------------------------------

    def _labeler(self) -> Labeler | None:
        if self.llm is None:
            return None
        return Labeler(
            self.llm,
            cache=self.cache,
            concurrency=self.config.concurrency,
            max_calls=self.config.max_calls,
            policy=self.config.retry,
            progress=self.config.progress,
            seed=self.config.seed,
        )

    def collect_labels(
        self, corpus: Corpus, labeler: Labeler | None, counts: dict[str, int]
    ) -> list[LabeledQuery]:
        """Every labeled query so far: feedback, LLM judgments of traces, synthetic questions.

        Traces are streamed in pages without their embeddings (memory stays flat however many
        are stored); only the embedding of the trace standing for each labeled query, its
        latest good one, is read. A trace whose vector cannot be a query (zero norm, wrong
        dimension, NaN or inf) is skipped and counted; ``self.last_bad_traces`` names it.
        """
        for name in ("answer_unjudged", "withheld_answers", "outlier_chunks"):
            counts.setdefault(name, 0)
        feedback = self.state.feedback()
        by_trace = feedback_grades(f for f in feedback if _provenance(f) is Provenance.HUMAN)
        by_model = feedback_grades(f for f in feedback if _provenance(f) is Provenance.MODEL)
        self._liked = sorted({i for g in by_trace.values() for i, v in g.items() if v > 0})
        rated = answer_ratings(feedback)
        liked = {t for t, r in rated.items() if r.positive}  # answers rated helpful
        counts["answer_positive"] = len(liked)
        counts["answer_negative"] = len(rated) - len(liked)  # kept and counted, never a label
        read = _trace_reader(self.state)
        counts.setdefault("bad_traces", 0)
        self.last_bad_traces = {}
        keep = None  # without a judge only the queries that have feedback can be labeled
        if labeler is None:
            fed = read(ids=[*by_trace, *by_model], with_embeddings=False)
            keep = {query_key(t.query, t.id) for t in fed}
        groups: dict[str, _TraceGroup] = {}
        others = array("q")  # 8-byte hashes of the other queries' keys, to count them
        n_traces = 0
        for t in read(with_embeddings=False):
            n_traces += 1
            key = query_key(t.query, t.id)
            if keep is not None and key not in keep:
                others.append(hash(key))
                continue
            group = groups.get(key)
            if group is None:
                group = groups[key] = _TraceGroup()
            group.add(t.time, str(t.id), t.query)
        counts["traces"] = n_traces
        counts["unlabeled_traces"] += len(np.unique(np.frombuffer(others, dtype=np.int64)))
        chosen: list[tuple[str, _TraceGroup, dict[str, float], str]] = []
        for key, group in groups.items():
            grades = group.grades(by_trace)
            cited = group.grades(by_model)
            if any(g > 0 for g in grades.values()):
                chosen.append((key, group, grades, "feedback"))
            elif any(g > 0 for g in cited.values()):  # model-made feedback (citations)
                chosen.append((key, group, {**cited, **grades}, "cited"))
            elif any(tid in liked for _, tid in group.members):
                if labeler is not None and group.text:  # the judge picks what the answer used
                    chosen.append((key, group, grades, "answer"))
                else:
                    counts["answer_unjudged"] += 1
                    counts["unlabeled_traces"] += 1
            elif labeler is not None and group.text:
                chosen.append((key, group, grades, "llm"))
            else:
                counts["unlabeled_traces"] += 1
        embs = self._query_embeddings([g.latest_first() for _, g, _, _ in chosen], corpus.shape[1])
        counts["bad_traces"] += len(self.last_bad_traces)
        out: list[LabeledQuery] = []
        to_judge: list[tuple[str, str, np.ndarray, tuple[str, ...], dict[str, float]]] = []
        to_support: list[tuple[str, str, np.ndarray, tuple[str, ...], dict[str, float]]] = []
        for (key, group, grades, source), emb in zip(chosen, embs, strict=True):
            if emb is None:  # every trace of the query is bad (counted)
                continue
            tids = group.ids()
            if source in ("feedback", "cited"):
                out.append(LabeledQuery(key, group.text, emb, grades, source, tids))
            else:
                (to_support if source == "answer" else to_judge).append(
                    (key, str(group.text), emb, tids, grades)
                )
        self.last_audit = None
        if labeler is not None and self.config.audits and (to_judge or to_support):
            self.last_audit = self._audit(
                [q for q in out if q.source == "feedback"], corpus, labeler
            )
        if self.last_audit is not None and not self.last_audit.trusted:
            counts["judge_dropped"] = len(to_judge) + len(to_support)  # never judged
            to_judge, to_support = [], []
        if to_support and labeler is not None:
            out += self._judge_support(to_support, liked, rated, labeler, counts)
        if to_judge and labeler is not None:
            out += self._judge(to_judge, corpus, labeler, counts)
        if self.config.synthetic_chunks and labeler is not None:
            out += self._synthesize(corpus.all_ids(), labeler, counts)
        return out

    def _query_embeddings(self, candidates: list[list[str]], dim: int) -> list[np.ndarray | None]:
        """Per query, the embedding of its first good trace of ``candidates`` (latest first).

        Reads only those traces' embeddings, a batch per round; a bad one is recorded in
        ``self.last_bad_traces`` (id → reason) and the query's next trace is tried.
        """
        read = _trace_reader(self.state)
        out: list[np.ndarray | None] = [None] * len(candidates)
        at = [0] * len(candidates)
        pending = [q for q, c in enumerate(candidates) if c]
        while pending:
            asked = {candidates[q][at[q]]: q for q in pending}
            got = {str(t.id): t.embedding for t in read(ids=list(asked), with_embeddings=True)}
            pending = []
            for tid, q in asked.items():
                emb = got.get(tid)
                if emb is not None:
                    emb = np.asarray(emb, dtype=np.float32).reshape(-1)
                    problem = embedding_problem(emb, dim)
                    if problem is None:
                        out[q] = emb
                        continue
                    self.last_bad_traces[tid] = problem
                at[q] += 1  # a bad trace, or one deleted meanwhile: try the query's next one
                if at[q] < len(candidates[q]):
                    pending.append(q)
        return out

    def _audit(
        self, human: Sequence[LabeledQuery], corpus: Corpus, labeler: Labeler
    ) -> JudgeAudit | None:
        """Ask the judge about (up to ``max_audit_queries``) human-labelled searches over the
        pools it would see, and score it against the people (None without any)."""
        asked = [q for q in human if q.text]
        if not asked:
            return None
        asked.sort(
            key=lambda q: split_point(self.config.seed + 1, q.key)
        )  # a seeded, stable sample
        asked = asked[: self.config.max_audit_queries]
        no_grades: dict[str, float] = {}
        groups = [(q.key, str(q.text), q.embedding, q.trace_ids, no_grades) for q in asked]
        before = labeler.stats.to_dict()
        scratch: dict[str, int] = dict.fromkeys(("withheld_candidates", "no_candidate_text"), 0)
        judged = self._judge_grades(groups, corpus, labeler, scratch)
        after = labeler.stats.to_dict()
        return audit_judge(
            ((judged[g], q.grades) for g, q in enumerate(asked) if g in judged),
            min_precision=self.config.min_judge_precision,
            min_recall=self.config.min_judge_recall,
            confidence=self.config.confidence,
            judge_calls=after["llm_calls"] - before["llm_calls"],
            prompts=after["questions"] - before["questions"],
            skipped=len(asked) - len(judged),
        )

    def _judge(
        self,
        groups: list[tuple[str, str, np.ndarray, tuple[str, ...], dict[str, float]]],
        corpus: Corpus,
        labeler: Labeler,
        counts: dict[str, int],
    ) -> list[LabeledQuery]:
        judged = self._judge_grades(groups, corpus, labeler, counts)
        return self._judged_labels(judged, groups, counts, "llm")

    def _judge_grades(
        self,
        groups: list[tuple[str, str, np.ndarray, tuple[str, ...], dict[str, float]]],
        corpus: Corpus,
        labeler: Labeler,
        counts: dict[str, int],
    ) -> dict[int, dict[str, float]]:
        """The judge's grades of each group's candidate pool (by group index; a group whose
        prompts were all skipped is absent)."""
        queries = np.stack([g[2] for g in groups]).astype(np.float32)
        texts = [g[1] for g in groups]
        plan = self._depth_plan()
        if plan is None:
            pools = self._pools(corpus, queries, texts, counts)
            counts["pool_candidates"] = sum(map(len, pools))
            return self._grade(groups, pools, labeler, counts)
        # adaptive depth: a reserve of 3 × label_k per query, judged a wave at a time
        label_k = self.config.label_k
        order = self._pools(corpus, queries, texts, counts, depth=3 * label_k)
        depth = [min(plan.first, len(o)) for o in order]
        judged = self._grade(
            groups, [o[:d] for o, d in zip(order, depth, strict=True)], labeler, counts
        )
        left = plan.budget(len(groups)) - sum(depth)
        while True:
            hits = [
                [judged.get(g, {}).get(i, 0.0) > 0 for i in o[:d]]
                for g, (o, d) in enumerate(zip(order, depth, strict=True))
            ]
            wave = plan.next_wave(hits, depth, [len(o) for o in order], left)
            if not wave:
                break
            more = {g: order[g][depth[g] : depth[g] + n] for g, n in wave.items()}
            for g, n in wave.items():
                depth[g] += n
            left -= sum(wave.values())
            scratch = dict(counts)  # a deeper slice without text is no query without any
            asked = list(more)
            got = self._grade([groups[g] for g in asked], list(more.values()), labeler, scratch)
            counts["withheld_candidates"] = scratch["withheld_candidates"]
            for n, grades in got.items():
                judged.setdefault(asked[n], {}).update(grades)
        counts["pool_candidates"] = sum(depth)
        counts["pool_deepened"] = sum(d > label_k for d in depth)
        return judged

    def _depth_plan(self) -> DepthPlan | None:
        """The adaptive depth's plan (``pool_depth="adaptive"``), else None."""
        if self.config.pool_depth != "adaptive":
            return None
        k = self.config.label_k
        return DepthPlan(k, first=max(1, k // 2), step=max(1, k // 4))

    def _grade(
        self,
        groups: list[tuple[str, str, np.ndarray, tuple[str, ...], dict[str, float]]],
        pools: list[list[str]],
        labeler: Labeler,
        counts: dict[str, int],
    ) -> dict[int, dict[str, float]]:
        """The judge's grades of each group's candidates ``pools[g]`` (by group index)."""
        wanted_ids = sorted({i for pool in pools for i in pool})
        text_of = dict(zip(wanted_ids, self.state.texts(wanted_ids), strict=True))
        injected = self._withhold_injections(text_of)
        items: list[tuple[str, list[Candidate]]] = []
        owner: list[int] = []  # which group each prompt belongs to
        for g, ((_, text, *_rest), pool) in enumerate(zip(groups, pools, strict=True)):
            shown = [i for i in pool if text_of.get(i)]
            cands = [Candidate(i, str(text_of[i])) for i in shown if i not in injected]
            counts["withheld_candidates"] += len(shown) - len(cands)
            if not cands:
                counts["no_candidate_text"] += 1
            for start in range(0, len(cands), self.config.judge_batch):
                items.append((text, cands[start : start + self.config.judge_batch]))
                owner.append(g)
        judged: dict[int, dict[str, float]] = {}
        for g, grades in zip(owner, labeler.judge(items), strict=True):
            if grades is not None:  # a skipped prompt leaves its candidates unjudged (counted)
                judged.setdefault(g, {}).update({i: float(v) for i, v in grades.items()})
        return judged

    def _pools(
        self,
        corpus: Corpus,
        queries: np.ndarray,
        texts: list[str],
        counts: dict[str, int],
        *,
        depth: int = 0,
    ) -> list[list[str]]:
        """The judge's candidate ids per query (``label_k`` each; see ``pools=``); with
        ``depth``, up to that many in judging order (:func:`deep_pools`)."""
        stats = self.last_pool_stats = PoolStats()
        lexical: LexicalLeg | None = None
        text_search = store_text_search(getattr(self.state, "adapter", None))
        if self.config.pools == "hybrid" and corpus.kind == "store" and text_search is not None:
            lexical, stats.lexical_kind = text_search, "store"  # e.g. Postgres full-text
        elif self.config.pools == "hybrid":
            if lexical_available():
                stats.lexical_kind = "bm25s"
                # every chunk's text, streamed from the store a batch at a time; sorted ids
                # give the memory and the store path the same index
                lexical = self._lexical.index(sorted(corpus.all_ids()), self.state.texts, stats)
            else:
                log.info(
                    "pools='hybrid': bm25s is not installed, so the judge's pools have no "
                    "lexical leg (pip install 'nudge-rag[lexical]')."
                )
        liked = self._liked if self.config.pools == "hybrid" else []
        pools = deep_pools(
            corpus,
            queries,
            texts,
            self.config.label_k,
            max(depth, self.config.label_k),
            lexical=lexical,
            liked=liked,
            stats=stats,
        )
        counts["pool_lexical_added"] = stats.lexical_added
        counts["pool_feedback_added"] = stats.feedback_added
        return pools

    def _judge_support(
        self,
        groups: list[tuple[str, str, np.ndarray, tuple[str, ...], dict[str, float]]],
        liked: set[str],
        rated: Mapping[str, AnswerRating],
        labeler: Labeler,
        counts: dict[str, int],
    ) -> list[LabeledQuery]:
        """Label the queries whose answer a user rated helpful without citing chunks: the judge
        reads each such search's query, answer and shown chunks and grades which the answer
        rests on. Same cache, budget and injection rules as :meth:`_judge`; an answer whose
        text addresses the judge is withheld with its search (counted)."""
        wanted = [t for g in groups for t in g[3] if t in liked]
        shown = {str(t.id): t for t in _trace_reader(self.state)(ids=wanted, with_embeddings=False)}
        chunk_ids = sorted({i for t in shown.values() for i in t.result_ids})
        text_of = dict(zip(chunk_ids, self.state.texts(chunk_ids), strict=True))
        injected = self._withhold_injections(text_of)
        items: list[tuple[str, str | None, list[Candidate]]] = []
        owner: list[int] = []
        for g, (_, text, _emb, tids, _fb) in enumerate(groups):
            for tid in tids:
                trace = shown.get(tid)
                if tid not in liked or trace is None:
                    continue
                answer = rated[tid].answer
                if answer and judge_injection(answer) is not None:
                    counts["withheld_answers"] += 1
                    continue
                texted = [i for i in trace.result_ids if text_of.get(i)]
                cands = [Candidate(i, str(text_of[i])) for i in texted if i not in injected]
                counts["withheld_candidates"] += len(texted) - len(cands)
                if not cands:
                    counts["no_candidate_text"] += 1
                for start in range(0, len(cands), self.config.judge_batch):
                    batch = cands[start : start + self.config.judge_batch]
                    items.append((trace.query or text, answer, batch))
                    owner.append(g)
        judged: dict[int, dict[str, float]] = {}
        for g, grades in zip(owner, labeler.support(items), strict=True):
            if grades is not None:  # several rated searches of one query: the best grade wins
                mine = judged.setdefault(g, {})
                for i, v in grades.items():
                    mine[i] = max(mine.get(i, 0.0), float(v))
        return self._judged_labels(judged, groups, counts, "answer")

    def _judged_labels(
        self,
        judged: Mapping[int, dict[str, float]],
        groups: list[tuple[str, str, np.ndarray, tuple[str, ...], dict[str, float]]],
        counts: dict[str, int],
        source: str,
    ) -> list[LabeledQuery]:
        """The judged groups as labels: outlier chunks (a positive rate no query pool
        explains) graded 0 when excluded, the user's own verdicts over the judge's."""
        outliers = positive_rate_outliers(judged.values(), min_pools=self.config.outlier_min_pools)
        self._suspects["outlier"] = sorted(set(self._suspects.get("outlier", [])) | set(outliers))
        counts["outlier_chunks"] += len(outliers)
        out = []
        for g, merged in sorted(judged.items()):
            key, text, emb, tids, fb = groups[g]
            if self.config.exclude_outliers:
                merged = {i: (0.0 if i in outliers else v) for i, v in merged.items()}
            merged.update(fb)  # the user's own verdicts win over the judge
            out.append(LabeledQuery(key, text, emb, merged, source, tids))
        return out

    def _withhold_injections(self, text_of: Mapping[str, str | None]) -> set[str]:
        """The ids whose text addresses the judge (:func:`judge_injection`): never shown to
        it, counted and listed in the report."""
        flagged = {i for i, t in text_of.items() if t and judge_injection(t) is not None}
        self._suspects["injection"] = sorted(set(self._suspects.get("injection", [])) | flagged)
        return flagged

    def _synthesize(
        self, ids: list[str], labeler: Labeler, counts: dict[str, int]
    ) -> list[LabeledQuery]:
        chosen = sample_chunks(ids, self.config.synthetic_chunks, seed=self.config.seed)
        texts = self.state.texts(chosen)
        injected = self._withhold_injections(dict(zip(chosen, texts, strict=True)))
        passages = [Candidate(i, t) for i, t in zip(chosen, texts, strict=True) if t]
        counts["no_candidate_text"] += len(chosen) - len(passages)
        counts["withheld_candidates"] += sum(p.id in injected for p in passages)
        passages = [p for p in passages if p.id not in injected]
        answers = labeler.questions(passages, self.config.questions_per_chunk)
        pairs = [(p.id, q) for p, qs in zip(passages, answers, strict=True) if qs for q in qs]
        if not pairs:
            return []
        embs = self.state.embed_queries([q for _, q in pairs])
        return [
            LabeledQuery(
                f"s:{cid}:{' '.join(q.lower().split())}", q, embs[n], {cid: 1.0}, "synthetic"
            )
            for n, (cid, q) in enumerate(pairs)
        ]

    # -- split ----------------------------------------------------------------------------------

    def split_labels(
        self, labeled: Sequence[LabeledQuery], *, judge_trusted: bool | None = None
    ) -> tuple[list[LabeledQuery], list[LabeledQuery], list[LabeledQuery], str]:
        """(train, validation, held-out, held-out source), by each query key's seeded hash.

        Every real query in the held-out share is held out, graded by its own labels (people's
        where it has them), unless the judge is unchecked: when it was not audited and trusted
        (``judge_trusted``; None reads ``self.last_audit``: audit off, or no audit made) and at
        least ``min_human_heldout`` human-labelled queries fall in the held-out share, the
        held-out set is those alone and model-labelled queries only train and validate, so the
        proof never trusts a judge nobody checked. A trusted judge's held-out queries stay in
        the proof next to the people's, which veto it when their own gain is negative
        (:attr:`FinetuneReport.vetoed`): a few dozen human labels are too few for a CI alone.
        """
        if judge_trusted is None:
            judge_trusted = self.last_audit is not None and self.last_audit.trusted
        tr_f, va_f, _ = self.config.split
        real = [q for q in labeled if q.source != "synthetic"]
        synth = [q for q in labeled if q.source == "synthetic"]
        human = [q for q in real if q.source == "feedback"]
        human_heldout = sum(split_point(self.config.seed, q.key) >= tr_f + va_f for q in human)
        human_only = (
            not judge_trusted
            and self.config.min_human_heldout > 0
            and human_heldout >= self.config.min_human_heldout
            and len(human) < len(real)
        )
        train: list[LabeledQuery] = []
        val: list[LabeledQuery] = []
        test: list[LabeledQuery] = []
        three_way = human if human_only else real if real else synth
        two_way = ([q for q in real if q.source != "feedback"] if human_only else []) + (
            synth if real else []
        )
        for q in three_way:
            u = split_point(self.config.seed, q.key)
            (train if u < tr_f else val if u < tr_f + va_f else test).append(q)
        share = tr_f / (tr_f + va_f)
        for q in two_way:
            (train if split_point(self.config.seed, q.key) < share else val).append(q)
        return train, val, test, "traces" if real else "synthetic"

    # -- finetune -------------------------------------------------------------------------------

    def open_corpus(self) -> Corpus:
        """The corpus ``finetune()`` ranks against (``corpus=``): the base matrix in memory,
        or the wrapped store's own search (:mod:`nudge_rag.fit.corpus`)."""
        cosine = self.metric is Metric.COSINE
        if choose_corpus(self.config.corpus, self.state, self.config.memory_budget) == "store":
            corpus: Corpus = StoreCorpus(self.state, normalize=cosine)
            empty = corpus.shape[0] == 0
        else:
            read_all = getattr(self.state, "base_matrix", None)
            if read_all is not None:  # one pass, a fresh matrix
                ids, base = read_all()
            else:
                ids = list(self.state.ids())
                base = self.state.base_vectors(ids) if ids else np.zeros((0, 0))
            empty = not ids
            if ids:
                base = np.asarray(base, dtype=np.float32)
                # ranked as NUDGE ranks (unit rows for cosine); a fresh matrix is normalised in
                # place: the base as stored is not needed again, and a second N×d matrix is
                # what limits N on this path
                fresh = read_all is not None
                fit = normalize_rows(base, in_place=fresh) if cosine else base
                corpus = MemoryCorpus(fit, ids=ids, metric=self.metric)
        if empty:
            msg = "store: it holds no chunks; add documents before fine-tuning."
            raise NudgeError(msg)
        return corpus

    def finetune(self) -> FinetuneReport:
        """Label, split, fit from the base vectors and evaluate on held-out queries.

        Nothing is written to the store; pass the report to :meth:`apply`. The steps: check
        the store is the log's, label (:meth:`collect_labels`), keep the labels the corpus can
        use, split (:meth:`split_labels`), fit (:func:`finetune_embeddings`), prove on the
        held-out queries, report.
        """
        check_store = getattr(self.state, "check_store", None)
        if check_store is not None:  # a store that is not the log's: refuse before reading
            check_store()
        corpus = self.open_corpus()
        labeler = self._labeler()
        counts = dict.fromkeys(
            ("traces", "unlabeled_traces", "no_candidate_text", "unknown_ids", "no_positive"), 0
        )
        counts.update(injected_chunks=0, withheld_candidates=0, outlier_chunks=0)
        counts.update(answer_positive=0, answer_negative=0, answer_unjudged=0, withheld_answers=0)
        counts.update(judge_dropped=0)
        self._suspects = {}
        labeled = self.collect_labels(corpus, labeler, counts)
        counts["injected_chunks"] = len(self._suspects.get("injection", []))
        usable, row_of = self._usable(corpus, labeled, counts)
        self.last_labels = usable
        train, val, test, source = self.split_labels(usable)
        _check_splits(usable, train, val, test, counts)
        res = self._fit(corpus, train, val, row_of, counts)
        gains, graded, graded_queries = self._prove(corpus, test, row_of, res, source)
        sources = {"feedback": 0, "cited": 0, "llm": 0, "synthetic": 0, "answer": 0}
        for q in usable:
            sources[q.source] += 1
        stats = labeler.stats if labeler is not None else LabelStats()
        changed_ids = corpus.ids_of(res.rows)
        report = FinetuneReport(
            method=self.config.method.value,
            metric=self.metric.value,
            gamma=float(res.gamma),
            n_chunks=corpus.shape[0],
            rows_changed=len(changed_ids),
            ndcg=gains["ndcg"],
            recall=gains["recall"],
            min_gain=self.config.min_gain,
            confidence=self.config.confidence,
            heldout_source=source,
            heldout_by="+".join(sorted({q.source for q in test})),
            queries={"train": len(train), "validation": len(val), "heldout": len(test)},
            labels={**sources, **counts},
            cost=stats.to_dict(),
            seed=self.config.seed,
            suspects={k: list(v) for k, v in self._suspects.items() if v},
            bad_traces=dict(list(self.last_bad_traces.items())[:_BAD_LISTED]),
            negative_weight=res.negative_weight,
            _ids=changed_ids,
            _vectors=res.vectors,
            corpus=corpus.kind,
            corpus_approximate=corpus.approximate,
            corpus_stats=corpus.stats.to_dict() if isinstance(corpus, StoreCorpus) else {},
            judge_audit=self.last_audit,
            graded=graded,
            graded_queries=graded_queries,
            _base_digest=_digest(
                self.state.base_vectors(changed_ids) if changed_ids else np.zeros(0)
            ),
        )
        self.last_report = report
        return report

    def _usable(
        self, corpus: Corpus, labeled: list[LabeledQuery], counts: dict[str, int]
    ) -> tuple[list[LabeledQuery], dict[str, int]]:
        """The labelled queries with a positive among the chunks the corpus holds (their
        grades cut to those chunks), and each held chunk's corpus row."""
        held = sorted(corpus.known({i for q in labeled for i in q.grades}))
        row_of = dict(zip(held, corpus.rows_of(held).tolist(), strict=True))
        usable = []
        for q in labeled:
            known = {i: g for i, g in q.grades.items() if i in row_of}
            counts["unknown_ids"] += len(q.grades) - len(known)
            if not any(g > 0 for g in known.values()):
                counts["no_positive"] += 1
                continue
            usable.append(LabeledQuery(q.key, q.text, q.embedding, known, q.source, q.trace_ids))
        return usable, row_of

    def _fit(
        self,
        corpus: Corpus,
        train: list[LabeledQuery],
        val: list[LabeledQuery],
        row_of: dict[str, int],
        counts: dict[str, int],
    ) -> NudgeResult:
        """NUDGE from the base vectors on the train queries, γ (and λ) chosen on validation."""

        def rows(qs: list[LabeledQuery]) -> list[dict[int, float]]:
            return [{row_of[i]: g for i, g in q.positives.items()} for q in qs]

        def negatives(qs: list[LabeledQuery]) -> list[list[int]] | None:
            # judged not relevant: feedback's irrelevant_ids, the judge's grade-0 candidates
            if not self.config.use_negatives:
                return None
            return [sorted(row_of[i] for i, g in q.grades.items() if g <= 0) for q in qs]

        train_neg, val_neg = negatives(train), negatives(val)
        counts["negative_pairs"] = sum(map(len, (train_neg or []) + (val_neg or [])))
        prep = _normalize if self.metric is Metric.COSINE else (lambda x: x)
        return finetune_embeddings(
            corpus,
            prep(_queries(train)),
            rows(train),
            prep(_queries(val)),
            rows(val),
            method=self.config.method,
            gamma=self.config.gamma,
            selection=self.config.selection,
            refit=self.config.refit,
            device=self.config.device,
            train_negatives=train_neg,
            val_negatives=val_neg,
        )

    def _prove(
        self,
        corpus: Corpus,
        test: list[LabeledQuery],
        row_of: dict[str, int],
        res: NudgeResult,
        source: str,
    ) -> tuple[dict[str, MetricGain], dict[str, MetricGain], dict[str, int]]:
        """NDCG@10 and Recall@10 of the held-out queries before and after, with paired
        bootstrap CIs of the gain; and the NDCG@10 apart by who graded each query."""
        table = RelevanceTable([{row_of[i]: g for i, g in q.grades.items()} for q in test])
        test_q = _queries(test)
        # before: base; after: the fit's rows at their new vectors; both over the whole corpus,
        # and on the store path against the same store results (the changed rows exact in both)
        top_before = corpus.topk_replaced(test_q, K, res.rows)[0]
        top_after = corpus.topk_replaced(test_q, K, res.rows, res.vectors)[0]
        gains = {}
        per_query: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, fn in (("ndcg", ndcg_at_k), ("recall", recall_at_k)):
            b, a = fn(top_before, table, K), fn(top_after, table, K)
            per_query[name] = (b, a)
            gains[name] = self._gain(b, a)
        graded: dict[str, MetricGain] = {}
        graded_queries: dict[str, int] = {}
        if source != "synthetic":
            who = np.array(["human" if _is_human(q) else "judge" for q in test])
            b, a = per_query["ndcg"]
            for grader in ("human", "judge"):
                mask = who == grader
                if mask.any():
                    graded[grader] = self._gain(b[mask], a[mask])
                    graded_queries[grader] = int(mask.sum())
        return gains, graded, graded_queries

    def _gain(self, before: np.ndarray, after: np.ndarray) -> MetricGain:
        """The means before and after, and the paired bootstrap CI of the gain."""
        low, high = paired_bootstrap(
            after - before,
            n_resamples=self.config.n_resamples,
            confidence=self.config.confidence,
            seed=self.config.seed,
        )
        return MetricGain(float(before.mean()), float(after.mean()), low, high)

    # -- apply / rollback -------------------------------------------------------------------------

    def apply(self, report: FinetuneReport, *, force: bool = False, note: str | None = None) -> int:
        """Write ``report``'s vectors as a new version (with the report); return the version.

        Refuses (``GainNotProvenError``) unless the held-out NDCG@10 gain is proven, or
        ``force=True``. Rows an earlier version nudged that this fit leaves alone go back to
        their base vectors, so the store holds exactly base + this fit.
        """
        if not isinstance(report, FinetuneReport) or report._vectors is None:
            msg = (
                f"report: found {type(report).__name__} without vectors, expected the "
                "FinetuneReport that finetune() returned; run finetune() again."
            )
            raise BadInputError(msg)
        if report.vetoed and not force:
            msg = (
                f"report: {report.veto_reason()}; collect more feedback and finetune() again, "
                "or pass force=True."
            )
            raise GainNotProvenError(msg)
        if not report.proven and not force:
            msg = (
                f"report: the held-out NDCG@10 gain {report.ndcg.gain:+.4f} has a "
                f"{round(report.confidence * 100)}% CI of [{report.ndcg.ci_low:+.4f}, "
                f"{report.ndcg.ci_high:+.4f}], whose lower bound is not above min_gain="
                f"{report.min_gain}; collect more labels and finetune() again, or pass "
                "force=True."
            )
            raise GainNotProvenError(msg)
        if report.version is not None:
            msg = f"report: already applied as version {report.version}; nothing to do twice."
            raise BadInputError(msg)
        vectors = report.vectors()
        if vectors and _digest(self.state.base_vectors(report._ids)) != report._base_digest:
            msg = (
                "report: the base vectors of its rows changed since finetune() (documents were "
                "re-added); run finetune() again."
            )
            raise NudgeError(msg)
        if not vectors:
            msg = (
                "report: it changes no rows; nothing to apply (rollback(0) returns the store to "
                "its base)."
            )
            raise NudgeError(msg)
        version = self.state.apply_vectors(
            vectors,
            note=note or f"{report.method} gamma={report.gamma:.3f} ({report.rows_changed} rows)",
            method=report.method,
            gamma=report.gamma,
            report=report.to_dict(),
            from_base=True,  # rows an older version nudged and this fit leaves alone: exact base
        )
        report.version = version
        return version

    def rollback(self, version: int | None = None) -> int:
        """Move the store back to ``version`` (None: the previous one; 0: the base)."""
        return self.state.rollback(version)

    def close(self) -> None:
        """Close the label cache (the store stays open)."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None
