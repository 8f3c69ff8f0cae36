"""A comment is never read as the answer: feedback ``text`` is the answer the support judge reads
only when ``record_answer_feedback`` stored it; an imported tool's comment (or a
``record_feedback(text=...)``) stays a comment (before: the judge graded chunks against it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from nudge_rag.labeling.feedback import answer_ratings
from nudge_rag.state.records import FeedbackRecord, TraceRecord
from nudge_rag.state.state import NudgeState
from nudge_rag.state.traces.log import TraceLog
from nudge_rag.stores.memory import MemoryAdapter


def _state(tmp_path: Path) -> NudgeState:
    rng = np.random.default_rng(0)
    records = {d: {"id": d, "vector": rng.normal(size=8).tolist(), "text": d} for d in "abc"}
    return NudgeState(MemoryAdapter(records), tmp_path / "state")


def test_an_imported_comment_is_not_the_answer(tmp_path):
    state = _state(tmp_path)
    comment = FeedbackRecord(rating=1.0, text="thanks, that helped", time=1.7e9 + 5)
    rec = TraceRecord(
        query="q", embedding=np.ones(8), result_ids=["a", "b"], time=1.7e9,
        external_id="run-1", source="langsmith", feedback=[comment],
    )  # fmt: skip
    assert state.import_traces([rec]).feedback == 1
    (trace,) = state.traces()
    (fb,) = state.feedback(trace.id)
    assert fb.text == "thanks, that helped" and not fb.is_answer  # kept, as a comment
    rated = answer_ratings(state.feedback())
    assert rated[trace.id].positive and rated[trace.id].answer is None
    state.close()


def test_a_rated_answer_is_the_answer_and_a_live_comment_is_not(tmp_path):
    state = _state(tmp_path)
    t1 = state.trace_log.record(
        query="q1", embedding=np.ones(8), k=2, result_ids=["a", "b"], scores=[0.9, 0.8]
    )
    t2 = state.trace_log.record(
        query="q2", embedding=np.ones(8), k=2, result_ids=["a", "c"], scores=[0.9, 0.8]
    )
    state.record_answer_feedback(t1, 1.0, answer="It is a.")
    state.record_feedback(t2, rating=1.0, text="my comment")
    rated = answer_ratings(state.feedback())
    assert rated[t1].answer == "It is a." and rated[t2].answer is None
    state.close()


def test_an_older_log_keeps_its_answers_and_not_its_imported_comments(tmp_path):
    path = tmp_path / "traces.sqlite"
    with TraceLog(path) as log:
        live = log.record(query="live", embedding=np.ones(4), k=1, result_ids=["a"], scores=[0.5])
        log.record_feedback(live, rating=1.0, text="the answer")
        log.import_rows(
            [("langsmith", "run-1", 1.7e9, "old", np.ones(4, np.float32).tobytes(), 4, 1, None,
              '["a"]', "[0.5]", [(1.7e9, [], [], 1.0, "a comment")])]
        )  # fmt: skip
    conn = sqlite3.connect(path)  # as schema version 2 left it: no is_answer column
    conn.execute("ALTER TABLE feedback DROP COLUMN is_answer")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with TraceLog(path) as log:
        by_query = {t.query: t.id for t in log.traces()}
        rated = answer_ratings(log.feedback())
    assert rated[by_query["live"]].answer == "the answer"
    assert rated[by_query["old"]].answer is None
