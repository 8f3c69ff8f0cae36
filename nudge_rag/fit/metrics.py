"""Exact batched k-NN and the retrieval metrics BEIR reports (NDCG@k, Recall@k).

Relevance is given per query either as a list of relevant row indices (grade 1 each) or as a
``{row: grade}`` mapping (graded relevance, as NFCorpus has). Rows with grade ≤ 0 are not
relevant. The metrics follow trec_eval / pytrec_eval as BEIR calls them:

- ``NDCG@k = DCG@k / IDCG@k`` with linear gain, ``DCG@k = Σ_{i<k} grade(rank i) / log2(i + 2)``
  and IDCG@k the DCG of the grades sorted in decreasing order;
- ``Recall@k = |relevant ∩ top-k| / |relevant|``.

A query with no relevant rows scores 0 on both.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, TypeAlias

import numpy as np
import torch

from nudge_rag.errors import BadInputError
from nudge_rag.fit.checks import check_int, check_vectors

__all__ = [
    "MAX_BLOCK_ELEMENTS",
    "Metric",
    "Relevance",
    "RelevanceTable",
    "evaluate",
    "exact_knn",
    "ndcg_at_k",
    "recall_at_k",
]


class Metric(str, Enum):
    """How a store compares a query with a stored vector."""

    COSINE = "cosine"
    IP = "ip"
    L2 = "l2"


Relevance: TypeAlias = Sequence[int] | Mapping[int, float]

# Scores matrices are built per block of rows so that a block holds at most this many floats.
MAX_BLOCK_ELEMENTS = 1 << 24


def _to_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float32, copy=True)).to(device)


def exact_knn(
    queries: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    *,
    metric: Metric | str = Metric.IP,
    device: torch.device | str | None = None,
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``embeddings`` for each query, best first.

    Streams the corpus in blocks, so memory is ``O(Q·(block + k))`` whatever ``N`` is.
    ``metric`` is a :class:`Metric` (or its value): ``"cosine"`` normalises both sides; ``"ip"``
    uses the raw inner product; ``"l2"`` ranks by ``2 q·e − ‖e‖²`` (the order of ``−‖q − e‖²``,
    which is the score returned). Inputs are checked by ``check_vectors`` (not copied).
    Returns ``(scores, indices)``, float32 and int64 arrays of shape ``(Q, min(k, N))``.
    """
    metric = _check_metric(metric)
    embeddings = check_vectors(embeddings, what="embeddings", dtype=None)
    queries = check_vectors(
        queries, what="queries", dim=embeddings.shape[1], dim_source="the embeddings", dtype=None
    )
    k = check_int(k, what="k", low=1, hint="the number of neighbours per query, e.g. 10")
    if block_rows is not None:
        block_rows = check_int(block_rows, what="block_rows", low=1, hint="e.g. 4096, or None")
    dev = torch.device(device or "cpu")
    n = embeddings.shape[0]
    k = min(k, n)
    q = _to_tensor(queries, dev)
    if metric is Metric.COSINE:
        q = torch.nn.functional.normalize(q, dim=1)
    elif metric is Metric.L2:
        q = 2.0 * q
    block = block_rows or max(1024, MAX_BLOCK_ELEMENTS // max(1, q.shape[0]))
    best_s = torch.full((q.shape[0], 0), -torch.inf, device=dev)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=dev)
    for start in range(0, n, block):
        e = _to_tensor(embeddings[start : start + block], dev)
        if metric is Metric.COSINE:
            e = torch.nn.functional.normalize(e, dim=1)
        s = q @ e.T
        if metric is Metric.L2:
            s -= (e * e).sum(dim=1)
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        cat_s = torch.cat([best_s, top.values], dim=1)
        cat_i = torch.cat([best_i, top.indices + start], dim=1)
        keep = torch.topk(cat_s, min(k, cat_s.shape[1]), dim=1)
        best_s = keep.values
        best_i = torch.gather(cat_i, 1, keep.indices)
    if metric is Metric.L2:  # 2q·e − ‖e‖² − ‖q‖² = −‖q − e‖²
        best_s -= (q * q).sum(dim=1, keepdim=True) / 4.0
    return best_s.cpu().numpy(), best_i.cpu().numpy()


def _check_metric(metric: Any) -> Metric:
    try:
        return Metric(metric)
    except ValueError:
        msg = f"metric: found {metric!r}, expected one of 'ip', 'cosine', 'l2' (a Metric)."
        raise BadInputError(msg) from None


def _check_k(k: Any) -> int:
    return check_int(k, what="k", low=1, hint="the rank cut-off, e.g. 10")


