"""Helpers shared by the readers: objects as dicts, JSON files read lazily, documents as ids
and scores."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.state.records import FeedbackRecord, Records, TraceRecord, Unreadable

POSITIVE_LABELS = frozenset(
    {"relevant", "correct", "yes", "true", "good", "positive", "1", "thumbs_up", "helpful"}
)
NEGATIVE_LABELS = frozenset(
    {"irrelevant", "unrelated", "incorrect", "no", "false", "bad", "negative", "0", "thumbs_down"}
)


def as_dict(obj: Any) -> dict:
    """A pydantic model, dataclass-like object or mapping as a plain dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    for name in ("model_dump", "dict"):
        dump = getattr(obj, name, None)
        if callable(dump):
            try:
                out = dump()
            except TypeError:
                continue
            if isinstance(out, Mapping):
                return dict(out)
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    msg = f"expected a record object or a dict, found {type(obj).__name__}"
    raise BadInputError(msg)


def items(source: Any, what: str, *, data_key: str | None = None) -> Iterator[Any]:
    """``source``'s items, one at a time: an iterable of objects, a JSON / JSONL file path (read
    lazily, see :func:`iter_json_file`; an item it cannot read comes as an
    :class:`~nudge_rag.state.records.Unreadable`), or an API page (a dict whose ``data_key``
    holds the list)."""
    if source is None:
        return iter(())
    if isinstance(source, str | os.PathLike):
        return iter_json_file(Path(source), what, data_key=data_key)
    if isinstance(source, Mapping):
        if data_key is not None and isinstance(source.get(data_key), list):
            return iter(source[data_key])
        return iter([source])
    if isinstance(source, Iterable):
        return iter(source)
    msg = f"{what}: expected a list of records or a JSON/JSONL path, found {type(source).__name__}."
    raise BadInputError(msg)


def one_shot(source: Any) -> bool:
    """Whether ``source`` can be iterated only once (a generator, an iterator)."""
    return isinstance(source, Iterator)


def every(source: Any, what: str, *, data_key: str | None = None) -> Iterator[Any]:
    """Every item of ``source`` (see :func:`items`); an unreadable one raises a NudgeError."""
    for x in items(source, what, data_key=data_key):
        if isinstance(x, Unreadable):
            raise BadInputError(str(x))
        yield x


def searches(
    source: Any,
    what: str,
    hint: str,
    documents: Callable[[dict], list[Any] | None],
    *,
    data_key: str | None = None,
) -> Iterator[tuple[str, dict, list[Any]] | Unreadable]:
    """The entries :meth:`~nudge_rag.importers.resolve.Resolver.stream` reads: ``(where, item
    as a dict, its documents)`` for each item of ``source`` (see :func:`items`) that
    ``documents`` finds a search (it returns None for any other item), or an Unreadable for one
    that cannot be read or is not a record (``hint``: what to pass instead)."""
    for n, x in enumerate(items(source, what, data_key=data_key)):
        if isinstance(x, Unreadable):
            yield x
            continue
        try:
            d = as_dict(x)
        except NudgeError as e:
            yield Unreadable(f"{what}[{n}]", f"{e}; {hint}")
            continue
        docs = documents(d)
        if docs is not None:
            yield f"{what}[{n}]", d, docs


def every_dict(source: Any, what: str, hint: str, *, data_key: str | None = None) -> Iterator[dict]:
    """Every item of ``source`` as a dict; one that cannot be read raises a BadInputError
    naming it (``hint``: what to pass instead)."""
    for n, x in enumerate(every(source, what, data_key=data_key)):
        try:
            yield as_dict(x)
        except NudgeError as e:
            msg = f"{what}[{n}]: {e}; {hint}"
            raise BadInputError(msg) from None


def lazy(produce: Callable[[], Iterator[Any]], *sources: Any) -> Records:
    """A reader's :class:`~nudge_rag.state.records.Records` from ``produce`` (a generator
    function over its ``sources``): readable again unless a source is a one-shot iterator."""
    return Records(produce, once=any(one_shot(s) for s in sources))


def converted(where: str, make: Callable[..., TraceRecord], *args: Any) -> TraceRecord | Unreadable:
    """``make(*args)``, or an Unreadable naming ``where`` and why it failed (one odd item of an
    export must not end the import)."""
    try:
        return make(*args)
    except Exception as e:  # any failure costs this item only
        why = str(e) if isinstance(e, NudgeError) else f"{type(e).__name__}: {e}"
        return Unreadable(where, why)


