"""A continuous loop: fine-tune when enough new labels arrived, apply when proven, and roll back
by itself when the live signal drops after an apply.

Each round (:meth:`Watcher.run_round`) does, in order:

1. guard — if the store's current version was applied after the last guard decision and has
   not been judged yet, compare the *live signal* before and after it: the share of
   feedback-bearing searches whose relevant chunks (at least one) came back in the search's
   own results. "Before" is the searches served by the previous version (the latest
   ``guard_window``), "after" those since the apply, attributed by each trace's own time. With
   at least ``min_guard_searches`` after it, the version is rolled back to its parent when the
   upper bound of the confidence interval of the difference (after − before) is below zero:
   Newcombe's hybrid score interval, built from the two Wilson score intervals. After
   ``settle_searches`` without a significant drop it is kept. Until then the round waits and
   fine-tunes nothing (one version under watch at a time).
2. fine-tune — when at least ``min_new_labels`` searches received feedback that can label them
   (relevant ids, or a positive answer rating) since the last fine-tune the loop ran, run
   ``engine.finetune()`` and ``engine.apply(report)`` only when the gain is proven.

Every decision is appended to ``watch.jsonl`` in the state folder (the file is replaced whole,
atomically), with the version it concerns; the log is also the loop's memory across restarts.
The clock and the sleep are injectable, so tests drive rounds without waiting.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from nudge_rag.core.errors import NudgeError
from nudge_rag.core.files import atomic_write
from nudge_rag.core.labels import POSITIVE_RATING
from nudge_rag.core.masking import mask_secrets

WATCH_LOG = "watch.jsonl"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float) -> float:
    """Seconds in ``"90s"``, ``"15m"``, ``"1h"``, ``"1d"`` or a plain number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
        if m is None:
            msg = f"every: found {text!r}, expected a duration such as 90s, 15m, 1h or 1d."
            raise NudgeError(msg)
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        msg = f"every: found {text!r}, expected a duration above zero, e.g. 1h."
        raise NudgeError(msg)
    return seconds


# ---------------------------------------------------------------------------------------------
# The statistics of the guard


