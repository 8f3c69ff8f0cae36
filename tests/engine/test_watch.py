"""The continuous loop: fine-tune when enough labels arrived, apply when proven, and the guard
that rolls a version back when the live signal drops after it (simulated traffic on a Chroma
store through the LangChain face; the clock is injected, nothing sleeps)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.engine.engine import search
from nudge_rag.engine.watch import (
    GUARD_METHOD,
    WATCH_LOG,
    Watcher,
    paired_signal,
    parse_duration,
    sign_test,
)
from nudge_rag.errors import NudgeError
from nudge_rag.eval.simulate import LookupEmbedder
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.base import Metric
from nudge_rag.stores.memory import MemoryAdapter
from tests.engine.test_engine import World


class FakeClock:
    """A clock that only moves when the loop sleeps."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path / "world")  # its vectors, texts and queries


@pytest.fixture
def store(world, tmp_path):
    import chromadb
    from langchain_chroma import Chroma

    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.langchain.embeddings import LookupEmbeddings

    inner = Chroma(
        collection_name="watch",
        embedding_function=LookupEmbeddings(world.text_vectors()),
        client=chromadb.PersistentClient(path=str(tmp_path / "chroma")),
        collection_metadata={"hnsw:space": "cosine"},
    )
    s = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    s.add_texts([world.records[i]["text"] for i in world.ids], ids=world.ids)
    yield s
    s.close()


def traffic(store, queries) -> int:
    """Users search (k=5) and say which chunk they wanted; return how many found it."""
    found = 0
    for text, _, target in queries:
        docs, tid = store.search_with_trace(text, k=5)
        found += target in [d.id for d in docs]
        store.record_feedback(tid, relevant_ids=[target])
    return found


def halves(world: World) -> tuple[list, list]:
    first = [q for n, q in enumerate(world.queries) if n % 4 < 3]
    return first, [q for n, q in enumerate(world.queries) if n % 4 == 3]


class ScrambledEngine(NudgeFinetuneEngine):
    """Fits honestly (its report proves a gain) but writes random vectors: a bad version."""

    def finetune(self):
        report = super().finetune()
        rng = np.random.default_rng(7)
        bad = rng.normal(size=report._vectors.shape).astype(np.float32)
        report._vectors = bad / np.linalg.norm(bad, axis=1, keepdims=True)
        return report


def watcher(store, clock, engine_cls=NudgeFinetuneEngine, engine_kw=None, **kw) -> Watcher:
    kw.setdefault("min_new_labels", 50)
    kw.setdefault("min_guard_searches", 30)
    kw.setdefault("settle_searches", 60)
    return Watcher(
        store,
        engine=engine_cls(store, progress=False, **(engine_kw or {})),
        clock=clock,
        sleep=clock.sleep,
        **kw,
    )


@pytest.mark.integration
def test_applies_a_proven_version_then_keeps_it_when_live_searches_hold(store, world, tmp_path):
    clock = FakeClock()
    first, later = halves(world)
    hits_before = traffic(store, first)
    w = watcher(store, clock)
    (decision,) = w.run_round()
    assert decision["decision"] == "apply" and decision["version"] == 1
    assert decision["report"]["ndcg"]["ci_low"] > 0
    assert store.nudge_state.current_version == 1

    hits_after = traffic(store, later)  # the searches that followed, served by version 1
    guard, finetune = w.run_round()
    assert guard["decision"] == "keep" and guard["version"] == 1
    sig = guard["signal"]
    assert sig["n"] == len(later)  # every search labelled after the fit, ranked both ways
    assert sig["new_hits"] > sig["base_hits"] and sig["wins"] > sig["losses"]
    assert guard["method"] == GUARD_METHOD
    assert hits_after / len(later) > hits_before / len(first)  # it did help
    assert finetune["decision"] == "apply" and finetune["from_version"] == 1
    assert store.nudge_state.current_version == 2

    log = [json.loads(x) for x in (tmp_path / "state" / WATCH_LOG).read_text().splitlines()]
    assert [r["decision"] for r in log] == ["apply", "keep", "apply"]
    assert all("version" in r and "time" in r and "round" in r for r in log)
    assert (tmp_path / "state" / WATCH_LOG).stat().st_mode & 0o777 == 0o600


