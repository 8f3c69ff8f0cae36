"""BEIR folders and seeded splits."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from nudge_rag.errors import NudgeError
from nudge_rag.eval.data import load_beir, split_queries
from tests.shared_data import dataset


@pytest.fixture
def tiny_beir(tmp_path):
    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(4):
            f.write(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for i in range(6):
            f.write(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n")
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i % 4}\t1\n" for i in range(5))
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq5\td1\t2\n")
    return root


def test_loads_text_and_qrels(tiny_beir):
    ds = load_beir(tiny_beir)
    assert ds.corpus_ids == ["d0", "d1", "d2", "d3"]
    assert ds.text_of("d2") == "T2 text 2"
    assert ds.qrels["test"] == {"q5": {"d1": 2}}
    assert ds.corpus_embeddings is None
    with pytest.raises(NudgeError, match="no precomputed embeddings"):
        ds.task("test")


def test_dev_is_carved_from_train_with_a_seed(tiny_beir):
    ds = load_beir(tiny_beir)
    a, b = split_queries(ds, seed=1), split_queries(ds, seed=1)
    assert a == b and len(a.dev) == 1 and len(a.train) == 4
    assert not set(a.dev) & set(a.train) and a.test == ["q5"]


def test_not_a_beir_folder(tmp_path):
    with pytest.raises(NudgeError, match="not a BEIR folder"):
        load_beir(tmp_path)


@pytest.mark.integration
def test_shared_scifact_counts_and_rows():
    ds = dataset("scifact")
    assert ds.corpus_embeddings.shape == (5183, 384)
    assert len(ds.qrels["train"]) == 809 and len(ds.qrels["test"]) == 300
    sp = split_queries(ds, seed=0)
    assert len(sp.dev) == 162 and len(sp.train) == 647
    task = ds.task("test")
    assert len(task.query_ids) == 300
    q0 = task.query_ids[0]
    assert {ds.corpus_ids[r] for r in task.positives[0]} == set(ds.qrels["test"][q0])
    assert np.allclose(np.linalg.norm(task.queries, axis=1), 1, atol=1e-4)


@pytest.mark.integration
def test_nfcorpus_keeps_its_own_dev_and_grades():
    ds = dataset("nfcorpus")
    sp = split_queries(ds)
    assert len(sp.dev) == 324
    task = ds.task("dev")
    assert max(max(p.values()) for p in task.positives) == 2
