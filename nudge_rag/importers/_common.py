"""Helpers shared by the readers: objects as dicts, JSON files, documents as ids and scores."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.records import FeedbackRecord

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
    raise NudgeError(msg)


def items(source: Any, what: str, *, data_key: str | None = None) -> list[Any]:
    """``source`` as a list: an iterable of objects, a JSON / JSONL file path, or an API page
    (a dict whose ``data_key`` holds the list)."""
    if source is None:
        return []
    if isinstance(source, str | os.PathLike):
        return load_json_file(Path(source), what, data_key=data_key)
    if isinstance(source, Mapping):
        if data_key is not None and isinstance(source.get(data_key), list):
            return list(source[data_key])
        return [source]
    if isinstance(source, Iterable):
        return list(source)
    msg = f"{what}: expected a list of records or a JSON/JSONL path, found {type(source).__name__}."
    raise NudgeError(msg)


def load_json_file(path: Path, what: str, *, data_key: str | None = None) -> list[Any]:
    """The records of a JSON file (a list, or a page with ``data_key``) or a JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        msg = f"{what}: cannot read {path} ({e}); pass the path of a JSON or JSONL export."
        raise NudgeError(msg) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError as e:
            msg = f"{what}: {path} is not valid JSON ({e})."
            raise NudgeError(msg) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if n == 1:  # one JSON document spread over lines
                try:
                    whole = json.loads(text)
                except json.JSONDecodeError:
                    pass
                else:
                    return items(whole, what, data_key=data_key)
            msg = f"{what}: {path} line {n} is not valid JSON ({e}); fix or remove that line."
            raise NudgeError(msg) from None
        out.append(obj)
    if len(out) == 1 and isinstance(out[0], Mapping) and data_key in out[0]:
        return items(out[0], what, data_key=data_key)
    return out


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
        raise NudgeError(msg)
    return lo, hi


def scaled_rating(score: float, scale: tuple[float, float]) -> float | None:
    """A numeric score as a 0..1 rating on ``scale`` (clipped); None for NaN."""
    lo, hi = scale
    return None if score != score else min(1.0, max(0.0, (score - lo) / (hi - lo)))
