"""What the hosted-API backends (anthropic_api, openai_api) share.

`ApiBackend` reads the API key from an environment variable, imports the
provider SDK lazily, builds its client, fans requests out over a thread pool
(`concurrency`), and turns whatever the SDK still raises after its own retries
(`max_retries`, with backoff on 408/409/429/5xx and connection errors) into a
`BackendError` saying what happened and what to check. A subclass names its
provider in class attributes and supplies `_make_client` and `_one`.

It has no local weights, so `load_weights` refuses (`ModelBackend` does that).
The key is handed to the SDK and kept only to redact it from error text: it
never appears in a message built here.
"""
from __future__ import annotations

import abc
import importlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ouroboros.backends.base import BackendError, ModelBackend
from ouroboros.types import Completion, Request

# Key-shaped text a provider or proxy may echo back, e.g. "Incorrect API key provided:
# sk-ab****wxyz" or "sk-ant-api03-...".
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-\*\.]{3,}")

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
    """`kind: message` out of an error body: Anthropic's {"type": "error", "error": {...}}
    or the inner "error" object the OpenAI SDK hands over."""
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


class ApiBackend(ModelBackend):
    """A model behind a provider's HTTP API, reached through the provider's SDK."""

    sdk_module = ""  # importable name, also what `pip install` takes
    sdk_label = ""  # how the SDK is named in the install hint
    key_env = ""  # environment variable holding the key when api_key_env is not given
    key_hint = "a valid API key"  # what that variable should hold, for the 401/403 advice
    peer = "API"  # what answered, in the advice text
    sent_params = ""  # parameters worth checking after a 400, e.g. " (temperature, top_p)"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = None,
        max_retries: int = 4,
        timeout_s: float = 60.0,
        concurrency: int = 8,
    ) -> None:
        super().__init__()
        self.model = model
        api_key_env = api_key_env or self.key_env
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max_retries
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise BackendError(
                f"{self.name} backend (model {model!r}) needs an API key, but the environment "
                f"variable {api_key_env} is not set or is empty; export {api_key_env}=<your key> "
                "(or set api_key_env to the name of the variable that holds it)"
            )
        self._key = key  # kept only to redact it from error text; never logged
        try:
            sdk = importlib.import_module(self.sdk_module)
        except ImportError as e:
            raise BackendError(
                f"the {self.name!r} backend needs the {self.sdk_label} SDK; install it with "
                f"`pip install {self.sdk_module}`"
            ) from e
        self._sdk = sdk
        self._client = self._make_client(sdk, key, base_url, max_retries, timeout_s)
        self.base_url = str(self._client.base_url)
        # Guards the per-backend parameter fallbacks, which worker threads may flip at once.
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # no key in here
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    # -- public ---------------------------------------------------------------------

    def generate(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        workers = min(self.concurrency, len(requests))
        if workers == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=self.name) as pool:
            return list(pool.map(self._one, requests))

    def close(self) -> None:
        self._client.close()

    # -- provider-specific ----------------------------------------------------------

    @abc.abstractmethod
    def _make_client(
        self, sdk: Any, key: str, base_url: str | None, max_retries: int, timeout_s: float
    ) -> Any:
        """The SDK's client; it must have `base_url` and `close()`."""

    @abc.abstractmethod
    def _one(self, req: Request) -> Completion:
        """One request, sent and parsed; SDK errors raised as `_backend_error(e, req)`."""

    # -- shared internals -----------------------------------------------------------

    def _completion(
        self,
        req: Request,
        text: str,
        *,
        prompt_tokens: int,
        output_tokens: int | None,
        length: bool,
        logprobs: list[float] | None = None,
    ) -> Completion:
        # No token ids: the API returns text only, so token counts come from its usage.
        return Completion(
            request_id=req.id,
            text=text,
            token_ids=[],
            logprobs=logprobs or [],
            weights_version=self.weights_version,
            backend=self.name,
            prompt_tokens=int(prompt_tokens or 0),
            finish_reason="length" if length else "stop",
            output_tokens=None if output_tokens is None else int(output_tokens),
        )

    def _error_text(self, e: Exception) -> str:
        return _provider_message(getattr(e, "body", None), getattr(e, "message", str(e)))

    def _rejects_param(self, e: Exception, param: str) -> bool:
        """Whether a 400 says `param` is not accepted at all, so dropping or renaming it helps."""
        body = getattr(e, "body", None)
        if isinstance(body, dict) and body.get("param") == param:
            return True
        text = self._error_text(e)
        return param in text and bool(_UNSUPPORTED.search(text))

    def _backend_error(self, e: Exception, req: Request) -> BackendError:
        sdk = self._sdk
        where = (
            f"{self.name} backend (model {self.model!r}, base_url {self.base_url!r}), "
            f"request {req.id!r}"
        )
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
        err = BackendError(_redact(msg, self._key))
        err.status = getattr(e, "status_code", None)  # callers that can wait out a 429 read it
        return err

    def _advice(self, status: int) -> str:
        if status in (401, 403):
            return f"check that {self.api_key_env} holds {self.key_hint} with access to this model"
        if status == 404:
            return f"check the model name {self.model!r} and base_url"
        if status == 429:
            return (
                "rate limited or out of quota after all retries; check the account's usage "
                "limits and billing, lower concurrency, or raise max_retries"
            )
        if status in (400, 413, 422):
            return (
                f"the {self.peer} rejected the request; check the model supports the parameters "
                f"sent{self.sent_params} and that the prompt plus max_new_tokens fits its context"
            )
        if status >= 500:
            return f"the {self.peer} failed after all retries; try again later or raise max_retries"
        return f"check the key in {self.api_key_env}, the model name and the account's quota"
