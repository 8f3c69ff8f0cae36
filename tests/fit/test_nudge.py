"""NUDGE-M / NUDGE-N: parity with the reference code, the improvements, and bad input."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from nudge_rag.errors import BadInputError
from nudge_rag.eval.data import split_queries
from nudge_rag.fit.metrics import evaluate
from nudge_rag.fit.nudge import NudgeResult, finetune_embeddings
from tests.shared_data import dataset


def reference(method: str, E, tr_q, tr_pos, va_q, va_pos, gamma=None) -> np.ndarray:
    """nudge-ft 0.1.2's output (it prints progress; silence it)."""
    nudge = pytest.importorskip("nudge")
    cls = nudge.NUDGEN if method == "nudge-n" else nudge.NUDGEM
    with contextlib.redirect_stdout(io.StringIO()):
        return cls(device=torch.device("cpu")).finetune_embeddings(
            E,
            {"q_embs": tr_q, "q_ans_indx": [sorted(p) for p in tr_pos]},
            {"q_embs": va_q, "q_ans_indx": [sorted(p) for p in va_pos]},
            gamma=gamma,
        )


def clustered(n=3000, d=32, n_train=300, n_val=120, seed=0):
    """Synthetic corpus in clusters; each query's positive is a chunk of its own cluster."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, d))
    assign = rng.integers(0, 40, n)
    E = centers[assign] + 0.9 * rng.normal(size=(n, d))
    E = (E / np.linalg.norm(E, axis=1, keepdims=True)).astype(np.float32)

    def queries(m):
        pos = rng.integers(0, n, m)
        q = E[pos] + 0.8 * centers[assign[pos]] / np.linalg.norm(
            centers[assign[pos]], axis=1, keepdims=True
        )
        q += 0.6 * rng.normal(size=q.shape) / np.sqrt(d)
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        return q, [[int(p)] for p in pos]

    return E, *queries(n_train), *queries(n_val)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
def test_matches_nudge_ft_on_shared_data(name, method):
    ds = dataset(name)
    sp = split_queries(ds, seed=0)
    tr, va = ds.task(sp.train, qrels_split="train"), ds.task(sp.dev)
    E = ds.corpus_embeddings
    E_before = E.copy()
    res = finetune_embeddings(
        E,
        tr.queries,
        tr.positives,
        va.queries,
        va.positives,
        method=method,
        selection="top1",
        refit=False,
        weighting="uniform",
    )
    ref = reference(method, E, tr.queries, tr.positives, va.queries, va.positives)
    assert res.gamma > 0
    assert np.abs(res.apply(E) - ref).max() <= 1e-5
    np.testing.assert_array_equal(E, E_before)  # input never mutated
    # Only labelled rows change, and they are exactly the rows the reference moved.
    moved = np.nonzero(np.abs(ref - E).max(axis=1) > 1e-5)[0]
    assert set(moved) == set(res.rows.tolist())


@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
def test_matches_nudge_ft_on_synthetic_clusters(method):
    E, tq, tp, vq, vp = clustered()
    res = finetune_embeddings(
        E, tq, tp, vq, vp, method=method, selection="top1", refit=False, weighting="uniform"
    )
    ref = reference(method, E, tq, tp, vq, vp)
    assert np.abs(res.apply(E) - ref).max() <= 1e-5


def test_fixed_gamma_matches_reference_without_validation():
    E, tq, tp, vq, vp = clustered(seed=3)
    res = finetune_embeddings(
        E, tq, tp, method="nudge-n", gamma=0.3, refit=False, weighting="uniform"
    )
    ref = reference("nudge-n", E, tq, tp, vq, vp, gamma=0.3)
    assert res.gamma == 0.3 and res.curve == []
    assert np.abs(res.apply(E) - ref).max() <= 1e-5


def test_nudge_n_stays_on_the_unit_sphere_and_nudge_m_is_bounded():
    E, tq, tp, vq, vp = clustered(seed=1)
    n = finetune_embeddings(E, tq, tp, vq, vp, method="nudge-n")
    np.testing.assert_allclose(np.linalg.norm(n.vectors, axis=1), 1.0, atol=1e-5)
    m = finetune_embeddings(E, tq, tp, vq, vp, method="nudge-m", refit=False)
    step = np.linalg.norm(m.vectors - E[m.rows], axis=1)
    np.testing.assert_allclose(step, m.gamma, rtol=1e-4)


def test_gamma_zero_changes_nothing_even_for_unnormalised_rows():
    E, tq, tp, _, _ = clustered(seed=9)
    E = E * np.float32(1.7)  # stored vectors of any norm
    for method in ("nudge-n", "nudge-m"):
        res = finetune_embeddings(E, tq, tp, method=method, gamma=0.0)
        assert len(res.rows) == 0 and res.vectors.shape == (0, E.shape[1])
        np.testing.assert_array_equal(res.apply(E), E)


def test_rows_are_sorted_labelled_rows_only():
    E, tq, tp, vq, vp = clustered(seed=2)
    res = finetune_embeddings(E, tq, tp, vq, vp, refit=False)
    labelled = {r for pos in tp for r in pos}
    assert np.all(np.diff(res.rows) > 0)
    assert set(res.rows.tolist()) <= labelled
    assert res.vectors.dtype == np.float32 and res.rows.dtype == np.int64
    assert isinstance(res, NudgeResult)


def test_refit_uses_validation_labels_too():
    E, tq, tp, vq, vp = clustered(seed=4)
    plain = finetune_embeddings(E, tq, tp, vq, vp, refit=False, gamma=0.3)
    refit = finetune_embeddings(E, tq, tp, vq, vp, refit=True, gamma=0.3)
    val_only = {r for pos in vp for r in pos} - {r for pos in tp for r in pos}
    assert val_only & set(refit.rows.tolist())
    assert not val_only & set(plain.rows.tolist())
    # Chosen on validation, refit keeps the γ that plain chose.
    a = finetune_embeddings(E, tq, tp, vq, vp, refit=False, selection="ndcg@10")
    b = finetune_embeddings(E, tq, tp, vq, vp, refit=True, selection="ndcg@10")
    assert a.gamma == b.gamma


def test_graded_positives_drive_ndcg_selection():
    E, tq, tp, vq, vp = clustered(seed=5)
    graded = [{p[0]: 2} for p in vp]
    res = finetune_embeddings(E, tq, tp, vq, graded, selection="ndcg@10")
    assert res.selection.value == "ndcg@10"
    assert len(res.curve) == 25
    assert res.gamma == max(res.curve, key=lambda c: (c[1], -c[0]))[0]


def test_sqrt_weighting_pulls_less_for_queries_with_many_positives():
    E, tq, tp, _, _ = clustered(seed=8)
    n = len(E)
    # Half the queries name one chunk, half name four: the weights differ between them.
    many = [
        p if i % 2 else [p[0], (p[0] + 1) % n, (p[0] + 2) % n, (p[0] + 3) % n]
        for i, p in enumerate(tp)
    ]
    kw = {"gamma": 0.3, "refit": False, "method": "nudge-m"}
    uni = finetune_embeddings(E, tq, many, weighting="uniform", **kw)
    sq = finetune_embeddings(E, tq, many, weighting="sqrt-positives", **kw)
    # Rows labelled by several queries move in a different direction under the weights.
    assert set(uni.rows.tolist()) == set(sq.rows.tolist())
    assert np.abs(uni.vectors - sq.vectors).max() > 1e-3
    # With one positive per query the weights are all 1: same answer.
    one = finetune_embeddings(E, tq, tp, weighting="uniform", **kw)
    np.testing.assert_array_equal(one.vectors, finetune_embeddings(E, tq, tp, **kw).vectors)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_defaults_beat_nudge_ft_by_two_points(name):
    ds = dataset(name)
    sp = split_queries(ds, seed=0)
    tr, va, te = ds.task(sp.train, qrels_split="train"), ds.task(sp.dev), ds.task("test")
    E = ds.corpus_embeddings
    ref = reference("nudge-n", E, tr.queries, tr.positives, va.queries, va.positives)
    ours = finetune_embeddings(E, tr.queries, tr.positives, va.queries, va.positives)
    base = evaluate(te.queries, E, te.positives)["ndcg@10"]
    ref_ndcg = evaluate(te.queries, ref, te.positives)["ndcg@10"]
    our_ndcg = evaluate(te.queries, ours.apply(E), te.positives)["ndcg@10"]
    assert base < ref_ndcg < our_ndcg
    assert our_ndcg - ref_ndcg >= 0.02


def test_small_blocks_give_the_same_answer():
    E, tq, tp, vq, vp = clustered(seed=6)
    a = finetune_embeddings(
        E, tq, tp, vq, vp, method="nudge-m", selection="top1", refit=False, weighting="uniform"
    )
    b = finetune_embeddings(
        E,
        tq,
        tp,
        vq,
        vp,
        method="nudge-m",
        selection="top1",
        refit=False,
        weighting="uniform",
        block_rows=257,
    )
    assert a.gamma == pytest.approx(b.gamma, rel=1e-6)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def small():
    return clustered(n=200, d=8, n_train=20, n_val=10, seed=7)


def test_dimension_mismatch(small):
    E, _tq, tp, vq, vp = small
    with pytest.raises(
        BadInputError,
        match=r"train_queries: its vectors have 9 dimensions, the embeddings matrix expects 8",
    ):
        finetune_embeddings(E, np.ones((20, 9), np.float32), tp, vq, vp)


def test_nan_names_the_row(small):
    E, tq, tp, vq, vp = small
    bad = E.copy()
    bad[17, 3] = np.nan
    with pytest.raises(BadInputError, match=r"embeddings row 17 holds NaN or inf"):
        finetune_embeddings(bad, tq, tp, vq, vp)
    vbad = vq.copy()
    vbad[4, 0] = np.inf
    with pytest.raises(BadInputError, match=r"val_queries row 4 holds NaN or inf"):
        finetune_embeddings(E, tq, tp, vbad, vp)


def test_out_of_range_index(small):
    E, tq, tp, vq, vp = small
    tp = [list(p) for p in tp]
    tp[5] = [200]
    with pytest.raises(
        BadInputError, match=r"train_positives\[5\] holds row 200, out of range for 200"
    ):
        finetune_embeddings(E, tq, tp, vq, vp)


def test_empty_training_set(small):
    E, tq, tp, vq, vp = small
    with pytest.raises(BadInputError, match="train_positives is empty"):
        finetune_embeddings(E, tq, [[] for _ in tp], vq, vp)


def test_zero_norm_query(small):
    E, tq, tp, vq, vp = small
    tq = tq.copy()
    tq[2] = 0
    with pytest.raises(BadInputError, match=r"train_queries row 2 has zero norm"):
        finetune_embeddings(E, tq, tp, vq, vp)


def test_empty_validation_explains_the_fix(small):
    E, tq, tp, vq, vp = small
    with pytest.raises(BadInputError, match=r"validation set is empty.*fixed gamma"):
        finetune_embeddings(E, tq, tp)
    with pytest.raises(BadInputError, match=r"validation set is empty"):
        finetune_embeddings(E, tq, tp, vq, [[] for _ in vp])


def test_integer_dtype_rejected(small):
    E, tq, tp, vq, vp = small
    with pytest.raises(
        BadInputError, match=r"embeddings: expected float vectors, found dtype int64"
    ):
        finetune_embeddings(E.astype(np.int64), tq, tp, vq, vp)


def test_positives_length_mismatch(small):
    E, tq, tp, vq, vp = small
    with pytest.raises(
        BadInputError, match=r"train_positives has 19 entries but there are 20 queries"
    ):
        finetune_embeddings(E, tq, tp[:-1], vq, vp)


def test_gamma_out_of_range(small):
    E, tq, tp, _vq, _vp = small
    with pytest.raises(
        BadInputError, match=r"gamma: found 3.0, expected a finite number in \[0.0, 2.0\]"
    ):
        finetune_embeddings(E, tq, tp, gamma=3.0)


def test_float64_input_is_accepted_and_not_mutated(small):
    E, tq, tp, vq, vp = small
    E64 = E.astype(np.float64)
    before = E64.copy()
    res = finetune_embeddings(E64, tq.astype(np.float64), tp, vq, vp)
    np.testing.assert_array_equal(E64, before)
    assert res.apply(E64).dtype == np.float32


# --------------------------------------------------------------------------- numeric arguments
# (issue 11 item 9: each was accepted and gave NaN/inf vectors or a wrong γ)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gammas": [np.nan]}, r"gammas\[0\]: found nan, expected a finite number in \[0.0, 2.0\]"),
        (
            {"gammas": [0.1, -1]},
            r"gammas\[1\]: found -1.0, expected a finite number in \[0.0, 2.0\]",
        ),
        ({"gammas": [np.inf]}, r"gammas\[0\]: found inf, expected a finite number"),
        ({"gammas": []}, r"gammas: found an empty sequence, expected at least one candidate"),
        ({"gammas": "0.1"}, r"gammas: expected a sequence of candidate γ values, found str"),
        ({"gammas": [0.1, "x"]}, r"gammas\[1\]: expected a number, found str 'x'"),
        (
            {"method": "nudge-m", "gammas": [np.inf]},
            r"gammas\[0\]: found inf, expected a finite number ≥ 0",
        ),
        (
            {"method": "nudge-m", "gamma": np.inf},
            r"gamma: found inf, expected a finite number ≥ 0.0; NUDGE-M",
        ),
        (
            {"method": "nudge-m", "gamma": np.nan},
            r"gamma: found nan, expected a finite number ≥ 0.0",
        ),
        (
            {"method": "nudge-m", "gamma": -0.5},
            r"gamma: found -0.5, expected a finite number ≥ 0.0",
        ),
        ({"gamma": np.nan}, r"gamma: found nan, expected a finite number in \[0.0, 2.0\]; NUDGE-N"),
        ({"gamma": True}, r"gamma: expected a number, found bool True"),
        ({"gamma": "0.3"}, r"gamma: expected a number, found str '0.3'"),
        ({"block_rows": -5}, r"block_rows: found -5, expected an integer ≥ 1"),
        ({"block_rows": 0}, r"block_rows: found 0, expected an integer ≥ 1"),
        ({"block_rows": 2.5}, r"block_rows: expected an integer, found float 2.5"),
        ({"method": "nudge-x"}, r"method: found 'nudge-x', expected one of 'nudge-m', 'nudge-n'"),
        ({"selection": "top3"}, r"selection: found 'top3', expected one of 'top1', 'ndcg@10'"),
        ({"weighting": "log"}, r"weighting: found 'log', expected one of 'uniform'"),
        ({"device": "gpu:x"}, r"device: found 'gpu:x', expected a torch device"),
    ],
)
def test_bad_numeric_argument_is_refused(small, kwargs, message):
    E, tq, tp, vq, vp = small
    with pytest.raises(BadInputError, match=message):
        finetune_embeddings(E, tq, tp, vq, vp, **kwargs)


@pytest.mark.parametrize("grade", [np.inf, np.nan, -np.inf, 1e39, "high", None])
def test_bad_grade_is_refused(small, grade):
    E, tq, tp, vq, vp = small
    graded = [{p[0]: 1.0} for p in tp]
    graded[3] = {tp[3][0]: grade}
    with pytest.raises(BadInputError, match=r"train_positives\[3\] gives row \d+ the grade"):
        finetune_embeddings(E, tq, graded, vq, vp)


def test_bad_positives_container_is_refused(small):
    E, tq, tp, vq, vp = small
    with pytest.raises(BadInputError, match=r"train_positives: expected one list of positive rows"):
        finetune_embeddings(E, tq, None, vq, vp)
    bad = [list(p) for p in tp]
    bad[2] = 7
    with pytest.raises(BadInputError, match=r"train_positives\[2\]: found int 7, expected a list"):
        finetune_embeddings(E, tq, bad, vq, vp)


def test_rows_beyond_float32_are_refused(small):
    """1e200 (and 1e39) are finite in float64 and inf in float32, where NUDGE computes."""
    E, tq, tp, vq, vp = small
    for value in (1e200, 1e39):
        E64 = E.astype(np.float64)
        E64[11, 2] = value
        with pytest.raises(
            BadInputError, match=r"embeddings row 11 holds NaN or inf once stored as float32"
        ):
            finetune_embeddings(E64, tq, tp, vq, vp)
    q64 = tq.astype(np.float64)
    q64[6, 0] = -1e200
    with pytest.raises(BadInputError, match=r"train_queries row 6 holds NaN or inf once stored"):
        finetune_embeddings(E, q64, tp, vq, vp)


def test_rows_whose_norm_overflows_are_refused(small):
    """A row of 1e30 is finite in float32 but normalises to zeros (its squared norm is inf)."""
    E, tq, tp, vq, vp = small
    bad = E.copy()
    bad[4] = 1e30
    with pytest.raises(
        BadInputError, match=r"embeddings row 4 has norm 2.828e\+30, whose square overflows float32"
    ):
        finetune_embeddings(bad, tq, tp, vq, vp)


def test_huge_grades_cannot_overflow_the_label_sums(small):
    E, tq, tp, vq, vp = small
    graded = [{p[0]: 3e38} for p in tp]  # finite float32 grades whose sum is not
    with pytest.raises(
        BadInputError, match=r"weighted sum of the queries that label row \d+ overflows"
    ):
        finetune_embeddings(E, tq, graded, vq, vp, weighting="sqrt-positives", gamma=0.1)


def test_huge_nudge_m_gamma_never_returns_inf(small):
    E, tq, tp, _vq, _vp = small
    with pytest.raises(
        BadInputError, match=r"gamma=1e\+30: the nudge-m update does not fit float32"
    ):
        finetune_embeddings(E, tq, tp, method="nudge-m", gamma=1e30)


@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
def test_valid_edge_arguments_give_finite_vectors(small, method):
    E, tq, tp, vq, vp = small
    res = finetune_embeddings(E, tq, tp, vq, vp, method=method, gammas=np.array([0.0, 0.1]))
    assert res.gamma in (0.0, 0.1) and np.isfinite(res.vectors).all()
    res = finetune_embeddings(E, tq, tp, vq, vp, method=method, block_rows=np.int64(7))
    assert np.isfinite(res.vectors).all()
    grades = [{p[0]: 2, (p[0] + 1) % len(E): -1} for p in tp]  # ≤ 0: not relevant
    res = finetune_embeddings(E, tq, grades, vq, vp, method=method, gamma=0.2)
    assert np.isfinite(res.vectors).all()


# --------------------------------------------------------------------------- negatives (issue 14)


def top_negatives(E, q, positives, k):
    """Per query, the top-``k`` rows by inner product that are not its positives."""
    top = np.argsort(-(q @ E.T), axis=1)[:, :k]
    return [
        [int(r) for r in row if int(r) not in set(p)] for row, p in zip(top, positives, strict=True)
    ]


def test_no_negatives_or_empty_lists_are_the_update_without_negatives():
    E, tq, tp, vq, vp = clustered(seed=11)
    plain = finetune_embeddings(E, tq, tp, vq, vp)
    empty = finetune_embeddings(
        E, tq, tp, vq, vp, train_negatives=[[] for _ in tp], val_negatives=[[] for _ in vp]
    )
    np.testing.assert_array_equal(plain.rows, empty.rows)
    np.testing.assert_array_equal(plain.vectors, empty.vectors)
    assert plain.gamma == empty.gamma and plain.negative_weight == empty.negative_weight == 0


def test_weight_zero_is_the_paper_and_reference_settings_still_match_nudge_ft():
    E, tq, tp, vq, vp = clustered(seed=12)
    ref_kw = {"selection": "top1", "refit": False, "weighting": "uniform"}
    negs = top_negatives(E, tq, tp, 10)
    res = finetune_embeddings(
        E, tq, tp, vq, vp, train_negatives=negs, negative_weight=0.0, **ref_kw
    )
    ref = reference("nudge-n", E, tq, tp, vq, vp)
    assert res.negative_weight == 0.0
    assert np.abs(res.apply(E) - ref).max() <= 1e-5


def mixed_row_case():
    """Row 0 answers query a; query b ranks row 0 high but row 0 does not answer it."""
    rng = np.random.default_rng(0)
    E = rng.normal(size=(50, 8)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    a = E[0] + 0.3 * rng.normal(size=8)
    b = E[0] + 0.8 * E[1]
    q = np.stack([a, b]).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return E, q


@pytest.mark.parametrize("method", ["nudge-n", "nudge-m"])
def test_a_negative_pushes_its_row_away_from_the_query(method):
    E, q = mixed_row_case()
    kw = {"method": method, "gamma": 0.2, "refit": False}
    plain = finetune_embeddings(E, q, [[0], [1]], **kw)
    pushed = finetune_embeddings(
        E, q, [[0], [1]], train_negatives=[[], [0]], negative_weight=0.5, **kw
    )
    assert pushed.negative_weight == 0.5
    row = lambda res: res.vectors[list(res.rows).index(0)]  # noqa: E731
    # Away from b, still toward a (a is the row's only positive), same norm constraints.
    assert row(pushed) @ q[1] < row(plain) @ q[1]
    assert row(pushed) @ q[0] > E[0] @ q[0]
    if method == "nudge-n":
        np.testing.assert_allclose(np.linalg.norm(pushed.vectors, axis=1), 1.0, atol=1e-5)
        assert np.sum((row(pushed) - E[0]) ** 2) <= 0.2 + 1e-5
    else:
        np.testing.assert_allclose(np.linalg.norm(row(pushed) - E[0]), 0.2, rtol=1e-4)


def test_rows_with_negatives_only_stay_unless_negative_step_lets_them_move():
    E, q = mixed_row_case()
    kw = {"gamma": 0.2, "refit": False, "train_negatives": [[2], [0, 3]]}
    stay = finetune_embeddings(E, q, [[0], [1]], **kw)
    assert stay.negative_step == 0.0
    assert not {2, 3} & set(stay.rows.tolist())
    move = finetune_embeddings(E, q, [[0], [1]], negative_step=0.5, **kw)
    assert {2, 3} <= set(move.rows.tolist())
    new3 = move.vectors[list(move.rows).index(3)]
    assert new3 @ q[1] < E[3] @ q[1]  # pushed away from the query that wrongly retrieved it
    np.testing.assert_allclose(np.linalg.norm(new3), 1.0, atol=1e-5)
    assert np.sum((new3 - E[3]) ** 2) <= 0.5 * 0.2 + 1e-5  # a budget of ρ·γ


def test_refit_uses_validation_negatives_too():
    E, tq, tp, vq, vp = clustered(seed=13)
    kw = {"gamma": 0.3, "negative_weight": 0.5, "train_negatives": top_negatives(E, tq, tp, 5)}
    without = finetune_embeddings(E, tq, tp, vq, vp, **kw)
    with_val = finetune_embeddings(
        E, tq, tp, vq, vp, val_negatives=top_negatives(E, vq, vp, 5), **kw
    )
    assert np.abs(without.apply(E) - with_val.apply(E)).max() > 1e-4


def test_the_weight_is_kept_only_when_validation_improves():
    E, tq, tp, vq, vp = clustered(seed=14)
    negs = top_negatives(E, tq, tp, 10)
    plain = finetune_embeddings(E, tq, tp, vq, vp)
    res = finetune_embeddings(
        E, tq, tp, vq, vp, train_negatives=negs, val_negatives=top_negatives(E, vq, vp, 10)
    )
    assert res.gamma == plain.gamma  # γ is chosen for the positives alone, as before
    best_plain = max(v for _, v in plain.curve)
    assert res.negative_weight == 0.0 or max(v for _, v in res.curve) >= best_plain


@pytest.mark.integration
def test_gold_negatives_help_on_nfcorpus():
    ds = dataset("nfcorpus")
    sp = split_queries(ds, seed=0, use_given_dev=False)
    tr, va, te = ds.task(sp.train, qrels_split="train"), ds.task(sp.dev), ds.task("test")
    E = ds.corpus_embeddings
    plain = finetune_embeddings(E, tr.queries, tr.positives, va.queries, va.positives)
    res = finetune_embeddings(
        E,
        tr.queries,
        tr.positives,
        va.queries,
        va.positives,
        train_negatives=top_negatives(E, tr.queries, tr.positives, 20),
        val_negatives=top_negatives(E, va.queries, va.positives, 20),
    )
    assert res.negative_weight > 0
    before = evaluate(te.queries, plain.apply(E), te.positives)["ndcg@10"]
    after = evaluate(te.queries, res.apply(E), te.positives)["ndcg@10"]
    assert after > before + 0.003


def test_a_row_both_positive_and_negative_is_refused(small):
    E, tq, tp, vq, vp = small
    negs = [[] for _ in tp]
    negs[4] = [tp[4][0]]
    with pytest.raises(
        BadInputError,
        match=rf"train_negatives\[4\] \(query 4\) holds row {tp[4][0]}, which "
        r"train_positives\[4\] lists as relevant",
    ):
        finetune_embeddings(E, tq, tp, vq, vp, train_negatives=negs)
    vnegs = [[] for _ in vp]
    vnegs[2] = [vp[2][0]]
    with pytest.raises(BadInputError, match=r"val_negatives\[2\] \(query 2\) holds row"):
        finetune_embeddings(E, tq, tp, vq, vp, val_negatives=vnegs)


@pytest.mark.parametrize("row", [200, -1, 10**12])
def test_a_negative_out_of_range_names_query_and_row(small, row):
    E, tq, tp, vq, vp = small
    negs = [[] for _ in tp]
    negs[7] = [1, row]
    with pytest.raises(
        BadInputError,
        match=rf"train_negatives\[7\] \(query 7\) holds row {row}, out of range for 200 "
        r"embeddings; expected a row index in \[0, 199\]",
    ):
        finetune_embeddings(E, tq, tp, vq, vp, train_negatives=negs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_negatives": "1,2"}, r"train_negatives: expected one list of row indices"),
        ({"train_negatives": {0: [1]}}, r"train_negatives: expected one list of row indices"),
        ({"train_negatives": [[1]]}, r"train_negatives has 1 entries but there are 20 queries"),
        ({"train_negatives": [[1.5]] * 20}, r"train_negatives\[0\] holds 1.5; negatives are int"),
        ({"train_negatives": [[True]] * 20}, r"train_negatives\[0\] holds True"),
        ({"train_negatives": [3] * 20}, r"train_negatives\[0\]: found int 3, expected a list"),
        ({"negative_weight": -0.1}, r"negative_weight: found -0.1, expected a finite number"),
        ({"negative_weight": np.nan}, r"negative_weight: found nan"),
        ({"negative_step": 1.5}, r"negative_step: found 1.5, expected a finite number in"),
    ],
)
def test_bad_negatives_are_refused(small, kwargs, message):
    E, tq, tp, vq, vp = small
    with pytest.raises(BadInputError, match=message):
        finetune_embeddings(E, tq, tp, vq, vp, **kwargs)


def test_val_negatives_without_val_queries_are_refused(small):
    E, tq, tp, _, _ = small
    with pytest.raises(BadInputError, match=r"val_negatives is given without val_queries"):
        finetune_embeddings(E, tq, tp, gamma=0.2, val_negatives=[[1]])
