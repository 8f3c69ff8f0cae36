"""NudgeFinetuneEngine on a small synthetic corpus: labels, split, proof, apply, rollback."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from nudge_rag import BadInputError, FinetuneConfig, NudgeFinetuneEngine
from nudge_rag.engine.engine import FinetuneReport, GainNotProvenError, search
from nudge_rag.errors import MetricMismatchError, NudgeError
from nudge_rag.eval.simulate import LookupEmbedder
from nudge_rag.fit.nudge import Method
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.base import Metric
from nudge_rag.stores.memory import MemoryAdapter
from nudge_rag.testing import Faults, OpenAIStub, QrelsJudge

N_CHUNKS, DIM, N_TARGETS, PER_TARGET = 300, 24, 60, 4


class World:
    """Chunks in a store; users whose queries each want one of 60 target chunks.

    A query is its target's vector plus noise from one side, so the target is usually in the
    top 20 but often not first: NUDGE, trained on some queries of a target, helps the others.
    """

    def __init__(self, tmp_path, *, metric: Metric = Metric.COSINE, seed: int = 0):
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(30, DIM))
        e = centers[rng.integers(0, 30, N_CHUNKS)] + 0.3 * rng.normal(size=(N_CHUNKS, DIM))
        self.vectors = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
        self.ids = [f"c{i:03d}" for i in range(N_CHUNKS)]
        targets = rng.choice(N_CHUNKS, N_TARGETS, replace=False)
        self.queries: list[tuple[str, np.ndarray, str]] = []
        for t in targets:
            side = rng.normal(size=DIM)  # the users of one chunk ask from one side of it
            for j in range(PER_TARGET):
                noise = side + 0.5 * rng.normal(size=DIM)
                v = self.vectors[t] + 1.3 * noise / np.sqrt(DIM)
                v = (v / np.linalg.norm(v)).astype(np.float32)
                self.queries.append((f"question {j} about chunk {t}", v, self.ids[t]))
        self.records = {
            i: {"id": i, "vector": self.vectors[n].tolist(), "text": f"text of {i}"}
            for n, i in enumerate(self.ids)
        }
        self.embed = LookupEmbedder(
            [q for q, _, _ in self.queries], np.stack([v for _, v, _ in self.queries])
        )
        self.state = NudgeState(
            MemoryAdapter(self.records, metric=metric),
            tmp_path / "state",
            embed_queries=self.embed,
            get_texts=lambda ids: [
                self.records[i]["text"] if i in self.records else None for i in ids
            ],
        )
        self.qrels = {q: {target: 2} for q, _, target in self.queries}

    def text_vectors(self) -> dict[str, np.ndarray]:
        """Chunk texts and query texts → their vectors (a ``LookupEmbeddings`` table)."""
        table = {self.records[i]["text"]: self.vectors[n] for n, i in enumerate(self.ids)}
        table.update({t: v for t, v, _ in self.queries})
        return table

    def search_all(self, queries=None) -> list[str]:
        """Run queries as searches (as a face would record them); return the trace ids."""
        out = []
        current = self.state.get_vectors(self.ids)
        for text, v, _ in queries if queries is not None else self.queries:
            top = search(v[None, :], current, 5, self.state.metric)[0]
            out.append(
                self.state.record_search(text, v, 5, None, [self.ids[r] for r in top], [0.0] * 5)
            )
        return out

    def feedback_all(self, trace_ids, queries=None) -> None:
        for tid, (_, _, target) in zip(trace_ids, queries or self.queries, strict=True):
            self.state.record_feedback(tid, relevant_ids=[target])


def engine(world: World, **kw) -> NudgeFinetuneEngine:
    kw.setdefault("progress", False)
    return NudgeFinetuneEngine(world.state, **kw)


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


# -- feedback only -------------------------------------------------------------------------------


def test_feedback_labels_finetune_apply_and_exact_rollback(world):
    world.feedback_all(world.search_all())
    eng = engine(world)  # llm=None: feedback labels only
    report = eng.finetune()
    assert report.labels["feedback"] == len(world.queries)
    assert report.queries["heldout"] > 30 and report.rows_changed > 0
    assert report.ndcg.after > report.ndcg.before and report.proven
    assert world.state.get_vectors(world.ids).tobytes() == world.vectors.tobytes()  # not yet

    version = eng.apply(report)
    assert version == 1 == report.version
    stored = world.state.versions()[-1].report
    assert stored["ndcg"]["after"] == pytest.approx(report.ndcg.after)
    assert stored["proven"] is True
    changed = report.vectors()
    now = world.state.get_vectors(list(changed))
    np.testing.assert_allclose(now, np.stack(list(changed.values())), rtol=0, atol=1e-7)

    assert eng.rollback() == 0
    assert world.state.get_vectors(world.ids).tobytes() == world.vectors.tobytes()


def test_the_report_reads_as_a_table_and_serialises(world):
    world.feedback_all(world.search_all())
    report = engine(world).finetune()
    text = str(report)
    for needle in ("NDCG@10", "Recall@10", "held-out", "95% CI", "proven", "LLM:"):
        assert needle in text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ndcg"]["gain"] == pytest.approx(report.ndcg.gain)
    assert "_vectors" not in d and d["queries"] == report.queries


def test_apply_refuses_an_unproven_gain_unless_forced(world):
    world.feedback_all(world.search_all())
    eng = engine(world, min_gain=0.5)
    report = eng.finetune()
    assert not report.proven
    with pytest.raises(GainNotProvenError, match=r"not above min_gain=0\.5.*force=True"):
        eng.apply(report)
    assert world.state.versions()[-1].version == 0
    assert eng.apply(report, force=True) == 1
    with pytest.raises(NudgeError, match="already applied as version 1"):
        eng.apply(report, force=True)


def test_random_feedback_does_not_prove_a_gain(world):
    rng = np.random.default_rng(1)
    for tid in world.search_all():
        world.state.record_feedback(tid, relevant_ids=[world.ids[rng.integers(N_CHUNKS)]])
    report = engine(world).finetune()
    assert not report.proven
    with pytest.raises(GainNotProvenError):
        engine(world).apply(report)


# -- the held-out proof ---------------------------------------------------------------------------


def test_heldout_labels_never_touch_the_fit(world):
    traces = world.search_all()
    world.feedback_all(traces)
    eng = engine(world)
    first = eng.finetune()
    _, _, heldout, _ = eng.split_labels(eng.last_labels)
    # relabel every held-out query with a wrong chunk: the fit must not move at all
    for q in heldout:
        for tid in q.trace_ids:
            world.state.record_feedback(
                tid, relevant_ids=["c000"], irrelevant_ids=list(q.positives)
            )
    second = eng.finetune()
    assert second.gamma == first.gamma and second._ids == first._ids
    assert np.array_equal(second._vectors, first._vectors)
    assert second.ndcg.before != first.ndcg.before  # only the evaluation saw the change


def test_the_split_is_by_query_and_stable_as_traces_grow(world):
    half = world.queries[::2]
    world.feedback_all(world.search_all(half), half)
    eng = engine(world)
    eng.finetune()
    before = {q.key for q in eng.split_labels(eng.last_labels)[2]}
    world.feedback_all(world.search_all(world.queries[1::2]), world.queries[1::2])
    world.feedback_all(world.search_all(half), half)  # the same queries asked again
    eng.finetune()
    train, val, heldout, _ = eng.split_labels(eng.last_labels)
    after = {q.key for q in heldout}
    assert before <= after
    assert not ({q.key for q in train} & after) and not ({q.key for q in val} & after)
    assert len(eng.last_labels) == len(world.queries)  # repeated queries are one labeled query


# -- incremental ----------------------------------------------------------------------------------


def test_a_second_finetune_starts_from_base_and_apply_resets_old_rows(tmp_path):
    """Round 2 brings new traces and withdraws round 1's feedback: the fit starts from the
    base vectors (as if round 1 had never been applied) and rows only round 1 changed go
    back to base when round 2 is applied."""
    half = len(World(tmp_path / "probe").queries) // 2

    def round_1(w: World) -> list[str]:
        tids = w.search_all(w.queries[:half])
        w.feedback_all(tids, w.queries[:half])
        return tids

    def round_2(w: World, first: list[str]) -> None:
        w.feedback_all(w.search_all(w.queries[half:]), w.queries[half:])
        for tid, (_, _, target) in zip(first, w.queries[:half], strict=True):
            w.state.record_feedback(tid, irrelevant_ids=[target])

    world = World(tmp_path / "a")
    eng = engine(world)
    first = round_1(world)
    v1 = eng.finetune()
    eng.apply(v1, force=True)
    round_2(world, first)
    report = eng.finetune()

    fresh = World(tmp_path / "b")  # the same corpus, traces and feedback, never nudged
    round_2(fresh, round_1(fresh))
    expected = engine(fresh).finetune()
    assert report._ids == expected._ids and np.array_equal(report._vectors, expected._vectors)

    eng.apply(report, force=True)
    want = world.vectors.copy()
    for i, v in report.vectors().items():
        want[world.ids.index(i)] = v
    np.testing.assert_allclose(world.state.get_vectors(world.ids), want, rtol=0, atol=1e-7)
    stale = sorted(set(v1._ids) - set(report._ids))
    assert stale  # rows only version 1 changed are back at their base vectors
    rows = [world.ids.index(i) for i in stale]
    assert world.state.get_vectors(stale).tobytes() == world.vectors[rows].tobytes()
    assert eng.rollback() == 1
    assert world.state.get_vectors(v1._ids).tobytes() == v1._vectors.tobytes()


def test_new_chunks_join_the_next_finetune(world):
    world.feedback_all(world.search_all())
    eng = engine(world)
    first = eng.finetune()
    eng.apply(first)
    # a new chunk arrives (added straight into the store), and users find it relevant
    new_vec = world.vectors[0]
    world.records["new"] = {"id": "new", "vector": new_vec.tolist(), "text": "fresh"}
    text, v, _ = world.queries[0]
    tid = world.state.record_search(text + " again", v, 5, None, ["new"], [1.0])
    world.state.record_feedback(tid, relevant_ids=["new"])
    second = eng.finetune()
    assert second.n_chunks == N_CHUNKS + 1
    assert second.labels["feedback"] == len(world.queries) + 1
    assert second.proven and eng.apply(second) == 2


def test_a_stale_report_is_refused(world):
    world.feedback_all(world.search_all())
    eng = engine(world)
    report = eng.finetune()
    some = report._ids[0]
    world.state.on_upsert([some])  # the document is re-added with a new embedding
    world.state.adapter.put([some], -world.vectors[[world.ids.index(some)]])
    with pytest.raises(NudgeError, match=r"base vectors of its rows changed.*finetune\(\) again"):
        eng.apply(report, force=True)


# -- LLM labels through the local OpenAI-compatible server ---------------------------------------


@pytest.mark.integration
def test_llm_labels_traces_without_feedback(world):
    traces = world.search_all()
    with_fb = world.queries[:40]
    world.feedback_all(traces[:40], with_fb)
    with OpenAIStub(QrelsJudge(world.qrels)) as stub:
        eng = engine(world, llm=stub.client(), llm_model="judge", label_k=20)
        report = eng.finetune()
        # feedback is not labelled by the judge; its 40 searches are asked once, for the audit
        audit = report.judge_audit
        assert audit is not None and audit.queries == 40 and audit.judge_calls == 40
        assert audit.trusted and audit.precision == 1.0
        assert len(stub.chat_requests) == len(world.queries) - 40 + 40
    assert report.labels["feedback"] == 40
    assert report.labels["llm"] + report.labels["no_positive"] == len(world.queries) - 40
    assert report.cost["llm_calls"] == len(world.queries) - 40 + audit.judge_calls
    assert report.proven
    # pools come from the base vectors: a target outside the user's top 5 is still found
    found = {q.key: q for q in eng.last_labels if q.source == "llm"}
    text, _, target = next((t, v, c) for t, v, c in world.queries[40:] if f"q:{t.lower()}" in found)
    assert found[f"q:{text.lower()}"].positives == {target: 2.0}


@pytest.mark.integration
def test_a_rerun_pays_only_for_new_traces(world):
    world.search_all(world.queries[:100])
    with OpenAIStub(QrelsJudge(world.qrels)) as stub:
        eng = engine(world, llm=stub.client(), llm_model="judge")
        eng.finetune()
        world.search_all(world.queries[100:])
        report = eng.finetune()
        assert len(stub.chat_requests) == len(world.queries)
    assert report.cost["cache_hits"] == 100 and report.cost["llm_calls"] == len(world.queries) - 100
    cache_file = world.state.state_dir / "labels.sqlite"
    assert cache_file.exists()


def test_faults_and_budget_are_counted_in_the_report(world):
    world.search_all()
    faults = Faults(malformed=0.2, server_error=0.1, seed=5)
    with OpenAIStub(QrelsJudge(world.qrels), faults=faults) as stub:
        eng = engine(world, llm=stub.client(), llm_model="judge", max_calls=150)
        report = eng.finetune()
        assert len(stub.chat_requests) == 150
    c = report.cost
    assert c["llm_calls"] == 150 and c["skipped_budget"] > 0 and c["invalid_answers"] > 0
    assert report.labels["llm"] == c["answered"] - report.labels["no_positive"]


@pytest.mark.integration
def test_llama_index_mock_llm_as_the_judge(world):
    """LlamaIndex's MockLLM echoes the prompt its messages_to_prompt hook builds: the hook
    answers from the qrels, so the whole engine runs on the framework's own fake model."""
    from llama_index.core.llms import MockLLM

    judge = QrelsJudge(world.qrels)

    def answer(messages) -> str:
        msgs = [{"role": str(m.role.value), "content": str(m.content)} for m in messages]
        return json.dumps(judge({"messages": msgs}))

    world.search_all()
    report = engine(world, llm=MockLLM(messages_to_prompt=answer)).finetune()
    assert report.labels["llm"] > 150 and report.proven
    assert report.cost["llm_calls"] == len(world.queries)


