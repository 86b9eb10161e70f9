"""Whole-model throughput, side by side in one run: timm convnext_tiny vs compiled pelk models.

Prints a markdown table of images/s for inference and training (forward +
backward + AdamW step), fp32 and bf16 (autocast), at batch 64 and 224² by
default, plus every model's ratio to the first baseline. Usage (on a GPU):

    python bench/bench_model.py --out results.md
    python bench/bench_model.py --models convnext_tiny,pelk_t,pelk101_t --compile --out results.md
    python bench/bench_model.py --compile --compile-mode reduce-overhead   # CUDA graphs too

Models named ``timm:NAME`` (or ``convnext_tiny``) come from timm; others are
pelk presets or spec paths.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def is_timm(name: str) -> bool:
    return name.startswith("timm:") or name == "convnext_tiny"


def make_model(name: str, backend: str, deploy: bool = False) -> torch.nn.Module:
    """A timm model (``timm:NAME`` or ``convnext_tiny``) or a pelk preset/spec; ``deploy`` folds a pelk
    model into its inference form (BNs, small kernels and positional embedding folded away)."""
    if is_timm(name):
        import timm
        return timm.create_model(name.removeprefix("timm:"))
    from compiler import build_model
    model = build_model(name, backend=backend)
    return model.deploy() if deploy else model


def time_call(step, warmup: int, iters: int) -> float:
    """Median seconds of ``step()`` over ``iters`` timed calls (CUDA events), after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def model_step(model: torch.nn.Module, mode: str, bf16: bool, batch: int, resolution: int,
               compile_mode: str | None) -> Callable[[], None]:
    """One step of ``model`` on CUDA on a fixed random batch: inference (eval, no grad) or training
    (forward, cross-entropy, backward, AdamW); bf16 = autocast; ``compile_mode`` None = eager."""
    device = torch.device("cuda")
    model = model.to(device)
    images = torch.randn(batch, 3, resolution, resolution, device=device)
    targets = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    runner = torch.compile(model, mode=compile_mode) if compile_mode else model
    if mode == "infer":
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                runner(images)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with autocast:
                loss = torch.nn.functional.cross_entropy(runner(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step


def throughput(model: torch.nn.Module, mode: str, dtype: torch.dtype, batch: int, resolution: int,
               compile_mode: str | None, warmup: int, iters: int) -> float:
    """Images per second of one model in one mode (infer/train) and dtype."""
    step = model_step(model, mode, dtype == torch.bfloat16, batch, resolution, compile_mode)
    return batch / time_call(step, warmup, iters)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="convnext_tiny,pelk_t,pelk101_t")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--backend", default="auto", help="pelk peripheral-conv backend")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (baseline too)")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune"], help="torch.compile mode")
    parser.add_argument("--deploy", action="store_true",
                        help="pelk models run inference in deploy form (BN, small kernel, pos-embed folded)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    columns = [(mode, name) for mode in args.modes.split(",") for name in args.dtypes.split(",")]
    results: dict[str, dict] = {}
    for model_name in args.models.split(","):
        model = make_model(model_name, args.backend)
        params = sum(p.numel() for p in model.parameters())
        results[model_name] = {"params": params}
        for mode, dtype_name in columns:
            started = time.perf_counter()
            deployed = args.deploy and mode == "infer" and not is_timm(model_name)
            runner = make_model(model_name, args.backend, deploy=True) if deployed else model
            results[model_name][(mode, dtype_name)] = throughput(
                runner, mode, dtypes[dtype_name], args.batch, args.resolution,
                args.compile_mode if args.compile else None, args.warmup, args.iters)
            print(f"{model_name} {mode} {dtype_name}: {results[model_name][(mode, dtype_name)]:.0f} img/s "
                  f"({time.perf_counter() - started:.1f}s)", file=sys.stderr, flush=True)
        del model
        torch.cuda.empty_cache()

    baseline = args.models.split(",")[0]
    device = torch.cuda.get_device_name()
    lines = [f"GPU: {device}; torch {torch.__version__}; batch {args.batch}; {args.resolution}²; "
             f"{f'torch.compile ({args.compile_mode})' if args.compile else 'eager'}; pelk backend {args.backend}; "
             f"{'pelk inference in deploy form; ' if args.deploy else ''}TF32 off",
             "", "| model | params | " + " | ".join(f"{m} {d} img/s" for m, d in columns) + " | "
             + " | ".join(f"{m} {d} vs {baseline}" for m, d in columns) + " |",
             "|---" * (2 + 2 * len(columns)) + "|"]
    for name, row in results.items():
        speeds = " | ".join(f"{row[c]:.0f}" for c in columns)
        ratios = " | ".join(f"{row[c] / results[baseline][c]:.2f}x" for c in columns)
        lines.append(f"| {name} | {row['params'] / 1e6:.1f}M | {speeds} | {ratios} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
