"""The judge's candidate pools: dense, lexical and feedback legs fused to ``label_k`` per query.

The judge grades a fixed number of candidates per query (``label_k``); what it can find is
bounded by which chunks reach its pool. The dense top ``label_k`` misses positives that share
the query's words but not its embedding's neighbourhood (SciFact: 84% of train positives in
the dense top 20, 89% in the fused top 20). :func:`judge_pools` fuses, by weighted reciprocal
rank, per query:

- the dense leg: the corpus's top ``label_k`` under the base vectors (what the pool was before);
- the lexical leg: BM25 over the chunk texts (:class:`LexicalIndex`, ``bm25s``; the optional
  ``lexical`` extra), top ``label_k``;
- the feedback leg: chunks users marked relevant for any search, ranked by the query's
  similarity to them, top ``label_k``,

and keeps the top ``label_k`` of the fused list, with at most ``NEW_SHARE`` of it (3 of 20)
from outside the dense top: the judge's cost per query does not change.
Without ``bm25s`` the lexical leg is left out with a logged note. On the store path a store
with full-text search of its own (pgvector with a text column) ranks the lexical leg in the
server (:class:`StoreTextSearch`); the in-process index is kept by :class:`LexicalCache` while
the chunks' ids and texts are unchanged. :class:`DepthPlan` spends the same budget of judged
candidates deeper where the grades say the positives are (``pool_depth="adaptive"``).

Fusion: ``score(d) = Σ_legs w_leg / (c + rank_leg(d))`` with ranks from 1 and ``c = RRF_C``;
ties go to the better rank in the earlier leg (dense first), so pools are deterministic.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from nudge_rag.errors import BadInputError
from nudge_rag.fit.corpus import _gathered_similarity
from nudge_rag.fit.metrics import exact_knn

__all__ = [
    "FEEDBACK_WEIGHT",
    "NEW_SHARE",
    "RRF_C",
    "TEXT_BATCH",
    "DepthPlan",
    "LexicalCache",
    "LexicalIndex",
    "LexicalLeg",
    "PoolStats",
    "StoreTextSearch",
    "TextFingerprint",
    "deep_pools",
    "fuse",
    "judge_pools",
    "lexical_available",
    "store_text_search",
    "text_fingerprint",
]

log = logging.getLogger(__name__)

RRF_C = 60  # reciprocal-rank constant (Cormack et al. 2009)
FEEDBACK_WEIGHT = 1.0  # the feedback leg's weight (its chunks were relevant to other queries)
TEXT_BATCH = 2048  # chunk texts read from the store per call while the index is built
NEW_SHARE: float | None = 0.15
"""At most this share of a pool (``max(1, round(share · k))``; 3 of 20) may come from outside
the dense top ``k``; None: no cap. The dense top's grade-0 candidates are the hard negatives the
fit uses; measured on seeds 0–2 (see ``benchmarks/bench_pools.py``), the cap at 3 of 20 beat
the uncapped fusion on both SciFact and NFCorpus."""


class LexicalLeg(Protocol):
    """A lexical ranker of chunk ids for query texts: :class:`LexicalIndex` (BM25 in process)
    or a store's own full-text search (:class:`StoreTextSearch`)."""

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]: ...


