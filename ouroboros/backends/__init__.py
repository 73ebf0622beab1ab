from ouroboros.backends.base import BackendError, ModelBackend, backend_class, backend_names

__all__ = ["BackendError", "ModelBackend", "backend_class", "backend_names"]
