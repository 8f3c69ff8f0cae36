"""The version log over real stores: apply writes only the given rows, rollback is bitwise exact."""

from __future__ import annotations

import chromadb
import numpy as np
import pytest

from nudge_rag.errors import BadInputError, MetricMismatchError, NudgeError, UnknownIdError
from nudge_rag.state.versions.log import (
    StaleStoreError,
    StoreDriftError,
    VersionLog,
    VersionLogError,
    check_metric,
)
from nudge_rag.stores.base import Metric
from nudge_rag.stores.chroma import ChromaAdapter
from nudge_rag.stores.faiss import FaissAdapter
from nudge_rag.stores.memory import MemoryAdapter

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
    return getattr(ad, "get_exact", ad.get)(IDS).copy()


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
    with pytest.raises(BadInputError, match="version 0 \\(the base\\), which has no previous"):
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
    with pytest.raises(BadInputError, match="non-empty mapping"):
        log.apply({})
    with pytest.raises(NudgeError, match="NaN or inf"):
        log.apply({IDS[0]: np.full(D, np.nan)})
    with pytest.raises(BadInputError, match=f"found 3-d vectors, the store holds {D}-d"):
        log.apply({IDS[0]: np.ones(3)})
    with pytest.raises(BadInputError, match="no version 42"):
        log.rollback(42)
    with pytest.raises(BadInputError, match="report: expected a JSON-serialisable dict"):
        log.apply(_new([1], 1), report={"x": object()})
    with pytest.raises(BadInputError, match="method: found 'nudge-x'"):
        log.apply(_new([1], 1), method="nudge-x")
    with pytest.raises(BadInputError, match="adapter: found None"):
        VersionLog(tmp_path / "other.sqlite", None)
    assert [v.version for v in log.versions()] == [0]


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
    log._conn.execute(
        "INSERT INTO intent (one, op, from_version, to_version) VALUES (1, 'rollback', 1, 0)"
    )
    ad.put([IDS[1]], s0[[1]])
    log.close()
    log = VersionLog(path, ad)
    assert log.current == 0
    assert np.array_equal(_snap(ad), s0)
    assert not np.array_equal(s0, s1)


def test_deleted_documents_are_skipped_on_rollback_and_forgotten_only_by_repair(tmp_path):
    ad = _chroma(tmp_path, "l2")
    log = VersionLog(tmp_path / "v.sqlite", ad)
    s0 = _snap(ad)
    log.apply(_new([1, 2], 1))
    ad.collection.delete(ids=[IDS[1]])  # behind the log's back
    with pytest.warns(RuntimeWarning, match=r"no longer holds 1 nudged id\(s\) \('d1'\)"):
        log.rollback(0)
    assert np.array_equal(ad.get_exact([IDS[2]])[0], s0[2])
    assert log.changed_ids() == [IDS[1], IDS[2]]  # the log keeps it: no silent drop
    report = log.verify()
    assert not report.ok and "does not hold 1 of the 2 nudged ids" in report.problems[0]
    assert not log.repair().ok and log.changed_ids() == [IDS[1], IDS[2]]
    fixed = log.repair(forget_missing=True)
    assert fixed.ok and fixed.forgotten == (IDS[1],)
    assert "forgot 1 id(s)" in fixed.actions[0] and "'d1'" in fixed.actions[0]
    assert log.changed_ids() == [IDS[2]]


@pytest.mark.integration
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


# -- the log and the store cannot drift apart unnoticed (issue 11, item 4) ---------------------


def _memory_store(seed: int = 0) -> MemoryAdapter:
    rng = np.random.default_rng(seed)
    recs = {i: {"id": i, "vector": rng.standard_normal(D).tolist(), "text": i} for i in IDS}
    return MemoryAdapter(recs, metric="ip")


def _faiss_store(index) -> FaissAdapter:
    return FaissAdapter(index, dict(enumerate(IDS)))


