"""What the backends with local weights (hf, vllm) share, so both turn a request into the
same token ids and end a reply at the same tokens: equal prompts are what lets their
outputs be compared token for token."""
from __future__ import annotations

from typing import Any

from ouroboros.backends.base import BackendError


def unavailable(model: str, exc: OSError) -> BackendError:
    """A model folder or id that transformers cannot open, as one line that says what to use."""
    return BackendError(
        f"cannot load model {model!r}: {str(exc).splitlines()[0]}. "
        "Use a packaged name (`ouroboros models prepare`), a local folder, or a Hugging Face id on a host with hub access"
    )


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The chat template applied to `messages`, ready for the assistant's reply."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def eos_ids(eos: int | list[int] | None, tokenizer: Any) -> set[int]:
    """The tokens that end a reply: the model config's eos id(s) and the tokenizer's."""
    ids = eos if isinstance(eos, list) else [eos]
    return {i for i in ids + [tokenizer.eos_token_id] if i is not None}
