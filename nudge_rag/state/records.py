"""Past retrievals brought in from elsewhere, and the external run/span id of a live search.

:class:`TraceRecord` is what ``store.import_traces`` takes: one search made before nudge-rag was
installed (or elsewhere), as an observability tool kept it. The readers in
:mod:`nudge_rag.importers` build them from LangSmith runs, Langfuse observations, Phoenix spans or
a plain JSONL file; :class:`ImportReport` says what an import did.

:func:`current_external_id` names the run or span a live search runs in (a LangChain retriever
run, set by the face's retriever through :data:`EXTERNAL_RUN`, or the current OpenTelemetry span),
so that feedback given later in those tools joins the right trace on import. Framework-free.
"""

from __future__ import annotations

import contextvars
import json
import math
import sys
import time as _time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.state.traces.log import (
    check_provenance,
    clean_text,
    embedding_blob,
    embedding_problem,
    filter_as_dict,
)

if TYPE_CHECKING:
    from nudge_rag.state.state import NudgeState

__all__ = [
    "EXTERNAL_RUN",
    "JSONL",
    "LANGFUSE",
    "LANGSMITH",
    "MAX_FUTURE_S",
    "OTEL",
    "FeedbackRecord",
    "FutureTimes",
    "ImportReport",
    "Records",
    "Resolution",
    "TraceRecord",
    "Unreadable",
    "as_epoch",
    "current_external_id",
    "import_records",
    "span_id_text",
    "storable",
    "time_text",
]

# source names: the id space an external id belongs to
LANGSMITH = "langsmith"  # LangChain callback run ids, which LangSmith keeps as its run ids
OTEL = "otel"  # OpenTelemetry span ids (16 hex digits): Phoenix / OpenInference, live spans
LANGFUSE = "langfuse"  # Langfuse observation ids
JSONL = "jsonl"  # the plain JSONL schema (its own "source" field wins)

_K_MAX = 2**63 - 1  # the trace log's INTEGER range (SQLite and Postgres BIGINT)
MAX_FUTURE_S = 300.0  # default: how far ahead of this clock an imported time may be

# (source, id) of the LangChain retriever run a search runs in; set by the faces' retrievers
EXTERNAL_RUN: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "nudge_external_run", default=None
)


@dataclass(frozen=True)
class FeedbackRecord:
    """Feedback an observability tool kept about one past retrieval.

    ``relevant_ids`` / ``irrelevant_ids``: chunk ids judged so; ``rating``: a number (a thumbs
    up is 1.0, down 0.0 or -1.0 as the tool gives it); ``text``: a comment; ``time``: when it was
    given (epoch seconds, a datetime, an ISO 8601 string; None: the retrieval's time);
    ``provenance``: ``"human"`` (a person's annotation, the default) or ``"model"`` (an LLM
    evaluator's).
    """

    relevant_ids: Sequence[str] = ()
    irrelevant_ids: Sequence[str] = ()
    rating: float | None = None
    text: str | None = None
    time: float | datetime | str | None = None
    provenance: str = "human"


@dataclass(frozen=True)
class Resolution:
    """How a reader found the chunk ids of one record's retrieved documents.

    Counts of documents resolved by their own ``id``, by a ``metadata`` key, by their
    ``content`` (the store's chunk texts), and ``unresolved`` ones, with the ``hint`` that
    would resolve them.
    """

    by_id: int = 0
    by_metadata: int = 0
    by_content: int = 0
    unresolved: int = 0
    hint: str = ""


