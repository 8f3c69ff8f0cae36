"""Answer-level feedback on SciFact: what thumbs up / down on answers buy, against gold labels.

Every SciFact train query is run as a search (k=10) against an in-memory store behind a real
NudgeState. The simulated user rates the answer built on it: positive when the search showed a
gold chunk of the query, negative otherwise; no chunk is named. The LLM stub judges over HTTP
(``OpenAIStub``): for a positively rated search it grades which shown chunks the answer rests
on (the support prompt, from the train qrels); with ``llm`` given, the engine also judges the
other searches over its ``label_k`` pool, as for any search without feedback.

Rows, each scored on the TEST split (never used for fitting) against gold qrels, NDCG@10:

- gold feedback:        every search's gold chunks recorded as relevant ids (no LLM);
- gold among shown:     only the gold chunks the search showed (a perfect click; the most a
                        rating on an answer built from the results can point at);
- answer ratings:       the ratings only; the judge picks what liked answers rest on and
                        grades the disliked searches' pools like any unlabelled search;
- liked answers only:   the same, with only the positively rated searches in the log (what
                        the ratings alone are worth: negatives add no label).

    python benchmarks/bench_answer_feedback.py [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.engine.engine import NudgeFinetuneEngine
from nudge_rag.eval.data import load_beir, shared_data_dir
from nudge_rag.eval.simulate import beir_state, qrels_by_text, simulate_searches, tuned_matrix
from nudge_rag.fit.metrics import evaluate, exact_knn
from nudge_rag.state.files import atomic_write
from nudge_rag.testing import OpenAIStub, QrelsJudge


def run(ds: Any, mode: str, *, seed: int, label_k: int) -> dict[str, Any]:
    """One row: simulate, label by ``mode``, fine-tune, score on the test split."""
    qrow = {q: i for i, q in enumerate(ds.query_ids)}
    qids = sorted(ds.qrels["train"])
    texts = [ds.query_text[q] for q in qids]
    embs = ds.query_embeddings[[qrow[q] for q in qids]]
    gold = {ds.query_text[q]: {d for d, g in ds.qrels["train"][q].items() if g > 0} for q in qids}
    with (
        tempfile.TemporaryDirectory() as tmp,
        OpenAIStub(QrelsJudge(qrels_by_text(ds, "train"), seed=seed)) as stub,
    ):
        state = beir_state(ds, tmp)
        if mode == "liked answers only":  # search all, keep only the liked searches' traces
            state.tracing = False
        tids = simulate_searches(state, texts, embs)
        up = down = 0
        if mode == "liked answers only":
            state.tracing = True
            ids = state.ids()
            top = exact_knn(
                np.asarray(embs, np.float32), state.get_vectors(ids), 10, metric=state.metric
            )[1]
            keep = [n for n, t in enumerate(texts) if gold[t] & {ids[r] for r in top[n]}]
            down = len(texts) - len(keep)
            tids = simulate_searches(state, [texts[n] for n in keep], embs[keep])
            texts = [texts[n] for n in keep]
        for tid, text in zip(tids, texts, strict=True):
            (trace,) = state.iter_traces(ids=[tid], with_embeddings=False)
            if mode == "gold feedback":
                state.record_feedback(tid, relevant_ids=sorted(gold[text]))
                continue
            if mode == "gold among shown":  # what a perfect click on the results gives
                seen = sorted(gold[text] & set(trace.result_ids))
                if seen:
                    state.record_feedback(tid, relevant_ids=seen)
                up, down = up + bool(seen), down + (not seen)
                continue
            liked = bool(gold[text] & set(trace.result_ids))
            state.record_answer_feedback(tid, liked, answer=f"(an answer to: {text})")
            up, down = up + liked, down + (not liked)
        engine = NudgeFinetuneEngine(
            state,
            llm=None if mode.startswith("gold") else stub.client(),
            llm_model=None if mode.startswith("gold") else "stub-judge",
            label_k=label_k,
            seed=seed,
            progress=False,
            concurrency=8,
        )
        t0 = time.perf_counter()
        report = engine.finetune()
        seconds = time.perf_counter() - t0
        ids = state.ids()
        base = state.base_vectors(ids)
        tuned = tuned_matrix(base, ids, report)
        test = ds.task("test")
        before = evaluate(test.queries, base, test.positives, metric="cosine")["ndcg@10"]
        after = evaluate(test.queries, tuned, test.positives, metric="cosine")["ndcg@10"]
        calls = dict(stub.judge.calls) if hasattr(stub, "judge") else {}
    return {
        "mode": mode,
        "searches": len(qids),
        "rated_up": up,
        "rated_down": down,
        "labels": {k: report.labels.get(k, 0) for k in ("feedback", "llm", "answer")},
        "heldout_gain": report.ndcg.gain,
        "heldout_ci": [report.ndcg.ci_low, report.ndcg.ci_high],
        "proven": report.proven,
        "test_before": before,
        "test_after": after,
        "test_gain": after - before,
        "llm_calls": report.cost.get("llm_calls", 0),
        "judge_requests": calls,
        "finetune_s": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label-k", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    root = shared_data_dir()
    if root is None or not (root / "scifact").is_dir():
        print("../shared/data/scifact not found (set NUDGE_RAG_DATA)", file=sys.stderr)
        return 2
    ds = load_beir(root / "scifact")
    rows = [
        run(ds, mode, seed=args.seed, label_k=args.label_k)
        for mode in ("gold feedback", "gold among shown", "answer ratings", "liked answers only")
    ]
    gold_gain = rows[0]["test_gain"]
    print(f"SciFact, {rows[0]['searches']} simulated searches (k=10), seed {args.seed}\n")
    print(
        "| labels from | rated up / down | labelled (feedback / llm / answer) | held-out gain "
        "[95% CI] | test NDCG@10 before → after | test gain | of gold gain | LLM calls |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lab = r["labels"]
        share = r["test_gain"] / gold_gain if gold_gain > 0 else float("nan")
        print(
            f"| {r['mode']} | {r['rated_up']} / {r['rated_down']} | {lab['feedback']} / "
            f"{lab['llm']} / {lab['answer']} | {r['heldout_gain']:+.4f} [{r['heldout_ci'][0]:+.4f}, "
            f"{r['heldout_ci'][1]:+.4f}] | {r['test_before']:.4f} → {r['test_after']:.4f} | "
            f"{r['test_gain']:+.4f} | {share:.0%} | {r['llm_calls']} |"
        )
    if args.json:
        atomic_write(args.json, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
