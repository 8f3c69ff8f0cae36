"""One validator where vectors enter (``check_vectors``) and the scalar checks, pinned by message.

Also issue 11 item 9 end to end: a value finite in float64 but not in float32 (1e39) never reaches
a store, through the adapters or through the version log's apply.
"""

from __future__ import annotations

import numpy as np
import pytest

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.fit.checks import check_float, check_int, check_vectors
from nudge_rag.state.versions.log import VersionLog

D = 8


def test_returns_float32_c_contiguous_and_accepts_rows():
    x = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    out = check_vectors(x, what="v")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x)
    rows = [np.ones(4, np.float32), [0.5, 0.25, 0.0, 1.0]]
    assert check_vectors(rows, what="v", n_rows=2, dim=4).shape == (2, 4)


def test_float32_input_is_not_copied_and_dtype_none_keeps_the_array():
    x = np.ones((3, 4), np.float32)
    assert check_vectors(x, what="v") is x
    x64 = np.ones((3, 4))
    assert check_vectors(x64, what="v", dtype=None) is x64
    out = check_vectors(x64 / 3, what="v", dtype=np.float64)
    assert out.dtype == np.float64 and out[0, 0] == 1 / 3  # exact, not rounded to float32


def test_memory_mapped_corpus_is_checked_without_loading_a_copy(tmp_path):
    path = tmp_path / "e.npy"
    np.save(path, np.ones((1000, 16), np.float32))
    mm = np.load(path, mmap_mode="r")
    out = check_vectors(mm, what="embeddings", dtype=None)
    assert np.shares_memory(out, mm)


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (np.ones(4), {}, r"v: expected a 2-d \(rows, dim\) matrix of vectors, found shape \(4,\)"),
        (np.ones((2, 2, 2)), {}, r"v: expected a 2-d .* found shape \(2, 2, 2\)"),
        (
            [[1.0, 2.0], [3.0]],
            {},
            r"v: expected a matrix of numbers \(rows of one length\), found rows",
        ),
        ([["a", "b"]], {}, r"v: expected float vectors, found dtype <U1"),
        (np.ones((2, 3), np.int64), {}, r"v: expected float vectors, found dtype int64"),
        (np.ones((2, 3), bool), {"integers": True}, r"v: expected float vectors, found dtype bool"),
        (np.ones((2, 3), np.complex64), {}, r"v: expected float vectors, found dtype complex64"),
        (np.ones((2, 3)), {"n_rows": 3}, r"v: expected 3 rows \(one vector per id\), found 2"),
        (np.ones((2, 3)), {"dim": 4}, r"v: its vectors have 3 dimensions, the store expects 4"),
        (None, {}, r"v: expected a matrix of numbers \(rows of one length\), found NoneType"),
    ],
)
def test_shape_and_dtype_messages(x, kwargs, message):
    with pytest.raises(BadInputError, match=message):
        check_vectors(x, what="v", **kwargs)


def test_integers_where_allowed():
    out = check_vectors(np.ones((2, 3), np.int64), what="v", integers=True, dtype=np.float64)
    assert out.dtype == np.float64


def test_empty_rows_for_no_ids():
    assert check_vectors([], what="v", n_rows=0, dim=D).shape == (0, D)
    assert check_vectors(np.zeros((0, D)), what="v", n_rows=0).shape == (0, D)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_the_first_bad_row(bad):
    x = np.ones((50, D), np.float32)
    x[[17, 30], 3] = bad
    with pytest.raises(
        BadInputError, match=rf"v row 17 holds NaN or inf \(found {bad} in column 3\)"
    ):
        check_vectors(x, what="v")


@pytest.mark.parametrize("value", [1e39, -1e39, 1e200])
def test_finite_in_float64_but_not_in_float32_is_refused(value):
    """The check runs after the cast: 1e39 is finite in float64 and inf in float32."""
    x = np.ones((5, D))
    x[2, 6] = value
    for dtype in (np.float32, np.float64, None):
        with pytest.raises(
            BadInputError,
            match=r"v row 2 holds NaN or inf once stored as float32 \(found .*e\+\d+ in column 6, "
            r"beyond float32's ±3.4e38\)",
        ):
            check_vectors(x, what="v", dtype=dtype)


def test_a_norm_that_overflows_float32_is_refused():
    """Every value is a finite float32, but the row normalises to zeros (its ‖x‖² is inf)."""
    x = np.ones((3, D), np.float32)
    x[1] = 1e20
    with pytest.raises(BadInputError, match=r"v row 1 has norm 2.828e\+20, whose square overflows"):
        check_vectors(x, what="v")
    x[1] = 1e18  # large but fine
    check_vectors(x, what="v")


def test_row_names_name_the_id():
    x = np.ones((3, D))
    x[2, 0] = np.nan
    with pytest.raises(BadInputError, match=r"vectors row 2 \(id 'doc-c'\) holds NaN or inf"):
        check_vectors(x, what="vectors", row_names=["doc-a", "doc-b", "doc-c"])


def test_bad_row_in_a_later_block_is_found(monkeypatch):
    import nudge_rag.fit.checks as checks

    monkeypatch.setattr(checks, "_BLOCK_ELEMENTS", 4 * D)  # four rows a block
    x = np.ones((40, D), np.float32)
    x[33, 0] = np.inf
    with pytest.raises(BadInputError, match=r"v row 33 holds NaN or inf"):
        check_vectors(x, what="v")