class StoreTextSearch:
    """The lexical leg from the store's own full-text search (``adapter.text_search``, e.g.
    Postgres full-text on a pgvector table): nothing is indexed in this process."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        return [list(map(str, row)) for row in self.adapter.text_search(list(queries), k)]


def store_text_search(adapter: Any) -> StoreTextSearch | None:
    """The store's full-text search as a lexical leg, where the adapter has one (a
    ``text_search`` method and a ``text_column`` set); else None."""
    if callable(getattr(adapter, "text_search", None)) and getattr(adapter, "text_column", None):
        return StoreTextSearch(adapter)
    return None


def lexical_available() -> bool:
    """Whether ``bm25s`` (the ``lexical`` extra) is installed."""
    return importlib.util.find_spec("bm25s") is not None


class _TokenRows:
    """Token ids of every document in one flat int32 buffer (what bm25s reads as ``ids``).

    bm25s iterates the documents' token lists twice while it builds its matrix; holding them as
    Python lists would cost ~60 bytes a token, this holds 4 (plus 8 a document)."""

    def __init__(self) -> None:
        self._tokens = array("i")
        self._ends = array("q")

    def append(self, doc: Sequence[int]) -> None:
        self._tokens.extend(doc)
        self._ends.append(len(self._tokens))

    def __len__(self) -> int:
        return len(self._ends)

    def __iter__(self) -> Iterator[list[int]]:
        start = 0
        tokens = self._tokens
        for end in self._ends:
            yield tokens[start:end].tolist()
            start = end

    @property
    def nbytes(self) -> int:
        return self._tokens.itemsize * len(self._tokens) + self._ends.itemsize * len(self._ends)


@dataclass
class _Corpus:
    """What ``BM25.index`` reads as a pre-tokenised corpus (its ``object`` form)."""

    ids: _TokenRows
    vocab: dict[Any, int] = field(default_factory=dict)


class LexicalIndex:
    """BM25 over chunk texts (``bm25s``), built streaming from a text reader.

    Rows are the ids in the order given (the engine gives them sorted, so the memory and the
    store path build the same index). English stop words are dropped and words stemmed with
    PyStemmer when it is installed.

    Example:
        .. code-block:: python

            index = LexicalIndex.build(sorted(state.ids()), state.texts)
            index.search(["does vitamin d lower blood pressure"], 20)  # [[chunk ids, best first]]
    """

    def __init__(
        self, ids: list[str], tokenizer: Any, model: Any, *, build_s: float, key: str = ""
    ) -> None:
        self.ids = ids
        self.tokenizer = tokenizer
        self.model = model
        self.build_s = build_s
        self.key = key  # :class:`TextFingerprint` of the ids and texts it was built from
        self._empty = tokenizer.get_vocab_dict().get("")

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        read_texts: Callable[[Sequence[str]], Sequence[str | None]],
        *,
        batch_size: int = TEXT_BATCH,
    ) -> LexicalIndex:
        """Tokenise the texts of ``ids`` a batch at a time (``read_texts(batch)``; None is an
        empty text) and build the BM25 matrix. Memory: the matrix (8 bytes a distinct
        (chunk, term) pair), the vocabulary, and 4 bytes a token while it is built."""
        import bm25s

        t0 = time.perf_counter()
        tokenizer = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=_stemmer())
        rows = _TokenRows()
        ids = list(ids)
        key = TextFingerprint(len(ids))
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            texts = read_texts(batch)
            key.update(batch, texts)
            for doc in tokenizer.streaming_tokenize([t or "" for t in texts], update_vocab=True):
                rows.append(doc)
        model = bm25s.BM25()
        if ids:
            model.index(
                _Corpus(rows, tokenizer.get_vocab_dict()),
                create_empty_token=False,
                show_progress=False,
            )
        del rows
        return cls(ids, tokenizer, model, build_s=time.perf_counter() - t0, key=key.hexdigest())

    @property
    def nbytes(self) -> int:
        """Bytes of the BM25 matrix (the ids and the vocabulary not counted)."""
        scores = getattr(self.model, "scores", None) or {}
        return int(sum(getattr(scores.get(k), "nbytes", 0) for k in ("data", "indices", "indptr")))

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Per query, the ids of the (at most) ``k`` chunks with the highest BM25 score above
        0, best first (ties by row)."""
        out: list[list[str]] = []
        n = len(self.ids)
        for doc in self.tokenizer.streaming_tokenize(list(queries), update_vocab=False):
            terms = [t for t in doc if t != self._empty]
            if not terms or not n:
                out.append([])
                continue
            scores = self.model.get_scores_from_ids(terms)
            m = min(k, n)
            part = np.argpartition(-scores, m - 1)[:m] if m < n else np.arange(n)
            part = part[scores[part] > 0]
            order = np.lexsort((part, -scores[part]))
            out.append([self.ids[int(r)] for r in part[order]])
        return out


def _stemmer() -> Any:
    if importlib.util.find_spec("Stemmer") is None:
        return None
    import Stemmer

    return Stemmer.Stemmer("english")


