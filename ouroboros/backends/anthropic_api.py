"""Claude through the Anthropic Messages API, via the official `anthropic` SDK.

Used for judging and for baselines; it has no local weights, so `load_weights`
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

# Key-shaped text a provider or proxy might echo back ("sk-ant-api03-...").
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-\*\.]{3,}")

# A 400 that says the parameter itself is not accepted (not that its value is out of range).
_UNSUPPORTED = re.compile(
    r"not permitted|not supported|unsupported|unknown|unrecognized|deprecated|not allowed|extra",
    re.IGNORECASE,
)

# Stop reasons that mean the reply was cut short rather than finished.
_LENGTH_STOPS = {"max_tokens", "model_context_window_exceeded"}


def _redact(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "<redacted>")
    return _KEYLIKE.sub("<redacted>", text)


def _provider_message(body: Any, fallback: str) -> str:
    """`type: message` out of an Anthropic error body ({"type": "error", "error": {...}})."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            kind = err.get("type")
            return f"{kind}: {err['message']}" if kind else str(err["message"])
        if isinstance(err, str) and err:
            return err
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def _rejects_param(text: str, param: str) -> bool:
    return param in text and bool(_UNSUPPORTED.search(text))


class AnthropicBackend(ModelBackend):
    name = "anthropic"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        max_retries: int = 4,
        timeout_s: float = 60.0,
        concurrency: int = 8,
    ) -> None:
        super().__init__()
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max_retries
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise BackendError(
                f"anthropic backend (model {model!r}) needs an API key, but the environment "
                f"variable {api_key_env} is not set or is empty; export {api_key_env}=<your key> "
                "(or set api_key_env to the name of the variable that holds it)"
            )
        self._key = key  # kept only to redact it from error text; never logged
        try:
            import anthropic
        except ImportError as e:
            raise BackendError(
                "the 'anthropic' backend needs the Anthropic SDK; install it with "
                "`pip install anthropic`"
            ) from e
        self._sdk = anthropic
        self._client = anthropic.Anthropic(
            api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout_s
        )
        self.base_url = str(self._client.base_url)
        # The installed SDK's typed `messages.create` no longer has `temperature`, so it
        # goes in `extra_body`. If the API rejects it for this model, we stop sending it.
        self._send_temperature = True
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # no key in here
        return f"AnthropicBackend(model={self.model!r}, base_url={self.base_url!r})"

    # -- public ---------------------------------------------------------------------

    def generate(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        workers = min(self.concurrency, len(requests))
        if workers == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="anthropic") as pool:
            return list(pool.map(self._one, requests))

    def close(self) -> None:
        self._client.close()

    # -- internals ------------------------------------------------------------------

    @staticmethod
    def _split(req: Request) -> tuple[str | None, list[dict[str, str]]]:
        system: list[str] = []
        turns: list[dict[str, str]] = []
        for m in req.messages:
            role, content = m.get("role"), m.get("content", "")
            if role == "system":
                system.append(content)
            elif role in ("user", "assistant"):
                turns.append({"role": role, "content": content})
            else:
                raise BackendError(
                    f"request {req.id!r} has a message with role {role!r}; the anthropic "
                    "backend accepts only 'system', 'user' and 'assistant' turns"
                )
        if not turns:
            raise BackendError(
                f"request {req.id!r} has no user/assistant turns; the Messages API needs at "
                "least one user message"
            )
        return ("\n\n".join(system) if system else None), turns

    def _one(self, req: Request) -> Completion:
        system, turns = self._split(req)
        kwargs: dict[str, Any] = dict(
            model=self.model, max_tokens=req.max_new_tokens, messages=turns
        )
        if system is not None:
            kwargs["system"] = system
        send_temperature = self._send_temperature
        try:
            msg = self._create(kwargs, req.temperature if send_temperature else None)
        except self._sdk.BadRequestError as e:
            if not (send_temperature and _rejects_param(self._error_text(e), "temperature")):
                raise self._backend_error(e, req) from None
            with self._lock:
                if self._send_temperature:
                    self._send_temperature = False
                    log.warning(
                        "model %s rejected the 'temperature' parameter; sending requests "
                        "without it from now on",
                        self.model,
                    )
            try:
                msg = self._create(kwargs, None)
            except self._sdk.APIError as e2:
                raise self._backend_error(e2, req) from None
        except self._sdk.APIError as e:
            raise self._backend_error(e, req) from None

        text = "".join(
            getattr(block, "text", "") for block in msg.content if getattr(block, "type", "") == "text"
        )
        usage = msg.usage
        prompt_tokens = (
            (getattr(usage, "input_tokens", 0) or 0)
            + (getattr(usage, "cache_creation_input_tokens", 0) or 0)
            + (getattr(usage, "cache_read_input_tokens", 0) or 0)
        )
        return Completion(
            request_id=req.id,
            text=text,
            token_ids=[],
            logprobs=[],
            weights_version=self.weights_version,
            backend=self.name,
            prompt_tokens=int(prompt_tokens),
            finish_reason="length" if msg.stop_reason in _LENGTH_STOPS else "stop",
        )

    def _create(self, kwargs: dict[str, Any], temperature: float | None) -> Any:
        extra = {"temperature": temperature} if temperature is not None else None
        return self._client.messages.create(**kwargs, extra_body=extra)

    def _error_text(self, e: Exception) -> str:
        return _provider_message(getattr(e, "body", None), getattr(e, "message", str(e)))

    def _backend_error(self, e: Exception, req: Request) -> BackendError:
        sdk = self._sdk
        where = f"anthropic backend (model {self.model!r}, base_url {self.base_url!r}), request {req.id!r}"
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
            rid = f" (request-id {e.request_id})" if getattr(e, "request_id", None) else ""
            msg = f"{where}: HTTP {status}: {detail}{rid}; " + self._advice(status)
        else:
            msg = f"{where}: {type(e).__name__}: {getattr(e, 'message', e)}"
        return BackendError(_redact(msg, self._key))

    def _advice(self, status: int) -> str:
        if status in (401, 403):
            return (
                f"check that {self.api_key_env} holds a valid Anthropic API key with access to "
                "this model"
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
                "the API rejected the request; check the model supports the parameters sent "
                "and that the prompt plus max_new_tokens fits its context"
            )
        if status >= 500:
            return "the API failed after all retries; try again later or raise max_retries"
        return f"check the key in {self.api_key_env}, the model name and the account's quota"
