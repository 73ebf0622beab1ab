"""The worker side of a full-weights sync into a running vLLM engine.

vLLM mixes this class into its model worker (`worker_extension_cls`), so its methods run
where the model lives and are reached with `collective_rpc`. In-process engines get the
published flat buffer by reference (zero copy from the object store); a multiprocess engine
maps a copy of it in shared memory. Either way vLLM's in-place reload copies it into the
model's parameters, fusing q/k/v and gate/up projections as it goes, and re-runs the
post-load processing (on CPU, the oneDNN packing of every linear layer).

Only import-light code here: vLLM imports it inside its worker by name.
"""
from __future__ import annotations


class WeightSync:
    def ouroboros_load_full(self, flat, index) -> int:
        """Load published full weights (Hugging Face names) into the worker's model; returns
        how many tensors were sent. `flat` is a 1-D float32 tensor (in-process engines), or the
        path of a float32 file in shared memory (multiprocess engines: vLLM's message encoder
        does not rebuild a tensor passed to collective_rpc). `index` holds (name, offset, shape)
        triples."""
        import torch

        if isinstance(flat, str):  # a multiprocess engine: the buffer comes as a file in shared memory
            import numpy as np

            flat = torch.from_numpy(np.memmap(flat, dtype=np.float32, mode="r"))
        weights = ((name, flat[offset:offset + _numel(shape)].view(tuple(shape))) for name, offset, shape in index)
        # vLLM's in-place reload: the model's own load_weights behind its wrappers (LoRA layers
        # included), then its LoRA, encoder and multimodal caches reset.
        self.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)  # type: ignore[attr-defined]
        return len(index)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
