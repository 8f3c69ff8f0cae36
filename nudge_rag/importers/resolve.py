"""Chunk ids for retrieved documents that a tool kept without one.

Observability tools often keep a retrieved document as its text and metadata only
(OpenInference's LangChain spans: ``document.content``; LangChain runs whose documents have no
``id``). A reader hands each record's documents here as :class:`Doc` and gets back their chunk
ids, in order of trust:

1. the document's own id;
2. a metadata key: ``id_key`` when given, else the usual id keys (``id``, ``doc_id``,
   ``document_id``, ``chunk_id``, ``node_id``) and, with a store to check them against, the
   keys that often name a document (``source``, ``ref_doc_id``, ``file_path``, ...) when their
   value is an id the store holds;
3. with a store, the document's text: an index of the store's chunk texts to their ids, built
   once, streaming, by page (exact text first, whitespace-normalised text second; a text held
   by two chunks matches neither).

Each record gets a :class:`~nudge_rag.state.records.Resolution` saying how its documents were
found and, for those that were not, the hint that would find them; ``store.import_traces``
counts both in its report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.state.records import Resolution, Unreadable

__all__ = ["ContentIndex", "Doc", "Resolver", "as_doc", "resolve"]

ID_KEYS = ("id", "doc_id", "document_id", "chunk_id", "node_id")
# metadata keys that name a document: used only when the store holds their value as an id
NAME_KEYS = ("source", "ref_doc_id", "file_path", "file_name", "url", "uuid", "_id", "pk", "key")
_PAGE = 1000
_AMBIGUOUS = ""


@dataclass(frozen=True)
class Doc:
    """A retrieved document as a tool kept it: its id (if any), metadata and text."""

    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    content: str | None = None


def metadata_dict(value: Any) -> Mapping[str, Any]:
    """Metadata as a mapping (JSON text decoded; anything else empty)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, Mapping) else {}


def as_doc(doc: Any) -> Doc:
    """A document as a LangChain / LlamaIndex / tool export keeps it (a dict or an object with
    ``id`` / ``page_content`` / ``metadata``; a bare string is an id)."""
    if isinstance(doc, str):
        return Doc(id=doc)
    if isinstance(doc, Doc):
        return doc
    if doc is None or isinstance(doc, int | float | list | tuple):
        msg = f"expected a record object or a dict, found {type(doc).__name__}"
        raise BadInputError(msg)
    if not isinstance(doc, Mapping):
        doc = {k: getattr(doc, k, None) for k in ("id", "page_content", "text", "metadata")}
    own = doc.get("id")
    if own is None:
        own = doc.get("doc_id", doc.get("node_id"))
    text = doc.get("page_content", doc.get("text", doc.get("content")))
    return Doc(
        id=None if own in (None, "") else str(own),
        metadata=metadata_dict(doc.get("metadata")),
        content=text if isinstance(text, str) else None,
    )


def _state(store: Any) -> Any:
    return getattr(store, "nudge_state", store)


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _norm(text: str) -> str:
    return " ".join(text.split())


class ContentIndex:
    """The store's chunk texts (exact and whitespace-normalised) to their ids.

    Built by page (``page`` ids at a time through the store's text reader), keeping a 16-byte
    digest per text, not the texts.
    """

    def __init__(self, store: Any, *, page: int = _PAGE) -> None:
        state = _state(store)
        self.exact: dict[bytes, str] = {}
        self.normal: dict[bytes, str] = {}
        ids = state.ids()
        self.size = len(ids)
        self.without_text = 0
        for start in range(0, len(ids), page):
            chunk = ids[start : start + page]
            for i, text in zip(chunk, state.texts(chunk), strict=True):
                if not text:
                    self.without_text += 1
                    continue
                for table, key in ((self.exact, _key(text)), (self.normal, _key(_norm(text)))):
                    table[key] = i if table.get(key, i) == i else _AMBIGUOUS

    def lookup(self, text: str) -> str | None:
        """The id of the one chunk with this text (exact, else normalised), or None."""
        found = self.exact.get(_key(text)) or self.normal.get(_key(_norm(text)))
        return found or None


def resolve(
    records: Sequence[Sequence[Doc]],
    *,
    store: Any = None,
    id_key: str | None = None,
    content_index: ContentIndex | None = None,
) -> list[tuple[list[str | None], Resolution]]:
    """Each record's document ids (None where unresolved) and its :class:`Resolution`.

    ``store``: a nudge-rag store (either face, or a ``NudgeState``) to check metadata values
    against and to match texts with; ``id_key``: the metadata key that holds the chunk id.
    """
    if id_key is not None and (not isinstance(id_key, str) or not id_key):
        msg = f"id_key: expected a metadata key such as 'source', found {id_key!r}."
        raise BadInputError(msg)
    state = None if store is None else _state(store)
    if state is not None and not hasattr(state, "known_ids"):
        msg = (
            f"store: expected a nudge-rag store (NudgedVectorStore, either face) or a "
            f"NudgeState, found {type(store).__name__}."
        )
        raise BadInputError(msg)
    held: set[str] = set()
    if state is not None and id_key is None:
        asked = list(
            dict.fromkeys(
                str(d.metadata[k])
                for docs in records
                for d in docs
                if not d.id
                for k in NAME_KEYS
                if d.metadata.get(k) is not None
            )
        )
        for start in range(0, len(asked), 10 * _PAGE):
            held |= state.known_ids(asked[start : start + 10 * _PAGE])
    index = content_index
    out = []
    for docs in records:
        ids: list[str | None] = []
        counts = {"id": 0, "metadata": 0, "content": 0}
        missing: list[Doc] = []
        for d in docs:
            way, found = _one(d, id_key, held)
            if found is None and state is not None and d.content:
                if index is None:
                    index = ContentIndex(state)
                found = index.lookup(d.content)
                way = "content"
            ids.append(found)
            if found is None:
                missing.append(d)
            else:
                counts[way] += 1
        res = Resolution(
            by_id=counts["id"],
            by_metadata=counts["metadata"],
            by_content=counts["content"],
            unresolved=len(missing),
            hint=_hint(missing, state is not None, id_key) if missing else "",
        )
        out.append((ids, res))
    return out