class TextFingerprint:
    """A digest of ids and their texts, fed a batch at a time: equal digests, equal chunks."""

    def __init__(self, count: int) -> None:
        self._h = hashlib.blake2b(count.to_bytes(8, "little"), digest_size=16)

    def update(self, ids: Sequence[str], texts: Sequence[str | None]) -> None:
        h = self._h
        for i, t in zip(ids, texts, strict=True):
            for part in (i.encode(), b"\xff" if t is None else t.encode("utf-8", "surrogatepass")):
                h.update(len(part).to_bytes(8, "little"))
                h.update(part)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def text_fingerprint(
    ids: Sequence[str],
    read_texts: Callable[[Sequence[str]], Sequence[str | None]],
    *,
    batch_size: int = TEXT_BATCH,
) -> str:
    """The :class:`TextFingerprint` of ``ids`` (in order) and their texts, read a batch at a
    time (what :attr:`LexicalIndex.key` holds)."""
    key = TextFingerprint(len(ids))
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        key.update(batch, read_texts(batch))
    return key.hexdigest()


class LexicalCache:
    """The last :class:`LexicalIndex` built, reused while the chunks' ids and texts are the same.

    Each :meth:`index` call reads every text once to fingerprint them (blake2b over the ids and
    the texts, in order): an added, removed or edited chunk changes the key and rebuilds the
    index; the same chunks skip the tokenising and the matrix (the bulk of a build)."""

    def __init__(self) -> None:
        self._index: LexicalIndex | None = None
        self.hits = 0
        self.builds = 0

    def index(
        self,
        ids: Sequence[str],
        read_texts: Callable[[Sequence[str]], Sequence[str | None]],
        stats: PoolStats | None = None,
    ) -> LexicalIndex:
        """The index of ``ids`` (in order) over ``read_texts``: the cached one when its key
        matches, else a fresh build (then cached). ``stats`` gets the seconds spent."""
        ids = list(ids)
        t0 = time.perf_counter()
        cached = self._index
        hit = cached is not None and text_fingerprint(ids, read_texts) == cached.key
        key_s = time.perf_counter() - t0
        if hit and cached is not None:
            self.hits += 1
            index = cached
        else:
            index = self._index = LexicalIndex.build(ids, read_texts)
            self.builds += 1
        if stats is not None:
            stats.index_cached = hit
            stats.index_key_s = key_s
            stats.index_s = 0.0 if hit else index.build_s
            stats.index_bytes = index.nbytes
        return index

    def clear(self) -> None:
        """Drop the cached index (its memory)."""
        self._index = None


def fuse(
    legs: Sequence[Sequence[str]], k: int, *, weights: Sequence[float] | None = None
) -> list[str]:
    """The top ``k`` of weighted reciprocal-rank fusion of ranked id lists (best first).

    ``score(d) = Σ_i w_i / (RRF_C + rank_i(d))``, ranks from 1; ties go to the better rank, then
    the earlier leg."""
    weights = [1.0] * len(legs) if weights is None else list(weights)
    if len(weights) != len(legs):
        msg = f"weights: found {len(weights)} weights for {len(legs)} legs; expected one each."
        raise BadInputError(msg)
    score: dict[str, float] = {}
    first: dict[str, tuple[int, int]] = {}
    for leg_no, (leg, w) in enumerate(zip(legs, weights, strict=True)):
        for rank, i in enumerate(leg, start=1):
            score[i] = score.get(i, 0.0) + w / (RRF_C + rank)
            if i not in first or (rank, leg_no) < first[i]:
                first[i] = (rank, leg_no)
    return sorted(score, key=lambda i: (-score[i], first[i]))[:k]


@dataclass
class PoolStats:
    """What :func:`judge_pools` did: candidates each extra leg brought in, the index's cost."""

    lexical: bool = False  # whether the lexical leg ran
    lexical_added: int = 0  # pool candidates not in the dense top-k, from the lexical leg
    feedback_added: int = 0  # pool candidates not in the dense top-k, from the feedback leg
    index_s: float = 0.0  # seconds to build the BM25 index (0 when the cached one served)
    index_bytes: int = 0  # bytes of the BM25 matrix
    index_cached: bool = False  # whether the cached index served (its chunks unchanged)
    index_key_s: float = 0.0  # seconds to fingerprint the chunks for the cache
    lexical_kind: str = ""  # "bm25s" (in process) or "store" (the store's full-text search)
    lexical_s: float = 0.0  # seconds the lexical leg's searches took


