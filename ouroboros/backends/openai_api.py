"""Models behind the OpenAI Chat Completions API, via the official `openai` SDK.

Works against api.openai.com and against OpenAI-compatible servers (vLLM,
llama.cpp, ...) through `base_url`. Key handling, retries, concurrency and error
reporting are `ApiBackend`'s (api_client.py); this module turns chat turns into
a Chat Completions request and its reply (with logprobs, if asked for) into a
`Completion`.
"""
from __future__ import annotations

import logging
from typing import Any

from ouroboros.backends.api_client import ApiBackend
from ouroboros.backends.base import BackendError
from ouroboros.types import Completion, Request

log = logging.getLogger(__name__)

_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens")


class OpenAIBackend(ApiBackend):
    name = "openai"
    sdk_module = "openai"
    sdk_label = "OpenAI"
    key_env = "OPENAI_API_KEY"
    key_hint = "a valid API key for this server"
    peer = "server"
    sent_params = " (temperature, top_p, seed, logprobs, token limit)"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = None,
        max_retries: int = 4,
        timeout_s: float = 60.0,
        concurrency: int = 8,
        request_logprobs: bool = False,
        max_tokens_param: str = "max_completion_tokens",
    ) -> None:
        if max_tokens_param not in _TOKEN_FIELDS:
            raise BackendError(
                f"max_tokens_param must be one of {_TOKEN_FIELDS}, got {max_tokens_param!r}"
            )
        super().__init__(model, base_url, api_key_env, max_retries, timeout_s, concurrency)
        self.request_logprobs = bool(request_logprobs)
        # OpenAI's newer models take only `max_completion_tokens`; some OpenAI-compatible
        # servers take only `max_tokens`. If the server rejects the one we send, we switch.
        self._tokens_field = max_tokens_param

    def _make_client(
        self, sdk: Any, key: str, base_url: str | None, max_retries: int, timeout_s: float
    ) -> Any:
        return sdk.OpenAI(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout_s)

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
            if not self._rejects_param(e, field):
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
        # Some OpenAI-compatible servers send no usage at all.
        usage = resp.usage
        return self._completion(
            req,
            text,
            prompt_tokens=usage.prompt_tokens if usage is not None else 0,
            output_tokens=usage.completion_tokens if usage is not None else None,
            length=choice.finish_reason == "length",
            logprobs=logprobs,
        )