def _one(d: Doc, id_key: str | None, held: set[str]) -> tuple[str, str | None]:
    meta = d.metadata
    if id_key is not None and meta.get(id_key) is not None:
        return "metadata", str(meta[id_key])
    if d.id is not None and str(d.id):
        return "id", str(d.id)
    if id_key is not None:
        return "metadata", None
    for k in ID_KEYS:
        if meta.get(k) is not None:
            return "metadata", str(meta[k])
    for k in NAME_KEYS:
        if meta.get(k) is not None and str(meta[k]) in held:
            return "metadata", str(meta[k])
    return "metadata", None


def _hint(missing: list[Doc], with_store: bool, id_key: str | None) -> str:
    keys = sorted({k for d in missing for k in d.metadata})
    texts = any(d.content for d in missing)
    if id_key is not None and any(id_key not in d.metadata for d in missing):
        fix = f"metadata has no {id_key!r} (keys: {keys or 'none'}); pass the key that names it"
    elif texts and with_store:
        fix = "their text matches no chunk of the store (edited or re-chunked since?)"
        if keys:
            fix += f"; if a metadata key names the chunk, pass id_key= (keys: {keys})"
    elif texts:
        fix = "pass store=<your store> to match them to its chunks by text"
        if keys:
            fix += f", or id_key= naming the metadata key that holds the chunk id (keys: {keys})"
    elif keys:
        fix = f"pass id_key= naming the metadata key that holds the chunk id (keys: {keys})"
    else:
        fix = "the tool kept neither an id, metadata nor text for them; log document ids"
    return fix


class Resolver:
    """:func:`resolve` over a reader's stream of records, a batch at a time, with one content
    index for the whole stream (built the first time a document needs its text matched).

    ``stream`` takes ``(where, raw record, raw documents)`` items (or an ``Unreadable`` in place
    of one) and yields ``make(raw record, raw documents, ids, resolution)`` for each, in order; a
    record that cannot be read or made becomes an ``Unreadable`` naming ``where``.
    """

    def __init__(self, store: Any = None, id_key: str | None = None, *, batch: int = 64) -> None:
        self.store, self.id_key, self.batch = store, id_key, batch
        self.index: ContentIndex | None = None

    def __call__(
        self, records: Sequence[Sequence[Doc]]
    ) -> list[tuple[list[str | None], Resolution]]:
        """Each record's document ids and its :class:`Resolution` (see :func:`resolve`)."""
        unnamed = any(not d.id and d.content for docs in records for d in docs)
        if self.index is None and self.store is not None and unnamed:
            self.index = ContentIndex(self.store)
        return resolve(records, store=self.store, id_key=self.id_key, content_index=self.index)

    def stream(
        self,
        entries: Iterable[Any],
        make: Callable[..., Any],
        *,
        docs_of: Callable[[Any, list[Any]], list[Doc]] | None = None,
    ) -> Iterator[Any]:
        """The records of ``entries`` (see the class), resolved a batch at a time and yielded in
        their order; ``docs_of`` turns a raw record's documents into :class:`Doc` (default:
        :func:`as_doc` each)."""
        pending: list[Any] = []  # (where, raw, docs, Docs), or an Unreadable in its place
        for entry in entries:
            if isinstance(entry, Unreadable):
                pending.append(entry)
                continue
            where, raw, docs = entry
            try:
                found = docs_of(raw, docs) if docs_of else [as_doc(doc) for doc in docs]
                pending.append((where, raw, docs, found))
            except Exception as e:  # one odd document costs its record only
                pending.append(Unreadable(where, _why(e)))
            if len(pending) >= self.batch:
                yield from self._flush(pending, make)
                pending = []
        yield from self._flush(pending, make)

    def _flush(self, pending: list[Any], make: Callable[..., Any]) -> Iterator[Any]:
        good = [p for p in pending if not isinstance(p, Unreadable)]
        resolved = iter(self([docs for *_, docs in good]) if good else [])
        for p in pending:
            if isinstance(p, Unreadable):
                yield p
                continue
            where, raw, docs, _ = p
            ids, res = next(resolved)
            try:
                yield make(raw, docs, ids, res)
            except Exception as e:  # any failure costs this record only
                yield Unreadable(where, _why(e))


def _why(e: BaseException) -> str:
    return str(e) if isinstance(e, NudgeError) else f"{type(e).__name__}: {e}"