class RelevanceTable:
    """Graded relevance of (query, row) pairs, looked up in bulk with one ``searchsorted``."""

    def __init__(self, relevant: Sequence[Relevance]) -> None:
        queries: list[int] = []
        rows: list[int] = []
        grades: list[float] = []
        for qi, rel in enumerate(relevant):
            items = rel.items() if isinstance(rel, Mapping) else ((r, 1.0) for r in rel)
            for row, grade in items:
                if (
                    isinstance(grade, bool)
                    or not isinstance(grade, numbers.Real)
                    or not math.isfinite(grade)
                ):
                    msg = (
                        f"relevant[{qi}] gives row {row!r} the grade {grade!r}; expected a finite "
                        "number (≤ 0: not relevant)."
                    )
                    raise BadInputError(msg)
                if grade > 0:
                    queries.append(qi)
                    rows.append(int(row))
                    grades.append(float(grade))
        self.n_queries = len(relevant)
        q = np.asarray(queries, dtype=np.int64)
        r = np.asarray(rows, dtype=np.int64)
        g = np.asarray(grades, dtype=np.float64)
        self.row_span = int(r.max()) + 1 if len(r) else 1
        keys = q * self.row_span + r
        order = np.argsort(keys, kind="stable")
        self.keys, self.grades, self.queries = keys[order], g[order], q[order]
        self.count = np.bincount(self.queries, minlength=self.n_queries)

    def grade(self, query_idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Grades of the pairs ``(query_idx[i], rows[i, j])`` (0 where not relevant)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self.keys):
            return np.zeros(rows.shape)
        q = np.broadcast_to(np.asarray(query_idx, dtype=np.int64).reshape(-1, 1), rows.shape)
        valid = (rows >= 0) & (rows < self.row_span)
        keys = q * self.row_span + np.where(valid, rows, 0)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = valid & (self.keys[pos] == keys)
        return np.where(hit, self.grades[pos], 0.0)

    def ideal_dcg(self, k: int) -> np.ndarray:
        """IDCG@k of every query (0 for a query without relevant rows)."""
        out = np.zeros(self.n_queries)
        if not len(self.grades):
            return out
        # Sort grades by query, then grade descending; rank within each query.
        order = np.lexsort((-self.grades, self.queries))
        q, g = self.queries[order], self.grades[order]
        first = np.searchsorted(q, q, side="left")
        rank = np.arange(len(q)) - first
        keep = rank < k
        np.add.at(out, q[keep], g[keep] / np.log2(rank[keep] + 2.0))
        return out


def _as_table(relevant: Sequence[Relevance] | RelevanceTable) -> RelevanceTable:
    return relevant if isinstance(relevant, RelevanceTable) else RelevanceTable(relevant)


def _top_grades(
    ranked: np.ndarray, relevant: Sequence[Relevance] | RelevanceTable, k: int
) -> tuple[RelevanceTable, np.ndarray, int]:
    """The relevance table, the grades of each query's top ``k`` of ``ranked`` (``(Q, ≤k)``),
    and ``k`` checked."""
    k = _check_k(k)
    table = _as_table(relevant)
    top = np.asarray(ranked)[:, :k]
    return table, table.grade(np.arange(top.shape[0]), top), k


def ndcg_at_k(
    ranked: np.ndarray, relevant: Sequence[Relevance] | RelevanceTable, k: int = 10
) -> np.ndarray:
    """Per-query NDCG@k of ``ranked`` (``(Q, ≥k)`` row indices, best first; -1 pads)."""
    table, gains, k = _top_grades(ranked, relevant, k)
    dcg = (gains / np.log2(np.arange(gains.shape[1]) + 2.0)).sum(axis=1)
    idcg = table.ideal_dcg(k)
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def recall_at_k(
    ranked: np.ndarray, relevant: Sequence[Relevance] | RelevanceTable, k: int = 10
) -> np.ndarray:
    """Per-query Recall@k of ``ranked`` (``(Q, ≥k)`` row indices, best first)."""
    table, grades, _ = _top_grades(ranked, relevant, k)
    hits = (grades > 0).sum(axis=1)
    count = table.count.astype(np.float64)
    return np.divide(hits, count, out=np.zeros(len(count)), where=count > 0)


def evaluate(
    queries: np.ndarray,
    embeddings: np.ndarray,
    relevant: Sequence[Relevance],
    *,
    k: int = 10,
    metric: Metric | str = Metric.IP,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean NDCG@k and Recall@k of exact search of ``queries`` over ``embeddings``."""
    _, idx = exact_knn(queries, embeddings, k, metric=metric, device=device)
    table = RelevanceTable(relevant)
    return {
        f"ndcg@{k}": float(ndcg_at_k(idx, table, k).mean()),
        f"recall@{k}": float(recall_at_k(idx, table, k).mean()),
    }