def test_the_guard_rolls_a_bad_version_back_by_itself(store, world):
    clock = FakeClock()
    first, later = halves(world)
    traffic(store, first)
    served = store.nudge_state.get_vectors(world.ids)  # what Chroma holds at version 0
    w = watcher(store, clock, engine_cls=ScrambledEngine)
    (decision,) = w.run_round()
    assert decision["decision"] == "apply"  # its held-out proof was fine; the vectors are not
    version = decision["version"]

    few = later[:10]  # too few searches after it to judge: wait, and fine-tune nothing
    traffic(store, few)
    (wait,) = w.run_round()
    assert wait["decision"] == "guard_wait" and wait["version"] == version
    assert store.nudge_state.current_version == version

    traffic(store, later[10:])
    (rollback,) = w.run_round()  # no fine-tune in the round that rolled back
    assert rollback["decision"] == "rollback" and rollback["version"] == version
    assert rollback["to_version"] == 0
    sig = rollback["signal"]
    assert sig["new_hits"] < sig["base_hits"] and sig["losses"] > sig["wins"]
    assert sig["p_value"] <= 0.025 and "sign test" in rollback["reason"]
    assert store.nudge_state.current_version == 0
    np.testing.assert_array_equal(store.nudge_state.get_vectors(world.ids), served)

    # a restarted loop remembers: the rolled-back version is settled, not guarded again
    w2 = watcher(store, clock, min_new_labels=10_000)
    (nothing,) = w2.run_round()
    assert nothing["decision"] == "skip" and nothing["version"] == 0


def test_fine_tunes_only_when_enough_new_labels_arrived(store, world):
    clock = FakeClock()
    first, later = halves(world)
    traffic(store, first[:20])
    w = watcher(store, clock, min_new_labels=40)
    (skip,) = w.run_round()
    assert skip["decision"] == "skip" and skip["new_labels"] == 20 and skip["version"] == 0
    traffic(store, first[20:])
    (applied,) = w.run_round()
    assert applied["decision"] == "apply" and applied["new_labels"] == len(first)
    # the labels it used are behind the watermark: the next round waits for new ones
    w.settle_searches = w.min_guard_searches = 1
    traffic(store, later[:5])
    guard, skip2 = w.run_round()
    assert guard["decision"] == "keep"
    assert skip2["decision"] == "skip" and skip2["new_labels"] == 5


def test_a_fit_that_is_not_proven_is_logged_and_not_applied(store, world):
    clock = FakeClock()
    traffic(store, world.queries[:12])
    w = watcher(store, clock, min_new_labels=5, engine_kw={"min_gain": 10.0})  # no gain beats it
    (d,) = w.run_round()
    assert d["decision"] == "not_proven" and d["version"] == 0
    assert d["labels_seq"] == 12  # the insertion number of the last feedback row it counted
    assert store.nudge_state.current_version == 0


def test_run_keeps_its_cadence_on_the_injected_clock(store, world):
    clock = FakeClock()
    traffic(store, world.queries[:3])
    w = watcher(store, clock, every="1h", min_new_labels=100)
    out = w.run(rounds=3)
    assert [d["decision"] for d in out] == ["skip"] * 3
    assert clock.slept == [3600.0, 3600.0]
    assert [d["round"] for d in w.history()] == [1, 2, 3]


