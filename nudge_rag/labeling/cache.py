"""The label cache: every LLM answer paid for, in SQLite (or Postgres), so none is paid twice.

:class:`LabelCache` keeps every settled answer, keyed by model, prompt version and inputs,
written as each answer arrives: a rerun, or a run after a crash midway, asks the LLM only what
it has not answered yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from nudge_rag.labeling.llm import MAX_ANSWER_CHARS, Status
from nudge_rag.state.db import Database, SQLiteDatabase, create_private_file

__all__ = ["LabelCache"]


_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, prompt_version TEXT,
    kind TEXT, status TEXT, value TEXT, calls INTEGER, created REAL);
CREATE TABLE IF NOT EXISTS raw_answers (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT,
    model TEXT, text TEXT, created REAL);
CREATE INDEX IF NOT EXISTS raw_answers_key ON raw_answers (key)
"""


class LabelCache:
    """LLM answers in SQLite (WAL, owner-only 0600), keyed by model, prompt version and inputs.

    Two tables: ``answers`` holds each question's settled outcome (OK with its value, or
    INVALID); ``raw_answers`` holds the text of every answer paid for, written the moment it
    arrives and before it is parsed, so a run that dies midway (or an answer that breaks a
    parser) is never paid for twice. ``path=None`` keeps the cache in memory (for one
    engine's lifetime).
    """

    def __init__(self, path: str | Path | Database | None = None) -> None:
        self._database: Database | None = None
        if path is None:
            self.path = None
            self._db: Any = sqlite3.connect(
                ":memory:", check_same_thread=False, isolation_level=None
            )
            self._db.executescript(_CACHE_SCHEMA)
        else:
            db = (
                path
                if isinstance(path, Database)
                else SQLiteDatabase(Path(path), journal_mode="WAL")
            )
            self.path = db.path
            if self.path is not None:
                create_private_file(self.path)
                _tighten(self.path)
            self._db = db.connect()
            try:
                db.migrate(self._db, [[_CACHE_SCHEMA]])
            except BaseException:
                self._db.close()
                raise
            self._database = db
            if self.path is not None:  # SQLite made -wal / -shm like the database; make sure
                _tighten(self.path)
        self._lock = threading.Lock()

    def _conn(self) -> Any:
        """The connection (lock held), replaced first if its Postgres server went away."""
        if self._database is not None:
            self._db = self._database.live(self._db)
        return self._db

    @staticmethod
    def key(model: str, prompt_version: str, kind: str, inputs: Any) -> str:
        """A stable key for one question (sha256 of its canonical JSON)."""
        blob = json.dumps([model, prompt_version, kind, inputs], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> tuple[Status, Any] | None:
        """The settled ``(status, value)`` of ``key``, or ``None``."""
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT status, value FROM answers WHERE key = ?", (key,))
                .fetchone()
            )
        if row is None:
            return None
        return Status(row[0]), (None if row[1] is None else json.loads(row[1]))

    def put(
        self,
        key: str,
        *,
        model: str,
        prompt_version: str,
        kind: str,
        status: Status,
        value: Any,
        calls: int,
    ) -> None:
        """Store one settled answer (committed at once)."""
        blob = None if value is None else json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._conn().execute(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE"
                " SET model = excluded.model, prompt_version = excluded.prompt_version,"
                " kind = excluded.kind, status = excluded.status, value = excluded.value,"
                " calls = excluded.calls, created = excluded.created",
                (key, model, prompt_version, kind, status.value, blob, calls, time.time()),
            )

    def put_raw(self, key: str, text: str, *, model: str) -> None:
        """Keep the text of one paid answer to ``key`` (committed at once, before parsing).

        Text beyond ``MAX_ANSWER_CHARS`` is cut one character past it: still too long, so
        still invalid when replayed.
        """
        if not isinstance(text, str):
            text = repr(text)
        text = text[: MAX_ANSWER_CHARS + 1].encode("utf-8", "replace").decode("utf-8")
        with self._lock:
            self._conn().execute(
                "INSERT INTO raw_answers (key, model, text, created) VALUES (?, ?, ?, ?)",
                (key, model, text, time.time()),
            )

    def raw(self, key: str) -> list[str]:
        """The paid answers to ``key``, oldest first."""
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT text FROM raw_answers WHERE key = ? ORDER BY id", (key,))
                .fetchall()
            )
        return [r[0] for r in rows]

    def raw_count(self) -> int:
        """How many paid answers are kept."""
        with self._lock:
            return int(self._conn().execute("SELECT COUNT(*) FROM raw_answers").fetchone()[0])

    def __len__(self) -> int:
        """Questions with a paid answer on record (settled, or kept raw and not yet settled)."""
        with self._lock:
            return int(
                self._conn()
                .execute(
                    "SELECT COUNT(*) FROM (SELECT key FROM answers UNION SELECT key FROM "
                    "raw_answers) AS answered"
                )
                .fetchone()[0]
            )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
            if self._database is not None:
                self._database.close()


def _tighten(path: Path) -> None:
    """Make ``path`` and its ``-wal`` / ``-shm`` owner-only (a cache written by an older
    version was 0644)."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            continue
