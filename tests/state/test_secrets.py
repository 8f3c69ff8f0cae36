"""Secrets never leave the process: a Postgres password, in any form a URL or the environment
carries it, is never printed by ``str`` / ``repr`` of the state location or a database, by an
error (ours, libpq's, psycopg's or SQLAlchemy's), a warning, a log record, ``watch.jsonl``, an
export or the command line.

Every password below contains ``S3CRET``; the sweep (``test_no_output_path_shows_the_password``)
collects every output it can reach on a real Postgres server and checks that none holds it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag.errors import NudgeError
from nudge_rag.masking import mask_secrets
from nudge_rag.state.db import StateLocation

SECRET = "S3CRET"
ROOT = Path(__file__).resolve().parents[2]

#: every URL form that carries a password (``{host}``: the query that names the server)
FORMS = {
    "userinfo": ("postgresql://sweeper:S3CRETpw@/{db}?{host}", {}),
    "query": ("postgresql://sweeper@/{db}?{host}&password=S3CRETpw", {}),
    "percent-escaped": ("postgresql://sweeper:S3CRET%2Fpw%40x@/{db}?{host}", {}),
    "bad-escape": ("postgresql://sweeper:S3CRET%zzpw@/{db}?{host}", {}),
    "query-bad-escape": ("postgresql://sweeper@/{db}?{host}&password=S3CRET%zzpw", {}),
    "PGPASSWORD": ("postgresql://sweeper@/{db}?{host}", {"PGPASSWORD": "S3CRETenv"}),
}


def _leaks(outputs: dict[str, str]) -> list[str]:
    return [f"{where}: {text!r}" for where, text in outputs.items() if SECRET in text]


# == the masking itself (no server) ================================================================
@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:S3CRETa@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=S3CRETb", "postgresql://u@h/db?password=***"),
        ("postgres://u@h/db?sslmode=require&password=S3CRETc&x=1", None),
        ("postgresql+psycopg://u:S3CRET%2Fd@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u:S3CRET%zze@h/db", "postgresql://u:***@h/db"),
        ("host=h password='S3CRET f' dbname=db", "host=h password=*** dbname=db"),
        ("PGPASSWORD=S3CRETg psql", "PGPASSWORD=*** psql"),
    ],
)
def test_every_url_form_is_masked(text, masked):
    out = mask_secrets(text)
    assert SECRET not in out and "***" in out
    if masked is not None:
        assert out == masked


def test_a_password_met_once_is_masked_wherever_a_driver_echoes_it():
    mask_secrets("postgresql://u:S3CRET%zzh@h/db")  # met in a URL
    assert mask_secrets('invalid percent-encoded token: "S3CRET%zzh"') == (
        'invalid percent-encoded token: "***"'
    )
    mask_secrets("postgresql://u:S3CRET%2Fi@h/db")  # percent-escaped: decoded as S3CRET/i
    assert mask_secrets("password S3CRET/i was refused") == "password *** was refused"


def test_pgpassword_is_masked(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "S3CRETj")
    assert mask_secrets("the server said S3CRETj") == "the server said ***"


def test_urls_without_a_password_are_untouched():
    for text in ("postgresql://u@h:5432/db?host=/tmp", "postgresql://h:5432/db", "a=b c"):
        assert mask_secrets(text) == text


@pytest.mark.parametrize(
    "url", ["postgresql://u:S3CRETk@h/db", "postgresql://u@h/db?password=S3CRETk"]
)
def test_str_and_repr_of_the_location_and_its_databases_are_masked(url):
    pytest.importorskip("psycopg")
    loc = StateLocation.parse(url)
    parts = [loc.database(p, f"{p}.sqlite") for p in ("traces", "versions", "labels")]
    shown = [str(loc), repr(loc), *(str(d) for d in parts), *(d.label for d in parts)]
    assert not [s for s in shown if SECRET in s]
    assert "***" in repr(loc) and "schema='nudge'" in repr(loc)


def test_a_bad_percent_escape_in_the_password_is_refused_without_showing_it():
    with pytest.raises(NudgeError, match="%25") as info:
        StateLocation.parse("postgresql://u:S3CRET%zzl@h/db")
    assert SECRET not in str(info.value) and info.value.__cause__ is None


def test_the_watch_log_masks_an_error_that_carries_the_password(tmp_path):
    """An error round's reason (in watch.jsonl and echoed) goes through the masking: here the
    fine-tune reaches a database through a URL libpq cannot parse, and libpq's own message
    quotes the password (a message with no URL around it: only a remembered password masks
    it)."""
    psycopg = pytest.importorskip("psycopg")
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from nudge_rag.engine.engine import NudgeFinetuneEngine
    from nudge_rag.engine.watch import WATCH_LOG, Watcher
    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.stores.pgvector import conninfo_from
    from tests.engine.test_watch import FakeClock

    class DatabaseEngine(NudgeFinetuneEngine):
        """Its fine-tune opens the app's database as a store backend does: the URL passes
        through nudge-rag (``conninfo_from``), the driver's error comes from libpq."""

        def finetune(self) -> Any:
            psycopg.connect(conninfo_from("postgresql+psycopg://u:S3CRET%zzm@/db?host=/none"))

    inner = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    ids = store.add_texts(["refunds take 5 days", "shipping is free"])
    _, tid = store.search_with_trace("refunds", k=2)
    store.record_feedback(tid, relevant_ids=[ids[0]])
    echoed: list[str] = []
    clock = FakeClock()
    w = Watcher(
        store,
        engine=DatabaseEngine(store, progress=False),
        min_new_labels=1,
        clock=clock,
        sleep=clock.sleep,
        echo=echoed.append,
    )
    [rec] = w.run_round()
    log = (tmp_path / "state" / WATCH_LOG).read_text()
    assert rec["decision"] == "error" and "percent-encoded" in rec["reason"]
    assert SECRET not in log and not [e for e in echoed if SECRET in e]
    store.close()