def _faiss_index():
    import faiss

    index = faiss.IndexFlatIP(D)
    index.add(_base())
    return index


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_log_next_to_a_nudged_store_is_refused_not_restarted(tmp_path, how):
    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    log = VersionLog(path, ad)
    nudged = _new([1, 2], 1)
    log.apply(nudged)
    log.close()
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"")

    log = VersionLog(path, ad)  # opens, so that it can be repaired
    assert isinstance(log.problem, VersionLogError)
    with pytest.raises(VersionLogError, match=r"records a version log with 1 version\(s\)"):
        log.rollback(0)
    with pytest.raises(VersionLogError, match="adopt_store=True"):
        log.check_fresh()
    assert not log.verify().ok
    assert not path.exists() or path.stat().st_size == 0  # no new log was started silently
    with pytest.raises(VersionLogError, match="there is none to trust"):
        log.repair()

    report = log.repair(adopt_store=True)
    assert report.ok, report
    assert "started a new version log" in " ".join(report.actions)
    assert log.current == 0 and [v.version for v in log.versions()] == [0]
    # the store keeps what it held; the nudged vectors are now the base
    np.testing.assert_allclose(ad.get([IDS[1]])[0], nudged[IDS[1]], atol=1e-7)
    log.close()
    assert VersionLog(path, ad).problem is None


def test_a_log_that_never_moved_may_be_recreated(tmp_path):
    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    VersionLog(path, ad).close()
    path.unlink()
    log = VersionLog(path, ad)
    assert log.problem is None and log.current == 0


@pytest.mark.parametrize("store", ["faiss", "memory"])
def test_a_store_reloaded_from_a_save_older_than_the_last_apply_is_refused(tmp_path, store):
    """The FAISS / in-memory case: the save predates v1, the log says v1."""
    import copy

    import faiss

    if store == "faiss":
        index = _faiss_index()
        ad = _faiss_store(index)
        faiss.write_index(index, str(tmp_path / "saved.faiss"))  # saved before the apply
    else:
        ad = _memory_store()
        saved = copy.deepcopy(ad.records)
    path = tmp_path / "state" / "versions.sqlite"
    log = VersionLog(path, ad)
    s0 = _snap(ad)
    v1 = log.apply(_new(list(range(20)), 1), method="nudge-n")
    s1 = _snap(ad)
    log.close()

    # the process restarts and reloads the old save
    if store == "faiss":
        ad = _faiss_store(faiss.read_index(str(tmp_path / "saved.faiss")))
    else:
        ad = MemoryAdapter(saved, metric="ip")
    np.testing.assert_array_equal(_snap(ad), s0)
    log = VersionLog(path, ad)
    assert isinstance(log.problem, StoreDriftError)
    msg = "does not hold the vectors of version 1.*they hold version 0's vectors.*repair"
    with pytest.raises(StoreDriftError, match=msg):
        log.check_fresh()
    with pytest.raises(StoreDriftError):
        log.apply(_new([30], 2))
    report = log.verify()
    assert not report.ok and report.rows_checked == 20
    assert "20 of 20 nudged rows" in report.problems[0]

    fixed = log.repair()  # trust the log: version 1's vectors are written back
    assert fixed.ok and fixed.version == v1, fixed
    assert "rewrote 20 row(s)" in fixed.actions[0]
    np.testing.assert_array_equal(_snap(ad), s1)
    log.check_fresh()
    assert log.rollback(0) == 0
    np.testing.assert_array_equal(_snap(ad), s0)


def test_repair_adopt_store_follows_the_version_the_store_holds(tmp_path):
    import copy

    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    log = VersionLog(path, ad)
    log.apply(_new([1, 2, 3], 1))
    at_v1 = copy.deepcopy(ad.records)
    log.apply(_new([2, 3, 4], 2))
    log.close()

    ad = MemoryAdapter(at_v1, metric="ip")  # a save made at version 1
    ad.put([IDS[9]], np.full((1, D), 0.5))  # and one row changed outside nudge-rag: no version
    log = VersionLog(path, ad)
    assert isinstance(log.problem, StoreDriftError)
    report = log.repair(adopt_store=True)
    assert report.ok and log.current == 1, report
    assert "holds version 1" in report.actions[0]
    assert log.rollback(2) == 2 and log.rollback(0) == 0
    np.testing.assert_array_equal(ad.get(IDS[:9]), _memory_store().get(IDS[:9]))


