"""Kernel-level calibration of the triton backend's forms (GPU).

For every PeLK-T large-kernel layer shape (bench_layers.SHAPES) and dtype, times each candidate
kernel configuration side by side in one run (CUDA-graph replays, ``do_bench_cudagraph`` medians,
no host cost) and prints one row per candidate: its time, its ratio to the layer's HBM floor
(x read once and y written once over the copy bandwidth measured in the same run), whether it is
within issue 4's target (10x the floor or 20 µs, whichever is larger) and its error against
float64 (first 4 images). The rules of ``runtime.op.triton_forms`` are read off this table.

Candidates are named ``FORM:CONFIG``; ``--only`` keeps the forms (or full names) listed, and each
form's configurations can be replaced, e.g. ``--rowtoeplitz 64/128/4/2,32/128/4/2``. Forms:

* ``dense``: expand + F.conv2d (cuDNN), the baseline;
* ``sat``: the SAT kernels (tile_elements/warps/col_chunk);
* ``toeplitz``: the lag-gather Toeplitz GEMM (MxNxK/warps/stages, 0 for the launcher's default);
* ``rowtoeplitz``: the Toeplitz GEMM by image rows, column blocks as its operand
  (images/tile columns, i.e. output rows x padded W/warps/stages[/register cap, 0 for none; default the
  launcher's]);
* ``plane``: the plane box, tiles loaded through registers (warps/stages/row_cells[/half boxes: 1 one fp16
  product per wide cell, 0 a hi/lo pair, -1 the launcher's default[/register cap]]);
* ``planetma``: the plane box, tiles moved by TMA (as ``plane``[/images per program, 0 the launcher's
  default[/reuse tiles: 1 the centre from the plane and one band per mirror pair, as auto, 0 not[/blocks: 0
  only those the kernel reads, as auto, 1 R and its fp16 copy for every cell]]]; auto's where TMA applies);
* ``box``: the box-form GEMM (rows/warps/stages);
* ``spectral``: the spectral box form (warps/stages[/register cap: 0 none, -1 the launcher's
  default[/frequencies a pass of the boundary loop, 0 the launcher's default, -1 all[/images per program,
  0 the launcher's default]]]; fp32 only);
* ``boxgrad`` and ``satgrad``: grad-weight by box products (K/warps/stages) or SAT tap sums.

    python3 bench/bench_forms.py --out forms.md
    python3 bench/bench_forms.py --stages 2,3 --dtypes bf16 --only toeplitz,rowtoeplitz --rowtoeplitz 64/128/4/2
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NamedTuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_layers import (DTYPES, SHAPES, add_float32_precision_argument, copy_bandwidth, dense,  # noqa: E402
                                forward_target, hbm_floor, relative_error)
from runtime import sat, spectral, toeplitz, triton_kernels  # noqa: E402
from runtime.op import triton_forms  # noqa: E402

# Default configurations per form, each a tuple of ints (see the module docstring for their order).
CONFIGS: dict[str, list[tuple[int, ...]]] = {
    "dense": [()],
    "sat": [(256, 2, 8)],
    "toeplitz": [(0, 0, 0, 4, 0)],
    "rowtoeplitz": [(64, 128, 4, 2), (64, 128, 4, 3), (64, 256, 8, 2), (32, 128, 4, 2)],
    "plane": [(4, 1, 1)],
    "planetma": [(4, 2, 1, -1, 0, 0, 0, 1), (4, 2, 1, -1, 0, 0, 0, 0), (4, 2, 1)],
    "box": [(32, 2, 3), (64, 4, 2), (128, 8, 1), (128, 4, 1)],
    "spectral": [(4, 1), (4, 1, -1, -1, 1)],
    "boxgrad": [(32, 4, 1)],
    "satgrad": [],
}


class Candidate(NamedTuple):
    form: str
    config: tuple[int, ...]
    run: Callable[[], torch.Tensor]


def config_name(config: tuple[int, ...]) -> str:
    return "/".join(str(v) for v in config) or "-"


def parse_configs(text: str) -> list[tuple[int, ...]]:
    """'64x128x32/4/3,32/8/2' -> [(64, 128, 32, 4, 3), (32, 8, 2)]."""
    return [tuple(int(v) for v in item.replace("/", "x").split("x")) for item in text.split(",")]


def candidates(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, grid: tuple[int, ...],
               configs: dict[str, list[tuple[int, ...]]]):
    """Every (form, config) that applies to this shape and dtype, as ready-to-call closures."""
    size = x.shape[-1]
    half = x.dtype in (torch.bfloat16, torch.float16)
    reach = toeplitz.lag_reach(grid, size)
    kernels = triton_kernels

    def with_blocks(conv, blocks=kernels.column_blocks_triton):
        return lambda: toeplitz.peripheral_conv2d_box(x, w, grid, conv, blocks)

    def plane_blocks(row_cells, half_boxes):
        """The plane box's blocks for its row_cells; R alone (every cell) where its half boxes are off."""
        if half_boxes == 0:
            return kernels.column_blocks_triton
        return lambda weight, cells, width, dtype: kernels.plane_blocks_triton(weight, cells, width, dtype, row_cells)

    def with_lags(conv):
        return lambda: toeplitz.peripheral_conv2d_lags(x, w, grid, conv)

    makers = {
        "dense": lambda: (lambda: dense(x, w, grid)),
        "sat": lambda tile, warps, chunk: (lambda: sat.peripheral_conv2d_taps(
            x, w, grid, lambda images, rows, cols, coeffs: kernels.sat_taps_triton(images, rows, cols, coeffs, tile,
                                                                                    warps, chunk))),
        "toeplitz": lambda m, n, k, warps, stages: with_lags(lambda images, kernel: kernels.toeplitz_conv_triton(
            images, kernel, reach, m, n, k, warps, stages)),
        "rowtoeplitz": lambda m, columns, warps, stages, registers=-1: with_blocks(lambda images, blocks, cells: (
            kernels.row_toeplitz_triton(images, blocks, cells, m, max(1, columns // blocks.shape[-1]), warps,
                                        stages, None if registers < 0 else registers))),
        "plane": lambda warps, stages, row_cells, half_boxes=-1, registers=0: with_blocks(
            lambda planes, blocks, cells: kernels.plane_box_conv_triton(
                planes, blocks, cells, warps, stages, row_cells, tma=False,
                half_boxes=None if half_boxes < 0 else bool(half_boxes), max_registers=registers or None),
            plane_blocks(row_cells, half_boxes)),
        "planetma": lambda warps, stages, row_cells, half_boxes=-1, registers=0, images=0, reuse=1, all_blocks=0: (
            with_blocks(lambda planes, blocks, cells: kernels.plane_box_conv_triton(
                planes, blocks, cells, warps, stages, row_cells, tma=True,
                half_boxes=None if half_boxes < 0 else bool(half_boxes), max_registers=registers or None,
                reuse_tiles=bool(reuse), **({"images_per_program": images} if images else {})),
                plane_blocks(None if all_blocks else row_cells, half_boxes))),
        "box": lambda rows, warps, stages: with_blocks(lambda images, blocks, cells: kernels.box_conv_triton(
            images, blocks, cells, rows, warps, stages)),
        "spectral": lambda warps, stages, registers=-1, frequency_block=0, planes=0: (
            lambda: spectral.peripheral_conv2d_spectral(x, w, grid, lambda images, spectra, cells: (
                kernels.spectral_conv_triton(images, spectra, cells, warps, stages,
                                             None if registers < 0 else registers,
                                             spectral.padded_frequencies(tuple(grid), x.shape[-1])
                                             if frequency_block < 0 else frequency_block or None,
                                             planes or None)), kernels.boundary_spectra_triton)),
        "boxgrad": lambda k, warps, stages: (lambda: toeplitz.peripheral_grad_weight_boxes(
            dy, x, grid, lambda d, images, cells: kernels.box_products_triton(d, images, cells, block_k=k,
                                                                              num_warps=warps, num_stages=stages))),
        "satgrad": lambda: (lambda: sat.peripheral_grad_weight_taps(dy, x, grid, kernels.sat_tap_sums_triton)),
    }
    # Where each form can win: the plane box on 16-bit planes that pad to 64 (in fp32 also those that pad
    # to 32), the Toeplitz GEMM by rows on planes up to 32 wide, the box form and SAT in fp32 (in 16-bit
    # their box sums need a hi/lo pair of products and they lost to Toeplitz everywhere).
    plane = size > 32 or (not half and size > 16)
    fits = {"plane": plane, "planetma": plane and kernels.tma_rows_align(size, x.dtype), "rowtoeplitz": size <= 32,
            "box": not half, "spectral": not half and size > 16, "sat": not half and size > 32, "satgrad": not half}
    for form, form_configs in configs.items():
        if not fits.get(form, True):
            continue
        for config in form_configs:
            yield Candidate(form, config, makers[form](*config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the markdown here")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stages", default="1,2,3,4", help="comma-separated stages of bench_layers.SHAPES")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--only", help="comma-separated forms or FORM:CONFIG names to time (default: all)")
    for form in CONFIGS:
        parser.add_argument(f"--{form}", help=f"{form} configs, comma-separated, e.g. "
                                              f"{config_name(CONFIGS[form][0]) if CONFIGS[form] else '-'}")
    add_float32_precision_argument(parser)
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.float32_matmul_precision)
    configs = {form: parse_configs(getattr(args, form)) if getattr(args, form) else default
               for form, default in CONFIGS.items()}
    only = set(args.only.split(",")) if args.only else None
    stages = {int(v) for v in args.stages.split(",")}
    import triton
    import triton.testing

    device = torch.device("cuda")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth(device)
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, batch "
             f"{args.batch}; float32 matmul precision {args.float32_matmul_precision}; ms, CUDA-graph medians; "
             f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; target = "
             f"max(10 x floor, 0.020 ms); error against float64 on the first 4 images", "",
             "| stage | H | K | dtype | form | config | ms | / floor | target | error | auto |",
             "|" + "---|" * 11]
    print("\n".join(lines), flush=True)
    for stage, channels, size, grid in (shape for shape in SHAPES if shape[0] in stages):
        grid = tuple(grid)
        for dtype_name in args.dtypes.split(","):
            dtype = DTYPES[dtype_name]
            x = torch.randn(args.batch, channels, size, size, device=device, dtype=dtype)
            w = (torch.randn(channels, 1, len(grid), len(grid), device=device) / sum(grid)).to(dtype)
            dy = torch.randn_like(x)
            floor = hbm_floor(x.numel(), x.element_size(), bandwidth) * 1e3
            target = forward_target(floor / 1e3) * 1e3
            exact = dense(x[:4].double(), w.double(), grid)
            auto = "/".join(triton_forms(size, size, grid, dtype))
            for candidate in candidates(x, w, dy, grid, configs):
                name = f"{candidate.form}:{config_name(candidate.config)}"
                if only and candidate.form not in only and name not in only:
                    continue
                row = [stage, size, sum(grid), dtype_name, candidate.form, config_name(candidate.config)]
                try:
                    result = candidate.run()  # compiles; do_bench_cudagraph warms up itself
                    ms = triton.testing.do_bench_cudagraph(candidate.run, rep=50, return_mode="median")
                except Exception as error:  # a config that does not compile or launch at this shape
                    row += [f"fail ({type(error).__name__})", "", "", ""]
                else:
                    error = ("-" if candidate.form.endswith("grad")
                             else f"{relative_error(result[:4], exact):.1e}")
                    row += [f"{ms:.4f}", f"{ms / floor:.1f}x", "yes" if ms <= target else "no", error]
                lines.append("| " + " | ".join(str(v) for v in row + [auto]) + " |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