@dataclass(frozen=True)
class TraceRecord:
    """One past retrieval, as :meth:`NudgeState.import_traces` takes it.

    ``query``: the query text (required). ``embedding``: its vector, or None to embed ``query``
    with the store's embedding function. ``result_ids`` / ``scores``: what came back, best first
    (scores optional: NaN when not kept). ``time``: when it ran (epoch seconds, a datetime, naive
    ones read as UTC, or an ISO 8601 string; None: now). ``external_id`` / ``source``: the tool's
    run, span or observation id and its id space (see the module constants); a record without
    ``external_id`` gets one derived from its content, so re-importing it still adds nothing.
    ``k``: how many results were asked for (default: how many came back). ``resolution``:
    how a reader found ``result_ids`` (see :class:`Resolution`; None: given as ids).
    """

    query: str | None
    embedding: Sequence[float] | np.ndarray | None = None
    result_ids: Sequence[str] = ()
    scores: Sequence[float | None] | None = None
    time: float | datetime | str | None = None
    external_id: str | None = None
    source: str | None = None
    feedback: Sequence[FeedbackRecord] = ()
    k: int | None = None
    filter: dict | None = None
    resolution: Resolution | None = None


class FutureTimes(str, Enum):
    """What an import does with a time more than ``max_future_s`` ahead of this machine's clock
    (a worker with a fast clock, a broken exporter, ``time: 1e308``)."""

    CLAMP = "clamp"  # kept at the import's time, counted in ``ImportReport.future_times``
    REFUSE = "refuse"  # the record is bad: listed in ``ImportReport.bad`` with the time


@dataclass(frozen=True)
class Unreadable:
    """An item a reader could not turn into a record, in its place: where it is and why.

    ``import_traces`` lists it in ``report.bad`` and goes on; iterating :class:`Records` raises.
    """

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class Records(Sequence[TraceRecord]):
    """A reader's records, read lazily: iterating streams them from the export, so that
    ``import_traces`` holds one batch at a time however large the export is.

    Iterating raises a :class:`NudgeError` at an item the reader cannot read (``import_traces``
    instead lists it in ``report.bad`` and imports the rest). ``len()`` and indexing read every
    record into memory once. Records read from a one-shot iterator (a generator of runs) can be
    iterated once; a path or a list can be read again.
    """

    def __init__(self, entries: Callable[[], Iterator[TraceRecord | Unreadable]], *, once: bool):
        self._entries = entries
        self._once = once
        self._used = False
        self._all: list[TraceRecord] | None = None

    def entries(self) -> Iterator[TraceRecord | Unreadable]:
        """Each record, or an :class:`Unreadable` in place of one the reader could not read."""
        if self._all is not None:
            return iter(self._all)
        if self._once and self._used:
            msg = (
                "records: these were read from an iterator, which is used up; pass a list or a "
                "file path to the reader to read them again."
            )
            raise BadInputError(msg)
        self._used = True
        return self._entries()

    def __iter__(self) -> Iterator[TraceRecord]:
        for e in self.entries():
            if isinstance(e, Unreadable):
                raise BadInputError(str(e))
            yield e

    def _list(self) -> list[TraceRecord]:
        if self._all is None:
            self._all = list(iter(self))  # (list(self) would ask len())
        return self._all

    def __len__(self) -> int:
        return len(self._list())

    def __getitem__(self, i: Any) -> Any:
        return self._list()[i]

    def __repr__(self) -> str:
        n = "unread" if self._all is None else f"{len(self._all)} records"
        return f"Records({n})"