def test_the_sign_test_matches_scipy_and_counts_only_discordant_pairs():
    from scipy.stats import binomtest

    for losses, wins in [(0, 0), (3, 0), (9, 2), (2, 9), (40, 25), (150, 120)]:
        n = losses + wins
        want = binomtest(losses, n, alternative="greater").pvalue if n else 1.0
        assert sign_test(losses, wins) == pytest.approx(want, rel=1e-9)
    # 100 searches both found, 30 neither: only the 12 / 3 discordant ones decide
    sig = paired_signal(
        [(True, True)] * 100 + [(False, False)] * 30 + [(True, False)] * 12 + [(False, True)] * 3
    )
    assert (sig.n, sig.base_hits, sig.new_hits, sig.losses, sig.wins) == (145, 112, 103, 12, 3)
    assert sig.p_value == pytest.approx(binomtest(12, 15, alternative="greater").pvalue)


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h", 3600.0), ("15m", 900.0), ("90s", 90.0), ("1d", 86400.0), (5, 5.0)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "0s", "-1h", "1w"])
def test_parse_duration_refuses_what_it_cannot_read(bad):
    with pytest.raises(NudgeError, match="every"):
        parse_duration(bad)


def test_bad_settings_are_refused(store):
    with pytest.raises(NudgeError, match="min_new_labels"):
        Watcher(store, min_new_labels=0)
    with pytest.raises(NudgeError, match="settle_searches"):
        Watcher(store, min_guard_searches=50, settle_searches=10)


def test_a_damaged_log_is_one_clear_error(store, tmp_path):
    (tmp_path / "state" / WATCH_LOG).write_text('{"round": 1}\nnot json\n')
    with pytest.raises(NudgeError, match="line 2"):
        Watcher(store).run_round()


# -- labels by insertion order -------------------------------------------------------------------


