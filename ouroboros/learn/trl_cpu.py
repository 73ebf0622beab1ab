"""Make TRL's fused LM head score only completion tokens on CPU.

TRL's DPO forward projects hidden states through the LM head in tiles. On
Triton devices it scores only positions with a label (the completion); on
every other device it scores all positions, prompt included, because on
Neuron a varying token count would recompile the graph. CPU has no such
cost, and scoring the prompt too made a DPO step on the tiny test model
several times slower (the 49k-vocab head dominates). TRL decides this with
the name `_use_triton` bound in `trl.trainer.utils`; the kernel dispatch uses
its own binding in `trl.kernels.chunked_logprob`, which stays untouched, so
the CPU tiles still run in plain torch.
"""
from __future__ import annotations

_applied = False


def score_completion_tokens_only_on_cpu() -> bool:
    """Apply once; returns False (and changes nothing) if this TRL version lacks the hook."""
    global _applied
    if _applied:
        return True
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return False
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    _applied = True
    return True
