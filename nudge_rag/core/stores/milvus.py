"""Adapter for a Milvus collection through ``pymilvus.MilvusClient`` (Milvus Lite or a cluster).

Vectors are read with ``client.query(ids=...)`` and written with
``client.upsert(..., partial_update=True)``, which overwrites the vector field alone: text,
metadata and every other field stay as they are (needs pymilvus >= 2.6 and a Milvus that
supports partial updates; Milvus Lite does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from nudge_rag.core.checks import check_vectors
from nudge_rag.core.errors import NudgeError
from nudge_rag.core.stores.base import Metric, missing_ids, raise_unknown

_METRICS = {"COSINE": Metric.COSINE, "IP": Metric.IP, "L2": Metric.L2}
_INT_TYPES = {"INT8", "INT16", "INT32", "INT64"}


class MilvusAdapter:
    """Vectors by id in one Milvus collection.

    Args:
        client: a ``pymilvus.MilvusClient`` (``MilvusVectorStore.client`` in LlamaIndex).
        collection_name: the collection that holds the vectors.
        vector_field: the dense vector field (LlamaIndex's default is ``"embedding"``).
        batch_size: ids per read or write request.

    The metric is read from the vector field's index; the primary key may be a VARCHAR
    (LlamaIndex's node ids) or an integer field (ids are then passed as decimal strings).
    """

    def __init__(
        self,
        client: Any,
        collection_name: str,
        *,
        vector_field: str = "embedding",
        batch_size: int = 1000,
    ) -> None:
        if not client.has_collection(collection_name):
            msg = (
                f"collection_name: Milvus holds no collection {collection_name!r}; "
                "create it (add nodes through the store) first."
            )
            raise NudgeError(msg)
        self.client = client
        self.collection_name = collection_name
        self.vector_field = vector_field
        self.batch_size = batch_size
        info = client.describe_collection(collection_name)
        fields = {f["name"]: f for f in info["fields"]}
        if vector_field not in fields:
            msg = (
                f"vector_field: collection {collection_name!r} has no field {vector_field!r} "
                f"(fields: {sorted(fields)}); pass the dense vector field's name."
            )
            raise NudgeError(msg)
        self.dim: int | None = int(fields[vector_field].get("params", {}).get("dim", 0)) or None
        primary = next(f for f in info["fields"] if f.get("is_primary"))
        self.id_field: str = primary["name"]
        self._int_ids = getattr(primary["type"], "name", str(primary["type"])) in _INT_TYPES
        self.metric = self._read_metric()

    def _read_metric(self) -> Metric:
        names = self.client.list_indexes(self.collection_name, field_name=self.vector_field)
        if not names:
            msg = (
                f"collection {self.collection_name!r}: field {self.vector_field!r} has no "
                "index, so its metric is unknown; create an index (COSINE, IP or L2) first."
            )
            raise NudgeError(msg)
        found = str(self.client.describe_index(self.collection_name, names[0])["metric_type"])
        if found.upper() not in _METRICS:
            msg = (
                f"collection {self.collection_name!r}: metric {found!r} is not one of "
                f"{sorted(_METRICS)}; NUDGE needs a dense float metric."
            )
            raise NudgeError(msg)
        return _METRICS[found.upper()]

    def _keys(self, ids: Sequence[str]) -> list[Any]:
        return [int(i) for i in ids] if self._int_ids else [str(i) for i in ids]

    def _batches(self, ids: Sequence[str]) -> Iterator[Sequence[str]]:
        for start in range(0, len(ids), self.batch_size):
            yield ids[start : start + self.batch_size]

    def _fetch(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        for chunk in self._batches(list(ids)):
            for row in self.client.query(
                self.collection_name, ids=self._keys(chunk), output_fields=fields
            ):
                rows[str(row[self.id_field])] = row
        return rows

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored vectors of ``ids`` (float32, in the order given)."""
        ids = list(ids)
        rows = self._fetch(ids, [self.id_field, self.vector_field])
        raise_unknown(missing_ids(ids, set(rows)), f"Milvus collection {self.collection_name!r}")
        if not ids:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.asarray([rows[i][self.vector_field] for i in ids], dtype=np.float32)

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite existing ``ids`` by partial upsert; unknown ids change nothing."""
        ids = list(ids)
        arr = check_vectors(vectors, what="vectors", n_rows=len(ids), dim=self.dim)
        present = self._fetch(ids, [self.id_field])
        raise_unknown(missing_ids(ids, set(present)), f"Milvus collection {self.collection_name!r}")
        keys = self._keys(ids)
        for start in range(0, len(ids), self.batch_size):
            rows = [
                {self.id_field: k, self.vector_field: v.tolist()}
                for k, v in zip(
                    keys[start : start + self.batch_size],
                    arr[start : start + self.batch_size],
                    strict=True,
                )
            ]
            self.client.upsert(self.collection_name, rows, partial_update=True)

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the collection holds."""
        return set(self._fetch(list(ids), [self.id_field]))

    def ids(self) -> list[str]:
        """Every id in the collection."""
        it = self.client.query_iterator(
            self.collection_name, batch_size=self.batch_size, output_fields=[self.id_field]
        )
        out: list[str] = []
        try:
            while batch := it.next():
                out.extend(str(row[self.id_field]) for row in batch)
        finally:
            it.close()
        return out