def _dense_order(corpus: Any, queries: np.ndarray, rows: np.ndarray) -> list[list[str]]:
    """Each query's dense top as ids, re-scored from the corpus's vectors in one way and tied
    scores ordered by id: the memory and the store path (whose searches score in different
    float order, so duplicate chunks tie either way) give the same list."""
    valid = rows >= 0
    vecs = torch.from_numpy(np.asarray(corpus.vectors(np.where(valid, rows, 0)), np.float32))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    scores = _gathered_similarity(q, vecs, corpus.metric).numpy()
    out = []
    for row, ok, sc in zip(rows, valid, scores, strict=True):
        ids = corpus.ids_of(row[ok])
        out.append([i for _, i in sorted(zip((-sc[ok]).tolist(), ids, strict=True))])
    return out


def judge_pools(
    corpus: Any,
    queries: np.ndarray,
    texts: Sequence[str],
    k: int,
    *,
    lexical: LexicalLeg | None = None,
    liked: Iterable[str] = (),
    stats: PoolStats | None = None,
) -> list[list[str]]:
    """Per query, the ids of its ``k`` judge candidates: the dense top ``k`` of ``corpus``
    (a :class:`~nudge_rag.fit.corpus.Corpus`) fused with ``lexical``'s top ``k`` for
    ``texts`` and the ``k`` chunks of ``liked`` (chunks users marked relevant) most similar to
    the query; without either, the dense top ``k`` as it is."""
    stats = stats if stats is not None else PoolStats()
    rows, _ = corpus.topk_excluding(queries, k)
    dense = _dense_order(corpus, queries, rows)
    legs: list[list[list[str]]] = [dense]
    weights = [1.0]
    if lexical is not None:
        t0 = time.perf_counter()
        legs.append(lexical.search(texts, k))
        stats.lexical_s += time.perf_counter() - t0
        weights.append(1.0)
        stats.lexical = True
    held = sorted(corpus.known(set(liked)))
    if held:
        vecs = np.asarray(corpus.vectors(corpus.rows_of(held)), dtype=np.float32)
        _, top = exact_knn(queries, vecs, min(k, len(held)), metric=corpus.metric)
        legs.append([[held[int(r)] for r in row] for row in np.asarray(top)])
        weights.append(FEEDBACK_WEIGHT)
    if len(legs) == 1:
        return dense
    pools = []
    for n in range(len(queries)):
        seen = set(dense[n])
        if NEW_SHARE is None:
            pool = fuse([leg[n] for leg in legs], k, weights=weights)
        else:  # the fused order, with no more than ``cap`` candidates the dense top lacks
            cap = max(1, round(NEW_SHARE * k))
            pool, extra = [], 0
            for i in fuse([leg[n] for leg in legs], len(legs) * k, weights=weights):
                if i in seen or extra < cap:
                    pool.append(i)
                    extra += i not in seen
                if len(pool) == k:
                    break
        new = [i for i in pool if i not in seen]
        if lexical is not None:
            lex = set(legs[1][n])
            stats.lexical_added += sum(i in lex for i in new)
        if held:
            fb = set(legs[-1][n])
            stats.feedback_added += sum(i in fb for i in new)
        pools.append(pool)
    return pools


class _Ranked:
    """A lexical leg already searched: each query's list, cut to ``k``."""

    def __init__(self, ranked: list[list[str]]) -> None:
        self.ranked = ranked

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        return [r[:k] for r in self.ranked]