def test_an_intent_naming_a_missing_version_is_refused_and_repaired(tmp_path):
    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    log = VersionLog(path, ad)
    s0 = _snap(ad)
    log.apply(_new([1, 2], 1))
    log.rollback(0)
    log._conn.execute(
        "INSERT INTO intent (one, op, from_version, to_version) VALUES (1, 'rollback', 0, 7)"
    )  # version 7: none
    ad.put([IDS[1]], np.ones((1, D)))  # a half-done write
    log.close()

    log = VersionLog(path, ad)
    with pytest.raises(VersionLogError, match="move from version 0 to version 7 names a version"):
        log.apply(_new([3], 2))
    assert log.current == 0  # not moved to a version that does not exist
    report = log.repair()
    assert report.ok, report
    assert "dropped an unfinished 'rollback' move to version 7" in report.actions[0]
    np.testing.assert_array_equal(_snap(ad), s0)


def test_a_cycle_in_parents_is_refused_not_walked_forever(tmp_path):
    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    log = VersionLog(path, ad)
    log.apply(_new([1], 1))
    log.apply(_new([2], 2))
    log._conn.execute("UPDATE versions SET parent = 2 WHERE version = 1")  # 2 → 1 → 2 → …
    log.close()

    log = VersionLog(path, ad)
    with pytest.raises(VersionLogError, match=r"version → parent: 1 → 2\)"):
        log.rollback(0)
    with pytest.raises(VersionLogError, match="adopt_store=True"):
        log.repair()
    assert log.repair(adopt_store=True).ok
    assert list(tmp_path.glob("versions.sqlite.broken-*"))


@pytest.mark.parametrize("how", ["replaced", "restored"])
def test_a_log_that_is_not_this_folders_latest_is_refused(tmp_path, how):
    import shutil

    ad = _memory_store()
    path = tmp_path / "a" / "versions.sqlite"
    log = VersionLog(path, ad)
    log.apply(_new([1], 1))
    log.close()
    if how == "replaced":  # another store's log copied over this one
        other = tmp_path / "b" / "versions.sqlite"
        VersionLog(other, _memory_store()).close()
        shutil.copy(other, path)
        match = "is not the version log this folder had"
    else:  # an older copy of this log restored after a rollback
        shutil.copy(path, tmp_path / "old.sqlite")
        log = VersionLog(path, ad)
        log.rollback(0)
        log.close()
        shutil.copy(tmp_path / "old.sqlite", path)
        match = r"older than the store's last version move: it records 1 move\(s\).* records 2"
    log = VersionLog(path, ad)
    with pytest.raises(VersionLogError, match=match):
        log.apply(_new([2], 2))
    report = log.repair()  # accept this log, write its version into the store
    assert report.ok, report
    log.apply(_new([2], 2))


def test_verify_checks_each_versions_fingerprint(tmp_path):
    ad = _memory_store()
    log = VersionLog(tmp_path / "versions.sqlite", ad)
    log.apply(_new([1, 2], 1))
    log.apply(_new([3], 2))
    log.forget([IDS[2]])  # forgetting keeps fingerprints whole
    assert log.verify().ok
    log._conn.execute("DELETE FROM rows WHERE version = 1 AND id = ?", (IDS[1],))
    report = log.verify()
    assert not report.ok
    assert any("the rows of version 1 are not those it recorded" in p for p in report.problems)


@pytest.mark.parametrize("bad", [b"not a database, just text" * 100, "cut"])
def test_a_garbage_or_cut_short_log_is_one_clear_error(tmp_path, bad):
    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    log = VersionLog(path, ad)
    for v in range(1, 6):
        log.apply(_new(list(range(40)), v))
    log.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if bad == "cut" else bad)

    log = VersionLog(path, ad)
    with pytest.raises(VersionLogError, match="damaged or not a version log"):
        log.versions()
        log.rollback(0)
    report = log.verify()
    assert not report.ok and "damaged" in report.problems[0]
    assert log.repair(adopt_store=True).ok
    with pytest.raises(VersionLogError, match="damaged"):
        VersionLog(next(tmp_path.glob("versions.sqlite.broken-*[0-9]")), None, read_only=True)


