"""Loopback stand-ins for the Anthropic Messages and OpenAI Chat Completions APIs.

Each server listens on 127.0.0.1 at an ephemeral port (a `ThreadingHTTPServer`
in a background thread) and speaks enough of the provider's wire format for the
official SDK to parse its replies. Replies are deterministic: the canned reply for
the last user message if one was set (`canned[prompt] = reply`, safe under
concurrency), else the next scripted reply (`script(...)`, in arrival order),
else the last user message reversed. A "token" is
a whitespace-separated word: usage counts words, and a reply longer than the
request's token limit is cut to that many words with a length stop reason.

Every request is recorded (`requests`: method, path, lower-cased headers, JSON
body) before it is answered, so tests can count attempts and check what the SDK
sent; `presented_key(recorded)` is the API key it carried (`x-api-key` or
`authorization: Bearer`). Failure modes:

- `fail_next(n, status)`: the next n requests get `status` (429, 500, ...);
- `fail_always(status)`: every request gets `status`;
- `expected_key`: requests without that key get 401, in the provider's style;
- `reject_params`: requests whose body has one of these fields get a 400 saying
  the parameter is unsupported;
- `delay_s`: sleep before answering (to observe concurrency: `max_in_flight`).

Error replies carry `retry-after-ms: 1`, which both SDKs honour, so retries are fast.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any
    at: float = field(default_factory=time.monotonic)  # when the server read it


def _words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    """Text of a message `content`: a string or a list of {"type": "text", "text"} blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections are dropped after this
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)