def test_large_but_finite_total_does_not_raise():
    """The cheap check (one dot product) may overflow on a huge total: the row scan decides."""
    x = np.full((4000, D), 1e17, np.float32)  # each ‖x‖² = 8e34, the total 3.2e38 · ... > max
    assert check_vectors(x, what="v") is x


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (True, {}, r"n: expected an integer, found bool True"),
        (2.0, {}, r"n: expected an integer, found float 2.0"),
        ("3", {}, r"n: expected an integer, found str '3'"),
        (0, {"low": 1}, r"n: found 0, expected an integer ≥ 1"),
        (11, {"low": 1, "high": 10}, r"n: found 11, expected an integer in \[1, 10\]"),
        (2**63, {"high": 2**62}, r"n: found 9223372036854775808, expected an integer ≤"),
        (-1, {"low": 0, "hint": "e.g. 5"}, r"n: found -1, expected an integer ≥ 0; e.g. 5\."),
    ],
)
def test_check_int(x, kwargs, message):
    with pytest.raises(BadInputError, match=message):
        check_int(x, what="n", **kwargs)


def test_check_int_accepts_numpy_integers():
    assert check_int(np.int64(7), what="n", low=1) == 7


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (float("nan"), {}, r"g: found nan, expected a finite number\."),
        (float("inf"), {"low": 0}, r"g: found inf, expected a finite number ≥ 0"),
        (-0.1, {"low": 0, "high": 2}, r"g: found -0.1, expected a finite number in \[0, 2\]"),
        (0.0, {"low": 0, "low_open": True}, r"g: found 0.0, expected a finite number > 0"),
        (None, {}, r"g: expected a number, found NoneType None"),
        (False, {}, r"g: expected a number, found bool False"),
    ],
)
def test_check_float(x, kwargs, message):
    with pytest.raises(BadInputError, match=message):
        check_float(x, what="g", **kwargs)


# --------------------------------------------------------------------------- 1e39 into real stores


def _faiss():
    faiss = pytest.importorskip("faiss")
    from nudge_rag.stores.faiss import FaissAdapter

    index = faiss.IndexFlatIP(D)
    index.add(np.eye(D, dtype=np.float32)[:4])
    return FaissAdapter(index, {i: f"d{i}" for i in range(4)})


def _qdrant():
    qc = pytest.importorskip("qdrant_client")
    from qdrant_client import models

    from nudge_rag.stores.qdrant import QdrantAdapter, default_point_id

    client = qc.QdrantClient(":memory:")
    client.create_collection(
        "c", vectors_config=models.VectorParams(size=D, distance=models.Distance.DOT)
    )
    client.upsert(
        "c",
        points=[
            models.PointStruct(id=default_point_id(f"d{i}"), vector=np.eye(D)[i].tolist())
            for i in range(4)
        ],
    )
    return QdrantAdapter(client, "c")


def _chroma():
    chromadb = pytest.importorskip("chromadb")
    from nudge_rag.stores.chroma import ChromaAdapter

    col = chromadb.EphemeralClient().get_or_create_collection(
        f"c{np.random.default_rng().integers(1 << 30)}", metadata={"hnsw:space": "ip"}
    )
    col.add(ids=[f"d{i}" for i in range(4)], embeddings=np.eye(D, dtype=np.float32)[:4])
    return ChromaAdapter(col)


def _memory():
    from nudge_rag.stores.memory import MemoryAdapter

    recs = {f"d{i}": {"id": f"d{i}", "vector": np.eye(D)[i].tolist()} for i in range(4)}
    return MemoryAdapter(recs, metric="ip")


@pytest.mark.parametrize("make", [_faiss, _qdrant, _chroma, _memory], ids=lambda f: f.__name__[1:])
def test_1e39_never_reaches_the_store(make, tmp_path):
    """Issue 11 item 9: FAISS and Qdrant stored inf; the doc silently left every search."""
    adapter = make()
    ids = ["d0", "d1", "d2", "d3"]
    before = adapter.get(ids)
    bad = np.eye(D)[:4].copy()
    bad[1, 2] = 1e39
    with pytest.raises(NudgeError, match=r"vectors row 1 holds NaN or inf once stored as float32"):
        adapter.put(ids, bad)
    log = VersionLog(tmp_path / "versions.sqlite", adapter)
    try:
        with pytest.raises(
            NudgeError, match=r"vectors row 1 \(id 'd1'\) holds NaN or inf once stored as float32"
        ):
            log.apply({i: v for i, v in zip(ids, bad, strict=True)}, method="nudge-n")
        assert log.current == 0 and [v.version for v in log.versions()] == [0]
    finally:
        log.close()
    after = adapter.get(ids)
    np.testing.assert_array_equal(after, before)
    assert np.isfinite(after).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nudge-m", "gamma": float("inf")}, r"gamma: found inf, expected a finite"),
        ({"gamma": float("nan")}, r"gamma: found nan, expected a finite number in \[0.0, 2.0\]"),
        ({"gamma": 3}, r"gamma: found 3.0, expected a finite number in \[0.0, 2.0\]"),
        ({"selection": "top3"}, r"selection: found 'top3', expected 'ndcg@10' or 'top1'"),
    ],
)
def test_engine_refuses_bad_fit_arguments_before_any_llm_call(tmp_path, kwargs, message):
    from nudge_rag.engine.engine import NudgeFinetuneEngine
    from nudge_rag.state.state import NudgeState
    from nudge_rag.stores.memory import MemoryAdapter

    recs = {f"d{i}": {"id": f"d{i}", "vector": np.eye(D)[i].tolist()} for i in range(4)}
    state = NudgeState(MemoryAdapter(recs, metric="ip"), tmp_path / "state")
    try:
        with pytest.raises(NudgeError, match=message):
            NudgeFinetuneEngine(state, progress=False, **kwargs)
    finally:
        state.close()
