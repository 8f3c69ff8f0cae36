"""Adapter for a pgvector column in Postgres, through psycopg 3.

One adapter serves every pgvector store that keeps one row per id in one table:

- LangChain ``langchain_postgres.PGVector``: table ``langchain_pg_embedding``, id column ``id``,
  rows scoped by ``collection_id`` (see :meth:`PgVectorAdapter.for_langchain`); the metric is the
  store's ``distance_strategy``.
- LangChain ``langchain_postgres.PGVectorStore`` (the package's newer API): the table it was
  given, id column ``langchain_id`` (uuid), its ``distance_strategy``.
- LlamaIndex ``PGVectorStore``: table ``data_<table_name>``, id column ``node_id`` (see
  :meth:`PgVectorAdapter.for_llama_index`); it always ranks by cosine distance.

Vectors travel in pgvector's binary format, so float32 values round-trip bit for bit
(``vector`` keeps float4; a ``halfvec`` column keeps float16 and so does not read back what it
was given: ``exact_readback`` is False). :meth:`PgVectorAdapter.put` stages the new vectors with
one binary ``COPY`` into a temporary table, checks every id, and overwrites them with one
``UPDATE … SET embedding = … FROM`` the staged rows, all in ONE transaction: concurrent searches
see exactly the old or the new vectors, never a mix, and an unknown id writes nothing.
"""

from __future__ import annotations

import itertools
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError, NudgeError, UnknownIdError
from nudge_rag.masking import mask_secrets, remember_secrets
from nudge_rag.stores.base import (
    BaseStoreAdapter,
    Metric,
    StoreDescription,
    as_float32_matrix,
    missing_ids,
    raise_unknown,
    search_queries,
)

__all__ = ["PgVectorAdapter", "connect_masked", "conninfo_from", "metric_from_pgvector"]

_COPY_CHUNK = 2048  # rows per write to the COPY stream
_WORD = re.compile(r"\w+")  # a query's words for text_search (punctuation is tsquery syntax)
_METRICS = {
    # pgvector operators, opclasses and SQL/SQLAlchemy function names
    "<=>": Metric.COSINE,
    "cosine": Metric.COSINE,
    "cosine_distance": Metric.COSINE,
    "vector_cosine_ops": Metric.COSINE,
    "halfvec_cosine_ops": Metric.COSINE,
    "<#>": Metric.IP,
    "ip": Metric.IP,
    "inner": Metric.IP,
    "inner_product": Metric.IP,
    "max_inner_product": Metric.IP,
    "vector_ip_ops": Metric.IP,
    "halfvec_ip_ops": Metric.IP,
    "<->": Metric.L2,
    "l2": Metric.L2,
    "euclidean": Metric.L2,
    "l2_distance": Metric.L2,
    "vector_l2_ops": Metric.L2,
    "halfvec_l2_ops": Metric.L2,
}
_ELEMENT: dict[str, np.dtype[Any]] = {"vector": np.dtype(">f4"), "halfvec": np.dtype(">f2")}


def metric_from_pgvector(strategy: Any) -> Metric:
    """The :class:`Metric` of a pgvector distance, however a framework names it.

    Accepts a :class:`Metric`, an operator (``<=>`` cosine, ``<#>`` negative inner product,
    ``<->`` l2), an operator class (``vector_cosine_ops``, ``halfvec_ip_ops``, …), a function
    name (``cosine_distance``, ``max_inner_product``, ``l2_distance``), LangChain's
    ``DistanceStrategy`` values (``"cosine"``, ``"inner"``, ``"l2"``) or either
    ``DistanceStrategy`` enum of ``langchain_postgres`` itself.
    """
    if isinstance(strategy, Metric):
        return strategy
    keys: list[str] = []
    if isinstance(strategy, Enum):
        value = strategy.value
        keys.extend(str(v) for v in (value if isinstance(value, tuple) else (value,)))
        keys.append(strategy.name)
    else:
        keys.append(str(strategy))
    for key in keys:
        found = _METRICS.get(key.strip().lower())
        if found is not None:
            return found
    msg = (
        f"distance strategy: found {strategy!r}; expected a pgvector cosine (<=>), inner "
        "product (<#>) or l2 (<->) distance. NUDGE needs one of these (not l1, hamming or "
        "jaccard)."
    )
    raise BadInputError(msg)


