"""Resolving a policy name to weights on disk, preparing packaged models on first use."""
from __future__ import annotations

from pathlib import Path

from ouroboros.models import smollm2, tiny

PACKAGED = {smollm2.NAME: smollm2, tiny.NAME: tiny}


def resolve(name: str, prepare: bool = True) -> str:
    """A packaged name becomes its cached folder (converted on first use); anything else
    (a Hugging Face id or a local path) is passed through to transformers as is."""
    module = PACKAGED.get(name)
    if module is None:
        return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    if not module.is_prepared() and not prepare:
        raise FileNotFoundError(f"model {name!r} is not prepared: run `ouroboros models prepare {name}`")
    return str(module.prepare())
