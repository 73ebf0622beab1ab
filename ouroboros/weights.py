"""Published weights as one flat bucket: a float32 buffer plus an index of (name, offset, shape).

One buffer instead of a dict of tensors means one object in the Ray store, one
zero-copy fetch and one checksum pass. On the receiving side, `FlatParams`
rebinds the live parameters as views into a single flat tensor laid out like
the bucket, so making a version live is one memcpy, not one copy per tensor.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Entry:
    name: str
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class Bucket:
    flat: np.ndarray  # float32, 1-D
    index: tuple[Entry, ...]

    def tensors(self) -> dict[str, np.ndarray]:
        """Per-name views into the flat buffer (no copies)."""
        return {e.name: self.flat[e.offset:e.offset + e.numel].reshape(e.shape) for e in self.index}


def pack(named: list[tuple[str, object]]) -> Bucket:
    """Copy (name, torch tensor) pairs once into a new flat float32 buffer."""
    import torch

    index, offset = [], 0
    for name, t in named:
        index.append(Entry(name, offset, tuple(t.shape)))
        offset += t.numel()
    flat = torch.empty(offset, dtype=torch.float32)
    with torch.no_grad():
        for e, (_, t) in zip(index, named):
            flat[e.offset:e.offset + e.numel].copy_(t.detach().reshape(-1))
    return Bucket(flat.numpy(), tuple(index))


CHECKSUM_CHUNK = 8 << 20


def checksum(flat: np.ndarray, index: tuple[Entry, ...]) -> str:
    """A digest of the layout and the buffer that a generator recomputes on every load.

    It guards against corruption and mix-ups on the way (a truncated transfer, another
    version's buffer), not against someone who can write the object store. So the buffer is
    CRC32'd in 8 MiB chunks, on several threads where the host has the cores (zlib releases the
    GIL): verifying 538 MB of full weights costs about two memory copies, where blake2b over the
    whole buffer cost fifteen.
    The chunk CRCs and the layout are then hashed with blake2b."""
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    data = memoryview(np.ascontiguousarray(flat)).cast("B")
    chunks = [data[i:i + CHECKSUM_CHUNK] for i in range(0, len(data), CHECKSUM_CHUNK)]
    # Half the host's cores at most: generators on one node verify the same broadcast at once.
    threads = min(len(chunks), max(1, (os.cpu_count() or 1) // 2), 8)
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            crcs = list(pool.map(zlib.crc32, chunks))
    else:
        crcs = [zlib.crc32(c) for c in chunks]
    h = hashlib.blake2b(digest_size=16)
    for e in index:
        h.update(f"{e.name}:{e.offset}:{e.shape};".encode())
    h.update(len(data).to_bytes(8, "little"))
    for crc in crcs:
        h.update(crc.to_bytes(4, "little"))
    return h.hexdigest()


class FlatParams:
    """A model's parameters named in `index`, re-homed into one flat tensor with the same layout."""

    def __init__(self, params: dict[str, object], index: tuple[Entry, ...]) -> None:
        import torch

        missing = [e.name for e in index if e.name not in params]
        if missing:
            raise KeyError(f"{len(missing)} unknown tensors, e.g. {missing[0]!r}")
        for e in index:
            if tuple(params[e.name].shape) != e.shape:
                raise ValueError(f"tensor {e.name!r} has shape {tuple(params[e.name].shape)}, published {e.shape}")
        first = params[index[0].name]
        total = index[-1].offset + index[-1].numel
        self.flat = torch.empty(total, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for e in index:
                p = params[e.name]
                view = self.flat[e.offset:e.offset + e.numel].view(e.shape)
                view.copy_(p.data)
                p.data = view  # the parameter now lives inside the flat tensor
        self.layout = tuple(index)

    def matches(self, index: tuple[Entry, ...]) -> bool:
        return self.layout == tuple(index)

    def load(self, flat: np.ndarray) -> None:
        import torch

        with warnings.catch_warnings():
            # The object store hands out read-only buffers; we only read from it.
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(flat)
        with torch.no_grad():
            self.flat.copy_(src)
