"""Simulated usage on a BEIR dataset: a store of its chunks, users who search, a qrels judge.

Used by the engine's end-to-end tests, ``benchmarks/bench_engine.py`` and the demos:

- :func:`beir_state` puts the corpus (precomputed embeddings and text) in an in-memory store
  behind a real :class:`~nudge_rag.state.state.NudgeState`; its query embedding function looks
  the dataset's own queries up in the precomputed query embeddings (no model is loaded);
- :func:`simulate_searches` runs queries as searches against what the store holds now, so each
  becomes a trace, as a face would record it;
- :func:`qrels_by_text` gives a :class:`~nudge_rag.testing.judges.QrelsJudge` its answers;
- :func:`compare_with_gold` runs all of it and scores the engine against NUDGE on gold qrels.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.engine.engine import NudgeFinetuneEngine, split_point
from nudge_rag.errors import BadInputError
from nudge_rag.fit.metrics import evaluate, exact_knn
from nudge_rag.fit.nudge import finetune_embeddings
from nudge_rag.labeling.labeler import query_key
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.base import Metric
from nudge_rag.stores.memory import MemoryAdapter
from nudge_rag.testing.judges import QrelsJudge
from nudge_rag.testing.openai_stub import OpenAIStub

__all__ = [
    "LookupEmbedder",
    "beir_state",
    "compare_with_gold",
    "gold_split",
    "qrels_by_text",
    "questions_by_doc",
    "simulate_searches",
    "stub_engine",
    "tuned_matrix",
]


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
            raise BadInputError(msg)
        return self.embeddings[[self.rows[_norm(t)] for t in texts]]


def beir_state(
    dataset: Any,
    state_dir: str | Path,
    *,
    metric: Metric | str = Metric.COSINE,
    doc_ids: Sequence[str] | None = None,
) -> NudgeState:
    """A NudgeState over an in-memory store holding ``dataset``'s corpus (or ``doc_ids`` of it).

    ``dataset`` is a :class:`nudge_rag.eval.data.BeirDataset` loaded with text and embeddings.
    """
    if dataset.corpus_embeddings is None or not dataset.corpus_text:
        msg = "dataset: expected a BeirDataset loaded with text and embeddings (load_beir(...))."
        raise BadInputError(msg)
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
    queries = np.asarray(embeddings, np.float32)
    scores, top = exact_knn(queries, state.get_vectors(ids), k, metric=state.metric)
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


def stub_engine(
    state: NudgeState, stub: OpenAIStub, *, label_k: int, seed: int, **config: Any
) -> NudgeFinetuneEngine:
    """An engine on ``state`` whose judge is ``stub`` (no progress bar); ``config``: any other
    engine setting."""
    return NudgeFinetuneEngine(
        state,
        llm=stub.client(),
        llm_model="stub-judge",
        label_k=label_k,
        seed=seed,
        progress=False,
        **config,
    )


def tuned_matrix(base: np.ndarray, ids: Sequence[str], report: Any) -> np.ndarray:
    """A copy of ``base`` (one row per id of ``ids``) with the vectors ``report`` tuned written
    in (none when validation chose gamma = 0)."""
    tuned = base.copy()
    vecs = report.vectors()
    if vecs:
        row_of = {i: n for n, i in enumerate(ids)}
        tuned[[row_of[i] for i in vecs]] = np.stack(list(vecs.values()))
    return tuned


def gold_split(engine: NudgeFinetuneEngine, ds: Any, qids: list[str]) -> tuple[list, list, list]:
    """The train query ids in the engine's train / validation / held-out, by its hash split."""
    tr_f, va_f, _ = engine.config.split
    parts: tuple[list, list, list] = ([], [], [])
    for q in qids:
        u = split_point(engine.config.seed, query_key(ds.query_text[q], q))
        parts[0 if u < tr_f else 1 if u < tr_f + va_f else 2].append(q)
    return parts


def compare_with_gold(
    ds: Any,
    *,
    flip: float = 0.0,
    label_k: int = 20,
    seed: int = 0,
    concurrency: int = 8,
    max_queries: int | None = None,
) -> dict:
    """Simulate users on ``ds`` (train queries as searches), label them through the stub judge
    (``flip``: fraction of judgments flipped), fine-tune, and score on the TEST split against
    NUDGE fitted on gold qrels of the same non-held-out queries.

    ``ds`` is a BeirDataset loaded with text and embeddings. Returns a dict of figures:
    ``ratio`` = engine test NDCG@10 gain / gold test gain, the engine's report, the cache rerun.
    """
    qrow = {q: i for i, q in enumerate(ds.query_ids)}
    qids = sorted(ds.qrels["train"])
    if max_queries is not None:
        qids = qids[:max_queries]
    test = ds.task("test")
    out: dict = {"dataset": ds.name, "flip": flip, "label_k": label_k, "train_queries": len(qids)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        OpenAIStub(QrelsJudge(qrels_by_text(ds, "train"), flip=flip, seed=seed)) as stub,
    ):
        state = beir_state(ds, tmp)
        simulate_searches(
            state, [ds.query_text[q] for q in qids], ds.query_embeddings[[qrow[q] for q in qids]]
        )
        engine = stub_engine(state, stub, label_k=label_k, seed=seed, concurrency=concurrency)
        t0 = time.perf_counter()
        report = engine.finetune()
        out["finetune_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        again = engine.finetune()
        out["refinetune_s"] = round(time.perf_counter() - t0, 2)
        out["report"] = report.to_dict()
        out["rerun_llm_calls"] = again.cost["llm_calls"]
        out["rerun_cache_hits"] = again.cost["cache_hits"]
        out["stub_requests"] = len(stub.chat_requests)

        ids = state.ids()
        base = state.base_vectors(ids)
        if ids != list(ds.corpus_ids):  # test positives are corpus rows
            msg = "the store's ids are not the corpus ids in corpus order; rows would not match."
            raise BadInputError(msg)
        tuned = tuned_matrix(base, ids, report)
        before = evaluate(test.queries, base, test.positives, metric="cosine")
        after = evaluate(test.queries, tuned, test.positives, metric="cosine")

        tr, va, ho = gold_split(engine, ds, qids)
        gtr, gva = ds.task(tr, qrels_split="train"), ds.task(va, qrels_split="train")
        method = engine.config.method
        gres = finetune_embeddings(
            base, gtr.queries, gtr.positives, gva.queries, gva.positives, method=method
        )
        gold = evaluate(test.queries, gres.apply(base), test.positives, metric="cosine")
        # the engine's held-out queries scored with gold qrels: is its proof faithful?
        gho = ds.task(ho, qrels_split="train")
        ho_before = evaluate(gho.queries, base, gho.positives, metric="cosine")
        ho_after = evaluate(gho.queries, tuned, gho.positives, metric="cosine")
    gain = after["ndcg@10"] - before["ndcg@10"]
    gold_gain = gold["ndcg@10"] - before["ndcg@10"]
    out.update(
        test_before=before,
        test_engine=after,
        test_gold=gold,
        gold_gamma=gres.gamma,
        gold_rows_changed=len(gres.rows),
        engine_test_gain=gain,
        gold_test_gain=gold_gain,
        ratio=gain / gold_gain if gold_gain > 0 else float("nan"),
        heldout_gold_before=ho_before,
        heldout_gold_after=ho_after,
    )
    return out