class FakeAPIServer:
    """What both fakes share: lifecycle, recording, scripted replies, failure modes."""

    provider = ""
    route = ""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: deque[str] = deque()
        self.canned: dict[str, str] = {}
        # A function of the last user message that makes the reply (a model's behaviour in a test).
        self.respond = None
        self.expected_key: str | None = None
        self.reject_params: set[str] = set()
        self.delay_s = 0.0
        self.max_in_flight = 0
        self._in_flight = 0
        self._fail_queue: deque[int] = deque()
        self._fail_always: int | None = None
        self._count = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "FakeAPIServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> "FakeAPIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's / backend's `base_url`."""
        return self.url

    # -- control ----------------------------------------------------------------------

    def script(self, *replies: str) -> None:
        self.replies.extend(replies)

    def fail_next(self, n: int, status: int = 429) -> None:
        with self._lock:
            self._fail_queue.extend([status] * n)

    def fail_always(self, status: int = 500) -> None:
        self._fail_always = status

    def reset_failures(self) -> None:
        with self._lock:
            self._fail_queue.clear()
        self._fail_always = None

    @property
    def posts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    # -- provider-specific hooks ------------------------------------------------------

    def presented_key(self, recorded: Recorded) -> str | None:
        return self._key_from(recorded.headers)

    def _key_from(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def _error_body(self, status: int, presented_key: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def _unsupported_body(self, param: str) -> dict[str, Any]:
        raise NotImplementedError

    def _success_body(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        raise NotImplementedError

    def _request_id_header(self) -> str:
        raise NotImplementedError

    # -- shared pieces ----------------------------------------------------------------

    def _next_reply(self, messages: list[dict[str, Any]]) -> str:
        users = [m for m in messages if m.get("role") == "user"]
        last = _content_text(users[-1].get("content")) if users else ""
        if self.respond is not None:
            return self.respond(last)
        with self._lock:
            if last in self.canned:
                return self.canned[last]
            if self.replies:
                return self.replies.popleft()
        return last[::-1]

    @staticmethod
    def _cut(reply: str, limit: Any) -> tuple[str, bool]:
        words = reply.split()
        if isinstance(limit, int) and len(words) > limit:
            return " ".join(words[:limit]), True
        return reply, False

    def _handle(self, h: _Handler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            self.requests.append(Recorded(h.command, h.path, headers, body))
            self._count += 1
            n = self._count
            status = self._fail_queue.popleft() if self._fail_queue else self._fail_always

        if h.command != "POST" or h.path.split("?")[0] != self.route:
            return self._send(h, 404, self._error_body(404, None))
        presented = self._key_from(headers)
        if self.expected_key is not None and presented != self.expected_key:
            return self._send(h, 401, self._error_body(401, presented))
        if status is not None:
            return self._send(h, status, self._error_body(status, presented))
        if not isinstance(body, dict):
            return self._send(h, 400, self._unsupported_body("body"))
        for p in sorted(self.reject_params):
            if p in body:
                return self._send(h, 400, self._unsupported_body(p))

        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            reply = self._success_body(body, n)
        finally:
            with self._lock:
                self._in_flight -= 1
        self._send(h, 200, reply)

    def _send(self, h: _Handler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.send_header(self._request_id_header(), f"req_fake_{self._count}")
        if status >= 400:
            h.send_header("retry-after-ms", "1")
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()


class FakeAnthropicServer(FakeAPIServer):
    """`POST /v1/messages`; the key arrives in `x-api-key` or, as anthropic>=2 sends
    it, in `authorization: Bearer <key>`."""

    provider = "anthropic"
    route = "/v1/messages"

    _ERROR_TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        529: "overloaded_error",
    }

    def _key_from(self, headers: dict[str, str]) -> str | None:
        return headers.get("x-api-key") or super()._key_from(headers)

    def _request_id_header(self) -> str:
        return "request-id"

    def _error_body(self, status: int, presented_key: str | None) -> dict[str, Any]:
        kind = self._ERROR_TYPES.get(status, "api_error")
        message = {
            401: "invalid x-api-key",  # the real API's wording, whichever header was used
            404: "model: not found",
            429: "Number of request tokens has exceeded your per-minute rate limit",
            529: "Overloaded",
        }.get(status, "Internal server error" if status >= 500 else f"fake error {status}")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def _unsupported_body(self, param: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": f"{param}: Extra inputs are not permitted"},
        }

    def _success_body(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        messages = body.get("messages") or []
        reply, cut = self._cut(self._next_reply(messages), body.get("max_tokens"))
        prompt = _content_text(body.get("system", "")) + " " + " ".join(
            _content_text(m.get("content")) for m in messages
        )
        return {
            "id": f"msg_fake_{n:04d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "max_tokens" if cut else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": _words(prompt), "output_tokens": _words(reply)},
        }


class FakeOpenAIServer(FakeAPIServer):
    """`POST /v1/chat/completions`; the key arrives as `authorization: Bearer <key>`."""

    provider = "openai"
    route = "/v1/chat/completions"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def _request_id_header(self) -> str:
        return "x-request-id"

    def _error_body(self, status: int, presented_key: str | None) -> dict[str, Any]:
        if status == 401:
            # Like the real API, echo a masked form of the key that was presented.
            k = presented_key or ""
            masked = f"{k[:5]}{'*' * max(0, len(k) - 9)}{k[-4:]}" if len(k) > 9 else "***"
            return {
                "error": {
                    "message": f"Incorrect API key provided: {masked}. You can find your API key "
                    "at https://platform.openai.com/account/api-keys.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        kind, code, message = {
            404: ("invalid_request_error", "model_not_found", "The model does not exist"),
            429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests"),
        }.get(status, ("server_error", None, "The server had an error while processing your request."))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def _unsupported_body(self, param: str) -> dict[str, Any]:
        return {
            "error": {
                "message": f"Unsupported parameter: '{param}' is not supported with this model.",
                "type": "invalid_request_error",
                "param": param,
                "code": "unsupported_parameter",
            }
        }

    def _success_body(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        messages = body.get("messages") or []
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        reply, cut = self._cut(self._next_reply(messages), limit)
        words = reply.split()
        logprobs = None
        if body.get("logprobs"):
            logprobs = {
                "content": [
                    {"token": w, "logprob": -0.5 * (i + 1), "bytes": list(w.encode()), "top_logprobs": []}
                    for i, w in enumerate(words)
                ],
                "refusal": None,
            }
        prompt_tokens = sum(_words(_content_text(m.get("content"))) for m in messages)
        return {
            "id": f"chatcmpl-fake{n:04d}",
            "object": "chat.completion",
            "created": 1_700_000_000 + n,
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": "length" if cut else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            },
        }
