"""A training process on the CPU reuses its freed memory instead of asking the kernel for new pages.

glibc gives every allocation over 32 MB its own mapping and unmaps it when it is freed. A
training step's big tensors are of that size (the logits of 1,000 reply tokens over a 49k-token
vocabulary are 196 MB, and so are their gradients), so every step the kernel maps, faults in and
zeroes those pages again, and frees them. `reuse_freed_memory()` turns that off for this process:
big blocks come from the heap, and freed ones stay there for the next step.

The tiny model's build calls it: the build went from 217 to 158 s (CPU 422 to 315 s), the same
model bit for bit. The cost is memory: the process keeps its working set, and
the small objects a step allocates between its big blocks fragment the heap, so a freed block is
not always reused and the heap grows until it holds enough of them (over 120 warm-start steps the
peak resident memory was 2.0 GB against 1.5 GB, flat after the first 40). The learner does not
call it: on the default policy (SmolLM2-135M, GRPO on 2 cores) it gained nothing, 35.4 against
37.3 tokens/s without it (two runs each, alternated; benchmarks/README.md), though it saved the
tiny model's learner about a fifth of its CPU.

Only glibc has these settings; elsewhere (musl, macOS) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def reuse_freed_memory(keep_bytes: int = 1 << 30) -> bool:
    """Serve big allocations from the heap and keep up to `keep_bytes` freed at its top; True if
    the C library took both settings."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # M_TRIM_THRESHOLD is a C int.
    took = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, min(keep_bytes, 2**31 - 1)) == 1
    if not took:
        log.debug("mallopt refused the settings; big allocations stay mapped one by one")
    return took
