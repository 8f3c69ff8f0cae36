"""A continuous loop: fine-tune when enough new labels arrived, apply when proven, and roll back
by itself when the applied version loses on the searches that followed it.

Each round (:meth:`Watcher.run_round`) does, in order:

1. guard — if the store's current version has not been judged yet, take the searches that got
   relevant ids in feedback the version was not fitted on (feedback written after its fit, by
   insertion order), and rank each one twice against the same corpus: with the base vectors
   and with the version's vectors (the trace holds the query embedding, the version log the
   base vectors, the store the version's). A search is a *hit* under a ranking when one of its
   relevant chunks is in that ranking's top ``k`` (the search's own ``k``, at most
   ``MAX_GUARD_K``). The pairs are compared with the exact sign test on the discordant pairs
   (McNemar's exact test): with at least ``min_guard_searches`` pairs, the version is rolled
   back to its parent when it lost more searches than it won and the one-sided p-value is at
   most ``(1 − confidence) / 2`` (the two-sided test at level ``1 − confidence`` finds a
   loss). After ``settle_searches`` pairs without that it is kept. Until then the round waits
   and fine-tunes nothing (one version under watch at a time). Both rankings see the same
   queries, so a change of topics or of difficulty in the traffic moves both alike.
2. fine-tune — when at least ``min_new_labels`` searches received feedback that can label them
   (relevant ids, or a positive answer rating) since the last fine-tune the loop ran, run
   ``engine.finetune()`` and ``engine.apply(report)`` only when the gain is proven. "Since" is
   by the feedback rows' insertion numbers (:meth:`TraceLog.iter_feedback`), never by their
   times: a record dated in the future, or a worker with a fast clock, cannot hide the labels
   that arrive after it.

A round that fails (the database restarting, the store away) is logged as ``error`` with the
reason and the loop goes on; the state's Postgres connections replace themselves when their
server went away. Every decision is appended to ``watch.jsonl`` in the state folder (the file
is replaced whole, atomically), with the version it concerns; the log is also the loop's memory
across restarts. The clock and the sleep are injectable, so tests drive rounds without waiting.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nudge_rag.errors import BadInputError, NudgeError
from nudge_rag.fit.stats import sign_test
from nudge_rag.labeling.feedback import POSITIVE_RATING
from nudge_rag.masking import mask_secrets
from nudge_rag.state.files import atomic_write

__all__ = [
    "GUARD_METHOD",
    "MAX_GUARD_K",
    "WATCH_LOG",
    "PairedSignal",
    "Watcher",
    "held_out_searches",
    "open_guard_corpus",
    "paired_hits",
    "paired_signal",
    "parse_duration",
    "watch",
]

WATCH_LOG = "watch.jsonl"
#: how the guard judges, as logged with each of its decisions
GUARD_METHOD = "paired hit@k, base vs version; one-sided exact sign test (McNemar)"
MAX_GUARD_K = 100  #: the guard's hit@k uses each search's own k, at most this
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float) -> float:
    """Seconds in ``"90s"``, ``"15m"``, ``"1h"``, ``"1d"`` or a plain number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
        if m is None:
            msg = f"every: found {text!r}, expected a duration such as 90s, 15m, 1h or 1d."
            raise BadInputError(msg)
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        msg = f"every: found {text!r}, expected a duration above zero, e.g. 1h."
        raise BadInputError(msg)
    return seconds


# ---------------------------------------------------------------------------------------------
# The statistics of the guard


@dataclass(frozen=True)
class PairedSignal:
    """Searches ranked under the base vectors and under a version's, and what they found.

    ``losses``: found by the base ranking only; ``wins``: by the version's only; ``p_value``:
    the one-sided exact sign test of a loss (:func:`sign_test`).
    """

    n: int
    base_hits: int
    new_hits: int
    losses: int
    wins: int
    p_value: float

    @property
    def base(self) -> float:
        """Share of hits under the base vectors (NaN without searches)."""
        return self.base_hits / self.n if self.n else math.nan

    @property
    def new(self) -> float:
        """Share of hits under the version's vectors (NaN without searches)."""
        return self.new_hits / self.n if self.n else math.nan


