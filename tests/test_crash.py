"""Crash safety: a writer process applying and rolling back versions is killed with SIGKILL at
random points; after every kill, reopening the version log leaves the store exactly at one
version, every vector bitwise equal to that version's.

Each round is one process on a persistent Chroma collection: it opens the log (which completes
an unfinished move), checks every vector, reports, then applies and rolls back at random until
the test kills it.

The collection never syncs its HNSW files during the test (``hnsw:sync_threshold`` above every
write the test makes), so all of Chroma's data stays in its SQLite log, which survives SIGKILL.
At Chroma's default threshold a kill that lands while Chroma rewrites ``index_metadata.pickle``
in place leaves Chroma itself unable to open the collection ("Error deserializing pickle file",
chroma-core/chroma#4218), with or without nudge-rag; that is Chroma's durability, not the
version log's, and this test is about the version log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

N, D = 200, 16
IDS = [f"doc-{i}" for i in range(N)]
KILLS = 22
# Chroma keeps every write in its crash-safe SQLite log until this many are pending (see above).
CHROMA_METADATA = {"hnsw:space": "l2", "hnsw:sync_threshold": 10_000_000, "hnsw:batch_size": 100}


def _base() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)


def _version_rows(v: int) -> dict[str, np.ndarray]:
    """The rows and vectors of version ``v`` (a function of ``v`` only)."""
    rng = np.random.default_rng(1000 + v)
    rows = rng.choice(N, size=int(rng.integers(5, 80)), replace=False)
    vecs = rng.standard_normal((len(rows), D)).astype(np.float32)
    return {IDS[r]: vecs[n] for n, r in enumerate(rows)}


def _expected(log, version: int) -> np.ndarray:
    """Every vector at ``version``: the nearest ancestor's row, else the base."""
    parents = {v.version: v.parent for v in log.versions()}
    out = _base().copy()
    chain = [version]
    while chain[-1] != 0:
        chain.append(parents[chain[-1]] or 0)
    for v in reversed(chain[:-1]):  # oldest first, so nearer versions overwrite
        for i, vec in _version_rows(v).items():
            out[IDS.index(i)] = vec
    return out


def _open(root: Path):
    import chromadb

    from nudge_rag.core.stores.chroma import ChromaAdapter
    from nudge_rag.core.versions import VersionLog

    client = chromadb.PersistentClient(path=str(root / "chroma"))
    col = client.get_or_create_collection("docs", metadata=CHROMA_METADATA)
    if col.count() == 0:
        col.add(ids=IDS, embeddings=_base(), documents=IDS)
    adapter = ChromaAdapter(col)
    return adapter, VersionLog(root / "state" / "versions.sqlite", adapter)


def _pending(root: Path) -> int:
    """Unfinished moves in the log, read raw before the log is opened (and recovers them)."""
    import sqlite3

    path = root / "state" / "versions.sqlite"
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM intent").fetchone()[0])
    except sqlite3.OperationalError:  # killed before the schema was written
        return 0
    finally:
        conn.close()


def _worker(root: Path, seed: int, report: Path) -> None:
    pending = _pending(root)
    adapter, log = _open(root)  # recovers an unfinished move
    cur = log.current
    held = adapter.get(IDS)
    exp = _expected(log, cur)
    bad = int((held != exp).any(axis=1).sum())
    intent = log._conn.execute("SELECT count(*) FROM intent").fetchone()[0]
    with report.open("a") as fh:
        fh.write(
            json.dumps({"current": cur, "bad_rows": bad, "intent": intent, "pending": pending})
            + "\n"
        )
        fh.flush()
        os.fsync(fh.fileno())
    print("READY", flush=True)
    rng = random.Random(seed)
    while True:
        known = [v.version for v in log.versions()]
        if rng.random() < 0.6:
            log.apply(_version_rows(max(known) + 1), method="nudge-n", note=f"seed {seed}")
        else:
            log.rollback(rng.choice(known))


def test_sigkill_at_random_points(tmp_path):
    report = tmp_path / "report.jsonl"
    rng = random.Random(12345)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for round_ in range(KILLS + 1):
        proc = subprocess.Popen(
            [sys.executable, __file__, str(tmp_path), str(round_), str(report)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        line = proc.stdout.readline() if proc.stdout else b""
        if line.strip() != b"READY":
            proc.kill()
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"round {round_}: worker did not start: {line!r}\n{err[-3000:]}")
        if round_ == KILLS:
            proc.kill()
            proc.wait()
            break
        time.sleep(rng.uniform(0.05, 0.8))
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rounds = [json.loads(s) for s in report.read_text().splitlines()]
    assert len(rounds) == KILLS + 1
    assert all(r["bad_rows"] == 0 for r in rounds), rounds
    assert all(r["intent"] == 0 for r in rounds), rounds
    # the kills landed while versions were being written: history grew and moved around
    assert len({r["current"] for r in rounds}) > KILLS // 3, rounds
    assert sum(r["pending"] for r in rounds) >= 1, "no kill landed inside a move"


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
