"""Label provenance through feedback, citations, imports and the label cache; the judge audit."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.errors import GainNotProvenError, NudgeError
from nudge_rag.fit.metrics import exact_knn
from nudge_rag.importers import jsonl, langfuse, langsmith, phoenix
from nudge_rag.labeling.answers import parse_request
from nudge_rag.labeling.labeler import LabeledQuery
from nudge_rag.labeling.provenance import Provenance, audit_judge
from nudge_rag.state.records import FeedbackRecord, TraceRecord
from nudge_rag.state.state import NudgeState
from nudge_rag.state.traces.log import TraceLog
from nudge_rag.stores.memory import MemoryAdapter
from nudge_rag.testing import NoisyJudge, QrelsJudge, SimilarityBiasedJudge
from nudge_rag.testing.judges import JudgeClient
from tests.engine.test_engine import World

DIM = 8
DOCS = ["refund", "cancel", "invoice", "export"]


@pytest.fixture
def small(tmp_path: Path) -> NudgeState:
    rng = np.random.default_rng(0)
    records = {d: {"id": d, "vector": rng.normal(size=DIM).tolist(), "text": d} for d in DOCS}

    def embed(texts: list[str]) -> np.ndarray:
        return rng.normal(size=(len(texts), DIM)).astype(np.float32)

    s = NudgeState(MemoryAdapter(records, metric="cosine"), tmp_path / "state", embed_queries=embed)
    yield s
    s.close()


def _search(state: NudgeState, query: str = "money back") -> str:
    tid = state.record_search(
        query, np.ones(DIM, np.float32), 2, None, ["refund", "cancel"], [1, 0]
    )
    assert tid is not None
    return tid


# -- feedback and citations ------------------------------------------------------------------------


def test_feedback_keeps_its_provenance_and_citations_are_model_made(small):
    tid = _search(small)
    small.record_feedback(tid, relevant_ids=["refund"])
    small.record_feedback(tid, irrelevant_ids=["cancel"], provenance="model")
    small.record_citations(tid, "Refunds take 5 days [refund].")
    small.record_answer_feedback(tid, 1.0, answer="see [cancel]")  # a person rated it
    got = [(f.relevant_ids, f.irrelevant_ids, f.provenance) for f in small.feedback()]
    assert got == [
        (["refund"], [], "human"),
        ([], ["cancel"], "model"),
        (["refund"], [], "model"),
        (["cancel"], [], "human"),
    ]
    with pytest.raises(NudgeError, match=r"provenance: found 'robot', expected 'human'"):
        small.record_feedback(tid, relevant_ids=["refund"], provenance="robot")


def test_an_older_trace_log_migrates_and_reads_its_feedback_as_human(tmp_path):
    path = tmp_path / "traces.sqlite"
    with TraceLog(path) as log:  # today's schema, then the provenance column taken away
        tid = log.record(query="q", embedding=np.ones(3), k=1, result_ids=["a"], scores=[1.0])
        log.record_feedback(tid, relevant_ids=["a"])
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE feedback DROP COLUMN provenance")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with TraceLog(path, read_only=True) as old:  # read as it is: no column, human
        assert [f.provenance for f in old.feedback()] == ["human"]
    with TraceLog(path) as log:  # migrated on open
        log.record_feedback(tid, relevant_ids=["a"], provenance="model")
        assert [f.provenance for f in log.feedback()] == ["human", "model"]


# -- imports --------------------------------------------------------------------------------------


def test_imports_carry_provenance_and_an_export_round_trip_keeps_it(small, tmp_path):
    recs = [
        TraceRecord(
            query="money back",
            external_id="r1",
            source="app",
            result_ids=["refund", "cancel"],
            feedback=[
                FeedbackRecord(relevant_ids=["refund"]),
                FeedbackRecord(irrelevant_ids=["cancel"], provenance="model"),
            ],
        )
    ]
    assert small.import_traces(recs).feedback == 2
    assert [f.provenance for f in small.feedback()] == ["human", "model"]
    out = tmp_path / "export.jsonl"
    small.trace_log.export_jsonl(out)
    line = json.loads(out.read_text().splitlines()[0])
    assert [f["provenance"] for f in line["feedback"]] == ["human", "model"]
    other = NudgeState(small.adapter, tmp_path / "other")
    try:
        assert other.import_traces(jsonl.read(out)).feedback == 2
        assert [f.provenance for f in other.feedback()] == ["human", "model"]
    finally:
        other.close()
    bad = [TraceRecord(query="q", source="app", feedback=[FeedbackRecord(provenance="llm")])]
    assert "provenance: found 'llm'" in small.import_traces(bad).bad[0][2]


def test_readers_tell_evaluator_annotations_from_human_ones():
    run = {
        "id": "run-1",
        "run_type": "retriever",
        "inputs": {"query": "money back"},
        "outputs": {"documents": [{"id": "refund"}, {"id": "cancel"}]},
    }
    fb = [
        {"run_id": "run-1", "correction": ["refund"], "feedback_source": {"type": "model"}},
        {"run_id": "run-1", "correction": ["cancel"], "feedback_source": {"type": "app"}},
    ]
    got = langsmith.read([run], fb)[0].feedback
    assert [(f.relevant_ids, f.provenance) for f in got] == [
        (["refund"], "model"),
        (["cancel"], "human"),
    ]
    obs = {"id": "o1", "type": "RETRIEVER", "input": "money back", "output": ["refund"]}
    scores = [
        {"observationId": "o1", "value": 1, "source": "EVAL", "metadata": {"document_id": "r"}},
        {
            "observationId": "o1",
            "value": 0,
            "source": "ANNOTATION",
            "metadata": {"document_id": "x"},
        },
    ]
    got = langfuse.read([obs], scores)[0].feedback
    assert [(f.relevant_ids, f.irrelevant_ids, f.provenance) for f in got] == [
        (["r"], [], "model"),
        ([], ["x"], "human"),
    ]
    spans = [
        {
            "context.span_id": "a1b2c3d4e5f60718",
            "span_kind": "RETRIEVER",
            "attributes.input.value": "money back",
            "attributes.retrieval.documents": [
                {"document.id": "refund"},
                {"document.id": "cancel"},
            ],
        }
    ]
    notes = [
        {"span_id": "a1b2c3d4e5f60718", "document_position": 0, "label": "relevant",
         "annotator_kind": "LLM"},
        {"span_id": "a1b2c3d4e5f60718", "document_position": 1, "label": "irrelevant",
         "annotator_kind": "HUMAN"},
    ]  # fmt: skip
    got = phoenix.read(spans, notes)[0].feedback
    assert sorted((f.provenance, f.relevant_ids, f.irrelevant_ids) for f in got) == [
        ("human", [], ["cancel"]),
        ("model", ["refund"], []),
    ]
    plain = [{k: v for k, v in n.items() if k != "annotator_kind"} for n in notes]
    assert {f.provenance for f in phoenix.read(spans, plain, provenance="model")[0].feedback} == {
        "model"
    }


# -- the engine: labels' provenance, the audit -----------------------------------------------------


def _engine(world: World, judge, **kw) -> NudgeFinetuneEngine:
    return NudgeFinetuneEngine(
        world.state, llm=JudgeClient(judge, name=kw.pop("name", "j")), progress=False, **kw
    )


def test_citations_train_as_model_labels_never_as_human_ones(tmp_path):
    world = World(tmp_path)
    traces = world.search_all()
    for tid, (_, _, target) in zip(traces, world.queries, strict=True):
        world.state.record_feedback(tid, relevant_ids=[target], provenance="model")
    eng = NudgeFinetuneEngine(world.state, progress=False)
    report = eng.finetune()
    assert report.labels["cited"] == len(world.queries) and report.labels["feedback"] == 0
    assert report.proof_by == "judge" and set(report.graded) == {"judge"}
    assert {q.provenance for q in eng.last_labels} == {Provenance.MODEL}


def test_label_cache_answers_keep_model_provenance_and_the_audit_reruns_free(tmp_path):
    world = World(tmp_path)
    traces = world.search_all()
    world.feedback_all(traces[:40], world.queries[:40])
    judge = QrelsJudge(world.qrels)
    eng = _engine(world, judge)
    first = eng.finetune()
    again = eng.finetune()  # every answer from the label cache
    assert again.cost["llm_calls"] == 0 and first.cost["llm_calls"] > 0
    by_source = {q.source: q.provenance for q in eng.last_labels}
    assert by_source == {"feedback": Provenance.HUMAN, "llm": Provenance.MODEL}
    a, b = first.judge_audit, again.judge_audit
    assert a is not None and b is not None
    assert (a.tp, a.fp, a.fn, a.queries) == (b.tp, b.fp, b.fn, b.queries)
    assert a.judge_calls == 40 and b.judge_calls == 0 and b.prompts == 40


def test_audit_figures_match_a_judge_of_known_flip_rates(tmp_path):
    world = World(tmp_path)
    traces = world.search_all()
    n_human = 120
    world.feedback_all(traces[:n_human], world.queries[:n_human])
    judge = NoisyJudge(world.qrels, miss=0.3, false_positive=0.05, seed=1)
    seen: list[dict] = []

    def recording(body):
        seen.append(parse_request(body["messages"]))
        return judge(body)

    eng = _engine(world, recording, name="noisy", max_audit_queries=100)
    report = eng.finetune()
    audit = report.judge_audit
    assert audit is not None and audit.queries == 100
    # the audit's prompts come first: count what the judge said on them against the humans
    target = {q: t for q, _, t in world.queries[:n_human]}
    tp = fp = fn = 0
    for req in seen[: audit.prompts]:
        for c in req["candidates"]:
            said, truth = judge.grade(req["query"], c["id"]) > 0, c["id"] == target[req["query"]]
            tp, fp, fn = tp + (said and truth), fp + (said and not truth), fn + (truth and not said)
    assert (audit.tp, audit.fp, audit.fn) == (tp, fp, fn)
    assert audit.recall == pytest.approx(tp / (tp + fn))
    lo, hi = audit.recall_ci
    assert lo < 0.7 < hi  # recall is 1 - miss
    # precision as the flip rates make it: 0.7 gold kept vs 0.05 of ~19 others called relevant
    expected = 0.7 / (0.7 + 0.05 * 19)
    assert audit.precision_ci[0] < expected < audit.precision_ci[1]
    assert audit.trusted  # 0.42 is poor, but not significantly below the 0.3 bar


def test_a_weak_judge_with_human_feedback_present_is_not_trusted(tmp_path):
    world = World(tmp_path)
    traces = world.search_all()
    world.feedback_all(traces[:40], world.queries[:40])
    weak = NoisyJudge(world.qrels, miss=0.5, false_positive=0.4, seed=0)
    eng = _engine(world, weak, name="weak")
    report = eng.finetune()
    audit = report.judge_audit
    assert audit is not None and not audit.trusted and audit.precision < 0.1
    assert "precision" in audit.reasons()[0]
    # nothing judged beyond the audit: its labels dropped, fit and proof on the human labels
    assert report.labels["llm"] == 0 and report.labels["judge_dropped"] == len(world.queries) - 40
    assert report.cost["questions"] == audit.prompts == 40
    assert report.proof_by == "human" and set(report.graded) == {"human"}
    text = str(report)
    assert "NOT TRUSTED" in text.splitlines()[1] and "judge not trusted: 200 searches" in text


def test_a_good_judge_with_human_feedback_present_is_trusted_and_proves(tmp_path):
    world = World(tmp_path)
    traces = world.search_all()
    world.feedback_all(traces[:20], world.queries[:20])  # too few to prove alone
    good = SimilarityBiasedJudge(world.qrels, precision=0.8)
    report = _engine(world, good, name="good").finetune()
    audit = report.judge_audit
    assert audit is not None and audit.trusted and audit.precision > 0.6
    assert report.labels["llm"] > 100 and report.proven
    assert report.proof_by == "human+judge" and set(report.graded) == {"human", "judge"}
    assert str(report).splitlines()[1].endswith("; trusted")
    stored = report.to_dict()
    assert stored["judge_audit"]["trusted"] is True and stored["proof_by"] == "human+judge"
    json.dumps(stored)  # serialisable as stored with a version


def test_a_trusted_judge_proves_a_gain_that_a_few_human_queries_alone_cannot(tmp_path):
    """issue 21: with >= min_human_heldout human-graded held-out queries the proof was theirs
    alone, and a handful of them refused a good judge's gain. Here people labelled searches
    that already worked (the target first): alone they show no gain; a trusted judge's
    held-out queries join them, and their zero gain does not veto."""
    world = World(tmp_path)
    traces = world.search_all()
    queries = np.stack([v for _, v, _ in world.queries])
    top = exact_knn(queries, world.vectors, 1, metric="cosine")[1][:, 0]
    easy = [n for n, (_, _, t) in enumerate(world.queries) if world.ids[top[n]] == t]
    world.feedback_all([traces[n] for n in easy], [world.queries[n] for n in easy])
    good = SimilarityBiasedJudge(world.qrels, precision=0.8)
    eng = _engine(world, good, name="good", min_human_heldout=8)
    report = eng.finetune()
    assert report.judge_audit is not None and report.judge_audit.trusted
    n_human = report.graded_queries["human"]
    assert n_human >= 8 and report.graded_queries["judge"] > 20
    assert report.graded["human"].gain == 0.0 and report.graded["judge"].ci_low > 0.1
    assert report.proof_by == "human+judge" and not report.vetoed and report.proven
    # the figures apart, each named by its grader; the mixed line never stands for either
    text = str(report)
    assert f"NDCG@10 on the {n_human} human-graded: " in text and "-graded: " in text
    assert f"grades {n_human} held-out queries by people" in text
    # the old rule (judge unchecked) holds out the human-labelled queries alone
    held = eng.split_labels(eng.last_labels, judge_trusted=False)[2]
    assert {q.source for q in held} == {"feedback"} and len(held) == n_human


def _two_faced(world: World, human: set[str]) -> QrelsJudge:
    """Gold on the searches people labelled (the audit's), elsewhere the target's nearest other
    chunk: trusted by the audit, harmful to the people's queries of the same targets."""
    nn = exact_knn(world.vectors, world.vectors, 2, metric="cosine")[1][:, 1]
    row = {i: n for n, i in enumerate(world.ids)}
    return QrelsJudge(
        {q: {t if q in human else world.ids[nn[row[t]]]: 2} for q, _, t in world.queries}
    )


def test_people_veto_a_trusted_judge_whose_labels_harm_their_queries(tmp_path):
    """A judge that passes the audit but labels other searches wrong: the held-out proof
    graded by it is large, the people's held-out gain negative: not proven, apply refuses."""
    world = World(tmp_path)
    traces = world.search_all()
    spread = list(range(0, len(traces), 8))  # every target's users: some with feedback
    world.feedback_all([traces[n] for n in spread], [world.queries[n] for n in spread])
    judge = _two_faced(world, {world.queries[n][0] for n in spread})
    eng = _engine(world, judge, name="two-faced")
    report = eng.finetune()
    assert report.judge_audit is not None and report.judge_audit.trusted
    assert report.proof_by == "human+judge" and report.ndcg.ci_low > 0.1
    assert report.graded["human"].gain < 0 < report.graded["judge"].gain
    assert report.vetoed and not report.proven
    text = str(report)
    assert "not proven: people's labels veto it" in text
    assert report.to_dict()["vetoed"] is True and report.to_dict()["proven"] is False
    with pytest.raises(GainNotProvenError, match="people's labels veto it"):
        eng.apply(report)


def test_split_holds_out_a_trusted_judges_queries_next_to_the_peoples(small):
    emb = np.ones(DIM, np.float32)
    mixed = [
        LabeledQuery(f"q:{src} {i}", "t", emb, {"refund": 1.0}, src)
        for src, n in (("feedback", 100), ("llm", 400))
        for i in range(n)
    ]
    eng = NudgeFinetuneEngine(small, progress=False)
    unchecked = eng.split_labels(mixed)[2]  # no audit made: the people's alone
    assert {q.source for q in unchecked} == {"feedback"}
    trusted = eng.split_labels(mixed, judge_trusted=True)[2]
    assert {q.source for q in trusted} == {"feedback", "llm"}
    assert len(trusted) > 4 * len(unchecked)  # the judge's held-out share joins


def test_without_human_labels_the_report_says_the_judge_is_unaudited(tmp_path):
    world = World(tmp_path)
    world.search_all()
    report = _engine(world, QrelsJudge(world.qrels)).finetune()
    assert report.judge_audit is None and report.proof_by == "judge"
    head = str(report).splitlines()[1]
    assert head.startswith("judge unaudited: no human labels") and "watch" in head


def test_similarity_biased_judge_errs_where_it_is_told():
    qrels = {"q": {"g": 1.0}}
    ids = ["a", "b", "g", "c", "d"]
    assert SimilarityBiasedJudge(qrels, precision=0.5).grades("q", ids) == [1, 0, 1, 0, 0]
    assert SimilarityBiasedJudge({}, per_prompt=2).grades("q", ids) == [1, 1, 0, 0, 0]  # no gold
    scores = {"a": 0.1, "b": 0.2, "c": 0.9, "d": 0.5}
    prefer = SimilarityBiasedJudge(
        qrels, precision=1 / 3, prefer=lambda q, xs: [scores[x] for x in xs]
    )
    assert prefer.grades("q", ids) == [0, 0, 1, 1, 1]
    longest = SimilarityBiasedJudge(qrels, per_prompt=1, longest=True)
    assert longest.grades("q", ids, ["x", "xx", "x", "xxxx", "x"]) == [0, 0, 1, 1, 0]
    with pytest.raises(ValueError, match="per_prompt: found -1"):
        SimilarityBiasedJudge(qrels, per_prompt=-1)


def test_audit_judge_counts_only_the_pool():
    pairs = [({"a": 2, "b": 1, "c": 0}, {"a": 1.0, "c": 1.0, "z": 1.0}), ({"d": 0}, {})]
    audit = audit_judge(pairs)
    assert (audit.queries, audit.tp, audit.fp, audit.fn) == (2, 1, 1, 1)
    assert audit.precision == 0.5 and audit.recall == 0.5
    empty = audit_judge([])
    assert math.isnan(empty.precision) and empty.trusted


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"min_judge_precision": 1.5}, r"min_judge_precision / min_judge_recall: found 1.5"),
        ({"min_judge_recall": -0.1}, r"expected shares in \[0, 1\]"),
        ({"max_audit_queries": -1}, r"max_audit_queries: found -1, expected ≥ 0"),
        ({"max_audit_queries": 2.5}, r"max_audit_queries: found 2.5, expected an integer"),
    ],
)
def test_bad_audit_settings_fail_at_construction(small, kw, match):
    with pytest.raises(NudgeError, match=match):
        NudgeFinetuneEngine(small, llm=JudgeClient(QrelsJudge({})), **kw)
