"""The worker side of a full-weights sync into a running vLLM engine.

vLLM mixes this class into its model worker (`worker_extension_cls`), so its methods run
where the model lives and are reached with `collective_rpc`. In-process engines get the
published flat buffer by reference (zero copy from the object store); a multiprocess engine
gets it pickled across. Either way the model's own `load_weights` does the one copy into
its parameters, fusing q/k/v and gate/up projections as it goes.

Only import-light code here: vLLM imports it inside its worker by name.
"""
from __future__ import annotations


class WeightSync:
    def ouroboros_load_full(self, flat, index) -> int:
        """Load published full weights (Hugging Face names) into the worker's model; returns
        how many tensors were sent."""
        import warnings

        import torch

        with warnings.catch_warnings():
            # The object store hands out read-only buffers; load_weights only reads them.
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(flat)
        weights = ((e.name, src[e.offset:e.offset + e.numel].view(e.shape)) for e in index)
        # vLLM's in-place reload: the model's own load_weights behind its wrappers (LoRA layers
        # included), then its LoRA, encoder and multimodal caches reset.
        self.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)  # type: ignore[attr-defined]
        return len(index)
