"""Where a store's own state lives: SQLite files in a folder, or schemas in a Postgres database.

One storage layer under the trace log, the version log and the label cache. ``state=`` names
either a folder (one SQLite file per part, WAL mode, owner-only: the default) or a Postgres URL
(``postgresql://user@host/db?schema=nudge_docs``): each part then lives in a schema of its own,
``<schema>_traces``, ``<schema>_versions`` and ``<schema>_labels``, so that every worker process on
every machine shares one trace log and one version log. The parts write portable SQL (``?``
placeholders, ``INSERT ... ON CONFLICT``); this module translates what differs: column types, the
placeholder style, transactions, integrity checks, change counters and the inter-process lock that
serialises version moves (a file lock next to a SQLite file, ``pg_advisory_lock`` on Postgres).

Schemas are versioned: each part lists its migrations, and :meth:`Database.migrate` runs the ones
a database has not seen (recorded as ``schema_version`` in the part's ``meta`` table) in one
transaction, under the part's lock, so two processes opening a new state at once create it once.
Every migration is written to be re-runnable, so logs made before migrations were numbered are
brought up to date by running them all.

Example:
    .. code-block:: python

        where = StateLocation.parse("postgresql://app@db.internal/app?schema=nudge_docs")
        traces_db = where.database("traces", "traces.sqlite")
        conn = traces_db.connect()
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.masking import mask_secrets, remember_secrets

__all__ = [
    "DEFAULT_SCHEMA",
    "LABELS_FILE",
    "TRACES_FILE",
    "VERSIONS_FILE",
    "Database",
    "Migration",
    "PostgresDatabase",
    "SQLiteDatabase",
    "StateLocation",
    "create_private_file",
    "is_postgres_url",
    "state_argument",
    "state_part",
]

try:  # POSIX only; elsewhere moves are serialised within one process
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_URL = re.compile(r"^postgres(?:ql)?(?:\+\w+)?://", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,29}$")  # + "_versions_broken_<stamp>" <= 63
DEFAULT_SCHEMA = "nudge"
#: a migration: statements (portable SQL) or a callable given (database, connection)
Migration = Sequence[str] | Callable[["Database", Any], None]


TRACES_FILE = "traces.sqlite"
VERSIONS_FILE = "versions.sqlite"
LABELS_FILE = "labels.sqlite"
_FILES = {"traces": TRACES_FILE, "versions": VERSIONS_FILE, "labels": LABELS_FILE}


def state_part(where: str | os.PathLike[str] | StateLocation, name: str) -> Path | Database:
    """One part of a state (``traces``, ``versions``, ``labels``): its SQLite file in a state
    folder, or its schema in Postgres."""
    loc = StateLocation.parse(where)
    if loc.folder is not None:
        return loc.folder / _FILES[name]
    return loc.database(name, _FILES[name])


def is_postgres_url(state: object) -> bool:
    """Whether ``state`` is a Postgres URL (``postgresql://``, ``postgres://``, with a driver)."""
    return isinstance(state, str) and _URL.match(state) is not None


def create_private_file(path: Path) -> None:
    """Create ``path`` (and its folder) owner-only if missing; an existing file is left as is."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


@dataclass(frozen=True)
class StateLocation:
    """``state=`` as given to a face: a folder, or a Postgres URL and a schema name prefix."""

    folder: Path | None = None
    url: str | None = None  #: libpq URL (no driver suffix, no ``schema`` parameter)
    schema: str | None = None

    @classmethod
    def parse(cls, state: str | os.PathLike[str] | StateLocation) -> StateLocation:
        """A folder path, or ``postgresql://...[?schema=name]`` (default schema ``nudge``)."""
        if isinstance(state, StateLocation):
            return state
        if is_postgres_url(state):
            assert isinstance(state, str)
            remember_secrets(state)
            parts = urlsplit(state)
            if _BAD_ESCAPE.search(parts.netloc.rpartition("@")[0]):
                msg = (
                    f"state: the user or password in {mask_secrets(state)} has a '%' that does "
                    "not start a %XX escape, which Postgres refuses; write '%' as %25 (percent-"
                    "encode the password, e.g. urllib.parse.quote(password, safe=''))."
                )
                raise BadInputError(msg)
            query = parse_qsl(parts.query, keep_blank_values=True)
            schema = next((v for k, v in query if k == "schema"), DEFAULT_SCHEMA)
            if not _SCHEMA_NAME.match(schema):
                msg = (
                    f"state: schema={schema!r} in the Postgres URL is not a plain lower-case SQL "
                    "name (letters, digits, _; at most 30 characters); pass e.g. "
                    "?schema=nudge_docs (one schema name per wrapped store)."
                )
                raise BadInputError(msg)
            scheme = "postgresql"  # postgres://, postgresql+psycopg://: libpq reads the same
            rest = urlencode([(k, v) for k, v in query if k != "schema"])
            url = urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment))
            return cls(url=url, schema=schema)
        if not isinstance(state, str | os.PathLike):
            msg = (
                f"state: expected a folder path or a postgresql:// URL, found "
                f"{type(state).__name__}."
            )
            raise BadInputError(msg)
        return cls(folder=Path(state))

    @property
    def is_postgres(self) -> bool:
        """Whether the state lives in Postgres."""
        return self.url is not None

    def __str__(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return f"{mask_secrets(self.url or '')} (schema {self.schema}_*)"

    def __repr__(self) -> str:
        if self.folder is not None:
            return f"StateLocation(folder={str(self.folder)!r})"
        return f"StateLocation(url={mask_secrets(self.url or '')!r}, schema={self.schema!r})"

    def database(self, part: str, filename: str, **sqlite_pragmas: Any) -> Database:
        """The database of one part (``traces``, ``versions``, ``labels``)."""
        if self.folder is not None:
            return SQLiteDatabase(self.folder / filename, **sqlite_pragmas)
        assert self.url is not None and self.schema is not None
        return PostgresDatabase(self.url, f"{self.schema}_{part}")


#: the former name of :func:`mask_secrets` (one masking for every output)
_without_password = mask_secrets


class Database:
    """One part's database; subclasses say how to reach it and what its SQL dialect needs."""

    kind = ""
    product = ""  #: the database's name in messages
    #: the DB-API error classes of the driver
    Error: type[Exception] = Exception
    OperationalError: type[Exception] = Exception
    #: errors that concern one row (a value the database refuses), not the whole batch
    row_errors: tuple[type[Exception], ...] = ()
    #: errors that say a value cannot be stored (Postgres: a NUL character in text)
    value_errors: tuple[type[Exception], ...] = ()
    #: the file next to which a marker is kept (None: no file, e.g. Postgres)
    path: Path | None = None

    def __init__(self) -> None:
        self._rlock = threading.RLock()
        self._depth = 0

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        """How messages name this database."""
        raise NotImplementedError

    def exists(self) -> bool:
        """Whether the database holds anything yet (a file with bytes; a schema)."""
        raise NotImplementedError

    def connect(self, *, read_only: bool = False) -> Any:
        """A new autocommit connection with ``execute`` / ``executemany`` (``?`` placeholders)."""
        raise NotImplementedError

    def begin(self, conn: Any) -> None:
        """Start a write transaction (SQLite: take the write lock at once)."""
        conn.execute("BEGIN")

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        """One write transaction on ``conn``: committed at the end, rolled back on an error."""
        self.begin(conn)
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):  # a lost connection rolled back already
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def tables(self, conn: Any) -> set[str]:
        """Table names of this part."""
        raise NotImplementedError

    def columns(self, conn: Any, table: str) -> set[str]:
        """Column names of ``table``."""
        raise NotImplementedError

    def integrity(self, conn: Any) -> list[str]:
        """``["ok"]`` when the database reports itself whole, else its complaints."""
        return ["ok"]

    def change_counter(self, conn: Any) -> int | None:
        """A number that changes when another connection commits (None: not available)."""
        return None

    def damaged(self, err: BaseException) -> bool:
        """Whether ``err`` says the database is damaged (not merely unreachable or busy)."""
        return False

    def after_delete(self, conn: Any) -> None:
        """Make deleted rows unreadable in the files where the database can (SQLite's WAL)."""

    def broken(self, conn: Any) -> bool:
        """Whether ``conn`` lost its server and must be replaced."""
        return False

    def live(self, conn: Any, *, read_only: bool = False) -> Any:
        """``conn``, or a new connection in its place (the old one closed) if its server went
        away."""
        if not self.broken(conn):
            return conn
        with contextlib.suppress(Exception):
            conn.close()
        return self.connect(read_only=read_only)

    def move_aside(self, stamp: str) -> str | None:
        """Move an unusable database aside; the name it got (None: there was none)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this part's inter-process lock (one holder at a time; re-entrant in a thread)."""
        with self._rlock:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def regain_lock(self) -> bool:
        """Take the lock again if this thread holds it and it was lost (a Postgres lock's
        connection dropped); whether it had been lost. Blocks like the first acquire."""
        with self._rlock:
            if self._depth == 0 or self._lock_alive():
                return False
            self._acquire()
            return True

    def _lock_alive(self) -> bool:
        """Whether the lock this thread took is still held."""
        return True

    def _acquire(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the lock holds open."""

    def ddl(self, script: str) -> list[str]:
        """``script``'s statements in this dialect."""
        return [s.strip() for s in script.split(";") if s.strip()]

    def migrate(self, conn: Any, migrations: Sequence[Migration]) -> None:
        """Run the migrations this database has not seen, in one transaction (which SQLite's
        write lock, or a Postgres transaction-level advisory lock, makes one at a time)."""
        with self.transaction(conn):
            self._create_container(conn)
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            seen = int(row[0]) if row is not None else 0
            if seen > len(migrations):
                msg = (
                    f"{self.label}: its schema is version {seen}, newer than this nudge-rag "
                    f"knows ({len(migrations)}); upgrade nudge-rag."
                )
                raise NudgeError(msg)
            for step in migrations[seen:]:
                if callable(step):
                    step(self, conn)
                else:
                    for stmt in step:
                        for s in self.ddl(stmt):
                            conn.execute(s)
            if seen < len(migrations):
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value",
                    (str(len(migrations)),),
                )

    def _create_container(self, conn: Any) -> None:
        """Create what holds the tables (a Postgres schema), inside the migration."""


