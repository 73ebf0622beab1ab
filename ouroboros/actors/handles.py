"""Calling a collaborator that is either a Ray actor handle or a plain object.

Actors hold handles to other actors. In tests the same classes are wired with
plain objects, so an actor's logic runs without Ray; this is the one place that
tells the two apart.
"""
from __future__ import annotations

from typing import Any


def submit(handle: Any, method: str, *args, **kwargs) -> Any:
    """Start a call: an ObjectRef for an actor handle, the value itself for a plain object."""
    fn = getattr(handle, method)
    if hasattr(fn, "remote"):
        return fn.remote(*args, **kwargs)
    return fn(*args, **kwargs)


def resolve(value: Any) -> Any:
    """Wait for what `submit` returned (an ObjectRef or a list of them); plain values pass through."""
    import ray

    if isinstance(value, ray.ObjectRef):
        return ray.get(value)
    if isinstance(value, list) and value and all(isinstance(v, ray.ObjectRef) for v in value):
        return ray.get(value)
    return value
