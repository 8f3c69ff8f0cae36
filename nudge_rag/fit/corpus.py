"""The corpus NUDGE and the engine rank against: an in-memory matrix, or the wrapped store itself.

NUDGE changes only the rows labels touch; the rest of the corpus matters only through each
validation or held-out query's best-scoring *untouched* rows, and the LLM judge only needs each
query's top candidates. Both are one question, "the top ``k`` rows for these query vectors among
rows not in ``S``" (:meth:`Corpus.topk_excluding`), which a vector database answers natively.

- :class:`MemoryCorpus`: the base matrix in memory, searched exactly (the engine's path for a
  corpus that fits ``memory_budget``; exactly the results it always gave).
- :class:`StoreCorpus`: the wrapped store's own batched search (Chroma ``query``, Qdrant batch
  query, Milvus ``search``, pgvector SQL, FAISS ``search``, the in-memory stores), asked for
  ``k + over-fetch`` results per query; rows in ``S`` are dropped and the over-fetch doubles for
  the queries where fewer than ``k`` survive. Rows that any applied version nudged are never
  taken from the store's ranking (it ranks them by their nudged vectors): they are scored with
  their *base* vectors from the version log and merged into every list, so pools and "before"
  figures are always against base. Every candidate is re-scored from its base vector, so on an
  exact store (FAISS flat, in-memory) the results equal :class:`MemoryCorpus`'s; on an HNSW
  store they carry the index's recall (``approximate``).

Memory beyond the store: the base vectors of the rows a fine-tune touches or that appear in the
top-``k`` lists, ``O((changed rows + queries·k)·d)``, and the ids of those rows only: nothing is
proportional to the corpus size ``N``.

Scores are similarities under the store's metric, as :func:`nudge_rag.fit.metrics.exact_knn`
gives them: cosine ``q̂·ê``, inner product ``q·e``, l2 ``−‖q − e‖²``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.nn.functional import normalize

from nudge_rag.errors import BadInputError
from nudge_rag.fit.metrics import MAX_BLOCK_ELEMENTS, Metric, exact_knn

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Corpus",
    "MemoryCorpus",
    "StoreCorpus",
    "StoreSearchStats",
    "choose_corpus",
    "corpus_bytes",
    "is_corpus",
    "normalize_rows",
    "similarity",
    "store_supports_search",
    "untouched_topk",
]

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes of float32 base vectors the memory path may hold
_FETCH_CHUNK = 5000  # ids per base-vector read
_QUERY_BLOCK = 256  # queries scored per block


def normalize_rows(x: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Rows divided by their norm (zero rows kept), float32; ``in_place`` divides a float32
    ``x`` itself (same bits, no second matrix)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    safe = np.where(norms > 0, norms, 1.0)
    if in_place and x.dtype == np.float32:
        return np.divide(x, safe, out=x)
    return (x / safe).astype(np.float32, copy=False)


def similarity(q: torch.Tensor, e: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``(Q, M)`` similarities of queries ``q`` to rows ``e`` under ``metric`` (as exact_knn)."""
    if metric is Metric.COSINE:
        return normalize(q, dim=1) @ normalize(e, dim=1).T
    if metric is Metric.IP:
        return q @ e.T
    return (2.0 * q) @ e.T - (e * e).sum(dim=1) - (q * q).sum(dim=1, keepdim=True)


