"""The trace log: append, read back, feedback, privacy, retention, export, concurrency."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.errors import BadInputError, NudgeError, UnknownIdError
from nudge_rag.state.state import NudgeState
from nudge_rag.state.traces.log import Feedback, Trace, TraceLog
from nudge_rag.stores.memory import MemoryAdapter


@pytest.fixture
def log(tmp_path):
    lg = TraceLog(tmp_path / "s" / "traces.sqlite")
    yield lg
    lg.close()


def _rec(log: TraceLog, q: str = "what causes rain?", **kw) -> str:
    args = {
        "query": q,
        "embedding": np.arange(4, dtype=np.float32) / 7,
        "k": 2,
        "result_ids": ["a", "b"],
        "scores": [0.9, 0.5],
    }
    args.update(kw)
    return log.record(**args)


def test_record_round_trip(log):
    emb = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    tid = log.record(
        query="q1", embedding=emb, k=3, filter={"lang": "en"}, result_ids=["x", "y"], scores=[1, 2]
    )
    (t,) = log.traces()
    assert isinstance(t, Trace)
    assert t.id == tid
    assert t.query == "q1"
    assert t.embedding.dtype == np.float32
    assert np.array_equal(t.embedding, emb)
    assert (t.k, t.filter, t.result_ids, t.scores) == (3, {"lang": "en"}, ["x", "y"], [1.0, 2.0])
    assert abs(t.time - time.time()) < 60
    assert len(log) == 1


def test_trace_ids_are_unique_and_ordered(log):
    ids = [_rec(log, q=f"q{i}") for i in range(50)]
    assert len(set(ids)) == 50
    assert [t.id for t in log.traces()] == ids


def test_non_json_filter_is_kept_as_repr(log):
    _rec(log, filter=lambda doc: True)
    (t,) = log.traces()
    assert set(t.filter) == {"repr"} and "lambda" in t.filter["repr"]


def test_scores_must_match_results(log):
    with pytest.raises(BadInputError, match=r"one score per result id \(2\), found 1"):
        _rec(log, scores=[0.1])


def test_feedback(log):
    tid = _rec(log)
    log.record_feedback(tid, relevant_ids=["c"], irrelevant_ids=["a"], rating=0.5, text="meh")
    log.record_feedback(tid, rating=1)
    fb = log.feedback(tid)
    assert fb[0] == Feedback(tid, fb[0].time, ["c"], ["a"], 0.5, "meh")
    assert fb[1].rating == 1.0 and fb[1].relevant_ids == []
    assert log.feedback("other") == []
    assert len(log.feedback()) == 2


def test_feedback_on_unknown_trace(log):
    with pytest.raises(UnknownIdError, match="trace_id: no trace 'nope'"):
        log.record_feedback("nope", relevant_ids=["a"])


def test_feedback_needs_content_and_consistency(log):
    tid = _rec(log)
    with pytest.raises(BadInputError, match="found no relevant_ids"):
        log.record_feedback(tid)
    with pytest.raises(BadInputError, match="both hold"):
        log.record_feedback(tid, relevant_ids=["a"], irrelevant_ids=["a"])
    with pytest.raises(BadInputError, match="rating"):
        log.record_feedback(tid, rating=float("nan"))


def test_database_is_owner_only(tmp_path):
    lg = TraceLog(tmp_path / "new" / "t.sqlite")
    _rec(lg)
    mode = stat.S_IMODE((tmp_path / "new" / "t.sqlite").stat().st_mode)
    lg.close()
    assert mode == 0o600
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_purge_and_retention(tmp_path):
    path = tmp_path / "t.sqlite"
    lg = TraceLog(path)
    old = _rec(lg, q="old")
    lg.record_feedback(old, relevant_ids=["a"])
    # age the first trace by 10 days
    lg.flush()
    lg._conn.execute("UPDATE traces SET time = time - 10 * 86400 WHERE id = ?", (old,))
    new = _rec(lg, q="new")
    lg.close()
    lg = TraceLog(path, retention_days=5)  # purges on open
    assert [t.id for t in lg.traces()] == [new]
    assert lg.feedback() == []
    assert lg.purge(0) == 1
    assert len(lg) == 0
    lg.close()
    with pytest.raises(BadInputError, match="retention_days"):
        TraceLog(path, retention_days=0)


def test_since(log):
    a = _rec(log)
    log.flush()
    log._conn.execute("UPDATE traces SET time = 100 WHERE id = ?", (a,))
    b = _rec(log)
    assert [t.id for t in log.traces(since=1000)] == [b]


def test_export_jsonl(log, tmp_path):
    t1 = _rec(log, q="q1")
    _rec(log, q="q2")
    log.record_feedback(t1, relevant_ids=["z"], rating=1.0)
    out = tmp_path / "exp.jsonl"
    assert log.export_jsonl(out) == 2
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert [r["query"] for r in lines] == ["q1", "q2"]
    assert lines[0]["feedback"][0]["relevant_ids"] == ["z"]
    assert lines[1]["feedback"] == []
    assert np.allclose(lines[0]["embedding"], np.arange(4) / 7)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_stats(log):
    t = _rec(log)
    _rec(log)
    log.record_feedback(t, rating=1)
    s = log.stats()
    assert (s["traces"], s["feedback"], s["traces_with_feedback"]) == (2, 1, 1)
    assert s["first_time"] <= s["last_time"]


def test_closed_log_raises(tmp_path):
    lg = TraceLog(tmp_path / "t.sqlite")
    lg.close()
    lg.close()
    with pytest.raises(NudgeError, match="closed"):
        _rec(lg)


def test_four_threads_lose_nothing(tmp_path):
    """4 threads record at once: every trace is written once, each thread's in its order.

    The rate (issue target: 5,000 traces/s) is measured by ``benchmarks/bench_traces.py``.
    """
    lg = TraceLog(tmp_path / "t.sqlite")
    emb = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    ids = [f"doc-{i}" for i in range(10)]
    scores = [float(i) for i in range(10)]
    per_thread = 2500
    written: dict[int, list[str]] = {}

    def work(t: int):
        written[t] = [
            lg.record(query=f"t{t} q{n}", embedding=emb, k=10, result_ids=ids, scores=scores)
            for n in range(per_thread)
        ]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lg.flush()
    got = [t.id for t in lg.traces()]
    assert len(got) == len(set(got)) == 4 * per_thread
    pos = {tid: n for n, tid in enumerate(got)}
    for t in range(4):
        order = [pos[tid] for tid in written[t]]
        assert order == sorted(order)
    lg.close()


def test_failed_write_is_kept_and_retried(tmp_path):
    """A batch SQLite refuses stays queued: flush names the failure, a later flush writes it."""
    lg = TraceLog(tmp_path / "t.sqlite")
    with lg._lock:
        lg._conn.execute("PRAGMA query_only=ON")  # every write now fails inside SQLite
    tids = [_rec(lg, q=f"q{i}") for i in range(5)]
    with pytest.raises(NudgeError, match=r"failed: .*readonly.*5 traces are queued"):
        lg.flush()
    with lg._lock:
        lg._conn.execute("PRAGMA query_only=OFF")
    lg.flush()
    assert [t.id for t in lg.traces()] == tids
    lg.close()


def test_embedding_lists_and_arrays_are_stored_alike(log):
    vec = np.array([0.1, -2.5, 3e38, 7.0], dtype=np.float32)
    a = _rec(log, embedding=vec)
    b = _rec(log, embedding=[float(x) for x in vec])
    got = {t.id: t.embedding for t in log.traces()}
    np.testing.assert_array_equal(got[a], vec)
    np.testing.assert_array_equal(got[b], vec)


def test_query_must_be_text(log):
    with pytest.raises(BadInputError, match="query: expected the query text"):
        _rec(log, q=b"bytes")  # type: ignore[arg-type]


def test_close_warns_about_traces_it_could_not_write(tmp_path):
    lg = TraceLog(tmp_path / "t.sqlite")
    _rec(lg)
    lg.flush()
    with lg._lock:
        lg._conn.execute("PRAGMA query_only=ON")
    _rec(lg)
    with pytest.warns(RuntimeWarning, match="1 traces could not be written"):
        lg.close()
    again = TraceLog(tmp_path / "t.sqlite")
    assert len(again) == 1  # the first one, intact
    again.close()


def test_queued_traces_are_written_on_close(tmp_path):
    path = tmp_path / "t.sqlite"
    lg = TraceLog(path)
    ids = [_rec(lg, q=f"q{i}") for i in range(300)]
    lg.close()
    again = TraceLog(path)
    assert [t.id for t in again.traces()] == ids
    again.close()


# -- bad rows never cost good ones (issue 11, item 2) ---------------------------------------------


def test_poisoned_rows_never_cost_the_good_ones(tmp_path):
    """205 good traces and 5 poisoned ones in the same batches: every good one is written.

    A lone surrogate is stored as U+FFFD; k = 2**63 and NaN/inf embeddings are quarantined at
    record; a row SQLite itself refuses (a trigger here) is quarantined by the writer alone.
    """
    path = tmp_path / "t.sqlite"
    lg = TraceLog(path)
    with lg._lock:
        lg._conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON traces WHEN NEW.query = 'poison'"
            " BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        )
    good: list[str] = []
    refused = []
    with pytest.warns(RuntimeWarning, match="could not be stored") as caught:
        for i in range(205):
            good.append(_rec(lg, q=f"q{i}"))
            if i == 10:
                good.append(_rec(lg, q="caf\ud800"))
            if i == 20:
                refused.append(_rec(lg, k=2**63))
            if i == 30:
                refused.append(_rec(lg, embedding=[float("nan")] * 4))
            if i == 40:
                refused.append(_rec(lg, embedding=np.array([1.0, np.inf, 0.0, 0.0])))
            if i == 50:
                poison = _rec(lg, q="poison")
        lg.flush()  # the writer's quarantine is warned about here, but once in all
    assert len([w for w in caught if "could not be stored" in str(w.message)]) == 1
    assert refused == [None, None, None]
    assert poison is not None
    lg.record_feedback(good[0], relevant_ids=["a"], text="still works")
    assert [t.id for t in lg.traces()] == good
    s = lg.stats()
    assert (s["traces"], s["quarantined"], s["feedback"]) == (206, 4, 1)
    lg.close()

    again = TraceLog(path)
    assert [t.id for t in again.traces()] == good  # all 206 survived close()
    assert again.traces()[11].query == "caf\ufffd"
    reasons = [q["reason"] for q in again.quarantined()]
    assert reasons[0].startswith("k: expected an integer in 1..2**63-1")
    assert "non-finite embedding (4 NaN" in reasons[1]
    assert "non-finite embedding (1 NaN" in reasons[2]
    assert reasons[3] == "SQLite refused the row: IntegrityError: poisoned row"
    assert again.quarantined()[3]["trace_id"] == poison
    assert "'poison'" in again.quarantined()[3]["row"]
    assert again.stats()["quarantined"] == 4
    again.close()


@pytest.mark.parametrize("k", [0, -1, 2**63, 1.5, "4", True, None], ids=lambda k: f"k={k!r}"[:16])
def test_a_k_sqlite_cannot_hold_is_refused_not_raised(log, k):
    with pytest.warns(RuntimeWarning, match=r"k: expected an integer in 1\.\.2\*\*63-1"):
        assert _rec(log, k=k) is None
    assert len(log) == 0 and log.stats()["quarantined"] == 1
    assert _rec(log, k=2**63 - 1) is not None
    assert _rec(log, k=np.int64(7)) is not None


def test_embeddings_that_are_not_finite_in_float32_are_refused(log):
    """1e300 (beyond float32), NaN, inf and an empty vector: the search is not failed, the
    trace is quarantined, counted and warned about once."""
    with pytest.warns(RuntimeWarning, match="non-finite embedding") as caught:
        assert _rec(log, embedding=[1e300, 0.0, 1.0, 2.0]) is None
        assert _rec(log, embedding=np.array([np.nan, 0, 0, 0], dtype=np.float64)) is None
        assert _rec(log, embedding=[]) is None
    assert len(caught) == 1
    assert log.stats()["quarantined"] == 3 and len(log) == 0
    assert "empty embedding" in log.quarantined()[2]["reason"]


# -- reading in pages (item 8) -------------------------------------------------------------------


def test_iter_traces_pages_without_embeddings(log):
    ids = [_rec(log, q=f"q{i}") for i in range(25)]
    assert [t.id for t in log.iter_traces(page_rows=4)] == ids
    statements: list[str] = []
    log._conn.set_trace_callback(statements.append)
    light = list(log.iter_traces(with_embeddings=False, page_rows=4))
    log._conn.set_trace_callback(None)
    assert [t.id for t in light] == ids
    assert all(t.embedding.size == 0 and t.result_ids == ["a", "b"] for t in light)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 8  # 7 pages of at most 4 and the empty one that ends the walk
    assert not any("embedding" in s for s in selects)
    some = list(log.iter_traces(ids=[ids[3], "nope", ids[1]]))
    assert [t.id for t in some] == [ids[1], ids[3]]
    np.testing.assert_array_equal(some[0].embedding, np.arange(4, dtype=np.float32) / 7)
    with pytest.raises(BadInputError, match="ids: expected a list of trace ids"):
        list(log.iter_traces(ids=ids[0]))


def test_delete_traces(log):
    a, b, c = (_rec(log, q=f"q{i}") for i in range(3))
    log.record_feedback(a, relevant_ids=["x"])
    log.record_feedback(b, rating=1)
    assert log.delete_traces([a, b, "unknown"]) == 2
    assert [t.id for t in log.traces()] == [c]
    assert log.feedback() == []
    assert log.delete_traces([]) == 0
    with pytest.raises(BadInputError, match="ids: expected a list of trace ids"):
        log.delete_traces(c)


# -- feedback, export, purge, read-only, damaged files (item 11) ---------------------------------


def test_an_imported_row_with_an_unknown_provenance_costs_only_itself(log):
    """A bad-input error while importing (``BadInputError``, a ``ValueError``) is one refused
    row, like a value the database refuses, whatever ``NudgeError`` derives from."""
    blob = np.ones(4, np.float32).tobytes()

    def row(ext: str, *provenance: str) -> tuple:
        feedback = [(6.0, ["a"], [], None, None, *provenance)]
        return ("jsonl", ext, 5.0, "q", blob, 4, 3, None, ["a"], [0.5], feedback)

    done = log.import_rows([row("1"), row("2", "robot"), row("3", "model")])
    assert [s for _, s, _ in done] == ["new", "refused", "new"]
    assert "BadInputError: provenance: found 'robot'" in done[1][0]
    assert [t.external_id for t in log.traces()] == ["1", "3"]


def test_feedback_text_must_be_text(log):
    tid = _rec(log)
    with pytest.raises(
        BadInputError, match=r"text: expected the feedback text \(str\) or None, found bytes"
    ):
        log.record_feedback(tid, text=b"great")  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="relevant_ids: expected a list of chunk ids"):
        log.record_feedback(tid, relevant_ids="abc")
    log.record_feedback(tid, text="caf\udc80")
    assert log.feedback(tid)[0].text == "caf\ufffd"


def _strict(line: str) -> dict:
    def refuse(name: str) -> None:
        msg = f"non-standard JSON constant {name}"
        raise ValueError(msg)

    return json.loads(line, parse_constant=refuse)


def test_export_is_strict_json(log, tmp_path):
    """MMR's NaN scores export as null, lone surrogates as U+FFFD: every line is strict JSON."""
    mmr = _rec(log, scores=[float("nan"), float("nan")], filter={"lang": "en"})
    log.record_feedback(mmr, relevant_ids=["a"], text="caf\udc80")
    _rec(log, q="caf\ud800")
    (t,) = [t for t in log.traces() if t.id == mmr]
    assert all(np.isnan(t.scores))  # NaN in Python, null in the database
    out = tmp_path / "exp.jsonl"
    assert log.export_jsonl(out) == 2
    lines = [_strict(s) for s in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["scores"] == [None, None]
    assert lines[0]["feedback"][0]["text"] == "caf\ufffd"
    assert lines[1]["query"] == "caf\ufffd"


def test_export_replaces_an_existing_file_owner_only(log, tmp_path):
    _rec(log)
    out = tmp_path / "exp.jsonl"
    out.write_text("an older export\n" * 10)
    out.chmod(0o644)
    assert log.export_jsonl(out) == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "older" not in out.read_text() and len(out.read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.jsonl", "s"]  # no temp file


def test_export_of_an_old_log_with_nan_is_strict_json(tmp_path):
    """A log written before non-finite values were refused still exports as valid JSON."""
    path = tmp_path / "t.sqlite"
    lg = TraceLog(path)
    tid = _rec(lg)
    lg.flush()
    with lg._lock:
        lg._conn.execute(
            "UPDATE traces SET embedding = ?, scores = '[NaN, Infinity]', filter = '{\"x\": NaN}'"
            " WHERE id = ?",
            (np.array([np.nan, 1, np.inf, 0], dtype=np.float32).tobytes(), tid),
        )
    lg.export_jsonl(tmp_path / "out.jsonl")
    (rec,) = [_strict(s) for s in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rec["embedding"] == [None, 1.0, None, 0.0]
    assert rec["scores"] == [None, None] and rec["filter"] == {"x": None}
    lg.close()


def _file_bytes(path) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm"):
        p = path.parent / (path.name + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


@pytest.mark.parametrize("how", ["purge", "delete_traces"])
def test_deleted_text_is_gone_from_the_file(tmp_path, how):
    """Purged or deleted queries and feedback text are overwritten (secure_delete), WAL too."""
    path = tmp_path / "t.sqlite"
    lg = TraceLog(path)
    gone = _rec(lg, q="zebra-secret-4242")
    lg.record_feedback(gone, rating=1, text="pelican-note-9191")
    _rec(lg, q="keep-this-query")
    lg.flush()
    assert b"zebra-secret-4242" in _file_bytes(path)
    if how == "purge":
        with lg._lock:
            lg._conn.execute("UPDATE traces SET time = time - 10 * 86400 WHERE id = ?", (gone,))
        assert lg.purge(5) == 1
    else:
        assert lg.delete_traces([gone]) == 1
    raw = _file_bytes(path)
    assert b"zebra-secret-4242" not in raw and b"pelican-note-9191" not in raw
    assert [t.query for t in lg.traces()] == ["keep-this-query"]
    lg.close()
    raw = _file_bytes(path)
    assert b"zebra-secret-4242" not in raw and b"keep-this-query" in raw


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_read_only_log_reads_and_never_writes(tmp_path):
    folder = tmp_path / "state"
    lg = TraceLog(folder / "traces.sqlite")
    lg.score_kind = "distance"
    tid = _rec(lg)
    lg.record_feedback(tid, relevant_ids=["a"])
    lg.close()
    before = _snapshot(folder)

    ro = TraceLog(folder / "traces.sqlite", read_only=True, retention_days=1)
    assert [t.id for t in ro.traces()] == [tid] and len(ro) == 1
    assert ro.feedback()[0].relevant_ids == ["a"]
    assert ro.stats()["traces"] == 1 and ro.score_kind == "distance"
    ro.score_kind = "distance"  # unchanged: nothing to write
    assert ro.export_jsonl(tmp_path / "out.jsonl") == 1
    for write in (
        lambda: _rec(ro),
        lambda: ro.record_feedback(tid, rating=1),
        lambda: ro.purge(0),
        lambda: ro.delete_traces([tid]),
        lambda: setattr(ro, "score_kind", "similarity"),
    ):
        with pytest.raises(NudgeError, match="was opened read_only"):
            write()
    ro.close()
    assert _snapshot(folder) == before  # no -wal, no -shm, not a byte changed

    with pytest.raises(NudgeError, match="no database here"):
        TraceLog(tmp_path / "none" / "traces.sqlite", read_only=True)
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_log_on_a_read_only_folder(tmp_path):
    folder = tmp_path / "state"
    lg = TraceLog(folder / "traces.sqlite")
    _rec(lg)
    lg.close()
    folder.chmod(0o500)
    try:
        with pytest.raises(NudgeError, match="cannot use the trace database"):
            TraceLog(folder / "other.sqlite")
        ro = TraceLog(folder / "traces.sqlite", read_only=True)
        assert ro.stats()["traces"] == 1
        ro.close()
    finally:
        folder.chmod(0o700)


_RO_CHILD = """
import sys
from nudge_rag.errors import NudgeError
from nudge_rag.state.traces.log import TraceLog
folder = sys.argv[1]
try:
    TraceLog(folder + "/traces.sqlite")
except NudgeError as e:
    assert "cannot use the trace database" in str(e) and "read_only=True" in str(e), e
else:
    raise AssertionError("opened read-write on a read-only file system")
ro = TraceLog(folder + "/traces.sqlite", read_only=True)
print(ro.stats()["traces"], len(ro.traces()))
ro.close()
"""


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_read_only_log_on_a_read_only_file_system(tmp_path):
    """The state folder on a read-only mount (root ignores folder permissions, not mounts)."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    lg = TraceLog(src / "traces.sqlite")
    _rec(lg)
    lg.close()
    mnt.mkdir()
    script = (
        f"mount --bind {src} {mnt} && mount -o remount,bind,ro {mnt} || exit 77; "
        f'exec "$0" -c "$1" {mnt}'
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run(
        ["unshare", "-m", "bash", "-c", script, sys.executable, _RO_CHILD],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if run.returncode == 77 or "unshare:" in run.stderr:
        pytest.skip(f"no private read-only mount here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "1"]
    assert sorted(p.name for p in src.iterdir()) == ["traces.sqlite"]


def _open_and_read(path, **kw) -> None:
    lg = TraceLog(path, **kw)
    try:
        lg.traces()
        lg.stats()
    finally:
        lg.close()


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_garbage_or_cut_short_database_is_one_clear_error(tmp_path, read_only):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database\n" * 200)
    cut = tmp_path / "cut.sqlite"
    lg = TraceLog(cut)
    emb = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    for i in range(400):
        _rec(lg, q=f"q{i}", embedding=emb)
    lg.close()
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    for path in (garbage, cut):
        with pytest.raises(NudgeError) as err:
            _open_and_read(path, **({"read_only": True} if read_only else {}))
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg
        assert "not a readable trace database" in msg and "Move it aside" in msg


# -- label time: bad traces are skipped by id, traces are streamed (items 6 and 8) ---------------

DIM = 8


class _World:
    """40 chunks in an in-memory store; 3 searches with feedback per chunk, 200 without."""

    def __init__(self, tmp_path, *, unlabeled: int = 200):
        rng = np.random.default_rng(0)
        vecs = rng.normal(size=(40, DIM))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        self.ids = [f"c{i:02d}" for i in range(40)]
        records = {
            i: {"id": i, "vector": v.tolist(), "text": i}
            for i, v in zip(self.ids, vecs, strict=True)
        }
        self.state = NudgeState(MemoryAdapter(records), tmp_path / "state")
        self.log = self.state.trace_log
        self.labeled: list[str] = []
        for n, cid in enumerate(self.ids):
            for j in range(3):
                q = vecs[n] + 0.4 * rng.normal(size=DIM) / np.sqrt(DIM)
                self.labeled.append(self.search(f"question {j} on {cid}", q, cid))
        self.unlabeled = [
            self.search(f"no feedback {i}", rng.normal(size=DIM), None) for i in range(unlabeled)
        ]

    def search(self, text: str, vec, relevant: str | None) -> str:
        tid = self.state.record_search(text, vec, 4, None, self.ids[:4], [0.5] * 4)
        if relevant is not None:
            self.state.record_feedback(tid, relevant_ids=[relevant])
        return tid

    def finetune(self):
        return NudgeFinetuneEngine(self.state, progress=False).finetune()


def test_bad_query_vectors_are_skipped_by_trace_id(tmp_path):
    """A zero, a wrong-dimension and a NaN query vector with feedback: finetune() skips and
    names them (it used to stop at "train_queries row N has zero norm")."""
    w = _World(tmp_path, unlabeled=0)
    zero = w.search("zero query", np.zeros(DIM), "c01")
    short = w.search("short query", np.ones(DIM - 2), "c02")
    nan = w.search("old nan query", np.ones(DIM), "c03")
    ok_then_bad = [w.search("asked twice", np.ones(DIM), "c04")]
    ok_then_bad.append(w.search("asked twice", np.zeros(DIM), None))
    w.log.flush()
    old = sqlite3.connect(w.log.path)  # a NaN written before record() refused it
    with old:
        old.execute(
            "UPDATE traces SET embedding = ? WHERE id = ?",
            (np.full(DIM, np.nan, dtype=np.float32).tobytes(), nan),
        )
    old.close()

    report = w.finetune()
    assert report.labels["bad_traces"] == 4
    assert set(report.bad_traces) == {zero, short, nan, ok_then_bad[1]}
    assert report.bad_traces[zero] == "zero-norm embedding"
    assert report.bad_traces[short].startswith("wrong dimension (6, the store's vectors have 8)")
    assert report.bad_traces[nan].startswith("non-finite embedding (8 NaN")
    assert "skipped 4 traces whose query vector cannot label" in str(report)
    # "asked twice" falls back to its earlier, good trace; the three others are dropped
    assert report.labels["feedback"] == len(w.labeled) + 1
    assert json.loads(json.dumps(report.to_dict()))["bad_traces"] == report.bad_traces

    assert w.log.delete_traces(list(report.bad_traces)) == 4
    again = w.finetune()
    assert again.labels["bad_traces"] == 0 and again.bad_traces == {}
    assert again.labels["feedback"] == len(w.labeled) + 1
    w.state.close()


def test_label_collection_streams_and_reads_only_labeled_embeddings(tmp_path):
    """Traces are read in pages without embeddings; only the labeled queries' embeddings are
    read (by id), so memory does not grow with traces that carry no label."""
    w = _World(tmp_path, unlabeled=1200)
    statements: list[str] = []
    w.log._conn.set_trace_callback(statements.append)
    report = w.finetune()
    w.log._conn.set_trace_callback(None)
    assert report.labels["traces"] == len(w.labeled) + 1200
    assert report.labels["unlabeled_traces"] == 1200
    assert report.labels["feedback"] == len(w.labeled)
    reads = [s for s in statements if "FROM traces" in s and s.lstrip().startswith("SELECT")]
    with_emb = [s for s in reads if "embedding" in s]
    assert with_emb and all(" id IN (" in s for s in with_emb)
    loaded = " ".join(with_emb)
    assert not any(tid in loaded for tid in w.unlabeled)
    assert all(tid in loaded for tid in w.labeled)
    pages = [s for s in reads if "LIMIT" in s]
    assert len(pages) >= 2  # 1,320 traces: more than one page
    w.state.close()
