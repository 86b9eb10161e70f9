"""Run each PeLK-T large-kernel layer's forward, as ``auto`` runs it, a few times: a driver for
Nsight Compute, which then reports per kernel where the time goes (tensor pipes, L1/L2 and HBM
throughput, warp stalls, occupancy). Nothing is timed here.

    ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy \\
        --section LaunchStats -k regex:'plane_box|box_conv|row_toeplitz|toeplitz_kernel' \\
        --launch-skip 0 python3 bench/ncu_layers.py --stages 1,2,3 > ncu.txt

``--kernels`` instead runs the calls (``--calls`` 20 or more) under torch.profiler and prints each
kernel's GPU time per forward call, the weight-to-spectra preparation included:

    python3 bench/ncu_layers.py --stages 1 --dtypes fp32 --calls 50 --kernels

``--calls 1`` (the default) launches each layer once after one warm-up call that compiles it, so
ncu (with ``--launch-skip`` 0) sees every kernel twice: the first is the compiling call's.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_layers import DTYPES, SHAPES  # noqa: E402
from runtime import peripheral_conv2d  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stages", default="1,2,3,4", help="comma-separated stages of bench_layers.SHAPES")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--calls", type=int, default=1, help="forward calls per layer after the warm-up")
    parser.add_argument("--kernels", action="store_true", help="print the GPU time of each kernel per call")
    args = parser.parse_args()
    stages = {int(v) for v in args.stages.split(",")}
    torch.manual_seed(0)
    for stage, channels, size, grid in SHAPES:
        if stage not in stages:
            continue
        for dtype_name in args.dtypes.split(","):
            dtype = DTYPES[dtype_name]
            x = torch.randn(args.batch, channels, size, size, device="cuda", dtype=dtype)
            w = (torch.randn(channels, 1, len(grid), len(grid), device="cuda") / sum(grid)).to(dtype)
            peripheral_conv2d(x, w, tuple(grid), backend="triton")
            torch.cuda.synchronize()
            if args.kernels:
                print(f"stage {stage} K={sum(grid)} {dtype_name}, GPU µs per forward call:", flush=True)
                for name, microseconds in kernel_times(lambda: peripheral_conv2d(x, w, tuple(grid), backend="triton"),
                                                       args.calls):
                    print(f"  {microseconds:9.1f}  {name[:100]}", flush=True)
                continue
            for _ in range(args.calls):
                peripheral_conv2d(x, w, tuple(grid), backend="triton")
            torch.cuda.synchronize()
            print(f"stage {stage} K={sum(grid)} {dtype_name}: {1 + args.calls} forward calls", flush=True)


def profiled_kernels(call, calls: int) -> list[tuple[str, float, int]]:
    """(kernel name, total GPU µs, launches) of every CUDA kernel in ``calls`` runs of ``call`` under
    torch.profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    kernels = []
    for event in profiler.key_averages():
        device_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if device_us and event.key and not event.key.startswith("ProfilerStep"):
            kernels.append((event.key, device_us, event.count))
    return kernels


def kernel_times(call, calls: int) -> list[tuple[str, float]]:
    """(kernel name, GPU µs per call) of ``calls`` runs of ``call``, the longest first, their sum last
    as "total"."""
    times = sorted(((name, us / calls) for name, us, _ in profiled_kernels(call, calls)), key=lambda item: -item[1])
    return times + [("total", sum(us for _, us in times))]


if __name__ == "__main__":
    main()
