"""Small index/map tensors the kernels reuse, built once per key and device.

Built on the CPU and copied to the GPU on a side stream. CUDA-graph memory pools
(``torch.compile(mode="reduce-overhead")``, ``torch.cuda.graph``) only take
allocations made on the capturing stream, so a constant first built while a
graph is warming up stays outside the pool instead of becoming a live tensor the
graph does not own (cudagraph trees reject those).
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch

_CONSTANTS: dict[tuple[Hashable, torch.device], torch.Tensor] = {}
_SIDE_STREAMS: dict[torch.device, "torch.cuda.Stream"] = {}


def device_constant(key: Hashable, device: torch.device | str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor ``build()`` (made on the CPU) on ``device``, cached under ``key``; never written to."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    entry = (key, device)
    if entry not in _CONSTANTS:
        value = build()
        if device.type == "cuda":
            current = torch.cuda.current_stream(device)
            side = _SIDE_STREAMS.setdefault(device, torch.cuda.Stream(device))
            side.wait_stream(current)
            with torch.cuda.stream(side):
                value = value.to(device)
            current.wait_stream(side)
        else:
            value = value.to(device)
        _CONSTANTS[entry] = value
    return _CONSTANTS[entry]