@dataclass
class ImportReport:
    """What :meth:`NudgeState.import_traces` did.

    ``imported``: new traces; ``skipped_duplicates``: records whose (source, external id) was
    already in the log, or whose run or span a live search with the same query ran in (their
    new feedback, if any, joined that trace);
    ``feedback``: feedback rows added; ``unknown_ids``: distinct chunk ids the store does not
    hold (dropped from results and feedback), ``records_with_unknown_ids`` how many records named
    one; ``bad``: ``(record number, external id, reason)`` of records not imported (also
    items a reader could not read, and rows the database refused); ``future_times``: records
    or feedback whose time lay more than ``max_future_s`` ahead of this machine's clock and
    were kept at the import's time (``future_examples``: up to 10 ``(record number, external
    id, time)``); ``resolved``: retrieved documents whose chunk id a reader found, by way
    (``id``, ``metadata``, ``content``); ``unresolved``: ``(record number, external id, hint)``
    of records with documents it could not resolve (their ids are missing from the trace; a
    record with none resolved is not imported).
    """

    imported: int = 0
    skipped_duplicates: int = 0
    feedback: int = 0
    unknown_ids: int = 0
    records_with_unknown_ids: int = 0
    bad: list[tuple[int, str | None, str]] = field(default_factory=list)
    future_times: int = 0
    future_examples: list[tuple[int, str | None, float]] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)  # the new traces, in record order
    unknown_examples: list[str] = field(default_factory=list)  # up to 10 unknown ids
    resolved: dict[str, int] = field(default_factory=dict)
    unresolved: list[tuple[int, str | None, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every record imported whole: none bad, no unknown or unresolved ids."""
        return not (self.bad or self.unknown_ids or self.unresolved)

    def __str__(self) -> str:
        text = (
            f"imported {self.imported} traces, {self.skipped_duplicates} already there, "
            f"{self.feedback} feedback rows; {self.unknown_ids} unknown chunk ids in "
            f"{self.records_with_unknown_ids} records; {len(self.bad)} bad records"
        )
        if self.bad:
            n, ext, why = self.bad[0]
            text += f" (e.g. record {n} {ext!r}: {why})"
        if self.future_times:
            n, ext, tm = self.future_examples[0]
            text += (
                f"; {self.future_times} times ahead of this clock set to the import's time "
                f"(e.g. record {n} {ext!r}: {time_text(tm)})"
            )
        if self.resolved or self.unresolved:
            ways = ", ".join(f"{v} by {k}" for k, v in self.resolved.items()) or "none"
            text += f"; documents resolved to chunk ids: {ways}"
        if self.unresolved:
            n, ext, hint = self.unresolved[0]
            text += (
                f"; {len(self.unresolved)} records with unresolved documents "
                f"(e.g. record {n} {ext!r}: {hint})"
            )
        return text


def as_epoch(value: float | datetime | str | None, *, what: str, default: float) -> float:
    """``value`` as epoch seconds: a number, a datetime (naive: UTC) or an ISO 8601 string."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            msg = f"{what}: expected a time (epoch seconds or ISO 8601), found {value!r}"
            raise BadInputError(msg) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    ts = getattr(value, "timestamp", None)  # pandas.Timestamp is a datetime; numpy datetime64
    if callable(ts) and not isinstance(value, int | float):
        return float(ts())
    if isinstance(value, np.datetime64):
        return float(value.astype("datetime64[ns]").astype(np.int64)) / 1e9
    return _finite(
        _as_float(value, what, "a time (epoch seconds or ISO 8601)"), value, what, "time"
    )


def _as_float(value: Any, what: str, expected: str) -> float:
    """``float(value)``, or a NudgeError naming ``what``, the ``expected`` kind and the value."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        msg = f"{what}: expected {expected}, found {value!r:.80}"
        raise BadInputError(msg) from None


def _finite(out: float, value: Any, what: str, kind: str) -> float:
    """``out`` if finite, else a NudgeError naming ``what`` and the ``value`` given."""
    if not math.isfinite(out):
        msg = f"{what}: expected a finite {kind}, found {value!r}"
        raise BadInputError(msg)
    return out


def time_text(tm: float) -> str:
    """Epoch seconds as ISO 8601 UTC when a calendar holds them, else as the number."""
    try:
        return datetime.fromtimestamp(tm, timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return repr(tm)


def current_external_id() -> tuple[str, str] | None:
    """(source, id) of the run or span the calling code runs in, or None (~1 µs).

    The LangChain retriever run (set by the faces' retrievers) wins; else the current
    OpenTelemetry span, looked up only when the application has imported OpenTelemetry (no
    import here: a span cannot be active in a process that never imported it).
    """
    run = EXTERNAL_RUN.get()
    if run is not None:
        return run
    otel = sys.modules.get("opentelemetry.trace")
    if otel is None:
        return None
    try:
        ctx = otel.get_current_span().get_span_context()
    except Exception:  # an odd SDK must never fail a search
        return None
    if not ctx.is_valid:
        return None
    return OTEL, format(ctx.span_id, "016x")


def span_id_text(value: Any) -> str:
    """An OpenTelemetry span id as 16 hex digits (from an int, hex text or base64 of 8 bytes)."""
    if isinstance(value, int):
        return format(value, "016x")
    text = str(value).strip()
    if text.lower().startswith("0x"):
        text = text[2:]
    if len(text) == 16 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    if len(text) == 12:  # OTLP/JSON from some exporters: base64 of the 8 bytes
        import base64
        import binascii

        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return text
        if len(raw) == 8:
            return raw.hex()
    return text


def _derived_id(query: str, time: float | None, ids: list[str]) -> str:
    """A stable id for a record that came without one (same content, same id)."""
    import hashlib

    raw = json.dumps([query, repr(time), ids], ensure_ascii=True)
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def _id_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        msg = f"{what}: expected a list of chunk ids, found the single {value!r:.80}"
        raise BadInputError(msg)
    try:
        return [str(i) for i in value]
    except TypeError:
        msg = f"{what}: expected a list of chunk ids, found {type(value).__name__}"
        raise BadInputError(msg) from None


def storable(text: str) -> bool:
    """Whether ``text`` can be stored as it is, as text, by SQLite and Postgres alike (no NUL
    character, no lone surrogate): ids are never altered, so an id that is not is refused."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(value: Any, what: str) -> str:
    """An external id or source: text storable as it is (see :func:`storable`)."""
    text = str(value)
    if not storable(text):
        msg = (
            f"{what}: {text!r:.80} holds a NUL character or a lone surrogate, which the trace "
            "log cannot store as an id; fix the exporter, or drop the field to derive an id"
        )
        raise BadInputError(msg)
    return text


def _number(value: Any, what: str) -> float | None:
    """A finite float, or None for None / NaN / inf (a score that was not kept)."""
    if value is None:
        return None
    out = _as_float(value, what, "a number or None")
    return out if math.isfinite(out) else None


def _scores(value: Any, n: int) -> list[float]:
    if value is None:
        return [float("nan")] * n
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        msg = f"scores: expected a list of numbers, one per result id, found {value!r:.80}"
        raise BadInputError(msg)
    out = []
    for i, s in enumerate(value):
        x = _number(s, f"scores[{i}]")
        out.append(float("nan") if x is None else x)
    if len(out) != n:
        msg = f"scores: expected one per result id ({n}), found {len(out)}"
        raise BadInputError(msg)
    return out


def _k(value: Any, n: int) -> int:
    k = n if value is None else value
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= _K_MAX:
        msg = f"k: expected an integer in 1..2**63-1 (results asked for), found {value!r:.80}"
        raise BadInputError(msg)
    return max(int(k), 1)


def _rating(value: Any) -> float | None:
    if value is None:
        return None
    return _finite(_as_float(value, "rating", "a number or None"), value, "rating", "number")


@dataclass
class _Prepared:
    n: int
    source: str
    ext: str
    time: float
    query: str
    embedding: Any
    ids: list[str]
    scores: list[float]
    k: int
    filter: str | None
    feedback: list[tuple[float | None, list[str], list[str], float | None, str | None, str]]
    future: float | None = None  # the original time, when it lay ahead and was clamped


@dataclass(frozen=True)
class _TimePolicy:
    """How far ahead of ``now`` a time may lie, and what happens beyond (see FutureTimes)."""

    now: float
    max_future_s: float | None = MAX_FUTURE_S
    mode: FutureTimes = FutureTimes.CLAMP

    def ahead(self, tm: float, what: str) -> bool:
        """Whether ``tm`` lies too far ahead (to clamp); raises when such times are refused."""
        if self.max_future_s is None or tm <= self.now + self.max_future_s:
            return False
        if self.mode is FutureTimes.REFUSE:
            msg = (
                f"{what}: {time_text(tm)} lies {tm - self.now:.3g} s ahead of this machine's "
                f"clock (more than max_future_s={self.max_future_s:g}); fix the clock that "
                "recorded it, or pass future_times='clamp' to keep it at the import's time"
            )
            raise BadInputError(msg)
        return True


def _prepare(rec: Any, n: int, source: str | None, policy: _TimePolicy) -> _Prepared:
    """Check and convert one record, so that its row cannot be refused by the database; a
    NudgeError names what is wrong with it."""
    if isinstance(rec, Unreadable):
        raise BadInputError(str(rec))
    if not isinstance(rec, TraceRecord):
        msg = f"expected a TraceRecord, found {type(rec).__name__}"
        raise BadInputError(msg)
    if not isinstance(rec.query, str) or not rec.query.strip():
        msg = f"query: expected the query text, found {rec.query!r:.80}"
        raise BadInputError(msg)
    src = source or rec.source
    if not src:
        msg = "source: the record names none; pass source='...' to import_traces"
        raise BadInputError(msg)
    src = _name(src, "source")
    ext = None if not rec.external_id else _name(rec.external_id, "external_id")
    tm = as_epoch(rec.time, what="time", default=policy.now)
    clamp = policy.ahead(tm, "time")
    future = tm if clamp else None
    ids = _id_list(rec.result_ids, "result_ids")
    scores = _scores(rec.scores, len(ids))
    k = _k(rec.k, len(ids))
    feedback = []
    for f in rec.feedback or ():
        if not isinstance(f, FeedbackRecord):
            msg = f"feedback: expected FeedbackRecord items, found {type(f).__name__}"
            raise BadInputError(msg)
        if f.text is not None and not isinstance(f.text, str):
            msg = f"feedback text: expected a str or None, found {type(f.text).__name__}"
            raise BadInputError(msg)
        rel = _id_list(f.relevant_ids, "feedback relevant_ids")
        irr = [i for i in _id_list(f.irrelevant_ids, "feedback irrelevant_ids") if i not in rel]
        # no time anywhere: None, so that importing the record again finds this feedback
        f_time = (
            None
            if f.time is None and rec.time is None
            else as_epoch(f.time, what="feedback time", default=tm)
        )
        if f_time is not None and policy.ahead(f_time, "feedback time"):
            future = f_time if future is None else future
            f_time = None  # the import's time; found again by its content on a re-import
        text = None if f.text is None else clean_text(f.text)
        prov = check_provenance(f.provenance)
        feedback.append((f_time, rel, irr, _rating(f.rating), text, prov))
    try:
        flt = filter_as_dict(rec.filter)
        flt_json = None if flt is None else json.dumps(flt)
    except RecursionError:
        msg = "filter: nested too deeply to store; pass the filter the search used, or None"
        raise BadInputError(msg) from None
    return _Prepared(
        n=n,
        source=src,
        # the original time: a clamped record keeps its derived id on a re-import
        ext=ext or _derived_id(rec.query, None if rec.time is None else tm, ids),
        time=policy.now if clamp else tm,
        query=clean_text(rec.query),
        embedding=rec.embedding,
        ids=ids,
        scores=scores,
        k=k,
        filter=flt_json,
        feedback=feedback,
        future=future,
    )


def import_records(
    state: NudgeState,
    records: Iterable[TraceRecord],
    *,
    source: str | None = None,
    strict: bool = False,
    max_future_s: float | None = MAX_FUTURE_S,
    future_times: FutureTimes | str = FutureTimes.CLAMP,
    progress: bool | None = None,
    batch_size: int = 256,
) -> ImportReport:
    """What :meth:`NudgeState.import_traces` does (see there)."""
    if source is not None and (not isinstance(source, str) or not source):
        msg = f"source: expected a name such as 'langsmith' or None, found {source!r}."
        raise BadInputError(msg)
    if isinstance(records, TraceRecord | str | bytes):
        msg = "records: expected an iterable of TraceRecord, found one item; pass [record]."
        raise BadInputError(msg)
    if max_future_s is not None and (
        isinstance(max_future_s, bool)
        or not isinstance(max_future_s, int | float)
        or not 0 <= max_future_s < math.inf
    ):
        msg = f"max_future_s: expected seconds >= 0 or None, found {max_future_s!r}; e.g. 300."
        raise BadInputError(msg)
    try:
        mode = FutureTimes(future_times)
    except ValueError:
        msg = f"future_times: expected 'clamp' or 'refuse', found {future_times!r}."
        raise BadInputError(msg) from None
    run = _Import(state, source, ImportReport(), max_future_s, mode)
    entries = records.entries() if isinstance(records, Records) else iter(records)
    bar = _progress_bar(progress)
    batch: list[tuple[int, Any]] = []
    held: list[tuple[int, tuple]] = []  # strict: every row waits until all records are checked
    try:
        for n, rec in enumerate(entries):
            bar.update(1)
            if not _count_resolution(run.report, n, rec):
                continue
            batch.append((n, rec))
            if len(batch) >= batch_size:
                held += run.batch(batch, write=not strict)
                batch = []
        held += run.batch(batch, write=not strict)
    finally:
        bar.close()
    report = run.report
    if strict:
        if report.bad:
            n, ext, why = report.bad[0]
            more = f" ({len(report.bad) - 1} more bad records)" if len(report.bad) > 1 else ""
            msg = (
                f"records: record {n} (external id {ext!r}) cannot be imported: {why}{more}; "
                "nothing was stored. Fix or drop it, or pass strict=False to import the rest."
            )
            raise BadInputError(msg)
        run.write(held)
    report.unknown_ids = len(run.unknown)
    report.unknown_examples = sorted(run.unknown)[:10]
    if report.future_times:
        warnings.warn(
            f"import_traces: {report.future_times} records or feedback lay more than "
            f"{max_future_s:g} s ahead of this machine's clock and were kept at the import's "
            "time (report.future_examples names them); pass future_times='refuse' to refuse "
            "them instead.",
            RuntimeWarning,
            stacklevel=3,
        )
    return report


def _count_resolution(report: ImportReport, n: int, rec: Any) -> bool:
    """Count how a reader resolved ``rec``'s documents; False when none was (not imported,
    so that importing again with the hint's fix adds it)."""
    res = getattr(rec, "resolution", None)
    if not isinstance(res, Resolution):
        return True
    found = (("id", res.by_id), ("metadata", res.by_metadata), ("content", res.by_content))
    for way, count in found:
        if count:
            report.resolved[way] = report.resolved.get(way, 0) + count
    some = any(count for _, count in found)
    if res.unresolved:
        what = f"{res.unresolved} documents without a chunk id{'' if some else ', not imported'}"
        report.unresolved.append((n, getattr(rec, "external_id", None), f"{what}; {res.hint}"))
    return some or not res.unresolved


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(progress: bool | None) -> Any:
    """A tqdm bar counting records (``None``: on a terminal, shown after 2 s), if tqdm is
    installed; else nothing is shown."""
    auto = progress is None
    if auto:
        progress = sys.stderr is not None and sys.stderr.isatty()
    if not progress:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional (the cli / demo extras)
        return _NoBar()
    return tqdm(desc="importing traces", unit=" records", delay=2.0 if auto else 0.0)


@dataclass
class _Import:
    """One import under way: its options, report, and what it learnt so far."""

    state: NudgeState
    source: str | None
    report: ImportReport
    max_future_s: float | None
    mode: FutureTimes
    unknown: set[str] = field(default_factory=set)
    dim: list[int] = field(default_factory=list)

    def batch(self, batch: list[tuple[int, Any]], *, write: bool) -> list[tuple[int, tuple]]:
        """Check, embed and (``write``) store one batch; return its rows if not written.

        Every record is checked and converted first (see :func:`_prepare`); one that fails, in
        any way, is listed in ``report.bad`` and costs no other.
        """
        if not batch:
            return []
        state, report = self.state, self.report
        policy = _TimePolicy(_time.time(), self.max_future_s, self.mode)
        ready: list[_Prepared] = []
        for n, rec in batch:
            try:
                ready.append(_prepare(rec, n, self.source, policy))
            except Exception as e:  # any failure costs this record only
                why = str(e) if isinstance(e, NudgeError) else f"{type(e).__name__}: {e}"
                ext = getattr(rec, "external_id", None)
                report.bad.append((n, None if ext is None else str(ext), why))
        # chunk ids the store does not hold are dropped (parents expand to their chunks); an
        # id no store can hold as text (a NUL, a lone surrogate) is not even asked about
        asked = list(
            dict.fromkeys(i for p in ready for i in p.ids + _feedback_ids(p) if storable(i))
        )
        held = state.known_ids(asked)
        missing = [i for i in asked if i not in held]
        children = (
            state.children(missing, state.parent_id_key) if missing and state.parent_id_key else {}
        )
        for p in ready:
            gone = {i for i in p.ids + _feedback_ids(p) if i not in held and not children.get(i)}
            if gone:
                self.unknown.update(gone)
                report.records_with_unknown_ids += 1
            keep = [(i, s) for i, s in zip(p.ids, p.scores, strict=True) if i in held]
            p.ids, p.scores = [i for i, _ in keep], [s for _, s in keep]
            p.feedback = [
                (t, _expand(rel, held, children), _expand(irr, held, children), r, x, v)
                for t, rel, irr, r, x, v in p.feedback
            ]
            p.feedback = [f for f in p.feedback if f[1] or f[2] or f[3] is not None or f[4]]
        if not self.dim:
            some = next((i for p in ready for i in p.ids if i in held), None)
            if some is not None:
                self.dim.append(int(state.get_vectors([some]).shape[1]))
        vectors = _embeddings(state, ready, report, self.dim)
        rows = []
        for p in ready:
            vec = vectors.get(p.n)
            if vec is None:
                continue
            if p.future is not None:
                report.future_times += 1
                if len(report.future_examples) < 10:
                    report.future_examples.append((p.n, p.ext, p.future))
            blob, d = embedding_blob(vec)
            row = (p.source, p.ext, p.time, p.query, blob, d, p.k, p.filter, p.ids, p.scores)
            rows.append((p.n, (*row, p.feedback)))
        if not write:
            return rows
        self.write(rows)
        return []

    def write(self, rows: list[tuple[int, tuple]]) -> None:
        """Store ``(record number, row)`` pairs; a row the database refuses is listed as bad."""
        report = self.report
        done = self.state.trace_log.import_rows([r for _, r in rows])
        for (n, row), (tid, status, added) in zip(rows, done, strict=True):
            report.feedback += added
            if status == "new":
                report.imported += 1
                report.trace_ids.append(tid)
            elif status == "refused":  # tid is the database's reason
                report.bad.append((n, row[1], tid))
            else:
                report.skipped_duplicates += 1


def _feedback_ids(p: _Prepared) -> list[str]:
    return [i for f in p.feedback for i in f[1] + f[2]]


def _expand(ids: list[str], held: set[str], children: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for i in ids:
        out.extend([i] if i in held else children.get(i, []))
    return list(dict.fromkeys(out))


def _embeddings(
    state: NudgeState, ready: list[_Prepared], report: ImportReport, dim: list[int]
) -> dict[int, np.ndarray]:
    """Each record's query vector: the given one, checked, or embedded (in one batch)."""
    out: dict[int, np.ndarray] = {}
    todo = [p for p in ready if p.embedding is None]
    if todo:
        try:
            got = list(zip(todo, state.embed_queries([p.query for p in todo]), strict=True))
        except Exception as e:  # the embedder's own error: retried one by one
            if isinstance(e, NudgeError) and "without an embedding function" in str(e):
                raise
            got = []
            for p in todo:  # one text the embedder refuses must not cost the others
                try:
                    got.append((p, state.embed_queries([p.query])[0]))
                except Exception as e1:  # reported with the record
                    report.bad.append((p.n, p.ext, f"embedding the query failed: {e1}"))
        for p, v in got:
            p.embedding = v
    for p in ready:
        if p.embedding is None:
            continue
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                vec = np.asarray(p.embedding, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            report.bad.append((p.n, p.ext, f"embedding: not a vector of numbers ({e})"))
            continue
        if not dim and vec.size:
            dim.append(int(vec.size))
        problem = embedding_problem(vec, dim[0] if dim else None)
        if problem is not None:
            report.bad.append((p.n, p.ext, f"embedding: {problem}"))
            continue
        out[p.n] = vec
    return out