def conninfo_from(connection: Any) -> str:
    """A libpq URI for ``psycopg.connect`` from a URI, a SQLAlchemy URL or a SQLAlchemy engine.

    ``postgresql+psycopg://…``, ``postgresql+psycopg2://…`` and ``postgresql+asyncpg://…`` become
    ``postgresql://…`` (query parameters such as ``host=<socket dir>`` are kept).
    """
    url = getattr(connection, "url", connection)  # an Engine or AsyncEngine
    if hasattr(url, "render_as_string"):  # a sqlalchemy URL: str() would hide the password
        url = url.render_as_string(hide_password=False)
    if not isinstance(url, str):
        msg = (
            f"connection: found {type(connection).__name__}; expected a psycopg Connection, a "
            "postgresql:// URI, a SQLAlchemy URL or engine."
        )
        raise BadInputError(msg)
    remember_secrets(url)
    scheme, sep, rest = url.partition("://")
    if sep and scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        return f"postgresql://{rest}"
    if "://" not in url:  # a key=value conninfo string
        return url
    msg = f"connection: found a {scheme}:// URL; expected postgresql:// (any driver)."
    raise BadInputError(msg)


def connect_masked(conninfo: str, *, autocommit: bool = True) -> Any:
    """``psycopg.connect(conninfo)``; when the driver's error echoes a password (libpq quotes a
    URL it cannot parse, a bad ``%`` escape included), the same error class is raised with the
    password masked and without the original attached."""
    import psycopg

    try:
        return psycopg.connect(conninfo, autocommit=autocommit)
    except psycopg.Error as e:
        text = str(e)
        masked = mask_secrets(text)
        if masked == text:
            raise
        raise type(e)(masked) from None


