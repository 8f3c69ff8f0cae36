"""A real Arize Phoenix server (``phoenix serve``) on a free local port, for tests and notebooks.

The server needs ``arize-phoenix``, whose pins clash with the app's packages (it wants
SQLAlchemy >= 2.1), so it lives in its own virtual environment: ``.venv-phoenix`` at the
repository root (``scripts/install_phoenix_server.sh`` builds it), or the ``phoenix`` executable
named by ``NUDGE_RAG_PHOENIX``. The app side needs only ``arize-phoenix-client`` and
``arize-phoenix-otel``. The server listens on 127.0.0.1 only, keeps its SQLite database in a
temporary working folder and sends no telemetry.

Example:
    .. code-block:: python

        from nudge_rag.testing.phoenix_server import start_phoenix_server

        server = start_phoenix_server()     # first start: a minute of database migrations
        server.url                           # 'http://127.0.0.1:<port>'
        server.traces_endpoint               # OTLP/HTTP: phoenix.otel.register(endpoint=...)
        server.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from nudge_rag.errors import NudgeError

__all__ = ["ENV_EXE", "REPO_VENV", "PhoenixServer", "phoenix_executable", "start_phoenix_server"]

ENV_EXE = "NUDGE_RAG_PHOENIX"
REPO_VENV = Path(__file__).resolve().parents[2] / ".venv-phoenix"


def phoenix_executable() -> Path | None:
    """The ``phoenix`` executable: ``$NUDGE_RAG_PHOENIX``, else ``.venv-phoenix/bin/phoenix``."""
    named = os.environ.get(ENV_EXE)
    if named:
        return Path(named) if Path(named).is_file() else None
    exe = REPO_VENV / "bin" / "phoenix"
    return exe if exe.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PhoenixServer:
    """A running ``phoenix serve``; :func:`start_phoenix_server` starts one."""

    def __init__(
        self, proc: subprocess.Popen, port: int, folder: Path, start_seconds: float, *, own: bool
    ):
        self.proc = proc
        self.port = port
        self.folder = folder
        self.start_seconds = start_seconds  # from launch to the first healthy answer
        self._own = own

    @property
    def url(self) -> str:
        """The server's base URL (UI, REST ``/v1``, GraphQL ``/graphql``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_endpoint(self) -> str:
        """Where OTLP/HTTP spans go."""
        return f"{self.url}/v1/traces"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def stop(self) -> None:
        """Stop the server (and delete its working folder if this helper made it)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self._own:
            shutil.rmtree(self.folder, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_phoenix_server(
    folder: str | Path | None = None, *, timeout: float = 300.0
) -> PhoenixServer:
    """Start ``phoenix serve`` on 127.0.0.1 (free HTTP and gRPC ports) and wait until it answers.

    ``folder``: its working folder (SQLite database, log); None: a temporary one, deleted on
    :meth:`PhoenixServer.stop`. Raises :class:`NudgeError` when no ``phoenix`` executable is
    found, or when the server exits or does not answer within ``timeout`` seconds.
    """
    exe = phoenix_executable()
    if exe is None:
        msg = (
            f"no Phoenix server found: expected {REPO_VENV / 'bin' / 'phoenix'} or the executable "
            f"named by ${ENV_EXE}; run scripts/install_phoenix_server.sh (it builds .venv-phoenix)."
        )
        raise NudgeError(msg)
    own = folder is None
    work = Path(tempfile.mkdtemp(prefix="phoenix-")) if folder is None else Path(folder)
    work.mkdir(parents=True, exist_ok=True)
    port, grpc = _free_port(), _free_port()
    env = dict(
        os.environ,
        PHOENIX_HOST="127.0.0.1",
        PHOENIX_PORT=str(port),
        PHOENIX_GRPC_PORT=str(grpc),
        PHOENIX_WORKING_DIR=str(work),
        PHOENIX_TELEMETRY_ENABLED="false",
    )
    t0 = time.monotonic()
    with (work / "server.log").open("wb") as log:
        proc = subprocess.Popen([str(exe), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env)
    server = PhoenixServer(proc, port, work, 0.0, own=own)
    while not _healthy(server.url):
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            tail = server.log.read_text(errors="replace")[-2000:]
            server.stop()
            msg = (
                f"phoenix serve did not answer on {server.url} within {timeout:.0f} s "
                f"(exit code {proc.poll()}); its log ends:\n{tail}"
            )
            raise NudgeError(msg)
        time.sleep(0.5)
    server.start_seconds = time.monotonic() - t0
    return server
