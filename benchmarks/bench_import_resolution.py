"""Importing SciFact's train history from each tool's export when its documents carry no ids.

    python benchmarks/bench_import_resolution.py          # prints one line per case

The history: SciFact's train claims searched over the base vectors (top 10), SciFact's gold
labels as the feedback. Each case writes it the way a tool keeps it, with documents that carry
no chunk id (LangSmith: ``metadata["source"]`` only, or text only; Langfuse's LangChain handler
span: text only), reads it back with ``store=`` and imports it into a fresh store. Printed per
case: records imported, documents resolved by id / metadata / content, records unresolved, the
read + import seconds, the process's peak RSS above its RSS before the read (sampled), and the
engine's held-out NDCG@10 before / after / gain with its CI.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import peak_rss

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.eval.data import load_beir, shared_data_dir
from nudge_rag.eval.simulate import beir_state
from nudge_rag.fit.metrics import exact_knn
from nudge_rag.importers import langfuse, langsmith


def history(ds: Any) -> list[dict]:
    qrow = {q: i for i, q in enumerate(ds.query_ids)}
    qids = sorted(q for q in ds.qrels["train"] if q in ds.query_text)
    _, top = exact_knn(
        ds.query_embeddings[[qrow[q] for q in qids]], ds.corpus_embeddings, 10, metric="cosine"
    )
    return [
        {"id": f"run-{q}", "query": ds.query_text[q], "time": 1.7e9 + n,
         "ids": [ds.corpus_ids[r] for r in top[n]],
         "gold": [d for d, g in ds.qrels["train"][q].items() if g > 0]}
        for n, q in enumerate(qids)
    ]  # fmt: skip


def export(ds: Any, h: list[dict], case: str, store: Any) -> list[Any]:
    text = ds.text_of
    if case.startswith("langsmith"):
        meta = case.startswith("langsmith/source")
        runs = [
            {"id": x["id"], "run_type": "retriever", "inputs": {"query": x["query"]},
             "start_time": x["time"],
             "outputs": {"documents": [
                 {"page_content": text(i), "metadata": {"source": i} if meta else {}}
                 for i in x["ids"]]}}
            for x in h
        ]  # fmt: skip
        feedback = [
            {"run_id": x["id"], "key": "relevance", "correction": {"relevant_ids": x["gold"]}}
            for x in h
        ]
        return langsmith.read(runs, feedback, store=None if case.endswith("no store") else store)
    obs = {"data": [
        {"id": x["id"], "traceId": x["id"], "type": "SPAN", "name": "VectorStoreRetriever",
         "startTime": x["time"], "input": x["query"],
         "output": [{"page_content": text(i), "metadata": {}, "type": "Document"}
                    for i in x["ids"]]}
        for x in h
    ]}  # fmt: skip
    scores = {"data": [
        {"id": f"s-{x['id']}", "traceId": x["id"], "observationId": x["id"],
         "dataType": "NUMERIC", "value": 1.0, "metadata": {"relevant_ids": x["gold"]}}
        for x in h
    ]}  # fmt: skip
    return langfuse.read(obs, scores, store=store)


def main() -> None:
    root = shared_data_dir()
    if root is None or not (root / "scifact").is_dir():
        sys.exit("../shared/data/scifact not found (set NUDGE_RAG_DATA)")
    ds = load_beir(root / "scifact")
    h = history(ds)
    for case in (
        "langsmith/source, no store",
        "langsmith/source",
        "langsmith/text",
        "langfuse/text",
    ):
        with tempfile.TemporaryDirectory() as tmp:
            state = beir_state(ds, Path(tmp) / "s")
            t0 = time.perf_counter()
            with peak_rss() as peak:
                report = state.import_traces(export(ds, h, case, state))
            seconds = time.perf_counter() - t0
            head = (
                f"{case}: {len(h)} records, imported {report.imported}, resolved "
                f"{report.resolved}, unresolved records {len(report.unresolved)}, bad "
                f"{len(report.bad)}; read+import {seconds:.1f} s, peak RSS +"
                f"{peak[0] / 2**20:.0f} MiB"
            )
            if not report.imported:
                print(f"{head}; e.g. {report.unresolved[0][2]}")
                state.close()
                continue
            r = NudgeFinetuneEngine(state, llm=None, seed=0, progress=False).finetune()
            n = r.ndcg
            print(
                f"{head}; held-out NDCG@10 {n.before:.4f} -> {n.after:.4f} "
                f"({n.gain:+.4f}, CI [{n.ci_low:+.4f}, {n.ci_high:+.4f}], proven {r.proven})"
            )
            state.close()


if __name__ == "__main__":
    main()
