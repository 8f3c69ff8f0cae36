"""Simulated usage on a BEIR dataset: a store of its chunks, users who search, a qrels judge.

Used by the engine's end-to-end tests, ``benchmarks/bench_engine.py`` and the demos:

- :func:`beir_state` puts the corpus (precomputed embeddings and text) in an in-memory store
  behind a real :class:`~nudge_rag.core.state.NudgeState`; its query embedding function looks
  the dataset's own queries up in the precomputed query embeddings (no model is loaded);
- :func:`simulate_searches` runs queries as searches against what the store holds now, so each
  becomes a trace, as a face would record it;
- :func:`qrels_by_text` gives a :class:`~nudge_rag.testing.judges.QrelsJudge` its answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.metrics import exact_knn
from nudge_rag.core.state import NudgeState
from nudge_rag.core.stores.base import Metric
from nudge_rag.core.stores.memory import MemoryAdapter


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class LookupEmbedder:
    """Embeds the dataset's own query texts by lookup in the precomputed query embeddings."""

    def __init__(self, texts: Sequence[str], embeddings: np.ndarray) -> None:
        self.rows = {_norm(t): n for n, t in enumerate(texts)}
        self.embeddings = np.asarray(embeddings, dtype=np.float32)

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if _norm(t) not in self.rows]
        if missing:
            msg = (
                f"texts: {len(missing)} text(s) are not queries of this dataset, e.g. "
                f"{missing[0]!r}; the lookup embedder only knows the dataset's own queries."
            )
            raise NudgeError(msg)
        return self.embeddings[[self.rows[_norm(t)] for t in texts]]


def beir_state(
    dataset: Any,
    state_dir: str | Path,
    *,
    metric: Metric | str = Metric.COSINE,
    doc_ids: Sequence[str] | None = None,
) -> NudgeState:
    """A NudgeState over an in-memory store holding ``dataset``'s corpus (or ``doc_ids`` of it).

    ``dataset`` is a :class:`nudge_rag.core.data.BeirDataset` loaded with text and embeddings.
    """
    if dataset.corpus_embeddings is None or not dataset.corpus_text:
        msg = "dataset: expected a BeirDataset loaded with text and embeddings (load_beir(...))."
        raise NudgeError(msg)
    row = {d: n for n, d in enumerate(dataset.corpus_ids)}
    chosen = list(doc_ids) if doc_ids is not None else list(dataset.corpus_ids)
    vectors = dataset.corpus_embeddings[[row[d] for d in chosen]].tolist()
    records = {
        d: {"id": d, "vector": v, "text": dataset.corpus_text.get(d, "")}
        for d, v in zip(chosen, vectors, strict=True)
    }
    qids = [q for q in dataset.query_ids if q in dataset.query_text]
    qrow = {q: n for n, q in enumerate(dataset.query_ids)}
    embed = LookupEmbedder(
        [dataset.query_text[q] for q in qids], dataset.query_embeddings[[qrow[q] for q in qids]]
    )

    def texts(ids: list[str]) -> list[str | None]:
        return [records[i]["text"] if i in records else None for i in ids]

    return NudgeState(
        MemoryAdapter(records, metric=metric),
        state_dir,
        embed_queries=embed,
        get_texts=texts,
    )


def simulate_searches(
    state: NudgeState, texts: Sequence[str], embeddings: np.ndarray, *, k: int = 10
) -> list[str]:
    """Run each query as a search over the vectors the store holds now; return trace ids."""
    ids = state.ids()
    kind = "ip" if state.metric is Metric.IP else "cosine"
    queries = np.asarray(embeddings, np.float32)
    scores, top = exact_knn(queries, state.get_vectors(ids), k, metric=kind)
    out = []
    for text, emb, s, t in zip(texts, embeddings, scores, top, strict=True):
        tid = state.record_search(text, emb, k, None, [ids[r] for r in t], s.tolist())
        if tid is not None:
            out.append(tid)
    return out


def qrels_by_text(dataset: Any, split: str) -> dict[str, dict[str, int]]:
    """``split``'s qrels keyed by query text (what a judge sees), positives only."""
    out: dict[str, dict[str, int]] = {}
    for qid, rel in dataset.qrels[split].items():
        text = dataset.query_text.get(qid)
        if text is not None:
            out.setdefault(text, {}).update({d: g for d, g in rel.items() if g > 0})
    return out


def questions_by_doc(dataset: Any, split: str) -> dict[str, list[str]]:
    """For each doc, the texts of ``split``'s queries that it answers (synthetic questions)."""
    out: dict[str, list[str]] = {}
    for qid, rel in sorted(dataset.qrels[split].items()):
        text = dataset.query_text.get(qid)
        for d, g in rel.items():
            if text is not None and g > 0:
                out.setdefault(d, []).append(text)
    return out
