"""A real local HTTP server that speaks the OpenAI chat completions API, with fault injection.

Tests, notebooks and the CLI demo point an ``openai.OpenAI`` client at it; a ``judge``
callback decides every answer (for relevance judgments, usually :class:`QrelsJudge`, which
answers from a dataset's qrels). Faults come two ways: seeded rates drawn per request
(:class:`Faults`) and one-shot faults queued for the next requests (:meth:`OpenAIStub.queue`).

Example::

    from nudge_rag.testing import OpenAIStub, QrelsJudge

    with OpenAIStub(QrelsJudge({"what is x?": {"doc1": 2}})) as stub:
        client = stub.client()  # openai.OpenAI(base_url=stub.base_url, api_key=...)
        stub.queue("429", "malformed")  # the next request gets a 429, the one after bad JSON
        ...
        print(stub.counts())  # {"200": 3, "429": 1}

Only ``POST /v1/chat/completions`` and ``GET /v1/models`` exist; the server binds 127.0.0.1
on a free port and runs in a daemon thread.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nudge_rag.errors import BadInputError

__all__ = ["FAULT_KINDS", "Faults", "Judge", "OpenAIStub", "StubRequest"]

FAULT_KINDS = ("429", "500", "503", "400", "malformed", "slow")
"""One-shot faults for :meth:`OpenAIStub.queue`: status codes, a broken-JSON 200, a slow 200."""

Judge = Callable[[dict[str, Any]], "str | Mapping[str, Any] | list[Any]"]
"""Gets the request body (``model``, ``messages``, ...); returns the answer content."""


@dataclass
class Faults:
    """Seeded fault rates: each request draws once and gets at most one fault.

    ``rate_limit`` → 429 with ``Retry-After: retry_after``; ``server_error`` → 500;
    ``malformed`` → a 200 whose content is truncated JSON; ``slow`` → the answer after
    ``slow_seconds``; ``reject_params`` → 400 naming the first of these body parameters a
    request sends (a server without structured outputs: ``("response_format",)``; a model
    that takes no temperature: ``("temperature",)``).
    """

    rate_limit: float = 0.0
    server_error: float = 0.0
    malformed: float = 0.0
    slow: float = 0.0
    retry_after: float = 1.0
    slow_seconds: float = 2.0
    reject_params: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class StubRequest:
    """One request the stub saw: when, what it answered, which fault (if any), the body."""

    time: float
    path: str
    status: int
    fault: str | None
    body: dict[str, Any] = field(repr=False)


def _default_judge(body: dict[str, Any]) -> Any:
    from nudge_rag.testing.judges import QrelsJudge

    return QrelsJudge({})(body)


class OpenAIStub:
    """An OpenAI-compatible chat completions server on 127.0.0.1 (a context manager)."""

    def __init__(
        self,
        judge: Judge | None = None,
        *,
        faults: Faults | None = None,
        model: str = "stub-judge",
        api_key: str = "stub-key",
    ) -> None:
        self.judge = judge or _default_judge
        self.faults = faults or Faults()
        self.model = model
        self.api_key = api_key
        self.requests: list[StubRequest] = []
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> OpenAIStub:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            return self
        stub = self

        class Handler(_Handler):
            owner = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-stub",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: the ``base_url`` for an openai client."""
        if self._server is None:
            msg = "OpenAIStub is not running; use it as a context manager or call start()."
            raise RuntimeError(msg)
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def client(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client for this server (``kwargs`` go to the constructor)."""
        import openai

        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, **kwargs)

    # -- faults and records ---------------------------------------------------------------------

    def queue(self, *kinds: str) -> None:
        """Give the next ``len(kinds)`` chat requests these faults, in order (see FAULT_KINDS)."""
        bad = [k for k in kinds if k not in FAULT_KINDS]
        if bad:
            msg = f"queue: unknown fault(s) {bad}, expected some of {FAULT_KINDS}."
            raise BadInputError(msg)
        with self._lock:
            self._queue.extend(kinds)

    def counts(self) -> dict[str, int]:
        """How many chat requests got each status, as ``{"200": n, "429": m, ...}``."""
        with self._lock:
            c = Counter(str(r.status) for r in self.requests if r.path.endswith("/completions"))
        return dict(c)

    @property
    def chat_requests(self) -> list[StubRequest]:
        """The chat completion requests so far."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/completions")]

    def _draw_fault(self, body: dict[str, Any]) -> str | None:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
            f = self.faults
            rejected = next((p for p in f.reject_params if p in body), None)
            if rejected is not None:
                return f"400:{rejected}"
            u = self._rng.random()
        for kind, rate in (
            ("429", f.rate_limit),
            ("500", f.server_error),
            ("malformed", f.malformed),
            ("slow", f.slow),
        ):
            if u < rate:
                return kind
            u -= rate
        return None

    def _record(self, path: str, status: int, fault: str | None, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(StubRequest(time.monotonic(), path, status, fault, body))


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIStub
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stalls

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            self.close_connection = True

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(
            status, "server_error"
        )
        self._send(status, {"error": {"message": message, "type": kind, "code": kind}}, headers)

    def do_GET(self) -> None:
        stub = self.owner
        if self.path.rstrip("/").endswith("/models"):
            stub._record(self.path, 200, None, {})
            self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        stub = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            stub._record(self.path, 400, None, {})
            self._error(400, "body is not JSON")
            return
        fault = stub._draw_fault(body)
        f = stub.faults
        if fault == "429":
            stub._record(self.path, 429, fault, body)
            wait = f.retry_after
            headers = {
                "Retry-After": str(max(math.ceil(wait), 0)),
                "retry-after-ms": str(int(wait * 1000)),
            }
            self._error(429, "Rate limit reached; try again later.", headers)
            return
        if fault in ("500", "503"):
            stub._record(self.path, int(fault), fault, body)
            self._error(int(fault), "The server had an error while processing your request.")
            return
        if fault is not None and fault.startswith("400"):
            param = fault.partition(":")[2] or "response_format"
            stub._record(self.path, 400, fault, body)
            self._error(400, f"Unsupported parameter: '{param}' is not supported with this model.")
            return
        if fault == "slow":
            time.sleep(f.slow_seconds)
        try:
            answer = stub.judge(body)
        except Exception as exc:  # a judge bug shows as a 500 with its message
            stub._record(self.path, 500, "judge-error", body)
            self._error(500, f"judge raised {type(exc).__name__}: {exc}")
            return
        content = answer if isinstance(answer, str) else json.dumps(answer)
        if fault == "malformed":
            content = content[: max(len(content) // 2, 1)] + ',"'
        stub._record(self.path, 200, fault, body)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        usage = {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": len(content) // 4,
            "total_tokens": prompt_chars // 4 + len(content) // 4,
        }
        self._send(
            200,
            {
                "id": f"chatcmpl-stub-{len(stub.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", stub.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            },
        )
