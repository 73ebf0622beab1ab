"""Claude through the Anthropic Messages API, via the official `anthropic` SDK.

Used for judging and for baselines. Key handling, retries, concurrency and
error reporting are `ApiBackend`'s (api_client.py); this module turns chat
turns into a Messages request and its reply into a `Completion`.
"""
from __future__ import annotations

import logging
from typing import Any

from ouroboros.backends.api_client import ApiBackend
from ouroboros.backends.base import BackendError
from ouroboros.types import Completion, Request

log = logging.getLogger(__name__)

# Stop reasons that mean the reply was cut short rather than finished.
_LENGTH_STOPS = {"max_tokens", "model_context_window_exceeded"}


class AnthropicBackend(ApiBackend):
    name = "anthropic"
    sdk_module = "anthropic"
    sdk_label = "Anthropic"
    key_env = "ANTHROPIC_API_KEY"
    key_hint = "a valid Anthropic API key"

    # The installed SDK's typed `messages.create` no longer has `temperature`, so it
    # goes in `extra_body`. If the API rejects it for this model, the instance stops
    # sending it (an instance attribute then shadows this default).
    _send_temperature = True

    def _make_client(
        self, sdk: Any, key: str, base_url: str | None, max_retries: int, timeout_s: float
    ) -> Any:
        return sdk.Anthropic(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout_s)

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
            if not (send_temperature and self._rejects_param(e, "temperature")):
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
        # Cached prompt tokens are counted apart from `input_tokens`; the prompt is all three.
        prompt_tokens = (
            (getattr(usage, "input_tokens", 0) or 0)
            + (getattr(usage, "cache_creation_input_tokens", 0) or 0)
            + (getattr(usage, "cache_read_input_tokens", 0) or 0)
        )
        return self._completion(
            req,
            text,
            prompt_tokens=prompt_tokens,
            output_tokens=getattr(usage, "output_tokens", None),
            length=msg.stop_reason in _LENGTH_STOPS,
        )

    def _create(self, kwargs: dict[str, Any], temperature: float | None) -> Any:
        extra = {"temperature": temperature} if temperature is not None else None
        return self._client.messages.create(**kwargs, extra_body=extra)
