"""The version log over real stores: apply writes only the given rows, rollback is bitwise exact."""

from __future__ import annotations

import chromadb
import numpy as np
import pytest

from nudge_rag.core.errors import MetricMismatchError, NudgeError, UnknownIdError
from nudge_rag.core.stores.base import Metric
from nudge_rag.core.stores.chroma import ChromaAdapter
from nudge_rag.core.stores.memory import MemoryAdapter
from nudge_rag.core.versions import VersionLog, check_metric

N, D = 60, 16
IDS = [f"d{i}" for i in range(N)]


def _base(seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((N, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _chroma(tmp_path, space: str) -> ChromaAdapter:
    client = chromadb.PersistentClient(path=str(tmp_path / f"chroma-{space}"))
    col = client.create_collection(f"docs-{space}", metadata={"hnsw:space": space})
    col.add(ids=IDS, embeddings=_base(), documents=[f"text {i}" for i in IDS])
    return ChromaAdapter(col)


def _memory(tmp_path, space: str) -> MemoryAdapter:
    rng = np.random.default_rng(0)
    recs = {i: {"id": i, "vector": rng.standard_normal(D).tolist(), "text": i} for i in IDS}
    return MemoryAdapter(recs, metric=space)


@pytest.fixture(params=["chroma-cosine", "chroma-l2", "chroma-ip", "memory-cosine"])
def adapter(request, tmp_path):
    kind, space = request.param.split("-")
    ad = _chroma(tmp_path, space) if kind == "chroma" else _memory(tmp_path, space)
    if not ad.exact_readback:
        # what a face does on insert: keep the vectors as given
        ad._given = _base()
    return ad


def _log(tmp_path, ad) -> VersionLog:
    log = VersionLog(tmp_path / "state" / "versions.sqlite", ad)
    if not ad.exact_readback:
        log.record_base(IDS, ad._given)
    return log


def _snap(ad) -> np.ndarray:
    return ad.get_exact(IDS).copy()


def _new(rows: list[int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for r in rows:
        v = rng.standard_normal(D).astype(np.float32)
        out[IDS[r]] = v / np.linalg.norm(v)
    return out


def test_apply_writes_only_given_rows(tmp_path, adapter):
    log = _log(tmp_path, adapter)
    before = _snap(adapter)
    v = log.apply(_new([3, 7], 1), method="nudge-n", gamma=0.5, note="t", report={"ndcg": 0.7})
    after = _snap(adapter)
    assert v == 1 and log.current == 1
    changed = np.nonzero((after != before).any(axis=1))[0].tolist()
    assert changed == [3, 7]
    assert np.allclose(after[3], _new([3, 7], 1)[IDS[3]], atol=1e-6)
    info = log.versions()[-1]
    assert (info.version, info.method, info.gamma, info.rows_changed, info.note) == (
        1,
        "nudge-n",
        0.5,
        2,
        "t",
    )
    assert info.report == {"ndcg": 0.7} and info.current and info.parent == 0
    assert log.changed_ids() == [IDS[3], IDS[7]]


def test_rollback_is_bitwise_to_every_version(tmp_path, adapter):
    log = _log(tmp_path, adapter)
    snaps = {0: _snap(adapter)}
    for v, rows in enumerate([[1, 2, 3], [2, 3, 4, 5], [0, 5, 59]], start=1):
        assert log.apply(_new(rows, v)) == v
        snaps[v] = _snap(adapter)
    for target in [1, 3, 0, 2, 3, 0]:
        assert log.rollback(target) == target
        assert log.current == target
        assert np.array_equal(_snap(adapter), snaps[target]), f"version {target}"


def test_rollback_none_goes_to_parent_and_branches(tmp_path, adapter):
    log = _log(tmp_path, adapter)
    s0 = _snap(adapter)
    log.apply(_new([1], 1))
    s1 = _snap(adapter)
    log.apply(_new([1, 2], 2))
    assert log.rollback() == 1
    assert np.array_equal(_snap(adapter), s1)
    v3 = log.apply(_new([9], 3))  # branches from version 1
    assert v3 == 3 and log.versions()[-1].parent == 1
    s3 = _snap(adapter)
    assert np.array_equal(s3[1], s1[1]) and not np.array_equal(s3[9], s0[9])
    assert log.rollback() == 1
    assert log.rollback() == 0
    assert np.array_equal(_snap(adapter), s0)
    with pytest.raises(NudgeError, match="version 0 \\(the base\\), which has no previous"):
        log.rollback()
    assert log.rollback(3) == 3
    assert np.array_equal(_snap(adapter), s3)


def test_unknown_ids_write_nothing(tmp_path, adapter):
    log = _log(tmp_path, adapter)
    before = _snap(adapter)
    vecs = _new([1], 1)
    vecs["missing"] = vecs[IDS[1]]
    with pytest.raises(UnknownIdError, match="'missing'"):
        log.apply(vecs)
    assert np.array_equal(_snap(adapter), before)
    assert [v.version for v in log.versions()] == [0]


def test_bad_input(tmp_path, adapter):
    log = _log(tmp_path, adapter)
    with pytest.raises(NudgeError, match="non-empty mapping"):
        log.apply({})
    with pytest.raises(NudgeError, match="NaN or inf"):
        log.apply({IDS[0]: np.full(D, np.nan)})
    with pytest.raises(NudgeError, match=f"found 3-d vectors, the store holds {D}-d"):
        log.apply({IDS[0]: np.ones(3)})
    with pytest.raises(NudgeError, match="no version 42"):
        log.rollback(42)


def test_metric_safety():
    with pytest.raises(MetricMismatchError, match="Use NUDGE-N"):
        check_metric("NUDGE-M", Metric.COSINE)
    with pytest.raises(MetricMismatchError, match="'l2'"):
        check_metric("nudge_m", Metric.L2)
    check_metric("nudge-m", Metric.IP)
    check_metric("nudge-n", Metric.COSINE)


def test_nudge_m_refused_on_cosine_store(tmp_path):
    ad = _chroma(tmp_path, "cosine")
    log = VersionLog(tmp_path / "v.sqlite", ad)
    before = ad.get(IDS)
    with pytest.raises(MetricMismatchError, match="inner-product"):
        log.apply(_new([1], 1), method="NUDGE-M")
    assert np.array_equal(ad.get(IDS), before)


def test_forget_detaches_ids(tmp_path, adapter):
    log = _log(tmp_path, adapter)
    log.apply(_new([1, 2], 1))
    log.forget([IDS[1]])
    held = _snap(adapter)[1].copy()
    log.rollback(0)
    assert np.array_equal(_snap(adapter)[1], held)  # no longer managed
    assert log.changed_ids() == [IDS[2]]


def test_base_vectors(tmp_path, adapter):
    log = _log(tmp_path, adapter)
    s0 = adapter.get(IDS)
    log.apply(_new([4], 1))
    base = log.base_vectors([IDS[4], IDS[5]])
    assert base.dtype == np.float32
    assert np.allclose(base, s0[[4, 5]], atol=1e-6)


def test_reopen_keeps_history(tmp_path, adapter):
    log = _log(tmp_path, adapter)
    s0 = _snap(adapter)
    log.apply(_new([1], 1))
    log.close()
    log = VersionLog(tmp_path / "state" / "versions.sqlite", adapter)
    assert log.current == 1 and len(log.versions()) == 2
    log.rollback(0)
    assert np.array_equal(_snap(adapter), s0)


def test_unfinished_move_is_completed_on_reopen(tmp_path):
    ad = _chroma(tmp_path, "l2")
    path = tmp_path / "v.sqlite"
    log = VersionLog(path, ad)
    s0 = _snap(ad)
    log.apply(_new([1, 2, 3], 1))
    s1 = _snap(ad)
    # a rollback that crashed after its intent and half its writes
    log._conn.execute("INSERT INTO intent VALUES (1, 'rollback', 1, 0)")
    ad.put([IDS[1]], s0[[1]])
    log.close()
    log = VersionLog(path, ad)
    assert log.current == 0
    assert np.array_equal(_snap(ad), s0)
    assert not np.array_equal(s0, s1)


def test_deleted_documents_are_skipped_on_rollback(tmp_path):
    ad = _chroma(tmp_path, "l2")
    log = VersionLog(tmp_path / "v.sqlite", ad)
    s0 = _snap(ad)
    log.apply(_new([1, 2], 1))
    ad.collection.delete(ids=[IDS[1]])  # behind the log's back
    log.rollback(0)
    assert np.array_equal(ad.get_exact([IDS[2]])[0], s0[2])
    assert log.changed_ids() == [IDS[2]]


def test_chroma_writes_more_rows_than_one_batch(tmp_path):
    client = chromadb.PersistentClient(path=str(tmp_path / "big"))
    col = client.create_collection("big", metadata={"hnsw:space": "l2"})
    n = client.get_max_batch_size() + 500
    ids = [f"b{i}" for i in range(n)]
    x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    for s in range(0, n, 5000):
        col.add(ids=ids[s : s + 5000], embeddings=x[s : s + 5000])
    ad = ChromaAdapter(col)
    log = VersionLog(tmp_path / "v.sqlite", ad)
    log.apply({i: -x[n_] for n_, i in enumerate(ids)})
    assert np.array_equal(ad.get(ids), -x)
    log.rollback(0)
    assert np.array_equal(ad.get(ids), x)


class _FlakyMemory(MemoryAdapter):
    """A store whose next ``put`` writes the first row, then fails (a dropped connection)."""

    fail_next = False

    def put(self, ids, vectors):
        if self.fail_next:
            self.fail_next = False
            super().put(ids[:1], vectors[:1])
            msg = "connection reset by peer"
            raise ConnectionError(msg)
        super().put(ids, vectors)


def test_a_store_error_midway_leaves_the_old_version_whole(tmp_path):
    rng = np.random.default_rng(1)
    recs = {i: {"id": i, "vector": rng.standard_normal(D).tolist(), "text": i} for i in IDS}
    ad = _FlakyMemory(recs, metric="ip")
    log = VersionLog(tmp_path / "versions.sqlite", ad)
    v1 = log.apply(_new([0, 1, 2], seed=3), method="nudge-n")
    at_v1 = _snap(ad)

    ad.fail_next = True
    with pytest.raises(ConnectionError):
        log.apply(_new([1, 2, 3, 4], seed=4), method="nudge-n")
    np.testing.assert_array_equal(_snap(ad), at_v1)  # no mix of versions
    assert log.current == v1 and [v.version for v in log.versions()] == [0, v1]

    ad.fail_next = True
    with pytest.raises(ConnectionError):
        log.rollback(0)
    np.testing.assert_array_equal(_snap(ad), at_v1)
    assert log.current == v1

    # Reopening finds nothing unfinished; the next moves work.
    log = VersionLog(tmp_path / "versions.sqlite", ad)
    assert log.current == v1
    assert log.rollback(0) == 0
    v = log.apply(_new([5], seed=5), method="nudge-n")
    assert log.current == v and v == v1 + 1


def test_apply_from_base_resets_other_nudged_rows_exactly_on_a_float64_store(tmp_path):
    rng = np.random.default_rng(2)
    recs = {i: {"id": i, "vector": rng.standard_normal(D).tolist(), "text": i} for i in IDS}
    ad = MemoryAdapter(recs, metric="ip")
    base = {i: list(recs[i]["vector"]) for i in IDS}  # float64 values, as the store keeps them
    log = VersionLog(tmp_path / "versions.sqlite", ad)
    v1 = log.apply(_new([0, 1], seed=6), method="nudge-n")
    v2 = log.apply(_new([1, 2], seed=7), method="nudge-n", from_base=True)
    assert recs[IDS[0]]["vector"] == base[IDS[0]]  # back to its base, bit for bit
    assert recs[IDS[1]]["vector"] != base[IDS[1]] and recs[IDS[2]]["vector"] != base[IDS[2]]
    assert log.versions()[-1].rows_changed == 3
    log.rollback(v1)
    assert recs[IDS[2]]["vector"] == base[IDS[2]] and recs[IDS[0]]["vector"] != base[IDS[0]]
    log.rollback(v2)
    log.rollback(0)
    assert all(recs[i]["vector"] == base[i] for i in IDS)