def _gathered_similarity(q: torch.Tensor, e: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``(Q, m)`` similarities of query ``i`` to its own rows ``e[i]`` (``e``: ``(Q, m, d)``)."""
    if metric is Metric.COSINE:
        q, e = normalize(q, dim=1), normalize(e, dim=2)
    s = torch.bmm(e, q.unsqueeze(2)).squeeze(2) if e.shape[1] else e.sum(dim=2)
    if metric is Metric.L2:
        s = 2.0 * s - (e * e).sum(dim=2) - (q * q).sum(dim=1, keepdim=True)
    return s


@runtime_checkable
class Corpus(Protocol):
    """``N`` base vectors under one metric, addressed by row; rows map to store ids.

    ``corpus[rows]`` is :meth:`vectors`, so NUDGE's code reads a corpus like a matrix.
    """

    kind: str  # "memory" or "store"
    approximate: bool  # whether searches carry an index's recall (HNSW, IVF)
    metric: Metric

    @property
    def shape(self) -> tuple[int, int]: ...
    def vectors(self, rows: Any) -> np.ndarray: ...
    def __getitem__(self, rows: Any) -> np.ndarray: ...
    def topk_excluding(
        self, queries: np.ndarray, k: int, exclude_rows: Iterable[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def topk_replaced(
        self, queries: np.ndarray, k: int, rows: np.ndarray, vectors: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def rows_of(self, ids: Sequence[str]) -> np.ndarray: ...
    def ids_of(self, rows: Iterable[int]) -> list[str]: ...
    def known(self, ids: Iterable[str]) -> set[str]: ...
    def all_ids(self) -> list[str]: ...


def is_corpus(x: Any) -> bool:
    """Whether ``x`` is a :class:`Corpus` (rather than a matrix)."""
    return isinstance(x, Corpus) and not isinstance(x, np.ndarray)


# --------------------------------------------------------------------------- in memory


class MemoryCorpus:
    """The base matrix in memory (exact search): the engine's path for a corpus that fits.

    ``base`` is the base matrix; ``fit`` what NUDGE and the held-out proof rank (unit rows
    for a cosine store: the engine passes one normalised matrix as both); ``matrix`` is ``fit``.
    """

    kind = "memory"
    approximate = False

    def __init__(
        self,
        base: np.ndarray,
        *,
        ids: Sequence[str] | None = None,
        metric: Metric | str = Metric.COSINE,
        fit: np.ndarray | None = None,
    ) -> None:
        self.base = base
        self.matrix = base if fit is None else fit
        self.metric = Metric(metric)
        self._ids = list(ids) if ids is not None else [str(i) for i in range(len(base))]
        if len(self._ids) != len(base):
            msg = (
                f"ids: found {len(self._ids)} ids for {len(base)} base vectors; expected one id "
                "per row."
            )
            raise BadInputError(msg)
        self._row = {i: n for n, i in enumerate(self._ids)}
        self.stats: dict[str, int] = {}

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, d)``."""
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    def vectors(self, rows: Any) -> np.ndarray:
        """The ``fit`` vectors of ``rows``."""
        return self.matrix[rows]

    def __getitem__(self, rows: Any) -> np.ndarray:
        return self.vectors(rows)

    def topk_excluding(
        self, queries: np.ndarray, k: int, exclude_rows: Iterable[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` ``(rows, scores)`` per query among rows not in ``exclude_rows``,
        ranked on ``fit``; padded with -1 / -inf."""
        mat = self.matrix
        excluded = np.unique(np.fromiter(exclude_rows, dtype=np.int64))
        if not len(excluded):
            scores, rows = exact_knn(queries, mat, k, metric=self.metric)
            return _pad(rows, scores, k)
        q = torch.from_numpy(np.array(queries, dtype=np.float32, copy=True))
        n = mat.shape[0]
        block = max(1024, MAX_BLOCK_ELEMENTS // max(1, q.shape[0]))
        best_s = torch.full((q.shape[0], 0), -torch.inf)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64)
        for start in range(0, n, block):
            stop = min(n, start + block)
            e = torch.from_numpy(np.array(mat[start:stop], dtype=np.float32, copy=True))
            s = similarity(q, e, self.metric)
            lo, hi = np.searchsorted(excluded, [start, stop])
            if hi > lo:
                s[:, torch.from_numpy(excluded[lo:hi] - start)] = -torch.inf
            top = torch.topk(s, min(k, s.shape[1]), dim=1)
            cat_s = torch.cat([best_s, top.values], dim=1)
            cat_i = torch.cat([best_i, top.indices + start], dim=1)
            keep = torch.topk(cat_s, min(k, cat_s.shape[1]), dim=1)
            best_s, best_i = keep.values, torch.gather(cat_i, 1, keep.indices)
        top_rows = torch.where(torch.isfinite(best_s), best_i, -1)
        return _pad(top_rows.numpy(), best_s.numpy(), k)

    def topk_replaced(
        self, queries: np.ndarray, k: int, rows: np.ndarray, vectors: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` ``(rows, scores)`` with ``rows`` holding ``vectors`` (a copy of the
        matrix with them written in, as the engine always did; None: the matrix as it is)."""
        if vectors is None:
            scores, top = exact_knn(queries, self.matrix, k, metric=self.metric)
            return _pad(top, scores, k)
        after = np.array(self.matrix, dtype=np.float32, copy=True)
        after[np.asarray(rows, dtype=np.int64)] = vectors
        scores, top = exact_knn(queries, after, k, metric=self.metric)
        return _pad(top, scores, k)

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """The rows of ``ids`` (each must be held)."""
        return np.fromiter((self._row[i] for i in ids), dtype=np.int64, count=len(ids))

    def ids_of(self, rows: Iterable[int]) -> list[str]:
        """The ids of ``rows``."""
        return [self._ids[int(r)] for r in rows]

    def known(self, ids: Iterable[str]) -> set[str]:
        """The ids of ``ids`` the corpus holds."""
        return {i for i in ids if i in self._row}

    def all_ids(self) -> list[str]:
        """Every id, in row order."""
        return list(self._ids)


def _pad(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` widened to ``k`` columns with -1 / -inf."""
    rows = np.asarray(rows, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if rows.shape[1] >= k:
        return rows, scores
    extra = k - rows.shape[1]
    return (
        np.concatenate([rows, np.full((len(rows), extra), -1, dtype=np.int64)], axis=1),
        np.concatenate([scores, np.full((len(rows), extra), -np.inf, dtype=np.float32)], axis=1),
    )


# --------------------------------------------------------------------------- the store itself


@dataclass
class StoreSearchStats:
    """What a :class:`StoreCorpus` asked of its store (the cost model's counts)."""

    search_calls: int = 0  # adapter.search calls (each batches many queries)
    query_vectors: int = 0  # query vectors sent, over-fetch rounds included
    results: int = 0  # (query, id) results the store returned
    refetch_rounds: int = 0  # rounds that doubled the over-fetch for some queries
    vectors_fetched: int = 0  # base vectors read (version log or store)
    short_lists: int = 0  # queries left with fewer than k rows (store exhausted or capped)
    extra: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        out = {k: int(v) for k, v in self.__dict__.items() if k != "extra"}
        return {**out, **self.extra}


class StoreCorpus:
    """The wrapped store as the corpus: its own batched search, over-fetched and filtered.

    Args:
        state: a ``NudgeState`` (``store.nudge_state``): its store must offer
            ``search(queries, k)`` (``state.can_search``; every adapter in nudge_rag.stores
            does); base vectors come from its version log. The corpus asks the state (its
            ``can_search``, ``approximate_search``, ``count()``) and calls the adapter's
            ``search``, ``ids`` and ``dim`` by name: ``fit/`` imports no store code.
        normalize: hand out row-normalised base vectors (the engine does for cosine stores).
        min_overfetch: extra results asked per query beyond ``k`` on the first round (then
            doubled for the queries where fewer than ``k`` rows survive the exclusions).

    Example:
        .. code-block:: python

            corpus = StoreCorpus(store.nudge_state)
            rows, scores = corpus.topk_excluding(queries, 10, exclude_rows=changed)
            corpus.ids_of(rows[0])       # the store ids of query 0's top 10
    """

    kind = "store"

    def __init__(self, state: Any, *, normalize: bool = False, min_overfetch: int = 10) -> None:
        adapter = getattr(state, "adapter", None)
        if adapter is None or not store_supports_search(state):
            msg = (
                f"corpus='store': the store's adapter ({type(adapter).__name__}) has no "
                "search(queries, k); use corpus='memory', or an adapter from "
                "nudge_rag.stores."
            )
            raise BadInputError(msg)
        self.state = state
        self.adapter = adapter
        self.metric = Metric(state.metric)
        self.approximate = bool(state.approximate_search)
        self.normalize = bool(normalize)
        self.min_overfetch = int(min_overfetch)
        self.n = int(state.count())
        log = getattr(state, "version_log", None)
        # rows any recorded version changed: never ranked by the store, scored with base
        self.nudged: set[str] = set(log.changed_ids()) if log is not None else set()
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._cache: dict[int, np.ndarray] = {}
        self._dim: int | None = getattr(adapter, "dim", None)
        self.stats = StoreSearchStats()

    # -- rows and ids ------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, d)``; ``d`` is read from one base vector when the adapter does not say."""
        if self._dim is None:
            first = self.adapter.ids()[:1] if not self._ids else self._ids[:1]
            self._dim = int(self._fetch_ids(first).shape[1]) if first else 0
        return (self.n, int(self._dim))

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Rows for ``ids``, assigned on first sight (the corpus names only ids it has met)."""
        out = np.empty(len(ids), dtype=np.int64)
        for n, i in enumerate(ids):
            r = self._row.get(i)
            if r is None:
                r = self._row[i] = len(self._ids)
                self._ids.append(i)
            out[n] = r
        return out

    def ids_of(self, rows: Iterable[int]) -> list[str]:
        """The ids of ``rows``."""
        return [self._ids[int(r)] for r in rows]

    def known(self, ids: Iterable[str]) -> set[str]:
        """The ids of ``ids`` the store holds (asked of the store)."""
        ids = list(ids)
        return set(self.state.known_ids(ids)) if ids else set()

    def all_ids(self) -> list[str]:
        """Every id the store holds (reads them all: only for sampling synthetic questions)."""
        return list(self.state.ids())

    # -- vectors -----------------------------------------------------------------------------

    def _fetch_ids(self, ids: Sequence[str]) -> np.ndarray:
        parts = []
        for s in range(0, len(ids), _FETCH_CHUNK):
            part = np.asarray(self.state.base_vectors(ids[s : s + _FETCH_CHUNK]), np.float32)
            parts.append(normalize_rows(part) if self.normalize else part)
        self.stats.vectors_fetched += len(ids)
        return np.concatenate(parts) if parts else np.zeros((0, self._dim or 0), np.float32)

    def vectors(self, rows: Any) -> np.ndarray:
        """The base vectors of ``rows`` (read once, then kept), float32."""
        flat = np.asarray(rows, dtype=np.int64).reshape(-1)
        missing = sorted({int(r) for r in flat if int(r) not in self._cache})
        if missing:
            got = self._fetch_ids(self.ids_of(missing))
            for n, r in enumerate(missing):
                self._cache[r] = got[n]
            if self._dim is None and len(got):
                self._dim = int(got.shape[1])
        d = self.shape[1]
        if not len(flat):
            return np.zeros((*np.shape(rows), d), dtype=np.float32)
        return np.stack([self._cache[int(r)] for r in flat]).reshape(*np.shape(rows), d)

    def __getitem__(self, rows: Any) -> np.ndarray:
        return self.vectors(rows)

    # -- search ------------------------------------------------------------------------------

    def _candidates(self, q: np.ndarray, k: int, drop: set[str]) -> list[list[str]]:
        """Per query, the store's results that are not in ``drop``: at least ``k`` of them
        unless the store holds no more (the over-fetch doubles for the short queries)."""
        out: list[list[str]] = [[] for _ in range(len(q))]
        fetch = min(max(1, self.n), k + min(len(drop), max(k, self.min_overfetch)))
        pending = list(range(len(q)))
        first = True
        while pending:
            if not first:
                self.stats.refetch_rounds += 1
            first = False
            got, _ = self.adapter.search(q[pending], fetch)
            self.stats.search_calls += 1
            self.stats.query_vectors += len(pending)
            short = []
            for qi, ids in zip(pending, got, strict=True):
                self.stats.results += len(ids)
                kept = list(dict.fromkeys(i for i in ids if i not in drop))  # ids may repeat
                out[qi] = kept
                if len(kept) < k:
                    if len(ids) >= fetch and fetch < self.n:
                        short.append(qi)
                    else:
                        self.stats.short_lists += 1
            if short and fetch >= self.n:
                self.stats.short_lists += len(short)
                break
            pending, fetch = short, min(self.n, fetch * 2)
        return out

    def topk_excluding(
        self, queries: np.ndarray, k: int, exclude_rows: Iterable[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(rows, scores)`` per query among rows not in ``exclude_rows``, best
        first, padded with -1 / -inf. Candidates come from the store's search; rows any version
        nudged are scored with their base vectors and merged in; every score is recomputed from
        the base vector."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        excluded = set(self.ids_of(np.unique(np.fromiter(exclude_rows, dtype=np.int64))))
        side = sorted(self.nudged - excluded)
        cand = self._candidates(q, k, excluded | self.nudged)
        side_rows = self.rows_of(side)
        cand_rows = [self.rows_of(c) for c in cand]
        self.vectors(np.concatenate([side_rows, *cand_rows]) if len(q) else side_rows)
        side_mat = torch.from_numpy(self.vectors(side_rows)) if len(side) else None
        out_rows = np.full((len(q), k), -1, dtype=np.int64)
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        for a in range(0, len(q), _QUERY_BLOCK):
            b = min(len(q), a + _QUERY_BLOCK)
            qt = torch.from_numpy(q[a:b])
            width = max((len(c) for c in cand_rows[a:b]), default=0)
            rows = np.full((b - a, width), -1, dtype=np.int64)
            for n, c in enumerate(cand_rows[a:b]):
                rows[n, : len(c)] = c
            mat = np.zeros((b - a, width, q.shape[1]), dtype=np.float32)
            valid = rows >= 0
            if valid.any():
                mat[valid] = self.vectors(rows[valid])
            s = _gathered_similarity(qt, torch.from_numpy(mat), self.metric)
            s[torch.from_numpy(~valid)] = -torch.inf
            all_rows = torch.from_numpy(rows)
            if side_mat is not None:
                s = torch.cat([s, similarity(qt, side_mat, self.metric)], dim=1)
                all_rows = torch.cat(
                    [all_rows, torch.from_numpy(side_rows).expand(b - a, len(side_rows))], dim=1
                )
            top = torch.topk(s, min(k, s.shape[1]), dim=1)
            got_rows = torch.gather(all_rows, 1, top.indices)
            got_rows = torch.where(torch.isfinite(top.values), got_rows, -1)
            out_rows[a:b, : top.values.shape[1]] = got_rows.numpy()
            out_scores[a:b, : top.values.shape[1]] = top.values.numpy()
        return out_rows, out_scores

    def topk_replaced(
        self, queries: np.ndarray, k: int, rows: np.ndarray, vectors: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(rows, scores)`` with ``rows`` holding ``vectors`` (None: their base
        vectors): the store's top-``k`` among the other rows, merged with ``rows`` scored
        exactly. Ranking the same ``rows`` once with their base and once with new vectors
        compares the two against the same store results: on an approximate index the rows that
        changed are never favoured by being the only ones scored exactly."""
        rows = np.asarray(rows, dtype=np.int64)
        top_rows, top_scores = self.topk_excluding(queries, k, rows)
        if not len(rows):
            return top_rows, top_scores
        if vectors is None:
            vectors = self.vectors(rows)
        qt = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        new = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        out_rows = np.empty_like(top_rows)
        out_scores = np.empty_like(top_scores)
        for a in range(0, len(qt), _QUERY_BLOCK):
            b = min(len(qt), a + _QUERY_BLOCK)
            s = torch.cat(
                [torch.from_numpy(top_scores[a:b]), similarity(qt[a:b], new, self.metric)], 1
            )
            r = torch.cat(
                [torch.from_numpy(top_rows[a:b]), torch.from_numpy(rows).expand(b - a, len(rows))],
                dim=1,
            )
            top = torch.topk(s, k, dim=1)
            out_scores[a:b] = top.values.numpy()
            out_rows[a:b] = torch.where(
                torch.isfinite(top.values), torch.gather(r, 1, top.indices), -1
            ).numpy()
        return out_rows, out_scores


# --------------------------------------------------------------------------- for NUDGE


def untouched_topk(
    corpus: Corpus,
    changed: np.ndarray,
    val_q: torch.Tensor,
    pair_q: np.ndarray,
    pair_r: np.ndarray,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NUDGE's view of the rows it does not change, from a corpus's search.

    Per validation query, the top-``k`` unchanged rows (the corpus's ranking, re-scored as NUDGE
    scores: ``q·ê`` with ``ê`` the unit-normalised row) as ``(values, indices)``, and the score
    of each validation pair ``(pair_q, pair_r)`` whose row is unchanged (``-inf`` for changed
    rows). For a cosine corpus, or unit-norm rows under ip / l2, the ranking is the one NUDGE
    would compute from the whole matrix.
    """
    dev = val_q.device
    queries = val_q.detach().cpu().numpy()
    rows, _ = corpus.topk_excluding(queries, k, changed)
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    vecs = torch.from_numpy(np.asarray(corpus.vectors(safe), dtype=np.float32)).to(dev)
    s = torch.bmm(normalize(vecs, dim=2), val_q.unsqueeze(2)).squeeze(2)
    s[torch.from_numpy(~valid).to(dev)] = -torch.inf
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    values = torch.gather(s, 1, order)
    indices = torch.gather(torch.from_numpy(rows).to(dev), 1, order)
    pair_scores = torch.full((len(pair_r),), -torch.inf, device=dev)
    untouched = ~np.isin(pair_r, changed)
    if untouched.any():
        sel = np.nonzero(untouched)[0]
        e = normalize(torch.from_numpy(np.asarray(corpus.vectors(pair_r[sel]))).to(dev), dim=1)
        q = val_q[torch.from_numpy(pair_q[sel]).to(dev)]
        pair_scores[torch.from_numpy(sel).to(dev)] = (q * e).sum(dim=1)
    return values, indices, pair_scores


# --------------------------------------------------------------------------- choosing one


def store_supports_search(state: Any) -> bool:
    """Whether ``state``'s adapter offers the batched ``search`` a :class:`StoreCorpus` needs
    (``NudgeState.can_search``; False for an object that does not say)."""
    return getattr(state, "adapter", None) is not None and bool(getattr(state, "can_search", False))


def corpus_bytes(state: Any) -> int:
    """The size of the base matrix as float32 (``N·d·4``), asked of the store cheaply."""
    adapter = getattr(state, "adapter", None)
    if adapter is None:
        return 0
    n = state.count()
    dim = getattr(adapter, "dim", None)
    if dim is None and n:  # an adapter that does not say: read one vector (lists the ids)
        first = next(iter(adapter.ids()), None)
        dim = 0 if first is None else int(np.asarray(state.base_vectors([first])).shape[1])
    return int(n) * int(dim or 0) * 4


def choose_corpus(mode: str, state: Any, budget: int) -> str:
    """``"memory"`` or ``"store"`` for ``corpus=mode`` (``"auto"``: memory within ``budget``
    bytes of float32 base vectors, or when the store cannot search; the store above it)."""
    if mode == "memory":
        return "memory"
    if mode == "store":
        if not store_supports_search(state):
            msg = (
                f"corpus='store': the store's adapter "
                f"({type(getattr(state, 'adapter', None)).__name__}) offers no search(queries, "
                "k); use corpus='memory' (or 'auto')."
            )
            raise BadInputError(msg)
        return "store"
    if not store_supports_search(state):
        return "memory"
    return "memory" if corpus_bytes(state) <= budget else "store"