def test_langchain_fake_model_answers_are_skipped_and_counted(world):
    """A LangChain fake model that never answers JSON: its traces are retried, skipped and
    counted, never labeled; the feedback-labeled traces still carry the fit."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    traces = world.search_all()
    n_fb = 180
    world.feedback_all(traces[:n_fb], world.queries[:n_fb])
    llm = FakeListChatModel(responses=["Sure, the first two are relevant."])
    report = engine(world, llm=llm).finetune()
    assert report.labels["feedback"] == n_fb and report.labels["llm"] == 0
    rest = len(world.queries) - n_fb
    assert report.judge_audit is not None and report.judge_audit.skipped == n_fb
    assert report.cost["skipped_invalid"] == rest + n_fb  # the audit's prompts too
    assert report.cost["llm_calls"] == 3 * (rest + n_fb)  # the first answer and two re-asks each


# -- cold start ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_synthetic_questions_cold_start(world):
    questions = {}
    for text, _, target in world.queries:
        questions.setdefault(target, []).append(text)
    judge = QrelsJudge(world.qrels, questions=questions)
    with OpenAIStub(judge) as stub:
        eng = engine(
            world,
            llm=stub.client(),
            llm_model="judge",
            synthetic_chunks=N_CHUNKS,
            questions_per_chunk=4,
        )
        report = eng.finetune()  # no traces at all
        assert report.heldout_source == "synthetic" and report.labels["synthetic"] == len(
            world.queries
        )
        # chunks without questions were skipped and counted, not guessed
        assert report.cost["skipped_invalid"] == N_CHUNKS - N_TARGETS
        assert report.proven

        world.feedback_all(world.search_all(world.queries[::3]), world.queries[::3])
        report = eng.finetune()
        assert report.heldout_source == "traces"
        _, _, heldout, _ = eng.split_labels(eng.last_labels)
        assert heldout and all(q.source == "feedback" for q in heldout)


# -- metrics and methods ---------------------------------------------------------------------------


def test_nudge_m_needs_an_inner_product_store(tmp_path):
    cosine = World(tmp_path / "cos")
    with pytest.raises(MetricMismatchError, match="method='nudge-n'"):
        engine(cosine, method="nudge-m")
    ip = World(tmp_path / "ip", metric=Metric.IP)
    ip.feedback_all(ip.search_all())
    eng = engine(ip, method="nudge-m")
    report = eng.finetune()
    assert report.method == "nudge-m" and report.proven
    assert eng.apply(report) == 1


def test_l2_store(tmp_path):
    world = World(tmp_path, metric=Metric.L2)
    world.feedback_all(world.search_all())
    report = engine(world).finetune()
    assert report.metric == "l2" and report.proven


def test_l2_search_matches_brute_force():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(200, 8)).astype(np.float32) * rng.uniform(0.5, 2, (200, 1)).astype(
        np.float32
    )
    q = rng.normal(size=(5, 8)).astype(np.float32)
    want = np.argsort(((q[:, None, :] - e[None]) ** 2).sum(-1), axis=1)[:, :10]
    assert np.array_equal(search(q, e, 10, Metric.L2), want)


# -- bad input -------------------------------------------------------------------------------------


BAD_SETTINGS = [
    ({"split": (0.5, 0.5, 0.5)}, r"split: found \(0\.5, 0\.5, 0\.5\), expected"),
    ({"split": (0.0, 0.5, 0.5)}, "train and held-out need a share"),
    ({"label_k": 0}, "label_k: found 0"),
    ({"judge_batch": 0}, "judge_batch: found 0"),
    ({"method": "nudge-x"}, "method: found 'nudge-x'"),
    ({"confidence": 1.5}, "confidence: found 1.5"),
    ({"n_resamples": 99}, "n_resamples: found 99, expected an integer ≥ 100"),
    ({"corpus": "disk"}, "corpus: found 'disk', expected 'auto', 'memory' or 'store'"),
    ({"max_audit_queries": -1}, r"max_audit_queries: found -1, expected ≥ 0 \(0: no audit\)"),
]


@pytest.mark.parametrize(
    ("kw", "match"), [*BAD_SETTINGS, ({"llm": "gpt-4o"}, "llm: found builtins.str")]
)
def test_bad_arguments_name_the_fix(world, kw, match):
    with pytest.raises(NudgeError, match=match):
        engine(world, **kw)


# -- the settings as one FinetuneConfig (issue 22) -------------------------------------------------


@pytest.mark.parametrize(("kw", "match"), BAD_SETTINGS)
def test_a_config_checks_its_settings_with_the_engines_messages(kw, match):
    with pytest.raises(BadInputError, match=match):
        FinetuneConfig(**kw)
    with pytest.raises(ValueError, match=match):  # a changed copy is checked again
        dataclasses.replace(FinetuneConfig(), **kw)


def test_a_config_holds_the_settings_normalised_and_frozen():
    config = FinetuneConfig(method="nudge-m", gamma=1, split=[0.5, 0.25, 0.25], min_gain=0)
    assert config.method is Method.NUDGE_M and config.gamma == 1.0
    assert config.split == (0.5, 0.25, 0.25) and isinstance(config.min_gain, float)
    assert config.audits and not FinetuneConfig(max_audit_queries=0).audits
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 5  # type: ignore[misc]


def test_config_or_keywords_build_the_same_engine_but_not_both(world):
    config = FinetuneConfig(min_gain=0.01, seed=3, label_k=10, progress=False)
    by_config = NudgeFinetuneEngine(world.state, config=config)
    by_keywords = engine(world, min_gain=0.01, seed=3, label_k=10)
    assert by_config.config == by_keywords.config == config
    with pytest.raises(BadInputError, match="found config= and the keyword settings seed; pass"):
        NudgeFinetuneEngine(world.state, config=config, seed=4)
    with pytest.raises(BadInputError, match="config: found dict, expected a FinetuneConfig"):
        NudgeFinetuneEngine(world.state, config={"seed": 4})
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'min_gian'.*min_gain"):
        engine(world, min_gian=0.1)
    with pytest.raises(MetricMismatchError):  # the store's own check runs on a config too
        NudgeFinetuneEngine(world.state, config=FinetuneConfig(method="nudge-m"))


def test_a_config_and_its_keywords_give_the_same_report(world):
    world.feedback_all(world.search_all())
    settings = {"seed": 5, "split": (0.5, 0.25, 0.25), "n_resamples": 500, "progress": False}
    by_keywords = engine(world, **settings).finetune().to_dict()
    by_config = NudgeFinetuneEngine(world.state, config=FinetuneConfig(**settings)).finetune()
    by_keywords.pop("created")
    assert {**by_config.to_dict(), "created": None} == {**by_keywords, "created": None}
    assert by_config.seed == 5 and by_config.queries["train"] > by_config.queries["heldout"]


def test_a_store_without_the_protocol_is_rejected():
    with pytest.raises(NudgeError, match=r"store: found dict without .*NudgedVectorStore"):
        NudgeFinetuneEngine({})


def test_no_labels_names_the_fix(world):
    world.search_all()  # traces, but no feedback and no LLM
    with pytest.raises(NudgeError, match=r"found 0 labeled queries.*pass llm=\.\.\."):
        engine(world).finetune()


def test_a_report_without_vectors_cannot_be_applied(world):
    world.feedback_all(world.search_all())
    eng = engine(world)
    d = eng.finetune().to_dict()
    with pytest.raises(NudgeError, match="expected the FinetuneReport that finetune"):
        eng.apply(d)  # type: ignore[arg-type]
    assert isinstance(eng.last_report, FinetuneReport)


# -- negatives: what is known not relevant reaches the fit (issue 14) -----------------------------


def negative_counts(eng: NudgeFinetuneEngine) -> int:
    """(query, chunk) pairs graded 0 among the engine's train + validation queries."""
    train, val, _, _ = eng.split_labels(eng.last_labels)
    return sum(1 for q in train + val for g in q.grades.values() if g <= 0)


