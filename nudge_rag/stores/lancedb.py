"""Adapter for a LanceDB table (embedded, a folder; or LanceDB Cloud) through its connection.

The table is opened anew for every call (``connection.open_table(name)``), so each call reads
the table's latest version, whoever wrote it, and a table a framework creates on its first add
is found once it exists. Vectors are read with a filtered scan (``where id IN (...)``) and
written with one ``merge_insert`` on the id column carrying the id and vector columns only:
one commit, one new table version, every other column untouched. LanceDB commits atomically,
so a write killed midway leaves the previous version whole.

LanceDB does not keep ids unique; a table holding an id twice reads either row, and ``put``
overwrites both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.fit.checks import check_vectors
from nudge_rag.stores.base import (
    BaseStoreAdapter,
    Metric,
    StoreDescription,
    missing_ids,
    raise_unknown,
    search_queries,
)

__all__ = ["LanceDBAdapter"]

_BATCH = 1000  # ids per filtered read or write
_SCAN_ROWS = 8192  # rows per page of scan()
_METRICS = {"l2": Metric.L2, "cosine": Metric.COSINE, "dot": Metric.IP}


def _quote(value: str) -> str:
    """A SQL string literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


class LanceDBAdapter(BaseStoreAdapter):
    """Vectors by id in one LanceDB table.

    Args:
        connection: a ``lancedb.connect(...)`` connection (``LanceDB._connection`` in
            LangChain).
        table_name: the table holding one row per id.
        id_column: the (string) id column; vector_column: the vector column.
        metric: how searches compare vectors: ``l2`` (LanceDB's default), ``cosine`` or
            ``dot``; None: what a search that names no distance type uses (LangChain's
            ``LanceDB`` and LlamaIndex's ``LanceDBVectorStore`` search so): the metric of the
            vector column's index, or l2 while it has none, read at each call.

    Example:
        .. code-block:: python

            import lancedb
            db = lancedb.connect("lance_db")
            adapter = LanceDBAdapter(db, "vectorstore")
            adapter.put(["doc-1"], vecs)   # one commit; text and metadata untouched
    """

    can_search = True
    can_scan = True

    def __init__(
        self,
        connection: Any,
        table_name: str,
        *,
        id_column: str = "id",
        vector_column: str = "vector",
        metric: Metric | str | None = Metric.L2,
    ) -> None:
        if not callable(getattr(connection, "open_table", None)):
            msg = (
                f"connection: expected a LanceDB connection, found {type(connection).__name__}; "
                "pass lancedb.connect(uri) (LangChain's LanceDB keeps it as store._connection)."
            )
            raise BadInputError(msg)
        self.connection = connection
        self.table_name = table_name
        self.id_column = id_column
        self.vector_column = vector_column
        self._metric = None if metric is None else Metric(metric)
        self.name = f"LanceDB table {table_name!r}"
        table = self._table()
        if table is not None:
            self._vector_type(table)  # a table NUDGE cannot use is refused now

    def _table(self) -> Any:
        """The table at its latest version (None while it does not exist)."""
        try:
            return self.connection.open_table(self.table_name)
        except ValueError:  # "Table '...' was not found"
            return None

    def _vector_type(self, table: Any) -> tuple[int, Any]:
        """The vector column's dimension and element type (refused unless fixed-size floats)."""
        import pyarrow as pa

        names = table.schema.names
        for col in (self.id_column, self.vector_column):
            if col not in names:
                msg = (
                    f"{'id_column' if col == self.id_column else 'vector_column'}: table "
                    f"{self.table_name!r} has no column {col!r} (columns: {names}); pass its name."
                )
                raise BadInputError(msg)
        typ = table.schema.field(self.vector_column).type
        if not pa.types.is_fixed_size_list(typ) or not pa.types.is_floating(typ.value_type):
            msg = (
                f"vector_column: column {self.vector_column!r} of {self.table_name!r} is {typ}; "
                "expected a fixed-size list of floats (LanceDB's vector column)."
            )
            raise BadInputError(msg)
        return int(typ.list_size), typ.value_type

    @property
    def metric(self) -> Metric:
        """How searches compare vectors: the metric given, else the vector index's (l2 without
        one), as LanceDB picks it for a search that names no distance type."""
        if self._metric is not None:
            return self._metric
        table = self._table()
        found = None if table is None else self._index_metric(table)
        return Metric.L2 if found is None else found

    def _index_metric(self, table: Any) -> Metric | None:
        """The metric of the vector column's index (None without one)."""
        for idx in table.list_indices():
            if self.vector_column not in idx.columns or "FTS" in str(idx.index_type).upper():
                continue
            details = getattr(idx, "index_details", None) or {}
            name = details.get("metric_type") or table.index_stats(idx.name).distance_type
            found = _METRICS.get(str(name).lower())
            if found is None:
                msg = (
                    f"table {self.table_name!r}: its vector index {idx.name!r} compares by "
                    f"{name!r}, which NUDGE cannot use; rebuild it with metric 'l2', 'cosine' "
                    "or 'dot'."
                )
                raise NudgeError(msg)
            return found
        return None

    @property
    def dim(self) -> int | None:
        """The stored dimension (None before the table exists)."""
        table = self._table()
        return None if table is None else self._vector_type(table)[0]

    @property
    def exact_readback(self) -> bool:
        """float32 and float64 columns read back what they were given; float16 rounds."""
        import pyarrow as pa

        table = self._table()
        return table is None or self._vector_type(table)[1] != pa.float16()

    # approximate_search: a table without a vector index is scanned in full (exact)
    @property
    def approximate_search(self) -> bool:
        """Whether a vector index on the vector column answers searches (approximately)."""
        table = self._table()
        if table is None:
            return False
        return any(
            self.vector_column in idx.columns and "FTS" not in str(idx.index_type).upper()
            for idx in table.list_indices()
        )

    def describe(self) -> StoreDescription:
        """A LanceDB Cloud table, or a local one: either reopened at its latest version for
        every read, so other processes' writes are seen."""
        uri = str(getattr(self.connection, "uri", "") or "")
        kind = "LanceDB Cloud table" if uri.startswith("db://") else "LanceDB table (a folder)"
        return StoreDescription(kind, True)

    # -- reads -------------------------------------------------------------------------------
    def _where(self, ids: Sequence[str]) -> str:
        return f"`{self.id_column}` IN ({', '.join(_quote(i) for i in ids)})"

    def _rows(self, table: Any, ids: Sequence[str], columns: list[str]) -> Iterator[Any]:
        """The rows of ``ids`` (one pyarrow table per batch of ids)."""
        for s in range(0, len(ids), _BATCH):
            part = ids[s : s + _BATCH]
            yield table.search().where(self._where(part)).select(columns).limit(None).to_arrow()

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the table holds."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        table = self._table()
        if table is None or not ids:
            return set()
        out: set[str] = set()
        for got in self._rows(table, ids, [self.id_column]):
            out.update(got[self.id_column].to_pylist())
        return out

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids``, float32, in the order given."""
        return self.get_exact(ids).astype(np.float32)

    def get_exact(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` as float64 (exactly the stored float32 or float64)."""
        ids = [str(i) for i in ids]
        table = self._table()
        if table is None:
            raise_unknown(ids, self.name)
            return np.zeros((0, 0), dtype=np.float64)
        dim = self._vector_type(table)[0]
        if not ids:
            return np.zeros((0, dim), dtype=np.float64)
        got_ids: list[str] = []
        parts = []
        for got in self._rows(
            table, list(dict.fromkeys(ids)), [self.id_column, self.vector_column]
        ):
            got_ids.extend(str(i) for i in got[self.id_column].to_pylist())
            flat = got[self.vector_column].combine_chunks().flatten().to_numpy()
            parts.append(flat.astype(np.float64).reshape(-1, dim))
        row: dict[str, int] = {}
        for n, i in enumerate(got_ids):
            row.setdefault(i, n)
        raise_unknown(missing_ids(ids, set(row)), self.name)
        mat = np.concatenate(parts)
        return mat[[row[i] for i in ids]]

    def ids(self) -> list[str]:
        """Every id in the table, each once."""
        return list(dict.fromkeys(i for page, _ in self._pages(vectors=False) for i in page))

    def count(self) -> int:
        """How many rows the table holds."""
        table = self._table()
        return 0 if table is None else int(table.count_rows())

    def scan(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every ``(ids, vectors)`` in pages of one pass over the table (float32)."""
        yield from self._pages(vectors=True)

    def _pages(self, *, vectors: bool) -> Iterator[tuple[list[str], np.ndarray]]:
        table = self._table()
        if table is None:
            return
        dim = self._vector_type(table)[0]
        cols = [self.id_column, self.vector_column] if vectors else [self.id_column]
        reader = table.search().select(cols).limit(None).to_batches(_SCAN_ROWS)
        for batch in reader:
            ids = [str(i) for i in batch.column(self.id_column).to_pylist()]
            if vectors:
                flat = batch.column(self.vector_column).flatten().to_numpy()
                mat = flat.astype(np.float32).reshape(-1, dim)
            else:
                mat = np.zeros((len(ids), 0), np.float32)
            yield ids, mat

    # -- writes ------------------------------------------------------------------------------
    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids`` in one commit (unknown ids: no write)."""
        import pyarrow as pa

        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            msg = "ids: found duplicates; pass each id once."
            raise BadInputError(msg)
        table = self._table()
        dim, element = self._vector_type(table) if table is not None else (None, None)
        dtype = np.float64 if element == pa.float64() else np.float32
        mat = check_vectors(vectors, what="vectors", n_rows=len(ids), dim=dim, dtype=dtype)
        if not ids:
            return
        raise_unknown(missing_ids(ids, self.present(ids)), self.name)
        assert table is not None and dim is not None  # ids are present: the table exists
        values = pa.array(np.ascontiguousarray(mat).reshape(-1), type=element)
        data = pa.table(
            {
                self.id_column: pa.array(ids, type=table.schema.field(self.id_column).type),
                self.vector_column: pa.FixedSizeListArray.from_arrays(values, dim),
            }
        )
        table.merge_insert(self.id_column).when_matched_update_all().execute(data)

    # -- search ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[list[float]]]:
        """LanceDB's batched vector search: top-``k`` ids and similarities per query, best first
        (l2: minus the squared distance LanceDB reports; cosine: ``1 − distance``; dot:
        ``1 − distance``, i.e. the inner product)."""
        table = self._table()
        q, k = search_queries(queries, k, None if table is None else self._vector_type(table)[0])
        out_ids: list[list[str]] = [[] for _ in q]
        out_scores: list[list[float]] = [[] for _ in q]
        if table is None or not len(q):
            return out_ids, out_scores
        metric = self.metric
        got = (
            table.search(q, vector_column_name=self.vector_column)
            .distance_type({Metric.L2: "l2", Metric.COSINE: "cosine", Metric.IP: "dot"}[metric])
            .limit(k)
            .select([self.id_column, "_distance"])
            .to_arrow()
        )
        qi = got["query_index"].to_numpy() if "query_index" in got.column_names else None
        dist = got["_distance"].to_numpy().astype(np.float64)
        sims = -dist if metric is Metric.L2 else 1.0 - dist
        rows = [str(i) for i in got[self.id_column].to_pylist()]
        for n, (i, s) in enumerate(zip(rows, sims.tolist(), strict=True)):
            at = 0 if qi is None else int(qi[n])
            out_ids[at].append(i)
            out_scores[at].append(s)
        for at, scores in enumerate(out_scores):  # best first (a stable sort keeps ties' order)
            order = sorted(range(len(scores)), key=lambda n: -scores[n])
            out_ids[at] = [out_ids[at][n] for n in order]
            out_scores[at] = [scores[n] for n in order]
        return out_ids, out_scores
