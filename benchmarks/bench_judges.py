"""Judges of known quality against the engine's proof: does a weak judge ever get applied?

For each dataset and seed: the corpus goes into an in-memory store behind a real NudgeState;
every train query is run as a search (a trace). A seeded share of those searches (nested: the
5% are among the 10%, ...) carries human feedback: the train qrels positives of that query
(an annotator who knows the answer). The rest are judged through the local OpenAI-compatible
stub by a :class:`~nudge_rag.testing.judges.SimilarityBiasedJudge` of set precision (its false
positives are the chunks nearest the query, and it misses a share (1 − precision) / 2 of the
gold positives; 1.0 is the gold judge), in process (``JudgeClient``, no HTTP). The engine (defaults:
label_k 20, audit on) fine-tunes and decides; the vectors it would write are then scored on
the dataset's TEST split with gold qrels: the true test gain.

Printed per (dataset, judge precision, human share), over seeds: the true test NDCG@10 gain
(mean, and the worst seed), how often the engine called it proven, how often a proven one had
a negative true gain (a false proof), who graded the proof, and the audit's figures (measured
precision / recall against the humans, trusted or not, its extra judge prompts). With
``--unaudited`` the cells of the smallest human share above 0 are also run with
``audit=False`` (today's engine) for comparison.

    python benchmarks/bench_judges.py                      # scifact + nfcorpus, seed 0
    python benchmarks/bench_judges.py --judges nearest scattered --seeds 0 1 --unaudited

The default (40 runs) took about 8 + 11 minutes on 2 CPU cores shared with other jobs
(one SciFact run 10-40 s, one NFCorpus run 35-80 s); more seeds or both judge kinds multiply it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.engine.engine import NudgeFinetuneEngine
from nudge_rag.eval.data import load_beir, shared_data_dir
from nudge_rag.eval.simulate import beir_state, qrels_by_text, simulate_searches
from nudge_rag.fit.metrics import evaluate
from nudge_rag.testing.judges import JudgeClient, SimilarityBiasedJudge

PRECISIONS = (1.0, 0.7, 0.5, 0.3, 0.15)
SHARES = (0.0, 0.05, 0.10, 0.25)


def _rank(seed: int, qid: str) -> bytes:
    return hashlib.sha256(f"human:{seed}:{qid}".encode()).digest()


def distorted_similarity(ds: Any, seed: int, strength: float = 1.5) -> Any:
    """``prefer(query, ids)`` for a judge with its own, weaker sense of similarity: cosine after
    scaling each embedding dimension by a seeded ``exp(strength · N(0, 1))`` (a worse embedding
    model, consistent across queries, as a small learned reranker's errors are)."""
    rng = np.random.default_rng(1000 + seed)
    scale = np.exp(strength * rng.normal(size=ds.corpus_embeddings.shape[1])).astype(np.float32)

    def unit(x: np.ndarray) -> np.ndarray:
        y = x * scale
        return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)

    chunks = unit(ds.corpus_embeddings)
    row = {d: n for n, d in enumerate(ds.corpus_ids)}
    q_of = {
        " ".join(ds.query_text[q].lower().split()): unit(ds.query_embeddings[n])
        for n, q in enumerate(ds.query_ids)
    }

    def prefer(query: str, ids: Any) -> np.ndarray:
        q = q_of.get(" ".join(query.lower().split()))
        if q is None:
            return np.zeros(len(ids))
        return chunks[[row[i] for i in ids]] @ q

    return prefer