class PgVectorAdapter(BaseStoreAdapter):
    """Vectors by id in one pgvector column (``vector`` or ``halfvec``) of one Postgres table.

    Args:
        connection: a ``psycopg.Connection`` (psycopg 3; the adapter uses it under a lock, and
            wraps every call in a transaction of its own), or a URI / SQLAlchemy URL / engine to
            open one from (owned by the adapter, autocommit).
        table: the table holding one row per id.
        metric: the store's distance (see :func:`metric_from_pgvector`).
        id_column: the column of the ids (text, varchar or uuid).
        embedding_column: the pgvector column.
        schema: the table's schema.
        scope: equality conditions every row of this store meets, e.g.
            ``{"collection_id": uuid}`` for one LangChain collection.
        text_column: the column of the chunk texts (LangChain ``document``, LlamaIndex
            ``text``; set by :meth:`for_langchain` / :meth:`for_llama_index`), which
            :meth:`text_search` ranks with Postgres full-text search; None: no text search.

    Example:
        .. code-block:: python

            adapter = PgVectorAdapter.for_langchain(
                "postgresql://postgres@/app?host=/run/pg", "docs", distance_strategy="cosine")
            adapter.metric                    # Metric.COSINE
            adapter.put(["a"], vecs)          # one transaction; documents and metadata untouched
    """

    #: the LangChain collection (set by :meth:`for_langchain`)
    collection_name: str | None = None
    can_search = True

    def __init__(
        self,
        connection: Any,
        table: str,
        *,
        metric: Any,
        id_column: str = "id",
        embedding_column: str = "embedding",
        schema: str = "public",
        scope: Mapping[str, Any] | None = None,
        text_column: str | None = None,
    ) -> None:
        import psycopg

        self._psycopg = psycopg
        self.metric = metric_from_pgvector(metric)
        self.table = table
        self.schema = schema
        self.id_column = id_column
        self.embedding_column = embedding_column
        self.scope = dict(scope or {})
        self.text_column = text_column
        self._lock = threading.RLock()
        self._conn: Any = None
        self._conninfo: str | None = None
        if isinstance(connection, psycopg.Connection):
            self._conn = connection
        else:
            self._conninfo = conninfo_from(connection)
        self._inspect()

    # -- construction helpers -------------------------------------------------------------

    @classmethod
    def for_langchain(
        cls,
        connection: Any,
        collection_name: str,
        *,
        distance_strategy: Any = "cosine",
        schema: str = "public",
    ) -> PgVectorAdapter:
        """The rows of one ``langchain_postgres.PGVector`` collection.

        Pass the store's connection (``store._engine``, or the URL it was built with), its
        ``collection_name`` and its ``distance_strategy`` (``store._distance_strategy``).
        """
        adapter = cls(
            connection,
            "langchain_pg_embedding",
            metric=distance_strategy,
            id_column="id",
            embedding_column="embedding",
            schema=schema,
            text_column="document",
        )
        from psycopg import sql

        q = sql.SQL("SELECT uuid FROM {} WHERE name = %s").format(
            sql.Identifier(schema, "langchain_pg_collection")
        )
        with adapter._tx() as conn:
            row = conn.execute(q, [collection_name]).fetchone()
        if row is None:
            msg = (
                f"collection_name: PGVector has no collection {collection_name!r} in "
                f"{schema}.langchain_pg_collection; create it first (e.g. PGVector(...) with "
                "create_collection=True, or add texts)."
            )
            raise BadInputError(msg)
        adapter.scope = {"collection_id": row[0]}
        adapter.collection_name = collection_name  # how messages name the store
        return adapter

    @classmethod
    def for_llama_index(
        cls, connection: Any, table_name: str, *, schema: str = "public"
    ) -> PgVectorAdapter:
        """The table of a LlamaIndex ``PGVectorStore`` (``data_<table_name>``, cosine).

        LlamaIndex ranks every query by cosine distance, whatever its HNSW operator class.
        Pass the store's ``connection_string`` (or ``store.client``, its engine) and the
        ``table_name`` and ``schema_name`` it was built with.
        """
        return cls(
            connection,
            f"data_{table_name.lower()}",
            metric=Metric.COSINE,
            id_column="node_id",
            embedding_column="embedding",
            schema=schema.lower(),
            text_column="text",
        )

    # -- connection -----------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """The connection, locked, inside one transaction (committed on success).

        A connection the adapter opened and the server dropped since its last use (a restart,
        a failover, ``pg_terminate_backend``) fails at ``BEGIN``, before anything ran: a new
        one takes its place and the transaction starts there.
        """
        with self._lock:
            conn = self._conn
            if self._conninfo is not None and (conn is None or conn.closed or conn.broken):
                conn = self._conn = connect_masked(self._conninfo)
            tx = conn.transaction()
            try:
                tx.__enter__()  # BEGIN
            except self._psycopg.OperationalError:
                if self._conninfo is None or not conn.broken:
                    raise
                conn = self._conn = connect_masked(self._conninfo)
                tx = conn.transaction()
                tx.__enter__()
            try:
                yield conn
            except BaseException as err:
                if not tx.__exit__(type(err), err, err.__traceback__):
                    raise
            else:
                tx.__exit__(None, None, None)

    def close(self) -> None:
        """Close the connection the adapter opened (a connection passed in stays open)."""
        with self._lock:
            if self._conninfo is not None and self._conn is not None:
                self._conn.close()
                self._conn = None

    def _where(self) -> tuple[Any, list[Any]]:
        from psycopg import sql

        parts = [sql.SQL("{} = %s").format(sql.Identifier(k)) for k in self.scope]
        if not parts:
            return sql.SQL("TRUE"), []
        return sql.SQL(" AND ").join(parts), list(self.scope.values())

    def _inspect(self) -> None:
        """Read the column types (and check the table and columns exist)."""
        q = (
            "SELECT a.attname, t.typname, format_type(a.atttypid, NULL), a.atttypmod "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        )
        cols = {r[0]: r[1:] for r in self._catalog(q)}
        where = f"{self.schema}.{self.table}"
        if not cols:
            msg = (
                f"table: Postgres has no table {where!r}; create the store (add documents "
                "through it) first, or pass the table and schema it uses."
            )
            raise BadInputError(msg)
        named = [("id_column", self.id_column), ("embedding_column", self.embedding_column)]
        if self.text_column is not None:
            named.append(("text_column", self.text_column))
        for arg, col in named:
            if col not in cols:
                msg = (
                    f"{arg}: table {where!r} has no column {col!r} (columns: {sorted(cols)}); "
                    "pass the right column name."
                )
                raise BadInputError(msg)
        for col in self.scope:
            if col not in cols:
                msg = f"scope: table {where!r} has no column {col!r}; columns: {sorted(cols)}."
                raise BadInputError(msg)
        typname, typ, typmod = cols[self.embedding_column]
        if typname not in _ELEMENT:
            msg = (
                f"embedding_column: column {self.embedding_column!r} of {where!r} is {typ}; "
                "expected a pgvector vector or halfvec column (sparsevec and bit are not "
                "dense float vectors)."
            )
            raise BadInputError(msg)
        self._vector_type: str = typ  # e.g. "vector" or "extensions.vector"
        self._element: np.dtype[Any] = _ELEMENT[typname]
        self._exact_readback = typname == "vector"
        self.dim: int | None = int(typmod) if typmod and typmod > 0 else None
        id_typname, id_type, _ = cols[self.id_column]
        self._uuid_ids = id_typname == "uuid"
        self._id_type: str = id_type

    # -- ids ------------------------------------------------------------------------------

    def _key(self, doc_id: Any) -> str:
        """The id as the database prints it (canonical form for uuid columns)."""
        s = str(doc_id)
        if self._uuid_ids:
            try:
                return str(uuid.UUID(s))
            except ValueError:
                return s  # no such row can exist: reported as unknown
        return s

    def _param_ids(self, keys: Sequence[str]) -> list[str]:
        if not self._uuid_ids:
            return list(keys)
        out = []
        for k in keys:
            try:
                out.append(str(uuid.UUID(k)))
            except ValueError:
                continue  # not a uuid: cannot be held
        return out

    def _select(self, conn: Any, keys: Sequence[str], *, vectors: bool) -> list[tuple[Any, ...]]:
        from psycopg import sql

        where, args = self._where()
        cols: list[sql.Composable] = [sql.SQL("{}::text").format(sql.Identifier(self.id_column))]
        if vectors:
            cols.append(sql.Identifier(self.embedding_column))
        q = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s::{}[]) AND {}").format(
            sql.SQL(", ").join(cols),
            sql.Identifier(self.schema, self.table),
            sql.Identifier(self.id_column),
            sql.SQL(self._id_type),
            where,
        )
        with conn.cursor(binary=True) as cur:
            cur.execute(q, [self._param_ids(keys), *args])
            return cur.fetchall()

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the table holds (in this adapter's scope)."""
        keys = [self._key(i) for i in ids]
        if not keys:
            return set()
        with self._tx() as conn:
            held = {r[0] for r in self._select(conn, list(dict.fromkeys(keys)), vectors=False)}
        return {i for i, k in zip(ids, keys, strict=True) if k in held}

    def ids(self) -> list[str]:
        """Every id in the table (in this adapter's scope), each once."""
        from psycopg import sql

        where, args = self._where()
        q = sql.SQL("SELECT {}::text FROM {} WHERE {}").format(
            sql.Identifier(self.id_column), sql.Identifier(self.schema, self.table), where
        )
        with self._tx() as conn:
            return list(dict.fromkeys(r[0] for r in conn.execute(q, args)))

    # -- search ---------------------------------------------------------------------------

    #: ``hnsw.ef_search`` for :meth:`search` (at least ``k``; pgvector caps it at 1,000). The
    #: fine-tune's few thousand searches can afford far more than pgvector's default 40:
    #: recall@10 on 100k clustered 384-d chunks 0.81 at 40, 0.95 at 100, 0.99 at 400; on 1M,
    #: 0.40 at 100 (20 s), 0.76 at 400 (42 s), 0.84 at 1,000 (100 s) (bench_scale.py).
    search_ef = 400

    @property
    def approximate_search(self) -> bool:
        """Whether an HNSW or IVFFlat index on the table can answer searches (approximately)."""
        q = (
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = to_regclass(%s) "
            "AND am.amname IN ('hnsw', 'ivfflat')"
        )
        rows = self._catalog(q)
        return bool(rows and rows[0][0])

    @property
    def exact_readback(self) -> bool:
        """A ``vector`` column reads back what it was given; a ``halfvec`` column rounds."""
        return self._exact_readback

    def describe(self) -> StoreDescription:
        """A table on a Postgres server: every process reads what the others write."""
        return StoreDescription(f"Postgres table {self.schema}.{self.table} (pgvector)", True)

    def _catalog(self, query: str) -> list[tuple]:
        """Rows of a catalog ``query`` whose one parameter is the table (for ``to_regclass``)."""
        from psycopg import sql

        with self._tx() as conn:
            name = sql.Identifier(self.schema, self.table).as_string(conn)
            return list(conn.execute(query, [name]))

    def count(self) -> int:
        """How many rows the table holds (in this adapter's scope)."""
        from psycopg import sql

        where, args = self._where()
        q = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            sql.Identifier(self.schema, self.table), where
        )
        with self._tx() as conn:
            row = conn.execute(q, args).fetchone()
        return int(row[0]) if row else 0

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[list[float]]]:
        """Top-``k`` ids and similarities per query, best first, by SQL
        (``ORDER BY embedding <=> q LIMIT k`` per query, many queries per statement through a
        ``LATERAL`` join, so an HNSW or IVFFlat index answers each). ``hnsw.ef_search`` is raised
        to ``max(search_ef, k)`` for the transaction (pgvector caps it at 1,000, and an HNSW scan
        returns at most that many rows). Similarities: cosine ``1 − distance``, inner product,
        l2 minus the squared distance."""
        from psycopg import sql

        q, k = search_queries(queries, k, self.dim)
        op = sql.SQL({Metric.COSINE: "<=>", Metric.IP: "<#>", Metric.L2: "<->"}[self.metric])
        where, args = self._where()
        emb = sql.Identifier(self.embedding_column)
        stmt = sql.SQL(
            "SELECT q.n, t.id, t.d FROM unnest(%s::text[]) WITH ORDINALITY AS q(v, n) "
            "CROSS JOIN LATERAL (SELECT {}::text AS id, {} {} q.v::{} AS d FROM {} WHERE {} "
            "ORDER BY {} {} q.v::{} LIMIT %s) t ORDER BY q.n, t.d"
        ).format(
            sql.Identifier(self.id_column),
            emb,
            op,
            sql.SQL(self._vector_type),
            sql.Identifier(self.schema, self.table),
            where,
            emb,
            op,
            sql.SQL(self._vector_type),
        )
        out_ids: list[list[str]] = [[] for _ in q]
        out_scores: list[list[float]] = [[] for _ in q]
        texts = ["[" + ",".join(map(repr, row)) + "]" for row in q.tolist()]
        ef = min(1000, max(int(self.search_ef), k))
        score = {
            Metric.COSINE: lambda dist: 1.0 - dist,
            Metric.IP: lambda dist: -dist,  # <#> is the negative inner product
            Metric.L2: lambda dist: -dist * dist,
        }[self.metric]

        def run(conn: Any, first: int, last: int) -> None:
            conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef)))
            for s in range(first, last, 1000):
                part = texts[s : min(last, s + 1000)]
                for n, doc_id, d in conn.execute(stmt, [part, *args, k]):
                    out_ids[s + int(n) - 1].append(doc_id)
                    out_scores[s + int(n) - 1].append(score(float(d)))

        parts = self._search_parts(len(texts))
        if len(parts) == 1:
            with self._tx() as conn:
                run(conn, 0, len(texts))
            return out_ids, out_scores
        from concurrent.futures import ThreadPoolExecutor

        def on_own_connection(span: tuple[int, int]) -> None:
            assert self._conninfo is not None  # several parts only with a URL (_search_parts)
            with connect_masked(self._conninfo) as conn, conn.transaction():
                run(conn, *span)

        with ThreadPoolExecutor(len(parts)) as pool:
            list(pool.map(on_own_connection, parts))
        return out_ids, out_scores

    #: the text search configuration :meth:`text_search` parses texts and queries with
    text_config = "english"
    #: how :meth:`text_search` ranks: ``"bm25"`` (Okapi BM25, k1 1.5, b 0.75, over the
    #: lexemes ``to_tsvector`` finds) or ``"ts_rank"`` (Postgres's own rank of the rows that
    #: match any query word; it weighs no word by its rarity: fewer positives reach the pools)
    text_rank = "bm25"

    def text_search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Per query text, the ids of the (at most) ``k`` rows whose ``text_column`` shares a
        word with it, best first (ties by id), by Postgres full-text search.

        ``to_tsvector`` parses every row's text once into temporary tables (dropped at commit:
        the store's schema is untouched); ``text_rank="bm25"`` ranks by BM25 over their
        lexemes (the query parsed by ``to_tsvector`` too, so no query text is read as
        syntax); ``"ts_rank"`` by ``ts_rank`` against ``websearch_to_tsquery`` of the query's
        words joined by ``or``. One transaction; the work runs in the server."""
        from psycopg import sql

        if self.text_column is None:
            msg = (
                f"text_column: no text column was given for {self._what()}; pass "
                "text_column=... (LangChain PGVector: 'document', LlamaIndex: 'text')."
            )
            raise BadInputError(msg)
        if self.text_rank not in ("bm25", "ts_rank"):
            msg = f"text_rank: found {self.text_rank!r}, expected 'bm25' or 'ts_rank'."
            raise BadInputError(msg)
        out: list[list[str]] = [[] for _ in queries]
        if k < 1 or not queries:
            return out
        where, args = self._where()
        cfg = sql.Literal(self.text_config)
        docs = sql.SQL(
            "CREATE TEMP TABLE nudge_text_docs ON COMMIT DROP AS SELECT {}::text AS id, "
            "to_tsvector({}::regconfig, coalesce({}::text, '')) AS tsv FROM {} WHERE {}"
        ).format(
            sql.Identifier(self.id_column),
            cfg,
            sql.Identifier(self.text_column),
            sql.Identifier(self.schema, self.table),
            where,
        )
        if self.text_rank == "bm25":
            setup = [
                "CREATE TEMP TABLE nudge_text_tf ON COMMIT DROP AS SELECT u.lexeme AS lex, d.id, "
                "coalesce(cardinality(u.positions), 1)::float8 AS tf "
                "FROM pg_temp.nudge_text_docs d, unnest(d.tsv) u",
                "CREATE TEMP TABLE nudge_text_len ON COMMIT DROP AS SELECT d.id, "
                "coalesce(sum(t.tf), 0)::float8 AS len FROM pg_temp.nudge_text_docs d "
                "LEFT JOIN pg_temp.nudge_text_tf t USING (id) GROUP BY d.id",
                # lucene BM25 (what bm25s computes): idf ln(1 + (N - df + .5) / (df + .5))
                "CREATE TEMP TABLE nudge_text_idf ON COMMIT DROP AS SELECT lex, "
                "ln(1 + ((SELECT count(*) FROM pg_temp.nudge_text_len) - count(*) + 0.5) "
                "/ (count(*) + 0.5)) AS idf FROM pg_temp.nudge_text_tf GROUP BY lex",
                "CREATE TEMP TABLE nudge_text_post ON COMMIT DROP AS SELECT t.lex, t.id, "
                "i.idf * t.tf * 2.5 / (t.tf + 1.5 * (0.25 + 0.75 * l.len / "
                "greatest((SELECT avg(len) FROM pg_temp.nudge_text_len), 1e-9))) AS w "
                "FROM pg_temp.nudge_text_tf t JOIN pg_temp.nudge_text_len l USING (id) "
                "JOIN pg_temp.nudge_text_idf i USING (lex)",
                "CREATE INDEX ON pg_temp.nudge_text_post (lex)",
                "ANALYZE pg_temp.nudge_text_post",
            ]
            stmt = sql.SQL(
                "WITH q AS (SELECT DISTINCT u.n, l AS lex FROM unnest(%s::text[]) "
                "WITH ORDINALITY AS u(v, n), unnest(tsvector_to_array(to_tsvector({}::regconfig, "
                "u.v))) AS l), s AS (SELECT q.n, p.id, sum(p.w) AS score FROM q "
                "JOIN pg_temp.nudge_text_post p USING (lex) GROUP BY q.n, p.id), "
                "r AS (SELECT n, id, score, row_number() OVER (PARTITION BY n ORDER BY "
                "score DESC, id) AS rk FROM s) SELECT n, id FROM r WHERE rk <= %s "
                "ORDER BY n, rk"
            ).format(cfg)
            asked = [t or "" for t in queries]
        else:
            setup = [
                "CREATE INDEX ON pg_temp.nudge_text_docs USING gin (tsv)",
                "ANALYZE pg_temp.nudge_text_docs",
            ]
            stmt = sql.SQL(
                "SELECT q.n, t.id FROM unnest(%s::text[]) WITH ORDINALITY AS q(v, n) "
                "CROSS JOIN LATERAL (SELECT f.id, ts_rank(f.tsv, w) AS r "
                "FROM pg_temp.nudge_text_docs f, websearch_to_tsquery({}::regconfig, q.v) w "
                "WHERE f.tsv @@ w ORDER BY r DESC, f.id LIMIT %s) t "
                "ORDER BY q.n, t.r DESC, t.id"
            ).format(cfg)
            asked = [
                " or ".join(w for w in _WORD.findall(t or "") if w.lower() != "or") for t in queries
            ]
        with self._tx() as conn:
            conn.execute(docs, args)
            for step in setup:
                conn.execute(step)
            for s in range(0, len(asked), 1000):
                for n, doc_id in conn.execute(stmt, [asked[s : s + 1000], k]):
                    out[s + int(n) - 1].append(doc_id)
        return out

    #: connections :meth:`search` spreads a large batch over (one backend each, so a server
    #: with several cores answers them in parallel); one when the adapter was given a
    #: connection rather than a URL.
    search_connections = 4
    _SEARCH_SPLIT = 128  # queries per connection at least

    def _search_parts(self, n: int) -> list[tuple[int, int]]:
        """Contiguous ``(first, last)`` spans of ``n`` queries, one per connection."""
        ways = max(1, min(int(self.search_connections), n // self._SEARCH_SPLIT))
        if self._conninfo is None or ways == 1:
            return [(0, n)]
        bounds = np.linspace(0, n, ways + 1).astype(int)
        return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    # -- vectors --------------------------------------------------------------------------

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        """pgvector binary values (int16 dim, int16 unused, big-endian elements) → float32."""
        dims = {int.from_bytes(b[:2], "big") for b in blobs}
        if len(dims) != 1:
            msg = (
                f"table {self.schema}.{self.table}: the vectors asked for have "
                f"{len(dims)} different lengths {sorted(dims)[:5]}; expected one."
            )
            raise NudgeError(msg)
        dim = dims.pop()
        raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)[:, 4:]
        return (
            np.ascontiguousarray(raw)
            .view(self._element)
            .reshape(len(blobs), dim)
            .astype(np.float32)
        )

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids``, float32, in the order given (bit-exact for ``vector``).

        If several rows share an id (LlamaIndex does not enforce unique node ids), the one
        read first is returned; :meth:`put` writes them all.
        """
        keys = [self._key(i) for i in ids]
        if not keys:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        with self._tx() as conn:
            rows = self._select(conn, list(dict.fromkeys(keys)), vectors=True)
        found: dict[str, bytes] = {}
        for k, blob in rows:
            if blob is None:
                msg = f"id {k!r} in {self.schema}.{self.table} has no vector (NULL); re-add it."
                raise NudgeError(msg)
            found.setdefault(k, blob)
        raise_unknown(missing_ids(keys, set(found)), self._what())
        mat = self._decode([found[k] for k in keys])
        if self.dim is None:
            self.dim = mat.shape[1]
        return mat

    def _what(self) -> str:
        scope = f" ({', '.join(f'{k}={v}' for k, v in self.scope.items())})" if self.scope else ""
        return f"Postgres table {self.schema}.{self.table}{scope}"

    def _stored_dim(self, conn: Any) -> int | None:
        """The length of the stored vectors, for a column declared without one."""
        from psycopg import sql

        where, args = self._where()
        q = sql.SQL("SELECT vector_dims({}) FROM {} WHERE {} AND {} IS NOT NULL LIMIT 1").format(
            sql.Identifier(self.embedding_column),
            sql.Identifier(self.schema, self.table),
            where,
            sql.Identifier(self.embedding_column),
        )
        row = conn.execute(q, args).fetchone()
        return None if row is None else int(row[0])

    def _copy_rows(self, keys: Sequence[str], mat: np.ndarray) -> Iterator[bytes]:
        """Binary COPY data: (id text, embedding <vector type>) per row."""
        yield b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
        n, dim = mat.shape
        body = np.ascontiguousarray(mat.astype(self._element)).view(np.uint8).reshape(n, -1)
        vec_head = (4 + body.shape[1]).to_bytes(4, "big") + dim.to_bytes(2, "big") + b"\0\0"
        for s in range(0, n, _COPY_CHUNK):
            parts = []
            for k, row in zip(keys[s : s + _COPY_CHUNK], body[s : s + _COPY_CHUNK], strict=True):
                kb = k.encode("utf-8")
                parts.append(b"\x00\x02" + len(kb).to_bytes(4, "big") + kb + vec_head)
                parts.append(row.tobytes())
            yield b"".join(parts)
        yield b"\xff\xff"

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite the vectors of existing ``ids`` in ONE transaction (nothing else changes).

        The rows are staged by binary COPY into a temporary table; every id is checked (an
        unknown id raises ``UnknownIdError`` and writes nothing); then one
        ``UPDATE … SET embedding = staged.embedding FROM staged WHERE id = staged.id`` writes
        them all and the transaction commits: concurrent readers see all old or all new.
        """
        from psycopg import sql

        keys = [self._key(i) for i in ids]
        if len(set(keys)) != len(keys):
            msg = "ids: found duplicates; pass each id once."
            raise BadInputError(msg)
        dim = self.dim
        if dim is None and keys:  # a column declared without a length: ask the rows
            with self._tx() as conn:
                dim = self._stored_dim(conn)
        mat = as_float32_matrix(vectors, len(keys), dim, "vectors")
        if not keys:
            return
        if self._uuid_ids:  # a non-uuid id cannot be held (and would fail the cast below)
            raise_unknown(missing_ids(keys, set(self._param_ids(keys))), self._what())
        if self._element == np.dtype(">f2") and np.abs(mat).max() > 65504.0:
            msg = (
                f"vectors: found values beyond ±65504, which the halfvec column "
                f"{self.embedding_column!r} cannot hold; scale them or use a vector column."
            )
            raise BadInputError(msg)
        args = list(self.scope.values())
        target = sql.Identifier(self.schema, self.table)
        id_col = sql.Identifier(self.id_column)
        emb_col = sql.Identifier(self.embedding_column)
        conds: list[sql.Composable] = [
            sql.SQL("t.{} = %s").format(sql.Identifier(k)) for k in self.scope
        ]
        scoped = sql.SQL(" AND ").join(conds or [sql.SQL("TRUE")])
        with self._tx() as conn:
            conn.execute("DROP TABLE IF EXISTS pg_temp._nudge_put")
            conn.execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE _nudge_put (id text NOT NULL, embedding {}) "
                    "ON COMMIT DROP"
                ).format(sql.SQL(self._vector_type))
            )
            with conn.cursor() as cur:
                with cur.copy("COPY _nudge_put (id, embedding) FROM STDIN (FORMAT BINARY)") as cp:
                    for chunk in self._copy_rows(keys, mat):
                        cp.write(chunk)
                missing_q = sql.SQL(
                    "SELECT s.id FROM _nudge_put s WHERE NOT EXISTS "
                    "(SELECT 1 FROM {} t WHERE t.{} = s.id::{} AND {})"
                ).format(target, id_col, sql.SQL(self._id_type), scoped)
                missing = {r[0] for r in cur.execute(missing_q, args)}
                raise_unknown([k for k in keys if k in missing], self._what())
                update_q = sql.SQL(
                    "UPDATE {} t SET {} = s.embedding FROM _nudge_put s "
                    "WHERE t.{} = s.id::{} AND {}"
                ).format(target, emb_col, id_col, sql.SQL(self._id_type), scoped)
                cur.execute(update_q, args)
                if cur.rowcount < len(keys):  # rows deleted since the check: write nothing
                    msg = (
                        f"{self._what()}: {len(keys) - cur.rowcount} of the ids were deleted "
                        "while their vectors were being written; nothing was written. Retry."
                    )
                    raise UnknownIdError(msg)