# == the sweep on a real server ====================================================================
def _cli(args: list[str], env: dict[str, str]) -> str:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    out = subprocess.run(
        [sys.executable, "-m", "nudge_rag.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=ROOT,
        timeout=300,
    )
    return f"rc={out.returncode}\n{out.stdout}\n{out.stderr}"


def _error_text(err: BaseException) -> str:
    """Everything a caller could print of an error: str, repr, the traceback with its chain."""
    return "\n".join([str(err), repr(err), *traceback.format_exception(err)])


@pytest.fixture
def sweep(pg, db) -> dict[str, Any]:
    """A role ``sweeper`` (trust auth: any password is accepted), a state with one trace at
    schema ``sweep``, and the URL cases: (database, host query, user) for a good URL and a
    wrong database, socket folder, port and user."""
    pytest.importorskip("langchain_postgres")
    from nudge_rag.state.db import state_part
    from nudge_rag.state.traces.log import TraceLog

    pg.psql(
        "DO $$ BEGIN CREATE ROLE sweeper LOGIN SUPERUSER; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
    )
    host = f"host={pg.socket_dir}"
    with TraceLog(state_part(f"postgresql://sweeper@/{db}?{host}&schema=sweep", "traces")) as log:
        emb = np.ones(4, np.float32)
        log.record(query="refunds?", embedding=emb, k=1, result_ids=["a"], scores=[0.5])
    return {
        "good": (db, host, "sweeper"),
        "no-such-db": ("nope_db", host, "sweeper"),
        "wrong-host": (db, "host=/nonexistent", "sweeper"),
        "wrong-port": (db, f"{host}&port=1", "sweeper"),
        "wrong-user": (db, host, "nobody"),
    }


def _url(form: str, case: tuple[str, str, str]) -> str:
    database, host, user = case
    return FORMS[form][0].format(db=database, host=host).replace("sweeper", user)


@pytest.mark.integration
def test_no_library_output_shows_the_password(sweep, tmp_path, caplog, monkeypatch):
    """str/repr of the location and its databases, connection errors (ours, psycopg's through
    the store adapter) with their tracebacks, warnings and every log record at DEBUG."""
    from nudge_rag.state.db import state_part
    from nudge_rag.state.traces.log import TraceLog
    from nudge_rag.stores.pgvector import PgVectorAdapter

    for name in (None, "psycopg", "sqlalchemy"):
        caplog.set_level(logging.DEBUG, logger=name)
    outputs: dict[str, str] = {}
    for form, (_, env) in FORMS.items():
        for case, target in sweep.items():
            url, key = _url(form, target), f"{form}/{case}"
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    loc = StateLocation.parse(f"{url}&schema=sweep")
                except NudgeError as e:
                    outputs[f"{key} parse error"] = _error_text(e)
                else:
                    outputs[f"{key} str"] = str(loc)
                    outputs[f"{key} repr"] = repr(loc)
                    for part in ("traces", "versions", "labels"):
                        base = loc.database(part, f"{part}.sqlite")
                        outputs[f"{key} {part} label"] = f"{base} {base.label} {base!r}"
                        try:
                            base.connect().close()
                        except Exception as e:
                            outputs[f"{key} {part} connect error"] = _error_text(e)
                    try:
                        with TraceLog(state_part(loc, "traces"), read_only=True) as log:
                            outputs[f"{key} stats"] = json.dumps(log.stats())
                            out = tmp_path / f"{form}-{case}.jsonl"
                            log.export_jsonl(out)
                            outputs[f"{key} export"] = out.read_text()
                    except Exception as e:
                        outputs[f"{key} trace log error"] = _error_text(e)
                try:  # the store adapter opens connections of its own (connect_masked)
                    PgVectorAdapter(url, "langchain_pg_embedding", metric="cosine").close()
                except Exception as e:
                    outputs[f"{key} adapter error"] = _error_text(e)
            outputs[f"{key} warnings"] = "\n".join(str(w.message) for w in caught)
            for name in env:
                monkeypatch.delenv(name)
    outputs["log records"] = caplog.text
    assert not _leaks(outputs)
    # the sweep reached what it meant to: good URLs read the state, bad ones failed, logs came
    assert sum("refunds?" in t for k, t in outputs.items() if k.endswith("export")) >= 4
    assert sum(k.endswith("connect error") for k in outputs) >= 4 * 3 * 4
    assert "connection attempt" in caplog.text
    print(f"\nlibrary sweep: {len(outputs)} outputs checked, none shows the password")


@pytest.mark.integration
def test_no_cli_output_shows_the_password(sweep, tmp_path):
    """The commands as subprocesses, stdout and stderr, with a good and a bad URL of each form
    (the state read through libpq; ``verify`` through SQLAlchemy and langchain-postgres), the
    export they write, and the traceback NUDGE_RAG_TRACEBACK=1 prints."""
    jobs: list[tuple[str, list[str], dict[str, str]]] = []
    for form, (_, env) in FORMS.items():
        good = f"{_url(form, sweep['good'])}&schema=sweep"
        bad = f"{_url(form, sweep['no-such-db'])}&schema=sweep"
        out = str(tmp_path / f"{form}.jsonl")
        jobs.append((f"{form} export", ["traces", "export", "--store", good, "--out", out], env))
        jobs.append((f"{form} versions bad", ["versions", "--store", bad], env))
        if form in ("query", "PGPASSWORD"):  # the PGVector store: SQLAlchemy's errors
            jobs.append((f"{form} verify bad", ["verify", "--store", bad], env))
    wrong_user = _url("query", sweep["wrong-user"])
    jobs.append(("traceback", ["verify", "--store", wrong_user], {"NUDGE_RAG_TRACEBACK": "1"}))
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda job: _cli(job[1], job[2]), jobs))
    outputs = {job[0]: text for job, text in zip(jobs, texts, strict=True)}
    for f in tmp_path.glob("*.jsonl"):
        outputs[f"export file {f.name}"] = f.read_text()
    assert not _leaks(outputs)
    exported = [t for k, t in outputs.items() if k.startswith("export file")]
    assert len(exported) >= 4 and all("refunds?" in t for t in exported)
    # the state is now checked through nudge-rag's own layer before SQLAlchemy opens the store:
    # a one-line error naming the URL, masked (NUDGE_RAG_TRACEBACK shows unexpected errors only)
    assert outputs["traceback"].startswith("rc=1") and "password=***" in outputs["traceback"]
    assert all(t.startswith("rc=1") for k, t in outputs.items() if k.endswith("bad"))
    print(f"\nCLI sweep: {len(outputs)} outputs checked, none shows the password")
