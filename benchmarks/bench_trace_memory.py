"""Peak memory of finetune()'s label collection over many stored traces, 2% with feedback.

Builds a trace log of N synthetic searches (384-d query embeddings, k=10, distinct query texts)
over a 1,000-chunk in-memory store, with feedback on 2% of them, then runs
``NudgeFinetuneEngine.collect_labels`` (feedback labels, no LLM) in a fresh interpreter and
reports its peak RSS above the interpreter's RSS just before the call (Linux: the peak is
reset through ``/proc/self/clear_refs``), and its time.
``--code`` runs the measurement against another checkout (e.g. the code before a change:
``git archive HEAD | tar -x -C /tmp/old``); the database is built once per N and reused.

    python benchmarks/bench_trace_memory.py                     # 100k and 300k traces
    python benchmarks/bench_trace_memory.py --traces 1000000
    python benchmarks/bench_trace_memory.py --code /tmp/old     # the same, with older code
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384
N_CHUNKS = 1000
FEEDBACK_SHARE = 0.02

_CHILD = r"""
import json, sys, time
import numpy as np
import nudge_rag
from nudge_rag import NudgeFinetuneEngine
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.memory import MemoryAdapter

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)

folder, n_chunks, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
vecs = rng.standard_normal((n_chunks, dim)).astype(np.float32)
records = {f"c{i}": {"id": f"c{i}", "vector": v.tolist()} for i, v in enumerate(vecs)}
state = NudgeState(MemoryAdapter(records), folder)
engine = NudgeFinetuneEngine(state, progress=False)
ids = list(state.ids())
base = np.asarray(state.base_vectors(ids), dtype=np.float32)
if hasattr(engine, "open_corpus"):  # collect_labels takes the corpus (matrix or store)
    from nudge_rag.fit.corpus import MemoryCorpus
    where = (MemoryCorpus(base, ids=ids, metric=state.metric),)
else:
    where = (ids, base)
counts = dict.fromkeys(
    ("traces", "unlabeled_traces", "no_candidate_text", "unknown_ids", "no_positive"), 0
)
before = status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the RSS now
    fh.write("5")
t0 = time.perf_counter()
labeled = engine.collect_labels(*where, None, counts)
seconds = time.perf_counter() - t0
peak = status_mb("VmHWM")
print(json.dumps({"rss_before_mb": before, "peak_mb": peak, "added_mb": peak - before,
                  "seconds": seconds, "labeled": len(labeled), "traces": counts["traces"],
                  "code": nudge_rag.__file__.rsplit("/nudge_rag/", 1)[0]}))
"""


def build(folder: Path, n: int) -> None:
    """A state folder whose trace log holds ``n`` searches, 2% of them with feedback."""
    from nudge_rag.state.traces.log import TraceLog

    log = TraceLog(folder / "traces.sqlite")
    rng = np.random.default_rng(1)
    result_ids = [f"c{i}" for i in range(10)]
    scores = [1.0 - i / 10 for i in range(10)]
    fed = set(rng.choice(n, int(n * FEEDBACK_SHARE), replace=False).tolist())
    tids: list[tuple[str, str]] = []
    block = rng.standard_normal((1000, DIM)).astype(np.float32)
    for i in range(n):
        if i % 1000 == 0:
            block = rng.standard_normal((1000, DIM)).astype(np.float32)
        tid = log.record(
            query=f"user question {i} about topic {i % 997}",
            embedding=block[i % 1000],
            k=10,
            result_ids=result_ids,
            scores=scores,
        )
        if i in fed and tid is not None:
            tids.append((tid, f"c{rng.integers(N_CHUNKS)}"))
    log.flush()
    with log._lock:  # one transaction for the feedback rows (record_feedback is one each)
        log._conn.execute("BEGIN")
        log._conn.executemany(
            "INSERT INTO feedback (trace_id, time, relevant_ids, irrelevant_ids, rating, text)"
            " VALUES (?, ?, ?, '[]', NULL, NULL)",
            [(t, time.time(), json.dumps([c])) for t, c in tids],
        )
        log._conn.execute("COMMIT")
    log.close()


def measure(folder: Path, code: str | None) -> dict:
    env = dict(os.environ)
    code = code or str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), str(N_CHUNKS), str(DIM)],
        env=env,
        cwd=folder,  # not a checkout: nudge_rag comes from ``code``
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--code", help="a checkout to measure instead of this one (PYTHONPATH)")
    ap.add_argument("--keep", help="folder for the built databases (reused between runs)")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="nudge-trace-mem-"))
    for n in args.traces:
        folder = root / f"state-{n}"
        if not (folder / "traces.sqlite").exists():
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            build(folder, n)
            print(f"built {n:,} traces in {time.perf_counter() - t0:.0f}s ({folder})")
        for name in ("versions.sqlite", "labels.sqlite"):  # fresh per run
            for f in folder.glob(name + "*"):
                f.unlink()
        r = measure(folder, args.code)
        print(
            f"{n:>9,} traces, {r['labeled']:,} labeled: collect_labels peak RSS "
            f"+{r['added_mb']:,.0f} MB over {r['rss_before_mb']:,.0f} MB "
            f"(peak {r['peak_mb']:,.0f} MB), {r['seconds']:.1f}s  [code: {r['code']}]"
        )


if __name__ == "__main__":
    main()