def wilson_interval(hits: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n`` (``(0, 1)`` when ``n == 0``).

    ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the normal quantile.
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = hits / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def newcombe_interval(
    hits_after: int, n_after: int, hits_before: int, n_before: int, *, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``p_after − p_before`` (two independent samples).

    With Wilson intervals ``(l1, u1)`` of after and ``(l0, u0)`` of before and ``d = p1 − p0``:
    ``[d − sqrt((p1 − l1)² + (u0 − p0)²), d + sqrt((u1 − p1)² + (p0 − l0)²)]``.
    """
    if n_after <= 0 or n_before <= 0:
        return -1.0, 1.0
    p1, p0 = hits_after / n_after, hits_before / n_before
    l1, u1 = wilson_interval(hits_after, n_after, confidence=confidence)
    l0, u0 = wilson_interval(hits_before, n_before, confidence=confidence)
    d = p1 - p0
    return d - math.hypot(p1 - l1, u0 - p0), d + math.hypot(u1 - p1, p0 - l0)


@dataclass(frozen=True)
class LiveSignal:
    """Feedback-bearing searches before and after a version, and how many found a relevant
    chunk in their results; ``ci_low`` / ``ci_high`` bound ``after − before``."""

    before_hits: int
    before_n: int
    after_hits: int
    after_n: int
    ci_low: float
    ci_high: float

    @property
    def before(self) -> float:
        """Share of hits before (NaN without searches)."""
        return self.before_hits / self.before_n if self.before_n else math.nan

    @property
    def after(self) -> float:
        """Share of hits after (NaN without searches)."""
        return self.after_hits / self.after_n if self.after_n else math.nan


def search_hits(state: Any, *, since: float | None = None) -> list[tuple[float, bool]]:
    """``(time, hit)`` of every search since ``since`` that has relevant ids in its feedback,
    oldest first: ``hit`` when at least one of them is among the search's results."""
    relevant: dict[str, set[str]] = {}
    for fb in state.feedback():
        if fb.relevant_ids:
            relevant.setdefault(str(fb.trace_id), set()).update(map(str, fb.relevant_ids))
    if not relevant:
        return []
    out = []
    for t in state.iter_traces(ids=list(relevant), with_embeddings=False):
        if since is None or t.time >= since:
            out.append((float(t.time), bool(relevant[str(t.id)] & set(t.result_ids))))
    out.sort(key=lambda x: x[0])
    return out


def live_signal(
    hits: Iterable[tuple[float, bool]],
    applied_at: float,
    *,
    before_from: float = -math.inf,
    window: int = 500,
    confidence: float = 0.95,
) -> LiveSignal:
    """Compare the searches in ``[before_from, applied_at)`` (the latest ``window``) with
    those from ``applied_at`` on, with Newcombe's interval of the difference."""
    rows = list(hits)
    before = [h for t, h in rows if before_from <= t < applied_at][-window:]
    after = [h for t, h in rows if t >= applied_at]
    low, high = newcombe_interval(
        sum(after), len(after), sum(before), len(before), confidence=confidence
    )
    return LiveSignal(sum(before), len(before), sum(after), len(after), low, high)


# ---------------------------------------------------------------------------------------------
# The loop


class Watcher:
    """Fine-tune a store from its traffic round after round, and guard every version applied.

    Key init args:
        store: a ``NudgedVectorStore`` of either face, or its ``.nudge_state``.
        engine: the :class:`~nudge_rag.core.engine.NudgeFinetuneEngine` to run (default: one
            over ``store`` without an LLM, feedback labels only).
        min_new_labels: searches with new labelling feedback needed before a fine-tune.
        every: seconds (or ``"1h"``) from one round's start to the next (:meth:`run`).
        min_guard_searches: feedback-bearing searches after an apply before the guard judges.
        settle_searches: after this many without a significant drop the version is kept.
        confidence: level of the guard's interval (default 0.95).
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
        guard_window: int = 500,
        confidence: float = 0.95,
        log_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        from nudge_rag.core.engine import NudgeFinetuneEngine, resolve_store

        self.state: Any = resolve_store(store)
        missing = [m for m in ("current_version", "iter_traces") if not hasattr(self.state, m)]
        if missing:
            msg = (
                f"store: found {type(self.state).__name__} without {', '.join(missing)}; "
                "expected a NudgedVectorStore (either face) or its .nudge_state."
            )
            raise NudgeError(msg)
        for name, value, low in (
            ("min_new_labels", min_new_labels, 1),
            ("min_guard_searches", min_guard_searches, 1),
            ("settle_searches", settle_searches, 1),
            ("guard_window", guard_window, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                msg = f"{name}: found {value!r}, expected an integer ≥ {low}; pass e.g. 50."
                raise NudgeError(msg)
        if settle_searches < min_guard_searches:
            msg = (
                f"settle_searches: found {settle_searches}, below min_guard_searches="
                f"{min_guard_searches}; pass a value at least as large."
            )
            raise NudgeError(msg)
        if not 0 < confidence < 1:
            msg = f"confidence: found {confidence!r}, expected a level in (0, 1), e.g. 0.95."
            raise NudgeError(msg)
        self.engine = engine if engine is not None else NudgeFinetuneEngine(store, progress=False)
        self.min_new_labels = min_new_labels
        self.every = parse_duration(every)
        self.min_guard_searches = min_guard_searches
        self.settle_searches = settle_searches
        self.guard_window = guard_window
        self.confidence = confidence
        if log_path is None:
            state_dir = getattr(self.state, "state_dir", None)
            if state_dir is None:
                msg = (
                    "log_path: the store has no state folder (its state is in Postgres); pass "
                    "log_path=... (nudge-rag watch --log ...) for the rounds' log."
                )
                raise NudgeError(msg)
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

    def _log(self, round_no: int, decision: str, version: int, **details: Any) -> dict[str, Any]:
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
        decisions logged this round."""
        past = self.history()
        round_no = 1 + max((int(r.get("round", 0)) for r in past), default=0)
        logged: list[dict[str, Any]] = []
        guard = self._guard(round_no, past)
        if guard is not None:
            logged.append(guard)
            if guard["decision"] in ("guard_wait", "rollback"):  # one version at a time
                return logged
        logged.append(self._maybe_finetune(round_no, past))
        return logged

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
        # the searches the parent served: since it was made (or the loop's last move to it)
        starts = [info[parent].time] if parent in info and parent != 0 else []
        starts += [
            float(r["moved_at"])
            for r in past
            if r.get("decision") == "rollback" and r.get("to_version") == parent
        ]
        before_from = max((s for s in starts if s < record.time), default=-math.inf)
        sig = live_signal(
            search_hits(self.state, since=None if before_from == -math.inf else before_from),
            record.time,
            before_from=before_from,
            window=self.guard_window,
            confidence=self.confidence,
        )
        detail = {"signal": asdict(sig), "parent": parent, "method": "newcombe-wilson"}
        if sig.before_n == 0:
            return self._log(round_no, "keep", current, reason="no searches before it", **detail)
        if sig.after_n < self.min_guard_searches:
            return self._log(round_no, "guard_wait", current, **detail)
        if sig.ci_high < 0:
            try:
                to = self.state.rollback(parent)
            except Exception as err:  # the store or database is away: the next round retries
                return self._log(round_no, "error", current, reason=_why(err), **detail)
            return self._log(
                round_no,
                "rollback",
                current,
                to_version=int(to),
                moved_at=time.time(),  # the trace log's clock: later searches are the parent's
                reason=f"live signal {sig.before:.3f} -> {sig.after:.3f}, "
                f"{round(self.confidence * 100)}% CI of the change [{sig.ci_low:+.3f}, "
                f"{sig.ci_high:+.3f}] below zero",
                **detail,
            )
        if sig.after_n >= self.settle_searches:
            return self._log(round_no, "keep", current, **detail)
        return self._log(round_no, "guard_wait", current, **detail)

    def new_labels(self, since: float | None) -> tuple[int, float | None]:
        """Searches with labelling feedback (relevant ids or a positive rating) newer than
        ``since``, and the newest such feedback time."""
        fresh: set[str] = set()
        newest = since
        for fb in self.state.feedback():
            if since is not None and fb.time <= since:
                continue
            positive = fb.rating is not None and fb.rating >= POSITIVE_RATING
            if fb.relevant_ids or positive:
                fresh.add(str(fb.trace_id))
                newest = fb.time if newest is None else max(newest, fb.time)
        return len(fresh), newest

    def _maybe_finetune(self, round_no: int, past: list[dict[str, Any]]) -> dict[str, Any]:

        marks = [r["labels_until"] for r in past if r.get("labels_until") is not None]
        since = float(marks[-1]) if marks else None
        n_new, newest = self.new_labels(since)
        current = int(self.state.current_version)
        if n_new < self.min_new_labels:
            return self._log(
                round_no,
                "skip",
                current,
                new_labels=n_new,
                reason=f"{n_new} new labelled searches, waiting for {self.min_new_labels}",
            )
        try:
            report = self.engine.finetune()
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
                labels_until=newest,
                report=keep,
                reason=f"NDCG@10 CI lower bound {report.ndcg.ci_low:+.4f} <= min_gain "
                f"{report.min_gain:+.4f}",
            )
        try:
            version = int(self.engine.apply(report))
        except Exception as err:  # GainNotProvenError, NudgeError, or the store went away
            return self._log(
                round_no, "error", current, new_labels=n_new, labels_until=newest, reason=_why(err)
            )
        return self._log(
            round_no,
            "apply",
            version,
            from_version=current,
            new_labels=n_new,
            labels_until=newest,
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
