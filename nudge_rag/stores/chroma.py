"""Adapter for a chromadb ``Collection`` (PersistentClient, EphemeralClient or HttpClient).

LangChain's ``Chroma`` keeps it as ``store._collection``; LlamaIndex's ``ChromaVectorStore`` as
``store.client``. Vectors are read with ``get(ids, include=["embeddings"])`` (returned in the
store's order, as float64 holding float32 values) and written with ``update(ids, embeddings)``,
which silently ignores unknown ids: every id is checked first.

A cosine collection reads vectors back up to 1 ulp off what it was given (``exact_readback`` is
False): keep the vectors as given for an exact rollback, never a read-back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError
from nudge_rag.fit.checks import check_vectors
from nudge_rag.stores.base import (
    BaseStoreAdapter,
    Metric,
    StoreDescription,
    missing_ids,
    raise_unknown,
    search_queries,
)

__all__ = ["ChromaAdapter", "collection_space"]

_SPACES = {"cosine": Metric.COSINE, "ip": Metric.IP, "l2": Metric.L2}
_PAGE = 5000


def collection_space(collection: Any) -> str:
    """The collection's distance space (``hnsw:space`` metadata or configuration; default l2)."""
    meta = getattr(collection, "metadata", None) or {}
    space = meta.get("hnsw:space")
    if space is None:
        conf = getattr(collection, "configuration", None) or getattr(
            collection, "configuration_json", None
        )
        if isinstance(conf, dict):
            for key in ("hnsw", "spann"):
                sub = conf.get(key)
                if isinstance(sub, dict) and sub.get("space"):
                    space = sub["space"]
                    break
    return str(space or "l2")


def _max_batch(collection: Any) -> int:
    """The most records one call may carry (Chroma refuses bigger batches)."""
    client = getattr(collection, "_client", None)
    try:
        return max(1, min(_PAGE, int(client.get_max_batch_size())))  # type: ignore[union-attr]
    except Exception:  # older clients or a stand-in: a safe default
        return _PAGE


class ChromaAdapter(BaseStoreAdapter):
    """Vectors by id for one chromadb collection.

    Example:
        .. code-block:: python

            import chromadb
            col = chromadb.PersistentClient("db").get_or_create_collection(
                "docs", metadata={"hnsw:space": "cosine"})
            adapter = ChromaAdapter(col)
            adapter.metric            # Metric.COSINE
            adapter.put(["a"], vecs)  # in place, documents and metadata untouched
    """

    can_search = True

    def __init__(self, collection: Any):
        if not callable(getattr(collection, "update", None)) or not callable(
            getattr(collection, "get", None)
        ):
            msg = (
                f"collection: expected a chromadb Collection, found {type(collection).__name__}; "
                "pass e.g. langchain_chroma.Chroma(...)._collection or chromadb's "
                "client.get_collection(name)."
            )
            raise BadInputError(msg)
        self.collection = collection
        space = collection_space(collection)
        if space not in _SPACES:
            msg = f"collection {collection.name!r} uses space {space!r}; expected cosine, ip or l2."
            raise BadInputError(msg)
        self.metric = _SPACES[space]
        self._dim: int | None = None
        self.batch_size = _max_batch(collection)

    @property
    def name(self) -> str:
        """The collection's name."""
        return str(self.collection.name)

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids``, float32, in the order given."""
        return self._get(ids).astype(np.float32)

    def get_exact(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` (float64 holding the float32 values Chroma keeps)."""
        return self._get(ids)

    def _get(self, ids: Sequence[str]) -> np.ndarray:
        ids = [str(i) for i in ids]
        if not ids:
            return np.zeros((0, self._dim or 0), dtype=np.float64)
        uniq = list(dict.fromkeys(ids))
        got_ids: list[str] = []
        parts = []
        for s in range(0, len(uniq), self.batch_size):
            got = self.collection.get(ids=uniq[s : s + self.batch_size], include=["embeddings"])
            got_ids.extend(got["ids"])
            if len(got["ids"]):
                parts.append(np.asarray(got["embeddings"], dtype=np.float64))
        where = {i: n for n, i in enumerate(got_ids)}
        raise_unknown(missing_ids(ids, set(where)), f"Chroma collection {self.name!r}")
        emb = np.concatenate(parts)
        self._dim = emb.shape[1]
        return emb[[where[i] for i in ids]]

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids`` in place (unknown ids: nothing written)."""
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            msg = "ids: found duplicates; pass each id once."
            raise BadInputError(msg)
        mat = check_vectors(vectors, what="vectors", n_rows=len(ids), dim=self._dim)
        if not ids:
            return
        raise_unknown(missing_ids(ids, self.present(ids)), f"Chroma collection {self.name!r}")
        for s in range(0, len(ids), self.batch_size):  # Chroma caps a call's batch size
            self.collection.update(
                ids=ids[s : s + self.batch_size], embeddings=mat[s : s + self.batch_size]
            )

    @property
    def approximate_search(self) -> bool:
        """True: Chroma answers queries from its HNSW index."""
        return True

    @property
    def exact_readback(self) -> bool:
        """A cosine collection reads vectors back up to 1 ulp off what it was given."""
        return self.metric is not Metric.COSINE

    def describe(self) -> StoreDescription:
        """An embedded client (PersistentClient, EphemeralClient) serves this process only."""
        client = type(getattr(self.collection, "_client", None)).__name__
        if "Rust" in client or "Segment" in client:
            return StoreDescription(
                "embedded Chroma client (PersistentClient / EphemeralClient)", False
            )
        return StoreDescription("Chroma server client", True)

    @property
    def dim(self) -> int | None:
        """The stored dimension (read from one record once; None while the collection is empty)."""
        if self._dim is None:
            got = self.collection.get(limit=1, include=["embeddings"])
            if len(got["ids"]):
                self._dim = len(got["embeddings"][0])
        return self._dim

    def count(self) -> int:
        """How many ids the collection holds."""
        return int(self.collection.count())

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[list[float]]]:
        """Chroma's own batched ``query(query_embeddings=...)``: top-``k`` ids and similarities
        per query, best first (cosine and ip: ``1 − distance``; l2: minus the squared distance)."""
        q, k = search_queries(queries, k, self._dim)
        k = min(k, self.count())
        if k == 0:
            return [[] for _ in q], [[] for _ in q]
        out_ids: list[list[str]] = []
        out_scores: list[list[float]] = []
        for s in range(0, len(q), self.batch_size):
            got = self.collection.query(
                query_embeddings=q[s : s + self.batch_size], n_results=k, include=["distances"]
            )
            for ids, dist in zip(got["ids"], got["distances"], strict=True):
                d = np.asarray(dist, dtype=np.float64)
                sims = -d if self.metric is Metric.L2 else 1.0 - d
                out_ids.append([str(i) for i in ids])
                out_scores.append(sims.tolist())
        return out_ids, out_scores

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the collection holds."""
        ids = [str(i) for i in ids]
        uniq = list(dict.fromkeys(ids))
        out: set[str] = set()
        for s in range(0, len(uniq), self.batch_size):
            out.update(self.collection.get(ids=uniq[s : s + self.batch_size], include=[])["ids"])
        return out

    def ids(self) -> list[str]:
        """Every id in the collection."""
        out: list[str] = []
        offset = 0
        while True:
            page = self.collection.get(include=[], limit=_PAGE, offset=offset)["ids"]
            out.extend(page)
            if len(page) < _PAGE:
                return out
            offset += _PAGE
