"""Exact k-NN, NDCG@k and Recall@k against hand-computed cases and pytrec_eval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nudge_rag.errors import BadInputError
from nudge_rag.fit.metrics import RelevanceTable, evaluate, exact_knn, ndcg_at_k, recall_at_k
from nudge_rag.stores.base import Metric
from tests.shared_data import dataset


def test_exact_knn_matches_a_full_sort_across_blocks():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(5000, 16)).astype(np.float32)
    Q = rng.normal(size=(7, 16)).astype(np.float32)
    for metric in ("ip", "cosine"):
        s, i = exact_knn(Q, E, 10, metric=metric, block_rows=333)
        En = E / np.linalg.norm(E, axis=1, keepdims=True) if metric == "cosine" else E
        Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True) if metric == "cosine" else Q
        full = Qn @ En.T
        np.testing.assert_array_equal(i, np.argsort(-full, axis=1)[:, :10])
        np.testing.assert_allclose(s, np.take_along_axis(full, i, axis=1), rtol=1e-5)


def test_exact_knn_l2_ranks_by_distance_and_returns_minus_squared_distance():
    rng = np.random.default_rng(1)
    E = (rng.normal(size=(5000, 16)) * rng.uniform(0.2, 3.0, size=(5000, 1))).astype(np.float32)
    Q = rng.normal(size=(7, 16)).astype(np.float32)
    s, i = exact_knn(Q, E, 10, metric="l2", block_rows=333)
    d2 = ((Q[:, None, :].astype(np.float64) - E[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(i, np.argsort(d2, axis=1)[:, :10])
    np.testing.assert_allclose(s, -np.take_along_axis(d2, i, axis=1), rtol=1e-4, atol=1e-4)


def test_ndcg_by_hand_with_grades():
    ranked = np.array([[3, 1, 7, 0]])
    rel = [{1: 2, 0: 1, 9: 1}]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, rel, k=4)[0] == pytest.approx(dcg / idcg)
    assert recall_at_k(ranked, rel, k=4)[0] == pytest.approx(2 / 3)
    # Cut at k=1: nothing relevant on top.
    assert ndcg_at_k(ranked, rel, k=1)[0] == 0
    assert recall_at_k(ranked, rel, k=2)[0] == pytest.approx(1 / 3)


def test_list_positives_are_grade_one_and_empty_queries_score_zero():
    ranked = np.array([[0, 1], [2, 3]])
    rel = [[1], []]
    assert ndcg_at_k(ranked, rel, k=2).tolist() == pytest.approx([1 / math.log2(3), 0.0])
    assert recall_at_k(ranked, rel, k=2).tolist() == [1.0, 0.0]
    table = RelevanceTable(rel)
    assert table.grade(np.array([0, 0, 1]), np.array([[1], [-1], [1]])).ravel().tolist() == [
        1,
        0,
        0,
    ]


def test_ideal_dcg_uses_only_the_best_k_grades():
    table = RelevanceTable([{i: g for i, g in enumerate([1, 2, 1, 2, 1])}])
    expected = 2 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert table.ideal_dcg(3)[0] == pytest.approx(expected)


@pytest.mark.integration
@pytest.mark.parametrize("name,split", [("scifact", "test"), ("nfcorpus", "test")])
def test_agrees_with_pytrec_eval_on_a_real_run(name, split):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    ds = dataset(name)
    task = ds.task(split)
    scores, idx = exact_knn(task.queries, ds.corpus_embeddings, 100)
    run = {
        q: {ds.corpus_ids[j]: float(s) for j, s in zip(idx[i], scores[i], strict=True)}
        for i, q in enumerate(task.query_ids)
    }
    qrels = {q: dict(ds.qrels[split][q]) for q in task.query_ids}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10"})
    res = ev.evaluate(run)
    theirs_ndcg = np.mean([res[q]["ndcg_cut_10"] for q in task.query_ids])
    theirs_recall = np.mean([res[q]["recall_10"] for q in task.query_ids])
    ours = evaluate(task.queries, ds.corpus_embeddings, task.positives)
    # trec_eval breaks score ties by doc id; NFCorpus has duplicate documents (see shared README).
    assert ours["ndcg@10"] == pytest.approx(theirs_ndcg, abs=1e-3)
    assert ours["recall@10"] == pytest.approx(theirs_recall, abs=1e-3)
    # And the published baseline of ../shared/README.md.
    published = {"scifact": 0.6451, "nfcorpus": 0.3159}[name]
    assert theirs_ndcg == pytest.approx(published, abs=5e-5)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def tiny():
    rng = np.random.default_rng(3)
    return rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(50, 4)).astype(np.float32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"k: found 0, expected an integer ≥ 1"),
        ({"k": -3}, r"k: found -3, expected an integer ≥ 1"),
        ({"k": 2.5}, r"k: expected an integer, found float 2.5"),
        ({"k": True}, r"k: expected an integer, found bool True"),
        ({"block_rows": 0}, r"block_rows: found 0, expected an integer ≥ 1"),
        ({"metric": "dot"}, r"metric: found 'dot', expected one of 'ip', 'cosine', 'l2'"),
    ],
)
def test_exact_knn_refuses_bad_arguments(tiny, kwargs, message):
    Q, E = tiny
    args = {"k": 3, **kwargs}
    with pytest.raises(BadInputError, match=message):
        exact_knn(Q, E, args.pop("k"), **args)


def test_exact_knn_checks_the_vectors(tiny):
    Q, E = tiny
    with pytest.raises(
        BadInputError, match=r"queries: its vectors have 3 dimensions, the embeddings"
    ):
        exact_knn(Q[:, :3], E, 3)
    E64 = E.astype(np.float64)
    E64[7, 1] = 1e39  # finite in float64, inf in float32
    with pytest.raises(
        BadInputError, match=r"embeddings row 7 holds NaN or inf once stored as float32"
    ):
        exact_knn(Q, E64, 3)


def test_metric_enum_is_accepted(tiny):
    Q, E = tiny
    for m in Metric:
        a = exact_knn(Q, E, 3, metric=m)
        b = exact_knn(Q, E, 3, metric=m.value)
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("grade", [np.nan, np.inf, "2", None])
def test_relevance_refuses_non_finite_grades(grade):
    with pytest.raises(BadInputError, match=r"relevant\[1\] gives row 4 the grade"):
        RelevanceTable([{1: 1}, {4: grade}])


def test_rank_cutoff_must_be_positive():
    with pytest.raises(BadInputError, match=r"k: found 0, expected an integer ≥ 1"):
        ndcg_at_k(np.array([[0, 1]]), [[1]], k=0)
    with pytest.raises(BadInputError, match=r"k: found -1, expected an integer ≥ 1"):
        recall_at_k(np.array([[0, 1]]), [[1]], k=-1)
