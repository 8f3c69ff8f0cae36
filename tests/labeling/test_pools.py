"""The judge's candidate pools: dense + BM25 + feedback, fused to label_k, on both corpus paths."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import pytest

from nudge_rag import NudgeFinetuneEngine
from nudge_rag.errors import NudgeError
from nudge_rag.eval.simulate import LookupEmbedder
from nudge_rag.fit.corpus import MemoryCorpus, normalize_rows
from nudge_rag.labeling import pools as pools_mod
from nudge_rag.labeling.answers import parse_request
from nudge_rag.labeling.pools import (
    DepthPlan,
    LexicalCache,
    LexicalIndex,
    PoolStats,
    fuse,
    judge_pools,
)
from nudge_rag.state.state import NudgeState
from nudge_rag.stores.memory import MemoryAdapter
from nudge_rag.testing import OpenAIStub, QrelsJudge

N, DIM, K = 120, 16, 8
WORDS = [f"topic{w}" for w in range(40)]


class PoolWorld:
    """Chunks whose texts share words with queries, and whose vectors do not.

    Query ``j`` is about ``rare{j}``: its chunk ``lex{j}`` holds that word but a vector far from
    the query (the dense top ``K`` misses it); its vector sits next to other chunks.
    """

    def __init__(self, tmp_path: Any, n_queries: int = 12, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        vecs = rng.normal(size=(N, DIM)).astype(np.float32)
        self.ids = [f"c{i:03d}" for i in range(N)]
        texts = [" ".join(rng.choice(WORDS, 6)) for _ in range(N)]
        self.queries: list[tuple[str, np.ndarray, str]] = []
        for j in range(n_queries):
            far = j * 7 % N  # the chunk that holds the query's rare word
            texts[far] += f" rare{j}"
            q = -vecs[far] + 0.1 * rng.normal(size=DIM)  # opposite: last in the dense order
            self.queries.append((f"what about rare{j}", q.astype(np.float32), self.ids[far]))
        self.texts = dict(zip(self.ids, texts, strict=True))
        self.vectors = vecs
        records = {
            i: {"id": i, "vector": vecs[n].tolist(), "text": self.texts[i]}
            for n, i in enumerate(self.ids)
        }
        self.state = NudgeState(
            MemoryAdapter(records, metric="cosine"),
            tmp_path / "state",
            embed_queries=LookupEmbedder(
                [t for t, _, _ in self.queries], np.stack([v for _, v, _ in self.queries])
            ),
            get_texts=self.read_texts,
        )
        self.reads: list[int] = []
        self.tmp = tmp_path
        self.runs = 0

    def read_texts(self, ids: Any) -> list[str | None]:
        self.reads.append(len(ids))
        return [self.texts.get(i) for i in ids]

    def search_all(self) -> list[str]:
        out = []
        for text, v, _ in self.queries:
            out.append(self.state.record_search(text, v, 5, None, self.ids[:5], [0.0] * 5))
        return out

    def corpus(self) -> MemoryCorpus:
        return MemoryCorpus(normalize_rows(self.vectors), ids=self.ids, metric="cosine")


class PoolRecorder(QrelsJudge):
    """A qrels judge that keeps, per query, the candidate ids it was asked to grade."""

    def __init__(self, qrels: dict, **kw: Any) -> None:
        super().__init__(qrels, **kw)
        self.pools: dict[str, list[str]] = {}

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        request = parse_request(body.get("messages", []))
        if request.get("task") == "judge":
            pool = self.pools.setdefault(request["query"], [])
            pool += [c["id"] for c in request["candidates"]]
        return super().__call__(body)


def judged_pools(world: PoolWorld, **kw: Any) -> dict[str, list[str]]:
    """Run finetune() with a recording judge (a fresh label cache, so every candidate is
    asked); return the pool it graded for each query."""
    world.runs += 1
    kw.setdefault("cache_path", world.tmp / f"labels-{world.runs}.sqlite")
    qrels = {t: {target: 1} for t, _, target in world.queries}
    judge = PoolRecorder(qrels)
    with OpenAIStub(judge) as stub:
        eng = NudgeFinetuneEngine(
            world.state, llm=stub.client(), llm_model="stub", progress=False, **kw
        )
        try:
            eng.finetune()
        except NudgeError:
            pass  # too few labels to split is fine: the pools were judged already
        finally:
            eng.close()
    return judge.pools


def test_fuse_interleaves_legs_and_keeps_k():
    assert fuse([["a", "b", "c"], ["x", "b", "y"]], 3) == ["b", "a", "x"]
    assert fuse([["a", "b"], ["c"]], 10) == ["a", "c", "b"]  # tie: earlier leg first
    assert fuse([["a", "b"], ["c", "d"]], 2, weights=[1.0, 0.5]) == ["a", "b"]
    with pytest.raises(NudgeError, match="weights: found 1 weights for 2 legs"):
        fuse([["a"], ["b"]], 2, weights=[1.0])


def test_lexical_index_streams_texts_in_batches_and_ranks_the_word(tmp_path):
    world = PoolWorld(tmp_path)
    index = LexicalIndex.build(world.ids, world.read_texts, batch_size=25)
    assert world.reads == [25, 25, 25, 25, 20]  # never the whole corpus at once
    got = index.search(["rare3 please", "nothing matches this", ""], 5)
    assert got[0] == [world.queries[3][2]]  # only that chunk holds the word
    assert got[1] == [] and got[2] == []
    assert index.nbytes > 0


def test_pools_hold_the_lexical_hits_at_label_k(tmp_path):
    world = PoolWorld(tmp_path)
    corpus = world.corpus()
    q = np.stack([v for _, v, _ in world.queries])
    texts = [t for t, _, _ in world.queries]
    index = LexicalIndex.build(world.ids, world.read_texts)
    dense = judge_pools(corpus, q, texts, K)
    hybrid = judge_pools(corpus, q, texts, K, lexical=index)
    for (_, _, target), d, h in zip(world.queries, dense, hybrid, strict=True):
        assert target not in d and target in h
        assert len(d) == len(h) == K
        assert set(d[: K // 2]) <= set(h) and h[0] == d[0]  # the dense leg's best stay in


def test_feedback_leg_brings_in_chunks_users_marked_relevant(tmp_path):
    world = PoolWorld(tmp_path)
    q = np.stack([v for _, v, _ in world.queries])
    liked = [world.queries[0][2]]
    pools = judge_pools(world.corpus(), q, ["x"] * len(q), K, liked=liked)
    assert all(len(p) == K for p in pools)
    assert all(liked[0] in p for p in pools)  # the only liked chunk: first in its leg


def test_the_default_engine_judges_the_hybrid_pool(tmp_path):
    world = PoolWorld(tmp_path)
    world.search_all()
    hybrid = judged_pools(world, label_k=K)
    dense = judged_pools(world, label_k=K, pools="dense")
    for text, _, target in world.queries:
        assert len(hybrid[text]) == len(dense[text]) == K  # the judge's cost stays
        assert target in hybrid[text] and target not in dense[text]


def test_memory_and_store_path_judge_the_same_pools(tmp_path):
    world = PoolWorld(tmp_path)
    tids = world.search_all()
    world.state.record_feedback(tids[0], relevant_ids=[world.ids[50]])  # a feedback leg too
    memory = judged_pools(world, label_k=20, corpus="memory")
    store = judged_pools(world, label_k=20, corpus="store")
    assert memory == store
    # the query with feedback too: the audit asks the judge about it, in the same pool
    assert len(memory) == len(world.queries)
    assert all(world.ids[50] in p for p in memory.values())


def test_without_bm25s_the_pool_is_dense_with_a_note(tmp_path, monkeypatch, caplog):
    world = PoolWorld(tmp_path)
    world.search_all()
    monkeypatch.setattr("nudge_rag.engine.engine.lexical_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="nudge_rag.engine.engine"):
        got = judged_pools(world, label_k=K)
    assert "bm25s is not installed" in caplog.text
    assert got == judged_pools(world, label_k=K, pools="dense")
    assert pools_mod.lexical_available()  # the real check: installed here


def test_pools_option_is_checked(tmp_path):
    world = PoolWorld(tmp_path)
    with pytest.raises(NudgeError, match="pools: found 'bm25', expected 'hybrid' or 'dense'"):
        NudgeFinetuneEngine(world.state, pools="bm25", progress=False)


def test_new_share_caps_what_the_other_legs_bring_in(tmp_path, monkeypatch):
    world = PoolWorld(tmp_path)
    q = np.stack([v for _, v, _ in world.queries])
    texts = [t for t, _, _ in world.queries]
    index = LexicalIndex.build(world.ids, world.read_texts)
    liked = [world.ids[50]]
    dense = judge_pools(world.corpus(), q, texts, K)
    capped = judge_pools(world.corpus(), q, texts, K, lexical=index, liked=liked)
    for d, c in zip(dense, capped, strict=True):
        assert len(c) == K and len(set(c) - set(d)) == 1  # round(0.15 · 8) = 1
    monkeypatch.setattr(pools_mod, "NEW_SHARE", None)
    free = judge_pools(world.corpus(), q, texts, K, lexical=index, liked=liked)
    assert all(len(f) == K for f in free)
    assert any(len(set(f) - set(d)) > 1 for d, f in zip(dense, free, strict=True))


def test_lexical_cache_rebuilds_only_when_the_chunks_change(tmp_path):
    world = PoolWorld(tmp_path)
    cache = LexicalCache()
    stats = PoolStats()
    first = cache.index(world.ids, world.read_texts, stats)
    assert (cache.builds, stats.index_cached) == (1, False)
    assert cache.index(world.ids, world.read_texts, stats) is first  # same chunks: reused
    assert (cache.builds, cache.hits, stats.index_cached, stats.index_s) == (1, 1, True, 0.0)
    world.texts[world.ids[7]] += " brandnew"  # one chunk's text edited: a fresh index
    edited = cache.index(world.ids, world.read_texts, stats)
    assert edited is not first and cache.builds == 2 and not stats.index_cached
    assert edited.search(["brandnew"], 3) == [[world.ids[7]]]
    assert cache.index(world.ids[:-1], world.read_texts) is not edited  # a chunk removed
    assert cache.builds == 3


def test_the_engine_builds_the_bm25_index_once_across_finetunes(tmp_path, monkeypatch):
    world = PoolWorld(tmp_path)
    world.search_all()
    built: list[int] = []
    real = LexicalIndex.build.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, ids: Any, read: Any, **kw: Any) -> LexicalIndex:
        built.append(len(ids))
        return real(cls, ids, read, **kw)

    monkeypatch.setattr(LexicalIndex, "build", classmethod(counting))
    qrels = {t: {target: 1} for t, _, target in world.queries}
    with OpenAIStub(QrelsJudge(qrels)) as stub:
        eng = NudgeFinetuneEngine(
            world.state, llm=stub.client(), llm_model="stub", progress=False, label_k=K
        )
        try:
            for _ in range(2):
                with contextlib.suppress(NudgeError):  # too few labels to split is fine
                    eng.finetune()
                assert eng.last_pool_stats.lexical
            assert built == [N] and eng.last_pool_stats.index_cached
            world.texts[world.ids[3]] += " edited"
            with contextlib.suppress(NudgeError):
                eng.finetune()
            assert built == [N, N] and not eng.last_pool_stats.index_cached
        finally:
            eng.close()


def test_depth_plan_learns_where_deeper_candidates_pay():
    plan = DepthPlan(k=6, first=4, step=2, wave=0.5)
    depth, room = [4] * 10, [18] * 10
    # one positive a query (SciFact's shape): found ones yield nothing more, and of the queries
    # without one yet, some find it at rank 3-4: the budget goes to the queries without one
    single = [[True, False, False, False]] * 5 + [[False, False, True, False]] * 2
    single += [[False] * 4] * 3
    wave = plan.next_wave(single, depth, room, left=20)
    assert list(wave) == [7, 8, 9, 0, 1] and set(wave.values()) == {2}  # no positive yet first
    assert plan.next_wave(single, depth, room, left=1) == {}  # the budget is spent
    assert plan.next_wave(single, depth, [4] * 10, left=20) == {}  # no reserve left
    # many positives a query (NFCorpus's shape): deepening the rich ones would starve the
    # others, so every query is judged to k (the fixed pool), if the budget holds it
    many = [[True, True, True, True]] * 3 + [[False, False, False, False]] * 7
    assert plan.next_wave(many, depth, room, left=20) == dict.fromkeys(range(10), 2)
    assert plan.next_wave([h + [False] * 2 for h in many], [6] * 10, room, left=0) == {}
    assert plan.next_wave(many, depth, room, left=19) == {}
    assert plan.budget(10) == 60


def test_adaptive_depth_judges_as_many_candidates_deeper_where_they_pay(tmp_path):
    world = PoolWorld(tmp_path, n_queries=20)
    world.search_all()
    fixed = judged_pools(world, label_k=K, pools="dense")
    deep = judged_pools(world, label_k=K, pools="dense", pool_depth="adaptive")
    n = len(world.queries)
    assert sum(map(len, fixed.values())) == K * n
    assert sum(map(len, deep.values())) == K * n  # the judge's cost stays
    assert all(len(set(p)) == len(p) for p in deep.values())  # no candidate asked twice
    for text, _, target in world.queries:
        assert target not in fixed[text]  # last in the dense order: no pool of K holds it
        assert deep[text][: K // 2] == fixed[text][: K // 2]  # the same first half
    assert max(map(len, deep.values())) > K  # some queries went deeper, at others' cost
    with pytest.raises(NudgeError, match="pool_depth: found 'deep'"):
        NudgeFinetuneEngine(world.state, pool_depth="deep", progress=False)
