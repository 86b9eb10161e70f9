"""Where a model's time goes on the GPU: CUDA kernel time per category, then the top kernels.

    python bench/profile_model.py --model pelk_t --mode train --dtype bf16 --out prof.txt
    python bench/profile_model.py --models convnext_tiny,pelk_t --modes infer,train --compile --out prof.txt
    python bench/profile_model.py --model pelk_t --mode infer --deploy     # the folded inference form

Categories are read off kernel names (peripheral-conv Triton kernels; inductor's
fused kernels by the norm they contain; library GEMMs, cuDNN convolutions, optimizer
and ATen copy kernels); the summary gives milliseconds of GPU time per step for each.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_model import make_model, model_step  # noqa: E402
from bench.ncu_layers import profiled_kernels  # noqa: E402

PERIPHERAL_KERNELS = ("_toeplitz_kernel", "_taps_kernel", "_tap_sums_kernel", "_box_products_kernel",
                      "_column_prefix_kernel", "_box_conv_kernel")
# Inductor's kernels are named after the ops they fused (triton_poi_fused_<ops>_<n>).
INDUCTOR_CATEGORIES = [("layer norm (fused)", "layer_norm"), ("batch norm (fused)", "batch_norm")]
# Library kernels: (category, substrings of the kernel name); the first match wins, in this order.
LIBRARY_CATEGORIES = [
    ("GEMM", ("gemm", "nvjet", "cutlass", "sm90_xmma", "sm80_xmma", "ampere_", "matmul", "splitk")),
    ("cuDNN conv", ("conv", "dgrad", "wgrad", "cudnn", "implicit", "nhwcAddPadding")),
    ("optimizer", ("adam", "Adam", "foreach", "multi_tensor")),
    ("ATen elementwise / copy / index", ("copy", "cat", "Cat", "transpose", "permute", "elementwise_kernel", "index")),
]


def category(name: str) -> str:
    """The category of a CUDA kernel, read off its name (approximate, by design)."""
    if any(kernel in name for kernel in PERIPHERAL_KERNELS):
        return "peripheral conv (triton)"
    if name.startswith("triton_"):
        return next((label for label, op in INDUCTOR_CATEGORIES if op in name), "other fused (inductor)")
    for label, needles in LIBRARY_CATEGORIES:
        if any(needle in name for needle in needles):
            return label
    return "other"


def profile_step(model: torch.nn.Module, mode: str, bf16: bool, batch: int, compile_mode: str | None,
                 steps: int) -> list[tuple[str, float, int]]:
    """(kernel name, total CUDA ms over ``steps`` steps, calls) for every kernel of the step."""
    step = model_step(model, mode, bf16, batch, 224, compile_mode)
    for _ in range(4):
        step()
    torch.cuda.synchronize()
    return [(name, device_us / 1000, count) for name, device_us, count in profiled_kernels(step, steps)]


def report(label: str, kernels: list[tuple[str, float, int]], steps: int, rows: int) -> str:
    """A per-category summary (ms per step, share) and the top ``rows`` kernels."""
    total = sum(ms for _, ms, _ in kernels) / steps
    per_category: dict[str, float] = defaultdict(float)
    for name, ms, _ in kernels:
        per_category[category(name)] += ms / steps
    lines = [f"## {label}: {total:.2f} ms of CUDA kernels per step", "", "| category | ms/step | share |",
             "|---|---|---|"]
    for name, ms in sorted(per_category.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {ms:.2f} | {ms / total:.0%} |")
    lines += ["", "| kernel | ms/step | calls/step | category |", "|---|---|---|---|"]
    for name, ms, count in sorted(kernels, key=lambda entry: -entry[1])[:rows]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short}` | {ms / steps:.3f} | {count / steps:g} | {category(name)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", "--model", default="pelk_t")
    parser.add_argument("--modes", "--mode", default="train", help="comma list of infer, train")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile (default mode) every model")
    parser.add_argument("--deploy", action="store_true", help="pelk models in deploy form for inference")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sections = [f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; batch {args.batch}; 224²; "
                f"{args.dtype}; {'torch.compile' if args.compile else 'eager'}\n"]
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            model = make_model(model_name, args.backend, deploy=args.deploy and mode == "infer").cuda()
            kernels = profile_step(model, mode, args.dtype == "bf16", args.batch,
                                   "default" if args.compile else None, args.steps)
            label = f"{model_name} {mode}{' (deploy form)' if args.deploy and mode == 'infer' else ''}"
            sections.append(report(label, kernels, args.steps, args.rows))
            print(sections[-1], flush=True)
            del model
            torch.cuda.empty_cache()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(sections))


if __name__ == "__main__":
    main()
