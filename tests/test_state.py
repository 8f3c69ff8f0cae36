"""NudgeState: the version API and traces over a real Chroma collection."""

from __future__ import annotations

import chromadb
import numpy as np
import pytest

from nudge_rag.core.errors import MetricMismatchError, NudgeError, UnknownIdError
from nudge_rag.core.state import NudgeState
from nudge_rag.core.stores.chroma import ChromaAdapter

IDS = ["a", "b", "c", "d"]


@pytest.fixture
def collection(tmp_path):
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    col = client.create_collection("docs", metadata={"hnsw:space": "cosine"})
    vecs = np.eye(4, 8, dtype=np.float32) + 0.1
    col.add(ids=IDS, embeddings=vecs, documents=[f"text {i}" for i in IDS])
    return col


@pytest.fixture
def state(collection, state_dir):
    texts = {i: f"text {i}" for i in IDS}
    st = NudgeState(
        ChromaAdapter(collection),
        state_dir,
        embed_queries=lambda qs: np.ones((len(qs), 8), dtype=np.float32),
        get_texts=lambda ids: [texts.get(i) for i in ids],
    )
    yield st
    st.close()


def test_files_and_attributes(state, state_dir):
    assert (state_dir / "traces.sqlite").is_file() and (state_dir / "versions.sqlite").is_file()
    assert state.metric.value == "cosine" and state.tracing
    assert sorted(state.ids()) == IDS
    assert state.texts(["b", "zz"]) == ["text b", None]
    assert state.embed_queries(["x", "y"]).shape == (2, 8)


def test_record_search_and_feedback(state):
    tid = state.record_search("q", np.ones(8), 2, {"k": "v"}, ["a", "b"], [0.1, 0.2])
    assert isinstance(tid, str)
    state.record_feedback(tid, relevant_ids=["d"], irrelevant_ids=["a"], rating=1.0)
    assert state.feedback(tid)[0].relevant_ids == ["d"]
    assert [t.id for t in state.traces()] == [tid]


def test_feedback_ids_must_exist(state):
    tid = state.record_search("q", np.ones(8), 1, None, ["a"], [0.1])
    with pytest.raises(UnknownIdError, match="'ghost'"):
        state.record_feedback(tid, relevant_ids=["ghost"])
    assert state.feedback() == []


def test_tracing_off(collection, tmp_path):
    st = NudgeState(ChromaAdapter(collection), tmp_path / "s2", tracing=False)
    assert st.record_search("q", np.ones(8), 1, None, ["a"], [0.1]) is None
    assert st.traces() == []
    with pytest.raises(NudgeError, match="without an embedding function"):
        st.embed_queries(["q"])
    assert st.texts(["a"]) == [None]
    st.close()


def test_version_api(state):
    before = state.get_vectors(IDS)
    v = state.apply_vectors({"b": np.full(8, 0.5, dtype=np.float32)}, note="try", method="nudge-n")
    assert v == 1 and state.current_version == 1
    assert np.allclose(state.get_vectors(["b"])[0], 0.5, atol=1e-6)
    assert np.allclose(state.base_vectors(["b"]), before[[1]], atol=1e-6)
    assert [x.note for x in state.versions()] == ["base", "try"]
    assert state.rollback() == 0
    assert np.allclose(state.get_vectors(IDS), before, atol=1e-6)
    with pytest.raises(MetricMismatchError):
        state.apply_vectors({"b": np.ones(8)}, method="NUDGE-M")


def test_upsert_and_delete_drop_nudges(state, collection):
    state.apply_vectors({"a": np.full(8, 0.5), "b": np.full(8, 0.25)})
    state.on_upsert(["a"])
    new = np.arange(8, dtype=np.float32)
    collection.upsert(ids=["a"], embeddings=new[None], documents=["new a"])
    state.on_upsert(["a"], new[None])
    state.on_delete(["b"])
    collection.delete(ids=["b"])
    assert state.version_log.changed_ids() == []
    state.rollback(0)
    # the new document keeps its new base embedding
    assert np.allclose(state.get_vectors(["a"])[0], new, atol=1e-5)
