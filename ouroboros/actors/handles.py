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
    """Wait for what `submit` returned: an ObjectRef is fetched, a plain value passes through
    (also where Ray is not installed: the classes then run plainly, as in a GPU benchmark)."""
    try:
        import ray
    except ImportError:
        return value

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def gather(items: Any) -> list:
    """One flat list from a batch handed over by reference: a ref or list of refs, each to a
    list of records (or to one record), or the same without refs when wired without Ray."""
    out: list = []
    for item in items if isinstance(items, list) else [items]:
        value = resolve(item)
        out.extend(value if isinstance(value, list) else [value])
    return out
