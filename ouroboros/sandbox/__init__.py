from ouroboros.sandbox.base import (
    BuildFailed,
    BuildUnsupported,
    Limits,
    Sandbox,
    SandboxError,
    SandboxUnavailable,
    sandbox_class,
    sandbox_names,
)
from ouroboros.sandbox.traits import TRAITS, Traits

__all__ = [
    "BuildFailed", "BuildUnsupported", "Limits", "Sandbox", "SandboxError", "SandboxUnavailable",
    "TRAITS", "Traits", "sandbox_class", "sandbox_names",
]