def iter_json_file(path: Path, what: str, *, data_key: str | None = None) -> Iterator[Any]:
    """The records of a JSON or JSONL file, decoded one at a time: memory holds about one record,
    however large the file.

    A top-level array yields its items; otherwise each top-level value (JSONL: one a line, or a
    single document spread over lines) is a record, except an object whose ``data_key`` holds
    an array (an API page), which yields that array's items. A value that is not valid JSON
    comes as an :class:`~nudge_rag.state.records.Unreadable` naming its line; in JSONL the next
    line is read next, inside an array the rest of the file cannot be read.
    """
    try:
        f = path.open(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        msg = f"{what}: cannot read {path} ({e}); pass the path of a JSON or JSONL export."
        raise BadInputError(msg) from None
    return _file_items(f, path, what, data_key)


def _file_items(f: Any, path: Path, what: str, data_key: str | None) -> Iterator[Any]:
    with f:
        s = _JsonStream(f)
        try:
            if s.peek() == "[":
                s.take("[")
                yield from _array(s, path, what)
                return
            while s.peek():
                try:
                    if s.peek() == "{" and data_key is not None:
                        yield from _object(s, path, what, data_key)
                    else:
                        yield s.value()
                except _BadJson as e:
                    yield Unreadable(f"{what}: {path} line {e.line}", f"not valid JSON ({e.why})")
                    s.skip_line()
        except _Stop:
            return


class _BadJson(Exception):
    def __init__(self, line: int, why: str) -> None:
        self.line, self.why = line, why


class _Stop(Exception):
    """The rest of the file cannot be read (said by the Unreadable just yielded)."""


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_CHUNK = 1 << 18  # characters read at a time (more when one value is longer)
_MARGIN = 32  # a value decoded this close to the buffer's end may go on (a number's exponent)


class _JsonStream:
    """JSON values decoded one at a time from a text file, through a buffer that holds about one
    value (``json.JSONDecoder.raw_decode``; a value cut by the buffer's end is read again with
    more text)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.lines = 1  # the line of buf[counted]
        self.counted = 0

    def _more(self, at_least: int = _CHUNK) -> bool:
        """Drop the text read, append more; False at the end of the file."""
        if self.pos:
            self.lines = self.line(self.pos)
            self.buf = self.buf[self.pos :]
            self.pos = self.counted = 0
        if self.eof:
            return False
        chunk = self.f.read(max(at_least, _CHUNK))
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def line(self, pos: int | None = None) -> int:
        """The line number at ``pos`` (default: here); counted once, as the reading goes on."""
        pos = self.pos if pos is None else pos
        if pos < self.counted:
            return self.lines - self.buf.count("\n", pos, self.counted)
        self.lines += self.buf.count("\n", self.counted, pos)
        self.counted = pos
        return self.lines

    def peek(self) -> str:
        """The next character that is not white space ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def take(self, ch: str) -> None:
        found = self.peek()
        if found != ch:
            raise _BadJson(self.line(), f"expected {ch!r}, found {found or 'the end'!r}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                cut = e.msg.startswith("Unterminated string") or e.pos + _MARGIN >= len(self.buf)
                if cut and not self.eof:
                    self._more(2 * (len(self.buf) - self.pos))  # moves the text: decode again
                    continue
                raise _BadJson(self.line(), e.msg) from None
            except RecursionError:
                raise _BadJson(self.line(), "nested too deeply") from None
            if end + _MARGIN > len(self.buf) and not self.eof:
                self._more(2 * (len(self.buf) - self.pos))
                continue
            self.pos = end
            return obj

    def skip_line(self) -> None:
        """Skip past the end of this line (after a bad value)."""
        while True:
            nl = self.buf.find("\n", self.pos)
            if nl >= 0:
                self.pos = nl + 1
                return
            self.pos = len(self.buf)
            if not self._more():
                return


def _array(s: _JsonStream, path: Path, what: str) -> Iterator[Any]:
    """The items of an array whose ``[`` was taken; a bad item ends it (nothing after can be
    told apart)."""
    try:
        if s.peek() == "]":
            s.take("]")
            return
        while True:
            yield s.value()
            if s.peek() == ",":
                s.take(",")
                continue
            s.take("]")
            return
    except _BadJson as e:
        yield Unreadable(
            f"{what}: {path} line {e.line}",
            f"not valid JSON ({e.why}); the rest of the file was not read",
        )
        raise _Stop from None


def _object(s: _JsonStream, path: Path, what: str, data_key: str) -> Iterator[Any]:
    """A top-level object read key by key: a page's ``data_key`` array yields its items, one
    at a time; any other object is one record."""
    s.take("{")
    out: dict[str, Any] = {}
    page = False
    if s.peek() == "}":
        s.take("}")
    else:
        while True:
            key = s.value()
            if not isinstance(key, str):
                raise _BadJson(s.line(), f"expected a key, found {key!r:.40}")
            s.take(":")
            if key == data_key and s.peek() == "[":
                page = True
                s.take("[")
                yield from _array(s, path, what)
            else:
                out[key] = s.value()
            if s.peek() == ",":
                s.take(",")
                continue
            s.take("}")
            break
    if not page:
        yield out


def get(d: Mapping, *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` present (and not None) in ``d``."""
    for k in keys:
        v = d.get(k)
        if v is not None:
            return v
    return default


def query_text(value: Any) -> str | None:
    """The query of a retriever's input: a string, or a dict's query/input/question."""
    if isinstance(value, str):
        try:  # a JSON-encoded input (OpenInference input.value with a JSON mime type)
            decoded = json.loads(value)
        except (json.JSONDecodeError, ValueError):
            return value
        return query_text(decoded) if isinstance(decoded, dict) else value
    if isinstance(value, Mapping):
        for k in ("query", "input", "question", "query_str", "text"):
            v = value.get(k)
            if isinstance(v, str):
                return v
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0]
    return None


def number_or_nan(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if math.isfinite(out) else float("nan")


def document_id(doc: Any, id_key: str | None) -> str | None:
    """A retrieved document's chunk id: ``metadata[id_key]``, else its ``id``, else
    ``metadata["id"]`` (LangChain documents); a bare string is the id itself."""
    if isinstance(doc, str):
        return doc
    d = as_dict(doc) if not isinstance(doc, Mapping) else doc
    meta = d.get("metadata") or d.get("document.metadata") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = {}
    if id_key is not None and isinstance(meta, Mapping) and meta.get(id_key) is not None:
        return str(meta[id_key])
    found = get(d, "id", "document.id", "doc_id", "node_id")
    if found is None and isinstance(meta, Mapping):
        found = get(meta, "id", "doc_id", "document_id")
    return None if found is None else str(found)


def document_score(doc: Any, score_key: str | None) -> float:
    if not isinstance(doc, Mapping):
        return float("nan")
    found = doc.get("metadata")
    meta: Mapping = found if isinstance(found, Mapping) else {}
    if score_key is not None:
        return number_or_nan(get(doc, score_key) if score_key in doc else meta.get(score_key))
    keys = ("score", "document.score", "relevance_score")
    return number_or_nan(get(doc, *keys, default=get(meta, *keys)))


def results(
    docs: list[Any], ids: list[str | None], score: Callable[[Any], float | None]
) -> tuple[list[str], list[float | None]]:
    """The chunk ids found, in order, and ``score`` of each one's document (documents whose
    chunk was not found are left out)."""
    kept = [(i, score(doc)) for doc, i in zip(docs, ids, strict=True) if i is not None]
    return [i for i, _ in kept], [s for _, s in kept]


def label_relevance(label: Any, score: Any) -> bool | None:
    """True (relevant), False (irrelevant) or None from a label, else a 0..1 score."""
    if isinstance(label, bool):
        return label
    if isinstance(label, str) and label.strip():
        norm = label.strip().lower().replace(" ", "_").replace("-", "_")
        if norm in POSITIVE_LABELS:
            return True
        if norm in NEGATIVE_LABELS:
            return False
    if isinstance(score, bool):
        return score
    s = number_or_nan(score)
    if math.isnan(s):
        return None
    return s >= 0.5


def feedback_record(
    d: Mapping,
    relevant: list[str],
    irrelevant: list[str],
    rating: float | None,
    time: Any,
    *,
    provenance: str = "human",
) -> FeedbackRecord | None:
    """One feedback record from a tool's feedback item ``d`` (its ``comment`` is the text), or
    None when it says nothing: no ids, no rating, no comment."""
    text = d.get("comment") if isinstance(d.get("comment"), str) else None
    if not relevant and not irrelevant and rating is None and not text:
        return None
    return FeedbackRecord(
        relevant_ids=relevant,
        irrelevant_ids=irrelevant,
        rating=rating,
        text=text,
        time=time,
        provenance=provenance,
    )


def score_scale(numeric_range: tuple[float, float]) -> tuple[float, float]:
    """``numeric_range`` (worst, best) checked: a tool's numeric scores map onto 0..1."""
    lo, hi = (float(x) for x in numeric_range)
    if not hi > lo:
        msg = (
            f"numeric_range: expected (worst, best) with best > worst, found {numeric_range!r}; "
            "pass e.g. (1, 5) for five-star scores."
        )
        raise BadInputError(msg)
    return lo, hi


def scaled_rating(score: float, scale: tuple[float, float]) -> float | None:
    """A numeric score as a 0..1 rating on ``scale`` (clipped); None for NaN."""
    lo, hi = scale
    return None if score != score else min(1.0, max(0.0, (score - lo) / (hi - lo)))