class _FastClock:
    """The ``time`` module of a worker whose clock runs a day ahead."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    def time(self) -> float:
        return time.time() + 86400.0


def test_a_record_dated_a_day_ahead_does_not_hide_the_labels_that_follow(store, world, monkeypatch):
    """Old code: "labels until" became the future time and the next round found 0 new
    labelled searches while 50 had arrived."""
    import nudge_rag.state.traces.log as traces_module
    from nudge_rag.state.records import FeedbackRecord, TraceRecord

    clock = FakeClock()
    first = world.queries[:20]
    traffic(store, first)
    text, vec, target = world.queries[20]
    _, tid = store.search_with_trace(text, k=5)
    with monkeypatch.context() as m:  # one worker with a fast clock sends its feedback
        m.setattr(traces_module, "_time", _FastClock())
        store.record_feedback(tid, relevant_ids=[target])
    ahead = time.time() + 86400.0  # and one imported record whose tool's clock ran ahead
    text, vec, target = world.queries[21]
    store.nudge_state.import_traces(
        [
            TraceRecord(
                query=text,
                embedding=vec,
                result_ids=[target],
                time=ahead,
                external_id="ahead-1",
                source="jsonl",
                feedback=[FeedbackRecord(relevant_ids=[target], time=ahead)],
            )
        ]
    )
    # min_gain 10: never proven, the round only moves the labels' mark
    w = watcher(store, clock, min_new_labels=10, engine_kw={"min_gain": 10.0})
    (first_round,) = w.run_round()
    assert first_round["decision"] == "not_proven" and first_round["new_labels"] == 22

    traffic(store, world.queries[22:72])  # 50 labelled searches on time
    (second,) = w.run_round()
    assert second["decision"] == "not_proven" and second["new_labels"] == 50
    (third,) = w.run_round()
    assert third["decision"] == "skip" and third["new_labels"] == 0


def test_a_log_marked_by_time_moves_to_insertion_numbers(store, world, tmp_path):
    """A watch.jsonl written before insertion numbers (``labels_until``, even one in the future)
    counts the labels after it from then on."""
    traffic(store, world.queries[:10])
    log = tmp_path / "state" / WATCH_LOG
    mark = {"time": 1.0, "round": 1, "decision": "not_proven", "version": 0}
    log.write_text(json.dumps({**mark, "labels_until": time.time() + 86400.0}) + "\n")
    traffic(store, world.queries[10:15])
    w = watcher(store, FakeClock(), min_new_labels=100)
    (skip,) = w.run_round()
    assert skip["decision"] == "skip" and skip["new_labels"] == 0  # the future mark covers all
    traffic(store, world.queries[15:18])
    (skip,) = w.run_round()
    assert skip["new_labels"] == 3


# -- the guard compares like with like -----------------------------------------------------------


class ShiftWorld:
    """Chunks in a memory store; users of topics A (easy to find: a query lies close to its
    chunk) and topics B (hard). Each chunk's users ask from one side of it, so NUDGE fitted on
    some of a chunk's queries helps the others."""

    def __init__(self, folder, *, n_chunks=300, dim=24, seed=0, per_a=10, per_b=4, topics=20):
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(30, dim))
        e = centers[rng.integers(0, 30, n_chunks)] + 0.3 * rng.normal(size=(n_chunks, dim))
        self.vectors = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
        self.ids = [f"c{i:03d}" for i in range(n_chunks)]
        self.a: list[tuple[str, np.ndarray, str, int]] = []
        self.b: list[tuple[str, np.ndarray, str, int]] = []
        for n, t in enumerate(rng.choice(n_chunks, 2 * topics, replace=False)):
            easy = n < topics
            side = rng.normal(size=dim)
            for j in range(per_a if easy else per_b):
                noise = side + 0.5 * rng.normal(size=dim)
                v = self.vectors[t] + (1.1 if easy else 1.8) * noise / np.sqrt(dim)
                v = (v / np.linalg.norm(v)).astype(np.float32)
                (self.a if easy else self.b).append((f"{n}:{j}", v, self.ids[t], j))
        records = {
            i: {"id": i, "vector": self.vectors[n].tolist(), "text": f"text of {i}"}
            for n, i in enumerate(self.ids)
        }
        queries = self.a + self.b
        self.state = NudgeState(
            MemoryAdapter(records, metric=Metric.COSINE),
            folder,
            embed_queries=LookupEmbedder(
                [q for q, *_ in queries], np.stack([q[1] for q in queries])
            ),
            get_texts=lambda ids: [records[i]["text"] if i in records else None for i in ids],
        )

    def traffic(self, queries) -> float:
        """Users search (k=5), served by the store's current vectors, and name the chunk they
        wanted; the share that found it."""
        current = self.state.get_vectors(self.ids)
        found = 0
        for text, v, target, _ in queries:
            top = [self.ids[r] for r in search(v[None, :], current, 5, Metric.COSINE)[0]]
            tid = self.state.record_search(text, v, 5, None, top, [0.0] * 5)
            self.state.record_feedback(tid, relevant_ids=[target])
            found += target in top
        return found / len(queries)


class PushedAwayEngine(NudgeFinetuneEngine):
    """Fits honestly (its report proves a gain), then moves every chunk it changed the other
    way: from its base, away from the queries that wanted it (a truly harmful version)."""

    def finetune(self):
        report = super().finetune()
        base = self.state.base_vectors(list(report.vectors()))
        bad = 2.0 * base - report._vectors
        report._vectors = (bad / np.linalg.norm(bad, axis=1, keepdims=True)).astype(np.float32)
        return report


@pytest.fixture
def shift(tmp_path):
    w = ShiftWorld(tmp_path / "state")
    yield w
    w.state.close()


def shift_watcher(shift, engine_cls=NudgeFinetuneEngine, corpus="auto") -> Watcher:
    clock = FakeClock()
    return Watcher(
        shift.state,
        engine=engine_cls(shift.state, progress=False, corpus=corpus),
        min_new_labels=50,
        min_guard_searches=30,
        settle_searches=60,
        clock=clock,
        sleep=clock.sleep,
    )


