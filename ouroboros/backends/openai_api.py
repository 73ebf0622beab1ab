"""Models behind the OpenAI Chat Completions API, via the official `openai` SDK.

Works against api.openai.com and against OpenAI-compatible servers (vLLM,
llama.cpp, ...) through `base_url`. It has no local weights, so `load_weights`
refuses (the base class does that). Retries with backoff on 408/409/429/5xx and
connection errors are the SDK's own (`max_retries`); whatever still fails after
them becomes a `BackendError` saying what happened and what to check.

The API key is read from the environment variable named by `api_key_env` and
handed to the SDK; it never appears in a message this module builds.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ouroboros.backends.base import BackendError, ModelBackend
from ouroboros.types import Completion, Request

log = logging.getLogger(__name__)

# Key-shaped text a provider may echo back, e.g. "Incorrect API key provided: sk-ab****wxyz".
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-\*\.]{3,}")

_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens")

# A 400 that says a parameter itself is not accepted (not that its value is out of range).
_UNSUPPORTED = re.compile(
    r"not permitted|not supported|unsupported|unknown|unrecognized|deprecated|not allowed|extra",
    re.IGNORECASE,
)


def _redact(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "<redacted>")
    return _KEYLIKE.sub("<redacted>", text)


def _provider_message(body: Any, fallback: str) -> str:
    """`type: message` out of an OpenAI error body (the SDK hands over the inner "error")."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            kind = err.get("code") or err.get("type")
            return f"{kind}: {err['message']}" if kind else str(err["message"])
        if isinstance(err, str) and err:
            return err
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


class OpenAIBackend(ModelBackend):
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_retries: int = 4,
        timeout_s: float = 60.0,
        concurrency: int = 8,
        request_logprobs: bool = False,
        max_tokens_param: str = "max_completion_tokens",
    ) -> None:
        super().__init__()
        if max_tokens_param not in _TOKEN_FIELDS:
            raise BackendError(
                f"max_tokens_param must be one of {_TOKEN_FIELDS}, got {max_tokens_param!r}"
            )
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max_retries
        self.request_logprobs = bool(request_logprobs)
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise BackendError(
                f"openai backend (model {model!r}) needs an API key, but the environment "
                f"variable {api_key_env} is not set or is empty; export {api_key_env}=<your key> "
                "(or set api_key_env to the name of the variable that holds it)"
            )
        self._key = key  # kept only to redact it from error text; never logged
        try:
            import openai
        except ImportError as e:
            raise BackendError(
                "the 'openai' backend needs the OpenAI SDK; install it with `pip install openai`"
            ) from e
        self._sdk = openai
        self._client = openai.OpenAI(
            api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout_s
        )
        self.base_url = str(self._client.base_url)
        # OpenAI's newer models take only `max_completion_tokens`; some OpenAI-compatible
        # servers take only `max_tokens`. If the server rejects the one we send, we switch.
        self._tokens_field = max_tokens_param
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # no key in here
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    # -- public ---------------------------------------------------------------------

    def generate(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        workers = min(self.concurrency, len(requests))
        if workers == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai") as pool:
            return list(pool.map(self._one, requests))

    def close(self) -> None:
        self._client.close()

    # -- internals ------------------------------------------------------------------

    def _one(self, req: Request) -> Completion:
        messages = [{"role": m["role"], "content": m.get("content", "")} for m in req.messages]
        kwargs: dict[str, Any] = dict(
            model=self.model,
            messages=messages,
            temperature=req.temperature,
            top_p=req.top_p,
        )
        if req.seed is not None:
            kwargs["seed"] = req.seed
        if self.request_logprobs:
            kwargs["logprobs"] = True
        field = self._tokens_field
        try:
            resp = self._client.chat.completions.create(**kwargs, **{field: req.max_new_tokens})
        except self._sdk.BadRequestError as e:
            if not self._rejects_field(e, field):
                raise self._backend_error(e, req) from None
            other = next(f for f in _TOKEN_FIELDS if f != field)
            with self._lock:
                if self._tokens_field == field:
                    self._tokens_field = other
                    log.warning(
                        "%s rejected %r; sending %r from now on", self.base_url, field, other
                    )
            try:
                resp = self._client.chat.completions.create(**kwargs, **{other: req.max_new_tokens})
            except self._sdk.APIError as e2:
                raise self._backend_error(e2, req) from None
        except self._sdk.APIError as e:
            raise self._backend_error(e, req) from None

        if not resp.choices:
            raise BackendError(
                f"openai backend (model {self.model!r}), request {req.id!r}: the server returned "
                "no choices; check that base_url points at a Chat Completions endpoint"
            )
        choice = resp.choices[0]
        message = choice.message
        text = message.content if message.content is not None else (getattr(message, "refusal", None) or "")
        logprobs: list[float] = []
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = [float(t.logprob) for t in choice.logprobs.content]
        prompt_tokens = resp.usage.prompt_tokens if resp.usage is not None else 0
        return Completion(
            request_id=req.id,
            text=text,
            token_ids=[],
            logprobs=logprobs,
            weights_version=self.weights_version,
            backend=self.name,
            prompt_tokens=int(prompt_tokens or 0),
            finish_reason="length" if choice.finish_reason == "length" else "stop",
        )

    def _error_text(self, e: Exception) -> str:
        return _provider_message(getattr(e, "body", None), getattr(e, "message", str(e)))

    def _rejects_field(self, e: Exception, field: str) -> bool:
        body = getattr(e, "body", None)
        if isinstance(body, dict) and body.get("param") == field:
            return True
        text = self._error_text(e)
        return field in text and bool(_UNSUPPORTED.search(text))

    def _backend_error(self, e: Exception, req: Request) -> BackendError:
        sdk = self._sdk
        where = f"openai backend (model {self.model!r}, base_url {self.base_url!r}), request {req.id!r}"
        retries = f"after {self.max_retries} retries"
        if isinstance(e, sdk.APITimeoutError):
            msg = (
                f"{where}: timed out {retries}; raise timeout_s, lower max_new_tokens, or "
                "check the network"
            )
        elif isinstance(e, sdk.APIConnectionError):
            msg = (
                f"{where}: could not connect {retries} ({e.message}); check the network and "
                "base_url"
            )
        elif isinstance(e, sdk.APIStatusError):
            status = e.status_code
            detail = self._error_text(e)
            rid = f" (request id {e.request_id})" if getattr(e, "request_id", None) else ""
            msg = f"{where}: HTTP {status}: {detail}{rid}; " + self._advice(status)
        else:
            msg = f"{where}: {type(e).__name__}: {getattr(e, 'message', e)}"
        return BackendError(_redact(msg, self._key))

    def _advice(self, status: int) -> str:
        if status in (401, 403):
            return (
                f"check that {self.api_key_env} holds a valid API key for this server with "
                "access to this model"
            )
        if status == 404:
            return f"check the model name {self.model!r} and base_url"
        if status == 429:
            return (
                "rate limited or out of quota after all retries; check the account's usage "
                "limits and billing, lower concurrency, or raise max_retries"
            )
        if status in (400, 413, 422):
            return (
                "the server rejected the request; check the model supports the parameters sent "
                "(temperature, top_p, seed, logprobs, token limit) and that the prompt fits its "
                "context"
            )
        if status >= 500:
            return "the server failed after all retries; try again later or raise max_retries"
        return f"check the key in {self.api_key_env}, the model name and the account's quota"
