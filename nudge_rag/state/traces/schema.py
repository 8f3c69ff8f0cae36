"""The trace log's tables, their migrations, and what a row holds.

The SQL here is the same for SQLite and Postgres (``nudge_rag.state.db``). Values are checked and
converted here on their way in (texts, embeddings, filters, ``k``, provenance: shared with
``nudge_rag.state.records``) and out (:class:`Trace`, :class:`Feedback`).

Tables::

    traces(seq, id, time, query, embedding float32 blob, dim, k, filter json, result_ids json,
           scores json)   -- a non-finite score (MMR gives none) is stored as null
    feedback(seq, trace_id, time, relevant_ids json, irrelevant_ids json, rating, text,
             provenance)  -- 'human' (NULL: a row from before the column, read as human) or
                          'model' (agent citations, imported LLM-evaluator annotations)
    quarantine(seq, trace_id, time, reason, row)   -- traces that could not be stored; row is an
                          ASCII description without the embedding
    meta(key, value)   -- score_kind: whether the wrapped store's scores are similarities or
                          distances (set by the faces; exported with every trace)
"""

from __future__ import annotations

import json
import math
import operator
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError
from nudge_rag.state.db import Database, SQLiteDatabase

__all__ = [
    "FEEDBACK_PROVENANCES",
    "SCORE_KINDS",
    "Feedback",
    "Trace",
    "check_provenance",
    "clean_text",
    "embedding_blob",
    "embedding_problem",
    "filter_as_dict",
    "trace_database",
]

_SCHEMA = """
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
SCORE_KINDS = ("similarity", "distance")  # higher is better / lower is better
_IN_CHUNK = 500  # ids per "IN (...)" query (SQLite's variable limit is 999 on old builds)
_K_MAX = 2**63 - 1  # SQLite's INTEGER range
_ROW_TEXT_MAX = 4000  # characters of a quarantined row's description
_SURROGATE = re.compile("[\ud800-\udfff]")
# strict JSON (no NaN), built once: json.dumps(allow_nan=False) builds an encoder a call
_STRICT = json.JSONEncoder(allow_nan=False)
_NO_EMBEDDING = np.zeros(0, dtype=np.float32)
_NO_EMBEDDING.flags.writeable = False
_INSERT = (
    "INSERT INTO traces (id, time, query, embedding, dim, k, filter, result_ids, scores,"
    " external_id, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Imported traces carry their tool's id: (source, external_id), unique, so an import is
# idempotent. A live search keeps the run/span it ran in as external_id "<source>:<id>" with
# source NULL (several searches may share a span; NULLs never conflict in a unique index).
# Portable SQL (SQLite and Postgres), applied on open when the columns are missing.
_MIGRATION_EXTERNAL_IDS = [
    "ALTER TABLE traces ADD COLUMN external_id TEXT",
    "ALTER TABLE traces ADD COLUMN source TEXT",
    "CREATE UNIQUE INDEX IF NOT EXISTS traces_external ON traces(source, external_id)",
]
#: migration 3: which feedback rows hold, in ``text``, the answer their rating judges (set by
#: record_answer_feedback; a comment, e.g. an imported tool's, is never read as the answer).
#: Rows written before it: a rated text on a live trace was recorded as an answer.
_MIGRATION_ANSWERS = [
    "ALTER TABLE feedback ADD COLUMN is_answer INTEGER",
    "UPDATE feedback SET is_answer = 1 WHERE rating IS NOT NULL AND text IS NOT NULL AND "
    "trace_id IN (SELECT id FROM traces WHERE source IS NULL)",
]
_FEEDBACK_ORDER = (
    "trace_id",
    "time",
    "relevant_ids",
    "irrelevant_ids",
    "rating",
    "text",
    "is_answer",
    "provenance",
)
_LATER = {"is_answer", "provenance"}  # added by migrations 3 and 4
_FEEDBACK_COLUMNS = ", ".join(_FEEDBACK_ORDER)
_INSERT_QUARANTINE = "INSERT INTO quarantine (trace_id, time, reason, row) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class Trace:
    """One search: what was asked, with which embedding, and what came back.

    ``embedding`` is empty when read with ``with_embeddings=False``; a score the store did not
    give (MMR) is NaN.
    """

    id: str
    time: float
    query: str | None
    embedding: np.ndarray
    k: int
    filter: dict | None
    result_ids: list[str]
    scores: list[float]
    external_id: str | None = None  # imported: the tool's id; live: "<source>:<run/span id>"
    source: str | None = None  # imported: the id space (e.g. "langsmith"); live: None


@dataclass(frozen=True)
class Feedback:
    """A user's judgment of one trace's results (relevant ids need not be among them)."""

    trace_id: str
    time: float
    relevant_ids: list[str]
    irrelevant_ids: list[str]
    rating: float | None
    text: str | None
    #: ``text`` is the answer the rating judges (record_answer_feedback), not a comment
    is_answer: bool = False
    provenance: str = "human"  # "human" or "model" (nudge_rag.labeling.provenance)


FEEDBACK_PROVENANCES = ("human", "model")


def clean_text(text: str) -> str:
    """``text`` storable as UTF-8 text in SQLite and Postgres alike: each surrogate code point
    (broken JSON) and each NUL character (Postgres text cannot hold it) becomes U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def embedding_blob(embedding: np.ndarray | Sequence[float]) -> tuple[bytes, int]:
    """The embedding as native float32 bytes, and its length.

    A list of floats (what LangChain embedders return) is packed directly: a quarter of the
    time numpy takes to convert it, which matters on the search path. Values beyond float32
    become ``inf`` (which :func:`embedding_problem` then names).
    """
    if isinstance(embedding, list | tuple):
        try:
            return struct.pack(f"={len(embedding)}f", *embedding), len(embedding)
        except (struct.error, TypeError, OverflowError):  # nested, non-numeric, beyond float32
            pass
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
    return arr.tobytes(), arr.shape[0]