def test_a_version_is_kept_when_traffic_moves_to_topics_it_neither_helps_nor_hurts(shift):
    """Old code compared topic A's searches before the apply with topic B's after it and rolled
    the version back ("live signal 0.85 -> 0.45"); ranked under both vectors, B's searches
    find the same chunks."""
    fit = [q for q in shift.a if q[3] < 6]
    before = shift.traffic(fit)
    w = shift_watcher(shift)
    (applied,) = w.run_round()
    assert applied["decision"] == "apply" and applied["version"] == 1

    after = shift.traffic(shift.b)  # the traffic moves to topics B, served by version 1
    assert before - after > 0.25  # what an unpaired comparison of the two populations sees
    w.min_new_labels = 1000  # this round only guards
    guard, _ = w.run_round()
    sig = guard["signal"]
    assert guard["decision"] == "keep" and guard["version"] == 1, guard
    assert sig["n"] == 60 and sig["p_value"] > 0.025
    assert abs(sig["new_hits"] - sig["base_hits"]) <= 2
    assert shift.state.current_version == 1


@pytest.mark.parametrize("corpus", ["memory", "store"])
def test_a_version_that_pushes_the_right_chunks_away_is_rolled_back(shift, corpus):
    """Ranked against the base matrix in memory, or the store's own search (large stores)."""
    fit = [q for q in shift.a if q[3] < 6]
    shift.traffic(fit)
    served = shift.state.get_vectors(shift.ids)
    w = shift_watcher(shift, PushedAwayEngine, corpus)
    (applied,) = w.run_round()
    assert applied["decision"] == "apply"

    shift.traffic([q for q in shift.a if q[3] >= 6][:20])  # too few to judge yet
    (wait,) = w.run_round()
    assert wait["decision"] == "guard_wait" and wait["signal"]["n"] == 20
    shift.traffic([q for q in shift.a if q[3] >= 6][20:])
    (rollback,) = w.run_round()
    sig = rollback["signal"]
    assert rollback["decision"] == "rollback" and rollback["to_version"] == 0, rollback
    assert sig["losses"] > sig["wins"] and sig["p_value"] <= 0.025
    assert shift.state.current_version == 0
    np.testing.assert_array_equal(shift.state.get_vectors(shift.ids), served)


# -- the loop goes on when Postgres drops its connections ----------------------------------------


def terminate_backends(pg, db: str) -> int:
    """``pg_terminate_backend`` on every session of database ``db`` (a restart, a failover);
    how many were cut."""
    import psycopg

    with psycopg.connect(pg.url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        ).fetchone()
    return int(row[0]) if row else 0


class CutMidwayEngine(NudgeFinetuneEngine):
    """Cuts every connection of the state while it fine-tunes (after reading the labels)."""

    cut = None

    def collect_labels(self, *args, **kwargs):
        out = super().collect_labels(*args, **kwargs)
        if self.cut is not None:
            self.cut()
        return out


@pytest.mark.integration
def test_rounds_go_on_after_postgres_backends_are_terminated(pg, db, tmp_path):
    """Old code: the round after a reset raised AdminShutdown out of run_round (and the next
    ones met the other stale connections: the trace log's, the label cache's)."""
    world = ShiftWorld(f"{pg.url(db)}&schema=nudge_watch")
    clock = FakeClock()
    engine = CutMidwayEngine(world.state, progress=False)
    w = Watcher(
        world.state,
        engine=engine,
        min_new_labels=50,
        min_guard_searches=30,
        settle_searches=60,
        log_path=tmp_path / WATCH_LOG,
        clock=clock,
        sleep=clock.sleep,
    )
    world.traffic([q for q in world.a if q[3] < 6])
    cut = [terminate_backends(pg, db)]
    (applied,) = w.run_round()  # finetune and apply, every connection new
    assert applied["decision"] == "apply", applied

    cut.append(terminate_backends(pg, db))
    world.traffic([q for q in world.a if q[3] >= 6])  # searches and feedback go on
    cut.append(terminate_backends(pg, db))
    (guard,) = w.run_round()[:1]
    assert guard["decision"] == "keep", guard

    world.traffic(world.b)
    engine.cut = lambda: cut.append(terminate_backends(pg, db))
    decisions = w.run_round()  # backends cut in the middle of finetune()
    engine.cut = None
    assert decisions[-1]["decision"] in ("apply", "not_proven"), decisions
    cut.append(terminate_backends(pg, db))
    assert engine.cache.get("no such question") is None  # the label cache reconnects too
    rounds = w.run(rounds=2)
    assert all(r["decision"] != "error" for r in w.history()), w.history()
    assert all(n > 0 for n in cut), cut  # each reset did cut the state's sessions
    assert rounds[-1]["decision"] in ("skip", "guard_wait", "keep")
    world.state.close()
    engine.cache.close()


