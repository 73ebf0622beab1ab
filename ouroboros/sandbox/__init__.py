from ouroboros.sandbox.base import Limits, Sandbox, SandboxUnavailable, sandbox_class, sandbox_names

__all__ = ["Limits", "Sandbox", "SandboxUnavailable", "sandbox_class", "sandbox_names"]
