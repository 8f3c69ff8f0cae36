"""The adapter base class: declared abilities, defaults, ``describe()``; one backend registry for
both faces, which finds every backend module by itself."""

from __future__ import annotations

import pkgutil
from collections.abc import Sequence

import numpy as np
import pytest

from nudge_rag.errors import NudgeError, UnknownIdError
from nudge_rag.stores.base import (
    BaseStoreAdapter,
    Metric,
    StoreDescription,
    approximate_search,
    can_scan,
    can_search,
    describe,
    exact_readback,
    present_ids,
    read_exact,
    store_count,
)
from nudge_rag.stores.memory import MemoryAdapter
from nudge_rag.stores.registry import BackendRegistry


class Minimal(BaseStoreAdapter):
    """get, put, ids and a metric only: everything else is the base's default."""

    metric = Metric.IP

    def __init__(self, rows: dict[str, np.ndarray]) -> None:
        self.rows = rows

    def get(self, ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in ids if i not in self.rows]
        if missing:
            raise UnknownIdError(str(missing))
        return np.asarray([self.rows[i] for i in ids], np.float32)

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        self.rows.update(zip(ids, np.asarray(vectors, np.float32), strict=True))

    def ids(self) -> list[str]:
        return list(self.rows)


class ProtocolOnly:
    """An adapter written against the protocol alone (no base class): found by probing."""

    metric = Metric.L2

    def __init__(self) -> None:
        self.rows = {"a": np.ones(2, np.float32)}

    def get(self, ids: Sequence[str]) -> np.ndarray:
        return np.asarray([self.rows[i] for i in ids])

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None: ...

    def ids(self) -> list[str]:
        return list(self.rows)

    def search(self, queries: np.ndarray, k: int) -> tuple[list, list]:
        return [], []


def test_defaults_of_a_minimal_adapter() -> None:
    ad = Minimal({"a": np.ones(3), "b": np.zeros(3)})
    assert (ad.can_search, ad.can_scan, ad.approximate_search, ad.exact_readback) == (
        False,
        False,
        False,
        True,
    )
    assert ad.count() == 2 and store_count(ad) == 2
    assert ad.present(["a", "x"]) == {"a"} == present_ids(ad, ["a", "x"])
    exact = read_exact(ad, ["b", "a"])
    assert exact.dtype == np.float64 and exact.tolist() == [[0.0] * 3, [1.0] * 3]
    assert ad.describe() == StoreDescription("Minimal store", True)


def test_declared_abilities_are_checked_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="can_search is True but the class has no search"):

        class Liar(Minimal):
            can_search = True

    class Paged(Minimal):  # defining scan() declares it
        def scan(self):  # type: ignore[no-untyped-def]
            yield list(self.rows), self.get(list(self.rows))

    assert Paged.can_scan and can_scan(Paged({}))
    assert not can_scan(Minimal({}))

    class Hidden(Paged):  # a subclass may withdraw an ability it inherits
        can_scan = False

    assert not can_scan(Hidden({}))


def test_a_protocol_only_adapter_is_probed() -> None:
    ad = ProtocolOnly()
    assert can_search(ad) and not can_scan(ad) and not approximate_search(ad)
    assert exact_readback(ad) and store_count(ad) == 1 and present_ids(ad, ["a", "b"]) == {"a"}
    assert read_exact(ad, ["a"]).dtype == np.float64
    assert describe(ad) == StoreDescription("ProtocolOnly store", True)


@pytest.mark.integration
def test_every_built_in_adapter_describes_its_store(tmp_path) -> None:
    import chromadb
    import lancedb

    from nudge_rag.stores.chroma import ChromaAdapter
    from nudge_rag.stores.lancedb import LanceDBAdapter

    mem = MemoryAdapter({})
    assert describe(mem) == StoreDescription(
        "in-memory store (held in this process's memory)", False
    )
    assert mem.can_search and not mem.can_scan
    col = chromadb.PersistentClient(str(tmp_path / "c")).get_or_create_collection("docs")
    chroma = ChromaAdapter(col)
    assert chroma.describe().shared is False and "embedded Chroma" in chroma.describe().kind
    assert chroma.approximate_search and chroma.exact_readback  # l2: no normalisation
    lance = LanceDBAdapter(lancedb.connect(str(tmp_path / "l")), "t")
    assert lance.describe() == StoreDescription("LanceDB table (a folder)", True)
    assert lance.can_search and lance.can_scan and lance.count() == 0 and lance.dim is None


