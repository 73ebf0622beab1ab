"""The interface every model backend implements, and the registry of names.

Provider SDKs are imported lazily inside each backend module, so a user who
never calls Anthropic does not need `anthropic` importable to start.
"""
from __future__ import annotations

import abc
import importlib
from typing import Any

from ouroboros.types import Completion, Request


class BackendError(RuntimeError):
    """A backend could not serve a request. The message says what to do next."""


class ModelBackend(abc.ABC):
    """Turns requests into completions, each tagged with the weights version used."""

    name: str = ""
    # Whether published versions can be made live (`load_weights`). A backend that cannot is
    # refused by `ouroboros run` before anything starts, except for an evaluation-only run.
    accepts_weights: bool = False

    def __init__(self) -> None:
        self.weights_version = 0

    @abc.abstractmethod
    def generate(self, requests: list[Request]) -> list[Completion]:
        """One completion per request, in order."""

    def load_weights(self, flat: Any, index: tuple, kind: str, version: int) -> None:
        """Make a published policy version live (a flat buffer laid out by `index`, see
        ouroboros/weights.py). Backends without local weights refuse."""
        raise BackendError(
            f"backend {self.name!r} has no local weights to update; "
            "use the 'hf' or 'vllm' backend for the policy being trained"
        )


# name -> "module:Class"; modules are imported only when the name is used.
_REGISTRY = {
    "hf": "ouroboros.backends.hf:HFBackend",
    "scripted": "ouroboros.backends.scripted:ScriptedBackend",
    "anthropic": "ouroboros.backends.anthropic_api:AnthropicBackend",
    "openai": "ouroboros.backends.openai_api:OpenAIBackend",
    "vllm": "ouroboros.backends.vllm:VLLMBackend",
    "human": "ouroboros.backends.human:HumanBackend",
}


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[ModelBackend]:
    if name not in _REGISTRY:
        raise BackendError(f"unknown model backend {name!r}; expected one of {backend_names()}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
