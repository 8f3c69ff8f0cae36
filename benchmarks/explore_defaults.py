"""Measure NUDGE variants on the shared datasets to choose the defaults (prints a table).

Every method × selection × refit on every dataset in ../shared/data over several seeds:
the seed carves a fresh 20% dev split out of train (NFCorpus also runs with its own dev).
Test NDCG@10 / Recall@10 are reported next to nudge-ft's NUDGE-N on the same split.

    python benchmarks/explore_defaults.py [--seeds 5] [--grid paper|fine]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
from pathlib import Path

import numpy as np
import torch

from nudge_rag.core.data import load_beir, split_queries
from nudge_rag.core.metrics import evaluate
from nudge_rag.core.nudge import finetune_embeddings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FINE_GRID = [round(0.01 * x, 2) for x in range(100)]


def nudge_ft_n(E, tr, va):
    from nudge import NUDGEN

    with contextlib.redirect_stdout(io.StringIO()):
        return NUDGEN(device=torch.device("cpu")).finetune_embeddings(
            E,
            {"q_embs": tr.queries, "q_ans_indx": [sorted(p) for p in tr.positives]},
            {"q_embs": va.queries, "q_ans_indx": [sorted(p) for p in va.positives]},
        )


def runs(ds, seeds):
    for seed in range(seeds):
        yield f"seed{seed}", split_queries(ds, seed=seed, use_given_dev=False)
    if "dev" in ds.qrels:
        yield "own-dev", split_queries(ds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--grid", choices=["paper", "fine"], default="paper")
    args = ap.parse_args()
    gammas = FINE_GRID if args.grid == "fine" else None
    rows = []
    for path in sorted(p for p in DATA.iterdir() if (p / "emb").exists()):
        ds = load_beir(path, load_text=False)
        E = ds.corpus_embeddings
        test = ds.task("test")
        base = evaluate(test.queries, E, test.positives)["ndcg@10"]
        for tag, sp in runs(ds, args.seeds):
            tr = ds.task(sp.train, qrels_split="train")
            va = ds.task(sp.dev)
            ref = evaluate(test.queries, nudge_ft_n(E, tr, va), test.positives)["ndcg@10"]
            for method, sel, refit, weighting in itertools.product(
                ["nudge-n", "nudge-m"],
                ["top1", "ndcg@10"],
                [False, True],
                ["uniform", "sqrt-positives"],
            ):
                grid = gammas if method == "nudge-n" else None
                res = finetune_embeddings(
                    E,
                    tr.queries,
                    tr.positives,
                    va.queries,
                    va.positives,
                    method=method,
                    selection=sel,
                    refit=refit,
                    weighting=weighting,
                    gammas=grid,
                )
                ndcg = evaluate(test.queries, res.apply(E), test.positives)["ndcg@10"]
                variant = f"{method} {sel:8s} refit={refit!s:5s} {weighting:14s}"
                rows.append({"dataset": ds.name, "variant": variant, "gain": ndcg - ref})
                print(
                    f"{ds.name:9s} {tag:8s} {variant} base={base:.4f} nudge-ft-N={ref:.4f} "
                    f"ours={ndcg:.4f} gain={ndcg - ref:+.4f} gamma={res.gamma:.3f}",
                    flush=True,
                )
    print("\nGain in test NDCG@10 over nudge-ft NUDGE-N: mean (min) over runs per dataset")
    print("| variant | " + " | ".join(sorted({r["dataset"] for r in rows})) + " | mean |")
    variants = sorted({r["variant"] for r in rows}, key=str)
    datasets = sorted({r["dataset"] for r in rows})
    for v in variants:
        cells, means = [], []
        for d in datasets:
            gains = [r["gain"] for r in rows if r["variant"] == v and r["dataset"] == d]
            means.append(np.mean(gains))
            cells.append(f"{np.mean(gains):+.4f} ({min(gains):+.4f})")
        print(f"| `{v.strip()}` | " + " | ".join(cells) + f" | {np.mean(means):+.4f} |")


if __name__ == "__main__":
    main()