def run_dataset(
    ds: Any,
    seed: int,
    precisions: list[float],
    shares: list[float],
    *,
    unaudited: bool,
    nearest: bool = True,
    label_k: int = 20,
    per_prompt: float | None = None,
    longest: bool = False,
    distorted: bool = False,
    audits: tuple[bool, ...] = (True,),
    miss: float | None = None,
    sink: Path | None = None,
) -> list[dict]:
    """Every (share, precision) cell of one dataset and seed."""
    qrow = {q: i for i, q in enumerate(ds.query_ids)}
    qids = sorted(ds.qrels["train"])
    test = ds.task("test")
    qrels = qrels_by_text(ds, "train")
    by_human = sorted(qids, key=lambda q: _rank(seed, q))  # who gets feedback first
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        state = beir_state(ds, tmp)
        texts = [ds.query_text[q] for q in qids]
        tids = dict(
            zip(
                qids,
                simulate_searches(state, texts, ds.query_embeddings[[qrow[q] for q in qids]]),
                strict=True,
            )
        )
        ids = state.ids()
        base = state.base_vectors(ids)
        row_of = {i: n for n, i in enumerate(ids)}
        before = evaluate(test.queries, base, test.positives, metric="cosine")["ndcg@10"]
        held = set(ids)
        given = 0
        for share in sorted(shares):
            n_human = round(share * len(qids))
            for q in by_human[given:n_human]:  # nested: add the feedback this share adds
                rel = [d for d, g in ds.qrels["train"][q].items() if g > 0 and d in held]
                if rel:
                    state.record_feedback(tids[q], relevant_ids=rel)
            given = max(given, n_human)
            for p in precisions:
                today = unaudited and share == min(x for x in shares if x > 0)
                for audit in (True, False) if today else audits:
                    # a weaker judge also misses more: recall 1 - (1 - p) / 2
                    judge = SimilarityBiasedJudge(
                        qrels,
                        precision=p,
                        miss=(1 - p) / 2 if miss is None else miss,
                        nearest=nearest,
                        per_prompt=per_prompt,
                        longest=longest,
                        prefer=distorted_similarity(ds, seed) if distorted else None,
                        seed=seed,
                    )
                    eng = NudgeFinetuneEngine(
                        state,
                        llm=JudgeClient(judge, name=f"biased-{p}-{seed}"),
                        seed=seed,
                        progress=False,
                        concurrency=1,
                        audit=audit,
                        label_k=label_k,
                    )
                    t0 = time.perf_counter()
                    rep = eng.finetune()
                    secs = time.perf_counter() - t0
                    eng.close()
                    tuned = base.copy()
                    vecs = rep.vectors()
                    if vecs:
                        tuned[[row_of[i] for i in vecs]] = np.stack(list(vecs.values()))
                    after = evaluate(test.queries, tuned, test.positives, metric="cosine")
                    a = rep.judge_audit
                    kind = (
                        "distorted"
                        if distorted
                        else "longest"
                        if longest
                        else "nearest"
                        if nearest
                        else "scattered"
                    )
                    if per_prompt is not None:
                        kind += f", {per_prompt:g} per prompt"
                    if miss is not None:
                        kind += f", recall {1 - miss:g}"
                    graded = {
                        f"{who}_{f}": v
                        for who in ("human", "judge")
                        if who in rep.graded
                        for f, v in (
                            ("gain", rep.graded[who].gain),
                            ("ci_low", rep.graded[who].ci_low),
                            ("ci_high", rep.graded[who].ci_high),
                            ("n", rep.graded_queries.get(who, 0)),
                        )
                    }
                    rows.append(
                        {
                            "dataset": ds.name,
                            "judge": kind,
                            "label_k": label_k,
                            "seed": seed,
                            "share": share,
                            "human_searches": rep.labels.get("feedback", 0),
                            "precision": p,
                            "audit": audit,
                            "true_gain": after["ndcg@10"] - before,
                            "proven": rep.proven,
                            "ci_low": rep.ndcg.ci_low,
                            "heldout_gain": rep.ndcg.gain,
                            "proof_by": rep.proof_by,
                            "vetoed": bool(getattr(rep, "vetoed", False)),
                            "gamma": rep.gamma,
                            **graded,
                            "audit_precision": None if a is None else a.precision,
                            "audit_recall": None if a is None else a.recall,
                            "trusted": None if a is None else a.trusted,
                            "audit_prompts": 0 if a is None else a.prompts,
                            "judge_prompts": rep.cost.get("questions", 0),
                            "finetune_s": secs,
                        }
                    )
                    r = rows[-1]
                    if sink is not None:  # each row as it comes: a cut-short run keeps them
                        with sink.open("a", encoding="utf-8") as fh:
                            fh.write(json.dumps(r) + "\n")
                    print(
                        f"{ds.name} {rows[-1]['judge']} seed {seed} share {share:.0%} p {p} audit {audit}: true "
                        f"{r['true_gain']:+.4f} proven {r['proven']} ({r['proof_by']}) audit "
                        f"{r['audit_precision']} trusted {r['trusted']} [{secs:.1f}s]",
                        file=sys.stderr,
                        flush=True,
                    )
    return rows


def _mean(rows: list[dict], key: str) -> str:
    known = [r[key] for r in rows if r.get(key) is not None]
    return f"{np.mean(known):.0f}" if known else "n/a"


