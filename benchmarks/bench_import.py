"""Peak memory and time of ``import_traces`` from a large export, read by the streaming readers.

Writes a LangSmith export (a JSON array of retriever runs, 5 documents of 2,000 characters each)
and a plain JSONL export (a 384-number query embedding a line) of about ``--gb`` GB each, and a
small one of each (``--small-mb``), to a temporary folder under /tmp (deleted at the end); then
imports each in a fresh interpreter and reports its peak RSS above the interpreter's RSS just
before the import (psutil, sampled every 20 ms), its time and its records per second.
``--code`` runs the imports against another checkout (e.g. ``git archive main | tar -x -C
/tmp/old``), to compare with the code before a change.

    python benchmarks/bench_import.py                      # 1 GB and 10 MB, both formats
    python benchmarks/bench_import.py --gb 0.2 --formats jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIM = 384
CHUNKS = [f"chunk-{i}" for i in range(1000)]

CHILD = """
import inspect, json, sys, time
import numpy as np
sys.path.insert(0, {bench!r})
from bench_core import peak_rss
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.memory import MemoryAdapter
from nudge_rag.importers import jsonl, langsmith

fmt, path, state_dir, dim = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ids = [f"chunk-{{i}}" for i in range(1000)]
vecs = np.random.default_rng(0).normal(size=(len(ids), dim)).tolist()
store = MemoryAdapter({{i: {{"id": i, "vector": v}} for i, v in zip(ids, vecs)}}, metric="cosine")

def embed(texts):
    return np.random.default_rng(len(texts)).normal(size=(len(texts), dim)).astype(np.float32)

state = NudgeState(store, state_dir, embed_queries=embed)
reader = langsmith.read if fmt == "langsmith" else jsonl.read
kw = {{"progress": False}} if "progress" in inspect.signature(state.import_traces).parameters else {{}}
t0 = time.perf_counter()
with peak_rss() as extra:
    report = state.import_traces(reader(path), **kw)
seconds = time.perf_counter() - t0
state.close()
import nudge_rag
print(json.dumps({{"imported": report.imported, "bad": len(report.bad), "seconds": seconds,
                  "peak_rss_mib": extra[0] / 2**20, "code": str(nudge_rag.__file__)}}))
"""


def write_export(path: Path, fmt: str, target_bytes: int) -> int:
    """Records appended until the file holds ``target_bytes``; returns how many."""
    rng = np.random.default_rng(1)
    text = "lorem ipsum dolor sit amet " * 75  # ~2,000 characters
    n = 0
    with path.open("w") as f:
        if fmt == "langsmith":
            f.write("[\n")
        while f.tell() < target_bytes:
            picked = rng.choice(len(CHUNKS), 5, replace=False)
            if fmt == "langsmith":
                docs = [
                    {"page_content": text, "metadata": {"score": 0.9 - 0.1 * j}, "id": CHUNKS[c]}
                    for j, c in enumerate(picked)
                ]
                run = {
                    "id": f"00000000-0000-4000-8000-{n:012d}",
                    "run_type": "retriever",
                    "name": "VectorStoreRetriever",
                    "start_time": "2025-03-01T12:00:00.000000",
                    "inputs": {"query": f"question number {n} about refunds"},
                    "outputs": {"documents": docs},
                }
                f.write(("" if n == 0 else ",\n") + json.dumps(run))
            else:
                line = {
                    "query": f"question number {n} about refunds",
                    "external_id": f"req-{n}",
                    "time": 1.74e9 + n,
                    "embedding": np.round(rng.normal(size=DIM), 6).tolist(),
                    "result_ids": [CHUNKS[c] for c in picked],
                    "scores": [0.9, 0.8, 0.7, 0.6, 0.5],
                    "feedback": [{"relevant_ids": [CHUNKS[picked[0]]], "rating": 1.0}],
                }
                f.write(json.dumps(line) + "\n")
            n += 1
        if fmt == "langsmith":
            f.write("\n]\n")
    return n


def run_import(code: Path, fmt: str, path: Path, state_dir: Path) -> dict:
    dim = 5 if fmt == "langsmith" else DIM  # LangSmith runs carry no embedding: embedded
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD.format(bench=str(HERE)),
            fmt,
            str(path),
            str(state_dir),
            str(dim),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=state_dir.parent,  # not the checkout's root, which would shadow --code
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="size of the large exports (GB)")
    ap.add_argument("--small-mb", type=float, default=10.0, help="size of the small exports")
    ap.add_argument("--formats", default="langsmith,jsonl")
    ap.add_argument("--code", type=Path, default=HERE.parent, help="checkout to import with")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nudge-bench-import-", dir="/tmp"))
    try:
        for fmt in args.formats.split(","):
            for size in (args.small_mb * 1e6, args.gb * 1e9):
                path = folder / f"{fmt}-{int(size)}.json"
                t0 = time.perf_counter()
                n = write_export(path, fmt, int(size))
                wrote = time.perf_counter() - t0
                res = run_import(args.code, fmt, path, folder / f"state-{fmt}-{int(size)}")
                row = {
                    "format": fmt,
                    "file_mb": round(path.stat().st_size / 1e6, 1),
                    "records": n,
                    "write_s": round(wrote, 1),
                    **res,
                }
                if "seconds" in res:
                    row["records_per_s"] = round(n / res["seconds"])
                print(json.dumps(row), flush=True)
                path.unlink()
                shutil.rmtree(folder / f"state-{fmt}-{int(size)}", ignore_errors=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