def test_lancedb_adapter_round_trip_and_exact_search(tmp_path) -> None:
    import lancedb

    from nudge_rag.fit.metrics import exact_knn
    from nudge_rag.stores.lancedb import LanceDBAdapter

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((40, 8)).astype(np.float32)
    ids = [f"d'{i}" for i in range(40)]  # a quote in every id
    db = lancedb.connect(str(tmp_path / "l"))
    rows = [{"id": i, "vector": v.tolist(), "text": i} for i, v in zip(ids, vecs, strict=True)]
    db.create_table("t", data=rows)
    ad = LanceDBAdapter(db, "t")
    new = rng.standard_normal((3, 8)).astype(np.float32)
    ad.put([ids[5], ids[1], ids[9]], new)
    vecs[[5, 1, 9]] = new
    assert np.array_equal(ad.get(ids), vecs)  # bitwise, in the order asked
    assert db.open_table("t").search().where("id = 'd''5'").to_list()[0]["text"] == "d'5"
    with pytest.raises(UnknownIdError, match="'nope'"):
        ad.put(["nope"], new[:1])
    with pytest.raises(NudgeError, match="duplicates"):
        ad.put([ids[0], ids[0]], new[:2])
    q = rng.standard_normal((5, 8)).astype(np.float32)
    got, scores = ad.search(q, 4)
    want_scores, want_rows = exact_knn(q, vecs, 4, metric=Metric.L2)
    assert got == [[ids[r] for r in row] for row in want_rows]
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert sorted(ad.ids()) == sorted(ids) and ad.count() == 40
    seen = {i: v for page, mat in ad.scan() for i, v in zip(page, mat, strict=True)}
    assert np.array_equal(np.stack([seen[i] for i in ids]), vecs)


def test_lancedb_metric_follows_the_vector_index(tmp_path) -> None:
    """A LanceDB search that names no distance type (LangChain's and LlamaIndex's stores) uses
    the vector index's metric, l2 without one; ``metric=None`` reads it at each call."""
    import lancedb
    from langchain_community.vectorstores import LanceDB
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from nudge_rag.langchain import NudgedVectorStore
    from nudge_rag.stores.lancedb import LanceDBAdapter

    vecs = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    db = lancedb.connect(str(tmp_path / "l"))
    rows = [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(vecs)]
    table = db.create_table("t", data=rows)
    follows, fixed = LanceDBAdapter(db, "t", metric=None), LanceDBAdapter(db, "t")
    assert follows.metric is Metric.L2 and fixed.metric is Metric.L2
    table.create_index(metric="dot", num_partitions=2, index_type="IVF_FLAT")
    assert follows.metric is Metric.IP and fixed.metric is Metric.L2
    dots = vecs @ (3 * vecs[0])
    got, scores = follows.search(3 * vecs[:1], 1)  # both partitions probed: exact
    assert got == [[str(int(np.argmax(dots)))]] and scores[0][0] == pytest.approx(dots.max(), 1e-5)
    table.create_index(metric="cosine", num_partitions=2, index_type="IVF_FLAT", replace=True)
    assert follows.metric is Metric.COSINE
    emb = DeterministicFakeEmbedding(size=8)
    inner = LanceDB(connection=db, table_name="t", embedding=emb, mode="append")
    store = NudgedVectorStore(inner, state_dir=tmp_path / "state")
    assert store.nudge_state.metric is Metric.COSINE  # LangChain's LanceDB: the index's too
    assert store.nudge_state.trace_log.score_kind == "distance"  # its scores: _distance
    store.close()


def test_lancedb_overwrite_mode_is_refused(tmp_path) -> None:
    from langchain_community.vectorstores import LanceDB
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from nudge_rag.langchain import NudgedVectorStore

    inner = LanceDB(uri=str(tmp_path / "l"), embedding=DeterministicFakeEmbedding(size=4))
    with pytest.raises(NudgeError, match="mode='append'"):
        NudgedVectorStore(inner, state_dir=tmp_path / "state")


@pytest.mark.parametrize("face", ["langchain", "llama_index"])
def test_each_backend_module_registers_itself(face: str) -> None:
    """A new store's backend is found by being in the package: no list to extend."""
    import importlib

    backends = importlib.import_module(f"nudge_rag.{face}.backends")
    registry: BackendRegistry = backends.REGISTRY
    # base: what backends share; custom: any store, through the adapter the caller passes
    skip = ("base", "custom")
    modules = {m.name for m in pkgutil.iter_modules(backends.__path__) if m.name not in skip}
    found = {b.__module__.rpartition(".")[2] for b in registry.backends()}
    assert found == modules
    assert all(b.stores for b in registry.backends())


def test_the_registry_finds_the_most_specific_class_and_honours_subclasses() -> None:
    class A:
        pass

    class B(A):
        pass

    class C(B):
        pass

    reg: BackendRegistry = BackendRegistry("nudge_rag.langchain.backends")
    reg._loaded = True  # only the classes registered here

    @reg.register
    class ForA:
        stores = (f"{__name__}.A",)

    @reg.register
    class ForB:
        stores = (f"{__name__}.B",)
        subclasses = False

    assert reg.find(A()) is ForA and reg.find(B()) is ForB
    assert reg.find(C()) is ForA  # ForB serves B exactly; ForA serves A's subclasses
    assert reg.find(object()) is None
    with pytest.raises(TypeError, match=r"module_prefix\.ClassName"):
        reg.register(type("NoStores", (), {}))
