"""Where a model's time goes on the GPU: torch.profiler table of the top CUDA kernels.

    python bench/profile_model.py --model pelk_t --mode train --dtype bf16 --out prof.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_model import make_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pelk_t")
    parser.add_argument("--mode", default="train", choices=["train", "infer"])
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    model = make_model(args.model, args.backend).cuda()
    images = torch.randn(args.batch, 3, 224, 224, device="cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step():
        if args.mode == "infer":
            model.eval()
            with torch.no_grad(), autocast:
                model(images)
        else:
            model.train()
            with autocast:
                loss = model(images).float().square().mean()
            loss.backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    table = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
