"""Measure NUDGE variants on the shared datasets to choose the defaults (prints tables).

``--sweep methods``: every method × selection × refit × weighting on every dataset in
../shared/data over several seeds: the seed carves a fresh 20% dev split out of train
(NFCorpus also runs with its own dev). Test NDCG@10 is reported next to nudge-ft's NUDGE-N on
the same split.

``--sweep negatives`` (issue 14): the core's defaults with gold labels, without and with
negatives: per query, the base top-k rows that are not positives (k = 10: what a user was
shown and did not mark; k = 20 / 50: what a judge grades 0 in a pool of that size), the weight
λ chosen on validation or fixed, and rows with negatives only kept (ρ = 0) or moved.

``--sweep engine``: the engine end to end with the clean stub judge at each ``--label-k``,
without and with negatives, as a fraction of the gain of the core on gold labels.

    python benchmarks/explore_defaults.py [--seeds 5] [--grid paper|fine]
    python benchmarks/explore_defaults.py --sweep negatives --seeds 3 [--first-seed 3]
    python benchmarks/explore_defaults.py --sweep engine --seeds 3 --label-k 20 50
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from nudge_rag.eval.data import load_beir, split_queries
from nudge_rag.fit.metrics import evaluate, exact_knn
from nudge_rag.fit.nudge import finetune_embeddings

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


FIRST_SEED = 0  # --first-seed: seeds 3.. are splits the defaults were not tuned on


def runs(ds, seeds):
    for seed in range(FIRST_SEED, FIRST_SEED + seeds):
        yield f"seed{seed}", split_queries(ds, seed=seed, use_given_dev=False)
    if "dev" in ds.qrels and FIRST_SEED == 0:
        yield "own-dev", split_queries(ds)


# --------------------------------------------------------------------------- negatives (issue 14)


def base_negatives(E, task, k):
    """Per query, the base top-``k`` rows that are not positives (what a judge grades 0)."""
    top = exact_knn(task.queries, E, k, metric="cosine")[1]
    return [
        [int(r) for r in row if int(r) not in pos]
        for row, pos in zip(top, task.positives, strict=True)
    ]


NEG_VARIANTS = {
    # name: (negatives: base top-k non-positives, or None; λ (None: chosen on validation from
    # NEGATIVE_WEIGHT_GRID), ρ (None: the default 0)). Any λ > 0 is kept only when it beats
    # λ = 0 on validation at the chosen γ.
    "no negatives (today's default)": (None, None, None),
    "top-10 negatives, λ chosen, ρ=0 (default)": (10, None, None),
    "top-20 negatives, λ chosen, ρ=0 (default)": (20, None, None),
    "top-50 negatives, λ chosen, ρ=0 (default)": (50, None, None),
    "top-20 negatives, λ=0.1, ρ=0": (20, 0.1, 0.0),
    "top-20 negatives, λ=0.5, ρ=0": (20, 0.5, 0.0),
    "top-20 negatives, λ=0.25, ρ=0.25": (20, 0.25, 0.25),
    "top-20 negatives, λ=0.25, ρ=1": (20, 0.25, 1.0),
}


def sweep_negatives(datasets, seeds, variants, rows):
    """The core with gold labels: defaults × negatives (base top-k non-positives) variants."""
    for ds in datasets:
        E = ds.corpus_embeddings
        test = ds.task("test")
        for tag, sp in runs(ds, seeds):
            tr = ds.task(sp.train, qrels_split="train")
            va = ds.task(sp.dev)
            ref = evaluate(test.queries, nudge_ft_n(E, tr, va), test.positives)["ndcg@10"]
            for name in variants:
                k, weight, step = NEG_VARIANTS[name]
                kw = {}
                if k is not None:
                    kw = {
                        "train_negatives": base_negatives(E, tr, k),
                        "val_negatives": base_negatives(E, va, k),
                        "negative_weight": weight,
                        "negative_step": step,
                    }
                t0 = time.perf_counter()
                res = finetune_embeddings(
                    E, tr.queries, tr.positives, va.queries, va.positives, **kw
                )
                fit_s = time.perf_counter() - t0
                ndcg = evaluate(test.queries, res.apply(E), test.positives)["ndcg@10"]
                rows.append(
                    {"dataset": ds.name, "variant": name, "gain": ndcg - ref, "fit_s": fit_s}
                )
                print(
                    f"{ds.name:9s} {tag:8s} {name:40s} nudge-ft-N={ref:.4f} ours={ndcg:.4f} "
                    f"gain={ndcg - ref:+.4f} gamma={res.gamma:.2f} "
                    f"lambda={res.negative_weight:.2f} rho={res.negative_step:.2f} rows={len(res.rows)} fit={fit_s:.2f}s",
                    flush=True,
                )


def sweep_engine(datasets, seeds, label_ks, rows):
    """The engine with the clean stub judge (``QrelsJudge`` over a local OpenAI-speaking HTTP
    server), with and without negatives, against NUDGE on gold qrels of the same queries.

    Every train query is one simulated search (a trace); the judge grades the top ``label_k``
    of each from the train qrels. ``gold`` fits the core's defaults on gold qrels of the
    engine's own train / validation queries (no negatives): the fraction is engine test gain /
    that gain. ``gold+neg`` adds base top-``label_k`` non-positives as negatives.
    """
    import tempfile

    from nudge_rag.eval.simulate import (
        beir_state,
        gold_split,
        qrels_by_text,
        simulate_searches,
        stub_engine,
        tuned_matrix,
    )
    from nudge_rag.testing.judges import QrelsJudge
    from nudge_rag.testing.openai_stub import OpenAIStub

    for ds in datasets:
        qrow = {q: i for i, q in enumerate(ds.query_ids)}
        qids = sorted(ds.qrels["train"])
        test = ds.task("test")
        with (
            tempfile.TemporaryDirectory() as tmp,
            OpenAIStub(QrelsJudge(qrels_by_text(ds, "train"))) as stub,
        ):
            state = beir_state(ds, tmp)
            simulate_searches(
                state,
                [ds.query_text[q] for q in qids],
                ds.query_embeddings[[qrow[q] for q in qids]],
            )
            ids = state.ids()
            base = state.base_vectors(ids)
            before = evaluate(test.queries, base, test.positives, metric="cosine")["ndcg@10"]
            for label_k, seed in itertools.product(label_ks, range(FIRST_SEED, FIRST_SEED + seeds)):
                gains = {}
                for use_neg in (False, True):
                    eng = stub_engine(
                        state, stub, label_k=label_k, seed=seed, use_negatives=use_neg
                    )
                    t0 = time.perf_counter()
                    rep = eng.finetune()
                    fit_s = time.perf_counter() - t0
                    eng.close()
                    tuned = tuned_matrix(base, ids, rep)
                    after = evaluate(test.queries, tuned, test.positives, metric="cosine")
                    gains[use_neg] = (after["ndcg@10"] - before, fit_s, rep)
                tr, va, _ = gold_split(eng, ds, qids)
                gtr, gva = ds.task(tr, qrels_split="train"), ds.task(va, qrels_split="train")
                gold = finetune_embeddings(
                    base, gtr.queries, gtr.positives, gva.queries, gva.positives
                )
                gold_gain = (
                    evaluate(test.queries, gold.apply(base), test.positives)["ndcg@10"] - before
                )
                gold_neg = finetune_embeddings(
                    base,
                    gtr.queries,
                    gtr.positives,
                    gva.queries,
                    gva.positives,
                    train_negatives=base_negatives(base, gtr, label_k),
                    val_negatives=base_negatives(base, gva, label_k),
                )
                gold_neg_gain = (
                    evaluate(test.queries, gold_neg.apply(base), test.positives)["ndcg@10"] - before
                )
                for use_neg, (gain, fit_s, rep) in gains.items():
                    row = {
                        "dataset": ds.name,
                        "label_k": label_k,
                        "seed": seed,
                        "negatives": use_neg,
                        "gain": gain,
                        "gold_gain": gold_gain,
                        "gold_neg_gain": gold_neg_gain,
                        "fraction": gain / gold_gain,
                        "fit_s": fit_s,
                        "negative_pairs": rep.labels.get("negative_pairs", 0),
                    }
                    rows.append(row)
                    print(
                        f"{ds.name:9s} label_k={label_k:3d} seed={seed} negatives={use_neg!s:5s} "
                        f"engine gain {gain:+.4f} gold {gold_gain:+.4f} (gold+neg "
                        f"{gold_neg_gain:+.4f}) fraction {gain / gold_gain:.3f} gamma "
                        f"{rep.gamma:.2f} finetune {fit_s:.1f} s",
                        flush=True,
                    )
    print("\nEngine (clean stub judge) test NDCG@10 gain as a fraction of the gold-label gain:")
    print("mean (worst) over seeds; finetune s includes judging (cached after the first run)")
    print("| dataset | label_k | negatives | engine gain | gold gain | fraction | finetune s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key in dict.fromkeys((r["dataset"], r["label_k"], r["negatives"]) for r in rows):
        sel = [r for r in rows if (r["dataset"], r["label_k"], r["negatives"]) == key]
        fr = [r["fraction"] for r in sel]
        print(
            f"| {key[0]} | {key[1]} | {'yes' if key[2] else 'no'} | "
            f"{np.mean([r['gain'] for r in sel]):+.4f} | "
            f"{np.mean([r['gold_gain'] for r in sel]):+.4f} | {np.mean(fr):.3f} ({min(fr):.3f}) | "
            f"{np.mean([r['fit_s'] for r in sel]):.1f} |"
        )


def sweep_methods(datasets, seeds, gammas, rows):
    """Every method × selection × refit × weighting, without negatives."""
    for ds in datasets:
        E = ds.corpus_embeddings
        test = ds.task("test")
        base = evaluate(test.queries, E, test.positives)["ndcg@10"]
        for tag, sp in runs(ds, seeds):
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


def print_table(rows, title="Gain in test NDCG@10 over nudge-ft NUDGE-N"):
    """Markdown: mean (worst) gain per dataset and variant; the mean fit time when measured."""
    datasets = sorted({r["dataset"] for r in rows})
    timed = all("fit_s" in r for r in rows)
    print(f"\n{title}: mean (worst) over runs per dataset")
    print(
        "| variant | "
        + " | ".join(datasets)
        + " | mean |"
        + (" fit s |" if timed else "")
        + "\n| --- |"
        + " --- |" * (len(datasets) + 1 + timed)
    )
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells, means = [], []
        for d in datasets:
            gains = [r["gain"] for r in rows if r["variant"] == v and r["dataset"] == d]
            means.append(np.mean(gains))
            cells.append(f"{np.mean(gains):+.4f} ({min(gains):+.4f})")
        fit = ""
        if timed:
            fit = f" {np.mean([r['fit_s'] for r in rows if r['variant'] == v]):.2f} |"
        print(f"| `{v.strip()}` | " + " | ".join(cells) + f" | {np.mean(means):+.4f} |" + fit)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1")
    ap.add_argument("--grid", choices=["paper", "fine"], default="paper")
    ap.add_argument(
        "--sweep",
        choices=["methods", "negatives", "engine"],
        default="methods",
        help="methods: method × selection × refit × weighting; negatives: the core with gold "
        "labels and base top-k negatives; engine: the engine with the stub judge",
    )
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--variants", nargs="+", default=None, help="negatives: names to run")
    ap.add_argument("--label-k", nargs="+", type=int, default=[20, 50])
    args = ap.parse_args()
    global FIRST_SEED
    FIRST_SEED = args.first_seed
    gammas = FINE_GRID if args.grid == "fine" else None
    paths = sorted(p for p in DATA.iterdir() if (p / "emb").exists())
    if args.datasets:
        paths = [p for p in paths if p.name in args.datasets]
    rows: list[dict] = []
    if args.sweep == "engine":
        sweep_engine([load_beir(p) for p in paths], args.seeds, args.label_k, rows)
        return
    datasets = [load_beir(p, load_text=False) for p in paths]
    if args.sweep == "methods":
        sweep_methods(datasets, args.seeds, gammas, rows)
    else:
        sweep_negatives(datasets, args.seeds, args.variants or list(NEG_VARIANTS), rows)
    print_table(rows)


if __name__ == "__main__":
    main()
