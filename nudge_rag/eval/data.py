"""BEIR folders with precomputed embeddings, and seeded query splits.

A BEIR folder holds ``corpus.jsonl[.gz]``, ``queries.jsonl`` and ``qrels/<split>.tsv``; the
embeddings, when present, live in ``emb/<model>/{corpus,queries}.npy`` with the ids of their rows
in ``corpus_ids.txt`` / ``query_ids.txt`` (the layout of ``../shared/data``).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nudge_rag.errors import BadInputError

__all__ = [
    "DEFAULT_MODEL",
    "BeirDataset",
    "Split",
    "Task",
    "load_beir",
    "read_qrels",
    "shared_data_dir",
    "split_queries",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclass
class Task:
    """Queries of one split as a matrix, with their positives as corpus row indices."""

    query_ids: list[str]
    queries: np.ndarray
    positives: list[dict[int, int]]


@dataclass
class BeirDataset:
    """A BEIR dataset: text, qrels per split, and (optionally) precomputed embeddings."""

    name: str
    corpus_ids: list[str]
    corpus_text: dict[str, str]
    query_text: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]
    corpus_embeddings: np.ndarray | None = None
    query_embeddings: np.ndarray | None = None
    query_ids: list[str] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        """The qrels splits present (e.g. ``["train", "dev", "test"]``)."""
        return sorted(self.qrels)

    def task(self, split: str | list[str], *, qrels_split: str | None = None) -> Task:
        """The queries of ``split`` (a split name or a list of query ids) as a ``Task``.

        Needs the precomputed embeddings. Positives map corpus row → grade; a list of query
        ids takes its labels from ``qrels_split`` (default: the first split holding each id).
        """
        if self.corpus_embeddings is None or self.query_embeddings is None:
            msg = f"dataset {self.name!r} has no precomputed embeddings (emb/<model>/ is missing)."
            raise BadInputError(msg)
        labels = self._labels(split, qrels_split)
        qids = list(labels) if isinstance(split, str) else list(split)
        row_of_query = {q: i for i, q in enumerate(self.query_ids)}
        row_of_doc = {d: i for i, d in enumerate(self.corpus_ids)}
        positives = [
            {row_of_doc[d]: g for d, g in labels[q].items() if d in row_of_doc and g > 0}
            for q in qids
        ]
        rows = [row_of_query[q] for q in qids]
        return Task(qids, self.query_embeddings[rows], positives)

    def _labels(self, split: str | list[str], qrels_split: str | None) -> dict:
        if isinstance(split, str):
            if split not in self.qrels:
                msg = f"dataset {self.name!r} has no split {split!r}; it has {self.splits}."
                raise BadInputError(msg)
            return self.qrels[split]
        sources = [self.qrels[qrels_split]] if qrels_split else list(self.qrels.values())
        merged: dict[str, dict[str, int]] = {}
        for src in reversed(sources):
            merged.update(src)
        return merged

    def text_of(self, doc_id: str) -> str:
        """A document's text as BEIR's SentenceBERT encodes it: ``title + " " + text``."""
        return self.corpus_text[doc_id]


def _open_text(path: Path):
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.suffix == ".gz"
        else open(path, encoding="utf-8")
    )


def _jsonl(path: Path) -> Iterator[dict]:
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (``query-id, corpus-id, score`` with a header)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def load_beir(
    path: str | Path, *, model: str | None = DEFAULT_MODEL, load_text: bool = True
) -> BeirDataset:
    """Load a BEIR folder; ``model`` names the ``emb/<model>`` folder (None: no embeddings)."""
    root = Path(path)
    corpus_file = next(
        (root / n for n in ("corpus.jsonl.gz", "corpus.jsonl") if (root / n).exists()), None
    )
    if corpus_file is None or not (root / "queries.jsonl").exists():
        msg = f"{root} is not a BEIR folder: expected corpus.jsonl[.gz] and queries.jsonl in it."
        raise BadInputError(msg)
    corpus_text: dict[str, str] = {}
    corpus_ids: list[str] = []
    if load_text:
        for doc in _jsonl(corpus_file):
            doc_id = str(doc["_id"])
            corpus_ids.append(doc_id)
            corpus_text[doc_id] = (doc.get("title", "") + " " + doc.get("text", "")).strip()
    query_text = {str(q["_id"]): q["text"] for q in _jsonl(root / "queries.jsonl")}
    qrels = {p.stem: read_qrels(p) for p in sorted((root / "qrels").glob("*.tsv"))}
    ds = BeirDataset(root.name, corpus_ids, corpus_text, query_text, qrels)
    emb = root / "emb" / model if model else None
    if emb is not None and (emb / "corpus.npy").exists():
        ds.corpus_embeddings = np.load(emb / "corpus.npy")
        ds.query_embeddings = np.load(emb / "queries.npy")
        ds.corpus_ids = (emb / "corpus_ids.txt").read_text(encoding="utf-8").splitlines()
        ds.query_ids = (emb / "query_ids.txt").read_text(encoding="utf-8").splitlines()
    return ds


@dataclass
class Split:
    """Query ids of a train / dev / test split."""

    train: list[str]
    dev: list[str]
    test: list[str]


def split_queries(
    dataset: BeirDataset, *, seed: int = 0, dev_fraction: float = 0.2, use_given_dev: bool = True
) -> Split:
    """Seeded split: the dataset's own train/dev/test, dev carved from train when it has none.

    ``seed`` shuffles train before the dev slice is carved (and is unused when the dataset
    brings its own dev and ``use_given_dev`` is true).
    """
    if "train" not in dataset.qrels or "test" not in dataset.qrels:
        msg = f"dataset {dataset.name!r} needs train and test qrels, found {dataset.splits}."
        raise BadInputError(msg)
    train = sorted(dataset.qrels["train"])
    test = sorted(dataset.qrels["test"])
    if use_given_dev and "dev" in dataset.qrels:
        return Split(train, sorted(dataset.qrels["dev"]), test)
    order = np.random.default_rng(seed).permutation(len(train))
    n_dev = max(1, round(dev_fraction * len(train)))
    dev = sorted(train[i] for i in order[:n_dev])
    rest = sorted(train[i] for i in order[n_dev:])
    return Split(rest, dev, test)


def shared_data_dir() -> Path | None:
    """Where the shared BEIR datasets live: ``$NUDGE_RAG_DATA``, else ``../shared/data``
    beside the working directory or beside this checkout (None when neither exists)."""
    env = os.environ.get("NUDGE_RAG_DATA")
    candidates = [Path(env)] if env else []
    candidates += [
        Path.cwd().parent / "shared" / "data",
        Path(__file__).resolve().parents[3] / "shared" / "data",
    ]
    return next((p for p in candidates if p.is_dir()), None)
