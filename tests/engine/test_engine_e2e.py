"""End to end on the shared BEIR data: simulated users, a judge over HTTP, gold comparison.

The default suite runs SciFact with clean judgments at the default pool (label_k=20); the
heavier cases (noisy judgments, larger pools, NFCorpus) are marked slow. Figures and the
command that reproduces them: ``python benchmarks/bench_engine.py``.
"""

from __future__ import annotations

from functools import cache

import pytest

from nudge_rag.eval.data import BeirDataset, load_beir, shared_data_dir
from nudge_rag.eval.simulate import compare_with_gold

pytestmark = pytest.mark.integration


@cache
def _load(name: str) -> BeirDataset | None:
    root = shared_data_dir()
    if root is None or not (root / name).is_dir():
        return None
    return load_beir(root / name)  # with text: the judge reads the chunks


def dataset(name: str) -> BeirDataset:
    ds = _load(name)
    if ds is None:
        pytest.skip(f"../shared/data/{name} not found (set NUDGE_RAG_DATA to the data folder)")
    return ds


def test_scifact_clean_judgments_default_pool():
    r = compare_with_gold(dataset("scifact"), flip=0.0, label_k=20)
    rep = r["report"]
    assert rep["proven"] and rep["heldout_source"] == "traces"
    assert rep["cost"]["llm_calls"] == rep["cost"]["questions"] == r["stub_requests"]
    assert r["rerun_llm_calls"] == 0 and r["rerun_cache_hits"] == rep["cost"]["questions"]
    # the held-out proof agrees in sign and size with gold qrels on the same queries
    gold_heldout_gain = r["heldout_gold_after"]["ndcg@10"] - r["heldout_gold_before"]["ndcg@10"]
    assert gold_heldout_gain > 0.5 * rep["ndcg"]["gain"] > 0
    # measured 0.57 of the gold gain: the top-20 pool misses the positives NUDGE helps most
    assert r["engine_test_gain"] > 0.05 and r["ratio"] >= 0.5


@pytest.mark.slow
def test_scifact_clean_judgments_large_pool_meets_the_target():
    r = compare_with_gold(dataset("scifact"), flip=0.0, label_k=200)
    assert r["report"]["proven"] and r["ratio"] >= 0.8  # measured 0.84 (10 prompts a query)


@pytest.mark.slow
def test_scifact_noisy_judgments_do_no_harm():
    r = compare_with_gold(dataset("scifact"), flip=0.1, label_k=20)
    # measured: held-out CI [-0.001, +0.034], not proven, so apply refuses; the vectors would
    # still have helped on test (+0.04), never hurt
    assert r["engine_test_gain"] >= 0.0
    if r["report"]["proven"]:
        assert r["engine_test_gain"] > 0


@pytest.mark.slow
def test_nfcorpus_clean_judgments():
    r = compare_with_gold(dataset("nfcorpus"), flip=0.0, label_k=20)
    assert r["report"]["proven"] and r["engine_test_gain"] > 0  # measured ratio 0.20


@pytest.mark.slow
def test_nfcorpus_noisy_judgments_do_no_harm():
    r = compare_with_gold(dataset("nfcorpus"), flip=0.1, label_k=20)
    assert r["engine_test_gain"] >= 0.0
    assert not r["report"]["proven"] or r["engine_test_gain"] > 0