def embedding_problem(vec: np.ndarray, dim: int | None = None) -> str | None:
    """Why float32 ``vec`` cannot stand for a query (None if it can).

    Empty, a length other than ``dim``, a NaN or infinite value, or (with ``dim`` given, at
    label time) a zero norm. About 1.5 µs for 384 values: it runs on every search.
    """
    if vec.size == 0:
        return "empty embedding"
    if dim is not None and vec.shape[0] != dim:
        return f"wrong dimension ({vec.shape[0]}, the store's vectors have {dim})"
    finite = np.isfinite(vec)
    if not finite.all():
        return f"non-finite embedding ({vec.size - int(finite.sum())} NaN or inf values)"
    if dim is not None and not np.any(vec):
        return "zero-norm embedding"
    return None


def _k_or_none(k: Any) -> int | None:
    """``k`` as an int in SQLite's range and > 0, or None."""
    if isinstance(k, bool):
        return None
    try:
        n = operator.index(k)
    except TypeError:
        if not (isinstance(k, float) and k.is_integer()):
            return None
        n = int(k)
    return n if 0 < n <= _K_MAX else None


def filter_as_dict(filter: Any) -> dict | None:
    """A strict-JSON-safe dict for a store's filter (dicts as they are, objects by dump/repr)."""
    if filter is None:
        return None
    if isinstance(filter, dict):
        try:
            _STRICT.encode(filter)
            return filter
        except (TypeError, ValueError):
            return {"repr": clean_text(repr(filter))}
    dump = getattr(filter, "model_dump", None)
    if callable(dump):
        try:
            out = dump(mode="json", exclude_none=True)
            _STRICT.encode(out)
            return out
        except (TypeError, ValueError):
            pass
    return {"repr": clean_text(repr(filter))}