def deep_pools(
    corpus: Any,
    queries: np.ndarray,
    texts: Sequence[str],
    k: int,
    depth: int,
    *,
    lexical: LexicalLeg | None = None,
    liked: Iterable[str] = (),
    stats: PoolStats | None = None,
) -> list[list[str]]:
    """Per query, up to ``depth`` candidates in judging order: its :func:`judge_pools` pool of
    ``k`` first, then the rest of its pool of ``depth`` (the adaptive depth's reserve)."""
    if depth > k and isinstance(lexical, StoreTextSearch):
        # one search in the store (its order is total: score, then id, so its top k is a
        # prefix of its top depth); bm25s is cheap to ask twice and cuts ties its own way
        t0 = time.perf_counter()
        lexical = _Ranked(lexical.search(texts, depth))
        if stats is not None:
            stats.lexical_s += time.perf_counter() - t0
    first = judge_pools(corpus, queries, texts, k, lexical=lexical, liked=liked, stats=stats)
    if depth <= k:
        return first
    more = judge_pools(corpus, queries, texts, depth, lexical=lexical, liked=liked)
    return [f + [i for i in m if i not in set(f)] for f, m in zip(first, more, strict=True)]


@dataclass
class DepthPlan:
    """How deep each query's pool is judged, at the cost of ``k`` candidates per query.

    Every query's first ``first`` candidates are judged. The grades then say which shape the
    data has, from every judged window of ``step`` candidates: the positives in it given the
    positives found before it (0, 1, 2, 3 or more; :meth:`yields`).

    - Where the queries without a positive yet find more in their next window than the
      average query does (few positives a query, SciFact), the rest of the budget goes
      ``step`` candidates at a time, a wave of queries per round, to the queries with the
      highest expected yield, up to their whole reserve: the positives the pool of ``k``
      missed.
    - Otherwise (positives plentiful where found at all, NFCorpus), deepening the rich
      queries would take the other queries' candidates, their positives and hard negatives
      (measured: NFCorpus fell from 0.38 / 0.32 to 0.31 / 0.28 of the gold gain on seeds
      0 / 1), so every query is judged to ``k``: the fixed pool."""

    k: int
    first: int
    step: int
    wave: float = 0.2  # share of the queries deepened per round

    def budget(self, n_queries: int) -> int:
        """Candidates judged in all: ``k`` per query."""
        return self.k * n_queries

    def next_wave(
        self, hits: Sequence[Sequence[bool]], depth: Sequence[int], room: Sequence[int], left: int
    ) -> dict[int, int]:
        """How many more candidates to judge for which queries next (best first; empty when
        the budget ``left`` or every query's ``room`` (candidates in its reserve) is spent).
        ``hits[q]``: whether each of its judged candidates, in order, was graded relevant."""
        table, overall = self.yields(hits, depth)
        if table[0] < overall and max(depth, default=0) <= self.first:
            # rich queries (decided once, on the first round's grades): the fixed pool of k
            fill = {q: min(self.k, room[q]) - d for q, d in enumerate(depth)}
            fill = {q: n for q, n in fill.items() if n > 0}
            return fill if sum(fill.values()) <= left else {}
        step = self.step
        ready = [q for q in range(len(depth)) if depth[q] + step <= room[q]]
        if left < step or not ready:
            return {}
        found = [sum(hits[q][: depth[q]]) for q in range(len(depth))]
        ready.sort(key=lambda q: (-table[min(3, found[q])], q))
        size = max(1, min(len(ready), left // step, int(np.ceil(self.wave * len(depth)))))
        return dict.fromkeys(ready[:size], step)

    def yields(
        self, hits: Sequence[Sequence[bool]], depth: Sequence[int]
    ) -> tuple[np.ndarray, float]:
        """Positives per window of ``step`` given 0, 1, 2, 3+ found before it (a small prior:
        an unseen count ranks low, not at zero), and over every window."""
        num, den = np.zeros(4), np.zeros(4)
        step = self.step
        for h, d in zip(hits, depth, strict=True):
            run = np.cumsum(np.asarray(h[:d], dtype=np.int64))
            for a in range(step, d - step + 1, step):
                f = min(3, int(run[a - 1]))
                num[f] += run[a + step - 1] - run[a - 1]
                den[f] += 1
        return (num + 0.1) / (den + 1.0), float((num.sum() + 0.1) / (den.sum() + 1.0))