def paired_signal(pairs: Iterable[tuple[bool, bool]]) -> PairedSignal:
    """:class:`PairedSignal` of ``(hit under base, hit under the version)`` pairs."""
    rows = [(bool(b), bool(v)) for b, v in pairs]
    losses = sum(b and not v for b, v in rows)
    wins = sum(v and not b for b, v in rows)
    return PairedSignal(
        n=len(rows),
        base_hits=sum(b for b, _ in rows),
        new_hits=sum(v for _, v in rows),
        losses=losses,
        wins=wins,
        p_value=sign_test(losses, wins),
    )


def held_out_searches(state: Any, after_seq: int) -> list[tuple[str, set[str]]]:
    """Searches first given relevant ids by feedback written after insertion number
    ``after_seq``, in that order, with their relevant ids: labels a version fitted before
    then never saw (a search labelled earlier, e.g. in its training data, is left out)."""
    seen_before: set[str] = set()
    out: dict[str, set[str]] = {}
    for seq, fb in state.iter_feedback():
        if not fb.relevant_ids:
            continue
        tid = str(fb.trace_id)
        if seq <= after_seq:
            seen_before.add(tid)
        elif tid not in seen_before:
            out.setdefault(tid, set()).update(map(str, fb.relevant_ids))
    return list(out.items())


def open_guard_corpus(state: Any, engine: Any = None) -> Any:
    """The corpus the guard ranks against: the engine's (``engine.open_corpus()``), else the
    base matrix in memory or the store's own search, as the engine would choose."""
    opener = getattr(engine, "open_corpus", None)
    if callable(opener):
        return opener()
    from nudge_rag.fit.corpus import (
        DEFAULT_MEMORY_BUDGET,
        MemoryCorpus,
        StoreCorpus,
        choose_corpus,
    )

    if choose_corpus("auto", state, DEFAULT_MEMORY_BUDGET) == "store":
        return StoreCorpus(state)
    ids, base = state.base_matrix()
    return MemoryCorpus(np.asarray(base, dtype=np.float32), ids=ids, metric=state.metric)


def paired_hits(
    state: Any,
    corpus: Any,
    searches: Sequence[tuple[Any, set[str]]],
    *,
    max_k: int = MAX_GUARD_K,
) -> list[tuple[bool, bool]]:
    """``(hit under base, hit under the store's current vectors)`` of each search.

    ``searches``: ``(trace with its embedding, relevant ids)``. Both rankings are over the
    same ``corpus``; they differ only in the rows a version changed, which hold their base
    vectors in one and what the store holds now in the other. Searches whose relevant ids the
    corpus does not hold, or whose embedding cannot stand for a query, are left out. A search's
    filter is not applied (both rankings ignore it alike).
    """
    from nudge_rag.state.traces.log import embedding_problem

    n_rows, dim = corpus.shape
    held = corpus.known({i for _, relevant in searches for i in relevant})  # one question
    usable: list[tuple[int, set[str], np.ndarray]] = []
    for trace, relevant in searches:
        rel = held & set(relevant)
        vec = np.asarray(trace.embedding, dtype=np.float32).reshape(-1)
        if rel and n_rows and embedding_problem(vec, dim) is None:
            usable.append((max(1, min(int(trace.k), max_k, n_rows)), rel, vec))
    if not usable:
        return []
    changed = sorted(corpus.known(state.version_log.changed_ids()))
    rows = corpus.rows_of(changed)
    now = np.asarray(state.get_vectors(changed), dtype=np.float32) if changed else None
    queries = np.stack([v for _, _, v in usable])
    k = max(k for k, _, _ in usable)
    base_top, _ = corpus.topk_replaced(queries, k, rows, None)
    new_top, _ = corpus.topk_replaced(queries, k, rows, now) if changed else (base_top, None)

    def hit(top: np.ndarray, i: int) -> bool:
        kk, rel, _ = usable[i]
        return bool(rel.intersection(corpus.ids_of(r for r in top[i, :kk] if r >= 0)))

    return [(hit(base_top, i), hit(new_top, i)) for i in range(len(usable))]


# ---------------------------------------------------------------------------------------------
# The loop


