"""The trace log's batch writer: one daemon thread that writes queued rows in transactions.

A search only queues its row. The thread lets rows gather for up to ``LINGER_S`` (or
``BATCH_ROWS`` rows) and writes them all in one transaction, so a busy server wakes it a few
times a second, not once per search; a flush makes it write at once. A batch that fails to write
(disk full, database locked, server gone) stays queued, up to ``max_pending`` rows (the newest),
and is retried every ``_RETRY_S``; :meth:`BatchWriter.drain` hands the error to the caller
meanwhile. A row the database refuses inside a batch is retried alone and quarantined with the
reason; the rest of the batch is written.
"""

from __future__ import annotations

import threading
import time as _time
import warnings
from collections.abc import Callable
from typing import Any

from nudge_rag.state.traces.schema import _INSERT, _db_row, _describe

__all__ = ["BATCH_ROWS", "LINGER_S", "BatchWriter"]

LINGER_S = 0.2  # longest a queued trace waits for others to share its transaction
BATCH_ROWS = 2000  # a queue this long is written at once
_RETRY_S = 1.0  # pause after a failed write before retrying it
_MAX_PENDING = 200_000  # rows kept for retry while writes fail; older ones are dropped


class BatchWriter:
    """The queue of trace rows (and quarantine rows) and the thread that writes them.

    Key init args:
        where: the log's label, for thread names and warnings.
        transaction: ``transaction(write, *quarantine)`` runs ``write(conn)`` and inserts the
            quarantine row lists in one transaction (the log's lock held).
        row_errors: the exceptions that mean one row is refused, not the whole batch.
        product: the database's name, for a refused row's reason.
        written: called on the writer thread with the number of traces each batch wrote.
    """

    def __init__(
        self,
        *,
        where: str,
        name: str,
        transaction: Callable[..., None],
        row_errors: tuple[type[BaseException], ...],
        product: str,
        written: Callable[[int], None],
    ) -> None:
        self.where = where
        self._name = name
        self._transaction = transaction
        self._row_errors = row_errors
        self._product = product
        self._written = written
        self._cv = threading.Condition()
        self._queue: list[tuple] = []
        self._held: list[tuple] = []  # quarantine rows waiting for the writer
        self._inflight = 0
        self._urgent = 0  # flushes waiting: write now, do not linger
        self.dropped = 0  # rows given up on (writes kept failing)
        #: traces kept queued while writes fail (the newest; older ones are dropped, counted)
        self.max_pending = _MAX_PENDING
        self._overflowing = False
        self.unwarned: str | None = None  # a writer-side quarantine to warn about on flush
        self.stopping = False
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def put(self, row: tuple, *, quarantine: bool = False) -> bool:
        """Queue a trace row (or a quarantine row); False if the writer is stopping."""
        with self._cv:
            if self.stopping:
                return False
            if quarantine:
                self._held.append(row)
                n = 1
            else:
                self._queue.append(row)
                n = len(self._queue)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_loop, name=self._name, daemon=True
                )
                self._thread.start()
            elif n == 1 or n == BATCH_ROWS:
                self._cv.notify_all()
        return True

    def drain(self) -> tuple[BaseException | None, int, str | None]:
        """Wait until every queued row is written or a write failed.

        Returns (the write error, cleared; the rows still queued; a quarantine reason not yet
        warned about, cleared).
        """
        with self._cv:
            self._urgent += 1
            self._cv.notify_all()
            try:
                while (self._queue or self._held or self._inflight) and self.error is None:
                    self._cv.wait()
            finally:
                self._urgent -= 1
            err, self.error = self.error, None
            pending = len(self._queue)
            unwarned, self.unwarned = self.unwarned, None
        return err, pending, unwarned

    def stop(self) -> None:
        """Write what is queued (one last try) and end the thread."""
        with self._cv:
            self.stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _write_loop(self) -> None:
        """Write queued traces in batches, one transaction each; retry a batch that fails."""
        while True:
            with self._cv:
                while not self._queue and not self._held and not self.stopping:
                    self._cv.wait()
                if not self._queue and not self._held:
                    return
                deadline = _time.monotonic() + LINGER_S
                while not self.stopping and not self._urgent and len(self._queue) < BATCH_ROWS:
                    left = deadline - _time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                batch, self._queue = self._queue, []
                held, self._held = self._held, []
                self._inflight = len(batch) + len(held)
            err, bad = self._insert(batch, held)
            with self._cv:
                self._inflight = 0
                if err is not None:
                    self.error = err
                    if self.stopping:  # closing: nothing will retry
                        self.dropped += len(batch)
                    else:  # keep the newest rows (in order) for the next try
                        keep = (batch + self._queue)[-self.max_pending :]
                        lost = len(batch) + len(self._queue) - len(keep)
                        self.dropped += lost
                        self._queue = keep
                        self._held = (held + self._held)[-self.max_pending :]
                        if lost and not self._overflowing:
                            self._overflowing = True
                            warnings.warn(
                                f"TraceLog({self.where}): writes keep failing ({err}) and more "
                                f"than {self.max_pending} traces are queued; the oldest are "
                                f"dropped ({self.dropped} so far, counted in "
                                "stats()['dropped']). Check that the database is reachable.",
                                RuntimeWarning,
                                stacklevel=1,
                            )
                else:
                    self._overflowing = False
                    if bad and self.unwarned is None:
                        self.unwarned = bad[0][2]
                self._cv.notify_all()
                if err is not None:
                    self._cv.wait_for(lambda: self.stopping, timeout=_RETRY_S)
                    continue
            self._written(len(batch) - len(bad))

    def _insert(self, batch: list[tuple], held: list[tuple]) -> tuple[Exception | None, list]:
        """Write ``batch`` and the quarantine rows ``held`` in one transaction.

        Returns (the error if the write failed and nothing was written, the rows of ``batch``
        quarantined). If a row fails on its own, the rows are written one by one: those the
        database refuses are quarantined with the reason, the others written.
        """
        try:
            self._transaction(lambda c: c.executemany(_INSERT, [_db_row(r) for r in batch]), held)
        except self._row_errors:
            pass  # some row is bad: find it below
        except Exception as e:  # surfaced by flush; the batch is retried
            return e, []
        else:
            return None, []
        bad: list[tuple] = []

        def one_by_one(conn: Any) -> None:
            for r in batch:
                conn.execute("SAVEPOINT one_row")  # a refused row must not end the transaction
                try:
                    conn.execute(_INSERT, _db_row(r))
                    conn.execute("RELEASE SAVEPOINT one_row")
                except self._row_errors as e:
                    conn.execute("ROLLBACK TO SAVEPOINT one_row")
                    reason = f"{self._product} refused the row: {type(e).__name__}: {e}"
                    bad.append(
                        (
                            r[0],
                            r[1],
                            reason.encode("ascii", "backslashreplace").decode(),
                            _describe(r),
                        )
                    )

        try:
            self._transaction(one_by_one, held, bad)
        except Exception as e:
            return e, []
        return None, bad