def _finite_or_none(x: Any) -> Any:
    """``x`` with every NaN or infinite float replaced by None (for strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    return x


def _strict_json(obj: Any) -> str:
    """``obj`` as strict JSON: a NaN or infinite number becomes null."""
    try:
        return _STRICT.encode(obj)
    except ValueError:
        return _STRICT.encode(_finite_or_none(obj))


def _db_row(r: tuple) -> tuple:
    """A queued row as SQLite parameters (the lists as JSON)."""
    return (*r[:7], json.dumps(r[7]), _strict_json(r[8]), *r[9:11])


def _describe(r: tuple) -> str:
    """A queued row described in ASCII, without its embedding (what the quarantine keeps)."""
    _, _, query, _, dim, k, flt, ids, scores = r[:9]
    text = ascii(
        {"query": query, "dim": dim, "k": k, "filter": flt, "result_ids": ids, "scores": scores}
    )
    return text[:_ROW_TEXT_MAX]


def _in(n: int) -> str:
    return ",".join("?" * n)


def _add_external_ids(db: Database, conn: Any) -> None:
    """Migration 2: the external id columns and their unique index (if not there yet)."""
    if "external_id" not in db.columns(conn, "traces"):
        for statement in _MIGRATION_EXTERNAL_IDS:
            conn.execute(statement)


def _mark_answers(db: Database, conn: Any) -> None:
    """Migration 3: the ``is_answer`` column of feedback (if not there yet)."""
    if "is_answer" not in db.columns(conn, "feedback"):
        for statement in _MIGRATION_ANSWERS:
            conn.execute(statement)


def _add_feedback_provenance(db: Database, conn: Any) -> None:
    """Migration 4: who made each feedback row (NULL in older rows: read as human)."""
    if "provenance" not in db.columns(conn, "feedback"):
        conn.execute("ALTER TABLE feedback ADD COLUMN provenance TEXT")


#: the trace log's schema versions (see :meth:`Database.migrate`)
_MIGRATIONS: list[Any] = [[_SCHEMA], _add_external_ids, _mark_answers, _add_feedback_provenance]


def _feedback_columns(present: set[str]) -> str:
    """The feedback columns to read; one an older (read-only) log lacks reads as NULL."""
    return ", ".join(c if c in present or c not in _LATER else "NULL" for c in _FEEDBACK_ORDER)


def check_provenance(value: Any) -> str:
    """A feedback row's provenance, checked: ``"human"`` or ``"model"`` (None: human)."""
    text = "human" if value is None else str(getattr(value, "value", value)).lower()
    if text not in FEEDBACK_PROVENANCES:
        msg = (
            f"provenance: found {value!r}, expected 'human' (a person's feedback) or 'model' "
            "(an agent's citations, an LLM evaluator's annotation)."
        )
        raise BadInputError(msg)
    return text


def trace_database(path: Path) -> SQLiteDatabase:
    """The SQLite trace database at ``path`` with the trace log's pragmas."""
    # secure_delete: deleted text is overwritten in the file
    return SQLiteDatabase(path, journal_mode="WAL", synchronous="NORMAL", secure_delete="ON")


def _trace_from_row(r: tuple) -> Trace:
    _, tid, tm, query, emb, k, flt, rids, scores, ext, source = r
    return Trace(
        id=tid,
        time=tm,
        query=query,
        embedding=_NO_EMBEDDING if emb is None else np.frombuffer(emb, dtype=np.float32).copy(),
        k=int(k),
        filter=None if flt is None else json.loads(flt),
        result_ids=json.loads(rids),
        scores=[float("nan") if s is None else s for s in json.loads(scores)],
        external_id=ext,
        source=source,
    )


def _feedback_from_row(r: tuple) -> Feedback:
    t, tm, rel, irr, rating, text, is_answer, prov = r
    return Feedback(
        t, tm, json.loads(rel), json.loads(irr), rating, text, bool(is_answer), prov or "human"
    )
