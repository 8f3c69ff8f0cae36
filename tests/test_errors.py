"""The exception hierarchy: one root ``NudgeError(Exception)``; only bad input is also a
``ValueError``; every class is exported from ``nudge_rag``; real calls with bad input raise
``BadInputError``."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore

import nudge_rag
from nudge_rag import errors
from nudge_rag.errors import (
    BadInputError,
    ConcurrentMoveError,
    GainNotProvenError,
    InvalidAnswerError,
    LLMCallError,
    MetricMismatchError,
    NudgeError,
    StaleStoreError,
    StoreDriftError,
    UnknownIdError,
    VersionLogError,
    WrongStoreError,
)
from nudge_rag.importers import jsonl
from nudge_rag.langchain import NudgedVectorStore
from nudge_rag.state.records import TraceRecord
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.memory import MemoryAdapter

CLASSES = [
    c
    for _, c in inspect.getmembers(errors, inspect.isclass)
    if c.__module__ == errors.__name__ and issubclass(c, BaseException)
]
BAD_INPUT = [BadInputError, MetricMismatchError, UnknownIdError]
STATE = [
    VersionLogError,
    StoreDriftError,
    StaleStoreError,
    WrongStoreError,
    ConcurrentMoveError,
    LLMCallError,
    InvalidAnswerError,
    GainNotProvenError,
]


def test_every_class_is_exported_from_nudge_rag() -> None:
    assert len(CLASSES) == len(BAD_INPUT) + len(STATE) + 1  # the root
    for cls in CLASSES:
        assert cls.__name__ in nudge_rag.__all__, cls
        assert getattr(nudge_rag, cls.__name__) is cls
        assert issubclass(cls, NudgeError)


def test_the_root_is_not_a_value_error() -> None:
    assert NudgeError.__bases__ == (Exception,)
    assert not issubclass(NudgeError, ValueError)


@pytest.mark.parametrize("cls", BAD_INPUT, ids=lambda c: c.__name__)
def test_bad_input_is_a_value_error(cls: type[Exception]) -> None:
    assert issubclass(cls, BadInputError)
    assert issubclass(cls, ValueError)


@pytest.mark.parametrize("cls", STATE, ids=lambda c: c.__name__)
def test_state_llm_and_proof_errors_are_not_value_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, NudgeError)
    assert not issubclass(cls, ValueError)
    assert not issubclass(cls, BadInputError)


def test_unknown_id_is_also_a_key_error_with_a_plain_message() -> None:
    err = UnknownIdError("ids: 'x' is not in the store")
    assert isinstance(err, KeyError)
    assert str(err) == "ids: 'x' is not in the store"


def test_a_face_refuses_duplicate_ids_as_bad_input(tmp_path: Path) -> None:
    emb = DeterministicFakeEmbedding(size=8)
    store = NudgedVectorStore(InMemoryVectorStore(emb), state_dir=tmp_path / "s")
    try:
        with pytest.raises(BadInputError, match=r"^ids: found duplicates"):
            store.add_texts(["a", "b"], ids=["d1", "d1"])
        with pytest.raises(ValueError, match=r"^inner_store: found a NudgedVectorStore"):
            NudgedVectorStore(store, state_dir=tmp_path / "s2")  # type: ignore[arg-type]
    finally:
        store.close()


def test_a_jsonl_record_with_an_unknown_field_is_bad_input() -> None:
    with pytest.raises(BadInputError, match=r"unknown fields \['colour'\]"):
        jsonl.record({"query": "q", "result_ids": [], "colour": "red"})


def test_a_strict_import_of_a_bad_record_is_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = {d: {"id": d, "vector": rng.normal(size=4).tolist(), "text": d} for d in "abc"}
    state = NudgeState(MemoryAdapter(records, metric="cosine"), tmp_path / "state")
    try:
        with pytest.raises(BadInputError, match=r"query: expected the query text"):
            state.import_traces(
                [TraceRecord(query=" ", result_ids=["a"], source="jsonl", embedding=[1, 0, 0, 0])],
                strict=True,
            )
        with pytest.raises(BadInputError, match=r"^records: expected an iterable"):
            state.import_traces(TraceRecord(query="q", result_ids=["a"], source="jsonl"))  # type: ignore[arg-type]
        assert state.traces() == []
    finally:
        state.close()
