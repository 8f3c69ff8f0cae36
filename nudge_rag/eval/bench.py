"""Side-by-side runs of ours and the reference ``nudge-ft`` on BEIR datasets.

Shared by ``nudge-rag bench`` and ``benchmarks/bench_core.py``.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.eval.data import load_beir, shared_data_dir, split_queries
from nudge_rag.fit.metrics import evaluate
from nudge_rag.fit.nudge import finetune_embeddings

__all__ = ["REFERENCE_MODE", "compare_on_dataset", "datasets_in", "nudge_ft", "timed"]

REFERENCE_MODE = {"selection": "top1", "refit": False, "weighting": "uniform"}


def nudge_ft(method: str, E, tq, tp, vq, vp) -> np.ndarray:
    """The reference implementation's output (PyPI ``nudge-ft``), its prints silenced."""
    try:
        from nudge import NUDGEM, NUDGEN
    except ImportError as e:
        msg = "the reference needs nudge-ft: pip install nudge-ft==0.1.2"
        raise NudgeError(msg) from e
    cls = NUDGEN if method == "nudge-n" else NUDGEM
    with contextlib.redirect_stdout(io.StringIO()):
        return cls(device=torch.device("cpu")).finetune_embeddings(
            E,
            {"q_embs": tq, "q_ans_indx": [sorted(p) for p in tp]},
            {"q_embs": vq, "q_ans_indx": [sorted(p) for p in vp]},
        )


def timed(fn, *args, **kw) -> tuple[Any, float]:
    """``fn(*args, **kw)`` and the seconds it took."""
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def datasets_in(folder: str | Path | None = None) -> list[Path]:
    """BEIR folders with precomputed embeddings under ``folder`` (default: the shared data)."""
    root = Path(folder) if folder is not None else shared_data_dir()
    if root is None or not root.is_dir():
        msg = "no datasets found: pass a folder of BEIR datasets (default ../shared/data)."
        raise BadInputError(msg)
    found = sorted(p for p in root.iterdir() if (p / "emb").is_dir())
    if not found:
        msg = f"{root}: no BEIR dataset with precomputed embeddings (emb/<model>/) in it."
        raise BadInputError(msg)
    return found


def compare_on_dataset(path: str | Path, method: str, *, seed: int = 0) -> dict[str, Any]:
    """Test NDCG@10 / Recall@10 and fit seconds: none, nudge-ft, ours (reference mode), ours.

    The split is :func:`split_queries` with ``seed`` (dev carved from train when missing).
    ``max_abs_diff`` compares ours in reference mode with nudge-ft (None when not installed).
    """
    ds = load_beir(path, load_text=False)
    sp = split_queries(ds, seed=seed)
    tr, va, te = ds.task(sp.train, qrels_split="train"), ds.task(sp.dev), ds.task("test")
    E = ds.corpus_embeddings
    assert E is not None  # load_beir loads the embeddings unless told not to
    args = (E, tr.queries, tr.positives, va.queries, va.positives)
    plain, t_plain = timed(finetune_embeddings, *args, method=method, **REFERENCE_MODE)
    ours, t_ours = timed(finetune_embeddings, *args, method=method)
    row: dict[str, Any] = {
        "dataset": ds.name,
        "method": method,
        "base": evaluate(te.queries, E, te.positives),
        "ours_plain": evaluate(te.queries, plain.apply(E), te.positives),
        "ours_default": evaluate(te.queries, ours.apply(E), te.positives),
        "t_plain": t_plain,
        "t_default": t_ours,
        "gamma_default": ours.gamma,
        "nudge_ft": None,
        "t_nudge_ft": None,
        "max_abs_diff": None,
    }
    try:
        ref, t_ref = timed(nudge_ft, method, *args)
    except NudgeError:
        return row
    row["nudge_ft"] = evaluate(te.queries, ref, te.positives)
    row["t_nudge_ft"] = t_ref
    row["max_abs_diff"] = float(np.abs(plain.apply(E) - ref).max())
    return row
