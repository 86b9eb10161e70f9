"""Small index/map tensors the kernels reuse, built once per key and device.

Built on the CPU and copied to the GPU from a short-lived helper thread.
CUDA-graph memory pools (``torch.compile(mode="reduce-overhead")``'s cudagraph
trees) take every allocation of the thread that warms the graph up
(``_cuda_beginAllocateCurrentThreadToPool``), so a constant first built there
would become a live tensor the graph does not own, which cudagraph trees reject.
A helper thread allocates from the ordinary caching allocator. (Build outside a
stream capture: warm up once before capturing a graph by hand.)
"""
from __future__ import annotations

import threading
from typing import Callable, Hashable

import torch

_CONSTANTS: dict[tuple[Hashable, torch.device], torch.Tensor] = {}


def _copy_to_gpu(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``value`` on ``device``, allocated and copied by a helper thread that has finished copying."""
    result: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            with torch.cuda.device(device):
                result.append(value.to(device))
                torch.cuda.current_stream(device).synchronize()
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    worker = threading.Thread(target=copy, name="pelk-device-constant")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return result[0]


def device_constant(key: Hashable, device: torch.device | str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor ``build()`` (made on the CPU) on ``device``, cached under ``key``; never written to."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    entry = (key, device)
    if entry not in _CONSTANTS:
        value = build()
        _CONSTANTS[entry] = _copy_to_gpu(value, device) if device.type == "cuda" else value.to(device)
    return _CONSTANTS[entry]