def test_feedback_irrelevant_ids_reach_the_fit_as_negatives(world):
    traces = world.search_all()
    targets = {target for _, _, target in world.queries}
    shown = {str(t.id): t.result_ids for t in world.state.traces()}
    pushed = 0
    for tid, (_, _, target) in zip(traces, world.queries, strict=True):
        wrong = [i for i in shown[tid] if i != target][:2]
        pushed += sum(i in targets for i in wrong)
        world.state.record_feedback(tid, relevant_ids=[target], irrelevant_ids=wrong)
    assert pushed > 0  # some wrongly shown chunks answer other queries: their update changes
    with_neg = engine(world, gamma=0.3)
    report = with_neg.finetune()
    assert report.labels["negative_pairs"] == negative_counts(with_neg) > 0
    assert report.negative_weight > 0  # γ fixed: the default λ
    without = engine(world, gamma=0.3, use_negatives=False).finetune()
    assert without.labels["negative_pairs"] == 0 and without.negative_weight == 0
    a, b = report.vectors(), without.vectors()
    assert set(a) == set(b)
    assert max(np.abs(a[i] - b[i]).max() for i in a) > 1e-4
    assert report.to_dict()["negative_weight"] == report.negative_weight


@pytest.mark.integration
def test_judge_grade_zero_candidates_are_negatives(world):
    world.search_all()
    with OpenAIStub(QrelsJudge(world.qrels)) as stub:
        eng = engine(world, llm=stub.client(), llm_model="judge", label_k=20)
        report = eng.finetune()
        off = engine(world, llm=stub.client(), llm_model="judge", use_negatives=False).finetune()
    # every judged candidate that is not relevant, of the train and validation queries only
    n = negative_counts(eng)
    assert report.labels["negative_pairs"] == n > 10 * report.queries["train"]
    assert off.labels["negative_pairs"] == 0
    assert report.proven and report.ndcg.after >= off.ndcg.after - 0.02
