"""NudgeState: the version API and traces over a real Chroma collection."""

from __future__ import annotations

import chromadb
import numpy as np
import pytest

from nudge_rag.errors import MetricMismatchError, NudgeError, UnknownIdError
from nudge_rag.state.state import NudgeState
from nudge_rag.state.versions.log import StaleStoreError
from nudge_rag.stores.chroma import ChromaAdapter

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


# -- the log and the store agree, across processes (issue 11, items 3 and 4) ---------------------

_OTHER_PROCESS = """
import sys, chromadb
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.chroma import ChromaAdapter
col = chromadb.PersistentClient(path=sys.argv[1]).get_collection("docs")
state = NudgeState(ChromaAdapter(col), sys.argv[2])
state.check_fresh()  # a fresh process reads the store afresh: it serves what the log says
if sys.argv[3] == "rollback":
    state.rollback(0)
print(state.current_version, *(f"{x:.4f}" for x in state.get_vectors(["b"])[0][:2]))
state.close()
"""


def _in_other_process(tmp_path, state_dir, op: str) -> str:
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(tmp_path / "db"), str(state_dir), op],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.integration
def test_a_rollback_by_another_process_is_not_served_silently_on_embedded_chroma(
    state, tmp_path, state_dir
):
    """`nudge-rag rollback` while an app holds an embedded Chroma store: the app must not keep
    serving version 1 while the log says 0 (Chroma's embedded client caches in each process)."""
    base_b = state.get_vectors(["b"])[0].copy()
    state.apply_vectors({"b": np.full(8, 0.5, dtype=np.float32)}, method="nudge-n")
    state.check_fresh()  # its own move: fine
    assert _in_other_process(tmp_path, state_dir, "rollback").startswith("0 ")

    with pytest.raises(StaleStoreError) as err:
        state.check_fresh()
    msg = str(err.value)
    assert "another process moved this store's version log to version 0" in msg
    assert "embedded Chroma" in msg and "Restart this process" in msg
    assert "Chroma server" in msg
    with pytest.raises(StaleStoreError):  # every search, until restarted
        state.check_fresh()
    # a restarted process serves the base
    out = _in_other_process(tmp_path, state_dir, "read")
    assert out == f"0 {base_b[0]:.4f} {base_b[1]:.4f}"


@pytest.mark.integration
def test_check_fresh_on_a_chroma_server_sees_the_other_processs_rollback(chroma_server, tmp_path):
    """Readers of a shared server see every write: nothing to refuse."""
    import chromadb

    host, port = chroma_server
    col = chromadb.HttpClient(host=host, port=port).create_collection(
        f"fresh-{tmp_path.name[-20:]}", metadata={"hnsw:space": "l2"}
    )
    col.add(ids=IDS, embeddings=np.eye(4, 8, dtype=np.float32) + 0.1)
    app = NudgeState(ChromaAdapter(col), tmp_path / "state")
    app.apply_vectors({"b": np.full(8, 0.5, dtype=np.float32)})
    other_col = chromadb.HttpClient(host=host, port=port).get_collection(col.name)
    other = NudgeState(ChromaAdapter(other_col), tmp_path / "state")
    assert other.rollback(0) == 0
    app.check_fresh()
    assert app.current_version == 0
    np.testing.assert_allclose(app.get_vectors(["b"])[0], np.eye(4, 8)[1] + 0.1, atol=1e-6)
    app.close()
    other.close()


def test_verify_and_repair_through_the_state(state, collection):
    state.apply_vectors({"a": np.full(8, 0.5), "c": np.full(8, -0.5)}, method="nudge-n")
    assert state.verify().ok
    collection.update(ids=["a"], embeddings=[np.arange(8, dtype=np.float32)])  # behind its back
    report = state.verify()
    assert not report.ok and "1 of 2 nudged rows read back differ (e.g. id 'a')" in str(report)
    fixed = state.repair()
    assert fixed.ok and fixed.actions == ("rewrote 1 row(s) of the store with version 1's vectors",)
    np.testing.assert_allclose(state.get_vectors(["a"])[0], np.full(8, 0.5), atol=1e-6)


def test_engine_refuses_too_few_bootstrap_resamples(state):
    from nudge_rag.engine.engine import NudgeFinetuneEngine

    for bad in (0, -5, 10, True, 2.5):
        with pytest.raises(NudgeError, match=f"n_resamples: found {bad!r}"):
            NudgeFinetuneEngine(state, n_resamples=bad)