def _key(r: dict) -> tuple:
    return (r["dataset"], r["judge"], r.get("label_k", 20), r["precision"], r["share"], r["audit"])


def table(rows: list[dict]) -> str:
    """The markdown table: one line per (dataset, judge, label_k, precision, share, audit)."""
    head = (
        "| dataset | false positives | label_k | judge precision | human share (searches) "
        "| true test gain, mean [worst] | proven | false proofs | vetoed "
        "| CI low > 0 (false) | proof graded by "
        "| audit precision / recall (trusted) | audit prompts / all judge prompts |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    out = [head]
    keys = sorted({_key(r) for r in rows}, key=lambda k: (*k[:3], -k[3], k[4], not k[5]))
    for d, j, lk, p, s, audit in keys:
        rs = [r for r in rows if _key(r) == (d, j, lk, p, s, audit)]
        gains = [r["true_gain"] for r in rs]
        proven = sum(r["proven"] for r in rs)
        false = sum(r["proven"] and r["true_gain"] < 0 for r in rs)
        vetoed = sum(bool(r.get("vetoed")) for r in rs)
        ci_ok = [r for r in rs if r["ci_low"] > 0]  # today's engine's verdict (no veto)
        ci_bad = sum(r["true_gain"] < 0 for r in ci_ok)
        by = "/".join(sorted({r["proof_by"] for r in rs}))
        aud = [r for r in rs if r["audit_precision"] is not None]
        if aud:
            ap = np.mean([r["audit_precision"] for r in aud])
            recalls = [r["audit_recall"] for r in aud if r["audit_recall"] is not None]
            ar = f"{np.mean(recalls):.2f}" if recalls else "n/a"
            tr = sum(bool(r["trusted"]) for r in aud)
            audit_txt = f"{ap:.2f} / {ar} ({tr}/{len(aud)})"
        else:
            audit_txt = "unaudited" if audit else "off (audit=False)"
        humans = int(np.mean([r["human_searches"] for r in rs]))
        out.append(
            f"| {d} | {j} | {lk} | {p:.2f} | {s:.0%} ({humans}) | {np.mean(gains):+.4f} "
            f"[{min(gains):+.4f}] | {proven}/{len(rs)} | {false} | {vetoed} | {len(ci_ok)}/{len(rs)} "
            f"({ci_bad}) | {by} | {audit_txt} | "
            f"{np.mean([r['audit_prompts'] for r in rs]):.0f} / {_mean(rs, 'judge_prompts')} |"
        )
    return "\n".join(out)


def compact(rows: list[dict], judge: str = "nearest", label_k: int = 20) -> str:
    """Rows judge precision, columns dataset × human share; cells "mean true gain · proven
    k/n" (audit on; a false proof marked "!")."""
    rows = [r for r in rows if r["audit"] and r["judge"] == judge]
    rows = [r for r in rows if r.get("label_k", 20) == label_k]
    cols = sorted({(r["dataset"], r["share"]) for r in rows}, key=lambda c: (-ord(c[0][0]), c[1]))
    out = [
        "| judge precision | " + " | ".join(f"{d} {s:.0%}" for d, s in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for p in sorted({r["precision"] for r in rows}, reverse=True):
        cells = []
        for d, s in cols:
            rs = [r for r in rows if (r["dataset"], r["share"], r["precision"]) == (d, s, p)]
            if not rs:
                cells.append("")
                continue
            k = sum(r["proven"] for r in rs)
            bad = sum(r["proven"] and r["true_gain"] < 0 for r in rs)
            mark = f" ({bad}!)" if bad else ""
            cells.append(f"{np.mean([r['true_gain'] for r in rs]):+.3f} · {k}/{len(rs)}{mark}")
        out.append(f"| {p:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def vetoes(rows: list[dict]) -> str:
    """How the proofs of mixed held-out sets (human share > 0, human- and judge-graded
    queries) would have gone with no veto (today's engine), a veto only when the people's gain
    is significantly negative (CI high < 0), and the engine's (their mean gain < 0); audit on
    and off apart."""
    out = []
    rules = (
        ("no veto", lambda r: False),
        ("veto if significantly negative", lambda r: r.get("human_ci_high", 0.0) < 0),
        ("veto if negative (the engine)", lambda r: r.get("human_gain", 0.0) < 0),
    )
    for audit in (True, False):
        mixed = [
            r
            for r in rows
            if r["audit"] is audit and r["share"] > 0 and r["proof_by"] == "human+judge"
        ]
        if not mixed:
            continue
        for name, veto in rules:
            proven = [r for r in mixed if r["ci_low"] > 0 and not veto(r)]
            bad = sum(r["true_gain"] < 0 for r in proven)
            mean = np.mean([r["true_gain"] for r in proven]) if proven else 0.0
            out.append(
                f"- audit {'on' if audit else 'off'}, {name}: {len(proven)} of {len(mixed)} "
                f"mixed proofs proven, {bad} of them with a negative true gain; mean true gain "
                f"of the proven {mean:+.4f}"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--precisions", nargs="+", type=float, default=list(PRECISIONS))
    ap.add_argument("--shares", nargs="+", type=float, default=list(SHARES))
    ap.add_argument(
        "--judges",
        nargs="+",
        choices=["nearest", "scattered", "longest", "distorted"],
        default=["nearest"],
        help="false positives nearest the query, scattered over the pool, the longest, or "
        "nearest under a distorted similarity",
    )
    ap.add_argument("--label-k", type=int, default=20, help="the engine's label_k")
    ap.add_argument(
        "--per-prompt",
        type=float,
        default=None,
        help="false positives per prompt, gold or not (SimilarityBiasedJudge per_prompt)",
    )
    ap.add_argument(
        "--miss", type=float, default=None, help="the judge's miss rate (default (1 - p) / 2)"
    )
    ap.add_argument("--audit-off", action="store_true", help="run every cell with audit=False only")
    ap.add_argument("--unaudited", action="store_true", help="also run today's engine (no audit)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS_JUDGES.md"))
    ap.add_argument("--json", type=Path, default=None, help="append each row here (JSONL)")
    ap.add_argument(
        "--table-from", nargs="+", type=Path, default=None, help="only print the table of rows"
    )
    args = ap.parse_args(argv)
    root = shared_data_dir()
    rows: list[dict] = []
    t0 = time.perf_counter()
    if args.table_from:
        for path in args.table_from:
            rows += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        args.datasets = []
    for name in args.datasets:
        if root is None or not (root / name).is_dir():
            print(f"../shared/data/{name} not found (set NUDGE_RAG_DATA)", file=sys.stderr)
            return 2
        ds = load_beir(root / name)
        for seed in args.seeds:
            for nearest in args.judges:
                rows += run_dataset(
                    ds,
                    seed,
                    args.precisions,
                    args.shares,
                    unaudited=args.unaudited,
                    nearest=nearest == "nearest",
                    label_k=args.label_k,
                    per_prompt=args.per_prompt,
                    longest=nearest == "longest",
                    distorted=nearest == "distorted",
                    audits=(False,) if args.audit_off else (True,),
                    miss=args.miss,
                    sink=args.json,
                )
    text = table(rows)
    n_zero = [r for r in rows if r["share"] == 0 and r["proven"]]
    n_zero_false = sum(r["true_gain"] < 0 for r in n_zero)
    n_human = [r for r in rows if r["share"] >= 0.05 and r["audit"]]
    bad = sum(r["proven"] and r["true_gain"] < 0 for r in n_human)
    off = [r for r in rows if r["share"] >= 0.05 and not r["audit"]]
    bad_off = sum(r["ci_low"] > 0 and r["true_gain"] < 0 for r in off)
    summary = (
        f"\nfalse proofs (proven, true test gain < 0): {bad} of {len(n_human)} runs at human "
        f"share >= 5% (audit on); {bad_off} of {len(off)} with the audit off and no veto "
        f"(today's engine: CI low > 0); at 0% human "
        f"share {n_zero_false} of {len(n_zero)} proven runs ({n_zero_false}/"
        f"{sum(r['share'] == 0 for r in rows)} of all 0% runs). "
        f"Seeds {sorted({r['seed'] for r in rows})}; {time.perf_counter() - t0:.0f} s.\n\n"
        + vetoes(rows)
        + "\n\n"
        + compact(rows)
    )
    print(text + "\n" + summary)
    args.out.write_text(
        "# Judges of known quality (benchmarks/bench_judges.py)\n\n"
        f"Command: `python benchmarks/bench_judges.py {' '.join(argv or sys.argv[1:])}`\n\n"
        + text
        + "\n"
        + summary
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