class Watcher:
    """Fine-tune a store from its traffic round after round, and guard every version applied.

    Key init args:
        store: a ``NudgedVectorStore`` of either face, or its ``.nudge_state``.
        engine: the :class:`~nudge_rag.engine.engine.NudgeFinetuneEngine` to run (default: one
            over ``store`` without an LLM, feedback labels only).
        min_new_labels: searches with new labelling feedback needed before a fine-tune.
        every: seconds (or ``"1h"``) from one round's start to the next (:meth:`run`).
        min_guard_searches: searches labelled after a version's fit (ranked both ways) before
            the guard judges it.
        settle_searches: after this many without a significant loss the version is kept.
        confidence: the guard rolls back when the two-sided exact sign test at level
            ``1 − confidence`` (default 0.95) finds a loss.
        clock, sleep: time source and wait (injectable; tests never wait).

    Use:
        .. code-block:: python

            watcher = Watcher(store, engine=NudgeFinetuneEngine(store, llm=None),
                              min_new_labels=50)
            watcher.run_round()          # one round now; returns the decisions it logged
            watcher.run(every="1h")      # forever (or rounds=N)
    """

    def __init__(
        self,
        store: Any,
        *,
        engine: Any = None,
        min_new_labels: int = 50,
        every: str | float = 3600.0,
        min_guard_searches: int = 30,
        settle_searches: int = 300,
        confidence: float = 0.95,
        log_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        from nudge_rag.engine.engine import NudgeFinetuneEngine, resolve_store

        self.state: Any = resolve_store(store)
        needed = ("current_version", "iter_traces", "iter_feedback", "last_feedback_seq")
        missing = [m for m in needed if not hasattr(self.state, m)]
        if missing:
            msg = (
                f"store: found {type(self.state).__name__} without {', '.join(missing)}; "
                "expected a NudgedVectorStore (either face) or its .nudge_state."
            )
            raise BadInputError(msg)
        for name, value, low in (
            ("min_new_labels", min_new_labels, 1),
            ("min_guard_searches", min_guard_searches, 1),
            ("settle_searches", settle_searches, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                msg = f"{name}: found {value!r}, expected an integer ≥ {low}; pass e.g. 50."
                raise BadInputError(msg)
        if settle_searches < min_guard_searches:
            msg = (
                f"settle_searches: found {settle_searches}, below min_guard_searches="
                f"{min_guard_searches}; pass a value at least as large."
            )
            raise BadInputError(msg)
        if not 0 < confidence < 1:
            msg = f"confidence: found {confidence!r}, expected a level in (0, 1), e.g. 0.95."
            raise BadInputError(msg)
        self.engine = engine if engine is not None else NudgeFinetuneEngine(store, progress=False)
        self.min_new_labels = min_new_labels
        self.every = parse_duration(every)
        self.min_guard_searches = min_guard_searches
        self.settle_searches = settle_searches
        self.confidence = confidence
        if log_path is None:
            state_dir = getattr(self.state, "state_dir", None)
            if state_dir is None:
                msg = (
                    "log_path: the store has no state folder (its state is in Postgres); pass "
                    "log_path=... (nudge-rag watch --log ...) for the rounds' log."
                )
                raise BadInputError(msg)
            log_path = Path(state_dir) / WATCH_LOG
        self.log_path = Path(log_path)
        self.clock = clock
        self.sleep = sleep
        self.echo = echo

    # -- the log --------------------------------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        """Every decision logged so far, oldest first."""
        try:
            raw = self.log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                msg = (
                    f"{self.log_path}: line {n} is not a JSON object; move the file aside "
                    "(the loop starts a new log) or restore a backup."
                )
                raise NudgeError(msg) from None
            out.append(rec)
        return out

    def _log(
        self, round_no: int, decision: str, version: int | None, **details: Any
    ) -> dict[str, Any]:
        rec = {"time": self.clock(), "round": round_no, "decision": decision, "version": version}
        rec.update(details)
        line = json.dumps(rec, allow_nan=False, default=_jsonable)
        try:
            old = self.log_path.read_bytes()
        except FileNotFoundError:
            old = b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write(self.log_path, old + line.encode("utf-8") + b"\n", mode=0o600)
        if self.echo is not None:
            self.echo(_describe(rec))
        return rec

    # -- one round ------------------------------------------------------------------------------

    def run_round(self) -> list[dict[str, Any]]:
        """Guard the current version, then fine-tune if enough new labels arrived; return the
        decisions logged this round. A round that fails is logged as ``error``, not raised
        (only a damaged log is)."""
        past = self.history()
        round_no = 1 + max((int(r.get("round", 0)) for r in past), default=0)
        logged: list[dict[str, Any]] = []
        try:
            guard = self._guard(round_no, past)
            if guard is not None:
                logged.append(guard)
                if guard["decision"] in ("guard_wait", "rollback", "error"):  # one at a time
                    return logged
            logged.append(self._maybe_finetune(round_no, past))
        except Exception as err:  # the database or the store is away: the next round retries
            logged.append(self._log(round_no, "error", self._version(past), reason=_why(err)))
        return logged

    def _version(self, past: list[dict[str, Any]]) -> int | None:
        """The store's version if it can be read, else the last one logged."""
        try:
            return int(self.state.current_version)
        except Exception:
            known = [r["version"] for r in past if isinstance(r.get("version"), int)]
            return known[-1] if known else None

    def _guard(self, round_no: int, past: list[dict[str, Any]]) -> dict[str, Any] | None:
        current = int(self.state.current_version)
        if current == 0:
            return None
        settled = {int(r["version"]) for r in past if r.get("decision") in ("keep", "rollback")}
        settled |= {int(r["to_version"]) for r in past if r.get("decision") == "rollback"}
        if current in settled:
            return None
        info = {v.version: v for v in self.state.versions()}
        record = info.get(current)
        if record is None:
            return None
        parent = record.parent if record.parent is not None else _previous(info, current)
        mark = _feedback_mark(past, current)
        if mark is None:  # applied outside this loop: the labels from now on are new to it
            mark = int(self.state.last_feedback_seq())
        sig = self.guard_signal(mark)
        detail = {"signal": asdict(sig), "parent": parent, "feedback_seq": mark}
        detail["method"] = GUARD_METHOD
        waiting = (
            f"{sig.n} searches labelled since its fit ranked, judging from "
            f"{self.min_guard_searches}, keeping at {self.settle_searches}"
        )
        if sig.n < self.min_guard_searches:
            return self._log(round_no, "guard_wait", current, reason=waiting, **detail)
        alpha = (1.0 - self.confidence) / 2.0
        if sig.losses > sig.wins and sig.p_value <= alpha:
            try:
                to = self.state.rollback(parent)
            except Exception as err:  # the store or database is away: the next round retries
                return self._log(round_no, "error", current, reason=_why(err), **detail)
            return self._log(
                round_no,
                "rollback",
                current,
                to_version=int(to),
                reason=f"hit@k on {sig.n} searches labelled after it: base {sig.base:.3f}, "
                f"version {sig.new:.3f}; {sig.losses} lost vs {sig.wins} won, one-sided "
                f"sign test p = {sig.p_value:.2g} <= {alpha:.3g}",
                **detail,
            )
        if sig.n >= self.settle_searches:
            reason = f"no significant loss on {sig.n} searches (p = {sig.p_value:.2g})"
            return self._log(round_no, "keep", current, reason=reason, **detail)
        return self._log(round_no, "guard_wait", current, reason=waiting, **detail)

    def guard_signal(self, after_seq: int) -> PairedSignal:
        """The paired signal of the current version on the searches labelled after insertion
        number ``after_seq``: the first ``settle_searches`` that can be ranked."""
        found = held_out_searches(self.state, after_seq)
        if not found:
            return paired_signal([])
        corpus = open_guard_corpus(self.state, self.engine)
        pairs: list[tuple[bool, bool]] = []
        step = self.settle_searches
        for start in range(0, len(found), step):
            part = dict(found[start : start + step])
            traces = {t.id: t for t in self.state.iter_traces(ids=list(part))}
            searches = [(traces[i], rel) for i, rel in part.items() if i in traces]
            pairs += paired_hits(self.state, corpus, searches)
            if len(pairs) >= self.settle_searches:
                break
        return paired_signal(pairs[: self.settle_searches])

    def new_labels(self, after_seq: int) -> tuple[int, int]:
        """Searches with labelling feedback (relevant ids or a positive rating) written after
        insertion number ``after_seq``, and the newest insertion number read."""
        fresh: set[str] = set()
        newest = after_seq
        for seq, fb in self.state.iter_feedback(after_seq=after_seq):
            newest = max(newest, seq)
            positive = fb.rating is not None and fb.rating >= POSITIVE_RATING
            if fb.relevant_ids or positive:
                fresh.add(str(fb.trace_id))
        return len(fresh), newest

    def _labels_mark(self, past: list[dict[str, Any]]) -> int:
        """The insertion number up to which labels were counted by the last fine-tune."""
        for r in reversed(past):
            if r.get("labels_seq") is not None:
                return int(r["labels_seq"])
            if r.get("labels_until") is not None:  # a log from before insertion numbers
                until = float(r["labels_until"])
                seqs = (seq for seq, fb in self.state.iter_feedback() if fb.time <= until)
                return max(seqs, default=0)
        return 0

    def _maybe_finetune(self, round_no: int, past: list[dict[str, Any]]) -> dict[str, Any]:
        mark = self._labels_mark(past)
        n_new, newest = self.new_labels(mark)
        current = int(self.state.current_version)
        if n_new < self.min_new_labels:
            return self._log(
                round_no,
                "skip",
                current,
                new_labels=n_new,
                labels_seq=mark,  # labels_seq: the next round counts the labels after it
                reason=f"{n_new} new labelled searches, waiting for {self.min_new_labels}",
            )
        try:
            report = self.engine.finetune()
            fitted = int(self.state.last_feedback_seq())  # the fit saw no later feedback
        except Exception as err:  # a store, network or database error ends the round, not the loop
            return self._log(round_no, "error", current, new_labels=n_new, reason=_why(err))
        summary = report.to_dict()
        keep = {k: summary[k] for k in ("ndcg", "recall", "queries", "gamma", "rows_changed")}
        if not report.proven:
            return self._log(
                round_no,
                "not_proven",
                current,
                new_labels=n_new,
                labels_seq=newest,
                report=keep,
                reason=f"NDCG@10 CI lower bound {report.ndcg.ci_low:+.4f} <= min_gain "
                f"{report.min_gain:+.4f}",
            )
        try:
            version = int(self.engine.apply(report))
        except Exception as err:  # GainNotProvenError, NudgeError, or the store went away
            return self._log(
                round_no, "error", current, new_labels=n_new, labels_seq=newest, reason=_why(err)
            )
        return self._log(
            round_no,
            "apply",
            version,
            from_version=current,
            new_labels=n_new,
            labels_seq=newest,
            feedback_seq=fitted,
            report=keep,
        )

    # -- forever --------------------------------------------------------------------------------

    def run(self, *, rounds: int | None = None) -> list[dict[str, Any]]:
        """Run a round every ``every`` seconds (from one start to the next), ``rounds`` times or
        forever; return what was logged."""
        out: list[dict[str, Any]] = []
        done = 0
        while rounds is None or done < rounds:
            start = self.clock()
            out += self.run_round()
            done += 1
            if rounds is not None and done >= rounds:
                break
            self.sleep(max(0.0, start + self.every - self.clock()))
        return out


def watch(
    store: Any,
    *,
    every: str | float = 3600.0,
    min_new_labels: int = 50,
    rounds: int | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Run :class:`Watcher` over ``store``: a round every ``every``, ``rounds`` times or forever
    (the library call under ``nudge-rag watch``)."""
    return Watcher(store, every=every, min_new_labels=min_new_labels, **kwargs).run(rounds=rounds)


def _feedback_mark(past: list[dict[str, Any]], version: int) -> int | None:
    """The insertion number after which feedback is new to ``version`` (its fit saw none of
    it), as the loop logged it when applying or first guarding it; None if never logged."""
    for r in past:
        if r.get("version") == version and r.get("feedback_seq") is not None:
            return int(r["feedback_seq"])
    return None


def _previous(info: dict[int, Any], version: int) -> int:
    older = [v for v in info if v < version]
    return max(older, default=0)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    msg = f"watch log: cannot store {type(value).__name__}"
    raise TypeError(msg)


def _describe(rec: dict[str, Any]) -> str:
    text = f"round {rec['round']}: {rec['decision']} (version {rec['version']})"
    if rec.get("reason"):
        text += f": {rec['reason']}"
    return text


def _why(err: BaseException) -> str:
    """An error as the log's reason: the message, with the type when it is not ours (passwords
    masked)."""
    text = str(err) if isinstance(err, NudgeError) else f"{type(err).__name__}: {err}"
    return mask_secrets(text)