@pytest.fixture
def own_pg():
    """A server of its own, to stop and start again."""
    from nudge_rag.testing.pgserver import start_pgserver

    server = start_pgserver()
    server.create_database("app")
    yield server
    server.stop()


@pytest.mark.integration
def test_a_round_while_postgres_is_down_is_logged_and_the_loop_goes_on(own_pg, tmp_path):
    world = ShiftWorld(f"{own_pg.url('app')}&schema=nudge_watch")
    clock = FakeClock()
    w = Watcher(
        world.state,
        engine=NudgeFinetuneEngine(world.state, progress=False),
        min_new_labels=50,
        log_path=tmp_path / WATCH_LOG,
        clock=clock,
        sleep=clock.sleep,
    )
    world.traffic([q for q in world.a if q[3] < 6])
    own_pg.pause()
    try:
        (down,) = w.run(rounds=1)  # returns: the error is the round's decision
    finally:
        own_pg.resume()
    assert down["decision"] == "error" and "terminating connection" in down["reason"], down
    (back,) = w.run_round()
    assert back["decision"] == "apply", back
    assert [r["decision"] for r in w.history()] == ["error", "apply"]
    world.state.close()
    w.engine.cache.close()


@pytest.mark.integration
def test_rounds_go_on_after_a_reset_with_a_pgvector_store_and_state(pg, db, tmp_path, world):
    """The setup of the report: LangChain PGVector and the state in one database. Old code: the
    adapter's own connection failed the round after each reset (an ``error`` round each)."""
    from langchain_postgres import PGVector
    from langchain_postgres.vectorstores import DistanceStrategy

    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.langchain.embeddings import LookupEmbeddings

    inner = PGVector(
        LookupEmbeddings(world.text_vectors()),
        connection=pg.langchain_url(db),
        collection_name="world",
        distance_strategy=DistanceStrategy.COSINE,
        use_jsonb=True,
        engine_args={"pool_pre_ping": True},  # the app's own pool: its setting, not ours
    )
    store = NudgedVectorStore(inner, state=f"{pg.url(db)}&schema=nudge_world")
    store.add_texts([world.records[i]["text"] for i in world.ids], ids=world.ids)
    first, later = halves(world)
    traffic(store, first)
    clock = FakeClock()
    w = Watcher(
        store,
        engine=NudgeFinetuneEngine(store, progress=False),
        min_new_labels=50,
        min_guard_searches=30,
        settle_searches=60,
        log_path=tmp_path / WATCH_LOG,
        clock=clock,
        sleep=clock.sleep,
    )
    assert terminate_backends(pg, db) > 0
    (applied,) = w.run_round()
    assert applied["decision"] == "apply", applied
    traffic(store, later)
    assert terminate_backends(pg, db) > 0
    guard = w.run_round()[0]
    assert guard["decision"] == "keep", guard
    assert [r["decision"] for r in w.history()][:2] == ["apply", "keep"]
    assert all(r["decision"] != "error" for r in w.history()), w.history()
    store.close()
    w.engine.cache.close()