def test_read_only_log_lists_versions_and_writes_nothing(tmp_path):
    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    log = VersionLog(path, ad)
    log.apply(_new([1], 1), note="one")
    log.close()
    files = [path, tmp_path / "versions.marker.json"]
    before = [p.read_bytes() for p in files]
    ro = VersionLog(path, None, read_only=True)
    assert [(v.version, v.note, v.current) for v in ro.versions()] == [
        (0, "base", False),
        (1, "one", True),
    ]
    with pytest.raises(NudgeError, match="read_only=True"):
        ro.rollback(0)
    ro.check_fresh()  # nothing to check without a store
    ro.close()
    assert [p.read_bytes() for p in files] == before
    with pytest.raises(VersionLogError, match="no version log there"):
        VersionLog(tmp_path / "none.sqlite", None, read_only=True)


# -- another process's move (issue 11, item 3) -------------------------------------------------


def test_check_fresh_sees_a_move_made_through_another_connection(tmp_path):
    """Two logs on one file over one shared store (like a server): the move is seen, no error."""
    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    mine, theirs = VersionLog(path, ad), VersionLog(path, ad)
    mine.fresh_every_s = 0  # ask the log on every call
    mine.check_fresh()
    theirs.apply(_new([1, 2], 1))
    mine.check_fresh()  # the shared store holds version 1: nothing to say
    assert mine.current == 1


def test_check_fresh_refuses_when_this_process_still_serves_the_old_version(tmp_path):
    """Another process's store object is not this one's: each FAISS / dict holds its own copy."""
    import copy

    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    mine = VersionLog(path, ad)
    mine.fresh_every_s = 0
    other_copy = MemoryAdapter(copy.deepcopy(ad.records), metric="ip")
    theirs = VersionLog(path, other_copy)
    theirs.apply(_new([1, 2], 1))
    for _ in range(2):  # and it keeps refusing
        with pytest.raises(
            StaleStoreError, match=r"another process moved .* to version 1.*in-memory"
        ):
            mine.check_fresh()
    theirs.rollback(0)  # back to what this process serves: fine again
    mine.check_fresh()


# -- bad input (issue 11, item 11) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "found"), [(1.7, "1.7 \\(float\\)"), (True, "True \\(a bool\\)"), ("1", "'1'")]
)
def test_rollback_refuses_a_version_that_is_not_an_int(tmp_path, version, found):
    ad = _memory_store()
    log = VersionLog(tmp_path / "versions.sqlite", ad)
    log.apply(_new([1], 1))
    log.rollback(0)
    with pytest.raises(BadInputError, match=f"version: found {found}"):
        log.rollback(version)
    assert log.current == 0
    assert log.rollback(np.int64(1)) == 1


def test_apply_refuses_two_keys_naming_one_id(tmp_path):
    ad = _memory_store()
    ad.records["1"] = {"id": "1", "vector": [0.0] * D, "text": "one"}
    log = VersionLog(tmp_path / "versions.sqlite", ad)
    with pytest.raises(BadInputError, match="keys 1 and '1' both name id '1'"):
        log.apply({1: np.ones(D), "1": np.zeros(D)})
    assert [v.version for v in log.versions()] == [0]


def test_a_save_made_at_v1_reloaded_after_a_rollback_to_0_is_refused(tmp_path):
    import copy

    ad = _memory_store()
    path = tmp_path / "versions.sqlite"
    log = VersionLog(path, ad)
    s0 = _snap(ad)
    log.apply(_new([4, 5, 6], 1))
    saved_at_v1 = copy.deepcopy(ad.records)
    log.rollback(0)
    log.close()

    ad = MemoryAdapter(saved_at_v1, metric="ip")
    log = VersionLog(path, ad)
    with pytest.raises(StoreDriftError, match=r"version 0.*they hold version 1's vectors"):
        log.check_fresh()
    assert log.repair().ok
    np.testing.assert_array_equal(_snap(ad), s0)
