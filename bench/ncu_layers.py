"""Run each PeLK-T large-kernel layer's forward, as ``auto`` runs it, a few times: a driver for
Nsight Compute, which then reports per kernel where the time goes (tensor pipes, L1/L2 and HBM
throughput, warp stalls, occupancy). Nothing is timed here.

    ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy \\
        --section LaunchStats -k regex:'plane_box|box_conv|row_toeplitz|toeplitz_kernel' \\
        --launch-skip 0 python3 bench/ncu_layers.py --stages 1,2,3 > ncu.txt

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
            for _ in range(1 + args.calls):
                peripheral_conv2d(x, w, tuple(grid), backend="triton")
            torch.cuda.synchronize()
            print(f"stage {stage} K={sum(grid)} {dtype_name}: {1 + args.calls} forward calls", flush=True)


if __name__ == "__main__":
    main()