class SQLiteDatabase(Database):
    """A SQLite file (WAL mode, owner-only), its pragmas set on every connection."""

    kind = "sqlite"
    product = "SQLite"
    Error = sqlite3.Error
    OperationalError = sqlite3.OperationalError
    row_errors = (
        sqlite3.IntegrityError,
        sqlite3.InterfaceError,
        sqlite3.ProgrammingError,
        sqlite3.DataError,
    )
    _DAMAGED = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB

    def __init__(self, path: Path, **pragmas: Any) -> None:
        super().__init__()
        self.file = Path(path)
        self.path = self.file
        self.pragmas = {"busy_timeout": 10000, **pragmas}
        self.lock_path = self.file.with_name(self.file.name + ".lock")

    @property
    def label(self) -> str:
        return str(self.file)

    def exists(self) -> bool:
        return self.file.exists() and self.file.stat().st_size > 0

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        if read_only:
            if not self.file.is_file():
                msg = f"{self.file}: no database here (read_only=True never creates one)."
                raise NudgeError(msg)
            # with no -wal file beside it no connection is open anywhere: read it as immutable,
            # so SQLite creates no -wal / -shm and takes no lock (a read-only folder works)
            live = Path(f"{self.file}-wal").exists()
            uri = self.file.resolve().as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1")
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(self.pragmas['busy_timeout'])}")
            return conn
        create_private_file(self.file)
        conn = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None)
        try:
            for key, value in self.pragmas.items():
                conn.execute(f"PRAGMA {key}={value}")
        except BaseException:
            conn.close()
            raise
        return conn

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def tables(self, conn: Any) -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def columns(self, conn: Any, table: str) -> set[str]:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}

    def integrity(self, conn: Any) -> list[str]:
        return [r[0] for r in conn.execute("PRAGMA quick_check(5)")]

    def change_counter(self, conn: Any) -> int | None:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def damaged(self, err: BaseException) -> bool:
        if not isinstance(err, sqlite3.DatabaseError):
            return False
        code = getattr(err, "sqlite_errorcode", None)
        if code is not None:
            return (code & 0xFF) in self._DAMAGED
        text = str(err).lower()
        return "not a database" in text or "malformed" in text

    def after_delete(self, conn: Any) -> None:
        with contextlib.suppress(sqlite3.Error):  # a reader elsewhere: the next one truncates
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def move_aside(self, stamp: str) -> str | None:
        if not self.exists():
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.file) + suffix).unlink(missing_ok=True)
            return None
        aside = self.file.with_name(f"{self.file.name}.broken-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.file) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        return aside.name

    def _acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        create_private_file(self.lock_path)
        self._fh = open(self.lock_path, "a+b")  # noqa: SIM115 - held until _release
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        except BaseException:
            self._fh.close()
            raise

    def _lock_alive(self) -> bool:
        fh = getattr(self, "_fh", None)
        return fcntl is None or (fh is not None and not fh.closed)

    def _release(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        if self._fh.closed:  # lost (closed) while held: nothing to release
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        finally:
            self._fh.close()


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


_PG_TYPES = (
    (
        re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
)


#: statements a lost connection may run again on a new one: reads, and the start of a
#: transaction (a write outside a transaction fails once; the next call reconnects)
_RESUMABLE = re.compile(r"^\s*(SELECT|SHOW|SET|BEGIN|START TRANSACTION)\b", re.IGNORECASE)


class _PgConnection:
    """A psycopg connection that speaks the parts' SQL (``?`` placeholders, ``executemany``).

    With ``reopen`` (what :meth:`PostgresDatabase.connect` gives), a statement that finds the
    connection lost (a restart, a failover, ``pg_terminate_backend``) while no transaction was
    open is run once more on a new connection, if it is a read or ``BEGIN``: nothing was
    written, and the caller's handle stays valid. Inside a transaction the error is raised (the
    transaction is gone); the next call outside one reconnects.
    """

    def __init__(self, raw: Any, reopen: Callable[[], Any] | None = None) -> None:
        self.raw = raw
        self._reopen = reopen

    def execute(self, sql: str, args: Sequence[Any] | None = None) -> Any:
        idle = self._idle()
        try:
            return self._execute(sql, args)
        except Exception as err:
            if not (idle and _RESUMABLE.match(sql) and self._replaced(err)):
                raise
        return self._execute(sql, args)

    def _execute(self, sql: str, args: Sequence[Any] | None) -> Any:
        cur = self.raw.cursor()
        if args is None:
            cur.execute(sql)
        else:
            cur.execute(_pg_sql(sql), tuple(args))
        return cur

    def _idle(self) -> bool:
        """Whether no transaction is open (the connection's own view)."""
        if self._reopen is None or self.raw.closed:
            return False
        return int(self.raw.info.transaction_status) == 0  # psycopg.pq.TransactionStatus.IDLE

    def _replaced(self, err: Exception) -> bool:
        """Whether ``err`` lost the connection and a new one took its place."""
        if self._reopen is None or not self.raw.broken:
            return False
        with contextlib.suppress(Exception):
            self.raw.close()
        try:
            self.raw = self._reopen()
        except Exception:  # still away: the caller gets the original error
            return False
        return True

    def executemany(self, sql: str, rows: Any) -> Any:
        cur = self.raw.cursor()
        cur.executemany(_pg_sql(sql), [tuple(r) for r in rows])
        return cur

    def close(self) -> None:
        self.raw.close()


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:
        msg = (
            "state: a Postgres URL needs the psycopg driver, which is not installed; "
            'pip install "nudge-rag[postgres]".'
        )
        raise NudgeError(msg) from e
    return psycopg


class PostgresDatabase(Database):
    """A schema of its own in a Postgres database (psycopg 3, autocommit connections)."""

    kind = "postgres"
    product = "Postgres"

    def __init__(self, url: str, schema: str) -> None:
        super().__init__()
        pg = _psycopg()
        self.Error = pg.Error
        self.OperationalError = pg.OperationalError
        self.row_errors = (pg.IntegrityError, pg.DataError, pg.ProgrammingError)
        self.value_errors = (pg.DataError,)
        self.url = url
        self.schema = schema
        digest = hashlib.sha256(f"nudge-rag:{schema}".encode()).digest()
        self.lock_key = int.from_bytes(digest[:8], "big", signed=True)
        self._lock_conn: Any = None

    @property
    def label(self) -> str:
        return f"{mask_secrets(self.url)} (schema {self.schema})"

    def _raw(self) -> Any:
        pg = _psycopg()
        try:
            return pg.connect(self.url, autocommit=True)
        except pg.Error as e:
            why = mask_secrets(str(e).strip())
            msg = (
                f"{self.label}: cannot connect to Postgres ({why}); check that the "
                "server runs and the URL names its host (or socket folder), user and database."
            )
            if why != str(e).strip():  # the driver's own message echoed the secret
                raise NudgeError(msg) from None
            raise NudgeError(msg) from e

    def exists(self) -> bool:
        raw = self._raw()
        try:
            row = raw.execute(
                "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (self.schema,)
            ).fetchone()
        finally:
            raw.close()
        return row is not None

    def connect(self, *, read_only: bool = False) -> _PgConnection:
        return _PgConnection(self._session(read_only), functools.partial(self._session, read_only))

    def _session(self, read_only: bool) -> Any:
        """A raw connection set up for this part (its schema first on the search path)."""
        raw = self._raw()
        try:
            raw.execute(f'SET search_path TO "{self.schema}"')
            if read_only:
                raw.execute("SET default_transaction_read_only = on")
        except BaseException:
            raw.close()
            raise
        return raw

    def tables(self, conn: Any) -> set[str]:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
            (self.schema,),
        )
        return {r[0] for r in rows}

    def columns(self, conn: Any, table: str) -> set[str]:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND "
            "table_name = ?",
            (self.schema, table),
        )
        return {r[0] for r in rows}

    def broken(self, conn: Any) -> bool:
        raw = getattr(conn, "raw", None)
        return raw is not None and bool(raw.closed or raw.broken)

    def ddl(self, script: str) -> list[str]:
        out = []
        for stmt in super().ddl(script):
            for pattern, repl in _PG_TYPES:
                stmt = pattern.sub(repl, stmt)
            out.append(stmt)
        return out

    def move_aside(self, stamp: str) -> str | None:
        if not self.exists():
            return None
        aside = f"{self.schema}_broken_{stamp.replace('-', '_')}"
        raw = self._raw()
        try:
            raw.execute(f'ALTER SCHEMA "{self.schema}" RENAME TO "{aside}"')
        finally:
            raw.close()
        return aside

    def _create_container(self, conn: Any) -> None:
        # one migrating process at a time (a key of its own: a move may hold the other)
        conn.execute("SELECT pg_advisory_xact_lock(?)", (self.lock_key ^ 1,))
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def _acquire(self) -> None:
        """``pg_advisory_lock`` on a connection of its own (held until :meth:`_release`)."""
        if self._lock_conn is None or self._lock_conn.closed or self._lock_conn.broken:
            self._lock_conn = self._raw()
        try:
            self._lock_conn.execute("SELECT pg_advisory_lock(%s)", (self.lock_key,))
        except self.OperationalError:
            if not self._lock_conn.broken:
                raise
            # the idle connection was lost since the last move (it held no lock): a new one
            with contextlib.suppress(Exception):
                self._lock_conn.close()
            self._lock_conn = self._raw()
            self._lock_conn.execute("SELECT pg_advisory_lock(%s)", (self.lock_key,))

    def _lock_alive(self) -> bool:
        """The lock lives as long as its session: ask the server whether the session does."""
        conn = self._lock_conn
        if conn is None or conn.closed or conn.broken:
            return False
        try:
            conn.execute("SELECT 1")
        except Exception:  # terminated, timed out, reset: the server released the lock
            with contextlib.suppress(Exception):
                conn.close()
            self._lock_conn = None
            return False
        return True

    def _release(self) -> None:
        try:
            self._lock_conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key,))
        except Exception:  # a lost connection released the lock with it
            with contextlib.suppress(Exception):
                self._lock_conn.close()
            self._lock_conn = None

    def close(self) -> None:
        """Close the lock's connection."""
        with self._rlock:
            if self._lock_conn is not None:
                with contextlib.suppress(Exception):
                    self._lock_conn.close()
                self._lock_conn = None


def state_argument(
    state_dir: str | os.PathLike[str] | None, state: str | os.PathLike[str] | None
) -> str | os.PathLike[str]:
    """The faces' ``state_dir=`` (a folder) or ``state=`` (a folder or a Postgres URL)."""
    if (state_dir is None) == (state is None):
        found = "both" if state_dir is not None else "neither"
        msg = (
            f"state: found {found} of state_dir= and state=; pass one: state_dir='nudge_state' "
            "(a folder) or state='postgresql://user@host/db?schema=nudge_docs' (a Postgres "
            "schema shared by every worker)."
        )
        raise BadInputError(msg)
    if state_dir is not None and is_postgres_url(state_dir):
        msg = f"state_dir: found the URL {mask_secrets(str(state_dir))!r}; pass it as state=."
        raise BadInputError(msg)
    return state if state is not None else state_dir  # type: ignore[return-value]
