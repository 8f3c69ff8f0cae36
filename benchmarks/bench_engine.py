"""End to end: simulated users, an LLM judge over HTTP, the engine, and what gold labels give.

For each dataset: the corpus goes into an in-memory store behind a real NudgeState; every
train query is run as a search (a trace); the engine labels the traces through the local
OpenAI-compatible stub, whose judge answers from the train qrels (clean, or with a seeded
fraction of judgments flipped), fine-tunes and proves the gain on its own held-out queries.

Then both are scored on the dataset's TEST split with gold qrels:

- engine: the vectors the engine's report would write;
- gold:   NUDGE fitted directly on gold qrels of the same non-held-out train queries (the
          engine's hash split over query texts), same method and defaults.

``ratio`` = engine test gain / gold test gain (target ≥ 0.8 with clean judgments). A second
``finetune()`` on the same traces shows the label cache (LLM calls 0).

    python benchmarks/bench_engine.py                        # scifact + nfcorpus, flip 0 and 0.1
    python benchmarks/bench_engine.py --datasets scifact --flips 0 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nudge_rag.eval.data import load_beir, shared_data_dir
from nudge_rag.eval.simulate import compare_with_gold


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--flips", nargs="+", type=float, default=[0.0, 0.1])
    ap.add_argument("--label-k", nargs="+", type=int, default=[20])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    datasets = {}
    for name in args.datasets:
        root = shared_data_dir()
        if root is None or not (root / name).is_dir():
            print(f"../shared/data/{name} not found (set NUDGE_RAG_DATA)", file=sys.stderr)
            return 2
        datasets[name] = load_beir(root / name)
    for name in args.datasets:
        for flip, label_k in [(f, k) for f in args.flips for k in args.label_k]:
            r = compare_with_gold(datasets[name], flip=flip, label_k=label_k, seed=args.seed)
            rows.append(r)
            rep = r["report"]
            print(
                f"\n## {name}, {round(flip * 100)}% of judgments flipped, label_k={label_k} "
                f"({r['train_queries']} simulated searches)\n"
            )
            print("| | NDCG@10 | Recall@10 |\n| --- | --- | --- |")
            for label, m in (
                ("test, base", r["test_before"]),
                ("test, engine (LLM labels)", r["test_engine"]),
                ("test, NUDGE on gold qrels", r["test_gold"]),
            ):
                print(f"| {label} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} |")
            print(
                f"\nengine test gain {r['engine_test_gain']:+.4f} vs gold {r['gold_test_gain']:+.4f}"
                f" → ratio {r['ratio']:.2f} (gamma engine {rep['gamma']:.2f}, gold "
                f"{r['gold_gamma']:.2f}; rows changed {rep['rows_changed']} vs "
                f"{r['gold_rows_changed']})"
            )
            n = rep["ndcg"]
            hb, ha = r["heldout_gold_before"]["ndcg@10"], r["heldout_gold_after"]["ndcg@10"]
            print(
                f"engine's own held-out ({rep['queries']['heldout']} queries, LLM labels): "
                f"NDCG@10 {n['before']:.4f} → {n['after']:.4f}, gain {n['gain']:+.4f} "
                f"CI [{n['ci_low']:+.4f}, {n['ci_high']:+.4f}], proven {rep['proven']}; "
                f"same queries with gold qrels: {hb:.4f} → {ha:.4f} ({ha - hb:+.4f})"
            )
            c = rep["cost"]
            print(
                f"LLM: {c['questions']} questions, {c['llm_calls']} calls, {c['skipped_invalid']}"
                f" invalid; labeled {rep['labels']['llm']}, no positive in the pool "
                f"{rep['labels']['no_positive']}; rerun: {r['rerun_llm_calls']} calls, "
                f"{r['rerun_cache_hits']} cache hits; finetune {r['finetune_s']} s, rerun "
                f"{r['refinetune_s']} s"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
